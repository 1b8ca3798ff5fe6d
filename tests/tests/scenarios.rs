//! The seed scenarios TC-01…TC-07 and the extra cases, in the simulator.
//!
//! Every test runs the production state machines (mesh, link, STUN server, relay) over
//! simulated NATs in virtual time, and asserts what a player would notice: which path the
//! pair ends on, how long until the first message and until the direct path, and that a
//! stream of sequence-numbered reliable messages arrives complete, in order, once.

use std::time::Duration;

use p2pmodel_core::link::{LinkEvent, Path};
use p2pmodel_core::nat::NatClass;
use p2pmodel_sim::PathEnd;
use p2pmodel_tests::{NatKind, Outcome, PairSetup, World, run_pair, setup_pair};

/// Messages still in flight when a run stops: at 20 msg/s, one relay RTT plus a re-send.
const IN_FLIGHT: u32 = 8;

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn check_stream(o: &Outcome) {
    assert!(o.sent > 100, "the stream ran: {o:?}");
    assert!(o.stream_ok(IN_FLIGHT), "stream complete, in order, no duplicates: {o:?}");
}

/// Relay first: the first message arrives within one relay round trip (+ jitter).
fn check_first_message(w: &World, o: &Outcome) {
    let first = o.first_message.expect("a message arrived");
    assert!(first <= w.relay_rtt() + Duration::from_millis(15), "first message after {} ms", ms(first));
}

fn check_direct(w: &World, o: &Outcome) {
    assert_eq!(o.verdict(), "direct", "{o:?}");
    let t = o.time_to_direct().expect("both ends went direct");
    assert!(t <= w.peer_rtt() * 2 + Duration::from_millis(10), "direct after {} ms", ms(t));
}

#[test]
fn tc01_full_cone_to_full_cone_is_direct() {
    let (w, a, b, link) = run_pair(101, NatKind::FullCone, NatKind::FullCone, 10);
    let o = w.outcome(a, b, link);
    check_direct(&w, &o);
    check_first_message(&w, &o);
    check_stream(&o);
    for h in [a, b] {
        assert_eq!(w.client_ref(h).mesh.nat_report().unwrap().class, NatClass::FullCone);
    }
}

#[test]
fn tc02_restricted_to_port_restricted_is_direct_after_both_probe() {
    let (w, a, b, link) = run_pair(102, NatKind::Restricted, NatKind::PortRestricted, 10);
    let o = w.outcome(a, b, link);
    check_direct(&w, &o);
    check_first_message(&w, &o);
    check_stream(&o);
    for h in [a, b] {
        assert!(w.client_ref(h).mesh.link(link).unwrap().stats().probes_sent > 0, "both sides probe");
    }
    // the port-restricted side's first probes were filtered until its peer probed it
    assert!(w.sim.stats().dropped(p2pmodel_sim::DropReason::NatFilter) > 0);
}

#[test]
fn tc03_symmetric_to_symmetric_is_relayed() {
    let (w, a, b, link) = run_pair(103, NatKind::SymmetricRandom, NatKind::SymmetricRandom, 10);
    let o = w.outcome(a, b, link);
    assert_eq!(o.verdict(), "relayed", "{o:?}");
    assert!(matches!(o.path_from, Path::Relayed { .. }));
    check_first_message(&w, &o);
    check_stream(&o);
}

#[test]
fn tc04_full_cone_to_udp_firewall_falls_back_to_relay() {
    let (w, a, b, link) = run_pair(104, NatKind::FullCone, NatKind::UdpFirewall, 10);
    let o = w.outcome(a, b, link);
    assert_eq!(o.verdict(), "relayed", "{o:?}");
    check_first_message(&w, &o);
    check_stream(&o);
    assert!(w.sim.stats().dropped(p2pmodel_sim::DropReason::Firewall) > 0, "probes hit the firewall");
}

