//! Hostile renet payloads from logged-in players, over the real Agent (netcode secure mode,
//! loopback): the renet 2.0.1 slice crash, garbage after a valid header, an unknown channel
//! id, and the other renet bugs patched in `vendor/renet`. Each sender is dropped alone and
//! counted by reason; the shard does not panic and an honest player keeps playing.
//! Also: a stalled frame does not time clients out while the Agent's I/O has its own thread.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use p2pmodel_core::link::{Candidate, CandidateKind};
use p2pmodel_core::proto::shard::{ClientMessage, NatSummary, ShardMessage, decode, encode};
use p2pmodel_servers::config::ShardConfig;
use p2pmodel_servers::shard::agent::{AgentState, AgentTransport};
use p2pmodel_servers::shard::login::request_token;
use p2pmodel_servers::shard::metrics::ClientDropReason;
use p2pmodel_tests::shard_harness::{free_udp_port, start_shard};
use renet::{ConnectionConfig, DefaultChannel, RenetClient};
use renet_netcode::ConnectToken;
use renetcode::{ClientAuthentication, NetcodeClient};

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn unix() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

fn config(name: &str, store: &std::path::Path) -> ShardConfig {
    ShardConfig::parse(&format!(
        "[shard]\nname = \"{name}\"\nsecret = \"{SECRET}\"\nbind = \"127.0.0.1\"\n\
         [relay]\nport = 0\nalternate_port = 0\n\
         [agent]\nport = 0\nlogin_port = {}\n\
         [lobby]\nzones = 1\nstore = \"{}\"\nheartbeat_ms = 100\nheartbeat_timeout_ms = 1000\n\
         [game]\nservers_per_zone = 1\n",
        free_udp_port(),
        store.display()
    ))
    .unwrap()
}

/// QUIC varint, as renet's packets use.
fn varint(v: u64, out: &mut Vec<u8>) {
    if v < 1 << 6 {
        out.push(v as u8);
    } else if v < 1 << 14 {
        out.extend_from_slice(&(v as u16 | 0x4000).to_be_bytes());
    } else if v < 1 << 30 {
        out.extend_from_slice(&(v as u32 | 0x8000_0000).to_be_bytes());
    } else {
        out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes());
    }
}

/// A renet reliable slice packet (type 2) with a 1,200-byte payload.
fn renet_slice(seq: u64, channel: u8, message_id: u64, index: u64, num: u64) -> Vec<u8> {
    renet_slice_len(seq, channel, message_id, index, num, 1200)
}

/// A renet reliable slice packet (type 2) with a `len`-byte payload.
fn renet_slice_len(seq: u64, channel: u8, message_id: u64, index: u64, num: u64, len: usize) -> Vec<u8> {
    let mut p = vec![2];
    varint(seq, &mut p);
    p.push(channel);
    varint(message_id, &mut p);
    varint(index, &mut p);
    varint(num, &mut p);
    varint(len as u64, &mut p);
    p.extend(std::iter::repeat_n(0xAB, len));
    p
}

/// A renet small reliable packet (type 0).
fn renet_small(seq: u64, channel: u8, messages: &[(u64, &[u8])]) -> Vec<u8> {
    let mut p = vec![0];
    varint(seq, &mut p);
    p.push(channel);
    p.extend_from_slice(&(messages.len() as u16).to_be_bytes());
    for (id, m) in messages {
        varint(*id, &mut p);
        varint(m.len() as u64, &mut p);
        p.extend_from_slice(m);
    }
    p
}

/// A player driven by hand: renetcode's netcode client (so it can also send raw renet
/// payloads, encrypted with its session key like any other) and renet above it.
struct Player {
    name: String,
    netcode: NetcodeClient,
    renet: RenetClient,
    socket: UdpSocket,
    last: Instant,
    entered: bool,
    /// Position corrections from its Game server (a move it made too fast).
    corrections: usize,
}

impl Player {
    fn connect(name: &str, token: ConnectToken) -> Player {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let netcode =
            NetcodeClient::new(unix(), ClientAuthentication::Secure { connect_token: token }).unwrap();
        Player {
            name: name.into(),
            netcode,
            renet: RenetClient::new(ConnectionConfig::default()),
            socket,
            last: Instant::now(),
            entered: false,
            corrections: 0,
        }
    }

