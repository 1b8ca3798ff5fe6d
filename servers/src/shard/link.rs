//! The cross-process internal link between roles (Agent ↔ Lobby ↔ Game): one TCP
//! connection, encrypted and mutually authenticated with Noise (a PSK derived from the shard
//! secret), carrying encoded [`InternalMessage`]s, with link-level heartbeats so a dead peer
//! is noticed within the heartbeat timeout.
//!
//! ```text
//! pattern    Noise_NNpsk0_25519_ChaChaPoly_SHA256, prologue "p2pmodel internal link v1"
//! psk        HKDF-SHA256(ikm = shard secret, salt = none, info = "p2pmodel internal link psk v1")
//! every Noise message on the wire: len u16 BE ‖ message (len ≤ 65535)
//! handshake  C→S  len ‖ e[32] ‖ AEAD(role 5 bytes)[21]        (len = 53)
//!            S→C  len ‖ e[32] ‖ AEAD(empty)[16]               (len = 48)
//!            C→S  first transport message: a heartbeat        (len = 17; key confirmation)
//! transport  len ‖ AEAD(kind u8 ‖ chunk)   kind 0 heartbeat (no chunk), 1 last chunk of a
//!            frame, 2 more chunks follow; chunk ≤ 65518 bytes; a frame ≤ MAX_FRAME bytes
//! ```
//! Both sides prove they hold the secret (each AEAD key is mixed with the PSK); the ephemeral
//! DH gives forward secrecy; Noise's implicit nonces reject a replayed, reordered or altered
//! message, which closes the link. The handshake has [`HANDSHAKE_TIMEOUT`] in total; a peer
//! can make us allocate at most one 64 KiB read buffer and one [`MAX_FRAME`] reassembly.
//! The listener returns a link only after the connector's first transport message decrypted,
//! so a replayed first message cannot displace a live link. [`super::remote`] routes the bus
//! over it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hkdf::Hkdf;
use p2pmodel_core::proto::shard::{InternalMessage, MAX_MESSAGE, Role, decode, encode};
use sha2::Sha256;
use snow::StatelessTransportState;

use crate::config::SHARD_SECRET_LEN;

/// The Noise protocol of internal links.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";
const PROLOGUE: &[u8] = b"p2pmodel internal link v1";
const PSK_INFO: &[u8] = b"p2pmodel internal link psk v1";
/// The whole handshake must finish within this (a stalling peer is dropped).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest frame a link carries: an encoded message plus the remote bus's 5-byte route.
pub const MAX_FRAME: usize = MAX_MESSAGE + 5;
/// Largest Noise message (the u16 length prefix).
const MAX_NOISE: usize = 65535;
const TAG: usize = 16;
/// Largest chunk of a frame in one transport message (kind byte and tag take the rest).
const MAX_CHUNK: usize = MAX_NOISE - TAG - 1;
const KIND_HEARTBEAT: u8 = 0;
const KIND_LAST: u8 = 1;
const KIND_MORE: u8 = 2;

/// The Noise PSK of internal links, derived from the shard secret.
pub fn link_psk(secret: &[u8; SHARD_SECRET_LEN]) -> [u8; 32] {
    let mut psk = [0u8; 32];
    Hkdf::<Sha256>::new(None, secret).expand(PSK_INFO, &mut psk).expect("32 bytes is a valid HKDF length");
    psk
}

/// A role as 5 bytes (kind, then the game number little-endian).
pub fn role_bytes(r: Role) -> [u8; 5] {
    let (k, n) = match r {
        Role::Agent => (0, 0),
        Role::Lobby => (1, 0),
        Role::Game(n) => (2, n),
    };
    let mut b = [k, 0, 0, 0, 0];
    b[1..].copy_from_slice(&n.to_le_bytes());
    b
}

