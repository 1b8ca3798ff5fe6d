//! Link impairments measured over many datagrams, and determinism.

use super::*;

const N: u64 = 20_000;

/// Host A (uplink `link`) sends `N` numbered datagrams every 5 ms to B (ideal uplink).
fn measure(link: LinkParams, core: LinkParams, seed: u64) -> (Sim, HostId, HostId) {
    let mut sim = Sim::new(seed);
    sim.set_core(core);
    let start = sim.now();
    let b_addr = sa(S2.into(), 4000);
    let a = sim.add_host(
        HostConfig::public(S1).uplink(link),
        Probe::periodic(start, start, Duration::from_millis(5), N, vec![b_addr]),
    );
    let b = sim.add_host(HostConfig::public(S2), Probe::default());
    sim.run_for(Duration::from_secs(200));
    (sim, a, b)
}

#[test]
fn sim_link_figures_match_the_configuration() {
    let link = LinkParams::with_latency(Duration::from_millis(40))
        .jitter(Duration::from_millis(10))
        .loss(0.1)
        .duplicate(0.05);
    let (sim, a, b) = measure(link, LinkParams::IDEAL, 11);
    let start = sim.start();
    let rx = &sim.node::<Probe>(b).inbox;

    let mut seen = std::collections::BTreeSet::new();
    let mut total_latency = Duration::ZERO;
    let mut reordered = 0;
    let mut last_seq = 0;
    for r in rx {
        let (seq, sent) = decode(&r.data);
        let latency = r.at - (start + sent);
        assert!(latency >= Duration::from_millis(30) && latency <= Duration::from_millis(50));
        total_latency += latency;
        if seq < last_seq {
            reordered += 1;
        }
        last_seq = seq;
        seen.insert(seq);
    }
    let unique = seen.len() as f64;
    let loss = 1.0 - unique / N as f64;
    let dup = (rx.len() as f64 - unique) / unique;
    let mean = total_latency / rx.len() as u32;
    assert!((loss - 0.1).abs() < 0.01, "loss {loss}");
    assert!((dup - 0.05).abs() < 0.01, "dup {dup}");
    let err = mean.abs_diff(Duration::from_millis(40));
    assert!(err < Duration::from_micros(500), "mean latency {mean:?}");
    assert!(reordered > 100, "jitter of ±10 ms over 5 ms spacing reorders: {reordered}");

    // The counters agree with what the receiver saw.
    let st = sim.stats();
    assert_eq!(st.sent, N);
    assert_eq!(st.delivered, rx.len() as u64);
    assert_eq!(st.dropped(DropReason::Loss), N - seen.len() as u64);
    assert_eq!(st.duplicated, rx.len() as u64 - seen.len() as u64);
    assert_eq!(sim.host_stats(a).sent, N);
    assert_eq!(sim.host_stats(b).delivered, rx.len() as u64);
}

#[test]
fn sim_link_without_jitter_keeps_order_and_exact_delay() {
    let link = LinkParams::with_latency(Duration::from_millis(30));
    let core = LinkParams::with_latency(Duration::from_millis(25));
    let (sim, _, b) = measure(link, core, 1);
    let start = sim.start();
    let rx = &sim.node::<Probe>(b).inbox;
    assert_eq!(rx.len() as u64, N);
    for (i, r) in rx.iter().enumerate() {
        let (seq, sent) = decode(&r.data);
        assert_eq!(seq, i as u64);
        assert_eq!(r.at - (start + sent), Duration::from_millis(55), "uplink + core");
    }
}

#[test]
fn sim_link_loss_compounds_over_both_uplinks() {
    let mut sim = Sim::new(21);
    let start = sim.now();
    let lossy = LinkParams::IDEAL.loss(0.2);
    let b_addr = sa(S2.into(), 4000);
    sim.add_host(
        HostConfig::public(S1).uplink(lossy),
        Probe::periodic(start, start, Duration::from_millis(5), N, vec![b_addr]),
    );
    let b = sim.add_host(HostConfig::public(S2).uplink(lossy), Probe::default());
    sim.run_for(Duration::from_secs(200));
    let got = sim.node::<Probe>(b).inbox.len() as f64 / N as f64;
    assert!((got - 0.64).abs() < 0.015, "0.8 × 0.8 delivered, got {got}");
}

/// Three hosts behind different NATs exchange datagrams over jittery, lossy links.
fn busy_trace(seed: u64) -> Vec<TraceEvent> {
    let mut sim = Sim::new(seed);
    sim.record_trace(true);
    sim.set_core(LinkParams::with_latency(Duration::from_millis(10)).jitter(Duration::from_millis(5)));
    let link = LinkParams::with_latency(Duration::from_millis(20))
        .jitter(Duration::from_millis(15))
        .loss(0.05)
        .duplicate(0.02);
    let server = sim.add_host(HostConfig::public(S1).uplink(link), Probe::echo());
    let s = sim.host_addr(server);
    let start = sim.now();
    for (i, cfg) in [NatConfig::full_cone(), NatConfig::symmetric_random(), NatConfig::port_restricted()]
        .into_iter()
        .enumerate()
    {
        let n = sim.add_nat(cfg);
        let every = Duration::from_millis(20 + i as u64);
        sim.add_host(
            HostConfig::behind(n, LAN2).uplink(link),
            Probe::periodic(start, start, every, 300, vec![s, sa(S2.into(), 9)]),
        );
    }
    sim.run_for(Duration::from_secs(10));
    sim.take_trace()
}

#[test]
fn sim_same_seed_same_trace_other_seed_other_trace() {
    let a = busy_trace(99);
    assert!(a.len() > 3000, "{}", a.len());
    assert!(a.iter().any(|e| matches!(e.kind, TraceKind::Dropped(DropReason::Loss))));
    assert!(a.iter().any(|e| matches!(e.kind, TraceKind::Dropped(DropReason::NoSuchHost))));
    assert_eq!(busy_trace(99), a);
    let b = busy_trace(100);
    assert_ne!(b, a);
    // The difference is in timing (jitter), not only in which datagrams were lost.
    let times = |t: &[TraceEvent]| -> Vec<Duration> {
        t.iter().filter(|e| matches!(e.kind, TraceKind::Delivered(_))).map(|e| e.at).take(50).collect()
    };
    assert_ne!(times(&a), times(&b));
}
