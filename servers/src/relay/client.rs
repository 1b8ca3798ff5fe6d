//! A blocking relay client for one (link, side) on a std `UdpSocket`: binds and validates
//! the address. Used by the benchmark and the tests; games use the link code in
//! `bevy_p2pmodel` instead.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use p2pmodel_core::proto::peer::{LinkId, Side};
use p2pmodel_core::proto::relay::{BindAck, BindCookie, BindKey, BindRequest, RelayToken};

/// One side of one link, as a client of the relay.
#[derive(Debug, Clone)]
pub struct BindClient {
    /// The link.
    pub link: LinkId,
    /// This client's side.
    pub side: Side,
    /// Its token.
    pub token: RelayToken,
    /// Its bind key.
    pub key: BindKey,
    /// The next Bind counter.
    pub counter: u64,
    /// The latest cookie received.
    pub cookie: BindCookie,
}

impl BindClient {
    /// A client with a counter starting at 1.
    pub fn new(link: LinkId, side: Side, token: RelayToken, key: BindKey) -> BindClient {
        BindClient { link, side, token, key, counter: 1, cookie: BindCookie::NONE }
    }

    /// The next Bind's bytes (advances the counter).
    pub fn next_bind(&mut self) -> [u8; p2pmodel_core::proto::relay::BIND_LEN] {
        let b = BindRequest::encode(self.link, self.side, &self.token, &self.key, self.counter, self.cookie);
        self.counter += 1;
        b
    }

    /// Send a Bind and wait (≤ `timeout`, retrying every 200 ms) for its verified ack;
    /// stores the new cookie. Other datagrams arriving meanwhile are ignored.
    pub fn bind(&mut self, sock: &UdpSocket, relay: SocketAddr, timeout: Duration) -> io::Result<BindAck> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let sent = self.counter;
            sock.send_to(&self.next_bind(), relay)?;
            let retry = (Instant::now() + Duration::from_millis(200)).min(deadline);
            while Instant::now() < retry {
                sock.set_read_timeout(Some(
                    retry.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
                ))?;
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) if from == relay => {
                        if let Ok(ack) = BindAck::decode_verified(&buf[..n], &self.key)
                            && ack.counter == sent
                        {
                            self.cookie = ack.cookie;
                            return Ok(ack);
                        }
                    }
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Err(io::Error::new(io::ErrorKind::TimedOut, "no BindAck from the relay"))
    }

    /// Bind, then Bind again echoing the cookie so the address is validated.
    pub fn bind_validated(
        &mut self,
        sock: &UdpSocket,
        relay: SocketAddr,
        timeout: Duration,
    ) -> io::Result<BindAck> {
        let first = self.bind(sock, relay, timeout)?;
        if first.validated {
            return Ok(first);
        }
        let ack = self.bind(sock, relay, timeout)?;
        if ack.validated { Ok(ack) } else { Err(io::Error::other("the relay did not validate the address")) }
    }
}

/// A fake relayed peer datagram of exactly `len` bytes (≥ 30): a data header for
/// (`link`, `side`), packet number `pn`, zero payload and tag. The relay only reads the
/// route, so this is what a real peer datagram looks like to it.
pub fn peer_datagram(link: LinkId, side: Side, pn: u64, len: usize, out: &mut [u8]) -> usize {
    let len = len.max(30).min(out.len());
    out[..len].fill(0);
    out[0] = 0x22;
    out[1..5].copy_from_slice(&link.0.to_be_bytes());
    out[5] = side.to_byte();
    out[6..14].copy_from_slice(&pn.to_be_bytes());
    len
}
