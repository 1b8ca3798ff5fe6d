//! RFC 4787 behaviours of the NAT model.

use super::*;

fn s1(port: u16) -> SocketAddr {
    sa(S1.into(), port)
}
fn s2(port: u16) -> SocketAddr {
    sa(S2.into(), port)
}
fn nat(port: u16) -> SocketAddr {
    sa(NAT_IP.into(), port)
}

// ----- mapping ----------------------------------------------------------------------------

#[test]
fn sim_nat_eim_keeps_one_public_port_for_all_destinations() {
    let mut lab = Lab::new(NatConfig::port_restricted());
    lab.client_sends(s1(4000));
    lab.client_sends(s1(5000));
    lab.client_sends(s2(4000));
    assert_eq!(lab.seen_by(lab.s1), vec![nat(4000), nat(4000)]);
    assert_eq!(lab.seen_by(lab.s2), vec![nat(4000)]);
    let maps = lab.sim.nat_mappings(lab.nat);
    assert_eq!(maps.len(), 1);
    assert_eq!(maps[0].scope, MappingScope::Any);
    assert_eq!(maps[0].internal, sa(LAN2.into(), 4000));
}

#[test]
fn sim_nat_adm_allocates_one_mapping_per_destination_ip() {
    let mut lab =
        Lab::new(NatConfig { mapping: MappingBehavior::AddressDependent, ..NatConfig::full_cone() });
    lab.client_sends(s1(4000));
    lab.client_sends(s1(5000));
    lab.client_sends(s2(4000));
    let seen1 = lab.seen_by(lab.s1);
    let seen2 = lab.seen_by(lab.s2);
    assert_eq!(seen1[0], seen1[1], "same IP, other port: same mapping");
    assert_ne!(seen1[0].port(), seen2[0].port(), "other IP: new mapping");
    assert_eq!(lab.sim.nat_mappings(lab.nat).len(), 2);
}

#[test]
fn sim_nat_apdm_allocates_one_mapping_per_destination_address() {
    let mut lab = Lab::new(NatConfig::symmetric_sequential());
    lab.client_sends(s1(4000));
    lab.client_sends(s1(5000));
    lab.client_sends(s2(4000));
    lab.client_sends(s1(4000));
    let mut ports: Vec<u16> = lab.seen_by(lab.s1).iter().map(|a| a.port()).collect();
    let seen2 = lab.seen_by(lab.s2)[0].port();
    assert_eq!(ports[0], ports[2], "same destination reuses its mapping");
    ports.push(seen2);
    ports.remove(2);
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "three destinations, three public ports");
    assert_eq!(lab.sim.nat_mappings(lab.nat).len(), 3);
}

#[test]
fn sim_nat_mapping_is_per_internal_socket() {
    let mut lab = Lab::new(NatConfig::port_restricted());
    let c = lab.client;
    let lan = IpAddr::from(LAN2);
    send_and_settle(&mut lab.sim, c, Some(sa(lan, 4000)), s1(4000), b"a");
    send_and_settle(&mut lab.sim, c, Some(sa(lan, 7777)), s1(4000), b"b");
    assert_eq!(lab.seen_by(lab.s1), vec![nat(4000), nat(7777)]);
}

// ----- filtering --------------------------------------------------------------------------

#[test]
fn sim_nat_nothing_gets_in_before_an_outbound_datagram() {
    let mut lab = Lab::new(NatConfig::full_cone());
    assert!(!lab.server_sends(lab.s1, 4000, nat(4000)));
    assert_eq!(lab.drops(DropReason::NoMapping), 1);
}

