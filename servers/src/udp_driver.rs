//! Runs any sans-IO [`Endpoint`] on real `std::net::UdpSocket`s.
//!
//! One socket per local address. A reader thread per socket (short read timeout, so
//! dropping the driver stops it promptly) forwards datagrams over a channel; the calling
//! thread runs the endpoint loop, so the endpoint itself never needs to be `Send`:
//!
//! ```text
//! loop {
//!     while let Some(t) = ep.poll_transmit() { socket_for(t.src).send_to(&t.payload, t.dst) }
//!     if done(&ep) || now >= deadline { return }
//!     wait for a datagram until min(ep.poll_timeout(), deadline, now + 100 ms)
//!     datagram → ep.handle_datagram(now, local, from, bytes); deadline passed → ep.handle_timeout(now)
//! }
//! ```
//!
//! `Transmit.src` selects the socket bound to that address; `None` means the first one.
//!
//! Memory stays bounded under a flood: at most [`MAX_PENDING`] datagrams wait between the
//! readers and the loop (more are dropped and counted in [`DriverStats::queue_full`]), and the
//! loop sends what the endpoint queued every [`FLUSH_EVERY`] datagrams, so an endpoint with a
//! bounded output queue is drained while a burst is delivered.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use p2pmodel_core::endpoint::Endpoint;
use thiserror::Error;

/// Largest UDP payload we read.
const MAX_DATAGRAM: usize = 65_535;
/// Reader threads check the stop flag at least this often.
const READ_TIMEOUT: Duration = Duration::from_millis(50);
/// `run_until` re-checks its `done` condition at least this often.
const MAX_WAIT: Duration = Duration::from_millis(100);
/// Datagrams waiting for the endpoint loop at most (all sockets together); beyond, the
/// readers drop them (as a full socket buffer would) and count them.
pub const MAX_PENDING: usize = 4096;
/// During a burst the loop sends the endpoint's queued transmits after this many datagrams.
pub const FLUSH_EVERY: usize = 64;

/// Why the driver could not start or keep running.
#[derive(Debug, Error)]
pub enum DriverError {
    /// A local address could not be bound (in use, or not an address of this host).
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind {
        /// The address we tried.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The driver was given no socket.
    #[error("the UDP driver needs at least one socket")]
    NoSockets,
    /// A socket operation failed while setting up.
    #[error("UDP socket setup failed: {0}")]
    Io(#[from] io::Error),
    /// Every reader thread stopped (sockets closed underneath us).
    #[error("all UDP reader threads stopped")]
    ReadersGone,
}

/// Counters of what the driver did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Datagrams handed to the endpoint.
    pub received: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// `send_to` failures (unreachable network, buffer full…): dropped, as UDP would.
    pub send_errors: u64,
    /// Transmits whose `src` matched none of our sockets.
    pub unroutable: u64,
    /// Datagrams dropped because [`MAX_PENDING`] were already waiting for the loop.
    pub queue_full: u64,
}

struct Incoming {
    local: SocketAddr,
    from: SocketAddr,
    data: Vec<u8>,
}

/// An [`Endpoint`] plus the sockets it talks through.
pub struct UdpDriver<E> {
    endpoint: E,
    sockets: Vec<UdpSocket>,
    locals: Vec<SocketAddr>,
    rx: Receiver<Incoming>,
    stop: Arc<AtomicBool>,
    readers: Vec<JoinHandle<()>>,
    stats: DriverStats,
    queue_full: Arc<AtomicU64>,
}

impl<E: Endpoint> UdpDriver<E> {
    /// Bind one socket per address (port 0 picks a free port) and drive `endpoint` on them.
    pub fn bind(endpoint: E, addrs: &[SocketAddr]) -> Result<Self, DriverError> {
        let sockets = addrs
            .iter()
            .map(|a| UdpSocket::bind(a).map_err(|source| DriverError::Bind { addr: *a, source }))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(endpoint, sockets)
    }

