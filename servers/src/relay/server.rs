//! The relay data plane: UDP sockets, one thread, [`Relay::process`] per datagram.
//!
//! ```text
//! loop {
//!     control messages (keys, shutdown)      ← mpsc, try_recv: no lock on the hot path
//!     recvmmsg (non-blocking) on each socket
//!       STUN  → StunHook → answer
//!       relay → Relay::process → Forward (same bytes, zero-copy) | Reply (BindAck) | Drop
//!     sendmmsg the batch; record recv→send latency
//!     publish counters to atomics every few ms (read by metrics and the control plane)
//!     nothing to read → poll() all sockets, ≤ 20 ms
//! }
//! ```
//! The thread never waits for a Bevy frame; the Bevy control plane only sends it control
//! messages and reads the published counters.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use p2pmodel_core::relay::{
    Action, ClockAnchor, DropReason, Relay, RelayConfig, RelayStats, ReplyBuf, TokenKeys,
};
use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

use super::batch::{RecvBatch, SCRATCH_LEN, SendBatch, poll_readable};
use super::histogram::{self, BUCKETS};
use super::metrics::MetricsServer;
use super::stats::MetricsSource;
pub use super::stats::{PlaneStats, StatsSnapshot};
use super::stun::{StunHook, is_stun, stun_config_for, stun_server_hook};

/// How often the data plane publishes its counters.
const PUBLISH_EVERY: Duration = Duration::from_millis(5);
/// Longest idle wait in `poll()`: bounds how late a control message or a sweep runs.
const IDLE_POLL_MS: i32 = 20;
/// At most this many sockets (primary, alternate port, alternate IP × 2).
pub const MAX_SOCKETS: usize = 4;

/// Why the relay server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A socket could not be opened or bound.
    #[error("cannot open UDP socket on {addr}: {source} (is another relay or turnserver using the port?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// The metrics listener could not be opened.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// No listen address, or too many.
    #[error("the relay needs 1 to {MAX_SOCKETS} listen addresses, got {0}")]
    ListenCount(usize),
    /// The data-plane thread could not be spawned.
    #[error("cannot start the data-plane thread: {0}")]
    Thread(io::Error),
}

/// Everything [`RelayServer::start`] needs.
pub struct RelayServerOptions {
    /// Local addresses to open: the first is the relay's primary address (relay and STUN),
    /// the others answer STUN only. Port 0 picks a free port.
    pub listen: Vec<SocketAddr>,
    /// SO_RCVBUF / SO_SNDBUF.
    pub socket_buffer_bytes: usize,
    /// Datagrams per recvmmsg / sendmmsg.
    pub batch: usize,
    /// The sans-IO relay's configuration.
    pub core: RelayConfig,
    /// Token keys to start with (later ones via [`RelayServer::set_keys`]).
    pub keys: TokenKeys,
    /// Where STUN datagrams go; `None`: [`minimal_binding_responder`](crate::relay::stun::minimal_binding_responder).
    pub stun: Option<StunHook>,
    /// Where the Prometheus endpoint listens; `None`: no endpoint.
    pub metrics: Option<SocketAddr>,
}

impl RelayServerOptions {
    /// Options with defaults: 4 MiB socket buffers, batches of 64, the minimal STUN
    /// responder, no metrics endpoint.
    pub fn new(listen: Vec<SocketAddr>, core: RelayConfig, keys: TokenKeys) -> RelayServerOptions {
        RelayServerOptions {
            listen,
            socket_buffer_bytes: 4 << 20,
            batch: 64,
            core,
            keys,
            stun: None,
            metrics: None,
        }
    }
}

const N_CORE: usize = RelayStats::COUNTERS;
const N_PLANE: usize = 8;

/// Counters published by the data plane (single writer, many readers: no contention).
struct Shared {
    core: [AtomicU64; N_CORE],
    drops: [AtomicU64; DropReason::COUNT],
    plane: [AtomicU64; N_PLANE],
    latency: [AtomicU64; BUCKETS],
    latency_sum_ns: AtomicU64,
    key_id: AtomicU64,
    alive: AtomicBool,
    shutdown: AtomicBool,
}

fn atomics<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

