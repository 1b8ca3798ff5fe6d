//! ClientCore against a scripted shard: the order of the login steps and the routing choice.

use super::*;
use crate::crypto::LinkKey;
use crate::link::{LinkParams, NatHint};
use crate::proto::peer::Side;

fn core(p2p: bool) -> (ClientCore, Instant) {
    let now = Instant::now();
    let clock = ClockAnchor { at: now, unix_micros: 1_790_000_000_000_000 };
    let mut cfg = ClientConfig::new("ana");
    cfg.p2p = p2p;
    cfg.seed = 0; // reproducible STUN transaction ids
    let host: SocketAddr = "192.168.0.2:5000".parse().unwrap();
    (ClientCore::new(now, cfg, clock, &[host]), now)
}

fn drain(c: &mut ClientCore) -> Vec<ClientMessage> {
    std::iter::from_fn(|| c.poll_shard_message()).map(|(m, _)| m).collect()
}

fn intro(peer: u64, link: u32) -> ShardMessage {
    ShardMessage::PeerIntro {
        peer: PlayerId(peer),
        name: format!("p{peer}"),
        params: LinkParams {
            link: LinkId(link),
            side: Side::A,
            key: LinkKey([7; 32]),
            remote: Vec::new(),
            remote_nat: NatHint::default(),
            relay: None,
        },
    }
}

#[test]
fn login_then_mesh_info_then_zone_after_nat_discovery_times_out() {
    let (mut c, t0) = core(true);
    c.enter_zone(t0, 3);
    c.connected();
    assert_eq!(drain(&mut c), vec![ClientMessage::Login { name: "ana".into() }], "zone waits for login");
    let stun: SocketAddr = "203.0.113.1:3478".parse().unwrap();
    c.handle_shard_message(t0, ShardMessage::Welcome { player: PlayerId(9), stun });
    assert_eq!(c.phase(), Phase::Lobby);
    assert!(drain(&mut c).is_empty(), "MeshInfo waits for NAT discovery");
    assert!(c.poll_transmit().is_some_and(|t| t.dst == stun), "discovery started against the shard's STUN");
    let deadline = c.poll_timeout().unwrap();
    assert!(deadline <= t0 + Duration::from_secs(3));
    c.handle_timeout(t0 + Duration::from_secs(3));
    let sent = drain(&mut c);
    assert!(
        matches!(&sent[..], [ClientMessage::MeshInfo { .. }, ClientMessage::EnterZone { zone: 3 }]),
        "{sent:?}"
    );
}

#[test]
fn with_p2p_off_messages_go_through_the_server_and_no_link_opens() {
    let (mut c, t0) = core(false);
    c.connected();
    c.handle_shard_message(
        t0,
        ShardMessage::Welcome { player: PlayerId(1), stun: "203.0.113.1:3478".parse().unwrap() },
    );
    c.enter_zone(t0, 0);
    let sent = drain(&mut c);
    assert!(
        matches!(&sent[1..], [ClientMessage::MeshInfo { candidates, .. }, ClientMessage::EnterZone { zone: 0 }] if candidates.is_empty())
    );
    c.handle_shard_message(t0, intro(2, 5));
    assert_eq!(c.peer(PlayerId(2)).unwrap().path, PeerPath::Server);
    assert_eq!(c.mesh().links().count(), 0);
    assert_eq!(c.send(PlayerId(2), Channel::Unreliable, Bytes::from_static(b"pos")), Ok(false));
    assert_eq!(
        drain(&mut c),
        vec![ClientMessage::ToPeer { peer: PlayerId(2), reliable: false, seq: None, data: b"pos".to_vec() }]
    );
    assert_eq!(
        c.send(PlayerId(3), Channel::Reliable, Bytes::new()),
        Err(SendError::UnknownPeer(PlayerId(3)))
    );
    let big = Bytes::from(vec![0; MAX_APP_MESSAGE + 1]);
    assert_eq!(c.send(PlayerId(2), Channel::Reliable, big), Err(SendError::TooLarge(MAX_APP_MESSAGE + 1)));
    // Server-routed messages from a peer arrive as events; from strangers they are dropped.
    c.handle_shard_message(
        t0,
        ShardMessage::FromPeer { peer: PlayerId(2), reliable: true, seq: None, data: b"hi".to_vec() },
    );
    c.handle_shard_message(
        t0,
        ShardMessage::FromPeer { peer: PlayerId(8), reliable: true, seq: None, data: b"x".to_vec() },
    );
    let evs: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
    let msgs: Vec<_> = evs.iter().filter(|e| matches!(e, ClientEvent::Message { .. })).collect();
    assert_eq!(msgs.len(), 1);
    assert!(matches!(
        msgs[0],
        ClientEvent::Message { player: PlayerId(2), channel: Channel::Reliable, p2p: false, .. }
    ));
}

