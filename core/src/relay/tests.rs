//! Behaviour tests of the relay, on virtual time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::endpoint::Endpoint;
use crate::proto::peer::{LinkId, PeerHeader, PeerKind, Side, TAG_LEN};
use crate::proto::relay::{BIND_LEN, BindAck, BindCookie, BindKey, BindRequest, MAX_PADDED_BIND, RelayToken};

const UNIX0: u64 = 1_700_000_000;
const HOUR: u64 = 3600;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A client of one side of one link, as the link code will drive it.
#[derive(Debug, Clone)]
struct Client {
    addr: SocketAddr,
    link: LinkId,
    side: Side,
    token: RelayToken,
    key: BindKey,
    counter: u64,
    cookie: BindCookie,
    last_ack: Option<BindAck>,
}

impl Client {
    fn new(keys: &TokenKeys, a: &str, link: u32, side: Side, ttl: u64) -> Client {
        let (token, key) = mint(keys, LinkId(link), side, (UNIX0 + ttl) as u32);
        Client {
            addr: addr(a),
            link: LinkId(link),
            side,
            token,
            key,
            counter: 1_000,
            cookie: BindCookie::NONE,
            last_ack: None,
        }
    }

    /// The next Bind (counter + 1, latest cookie).
    fn next_bind(&mut self) -> [u8; BIND_LEN] {
        self.counter += 1;
        BindRequest::encode(self.link, self.side, &self.token, &self.key, self.counter, self.cookie)
    }

    /// The next BindData carrying a peer datagram of `len` bytes, padded to `pad`.
    fn next_bind_data(&mut self, pn: u64, len: usize, pad: usize) -> Vec<u8> {
        self.counter += 1;
        let d = self.data(pn, len);
        BindRequest::encode_with_data(
            self.link,
            self.side,
            &self.token,
            &self.key,
            self.counter,
            self.cookie,
            &d,
            pad,
        )
        .expect("fits")
    }

    /// A peer datagram of `len` bytes (header + opaque body + tag) from this side.
    fn data(&self, pn: u64, len: usize) -> Vec<u8> {
        let mut d =
            PeerHeader { kind: PeerKind::Data, link: self.link, side: self.side, pn }.encode().to_vec();
        d.resize(len.max(d.len() + TAG_LEN), 0xa5);
        d
    }

    fn take_ack(&mut self, bytes: &[u8]) -> BindAck {
        let ack = BindAck::decode_verified(bytes, &self.key).expect("ack verifies");
        assert_eq!((ack.link, ack.side), (self.link, self.side));
        self.cookie = ack.cookie;
        self.last_ack = Some(ack);
        ack
    }
}

/// The peer-bound notification a Bind caused: its destination and bytes.
type Notified = Option<(SocketAddr, Vec<u8>)>;

/// A relay on virtual time with a byte ledger per address.
struct Harness {
    relay: Relay,
    keys: TokenKeys,
    t0: Instant,
    buf: ReplyBuf,
    received_from: HashMap<SocketAddr, u64>,
    emitted_to: HashMap<SocketAddr, u64>,
    /// Bytes sent to each address while the relay had not (yet) validated it.
    emitted_unvalidated: HashMap<SocketAddr, u64>,
    /// Addresses that were told (ack flag) they are validated.
    validated: std::collections::HashSet<SocketAddr>,
}

impl Harness {
    fn new(config: RelayConfig) -> Harness {
        let keys = TokenKeys::new(1, [0x11; 32]);
        let t0 = Instant::now();
        let relay = Relay::new(
            config,
            keys.clone(),
            ClockAnchor { at: t0, unix_micros: UNIX0 * 1_000_000 },
            [0x77; 32],
        );
        Harness {
            relay,
            keys,
            t0,
            buf: ReplyBuf::default(),
            received_from: HashMap::new(),
            emitted_to: HashMap::new(),
            emitted_unvalidated: HashMap::new(),
            validated: Default::default(),
        }
    }

    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    fn client(&self, a: &str, link: u32, side: Side) -> Client {
        Client::new(&self.keys, a, link, side, HOUR)
    }

