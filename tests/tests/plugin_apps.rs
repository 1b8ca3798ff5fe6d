//! The Bevy plugins, end to end over the simulator: real `App`s (MinimalPlugins, manual
//! time) behind simulated NATs meet through an in-memory shard, the World's punch server
//! (STUN + relay) connects them, and the tests read only what a game reads: states,
//! messages, components and diagnostics.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bevy::diagnostic::DiagnosticsStore;
use bevy::prelude::*;
use bevy_p2pmodel::plugins::diagnostics;
use bevy_p2pmodel::plugins::sim::{SimMeshIo, SimShard, SimStepper};
use bevy_p2pmodel::prelude::*;
use p2pmodel_core::client::PeerPath as Kind;
use p2pmodel_core::endpoint::Transmit;
use p2pmodel_core::proto::shard::PathState;
use p2pmodel_sim::HostConfig;
use p2pmodel_tests::{NatKind, World as Net};
use serde::{Deserialize, Serialize};

/// One simulated frame (the apps update at 100 Hz of virtual time).
const FRAME: Duration = Duration::from_millis(10);

/// The typed message the test game sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Note {
    seq: u32,
    text: String,
}

/// What a test app saw, frame after frame.
#[derive(Resource, Default, Debug)]
struct Log {
    connected: Vec<(PlayerId, String, Entity)>,
    paths: Vec<Kind>,
    disconnected: Vec<PlayerId>,
    notes: Vec<(Note, bool)>,
    undecodable: u32,
    states: Vec<ShardState>,
    shard_events: Vec<ShardEvent>,
    nat: Option<NatReport>,
}

/// How many notes to stream to every peer, one per frame, once one is connected.
#[derive(Resource, Default)]
struct Stream {
    total: u32,
    sent: u32,
}

#[expect(clippy::too_many_arguments, reason = "a Bevy system: one reader per message")]
fn record(
    mut log: ResMut<Log>,
    state: Res<State<ShardState>>,
    mut connected: MessageReader<PeerConnected>,
    mut paths: MessageReader<PeerPathChanged>,
    mut gone: MessageReader<PeerDisconnected>,
    mut received: MessageReader<P2pReceived>,
    mut shard: MessageReader<ShardEvent>,
    mut nat: MessageReader<NatDiscovered>,
) {
    if log.states.last() != Some(state.get()) {
        log.states.push(*state.get());
    }
    for c in connected.read() {
        log.connected.push((c.player, c.name.clone(), c.entity));
    }
    for p in paths.read() {
        log.paths.push(p.path);
    }
    for g in gone.read() {
        log.disconnected.push(g.player);
    }
    for m in received.read() {
        match m.decode::<Note>() {
            Ok(n) => log.notes.push((n, m.p2p)),
            Err(_) => log.undecodable += 1,
        }
    }
    log.shard_events.extend(shard.read().cloned());
    if let Some(n) = nat.read().last() {
        log.nat = Some(n.0.clone());
    }
}

fn stream(mut plan: ResMut<Stream>, peers: Query<&Peer>, mut sender: P2pSender) {
    if plan.sent >= plan.total || peers.is_empty() {
        return;
    }
    let note = Note { seq: plan.sent, text: format!("note {}", plan.sent) };
    sender.broadcast(Channel::Reliable, &note).expect("a small note to introduced peers");
    plan.sent += 1;
}

/// Two game apps on sites of the given kinds, meeting through an in-memory shard.
struct Pair {
    st: SimStepper<Net>,
    shard: SimShard,
    a: usize,
    b: usize,
}

fn pair(seed: u64, ka: NatKind, kb: NatKind, notes: u32) -> Pair {
    let mut net = Net::new(seed);
    let mut sa = net.site(ka);
    let mut sb = net.site(kb);
    let (ha, hb) = (net.next_host(&mut sa), net.next_host(&mut sb));
    let shard = net.plugin_shard_with(|c| c.zones = 2);
    let clock = net.clock();
    let mut st = SimStepper::new(Rc::new(RefCell::new(net)), FRAME);
    let a = st.client_app("ana", ha, &shard, clock);
    let b = st.client_app("bo", hb, &shard, clock);
    for (i, total) in [(a, notes), (b, 0)] {
        let app = &mut st.apps[i];
        app.init_resource::<Log>().insert_resource(Stream { total, sent: 0 });
        app.add_systems(Update, (record, stream).chain());
    }
    Pair { st, shard, a, b }
}

