//! A whole shard in-process over loopback sockets: the real relay, the Agent (renet +
//! netcode, secure mode), the login service, the Lobby and two Game servers; three clients
//! driven without a Bevy app (a `RenetClient` + `NetcodeClientTransport` on one socket, a
//! `Mesh` on a second socket). Only loopback addresses are used.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use p2pmodel_core::config::MeshConfig;
use p2pmodel_core::endpoint::{ClockAnchor, Endpoint};
use p2pmodel_core::link::{CHANNEL_RELIABLE, Candidate, CandidateKind, LinkEvent, Path};
use p2pmodel_core::mesh::{Mesh, MeshEvent};
use p2pmodel_core::proto::peer::LinkId;
use p2pmodel_core::proto::shard::{
    ClientMessage, NatSummary, PathState, PlayerId, ShardMessage, decode, encode,
};
use p2pmodel_servers::config::ShardConfig;
use p2pmodel_servers::relay::RelayRuntime;
use p2pmodel_servers::shard::ShardInfo;
use p2pmodel_servers::shard::game::GameServers;
use p2pmodel_servers::shard::lobby::LobbyState;
use p2pmodel_servers::shard::login::{LoginError, ShardAddress, request_token};
use p2pmodel_tests::shard_harness::{free_udp_port, start_shard};
use renet::{ConnectionConfig, DefaultChannel, RenetClient};
use renet_netcode::{ClientAuthentication, ConnectToken, NetcodeClientTransport};

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn unix() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// A shard config on loopback with ephemeral ports, fast movement and a store file.
fn config(name: &str, store: &std::path::Path) -> ShardConfig {
    config_with(name, store, "")
}

/// [`config`] with extra `[game]` keys.
fn config_with(name: &str, store: &std::path::Path, game: &str) -> ShardConfig {
    ShardConfig::parse(&format!(
        "[shard]\nname = \"{name}\"\nsecret = \"{SECRET}\"\nbind = \"127.0.0.1\"\n\
         [relay]\nport = 0\nalternate_port = 0\n\
         [agent]\nport = 0\nlogin_port = {}\n\
         [lobby]\nzones = 1\nstore = \"{}\"\nheartbeat_ms = 100\nheartbeat_timeout_ms = 1000\n\
         [game]\nservers_per_zone = 2\nmax_speed = 2000.0\ninterest_radius = 50.0\nhysteresis = 10.0\n{game}",
        free_udp_port(),
        store.display()
    ))
    .unwrap()
}

struct Client {
    name: String,
    renet: RenetClient,
    transport: NetcodeClientTransport,
    mesh: Mesh,
    mesh_socket: UdpSocket,
    mesh_local: SocketAddr,
    last: Instant,
    player: Option<PlayerId>,
    /// Open links: link → peer name.
    links: HashMap<LinkId, String>,
    /// Every peer name ever introduced.
    introduced: Vec<String>,
    outros: usize,
    entered: Vec<(f32, f32)>,
    refused: Vec<String>,
    p2p_received: Vec<String>,
    pos: (f32, f32),
    /// Player ids of introduced peers, by name.
    peer_ids: HashMap<String, PlayerId>,
    /// Server-routed peer messages: (sender, reliable, data).
    from_peer: Vec<(PlayerId, bool, Vec<u8>)>,
    /// Party invitations received: (party, from).
    invites: Vec<(String, PlayerId)>,
    /// Every PeerIntro's parameters, by peer name.
    intro_params: HashMap<String, p2pmodel_core::link::LinkParams>,
    welcomes: usize,
}

impl Client {
    fn connect(name: &str, token: ConnectToken) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let transport = NetcodeClientTransport::new(
            unix(),
            ClientAuthentication::Secure { connect_token: token },
            socket,
        )
        .unwrap();
        let mesh_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        mesh_socket.set_nonblocking(true).unwrap();
        let mesh_local = mesh_socket.local_addr().unwrap();
        let now = Instant::now();
        let clock = ClockAnchor { at: now, unix_micros: unix().as_micros() as u64 };
        Client {
            name: name.into(),
            renet: RenetClient::new(ConnectionConfig::default()),
            transport,
            mesh: Mesh::new(now, MeshConfig::default(), clock, &[mesh_local]),
            mesh_socket,
            mesh_local,
            last: now,
            player: None,
            links: HashMap::new(),
            introduced: Vec::new(),
            outros: 0,
            entered: Vec::new(),
            refused: Vec::new(),
            p2p_received: Vec::new(),
            pos: (0.0, 0.0),
            peer_ids: HashMap::new(),
            from_peer: Vec::new(),
            invites: Vec::new(),
            intro_params: HashMap::new(),
            welcomes: 0,
        }
    }

    fn send(&mut self, msg: &ClientMessage) {
        self.renet.send_message(DefaultChannel::ReliableOrdered, encode(msg).unwrap());
    }

    /// One driver turn: the shard connection, then the mesh socket.
    fn pump(&mut self) {
        let now = Instant::now();
        let _ = self.transport.update(now - self.last, &mut self.renet);
        self.renet.update(now - self.last);
        self.last = now;
        while let Some(b) = self.renet.receive_message(DefaultChannel::ReliableOrdered) {
            self.on_shard(decode::<ShardMessage>(&b).expect("shard sends valid messages"));
        }
        while let Some(b) = self.renet.receive_message(DefaultChannel::Unreliable) {
            self.on_shard(decode::<ShardMessage>(&b).expect("shard sends valid messages"));
        }
        while let Some(t) = self.mesh.poll_transmit() {
            assert!(t.dst.ip().is_loopback(), "only loopback traffic: {}", t.dst);
            let _ = self.mesh_socket.send_to(&t.payload, t.dst);
        }
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = self.mesh_socket.recv_from(&mut buf) {
            self.mesh.handle_datagram(Instant::now(), self.mesh_local, from, &buf[..n]);
        }
        if self.mesh.poll_timeout().is_some_and(|t| t <= now) {
            self.mesh.handle_timeout(now);
        }
        while let Some(ev) = self.mesh.poll_event() {
            if let MeshEvent::Link { link, event: LinkEvent::Path(p) } = ev {
                let path = match p {
                    Path::None => PathState::Connecting,
                    Path::Relayed { .. } => PathState::Relayed,
                    Path::Direct { .. } => PathState::Direct,
                };
                self.send(&ClientMessage::PathReport { link, path, rtt_ms: None });
            }
        }
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for id in ids {
            while let Some(m) = self.mesh.receive(id, CHANNEL_RELIABLE) {
                self.p2p_received.push(String::from_utf8_lossy(&m).into_owned());
            }
        }
        let _ = self.transport.send_packets(&mut self.renet);
    }

    fn on_shard(&mut self, msg: ShardMessage) {
        match msg {
            ShardMessage::Welcome { player, .. } => {
                self.player = Some(player);
                self.welcomes += 1;
            }
            ShardMessage::PeerIntro { name, params, peer } => {
                self.peer_ids.insert(name.clone(), peer);
                self.intro_params.insert(name.clone(), params.clone());
                let link = params.link;
                self.mesh.add_link(Instant::now(), params).unwrap();
                self.links.insert(link, name.clone());
                self.introduced.push(name);
            }
            ShardMessage::PeerOutro { link } => {
                if self.links.remove(&link).is_some() {
                    let _ = self.mesh.remove_link(link);
                }
                self.outros += 1;
            }
            ShardMessage::EnteredZone { x, y, .. } => {
                // Links of a previous Game server are gone with it.
                for (l, _) in self.links.drain() {
                    let _ = self.mesh.remove_link(l);
                }
                self.pos = (x, y);
                self.entered.push((x, y));
                // This raw client keeps no link across servers: say so, and get introduced
                // at once.
                self.send(&ClientMessage::KeepLinks { links: Vec::new() });
            }
            ShardMessage::Session { .. } | ShardMessage::PeerKept { .. } => {}
            ShardMessage::Correction { x, y } => self.pos = (x, y),
            ShardMessage::Refused { reason } => self.refused.push(reason),
            ShardMessage::RelayRefresh { link, relay } => {
                let _ = self.mesh.update_relay(Instant::now(), link, relay);
            }
            ShardMessage::RelayStandby { link, relay } => {
                let _ = self.mesh.update_standby(Instant::now(), link, relay);
            }
            ShardMessage::Relays { .. } | ShardMessage::FromGame { .. } => {}
            ShardMessage::FromPeer { peer, reliable, data, .. } => {
                self.from_peer.push((peer, reliable, data))
            }
            ShardMessage::PartyInvite { party, from, .. } => self.invites.push((party, from)),
        }
    }

    fn link_to(&self, peer: &str) -> Option<LinkId> {
        self.links.iter().find(|(_, n)| *n == peer).map(|(l, _)| *l)
    }
}

