//! End to end over real loopback sockets: meshes (the client core) and the real relay
//! server (data-plane thread, recvmmsg/sendmmsg). Only loopback addresses are used.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use p2pmodel_core::config::MeshConfig;
use p2pmodel_core::endpoint::{ClockAnchor, Endpoint};
use p2pmodel_core::link::{CHANNEL_RELIABLE, Candidate, CandidateKind, LinkEvent, NatHint, Path};
use p2pmodel_core::mesh::Mesh;
use p2pmodel_core::proto::peer::LinkId;
use p2pmodel_core::relay::{RelayConfig, TokenKeys};
use p2pmodel_core::shard::intro::{IntroRefusals, IntroRelay, IntroSide, introduce};
use p2pmodel_servers::relay::{RelayServer, RelayServerOptions};
use p2pmodel_tests::loopback::{LoopPair, LoopRelay, drive, is_direct};

struct Peer {
    mesh: Mesh,
    socket: UdpSocket,
    local: SocketAddr,
}

impl Peer {
    fn new(now: Instant, clock: ClockAnchor) -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let local = socket.local_addr().unwrap();
        Peer { mesh: Mesh::new(now, MeshConfig::default(), clock, &[local]), socket, local }
    }

    /// One turn of the driver loop: send what is queued, read what arrived, fire timers.
    fn pump(&mut self) {
        while let Some(t) = self.mesh.poll_transmit() {
            assert!(t.dst.ip().is_loopback(), "only loopback traffic: {}", t.dst);
            let _ = self.socket.send_to(&t.payload, t.dst);
        }
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            self.mesh.handle_datagram(Instant::now(), self.local, from, &buf[..n]);
        }
        let now = Instant::now();
        if self.mesh.poll_timeout().is_some_and(|t| t <= now) {
            self.mesh.handle_timeout(now);
        }
    }
}

#[test]
fn a_link_with_no_direct_path_falls_back_to_the_real_relay_and_delivers_in_order() {
    let keys = TokenKeys::new(1, [3; 32]);
    let relay = RelayServer::start(RelayServerOptions::new(
        vec!["127.0.0.1:0".parse().unwrap()],
        RelayConfig::default(),
        keys.clone(),
    ))
    .expect("relay starts");
    let relay_addr = relay.primary_addr();

    let now = Instant::now();
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let clock = ClockAnchor { at: now, unix_micros: unix.as_micros() as u64 };
    let mut a = Peer::new(now, clock);
    let mut b = Peer::new(now, clock);
    // Each side is told only of an address where nobody listens: punching cannot succeed.
    let dead = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let link = LinkId(77);
    let tokens = IntroRelay { addr: relay_addr, keys: &keys, expiry_unix: unix.as_secs() as u32 + 600 };
    let dead = [Candidate::new(CandidateKind::ServerReflexive, dead)];
    let lo = Some(std::net::IpAddr::from([127, 0, 0, 1]));
    let side = IntroSide { candidates: &dead, nat: NatHint::default(), ip: lo };
    let mut refused = IntroRefusals::default();
    let intro = introduce(&mut rand::rng(), link, &side, &side, Some(&tokens), &mut refused);
    a.mesh.add_link(now, intro.a).unwrap();
    b.mesh.add_link(now, intro.b).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = 0u32;
    let mut got = Vec::new();
    let mut first_at = None;
    while got.len() < 200 && Instant::now() < deadline {
        if sent < 200 && a.mesh.link(link).unwrap().path() != Path::None {
            a.mesh.send(link, CHANNEL_RELIABLE, sent.to_be_bytes().to_vec()).unwrap();
            sent += 1;
        }
        a.pump();
        b.pump();
        while let Some(m) = b.mesh.receive(link, CHANNEL_RELIABLE) {
            first_at.get_or_insert_with(Instant::now);
            got.push(u32::from_be_bytes(m[..4].try_into().unwrap()));
        }
        std::thread::sleep(Duration::from_micros(200)); // a driver's poll interval, not test logic
    }
    assert_eq!(got, (0..200).collect::<Vec<_>>(), "all 200 messages, in order, once");
    assert_eq!(a.mesh.link(link).unwrap().path(), Path::Relayed { relay: relay_addr });
    assert_eq!(b.mesh.link(link).unwrap().path(), Path::Relayed { relay: relay_addr });
    let first = first_at.unwrap() - now;
    assert!(first < Duration::from_secs(1), "first message after {first:?} over loopback");
    // renet may put two messages in one packet, and the relay publishes its counters every
    // few milliseconds: most of the stream, not one packet per message.
    let snap = relay.snapshot();
    assert!(
        snap.forwarded_packets >= 150,
        "the relay forwarded the stream: {} packets",
        snap.forwarded_packets
    );
    relay.shutdown();
}

