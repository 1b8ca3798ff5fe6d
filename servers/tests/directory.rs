//! Many shards, one directory (issue #16 §2), on loopback: three `p2pmodel shard all`
//! processes heartbeat to a directory; a client lists them and players join through the
//! listed addresses. Killing one shard drops it from the list within the expiry, its player
//! is disconnected (and joins another shard only because this "game" decides to), and the
//! players of the other shards keep their sessions and keep exchanging. A connect token minted
//! with shard A's secret is refused by shard B. Real processes and sockets need real time:
//! the waits below are bounds, the assertions are on what players and the directory see.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bevy::prelude::*;
use bevy_p2pmodel::client::directory::{ShardEntry, list_shards, pick_least_loaded};
use bevy_p2pmodel::client::login::{request_token, resolve_shard_address};
use bevy_p2pmodel::prelude::*;
use p2pmodel_core::directory::{Directory, DirectoryKey, DirectorySettings};
use p2pmodel_servers::directory::{DirectoryServer, ServiceLimits};
use p2pmodel_servers::embedded::update_until;
use renet::{ConnectionConfig, RenetClient};
use renet_netcode::{ClientAuthentication, ConnectToken, NetcodeClientTransport};

const EXPIRE: Duration = Duration::from_millis(1500);

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The shard processes; killed when the test ends, whatever happens.
struct Shards(Vec<(String, Child, PathBuf)>);

