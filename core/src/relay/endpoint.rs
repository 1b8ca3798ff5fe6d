//! [`Relay`] behind the [`Endpoint`] trait, with a transmit queue, for the simulator and
//! simple drivers. The data plane calls [`Relay::process`] directly instead.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use super::engine::{Action, Relay, ReplyBuf};
use crate::endpoint::{Endpoint, Transmit};

/// A [`Relay`] that queues what it sends. Every transmit goes out from the local address
/// the datagram that caused it arrived on, so a multi-homed relay answers from the address
/// the client sent to (NATs only pass replies from that address).
#[derive(Debug)]
pub struct RelayEndpoint {
    relay: Relay,
    queue: VecDeque<Transmit>,
    buf: ReplyBuf,
}

impl RelayEndpoint {
    /// Wrap a relay.
    pub fn new(relay: Relay) -> RelayEndpoint {
        RelayEndpoint { relay, queue: VecDeque::new(), buf: ReplyBuf::default() }
    }

    /// The relay inside (stats, bindings, key rotation).
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// The relay inside, mutably.
    pub fn relay_mut(&mut self) -> &mut Relay {
        &mut self.relay
    }
}

impl Endpoint for RelayEndpoint {
    fn handle_datagram(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]) {
        match self.relay.process(now, from, data, &mut self.buf) {
            Action::Forward { to } => {
                self.queue.push_back(Transmit { src: Some(local), dst: to, payload: data.to_vec() })
            }
            Action::Reply { to, len, notify, forward, early } => {
                self.queue.push_back(Transmit {
                    src: Some(local),
                    dst: to,
                    payload: self.buf.reply[..len].to_vec(),
                });
                for d in self.buf.early_datagrams(early) {
                    self.queue.push_back(Transmit { src: Some(local), dst: to, payload: d.to_vec() });
                }
                if let Some(n) = notify {
                    self.queue.push_back(Transmit {
                        src: Some(local),
                        dst: n.to,
                        payload: self.buf.notify[..n.len].to_vec(),
                    });
                }
                if let Some(e) = forward {
                    self.queue.push_back(Transmit {
                        src: Some(local),
                        dst: e.to,
                        payload: data[e.start..e.start + e.len].to_vec(),
                    });
                }
            }
            Action::Drop(_) => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.relay.handle_timeout(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.queue.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.relay.poll_timeout()
    }
}
