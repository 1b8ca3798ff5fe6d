//! STUN message codec: RFC 8489 Binding plus the RFC 5780 / RFC 3489 attributes NAT
//! discovery needs.
//!
//! Byte layout (all fields network byte order):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |0 0|     STUN Message Type     |         Message Length        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |            Magic Cookie 0x2112A442 (RFC 3489: random)         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  Transaction ID (96 bits)                     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | attributes: type (16) | length (16) | value, padded to 4 bytes |
//! ```
//!
//! A message whose bytes 4..8 are not the magic cookie is an RFC 3489 ("classic STUN")
//! message: its 128-bit transaction id is bytes 4..20. We decode those too, because the
//! Vovida `stun` client (Debian `stun-client`) still sends them.
//!
//! The decoder never panics and never allocates more than the input's size; every
//! problem is a [`StunDecodeError`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

use crate::proto::STUN_MAGIC_COOKIE;

/// Size of the fixed STUN header.
pub const HEADER_LEN: usize = 20;
/// Distinct unknown comprehension-required attribute types a decoded message records at
/// most (a 420 reply lists a few; a hostile message may carry thousands).
pub const MAX_UNKNOWN_RECORDED: usize = 16;
/// The Binding method (RFC 8489 §18.2), the only one this crate serves.
pub const METHOD_BINDING: u16 = 0x001;
/// XOR constant of the FINGERPRINT attribute ("STUN" in ASCII).
pub const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Attribute type codes this codec understands (RFC 8489 §18.3, RFC 5780 §7, RFC 3489 §11.2).
pub mod attr_type {
    /// MAPPED-ADDRESS (RFC 8489, RFC 3489): the reflexive address, not XOR-ed.
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// CHANGE-REQUEST (RFC 5780, RFC 3489): ask the server to answer from another IP/port.
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// SOURCE-ADDRESS (RFC 3489): where the server sent the response from.
    pub const SOURCE_ADDRESS: u16 = 0x0004;
    /// CHANGED-ADDRESS (RFC 3489): the server's alternate IP and port.
    pub const CHANGED_ADDRESS: u16 = 0x0005;
    /// USERNAME (RFC 8489): accepted and ignored by our unauthenticated Binding server.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (RFC 8489): accepted and ignored (no long/short-term auth here).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE (RFC 8489).
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES (RFC 8489): list of comprehension-required types not understood.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// XOR-MAPPED-ADDRESS (RFC 8489): the reflexive address, XOR-ed with cookie and id.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// RESPONSE-PORT (RFC 5780): ask for the response on another port of the same IP.
    pub const RESPONSE_PORT: u16 = 0x0027;
    /// SOFTWARE (RFC 8489): free-text implementation name.
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT (RFC 8489): CRC-32 of the message so far, XOR 0x5354554e.
    pub const FINGERPRINT: u16 = 0x8028;
    /// RESPONSE-ORIGIN (RFC 5780): where the server sent the response from.
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    /// OTHER-ADDRESS (RFC 5780): the server's alternate IP and port.
    pub const OTHER_ADDRESS: u16 = 0x802C;
    /// P2PM-PADDING (private use, comprehension-optional): zeros that make a request at
    /// least as large as any answer, so a server that never answers with more bytes than
    /// it received still answers it (anti-amplification). Every server ignores it.
    pub const P2PM_PADDING: u16 = 0xC050;
}

/// Our requests are padded to at least this many bytes: the largest Binding response
/// ([`crate::stun::server::MAX_RESPONSE_LEN`]) rounded up to a multiple of 4.
pub const PADDED_REQUEST_LEN: usize = 128;

/// Why bytes are not an acceptable STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum StunDecodeError {
    /// Fewer bytes than the header or an attribute header/length needs.
    #[error("STUN message truncated")]
    Truncated,
    /// The first two bits are not zero: this is not STUN.
    #[error("not a STUN message (leading bits set)")]
    NotStun,
    /// The header's length field disagrees with the datagram size or is not a multiple of 4.
    #[error("STUN length field does not match the datagram")]
    BadLength,
    /// An attribute this codec understands has a malformed value.
    #[error("malformed STUN attribute {typ:#06x}: {reason}")]
    BadAttribute {
        /// Attribute type code.
        typ: u16,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// FINGERPRINT present but its CRC does not match the message.
    #[error("STUN FINGERPRINT mismatch")]
    BadFingerprint,
    /// An attribute follows FINGERPRINT, which must be last.
    #[error("attribute after STUN FINGERPRINT")]
    AttributeAfterFingerprint,
}

