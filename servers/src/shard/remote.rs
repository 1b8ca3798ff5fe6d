//! The bus across processes: roles this process does not run are reached over
//! [`InternalLink`]s. Topology is a star at the Lobby: the Lobby listens (`lobby.internal`),
//! the Agent and each Game server connect to it, and the Lobby forwards messages between the
//! Agent and the Games. Each frame is `destination role (5 bytes) ‖ encoded message`.
//!
//! A connecting role whose link dies (the Lobby restarted, the network failed) reconnects
//! with capped exponential backoff (100 ms doubling to [`RECONNECT_MAX`]); frames sent while
//! it is down wait in a bounded queue and go out once the link is back. When the Agent's link
//! comes back it first re-announces every connected client (`ClientJoined`), so a restarted
//! Lobby knows them again; the Games' `Positions` then tell it where each one plays.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use p2pmodel_core::proto::shard::{Role, encode};

use super::agent::AgentState;
use super::bus::ShardBus;
use super::link::{InternalLink, role_bytes, role_from};
use crate::config::SHARD_SECRET_LEN;

pub use p2pmodel_core::shard::RECONNECT_MAX;
/// First wait before reconnecting a lost internal link.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Frames a connecting role keeps while its link is down (older ones are dropped, counted).
pub const MAX_PENDING: usize = 4096;
/// Handshakes the Lobby runs at once (each on its own thread, each at most
/// [`super::link::HANDSHAKE_TIMEOUT`]); connections beyond this are closed and counted.
pub const MAX_HANDSHAKES: usize = 64;

/// Count a refused incoming connection and log it (every one of the first 10, then every
/// 100th, so a flood cannot flood the log).
fn refuse(counter: &AtomicU64, from: SocketAddr, why: impl std::fmt::Display) {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= 10 || n.is_multiple_of(100) {
        warn!(%from, refused = n, "internal link refused: {why}");
    }
}

/// One connecting role's link to the Lobby, reconnected when lost.
struct Uplink {
    me: Role,
    link: Option<InternalLink>,
    attempt: Option<JoinHandle<std::io::Result<InternalLink>>>,
    next_try: Instant,
    backoff: Duration,
    down_since: Option<Instant>,
    attempts: u32,
}

/// Stops the Lobby's accept thread (and frees its port) when the bus is dropped.
struct Listening {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        // Wake the blocking accept; join only if it was woken.
        if TcpStream::connect_timeout(&SocketAddr::new(ip, self.addr.port()), Duration::from_millis(500))
            .is_ok()
            && let Some(t) = self.thread.take()
        {
            let _ = t.join();
        }
    }
}

/// Links to the roles of other processes.
#[derive(Resource)]
pub struct RemoteBus {
    /// Roles served in this process.
    pub local: Vec<Role>,
    links: Vec<InternalLink>,
    incoming: Option<Mutex<Receiver<InternalLink>>>,
    listening: Option<Listening>,
    uplinks: Vec<Uplink>,
    lobby: SocketAddr,
    secret: [u8; SHARD_SECRET_LEN],
    heartbeat: Duration,
    timeout: Duration,
    pending: VecDeque<Vec<u8>>,
    /// Frames that named an unknown destination or were too short (dropped).
    pub misrouted: u64,
    /// Frames dropped because the link stayed down longer than [`MAX_PENDING`] frames.
    pub dropped_while_down: u64,
    /// Lost links re-established.
    pub reconnects: u64,
    /// Incoming connections refused (wrong secret, bad or stalled handshake, too many at once).
    pub refused: Arc<AtomicU64>,
}

