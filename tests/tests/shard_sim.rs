//! The seed scenarios with the real shard in the simulator: full clients (`ClientCore`, what
//! the plugin and the bots run) log in to the production Agent/Lobby/Game logic, discover
//! their NAT, enter a zone and are introduced by the Game server — nobody introduces them by
//! hand. Then a Game-server crash and a Lobby restart, at exact instants of virtual time.
//!
//! `tests/scenarios.rs` holds the mesh-level versions with timing checks (first message,
//! time to direct), where a test picks the instant two clients meet.

use std::time::Duration;

use p2pmodel_core::client::{ClientEvent, PeerPath, ShardNotice};
use p2pmodel_core::proto::shard::PathState;
use p2pmodel_sim::HostId;
use p2pmodel_tests::NatKind;
use p2pmodel_tests::shard_world::{Player, ShardWorld};

const SEC: Duration = Duration::from_secs(1);

/// Two players on sites of kinds `ka` and `kb`, introduced by the shard, streaming both ways
/// for `secs` seconds.
fn pair(seed: u64, ka: NatKind, kb: NatKind, secs: u64) -> (ShardWorld, HostId, HostId) {
    let mut w = ShardWorld::new(seed, |_| {});
    let (mut sa, mut sb) = (w.world.site(ka), w.world.site(kb));
    let a = w.player(&mut sa, "ana", 0);
    let b = w.player(&mut sb, "bo", 0);
    assert!(w.until_introduced(a, b, 10 * SEC), "the Game server introduced them");
    w.stream(&[a, b]);
    w.run(Duration::from_secs(secs));
    (w, a, b)
}

/// Both directions complete: every message once, none missing, most over the mesh.
fn check_streams(w: &ShardWorld, a: HostId, b: HostId) {
    for (from, to) in [(a, b), (b, a)] {
        let (got, gaps, dups) = w.p(to).stream_from(w.id(from));
        let sent = w.p(from).sent[&w.id(to)];
        assert!(got > 150, "{got} of {sent} messages");
        assert_eq!((gaps, dups), (0, 0), "{got} received of {sent}");
        assert!(sent - got <= 8, "at most a relay RTT in flight: {got} of {sent}");
    }
}

fn check_path(w: &ShardWorld, a: HostId, b: HostId, want: PeerPath) {
    let (ia, ib) = (w.id(a), w.id(b));
    assert_eq!((w.p(a).path(ib), w.p(b).path(ia)), (Some(want), Some(want)));
    // Session tracking: the Game server heard both sides report it.
    let state = if want == PeerPath::Direct { PathState::Direct } else { PathState::Relayed };
    assert_eq!(w.shard.pair_paths(ia, ib), Some([Some(state); 2]));
}

#[test]
fn seed_pairs_through_the_real_shard_end_on_the_expected_path_with_complete_streams() {
    let cases = [
        ("TC-01", NatKind::FullCone, NatKind::FullCone, PeerPath::Direct),
        ("TC-02", NatKind::Restricted, NatKind::PortRestricted, PeerPath::Direct),
        ("TC-03", NatKind::SymmetricRandom, NatKind::SymmetricRandom, PeerPath::Relayed),
        ("TC-04", NatKind::FullCone, NatKind::UdpFirewall, PeerPath::Relayed),
        ("TC-07", NatKind::SymmetricRandom, NatKind::FullCone, PeerPath::Direct),
        ("open", NatKind::Open, NatKind::PortRestricted, PeerPath::Direct),
        ("seq", NatKind::SymmetricSequential, NatKind::PortRestricted, PeerPath::Direct),
    ];
    for (i, (name, ka, kb, want)) in cases.into_iter().enumerate() {
        let (w, a, b) = pair(200 + i as u64, ka, kb, 12);
        println!("{name}: {ka:?} <-> {kb:?}");
        check_path(&w, a, b, want);
        check_streams(&w, a, b);
        assert_eq!(w.shard.with(|s| s.agent().decode_errors + s.agent().rate_limited), 0);
    }
}

#[test]
fn tc06_an_address_change_mid_stream_loses_nothing_and_the_pair_goes_direct_again() {
    let mut w = ShardWorld::new(206, |_| {});
    let (mut sa, mut sb) = (w.world.site(NatKind::PortRestricted), w.world.site(NatKind::FullCone));
    let a = w.player(&mut sa, "ana", 0);
    let b = w.player(&mut sb, "bo", 0);
    assert!(w.until_introduced(a, b, 10 * SEC));
    w.stream(&[a, b]);
    w.run(5 * SEC);
    assert_eq!(w.p(a).path(w.id(b)), Some(PeerPath::Direct));
    let t = w.world.sim.now();
    w.world.sim.set_nat_public_ip(sa.nat.unwrap(), std::net::Ipv4Addr::new(198, 18, 100, 200)).unwrap();
    w.run(10 * SEC);
    assert!(
        w.p(b).path_changes(w.id(a), PeerPath::Direct).iter().any(|x| *x > t),
        "direct again after the change"
    );
    check_path(&w, a, b, PeerPath::Direct);
    check_streams(&w, a, b);
}

