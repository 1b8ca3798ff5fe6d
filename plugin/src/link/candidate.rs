//! Candidate addresses of a peer (RFC 8445 vocabulary) and port prediction.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Where a candidate address came from; also its probing priority (higher first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CandidateKind {
    /// A port guessed from a sequential allocator's last mapping.
    Predicted,
    /// The address the relay forwards through (never probed; listed for completeness).
    Relayed,
    /// Learned from a STUN server or the relay: the peer's public mapping.
    ServerReflexive,
    /// Learned from an authenticated datagram that arrived from an unlisted address.
    PeerReflexive,
    /// An address of the peer's own interfaces (works on a shared LAN).
    Host,
}

/// One address at which a peer may be reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    /// How it was learned.
    pub kind: CandidateKind,
    /// The address.
    pub addr: SocketAddr,
}

impl Candidate {
    /// Shorthand constructor.
    pub fn new(kind: CandidateKind, addr: SocketAddr) -> Self {
        Self { kind, addr }
    }
}

/// What the shard knows of a peer's NAT, for port prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NatHint {
    /// The peer's NAT maps per destination (ADM/APDM): its srflx port toward us is unknown.
    pub dependent_mapping: bool,
    /// Port step of a sequential allocator (`None` for random or preserving).
    pub port_delta: Option<i32>,
}

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
    }
}

/// Predicted candidates for a peer behind a sequential, destination-dependent NAT: the next
/// `span` ports after each server-reflexive mapping, stepping by the allocator's delta.
pub fn predict(remote: &[Candidate], hint: &NatHint, span: u16) -> Vec<Candidate> {
    let (true, Some(delta)) = (hint.dependent_mapping, hint.port_delta) else {
        return Vec::new();
    };
    if delta == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for c in remote.iter().filter(|c| c.kind == CandidateKind::ServerReflexive) {
        for k in 1..=i32::from(span) {
            let port = i32::from(c.addr.port()) + delta * k;
            if let Ok(port) = u16::try_from(port)
                && port >= 1024
            {
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
}
