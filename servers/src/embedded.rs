//! A whole shard inside a game process: the real relay (its own data-plane thread) and every
//! shard role (`shard_app`: Agent + login, Lobby, Game servers) on 127.0.0.1 with free ports,
//! running its Bevy loop on a thread of its own until the process exits. What a game's "play
//! locally" button or its tests start (the demo and the arena example do).

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::Duration;

use p2pmodel_core::login::ShardAddress;

use crate::config::ShardConfig;
use crate::relay::RelayRuntime;
use crate::shard::{ShardInfo, shard_app};

/// Frame rate of the embedded shard's loop (the Game servers tick at their own rate inside).
const SHARD_FRAME_HZ: f64 = 100.0;

/// Where an embedded shard listens.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedShard {
    /// The login service and its key (what a game's `--server` would name).
    pub login: ShardAddress,
    /// The relay / STUN server.
    pub relay: SocketAddr,
    /// The Agent (netcode).
    pub agent: SocketAddr,
}

/// Update every app in turn — a game's players in its tests, next to an embedded shard —
/// until `done` holds or `limit` passes (a bound on waiting for real sockets, not a timing
/// assertion). Returns whether `done` held.
pub fn update_until(
    apps: &mut [&mut bevy::app::App],
    limit: Duration,
    mut done: impl FnMut(&[&mut bevy::app::App]) -> bool,
) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        for a in apps.iter_mut() {
            a.update();
        }
        if done(apps) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// A UDP port free on 127.0.0.1 right now.
pub fn free_udp_port() -> std::io::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A loopback-only shard configuration: a fresh random secret, free ports, no metrics
/// endpoint, characters in memory, generous per-client budgets (every client is on this
/// machine); `sections` adds or overrides settings (`[lobby]`/`[game]` keys, e.g.
/// `"[game]\ninterest = \"groups\"\n"`; `[shard]`, `[relay]` and `[agent]` are set here).
pub fn local_config(name: &str, sections: &str) -> Result<ShardConfig, String> {
    let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let (login, alternate) = match (free_udp_port(), free_udp_port()) {
        (Ok(a), Ok(b)) if a != b => (a, b),
        _ => return Err("cannot find free UDP ports on 127.0.0.1".into()),
    };
    ShardConfig::parse(&format!(
        "[shard]\nname = \"{name}\"\nsecret = \"{secret}\"\nbind = \"127.0.0.1\"\nmetrics = \"\"\n\
         [relay]\nport = 0\nalternate_port = {alternate}\nstats_log_interval_secs = 0\n\
         [agent]\nport = 0\nlogin_port = {login}\nmax_messages_per_sec = 600\nmax_clients_per_ip = 1024\n\
         login_per_source_per_sec = 1000\nlogin_per_source_burst = 1000\n\
         {sections}"
    ))
    .map_err(|e| format!("embedded shard config: {e}"))
}

/// Start the relay and the shard of `cfg` on a thread; returns once they listen.
pub fn start(cfg: ShardConfig) -> Result<EmbeddedShard, String> {
    start_with(cfg, |_| {})
}

/// [`start`], with the game's own server logic: `setup` adds the game's plugins, message
/// types and systems to the shard's App (see [`crate::shard::game_api`]) before it runs.
pub fn start_with(
    cfg: ShardConfig,
    setup: impl FnOnce(&mut bevy::app::App) + Send + 'static,
) -> Result<EmbeddedShard, String> {
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
            setup(&mut app);
            if let Err(e) = crate::directory::heartbeat::attach(&mut app, &cfg) {
                let _ = tx.send(Err(format!("embedded shard: {e}")));
                return;
            }
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
    fn a_local_config_is_loopback_only_and_takes_the_games_sections() {
        let c = super::local_config("t", "[lobby]\nzones = 3\n[game]\ninterest = \"groups\"\n").unwrap();
        assert!(c.agent.addr.ip().is_loopback() && c.agent.login.unwrap().ip().is_loopback());
        assert_eq!((c.lobby.zones, c.shard.metrics), (3, None));
        assert_eq!(c.game.interest, p2pmodel_core::shard::Interest::Groups);
        assert!(super::local_config("t", "[lobby]\nzones = 0\n").unwrap_err().contains("lobby.zones"));
    }
}
