//! Connection timing as distributions over many pairs: introduction → first delivered
//! message (relay-first), → direct path, failover when the direct path dies, and re-punch
//! after an address change. Figures in ms and in RTTs.
//!
//! - In the simulator (virtual time, simulated NATs):
//!   `cargo run -p p2pmodel-tests --release --bin conn-timing -- --seeds 50`
//! - Over loopback (real sockets, real clock, the real relay server):
//!   `cargo run -p p2pmodel-tests --release --bin conn-timing -- --loopback --pairs 200`

use std::time::{Duration, Instant};

use clap::Parser;
use p2pmodel_core::link::{LinkEvent, Path};
use p2pmodel_sim::PathEnd;
use p2pmodel_tests::{NatKind, PairSetup, World, run_pair, setup_pair};

/// Print connection-timing distributions from the simulator, or over loopback.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Seeds per class pair / per scenario (simulator).
    #[arg(long, default_value_t = 50)]
    seeds: u64,
    /// Run real meshes on loopback sockets against the real relay instead of the simulator.
    #[arg(long)]
    loopback: bool,
    /// Pairs to measure (loopback).
    #[arg(long, default_value_t = 200)]
    pairs: usize,
    /// Pairs in flight at once, all driven by one thread (loopback).
    #[arg(long, default_value_t = 10)]
    concurrent: usize,
    /// The streaming side sends one reliable message this often, in ms (loopback; the
    /// simulator always streams at 20 Hz).
    #[arg(long, default_value_t = 10)]
    stream_ms: u64,
    /// Simulator: measure only failover and re-punch (skip the introductions).
    #[arg(long)]
    failover_only: bool,
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn row(name: &str, v: &mut [Duration], unit: Duration, unit_name: &str) {
    if v.is_empty() {
        return; // not measured in this run (`--failover-only`)
    }
    let (p50, p90, p99, max) = (pct(v, 0.5), pct(v, 0.9), pct(v, 0.99), pct(v, 1.0));
    let r = |d: Duration| d.as_secs_f64() / unit.as_secs_f64();
    println!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} / {:.2} {unit_name} |",
        v.len(),
        p50.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        r(p50),
        r(p99)
    );
}

fn main() {
    let args = Args::parse();
    if args.loopback {
        let stream = Duration::from_millis(args.stream_ms.max(1));
        if let Err(e) = loopback::run(args.pairs, args.concurrent.max(1), stream) {
            eprintln!("loopback run failed: {e}");
            std::process::exit(1);
        }
    } else {
        simulator(&args);
    }
}