#[test]
fn a_game_server_crash_hands_the_pair_over_to_the_zone_s_other_server_without_a_dropped_link() {
    let (mut w, a, b) = pair(207, NatKind::PortRestricted, NatKind::FullCone, 4);
    let (ia, ib) = (w.id(a), w.id(b));
    let first = w.shard.game_of(ia).expect("placed");
    assert_eq!(w.shard.game_of(ib), Some(first), "a zone's first server fills first");
    let link = w.p(a).core.peer(ib).unwrap().link;
    let t = w.world.sim.now();
    w.shard.kill_game(first);
    // The Lobby hears nothing for its heartbeat timeout (1 s), then moves both.
    w.run(3 * SEC);
    let second = w.shard.game_of(ia).expect("placed again");
    assert_ne!(second, first);
    assert_eq!(w.shard.game_of(ib), Some(second));
    for (me, peer) in [(a, ib), (b, ia)] {
        let p = w.p(me);
        let after =
            |f: &dyn Fn(&ClientEvent) -> bool| p.events.iter().filter(|(at, e)| *at > t && f(e)).count();
        let handover = p
            .events
            .iter()
            .find(|(at, e)| *at > t && matches!(e, ClientEvent::Shard(ShardNotice::EnteredZone { .. })));
        let handover = handover.expect("told of the new server").0;
        assert!(handover - t < 2 * SEC, "moved {:?} after the crash", handover - t);
        // The players do not notice: the link both still have is kept, not introduced again.
        assert_eq!(
            after(&|e| matches!(e, ClientEvent::PeerAdded { .. } | ClientEvent::PeerRemoved { .. })),
            0
        );
        assert_eq!(p.core.peer(peer).map(|x| x.link), Some(link), "the same link");
    }
    assert_eq!(w.shard.with(|s| s.games().iter().map(|g| g.stats.links_kept).sum::<u64>()), 1);
    w.run(6 * SEC);
    check_path(&w, a, b, PeerPath::Direct);
    // The stream never stopped: every message once, none missing, across the handover.
    check_streams(&w, a, b);
    let gap = w.p(b).received[&ia].windows(2).map(|g| g[1].at - g[0].at).max().unwrap();
    assert!(gap < Duration::from_millis(200), "longest silence {gap:?}");
}

#[test]
fn a_lobby_restart_keeps_players_playing_and_places_newcomers_with_stable_ids() {
    let (mut w, a, b) = pair(208, NatKind::Restricted, NatKind::PortRestricted, 3);
    let (ia, ib) = (w.id(a), w.id(b));
    let game = w.shard.game_of(ia).unwrap();
    w.shard.stop_lobby();
    w.run(2 * SEC);
    // The Game servers and the Agent go on without it: the pair keeps streaming.
    w.shard.restart_lobby();
    w.run(SEC);
    assert_eq!((w.shard.game_of(ia), w.shard.game_of(ib)), (Some(game), Some(game)), "resynced placements");
    let mut sc = w.world.site(NatKind::FullCone);
    let c = w.player(&mut sc, "cy", 0);
    assert!(w.until_introduced(a, c, 10 * SEC) && w.until_introduced(b, c, 10 * SEC));
    let ic = w.id(c);
    assert!(![ia, ib].contains(&ic), "a new id, not one of the players already in game ({ic:?})");
    w.stream(&[c]);
    w.run(8 * SEC);
    check_streams(&w, a, b);
    let (got, gaps, dups) = w.p(a).stream_from(ic);
    assert!(got > 100 && gaps == 0 && dups == 0, "{got} {gaps} {dups}");
    assert_eq!(w.p(c).path(ia), Some(PeerPath::Direct));
}

