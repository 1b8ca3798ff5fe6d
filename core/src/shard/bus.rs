//! The queues between roles: [`InternalMessage`]s as encoded bytes, one queue per destination.
//!
//! Roles never call into each other's code; they exchange messages encoded with
//! [`crate::proto::shard::encode`], exactly what a cross-process internal link carries, so a
//! role can move to its own process without changing. Undecodable messages are counted and
//! dropped.

use std::collections::{HashMap, VecDeque};

use crate::proto::shard::{InternalMessage, Role, decode, encode};

/// Watches the bus (the servers' benchmark metrics hook in here); every method is a no-op by
/// default.
pub trait BusObserver: Send + Sync + std::fmt::Debug {
    /// `msg` (encoded to `len` bytes) was queued for `to`.
    fn sent(&mut self, _to: Role, _msg: &InternalMessage, _len: usize) {}
    /// Raw bytes were queued for `to`.
    fn sent_raw(&mut self, _to: Role) {}
    /// `n` messages queued for `role` were taken off the bus (`usize::MAX`: all of them, raw).
    fn drained(&mut self, _role: Role, _n: usize) {}
    /// `role`'s queue was dropped.
    fn cleared(&mut self, _role: Role) {}
}

/// Queues of encoded internal messages, one per destination role.
#[derive(Default, Debug)]
pub struct Bus {
    queues: HashMap<Role, VecDeque<Vec<u8>>>,
    /// Messages that failed to encode or decode (dropped).
    pub errors: u64,
    /// Messages delivered.
    pub delivered: u64,
    observer: Option<Box<dyn BusObserver>>,
}

impl Bus {
    /// A bus whose traffic `observer` watches.
    pub fn with_observer(observer: Box<dyn BusObserver>) -> Bus {
        Bus { observer: Some(observer), ..Bus::default() }
    }

    /// Queue `msg` for `to`.
    pub fn send(&mut self, to: Role, msg: &InternalMessage) {
        match encode(msg) {
            Ok(b) => {
                if let Some(o) = &mut self.observer {
                    o.sent(to, msg, b.len());
                }
                self.queues.entry(to).or_default().push_back(b)
            }
            Err(_) => self.errors += 1,
        }
    }

    /// Queue raw bytes for `to` (an internal link's input; tests inject garbage with this).
    pub fn send_raw(&mut self, to: Role, bytes: Vec<u8>) {
        if let Some(o) = &mut self.observer {
            o.sent_raw(to);
        }
        self.queues.entry(to).or_default().push_back(bytes);
    }

    /// Everything queued for `role`, decoded; undecodable messages are counted and dropped.
    pub fn drain(&mut self, role: Role) -> Vec<InternalMessage> {
        let Some(q) = self.queues.get_mut(&role) else { return Vec::new() };
        if let Some(o) = &mut self.observer {
            o.drained(role, q.len());
        }
        let mut out = Vec::with_capacity(q.len());
        for b in q.drain(..) {
            match decode::<InternalMessage>(&b) {
                Ok(m) => out.push(m),
                Err(_) => self.errors += 1,
            }
        }
        self.delivered += out.len() as u64;
        out
    }

    /// Raw bytes queued for `role` (an internal link forwards them unchanged).
    pub fn drain_raw(&mut self, role: Role) -> Vec<Vec<u8>> {
        if let Some(o) = &mut self.observer {
            o.drained(role, usize::MAX);
        }
        self.queues.get_mut(&role).map(|q| q.drain(..).collect()).unwrap_or_default()
    }

    /// Roles that have messages queued.
    pub fn pending_roles(&self) -> Vec<Role> {
        self.queues.iter().filter(|(_, q)| !q.is_empty()).map(|(r, _)| *r).collect()
    }

    /// Drop everything queued for `role` (a dead role's inbox).
    pub fn clear(&mut self, role: Role) {
        self.queues.remove(&role);
        if let Some(o) = &mut self.observer {
            o.cleared(role);
        }
    }
}