impl RemoteBus {
    fn new(
        local: Vec<Role>,
        lobby: SocketAddr,
        secret: [u8; SHARD_SECRET_LEN],
        heartbeat: Duration,
        timeout: Duration,
    ) -> RemoteBus {
        RemoteBus {
            local,
            links: Vec::new(),
            incoming: None,
            listening: None,
            uplinks: Vec::new(),
            lobby,
            secret,
            heartbeat,
            timeout,
            pending: VecDeque::new(),
            misrouted: 0,
            dropped_while_down: 0,
            reconnects: 0,
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The Lobby's side: accept links on `addr` (a thread hands them to the app; it stops
    /// and frees the port when the bus is dropped).
    pub fn listen(
        local: Vec<Role>,
        addr: SocketAddr,
        secret: [u8; SHARD_SECRET_LEN],
        heartbeat: Duration,
        timeout: Duration,
    ) -> std::io::Result<(RemoteBus, SocketAddr)> {
        let listener = TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let refused = Arc::new(AtomicU64::new(0));
        let refused2 = refused.clone();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::Builder::new().name("p2pm-int-accept".into()).spawn(move || {
            while let Ok((stream, from)) = listener.accept() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                // Each handshake on its own thread, so a stalling peer cannot hold up others.
                if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_HANDSHAKES {
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    refuse(&refused2, from, format_args!("{MAX_HANDSHAKES} handshakes already running"));
                    continue;
                }
                let (tx, refused, busy) = (tx.clone(), refused2.clone(), in_flight.clone());
                let spawned =
                    std::thread::Builder::new().name("p2pm-int-handshake".into()).spawn(move || {
                        match InternalLink::handshake(stream, &secret, heartbeat) {
                            Ok(link) => {
                                info!(peer = ?link.peer(), %from, "internal link accepted");
                                let _ = tx.send(link);
                            }
                            Err(e) => refuse(&refused, from, e),
                        }
                        busy.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
        let mut bus = RemoteBus::new(local, bound, secret, heartbeat, timeout);
        bus.incoming = Some(Mutex::new(rx));
        bus.refused = refused;
        bus.listening = Some(Listening { stop, addr: bound, thread: Some(thread) });
        Ok((bus, bound))
    }

    /// An Agent or Game process: connect each local role to the Lobby at `lobby` (an error
    /// if the Lobby cannot be reached or refuses the secret now; later losses reconnect).
    pub fn connect(
        local: Vec<Role>,
        lobby: SocketAddr,
        secret: [u8; SHARD_SECRET_LEN],
        heartbeat: Duration,
        timeout: Duration,
    ) -> std::io::Result<RemoteBus> {
        let mut bus = RemoteBus::new(local.clone(), lobby, secret, heartbeat, timeout);
        for me in local {
            let link = InternalLink::connect(lobby, &secret, me, Role::Lobby, heartbeat)?;
            bus.uplinks.push(Uplink {
                me,
                link: Some(link),
                attempt: None,
                next_try: Instant::now(),
                backoff: RECONNECT_MIN,
                down_since: None,
                attempts: 0,
            });
        }
        Ok(bus)
    }

    fn is_hub(&self) -> bool {
        self.incoming.is_some()
    }

    fn link_to(&self, role: Role) -> Option<&InternalLink> {
        if self.is_hub() {
            self.links.iter().find(|l| l.peer() == role)
        } else {
            self.uplinks.iter().find_map(|u| u.link.as_ref())
        }
    }

    /// Live links, by the role at the other end.
    pub fn peers(&self) -> Vec<Role> {
        self.links
            .iter()
            .chain(self.uplinks.iter().filter_map(|u| u.link.as_ref()))
            .map(|l| l.peer())
            .collect()
    }

    /// Drop dead uplinks, start reconnect attempts when their backoff is over, and take
    /// finished ones. Returns the roles whose link just came back.
    fn maintain_uplinks(&mut self) -> Vec<Role> {
        let now = Instant::now();
        let (lobby, secret, hb, timeout) = (self.lobby, self.secret, self.heartbeat, self.timeout);
        let mut back = Vec::new();
        for u in &mut self.uplinks {
            if u.link.as_ref().is_some_and(|l| l.is_dead(timeout)) {
                error!(role = ?u.me, %lobby, "internal link to the lobby lost; reconnecting");
                u.link = None;
                u.down_since = Some(now);
                u.backoff = RECONNECT_MIN;
                u.next_try = now + RECONNECT_MIN;
                u.attempts = 0;
            }
            if u.link.is_some() {
                continue;
            }
            if let Some(t) = u.attempt.take_if(|t| t.is_finished()) {
                u.attempts += 1;
                match t.join() {
                    Ok(Ok(link)) => {
                        let down = u.down_since.take().map(|d| d.elapsed()).unwrap_or_default();
                        info!(role = ?u.me, %lobby, ?down, attempts = u.attempts, "internal link to the lobby re-established");
                        u.link = Some(link);
                        u.backoff = RECONNECT_MIN;
                        back.push(u.me);
                        continue;
                    }
                    Ok(Err(e)) if u.attempts == 1 || u.attempts.is_multiple_of(10) => {
                        warn!(role = ?u.me, %lobby, attempts = u.attempts, retry_in = ?u.backoff, "reconnect failed: {e}");
                    }
                    Ok(Err(e)) => debug!(role = ?u.me, attempts = u.attempts, "reconnect failed: {e}"),
                    Err(_) => warn!(role = ?u.me, "reconnect thread panicked"),
                }
                u.next_try = now + u.backoff;
                u.backoff = (u.backoff * 2).min(RECONNECT_MAX);
            }
            if u.attempt.is_none() && now >= u.next_try {
                let me = u.me;
                u.attempt = std::thread::Builder::new()
                    .name("p2pm-int-reconnect".into())
                    .spawn(move || InternalLink::connect(lobby, &secret, me, Role::Lobby, hb))
                    .ok();
            }
        }
        self.reconnects += back.len() as u64;
        back
    }
}

/// Moves bus messages over the internal links (runs in `First` and `Last`).
pub struct RemoteBusPlugin;

impl Plugin for RemoteBusPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(First, pump).add_systems(Last, pump);
    }
}

/// `ClientJoined` for every client of this Agent, ahead of anything else on a link that came
/// back, so a restarted Lobby knows them before their next message.
fn resync_frames(agent: &AgentState) -> Vec<Vec<u8>> {
    let to = role_bytes(Role::Lobby);
    agent.resync().iter().filter_map(|msg| encode(msg).ok().map(|b| [to.as_slice(), &b].concat())).collect()
}

fn pump(mut remote: ResMut<RemoteBus>, mut bus: ResMut<ShardBus>, agent: Option<Res<AgentState>>) {
    let remote = &mut *remote;
    if let Some(rx) = &remote.incoming
        && let Ok(rx) = rx.lock()
    {
        while let Ok(link) = rx.try_recv() {
            remote.links.retain(|l| l.peer() != link.peer());
            remote.links.push(link);
        }
    }
    let timeout = remote.timeout;
    remote.links.retain(|l| {
        let dead = l.is_dead(timeout);
        if dead {
            error!(peer = ?l.peer(), "internal link dead (closed or silent)");
        }
        !dead
    });
    for role in remote.maintain_uplinks() {
        if role == Role::Agent
            && let (Some(agent), Some(link)) = (&agent, remote.link_to(Role::Lobby))
        {
            let frames = resync_frames(agent);
            info!(clients = frames.len(), "re-announcing the agent's clients to the lobby");
            for f in frames {
                link.send_raw(f);
            }
        }
    }
    // In: deliver to local roles, or forward (hub).
    let mut forward = Vec::new();
    for l in remote.links.iter().chain(remote.uplinks.iter().filter_map(|u| u.link.as_ref())) {
        while let Some(frame) = l.try_recv_raw() {
            let Some(dest) = frame.get(..5).and_then(|b| role_from(b.try_into().ok()?)) else {
                remote.misrouted += 1;
                continue;
            };
            if remote.local.contains(&dest) {
                bus.send_raw(dest, frame[5..].to_vec());
            } else {
                forward.push((dest, frame));
            }
        }
    }
    // Out: queues of roles not served here.
    for role in bus.pending_roles() {
        if remote.local.contains(&role) {
            continue;
        }
        for msg in bus.drain_raw(role) {
            forward.push((role, [role_bytes(role).as_slice(), &msg].concat()));
        }
    }
    if remote.is_hub() {
        for (dest, frame) in forward {
            match remote.link_to(dest) {
                Some(l) => {
                    l.send_raw(frame);
                }
                None => remote.misrouted += 1,
            }
        }
        return;
    }
    // A connecting role: everything goes to the Lobby, in order, queued while the link is down.
    remote.pending.extend(forward.into_iter().map(|(_, f)| f));
    while remote.pending.len() > MAX_PENDING {
        remote.pending.pop_front();
        remote.dropped_while_down += 1;
    }
    if let Some(l) = remote.uplinks.iter().find_map(|u| u.link.as_ref()) {
        for f in remote.pending.drain(..) {
            l.send_raw(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn remote_bus_stalled_handshakes_hold_up_no_one_and_are_refused_and_counted() {
        let (hb, timeout) = (Duration::from_millis(50), Duration::from_secs(1));
        let (bus, addr) =
            RemoteBus::listen(vec![Role::Lobby], "127.0.0.1:0".parse().unwrap(), [5; 32], hb, timeout)
                .unwrap();
        // Eight peers that open a handshake and stall …
        let stalled: Vec<TcpStream> = (0..8)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(&[0, 53, 1, 2]).unwrap();
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50)); // let the Lobby accept them first
        // … do not delay a genuine role.
        let t0 = Instant::now();
        let link = RemoteBus::connect(vec![Role::Agent], addr, [5; 32], hb, timeout).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert_eq!(link.peers(), vec![Role::Lobby]);
        // The stalled ones are dropped at the handshake deadline and counted.
        let deadline = Instant::now() + super::super::link::HANDSHAKE_TIMEOUT * 2;
        while bus.refused.load(Ordering::Relaxed) < 8 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20)); // real sockets, real deadline
        }
        assert_eq!(bus.refused.load(Ordering::Relaxed), 8);
        drop(stalled);
    }
}
