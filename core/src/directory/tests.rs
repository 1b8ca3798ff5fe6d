//! The directory with virtual time: registration and expiry, authentication failures,
//! least-loaded pick, limits, and the frame codec on hostile input.

use super::*;

const T0_UNIX: u64 = 1_700_000_000_000;
const KEY_A: DirectoryKey = DirectoryKey([1; 32]);
const KEY_B: DirectoryKey = DirectoryKey([2; 32]);
const LOGIN: &str = "0101010101010101010101010101010101010101010101010101010101010101@203.0.113.5:7001";
const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

fn settings() -> DirectorySettings {
    DirectorySettings { expire_after: Duration::from_secs(3), ..DirectorySettings::default() }
}

fn dir() -> Directory {
    let keys = HashMap::from([("eu-1".to_string(), KEY_A), ("eu-2".to_string(), KEY_B)]);
    Directory::new(keys, settings()).unwrap()
}

fn reg(name: &str, population: u32, unix_ms: u64) -> Registration {
    Registration {
        name: name.into(),
        region: "eu".into(),
        login: LOGIN.into(),
        population,
        capacity: 100,
        health: Health::Ok,
        unix_ms,
    }
}

/// Send `r` signed with `key` through the byte entry point, as the service does.
fn send(d: &mut Directory, now: Instant, unix: u64, r: &Registration, key: &DirectoryKey) -> Response {
    let payload = encode_request(&r.sign(key).unwrap()).unwrap();
    decode_response(&d.handle(now, unix, SRC, &payload)).unwrap()
}

