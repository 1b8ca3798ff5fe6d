//! `p2pmodel bench shard`: N clients against a real shard, in one process, without a Bevy app
//! per client.
//!
//! The shard (`shard all`: relay, Agent + login, Lobby, Game servers) runs in-process on its
//! own thread (`p2pm-shard`, frames at 60 Hz like `shard all`) with [`crate::shard::metrics`]
//! on. The load generator is one thread that drives every client sans-IO:
//! - a renetcode [`NetcodeClient`] + [`RenetClient`] on its own UDP socket (the shard
//!   connection, encrypted, through the real Agent sockets): the transport;
//! - a [`ClientCore`] (the game client's sans-IO core: the shard protocol and a mesh) whose
//!   datagrams use a second UDP socket (relay binds and relayed data go to the real relay);
//! - all sockets in one `epoll` set, every core timer in one heap, a 20 Hz tick per client
//!   (phases staggered).
//!
//! Clients log in (`login::request_token`, on a helper thread); their core sends Login, then
//! MeshInfo (NAT discovery skipped: an "open" NAT and the loopback host candidate, see
//! [`ClientConfig::assume_nat`]) and EnterZone, handles introductions and reports paths. They
//! move like players: clusters of `--group-min..=--group-max` players around cluster centres
//! that wander the map (members keep a loose formation around the centre), sending `Move`
//! every tick within the speed limit, and a 32-byte state message (player, tick, position,
//! velocity) at the tick rate to every introduced peer with [`ClientCore::send`] — over the
//! mesh (`--p2p on`, unreliable channel; through the Game server while a link has no path)
//! or through the Game server (`--p2p off`: `ClientMessage::ToPeer { reliable: false }`,
//! delivered as `ShardMessage::FromPeer`). Characters start at their cluster's position (a
//! pre-written character store).
//!
//! Mesh datagrams between two clients of this process are handed over in memory by default
//! (`--wire memory`): they never touch a server, and on 2 shared cores the kernel's loopback
//! path for ~20 × N × peers datagrams/s would starve the shard being measured. Relay traffic
//! and the shard connection always use real sockets. `--wire kernel` sends everything.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use p2pmodel_core::client::{Channel, ClientConfig, ClientCore, ClientEvent, ShardNotice};
use p2pmodel_core::endpoint::{ClockAnchor, Endpoint};
use p2pmodel_core::link::Path;
use p2pmodel_core::proto::shard::{NatSummary, PlayerId, ShardMessage, decode, encode};
use rand::{Rng, SeedableRng};
use renet::{ConnectionConfig, DefaultChannel, RenetClient};
use renet_netcode::{ClientAuthentication, ConnectToken};
use renetcode::NetcodeClient;

use super::cpu::CpuProbe;
pub use super::shard_result::{PhaseResult, Row};
use crate::config::ShardConfig;
use crate::relay::RelayRuntime;
use crate::shard::metrics;

/// `--p2p`: where the per-tick peer state goes.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum P2pMode {
    /// Over the mesh (direct or relayed).
    On,
    /// Through the Game server (`ToPeer` / `FromPeer`).
    Off,
    /// Off, then on, in one invocation (gives the offload ratio).
    Both,
}

/// `--wire`: how mesh datagrams between two clients of the load generator travel.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Handed over in memory (no syscall); relay traffic still uses sockets.
    Memory,
    /// Real loopback sockets for everything.
    Kernel,
}

/// `--mesh`: how much mesh work the clients do with P2P on.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshLoad {
    /// Links and per-tick state to every peer.
    Full,
    /// Links (punching, keepalives), no state.
    Idle,
    /// No links.
    None,
}

/// Arguments of `p2pmodel bench shard`.
#[derive(clap::Args, Debug, Clone)]
pub struct ShardBenchArgs {
    /// Clients to run (each: a shard connection and a mesh socket).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(2..=30_000))]
    pub clients: u32,
    /// Seconds of the measurement window per phase (after the ramp and the warm-up).
    #[arg(long, default_value_t = 10.0, value_parser = positive_secs)]
    pub seconds: f64,
    /// Seconds after the last client entered the zone before measuring (links settle).
    #[arg(long, default_value_t = 5.0, value_parser = non_negative_secs)]
    pub warmup: f64,
    /// Peer state over the mesh (`on`), through the Game server (`off`), or both phases.
    #[arg(long, value_enum, default_value_t = P2pMode::Both)]
    pub p2p: P2pMode,
    /// Smallest cluster of players moving together.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub group_min: u32,
    /// Largest cluster (≤ 16: game.max_peers is 16, so a cluster meshes fully).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub group_max: u32,
    /// Bytes of the per-tick peer state message (at least 32).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(32..=1200))]
    pub state_bytes: u32,
    /// Mesh datagrams between our own clients: in memory, or through the kernel.
    #[arg(long, value_enum, default_value_t = Wire::Memory)]
    pub wire: Wire,
    /// New clients per second during the ramp-up.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub ramp: u32,
    /// Run several client counts (comma-separated, e.g. 100,500,1000,2000) instead of
    /// `--clients`; each gets the phases of `--p2p`.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(2..=30_000))]
    pub sweep: Vec<u32>,
    /// Write SVG plots of a sweep (egress per client, tick p99 vs clients) into this folder.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<std::path::PathBuf>,
    /// Also print each phase's figures as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// With P2P on, how much of the mesh the clients run: `full` (links and per-tick state),
    /// `idle` (links opened and kept alive, no state), `none` (no links: the shard's side of
    /// P2P on — Moves, introductions — at full rate where the load generator cannot afford
    /// every client's mesh; the cores run with P2P off and send no state; no path shares
    /// then).
    #[arg(long, value_enum, default_value_t = MeshLoad::Full)]
    pub mesh: MeshLoad,
    /// Random seed (cluster layout and movement).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Load-generator threads (0: one per CPU). Clusters are dealt over them whole, so a
    /// cluster's mesh stays in one thread's memory; peers on two threads use loopback.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub gen_threads: u32,
    /// Clients that run the full client (peer state at the tick rate to their full peers,
    /// links with `--mesh full`); the others (the last N − K, numbered cluster by cluster)
    /// are light in both phases: Moves and the shard connection only. Default: all.
    #[arg(long)]
    pub full: Option<u32>,
    /// The shard's `agent.io_threads` (0: the Agent's netcode I/O in the frame, as before #16).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=32))]
    pub agent_io_threads: u32,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds in (0, 3600]")),
    }
}

fn non_negative_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=600.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds in [0, 600]")),
    }
}

// ---------------------------------------------------------------------------------------
// The shard under test.

struct ShardUnderTest {
    login: crate::shard::login::ShardAddress,
    relay: RelayRuntime,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    store: std::path::PathBuf,
}

impl Drop for ShardUnderTest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.store);
    }
}

