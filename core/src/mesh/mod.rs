//! Many links over one socket.
//!
//! The NAT mapping belongs to a socket, so STUN, probes, relay traffic and peer data all share
//! the client's one mesh socket. The [`Mesh`] demultiplexes each datagram by its first byte
//! ([`crate::proto::classify`]) and routes peer traffic **by link id, never by address**:
//! a peer that changes address keeps its link, and a datagram that reaches the wrong host
//! (two sites on the same private range) names a link that host does not have, or fails
//! authentication, and is dropped and counted.
//!
//! The driver loop is the [`crate::endpoint`] loop; the application adds links from the
//! shard's introductions and calls [`Mesh::send`] / [`Mesh::receive`].

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use crate::config::MeshConfig;
use crate::crypto::OpenError;
use crate::endpoint::{Endpoint, Transmit};
use crate::link::{
    BreakReason, Candidate, CandidateKind, ClockAnchor, Link, LinkEvent, LinkParams, NatHint, RelayParams,
};
use crate::nat::{NatDiscovery, NatDiscoveryConfig, NatReport};
use crate::proto::peer::{LinkId, PeerHeader};
use crate::proto::relay::RelayKind;
use crate::proto::{DatagramClass, classify};
use crate::stun::{BindingRequest, ChangeRequest, RetransmitConfig, TransactionId};

/// Something that happened on the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshEvent {
    /// An event of one link.
    Link {
        /// Which link.
        link: LinkId,
        /// What happened.
        event: LinkEvent,
    },
    /// Our public (server-reflexive) address changed, as the relay or a STUN server saw it.
    PublicAddress(SocketAddr),
    /// NAT discovery finished (see [`Mesh::start_nat_discovery`]).
    Nat(NatReport),
}

/// Why a datagram on the mesh socket was dropped; each has a counter in [`MeshStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Undecodable header or unknown kind.
    Malformed,
    /// Names a link this mesh does not have (a stray probe from another site, a closed link).
    UnknownLink,
    /// Failed authentication, replay check or relay-ack verification.
    Rejected,
    /// A kind a client never accepts (relay binds, STUN requests without a STUN agent).
    Unexpected,
}

/// Counters of the mesh socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshStats {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams handed to the driver to send.
    pub sent: u64,
    /// Bytes handed to the driver to send.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Dropped: undecodable.
    pub malformed: u64,
    /// Dropped: unknown link id.
    pub unknown_link: u64,
    /// Dropped: failed authentication or replay check.
    pub rejected: u64,
    /// Dropped: not a kind a client accepts.
    pub unexpected: u64,
    /// Links broken because renet refused a peer's data ([`BreakReason::RenetError`]).
    pub links_broken_renet_error: u64,
    /// Links broken because renet panicked on a peer's data ([`BreakReason::RenetPanic`]).
    pub links_broken_renet_panic: u64,
}

impl MeshStats {
    fn drop(&mut self, reason: DropReason) {
        match reason {
            DropReason::Malformed => self.malformed += 1,
            DropReason::UnknownLink => self.unknown_link += 1,
            DropReason::Rejected => self.rejected += 1,
            DropReason::Unexpected => self.unexpected += 1,
        }
    }
}

/// Errors of the mesh API.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MeshError {
    /// A link with this id exists already; remove it first.
    #[error("link {0:?} already exists")]
    DuplicateLink(LinkId),
    /// No link with this id.
    #[error("no link {0:?}")]
    NoSuchLink(LinkId),
}

/// Many [`Link`]s over one socket. See the module docs.
pub struct Mesh {
    cfg: MeshConfig,
    clock: ClockAnchor,
    local: Vec<Candidate>,
    links: BTreeMap<LinkId, Link>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<MeshEvent>,
    stats: MeshStats,
    now: Instant,
    stun: Option<StunAgent>,
}

