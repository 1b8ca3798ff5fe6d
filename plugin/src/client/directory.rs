//! Asking a directory which shards exist: [`list_shards`] (blocking, one TCP round trip) and
//! the frame I/O the directory service and the shards' heartbeat share. The wire format and
//! the pick are [`p2pmodel_core::directory`]'s (re-exported here).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

pub use p2pmodel_core::directory::*;

/// Why a directory could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// Unreachable, too slow, or the connection broke.
    #[error("directory unreachable: {0}")]
    Io(#[from] io::Error),
    /// The directory refused (rate limit...).
    #[error("directory refused: {0:?}")]
    Refused(Refusal),
    /// The answer is not a directory answer.
    #[error("malformed directory answer: {0}")]
    Malformed(String),
}

/// Write one frame (length prefix + payload).
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&frame_header(payload));
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()
}

/// Read one frame's payload; a frame announcing more than `max` bytes is an error (nothing
/// more is read: close the connection).
pub fn read_frame(r: &mut impl Read, max: usize) -> io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header)?;
    let len = frame_len(header, max).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(payload)
}

/// Connect to `addr` (`HOST:PORT`, resolved now; every address is tried) within `timeout`,
/// with read and write timeouts of `timeout`.
pub fn connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to no address"));
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Send `request` on `stream` and read the answer.
pub fn exchange(stream: &mut TcpStream, request: &Request) -> Result<Response, DirectoryError> {
    let payload = encode_request(request).map_err(|e| DirectoryError::Malformed(e.to_string()))?;
    write_frame(stream, &payload)?;
    let answer = read_frame(stream, MAX_RESPONSE)?;
    decode_response(&answer).map_err(|e| DirectoryError::Malformed(e.to_string()))
}

/// The live shards of `region` (empty: all) from the directory at `addr` (`HOST:PORT`),
/// sorted by region then name; `timeout` bounds the connection and each read. Pick one with
/// [`pick_least_loaded`] or show them; log in with the entry's `login`
/// ([`super::login::resolve_shard_address`]).
pub fn list_shards(addr: &str, region: &str, timeout: Duration) -> Result<Vec<ShardEntry>, DirectoryError> {
    let mut s = connect(addr, timeout)?;
    match exchange(&mut s, &Request::List { region: region.to_string() })? {
        Response::Shards(list) => Ok(list),
        Response::Refused(why) => Err(DirectoryError::Refused(why)),
        other => Err(DirectoryError::Malformed(format!("unexpected answer {other:?}"))),
    }
}
