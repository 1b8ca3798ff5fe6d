//! RFC 4787 NAT models: mapping, filtering, port allocation, hairpinning, binding timeout,
//! and a UDP firewall mode.

use std::collections::{BTreeMap, BTreeSet};

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use rand::Rng;

use super::hash::{FxHashMap, FxHashSet};
use super::stats::DropReason;
use super::topology::Realm;

/// How a NAT reuses a mapping for new destinations (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MappingBehavior {
    /// One public address per internal address, whatever the destination (REQ-1).
    /// What hole punching needs.
    EndpointIndependent,
    /// A new public address for each destination IP.
    AddressDependent,
    /// A new public address for each destination IP and port ("symmetric NAT").
    AddressAndPortDependent,
}

/// Which outside senders may use an existing mapping (RFC 4787 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FilteringBehavior {
    /// Anyone may send to the mapped address ("full cone").
    EndpointIndependent,
    /// Only IPs the internal endpoint has sent to ("restricted cone").
    AddressDependent,
    /// Only exact IP:port pairs the internal endpoint has sent to ("port-restricted cone").
    AddressAndPortDependent,
}

/// How a NAT picks the public port of a new mapping (RFC 4787 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortAllocation {
    /// Keep the internal port when free (REQ-3 "port preservation"); on collision, take the
    /// next free port above it, wrapping within the NAT's port range.
    Preserving,
    /// Each new mapping takes the previous allocation + `step` (skipping ports in use),
    /// starting from a seeded random point of the range. Predictable, which port
    /// prediction techniques exploit.
    Sequential {
        /// Distance between consecutive allocations (0 is treated as 1).
        step: u16,
    },
    /// A uniformly random free port of the range for each new mapping (seeded).
    Random,
}

/// The behaviour of one simulated NAT box, in RFC 4787 terms.
///
/// Start from a preset and adjust with the builder methods or struct update syntax:
///
/// ```
/// use std::time::Duration;
/// use p2pmodel_sim::{NatConfig, PortAllocation};
///
/// let home_router = NatConfig::port_restricted()
///     .public_ip([203, 0, 113, 7])
///     .hairpinning(false)
///     .binding_timeout(Duration::from_secs(30));
/// let cgnat = NatConfig {
///     port_allocation: PortAllocation::Random,
///     ..NatConfig::symmetric_random()
/// };
/// assert_eq!(home_router.public_ips.len(), 1);
/// assert!(cgnat.public_ips.is_empty()); // the Sim assigns one
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// Public (outer-realm) addresses. Empty: the simulator assigns one from 198.18.0.0/15
    /// (RFC 2544 benchmarking range). With several, each internal IP is paired with one of
    /// them (RFC 4787 REQ-2 "paired" pooling), assigned round-robin.
    pub public_ips: Vec<IpAddr>,
    /// Where the NAT's outside sits: the public internet, or behind another NAT (nested
    /// NAT, e.g. a home router behind a carrier-grade NAT).
    pub outer: Realm,
    /// Mapping behaviour (RFC 4787 §4.1).
    pub mapping: MappingBehavior,
    /// Filtering behaviour (RFC 4787 §5).
    pub filtering: FilteringBehavior,
    /// Port allocation (RFC 4787 §4.2).
    pub port_allocation: PortAllocation,
    /// Public ports the NAT may allocate.
    pub port_range: RangeInclusive<u16>,
    /// Whether a host may reach another host behind the same NAT through the NAT's public
    /// address (RFC 4787 §6, REQ-9); the receiver then sees the sender's public mapping.
    pub hairpinning: bool,
    /// Idle time after which a mapping expires (RFC 4787 §4.3; REQ-5 asks for at least two
    /// minutes, many real NATs use 30 s).
    pub binding_timeout: Duration,
    /// Whether inbound datagrams also refresh a mapping's timer. Outbound datagrams always
    /// do (RFC 4787 REQ-6).
    pub inbound_refresh: bool,
    /// Firewall mode: `Some(allow)` drops every UDP datagram to or from a public IP outside
    /// `allow` (a "UDP-blocking" network that lets only the game's servers through).
    pub firewall_allow: Option<BTreeSet<IpAddr>>,
}

