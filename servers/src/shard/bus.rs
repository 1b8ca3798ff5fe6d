//! The in-process internal link: the core's [`Bus`] as a Bevy resource, watched by the
//! benchmark metrics ([`super::metrics::BusClock`]).

use bevy::prelude::{Deref, DerefMut, Resource};
use p2pmodel_core::shard::Bus;

/// The role ↔ role queues of this process (see [`p2pmodel_core::shard::bus`]).
#[derive(Resource, Debug, Deref, DerefMut)]
pub struct ShardBus(pub Bus);

impl Default for ShardBus {
    fn default() -> Self {
        ShardBus(Bus::with_observer(Box::<super::metrics::BusClock>::default()))
    }
}