/// Relay first, then direct, in order across the switch: several pairs over the real relay
/// (started as the relay role starts it, tokens minted from the shard secret). For the first
/// `HOLD` each pair's driver drops every datagram that does not go to the relay (as a NAT
/// whose filter is not open yet would), so the first messages can only take the relay; then
/// the direct path opens and the link must move to it without losing or reordering anything.
#[test]
fn loopback_pairs_deliver_through_the_relay_first_then_go_direct_in_order() {
    const PAIRS: u32 = 4;
    const HOLD: Duration = Duration::from_millis(300);
    let relay = LoopRelay::start().expect("relay starts on loopback");
    let mut pairs: Vec<LoopPair> = (0..PAIRS).map(|_| LoopPair::new(&relay).expect("sockets")).collect();
    for (i, p) in pairs.iter_mut().enumerate() {
        p.a_every = Some(Duration::from_millis(5));
        p.block_direct(true);
        p.introduce(&relay, LinkId(i as u32 + 1));
    }
    let held_until = Instant::now() + HOLD;
    drive(&mut pairs, held_until, |_| false);

    for p in pairs.iter_mut() {
        let link = p.link;
        let first = p.b.first_arrival(link, p.intro).expect("a message arrived through the relay");
        assert!(first.at - p.intro < HOLD, "first message {:?} after introduction", first.at - p.intro);
        assert_eq!(first.seq, 0, "the first message first");
        for peer in [&p.a, &p.b] {
            assert_eq!(peer.path(link), Path::Relayed { relay: relay.addr() });
            assert!(peer.event_time(link, p.intro, is_direct).is_none(), "no direct path while held");
        }
        let stats = p.b.mesh.link(link).unwrap().stats();
        assert!(stats.relay_received > 0 && stats.direct_received == 0, "{stats:?}");
        assert!(p.a.dropped > 0, "A's probes were held back");
        p.block_direct(false);
    }

    let opened = Instant::now();
    let both_direct = |ps: &[LoopPair]| {
        ps.iter().all(|p| {
            p.a.path(p.link) == Path::Direct { remote: p.b.addr() }
                && p.b.path(p.link) == Path::Direct { remote: p.a.addr() }
        })
    };
    assert!(
        drive(&mut pairs, opened + Duration::from_secs(2), both_direct),
        "every pair went direct once the direct path opened"
    );
    let took = opened.elapsed();
    // Probing goes on every 50 ms while relayed, so the next round finds the open path.
    assert!(took < Duration::from_millis(500), "direct {took:?} after the path opened");

    // Stream on the direct path until each sender has sent 150 messages (bounded: a loaded
    // machine sends fewer per second), then stop and let everything arrive.
    let streamed = |ps: &[LoopPair]| ps.iter().all(|p| p.a.links[&p.link].sent >= 150);
    drive(&mut pairs, Instant::now() + Duration::from_secs(5), streamed);
    for p in pairs.iter_mut() {
        p.a_every = None;
    }
    let all_arrived = |ps: &[LoopPair]| {
        ps.iter().all(|p| p.b.received_seqs(p.link).len() as u32 >= p.a.links[&p.link].sent)
    };
    drive(&mut pairs, Instant::now() + Duration::from_secs(2), all_arrived);
    for p in &pairs {
        let link = p.link;
        let sent = p.a.links[&link].sent;
        assert!(sent > 100, "streamed {sent} messages");
        assert_eq!(
            p.b.received_seqs(link),
            (0..sent).collect::<Vec<_>>(),
            "all {sent} messages, in order, once, across the relay → direct switch"
        );
        let stats = p.b.mesh.link(link).unwrap().stats();
        assert!(stats.direct_received > 0 && stats.relay_received > 0, "{stats:?}");
        assert_eq!(p.b.path(link), Path::Direct { remote: p.a.addr() }, "still direct");
    }
    assert!(relay.forwarded() > 0, "the relay forwarded the first messages");
}

/// When the direct path dies under a one-way stream, the sender fails over after
/// `path_timeout`; the receiver only sends acks (which expect no answer), so it must notice
/// from the peer's data arriving through the relay, ping the direct path and fail over too —
/// not ack into the dead path until the sender declares the link lost (found by
/// `conn-timing --loopback`, fixed in `Link::handle_peer`).
#[test]
fn the_receiving_end_of_a_one_way_stream_also_leaves_a_dead_direct_path() {
    let relay = LoopRelay::start().expect("relay starts on loopback");
    let mut pairs = vec![LoopPair::new(&relay).expect("sockets")];
    pairs[0].a_every = Some(Duration::from_millis(10));
    pairs[0].introduce(&relay, LinkId(1));
    let direct = |ps: &[LoopPair]| {
        let p = &ps[0];
        matches!(p.a.path(p.link), Path::Direct { .. }) && matches!(p.b.path(p.link), Path::Direct { .. })
    };
    assert!(drive(&mut pairs, Instant::now() + Duration::from_secs(2), direct), "direct first");
    drive(&mut pairs, Instant::now() + Duration::from_millis(200), |_| false);
    pairs[0].block_direct(true);
    let blocked = Instant::now();
    let b_relayed = |ps: &[LoopPair]| matches!(ps[0].b.path(ps[0].link), Path::Relayed { .. });
    drive(&mut pairs, blocked + Duration::from_secs(2), b_relayed);
    let p = &pairs[0];
    assert!(matches!(p.a.path(p.link), Path::Relayed { .. }), "the sender failed over");
    let at = p.b.event_time(p.link, blocked, |e| matches!(e, LinkEvent::Path(Path::Relayed { .. })));
    assert!(
        at.is_some_and(|t| t - blocked < Duration::from_secs(1)),
        "the receiver still sends on {:?}",
        p.b.path(p.link)
    );
}
