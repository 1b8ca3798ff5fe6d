//! The in-process internal link: role ↔ role messages as encoded bytes in per-role queues.
//!
//! Roles never call into each other's code; they exchange [`InternalMessage`]s encoded with
//! [`p2pmodel_core::proto::shard::encode`], exactly what a cross-process link carries, so a
//! role can move to its own process without changing its systems. Undecodable messages are
//! counted and dropped.

use std::collections::{HashMap, VecDeque};

use bevy::prelude::Resource;
use p2pmodel_core::proto::shard::{InternalMessage, Role, decode, encode};

/// Queues of encoded internal messages, one per destination role.
#[derive(Resource, Default, Debug)]
pub struct ShardBus {
    queues: HashMap<Role, VecDeque<Vec<u8>>>,
    /// Messages that failed to encode or decode (dropped).
    pub errors: u64,
    /// Messages delivered.
    pub delivered: u64,
    clock: super::metrics::BusClock, // bench metrics (inert unless enabled)
}

impl ShardBus {
    /// Queue `msg` for `to`.
    pub fn send(&mut self, to: Role, msg: &InternalMessage) {
        match encode(msg) {
            Ok(b) => {
                self.clock.sent(to, msg, b.len()); // bench metrics
                self.queues.entry(to).or_default().push_back(b)
            }
            Err(_) => self.errors += 1,
        }
    }

    /// Queue raw bytes for `to` (tests inject garbage with this).
    pub fn send_raw(&mut self, to: Role, bytes: Vec<u8>) {
        self.clock.sent_raw(to); // bench metrics
        self.queues.entry(to).or_default().push_back(bytes);
    }

    /// Everything queued for `role`, decoded; undecodable messages are counted and dropped.
    pub fn drain(&mut self, role: Role) -> Vec<InternalMessage> {
        let Some(q) = self.queues.get_mut(&role) else { return Vec::new() };
        self.clock.drained(role, q.len()); // bench metrics
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

    /// Raw bytes queued for `role` (the remote bus forwards them unchanged).
    pub fn drain_raw(&mut self, role: Role) -> Vec<Vec<u8>> {
        self.clock.drained(role, usize::MAX); // bench metrics
        self.queues.get_mut(&role).map(|q| q.drain(..).collect()).unwrap_or_default()
    }

    /// Roles that have messages queued.
    pub fn pending_roles(&self) -> Vec<Role> {
        self.queues.iter().filter(|(_, q)| !q.is_empty()).map(|(r, _)| *r).collect()
    }

    /// Drop everything queued for `role` (a dead role's inbox).
    pub fn clear(&mut self, role: Role) {
        self.queues.remove(&role);
        self.clock.cleared(role); // bench metrics
    }
}
