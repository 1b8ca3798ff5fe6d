//! The mesh socket behind the plugin: a trait so the real UDP socket and the simulator are
//! interchangeable, and the real one.

use std::any::Any;
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bevy::prelude::Resource;

use crate::endpoint::{ClockAnchor, Transmit};

/// What the mesh systems need from a socket and a clock. The real one is [`UdpMeshIo`]; the
/// simulator's is [`SimMeshIo`](crate::plugins::sim::SimMeshIo). A [`UdpMeshIo`] gets its
/// own I/O thread ([`P2pMeshPlugin::io_thread`](crate::plugins::P2pMeshPlugin::io_thread));
/// any other implementation is driven in the frames (`PreUpdate` / `PostUpdate`).
pub trait MeshIo: Any {
    /// The current time on this socket's clock (`Instant::now()`, or the simulator's).
    fn now(&self) -> Instant;
    /// The socket's host addresses (our LAN candidates).
    fn local_addrs(&self) -> Vec<SocketAddr>;
    /// The next received datagram: its length in `buf`, the sender, and the local address
    /// it arrived on. `None` when nothing is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> Option<(usize, SocketAddr, SocketAddr)>;
    /// Send one datagram. `t.src = Some(addr)` with a port we have no socket on asks for an
    /// extra socket on that port (birthday punching). Errors are counted, never returned.
    fn send(&mut self, t: &Transmit);
    /// Ties [`MeshIo::now`] to Unix time (relay-token clocks). Default: the system clock.
    fn clock_anchor(&self) -> ClockAnchor {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        ClockAnchor { at: self.now(), unix_micros: unix }
    }
}

/// The mesh socket the plugin drives: a `NonSend` resource, because the simulator's socket
/// shares the (single-threaded) simulator. Insert one before the app's first update to
/// replace the UDP socket the plugin opens at startup. While the I/O thread owns the real
/// socket, this holds a stand-in whose `now()` is the network's clock and whose `send` hands
/// the datagram to the thread.
pub struct MeshSocket(pub Box<dyn MeshIo>);

/// The mesh socket's state (a resource).
#[derive(Resource, Debug, Clone, Default, PartialEq, Eq)]
pub enum MeshSocketState {
    /// Not opened yet (before the app's first update).
    #[default]
    Unopened,
    /// Open at this address.
    Open {
        /// The address we advertise for it.
        local: SocketAddr,
        /// Serviced by its own I/O thread (`false`: in the frames).
        io_thread: bool,
    },
    /// It could not be opened, or its I/O thread stopped: no P2P
    /// ([`P2pError`](crate::plugins::P2pError) says why).
    Failed(String),
}

/// Most extra sockets [`UdpMeshIo`] opens on request (birthday punching asks for 256).
pub const MAX_EXTRA_SOCKETS: usize = 300;

/// Counters of a [`UdpMeshIo`], for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpMeshStats {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// `send_to` failures (unreachable, buffer full, …): the datagram is dropped.
    pub send_errors: u64,
    /// `recv_from` failures other than "nothing waiting".
    pub recv_errors: u64,
    /// Extra sockets that could not be opened (port taken, cap reached).
    pub extra_socket_failures: u64,
    /// Extra sockets open now.
    pub extra_sockets: u64,
}

/// The real mesh socket: one non-blocking UDP socket, plus extra sockets opened on demand
/// when the core sends from another port (birthday punching).
#[derive(Debug)]
pub struct UdpMeshIo {
    main: UdpSocket,
    /// The address we advertise for the main socket (a LAN address, not 0.0.0.0).
    local: SocketAddr,
    /// Extra sockets by port, with the address they advertise.
    extra: BTreeMap<u16, (UdpSocket, SocketAddr)>,
    /// Where `recv` continues (0 = main, then the extras in port order).
    cursor: usize,
    stats: UdpMeshStats,
}

impl UdpMeshIo {
    /// Bind the mesh socket (`0.0.0.0:0` picks any port on every interface).
    pub fn bind(addr: SocketAddr) -> std::io::Result<UdpMeshIo> {
        let main = UdpSocket::bind(addr)?;
        main.set_nonblocking(true)?;
        let bound = main.local_addr()?;
        let ip = if bound.ip().is_unspecified() { primary_ip(bound.ip()) } else { bound.ip() };
        Ok(UdpMeshIo {
            main,
            local: SocketAddr::new(ip, bound.port()),
            extra: BTreeMap::new(),
            cursor: 0,
            stats: UdpMeshStats::default(),
        })
    }

