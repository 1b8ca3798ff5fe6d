//! `p2pmodel bench relay`: our relay against coturn and a raw forwarder, on loopback.
//! `p2pmodel bench shard`: N clients against a whole shard ([`shard`]).
//!
//! For each target, the same `--flows` sender sockets send datagrams through it to the same
//! number of receiver sockets:
//! 1. **ours**: a [`crate::relay::RelayServer`] with 1, 2, 4 … up to `--threads` data-plane
//!    threads (quotas raised out of the way; every flow is a link whose two sides bound and
//!    validated with real tokens);
//! 2. **coturn**: `turnserver` started here with its default threads (one per CPU), one
//!    allocation per flow (long-term credentials), CreatePermission + ChannelBind, data as
//!    ChannelData (4-byte header + the same payload);
//! 3. **raw**: recvmmsg → look up the destination by link id → sendmmsg, with no checks, on
//!    the same number of threads and the same link-id steering as ours: the practical limit
//!    of this kernel and this load generator;
//! 4. with `--gso`: ours and raw again with UDP GSO (`send`: runs to one destination leave
//!    as one `UDP_SEGMENT` message) or GSO + GRO end to end (`all`).
//!
//! Each target runs two phases: **throughput** (`--seconds`, senders as fast as they can,
//! packets counted at the receivers) and **latency** (`--latency-seconds` paced at
//! `--latency-rate` pkt/s of `--latency-size`-byte datagrams, every payload timestamped; the
//! added one-way latency is the measured one minus the median of the same phase sent
//! directly, without a relay).

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

use crate::relay::batch::{MAX_GSO_SEGMENTS, RecvBatch, SendBatch, enable_gro, poll_readable};
use crate::relay::client::{BindClient, peer_datagram};
use crate::relay::steer::{MAX_THREADS, effective_threads, open_group};
use crate::relay::{RelayServer, RelayServerOptions};

/// `--gso`: which UDP segmentation offload runs to measure after the main targets.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoArg {
    /// None.
    Off,
    /// Our relay and raw send runs of datagrams to one destination as one `UDP_SEGMENT`
    /// message; the load generator is unchanged.
    Send,
    /// GSO and GRO end to end: the load generator sends each burst as one GSO message and
    /// receives with `UDP_GRO`; our relay and raw receive with `UDP_GRO` and send with GSO.
    All,
    /// `send`, then `all`.
    Both,
}

/// Arguments of `p2pmodel bench relay`.
#[derive(clap::Args, Debug, Clone)]
pub struct RelayBenchArgs {
    /// Concurrent flows (each: one sender socket, one receiver socket, one link / allocation).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub flows: u32,
    /// Datagram size of the throughput phase in bytes (our relay: the whole peer datagram;
    /// coturn: the ChannelData payload). 38..=1400.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(38..=1400))]
    pub size: u32,
    /// Seconds of the throughput phase, per target.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Data-plane threads of our relay and of the raw forwarder (0 = one per CPU); ours is
    /// also measured with 1, 2, 4 … threads below that, for the scaling.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=MAX_THREADS as i64))]
    pub threads: u16,
    /// Paced rate of the latency phase, packets per second over all flows.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub latency_rate: u32,
    /// Datagram size of the latency phase in bytes (as `--size`). 38..=1400.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(38..=1400))]
    pub latency_size: u32,
    /// Seconds of the latency phase, per target.
    #[arg(long, default_value_t = 4.0)]
    pub latency_seconds: f64,
    /// The coturn binary; coturn is skipped (with a note) when it cannot be found.
    #[arg(long, default_value = "turnserver")]
    pub turnserver: String,
    /// Skip coturn even if it is installed.
    #[arg(long)]
    pub no_coturn: bool,
    /// Sender threads of the load generator's throughput phase, each over its share of the
    /// flows (0 = one per CPU). The latency phase uses one paced sender.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub senders: u16,
    /// Rounds: each target's throughput and latency phases are split into this many parts,
    /// measured target after target in every round (every other round in reverse order), so
    /// a change in the machine's other load hits all targets alike.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub rounds: u16,
    /// Throughput phase: at most this many datagrams sent and not yet received (closed-loop
    /// load; 0 = open loop, the sender blasts and the target's socket drops the excess).
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: u32,
    /// One step beyond the syscall path: UDP GSO / GRO runs of ours and raw after the main
    /// targets (not in the summary line).
    #[arg(long, value_enum, default_value = "both")]
    pub gso: GsoArg,
}

/// How datagrams cross the kernel in one measurement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Offload {
    /// The target sends runs to one destination as one GSO message.
    gso_send: bool,
    /// GSO from the load generator, GRO on the target's and the receivers' sockets.
    gro: bool,
}