#[test]
fn sim_nat_eif_admits_anyone_on_an_existing_mapping() {
    let mut lab = Lab::new(NatConfig::full_cone());
    lab.client_sends(s1(4000));
    assert!(lab.server_sends(lab.s1, 4000, nat(4000)));
    assert!(lab.server_sends(lab.s1, 6000, nat(4000)));
    assert!(lab.server_sends(lab.s2, 4000, nat(4000)), "never contacted, still admitted");
    assert!(!lab.server_sends(lab.s2, 4000, nat(4001)), "no mapping on that port");
    assert_eq!(lab.drops(DropReason::NoMapping), 1);
    assert_eq!(lab.drops(DropReason::NatFilter), 0);
    let rx = &inbox(&lab.sim, lab.client)[2];
    assert_eq!(rx.from, s2(4000));
    assert_eq!(rx.local, sa(LAN2.into(), 4000), "delivered to the internal address");
}

#[test]
fn sim_nat_adf_admits_contacted_ips_from_any_port() {
    let mut lab = Lab::new(NatConfig::restricted());
    lab.client_sends(s1(4000));
    assert!(lab.server_sends(lab.s1, 4000, nat(4000)));
    assert!(lab.server_sends(lab.s1, 6000, nat(4000)));
    assert!(!lab.server_sends(lab.s2, 4000, nat(4000)));
    assert_eq!(lab.drops(DropReason::NatFilter), 1);
    // Once the client contacts S2 (any port), S2 gets in from any port.
    lab.client_sends(s2(9));
    assert!(lab.server_sends(lab.s2, 4000, nat(4000)));
}

#[test]
fn sim_nat_apdf_admits_only_contacted_addresses() {
    let mut lab = Lab::new(NatConfig::port_restricted());
    lab.client_sends(s1(4000));
    assert!(lab.server_sends(lab.s1, 4000, nat(4000)));
    assert!(!lab.server_sends(lab.s1, 6000, nat(4000)), "same IP, other port");
    assert!(!lab.server_sends(lab.s2, 4000, nat(4000)));
    assert_eq!(lab.drops(DropReason::NatFilter), 2);
    lab.client_sends(s1(6000));
    assert!(lab.server_sends(lab.s1, 6000, nat(4000)));
}

// ----- port allocation --------------------------------------------------------------------

#[test]
fn sim_nat_preserving_keeps_the_port_and_falls_back_on_collision() {
    let mut lab = Lab::new(NatConfig::full_cone());
    let other = lab.sim.add_host(HostConfig::behind(lab.nat, LAN3), Probe::default());
    let odd = lab.sim.add_host(HostConfig::behind(lab.nat, [192, 168, 0, 4]).port(5555), Probe::default());
    lab.client_sends(s1(4000));
    send_and_settle(&mut lab.sim, other, None, s1(4000), b"x");
    send_and_settle(&mut lab.sim, odd, None, s1(4000), b"y");
    assert_eq!(lab.seen_by(lab.s1), vec![nat(4000), nat(4001), nat(5555)]);
}

#[test]
fn sim_nat_sequential_allocation_steps_by_the_configured_amount() {
    let cfg = NatConfig {
        port_range: 10_000..=10_999,
        ..NatConfig::symmetric_sequential().port_allocation(PortAllocation::Sequential { step: 3 })
    };
    let mut lab = Lab::new(cfg);
    for p in 0..6 {
        lab.client_sends(s1(5000 + p));
    }
    let ports: Vec<u32> = lab.seen_by(lab.s1).iter().map(|a| u32::from(a.port())).collect();
    assert_eq!(ports.len(), 6);
    for w in ports.windows(2) {
        assert!((10_000..=10_999).contains(&w[1]));
        assert_eq!((w[1] + 1000 - w[0]) % 1000, 3, "{ports:?}");
    }
}

fn random_ports(seed: u64) -> Vec<u16> {
    let mut sim = Sim::new(seed);
    let cfg = NatConfig { port_range: 30_000..=39_999, ..NatConfig::symmetric_random() };
    let n = sim.add_nat(cfg.public_ip(NAT_IP));
    let c = sim.add_host(HostConfig::behind(n, LAN2), Probe::default());
    let s = sim.add_host(HostConfig::public(S1), Probe::default());
    for p in 0..20 {
        send_and_settle(&mut sim, c, None, s1(5000 + p), b"r");
    }
    sim.node::<Probe>(s).froms().iter().map(|a| a.port()).collect()
}

