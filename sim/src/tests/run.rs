//! The run loop, mid-run changes, bad node output and topology errors.

use std::cell::RefCell;
use std::net::Ipv6Addr;
use std::rc::Rc;

use super::*;

fn two_public_hosts() -> (Sim, HostId, HostId) {
    let mut sim = Sim::new(1);
    let a = sim.add_host(HostConfig::public(S1), Probe::default());
    let b = sim.add_host(HostConfig::public(S2), Probe::echo());
    (sim, a, b)
}

#[test]
fn sim_bad_transmits_are_counted_drops_not_panics() {
    let mut sim = Sim::new(1);
    let n = sim.add_nat(NatConfig::full_cone());
    let c = sim.add_host(HostConfig::behind(n, LAN2), Probe::default());
    let s = sim.add_host(HostConfig::public(S1), Probe::default());
    let good = sa(S1.into(), 4000);
    let me = IpAddr::from(LAN2);
    let cases: Vec<(Option<SocketAddr>, SocketAddr, usize, DropReason)> = vec![
        (Some(sa(v4(10, 0, 0, 9), 1)), good, 1, DropReason::BadSource),
        (Some(sa(me, 0)), good, 1, DropReason::BadSource),
        (None, sa(v4(0, 0, 0, 0), 1), 1, DropReason::BadDestination),
        (None, sa(v4(255, 255, 255, 255), 1), 1, DropReason::BadDestination),
        (None, sa(v4(224, 0, 0, 1), 1), 1, DropReason::BadDestination),
        (None, sa(v4(127, 0, 0, 1), 1), 1, DropReason::BadDestination),
        (None, sa(S1.into(), 0), 1, DropReason::BadDestination),
        (None, good, 1_000_000, DropReason::TooLarge),
        (None, sa(Ipv6Addr::LOCALHOST.into(), 1), 1, DropReason::BadDestination),
        (None, sa("2001:db8::1".parse().unwrap(), 1), 1, DropReason::Unroutable),
        (None, sa(v4(198, 51, 100, 77), 1), 1, DropReason::NoSuchHost),
    ];
    for (src, dst, len, reason) in &cases {
        let before = sim.stats().dropped(*reason);
        sim.node_mut::<Probe>(c).out.push_back(Transmit { src: *src, dst: *dst, payload: vec![0xAB; *len] });
        sim.run_for(Duration::from_millis(10));
        assert_eq!(sim.stats().dropped(*reason), before + 1, "{src:?} -> {dst} ({len} B)");
    }
    assert!(inbox(&sim, s).is_empty());
    assert_eq!(sim.stats().total_dropped(), cases.len() as u64);
    assert_eq!(sim.host_stats(c).total_dropped(), cases.len() as u64);
    // The maximum size itself still goes through.
    sim.node_mut::<Probe>(c).send(None, good, &vec![1; Sim::MAX_UDP_PAYLOAD]);
    sim.run_for(Duration::from_millis(10));
    assert_eq!(inbox(&sim, s).len(), 1);
}

#[test]
fn sim_node_mut_transmits_leave_at_the_current_time() {
    let (mut sim, a, b) = two_public_hosts();
    sim.set_uplink(a, LinkParams::with_latency(Duration::from_millis(10)));
    sim.run_for(Duration::from_secs(5));
    let t0 = sim.now();
    let dst = sim.host_addr(b);
    sim.node_mut::<Probe>(a).send(None, dst, b"hi");
    assert!(sim.step(), "the queued datagram is an event");
    assert!(sim.run_until(t0 + Duration::from_secs(1), |s| !inbox(s, b).is_empty()));
    let rx = &inbox(&sim, b)[0];
    assert_eq!(rx.at, t0 + Duration::from_millis(10));
    assert_eq!(rx.from, sim.host_addr(a));
    // The echo comes back through the same call pattern.
    assert!(sim.run_until(sim.now() + Duration::from_secs(1), |s| { !inbox(s, a).is_empty() }));
    assert_eq!(inbox(&sim, a)[0].at, t0 + Duration::from_millis(20));
}

