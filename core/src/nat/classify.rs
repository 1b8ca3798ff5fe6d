//! What the RFC 5780 tests observed, and the pure function that turns it into a verdict.
//!
//! [`classify`] has no state and no I/O, so every rule below has a table test.
//!
//! | observation | verdict |
//! |---|---|
//! | test I unanswered | `blocked` |
//! | mapped == local | mapping `no-nat`, class `open` |
//! | mapping test II mapped == test I mapped | endpoint-independent mapping (EIM) |
//! | … else test III mapped == test II mapped | address-dependent mapping (ADM) |
//! | … else | address-and-port-dependent mapping (APDM) |
//! | filtering test II (change IP+port) answered | endpoint-independent filtering (EIF) |
//! | … else test III (change port) answered | address-dependent filtering (ADF) |
//! | … both unanswered | address-and-port-dependent filtering (APDF) |
//! | no alternate address, error reply, or a test not run | `unknown` for that behaviour |
//!
//! Class: EIM+EIF = full-cone, EIM+ADF = restricted, EIM+APDF = port-restricted,
//! ADM or APDM = symmetric, otherwise unknown.

use std::fmt;
use std::net::SocketAddr;

use serde::{Serialize, Serializer};

/// Outcome of one probe of the discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Probe {
    /// Not sent (not needed, or a prerequisite failed).
    #[default]
    NotRun,
    /// Sent and still waiting.
    Pending,
    /// Every retransmission went unanswered.
    NoResponse,
    /// The server answered with an error (e.g. 420: it cannot change address).
    Error(u16),
    /// A success response, with our mapped address as the server saw it.
    Mapped(SocketAddr),
}

impl Probe {
    /// The mapped address, if the probe got a success response.
    pub fn mapped(&self) -> Option<SocketAddr> {
        match self {
            Probe::Mapped(a) => Some(*a),
            _ => None,
        }
    }
}

/// Everything the discovery saw; the only input of [`classify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observations {
    /// Our socket's address (host candidate), with a concrete IP.
    pub local: SocketAddr,
    /// The server's primary address.
    pub server: SocketAddr,
    /// The server's alternate address (given, or learnt from OTHER-ADDRESS/CHANGED-ADDRESS).
    pub other: Option<SocketAddr>,
    /// Test I: Binding to the primary address.
    pub primary: Probe,
    /// Mapping test II: Binding to alternate IP, primary port.
    pub alt_ip: Probe,
    /// Mapping test III: Binding to alternate IP and alternate port.
    pub alt_ip_port: Probe,
    /// Extra allocation probes `(destination, result)`, in the order they were sent.
    pub extra: Vec<(SocketAddr, Probe)>,
    /// Filtering test II: CHANGE-REQUEST change IP and port.
    pub filter_ip_port: Probe,
    /// Filtering test III: CHANGE-REQUEST change port.
    pub filter_port: Probe,
}

impl Observations {
    /// Nothing observed yet.
    pub fn new(local: SocketAddr, server: SocketAddr, other: Option<SocketAddr>) -> Self {
        Observations {
            local,
            server,
            other,
            primary: Probe::NotRun,
            alt_ip: Probe::NotRun,
            alt_ip_port: Probe::NotRun,
            extra: Vec::new(),
            filter_ip_port: Probe::NotRun,
            filter_port: Probe::NotRun,
        }
    }
}

macro_rules! seed_names {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $v),* }

        impl $name {
            /// The stable lowercase name (part of the public JSON interface).
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$v => $s),* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

seed_names! {
    /// RFC 4787 mapping behaviour.
    Mapping {
        /// Mapped address equals the local address: no NAT on the path.
        NoNat => "no-nat",
        /// Same mapping for every destination (EIM).
        EndpointIndependent => "endpoint-independent",
        /// Same mapping per destination IP (ADM).
        AddressDependent => "address-dependent",
        /// A new mapping per destination IP and port (APDM).
        AddressAndPortDependent => "address-and-port-dependent",
        /// Could not be measured.
        Unknown => "unknown",
    }
}

seed_names! {
    /// RFC 4787 filtering behaviour.
    Filtering {
        /// Anyone may send to the mapping (EIF).
        EndpointIndependent => "endpoint-independent",
        /// Only IPs we sent to may reply (ADF).
        AddressDependent => "address-dependent",
        /// Only IP:ports we sent to may reply (APDF).
        AddressAndPortDependent => "address-and-port-dependent",
        /// Could not be measured.
        Unknown => "unknown",
    }
}

