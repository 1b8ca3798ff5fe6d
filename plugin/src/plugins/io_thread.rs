//! The mesh socket's own I/O thread: it owns the real [`UdpMeshIo`], waits on it until the
//! core's next deadline, and feeds datagrams and timeouts into the shared core at once, so
//! probes, keepalives, acks and relay refreshes are answered whatever the frame rate (a
//! loading screen, a dragged window, 5 FPS software rendering). Bevy systems lock the same
//! core through [`P2pClient`]; a guard that leaves the core wanting service sooner (a message
//! queued) wakes the thread with an empty datagram from a loopback socket.
//!
//! Also here: the [`Conditioners`] both drivers (this thread and the frame systems) apply
//! to the mesh socket's traffic when configured.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bevy::prelude::*;

use super::client::{MeshIoStats, P2pClient, Shared, ThreadLink};
use super::io::{MeshIo, UdpMeshIo};
use crate::conditioner::{Conditioner, ConditionerConfig};
use crate::endpoint::{Endpoint, Transmit};

/// Largest datagram read (bigger ones are truncated and fail to decode).
pub(crate) const RECV_BUF: usize = 2048;
/// After the Bevy side queued something, the thread waits this long for more before it
/// flushes, so the messages of one frame's systems still share datagrams.
pub const SEND_COALESCE: Duration = Duration::from_millis(1);
/// Longest sleep of the thread (it re-plans at least this often).
const MAX_WAIT: Duration = Duration::from_secs(1);
/// While extra sockets are open (birthday punching), how often they are read where the wait
/// watches only the main socket (not Unix).
#[cfg(not(unix))]
const EXTRA_POLL: Duration = Duration::from_millis(1);
/// Most datagrams fed to the core under one lock.
const MAX_BATCH: usize = 256;

/// A received datagram: the local address it arrived on, the sender, the bytes.
pub(crate) type Inbound = (SocketAddr, SocketAddr, Vec<u8>);

/// The conditioner on both directions of the mesh socket.
#[derive(Debug)]
pub(crate) struct Conditioners {
    out: Conditioner<Transmit>,
    inb: Conditioner<Inbound>,
}

impl Conditioners {
    /// The same settings each way, with different random streams.
    pub(crate) fn new(cfg: ConditionerConfig) -> Self {
        let inb = ConditionerConfig { seed: cfg.seed ^ 0x9e37_79b9_7f4a_7c15, ..cfg };
        Conditioners { out: Conditioner::new(cfg), inb: Conditioner::new(inb) }
    }

    /// A received datagram enters the conditioner.
    pub(crate) fn push_in(&mut self, now: Instant, d: Inbound) {
        self.inb.push(now, d);
    }

    /// A datagram to send enters the conditioner.
    pub(crate) fn push_out(&mut self, now: Instant, t: Transmit) {
        self.out.push(now, t);
    }

    /// The next received datagram due for the core.
    pub(crate) fn poll_in(&mut self, now: Instant) -> Option<Inbound> {
        self.inb.poll(now)
    }

    /// The next datagram due for the socket.
    pub(crate) fn poll_out(&mut self, now: Instant) -> Option<Transmit> {
        self.out.poll(now)
    }

    /// When the next held datagram (either way) is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        [self.out.poll_timeout(), self.inb.poll_timeout()].into_iter().flatten().min()
    }

    /// Copy the counters into `stats`.
    pub(crate) fn record(&self, stats: &mut MeshIoStats) {
        stats.conditioned_out = Some(self.out.stats());
        stats.conditioned_in = Some(self.inb.stats());
    }
}

/// The running I/O thread; dropping it (with the app) stops the thread and closes the socket.
#[derive(Resource)]
pub(crate) struct IoThread {
    stop: Arc<AtomicBool>,
    waker: UdpSocket,
    join: Option<JoinHandle<()>>,
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.send(&[]);
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

/// Where a loopback socket reaches the socket bound at `bound`.
fn reachable(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

/// A socket connected to the mesh socket, to wake the thread with empty datagrams.
fn waker_for(io: &UdpMeshIo) -> std::io::Result<UdpSocket> {
    let target = reachable(io.bound_addr()?);
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let waker = UdpSocket::bind(any)?;
    waker.connect(target)?;
    Ok(waker)
}

/// Start the I/O thread on `io` for `client`'s core. On failure the socket is handed back.
pub(crate) fn spawn(
    io: UdpMeshIo,
    client: &P2pClient,
    conditioner: Option<ConditionerConfig>,
) -> Result<IoThread, Box<(std::io::Error, UdpMeshIo)>> {
    let (waker, thread_waker) = match waker_for(&io).and_then(|w| w.try_clone().map(|c| (w, c))) {
        Ok(w) => w,
        Err(e) => return Err(Box::new((e, io))),
    };
    let from = match thread_waker.local_addr() {
        Ok(a) => a,
        Err(e) => return Err(Box::new((e, io))),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let shared = client.shared();
    {
        let mut s = client.lock_shared();
        s.thread = Some(ThreadLink { waker: thread_waker, planned: None, wake_sent: false });
        s.stats.io_thread = true;
    }
    // The socket moves to the thread once it runs: if it cannot start, the caller keeps it.
    let (tx, rx) = std::sync::mpsc::channel::<UdpMeshIo>();
    let (stop_t, shared_t) = (stop.clone(), shared);
    let started = std::thread::Builder::new().name("p2p-mesh-io".into()).spawn(move || {
        let Ok(io) = rx.recv() else { return };
        let cond = conditioner.filter(|c| !c.is_passthrough()).map(Conditioners::new);
        let mut driver = Driver { io, shared: shared_t.clone(), cond, waker_from: from, flush_at: None };
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver.run(&stop_t)));
        if let Err(panic) = run {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            let mut s = shared_t.lock().unwrap_or_else(PoisonError::into_inner);
            s.thread_error = Some(format!("the mesh socket's I/O thread stopped: {why}"));
            s.thread = None;
        }
    });
    match started {
        Ok(join) => {
            // The thread waits for it, so this cannot fail.
            let _ = tx.send(io);
            Ok(IoThread { stop, waker, join: Some(join) })
        }
        Err(e) => {
            let mut s = client.lock_shared();
            s.thread = None;
            s.stats.io_thread = false;
            Err(Box::new((e, io)))
        }
    }
}

/// The thread's state between turns.
struct Driver {
    io: UdpMeshIo,
    shared: Arc<Mutex<Shared>>,
    cond: Option<Conditioners>,
    /// Wake datagrams come from here.
    waker_from: SocketAddr,
    /// The Bevy side queued something: flush at this time (coalescing).
    flush_at: Option<Instant>,
}

impl Driver {
    fn run(&mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; RECV_BUF];
        let mut batch: Vec<Inbound> = Vec::new();
        let mut out: Vec<Transmit> = Vec::new();
        while !stop.load(Ordering::Acquire) {
            let deadline = self.turn(&mut batch, &mut out);
            for t in out.drain(..) {
                self.io.send(&t);
            }
            // Sleep until the deadline or a datagram (a wake is one too).
            let now = Instant::now();
            let wait = deadline.map_or(MAX_WAIT, |d| d.saturating_duration_since(now)).min(MAX_WAIT);
            #[cfg(not(unix))]
            let wait = if self.io.has_extra_sockets() { wait.min(EXTRA_POLL) } else { wait };
            if let Some((n, from, local)) = self.io.recv_wait(&mut buf, wait) {
                self.keep(&mut batch, from, local, &buf[..n]);
            }
            while batch.len() < MAX_BATCH {
                let Some((n, from, local)) = self.io.recv(&mut buf) else { break };
                self.keep(&mut batch, from, local, &buf[..n]);
            }
        }
    }