#[test]
fn sim_jumps_straight_to_the_next_event() {
    let mut sim = Sim::new(1);
    let start = sim.now();
    let b = sim.add_host(HostConfig::public(S2), Probe::default());
    let hourly = Probe::periodic(start, start, Duration::from_secs(3600), 10, vec![sim.host_addr(b)]);
    sim.add_host(HostConfig::public(S1).uplink(LinkParams::with_latency(Duration::from_millis(5))), hourly);
    sim.run_for(Duration::from_secs(11 * 3600));
    assert_eq!(inbox(&sim, b).len(), 10);
    assert_eq!(inbox(&sim, b)[9].at, start + Duration::from_secs(9 * 3600) + Duration::from_millis(5));
    assert!(sim.steps() <= 30, "10 timers + 10 deliveries, got {}", sim.steps());
    assert_eq!(sim.elapsed(), Duration::from_secs(11 * 3600));
    assert!(!sim.step(), "nothing left");
    assert_eq!(sim.next_event_time(), None);
}

#[test]
fn sim_run_until_reports_whether_the_condition_held() {
    let (mut sim, a, b) = two_public_hosts();
    sim.set_uplink(b, LinkParams::with_latency(Duration::from_millis(50)));
    let dst = sim.host_addr(b);
    sim.node_mut::<Probe>(a).send(None, dst, b"x");
    let deadline = sim.now() + Duration::from_millis(60);
    assert!(!sim.run_until(deadline, |s| !inbox(s, a).is_empty()), "echo needs 100 ms");
    assert_eq!(sim.now(), deadline);
    let deadline = sim.now() + Duration::from_millis(60);
    assert!(sim.run_until(deadline, |s| !inbox(s, a).is_empty()));
    assert_eq!(sim.elapsed(), Duration::from_millis(100), "stops at the event, not the deadline");
}

#[test]
fn sim_block_kills_the_direct_path_while_the_relay_works() {
    let mut sim = Sim::new(1);
    let (a_ip, b_ip, r_ip) = (IpAddr::from(S1), IpAddr::from(S2), v4(198, 51, 100, 9));
    let b_addr = sa(b_ip, 4000);
    let a = sim.add_host(HostConfig::public(a_ip), Probe::default());
    let b = sim.add_host(HostConfig::public(b_ip), Probe::default());
    let relay = sim.add_host(HostConfig::public(r_ip), Probe::forwarder(b_addr));
    sim.block(a_ip, b_ip);
    send_and_settle(&mut sim, a, None, b_addr, b"direct");
    assert!(inbox(&sim, b).is_empty());
    assert_eq!(sim.stats().dropped(DropReason::Blocked), 1);
    let r_addr = sim.host_addr(relay);
    send_and_settle(&mut sim, a, None, r_addr, b"relayed");
    assert_eq!(inbox(&sim, b).len(), 1);
    assert_eq!(inbox(&sim, b)[0].from, sa(r_ip, 4000));
    // Blocking is symmetric and per rule; a port-specific rule leaves other ports alone.
    let a_addr = sim.host_addr(a);
    send_and_settle(&mut sim, b, None, a_addr, b"reverse");
    assert_eq!(sim.stats().dropped(DropReason::Blocked), 2);
    assert!(sim.unblock(b_ip, a_ip));
    sim.block(sa(a_ip, 4000), sa(b_ip, 9999));
    send_and_settle(&mut sim, a, None, b_addr, b"direct again");
    assert_eq!(inbox(&sim, b).len(), 2);
    send_and_settle(&mut sim, a, None, sa(b_ip, 9999), b"blocked port");
    assert_eq!(inbox(&sim, b).len(), 2);
    sim.clear_blocks();
    send_and_settle(&mut sim, a, None, sa(b_ip, 9999), b"open port");
    assert_eq!(inbox(&sim, b).len(), 3);
}

#[test]
fn sim_moving_a_host_changes_its_public_address() {
    let mut sim = Sim::new(1);
    let wifi = sim.add_nat(NatConfig::port_restricted().public_ip(NAT_IP));
    let mobile = sim.add_nat(NatConfig::symmetric_random().public_ip([203, 0, 113, 99]));
    let c = sim.add_host(HostConfig::behind(wifi, LAN2), Probe::default());
    let s = sim.add_host(HostConfig::public(S1), Probe::echo());
    let s_addr = sim.host_addr(s);
    send_and_settle(&mut sim, c, None, s_addr, b"wifi");
    assert_eq!(inbox(&sim, c).len(), 1);
    let new_ip = v4(10, 20, 0, 7);
    sim.move_host(c, Realm::Behind(mobile), vec![new_ip]).unwrap();
    assert_eq!(sim.host_addr(c), sa(new_ip, 4000));
    // The server still answers the old address: the Wi-Fi NAT has no host there any more.
    let old = sim.node::<Probe>(s).froms()[0];
    send_and_settle(&mut sim, s, None, old, b"stale");
    assert_eq!(sim.stats().dropped(DropReason::NoSuchHost), 1);
    send_and_settle(&mut sim, c, None, s_addr, b"mobile");
    let froms = sim.node::<Probe>(s).froms();
    assert_eq!(froms[1].ip(), v4(203, 0, 113, 99));
    assert_eq!(inbox(&sim, c).len(), 2, "echo reaches the moved host");
    assert_eq!(sim.host_realm(c), Realm::Behind(mobile));
}

