//! Candidate addresses of a peer (RFC 8445 vocabulary) and port prediction.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use crate::proto::intro::{Candidate, CandidateKind, MAX_PORT_DELTA, NatHint, clamp_port_delta};

// An inherent impl outside `proto`: the wire type stays free of the NAT discovery module.
impl NatHint {
    /// The hint for a NAT that discovery classified.
    pub fn from_report(report: &crate::nat::NatReport) -> NatHint {
        use crate::nat::{Mapping, PortAllocation};
        NatHint {
            dependent_mapping: matches!(
                report.mapping,
                Mapping::AddressDependent | Mapping::AddressAndPortDependent
            ),
            port_delta: match report.allocation {
                PortAllocation::Sequential { delta } => Some(delta),
                _ => None,
            },
        }
        .sanitized()
    }
}

/// Can a datagram be sent to this address at all? Refuses port 0 and unspecified,
/// multicast and (IPv4) broadcast addresses ([`Refusal::Unusable`]): probing them is useless
/// or harmful whoever listed them. Which *scopes* are acceptable (private, loopback) is the
/// shard's decision.
pub fn is_probeable(addr: &SocketAddr) -> bool {
    scope(addr) != Err(Refusal::Unusable)
}

/// Where an address is reachable from, for the per-pair decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A global address: any peer may probe it.
    Public,
    /// A private range (RFC 1918, CGNAT 100.64/10, IPv6 ULA fc00::/7): only meaningful to
    /// a peer behind the same NAT.
    Private,
    /// Loopback: only meaningful to a peer on the same host.
    Loopback,
}

/// Why a candidate was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Port 0, an unspecified, multicast or broadcast address.
    Unusable,
    /// IPv4 169.254/16 or IPv6 fe80::/10: needs an interface, meaningless to another host.
    LinkLocal,
    /// Documentation (192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32), "this
    /// network" 0/8, reserved 240/4, IPv6 discard-only 100::/64.
    Reserved,
}

/// The scope of an address, or why nobody should send to it.
pub fn scope(addr: &SocketAddr) -> Result<Scope, Refusal> {
    let ip = addr.ip().to_canonical();
    if addr.port() == 0 || ip.is_unspecified() || ip.is_multicast() {
        return Err(Refusal::Unusable);
    }
    match ip {
        IpAddr::V4(v4) => scope_v4(v4),
        IpAddr::V6(v6) => scope_v6(v6),
    }
}

fn scope_v4(ip: Ipv4Addr) -> Result<Scope, Refusal> {
    let o = ip.octets();
    if ip.is_broadcast() {
        Err(Refusal::Unusable)
    } else if ip.is_link_local() {
        Err(Refusal::LinkLocal)
    } else if ip.is_documentation() || o[0] == 0 || o[0] >= 240 {
        Err(Refusal::Reserved)
    } else if ip.is_loopback() {
        Ok(Scope::Loopback)
    } else if ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        Ok(Scope::Private)
    } else {
        Ok(Scope::Public)
    }
}

fn scope_v6(ip: Ipv6Addr) -> Result<Scope, Refusal> {
    let s = ip.segments();
    if (s[0] & 0xffc0) == 0xfe80 {
        Err(Refusal::LinkLocal)
    } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) {
        Err(Refusal::Reserved)
    } else if ip.is_loopback() {
        Ok(Scope::Loopback)
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Ok(Scope::Private)
    } else {
        Ok(Scope::Public)
    }
}

/// A peer's candidate list made safe to work on, in linear time: relayed and unprobeable
/// candidates dropped ([`is_probeable`]), duplicates of an address dropped (first kept),
/// stopped at `cap` entries. Whatever the input's length, the result holds at most `cap`.
pub fn clean_candidates<'a>(cands: impl IntoIterator<Item = &'a Candidate>, cap: usize) -> Vec<Candidate> {
    let mut seen = HashSet::with_capacity(cap.min(64));
    let mut out = Vec::with_capacity(cap.min(64));
    for c in cands {
        if out.len() >= cap {
            break;
        }
        if c.kind != CandidateKind::Relayed && is_probeable(&c.addr) && seen.insert(c.addr) {
            out.push(*c);
        }
    }
    out
}