fn free_udp_port() -> io::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn bench_config(n: u32, store: &std::path::Path, io_threads: u32) -> Result<ShardConfig, String> {
    let secret: [u8; 32] = rand::random();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let login = free_udp_port().map_err(|e| e.to_string())?;
    let text = format!(
        "[shard]\nname = \"bench\"\nsecret = \"{hex}\"\nbind = \"127.0.0.1\"\n\
         [relay]\nport = 0\nalternate_port = 0\n\
         [relay.link_quota]\npackets_per_sec = 100000\nbytes_per_sec = 100000000\n\
         [relay.source_quota]\npackets_per_sec = 1000000\nbytes_per_sec = 1000000000\n\
         [agent]\nport = 0\nlogin_port = {login}\nmax_clients = {}\nmax_messages_per_sec = 2000\n\
         max_clients_per_ip = 32768\nlogin_per_source_per_sec = 100000\nlogin_per_source_burst = 100000\n\
         login_per_sec = 100000\nlogin_burst = 100000\nio_threads = {io_threads}\n\
         [lobby]\nzones = 1\nstore = \"{}\"\n\
         [game]\nservers_per_zone = 1\ncapacity = {}\n",
        (n as usize + 64).min(32_768),
        store.display(),
        n + 64,
    );
    ShardConfig::parse(&text).map_err(|e| format!("bench shard config: {e}"))
}

