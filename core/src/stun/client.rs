//! Client side of one STUN Binding transaction (RFC 8489 §6.2.1), sans-IO.
//!
//! A [`BindingRequest`] owns the request bytes, its retransmission schedule and the
//! matching rules; the caller routes datagrams to it and polls it:
//!
//! ```text
//! let mut tx = BindingRequest::new(now, server, TransactionId::random(&mut rng),
//!                                  ChangeRequest::NONE, RetransmitConfig::default());
//! loop {
//!     while let Some(t) = tx.poll_transmit() { send(t) }
//!     // on a datagram: tx.handle_datagram(now, from, &bytes)
//!     // at tx.poll_timeout(): tx.handle_timeout(now)
//!     if let Some(outcome) = tx.outcome() { break outcome }
//! }
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::codec::{ChangeRequest, Class, METHOD_BINDING, Message, TransactionId};
use crate::endpoint::Transmit;

/// Retransmission schedule over UDP (RFC 8489 §6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitConfig {
    /// First retransmission timeout; doubles after every transmission.
    /// Default 250 ms: our servers are a round trip of tens of ms away, and a game
    /// client should learn its address in well under a second on a good path.
    pub rto: Duration,
    /// Total transmissions, the first included (RFC 8489 `Rc`, default 7).
    pub max_transmits: u32,
    /// After the last transmission, wait this many initial RTOs (RFC 8489 `Rm`, default 16).
    pub final_wait_rtos: u32,
}

impl Default for RetransmitConfig {
    fn default() -> Self {
        RetransmitConfig { rto: Duration::from_millis(250), max_transmits: 7, final_wait_rtos: 16 }
    }
}

impl RetransmitConfig {
    /// When a transaction started at `t0` gives up if nothing answers.
    pub fn give_up_after(&self) -> Duration {
        let mut total = Duration::ZERO;
        let mut rto = self.rto;
        for _ in 1..self.max_transmits.max(1) {
            total += rto;
            rto = rto.saturating_mul(2);
        }
        total + self.rto.saturating_mul(self.final_wait_rtos)
    }
}

/// What a successful Binding response told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingResponse {
    /// Our reflexive (public) address: XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS.
    pub mapped: SocketAddr,
    /// The server's alternate address: OTHER-ADDRESS, else CHANGED-ADDRESS.
    pub other_address: Option<SocketAddr>,
    /// Where the server says it answered from: RESPONSE-ORIGIN, else SOURCE-ADDRESS.
    pub response_origin: Option<SocketAddr>,
    /// The UDP source the response actually came from.
    pub from: SocketAddr,
    /// Time from the last transmission to the response (an RTT sample when it is the
    /// only transmission, an upper bound otherwise).
    pub rtt: Duration,
}

/// Why a Binding transaction failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BindingError {
    /// No matching response after every retransmission: the server is unreachable, UDP is
    /// blocked, or (for a CHANGE-REQUEST) a NAT filtered the reply.
    #[error("no STUN response after {transmits} transmissions")]
    TimedOut {
        /// How many times the request was sent.
        transmits: u32,
    },
    /// The server answered with an error response.
    #[error("STUN error response {code}: {reason}")]
    ErrorResponse {
        /// ERROR-CODE number (e.g. 420 when the server has no alternate address).
        code: u16,
        /// Reason phrase as sent.
        reason: String,
    },
    /// A success response without any mapped address attribute.
    #[error("STUN success response carried no mapped address")]
    NoMappedAddress,
}

/// One Binding request/response transaction with retransmissions.
#[derive(Debug, Clone)]
pub struct BindingRequest {
    server: SocketAddr,
    accept_from: Option<SocketAddr>,
    transaction_id: TransactionId,
    change: ChangeRequest,
    payload: Vec<u8>,
    config: RetransmitConfig,
    transmits: u32,
    send_pending: bool,
    next_rto: Duration,
    deadline: Option<Instant>,
    last_sent: Instant,
    outcome: Option<Result<BindingResponse, BindingError>>,
}

impl BindingRequest {
    /// Start a transaction to `server`; the first transmission is ready at once.
    ///
    /// Responses must come from `server` when `change` is empty; with a CHANGE-REQUEST
    /// they must come from the address given by [`BindingRequest::expect_from`] (any
    /// source, if never set).
    pub fn new(
        now: Instant,
        server: SocketAddr,
        transaction_id: TransactionId,
        change: ChangeRequest,
        config: RetransmitConfig,
    ) -> Self {
        let payload = Message::padded_binding_request(transaction_id, change).encode();
        let mut tx = BindingRequest {
            server,
            accept_from: if change.any() { None } else { Some(server) },
            transaction_id,
            change,
            payload,
            config,
            transmits: 0,
            send_pending: false,
            next_rto: config.rto,
            deadline: None,
            last_sent: now,
            outcome: None,
        };
        tx.send(now);
        tx
    }