impl Default for NatConfig {
    /// A typical home router: [`NatConfig::port_restricted`].
    fn default() -> Self {
        Self::port_restricted()
    }
}

impl NatConfig {
    /// Default binding timeout: two minutes, the RFC 4787 REQ-5 minimum.
    pub const DEFAULT_BINDING_TIMEOUT: Duration = Duration::from_secs(120);

    fn preset(mapping: MappingBehavior, filtering: FilteringBehavior, alloc: PortAllocation) -> Self {
        NatConfig {
            public_ips: Vec::new(),
            outer: Realm::Public,
            mapping,
            filtering,
            port_allocation: alloc,
            port_range: 1024..=65535,
            hairpinning: true,
            binding_timeout: Self::DEFAULT_BINDING_TIMEOUT,
            inbound_refresh: false,
            firewall_allow: None,
        }
    }

    /// "Full cone": endpoint-independent mapping and filtering, port preserving.
    pub fn full_cone() -> Self {
        Self::preset(
            MappingBehavior::EndpointIndependent,
            FilteringBehavior::EndpointIndependent,
            PortAllocation::Preserving,
        )
    }

    /// "Restricted cone": endpoint-independent mapping, address-dependent filtering.
    pub fn restricted() -> Self {
        Self::preset(
            MappingBehavior::EndpointIndependent,
            FilteringBehavior::AddressDependent,
            PortAllocation::Preserving,
        )
    }

    /// "Port-restricted cone": endpoint-independent mapping, address-and-port-dependent
    /// filtering (most home routers).
    pub fn port_restricted() -> Self {
        Self::preset(
            MappingBehavior::EndpointIndependent,
            FilteringBehavior::AddressAndPortDependent,
            PortAllocation::Preserving,
        )
    }

    /// "Symmetric": address-and-port-dependent mapping and filtering, random ports
    /// (hole punching fails; relay needed).
    pub fn symmetric_random() -> Self {
        Self::preset(
            MappingBehavior::AddressAndPortDependent,
            FilteringBehavior::AddressAndPortDependent,
            PortAllocation::Random,
        )
    }

    /// "Symmetric" with sequential ports (step 1): port prediction can work.
    pub fn symmetric_sequential() -> Self {
        Self::preset(
            MappingBehavior::AddressAndPortDependent,
            FilteringBehavior::AddressAndPortDependent,
            PortAllocation::Sequential { step: 1 },
        )
    }

    /// A network that blocks UDP except to and from `allow` (e.g. the shard's public IPs).
    /// Behind the firewall it translates like [`NatConfig::port_restricted`].
    pub fn udp_firewall(allow: impl IntoIterator<Item = IpAddr>) -> Self {
        NatConfig { firewall_allow: Some(allow.into_iter().collect()), ..Self::port_restricted() }
    }

    /// The same NAT with `ip` as its only public address.
    pub fn public_ip(mut self, ip: impl Into<IpAddr>) -> Self {
        self.public_ips = vec![ip.into()];
        self
    }

    /// The same NAT with its outside in `outer` (for NAT behind NAT).
    pub fn outer(mut self, outer: Realm) -> Self {
        self.outer = outer;
        self
    }

    /// The same NAT with hairpinning on or off.
    pub fn hairpinning(mut self, on: bool) -> Self {
        self.hairpinning = on;
        self
    }

    /// The same NAT with this idle mapping timeout.
    pub fn binding_timeout(mut self, timeout: Duration) -> Self {
        self.binding_timeout = timeout;
        self
    }

    /// The same NAT with inbound refresh on or off.
    pub fn inbound_refresh(mut self, on: bool) -> Self {
        self.inbound_refresh = on;
        self
    }