#[test]
fn a_connecting_peer_gets_messages_through_the_server_and_outro_or_zone_change_forgets_peers() {
    let (mut c, t0) = core(true);
    c.connected();
    c.handle_shard_message(
        t0,
        ShardMessage::Welcome { player: PlayerId(1), stun: "203.0.113.1:3478".parse().unwrap() },
    );
    c.handle_shard_message(t0, intro(2, 5));
    c.handle_shard_message(t0, intro(3, 6));
    assert_eq!(c.peer(PlayerId(2)).unwrap().path, PeerPath::Connecting);
    assert_eq!(c.mesh().links().count(), 2);
    drain(&mut c);
    assert_eq!(c.send(PlayerId(2), Channel::Reliable, Bytes::from_static(b"early")), Ok(false));
    assert!(matches!(&drain(&mut c)[..], [ClientMessage::ToPeer { reliable: true, .. }]));
    c.handle_shard_message(t0, ShardMessage::PeerOutro { link: LinkId(5) });
    assert!(c.peer(PlayerId(2)).is_none());
    assert_eq!(c.mesh().links().count(), 1);
    // A (new) Game server: we offer the link we still have; unkept, it is closed after
    // `keep_grace`.
    drain(&mut c);
    c.handle_shard_message(t0, ShardMessage::EnteredZone { zone: 0, x: 1.0, y: 2.0 });
    assert!(
        matches!(&drain(&mut c)[..], [ClientMessage::KeepLinks { links }] if links[..] == [(LinkId(6), PlayerId(3))])
    );
    assert_eq!(c.peers().count(), 1, "kept while the new server decides");
    let grace = c.config().keep_grace;
    assert!(c.poll_timeout().is_some_and(|t| t <= t0 + grace));
    c.handle_timeout(t0 + grace);
    assert_eq!(c.peers().count(), 0);
    assert_eq!(c.mesh().links().count(), 0);
    let removed = std::iter::from_fn(|| c.poll_event())
        .filter(|e| matches!(e, ClientEvent::PeerRemoved { .. }))
        .count();
    assert_eq!(removed, 2);
    // Another zone: links of the old one go at once.
    c.handle_shard_message(t0, intro(4, 7));
    c.handle_shard_message(t0, ShardMessage::EnteredZone { zone: 1, x: 0.0, y: 0.0 });
    assert_eq!(c.peers().count(), 0);
}

#[test]
fn a_lost_shard_connection_keeps_the_links_and_the_reconnect_resumes_with_the_ticket() {
    let (mut c, t0) = core(true);
    c.connected();
    let stun = "203.0.113.1:3478".parse().unwrap();
    c.handle_shard_message(t0, ShardMessage::Welcome { player: PlayerId(1), stun });
    c.handle_shard_message(t0, ShardMessage::Session { ticket: vec![7; 60] });
    c.handle_shard_message(t0, ShardMessage::EnteredZone { zone: 2, x: 0.0, y: 0.0 });
    c.handle_shard_message(t0, intro(2, 5));
    drain(&mut c);
    c.disconnected();
    assert_eq!(c.phase(), Phase::Reconnecting);
    assert_eq!((c.peers().count(), c.mesh().links().count()), (1, 1), "links outlive the shard");
    assert_eq!(c.player(), Some(PlayerId(1)));
    // No server route: the message waits in the link for a path, nothing goes to the shard.
    assert_eq!(c.send(PlayerId(2), Channel::Reliable, Bytes::from_static(b"offline")), Ok(true));
    assert!(drain(&mut c).is_empty());
    c.connected();
    assert!(matches!(&drain(&mut c)[..], [ClientMessage::Resume { ticket }] if ticket[..] == [7; 60]));
    // Back on a Game server, which keeps the link both sides reported.
    c.handle_shard_message(t0, ShardMessage::Welcome { player: PlayerId(1), stun });
    c.handle_shard_message(t0, ShardMessage::EnteredZone { zone: 2, x: 0.0, y: 0.0 });
    let out = drain(&mut c);
    assert!(
        out.iter().any(
            |m| matches!(m, ClientMessage::KeepLinks { links } if links[..] == [(LinkId(5), PlayerId(2))])
        ),
        "{out:?}"
    );
    assert!(
        !out.iter().any(|m| matches!(m, ClientMessage::EnterZone { .. })),
        "the resume placed us: {out:?}"
    );
    c.handle_shard_message(t0, ShardMessage::PeerKept { peer: PlayerId(2), link: LinkId(5) });
    c.handle_timeout(t0 + c.config().keep_grace * 2);
    assert_eq!(c.peers().count(), 1, "kept");
    assert!(!std::iter::from_fn(|| c.poll_event()).any(|e| matches!(e, ClientEvent::PeerRemoved { .. })));
    // Leaving on purpose forgets everything; the next connection logs in afresh.
    c.leave();
    c.connected();
    assert!(matches!(&drain(&mut c)[..], [ClientMessage::Login { .. }]));
    assert_eq!(c.peers().count(), 0);
}