fn log(st: &SimStepper<Net>, app: usize) -> &Log {
    st.world(app).resource::<Log>()
}

fn state(st: &SimStepper<Net>, app: usize) -> ShardState {
    *st.world(app).resource::<State<ShardState>>().get()
}

fn peer_entities(st: &mut SimStepper<Net>, app: usize) -> Vec<(Peer, PeerPath, PeerStats)> {
    let w = st.world_mut(app);
    let mut q = w.query::<(&Peer, &PeerPath, &PeerStats)>();
    q.iter(w).map(|(p, path, s)| (p.clone(), *path, *s)).collect()
}

fn diag(st: &SimStepper<Net>, app: usize, path: &bevy::diagnostic::DiagnosticPath) -> Option<f64> {
    st.world(app).resource::<DiagnosticsStore>().get(path).and_then(|d| d.value())
}

#[test]
fn port_restricted_and_full_cone_meet_relayed_then_direct_and_exchange_notes_in_order() {
    let Pair { mut st, shard, a, b } = pair(7, NatKind::PortRestricted, NatKind::FullCone, 60);

    // Login → NAT discovery → zone: both in game, each introduced to the other.
    let ok = st.run_until(500, |st| {
        state(st, a) == ShardState::InGame
            && state(st, b) == ShardState::InGame
            && !log(st, a).connected.is_empty()
            && !log(st, b).connected.is_empty()
    });
    assert!(ok, "not in game with a peer after 5 s: {:?} / {:?}", log(&st, a), log(&st, b));
    assert_eq!(
        log(&st, a).states,
        [ShardState::Connecting, ShardState::Lobby, ShardState::InGame],
        "state order (the in-memory transport is up from the first frame)"
    );
    let server = |st: &SimStepper<Net>, p| {
        st.world(a).resource::<DiagnosticsStore>().get(&p).is_some_and(|d| d.values().any(|v| *v > 0.0))
    };
    assert!(
        server(&st, diagnostics::SERVER_BYTES_OUT_PER_S) && server(&st, diagnostics::SERVER_BYTES_IN_PER_S),
        "shard traffic measured"
    );
    let (pa, pb) = (shard.player("ana").unwrap(), shard.player("bo").unwrap());
    assert_eq!(log(&st, a).connected[0].0, pb);
    assert_eq!(log(&st, a).connected[0].1, "bo");
    assert_eq!(log(&st, b).connected[0].0, pa);
    assert_eq!(st.world(a).resource::<LocalPlayer>().player, Some(pa));

    // Relay first, then direct, on both sides; all notes arrive in order.
    let ok = st.run_until(800, |st| {
        [a, b].iter().all(|&x| log(st, x).paths.last() == Some(&Kind::Direct)) && log(st, b).notes.len() == 60
    });
    assert!(ok, "paths {:?} / {:?}, {} notes", log(&st, a).paths, log(&st, b).paths, log(&st, b).notes.len());
    for x in [a, b] {
        let paths = &log(&st, x).paths;
        let relayed = paths.iter().position(|p| *p == Kind::Relayed);
        let direct = paths.iter().position(|p| *p == Kind::Direct);
        assert!(relayed.is_some() && relayed < direct, "relayed before direct: {paths:?}");
    }
    let notes = &log(&st, b).notes;
    let seqs: Vec<u32> = notes.iter().map(|(n, _)| n.seq).collect();
    assert_eq!(seqs, (0..60).collect::<Vec<_>>(), "every note once, in order");
    assert_eq!(notes[59].0.text, "note 59");
    assert!(notes.iter().any(|(_, p2p)| *p2p), "notes went over the mesh");
    assert_eq!(log(&st, b).undecodable, 0);

    // NAT discovery (capped at 3 s for the zone request) goes on and finishes.
    assert!(st.run_until(600, |st| log(st, a).nat.is_some()), "NAT discovery finished");
    assert_eq!(
        log(&st, a).nat.as_ref().map(|n| n.class),
        Some(NatKind::PortRestricted.expected_class()),
        "NatDiscovered reports our NAT"
    );
    assert_eq!(st.world(a).resource::<LocalNat>().0.as_ref(), log(&st, a).nat.as_ref());

    // The peer entity: Peer, PeerPath (direct, remote known), PeerStats (RTT, counters).
    let peers = peer_entities(&mut st, a);
    assert_eq!(peers.len(), 1);
    let (peer, path, stats) = &peers[0];
    assert_eq!((peer.player, peer.name.as_str()), (pb, "bo"));
    assert_eq!(path.path, Kind::Direct);
    assert!(path.remote.is_some() && path.since_intro > Duration::ZERO);
    let rtt = stats.rtt.expect("an RTT on the direct path");
    assert!(rtt > Duration::from_millis(20) && rtt < Duration::from_millis(500), "rtt {rtt:?}");
    assert_eq!(stats.p2p_messages_sent + stats.server_messages_sent, 60);
    // Quality a game can show: when the link went direct, RTT spread, traffic rates.
    let ttd = stats.time_to_direct.expect("went direct");
    assert!(ttd > Duration::ZERO && ttd <= path.since_intro, "{ttd:?} vs {:?}", path.since_intro);
    assert!(
        stats.jitter.is_some() && stats.rtt_p99.is_some_and(|p| p >= Duration::from_millis(20)),
        "{stats:?}"
    );
    // Inspectors see the components whole (core types reflected through remote wrappers).
    {
        use bevy::reflect::{PartialReflect, ReflectRef};
        let registry = st.world(a).resource::<AppTypeRegistry>().read();
        for t in [
            std::any::TypeId::of::<Peer>(),
            std::any::TypeId::of::<PeerPath>(),
            std::any::TypeId::of::<PeerStats>(),
        ] {
            assert!(registry.get(t).is_some(), "registered for reflection");
        }
        let ReflectRef::Struct(fields) = peer.reflect_ref() else { panic!("a struct") };
        let player = fields.field("player").and_then(|f| f.try_downcast_ref::<PlayerId>());
        assert_eq!(player, Some(&pb));
    }
    let b_stats = &peer_entities(&mut st, b)[0].2;
    assert_eq!(b_stats.p2p_messages_received + b_stats.server_messages_received, 60);

    // Diagnostics: a game overlay sees RTT, one direct peer and traffic.
    st.run_frames(5);
    assert!(diag(&st, a, &diagnostics::RTT_MS).is_some_and(|ms| ms > 20.0), "rtt diagnostic");
    assert_eq!(diag(&st, a, &diagnostics::PEERS), Some(1.0));
    assert_eq!(diag(&st, a, &diagnostics::DIRECT_PEERS), Some(1.0));
    assert_eq!(diag(&st, a, &diagnostics::RELAYED_PEERS), Some(0.0));
    let store = st.world(a).resource::<DiagnosticsStore>();
    let ever =
        |p: bevy::diagnostic::DiagnosticPath| store.get(&p).is_some_and(|d| d.values().any(|v| *v > 0.0));
    assert!(ever(diagnostics::BYTES_OUT_PER_S) && ever(diagnostics::BYTES_IN_PER_S), "mesh traffic measured");

    // The Game server was told about the paths (session tracking), by both sides.
    assert_eq!(shard.pair_paths(pa, pb), Some([Some(PathState::Direct); 2]));

    // Bo goes to another zone: the Game server un-introduces the pair — PeerDisconnected,
    // entity gone, sends refused.
    st.world_mut(b).write_message(ShardRequest::EnterZone(1));
    st.run_frames(2);
    assert_eq!(shard.pairs(), 0);
    assert_eq!(log(&st, a).disconnected, [pb]);
    assert_eq!(log(&st, b).disconnected, [pa]);
    assert!(peer_entities(&mut st, a).is_empty() && peer_entities(&mut st, b).is_empty());
    assert!(st.world(a).resource::<PeerIndex>().get(pb).is_none());
    let mut sender = bevy::ecs::system::SystemState::<P2pSender>::new(st.world_mut(a));
    let err = sender.get_mut(st.world_mut(a)).unwrap().send(pb, Channel::Reliable, &1u8).unwrap_err();
    assert_eq!(err, SendError::UnknownPeer(pb));
}