/// The class bits of the message type (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// A request, expecting a response.
    Request,
    /// An indication, no response.
    Indication,
    /// A success response.
    SuccessResponse,
    /// An error response (carries ERROR-CODE).
    ErrorResponse,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::SuccessResponse => 0b10,
            Class::ErrorResponse => 0b11,
        }
    }

    fn from_bits(b: u16) -> Self {
        match b & 0b11 {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::SuccessResponse,
            _ => Class::ErrorResponse,
        }
    }
}

/// Bytes 4..20 of the header: magic cookie + 96-bit id (RFC 8489), or a 128-bit id (RFC 3489).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 16]);

impl TransactionId {
    /// An RFC 8489 transaction id: the magic cookie followed by `id`.
    pub fn new(id: [u8; 12]) -> Self {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        b[4..].copy_from_slice(&id);
        TransactionId(b)
    }

    /// A fresh RFC 8489 transaction id from the caller's random number generator.
    pub fn random<R: rand::RngCore + ?Sized>(rng: &mut R) -> Self {
        let mut id = [0u8; 12];
        rng.fill_bytes(&mut id);
        Self::new(id)
    }

    /// True for RFC 5389/8489 messages; false for classic RFC 3489 ones.
    pub fn has_magic_cookie(&self) -> bool {
        self.0[..4] == STUN_MAGIC_COOKIE.to_be_bytes()
    }
}

/// The CHANGE-REQUEST flags (RFC 5780 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChangeRequest {
    /// Respond from the alternate IP address.
    pub change_ip: bool,
    /// Respond from the alternate port.
    pub change_port: bool,
}

impl ChangeRequest {
    /// No change: respond from where the request arrived.
    pub const NONE: ChangeRequest = ChangeRequest { change_ip: false, change_port: false };
    /// Change only the port (RFC 5780 filtering test III).
    pub const PORT: ChangeRequest = ChangeRequest { change_ip: false, change_port: true };
    /// Change IP and port (RFC 5780 filtering test II).
    pub const IP_AND_PORT: ChangeRequest = ChangeRequest { change_ip: true, change_port: true };

    /// True if either flag is set.
    pub fn any(&self) -> bool {
        self.change_ip || self.change_port
    }
}

/// A decoded or to-be-encoded attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// MAPPED-ADDRESS (0x0001).
    MappedAddress(SocketAddr),
    /// CHANGE-REQUEST (0x0003).
    ChangeRequest(ChangeRequest),
    /// SOURCE-ADDRESS (0x0004, RFC 3489).
    SourceAddress(SocketAddr),
    /// CHANGED-ADDRESS (0x0005, RFC 3489).
    ChangedAddress(SocketAddr),
    /// ERROR-CODE (0x0009): code 300..=699 and a reason phrase.
    ErrorCode {
        /// The numeric error code, e.g. 420.
        code: u16,
        /// Human-readable reason phrase.
        reason: String,
    },
    /// UNKNOWN-ATTRIBUTES (0x000A).
    UnknownAttributes(Vec<u16>),
    /// XOR-MAPPED-ADDRESS (0x0020), stored un-XOR-ed.
    XorMappedAddress(SocketAddr),
    /// RESPONSE-PORT (0x0027).
    ResponsePort(u16),
    /// SOFTWARE (0x8022).
    Software(String),
    /// RESPONSE-ORIGIN (0x802B).
    ResponseOrigin(SocketAddr),
    /// OTHER-ADDRESS (0x802C).
    OtherAddress(SocketAddr),
    /// USERNAME (0x0006) or MESSAGE-INTEGRITY (0x0008): recognised, kept raw, not checked.
    Opaque {
        /// Attribute type code.
        typ: u16,
        /// Raw value bytes.
        value: Vec<u8>,
    },
}

/// A STUN message. FINGERPRINT is not an [`Attribute`]: it is the `fingerprint` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Request, indication, success or error response.
    pub class: Class,
    /// The 12-bit method; [`METHOD_BINDING`] for everything we send.
    pub method: u16,
    /// Transaction id (with or without magic cookie).
    pub transaction_id: TransactionId,
    /// Attributes in wire order (unknown comprehension-optional ones are skipped).
    pub attributes: Vec<Attribute>,
    /// Unknown comprehension-required attribute types seen while decoding (for a 420 reply):
    /// the first [`MAX_UNKNOWN_RECORDED`] distinct ones.
    pub unknown_required: Vec<u16>,
    /// Decoding: a valid FINGERPRINT was present. Encoding: append one.
    pub fingerprint: bool,
}

