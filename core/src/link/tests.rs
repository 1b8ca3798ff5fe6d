//! Link tests over a tiny two-host network with virtual time (no NAT: the simulator's
//! scenarios live in `tests/`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::crypto::LinkKey;

const A: &str = "10.0.0.1:4000";
const B: &str = "10.0.0.2:4000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Two links joined by a wire with a fixed one-way latency; `cut` drops everything.
struct Pair {
    now: Instant,
    a: Link,
    b: Link,
    latency: Duration,
    cut: bool,
    in_flight: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
}

impl Pair {
    fn new() -> Self {
        let now = Instant::now();
        let clock = ClockAnchor { at: now, unix_micros: 1_700_000_000_000_000 };
        let key = LinkKey([3; 32]);
        let params = |side, remote: &str| LinkParams {
            link: LinkId(5),
            side,
            key: key.clone(),
            remote: vec![Candidate::new(CandidateKind::Host, addr(remote))],
            remote_nat: NatHint::default(),
            relay: None,
        };
        let a = Link::new(now, params(Side::A, B), vec![], NatHint::default(), LinkConfig::default(), clock);
        let b = Link::new(now, params(Side::B, A), vec![], NatHint::default(), LinkConfig::default(), clock);
        Pair { now, a, b, latency: Duration::from_millis(20), cut: false, in_flight: BTreeMap::new(), seq: 0 }
    }

    fn pump(&mut self) {
        for (from, link) in [(addr(A), &mut self.a), (addr(B), &mut self.b)] {
            while let Some(t) = link.poll_transmit() {
                if !self.cut {
                    self.seq += 1;
                    self.in_flight.insert((self.now + self.latency, self.seq), (from, t.dst, t.payload));
                }
            }
        }
    }

    /// Advance to the next event, at most to `limit`.
    fn step(&mut self, limit: Instant) -> bool {
        self.pump();
        let next_packet = self.in_flight.keys().next().map(|k| k.0);
        let next = [next_packet, self.a.poll_timeout(), self.b.poll_timeout()].into_iter().flatten().min();
        let Some(next) = next.filter(|n| *n <= limit) else {
            self.now = limit;
            return false;
        };
        self.now = self.now.max(next);
        if next_packet == Some(next) {
            let (_, (from, to, bytes)) = self.in_flight.pop_first().unwrap();
            let link = if to == addr(A) { &mut self.a } else { &mut self.b };
            let _ = link.handle_peer(self.now, None, from, &bytes);
        } else {
            let now = self.now;
            if self.a.poll_timeout().is_some_and(|t| t <= now) {
                self.a.handle_timeout(now);
            }
            if self.b.poll_timeout().is_some_and(|t| t <= now) {
                self.b.handle_timeout(now);
            }
        }
        true
    }

    fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        while self.step(limit) {}
    }

    fn events(link: &mut Link) -> Vec<LinkEvent> {
        std::iter::from_fn(|| link.poll_event()).collect()
    }
}

#[test]
fn punches_direct_within_two_rtts_and_delivers_reliable_in_order() {
    let mut p = Pair::new();
    let start = p.now;
    p.run_for(Duration::from_millis(100));
    assert_eq!(p.a.path(), Path::Direct { remote: addr(B) });
    assert_eq!(p.b.path(), Path::Direct { remote: addr(A) });
    assert!(Pair::events(&mut p.a).contains(&LinkEvent::Path(Path::Direct { remote: addr(B) })));
    assert!(
        p.a.rtt().unwrap() >= Duration::from_millis(40) && p.a.rtt().unwrap() < Duration::from_millis(50)
    );
    let _ = start;
    for i in 0u32..500 {
        assert!(p.a.send(CHANNEL_RELIABLE, i.to_be_bytes().to_vec()));
        if i % 50 == 0 {
            p.run_for(Duration::from_millis(10));
        }
    }
    p.run_for(Duration::from_secs(1));
    let got: Vec<u32> = std::iter::from_fn(|| p.b.receive(CHANNEL_RELIABLE))
        .map(|b| u32::from_be_bytes(b[..4].try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..500).collect::<Vec<_>>());
}