impl Drop for Shards {
    fn drop(&mut self) {
        for (_, c, _) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Shards {
    fn logs(&self) -> String {
        self.0
            .iter()
            .map(|(n, _, log)| format!("--- {n}:\n{}", std::fs::read_to_string(log).unwrap_or_default()))
            .collect()
    }
}

fn shard_toml(dir: &Path, name: &str, region: &str, secret: &[u8; 32], directory: SocketAddr) -> PathBuf {
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let text = format!(
        "[shard]\nname = \"{name}\"\nsecret = \"{hex}\"\nbind = \"127.0.0.1\"\nmetrics = \"\"\n\
         [relay]\nport = 0\nalternate_port = 0\nstats_log_interval_secs = 0\n\
         [agent]\nport = 0\nlogin_port = {}\nclient_timeout_secs = 3\nmax_clients_per_ip = 64\n\
         login_per_source_per_sec = 100\nlogin_per_source_burst = 100\n\
         [lobby]\nzones = 1\n[game]\nservers_per_zone = 1\n\
         [directory]\naddress = \"{directory}\"\nregion = \"{region}\"\nheartbeat_ms = 200\ncapacity = 50\n",
        free_udp_port()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[derive(Resource, Default)]
struct Talk {
    /// Messages received from peers, and when the last one came.
    got: usize,
    /// Was in game, then left it (any other state) at some frame.
    entered: bool,
    left: bool,
}

fn talk(
    mut t: ResMut<Talk>,
    peers: Res<PeerIndex>,
    mut got: MessageReader<P2pReceived>,
    state: Res<State<ShardState>>,
    mut sender: P2pSender,
    mut last_sent: Local<Option<Instant>>,
) {
    let now = Instant::now();
    if last_sent.is_none_or(|t| now - t > Duration::from_millis(100)) {
        for p in peers.0.keys() {
            let _ = sender.send(*p, Channel::Reliable, &"tick".to_string());
        }
        *last_sent = Some(now);
    }
    for _ in got.read() {
        t.got += 1;
    }
    let in_game = *state.get() == ShardState::InGame;
    t.left |= t.entered && !in_game;
    t.entered |= in_game;
}

fn player(name: &str, shard: ShardAddress) -> App {
    let mut mesh = P2pMeshPlugin::new(name);
    mesh.bind = "127.0.0.1:0".parse().unwrap();
    mesh.client.nat_timeout = Duration::from_millis(500);
    let mut app = App::new();
    app.add_plugins(MinimalPlugins).add_plugins((mesh, ShardClientPlugin::new(shard)));
    app.init_resource::<Talk>().add_systems(Update, talk);
    app.finish();
    app.cleanup();
    app
}

fn state(app: &App) -> ShardState {
    *app.world().resource::<State<ShardState>>().get()
}

fn me(app: &App) -> Option<PlayerId> {
    app.world().resource::<LocalPlayer>().player
}

fn got(app: &App) -> usize {
    app.world().resource::<Talk>().got
}

fn list(dir: &str) -> Vec<ShardEntry> {
    list_shards(dir, "", Duration::from_secs(2)).unwrap()
}

fn unix() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// Does a netcode client with `token` get connected within `limit`?
fn connects(token: ConnectToken, limit: Duration) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut t =
        NetcodeClientTransport::new(unix(), ClientAuthentication::Secure { connect_token: token }, socket)
            .unwrap();
    let mut renet = RenetClient::new(ConnectionConfig::default());
    let (start, mut last) = (Instant::now(), Instant::now());
    while start.elapsed() < limit {
        let now = Instant::now();
        if t.update(now - last, &mut renet).is_err() {
            return false;
        }
        renet.update(now - last);
        last = now;
        if renet.is_connected() {
            return true;
        }
        let _ = t.send_packets(&mut renet);
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn three_shards_one_directory_a_dead_shard_drops_out_and_the_others_are_untouched() {
    let tmp = std::env::temp_dir().join(format!("p2pm-directory-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let specs = [("eu-1", "eu"), ("eu-2", "eu"), ("us-1", "us")];
    let secrets: Vec<[u8; 32]> = specs.iter().map(|_| p2pmodel_servers::config::random_secret()).collect();
    // The directory holds the derived keys, no shard secret.
    let keys: HashMap<String, DirectoryKey> =
        specs.iter().zip(&secrets).map(|((n, _), s)| (n.to_string(), DirectoryKey::derive(s))).collect();
    // The test polls the list often from one IP: a generous rate limit.
    let settings = DirectorySettings {
        expire_after: EXPIRE,
        per_source_per_sec: 1000.0,
        per_source_burst: 1000.0,
        ..DirectorySettings::default()
    };
    let server = DirectoryServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Directory::new(keys, settings).unwrap(),
        ServiceLimits::default(),
    )
    .unwrap();
    let dir = server.local_addr().to_string();

    let mut shards = Shards(Vec::new());
    for ((name, region), secret) in specs.iter().zip(&secrets) {
        let config = shard_toml(&tmp, name, region, secret, server.local_addr());
        let log = tmp.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_p2pmodel"))
            .args(["shard", "all", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        shards.0.push((name.to_string(), child, log));
    }

    // Each registers; a client lists all three, sorted by region then name.
    let deadline = Instant::now() + Duration::from_secs(30);
    while list(&dir).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let listed = list(&dir);
    let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["eu-1", "eu-2", "us-1"], "{}", shards.logs());
    assert!(listed.iter().all(|e| e.capacity == 50 && e.population == 0 && e.open()), "{listed:?}");
    assert_eq!(list_shards(&dir, "us", Duration::from_secs(2)).unwrap().len(), 1);
    let address: HashMap<String, ShardAddress> =
        listed.iter().map(|e| (e.name.clone(), resolve_shard_address(&e.login).unwrap())).collect();

    // Two players on eu-1, two on eu-2, one on us-1, each logging in at the listed address.
    let mut a1 = player("ana", address["eu-1"]);
    let mut a2 = player("abe", address["eu-1"]);
    let mut b1 = player("bea", address["eu-2"]);
    let mut b2 = player("bob", address["eu-2"]);
    let mut c1 = player("cyd", address["us-1"]);
    let talking =
        update_until(&mut [&mut a1, &mut a2, &mut b1, &mut b2, &mut c1], Duration::from_secs(30), |apps| {
            apps.iter().all(|a| state(a) == ShardState::InGame) && apps[..4].iter().all(|a| got(a) >= 3)
        });
    assert!(
        talking,
        "states {:?}, got {:?}\n{}",
        [&a1, &a2, &b1, &b2, &c1].map(state),
        [&a1, &a2, &b1, &b2].map(got),
        shards.logs()
    );
    // The heartbeats report the population.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pops = vec![];
    while Instant::now() < deadline {
        pops = list(&dir).iter().map(|e| e.population).collect();
        if pops == [2, 2, 1] {
            break;
        }
        for a in [&mut a1, &mut a2, &mut b1, &mut b2, &mut c1] {
            a.update();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(pops, [2, 2, 1]);
    let ids_before = [&a1, &a2, &b1, &b2].map(me);

    // Kill us-1 (SIGKILL: no goodbye). It drops out of the list within the expiry (+ slack).
    let killed = Instant::now();
    let (_, child, _) = shards.0.iter_mut().find(|(n, _, _)| n == "us-1").unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let before_kill = [&a1, &a2, &b1, &b2].map(got);
    let gone =
        update_until(&mut [&mut a1, &mut a2, &mut b1, &mut b2, &mut c1], Duration::from_secs(10), |_| {
            list(&dir).iter().all(|e| e.name != "us-1")
        });
    let dropped_after = killed.elapsed();
    assert!(gone && dropped_after < EXPIRE + Duration::from_secs(2), "dropped after {dropped_after:?}");
    assert_eq!(list(&dir).iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["eu-1", "eu-2"]);

    // Its player loses the session (netcode timeout) and is not moved anywhere by itself: the
    // plugin tries to resume on its own shard (Reconnecting) or gives up (Disconnected).
    let lost =
        update_until(&mut [&mut a1, &mut a2, &mut b1, &mut b2, &mut c1], Duration::from_secs(15), |apps| {
            matches!(state(apps[4]), ShardState::Reconnecting | ShardState::Disconnected)
        });
    assert!(lost, "cyd is {:?}", state(&c1));
    c1.world_mut().write_message(ShardRequest::Disconnect);
    c1.update();
    // The other shards' players kept their sessions (same ids, never left the game) and
    // still exchange.
    update_until(&mut [&mut a1, &mut a2, &mut b1, &mut b2, &mut c1], Duration::from_secs(10), |apps| {
        apps[..4].iter().zip(before_kill).all(|(a, n)| got(a) >= n + 10)
    });
    for (i, a) in [&a1, &a2, &b1, &b2].into_iter().enumerate() {
        assert_eq!(state(a), ShardState::InGame);
        assert_eq!(me(a), ids_before[i]);
        assert!(
            got(a) >= before_kill[i] + 10,
            "player {i}: {} messages before the kill, {} now",
            before_kill[i],
            got(a)
        );
        assert!(!a.world().resource::<Talk>().left, "player {i} left the game at some point");
    }

    // The game decides to send cyd elsewhere: the least loaded listed shard (both have 2; by name).
    let pick = pick_least_loaded(&list(&dir)).unwrap().clone();
    assert_eq!(pick.name, "eu-1");
    let mut c2 = player("cyd", resolve_shard_address(&pick.login).unwrap());
    let rejoined =
        update_until(&mut [&mut a1, &mut a2, &mut b1, &mut b2, &mut c2], Duration::from_secs(15), |apps| {
            state(apps[4]) == ShardState::InGame
        });
    assert!(rejoined, "cyd on {}: {:?}", pick.name, state(&c2));

    // Each shard keeps its own secret: a token minted with eu-1's secret for eu-2's Agent is
    // refused there, while eu-2's own token connects.
    let own = request_token(&address["eu-2"], "tok", &[]).unwrap();
    let b_agent = own.server_addresses.iter().flatten().next().copied().unwrap();
    let forged = p2pmodel_servers::shard::keys::TokenMinter::new(
        &secrets[0],
        0x5032504d2d763031,
        vec![b_agent],
        Duration::from_secs(60),
        3,
    )
    .mint(own.client_id, "tok")
    .unwrap();
    assert!(!connects(forged, Duration::from_secs(3)), "eu-1's token must not open a session on eu-2");
    assert!(connects(own, Duration::from_secs(5)), "eu-2's own token connects");
    drop(shards);
    let _ = std::fs::remove_dir_all(&tmp);
}