#[test]
fn sim_nat_random_allocation_is_unpredictable_but_seeded() {
    let ports = random_ports(1);
    assert_eq!(ports.len(), 20);
    assert!(ports.iter().all(|p| (30_000..=39_999).contains(p)));
    let mut uniq = ports.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert_eq!(uniq.len(), 20, "distinct ports");
    let sequential = ports.windows(2).filter(|w| w[1].wrapping_sub(w[0]) < 4).count();
    assert!(sequential < 3, "not sequential: {ports:?}");
    assert_eq!(random_ports(1), ports, "same seed, same ports");
    assert_ne!(random_ports(2), ports, "other seed, other ports");
}

#[test]
fn sim_nat_several_public_ips_are_paired_per_internal_ip() {
    let mut sim = Sim::new(3);
    let pub_a = v4(203, 0, 113, 10);
    let pub_b = v4(203, 0, 113, 11);
    let n = sim.add_nat(NatConfig { public_ips: vec![pub_a, pub_b], ..NatConfig::symmetric_sequential() });
    let c1 = sim.add_host(HostConfig::behind(n, LAN2), Probe::default());
    let c2 = sim.add_host(HostConfig::behind(n, LAN3), Probe::default());
    let s = sim.add_host(HostConfig::public(S1), Probe::default());
    for p in 0..3 {
        send_and_settle(&mut sim, c1, None, s1(5000 + p), b"1");
        send_and_settle(&mut sim, c2, None, s1(5000 + p), b"2");
    }
    let ips: Vec<IpAddr> = sim.node::<Probe>(s).froms().iter().map(|a| a.ip()).collect();
    assert_eq!(ips, vec![pub_a, pub_b, pub_a, pub_b, pub_a, pub_b]);
    assert_eq!(sim.nat_public_ips(n), &[pub_a, pub_b]);
}

// ----- hairpinning ------------------------------------------------------------------------

/// Client and a neighbour behind one full-cone NAT; the neighbour has a mapping (port 4001).
fn hairpin_lab(hairpin: bool) -> (Lab, HostId) {
    let mut lab = Lab::new(NatConfig::full_cone().hairpinning(hairpin));
    let other = lab.sim.add_host(HostConfig::behind(lab.nat, LAN3), Probe::default());
    lab.client_sends(s1(4000));
    send_and_settle(&mut lab.sim, other, None, s1(4000), b"x");
    assert_eq!(lab.seen_by(lab.s1)[1], nat(4001));
    (lab, other)
}

#[test]
fn sim_nat_hairpin_on_delivers_with_the_public_source() {
    let (mut lab, other) = hairpin_lab(true);
    lab.client_sends(nat(4001));
    let rx = inbox(&lab.sim, other);
    assert_eq!(rx.len(), 1);
    assert_eq!(rx[0].from, nat(4000), "REQ-9: the external source address");
    assert_eq!(rx[0].local, sa(LAN3.into(), 4000));
}

#[test]
fn sim_nat_hairpin_off_drops() {
    let (mut lab, other) = hairpin_lab(false);
    lab.client_sends(nat(4001));
    assert!(inbox(&lab.sim, other).is_empty());
    assert_eq!(lab.drops(DropReason::HairpinOff), 1);
    // The LAN path still works.
    lab.client_sends(sa(LAN3.into(), 4000));
    assert_eq!(inbox(&lab.sim, other)[0].from, sa(LAN2.into(), 4000));
}

// ----- binding timeout --------------------------------------------------------------------