struct Shard {
    app: bevy::app::App,
    login: ShardAddress,
}

impl Shard {
    fn start(cfg: &ShardConfig) -> Shard {
        let (app, login) = start_shard(cfg);
        Shard { app, login }
    }

    fn lobby(&self) -> &LobbyState {
        self.app.world().resource::<LobbyState>()
    }

    fn games(&self) -> &GameServers {
        self.app.world().resource::<GameServers>()
    }
}

/// Step the shard and every client until `done` holds or `limit` passes (real sockets need
/// real time: this bounds a wait, it is not test logic).
fn run_until(
    shard: &mut Shard,
    clients: &mut [&mut Client],
    limit: Duration,
    mut done: impl FnMut(&Shard, &[&mut Client]) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        shard.app.update();
        for c in clients.iter_mut() {
            c.pump();
        }
        if done(shard, clients) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

fn login(shard: &Shard, name: &str) -> Client {
    Client::connect(name, request_token(&shard.login, name, b"").unwrap())
}

fn join_zone(c: &mut Client) {
    let nat = NatSummary { class: "open".into(), dependent_mapping: false, port_delta: None, public: None };
    c.send(&ClientMessage::Login { name: c.name.clone() });
    c.send(&ClientMessage::MeshInfo {
        candidates: vec![Candidate::new(CandidateKind::Host, c.mesh_local)],
        nat,
    });
    c.send(&ClientMessage::EnterZone { zone: 0 });
}

/// Walk toward `to` in steps the speed limit allows.
fn walk(c: &mut Client, to: (f32, f32), tick: &mut u32) {
    let (dx, dy) = (to.0 - c.pos.0, to.1 - c.pos.1);
    let d = (dx * dx + dy * dy).sqrt();
    if d < 0.01 {
        return;
    }
    let step = d.min(20.0);
    c.pos = (c.pos.0 + dx / d * step, c.pos.1 + dy / d * step);
    *tick += 1;
    let msg = ClientMessage::Move { tick: *tick, x: c.pos.0, y: c.pos.1 };
    c.renet.send_message(DefaultChannel::ReliableOrdered, encode(&msg).unwrap());
}

/// The Game server everyone is on stalls: its players move to the zone's other Game server
/// with their positions within 5 s; when it comes back, it is reset and nobody moves back.
fn survive_a_game_server_failure(shard: &mut Shard, ana: &mut Client, bob: &mut Client, cid: &mut Client) {
    // Kill the Game server everyone is on: the Lobby notices the missing heartbeats and
    // moves them to the other Game server of the zone, with their positions, within 5 s.
    // Positions are checkpointed to the Lobby every 5 ticks (250 ms): let one land.
    run_until(shard, &mut [&mut *ana, &mut *bob, &mut *cid], Duration::from_millis(400), |_, _| false);
    let game = shard.games().worlds.iter().find(|w| w.players().count() == 3).map(|w| w.id).unwrap();
    let bob_pos = bob.pos;
    let killed_at = Instant::now();
    shard.app.world_mut().resource_mut::<GameServers>().pause(game); // a stalled process, state kept
    let moved = run_until(shard, &mut [&mut *ana, &mut *bob, &mut *cid], Duration::from_secs(5), |_, cs| {
        cs.iter().all(|c| c.entered.len() == 2)
    });
    assert!(moved, "players re-placed within 5 s");
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    let other = shard.games().worlds.iter().find(|w| w.id != game).unwrap();
    assert_eq!(other.players().count(), 3);
    let (bx, by) = bob.entered[1];
    assert!(
        (bx - bob_pos.0).abs() < 1.0 && (by - bob_pos.1).abs() < 1.0,
        "bob kept his position: {:?} vs {bob_pos:?}",
        bob.entered
    );
    assert_eq!(cid.entered[1], (500.0, 0.0));
    // The stalled server comes back: the Lobby resets it (its players live elsewhere now).
    shard.app.world_mut().resource_mut::<GameServers>().resume(game);
    let reset = run_until(shard, &mut [&mut *ana, &mut *bob, &mut *cid], Duration::from_secs(3), |s, _| {
        s.lobby().games[&game].alive && s.games().get(game).unwrap().players().count() == 0
    });
    assert!(reset, "a returning Game server is reset and rejoins the pool");
    assert!(ana.entered.len() == 2 && bob.entered.len() == 2, "nobody was moved back");
}

/// A party (ana near the origin, cid at x = 500) is introduced regardless of distance, only
/// on the owner's invitation; bob, in no party, is not.
fn party_meshes_across_the_map(shard: &mut Shard, ana: &mut Client, bob: &mut Client, cid: &mut Client) {
    // A party meshes across the map: ana (near the origin) and cid (at x = 500). ana creates
    // it; cid gets in only once ana invited it.
    ana.send(&ClientMessage::JoinParty { party: "p".into() });
    run_until(shard, &mut [&mut *ana, &mut *bob, &mut *cid], Duration::from_secs(2), |s, _| {
        s.lobby().parties.owner("p").is_some()
    });
    cid.send(&ClientMessage::JoinParty { party: "p".into() });
    bob.send(&ClientMessage::InviteToParty { player: cid.player.unwrap() });
    let refused =
        run_until(shard, &mut [&mut *ana, &mut *bob, &mut *cid], Duration::from_secs(5), |_, cs| {
            cs[1].refused.iter().any(|r| r.contains("invit"))
                && cs[2].refused.iter().any(|r| r.contains("invitation"))
        });
    assert!(
        refused,
        "no join without an invitation, no invitation but the owner's: {:?} {:?}",
        bob.refused, cid.refused
    );
    ana.send(&ClientMessage::InviteToParty { player: cid.player.unwrap() });
    let ana_id = ana.player.unwrap();
    assert!(run_until(shard, &mut [&mut *ana, &mut *bob, &mut *cid], Duration::from_secs(5), |_, cs| {
        cs[2].invites.contains(&("p".into(), ana_id))
    }));
    cid.send(&ClientMessage::JoinParty { party: "p".into() });
    let party = run_until(shard, &mut [&mut *ana, &mut *bob, &mut *cid], Duration::from_secs(5), |_, cs| {
        match (cs[0].link_to("cid"), cs[2].link_to("ana")) {
            (Some(l), Some(_)) => cs[0].mesh.link(l).is_some_and(|k| k.path() != Path::None),
            _ => false,
        }
    });
    assert!(party, "party members are introduced regardless of distance");
    let plink = ana.link_to("cid").unwrap();
    ana.mesh.send(plink, CHANNEL_RELIABLE, b"party on".to_vec()).unwrap();
    let heard = run_until(shard, &mut [&mut *ana, &mut *bob, &mut *cid], Duration::from_secs(5), |_, cs| {
        cs[2].p2p_received.iter().any(|m| m == "party on")
    });
    assert!(heard, "cid got ana's party message P2P");
    assert!(bob.link_to("cid").is_none() && bob.link_to("ana").is_none(), "bob is in no party and far away");
}

#[test]
fn shard_clients_login_meet_talk_p2p_part_mesh_as_a_party_and_survive_a_game_server_failure() {
    let store = std::env::temp_dir().join(format!("p2pm-shard-e2e-{}.json", std::process::id()));
    // cid's character was saved far away: it must never be introduced to the others.
    std::fs::write(&store, r#"{"cid":{"player":40,"zone":0,"x":500.0,"y":0.0}}"#).unwrap();
    let cfg = config("e2e-a", &store);
    let mut shard = Shard::start(&cfg);
    let mut ana = login(&shard, "ana");
    let mut bob = login(&shard, "bob");
    let mut cid = login(&shard, "cid");
    // A name that is online cannot log in twice.
    assert!(run_until(&mut shard, &mut [&mut ana, &mut bob, &mut cid], Duration::from_secs(5), |_, cs| cs
        .iter()
        .all(|c| c.renet.is_connected())));
    run_until(&mut shard, &mut [&mut ana], Duration::from_millis(100), |_, _| false);
    assert!(matches!(request_token(&shard.login, "ana", b""), Err(LoginError::Refused(_))));
    for c in [&mut ana, &mut bob, &mut cid] {
        join_zone(c);
    }
    let all_in =
        run_until(&mut shard, &mut [&mut ana, &mut bob, &mut cid], Duration::from_secs(5), |_, cs| {
            cs.iter().all(|c| c.player.is_some() && !c.entered.is_empty())
        });
    assert!(
        all_in,
        "everyone logged in and entered zone 0: players {:?} entered {:?} refused {:?}; lobby {:?} agent {:?}",
        [ana.player, bob.player, cid.player],
        [&ana.entered, &bob.entered, &cid.entered],
        [&ana.refused, &bob.refused, &cid.refused],
        shard.lobby().clients.values().map(|c| (c.name.clone(), c.placed)).collect::<Vec<_>>(),
        shard.app.world().resource::<p2pmodel_servers::shard::agent::AgentState>().sessions.len(),
    );
    assert_eq!(cid.entered[0], (500.0, 0.0), "position from the store");
    assert_eq!(shard.lobby().population(0), 3);

    // ana and bob (both at the origin) are introduced and open their link.
    let linked =
        run_until(&mut shard, &mut [&mut ana, &mut bob, &mut cid], Duration::from_secs(5), |_, cs| {
            let (a, b) = (&cs[0], &cs[1]);
            match (a.link_to("bob"), b.link_to("ana")) {
                (Some(l), Some(_)) => a.mesh.link(l).is_some_and(|k| k.path() != Path::None),
                _ => false,
            }
        });
    assert!(linked, "ana and bob introduced and connected");
    let link = ana.link_to("bob").unwrap();
    assert_eq!(bob.link_to("ana"), Some(link));
    for i in 0..20 {
        ana.mesh.send(link, CHANNEL_RELIABLE, format!("hi bob {i}").into_bytes()).unwrap();
    }
    bob.mesh.send(link, CHANNEL_RELIABLE, b"hi ana".to_vec()).unwrap();
    let talked =
        run_until(&mut shard, &mut [&mut ana, &mut bob, &mut cid], Duration::from_secs(5), |_, cs| {
            cs[1].p2p_received.len() == 20 && cs[0].p2p_received.len() == 1
        });
    assert!(talked, "P2P messages: bob got {:?}, ana got {:?}", bob.p2p_received, ana.p2p_received);
    assert_eq!(bob.p2p_received[19], "hi bob 19");
    // Session tracking: the Game knows both sides' path.
    let tracked =
        run_until(&mut shard, &mut [&mut ana, &mut bob, &mut cid], Duration::from_secs(3), |s, _| {
            s.games()
                .worlds
                .iter()
                .flat_map(|w| w.pairs())
                .any(|(_, p)| p.link == link && p.paths.iter().all(|x| x.is_some()))
        });
    assert!(tracked, "both path reports reached the Game server");
    assert!(cid.introduced.is_empty(), "the far player is not introduced: {:?}", cid.introduced);

    // bob walks away (beyond radius + hysteresis): both get a PeerOutro.
    let mut tick = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while (ana.outros == 0 || bob.outros == 0) && Instant::now() < deadline {
        walk(&mut bob, (100.0, 0.0), &mut tick);
        run_until(&mut shard, &mut [&mut ana, &mut bob, &mut cid], Duration::from_millis(60), |_, _| false);
    }
    assert!(ana.outros == 1 && bob.outros == 1, "moving apart un-introduces");
    assert!(ana.links.is_empty() && bob.links.is_empty());
    assert!(cid.introduced.is_empty());

    survive_a_game_server_failure(&mut shard, &mut ana, &mut bob, &mut cid);
    party_meshes_across_the_map(&mut shard, &mut ana, &mut bob, &mut cid);

    // The store keeps the positions for the next login.
    drop(shard);
    let saved = std::fs::read_to_string(&store).unwrap();
    assert!(saved.contains("\"bob\""), "{saved}");
    let _ = std::fs::remove_file(&store);
}

#[test]
fn shard_unauthenticated_clients_reach_nothing_and_a_second_shard_is_untouched() {
    let store_a = std::env::temp_dir().join(format!("p2pm-shard-auth-a-{}.json", std::process::id()));
    let store_b = std::env::temp_dir().join(format!("p2pm-shard-auth-b-{}.json", std::process::id()));
    let cfg_a = config("auth-a", &store_a);
    let mut cfg_b = config("auth-b", &store_b);
    cfg_b.shard.secret[0] ^= 0xff; // its own secret
    let mut a = Shard::start(&cfg_a);
    let mut b = Shard::start(&cfg_b);
    let agent_a = a.app.world().resource::<ShardInfo>().agent;

    // Garbage sent straight at the Agent reaches nothing.
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        let _ = junk.send_to(&i.to_le_bytes().repeat(1 + (i as usize % 40)), agent_a);
    }
    // A token of shard B, pointed at shard A's Agent, does not open it.
    let token = {
        let mut t = request_token(&b.login, "mallory", b"").unwrap();
        let mut addrs = [None; 32];
        addrs[0] = Some(agent_a);
        t.server_addresses = addrs;
        t
    };
    let mut mallory = Client::connect("mallory", token);
    let connected = run_until(&mut a, &mut [&mut mallory], Duration::from_secs(2), |_, cs| {
        cs.iter().any(|c| c.renet.is_connected())
    });
    assert!(!connected, "a client without a token of shard A never connects");
    assert!(a.lobby().clients.is_empty(), "nothing reached the Lobby");

    // An authenticated client sending garbage and floods: counted and dropped, never a panic.
    let mut zed = login(&a, "zed");
    assert!(run_until(&mut a, &mut [&mut zed], Duration::from_secs(5), |_, cs| cs[0].renet.is_connected()));
    for i in 0..400u32 {
        zed.renet.send_message(DefaultChannel::ReliableOrdered, vec![0xff; 1 + (i as usize % 50)]);
    }
    run_until(&mut a, &mut [&mut zed], Duration::from_millis(500), |_, _| false);
    let agent = a.app.world().resource::<p2pmodel_servers::shard::agent::AgentState>();
    assert!(agent.decode_errors > 0, "garbage counted");
    assert!(agent.rate_limited > 0, "a flood beyond agent.max_messages_per_sec is dropped");
    assert!(zed.renet.is_connected());

    // Shard B keeps serving while shard A loses a Game server.
    let mut bea = login(&b, "bea");
    let first = a.games().worlds[0].id;
    a.app.world_mut().resource_mut::<GameServers>().kill(first);
    assert!(run_until(&mut b, &mut [&mut bea], Duration::from_secs(5), |_, cs| cs[0].renet.is_connected()));
    join_zone(&mut bea);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut served = false;
    while !served && Instant::now() < deadline {
        a.app.update(); // shard A keeps running (and detecting its dead Game server) alongside
        served =
            run_until(&mut b, &mut [&mut bea], Duration::from_millis(20), |_, cs| !cs[0].entered.is_empty());
    }
    assert!(served, "shard B admits players");
    assert!(b.games().stopped.is_empty(), "B's Game servers run");
    assert_eq!(b.lobby().games.values().filter(|g| g.alive).count(), 2, "B's Lobby saw no failure");
    let _ = std::fs::remove_file(&store_a);
    let _ = std::fs::remove_file(&store_b);
}

#[test]
fn shard_roles_in_separate_apps_over_internal_links_survive_a_killed_game_process() {
    use bevy::app::App;
    use bevy::prelude::MinimalPlugins;
    use p2pmodel_core::proto::shard::Role;
    use p2pmodel_servers::shard::remote::{RemoteBus, RemoteBusPlugin};
    use p2pmodel_servers::shard::{add_agent, add_games, add_lobby};

    let store = std::env::temp_dir().join(format!("p2pm-shard-split-{}.json", std::process::id()));
    let cfg = config("split", &store);
    let (hb, timeout, secret) = (cfg.lobby.heartbeat, cfg.lobby.heartbeat_timeout, cfg.shard.secret);
    let relay = RelayRuntime::start(&cfg).unwrap();
    let relay_addr = relay.server.primary_addr();

    // Four "processes": Lobby (listens), Agent, Game 0, Game 1 (connect to the Lobby).
    let mut lobby = App::new();
    lobby.add_plugins(MinimalPlugins);
    add_lobby(&mut lobby, &cfg, relay_addr).unwrap();
    let (remote, lobby_addr) =
        RemoteBus::listen(vec![Role::Lobby], "127.0.0.1:0".parse().unwrap(), secret, hb, timeout).unwrap();
    lobby.insert_resource(remote).add_plugins(RemoteBusPlugin);
    let connect = |role: Role| RemoteBus::connect(vec![role], lobby_addr, secret, hb, timeout);
    let mut agent = App::new();
    agent.add_plugins(MinimalPlugins);
    add_agent(&mut agent, &cfg, None).unwrap();
    agent.insert_resource(connect(Role::Agent).unwrap()).add_plugins(RemoteBusPlugin);
    let mut games: Vec<Option<App>> = (0..2u32)
        .map(|g| {
            let mut app = App::new();
            app.add_plugins(MinimalPlugins);
            add_games(&mut app, &cfg, &[(g, 0)], Some(relay_addr));
            app.insert_resource(connect(Role::Game(g)).unwrap()).add_plugins(RemoteBusPlugin);
            Some(app)
        })
        .collect();
    // A process without the shard secret is refused, counted by the Lobby.
    assert!(RemoteBus::connect(vec![Role::Game(9)], lobby_addr, [1; 32], hb, timeout).is_err());
    let refused = lobby.world().resource::<RemoteBus>().refused.clone();
    let deadline = Instant::now() + Duration::from_secs(3);
    while refused.load(std::sync::atomic::Ordering::Relaxed) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5)); // the Lobby's handshake thread
    }
    assert_eq!(refused.load(std::sync::atomic::Ordering::Relaxed), 1);

    let login_addr = agent.world().resource::<ShardInfo>().shard_address().unwrap();
    let mut ana = Client::connect("ana", request_token(&login_addr, "ana", b"").unwrap());
    let step = |ana: &mut Client, games: &mut [Option<App>], lobby: &mut App, agent: &mut App| {
        lobby.update();
        agent.update();
        for g in games.iter_mut().flatten() {
            g.update();
        }
        ana.pump();
        std::thread::sleep(Duration::from_millis(1));
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ana.renet.is_connected() && Instant::now() < deadline {
        step(&mut ana, &mut games, &mut lobby, &mut agent);
    }
    join_zone(&mut ana);
    while ana.entered.is_empty() && Instant::now() < deadline {
        step(&mut ana, &mut games, &mut lobby, &mut agent);
    }
    assert_eq!(ana.entered.len(), 1, "entered the zone through Agent → Lobby → Game processes");
    let placed =
        |lobby: &App| lobby.world().resource::<LobbyState>().clients.values().next().and_then(|c| c.placed);
    let (_, first) = placed(&lobby).unwrap();

    // Kill that Game "process": its link goes silent; the Lobby moves ana within 5 s.
    games[first as usize] = None;
    let killed = Instant::now();
    while ana.entered.len() < 2 && killed.elapsed() < Duration::from_secs(5) {
        step(&mut ana, &mut games, &mut lobby, &mut agent);
    }
    assert_eq!(ana.entered.len(), 2, "moved to the other Game server");
    let (_, second) = placed(&lobby).unwrap();
    assert_ne!(first, second);
    drop(relay);
    let _ = std::fs::remove_file(&store);
}