    /// Queue a received datagram for the core (wake datagrams only wake).
    fn keep(&self, batch: &mut Vec<Inbound>, from: SocketAddr, local: SocketAddr, data: &[u8]) {
        if from != self.waker_from {
            batch.push((local, from, data.to_vec()));
        }
    }

    /// One turn under the lock: feed the received datagrams, run due timers, collect what to
    /// send. Returns when the thread should wake by itself.
    fn turn(&mut self, batch: &mut Vec<Inbound>, out: &mut Vec<Transmit>) -> Option<Instant> {
        let mut guard = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        let s = &mut *guard;
        // Read the clock under the lock: the Bevy side does too, so the core's `now` never
        // goes backwards between the two.
        let now = Instant::now();
        let asked = s.thread.as_ref().is_some_and(|t| t.wake_sent);
        if asked && self.flush_at.is_none() {
            self.flush_at = Some(now + SEND_COALESCE);
        }
        for (local, from, data) in batch.drain(..) {
            match &mut self.cond {
                Some(c) => c.push_in(now, (local, from, data)),
                None => s.core.handle_datagram(now, local, from, &data),
            }
        }
        if let Some(c) = &mut self.cond {
            while let Some((local, from, data)) = c.poll_in(now) {
                s.core.handle_datagram(now, local, from, &data);
            }
        }
        if self.flush_at.is_some_and(|f| f <= now) {
            self.flush_at = None;
            if let Some(t) = s.thread.as_mut() {
                t.wake_sent = false;
            }
        }
        if self.flush_at.is_none() && s.core.poll_timeout().is_some_and(|t| t <= now) {
            s.core.handle_timeout(now);
        }
        let queued = s.outbox.drain(..).chain(std::iter::from_fn(|| s.core.poll_transmit()));
        match &mut self.cond {
            Some(c) => {
                for t in queued {
                    c.push_out(now, t);
                }
                out.extend(std::iter::from_fn(|| c.poll_out(now)));
            }
            None => out.extend(queued),
        }
        let core_next = if self.flush_at.is_some() { self.flush_at } else { s.core.poll_timeout() };
        // A deadline that is already due (the core asked for "now" again) is retried after a
        // short sleep rather than in a spin.
        let deadline = [core_next, self.cond.as_ref().and_then(|c| c.poll_timeout())]
            .into_iter()
            .flatten()
            .min()
            .map(|d| d.max(now + Duration::from_micros(100)));
        if let Some(t) = s.thread.as_mut() {
            t.planned = deadline;
        }
        s.stats.turns += 1;
        s.stats.socket = self.io.stats();
        if let Some(c) = &self.cond {
            c.record(&mut s.stats);
        }
        s.stats.longest_turn = s.stats.longest_turn.max(started.elapsed());
        deadline
    }
}

/// The [`MeshIo`] in the `MeshSocket` resource while the thread owns the real socket: the
/// network's clock, our address, and sends handed to the thread.
pub(crate) struct ThreadIo {
    pub(crate) client: P2pClient,
    pub(crate) local: SocketAddr,
}

impl MeshIo for ThreadIo {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn local_addrs(&self) -> Vec<SocketAddr> {
        vec![self.local]
    }
    fn recv(&mut self, _buf: &mut [u8]) -> Option<(usize, SocketAddr, SocketAddr)> {
        // The thread reads the socket and feeds the core itself.
        None
    }
    fn send(&mut self, t: &Transmit) {
        let mut s = self.client.lock_shared();
        if s.thread.is_some() {
            s.outbox.push(t.clone());
            s.wake_if_needed();
        }
    }
}
