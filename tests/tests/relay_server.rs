//! The relay server over real loopback sockets: the running data plane, its metrics
//! endpoint and its control plane. Every test opens its own sockets on free ports and stops
//! its server when it ends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use p2pmodel_core::proto::peer::{LinkId, Side};
use p2pmodel_core::proto::relay::{BindAck, BindCookie, BindRequest, RelayToken};
use p2pmodel_core::relay::{DropReason, Quota, RelayConfig, TokenKeys, mint};
use p2pmodel_servers::config::{RelayRoleConfig, ShardConfig};
use p2pmodel_servers::relay::client::{BindClient, peer_datagram};
use p2pmodel_servers::relay::{RelayRuntime, RelayServer, RelayServerOptions, StatsSnapshot, relay_app};

const WAIT: Duration = Duration::from_secs(5);

fn unix_now() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as u32
}

fn keys() -> TokenKeys {
    TokenKeys::new(7, [42; 32])
}

fn start_with(core: RelayConfig, metrics: bool) -> RelayServer {
    let mut o = RelayServerOptions::new(
        vec!["127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap()],
        core,
        keys(),
    );
    o.metrics = metrics.then(|| "127.0.0.1:0".parse().unwrap());
    RelayServer::start(o).expect("relay starts on free loopback ports")
}

fn start() -> RelayServer {
    start_with(RelayConfig::default(), false)
}

/// A relay with `threads` data-plane threads on one loopback port (no STUN-only port).
fn start_threads(core: RelayConfig, threads: usize) -> RelayServer {
    let mut o = RelayServerOptions::new(vec!["127.0.0.1:0".parse().unwrap()], core, keys());
    o.threads = threads;
    o.metrics = Some("127.0.0.1:0".parse().unwrap());
    let relay = RelayServer::start(o).expect("relay starts on a free loopback port");
    assert_eq!(relay.threads(), threads, "the kernel takes the steering program");
    relay
}

fn sock() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    s
}

fn client(link: u32, side: Side, keys: &TokenKeys) -> BindClient {
    let (t, k) = mint(keys, LinkId(link), side, unix_now() + 600);
    BindClient::new(LinkId(link), side, t, k)
}

/// Two validated sides of `link`.
fn pair(relay: &RelayServer, link: u32) -> (UdpSocket, UdpSocket) {
    let (a, b) = (sock(), sock());
    client(link, Side::A, &keys()).bind_validated(&a, relay.primary_addr(), WAIT).unwrap();
    client(link, Side::B, &keys()).bind_validated(&b, relay.primary_addr(), WAIT).unwrap();
    (a, b)
}