/// ana (owner of party "p") invites the client at index `who` of [ana, bob, cid]; waits until
/// it got the invitation.
fn invite(
    shard: &mut Shard,
    ana: &mut Client,
    bob: &mut Client,
    cid: &mut Client,
    who: usize,
    wait: Duration,
) {
    let player = [&*ana, &*bob, &*cid][who].player.expect("logged in");
    ana.send(&ClientMessage::InviteToParty { player });
    let from = ana.player;
    assert!(
        run_until(shard, &mut [ana, bob, cid], wait, |_, cs| cs[who]
            .invites
            .iter()
            .any(|(p, f)| p == "p" && Some(*f) == from)),
        "invitation delivered"
    );
}

/// `c` got `text` from `speaker` through the Game server (`ToPeer` → `FromPeer`).
fn heard(c: &Client, speaker: &Client, text: &str) -> bool {
    c.from_peer.iter().any(|(p, _, d)| Some(*p) == speaker.player && d == text.as_bytes())
}

/// `from` sends `text` to `to` through its Game server (reliable).
fn say(from: &mut Client, to: &Client, text: &str) {
    let peer = to.player.expect("logged in");
    from.send(&ClientMessage::ToPeer { peer, reliable: true, seq: None, data: text.as_bytes().to_vec() });
}

