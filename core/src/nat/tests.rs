//! Discovery against our [`StunServer`] through a tiny in-test NAT, in virtual time.
//!
//! The NAT here is deliberately minimal (one internal host, no timeouts, no hairpin); the
//! full RFC 4787 simulator lives in the `p2pmodel-sim` crate and is not used, so this module tests
//! discovery on its own.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::endpoint::Endpoint;
use crate::stun::{StunServer, StunServerConfig};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MapKind {
    Eim,
    Adm,
    Apdm,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FilterKind {
    Eif,
    Adf,
    Apdf,
}

enum Alloc {
    Preserve,
    Sequential { next: u16, step: u16 },
    Random(Box<ChaCha8Rng>),
}

struct FakeNat {
    public_ip: IpAddr,
    mapping: MapKind,
    filtering: FilterKind,
    alloc: Alloc,
    /// (internal, mapping key) → external port.
    table: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// external port → internal address.
    reverse: HashMap<u16, SocketAddr>,
    /// (external port, remote) pairs we have sent to.
    sent_to: HashSet<(u16, SocketAddr)>,
}

impl FakeNat {
    fn new(mapping: MapKind, filtering: FilterKind, alloc: Alloc) -> Self {
        FakeNat {
            public_ip: "203.0.113.7".parse().unwrap(),
            mapping,
            filtering,
            alloc,
            table: HashMap::new(),
            reverse: HashMap::new(),
            sent_to: HashSet::new(),
        }
    }

    fn outbound(&mut self, internal: SocketAddr, dst: SocketAddr) -> SocketAddr {
        let key = match self.mapping {
            MapKind::Eim => None,
            MapKind::Adm => Some(SocketAddr::new(dst.ip(), 0)),
            MapKind::Apdm => Some(dst),
        };
        let port = match self.table.get(&(internal, key)) {
            Some(p) => *p,
            None => {
                let p = match &mut self.alloc {
                    Alloc::Preserve => internal.port(),
                    Alloc::Sequential { next, step } => {
                        let p = *next;
                        *next += *step;
                        p
                    }
                    Alloc::Random(rng) => rng.random_range(1024..=65535),
                };
                self.table.insert((internal, key), p);
                self.reverse.insert(p, internal);
                p
            }
        };
        self.sent_to.insert((port, dst));
        SocketAddr::new(self.public_ip, port)
    }

    fn inbound(&self, from: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
        if to.ip() != self.public_ip {
            return None;
        }
        let internal = *self.reverse.get(&to.port())?;
        let allowed = match self.filtering {
            FilterKind::Eif => true,
            FilterKind::Adf => self.sent_to.iter().any(|(p, r)| *p == to.port() && r.ip() == from.ip()),
            FilterKind::Apdf => self.sent_to.contains(&(to.port(), from)),
        };
        allowed.then_some(internal)
    }
}

enum Path {
    Direct,
    Nat(Box<FakeNat>),
    Blocked,
}

const LOCAL: &str = "10.0.0.2:5000";

fn server_config() -> StunServerConfig {
    StunServerConfig::rfc5780(sa("198.51.100.1:3478"), 3479, "198.51.100.2".parse().unwrap())
}

/// Run discovery to completion in virtual time; return the report and the virtual time used.
fn run(mut path: Path, local: SocketAddr, server: StunServerConfig) -> (NatReport, Duration, NatDiscovery) {
    let t0 = Instant::now();
    let mut now = t0;
    let mut srv = StunServer::new(server.clone());
    let srv_addrs = srv.local_addrs();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut d = NatDiscovery::new(now, server.primary, None, local, NatDiscoveryConfig::default(), &mut rng);
    for _ in 0..10_000 {
        let mut progressed = false;
        while let Some(t) = d.poll_transmit() {
            progressed = true;
            assert_eq!(t.src, None, "discovery uses the client's one socket");
            let src = match &mut path {
                Path::Direct => local,
                Path::Nat(n) => n.outbound(local, t.dst),
                Path::Blocked => continue,
            };
            if srv_addrs.contains(&t.dst) {
                srv.handle_datagram(now, t.dst, src, &t.payload);
            }
        }
        while let Some(t) = srv.poll_transmit() {
            progressed = true;
            let from = t.src.expect("server names its source");
            let to = match &path {
                Path::Direct => (t.dst == local).then_some(local),
                Path::Nat(n) => n.inbound(from, t.dst),
                Path::Blocked => None,
            };
            if let Some(to) = to {
                d.handle_datagram(now, to, from, &t.payload);
            }
        }
        if progressed {
            continue;
        }
        if d.is_done() {
            return (d.report(), now - t0, d);
        }
        now = d.poll_timeout().expect("unfinished discovery must have a deadline");
        d.handle_timeout(now);
    }
    panic!("discovery did not finish");
}

fn run_nat(nat: FakeNat) -> (NatReport, Duration, NatDiscovery) {
    run(Path::Nat(Box::new(nat)), sa(LOCAL), server_config())
}

fn give_up() -> Duration {
    NatDiscoveryConfig::default().retransmit.give_up_after()
}

#[test]
fn no_nat_is_open() {
    let local = sa("198.51.100.77:5000");
    let (r, took, _) = run(Path::Direct, local, server_config());
    assert_eq!(r.class, NatClass::Open);
    assert_eq!(r.class.to_string(), "open");
    assert_eq!(r.public, Some(local));
    assert_eq!(r.mapping, Mapping::NoNat);
    assert_eq!(r.filtering, Filtering::EndpointIndependent);
    assert_eq!(r.other, Some(sa("198.51.100.2:3479")), "learnt from OTHER-ADDRESS");
    assert_eq!(took, Duration::ZERO, "nothing had to time out");
}

#[test]
fn full_cone() {
    let (r, took, _) = run_nat(FakeNat::new(MapKind::Eim, FilterKind::Eif, Alloc::Preserve));
    assert_eq!(r.class, NatClass::FullCone);
    assert_eq!(r.public, Some(sa("203.0.113.7:5000")));
    assert_eq!((r.mapping, r.filtering), (Mapping::EndpointIndependent, Filtering::EndpointIndependent));
    assert_eq!(r.allocation, PortAllocation::Preserving);
    assert_eq!(took, Duration::ZERO);
}

#[test]
fn restricted_cone() {
    let (r, took, _) = run_nat(FakeNat::new(MapKind::Eim, FilterKind::Adf, Alloc::Preserve));
    assert_eq!(r.class, NatClass::Restricted);
    assert_eq!(r.filtering, Filtering::AddressDependent);
    // Only the change-IP test had to time out; the change-port one ran beside it.
    assert_eq!(took, give_up());
}

#[test]
fn port_restricted_cone() {
    let (r, took, _) =
        run_nat(FakeNat::new(MapKind::Eim, FilterKind::Apdf, Alloc::Sequential { next: 61000, step: 1 }));
    assert_eq!(r.class, NatClass::PortRestricted);
    assert_eq!(r.class.to_string(), "port-restricted");
    assert_eq!(r.public, Some(sa("203.0.113.7:61000")));
    assert_eq!(r.filtering, Filtering::AddressAndPortDependent);
    // One mapping only: whether the allocator is sequential cannot be seen.
    assert_eq!(r.allocation, PortAllocation::Unknown);
    assert_eq!(took, give_up(), "the two filtering tests time out in parallel");
}

#[test]
fn symmetric_random() {
    let rng = ChaCha8Rng::seed_from_u64(99);
    let (r, _, d) = run_nat(FakeNat::new(MapKind::Apdm, FilterKind::Apdf, Alloc::Random(Box::new(rng))));
    assert_eq!(r.class, NatClass::Symmetric);
    assert_eq!(r.mapping, Mapping::AddressAndPortDependent);
    assert_eq!(r.allocation, PortAllocation::Random);
    assert_eq!(r.port_delta, None);
    // Test I, II, III and the one extra probe (to ip1:port2): four distinct mappings.
    let o = d.observations();
    assert_eq!(o.extra.len(), 1);
    assert_eq!(o.extra[0].0, sa("198.51.100.1:3479"));
    let mut ports: Vec<u16> = [o.primary, o.alt_ip, o.alt_ip_port, o.extra[0].1]
        .iter()
        .map(|p| p.mapped().unwrap().port())
        .collect();
    ports.dedup();
    assert_eq!(ports.len(), 4);
}

#[test]
fn symmetric_sequential_reports_the_delta() {
    let (r, _, _) =
        run_nat(FakeNat::new(MapKind::Apdm, FilterKind::Apdf, Alloc::Sequential { next: 40000, step: 2 }));
    assert_eq!(r.class, NatClass::Symmetric);
    assert_eq!(r.allocation, PortAllocation::Sequential { delta: 2 });
    assert_eq!(r.port_delta, Some(2));
    assert_eq!(r.public, Some(sa("203.0.113.7:40000")));
}

#[test]
fn address_dependent_mapping_is_symmetric() {
    let (r, _, _) =
        run_nat(FakeNat::new(MapKind::Adm, FilterKind::Adf, Alloc::Sequential { next: 40000, step: 1 }));
    assert_eq!((r.mapping, r.class), (Mapping::AddressDependent, NatClass::Symmetric));
    assert_eq!(r.filtering, Filtering::AddressDependent);
}

#[test]
fn blocked() {
    let (r, took, d) = run(Path::Blocked, sa(LOCAL), server_config());
    assert_eq!(r.class, NatClass::Blocked);
    assert_eq!(r.class.to_string(), "blocked");
    assert_eq!(r.public, None);
    assert_eq!(took, give_up());
    assert_eq!(d.observations().filter_ip_port, Probe::NotRun);
}

#[test]
fn server_without_alternate_address_gives_unknown_behaviour_but_a_public_address() {
    let (r, took, _) = run(
        Path::Nat(Box::new(FakeNat::new(MapKind::Eim, FilterKind::Eif, Alloc::Preserve))),
        sa(LOCAL),
        StunServerConfig::single(sa("198.51.100.1:3478")),
    );
    assert_eq!(r.public, Some(sa("203.0.113.7:5000")));
    assert_eq!((r.mapping, r.filtering, r.class), (Mapping::Unknown, Filtering::Unknown, NatClass::Unknown));
    assert_eq!(took, Duration::ZERO);
}

#[test]
fn stray_datagrams_are_ignored_not_fatal() {
    let t0 = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let server = sa("198.51.100.1:3478");
    let mut d = NatDiscovery::new(t0, server, None, sa(LOCAL), NatDiscoveryConfig::default(), &mut rng);
    let first = d.poll_transmit().unwrap();
    d.handle_datagram(t0, sa(LOCAL), server, b"\x20not stun");
    d.handle_datagram(t0, sa(LOCAL), server, &first.payload); // our own request echoed
    assert_eq!(d.ignored(), 2);
    assert!(!d.is_done());
    assert_eq!(d.observations().primary, Probe::Pending);
}

#[test]
fn report_serializes_with_seed_names() {
    let (r, _, _) = run_nat(FakeNat::new(MapKind::Eim, FilterKind::Adf, Alloc::Preserve));
    let fields = [
        ("class", r.class.as_str()),
        ("mapping", r.mapping.as_str()),
        ("filtering", r.filtering.as_str()),
        ("allocation", r.allocation.as_str()),
    ];
    assert_eq!(
        fields,
        [
            ("class", "restricted"),
            ("mapping", "endpoint-independent"),
            ("filtering", "address-dependent"),
            ("allocation", "preserving"),
        ]
    );
}
