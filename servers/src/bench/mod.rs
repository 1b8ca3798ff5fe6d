//! `p2pmodel bench relay`: our relay against coturn and a raw forwarder, on loopback.
//! `p2pmodel bench shard`: N clients against a whole shard ([`shard`]).
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

mod cpu;
pub mod shard;
mod shard_plot;
mod shard_result;
mod turn;

pub use cpu::CpuProbe;
pub use shard::{ShardBenchArgs, run_shard_bench};

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use p2pmodel_core::proto::peer::{LinkId, Side};
use p2pmodel_core::relay::{Quota, RelayConfig, TokenKeys, mint};

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
    /// Throughput phase: at most this many datagrams sent and not yet received (closed-loop
    /// load; 0 = open loop, the sender blasts and the target's socket drops the excess).
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: u32,
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
    /// Datagrams received through the target during the throughput phase's CPU window.
    pub packets: u64,
    /// Wall time of that window, seconds.
    pub window_s: f64,
    /// CPU time of the target (relay thread / coturn process / raw thread) in the window, ns.
    pub relay_cpu_ns: Option<u64>,
    /// The target's (user, system) CPU time in the window, ns, tick resolution.
    pub relay_user_sys_ns: Option<(u64, u64)>,
    /// CPU time of the load generator's sender thread in the window, ns.
    pub sender_cpu_ns: Option<u64>,
    /// CPU time of the load generator's receiver thread in the window, ns.
    pub receiver_cpu_ns: Option<u64>,
    /// CPU time of the kernel's ksoftirqd threads in the window, ns.
    pub softirq_cpu_ns: Option<u64>,
    /// Machine-wide share of CPU time that was busy / stolen by the hypervisor in the window.
    pub machine_busy: Option<f64>,
    /// See `machine_busy`.
    pub machine_steal: Option<f64>,
}

impl TargetResult {
    /// Target CPU nanoseconds per datagram delivered.
    pub fn cpu_ns_per_pkt(&self) -> Option<f64> {
        self.relay_cpu_ns.filter(|_| self.packets > 0).map(|ns| ns as f64 / self.packets as f64)
    }