/// The Game server `name` plays on, as the Lobby placed it.
fn game_of(shard: &Shard, name: &str) -> Option<u32> {
    shard.lobby().clients.values().find(|c| c.name == name).and_then(|c| c.placed.map(|(_, g)| g))
}

#[test]
fn shard_channels_do_not_see_each_other_and_parties_share_a_game_server() {
    let store = std::env::temp_dir().join(format!("p2pm-shard-chat-{}.json", std::process::id()));
    // One player per Game server: the zone's two servers are two channels.
    let cfg = config_with("chat", &store, "capacity = 1\n");
    let mut shard = Shard::start(&cfg);
    let (mut ana, mut bob, mut cid) = (login(&shard, "ana"), login(&shard, "bob"), login(&shard, "cid"));
    let wait = Duration::from_secs(5);
    join_zone(&mut ana);
    assert!(run_until(&mut shard, &mut [&mut ana, &mut bob, &mut cid], wait, |_, cs| !cs[0]
        .entered
        .is_empty()));
    join_zone(&mut bob);
    assert!(run_until(&mut shard, &mut [&mut ana, &mut bob, &mut cid], wait, |_, cs| !cs[1]
        .entered
        .is_empty()));
    let (ga, gb) = (game_of(&shard, "ana").unwrap(), game_of(&shard, "bob").unwrap());
    assert_ne!(ga, gb, "capacity 1: bob is on the zone's other channel");

    // Same spot, different channels: no introduction, and nothing routed between them.
    say(&mut ana, &bob, "hello");
    run_until(&mut shard, &mut [&mut ana, &mut bob, &mut cid], Duration::from_millis(300), |_, _| false);
    assert!(
        bob.from_peer.is_empty() && bob.introduced.is_empty() && ana.introduced.is_empty(),
        "channels are apart"
    );

    // cid joins ana's party (invited) before entering: placed on ana's (full) server, and meshed.
    ana.send(&ClientMessage::JoinParty { party: "p".into() });
    cid.send(&ClientMessage::Login { name: "cid".into() }); // its player id, to be invited
    assert!(run_until(&mut shard, &mut [&mut ana, &mut bob, &mut cid], wait, |_, cs| cs[2].player.is_some()));
    invite(&mut shard, &mut ana, &mut bob, &mut cid, 2, wait);
    cid.send(&ClientMessage::JoinParty { party: "p".into() });
    join_zone(&mut cid);
    assert!(run_until(&mut shard, &mut [&mut ana, &mut bob, &mut cid], wait, |_, cs| {
        cs[0].link_to("cid").is_some() && cs[2].link_to("ana").is_some()
    }));
    assert_eq!(game_of(&shard, "cid"), Some(ga), "placed with its party, over capacity");
    say(&mut cid, &ana, "hi party");
    assert!(run_until(&mut shard, &mut [&mut ana, &mut bob, &mut cid], wait, |_, cs| heard(
        cs[0], cs[2], "hi party"
    )));

    // bob, already playing on the other channel, joins the party: moved to the party's server.
    invite(&mut shard, &mut ana, &mut bob, &mut cid, 1, wait);
    bob.send(&ClientMessage::JoinParty { party: "p".into() });
    assert!(
        run_until(&mut shard, &mut [&mut ana, &mut bob, &mut cid], wait, |_, cs| {
            cs[1].entered.len() == 2 && cs[1].link_to("ana").is_some() && cs[1].link_to("cid").is_some()
        }),
        "bob moved and meshed: entered {:?}, introduced {:?}",
        bob.entered,
        bob.introduced
    );
    assert_eq!(game_of(&shard, "bob"), Some(ga));
    say(&mut bob, &ana, "moved");
    assert!(run_until(&mut shard, &mut [&mut ana, &mut bob, &mut cid], wait, |_, cs| heard(
        cs[0], cs[1], "moved"
    )));
    drop(shard);
    let _ = std::fs::remove_file(&store);
}