    /// Hand out one more transmission at `now` and schedule what follows it.
    fn send(&mut self, now: Instant) {
        let max = self.config.max_transmits.max(1);
        self.transmits += 1;
        self.send_pending = true;
        self.last_sent = now;
        if self.transmits < max {
            self.deadline = Some(now + self.next_rto);
            self.next_rto = self.next_rto.saturating_mul(2);
        } else {
            self.deadline = Some(now + self.config.rto.saturating_mul(self.config.final_wait_rtos));
        }
    }

    /// Only accept a response whose UDP source is `from` (for CHANGE-REQUEST tests: the
    /// server's changed address; a server that ignored the flags is then not believed).
    pub fn expect_from(mut self, from: SocketAddr) -> Self {
        self.accept_from = Some(from);
        self
    }

    /// The transaction id, for routing responses to this transaction.
    pub fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    /// The server this request goes to.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The CHANGE-REQUEST flags sent.
    pub fn change(&self) -> ChangeRequest {
        self.change
    }

    /// How many times the request has been handed out for sending.
    pub fn transmits(&self) -> u32 {
        self.transmits
    }

    /// `Some` once the transaction has finished.
    pub fn outcome(&self) -> Option<&Result<BindingResponse, BindingError>> {
        self.outcome.as_ref()
    }