#[test]
fn sim_in_flight_datagrams_to_a_moved_host_are_dropped() {
    let (mut sim, a, b) = two_public_hosts();
    sim.set_uplink(b, LinkParams::with_latency(Duration::from_millis(50)));
    let dst = sim.host_addr(b);
    sim.node_mut::<Probe>(a).send(None, dst, b"x");
    sim.run_for(Duration::from_millis(10));
    sim.move_host(b, Realm::Public, vec![v4(198, 51, 100, 50)]).unwrap();
    sim.run_for(Duration::from_secs(1));
    assert!(inbox(&sim, b).is_empty());
    assert_eq!(sim.stats().dropped(DropReason::NoSuchHost), 1);
}

#[test]
fn sim_trace_hook_sees_every_hop() {
    let mut sim = Sim::new(1);
    let log = Rc::new(RefCell::new(Vec::new()));
    let sink = log.clone();
    sim.set_trace_hook(move |e| sink.borrow_mut().push(e.clone()));
    let n = sim.add_nat(NatConfig::full_cone().public_ip(NAT_IP));
    let c = sim.add_host(HostConfig::behind(n, LAN2), Probe::default());
    let s = sim.add_host(HostConfig::public(S1), Probe::echo());
    let s_addr = sim.host_addr(s);
    send_and_settle(&mut sim, c, None, s_addr, b"t");
    let kinds: Vec<TraceKind> = log.borrow().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            TraceKind::Sent,
            TraceKind::Translated(n),
            TraceKind::Delivered(s),
            TraceKind::Sent,
            TraceKind::Admitted(n),
            TraceKind::Delivered(c),
        ]
    );
    let line = log.borrow()[1].to_string();
    assert!(line.contains("203.0.113.1:4000") && line.contains("translated by nat0"), "{line}");
    assert!(sim.trace().is_empty(), "recording is separate from the hook");
}

/// A node whose deadline never moves forward.
struct Stuck(Instant, u64);
impl Endpoint for Stuck {
    fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: SocketAddr, _: &[u8]) {}
    fn handle_timeout(&mut self, _: Instant) {
        self.1 += 1;
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.0)
    }
}

#[test]
fn sim_a_node_stuck_in_the_past_cannot_stall_the_run() {
    let mut sim = Sim::new(1);
    let start = sim.now();
    let h = sim.add_host(HostConfig::public(S1), Stuck(start, 0));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.elapsed(), Duration::from_secs(1));
    assert!(sim.node::<Stuck>(h).1 >= 1);
    assert!(sim.try_node::<Probe>(h).is_none(), "wrong type is None, not a panic");
}

#[test]
fn sim_topology_errors_are_reported() {
    let mut sim = Sim::new(1);
    let n = sim.add_nat(NatConfig::full_cone().public_ip(NAT_IP));
    sim.add_host(HostConfig::public(S1), Probe::default());
    let taken = sim.try_add_host(HostConfig::public(S1), Probe::default());
    assert_eq!(taken, Err(SimError::AddressInUse { ip: S1.into(), realm: Realm::Public }));
    assert!(matches!(
        sim.try_add_host(HostConfig::public(NAT_IP), Probe::default()),
        Err(SimError::AddressInUse { .. })
    ));
    assert_eq!(
        sim.try_add_host(HostConfig::behind(NatId(7), LAN2), Probe::default()),
        Err(SimError::UnknownNat(NatId(7)))
    );
    assert_eq!(
        sim.try_add_host(HostConfig::public([0, 0, 0, 0]), Probe::default()),
        Err(SimError::BadAddress(v4(0, 0, 0, 0)))
    );
    // The same private address is fine in another realm.
    assert!(sim.try_add_host(HostConfig::behind(n, S1), Probe::default()).is_ok());
    assert!(matches!(
        sim.try_add_nat(NatConfig::full_cone().public_ip(S1)),
        Err(SimError::AddressInUse { .. })
    ));
    assert_eq!(sim.host_count(), 2);
    assert_eq!(sim.nat_count(), 1);
}