#[test]
fn tc05_with_keepalive_an_idle_pair_outlives_the_nat_binding_timeout() {
    let mut w = ShardWorld::new(205, |_| {});
    let timeout = |c: p2pmodel_sim::NatConfig| c.binding_timeout(Duration::from_secs(20));
    let mut sa = w.world.site_with(NatKind::PortRestricted, timeout);
    let mut sb = w.world.site_with(NatKind::PortRestricted, timeout);
    let a = w.player(&mut sa, "ana", 0);
    let b = w.player(&mut sb, "bo", 0);
    assert!(w.until_introduced(a, b, 10 * SEC));
    w.stream(&[a, b]);
    w.run(3 * SEC);
    for h in [a, b] {
        w.p_mut(h).stream_every = None;
    }
    w.run(90 * SEC); // 4.5 × the NAT's binding timeout, both idle
    let t = w.world.sim.now();
    w.stream(&[a, b]);
    w.run(5 * SEC);
    assert!(w.p(a).path_changes(w.id(b), PeerPath::Lost).is_empty(), "never lost");
    check_path(&w, a, b, PeerPath::Direct);
    let (ia, ib) = (w.id(a), w.id(b));
    let resumed = w.p(b).received[&ia].iter().filter(|g| g.at > t).count();
    assert!(resumed > 80 && w.p(b).received[&ia].iter().filter(|g| g.at > t).all(|g| g.p2p), "{resumed}");
    let (_, gaps, dups) = w.p(a).stream_from(ib);
    assert_eq!((gaps, dups), (0, 0));
}

#[test]
fn a_blocked_direct_path_fails_over_to_the_relay_and_the_game_server_hears_it() {
    let mut w = ShardWorld::new(209, |_| {});
    let (mut sa, mut sb) = (w.world.site(NatKind::PortRestricted), w.world.site(NatKind::FullCone));
    let a = w.player(&mut sa, "ana", 0);
    let b = w.player(&mut sb, "bo", 0);
    assert!(w.until_introduced(a, b, 10 * SEC));
    w.stream(&[a, b]);
    w.run(5 * SEC);
    check_path(&w, a, b, PeerPath::Direct);
    let ip = |s: &p2pmodel_tests::Site| w.world.sim.nat_public_ip(s.nat.unwrap());
    let (ipa, ipb) = (ip(&sa), ip(&sb));
    w.world.sim.block(p2pmodel_sim::PathEnd::Ip(ipa), p2pmodel_sim::PathEnd::Ip(ipb));
    let t = w.world.sim.now();
    w.run(10 * SEC);
    for (me, peer) in [(a, w.id(b)), (b, w.id(a))] {
        let relayed = w.p(me).path_changes(peer, PeerPath::Relayed).into_iter().find(|x| *x > t);
        let after = relayed.expect("on the relay") - t;
        assert!(after <= SEC, "on the relay {after:?} after the block");
    }
    check_path(&w, a, b, PeerPath::Relayed);
    check_streams(&w, a, b);
}

#[test]
fn a_whole_shard_outage_keeps_the_pair_playing_and_the_sessions_resume_with_their_ids_and_links() {
    // Among them a direct pair and a relayed pair (the relay is its own process and stays up).
    let mut w = ShardWorld::new(210, |_| {});
    let (mut sa, mut sb) = (w.world.site(NatKind::PortRestricted), w.world.site(NatKind::FullCone));
    let (mut sc, mut sd) = (w.world.site(NatKind::SymmetricRandom), w.world.site(NatKind::SymmetricRandom));
    let a = w.player(&mut sa, "ana", 0);
    let b = w.player(&mut sb, "bo", 0);
    let c = w.player(&mut sc, "cy", 0);
    let d = w.player(&mut sd, "di", 0);
    let all = [a, b, c, d];
    assert!(w.until_introduced(a, b, 10 * SEC) && w.until_introduced(c, d, 10 * SEC));
    w.stream(&all);
    w.run(5 * SEC);
    let ids: Vec<_> = all.iter().map(|h| w.id(*h)).collect();
    let links: Vec<_> =
        all.iter().map(|h| w.p(*h).core.peers().map(|p| (p.player, p.link)).collect::<Vec<_>>()).collect();
    let t = w.world.sim.now();
    w.shard.crash();
    w.run(30 * SEC);
    for h in all {
        let p = w.p(h);
        assert_eq!(p.core.phase(), p2pmodel_core::client::Phase::Reconnecting);
        // 30 s without any shard: the streams went on over the links.
        for peer in p.core.peers() {
            let fresh = p.received[&peer.player].iter().filter(|g| g.at > t + 29 * SEC).count();
            assert!(fresh > 10, "still receiving from {:?} after 29 s without a shard", peer.player);
        }
    }
    w.shard.restart();
    let back = w.world.sim.now();
    w.run(15 * SEC);
    for (i, h) in all.iter().enumerate() {
        let p = w.p(*h);
        assert_eq!(p.core.phase(), p2pmodel_core::client::Phase::InGame, "resumed");
        assert_eq!(p.core.player(), Some(ids[i]), "same player id");
        let now_links: Vec<_> = p.core.peers().map(|x| (x.player, x.link)).collect();
        assert_eq!(now_links, links[i], "the same peers over the same links");
        let noticed = p.events.iter().filter(|(at, e)| {
            *at > t && matches!(e, ClientEvent::PeerAdded { .. } | ClientEvent::PeerRemoved { .. })
        });
        assert_eq!(noticed.count(), 0, "no re-introduction, no drop");
        let welcomed = p
            .events
            .iter()
            .find(|(at, e)| *at > back && matches!(e, ClientEvent::Shard(ShardNotice::EnteredZone { .. })));
        assert!(welcomed.expect("back in the zone").0 - back < 3 * SEC);
    }
    assert_eq!(w.shard.with(|s| s.lobby().map(|l| (l.resumed, l.resumes_refused))), Some((4, 0)));
    // All four stand at the spawn point: the six pairs were meshed, and all six are kept.
    assert_eq!(w.shard.with(|s| s.games().iter().map(|g| g.stats.links_kept).sum::<u64>()), 6);
    check_streams(&w, a, b);
    check_streams(&w, c, d);
    check_path(&w, a, b, PeerPath::Direct);
    check_path(&w, c, d, PeerPath::Relayed);
}