    fn send(&mut self, msg: &ClientMessage) {
        self.renet.send_message(DefaultChannel::ReliableOrdered, encode(msg).unwrap());
    }

    /// Send `payload` to the Agent as if renet had produced it.
    fn send_raw(&mut self, payload: &[u8]) {
        if let Ok((addr, packet)) = self.netcode.generate_payload_packet(payload) {
            let _ = self.socket.send_to(packet, addr);
        }
    }

    fn pump(&mut self) {
        let now = Instant::now();
        let dt = now - self.last;
        self.last = now;
        if let Some((packet, addr)) = self.netcode.update(dt) {
            let _ = self.socket.send_to(packet, addr);
        }
        let mut buf = [0u8; 1500];
        while let Ok((n, _)) = self.socket.recv_from(&mut buf) {
            if let Some(payload) = self.netcode.process_packet(&mut buf[..n]) {
                self.renet.process_packet(payload);
            }
        }
        if self.netcode.is_connected() {
            self.renet.set_connected();
        }
        self.renet.update(dt);
        for ch in [u8::from(DefaultChannel::ReliableOrdered), u8::from(DefaultChannel::Unreliable)] {
            while let Some(b) = self.renet.receive_message(ch) {
                match decode::<ShardMessage>(&b).expect("shard sends valid messages") {
                    ShardMessage::EnteredZone { .. } => self.entered = true,
                    ShardMessage::Correction { .. } => self.corrections += 1,
                    _ => {}
                }
            }
        }
        if self.netcode.is_connected() {
            for p in self.renet.get_packets_to_send() {
                self.send_raw(&p);
            }
        }
    }

    fn join_zone(&mut self) {
        let nat =
            NatSummary { class: "open".into(), dependent_mapping: false, port_delta: None, public: None };
        self.send(&ClientMessage::Login { name: self.name.clone() });
        let mesh: SocketAddr = "127.0.0.1:9".parse().unwrap();
        self.send(&ClientMessage::MeshInfo {
            candidates: vec![Candidate::new(CandidateKind::Host, mesh)],
            nat,
        });
        self.send(&ClientMessage::EnterZone { zone: 0 });
    }
}

struct Shard {
    app: bevy::app::App,
    login: p2pmodel_servers::shard::login::ShardAddress,
}

impl Shard {
    fn start(cfg: &ShardConfig) -> Shard {
        let (app, login) = start_shard(cfg);
        Shard { app, login }
    }

    fn transport(&self) -> &AgentTransport {
        self.app.world().resource::<AgentTransport>()
    }

    fn sessions(&self) -> usize {
        self.app.world().resource::<AgentState>().sessions.len()
    }
}

