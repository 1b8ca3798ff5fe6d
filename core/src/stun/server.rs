//! A sans-IO STUN Binding server with RFC 5780 NAT-behaviour-discovery support.
//!
//! It owns up to four local addresses — `ip1:port1` (primary), `ip1:port2`, `ip2:port1`,
//! `ip2:port2` — and answers a Binding request on whichever one it arrived, or from the
//! address a CHANGE-REQUEST asks for. What goes into a response depends on the dialect of
//! the request:
//!
//! | request | response attributes |
//! |---|---|
//! | RFC 5389/8489 (magic cookie) | XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS¹, SOFTWARE², FINGERPRINT³ |
//! | RFC 3489 (no cookie) | MAPPED-ADDRESS, SOURCE-ADDRESS, CHANGED-ADDRESS¹ |
//!
//! ¹ only when an alternate IP *and* an alternate port are configured (RFC 5780 §7.4).
//! ² only when configured (off by default: it is pure amplification).
//! ³ only when the request carried one.
//!
//! It never answers anything that is not a well-formed Binding request, and a response is
//! at most [`MAX_RESPONSE_LEN`] bytes (plus a configured SOFTWARE), so it is a poor
//! reflector for amplification attacks. Every datagram it ignores is counted in
//! [`StunDrops`].

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::codec::{Attribute, ChangeRequest, Class, METHOD_BINDING, Message, attr_type};
use crate::endpoint::{Endpoint, Transmit};

/// Largest response without SOFTWARE: header + four IPv6 address attributes + FINGERPRINT.
pub const MAX_RESPONSE_LEN: usize = 20 + 4 * 24 + 8;
/// At most this many types are listed in a 420 response's UNKNOWN-ATTRIBUTES.
pub const MAX_UNKNOWN_LISTED: usize = 4;
/// Responses waiting for the driver beyond this are dropped (and counted), bounding memory.
pub const MAX_QUEUED: usize = 1024;

/// Where the server listens. See the module docs for the four-address layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunServerConfig {
    /// Primary address `ip1:port1`.
    pub primary: SocketAddr,
    /// Alternate port `port2` (so `ip1:port2` and, with `alt_ip`, `ip2:port2`).
    pub alt_port: Option<u16>,
    /// Alternate IP `ip2` (so `ip2:port1` and, with `alt_port`, `ip2:port2`).
    pub alt_ip: Option<IpAddr>,
    /// SOFTWARE attribute for RFC 8489 responses; `None` keeps responses small.
    pub software: Option<String>,
    /// Answer only requests at least as large as the answer, so a spoofed source never
    /// gets more bytes than it sent (our clients pad their requests). `false` also answers
    /// classic bare 20-byte requests (third-party NAT classifiers), amplifying up to ~4x.
    pub no_amplification: bool,
}

impl StunServerConfig {
    /// A server on `primary` only: plain Binding, no RFC 5780 tests.
    pub fn single(primary: SocketAddr) -> Self {
        StunServerConfig { primary, alt_port: None, alt_ip: None, software: None, no_amplification: true }
    }

    /// A full RFC 5780 server on `ip1:port1`, `ip1:port2`, `ip2:port1`, `ip2:port2`.
    pub fn rfc5780(primary: SocketAddr, alt_port: u16, alt_ip: IpAddr) -> Self {
        StunServerConfig {
            primary,
            alt_port: Some(alt_port),
            alt_ip: Some(alt_ip),
            software: None,
            no_amplification: true,
        }
    }
}

/// Datagrams the server did not answer, by reason. Visible in metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StunDrops {
    /// Not decodable as STUN (truncated, bad length, bad attribute, bad fingerprint).
    pub malformed: u64,
    /// A STUN response or indication: never answered.
    pub not_request: u64,
    /// A request for a method other than Binding (e.g. a TURN Allocate).
    pub unsupported_method: u64,
    /// Arrived on an address the server is not configured with.
    pub unknown_local: u64,
    /// An RFC 3489 request asked for a change the server cannot make. Classic clients do
    /// not check where (or whether successfully) a reply came from, so silence is the
    /// only answer they interpret correctly.
    pub change_unavailable: u64,
    /// The outgoing queue was full because the driver is not polling.
    pub queue_full: u64,
    /// The answer would have been larger than the request (`no_amplification`).
    pub amplification: u64,
}