    /// The address the main socket advertises.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Counters.
    pub fn stats(&self) -> UdpMeshStats {
        UdpMeshStats { extra_sockets: self.extra.len() as u64, ..self.stats }
    }

    /// Extra sockets are open (birthday punching). Where [`UdpMeshIo::recv_wait`] watches only
    /// the main socket (not Unix), a waiting loop must come back soon to read them.
    pub fn has_extra_sockets(&self) -> bool {
        !self.extra.is_empty()
    }

    /// Wait up to `timeout` for a datagram on any of the sockets (the I/O thread's sleep),
    /// then read one; `None` when none came. On Unix the wait is `poll(2)` (precise to the
    /// millisecond); elsewhere a read timeout on the main socket (the extra sockets are then
    /// read only when the caller comes back).
    pub fn recv_wait(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Option<(usize, SocketAddr, SocketAddr)> {
        if timeout.is_zero() {
            return None;
        }
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            let fd = |s: &UdpSocket| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let mut fds: Vec<libc::pollfd> =
                std::iter::once(fd(&self.main)).chain(self.extra.values().map(|(s, _)| fd(s))).collect();
            let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            // SAFETY: `fds` is a valid, initialised array of `fds.len()` pollfd structs that
            // outlives the call, and the descriptors belong to sockets we own.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if ready <= 0 {
                // Timed out, or interrupted (EINTR): the caller re-plans.
                return None;
            }
            self.recv(buf)
        }
        #[cfg(not(unix))]
        {
            self.recv_wait_main(buf, timeout)
        }
    }

    /// [`UdpMeshIo::recv_wait`] without `poll(2)`: a read timeout on the main socket.
    #[cfg(not(unix))]
    fn recv_wait_main(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Option<(usize, SocketAddr, SocketAddr)> {
        let blocking =
            self.main.set_nonblocking(false).and_then(|_| self.main.set_read_timeout(Some(timeout)));
        if blocking.is_err() {
            // Cannot block on this socket: sleep a little instead of spinning.
            std::thread::sleep(timeout.min(Duration::from_millis(1)));
            return None;
        }
        let got = self.main.recv_from(buf);
        let _ = self.main.set_nonblocking(true);
        match got {
            Ok((n, from)) => {
                self.stats.received += 1;
                Some((n, from, self.local))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                None
            }
            Err(_) => {
                self.stats.recv_errors += 1;
                None
            }
        }
    }

    /// The address the main socket is bound to (`0.0.0.0:port` when bound to every
    /// interface), unlike [`UdpMeshIo::local_addr`], which names a LAN address.
    pub fn bound_addr(&self) -> std::io::Result<SocketAddr> {
        self.main.local_addr()
    }

    fn socket_for(&mut self, src: Option<SocketAddr>) -> Option<&UdpSocket> {
        let Some(src) = src else { return Some(&self.main) };
        if src.port() == self.local.port() {
            return Some(&self.main);
        }
        if !self.extra.contains_key(&src.port()) {
            if self.extra.len() >= MAX_EXTRA_SOCKETS {
                self.stats.extra_socket_failures += 1;
                return None;
            }
            let bind_ip = self.main.local_addr().map(|a| a.ip()).unwrap_or(self.local.ip());
            let socket = UdpSocket::bind(SocketAddr::new(bind_ip, src.port()));
            match socket.and_then(|s| s.set_nonblocking(true).map(|_| s)) {
                Ok(s) => {
                    self.extra.insert(src.port(), (s, SocketAddr::new(self.local.ip(), src.port())));
                }
                Err(_) => {
                    self.stats.extra_socket_failures += 1;
                    return None;
                }
            }
        }
        self.extra.get(&src.port()).map(|(s, _)| s)
    }
}

