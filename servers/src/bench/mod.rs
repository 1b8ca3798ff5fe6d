//! `p2pmodel bench relay`: our relay against coturn and a raw forwarder, on loopback.
//!
//! For each target, the same `--flows` sender sockets send `--size`-byte datagrams through
//! it to the same number of receiver sockets:
//! 1. **ours**: a [`crate::relay::RelayServer`] (quotas raised out of the way; every flow is a
//!    link whose two sides bound and validated with real tokens);
//! 2. **coturn**: `turnserver` started here, one allocation per flow (long-term credentials),
//!    CreatePermission + ChannelBind, data as ChannelData (4-byte header + `size` bytes);
//! 3. **raw**: a recvmmsg→sendmmsg loop that looks the destination up by link id, with no
//!    checks: the practical limit of this kernel and this load generator.
//!
//! Each target runs two phases: **throughput** (`--seconds`, senders as fast as they can,
//! packets counted at the receivers) and **latency** (1 s paced at `--latency-rate` pkt/s,
//! every payload timestamped; the added one-way latency is the measured one minus the
//! median of the same phase sent directly, without a relay).

mod turn;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bevy_p2pmodel::proto::peer::{LinkId, Side};
use bevy_p2pmodel::relay::{Quota, RelayConfig, TokenKeys, mint};

use crate::relay::batch::{RecvBatch, SendBatch};
use crate::relay::client::{BindClient, peer_datagram};
use crate::relay::{RelayServer, RelayServerOptions};

/// Arguments of `p2pmodel bench relay`.
#[derive(clap::Args, Debug, Clone)]
pub struct RelayBenchArgs {
    /// Concurrent flows (each: one sender socket, one receiver socket, one link / allocation).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub flows: u32,
    /// Datagram payload size in bytes (our relay: the whole peer datagram; coturn: the
    /// ChannelData payload). 38..=1400.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(38..=1400))]
    pub size: u32,
    /// Seconds of the throughput phase, per target.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Paced rate of the latency phase, packets per second over all flows.
    #[arg(long, default_value_t = 10_000)]
    pub latency_rate: u32,
    /// The coturn binary; coturn is skipped (with a note) when it cannot be found.
    #[arg(long, default_value = "turnserver")]
    pub turnserver: String,
    /// Skip coturn even if it is installed.
    #[arg(long)]
    pub no_coturn: bool,
}

/// One target's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct TargetResult {
    /// Datagrams per second received through the target (throughput phase).
    pub pps: f64,
    /// Payload megabits per second.
    pub mbps: f64,
    /// Share of sent datagrams that arrived (throughput phase).
    pub delivered: f64,
    /// Added one-way latency, median, µs (latency phase).
    pub p50_us: f64,
    /// Added one-way latency, 99th percentile, µs (latency phase).
    pub p99_us: f64,
}

/// How a flow's sender reaches its receiver through one target.
struct Flow {
    tx: UdpSocket,
    rx: UdpSocket,
    /// Where the sender sends.
    dst: SocketAddr,
    /// The datagram the sender sends (timestamp written at `ts_at`).
    template: Vec<u8>,
    ts_at: usize,
}

/// Where the timestamp sits in what the receiver gets.
const RX_TS_AT_OURS: usize = 14;
const RX_TS_AT_TURN: usize = 0;

fn nanos_since(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

fn sockets(n: u32) -> io::Result<Vec<UdpSocket>> {
    (0..n)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            let s2 = socket2::SockRef::from(&s);
            let _ = s2.set_recv_buffer_size(4 << 20);
            let _ = s2.set_send_buffer_size(4 << 20);
            Ok(s)
        })
        .collect()
}

/// Send `count` copies of one datagram to one destination with sendmmsg.
struct Blaster {
    batch: SendBatch,
    empty: RecvBatch,
    buf: Vec<u8>,
}

impl Blaster {
    fn new() -> Blaster {
        Blaster { batch: SendBatch::new(32, false), empty: RecvBatch::new(1), buf: vec![0; 2048] }
    }

    fn send(&mut self, f: &Flow, base: Instant, count: usize) -> usize {
        let n = f.template.len();
        self.buf[..n].copy_from_slice(&f.template);
        let ts = nanos_since(base).to_be_bytes();
        self.buf[f.ts_at..f.ts_at + 8].copy_from_slice(&ts);
        for _ in 0..count.min(32) {
            self.batch.push_copy(&self.buf[..n], f.dst);
        }
        self.batch.flush(f.tx.as_raw_fd(), &self.empty).sent
    }
}

