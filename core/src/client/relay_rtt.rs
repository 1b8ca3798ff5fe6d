//! Round-trip times to the shard's relays, for the Game server's relay choice per pair
//! (issue #15): the shard lists its relays ([`ShardMessage::Relays`]), the client times a
//! STUN Binding to each (every relay answers STUN on its port) and reports the times
//! ([`ClientMessage::RelayRtts`]); the Game server picks for each pair the relay with the
//! lowest sum of both players' times.
//!
//! A round sends one Binding to every relay (one retransmission after 500 ms; a relay
//! silent for 1 s is reported unreachable). Rounds run when the list arrives, every
//! [`ROUND_EVERY`], and when a link had to leave its relay ([`RelayRtts::measure_now`]). A
//! round's result is reported when it is the first, or when a relay's time moved by at least
//! [`REPORT_CHANGE`] (and 10 %) or its reachability changed, so a steady client reports
//! rarely.
//!
//! [`ShardMessage::Relays`]: crate::proto::shard::ShardMessage::Relays
//! [`ClientMessage::RelayRtts`]: crate::proto::shard::ClientMessage::RelayRtts

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::endpoint::Transmit;
use crate::proto::shard::{MAX_RELAYS, RTT_UNREACHABLE};
use crate::stun::{BindingRequest, ChangeRequest, RetransmitConfig, TransactionId};

/// A measuring round this often (RTTs drift slowly; a dead relay is noticed by the links
/// long before, and they ask for a round at once).
pub const ROUND_EVERY: Duration = Duration::from_secs(30);
/// Smallest change of a relay's time worth a new report.
pub const REPORT_CHANGE: Duration = Duration::from_millis(10);
/// Binding retransmission: one more try after 500 ms, silence for 1 s in all is unreachable.
const RETRANSMIT: RetransmitConfig =
    RetransmitConfig { rto: Duration::from_millis(500), max_transmits: 2, final_wait_rtos: 1 };

#[derive(Debug)]
struct Probe {
    addr: SocketAddr,
    /// The last round's RTT; `None` until a first answer, or after a round without one.
    rtt: Option<Duration>,
    /// The running transaction of this round.
    tx: Option<BindingRequest>,
}

/// The client's relay RTT measurement (sans-IO, on the mesh socket: see the module docs).
#[derive(Debug)]
pub struct RelayRtts {
    probes: Vec<Probe>,
    next_round: Option<Instant>,
    rng: ChaCha8Rng,
    reported: Option<Vec<(u8, u16)>>,
    report: Option<Vec<(u8, u16)>>,
}

impl RelayRtts {
    /// No relays yet; transaction ids come from `seed`.
    pub fn new(seed: u64) -> RelayRtts {
        RelayRtts {
            probes: Vec::new(),
            next_round: None,
            rng: ChaCha8Rng::seed_from_u64(seed),
            reported: None,
            report: None,
        }
    }

    /// The shard's relay list (at most [`MAX_RELAYS`] are measured); a round starts now.
    /// The same list again keeps the times measured so far.
    pub fn set_relays(&mut self, now: Instant, relays: &[SocketAddr]) {
        let relays = &relays[..relays.len().min(MAX_RELAYS)];
        if self.probes.iter().map(|p| p.addr).ne(relays.iter().copied()) {
            self.probes = relays.iter().map(|&addr| Probe { addr, rtt: None, tx: None }).collect();
            self.reported = None;
        }
        self.measure_now(now);
    }

    /// Start a round now unless one runs.
    pub fn measure_now(&mut self, now: Instant) {
        if self.probes.iter().any(|p| p.tx.is_some()) {
            return;
        }
        for p in &mut self.probes {
            let tid = TransactionId::random(&mut self.rng);
            p.tx = Some(BindingRequest::new(now, p.addr, tid, ChangeRequest::NONE, RETRANSMIT));
        }
        self.next_round = (!self.probes.is_empty()).then_some(now + ROUND_EVERY);
    }

