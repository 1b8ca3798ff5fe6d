//! Steering relay datagrams to data-plane threads by link id.
//!
//! With N data-plane threads the relay port has N sockets in one `SO_REUSEPORT` group, bound
//! in order (socket `i` is the group's index `i`, read by thread `i`), and a classic BPF
//! program attached to the group (`SO_ATTACH_REUSEPORT_CBPF`) picks the socket in the kernel:
//!
//! ```text
//! ldb [0]               first byte of the UDP payload
//! jge #0x20, relay, any  below 0x20 (STUN 0x00..0x03, junk): any socket
//! relay: ld [1]          link id, bytes 1..5 of every relay datagram (peer data and Bind)
//! mod #N
//! ret a                  socket index = link id mod N
//! any: ret #0xffffffff   out of range: the kernel picks by its 4-tuple hash
//! ```
//!
//! Both sides of a link carry the same link id at the same offset, so they reach the same
//! thread and its [`p2pmodel_core::relay::Relay`] holds the whole link. No datagram crosses
//! threads in user space on this path. [`thread_of`] is the same rule in Rust: each thread
//! checks it and hands a datagram the kernel gave it for another thread to that thread
//! (counted, `misrouted`). The kernel selects the socket once per packet it receives, so a
//! GSO burst (or a GRO-coalesced one) mixing links arrives whole at the thread of its first
//! datagram; that, and a foreign socket joining the group, are the only ways to get there.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// At most this many data-plane threads.
pub const MAX_THREADS: usize = 256;

/// The thread a datagram belongs to with `n` threads: `Some(link id mod n)` for what the
/// relay routes by link (first byte ≥ 0x20, at least 5 bytes), `None` for anything any
/// thread may take (STUN, junk, runts).
#[inline]
pub fn thread_of(d: &[u8], n: usize) -> Option<usize> {
    if n <= 1 || d.len() < 5 || d[0] < 0x20 {
        return None;
    }
    let link = u32::from_be_bytes([d[1], d[2], d[3], d[4]]);
    Some((link % n as u32) as usize)
}

/// Data-plane threads for a requested count: 0 = one per CPU; capped at [`MAX_THREADS`];
/// 1 where the kernel cannot steer (not Linux).
pub fn effective_threads(requested: usize) -> usize {
    if !cfg!(target_os = "linux") {
        return 1;
    }
    let n = if requested == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    } else {
        requested
    };
    n.clamp(1, MAX_THREADS)
}

/// One UDP socket on `addr` (dual-stack when `[::]`), buffers set best effort;
/// `reuseport`: join the address's `SO_REUSEPORT` group.
pub fn open_udp(addr: SocketAddr, buf: usize, reuseport: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack when bound to [::]: IPv4 clients appear as IPv4-mapped addresses.
        let _ = s.set_only_v6(false);
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = s.set_recv_buffer_size(buf);
    let _ = s.set_send_buffer_size(buf);
    #[cfg(target_os = "linux")]
    if reuseport {
        s.set_reuse_port(true)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = reuseport;
    s.bind(&addr.into())?;
    Ok(s)
}

/// The classic BPF program of the module docs for `n` sockets.
#[cfg(target_os = "linux")]
fn program(n: u32) -> [libc::sock_filter; 6] {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter { code: code as u16, jt, jf, k };
    [
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 0),
        op(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K, 0, 3, 0x20),
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 1),
        op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, 0, 0, n),
        op(libc::BPF_RET | libc::BPF_A, 0, 0, 0),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
    ]
}

/// Attach the steering program for `n` sockets to the reuseport group of `sock`.
#[cfg(target_os = "linux")]
pub fn attach_steering(sock: &Socket, n: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut prog = program(n as u32);
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    // SAFETY: `fprog` points at `prog`, alive for the call; the kernel copies the program.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Without Linux there is no reuseport BPF: the data plane runs one thread.
#[cfg(not(target_os = "linux"))]
pub fn attach_steering(_sock: &Socket, _n: usize) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "reuseport steering needs Linux"))
}

/// `n` sockets on `addr` steered by link id (socket `i` gets link ids ≡ i mod n), or one
/// plain socket when `n` is 1 or the kernel refuses the program (logged). The port is
/// checked free first with a plain bind, so a second relay on the same port fails as it
/// does with one thread instead of silently joining the group; port 0 picks one port for
/// all.
pub fn open_group(addr: SocketAddr, buf: usize, n: usize) -> io::Result<Vec<Socket>> {
    let probe = open_udp(addr, buf, false)?;
    if n <= 1 {
        return Ok(vec![probe]);
    }
    let port = probe.local_addr()?.as_socket().map_or(addr.port(), |a| a.port());
    drop(probe);
    let at = SocketAddr::new(addr.ip(), port);
    let group = (0..n).map(|_| open_udp(at, buf, true)).collect::<io::Result<Vec<_>>>()?;
    match attach_steering(&group[0], n) {
        Ok(()) => Ok(group),
        Err(e) => {
            tracing::warn!(
                "cannot attach the reuseport steering program ({e}); the relay runs one data-plane thread"
            );
            drop(group);
            Ok(vec![open_udp(at, buf, false)?])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steer_thread_of_follows_the_link_id_and_leaves_stun_to_any_thread() {
        let mut d = [0u8; 40];
        d[0] = 0x22;
        d[1..5].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(thread_of(&d, 4), Some(3));
        assert_eq!(thread_of(&d, 2), Some(1));
        assert_eq!(thread_of(&d, 1), None);
        d[0] = 0x30; // a Bind carries the link id at the same offset
        d[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(thread_of(&d, 3), Some((u32::MAX % 3) as usize));
        d[0] = 0x00; // STUN
        assert_eq!(thread_of(&d, 4), None);
        assert_eq!(thread_of(&[0x22, 0, 0, 0], 4), None);
        assert_eq!(effective_threads(3), if cfg!(target_os = "linux") { 3 } else { 1 });
        assert!(effective_threads(0) >= 1);
        assert_eq!(effective_threads(100_000), if cfg!(target_os = "linux") { MAX_THREADS } else { 1 });
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn steer_group_delivers_each_link_to_its_socket_in_bind_order() {
        use std::net::UdpSocket;
        use std::time::Duration;
        for n in [2usize, 4] {
            let group: Vec<UdpSocket> = open_group("127.0.0.1:0".parse().unwrap(), 1 << 20, n)
                .unwrap()
                .into_iter()
                .map(Into::into)
                .collect();
            assert_eq!(group.len(), n);
            let at = group[0].local_addr().unwrap();
            for s in &group {
                assert_eq!(s.local_addr().unwrap(), at);
                s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            }
            // Many source sockets, many links: each datagram lands on socket link mod n.
            let senders: Vec<UdpSocket> = (0..8).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
            for link in 0..64u32 {
                let mut d = [0u8; 30];
                d[0] = 0x22;
                d[1..5].copy_from_slice(&link.to_be_bytes());
                senders[(link % 8) as usize].send_to(&d, at).unwrap();
                let mut buf = [0u8; 64];
                let (len, _) = group[(link % n as u32) as usize].recv_from(&mut buf).expect("on its socket");
                assert_eq!(&buf[..len], &d);
            }
            // A second relay on the same port is refused, as with one socket.
            assert!(open_group(at, 1 << 20, n).is_err());
        }
    }
}