    /// Hand one datagram to the relay and keep the byte ledger.
    fn send(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Action {
        *self.received_from.entry(from).or_default() += data.len() as u64;
        let action = self.relay.process(now, from, data, &mut self.buf);
        match action {
            Action::Forward { to } => self.emit(to, data.len(), false),
            Action::Reply { to, len, notify, forward, early } => {
                assert!(len <= data.len(), "reply larger than its request");
                // The validated flag (byte 14, bit 1) is readable without the key.
                self.emit(to, len, self.buf.reply[14] & 2 != 0);
                let early: Vec<usize> = self.buf.early_datagrams(early).map(|d| d.len()).collect();
                for l in early {
                    self.emit(to, l, false);
                }
                if let Some(n) = notify {
                    self.emit(n.to, n.len, self.buf.notify[14] & 2 != 0);
                }
                if let Some(e) = forward {
                    self.emit(e.to, e.len, false);
                }
            }
            Action::Drop(_) => {}
        }
        action
    }

    fn emit(&mut self, to: SocketAddr, len: usize, validated_now: bool) {
        if validated_now {
            self.validated.insert(to);
        }
        *self.emitted_to.entry(to).or_default() += len as u64;
        if !self.validated.contains(&to) {
            *self.emitted_unvalidated.entry(to).or_default() += len as u64;
        }
    }

    /// Send the client's next Bind; on success take the ack and return the notification's
    /// bytes too, if any.
    fn bind(&mut self, now: Instant, c: &mut Client) -> Result<(BindAck, Notified), DropReason> {
        let bytes = c.next_bind();
        match self.send(now, c.addr, &bytes) {
            Action::Reply { to, len, notify, .. } => {
                assert_eq!(to, c.addr);
                let reply = self.buf.reply[..len].to_vec();
                let ack = c.take_ack(&reply);
                assert_eq!(ack.counter, c.counter);
                assert_eq!(ack.observed, c.addr);
                Ok((ack, notify.map(|n| (n.to, self.buf.notify[..n.len].to_vec()))))
            }
            Action::Drop(r) => Err(r),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Bind, then bind again echoing the cookie: the address ends validated.
    fn bind_validated(&mut self, now: Instant, c: &mut Client) -> BindAck {
        self.bind(now, c).expect("bind");
        let (ack, _) = self.bind(now, c).expect("confirming bind");
        assert!(ack.validated);
        ack
    }

    fn stats(&self) -> &RelayStats {
        self.relay.stats()
    }

    /// Every address got at most what it sent while the relay had not validated it.
    fn assert_amplification_bound(&self) {
        for (a, sent) in &self.emitted_unvalidated {
            let got = self.received_from.get(a).copied().unwrap_or(0);
            assert!(*sent <= got, "{a}: relay sent {sent} B unvalidated but received only {got} B");
        }
    }
}

fn stats_balance(s: &RelayStats) {
    assert_eq!(
        s.received_packets,
        s.forwarded_packets + s.bind_acks_sent + s.dropped_total(),
        "every datagram is forwarded, answered or counted as dropped"
    );
}

#[test]
fn relay_forwards_only_between_two_bound_valid_sides() {
    let mut h = Harness::new(RelayConfig::default());
    let t = h.at(1.0);
    let mut a = h.client("198.51.100.1:4000", 7, Side::A);
    let mut b = h.client("203.0.113.2:5000", 7, Side::B);

    assert_eq!(h.send(t, a.addr, &a.data(1, 100)), Action::Drop(DropReason::UnknownBinding));

    let (ack, notify) = h.bind(t, &mut a).unwrap();
    assert!(!ack.peer_bound && !ack.validated && notify.is_none());
    assert_eq!(h.send(t, a.addr, &a.data(2, 100)), Action::Drop(DropReason::PeerNotBound));
    let ack = h.bind_validated(t, &mut a);
    assert!(!ack.peer_bound);

    // B binds: its ack says the peer is bound, and A is told so too.
    let (ack, notify) = h.bind(t, &mut b).unwrap();
    assert!(ack.peer_bound);
    let (to, bytes) = notify.expect("A is notified");
    assert_eq!(to, a.addr);
    assert!(bytes.len() <= BIND_LEN);
    let n = BindAck::decode_verified(&bytes, &a.key).unwrap();
    assert!(n.peer_bound && n.validated);
    assert_eq!(n.counter, a.counter);
    assert_eq!(n.observed, a.addr);
    assert!(BindAck::decode_verified(&bytes, &b.key).is_err());
    assert_eq!(h.stats().peer_notifications_sent, 1);

    // B is not validated yet: A's data to it is capped by what B sent (59 - 46 = 13 B left).
    assert_eq!(h.send(t, a.addr, &a.data(3, 100)), Action::Drop(DropReason::Amplification));
    // B → A flows (A is validated).
    assert_eq!(h.send(t, b.addr, &b.data(1, 100)), Action::Forward { to: a.addr });
    h.bind(t, &mut b).unwrap();
    assert!(b.last_ack.unwrap().validated);
    assert_eq!(h.send(t, a.addr, &a.data(4, 1200)), Action::Forward { to: b.addr });
    assert_eq!(h.send(t, b.addr, &b.data(2, 1200)), Action::Forward { to: a.addr });

    // Wrong source: A's route from B's address, B's route from a stranger.
    assert_eq!(h.send(t, b.addr, &a.data(5, 100)), Action::Drop(DropReason::WrongSource));
    let stranger = addr("192.0.2.99:1");
    assert_eq!(h.send(t, stranger, &b.data(3, 100)), Action::Drop(DropReason::WrongSource));
    // Another link, a truncated datagram, kinds a relay does not take.
    let other = h.client("198.51.100.1:4000", 8, Side::A);
    assert_eq!(h.send(t, a.addr, &other.data(1, 100)), Action::Drop(DropReason::UnknownBinding));
    assert_eq!(h.send(t, a.addr, &a.data(6, 100)[..29]), Action::Drop(DropReason::Malformed));
    assert_eq!(h.send(t, a.addr, &[0x31; 46]), Action::Drop(DropReason::UnexpectedKind));
    assert_eq!(h.send(t, a.addr, &[0x32; 30]), Action::Drop(DropReason::UnexpectedKind));
    assert_eq!(h.send(t, a.addr, &[]), Action::Drop(DropReason::Malformed));

    let s = h.stats();
    assert_eq!(s.forwarded_packets, 3);
    assert_eq!(s.forwarded_bytes, 2500);
    assert_eq!(s.active_bindings, 2);
    assert_eq!(s.addresses_validated, 2);
    assert_eq!(s.dropped(DropReason::WrongSource), 2);
    stats_balance(s);
    h.assert_amplification_bound();
}

#[test]
fn relay_rejects_expired_forged_and_unknown_key_binds() {
    let mut h = Harness::new(RelayConfig::default());
    let t = h.at(20.0);
    let keys = h.keys.clone();

    // Expired (at UNIX0 + 10, now is UNIX0 + 20).
    let mut c = Client::new(&keys, "198.51.100.1:4000", 7, Side::A, 10);
    assert_eq!(h.bind(t, &mut c).unwrap_err(), DropReason::ExpiredToken);
    // Expiring in 2 days: beyond the 24 h maximum.
    let mut c = Client::new(&keys, "198.51.100.1:4000", 7, Side::A, 48 * HOUR);
    assert_eq!(h.bind(t, &mut c).unwrap_err(), DropReason::TokenTooLong);

    // Forged token mac (the client even has a "matching" bind key).
    let mut c = h.client("198.51.100.1:4000", 7, Side::A);
    c.token.mac[0] ^= 1;
    assert_eq!(h.bind(t, &mut c).unwrap_err(), DropReason::BadToken);
    // A longer expiry under the old mac.
    let mut c = h.client("198.51.100.1:4000", 7, Side::A);
    c.token.expiry_unix_secs += 60;
    assert_eq!(h.bind(t, &mut c).unwrap_err(), DropReason::BadToken);
    // Another link's token (with its bind key) used for link 7.
    let mut c = h.client("198.51.100.1:4000", 8, Side::A);
    c.link = LinkId(7);
    assert_eq!(h.bind(t, &mut c).unwrap_err(), DropReason::BadToken);
    // Side B's token used for side A.
    let mut c = h.client("198.51.100.1:4000", 7, Side::B);
    c.side = Side::A;
    assert_eq!(h.bind(t, &mut c).unwrap_err(), DropReason::BadToken);
    // Unknown key id.
    let foreign = TokenKeys::new(9, [0x11; 32]);
    let mut c = Client::new(&foreign, "198.51.100.1:4000", 7, Side::A, HOUR);
    assert_eq!(h.bind(t, &mut c).unwrap_err(), DropReason::UnknownKey);
    // Valid token, wrong bind key; valid Bind with a flipped counter bit.
    let mut c = h.client("198.51.100.1:4000", 7, Side::A);
    c.key = BindKey([0x42; 32]);
    assert_eq!(h.bind(t, &mut c).unwrap_err(), DropReason::BadMac);
    let mut c = h.client("198.51.100.1:4000", 7, Side::A);
    let mut bytes = c.next_bind();
    bytes[34] ^= 1;
    assert_eq!(h.send(t, c.addr, &bytes), Action::Drop(DropReason::BadMac));
    // Wrong lengths.
    let bytes = c.next_bind();
    assert_eq!(h.send(t, c.addr, &bytes[..58]), Action::Drop(DropReason::Malformed));
    let mut long = bytes.to_vec();
    long.push(7);
    assert_eq!(h.send(t, c.addr, &long), Action::Drop(DropReason::Malformed));
    long.resize(MAX_PADDED_BIND + 1, 0);
    assert_eq!(h.send(t, c.addr, &long), Action::Drop(DropReason::Malformed));

    // None of that created state or sent a byte.
    assert_eq!(h.stats().active_bindings, 0);
    assert_eq!(h.stats().table_entries, 0);
    assert!(h.emitted_to.is_empty());
    stats_balance(h.stats());

    // A token valid now, then used after it expires: bind refused, traffic stops.
    let mut a = Client::new(&keys, "198.51.100.1:4000", 7, Side::A, 30);
    let mut b = Client::new(&keys, "203.0.113.2:5000", 7, Side::B, HOUR);
    h.bind_validated(t, &mut a);
    h.bind_validated(t, &mut b);
    assert_eq!(h.send(t, b.addr, &b.data(1, 80)), Action::Forward { to: a.addr });
    let late = h.at(31.0);
    assert_eq!(h.send(late, a.addr, &a.data(1, 80)), Action::Drop(DropReason::ExpiredToken));
    assert_eq!(h.send(late, b.addr, &b.data(2, 80)), Action::Drop(DropReason::PeerNotBound));
    assert_eq!(h.bind(late, &mut a).unwrap_err(), DropReason::ExpiredToken);
    // A fresh token (the shard refreshed it) re-binds the same side.
    let mut a2 = Client::new(&keys, "198.51.100.1:4000", 7, Side::A, HOUR);
    a2.counter = a.counter;
    let (ack, _) = h.bind(late, &mut a2).unwrap();
    assert!(ack.peer_bound);
}

#[test]
fn relay_rejects_replayed_binds_and_keeps_the_binding() {
    let mut h = Harness::new(RelayConfig::default());
    let t = h.at(1.0);
    let mut a = h.client("198.51.100.1:4000", 7, Side::A);
    let mut b = h.client("203.0.113.2:5000", 7, Side::B);
    h.bind_validated(t, &mut a);
    h.bind_validated(t, &mut b);
    let captured = BindRequest::encode(a.link, a.side, &a.token, &a.key, a.counter, a.cookie);

    // Same counter, same address (a duplicate) and from an attacker's address.
    assert_eq!(h.send(t, a.addr, &captured), Action::Drop(DropReason::Replay));
    let attacker = addr("192.0.2.66:6666");
    assert_eq!(h.send(t, attacker, &captured), Action::Drop(DropReason::Replay));
    // An older Bind captured earlier.
    let older = BindRequest::encode(a.link, a.side, &a.token, &a.key, a.counter - 1, BindCookie::NONE);
    assert_eq!(h.send(t, attacker, &older), Action::Drop(DropReason::Replay));
    assert_eq!(h.send(t, a.addr, &older), Action::Drop(DropReason::Replay));
    assert_eq!(h.stats().dropped(DropReason::Replay), 4);

    // The binding did not move: traffic still goes to A.
    assert_eq!(h.relay.binding(a.link, a.side, t).unwrap().addr, a.addr);
    assert_eq!(h.send(t, b.addr, &b.data(1, 200)), Action::Forward { to: a.addr });
    assert_eq!(h.send(t, attacker, &a.data(1, 200)), Action::Drop(DropReason::WrongSource));
    assert!(!h.emitted_to.contains_key(&attacker));

    // After both bindings idle out, the replay floor stays until the token expires.
    let later = h.at(120.0);
    h.relay.handle_timeout(later);
    assert_eq!(h.stats().active_bindings, 0);
    assert_eq!(h.send(later, attacker, &captured), Action::Drop(DropReason::Replay));
    assert!(h.relay.binding(a.link, a.side, later).is_none());
    // The owner, with a higher counter, binds again.
    assert!(h.bind(later, &mut a).is_ok());
    stats_balance(h.stats());
}

#[test]
fn relay_rebind_from_new_address_moves_binding_and_traffic_follows() {
    let mut h = Harness::new(RelayConfig::default());
    let t = h.at(1.0);
    let mut a = h.client("198.51.100.1:4000", 7, Side::A);
    let mut b = h.client("203.0.113.2:5000", 7, Side::B);
    h.bind_validated(t, &mut a);
    h.bind_validated(t, &mut b);
    assert_eq!(h.send(t, b.addr, &b.data(1, 300)), Action::Forward { to: a.addr });

    // A switches from Wi-Fi to mobile: new address, next counter, old cookie (not valid here).
    let old = a.addr;
    a.addr = addr("[2001:db8:1::5]:7000");
    let t2 = h.at(2.0);
    let (ack, notify) = h.bind(t2, &mut a).unwrap();
    assert!(ack.peer_bound && !ack.validated && notify.is_none());
    assert_eq!(h.stats().bindings_moved, 1);
    assert_eq!(h.stats().stale_cookies, 1);
    assert_eq!(h.send(t2, old, &a.data(9, 300)), Action::Drop(DropReason::WrongSource));

    // Unvalidated: the relay sends the new address no more than it received from it.
    // Received 59, sent the 58-byte (IPv6) ack: 1 byte of budget.
    assert_eq!(h.send(t2, b.addr, &b.data(2, 300)), Action::Drop(DropReason::Amplification));
    // A sends data from the new address (which is forwarded), raising its budget by 500.
    assert_eq!(h.send(t2, a.addr, &a.data(10, 500)), Action::Forward { to: b.addr });
    assert_eq!(h.send(t2, b.addr, &b.data(3, 300)), Action::Forward { to: a.addr });
    assert_eq!(h.send(t2, b.addr, &b.data(4, 300)), Action::Drop(DropReason::Amplification));
    // A echoes the cookie: validated, no more limit.
    let (ack, _) = h.bind(t2, &mut a).unwrap();
    assert!(ack.validated);
    for pn in 5..50 {
        assert_eq!(h.send(t2, b.addr, &b.data(pn, 1200)), Action::Forward { to: a.addr });
    }
    stats_balance(h.stats());
    h.assert_amplification_bound();
}

#[test]
fn relay_amplification_bound_holds_under_spoofed_flood() {
    let mut h = Harness::new(RelayConfig::default());
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let t = h.at(1.0);

    // A legit pair.
    let mut a = h.client("198.51.100.1:4000", 7, Side::A);
    let mut b = h.client("203.0.113.2:5000", 7, Side::B);
    h.bind_validated(t, &mut a);
    h.bind_validated(t, &mut b);

    // An attacker holding both tokens of link 9: binds side A from its own address and side
    // B with the victim's address spoofed, then floods "data" at the victim through us.
    let victim = addr("192.0.2.10:27015");
    let mut atk = h.client("192.0.2.66:6666", 9, Side::A);
    let mut spoofed = h.client("192.0.2.10:27015", 9, Side::B);
    h.bind_validated(t, &mut atk);
    assert!(h.bind(t, &mut spoofed).is_ok()); // the ack goes to the victim (≤ the Bind)
    // The attacker never sees the cookie; guessing one does not validate.
    spoofed.cookie = BindCookie([0x5a; 8]);
    assert!(!h.bind(t, &mut spoofed).unwrap().0.validated);
    // A few spoofed "data" datagrams as the victim raise its budget by exactly their size.
    for pn in 0..10 {
        h.send(t, victim, &spoofed.data(pn, 100));
    }
    for pn in 0..2_000 {
        let now = t + Duration::from_micros(pn * 500);
        h.send(now, atk.addr, &atk.data(pn, 1_000));
    }
    let to_victim = h.emitted_to[&victim];
    let from_victim = h.received_from[&victim];
    assert!(to_victim <= from_victim, "{to_victim} > {from_victim}");
    assert!(h.stats().dropped(DropReason::Amplification) >= 1_990);

    // Unauthenticated junk from 500 spoofed sources: nothing is ever sent to them.
    let mut sources = Vec::new();
    for i in 0..500u32 {
        sources.push(SocketAddr::from(([10, (i >> 8) as u8, i as u8, 1], 1000 + i as u16)));
    }
    for i in 0..20_000u64 {
        let from = sources[rng.random_range(0..sources.len())];
        let now = t + Duration::from_micros(i * 50);
        let mut d = match i % 4 {
            0 => a.data(i, rng.random_range(30..1200)), // someone else's route
            1 => spoofed.data(i, 100),
            2 => {
                let mut c = a.clone();
                c.addr = from;
                c.counter = rng.random();
                c.next_bind().to_vec() // a forged bind needs the key; flip a bit
            }
            _ => {
                let n = rng.random_range(0..100);
                (0..n).map(|_| rng.random()).collect()
            }
        };
        if i % 4 == 2 {
            let j = rng.random_range(0..d.len());
            d[j] ^= 1 << rng.random_range(0..8);
        }
        h.send(now, from, &d);
    }
    for s in &sources {
        assert!(!h.emitted_to.contains_key(s), "relay answered an unauthenticated source");
    }
    // The legit pair is unaffected.
    let later = t + Duration::from_secs(2);
    assert_eq!(h.send(later, a.addr, &a.data(1, 500)), Action::Forward { to: b.addr });
    h.assert_amplification_bound();
    stats_balance(h.stats());
}

#[test]
fn relay_link_quota_cuts_one_flow_while_another_continues() {
    let mut h = Harness::new(RelayConfig::default());
    let t = h.at(1.0);
    let mut fa = h.client("198.51.100.1:4000", 1, Side::A);
    let mut fb = h.client("203.0.113.1:4000", 1, Side::B);
    let mut ga = h.client("198.51.100.2:4000", 2, Side::A);
    let mut gb = h.client("203.0.113.2:4000", 2, Side::B);
    for c in [&mut fa, &mut fb, &mut ga, &mut gb] {
        h.bind_validated(t, c);
    }
    // Two seconds: flow F sends 10,000 × 1,000 B packets/s (5× the 2 MB/s quota), flow G a
    // game's 60 Hz of 200 B packets.
    let mut f_ok = 0u64;
    let mut g_ok = 0u64;
    let steps = 20_000u64;
    for i in 0..steps {
        let now = t + Duration::from_micros(i * 100);
        if h.send(now, fa.addr, &fa.data(i, 1_000)) == (Action::Forward { to: fb.addr }) {
            f_ok += 1;
        }
        if i % 167 == 0 && h.send(now, ga.addr, &ga.data(i, 200)) == (Action::Forward { to: gb.addr }) {
            g_ok += 1;
        }
    }
    let g_sent = steps.div_ceil(167);
    assert_eq!(g_ok, g_sent, "the well-behaved flow lost packets");
    // 2 s × 2 MB/s + 250 ms burst = 4.5 MB = 4,500 packets of 1,000 B.
    assert!((4_000..=4_501).contains(&f_ok), "flooding flow passed {f_ok}");
    assert_eq!(h.stats().dropped(DropReason::LinkQuota), steps - f_ok);
    stats_balance(h.stats());
}

#[test]
fn relay_source_quota_caps_an_address_across_its_links() {
    let config = RelayConfig {
        source_quota: Quota { packets_per_sec: 1_000, bytes_per_sec: 10_000_000 },
        ..RelayConfig::default()
    };
    let mut h = Harness::new(config);
    let t = h.at(1.0);
    // One client address with 8 relayed links, each peer elsewhere.
    let mut peers = Vec::new();
    let mut mine = Vec::new();
    for l in 0..8u32 {
        let mut m = h.client("198.51.100.1:4000", 10 + l, Side::A);
        let mut p = h.client(&format!("203.0.113.{}:4000", l + 1), 10 + l, Side::B);
        h.bind_validated(t, &mut m);
        h.bind_validated(t, &mut p);
        mine.push(m);
        peers.push(p);
    }
    let mut other_a = h.client("198.51.100.2:4000", 30, Side::A);
    let mut other_b = h.client("203.0.113.99:4000", 30, Side::B);
    h.bind_validated(t, &mut other_a);
    h.bind_validated(t, &mut other_b);

    // 500 pkt/s on each of 8 links = 4,000 pkt/s from one address, for 1 s.
    let mut ok = 0u64;
    let mut other_ok = 0u64;
    for i in 0..4_000u64 {
        let now = t + Duration::from_micros(i * 250);
        let m = &mine[(i % 8) as usize];
        if matches!(h.send(now, m.addr, &m.data(i, 100)), Action::Forward { .. }) {
            ok += 1;
        }
        if i % 10 == 0 && matches!(h.send(now, other_a.addr, &other_a.data(i, 100)), Action::Forward { .. }) {
            other_ok += 1;
        }
    }
    // 1 s × 1,000 pkt/s + 250 burst.
    assert!((1_000..=1_251).contains(&ok), "{ok}");
    assert_eq!(h.stats().dropped(DropReason::SourceQuota), 4_000 - ok);
    assert_eq!(h.stats().dropped(DropReason::LinkQuota), 0);
    assert_eq!(other_ok, 400);
}

#[test]
fn relay_key_rotation_accepts_previous_and_refuses_unknown() {
    let mut h = Harness::new(RelayConfig::default());
    let t = h.at(1.0);
    let mut shard = h.keys.clone();
    let mut old = Client::new(&shard, "198.51.100.1:4000", 1, Side::A, HOUR);

    shard.rotate(2, [0x22; 32]).unwrap();
    h.relay.keys_mut().rotate(2, [0x22; 32]).unwrap();
    let mut new = Client::new(&shard, "198.51.100.2:4000", 2, Side::A, HOUR);
    assert_eq!(new.token.key_id, 2);
    assert!(h.bind(t, &mut old).is_ok(), "previous key still valid");
    assert!(h.bind(t, &mut new).is_ok());

    shard.rotate(3, [0x33; 32]).unwrap();
    h.relay.keys_mut().rotate(3, [0x33; 32]).unwrap();
    assert_eq!(h.bind(t, &mut old).unwrap_err(), DropReason::UnknownKey);
    assert!(h.bind(t, &mut new).is_ok());
    let mut newest = Client::new(&shard, "198.51.100.3:4000", 3, Side::A, HOUR);
    assert!(h.bind(t, &mut newest).is_ok());
    // A relay that was not told about a rotation refuses the new key id.
    let mut stale = Harness::new(RelayConfig::default());
    let mut c = Client::new(&shard, "198.51.100.4:4000", 4, Side::A, HOUR);
    assert_eq!(stale.bind(t, &mut c).unwrap_err(), DropReason::UnknownKey);
}

#[test]
fn relay_bind_ack_is_never_larger_than_bind_v4_and_v6() {
    let mut h = Harness::new(RelayConfig::default());
    let t = h.at(1.0);
    let addrs = [
        "198.51.100.1:4000",
        "[2001:db8::1]:4000",
        "[::ffff:198.51.100.7]:4000",
        "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
    ];
    for (i, a) in addrs.iter().enumerate() {
        let mut ca = h.client(a, 100 + i as u32, Side::A);
        let mut cb = h.client(addrs[(i + 1) % addrs.len()], 100 + i as u32, Side::B);
        for c in [&mut ca, &mut cb] {
            let bytes = c.next_bind();
            match h.send(t, c.addr, &bytes) {
                Action::Reply { len, notify, .. } => {
                    assert!(len <= bytes.len(), "{a}: ack {len} > bind {}", bytes.len());
                    if let Some(n) = notify {
                        assert!(n.len <= BIND_LEN);
                    }
                    let ack = BindAck::decode_verified(&h.buf.reply[..len], &c.key).unwrap();
                    assert_eq!(ack.observed, crate::proto::relay::canonical(c.addr));
                }
                other => panic!("{other:?}"),
            }
        }
    }
    h.assert_amplification_bound();
}

#[test]
fn relay_idle_bindings_expire_and_table_drains() {
    let mut h = Harness::new(RelayConfig::default());
    let t = h.at(0.0);
    let mut a = h.client("198.51.100.1:4000", 7, Side::A);
    let mut b = h.client("203.0.113.2:5000", 7, Side::B);
    h.bind_validated(t, &mut a);
    h.bind_validated(t, &mut b);
    assert!(h.relay.poll_timeout().is_some());

    // A keeps talking; B falls silent.
    for s in [20.0, 40.0, 59.0] {
        assert_eq!(h.send(h.at(s), a.addr, &a.data(1, 64)), Action::Forward { to: b.addr });
    }
    let t61 = h.at(61.0);
    assert_eq!(h.send(t61, a.addr, &a.data(2, 64)), Action::Drop(DropReason::PeerNotBound));
    assert_eq!(h.send(t61, b.addr, &b.data(1, 64)), Action::Drop(DropReason::UnknownBinding));
    let deadline = h.relay.poll_timeout().unwrap();
    h.relay.handle_timeout(deadline.max(t61));
    assert_eq!(h.stats().active_bindings, 1);
    assert_eq!(h.stats().bindings_expired, 1);

    // B comes back (refresh Bind, higher counter): A is told at once.
    let t62 = h.at(62.0);
    let (ack, notify) = h.bind(t62, &mut b).unwrap();
    assert!(ack.peer_bound);
    assert_eq!(notify.unwrap().0, a.addr);

    // Everyone leaves: bindings idle out, then replay floors go when the tokens expire.
    let t200 = h.at(200.0);
    h.relay.handle_timeout(t200);
    assert_eq!(h.stats().active_bindings, 0);
    assert_eq!(h.stats().table_entries, 2);
    let after_expiry = h.at(HOUR as f64 + 1.0);
    h.relay.handle_timeout(after_expiry);
    assert_eq!(h.stats().table_entries, 0);
    assert_eq!(h.relay.poll_timeout(), None);
}

#[test]
fn relay_cookie_validates_only_its_own_address_within_its_window() {
    let mut h = Harness::new(RelayConfig::default());
    let t = h.at(10.0);
    let mut a = h.client("198.51.100.1:4000", 7, Side::A);
    h.bind(t, &mut a).unwrap();
    // Echoed 50 s later (next bucket): still valid.
    let (ack, _) = h.bind(h.at(50.0), &mut a).unwrap();
    assert!(ack.validated);

    let mut b = h.client("203.0.113.2:5000", 7, Side::B);
    h.bind(t, &mut b).unwrap();
    // Echoed 70 s later (two buckets on): stale, accepted but not validated.
    let (ack, _) = h.bind(h.at(70.0), &mut b).unwrap();
    assert!(!ack.validated);
    assert_eq!(h.stats().stale_cookies, 1);
    // A's cookie from B's address validates nothing.
    let mut b2 = b.clone();
    b2.cookie = a.cookie;
    let (ack, _) = h.bind(h.at(70.0), &mut b2).unwrap();
    assert!(!ack.validated);
    // B's fresh cookie does.
    b.counter = b2.counter;
    let (ack, _) = h.bind(h.at(71.0), &mut b).unwrap();
    assert!(ack.validated);
}

#[test]
fn relay_table_full_refuses_new_entries_only() {
    let mut h = Harness::new(RelayConfig { max_bindings: 2, ..RelayConfig::default() });
    let t = h.at(1.0);
    let mut a = h.client("198.51.100.1:4000", 7, Side::A);
    let mut b = h.client("203.0.113.2:5000", 7, Side::B);
    let mut c = h.client("203.0.113.3:5000", 8, Side::A);
    assert!(h.bind(t, &mut a).is_ok());
    assert!(h.bind(t, &mut b).is_ok());
    assert_eq!(h.bind(t, &mut c).unwrap_err(), DropReason::TableFull);
    assert!(h.bind(t, &mut a).is_ok(), "refreshing an existing entry still works");
}

#[test]
fn relay_endpoint_queues_unchanged_bytes_from_the_receiving_address() {
    let mut h = Harness::new(RelayConfig::default());
    let relay = std::mem::replace(
        &mut h.relay,
        Relay::new(
            RelayConfig::default(),
            h.keys.clone(),
            ClockAnchor { at: h.t0, unix_micros: UNIX0 * 1_000_000 },
            [0; 32],
        ),
    );
    let mut ep = RelayEndpoint::new(relay);
    let local = addr("203.0.113.250:3478");
    let t = h.at(1.0);
    let mut a = h.client("198.51.100.1:4000", 7, Side::A);
    let mut b = h.client("203.0.113.2:5000", 7, Side::B);
    let (a_addr, a_key) = (a.addr, a.key.clone());
    assert_eq!(ep.poll_timeout(), None);
    let mut notified = 0;
    for c in [&mut a, &mut b] {
        for _ in 0..2 {
            let bind = c.next_bind();
            ep.handle_datagram(t, local, c.addr, &bind);
            let tx = ep.poll_transmit().expect("ack");
            assert_eq!((tx.src, tx.dst), (Some(local), c.addr));
            c.take_ack(&tx.payload);
            if c.side == Side::B && c.last_ack.unwrap().counter == 1_001 {
                // B's first Bind made the link usable: A is told right after B's ack.
                let n = ep.poll_transmit().expect("A learns B bound");
                assert_eq!(n.dst, a_addr);
                assert!(BindAck::decode_verified(&n.payload, &a_key).unwrap().peer_bound);
                notified += 1;
            }
        }
    }
    assert_eq!(notified, 1);
    assert_eq!(ep.poll_transmit(), None);

    let d = a.data(1, 333);
    ep.handle_datagram(t, local, a.addr, &d);
    let tx = ep.poll_transmit().unwrap();
    assert_eq!(tx.payload, d, "forwarded bytes are unchanged, nothing added");
    assert_eq!((tx.src, tx.dst), (Some(local), b.addr));
    ep.handle_datagram(t, local, a.addr, &[0xff; 40]);
    assert_eq!(ep.poll_transmit(), None);
    assert_eq!(ep.relay().stats().dropped(DropReason::UnexpectedKind), 1);
    let deadline = ep.poll_timeout().unwrap();
    ep.handle_timeout(deadline + Duration::from_secs(120));
    assert_eq!(ep.relay().stats().active_bindings, 0);
}

#[test]
fn relay_fuzz_random_bytes_never_panic_and_every_datagram_is_counted() {
    let mut h = Harness::new(RelayConfig::default());
    let mut rng = ChaCha8Rng::seed_from_u64(0xF022);
    let t = h.at(1.0);
    let mut clients = Vec::new();
    for l in 0..4u32 {
        let mut a = h.client(&format!("198.51.100.{}:4000", l + 1), l, Side::A);
        let mut b = h.client(&format!("[2001:db8::{}]:5000", l + 1), l, Side::B);
        h.bind_validated(t, &mut a);
        if l % 2 == 0 {
            h.bind_validated(t, &mut b);
        } else {
            h.bind(t, &mut b).unwrap(); // left unvalidated
        }
        clients.push(a);
        clients.push(b);
    }
    let before = h.stats().clone();
    let mut buf = vec![0u8; 1500];
    for i in 0..100_000u64 {
        let now = t + Duration::from_micros(i * 20);
        let c = &mut clients[rng.random_range(0..8)];
        let from = if rng.random_bool(0.7) {
            c.addr
        } else {
            SocketAddr::from(([192, 0, 2, rng.random()], rng.random()))
        };
        let data: Vec<u8> = match rng.random_range(0..4) {
            // Pure random bytes, first byte biased to the kinds the relay parses.
            0 | 1 => {
                let n = rng.random_range(0..100);
                rng.fill(&mut buf[..n]);
                if n > 0 && rng.random_bool(0.6) {
                    buf[0] = *[0x20u8, 0x22, 0x25, 0x30, 0x31, 0x32].get(rng.random_range(0..6)).unwrap();
                }
                buf[..n].to_vec()
            }
            // A valid Bind with random bit flips and a random cut.
            2 => {
                let mut d = c.next_bind().to_vec();
                for _ in 0..rng.random_range(0..3) {
                    let j = rng.random_range(0..d.len());
                    d[j] ^= 1 << rng.random_range(0..8);
                }
                let cut = rng.random_range(0..=d.len());
                if rng.random_bool(0.1) {
                    d.truncate(cut);
                }
                d
            }
            // Plausible data with a mangled route.
            _ => {
                let mut d = c.data(i, rng.random_range(0..1400));
                if rng.random_bool(0.3) {
                    d[rng.random_range(0..6)] = rng.random();
                }
                d
            }
        };
        h.send(now, from, &data);
    }
    let s = h.stats();
    assert_eq!(s.received_packets - before.received_packets, 100_000);
    assert!(s.forwarded_packets > before.forwarded_packets);
    assert!(s.dropped(DropReason::Malformed) > 1_000);
    assert!(s.dropped(DropReason::UnexpectedKind) > 1_000);
    assert!(s.dropped(DropReason::WrongSource) > 1_000);
    assert!(s.dropped(DropReason::BadMac) + s.dropped(DropReason::BadToken) > 100);
    stats_balance(s);
    h.assert_amplification_bound();
    // Sweeps over whatever state the fuzz left behind are fine too.
    h.relay.handle_timeout(t + Duration::from_secs(30));
    h.relay.handle_timeout(t + Duration::from_secs(7200));
    assert_eq!(h.stats().active_bindings, 0);
}

/// Counts heap allocations made by the current thread, to check the hot path's
/// zero-allocation promise. (The only global allocator of this test binary; it forwards
/// to the system allocator.)
mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCS: Cell<u64> = const { Cell::new(0) };
    }

    struct Counting;

    // SAFETY: forwards every call unchanged to `System`; only bumps a thread-local counter.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            // SAFETY: same contract as the caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Allocations made by this thread so far.
    pub fn count() -> u64 {
        ALLOCS.with(|c| c.get())
    }
}

#[test]
fn relay_hot_path_does_not_allocate() {
    let mut h = Harness::new(RelayConfig::default());
    let t = h.at(1.0);
    let mut a = h.client("198.51.100.1:4000", 7, Side::A);
    let mut b = h.client("203.0.113.2:5000", 7, Side::B);
    h.bind_validated(t, &mut a);
    h.bind_validated(t, &mut b);
    let da = a.data(1, 1200);
    let db = b.data(1, 1200);
    let junk = [0x22u8; 40];
    let refresh = a.next_bind();
    let replay = refresh;
    let mut relay = std::mem::replace(
        &mut h.relay,
        Relay::new(
            RelayConfig::default(),
            h.keys.clone(),
            ClockAnchor { at: h.t0, unix_micros: UNIX0 * 1_000_000 },
            [0; 32],
        ),
    );
    let mut buf = ReplyBuf::default();
    // The counter sees allocations at all.
    let probe = alloc_count::count();
    drop(std::hint::black_box(vec![1u8; 8]));
    assert!(alloc_count::count() > probe);
    let before = alloc_count::count();
    let mut forwarded = 0;
    for i in 0..1_000u64 {
        let now = t + Duration::from_millis(i);
        for (from, d) in [(a.addr, &da), (b.addr, &db)] {
            if matches!(relay.process(now, from, d, &mut buf), Action::Forward { .. }) {
                forwarded += 1;
            }
        }
        relay.process(now, a.addr, &junk, &mut buf);
    }
    // A refresh Bind of an existing binding and a replayed one: no allocation either.
    assert!(matches!(relay.process(t, a.addr, &refresh, &mut buf), Action::Reply { .. }));
    assert_eq!(relay.process(t, a.addr, &replay, &mut buf), Action::Drop(DropReason::Replay));
    relay.handle_timeout(t + Duration::from_secs(5));
    let allocs = alloc_count::count() - before;
    assert_eq!(forwarded, 2_000);
    assert_eq!(allocs, 0, "the hot path allocated {allocs} times");
}

/// Bind `c` on `r` and echo the cookie: the address ends validated.
fn bind_validated_on(r: &mut Relay, now: Instant, c: &mut Client) {
    let mut buf = ReplyBuf::default();
    for _ in 0..2 {
        match r.process(now, c.addr, &c.next_bind(), &mut buf) {
            Action::Reply { len, .. } => {
                let reply = buf.reply[..len].to_vec();
                c.take_ack(&reply);
            }
            other => panic!("bind refused: {other:?}"),
        }
    }
    assert!(c.last_ack.is_some_and(|a| a.validated));
}

#[test]
fn relay_shared_limits_hold_across_the_relays_of_one_data_plane() {
    // Two relays, as two data-plane threads: links steered by link id (even → 0, odd → 1).
    let config = RelayConfig {
        source_quota: Quota { packets_per_sec: 1_000, bytes_per_sec: 10_000_000 },
        max_bindings: 10,
        ..RelayConfig::default()
    };
    let keys = TokenKeys::new(1, [0x11; 32]);
    let t0 = Instant::now();
    let run = |shared: Option<Arc<SharedLimits>>| {
        let mk = || {
            let r = Relay::new(
                config.clone(),
                keys.clone(),
                ClockAnchor { at: t0, unix_micros: UNIX0 * 1_000_000 },
                [0x77; 32],
            );
            match &shared {
                Some(s) => r.with_shared_limits(s.clone()),
                None => r,
            }
        };
        let mut relays = [mk(), mk()];
        let t = t0 + Duration::from_secs(1);
        // One client address with 4 relayed links, two on each relay; each peer elsewhere.
        let mut mine = vec![];
        for l in 0..4u32 {
            let link = 10 + l;
            let r = &mut relays[(link % 2) as usize];
            let mut m = Client::new(&keys, "198.51.100.1:4000", link, Side::A, HOUR);
            let mut p = Client::new(&keys, &format!("203.0.113.{}:4000", l + 1), link, Side::B, HOUR);
            bind_validated_on(r, t, &mut m);
            bind_validated_on(r, t, &mut p);
            mine.push(m);
        }
        // 4,000 pkt/s from the one address, spread over both relays, for 1 s.
        let mut buf = ReplyBuf::default();
        let mut ok = 0u64;
        for i in 0..4_000u64 {
            let now = t + Duration::from_micros(i * 250);
            let m = &mine[(i % 4) as usize];
            let r = &mut relays[(m.link.0 % 2) as usize];
            if matches!(r.process(now, m.addr, &m.data(i, 100), &mut buf), Action::Forward { .. }) {
                ok += 1;
            }
        }
        let quota_drops: u64 = relays.iter().map(|r| r.stats().dropped(DropReason::SourceQuota)).sum();
        assert_eq!(quota_drops, 4_000 - ok);
        (relays, ok)
    };

    // Without sharing, each relay applies the address's quota on its own: twice the quota.
    let (_, alone) = run(None);
    assert!(alone > 2_000, "{alone}");

    let shared = Arc::new(SharedLimits::default());
    let (mut relays, ok) = run(Some(shared.clone()));
    // Shared: one bucket for the address over both relays, 1 s × 1,000 pkt/s + 250 burst.
    assert!((1_000..=1_251).contains(&ok), "{ok}");
    assert_eq!(shared.sources(), 5, "the client and its four peers");

    // The table bound spans both relays: 8 entries exist, 2 more fit, then none on either.
    assert_eq!(shared.table_entries(), 8);
    let t = t0 + Duration::from_secs(3);
    for link in [20u32, 21] {
        let mut c = Client::new(&keys, "198.51.100.9:4000", link, Side::A, HOUR);
        bind_validated_on(&mut relays[(link % 2) as usize], t, &mut c);
    }
    let mut buf = ReplyBuf::default();
    for link in [22u32, 23] {
        let mut c = Client::new(&keys, "198.51.100.9:4000", link, Side::A, HOUR);
        let r = &mut relays[(link % 2) as usize];
        assert_eq!(r.process(t, c.addr, &c.next_bind(), &mut buf), Action::Drop(DropReason::TableFull));
    }
    let per_relay: u64 = relays.iter().map(|r| r.stats().table_entries).sum();
    assert_eq!(per_relay, 10);

    // Idle bindings end on both relays: the address is released; the replay floors go when
    // their tokens expire, and the shared count with them.
    for r in &mut relays {
        r.handle_timeout(t0 + Duration::from_secs(100));
    }
    assert_eq!(shared.sources(), 0);
    assert_eq!(shared.table_entries(), 10);
    for r in &mut relays {
        r.handle_timeout(t0 + Duration::from_secs(HOUR + 10));
    }
    assert_eq!(shared.table_entries(), 0);
}

/// What a BindData caused: the ack to its sender, the early datagrams delivered to it, and
/// the datagram forwarded to the other side.
struct BindDataOutcome {
    ack: BindAck,
    early: Vec<Vec<u8>>,
    forwarded: Option<(SocketAddr, Vec<u8>)>,
    notified: Option<SocketAddr>,
}

impl Harness {
    fn bind_data(
        &mut self,
        now: Instant,
        c: &mut Client,
        pn: u64,
        len: usize,
        pad: usize,
    ) -> BindDataOutcome {
        let bytes = c.next_bind_data(pn, len, pad);
        self.bind_bytes(now, c, &bytes)
    }