fn start_shard(cfg: &ShardConfig, store: std::path::PathBuf) -> Result<ShardUnderTest, String> {
    let relay = RelayRuntime::start(cfg).map_err(|e| format!("relay: {e}"))?;
    let relay_addr = relay.server.primary_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let (cfg2, stop2) = (cfg.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("p2pm-shard".into())
        .spawn(move || {
            let mut app = match crate::shard::shard_app(&cfg2, Some(relay_addr), None, 60.0) {
                Ok(app) => app,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let info = app.world().resource::<crate::shard::ShardInfo>();
            let _ = tx.send(info.shard_address().ok_or_else(|| "no login service".to_string()));
            let frame = Duration::from_secs_f64(1.0 / 60.0);
            let mut next = Instant::now();
            while !stop2.load(Ordering::Relaxed) {
                app.update();
                next += frame;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let login = rx.recv().map_err(|_| "shard thread died".to_string())??;
    Ok(ShardUnderTest { login, relay, stop, thread: Some(thread), store })
}

// ---------------------------------------------------------------------------------------
// The load generator.

/// epoll over every client socket; a token is `client << 1 | is_mesh`.
struct Poller {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    fn new() -> io::Result<Poller> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller { fd, events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024] })
    }

    fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: valid epoll fd and event.
        if unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&mut self, timeout_ms: i32) -> Vec<u64> {
        // SAFETY: the buffer holds `len` events.
        let n = unsafe {
            libc::epoll_wait(self.fd, self.events.as_mut_ptr(), self.events.len() as i32, timeout_ms)
        };
        (0..n.max(0) as usize).map(|i| self.events[i].u64).collect()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: our fd.
        unsafe { libc::close(self.fd) };
    }
}

/// Longest time one loop turn spends on in-memory mesh datagrams, and on mesh timers.
const WIRE_BUDGET: Duration = Duration::from_millis(10);

#[derive(Clone, Copy)]
struct Cluster {
    x: f32,
    y: f32,
    heading: f32,
    next_turn: f64,
}

struct Client {
    cluster: usize,
    offset: (f32, f32),
    nc: NetcodeClient,
    renet: RenetClient,
    nc_sock: UdpSocket,
    /// The shard protocol and the mesh; its datagrams use `mesh_sock`.
    core: ClientCore,
    mesh_sock: UdpSocket,
    mesh_addr: SocketAddr,
    last_update: Instant,
    next_tick: Instant,
    /// `core.connected()` was called.
    joined: bool,
    dead: bool,
    entered: bool,
    pos: (f32, f32),
    vel: (f32, f32),
    tick: u32,
    /// Introductions received (`ClientEvent::PeerAdded`).
    intros: u64,
    /// Reused buffer for the introduced peers of a tick.
    peers: Vec<PlayerId>,
    /// Moves and the shard connection only (`--full`): no peer state, no links.
    light: bool,
}

#[derive(Default, Clone, Copy)]
struct Counters {
    state_sent: u64,
    state_recv: u64,
    ticks: u64,
    /// State messages due (peers × ticks), sent or skipped.
    state_due: u64,
}

struct Generator {
    clients: Vec<Client>,
    clusters: Vec<Cluster>,
    poller: Poller,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    wire: VecDeque<(usize, SocketAddr, Vec<u8>)>,
    by_mesh_addr: HashMap<SocketAddr, usize>,
    dirty: Vec<usize>,
    is_dirty: Vec<bool>,
    p2p: bool,
    mesh: MeshLoad,
    memory_wire: bool,
    tick: Duration,
    max_step: f32,
    state_bytes: usize,
    counters: Counters,
    buf: Vec<u8>,
    rng: rand::rngs::StdRng,
    start: Instant,
    world: f32,
    /// Players `1..=full_players` run the full client (`--full`); state goes only to them,
    /// and only their links are counted (a light peer runs no mesh).
    full_players: u64,
}

fn unix() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

impl Generator {
    fn add_client(
        &mut self,
        name: String,
        cluster: usize,
        offset: (f32, f32),
        token: ConnectToken,
        light: bool,
    ) -> io::Result<()> {
        let i = self.clients.len();
        let nc = NetcodeClient::new(unix(), ClientAuthentication::Secure { connect_token: token })
            .map_err(|e| io::Error::other(e.to_string()))?;
        let nc_sock = UdpSocket::bind("127.0.0.1:0")?;
        nc_sock.set_nonblocking(true)?;
        let mesh_sock = UdpSocket::bind("127.0.0.1:0")?;
        mesh_sock.set_nonblocking(true)?;
        let mesh_addr = mesh_sock.local_addr()?;
        self.poller.add(nc_sock.as_raw_fd(), (i as u64) << 1)?;
        self.poller.add(mesh_sock.as_raw_fd(), ((i as u64) << 1) | 1)?;
        let now = Instant::now();
        let clock = ClockAnchor { at: now, unix_micros: unix().as_micros() as u64 };
        let phase = self.tick.mul_f64(self.rng.random::<f64>());
        let mut cfg = ClientConfig::new(name);
        // `--mesh none`: the shard's side of P2P on without links, i.e. a core that opens none.
        cfg.p2p = self.p2p && self.mesh != MeshLoad::None && !light;
        // No NAT discovery on loopback: announce an open NAT and the host candidate at once.
        cfg.assume_nat = Some(NatSummary {
            class: "open".into(),
            dependent_mapping: false,
            port_delta: None,
            public: None,
        });
        let mut core = ClientCore::new(now, cfg, clock, &[mesh_addr]);
        core.enter_zone(now, 0);
        self.by_mesh_addr.insert(mesh_addr, i);
        self.is_dirty.push(false);
        self.clients.push(Client {
            cluster,
            offset,
            nc,
            renet: RenetClient::new(ConnectionConfig::default()),
            nc_sock,
            core,
            mesh_sock,
            mesh_addr,
            last_update: now,
            next_tick: now + phase,
            joined: false,
            dead: false,
            entered: false,
            pos: (0.0, 0.0),
            vel: (0.0, 0.0),
            tick: 0,
            intros: 0,
            peers: Vec::new(),
            light,
        });
        Ok(())
    }

    /// Advance netcode and renet, and send what renet has queued.
    fn pump_shard(&mut self, i: usize, now: Instant) {
        let c = &mut self.clients[i];
        if c.dead {
            return;
        }
        let dt = now.saturating_duration_since(c.last_update);
        c.last_update = now;
        if let Some((packet, addr)) = c.nc.update(dt) {
            let _ = c.nc_sock.send_to(packet, addr);
        }
        if c.nc.is_disconnected() {
            c.dead = true;
            c.core.disconnected();
            return;
        }
        if c.nc.is_connected() {
            c.renet.set_connected();
        } else {
            c.renet.set_connecting();
        }
        c.renet.update(dt);
        if c.nc.is_connected() {
            for packet in c.renet.get_packets_to_send() {
                if let Ok((addr, bytes)) = c.nc.generate_payload_packet(&packet) {
                    let _ = c.nc_sock.send_to(bytes, addr);
                }
            }
        }
    }

    fn on_shard_datagram(&mut self, i: usize, now: Instant) {
        let c = &mut self.clients[i];
        while let Ok((n, from)) = c.nc_sock.recv_from(&mut self.buf) {
            if from != c.nc.server_addr() {
                continue;
            }
            if let Some(payload) = c.nc.process_packet(&mut self.buf[..n]) {
                let renet = &mut c.renet;
                if p2pmodel_core::guard::catch_panic(|| renet.process_packet(payload)).is_err() {
                    // A renet that panicked mid-update is not used again: this bot is done.
                    c.renet = RenetClient::new(ConnectionConfig::default());
                    c.renet.disconnect();
                }
            }
        }
        for ch in [DefaultChannel::ReliableOrdered, DefaultChannel::Unreliable].map(u8::from) {
            while let Some(b) = c.renet.receive_message(ch) {
                if let Ok(m) = decode::<ShardMessage>(&b) {
                    c.core.handle_shard_message(now, m);
                }
            }
        }
        self.drain_core(i, now);
    }

    /// Drain a core after any input: shard messages into renet, events (positions,
    /// introductions, received state), datagrams (in memory or to the socket); re-arm its
    /// timer.
    fn drain_core(&mut self, i: usize, now: Instant) {
        let c = &mut self.clients[i];
        while let Some((msg, reliable)) = c.core.poll_shard_message() {
            let channel = if reliable { DefaultChannel::ReliableOrdered } else { DefaultChannel::Unreliable };
            if let Ok(b) = encode(&msg) {
                c.renet.send_message(channel, b);
            }
        }
        while let Some(ev) = c.core.poll_event() {
            match ev {
                ClientEvent::Message { .. } => self.counters.state_recv += 1,
                ClientEvent::Shard(ShardNotice::EnteredZone { x, y, .. }) => {
                    c.pos = (x, y);
                    c.entered = true;
                }
                ClientEvent::Shard(ShardNotice::Correction { x, y }) => c.pos = (x, y),
                ClientEvent::PeerAdded { .. } => c.intros += 1,
                _ => {}
            }
        }
        while let Some(t) = c.core.poll_transmit() {
            match self.by_mesh_addr.get(&t.dst) {
                Some(&dst) if self.memory_wire => self.wire.push_back((dst, c.mesh_addr, t.payload.to_vec())),
                _ => {
                    let _ = c.mesh_sock.send_to(&t.payload, t.dst);
                }
            }
        }
        if let Some(t) = c.core.poll_timeout() {
            self.timers.push(Reverse((t.max(now), i)));
        }
    }

    /// Hand a datagram to client `i`'s core; its output is collected by
    /// [`Self::flush_dirty`] once per turn, however many datagrams it got.
    fn on_mesh_datagram(&mut self, i: usize, from: SocketAddr, data: &[u8], now: Instant) {
        let c = &mut self.clients[i];
        c.core.handle_datagram(now, c.mesh_addr, from, data);
        if !self.is_dirty[i] {
            self.is_dirty[i] = true;
            self.dirty.push(i);
        }
    }

    /// Received state, transmits, events and timers of every core that got datagrams.
    fn flush_dirty(&mut self, now: Instant) {
        for i in std::mem::take(&mut self.dirty) {
            self.is_dirty[i] = false;
            self.drain_core(i, now);
        }
    }

    fn read_mesh_socket(&mut self, i: usize, now: Instant) {
        let mut buf = std::mem::take(&mut self.buf);
        while let Ok((n, from)) = self.clients[i].mesh_sock.recv_from(&mut buf) {
            self.on_mesh_datagram(i, from, &buf[..n], now);
        }
        self.buf = buf;
    }

    fn move_clusters(&mut self, dt: f32, t: f64) {
        let speed = self.max_step * 0.6 / self.tick.as_secs_f32();
        for c in &mut self.clusters {
            if t >= c.next_turn {
                c.heading += self.rng.random_range(-1.5f32..1.5);
                c.next_turn = t + self.rng.random_range(3.0..10.0);
            }
            c.x += c.heading.cos() * speed * dt;
            c.y += c.heading.sin() * speed * dt;
            if c.x < 0.0 || c.x > self.world {
                c.heading = std::f32::consts::PI - c.heading;
                c.x = c.x.clamp(0.0, self.world);
            }
            if c.y < 0.0 || c.y > self.world {
                c.heading = -c.heading;
                c.y = c.y.clamp(0.0, self.world);
            }
        }
    }

    /// One client's 20 Hz tick; `late`: skip the mesh state this time.
    fn client_tick(&mut self, i: usize, now: Instant, late: bool) {
        self.counters.ticks += 1;
        let (cx, cy) = {
            let k = &self.clusters[self.clients[i].cluster];
            (k.x, k.y)
        };
        let c = &mut self.clients[i];
        if c.nc.is_connected() && !c.joined {
            c.joined = true;
            c.core.connected();
        }
        if c.entered {
            let target = (cx + c.offset.0, cy + c.offset.1);
            let (dx, dy) = (target.0 - c.pos.0, target.1 - c.pos.1);
            let d = (dx * dx + dy * dy).sqrt();
            let step = d.min(self.max_step);
            c.vel = if d > 1e-3 { (dx / d * step, dy / d * step) } else { (0.0, 0.0) };
            c.pos = (c.pos.0 + c.vel.0, c.pos.1 + c.vel.1);
            c.tick = c.tick.wrapping_add(1);
            c.core.move_to(c.pos.0, c.pos.1);
            let mut peers = std::mem::take(&mut c.peers);
            peers.clear();
            let full = self.full_players;
            peers.extend(c.core.peers().map(|p| p.player).filter(|p| p.0 <= full));
            // Light clients and `--mesh idle|none` owe no state.
            let owes = !(c.light || (self.p2p && self.mesh != MeshLoad::Full));
            if owes {
                self.counters.state_due += peers.len() as u64;
            }
            if owes && !late {
                let state = self.state_message(i);
                let c = &mut self.clients[i];
                for &peer in &peers {
                    self.counters.state_sent += 1;
                    let _ = c.core.send(peer, Channel::Unreliable, state.clone());
                }
            }
            let c = &mut self.clients[i];
            c.peers = peers;
            if self.p2p && !late {
                c.core.handle_timeout(now);
            }
        }
        self.drain_core(i, now);
        self.pump_shard(i, now);
    }

    /// Client `i`'s per-tick state message: player, tick, position, velocity, padded to
    /// `--state-bytes`.
    fn state_message(&self, i: usize) -> Bytes {
        let c = &self.clients[i];
        let mut state = vec![0u8; self.state_bytes];
        state[..8].copy_from_slice(&c.core.player().map_or(0, |p| p.0).to_le_bytes());
        state[8..12].copy_from_slice(&c.tick.to_le_bytes());
        for (k, v) in [c.pos.0, c.pos.1, c.vel.0, c.vel.1].iter().enumerate() {
            state[12 + 4 * k..16 + 4 * k].copy_from_slice(&v.to_le_bytes());
        }
        Bytes::from(state)
    }

    /// Run the loop until `until`; `on_second` is called about once a second.
    fn run(&mut self, until: Instant, mut on_second: impl FnMut(&mut Generator, Instant)) {
        let mut last_cluster_move = Instant::now();
        let mut next_second = Instant::now() + Duration::from_secs(1);
        loop {
            let now = Instant::now();
            if now >= until {
                break;
            }
            // Wait for sockets until the next client tick or mesh timer (≤ 2 ms).
            let next_timer = self.timers.peek().map(|Reverse((t, _))| *t);
            let wait = next_timer
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(2))
                .min(Duration::from_millis(2));
            let ready = if self.wire.is_empty() {
                self.poller.wait(wait.as_millis() as i32)
            } else {
                self.poller.wait(0)
            };
            let now = Instant::now();
            for token in ready {
                let i = (token >> 1) as usize;
                if i >= self.clients.len() {
                    continue;
                }
                if token & 1 == 0 {
                    self.on_shard_datagram(i, now);
                    // Connected clients answer (acks) in their next tick, as a 20 Hz game
                    // client would; during the handshake at once.
                    if !self.clients[i].nc.is_connected() {
                        self.pump_shard(i, now);
                    }
                } else {
                    self.read_mesh_socket(i, now);
                }
            }
            let dt = now.duration_since(last_cluster_move).as_secs_f32();
            if dt >= 0.05 {
                last_cluster_move = now;
                let t = now.duration_since(self.start).as_secs_f64();
                self.move_clusters(dt, t);
            }
            // Client ticks before the mesh backlog: Moves (the shard's load) go out on time.
            for i in 0..self.clients.len() {
                if self.clients[i].next_tick <= now {
                    let c = &mut self.clients[i];
                    // Behind by more than half a tick: the load generator is short of CPU.
                    // Moves still go out; mesh state waits for a turn that is on time
                    // (counted: `state_due` vs `state_sent`).
                    let late = self.p2p && now.duration_since(c.next_tick) > self.tick / 2;
                    c.next_tick += self.tick;
                    if c.next_tick < now {
                        c.next_tick = now + self.tick; // fell behind: skip, do not burst
                    }
                    self.client_tick(i, now, late);
                }
            }
            // In-memory mesh datagrams queued before this turn, within a time budget; the
            // rest (and answers) wait for the next turn.
            let t0 = Instant::now();
            for _ in 0..self.wire.len() {
                if t0.elapsed() > WIRE_BUDGET {
                    break;
                }
                let Some((dst, from, bytes)) = self.wire.pop_front() else { break };
                self.on_mesh_datagram(dst, from, &bytes, now);
            }
            self.flush_dirty(now);
            let t0 = Instant::now();
            while let Some(&Reverse((t, i))) = self.timers.peek() {
                if t > now || t0.elapsed() > WIRE_BUDGET {
                    break;
                }
                self.timers.pop();
                let c = &mut self.clients[i];
                if c.core.poll_timeout().is_some_and(|d| d <= now) {
                    c.core.handle_timeout(now);
                    self.drain_core(i, now);
                }
            }
            if now >= next_second {
                next_second += Duration::from_secs(1);
                on_second(self, now);
            }
        }
    }

    fn connected(&self) -> u32 {
        self.clients.iter().filter(|c| c.nc.is_connected()).count() as u32
    }

    fn in_zone(&self) -> u32 {
        self.clients.iter().filter(|c| c.entered).count() as u32
    }

    fn link_paths(&self, now: Instant) -> (u64, u64, u64) {
        let (mut d, mut r, mut f) = (0, 0, 0);
        for c in self.clients.iter().filter(|c| !c.light) {
            for p in c.core.peers().filter(|p| p.player.0 <= self.full_players) {
                if now.duration_since(p.introduced_at) < Duration::from_secs(3) {
                    continue;
                }
                match c.core.mesh().link(p.link).map(|k| k.path()) {
                    Some(Path::Direct { .. }) => d += 1,
                    Some(Path::Relayed { .. }) => r += 1,
                    _ => f += 1,
                }
            }
        }
        (d, r, f)
    }
}

