//! The login service: a client that knows only the shard's address and a name gets a
//! connect token for the Agent (the netcode.io model: a web/login backend mints tokens with
//! the shard's key).
//!
//! Wire format (one UDP datagram each way, on the Agent host's `login_port`):
//! ```text
//! request : "P2PM-LOGIN1" name-utf8
//! answer  : "OK" connect-token (renetcode ConnectToken::write, ~1 KB)
//!         | "NO" reason-utf8
//! ```
//! Tokens are encrypted to the Agent's key and useless elsewhere; they are bound to the name
//! (user data) and to a client id derived from it. A game with real accounts implements
//! [`AccountCheck`] (or mints tokens in its own backend with [`super::keys::TokenMinter`]).

use std::collections::HashSet;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::keys::{TokenMinter, client_id_for, valid_name};
use crate::config::SHARD_SECRET_LEN;

// The client side lives in the plugin (games link it without the servers).
pub use bevy_p2pmodel::client::login::{LOGIN_MAGIC, LoginError, request_token};

/// Decides who may log in. Returns the client id to mint for, or a reason for the user.
pub trait AccountCheck: Send + Sync + 'static {
    /// Check a login request for `name`.
    fn check(&self, name: &str) -> Result<u64, String>;
}

/// Names currently online, shared by the Agent (which fills it) and the default check.
#[derive(Debug, Clone, Default)]
pub struct OnlineNames(pub Arc<Mutex<HashSet<String>>>);

impl OnlineNames {
    /// Is `name` online?
    pub fn contains(&self, name: &str) -> bool {
        self.0.lock().map(|s| s.contains(name)).unwrap_or(false)
    }
    /// Mark online (`true`) or offline.
    pub fn set(&self, name: &str, online: bool) {
        if let Ok(mut s) = self.0.lock() {
            if online {
                s.insert(name.to_string());
            } else {
                s.remove(name);
            }
        }
    }
}

/// The default check: any valid name that is not online.
pub struct FreeNames {
    secret: [u8; SHARD_SECRET_LEN],
    online: OnlineNames,
}

impl FreeNames {
    /// A check against the Agent's set of online names.
    pub fn new(secret: [u8; SHARD_SECRET_LEN], online: OnlineNames) -> FreeNames {
        FreeNames { secret, online }
    }
}

impl AccountCheck for FreeNames {
    fn check(&self, name: &str) -> Result<u64, String> {
        if !valid_name(name) {
            return Err("names are 1-32 letters, digits, '-' or '_'".into());
        }
        if self.online.contains(name) {
            return Err(format!("{name} is already online"));
        }
        Ok(client_id_for(&self.secret, name))
    }
}

/// Counters of the login service.
#[derive(Debug, Default)]
pub struct LoginStats {
    /// Tokens minted.
    pub minted: AtomicU64,
    /// Requests refused by the account check.
    pub refused: AtomicU64,
    /// Datagrams that were not login requests.
    pub malformed: AtomicU64,
}

/// The running login service (one thread).
pub struct LoginServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Counters.
    pub stats: Arc<LoginStats>,
}

impl LoginServer {
    /// Bind `addr` and serve until dropped.
    pub fn start(
        addr: SocketAddr,
        minter: TokenMinter,
        check: Box<dyn AccountCheck>,
    ) -> io::Result<LoginServer> {
        let socket = UdpSocket::bind(addr)?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(LoginStats::default());
        let (s2, st2) = (stop.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("p2pm-login".into())
            .spawn(move || serve(socket, minter, check, s2, st2))?;
        Ok(LoginServer { addr, stop, thread: Some(thread), stats })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for LoginServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    socket: UdpSocket,
    minter: TokenMinter,
    check: Box<dyn AccountCheck>,
    stop: Arc<AtomicBool>,
    stats: Arc<LoginStats>,
) {
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
        let Some(name) = buf[..n].strip_prefix(LOGIN_MAGIC).and_then(|b| std::str::from_utf8(b).ok()) else {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let answer = match check.check(name) {
            Ok(id) => match minter.mint(id, name) {
                Ok(token) => {
                    let mut out = b"OK".to_vec();
                    let _ = token.write(&mut out);
                    stats.minted.fetch_add(1, Ordering::Relaxed);
                    out
                }
                Err(e) => [b"NO".as_slice(), format!("cannot mint a token: {e}").as_bytes()].concat(),
            },
            Err(reason) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                [b"NO".as_slice(), reason.as_bytes()].concat()
            }
        };
        let _ = socket.send_to(&answer, from);
    }
}
