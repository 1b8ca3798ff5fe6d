//! The relay data plane: UDP sockets, one thread per core, [`Relay::process`] per datagram.
//!
//! ```text
//! N threads (default one per CPU), each with its own socket on the relay port
//! (SO_REUSEPORT, steered by link id in the kernel: `steer`) and its own `Relay`:
//! loop {
//!     control messages (keys)                 ← mpsc, try_recv: no lock on the hot path
//!     recvmmsg (non-blocking) on its sockets
//!       STUN  → StunHook → answer              (any thread)
//!       relay → Relay::process → Forward (same bytes, zero-copy) | Reply (BindAck) | Drop
//!     sendmmsg the batch; record recv→send latency
//!     publish counters to its atomics every few ms (summed by metrics and the control plane)
//!     nothing to read → poll() its sockets, ≤ 20 ms
//! }
//! ```
//! The threads never wait for a Bevy frame; the Bevy control plane only sends them control
//! messages and reads the published counters. The per-source quota and the table bound are
//! shared by the threads' relays ([`SharedLimits`]); everything else of a link lives on the
//! one thread its link id steers to.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use p2pmodel_core::relay::{
    Action, ClockAnchor, DropReason, Relay, RelayConfig, RelayStats, ReplyBuf, SharedLimits, TokenKeys,
};
use thiserror::Error;

use super::batch::{MAX_GSO_SEGMENTS, RecvBatch, SCRATCH_LEN, SendBatch, poll_readable};
use super::histogram::{self, BUCKETS};
use super::metrics::MetricsServer;
use super::stats::MetricsSource;
pub use super::stats::{PlaneStats, StatsSnapshot};
use super::steer::{effective_threads, open_group, open_udp, thread_of};
use super::stun::{StunHook, is_stun, stun_config_for, stun_server_hook};

/// How often the data plane publishes its counters.
const PUBLISH_EVERY: Duration = Duration::from_millis(5);
/// Longest idle wait in `poll()`: bounds how late a control message or a sweep runs.
const IDLE_POLL_MS: i32 = 20;
/// At most this many sockets (primary, alternate port, alternate IP × 2).
pub const MAX_SOCKETS: usize = 4;
/// Datagrams waiting in one thread's hand-off queue at most; more are dropped and counted.
const HANDOFF_QUEUE: usize = 4096;

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
    /// Data-plane threads, each with its own socket on the primary address and its own
    /// relay state; 0 = one per CPU. Capped at [`super::steer::MAX_THREADS`]; 1 where the
    /// kernel cannot steer by link id (not Linux, or the BPF program refused).
    pub threads: usize,
    /// The sans-IO relay's configuration.
    pub core: RelayConfig,
    /// Token keys to start with (later ones via [`RelayServer::set_keys`]).
    pub keys: TokenKeys,
    /// Makes the STUN hook of each thread (STUN may reach any thread); `None`: the full STUN
    /// server ([`stun_server_hook`]) laid out over the opened sockets.
    pub stun: Option<StunHookFactory>,
    /// Where the Prometheus endpoint listens; `None`: no endpoint.
    pub metrics: Option<SocketAddr>,
    /// Send runs of same-size forwarded datagrams to one destination as one `UDP_SEGMENT`
    /// message (GSO; `relay.gso`). On by default (turned off per thread at the kernel's first
    /// refusal, nothing lost); measured by `bench relay --gso`.
    pub gso_send: bool,
    /// Receive bursts from one source coalesced (`UDP_GRO`) and relay each datagram in them.
    /// Experimental (`bench relay --gso all`), off by default: GRO coalesces by address, not
    /// link id, so a burst mixing links reaches one thread whole and the datagrams of links
    /// steered elsewhere take the hand-off path (`misrouted`, a copy each).
    pub gro_recv: bool,
}

/// Whether the data plane sends with UDP GSO unless told otherwise (`relay.gso`).
pub const GSO_SEND_DEFAULT: bool = true;

/// Makes one [`StunHook`] per data-plane thread.
pub type StunHookFactory = Box<dyn Fn() -> StunHook + Send>;