/// The mesh's STUN side: one RFC 5780 discovery, then periodic Binding refreshes that notice
/// a changed public address on an idle mesh.
struct StunAgent {
    server: SocketAddr,
    discovery: Option<NatDiscovery>,
    report: Option<NatReport>,
    refresh: Option<BindingRequest>,
    next_refresh: Instant,
    rng: ChaCha8Rng,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh").field("local", &self.local).field("links", &self.links.len()).finish()
    }
}

impl Mesh {
    /// A mesh whose socket has the given host addresses (our LAN candidates).
    pub fn new(now: Instant, cfg: MeshConfig, clock: ClockAnchor, host_addrs: &[SocketAddr]) -> Self {
        Self {
            cfg,
            clock,
            local: host_addrs.iter().map(|a| Candidate::new(CandidateKind::Host, *a)).collect(),
            links: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: MeshStats::default(),
            now,
            stun: None,
        }
    }

    /// Learn our public address and NAT class from `server` (a STUN server with an alternate
    /// address, such as the shard's punch server), then keep checking the public address
    /// every `stun_refresh_interval`. Emits [`MeshEvent::Nat`] when the tests finish.
    pub fn start_nat_discovery(&mut self, now: Instant, server: SocketAddr, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let local = self.local.iter().find(|c| c.kind == CandidateKind::Host).map(|c| c.addr);
        let local = local.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let cfg = NatDiscoveryConfig { retransmit: self.cfg.nat_retransmit, ..NatDiscoveryConfig::default() };
        let discovery = NatDiscovery::new(now, server, None, local, cfg, &mut rng);
        self.stun = Some(StunAgent {
            server,
            discovery: Some(discovery),
            report: None,
            refresh: None,
            next_refresh: now + self.cfg.stun_refresh_interval,
            rng,
        });
        self.collect();
    }

    /// The NAT discovery's verdict, once finished.
    pub fn nat_report(&self) -> Option<&NatReport> {
        self.stun.as_ref()?.report.as_ref()
    }

    /// Our own candidates (host addresses and the public address once known).
    pub fn local_candidates(&self) -> &[Candidate] {
        &self.local
    }

    /// Record our public address (from STUN or the relay); every link tells its peer.
    pub fn set_public_address(&mut self, now: Instant, addr: SocketAddr) {
        if self.local.iter().any(|c| c.kind == CandidateKind::ServerReflexive && c.addr == addr) {
            return;
        }
        self.local.retain(|c| c.kind != CandidateKind::ServerReflexive);
        self.local.push(Candidate::new(CandidateKind::ServerReflexive, addr));
        self.events.push_back(MeshEvent::PublicAddress(addr));
        for link in self.links.values_mut() {
            link.set_local_candidates(now, self.local.clone());
        }
        self.collect();
    }

    /// Open a link from the shard's introduction.
    pub fn add_link(&mut self, now: Instant, params: LinkParams) -> Result<(), MeshError> {
        if self.links.contains_key(&params.link) {
            return Err(MeshError::DuplicateLink(params.link));
        }
        let id = params.link;
        let local_nat = self.nat_report().map(NatHint::from_report).unwrap_or_default();
        let link = Link::new(now, params, self.local.clone(), local_nat, self.cfg.link.clone(), self.clock);
        self.links.insert(id, link);
        self.collect();
        Ok(())
    }

    /// Close a link (the shard un-introduced the pair).
    pub fn remove_link(&mut self, id: LinkId) -> Result<(), MeshError> {
        self.links.remove(&id).map(|_| ()).ok_or(MeshError::NoSuchLink(id))
    }

    /// Hand a link the fresh relay token the shard issued (see [`Link::update_relay`]).
    pub fn update_relay(&mut self, now: Instant, id: LinkId, params: RelayParams) -> Result<(), MeshError> {
        self.links.get_mut(&id).ok_or(MeshError::NoSuchLink(id))?.update_relay(now, params);
        self.collect();
        Ok(())
    }

