//! Batched UDP I/O with `recvmmsg` / `sendmmsg` (Linux): one system call moves up to a
//! whole batch of datagrams. All buffers are allocated once; nothing is allocated per
//! datagram. A forwarded datagram is sent straight out of the receive buffer (no copy).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Largest datagram the data plane accepts; longer ones are cut by the kernel, flagged
/// `MSG_TRUNC` ([`RecvBatch::truncated`]) and dropped whole by the relay (`truncated`).
pub const MAX_DATAGRAM: usize = 2048;
/// Size of a scratch slot for datagrams the relay writes itself (BindAcks, STUN answers).
pub const SCRATCH_LEN: usize = 1536;

/// Convert a kernel socket address to a [`SocketAddr`].
pub fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Write `addr` into `out` for a socket of the given family (`v6_socket`: an IPv4 address is
/// written as IPv4-mapped IPv6); returns the address length.
pub fn to_storage(addr: SocketAddr, v6_socket: bool, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    let addr = match addr {
        SocketAddr::V4(a) if v6_socket => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        a => a,
    };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin = unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from(*a.ip()).to_be() };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Receive buffers for one `recvmmsg` call.
pub struct RecvBatch {
    bufs: Box<[[u8; MAX_DATAGRAM]]>,
    addrs: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    len: usize,
}

// SAFETY: the raw pointers inside point into the batch's own boxed buffers, which move with
// it; nothing is shared.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Buffers for `n` datagrams.
    pub fn new(n: usize) -> RecvBatch {
        let n = n.max(1);
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut b = RecvBatch {
            bufs: vec![[0u8; MAX_DATAGRAM]; n].into_boxed_slice(),
            addrs: vec![unsafe { zeroed::<libc::sockaddr_storage>() }; n].into_boxed_slice(),
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; n].into_boxed_slice(),
            hdrs: (0..n).map(|_| unsafe { zeroed::<libc::mmsghdr>() }).collect(),
            len: 0,
        };
        for i in 0..n {
            b.iovs[i] = libc::iovec { iov_base: b.bufs[i].as_mut_ptr().cast(), iov_len: MAX_DATAGRAM };
            b.hdrs[i].msg_hdr.msg_iov = &mut b.iovs[i];
            b.hdrs[i].msg_hdr.msg_iovlen = 1;
            b.hdrs[i].msg_hdr.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
        }
        b
    }

    /// Capacity in datagrams.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// Receive up to a batch from `fd`. Returns the number received (0 when nothing is
    /// waiting and `nonblocking`).
    pub fn recv(&mut self, fd: RawFd, nonblocking: bool) -> io::Result<usize> {
        for h in self.hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_len = 0;
        }
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: every header points at live buffers of the advertised sizes.
        let r = unsafe {
            libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), self.hdrs.len() as u32, flags, std::ptr::null_mut())
        };
        if r < 0 {
            self.len = 0;
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        self.len = r as usize;
        Ok(self.len)
    }

    /// Datagrams received by the last [`RecvBatch::recv`].
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the last receive got nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether datagram `i` of the last receive was longer than [`MAX_DATAGRAM`]: the kernel
    /// cut it (`MSG_TRUNC`), so [`RecvBatch::get`] holds only its first bytes. Callers drop it.
    pub fn truncated(&self, i: usize) -> bool {
        self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }

    /// Datagram `i` of the last receive and its source (`None` for an unknown family).
    /// Check [`RecvBatch::truncated`] first: a longer datagram comes back cut to
    /// [`MAX_DATAGRAM`] bytes.
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let len = (self.hdrs[i].msg_len as usize).min(MAX_DATAGRAM);
        (&self.bufs[i][..len], from_storage(&self.addrs[i]))
    }

    /// Mutable datagram `i` (the bench writes timestamps in place).
    pub fn get_mut(&mut self, i: usize) -> &mut [u8] {
        let len = (self.hdrs[i].msg_len as usize).min(MAX_DATAGRAM);
        &mut self.bufs[i][..len]
    }
}

#[derive(Clone, Copy)]
enum Source {
    Recv(usize, usize),
    Scratch(usize, usize),
}