    /// The same NAT with this port allocation.
    pub fn port_allocation(mut self, alloc: PortAllocation) -> Self {
        self.port_allocation = alloc;
        self
    }
}

/// What a mapping is specific to: nothing (EIM), a destination IP (ADM) or a destination
/// IP and port (APDM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MappingScope {
    /// Endpoint-independent: used for every destination.
    Any,
    /// Address-dependent: used only towards this IP.
    Ip(IpAddr),
    /// Address-and-port-dependent: used only towards this address.
    Addr(SocketAddr),
}

/// A snapshot of one live NAT mapping ([`crate::Sim::nat_mappings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingInfo {
    /// Internal (private-side) address.
    pub internal: SocketAddr,
    /// Public (outer-side) address the NAT translates it to.
    pub external: SocketAddr,
    /// Destinations this mapping serves.
    pub scope: MappingScope,
    /// Outside addresses the internal endpoint has sent to through it (the filter's state).
    pub contacted: Vec<SocketAddr>,
    /// When it expires unless refreshed.
    pub expires_at: Instant,
}

#[derive(Debug, Clone)]
struct Mapping {
    internal: SocketAddr,
    external: SocketAddr,
    scope: MappingScope,
    /// Filter state (membership tests only; sorted when reported).
    contacted: FxHashSet<SocketAddr>,
    contacted_ips: FxHashSet<IpAddr>,
    last_active: Instant,
}

/// The state of one NAT box: its config and mapping table.
pub(crate) struct NatBox {
    pub(crate) config: NatConfig,
    /// Mappings by creation number (reported sorted by it, i.e. oldest first).
    mappings: FxHashMap<u64, Mapping>,
    /// Lookup only (never iterated): (internal, scope) → mapping.
    by_key: FxHashMap<(SocketAddr, MappingScope), u64>,
    /// Lookup only (never iterated): external address → mapping.
    by_external: FxHashMap<SocketAddr, u64>,
    /// Internal IP → public IP it is paired with (REQ-2).
    pairing: BTreeMap<IpAddr, IpAddr>,
    next_pair: usize,
    next_mapping: u64,
    /// Next candidate port of sequential allocation.
    seq_next: u16,
    /// Sweep expired mappings when the table reaches this size.
    sweep_at: usize,
}

/// Where an admitted inbound datagram goes.
pub(crate) type Admitted = SocketAddr;

impl NatBox {
    pub(crate) fn new(config: NatConfig, rng: &mut impl Rng) -> Self {
        let (lo, hi) = (*config.port_range.start(), *config.port_range.end());
        let seq_next = if lo <= hi { rng.random_range(lo..=hi) } else { lo };
        NatBox {
            config,
            mappings: FxHashMap::default(),
            by_key: FxHashMap::default(),
            by_external: FxHashMap::default(),
            pairing: BTreeMap::new(),
            next_pair: 0,
            next_mapping: 0,
            seq_next,
            sweep_at: 64,
        }
    }

    /// Whether `ip` is one of this NAT's public addresses.
    pub(crate) fn owns(&self, ip: IpAddr) -> bool {
        self.config.public_ips.contains(&ip)
    }

    /// Drop every mapping (NAT reboot, public IP change).
    pub(crate) fn flush(&mut self) {
        self.mappings.clear();
        self.by_key.clear();
        self.by_external.clear();
        self.pairing.clear();
        self.next_pair = 0;
    }

    fn firewall_allows(&self, ip: IpAddr) -> bool {
        match &self.config.firewall_allow {
            None => true,
            Some(allow) => allow.contains(&ip),
        }
    }