impl Message {
    /// A Binding request with an optional CHANGE-REQUEST, FINGERPRINT-protected.
    pub fn binding_request(transaction_id: TransactionId, change: ChangeRequest) -> Self {
        let attributes = if change.any() { vec![Attribute::ChangeRequest(change)] } else { Vec::new() };
        Message {
            class: Class::Request,
            method: METHOD_BINDING,
            transaction_id,
            attributes,
            unknown_required: Vec::new(),
            fingerprint: true,
        }
    }

    /// A Binding request padded with P2PM-PADDING to at least [`PADDED_REQUEST_LEN`]
    /// bytes: what our clients send, so servers that refuse to amplify still answer.
    pub fn padded_binding_request(transaction_id: TransactionId, change: ChangeRequest) -> Self {
        let mut m = Message::binding_request(transaction_id, change);
        let len = m.encode().len();
        if len < PADDED_REQUEST_LEN {
            // The attribute header takes 4 bytes; lengths stay multiples of 4.
            let pad = (PADDED_REQUEST_LEN - len).saturating_sub(4).next_multiple_of(4);
            m.attributes.push(Attribute::Opaque { typ: attr_type::P2PM_PADDING, value: vec![0; pad] });
        }
        m
    }

    /// An empty message of `class` answering `transaction_id` (for building responses).
    pub fn new(class: Class, method: u16, transaction_id: TransactionId) -> Self {
        Message {
            class,
            method,
            transaction_id,
            attributes: Vec::new(),
            unknown_required: Vec::new(),
            fingerprint: false,
        }
    }