    /// A datagram from `from`: true if it answered one of our Bindings (consumed).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        let mut used = false;
        for p in self.probes.iter_mut().filter(|p| p.addr == from) {
            if let Some(tx) = p.tx.as_mut() {
                used |= tx.handle_datagram(now, from, data);
            }
        }
        if used {
            self.collect();
        }
        used
    }

    /// Retransmissions, give-ups and the next round.
    pub fn handle_timeout(&mut self, now: Instant) {
        for p in &mut self.probes {
            if let Some(tx) = p.tx.as_mut()
                && tx.poll_timeout().is_some_and(|t| t <= now)
            {
                tx.handle_timeout(now);
            }
        }
        self.collect();
        if self.next_round.is_some_and(|t| t <= now) {
            self.measure_now(now);
        }
    }

    /// Finished transactions become samples; a finished round may become a report.
    fn collect(&mut self) {
        for p in &mut self.probes {
            let Some(outcome) =
                p.tx.as_ref().and_then(|tx| tx.outcome().map(|o| (o.clone(), tx.transmits())))
            else {
                continue;
            };
            p.tx = None;
            p.rtt = match outcome {
                // Each round's answer is the relay's time now (a relay that got slower or
                // faster counts at once; the report threshold and the Game server's margin
                // absorb the noise). Only an answer to the one transmission is an RTT
                // sample (Karn): after a retransmission, keep what we had.
                (Ok(r), 1) => Some(r.rtt),
                (Ok(r), _) => Some(p.rtt.unwrap_or(r.rtt)),
                (Err(_), _) => None,
            };
        }
        if self.probes.is_empty() || self.probes.iter().any(|p| p.tx.is_some()) {
            return;
        }
        let now: Vec<(u8, u16)> = self
            .probes
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u8, p.rtt.map_or(RTT_UNREACHABLE, |d| d.as_millis().min(60_000) as u16)))
            .collect();
        let changed = match &self.reported {
            None => true,
            Some(old) => old.iter().zip(&now).any(|(&(_, a), &(_, b))| moved(a, b)),
        };
        if changed {
            self.reported = Some(now.clone());
            self.report = Some(now);
        }
    }

    /// A report for the shard, once per finished round that changed something.
    pub fn poll_report(&mut self) -> Option<Vec<(u8, u16)>> {
        self.report.take()
    }

    /// The next Binding to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.probes.iter_mut().find_map(|p| p.tx.as_mut().and_then(|tx| tx.poll_transmit()))
    }

    /// When [`RelayRtts::handle_timeout`] should run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.probes.iter().filter_map(|p| p.tx.as_ref()?.poll_timeout()).chain(self.next_round).min()
    }

    /// The smoothed times so far, by relay index (`None`: no answer).
    pub fn rtts(&self) -> Vec<Option<Duration>> {
        self.probes.iter().map(|p| p.rtt).collect()
    }
}

/// A relay's reported time moved enough to report again: reachability changed, or by at
/// least [`REPORT_CHANGE`] and 10 %.
fn moved(old: u16, new: u16) -> bool {
    if (old == RTT_UNREACHABLE) != (new == RTT_UNREACHABLE) {
        return true;
    }
    let d = old.abs_diff(new);
    u128::from(d) >= REPORT_CHANGE.as_millis() && u32::from(d) * 10 >= u32::from(old.max(new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;
    use crate::stun::{StunServer, StunServerConfig};

    fn server(addr: SocketAddr) -> StunServer {
        StunServer::new(StunServerConfig {
            primary: addr,
            alt_port: None,
            alt_ip: None,
            software: None,
            no_amplification: true,
        })
    }

    #[test]
    fn relay_rtts_are_measured_reported_once_and_a_silent_relay_is_unreachable() {
        let t0 = Instant::now();
        let me: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let relays: Vec<SocketAddr> = ["203.0.113.1:3478", "203.0.113.2:3478", "203.0.113.3:3478"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let mut servers: Vec<StunServer> = relays[..2].iter().map(|a| server(*a)).collect();
        let mut m = RelayRtts::new(1);
        m.set_relays(t0, &relays);
        // Relay 0 answers after 40 ms, relay 1 after 90 ms, relay 2 never.
        let delays = [Duration::from_millis(40), Duration::from_millis(90)];
        let mut answers = Vec::new();
        while let Some(t) = m.poll_transmit() {
            if let Some(i) = relays[..2].iter().position(|a| *a == t.dst) {
                servers[i].handle_datagram(t0, t.dst, me, &t.payload);
                let r = servers[i].poll_transmit().expect("answered");
                answers.push((t0 + delays[i], relays[i], r.payload));
            }
        }
        for (at, from, bytes) in answers {
            assert!(m.handle_datagram(at, from, &bytes));
        }
        assert!(!m.handle_datagram(t0, relays[0], &[0; 20]), "not ours");
        assert_eq!(m.poll_report(), None, "relay 2 has not answered nor timed out yet");
        let mut now = t0;
        while let Some(t) = m.poll_timeout().filter(|t| *t < t0 + Duration::from_secs(2)) {
            now = t;
            m.handle_timeout(now);
            while m.poll_transmit().is_some() {}
        }
        assert_eq!(m.poll_report(), Some(vec![(0, 40), (1, 90), (2, RTT_UNREACHABLE)]));
        assert!(now - t0 <= Duration::from_millis(1000), "unreachable within 1 s: {:?}", now - t0);
        // The next round changes nothing worth a report; the same list keeps the times.
        m.set_relays(now, &relays);
        assert_eq!(m.rtts()[1], Some(Duration::from_millis(90)));
        assert!(moved(90, 120) && !moved(90, 95) && moved(RTT_UNREACHABLE, 500) && !moved(400, 420));
    }
}