fn simulator(args: &Args) {
    let started = Instant::now();
    let world = World::new(0);
    let (relay_rtt, peer_rtt) = (world.relay_rtt(), world.peer_rtt());
    drop(world);

    let mut first = Vec::new();
    let mut direct_easy = Vec::new();
    let mut direct_birthday = Vec::new();
    let pairs = [
        (NatKind::FullCone, NatKind::FullCone),
        (NatKind::Restricted, NatKind::PortRestricted),
        (NatKind::PortRestricted, NatKind::PortRestricted),
        (NatKind::PortRestricted, NatKind::SymmetricSequential),
        (NatKind::FullCone, NatKind::SymmetricRandom),
        (NatKind::SymmetricRandom, NatKind::SymmetricRandom),
        (NatKind::FullCone, NatKind::UdpFirewall),
    ];
    for (i, (a, b)) in pairs.iter().enumerate().filter(|_| !args.failover_only) {
        eprint!("\rintroductions: pair {}/{}   ", i + 1, pairs.len());
        for seed in 0..args.seeds {
            let (w, ha, hb, link) = run_pair(7000 + seed, *a, *b, 3);
            let o = w.outcome(ha, hb, link);
            first.extend(o.first_message);
            direct_easy.extend(o.time_to_direct());
        }
    }
    for seed in (0..args.seeds.min(30)).filter(|_| !args.failover_only) {
        eprint!("\rbirthday: seed {seed}        ");
        let (w, ha, hb, link) = run_pair(8000 + seed, NatKind::PortRestricted, NatKind::SymmetricRandom, 6);
        direct_birthday.extend(w.outcome(ha, hb, link).time_to_direct());
    }

    let mut failover = Vec::new();
    let mut failover_b = Vec::new();
    let mut flow = Vec::new();
    let mut stream_ok = 0;
    let mut repunch = Vec::new();
    for seed in 0..args.seeds {
        eprint!("\rfailover / re-punch: seed {seed}   ");
        // failover: block the direct path mid-stream (A streams to B at 20 Hz, B only acks)
        let PairSetup { world: mut w, sites: (sa, sb), a, b, link } =
            setup_pair(9000 + seed, NatKind::PortRestricted, NatKind::FullCone);
        w.client_mut(a).set_stream(Some(Duration::from_millis(50)));
        // at a different phase of the 50 ms send cycle per seed
        w.run(Duration::from_secs(3) + Duration::from_millis(seed * 7 % 50));
        let (ipa, ipb) = (w.sim.nat_public_ip(sa.nat.unwrap()), w.sim.nat_public_ip(sb.nat.unwrap()));
        w.sim.block(PathEnd::Ip(ipa), PathEnd::Ip(ipb));
        let killed = w.sim.now();
        let sent = w.client_ref(a).links[&link].sent;
        w.run(Duration::from_secs(3));
        let relayed =
            |h| w.event_time(h, link, killed, |e| matches!(e, LinkEvent::Path(Path::Relayed { .. })));
        failover.extend(relayed(a).map(|t| t - killed));
        failover_b.extend(relayed(b).map(|t| t - killed));
        let resumed = w.client_ref(b).links[&link].received.iter().find(|r| r.seq >= sent).map(|r| r.at);
        flow.extend(resumed.map(|t| t - killed));
        // then let the stream drain: every message must arrive, once, in order
        w.client_mut(a).set_stream(None);
        w.run(Duration::from_secs(2));
        if w.outcome(a, b, link).stream_ok(0) {
            stream_ok += 1;
        }

        // re-punch: A's NAT changes its public address mid-stream
        let PairSetup { world: mut w, sites: (sa, _), a, b, link } =
            setup_pair(9500 + seed, NatKind::PortRestricted, NatKind::PortRestricted);
        w.client_mut(a).set_stream(Some(Duration::from_millis(50)));
        w.client_mut(b).set_stream(Some(Duration::from_millis(50)));
        w.run(Duration::from_secs(3));
        w.sim.set_nat_public_ip(sa.nat.unwrap(), std::net::Ipv4Addr::new(198, 18, 100, 200)).unwrap();
        let changed = w.sim.now();
        w.run(Duration::from_secs(5));
        let back = [a, b].map(|h| {
            w.event_time(h, link, changed, |e| matches!(e, LinkEvent::Path(Path::Direct { .. })))
                .map(|t| t - changed)
        });
        if let [Some(x), Some(y)] = back {
            repunch.push(x.max(y));
        }
    }
    eprintln!("\rdone in {:.1} s                    ", started.elapsed().as_secs_f64());

    println!("Simulator, {} seeds; home uplinks 15 ± 3 ms, 0.1 % loss, 10 ms core:", args.seeds);
    println!("relay RTT {} ms, direct peer RTT {} ms.\n", relay_rtt.as_millis(), peer_rtt.as_millis());
    println!("| measure | n | p50 ms | p90 ms | p99 ms | max ms | p50 / p99 in RTTs |");
    println!("|---|---|---|---|---|---|---|");
    row("introduction → first message (7 class pairs)", &mut first, relay_rtt, "relay RTT");
    row("introduction → direct (pairs that punch without spraying)", &mut direct_easy, peer_rtt, "peer RTT");
    row(
        "introduction → direct (birthday: port-restricted ↔ symmetric-random)",
        &mut direct_birthday,
        peer_rtt,
        "peer RTT",
    );
    row("direct path blocked → sender (A) on the relay (failover)", &mut failover, relay_rtt, "relay RTT");
    row("direct path blocked → receiver (B) on the relay", &mut failover_b, relay_rtt, "relay RTT");
    row("direct path blocked → next new message delivered", &mut flow, relay_rtt, "relay RTT");
    row("public address change → both ends direct again (re-punch)", &mut repunch, peer_rtt, "peer RTT");
    println!(
        "\nFailover runs whose stream arrived complete (every message sent), in order, without \
         duplicates: {stream_ok} of {}.",
        args.seeds
    );
}

