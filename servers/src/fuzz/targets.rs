//! The fuzz targets: one `fn(&[u8])` per decoder or network entry point, and the valid seed
//! inputs each starts from (built by our own encoders and by a small simulated world where a
//! real mesh pair, the relay engine and the STUN server exchange datagrams).
//!
//! Stateful targets read their input as [`frames`]: `sel u8 ‖ len u16 BE ‖ bytes`, repeated.
//! `sel`'s low nibble picks the source address (or channel), its high nibble how far virtual
//! time advances before the datagram ([`advance`]). Each exec builds its state afresh, so a
//! saved input reproduces alone.
//!
//! Re-point a target here when the code it drives changes (e.g. [`login_request`] follows the
//! login service's request parser).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pmodel_core::client::{ClientConfig, ClientCore};
use p2pmodel_core::config::MeshConfig;
use p2pmodel_core::crypto::{LinkCrypto, LinkKey};
use p2pmodel_core::endpoint::{ClockAnchor, Endpoint};
use p2pmodel_core::link::{
    CHANNEL_RELIABLE, CHANNEL_UNRELIABLE, Candidate, CandidateKind, LinkParams, NatHint, RelayParams, predict,
};
use p2pmodel_core::mesh::Mesh;
use p2pmodel_core::nat::{NatDiscovery, NatDiscoveryConfig};
use p2pmodel_core::proto::peer::{LinkId, PeerHeader, PeerKind, Side, TAG_LEN};
use p2pmodel_core::proto::relay::{BindAck, BindCookie, BindKey, BindRequest, MAX_PADDED_BIND, RelayToken};
use p2pmodel_core::proto::shard::{
    ClientMessage, InternalMessage, LinkSeq, NatSummary, PathState, PlayerId, Role, ShardMessage, decode,
    encode,
};
use p2pmodel_core::relay::{Action, Relay, RelayConfig, ReplyBuf, TokenKeys, mint};
use p2pmodel_core::stun::{
    Attribute, ChangeRequest, Class, Message, StunServer, StunServerConfig, TransactionId,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use renet::{ConnectionConfig, DefaultChannel, RenetClient, RenetServer};
use renetcode::{
    ClientAuthentication, ConnectToken, NetcodeClient, NetcodeServer, ServerAuthentication, ServerConfig,
};

use crate::shard::keys::{TokenMinter, name_from_user_data};
use crate::shard::link::role_from;
use p2pmodel_core::login::{ClientLogin, LoginAnswer};

use crate::shard::login::{
    LoginKey, LoginLimits, LoginRequest, LoginService, OnlineNames, OpenAccounts, login_public_key,
};

/// One fuzz target.
#[derive(Clone)]
pub struct Target {
    /// Name on the command line and folder name of its crashes and regressions.
    pub name: &'static str,
    /// What it covers (for `--list`).
    pub about: &'static str,
    /// Valid inputs to start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Run one input; must not panic.
    pub run: fn(&[u8]),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every target.
pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "peer_datagram",
            about: "datagrams into a Mesh holding one link (+ relay binding, NAT discovery), from peer/relay/STUN/stranger addresses",
            seeds: seeds_peer_datagram,
            run: peer_datagram,
        },
        Target {
            name: "link_renet_payload",
            about: "renet packets sealed with the real link key, so they reach renet.process_packet and link control inside Link",
            seeds: seeds_link_renet_payload,
            run: link_renet_payload,
        },
        Target {
            name: "relay_datagram",
            about: "datagrams into the sans-IO relay engine (Relay::process) with minted tokens, from several sources, + timeouts",
            seeds: seeds_relay_datagram,
            run: relay_datagram,
        },
        Target {
            name: "stun",
            about: "STUN codec decode/re-encode + StunServer (every local address) + NAT discovery's response parsing",
            seeds: seeds_stun,
            run: stun,
        },
        Target {
            name: "relay_stun_hook",
            about: "the relay data plane's STUN side: is_stun, the full StunServer hook into a fixed buffer, the minimal Binding responder",
            seeds: seeds_stun,
            run: relay_stun_hook,
        },
        Target {
            name: "shard_client_message",
            about: "ClientMessage and InternalMessage decoders (client → shard, role ↔ role), re-encode what decodes",
            seeds: seeds_shard_client_message,
            run: shard_client_message,
        },
        Target {
            name: "shard_roles",
            about: "client messages (Resume tickets, KeepLinks, MeshInfo, ToPeer...) into the real Agent/Lobby/Game logic (LocalShard) from two placed clients, + ticks",
            seeds: seeds_shard_roles,
            run: shard_roles,
        },
        Target {
            name: "shard_server_message",
            about: "ShardMessage decoder, decoded messages fed into ClientCore (intros open real links) + timeouts",
            seeds: seeds_shard_server_message,
            run: shard_server_message,
        },
        Target {
            name: "internal_message",
            about: "InternalMessage decoder, internal-link role bytes, name from token user data",
            seeds: seeds_internal_message,
            run: internal_message,
        },
        Target {
            name: "login_request",
            about: "LoginService::handle (rate limits, Noise NK decryption, replay cache, account check, token mint, encrypted answer no larger than the request) and the payload parser",
            seeds: seeds_login_request,
            run: login_request,
        },
        Target {
            name: "login_answer",
            about: "the client's login answer handling (ClientLogin::read: id check, key notice, Noise decryption) and LoginAnswer::decode",
            seeds: seeds_login_answer,
            run: login_answer,
        },
        Target {
            name: "agent_renet_payload",
            about: "renet packets into RenetServer::process_packet_from for one connected client + update + ClientMessage decode (the Agent after netcode)",
            seeds: seeds_agent_renet_payload,
            run: agent_renet_payload,
        },
        Target {
            name: "agent_netcode_packet",
            about: "raw UDP datagrams into the Agent's NetcodeServer (secure mode): connection requests, responses, payloads",
            seeds: seeds_agent_netcode_packet,
            run: agent_netcode_packet,
        },
        Target {
            name: "client_netcode_packet",
            about: "datagrams from the Agent's address into a player's NetcodeClient (spoofable by anyone who knows both addresses)",
            seeds: seeds_client_netcode_packet,
            run: client_netcode_packet,
        },
        Target {
            name: "game_messages",
            about: "the game API both ways: ToGame payloads into a Game server (GameWorld) and the servers' typed dispatch (FromPlayer), and FromGame / peer bytes into the plugin's typed receivers (FromServer, FromPeer, sequenced)",
            seeds: seeds_game_messages,
            run: game_messages,
        },
        Target {
            name: "intro_params",
            about: "hostile introductions: fuzz-derived LinkParams (up to thousands of candidates, extreme port_delta) into Mesh::add_link + timeouts",
            seeds: seeds_intro_params,
            run: intro_params,
        },
        Target {
            name: "directory_request",
            about: "frames into the directory (Directory::handle: decode, HMAC check, replay and clock checks, expiry, lists, rate limits) from several sources as time passes",
            seeds: super::directory::seeds,
            run: super::directory::directory_request,
        },
    ]
}

// ---------------------------------------------------------------------------------------
// Framing and helpers

/// Split an input into `(sel, bytes)` frames: `sel u8 ‖ len u16 BE ‖ bytes` repeated; a
/// length past the end takes the rest; fewer than 3 bytes left end the input.
pub fn frames(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 3 {
            return None;
        }
        let sel = data[0];
        let len = usize::from(u16::from_be_bytes([data[1], data[2]])).min(data.len() - 3);
        let body = &data[3..3 + len];
        data = &data[3 + len..];
        Some((sel, body))
    })
}

/// Encode one frame (for seeds).
pub fn frame(out: &mut Vec<u8>, sel: u8, body: &[u8]) {
    out.push(sel);
    out.extend_from_slice(&(body.len().min(0xffff) as u16).to_be_bytes());
    out.extend_from_slice(&body[..body.len().min(0xffff)]);
}

/// Virtual time a frame's selector asks to pass first (its high nibble).
pub fn advance(sel: u8) -> Duration {
    const MS: [u64; 16] =
        [0, 0, 0, 0, 1, 10, 20, 50, 100, 300, 1_000, 3_000, 10_000, 30_000, 60_000, 3_600_000];
    Duration::from_millis(MS[usize::from(sel >> 4)])
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("literal address")
}