impl Shared {
    fn snapshot(&self) -> StatsSnapshot {
        let c: [u64; N_CORE] = std::array::from_fn(|i| self.core[i].load(Ordering::Relaxed));
        let p: [u64; N_PLANE] = std::array::from_fn(|i| self.plane[i].load(Ordering::Relaxed));
        let drops = std::array::from_fn(|i| self.drops[i].load(Ordering::Relaxed));
        StatsSnapshot {
            core: RelayStats::from_counters(c, drops),
            plane: PlaneStats {
                stun_answered: p[0],
                stun_unanswered: p[1],
                not_relay_port: p[2],
                bad_source: p[3],
                send_errors: p[4],
                batch_overflow: p[5],
                recv_batches: p[6],
                truncated: p[7],
            },
            latency: std::array::from_fn(|i| self.latency[i].load(Ordering::Relaxed)),
            latency_sum_ns: self.latency_sum_ns.load(Ordering::Relaxed),
            current_key_id: self.key_id.load(Ordering::Relaxed) as u8,
        }
    }
}

enum Control {
    SetKeys(TokenKeys),
}

/// A recent-window view of the latency histogram, for p50/p99 over the last
/// [`LatencyWindow::SPAN`] instead of the whole uptime.
struct LatencyWindow {
    ring: std::collections::VecDeque<(Instant, [u64; BUCKETS])>,
}

impl LatencyWindow {
    const SPAN: Duration = Duration::from_secs(10);

    /// Record `now`'s cumulative histogram (at most once a second) and return the counts
    /// added during the window.
    fn update(&mut self, now: Instant, cumulative: &[u64; BUCKETS]) -> [u64; BUCKETS] {
        if self.ring.back().is_none_or(|(t, _)| now.duration_since(*t) >= Duration::from_secs(1)) {
            self.ring.push_back((now, *cumulative));
        }
        while self.ring.len() > 2 && now.duration_since(self.ring[1].0) >= Self::SPAN {
            self.ring.pop_front();
        }
        let base = match self.ring.front() {
            Some((t, b)) if now.duration_since(*t) >= Duration::from_millis(500) => *b,
            _ => [0; BUCKETS],
        };
        std::array::from_fn(|i| cumulative[i].saturating_sub(base[i]))
    }
}

/// A running relay: the data-plane thread, its sockets and (optionally) the metrics
/// endpoint. Dropping it stops both and waits for them.
pub struct RelayServer {
    local: Vec<SocketAddr>,
    shared: Arc<Shared>,
    control: Sender<Control>,
    thread: Option<JoinHandle<()>>,
    metrics: Option<MetricsServer>,
    window: Arc<Mutex<LatencyWindow>>,
}

impl std::fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer").field("local", &self.local).finish_non_exhaustive()
    }
}