/// Outgoing datagrams for one `sendmmsg` call: either datagrams of a [`RecvBatch`] sent
/// unchanged (forwarding) or bytes copied into the batch's own scratch slots.
pub struct SendBatch {
    v6_socket: bool,
    srcs: Box<[Source]>,
    addrs: Box<[libc::sockaddr_storage]>,
    addr_lens: Box<[libc::socklen_t]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    scratch: Box<[[u8; SCRATCH_LEN]]>,
    len: usize,
    scratch_used: usize,
}

// SAFETY: as for RecvBatch; pointers are rebuilt from owned buffers at every flush.
unsafe impl Send for SendBatch {}

/// What one [`SendBatch::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Datagrams refused with an error (skipped).
    pub errors: usize,
}

impl SendBatch {
    /// Room for `n` datagrams, for a socket of the given family.
    pub fn new(n: usize, v6_socket: bool) -> SendBatch {
        let n = n.max(1);
        // SAFETY: all-zero is a valid value for these plain C structs.
        SendBatch {
            v6_socket,
            srcs: vec![Source::Scratch(0, 0); n].into_boxed_slice(),
            addrs: vec![unsafe { zeroed::<libc::sockaddr_storage>() }; n].into_boxed_slice(),
            addr_lens: vec![0; n].into_boxed_slice(),
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; n].into_boxed_slice(),
            hdrs: (0..n).map(|_| unsafe { zeroed::<libc::mmsghdr>() }).collect(),
            scratch: vec![[0u8; SCRATCH_LEN]; n].into_boxed_slice(),
            len: 0,
            scratch_used: 0,
        }
    }

    /// Set the family of the socket the next flush goes to (IPv4 destinations are mapped
    /// for an IPv6 socket). Only while the batch is empty.
    pub fn set_v6_socket(&mut self, v6: bool) {
        debug_assert!(self.len == 0);
        self.v6_socket = v6;
    }

    /// Whether another datagram fits.
    pub fn is_full(&self) -> bool {
        self.len == self.srcs.len()
    }

    /// Queued datagrams.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queue datagram `i` of the receive batch, unchanged, to `dst`. Returns false when full.
    pub fn push_forward(&mut self, recv: &RecvBatch, i: usize, dst: SocketAddr) -> bool {
        if self.is_full() {
            return false;
        }
        let len = recv.get(i).0.len();
        self.addr_lens[self.len] = to_storage(dst, self.v6_socket, &mut self.addrs[self.len]);
        self.srcs[self.len] = Source::Recv(i, len);
        self.len += 1;
        true
    }

    /// Queue a copy of `bytes` (≤ [`SCRATCH_LEN`]) to `dst`. Returns false when full or
    /// too long.
    pub fn push_copy(&mut self, bytes: &[u8], dst: SocketAddr) -> bool {
        if self.is_full() || self.scratch_used == self.scratch.len() || bytes.len() > SCRATCH_LEN {
            return false;
        }
        let j = self.scratch_used;
        self.scratch[j][..bytes.len()].copy_from_slice(bytes);
        self.scratch_used += 1;
        self.addr_lens[self.len] = to_storage(dst, self.v6_socket, &mut self.addrs[self.len]);
        self.srcs[self.len] = Source::Scratch(j, bytes.len());
        self.len += 1;
        true
    }

    /// A scratch slot to write a datagram into directly; queue it with
    /// [`SendBatch::push_scratch`]. `None` when full.
    pub fn scratch_slot(&mut self) -> Option<&mut [u8; SCRATCH_LEN]> {
        if self.is_full() || self.scratch_used == self.scratch.len() {
            return None;
        }
        Some(&mut self.scratch[self.scratch_used])
    }

    /// Queue the first `len` bytes of the slot returned by [`SendBatch::scratch_slot`].
    pub fn push_scratch(&mut self, len: usize, dst: SocketAddr) -> bool {
        if self.is_full() || self.scratch_used == self.scratch.len() || len > SCRATCH_LEN {
            return false;
        }
        let j = self.scratch_used;
        self.scratch_used += 1;
        self.addr_lens[self.len] = to_storage(dst, self.v6_socket, &mut self.addrs[self.len]);
        self.srcs[self.len] = Source::Scratch(j, len);
        self.len += 1;
        true
    }

    /// Send everything queued on `fd` (blocking until the kernel takes it; a datagram the
    /// kernel refuses is skipped and counted) and empty the batch. `recv` must be the
    /// batch the forwarded datagrams were queued from.
    pub fn flush(&mut self, fd: RawFd, recv: &RecvBatch) -> Flushed {
        let n = self.len;
        for k in 0..n {
            let (ptr, len) = match self.srcs[k] {
                Source::Recv(i, len) => (recv.bufs[i].as_ptr(), len),
                Source::Scratch(j, len) => (self.scratch[j].as_ptr(), len),
            };
            self.iovs[k] = libc::iovec { iov_base: ptr as *mut _, iov_len: len };
            let h = &mut self.hdrs[k].msg_hdr;
            h.msg_iov = &mut self.iovs[k];
            h.msg_iovlen = 1;
            h.msg_name = (&mut self.addrs[k] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = self.addr_lens[k];
        }
        let mut out = Flushed::default();
        let mut at = 0;
        while at < n {
            // SAFETY: headers point at live buffers set up just above.
            let r = unsafe { libc::sendmmsg(fd, self.hdrs[at..].as_mut_ptr(), (n - at) as u32, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first datagram failed (e.g. unreachable destination): skip it.
                out.errors += 1;
                at += 1;
            } else {
                out.sent += r as usize;
                at += r as usize;
            }
        }
        self.len = 0;
        self.scratch_used = 0;
        out
    }
}

/// Wait until one of `fds` is readable or `timeout_ms` passes; returns a bitmask of the
/// readable ones (first 64).
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> u64 {
    let mut p = [libc::pollfd { fd: -1, events: 0, revents: 0 }; 8];
    let n = fds.len().min(p.len());
    for (slot, &fd) in p.iter_mut().zip(fds) {
        *slot = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    }
    // SAFETY: `p[..n]` are valid pollfd entries.
    let r = unsafe { libc::poll(p.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
    if r <= 0 {
        return 0;
    }
    p[..n].iter().enumerate().fold(0, |m, (i, e)| if e.revents != 0 { m | (1 << i) } else { m })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_roundtrip_over_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut send = SendBatch::new(8, false);
        let empty = RecvBatch::new(1);
        for i in 0..5u8 {
            assert!(send.push_copy(&[i; 10], b.local_addr().unwrap()));
        }
        assert_eq!(send.flush(a.as_raw_fd(), &empty), Flushed { sent: 5, errors: 0 });
        let mut recv = RecvBatch::new(8);
        let mut got = 0;
        while got < 5 {
            assert!(poll_readable(&[b.as_raw_fd()], 2000) != 0);
            let n = recv.recv(b.as_raw_fd(), true).unwrap();
            for i in 0..n {
                let (d, from) = recv.get(i);
                assert_eq!(d, &[(got + i) as u8; 10]);
                assert_eq!(from, Some(a.local_addr().unwrap()));
            }
            got += n;
        }
        // Forward them back unchanged, zero-copy.
        for i in 0..recv.len() {
            assert!(send.push_forward(&recv, i, a.local_addr().unwrap()));
        }
        assert_eq!(send.flush(b.as_raw_fd(), &recv).sent, recv.len());
    }

    #[test]
    fn batch_address_conversion_roundtrips() {
        let mut s = unsafe { zeroed::<libc::sockaddr_storage>() };
        for a in ["1.2.3.4:5", "[::1]:7", "[2001:db8::1]:65535"] {
            let a: SocketAddr = a.parse().unwrap();
            to_storage(a, a.is_ipv6(), &mut s);
            assert_eq!(from_storage(&s), Some(a));
        }
        to_storage("1.2.3.4:5".parse().unwrap(), true, &mut s);
        assert_eq!(from_storage(&s), Some("[::ffff:1.2.3.4]:5".parse().unwrap()));
    }
}
