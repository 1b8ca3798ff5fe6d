//! Abuse over loopback: while two games play through a real shard (login, Agent, relay,
//! STUN), a flood from many source addresses hits every public endpoint with junk, stale and
//! well-formed-but-unauthenticated datagrams. Two things must hold:
//!
//! - no unauthenticated source ever gets back more bytes than it sent, per endpoint (a
//!   spoofed source cannot turn the shard into an amplifier); the factors are printed;
//! - the two players' reliable peer stream keeps flowing: every message arrives exactly once.
//!
//! Only loopback addresses are used: the flood's sources are 127.0.T.1 – 127.0.T.N (one block per endpoint), which
//! every Linux host routes to itself. Real sockets need real time, so the loops wait on the
//! network (bounded); the verdicts are on bytes and messages, not on timing.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_p2pmodel::prelude::*;
use p2pmodel_core::client::PeerPath as Kind;
use p2pmodel_core::stun::{ChangeRequest, Message, TransactionId};
use p2pmodel_servers::config::ShardConfig;
use p2pmodel_servers::relay::RelayRuntime;
use p2pmodel_servers::shard::ShardInfo;
use p2pmodel_servers::shard::login::{REQUEST_LEN, REQUEST_MAGIC};
use p2pmodel_tests::shard_harness::{TEST_SECRET, free_udp_port, game_app, start_shard};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Flood sources per endpoint.
const SOURCES: u8 = 16;

struct Shard {
    app: App,
    address: ShardAddress,
    login: SocketAddr,
    agent: SocketAddr,
    relay: SocketAddr,
    stun_alt: SocketAddr,
}