    /// Datagrams delivered per second of target CPU time.
    pub fn pkt_per_cpu_sec(&self) -> Option<f64> {
        self.cpu_ns_per_pkt().filter(|&ns| ns > 0.0).map(|ns| 1e9 / ns)
    }
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
    /// The receiver thread's id (0 until it has started).
    tid: Arc<AtomicU64>,
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
    let tid = Arc::new(AtomicU64::new(0));
    let (s, c, t) = (stop.clone(), count.clone(), tid.clone());
    let thread = std::thread::spawn(move || {
        t.store(u64::from(cpu::gettid()), Ordering::Relaxed);
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
    Receiver { stop, count, tid, thread }
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64
}

/// Run both phases over `flows`; `ts_rx` is where the receiver finds the timestamp;
/// `target_cpu` reads the CPU time of the target (none for the direct path).
/// Returns the result and the raw latency samples (ns) of the latency phase.
fn measure(
    name: &str,
    flows: &[Flow],
    args: &RelayBenchArgs,
    ts_rx: usize,
    min_len: usize,
    target_cpu: Option<&CpuProbe>,
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
    while rx.tid.load(Ordering::Relaxed) == 0 {
        std::thread::yield_now();
    }
    let sender_cpu = CpuProbe::this_thread();
    let receiver_cpu = CpuProbe::thread(rx.tid.load(Ordering::Relaxed) as u32);
    let softirq_cpu = CpuProbe::ksoftirqd();
    let read = |p: Option<&CpuProbe>| p.and_then(|p| p.read_ns());
    let probes = [target_cpu, Some(&sender_cpu), Some(&receiver_cpu), Some(&softirq_cpu)];

    // Throughput: every flow in turn, a batch each, as fast as the sender can — but never
    // more than `--max-in-flight` datagrams ahead of the receiver (closed loop), so the
    // sender does not spend the shared CPUs on datagrams the target's socket would drop.
    let start = Instant::now();
    let us0 = target_cpu.and_then(|p| p.read_user_sys_ns());
    let m0 = cpu::machine_jiffies();
    let cpu0 = probes.map(read);
    let c0 = rx.count.load(Ordering::Relaxed);
    let dur = Duration::from_secs_f64(args.seconds);
    let cap = u64::from(args.max_in_flight);
    let mut sent = 0u64;
    let mut next_progress = start + Duration::from_secs(1);
    let mut last_count = c0;
    while start.elapsed() < dur {
        for f in flows {
            sent += blaster.send(f, base, 32) as u64;
        }
        while cap > 0 && sent.saturating_sub(rx.count.load(Ordering::Relaxed) - c0) > cap {
            if start.elapsed() >= dur {
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
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
    let cpu1 = probes.map(read);
    let m1 = cpu::machine_jiffies();
    let machine = m0.zip(m1).map(|(a, b)| {
        let (busy, idle, steal) = (b.0 - a.0, b.1 - a.1, b.2 - a.2);
        let all = (busy + idle + steal).max(1) as f64;
        (busy as f64 / all, steal as f64 / all)
    });
    let us1 = target_cpu.and_then(|p| p.read_user_sys_ns());
    let window_s = start.elapsed().as_secs_f64();
    let pps = got as f64 / elapsed;
    let delta = |i: usize| match (cpu0[i], cpu1[i]) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };

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
        packets: got,
        window_s,
        relay_cpu_ns: delta(0),
        relay_user_sys_ns: us0.zip(us1).map(|(a, b)| (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1))),
        sender_cpu_ns: delta(1),
        receiver_cpu_ns: delta(2),
        softirq_cpu_ns: delta(3),
        machine_busy: machine.map(|m| m.0),
        machine_steal: machine.map(|m| m.1),
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
    /// The forwarding thread's id.
    tid: u32,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawForwarder {
    fn start(dsts: Vec<SocketAddr>) -> io::Result<RawForwarder> {
        let s = sockets(1)?.remove(0);
        let addr = s.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _ = tid_tx.send(cpu::gettid());
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
        let tid = tid_rx.recv().map_err(io::Error::other)?;
        Ok(RawForwarder { addr, tid, stop, thread: Some(thread) })
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

fn ms(ns: Option<u64>) -> String {
    ns.map_or("n/a".into(), |v| format!("{:.0} ms", v as f64 / 1e6))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

/// The CPU line of one target: what the relay spent per datagram, and what the load
/// generator and ksoftirqd spent in the same window.
fn cpu_line(name: &str, r: &TargetResult) {
    let share = r.relay_cpu_ns.map(|ns| ns as f64 / 1e9 / r.window_s * 100.0);
    let user =
        r.relay_user_sys_ns.filter(|&(u, s)| u + s > 0).map(|(u, s)| u as f64 / (u + s) as f64 * 100.0);
    println!(
        "cpu {name:<7} relay {} ({}% of one CPU over {:.2} s, {} pkts, ~{}% in user space): cpu_ns_per_pkt={} pkt_per_cpu_sec={}  | load generator: sender {} receiver {}; ksoftirqd {}; machine busy {}% steal {}%",
        ms(r.relay_cpu_ns),
        opt(share, 0),
        r.window_s,
        r.packets,
        opt(user, 0),
        opt(r.cpu_ns_per_pkt(), 0),
        opt(r.pkt_per_cpu_sec(), 0),
        ms(r.sender_cpu_ns),
        ms(r.receiver_cpu_ns),
        ms(r.softirq_cpu_ns),
        opt(r.machine_busy.map(|b| b * 100.0), 0),
        opt(r.machine_steal.map(|b| b * 100.0), 0),
    );
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
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
    println!("load average before: {}", loadavg());
    let (direct_r, direct_lat) = measure("direct", &flows, args, RX_TS_AT_OURS, 38, None);
    drop(flows);
    let floor = percentile(&direct_lat, 0.5) / 1e3;
    println!(
        "direct path (no relay): {:.0} pkt/s (the load generator's own ceiling here, sender {} + receiver {} CPU), one-way latency p50 {floor:.1} µs (subtracted below)",
        direct_r.pps,
        ms(direct_r.sender_cpu_ns),
        ms(direct_r.receiver_cpu_ns)
    );
    let added = |mut r: TargetResult| {
        r.p50_us -= floor;
        r.p99_us -= floor;
        r
    };

    let (flows, relay) = ours(args).map_err(|e| format!("our relay setup: {e}"))?;
    // The data-plane thread ("relay-data-plane", `comm` keeps 15 bytes).
    let ours_cpu = Some(CpuProbe::threads_named("relay-dp-")).filter(|p| !p.is_empty());
    if ours_cpu.is_none() {
        println!("ours: data-plane thread not found in /proc/self/task: no CPU figures");
    }
    let (ours_r, _) = measure("ours", &flows, args, RX_TS_AT_OURS, 38, ours_cpu.as_ref());
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
                let probe = CpuProbe::Process(c.child.id());
                let (r, _) = measure("coturn", &flows, args, RX_TS_AT_TURN, 38, Some(&probe));
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
    let probe = CpuProbe::thread(raw.tid);
    let (raw_r, _) = measure("raw", &flows, args, RX_TS_AT_OURS, 38, Some(&probe));
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
    println!(
        "ours: {:.1} datagrams per recvmmsg on average",
        s.forwarded_packets as f64 / s.plane.recv_batches.max(1) as f64
    );
    cpu_line("ours", &ours_r);
    if let Some(c) = &coturn_r {
        cpu_line("coturn", c);
    }
    cpu_line("raw", &raw_r);
    println!("load average after: {}", loadavg());
    let ours_ns = ours_r.cpu_ns_per_pkt();
    let coturn_ns = coturn_r.and_then(|c| c.cpu_ns_per_pkt());
    let raw_ns = raw_r.cpu_ns_per_pkt();
    let ratio = |a: Option<f64>, b: Option<f64>| opt(a.zip(b).map(|(a, b)| a / b), 2);
    println!(
        "efficiency: ours_ns_per_pkt={} coturn_ns_per_pkt={} raw_ns_per_pkt={} ours_pkt_per_cpu_sec={} coturn_pkt_per_cpu_sec={} raw_pkt_per_cpu_sec={} coturn/ours={} ours/raw={}",
        opt(ours_ns, 0),
        opt(coturn_ns, 0),
        opt(raw_ns, 0),
        opt(ours_r.pkt_per_cpu_sec(), 0),
        opt(coturn_r.and_then(|c| c.pkt_per_cpu_sec()), 0),
        opt(raw_r.pkt_per_cpu_sec(), 0),
        ratio(coturn_ns, ours_ns),
        ratio(ours_ns, raw_ns),
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
