// P2PModel patch: random, roughly well-formed renet packets (every packet type, small and huge
// varints, slices with indices up to their count, truncations) fed to a server connection and
// a client that also send and ack traffic. Crashes unpatched 2.0.1 within a second; the patched
// copy ran 1,000,000 packets in a debug build (overflow checks on) without a panic.

use renet::{ConnectionConfig, DefaultChannel, RenetClient, RenetServer};
use std::time::Duration;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
fn varint(v: u64, out: &mut Vec<u8>) {
    if v < 1 << 6 {
        out.push(v as u8)
    } else if v < 1 << 14 {
        out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes())
    } else if v < 1 << 30 {
        out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes())
    } else {
        out.extend_from_slice(&((v & ((1 << 62) - 1)) | 0xc000_0000_0000_0000).to_be_bytes())
    }
}
fn num(r: &mut Rng) -> u64 {
    match r.below(5) {
        0 => r.below(4),
        1 => r.below(64),
        2 => r.below(2000),
        3 => r.below(1 << 20),
        _ => r.next() >> 2,
    }
}
fn packet(r: &mut Rng) -> Vec<u8> {
    let t = r.below(6) as u8;
    let mut p = vec![t];
    varint(num(r), &mut p);
    match t {
        0 | 1 => {
            p.push(r.below(4) as u8);
            let n = r.below(6);
            p.extend_from_slice(&(n as u16).to_be_bytes());
            for _ in 0..n {
                if t == 0 {
                    varint(num(r), &mut p);
                }
                let l = r.below(40);
                varint(l, &mut p);
                for _ in 0..l {
                    p.push(r.next() as u8)
                }
            }
        }
        2 | 3 => {
            p.push(r.below(4) as u8);
            varint(r.below(4), &mut p);
            let ns = 1 + r.below(6);
            let idx = r.below(ns + 1);
            varint(idx, &mut p);
            varint(ns, &mut p);
            let l = if r.below(2) == 0 { 1200 } else { r.below(1300) };
            varint(l, &mut p);
            for _ in 0..l {
                p.push(0)
            }
        }
        4 => {
            varint(num(r), &mut p);
            varint(num(r), &mut p);
            let n = r.below(10);
            varint(n, &mut p);
            for _ in 0..n {
                varint(num(r), &mut p);
                varint(num(r), &mut p);
            }
        }
        _ => {
            for _ in 0..r.below(30) {
                p.push(r.next() as u8)
            }
        }
    }
    if r.below(10) == 0 {
        let n = p.len();
        p.truncate(r.below(n as u64 + 1) as usize);
    }
    p
}
#[test]
fn random_packets_never_panic() {
    let iters: u64 = std::env::var("RENET_RANDOM_PACKETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let mut r = Rng(0x9E3779B97F4A7C15);
    let mut server = RenetServer::new(ConnectionConfig::default());
    let mut client = RenetClient::new(ConnectionConfig::default());
    client.set_connected();
    let mut id = 0u64;
    server.add_connection(id);
    let mut disc = 0;
    for i in 0..iters {
        if server.disconnect_reason(id).is_some() || i % 50 == 0 {
            server.remove_connection(id);
            id += 1;
            server.add_connection(id);
            disc += 1;
            client = RenetClient::new(ConnectionConfig::default());
            client.set_connected();
        }
        if r.below(8) == 0 {
            server.send_message(id, DefaultChannel::ReliableOrdered, vec![1u8; r.below(4000) as usize]);
            client.send_message(DefaultChannel::ReliableUnordered, vec![1u8; r.below(4000) as usize]);
            let _ = server.get_packets_to_send(id);
            let _ = client.get_packets_to_send();
        }
        let p = packet(&mut r);
        server.process_packet_from(&p, id).unwrap();
        client.process_packet(&p);
        if r.below(16) == 0 {
            server.update(Duration::from_millis(r.below(4000)));
            client.update(Duration::from_millis(r.below(4000)));
        }
        for ch in 0..3u8 {
            while server.receive_message(id, ch).is_some() {}
            while client.receive_message(ch).is_some() {}
        }
    }
    println!("{iters} packets, {disc} connections");
}