const UNIX0: u64 = 1_700_000_000;
const LINK: LinkId = LinkId(7);
const LINK_KEY: [u8; 32] = [0x42; 32];
const RELAY_SECRET: [u8; 32] = [0x11; 32];
const COOKIE_SECRET: [u8; 32] = [0x77; 32];

fn a_host() -> SocketAddr {
    sa("192.0.2.10:5000")
}
fn b_host() -> SocketAddr {
    sa("198.51.100.20:6000")
}
fn relay_addr() -> SocketAddr {
    sa("203.0.113.1:3479")
}
fn stun_cfg() -> StunServerConfig {
    StunServerConfig::rfc5780(sa("203.0.113.1:3478"), 3480, sa("203.0.113.2:1").ip())
}
fn attacker() -> SocketAddr {
    sa("100.64.0.9:40000")
}

fn clock(t0: Instant) -> ClockAnchor {
    ClockAnchor { at: t0, unix_micros: UNIX0 * 1_000_000 }
}

fn relay_keys() -> TokenKeys {
    TokenKeys::new(1, RELAY_SECRET)
}

fn relay_params(side: Side) -> RelayParams {
    let (token, bind_key) = mint(&relay_keys(), LINK, side, (UNIX0 + 3600) as u32);
    RelayParams { addr: relay_addr(), token, bind_key }
}

/// The link params of one side of the seed world's link.
fn link_params(side: Side) -> LinkParams {
    let remote = if side == Side::A { b_host() } else { a_host() };
    LinkParams {
        link: LINK,
        side,
        key: LinkKey(LINK_KEY),
        remote: vec![Candidate::new(CandidateKind::Host, remote)],
        remote_nat: NatHint::default(),
        relay: Some(relay_params(side)),
    }
}

/// A mesh as peer A of the seed world at `t0`: one link to B (with a relay), NAT discovery
/// against the world's STUN server.
fn mesh_a(t0: Instant) -> Mesh {
    let mut m = Mesh::new(t0, MeshConfig::default(), clock(t0), &[a_host()]);
    m.start_nat_discovery(t0, stun_cfg().primary, 1);
    let _ = m.add_link(t0, link_params(Side::A));
    m
}

fn mesh_b(t0: Instant) -> Mesh {
    let mut m = Mesh::new(t0, MeshConfig::default(), clock(t0), &[b_host()]);
    m.start_nat_discovery(t0, stun_cfg().primary, 2);
    let _ = m.add_link(t0, link_params(Side::B));
    m
}

fn new_relay(t0: Instant) -> Relay {
    Relay::new(RelayConfig::default(), relay_keys(), clock(t0), COOKIE_SECRET)
}

/// Drain everything an endpoint wants to send (outputs are not checked, only produced).
fn drain(ep: &mut impl Endpoint) -> usize {
    let mut n = 0;
    while ep.poll_transmit().is_some() {
        n += 1;
    }
    n
}

fn drain_mesh(m: &mut Mesh) {
    drain(m);
    while m.poll_event().is_some() {}
    for ch in [CHANNEL_RELIABLE, CHANNEL_UNRELIABLE] {
        while m.receive(LINK, ch).is_some() {}
    }
}

/// Run timers that are due at `now`.
fn tick(ep: &mut impl Endpoint, now: Instant) {
    if ep.poll_timeout().is_some_and(|t| t <= now) {
        ep.handle_timeout(now);
    }
}

// ---------------------------------------------------------------------------------------
// The seed world: mesh A and mesh B, the relay and the STUN server, on virtual time.

/// What the seed world delivered, per receiver.
#[derive(Default)]
struct Recorded {
    /// (from, bytes) delivered to A.
    to_a: Vec<(SocketAddr, Vec<u8>)>,
    /// (from, bytes) delivered to the relay.
    to_relay: Vec<(SocketAddr, Vec<u8>)>,
    /// (local, from, bytes) delivered to the STUN server.
    to_stun: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
}

fn world() -> Recorded {
    let t0 = Instant::now();
    let mut a = mesh_a(t0);
    let mut b = mesh_b(t0);
    let mut relay = new_relay(t0);
    let mut stun = StunServer::new(stun_cfg());
    let stun_locals = stun.local_addrs();
    let mut rec = Recorded::default();
    let mut buf = ReplyBuf::default();
    // (due, from, to, bytes)
    let mut wire: Vec<(Instant, SocketAddr, SocketAddr, Vec<u8>)> = Vec::new();
    let latency = Duration::from_millis(10);
    let mut now = t0;
    let end = t0 + Duration::from_secs(4);
    let big: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    while now < end {
        let ms = (now - t0).as_millis();
        if ms == 0 {
            let _ = a.send(LINK, CHANNEL_RELIABLE, b"hello".to_vec());
            let _ = b.send(LINK, CHANNEL_RELIABLE, b"hi there".to_vec());
        }
        if ms.is_multiple_of(200) {
            let _ = b.send(LINK, CHANNEL_UNRELIABLE, format!("state {ms}").into_bytes());
        }
        if ms == 300 || ms == 2500 {
            let _ = b.send(LINK, CHANNEL_RELIABLE, big.clone());
            let _ = b.send(LINK, CHANNEL_UNRELIABLE, big[..3000].to_vec());
        }
        if ms == 1500 {
            b.set_public_address(now, sa("198.51.100.20:61000"));
        }
        for ep in [&mut a as &mut dyn Endpoint, &mut b, &mut stun] {
            if ep.poll_timeout().is_some_and(|t| t <= now) {
                ep.handle_timeout(now);
            }
        }
        if relay.poll_timeout().is_some_and(|t| t <= now) {
            relay.handle_timeout(now);
        }
        while let Some(t) = a.poll_transmit() {
            wire.push((now + latency, t.src.unwrap_or(a_host()), t.dst, t.payload));
        }
        while let Some(t) = b.poll_transmit() {
            wire.push((now + latency, t.src.unwrap_or(b_host()), t.dst, t.payload));
        }
        while let Some(t) = stun.poll_transmit() {
            wire.push((now + latency, t.src.unwrap_or(stun_locals[0]), t.dst, t.payload));
        }
        let (due, later): (Vec<_>, Vec<_>) = wire.drain(..).partition(|w| w.0 <= now);
        wire = later;
        for (_, from, to, bytes) in due {
            if to == a_host() {
                rec.to_a.push((from, bytes.clone()));
                a.handle_datagram(now, to, from, &bytes);
            } else if to == b_host() {
                b.handle_datagram(now, to, from, &bytes);
            } else if to == relay_addr() {
                rec.to_relay.push((from, bytes.clone()));
                match relay.process(now, from, &bytes, &mut buf) {
                    Action::Forward { to } => wire.push((now + latency, relay_addr(), to, bytes)),
                    Action::Reply { to, len, notify, forward, early } => {
                        wire.push((now + latency, relay_addr(), to, buf.reply[..len].to_vec()));
                        for d in buf.early_datagrams(early) {
                            wire.push((now + latency, relay_addr(), to, d.to_vec()));
                        }
                        if let Some(n) = notify {
                            wire.push((now + latency, relay_addr(), n.to, buf.notify[..n.len].to_vec()));
                        }
                        if let Some(e) = forward {
                            let d = bytes[e.start..e.start + e.len].to_vec();
                            wire.push((now + latency, relay_addr(), e.to, d));
                        }
                    }
                    Action::Drop(_) => {}
                }
            } else if stun_locals.contains(&to) {
                rec.to_stun.push((to, from, bytes.clone()));
                stun.handle_datagram(now, to, from, &bytes);
            }
        }
        drain_mesh_events(&mut a);
        drain_mesh_events(&mut b);
        now += Duration::from_millis(5);
    }
    rec
}

fn drain_mesh_events(m: &mut Mesh) {
    while m.poll_event().is_some() {}
    for ch in [CHANNEL_RELIABLE, CHANNEL_UNRELIABLE] {
        while m.receive(LINK, ch).is_some() {}
    }
}

/// Turn a recorded stream into seeds: the whole stream, and sliding windows of it.
fn stream_seeds(items: &[(u8, Vec<u8>)]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut whole = Vec::new();
    for (sel, b) in items.iter().take(64) {
        frame(&mut whole, *sel, b);
    }
    out.push(whole);
    for w in items.windows(4).step_by(2) {
        let mut s = Vec::new();
        for (sel, b) in w {
            frame(&mut s, *sel, b);
        }
        out.push(s);
    }
    for (sel, b) in items {
        let mut s = Vec::new();
        frame(&mut s, *sel, b);
        out.push(s);
    }
    out.truncate(400);
    out
}