#[test]
fn a_shard_that_dies_with_reliable_messages_inside_loses_none_of_them_the_links_bring_them() {
    // No relay: the link needs a few round trips of punching before it has a path, so the
    // first messages go through the Game server — and the whole shard crashes while they
    // are on their way.
    let mut w = ShardWorld::new(212, |c| c.relays.clear());
    let (mut sa, mut sb) = (w.world.site(NatKind::PortRestricted), w.world.site(NatKind::FullCone));
    let a = w.player(&mut sa, "ana", 0);
    let b = w.player(&mut sb, "bo", 0);
    assert!(w.until_introduced(a, b, 10 * SEC));
    w.stream(&[a, b]);
    // Crash the moment both have sent their first message.
    let deadline = w.world.sim.now() + SEC;
    w.world.sim.run_until(deadline, |sim| [a, b].iter().all(|h| !sim.node::<Player>(*h).sent.is_empty()));
    w.shard.crash();
    w.run(10 * SEC);
    w.shard.restart();
    w.run(10 * SEC);
    let (ia, ib) = (w.id(a), w.id(b));
    let mut not_by_server = 0;
    for (from, to, id_from, id_to) in [(a, b, ia, ib), (b, a, ib, ia)] {
        let sent = w.p(from).core.peer(id_to).unwrap().sent.server_messages;
        let by_server = w.p(to).core.peer(id_from).unwrap().received.server_messages;
        assert!(sent > 0, "the stream started on the server route");
        not_by_server += sent - by_server;
    }
    // (Without the link's copies this very run loses a message: a gap below.)
    assert!(not_by_server > 0, "the crash took server copies with it");
    // Every message once, in order of sending, though some copies died with the shard.
    check_streams(&w, a, b);
    for (from, to) in [(a, b), (b, a)] {
        let seqs: Vec<u32> = w.p(to).received[&w.id(from)].iter().map(|g| g.seq).collect();
        assert!(seqs.windows(2).all(|x| x[1] == x[0] + 1), "in order: {:?}", &seqs[..seqs.len().min(12)]);
        let totals = w.p(to).core.totals();
        assert_eq!(totals.reliable_gaps, 0);
    }
    check_path(&w, a, b, PeerPath::Direct);
}

#[test]
fn a_relay_restart_is_survived_by_the_relayed_pair_which_binds_again() {
    let mut w = ShardWorld::new(211, |_| {});
    let (mut sa, mut sb) = (w.world.site(NatKind::SymmetricRandom), w.world.site(NatKind::SymmetricRandom));
    let a = w.player(&mut sa, "ana", 0);
    let b = w.player(&mut sb, "bo", 0);
    assert!(w.until_introduced(a, b, 10 * SEC));
    w.stream(&[a, b]);
    w.run(5 * SEC);
    check_path(&w, a, b, PeerPath::Relayed);
    // The relay process restarts: same address and keys, no bindings.
    let server = w.world.server;
    let fresh = w.world.restarted_punch_server();
    *w.world.sim.node_mut::<p2pmodel_tests::PunchServer>(server) = fresh;
    let t = w.world.sim.now();
    w.run(30 * SEC);
    check_path(&w, a, b, PeerPath::Relayed);
    check_streams(&w, a, b);
    // Delivering again: the longest silence across the restart.
    let ia = w.id(a);
    let arrivals: Vec<_> = w.p(b).received[&ia].iter().filter(|g| g.at > t - SEC).map(|g| g.at).collect();
    let gap = arrivals.windows(2).map(|p| p[1] - p[0]).max().unwrap();
    println!("longest silence across the relay restart: {gap:?}");
    assert!(
        gap < SEC,
        "back within a second (it was 10 s before the relayed path re-bound on silence): {gap:?}"
    );
}

