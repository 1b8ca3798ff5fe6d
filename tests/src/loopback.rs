//! Meshes on real UDP sockets over loopback, with the real relay server.
//!
//! The simulator ([`crate::World`]) runs the protocol in virtual time; this module runs the
//! same [`Mesh`] code on real sockets and the real clock, against the relay data plane the
//! `p2pmodel shard relay` role runs ([`RelayRuntime`], started from a [`ShardConfig`] with
//! ephemeral ports on 127.0.0.1). Only loopback addresses are used.
//!
//! - [`LoopRelay`]: the relay, and the shard's part: minting relay tokens from the shard
//!   secret, as the Game server does.
//! - [`LoopPeer`]: one mesh on one non-blocking UDP socket, with a small driver ([`LoopPeer::pump`]:
//!   fire due timers, read what arrived, send what is queued). It can drop every datagram
//!   that does not go to the relay (a dead direct path) and move to a new port (an address
//!   change).
//! - [`LoopPair`]: two peers, one link between them, and a reliable stream each way.
//! - [`Pinger`]: a raw UDP ping (through the relay, or direct) polled by the same kind of
//!   loop, to measure the round-trip time this driver sees.
//!
//! One thread drives everything: call `step` on every pair and pinger in a loop, and
//! [`idle`] when nothing happened. Timings therefore include the driver's poll interval
//! ([`POLL`]) once per hop.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use p2pmodel_core::config::MeshConfig;
use p2pmodel_core::endpoint::{ClockAnchor, Endpoint};
use p2pmodel_core::link::{CHANNEL_RELIABLE, LinkEvent, NatHint, Path, RelayParams};
use p2pmodel_core::mesh::{Mesh, MeshEvent};
use p2pmodel_core::proto::peer::{LinkId, Side};
use p2pmodel_core::relay::TokenKeys;
use p2pmodel_core::shard::intro::{IntroRefusals, IntroRelay, IntroSide, introduce};
use p2pmodel_servers::config::ShardConfig;
use p2pmodel_servers::relay::RelayRuntime;
use p2pmodel_servers::relay::client::{BindClient, peer_datagram};
use rand::Rng;

use crate::{Arrival, LinkLog};

/// How long the driver sleeps when a turn found nothing to do: sockets are polled this
/// often, so every hop may wait up to about this long (plus the OS's timer slack).
pub const POLL: Duration = Duration::from_micros(50);

/// Size of a streamed message (a typical small game event), as in the simulator.
pub const MESSAGE_LEN: usize = 64;

/// Sleep one poll interval, or less if `next` (the earliest timer) comes sooner.
pub fn idle(next: Option<Instant>) {
    let now = Instant::now();
    let d = next.map_or(POLL, |t| t.saturating_duration_since(now).min(POLL));
    if !d.is_zero() {
        std::thread::sleep(d);
    }
}

/// The real relay on loopback, and a token minter keyed from the same shard secret.
pub struct LoopRelay {
    /// The running relay (data plane thread and key schedule), as the relay role runs it.
    pub runtime: RelayRuntime,
    keys: TokenKeys,
    clock: ClockAnchor,
}

impl LoopRelay {
    /// Start the relay on 127.0.0.1 (ephemeral primary and alternate ports) with a random
    /// shard secret.
    pub fn start() -> io::Result<LoopRelay> {
        let secret: [u8; 32] = rand::rng().random();
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let cfg = ShardConfig::parse(&format!(
            "[shard]\nname = \"loopback\"\nsecret = \"{hex}\"\nbind = \"127.0.0.1\"\n\
             [relay]\nport = 0\nalternate_port = 0\n"
        ))
        .map_err(io::Error::other)?;
        let runtime = RelayRuntime::start(&cfg).map_err(io::Error::other)?;
        let now = Instant::now();
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_err(io::Error::other)?;
        let keys = runtime.schedule.minting_keys(unix.as_secs());
        let clock = ClockAnchor { at: now, unix_micros: unix.as_micros() as u64 };
        Ok(LoopRelay { runtime, keys, clock })
    }

    /// The relay's primary address.
    pub fn addr(&self) -> SocketAddr {
        self.runtime.server.primary_addr()
    }

    /// The wall-clock anchor every mesh of this run uses.
    pub fn clock(&self) -> ClockAnchor {
        self.clock
    }

