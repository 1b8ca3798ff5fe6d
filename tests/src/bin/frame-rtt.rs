//! Frame-rate independent networking (issue #14): two plugin apps over loopback through a real
//! embedded shard, each on its own thread updating at a fixed frame rate, with the mesh
//! socket on its I/O thread (`io_thread: true`, the default) or read in the frames
//! (`io_thread: false`, the old way). Prints the RTT the plugin reports (`PeerStats::rtt`)
//! at 60 FPS and at 5 FPS next to the socket RTT (a plain UDP echo on loopback), and the path
//! changes (failovers) a 3 s frame stall of one app causes while the other streams at 20 Hz.
//!
//! `cargo run -p p2pmodel-tests --release --bin frame-rtt -- [--seconds 6] [--stall 3]
//! [--mode both|thread|frame] [--conditioner-ms 25]`

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_p2pmodel::plugins::MeshIoStats;
use bevy_p2pmodel::prelude::*;
use clap::Parser;
use p2pmodel_core::client::PeerPath as Kind;
use p2pmodel_servers::embedded;

/// Print plugin RTT vs socket RTT at two frame rates, and failovers during a frame stall.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Seconds of measurement per frame rate (after both sides are direct).
    #[arg(long, default_value_t = 6)]
    seconds: u64,
    /// Length of the frame stall, in seconds.
    #[arg(long, default_value_t = 3.0)]
    stall: f64,
    /// Which drivers to measure: `thread` (I/O thread), `frame` (in the frames) or `both`.
    #[arg(long, default_value = "both")]
    mode: String,
    /// Also measure the I/O thread with a conditioner of this one-way delay on one app (0:
    /// skip).
    #[arg(long, default_value_t = 25)]
    conditioner_ms: u64,
}

/// What one app saw, shared with the main thread.
#[derive(Default, Debug, Clone)]
struct Obs {
    /// `PeerStats::rtt` of the (only) peer, sampled each frame in the measurement window.
    rtt: Vec<Duration>,
    /// Path changes with the time they were published.
    paths: Vec<(Instant, Kind)>,
    /// The peer's path now.
    path: Option<Kind>,
    /// Sequence numbers received from the peer.
    got: Vec<u32>,
    /// Frames run.
    frames: u64,
    /// RTT figures of the link (smoothed, min, p99, samples) at the last frame.
    rtt_stats: Option<(Duration, Option<Duration>, Duration, usize)>,
    /// The mesh socket driver's counters at the last frame.
    io: MeshIoStats,
}

/// Orders from the main thread to one app.
#[derive(Default)]
struct Control {
    stop: AtomicBool,
    /// Record `PeerStats::rtt` every frame.
    measure: AtomicBool,
    /// Sleep this long inside the next frame (ms; 0: no stall).
    stall_ms: AtomicU64,
}

#[derive(Resource, Clone)]
struct Shared {
    obs: Arc<Mutex<Obs>>,
    control: Arc<Control>,
    partner: String,
}

/// Which side of the pair, and how.
#[derive(Clone)]
struct PlayerCfg {
    name: String,
    /// The other player's name.
    partner: String,
    /// A zone of its own per pair, so players of earlier runs are never its peers.
    zone: u32,
    fps: f64,
    io_thread: bool,
    conditioner: Option<ConditionerConfig>,
}