#[test]
fn a_lobby_restart_keeps_the_parties_of_players_who_stay_connected() {
    let (mut w, a, b) = pair(212, NatKind::Restricted, NatKind::PortRestricted, 2);
    let (ia, ib) = (w.id(a), w.id(b));
    // Ana creates a party and invites Bo, who accepts.
    w.p_mut(a).core.join_party("wolves");
    w.run(SEC);
    w.p_mut(a).core.invite_to_party(ib);
    w.run(SEC);
    w.p_mut(b).core.join_party("wolves");
    w.run(SEC);
    let party_of = |w: &ShardWorld, p| {
        w.shard.with(|s| s.lobby().and_then(|l| l.parties.party_of(p).map(str::to_string)))
    };
    assert_eq!((party_of(&w, ia), party_of(&w, ib)), (Some("wolves".into()), Some("wolves".into())));
    w.shard.stop_lobby();
    w.run(2 * SEC);
    w.shard.restart_lobby();
    w.run(3 * SEC);
    // The Game servers told the new Lobby; nobody had to rejoin.
    assert_eq!((party_of(&w, ia), party_of(&w, ib)), (Some("wolves".into()), Some("wolves".into())));
    check_streams(&w, a, b);
}

#[test]
fn an_agent_restart_alone_is_resumed_on_the_same_game_server_with_the_same_links() {
    let (mut w, a, b) = pair(213, NatKind::Restricted, NatKind::PortRestricted, 3);
    let (ia, ib) = (w.id(a), w.id(b));
    let game = w.shard.game_of(ia);
    let t = w.world.sim.now();
    // Only the Agent goes: every connection drops, the Lobby and the Game keep the sessions.
    for h in [a, b] {
        let client = w.p(h).client();
        w.shard.disconnect_silently(client);
    }
    w.run(10 * SEC);
    for (h, peer) in [(a, ib), (b, ia)] {
        let p = w.p(h);
        assert_eq!(
            p.core.phase(),
            p2pmodel_core::client::Phase::InGame,
            "resumed into the game, not the lobby"
        );
        let noticed = p.events.iter().filter(|(at, e)| {
            *at > t && matches!(e, ClientEvent::PeerAdded { .. } | ClientEvent::PeerRemoved { .. })
        });
        assert_eq!(noticed.count(), 0, "the same link to {peer:?}");
    }
    assert_eq!(w.shard.game_of(ia), game, "the same Game server");
    check_streams(&w, a, b);
}

#[test]
fn a_connection_lost_at_a_live_agent_is_resumed_with_the_same_links_and_nothing_lost() {
    let (mut w, a, b) = pair(214, NatKind::PortRestricted, NatKind::FullCone, 4);
    let (ia, ib) = (w.id(a), w.id(b));
    let game = w.shard.game_of(ia);
    let t = w.world.sim.now();
    // The Agent times Ana's connection out (a blip, a changed address) and says so at once;
    // she never said goodbye, so the shard holds her place and her pairs.
    let client = w.p(a).client();
    w.shard.disconnect(client);
    w.run(10 * SEC);
    assert_eq!(w.p(a).core.phase(), p2pmodel_core::client::Phase::InGame, "resumed into the game");
    for (h, peer) in [(a, ib), (b, ia)] {
        let changes = w.p(h).events.iter().filter(|(at, e)| {
            *at > t && matches!(e, ClientEvent::PeerAdded { .. } | ClientEvent::PeerRemoved { .. })
        });
        assert_eq!(changes.count(), 0, "the same link to {peer:?}, never dropped");
    }
    assert_eq!(w.shard.game_of(ia), game, "back on the Game server that kept her pairs");
    check_path(&w, a, b, PeerPath::Direct);
    check_streams(&w, a, b);
}

