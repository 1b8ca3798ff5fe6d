//! The system sets the plugins run in, and the order of their steps inside them.

use bevy::prelude::*;

/// Systems that feed the shard's messages and the mesh socket's datagrams into the core and
/// publish what happened (runs in `PreUpdate`, after bevy_renet's `RenetReceive`).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct P2pReceive;

/// Systems that hand the core's datagrams to the mesh socket and its shard messages to
/// renet (runs in `PostUpdate`, before bevy_renet's `RenetSend`).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct P2pSend;

/// The order of the plugins' own steps inside [`P2pReceive`] and [`P2pSend`] (both plugins
/// configure it, so either may be added alone).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Step {
    /// Shard transport → core.
    ShardIn,
    /// Mesh socket → core, timeouts.
    MeshIn,
    /// Core events → Bevy messages and entities.
    Events,
    /// State derived from the events (ShardState, auto zone, stats, diagnostics).
    After,
    /// Game requests → core.
    Requests,
    /// Core → mesh socket and shard transport.
    Out,
}

/// Configure the two sets and the steps inside them (idempotent).
pub(crate) fn configure_sets(app: &mut App) {
    app.configure_sets(PreUpdate, P2pReceive.after(bevy_renet::RenetReceive));
    app.configure_sets(PostUpdate, P2pSend.before(bevy_renet::RenetSend));
    app.configure_sets(
        PreUpdate,
        (Step::ShardIn, Step::MeshIn, Step::Events, Step::After).chain().in_set(P2pReceive),
    );
    app.configure_sets(PostUpdate, (Step::Requests, Step::Out).chain().in_set(P2pSend));
}