#[test]
fn idle_link_sends_keepalives_and_stays_up() {
    let mut p = Pair::new();
    p.run_for(Duration::from_secs(120));
    assert!(!p.a.is_lost() && !p.b.is_lost());
    assert_eq!(p.a.path(), Path::Direct { remote: addr(B) });
    // about one keepalive (+ack) per 10 s each way, not a flood
    let sent = p.a.stats().direct_sent;
    assert!((8..=40).contains(&sent), "direct_sent = {sent}");
}

#[test]
fn cut_wire_is_detected_as_failed_path_then_lost_and_recovers() {
    let mut p = Pair::new();
    p.run_for(Duration::from_millis(200));
    p.cut = true;
    let cut_at = p.now;
    p.a.send(CHANNEL_RELIABLE, vec![1]);
    p.run_for(Duration::from_secs(1));
    let ev = Pair::events(&mut p.a);
    assert!(ev.iter().any(|e| matches!(e, LinkEvent::DirectPathFailed(_))), "{ev:?}");
    assert_eq!(p.a.path(), Path::None);
    p.run_for(Duration::from_secs(10));
    assert!(p.a.is_lost(), "lost after link_timeout");
    assert!(Pair::events(&mut p.a).contains(&LinkEvent::Lost));
    let _ = cut_at;
    p.cut = false;
    // the repunch timer brings it back without any help
    p.run_for(Duration::from_secs(15));
    assert!(!p.a.is_lost());
    assert_eq!(p.a.path(), Path::Direct { remote: addr(B) });
    let got: Vec<_> = std::iter::from_fn(|| p.b.receive(CHANNEL_RELIABLE)).collect();
    assert_eq!(got, vec![Bytes::from(vec![1u8])], "message sent during the outage arrives exactly once");
}

#[test]
fn keepalive_off_sends_nothing_when_idle() {
    let mut p = Pair::new();
    p.a.cfg.keepalive = false;
    p.b.cfg.keepalive = false;
    p.run_for(Duration::from_millis(500));
    let before = p.a.stats().direct_sent;
    p.run_for(Duration::from_secs(60));
    assert_eq!(p.a.stats().direct_sent, before);
}

#[test]
fn hostile_introduction_is_capped_deduplicated_and_clamped_in_new() {
    let now = Instant::now();
    let clock = ClockAnchor { at: now, unix_micros: 1_700_000_000_000_000 };
    // 100,000 candidates (mostly one address repeated, then many distinct srflx ports) and
    // an extreme port step: Link::new neither panics nor spends quadratic time.
    let mut remote = vec![Candidate::new(CandidateKind::Host, addr(B)); 50_000];
    remote.extend((0..50_000u32).map(|i| {
        Candidate::new(
            CandidateKind::ServerReflexive,
            SocketAddr::new([198, 51, 100, 7].into(), (i % 65_535 + 1) as u16),
        )
    }));
    for delta in [i32::MIN, i32::MAX, -1] {
        let params = LinkParams {
            link: LinkId(5),
            side: Side::A,
            key: LinkKey([3; 32]),
            remote: remote.clone(),
            remote_nat: NatHint { dependent_mapping: true, port_delta: Some(delta) },
            relay: None,
        };
        let cfg = LinkConfig::default();
        let cap = cfg.max_candidates;
        let link = Link::new(now, params, vec![], NatHint::default(), cfg, clock);
        assert_eq!(link.remote.len(), cap, "delta {delta}");
        let set: std::collections::HashSet<_> = link.remote.iter().map(|r| r.cand.addr).collect();
        assert_eq!(set.len(), cap, "no duplicate address");
        assert_eq!(link.remote.iter().filter(|r| r.cand.addr == addr(B)).count(), 1);
        let expect_delta = (delta == -1).then_some(-1);
        assert_eq!(link.remote_nat.port_delta, expect_delta, "implausible steps become unknown");
        assert!(
            link.remote.iter().all(|r| r.cand.kind != CandidateKind::Predicted),
            "the cap is full before prediction"
        );
    }
}