#[test]
fn stun_transaction_ids_are_random_by_default_and_fixed_only_when_asked() {
    use crate::endpoint::Endpoint;
    let now = Instant::now();
    let clock = ClockAnchor { at: now, unix_micros: 1_790_000_000_000_000 };
    let host: SocketAddr = "192.168.0.2:5000".parse().unwrap();
    let stun: SocketAddr = "198.18.0.10:3478".parse().unwrap();
    // The transaction id of the first STUN request a client sends (bytes 8..20).
    let first_tid = |cfg: ClientConfig| {
        let mut c = ClientCore::new(now, cfg, clock, &[host]);
        c.start_nat_discovery(now, stun);
        let t = std::iter::from_fn(|| c.poll_transmit()).find(|t| t.dst == stun).expect("a STUN request");
        t.payload[8..20].to_vec()
    };
    let (a, b) = (ClientConfig::new("ana"), ClientConfig::new("ana"));
    assert_ne!(a.seed, b.seed, "default seeds come from the OS");
    assert_ne!(first_tid(a), first_tid(b));
    let fixed = || {
        let mut c = ClientConfig::new("ana");
        c.seed = 42;
        c
    };
    assert_eq!(first_tid(fixed()), first_tid(fixed()), "an explicit seed repeats");
}

#[test]
fn an_assumed_nat_skips_discovery_and_announces_the_host_candidates_at_once() {
    let now = Instant::now();
    let clock = ClockAnchor { at: now, unix_micros: 1_790_000_000_000_000 };
    let host: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let open = NatSummary { class: "open".into(), dependent_mapping: false, port_delta: None, public: None };
    let mut cfg = ClientConfig::new("ana");
    cfg.assume_nat = Some(open.clone());
    let mut c = ClientCore::new(now, cfg, clock, &[host]);
    c.enter_zone(now, 0);
    c.connected();
    let stun: SocketAddr = "203.0.113.1:3478".parse().unwrap();
    c.handle_shard_message(now, ShardMessage::Welcome { player: PlayerId(4), stun });
    assert_eq!(
        drain(&mut c),
        vec![
            ClientMessage::Login { name: "ana".into() },
            ClientMessage::MeshInfo {
                candidates: vec![crate::link::Candidate::new(crate::link::CandidateKind::Host, host)],
                nat: open,
            },
            ClientMessage::EnterZone { zone: 0 },
        ],
        "no wait for NAT discovery"
    );
    assert!(c.poll_transmit().is_none(), "no STUN request");
    assert_eq!(c.poll_timeout(), None, "no discovery deadline");
    // Links still open: P2P is on.
    c.handle_shard_message(now, intro(2, 5));
    assert_eq!(c.peer(PlayerId(2)).unwrap().path, PeerPath::Connecting);
}

/// Two clients introduced to each other on open hosts (link 5), nothing exchanged yet.
struct Pair {
    a: ClientCore,
    b: ClientCore,
    ha: SocketAddr,
    hb: SocketAddr,
    now: Instant,
}