/// The role of [`role_bytes`] output, if valid.
pub fn role_from(b: [u8; 5]) -> Option<Role> {
    let n = u32::from_le_bytes(b[1..].try_into().ok()?);
    match b[0] {
        0 => Some(Role::Agent),
        1 => Some(Role::Lobby),
        2 => Some(Role::Game(n)),
        _ => None,
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, what.to_string())
}

fn noise_err(e: snow::Error) -> io::Error {
    io::Error::other(format!("internal link: noise: {e}"))
}

/// Fill `buf`, failing once `deadline` passes (however slowly the peer trickles bytes).
fn read_by(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "internal link: handshake timed out"));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "internal link: handshake timed out"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read one length-prefixed Noise message into `buf` (65535 bytes); returns its length.
fn read_noise(s: &mut TcpStream, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
    let mut len = [0u8; 2];
    match deadline {
        Some(d) => read_by(s, &mut len, d)?,
        None => s.read_exact(&mut len)?,
    }
    let n = u16::from_be_bytes(len) as usize;
    match deadline {
        Some(d) => read_by(s, &mut buf[..n], d)?,
        None => s.read_exact(&mut buf[..n])?,
    }
    Ok(n)
}

fn write_noise(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("noise message too long"))?;
    s.write_all(&[len.to_be_bytes().as_slice(), msg].concat())
}

fn builder(psk: &[u8; 32]) -> Result<snow::Builder<'_>, snow::Error> {
    snow::Builder::new(NOISE_PARAMS.parse()?).prologue(PROLOGUE)?.psk(0, psk)
}

/// Encrypt one transport message (`kind ‖ chunk`) with `nonce`, length-prefixed.
fn seal(
    t: &StatelessTransportState,
    nonce: u64,
    kind: u8,
    chunk: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let plain = [[kind].as_slice(), chunk].concat();
    out.resize(2 + plain.len() + TAG, 0);
    let n = t.write_message(nonce, &plain, &mut out[2..]).map_err(noise_err)?;
    out.truncate(2 + n);
    out[..2].copy_from_slice(&(n as u16).to_be_bytes());
    Ok(())
}

/// One encrypted, authenticated internal link. Dropping it closes the connection.
pub struct InternalLink {
    peer: Role,
    out: Sender<Vec<u8>>,
    inbox: Mutex<Receiver<Vec<u8>>>,
    last_heard: Arc<Mutex<Instant>>,
    closed: Arc<AtomicBool>,
    stream: TcpStream,
    /// Messages that arrived authenticated but did not decode (dropped).
    pub decode_errors: AtomicU64,
}