/// `RcvbufErrors` of `/proc/net/snmp` (machine-wide UDP receive-buffer drops).
fn udp_rcvbuf_errors() -> u64 {
    let s = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = s.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(h), Some(v)) = (udp.next(), udp.next()) else { return 0 };
    let col = h.split_whitespace().position(|f| f == "RcvbufErrors");
    col.and_then(|c| v.split_whitespace().nth(c)?.parse().ok()).unwrap_or(0)
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn raise_nofile() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 && r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: valid pointer.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    }
}

fn nofile_limit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    r.rlim_cur
}

fn merge(probes: &[CpuProbe]) -> CpuProbe {
    let mut dirs = Vec::new();
    for p in probes {
        if let CpuProbe::Tasks(t) = p {
            dirs.extend(t.iter().cloned());
        }
    }
    CpuProbe::Tasks(dirs)
}

/// One simulated player: its name, its cluster and its offset from the cluster's centre.
type Member = (String, usize, (f32, f32));

/// A load-generator thread's counters, published for the main thread.
#[derive(Default)]
struct GenStats {
    state_sent: AtomicU64,
    state_recv: AtomicU64,
    ticks: AtomicU64,
    state_due: AtomicU64,
    clients: AtomicU64,
    connected: AtomicU64,
    in_zone: AtomicU64,
}

impl GenStats {
    fn publish(&self, g: &Generator) {
        let c = g.counters;
        self.state_sent.store(c.state_sent, Ordering::Relaxed);
        self.state_recv.store(c.state_recv, Ordering::Relaxed);
        self.ticks.store(c.ticks, Ordering::Relaxed);
        self.state_due.store(c.state_due, Ordering::Relaxed);
        self.clients.store(g.clients.len() as u64, Ordering::Relaxed);
        self.connected.store(u64::from(g.connected()), Ordering::Relaxed);
        self.in_zone.store(u64::from(g.in_zone()), Ordering::Relaxed);
    }
}

/// What a load-generator thread reports when it stops (at the end of the window).
#[derive(Default)]
struct GenFinal {
    links: (u64, u64, u64),
    introductions: u64,
    connected: u32,
    in_zone: u32,
    sockets: Vec<(String, u32)>,
}

/// The load-generator threads of a phase.
struct Generators {
    stats: Vec<Arc<GenStats>>,
    feeds: Vec<mpsc::Sender<(Member, ConnectToken, bool)>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<GenFinal>>,
}

