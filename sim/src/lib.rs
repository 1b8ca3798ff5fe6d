//! # p2pmodel-sim: a deterministic, event-driven network simulator with RFC 4787 NAT models.
//!
//! Use it to run any [`Endpoint`] — the core's (`p2pmodel-core`) STUN server, relay and mesh clients, or
//! your own game networking code — across home routers, symmetric NATs, UDP-blocking
//! firewalls, lossy Wi-Fi links and address changes, in virtual time: an hour of play runs
//! in well under a second, and the same seed always gives the same run.
//!
//! # Model
//!
//! - **Realms.** Hosts live in the public internet ([`Realm::Public`]) or in the private
//!   network behind a NAT ([`Realm::Behind`]). A destination address is looked up only in
//!   the realm the datagram is in, so every site may use 192.168.0.0/24.
//! - **Path.** host → its uplink ([`LinkParams`]) → its NAT (translate, create mapping) →
//!   public core (optional [`Sim::set_core`]) → destination NAT (filter, reverse-translate)
//!   → destination host's uplink → `handle_datagram(now, local, from, data)`, where `local`
//!   is the address on the receiving host and `from` the sender as translated on the way.
//!   Two hosts in the same realm talk directly over their two uplinks (LAN).
//! - **NATs** follow RFC 4787: mapping, filtering, port allocation, hairpinning, binding
//!   timeout with outbound (and optionally inbound) refresh, plus a UDP firewall mode. See
//!   [`NatConfig`] and its presets.
//! - **Time** is virtual: `Instant` = start + elapsed. The simulator jumps straight to the
//!   next event — the next datagram arrival or the earliest `poll_timeout` of any node —
//!   so idle time costs nothing.
//! - **Determinism.** All randomness (loss, jitter, duplication, random ports) comes from one
//!   ChaCha8 generator seeded with a `u64`; ties are broken by scheduling order; nothing
//!   reads the real clock. Same seed, same nodes → identical [`TraceEvent`]s.
//! - **Robustness.** Whatever a node sends (foreign source address, broadcast destination,
//!   a 1 MB payload), the datagram is dropped and counted under a [`DropReason`]; the
//!   simulator never panics on node output.
//!
//! # The loop
//!
//! Each [`Sim::step`] first collects every node's pending `poll_transmit` (so datagrams a
//! test queued through [`Sim::node_mut`] leave at the current time), then processes the
//! single earliest event: a datagram hop, a delivery to a node, or the timeouts of the
//! nodes whose `poll_timeout` has come. Like any driver, the simulator reads a node's
//! `poll_timeout` again after each call into it (`handle_datagram`, `handle_timeout`, a
//! `poll_transmit` that returned a datagram) and after [`Sim::node_mut`]; a deadline changed
//! behind its back (through shared state) is noticed at the node's next call.
//!
//! # Example
//!
//! A client behind a home router pings an echo server on the public internet:
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::{Duration, Instant};
//! use p2pmodel_core::endpoint::{Endpoint, Transmit};
//! use p2pmodel_sim::{HostConfig, LinkParams, NatConfig, Sim};
//!
//! /// Sends back every datagram to where it came from.
//! #[derive(Default)]
//! struct Echo { out: Vec<Transmit> }
//! impl Endpoint for Echo {
//!     fn handle_datagram(&mut self, _now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]) {
//!         self.out.push(Transmit { src: Some(local), dst: from, payload: data.to_vec() });
//!     }
//!     fn handle_timeout(&mut self, _now: Instant) {}
//!     fn poll_transmit(&mut self) -> Option<Transmit> { self.out.pop() }
//!     fn poll_timeout(&self) -> Option<Instant> { None }
//! }
//!
//! /// Sends one ping, then records what comes back.
//! struct Client { server: SocketAddr, out: Vec<Transmit>, got: Vec<(SocketAddr, Vec<u8>)> }
//! impl Endpoint for Client {
//!     fn handle_datagram(&mut self, _now: Instant, _local: SocketAddr, from: SocketAddr, data: &[u8]) {
//!         self.got.push((from, data.to_vec()));
//!     }
//!     fn handle_timeout(&mut self, _now: Instant) {}
//!     fn poll_transmit(&mut self) -> Option<Transmit> { self.out.pop() }
//!     fn poll_timeout(&self) -> Option<Instant> { None }
//! }
//!
//! let mut sim = Sim::new(42);
//! let server = sim.add_host(HostConfig::public([198, 51, 100, 1]), Echo::default());
//! let server_addr = sim.host_addr(server);
//!
//! let home = sim.add_nat(NatConfig::port_restricted().public_ip([203, 0, 113, 5]));
//! let wifi = LinkParams::with_latency(Duration::from_millis(20)).jitter(Duration::from_millis(5));
//! let client = Client {
//!     server: server_addr,
//!     out: vec![Transmit { src: None, dst: server_addr, payload: b"ping".to_vec() }],
//!     got: Vec::new(),
//! };
//! let client = sim.add_host(HostConfig::behind(home, [192, 168, 0, 2]).uplink(wifi), client);
//!
//! let deadline = sim.now() + Duration::from_secs(1);
//! assert!(sim.run_until(deadline, |sim| !sim.node::<Client>(client).got.is_empty()));
//!
//! let c = sim.node::<Client>(client);
//! assert_eq!(c.got[0], (c.server, b"ping".to_vec()));
//! // Two trips over the Wi-Fi uplink, 15–25 ms each.
//! assert!(sim.elapsed() >= Duration::from_millis(30));
//! assert_eq!(sim.stats().delivered, 2);
//! ```