/// TC-05 setup: two port-restricted sites whose NATs forget idle UDP mappings after 20 s.
fn tc05_world(
    seed: u64,
    keepalive: bool,
) -> (World, p2pmodel_sim::HostId, p2pmodel_sim::HostId, p2pmodel_sim::NatId) {
    let mut w = World::new(seed);
    w.mesh_config.link.keepalive = keepalive;
    let timeout = |c: p2pmodel_sim::NatConfig| c.binding_timeout(Duration::from_secs(20));
    let mut sa = w.site_with(NatKind::PortRestricted, timeout);
    let mut sb = w.site_with(NatKind::PortRestricted, timeout);
    let a = w.client(&mut sa);
    let b = w.client(&mut sb);
    w.discover(&[a, b]);
    (w, a, b, sa.nat.unwrap())
}

#[test]
fn tc05_with_keepalive_the_session_survives_nat_binding_timeout() {
    let (mut w, a, b, _) = tc05_world(105, true);
    let link = w.introduce(a, b);
    w.client_mut(a).set_stream(Some(Duration::from_millis(50)));
    w.run(Duration::from_secs(3));
    w.client_mut(a).set_stream(None);
    w.run(Duration::from_secs(90)); // 4.5 × the NAT's binding timeout, idle
    let before = w.client_ref(b).links[&link].received.len();
    w.client_mut(a).set_stream(Some(Duration::from_millis(50)));
    let resumed = w.sim.now();
    w.run(Duration::from_secs(3));
    let log = &w.client_ref(a).links[&link];
    assert!(
        !log.events.iter().any(|(_, e)| matches!(e, LinkEvent::Lost | LinkEvent::DirectPathFailed(_))),
        "{:?}",
        log.events
    );
    let o = w.outcome(a, b, link);
    assert_eq!(o.verdict(), "direct");
    check_stream(&o);
    let after = &w.client_ref(b).links[&link].received[before];
    assert!(after.at - resumed <= w.peer_rtt(), "first message after the idle period went straight through");
}

#[test]
fn tc05_without_keepalive_the_session_ends_is_detected_and_reestablishes() {
    let (mut w, a, b, nat_a) = tc05_world(205, false);
    let link = w.introduce(a, b);
    w.client_mut(a).set_stream(Some(Duration::from_millis(50)));
    w.run(Duration::from_secs(3));
    w.client_mut(a).set_stream(None);
    w.run(Duration::from_secs(90)); // every NAT mapping and the relay binding expire
    assert!(w.sim.nat_mappings(nat_a).is_empty(), "A's NAT forgot the idle mappings");
    let sent_before = w.client_ref(a).links[&link].sent;
    w.client_mut(a).set_stream(Some(Duration::from_millis(200)));
    let resumed = w.sim.now();
    w.run(Duration::from_secs(15));
    // the session ended, and A detected it (B, silent, has nothing to detect with)
    let lost_at =
        w.event_time(a, link, resumed, |e| *e == LinkEvent::Lost).expect("A detects the dead session");
    let cfg = &w.mesh_config.link;
    assert!(
        lost_at - resumed <= cfg.link_timeout + Duration::from_secs(1),
        "detected in {} ms",
        ms(lost_at - resumed)
    );
    let stuck = w.client_ref(b).links[&link].received.len() as u32;
    assert!(stuck <= sent_before, "nothing sent after the timeout got through");
    // B's side comes back (sends, which re-binds its relay mapping): the link re-establishes
    w.client_mut(b).set_stream(Some(Duration::from_millis(200)));
    let b_resumed = w.sim.now();
    w.run(Duration::from_secs(10));
    let recovered =
        w.event_time(a, link, b_resumed, |e| *e == LinkEvent::Recovered).expect("A hears B again");
    assert!(
        recovered - b_resumed <= Duration::from_secs(3),
        "recovered {} ms after B resumed",
        ms(recovered - b_resumed)
    );
    let o = w.outcome(a, b, link);
    check_stream(&o); // everything A queued while the session was dead arrives, once, in order
    assert_ne!(o.verdict(), "failed");
}