    /// The shard named a standby relay for link `id` ([`Link::update_standby`]).
    pub fn update_standby(&mut self, now: Instant, id: LinkId, params: RelayParams) -> Result<(), MeshError> {
        self.links.get_mut(&id).ok_or(MeshError::NoSuchLink(id))?.update_standby(now, params);
        self.collect();
        Ok(())
    }

    /// One link, to read its path, stats and RTT.
    pub fn link(&self, id: LinkId) -> Option<&Link> {
        self.links.get(&id)
    }

    /// All links, in id order.
    pub fn links(&self) -> impl Iterator<Item = &Link> {
        self.links.values()
    }

    /// Queue a message to one peer (see [`Link::send`]).
    pub fn send(&mut self, id: LinkId, channel: u8, message: impl Into<Bytes>) -> Result<bool, MeshError> {
        let link = self.links.get_mut(&id).ok_or(MeshError::NoSuchLink(id))?;
        Ok(link.send(channel, message))
    }

    /// Next message received from one peer on `channel`.
    pub fn receive(&mut self, id: LinkId, channel: u8) -> Option<Bytes> {
        self.links.get_mut(&id)?.receive(channel)
    }

    /// Next mesh event.
    pub fn poll_event(&mut self) -> Option<MeshEvent> {
        self.events.pop_front()
    }

    /// Socket counters, drops by reason.
    pub fn stats(&self) -> MeshStats {
        self.stats
    }

    /// [`Endpoint::handle_datagram`], returning the link the datagram reached: the only one
    /// that may have new messages for [`Mesh::receive`] (`None`: STUN, or dropped).
    pub fn handle_datagram_to_link(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) -> Option<LinkId> {
        self.now = now;
        self.stats.received += 1;
        self.stats.bytes_received += data.len() as u64;
        let touched = match self.route(now, local, from, data) {
            Ok(link) => link,
            Err(reason) => {
                self.stats.drop(reason);
                None
            }
        };
        self.collect_one(touched);
        touched
    }

    /// Pull transmits and events out of every link and the STUN agent.
    fn collect(&mut self) {
        let mut out = Collected::default();
        self.collect_stun(&mut out);
        for (id, link) in self.links.iter_mut() {
            drain_link(*id, link, &mut self.transmits, &mut self.events, &mut self.stats, &mut out);
        }
        self.collected(out);
    }

    /// [`Mesh::collect`] when only `link` (if any) and the STUN agent had input: every other
    /// link's queues are empty already (each input drains what it touched).
    fn collect_one(&mut self, link: Option<LinkId>) {
        let mut out = Collected::default();
        self.collect_stun(&mut out);
        if let Some(id) = link
            && let Some(link) = self.links.get_mut(&id)
        {
            drain_link(id, link, &mut self.transmits, &mut self.events, &mut self.stats, &mut out);
        }
        self.collected(out);
    }

    fn collect_stun(&mut self, out: &mut Collected) {
        if let Some(agent) = self.stun.as_mut() {
            if let Some(d) = agent.discovery.as_mut() {
                while let Some(t) = d.poll_transmit() {
                    self.stats.sent += 1;
                    self.stats.bytes_sent += t.payload.len() as u64;
                    self.transmits.push_back(t);
                }
                if d.is_done() {
                    let report = d.report();
                    agent.discovery = None;
                    out.public = report.public;
                    agent.report = Some(report.clone());
                    self.events.push_back(MeshEvent::Nat(report));
                }
            }
            if let Some(r) = agent.refresh.as_mut() {
                while let Some(t) = r.poll_transmit() {
                    self.stats.sent += 1;
                    self.stats.bytes_sent += t.payload.len() as u64;
                    self.transmits.push_back(t);
                }
                if let Some(outcome) = r.outcome() {
                    if let Ok(resp) = outcome {
                        out.public = Some(resp.mapped);
                    }
                    agent.refresh = None;
                }
            }
        }
    }

