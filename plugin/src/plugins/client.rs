//! The [`P2pClient`] resource: the sans-IO client core every plugin system drives, shared
//! with the mesh socket's I/O thread (when the socket is a real one).

use std::net::UdpSocket;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bytes::Bytes;

use super::io::UdpMeshStats;
use crate::client::{Channel, ClientConfig, ClientCore, ClientTotals, PeerInfo, Phase, SendError};
use crate::conditioner::ConditionerStats;
use crate::endpoint::{Endpoint, Transmit};
use crate::link::RttStats;
use crate::nat::NatReport;
use crate::proto::shard::PlayerId;

/// The client core (mesh + shard protocol), shared between Bevy systems and the mesh socket's
/// I/O thread. Lock it with [`P2pClient::lock`] for several calls in one go (the guard
/// dereferences to the [`ClientCore`]); the shortcuts below (`send`, `peers`, `peer_rtt`…)
/// lock it for one call each and return owned values. Hold a guard only briefly (the I/O
/// thread waits for it), and never call a shortcut while holding one (the lock is not
/// reentrant).
#[derive(Resource, Clone)]
pub struct P2pClient {
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for P2pClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("P2pClient").field(&self.lock_shared().core).finish()
    }
}

/// What the Bevy side and the I/O thread share under one lock.
pub(crate) struct Shared {
    pub(crate) core: ClientCore,
    /// Datagrams handed to the socket from the Bevy side (`MeshSocket::send` while a thread
    /// owns the socket).
    pub(crate) outbox: Vec<Transmit>,
    /// How to wake the I/O thread, when one runs.
    pub(crate) thread: Option<ThreadLink>,
    /// Counters of the socket and its driver.
    pub(crate) stats: MeshIoStats,
    /// Why the I/O thread stopped, if it did (reported once as a `P2pError`).
    pub(crate) thread_error: Option<String>,
}

/// The Bevy side's way to wake the I/O thread.
pub(crate) struct ThreadLink {
    /// A socket connected to the mesh socket: an empty datagram wakes the thread.
    pub(crate) waker: UdpSocket,
    /// When the thread wakes by itself next (`None`: only on a datagram).
    pub(crate) planned: Option<Instant>,
    /// A wake is on its way and the thread has not flushed since: no need for another.
    pub(crate) wake_sent: bool,
}

impl Shared {
    /// After the Bevy side used the core: wake the I/O thread if the core now wants service
    /// before the thread planned to wake (a message to send, a new timer) or datagrams wait
    /// in the outbox.
    pub(crate) fn wake_if_needed(&mut self) {
        let Some(thread) = self.thread.as_mut() else { return };
        if thread.wake_sent {
            return;
        }
        let earlier = match (self.core.poll_timeout(), thread.planned) {
            (Some(due), Some(planned)) => due < planned,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if earlier || !self.outbox.is_empty() {
            thread.wake_sent = true;
            self.stats.wakes += 1;
            // A lost wake is harmless: the flag is seen at the thread's next turn.
            let _ = thread.waker.send(&[]);
        }
    }
}

/// Counters of the mesh socket and the code driving it ([`P2pClient::io_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshIoStats {
    /// The socket is serviced on its own I/O thread (`false`: in the frames, or the
    /// simulator's).
    pub io_thread: bool,
    /// The real socket's counters (zero for other [`MeshIo`](super::MeshIo)s).
    pub socket: UdpMeshStats,
    /// Times the Bevy side woke the I/O thread to send or re-plan.
    pub wakes: u64,
    /// Turns of the I/O thread's loop.
    pub turns: u64,
    /// The conditioner on outgoing datagrams, when one is configured.
    pub conditioned_out: Option<ConditionerStats>,
    /// The conditioner on incoming datagrams, when one is configured.
    pub conditioned_in: Option<ConditionerStats>,
    /// Longest time the I/O thread held the lock in one turn.
    pub longest_turn: Duration,
}

