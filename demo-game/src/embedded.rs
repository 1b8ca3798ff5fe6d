//! The embedded local shard the window plays on: `p2pmodel_servers::embedded` with the
//! demo's settings (one zone, one Game server, default movement and interest rules) and the
//! demo world's server logic (NPCs, chat: `p2pmodel_mmo_world`).

use p2pmodel_servers::config::ShardConfig;
pub use p2pmodel_servers::embedded::EmbeddedShard;

/// The embedded shard's configuration: loopback only, one zone, one Game server. The
/// per-client message budget is 600/s instead of 120: with `--p2p off` every peer message
/// goes through the shard (a client with 4 peers sends 20 moves + 4 × 30 peer messages a
/// second), and the Agent drops what exceeds the budget.
pub fn config() -> Result<ShardConfig, String> {
    p2pmodel_servers::embedded::local_config(
        "demo-local",
        "[lobby]\nzones = 1\n[game]\nservers_per_zone = 1\n",
    )
}

/// Start the relay and the shard (with the world's NPCs and chat) on a thread; returns once
/// they listen.
pub fn start() -> Result<EmbeddedShard, String> {
    p2pmodel_servers::embedded::start_with(config()?, |app| {
        app.add_plugins(p2pmodel_mmo_world::MmoWorldPlugin::default());
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedded_config_is_loopback_only_with_one_game_server() {
        let c = super::config().unwrap();
        assert!(c.agent.addr.ip().is_loopback());
        assert!(c.agent.login.unwrap().ip().is_loopback());
        assert_eq!(c.lobby.zones, 1);
        assert_eq!(c.game.servers_per_zone, 1);
        assert_eq!(c.agent.max_messages_per_sec, 600);
        assert_eq!(c.shard.metrics, None);
    }
}
