//! The RFC 5780 test sequence as a sans-IO [`Endpoint`] on the client's one socket.
//!
//! Order matters, because every test shares one NAT mapping and filters open as we send:
//!
//! 1. **Test I** — Binding to the primary address: public address, OTHER-ADDRESS. No
//!    answer at all → `blocked`.
//! 2. **Filtering II and III, in parallel** — CHANGE-REQUEST (IP+port) and (port) to the
//!    primary. Both only ever send to the primary address, so neither opens the filter
//!    for the other's reply; running them together halves the time a filtering NAT costs
//!    (each unanswered test waits a full retransmission schedule).
//! 3. **Mapping II** — Binding to alternate IP, primary port. It must come *after* the
//!    filtering tests: it opens the filter towards the alternate IP.
//! 4. **Mapping III** — Binding to the alternate address, only if II's mapping differed.
//! 5. **Allocation probes** — only for dependent mappings: up to
//!    [`NatDiscoveryConfig::extra_probes`] more Bindings, first to `ip1:port2`, then to
//!    [`NatDiscoveryConfig::extra_servers`], each creating one more mapping.
//!
//! With no NAT (mapped == local) the mapping tests are skipped: there is no mapping.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::classify::{ClassifyConfig, NatReport, Observations, Probe, classify_with};
use crate::endpoint::{Endpoint, Transmit};
use crate::stun::{BindingError, BindingRequest, ChangeRequest, Message, RetransmitConfig, TransactionId};

/// Tunables of the discovery, with the reason for each default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatDiscoveryConfig {
    /// Retransmissions per test. Default: 250 ms doubling, 5 transmissions, then 8 RTOs
    /// (gives up after 5.75 s). Shorter than a plain Binding's RFC default because a
    /// filtering NAT makes silence the *expected* answer to two tests, and netcheck
    /// should finish in seconds.
    pub retransmit: RetransmitConfig,
    /// Extra allocation probes for dependent mappings (default 1: `ip1:port2`, which
    /// gives four mappings to four destinations). Bounded by the destinations available.
    pub extra_probes: usize,
    /// More STUN servers for allocation probes (only the Binding is used).
    pub extra_servers: Vec<SocketAddr>,
    /// Judgement calls of the classifier.
    pub classify: ClassifyConfig,
}

impl Default for NatDiscoveryConfig {
    fn default() -> Self {
        NatDiscoveryConfig {
            retransmit: RetransmitConfig {
                rto: Duration::from_millis(250),
                max_transmits: 5,
                final_wait_rtos: 8,
            },
            extra_probes: 1,
            extra_servers: Vec::new(),
            classify: ClassifyConfig::default(),
        }
    }
}

/// Which observation a transaction feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Primary,
    FilterIpPort,
    FilterPort,
    AltIp,
    AltIpPort,
    Extra(usize),
}

/// Where the sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Primary,
    Filtering,
    AltIp,
    AltIpPort,
    Extra(usize),
    Done,
}

/// RFC 5780 NAT behaviour discovery against one STUN server, sans-IO.
///
/// Drive it like any [`Endpoint`] on the client socket (all its transmits have
/// `src: None`) until [`NatDiscovery::is_done`], then read [`NatDiscovery::report`].
#[derive(Debug)]
pub struct NatDiscovery {
    config: NatDiscoveryConfig,
    obs: Observations,
    phase: Phase,
    txs: Vec<(Slot, BindingRequest)>,
    rng: ChaCha8Rng,
    ignored: u64,
}