fn list(d: &mut Directory, now: Instant, region: &str) -> Vec<ShardEntry> {
    let payload = encode_request(&Request::List { region: region.into() }).unwrap();
    match decode_response(&d.handle(now, T0_UNIX, SRC, &payload)).unwrap() {
        Response::Shards(s) => s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_registered_shard_is_listed_until_its_heartbeats_stop() {
    let mut d = dir();
    let t0 = Instant::now();
    assert_eq!(
        send(&mut d, t0, T0_UNIX, &reg("eu-1", 5, T0_UNIX), &KEY_A),
        Response::Registered { expire_ms: 3000 }
    );
    let l = list(&mut d, t0 + Duration::from_millis(500), "");
    assert_eq!(l.len(), 1);
    assert_eq!(
        (l[0].name.as_str(), l[0].login.as_str(), l[0].population, l[0].age_ms),
        ("eu-1", LOGIN, 5, 500)
    );
    // Heartbeats every second keep it listed well past the expiry.
    for i in 1..=10u64 {
        let now = t0 + Duration::from_secs(i);
        assert!(matches!(
            send(&mut d, now, T0_UNIX + i * 1000, &reg("eu-1", 5 + i as u32, T0_UNIX + i * 1000), &KEY_A),
            Response::Registered { .. }
        ));
    }
    assert_eq!(list(&mut d, t0 + Duration::from_secs(12), "")[0].population, 15);
    // Silent: still listed just before the expiry, gone at it.
    assert_eq!(list(&mut d, t0 + Duration::from_millis(12_999), "").len(), 1);
    assert!(list(&mut d, t0 + Duration::from_secs(13), "").is_empty());
    assert_eq!(d.stats().expired, 1);
}

#[test]
fn a_leaving_shard_drops_out_at_once_and_regions_filter() {
    let mut d = dir();
    let t0 = Instant::now();
    send(&mut d, t0, T0_UNIX, &reg("eu-1", 1, T0_UNIX), &KEY_A);
    let mut us = reg("eu-2", 1, T0_UNIX);
    us.region = "us".into();
    send(&mut d, t0, T0_UNIX, &us, &KEY_B);
    assert_eq!(list(&mut d, t0, "").iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["eu-1", "eu-2"]);
    assert_eq!(list(&mut d, t0, "us").len(), 1);
    assert!(list(&mut d, t0, "asia").is_empty());
    let mut leave = reg("eu-1", 0, T0_UNIX + 1);
    leave.health = Health::Leaving;
    assert!(matches!(send(&mut d, t0, T0_UNIX, &leave, &KEY_A), Response::Registered { .. }));
    assert_eq!(list(&mut d, t0, "").iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["eu-2"]);
}

#[test]
fn strangers_wrong_keys_replays_and_stale_clocks_are_refused() {
    let mut d = dir();
    let t0 = Instant::now();
    // A name without a key, and eu-1 claimed with eu-2's key (a key of shard B is worthless for A).
    assert_eq!(
        send(&mut d, t0, T0_UNIX, &reg("fake", 0, T0_UNIX), &KEY_A),
        Response::Refused(Refusal::UnknownShard)
    );
    assert_eq!(
        send(&mut d, t0, T0_UNIX, &reg("eu-1", 0, T0_UNIX), &KEY_B),
        Response::Refused(Refusal::BadMac)
    );
    // A tampered body (population changed after signing).
    let Request::Register { mut body, mac } = reg("eu-1", 3, T0_UNIX).sign(&KEY_A).unwrap() else {
        unreachable!()
    };
    let mut forged: Registration = codec::decode(&body, MAX_REQUEST).unwrap();
    forged.population = 0;
    body = codec::encode(&forged, MAX_REQUEST).unwrap();
    let payload = encode_request(&Request::Register { body, mac }).unwrap();
    assert_eq!(
        decode_response(&d.handle(t0, T0_UNIX, SRC, &payload)).unwrap(),
        Response::Refused(Refusal::BadMac)
    );
    // Clock: 31 s off either way.
    assert_eq!(
        send(&mut d, t0, T0_UNIX, &reg("eu-1", 0, T0_UNIX - 31_000), &KEY_A),
        Response::Refused(Refusal::Clock)
    );
    assert_eq!(
        send(&mut d, t0, T0_UNIX, &reg("eu-1", 0, T0_UNIX + 31_000), &KEY_A),
        Response::Refused(Refusal::Clock)
    );
    assert!(list(&mut d, t0, "").is_empty());
    // A genuine heartbeat, then its replay (same or older timestamp) is refused.
    let good = reg("eu-1", 3, T0_UNIX);
    assert!(matches!(send(&mut d, t0, T0_UNIX, &good, &KEY_A), Response::Registered { .. }));
    assert_eq!(send(&mut d, t0, T0_UNIX, &good, &KEY_A), Response::Refused(Refusal::Replay));
    assert_eq!(
        send(&mut d, t0, T0_UNIX, &reg("eu-1", 9, T0_UNIX - 1), &KEY_A),
        Response::Refused(Refusal::Replay)
    );
    // Replayed after it expired: still refused (the directory remembers the last timestamp).
    let later = t0 + Duration::from_secs(4);
    assert!(list(&mut d, later, "").is_empty());
    assert_eq!(send(&mut d, later, T0_UNIX + 4000, &good, &KEY_A), Response::Refused(Refusal::Replay));
    assert_eq!(d.stats().registered, 1);
}

#[test]
fn bad_fields_are_refused_after_the_mac_check() {
    let mut d = dir();
    let t0 = Instant::now();
    let mut r = reg("eu-1", 0, T0_UNIX);
    for (i, login) in [
        "not-an-address",
        "abcd@1.2.3.4:7001",
        &format!("{}@:7001", "01".repeat(32)),
        &format!("{}@h:0", "01".repeat(32)),
    ]
    .iter()
    .enumerate()
    {
        r.login = login.to_string();
        r.unix_ms = T0_UNIX + i as u64;
        assert_eq!(send(&mut d, t0, T0_UNIX, &r, &KEY_A), Response::Refused(Refusal::Invalid), "{login}");
    }
    r.login = format!("{}@play.example.com:7001", "01".repeat(32));
    r.region = "e u".into();
    r.unix_ms += 1;
    assert_eq!(send(&mut d, t0, T0_UNIX, &r, &KEY_A), Response::Refused(Refusal::Invalid));
    r.region = "eu".into();
    r.unix_ms += 1;
    assert!(
        matches!(send(&mut d, t0, T0_UNIX, &r, &KEY_A), Response::Registered { .. }),
        "host names are fine"
    );
}

#[test]
fn the_least_loaded_open_shard_is_picked() {
    let e = |name: &str, population, capacity, health| ShardEntry {
        name: name.into(),
        region: "eu".into(),
        login: LOGIN.into(),
        population,
        capacity,
        health,
        age_ms: 0,
    };
    let shards = vec![
        e("a", 50, 100, Health::Ok),
        e("b", 30, 100, Health::Ok),
        e("c", 10, 100, Health::Degraded),
        e("d", 0, 100, Health::Draining),
        e("e", 100, 100, Health::Ok),
        e("f", 60, 200, Health::Ok),
    ];
    assert_eq!(
        pick_least_loaded(&shards).unwrap().name,
        "b",
        "ratio, Ok before Degraded, draining and full skipped"
    );
    assert_eq!(pick_least_loaded(&shards[2..5]).unwrap().name, "c", "Degraded when nothing Ok is open");
    assert!(pick_least_loaded(&shards[3..5]).is_none());
    assert_eq!(pick_least_loaded(&[e("y", 1, 10, Health::Ok), e("x", 1, 10, Health::Ok)]).unwrap().name, "x");
}

#[test]
fn lists_are_rate_limited_per_source_and_sources_are_bounded() {
    let s =
        DirectorySettings { per_source_per_sec: 2.0, per_source_burst: 4.0, max_sources: 2, ..settings() };
    let mut d = Directory::new(HashMap::new(), s).unwrap();
    let t0 = Instant::now();
    let ask = |d: &mut Directory, now, ip: [u8; 4]| {
        let p = encode_request(&Request::List { region: String::new() }).unwrap();
        decode_response(&d.handle(now, T0_UNIX, IpAddr::from(ip), &p)).unwrap()
    };
    for _ in 0..4 {
        assert_eq!(ask(&mut d, t0, [10, 0, 0, 1]), Response::Shards(vec![]));
    }
    assert_eq!(ask(&mut d, t0, [10, 0, 0, 1]), Response::Refused(Refusal::RateLimited));
    assert_eq!(ask(&mut d, t0, [10, 0, 0, 2]), Response::Shards(vec![]), "another source has its own budget");
    assert_eq!(ask(&mut d, t0, [10, 0, 0, 3]), Response::Refused(Refusal::RateLimited), "the table is full");
    // Half a second refills one token; two seconds refill the buckets, and idle sources are forgotten.
    assert_eq!(ask(&mut d, t0 + Duration::from_millis(500), [10, 0, 0, 1]), Response::Shards(vec![]));
    assert_eq!(ask(&mut d, t0 + Duration::from_secs(3), [10, 0, 0, 3]), Response::Shards(vec![]));
    // Garbage costs tokens too.
    for _ in 0..4 {
        d.handle(t0 + Duration::from_secs(3), T0_UNIX, IpAddr::from([10, 0, 0, 9]), b"junk");
    }
    let r = d.handle(t0 + Duration::from_secs(3), T0_UNIX, IpAddr::from([10, 0, 0, 9]), b"junk");
    assert_eq!(decode_response(&r).unwrap(), Response::Refused(Refusal::RateLimited));
}

#[test]
fn keys_and_frames_are_bounded_and_garbage_is_refused() {
    let many: HashMap<String, DirectoryKey> = (0..=MAX_SHARDS).map(|i| (format!("s{i}"), KEY_A)).collect();
    assert!(Directory::new(many, settings()).unwrap_err().contains("at most"));
    assert!(Directory::new(HashMap::from([("bad name".into(), KEY_A)]), settings()).is_err());
    assert_eq!(frame_len(100u32.to_be_bytes(), MAX_REQUEST), Ok(100));
    assert!(frame_len(u32::MAX.to_be_bytes(), MAX_REQUEST).is_err());
    assert!(decode_request(b"PMD0\x00").is_err());
    assert!(decode_request(&[]).is_err());
    let mut d = dir();
    let r = d.handle(Instant::now(), T0_UNIX, SRC, b"PMD1\x01\xff\xff\xff\xff\xff");
    assert_eq!(decode_response(&r).unwrap(), Response::Refused(Refusal::Malformed));
    // A full list (MAX_SHARDS entries of the longest fields) fits an answer frame.
    let e = ShardEntry {
        name: "n".repeat(MAX_NAME),
        region: "r".repeat(MAX_NAME),
        login: "l".repeat(MAX_LOGIN),
        population: u32::MAX,
        capacity: u32::MAX,
        health: Health::Degraded,
        age_ms: u32::MAX,
    };
    assert!(encode_response(&Response::Shards(vec![e; MAX_SHARDS])).unwrap().len() <= MAX_RESPONSE);
}

#[test]
fn the_key_is_derived_from_the_secret_and_round_trips_as_hex() {
    let k = DirectoryKey::derive(&[7; 32]);
    assert_ne!(k, DirectoryKey::derive(&[8; 32]));
    assert_ne!(k.0, [7; 32]);
    assert_eq!(DirectoryKey::from_hex(&k.to_hex()), Some(k));
    assert_eq!(DirectoryKey::from_hex("zz"), None);
}

#[test]
fn the_documented_byte_layout_holds() {
    // docs/PROTOCOL.md "Directory": List { region: "eu" }.
    let p = encode_request(&Request::List { region: "eu".into() }).unwrap();
    assert_eq!(p, b"PMD1\x00\x02eu");
    assert_eq!(frame_header(&p), [0, 0, 0, 8]);
    assert_eq!(encode_response(&Response::Registered { expire_ms: 5000 }).unwrap(), b"PMD1\x01\xfb\x88\x13");
    assert_eq!(encode_response(&Response::Refused(Refusal::BadMac)).unwrap(), b"PMD1\x02\x02");
}