// ---------------------------------------------------------------------------------------
// peer_datagram

fn peer_sources() -> [SocketAddr; 8] {
    let l = stun_cfg();
    let alt_ip = l.alt_ip.expect("rfc5780");
    let alt_port = l.alt_port.expect("rfc5780");
    [
        b_host(),
        relay_addr(),
        l.primary,
        SocketAddr::new(l.primary.ip(), alt_port),
        SocketAddr::new(alt_ip, l.primary.port()),
        SocketAddr::new(alt_ip, alt_port),
        attacker(),
        sa("198.51.100.20:61000"),
    ]
}

fn source_index(srcs: &[SocketAddr], from: SocketAddr) -> u8 {
    srcs.iter().position(|s| *s == from).unwrap_or(srcs.len() - 1) as u8
}

fn seeds_peer_datagram() -> Vec<Vec<u8>> {
    let rec = world();
    let srcs = peer_sources();
    let items: Vec<(u8, Vec<u8>)> =
        rec.to_a.iter().map(|(f, b)| (source_index(&srcs, *f), b.clone())).collect();
    stream_seeds(&items)
}

/// Datagrams into a fresh `mesh_a` from the source the selector picks.
pub fn peer_datagram(data: &[u8]) {
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = mesh_a(t0);
    drain_mesh(&mut m);
    let srcs = peer_sources();
    for (sel, bytes) in frames(data) {
        now += advance(sel);
        tick(&mut m, now);
        let from = srcs[usize::from(sel & 7)];
        // bit 3: arrive on another local address (a birthday socket the mesh may not own)
        let local = if sel & 8 != 0 { sa("192.0.2.10:5001") } else { a_host() };
        m.handle_datagram(now, local, from, bytes);
        drain_mesh(&mut m);
    }
    now += Duration::from_secs(1);
    tick(&mut m, now);
    drain_mesh(&mut m);
}

// ---------------------------------------------------------------------------------------
// link_renet_payload

fn seeds_link_renet_payload() -> Vec<Vec<u8>> {
    let rec = world();
    let mut items = Vec::new();
    for (from, d) in &rec.to_a {
        if d.first() == Some(&(PeerKind::Data as u8)) && (*from == b_host() || *from == relay_addr()) {
            let mut c = LinkCrypto::new(&LinkKey(LINK_KEY), LINK, Side::A);
            if let Ok((_, body)) = c.open(d) {
                items.push((u8::from(*from == relay_addr()), body));
            }
        }
    }
    stream_seeds(&items)
}

/// Renet packets sealed as peer B's Data datagrams (valid AEAD, fresh packet numbers) into a
/// fresh `mesh_a`; selector bit 0: via the relay address instead of B's.
pub fn link_renet_payload(data: &[u8]) {
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = mesh_a(t0);
    drain_mesh(&mut m);
    let mut peer = LinkCrypto::new(&LinkKey(LINK_KEY), LINK, Side::B);
    for (sel, body) in frames(data) {
        now += advance(sel);
        tick(&mut m, now);
        let from = if sel & 1 != 0 { relay_addr() } else { b_host() };
        let kind = if sel & 6 == 6 { PeerKind::Control } else { PeerKind::Data };
        let d = peer.seal(kind, body);
        m.handle_datagram(now, a_host(), from, &d);
        drain_mesh(&mut m);
    }
    now += Duration::from_millis(300);
    tick(&mut m, now);
    drain_mesh(&mut m);
}

// ---------------------------------------------------------------------------------------
// relay_datagram

fn relay_sources() -> [SocketAddr; 4] {
    [a_host(), b_host(), attacker(), sa("192.0.2.10:5999")]
}

fn seeds_relay_datagram() -> Vec<Vec<u8>> {
    let rec = world();
    let srcs = relay_sources();
    let mut items: Vec<(u8, Vec<u8>)> =
        rec.to_relay.iter().map(|(f, b)| (source_index(&srcs, *f), b.clone())).collect();
    // hand-built: binds of both sides, a padded bind, a confirm with a wrong cookie, data
    let pa = relay_params(Side::A);
    let pb = relay_params(Side::B);
    let bind_a = BindRequest::encode(LINK, Side::A, &pa.token, &pa.bind_key, 5, BindCookie::NONE);
    let bind_b = BindRequest::encode(LINK, Side::B, &pb.token, &pb.bind_key, 5, BindCookie::NONE);
    let mut padded = bind_a.to_vec();
    padded.resize(MAX_PADDED_BIND, 0);
    let confirm = BindRequest::encode(LINK, Side::A, &pa.token, &pa.bind_key, 6, BindCookie([9; 8]));
    let mut data = PeerHeader { kind: PeerKind::Data, link: LINK, side: Side::A, pn: 3 }.encode().to_vec();
    data.resize(data.len() + 40 + TAG_LEN, 0xa5);
    // zero-round-trip: BindData (0x33) of each side, padded and not
    let mut data_b = PeerHeader { kind: PeerKind::Data, link: LINK, side: Side::B, pn: 1 }.encode().to_vec();
    data_b.resize(data_b.len() + 60 + TAG_LEN, 0x5a);
    let bind_data = |side, p: &p2pmodel_core::link::RelayParams, counter, d: &[u8], pad| {
        BindRequest::encode_with_data(LINK, side, &p.token, &p.bind_key, counter, BindCookie::NONE, d, pad)
            .expect("fits")
    };
    let bd_a = bind_data(Side::A, &pa, 7, &data, MAX_PADDED_BIND);
    let bd_b = bind_data(Side::B, &pb, 7, &data_b, 0);
    for (sel, b) in [
        (0, bind_a.to_vec()),
        (1, bind_b.to_vec()),
        (0x50, padded),
        (0, confirm.to_vec()),
        (0, data.clone()),
        (0, bd_a.clone()),
        (1, bd_b.clone()),
    ] {
        items.push((sel, b));
    }
    let mut seeds = stream_seeds(&items);
    let mut s = Vec::new();
    frame(&mut s, 0, &bind_a);
    frame(&mut s, 1, &bind_b);
    frame(&mut s, 0x70, &items.last().expect("data").1);
    frame(&mut s, 0xf3, &bind_a);
    seeds.push(s);
    // A's first datagram held until B binds, then delivered; B's forwarded at once.
    let mut s = Vec::new();
    frame(&mut s, 0, &bd_a);
    frame(&mut s, 0x11, &bd_b);
    frame(&mut s, 0x10, &data);
    seeds.push(s);
    seeds
}

/// Datagrams into a fresh relay engine (tokens minted with its keys), from the source the
/// selector picks; its timers run as virtual time passes.
pub fn relay_datagram(data: &[u8]) {
    let t0 = Instant::now();
    let mut now = t0;
    let mut relay = new_relay(t0);
    let mut buf = ReplyBuf::default();
    let srcs = relay_sources();
    let pa = relay_params(Side::A);
    for (sel, bytes) in frames(data) {
        now += advance(sel);
        if relay.poll_timeout().is_some_and(|t| t <= now) {
            relay.handle_timeout(now);
        }
        let from = srcs[usize::from(sel & 3)];
        match relay.process(now, from, bytes, &mut buf) {
            Action::Reply { len, notify, forward, early, .. } => {
                assert!(len <= buf.reply.len(), "reply length within its buffer");
                // Our own client must accept what the relay answers a valid bind with.
                let ours = |r: BindRequest| r.side == Side::A && r.link == LINK;
                if BindRequest::decode(bytes).is_ok_and(ours)
                    || BindRequest::decode_with_data(bytes).is_ok_and(|(r, _)| ours(r))
                {
                    let _ = BindAck::decode_verified(&buf.reply[..len], &pa.bind_key);
                }
                if let Some(n) = notify {
                    assert!(n.len <= buf.notify.len(), "notify length within its buffer");
                }
                if let Some(e) = forward {
                    assert!(e.start + e.len <= bytes.len(), "a BindData's datagram lies inside it");
                }
                assert!(buf.early_datagrams(early).count() == early, "early datagrams within the buffer");
            }
            Action::Forward { .. } | Action::Drop(_) => {}
        }
        let _ = relay.binding(LINK, Side::A, now);
        let _ = relay.stats().dropped_total();
    }
}