    /// Drive `endpoint` on already-bound sockets; the first is the default (`src: None`).
    pub fn new(endpoint: E, sockets: Vec<UdpSocket>) -> Result<Self, DriverError> {
        if sockets.is_empty() {
            return Err(DriverError::NoSockets);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::sync_channel(MAX_PENDING);
        let queue_full = Arc::new(AtomicU64::new(0));
        let mut locals = Vec::new();
        let mut readers = Vec::new();
        for s in &sockets {
            let local = s.local_addr()?;
            locals.push(local);
            let reader = s.try_clone()?;
            reader.set_read_timeout(Some(READ_TIMEOUT))?;
            let tx = tx.clone();
            let stop = stop.clone();
            let full = queue_full.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                while !stop.load(Ordering::Relaxed) {
                    match reader.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            let msg = Incoming { local, from, data: buf[..n].to_vec() };
                            match tx.try_send(msg) {
                                Ok(()) => {}
                                Err(TrySendError::Full(_)) => {
                                    full.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(TrySendError::Disconnected(_)) => return,
                            }
                        }
                        // Timeouts, and ICMP errors surfacing from earlier sends
                        // (ECONNREFUSED): neither is fatal for a UDP socket.
                        Err(_) => continue,
                    }
                }
            }));
        }
        Ok(UdpDriver {
            endpoint,
            sockets,
            locals,
            rx,
            stop,
            readers,
            stats: DriverStats::default(),
            queue_full,
        })
    }

    /// The actual local addresses, in the order given (ports resolved if 0 was asked).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.locals
    }

    /// The endpoint being driven.
    pub fn endpoint(&self) -> &E {
        &self.endpoint
    }

    /// The endpoint being driven, mutably (e.g. to start a new transaction).
    pub fn endpoint_mut(&mut self) -> &mut E {
        &mut self.endpoint
    }

    /// What the driver has done so far.
    pub fn stats(&self) -> DriverStats {
        DriverStats { queue_full: self.queue_full.load(Ordering::Relaxed), ..self.stats }
    }

    fn flush(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            let idx = match t.src {
                None => Some(0),
                Some(src) => self.locals.iter().position(|l| *l == src),
            };
            let Some(idx) = idx else {
                self.stats.unroutable += 1;
                continue;
            };
            match self.sockets[idx].send_to(&t.payload, t.dst) {
                Ok(_) => self.stats.sent += 1,
                Err(_) => self.stats.send_errors += 1,
            }
        }
    }

    fn deliver(&mut self, m: Incoming) {
        self.stats.received += 1;
        self.endpoint.handle_datagram(Instant::now(), m.local, m.from, &m.data);
    }

    /// Run until `done(endpoint)` is true (returns `Ok(true)`) or `deadline` passes
    /// (returns `Ok(false)`). Pending transmits are always flushed before returning.
    pub fn run_until(
        &mut self,
        mut done: impl FnMut(&E) -> bool,
        deadline: Instant,
    ) -> Result<bool, DriverError> {
        loop {
            self.flush();
            if done(&self.endpoint) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let mut wake = deadline.min(now + MAX_WAIT);
            if let Some(t) = self.endpoint.poll_timeout() {
                wake = wake.min(t);
            }
            match self.rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(m) => {
                    self.deliver(m);
                    let mut n = 1;
                    while let Ok(m) = self.rx.try_recv() {
                        self.deliver(m);
                        n += 1;
                        if n % FLUSH_EVERY == 0 {
                            self.flush();
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(DriverError::ReadersGone),
            }
            let now = Instant::now();
            if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                self.endpoint.handle_timeout(now);
            }
        }
    }
}

