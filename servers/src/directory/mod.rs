//! `p2pmodel directory`: the world list service, and the shard's heartbeat to it.
//!
//! The logic is the core's ([`p2pmodel_core::directory`], sans-IO); [`DirectoryServer`] serves
//! it over TCP (length-prefixed frames, one thread per connection, bounded connections, read
//! and write timeouts); [`heartbeat`] is the shard side. docs/OPERATIONS.md "Directory" says
//! how to run it, docs/PROTOCOL.md "Directory" gives the bytes.

pub mod heartbeat;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bevy_p2pmodel::client::directory::{read_frame, write_frame};
use p2pmodel_core::directory::{
    Directory, DirectoryKey, DirectorySettings, MAX_REQUEST, MAX_SHARDS, valid_label,
};

/// `p2pmodel directory` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DirectoryArgs {
    /// Listen here (TCP).
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:7200")]
    pub bind: SocketAddr,
    /// The shards' directory keys: a TOML file of `name = "<64 hex digits>"` lines (print a
    /// shard's line with `p2pmodel directory-key --config shard.toml`).
    #[arg(long, value_name = "FILE")]
    pub keys: PathBuf,
    /// A shard without a heartbeat for this long drops out of the list (shards heartbeat
    /// every `directory.heartbeat_ms`; keep this at least 3 heartbeats).
    #[arg(long, value_name = "MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(300..=600_000))]
    pub expire_ms: u64,
    /// Most concurrent TCP connections (one per shard, plus clients asking).
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_connections: u64,
}

/// The wall clock in ms since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Parse a keys file: a TOML table of `shard-name = "<64 hex digits>"`.
pub fn parse_keys(text: &str) -> Result<HashMap<String, DirectoryKey>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut keys = HashMap::new();
    for (name, v) in table {
        if !valid_label(&name) {
            return Err(format!("`{name}`: not a shard name (1-32 letters, digits, '-', '_', '.')"));
        }
        let key = v
            .as_str()
            .and_then(DirectoryKey::from_hex)
            .ok_or_else(|| format!("`{name}`: the key must be a string of 64 hex digits"))?;
        if key.0 == [0; 32] {
            return Err(format!("`{name}`: the key is all zeros"));
        }
        keys.insert(name, key);
    }
    if keys.len() > MAX_SHARDS {
        return Err(format!("{} keys; a directory holds at most {MAX_SHARDS}", keys.len()));
    }
    Ok(keys)
}

