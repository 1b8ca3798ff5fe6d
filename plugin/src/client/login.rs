//! Logging in to a shard: the wire format and the sans-IO handshake of
//! [`p2pmodel_core::login`] (re-exported here at their old path), and [`request_token`], the
//! blocking client that runs it over a UDP socket.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bevy_renet::netcode::ConnectToken;
pub use p2pmodel_core::login::*;

/// Client side: log in to `shard` as `name` with `credential` (empty for an open shard) and
/// get a connect token. 3 tries, 1 s each, each with a fresh request; a wrong pinned key is
/// [`LoginError::KeyMismatch`] as soon as the shard says so.
pub fn request_token(
    shard: &ShardAddress,
    name: &str,
    credential: &[u8],
) -> Result<ConnectToken, LoginError> {
    let server = shard.login;
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let socket = UdpSocket::bind(bind)?;
    let req = LoginRequest { name: name.to_string(), credential: credential.to_vec() };
    let mut attempts: Vec<ClientLogin> = Vec::new();
    let mut buf = [0u8; 2048];
    let mut last = io::Error::new(io::ErrorKind::TimedOut, "no answer");
    for _ in 0..3 {
        let (attempt, bytes) = ClientLogin::start(&shard.key, &req)?;
        attempts.push(attempt);
        socket.send_to(&bytes, server)?;
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            match socket.recv_from(&mut buf) {
                Ok((n, from)) if from == server => {
                    for a in attempts.iter_mut() {
                        match a.read(&buf[..n]) {
                            ClientEvent::Ignored => continue,
                            ClientEvent::KeyMismatch => return Err(LoginError::KeyMismatch(server)),
                            ClientEvent::Answer(LoginAnswer::Token(t)) => return Ok(*t),
                            ClientEvent::Answer(LoginAnswer::Refused(r)) => {
                                return Err(LoginError::Refused(r));
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    last = io::Error::new(io::ErrorKind::TimedOut, "no answer");
                    break;
                }
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
    }
    Err(LoginError::Io(last))
}