#[test]
fn tc06_address_change_mid_stream_keeps_the_link_and_repunches() {
    let PairSetup { world: mut w, sites: (sa, _), a, b, link } =
        setup_pair(106, NatKind::PortRestricted, NatKind::PortRestricted);
    w.client_mut(a).set_stream(Some(Duration::from_millis(50)));
    w.client_mut(b).set_stream(Some(Duration::from_millis(50)));
    w.run(Duration::from_secs(5));
    assert_eq!(w.outcome(a, b, link).verdict(), "direct");
    // Wi-Fi → mobile: A's network now reaches the internet from another public address
    let nat = sa.nat.unwrap();
    w.sim.set_nat_public_ip(nat, std::net::Ipv4Addr::new(198, 18, 100, 200)).unwrap();
    let changed = w.sim.now();
    w.run(Duration::from_secs(10));
    for (x, y) in [(a, b), (b, a)] {
        let log = &w.client_ref(x).links[&link];
        assert!(!log.events.iter().any(|(_, e)| *e == LinkEvent::Lost), "link kept: {:?}", log.events);
        let direct_again = w
            .event_time(x, link, changed, |e| matches!(e, LinkEvent::Path(Path::Direct { .. })))
            .expect("direct again");
        assert!(
            direct_again - changed <= Duration::from_secs(3),
            "direct again after {} ms",
            ms(direct_again - changed)
        );
        let o = w.outcome(x, y, link);
        assert_eq!(o.verdict(), "direct");
        check_stream(&o);
    }
    let Path::Direct { remote } = w.client_ref(b).path(link) else { unreachable!() };
    assert_eq!(remote.ip(), std::net::Ipv4Addr::new(198, 18, 100, 200), "B follows A to its new address");
}

#[test]
fn tc07_random_port_mapping_relays_or_goes_direct_when_the_other_side_allows() {
    for (other, expect) in [
        (NatKind::FullCone, "direct"),
        (NatKind::Restricted, "direct"),
        (NatKind::Open, "direct"),
        (NatKind::PortRestricted, "direct"), // by birthday-paradox punching
        (NatKind::SymmetricRandom, "relayed"),
    ] {
        let (w, a, b, link) = run_pair(107, NatKind::SymmetricRandom, other, 10);
        let o = w.outcome(a, b, link);
        assert_eq!(o.verdict(), expect, "symmetric-random ↔ {}: {o:?}", other.name());
        check_first_message(&w, &o);
        check_stream(&o);
    }
}

#[test]
fn killing_the_direct_path_mid_stream_fails_over_to_the_relay_within_a_second() {
    let PairSetup { world: mut w, sites: (sa, sb), a, b, link } =
        setup_pair(108, NatKind::PortRestricted, NatKind::FullCone);
    w.client_mut(a).set_stream(Some(Duration::from_millis(50)));
    w.run(Duration::from_secs(5));
    assert_eq!(w.outcome(a, b, link).verdict(), "direct");
    let (ipa, ipb) = (w.sim.nat_public_ip(sa.nat.unwrap()), w.sim.nat_public_ip(sb.nat.unwrap()));
    w.sim.block(PathEnd::Ip(ipa), PathEnd::Ip(ipb));
    let killed = w.sim.now();
    w.run(Duration::from_secs(10));
    let relayed_at = w
        .event_time(a, link, killed, |e| matches!(e, LinkEvent::Path(Path::Relayed { .. })))
        .expect("fell back to the relay");
    assert!(relayed_at - killed <= Duration::from_secs(1), "fell back after {} ms", ms(relayed_at - killed));
    // no silence longer than 1 s at the receiver across the switch
    let arrivals = &w.client_ref(b).links[&link].received;
    let worst = arrivals.windows(2).map(|p| p[1].at - p[0].at).max().unwrap();
    assert!(worst <= Duration::from_secs(1), "longest gap between arrivals {} ms", ms(worst));
    let o = w.outcome(a, b, link);
    assert_eq!(o.verdict(), "relayed");
    check_stream(&o);
}