mod hash;
pub mod hosts;
mod link;
mod nat;
mod stats;
mod topology;

#[cfg(test)]
mod tests;

pub use link::LinkParams;
pub use nat::{FilteringBehavior, MappingBehavior, MappingInfo, MappingScope, NatConfig, PortAllocation};
pub use stats::{DropReason, Stats, TraceEvent, TraceKind};
pub use topology::{HostConfig, HostId, NatId, PathEnd, Realm, SimError};

use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use hash::FxHashMap;
use nat::NatBox;
use p2pmodel_core::endpoint::{Endpoint, Transmit};

// A `Sim` is its own world: drivers generic over `W: AsRef<Sim> + AsMut<Sim>` (the Bevy
// driver's `SimMeshIo`, a test world wrapping a `Sim`) accept a bare `Sim` too.
impl AsRef<Sim> for Sim {
    fn as_ref(&self) -> &Sim {
        self
    }
}

impl AsMut<Sim> for Sim {
    fn as_mut(&mut self) -> &mut Sim {
        self
    }
}

/// An [`Endpoint`] the simulator can also hand back as its concrete type.
trait SimNode: Endpoint + Any {}
impl<T: Endpoint + Any> SimNode for T {}

/// Who owns an IP address inside a realm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Host(HostId),
    /// The outer side of a NAT.
    Nat(NatId),
}

struct Host {
    cfg: HostConfig,
    node: Box<dyn SimNode>,
    stats: Stats,
    /// The instant the node's timer last fired, and how often it fired then.
    fired_at: Option<Instant>,
    fires: u32,
    /// The node's `poll_timeout`, as last read.
    timer: Option<Instant>,
    /// Set by every call into the node; the timer is re-read before the next event.
    timer_stale: bool,
}

#[derive(Debug, Clone)]
struct Packet {
    id: u64,
    origin: HostId,
    src: SocketAddr,
    dst: SocketAddr,
    payload: Bytes,
}

/// Where a datagram is when its event fires.
#[derive(Debug, Clone, Copy)]
enum Hop {
    /// Just crossed its sender's uplink into the sender's realm.
    Edge(Realm),
    /// Arrived in a realm's switch (after the core, for the public realm).
    Arrive(Realm),
    /// Crossed the receiver's uplink: hand it to the node.
    Deliver(HostId, Realm),
}

/// A queued event: (nanoseconds since the start, scheduling order, slot in `Sim::slots`).
/// `Reverse` makes the `BinaryHeap` pop the earliest, then first-scheduled, event; the
/// datagram itself stays in its slot so the heap only moves small integer keys.
type Scheduled = Reverse<(u64, u64, u32)>;

/// The earliest pending event: a datagram hop, or node timers.
#[derive(Debug, Clone, Copy)]
struct NextEvent {
    at: Instant,
    timer: bool,
}

/// A node's timer is fired at most this often at one virtual instant, so a node whose
/// `poll_timeout` never moves past `now` cannot stall the simulation.
const MAX_FIRES_PER_INSTANT: u32 = 1000;

/// Nested NATs deeper than this are cut as a routing loop.
const MAX_HOPS: usize = 32;

/// Callback receiving every [`TraceEvent`] as it happens.
type TraceHook = Box<dyn FnMut(&TraceEvent)>;

