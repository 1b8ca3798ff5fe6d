//! Simulator tests, with a small recording/echoing/forwarding node.

mod link;
mod nat;
mod run;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use p2pmodel_core::endpoint::{Endpoint, Transmit};

/// One datagram a [`Probe`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rx {
    at: Instant,
    local: SocketAddr,
    from: SocketAddr,
    data: Vec<u8>,
}

/// Sends `count` datagrams to each of `dsts`, one round every `every` from `next`.
/// Payload: sequence number and send time (nanoseconds since `epoch`), big-endian.
#[derive(Debug, Clone)]
struct Periodic {
    epoch: Instant,
    next: Instant,
    every: Duration,
    remaining: u64,
    src: Option<SocketAddr>,
    dsts: Vec<SocketAddr>,
    seq: u64,
}

/// A test node: records what it receives; optionally echoes it back, forwards it, or sends
/// periodic datagrams.
#[derive(Debug, Default)]
struct Probe {
    inbox: Vec<Rx>,
    out: VecDeque<Transmit>,
    echo: bool,
    forward_to: Option<SocketAddr>,
    periodic: Option<Periodic>,
    timeouts: u64,
}

impl Probe {
    fn echo() -> Self {
        Probe { echo: true, ..Probe::default() }
    }

    fn forwarder(to: SocketAddr) -> Self {
        Probe { forward_to: Some(to), ..Probe::default() }
    }

    /// Periodic sender starting at `first`.
    fn periodic(epoch: Instant, first: Instant, every: Duration, count: u64, dsts: Vec<SocketAddr>) -> Self {
        Probe {
            periodic: Some(Periodic { epoch, next: first, every, remaining: count, src: None, dsts, seq: 0 }),
            ..Probe::default()
        }
    }

    fn send(&mut self, src: Option<SocketAddr>, dst: SocketAddr, data: &[u8]) {
        self.out.push_back(Transmit { src, dst, payload: data.to_vec() });
    }

    fn froms(&self) -> Vec<SocketAddr> {
        self.inbox.iter().map(|r| r.from).collect()
    }
}

/// (sequence number, send time offset) of a periodic payload.
fn decode(data: &[u8]) -> (u64, Duration) {
    let seq = u64::from_be_bytes(data[0..8].try_into().unwrap());
    let ns = u64::from_be_bytes(data[8..16].try_into().unwrap());
    (seq, Duration::from_nanos(ns))
}

impl Endpoint for Probe {
    fn handle_datagram(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]) {
        self.inbox.push(Rx { at: now, local, from, data: data.to_vec() });
        if self.echo {
            self.send(Some(local), from, data);
        }
        if let Some(to) = self.forward_to {
            self.send(Some(local), to, data);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.timeouts += 1;
        let Some(p) = &mut self.periodic else { return };
        let mut sends = Vec::new();
        while p.remaining > 0 && p.next <= now {
            let mut payload = p.seq.to_be_bytes().to_vec();
            payload.extend_from_slice(&((p.next - p.epoch).as_nanos() as u64).to_be_bytes());
            for d in &p.dsts {
                sends.push(Transmit { src: p.src, dst: *d, payload: payload.clone() });
            }
            p.seq += 1;
            p.remaining -= 1;
            p.next += p.every;
        }
        self.out.extend(sends);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.periodic.as_ref().filter(|p| p.remaining > 0).map(|p| p.next)
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// Queue one datagram on `host`'s node and let the network settle for a second.
fn send_and_settle(sim: &mut Sim, host: HostId, src: Option<SocketAddr>, dst: SocketAddr, data: &[u8]) {
    sim.node_mut::<Probe>(host).send(src, dst, data);
    sim.run_for(Duration::from_secs(1));
}

fn inbox(sim: &Sim, host: HostId) -> &[Rx] {
    &sim.node::<Probe>(host).inbox
}

/// Public test addresses.
const S1: [u8; 4] = [198, 51, 100, 1];
const S2: [u8; 4] = [198, 51, 100, 2];
const NAT_IP: [u8; 4] = [203, 0, 113, 1];
const LAN2: [u8; 4] = [192, 168, 0, 2];
const LAN3: [u8; 4] = [192, 168, 0, 3];

/// A NAT with `config` at [`NAT_IP`], a client at 192.168.0.2:4000 behind it, and two
/// public servers S1 and S2 at port 4000 (they receive on every port).
struct Lab {
    sim: Sim,
    nat: NatId,
    client: HostId,
    s1: HostId,
    s2: HostId,
}

impl Lab {
    fn new(config: NatConfig) -> Self {
        let mut sim = Sim::new(7);
        let nat = sim.add_nat(config.public_ip(NAT_IP));
        let client = sim.add_host(HostConfig::behind(nat, LAN2), Probe::default());
        let s1 = sim.add_host(HostConfig::public(S1), Probe::default());
        let s2 = sim.add_host(HostConfig::public(S2), Probe::default());
        Lab { sim, nat, client, s1, s2 }
    }

    fn client_sends(&mut self, dst: SocketAddr) {
        send_and_settle(&mut self.sim, self.client, None, dst, b"out");
    }

    /// `from` (a server) sends from `port` to `dst`; returns whether the client got it.
    fn server_sends(&mut self, from: HostId, port: u16, dst: SocketAddr) -> bool {
        let before = inbox(&self.sim, self.client).len();
        let ip = self.sim.host_ips(from)[0];
        send_and_settle(&mut self.sim, from, Some(sa(ip, port)), dst, b"in");
        inbox(&self.sim, self.client).len() > before
    }

    /// Source addresses the server saw.
    fn seen_by(&self, server: HostId) -> Vec<SocketAddr> {
        self.sim.node::<Probe>(server).froms()
    }

    fn drops(&self, r: DropReason) -> u64 {
        self.sim.stats().dropped(r)
    }
}