impl Offload {
    fn suffix(self) -> &'static str {
        match (self.gso_send, self.gro) {
            (false, _) => "",
            (true, false) => "+gso",
            (true, true) => "+gso+gro",
        }
    }
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
    /// One-way latency through the target, median, µs (latency phase).
    pub one_way_p50_us: f64,
    /// One-way latency through the target, 99th percentile, µs (latency phase).
    pub one_way_p99_us: f64,
    /// Added one-way latency (one-way minus the direct path's median), median, µs.
    pub p50_us: f64,
    /// Added one-way latency, 99th percentile, µs.
    pub p99_us: f64,
    /// The rate the latency phase achieved, datagrams per second.
    pub latency_pps: f64,
    /// Datagrams received through the target during the throughput phase's CPU window.
    pub packets: u64,
    /// Wall time of that window, seconds.
    pub window_s: f64,
    /// CPU time of the target (relay threads / coturn process / raw threads) in the window, ns.
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
    /// Machine-wide share of CPU time spent in softirq (`/proc/stat`) in the window.
    pub machine_softirq: Option<f64>,
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
    /// The datagram of the throughput phase (timestamp written at `ts_at`).
    template: Vec<u8>,
    /// The datagram of the latency phase.
    lat_template: Vec<u8>,
    ts_at: usize,
    /// Our relay: the receiving side's client, which re-binds now and then so its binding
    /// does not idle out (it never sends data), as a real client keeps it alive.
    keepalive: Option<BindClient>,
}

/// Where the timestamp sits in what the receiver gets.
const RX_TS_AT_OURS: usize = 14;
const RX_TS_AT_TURN: usize = 0;
/// Datagrams per flow per send call of the throughput phase.
const BURST: usize = 32;

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

/// Send `count` copies of one datagram to one destination with sendmmsg (or, with GSO, as
/// one `UDP_SEGMENT` message).
struct Blaster {
    batch: SendBatch,
    empty: RecvBatch,
    buf: Vec<u8>,
}

impl Blaster {
    fn new(gso: bool) -> Blaster {
        let mut batch = SendBatch::new(BURST, false);
        batch.set_gso(gso);
        Blaster { batch, empty: RecvBatch::new(1), buf: vec![0; 2048] }
    }