impl std::fmt::Debug for InternalLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalLink").field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl InternalLink {
    /// Connect to the role listening at `addr`, as `me`.
    pub fn connect(
        addr: SocketAddr,
        secret: &[u8; SHARD_SECRET_LEN],
        me: Role,
        peer: Role,
        heartbeat: Duration,
    ) -> io::Result<InternalLink> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let mut s = TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT)?;
        s.set_nodelay(true)?;
        s.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let psk = link_psk(secret);
        let mut hs = builder(&psk).and_then(|b| b.build_initiator()).map_err(noise_err)?;
        let mut buf = vec![0u8; MAX_NOISE];
        let n = hs.write_message(&role_bytes(me), &mut buf).map_err(noise_err)?;
        write_noise(&mut s, &buf[..n])?;
        let mut payload = vec![0u8; MAX_NOISE];
        let n = read_noise(&mut s, &mut buf, Some(deadline))?;
        hs.read_message(&buf[..n], &mut payload)
            .map_err(|_| bad("internal link: the listener does not hold the shard secret"))?;
        let t = hs.into_stateless_transport_mode().map_err(noise_err)?;
        // Key confirmation: our first transport message.
        let mut first = Vec::new();
        seal(&t, 0, KIND_HEARTBEAT, &[], &mut first)?;
        s.write_all(&first)?;
        Self::run(s, t, 1, 0, peer, heartbeat)
    }

    /// Accept one connection on `listener`; returns the link and the connector's role.
    pub fn accept(
        listener: &TcpListener,
        secret: &[u8; SHARD_SECRET_LEN],
        heartbeat: Duration,
    ) -> io::Result<InternalLink> {
        let (s, _) = listener.accept()?;
        Self::handshake(s, secret, heartbeat)
    }

    /// Run the listener's side of the handshake on an accepted connection (at most
    /// [`HANDSHAKE_TIMEOUT`]).
    pub fn handshake(
        s: TcpStream,
        secret: &[u8; SHARD_SECRET_LEN],
        heartbeat: Duration,
    ) -> io::Result<InternalLink> {
        Self::handshake_within(s, secret, heartbeat, HANDSHAKE_TIMEOUT)
    }

    /// [`Self::handshake`] with its own time limit (tests).
    pub fn handshake_within(
        mut s: TcpStream,
        secret: &[u8; SHARD_SECRET_LEN],
        heartbeat: Duration,
        limit: Duration,
    ) -> io::Result<InternalLink> {
        let deadline = Instant::now() + limit;
        s.set_nodelay(true)?;
        s.set_write_timeout(Some(limit))?;
        let psk = link_psk(secret);
        let mut hs = builder(&psk).and_then(|b| b.build_responder()).map_err(noise_err)?;
        let mut buf = vec![0u8; MAX_NOISE];
        let mut payload = vec![0u8; MAX_NOISE];
        let n = read_noise(&mut s, &mut buf, Some(deadline))?;
        let m = hs
            .read_message(&buf[..n], &mut payload)
            .map_err(|_| bad("internal link: the connector does not hold the shard secret"))?;
        let rb: [u8; 5] =
            payload[..m].try_into().map_err(|_| bad("internal link: the hello carries no role"))?;
        let peer = role_from(rb).ok_or_else(|| bad("internal link: unknown role"))?;
        let n = hs.write_message(&[], &mut buf).map_err(noise_err)?;
        write_noise(&mut s, &buf[..n])?;
        let t = hs.into_stateless_transport_mode().map_err(noise_err)?;
        // The connector's first transport message proves it completed the DH (not a replay).
        let n = read_noise(&mut s, &mut buf, Some(deadline))?;
        let m = t
            .read_message(0, &buf[..n], &mut payload)
            .map_err(|_| bad("internal link: the connector's key confirmation failed"))?;
        if m != 1 || payload[0] != KIND_HEARTBEAT {
            return Err(bad("internal link: the connector's first message is not a heartbeat"));
        }
        Self::run(s, t, 0, 1, peer, heartbeat)
    }

    fn run(
        s: TcpStream,
        t: StatelessTransportState,
        send_nonce: u64,
        recv_nonce: u64,
        peer: Role,
        heartbeat: Duration,
    ) -> io::Result<InternalLink> {
        s.set_read_timeout(None)?;
        s.set_write_timeout(Some(Duration::from_secs(3)))?;
        let t = Arc::new(t);
        let (out, out_rx) = mpsc::channel::<Vec<u8>>();
        let (in_tx, inbox) = mpsc::channel::<Vec<u8>>();
        let last_heard = Arc::new(Mutex::new(Instant::now()));
        let closed = Arc::new(AtomicBool::new(false));
        let (mut w, mut r) = (s.try_clone()?, s.try_clone()?);
        let (c1, tw) = (closed.clone(), t.clone());
        std::thread::Builder::new().name("p2pm-int-tx".into()).spawn(move || {
            let mut nonce = send_nonce;
            let mut wire = Vec::with_capacity(MAX_NOISE + 2);
            'run: loop {
                let frame = match out_rx.recv_timeout(heartbeat) {
                    Ok(p) => Some(p),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                let mut pieces: Vec<(u8, &[u8])> = Vec::new();
                match &frame {
                    None => pieces.push((KIND_HEARTBEAT, &[])),
                    Some(f) => {
                        let mut chunks = f.chunks(MAX_CHUNK).peekable();
                        if f.is_empty() {
                            pieces.push((KIND_LAST, &[]));
                        }
                        while let Some(c) = chunks.next() {
                            pieces.push((if chunks.peek().is_some() { KIND_MORE } else { KIND_LAST }, c));
                        }
                    }
                }
                for (kind, chunk) in pieces {
                    if seal(&tw, nonce, kind, chunk, &mut wire).is_err() || w.write_all(&wire).is_err() {
                        break 'run;
                    }
                    nonce += 1;
                }
            }
            c1.store(true, Ordering::Relaxed);
        })?;
        let (c2, lh) = (closed.clone(), last_heard.clone());
        std::thread::Builder::new().name("p2pm-int-rx".into()).spawn(move || {
            let mut nonce = recv_nonce;
            let mut buf = vec![0u8; MAX_NOISE];
            let mut plain = vec![0u8; MAX_NOISE];
            let mut frame = Vec::new();
            while let Ok(n) = read_noise(&mut r, &mut buf, None) {
                // A tampered, replayed or reordered message fails here and closes the link.
                let Ok(m) = t.read_message(nonce, &buf[..n], &mut plain) else {
                    tracing::warn!(?peer, "internal link closed: a message failed authentication");
                    break;
                };
                nonce += 1;
                let Some((&kind, chunk)) = plain[..m].split_first() else { break };
                if kind > KIND_MORE
                    || (kind == KIND_HEARTBEAT && !chunk.is_empty())
                    || frame.len() + chunk.len() > MAX_FRAME
                {
                    tracing::warn!(?peer, kind, "internal link closed: malformed or oversized frame");
                    break;
                }
                if let Ok(mut t) = lh.lock() {
                    *t = Instant::now();
                }
                frame.extend_from_slice(chunk);
                if kind == KIND_LAST && in_tx.send(std::mem::take(&mut frame)).is_err() {
                    break;
                }
            }
            c2.store(true, Ordering::Relaxed);
        })?;
        Ok(InternalLink {
            peer,
            out,
            inbox: Mutex::new(inbox),
            last_heard,
            closed,
            stream: s,
            decode_errors: AtomicU64::new(0),
        })
    }

    /// The role at the other end.
    pub fn peer(&self) -> Role {
        self.peer
    }

    /// Queue a message (false if the link is closed or it cannot be encoded).
    pub fn send(&self, msg: &InternalMessage) -> bool {
        match encode(msg) {
            Ok(b) => self.send_raw(b),
            Err(_) => false,
        }
    }

    /// Queue raw bytes (the remote bus's routed frames); false if the link is closed or the
    /// frame is longer than [`MAX_FRAME`].
    pub fn send_raw(&self, bytes: Vec<u8>) -> bool {
        bytes.len() <= MAX_FRAME && !self.is_closed() && self.out.send(bytes).is_ok()
    }

    /// The next raw payload that arrived, if any.
    pub fn try_recv_raw(&self) -> Option<Vec<u8>> {
        self.inbox.lock().ok()?.try_recv().ok()
    }

    /// The next message that arrived, if any; undecodable ones are counted and skipped.
    pub fn try_recv(&self) -> Option<InternalMessage> {
        while let Some(b) = self.try_recv_raw() {
            match decode::<InternalMessage>(&b) {
                Ok(m) => return Some(m),
                Err(_) => {
                    self.decode_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        None
    }

    /// How long since anything (a message or a heartbeat) arrived.
    pub fn silent_for(&self) -> Duration {
        self.last_heard.lock().map(|t| t.elapsed()).unwrap_or(Duration::MAX)
    }

    /// The connection failed (peer gone, bad frame).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Dead by either sign: closed, or silent longer than `timeout`.
    pub fn is_dead(&self, timeout: Duration) -> bool {
        self.is_closed() || self.silent_for() > timeout
    }
}

impl Drop for InternalLink {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_millis(50);

    fn pair(secret_c: [u8; 32]) -> (io::Result<InternalLink>, io::Result<InternalLink>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            InternalLink::connect(addr, &secret_c, Role::Game(4), Role::Lobby, HB)
        });
        let s = InternalLink::accept(&l, &[9; 32], HB);
        (t.join().unwrap(), s)
    }

    fn wait<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Some(v) = f() {
                return Some(v);
            }
            std::thread::sleep(Duration::from_millis(5)); // waiting on a real socket
        }
        None
    }

    /// A TCP proxy in front of `to` that records both directions and flips the client→server
    /// byte at `flip` (if any). Returns its address and the recorded (c→s, s→c) bytes.
    #[allow(clippy::type_complexity)]
    fn proxy(to: SocketAddr, flip: Option<usize>) -> (SocketAddr, Arc<Mutex<(Vec<u8>, Vec<u8>)>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let rec = Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let rec2 = rec.clone();
        std::thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            let s = TcpStream::connect(to).unwrap();
            let pump =
                |mut from: TcpStream, mut to: TcpStream, up: bool, rec: Arc<Mutex<(Vec<u8>, Vec<u8>)>>| {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        let mut at = 0usize;
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            if up && let Some(f) = flip.filter(|f| (at..at + n).contains(f)) {
                                buf[f - at] ^= 0x01;
                            }
                            at += n;
                            let mut r = rec.lock().unwrap();
                            if up { &mut r.0 } else { &mut r.1 }.extend_from_slice(&buf[..n]);
                            drop(r);
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                };
            pump(c.try_clone().unwrap(), s.try_clone().unwrap(), true, rec2.clone());
            pump(s, c, false, rec2);
        });
        (addr, rec)
    }

    /// A listener-side link and a connector-side link through [`proxy`].
    #[allow(clippy::type_complexity)]
    fn proxied(flip: Option<usize>) -> (InternalLink, InternalLink, Arc<Mutex<(Vec<u8>, Vec<u8>)>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (p, rec) = proxy(l.local_addr().unwrap(), flip);
        let t = std::thread::spawn(move || InternalLink::connect(p, &[9; 32], Role::Agent, Role::Lobby, HB));
        let s = InternalLink::accept(&l, &[9; 32], HB).unwrap();
        (t.join().unwrap().unwrap(), s, rec)
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn internal_link_authenticates_carries_messages_and_detects_a_dead_peer() {
        let (c, s) = pair([9; 32]);
        let (c, s) = (c.unwrap(), s.unwrap());
        assert_eq!(s.peer(), Role::Game(4));
        let m = InternalMessage::ClientLeft { client: 7 };
        assert!(c.send(&m));
        assert_eq!(wait(|| s.try_recv()), Some(m.clone()));
        assert!(s.send(&m));
        assert_eq!(wait(|| c.try_recv()), Some(m));
        // Heartbeats keep an idle link alive …
        std::thread::sleep(Duration::from_millis(300));
        assert!(!s.is_dead(Duration::from_millis(200)) && !c.is_dead(Duration::from_millis(200)));
        // … and a dropped peer is noticed.
        drop(c);
        assert!(wait(|| s.is_dead(Duration::from_millis(200)).then_some(())).is_some());
    }

    #[test]
    fn internal_link_with_the_wrong_secret_is_refused_as_dialer_and_as_listener() {
        // The dialer has the wrong secret: the listener refuses its hello, the dialer fails.
        let (c, s) = pair([8; 32]);
        let (ce, se) = (c.unwrap_err(), s.unwrap_err());
        assert_eq!(se.kind(), io::ErrorKind::PermissionDenied, "{se}");
        assert!(se.to_string().contains("connector does not hold the shard secret"), "{se}");
        assert!(ce.kind() != io::ErrorKind::PermissionDenied || ce.to_string().contains("listener"), "{ce}");
        // The listener has the wrong secret: it cannot read the hello and refuses; the
        // dialer's handshake fails too.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || InternalLink::accept(&l, &[8; 32], HB));
        assert!(InternalLink::connect(addr, &[9; 32], Role::Agent, Role::Lobby, HB).is_err());
        assert!(t.join().unwrap().is_err());
        // An impostor listener (no secret) that answers anyway is refused by the dialer.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut hello = [0u8; 55];
            s.read_exact(&mut hello).unwrap();
            s.write_all(&[[0, 48].as_slice(), &[0x42; 48]].concat()).unwrap();
            s
        });
        let ce = InternalLink::connect(addr, &[9; 32], Role::Agent, Role::Lobby, HB).unwrap_err();
        let _s = t.join().unwrap();
        assert_eq!(ce.kind(), io::ErrorKind::PermissionDenied, "{ce}");
        assert!(ce.to_string().contains("listener does not hold the shard secret"), "{ce}");
    }

    #[test]
    fn internal_link_carries_large_frames_both_ways_and_refuses_oversized_ones() {
        let (c, s) = pair([9; 32]);
        let (c, s) = (c.unwrap(), s.unwrap());
        let sizes = [0, 1, MAX_CHUNK - 1, MAX_CHUNK, MAX_CHUNK + 1, MAX_FRAME];
        let frames: Vec<Vec<u8>> =
            sizes.iter().map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect()).collect();
        for (a, b) in [(&c, &s), (&s, &c)] {
            for f in &frames {
                assert!(a.send_raw(f.clone()));
            }
            for f in &frames {
                let got = wait(|| b.try_recv_raw()).expect("frame arrives");
                assert_eq!(got.len(), f.len());
                assert!(got == *f);
            }
        }
        assert!(!c.send_raw(vec![0; MAX_FRAME + 1]), "a frame over MAX_FRAME is refused at send");
        assert!(!c.is_closed() && !s.is_closed());
    }

    #[test]
    fn internal_link_bytes_on_the_wire_do_not_contain_what_it_carries() {
        let (c, s, rec) = proxied(None);
        // A link key and a relay bind key, as an introduction carries them.
        let key: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
        let frame = [b"link key:".as_slice(), &key, b"bind key:", &key].concat();
        assert!(c.send_raw(frame.clone()) && s.send_raw(frame.clone()));
        assert_eq!(wait(|| s.try_recv_raw()), Some(frame.clone()));
        assert_eq!(wait(|| c.try_recv_raw()), Some(frame.clone()));
        let (up, down) = rec.lock().unwrap().clone();
        assert!(up.len() > frame.len() && down.len() > frame.len(), "the proxy saw the frames");
        for wire in [&up, &down] {
            assert!(!contains(wire, &key) && !contains(wire, b"link key:"), "plaintext on the wire");
        }
    }

    #[test]
    fn internal_link_closes_on_a_tampered_byte() {
        // The handshake is 55 + 19 bytes from the dialer; flip a byte in the message after it.
        let (c, s, _) = proxied(Some(55 + 19 + 5));
        assert!(c.send_raw(b"hello".to_vec()));
        assert!(wait(|| s.is_closed().then_some(())).is_some(), "the listener closes the link");
        assert_eq!(s.try_recv_raw(), None, "nothing altered is delivered");
    }

    fn listener_on_raw(
        limit: Duration,
    ) -> (TcpStream, std::thread::JoinHandle<(io::Result<InternalLink>, Duration)>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let start = Instant::now();
            (InternalLink::handshake_within(s, &[9; 32], HB, limit), start.elapsed())
        });
        (TcpStream::connect(addr).unwrap(), t)
    }

    #[test]
    fn internal_link_drops_a_stalling_or_garbage_handshake_in_bounded_time() {
        let limit = Duration::from_millis(300);
        // A length prefix, then silence.
        let (mut raw, t) = listener_on_raw(limit);
        raw.write_all(&[0xff, 0xff, 1, 2, 3]).unwrap();
        let (r, took) = t.join().unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(took < limit * 3, "{took:?}");
        // A trickle (one byte per 100 ms) cannot stretch the handshake past its limit.
        let (mut raw, t) = listener_on_raw(limit);
        let trickle = std::thread::spawn(move || {
            for _ in 0..20 {
                if raw.write_all(&[0]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let (r, took) = t.join().unwrap();
        assert!(r.is_err() && took < limit * 3, "{took:?}");
        trickle.join().unwrap();
        // The largest length prefix with garbage: refused, nothing beyond one 64 KiB buffer.
        let (mut raw, t) = listener_on_raw(limit);
        raw.write_all(&[[0xff, 0xff].as_slice(), &vec![0x5a; 65535]].concat()).unwrap();
        let e = t.join().unwrap().0.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    }

    #[test]
    fn internal_link_refuses_a_replayed_hello() {
        // Record a genuine dialer's hello …
        let (_c, _s, rec) = proxied(None);
        let hello = rec.lock().unwrap().0[..55].to_vec();
        // … and replay it: the listener answers, but without the dialer's ephemeral key the
        // replayer cannot confirm, so no link is made.
        let (mut raw, t) = listener_on_raw(Duration::from_millis(500));
        raw.write_all(&hello).unwrap();
        let mut ans = [0u8; 50];
        raw.read_exact(&mut ans).unwrap();
        raw.write_all(&[[0, 17].as_slice(), &[0x11; 17]].concat()).unwrap();
        let e = t.join().unwrap().0.unwrap_err();
        assert!(e.to_string().contains("key confirmation"), "{e}");
    }

    #[test]
    fn internal_link_closes_when_an_authenticated_peer_exceeds_the_frame_cap_or_breaks_framing() {
        for bad in ["oversized", "unknown kind", "heartbeat with data"] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let t = std::thread::spawn(move || InternalLink::accept(&l, &[9; 32], HB).unwrap());
            // A hand-made dialer with the secret: the handshake by the book, then bad frames.
            let mut raw = TcpStream::connect(addr).unwrap();
            let psk = link_psk(&[9; 32]);
            let mut hs = builder(&psk).unwrap().build_initiator().unwrap();
            let (mut buf, mut pl) = (vec![0u8; MAX_NOISE], vec![0u8; MAX_NOISE]);
            let n = hs.write_message(&role_bytes(Role::Agent), &mut buf).unwrap();
            write_noise(&mut raw, &buf[..n]).unwrap();
            let n = read_noise(&mut raw, &mut buf, Some(Instant::now() + Duration::from_secs(3))).unwrap();
            hs.read_message(&buf[..n], &mut pl).unwrap();
            let tr = hs.into_stateless_transport_mode().unwrap();
            let mut wire = Vec::new();
            seal(&tr, 0, KIND_HEARTBEAT, &[], &mut wire).unwrap();
            raw.write_all(&wire).unwrap();
            let s = t.join().unwrap();
            let mut nonce = 1;
            let mut send = |kind: u8, chunk: &[u8]| {
                seal(&tr, nonce, kind, chunk, &mut wire).unwrap();
                nonce += 1;
                let _ = raw.write_all(&wire);
            };
            match bad {
                "oversized" => {
                    for _ in 0..(MAX_FRAME / MAX_CHUNK + 2) {
                        send(KIND_MORE, &vec![7; MAX_CHUNK]);
                    }
                    send(KIND_LAST, b"x");
                }
                "unknown kind" => send(3, b"x"),
                _ => send(KIND_HEARTBEAT, b"x"),
            }
            assert!(wait(|| s.is_closed().then_some(())).is_some(), "{bad}: the link closes");
            assert_eq!(s.try_recv_raw(), None, "{bad}: nothing is delivered");
        }
    }
}
