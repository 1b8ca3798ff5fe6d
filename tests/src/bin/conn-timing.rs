//! Connection timing in the simulator, as distributions over many pairs and seeds:
//! introduction → first delivered message (relay-first), → direct path, failover when the
//! direct path dies, and re-punch after an address change. Figures in ms and in RTTs.
//!
//! `cargo run -p p2pmodel-tests --release --bin conn-timing -- --seeds 50`

use std::time::{Duration, Instant};

use bevy_p2pmodel::link::{LinkEvent, Path};
use bevy_p2pmodel::sim::PathEnd;
use clap::Parser;
use p2pmodel_tests::{NatKind, PairSetup, World, run_pair, setup_pair};

/// Print connection-timing distributions from the simulator.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Seeds per class pair / per scenario.
    #[arg(long, default_value_t = 50)]
    seeds: u64,
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn row(name: &str, v: &mut [Duration], unit: Duration, unit_name: &str) {
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
    for (i, (a, b)) in pairs.iter().enumerate() {
        eprint!("\rintroductions: pair {}/{}   ", i + 1, pairs.len());
        for seed in 0..args.seeds {
            let (w, ha, hb, link) = run_pair(7000 + seed, *a, *b, 3);
            let o = w.outcome(ha, hb, link);
            first.extend(o.first_message);
            direct_easy.extend(o.time_to_direct());
        }
    }
    for seed in 0..args.seeds.min(30) {
        eprint!("\rbirthday: seed {seed}        ");
        let (w, ha, hb, link) = run_pair(8000 + seed, NatKind::PortRestricted, NatKind::SymmetricRandom, 6);
        direct_birthday.extend(w.outcome(ha, hb, link).time_to_direct());
    }

    let mut failover = Vec::new();
    let mut repunch = Vec::new();
    for seed in 0..args.seeds {
        eprint!("\rfailover / re-punch: seed {seed}   ");
        // failover: block the direct path mid-stream
        let PairSetup { world: mut w, sites: (sa, sb), a, link, .. } =
            setup_pair(9000 + seed, NatKind::PortRestricted, NatKind::FullCone);
        w.client_mut(a).set_stream(Some(Duration::from_millis(50)));
        w.run(Duration::from_secs(3));
        let (ipa, ipb) = (w.sim.nat_public_ip(sa.nat.unwrap()), w.sim.nat_public_ip(sb.nat.unwrap()));
        w.sim.block(PathEnd::Ip(ipa), PathEnd::Ip(ipb));
        let killed = w.sim.now();
        w.run(Duration::from_secs(3));
        let relayed = w.event_time(a, link, killed, |e| matches!(e, LinkEvent::Path(Path::Relayed { .. })));
        failover.extend(relayed.map(|t| t - killed));

        // re-punch: A's NAT changes its public address mid-stream
        let PairSetup { world: mut w, sites: (sa, _), a, b, link } =
            setup_pair(9500 + seed, NatKind::PortRestricted, NatKind::PortRestricted);
        w.client_mut(a).set_stream(Some(Duration::from_millis(50)));
        w.client_mut(b).set_stream(Some(Duration::from_millis(50)));
        w.run(Duration::from_secs(3));
        w.sim.set_nat_public_ip(sa.nat.unwrap(), std::net::Ipv4Addr::new(198, 51, 100, 200)).unwrap();
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
    row("direct path blocked → sending on the relay (failover)", &mut failover, relay_rtt, "relay RTT");
    row("public address change → both ends direct again (re-punch)", &mut repunch, peer_rtt, "peer RTT");
}