    /// Act on what the links and the STUN agent reported.
    fn collected(&mut self, out: Collected) {
        if out.direct_failed
            && let Some(agent) = self.stun.as_mut()
        {
            // Our address may have changed: ask the STUN server now rather than at the next refresh.
            agent.next_refresh = agent.next_refresh.min(self.now);
        }
        if let Some(addr) = out.public {
            self.set_public_address(self.now, addr);
        }
    }

    fn stun_timers(&mut self, now: Instant) {
        let Some(agent) = self.stun.as_mut() else { return };
        if let Some(d) = agent.discovery.as_mut() {
            if d.poll_timeout().is_some_and(|t| t <= now) {
                d.handle_timeout(now);
            }
            return;
        }
        if let Some(r) = agent.refresh.as_mut() {
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
            }
        } else if now >= agent.next_refresh && self.cfg.link.keepalive {
            let tid = TransactionId::random(&mut agent.rng);
            let retransmit = RetransmitConfig { max_transmits: 4, ..RetransmitConfig::default() };
            agent.refresh =
                Some(BindingRequest::new(now, agent.server, tid, ChangeRequest::NONE, retransmit));
            agent.next_refresh = now + self.cfg.stun_refresh_interval;
        }
    }

    fn stun_timeout(&self) -> Option<Instant> {
        let agent = self.stun.as_ref()?;
        if let Some(d) = &agent.discovery {
            return d.poll_timeout();
        }
        match &agent.refresh {
            Some(r) => r.poll_timeout(),
            None if self.cfg.link.keepalive => Some(agent.next_refresh),
            None => None,
        }
    }

    fn handle_stun(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]) -> bool {
        let Some(agent) = self.stun.as_mut() else { return false };
        if let Some(d) = agent.discovery.as_mut() {
            let before = d.ignored();
            d.handle_datagram(now, local, from, data);
            return d.ignored() == before;
        }
        agent.refresh.as_mut().is_some_and(|r| r.handle_datagram(now, from, data))
    }

    fn route(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<Option<LinkId>, DropReason> {
        match classify(data).map_err(|_| DropReason::Malformed)? {
            DatagramClass::Peer(_) => {
                let (_, link, _) = PeerHeader::decode_route(data).map_err(|_| DropReason::Malformed)?;
                // Datagrams on the mesh socket's port are `None`; others reached a birthday socket.
                let host_port =
                    self.local.iter().find(|c| c.kind == CandidateKind::Host).map(|c| c.addr.port());
                let local = (Some(local.port()) != host_port).then_some(local);
                let id = link;
                let link = self.links.get_mut(&id).ok_or(DropReason::UnknownLink)?;
                link.handle_peer(now, local, from, data).map_err(open_drop)?;
                Ok(Some(id))
            }
            DatagramClass::Relay(RelayKind::BindAck) => {
                let id = data.get(1..5).ok_or(DropReason::Malformed)?;
                let id = LinkId(u32::from_be_bytes(id.try_into().map_err(|_| DropReason::Malformed)?));
                let link = self.links.get_mut(&id).ok_or(DropReason::UnknownLink)?;
                link.handle_relay(now, from, data).map_err(open_drop)?;
                Ok(Some(id))
            }
            DatagramClass::Stun => {
                if self.handle_stun(now, local, from, data) {
                    Ok(None)
                } else {
                    Err(DropReason::Unexpected)
                }
            }
            DatagramClass::Relay(_) => Err(DropReason::Unexpected),
        }
    }
}

/// What draining the links and the STUN agent asks the mesh to do.
#[derive(Default)]
struct Collected {
    public: Option<SocketAddr>,
    direct_failed: bool,
}