fn open_socket(addr: SocketAddr, buf: usize) -> Result<UdpSocket, ServerError> {
    let err = |source| ServerError::Bind { addr, source };
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    if addr.is_ipv6() {
        // Dual-stack when bound to [::]: IPv4 clients appear as IPv4-mapped addresses.
        let _ = s.set_only_v6(false);
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = s.set_recv_buffer_size(buf);
    let _ = s.set_send_buffer_size(buf);
    s.bind(&addr.into()).map_err(err)?;
    Ok(s.into())
}

impl RelayServer {
    /// Open the sockets, start the data-plane thread and the metrics endpoint.
    pub fn start(opts: RelayServerOptions) -> Result<RelayServer, ServerError> {
        if opts.listen.is_empty() || opts.listen.len() > MAX_SOCKETS {
            return Err(ServerError::ListenCount(opts.listen.len()));
        }
        let sockets = opts
            .listen
            .iter()
            .map(|&a| open_socket(a, opts.socket_buffer_bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let local = sockets
            .iter()
            .zip(&opts.listen)
            .map(|(s, &a)| s.local_addr().map_err(|source| ServerError::Bind { addr: a, source }))
            .collect::<Result<Vec<_>, _>>()?;
        let shared = Arc::new(Shared {
            core: atomics(),
            drops: atomics(),
            plane: atomics(),
            latency: atomics(),
            latency_sum_ns: AtomicU64::new(0),
            key_id: AtomicU64::new(u64::from(opts.keys.current_id())),
            alive: AtomicBool::new(true),
            shutdown: AtomicBool::new(false),
        });
        let window = Arc::new(Mutex::new(LatencyWindow { ring: Default::default() }));
        let metrics = match opts.metrics {
            Some(addr) => Some(
                MetricsServer::start(addr, shared_reader(&shared, &window))
                    .map_err(|source| ServerError::Metrics { addr, source })?,
            ),
            None => None,
        };

        let now = Instant::now();
        let unix_micros =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        let mut cookie_secret = [0u8; 32];
        rand::fill(&mut cookie_secret);
        let relay = Relay::new(opts.core, opts.keys, ClockAnchor { at: now, unix_micros }, cookie_secret);
        let (tx, rx) = mpsc::channel();
        let plane = DataPlane {
            relay,
            sockets,
            local: local.clone(),
            v6: local.iter().map(|a| a.is_ipv6()).collect(),
            stun: opts.stun.unwrap_or_else(|| stun_server_hook(stun_config_for(&local))),
            recv: RecvBatch::new(opts.batch),
            send: SendBatch::new(opts.batch * 2, false),
            reply: ReplyBuf::default(),
            plane: PlaneStats::default(),
            latency: [0; BUCKETS],
            latency_sum_ns: 0,
            shared: shared.clone(),
            control: rx,
        };
        let thread = std::thread::Builder::new()
            .name("relay-data-plane".into())
            .spawn(move || plane.run())
            .map_err(ServerError::Thread)?;
        tracing::info!(listen = ?local, metrics = ?metrics.as_ref().map(|m| m.local_addr()), "relay data plane started");
        Ok(RelayServer { local, shared, control: tx, thread: Some(thread), metrics, window })
    }

    /// The bound local addresses, primary first (ports resolved when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// The primary (relay) address.
    pub fn primary_addr(&self) -> SocketAddr {
        self.local[0]
    }

    /// The metrics endpoint's address, if one runs.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr())
    }

    /// The latest published counters (at most a few milliseconds old).
    pub fn snapshot(&self) -> StatsSnapshot {
        self.shared.snapshot()
    }

    /// Forwarding latency (p50, p99) in nanoseconds over the last ~10 s, if any datagram was
    /// forwarded then.
    pub fn recent_latency_ns(&self) -> (Option<u64>, Option<u64>) {
        recent_latency(&self.shared, &self.window)
    }

    /// Replace the token keys (rotation). Takes effect within one loop iteration.
    pub fn set_keys(&self, keys: TokenKeys) {
        self.shared.key_id.store(u64::from(keys.current_id()), Ordering::Relaxed);
        let _ = self.control.send(Control::SetKeys(keys));
    }

    /// Whether the data-plane thread is still running.
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Relaxed)
    }

    /// Stop the data plane and the metrics endpoint and wait for them.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(m) = self.metrics.take() {
            m.stop();
        }
    }
}

impl Drop for RelayServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn recent_latency(shared: &Shared, window: &Mutex<LatencyWindow>) -> (Option<u64>, Option<u64>) {
    let snap = shared.snapshot();
    let counts = match window.lock() {
        Ok(mut w) => w.update(Instant::now(), &snap.latency),
        Err(_) => snap.latency,
    };
    (histogram::quantile_ns(&counts, 0.5), histogram::quantile_ns(&counts, 0.99))
}

fn shared_reader(shared: &Arc<Shared>, window: &Arc<Mutex<LatencyWindow>>) -> MetricsSource {
    let (s, w) = (shared.clone(), window.clone());
    Box::new(move || {
        let (p50, p99) = recent_latency(&s, &w);
        (s.snapshot(), p50, p99)
    })
}

struct DataPlane {
    relay: Relay,
    sockets: Vec<UdpSocket>,
    local: Vec<SocketAddr>,
    v6: Vec<bool>,
    stun: StunHook,
    recv: RecvBatch,
    send: SendBatch,
    reply: ReplyBuf,
    plane: PlaneStats,
    latency: [u64; BUCKETS],
    latency_sum_ns: u64,
    shared: Arc<Shared>,
    control: Receiver<Control>,
}