/// The address of the interface that routes to the internet, without sending anything
/// (a UDP `connect` only picks a route); loopback if there is no route.
fn primary_ip(family: IpAddr) -> IpAddr {
    let (bind, probe): (SocketAddr, SocketAddr) = match family {
        IpAddr::V4(_) => ((Ipv4Addr::UNSPECIFIED, 0).into(), (Ipv4Addr::new(192, 0, 2, 1), 9).into()),
        IpAddr::V6(_) => {
            ((Ipv6Addr::UNSPECIFIED, 0).into(), (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9).into())
        }
    };
    let fallback = match family {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    UdpSocket::bind(bind)
        .and_then(|s| s.connect(probe).and_then(|_| s.local_addr()))
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(fallback)
}

impl MeshIo for UdpMeshIo {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        vec![self.local]
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<(usize, SocketAddr, SocketAddr)> {
        let total = 1 + self.extra.len();
        for _ in 0..total {
            if self.cursor >= total {
                self.cursor = 0;
            }
            let (socket, local) = if self.cursor == 0 {
                (&self.main, self.local)
            } else {
                let (s, l) = self.extra.values().nth(self.cursor - 1).expect("cursor < total");
                (s, *l)
            };
            // Drain one socket before moving on; a burst on one socket is served in order.
            match socket.recv_from(buf) {
                Ok((n, from)) => {
                    self.stats.received += 1;
                    return Some((n, from, local));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.cursor += 1,
                Err(_) => {
                    // ICMP port unreachable surfaces here on some systems; skip and go on.
                    self.stats.recv_errors += 1;
                    self.cursor += 1;
                }
            }
        }
        self.cursor = 0;
        None
    }

    fn send(&mut self, t: &Transmit) {
        let Some(socket) = self.socket_for(t.src) else { return };
        match socket.send_to(&t.payload, t.dst) {
            Ok(_) => self.stats.sent += 1,
            Err(_) => self.stats.send_errors += 1,
        }
    }
}

/// The stand-in socket after the mesh socket could not be opened: nothing arrives, sends are
/// dropped. The plugin reports the failure (`P2pError`) and the shard plugin refuses to
/// connect.
#[derive(Debug)]
pub(crate) struct ClosedMeshIo;

impl MeshIo for ClosedMeshIo {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn local_addrs(&self) -> Vec<SocketAddr> {
        Vec::new()
    }
    fn recv(&mut self, _buf: &mut [u8]) -> Option<(usize, SocketAddr, SocketAddr)> {
        None
    }
    fn send(&mut self, _t: &Transmit) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_roundtrip_and_extra_socket_on_demand() {
        let mut a = UdpMeshIo::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut b = UdpMeshIo::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut buf = [0u8; 2048];
        assert!(a.recv(&mut buf).is_none(), "nothing waiting");
        a.send(&Transmit { src: None, dst: b.local_addr(), payload: b"hi".to_vec() });
        // An extra socket on a free port of a.
        let free = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        a.send(&Transmit { src: Some(free), dst: b.local_addr(), payload: b"extra".to_vec() });
        let mut got = Vec::new();
        for _ in 0..1000 {
            if let Some((n, from, local)) = b.recv(&mut buf) {
                got.push((buf[..n].to_vec(), from, local));
            }
            if got.len() == 2 {
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.iter().any(|(d, f, _)| d == b"hi" && *f == a.local_addr()));
        assert!(got.iter().any(|(d, f, _)| d == b"extra" && f.port() == free.port()));
        assert_eq!(a.stats().extra_sockets, 1);
        // The answer to the extra socket arrives with that socket as `local`.
        b.send(&Transmit { src: None, dst: free, payload: b"back".to_vec() });
        let mut back = None;
        for _ in 0..1000 {
            back = a.recv(&mut buf).map(|(n, _, local)| (buf[..n].to_vec(), local));
            if back.is_some() {
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(back, Some((b"back".to_vec(), free)));
    }

    #[test]
    fn recv_wait_returns_a_datagram_as_soon_as_it_arrives_and_nothing_after_the_timeout() {
        let mut a = UdpMeshIo::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 64];
        let t = Instant::now();
        assert!(a.recv_wait(&mut buf, Duration::from_millis(30)).is_none());
        assert!(t.elapsed() >= Duration::from_millis(25), "waited: {:?}", t.elapsed());
        let to = a.local_addr();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            b.send_to(b"wake", to).unwrap();
        });
        let t = Instant::now();
        let got =
            a.recv_wait(&mut buf, Duration::from_secs(5)).map(|(n, _, local)| (buf[..n].to_vec(), local));
        assert_eq!(got, Some((b"wake".to_vec(), a.local_addr())));
        assert!(t.elapsed() < Duration::from_secs(1), "woke on arrival: {:?}", t.elapsed());
        sender.join().unwrap();
        // Still non-blocking for `recv` afterwards.
        assert!(a.recv(&mut buf).is_none());
    }

    #[test]
    fn a_taken_port_is_counted_not_fatal() {
        let mut a = UdpMeshIo::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let t = Transmit { src: Some(taken.local_addr().unwrap()), dst: a.local_addr(), payload: vec![1] };
        a.send(&t);
        assert_eq!(a.stats().extra_socket_failures, 1);
        assert_eq!(a.stats().sent, 0);
    }
}