/// Wait (bounded) until the published counters satisfy `f`.
fn wait_for(relay: &RelayServer, what: &str, f: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = relay.snapshot();
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {s:#?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Everything that arrives on `s` until it has been quiet for `quiet`.
fn drain(s: &UdpSocket, quiet: Duration) -> Vec<Vec<u8>> {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut out = vec![];
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = s.recv_from(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// The next `n` relayed data datagrams on `s` (BindAcks skipped), waiting at most [`WAIT`].
fn recv_data(s: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = vec![];
    let mut buf = [0u8; 2048];
    while out.len() < n {
        let (len, _) = s.recv_from(&mut buf).expect("relayed datagram");
        if buf[0] == 0x22 {
            out.push(buf[..len].to_vec());
        }
    }
    out
}

fn data(link: u32, side: Side, pn: u64, len: usize) -> Vec<u8> {
    let mut b = [0u8; 1500];
    let n = peer_datagram(LinkId(link), side, pn, len, &mut b);
    b[..n].to_vec()
}

#[test]
fn relay_server_forwards_only_for_valid_tokens() {
    let relay = start();
    let (a, b) = pair(&relay, 1);
    let r = relay.primary_addr();
    for pn in 0..10 {
        a.send_to(&data(1, Side::A, pn, 100), r).unwrap();
    }
    let got = drain(&b, Duration::from_millis(300));
    assert_eq!(got.len(), 10);
    assert_eq!(got[3], data(1, Side::A, 3, 100), "forwarded unchanged");
    b.send_to(&data(1, Side::B, 0, 80), r).unwrap();
    // (A also got the peer-bound notification when B bound.)
    let back: Vec<_> = drain(&a, Duration::from_millis(300)).into_iter().filter(|d| d[0] == 0x22).collect();
    assert_eq!(back, vec![data(1, Side::B, 0, 80)], "both directions");

    // Data for a link nobody bound, and data claiming the bound side from another socket.
    let c = sock();
    c.send_to(&data(2, Side::A, 0, 100), r).unwrap();
    c.send_to(&data(1, Side::A, 0, 100), r).unwrap();
    // A Bind with link 1's token presented for link 3 (token mac covers link and side).
    let mut wrong = client(1, Side::A, &keys());
    wrong.link = LinkId(3);
    c.send_to(&wrong.next_bind(), r).unwrap();
    let s = wait_for(&relay, "three drops", |s| s.dropped_total() >= 3);
    assert_eq!(s.dropped(DropReason::UnknownBinding), 1);
    assert_eq!(s.dropped(DropReason::WrongSource), 1);
    assert_eq!(s.dropped(DropReason::BadToken), 1);
    assert!(drain(&c, Duration::from_millis(100)).is_empty(), "nothing answered");
    assert!(drain(&b, Duration::from_millis(50)).is_empty(), "nothing forwarded");
    assert_eq!(s.forwarded_packets, 11);
    assert_eq!(s.active_bindings, 2);
}

#[test]
fn relay_server_drops_datagrams_longer_than_its_buffer_instead_of_forwarding_them_cut() {
    use p2pmodel_servers::relay::batch::MAX_DATAGRAM;
    let relay = start();
    let (a, b) = pair(&relay, 1);
    let r = relay.primary_addr();
    // At the limit: forwarded whole. One byte more (and far more): dropped, counted, never
    // forwarded cut to the buffer size.
    let mut at_limit = data(1, Side::A, 0, 100);
    at_limit.resize(MAX_DATAGRAM, 7);
    a.send_to(&at_limit, r).unwrap();
    for (pn, len) in [(1u64, MAX_DATAGRAM + 1), (2, 3000), (3, 9000)] {
        let mut big = data(1, Side::A, pn, 100);
        big.resize(len, 7);
        a.send_to(&big, r).unwrap();
    }
    b.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let mut got = vec![];
    while let Ok((n, _)) = b.recv_from(&mut buf) {
        got.push(n);
    }
    assert_eq!(got, [MAX_DATAGRAM], "only the datagram that fits is forwarded");
    let s = wait_for(&relay, "truncated drops", |x| x.plane.truncated == 3);
    assert!(s.dropped_total() >= 3);
}

#[test]
fn relay_server_rejects_expired_forged_and_replayed_tokens() {
    let relay = start();
    let r = relay.primary_addr();
    let s1 = sock();

    // Expired: minted with the right key, expiry in the past.
    let (t, k) = mint(&keys(), LinkId(5), Side::A, unix_now() - 10);
    let mut expired = BindClient::new(LinkId(5), Side::A, t, k);
    s1.send_to(&expired.next_bind(), r).unwrap();
    // Forged: a token mac guessed, and a valid token under a key the relay does not hold.
    let (mut t, k) = mint(&keys(), LinkId(5), Side::A, unix_now() + 600);
    t.mac[0] ^= 1;
    s1.send_to(&BindClient::new(LinkId(5), Side::A, t, k).next_bind(), r).unwrap();
    let (t, k) = mint(&TokenKeys::new(9, [1; 32]), LinkId(5), Side::A, unix_now() + 600);
    s1.send_to(&BindClient::new(LinkId(5), Side::A, t, k).next_bind(), r).unwrap();
    // A genuine token with a Bind mac made without the bind key (token seen on the path).
    let (t, _) = mint(&keys(), LinkId(5), Side::A, unix_now() + 600);
    let stolen = BindRequest::encode(
        LinkId(5),
        Side::A,
        &t,
        &p2pmodel_core::proto::relay::BindKey([0; 32]),
        1,
        BindCookie::NONE,
    );
    s1.send_to(&stolen, r).unwrap();
    let s = wait_for(&relay, "four refusals", |s| s.dropped_total() >= 4);
    assert_eq!(s.dropped(DropReason::ExpiredToken), 1);
    assert_eq!(s.dropped(DropReason::BadToken), 1);
    assert_eq!(s.dropped(DropReason::UnknownKey), 1);
    assert_eq!(s.dropped(DropReason::BadMac), 1);
    assert!(drain(&s1, Duration::from_millis(100)).is_empty(), "no answer to a refused Bind");

    // Replay: a captured valid Bind, sent again from the same and from another address.
    let mut good = client(5, Side::A, &keys());
    let captured = good.next_bind();
    s1.send_to(&captured, r).unwrap();
    let got = drain(&s1, Duration::from_millis(200));
    assert_eq!(got.len(), 1);
    assert!(BindAck::decode_verified(&got[0], &good.key).is_ok());
    let s2 = sock();
    s1.send_to(&captured, r).unwrap();
    s2.send_to(&captured, r).unwrap();
    let s = wait_for(&relay, "two replays", |s| s.dropped(DropReason::Replay) >= 2);
    assert_eq!(s.dropped(DropReason::Replay), 2);
    assert!(drain(&s1, Duration::from_millis(100)).is_empty());
    assert!(drain(&s2, Duration::from_millis(50)).is_empty());
    assert_eq!(s.binds_accepted, 1);
    let _ = RelayToken::from_bytes(&t.to_bytes()).unwrap();
}

#[test]
fn relay_server_amplification_bound_holds_under_unauthenticated_flood() {
    let relay = start();
    let r = relay.primary_addr();
    let flood = sock();
    let mut sent_bytes = 0usize;
    let mut garbage = [0u8; 200];
    for i in 0..3000u32 {
        let pkt: Vec<u8> = match i % 5 {
            0 => data(i, Side::A, 0, 120),
            1 => {
                let mut c = client(i, Side::B, &TokenKeys::new(7, [0; 32]));
                c.next_bind().to_vec()
            }
            2 => {
                garbage[0] = (i % 256) as u8;
                garbage[1..5].copy_from_slice(&i.to_be_bytes());
                garbage.to_vec()
            }
            3 => vec![0x31; 46],
            _ => vec![0x30; 59],
        };
        sent_bytes += pkt.len();
        flood.send_to(&pkt, r).unwrap();
    }
    // garbage starting 0x00..=0x03 goes to the STUN server (which answers nothing unparsable)
    let s = wait_for(&relay, "the flood processed", |s| s.received_packets + s.plane.stun_unanswered >= 3000);
    assert_eq!(s.forwarded_packets, 0);
    assert_eq!(s.bind_acks_sent, 0);
    assert_eq!(s.plane.stun_answered, 0);
    assert_eq!(s.dropped_total(), 3000, "every datagram dropped (stun_unanswered included)");
    assert!(drain(&flood, Duration::from_millis(200)).is_empty(), "{sent_bytes} B sent, nothing back");

    // An address that bound but never returned its cookie gets at most what it sent.
    let (a, b) = (sock(), sock());
    client(9, Side::A, &keys()).bind_validated(&a, r, WAIT).unwrap();
    let ack = client(9, Side::B, &keys()).bind(&b, r, WAIT).unwrap();
    assert!(!ack.validated);
    let b_sent = 59;
    for pn in 0..50 {
        a.send_to(&data(9, Side::A, pn, 200), r).unwrap();
    }
    let s = wait_for(&relay, "the 50 datagrams", |s| s.dropped(DropReason::Amplification) >= 50);
    let b_got: usize = drain(&b, Duration::from_millis(200)).iter().map(Vec::len).sum();
    assert!(b_got <= b_sent, "unvalidated address got {b_got} B after sending {b_sent} B");
    assert_eq!(s.dropped(DropReason::Amplification), 50);
}

#[test]
fn relay_server_quota_cuts_the_flooding_flow_while_another_continues() {
    let core = RelayConfig {
        link_quota: Quota { packets_per_sec: 200, bytes_per_sec: 1_000_000 },
        quota_burst: Duration::from_millis(250),
        ..RelayConfig::default()
    };
    let relay = start_with(core, false);
    let r = relay.primary_addr();
    let (a1, b1) = pair(&relay, 1);
    let (a2, b2) = pair(&relay, 2);
    let started = Instant::now();
    for pn in 0..2000 {
        a1.send_to(&data(1, Side::A, pn, 100), r).unwrap();
    }
    for pn in 0..20 {
        a2.send_to(&data(2, Side::A, pn, 100), r).unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let got2 = drain(&b2, Duration::from_millis(300)).len();
    let got1 = drain(&b1, Duration::from_millis(50)).len();
    let s = relay.snapshot();
    assert_eq!(got2, 20, "the well-behaved flow keeps going");
    // Bucket: 50 packets of burst + 200/s while the flood lasted.
    let allowed = 50 + (200.0 * (elapsed + 0.5)) as usize;
    assert!(got1 <= allowed, "flooding flow got {got1} > {allowed}");
    assert!(got1 >= 50, "the burst passes: {got1}");
    assert!(s.dropped(DropReason::LinkQuota) >= (2000 - allowed) as u64, "{s:#?}");
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

#[test]
fn relay_server_metrics_endpoint_returns_the_counters() {
    let relay = start_with(RelayConfig::default(), true);
    let m = relay.metrics_addr().unwrap();
    let (a, b) = pair(&relay, 4);
    for pn in 0..25 {
        a.send_to(&data(4, Side::A, pn, 64), relay.primary_addr()).unwrap();
    }
    a.send_to(&data(99, Side::A, 0, 64), relay.primary_addr()).unwrap();
    assert_eq!(drain(&b, Duration::from_millis(300)).len(), 25);
    wait_for(&relay, "counters published", |s| s.forwarded_packets == 25 && s.dropped_total() == 1);
    let text = http_get(m, "/metrics");
    assert!(text.starts_with("HTTP/1.0 200 OK"), "{text}");
    for line in [
        "p2pmodel_relay_forwarded_packets_total 25",
        "p2pmodel_relay_forwarded_bytes_total 1600",
        "p2pmodel_relay_active_bindings 2",
        "p2pmodel_relay_dropped_packets_total{reason=\"unknown_binding\"} 1",
        "p2pmodel_relay_dropped_packets_total{reason=\"amplification\"} 0",
        "p2pmodel_relay_forward_latency_seconds_count 25",
        "p2pmodel_relay_forward_latency_seconds_bucket{le=\"+Inf\"} 25",
        "p2pmodel_relay_token_key_id 7",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    let p99 = text.lines().find(|l| l.starts_with("p2pmodel_relay_forward_latency_p99_seconds ")).unwrap();
    let v: f64 = p99.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(v > 0.0 && v < 0.1, "{p99}");
    assert!(http_get(m, "/health").ends_with("ok\n"));
    assert!(http_get(m, "/nope").starts_with("HTTP/1.0 404"));
    relay.shutdown();
    assert!(TcpStream::connect_timeout(&m, Duration::from_millis(500)).is_err(), "endpoint closed");
}

#[test]
fn relay_server_answers_stun_on_both_ports_and_rotates_keys() {
    let relay = start();
    let s = sock();
    let tid = p2pmodel_core::stun::TransactionId::new([5; 12]);
    let none = p2pmodel_core::stun::ChangeRequest::NONE;
    // Padded as our clients send it: the relay answers nothing larger than the request.
    let req = p2pmodel_core::stun::Message::padded_binding_request(tid, none).encode();
    let bare = p2pmodel_core::stun::Message::binding_request(tid, none).encode();
    for &port in relay.local_addrs() {
        s.send_to(&bare, port).unwrap();
        s.send_to(&req, port).unwrap();
        let mut buf = [0u8; 256];
        let (n, from) = s.recv_from(&mut buf).unwrap();
        assert_eq!(from, port, "answered from the socket asked");
        // the full STUN server answers: mapped address, and the RFC 5780 other address
        let msg = p2pmodel_core::stun::Message::decode(&buf[..n]).unwrap();
        assert_eq!(&buf[..2], &[1u8, 1][..], "binding success");
        assert_eq!(&buf[8..20], &[5u8; 12][..], "transaction id echoed");
        let mapped = msg.attributes.iter().find_map(|a| match a {
            p2pmodel_core::stun::Attribute::XorMappedAddress(x) => Some(*x),
            _ => None,
        });
        assert_eq!(mapped, Some(s.local_addr().unwrap()));
    }
    // RFC 5780 filtering test: "change port" is answered from the alternate port.
    let tid = p2pmodel_core::stun::TransactionId::new([6; 12]);
    let change = p2pmodel_core::stun::ChangeRequest { change_ip: false, change_port: true };
    let req = p2pmodel_core::stun::Message::padded_binding_request(tid, change).encode();
    s.send_to(&req, relay.local_addrs()[0]).unwrap();
    let mut buf = [0u8; 256];
    let (n, from) = s.recv_from(&mut buf).unwrap();
    assert_eq!(from, relay.local_addrs()[1], "answered from the other port");
    assert_eq!(p2pmodel_core::stun::Message::decode(&buf[..n]).unwrap().transaction_id, tid);
    // Relay datagrams on the STUN-only port are dropped.
    let mut c = client(1, Side::A, &keys());
    s.send_to(&c.next_bind(), relay.local_addrs()[1]).unwrap();
    // The two bare requests got nothing (their answers would have been larger).
    wait_for(&relay, "wrong-port drop", |x| {
        x.plane.not_relay_port == 1 && x.plane.stun_answered == 3 && x.plane.stun_unanswered == 2
    });

    // Rotation: a token under the new key binds; one two keys old is refused.
    let mut k = keys();
    k.rotate(8, [8; 32]).unwrap();
    relay.set_keys(k.clone());
    assert_eq!(relay.snapshot().current_key_id, 8);
    client(1, Side::A, &k).bind(&s, relay.primary_addr(), WAIT).unwrap();
    client(1, Side::B, &keys()).bind(&sock(), relay.primary_addr(), WAIT).unwrap();
    k.rotate(9, [9; 32]).unwrap();
    relay.set_keys(k);
    let old = sock();
    let mut c = client(2, Side::A, &keys());
    // Keys are applied by the data-plane thread within one loop; retry the Bind until then.
    let deadline = Instant::now() + WAIT;
    while relay.snapshot().dropped(DropReason::UnknownKey) == 0 {
        old.send_to(&c.next_bind(), relay.primary_addr()).unwrap();
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn relay_server_bevy_control_plane_runs_the_configured_relay() {
    let cfg = ShardConfig::parse(
        "[shard]\nname = \"t\"\nsecret = \"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"\n\
         bind = \"127.0.0.1\"\nmetrics = \"127.0.0.1:0\"\n[relay]\nport = 0\nalternate_port = 0\n",
    )
    .unwrap();
    let rt = RelayRuntime::start(&cfg).unwrap();
    let addr = rt.server.primary_addr();
    let metrics = rt.server.metrics_addr().unwrap();
    let keys = rt.schedule.minting_keys(unix_now() as u64);
    let mut app = relay_app(rt, false);
    for _ in 0..3 {
        app.update();
    }
    // Tokens minted from the shard secret (as the Game server will) bind.
    let (t, k) = mint(&keys, LinkId(3), Side::A, unix_now() + 60);
    BindClient::new(LinkId(3), Side::A, t, k).bind(&sock(), addr, WAIT).unwrap();
    // The data plane publishes its counters once per loop, after it answered the Bind.
    let deadline = Instant::now() + WAIT;
    loop {
        app.update();
        let text = http_get(metrics, "/metrics");
        if text.contains("p2pmodel_relay_binds_accepted_total 1") {
            break;
        }
        assert!(Instant::now() < deadline, "bind never counted: {text}");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(app);
    assert!(UdpSocket::bind(addr).is_ok(), "the relay's socket is closed when the app ends");
}

#[test]
fn relay_server_with_only_the_relay_key_binds_tokens_the_game_servers_mint() {
    let shard = ShardConfig::parse(
        "[shard]\nname = \"t\"\nsecret = \"7d3a91c4e25f086b1ac9d47e3f0b2865a4c1e97d0f3b5a28c6e4d1f09b7a3e52\"\n",
    )
    .unwrap();
    // What `p2pmodel relay-key` prints, written into the relay host's file: no shard secret.
    let relay_key = p2pmodel_servers::relay::RelayKey::derive(&shard.shard.secret).to_hex();
    let relay_cfg = RelayRoleConfig::parse(&format!(
        "[shard]\nname = \"t\"\nbind = \"127.0.0.1\"\n[relay]\nkey = \"{relay_key}\"\nport = 0\nalternate_port = 0\n"
    ))
    .unwrap();
    assert!(ShardConfig::parse(&format!("[shard]\nname = \"t\"\n[relay]\nkey = \"{relay_key}\"\n")).is_err());
    let rt = RelayRuntime::start(&relay_cfg).unwrap();
    let addr = rt.server.primary_addr();
    // The Game servers' minter (from the shard secret) and the relay (from the key) agree.
    let minter = p2pmodel_servers::shard::relay_schedule(&shard);
    let (t, k) = mint(&minter.minting_keys(unix_now() as u64), LinkId(4), Side::B, unix_now() + 60);
    BindClient::new(LinkId(4), Side::B, t, k).bind(&sock(), addr, WAIT).unwrap();
    // A token from another shard's secret is refused.
    let mut other = shard.clone();
    other.shard.secret[0] ^= 1;
    let other = p2pmodel_servers::shard::relay_schedule(&other);
    let (t, k) = mint(&other.minting_keys(unix_now() as u64), LinkId(5), Side::A, unix_now() + 60);
    assert!(
        BindClient::new(LinkId(5), Side::A, t, k).bind(&sock(), addr, Duration::from_millis(300)).is_err()
    );
}

#[test]
fn relay_server_config_errors_name_the_key() {
    let dir = std::env::temp_dir().join(format!("p2pm-relay-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("shard.toml");
    std::fs::write(&f, "[shard]\nname = \"x\"\nsecret = \"00\"\n").unwrap();
    let e = ShardConfig::load(&f).unwrap_err();
    assert_eq!(e.key(), Some("shard.secret"));
    assert!(e.to_string().contains("shard.toml") && e.to_string().contains("64 hex digits"), "{e}");
    std::fs::write(
        &f,
        "[shard]\nname = \"x\"\nsecret_file = \"s\"\n[relay.link_quota]\npackets_per_second = 5\n",
    )
    .unwrap();
    let e = ShardConfig::load(&f).unwrap_err().to_string();
    assert!(e.contains("packets_per_second"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn relay_server_steers_both_sides_of_every_link_to_one_thread_and_sums_their_stats() {
    for threads in [2usize, 4] {
        let relay = start_threads(RelayConfig::default(), threads);
        let r = relay.primary_addr();
        // 24 links, every side on its own socket (48 source addresses).
        let links: Vec<u32> = (0..24).map(|i| 1000 + i * 7).collect();
        let pairs: Vec<(UdpSocket, UdpSocket)> = links.iter().map(|&l| pair(&relay, l)).collect();
        for (&l, (a, b)) in links.iter().zip(&pairs) {
            for pn in 0..5 {
                a.send_to(&data(l, Side::A, pn, 100), r).unwrap();
            }
            b.send_to(&data(l, Side::B, 0, 90), r).unwrap();
        }
        for (&l, (a, b)) in links.iter().zip(&pairs) {
            let to_b = recv_data(b, 5);
            assert_eq!(to_b, (0..5).map(|pn| data(l, Side::A, pn, 100)).collect::<Vec<_>>(), "link {l}");
            assert_eq!(recv_data(a, 1), vec![data(l, Side::B, 0, 90)], "link {l}");
        }
        let total = links.len() as u64 * 6;
        let s = wait_for(&relay, "all forwarded", |s| s.forwarded_packets == total);
        let per = relay.thread_snapshots();
        assert_eq!(per.len(), threads);
        for (i, t) in per.iter().enumerate() {
            // Thread i holds exactly the links whose id ≡ i (mod threads), both sides.
            let mine = links.iter().filter(|&&l| l as usize % threads == i).count() as u64;
            assert_eq!(t.active_bindings, 2 * mine, "thread {i} of {threads}");
            assert_eq!(t.forwarded_packets, 6 * mine, "thread {i} of {threads}");
            assert_eq!(t.plane.misrouted, 0);
        }
        // The server's counters are the threads' sums.
        let sum = |f: fn(&StatsSnapshot) -> u64| per.iter().map(f).sum::<u64>();
        assert_eq!(s.active_bindings, sum(|t| t.active_bindings));
        assert_eq!(s.binds_accepted, sum(|t| t.binds_accepted));
        assert_eq!(s.received_packets, sum(|t| t.received_packets));
        assert_eq!(s.latency.iter().sum::<u64>(), total);
        assert_eq!(s.thread_forwarded, per.iter().map(|t| t.forwarded_packets).collect::<Vec<_>>());
        assert_eq!(s.dropped_total(), 0);
        let text = http_get(relay.metrics_addr().unwrap(), "/metrics");
        for line in [
            format!("p2pmodel_relay_data_plane_threads {threads}"),
            format!("p2pmodel_relay_forwarded_packets_total {total}"),
            format!("p2pmodel_relay_active_bindings {}", 2 * links.len()),
            format!(
                "p2pmodel_relay_thread_forwarded_packets_total{{thread=\"0\"}} {}",
                per[0].forwarded_packets
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}

#[test]
fn relay_server_answers_stun_on_any_thread() {
    let relay = start_threads(RelayConfig::default(), 2);
    let tid = p2pmodel_core::stun::TransactionId::new([5; 12]);
    let req =
        p2pmodel_core::stun::Message::padded_binding_request(tid, p2pmodel_core::stun::ChangeRequest::NONE)
            .encode();
    // 32 source ports: the kernel spreads them over the threads by 4-tuple hash.
    for _ in 0..32 {
        let s = sock();
        s.send_to(&req, relay.primary_addr()).unwrap();
        let mut buf = [0u8; 256];
        let (_, from) = s.recv_from(&mut buf).expect("answered");
        assert_eq!(from, relay.primary_addr());
    }
    wait_for(&relay, "32 answers", |s| s.plane.stun_answered == 32);
    let per = relay.thread_snapshots();
    assert!(per.iter().all(|t| t.plane.stun_answered > 0), "both threads answered: {per:#?}");
}

#[test]
fn relay_server_key_rotation_reaches_every_thread() {
    let relay = start_threads(RelayConfig::default(), 4);
    let r = relay.primary_addr();
    let mut k = keys();
    k.rotate(8, [8; 32]).unwrap();
    k.rotate(9, [9; 32]).unwrap();
    relay.set_keys(k.clone());
    let deadline = Instant::now() + WAIT;
    while !relay.thread_snapshots().iter().all(|t| t.current_key_id == 9) {
        assert!(Instant::now() < deadline, "a thread kept its old keys");
        std::thread::sleep(Duration::from_millis(2));
    }
    // On every thread (links 0..4 steer to threads 0..4): the newest key binds, the previous
    // one still does, the one before is forgotten.
    for link in 0..4u32 {
        let s = sock();
        client(link, Side::A, &k).bind(&s, r, WAIT).unwrap();
        client(link, Side::B, &TokenKeys::new(8, [8; 32])).bind(&s, r, WAIT).unwrap();
        s.send_to(&client(link + 100, Side::A, &keys()).next_bind(), r).unwrap();
    }
    wait_for(&relay, "old-key refusals", |s| s.dropped(DropReason::UnknownKey) == 4);
    for (i, t) in relay.thread_snapshots().iter().enumerate() {
        assert_eq!(t.binds_accepted, 2, "thread {i}");
        assert_eq!(t.dropped(DropReason::UnknownKey), 1, "thread {i}");
    }
}

#[test]
fn relay_server_source_quota_holds_across_threads() {
    let core = RelayConfig {
        source_quota: Quota { packets_per_sec: 200, bytes_per_sec: 10_000_000 },
        ..RelayConfig::default()
    };
    let relay = start_threads(core, 2);
    let r = relay.primary_addr();
    // One client socket with four links, two on each thread; each peer elsewhere.
    let me = sock();
    let peers: Vec<UdpSocket> = (0..4).map(|_| sock()).collect();
    for (l, p) in (0..4u32).zip(&peers) {
        client(l, Side::A, &keys()).bind_validated(&me, r, WAIT).unwrap();
        client(l, Side::B, &keys()).bind_validated(p, r, WAIT).unwrap();
    }
    drain(&me, Duration::from_millis(50));
    let started = Instant::now();
    for pn in 0..2000u64 {
        let l = (pn % 4) as u32;
        me.send_to(&data(l, Side::A, pn, 100), r).unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let got: usize = peers.iter().map(|p| drain(p, Duration::from_millis(200)).len()).sum();
    // One bucket for the address over both threads: 50 packets of burst + 200/s.
    let allowed = 50 + (200.0 * (elapsed + 0.5)) as usize;
    assert!(got <= allowed, "the address got {got} > {allowed} through two threads");
    assert!(got >= 50, "the burst passes: {got}");
    let per = relay.thread_snapshots();
    // Both threads saw half of the flood each, and drew from the one bucket.
    assert!(per.iter().all(|t| t.received_packets >= 1000), "{per:#?}");
    let s = wait_for(&relay, "quota drops", |s| s.dropped(DropReason::SourceQuota) as usize + got >= 2000);
    assert_eq!(s.dropped(DropReason::SourceQuota) as usize, 2000 - got);
    assert_eq!(relay.shared_limits().sources(), 5);
}

#[test]
fn relay_server_gso_and_gro_forward_every_datagram_in_order() {
    use p2pmodel_servers::relay::batch::{RecvBatch, SendBatch};
    use std::os::fd::AsRawFd;
    for (gso_send, gro_recv) in [(true, false), (true, true)] {
        let mut o =
            RelayServerOptions::new(vec!["127.0.0.1:0".parse().unwrap()], RelayConfig::default(), keys());
        o.threads = 2;
        o.gso_send = gso_send;
        o.gro_recv = gro_recv;
        let relay = RelayServer::start(o).unwrap();
        let r = relay.primary_addr();
        let (a, b) = pair(&relay, 6);
        // A burst of 40 datagrams of link 6 as one GSO message from the client.
        let mut burst = SendBatch::new(64, false);
        burst.set_gso(true);
        for pn in 0..40 {
            assert!(burst.push_copy(&data(6, Side::A, pn, 200), r));
        }
        assert_eq!(burst.flush(a.as_raw_fd(), &RecvBatch::new(1)).sent, 40);
        let got = recv_data(&b, 40);
        assert_eq!(
            got,
            (0..40).map(|pn| data(6, Side::A, pn, 200)).collect::<Vec<_>>(),
            "{gso_send} {gro_recv}"
        );
        let s = wait_for(&relay, "40 forwarded", |s| s.forwarded_packets == 40);
        assert_eq!(s.plane.misrouted, 0, "one link's burst stays on its thread");

        // One client socket with two links steered to different threads (6 → 0, 7 → 1)
        // sends one GSO burst mixing them. The kernel picks the socket for the whole burst
        // by its first datagram (with or without GRO on the relay's socket): thread 0 gets
        // link 7's half too and hands it to thread 1. Nothing is lost, order per link holds.
        let e = sock();
        client(7, Side::A, &keys()).bind_validated(&a, r, WAIT).unwrap();
        client(7, Side::B, &keys()).bind_validated(&e, r, WAIT).unwrap();
        let mut mixed = SendBatch::new(64, false);
        mixed.set_gso(true);
        for pn in 0..10u64 {
            assert!(mixed.push_copy(&data(6 + (pn % 2) as u32, Side::A, 100 + pn, 200), r));
        }
        assert_eq!(mixed.flush(a.as_raw_fd(), &RecvBatch::new(1)).sent, 10);
        let to_b = recv_data(&b, 5);
        assert_eq!(to_b, (0..5).map(|k| data(6, Side::A, 100 + 2 * k, 200)).collect::<Vec<_>>());
        let to_e = recv_data(&e, 5);
        assert_eq!(to_e, (0..5).map(|k| data(7, Side::A, 101 + 2 * k, 200)).collect::<Vec<_>>());
        let s = wait_for(&relay, "the mixed burst", |s| s.forwarded_packets == 50);
        assert_eq!((s.plane.misrouted, s.plane.handoff_dropped), (5, 0), "link 7's half handed over");
        let per = relay.thread_snapshots();
        assert_eq!(per[1].forwarded_packets, 5, "thread 1 relayed link 7");
    }
}

/// A BindData from `c` carrying `d`, padded to 1,200 bytes (as a link sends it unvalidated).
fn bind_data(c: &mut BindClient, d: &[u8]) -> Vec<u8> {
    c.counter += 1;
    BindRequest::encode_with_data(c.link, c.side, &c.token, &c.key, c.counter, c.cookie, d, 1200).unwrap()
}

#[test]
fn relay_server_zero_rtt_bind_data_is_held_until_the_peer_binds_then_forwarded_at_once() {
    for threads in [1usize, 2] {
        let relay = start_threads(RelayConfig::default(), threads);
        let r = relay.primary_addr();
        let (a, b) = (sock(), sock());
        let (mut ca, mut cb) = (client(77, Side::A, &keys()), client(77, Side::B, &keys()));
        // A's first datagram carries its binding; B has not bound: held, only A's ack comes back.
        let first = data(77, Side::A, 0, 120);
        a.send_to(&bind_data(&mut ca, &first), r).unwrap();
        let got = drain(&a, Duration::from_millis(100));
        assert_eq!(got.len(), 1);
        assert!(!BindAck::decode_verified(&got[0], &ca.key).unwrap().peer_bound);
        // B binds: its ack, then A's datagram, byte for byte.
        let mut bind = cb.next_bind().to_vec();
        bind.resize(1200, 0);
        b.send_to(&bind, r).unwrap();
        let got = drain(&b, Duration::from_millis(100));
        assert_eq!(got.len(), 2, "ack + held datagram ({threads} threads)");
        assert!(BindAck::decode_verified(&got[0], &cb.key).unwrap().peer_bound);
        assert_eq!(got[1], first);
        // Now B's BindData is forwarded at once (the datagram only), and A hears its peer bound.
        let reply = data(77, Side::B, 0, 80);
        b.send_to(&bind_data(&mut cb, &reply), r).unwrap();
        let got = drain(&a, Duration::from_millis(100));
        assert!(got.contains(&reply), "{threads} threads: {got:?}");
        let s = wait_for(&relay, "zero-rtt counters", |s| {
            s.core.early_delivered == 1 && s.core.bind_data_forwarded == 1
        });
        assert_eq!(s.core.early_held, 1);
    }
}

#[test]
fn relay_server_with_a_relay_id_accepts_only_its_own_tokens() {
    let secret = "7d3a91c4e25f086b1ac9d47e3f0b2865a4c1e97d0f3b5a28c6e4d1f09b7a3e52";
    let relays = "relays = [\"127.0.0.1:3478\", \"127.0.0.1:3479\"]";
    let shard =
        ShardConfig::parse(&format!("[shard]\nname = \"t\"\nsecret = \"{secret}\"\n{relays}\n")).unwrap();
    let relay_cfg = RelayRoleConfig::parse(&format!(
        "[shard]\nname = \"t\"\nbind = \"127.0.0.1\"\nsecret = \"{secret}\"\n{relays}\n[relay]\nid = 1\nport = 0\nalternate_port = 0\n"
    ))
    .unwrap();
    let rt = RelayRuntime::start(&relay_cfg).unwrap();
    let addr = rt.server.primary_addr();
    // The Game servers' schedules, one per relay.
    let minters = p2pmodel_servers::shard::shard_relays(&shard, None);
    assert_eq!(minters.len(), 2);
    let now = unix_now() as u64;
    let (t, k) = mint(&minters[1].keys.minting_keys(now), LinkId(4), Side::B, unix_now() + 60);
    BindClient::new(LinkId(4), Side::B, t, k).bind(&sock(), addr, WAIT).unwrap();
    // Relay 0's token (same shard, same link) is refused here.
    let (t, k) = mint(&minters[0].keys.minting_keys(now), LinkId(5), Side::A, unix_now() + 60);
    assert!(
        BindClient::new(LinkId(5), Side::A, t, k).bind(&sock(), addr, Duration::from_millis(300)).is_err()
    );
    let s = rt.server.snapshot();
    assert!(s.core.dropped(DropReason::BadToken) >= 1, "{s:#?}");
}