#[test]
fn shard_cleans_a_hostile_mesh_info_before_any_peer_gets_it() {
    use p2pmodel_servers::shard::agent::AgentState;
    let store = std::env::temp_dir().join(format!("p2pm-shard-intro-{}.json", std::process::id()));
    let cfg = config("intro", &store);
    let mut shard = Shard::start(&cfg);
    let (mut ana, mut bob) = (login(&shard, "ana"), login(&shard, "bob"));
    // ana lists thousands of copies of her address, addresses of others (a documentation
    // range, a multicast group, a link-local host, a server-reflexive IP that is not hers),
    // kinds she cannot know, and an absurd port step.
    let mut candidates = vec![Candidate::new(CandidateKind::Host, ana.mesh_local); 5000];
    for (kind, a) in [
        (CandidateKind::Host, "192.0.2.7:4000"),
        (CandidateKind::Host, "224.0.0.251:5353"),
        (CandidateKind::Host, "169.254.3.4:4000"),
        (CandidateKind::ServerReflexive, "8.8.8.8:53"),
        (CandidateKind::Relayed, "8.8.4.4:3478"),
        (CandidateKind::Host, "127.0.0.5:4000"),
    ] {
        candidates.push(Candidate::new(kind, a.parse().unwrap()));
    }
    let nat = NatSummary {
        class: "symmetric".into(),
        dependent_mapping: true,
        port_delta: Some(i32::MIN),
        public: None,
    };
    ana.send(&ClientMessage::Login { name: "ana".into() });
    ana.send(&ClientMessage::MeshInfo { candidates, nat });
    ana.send(&ClientMessage::EnterZone { zone: 0 });
    join_zone(&mut bob);
    let wait = Duration::from_secs(5);
    assert!(run_until(&mut shard, &mut [&mut ana, &mut bob], wait, |_, cs| cs[1]
        .intro_params
        .contains_key("ana")));
    let p = &bob.intro_params["ana"];
    // Only her loopback addresses survive, once each (both players are on the shard's host,
    // the one case where loopback candidates are passed on).
    let got: Vec<SocketAddr> = p.remote.iter().map(|c| c.addr).collect();
    assert_eq!(got, [ana.mesh_local, "127.0.0.5:4000".parse().unwrap()], "{:?}", p.remote);
    assert_eq!(p.remote_nat.port_delta, None);
    let refused = shard.app.world().resource::<AgentState>().intro;
    assert_eq!(
        (
            refused.duplicate,
            refused.reserved,
            refused.unusable,
            refused.link_local,
            refused.srflx_mismatch,
            refused.kind,
            refused.port_delta
        ),
        (4999, 1, 1, 1, 1, 1, 1),
        "{refused:?}"
    );
    drop(shard);
    let _ = std::fs::remove_file(&store);
}

