//! [`P2pDiagnosticsPlugin`]: the mesh and shard metrics as Bevy diagnostics, so any overlay
//! (`DiagnosticsOverlayPlugin`, `LogDiagnosticsPlugin`) can show them.

use bevy::diagnostic::{Diagnostic, DiagnosticPath, Diagnostics, RegisterDiagnostic};
use bevy::prelude::*;

use super::client::P2pClient;
use super::io::MeshSocket;
use super::sets::{P2pReceive, Step};
use super::shard::ShardLink;
use crate::client::PeerPath;

/// Mean smoothed RTT over the peers that have one, in ms.
pub const RTT_MS: DiagnosticPath = DiagnosticPath::const_new("p2p/rtt_ms");
/// Mean packet loss over the peers with a mesh link (0–1).
pub const LOSS: DiagnosticPath = DiagnosticPath::const_new("p2p/loss");
/// Introduced peers.
pub const PEERS: DiagnosticPath = DiagnosticPath::const_new("p2p/peers");
/// Peers on a direct path.
pub const DIRECT_PEERS: DiagnosticPath = DiagnosticPath::const_new("p2p/direct_peers");
/// Peers on a relayed path.
pub const RELAYED_PEERS: DiagnosticPath = DiagnosticPath::const_new("p2p/relayed_peers");
/// Mesh socket bytes received per second (P2P, relay and STUN traffic).
pub const BYTES_IN_PER_S: DiagnosticPath = DiagnosticPath::const_new("p2p/bytes_in_per_s");
/// Mesh socket bytes sent per second.
pub const BYTES_OUT_PER_S: DiagnosticPath = DiagnosticPath::const_new("p2p/bytes_out_per_s");
/// Shard message bytes received per second.
pub const SERVER_BYTES_IN_PER_S: DiagnosticPath = DiagnosticPath::const_new("server/bytes_in_per_s");
/// Shard message bytes sent per second.
pub const SERVER_BYTES_OUT_PER_S: DiagnosticPath = DiagnosticPath::const_new("server/bytes_out_per_s");

/// Every path this plugin registers.
pub const ALL: [DiagnosticPath; 9] = [
    RTT_MS,
    LOSS,
    PEERS,
    DIRECT_PEERS,
    RELAYED_PEERS,
    BYTES_IN_PER_S,
    BYTES_OUT_PER_S,
    SERVER_BYTES_IN_PER_S,
    SERVER_BYTES_OUT_PER_S,
];

/// Registers the `p2p/*` and `server/*` diagnostics and measures them every frame (added
/// by [`P2pMeshPlugin`](crate::plugins::P2pMeshPlugin)).
#[derive(Debug, Clone, Copy, Default)]
pub struct P2pDiagnosticsPlugin;

impl Plugin for P2pDiagnosticsPlugin {
    fn build(&self, app: &mut App) {
        for path in ALL {
            app.register_diagnostic(Diagnostic::new(path));
        }
        app.add_systems(PreUpdate, measure.in_set(P2pReceive).after(Step::After));
    }
}

/// Byte counters at the previous measurement, for rates.
#[derive(Default)]
struct Last {
    mesh_in: u64,
    mesh_out: u64,
    server_in: u64,
    server_out: u64,
    seeded: bool,
    at: Option<std::time::Instant>,
}

fn measure(
    client: Option<Res<P2pClient>>,
    link: Option<Res<ShardLink>>,
    socket: Option<NonSend<MeshSocket>>,
    mut last: Local<Last>,
    mut diagnostics: Diagnostics,
) {
    let Some(client) = client else { return };
    let client = client.lock();
    let (mut peers, mut direct, mut relayed) = (0u32, 0u32, 0u32);
    let (mut rtt_sum, mut rtt_n) = (0.0f64, 0u32);
    let (mut loss_sum, mut loss_n) = (0.0f64, 0u32);
    for p in client.peers() {
        peers += 1;
        match p.path {
            PeerPath::Direct => direct += 1,
            PeerPath::Relayed => relayed += 1,
            _ => {}
        }
        if let Some(l) = client.peer_loss(p.player) {
            loss_sum += f64::from(l);
            loss_n += 1;
        }
        if let Some(rtt) = client.peer_rtt(p.player) {
            rtt_sum += rtt.as_secs_f64() * 1000.0;
            rtt_n += 1;
        }
    }
    if rtt_n > 0 {
        diagnostics.add_measurement(&RTT_MS, || rtt_sum / f64::from(rtt_n));
    }
    if loss_n > 0 {
        diagnostics.add_measurement(&LOSS, || loss_sum / f64::from(loss_n));
    }
    diagnostics.add_measurement(&PEERS, || f64::from(peers));
    diagnostics.add_measurement(&DIRECT_PEERS, || f64::from(direct));
    diagnostics.add_measurement(&RELAYED_PEERS, || f64::from(relayed));

    let mesh = client.totals().mesh;
    let (server_in, server_out) = link.map_or((0, 0), |l| (l.bytes_in(), l.bytes_out()));
    // Rates on the network's clock (real time, or the simulator's), not `Time<Virtual>`,
    // which a game may pause or scale.
    let Some(now) = socket.map(|s| s.0.now()) else { return };
    let dt = last.at.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
    if last.seeded && dt > 0.0 {
        let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / dt;
        diagnostics.add_measurement(&BYTES_IN_PER_S, || rate(mesh.bytes_received, last.mesh_in));
        diagnostics.add_measurement(&BYTES_OUT_PER_S, || rate(mesh.bytes_sent, last.mesh_out));
        diagnostics.add_measurement(&SERVER_BYTES_IN_PER_S, || rate(server_in, last.server_in));
        diagnostics.add_measurement(&SERVER_BYTES_OUT_PER_S, || rate(server_out, last.server_out));
    }
    *last = Last {
        mesh_in: mesh.bytes_received,
        mesh_out: mesh.bytes_sent,
        server_in,
        server_out,
        seeded: true,
        at: Some(now),
    };
}
