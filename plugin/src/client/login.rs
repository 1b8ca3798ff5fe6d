//! The client side of the shard's login service: one UDP request, one answer carrying a
//! netcode connect token for the Agent (the servers' `shard::login` module serves it).
//!
//! ```text
//! request : "P2PM-LOGIN1" name-utf8
//! answer  : "OK" connect-token (renetcode ConnectToken::write, ~1 KB)
//!         | "NO" reason-utf8
//! ```

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use renet_netcode::ConnectToken;

/// Request prefix.
pub const LOGIN_MAGIC: &[u8] = b"P2PM-LOGIN1";

/// Why a login failed (client side).
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Socket trouble, or no answer in time.
    #[error("login service unreachable: {0}")]
    Io(#[from] io::Error),
    /// The shard refused.
    #[error("login refused: {0}")]
    Refused(String),
    /// The answer was not a token.
    #[error("malformed login answer")]
    Malformed,
}

/// Client side: ask the login service at `server` for a token for `name` (3 tries, 1 s each).
pub fn request_token(server: SocketAddr, name: &str) -> Result<ConnectToken, LoginError> {
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let socket = UdpSocket::bind(bind)?;
    socket.set_read_timeout(Some(Duration::from_millis(1000)))?;
    let req = [LOGIN_MAGIC, name.as_bytes()].concat();
    let mut buf = [0u8; 4096];
    let mut last = io::Error::new(io::ErrorKind::TimedOut, "no answer");
    for _ in 0..3 {
        socket.send_to(&req, server)?;
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) if from == server => {
                    let ans = &buf[..n];
                    if let Some(tok) = ans.strip_prefix(b"OK") {
                        return ConnectToken::read(&mut &tok[..]).map_err(|_| LoginError::Malformed);
                    }
                    if let Some(r) = ans.strip_prefix(b"NO") {
                        return Err(LoginError::Refused(String::from_utf8_lossy(r).into_owned()));
                    }
                    return Err(LoginError::Malformed);
                }
                Ok(_) => {}
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
    }
    Err(LoginError::Io(last))
}