#[test]
fn sim_nat_mapping_expires_after_the_binding_timeout() {
    let mut lab = Lab::new(NatConfig::port_restricted().binding_timeout(Duration::from_secs(30)));
    lab.client_sends(s1(4000)); // t = 1 s after
    lab.sim.run_for(Duration::from_secs(20));
    assert!(lab.server_sends(lab.s1, 4000, nat(4000)), "idle 21 s < 30 s");
    lab.sim.run_for(Duration::from_secs(30));
    assert!(lab.sim.nat_mappings(lab.nat).is_empty());
    assert!(!lab.server_sends(lab.s1, 4000, nat(4000)), "idle > 30 s: expired");
    assert_eq!(lab.drops(DropReason::NoMapping), 1);
}

#[test]
fn sim_nat_outbound_keepalives_refresh_the_binding() {
    let mut sim = Sim::new(5);
    let n =
        sim.add_nat(NatConfig::port_restricted().public_ip(NAT_IP).binding_timeout(Duration::from_secs(30)));
    let now = sim.now();
    let keepalive = Probe::periodic(now, now, Duration::from_secs(20), 10, vec![s1(4000)]);
    let c = sim.add_host(HostConfig::behind(n, LAN2), keepalive);
    let s = sim.add_host(HostConfig::public(S1), Probe::default());
    sim.run_for(Duration::from_secs(190));
    assert!(sim.node::<Probe>(s).froms().iter().all(|a| *a == nat(4000)));
    assert_eq!(sim.nat_mappings(n).len(), 1);
    send_and_settle(&mut sim, s, None, nat(4000), b"still there");
    assert_eq!(inbox(&sim, c).len(), 1);
    // Keepalives stopped at 180 s: gone 30 s later.
    sim.run_for(Duration::from_secs(30));
    send_and_settle(&mut sim, s, None, nat(4000), b"gone");
    assert_eq!(inbox(&sim, c).len(), 1);
    assert_eq!(sim.stats().dropped(DropReason::NoMapping), 1);
}

/// Client sends once; S1 then sends every 20 s for 200 s. Returns how many got in.
fn inbound_only(refresh: bool) -> usize {
    let mut sim = Sim::new(5);
    let n = sim.add_nat(
        NatConfig::full_cone()
            .public_ip(NAT_IP)
            .binding_timeout(Duration::from_secs(30))
            .inbound_refresh(refresh),
    );
    let c = sim.add_host(HostConfig::behind(n, LAN2), Probe::default());
    send_and_settle(&mut sim, c, None, s1(4000), b"open");
    let now = sim.now();
    let server = Probe::periodic(now, now, Duration::from_secs(20), 10, vec![nat(4000)]);
    sim.add_host(HostConfig::public(S1), server);
    sim.run_for(Duration::from_secs(200));
    inbox(&sim, c).len()
}

#[test]
fn sim_nat_inbound_refresh_is_configurable() {
    assert_eq!(inbound_only(true), 10, "inbound traffic keeps the mapping");
    // Sent at 1, 21 and 41 s after the client's datagram at 0 s... the one at 41 s is late.
    assert_eq!(inbound_only(false), 2, "without inbound refresh it expires at 30 s");
}

// ----- firewall ---------------------------------------------------------------------------

#[test]
fn sim_nat_udp_firewall_admits_only_the_allow_list() {
    let mut lab = Lab::new(NatConfig::udp_firewall([IpAddr::from(S1)]));
    lab.client_sends(s1(4000));
    assert_eq!(lab.seen_by(lab.s1), vec![nat(4000)]);
    assert!(lab.server_sends(lab.s1, 4000, nat(4000)));
    lab.client_sends(s2(4000));
    assert!(lab.seen_by(lab.s2).is_empty());
    assert!(!lab.server_sends(lab.s2, 4000, nat(4000)));
    assert_eq!(lab.drops(DropReason::Firewall), 2);
}

// ----- realms and address changes ---------------------------------------------------------

