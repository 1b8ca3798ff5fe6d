//! The [`P2pClient`] resource: the sans-IO client core every plugin system drives.

use bevy::prelude::*;

use crate::client::ClientCore;

/// The client core (mesh + shard protocol); read peers and totals, or call it directly.
#[derive(Resource, Debug, Deref, DerefMut)]
pub struct P2pClient(pub ClientCore);