/// The loopback mode: real sockets, the real clock, the real relay server.
mod loopback {
    use std::io;
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use p2pmodel_core::link::{LinkEvent, Path};
    use p2pmodel_core::proto::peer::LinkId;
    use p2pmodel_tests::loopback::{LoopPair, LoopRelay, Pinger, idle, is_direct, is_relayed, quantile};

    /// Let a fresh direct path carry the stream this long before breaking it.
    const SETTLE: Duration = Duration::from_millis(300);
    /// Give up on a stage after this long (the figure is then missing from its row).
    const STAGE_LIMIT: Duration = Duration::from_secs(3);
    /// One raw ping sample (relay and direct) this often, all through the run.
    const PING_EVERY: Duration = Duration::from_millis(20);

    /// What one pair measured.
    #[derive(Debug, Default)]
    struct Times {
        held_first: Option<Duration>,
        first: Option<Duration>,
        first_path_relayed: Option<bool>,
        direct: Option<Duration>,
        srtt: Option<Duration>,
        failover_a: Option<Duration>,
        failover_b: Option<Duration>,
        failover_flow: Option<Duration>,
        repunch: Option<Duration>,
        repunch_flow: Option<Duration>,
        a_left_direct: bool,
        stream_ok: bool,
    }

    enum Stage {
        /// Link 1, direct path blocked: only the relay can carry the first message.
        Held,
        /// Link 2, nothing blocked: first message and direct path.
        Natural,
        /// Streaming on the direct path; then the direct path is blocked.
        SettleBeforeBlock(Instant),
        /// Direct path blocked at this instant; `sent` = A's messages sent before it.
        Blocked(Instant, u32),
        /// Direct path open again: wait for both ends to be direct.
        Restore,
        /// B streams too; then A moves to a new port.
        SettleBeforeRebind(Instant),
        /// A moved to `addr` at this instant; `sent` = B's messages sent before it.
        Rebound(Instant, SocketAddr, u32),
        Done,
    }

    struct Runner {
        pair: LoopPair,
        stream: Duration,
        links: (LinkId, LinkId),
        stage: Stage,
        since: Instant,
        t: Times,
    }

    impl Runner {
        fn new(relay: &LoopRelay, i: u32, stream: Duration) -> io::Result<Runner> {
            let mut pair = LoopPair::new(relay)?;
            let links = (LinkId(2 * i + 1), LinkId(2 * i + 2));
            pair.a_every = Some(stream);
            pair.block_direct(true);
            pair.introduce(relay, links.0);
            let since = pair.intro;
            Ok(Runner { pair, stream, links, stage: Stage::Held, since, t: Times::default() })
        }

        fn next(&mut self, stage: Stage) {
            self.stage = stage;
            self.since = Instant::now();
        }