#[test]
fn sim_sites_with_the_same_private_range_are_isolated() {
    let mut sim = Sim::new(9);
    let site1 = sim.add_nat(NatConfig::full_cone());
    let site2 = sim.add_nat(NatConfig::full_cone());
    let a2 = sim.add_host(HostConfig::behind(site1, LAN2), Probe::default());
    let a3 = sim.add_host(HostConfig::behind(site1, LAN3), Probe::default());
    let b2 = sim.add_host(HostConfig::behind(site2, LAN2), Probe::default());
    let lan3 = sa(LAN3.into(), 4000);
    send_and_settle(&mut sim, b2, None, lan3, b"wrong site");
    assert!(inbox(&sim, a3).is_empty());
    assert_eq!(sim.stats().dropped(DropReason::NoSuchHost), 1);
    send_and_settle(&mut sim, a2, None, lan3, b"lan");
    assert_eq!(inbox(&sim, a3)[0].from, sa(LAN2.into(), 4000), "LAN: no translation");
    assert!(sim.nat_mappings(site1).is_empty());
    send_and_settle(&mut sim, a3, None, sa(LAN2.into(), 4000), b"back");
    assert_eq!(inbox(&sim, a2).len(), 1);
    assert!(inbox(&sim, b2).is_empty(), "site 2's 192.168.0.2 never sees site 1 traffic");
    // Both NATs got distinct automatic public IPs.
    assert_ne!(sim.nat_public_ip(site1), sim.nat_public_ip(site2));
}

#[test]
fn sim_nat_public_ip_change_loses_every_mapping() {
    let mut lab = Lab::new(NatConfig::full_cone());
    lab.client_sends(s1(4000));
    assert!(lab.server_sends(lab.s1, 4000, nat(4000)));
    let new_ip = v4(203, 0, 113, 2);
    lab.sim.set_nat_public_ip(lab.nat, new_ip).unwrap();
    assert_eq!(lab.sim.nat_public_ip(lab.nat), new_ip);
    assert!(lab.sim.nat_mappings(lab.nat).is_empty());
    assert!(!lab.server_sends(lab.s1, 4000, nat(4000)), "old IP is gone");
    assert_eq!(lab.drops(DropReason::NoSuchHost), 1);
    assert!(!lab.server_sends(lab.s1, 4000, sa(new_ip, 4000)), "no mapping on the new IP");
    assert_eq!(lab.drops(DropReason::NoMapping), 1);
    lab.client_sends(s1(4000));
    assert_eq!(lab.seen_by(lab.s1).last(), Some(&sa(new_ip, 4000)));
}

#[test]
fn sim_nat_flush_forgets_mappings_but_keeps_the_ip() {
    let mut lab = Lab::new(NatConfig::full_cone());
    lab.client_sends(s1(4000));
    lab.sim.flush_nat(lab.nat);
    assert!(!lab.server_sends(lab.s1, 4000, nat(4000)));
    assert_eq!(lab.drops(DropReason::NoMapping), 1);
    assert_eq!(lab.sim.nat_public_ip(lab.nat), IpAddr::from(NAT_IP));
}

#[test]
fn sim_nested_nat_translates_twice() {
    let mut sim = Sim::new(4);
    let cgnat = sim.add_nat(NatConfig::symmetric_sequential().public_ip(NAT_IP));
    let home =
        sim.add_nat(NatConfig::port_restricted().public_ip([100, 64, 0, 2]).outer(Realm::Behind(cgnat)));
    let c = sim.add_host(HostConfig::behind(home, LAN2), Probe::default());
    let s = sim.add_host(HostConfig::public(S1), Probe::echo());
    send_and_settle(&mut sim, c, None, s1(4000), b"deep");
    let seen = sim.node::<Probe>(s).froms()[0];
    assert_eq!(seen.ip(), IpAddr::from(NAT_IP));
    let back = inbox(&sim, c);
    assert_eq!(back.len(), 1, "the echo comes back through both NATs");
    assert_eq!(back[0].from, s1(4000));
    assert_eq!(sim.nat_mapping_for(home, sa(LAN2.into(), 4000), s1(4000)), Some(sa(v4(100, 64, 0, 2), 4000)));
}