impl RelayServerOptions {
    /// Options with defaults: 4 MiB socket buffers, batches of 64, one thread per CPU, the
    /// full STUN server, no metrics endpoint, GSO on.
    pub fn new(listen: Vec<SocketAddr>, core: RelayConfig, keys: TokenKeys) -> RelayServerOptions {
        RelayServerOptions {
            listen,
            socket_buffer_bytes: 4 << 20,
            batch: 64,
            threads: 0,
            core,
            keys,
            stun: None,
            metrics: None,
            gso_send: GSO_SEND_DEFAULT,
            gro_recv: false,
        }
    }
}

const N_CORE: usize = RelayStats::COUNTERS;
const N_PLANE: usize = 10;

fn plane_array(p: &PlaneStats) -> [u64; N_PLANE] {
    [
        p.stun_answered,
        p.stun_unanswered,
        p.not_relay_port,
        p.bad_source,
        p.send_errors,
        p.batch_overflow,
        p.recv_batches,
        p.truncated,
        p.misrouted,
        p.handoff_dropped,
    ]
}

fn plane_from(p: [u64; N_PLANE]) -> PlaneStats {
    let [
        stun_answered,
        stun_unanswered,
        not_relay_port,
        bad_source,
        send_errors,
        batch_overflow,
        recv_batches,
        truncated,
        misrouted,
        handoff_dropped,
    ] = p;
    PlaneStats {
        stun_answered,
        stun_unanswered,
        not_relay_port,
        bad_source,
        send_errors,
        batch_overflow,
        recv_batches,
        truncated,
        misrouted,
        handoff_dropped,
    }
}

/// Counters one data-plane thread publishes (single writer, many readers: no contention).
struct Published {
    core: [AtomicU64; N_CORE],
    drops: [AtomicU64; DropReason::COUNT],
    plane: [AtomicU64; N_PLANE],
    latency: [AtomicU64; BUCKETS],
    latency_sum_ns: AtomicU64,
    /// The key id this thread's relay mints under (it applied the keys).
    key_id: AtomicU64,
    alive: AtomicBool,
    /// The thread's OS id (0 until it runs), for CPU accounting.
    tid: AtomicU64,
}

fn atomics<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

fn load<const N: usize>(a: &[AtomicU64; N]) -> [u64; N] {
    std::array::from_fn(|i| a[i].load(Ordering::Relaxed))
}

fn store<const N: usize>(a: &[AtomicU64; N], v: &[u64; N]) {
    for (a, &v) in a.iter().zip(v) {
        a.store(v, Ordering::Relaxed);
    }
}

/// Plain copies of a thread's published counters, summable.
#[derive(Clone, Copy)]
struct Counters {
    core: [u64; N_CORE],
    drops: [u64; DropReason::COUNT],
    plane: [u64; N_PLANE],
    latency: [u64; BUCKETS],
    latency_sum_ns: u64,
}

fn add<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
    for (a, b) in a.iter_mut().zip(b) {
        *a += b;
    }
}

impl Published {
    fn new(key_id: u8) -> Published {
        Published {
            core: atomics(),
            drops: atomics(),
            plane: atomics(),
            latency: atomics(),
            latency_sum_ns: AtomicU64::new(0),
            key_id: AtomicU64::new(u64::from(key_id)),
            alive: AtomicBool::new(true),
            tid: AtomicU64::new(0),
        }
    }

    fn read(&self) -> Counters {
        Counters {
            core: load(&self.core),
            drops: load(&self.drops),
            plane: load(&self.plane),
            latency: load(&self.latency),
            latency_sum_ns: self.latency_sum_ns.load(Ordering::Relaxed),
        }
    }
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        add(&mut self.core, &o.core);
        add(&mut self.drops, &o.drops);
        add(&mut self.plane, &o.plane);
        add(&mut self.latency, &o.latency);
        self.latency_sum_ns += o.latency_sum_ns;
    }

    fn snapshot(&self, key_id: u8, thread_forwarded: Vec<u64>) -> StatsSnapshot {
        StatsSnapshot {
            core: RelayStats::from_counters(self.core, self.drops),
            plane: plane_from(self.plane),
            latency: self.latency,
            latency_sum_ns: self.latency_sum_ns,
            current_key_id: key_id,
            thread_forwarded,
        }
    }
}