/// The STUN Binding server state machine. Drive it with [`Endpoint`].
#[derive(Debug)]
pub struct StunServer {
    config: StunServerConfig,
    out: VecDeque<Transmit>,
    drops: StunDrops,
    answered: u64,
}

impl StunServer {
    /// A server with `config`; bind a socket on each of [`StunServer::local_addrs`].
    pub fn new(config: StunServerConfig) -> Self {
        StunServer { config, out: VecDeque::new(), drops: StunDrops::default(), answered: 0 }
    }

    /// The configuration this server was built with.
    pub fn config(&self) -> &StunServerConfig {
        &self.config
    }

    /// Every local address the driver must open, primary first.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let p = self.config.primary;
        let mut v = vec![p];
        if let Some(port2) = self.config.alt_port {
            v.push(SocketAddr::new(p.ip(), port2));
        }
        if let Some(ip2) = self.config.alt_ip {
            v.push(SocketAddr::new(ip2, p.port()));
            if let Some(port2) = self.config.alt_port {
                v.push(SocketAddr::new(ip2, port2));
            }
        }
        v
    }

    /// Datagrams dropped so far, by reason.
    pub fn drops(&self) -> StunDrops {
        self.drops
    }

    /// Requests answered so far (success and error responses).
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// True if `addr` is one of [`StunServer::local_addrs`] (without allocating).
    fn is_local(&self, addr: SocketAddr) -> bool {
        let c = &self.config;
        let ip_ok = addr.ip() == c.primary.ip() || Some(addr.ip()) == c.alt_ip;
        let port_ok = addr.port() == c.primary.port() || Some(addr.port()) == c.alt_port;
        ip_ok && port_ok
    }

    /// The other IP of the pair, if configured, given one of ours.
    fn other_ip(&self, ip: IpAddr) -> Option<IpAddr> {
        let alt = self.config.alt_ip?;
        Some(if ip == alt { self.config.primary.ip() } else { alt })
    }

    /// The other port of the pair, if configured, given one of ours.
    fn other_port(&self, port: u16) -> Option<u16> {
        let alt = self.config.alt_port?;
        Some(if port == alt { self.config.primary.port() } else { alt })
    }

    /// OTHER-ADDRESS for a request that arrived on `local`: both IP and port changed.
    fn other_address(&self, local: SocketAddr) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.other_ip(local.ip())?, self.other_port(local.port())?))
    }

    /// Queue an answer to a request of `request_len` bytes, unless it would amplify.
    fn answer(&mut self, request_len: usize, t: Transmit) {
        if self.config.no_amplification && t.payload.len() > request_len {
            self.drops.amplification += 1;
        } else {
            self.push(t);
        }
    }

    fn push(&mut self, t: Transmit) {
        if self.out.len() >= MAX_QUEUED {
            self.drops.queue_full += 1;
        } else {
            self.answered += 1;
            self.out.push_back(t);
        }
    }

    fn error_response(
        &mut self,
        request_len: usize,
        req: &Message,
        local: SocketAddr,
        to: SocketAddr,
        code: u16,
        unknown: &[u16],
    ) {
        let mut resp = Message::new(Class::ErrorResponse, METHOD_BINDING, req.transaction_id);
        let reason = match code {
            420 => "Unknown Attribute",
            _ => "Bad Request",
        };
        resp.attributes.push(Attribute::ErrorCode { code, reason: reason.into() });
        if !unknown.is_empty() {
            let listed = unknown[..unknown.len().min(MAX_UNKNOWN_LISTED)].to_vec();
            resp.attributes.push(Attribute::UnknownAttributes(listed));
        }
        resp.fingerprint = req.fingerprint;
        self.answer(request_len, Transmit { src: Some(local), dst: to, payload: resp.encode() });
    }
}