#[test]
fn symmetric_pair_stays_relayed_and_still_delivers() {
    let Pair { mut st, a, b, .. } = pair(11, NatKind::SymmetricRandom, NatKind::SymmetricRandom, 40);
    let ok = st.run_until(1000, |st| log(st, b).notes.len() == 40);
    assert!(ok, "{} notes, paths {:?}", log(&st, b).notes.len(), log(&st, a).paths);
    // A few more seconds: punching between two random-port NATs does not succeed.
    st.run_frames(300);
    for x in [a, b] {
        assert_eq!(log(&st, x).paths.last(), Some(&Kind::Relayed), "{:?}", log(&st, x).paths);
        assert!(!log(&st, x).paths.contains(&Kind::Direct));
    }
    let seqs: Vec<u32> = log(&st, b).notes.iter().map(|(n, _)| n.seq).collect();
    assert_eq!(seqs, (0..40).collect::<Vec<_>>());
    assert_eq!(diag(&st, a, &diagnostics::RELAYED_PEERS), Some(1.0));
    let (_, path, _) = &peer_entities(&mut st, a)[0];
    assert_eq!(path.remote, Some(st.net.borrow().punch_addr()), "relayed through the punch server");
    // On a relayed link the RTT comes from keepalive acks (every 10 s on an idle link).
    let ok = st.run_until(1200, |st| peer_entities(st, a)[0].2.rtt.is_some());
    assert!(ok, "RTT measured through the relay");
    let rtt = peer_entities(&mut st, a)[0].2.rtt.unwrap();
    assert!(rtt >= st.net.borrow().relay_rtt() / 2, "relay RTT {rtt:?}");
}