impl Generators {
    fn sum(&self, f: impl Fn(&GenStats) -> &AtomicU64) -> u64 {
        self.stats.iter().map(|s| f(s).load(Ordering::Relaxed)).sum()
    }

    fn counters(&self) -> Counters {
        Counters {
            state_sent: self.sum(|s| &s.state_sent),
            state_recv: self.sum(|s| &s.state_recv),
            ticks: self.sum(|s| &s.ticks),
            state_due: self.sum(|s| &s.state_due),
        }
    }

    fn connected(&self) -> u64 {
        self.sum(|s| &s.connected)
    }

    fn in_zone(&self) -> u64 {
        self.sum(|s| &s.in_zone)
    }

    fn clients(&self) -> u64 {
        self.sum(|s| &s.clients)
    }

    /// Stop every thread; their link paths, introductions and sockets, summed.
    fn finish(mut self) -> GenFinal {
        self.stop.store(true, Ordering::Relaxed);
        self.feeds.clear();
        let mut f = GenFinal::default();
        let mut sockets = std::collections::BTreeMap::new();
        for t in self.threads.drain(..) {
            let Ok(r) = t.join() else { continue };
            f.links = (f.links.0 + r.links.0, f.links.1 + r.links.1, f.links.2 + r.links.2);
            f.introductions += r.introductions;
            f.connected += r.connected;
            f.in_zone += r.in_zone;
            for (a, n) in r.sockets {
                *sockets.entry(a).or_insert(0u32) += n;
            }
        }
        f.sockets = sockets.into_iter().collect();
        f
    }
}

impl Drop for Generators {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One load-generator thread: add the clients it is fed, run them until told to stop.
fn gen_thread(
    mut g: Generator,
    feed: mpsc::Receiver<(Member, ConnectToken, bool)>,
    stop: Arc<AtomicBool>,
    stats: Arc<GenStats>,
    links: bool,
) -> GenFinal {
    while !stop.load(Ordering::Relaxed) {
        while let Ok(((name, k, off), token, light)) = feed.try_recv() {
            if let Err(e) = g.add_client(name, k, off, token, light) {
                tracing::warn!("bench client socket: {e}");
            }
        }
        g.run(Instant::now() + Duration::from_millis(20), |_, _| {});
        stats.publish(&g);
    }
    let now = Instant::now();
    let mut sockets = std::collections::BTreeMap::new();
    for c in g.clients.iter().filter(|c| c.nc.is_connected()) {
        *sockets.entry(c.nc.server_addr().to_string()).or_insert(0u32) += 1;
    }
    GenFinal {
        links: if links { g.link_paths(now) } else { (0, 0, 0) },
        introductions: g.clients.iter().map(|c| c.intros).sum(),
        connected: g.connected(),
        in_zone: g.in_zone(),
        sockets: sockets.into_iter().collect(),
    }
}

/// Load-generator threads (`--gen-threads`, 0: one per CPU), at most one per cluster.
fn gen_threads(args: &ShardBenchArgs, clusters: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t = if args.gen_threads == 0 { cpus } else { args.gen_threads as usize };
    t.clamp(1, clusters.max(1))
}

/// Run one phase: a fresh shard, `n` clients, ramp, warm-up, measurement window.
pub fn run_phase(args: &ShardBenchArgs, n: u32, p2p: bool) -> Result<PhaseResult, String> {
    check_phase(args, n)?;
    metrics::enable();
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ u64::from(n));
    let (clusters, members, world) = lay_out(args, n, &mut rng);
    let store = write_store(&clusters, &members, n, p2p)?;
    let cfg = bench_config(n, &store, args.agent_io_threads)?;
    let shard = start_shard(&cfg, store)?;
    let tick = Duration::from_secs_f64(1.0 / f64::from(cfg.game.tick_hz));
    let threads = gen_threads(args, clusters.len());
    let stop = Arc::new(AtomicBool::new(false));
    let mut gens =
        Generators { stats: Vec::new(), feeds: Vec::new(), stop: stop.clone(), threads: Vec::new() };
    for t in 0..threads {
        let g = Generator {
            clients: Vec::new(),
            clusters: clusters.clone(),
            poller: Poller::new().map_err(|e| e.to_string())?,
            timers: BinaryHeap::new(),
            wire: VecDeque::new(),
            by_mesh_addr: HashMap::new(),
            dirty: Vec::new(),
            is_dirty: Vec::new(),
            p2p,
            mesh: args.mesh,
            memory_wire: args.wire == Wire::Memory,
            tick,
            max_step: cfg.game.max_speed * 0.9 * tick.as_secs_f32(),
            state_bytes: args.state_bytes as usize,
            counters: Counters::default(),
            buf: vec![0; 2048],
            rng: rand::rngs::StdRng::seed_from_u64(args.seed ^ u64::from(n) ^ ((t as u64 + 1) << 32)),
            start: Instant::now(),
            world,
            full_players: u64::from(args.full.unwrap_or(n).min(n)),
        };
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(GenStats::default());
        let (stop, st) = (stop.clone(), stats.clone());
        let links = p2p && args.mesh != MeshLoad::None;
        let h = std::thread::Builder::new()
            .name(format!("p2pm-bench-gen-{t}"))
            .spawn(move || gen_thread(g, rx, stop, st, links))
            .map_err(|e| e.to_string())?;
        gens.stats.push(stats);
        gens.feeds.push(tx);
        gens.threads.push(h);
    }
    let mode = if p2p { "on " } else { "off" };
    ramp_up(&gens, args, n, &members, shard.login, mode)?;
    // Warm-up.
    let warm_until = Instant::now() + Duration::from_secs_f64(args.warmup);
    while Instant::now() < warm_until {
        std::thread::sleep(
            Duration::from_millis(250).min(warm_until.saturating_duration_since(Instant::now())),
        );
        eprint!(
            "\r  p2p {mode} N={n:<5} warm-up: connected {:>5}  in zone {:>5}                 ",
            gens.connected(),
            gens.in_zone()
        );
    }
    let r = measure(gens, &shard, args, n, p2p, tick);
    eprintln!("\r  p2p {mode} N={n:<5} done{:<90}", "");
    drop(shard);
    Ok(r)
}

/// Refuse a phase the process cannot run (too few file descriptors) or bad group sizes.
fn check_phase(args: &ShardBenchArgs, n: u32) -> Result<(), String> {
    raise_nofile();
    let need = u64::from(n) * 2 + 256;
    if nofile_limit() < need {
        return Err(format!(
            "{n} clients need about {need} file descriptors; the limit is {} (raise it with `ulimit -n`)",
            nofile_limit()
        ));
    }
    if args.group_min > args.group_max {
        return Err(format!("--group-min {} is larger than --group-max {}", args.group_min, args.group_max));
    }
    Ok(())
}