impl Pair {
    fn new() -> Self {
        use crate::link::{Candidate, CandidateKind};
        let t0 = Instant::now();
        let clock = ClockAnchor { at: t0, unix_micros: 1_790_000_000_000_000 };
        let (ha, hb): (SocketAddr, SocketAddr) =
            ("10.0.0.1:4000".parse().unwrap(), "10.0.0.2:4000".parse().unwrap());
        let open =
            NatSummary { class: "open".into(), dependent_mapping: false, port_delta: None, public: None };
        let stun: SocketAddr = "203.0.113.1:3478".parse().unwrap();
        let client =
            |name: &str, player: u64, host: SocketAddr, peer: u64, side: Side, remote: SocketAddr| {
                let mut cfg = ClientConfig::new(name);
                cfg.seed = 0;
                cfg.assume_nat = Some(open.clone());
                let mut c = ClientCore::new(t0, cfg, clock, &[host]);
                c.connected();
                c.handle_shard_message(t0, ShardMessage::Welcome { player: PlayerId(player), stun });
                let ShardMessage::PeerIntro { name, mut params, .. } = intro(peer, 5) else { unreachable!() };
                params.side = side;
                params.remote = vec![Candidate::new(CandidateKind::Host, remote)];
                c.handle_shard_message(t0, ShardMessage::PeerIntro { peer: PlayerId(peer), name, params });
                c
            };
        let a = client("ana", 1, ha, 2, Side::A, hb);
        let b = client("bo", 2, hb, 1, Side::B, ha);
        Pair { a, b, ha, hb, now: t0 }
    }

    /// Shuttle datagrams both ways for `ms` of virtual time, 5 ms a step.
    fn run(&mut self, ms: u64) {
        let Pair { a, b, ha, hb, now } = self;
        for _ in 0..ms / 5 {
            while let Some(t) = a.poll_transmit() {
                b.handle_datagram(*now, *hb, *ha, &t.payload);
            }
            while let Some(t) = b.poll_transmit() {
                a.handle_datagram(*now, *ha, *hb, &t.payload);
            }
            *now += Duration::from_millis(5);
            for c in [&mut *a, &mut *b] {
                if c.poll_timeout().is_some_and(|t| t <= *now) {
                    c.handle_timeout(*now);
                }
            }
        }
    }
}

/// The application messages `c` received from `from`: (bytes, over the mesh).
fn received(c: &mut ClientCore, from: u64) -> Vec<(Bytes, bool)> {
    std::iter::from_fn(|| c.poll_event())
        .filter_map(|e| match e {
            ClientEvent::Message { player, data, p2p, .. } if player == PlayerId(from) => Some((data, p2p)),
            _ => None,
        })
        .collect()
}

#[test]
fn mesh_messages_from_a_peer_arrive_once_each_as_p2p_events() {
    let mut pair = Pair::new();
    pair.run(500);
    assert_eq!(pair.a.peer(PlayerId(2)).unwrap().path, PeerPath::Direct);
    assert_eq!(pair.b.peer(PlayerId(1)).unwrap().path, PeerPath::Direct);
    while pair.b.poll_event().is_some() {}
    assert_eq!(pair.a.send(PlayerId(2), Channel::Unreliable, Bytes::from_static(b"pos")), Ok(true));
    assert_eq!(pair.a.send(PlayerId(2), Channel::Reliable, Bytes::from_static(b"hit")), Ok(true));
    pair.run(500);
    let Pair { a, b, .. } = &mut pair;
    let got: Vec<(Channel, Bytes)> = std::iter::from_fn(|| b.poll_event())
        .filter_map(|e| match e {
            ClientEvent::Message { player: PlayerId(1), channel, data, p2p: true } => Some((channel, data)),
            _ => None,
        })
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.contains(&(Channel::Unreliable, Bytes::from_static(b"pos"))));
    assert!(got.contains(&(Channel::Reliable, Bytes::from_static(b"hit"))));
    assert_eq!(b.peer(PlayerId(1)).unwrap().received.p2p_messages, 2);
    assert!(
        drain(a).iter().all(|m| !matches!(m, ClientMessage::ToPeer { .. })),
        "nothing through the server"
    );
}

/// The Game server's part of the server route: `ToPeer` from player 1 as `FromPeer`.
fn from_peer_1(m: &ClientMessage) -> Option<ShardMessage> {
    match m {
        ClientMessage::ToPeer { reliable, seq, data, .. } => Some(ShardMessage::FromPeer {
            peer: PlayerId(1),
            reliable: *reliable,
            seq: *seq,
            data: data.clone(),
        }),
        _ => None,
    }
}