// ---------------------------------------------------------------------------------------
// stun

fn stun_clients() -> [SocketAddr; 4] {
    [a_host(), b_host(), attacker(), stun_cfg().primary]
}

fn seeds_stun() -> Vec<Vec<u8>> {
    let rec = world();
    let locals = StunServer::new(stun_cfg()).local_addrs();
    let clients = stun_clients();
    let mut items: Vec<(u8, Vec<u8>)> = Vec::new();
    for (local, from, b) in &rec.to_stun {
        items.push((source_index(&locals, *local) | (source_index(&clients, *from) << 2), b.clone()));
    }
    // responses A received from the server's addresses (client-side parsing)
    for (from, b) in &rec.to_a {
        if let Some(i) = locals.iter().position(|l| l == from) {
            items.push((i as u8, b.clone()));
        }
    }
    // hand-built messages with every attribute
    let tid = TransactionId::new([3; 12]);
    let mut all_attrs = Message::new(Class::SuccessResponse, 1, tid);
    let v6: SocketAddr = sa("[2001:db8::1]:3478");
    all_attrs.attributes = vec![
        Attribute::MappedAddress(a_host()),
        Attribute::XorMappedAddress(v6),
        Attribute::ChangeRequest(ChangeRequest::IP_AND_PORT),
        Attribute::SourceAddress(relay_addr()),
        Attribute::ChangedAddress(v6),
        Attribute::ErrorCode { code: 420, reason: "Unknown Attribute".into() },
        Attribute::UnknownAttributes(vec![0x0002, 0x7fff, 0x0010]),
        Attribute::ResponsePort(4000),
        Attribute::Software("p2pmodel fuzz".into()),
        Attribute::ResponseOrigin(stun_cfg().primary),
        Attribute::OtherAddress(v6),
        Attribute::Opaque { typ: 0x0006, value: b"user:name".to_vec() },
    ];
    all_attrs.fingerprint = true;
    let mut req = Message::binding_request(tid, ChangeRequest::PORT);
    req.fingerprint = true;
    let mut err = Message::new(Class::ErrorResponse, 1, tid);
    err.attributes.push(Attribute::ErrorCode { code: 400, reason: "Bad Request".into() });
    let mut ind = Message::new(Class::Indication, 1, tid);
    ind.attributes.push(Attribute::Software("x".into()));
    for m in [all_attrs, req, err, ind] {
        items.push((0, m.encode()));
    }
    stream_seeds(&items)
}

/// Each frame: decoded (and re-encoded) by the codec, handed to the STUN server on the local
/// address and from the client the selector picks (every response it emits must decode),
/// and to a NAT discovery as if the server's address had sent it.
pub fn stun(data: &[u8]) {
    let t0 = Instant::now();
    let mut now = t0;
    let mut server = StunServer::new(stun_cfg());
    let locals = server.local_addrs();
    let clients = stun_clients();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let cfg = NatDiscoveryConfig {
        retransmit: MeshConfig::default().nat_retransmit,
        ..NatDiscoveryConfig::default()
    };
    let mut disco = NatDiscovery::new(t0, stun_cfg().primary, None, a_host(), cfg, &mut rng);
    drain(&mut disco);
    for (sel, bytes) in frames(data) {
        now += advance(sel & 0xf0);
        if let Ok(m) = Message::decode(bytes) {
            let _ = (m.mapped_address(), m.other_address(), m.response_origin(), m.change_request());
            let _ = (m.response_port(), m.error_code());
            let again = m.encode();
            assert!(
                Message::decode(&again).is_ok(),
                "a decoded STUN message re-encodes to something decodable"
            );
        }
        let local = locals[usize::from(sel & 3) % locals.len()];
        let from = clients[usize::from((sel >> 2) & 3)];
        server.handle_datagram(now, local, from, bytes);
        while let Some(t) = server.poll_transmit() {
            assert!(Message::decode(&t.payload).is_ok(), "the STUN server's response decodes");
        }
        tick(&mut disco, now);
        disco.handle_datagram(now, a_host(), local, bytes);
        drain(&mut disco);
    }
    let _ = disco.report();
}

/// Each frame as the relay's data plane handles STUN: `is_stun`, then the full STUN server's
/// hook (answer copied into a `SCRATCH_LEN` buffer) and the minimal Binding responder; every
/// answer must decode with our codec.
pub fn relay_stun_hook(data: &[u8]) {
    use crate::relay::batch::SCRATCH_LEN;
    use crate::relay::stun::{binding_response, is_stun, stun_config_for, stun_server_hook};
    let locals = StunServer::new(stun_cfg()).local_addrs();
    let mut full = stun_server_hook(stun_config_for(&locals));
    let mut out = [0u8; SCRATCH_LEN];
    let t0 = Instant::now();
    let clients = stun_clients();
    for (sel, bytes) in frames(data) {
        if !is_stun(bytes) {
            continue;
        }
        let local = locals[usize::from(sel & 3) % locals.len()];
        let from =
            if sel & 0x80 != 0 { sa("[2001:db8::77]:4242") } else { clients[usize::from((sel >> 2) & 3)] };
        if let Some((src, _, len)) = full(t0, local, from, bytes, &mut out) {
            assert!(locals.contains(&src), "answers leave from one of our sockets");
            assert!(Message::decode(&out[..len]).is_ok(), "the full hook's answer decodes");
        }
        if let Some(len) = binding_response(from, bytes, &mut out) {
            let m = Message::decode(&out[..len]).expect("the minimal responder's answer decodes");
            assert_eq!(m.mapped_address(), Some(p2pmodel_core::proto::relay::canonical(from)));
        }
    }
}

// ---------------------------------------------------------------------------------------
// shard messages

fn candidates() -> Vec<Candidate> {
    vec![
        Candidate::new(CandidateKind::Host, sa("10.0.0.2:5000")),
        Candidate::new(CandidateKind::ServerReflexive, sa("203.0.113.50:40000")),
        Candidate::new(CandidateKind::Host, sa("[2001:db8::5]:5000")),
    ]
}

fn nat() -> NatSummary {
    NatSummary {
        class: "symmetric".into(),
        dependent_mapping: true,
        port_delta: Some(1),
        public: Some(sa("203.0.113.50:40000")),
    }
}

fn client_messages() -> Vec<ClientMessage> {
    vec![
        ClientMessage::Login { name: "ana".into() },
        ClientMessage::MeshInfo { candidates: candidates(), nat: nat() },
        ClientMessage::EnterZone { zone: 3 },
        ClientMessage::Move { tick: 77, x: 1.5, y: -2.25 },
        ClientMessage::PathReport { link: LINK, path: PathState::Direct, rtt_ms: Some(23.5) },
        ClientMessage::PathReport { link: LINK, path: PathState::Relayed, rtt_ms: None },
        ClientMessage::JoinParty { party: "red".into() },
        ClientMessage::ToPeer {
            peer: PlayerId(9),
            reliable: true,
            seq: Some(LinkSeq { link: LINK, seq: 7 }),
            data: vec![1, 2, 3, 4],
        },
        ClientMessage::RelayRtts { rtts: vec![(0, 40), (1, 90), (2, u16::MAX)] },
        ClientMessage::RelayRtts { rtts: vec![(255, 0), (1, 1), (1, 2), (7, 65534)] },
        ClientMessage::ToGame { reliable: true, data: vec![0, 3, 1, 2, 3] },
        ClientMessage::ToGame { reliable: false, data: vec![200] },
    ]
}

fn peer_intro(remote_nat: NatHint, remote: Vec<Candidate>) -> ShardMessage {
    ShardMessage::PeerIntro {
        peer: PlayerId(9),
        name: "bob".into(),
        params: LinkParams { remote, remote_nat, ..link_params(Side::A) },
    }
}

