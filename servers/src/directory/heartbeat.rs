//! The shard side of the directory: a thread that reports the shard (name, region, login
//! address, population, capacity, health) every `directory.heartbeat_ms` over one kept-open TCP
//! connection, reconnecting when it breaks. [`attach`] hooks it to a shard App that has the
//! Agent; dropping the App (a clean shutdown) sends a last `Leaving` report.
//!
//! Health: `Ok` while the App's loop runs; `Degraded` when it made no frame since the last
//! report (a stalled loop).

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bevy::prelude::*;
use bevy_p2pmodel::client::directory::{DirectoryError, Health, Registration, Response, connect, exchange};
use p2pmodel_core::directory::DirectoryKey;

use crate::config::{DirectorySection, ShardConfig};
use crate::shard::ShardInfo;
use crate::shard::agent::AgentTransport;
use crate::shard::load::AgentLoad;

/// Connection and I/O timeout toward the directory.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The shard's directory key: `directory.key`, else derived from the shard secret.
pub fn directory_key(config: &ShardConfig) -> DirectoryKey {
    config
        .directory
        .as_ref()
        .and_then(|d| d.key)
        .unwrap_or_else(|| DirectoryKey::derive(&config.shard.secret))
}

/// The running heartbeat (a resource of the shard App); stopping it sends `Leaving`.
#[derive(Resource)]
pub struct DirectoryHeartbeat {
    stop: Arc<AtomicBool>,
    frames: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for DirectoryHeartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the thread reports, fixed at start.
struct Static {
    name: String,
    region: String,
    login: String,
    capacity: u32,
    address: String,
    interval: Duration,
    key: DirectoryKey,
}

/// If `config` has a `[directory]` section, start the heartbeat of the shard in `app` (which
/// must have the Agent: [`ShardInfo`] with a login service, [`AgentTransport`]). Returns
/// whether it started.
pub fn attach(app: &mut App, config: &ShardConfig) -> Result<bool, String> {
    let Some(d) = &config.directory else { return Ok(false) };
    let world = app.world();
    let info = world.get_resource::<ShardInfo>().ok_or("the directory heartbeat needs the Agent")?;
    let login = info.shard_address().ok_or("the directory heartbeat needs the login service")?;
    let load =
        world.get_resource::<AgentTransport>().ok_or("the directory heartbeat needs the Agent")?.load();
    let login = match &d.advertise {
        Some(hp) => format!("{}@{hp}", login.key),
        None => login.to_string(),
    };
    let hb =
        start(config, d, login, load).map_err(|e| format!("cannot start the directory heartbeat: {e}"))?;
    app.insert_resource(hb).add_systems(Last, count_frame);
    Ok(true)
}

fn count_frame(hb: Res<DirectoryHeartbeat>) {
    hb.frames.fetch_add(1, Ordering::Relaxed);
}

fn start(
    config: &ShardConfig,
    d: &DirectorySection,
    login: String,
    load: AgentLoad,
) -> std::io::Result<DirectoryHeartbeat> {
    let s = Static {
        name: config.shard.name.clone(),
        region: d.region.clone(),
        login,
        capacity: d.capacity,
        address: d.address.clone(),
        interval: d.heartbeat,
        key: directory_key(config),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let frames = Arc::new(AtomicU64::new(0));
    let (st, fr) = (stop.clone(), frames.clone());
    let thread = std::thread::Builder::new()
        .name("directory-heartbeat".into())
        .spawn(move || run(&s, &load, &st, &fr))?;
    Ok(DirectoryHeartbeat { stop, frames, thread: Some(thread) })
}

/// The heartbeat loop, until `stop`; then one `Leaving` report.
fn run(s: &Static, load: &AgentLoad, stop: &AtomicBool, frames: &AtomicU64) {
    let mut conn: Option<TcpStream> = None;
    let mut last_unix = 0u64;
    let mut last_frames = u64::MAX;
    let mut last_outcome = String::new();
    info!(directory = %s.address, region = %s.region, login = %s.login, "reporting to the directory");
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let f = frames.load(Ordering::Relaxed);
        let health = match (stopping, f != last_frames) {
            (true, _) => Health::Leaving,
            (false, true) => Health::Ok,
            (false, false) => Health::Degraded,
        };
        last_frames = f;
        last_unix = crate::directory::unix_ms().max(last_unix + 1);
        let reg = Registration {
            name: s.name.clone(),
            region: s.region.clone(),
            login: s.login.clone(),
            population: load.connected().iter().sum::<usize>().min(u32::MAX as usize) as u32,
            capacity: s.capacity,
            health,
            unix_ms: last_unix,
        };
        let outcome = match report(&mut conn, s, &reg) {
            Ok(Response::Registered { expire_ms }) if u128::from(expire_ms) < 2 * s.interval.as_millis() => {
                format!(
                    "registered, but the directory drops shards after {expire_ms} ms: lower directory.heartbeat_ms"
                )
            }
            Ok(Response::Registered { .. }) => "registered".to_string(),
            Ok(Response::Refused(why)) => format!("refused: {why:?} (check the key and the clock)"),
            Ok(other) => format!("unexpected answer {other:?}"),
            Err(e) => {
                conn = None;
                e.to_string()
            }
        };
        if outcome != last_outcome {
            if outcome == "registered" {
                info!(directory = %s.address, "registered with the directory");
            } else {
                warn!(directory = %s.address, "directory heartbeat: {outcome}");
            }
            last_outcome = outcome;
        }
        if stopping {
            return;
        }
        let until = std::time::Instant::now() + s.interval;
        while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20).min(s.interval));
        }
    }
}

fn report(conn: &mut Option<TcpStream>, s: &Static, reg: &Registration) -> Result<Response, DirectoryError> {
    if conn.is_none() {
        *conn = Some(connect(&s.address, IO_TIMEOUT)?);
    }
    let request = reg.sign(&s.key).map_err(|e| DirectoryError::Malformed(e.to_string()))?;
    let c = conn.as_mut().expect("connected above");
    exchange(c, &request)
}