    /// The relay as an introduction names it: tokens valid for an hour, as the shard mints.
    pub fn intro_relay(&self) -> IntroRelay<'_> {
        let expiry_unix = (self.clock.unix_secs_at(Instant::now()) + 3600) as u32;
        IntroRelay { addr: self.addr(), keys: &self.keys, expiry_unix }
    }

    /// A relay token for `side` of `link`, valid for an hour, as the shard mints it.
    pub fn relay_params(&self, link: LinkId, side: Side) -> RelayParams {
        self.intro_relay().params(link, side)
    }

    /// A bind client for `side` of `link` (for raw pings through the relay).
    pub fn bind_client(&self, link: LinkId, side: Side) -> BindClient {
        let p = self.relay_params(link, side);
        BindClient::new(link, side, p.token, p.bind_key)
    }

    /// Datagrams the relay forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.runtime.server.snapshot().forwarded_packets
    }
}

/// One client: a [`Mesh`] on one non-blocking UDP socket, and what it saw, per link.
pub struct LoopPeer {
    /// The mesh under test.
    pub mesh: Mesh,
    socket: UdpSocket,
    /// The address the mesh was created with (its host candidate). It stays the same when
    /// the socket moves ([`LoopPeer::rebind`]), as a host's own address does when its NAT
    /// maps it to a new public port.
    host: SocketAddr,
    relay: SocketAddr,
    /// Per-link log: introduction, messages sent and received, link events with times.
    pub links: BTreeMap<LinkId, LinkLog>,
    /// Drop every datagram this peer sends anywhere but the relay (the direct path is dead).
    pub block_direct: bool,
    /// Datagrams dropped because of `block_direct`.
    pub dropped: u64,
}

impl LoopPeer {
    /// A mesh on a fresh socket on 127.0.0.1, relaying through `relay`.
    pub fn new(clock: ClockAnchor, relay: SocketAddr) -> io::Result<LoopPeer> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_nonblocking(true)?;
        let host = socket.local_addr()?;
        let mesh = Mesh::new(Instant::now(), MeshConfig::default(), clock, &[host]);
        Ok(LoopPeer { mesh, socket, host, relay, links: BTreeMap::new(), block_direct: false, dropped: 0 })
    }

    /// Where the socket is now.
    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap_or(self.host)
    }

    /// Move to a new socket on a new port; the old one is closed. To the peer and the relay
    /// this is an address change (a NAT rebinding, a network switch); the mesh is not told.
    pub fn rebind(&mut self) -> io::Result<SocketAddr> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_nonblocking(true)?;
        self.socket = socket;
        Ok(self.addr())
    }

    /// The path `link` sends on (`Path::None` if there is no such link).
    pub fn path(&self, link: LinkId) -> Path {
        self.mesh.link(link).map_or(Path::None, |l| l.path())
    }

    /// Queue one reliable message with the next sequence number on `link`.
    pub fn send_next(&mut self, link: LinkId) -> bool {
        let log = self.links.entry(link).or_default();
        let mut msg = log.sent.to_be_bytes().to_vec();
        msg.resize(MESSAGE_LEN, 0xAB);
        let ok = self.mesh.send(link, CHANNEL_RELIABLE, msg).unwrap_or(false);
        if ok {
            log.sent += 1;
        }
        ok
    }

    /// One turn of the driver: fire due timers, read every datagram that arrived, send
    /// everything queued. Returns true if anything was received or sent.
    pub fn pump(&mut self) -> bool {
        let mut busy = false;
        let now = Instant::now();
        if self.mesh.poll_timeout().is_some_and(|t| t <= now) {
            self.mesh.handle_timeout(now);
            self.drain(now);
        }
        let mut buf = [0u8; 2048];
        // Errors other than "nothing more" (e.g. ICMP port unreachable) end this turn's reads.
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            let now = Instant::now();
            self.mesh.handle_datagram(now, self.host, from, &buf[..n]);
            self.drain(now);
            busy = true;
        }
        while let Some(t) = self.mesh.poll_transmit() {
            assert!(t.dst.ip().is_loopback(), "only loopback traffic: {}", t.dst);
            busy = true;
            if self.block_direct && t.dst != self.relay {
                self.dropped += 1;
                continue;
            }
            // Transmits for birthday sockets (`t.src`) do not occur: no NAT hints on loopback.
            let _ = self.socket.send_to(&t.payload, t.dst);
        }
        busy
    }

    /// When the mesh wants its next timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.mesh.poll_timeout()
    }

    fn drain(&mut self, now: Instant) {
        while let Some(e) = self.mesh.poll_event() {
            if let MeshEvent::Link { link, event } = e {
                self.links.entry(link).or_default().events.push((now, event));
            }
        }
        for (id, log) in self.links.iter_mut() {
            while let Some(msg) = self.mesh.receive(*id, CHANNEL_RELIABLE) {
                if let Some(seq) = msg.get(..4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes"))) {
                    log.received.push(Arrival { seq, at: now });
                }
            }
        }
    }

    /// When `link` first reported an event matching `pred` at or after `after`.
    pub fn event_time(
        &self,
        link: LinkId,
        after: Instant,
        pred: impl Fn(&LinkEvent) -> bool,
    ) -> Option<Instant> {
        self.links.get(&link)?.events.iter().find_map(|(t, e)| (*t >= after && pred(e)).then_some(*t))
    }

    /// First message on `link` that arrived at or after `after`.
    pub fn first_arrival(&self, link: LinkId, after: Instant) -> Option<Arrival> {
        self.links.get(&link)?.received.iter().find(|a| a.at >= after).copied()
    }

    /// Sequence numbers received on `link`, in arrival order.
    pub fn received_seqs(&self, link: LinkId) -> Vec<u32> {
        self.links.get(&link).map_or(Vec::new(), |l| l.received.iter().map(|a| a.seq).collect())
    }
}