impl NatDiscovery {
    /// Start discovery at `now` against `server`, from the socket whose address is
    /// `local` (use a concrete IP, not `0.0.0.0`, or `open` cannot be detected).
    /// `other` is the server's alternate address if already known; otherwise it is
    /// learnt from test I. Transaction ids come from `rng`.
    pub fn new<R: RngCore + ?Sized>(
        now: Instant,
        server: SocketAddr,
        other: Option<SocketAddr>,
        local: SocketAddr,
        config: NatDiscoveryConfig,
        rng: &mut R,
    ) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let mut d = NatDiscovery {
            config,
            obs: Observations::new(local, server, other),
            phase: Phase::Primary,
            txs: Vec::new(),
            rng: ChaCha8Rng::from_seed(seed),
            ignored: 0,
        };
        d.start(now, Slot::Primary, server, ChangeRequest::NONE, None);
        d
    }

    /// True once every test that can run has finished.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The public address, as soon as test I has answered.
    pub fn public(&self) -> Option<SocketAddr> {
        self.obs.primary.mapped()
    }

    /// Raw observations so far (for logs and for [`super::classify()`]).
    pub fn observations(&self) -> &Observations {
        &self.obs
    }

    /// The verdict from what has been observed so far (final once [`Self::is_done`]);
    /// tests still running count as unknown.
    pub fn report(&self) -> NatReport {
        classify_with(&self.obs, &self.config.classify)
    }

    /// Datagrams that arrived but matched no running test (other traffic on the socket).
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    fn slot_mut(&mut self, slot: Slot) -> &mut Probe {
        match slot {
            Slot::Primary => &mut self.obs.primary,
            Slot::FilterIpPort => &mut self.obs.filter_ip_port,
            Slot::FilterPort => &mut self.obs.filter_port,
            Slot::AltIp => &mut self.obs.alt_ip,
            Slot::AltIpPort => &mut self.obs.alt_ip_port,
            Slot::Extra(i) => &mut self.obs.extra[i].1,
        }
    }

    fn start(
        &mut self,
        now: Instant,
        slot: Slot,
        dst: SocketAddr,
        change: ChangeRequest,
        expect: Option<SocketAddr>,
    ) {
        let tid = TransactionId::random(&mut self.rng);
        let mut tx = BindingRequest::new(now, dst, tid, change, self.config.retransmit);
        if let Some(e) = expect {
            tx = tx.expect_from(e);
        }
        if let Slot::Extra(i) = slot {
            debug_assert_eq!(i, self.obs.extra.len());
            self.obs.extra.push((dst, Probe::Pending));
        }
        *self.slot_mut(slot) = Probe::Pending;
        self.txs.push((slot, tx));
    }

    /// Move finished transactions into observations, then start whatever comes next.
    fn advance(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.txs.len() {
            if let Some(outcome) = self.txs[i].1.outcome() {
                let probe = match outcome {
                    Ok(r) => {
                        if self.txs[i].0 == Slot::Primary && self.obs.other.is_none() {
                            self.obs.other = r.other_address;
                        }
                        Probe::Mapped(r.mapped)
                    }
                    Err(BindingError::TimedOut { .. }) => Probe::NoResponse,
                    Err(BindingError::ErrorResponse { code, .. }) => Probe::Error(*code),
                    Err(BindingError::NoMappedAddress) => Probe::Error(0),
                };
                let slot = self.txs.swap_remove(i).0;
                *self.slot_mut(slot) = probe;
            } else {
                i += 1;
            }
        }
        if !self.txs.is_empty() {
            return;
        }
        let server = self.obs.server;
        let m1 = self.obs.primary.mapped();
        self.phase = match (self.phase, self.obs.other, m1) {
            (Phase::Done, ..) => Phase::Done,
            (_, None, _) | (_, _, None) => Phase::Done,
            (Phase::Primary, Some(other), Some(_)) => {
                let port_changed = SocketAddr::new(server.ip(), other.port());
                self.start(now, Slot::FilterIpPort, server, ChangeRequest::IP_AND_PORT, Some(other));
                self.start(now, Slot::FilterPort, server, ChangeRequest::PORT, Some(port_changed));
                Phase::Filtering
            }
            (Phase::Filtering, Some(other), Some(m1)) => {
                if m1 == self.obs.local {
                    Phase::Done
                } else {
                    let dst = SocketAddr::new(other.ip(), server.port());
                    self.start(now, Slot::AltIp, dst, ChangeRequest::NONE, None);
                    Phase::AltIp
                }
            }
            (Phase::AltIp, Some(other), Some(m1)) => match self.obs.alt_ip.mapped() {
                Some(m2) if m2 != m1 => {
                    self.start(now, Slot::AltIpPort, other, ChangeRequest::NONE, None);
                    Phase::AltIpPort
                }
                _ => Phase::Done,
            },
            (Phase::AltIpPort | Phase::Extra(_), Some(other), Some(_)) => {
                let next = match self.phase {
                    Phase::Extra(n) => n + 1,
                    _ => 0,
                };
                let last_ok = match self.phase {
                    Phase::Extra(n) => self.obs.extra[n].1.mapped().is_some(),
                    _ => self.obs.alt_ip_port.mapped().is_some(),
                };
                let dst = std::iter::once(SocketAddr::new(server.ip(), other.port()))
                    .chain(self.config.extra_servers.iter().copied())
                    .nth(next);
                match dst {
                    Some(dst) if last_ok && next < self.config.extra_probes => {
                        self.start(now, Slot::Extra(next), dst, ChangeRequest::NONE, None);
                        Phase::Extra(next)
                    }
                    _ => Phase::Done,
                }
            }
        };
    }
}

impl Endpoint for NatDiscovery {
    fn handle_datagram(&mut self, now: Instant, _local: SocketAddr, from: SocketAddr, data: &[u8]) {
        let Ok(msg) = Message::decode(data) else {
            self.ignored += 1;
            return;
        };
        let matched = self.txs.iter_mut().any(|(_, tx)| tx.handle_message(now, from, &msg));
        if matched {
            self.advance(now);
        } else {
            self.ignored += 1;
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        for (_, tx) in &mut self.txs {
            tx.handle_timeout(now);
        }
        self.advance(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.txs.iter_mut().find_map(|(_, tx)| tx.poll_transmit())
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.txs.iter().filter_map(|(_, tx)| tx.poll_timeout()).min()
    }
}
