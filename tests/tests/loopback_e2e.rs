//! End to end over real loopback sockets: two meshes (the client core) and the real relay
//! server (data-plane thread, recvmmsg/sendmmsg). Only loopback addresses are used.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bevy_p2pmodel::config::MeshConfig;
use bevy_p2pmodel::crypto::LinkKey;
use bevy_p2pmodel::endpoint::{ClockAnchor, Endpoint};
use bevy_p2pmodel::link::{
    CHANNEL_RELIABLE, Candidate, CandidateKind, LinkParams, NatHint, Path, RelayParams,
};
use bevy_p2pmodel::mesh::Mesh;
use bevy_p2pmodel::proto::peer::{LinkId, Side};
use bevy_p2pmodel::relay::{RelayConfig, TokenKeys, mint};
use p2pmodel_servers::relay::{RelayServer, RelayServerOptions};

struct Peer {
    mesh: Mesh,
    socket: UdpSocket,
    local: SocketAddr,
}

impl Peer {
    fn new(now: Instant, clock: ClockAnchor) -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let local = socket.local_addr().unwrap();
        Peer { mesh: Mesh::new(now, MeshConfig::default(), clock, &[local]), socket, local }
    }

    /// One turn of the driver loop: send what is queued, read what arrived, fire timers.
    fn pump(&mut self) {
        while let Some(t) = self.mesh.poll_transmit() {
            assert!(t.dst.ip().is_loopback(), "only loopback traffic: {}", t.dst);
            let _ = self.socket.send_to(&t.payload, t.dst);
        }
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            self.mesh.handle_datagram(Instant::now(), self.local, from, &buf[..n]);
        }
        let now = Instant::now();
        if self.mesh.poll_timeout().is_some_and(|t| t <= now) {
            self.mesh.handle_timeout(now);
        }
    }
}

#[test]
fn a_link_with_no_direct_path_falls_back_to_the_real_relay_and_delivers_in_order() {
    let keys = TokenKeys::new(1, [3; 32]);
    let relay = RelayServer::start(RelayServerOptions::new(
        vec!["127.0.0.1:0".parse().unwrap()],
        RelayConfig::default(),
        keys.clone(),
    ))
    .expect("relay starts");
    let relay_addr = relay.primary_addr();

    let now = Instant::now();
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let clock = ClockAnchor { at: now, unix_micros: unix.as_micros() as u64 };
    let mut a = Peer::new(now, clock);
    let mut b = Peer::new(now, clock);
    // Each side is told only of an address where nobody listens: punching cannot succeed.
    let dead = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let link = LinkId(77);
    let key = LinkKey([5; 32]);
    let expiry = unix.as_secs() as u32 + 600;
    for (peer, side) in [(&mut a, Side::A), (&mut b, Side::B)] {
        let (token, bind_key) = mint(&keys, link, side, expiry);
        let params = LinkParams {
            link,
            side,
            key: key.clone(),
            remote: vec![Candidate::new(CandidateKind::ServerReflexive, dead)],
            remote_nat: NatHint::default(),
            relay: Some(RelayParams { addr: relay_addr, token, bind_key }),
        };
        peer.mesh.add_link(now, params).unwrap();
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = 0u32;
    let mut got = Vec::new();
    let mut first_at = None;
    while got.len() < 200 && Instant::now() < deadline {
        if sent < 200 && a.mesh.link(link).unwrap().path() != Path::None {
            a.mesh.send(link, CHANNEL_RELIABLE, sent.to_be_bytes().to_vec()).unwrap();
            sent += 1;
        }
        a.pump();
        b.pump();
        while let Some(m) = b.mesh.receive(link, CHANNEL_RELIABLE) {
            first_at.get_or_insert_with(Instant::now);
            got.push(u32::from_be_bytes(m[..4].try_into().unwrap()));
        }
        std::thread::sleep(Duration::from_micros(200)); // a driver's poll interval, not test logic
    }
    assert_eq!(got, (0..200).collect::<Vec<_>>(), "all 200 messages, in order, once");
    assert_eq!(a.mesh.link(link).unwrap().path(), Path::Relayed { relay: relay_addr });
    assert_eq!(b.mesh.link(link).unwrap().path(), Path::Relayed { relay: relay_addr });
    let first = first_at.unwrap() - now;
    assert!(first < Duration::from_secs(1), "first message after {first:?} over loopback");
    let snap = relay.snapshot();
    assert!(
        snap.forwarded_packets >= 200,
        "the relay forwarded the stream: {} packets",
        snap.forwarded_packets
    );
    relay.shutdown();
}
