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

/// Buffer of one coalesced (`UDP_GRO`) receive: the largest UDP payload.
pub const GRO_BUF: usize = 65_536;
/// At most this many datagrams in one `UDP_SEGMENT` send (the kernel's `UDP_MAX_SEGMENTS`
/// was 64 before Linux 5.x raised it to 128).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// At most this many payload bytes in one `UDP_SEGMENT` send.
const MAX_GSO_BYTES: usize = 65_000;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// Room for one control message with an `int` (UDP_GRO) or a `u16` (UDP_SEGMENT).
type Ctrl = [u64; 4];

/// Ask the kernel to deliver a burst of same-size datagrams from one source as one buffer
/// (`UDP_GRO`, Linux ≥ 5.0); read such buffers with [`RecvBatch::with_gro`].
pub fn enable_gro(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` outlives the call; the size matches.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Receive buffers for one `recvmmsg` call.
pub struct RecvBatch {
    buf: Box<[u8]>,
    slot: usize,
    addrs: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    /// Control buffers and the segment size each coalesced receive reported (GRO only).
    ctrl: Box<[Ctrl]>,
    segs: Box<[u32]>,
    gro: bool,
    len: usize,
}

// SAFETY: the raw pointers inside point into the batch's own boxed buffers, which move with
// it; nothing is shared.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Buffers for `n` datagrams of up to [`MAX_DATAGRAM`] bytes.
    pub fn new(n: usize) -> RecvBatch {
        RecvBatch::build(n, MAX_DATAGRAM, false)
    }

    /// Buffers for `n` coalesced receives from a socket with `UDP_GRO` ([`enable_gro`]):
    /// [`GRO_BUF`] bytes each; [`RecvBatch::segments`] splits them into datagrams.
    pub fn with_gro(n: usize) -> RecvBatch {
        RecvBatch::build(n, GRO_BUF, true)
    }

    fn build(n: usize, slot: usize, gro: bool) -> RecvBatch {
        let n = n.max(1);
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut b = RecvBatch {
            buf: vec![0u8; n * slot].into_boxed_slice(),
            slot,
            addrs: vec![unsafe { zeroed::<libc::sockaddr_storage>() }; n].into_boxed_slice(),
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; n].into_boxed_slice(),
            hdrs: (0..n).map(|_| unsafe { zeroed::<libc::mmsghdr>() }).collect(),
            ctrl: vec![[0u64; 4]; if gro { n } else { 0 }].into_boxed_slice(),
            segs: vec![0u32; n].into_boxed_slice(),
            gro,
            len: 0,
        };
        let base = b.buf.as_mut_ptr();
        for i in 0..n {
            // SAFETY: `i * slot` is inside the n × slot buffer.
            let at = unsafe { base.add(i * slot) };
            b.iovs[i] = libc::iovec { iov_base: at.cast(), iov_len: slot };
            b.hdrs[i].msg_hdr.msg_iov = &mut b.iovs[i];
            b.hdrs[i].msg_hdr.msg_iovlen = 1;
            b.hdrs[i].msg_hdr.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
        }
        b
    }

    /// Capacity in receives.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Receive up to a batch from `fd`. Returns the number of receives (0 when nothing is
    /// waiting and `nonblocking`); with GRO one receive may hold many datagrams.
    pub fn recv(&mut self, fd: RawFd, nonblocking: bool) -> io::Result<usize> {
        for (i, h) in self.hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_len = 0;
            if self.gro {
                h.msg_hdr.msg_control = self.ctrl[i].as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = size_of::<Ctrl>() as _;
            }
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
        for i in 0..self.len {
            self.segs[i] = if self.gro { gro_size(&self.hdrs[i].msg_hdr) } else { 0 };
        }
        Ok(self.len)
    }

    /// Receives of the last [`RecvBatch::recv`].
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the last receive got nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether receive `i` was longer than its buffer: the kernel cut it (`MSG_TRUNC`), so
    /// [`RecvBatch::get`] holds only its first bytes. Callers drop it.
    pub fn truncated(&self, i: usize) -> bool {
        self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }

    /// Receive `i` of the last call and its source (`None` for an unknown family). Check
    /// [`RecvBatch::truncated`] first: a longer datagram comes back cut to the buffer size.
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let len = (self.hdrs[i].msg_len as usize).min(self.slot);
        (&self.buf[i * self.slot..i * self.slot + len], from_storage(&self.addrs[i]))
    }

    /// Mutable receive `i` (the bench writes timestamps in place).
    pub fn get_mut(&mut self, i: usize) -> &mut [u8] {
        let len = (self.hdrs[i].msg_len as usize).min(self.slot);
        &mut self.buf[i * self.slot..i * self.slot + len]
    }

    /// The datagrams of receive `i` as `(offset, len)` in [`RecvBatch::get`]'s bytes: one
    /// for a plain receive; for a coalesced (GRO) one, segments of the reported size, the
    /// last possibly shorter.
    pub fn segments(&self, i: usize) -> Segments {
        let len = (self.hdrs[i].msg_len as usize).min(self.slot);
        let seg = match self.segs[i] as usize {
            0 => len.max(1),
            s => s,
        };
        Segments { at: 0, len, seg, empty: len == 0 }
    }
}

/// Iterator of [`RecvBatch::segments`].
#[derive(Debug, Clone)]
pub struct Segments {
    at: usize,
    len: usize,
    seg: usize,
    empty: bool,
}

impl Iterator for Segments {
    type Item = (usize, usize);
    fn next(&mut self) -> Option<(usize, usize)> {
        if self.empty {
            self.empty = false;
            return Some((0, 0));
        }
        if self.at >= self.len {
            return None;
        }
        let at = self.at;
        let n = self.seg.min(self.len - at);
        self.at += n;
        Some((at, n))
    }
}

/// The `UDP_GRO` segment size in a received message's control data (0: none).
fn gro_size(h: &libc::msghdr) -> u32 {
    // SAFETY: the kernel filled `msg_control[..msg_controllen]`; the CMSG macros stay inside.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let v = (libc::CMSG_DATA(c) as *const libc::c_int).read_unaligned();
                return v.max(0) as u32;
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    0
}

#[derive(Clone, Copy)]
enum Source {
    Recv(usize, usize, usize),
    Scratch(usize, usize),
}

/// Outgoing datagrams for one `sendmmsg` call: either datagrams of a [`RecvBatch`] sent
/// unchanged (forwarding) or bytes copied into the batch's own scratch slots. With
/// [`SendBatch::set_gso`], runs of same-size datagrams to one destination leave as one
/// `UDP_SEGMENT` message each (the kernel splits them).
pub struct SendBatch {
    v6_socket: bool,
    gso: bool,
    srcs: Box<[Source]>,
    dsts: Box<[SocketAddr]>,
    addrs: Box<[libc::sockaddr_storage]>,
    addr_lens: Box<[libc::socklen_t]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    ctrl: Box<[Ctrl]>,
    msg_segs: Box<[usize]>,
    /// The first datagram (index in `iovs`) of each message.
    msg_first: Box<[usize]>,
    scratch: Box<[[u8; SCRATCH_LEN]]>,
    len: usize,
    scratch_used: usize,
    /// Test hook: write a malformed `UDP_SEGMENT` header, so the kernel refuses it (EINVAL).
    #[cfg(test)]
    break_gso: bool,
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
    /// System messages used (fewer than `sent` when runs were coalesced with GSO).
    pub messages: usize,
    /// The kernel refused a `UDP_SEGMENT` message (no checksum offload on the route, an old
    /// kernel): its datagrams went one by one, and the batch stopped coalescing.
    pub gso_refused: bool,
}

impl SendBatch {
    /// Room for `n` datagrams, for a socket of the given family.
    pub fn new(n: usize, v6_socket: bool) -> SendBatch {
        let n = n.max(1);
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        // SAFETY: all-zero is a valid value for these plain C structs.
        SendBatch {
            v6_socket,
            gso: false,
            srcs: vec![Source::Scratch(0, 0); n].into_boxed_slice(),
            dsts: vec![unspecified; n].into_boxed_slice(),
            addrs: vec![unsafe { zeroed::<libc::sockaddr_storage>() }; n].into_boxed_slice(),
            addr_lens: vec![0; n].into_boxed_slice(),
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; n].into_boxed_slice(),
            hdrs: (0..n).map(|_| unsafe { zeroed::<libc::mmsghdr>() }).collect(),
            ctrl: vec![[0u64; 4]; n].into_boxed_slice(),
            msg_segs: vec![0; n].into_boxed_slice(),
            msg_first: vec![0; n].into_boxed_slice(),
            scratch: vec![[0u8; SCRATCH_LEN]; n].into_boxed_slice(),
            len: 0,
            scratch_used: 0,
            #[cfg(test)]
            break_gso: false,
        }
    }

    /// Set the family of the socket the next flush goes to (IPv4 destinations are mapped
    /// for an IPv6 socket). Only while the batch is empty.
    pub fn set_v6_socket(&mut self, v6: bool) {
        debug_assert!(self.len == 0);
        self.v6_socket = v6;
    }

    /// Coalesce runs of same-size datagrams to one destination into `UDP_SEGMENT` sends
    /// (Linux ≥ 4.18). Turned off for good the first time the kernel refuses one
    /// ([`Flushed::gso_refused`]; nothing is lost: that run is sent datagram by datagram).
    pub fn set_gso(&mut self, on: bool) {
        self.gso = on;
    }

    /// Whether runs are coalesced with `UDP_SEGMENT` (asked for, and not refused).
    pub fn gso(&self) -> bool {
        self.gso
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

    fn push(&mut self, src: Source, dst: SocketAddr) {
        self.addr_lens[self.len] = to_storage(dst, self.v6_socket, &mut self.addrs[self.len]);
        self.dsts[self.len] = dst;
        self.srcs[self.len] = src;
        self.len += 1;
    }

    /// Queue receive `i` of the receive batch, unchanged, to `dst`. Returns false when full.
    pub fn push_forward(&mut self, recv: &RecvBatch, i: usize, dst: SocketAddr) -> bool {
        let len = recv.get(i).0.len();
        self.push_forward_range(recv, i, 0, len, dst)
    }

    /// Queue bytes `off..off + len` of receive `i` (one segment of a coalesced receive),
    /// unchanged, to `dst`. Returns false when full.
    pub fn push_forward_range(
        &mut self,
        recv: &RecvBatch,
        i: usize,
        off: usize,
        len: usize,
        dst: SocketAddr,
    ) -> bool {
        if self.is_full() || off + len > recv.get(i).0.len() {
            return false;
        }
        self.push(Source::Recv(i, off, len), dst);
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
        self.push(Source::Scratch(j, bytes.len()), dst);
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
        self.push(Source::Scratch(j, len), dst);
        true
    }

    /// Send everything queued on `fd` (blocking until the kernel takes it; a message the
    /// kernel refuses is skipped and its datagrams counted) and empty the batch. `recv` must
    /// be the batch the forwarded datagrams were queued from.
    pub fn flush(&mut self, fd: RawFd, recv: &RecvBatch) -> Flushed {
        let n = self.len;
        for k in 0..n {
            let (ptr, len) = match self.srcs[k] {
                // SAFETY: push_forward_range checked `off + len` against receive i's length.
                Source::Recv(i, off, len) => (unsafe { recv.buf.as_ptr().add(i * recv.slot + off) }, len),
                Source::Scratch(j, len) => (self.scratch[j].as_ptr(), len),
            };
            self.iovs[k] = libc::iovec { iov_base: ptr as *mut _, iov_len: len };
        }
        // Messages: one per datagram, or one per run of same-size datagrams to one
        // destination with GSO (the last of a run may be shorter, as the kernel allows).
        let mut msgs = 0;
        let mut k = 0;
        while k < n {
            let size = self.iovs[k].iov_len;
            let mut m = 1;
            if self.gso {
                let mut bytes = size;
                while k + m < n
                    && m < MAX_GSO_SEGMENTS
                    && self.dsts[k + m] == self.dsts[k]
                    && self.iovs[k + m - 1].iov_len == size
                    && self.iovs[k + m].iov_len <= size
                    && bytes + self.iovs[k + m].iov_len <= MAX_GSO_BYTES
                {
                    bytes += self.iovs[k + m].iov_len;
                    m += 1;
                }
            }
            let h = &mut self.hdrs[msgs].msg_hdr;
            h.msg_iov = &mut self.iovs[k];
            h.msg_iovlen = m as _;
            h.msg_name = (&mut self.addrs[k] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = self.addr_lens[k];
            if m > 1 {
                let c = &mut self.ctrl[msgs];
                // SAFETY: `c` is 32 aligned bytes, room for one cmsghdr and a u16.
                unsafe {
                    let ch = c.as_mut_ptr() as *mut libc::cmsghdr;
                    (*ch).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    #[cfg(test)]
                    if self.break_gso {
                        (*ch).cmsg_len = libc::CMSG_LEN(size_of::<u32>() as u32) as _;
                    }
                    (*ch).cmsg_level = libc::SOL_UDP;
                    (*ch).cmsg_type = UDP_SEGMENT;
                    (libc::CMSG_DATA(ch) as *mut u16).write_unaligned(size as u16);
                    h.msg_control = c.as_mut_ptr().cast();
                    h.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
                }
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
            self.msg_segs[msgs] = m;
            self.msg_first[msgs] = k;
            msgs += 1;
            k += m;
        }
        let mut out = Flushed { messages: msgs, ..Flushed::default() };
        let mut at = 0;
        while at < msgs {
            // SAFETY: headers point at live buffers set up just above.
            let r = unsafe { libc::sendmmsg(fd, self.hdrs[at..].as_mut_ptr(), (msgs - at) as u32, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if self.msg_segs[at] > 1 && gso_refusal(&e) {
                    // The route or the kernel does not take UDP_SEGMENT (EIO: no checksum
                    // offload; EINVAL/EOPNOTSUPP: too old): this run goes datagram by
                    // datagram, and the batch stops coalescing (as quinn does).
                    self.gso = false;
                    out.gso_refused = true;
                    let (k, m) = (self.msg_first[at], self.msg_segs[at]);
                    for j in k..k + m {
                        let iov = self.iovs[j];
                        // SAFETY: the iovec and the address were set up above for this flush.
                        let r = unsafe {
                            libc::sendto(
                                fd,
                                iov.iov_base,
                                iov.iov_len,
                                0,
                                (&self.addrs[k] as *const libc::sockaddr_storage).cast(),
                                self.addr_lens[k],
                            )
                        };
                        if r < 0 {
                            out.errors += 1;
                        } else {
                            out.sent += 1;
                            out.messages += 1;
                        }
                    }
                    out.messages -= 1;
                    at += 1;
                    continue;
                }
                // The first message failed (e.g. unreachable destination): skip it.
                out.errors += self.msg_segs[at];
                at += 1;
            } else {
                out.sent += self.msg_segs[at..at + r as usize].iter().sum::<usize>();
                at += r as usize;
            }
        }
        self.len = 0;
        self.scratch_used = 0;
        out
    }
}

/// An error that means "this socket cannot send `UDP_SEGMENT` messages", not "this
/// destination failed".
fn gso_refusal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT))
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
        assert_eq!(
            send.flush(a.as_raw_fd(), &empty),
            Flushed { sent: 5, errors: 0, messages: 5, gso_refused: false }
        );
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
    fn a_gso_message_the_kernel_refuses_goes_datagram_by_datagram_and_coalescing_stops() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to_b = b.local_addr().unwrap();
        let mut send = SendBatch::new(16, false);
        send.set_gso(true);
        send.break_gso = true; // the kernel answers EINVAL, as one without UDP_SEGMENT would
        let empty = RecvBatch::new(1);
        for i in 0..6u8 {
            assert!(send.push_copy(&[i; 100], to_b));
        }
        let f = send.flush(a.as_raw_fd(), &empty);
        assert_eq!(f, Flushed { sent: 6, errors: 0, messages: 6, gso_refused: true });
        assert!(!send.gso(), "no more coalescing on this batch");
        let mut buf = [0u8; 256];
        for i in 0..6u8 {
            let (len, _) = b.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..len], &[i; 100][..], "every datagram, in order");
        }
    }

    #[test]
    fn batch_gso_send_and_gro_receive_keep_every_datagram_in_order() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_gro(b.as_raw_fd()).unwrap();
        let (to_b, to_c) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        let mut send = SendBatch::new(64, false);
        send.set_gso(true);
        let empty = RecvBatch::new(1);
        // 20 × 100 B and a 40 B tail to b (one GSO message), 3 to c, 5 more to b.
        for i in 0..20u8 {
            assert!(send.push_copy(&[i; 100], to_b));
        }
        assert!(send.push_copy(&[20; 40], to_b));
        for i in 0..3u8 {
            assert!(send.push_copy(&[i; 100], to_c));
        }
        for i in 21..26u8 {
            assert!(send.push_copy(&[i; 100], to_b));
        }
        let f = send.flush(a.as_raw_fd(), &empty);
        assert_eq!((f.sent, f.errors, f.messages), (29, 0, 3));
        // b has GRO on: what it reads splits back into the 26 datagrams, in order.
        let mut recv = RecvBatch::with_gro(8);
        let mut got: Vec<Vec<u8>> = vec![];
        while got.len() < 26 {
            assert!(poll_readable(&[b.as_raw_fd()], 2000) != 0, "got {}", got.len());
            let n = recv.recv(b.as_raw_fd(), true).unwrap();
            for i in 0..n {
                let (d, from) = recv.get(i);
                assert_eq!(from, Some(a.local_addr().unwrap()));
                got.extend(recv.segments(i).map(|(off, len)| d[off..off + len].to_vec()));
            }
        }
        let mut want: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 100]).collect();
        want.push(vec![20; 40]);
        want.extend((21..26u8).map(|i| vec![i; 100]));
        assert_eq!(got, want);
        // c has no GRO: the kernel split the run into plain datagrams.
        let mut buf = [0u8; 256];
        for i in 0..3u8 {
            let (len, _) = c.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..len], &[i; 100][..]);
        }
        // Forwarding segments of a coalesced receive, zero-copy, to c.
        for i in 0..recv.len() {
            for (off, len) in recv.segments(i) {
                assert!(send.push_forward_range(&recv, i, off, len, to_c));
            }
        }
        let queued = send.len();
        assert_eq!(send.flush(b.as_raw_fd(), &recv).sent, queued);
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