/// The locked client core: dereferences to [`ClientCore`]. Dropping it wakes the I/O thread
/// when the core needs service sooner (e.g. a message was queued).
pub struct ClientGuard<'a> {
    inner: MutexGuard<'a, Shared>,
}

impl Deref for ClientGuard<'_> {
    type Target = ClientCore;
    fn deref(&self) -> &ClientCore {
        &self.inner.core
    }
}

impl DerefMut for ClientGuard<'_> {
    fn deref_mut(&mut self) -> &mut ClientCore {
        &mut self.inner.core
    }
}

impl Drop for ClientGuard<'_> {
    fn drop(&mut self) {
        self.inner.wake_if_needed();
    }
}

impl P2pClient {
    /// A client around `core`, driven in the frames (no I/O thread yet).
    pub fn new(core: ClientCore) -> Self {
        let shared = Shared {
            core,
            outbox: Vec::new(),
            thread: None,
            stats: MeshIoStats::default(),
            thread_error: None,
        };
        P2pClient { shared: Arc::new(Mutex::new(shared)) }
    }

    /// Lock the core for several calls (keep it short: the I/O thread waits for it).
    pub fn lock(&self) -> ClientGuard<'_> {
        ClientGuard { inner: self.lock_shared() }
    }

    /// The shared state, for the plugin's drivers.
    pub(crate) fn lock_shared(&self) -> MutexGuard<'_, Shared> {
        // A panic elsewhere while locked leaves the core as it was; keep going with it.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared state itself, for the I/O thread.
    pub(crate) fn shared(&self) -> Arc<Mutex<Shared>> {
        self.shared.clone()
    }

    /// Counters of the mesh socket and its driver (I/O thread, conditioner).
    pub fn io_stats(&self) -> MeshIoStats {
        self.lock_shared().stats
    }

    /// Send application bytes to one peer (see [`ClientCore::send`]). `Ok(true)`: over the
    /// mesh.
    pub fn send(&self, player: PlayerId, channel: Channel, data: Bytes) -> Result<bool, SendError> {
        self.lock().send(player, channel, data)
    }

    /// Send to every introduced peer (see [`ClientCore::broadcast`]).
    pub fn broadcast(&self, channel: Channel, data: Bytes) -> Result<usize, SendError> {
        self.lock().broadcast(channel, data)
    }

    /// Our introduced peers (a snapshot).
    pub fn peers(&self) -> std::vec::IntoIter<PeerInfo> {
        self.lock().peers().cloned().collect::<Vec<_>>().into_iter()
    }

    /// One introduced peer (a snapshot).
    pub fn peer(&self, player: PlayerId) -> Option<PeerInfo> {
        self.lock().peer(player).cloned()
    }

    /// Smoothed RTT to a peer over its current mesh path.
    pub fn peer_rtt(&self, player: PlayerId) -> Option<Duration> {
        self.lock().peer_rtt(player)
    }

    /// RTT figures toward a peer on its current mesh path.
    pub fn peer_rtt_stats(&self, player: PlayerId) -> Option<RttStats> {
        self.lock().peer_rtt_stats(player)
    }

    /// Packet loss toward a peer on the mesh (0–1), if it has a link.
    pub fn peer_loss(&self, player: PlayerId) -> Option<f32> {
        self.lock().peer_loss(player)
    }

    /// The NAT report, once discovery finished.
    pub fn nat_report(&self) -> Option<NatReport> {
        self.lock().nat_report().cloned()
    }

    /// Traffic totals.
    pub fn totals(&self) -> ClientTotals {
        self.lock().totals()
    }

    /// Where we are in the shard.
    pub fn phase(&self) -> Phase {
        self.lock().phase()
    }

    /// Our player id, once logged in.
    pub fn player(&self) -> Option<PlayerId> {
        self.lock().player()
    }

    /// Our zone, when in game.
    pub fn zone(&self) -> Option<u32> {
        self.lock().zone()
    }

    /// The settings the client runs with (a copy).
    pub fn config(&self) -> ClientConfig {
        self.lock().config().clone()
    }
}