    fn send(&mut self, f: &Flow, base: Instant, count: usize, latency: bool) -> usize {
        let t = if latency { &f.lat_template } else { &f.template };
        let n = t.len();
        self.buf[..n].copy_from_slice(t);
        let ts = nanos_since(base).to_be_bytes();
        self.buf[f.ts_at..f.ts_at + 8].copy_from_slice(&ts);
        for _ in 0..count.min(BURST) {
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
/// `gro`: the sockets coalesce bursts (`UDP_GRO`), each datagram of a buffer is counted.
fn start_receiver(
    fds: Vec<RawFd>,
    base: Instant,
    ts_at: usize,
    min_len: usize,
    record: Arc<AtomicBool>,
    gro: bool,
) -> Receiver {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let tid = Arc::new(AtomicU64::new(0));
    let (s, c, t) = (stop.clone(), count.clone(), tid.clone());
    let thread = std::thread::spawn(move || {
        t.store(u64::from(cpu::gettid()), Ordering::Relaxed);
        let mut lat = Vec::with_capacity(1 << 20);
        let mut recv = if gro { RecvBatch::with_gro(16) } else { RecvBatch::new(64) };
        if gro {
            for &fd in &fds {
                let _ = enable_gro(fd);
            }
        }
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
                        let (all, _) = recv.get(i);
                        for (off, len) in recv.segments(i) {
                            let d = &all[off..off + len];
                            if d.len() < min_len || (ts_at == RX_TS_AT_OURS && d[0] != 0x22) {
                                continue;
                            }
                            got += 1;
                            if rec {
                                let ts = u64::from_be_bytes(d[ts_at..ts_at + 8].try_into().expect("8 bytes"));
                                lat.push(now.saturating_sub(ts));
                            }
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

/// What keeps a target running while it is measured.
enum Keep {
    Direct,
    Ours(RelayServer),
    Coturn { _server: Coturn },
    Raw { _forwarder: RawForwarder },
}

/// Throughput-phase figures summed over a target's rounds.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    packets: u64,
    sent: u64,
    elapsed_s: f64,
    window_s: f64,
    relay_ns: Option<u64>,
    user_sys: Option<(u64, u64)>,
    sender_ns: Option<u64>,
    receiver_ns: Option<u64>,
    softirq_ns: Option<u64>,
    /// Machine jiffies in the windows: (busy, idle, steal, softirq).
    machine: Option<(u64, u64, u64, u64)>,
    /// Latency phase: datagrams sent, seconds.
    lat_sent: u64,
    lat_s: f64,
}

fn add_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, None) => a,
        (None, b) => b,
    }
}

/// One target under test: its flows, the receiver thread counting at its receivers for the
/// whole run, and what its CPU time is.
struct Target {
    name: String,
    flows: Vec<Flow>,
    cpu: Option<CpuProbe>,
    rx: Receiver,
    record: Arc<AtomicBool>,
    base: Instant,
    gro: bool,
    keep: Keep,
    acc: Acc,
    last_keepalive: Instant,
}

impl Target {
    /// `ts_rx`: where the receiver finds the timestamp; `gro`: the load generator sends
    /// bursts with GSO and receives with GRO.
    fn new(
        name: String,
        flows: Vec<Flow>,
        ts_rx: usize,
        gro: bool,
        cpu: Option<CpuProbe>,
        keep: Keep,
    ) -> Target {
        let base = Instant::now();
        let record = Arc::new(AtomicBool::new(false));
        let rx = start_receiver(
            flows.iter().map(|f| f.rx.as_raw_fd()).collect(),
            base,
            ts_rx,
            38,
            record.clone(),
            gro,
        );
        while rx.tid.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        Target {
            name,
            flows,
            cpu,
            rx,
            record,
            base,
            gro,
            keep,
            acc: Acc::default(),
            last_keepalive: Instant::now(),
        }
    }

    /// One throughput round of `secs`: `--senders` threads, each over its share of the flows
    /// in turn, a burst each, as fast as it can — but all together never more than
    /// `--max-in-flight` datagrams ahead of the receiver (closed loop), so the senders do not
    /// spend the shared CPUs on datagrams the target's socket would drop. The CPU window
    /// ends 100 ms after the senders stop, when the last datagrams have landed.
    fn throughput_round(&mut self, args: &RelayBenchArgs, secs: f64, round: usize) {
        // Receiving sides re-bind every 15 s (the relay's idle timeout is 60 s); the acks
        // reach the receiver thread, which ignores them.
        if self.last_keepalive.elapsed() >= Duration::from_secs(15) {
            self.last_keepalive = Instant::now();
            for f in &mut self.flows {
                if let Some(c) = &mut f.keepalive {
                    let _ = f.rx.send_to(&c.next_bind(), f.dst);
                }
            }
        }
        let (flows, base, gro, name) = (&self.flows, self.base, self.gro, &self.name);
        let receiver_cpu = CpuProbe::thread(self.rx.tid.load(Ordering::Relaxed) as u32);
        let softirq_cpu = CpuProbe::ksoftirqd();
        let read = |p: Option<&CpuProbe>| p.and_then(|p| p.read_ns());
        let probes = [self.cpu.as_ref(), Some(&receiver_cpu), Some(&softirq_cpu)];
        let senders = sender_threads(args).min(flows.len()).max(1);
        let dur = Duration::from_secs_f64(secs);
        let cap = u64::from(args.max_in_flight);
        let count = &*self.rx.count;
        let c0 = count.load(Ordering::Relaxed);
        let (go, stop, sent_total) = (AtomicBool::new(false), AtomicBool::new(false), AtomicU64::new(0));
        let (go, stop, sent_total) = (&go, &stop, &sent_total);
        let (start, us0, m0, cpu0, elapsed, sender_ns) = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..senders)
                .map(|j| {
                    let mine: Vec<&Flow> = flows.iter().skip(j).step_by(senders).collect();
                    sc.spawn(move || {
                        let mut blaster = Blaster::new(gro);
                        let me = CpuProbe::this_thread();
                        while !go.load(Ordering::Acquire) {
                            std::thread::yield_now();
                        }
                        let cpu_at_go = me.read_ns();
                        while !stop.load(Ordering::Relaxed) {
                            for f in &mine {
                                let n = blaster.send(f, base, BURST, false) as u64;
                                sent_total.fetch_add(n, Ordering::Relaxed);
                            }
                            while cap > 0
                                && sent_total
                                    .load(Ordering::Relaxed)
                                    .saturating_sub(count.load(Ordering::Relaxed) - c0)
                                    > cap
                                && !stop.load(Ordering::Relaxed)
                            {
                                std::thread::sleep(Duration::from_micros(50));
                            }
                        }
                        me.read_ns().zip(cpu_at_go).map(|(b, a)| b.saturating_sub(a))
                    })
                })
                .collect();
            let start = Instant::now();
            let us0 = self.cpu.as_ref().and_then(|p| p.read_user_sys_ns());
            let m0 = machine_jiffies();
            let cpu0 = probes.map(read);
            go.store(true, Ordering::Release);
            let mut last = c0;
            while start.elapsed() < dur {
                std::thread::sleep(dur.saturating_sub(start.elapsed()).min(Duration::from_millis(250)));
                let c = count.load(Ordering::Relaxed);
                eprint!(
                    "\r  round {round} {name:<14} throughput {:>4.2}/{secs:.2} s  {:>8} datagrams    ",
                    start.elapsed().as_secs_f64(),
                    c - last
                );
                last = c;
            }
            stop.store(true, Ordering::Relaxed);
            let elapsed = start.elapsed().as_secs_f64();
            let sender_ns: Option<u64> = handles.into_iter().map(|h| h.join().ok().flatten()).sum();
            (start, us0, m0, cpu0, elapsed, sender_ns)
        });
        std::thread::sleep(Duration::from_millis(100)); // let in-flight datagrams land
        let got = count.load(Ordering::Relaxed) - c0;
        let cpu1 = probes.map(read);
        let m1 = machine_jiffies();
        let us1 = self.cpu.as_ref().and_then(|p| p.read_user_sys_ns());
        let delta = |i: usize| cpu0[i].zip(cpu1[i]).map(|(a, b)| b.saturating_sub(a));
        let a = &mut self.acc;
        a.packets += got;
        a.sent += sent_total.load(Ordering::Relaxed);
        a.elapsed_s += elapsed;
        a.window_s += start.elapsed().as_secs_f64();
        a.relay_ns = add_opt(a.relay_ns, delta(0));
        a.user_sys = match (a.user_sys, us0.zip(us1)) {
            (acc, Some((x, y))) => {
                let (u, s) = acc.unwrap_or((0, 0));
                Some((u + y.0.saturating_sub(x.0), s + y.1.saturating_sub(x.1)))
            }
            (acc, None) => acc,
        };
        a.sender_ns = add_opt(a.sender_ns, sender_ns);
        a.receiver_ns = add_opt(a.receiver_ns, delta(1));
        a.softirq_ns = add_opt(a.softirq_ns, delta(2));
        if let (Some(x), Some(y)) = (m0, m1) {
            let d = (y.0 - x.0, y.1 - x.1, y.2 - x.2, y.3 - x.3);
            let m = a.machine.unwrap_or_default();
            a.machine = Some((m.0 + d.0, m.1 + d.1, m.2 + d.2, m.3 + d.3));
        }
    }