#[test]
fn a_player_who_leaves_is_dropped_at_once_and_one_who_never_comes_back_after_the_grace_period() {
    let mut w = ShardWorld::new(215, |_| {});
    let sites: Vec<_> = (0..3).map(|_| w.world.site(NatKind::FullCone)).collect();
    let hosts: Vec<_> =
        sites.into_iter().zip(["ana", "bo", "cy"]).map(|(mut s, name)| w.player(&mut s, name, 0)).collect();
    let (a, b, c) = (hosts[0], hosts[1], hosts[2]);
    assert!(w.until_introduced(a, b, 10 * SEC) && w.until_introduced(b, c, 10 * SEC));
    w.stream(&[a, b, c]);
    w.run(3 * SEC);
    let (ia, ic) = (w.id(a), w.id(c));
    let removed_at = |w: &ShardWorld, from, who| {
        w.p(from).events.iter().find_map(|(at, e)| match e {
            ClientEvent::PeerRemoved { player, .. } if *player == who => Some(*at),
            _ => None,
        })
    };
    // Ana quits on purpose: Bo hears of it within a tick, not after a grace period.
    let t = w.world.sim.now();
    w.p_mut(a).leave();
    w.run(SEC);
    let gone = removed_at(&w, b, ia).expect("Bo dropped Ana");
    assert!(gone - t < 200 * Duration::from_millis(1), "{:?}", gone - t);
    // Cy's connection is lost and she never comes back: her link with Bo keeps running for
    // the grace period (she might resume), then the Game server drops the pair.
    let t = w.world.sim.now();
    w.p_mut(c).offline = true;
    let client = w.p(c).client();
    w.shard.disconnect(client);
    w.run(25 * SEC);
    assert_eq!(removed_at(&w, b, ic), None, "held for a resume");
    w.run(7 * SEC);
    let gone = removed_at(&w, b, ic).expect("dropped after the grace period");
    let held = gone - t;
    assert!(held >= 29 * SEC && held <= 31 * SEC, "{held:?}");
}

#[test]
fn in_privacy_mode_a_peer_never_learns_our_address_and_the_link_runs_on_the_relay() {
    let mut w = ShardWorld::new(216, |_| {});
    // Two full-cone sites: without privacy mode they would go direct (TC-01).
    let (mut sa, mut sb) = (w.world.site(NatKind::FullCone), w.world.site(NatKind::FullCone));
    w.world.mesh_config.link.relay_only = true;
    let a = w.player(&mut sa, "ana", 0);
    w.world.mesh_config.link.relay_only = false;
    let b = w.player(&mut sb, "bo", 0);
    assert!(w.until_introduced(a, b, 10 * SEC));
    w.stream(&[a, b]);
    w.run(12 * SEC);
    let (ia, ib) = (w.id(a), w.id(b));
    assert_eq!((w.p(a).path(ib), w.p(b).path(ia)), (Some(PeerPath::Relayed), Some(PeerPath::Relayed)));
    check_streams(&w, a, b);
    // Bo heard only the shard's servers (STUN, relay), never Ana's NAT.
    let ana_ip = w.p(a).public_ip.expect("a site address");
    assert!(!w.p(b).heard_from.contains(&ana_ip), "Bo heard from {:?}", w.p(b).heard_from);
    // Ana's side of the link: nothing went directly, whatever Bo's probes reached her
    // dropped unanswered.
    let link = w.p(a).core.mesh().links().next().expect("one link");
    assert_eq!(link.stats().direct_sent, 0);
    println!("direct datagrams Ana dropped unanswered: {}", link.stats().direct_refused);
}

// ----- several relays per shard (issue #15) ------------------------------------------------

/// Relay ids 0..3 on these IPs (STUN also on the next IP).
const RELAY_IPS: [std::net::Ipv4Addr; 3] = [
    std::net::Ipv4Addr::new(203, 0, 113, 20),
    std::net::Ipv4Addr::new(203, 0, 113, 30),
    std::net::Ipv4Addr::new(203, 0, 113, 40),
];

/// A shard whose relays are three relays behind delay lines: `extra[r][s]` ms one way
/// (each direction) between relay `r` and site `s`, on top of the simulator's latency.
/// Returns the world, the relays' hosts and the players' hosts (one per site, all
/// symmetric-random: every pair is relayed).
fn three_relays(seed: u64, extra: [[u64; 4]; 3], sites: usize) -> (ShardWorld, Vec<HostId>, Vec<HostId>) {
    let mut world = p2pmodel_tests::World::new(seed);
    let mut site_list: Vec<_> = (0..sites).map(|_| world.site(NatKind::SymmetricRandom)).collect();
    let ips: Vec<std::net::IpAddr> =
        site_list.iter().map(|s| world.sim.nat_public_ip(s.nat.unwrap())).collect();
    let mut relays = Vec::new();
    let mut hosts = Vec::new();
    for (r, ip) in RELAY_IPS.iter().enumerate() {
        let delays: Vec<_> =
            ips.iter().enumerate().map(|(s, a)| (*a, Duration::from_millis(extra[r][s]))).collect();
        let (host, relay) = ShardWorld::add_relay(&mut world, *ip, r as u8, &delays);
        hosts.push(host);
        relays.push(relay);
    }
    let mut w = ShardWorld::from_world(world, |cfg| cfg.relays = relays);
    let names = ["ana", "bo", "cy", "di"];
    let players = site_list.iter_mut().zip(names).map(|(s, n)| w.player(s, n, 0)).collect();
    (w, hosts, players)
}

