//! CPU per application message through the mesh, sans-IO (no sockets, no threads).
//!
//! Two `Mesh`es, A and B, with K links between them (one per peer of a game client with K
//! peers in view). Datagrams are handed across in memory with a fixed one-way latency; time is
//! virtual. Each tick (50 ms = 20 Hz) every link end sends one message to its peer, then the
//! driver runs the endpoint loop until the next tick: `handle_timeout` whenever `poll_timeout`
//! passes (renet flushes, delayed acks, keepalives), `handle_datagram` for every datagram, and
//! the application drains what arrived. One iteration = one tick = 2 K messages, so
//! `time per iteration / 2K` is the CPU per message, both ends (sender and receiver) together.
//!
//! The reference in the same run: `LinkCrypto::seal` + `open` of one datagram, the AEAD every
//! message needs at least once.
//!
//! `cargo bench -p p2pmodel-core --bench mesh`; `python3 core/benches/mesh_summary.py` turns
//! criterion's estimates into µs per message and the ratio to AEAD.

use std::collections::VecDeque;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use p2pmodel_core::config::MeshConfig;
use p2pmodel_core::crypto::{LinkCrypto, LinkKey};
use p2pmodel_core::endpoint::{ClockAnchor, Endpoint};
use p2pmodel_core::link::{
    CHANNEL_RELIABLE, CHANNEL_UNRELIABLE, Candidate, CandidateKind, LinkParams, NatHint, Path,
};
use p2pmodel_core::mesh::Mesh;
use p2pmodel_core::proto::peer::{LinkId, PeerKind, Side};

const TICK: Duration = Duration::from_millis(50);
/// One-way latency of the in-memory wire (a LAN / same-city pair).
const LATENCY: Duration = Duration::from_millis(10);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct World {
    now: Instant,
    meshes: [Mesh; 2],
    addrs: [SocketAddr; 2],
    /// (deliver at, to mesh index, from, payload); constant latency keeps it FIFO.
    wire: VecDeque<(Instant, usize, SocketAddr, Vec<u8>)>,
    links: Vec<LinkId>,
    received: u64,
    /// Driver calls, to report the shape of the work per message.
    datagrams: u64,
    timeouts: u64,
}

impl World {
    fn new(k: u32) -> Self {
        let now = Instant::now();
        let clock = ClockAnchor { at: now, unix_micros: 1_790_000_000_000_000 };
        let addrs = [addr("10.0.0.1:4000"), addr("10.0.0.2:4000")];
        let mut meshes = [
            Mesh::new(now, MeshConfig::default(), clock, &addrs[..1]),
            Mesh::new(now, MeshConfig::default(), clock, &addrs[1..]),
        ];
        let links: Vec<LinkId> = (0..k).map(|i| LinkId(100 + i)).collect();
        for &link in &links {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&link.0.to_be_bytes());
            for (i, side) in [(0, Side::A), (1, Side::B)] {
                let params = LinkParams {
                    link,
                    side,
                    key: LinkKey(key),
                    remote: vec![Candidate::new(CandidateKind::Host, addrs[1 - i])],
                    remote_nat: NatHint::default(),
                    relay: None,
                };
                meshes[i].add_link(now, params).unwrap();
            }
        }
        let mut w = World {
            now,
            meshes,
            addrs,
            wire: VecDeque::new(),
            links,
            received: 0,
            datagrams: 0,
            timeouts: 0,
        };
        // Punch: direct within a few round trips; run a second so handshakes settle.
        for _ in 0..20 {
            w.tick(None);
        }
        for m in &w.meshes {
            for l in m.links() {
                assert!(matches!(l.path(), Path::Direct { .. }), "link not direct: {l:?}");
            }
        }
        w
    }

    fn collect(&mut self, i: usize) {
        while let Some(t) = self.meshes[i].poll_transmit() {
            self.wire.push_back((self.now + LATENCY, 1 - i, self.addrs[i], t.payload));
        }
    }

    /// Send one message per link end (if any), then run the endpoint loop for one tick.
    fn tick(&mut self, msg: Option<(u8, &Bytes)>) {
        if let Some((channel, bytes)) = msg {
            for i in 0..2 {
                for &l in &self.links {
                    let ok = self.meshes[i].send(l, channel, bytes.clone()).unwrap();
                    debug_assert!(ok);
                }
                // The driver's loop: a send makes the mesh ask for a timeout now.
                self.meshes[i].handle_timeout(self.now);
                self.collect(i);
            }
        }
        let end = self.now + TICK;
        loop {
            let next_datagram = self.wire.front().map(|w| w.0);
            let timers = [self.meshes[0].poll_timeout(), self.meshes[1].poll_timeout()];
            let next = [next_datagram, timers[0], timers[1]].into_iter().flatten().min().filter(|t| *t < end);
            let Some(next) = next else { break };
            self.now = self.now.max(next);
            if next_datagram == Some(next) {
                let (_, to, from, payload) = self.wire.pop_front().unwrap();
                self.datagrams += 1;
                self.meshes[to].handle_datagram(self.now, self.addrs[to], from, &payload);
                self.collect(to);
                // The application reads what arrived (on the link the datagram named).
                if let Some(id) = payload.get(1..5) {
                    let l = LinkId(u32::from_be_bytes(id.try_into().unwrap()));
                    for ch in [CHANNEL_RELIABLE, CHANNEL_UNRELIABLE] {
                        while let Some(m) = self.meshes[to].receive(l, ch) {
                            self.received += 1;
                            black_box(m);
                        }
                    }
                }
            } else {
                for (i, t) in timers.iter().enumerate() {
                    if t.is_some_and(|t| t <= self.now) {
                        self.timeouts += 1;
                        self.meshes[i].handle_timeout(self.now);
                        self.collect(i);
                    }
                }
            }
        }
        self.now = end;
    }
}