/// Clusters and their members, laid out on a square map with room between clusters; also
/// the map's side.
fn lay_out(args: &ShardBenchArgs, n: u32, rng: &mut rand::rngs::StdRng) -> (Vec<Cluster>, Vec<Member>, f32) {
    let mut sizes = Vec::new();
    let mut left = n;
    while left > 0 {
        let s = rng.random_range(args.group_min..=args.group_max).min(left);
        sizes.push(s);
        left -= s;
    }
    let world = (sizes.len() as f32).sqrt() * 250.0;
    let clusters: Vec<Cluster> = sizes
        .iter()
        .map(|_| Cluster {
            x: rng.random_range(0.0..world),
            y: rng.random_range(0.0..world),
            heading: rng.random_range(0.0..std::f32::consts::TAU),
            next_turn: rng.random_range(0.0..5.0),
        })
        .collect();
    let mut members = Vec::new();
    for (k, s) in sizes.iter().enumerate() {
        for _ in 0..*s {
            let (r, a) = (rng.random_range(0.0f32..15.0), rng.random_range(0.0..std::f32::consts::TAU));
            members.push((format!("b{}", members.len()), k, (r * a.cos(), r * a.sin())));
        }
    }
    (clusters, members, world)
}

/// The Lobby's character store for this phase: every member at its place, in zone 0.
fn write_store(
    clusters: &[Cluster],
    members: &[Member],
    n: u32,
    p2p: bool,
) -> Result<std::path::PathBuf, String> {
    let store = std::env::temp_dir().join(format!("p2pm-bench-shard-{}-{n}-{p2p}.json", std::process::id()));
    let mut chars = serde_json::Map::new();
    for (j, (name, k, off)) in members.iter().enumerate() {
        let (x, y) = (clusters[*k].x + off.0, clusters[*k].y + off.1);
        chars.insert(name.clone(), serde_json::json!({"player": j + 1, "zone": 0, "x": x, "y": y}));
    }
    std::fs::write(&store, serde_json::Value::Object(chars).to_string())
        .map_err(|e| format!("store: {e}"))?;
    Ok(store)
}

/// Log every member in (on a helper thread) and hand the clients to their threads (by
/// cluster) at `--ramp` per second, until all are in the zone or the ramp's deadline passes.
fn ramp_up(
    gens: &Generators,
    args: &ShardBenchArgs,
    n: u32,
    members: &[Member],
    login: crate::shard::login::ShardAddress,
    mode: &str,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    let names: Vec<String> = members.iter().map(|m| m.0.clone()).collect();
    let login_thread = std::thread::Builder::new()
        .name("p2pm-bench-login".into())
        .spawn(move || {
            for name in names {
                let t = crate::shard::login::request_token(&login, &name, b"").map_err(|e| e.to_string());
                if tx.send(t).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let full = args.full.unwrap_or(n).min(n) as usize;
    let ramp_start = Instant::now();
    let deadline = ramp_start + Duration::from_secs_f64(30.0 + f64::from(n) / f64::from(args.ramp) * 3.0);
    let mut err = None;
    let mut fed = 0usize;
    while gens.in_zone() < u64::from(n) && Instant::now() < deadline {
        let allowed =
            ((ramp_start.elapsed().as_secs_f64() * f64::from(args.ramp)) as usize + 1).min(n as usize);
        while fed < allowed {
            match rx.try_recv() {
                Ok(Ok(token)) => {
                    let m = members[fed].clone();
                    let t = m.1 % gens.feeds.len();
                    let light = fed >= full;
                    gens.feeds[t]
                        .send((m, token, light))
                        .map_err(|_| "load-generator thread died".to_string())?;
                    fed += 1;
                }
                Ok(Err(e)) => {
                    err = Some(format!("login failed: {e}"));
                    break;
                }
                Err(_) => break,
            }
        }
        if err.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        eprint!(
            "\r  p2p {mode} N={n:<5} ramp: logged in {:>5}  connected {:>5}  in zone {:>5}   ",
            fed,
            gens.connected(),
            gens.in_zone()
        );
    }
    let _ = login_thread.join();
    if let Some(e) = err {
        eprintln!();
        return Err(e);
    }
    if gens.in_zone() < u64::from(n) {
        tracing::warn!(in_zone = gens.in_zone(), n, "not every client entered the zone before the deadline");
    }
    Ok(())
}

/// Every counter a phase's figures are differences of, read at one instant.
struct Sample {
    agent: [u64; 4],
    game: [u64; 4],
    relay: crate::relay::StatsSnapshot,
    shard_ns: Option<u64>,
    /// The frame thread and the Agent's I/O threads (parts of `shard_ns`).
    frame_ns: Option<u64>,
    agent_io_ns: Option<u64>,
    loadgen_ns: Option<u64>,
    machine: Option<(u64, u64, u64)>,
    counters: Counters,
}

impl Sample {
    fn take(g: &Generators, shard: &ShardUnderTest, probes: &[CpuProbe; 4]) -> Sample {
        let reg = metrics::registry();
        let (agent, game, relay) = (reg.agent.read(), reg.game.read(), shard.relay.server.snapshot());
        let [shard_cpu, frame, io, gen_cpu] = probes;
        Sample {
            agent,
            game,
            relay,
            shard_ns: shard_cpu.read_ns(),
            frame_ns: frame.read_ns(),
            agent_io_ns: io.read_ns(),
            loadgen_ns: gen_cpu.read_ns(),
            machine: super::cpu::machine_jiffies(),
            counters: g.counters(),
        }
    }
}

/// The relay's drops by reason (core and data plane) between two snapshots, non-zero ones.
fn relay_drops(a: &crate::relay::StatsSnapshot, b: &crate::relay::StatsSnapshot) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = b
        .core
        .drops()
        .zip(a.core.drops())
        .map(|((r, x), (_, y))| (r.label().to_string(), x.saturating_sub(y)))
        .collect();
    let (p, q) = (&b.plane, &a.plane);
    for (name, x, y) in [
        ("stun_unanswered", p.stun_unanswered, q.stun_unanswered),
        ("not_relay_port", p.not_relay_port, q.not_relay_port),
        ("bad_source", p.bad_source, q.bad_source),
        ("send_errors", p.send_errors, q.send_errors),
        ("batch_overflow", p.batch_overflow, q.batch_overflow),
        ("truncated", p.truncated, q.truncated),
        ("handoff_dropped", p.handoff_dropped, q.handoff_dropped),
    ] {
        v.push((name.to_string(), x.saturating_sub(y)));
    }
    v.retain(|(_, n)| *n > 0);
    v
}

/// The measurement window: run `--seconds`, showing progress, and compute the figures.
fn measure(
    gens: Generators,
    shard: &ShardUnderTest,
    args: &ShardBenchArgs,
    n: u32,
    p2p: bool,
    tick: Duration,
) -> PhaseResult {
    let mode = if p2p { "on " } else { "off" };
    let reg = metrics::registry();
    let shard_cpu = merge(&[
        CpuProbe::threads_named("p2pm-shard"),
        CpuProbe::threads_named("p2pm-agent-io"),
        CpuProbe::threads_named("relay-"),
        CpuProbe::threads_named("p2pm-login"),
    ]);
    let probes = [
        shard_cpu,
        CpuProbe::threads_named("p2pm-shard"),
        CpuProbe::threads_named("p2pm-agent-io"),
        CpuProbe::threads_named("p2pm-bench-gen"),
    ];
    metrics::reset_histograms();
    let s0 = Sample::take(&gens, shard, &probes);
    let drops0 = udp_rcvbuf_errors();
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(args.seconds);
    let mut rss_peak = rss_mib();
    let mut last = (start, reg.agent.read()[1], s0.relay.forwarded_bytes);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_secs(1).min(until.saturating_duration_since(Instant::now())));
        let now = Instant::now();
        rss_peak = rss_peak.max(rss_mib());
        let (a, r) = (reg.agent.read()[1], shard.relay.server.snapshot().forwarded_bytes);
        let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
        let tick99 = reg.tick.lock().ok().and_then(|h| h.quantile_ms(0.99));
        eprint!(
            "\r  p2p {mode} N={n:<5} {:>4.1}/{:.0} s  connected {:>5}  egress {:>8.1} kB/s  tick p99 {:>6} ms   ",
            now.duration_since(start).as_secs_f64(),
            args.seconds,
            gens.connected(),
            ((a - last.1) + (r - last.2)) as f64 / dt / 1e3,
            tick99.map_or("-".into(), |t| format!("{t:.2}")),
        );
        last = (now, a, r);
    }
    let window = start.elapsed().as_secs_f64();
    let s1 = Sample::take(&gens, shard, &probes);
    rss_peak = rss_peak.max(rss_mib());
    let clients = gens.clients();
    let threads = gens.threads.len() as u32;
    let fin = gens.finish();
    let mut r = phase_result(n, p2p, window, &s0, &s1, clients, tick, fin);
    r.gen_threads = threads;
    r.rss_peak_mib = rss_peak;
    r.udp_rcvbuf_drops = udp_rcvbuf_errors().saturating_sub(drops0);
    r
}