    /// One latency round of `secs`: one paced sender (catching up after an oversleep, so the
    /// average rate holds), `--latency-size` datagrams, each timestamped when it is sent.
    fn latency_round(&mut self, args: &RelayBenchArgs, secs: f64, round: usize) {
        eprint!(
            "\r  round {round} {:<14} latency at {} pkt/s × {} B ...                  ",
            self.name, args.latency_rate, args.latency_size
        );
        let mut blaster = Blaster::new(self.gro);
        self.record.store(true, Ordering::Relaxed);
        let gap = Duration::from_secs_f64(1.0 / f64::from(args.latency_rate.max(1)));
        let dur = Duration::from_secs_f64(secs);
        let start = Instant::now();
        let mut next = start;
        let mut i = 0;
        while start.elapsed() < dur {
            blaster.send(&self.flows[i % self.flows.len()], self.base, 1, true);
            i += 1;
            next += gap;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
        }
        self.acc.lat_sent += i as u64;
        self.acc.lat_s += start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(50));
        self.record.store(false, Ordering::Relaxed);
    }

    /// Stop the receiver and the target; the figures and the latency samples (ns, sorted).
    fn finish(self, args: &RelayBenchArgs) -> (TargetResult, Vec<u64>, Keep) {
        self.rx.stop.store(true, Ordering::Relaxed);
        let mut lat = self.rx.thread.join().unwrap_or_default();
        lat.sort_unstable();
        let a = self.acc;
        let pps = if a.elapsed_s > 0.0 { a.packets as f64 / a.elapsed_s } else { 0.0 };
        let machine = a.machine.map(|(busy, idle, steal, sirq)| {
            let all = (busy + idle + steal).max(1) as f64;
            (busy as f64 / all, steal as f64 / all, sirq as f64 / all)
        });
        let r = TargetResult {
            pps,
            mbps: pps * f64::from(args.size) * 8.0 / 1e6,
            delivered: if a.sent == 0 { 0.0 } else { a.packets as f64 / a.sent as f64 },
            one_way_p50_us: percentile(&lat, 0.5) / 1e3,
            one_way_p99_us: percentile(&lat, 0.99) / 1e3,
            p50_us: f64::NAN,
            p99_us: f64::NAN,
            latency_pps: if a.lat_s > 0.0 { a.lat_sent as f64 / a.lat_s } else { 0.0 },
            packets: a.packets,
            window_s: a.window_s,
            relay_cpu_ns: a.relay_ns,
            relay_user_sys_ns: a.user_sys,
            sender_cpu_ns: a.sender_ns,
            receiver_cpu_ns: a.receiver_ns,
            softirq_cpu_ns: a.softirq_ns,
            machine_busy: machine.map(|m| m.0),
            machine_steal: machine.map(|m| m.1),
            machine_softirq: machine.map(|m| m.2),
        };
        (r, lat, self.keep)
    }
}

/// Machine-wide CPU jiffies from the `cpu` line of `/proc/stat`: (busy, idle + iowait,
/// steal, softirq).
fn machine_jiffies() -> Option<(u64, u64, u64, u64)> {
    let (busy, idle, steal) = cpu::machine_jiffies()?;
    Some((busy, idle, steal, softirq_jiffies()?))
}

/// Machine-wide softirq jiffies (`/proc/stat`, `cpu` line, 7th value).
fn softirq_jiffies() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    s.lines().next()?.split_whitespace().nth(7)?.parse().ok()
}

fn unix_now() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(0)
}

fn templates(args: &RelayBenchArgs, link: LinkId) -> (Vec<u8>, Vec<u8>) {
    let make = |len: u32| {
        let mut t = vec![0u8; len as usize];
        peer_datagram(link, Side::A, 0, len as usize, &mut t);
        t
    };
    (make(args.size), make(args.latency_size))
}