fn shard_messages() -> Vec<ShardMessage> {
    vec![
        ShardMessage::Welcome { player: PlayerId(4), stun: stun_cfg().primary },
        ShardMessage::EnteredZone { zone: 3, x: 10.0, y: 20.0 },
        peer_intro(NatHint { dependent_mapping: true, port_delta: Some(2) }, candidates()),
        ShardMessage::FromPeer { peer: PlayerId(9), reliable: false, seq: None, data: vec![9; 16] },
        // Reliable server copies numbered in the link's stream: 0 goes out, 2 waits for 1.
        ShardMessage::FromPeer {
            peer: PlayerId(9),
            reliable: true,
            seq: Some(LinkSeq { link: LINK, seq: 0 }),
            data: vec![1],
        },
        ShardMessage::FromPeer {
            peer: PlayerId(9),
            reliable: true,
            seq: Some(LinkSeq { link: LINK, seq: 2 }),
            data: vec![3],
        },
        ShardMessage::RelayRefresh { link: LINK, relay: relay_params(Side::A) },
        ShardMessage::RelayStandby { link: LINK, relay: relay_params(Side::A) },
        ShardMessage::Relays { relays: vec![stun_cfg().primary, sa("198.51.100.77:3478")] },
        ShardMessage::Correction { x: 1.0, y: 2.0 },
        ShardMessage::PeerOutro { link: LINK },
        ShardMessage::Refused { reason: "zone full".into() },
        ShardMessage::FromGame { reliable: true, data: vec![1, 2, 7, 7] },
    ]
}

fn internal_messages() -> Vec<InternalMessage> {
    let mut v = vec![
        InternalMessage::Heartbeat { from: Role::Game(2) },
        InternalMessage::Heartbeat { from: Role::Agent },
        InternalMessage::ClientJoined { client: 42, name: "ana".into(), ip: Some(a_host().ip()) },
        InternalMessage::ClientLeft { client: 42 },
        InternalMessage::ClientAway { client: 42 },
        InternalMessage::Route { client: 42, game: Some(1) },
        InternalMessage::Route { client: 42, game: None },
        InternalMessage::Join {
            client: 42,
            player: PlayerId(4),
            name: "ana".into(),
            zone: 3,
            x: 1.0,
            y: 2.0,
            candidates: candidates(),
            nat: Some(nat()),
            party: Some("red".into()),
            ip: Some(a_host().ip()),
        },
        InternalMessage::SetParty { client: 42, party: None },
        InternalMessage::Reset,
        InternalMessage::Positions {
            game: 1,
            players: vec![(PlayerId(4), 1.0, 2.0), (PlayerId(5), 3.0, 4.0)],
        },
    ];
    v.extend(client_messages().into_iter().map(|msg| InternalMessage::FromClient { client: 42, msg }));
    v.extend(shard_messages().into_iter().map(|msg| InternalMessage::ToClient { client: 42, msg }));
    v
}

fn encoded<T: serde::Serialize>(msgs: &[T]) -> Vec<Vec<u8>> {
    msgs.iter().filter_map(|m| encode(m).ok()).collect()
}

fn seeds_shard_client_message() -> Vec<Vec<u8>> {
    let mut s = encoded(&client_messages());
    s.extend(encoded(&internal_messages()));
    s
}

/// Any bytes as a `ClientMessage` and as an `InternalMessage`; what decodes re-encodes.
pub fn shard_client_message(data: &[u8]) {
    if let Ok(m) = decode::<ClientMessage>(data) {
        let _ = encode(&m);
    }
    if let Ok(m) = decode::<InternalMessage>(data) {
        let _ = encode(&m);
    }
}

fn seeds_shard_roles() -> Vec<Vec<u8>> {
    let ticket =
        p2pmodel_core::shard::resume::ResumeKey([5; 32]).seal(&p2pmodel_core::shard::resume::Ticket {
            player: PlayerId(1),
            zone: Some(0),
            party: Some("p".into()),
            issued: UNIX0,
            nonce: 1,
        });
    let mut msgs = client_messages();
    msgs.push(ClientMessage::Resume { ticket });
    msgs.push(ClientMessage::KeepLinks { links: vec![(LINK, PlayerId(2)), (LinkId(1), PlayerId(1))] });
    msgs.push(ClientMessage::Leave);
    // First byte: which client speaks (bit 0) and whether its connection is lost after (bit
    // 1); the rest: one encoded message.
    encoded(&msgs).into_iter().enumerate().map(|(i, m)| [vec![i as u8 & 3], m].concat()).collect()
}

/// Any bytes as one client's message into every shard role at once (`LocalShard`: the Agent's
/// budget and cleaning, the Lobby's tickets and placement, the Game's `KeepLinks` and
/// routing), with both clients placed in a zone; then ticks. Nothing may panic.
pub fn shard_roles(data: &[u8]) {
    let Some((&who, msg)) = data.split_first() else { return };
    let t0 = Instant::now();
    let keys = p2pmodel_core::relay::KeySchedule::new(
        p2pmodel_core::relay::RelayKey::from_bytes([3; 32]),
        Duration::ZERO,
    );
    let addr = stun_cfg().primary;
    let mut cfg = p2pmodel_core::shard::LocalShardConfig::new(addr, Some(addr), keys, 1);
    // Three relays, so the relay choice (RelayRtts, moves) runs too.
    for id in 1..3u8 {
        cfg.relays.push(p2pmodel_core::shard::game::ShardRelay {
            addr: SocketAddr::new(addr.ip(), 3478 + u16::from(id) * 10),
            keys: p2pmodel_core::relay::KeySchedule::for_relay(&[3; 32], id, Duration::ZERO),
        });
    }
    cfg.resume = p2pmodel_core::shard::resume::ResumeKey([5; 32]);
    let mut shard = p2pmodel_core::shard::LocalShard::new(t0, cfg, clock(t0));
    let ip = Some(addr.ip());
    for (client, name) in [(1, "ana"), (2, "bob")] {
        shard.connect(t0, client, name, ip);
        for m in [ClientMessage::Login { name: name.into() }, ClientMessage::EnterZone { zone: 0 }] {
            shard.from_client(t0, client, &encode(&m).expect("small"));
        }
    }
    let mut now = t0;
    for _ in 0..3 {
        now += Duration::from_millis(50);
        shard.handle_timeout(now);
    }
    let client = 1 + u64::from(who & 1);
    shard.from_client(now, client, msg);
    for i in 0..25 {
        now += Duration::from_millis(50);
        shard.handle_timeout(now);
        // Bit 1 of the first byte: then its connection is lost (a `Leave` it sent makes that
        // the end of its session) and it comes back, logging in and asking for the zone.
        if who & 2 != 0 && i == 5 {
            shard.disconnect(now, client);
        }
        if who & 2 != 0 && i == 10 {
            shard.connect(now, client, if client == 1 { "ana" } else { "bob" }, ip);
            for m in [ClientMessage::Login { name: "x".into() }, ClientMessage::EnterZone { zone: 0 }] {
                shard.from_client(now, client, &encode(&m).expect("small"));
            }
        }
    }
    while shard.poll_outgoing().is_some() {}
}

// ---------------------------------------------------------------------------------------
// game_messages