    fn expired(&self, m: &Mapping, now: Instant) -> bool {
        match m.last_active.checked_add(self.config.binding_timeout) {
            Some(deadline) => deadline <= now,
            None => false,
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(m) = self.mappings.remove(&id) {
            self.by_key.remove(&(m.internal, m.scope));
            self.by_external.remove(&m.external);
        }
    }

    fn sweep(&mut self, now: Instant) {
        let dead: Vec<u64> =
            self.mappings.iter().filter(|(_, m)| self.expired(m, now)).map(|(id, _)| *id).collect();
        for id in dead {
            self.remove(id);
        }
        self.sweep_at = (self.mappings.len() * 2).max(64);
    }

    /// Outbound translation of a datagram from `src` (inside) to `dst` (outside).
    /// Returns the public source address, creating or refreshing the mapping.
    pub(crate) fn outbound(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        rng: &mut impl Rng,
    ) -> Result<SocketAddr, DropReason> {
        if !self.owns(dst.ip()) && !self.firewall_allows(dst.ip()) {
            return Err(DropReason::Firewall);
        }
        let scope = match self.config.mapping {
            MappingBehavior::EndpointIndependent => MappingScope::Any,
            MappingBehavior::AddressDependent => MappingScope::Ip(dst.ip()),
            MappingBehavior::AddressAndPortDependent => MappingScope::Addr(dst),
        };
        let existing = self.by_key.get(&(src, scope)).copied();
        let id = match existing {
            Some(id) if !self.expired(&self.mappings[&id], now) => id,
            _ => {
                if let Some(id) = existing {
                    self.remove(id);
                }
                self.create(now, src, scope, dst, rng)?
            }
        };
        let m = self.mappings.get_mut(&id).expect("indexed mapping exists");
        m.last_active = now;
        if m.contacted.insert(dst) {
            m.contacted_ips.insert(dst.ip());
        }
        Ok(m.external)
    }

    fn create(
        &mut self,
        now: Instant,
        internal: SocketAddr,
        scope: MappingScope,
        dst: SocketAddr,
        rng: &mut impl Rng,
    ) -> Result<u64, DropReason> {
        if self.mappings.len() >= self.sweep_at {
            self.sweep(now);
        }
        let ext_ip = self.pick_public_ip(internal.ip(), dst.ip())?;
        let port = self.pick_port(now, ext_ip, internal.port(), rng)?;
        let external = SocketAddr::new(ext_ip, port);
        let id = self.next_mapping;
        self.next_mapping += 1;
        self.mappings.insert(
            id,
            Mapping {
                internal,
                external,
                scope,
                contacted: FxHashSet::default(),
                contacted_ips: FxHashSet::default(),
                last_active: now,
            },
        );
        self.by_key.insert((internal, scope), id);
        self.by_external.insert(external, id);
        Ok(id)
    }

    /// REQ-2 paired pooling: an internal IP keeps the public IP it first got (per family).
    fn pick_public_ip(&mut self, internal: IpAddr, dst: IpAddr) -> Result<IpAddr, DropReason> {
        let family = |ip: &IpAddr| ip.is_ipv4();
        if let Some(ip) = self.pairing.get(&internal)
            && family(ip) == family(&dst)
            && self.owns(*ip)
        {
            return Ok(*ip);
        }
        let pool: Vec<IpAddr> =
            self.config.public_ips.iter().copied().filter(|ip| family(ip) == family(&dst)).collect();
        if pool.is_empty() {
            return Err(DropReason::Unroutable);
        }
        let ip = pool[self.next_pair % pool.len()];
        self.next_pair = self.next_pair.wrapping_add(1);
        self.pairing.insert(internal, ip);
        Ok(ip)
    }

    /// Whether `addr` is free for a new mapping (an expired holder is evicted).
    fn port_free(&mut self, now: Instant, addr: SocketAddr) -> bool {
        match self.by_external.get(&addr).copied() {
            None => true,
            Some(id) => {
                if self.expired(&self.mappings[&id], now) {
                    self.remove(id);
                    true
                } else {
                    false
                }
            }
        }
    }

    fn pick_port(
        &mut self,
        now: Instant,
        ip: IpAddr,
        internal_port: u16,
        rng: &mut impl Rng,
    ) -> Result<u16, DropReason> {
        let (lo, hi) = (*self.config.port_range.start(), *self.config.port_range.end());
        if lo > hi || lo == 0 && hi == 0 {
            return Err(DropReason::PortsExhausted);
        }
        let span = u32::from(hi - lo) + 1;
        // Next port after `p` within the range, wrapping.
        let wrap = |p: u32| -> u16 { (lo as u32 + (p.saturating_sub(lo as u32) % span)) as u16 };
        let scan_from = |this: &mut Self, start: u16, step: u32| -> Option<u16> {
            let mut p = start;
            for _ in 0..span {
                if p != 0 && this.port_free(now, SocketAddr::new(ip, p)) {
                    return Some(p);
                }
                p = wrap(u32::from(p) + step);
            }
            None
        };
        let port = match self.config.port_allocation {
            PortAllocation::Preserving => {
                if internal_port != 0 && self.port_free(now, SocketAddr::new(ip, internal_port)) {
                    Some(internal_port)
                } else {
                    scan_from(self, wrap(u32::from(internal_port) + 1), 1)
                }
            }
            PortAllocation::Sequential { step } => {
                let step = u32::from(step.max(1)) % span;
                let step = if step == 0 { 1 } else { step };
                let start = wrap(u32::from(self.seq_next));
                let found = scan_from(self, start, step).or_else(|| scan_from(self, start, 1));
                if let Some(p) = found {
                    self.seq_next = wrap(u32::from(p) + step);
                }
                found
            }
            PortAllocation::Random => {
                let mut found = None;
                for _ in 0..32 {
                    let p = rng.random_range(lo..=hi);
                    if p != 0 && self.port_free(now, SocketAddr::new(ip, p)) {
                        found = Some(p);
                        break;
                    }
                }
                found.or_else(|| {
                    let start = rng.random_range(lo..=hi);
                    scan_from(self, start, 1)
                })
            }
        };
        port.ok_or(DropReason::PortsExhausted)
    }

    /// Inbound processing of a datagram from `src` (outside) to `dst` (one of our public
    /// addresses). Returns the internal address to forward to.
    pub(crate) fn inbound(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        hairpin: bool,
    ) -> Result<Admitted, DropReason> {
        if !hairpin && !self.firewall_allows(src.ip()) {
            return Err(DropReason::Firewall);
        }
        let Some(id) = self.by_external.get(&dst).copied() else {
            return Err(DropReason::NoMapping);
        };
        if self.expired(&self.mappings[&id], now) {
            self.remove(id);
            return Err(DropReason::NoMapping);
        }
        let inbound_refresh = self.config.inbound_refresh;
        let filtering = self.config.filtering;
        let m = self.mappings.get_mut(&id).expect("indexed mapping exists");
        let admitted = match filtering {
            FilteringBehavior::EndpointIndependent => true,
            FilteringBehavior::AddressDependent => m.contacted_ips.contains(&src.ip()),
            FilteringBehavior::AddressAndPortDependent => m.contacted.contains(&src),
        };
        if !admitted {
            return Err(DropReason::NatFilter);
        }
        if inbound_refresh {
            m.last_active = now;
        }
        Ok(m.internal)
    }

    /// Live mappings in creation order.
    pub(crate) fn live_mappings(&self, now: Instant) -> Vec<MappingInfo> {
        let mut live: Vec<(&u64, &Mapping)> =
            self.mappings.iter().filter(|(_, m)| !self.expired(m, now)).collect();
        live.sort_unstable_by_key(|(id, _)| **id);
        live.into_iter()
            .map(|(_, m)| MappingInfo {
                internal: m.internal,
                external: m.external,
                scope: m.scope,
                contacted: {
                    let mut c: Vec<SocketAddr> = m.contacted.iter().copied().collect();
                    c.sort_unstable();
                    c
                },
                expires_at: m.last_active.checked_add(self.config.binding_timeout).unwrap_or(m.last_active),
            })
            .collect()
    }
}