/// The figures of a window of `window` seconds between two samples; `fin`: the load
/// generator's link ends (direct, relayed, failed) and counts at its end.
#[allow(clippy::too_many_arguments)]
fn phase_result(
    n: u32,
    p2p: bool,
    window: f64,
    s0: &Sample,
    s1: &Sample,
    clients: u64,
    tick: Duration,
    fin: GenFinal,
) -> PhaseResult {
    let reg = metrics::registry();
    let (c0, c1) = (s0.counters, s1.counters);
    let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / window;
    let cpu = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9 / window,
        _ => f64::NAN,
    };
    let q = |h: &std::sync::Mutex<metrics::Histogram>, p: f64| h.lock().ok().and_then(|h| h.quantile_ms(p));
    let (tick_max, ticks) = reg.tick.lock().map(|h| (h.max_ms(), h.count())).unwrap_or((0.0, 0));
    let expected_ticks = clients as f64 * window / tick.as_secs_f64();
    let due = c1.state_due.saturating_sub(c0.state_due);
    let mut r = PhaseResult {
        clients: n,
        p2p,
        connected: fin.connected,
        in_zone: fin.in_zone,
        introductions: fin.introductions,
        window_s: window,
        agent_in_bps: per_s(s0.agent[0], s1.agent[0]),
        agent_out_bps: per_s(s0.agent[1], s1.agent[1]),
        game_in_bps: per_s(s0.game[0], s1.game[0]),
        game_out_bps: per_s(s0.game[1], s1.game[1]),
        relay_in_bps: per_s(s0.relay.received_bytes, s1.relay.received_bytes),
        relay_out_bps: per_s(s0.relay.forwarded_bytes, s1.relay.forwarded_bytes),
        tick_p50_ms: q(&reg.tick, 0.5),
        tick_p99_ms: q(&reg.tick, 0.99),
        tick_max_ms: (ticks > 0).then_some(tick_max),
        ticks,
        route_in_p50_ms: q(&reg.route_to_game, 0.5),
        route_in_p99_ms: q(&reg.route_to_game, 0.99),
        route_out_p50_ms: q(&reg.route_to_agent, 0.5),
        route_out_p99_ms: q(&reg.route_to_agent, 0.99),
        links_direct: fin.links.0,
        links_relayed: fin.links.1,
        links_failed: fin.links.2,
        state_due_per_s: per_s(c0.state_due, c1.state_due),
        state_sent_per_s: per_s(c0.state_sent, c1.state_sent),
        state_recv_per_s: per_s(c0.state_recv, c1.state_recv),
        state_ratio: if due > 0 {
            c1.state_sent.saturating_sub(c0.state_sent) as f64 / due as f64
        } else {
            0.0
        },
        state_delivered_ratio: if due > 0 {
            c1.state_recv.saturating_sub(c0.state_recv) as f64 / due as f64
        } else {
            0.0
        },
        generator_tick_ratio: if expected_ticks > 0.0 {
            (c1.ticks - c0.ticks) as f64 / expected_ticks
        } else {
            0.0
        },
        shard_cpu: cpu(s0.shard_ns, s1.shard_ns),
        frame_cpu: cpu(s0.frame_ns, s1.frame_ns),
        agent_io_cpu: cpu(s0.agent_io_ns, s1.agent_io_ns),
        loadgen_cpu: cpu(s0.loadgen_ns, s1.loadgen_ns),
        machine_busy: s0.machine.zip(s1.machine).map(|(a, b)| {
            let (busy, idle, steal) = (b.0 - a.0, b.1 - a.1, b.2 - a.2);
            busy as f64 / (busy + idle + steal).max(1) as f64
        }),
        agent_sockets: fin.sockets,
        relay_drops: relay_drops(&s0.relay, &s1.relay),
        ..PhaseResult::default()
    };
    r.egress_bps = r.agent_out_bps + r.relay_out_bps;
    r.ingress_bps = r.agent_in_bps + r.relay_in_bps;
    r
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.filter(|x| x.is_finite()).map_or("n/a".into(), |x| format!("{x:.digits$}"))
}

