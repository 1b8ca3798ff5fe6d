//! Counters and the delivery trace: what happened to every datagram, and why.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::topology::{HostId, NatId};

/// Why the simulator dropped a datagram. Every drop is counted under exactly one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Random loss on a link (host uplink or core), see [`crate::LinkParams::loss`].
    Loss,
    /// A NAT had a mapping for the destination, but its filtering rule refused the sender
    /// (RFC 4787 §5: address- or address-and-port-dependent filtering).
    NatFilter,
    /// Arrived at a NAT's public address where no live mapping exists (never created,
    /// expired after the binding timeout, flushed, or lost with a public IP change).
    NoMapping,
    /// A NAT in firewall mode refused traffic to or from an IP outside its allow-list.
    Firewall,
    /// No host or NAT owns the destination IP in the realm the datagram was routed in
    /// (including a private address looked up from another site, or a host that moved away).
    NoSuchHost,
    /// Sent to its own NAT's public address while that NAT does not hairpin.
    HairpinOff,
    /// Matched a rule added with [`crate::Sim::block`].
    Blocked,
    /// `Transmit::src` names an address the sending host does not have (or port 0).
    BadSource,
    /// `Transmit::dst` is not a unicast destination (unspecified, loopback, multicast,
    /// broadcast, or port 0).
    BadDestination,
    /// The payload is larger than [`crate::Sim::max_datagram`].
    TooLarge,
    /// A NAT had no free port left in its range for a new mapping.
    PortsExhausted,
    /// The datagram could not be translated or routed (a NAT has no public IP of the
    /// destination's address family, or a routing loop between nested NATs was cut).
    Unroutable,
}

impl DropReason {
    /// Every reason, in a stable order (for reports).
    pub const ALL: [DropReason; 12] = [
        DropReason::Loss,
        DropReason::NatFilter,
        DropReason::NoMapping,
        DropReason::Firewall,
        DropReason::NoSuchHost,
        DropReason::HairpinOff,
        DropReason::Blocked,
        DropReason::BadSource,
        DropReason::BadDestination,
        DropReason::TooLarge,
        DropReason::PortsExhausted,
        DropReason::Unroutable,
    ];
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DropReason::Loss => "loss",
            DropReason::NatFilter => "nat-filter",
            DropReason::NoMapping => "no-mapping",
            DropReason::Firewall => "firewall",
            DropReason::NoSuchHost => "no-such-host",
            DropReason::HairpinOff => "hairpin-off",
            DropReason::Blocked => "blocked",
            DropReason::BadSource => "bad-source",
            DropReason::BadDestination => "bad-destination",
            DropReason::TooLarge => "too-large",
            DropReason::PortsExhausted => "ports-exhausted",
            DropReason::Unroutable => "unroutable",
        };
        f.write_str(s)
    }
}

/// Datagram counters, for the whole simulation ([`crate::Sim::stats`]) or for the
/// datagrams one host sent and received ([`crate::Sim::host_stats`]).
///
/// `delivered` can exceed `sent` because of duplication; every copy that does not reach a
/// node is counted in `drops`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams taken from nodes' `poll_transmit` (including those dropped at once).
    pub sent: u64,
    /// Datagrams handed to a node's `handle_datagram` (each duplicate counts).
    pub delivered: u64,
    /// Extra copies made by link duplication.
    pub duplicated: u64,
    /// Dropped datagrams (copies) per reason; reasons never seen are absent.
    pub drops: BTreeMap<DropReason, u64>,
}

impl Stats {
    /// How many datagrams were dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.get(&reason).copied().unwrap_or(0)
    }

    /// How many datagrams were dropped for any reason.
    pub fn total_dropped(&self) -> u64 {
        self.drops.values().sum()
    }

    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        *self.drops.entry(reason).or_insert(0) += 1;
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {} delivered {} duplicated {} dropped {}",
            self.sent,
            self.delivered,
            self.duplicated,
            self.total_dropped()
        )?;
        for (r, n) in &self.drops {
            write!(f, " {r}={n}")?;
        }
        Ok(())
    }
}

/// One line of the delivery trace ([`crate::Sim::record_trace`],
/// [`crate::Sim::set_trace_hook`]): a datagram was sent, translated, delivered or dropped.
///
/// Times are offsets from the simulation start, so two runs with the same seed produce
/// equal traces even though their base `Instant`s differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// Virtual time since the simulation start.
    pub at: Duration,
    /// Number of the datagram, in order of sending (a duplicate keeps its original's number).
    pub packet: u64,
    /// Host that sent the datagram.
    pub origin: HostId,
    /// What happened.
    pub kind: TraceKind,
    /// Source address as seen at this point (after any translation so far).
    pub src: SocketAddr,
    /// Destination address as seen at this point.
    pub dst: SocketAddr,
    /// Payload length in bytes.
    pub len: usize,
}

/// What a [`TraceEvent`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceKind {
    /// A node emitted the datagram (`src` is the host's local address).
    Sent,
    /// A NAT rewrote the outbound source: `src` is now the public mapped address.
    Translated(NatId),
    /// A NAT admitted the datagram and rewrote the destination to the internal address.
    Admitted(NatId),
    /// The datagram was handed to this host's node.
    Delivered(HostId),
    /// The datagram was dropped.
    Dropped(DropReason),
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            TraceKind::Sent => "sent".to_string(),
            TraceKind::Translated(n) => format!("translated by {n}"),
            TraceKind::Admitted(n) => format!("admitted by {n}"),
            TraceKind::Delivered(h) => format!("delivered to {h}"),
            TraceKind::Dropped(r) => format!("dropped ({r})"),
        };
        write!(
            f,
            "{:>12.6}s #{} from {} {} -> {} [{} B] {}",
            self.at.as_secs_f64(),
            self.packet,
            self.origin,
            self.src,
            self.dst,
            self.len,
            kind
        )
    }
}