/// Move one link's transmits and events into the mesh's queues.
fn drain_link(
    id: LinkId,
    link: &mut Link,
    transmits: &mut VecDeque<Transmit>,
    events: &mut VecDeque<MeshEvent>,
    stats: &mut MeshStats,
    out: &mut Collected,
) {
    while let Some(t) = link.poll_transmit() {
        stats.sent += 1;
        stats.bytes_sent += t.payload.len() as u64;
        transmits.push_back(t);
    }
    while let Some(event) = link.poll_event() {
        match event {
            LinkEvent::ObservedAddressChanged(a) => out.public = Some(a),
            LinkEvent::DirectPathFailed(_) => out.direct_failed = true,
            LinkEvent::Broken => match link.broken() {
                Some(BreakReason::RenetPanic) => stats.links_broken_renet_panic += 1,
                _ => stats.links_broken_renet_error += 1,
            },
            _ => {}
        }
        events.push_back(MeshEvent::Link { link: id, event });
    }
}

fn open_drop(e: OpenError) -> DropReason {
    match e {
        OpenError::Malformed(_) => DropReason::Malformed,
        OpenError::WrongLink | OpenError::Replay | OpenError::Auth => DropReason::Rejected,
    }
}

impl Endpoint for Mesh {
    fn handle_datagram(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]) {
        self.handle_datagram_to_link(now, local, from, data);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.stun_timers(now);
        let mut out = Collected::default();
        self.collect_stun(&mut out);
        for (id, link) in self.links.iter_mut() {
            if link.poll_timeout().is_some_and(|t| t <= now) {
                link.handle_timeout(now);
                drain_link(*id, link, &mut self.transmits, &mut self.events, &mut self.stats, &mut out);
            }
        }
        self.collected(out);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.links.values().filter_map(|l| l.poll_timeout()).chain(self.stun_timeout()).min()
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::crypto::LinkKey;
    use crate::proto::peer::Side;

    fn mesh(now: Instant) -> Mesh {
        let clock = ClockAnchor { at: now, unix_micros: 1_790_000_000_000_000 };
        Mesh::new(now, MeshConfig::default(), clock, &["10.0.0.1:4000".parse().unwrap()])
    }

    fn params(link: u32) -> LinkParams {
        LinkParams {
            link: LinkId(link),
            side: Side::A,
            key: LinkKey([9; 32]),
            remote: vec![Candidate::new(CandidateKind::Host, "10.0.0.2:4000".parse().unwrap())],
            remote_nat: NatHint::default(),
            relay: None,
        }
    }

    #[test]
    fn garbage_is_dropped_and_counted_never_panics() {
        let now = Instant::now();
        let mut m = mesh(now);
        m.add_link(now, params(1)).unwrap();
        let local: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let from: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        // a genuine probe from the peer, to mutate
        let mut peer = crate::crypto::LinkCrypto::new(&LinkKey([9; 32]), LinkId(1), Side::B);
        let genuine = peer.seal(crate::proto::peer::PeerKind::Probe, &7u64.to_be_bytes());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for i in 0..50_000 {
            let bytes: Vec<u8> = if i % 2 == 0 {
                let mut b = genuine.clone();
                let at = rng.random_range(0..b.len());
                b[at] ^= 1 << rng.random_range(0..8);
                b.truncate(rng.random_range(0..=b.len()));
                b
            } else {
                (0..rng.random_range(0..80)).map(|_| rng.random()).collect()
            };
            m.handle_datagram(now, local, from, &bytes);
        }
        let s = m.stats();
        assert_eq!(s.received, 50_000);
        assert_eq!(s.malformed + s.unknown_link + s.rejected + s.unexpected, 50_000, "{s:?}");
        assert!(s.rejected > 2_000, "mutated genuine datagrams fail authentication: {s:?}");
        assert_eq!(s.sent, 1, "nothing but the link's first probe went out: {s:?}");
        while m.poll_transmit().is_some() {}
        // the genuine one still works afterwards: the link was not disturbed
        m.handle_datagram(now, local, from, &genuine);
        assert_eq!(m.stats().rejected, s.rejected, "accepted");
        assert!(m.poll_transmit().is_some(), "answered with a probe-ack");
    }

    #[test]
    fn routes_by_link_id_not_address_and_rejects_duplicates() {
        let now = Instant::now();
        let mut m = mesh(now);
        m.add_link(now, params(1)).unwrap();
        assert_eq!(m.add_link(now, params(1)), Err(MeshError::DuplicateLink(LinkId(1))));
        let local: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let mut peer = crate::crypto::LinkCrypto::new(&LinkKey([9; 32]), LinkId(1), Side::B);
        // from an address the link never heard of: still its datagram (the peer moved)
        let roamed: SocketAddr = "203.0.113.9:5555".parse().unwrap();
        m.handle_datagram(
            now,
            local,
            roamed,
            &peer.seal(crate::proto::peer::PeerKind::Probe, &1u64.to_be_bytes()),
        );
        assert_eq!(m.stats().rejected + m.stats().unknown_link, 0);
        let replies: Vec<Transmit> = std::iter::from_fn(|| m.poll_transmit()).collect();
        assert!(replies.iter().any(|t| t.dst == roamed), "answered at the new address");
        // another link id on the same address is unknown here
        let mut other = crate::crypto::LinkCrypto::new(&LinkKey([9; 32]), LinkId(2), Side::B);
        m.handle_datagram(
            now,
            local,
            roamed,
            &other.seal(crate::proto::peer::PeerKind::Probe, &1u64.to_be_bytes()),
        );
        assert_eq!(m.stats().unknown_link, 1);
        m.remove_link(LinkId(1)).unwrap();
        assert_eq!(m.remove_link(LinkId(1)), Err(MeshError::NoSuchLink(LinkId(1))));
    }

    /// QUIC varint, as renet's packets use (values < 2^14 here).
    fn varint(v: u64, out: &mut Vec<u8>) {
        if v < 64 {
            out.push(v as u8);
        } else {
            out.extend_from_slice(&(v as u16 | 0x4000).to_be_bytes());
        }
    }

    /// A renet reliable slice packet on channel 0.
    fn renet_slice(seq: u64, index: u64, num: u64) -> Vec<u8> {
        let mut p = vec![2];
        varint(seq, &mut p);
        p.push(crate::link::CHANNEL_RELIABLE);
        varint(0, &mut p); // message id
        varint(index, &mut p);
        varint(num, &mut p);
        varint(1200, &mut p);
        p.extend_from_slice(&[0xAB; 1200]);
        p
    }

    #[test]
    fn hostile_renet_payloads_from_a_peer_break_only_its_link() {
        use crate::crypto::LinkCrypto;
        use crate::link::{BreakReason, CHANNEL_RELIABLE};
        use crate::proto::peer::PeerKind;
        use std::time::Duration;

        let mut now = Instant::now();
        let local: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let from: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let mut m = mesh(now);
        // Link 2 is honest: its peer is a real Link on side B.
        let clock = ClockAnchor { at: now, unix_micros: 1_790_000_000_000_000 };
        let mut honest = Link::new(
            now,
            LinkParams {
                side: Side::B,
                remote: vec![Candidate::new(CandidateKind::Host, local)],
                ..params(2)
            },
            vec![],
            NatHint::default(),
            crate::config::LinkConfig::default(),
            clock,
        );
        for id in [1, 2, 3, 4, 5] {
            m.add_link(now, params(id)).unwrap();
        }
        // Shuttle datagrams between the mesh and the honest peer for `d` of virtual time.
        let run = |m: &mut Mesh, honest: &mut Link, now: &mut Instant, d: Duration| {
            let end = *now + d;
            while *now < end {
                while let Some(t) = m.poll_transmit() {
                    let _ = honest.handle_peer(*now, None, local, &t.payload);
                }
                while let Some(t) = honest.poll_transmit() {
                    m.handle_datagram(*now, local, from, &t.payload);
                }
                *now += Duration::from_millis(5);
                m.handle_timeout(*now);
                if honest.poll_timeout().is_some_and(|t| t <= *now) {
                    honest.handle_timeout(*now);
                }
            }
        };
        run(&mut m, &mut honest, &mut now, Duration::from_millis(300));
        assert!(m.link(LinkId(2)).unwrap().path() != crate::link::Path::None, "honest link up");
        while m.poll_event().is_some() {}

        // Hostile peers hold the right key for their link and send renet payloads that
        // renet refuses: the slice crash of renet 2.0.1, garbage after a valid header, an
        // unknown channel id.
        let peer = |id: u32| LinkCrypto::new(&LinkKey([9; 32]), LinkId(id), Side::B);
        let (mut p1, mut p3, mut p4, mut p5) = (peer(1), peer(3), peer(4), peer(5));
        m.handle_datagram(now, local, from, &p1.seal(PeerKind::Data, &renet_slice(0, 0, 2)));
        m.handle_datagram(now, local, from, &p1.seal(PeerKind::Data, &renet_slice(1, 5, 10)));
        m.handle_datagram(now, local, from, &p3.seal(PeerKind::Data, &[0, 0, 0, 0xff, 0xff, 1, 2, 3]));
        m.handle_datagram(now, local, from, &p4.seal(PeerKind::Data, &[0, 0, 9, 0, 1, 0, 1, b'x']));
        // Link 5: renet panics (injected: the patched renet no longer does).
        m.links.get_mut(&LinkId(5)).unwrap().panic_on_data = true;
        m.handle_datagram(now, local, from, &p5.seal(PeerKind::Data, &[0, 0, 0, 0, 0]));
        // More hostile data on a broken link: ignored, counted, reported once.
        m.handle_datagram(now, local, from, &p1.seal(PeerKind::Data, &renet_slice(2, 7, 10)));

        let broken: Vec<LinkId> = std::iter::from_fn(|| m.poll_event())
            .filter_map(|e| match e {
                MeshEvent::Link { link, event: LinkEvent::Broken } => Some(link),
                _ => None,
            })
            .collect();
        assert_eq!(broken, vec![LinkId(1), LinkId(3), LinkId(4), LinkId(5)]);
        let s = m.stats();
        assert_eq!((s.links_broken_renet_error, s.links_broken_renet_panic), (3, 1), "{s:?}");
        assert_eq!(m.link(LinkId(1)).unwrap().broken(), Some(BreakReason::RenetError));
        assert_eq!(m.link(LinkId(5)).unwrap().broken(), Some(BreakReason::RenetPanic));
        assert_eq!(m.link(LinkId(1)).unwrap().stats().dropped_broken, 1);
        assert!(!m.send(LinkId(5), CHANNEL_RELIABLE, b"x".to_vec()).unwrap(), "a broken link sends nothing");
        assert_eq!(m.link(LinkId(2)).unwrap().broken(), None);

        // The honest link keeps delivering both ways, and the broken ones stay quiet.
        for i in 0..20 {
            assert!(m.send(LinkId(2), CHANNEL_RELIABLE, format!("to b {i}").into_bytes()).unwrap());
        }
        honest.send(CHANNEL_RELIABLE, b"to a".to_vec());
        run(&mut m, &mut honest, &mut now, Duration::from_millis(300));
        let got: Vec<Bytes> = std::iter::from_fn(|| honest.receive(CHANNEL_RELIABLE)).collect();
        assert_eq!(got.len(), 20);
        assert_eq!(&got[19][..], b"to b 19");
        assert_eq!(m.receive(LinkId(2), CHANNEL_RELIABLE).as_deref(), Some(&b"to a"[..]));
        assert!(
            std::iter::from_fn(|| m.poll_event())
                .all(|e| !matches!(e, MeshEvent::Link { event: LinkEvent::Broken, .. }))
        );
    }
}