fn ours(args: &RelayBenchArgs, threads: usize, off: Offload) -> io::Result<(Vec<Flow>, RelayServer)> {
    let unlimited = Quota { packets_per_sec: u64::MAX / 4, bytes_per_sec: u64::MAX / 4 };
    let core = RelayConfig { link_quota: unlimited, source_quota: unlimited, ..RelayConfig::default() };
    let keys = TokenKeys::new(1, rand::random());
    let mut opts = RelayServerOptions::new(vec!["127.0.0.1:0".parse().expect("addr")], core, keys.clone());
    opts.threads = threads;
    opts.gso_send = off.gso_send;
    opts.gro_recv = off.gro;
    let relay = RelayServer::start(opts).map_err(io::Error::other)?;
    let r = relay.primary_addr();
    let (txs, rxs) = (sockets(args.flows)?, sockets(args.flows)?);
    let mut flows = vec![];
    for (i, (tx, rx)) in txs.into_iter().zip(rxs).enumerate() {
        let link = LinkId(i as u32 + 1);
        let mut keepalive = None;
        for (s, side) in [(&tx, Side::A), (&rx, Side::B)] {
            let (t, k) = mint(&keys, link, side, unix_now() + 3600);
            let mut c = BindClient::new(link, side, t, k);
            c.bind_validated(s, r, Duration::from_secs(3))?;
            keepalive = Some(c);
        }
        let (template, lat_template) = templates(args, link);
        flows.push(Flow { tx, rx, dst: r, template, lat_template, ts_at: RX_TS_AT_OURS, keepalive });
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
            let (template, lat_template) = templates(args, LinkId(i as u32 + 1));
            let dst = rx.local_addr().expect("bound");
            Flow { tx, rx, dst, template, lat_template, ts_at: RX_TS_AT_OURS, keepalive: None }
        })
        .collect())
}