    /// First XOR-MAPPED-ADDRESS, else first MAPPED-ADDRESS (RFC 8489 §14.1 fallback).
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        self.find(|a| match a {
            Attribute::XorMappedAddress(s) => Some(*s),
            _ => None,
        })
        .or_else(|| {
            self.find(|a| match a {
                Attribute::MappedAddress(s) => Some(*s),
                _ => None,
            })
        })
    }

    /// OTHER-ADDRESS, else the RFC 3489 CHANGED-ADDRESS.
    pub fn other_address(&self) -> Option<SocketAddr> {
        self.find(|a| match a {
            Attribute::OtherAddress(s) => Some(*s),
            _ => None,
        })
        .or_else(|| {
            self.find(|a| match a {
                Attribute::ChangedAddress(s) => Some(*s),
                _ => None,
            })
        })
    }

    /// RESPONSE-ORIGIN, else the RFC 3489 SOURCE-ADDRESS.
    pub fn response_origin(&self) -> Option<SocketAddr> {
        self.find(|a| match a {
            Attribute::ResponseOrigin(s) => Some(*s),
            _ => None,
        })
        .or_else(|| {
            self.find(|a| match a {
                Attribute::SourceAddress(s) => Some(*s),
                _ => None,
            })
        })
    }

    /// The first CHANGE-REQUEST, if any.
    pub fn change_request(&self) -> Option<ChangeRequest> {
        self.find(|a| match a {
            Attribute::ChangeRequest(c) => Some(*c),
            _ => None,
        })
    }

    /// The first RESPONSE-PORT, if any.
    pub fn response_port(&self) -> Option<u16> {
        self.find(|a| match a {
            Attribute::ResponsePort(p) => Some(*p),
            _ => None,
        })
    }

    /// The first ERROR-CODE as `(code, reason)`, if any.
    pub fn error_code(&self) -> Option<(u16, &str)> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::ErrorCode { code, reason } => Some((*code, reason.as_str())),
            _ => None,
        })
    }

    fn find<T>(&self, f: impl FnMut(&Attribute) -> Option<T>) -> Option<T> {
        self.attributes.iter().find_map(f)
    }

    /// Encode to wire bytes. Strings longer than the RFC limit (763 bytes) are truncated.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let m = self.method & 0x0FFF;
        let c = self.class.bits();
        let typ =
            (m & 0x000F) | ((c & 0b01) << 4) | ((m & 0x0070) << 1) | ((c & 0b10) << 7) | ((m & 0x0F80) << 2);
        out.extend_from_slice(&typ.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.transaction_id.0);
        for a in &self.attributes {
            self.encode_attr(a, &mut out);
        }
        if self.fingerprint {
            let len = (out.len() - HEADER_LEN + 8) as u16;
            out[2..4].copy_from_slice(&len.to_be_bytes());
            let crc = crc32(&out) ^ FINGERPRINT_XOR;
            out.extend_from_slice(&attr_type::FINGERPRINT.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&crc.to_be_bytes());
        } else {
            let len = (out.len() - HEADER_LEN) as u16;
            out[2..4].copy_from_slice(&len.to_be_bytes());
        }
        out
    }

    fn encode_attr(&self, a: &Attribute, out: &mut Vec<u8>) {
        use attr_type::*;
        let tid = &self.transaction_id;
        let (typ, value): (u16, Vec<u8>) = match a {
            Attribute::MappedAddress(s) => (MAPPED_ADDRESS, encode_addr(*s)),
            Attribute::SourceAddress(s) => (SOURCE_ADDRESS, encode_addr(*s)),
            Attribute::ChangedAddress(s) => (CHANGED_ADDRESS, encode_addr(*s)),
            Attribute::ResponseOrigin(s) => (RESPONSE_ORIGIN, encode_addr(*s)),
            Attribute::OtherAddress(s) => (OTHER_ADDRESS, encode_addr(*s)),
            Attribute::XorMappedAddress(s) => (XOR_MAPPED_ADDRESS, encode_addr(xor_addr(*s, tid))),
            Attribute::ChangeRequest(c) => {
                let v = (u32::from(c.change_ip) << 2) | (u32::from(c.change_port) << 1);
                (CHANGE_REQUEST, v.to_be_bytes().to_vec())
            }
            Attribute::ErrorCode { code, reason } => {
                let mut v = vec![0, 0, (code / 100) as u8 & 0x07, (code % 100) as u8];
                v.extend_from_slice(truncate_utf8(reason, 763).as_bytes());
                (ERROR_CODE, v)
            }
            Attribute::UnknownAttributes(types) => {
                (UNKNOWN_ATTRIBUTES, types.iter().flat_map(|t| t.to_be_bytes()).collect())
            }
            Attribute::ResponsePort(p) => {
                let mut v = p.to_be_bytes().to_vec();
                v.extend_from_slice(&[0, 0]);
                (RESPONSE_PORT, v)
            }
            Attribute::Software(s) => (SOFTWARE, truncate_utf8(s, 763).as_bytes().to_vec()),
            Attribute::Opaque { typ, value } => (*typ, value.clone()),
        };
        let value = &value[..value.len().min(0xFFF0)];
        out.extend_from_slice(&typ.to_be_bytes());
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }

    /// Decode one datagram. Never panics; see [`StunDecodeError`] for what is rejected.
    pub fn decode(buf: &[u8]) -> Result<Message, StunDecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(StunDecodeError::Truncated);
        }
        let typ = u16::from_be_bytes([buf[0], buf[1]]);
        if typ & 0xC000 != 0 {
            return Err(StunDecodeError::NotStun);
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if len % 4 != 0 || HEADER_LEN + len != buf.len() {
            return Err(StunDecodeError::BadLength);
        }
        let method = (typ & 0x000F) | ((typ & 0x00E0) >> 1) | ((typ & 0x3E00) >> 2);
        let class = Class::from_bits(((typ >> 4) & 0b01) | ((typ >> 7) & 0b10));
        let mut tid = [0u8; 16];
        tid.copy_from_slice(&buf[4..20]);
        let transaction_id = TransactionId(tid);

        let mut msg = Message::new(class, method, transaction_id);
        let mut pos = HEADER_LEN;
        while pos < buf.len() {
            if msg.fingerprint {
                return Err(StunDecodeError::AttributeAfterFingerprint);
            }
            let hdr = buf.get(pos..pos + 4).ok_or(StunDecodeError::Truncated)?;
            let atyp = u16::from_be_bytes([hdr[0], hdr[1]]);
            let alen = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
            let vstart = pos + 4;
            let value = buf.get(vstart..vstart + alen).ok_or(StunDecodeError::Truncated)?;
            let padded = (alen + 3) & !3;
            if vstart + padded > buf.len() {
                return Err(StunDecodeError::Truncated);
            }
            if atyp == attr_type::FINGERPRINT {
                if alen != 4 {
                    return Err(bad(atyp, "FINGERPRINT length must be 4"));
                }
                // The CRC covers the header (with the length as sent) up to this attribute.
                let got = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                if crc32(&buf[..pos]) ^ FINGERPRINT_XOR != got {
                    return Err(StunDecodeError::BadFingerprint);
                }
                msg.fingerprint = true;
            } else if let Some(a) = decode_attr(atyp, value, &transaction_id)? {
                msg.attributes.push(a);
            } else if atyp < 0x8000
                && msg.unknown_required.len() < MAX_UNKNOWN_RECORDED
                && !msg.unknown_required.contains(&atyp)
            {
                // At most MAX_UNKNOWN_RECORDED distinct types are kept, so this check stays
                // constant-time and decoding linear in the message whatever it holds.
                msg.unknown_required.push(atyp);
            }
            pos = vstart + padded;
        }
        Ok(msg)
    }
}