fn mesh_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("mesh");
    for (name, channel, size) in
        [("unreliable32", CHANNEL_UNRELIABLE, 32usize), ("reliable64", CHANNEL_RELIABLE, 64)]
    {
        for k in [1u32, 16] {
            let payload = Bytes::from(vec![0x5au8; size]);
            let mut w = World::new(k);
            // Warm up the steady state (renet windows, replay windows, allocator).
            for _ in 0..40 {
                w.tick(Some((channel, &payload)));
            }
            g.throughput(Throughput::Elements(2 * k as u64));
            g.bench_function(BenchmarkId::new(name, k), |b| {
                b.iter(|| w.tick(Some((channel, &payload))));
            });
            // The shape of one tick in the steady state, for the write-up.
            let (d0, t0) = (w.datagrams, w.timeouts);
            for _ in 0..100 {
                w.tick(Some((channel, &payload)));
            }
            let msgs = 100.0 * 2.0 * k as f64;
            eprintln!(
                "{name}/{k}: {:.2} datagrams and {:.2} timer calls per message",
                (w.datagrams - d0) as f64 / msgs,
                (w.timeouts - t0) as f64 / msgs
            );
            // Every message sent was delivered (no loss on this wire).
            let dropped: u64 = w.meshes.iter().map(|m| m.stats().rejected + m.stats().unknown_link).sum();
            assert_eq!(dropped, 0);
            assert!(w.received > 0);
        }
    }
    g.finish();
}

fn aead_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("aead");
    let key = LinkKey([7; 32]);
    for size in [32usize, 1200] {
        let plaintext = vec![0x5au8; size];
        let mut a = LinkCrypto::new(&key, LinkId(9), Side::A);
        let mut b = LinkCrypto::new(&key, LinkId(9), Side::B);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("seal", size), |bn| {
            bn.iter(|| black_box(a.seal(PeerKind::Data, black_box(&plaintext))));
        });
        let mut a = LinkCrypto::new(&key, LinkId(9), Side::A);
        g.bench_function(BenchmarkId::new("seal_open", size), |bn| {
            bn.iter(|| {
                let d = a.seal(PeerKind::Data, black_box(&plaintext));
                black_box(b.open(&d).unwrap())
            });
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = aead_benches, mesh_benches
}
criterion_main!(benches);