/// Read a keys file ([`parse_keys`]).
pub fn load_keys(path: &Path) -> Result<HashMap<String, DirectoryKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_keys(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Limits of the TCP service (the directory's own are in [`DirectorySettings`]).
#[derive(Debug, Clone, Copy)]
pub struct ServiceLimits {
    /// Concurrent connections at most; more are closed at once.
    pub max_connections: usize,
    /// A connection silent this long is closed (shards send a heartbeat every second or so).
    pub idle_timeout: Duration,
    /// Writing an answer may take this long.
    pub write_timeout: Duration,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        ServiceLimits {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// The directory serving on a TCP socket (threads); stops when dropped.
pub struct DirectoryServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    directory: Arc<Mutex<Directory>>,
}

impl DirectoryServer {
    /// Bind `bind` and serve `directory` on it.
    pub fn start(
        bind: SocketAddr,
        directory: Directory,
        limits: ServiceLimits,
    ) -> io::Result<DirectoryServer> {
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let directory = Arc::new(Mutex::new(directory));
        let (s, d) = (stop.clone(), directory.clone());
        std::thread::Builder::new()
            .name("directory-accept".into())
            .spawn(move || accept_loop(listener, d, s, limits))?;
        Ok(DirectoryServer { addr, stop, directory })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shards listed now.
    pub fn live(&self) -> usize {
        self.directory.lock().map_or(0, |mut d| d.live(Instant::now()))
    }

    /// What it did so far.
    pub fn stats(&self) -> p2pmodel_core::directory::DirectoryStats {
        self.directory.lock().map(|d| d.stats()).unwrap_or_default()
    }
}

impl Drop for DirectoryServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn accept_loop(
    listener: TcpListener,
    directory: Arc<Mutex<Directory>>,
    stop: Arc<AtomicBool>,
    limits: ServiceLimits,
) {
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(stream) = conn else {
            // EMFILE and the like: do not spin.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            open.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!("directory: connection limit reached; closing a new connection");
            continue;
        }
        let (d, o) = (directory.clone(), open.clone());
        let spawned = std::thread::Builder::new().name("directory-conn".into()).spawn(move || {
            serve(stream, &d, limits);
            o.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Answer frames on one connection until it closes, idles, or sends something that is not a
/// frame within the limits.
fn serve(mut stream: TcpStream, directory: &Mutex<Directory>, limits: ServiceLimits) {
    let Ok(peer) = stream.peer_addr() else { return };
    if stream.set_read_timeout(Some(limits.idle_timeout)).is_err()
        || stream.set_write_timeout(Some(limits.write_timeout)).is_err()
    {
        return;
    }
    let _ = stream.set_nodelay(true);
    while let Ok(payload) = read_frame(&mut stream, MAX_REQUEST) {
        let answer = match directory.lock() {
            Ok(mut d) => d.handle(Instant::now(), unix_ms(), peer.ip(), &payload),
            Err(_) => return,
        };
        if write_frame(&mut stream, &answer).is_err() {
            return;
        }
    }
}

/// `p2pmodel directory`: load the keys, serve until killed; prints where it listens.
pub fn run(args: &DirectoryArgs) -> Result<(), String> {
    let keys = load_keys(&args.keys)?;
    let n = keys.len();
    let settings = DirectorySettings {
        expire_after: Duration::from_millis(args.expire_ms),
        ..DirectorySettings::default()
    };
    let directory = Directory::new(keys, settings)?;
    let limits = ServiceLimits { max_connections: args.max_connections as usize, ..ServiceLimits::default() };
    let server = DirectoryServer::start(args.bind, directory, limits)
        .map_err(|e| format!("cannot listen on {}: {e}", args.bind))?;
    println!(
        "directory listening on tcp {} ({n} shard keys, expiry {} ms)",
        server.local_addr(),
        args.expire_ms
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let mut last = server.stats();
    loop {
        std::thread::sleep(Duration::from_secs(60));
        let s = server.stats();
        if s != last {
            println!(
                "directory: {} live; since start {} registrations, {} lists, {} refused, {} expired",
                server.live(),
                s.registered,
                s.listed,
                s.refused,
                s.expired
            );
            last = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bevy_p2pmodel::client::directory::{
        Health, Registration, Request, Response, connect, exchange, list_shards,
    };
    use std::io::Write;

    const KEY: DirectoryKey = DirectoryKey([5; 32]);
    const LOGIN: &str = "0505050505050505050505050505050505050505050505050505050505050505@127.0.0.1:7001";

    fn server(limits: ServiceLimits) -> DirectoryServer {
        let d = Directory::new(HashMap::from([("eu-1".into(), KEY)]), DirectorySettings::default()).unwrap();
        DirectoryServer::start("127.0.0.1:0".parse().unwrap(), d, limits).unwrap()
    }

    #[test]
    fn keys_files_name_their_problem() {
        let k = parse_keys(&format!("eu-1 = \"{}\"\n\"us.2\" = \"{}\"\n", "ab".repeat(32), "cd".repeat(32)))
            .unwrap();
        assert_eq!(k.len(), 2);
        assert_eq!(k["us.2"], DirectoryKey([0xcd; 32]));
        assert!(parse_keys("eu-1 = \"abc\"").unwrap_err().contains("eu-1"));
        assert!(parse_keys("eu-1 = 3").unwrap_err().contains("64 hex"));
        assert!(parse_keys(&format!("\"a b\" = \"{}\"", "ab".repeat(32))).unwrap_err().contains("a b"));
        assert!(parse_keys(&format!("z = \"{}\"", "00".repeat(32))).unwrap_err().contains("zeros"));
    }

    #[test]
    fn a_shard_registers_over_tcp_and_a_client_lists_it() {
        let s = server(ServiceLimits::default());
        let addr = s.local_addr().to_string();
        let mut c = connect(&addr, Duration::from_secs(2)).unwrap();
        let reg = Registration {
            name: "eu-1".into(),
            region: "eu".into(),
            login: LOGIN.into(),
            population: 3,
            capacity: 10,
            health: Health::Ok,
            unix_ms: unix_ms(),
        };
        // Two heartbeats on one connection.
        assert_eq!(
            exchange(&mut c, &reg.sign(&KEY).unwrap()).unwrap(),
            Response::Registered { expire_ms: 5000 }
        );
        let next = Registration { unix_ms: reg.unix_ms + 1, population: 4, ..reg.clone() };
        assert!(matches!(exchange(&mut c, &next.sign(&KEY).unwrap()).unwrap(), Response::Registered { .. }));
        let list = list_shards(&addr, "", Duration::from_secs(2)).unwrap();
        assert_eq!((list.len(), list[0].login.as_str(), list[0].population), (1, LOGIN, 4));
        assert!(list_shards(&addr, "us", Duration::from_secs(2)).unwrap().is_empty());
        assert_eq!(s.live(), 1);
    }

    #[test]
    fn oversized_frames_garbage_and_excess_connections_are_closed_without_harm() {
        let s = server(ServiceLimits { max_connections: 2, ..ServiceLimits::default() });
        let addr = s.local_addr().to_string();
        // A frame claiming 4 GiB: the connection is closed, nothing is allocated.
        let mut c = connect(&addr, Duration::from_secs(2)).unwrap();
        c.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!(std::io::Read::read(&mut c, &mut buf), Ok(0) | Err(_)));
        // Garbage in a valid frame gets a refusal, and the connection stays usable.
        let mut g = connect(&addr, Duration::from_secs(2)).unwrap();
        write_frame(&mut g, b"hello").unwrap();
        let answer = read_frame(&mut g, 1024).unwrap();
        assert_eq!(
            p2pmodel_core::directory::decode_response(&answer).unwrap(),
            Response::Refused(p2pmodel_core::directory::Refusal::Malformed)
        );
        assert!(matches!(
            exchange(&mut g, &Request::List { region: String::new() }).unwrap(),
            Response::Shards(_)
        ));
        // Two connections held open (g and h): a third is closed at once.
        let _h = connect(&addr, Duration::from_secs(2)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let mut third = connect(&addr, Duration::from_secs(2)).unwrap();
        assert!(matches!(std::io::Read::read(&mut third, &mut buf), Ok(0) | Err(_)));
        drop((g, _h));
        std::thread::sleep(Duration::from_millis(100));
        assert!(list_shards(&addr, "", Duration::from_secs(2)).is_ok(), "capacity is back once they close");
    }
}