#[test]
fn garbage_on_the_mesh_socket_is_counted_and_the_game_goes_on() {
    let Pair { mut st, a, b, .. } = pair(3, NatKind::FullCone, NatKind::Open, 10);
    assert!(st.run_until(500, |st| log(st, b).notes.len() == 10));
    // A stranger on the internet sends junk to both players' public addresses.
    let targets: Vec<_> = [a, b]
        .iter()
        .map(|&x| st.world(x).resource::<P2pClient>().nat_report().unwrap().public.unwrap())
        .collect();
    let clock = st.net.borrow().clock();
    let mut stranger = SimMeshIo::attach(&st.net, HostConfig::public([198, 51, 100, 200]), clock);
    for (i, dst) in targets.iter().enumerate() {
        for n in 0..60u8 {
            let payload = match n % 3 {
                0 => vec![n],
                1 => vec![n; 1 + usize::from(n)],
                // A peer-datagram kind byte with a link id nobody has.
                _ => vec![0x01, 0, 0, i as u8, 0xee, 0xff, 0xff, 0xff],
            };
            stranger.send(&Transmit { src: None, dst: *dst, payload });
        }
    }
    st.run_frames(20);
    for x in [a, b] {
        let totals = st.world(x).resource::<P2pClient>().totals().mesh;
        let dropped = totals.malformed + totals.unknown_link + totals.rejected + totals.unexpected;
        assert!(dropped >= 60, "junk dropped and counted: {totals:?}");
        assert_eq!(state(&st, x), ShardState::InGame);
        assert_eq!(peer_entities(&mut st, x).len(), 1, "the peer is still there");
    }
    // Still talking afterwards.
    st.world_mut(a).resource_mut::<Stream>().total = 20;
    assert!(st.run_until(200, |st| log(st, b).notes.len() == 20));
}

#[test]
fn disconnect_request_drops_peers_on_both_sides() {
    let Pair { mut st, a, b, .. } = pair(5, NatKind::Restricted, NatKind::PortRestricted, 0);
    assert!(st.run_until(500, |st| !log(st, a).connected.is_empty() && !log(st, b).connected.is_empty()));
    st.world_mut(a).write_message(ShardRequest::Disconnect);
    st.run_frames(3);
    assert_eq!(state(&st, a), ShardState::Disconnected);
    assert!(matches!(log(&st, a).shard_events.last(), Some(ShardEvent(ShardNotice::Disconnected(_)))));
    assert_eq!(st.world(a).resource::<LocalPlayer>().player, None);
    assert!(peer_entities(&mut st, a).is_empty(), "our peers are gone");
    assert!(peer_entities(&mut st, b).is_empty(), "the shard told the other side");
    assert_eq!(log(&st, b).disconnected.len(), 1);
}