#[test]
fn two_clients_behind_the_same_nat_talk_over_the_lan() {
    let mut w = World::new(109);
    // no hairpinning: the public addresses cannot reach each other from inside
    let mut site = w.site_with(NatKind::PortRestricted, |c| c.hairpinning(false));
    let a = w.client(&mut site);
    let b = w.client(&mut site);
    w.discover(&[a, b]);
    let link = w.introduce(a, b);
    w.client_mut(a).set_stream(Some(Duration::from_millis(50)));
    w.run(Duration::from_secs(10));
    let o = w.outcome(a, b, link);
    assert_eq!(o.verdict(), "direct");
    let Path::Direct { remote } = o.path_from else { unreachable!() };
    assert_eq!(remote, w.sim.host_addr(b), "the LAN (host) candidate won");
    check_stream(&o);
}

#[test]
fn a_public_host_and_a_natted_host_go_direct() {
    let (w, a, b, link) = run_pair(110, NatKind::Open, NatKind::PortRestricted, 10);
    let o = w.outcome(a, b, link);
    check_direct(&w, &o);
    check_stream(&o);
    assert_eq!(w.client_ref(a).mesh.nat_report().unwrap().class, NatClass::Open);
}

#[test]
fn sites_reusing_one_private_range_never_probe_each_other_s_lan() {
    let mut w = World::new(111);
    let mut s1 = w.site(NatKind::PortRestricted);
    let mut s2 = w.site(NatKind::PortRestricted);
    let x = w.client(&mut s1); // 192.168.0.2 on site 1
    let y = w.client(&mut s1); // 192.168.0.3 on site 1 — a bystander
    let _z = w.client(&mut s2); // 192.168.0.2 on site 2
    let v = w.client(&mut s2); // 192.168.0.3 on site 2: X's peer
    w.discover(&[x, y, v]);
    assert_eq!(w.sim.host_addr(y), w.sim.host_addr(v), "the two sites really overlap");
    let link = w.introduce(x, v);
    w.client_mut(x).set_stream(Some(Duration::from_millis(50)));
    w.run(Duration::from_secs(10));
    // The introduction withholds V's private candidate (192.168.0.3) from X behind another
    // NAT, so X never probes its own LAN's Y, which holds that very address.
    let stats = w.client_ref(y).mesh.stats();
    assert_eq!(stats.unknown_link + stats.rejected, 0, "the bystander got no stray probe: {stats:?}");
    assert!(w.client_ref(y).links.is_empty(), "and delivered nothing to its application");
    let o = w.outcome(x, v, link);
    assert_eq!(o.verdict(), "direct");
    let Path::Direct { remote } = o.path_from else { unreachable!() };
    assert_ne!(remote, w.sim.host_addr(v), "not via the colliding private address");
    check_stream(&o);
}

#[test]
fn runs_are_deterministic_for_a_seed() {
    let run = |seed| {
        let (w, a, b, link) = run_pair(seed, NatKind::PortRestricted, NatKind::SymmetricSequential, 5);
        let arrivals: Vec<_> =
            w.client_ref(b).links[&link].received.iter().map(|r| r.at - w.sim.start()).collect();
        (w.outcome(a, b, link).verdict(), arrivals, w.sim.stats().delivered)
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7).1, run(8).1, "a different seed gives a different run");
}