fn shard() -> Shard {
    let store = std::env::temp_dir().join(format!("p2pm-abuse-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&store);
    let cfg = ShardConfig::parse(&format!(
        "[shard]\nname = \"abuse\"\nsecret = \"{TEST_SECRET}\"\nbind = \"127.0.0.1\"\n\
         [relay]\nport = 0\nalternate_port = {}\n\
         [agent]\nport = 0\nlogin_port = {}\n\
         [lobby]\nzones = 1\nstore = \"{}\"\n",
        free_udp_port(),
        free_udp_port(),
        store.display()
    ))
    .unwrap();
    let (app, address) = start_shard(&cfg);
    let relay = app.world().resource::<RelayRuntime>();
    let relay_addr = relay.server.primary_addr();
    let stun_alt =
        *relay.server.local_addrs().iter().find(|a| **a != relay_addr).expect("an alternate STUN port");
    let agent = app.world().resource::<ShardInfo>().agent;
    Shard { app, login: address.login, address, agent, relay: relay_addr, stun_alt }
}

/// What a player saw of its peer's numbered stream.
#[derive(Resource, Default)]
struct Stream {
    peer: Option<PlayerId>,
    /// Sequence numbers sent so far (0..sent).
    sent: u32,
    received: Vec<u32>,
    live: bool,
}

fn game(name: &str, login: ShardAddress) -> App {
    game_app(name, login, |app| {
        app.init_resource::<Stream>().add_systems(Update, play);
    })
}

/// Once the peer has a path, send one numbered reliable message per frame while `live`.
fn play(
    mut s: ResMut<Stream>,
    mut met: MessageReader<PeerConnected>,
    mut paths: MessageReader<PeerPathChanged>,
    mut got: MessageReader<P2pReceived>,
    mut sender: P2pSender,
) {
    for p in met.read() {
        s.peer = Some(p.player);
    }
    for p in paths.read() {
        if matches!(p.path, Kind::Relayed | Kind::Direct) {
            s.peer = Some(p.player);
        }
    }
    for m in got.read() {
        if let Ok(n) = m.decode::<u32>() {
            s.received.push(n);
        }
    }
    if let (true, Some(peer)) = (s.live, s.peer) {
        let n = s.sent;
        if sender.send(peer, Channel::Reliable, &n).unwrap_or(false) {
            s.sent += 1;
        }
    }
}

/// Bytes one flood source sent to an endpoint, and got back from it.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    sent: u64,
    received: u64,
    datagrams: u64,
}

/// A payload generator for one endpoint.
type Gen = fn(&mut ChaCha8Rng) -> Vec<u8>;

fn junk(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let n = rng.random_range(1..1400);
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

/// Login requests: the seed's format (magic + name, once answered with a whole token),
/// short junk, and full-size requests whose Noise message is garbage.
fn login_request(rng: &mut ChaCha8Rng) -> Vec<u8> {
    match rng.random_range(0..3) {
        0 => [b"P2PM-LOGIN1".as_slice(), format!("mallory{}", rng.random::<u16>()).as_bytes()].concat(),
        1 => {
            let mut v = vec![0u8; rng.random_range(1..64)];
            rng.fill_bytes(&mut v);
            v
        }
        _ => {
            let mut v = vec![0u8; REQUEST_LEN];
            rng.fill_bytes(&mut v);
            v[..REQUEST_MAGIC.len()].copy_from_slice(REQUEST_MAGIC);
            v
        }
    }
}

/// A netcode connection request (type 0) with a forged private token, or junk.
fn netcode_request(rng: &mut ChaCha8Rng) -> Vec<u8> {
    if rng.random_bool(0.5) {
        let mut v = vec![0u8; 1078];
        rng.fill_bytes(&mut v);
        v[0] = 0;
        v[1..14].copy_from_slice(b"NETCODE 1.02\0");
        v
    } else {
        junk(rng)
    }
}

/// A STUN Binding request, sometimes with a CHANGE-REQUEST: half bare (the smallest
/// request a classic server answers), half padded as our clients send them.
fn stun_request(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let change = if rng.random_bool(0.3) { ChangeRequest::IP_AND_PORT } else { ChangeRequest::NONE };
    let tid = TransactionId::random(rng);
    let m = if rng.random_bool(0.5) {
        Message::padded_binding_request(tid, change)
    } else {
        Message::binding_request(tid, change)
    };
    m.encode()
}

/// Relay traffic: forged Binds (bad tokens), peer-data shapes for random links, junk.
fn relay_traffic(rng: &mut ChaCha8Rng) -> Vec<u8> {
    match rng.random_range(0..3) {
        0 => {
            let mut v = vec![0u8; rng.random_range(55..1200)];
            rng.fill_bytes(&mut v);
            v[0] = 0x10;
            v
        }
        1 => {
            let mut v = vec![0u8; rng.random_range(30..1300)];
            rng.fill_bytes(&mut v);
            v[0] = 0x01;
            v
        }
        _ => junk(rng),
    }
}

/// Send the flood until `stop`: every endpoint gets its own `SOURCES` source addresses
/// (127.0.T.1 ..= 127.0.T.SOURCES for target T), so whatever comes back to a source is that
/// endpoint's answer, whichever of its ports it comes from. Returns the tally per
/// (endpoint, source).
fn flood(
    targets: Vec<(&'static str, SocketAddr, Gen)>,
    stop: Arc<AtomicBool>,
) -> HashMap<(&'static str, u8), Tally> {
    let sources: Vec<Vec<(u8, UdpSocket)>> = (0..targets.len() as u8)
        .map(|t| {
            (1..=SOURCES)
                .map(|i| {
                    let ip = Ipv4Addr::new(127, 0, 1 + t, i);
                    let s = UdpSocket::bind(SocketAddr::new(IpAddr::V4(ip), 0)).unwrap();
                    s.set_nonblocking(true).unwrap();
                    (i, s)
                })
                .collect()
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut tally: HashMap<(&'static str, u8), Tally> = HashMap::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        for ((name, addr, generate), socks) in targets.iter().zip(&sources) {
            for (i, s) in socks {
                let payload = generate(&mut rng);
                if s.send_to(&payload, addr).is_ok() {
                    let t = tally.entry((*name, *i)).or_default();
                    t.sent += payload.len() as u64;
                    t.datagrams += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
        for ((name, _, _), socks) in targets.iter().zip(&sources) {
            for (i, s) in socks {
                while let Ok((n, _)) = s.recv_from(&mut buf) {
                    tally.entry((*name, *i)).or_default().received += n as u64;
                }
            }
        }
    }
    tally
}

#[test]
fn a_flood_from_many_sources_is_never_amplified_and_players_keep_playing() {
    let mut shard = shard();
    let mut ana = game("ana", shard.address);
    let mut bob = game("bob", shard.address);

    // 1. The players meet and their link carries a path.
    let deadline = Instant::now() + Duration::from_secs(15);
    let ready = |a: &App| a.world().resource::<Stream>().peer.is_some();
    while Instant::now() < deadline && !(ready(&ana) && ready(&bob)) {
        shard.app.update();
        ana.update();
        bob.update();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(ready(&ana) && ready(&bob), "the players never met");

    // 2. The flood starts; the players stream for 4 s through it.
    let targets: Vec<(&'static str, SocketAddr, Gen)> = vec![
        ("login", shard.login, login_request),
        ("agent", shard.agent, netcode_request),
        ("relay", shard.relay, relay_traffic),
        ("relay-stun", shard.relay, stun_request),
        ("stun-alt", shard.stun_alt, stun_request),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let result = Arc::new(Mutex::new(HashMap::new()));
    let flooder = {
        let (stop, result) = (stop.clone(), result.clone());
        std::thread::spawn(move || *result.lock().unwrap() = flood(targets, stop))
    };
    for app in [&mut ana, &mut bob] {
        app.world_mut().resource_mut::<Stream>().live = true;
    }
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        shard.app.update();
        ana.update();
        bob.update();
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    for app in [&mut ana, &mut bob] {
        app.world_mut().resource_mut::<Stream>().live = false;
    }
    // Let the last messages land.
    let settle = Instant::now() + Duration::from_secs(5);
    let complete = |a: &App, b: &App| {
        let (sa, sb) = (a.world().resource::<Stream>(), b.world().resource::<Stream>());
        sb.received.len() as u32 >= sa.sent && sa.received.len() as u32 >= sb.sent
    };
    while Instant::now() < settle && !complete(&ana, &bob) {
        shard.app.update();
        ana.update();
        bob.update();
        std::thread::sleep(Duration::from_millis(2));
    }

    // 3. Amplification, per endpoint: the worst source's factor, and the total.
    let tally = result.lock().unwrap().clone();
    let mut worst: Vec<String> = Vec::new();
    for endpoint in ["login", "agent", "relay", "relay-stun", "stun-alt"] {
        let rows: Vec<&Tally> = tally.iter().filter(|((e, _), _)| *e == endpoint).map(|(_, t)| t).collect();
        let sent: u64 = rows.iter().map(|t| t.sent).sum();
        let received: u64 = rows.iter().map(|t| t.received).sum();
        let datagrams: u64 = rows.iter().map(|t| t.datagrams).sum();
        let max = rows.iter().map(|t| t.received as f64 / t.sent.max(1) as f64).fold(0.0, f64::max);
        println!(
            "amplification endpoint={endpoint} sources={} datagrams={datagrams} bytes_in={sent} \
             bytes_out={received} factor={:.3} worst_source_factor={max:.3}",
            rows.len(),
            received as f64 / sent.max(1) as f64
        );
        assert!(datagrams > 1000, "{endpoint}: the flood barely ran ({datagrams} datagrams)");
        for ((e, src), t) in &tally {
            if *e == endpoint && t.received > t.sent {
                worst.push(format!("{e} from source {src}: {} B out for {} B in", t.received, t.sent));
            }
        }
    }
    assert!(worst.is_empty(), "amplified sources:\n{}", worst.join("\n"));

    // 4. The players' streams: every message exactly once.
    for (me, peer) in [(&ana, &bob), (&bob, &ana)] {
        let sent = peer.world().resource::<Stream>().sent;
        let got = &me.world().resource::<Stream>().received;
        let unique: BTreeSet<u32> = got.iter().copied().collect();
        let gaps = (0..sent).filter(|n| !unique.contains(n)).count();
        let dups = got.len() - unique.len();
        println!("stream sent={sent} received={} gaps={gaps} dups={dups}", got.len());
        assert!(sent > 50, "the stream barely ran: {sent} messages");
        assert_eq!((gaps, dups), (0, 0), "{sent} sent, {} received", got.len());
    }
}