    /// The next datagram to send (`src: None`: the client's one socket).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if !self.send_pending || self.outcome.is_some() {
            return None;
        }
        self.send_pending = false;
        Some(Transmit { src: None, dst: self.server, payload: self.payload.clone() })
    }

    /// When [`BindingRequest::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() { None } else { self.deadline }
    }

    /// Advance the retransmission schedule to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if self.outcome.is_some() || now < deadline {
            return;
        }
        if self.transmits < self.config.max_transmits.max(1) {
            self.send(now);
        } else {
            self.deadline = None;
            self.outcome = Some(Err(BindingError::TimedOut { transmits: self.transmits }));
        }
    }

    /// Offer a decoded message that arrived from `from`; returns true if it was ours and
    /// finished the transaction.
    pub fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: &Message) -> bool {
        if self.outcome.is_some()
            || msg.transaction_id != self.transaction_id
            || msg.method != METHOD_BINDING
            || self.accept_from.is_some_and(|a| a != from)
        {
            return false;
        }
        let outcome = match msg.class {
            Class::SuccessResponse => match msg.mapped_address() {
                Some(mapped) => Ok(BindingResponse {
                    mapped,
                    other_address: msg.other_address(),
                    response_origin: msg.response_origin(),
                    from,
                    rtt: now.saturating_duration_since(self.last_sent),
                }),
                None => Err(BindingError::NoMappedAddress),
            },
            Class::ErrorResponse => {
                let (code, reason) = msg.error_code().unwrap_or((0, ""));
                Err(BindingError::ErrorResponse { code, reason: reason.to_owned() })
            }
            Class::Request | Class::Indication => return false,
        };
        self.outcome = Some(outcome);
        self.deadline = None;
        true
    }

    /// Decode and offer a datagram; returns true if it finished this transaction.
    /// Anything undecodable or not ours is ignored (it is not an error for a shared socket).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        match Message::decode(data) {
            Ok(m) => self.handle_message(now, from, &m),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;
    use crate::stun::codec::Attribute;
    use crate::stun::server::{StunServer, StunServerConfig};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Run the schedule with nobody answering; return the send times in ms from start.
    fn schedule(cfg: RetransmitConfig) -> (Vec<u128>, u128) {
        let t0 = Instant::now();
        let mut tx = BindingRequest::new(
            t0,
            sa("192.0.2.1:3478"),
            TransactionId::new([0; 12]),
            ChangeRequest::NONE,
            cfg,
        );
        let mut sends = Vec::new();
        if tx.poll_transmit().is_some() {
            sends.push(0);
        }
        loop {
            let now = tx.poll_timeout().expect("pending transaction has a deadline");
            tx.handle_timeout(now);
            if tx.poll_transmit().is_some() {
                sends.push((now - t0).as_millis());
            }
            if let Some(out) = tx.outcome() {
                assert_eq!(out, &Err(BindingError::TimedOut { transmits: cfg.max_transmits }));
                return (sends, (now - t0).as_millis());
            }
        }
    }

    #[test]
    fn default_schedule_is_250ms_doubling_seven_tries_then_16_rto() {
        let (sends, gave_up) = schedule(RetransmitConfig::default());
        assert_eq!(sends, vec![0, 250, 750, 1750, 3750, 7750, 15750]);
        assert_eq!(gave_up, 15750 + 16 * 250);
        assert_eq!(RetransmitConfig::default().give_up_after(), Duration::from_millis(19750));
        let short =
            RetransmitConfig { rto: Duration::from_millis(100), max_transmits: 3, final_wait_rtos: 2 };
        assert_eq!(schedule(short), (vec![0, 100, 300], 500));
        assert_eq!(short.give_up_after(), Duration::from_millis(500));
    }

    #[test]
    fn early_timeout_calls_do_not_resend() {
        let t0 = Instant::now();
        let mut tx = BindingRequest::new(
            t0,
            sa("192.0.2.1:3478"),
            TransactionId::new([0; 12]),
            ChangeRequest::NONE,
            RetransmitConfig::default(),
        );
        tx.handle_timeout(t0);
        assert!(tx.poll_transmit().is_some(), "the first transmission is ready at once");
        assert!(tx.poll_transmit().is_none());
        for ms in [1, 100, 249] {
            tx.handle_timeout(t0 + Duration::from_millis(ms));
            assert!(tx.poll_transmit().is_none(), "resent early at {ms} ms");
        }
    }

    #[test]
    fn gets_mapped_other_and_origin_from_our_server() {
        let t0 = Instant::now();
        let primary = sa("192.0.2.1:3478");
        let mut srv = StunServer::new(StunServerConfig::rfc5780(primary, 3479, "192.0.2.2".parse().unwrap()));
        let me = sa("203.0.113.9:5555");
        let mut tx = BindingRequest::new(
            t0,
            primary,
            TransactionId::new([1; 12]),
            ChangeRequest::NONE,
            RetransmitConfig::default(),
        );
        tx.handle_timeout(t0);
        let t = tx.poll_transmit().unwrap();
        srv.handle_datagram(t0, t.dst, me, &t.payload);
        let r = srv.poll_transmit().unwrap();
        let later = t0 + Duration::from_millis(30);
        assert!(tx.handle_datagram(later, r.src.unwrap(), &r.payload));
        let resp = tx.outcome().unwrap().clone().unwrap();
        assert_eq!(resp.mapped, me);
        assert_eq!(resp.other_address, Some(sa("192.0.2.2:3479")));
        assert_eq!(resp.response_origin, Some(primary));
        assert_eq!(resp.rtt, Duration::from_millis(30));
        assert_eq!(tx.poll_timeout(), None, "a finished transaction needs no timer");
    }

    #[test]
    fn matches_by_transaction_id_and_source() {
        let t0 = Instant::now();
        let server = sa("192.0.2.1:3478");
        let tid = TransactionId::new([2; 12]);
        let mut tx = BindingRequest::new(t0, server, tid, ChangeRequest::NONE, RetransmitConfig::default());
        let mut resp = Message::new(Class::SuccessResponse, METHOD_BINDING, tid);
        resp.attributes.push(Attribute::XorMappedAddress(sa("1.1.1.1:1")));
        // Right id, wrong source (an off-path attacker guessing ids would also need this).
        assert!(!tx.handle_message(t0, sa("192.0.2.66:3478"), &resp));
        // Wrong id, right source.
        let mut other = resp.clone();
        other.transaction_id = TransactionId::new([3; 12]);
        assert!(!tx.handle_message(t0, server, &other));
        assert!(tx.outcome().is_none());
        assert!(tx.handle_message(t0, server, &resp));
        // Later duplicates are ignored.
        assert!(!tx.handle_message(t0, server, &resp));
    }

    #[test]
    fn change_request_accepts_only_the_expected_changed_source() {
        let t0 = Instant::now();
        let server = sa("192.0.2.1:3478");
        let tid = TransactionId::new([4; 12]);
        let mut tx =
            BindingRequest::new(t0, server, tid, ChangeRequest::IP_AND_PORT, RetransmitConfig::default())
                .expect_from(sa("192.0.2.2:3479"));
        let mut resp = Message::new(Class::SuccessResponse, METHOD_BINDING, tid);
        resp.attributes.push(Attribute::MappedAddress(sa("1.1.1.1:1")));
        assert!(!tx.handle_message(t0, server, &resp), "server ignored the change flags");
        assert!(tx.handle_message(t0, sa("192.0.2.2:3479"), &resp));
        assert_eq!(tx.outcome().unwrap().as_ref().unwrap().mapped, sa("1.1.1.1:1"), "MAPPED fallback");
    }

    #[test]
    fn error_and_empty_responses_fail_the_transaction() {
        let t0 = Instant::now();
        let server = sa("192.0.2.1:3478");
        let tid = TransactionId::new([5; 12]);
        let mut tx = BindingRequest::new(t0, server, tid, ChangeRequest::NONE, RetransmitConfig::default());
        let mut err = Message::new(Class::ErrorResponse, METHOD_BINDING, tid);
        err.attributes.push(Attribute::ErrorCode { code: 420, reason: "Unknown Attribute".into() });
        assert!(tx.handle_message(t0, server, &err));
        assert_eq!(
            tx.outcome(),
            Some(&Err(BindingError::ErrorResponse { code: 420, reason: "Unknown Attribute".into() }))
        );
        let mut tx = BindingRequest::new(t0, server, tid, ChangeRequest::NONE, RetransmitConfig::default());
        assert!(tx.handle_message(t0, server, &Message::new(Class::SuccessResponse, METHOD_BINDING, tid)));
        assert_eq!(tx.outcome(), Some(&Err(BindingError::NoMappedAddress)));
    }
}