#[test]
fn peer_candidate_updates_add_local_addresses_only_when_the_shard_gave_some() {
    let now = Instant::now();
    let clock = ClockAnchor { at: now, unix_micros: 1_700_000_000_000_000 };
    let link_with = |remote: Vec<Candidate>| {
        let params = LinkParams {
            link: LinkId(5),
            side: Side::A,
            key: LinkKey([3; 32]),
            remote,
            remote_nat: NatHint::default(),
            relay: None,
        };
        Link::new(now, params, vec![], NatHint::default(), LinkConfig::default(), clock)
    };
    let update = |link: &mut Link, cands: &[Candidate]| {
        let msg = crate::codec::encode(&Control::Candidates(cands.to_vec()), usize::MAX).unwrap();
        link.on_control(now, &msg);
    };
    let srflx = |a: &str| Candidate::new(CandidateKind::ServerReflexive, addr(a));
    let host = |a: &str| Candidate::new(CandidateKind::Host, addr(a));
    let sneaky =
        [host("192.168.1.5:4000"), host("127.0.0.1:22"), host("169.254.0.9:4000"), srflx("198.18.0.7:4002")];
    // The shard gave only a public candidate (different NATs): the peer cannot point our
    // probes at our LAN or our own host later.
    let mut far = link_with(vec![srflx("198.18.0.7:4000")]);
    update(&mut far, &sneaky);
    let got: Vec<SocketAddr> = far.remote.iter().map(|r| r.cand.addr).collect();
    assert_eq!(got, [addr("198.18.0.7:4000"), addr("198.18.0.7:4002")]);
    assert_eq!(far.stats().candidates_refused, 3);
    // Behind one NAT (the shard passed a private candidate): LAN updates are welcome, our
    // own loopback still is not.
    let mut near = link_with(vec![host("192.168.1.4:4000")]);
    update(&mut near, &sneaky);
    assert_eq!(near.remote.len(), 4);
    assert_eq!(near.stats().candidates_refused, 1);
}

/// A sends one reliable message every 50 ms for `d` (B only acks).
fn stream(p: &mut Pair, next: &mut u32, d: Duration) {
    let end = p.now + d;
    while p.now < end {
        assert!(p.a.send(CHANNEL_RELIABLE, next.to_be_bytes().to_vec()));
        *next += 1;
        p.run_for(Duration::from_millis(50));
    }
}

fn received(link: &mut Link) -> Vec<u32> {
    std::iter::from_fn(|| link.receive(CHANNEL_RELIABLE))
        .map(|b| u32::from_be_bytes(b[..4].try_into().unwrap()))
        .collect()
}

#[test]
fn an_outage_shorter_than_the_path_timeout_is_only_suspected_and_loses_nothing() {
    let mut p = Pair::new();
    p.run_for(Duration::from_millis(200));
    let mut next = 0;
    stream(&mut p, &mut next, Duration::from_secs(1));
    // 250 ms of silence: past the suspicion timeout (150 ms), short of the path timeout
    p.cut = true;
    stream(&mut p, &mut next, Duration::from_millis(250));
    p.cut = false;
    stream(&mut p, &mut next, Duration::from_secs(1));
    p.run_for(Duration::from_secs(1));
    for link in [&p.a, &p.b] {
        assert_eq!(link.path(), Path::Direct { remote: link.direct.unwrap().addr });
        assert_eq!(link.stats().failovers, 0, "the first answer to a ping cleared the suspicion");
    }
    assert_eq!(p.a.stats().suspicions, 1, "the sender suspected the silent path");
    assert!(!Pair::events(&mut p.a).iter().any(|e| matches!(e, LinkEvent::DirectPathFailed(_))));
    assert_eq!(received(&mut p.b), (0..next).collect::<Vec<_>>());
}

#[test]
fn the_receiving_end_of_a_one_way_stream_notices_the_silence_itself() {
    let mut p = Pair::new();
    p.run_for(Duration::from_millis(200));
    let mut next = 0;
    stream(&mut p, &mut next, Duration::from_secs(1));
    // the stream merely stops (B acked the last message already): B asks once whether the
    // path still works, A answers, and that is all until the keepalive interval
    let before = p.b.stats().direct_sent;
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.b.stats().direct_sent, before + 1, "one ping");
    assert_eq!(p.b.stats().suspicions, 0);
    // the path dies under the stream: B, which only acks, suspects it on its own — one
    // path_ping_after after its last ack plus the suspicion timeout
    stream(&mut p, &mut next, Duration::from_millis(500));
    p.cut = true;
    let cut_at = p.now;
    stream(&mut p, &mut next, Duration::from_millis(400));
    assert_eq!(p.b.stats().suspicions, 1, "the receiver noticed");
    let cfg = LinkConfig::default();
    let bound = cfg.ack_delay + cfg.path_ping_after + p.b.suspect_timeout() + p.latency;
    assert!(p.b.direct.unwrap().suspected_at.unwrap() - cut_at <= bound);
}

