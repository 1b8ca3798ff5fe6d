//! [`AgentLoad`]: the load of the Agent's netcode sockets, shared by the Agent (which counts
//! connected clients) and the login service (which orders a token's addresses by it). A
//! module of its own so neither of the two depends on the other for it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a minted token counts toward its socket's load before the client connects.
const PENDING_WINDOW: Duration = Duration::from_secs(10);

/// Load of the Agent's netcode sockets, shared with the login service, which orders the
/// addresses in each connect token least-loaded first.
#[derive(Debug, Clone)]
pub struct AgentLoad(Arc<LoadInner>);

#[derive(Debug)]
struct LoadInner {
    addrs: Vec<SocketAddr>,
    connected: Vec<AtomicUsize>,
    recent: Mutex<VecDeque<(Instant, usize)>>,
}

impl AgentLoad {
    /// Load tracking for sockets at these public addresses.
    pub fn new(addrs: Vec<SocketAddr>) -> AgentLoad {
        let connected = addrs.iter().map(|_| AtomicUsize::new(0)).collect();
        AgentLoad(Arc::new(LoadInner { addrs, connected, recent: Mutex::new(VecDeque::new()) }))
    }

    /// The sockets' public addresses, in socket order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.0.addrs
    }

    /// Connected clients per socket.
    pub fn connected(&self) -> Vec<usize> {
        self.0.connected.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// The addresses for a new connect token, least-loaded first (connected + tokens minted
    /// in the last 10 s); records the mint against the first one.
    pub fn addrs_for_token(&self) -> Vec<SocketAddr> {
        let mut load = self.connected();
        let now = Instant::now();
        let Ok(mut recent) = self.0.recent.lock() else { return self.0.addrs.clone() };
        while recent.front().is_some_and(|(t, _)| now.duration_since(*t) > PENDING_WINDOW) {
            recent.pop_front();
        }
        for (_, i) in recent.iter() {
            load[*i] += 1;
        }
        let mut order: Vec<usize> = (0..load.len()).collect();
        order.sort_by_key(|i| (load[*i], *i));
        if let Some(first) = order.first() {
            recent.push_back((now, *first));
        }
        order.into_iter().map(|i| self.0.addrs[i]).collect()
    }

    /// Count a client joining (`delta` ≥ 0) or leaving (−1) a socket.
    pub(super) fn add(&self, socket: usize, delta: isize) {
        if let Some(c) = self.0.connected.get(socket) {
            if delta >= 0 {
                c.fetch_add(delta as usize, Ordering::Relaxed);
            } else {
                let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
            }
        }
    }
}