/// Whether a link event is a switch to a relayed path.
pub fn is_relayed(e: &LinkEvent) -> bool {
    matches!(e, LinkEvent::Path(Path::Relayed { .. }))
}

/// Whether a link event is a switch to a direct path.
pub fn is_direct(e: &LinkEvent) -> bool {
    matches!(e, LinkEvent::Path(Path::Direct { .. }))
}

/// Two peers and one link between them, each optionally streaming reliable messages.
pub struct LoopPair {
    /// Side A.
    pub a: LoopPeer,
    /// Side B.
    pub b: LoopPeer,
    /// The current link (after [`LoopPair::introduce`]).
    pub link: LinkId,
    /// When the current link was introduced.
    pub intro: Instant,
    /// A sends one reliable message to B this often (`None`: silent).
    pub a_every: Option<Duration>,
    /// B sends one reliable message to A this often (`None`: silent).
    pub b_every: Option<Duration>,
    next_a: Option<Instant>,
    next_b: Option<Instant>,
}

impl LoopPair {
    /// Two fresh peers relaying through `relay`; no link yet.
    pub fn new(relay: &LoopRelay) -> io::Result<LoopPair> {
        Ok(LoopPair {
            a: LoopPeer::new(relay.clock(), relay.addr())?,
            b: LoopPeer::new(relay.clock(), relay.addr())?,
            link: LinkId(0),
            intro: Instant::now(),
            a_every: None,
            b_every: None,
            next_a: None,
            next_b: None,
        })
    }

    /// Introduce A and B on `link` with the Game server's introduction (the core's one
    /// implementation): a fresh link key, each side's candidates (its loopback host address:
    /// both "behind" 127.0.0.1, so the scope rules let them through), relay tokens for both
    /// sides, both at the same instant. If A streams, its first message is queued at once
    /// (it leaves on the first path).
    pub fn introduce(&mut self, relay: &LoopRelay, link: LinkId) {
        let cand_a = self.a.mesh.local_candidates().to_vec();
        let cand_b = self.b.mesh.local_candidates().to_vec();
        let lo = Some(IpAddr::from([127, 0, 0, 1]));
        let side_a = IntroSide { candidates: &cand_a, nat: NatHint::default(), ip: lo };
        let side_b = IntroSide { candidates: &cand_b, nat: NatHint::default(), ip: lo };
        let mut refused = IntroRefusals::default();
        let intro =
            introduce(&mut rand::rng(), link, &side_a, &side_b, Some(&relay.intro_relay()), &mut refused);
        let now = Instant::now();
        for (peer, params) in [(&mut self.a, intro.a), (&mut self.b, intro.b)] {
            peer.links.entry(link).or_default().intro_at = Some(now);
            peer.mesh.add_link(now, params).expect("fresh link id");
        }
        self.link = link;
        self.intro = now;
        self.next_a = None;
        self.next_b = None;
        self.stream_tick(now);
    }

    /// Close the current link on both sides.
    pub fn close(&mut self) {
        let _ = self.a.mesh.remove_link(self.link);
        let _ = self.b.mesh.remove_link(self.link);
    }

    /// Block (or unblock) the direct path in both directions: each side's driver drops
    /// every datagram that does not go to the relay.
    pub fn block_direct(&mut self, blocked: bool) {
        self.a.block_direct = blocked;
        self.b.block_direct = blocked;
    }

    fn stream_tick(&mut self, now: Instant) {
        let link = self.link;
        for (peer, every, next) in
            [(&mut self.a, self.a_every, &mut self.next_a), (&mut self.b, self.b_every, &mut self.next_b)]
        {
            let Some(every) = every else {
                *next = None;
                continue;
            };
            if next.is_none_or(|t| t <= now) {
                peer.send_next(link);
                *next = Some(next.map_or(now, |t| t.max(now - every)) + every);
            }
        }
    }