#[test]
fn rtt_stats_give_the_smoothed_rtt_rfc6298_jitter_and_the_99th_percentile_of_recent_samples() {
    let mut p = Pair::new();
    assert_eq!(p.a.rtt_stats(), None, "no sample yet");
    // 100 samples: 98 at 20 ms, two spikes at 200 ms.
    for i in 0..100u64 {
        let ms = if i == 40 || i == 80 { 200 } else { 20 };
        p.a.rtt_sample(Duration::from_millis(ms));
    }
    let s = p.a.rtt_stats().unwrap();
    assert_eq!(
        (s.samples, s.min, s.p99),
        (100, Some(Duration::from_millis(20)), Some(Duration::from_millis(200)))
    );
    assert!(s.smoothed < Duration::from_millis(25), "{s:?}");
    assert!(s.jitter < Duration::from_millis(20), "decays after the spikes: {s:?}");
    // A steady path has no jitter; the window keeps the last 128 samples.
    for _ in 0..200 {
        p.a.rtt_sample(Duration::from_millis(30));
    }
    let s = p.a.rtt_stats().unwrap();
    assert_eq!((s.samples, s.p99), (RTT_WINDOW, Some(Duration::from_millis(30))));
    assert!(s.jitter < Duration::from_millis(1), "{s:?}");
}

/// Two links that can only meet through a relay (the core's `Relay`), every hop `hop` long.
struct Relayed {
    now: Instant,
    a: Link,
    b: Option<Link>,
    relay: crate::relay::Relay,
    hop: Duration,
    in_flight: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
}

const R: &str = "203.0.113.1:3478";

impl Relayed {
    /// A and B introduced at the same instant; `b_binds: false` is a peer that never opens
    /// its link (P2P off).
    fn new(b_binds: bool) -> Relayed {
        let now = Instant::now();
        let clock = ClockAnchor { at: now, unix_micros: 1_700_000_000_000_000 };
        let keys = crate::relay::TokenKeys::new(1, [4; 32]);
        let params = |side| {
            let (token, bind_key) = crate::relay::mint(&keys, LinkId(9), side, 1_700_003_600);
            LinkParams {
                link: LinkId(9),
                side,
                key: LinkKey([3; 32]),
                remote: vec![],
                remote_nat: NatHint::default(),
                relay: Some(RelayParams { addr: addr(R), token, bind_key }),
            }
        };
        let new =
            |side| Link::new(now, params(side), vec![], NatHint::default(), LinkConfig::default(), clock);
        let relay =
            crate::relay::Relay::new(crate::relay::RelayConfig::default(), keys.clone(), clock, [6; 32]);
        let b = b_binds.then(|| new(Side::B));
        Relayed {
            now,
            a: new(Side::A),
            b,
            relay,
            hop: Duration::from_millis(25),
            in_flight: BTreeMap::new(),
            seq: 0,
        }
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.seq += 1;
        self.in_flight.insert((self.now + self.hop, self.seq), (from, to, bytes));
    }

    fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        loop {
            let mut out = Vec::new();
            while let Some(t) = self.a.poll_transmit() {
                out.push((addr(A), t));
            }
            while let Some(t) = self.b.as_mut().and_then(|b| b.poll_transmit()) {
                out.push((addr(B), t));
            }
            for (from, t) in out {
                self.send(from, t.dst, t.payload);
            }
            let next_packet = self.in_flight.keys().next().map(|k| k.0);
            let timers = [self.a.poll_timeout(), self.b.as_ref().and_then(|b| b.poll_timeout())];
            let Some(next) = timers.into_iter().chain([next_packet]).flatten().min().filter(|n| *n <= limit)
            else {
                self.now = limit;
                return;
            };
            self.now = self.now.max(next);
            let now = self.now;
            if next_packet == Some(next) {
                let (_, (from, to, bytes)) = self.in_flight.pop_first().unwrap();
                if to == addr(R) {
                    let mut buf = crate::relay::ReplyBuf::default();
                    match self.relay.process(now, from, &bytes, &mut buf) {
                        crate::relay::Action::Forward { to } => self.send(addr(R), to, bytes),
                        crate::relay::Action::Reply { to, len, notify, forward, early } => {
                            self.send(addr(R), to, buf.reply[..len].to_vec());
                            for d in buf.early_datagrams(early).map(<[u8]>::to_vec).collect::<Vec<_>>() {
                                self.send(addr(R), to, d);
                            }
                            if let Some(n) = notify {
                                self.send(addr(R), n.to, buf.notify[..n.len].to_vec());
                            }
                            if let Some(e) = forward {
                                self.send(addr(R), e.to, bytes[e.start..e.start + e.len].to_vec());
                            }
                        }
                        crate::relay::Action::Drop(_) => {}
                    }
                } else {
                    let link = if to == addr(A) { Some(&mut self.a) } else { self.b.as_mut() };
                    if let Some(link) = link {
                        let _ = match bytes[0] {
                            0x31 => link.handle_relay(now, from, &bytes),
                            _ => link.handle_peer(now, None, from, &bytes),
                        };
                    }
                }
            } else {
                if self.a.poll_timeout().is_some_and(|t| t <= now) {
                    self.a.handle_timeout(now);
                }
                if let Some(b) = self.b.as_mut().filter(|b| b.poll_timeout().is_some_and(|t| t <= now)) {
                    b.handle_timeout(now);
                }
            }
        }
    }
}

#[test]
fn the_first_relayed_message_carries_its_binding_and_arrives_one_way_after_the_introduction() {
    let mut p = Relayed::new(true);
    assert_eq!(p.a.path(), Path::Relayed { relay: addr(R) }, "usable at once");
    let t0 = p.now;
    assert!(p.a.send(CHANNEL_RELIABLE, b"hello".to_vec()));
    let mut got = None;
    while got.is_none() && p.now < t0 + Duration::from_secs(1) {
        p.run_for(Duration::from_millis(1));
        got = p.b.as_mut().unwrap().receive(CHANNEL_RELIABLE).map(|m| (m, p.now));
    }
    let (msg, at) = got.expect("delivered");
    assert_eq!(&msg[..], b"hello");
    // A → relay → B: two hops of 25 ms (a relay RTT is four).
    assert!(at - t0 <= Duration::from_millis(51), "{:?}", at - t0);
    assert_eq!(p.relay.stats().bind_data_forwarded + p.relay.stats().early_delivered, 1);
    // Once the relay confirmed both sides, plain peer datagrams (no bind proof) follow.
    p.run_for(Duration::from_millis(200));
    let binds = p.relay.stats().binds_accepted;
    assert!(p.a.send(CHANNEL_RELIABLE, b"again".to_vec()));
    p.run_for(Duration::from_millis(200));
    assert_eq!(p.b.as_mut().unwrap().receive(CHANNEL_RELIABLE).as_deref(), Some(&b"again"[..]));
    assert_eq!(p.relay.stats().binds_accepted, binds, "no bind proof once confirmed");
}

#[test]
fn a_peer_that_never_binds_leaves_the_relayed_path_unusable_after_the_zero_rtt_window() {
    let mut p = Relayed::new(false);
    assert!(p.a.send(CHANNEL_RELIABLE, b"anyone?".to_vec()));
    p.run_for(Duration::from_millis(1900));
    assert_eq!(p.a.path(), Path::Relayed { relay: addr(R) });
    assert!(p.relay.stats().early_held >= 1, "held for a peer that may still bind");
    p.run_for(Duration::from_millis(200));
    assert_eq!(p.a.path(), Path::None, "no peer bound within 2 s: not a usable path");
    assert!(Pair::events(&mut p.a).contains(&LinkEvent::Path(Path::None)));
}