/// The network simulator: hosts running [`Endpoint`]s, NATs, links and a virtual clock.
///
/// See the [module documentation](self) for the model and an example.
pub struct Sim {
    seed: u64,
    start: Instant,
    now: Instant,
    rng: ChaCha8Rng,
    hosts: Vec<Host>,
    nats: Vec<NatBox>,
    /// Who owns each address, per realm (lookup only, never iterated).
    addrs: FxHashMap<(Realm, IpAddr), Owner>,
    queue: BinaryHeap<Scheduled>,
    /// Datagrams in flight, by slot; `free` lists empty slots for reuse.
    slots: Vec<Option<(Hop, Packet)>>,
    free: Vec<u32>,
    /// Earliest node deadline, valid unless `timers_dirty`.
    timer_min: Option<Instant>,
    timers_dirty: bool,
    /// Some node's timer is suppressed at the current instant (see `MAX_FIRES_PER_INSTANT`).
    suppressed: bool,
    seq: u64,
    next_packet: u64,
    core: LinkParams,
    blocks: BTreeSet<(PathEnd, PathEnd)>,
    stats: Stats,
    max_datagram: usize,
    trace_log: Option<Vec<TraceEvent>>,
    trace_hook: Option<TraceHook>,
    next_auto_ip: u32,
    steps: u64,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.seed)
            .field("elapsed", &self.elapsed())
            .field("hosts", &self.hosts.len())
            .field("nats", &self.nats.len())
            .field("queued", &self.queue.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// Largest UDP payload over IPv4 (65,535 − 8 − 20), the default [`Sim::max_datagram`].
    pub const MAX_UDP_PAYLOAD: usize = 65_507;

    /// A new, empty simulation whose randomness is seeded with `seed`.
    ///
    /// Virtual time starts at an `Instant` read once here; use [`Sim::with_start`] to choose
    /// it. Traces hold offsets from the start, so they do not depend on it.
    pub fn new(seed: u64) -> Self {
        Self::with_start(Instant::now(), seed)
    }

    /// A new, empty simulation whose virtual clock starts at `start`.
    pub fn with_start(start: Instant, seed: u64) -> Self {
        Sim {
            seed,
            start,
            now: start,
            rng: ChaCha8Rng::seed_from_u64(seed),
            hosts: Vec::new(),
            nats: Vec::new(),
            addrs: FxHashMap::default(),
            queue: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            timer_min: None,
            timers_dirty: true,
            suppressed: false,
            seq: 0,
            next_packet: 0,
            core: LinkParams::IDEAL,
            blocks: BTreeSet::new(),
            stats: Stats::default(),
            max_datagram: Self::MAX_UDP_PAYLOAD,
            trace_log: None,
            trace_hook: None,
            next_auto_ip: u32::from(Ipv4Addr::new(198, 18, 0, 1)),
            steps: 0,
        }
    }

    // ----- clock -------------------------------------------------------------------------

    /// The seed this simulation was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The virtual time the simulation started at.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// How many events [`Sim::step`] has processed so far (a cost measure).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    // ----- topology ----------------------------------------------------------------------

    /// Add a NAT box. With no public IP in `config`, one is assigned from 198.18.0.0/15.
    ///
    /// # Panics
    /// If the config is invalid; see [`Sim::try_add_nat`] for the non-panicking form.
    pub fn add_nat(&mut self, config: NatConfig) -> NatId {
        self.try_add_nat(config).unwrap_or_else(|e| panic!("Sim::add_nat: {e}"))
    }

    /// Add a NAT box, or say why the config cannot be used (unknown outer NAT, public IP
    /// already taken in the outer realm, empty port range).
    pub fn try_add_nat(&mut self, mut config: NatConfig) -> Result<NatId, SimError> {
        if let Realm::Behind(outer) = config.outer {
            self.check_nat(outer)?;
        }
        if config.port_range.is_empty() {
            return Err(SimError::EmptyPortRange);
        }
        let id = NatId(self.nats.len() as u32);
        if config.public_ips.is_empty() {
            config.public_ips = vec![self.auto_ip(config.outer)];
        }
        self.check_ips_free(config.outer, &config.public_ips, Owner::Nat(id))?;
        for ip in &config.public_ips {
            self.addrs.insert((config.outer, *ip), Owner::Nat(id));
        }
        self.nats.push(NatBox::new(config, &mut self.rng));
        Ok(id)
    }

    /// Add a host running `node`.
    ///
    /// # Panics
    /// If the config is invalid; see [`Sim::try_add_host`] for the non-panicking form.
    pub fn add_host<N: Endpoint + 'static>(&mut self, config: HostConfig, node: N) -> HostId {
        self.try_add_host(config, node).unwrap_or_else(|e| panic!("Sim::add_host: {e}"))
    }

    /// Add a host running `node`, or say why the config cannot be used (no address,
    /// unknown NAT, address already taken in that realm).
    pub fn try_add_host<N: Endpoint + 'static>(
        &mut self,
        config: HostConfig,
        node: N,
    ) -> Result<HostId, SimError> {
        let id = HostId(self.hosts.len() as u32);
        self.check_host_config(&config, id)?;
        for ip in &config.ips {
            self.addrs.insert((config.realm, *ip), Owner::Host(id));
        }
        self.hosts.push(Host {
            cfg: config,
            node: Box::new(node),
            stats: Stats::default(),
            fired_at: None,
            fires: 0,
            timer: None,
            timer_stale: true,
        });
        Ok(id)
    }

    fn check_host_config(&self, config: &HostConfig, id: HostId) -> Result<(), SimError> {
        if config.ips.is_empty() {
            return Err(SimError::NoAddress);
        }
        if let Realm::Behind(n) = config.realm {
            self.check_nat(n)?;
        }
        self.check_ips_free(config.realm, &config.ips, Owner::Host(id))
    }

    fn check_nat(&self, nat: NatId) -> Result<(), SimError> {
        if nat.index() < self.nats.len() { Ok(()) } else { Err(SimError::UnknownNat(nat)) }
    }

    fn check_ips_free(&self, realm: Realm, ips: &[IpAddr], me: Owner) -> Result<(), SimError> {
        for (i, ip) in ips.iter().enumerate() {
            if !usable_ip(*ip) {
                return Err(SimError::BadAddress(*ip));
            }
            let dup_in_list = ips[..i].contains(ip);
            let taken = matches!(self.addrs.get(&(realm, *ip)), Some(o) if *o != me);
            if dup_in_list || taken {
                return Err(SimError::AddressInUse { ip: *ip, realm });
            }
        }
        Ok(())
    }

    /// Next free address of 198.18.0.0/15 in `realm`.
    fn auto_ip(&mut self, realm: Realm) -> IpAddr {
        loop {
            let ip = IpAddr::V4(Ipv4Addr::from(self.next_auto_ip));
            self.next_auto_ip = self.next_auto_ip.wrapping_add(1);
            if !self.addrs.contains_key(&(realm, ip)) {
                return ip;
            }
        }
    }

    /// Number of hosts added so far.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Number of NATs added so far.
    pub fn nat_count(&self) -> usize {
        self.nats.len()
    }

    fn host(&self, host: HostId) -> &Host {
        self.hosts.get(host.index()).unwrap_or_else(|| panic!("{}", SimError::UnknownHost(host)))
    }

    fn host_mut(&mut self, host: HostId) -> &mut Host {
        self.hosts.get_mut(host.index()).unwrap_or_else(|| panic!("{}", SimError::UnknownHost(host)))
    }

    fn nat(&self, nat: NatId) -> &NatBox {
        self.nats.get(nat.index()).unwrap_or_else(|| panic!("{}", SimError::UnknownNat(nat)))
    }

    /// The host's default local address: its first IP and `default_port` (what
    /// `Transmit::src == None` sends from). For a host behind a NAT this is its private
    /// address; what others see depends on the NAT ([`Sim::nat_mappings`]).
    ///
    /// # Panics
    /// If `host` is not from this simulator.
    pub fn host_addr(&self, host: HostId) -> SocketAddr {
        let h = self.host(host);
        SocketAddr::new(h.cfg.ips[0], h.cfg.default_port)
    }

    /// All IP addresses of the host.
    ///
    /// # Panics
    /// If `host` is not from this simulator.
    pub fn host_ips(&self, host: HostId) -> &[IpAddr] {
        &self.host(host).cfg.ips
    }

    /// The realm the host is in.
    ///
    /// # Panics
    /// If `host` is not from this simulator.
    pub fn host_realm(&self, host: HostId) -> Realm {
        self.host(host).cfg.realm
    }

    /// The host's uplink.
    ///
    /// # Panics
    /// If `host` is not from this simulator.
    pub fn uplink(&self, host: HostId) -> LinkParams {
        self.host(host).cfg.uplink
    }

    /// The NAT's first public IP.
    ///
    /// # Panics
    /// If `nat` is not from this simulator.
    pub fn nat_public_ip(&self, nat: NatId) -> IpAddr {
        self.nat(nat).config.public_ips[0]
    }

    /// All public IPs of the NAT.
    ///
    /// # Panics
    /// If `nat` is not from this simulator.
    pub fn nat_public_ips(&self, nat: NatId) -> &[IpAddr] {
        &self.nat(nat).config.public_ips
    }

    /// The NAT's behaviour.
    ///
    /// # Panics
    /// If `nat` is not from this simulator.
    pub fn nat_config(&self, nat: NatId) -> &NatConfig {
        &self.nat(nat).config
    }

    /// The NAT's live (unexpired) mappings, oldest first.
    ///
    /// # Panics
    /// If `nat` is not from this simulator.
    pub fn nat_mappings(&self, nat: NatId) -> Vec<MappingInfo> {
        self.nat(nat).live_mappings(self.now)
    }

    /// The public address `internal` is currently mapped to for `remote`, if a live mapping
    /// exists — what `remote` would see as the source of a datagram sent now.
    ///
    /// # Panics
    /// If `nat` is not from this simulator.
    pub fn nat_mapping_for(
        &self,
        nat: NatId,
        internal: SocketAddr,
        remote: SocketAddr,
    ) -> Option<SocketAddr> {
        self.nat_mappings(nat)
            .into_iter()
            .find(|m| {
                m.internal == internal
                    && match m.scope {
                        MappingScope::Any => true,
                        MappingScope::Ip(ip) => ip == remote.ip(),
                        MappingScope::Addr(a) => a == remote,
                    }
            })
            .map(|m| m.external)
    }

    // ----- mid-run changes ---------------------------------------------------------------

    /// Set the latency, jitter, loss and duplication of the public core, crossed once by
    /// every datagram that travels through the public realm (default: ideal).
    pub fn set_core(&mut self, core: LinkParams) {
        self.core = core;
    }

    /// The public core's link parameters.
    pub fn core(&self) -> LinkParams {
        self.core
    }

    /// Change a host's uplink (e.g. Wi-Fi degrades). Datagrams already in flight keep the
    /// delay they were given.
    ///
    /// # Panics
    /// If `host` is not from this simulator.
    pub fn set_uplink(&mut self, host: HostId, uplink: LinkParams) {
        self.host_mut(host).cfg.uplink = uplink;
    }

    /// Move a host to another realm with new addresses (Wi-Fi ↔ mobile switch, roaming).
    ///
    /// Its node keeps running; datagrams still in flight to its old addresses are dropped
    /// as [`DropReason::NoSuchHost`]; its old NAT's mappings stay until they time out.
    pub fn move_host(&mut self, host: HostId, realm: Realm, ips: Vec<IpAddr>) -> Result<(), SimError> {
        if host.index() >= self.hosts.len() {
            return Err(SimError::UnknownHost(host));
        }
        let mut cfg = self.hosts[host.index()].cfg.clone();
        let old_realm = cfg.realm;
        let old_ips = std::mem::replace(&mut cfg.ips, ips);
        cfg.realm = realm;
        // Validate as if the host's old addresses were already gone.
        for ip in &old_ips {
            self.addrs.remove(&(old_realm, *ip));
        }
        if let Err(e) = self.check_host_config(&cfg, host) {
            for ip in &old_ips {
                self.addrs.insert((old_realm, *ip), Owner::Host(host));
            }
            return Err(e);
        }
        for ip in &cfg.ips {
            self.addrs.insert((realm, *ip), Owner::Host(host));
        }
        self.hosts[host.index()].cfg = cfg;
        Ok(())
    }

    /// Give a NAT new public IPs (ISP renumbering, NAT reboot, mobile network change).
    /// All its mappings are lost; datagrams in flight to the old IPs are dropped as
    /// [`DropReason::NoSuchHost`]. An empty list assigns a fresh address.
    pub fn set_nat_public_ips(&mut self, nat: NatId, ips: Vec<IpAddr>) -> Result<(), SimError> {
        self.check_nat(nat)?;
        let outer = self.nats[nat.index()].config.outer;
        let ips = if ips.is_empty() { vec![self.auto_ip(outer)] } else { ips };
        self.check_ips_free(outer, &ips, Owner::Nat(nat))?;
        let b = &mut self.nats[nat.index()];
        for ip in &b.config.public_ips {
            self.addrs.remove(&(outer, *ip));
        }
        for ip in &ips {
            self.addrs.insert((outer, *ip), Owner::Nat(nat));
        }
        b.config.public_ips = ips;
        b.flush();
        Ok(())
    }

    /// Give a NAT a single new public IP; see [`Sim::set_nat_public_ips`].
    pub fn set_nat_public_ip(&mut self, nat: NatId, ip: impl Into<IpAddr>) -> Result<(), SimError> {
        self.set_nat_public_ips(nat, vec![ip.into()])
    }

    /// Forget all of a NAT's mappings (a router reboot that keeps its IP).
    ///
    /// # Panics
    /// If `nat` is not from this simulator.
    pub fn flush_nat(&mut self, nat: NatId) {
        self.check_nat(nat).unwrap_or_else(|e| panic!("Sim::flush_nat: {e}"));
        self.nats[nat.index()].flush();
    }

    /// Drop all traffic between `a` and `b`, in both directions, wherever it is seen (e.g.
    /// the two peers' public IPs, to kill their direct path while the relay keeps working).
    /// Counted as [`DropReason::Blocked`].
    pub fn block(&mut self, a: impl Into<PathEnd>, b: impl Into<PathEnd>) {
        let (a, b) = (a.into(), b.into());
        self.blocks.insert((a.min(b), a.max(b)));
    }

    /// Remove a rule added with [`Sim::block`]; returns whether it existed.
    pub fn unblock(&mut self, a: impl Into<PathEnd>, b: impl Into<PathEnd>) -> bool {
        let (a, b) = (a.into(), b.into());
        self.blocks.remove(&(a.min(b), a.max(b)))
    }

    /// Remove every block rule.
    pub fn clear_blocks(&mut self) {
        self.blocks.clear();
    }

    /// Set the largest payload the network carries; bigger datagrams are dropped as
    /// [`DropReason::TooLarge`] (default [`Sim::MAX_UDP_PAYLOAD`]).
    pub fn set_max_datagram(&mut self, bytes: usize) {
        self.max_datagram = bytes;
    }

    /// The largest payload the network carries.
    pub fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    // ----- nodes -------------------------------------------------------------------------

    /// The node running on `host`, as its concrete type.
    ///
    /// # Panics
    /// If `host` is not from this simulator or its node is not a `T`.
    pub fn node<T: Endpoint + 'static>(&self, host: HostId) -> &T {
        self.try_node(host)
            .unwrap_or_else(|| panic!("Sim::node: {host} does not run a {}", std::any::type_name::<T>()))
    }

    /// The node running on `host`, mutably (to call its API). Datagrams it queues are
    /// picked up at the current virtual time by the next step.
    ///
    /// # Panics
    /// If `host` is not from this simulator or its node is not a `T`.
    pub fn node_mut<T: Endpoint + 'static>(&mut self, host: HostId) -> &mut T {
        self.try_node_mut(host)
            .unwrap_or_else(|| panic!("Sim::node_mut: {host} does not run a {}", std::any::type_name::<T>()))
    }

    /// The node on `host` if the host exists and runs a `T`.
    pub fn try_node<T: Endpoint + 'static>(&self, host: HostId) -> Option<&T> {
        let node: &dyn Any = &*self.hosts.get(host.index())?.node;
        node.downcast_ref::<T>()
    }

    /// The node on `host`, mutably, if the host exists and runs a `T`.
    pub fn try_node_mut<T: Endpoint + 'static>(&mut self, host: HostId) -> Option<&mut T> {
        let h = self.hosts.get_mut(host.index())?;
        // The caller may change the node's deadline.
        h.timer_stale = true;
        let node: &mut dyn Any = &mut *h.node;
        node.downcast_mut::<T>()
    }

    // ----- stats and trace ---------------------------------------------------------------

    /// Counters for the whole simulation.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counters for one host: datagrams it sent (and their drops and duplicates) and
    /// datagrams delivered to it.
    ///
    /// # Panics
    /// If `host` is not from this simulator.
    pub fn host_stats(&self, host: HostId) -> &Stats {
        &self.host(host).stats
    }

    /// Start (`true`) or stop and discard (`false`) recording every [`TraceEvent`] in
    /// memory; read them with [`Sim::trace`].
    pub fn record_trace(&mut self, on: bool) {
        self.trace_log = if on { Some(Vec::new()) } else { None };
    }

    /// The trace recorded since [`Sim::record_trace`] (empty when not recording).
    pub fn trace(&self) -> &[TraceEvent] {
        self.trace_log.as_deref().unwrap_or(&[])
    }

    /// Take the recorded trace, leaving recording on with an empty log.
    pub fn take_trace(&mut self) -> Vec<TraceEvent> {
        self.trace_log.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Call `hook` with every [`TraceEvent`] as it happens (e.g. print it while debugging a
    /// failing test). Replaces any previous hook.
    pub fn set_trace_hook(&mut self, hook: impl FnMut(&TraceEvent) + 'static) {
        self.trace_hook = Some(Box::new(hook));
    }

    /// Remove the trace hook.
    pub fn clear_trace_hook(&mut self) {
        self.trace_hook = None;
    }

    fn emit(&mut self, kind: TraceKind, pkt: &Packet) {
        if self.trace_log.is_none() && self.trace_hook.is_none() {
            return;
        }
        let ev = TraceEvent {
            at: self.now - self.start,
            packet: pkt.id,
            origin: pkt.origin,
            kind,
            src: pkt.src,
            dst: pkt.dst,
            len: pkt.payload.len(),
        };
        if let Some(hook) = &mut self.trace_hook {
            hook(&ev);
        }
        if let Some(log) = &mut self.trace_log {
            log.push(ev);
        }
    }

    // ----- running -----------------------------------------------------------------------

    /// Process the next event, first sending whatever the nodes have queued. Returns
    /// `false` when nothing is left to do: no datagram in flight and no node timer.
    pub fn step(&mut self) -> bool {
        match self.next_event() {
            Some(next) => {
                self.process_event(next);
                true
            }
            None => false,
        }
    }

    /// When the next event will happen (after sending what the nodes have queued), or
    /// `None` if nothing is pending.
    pub fn next_event_time(&mut self) -> Option<Instant> {
        self.next_event().map(|n| n.at)
    }

    /// Send what the nodes have queued, then find the next event.
    fn next_event(&mut self) -> Option<NextEvent> {
        self.flush();
        let start = self.start;
        let datagram = self.queue.peek().map(|Reverse((at, _, _))| start + Duration::from_nanos(*at));
        match (datagram, self.next_timer()) {
            (None, None) => None,
            (Some(at), None) => Some(NextEvent { at, timer: false }),
            (None, Some(at)) => Some(NextEvent { at, timer: true }),
            // Datagrams first on a tie.
            (Some(d), Some(t)) => {
                Some(if t < d { NextEvent { at: t, timer: true } } else { NextEvent { at: d, timer: false } })
            }
        }
    }

    fn process_event(&mut self, next: NextEvent) {
        self.advance_to(next.at);
        self.steps += 1;
        if next.timer {
            self.fire_timers();
        } else if let Some(Reverse((_, _, slot))) = self.queue.pop() {
            let (hop, pkt) = self.slots[slot as usize].take().expect("a queued slot holds its datagram");
            self.free.push(slot);
            self.process(hop, pkt);
        }
    }

    /// Run every event up to `now + duration`, then set the clock to that time. A duration
    /// too large for the clock (e.g. `Duration::MAX`) runs until nothing is left to do.
    pub fn run_for(&mut self, duration: Duration) {
        let Some(deadline) = self.now.checked_add(duration) else {
            while self.step() {}
            return;
        };
        while let Some(next) = self.next_event() {
            if next.at > deadline {
                break;
            }
            self.process_event(next);
        }
        self.advance_to(deadline);
    }

    /// Run until `condition` holds (checked before the first and after every step) or the
    /// virtual clock would pass `deadline`. Returns whether the condition held; on `false`
    /// the clock is left at `deadline`.
    pub fn run_until(&mut self, deadline: Instant, mut condition: impl FnMut(&mut Sim) -> bool) -> bool {
        loop {
            if condition(self) {
                return true;
            }
            match self.next_event() {
                Some(next) if next.at <= deadline => self.process_event(next),
                _ => {
                    self.advance_to(deadline);
                    return condition(self);
                }
            }
        }
    }

    fn advance_to(&mut self, t: Instant) {
        if t > self.now {
            self.now = t;
            if self.suppressed {
                // Suppressed timers fire again at the new instant.
                self.suppressed = false;
                self.timers_dirty = true;
            }
        }
    }

    /// Send every datagram every node has queued, in host order, and re-read the timer of
    /// every node that was called into since its timer was last read.
    fn flush(&mut self) {
        for i in 0..self.hosts.len() {
            while let Some(t) = self.hosts[i].node.poll_transmit() {
                self.hosts[i].timer_stale = true;
                self.send(HostId(i as u32), t);
            }
            let h = &mut self.hosts[i];
            if h.timer_stale {
                h.timer_stale = false;
                let t = h.node.poll_timeout();
                if t != h.timer {
                    h.timer = t;
                    self.timers_dirty = true;
                }
            }
        }
    }

    /// The deadline of a node's timer, unless it already fired too often at `now`.
    fn deadline(&self, i: usize) -> Option<Instant> {
        let h = &self.hosts[i];
        let d = h.timer?.max(self.now);
        if d == self.now && h.fired_at == Some(self.now) && h.fires >= MAX_FIRES_PER_INSTANT {
            return None;
        }
        Some(d)
    }

    /// The earliest node deadline (cached until a node's timer or suppression changes).
    fn next_timer(&mut self) -> Option<Instant> {
        if self.timers_dirty {
            self.timer_min = (0..self.hosts.len()).filter_map(|i| self.deadline(i)).min();
            self.timers_dirty = false;
        }
        self.timer_min.map(|t| t.max(self.now))
    }

    fn fire_timers(&mut self) {
        let now = self.now;
        for i in 0..self.hosts.len() {
            if self.deadline(i).is_some_and(|d| d <= now) {
                let h = &mut self.hosts[i];
                h.fires = if h.fired_at == Some(now) { h.fires + 1 } else { 1 };
                h.fired_at = Some(now);
                h.timer_stale = true;
                if h.fires >= MAX_FIRES_PER_INSTANT {
                    // Suppressed at this instant: forget it until the clock moves.
                    self.suppressed = true;
                    self.timers_dirty = true;
                }
                h.node.handle_timeout(now);
            }
        }
    }

    fn schedule(&mut self, delay: Duration, hop: Hop, pkt: Packet) {
        let at = self.now.checked_add(delay).and_then(|at| u64::try_from((at - self.start).as_nanos()).ok());
        match at {
            Some(at) => {
                let seq = self.seq;
                self.seq += 1;
                let slot = match self.free.pop() {
                    Some(slot) => {
                        self.slots[slot as usize] = Some((hop, pkt));
                        slot
                    }
                    None => {
                        self.slots.push(Some((hop, pkt)));
                        (self.slots.len() - 1) as u32
                    }
                };
                self.queue.push(Reverse((at, seq, slot)));
            }
            // A delay past the end of representable time never arrives.
            None => self.drop_packet(&pkt, DropReason::Loss),
        }
    }

    /// Send a datagram across a link, then on to `hop`.
    fn transit(&mut self, link: LinkParams, pkt: Packet, hop: Hop) {
        if link.is_ideal() && !matches!(hop, Hop::Deliver(..)) {
            return self.process(hop, pkt);
        }
        match link.sample(&mut self.rng) {
            None => self.drop_packet(&pkt, DropReason::Loss),
            Some(copies) => {
                if let Some(second) = copies.second {
                    self.stats.duplicated += 1;
                    self.hosts[pkt.origin.index()].stats.duplicated += 1;
                    self.schedule(second, hop, pkt.clone());
                }
                self.schedule(copies.first, hop, pkt);
            }
        }
    }

    fn drop_packet(&mut self, pkt: &Packet, reason: DropReason) {
        self.stats.count_drop(reason);
        self.hosts[pkt.origin.index()].stats.count_drop(reason);
        self.emit(TraceKind::Dropped(reason), pkt);
    }

    /// A node emitted `t`: validate it and put it on the sender's uplink.
    fn send(&mut self, origin: HostId, t: Transmit) {
        let id = self.next_packet;
        self.next_packet += 1;
        self.stats.sent += 1;
        let h = &mut self.hosts[origin.index()];
        h.stats.sent += 1;
        let src = t.src.unwrap_or_else(|| SocketAddr::new(h.cfg.ips[0], h.cfg.default_port));
        let pkt = Packet { id, origin, src, dst: t.dst, payload: Bytes::from(t.payload) };
        self.emit(TraceKind::Sent, &pkt);
        let h = &self.hosts[origin.index()];
        let reason = if src.port() == 0 || !h.cfg.ips.contains(&src.ip()) {
            Some(DropReason::BadSource)
        } else if pkt.dst.port() == 0 || !usable_ip(pkt.dst.ip()) {
            Some(DropReason::BadDestination)
        } else if pkt.payload.len() > self.max_datagram {
            Some(DropReason::TooLarge)
        } else {
            None
        };
        if let Some(r) = reason {
            return self.drop_packet(&pkt, r);
        }
        let (uplink, realm) = (h.cfg.uplink, h.cfg.realm);
        self.transit(uplink, pkt, Hop::Edge(realm));
    }

    fn process(&mut self, hop: Hop, pkt: Packet) {
        match hop {
            Hop::Edge(Realm::Public) => {
                let core = self.core;
                self.transit(core, pkt, Hop::Arrive(Realm::Public));
            }
            Hop::Edge(realm) | Hop::Arrive(realm) => self.route(realm, pkt),
            Hop::Deliver(host, realm) => self.deliver(host, realm, pkt),
        }
    }

    fn is_blocked(&self, pkt: &Packet) -> bool {
        !self.blocks.is_empty()
            && self.blocks.iter().any(|(a, b)| {
                (a.matches(pkt.src) && b.matches(pkt.dst)) || (a.matches(pkt.dst) && b.matches(pkt.src))
            })
    }

    /// Move a datagram through realms and NATs until it is on a receiver's uplink, on the
    /// core, or dropped.
    fn route(&mut self, mut realm: Realm, mut pkt: Packet) {
        for _ in 0..MAX_HOPS {
            if self.is_blocked(&pkt) {
                return self.drop_packet(&pkt, DropReason::Blocked);
            }
            match self.addrs.get(&(realm, pkt.dst.ip())).copied() {
                Some(Owner::Host(h)) => {
                    let uplink = self.hosts[h.index()].cfg.uplink;
                    return self.transit(uplink, pkt, Hop::Deliver(h, realm));
                }
                Some(Owner::Nat(n)) => {
                    // Arrived at a NAT's outside.
                    let now = self.now;
                    match self.nats[n.index()].inbound(now, pkt.src, pkt.dst, false) {
                        Ok(internal) => {
                            pkt.dst = internal;
                            self.emit(TraceKind::Admitted(n), &pkt);
                            realm = Realm::Behind(n);
                            continue;
                        }
                        Err(r) => return self.drop_packet(&pkt, r),
                    }
                }
                None => {}
            }
            let Realm::Behind(n) = realm else {
                return self.drop_packet(&pkt, DropReason::NoSuchHost);
            };
            // Leaving a private realm through its NAT.
            let now = self.now;
            let nat = &mut self.nats[n.index()];
            if nat.owns(pkt.dst.ip()) {
                if !nat.config.hairpinning {
                    return self.drop_packet(&pkt, DropReason::HairpinOff);
                }
                let res = nat
                    .outbound(now, pkt.src, pkt.dst, &mut self.rng)
                    .and_then(|ext| nat.inbound(now, ext, pkt.dst, true).map(|internal| (ext, internal)));
                match res {
                    Ok((ext, internal)) => {
                        pkt.src = ext;
                        self.emit(TraceKind::Translated(n), &pkt);
                        pkt.dst = internal;
                        self.emit(TraceKind::Admitted(n), &pkt);
                        continue;
                    }
                    Err(r) => return self.drop_packet(&pkt, r),
                }
            }
            match nat.outbound(now, pkt.src, pkt.dst, &mut self.rng) {
                Ok(ext) => {
                    let outer = nat.config.outer;
                    pkt.src = ext;
                    self.emit(TraceKind::Translated(n), &pkt);
                    if outer == Realm::Public {
                        let core = self.core;
                        return self.transit(core, pkt, Hop::Arrive(Realm::Public));
                    }
                    realm = outer;
                }
                Err(r) => return self.drop_packet(&pkt, r),
            }
        }
        self.drop_packet(&pkt, DropReason::Unroutable)
    }

    fn deliver(&mut self, host: HostId, realm: Realm, pkt: Packet) {
        // The host may have moved away while the datagram was on its uplink.
        if self.addrs.get(&(realm, pkt.dst.ip())) != Some(&Owner::Host(host)) {
            return self.drop_packet(&pkt, DropReason::NoSuchHost);
        }
        self.stats.delivered += 1;
        self.emit(TraceKind::Delivered(host), &pkt);
        let now = self.now;
        let h = &mut self.hosts[host.index()];
        h.stats.delivered += 1;
        h.timer_stale = true;
        h.node.handle_datagram(now, pkt.dst, pkt.src, &pkt.payload);
    }
}

/// Whether `ip` can be a unicast host address or destination.
fn usable_ip(ip: IpAddr) -> bool {
    let generic = !ip.is_unspecified() && !ip.is_loopback() && !ip.is_multicast();
    match ip {
        IpAddr::V4(v4) => generic && !v4.is_broadcast(),
        IpAddr::V6(_) => generic,
    }
}
