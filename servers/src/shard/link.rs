//! The cross-process internal link between roles (Agent ↔ Lobby ↔ Game): one TCP
//! connection, authenticated with the shard secret, carrying encoded [`InternalMessage`]s,
//! with link-level heartbeats so a dead peer is noticed within the heartbeat timeout.
//!
//! ```text
//! handshake  C→S  "P2PI" role(1+4 bytes) nonce_c[16]
//!            S→C  nonce_s[16] HMAC(secret, "p2pm-int-s" ‖ nonce_c ‖ nonce_s)
//!            C→S  HMAC(secret, "p2pm-int-c" ‖ nonce_c ‖ nonce_s ‖ role)
//! key        HMAC(secret, "p2pm-int-k" ‖ nonce_c ‖ nonce_s)
//! frame      kind u8 (0 heartbeat, 1 message) ‖ seq u64 ‖ len u32 ‖ payload ‖ tag[16]
//!            tag = HMAC(key, direction u8 ‖ kind ‖ seq ‖ len ‖ payload)[..16]
//! ```
//! Both sides prove they hold the secret; the connector's role is bound into its proof;
//! every frame is authenticated and must carry the next sequence number (no replay, no
//! reordering). A bad frame closes the link. [`super::remote`] routes the bus over it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bevy_p2pmodel::proto::shard::{InternalMessage, MAX_MESSAGE, Role, decode, encode};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::config::SHARD_SECRET_LEN;

const MAGIC: &[u8; 4] = b"P2PI";
const TAG: usize = 16;

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
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

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, what.to_string())
}

/// One authenticated internal link. Dropping it closes the connection.
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
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.set_nodelay(true)?;
        let mut nc = [0u8; 16];
        rand::rng().fill_bytes(&mut nc);
        let rb = role_bytes(me);
        s.write_all(&[MAGIC.as_slice(), &rb, &nc].concat())?;
        let mut ans = [0u8; 48];
        s.read_exact(&mut ans)?;
        let ns: [u8; 16] = ans[..16].try_into().expect("16");
        if !ct_eq(&ans[16..], &mac(secret, &[b"p2pm-int-s", &nc, &ns])) {
            return Err(bad("internal link: the peer does not hold the shard secret"));
        }
        s.write_all(&mac(secret, &[b"p2pm-int-c", &nc, &ns, &rb]))?;
        let key = mac(secret, &[b"p2pm-int-k", &nc, &ns]);
        Self::run(s, key, 0, peer, heartbeat)
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

    /// Run the listener's side of the handshake on an accepted connection.
    pub fn handshake(
        mut s: TcpStream,
        secret: &[u8; SHARD_SECRET_LEN],
        heartbeat: Duration,
    ) -> io::Result<InternalLink> {
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.set_nodelay(true)?;
        let mut hello = [0u8; 25];
        s.read_exact(&mut hello)?;
        if &hello[..4] != MAGIC {
            return Err(bad("internal link: not a P2PI hello"));
        }
        let rb: [u8; 5] = hello[4..9].try_into().expect("5");
        let nc: [u8; 16] = hello[9..].try_into().expect("16");
        let peer = role_from(rb).ok_or_else(|| bad("internal link: unknown role"))?;
        let mut ns = [0u8; 16];
        rand::rng().fill_bytes(&mut ns);
        s.write_all(&[ns.as_slice(), &mac(secret, &[b"p2pm-int-s", &nc, &ns])].concat())?;
        let mut proof = [0u8; 32];
        s.read_exact(&mut proof)?;
        if !ct_eq(&proof, &mac(secret, &[b"p2pm-int-c", &nc, &ns, &rb])) {
            return Err(bad("internal link: the connector does not hold the shard secret"));
        }
        let key = mac(secret, &[b"p2pm-int-k", &nc, &ns]);
        Self::run(s, key, 1, peer, heartbeat)
    }

    fn run(
        s: TcpStream,
        key: [u8; 32],
        dir: u8,
        peer: Role,
        heartbeat: Duration,
    ) -> io::Result<InternalLink> {
        s.set_read_timeout(None)?;
        s.set_write_timeout(Some(Duration::from_secs(3)))?;
        let (out, out_rx) = mpsc::channel::<Vec<u8>>();
        let (in_tx, inbox) = mpsc::channel::<Vec<u8>>();
        let last_heard = Arc::new(Mutex::new(Instant::now()));
        let closed = Arc::new(AtomicBool::new(false));
        let (mut w, mut r) = (s.try_clone()?, s.try_clone()?);
        let c1 = closed.clone();
        std::thread::Builder::new().name("p2pm-int-tx".into()).spawn(move || {
            let mut seq = 0u64;
            loop {
                let (kind, payload) = match out_rx.recv_timeout(heartbeat) {
                    Ok(p) => (1u8, p),
                    Err(RecvTimeoutError::Timeout) => (0u8, Vec::new()),
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                let head =
                    [[kind].as_slice(), &seq.to_le_bytes(), &(payload.len() as u32).to_le_bytes()].concat();
                let tag = mac(&key, &[&[dir], &head, &payload]);
                if w.write_all(&[head.as_slice(), &payload, &tag[..TAG]].concat()).is_err() {
                    break;
                }
                seq += 1;
            }
            c1.store(true, Ordering::Relaxed);
        })?;
        let (c2, lh) = (closed.clone(), last_heard.clone());
        std::thread::Builder::new().name("p2pm-int-rx".into()).spawn(move || {
            let mut expect = 0u64;
            loop {
                let mut head = [0u8; 13];
                if r.read_exact(&mut head).is_err() {
                    break;
                }
                let seq = u64::from_le_bytes(head[1..9].try_into().expect("8"));
                let len = u32::from_le_bytes(head[9..].try_into().expect("4")) as usize;
                if len > MAX_MESSAGE || head[0] > 1 || seq != expect {
                    break;
                }
                let mut body = vec![0u8; len + TAG];
                if r.read_exact(&mut body).is_err() {
                    break;
                }
                let tag = mac(&key, &[&[1 - dir], &head, &body[..len]]);
                if !ct_eq(&tag[..TAG], &body[len..]) {
                    break;
                }
                expect += 1;
                if let Ok(mut t) = lh.lock() {
                    *t = Instant::now();
                }
                body.truncate(len);
                if head[0] == 1 && in_tx.send(body).is_err() {
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
            Ok(b) => !self.is_closed() && self.out.send(b).is_ok(),
            Err(_) => false,
        }
    }

    /// Queue raw bytes (the remote bus's routed frames).
    pub fn send_raw(&self, bytes: Vec<u8>) -> bool {
        !self.is_closed() && self.out.send(bytes).is_ok()
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

    #[test]
    fn internal_link_authenticates_carries_messages_and_detects_a_dead_peer() {
        let (c, s) = pair([9; 32]);
        let (c, s) = (c.unwrap(), s.unwrap());
        assert_eq!(s.peer(), Role::Game(4));
        let m = InternalMessage::ClientLeft { client: 7 };
        assert!(c.send(&m));
        assert_eq!(wait(|| s.try_recv()), Some(m));
        // Heartbeats keep an idle link alive …
        std::thread::sleep(Duration::from_millis(300));
        assert!(!s.is_dead(Duration::from_millis(200)) && !c.is_dead(Duration::from_millis(200)));
        // … and a dropped peer is noticed.
        drop(c);
        assert!(wait(|| s.is_dead(Duration::from_millis(200)).then_some(())).is_some());
        // The wrong secret is refused on both sides.
        let (c, s) = pair([8; 32]);
        assert!(c.is_err() && s.is_err());
    }
}