struct Receiver {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

/// Count datagrams at every flow's receiver; record `now − timestamp` while `record` is set.
fn start_receiver(
    fds: Vec<RawFd>,
    base: Instant,
    ts_at: usize,
    min_len: usize,
    record: Arc<AtomicBool>,
) -> Receiver {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (s, c) = (stop.clone(), count.clone());
    let thread = std::thread::spawn(move || {
        let mut lat = Vec::with_capacity(1 << 20);
        let mut recv = RecvBatch::new(64);
        let mut pfds: Vec<libc::pollfd> =
            fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
        while !s.load(Ordering::Relaxed) {
            // SAFETY: valid pollfd array.
            let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 20) };
            if r <= 0 {
                continue;
            }
            let rec = record.load(Ordering::Relaxed);
            for p in pfds.iter_mut().filter(|p| p.revents != 0) {
                p.revents = 0;
                while let Ok(n) = recv.recv(p.fd, true) {
                    if n == 0 {
                        break;
                    }
                    let now = nanos_since(base);
                    let mut got = 0;
                    for i in 0..n {
                        let (d, _) = recv.get(i);
                        if d.len() < min_len || (ts_at == RX_TS_AT_OURS && d[0] != 0x22) {
                            continue;
                        }
                        got += 1;
                        if rec {
                            let ts = u64::from_be_bytes(d[ts_at..ts_at + 8].try_into().expect("8 bytes"));
                            lat.push(now.saturating_sub(ts));
                        }
                    }
                    c.fetch_add(got, Ordering::Relaxed);
                }
            }
        }
        lat
    });
    Receiver { stop, count, thread }
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64
}

/// Run both phases over `flows`; `ts_rx` is where the receiver finds the timestamp.
/// Returns the result and the raw latency samples (ns) of the latency phase.
fn measure(
    name: &str,
    flows: &[Flow],
    args: &RelayBenchArgs,
    ts_rx: usize,
    min_len: usize,
) -> (TargetResult, Vec<u64>) {
    let base = Instant::now();
    let record = Arc::new(AtomicBool::new(false));
    let rx = start_receiver(
        flows.iter().map(|f| f.rx.as_raw_fd()).collect(),
        base,
        ts_rx,
        min_len,
        record.clone(),
    );
    let mut blaster = Blaster::new();

    // Throughput: every flow in turn, a batch each, as fast as the sender can.
    let start = Instant::now();
    let dur = Duration::from_secs_f64(args.seconds);
    let mut sent = 0u64;
    let mut next_progress = start + Duration::from_secs(1);
    let mut last_count = 0;
    let c0 = rx.count.load(Ordering::Relaxed);
    while start.elapsed() < dur {
        for f in flows {
            sent += blaster.send(f, base, 32) as u64;
        }
        if Instant::now() >= next_progress {
            let c = rx.count.load(Ordering::Relaxed);
            eprint!(
                "\r  {name:<6} throughput {:>4.1}/{:.1} s  {:>9.0} pkt/s   ",
                start.elapsed().as_secs_f64(),
                args.seconds,
                (c - last_count) as f64
            );
            last_count = c;
            next_progress += Duration::from_secs(1);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(100)); // let in-flight datagrams land
    let got = rx.count.load(Ordering::Relaxed) - c0;
    let pps = got as f64 / elapsed;

    // Latency: paced, timestamped.
    eprint!("\r  {name:<6} latency at {} pkt/s ...                              ", args.latency_rate);
    record.store(true, Ordering::Relaxed);
    let gap = Duration::from_secs_f64(1.0 / f64::from(args.latency_rate.max(1)));
    let start = Instant::now();
    let mut next = start;
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(1) {
        blaster.send(&flows[i % flows.len()], base, 1);
        i += 1;
        next += gap;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    record.store(false, Ordering::Relaxed);
    rx.stop.store(true, Ordering::Relaxed);
    let mut lat = rx.thread.join().unwrap_or_default();
    lat.sort_unstable();
    eprintln!("\r  {name:<6} done                                                        ");
    let r = TargetResult {
        pps,
        mbps: pps * f64::from(args.size) * 8.0 / 1e6,
        delivered: if sent == 0 { 0.0 } else { got as f64 / sent as f64 },
        p50_us: percentile(&lat, 0.5) / 1e3,
        p99_us: percentile(&lat, 0.99) / 1e3,
    };
    (r, lat)
}

fn unix_now() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(0)
}

fn ours(args: &RelayBenchArgs) -> io::Result<(Vec<Flow>, RelayServer)> {
    let unlimited = Quota { packets_per_sec: u64::MAX / 4, bytes_per_sec: u64::MAX / 4 };
    let core = RelayConfig { link_quota: unlimited, source_quota: unlimited, ..RelayConfig::default() };
    let keys = TokenKeys::new(1, rand::random());
    let relay = RelayServer::start(RelayServerOptions::new(
        vec!["127.0.0.1:0".parse().expect("addr")],
        core,
        keys.clone(),
    ))
    .map_err(io::Error::other)?;
    let r = relay.primary_addr();
    let (txs, rxs) = (sockets(args.flows)?, sockets(args.flows)?);
    let mut flows = vec![];
    for (i, (tx, rx)) in txs.into_iter().zip(rxs).enumerate() {
        let link = LinkId(i as u32 + 1);
        for (s, side) in [(&tx, Side::A), (&rx, Side::B)] {
            let (t, k) = mint(&keys, link, side, unix_now() + 3600);
            BindClient::new(link, side, t, k).bind_validated(s, r, Duration::from_secs(3))?;
        }
        let mut template = vec![0u8; args.size as usize];
        peer_datagram(link, Side::A, 0, args.size as usize, &mut template);
        flows.push(Flow { tx, rx, dst: r, template, ts_at: RX_TS_AT_OURS });
    }
    Ok((flows, relay))
}

fn direct(args: &RelayBenchArgs) -> io::Result<Vec<Flow>> {
    let (txs, rxs) = (sockets(args.flows)?, sockets(args.flows)?);
    Ok(txs
        .into_iter()
        .zip(rxs)
        .enumerate()
        .map(|(i, (tx, rx))| {
            let mut template = vec![0u8; args.size as usize];
            peer_datagram(LinkId(i as u32 + 1), Side::A, 0, args.size as usize, &mut template);
            let dst = rx.local_addr().expect("bound");
            Flow { tx, rx, dst, template, ts_at: RX_TS_AT_OURS }
        })
        .collect())
}

/// The raw baseline: recvmmsg → look up the destination by link id → sendmmsg. No checks.
struct RawForwarder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawForwarder {
    fn start(dsts: Vec<SocketAddr>) -> io::Result<RawForwarder> {
        let s = sockets(1)?.remove(0);
        let addr = s.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let fd = s.as_raw_fd();
            let mut recv = RecvBatch::new(64);
            let mut send = SendBatch::new(64, false);
            while !st.load(Ordering::Relaxed) {
                let n = match recv.recv(fd, true) {
                    Ok(0) | Err(_) => {
                        crate::relay::batch::poll_readable(&[fd], 20);
                        continue;
                    }
                    Ok(n) => n,
                };
                for i in 0..n {
                    let (d, _) = recv.get(i);
                    if d.len() >= 5 {
                        let link = u32::from_be_bytes([d[1], d[2], d[3], d[4]]) as usize;
                        if let Some(&to) = dsts.get(link.wrapping_sub(1)) {
                            send.push_forward(&recv, i, to);
                        }
                    }
                }
                send.flush(fd, &recv);
            }
        });
        Ok(RawForwarder { addr, stop, thread: Some(thread) })
    }
}

