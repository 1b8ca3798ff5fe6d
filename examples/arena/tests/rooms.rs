//! Two rooms on one arena shard (embedded, loopback): everyone in a room is meshed with
//! everyone else in it and with nobody of the other room, whatever the positions; avatars
//! arrive newest-first-wins, shots every one in order; the referee on the Game server (the
//! game API) tallies every claimed hit for the room and refuses a claim across rooms.

use std::time::{Duration, Instant};

use bevy::ecs::system::RunSystemOnce;
use bevy::prelude::*;
use bevy_p2pmodel::prelude::*;
use p2pmodel_arena::{ArenaSettings, HitClaim, Scoreboard, embedded_shard, player_app};

#[test]
fn two_rooms_mesh_only_their_own_players_and_deliver_every_shot_in_order() {
    let shard = embedded_shard().expect("arena shard");
    let bind = "127.0.0.1:0".parse().unwrap();
    let rooms = [("red", 4), ("blue", 2)];
    let mut apps = Vec::new();
    for (room, n) in rooms {
        for i in 0..n {
            let settings = ArenaSettings { room: room.into(), shoot_every: 2, max_shots: 20 };
            apps.push((room, player_app(&format!("{room}-{i}"), shard.login, bind, settings)));
        }
    }
    let done = |apps: &[(&str, App)]| {
        apps.iter().all(|(room, app)| {
            let mates = rooms.iter().find(|r| r.0 == *room).unwrap().1 - 1;
            let b = app.world().resource::<Scoreboard>();
            b.shots_fired == 20
                && b.peers.len() == mates
                && b.peers.values().all(|p| p.shots == 20 && p.avatars > 20)
                && b.room_score.len() == mates + 1
                && b.room_score.values().all(|h| *h == 20)
        })
    };
    // A bound on waiting for real sockets, not a timing assertion.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !done(&apps) {
        for (_, app) in apps.iter_mut() {
            app.update();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let ids: Vec<(&str, PlayerId)> = apps
        .iter()
        .map(|(room, app)| (*room, app.world().resource::<LocalPlayer>().player.expect("logged in")))
        .collect();
    for (room, app) in &apps {
        let b = app.world().resource::<Scoreboard>();
        let me = app.world().resource::<LocalPlayer>().player;
        // Player ids follow the order logins reach the shard, not the order of the apps.
        let mut mates: Vec<PlayerId> =
            ids.iter().filter(|(r, p)| r == room && Some(*p) != me).map(|(_, p)| *p).collect();
        mates.sort();
        let heard: Vec<PlayerId> = b.peers.keys().copied().collect();
        assert_eq!(heard, mates, "{room}: heard exactly its room-mates");
        for (peer, s) in &b.peers {
            assert_eq!((s.shots, s.shots_out_of_order), (20, 0), "{room}: every shot of {peer:?}, in order");
            assert!(!s.older_after_newer, "{room}: never an older avatar after a newer one");
            assert!(s.avatars > 20, "{room}: avatars from {peer:?}: {}", s.avatars);
        }
        let peers: Vec<PlayerId> = app
            .world()
            .resource::<PeerIndex>()
            .0
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(peers, mates, "{room}: meshed with its room-mates only");
        // The referee's tally, as the server sent it to this room: 20 hits by each of us.
        let mut scored: Vec<PlayerId> = mates.clone();
        scored.extend(me);
        scored.sort();
        assert_eq!(b.room_score.keys().copied().collect::<Vec<_>>(), scored, "{room}: the room's tally");
        assert!(b.room_score.values().all(|h| *h == 20), "{room}: {:?}", b.room_score);
        assert!(b.refused.is_empty(), "{room}: no claim on a room-mate refused");
    }
    // A red player claims a hit on a blue one: the referee refuses it and the tally stays.
    let blue = ids.iter().find(|(r, _)| *r == "blue").map(|(_, p)| *p).unwrap();
    let red = &mut apps[0].1;
    red.world_mut()
        .run_system_once(move |mut tx: ServerSender| tx.send(&HitClaim { target: blue }))
        .unwrap()
        .expect("sent");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && red.world().resource::<Scoreboard>().refused.is_empty() {
        red.update();
        std::thread::sleep(Duration::from_millis(2));
    }
    let b = red.world().resource::<Scoreboard>();
    assert_eq!(b.refused, [blue], "the claim across rooms is refused");
    assert!(b.room_score.values().all(|h| *h == 20), "and not counted: {:?}", b.room_score);
}