#[test]
fn shard_routes_peer_messages_only_between_introduced_players() {
    let store = std::env::temp_dir().join(format!("p2pm-shard-npc-{}.json", std::process::id()));
    // cid's character is far away: never introduced to ana and bob, and far from the NPCs.
    std::fs::write(&store, r#"{"cid":{"player":40,"zone":0,"x":500.0,"y":0.0}}"#).unwrap();
    let cfg = config("npc", &store);
    let mut shard = Shard::start(&cfg);
    let (mut ana, mut bob, mut cid) = (login(&shard, "ana"), login(&shard, "bob"), login(&shard, "cid"));
    for c in [&mut ana, &mut bob, &mut cid] {
        join_zone(c);
    }
    let wait = Duration::from_secs(5);
    assert!(run_until(&mut shard, &mut [&mut ana, &mut bob, &mut cid], wait, |_, cs| {
        cs.iter().all(|c| !c.entered.is_empty()) && cs[0].peer_ids.contains_key("bob")
    }));
    let bob_id = ana.peer_ids["bob"];
    let (ana_id, cid_id) = (ana.player.unwrap(), cid.player.unwrap());
    let to_peer = |c: &mut Client, peer: PlayerId, reliable: bool, data: Vec<u8>| {
        c.send(&ClientMessage::ToPeer { peer, reliable, seq: None, data });
    };
    to_peer(&mut ana, bob_id, true, b"reliable via server".to_vec());
    to_peer(&mut ana, bob_id, false, vec![1; 1200]);
    to_peer(&mut ana, bob_id, true, vec![2; 1201]); // too large
    to_peer(&mut ana, cid_id, true, b"not introduced".to_vec());
    to_peer(&mut cid, ana_id, true, b"not introduced either".to_vec());
    to_peer(&mut ana, PlayerId(999), true, b"nobody".to_vec());
    let counted = run_until(&mut shard, &mut [&mut ana, &mut bob, &mut cid], wait, |s, cs| {
        cs[1].from_peer.len() == 2 && s.games().worlds.iter().map(|w| w.stats.peer_dropped).sum::<u64>() == 4
    });
    assert!(
        counted,
        "bob got {:?}",
        bob.from_peer.iter().map(|(p, r, d)| (*p, *r, d.len())).collect::<Vec<_>>()
    );
    assert_eq!(bob.from_peer[0], (ana_id, true, b"reliable via server".to_vec()));
    assert_eq!((bob.from_peer[1].0, bob.from_peer[1].1, bob.from_peer[1].2.len()), (ana_id, false, 1200));
    assert!(ana.from_peer.is_empty() && cid.from_peer.is_empty());
    assert_eq!(shard.games().worlds.iter().map(|w| w.stats.peer_routed).sum::<u64>(), 2);

    drop(shard);
    let _ = std::fs::remove_file(&store);
}

#[test]
fn shard_internal_links_reconnect_after_a_lobby_restart_and_the_new_lobby_places_players() {
    use bevy::app::App;
    use bevy::prelude::MinimalPlugins;
    use p2pmodel_core::proto::shard::Role;
    use p2pmodel_servers::shard::remote::{RemoteBus, RemoteBusPlugin};
    use p2pmodel_servers::shard::{add_agent, add_games, add_lobby};

    let store = std::env::temp_dir().join(format!("p2pm-shard-relink-{}.json", std::process::id()));
    let cfg = config("relink", &store);
    let (hb, timeout, secret) = (cfg.lobby.heartbeat, cfg.lobby.heartbeat_timeout, cfg.shard.secret);
    let relay = RelayRuntime::start(&cfg).unwrap();
    let relay_addr = relay.server.primary_addr();
    let start_lobby = |addr: SocketAddr| -> (App, SocketAddr) {
        let mut app = App::new();
        app.add_plugins(MinimalPlugins);
        add_lobby(&mut app, &cfg, relay_addr).unwrap();
        let (remote, bound) = RemoteBus::listen(vec![Role::Lobby], addr, secret, hb, timeout).unwrap();
        app.insert_resource(remote).add_plugins(RemoteBusPlugin);
        (app, bound)
    };
    let (lobby, lobby_addr) = start_lobby("127.0.0.1:0".parse().unwrap());
    let connect = |role: Role| RemoteBus::connect(vec![role], lobby_addr, secret, hb, timeout).unwrap();
    let mut agent = App::new();
    agent.add_plugins(MinimalPlugins);
    add_agent(&mut agent, &cfg, None).unwrap();
    agent.insert_resource(connect(Role::Agent)).add_plugins(RemoteBusPlugin);
    let games: Vec<App> = (0..2u32)
        .map(|g| {
            let mut app = App::new();
            app.add_plugins(MinimalPlugins);
            add_games(&mut app, &cfg, &[(g, 0)], Some(relay_addr));
            app.insert_resource(connect(Role::Game(g))).add_plugins(RemoteBusPlugin);
            app
        })
        .collect();
    let login_addr = agent.world().resource::<ShardInfo>().shard_address().unwrap();
    let mut p = Procs { lobby: Some(lobby), agent, games };
    let wait = Duration::from_secs(5);
    let mut ana = Client::connect("ana", request_token(&login_addr, "ana", b"").unwrap());
    assert!(run_procs(&mut p, &mut [&mut ana], wait, &mut |_, cs| cs[0].renet.is_connected()));
    join_zone(&mut ana);
    assert!(run_procs(&mut p, &mut [&mut ana], wait, &mut |_, cs| !cs[0].entered.is_empty()));
    let ana_id = ana.player;
    let placed = |l: &Option<App>, name: &str| {
        l.as_ref()?.world().resource::<LobbyState>().clients.values().find(|c| c.name == name)?.placed
    };
    let ana_game = placed(&p.lobby, "ana").unwrap().1;

    // The Lobby process goes away (its store is flushed, its port freed) and comes back.
    p.lobby = None;
    // Down for 1.2 s: the others back off (100 ms doubling, capped at 2 s).
    run_procs(&mut p, &mut [&mut ana], Duration::from_millis(1200), &mut |_, _| false);
    let restarted = Instant::now();
    p.lobby = Some(start_lobby(lobby_addr).0);
    let relinked = run_procs(&mut p, &mut [&mut ana], wait, &mut |p, _| {
        let mut peers = p.lobby.as_ref().unwrap().world().resource::<RemoteBus>().peers();
        peers.sort_by_key(|r| format!("{r:?}"));
        peers == [Role::Agent, Role::Game(0), Role::Game(1)]
    });
    let relink_time = restarted.elapsed();
    assert!(relinked, "the Agent and both Game servers reconnected to the new Lobby");
    assert!(relink_time < Duration::from_secs(3), "within the 2 s backoff cap: {relink_time:?}");
    assert_eq!(p.agent.world().resource::<RemoteBus>().reconnects, 1);
    // The Agent re-announced ana; the Game's Positions told the Lobby where she plays.
    assert!(
        run_procs(&mut p, &mut [&mut ana], wait, &mut |p, _| placed(&p.lobby, "ana") == Some((0, ana_game))),
        "resync: the new Lobby knows ana's game server"
    );
    assert_eq!(ana.player, ana_id, "same player after the resync");
    assert_eq!(ana.entered.len(), 1, "ana kept playing: no re-entry");
    assert_eq!(ana.welcomes, 1, "one Welcome per Login, none from the new Lobby's resync");

    // A new client enters through the new Lobby, lands with ana and is introduced to her.
    let mut bob = Client::connect("bob", request_token(&login_addr, "bob", b"").unwrap());
    assert!(run_procs(&mut p, &mut [&mut ana, &mut bob], wait, &mut |_, cs| cs[1].renet.is_connected()));
    join_zone(&mut bob);
    let entered = run_procs(&mut p, &mut [&mut ana, &mut bob], wait, &mut |_, cs| {
        !cs[1].entered.is_empty() && cs[0].link_to("bob").is_some() && cs[1].link_to("ana").is_some()
    });
    assert!(entered, "bob entered after the restart and met ana: {:?} {:?}", bob.entered, bob.refused);
    println!(
        "lobby restart: links back in {relink_time:?}, bob in the zone {:?} after the restart",
        restarted.elapsed()
    );
    drop(p);
    drop(relay);
    let _ = std::fs::remove_file(&store);
}

/// Shard roles as separate apps ("processes"); the Lobby may be down.
struct Procs {
    lobby: Option<bevy::app::App>,
    agent: bevy::app::App,
    games: Vec<bevy::app::App>,
}

/// Step every app and client until `done` or `limit` (a bounded wait on real sockets).
fn run_procs(
    p: &mut Procs,
    clients: &mut [&mut Client],
    limit: Duration,
    done: &mut dyn FnMut(&Procs, &[&mut Client]) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(l) = p.lobby.as_mut() {
            l.update();
        }
        p.agent.update();
        for g in p.games.iter_mut() {
            g.update();
        }
        for c in clients.iter_mut() {
            c.pump();
        }
        if done(p, clients) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// A login service alone on loopback (no Agent behind it: tokens name a dummy address).
fn login_service(
    limits: p2pmodel_servers::shard::login::LoginLimits,
) -> p2pmodel_servers::shard::login::LoginServer {
    use p2pmodel_servers::shard::keys::TokenMinter;
    use p2pmodel_servers::shard::login::{
        LoginServer, LoginService, OnlineNames, OpenAccounts, login_public_key,
    };
    let cfg = config("login", &std::env::temp_dir().join("p2pm-login-unused.json"));
    let secret = cfg.shard.secret;
    let minter =
        TokenMinter::new(&secret, 1, vec!["127.0.0.1:9".parse().unwrap()], Duration::from_secs(60), 5);
    let online = OnlineNames::with_cap_per_ip(16);
    let check = Box::new(OpenAccounts::new(secret, online.clone()));
    let service = LoginService::new(&secret, minter, check, online, limits);
    LoginServer::start("127.0.0.1:0".parse().unwrap(), service, login_public_key(&secret)).unwrap()
}

/// Bytes the service sent back to `sock` within `wait`.
fn drain_bytes(sock: &UdpSocket, wait: Duration) -> usize {
    sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let (mut buf, mut got) = ([0u8; 2048], 0);
    let end = Instant::now() + wait;
    while Instant::now() < end {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            got += n;
        }
    }
    got
}

#[test]
fn login_over_loopback_right_key_wrong_key_short_requests_and_a_flood() {
    use p2pmodel_servers::shard::login::{LoginKey, LoginLimits, REQUEST_LEN};
    use std::sync::atomic::Ordering::Relaxed;
    let server = login_service(LoginLimits::default());
    let addr = ShardAddress::new(server.local_addr(), server.key());
    // The right key logs in.
    let t = request_token(&addr, "ana", b"").unwrap();
    assert_eq!(t.server_addresses[0], Some("127.0.0.1:9".parse().unwrap()));
    // A wrong key fails fast with the named error, not a timeout.
    let start = Instant::now();
    let e = request_token(&ShardAddress::new(addr.login, LoginKey([5; 32])), "bob", b"").unwrap_err();
    assert!(matches!(e, LoginError::KeyMismatch(_)), "{e}");
    assert!(e.to_string().contains("login key does not match"));
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());

    // 10,000 short requests (the old 12-byte login among them) from an unauthenticated
    // source: not one byte back.
    let spoofed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let before_in = server.stats.bytes_in.load(Relaxed);
    let before_out = server.stats.bytes_out.load(Relaxed);
    let mut sent = 0;
    for i in 0..10_000usize {
        let len = [12, 100, 600, REQUEST_LEN - 1][i % 4];
        let mut d = vec![0u8; len];
        d[..8].copy_from_slice(b"P2PMLGQ1");
        sent += spoofed.send_to(&d, addr.login).unwrap();
    }
    assert_eq!(drain_bytes(&spoofed, Duration::from_millis(500)), 0);
    // Wait until the service has read what the kernel kept (it may drop some under load).
    let mut last = u64::MAX;
    while server.stats.too_small.load(Relaxed) != last {
        last = server.stats.too_small.load(Relaxed);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(last > 0);
    let (bin, bout) =
        (server.stats.bytes_in.load(Relaxed) - before_in, server.stats.bytes_out.load(Relaxed) - before_out);
    println!(
        "short requests: {sent} bytes sent, {bin} received by the service, {bout} answered: amplification 0"
    );
    assert_eq!(bout, 0);

    // A flood of full-size, well-formed requests (garbage ciphertext) from one source: the
    // first 10 (the burst) get a 40-byte key notice, the rest nothing; another source (another
    // loopback IP) still logs in.
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut flood_in = 0;
    for i in 0..2_000u32 {
        let mut d = vec![0u8; REQUEST_LEN];
        d[..8].copy_from_slice(b"P2PMLGQ1");
        d[8..12].copy_from_slice(&i.to_le_bytes());
        flood_in += flood.send_to(&d, addr.login).unwrap();
    }
    let flood_out = drain_bytes(&flood, Duration::from_millis(500));
    let amp = flood_out as f64 / flood_in as f64;
    println!("flood from one source: {flood_in} bytes in, {flood_out} bytes out: amplification {amp:.5}");
    assert!(flood_out <= 10 * 40, "{flood_out}");
    assert!(server.stats.rate_limited_source.load(Relaxed) > 0);
    // Another source IP (127.0.0.2 is loopback too on Linux) still logs in.
    use p2pmodel_core::login::{ClientEvent, ClientLogin, LoginAnswer, LoginRequest};
    let other = UdpSocket::bind("127.0.0.2:0").unwrap();
    let (mut c, req) =
        ClientLogin::start(&addr.key, &LoginRequest { name: "cid".into(), credential: vec![] }).unwrap();
    other.send_to(&req, addr.login).unwrap();
    other.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = other.recv_from(&mut buf).expect("an answer for the other source");
    assert!(n <= REQUEST_LEN);
    assert!(matches!(c.read(&buf[..n]), ClientEvent::Answer(LoginAnswer::Token(_))));
}
