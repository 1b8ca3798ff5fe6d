//! Logging in to a shard: the wire format and the sans-IO handshake of
//! [`p2pmodel_core::login`] (re-exported here at their old path), and [`request_token`], the
//! blocking client that runs it over a UDP socket.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use bevy_renet::netcode::ConnectToken;
pub use p2pmodel_core::login::*;

/// Parse `<key-hex>@HOST:PORT` where HOST may be a DNS name (resolved now, blocking; the
/// first address is used): what a game's `--server` option takes.
pub fn resolve_shard_address(s: &str) -> Result<ShardAddress, String> {
    ShardAddress::parse_with(s, |addr| {
        addr.to_socket_addrs()
            .map_err(|e| format!("{addr:?} is not HOST:PORT: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr:?} resolves to no address"))
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_address_may_name_its_host() {
        let key = "ab".repeat(32);
        let a = resolve_shard_address(&format!("{key}@localhost:7001")).unwrap();
        assert!(a.login.ip().is_loopback() && a.login.port() == 7001, "{a}");
        assert!(resolve_shard_address("localhost:7001").unwrap_err().contains("KEY@HOST:PORT"));
    }
}
