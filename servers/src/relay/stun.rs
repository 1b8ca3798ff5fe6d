//! STUN on the relay's sockets: the hook the data plane hands STUN datagrams to, and a
//! minimal RFC 8489 Binding responder used until the full STUN server is plugged in.
//!
//! A datagram is STUN when its first byte is `0x00..=0x03` and bytes 4..8 hold the magic
//! cookie ([`p2pmodel_core::proto::classify`]); everything else goes to the relay.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use p2pmodel_core::proto::STUN_MAGIC_COOKIE;
use p2pmodel_core::proto::relay::canonical;

/// Handles one STUN datagram: `(now, local, from, request, out)` → `Some((src, dst, len))`
/// to send `out[..len]` from the local address `src` (one of the data plane's sockets; the
/// one it arrived on, or another one for an RFC 5780 CHANGE-REQUEST) to `dst`, or `None`
/// to send nothing (the datagram is counted as `stun_unanswered`). `out` holds
/// [`super::batch::SCRATCH_LEN`] bytes.
pub type StunHook = Box<
    dyn FnMut(Instant, SocketAddr, SocketAddr, &[u8], &mut [u8]) -> Option<(SocketAddr, SocketAddr, usize)>
        + Send,
>;

/// Whether a datagram goes to the STUN hook: first byte `0x00..=0x03` (RFC 7983) and at least
/// a STUN header. The magic cookie is not required, so classic RFC 3489 clients (the Vovida
/// `stun` tool, old consoles) are answered too; no relay datagram starts below `0x20`, and the
/// STUN server drops what does not parse.
#[inline]
pub fn is_stun(d: &[u8]) -> bool {
    d.len() >= 20 && d[0] <= 0x03
}

const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// The full STUN server (`p2pmodel_core::stun::StunServer`: RFC 8489 Binding, RFC 5780
/// CHANGE-REQUEST / OTHER-ADDRESS / RESPONSE-ORIGIN, RFC 3489 MAPPED-ADDRESS / CHANGED-ADDRESS)
/// as the data plane's hook. `config.primary` must be the relay's primary socket address, and
/// the alternate port / IP the other sockets the data plane opened, so a CHANGE-REQUEST is
/// answered from the right socket. STUN is the control path, not the hot one: the server's
/// queue allocates per answer, which is fine at STUN rates.
pub fn stun_server_hook(config: p2pmodel_core::stun::StunServerConfig) -> StunHook {
    use p2pmodel_core::endpoint::Endpoint;
    let mut server = p2pmodel_core::stun::StunServer::new(config);
    Box::new(move |now, local, from, req, out| {
        server.handle_datagram(now, local, from, req);
        let mut answer = None;
        // One request gives at most one answer; drain anyway so nothing lingers.
        while let Some(t) = server.poll_transmit() {
            if answer.is_none() && t.payload.len() <= out.len() {
                out[..t.payload.len()].copy_from_slice(&t.payload);
                answer = Some((t.src.unwrap_or(local), t.dst, t.payload.len()));
            }
        }
        answer
    })
}

/// The STUN server layout for the data plane's bound sockets (`local[0]` is the primary):
/// another port on the primary IP is the alternate port, another IP the alternate IP.
pub fn stun_config_for(local: &[SocketAddr]) -> p2pmodel_core::stun::StunServerConfig {
    let primary = local[0];
    let alt_port =
        local.iter().find(|a| a.ip() == primary.ip() && a.port() != primary.port()).map(|a| a.port());
    let alt_ip = local.iter().find(|a| a.ip() != primary.ip()).map(|a| a.ip());
    p2pmodel_core::stun::StunServerConfig {
        primary,
        alt_port,
        alt_ip,
        software: None,
        no_amplification: true,
    }
}