#[test]
fn a_shard_crash_leaves_the_apps_reconnecting_with_their_peers_and_they_resume_when_it_is_back() {
    let Pair { mut st, shard, a, b } = pair(13, NatKind::PortRestricted, NatKind::FullCone, 400);
    let ok = st.run_until(800, |st| [a, b].iter().all(|&x| log(st, x).paths.last() == Some(&Kind::Direct)));
    assert!(ok, "direct first");
    let (pa, pb) = (shard.player("ana").unwrap(), shard.player("bo").unwrap());
    let before = log(&st, b).notes.len();
    shard.crash();
    st.run_frames(300); // 3 s without any shard
    for x in [a, b] {
        assert_eq!(state(&st, x), ShardState::Reconnecting);
        assert!(peer_entities(&mut st, x).len() == 1, "the peer stays");
        assert!(log(&st, x).disconnected.is_empty(), "no PeerDisconnected");
        let reconnecting = log(&st, x)
            .shard_events
            .iter()
            .filter(|e| matches!(e.0, ShardNotice::Reconnecting { .. }))
            .count();
        assert!(reconnecting >= 2, "backing off: {reconnecting} attempts in 3 s");
    }
    let during = log(&st, b).notes.len() - before;
    assert!(during > 200, "{during} notes over the mesh while the shard was down");
    shard.restart();
    let ok = st.run_until(1200, |st| [a, b].iter().all(|&x| state(st, x) == ShardState::InGame));
    assert!(ok, "resumed within 12 s (backoff at most 4 s + 25 %)");
    assert_eq!(st.world(a).resource::<LocalPlayer>().player, Some(pa), "same player id");
    assert_eq!(st.world(b).resource::<LocalPlayer>().player, Some(pb));
    assert_eq!(log(&st, a).connected.len(), 1, "no second introduction");
    assert!(st.run_until(600, |st| log(st, b).notes.len() == 400), "the stream completes");
    let seqs: Vec<u32> = log(&st, b).notes.iter().map(|(n, _)| n.seq).collect();
    assert_eq!(seqs, (0..400).collect::<Vec<_>>(), "every note once, in order, across the outage");
    assert_eq!(shard.with(|s| s.lobby().map(|l| l.resumed)), Some(2));
}

/// Per-tick state of the typed-message test game: newest wins.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Pose {
    tick: u32,
    x: f32,
}

/// An event of the typed-message test game: every one, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Hit {
    n: u32,
}

/// What the typed test game received.
#[derive(Resource, Default)]
struct Typed {
    poses: Vec<u32>,
    hits: Vec<u32>,
    sent: u32,
}

fn typed_send(mut t: ResMut<Typed>, mut tx: PeerSender, peers: Res<PeerIndex>) {
    if peers.0.is_empty() || t.sent >= 200 {
        return;
    }
    let tick = t.sent;
    tx.broadcast(&Pose { tick, x: tick as f32 }).expect("small");
    if tick.is_multiple_of(4) {
        tx.broadcast(&Hit { n: tick / 4 }).expect("small");
    }
    t.sent += 1;
}

fn typed_receive(
    mut t: ResMut<Typed>,
    mut poses: MessageReader<FromPeer<Pose>>,
    mut hits: MessageReader<FromPeer<Hit>>,
) {
    t.poses.extend(poses.read().map(|m| m.message.tick));
    t.hits.extend(hits.read().map(|m| m.message.n));
}

#[test]
fn typed_messages_arrive_on_their_channels_sequenced_ones_never_older_than_the_newest() {
    let Pair { mut st, a, b, .. } = pair(17, NatKind::PortRestricted, NatKind::FullCone, 0);
    for i in [a, b] {
        let app = &mut st.apps[i];
        // Registered after the mesh plugin here; the order of registrations must match.
        app.add_peer_message::<Pose>(P2pChannel::UnreliableSequenced)
            .add_peer_message::<Hit>(P2pChannel::ReliableOrdered)
            .init_resource::<Typed>()
            .add_systems(Update, (typed_receive, typed_send).chain());
    }
    assert_eq!(
        st.world(a).resource::<PeerMessageRegistry>().names(),
        [std::any::type_name::<Pose>(), std::any::type_name::<Hit>()]
    );
    st.run_until(3000, |st| st.world(a).resource::<Typed>().sent >= 200);
    // Streaming for two seconds: both ends measured the traffic rate (bytes/s, last second).
    let (sa, sb) = (peer_entities(&mut st, a)[0].2, peer_entities(&mut st, b)[0].2);
    assert!(sa.send_rate > 500.0 && sb.receive_rate > 500.0, "{sa:?} {sb:?}");
    st.run_frames(200);
    let got = st.world(b).resource::<Typed>();
    assert_eq!(got.hits, (0..50).collect::<Vec<_>>(), "every event once, in order");
    assert!(got.poses.len() > 150, "most poses: {}", got.poses.len());
    assert!(got.poses.windows(2).all(|w| w[0] < w[1]), "never an older pose after a newer one");
    assert_eq!(got.poses.last(), Some(&199));
    let stats = *st.world(b).resource::<TypedStats>();
    assert_eq!((stats.unknown_kind, stats.undecodable), (0, 0));
}