fn bad(typ: u16, reason: &'static str) -> StunDecodeError {
    StunDecodeError::BadAttribute { typ, reason }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decode a known attribute; `Ok(None)` for a type this codec does not know.
fn decode_attr(typ: u16, v: &[u8], tid: &TransactionId) -> Result<Option<Attribute>, StunDecodeError> {
    use attr_type::*;
    let a = match typ {
        MAPPED_ADDRESS => Attribute::MappedAddress(decode_addr(typ, v)?),
        SOURCE_ADDRESS => Attribute::SourceAddress(decode_addr(typ, v)?),
        CHANGED_ADDRESS => Attribute::ChangedAddress(decode_addr(typ, v)?),
        RESPONSE_ORIGIN => Attribute::ResponseOrigin(decode_addr(typ, v)?),
        OTHER_ADDRESS => Attribute::OtherAddress(decode_addr(typ, v)?),
        XOR_MAPPED_ADDRESS => Attribute::XorMappedAddress(xor_addr(decode_addr(typ, v)?, tid)),
        CHANGE_REQUEST => {
            let b: [u8; 4] = v.try_into().map_err(|_| bad(typ, "CHANGE-REQUEST length must be 4"))?;
            let f = u32::from_be_bytes(b);
            Attribute::ChangeRequest(ChangeRequest { change_ip: f & 0x4 != 0, change_port: f & 0x2 != 0 })
        }
        ERROR_CODE => {
            if v.len() < 4 {
                return Err(bad(typ, "ERROR-CODE shorter than 4 bytes"));
            }
            let class = u16::from(v[2] & 0x07);
            let number = u16::from(v[3]);
            if !(3..=6).contains(&class) || number > 99 {
                return Err(bad(typ, "ERROR-CODE outside 300..=699"));
            }
            let reason = String::from_utf8_lossy(&v[4..]).into_owned();
            Attribute::ErrorCode { code: class * 100 + number, reason }
        }
        UNKNOWN_ATTRIBUTES => {
            if !v.len().is_multiple_of(2) {
                return Err(bad(typ, "UNKNOWN-ATTRIBUTES length must be even"));
            }
            Attribute::UnknownAttributes(
                v.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect(),
            )
        }
        RESPONSE_PORT => {
            if v.len() != 4 {
                return Err(bad(typ, "RESPONSE-PORT length must be 4"));
            }
            Attribute::ResponsePort(u16::from_be_bytes([v[0], v[1]]))
        }
        SOFTWARE => Attribute::Software(String::from_utf8_lossy(v).into_owned()),
        USERNAME | MESSAGE_INTEGRITY => Attribute::Opaque { typ, value: v.to_vec() },
        _ => return Ok(None),
    };
    Ok(Some(a))
}

fn decode_addr(typ: u16, v: &[u8]) -> Result<SocketAddr, StunDecodeError> {
    if v.len() < 4 {
        return Err(bad(typ, "address shorter than 4 bytes"));
    }
    let port = u16::from_be_bytes([v[2], v[3]]);
    match (v[1], v.len()) {
        (0x01, 8) => {
            let ip = Ipv4Addr::new(v[4], v[5], v[6], v[7]);
            Ok(SocketAddr::new(IpAddr::V4(ip), port))
        }
        (0x02, 20) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&v[4..20]);
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        (0x01 | 0x02, _) => Err(bad(typ, "address length does not match its family")),
        _ => Err(bad(typ, "unknown address family")),
    }
}