/// What the server and its threads share: each thread's counters, the key id, shutdown.
struct Shared {
    threads: Vec<Published>,
    key_id: AtomicU64,
    shutdown: AtomicBool,
}

/// Index of the forwarded-packets counter in [`RelayStats::counters`].
const FORWARDED: usize = 2;

impl Shared {
    /// Every thread's counters summed (gauges too: each thread's bindings are its own).
    fn snapshot(&self) -> StatsSnapshot {
        let per: Vec<Counters> = self.threads.iter().map(Published::read).collect();
        let mut sum = per[0];
        for c in &per[1..] {
            sum.add(c);
        }
        let forwarded = per.iter().map(|c| c.core[FORWARDED]).collect();
        sum.snapshot(self.key_id.load(Ordering::Relaxed) as u8, forwarded)
    }

    fn thread_snapshot(&self, i: usize) -> StatsSnapshot {
        let t = &self.threads[i];
        let c = t.read();
        c.snapshot(t.key_id.load(Ordering::Relaxed) as u8, vec![c.core[FORWARDED]])
    }
}

enum Control {
    SetKeys(TokenKeys),
}

/// A relay datagram the kernel gave to another thread than its link id's, on its way to the
/// right one. Only GSO/GRO bursts mixing links take this path (a copy each); the kernel
/// steers everything else.
struct Handoff {
    from: SocketAddr,
    bytes: Box<[u8]>,
}

