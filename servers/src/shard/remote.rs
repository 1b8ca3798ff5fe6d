//! The bus across processes: roles this process does not run are reached over
//! [`InternalLink`]s. Topology is a star at the Lobby: the Lobby listens (`lobby.internal`),
//! the Agent and each Game server connect to it, and the Lobby forwards messages between the
//! Agent and the Games. Each frame is `destination role (5 bytes) ‖ encoded message`.

use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use bevy::prelude::*;
use bevy_p2pmodel::proto::shard::Role;

use super::bus::ShardBus;
use super::link::{InternalLink, role_bytes, role_from};
use crate::config::SHARD_SECRET_LEN;

/// Links to the roles of other processes.
#[derive(Resource)]
pub struct RemoteBus {
    /// Roles served in this process.
    pub local: Vec<Role>,
    links: Vec<InternalLink>,
    incoming: Option<Mutex<Receiver<InternalLink>>>,
    timeout: Duration,
    /// Frames that named an unknown destination or were too short (dropped).
    pub misrouted: u64,
}

impl RemoteBus {
    /// The Lobby's side: accept links on `addr` (a thread hands them to the app).
    pub fn listen(
        local: Vec<Role>,
        addr: SocketAddr,
        secret: [u8; SHARD_SECRET_LEN],
        heartbeat: Duration,
        timeout: Duration,
    ) -> std::io::Result<(RemoteBus, SocketAddr)> {
        let listener = TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new().name("p2pm-int-accept".into()).spawn(move || {
            loop {
                match InternalLink::accept(&listener, &secret, heartbeat) {
                    Ok(link) => {
                        info!(peer = ?link.peer(), "internal link accepted");
                        if tx.send(link).is_err() {
                            break;
                        }
                    }
                    Err(e) => warn!("internal link refused: {e}"),
                }
            }
        })?;
        Ok((
            RemoteBus { local, links: Vec::new(), incoming: Some(Mutex::new(rx)), timeout, misrouted: 0 },
            bound,
        ))
    }

    /// An Agent or Game process: connect each local role to the Lobby at `lobby`.
    pub fn connect(
        local: Vec<Role>,
        lobby: SocketAddr,
        secret: [u8; SHARD_SECRET_LEN],
        heartbeat: Duration,
        timeout: Duration,
    ) -> std::io::Result<RemoteBus> {
        let links = local
            .iter()
            .map(|r| InternalLink::connect(lobby, &secret, *r, Role::Lobby, heartbeat))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(RemoteBus { local, links, incoming: None, timeout, misrouted: 0 })
    }

    fn is_hub(&self) -> bool {
        self.incoming.is_some()
    }

    fn link_to(&self, role: Role) -> Option<&InternalLink> {
        if self.is_hub() { self.links.iter().find(|l| l.peer() == role) } else { self.links.first() }
    }

    /// Live links, by the role at the other end.
    pub fn peers(&self) -> Vec<Role> {
        self.links.iter().map(|l| l.peer()).collect()
    }
}

/// Moves bus messages over the internal links (runs in `First` and `Last`).
pub struct RemoteBusPlugin;

impl Plugin for RemoteBusPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(First, pump).add_systems(Last, pump);
    }
}

fn pump(mut remote: ResMut<RemoteBus>, mut bus: ResMut<ShardBus>) {
    let remote = &mut *remote;
    if let Some(rx) = &remote.incoming
        && let Ok(rx) = rx.lock()
    {
        while let Ok(link) = rx.try_recv() {
            remote.links.retain(|l| l.peer() != link.peer());
            remote.links.push(link);
        }
    }
    let timeout = remote.timeout;
    remote.links.retain(|l| {
        let dead = l.is_dead(timeout);
        if dead {
            error!(peer = ?l.peer(), "internal link dead (closed or silent)");
        }
        !dead
    });
    // In: deliver to local roles, or forward (hub).
    let mut forward = Vec::new();
    for l in &remote.links {
        while let Some(frame) = l.try_recv_raw() {
            let Some(dest) = frame.get(..5).and_then(|b| role_from(b.try_into().ok()?)) else {
                remote.misrouted += 1;
                continue;
            };
            if remote.local.contains(&dest) {
                bus.send_raw(dest, frame[5..].to_vec());
            } else {
                forward.push((dest, frame));
            }
        }
    }
    // Out: queues of roles not served here.
    for role in bus.pending_roles() {
        if remote.local.contains(&role) {
            continue;
        }
        for msg in bus.drain_raw(role) {
            forward.push((role, [role_bytes(role).as_slice(), &msg].concat()));
        }
    }
    for (dest, frame) in forward {
        match remote.link_to(dest) {
            Some(l) => {
                l.send_raw(frame);
            }
            None => remote.misrouted += 1,
        }
    }
}