    /// One driver turn for both peers and their streams. True if anything happened.
    pub fn step(&mut self) -> bool {
        self.stream_tick(Instant::now());
        let a = self.a.pump();
        let b = self.b.pump();
        a | b
    }

    /// The earliest timer of either mesh or stream.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.a.poll_timeout(), self.b.poll_timeout(), self.next_a, self.next_b].into_iter().flatten().min()
    }
}

/// Drive `pairs` with one thread until `done` holds (true) or `deadline` passes (false).
pub fn drive(pairs: &mut [LoopPair], deadline: Instant, done: impl Fn(&[LoopPair]) -> bool) -> bool {
    loop {
        if done(pairs) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        let mut busy = false;
        for p in pairs.iter_mut() {
            busy |= p.step();
        }
        if !busy {
            idle(pairs.iter().filter_map(|p| p.poll_timeout()).min());
        }
    }
}

/// A raw UDP ping between two sockets, either through the relay (both bound on a link of
/// their own) or straight, answered and timed by the same poll loop as the meshes. It
/// measures the round trip the driver sees: two hops, each with the kernel's loopback
/// delivery and up to one poll interval.
pub struct Pinger {
    a: UdpSocket,
    b: UdpSocket,
    /// Where A sends (the relay, or B's socket).
    a_dst: SocketAddr,
    /// Where B answers (the relay, or A's socket).
    b_dst: SocketAddr,
    link: LinkId,
    every: Duration,
    next: Instant,
    outstanding: Option<(u64, Instant)>,
    seq: u64,
    /// Round-trip samples so far.
    pub samples: Vec<Duration>,
}

impl Pinger {
    /// A ping through the relay, on its own link, one sample every `every`.
    pub fn via_relay(relay: &LoopRelay, link: LinkId, every: Duration) -> io::Result<Pinger> {
        let (a, b) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
        let wait = Duration::from_secs(5);
        relay.bind_client(link, Side::A).bind_validated(&a, relay.addr(), wait)?;
        relay.bind_client(link, Side::B).bind_validated(&b, relay.addr(), wait)?;
        Self::with(a, b, relay.addr(), relay.addr(), link, every)
    }

    /// A ping between two sockets, one sample every `every`.
    pub fn direct(every: Duration) -> io::Result<Pinger> {
        let (a, b) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
        let (da, db) = (b.local_addr()?, a.local_addr()?);
        Self::with(a, b, da, db, LinkId(0), every)
    }

    fn with(
        a: UdpSocket,
        b: UdpSocket,
        a_dst: SocketAddr,
        b_dst: SocketAddr,
        link: LinkId,
        every: Duration,
    ) -> io::Result<Pinger> {
        a.set_nonblocking(true)?;
        b.set_nonblocking(true)?;
        let next = Instant::now();
        Ok(Pinger { a, b, a_dst, b_dst, link, every, next, outstanding: None, seq: 0, samples: Vec::new() })
    }

    /// One driver turn: answer at B, take the answer at A, send the next ping when due.
    pub fn step(&mut self) -> bool {
        let mut busy = false;
        let mut buf = [0u8; 2048];
        let mut out = [0u8; 64];
        while let Ok((n, _)) = self.b.recv_from(&mut buf) {
            if n >= 14 && buf[0] == 0x22 {
                let pn = u64::from_be_bytes(buf[6..14].try_into().expect("8 bytes"));
                let len = peer_datagram(self.link, Side::B, pn, 64, &mut out);
                let _ = self.b.send_to(&out[..len], self.b_dst);
                busy = true;
            }
        }
        while let Ok((n, _)) = self.a.recv_from(&mut buf) {
            if n >= 14 && buf[0] == 0x22 {
                let pn = u64::from_be_bytes(buf[6..14].try_into().expect("8 bytes"));
                if let Some((seq, sent)) = self.outstanding
                    && seq == pn
                {
                    self.samples.push(sent.elapsed());
                    self.outstanding = None;
                }
                busy = true;
            }
        }
        let now = Instant::now();
        if now >= self.next {
            // An unanswered ping (lost) is simply replaced.
            self.seq += 1;
            let len = peer_datagram(self.link, Side::A, self.seq, 64, &mut out);
            let _ = self.a.send_to(&out[..len], self.a_dst);
            self.outstanding = Some((self.seq, Instant::now()));
            self.next = now + self.every;
            busy = true;
        }
        busy
    }

    /// When the next ping is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next)
    }
}

/// The `p`-quantile (nearest rank) of `v` (sorted in place); zero when empty.
pub fn quantile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}