/// A frame stall, inside the frame, when the main thread asks for one.
fn stall(shared: Res<Shared>) {
    let ms = shared.control.stall_ms.swap(0, Ordering::AcqRel);
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// A reliable sequence number to the peer at ~20 Hz, and what arrived.
fn stream(
    shared: Res<Shared>,
    time: Res<Time<Real>>,
    mut last: Local<Option<Duration>>,
    mut next: Local<u32>,
    peers: Query<&Peer>,
    mut sender: P2pSender,
    mut got: MessageReader<P2pReceived>,
) {
    let mut obs = shared.obs.lock().unwrap();
    obs.got.extend(got.read().filter_map(|m| m.decode::<u32>().ok()));
    let now = time.elapsed();
    if last.is_some_and(|l| now - l < Duration::from_millis(50)) {
        return;
    }
    if let Some(p) = peers.iter().find(|p| p.name == shared.partner)
        && sender.send(p.player, Channel::Reliable, &*next).is_ok()
    {
        *next += 1;
        *last = Some(now);
    }
}

fn observe(
    shared: Res<Shared>,
    client: Res<P2pClient>,
    mut paths: MessageReader<PeerPathChanged>,
    peers: Query<(&Peer, &PeerPath, &PeerStats)>,
) {
    let mut obs = shared.obs.lock().unwrap();
    obs.frames += 1;
    obs.io = client.io_stats();
    let now = Instant::now();
    let partner = peers.iter().find(|(p, _, _)| p.name == shared.partner);
    for p in paths.read().filter(|p| partner.is_some_and(|(q, _, _)| q.player == p.player)) {
        obs.paths.push((now, p.path));
    }
    if let Some((peer, path, stats)) = partner {
        obs.path = Some(path.path);
        if shared.control.measure.load(Ordering::Acquire)
            && let Some(rtt) = stats.rtt
        {
            obs.rtt.push(rtt);
        }
        obs.rtt_stats = client
            .peer_rtt_stats(peer.player)
            .map(|s| (s.smoothed, s.min, s.p99.unwrap_or_default(), s.samples));
    }
}

/// Run one app on this thread at its frame rate until told to stop.
fn run_player(cfg: PlayerCfg, login: ShardAddress, shared: Shared) {
    let mut mesh = P2pMeshPlugin::new(cfg.name.clone());
    mesh.bind = "127.0.0.1:0".parse().expect("literal");
    mesh.client.nat_timeout = Duration::from_millis(500);
    mesh.io_thread = cfg.io_thread;
    mesh.conditioner = cfg.conditioner;
    let mut app = App::new();
    let shard = ShardClientPlugin { auto_zone: Some(cfg.zone), ..ShardClientPlugin::new(login) };
    app.add_plugins(MinimalPlugins).add_plugins((mesh, shard));
    app.insert_resource(shared.clone()).add_systems(Update, (stall, stream, observe).chain());
    app.finish();
    app.cleanup();
    let frame = Duration::from_secs_f64(1.0 / cfg.fps);
    let mut next = Instant::now();
    while !shared.control.stop.load(Ordering::Acquire) {
        app.update();
        next += frame;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    // Leave, so the shard does not hold the session for a resume.
    app.world_mut().write_message(ShardRequest::Disconnect);
    for _ in 0..5 {
        app.update();
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Two players on their own threads; the handles to watch and steer them.
struct Pair {
    obs: [Arc<Mutex<Obs>>; 2],
    control: [Arc<Control>; 2],
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pair {
    fn start(login: ShardAddress, cfgs: [PlayerCfg; 2]) -> Pair {
        let mut pair = Pair { obs: Default::default(), control: Default::default(), threads: Vec::new() };
        for (i, cfg) in cfgs.into_iter().enumerate() {
            let partner = cfg.partner.clone();
            let shared = Shared { obs: pair.obs[i].clone(), control: pair.control[i].clone(), partner };
            let t = std::thread::Builder::new()
                .name(cfg.name.clone())
                .spawn(move || run_player(cfg, login, shared))
                .expect("thread");
            pair.threads.push(t);
        }
        pair
    }

    fn obs(&self, i: usize) -> Obs {
        self.obs[i].lock().unwrap().clone()
    }

    /// Wait until both sides are direct (bounded).
    fn until_direct(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if (0..2).all(|i| self.obs(i).path == Some(Kind::Direct)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn stop(self) {
        for c in &self.control {
            c.stop.store(true, Ordering::Release);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Median and 99th percentile, in ms.
fn median_p99(v: &[Duration]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut v = v.to_vec();
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99))
}

/// RTT of a plain UDP echo over loopback (another thread answers), `n` round trips.
fn socket_rtt(n: usize) -> (f64, f64) {
    let echo = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let to = echo.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let stop_t = stop.clone();
    let t = std::thread::spawn(move || {
        echo.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let mut buf = [0u8; 64];
        while !stop_t.load(Ordering::Acquire) {
            if let Ok((len, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..len], from);
            }
        }
    });
    let me = UdpSocket::bind("127.0.0.1:0").expect("bind");
    me.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
    let mut buf = [0u8; 64];
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n {
        let sent = Instant::now();
        me.send_to(&(i as u64).to_be_bytes(), to).expect("send");
        if me.recv_from(&mut buf).is_ok() {
            rtts.push(sent.elapsed());
        }
        // Like a keepalive or a probe: the answering thread has gone back to sleep.
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Release);
    let _ = t.join();
    median_p99(&rtts)
}

/// Zones handed out to pairs, one each.
static ZONE: AtomicU64 = AtomicU64::new(0);

fn cfgs(tag: &str, fps: f64, io_thread: bool, conditioner: Option<ConditionerConfig>) -> [PlayerCfg; 2] {
    let zone = ZONE.fetch_add(1, Ordering::Relaxed) as u32;
    let (ana, bob) = (format!("ana-{tag}"), format!("bob-{tag}"));
    [
        PlayerCfg { name: ana.clone(), partner: bob.clone(), zone, fps, io_thread, conditioner },
        PlayerCfg { name: bob, partner: ana, zone, fps, io_thread, conditioner: None },
    ]
}

fn mode_name(io_thread: bool) -> &'static str {
    if io_thread { "I/O thread" } else { "in the frames" }
}

/// Both apps at `fps`: the RTT the plugin reports once both are direct.
fn rtt_row(login: ShardAddress, secs: u64, fps: f64, io_thread: bool, cond: Option<ConditionerConfig>) {
    let tag = format!(
        "{}{}{}",
        fps as u32,
        if io_thread { "t" } else { "f" },
        if cond.is_some() { "c" } else { "" }
    );
    let pair = Pair::start(login, cfgs(&tag, fps, io_thread, cond));
    if !pair.until_direct(Duration::from_secs(30)) {
        println!("| {} | {fps} | not direct within 30 s | | | |", mode_name(io_thread));
        pair.stop();
        return;
    }
    for c in &pair.control {
        c.measure.store(true, Ordering::Release);
    }
    let before = [pair.obs(0).io, pair.obs(1).io];
    std::thread::sleep(Duration::from_secs(secs));
    let obs = [pair.obs(0), pair.obs(1)];
    pair.stop();
    let extra =
        cond.map_or(String::new(), |c| format!(" + conditioner {} ms each way on ana", c.delay.as_millis()));
    for ((who, o), b) in ["ana", "bob"].iter().zip(&obs).zip(&before) {
        let (med, p99) = median_p99(&o.rtt);
        let (smoothed, min, link_p99, samples) = o.rtt_stats.unwrap_or_default();
        let per_s = |a: u64, b: u64| (a - b) as f64 / secs as f64;
        println!(
            "| {}{extra} | {fps} | {who} | {med:.2} / {p99:.2} | {:.2} / {:.2} / {:.2} ({samples} samples) | {} | {:.0} / {:.0} / {:.0} µs |",
            mode_name(io_thread),
            smoothed.as_secs_f64() * 1000.0,
            min.unwrap_or_default().as_secs_f64() * 1000.0,
            link_p99.as_secs_f64() * 1000.0,
            o.frames,
            per_s(o.io.turns, b.turns),
            per_s(o.io.wakes, b.wakes),
            o.io.longest_turn.as_secs_f64() * 1e6,
        );
    }
}

/// Both at 60 FPS and streaming at 20 Hz; bob's frame stalls for `stall`: path changes.
fn stall_row(login: ShardAddress, stall: Duration, io_thread: bool) {
    let tag = format!("stall{}", if io_thread { "t" } else { "f" });
    let pair = Pair::start(login, cfgs(&tag, 60.0, io_thread, None));
    if !pair.until_direct(Duration::from_secs(30)) {
        println!("| {} | not direct within 30 s | | |", mode_name(io_thread));
        pair.stop();
        return;
    }
    std::thread::sleep(Duration::from_secs(2));
    let start = Instant::now();
    let sent_before = pair.obs(1).got.len();
    pair.control[1].stall_ms.store(stall.as_millis() as u64, Ordering::Release);
    std::thread::sleep(stall + Duration::from_secs(4));
    let obs = [pair.obs(0), pair.obs(1)];
    pair.stop();
    let changes = |o: &Obs| -> Vec<String> {
        o.paths
            .iter()
            .filter(|(t, _)| *t >= start)
            .map(|(t, k)| format!("{} at +{:.2} s", k.as_str(), (*t - start).as_secs_f64()))
            .collect()
    };
    let got = &obs[1].got;
    let mut sorted = got.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let missing = sorted.last().map_or(0, |l| *l as usize + 1 - sorted.len());
    println!(
        "| {} | {} | {:?} | {:?} | {} received by bob during and after the stall, {missing} missing |",
        mode_name(io_thread),
        changes(&obs[0]).len() + changes(&obs[1]).len(),
        changes(&obs[0]),
        changes(&obs[1]),
        got.len() - sent_before,
    );
}

fn main() {
    let args = Args::parse();
    let modes: Vec<bool> = match args.mode.as_str() {
        "thread" => vec![true],
        "frame" => vec![false],
        _ => vec![true, false],
    };
    let cfg = embedded::local_config("frame-rtt", "[lobby]\nzones = 16\n").expect("config");
    let shard = embedded::start(cfg).expect("embedded shard");
    let (sock_med, sock_p99) = socket_rtt(2000);
    println!(
        "socket RTT (UDP echo on loopback, another thread answering): median {sock_med:.3} ms, p99 {sock_p99:.3} ms\n"
    );
    println!(
        "| driver | FPS | side | PeerStats::rtt median / p99 over frames (ms) | link: smoothed / min / p99 (ms) | frames | I/O thread turns/s / wakes from Bevy/s / longest turn under the lock |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &io_thread in &modes {
        for fps in [60.0, 5.0] {
            rtt_row(shard.login, args.seconds, fps, io_thread, None);
        }
    }
    if args.conditioner_ms > 0 && modes.contains(&true) {
        let c = ConditionerConfig::delay(Duration::from_millis(args.conditioner_ms));
        rtt_row(shard.login, args.seconds, 60.0, true, Some(c));
    }
    println!(
        "\n| driver | path changes during a {:.1} s stall of bob + 4 s | ana saw | bob saw | stream |",
        args.stall
    );
    println!("|---|---|---|---|---|");
    for &io_thread in &modes {
        stall_row(shard.login, Duration::from_secs_f64(args.stall), io_thread);
    }
}