/// What each class pair must achieve (the full matrix; `docs/NAT-MATRIX.md` shows rates).
fn expected(a: NatKind, b: NatKind) -> &'static str {
    use NatKind::*;
    match (a.min(b), a.max(b)) {
        (_, UdpFirewall) => "relayed",
        (Open | FullCone | Restricted, _) => "direct",
        (PortRestricted, PortRestricted | SymmetricSequential) => "direct",
        // birthday-paradox punching: ~98 % direct (see `birthday_paradox_...` below)
        (PortRestricted, SymmetricRandom) => "relayed or direct",
        (SymmetricRandom, _) => "relayed",
        (SymmetricSequential, SymmetricSequential) => "relayed or direct",
        _ => unreachable!(),
    }
}

#[test]
fn full_class_matrix_connects_every_pair() {
    for a in NatKind::ALL {
        for b in NatKind::ALL {
            let (w, ha, hb, link) = run_pair(300, a, b, 8);
            let o = w.outcome(ha, hb, link);
            let want = expected(a, b);
            assert!(
                want.contains(o.verdict()),
                "{} ↔ {}: {} (want {want}) {o:?}",
                a.name(),
                b.name(),
                o.verdict()
            );
            check_first_message(&w, &o);
            check_stream(&o);
            if want == "direct" {
                check_direct(&w, &o);
            }
            // discovery named the class of the preset
            assert_eq!(w.client_ref(ha).mesh.nat_report().unwrap().class, a.expected_class(), "{}", a.name());
        }
    }
}

#[test]
fn birthday_paradox_punches_port_restricted_to_random_symmetric() {
    let seeds = 20;
    let mut direct = 0;
    let mut slowest = Duration::ZERO;
    for seed in 0..seeds {
        let (w, a, b, link) = run_pair(500 + seed, NatKind::PortRestricted, NatKind::SymmetricRandom, 8);
        let o = w.outcome(a, b, link);
        check_stream(&o);
        if o.verdict() == "direct" {
            direct += 1;
            slowest = slowest.max(o.time_to_direct().unwrap());
        }
        // bounded: the sprayer never exceeds its probe budget (+ normal probing)
        let cfg = &w.mesh_config.link;
        let probes = w.client_ref(a).mesh.link(link).unwrap().stats().probes_sent;
        assert!(probes <= u64::from(cfg.birthday_probes) + 400, "{probes} probes");
    }
    // theory: 1 - e^(-256·1024/64512) = 98 %
    assert!(direct >= seeds * 8 / 10, "{direct}/{seeds} direct");
    assert!(slowest <= Duration::from_secs(5), "slowest {} ms", ms(slowest));
}

#[test]
fn relay_tokens_expire_unless_the_shard_refreshes_them() {
    use p2pmodel_core::proto::peer::Side;
    for refresh in [false, true] {
        let mut w = World::new(112);
        let mut sa = w.site(NatKind::SymmetricRandom);
        let mut sb = w.site(NatKind::SymmetricRandom);
        let a = w.client(&mut sa);
        let b = w.client(&mut sb);
        w.discover(&[a, b]);
        let link = w.introduce_with_token_life(a, b, Duration::from_secs(30));
        w.client_mut(a).set_stream(Some(Duration::from_millis(50)));
        w.run(Duration::from_secs(20));
        if refresh {
            for (h, side) in [(a, Side::A), (b, Side::B)] {
                w.refresh_relay_token(h, link, side, Duration::from_secs(30));
            }
        }
        w.run(Duration::from_secs(25)); // past the first tokens' expiry
        let lost = w.client_ref(a).links[&link].events.iter().any(|(_, e)| *e == LinkEvent::Lost);
        let o = w.outcome(a, b, link);
        if refresh {
            assert!(!lost, "refreshed tokens keep the relayed link alive");
            assert_eq!(o.verdict(), "relayed");
            check_stream(&o);
        } else {
            assert!(lost, "an expired token ends relaying, and the session loss is detected");
            let expired = w
                .sim
                .node::<p2pmodel_tests::PunchServer>(w.server)
                .relay()
                .stats()
                .dropped(p2pmodel_core::relay::DropReason::ExpiredToken);
            assert!(expired > 0, "the relay refused to forward on an expired token");
        }
    }
}