impl DataPlane {
    fn run(mut self) {
        let fds: Vec<RawFd> = self.sockets.iter().map(|s| s.as_raw_fd()).collect();
        let mut last_publish = Instant::now();
        loop {
            if self.shared.shutdown.load(Ordering::Relaxed) {
                break;
            }
            match self.control.try_recv() {
                Ok(Control::SetKeys(k)) => {
                    tracing::info!(key_id = k.current_id(), previous = ?k.previous_id(), "relay token keys rotated");
                    *self.relay.keys_mut() = k;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => break,
            }
            let mut got = false;
            for (k, &fd) in fds.iter().enumerate() {
                match self.recv.recv(fd, true) {
                    Ok(0) => {}
                    Ok(_) => {
                        got = true;
                        self.handle_batch(k, fd);
                    }
                    Err(e) => tracing::warn!(socket = %self.local[k], "recvmmsg failed: {e}"),
                }
            }
            let now = Instant::now();
            self.relay.handle_timeout(now);
            if now.duration_since(last_publish) >= PUBLISH_EVERY {
                self.publish();
                last_publish = now;
            }
            if !got {
                self.publish();
                poll_readable(&fds, IDLE_POLL_MS);
            }
        }
        self.publish();
        self.shared.alive.store(false, Ordering::Relaxed);
        tracing::info!("relay data plane stopped");
    }

    fn handle_batch(&mut self, k: usize, fd: RawFd) {
        let t0 = Instant::now();
        self.plane.recv_batches += 1;
        self.send.set_v6_socket(self.v6[k]);
        let local = self.local[k];
        let mut forwarded = 0u64;
        for i in 0..self.recv.len() {
            if self.recv.truncated(i) {
                self.plane.truncated += 1;
                continue;
            }
            let (data, from) = self.recv.get(i);
            let Some(from) = from else {
                self.plane.bad_source += 1;
                continue;
            };
            if is_stun(data) {
                self.stun_datagram(t0, local, from, i);
                continue;
            }
            if k != 0 {
                self.plane.not_relay_port += 1;
                continue;
            }
            match self.relay.process(t0, from, data, &mut self.reply) {
                Action::Forward { to } => {
                    if self.send.push_forward(&self.recv, i, to) {
                        forwarded += 1;
                    } else {
                        self.plane.batch_overflow += 1;
                    }
                }
                Action::Reply { to, len, notify } => {
                    if !self.send.push_copy(&self.reply.reply[..len], to) {
                        self.plane.batch_overflow += 1;
                    }
                    if let Some(n) = notify
                        && !self.send.push_copy(&self.reply.notify[..n.len], n.to)
                    {
                        self.plane.batch_overflow += 1;
                    }
                }
                Action::Drop(_) => {}
            }
        }
        if !self.send.is_empty() {
            let f = self.send.flush(fd, &self.recv);
            self.plane.send_errors += f.errors as u64;
        }
        if forwarded > 0 {
            let ns = t0.elapsed().as_nanos() as u64;
            self.latency[histogram::bucket_of(ns)] += forwarded;
            self.latency_sum_ns += ns * forwarded;
        }
    }

    fn stun_datagram(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, i: usize) {
        let Some(slot) = self.send.scratch_slot() else {
            self.plane.batch_overflow += 1;
            return;
        };
        let (data, _) = self.recv.get(i);
        match (self.stun)(now, local, from, data, &mut slot[..SCRATCH_LEN]) {
            Some((src, dst, len)) if src == local => {
                self.send.push_scratch(len, dst);
                self.plane.stun_answered += 1;
            }
            Some((src, dst, len)) => {
                // RFC 5780 CHANGE-REQUEST: answer from another of our sockets (rare path).
                match self.local.iter().position(|&a| a == src) {
                    Some(j) => {
                        let bytes = &slot[..len];
                        if self.sockets[j].send_to(bytes, dst).is_ok() {
                            self.plane.stun_answered += 1;
                        } else {
                            self.plane.send_errors += 1;
                        }
                    }
                    None => self.plane.stun_unanswered += 1,
                }
            }
            None => self.plane.stun_unanswered += 1,
        }
    }

    fn publish(&self) {
        let s = self.relay.stats();
        let sh = &self.shared;
        let core = s.counters();
        for (a, v) in sh.core.iter().zip(core) {
            a.store(v, Ordering::Relaxed);
        }
        for (a, (_, v)) in sh.drops.iter().zip(s.drops()) {
            a.store(v, Ordering::Relaxed);
        }
        let p = &self.plane;
        let plane = [
            p.stun_answered,
            p.stun_unanswered,
            p.not_relay_port,
            p.bad_source,
            p.send_errors,
            p.batch_overflow,
            p.recv_batches,
            p.truncated,
        ];
        for (a, v) in sh.plane.iter().zip(plane) {
            a.store(v, Ordering::Relaxed);
        }
        for (a, &v) in sh.latency.iter().zip(&self.latency) {
            a.store(v, Ordering::Relaxed);
        }
        sh.latency_sum_ns.store(self.latency_sum_ns, Ordering::Relaxed);
    }
}