/// A pair like [`pair`] where Ana's mesh socket may be conditioned; returns the stepper
/// and both apps (Ana streams `notes` reliable notes).
fn conditioned_pair(conditioner: Option<ConditionerConfig>, notes: u32) -> (SimStepper<Net>, usize, usize) {
    let mut net = Net::new(21);
    let mut sa = net.site(NatKind::FullCone);
    let mut sb = net.site(NatKind::PortRestricted);
    let (ha, hb) = (net.next_host(&mut sa), net.next_host(&mut sb));
    let shard = net.plugin_shard_with(|_| {});
    let clock = net.clock();
    let mut st = SimStepper::new(Rc::new(RefCell::new(net)), FRAME);
    let mut mesh = P2pMeshPlugin::new("ana");
    mesh.client.seed = 1;
    mesh.conditioner = conditioner;
    let a = st.client_app_with(mesh, ha, &shard, clock, Some(0));
    let b = st.client_app("bo", hb, &shard, clock);
    for (i, total) in [(a, notes), (b, 0)] {
        let app = &mut st.apps[i];
        app.init_resource::<Log>().insert_resource(Stream { total, sent: 0 });
        app.add_systems(Update, (record, stream).chain());
    }
    (st, a, b)
}

#[test]
fn a_conditioned_socket_in_the_simulator_adds_its_delay_and_loss_costs_no_reliable_message() {
    // The same world twice: as is, then with 30 ms ± 5 ms each way, 10 % loss and 5 %
    // duplication on Ana's socket (driven in the frames: the simulator is not a real socket).
    let settle = |st: &mut SimStepper<Net>, a: usize, b: usize| {
        let ok = st.run_until(2000, |st| {
            log(st, b).notes.len() == 100
                && [a, b].iter().all(|&x| log(st, x).paths.last() == Some(&Kind::Direct))
        });
        assert!(
            ok,
            "{} notes, paths {:?} / {:?}",
            log(st, b).notes.len(),
            log(st, a).paths,
            log(st, b).paths
        );
        // Keepalives (every 10 s on the idle link) refresh the RTT.
        st.run_frames(2500);
        [a, b].map(|x| peer_entities(st, x)[0].2.rtt.expect("an RTT"))
    };
    let (mut plain, a, b) = conditioned_pair(None, 100);
    let base = settle(&mut plain, a, b);
    let cond = ConditionerConfig {
        delay: Duration::from_millis(30),
        jitter: Duration::from_millis(5),
        loss: 0.1,
        duplicate: 0.05,
        seed: 4,
    };
    let (mut st, a, b) = conditioned_pair(Some(cond), 100);
    let slow = settle(&mut st, a, b);
    for (side, (s, p)) in slow.iter().zip(&base).enumerate() {
        let added = s.saturating_sub(*p);
        // 2 × 30 ms, ± the jitter and a 10 ms frame each way.
        assert!(
            added >= Duration::from_millis(40) && added <= Duration::from_millis(90),
            "side {side}: {p:?} → {s:?}"
        );
    }
    let seqs: Vec<u32> = log(&st, b).notes.iter().map(|(n, _)| n.seq).collect();
    assert_eq!(seqs, (0..100).collect::<Vec<_>>(), "every note once, in order, despite loss and duplicates");
    let io = st.world(a).resource::<P2pClient>().io_stats();
    let (out, inb) = (io.conditioned_out.unwrap(), io.conditioned_in.unwrap());
    assert!(!io.io_thread, "the simulator is driven in the frames");
    assert!(out.dropped > 0 && inb.dropped > 0 && out.duplicated > 0, "{io:?}");
}