fn print_phase(r: &PhaseResult, json: bool) {
    let n = f64::from(r.clients.max(1));
    let kb = |b: f64| b / 1e3;
    println!(
        "p2p {:<3} clients={} connected={} in_zone={} introductions={} window={:.1}s",
        if r.p2p { "on" } else { "off" },
        r.clients,
        r.connected,
        r.in_zone,
        r.introductions,
        r.window_s
    );
    println!(
        "  bytes/s  agent in {:>9.1} kB out {:>9.1} kB | game in {:>9.1} kB out {:>9.1} kB | relay in {:>9.1} kB out {:>9.1} kB",
        kb(r.agent_in_bps),
        kb(r.agent_out_bps),
        kb(r.game_in_bps),
        kb(r.game_out_bps),
        kb(r.relay_in_bps),
        kb(r.relay_out_bps)
    );
    println!(
        "  per client: egress {:.0} B/s (agent {:.0} + relay {:.0}), ingress {:.0} B/s, game in {:.0} out {:.0} B/s",
        r.egress_bps / n,
        r.agent_out_bps / n,
        r.relay_out_bps / n,
        r.ingress_bps / n,
        r.game_in_bps / n,
        r.game_out_bps / n
    );
    println!(
        "  game tick ms p50 {} p99 {} max {} ({} ticks = {:.1} Hz) | routing ms client→game p50 {} p99 {}, role→agent p50 {} p99 {}",
        opt(r.tick_p50_ms, 3),
        opt(r.tick_p99_ms, 3),
        opt(r.tick_max_ms, 3),
        r.ticks,
        r.ticks as f64 / r.window_s.max(1e-9),
        opt(r.route_in_p50_ms, 2),
        opt(r.route_in_p99_ms, 2),
        opt(r.route_out_p50_ms, 3),
        opt(r.route_out_p99_ms, 3)
    );
    if r.p2p {
        println!(
            "  link ends (≥ 3 s old): direct {} relayed {} no path {} → direct {:.3} relayed {:.3} failed {:.3}",
            r.links_direct,
            r.links_relayed,
            r.links_failed,
            r.direct(),
            r.relayed(),
            r.failed()
        );
    }
    println!(
        "  peer state: due {:.0}/s, sent {:.0}/s ({:.1}% of due), delivered {:.0}/s ({:.1}% of due) | load generator ({} threads) ran {:.1}% of client ticks",
        r.state_due_per_s,
        r.state_sent_per_s,
        r.state_ratio * 100.0,
        r.state_recv_per_s,
        r.state_delivered_ratio * 100.0,
        r.gen_threads,
        r.generator_tick_ratio * 100.0
    );
    println!(
        "  relay drops: {}",
        if r.relay_drops.is_empty() {
            "none".to_string()
        } else {
            r.relay_drops.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        }
    );
    println!(
        "  cpu: shard {:.2} CPUs ({:.0} µs per client-second; frame {:.2}, agent I/O {:.2}), load generator {:.2} CPUs, machine busy {} | peak RSS (shard + load generator) {:.0} MiB | UDP rcvbuf drops {}",
        r.shard_cpu,
        r.cpu_us_per_client_s(),
        r.frame_cpu,
        r.agent_io_cpu,
        r.loadgen_cpu,
        r.machine_busy.map_or("n/a".into(), |b| format!("{:.0}%", b * 100.0)),
        r.rss_peak_mib,
        r.udp_rcvbuf_drops
    );
    println!(
        "  agent sockets (clients connected through each): {}",
        r.agent_sockets.iter().map(|(a, n)| format!("{a} {n}")).collect::<Vec<_>>().join(", ")
    );
    if json && let Ok(s) = serde_json::to_string(r) {
        println!("json: {s}");
    }
}

fn summary(n: u32, row: &Row) -> String {
    let on = row.1.as_ref();
    let main = on.or(row.0.as_ref());
    let offload = match row {
        (Some(off), Some(on)) if off.egress_bps > 0.0 => Some(on.egress_bps / off.egress_bps),
        _ => None,
    };
    format!(
        "summary: clients={n} offload={} tick_p99_ms={} tick_hz={} route_p99_ms={} direct={} relayed={} failed={}",
        opt(offload, 3),
        opt(main.and_then(|r| r.tick_p99_ms), 2),
        opt(main.map(|r| r.tick_hz()), 1),
        opt(main.and_then(|r| r.route_p99_ms()), 2),
        opt(on.map(|r| r.direct()), 3),
        opt(on.map(|r| r.relayed()), 3),
        opt(on.map(|r| r.failed()), 3),
    )
}

/// Run the phases `args` asks for at client count `n`.
pub fn run_count(args: &ShardBenchArgs, n: u32) -> Result<Row, String> {
    let off =
        matches!(args.p2p, P2pMode::Off | P2pMode::Both).then(|| run_phase(args, n, false)).transpose()?;
    if let Some(r) = &off {
        print_phase(r, args.json);
    }
    let on = matches!(args.p2p, P2pMode::On | P2pMode::Both).then(|| run_phase(args, n, true)).transpose()?;
    if let Some(r) = &on {
        print_phase(r, args.json);
    }
    if let (Some(off), Some(on)) = (&off, &on) {
        println!(
            "  offload: server egress with P2P on / off = {:.0} / {:.0} B/s = {} | peer state delivered/due: off {:.1}%, on {:.1}%{}",
            on.egress_bps,
            off.egress_bps,
            opt((off.egress_bps > 0.0).then(|| on.egress_bps / off.egress_bps), 3),
            off.state_delivered_ratio * 100.0,
            on.state_delivered_ratio * 100.0,
            if off.state_delivered_ratio.min(on.state_delivered_ratio) >= 0.99 {
                " (equal work)"
            } else {
                " (UNEQUAL work: a phase delivered < 99 % of its due messages)"
            }
        );
    }
    Ok((off, on))
}

/// `p2pmodel bench shard`.
pub fn run_shard_bench(args: &ShardBenchArgs) -> Result<(), String> {
    if args.group_min > args.group_max {
        return Err(format!("--group-min {} is larger than --group-max {}", args.group_min, args.group_max));
    }
    if args.plot.is_some() && args.sweep.is_empty() {
        return Err("--plot needs --sweep (plots are against the client count)".into());
    }
    let counts = if args.sweep.is_empty() { vec![args.clients] } else { args.sweep.clone() };
    println!(
        "shard bench: {} client(s) per run, p2p {:?} (mesh {:?}), clusters of {}-{}, {} B state at the tick rate, wire {:?}; \
         {} s warm-up + {} s window per phase; loopback, {} CPUs; shard and load generator share them",
        counts.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
        args.p2p,
        args.mesh,
        args.group_min,
        args.group_max,
        args.state_bytes,
        args.wire,
        args.warmup,
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut rows = Vec::new();
    for n in &counts {
        let row = run_count(args, *n)?;
        println!("{}", summary(*n, &row));
        rows.push((*n, row));
    }
    if let Some(dir) = &args.plot {
        super::shard_plot::write_plots(dir, &rows)?;
        println!("plots written to {}", dir.display());
    }
    if rows.len() > 1 {
        println!(
            "{:>6} | {:>9} {:>9} | {:>8} | {:>9} {:>9} | {:>6} {:>6} | {:>8} {:>8} {:>9}",
            "N",
            "egr/cl off",
            "egr/cl on",
            "offload",
            "tick99 off",
            "tick99 on",
            "Hz off",
            "Hz on",
            "cpu sh on",
            "cpu lg on",
            "µs/cl·s on"
        );
        for (n, (off, on)) in &rows {
            let pc = |r: &Option<PhaseResult>| r.as_ref().map(|r| r.egress_bps / f64::from(*n));
            let t = |r: &Option<PhaseResult>| r.as_ref().and_then(|r| r.tick_p99_ms);
            let off_on = match (off, on) {
                (Some(a), Some(b)) if a.egress_bps > 0.0 => Some(b.egress_bps / a.egress_bps),
                _ => None,
            };
            println!(
                "{n:>6} | {:>9} {:>9} | {:>8} | {:>9} {:>9} | {:>6} {:>6} | {:>8} {:>8} {:>9}",
                opt(pc(off), 0),
                opt(pc(on), 0),
                opt(off_on, 3),
                opt(t(off), 2),
                opt(t(on), 2),
                opt(off.as_ref().map(|r| r.tick_hz()), 1),
                opt(on.as_ref().map(|r| r.tick_hz()), 1),
                opt(on.as_ref().map(|r| r.shard_cpu), 2),
                opt(on.as_ref().map(|r| r.loadgen_cpu), 2),
                opt(on.as_ref().map(|r| r.cpu_us_per_client_s()), 0)
            );
        }
        // The last line stays the summary of the largest run.
        if let Some((n, row)) = rows.last() {
            println!("{}", summary(*n, row));
        }
    }
    Ok(())
}
