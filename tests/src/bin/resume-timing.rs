//! Sessions through shard outages, in the simulator with the real shard roles: how long
//! after the shard's return the sessions are resumed (p50/p99), how many peer messages were
//! lost during the outage (must be 0), and how long links live with no shard at all.
//!
//! `cargo run -p p2pmodel-tests --release --bin resume-timing -- --seeds 50`

use std::time::{Duration, Instant};

use clap::Parser;
use p2pmodel_core::client::{ClientEvent, PeerPath, Phase, ShardNotice};
use p2pmodel_sim::HostId;
use p2pmodel_tests::NatKind;
use p2pmodel_tests::shard_world::ShardWorld;

/// Print resume and survival figures as Markdown.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Simulated outages (seeds) per measure.
    #[arg(long, default_value_t = 50)]
    seeds: u64,
    /// Hours of simulated time without any shard for the survival measure.
    #[arg(long, default_value_t = 2)]
    hours: u64,
}

const SEC: Duration = Duration::from_secs(1);

/// Four players at the spawn point (a direct pair and a relayed pair among the six links),
/// streaming to each other at 20 Hz.
fn world(seed: u64) -> (ShardWorld, [HostId; 4]) {
    let mut w = ShardWorld::new(seed, |_| {});
    let kinds =
        [NatKind::PortRestricted, NatKind::FullCone, NatKind::SymmetricRandom, NatKind::SymmetricRandom];
    let mut hosts = Vec::new();
    for (i, k) in kinds.into_iter().enumerate() {
        let mut site = w.world.site(k);
        hosts.push(w.player(&mut site, &format!("p{i}"), 0));
    }
    let hosts: [HostId; 4] = hosts.try_into().expect("four");
    for h in &hosts[1..] {
        assert!(w.until_introduced(hosts[0], *h, 10 * SEC), "introduced");
    }
    w.stream(&hosts);
    w.run(5 * SEC);
    (w, hosts)
}

fn pct(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
}

fn main() {
    let args = Args::parse();
    let started = Instant::now();
    let (mut resume, mut lost, mut dups, mut kept, mut reintro) = (Vec::new(), 0u64, 0u64, 0u64, 0u64);
    for seed in 0..args.seeds {
        eprint!("\routage {}/{}   ", seed + 1, args.seeds);
        let (mut w, hosts) = world(500 + seed);
        // Outages from 2 to 30 s, crash at a random phase of the backoff.
        let outage = Duration::from_millis(2_000 + (seed * 7_919) % 28_000);
        let t = w.world.sim.now();
        w.shard.crash();
        w.run(outage);
        w.shard.restart();
        let back = w.world.sim.now();
        let deadline = back + 20 * SEC;
        let done = w.world.sim.run_until(deadline, |sim| {
            hosts
                .iter()
                .all(|h| sim.node::<p2pmodel_tests::shard_world::Player>(*h).core.phase() == Phase::InGame)
        });
        assert!(done, "seed {seed}: not resumed within 20 s");
        // The last player back in its zone.
        let last = hosts
            .iter()
            .filter_map(|h| {
                w.p(*h).events.iter().rev().find_map(|(at, e)| {
                    (*at >= back && matches!(e, ClientEvent::Shard(ShardNotice::EnteredZone { .. })))
                        .then_some(*at)
                })
            })
            .max()
            .expect("entered");
        resume.push(last - back);
        w.run(3 * SEC);
        for h in hosts {
            let p = w.p(h);
            for peer in p.core.peers() {
                let (_, gaps, d) = p.stream_from(peer.player);
                lost += u64::from(gaps);
                dups += u64::from(d);
            }
            reintro += p
                .events
                .iter()
                .filter(|(at, e)| {
                    *at > t && matches!(e, ClientEvent::PeerAdded { .. } | ClientEvent::PeerRemoved { .. })
                })
                .count() as u64;
        }
        kept += w.shard.with(|s| s.games().iter().map(|g| g.stats.links_kept).sum::<u64>());
    }
    // Survival: the shard never comes back.
    eprint!("\rsurvival: {} h without a shard   ", args.hours);
    let (mut w, hosts) = world(9_999);
    w.shard.crash();
    let t = w.world.sim.now();
    let mut alive_at = Vec::new();
    for hour in 1..=args.hours {
        w.run(Duration::from_secs(3600));
        let p = w.p(hosts[0]);
        let paths: Vec<String> = p.core.peers().map(|x| format!("{:?}", x.path)).collect();
        let fresh = |h: HostId, from: HostId| {
            let id = w.id(from);
            w.p(h)
                .received
                .get(&id)
                .is_some_and(|g| g.last().is_some_and(|l| l.at > w.world.sim.now() - 5 * SEC))
        };
        let direct_ok = fresh(hosts[1], hosts[0]);
        let relayed_ok = fresh(hosts[3], hosts[2]);
        alive_at.push((hour, direct_ok, relayed_ok, paths));
    }
    let _ = t;
    eprintln!("\rdone in {:.1} s{}", started.elapsed().as_secs_f64(), " ".repeat(30));

    let n = resume.len();
    println!(
        "Simulator, real shard roles (`SimShard`), 4 players at one spawn point (6 links: direct and relayed), 20 Hz reliable streams both ways; the whole shard crashes (every role loses its memory, the store survives) for 2–30 s, then restarts. Clients reconnect with backoff 250 ms doubling to 4 s (the plugin adds ±25 % jitter).\n"
    );
    println!("| measure | n | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    let max = resume.iter().max().copied().unwrap_or_default().as_secs_f64() * 1000.0;
    println!(
        "| shard back → every session resumed (in its zone again) | {n} | {:.0} ms | {:.0} ms | {max:.0} ms |",
        pct(&mut resume, 0.5),
        pct(&mut resume, 0.99)
    );
    println!("\n- peer messages lost during the outages: **{lost}**, duplicated: **{dups}**");
    println!(
        "- links kept by the restarted Game servers: {kept} (of {} before the crashes); re-introductions or dropped peers seen by the players: {reintro}",
        6 * n
    );
    println!("\nWith no shard at all (it never comes back):\n");
    println!("| after | direct pair delivering | relayed pair delivering |");
    println!("|---|---|---|");
    for (hour, d, r, _) in &alive_at {
        println!("| {hour} h | {} | {} |", if *d { "yes" } else { "no" }, if *r { "yes" } else { "no" });
    }
    let _ = PeerPath::Direct;
}