/// The relay a pair's relayed path goes through, as both clients see it.
fn relayed_via(
    w: &ShardWorld,
    a: HostId,
    b: HostId,
) -> (Option<std::net::SocketAddr>, Option<std::net::SocketAddr>) {
    let (ia, ib) = (w.id(a), w.id(b));
    let via = |me: HostId, peer| {
        let p = w.p(me).core.peer(peer)?;
        (p.path == PeerPath::Relayed).then_some(p.remote?)
    };
    (via(a, ib), via(b, ia))
}

#[test]
fn with_three_relays_each_pair_lands_on_the_relay_with_the_lowest_rtt_sum_not_each_player_s_nearest() {
    // Extra one-way delay (ms) between relay r (rows) and site s (ana, bo, cy, di).
    let extra = [[40, 15, 40, 40], [0, 90, 0, 0], [20, 20, 60, 60]];
    let (mut w, _, players) = three_relays(220, extra, 4);
    for (i, a) in players.iter().enumerate() {
        for b in &players[i + 1..] {
            assert!(w.until_introduced(*a, *b, 10 * SEC));
        }
    }
    w.stream(&players);
    w.run(5 * SEC);
    let relay_addr = |r: usize| std::net::SocketAddr::new(RELAY_IPS[r].into(), 3478);
    let sum = |r: usize, s: usize, t: usize| extra[r][s] + extra[r][t];
    let nearest = |s: usize| (0..3).min_by_key(|r| extra[*r][s]).unwrap();
    let mut not_nearest = 0;
    for s in 0..4 {
        for t in s + 1..4 {
            let best = (0..3).min_by_key(|r| sum(*r, s, t)).unwrap();
            let (a, b) = (players[s], players[t]);
            let (chosen, standby) = w.shard.pair_relays(w.id(a), w.id(b)).expect("introduced");
            println!(
                "pair {s}-{t}: relay {chosen:?} (standby {standby:?}), best sum {best}, nearest {} / {}",
                nearest(s),
                nearest(t)
            );
            assert_eq!(chosen, Some(best as u8), "pair {s}-{t}: the lowest sum");
            assert_eq!(
                relayed_via(&w, a, b),
                (Some(relay_addr(best)), Some(relay_addr(best))),
                "pair {s}-{t}"
            );
            if best != nearest(s) && best != nearest(t) {
                not_nearest += 1;
            }
            let (got, gaps, dups) = w.p(b).stream_from(w.id(a));
            assert!(got > 50 && gaps == 0 && dups == 0, "pair {s}-{t}: {got} {gaps} {dups}");
        }
    }
    assert!(not_nearest >= 1, "at least one pair's best relay is neither player's nearest");
    // Introduced on their best relay at once: nobody had to move.
    assert_eq!(w.shard.with(|s| s.games().iter().map(|g| g.stats.relay_moves).sum::<u64>()), 0);
}