// ----- fast failover and one-side-idle links (issue #13) ----------------------------------

use std::time::Instant;

use p2pmodel_core::proto::peer::LinkId;
use p2pmodel_sim::HostId;
use p2pmodel_tests::Site;

/// Start a 20 Hz one-way stream A → B on a punched pair, and after `settle` block the pair's
/// direct path both ways (the relay keeps working). Returns when the block began.
fn one_way_stream_then_kill(p: &mut PairSetup, settle: Duration) -> Instant {
    let PairSetup { world: w, sites, a, b, link } = p;
    w.client_mut(*a).set_stream(Some(Duration::from_millis(50)));
    w.run(settle);
    assert_eq!(w.outcome(*a, *b, *link).verdict(), "direct");
    let ip = |s: &Site| w.sim.nat_public_ip(s.nat.unwrap());
    let (ipa, ipb) = (ip(&sites.0), ip(&sites.1));
    w.sim.block(PathEnd::Ip(ipa), PathEnd::Ip(ipb));
    w.sim.now()
}

/// How long after `after` `host` first reported sending on the relay.
fn relayed_after(w: &World, host: HostId, link: LinkId, after: Instant) -> Option<Duration> {
    w.event_time(host, link, after, |e| matches!(e, LinkEvent::Path(Path::Relayed { .. }))).map(|t| t - after)
}

/// Stop A's stream, let everything in flight arrive, and check that every message A sent
/// arrived at B exactly once, in order (no gaps, no duplicates, nothing missing).
fn drain_and_check_complete(p: &mut PairSetup) {
    let PairSetup { world: w, a, b, link, .. } = p;
    w.client_mut(*a).set_stream(None);
    w.run(Duration::from_secs(3));
    let o = w.outcome(*a, *b, *link);
    assert!(o.sent > 20, "the stream ran: {o:?}");
    assert!(o.stream_ok(0) && o.received == o.sent, "every message arrived once, in order: {o:?}");
}

#[test]
fn both_ends_of_a_one_way_stream_are_on_the_relay_within_300_ms_of_the_direct_path_dying() {
    let limit = Duration::from_millis(300);
    let (mut worst_a, mut worst_b) = (Duration::ZERO, Duration::ZERO);
    for seed in 0..40u64 {
        let mut p = setup_pair(1300 + seed, NatKind::PortRestricted, NatKind::FullCone);
        // the block falls at a different point of the 50 ms send cycle in every run
        let settle = Duration::from_secs(3) + Duration::from_millis(seed * 7 % 50);
        let killed = one_way_stream_then_kill(&mut p, settle);
        let PairSetup { world: w, a, b, link, .. } = &mut p;
        let (a, b, link) = (*a, *b, *link);
        for h in [a, b] {
            let stats = w.client_ref(h).mesh.link(link).unwrap().stats();
            assert_eq!(stats.suspicions, 0, "a healthy path (0.1 % loss) was never suspected");
        }
        w.run(Duration::from_secs(2));
        let ta = relayed_after(w, a, link, killed).expect("the sender moved to the relay");
        let tb = relayed_after(w, b, link, killed).expect("the receiver moved to the relay");
        assert!(ta <= limit && tb <= limit, "seed {seed}: sender {} ms, receiver {} ms", ms(ta), ms(tb));
        (worst_a, worst_b) = (worst_a.max(ta), worst_b.max(tb));
        drain_and_check_complete(&mut p);
        assert_eq!(p.world.outcome(a, b, link).verdict(), "relayed");
    }
    eprintln!("worst: sender {} ms, receiver {} ms", ms(worst_a), ms(worst_b));
}

