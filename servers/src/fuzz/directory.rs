//! The `directory_request` fuzz target: frames into the directory's network entry point
//! ([`Directory::handle`], what `p2pmodel directory` calls per TCP frame) from several sources as
//! virtual time passes, plus the frame header check.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use p2pmodel_core::directory::{
    Directory, DirectoryKey, DirectorySettings, Health, MAX_REQUEST, MAX_RESPONSE, Registration, Request,
    Response, decode_request, decode_response, encode_request, frame_len,
};

use super::targets::{advance, frame, frames};

const UNIX_MS: u64 = 1_700_000_000_000;
const KEY: DirectoryKey = DirectoryKey([0xd1; 32]);
const LOGIN: &str = "d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1@203.0.113.5:7001";

fn directory() -> Directory {
    let keys = HashMap::from([("eu-1".to_string(), KEY), ("us-1".to_string(), DirectoryKey([0xd2; 32]))]);
    Directory::new(keys, DirectorySettings::default()).expect("two valid keys")
}

/// Valid sessions: registrations (fresh, replayed, wrong key, leaving), lists, garbage.
pub fn seeds() -> Vec<Vec<u8>> {
    let reg = |name: &str, ms: u64, health| Registration {
        name: name.into(),
        region: "eu".into(),
        login: LOGIN.into(),
        population: 3,
        capacity: 100,
        health,
        unix_ms: UNIX_MS + ms,
    };
    let enc = |r: &Request| encode_request(r).unwrap_or_default();
    let signed = |r: Registration, k: &DirectoryKey| r.sign(k).map(|q| enc(&q)).unwrap_or_default();
    let list = enc(&Request::List { region: String::new() });
    let mut one = Vec::new();
    frame(&mut one, 0x00, &signed(reg("eu-1", 0, Health::Ok), &KEY));
    frame(&mut one, 0xa1, &list);
    frame(&mut one, 0xa0, &signed(reg("eu-1", 1000, Health::Degraded), &KEY));
    frame(&mut one, 0x00, &signed(reg("eu-1", 1000, Health::Ok), &KEY));
    frame(&mut one, 0xb2, &enc(&Request::List { region: "eu".into() }));
    frame(&mut one, 0x00, &signed(reg("us-1", 0, Health::Ok), &KEY));
    frame(&mut one, 0x00, &signed(reg("eu-1", 2000, Health::Leaving), &KEY));
    frame(&mut one, 0xc3, &list);
    let mut flood = Vec::new();
    for i in 0..30u8 {
        frame(&mut flood, i & 3, &list);
    }
    vec![one, flood, list, b"PMD1".to_vec(), vec![0, 0, 4, 0]]
}

/// Frames into one directory (sources by the selector's low nibble, time by its high
/// nibble); every answer must decode and fit an answer frame; a decoded request re-encodes
/// to a request that decodes the same. The input's first 4 bytes also go through the frame
/// header check.
pub fn directory_request(data: &[u8]) {
    if let Some(h) = data.get(..4) {
        let h: [u8; 4] = h.try_into().expect("4 bytes");
        if let Ok(n) = frame_len(h, MAX_REQUEST) {
            assert!(n <= MAX_REQUEST);
        }
    }
    let mut d = directory();
    let mut now = Instant::now();
    let mut unix = UNIX_MS;
    for (sel, body) in frames(data) {
        now += advance(sel);
        unix += advance(sel).as_millis() as u64;
        let from = IpAddr::from([198, 51, 100, sel & 0x0f]);
        let answer = d.handle(now, unix, from, body);
        assert!(answer.len() <= MAX_RESPONSE, "answer of {} bytes", answer.len());
        assert!(decode_response(&answer).is_ok(), "the directory's own answer must decode");
        if let Ok(Response::Shards(list)) = decode_response(&answer) {
            assert!(list.windows(2).all(|w| (&w[0].region, &w[0].name) < (&w[1].region, &w[1].name)));
        }
        if let Ok(req) = decode_request(body) {
            let again = encode_request(&req).expect("a decoded request re-encodes");
            assert_eq!(decode_request(&again).ok(), Some(req));
        }
    }
}