    fn bind_bytes(&mut self, now: Instant, c: &mut Client, bytes: &[u8]) -> BindDataOutcome {
        match self.send(now, c.addr, bytes) {
            Action::Reply { to, len, notify, forward, early } => {
                assert_eq!(to, c.addr);
                let ack = c.take_ack(&self.buf.reply[..len]);
                BindDataOutcome {
                    ack,
                    early: self.buf.early_datagrams(early).map(<[u8]>::to_vec).collect(),
                    forwarded: forward.map(|e| (e.to, bytes[e.start..e.start + e.len].to_vec())),
                    notified: notify.map(|n| n.to),
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn relay_bind_data_binds_and_holds_the_first_datagram_until_the_peer_binds() {
    let mut h = Harness::new(RelayConfig::default());
    let t = h.at(1.0);
    let mut a = h.client("198.51.100.1:4000", 7, Side::A);
    let mut b = h.client("203.0.113.2:5000", 7, Side::B);
    // A's first datagram carries its binding proof; B is not bound yet: held.
    let o = h.bind_data(t, &mut a, 0, 120, MAX_PADDED_BIND);
    assert!(!o.ack.peer_bound && o.forwarded.is_none() && o.early.is_empty());
    assert_eq!(h.stats().early_held, 1);
    assert!(h.relay.binding(LinkId(7), Side::A, t).is_some(), "the BindData bound A");
    // B binds (a padded Bind, as links send first): its ack, then A's datagram, unchanged.
    let bind = c_bind_padded(&mut b);
    let o = h.bind_bytes(t + Duration::from_millis(20), &mut b, &bind);
    assert!(o.ack.peer_bound);
    assert_eq!(o.early, vec![a.data(0, 120)]);
    assert_eq!(o.notified, Some(a.addr), "A learns its peer is bound");
    assert_eq!(h.stats().early_delivered, 1);
    // From now on a BindData's datagram is forwarded at once, both ways.
    let o = h.bind_data(t, &mut b, 0, 80, MAX_PADDED_BIND);
    assert_eq!(o.forwarded, Some((a.addr, b.data(0, 80))));
    let o = h.bind_data(t, &mut a, 1, 80, MAX_PADDED_BIND);
    assert_eq!(o.forwarded, Some((b.addr, a.data(1, 80))));
    assert_eq!(h.stats().bind_data_forwarded, 2);
    // A BindData whose counter is not above the last accepted one is a replay: no answer,
    // nothing forwarded.
    let mut old = b.clone();
    old.counter -= 1;
    let stale = old.next_bind_data(9, 80, 0);
    assert_eq!(h.send(t, b.addr, &stale), Action::Drop(DropReason::Replay));
    stats_balance(h.stats());
    h.assert_amplification_bound();
}

/// A padded Bind (what a link sends first), advancing the client's counter.
fn c_bind_padded(c: &mut Client) -> Vec<u8> {
    let mut v = c.next_bind().to_vec();
    v.resize(MAX_PADDED_BIND, 0);
    v
}

#[test]
fn relay_bind_data_hold_is_bounded_expires_and_never_amplifies() {
    let mut h = Harness::new(RelayConfig::default());
    let t = h.at(1.0);
    let mut a = h.client("198.51.100.1:4000", 7, Side::A);
    let mut b = h.client("203.0.113.2:5000", 7, Side::B);
    // Five datagrams before B binds: four are held, the fifth is dropped.
    for pn in 0..5 {
        h.bind_data(t, &mut a, pn, 1000, 0);
    }
    assert_eq!((h.stats().early_held, h.stats().early_dropped), (4, 1));
    // B binds with a bare 59-byte Bind: its budget (59 - 46 = 13 B) takes none of them.
    let bare = b.next_bind();
    let o = h.bind_bytes(t, &mut b, &bare);
    assert!(o.ack.peer_bound && o.early.is_empty());
    assert_eq!(h.stats().early_dropped, 5, "held datagrams the budget had no room for are dropped");
    h.assert_amplification_bound();

    // Held past `early_hold`: swept, not delivered.
    let mut c = h.client("198.51.100.1:4001", 8, Side::A);
    let mut d = h.client("203.0.113.2:5001", 8, Side::B);
    h.bind_data(t, &mut c, 0, 100, MAX_PADDED_BIND);
    let late = t + Duration::from_secs(3);
    h.relay.handle_timeout(late);
    assert_eq!(h.stats().early_dropped, 6);
    let bind = c_bind_padded(&mut d);
    assert!(h.bind_bytes(late, &mut d, &bind).early.is_empty());
    stats_balance(h.stats());

    // The global cap: with room for one datagram only, a second link's is dropped.
    let mut h = Harness::new(RelayConfig { max_early_bytes: 150, ..RelayConfig::default() });
    let mut a = h.client("198.51.100.1:4000", 7, Side::A);
    let mut c = h.client("198.51.100.1:4001", 8, Side::A);
    h.bind_data(t, &mut a, 0, 100, 0);
    h.bind_data(t, &mut c, 0, 100, 0);
    assert_eq!((h.stats().early_held, h.stats().early_dropped), (1, 1));
}

#[test]
fn relay_bind_data_that_is_malformed_or_forged_creates_nothing() {
    let mut h = Harness::new(RelayConfig::default());
    let t = h.at(1.0);
    let mut a = h.client("198.51.100.1:4000", 7, Side::A);
    let good = a.next_bind_data(0, 100, 0);
    // Truncations, a datagram of another link, non-zero padding, a flipped mac bit.
    for cut in [0, 1, 58, 60, 61, 90, good.len() - 1] {
        assert_eq!(h.send(t, a.addr, &good[..cut]), Action::Drop(DropReason::Malformed), "{cut}");
    }
    let mut other = good.clone();
    other[62..66].copy_from_slice(&8u32.to_be_bytes());
    assert_eq!(h.send(t, a.addr, &other), Action::Drop(DropReason::Malformed));
    let mut pad = good.clone();
    pad.push(1);
    assert_eq!(h.send(t, a.addr, &pad), Action::Drop(DropReason::Malformed));
    let mut forged = good.clone();
    forged[50] ^= 1;
    assert_eq!(h.send(t, a.addr, &forged), Action::Drop(DropReason::BadMac));
    assert_eq!((h.stats().active_bindings, h.stats().early_held), (0, 0));
    assert!(h.emitted_to.is_empty());
    stats_balance(h.stats());
}
