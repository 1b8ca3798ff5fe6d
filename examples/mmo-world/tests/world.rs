//! The demo MMO's world over a real embedded shard (loopback): chat reaches the players of the
//! speaker's Game server within the interest radius, cut to 200 characters; NPCs are sent to
//! players near them a few times a second and not to a player far away. Only public API.

use std::time::{Duration, Instant};

use bevy::ecs::system::RunSystemOnce;
use bevy::prelude::*;
use bevy_p2pmodel::prelude::*;
use p2pmodel_mmo_world::{ChatLine, MmoClientPlugin, MmoWorldSettings, Npcs, Say, embedded_shard};
use p2pmodel_servers::embedded::update_until;

#[derive(Resource, Default)]
struct Heard {
    chat: Vec<ChatLine>,
    npcs: Vec<(Instant, Npcs)>,
}

fn record(
    mut chat: MessageReader<FromServer<ChatLine>>,
    mut npcs: MessageReader<FromServer<Npcs>>,
    mut heard: ResMut<Heard>,
) {
    heard.chat.extend(chat.read().map(|c| c.message.clone()));
    let now = Instant::now();
    heard.npcs.extend(npcs.read().map(|n| (now, n.message.clone())));
}

fn player(name: &str, shard: ShardAddress) -> App {
    let mut mesh = P2pMeshPlugin::new(name);
    mesh.bind = "127.0.0.1:0".parse().unwrap();
    mesh.client.nat_timeout = Duration::from_millis(500);
    let mut app = App::new();
    app.add_plugins(MinimalPlugins)
        .add_plugins((mesh, ShardClientPlugin::new(shard), MmoClientPlugin))
        .init_resource::<Heard>()
        .add_systems(Update, record);
    app.finish();
    app.cleanup();
    app
}

/// Update every app until `done` or 15 s (a bound on real sockets, not a timing assertion).
fn run(apps: &mut [App], done: impl FnMut(&[&mut App]) -> bool) -> bool {
    update_until(&mut apps.iter_mut().collect::<Vec<_>>(), Duration::from_secs(15), done)
}

fn heard(app: &App) -> &Heard {
    app.world().resource::<Heard>()
}

#[test]
fn chat_reaches_players_in_range_only_and_npcs_are_sent_to_players_near_them() {
    // One Game server; moves of any length are accepted (cid goes far away at once).
    let sections = "[lobby]\nzones = 1\n[game]\nservers_per_zone = 1\nmax_speed = 100000.0\n";
    let shard = embedded_shard("mmo-world-test", sections, MmoWorldSettings::default()).expect("shard");
    let mut apps = vec![player("ana", shard.login), player("bob", shard.login), player("cid", shard.login)];
    assert!(
        run(&mut apps, |a| a.iter().all(|x| x.world().resource::<LocalPlayer>().zone.is_some())),
        "in game"
    );
    // Everyone starts at the spawn point, among the NPCs.
    assert!(run(&mut apps, |a| a.iter().all(|x| !heard(x).npcs.is_empty())), "NPCs sent to all three");
    // cid walks off to x = 500, far from everyone and every NPC: once it is there its NPC
    // list empties.
    let mut far = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !far && Instant::now() < deadline {
        apps[2].world_mut().write_message(ShardRequest::Move { x: 500.0, y: 0.0 });
        for a in apps.iter_mut() {
            a.update();
        }
        far = heard(&apps[2]).npcs.last().is_some_and(|(_, n)| n.npcs.is_empty());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(far, "cid's NPC list emptied when it walked away: {:?}", heard(&apps[2]).npcs.last());

    // NPCs: ana at the spawn point sees all six, about 5 times a second, and they move.
    let before = heard(&apps[0]).npcs.len();
    let started = Instant::now();
    run(&mut apps, |_| started.elapsed() >= Duration::from_secs(2));
    let got = &heard(&apps[0]).npcs[before..];
    let rate = got.len() as f32 / started.elapsed().as_secs_f32();
    assert!((3.0..=7.0).contains(&rate), "{} NPC updates in 2 s", got.len());
    assert!(got.iter().all(|(_, n)| n.npcs.len() == 6), "all six are within ana's radius");
    let (first, last) = (&got.first().unwrap().1, &got.last().unwrap().1);
    assert!(
        first.npcs.iter().zip(&last.npcs).any(|(a, b)| a.id == b.id && (a.x, a.y) != (b.x, b.y)),
        "they wander"
    );
    let cid_after = heard(&apps[2]).npcs.len();

    // Chat: ana says a long line; ana and bob (in range) get it trimmed and cut, cid does not.
    apps[0]
        .world_mut()
        .run_system_once(|mut tx: ServerSender| {
            tx.send(&Say { text: format!("  hello {}  ", "x".repeat(250)) })
        })
        .unwrap()
        .expect("in game");
    assert!(
        run(&mut apps, |a| !heard(a[0]).chat.is_empty() && !heard(a[1]).chat.is_empty()),
        "chat delivered"
    );
    let line = &heard(&apps[1]).chat[0];
    assert_eq!((line.name.as_str(), line.text.chars().count()), ("ana", 200), "trimmed and cut");
    assert!(line.text.starts_with("hello x"));
    assert_eq!(heard(&apps[0]).chat, heard(&apps[1]).chat, "the speaker hears itself");
    // cid is 500 away: give a stray line the time the others needed, and more.
    let settle = Instant::now();
    run(&mut apps, |_| settle.elapsed() >= Duration::from_millis(500));
    assert!(heard(&apps[2]).chat.is_empty(), "out of range: {:?}", heard(&apps[2]).chat);
    assert_eq!(heard(&apps[2]).npcs.len(), cid_after, "and no NPCs while far away");
}