seed_names! {
    /// The NAT class in the seed scenarios' vocabulary (a public JSON interface).
    NatClass {
        /// Public address, no NAT.
        Open => "open",
        /// EIM + EIF.
        FullCone => "full-cone",
        /// EIM + ADF.
        Restricted => "restricted",
        /// EIM + APDF.
        PortRestricted => "port-restricted",
        /// ADM or APDM.
        Symmetric => "symmetric",
        /// No STUN answer at all: UDP blocked.
        Blocked => "blocked",
        /// Not enough information.
        Unknown => "unknown",
    }
}

/// How the NAT picks external ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortAllocation {
    /// The external port equals the local port.
    Preserving,
    /// Successive mappings differ by a small, consistent step (the typical one is `delta`),
    /// so the next port can be predicted.
    Sequential {
        /// The most common difference between successive mapped ports.
        delta: i32,
    },
    /// No usable pattern.
    Random,
    /// Not enough mappings to tell.
    Unknown,
}

impl PortAllocation {
    /// The stable lowercase name: `preserving|sequential|random|unknown`.
    pub fn as_str(&self) -> &'static str {
        match self {
            PortAllocation::Preserving => "preserving",
            PortAllocation::Sequential { .. } => "sequential",
            PortAllocation::Random => "random",
            PortAllocation::Unknown => "unknown",
        }
    }
}

impl fmt::Display for PortAllocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortAllocation::Sequential { delta } => write!(f, "sequential ({delta:+})"),
            other => f.write_str(other.as_str()),
        }
    }
}

impl Serialize for PortAllocation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The verdict of NAT discovery; serializes to the public JSON shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatReport {
    /// Our public (server-reflexive) address from test I.
    pub public: Option<SocketAddr>,
    /// The local (host candidate) address the tests ran from.
    pub local: SocketAddr,
    /// The server's alternate address used for the tests, if any.
    pub other: Option<SocketAddr>,
    /// Mapping behaviour.
    pub mapping: Mapping,
    /// Filtering behaviour.
    pub filtering: Filtering,
    /// Port allocation behaviour.
    pub allocation: PortAllocation,
    /// For sequential allocators: the observed port delta (for port prediction).
    pub port_delta: Option<i32>,
    /// The seed class.
    pub class: NatClass,
}

/// Rules for [`classify`] that are judgement calls rather than RFC text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassifyConfig {
    /// Largest |delta| between successive mapped ports still called sequential. Default 16:
    /// other hosts behind a busy NAT take ports between our probes, so the step we see
    /// is often larger than the allocator's.
    pub max_sequential_delta: i32,
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        ClassifyConfig { max_sequential_delta: 16 }
    }
}

/// Turn observations into a report with the default rules. Pure.
pub fn classify(obs: &Observations) -> NatReport {
    classify_with(obs, &ClassifyConfig::default())
}

/// Turn observations into a report. Pure.
pub fn classify_with(obs: &Observations, cfg: &ClassifyConfig) -> NatReport {
    let public = obs.primary.mapped();
    let mut report = NatReport {
        public,
        local: obs.local,
        other: obs.other,
        mapping: Mapping::Unknown,
        filtering: Filtering::Unknown,
        allocation: PortAllocation::Unknown,
        port_delta: None,
        class: NatClass::Unknown,
    };
    let Some(m1) = public else {
        if obs.primary == Probe::NoResponse {
            report.class = NatClass::Blocked;
        }
        return report;
    };

    report.filtering = match (obs.filter_ip_port, obs.filter_port) {
        (Probe::Mapped(_), _) => Filtering::EndpointIndependent,
        (Probe::NoResponse, Probe::Mapped(_)) => Filtering::AddressDependent,
        (Probe::NoResponse, Probe::NoResponse) => Filtering::AddressAndPortDependent,
        _ => Filtering::Unknown,
    };

    if m1 == obs.local {
        report.mapping = Mapping::NoNat;
        report.allocation = PortAllocation::Preserving;
        report.class = NatClass::Open;
        return report;
    }

    report.mapping = match (obs.alt_ip.mapped(), obs.alt_ip_port.mapped()) {
        (Some(m2), _) if m2 == m1 => Mapping::EndpointIndependent,
        (Some(m2), Some(m3)) if m3 == m2 => Mapping::AddressDependent,
        (Some(_), Some(_)) => Mapping::AddressAndPortDependent,
        _ => Mapping::Unknown,
    };

    report.allocation = allocation(obs, m1, report.mapping, cfg);
    if let PortAllocation::Sequential { delta } = report.allocation {
        report.port_delta = Some(delta);
    }

    report.class = match (report.mapping, report.filtering) {
        (Mapping::AddressDependent | Mapping::AddressAndPortDependent, _) => NatClass::Symmetric,
        (Mapping::EndpointIndependent, Filtering::EndpointIndependent) => NatClass::FullCone,
        (Mapping::EndpointIndependent, Filtering::AddressDependent) => NatClass::Restricted,
        (Mapping::EndpointIndependent, Filtering::AddressAndPortDependent) => NatClass::PortRestricted,
        _ => NatClass::Unknown,
    };
    report
}