impl Endpoint for StunServer {
    fn handle_datagram(&mut self, _now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]) {
        if !self.is_local(local) {
            self.drops.unknown_local += 1;
            return;
        }
        let req = match Message::decode(data) {
            Ok(m) => m,
            Err(_) => {
                self.drops.malformed += 1;
                return;
            }
        };
        if req.class != Class::Request {
            self.drops.not_request += 1;
            return;
        }
        if req.method != METHOD_BINDING {
            self.drops.unsupported_method += 1;
            return;
        }
        let modern = req.transaction_id.has_magic_cookie();

        // RESPONSE-PORT would need a second reflection path; we do not offer it, and say so.
        let mut unknown = req.unknown_required.clone();
        if req.response_port().is_some() {
            unknown.push(attr_type::RESPONSE_PORT);
        }
        if !unknown.is_empty() {
            self.error_response(data.len(), &req, local, from, 420, &unknown);
            return;
        }

        let change = req.change_request().unwrap_or(ChangeRequest::NONE);
        let ip = if change.change_ip { self.other_ip(local.ip()) } else { Some(local.ip()) };
        let port = if change.change_port { self.other_port(local.port()) } else { Some(local.port()) };
        let src = match (ip, port) {
            (Some(ip), Some(port)) => SocketAddr::new(ip, port),
            _ if modern => {
                // RFC 5780 §6.1: a server that cannot honour CHANGE-REQUEST answers 420;
                // RFC 5389+ clients (ours, coturn's natdiscovery) read it as "no alternate".
                self.error_response(data.len(), &req, local, from, 420, &[attr_type::CHANGE_REQUEST]);
                return;
            }
            _ => {
                self.drops.change_unavailable += 1;
                return;
            }
        };

        let mut resp = Message::new(Class::SuccessResponse, METHOD_BINDING, req.transaction_id);
        let origin_known = !src.ip().is_unspecified();
        if modern {
            resp.attributes.push(Attribute::XorMappedAddress(from));
            resp.attributes.push(Attribute::MappedAddress(from));
            if origin_known {
                resp.attributes.push(Attribute::ResponseOrigin(src));
            }
            if let Some(o) = self.other_address(local) {
                resp.attributes.push(Attribute::OtherAddress(o));
            }
            if let Some(s) = &self.config.software {
                resp.attributes.push(Attribute::Software(s.clone()));
            }
            resp.fingerprint = req.fingerprint;
        } else {
            resp.attributes.push(Attribute::MappedAddress(from));
            if origin_known {
                resp.attributes.push(Attribute::SourceAddress(src));
            }
            if let Some(o) = self.other_address(local) {
                resp.attributes.push(Attribute::ChangedAddress(o));
            }
        }
        self.answer(data.len(), Transmit { src: Some(src), dst: from, payload: resp.encode() });
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::codec::TransactionId;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A server that also answers bare requests (the attribute tests below send them).
    fn server() -> StunServer {
        let config = StunServerConfig::rfc5780(sa("192.0.2.1:3478"), 3479, "192.0.2.2".parse().unwrap());
        StunServer::new(StunServerConfig { no_amplification: false, ..config })
    }

    fn ask(s: &mut StunServer, local: &str, from: &str, req: &Message) -> Option<(Transmit, Message)> {
        s.handle_datagram(Instant::now(), sa(local), sa(from), &req.encode());
        let t = s.poll_transmit()?;
        assert!(s.poll_transmit().is_none(), "one request, one response");
        let m = Message::decode(&t.payload).expect("server output must decode");
        Some((t, m))
    }

    #[test]
    fn answers_on_all_four_addresses_with_rfc5780_attributes() {
        let mut s = server();
        assert_eq!(
            s.local_addrs(),
            vec![sa("192.0.2.1:3478"), sa("192.0.2.1:3479"), sa("192.0.2.2:3478"), sa("192.0.2.2:3479")]
        );
        let client = "203.0.113.5:40000";
        for (local, other) in [
            ("192.0.2.1:3478", "192.0.2.2:3479"),
            ("192.0.2.1:3479", "192.0.2.2:3478"),
            ("192.0.2.2:3478", "192.0.2.1:3479"),
            ("192.0.2.2:3479", "192.0.2.1:3478"),
        ] {
            let tid = TransactionId::new([1; 12]);
            let (t, m) =
                ask(&mut s, local, client, &Message::binding_request(tid, ChangeRequest::NONE)).unwrap();
            assert_eq!(t.src, Some(sa(local)));
            assert_eq!(t.dst, sa(client));
            assert_eq!(m.class, Class::SuccessResponse);
            assert_eq!(m.transaction_id, tid);
            assert!(m.attributes.contains(&Attribute::XorMappedAddress(sa(client))));
            assert!(m.attributes.contains(&Attribute::MappedAddress(sa(client))));
            assert_eq!(m.response_origin(), Some(sa(local)));
            assert_eq!(m.other_address(), Some(sa(other)));
            assert!(m.fingerprint, "request had FINGERPRINT, response must too");
        }
        assert_eq!(s.answered(), 4);
    }

    #[test]
    fn change_request_picks_the_source_address() {
        let mut s = server();
        let client = "203.0.113.5:40000";
        for (change, src) in [
            (ChangeRequest::NONE, "192.0.2.1:3478"),
            (ChangeRequest::PORT, "192.0.2.1:3479"),
            (ChangeRequest { change_ip: true, change_port: false }, "192.0.2.2:3478"),
            (ChangeRequest::IP_AND_PORT, "192.0.2.2:3479"),
        ] {
            let req = Message::binding_request(TransactionId::new([2; 12]), change);
            let (t, m) = ask(&mut s, "192.0.2.1:3478", client, &req).unwrap();
            assert_eq!(t.src, Some(sa(src)), "{change:?}");
            assert_eq!(m.response_origin(), Some(sa(src)));
            // OTHER-ADDRESS is relative to where the request arrived, not where we answer from.
            assert_eq!(m.other_address(), Some(sa("192.0.2.2:3479")));
        }
    }

    #[test]
    fn unsatisfiable_change_request_gets_420_or_silence_for_classic_clients() {
        let mut s = StunServer::new(StunServerConfig {
            alt_port: Some(3479),
            ..StunServerConfig::single(sa("192.0.2.1:3478"))
        });
        let req = Message::padded_binding_request(TransactionId::new([3; 12]), ChangeRequest::IP_AND_PORT);
        let (t, m) = ask(&mut s, "192.0.2.1:3478", "203.0.113.5:1", &req).unwrap();
        assert_eq!(t.src, Some(sa("192.0.2.1:3478")));
        assert_eq!(m.class, Class::ErrorResponse);
        assert_eq!(m.error_code().map(|e| e.0), Some(420));
        assert!(m.attributes.contains(&Attribute::UnknownAttributes(vec![attr_type::CHANGE_REQUEST])));
        // Port-only change is possible with an alternate port.
        let req = Message::padded_binding_request(TransactionId::new([4; 12]), ChangeRequest::PORT);
        let (t, m) = ask(&mut s, "192.0.2.1:3478", "203.0.113.5:1", &req).unwrap();
        assert_eq!((t.src, m.class), (Some(sa("192.0.2.1:3479")), Class::SuccessResponse));
        assert_eq!(m.other_address(), None, "no OTHER-ADDRESS without an alternate IP");
        // Classic RFC 3489 request: silence, counted.
        let mut classic = Message::binding_request(TransactionId([0x11; 16]), ChangeRequest::IP_AND_PORT);
        classic.fingerprint = false;
        assert!(ask(&mut s, "192.0.2.1:3478", "203.0.113.5:1", &classic).is_none());
        assert_eq!(s.drops().change_unavailable, 1);
    }

    #[test]
    fn classic_rfc3489_request_gets_classic_attributes() {
        let mut s = server();
        let mut req = Message::binding_request(TransactionId([0x77; 16]), ChangeRequest::PORT);
        req.fingerprint = false;
        let (t, m) = ask(&mut s, "192.0.2.2:3478", "203.0.113.5:777", &req).unwrap();
        assert_eq!(t.src, Some(sa("192.0.2.2:3479")));
        assert_eq!(
            m.attributes,
            vec![
                Attribute::MappedAddress(sa("203.0.113.5:777")),
                Attribute::SourceAddress(sa("192.0.2.2:3479")),
                Attribute::ChangedAddress(sa("192.0.2.1:3479")),
            ]
        );
        assert_eq!(m.transaction_id, TransactionId([0x77; 16]));
        assert!(!m.fingerprint);
    }

    #[test]
    fn drops_everything_that_is_not_a_wellformed_binding_request() {
        let mut s = server();
        let now = Instant::now();
        let l = sa("192.0.2.1:3478");
        let f = sa("203.0.113.5:1");
        let tid = TransactionId::new([5; 12]);
        s.handle_datagram(now, l, f, b"hello");
        s.handle_datagram(now, l, f, &[0u8; 20][..19]);
        let mut bad_fp = Message::binding_request(tid, ChangeRequest::NONE).encode();
        let n = bad_fp.len();
        bad_fp[n - 1] ^= 1;
        s.handle_datagram(now, l, f, &bad_fp);
        s.handle_datagram(now, l, f, &Message::new(Class::SuccessResponse, 1, tid).encode());
        s.handle_datagram(now, l, f, &Message::new(Class::Indication, 1, tid).encode());
        s.handle_datagram(now, l, f, &Message::new(Class::Request, 0x003, tid).encode());
        s.handle_datagram(
            now,
            sa("192.0.2.9:3478"),
            f,
            &Message::binding_request(tid, ChangeRequest::NONE).encode(),
        );
        assert!(s.poll_transmit().is_none());
        assert_eq!(
            s.drops(),
            StunDrops {
                malformed: 3,
                not_request: 2,
                unsupported_method: 1,
                unknown_local: 1,
                change_unavailable: 0,
                queue_full: 0,
                amplification: 0,
            }
        );
    }

    #[test]
    fn unknown_required_attribute_and_response_port_get_420() {
        let mut s = server();
        let mut req = Message::binding_request(TransactionId::new([6; 12]), ChangeRequest::NONE);
        req.attributes.push(Attribute::ResponsePort(5555));
        let (t, m) = ask(&mut s, "192.0.2.1:3478", "203.0.113.5:9", &req).unwrap();
        assert_eq!(t.dst, sa("203.0.113.5:9"), "never reflected to another port");
        assert_eq!(m.error_code().map(|e| e.0), Some(420));
        assert!(m.attributes.contains(&Attribute::UnknownAttributes(vec![attr_type::RESPONSE_PORT])));
        // Many unknown comprehension-required attributes: the list is capped.
        let mut b = Message::new(Class::Request, 1, TransactionId::new([7; 12])).encode();
        for t in 0x7000u16..0x7010 {
            b.extend_from_slice(&t.to_be_bytes());
            b.extend_from_slice(&[0, 0]);
        }
        let len = (b.len() - 20) as u16;
        b[2..4].copy_from_slice(&len.to_be_bytes());
        s.handle_datagram(Instant::now(), sa("192.0.2.1:3478"), sa("203.0.113.5:9"), &b);
        let m = Message::decode(&s.poll_transmit().unwrap().payload).unwrap();
        assert!(m.attributes.contains(&Attribute::UnknownAttributes(vec![0x7000, 0x7001, 0x7002, 0x7003])));
    }

    #[test]
    fn responses_stay_within_the_amplification_bound() {
        let mut s = StunServer::new(StunServerConfig::rfc5780(
            sa("[2001:db8::1]:3478"),
            3479,
            "2001:db8::2".parse().unwrap(),
        ));
        let req = Message::padded_binding_request(TransactionId::new([8; 12]), ChangeRequest::NONE);
        let (_, m) = ask(&mut s, "[2001:db8::1]:3478", "[2001:db8:ffff::5]:1", &req).unwrap();
        let len = m.encode().len();
        assert_eq!(len, MAX_RESPONSE_LEN, "IPv6 with every attribute is the worst case");
        let mut v4 = server();
        let mut bare = Message::binding_request(TransactionId::new([8; 12]), ChangeRequest::NONE);
        bare.fingerprint = false; // the smallest possible request: 20 bytes
        let (t, _) = ask(&mut v4, "192.0.2.1:3478", "203.0.113.5:1", &bare).unwrap();
        assert!(t.payload.len() <= 20 + 4 * 12, "IPv4 response {} bytes", t.payload.len());
    }

    /// The default: no answer is larger than its request, so a spoofed source never gets
    /// more bytes than it sent; our padded requests are answered in full, for every
    /// CHANGE-REQUEST and address family, and bare ones are dropped and counted.
    #[test]
    fn by_default_no_answer_is_larger_than_its_request() {
        for (primary, alt, client) in [
            ("192.0.2.1:3478", "192.0.2.2", "203.0.113.5:40000"),
            ("[2001:db8::1]:3478", "2001:db8::2", "[2001:db8:ffff::5]:1"),
        ] {
            let mut s = StunServer::new(StunServerConfig::rfc5780(sa(primary), 3479, alt.parse().unwrap()));
            for change in [ChangeRequest::NONE, ChangeRequest::PORT, ChangeRequest::IP_AND_PORT] {
                let padded = Message::padded_binding_request(TransactionId::new([3; 12]), change).encode();
                assert!(padded.len() >= MAX_RESPONSE_LEN);
                s.handle_datagram(Instant::now(), sa(primary), sa(client), &padded);
                let t = s.poll_transmit().expect("a padded request is answered");
                assert!(t.payload.len() <= padded.len());
                let m = Message::decode(&t.payload).unwrap();
                assert_eq!(m.class, Class::SuccessResponse, "{change:?}");
                let bare = Message::binding_request(TransactionId::new([4; 12]), change).encode();
                s.handle_datagram(Instant::now(), sa(primary), sa(client), &bare);
                assert!(s.poll_transmit().is_none(), "a {}-byte request is not answered", bare.len());
            }
            assert_eq!(s.drops().amplification, 3);
        }
    }

    #[test]
    fn queue_is_bounded_when_the_driver_does_not_poll() {
        let mut s = server();
        let req = Message::binding_request(TransactionId::new([9; 12]), ChangeRequest::NONE).encode();
        // A million requests and no poll: the queue holds MAX_QUEUED replies, the rest are
        // counted drops (memory stays at MAX_QUEUED × MAX_RESPONSE_LEN bytes).
        let n = 1_000_000;
        let now = Instant::now();
        for _ in 0..n {
            s.handle_datagram(now, sa("192.0.2.1:3478"), sa("203.0.113.5:1"), &req);
        }
        assert_eq!(s.drops().queue_full, (n - MAX_QUEUED) as u64);
        assert_eq!(s.answered(), MAX_QUEUED as u64);
        assert_eq!(std::iter::from_fn(|| s.poll_transmit()).count(), MAX_QUEUED);
    }

    #[test]
    fn thousands_of_unknown_attributes_decode_in_linear_time_and_get_a_small_420() {
        // 16,378 distinct unknown comprehension-required attributes (the most a 64 KiB
        // message holds): recorded up to the bound, answered with a 420 listing a few.
        let mut b = Message::binding_request(TransactionId::new([5; 12]), ChangeRequest::NONE).encode();
        b.truncate(crate::stun::codec::HEADER_LEN);
        for t in 0..16_378u16 {
            b.extend_from_slice(&(0x4000 + t).to_be_bytes()); // < 0x8000: comprehension-required
            b.extend_from_slice(&[0, 0]);
        }
        let len = (b.len() - crate::stun::codec::HEADER_LEN) as u16;
        b[2..4].copy_from_slice(&len.to_be_bytes());
        let m = Message::decode(&b).unwrap();
        assert_eq!(m.unknown_required.len(), crate::stun::codec::MAX_UNKNOWN_RECORDED);
        assert_eq!(m.unknown_required[..2], [0x4000, 0x4001], "first ones kept, in order");
        let mut s = server();
        s.handle_datagram(Instant::now(), sa("192.0.2.1:3478"), sa("203.0.113.5:1"), &b);
        let t = s.poll_transmit().expect("a 420 answer");
        assert!(s.poll_transmit().is_none());
        assert!(t.payload.len() <= MAX_RESPONSE_LEN, "{} bytes", t.payload.len());
        let r = Message::decode(&t.payload).unwrap();
        assert!(
            r.attributes.contains(&Attribute::ErrorCode { code: 420, reason: "Unknown Attribute".into() })
        );
        assert!(r.attributes.contains(&Attribute::UnknownAttributes(vec![0x4000, 0x4001, 0x4002, 0x4003])));
    }

    /// Whatever arrives, the server never panics, only ever answers the sender, from one
    /// of its own addresses, within the amplification bound.
    #[test]
    fn random_and_mutated_input_never_panics_or_amplifies() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0xA3F1);
        let mut s = server();
        let locals = s.local_addrs();
        let from = sa("203.0.113.5:4000");
        let seeds = [
            Message::binding_request(TransactionId::new([1; 12]), ChangeRequest::IP_AND_PORT).encode(),
            Message::binding_request(TransactionId([9; 16]), ChangeRequest::PORT).encode(),
        ];
        let mut answered = 0;
        for i in 0..20_000 {
            let input: Vec<u8> = if i % 2 == 0 {
                let mut b = seeds[i % 4 / 2].clone();
                for _ in 0..rng.random_range(0..3) {
                    let p = rng.random_range(0..b.len());
                    b[p] = rng.random();
                }
                b
            } else {
                let n = rng.random_range(0..64);
                (0..n).map(|_| rng.random()).collect()
            };
            let local = locals[i % locals.len()];
            s.handle_datagram(Instant::now(), local, from, &input);
            while let Some(t) = s.poll_transmit() {
                answered += 1;
                assert_eq!(t.dst, from);
                assert!(locals.contains(&t.src.unwrap()));
                assert!(t.payload.len() <= MAX_RESPONSE_LEN, "{} bytes", t.payload.len());
            }
        }
        assert!(answered > 1000, "the mutated requests must exercise the answering path");
    }
}