/// Shapes a game might register: a struct with a vector and a string, an enum, a number.
mod game_types {
    use p2pmodel_core::proto::shard::PlayerId;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct Command {
        pub target: PlayerId,
        pub path: Vec<[f32; 3]>,
        pub note: String,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub enum Event {
        Hit { by: PlayerId, damage: u8 },
        Chat(String),
        Left,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
    pub struct State(pub u32, pub f32);
}

fn seeds_game_messages() -> Vec<Vec<u8>> {
    use game_types::*;
    let enc = |kind: u8, v: &dyn Fn() -> Vec<u8>| [vec![kind], v()].concat();
    let cmd = || {
        p2pmodel_core::codec::encode(
            &Command { target: PlayerId(2), path: vec![[1.0, 2.0, 3.0]], note: "go".into() },
            4096,
        )
        .expect("small")
    };
    let ev = || p2pmodel_core::codec::encode(&Event::Hit { by: PlayerId(1), damage: 9 }, 64).expect("small");
    let st = || p2pmodel_core::codec::encode(&State(7, 0.5), 64).expect("small");
    let typed = |kind: u8, seq: Option<u16>, body: Vec<u8>| {
        let mut v = vec![bevy_p2pmodel::plugins::TYPED_TAG, kind];
        v.extend(seq.map(u16::to_be_bytes).unwrap_or_default());
        [v, body].concat()
    };
    // sel low nibble: 0/1 ToGame from player 1/2, 2 FromGame to the client, 3 peer bytes to
    // the client; 0x_4: run both apps.
    stream_seeds(&[
        (0, enc(0, &cmd)),
        (1, enc(1, &ev)),
        (0, enc(2, &st)),
        (1, vec![9, 9]),
        (4, Vec::new()),
        (2, enc(1, &ev)),
        (2, enc(0, &cmd)),
        (3, typed(0, Some(5), st())),
        (3, typed(0, Some(4), st())),
        (3, typed(1, None, ev())),
        (4, Vec::new()),
    ])
}

/// Bytes a player sends to its Game server (`ToGame`) through [`GameWorld`] into the
/// servers' typed dispatch, and bytes the client gets (`FromGame`, peer frames) into the
/// plugin's typed receivers; every App built afresh. Nothing may panic.
pub fn game_messages(data: &[u8]) {
    use bevy::prelude::{App, Entity, FixedUpdate};
    use bevy_p2pmodel::plugins::{P2pAppExt, P2pChannel, P2pReceived, ServerChannel, ServerReceived};
    use game_types::{Command, Event, State};
    use p2pmodel_core::shard::{GameConfig, GameRules};

    use crate::shard::bus::ShardBus;
    use crate::shard::game::GameServers;
    use crate::shard::game_api::{GameAppExt, GameChannel};

    let mut server = App::new();
    let rules =
        GameRules { cfg: GameConfig::default(), relays: Vec::new(), heartbeat: Duration::from_secs(1) };
    server
        .init_resource::<ShardBus>()
        .insert_resource(GameServers::new(&[(1, 0)], rules.clone()))
        .add_game_message::<Command>(GameChannel::Reliable)
        .add_game_message::<Event>(GameChannel::Unreliable)
        .add_game_message::<State>(GameChannel::Reliable);
    let mut bus = p2pmodel_core::shard::Bus::default();
    {
        let mut games = server.world_mut().resource_mut::<GameServers>();
        let w = &mut games.worlds[0];
        w.enable_game_events();
        for (client, player) in [(1u64, 1u64), (2, 2)] {
            let join = InternalMessage::Join {
                client,
                player: PlayerId(player),
                name: format!("p{player}"),
                zone: 0,
                x: 0.0,
                y: 0.0,
                candidates: Vec::new(),
                nat: None,
                party: None,
                ip: None,
            };
            w.handle(&mut bus, &rules, join);
        }
    }
    let mut client = App::new();
    client
        .add_peer_message::<State>(P2pChannel::UnreliableSequenced)
        .add_peer_message::<Event>(P2pChannel::ReliableOrdered)
        .add_server_message::<Command>(ServerChannel::Reliable)
        .add_server_message::<Event>(ServerChannel::Unreliable)
        .add_server_message::<State>(ServerChannel::Reliable);
    for (sel, body) in frames(data).take(256) {
        match sel & 0x0f {
            0 | 1 => {
                let msg = ClientMessage::ToGame { reliable: sel & 0x10 != 0, data: body.to_vec() };
                let m = InternalMessage::FromClient { client: u64::from(sel & 1) + 1, msg };
                let mut games = server.world_mut().resource_mut::<GameServers>();
                games.worlds[0].handle(&mut bus, &rules, m);
            }
            2 => {
                let data = bytes::Bytes::copy_from_slice(body);
                client.world_mut().write_message(ServerReceived { reliable: true, data });
            }
            3 => {
                let data = bytes::Bytes::copy_from_slice(body);
                client.world_mut().write_message(P2pReceived {
                    player: PlayerId(u64::from(sel >> 4)),
                    entity: Entity::PLACEHOLDER,
                    channel: p2pmodel_core::client::Channel::Unreliable,
                    data,
                    p2p: true,
                });
            }
            _ => {
                server.world_mut().run_schedule(FixedUpdate);
                client.update();
            }
        }
    }
    server.world_mut().run_schedule(FixedUpdate);
    client.update();
}

fn seeds_shard_server_message() -> Vec<Vec<u8>> {
    let msgs = encoded(&shard_messages());
    let mut whole = Vec::new();
    for m in &msgs {
        frame(&mut whole, 0x50, m);
    }
    let mut seeds = vec![whole];
    for m in &msgs {
        let mut s = Vec::new();
        frame(&mut s, 0, &msgs[0]);
        frame(&mut s, 0x70, m);
        seeds.push(s);
    }
    seeds
}

/// Each frame decoded as a `ShardMessage` and, if it decodes, handed to a connected
/// `ClientCore` as the shard would (intros open real links); timers run between frames.
pub fn shard_server_message(data: &[u8]) {
    let t0 = Instant::now();
    let mut now = t0;
    let mut core = ClientCore::new(t0, ClientConfig::new("fuzz"), clock(t0), &[a_host()]);
    core.connected();
    for (sel, bytes) in frames(data) {
        now += advance(sel);
        tick(&mut core, now);
        if let Ok(m) = decode::<ShardMessage>(bytes) {
            core.handle_shard_message(now, m);
        }
        drain(&mut core);
        while core.poll_shard_message().is_some() {}
        while core.poll_event().is_some() {}
    }
    now += Duration::from_secs(2);
    tick(&mut core, now);
    drain(&mut core);
    let _ = core.totals();
}

fn seeds_internal_message() -> Vec<Vec<u8>> {
    let mut s = encoded(&internal_messages());
    s.push(vec![2, 5, 0, 0, 0]);
    s
}

/// Any bytes as an `InternalMessage`; the first 5 bytes as internal-link role bytes; the
/// first 256 as a token's user data (name).
pub fn internal_message(data: &[u8]) {
    if let Ok(m) = decode::<InternalMessage>(data) {
        let _ = encode(&m);
    }
    if let Some(rb) = data.get(..5) {
        let _ = role_from(rb.try_into().expect("5 bytes"));
    }
    let mut ud = [0u8; renetcode::NETCODE_USER_DATA_BYTES];
    let n = data.len().min(ud.len());
    ud[..n].copy_from_slice(&data[..n]);
    let _ = name_from_user_data(&ud);
}

// ---------------------------------------------------------------------------------------
// login

const SHARD_SECRET: [u8; 32] = [0x5e; 32];

fn minter() -> TokenMinter {
    TokenMinter::new(&SHARD_SECRET, 0x7032_706d, vec![sa("203.0.113.1:5000")], Duration::from_secs(300), 5)
}

/// A login service for the fuzzed shard: open accounts, default limits.
fn login_service() -> LoginService {
    let online = OnlineNames::default();
    let check = OpenAccounts::new(SHARD_SECRET, online.clone());
    LoginService::new(&SHARD_SECRET, minter(), Box::new(check), online, LoginLimits::default())
}

/// Requests as clients build them: right key (names and credentials of every length class),
/// a wrong key, and the plaintext payloads themselves (for the payload parser).
fn seeds_login_request() -> Vec<Vec<u8>> {
    let key = login_public_key(&SHARD_SECRET);
    let mut v = Vec::new();
    for (name, cred) in [
        ("ana", &b""[..]),
        ("Bob_2", b"hunter2"),
        ("x", &[7u8; 1024][..]),
        ("a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p", b"t"),
    ] {
        let req = LoginRequest { name: name.into(), credential: cred.to_vec() };
        if let Ok((_, bytes)) = ClientLogin::start(&key, &req) {
            v.push(bytes);
        }
        if let Ok(p) = req.encode() {
            v.push(p.to_vec());
        }
    }
    let req = LoginRequest { name: "eve".into(), credential: Vec::new() };
    if let Ok((_, bytes)) = ClientLogin::start(&LoginKey([9; 32]), &req) {
        v.push(bytes);
    }
    v
}

/// One datagram into the login service (`LoginService::handle`: size check, rate limits,
/// Noise decryption, replay cache, payload parsing, account check, token mint and the
/// encrypted answer) from two sources; every answer must be no larger than the request.
/// The input is also parsed as a decrypted payload (`LoginRequest::decode`), which must
/// re-encode to the same name and credential.
pub fn login_request(data: &[u8]) {
    let mut service = login_service();
    let now = Instant::now();
    for from in [sa("198.51.100.7:40000"), sa("[2001:db8::7]:40000")] {
        if let Some(answer) = service.handle(data, from, now) {
            assert!(
                answer.len() <= data.len(),
                "login answer {} B to a {} B request",
                answer.len(),
                data.len()
            );
        }
    }
    if let Some(req) = LoginRequest::decode(data) {
        let again = req.encode().expect("a decoded request re-encodes");
        assert_eq!(LoginRequest::decode(&again), Some(req));
    }
}

/// Answers as the service sends them (a token, a refusal, a key notice) to one request.
fn seeds_login_answer() -> Vec<Vec<u8>> {
    let key = login_public_key(&SHARD_SECRET);
    let mut service = login_service();
    let mut v = Vec::new();
    for name in ["ana", "bad name"] {
        let req = LoginRequest { name: name.into(), credential: Vec::new() };
        if let Ok((_, bytes)) = ClientLogin::start(&key, &req)
            && let Some(a) = service.handle(&bytes, sa("198.51.100.9:1"), Instant::now())
        {
            v.push(a);
        }
    }
    let req = LoginRequest { name: "eve".into(), credential: Vec::new() };
    if let Ok((_, bytes)) = ClientLogin::start(&LoginKey([9; 32]), &req)
        && let Some(a) = service.handle(&bytes, sa("198.51.100.9:2"), Instant::now())
    {
        v.push(a);
    }
    v
}

/// Any bytes as a login answer on the client side: `ClientLogin::read` of an attempt whose
/// id the input carries (so parsing gets past the id check), and `LoginAnswer::decode` of
/// the input as a decrypted answer.
pub fn login_answer(data: &[u8]) {
    let key = login_public_key(&SHARD_SECRET);
    let req = LoginRequest { name: "ana".into(), credential: Vec::new() };
    if let Ok((mut attempt, request)) = ClientLogin::start(&key, &req) {
        let mut d = data.to_vec();
        if d.len() >= 16 {
            d[8..16].copy_from_slice(&request[8..16]);
        }
        let _ = attempt.read(&d);
    }
    let _ = LoginAnswer::decode(data);
}

// ---------------------------------------------------------------------------------------
// renet at the Agent

const CLIENT_ID: u64 = 42;

fn seeds_agent_renet_payload() -> Vec<Vec<u8>> {
    let mut client = RenetClient::new(ConnectionConfig::default());
    client.set_connected();
    let mut server = RenetServer::new(ConnectionConfig::default());
    server.add_connection(CLIENT_ID);
    let mut items = Vec::new();
    let msgs = encoded(&client_messages());
    for (i, m) in msgs.iter().enumerate() {
        let ch = (i % 3) as u8;
        client.send_message(ch, m.clone());
    }
    // sliced messages on every channel
    let big = encode(&ClientMessage::Login { name: "x".repeat(4000) }).expect("encodes");
    client.send_message(DefaultChannel::ReliableOrdered, big.clone());
    client.send_message(DefaultChannel::Unreliable, big[..2500].to_vec());
    client.send_message(DefaultChannel::ReliableUnordered, big[..3000].to_vec());
    for round in 0..6 {
        let dt = Duration::from_millis(if round == 3 { 400 } else { 16 });
        client.update(dt);
        server.update(dt);
        for p in client.get_packets_to_send() {
            let _ = server.process_packet_from(&p, CLIENT_ID);
            items.push((0x40u8, p));
        }
        if let Ok(ps) = server.get_packets_to_send(CLIENT_ID) {
            for p in ps {
                client.process_packet(&p);
            }
        }
    }
    stream_seeds(&items)
}

/// Renet packets from client 42 into a RenetServer (default config, as the Agent), then
/// `update`; messages it delivers are decoded as `ClientMessage`s as the Agent does.
pub fn agent_renet_payload(data: &[u8]) {
    let mut server = RenetServer::new(ConnectionConfig::default());
    server.add_connection(CLIENT_ID);
    for (sel, payload) in frames(data) {
        let dt = advance(sel);
        if !dt.is_zero() {
            server.update(dt);
        }
        let _ = server.process_packet_from(payload, CLIENT_ID);
        for ch in 0..3u8 {
            while let Some(m) = server.receive_message(CLIENT_ID, ch) {
                let _ = decode::<ClientMessage>(&m);
            }
        }
        let _ = server.get_packets_to_send(CLIENT_ID);
        while server.get_event().is_some() {}
    }
    server.update(Duration::from_millis(100));
    let _ = server.get_packets_to_send(CLIENT_ID);
}

// ---------------------------------------------------------------------------------------
// netcode at the Agent

const NETCODE_TIME: Duration = Duration::from_secs(UNIX0);

fn netcode_server() -> NetcodeServer {
    NetcodeServer::new(ServerConfig {
        current_time: NETCODE_TIME,
        max_clients: 4,
        protocol_id: 0x7032_706d,
        public_addresses: vec![sa("203.0.113.1:5000")],
        authentication: ServerAuthentication::Secure {
            private_key: crate::shard::keys::netcode_key(&SHARD_SECRET),
        },
    })
}

fn seeds_agent_netcode_packet() -> Vec<Vec<u8>> {
    let Some(token) = seed_token() else {
        return Vec::new();
    };
    let Ok(mut client) =
        NetcodeClient::new(NETCODE_TIME, ClientAuthentication::Secure { connect_token: token })
    else {
        return Vec::new();
    };
    let mut server = netcode_server();
    let mut items: Vec<(u8, Vec<u8>)> = Vec::new();
    let client_addr = a_host();
    for round in 0..8 {
        let dt = Duration::from_millis(100);
        server.update(dt);
        let mut to_server: Vec<Vec<u8>> = Vec::new();
        if let Some((p, _)) = client.update(dt) {
            to_server.push(p.to_vec());
        }
        if client.is_connected()
            && let Ok((_, p)) = client.generate_payload_packet(format!("payload {round}").as_bytes())
        {
            to_server.push(p.to_vec());
        }
        for mut p in to_server {
            items.push((0, p.clone()));
            let back: Option<Vec<u8>> = match server.process_packet(client_addr, &mut p) {
                renetcode::ServerResult::PacketToSend { payload, .. } => Some(payload.to_vec()),
                renetcode::ServerResult::ClientConnected { payload, .. } => Some(payload.to_vec()),
                _ => None,
            };
            if let Some(mut b) = back {
                let _ = client.process_packet(&mut b);
            }
        }
    }
    stream_seeds(&items)
}

fn netcode_sources() -> [SocketAddr; 4] {
    [a_host(), b_host(), attacker(), sa("[2001:db8::9]:7000")]
}

/// Raw datagrams into a fresh secure-mode NetcodeServer (the Agent's UDP entry point).
pub fn agent_netcode_packet(data: &[u8]) {
    let mut server = netcode_server();
    let srcs = netcode_sources();
    let mut buf = Vec::with_capacity(1500);
    for (sel, bytes) in frames(data) {
        let dt = advance(sel);
        if !dt.is_zero() {
            server.update(dt);
        }
        buf.clear();
        buf.extend_from_slice(bytes);
        let _ = server.process_packet(srcs[usize::from(sel & 3)], &mut buf);
    }
}

fn seed_token() -> Option<ConnectToken> {
    let m = minter();
    ConnectToken::generate(
        NETCODE_TIME,
        m.protocol_id,
        300,
        CLIENT_ID,
        5,
        m.agent_addrs.clone(),
        Some(&crate::shard::keys::name_to_user_data("ana")),
        &crate::shard::keys::netcode_key(&SHARD_SECRET),
    )
    .ok()
}

/// The fixed token of [`client_netcode_packet`], so saved inputs stay valid across runs.
fn client_token() -> Option<ConnectToken> {
    // A token written once with fixed keys would do as well; minting is deterministic
    // enough here because only the client's own keys matter for what it decodes.
    thread_local!(static TOKEN: Option<Vec<u8>> = seed_token().map(|t| {
        let mut b = Vec::new();
        let _ = t.write(&mut b);
        b
    }));
    TOKEN.with(|t| t.as_ref().and_then(|b| ConnectToken::read(&mut &b[..]).ok()))
}

fn seeds_client_netcode_packet() -> Vec<Vec<u8>> {
    // What a real server sends a connecting client: challenge, keep-alive, payloads.
    let Some(token) = client_token() else { return Vec::new() };
    let Ok(mut client) =
        NetcodeClient::new(NETCODE_TIME, ClientAuthentication::Secure { connect_token: token })
    else {
        return Vec::new();
    };
    let mut server = netcode_server();
    let mut items: Vec<(u8, Vec<u8>)> = Vec::new();
    for round in 0..8u8 {
        let dt = Duration::from_millis(100);
        server.update(dt);
        let mut to_server: Vec<Vec<u8>> = Vec::new();
        if let Some((p, _)) = client.update(dt) {
            to_server.push(p.to_vec());
        }
        for mut p in to_server {
            let back: Option<Vec<u8>> = match server.process_packet(a_host(), &mut p) {
                renetcode::ServerResult::PacketToSend { payload, .. } => Some(payload.to_vec()),
                renetcode::ServerResult::ClientConnected { payload, .. } => Some(payload.to_vec()),
                _ => None,
            };
            if let Some(b) = back {
                items.push((0x40, b.clone()));
                let mut b = b;
                let _ = client.process_packet(&mut b);
            }
        }
        if let Ok((_, p)) = server.generate_payload_packet(CLIENT_ID, &[round; 40]) {
            items.push((0x40, p.to_vec()));
        }
    }
    stream_seeds(&items)
}

/// Datagrams from the Agent's address into a NetcodeClient holding a token (what a player's
/// game does with anything that arrives from the server address).
pub fn client_netcode_packet(data: &[u8]) {
    let Some(token) = client_token() else { return };
    let Ok(mut client) =
        NetcodeClient::new(NETCODE_TIME, ClientAuthentication::Secure { connect_token: token })
    else {
        return;
    };
    let mut buf = Vec::with_capacity(1500);
    for (sel, bytes) in frames(data) {
        let dt = advance(sel);
        let _ = client.update(dt);
        buf.clear();
        buf.extend_from_slice(bytes);
        let _ = client.process_packet(&mut buf);
    }
}

// ---------------------------------------------------------------------------------------
// intro_params

/// Reads fuzz bytes as values; past the end it continues from a PRNG seeded by the input, so
/// a short input can still describe thousands of candidates.
struct Reader<'a> {
    data: &'a [u8],
    rng: u64,
}

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        if let Some((b, rest)) = self.data.split_first() {
            self.data = rest;
            *b
        } else {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            (self.rng >> 24) as u8
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn addr(&mut self) -> SocketAddr {
        if self.u8() & 7 == 0 {
            let mut ip = [0u8; 16];
            for b in &mut ip {
                *b = self.u8();
            }
            SocketAddr::from((ip, self.u16()))
        } else {
            let ip = [self.u8(), self.u8(), self.u8(), self.u8()];
            SocketAddr::from((ip, self.u16()))
        }
    }
    fn kind(&mut self) -> CandidateKind {
        match self.u8() % 5 {
            0 => CandidateKind::Predicted,
            1 => CandidateKind::Relayed,
            2 => CandidateKind::ServerReflexive,
            3 => CandidateKind::PeerReflexive,
            _ => CandidateKind::Host,
        }
    }
}

const DELTAS: [i32; 12] =
    [i32::MIN, i32::MIN + 1, -65536, -65535, -1024, -1, 0, 1, 2, 65535, i32::MAX - 1, i32::MAX];

/// Fuzz-derived introduction parameters, as a hostile player's shard could forward them.
pub fn intro_from(data: &[u8]) -> LinkParams {
    let seed =
        data.iter().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    let mut r = Reader { data, rng: seed | 1 };
    let scale = r.u8();
    // Mostly a handful of candidates; 1 in 64 inputs lists up to 4,096 (the slow path).
    let n = if scale < 0xfc { usize::from(scale % 16) } else { usize::from(r.u16() % 4096) };
    let mut remote = Vec::with_capacity(n);
    let dup_every = r.u8();
    for i in 0..n {
        if dup_every > 1 && i % usize::from(dup_every) == 0 && !remote.is_empty() {
            let again = remote[i % remote.len()];
            remote.push(again);
        } else {
            remote.push(Candidate::new(r.kind(), r.addr()));
        }
    }
    let d = r.u8();
    let port_delta = match d % 4 {
        0 => None,
        1 => Some(DELTAS[usize::from(r.u8()) % DELTAS.len()]),
        _ => Some(r.u32() as i32),
    };
    let remote_nat = NatHint { dependent_mapping: d & 4 != 0, port_delta };
    let side = if r.u8() & 1 == 0 { Side::A } else { Side::B };
    let relay = if r.u8() & 1 == 0 {
        None
    } else {
        let mut tok = [0u8; p2pmodel_core::proto::relay::TOKEN_LEN];
        for b in &mut tok {
            *b = r.u8();
        }
        let token = RelayToken::from_bytes(&tok).unwrap_or_else(|_| relay_params(side).token);
        let mut key = [0u8; 32];
        for b in &mut key {
            *b = r.u8();
        }
        Some(RelayParams { addr: r.addr(), token, bind_key: BindKey(key) })
    };
    let mut key = [0u8; 32];
    key[0] = r.u8();
    LinkParams { link: LinkId(r.u32()), side, key: LinkKey(key), remote, remote_nat, relay }
}

fn seeds_intro_params() -> Vec<Vec<u8>> {
    vec![
        // two candidates, sequential NAT with delta 1, relay
        vec![2, 0, 2, 1, 203, 0, 113, 5, 0x9c, 0x40, 4, 1, 10, 0, 0, 2, 0x13, 0x88, 5, 7, 0, 1],
        // many candidates
        vec![0xfc, 0x0f, 0xff, 3, 2, 1],
        // extreme delta
        vec![1, 0, 2, 1, 203, 0, 113, 5, 0xff, 0xfe, 5, 11, 0, 1],
        vec![1, 0, 2, 1, 203, 0, 113, 5, 0x04, 0x00, 5, 0, 0, 0],
        vec![0x00],
    ]
}

/// A mesh gets an introduction built from the input (Mesh::add_link → Link::new with port
/// prediction, de-duplication, probing), plus a duplicate, and runs its timers for a while.
pub fn intro_params(data: &[u8]) {
    let params = intro_from(data);
    let _ = predict(&params.remote, &params.remote_nat, MeshConfig::default().link.prediction_span);
    let t0 = Instant::now();
    let mut m = Mesh::new(t0, MeshConfig::default(), clock(t0), &[a_host()]);
    let id = params.link;
    let _ = m.add_link(t0, params.clone());
    let _ = m.add_link(t0, params);
    let mut now = t0;
    for step in [50, 50, 100, 300, 1_000, 5_000, 30_000] {
        drain(&mut m);
        now += Duration::from_millis(step);
        tick(&mut m, now);
    }
    drain(&mut m);
    while m.poll_event().is_some() {}
    let _ = m.remove_link(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_and_tolerate_garbage() {
        let mut s = Vec::new();
        frame(&mut s, 5, b"abc");
        frame(&mut s, 0xf0, b"");
        frame(&mut s, 1, &[9; 300]);
        let got: Vec<(u8, Vec<u8>)> = frames(&s).map(|(a, b)| (a, b.to_vec())).collect();
        assert_eq!(got, vec![(5, b"abc".to_vec()), (0xf0, vec![]), (1, vec![9; 300])]);
        // a length past the end takes the rest; 2 trailing bytes are ignored
        assert_eq!(frames(&[7, 0xff, 0xff, 1, 2]).collect::<Vec<_>>(), vec![(7, &[1u8, 2][..])]);
        assert_eq!(frames(&[7, 0]).count(), 0);
    }

    #[test]
    fn every_target_has_seeds_that_reach_past_the_first_check() {
        // The world's datagrams decode as what they claim to be: seeds are realistic.
        let rec = world();
        assert!(rec.to_a.iter().any(|(f, d)| *f == b_host() && d[0] == PeerKind::Data as u8), "direct data");
        assert!(rec.to_a.iter().any(|(f, d)| *f == relay_addr() && d[0] == 0x31), "bind acks");
        assert!(
            rec.to_a
                .iter()
                .any(|(_, d)| p2pmodel_core::proto::classify(d)
                    == Ok(p2pmodel_core::proto::DatagramClass::Stun)),
            "STUN"
        );
        assert!(!rec.to_relay.is_empty() && !rec.to_stun.is_empty());
        for t in all() {
            assert!(!(t.seeds)().is_empty(), "{} has seeds", t.name);
        }
        assert!(seeds_link_renet_payload().len() > 3);
    }
}