/// Predicted candidates for a peer behind a sequential, destination-dependent NAT: the next
/// `span` ports after each server-reflexive mapping, stepping by the allocator's delta.
/// A delta beyond ±[`MAX_PORT_DELTA`] predicts nothing; the arithmetic cannot overflow and
/// every predicted port is in 1024..=65535.
pub fn predict(remote: &[Candidate], hint: &NatHint, span: u16) -> Vec<Candidate> {
    let (true, Some(delta)) = (hint.dependent_mapping, clamp_port_delta(hint.port_delta)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in remote.iter().filter(|c| c.kind == CandidateKind::ServerReflexive) {
        for k in 1..=i64::from(span) {
            // |delta| ≤ 64 and k ≤ 65535: far inside i64, whatever the inputs.
            let port = i64::from(c.addr.port()) + i64::from(delta) * k;
            let Ok(port) = u16::try_from(port) else { break }; // past either end: done
            if port >= 1024 {
                out.push(Candidate::new(CandidateKind::Predicted, SocketAddr::new(c.addr.ip(), port)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicts_only_for_sequential_dependent_nats() {
        let srflx = Candidate::new(CandidateKind::ServerReflexive, "198.51.100.7:40000".parse().unwrap());
        let host = Candidate::new(CandidateKind::Host, "10.0.0.2:5000".parse().unwrap());
        let seq = NatHint { dependent_mapping: true, port_delta: Some(2) };
        let p = predict(&[srflx, host], &seq, 3);
        let ports: Vec<u16> = p.iter().map(|c| c.addr.port()).collect();
        assert_eq!(ports, vec![40002, 40004, 40006]);
        assert!(p.iter().all(|c| c.kind == CandidateKind::Predicted && c.addr.ip() == srflx.addr.ip()));
        assert!(predict(&[srflx], &NatHint { dependent_mapping: true, port_delta: None }, 3).is_empty());
        assert!(predict(&[srflx], &NatHint { dependent_mapping: false, port_delta: Some(1) }, 3).is_empty());
        let top = Candidate::new(CandidateKind::ServerReflexive, "198.51.100.7:65534".parse().unwrap());
        assert_eq!(predict(&[top], &NatHint { dependent_mapping: true, port_delta: Some(1) }, 5).len(), 1);
    }

    #[test]
    fn hostile_port_deltas_never_overflow_and_stay_in_range() {
        let deltas =
            [i32::MIN, i32::MIN + 1, -65_536, -65, -64, -1, 0, 1, 64, 65, 65_536, i32::MAX - 1, i32::MAX];
        for port in [1u16, 2, 1023, 1024, 40_000, 65_534, 65_535] {
            let srflx = Candidate::new(
                CandidateKind::ServerReflexive,
                SocketAddr::new([198, 51, 100, 7].into(), port),
            );
            for d in deltas {
                let hint = NatHint { dependent_mapping: true, port_delta: Some(d) };
                let p = predict(&[srflx], &hint, 2000);
                if d == 0 || d.unsigned_abs() > 64 {
                    assert!(p.is_empty(), "delta {d} is not plausible: no prediction");
                    assert_eq!(hint.sanitized().port_delta, None);
                } else {
                    assert_eq!(hint.sanitized().port_delta, Some(d));
                }
                assert!(p.iter().all(|c| c.addr.port() >= 1024), "port {port} delta {d}");
                assert!(p.len() <= 2000);
                assert!(p.iter().all(|c| c.addr.port().abs_diff(port) % d.unsigned_abs().max(1) as u16 == 0));
            }
        }
        let near_top = Candidate::new(CandidateKind::ServerReflexive, "198.51.100.7:65530".parse().unwrap());
        let up = predict(&[near_top], &NatHint { dependent_mapping: true, port_delta: Some(64) }, 8);
        assert!(up.is_empty(), "65530 + 64 is past 65535");
        let down = predict(&[near_top], &NatHint { dependent_mapping: true, port_delta: Some(-64) }, 2);
        let ports: Vec<u16> = down.iter().map(|c| c.addr.port()).collect();
        assert_eq!(ports, [65_466, 65_402]);
    }

    #[test]
    fn cleaning_is_linear_capped_and_deduplicated() {
        // 100,000 candidates: 99,990 copies of one address, then junk, then fresh ones.
        let dup = Candidate::new(CandidateKind::Host, "192.168.1.2:5000".parse().unwrap());
        let mut cands = vec![dup; 99_990];
        cands.push(Candidate::new(CandidateKind::Host, "0.0.0.0:5000".parse().unwrap()));
        cands.push(Candidate::new(CandidateKind::Host, "192.168.1.3:0".parse().unwrap()));
        cands.push(Candidate::new(CandidateKind::Host, "224.0.0.1:5000".parse().unwrap()));
        cands.push(Candidate::new(CandidateKind::Host, "255.255.255.255:5000".parse().unwrap()));
        cands.push(Candidate::new(CandidateKind::Relayed, "198.51.100.1:3478".parse().unwrap()));
        for i in 0..95u16 {
            cands.push(Candidate::new(
                CandidateKind::ServerReflexive,
                SocketAddr::new([198, 51, 100, 9].into(), 1000 + i),
            ));
        }
        assert_eq!(cands.len(), 100_090);
        let clean = clean_candidates(&cands, 16);
        assert_eq!(clean.len(), 16, "capped");
        assert_eq!(clean[0], dup, "first copy kept");
        assert_eq!(clean[1..].iter().filter(|c| c.addr == dup.addr).count(), 0, "no duplicate");
        assert!(clean[1..].iter().all(|c| c.kind == CandidateKind::ServerReflexive && is_probeable(&c.addr)));
        let set: HashSet<_> = clean.iter().map(|c| c.addr).collect();
        assert_eq!(set.len(), clean.len());
        // 100,000 distinct addresses: cut at the cap after 16 of them.
        let distinct: Vec<Candidate> = (0..100_000u32)
            .map(|i| {
                Candidate::new(
                    CandidateKind::Host,
                    SocketAddr::new(std::net::Ipv4Addr::from(0x0a00_0000 + i).into(), 5000),
                )
            })
            .collect();
        assert_eq!(clean_candidates(&distinct, 16), distinct[..16].to_vec());
    }
}