/// Step the shard and the players until `done` or `limit` (real sockets need real time).
fn run_until(
    shard: &mut Shard,
    players: &mut [Player],
    limit: Duration,
    mut done: impl FnMut(&Shard, &[Player]) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        shard.app.update();
        for p in players.iter_mut() {
            p.pump();
        }
        if done(shard, players) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn hostile_renet_payloads_drop_only_their_sender_and_an_honest_player_keeps_playing() {
    let store = std::env::temp_dir().join(format!("p2pm-hostile-renet-{}.json", std::process::id()));
    let cfg = config("hostile", &store);
    let mut shard = Shard::start(&cfg);
    let names = ["honest", "slicer", "garbler", "channeler", "futurist"];
    let mut players: Vec<Player> =
        names.iter().map(|n| Player::connect(n, request_token(&shard.login, n, b"").unwrap())).collect();
    let wait = Duration::from_secs(5);
    assert!(
        run_until(&mut shard, &mut players, wait, |_, ps| ps.iter().all(|p| p.netcode.is_connected())),
        "everyone connected"
    );
    for p in players.iter_mut() {
        p.join_zone();
    }
    assert!(
        run_until(&mut shard, &mut players, wait, |_, ps| ps.iter().all(|p| p.entered)),
        "everyone logged in and entered the zone"
    );
    assert_eq!(shard.sessions(), 5);

    // The hostile payloads, each sent by a logged-in player with its own session key.
    // renet 2.0.1's crash: message 1000 starts as 2 slices; the next slice claims 10 slices
    // and index 5 (an out-of-bounds index in renet's slice constructor: a panic that took down
    // the whole shard process).
    players[1].send_raw(&renet_slice(10_000, 2, 1000, 0, 2));
    players[1].send_raw(&renet_slice(10_001, 2, 1000, 5, 10));
    // A valid header announcing 65,535 messages, then garbage.
    let mut garbage = renet_small(10_000, 2, &[]);
    let n = garbage.len();
    garbage[n - 2..].copy_from_slice(&[0xff, 0xff]);
    garbage.extend_from_slice(&[0x01, 0x7f, 0xde, 0xad]);
    players[2].send_raw(&garbage);
    // A channel that does not exist.
    players[3].send_raw(&renet_small(10_000, 9, &[(0, b"hi")]));
    // A reliable message id far in the future (grew renet's maps without bound).
    players[4].send_raw(&renet_small(10_000, 2, &[(1 << 40, b"")]));
    // Not even netcode: raw datagrams from the honest player's address (what anyone who
    // spoofs its address can send) whose prefix claims a 15-byte sequence, or an 8-byte one
    // and no room for the tag (renetcode 2.0.0 panicked on both). Dropped; the player stays.
    let agent = shard.transport().addrs()[0];
    for bytes in [[0xF5u8; 40].to_vec(), {
        let mut b = vec![0u8; 18];
        b[0] = 0x85;
        b
    }] {
        players[0].socket.send_to(&bytes, agent).unwrap();
    }

    let dropped = run_until(&mut shard, &mut players, wait, |s, ps| {
        s.sessions() == 1 && ps[1..].iter().all(|p| p.netcode.is_disconnected())
    });
    let t = shard.transport();
    assert!(
        dropped,
        "the four hostile players are dropped: sessions {}, drops {:?}",
        shard.sessions(),
        ClientDropReason::ALL.map(|r| (r.label(), t.dropped(r)))
    );
    assert_eq!(t.dropped(ClientDropReason::RenetChannel), 2, "slice crash and message id window");
    assert_eq!(t.dropped(ClientDropReason::RenetDecode), 1, "garbage");
    assert_eq!(t.dropped(ClientDropReason::RenetChannelId), 1, "unknown channel");
    assert_eq!(t.dropped(ClientDropReason::RenetPanic), 0);
    assert_eq!(t.netcode_panics(), 0, "the patched renetcode refuses the spoofed headers");
    assert!(players[0].netcode.is_connected() && players[0].renet.is_connected());

    // The honest player keeps playing: its messages are still routed (a move too fast for the
    // speed limit goes to its Game server and a correction comes back), before and after more
    // hostile traffic from the dropped players.
    players[0].send(&ClientMessage::Move { tick: 1, x: 1.0e6, y: 0.0 });
    players[1].send_raw(&renet_slice(10_002, 2, 1000, 7, 10));
    assert!(
        run_until(&mut shard, &mut players, wait, |_, ps| ps[0].corrections > 0),
        "the honest player's move was answered"
    );
    assert_eq!(shard.sessions(), 1);
    assert_eq!(
        ClientDropReason::ALL.map(|r| shard.transport().dropped(r)).iter().sum::<u64>(),
        4,
        "counted once each"
    );
    drop(shard);
    let _ = std::fs::remove_file(&store);
}

/// The workspace resolves renet to the patched copy (`[patch.crates-io]`): the exact bytes
/// that crashed renet 2.0.1 now close the connection with a reason, on both sides of the API
/// the Agent (`RenetServer::process_packet_from`) and a link (`RenetClient::process_packet`)
/// call.
#[test]
fn the_workspace_renet_refuses_the_crashing_bytes_without_panicking() {
    use renet::{ChannelError, DisconnectReason, RenetServer};
    let cases: Vec<(Vec<Vec<u8>>, DisconnectReason)> = vec![
        // Out-of-bounds slice index (2.0.1: panic in `SliceConstructor::process_slice`).
        (
            vec![renet_slice(0, 2, 0, 0, 2), renet_slice(1, 2, 0, 5, 10)],
            DisconnectReason::ReceiveChannelError { channel_id: 2, error: ChannelError::InvalidSliceMessage },
        ),
        // A completing slice announcing another count (2.0.1: memory accounting underflow).
        (
            vec![renet_slice(0, 2, 0, 0, 2), renet_slice_len(1, 2, 0, 1, 5, 100)],
            DisconnectReason::ReceiveChannelError { channel_id: 2, error: ChannelError::InvalidSliceMessage },
        ),
        (vec![renet_small(0, 9, &[(0, b"x")])], DisconnectReason::ReceivedInvalidChannelId(9)),
        (
            vec![renet_small(0, 1, &[(1 << 40, b"")])],
            DisconnectReason::ReceiveChannelError {
                channel_id: 1,
                error: ChannelError::MessageIdOutOfWindow,
            },
        ),
    ];
    for (packets, reason) in cases {
        let mut server = RenetServer::new(ConnectionConfig::default());
        server.add_connection(1);
        let mut client = RenetClient::new(ConnectionConfig::default());
        client.set_connected();
        for p in &packets {
            server.process_packet_from(p, 1).unwrap();
            client.process_packet(p);
        }
        assert_eq!(server.disconnect_reason(1), Some(reason));
        assert_eq!(client.disconnect_reason(), Some(reason));
    }
}

/// renetcode 2.0.0 (netcode under renet) panicked on a 40-byte unauthenticated datagram
/// whose prefix byte claims a 15-byte sequence, from the server's address (spoofable) to a
/// game client, or from a client's address to the Agent; the patched copy refuses it.
#[test]
fn the_workspace_renetcode_refuses_an_oversized_sequence_prefix() {
    use renetcode::ConnectToken;
    let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let token = ConnectToken::generate(unix(), 7, 30, 1, 15, vec![addr], None, &[3; 32]).unwrap();
    let mut client =
        NetcodeClient::new(unix(), ClientAuthentication::Secure { connect_token: token }).unwrap();
    for prefix in [0xF5u8, 0x95, 0x85] {
        let mut buf = [0u8; 40];
        buf[0] = prefix;
        assert!(client.process_packet(&mut buf).is_none());
        let mut short = [0u8; 18];
        short[0] = prefix;
        assert!(client.process_packet(&mut short).is_none());
    }
}

/// Clients of a shard whose frame stalls for `stall` (the Game tick or any system blocked):
/// whether the player is still connected afterwards, and whether its Game server then answers
/// it (a move too fast for the speed limit comes back as a correction).
fn stall_the_frame(io_threads: usize, stall: Duration) -> (bool, bool) {
    let store =
        std::env::temp_dir().join(format!("p2pm-agent-stall-{io_threads}-{}.json", std::process::id()));
    let mut cfg = config("stall", &store);
    cfg.agent.client_timeout_secs = 1;
    cfg.agent.io_threads = io_threads;
    let mut shard = Shard::start(&cfg);
    let mut players = vec![Player::connect("ana", request_token(&shard.login, "ana", b"").unwrap())];
    let wait = Duration::from_secs(5);
    assert!(run_until(&mut shard, &mut players, wait, |_, ps| ps[0].netcode.is_connected()), "connected");
    players[0].join_zone();
    assert!(run_until(&mut shard, &mut players, wait, |_, ps| ps[0].entered), "entered the zone");
    // The frame does not run for longer than the netcode timeout; the player goes on.
    let until = Instant::now() + stall;
    while Instant::now() < until {
        players[0].pump();
        std::thread::sleep(Duration::from_millis(5));
    }
    let connected = players[0].netcode.is_connected();
    let before = players[0].corrections;
    players[0].send(&ClientMessage::Move { tick: 1, x: 1.0e6, y: 0.0 });
    let answered =
        run_until(&mut shard, &mut players, Duration::from_secs(3), |_, ps| ps[0].corrections > before);
    drop(shard);
    let _ = std::fs::remove_file(&store);
    (connected, answered)
}

/// The Agent's netcode I/O runs on its own thread (`agent.io_threads`, issue #16): a frame
/// that stalls for twice the client timeout does not cost a client its connection (the I/O
/// thread keeps answering its keepalives), and the messages it sent meanwhile reach the
/// roles once the frame runs again. With the I/O in the frame (`io_threads = 0`), the same
/// stall times the client out.
#[test]
fn a_stalled_frame_keeps_clients_connected_when_the_agent_io_has_its_own_thread() {
    let stall = Duration::from_millis(2500);
    assert_eq!(stall_the_frame(1, stall), (true, true), "own I/O thread: still connected, move answered");
    let (connected, answered) = stall_the_frame(0, stall);
    assert!(!connected && !answered, "I/O in the frame: the stall timed the client out");
}