/// Where other threads hand a thread its datagrams: a bounded queue (lock-free) and an
/// eventfd that wakes the thread from `poll`.
struct Mailbox {
    tx: SyncSender<Handoff>,
    wake: OwnedFd,
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain system call; on success we own the new descriptor.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Queue `data` for thread `t` and wake it; false when its queue is full.
fn hand_off(mailboxes: &[Mailbox], t: usize, from: SocketAddr, data: &[u8]) -> bool {
    let Some(m) = mailboxes.get(t) else { return false };
    match m.tx.try_send(Handoff { from, bytes: data.into() }) {
        Ok(()) => {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to our eventfd.
            unsafe { libc::write(m.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
            true
        }
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
    }
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

/// A running relay: the data-plane threads, their sockets and (optionally) the metrics
/// endpoint. Dropping it stops them all and waits for them.
pub struct RelayServer {
    local: Vec<SocketAddr>,
    shared: Arc<Shared>,
    control: Vec<Sender<Control>>,
    threads: Vec<JoinHandle<()>>,
    metrics: Option<MetricsServer>,
    window: Arc<Mutex<LatencyWindow>>,
    limits: Arc<SharedLimits>,
}

impl std::fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer")
            .field("local", &self.local)
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl RelayServer {
    /// Open the sockets, start the data-plane threads and the metrics endpoint.
    pub fn start(opts: RelayServerOptions) -> Result<RelayServer, ServerError> {
        if opts.listen.is_empty() || opts.listen.len() > MAX_SOCKETS {
            return Err(ServerError::ListenCount(opts.listen.len()));
        }
        let buf = opts.socket_buffer_bytes;
        let bind_err = |addr| move |source| ServerError::Bind { addr, source };
        let primary = opts.listen[0];
        let group: Vec<UdpSocket> = open_group(primary, buf, effective_threads(opts.threads))
            .map_err(bind_err(primary))?
            .into_iter()
            .map(Into::into)
            .collect();
        let alts: Vec<UdpSocket> = opts.listen[1..]
            .iter()
            .map(|&a| open_udp(a, buf, false).map(Into::into).map_err(bind_err(a)))
            .collect::<Result<_, _>>()?;
        let mut local = vec![group[0].local_addr().map_err(bind_err(primary))?];
        for (s, &a) in alts.iter().zip(&opts.listen[1..]) {
            local.push(s.local_addr().map_err(bind_err(a))?);
        }
        let n = group.len();
        let key_id = opts.keys.current_id();
        let shared = Arc::new(Shared {
            threads: (0..n).map(|_| Published::new(key_id)).collect(),
            key_id: AtomicU64::new(u64::from(key_id)),
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
        let anchor = ClockAnchor { at: now, unix_micros };
        // One cookie secret and clock for all threads: a cookie is valid on any of them.
        let mut cookie_secret = [0u8; 32];
        rand::fill(&mut cookie_secret);
        let limits = Arc::new(SharedLimits::default());
        let alts = Arc::new(alts);
        let mut inboxes = vec![];
        let mut mailboxes = vec![];
        for _ in 0..n {
            let (tx, rx) = mpsc::sync_channel(HANDOFF_QUEUE);
            mailboxes.push(Mailbox { tx, wake: eventfd().map_err(ServerError::Thread)? });
            inboxes.push(rx);
        }
        let mailboxes = Arc::new(mailboxes);
        let mut server = RelayServer {
            local: local.clone(),
            shared: shared.clone(),
            control: vec![],
            threads: vec![],
            metrics,
            window,
            limits: limits.clone(),
        };
        for ((index, own), inbox) in group.into_iter().enumerate().zip(inboxes) {
            let mut relay = Relay::new(opts.core.clone(), opts.keys.clone(), anchor, cookie_secret);
            if n > 1 {
                relay = relay.with_shared_limits(limits.clone());
            }
            if opts.gro_recv
                && let Err(e) = super::batch::enable_gro(own.as_raw_fd())
            {
                tracing::warn!("UDP_GRO refused ({e}); receiving datagram by datagram");
            }
            let mut reads = vec![(own.as_raw_fd(), 0)];
            if index == 0 {
                // The STUN-only sockets are read by thread 0; any thread may answer from them.
                reads.extend(alts.iter().enumerate().map(|(j, s)| (s.as_raw_fd(), j + 1)));
            }
            let (tx, rx) = mpsc::channel();
            let plane = DataPlane {
                index,
                threads: n,
                relay,
                own,
                alts: alts.clone(),
                reads,
                local: local.clone(),
                v6: local.iter().map(|a| a.is_ipv6()).collect(),
                stun: match &opts.stun {
                    Some(make) => make(),
                    None => stun_server_hook(stun_config_for(&local)),
                },
                recv: if opts.gro_recv {
                    RecvBatch::with_gro(opts.batch)
                } else {
                    RecvBatch::new(opts.batch)
                },
                send: {
                    let per = if opts.gro_recv { MAX_GSO_SEGMENTS } else { 1 };
                    let mut b = SendBatch::new(opts.batch * 2 * per, false);
                    b.set_gso(opts.gso_send);
                    b
                },
                reply: ReplyBuf::default(),
                plane: PlaneStats::default(),
                latency: [0; BUCKETS],
                latency_sum_ns: 0,
                shared: shared.clone(),
                control: rx,
                mailboxes: mailboxes.clone(),
                inbox,
            };
            // On failure, `server` is dropped: the threads already started stop.
            let t = std::thread::Builder::new()
                .name(format!("relay-dp-{index}"))
                .spawn(move || plane.run())
                .map_err(ServerError::Thread)?;
            server.control.push(tx);
            server.threads.push(t);
        }
        tracing::info!(listen = ?local, threads = n, metrics = ?server.metrics_addr(), "relay data plane started");
        Ok(server)
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

    /// How many data-plane threads run.
    pub fn threads(&self) -> usize {
        self.shared.threads.len()
    }

    /// The latest published counters of all threads, summed (at most a few milliseconds old).
    pub fn snapshot(&self) -> StatsSnapshot {
        self.shared.snapshot()
    }

    /// Each thread's own counters; `current_key_id` is the key id that thread applied.
    pub fn thread_snapshots(&self) -> Vec<StatsSnapshot> {
        (0..self.threads()).map(|i| self.shared.thread_snapshot(i)).collect()
    }

    /// The OS thread ids of the data-plane threads (`/proc/self/task/<tid>`; 0 for one not
    /// running yet), for CPU accounting.
    pub fn thread_ids(&self) -> Vec<u32> {
        self.shared.threads.iter().map(|t| t.tid.load(Ordering::Relaxed) as u32).collect()
    }

    /// The limits the threads' relays share (per-source quotas, table bound).
    pub fn shared_limits(&self) -> &SharedLimits {
        &self.limits
    }

    /// Forwarding latency (p50, p99) in nanoseconds over the last ~10 s, if any datagram was
    /// forwarded then.
    pub fn recent_latency_ns(&self) -> (Option<u64>, Option<u64>) {
        recent_latency(&self.shared, &self.window)
    }

    /// Replace the token keys (rotation) on every thread. Each applies them within one loop
    /// iteration ([`RelayServer::thread_snapshots`] shows when).
    pub fn set_keys(&self, keys: TokenKeys) {
        self.shared.key_id.store(u64::from(keys.current_id()), Ordering::Relaxed);
        for c in &self.control {
            let _ = c.send(Control::SetKeys(keys.clone()));
        }
    }

    /// Whether every data-plane thread is still running.
    pub fn is_alive(&self) -> bool {
        self.shared.threads.iter().all(|t| t.alive.load(Ordering::Relaxed))
    }

    /// Stop the data plane and the metrics endpoint and wait for them.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
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

/// One data-plane thread.
struct DataPlane {
    index: usize,
    threads: usize,
    relay: Relay,
    /// This thread's socket on the primary address (local index 0).
    own: UdpSocket,
    /// The STUN-only sockets (local index 1..): read by thread 0, answered from by any.
    alts: Arc<Vec<UdpSocket>>,
    /// What this thread reads: (fd, local index).
    reads: Vec<(RawFd, usize)>,
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
    /// Every thread's mailbox (this one's too: its eventfd is in this thread's poll set).
    mailboxes: Arc<Vec<Mailbox>>,
    inbox: Receiver<Handoff>,
}

impl DataPlane {
    fn run(mut self) {
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u64;
        self.shared.threads[self.index].tid.store(tid, Ordering::Relaxed);
        let mut fds: Vec<RawFd> = self.reads.iter().map(|r| r.0).collect();
        let wake = self.mailboxes[self.index].wake.as_raw_fd();
        fds.push(wake);
        let wake_bit = 1u64 << (fds.len() - 1);
        let mut last_publish = Instant::now();
        loop {
            if self.shared.shutdown.load(Ordering::Relaxed) {
                break;
            }
            match self.control.try_recv() {
                Ok(Control::SetKeys(k)) => {
                    if self.index == 0 {
                        tracing::info!(key_id = k.current_id(), previous = ?k.previous_id(), "relay token keys rotated");
                    }
                    let id = k.current_id();
                    *self.relay.keys_mut() = k;
                    self.shared.threads[self.index].key_id.store(u64::from(id), Ordering::Relaxed);
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => break,
            }
            let mut got = self.drain_inbox();
            for j in 0..self.reads.len() {
                let (fd, k) = self.reads[j];
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
                if poll_readable(&fds, IDLE_POLL_MS) & wake_bit != 0 {
                    let mut v = [0u8; 8];
                    // SAFETY: reads 8 bytes into a live buffer from our eventfd.
                    unsafe { libc::read(wake, v.as_mut_ptr().cast(), v.len()) };
                }
            }
        }
        self.publish();
        self.shared.threads[self.index].alive.store(false, Ordering::Relaxed);
        if self.index == 0 {
            tracing::info!("relay data plane stopped");
        }
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
            let Some(from) = self.recv.get(i).1 else {
                self.plane.bad_source += 1;
                continue;
            };
            // One datagram, or each datagram of a coalesced (GRO) receive.
            for (off, len) in self.recv.segments(i) {
                let data = &self.recv.get(i).0[off..off + len];
                if is_stun(data) {
                    self.stun_datagram(t0, local, from, i, off, len);
                    continue;
                }
                if k != 0 {
                    self.plane.not_relay_port += 1;
                    continue;
                }
                if let Some(t) = thread_of(data, self.threads).filter(|&t| t != self.index) {
                    // The kernel steers each datagram by link id, but a GSO/GRO burst goes
                    // whole to the thread of its first datagram: pass the others on.
                    self.plane.misrouted += 1;
                    if !hand_off(&self.mailboxes, t, from, data) {
                        self.plane.handoff_dropped += 1;
                    }
                    continue;
                }
                match self.relay.process(t0, from, data, &mut self.reply) {
                    Action::Forward { to } => {
                        if self.send.push_forward_range(&self.recv, i, off, len, to) {
                            forwarded += 1;
                        } else {
                            self.plane.batch_overflow += 1;
                        }
                    }
                    Action::Reply { to, len, notify, forward, early } => {
                        if !self.send.push_copy(&self.reply.reply[..len], to) {
                            self.plane.batch_overflow += 1;
                        }
                        for d in self.reply.early_datagrams(early) {
                            if !self.send.push_copy(d, to) {
                                self.plane.batch_overflow += 1;
                            }
                        }
                        if let Some(n) = notify
                            && !self.send.push_copy(&self.reply.notify[..n.len], n.to)
                        {
                            self.plane.batch_overflow += 1;
                        }
                        // A BindData's peer datagram leaves straight from the receive buffer.
                        if let Some(e) = forward
                            && !self.send.push_forward_range(&self.recv, i, off + e.start, e.len, e.to)
                        {
                            self.plane.batch_overflow += 1;
                        }
                    }
                    Action::Drop(_) => {}
                }
            }
        }
        if !self.send.is_empty() {
            let f = self.send.flush(fd, &self.recv);
            self.plane.send_errors += f.errors as u64;
            if f.gso_refused {
                tracing::warn!(
                    thread = self.index,
                    "the kernel refused UDP GSO: this thread sends datagram by datagram"
                );
            }
        }
        if forwarded > 0 {
            let ns = t0.elapsed().as_nanos() as u64;
            self.latency[histogram::bucket_of(ns)] += forwarded;
            self.latency_sum_ns += ns * forwarded;
        }
    }

    fn stun_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        i: usize,
        off: usize,
        len: usize,
    ) {
        let Some(slot) = self.send.scratch_slot() else {
            self.plane.batch_overflow += 1;
            return;
        };
        let data = &self.recv.get(i).0[off..off + len];
        match (self.stun)(now, local, from, data, &mut slot[..SCRATCH_LEN]) {
            Some((src, dst, len)) if src == local => {
                self.send.push_scratch(len, dst);
                self.plane.stun_answered += 1;
            }
            Some((src, dst, len)) => {
                // RFC 5780 CHANGE-REQUEST: answer from another of our sockets (rare path).
                let sock = match self.local.iter().position(|&a| a == src) {
                    Some(0) => Some(&self.own),
                    Some(j) => self.alts.get(j - 1),
                    None => None,
                };
                match sock {
                    Some(s) => {
                        if s.send_to(&slot[..len], dst).is_ok() {
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

    /// Relay the datagrams other threads handed to this one (rare path: sent one by one).
    /// Returns whether there were any.
    fn drain_inbox(&mut self) -> bool {
        let mut any = false;
        while let Ok(h) = self.inbox.try_recv() {
            any = true;
            let now = Instant::now();
            let send = |bytes: &[u8], to: SocketAddr, plane: &mut PlaneStats| {
                if self.own.send_to(bytes, to).is_err() {
                    plane.send_errors += 1;
                }
            };
            match self.relay.process(now, h.from, &h.bytes, &mut self.reply) {
                Action::Forward { to } => send(&h.bytes, to, &mut self.plane),
                Action::Reply { to, len, notify, forward, early } => {
                    send(&self.reply.reply[..len], to, &mut self.plane);
                    for d in self.reply.early_datagrams(early) {
                        send(d, to, &mut self.plane);
                    }
                    if let Some(n) = notify {
                        send(&self.reply.notify[..n.len], n.to, &mut self.plane);
                    }
                    if let Some(e) = forward {
                        send(&h.bytes[e.start..e.start + e.len], e.to, &mut self.plane);
                    }
                }
                Action::Drop(_) => {}
            }
        }
        any
    }

    fn publish(&self) {
        let s = self.relay.stats();
        let me = &self.shared.threads[self.index];
        store(&me.core, &s.counters());
        store(&me.drops, &std::array::from_fn(|i| s.dropped(DropReason::ALL[i])));
        store(&me.plane, &plane_array(&self.plane));
        store(&me.latency, &self.latency);
        me.latency_sum_ns.store(self.latency_sum_ns, Ordering::Relaxed);
    }
}