#[test]
fn a_lossy_jittery_direct_path_costs_at_most_short_relay_detours_and_no_messages() {
    // (core latency, ±jitter, loss) on every core crossing, on top of the home uplinks:
    // a 200 ms-RTT path with 5 % loss and ±25 ms jitter, and a short one with 10 % loss
    for (i, (latency, jitter, loss)) in [(40, 25, 0.05), (10, 10, 0.10)].into_iter().enumerate() {
        let mut w = World::new(1400 + i as u64);
        w.sim.set_core(
            p2pmodel_sim::LinkParams::with_latency(Duration::from_millis(latency))
                .jitter(Duration::from_millis(jitter))
                .loss(loss),
        );
        let mut sa = w.site(NatKind::PortRestricted);
        let mut sb = w.site(NatKind::FullCone);
        let a = w.client(&mut sa);
        let b = w.client(&mut sb);
        w.discover(&[a, b]);
        let link = w.introduce(a, b);
        w.client_mut(a).set_stream(Some(Duration::from_millis(50)));
        w.run(Duration::from_secs(60));
        let mut suspicions = 0;
        for h in [a, b] {
            let stats = w.client_ref(h).mesh.link(link).unwrap().stats();
            let log = &w.client_ref(h).links[&link];
            assert!(
                !log.events
                    .iter()
                    .any(|(_, e)| matches!(e, LinkEvent::DirectPathFailed(_) | LinkEvent::Lost)),
                "loss and jitter never fail the path: {:?}",
                log.events
            );
            assert!(matches!(w.client_ref(h).path(link), Path::Direct { .. }), "{:?}", log.events);
            // a suspicion sends on the relay only until the next answer on the direct path:
            // a few datagrams each (a bind, an ack, what was due), a small share in all
            assert!(stats.relay_sent <= 6 * stats.suspicions + 10, "{stats:?}");
            assert!(stats.relay_sent * 10 < stats.direct_sent, "{stats:?}");
            suspicions += stats.suspicions;
        }
        eprintln!("core {latency} ± {jitter} ms, {} % loss: {suspicions} suspicions in 60 s", loss * 100.0);
        drain_and_check_complete(&mut PairSetup { world: w, sites: (sa, sb), a, b, link });
    }
}

/// A full-cone A and a B behind a random-port symmetric NAT that forgets idle mappings after
/// 20 s, punched direct. B's mapping toward the relay is its own (the NAT maps per
/// destination), so only B's own traffic to the relay keeps it.
fn idle_side_world(seed: u64, keepalive: bool) -> PairSetup {
    let mut w = World::new(seed);
    w.mesh_config.link.keepalive = keepalive;
    let mut sa = w.site(NatKind::FullCone);
    let mut sb = w.site_with(NatKind::SymmetricRandom, |c| c.binding_timeout(Duration::from_secs(20)));
    let a = w.client(&mut sa);
    let b = w.client(&mut sb);
    w.discover(&[a, b]);
    let link = w.introduce(a, b);
    PairSetup { world: w, sites: (sa, sb), a, b, link }
}

#[test]
fn with_keepalive_a_one_way_link_keeps_delivering_past_the_idle_sides_nat_timeout() {
    let mut p = idle_side_world(1500, true);
    let PairSetup { world: w, a, b, link, .. } = &mut p;
    let (a, b, link) = (*a, *b, *link);
    // A sends one message every 30 s; B never sends anything of its own
    w.client_mut(a).set_stream(Some(Duration::from_secs(30)));
    w.run(Duration::from_secs(150));
    let log = &w.client_ref(b).links[&link];
    assert_eq!(log.received.len(), 5, "{:?}", log.received);
    let sent_at = |k: usize| log.received[0].at + Duration::from_secs(30) * k as u32;
    for (k, r) in log.received.iter().enumerate().skip(1) {
        assert!(r.at - sent_at(k) <= w.peer_rtt(), "message {k} went straight through");
    }
    for h in [a, b] {
        let log = &w.client_ref(h).links[&link];
        let direct = log.events.iter().position(|(_, e)| matches!(e, LinkEvent::Path(Path::Direct { .. })));
        let after = &log.events[direct.expect("went direct") + 1..];
        assert!(after.is_empty(), "never left the direct path: {:?}", log.events);
    }
    // then a 20 Hz stream whose direct path dies: B's relay mapping was kept alive too (its
    // relay refreshes)
    let killed = one_way_stream_then_kill(&mut p, Duration::from_secs(2));
    p.world.run(Duration::from_secs(2));
    for h in [a, b] {
        let t = relayed_after(&p.world, h, link, killed).expect("on the relay");
        assert!(t <= Duration::from_millis(300), "on the relay after {} ms", ms(t));
    }
    drain_and_check_complete(&mut p);
}