        /// One driver turn, then move on when this stage's condition holds.
        fn step(&mut self, relay: &LoopRelay) -> bool {
            let busy = self.pair.step();
            let now = Instant::now();
            let timed_out = now - self.since > STAGE_LIMIT;
            let p = &mut self.pair;
            let mut next_stage = None;
            let link = p.link;
            match self.stage {
                Stage::Held => {
                    if let Some(a) = p.b.first_arrival(link, p.intro) {
                        self.t.held_first = Some(a.at - p.intro);
                    }
                    if self.t.held_first.is_some() || timed_out {
                        p.close();
                        p.block_direct(false);
                        p.introduce(relay, self.links.1);
                        next_stage = Some(Stage::Natural);
                    }
                }
                Stage::Natural => {
                    let intro = p.intro;
                    let first = p.b.first_arrival(link, intro);
                    let direct = [&p.a, &p.b].map(|x| x.event_time(link, intro, is_direct));
                    if let (Some(f), [Some(da), Some(db)]) = (first, direct) {
                        self.t.first = Some(f.at - intro);
                        self.t.direct = Some(da.max(db) - intro);
                        let first_path = p.a.links[&link].events.iter().find_map(|(_, e)| match e {
                            LinkEvent::Path(path) if *path != Path::None => Some(is_relayed(e)),
                            _ => None,
                        });
                        self.t.first_path_relayed = first_path;
                        next_stage = Some(Stage::SettleBeforeBlock(now + SETTLE));
                    } else if timed_out {
                        self.t.first = first.map(|f| f.at - intro);
                        next_stage = Some(Stage::Done);
                    }
                }
                Stage::SettleBeforeBlock(until) if now >= until => {
                    self.t.srtt = p.a.mesh.link(link).and_then(|l| l.rtt());
                    p.block_direct(true);
                    let sent = p.a.links[&link].sent;
                    next_stage = Some(Stage::Blocked(Instant::now(), sent));
                }
                Stage::Blocked(at, sent) => {
                    let fa = p.a.event_time(link, at, is_relayed);
                    let fb = p.b.event_time(link, at, is_relayed);
                    let flow =
                        p.b.links[&link].received.iter().find(|r| r.at >= at && r.seq >= sent).map(|r| r.at);
                    if (fa.is_some() && fb.is_some() && flow.is_some()) || timed_out {
                        self.t.failover_a = fa.map(|t| t - at);
                        self.t.failover_b = fb.map(|t| t - at);
                        self.t.failover_flow = flow.map(|t| t - at);
                        p.block_direct(false);
                        next_stage = Some(Stage::Restore);
                    }
                }
                Stage::Restore => {
                    let both = [&p.a, &p.b].iter().all(|x| matches!(x.path(link), Path::Direct { .. }));
                    if both {
                        p.b_every = Some(self.stream);
                        next_stage = Some(Stage::SettleBeforeRebind(now + SETTLE));
                    } else if timed_out {
                        next_stage = Some(Stage::Done);
                    }
                }
                Stage::SettleBeforeRebind(until) if now >= until => match p.a.rebind() {
                    Ok(addr) => {
                        let sent = p.b.links[&link].sent;
                        next_stage = Some(Stage::Rebound(Instant::now(), addr, sent));
                    }
                    Err(_) => next_stage = Some(Stage::Done),
                },
                Stage::Rebound(at, addr, sent) => {
                    let b_new =
                        p.b.event_time(link, at, |e| *e == LinkEvent::Path(Path::Direct { remote: addr }));
                    let a_direct = matches!(p.a.path(link), Path::Direct { .. });
                    let flow =
                        p.a.links[&link].received.iter().find(|r| r.at >= at && r.seq >= sent).map(|r| r.at);
                    if (b_new.is_some() && a_direct && flow.is_some()) || timed_out {
                        self.t.repunch = b_new.filter(|_| a_direct).map(|t| t - at);
                        self.t.repunch_flow = flow.map(|t| t - at);
                        self.t.a_left_direct = p.a.event_time(link, at, is_relayed).is_some();
                        next_stage = Some(Stage::Done);
                    }
                }
                Stage::SettleBeforeBlock(_) | Stage::SettleBeforeRebind(_) | Stage::Done => {}
            }
            if let Some(stage) = next_stage {
                self.next(stage);
            }
            if matches!(self.stage, Stage::Done) {
                let ok = |s: Vec<u32>| s.iter().enumerate().all(|(i, q)| *q == i as u32) && !s.is_empty();
                self.t.stream_ok = ok(self.pair.b.received_seqs(link)) && ok(self.pair.a.received_seqs(link));
            }
            busy
        }
    }