fn encode_addr(s: SocketAddr) -> Vec<u8> {
    let mut v = vec![0u8];
    match s.ip() {
        IpAddr::V4(ip) => {
            v.push(0x01);
            v.extend_from_slice(&s.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            v.push(0x02);
            v.extend_from_slice(&s.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
    }
    v
}

/// XOR an address with the transaction id (RFC 8489 §14.2); its own inverse.
///
/// For RFC 3489 transaction ids the first 4 bytes take the cookie's place, which is what
/// the classic Vovida server does, so the same code decodes its XOR-MAPPED-ADDRESS too.
fn xor_addr(s: SocketAddr, tid: &TransactionId) -> SocketAddr {
    let k = &tid.0;
    let port = s.port() ^ u16::from_be_bytes([k[0], k[1]]);
    match s.ip() {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            let x = [o[0] ^ k[0], o[1] ^ k[1], o[2] ^ k[2], o[3] ^ k[3]];
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(x)), port)
        }
        IpAddr::V6(ip) => {
            let mut o = ip.octets();
            for (b, kb) in o.iter_mut().zip(k.iter()) {
                *b ^= kb;
            }
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port)
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, as in zlib), which FINGERPRINT uses.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// RFC 5769 §2.2 sample IPv4 response (SOFTWARE, XOR-MAPPED, MESSAGE-INTEGRITY, FINGERPRINT).
    #[test]
    fn decodes_rfc5769_ipv4_response_vector() {
        let v: Vec<u8> = [
            "0101003c2112a442b7e7a701bc34d686fa87dfae",
            "8022000b7465737420766563746f7220",
            "002000080001a147e112a643",
            "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7",
            "80280004c07d4c96",
        ]
        .concat()
        .as_bytes()
        .chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
        .collect();
        let m = Message::decode(&v).unwrap();
        assert_eq!(m.class, Class::SuccessResponse);
        assert_eq!(m.method, METHOD_BINDING);
        assert!(m.fingerprint);
        assert_eq!(m.mapped_address(), Some(sa("192.0.2.1:32853")));
        assert!(m.attributes.contains(&Attribute::Software("test vector".into())));
        // Flip one bit anywhere before the fingerprint: the CRC check must catch it.
        let mut bad = v.clone();
        bad[30] ^= 0x01;
        assert_eq!(Message::decode(&bad), Err(StunDecodeError::BadFingerprint));
    }

    /// RFC 5769 §2.3 sample IPv6 response.
    #[test]
    fn decodes_rfc5769_ipv6_response_vector() {
        let v: Vec<u8> = [
            "010100482112a442b7e7a701bc34d686fa87dfae",
            "8022000b7465737420766563746f7220",
            "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9",
            "00080014a382954e4be67bf11784c97c8292c275bfe3ed41",
            "80280004c8fb0b4c",
        ]
        .concat()
        .as_bytes()
        .chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
        .collect();
        let m = Message::decode(&v).unwrap();
        assert_eq!(m.mapped_address(), Some(sa("[2001:db8:1234:5678:11:2233:4455:6677]:32853")));
    }

    #[test]
    fn roundtrips_every_attribute_ipv4_and_ipv6() {
        let tid = TransactionId::new([7; 12]);
        for (a, b) in [
            (sa("192.0.2.1:1"), sa("198.51.100.9:65535")),
            (sa("[2001:db8::1]:3478"), sa("[::ffff:1.2.3.4]:9")),
        ] {
            let mut m = Message::new(Class::SuccessResponse, METHOD_BINDING, tid);
            m.attributes = vec![
                Attribute::XorMappedAddress(a),
                Attribute::MappedAddress(b),
                Attribute::ResponseOrigin(a),
                Attribute::OtherAddress(b),
                Attribute::SourceAddress(a),
                Attribute::ChangedAddress(b),
                Attribute::ChangeRequest(ChangeRequest::IP_AND_PORT),
                Attribute::ResponsePort(4242),
                Attribute::Software("p2pmodel é".into()),
                Attribute::ErrorCode { code: 420, reason: "Unknown Attribute".into() },
                Attribute::UnknownAttributes(vec![0x0003, 0x0027, 0x1234]),
                Attribute::Opaque { typ: attr_type::USERNAME, value: b"abc".to_vec() },
            ];
            m.fingerprint = true;
            let bytes = m.encode();
            assert_eq!(bytes.len() % 4, 0);
            assert_eq!(Message::decode(&bytes), Ok(m));
        }
    }

    #[test]
    fn message_type_bits_roundtrip_for_all_classes_and_methods() {
        for class in [Class::Request, Class::Indication, Class::SuccessResponse, Class::ErrorResponse] {
            for method in [0x001u16, 0x003, 0x0FFF, 0x0A5] {
                let m = Message::new(class, method, TransactionId::new([1; 12]));
                let d = Message::decode(&m.encode()).unwrap();
                assert_eq!((d.class, d.method), (class, method));
            }
        }
        // Known wire values: Binding request 0x0001, success 0x0101, error 0x0111.
        let tid = TransactionId::new([0; 12]);
        assert_eq!(Message::new(Class::Request, 1, tid).encode()[..2], [0x00, 0x01]);
        assert_eq!(Message::new(Class::SuccessResponse, 1, tid).encode()[..2], [0x01, 0x01]);
        assert_eq!(Message::new(Class::ErrorResponse, 1, tid).encode()[..2], [0x01, 0x11]);
    }

    #[test]
    fn binding_request_bytes_are_exactly_as_specified() {
        let tid = TransactionId::new([0xAB; 12]);
        let b = Message::binding_request(tid, ChangeRequest::PORT).encode();
        assert_eq!(b.len(), 20 + 8 + 8);
        assert_eq!(&b[..4], &[0x00, 0x01, 0x00, 0x10]);
        assert_eq!(&b[4..8], &STUN_MAGIC_COOKIE.to_be_bytes());
        assert_eq!(&b[20..28], &[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0x02]);
        assert_eq!(&b[28..32], &[0x80, 0x28, 0x00, 0x04]);
        let crc = crc32(&b[..28]) ^ FINGERPRINT_XOR;
        assert_eq!(&b[32..36], &crc.to_be_bytes());
    }

    /// The exact bytes quoted in docs/STUN-NAT.md.
    #[test]
    fn documented_request_bytes() {
        let id: [u8; 12] = std::array::from_fn(|i| i as u8);
        let hex = |b: Vec<u8>| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(Message::binding_request(TransactionId::new(id), ChangeRequest::NONE).encode()),
            "000100082112a442000102030405060708090a0b802800045b0ff6fc"
        );
        assert_eq!(
            hex(Message::binding_request(TransactionId::new(id), ChangeRequest::IP_AND_PORT).encode()),
            "000100102112a442000102030405060708090a0b000300040000000680280004dbc88c4a"
        );
    }

    #[test]
    fn decodes_rfc3489_message_without_cookie() {
        // Vovida-style request: random 128-bit id, CHANGE-REQUEST 0.
        let mut b = vec![0x00, 0x01, 0x00, 0x08];
        b.extend_from_slice(&[0x5A; 16]);
        b.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0]);
        let m = Message::decode(&b).unwrap();
        assert!(!m.transaction_id.has_magic_cookie());
        assert_eq!(m.change_request(), Some(ChangeRequest::NONE));
        assert_eq!(m.encode(), b);
    }

    #[test]
    fn skips_unknown_optional_and_records_unknown_required() {
        let tid = TransactionId::new([3; 12]);
        let mut b = Message::new(Class::Request, METHOD_BINDING, tid).encode();
        b.extend_from_slice(&[0xC0, 0x57, 0x00, 0x03, 1, 2, 3, 0]); // optional, 3 bytes + pad
        b.extend_from_slice(&[0x00, 0x26, 0x00, 0x02, 9, 9, 0, 0]); // PADDING: required, unknown
        let len = (b.len() - 20) as u16;
        b[2..4].copy_from_slice(&len.to_be_bytes());
        let m = Message::decode(&b).unwrap();
        assert!(m.attributes.is_empty());
        assert_eq!(m.unknown_required, vec![0x0026]);
    }

    #[test]
    fn rejects_specific_malformed_messages() {
        let tid = TransactionId::new([9; 12]);
        let good = Message::binding_request(tid, ChangeRequest::NONE).encode();
        use StunDecodeError::*;
        assert_eq!(Message::decode(&[]), Err(Truncated));
        assert_eq!(Message::decode(&good[..19]), Err(Truncated));
        let mut b = good.clone();
        b[0] = 0x80;
        assert_eq!(Message::decode(&b), Err(NotStun));
        let mut b = good.clone();
        b[3] = 0x0A; // length not a multiple of 4
        assert_eq!(Message::decode(&b), Err(BadLength));
        let mut b = good.clone();
        b.extend_from_slice(&[0; 4]); // trailing bytes beyond the length field
        assert_eq!(Message::decode(&b), Err(BadLength));
        // An attribute whose length runs past the end.
        let mut b = Message::new(Class::Request, 1, tid).encode();
        b.extend_from_slice(&[0x00, 0x01, 0x00, 0x40, 0, 1, 0, 0]);
        b[2..4].copy_from_slice(&8u16.to_be_bytes());
        assert_eq!(Message::decode(&b), Err(Truncated));
        // An address with a bad family / length.
        let mut b = Message::new(Class::Request, 1, tid).encode();
        b.extend_from_slice(&[0x00, 0x01, 0x00, 0x08, 0, 3, 0, 1, 1, 2, 3, 4]);
        b[2..4].copy_from_slice(&12u16.to_be_bytes());
        assert!(matches!(Message::decode(&b), Err(BadAttribute { typ: 1, .. })));
        let mut b = Message::new(Class::Request, 1, tid).encode();
        b.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0, 2, 0, 1, 1, 2, 3, 4]);
        b[2..4].copy_from_slice(&12u16.to_be_bytes());
        assert!(matches!(Message::decode(&b), Err(BadAttribute { typ: 0x20, .. })));
        // Attribute after FINGERPRINT.
        let mut b = good.clone();
        b.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        let len = (b.len() - 20) as u16;
        b[2..4].copy_from_slice(&len.to_be_bytes());
        assert!(Message::decode(&b).is_err());
        // Error code class out of range.
        let mut m = Message::new(Class::ErrorResponse, 1, tid);
        m.attributes.push(Attribute::ErrorCode { code: 799, reason: String::new() });
        assert!(matches!(Message::decode(&m.encode()), Err(BadAttribute { typ: 0x0009, .. })));
    }

    /// 100k random, truncated and bit-flipped inputs: decode returns, never panics, and
    /// whatever it accepts re-encodes to something it accepts again.
    #[test]
    fn decoder_never_panics_on_random_truncated_or_mutated_input() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5EED_5707);
        let tid = TransactionId::new([0x42; 12]);
        let mut full = Message::new(Class::SuccessResponse, METHOD_BINDING, tid);
        full.attributes = vec![
            Attribute::XorMappedAddress("[2001:db8::7]:5".parse().unwrap()),
            Attribute::MappedAddress("1.2.3.4:5".parse().unwrap()),
            Attribute::OtherAddress("5.6.7.8:9".parse().unwrap()),
            Attribute::ErrorCode { code: 420, reason: "x".into() },
            Attribute::UnknownAttributes(vec![1, 2, 3]),
            Attribute::Software("abc".into()),
        ];
        full.fingerprint = true;
        let seeds = [full.encode(), Message::binding_request(tid, ChangeRequest::IP_AND_PORT).encode()];
        let mut accepted = 0;
        for i in 0..100_000 {
            let input: Vec<u8> = match i % 4 {
                0 => {
                    let n = rng.random_range(0..120);
                    (0..n).map(|_| rng.random()).collect()
                }
                1 => {
                    let s = &seeds[i % 2];
                    s[..rng.random_range(0..=s.len())].to_vec()
                }
                2 => {
                    let mut s = seeds[i % 2].clone();
                    for _ in 0..rng.random_range(1..4) {
                        let p = rng.random_range(0..s.len());
                        s[p] ^= 1 << rng.random_range(0..8);
                    }
                    s
                }
                _ => {
                    // Keep a valid header and length, randomise the attribute area.
                    let n = rng.random_range(0..16) * 4;
                    let mut s = Message::new(Class::Request, 1, tid).encode();
                    s[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                    s.extend((0..n).map(|_| rng.random::<u8>()));
                    s
                }
            };
            if let Ok(m) = Message::decode(&input) {
                accepted += 1;
                let again = Message::decode(&m.encode());
                assert!(again.is_ok(), "re-encoding an accepted message broke it");
            }
        }
        // The structured half of the corpus must produce some valid messages, or the
        // test would prove nothing about the accepting paths.
        assert!(accepted > 100, "only {accepted} inputs accepted");
    }
}