impl<E> Drop for UdpDriver<E> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pmodel_core::endpoint::Transmit;

    /// Echoes every datagram back from the socket it arrived on, and counts timeouts.
    #[derive(Default)]
    struct Echo {
        out: Vec<Transmit>,
        got: Vec<(SocketAddr, Vec<u8>)>,
        wake: Option<Instant>,
        timeouts: u32,
    }

    impl Endpoint for Echo {
        fn handle_datagram(&mut self, _now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]) {
            self.got.push((local, data.to_vec()));
            self.out.push(Transmit { src: Some(local), dst: from, payload: data.to_vec() });
        }
        fn handle_timeout(&mut self, now: Instant) {
            if self.wake.is_some_and(|w| w <= now) {
                self.timeouts += 1;
                self.wake = None;
            }
        }
        fn poll_transmit(&mut self) -> Option<Transmit> {
            self.out.pop()
        }
        fn poll_timeout(&self) -> Option<Instant> {
            self.wake
        }
    }

    #[test]
    fn replies_leave_from_the_socket_named_by_src() {
        let any = "127.0.0.1:0".parse().unwrap();
        let mut d = UdpDriver::bind(Echo::default(), &[any, any]).unwrap();
        let [a, b] = [d.local_addrs()[0], d.local_addrs()[1]];
        assert_ne!(a.port(), 0);
        let client = UdpSocket::bind(any).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        client.send_to(b"one", b).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        assert!(d.run_until(|e| !e.got.is_empty(), deadline).unwrap());
        let mut buf = [0u8; 16];
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"one"[..], b), "echo must come from the second socket");
        assert_eq!(d.endpoint().got[0].0, b);
        client.send_to(b"two", a).unwrap();
        assert!(d.run_until(|e| e.got.len() == 2, deadline).unwrap());
        let (_, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(from, a);
        assert_eq!(d.stats().sent, 2);
    }

    #[test]
    fn fires_endpoint_timeouts_and_honours_the_deadline() {
        let mut d = UdpDriver::bind(Echo::default(), &["127.0.0.1:0".parse().unwrap()]).unwrap();
        let start = Instant::now();
        d.endpoint_mut().wake = Some(start + Duration::from_millis(30));
        assert!(d.run_until(|e| e.timeouts == 1, start + Duration::from_secs(2)).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(30));
        let t = Instant::now();
        assert!(!d.run_until(|_| false, t + Duration::from_millis(120)).unwrap());
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(120) && waited < Duration::from_secs(1), "{waited:?}");
    }

    #[test]
    fn unroutable_src_is_counted_not_sent() {
        let mut d = UdpDriver::bind(Echo::default(), &["127.0.0.1:0".parse().unwrap()]).unwrap();
        d.endpoint_mut().out.push(Transmit {
            src: Some("127.0.0.1:1".parse().unwrap()),
            dst: "127.0.0.1:9".parse().unwrap(),
            payload: vec![1],
        });
        d.run_until(|_| true, Instant::now()).unwrap();
        assert_eq!((d.stats().unroutable, d.stats().sent), (1, 0));
    }

    #[test]
    fn a_flood_while_the_loop_is_busy_waits_in_a_bounded_queue_and_drops_are_counted() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let d = UdpDriver::bind(Echo::default(), &[any]).unwrap();
        let to = d.local_addrs()[0];
        let client = UdpSocket::bind(any).unwrap();
        // The loop is not running (a busy endpoint): the reader keeps reading the socket, but
        // at most MAX_PENDING datagrams wait for the loop; the rest are dropped and counted.
        let sent = 3 * MAX_PENDING as u64;
        for i in 0..sent {
            let _ = client.send_to(&i.to_be_bytes(), to);
            if i % 512 == 0 {
                std::thread::sleep(Duration::from_millis(1)); // let the reader keep up with the kernel buffer
            }
        }
        // Bounded wait for the reader thread to drain the socket (not test logic).
        let deadline = Instant::now() + Duration::from_secs(5);
        while d.stats().queue_full == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        let waiting = d.rx.try_iter().count();
        assert!(waiting <= MAX_PENDING, "{waiting}");
        assert!(d.stats().queue_full > 0, "{:?}", d.stats());
        assert!(waiting as u64 + d.stats().queue_full <= sent);
    }
}