    fn row(name: &str, v: &mut [Duration], unit: Duration, unit_name: &str) {
        if v.is_empty() {
            println!("| {name} | 0 | — | — | — | — | did not happen within {} s |", STAGE_LIMIT.as_secs());
            return;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (p50, p90, p99, max) = (quantile(v, 0.5), quantile(v, 0.9), quantile(v, 0.99), quantile(v, 1.0));
        let r = |d: Duration| d.as_secs_f64() / unit.as_secs_f64();
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} / {:.0} {unit_name} |",
            v.len(),
            ms(p50),
            ms(p90),
            ms(p99),
            ms(max),
            r(p50),
            r(p99)
        );
    }

    /// Measure `pairs` pairs, `concurrent` at a time, and print the table.
    pub fn run(pairs: usize, concurrent: usize, stream: Duration) -> io::Result<()> {
        let started = Instant::now();
        let relay = LoopRelay::start()?;
        let mut relay_ping = Pinger::via_relay(&relay, LinkId(u32::MAX), PING_EVERY)?;
        let mut direct_ping = Pinger::direct(PING_EVERY)?;
        let mut active: Vec<Runner> = Vec::new();
        let mut done: Vec<Times> = Vec::new();
        let mut next = 0u32;
        while done.len() < pairs {
            while active.len() < concurrent && (next as usize) < pairs {
                active.push(Runner::new(&relay, next, stream)?);
                next += 1;
            }
            let mut busy = relay_ping.step() | direct_ping.step();
            for r in active.iter_mut() {
                busy |= r.step(&relay);
            }
            let before = active.len();
            let mut i = 0;
            while i < active.len() {
                if matches!(active[i].stage, Stage::Done) {
                    done.push(std::mem::take(&mut active.swap_remove(i).t));
                } else {
                    i += 1;
                }
            }
            if active.len() != before {
                eprint!("\rloopback: {}/{pairs} pairs done   ", done.len());
            }
            if !busy {
                let t = active
                    .iter()
                    .filter_map(|r| r.pair.poll_timeout())
                    .chain(relay_ping.poll_timeout())
                    .chain(direct_ping.poll_timeout())
                    .min();
                idle(t);
            }
        }
        eprintln!(
            "\rdone in {:.1} s; relay forwarded {} datagrams        ",
            started.elapsed().as_secs_f64(),
            relay.forwarded()
        );

        let col =
            |f: fn(&Times) -> Option<Duration>| -> Vec<Duration> { done.iter().filter_map(f).collect() };
        let mut relay_rtt = relay_ping.samples.clone();
        let mut direct_rtt = direct_ping.samples.clone();
        let mut srtt = col(|t| t.srtt);
        let (relay_unit, direct_unit) = (quantile(&mut relay_rtt, 0.5), quantile(&mut direct_rtt, 0.5));
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "Loopback, {pairs} pairs ({concurrent} at a time, one driver thread polling every {} µs), \
             the real relay server on 127.0.0.1; streams of one reliable message per {} ms.",
            p2pmodel_tests::loopback::POLL.as_micros(),
            stream.as_millis()
        );
        println!(
            "Round trips this driver sees (raw UDP ping, {} + {} samples through the run): \
             relay p50 {:.0} µs / p90 {:.0} µs, direct p50 {:.0} µs / p90 {:.0} µs; \
             the link's own RTT estimate on the direct path p50 {:.0} µs.\n",
            relay_rtt.len(),
            direct_rtt.len(),
            us(relay_unit),
            us(quantile(&mut relay_rtt, 0.9)),
            us(direct_unit),
            us(quantile(&mut direct_rtt, 0.9)),
            us(quantile(&mut srtt, 0.5)),
        );
        println!("| measure | n | p50 ms | p90 ms | p99 ms | max ms | p50 / p99 in RTTs |");
        println!("|---|---|---|---|---|---|---|");
        let (rn, dn) = ("relay RTT", "direct RTT");
        row(
            "introduction → first message, direct held back (relay only)",
            &mut col(|t| t.held_first),
            relay_unit,
            rn,
        );
        row("introduction → first message (nothing held back)", &mut col(|t| t.first), relay_unit, rn);
        row("introduction → direct (both ends)", &mut col(|t| t.direct), direct_unit, dn);
        row(
            "direct path blocked → sender (A) on the relay (failover)",
            &mut col(|t| t.failover_a),
            relay_unit,
            rn,
        );
        row("direct path blocked → receiver (B) on the relay", &mut col(|t| t.failover_b), relay_unit, rn);
        row(
            "direct path blocked → next new message delivered",
            &mut col(|t| t.failover_flow),
            relay_unit,
            rn,
        );
        row(
            "A moves to a new port → B direct to it, A direct (re-punch)",
            &mut col(|t| t.repunch),
            direct_unit,
            dn,
        );
        row(
            "A moves to a new port → next new message from B delivered",
            &mut col(|t| t.repunch_flow),
            direct_unit,
            dn,
        );
        let relayed_first = done.iter().filter(|t| t.first_path_relayed == Some(true)).count();
        let known = done.iter().filter(|t| t.first_path_relayed.is_some()).count();
        let left = done.iter().filter(|t| t.a_left_direct).count();
        let ok = done.iter().filter(|t| t.stream_ok).count();
        println!(
            "\nWith nothing held back, the sender's first path was the relay in {relayed_first} of {known} pairs \
             (else the direct path was validated first). After the port change, A fell back to the relay in \
             {left} of {pairs} pairs. Both streams complete, in order, without duplicates: {ok} of {pairs} pairs."
        );
        Ok(())
    }
}
