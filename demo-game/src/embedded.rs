//! The embedded local shard: the real relay (its own data-plane thread) and every shard
//! role (`shard_app`: Agent + login, Lobby, Game server) on 127.0.0.1 with free ports,
//! running its Bevy loop on a thread of its own. It lives until the process exits.

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::Duration;

use bevy_p2pmodel::client::login::ShardAddress;
use p2pmodel_servers::config::ShardConfig;
use p2pmodel_servers::relay::RelayRuntime;
use p2pmodel_servers::shard::{ShardInfo, shard_app};

/// Frame rate of the embedded shard's loop (the Game server ticks at its own 20 Hz inside).
const SHARD_FRAME_HZ: f64 = 100.0;

/// Where the embedded shard listens.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedShard {
    /// The login service and its key (what `--server` would name).
    pub login: ShardAddress,
    /// The relay / STUN server.
    pub relay: SocketAddr,
    /// The Agent (netcode).
    pub agent: SocketAddr,
}

/// A UDP port free on 127.0.0.1 right now.
fn free_udp_port() -> std::io::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The embedded shard's configuration: loopback only, one zone, one Game server, default
/// movement and interest rules, a fresh random secret, no metrics endpoint, characters in
/// memory. The per-client message budget is 600/s instead of 120: with `--p2p off` every
/// peer message goes through the shard (a client with 4 peers sends 20 moves + 4 × 30 peer
/// messages a second), and the Agent drops what exceeds the budget.
pub fn config() -> Result<ShardConfig, String> {
    let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let (login, alternate) = (free_udp_port(), free_udp_port());
    let (login, alternate) = match (login, alternate) {
        (Ok(a), Ok(b)) if a != b => (a, b),
        _ => return Err("cannot find free UDP ports on 127.0.0.1".into()),
    };
    ShardConfig::parse(&format!(
        "[shard]\nname = \"demo-local\"\nsecret = \"{secret}\"\nbind = \"127.0.0.1\"\nmetrics = \"\"\n\
         [relay]\nport = 0\nalternate_port = {alternate}\nstats_log_interval_secs = 0\n\
         [agent]\nport = 0\nlogin_port = {login}\nmax_messages_per_sec = 600\nmax_clients_per_ip = 1024\n\
         login_per_source_per_sec = 1000\nlogin_per_source_burst = 1000\n\
         [lobby]\nzones = 1\n\
         [game]\nservers_per_zone = 1\n"
    ))
    .map_err(|e| format!("embedded shard config: {e}"))
}

/// Start the relay and the shard on a thread; returns once they listen.
pub fn start() -> Result<EmbeddedShard, String> {
    let cfg = config()?;
    let (tx, rx) = mpsc::channel::<Result<EmbeddedShard, String>>();
    std::thread::Builder::new()
        .name("embedded-shard".into())
        .spawn(move || {
            let relay = match RelayRuntime::start(&cfg) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(format!("embedded relay: {e}")));
                    return;
                }
            };
            let relay_addr = relay.server.primary_addr();
            let mut app = match shard_app(&cfg, Some(relay_addr), None, SHARD_FRAME_HZ) {
                Ok(a) => a,
                Err(e) => {
                    let _ = tx.send(Err(format!("embedded shard: {e}")));
                    return;
                }
            };
            app.insert_resource(relay);
            let info = app.world().resource::<ShardInfo>();
            let Some(login) = info.shard_address() else {
                let _ = tx.send(Err("embedded shard has no login service".into()));
                return;
            };
            let shard = EmbeddedShard { login, relay: relay_addr, agent: info.agent };
            tracing::info!(login = %shard.login, agent = %shard.agent, relay = %shard.relay, "embedded shard running");
            let _ = tx.send(Ok(shard));
            app.run();
        })
        .map_err(|e| format!("cannot start the embedded shard thread: {e}"))?;
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the embedded shard did not start within 10 s".to_string())?
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
        assert_eq!(c.shard.metrics, None);
    }
}