/// The raw baseline: recvmmsg → look up the destination by link id → sendmmsg, no checks,
/// on `threads` sockets steered by link id exactly like ours.
struct RawForwarder {
    addr: SocketAddr,
    /// The forwarding threads' ids.
    tids: Vec<u32>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl RawForwarder {
    fn start(dsts: Vec<SocketAddr>, threads: usize, off: Offload) -> io::Result<RawForwarder> {
        let group = open_group("127.0.0.1:0".parse().expect("addr"), 4 << 20, threads)?;
        let addr =
            group[0].local_addr()?.as_socket().ok_or_else(|| io::Error::other("not an inet socket"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let dsts = Arc::new(dsts);
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let mut handles = vec![];
        for (i, s) in group.into_iter().enumerate() {
            let s: UdpSocket = s.into();
            let (st, dsts, tid_tx) = (stop.clone(), dsts.clone(), tid_tx.clone());
            let t = std::thread::Builder::new().name(format!("raw-fwd-{i}")).spawn(move || {
                let _ = tid_tx.send(cpu::gettid());
                let fd = s.as_raw_fd();
                let mut recv = if off.gro {
                    let _ = enable_gro(fd);
                    RecvBatch::with_gro(64)
                } else {
                    RecvBatch::new(64)
                };
                let mut send = SendBatch::new(if off.gro { 64 * MAX_GSO_SEGMENTS } else { 64 }, false);
                send.set_gso(off.gso_send);
                while !st.load(Ordering::Relaxed) {
                    let n = match recv.recv(fd, true) {
                        Ok(0) | Err(_) => {
                            poll_readable(&[fd], 20);
                            continue;
                        }
                        Ok(n) => n,
                    };
                    for i in 0..n {
                        let (all, _) = recv.get(i);
                        for (o, len) in recv.segments(i) {
                            let d = &all[o..o + len];
                            if d.len() >= 5 {
                                let link = u32::from_be_bytes([d[1], d[2], d[3], d[4]]) as usize;
                                if let Some(&to) = dsts.get(link.wrapping_sub(1)) {
                                    send.push_forward_range(&recv, i, o, len, to);
                                }
                            }
                        }
                    }
                    send.flush(fd, &recv);
                }
            })?;
            handles.push(t);
        }
        let tids =
            (0..handles.len()).map(|_| tid_rx.recv().map_err(io::Error::other)).collect::<Result<_, _>>()?;
        Ok(RawForwarder { addr, tids, stop, threads: handles })
    }

    fn cpu_probe(&self) -> CpuProbe {
        CpuProbe::Tasks(self.tids.iter().map(|t| format!("/proc/self/task/{t}")).collect())
    }
}

impl Drop for RawForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
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

fn channel_data(len: u32) -> Vec<u8> {
    let mut t = vec![0u8; 4 + len as usize];
    t[0..2].copy_from_slice(&turn::FIRST_CHANNEL.to_be_bytes());
    t[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    t
}

fn coturn_flows(c: &Coturn, args: &RelayBenchArgs) -> io::Result<Vec<Flow>> {
    let (txs, rxs) = (sockets(args.flows)?, sockets(args.flows)?);
    let mut flows = vec![];
    for (tx, rx) in txs.into_iter().zip(rxs) {
        let client = turn::TurnClient::allocate(&tx, c.addr, "bench", "benchpass")?;
        client.bind_channel(&tx, rx.local_addr()?, turn::FIRST_CHANNEL)?;
        flows.push(Flow {
            tx,
            rx,
            dst: c.addr,
            template: channel_data(args.size),
            lat_template: channel_data(args.latency_size),
            ts_at: 4 + RX_TS_AT_TURN,
            keepalive: None,
        });
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
        "{name:<14} {:>10.0} pkt/s {:>8.1} Mbit/s  delivered {:>5.1}%  added one-way latency p50 {:>7.1} µs  p99 {:>7.1} µs  (one-way p99 {:.1} µs at {:.0} pkt/s)",
        r.pps,
        r.mbps,
        r.delivered * 100.0,
        r.p50_us,
        r.p99_us,
        r.one_way_p99_us,
        r.latency_pps
    );
}

fn ms(ns: Option<u64>) -> String {
    ns.map_or("n/a".into(), |v| format!("{:.0} ms", v as f64 / 1e6))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

/// The CPU line of one target: what the relay spent per datagram, and what the load
/// generator and the kernel's softirq spent in the same window.
fn cpu_line(name: &str, r: &TargetResult) {
    let share = r.relay_cpu_ns.map(|ns| ns as f64 / 1e9 / r.window_s * 100.0);
    let user =
        r.relay_user_sys_ns.filter(|&(u, s)| u + s > 0).map(|(u, s)| u as f64 / (u + s) as f64 * 100.0);
    println!(
        "cpu {name:<14} relay {} ({}% of one CPU over {:.2} s, {} pkts, ~{}% in user space): cpu_ns_per_pkt={} pkt_per_cpu_sec={}  | load generator: sender {} receiver {}; ksoftirqd {}; machine busy {}% (softirq {}%) steal {}%",
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
        opt(r.machine_softirq.map(|b| b * 100.0), 1),
        opt(r.machine_steal.map(|b| b * 100.0), 0),
    );
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

/// Sender threads of the throughput phase.
fn sender_threads(args: &RelayBenchArgs) -> usize {
    match args.senders {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => usize::from(n),
    }
}

/// Thread counts of the scaling run: 1, 2, 4 … below `n`, then `n`.
fn thread_steps(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> =
        std::iter::successors(Some(1usize), |t| t.checked_mul(2)).take_while(|&t| t < n).collect();
    v.push(n);
    v
}

fn setup_ours(args: &RelayBenchArgs, threads: usize, off: Offload) -> Result<Target, String> {
    let (flows, relay) = ours(args, threads, off).map_err(|e| format!("our relay setup: {e}"))?;
    let name = format!("ours/{}{}", relay.threads(), off.suffix());
    let tids = relay.thread_ids();
    let probe = (!tids.contains(&0))
        .then(|| CpuProbe::Tasks(tids.iter().map(|t| format!("/proc/self/task/{t}")).collect()));
    if probe.is_none() {
        println!("{name}: data-plane thread ids unknown: no CPU figures");
    }
    Ok(Target::new(name, flows, RX_TS_AT_OURS, off.gro, probe, Keep::Ours(relay)))
}

fn setup_raw(args: &RelayBenchArgs, threads: usize, off: Offload) -> Result<Target, String> {
    let flows = direct(args).map_err(|e| format!("raw sockets: {e}"))?;
    let raw =
        RawForwarder::start(flows.iter().map(|f| f.rx.local_addr().expect("bound")).collect(), threads, off)
            .map_err(|e| format!("raw forwarder: {e}"))?;
    let name = format!("raw/{}{}", raw.tids.len(), off.suffix());
    let flows: Vec<Flow> = flows.into_iter().map(|f| Flow { dst: raw.addr, ..f }).collect();
    let probe = raw.cpu_probe();
    Ok(Target::new(name, flows, RX_TS_AT_OURS, off.gro, Some(probe), Keep::Raw { _forwarder: raw }))
}

fn setup_coturn(args: &RelayBenchArgs) -> Option<Target> {
    if args.no_coturn {
        println!("coturn: skipped (--no-coturn)");
        return None;
    }
    if !which(&args.turnserver) {
        println!("coturn: skipped — `{}` not found (Debian: apt-get install coturn)", args.turnserver);
        return None;
    }
    match start_coturn(&args.turnserver, args.flows).and_then(|c| coturn_flows(&c, args).map(|f| (c, f))) {
        Ok((c, flows)) => {
            let pid = c.child.id();
            let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
            println!("coturn: {threads} threads in its process (its default: one relay thread per CPU)");
            Some(Target::new(
                "coturn".into(),
                flows,
                RX_TS_AT_TURN,
                false,
                Some(CpuProbe::Process(pid)),
                Keep::Coturn { _server: c },
            ))
        }
        Err(e) => {
            println!("coturn: skipped — could not drive it: {e}");
            None
        }
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    opt(a.zip(b).filter(|(_, b)| *b > 0.0).map(|(a, b)| a / b), 2)
}

/// Run the benchmark and print the results; the last line is the `summary:` line.
pub fn run_relay_bench(args: &RelayBenchArgs) -> Result<(), String> {
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        return Err(format!("--seconds must be in (0, 600], got {}", args.seconds));
    }
    if !(args.latency_seconds > 0.0 && args.latency_seconds <= 600.0) {
        return Err(format!("--latency-seconds must be in (0, 600], got {}", args.latency_seconds));
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let n = effective_threads(usize::from(args.threads));
    let rounds = usize::from(args.rounds);
    println!(
        "relay bench: {} flows × {} B datagrams, {} s throughput ({} sender threads) + {} s latency ({} pkt/s × {} B paced) per target in {rounds} interleaved rounds, loopback, {cpus} CPUs, threads={n}",
        args.flows,
        args.size,
        args.seconds,
        sender_threads(args).min(args.flows as usize),
        args.latency_seconds,
        args.latency_rate,
        args.latency_size
    );
    println!("load average before: {}", loadavg());

    // Every target is set up first and stays up; then each round measures them one after
    // the other, so a burst of other load on the machine hits all of them alike.
    let mut targets = vec![];
    targets.push(Target::new(
        "direct".into(),
        direct(args).map_err(|e| format!("direct sockets: {e}"))?,
        RX_TS_AT_OURS,
        false,
        None,
        Keep::Direct,
    ));
    // Ours at 1, 2, 4 … N threads: the scaling; the last one is "ours" in the summary.
    for t in thread_steps(n) {
        targets.push(setup_ours(args, t, Offload::default())?);
    }
    let ours_at = targets.len() - 1;
    let coturn_at = setup_coturn(args).map(|t| {
        targets.push(t);
        targets.len() - 1
    });
    targets.push(setup_raw(args, n, Offload::default())?);
    let raw_at = targets.len() - 1;
    let modes: &[Offload] = match args.gso {
        GsoArg::Off => &[],
        GsoArg::Send => &[Offload { gso_send: true, gro: false }],
        GsoArg::All => &[Offload { gso_send: true, gro: true }],
        GsoArg::Both => &[Offload { gso_send: true, gro: false }, Offload { gso_send: true, gro: true }],
    };
    let mut offload_at = vec![];
    for &m in modes {
        targets.push(setup_ours(args, n, m)?);
        targets.push(setup_raw(args, n, m)?);
        offload_at.push((targets.len() - 2, targets.len() - 1));
    }

    for round in 1..=rounds {
        // Every other round in reverse order: no target always follows the same one.
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for &i in &order {
            targets[i].throughput_round(args, args.seconds / rounds as f64, round);
        }
        for &i in &order {
            targets[i].latency_round(args, args.latency_seconds / rounds as f64, round);
        }
    }
    eprintln!("\r{:80}", "");

    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let mut results = vec![];
    let mut ours_stats = vec![];
    for t in targets {
        let (r, lat, keep) = t.finish(args);
        if let Keep::Ours(relay) = &keep {
            ours_stats.push((results.len(), relay.snapshot()));
        }
        results.push((r, lat));
        drop(keep);
    }
    let direct_r = results[0].0;
    let floor = percentile(&results[0].1, 0.5) / 1e3;
    let res: Vec<TargetResult> = results
        .iter()
        .map(|(r, _)| TargetResult {
            p50_us: r.one_way_p50_us - floor,
            p99_us: r.one_way_p99_us - floor,
            ..*r
        })
        .collect();
    let stats_of = |i: usize| ours_stats.iter().find(|(j, _)| *j == i).map(|(_, s)| s);

    println!(
        "direct path (no relay): {:.0} pkt/s (the load generator's own ceiling here, senders {} + receiver {} CPU), one-way latency p50 {floor:.1} µs p99 {:.1} µs (p50 subtracted below)",
        direct_r.pps,
        ms(direct_r.sender_cpu_ns),
        ms(direct_r.receiver_cpu_ns),
        direct_r.one_way_p99_us,
    );
    println!();
    for (name, r) in names.iter().zip(&res).skip(1) {
        line(name, r);
    }
    let (ours_r, raw_r) = (res[ours_at], res[raw_at]);
    let coturn_r = coturn_at.map(|i| res[i]);
    if let Some(s) = stats_of(ours_at) {
        println!(
            "{}: relay counters: forwarded {} (per thread {:?}) dropped {} {:?} (send errors {}, handed off between threads {}), in-relay recv→send p99 {:.1} µs, {:.1} datagrams per recvmmsg",
            names[ours_at],
            s.forwarded_packets,
            s.thread_forwarded,
            s.dropped_total(),
            s.drops().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{}={n}", r.label())).collect::<Vec<_>>(),
            s.plane.send_errors,
            s.plane.misrouted,
            crate::relay::histogram::quantile_ns(&s.latency, 0.99).unwrap_or(0) as f64 / 1e3,
            s.forwarded_packets as f64 / s.plane.recv_batches.max(1) as f64
        );
    }
    for (name, r) in names.iter().zip(&res).skip(1) {
        cpu_line(name, r);
    }
    println!("load average after: {}", loadavg());

    let scaling: Vec<usize> = (1..=ours_at).collect();
    let one = res[1];
    println!(
        "scaling: {} | cpu_ns_per_pkt {}",
        scaling
            .iter()
            .map(|&i| format!("{} {:.0} pkt/s (×{:.2})", names[i], res[i].pps, res[i].pps / one.pps))
            .collect::<Vec<_>>()
            .join(", "),
        scaling
            .iter()
            .map(|&i| format!("{} {}", names[i], opt(res[i].cpu_ns_per_pkt(), 0)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    println!(
        "latency at {} pkt/s × {} B: added one-way p50/p99 µs: {} {:.1}/{:.1}, coturn {}, {} {:.1}/{:.1}; p99 ours/raw={} p99 ours/coturn={}",
        args.latency_rate,
        args.latency_size,
        names[ours_at],
        ours_r.p50_us,
        ours_r.p99_us,
        coturn_r.map_or("skipped".into(), |c| format!("{:.1}/{:.1}", c.p50_us, c.p99_us)),
        names[raw_at],
        raw_r.p50_us,
        raw_r.p99_us,
        ratio(Some(ours_r.p99_us), Some(raw_r.p99_us)),
        ratio(Some(ours_r.p99_us), coturn_r.map(|c| c.p99_us)),
    );
    for &(o, r) in &offload_at {
        println!(
            "offload {}: {} {:.0} pkt/s {} ns/pkt (×{} of plain), {} {:.0} pkt/s {} ns/pkt (×{} of plain), handed off between threads {}",
            &names[o][names[o].find('+').unwrap_or(0)..],
            names[o],
            res[o].pps,
            opt(res[o].cpu_ns_per_pkt(), 0),
            ratio(res[o].cpu_ns_per_pkt(), ours_r.cpu_ns_per_pkt()),
            names[r],
            res[r].pps,
            opt(res[r].cpu_ns_per_pkt(), 0),
            ratio(res[r].cpu_ns_per_pkt(), raw_r.cpu_ns_per_pkt()),
            stats_of(o).map_or(0, |s| s.plane.misrouted),
        );
    }
    let ours_ns = ours_r.cpu_ns_per_pkt();
    let coturn_ns = coturn_r.and_then(|c| c.cpu_ns_per_pkt());
    let raw_ns = raw_r.cpu_ns_per_pkt();
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
        "goals: pkt/s ours/coturn={} (≥ 1.5) ours/raw={:.2} (≥ 0.9); cpu_ns_per_pkt ours/raw={} (≤ 1.1); added p99 ours/raw={} (≤ 1.2)",
        ratio(Some(ours_r.pps), coturn_pps),
        ours_r.pps / raw_r.pps,
        ratio(ours_ns, raw_ns),
        ratio(Some(ours_r.p99_us), Some(raw_r.p99_us)),
    );
    // The data plane as shipped (`relay.gso = true`): the `+gso` run, against coturn, the
    // plain raw forwarder (the reference) and raw with the same offload.
    let shipped_at = offload_at
        .iter()
        .find(|(o, _)| {
            crate::relay::GSO_SEND_DEFAULT
                && names[*o].ends_with(Offload { gso_send: true, gro: false }.suffix())
        })
        .copied();
    let mut shipped_fields = String::new();
    if let Some((o, r)) = shipped_at {
        let (so, sr) = (res[o], res[r]);
        println!(
            "goals as shipped ({}, relay.gso = true): pkt/s ours/coturn={} (≥ 1.5) ours/raw={:.2} ours/{}={:.2} (≥ 0.9); cpu_ns_per_pkt ours/raw={} ours/{}={} (≤ 1.1); added p99 ours/raw={} (≤ 1.2)",
            names[o],
            ratio(Some(so.pps), coturn_pps),
            so.pps / raw_r.pps,
            names[r],
            so.pps / sr.pps,
            ratio(so.cpu_ns_per_pkt(), raw_ns),
            names[r],
            ratio(so.cpu_ns_per_pkt(), sr.cpu_ns_per_pkt()),
            ratio(Some(so.p99_us), Some(raw_r.p99_us)),
        );
        shipped_fields = format!(
            " shipped={:.0} shipped/coturn={}",
            so.pps,
            coturn_pps.map_or("n/a".to_string(), |c| format!("{:.2}", so.pps / c))
        );
    }
    println!(
        "summary: ours={:.0} coturn={} raw={:.0} ours/coturn={} ours/raw={:.2} p99_us={:.1} threads={n}{shipped_fields}",
        ours_r.pps,
        coturn_pps.map_or("skipped".to_string(), |c| format!("{c:.0}")),
        raw_r.pps,
        coturn_pps.map_or("n/a".to_string(), |c| format!("{:.2}", ours_r.pps / c)),
        ours_r.pps / raw_r.pps,
        ours_r.p99_us
    );
    Ok(())
}