#[test]
fn reliable_messages_sent_while_the_link_connects_arrive_once_in_order_though_the_shard_lost_some() {
    let mut pair = Pair::new();
    // The link has no path yet: six reliable messages go through the Game server, and
    // each also waits in the link, numbered in its reliable stream.
    for i in 0..6u8 {
        assert_eq!(pair.a.send(PlayerId(2), Channel::Reliable, Bytes::from(vec![i])), Ok(false));
    }
    let routed: Vec<ShardMessage> = drain(&mut pair.a).iter().filter_map(from_peer_1).collect();
    let seqs: Vec<Option<u32>> = routed
        .iter()
        .map(|m| match m {
            ShardMessage::FromPeer { seq, .. } => seq.map(|s| s.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4, 5].map(Some));
    // The shard delivers 0, 1 and 4, then dies with 2, 3 and 5 inside it.
    let t = pair.now;
    for i in [0, 1, 4] {
        pair.b.handle_shard_message(t, routed[i].clone());
    }
    let early = received(&mut pair.b, 1);
    assert_eq!(early, [(Bytes::from(vec![0]), false), (Bytes::from(vec![1]), false)], "4 waits for 2 and 3");
    // The link comes up and brings its copies: every message once, in order.
    pair.run(500);
    assert_eq!(pair.b.peer(PlayerId(1)).unwrap().path, PeerPath::Direct);
    let late: Vec<u8> = received(&mut pair.b, 1).iter().map(|(d, _)| d[0]).collect();
    assert_eq!(late, [2, 3, 4, 5]);
    let totals = pair.b.totals();
    assert_eq!((totals.reliable_duplicates, totals.reliable_gaps), (3, 0), "link copies of 0, 1, 4");
    // Server copies that come after the link's are dropped too.
    pair.b.handle_shard_message(t, routed[5].clone());
    assert!(received(&mut pair.b, 1).is_empty());
    // From now on the link carries the stream on its own.
    assert_eq!(pair.a.send(PlayerId(2), Channel::Reliable, Bytes::from(vec![6])), Ok(true));
    pair.run(100);
    assert_eq!(received(&mut pair.b, 1), [(Bytes::from(vec![6]), true)]);
}

#[test]
fn a_held_server_copy_goes_out_when_its_link_cannot_fill_the_gap() {
    let mut pair = Pair::new();
    for i in 0..3u8 {
        pair.a.send(PlayerId(2), Channel::Reliable, Bytes::from(vec![i])).unwrap();
    }
    let routed: Vec<ShardMessage> = drain(&mut pair.a).iter().filter_map(from_peer_1).collect();
    let t = pair.now;
    pair.b.handle_shard_message(t, routed[0].clone());
    pair.b.handle_shard_message(t, routed[2].clone());
    assert_eq!(received(&mut pair.b, 1).len(), 1);
    // No datagram ever crosses: after HOLD_TIME the held copy is delivered, the gap counted.
    let deadline = pair.b.poll_timeout().unwrap();
    assert!(deadline <= t + merge::HOLD_TIME);
    let mut now = t;
    while now < t + merge::HOLD_TIME {
        now = pair.b.poll_timeout().unwrap().max(now + Duration::from_millis(1));
        pair.b.handle_timeout(now);
    }
    let got: Vec<u8> = received(&mut pair.b, 1).iter().map(|(d, _)| d[0]).collect();
    assert_eq!(got, [2]);
    assert_eq!(pair.b.totals().reliable_gaps, 1);
}

#[test]
fn game_messages_go_to_the_game_server_only_in_a_zone_and_its_answers_become_events() {
    let (mut c, t0) = core(false);
    c.connected();
    c.handle_shard_message(
        t0,
        ShardMessage::Welcome { player: PlayerId(1), stun: "203.0.113.1:3478".parse().unwrap() },
    );
    assert_eq!(c.send_to_game(true, b"buy"), Err(SendError::NotInGame), "in the lobby: no Game server");
    c.handle_shard_message(t0, ShardMessage::EnteredZone { zone: 0, x: 0.0, y: 0.0 });
    drain(&mut c);
    assert_eq!(c.send_to_game(true, b"buy"), Ok(()));
    assert_eq!(c.send_to_game(false, &[0; MAX_GAME_DATA + 1]), Err(SendError::TooLarge(MAX_GAME_DATA + 1)));
    let sent: Vec<_> = std::iter::from_fn(|| c.poll_shard_message()).collect();
    assert_eq!(sent, [(ClientMessage::ToGame { reliable: true, data: b"buy".to_vec() }, true)]);
    c.handle_shard_message(t0, ShardMessage::FromGame { reliable: false, data: vec![3, 4] });
    let evs: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
    assert!(
        evs.contains(&ClientEvent::FromGame { reliable: false, data: Bytes::from_static(&[3, 4]) }),
        "{evs:?}"
    );
}