fn allocation(obs: &Observations, m1: SocketAddr, mapping: Mapping, cfg: &ClassifyConfig) -> PortAllocation {
    let preserving = m1.port() == obs.local.port();
    let dependent = matches!(mapping, Mapping::AddressDependent | Mapping::AddressAndPortDependent);
    if !dependent {
        // One mapping serves every destination: only preservation is observable.
        return if preserving { PortAllocation::Preserving } else { PortAllocation::Unknown };
    }
    // Distinct mappings in the order the NAT created them.
    let mut seq: Vec<SocketAddr> = Vec::new();
    let probes =
        [obs.primary, obs.alt_ip, obs.alt_ip_port].into_iter().chain(obs.extra.iter().map(|(_, p)| *p));
    for m in probes.filter_map(|p| p.mapped()) {
        if !seq.contains(&m) {
            seq.push(m);
        }
    }
    if seq.len() < 3 {
        return if preserving { PortAllocation::Preserving } else { PortAllocation::Unknown };
    }
    let deltas: Vec<i32> = seq.windows(2).map(|w| i32::from(w[1].port()) - i32::from(w[0].port())).collect();
    let same_sign = deltas.iter().all(|d| *d > 0) || deltas.iter().all(|d| *d < 0);
    let small = deltas.iter().all(|d| d.abs() <= cfg.max_sequential_delta);
    if same_sign && small {
        // The most common delta; ties go to the smallest step.
        let mut best = deltas[0];
        let mut best_n = 0;
        for d in &deltas {
            let n = deltas.iter().filter(|x| *x == d).count();
            if n > best_n || (n == best_n && d.abs() < best.abs()) {
                best = *d;
                best_n = n;
            }
        }
        PortAllocation::Sequential { delta: best }
    } else {
        PortAllocation::Random
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn obs() -> Observations {
        Observations::new(sa("10.0.0.2:5000"), sa("192.0.2.1:3478"), Some(sa("192.0.2.2:3479")))
    }

    fn m(s: &str) -> Probe {
        Probe::Mapped(sa(s))
    }

    #[test]
    fn seed_names_are_exactly_the_public_strings() {
        let all = [
            NatClass::Open,
            NatClass::FullCone,
            NatClass::Restricted,
            NatClass::PortRestricted,
            NatClass::Symmetric,
            NatClass::Blocked,
            NatClass::Unknown,
        ];
        let names: Vec<String> = all.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            names,
            ["open", "full-cone", "restricted", "port-restricted", "symmetric", "blocked", "unknown"]
        );
    }

    #[test]
    fn no_answer_is_blocked_and_pending_is_unknown() {
        let mut o = obs();
        o.primary = Probe::NoResponse;
        let r = classify(&o);
        assert_eq!((r.class, r.public), (NatClass::Blocked, None));
        o.primary = Probe::Pending;
        assert_eq!(classify(&o).class, NatClass::Unknown);
        o.primary = Probe::Error(500);
        assert_eq!(classify(&o).class, NatClass::Unknown);
    }

    #[test]
    fn mapped_equal_to_local_is_open() {
        let mut o = obs();
        o.primary = m("10.0.0.2:5000");
        o.filter_ip_port = m("10.0.0.2:5000");
        let r = classify(&o);
        assert_eq!(
            (r.class, r.mapping, r.filtering),
            (NatClass::Open, Mapping::NoNat, Filtering::EndpointIndependent)
        );
        // Same port, different IP: that is a port-preserving NAT, not open.
        o.primary = m("203.0.113.7:5000");
        assert_ne!(classify(&o).class, NatClass::Open);
    }

    #[test]
    fn cone_classes_follow_filtering() {
        let cases = [
            (m("203.0.113.7:5000"), Probe::NotRun, Filtering::EndpointIndependent, NatClass::FullCone),
            (Probe::NoResponse, m("203.0.113.7:5000"), Filtering::AddressDependent, NatClass::Restricted),
            (
                Probe::NoResponse,
                Probe::NoResponse,
                Filtering::AddressAndPortDependent,
                NatClass::PortRestricted,
            ),
            (Probe::Error(420), Probe::NoResponse, Filtering::Unknown, NatClass::Unknown),
            (Probe::NoResponse, Probe::Pending, Filtering::Unknown, NatClass::Unknown),
        ];
        for (f2, f3, filtering, class) in cases {
            let mut o = obs();
            o.primary = m("203.0.113.7:5000");
            o.alt_ip = m("203.0.113.7:5000");
            o.filter_ip_port = f2;
            o.filter_port = f3;
            let r = classify(&o);
            assert_eq!(
                (r.mapping, r.filtering, r.class),
                (Mapping::EndpointIndependent, filtering, class),
                "{f2:?} {f3:?}"
            );
            assert_eq!(r.allocation, PortAllocation::Preserving);
            assert_eq!(r.public, Some(sa("203.0.113.7:5000")));
        }
    }

    #[test]
    fn dependent_mapping_is_symmetric_whatever_the_filtering() {
        let mut o = obs();
        o.primary = m("203.0.113.7:40000");
        o.alt_ip = m("203.0.113.7:40001");
        o.alt_ip_port = m("203.0.113.7:40001");
        o.filter_ip_port = Probe::NoResponse;
        o.filter_port = Probe::NoResponse;
        let r = classify(&o);
        assert_eq!((r.mapping, r.class), (Mapping::AddressDependent, NatClass::Symmetric));
        // Only two distinct mappings: allocation cannot be judged.
        assert_eq!(r.allocation, PortAllocation::Unknown);
        o.alt_ip_port = m("203.0.113.7:40002");
        o.filter_ip_port = m("203.0.113.7:40000");
        let r = classify(&o);
        assert_eq!((r.mapping, r.class), (Mapping::AddressAndPortDependent, NatClass::Symmetric));
        assert_eq!((r.allocation, r.port_delta), (PortAllocation::Sequential { delta: 1 }, Some(1)));
    }

    #[test]
    fn mapping_unknown_when_alternate_tests_fail() {
        let mut o = obs();
        o.primary = m("203.0.113.7:5000");
        o.alt_ip = Probe::NoResponse;
        o.filter_ip_port = m("203.0.113.7:5000");
        let r = classify(&o);
        assert_eq!((r.mapping, r.class), (Mapping::Unknown, NatClass::Unknown));
        // Differing alt-IP mapping but test III missing: still unknown, not symmetric.
        o.alt_ip = m("203.0.113.7:5002");
        assert_eq!(classify(&o).mapping, Mapping::Unknown);
    }

    #[test]
    fn allocation_rules() {
        let base = |ports: &[u16]| {
            let mut o = obs();
            let p: Vec<Probe> = ports
                .iter()
                .map(|p| Probe::Mapped(SocketAddr::new("203.0.113.7".parse().unwrap(), *p)))
                .collect();
            o.primary = p[0];
            o.alt_ip = p[1];
            o.alt_ip_port = p[2];
            o.extra = p[3..].iter().map(|x| (sa("192.0.2.1:3479"), *x)).collect();
            classify(&o).allocation
        };
        assert_eq!(base(&[40000, 40002, 40004, 40006]), PortAllocation::Sequential { delta: 2 });
        assert_eq!(base(&[40010, 40009, 40008]), PortAllocation::Sequential { delta: -1 });
        // Gaps from other traffic: most common step wins.
        assert_eq!(base(&[40000, 40001, 40005, 40006]), PortAllocation::Sequential { delta: 1 });
        assert_eq!(base(&[40000, 51234, 33333, 60001]), PortAllocation::Random);
        assert_eq!(base(&[40000, 40001, 40000 - 3, 40100]), PortAllocation::Random);
        // A NAT that preserved the first port then had to pick others, randomly.
        assert_eq!(base(&[5000, 61000, 12000]), PortAllocation::Random);
        // Large but regular steps exceed the bound.
        assert_eq!(base(&[40000, 40100, 40200]), PortAllocation::Random);
        let wide = ClassifyConfig { max_sequential_delta: 100 };
        let mut o = obs();
        o.primary = m("203.0.113.7:40000");
        o.alt_ip = m("203.0.113.7:40100");
        o.alt_ip_port = m("203.0.113.7:40200");
        assert_eq!(classify_with(&o, &wide).allocation, PortAllocation::Sequential { delta: 100 });
    }

    #[test]
    fn report_serializes_to_the_seed_strings() {
        let mut o = obs();
        o.primary = m("203.0.113.7:40000");
        o.alt_ip = m("203.0.113.7:40003");
        o.alt_ip_port = m("203.0.113.7:40006");
        let r = classify(&o);
        assert_eq!(r.class.to_string(), "symmetric");
        assert_eq!(r.allocation.to_string(), "sequential (+3)");
        assert_eq!(r.mapping.to_string(), "address-and-port-dependent");
    }
}