/// The minimal hook (tests, embedded uses without RFC 5780): answers a well-formed Binding request with a Binding success
/// carrying XOR-MAPPED-ADDRESS (32 B for IPv4, 44 B for IPv6), from the socket it arrived
/// on. No RFC 5780 CHANGE-REQUEST / OTHER-ADDRESS, no MAPPED-ADDRESS for RFC 3489 clients:
/// the full STUN server (`p2pmodel_core::stun`) replaces this hook.
pub fn minimal_binding_responder() -> StunHook {
    Box::new(|_now, local, from, req, out| {
        let len = binding_response(from, req, out)?;
        Some((local, from, len))
    })
}

/// Write the Binding success response to `req` (from `from`) into `out`; `None` if `req` is
/// not a well-formed Binding request, or is smaller than the response would be (a relay
/// never answers a spoofable source with more bytes than it sent; our clients pad).
pub fn binding_response(from: SocketAddr, req: &[u8], out: &mut [u8]) -> Option<usize> {
    if !is_stun(req)
        || req[4..8] != STUN_MAGIC_COOKIE.to_be_bytes()
        || u16::from_be_bytes([req[0], req[1]]) != BINDING_REQUEST
    {
        return None;
    }
    let body = usize::from(u16::from_be_bytes([req[2], req[3]]));
    if body % 4 != 0 || req.len() != 20 + body {
        return None;
    }
    let from = canonical(from);
    let (family, addr_len) = if from.is_ipv4() { (1u8, 4) } else { (2u8, 16) };
    let total = 20 + 4 + 4 + addr_len;
    if out.len() < total || req.len() < total {
        return None;
    }
    out[0..2].copy_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out[2..4].copy_from_slice(&((total - 20) as u16).to_be_bytes());
    out[4..20].copy_from_slice(&req[4..20]);
    out[20..22].copy_from_slice(&XOR_MAPPED_ADDRESS.to_be_bytes());
    out[22..24].copy_from_slice(&((4 + addr_len) as u16).to_be_bytes());
    out[24] = 0;
    out[25] = family;
    let port = from.port() ^ (STUN_MAGIC_COOKIE >> 16) as u16;
    out[26..28].copy_from_slice(&port.to_be_bytes());
    match from.ip() {
        IpAddr::V4(ip) => {
            let x = u32::from(ip) ^ STUN_MAGIC_COOKIE;
            out[28..32].copy_from_slice(&x.to_be_bytes());
        }
        IpAddr::V6(ip) => {
            let o = ip.octets();
            for k in 0..16 {
                out[28 + k] = o[k] ^ req[4 + k];
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Binding request padded to 48 bytes (a 28-byte P2PM-PADDING attribute).
    fn request() -> [u8; 48] {
        let mut r = [0u8; 48];
        r[1] = 0x01;
        r[3] = 28;
        r[4..8].copy_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        r[8..20].copy_from_slice(&[7; 12]);
        r[20..24].copy_from_slice(&[0xC0, 0x50, 0, 24]);
        r
    }

    #[test]
    fn stun_minimal_binding_response_xors_the_address() {
        let mut out = [0u8; 64];
        let from: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let n = binding_response(from, &request(), &mut out).unwrap();
        assert_eq!(n, 32);
        assert_eq!(&out[..2], &[0x01, 0x01]);
        assert_eq!(&out[8..20], &[7; 12]);
        // RFC 5769 §2.2 style: port 32853 ^ 0x2112 = 0xa147, 192.0.2.1 ^ cookie = e112a643.
        assert_eq!(&out[26..32], &[0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]);
        let v6: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        assert_eq!(binding_response(v6, &request(), &mut out), Some(44));
        let mut bad = request();
        bad[3] = 4;
        assert_eq!(binding_response(from, &bad, &mut out), None);
        assert_eq!(binding_response(from, &request()[..19], &mut out), None);
        // A bare 20-byte request would be answered with 32 bytes: amplification, refused.
        let mut bare = request();
        bare[3] = 0;
        assert_eq!(binding_response(from, &bare[..20], &mut out), None);
    }
}