#[test]
fn a_relay_that_dies_mid_stream_is_replaced_for_its_pairs_within_a_second_without_a_gap() {
    // Relay 0 is the best for the pair, relay 1 the standby, relay 2 the worst.
    let extra = [[0, 0, 0, 0], [20, 20, 0, 0], [60, 60, 0, 0]];
    let (mut w, relays, players) = three_relays(221, extra, 2);
    let (a, b) = (players[0], players[1]);
    assert!(w.until_introduced(a, b, 10 * SEC));
    w.stream(&[a, b]);
    w.run(5 * SEC);
    let (ia, ib) = (w.id(a), w.id(b));
    assert_eq!(w.shard.pair_relays(ia, ib), Some((Some(0), Some(1))));
    let at = |r: usize| Some(std::net::SocketAddr::new(RELAY_IPS[r].into(), 3478));
    assert_eq!(relayed_via(&w, a, b), (at(0), at(0)));
    // Relay 0 dies.
    w.world.sim.node_mut::<p2pmodel_sim::hosts::DelayLine<p2pmodel_tests::PunchServer>>(relays[0]).down =
        true;
    let t = w.world.sim.now();
    w.run(10 * SEC);
    // Both sides went on through the standby at once, then the Game server, told by the
    // clients' RTT reports that relay 0 is unreachable, made relay 1 the pair's relay.
    assert_eq!(relayed_via(&w, a, b), (at(1), at(1)));
    assert_eq!(w.shard.pair_relays(ia, ib), Some((Some(1), Some(2))));
    assert!(w.shard.with(|s| s.games().iter().map(|g| g.stats.relay_moves).sum::<u64>()) >= 1);
    check_streams(&w, a, b);
    for (from, to) in [(a, b), (b, a)] {
        let arrivals: Vec<_> =
            w.p(to).received[&w.id(from)].iter().filter(|g| g.at > t - SEC).map(|g| g.at).collect();
        let gap = arrivals.windows(2).map(|p| p[1] - p[0]).max().unwrap();
        println!("longest silence across the relay's death: {gap:?}");
        assert!(gap < SEC, "replaced within a second: {gap:?}");
    }
    for h in [a, b] {
        let link = w.p(h).core.mesh().links().next().expect("one link");
        assert!(link.stats().relay_switches >= 1, "{:?}", link.stats());
    }
}

#[test]
fn a_relayed_pair_moves_to_a_relay_that_became_better_by_the_margin_and_not_for_less() {
    // Relay 0 best at first; relay 1 worse by 30 ms of sum, relay 2 by 200 ms.
    let extra = [[20, 20, 0, 0], [35, 35, 0, 0], [120, 120, 0, 0]];
    let (mut w, relays, players) = three_relays(222, extra, 2);
    let (a, b) = (players[0], players[1]);
    assert!(w.until_introduced(a, b, 10 * SEC));
    w.stream(&[a, b]);
    w.run(3 * SEC);
    let (ia, ib) = (w.id(a), w.id(b));
    assert_eq!(w.shard.pair_relays(ia, ib), Some((Some(0), Some(1))));
    let site_ips: Vec<std::net::IpAddr> = [a, b].iter().map(|h| w.p(*h).public_ip.unwrap()).collect();
    let set = |w: &mut ShardWorld, r: usize, ms: u64| {
        let line =
            w.world.sim.node_mut::<p2pmodel_sim::hosts::DelayLine<p2pmodel_tests::PunchServer>>(relays[r]);
        for ip in &site_ips {
            line.set_delay(*ip, Duration::from_millis(ms));
        }
    };
    let moves = |w: &ShardWorld| w.shard.with(|s| s.games().iter().map(|g| g.stats.relay_moves).sum::<u64>());
    // Relay 2 becomes 5 ms (one way, each side: 20 ms of sum) better than relay 0: below
    // the margin, the pair stays.
    set(&mut w, 2, 15);
    w.run(40 * SEC); // past the clients' next RTT round (every 30 s)
    assert_eq!(moves(&w), 0, "a gain below the margin moves nothing");
    assert_eq!(w.shard.pair_relays(ia, ib).map(|p| p.0), Some(Some(0)));
    // Relay 1 becomes 20 ms one way better than relay 0 (80 ms of sum): the pair moves.
    set(&mut w, 1, 0);
    let t = w.world.sim.now();
    w.run(40 * SEC);
    assert_eq!(moves(&w), 1);
    assert_eq!(w.shard.pair_relays(ia, ib).map(|p| p.0), Some(Some(1)));
    let at1 = Some(std::net::SocketAddr::new(RELAY_IPS[1].into(), 3478));
    assert_eq!(relayed_via(&w, a, b), (at1, at1), "both sides moved");
    check_streams(&w, a, b);
    // Around the move (from a second before either side changed relay to two after), the
    // streams never paused: each side kept sending through relay 0 until both were bound on
    // relay 1.
    let moved = [a, b].map(|h| w.p(h).path_changes(if h == a { ib } else { ia }, PeerPath::Relayed));
    let moved = moved.iter().flatten().filter(|x| **x > t).min().copied().expect("a relay change");
    for (from, to) in [(a, b), (b, a)] {
        let arrivals: Vec<_> = w.p(to).received[&w.id(from)]
            .iter()
            .filter(|g| g.at + SEC > moved && g.at < moved + 2 * SEC)
            .map(|g| g.at)
            .collect();
        let gap = arrivals.windows(2).map(|p| p[1] - p[0]).max().unwrap();
        println!("longest silence around the move: {gap:?}");
        assert!(gap < Duration::from_millis(100), "the move cost no silence: {gap:?}");
    }
}