#[test]
fn without_keepalive_the_idle_sides_dead_relay_mapping_is_detected_and_repaired_on_failover() {
    use p2pmodel_sim::DropReason;
    let mut p = idle_side_world(1501, false);
    // A streams; B only acks, straight to A: its NAT's mapping toward the relay expires
    let killed = one_way_stream_then_kill(&mut p, Duration::from_secs(30));
    let PairSetup { world: w, sites, a, b, link } = &mut p;
    let (a, b, link) = (*a, *b, *link);
    let relay = w.punch_addr();
    let nat_b = sites.1.nat.unwrap();
    assert!(
        !w.sim.nat_mappings(nat_b).iter().any(|m| m.contacted.contains(&relay)),
        "B's NAT forgot its idle mapping toward the relay"
    );
    let unmapped = w.sim.stats().dropped(DropReason::NoMapping);
    w.run(Duration::from_secs(3));
    assert!(
        w.sim.stats().dropped(DropReason::NoMapping) > unmapped,
        "the relay first forwarded A's data to B's dead mapping"
    );
    // A moves to the relay as fast as with keepalive; B, whose stream stopped, pings the dead
    // direct path, suspects it and re-binds at the relay from a fresh mapping
    let ta = relayed_after(w, a, link, killed).expect("A on the relay");
    let tb = relayed_after(w, b, link, killed).expect("B detected the loss and moved to the relay");
    assert!(ta <= Duration::from_millis(300), "A after {} ms", ms(ta));
    assert!(tb <= Duration::from_millis(600), "B after {} ms", ms(tb));
    for h in [a, b] {
        assert!(matches!(w.client_ref(h).path(link), Path::Relayed { .. }));
    }
    drain_and_check_complete(&mut p);
}

#[test]
fn without_keepalive_a_sparse_one_way_link_detects_the_idle_sides_nat_timeout() {
    let PairSetup { world: mut w, a, b, link, .. } = idle_side_world(1502, false);
    // A sends one message every 30 s; B's NAT forgets its idle mapping toward A after 20 s
    let first = w.sim.now();
    w.client_mut(a).set_stream(Some(Duration::from_secs(30)));
    w.run(Duration::from_secs(32));
    let second = first + Duration::from_secs(30);
    assert_eq!(w.client_ref(b).links[&link].received.len(), 1, "the second message met the dead mapping");
    // A noticed at once: on the relay (B's relay mapping is dead too, so the message waits
    // in A's reliable channel) and the direct path declared failed — nothing silently lost
    let relayed = relayed_after(&w, a, link, second).expect("A moved to the relay");
    assert!(relayed <= Duration::from_millis(300), "A on the relay {} ms after sending", ms(relayed));
    let failed = w.event_time(a, link, second, |e| matches!(e, LinkEvent::DirectPathFailed(_)));
    assert!(failed.is_some_and(|t| t - second <= Duration::from_secs(1)), "{failed:?}");
    // B speaks again (fresh mappings): A's waiting message arrives, once, in order
    w.client_mut(a).set_stream(None);
    w.client_mut(b).set_stream(Some(Duration::from_secs(1)));
    w.run(Duration::from_secs(5));
    let o = w.outcome(a, b, link);
    assert!(o.stream_ok(0) && o.received == 2, "{o:?}");
    assert_ne!(o.verdict(), "failed");
}