impl Drop for RawForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// coturn, started and stopped by the bench.
struct Coturn {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> io::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_coturn(bin: &str, flows: u32) -> io::Result<Coturn> {
    let port = free_udp_port()?;
    // A relay port range well away from the ephemeral ports the kernel hands out.
    let min_port = 20_000 + (std::process::id() % 20) as u16 * 1000;
    let child = Command::new(bin)
        .args(["-n", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
        .args(["--listening-port", &port.to_string()])
        .args([
            "--min-port",
            &min_port.to_string(),
            "--max-port",
            &(min_port + 999.max(flows as u16 * 2)).to_string(),
        ])
        .args(["--lt-cred-mech", "--user", "bench:benchpass", "--realm", "p2pmodel.bench"])
        .args(["--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-cli", "--no-stdout-log"])
        .args(["--log-file", "/dev/null", "--simple-log", "--no-software-attribute"])
        .args(["--pidfile", &format!("/tmp/p2pmodel-bench-turnserver-{}.pid", std::process::id())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let c = Coturn { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
    // Wait (bounded) until it answers STUN.
    let probe = UdpSocket::bind("127.0.0.1:0")?;
    probe.set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let (req, _) = turn::binding_request();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        probe.send_to(&req, c.addr)?;
        if probe.recv_from(&mut buf).is_ok() {
            return Ok(c);
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "turnserver did not answer STUN within 5 s"))
}

fn coturn_flows(c: &Coturn, args: &RelayBenchArgs) -> io::Result<Vec<Flow>> {
    let (txs, rxs) = (sockets(args.flows)?, sockets(args.flows)?);
    let mut flows = vec![];
    for (tx, rx) in txs.into_iter().zip(rxs) {
        let client = turn::TurnClient::allocate(&tx, c.addr, "bench", "benchpass")?;
        client.bind_channel(&tx, rx.local_addr()?, turn::FIRST_CHANNEL)?;
        let mut template = vec![0u8; 4 + args.size as usize];
        template[0..2].copy_from_slice(&turn::FIRST_CHANNEL.to_be_bytes());
        template[2..4].copy_from_slice(&(args.size as u16).to_be_bytes());
        flows.push(Flow { tx, rx, dst: c.addr, template, ts_at: 4 + RX_TS_AT_TURN });
    }
    Ok(flows)
}

fn which(bin: &str) -> bool {
    if bin.contains('/') {
        return std::path::Path::new(bin).is_file();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

fn line(name: &str, r: &TargetResult) {
    println!(
        "{name:<7} {:>10.0} pkt/s {:>8.1} Mbit/s  delivered {:>5.1}%  added one-way latency p50 {:>7.1} µs  p99 {:>7.1} µs",
        r.pps,
        r.mbps,
        r.delivered * 100.0,
        r.p50_us,
        r.p99_us
    );
}

/// Run the benchmark and print the results; the last line is the `summary:` line.
pub fn run_relay_bench(args: &RelayBenchArgs) -> Result<(), String> {
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        return Err(format!("--seconds must be in (0, 600], got {}", args.seconds));
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "relay bench: {} flows × {} B datagrams, {} s throughput + 1 s latency ({} pkt/s paced) per target, loopback, {cpus} CPUs",
        args.flows, args.size, args.seconds, args.latency_rate
    );

    // Direct path: the latency floor every target's latency is measured against.
    let flows = direct(args).map_err(|e| format!("direct sockets: {e}"))?;
    let (_, direct_lat) = measure("direct", &flows, args, RX_TS_AT_OURS, 38);
    drop(flows);
    let floor = percentile(&direct_lat, 0.5) / 1e3;
    println!("direct path one-way latency p50 {floor:.1} µs (subtracted below)");
    let added = |mut r: TargetResult| {
        r.p50_us -= floor;
        r.p99_us -= floor;
        r
    };

    let (flows, relay) = ours(args).map_err(|e| format!("our relay setup: {e}"))?;
    let (ours_r, _) = measure("ours", &flows, args, RX_TS_AT_OURS, 38);
    let ours_r = added(ours_r);
    let s = relay.snapshot();
    drop(flows);
    relay.shutdown();

    let coturn_r = if args.no_coturn {
        println!("coturn: skipped (--no-coturn)");
        None
    } else if !which(&args.turnserver) {
        println!("coturn: skipped — `{}` not found (Debian: apt-get install coturn)", args.turnserver);
        None
    } else {
        match start_coturn(&args.turnserver, args.flows).and_then(|c| coturn_flows(&c, args).map(|f| (c, f)))
        {
            Ok((c, flows)) => {
                let (r, _) = measure("coturn", &flows, args, RX_TS_AT_TURN, 38);
                drop(flows);
                drop(c);
                Some(added(r))
            }
            Err(e) => {
                println!("coturn: skipped — could not drive it: {e}");
                None
            }
        }
    };

    let flows = direct(args).map_err(|e| format!("raw sockets: {e}"))?;
    let raw = RawForwarder::start(flows.iter().map(|f| f.rx.local_addr().expect("bound")).collect())
        .map_err(|e| format!("raw forwarder: {e}"))?;
    let flows: Vec<Flow> = flows.into_iter().map(|f| Flow { dst: raw.addr, ..f }).collect();
    let (raw_r, _) = measure("raw", &flows, args, RX_TS_AT_OURS, 38);
    let raw_r = added(raw_r);
    drop(raw);

    println!();
    line("ours", &ours_r);
    if let Some(c) = &coturn_r {
        line("coturn", c);
    }
    line("raw", &raw_r);
    println!(
        "ours: relay counters: forwarded {} dropped {} (send errors {}), in-relay recv→send p99 {:.1} µs",
        s.forwarded_packets,
        s.dropped_total(),
        s.plane.send_errors,
        crate::relay::histogram::quantile_ns(&s.latency, 0.99).unwrap_or(0) as f64 / 1e3
    );
    let coturn_pps = coturn_r.map(|c| c.pps);
    println!(
        "summary: ours={:.0} coturn={} raw={:.0} ours/coturn={} ours/raw={:.2} p99_us={:.1}",
        ours_r.pps,
        coturn_pps.map_or("skipped".to_string(), |c| format!("{c:.0}")),
        raw_r.pps,
        coturn_pps.map_or("n/a".to_string(), |c| format!("{:.2}", ours_r.pps / c)),
        ours_r.pps / raw_r.pps,
        ours_r.p99_us
    );
    Ok(())
}
