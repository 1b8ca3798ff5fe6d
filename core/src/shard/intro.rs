//! What a player says about its own reachability, checked before it reaches another player.
//!
//! A `MeshInfo` is cleaned **once**, by the Agent, which knows the address the player's
//! packets come from ([`clean_mesh_info`]): at most [`MAX_CANDIDATES`] candidates, de-duplicated
//! in linear time; only `Host` and `ServerReflexive` kinds; addresses nobody should probe
//! refused (unspecified, port 0, multicast, broadcast, link-local, documentation and reserved
//! ranges); a server-reflexive candidate must carry the IP the Agent sees; an implausible
//! `port_delta` becomes unknown. The Lobby and the Game store the cleaned list.
//!
//! Then per pair, when the Game builds a `PeerIntro` ([`introduce`], which uses [`for_peer`]): private candidates
//! (RFC 1918, CGNAT 100.64/10, IPv6 ULA) reach the other player only when both players'
//! packets come from the same public IP (they share a NAT: the LAN path is theirs); loopback
//! candidates only when both come from the same loopback IP (both run on the shard's own
//! host: development and tests). Everything refused is counted by reason.

use std::collections::HashSet;
#[cfg(test)]
use std::net::Ipv4Addr;
use std::net::{IpAddr, SocketAddr};

use rand::RngCore;

use crate::link::{Candidate, CandidateKind, clamp_port_delta};
pub use crate::link::{Refusal, Scope, scope};
use crate::proto::intro::{LinkKey, LinkParams, NatHint, RelayParams};
use crate::proto::peer::{LinkId, Side};
use crate::proto::shard::NatSummary;
use crate::relay::{TokenKeys, mint};

/// Candidates kept per player. A client lists one host candidate per interface address and
/// one server-reflexive candidate; 16 covers a multi-homed dual-stack host with room to spare,
/// and bounds what each introduced peer will probe (its link adds port predictions on top).
pub const MAX_CANDIDATES: usize = 16;

/// Candidates and hints refused, by reason (the Agent counts at `MeshInfo`, the Game per pair).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IntroRefusals {
    /// Candidates beyond [`MAX_CANDIDATES`] (after de-duplication), dropped unread.
    pub over_cap: u64,
    /// Candidates repeating an address already listed.
    pub duplicate: u64,
    /// Kinds a player cannot know of itself (`Predicted`, `Relayed`, `PeerReflexive`).
    pub kind: u64,
    /// [`Refusal::Unusable`] addresses.
    pub unusable: u64,
    /// [`Refusal::LinkLocal`] addresses.
    pub link_local: u64,
    /// [`Refusal::Reserved`] addresses.
    pub reserved: u64,
    /// Server-reflexive candidates whose IP is not the one the Agent sees.
    pub srflx_mismatch: u64,
    /// `port_delta` values outside ±`MAX_PORT_DELTA` (or 0), reported as unknown.
    pub port_delta: u64,
    /// Private candidates withheld from a peer behind another NAT (per pair).
    pub private_withheld: u64,
    /// Loopback candidates withheld from a peer not on the same host (per pair).
    pub loopback_withheld: u64,
}

impl IntroRefusals {
    /// Every counter by name, for logs and metrics.
    pub fn counters(&self) -> [(&'static str, u64); 10] {
        [
            ("over_cap", self.over_cap),
            ("duplicate", self.duplicate),
            ("kind", self.kind),
            ("unusable", self.unusable),
            ("link_local", self.link_local),
            ("reserved", self.reserved),
            ("srflx_mismatch", self.srflx_mismatch),
            ("port_delta", self.port_delta),
            ("private_withheld", self.private_withheld),
            ("loopback_withheld", self.loopback_withheld),
        ]
    }
}

/// Clean a player's `MeshInfo` (see the module docs) in one linear pass; `observed` is the IP
/// the player's packets come from, when known. Whatever the input, the result holds at most
/// [`MAX_CANDIDATES`] distinct, probeable candidates.
pub fn clean_mesh_info(
    candidates: &[Candidate],
    nat: NatSummary,
    observed: Option<IpAddr>,
    stats: &mut IntroRefusals,
) -> (Vec<Candidate>, NatSummary) {
    let observed = observed.map(|ip| ip.to_canonical());
    let mut seen = HashSet::with_capacity(MAX_CANDIDATES);
    let mut out = Vec::with_capacity(MAX_CANDIDATES);
    for (i, c) in candidates.iter().enumerate() {
        if out.len() >= MAX_CANDIDATES {
            stats.over_cap += (candidates.len() - i) as u64;
            break;
        }
        if !matches!(c.kind, CandidateKind::Host | CandidateKind::ServerReflexive) {
            stats.kind += 1;
            continue;
        }
        if let Err(r) = scope(&c.addr) {
            match r {
                Refusal::Unusable => stats.unusable += 1,
                Refusal::LinkLocal => stats.link_local += 1,
                Refusal::Reserved => stats.reserved += 1,
            }
            continue;
        }
        if c.kind == CandidateKind::ServerReflexive && !same_ip_if_comparable(c.addr.ip(), observed) {
            stats.srflx_mismatch += 1;
            continue;
        }
        if !seen.insert(c.addr) {
            stats.duplicate += 1;
            continue;
        }
        out.push(*c);
    }
    let port_delta = clamp_port_delta(nat.port_delta);
    if port_delta != nat.port_delta {
        stats.port_delta += 1;
    }
    let public = nat.public.filter(|a| scope(a).is_ok() && same_ip_if_comparable(a.ip(), observed));
    (out, NatSummary { port_delta, public, ..nat })
}

/// `ip` equals `observed`, or they cannot be compared (unknown, or another address family:
/// a dual-stack client may reach STUN over IPv6 and the Agent over IPv4).
fn same_ip_if_comparable(ip: IpAddr, observed: Option<IpAddr>) -> bool {
    let ip = ip.to_canonical();
    match observed {
        Some(o) if o.is_ipv4() == ip.is_ipv4() => o == ip,
        _ => true,
    }
}

/// The candidates of a player (`cands`, seen from `owner_ip`) that may be given to a peer seen
/// from `peer_ip`: public ones always; private ones when both IPs are known and equal (same
/// NAT); loopback ones when both are the same loopback IP (same host). Withheld ones counted.
pub fn for_peer(
    cands: &[Candidate],
    owner_ip: Option<IpAddr>,
    peer_ip: Option<IpAddr>,
    stats: &mut IntroRefusals,
) -> Vec<Candidate> {
    let shared = match (owner_ip, peer_ip) {
        (Some(a), Some(b)) => a.to_canonical() == b.to_canonical(),
        _ => false,
    };
    let same_host = shared && owner_ip.is_some_and(|ip| ip.to_canonical().is_loopback());
    cands
        .iter()
        .filter(|c| match scope(&c.addr) {
            Ok(Scope::Public) => true,
            Ok(Scope::Private) if shared => true,
            Ok(Scope::Private) => {
                stats.private_withheld += 1;
                false
            }
            Ok(Scope::Loopback) if same_host => true,
            Ok(Scope::Loopback) => {
                stats.loopback_withheld += 1;
                false
            }
            Err(_) => false, // already refused by `clean_mesh_info`
        })
        .copied()
        .collect()
}

/// What the shard knows of one player of a pair: its cleaned candidates, its NAT and the IP
/// its packets come from.
#[derive(Debug, Clone, Copy)]
pub struct IntroSide<'a> {
    /// Candidates as [`clean_mesh_info`] kept them.
    pub candidates: &'a [Candidate],
    /// Its NAT, as the peer's link should know it.
    pub nat: NatHint,
    /// The IP its packets come from (decides who gets its private candidates).
    pub ip: Option<IpAddr>,
}

/// The relay a pair falls back to and the keys its tokens are minted with.
#[derive(Debug, Clone, Copy)]
pub struct IntroRelay<'a> {
    /// The relay's address.
    pub addr: SocketAddr,
    /// The minting keys of now ([`crate::relay::KeySchedule::minting_keys`]).
    pub keys: &'a TokenKeys,
    /// Unix second the tokens expire.
    pub expiry_unix: u32,
}

impl IntroRelay<'_> {
    /// A fresh token for `side` of `link` (an introduction, or a `RelayRefresh`).
    pub fn params(&self, link: LinkId, side: Side) -> RelayParams {
        let (token, bind_key) = mint(self.keys, link, side, self.expiry_unix);
        RelayParams { addr: self.addr, token, bind_key }
    }
}

/// Both halves of one introduction: what side A and side B are told.
#[derive(Debug, Clone)]
pub struct Introduction {
    /// For side A (the lower player id by convention): B's candidates and NAT.
    pub a: LinkParams,
    /// For side B: A's candidates and NAT.
    pub b: LinkParams,
}

/// The NAT hint a peer gets from a player's `MeshInfo` summary (unknown if none was sent).
pub fn nat_hint(summary: Option<&NatSummary>) -> NatHint {
    summary
        .map(|n| NatHint { dependent_mapping: n.dependent_mapping, port_delta: n.port_delta }.sanitized())
        .unwrap_or_default()
}

/// **The** peer introduction, used by the Game server, the simulator and the tests alike:
/// a fresh link key from `rng`, each side the other's candidates (scoped by [`for_peer`]) and
/// NAT hint, and relay tokens for both sides. Side A probes with the same rules as side B;
/// the side only names the relay slot and the key direction.
pub fn introduce(
    rng: &mut dyn RngCore,
    link: LinkId,
    a: &IntroSide<'_>,
    b: &IntroSide<'_>,
    relay: Option<&IntroRelay<'_>>,
    refusals: &mut IntroRefusals,
) -> Introduction {
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    let key = LinkKey(key);
    let half =
        |me: &IntroSide<'_>, other: &IntroSide<'_>, side: Side, refusals: &mut IntroRefusals| LinkParams {
            link,
            side,
            key: key.clone(),
            remote: for_peer(other.candidates, other.ip, me.ip, refusals),
            remote_nat: other.nat.sanitized(),
            relay: relay.map(|r| r.params(link, side)),
        };
    let pa = half(a, b, Side::A, refusals);
    let pb = half(b, a, Side::B, refusals);
    Introduction { a: pa, b: pb }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(kind: CandidateKind, a: &str) -> Candidate {
        Candidate::new(kind, a.parse().unwrap())
    }

    fn nat(delta: Option<i32>) -> NatSummary {
        NatSummary { class: "symmetric".into(), dependent_mapping: true, port_delta: delta, public: None }
    }

    #[test]
    fn scopes_of_addresses() {
        let s = |a: &str| scope(&a.parse().unwrap());
        assert_eq!(s("8.8.8.8:1"), Ok(Scope::Public));
        assert_eq!(s("198.18.0.10:3478"), Ok(Scope::Public), "benchmarking range: the netlab's internet");
        assert_eq!(s("10.1.2.3:5"), Ok(Scope::Private));
        assert_eq!(s("172.16.0.1:5"), Ok(Scope::Private));
        assert_eq!(s("192.168.0.1:5"), Ok(Scope::Private));
        assert_eq!(s("100.64.0.1:5"), Ok(Scope::Private));
        assert_eq!(s("100.128.0.1:5"), Ok(Scope::Public));
        assert_eq!(s("127.0.0.1:5"), Ok(Scope::Loopback));
        assert_eq!(s("[::1]:5"), Ok(Scope::Loopback));
        assert_eq!(s("[::ffff:127.0.0.1]:5"), Ok(Scope::Loopback), "v4-mapped is judged as v4");
        assert_eq!(s("[fd00::1]:5"), Ok(Scope::Private));
        assert_eq!(s("[2a00::1]:5"), Ok(Scope::Public));
        for bad in ["0.0.0.0:5", "8.8.8.8:0", "224.0.0.1:5", "255.255.255.255:5", "[::]:5", "[ff02::1]:5"] {
            assert_eq!(s(bad), Err(Refusal::Unusable), "{bad}");
        }
        for ll in ["169.254.1.1:5", "[fe80::1]:5"] {
            assert_eq!(s(ll), Err(Refusal::LinkLocal), "{ll}");
        }
        for r in
            ["192.0.2.1:5", "198.51.100.1:5", "203.0.113.1:5", "0.1.2.3:5", "240.0.0.1:5", "[2001:db8::1]:5"]
        {
            assert_eq!(s(r), Err(Refusal::Reserved), "{r}");
        }
    }

    #[test]
    fn mesh_info_is_capped_deduplicated_checked_and_counted() {
        let observed: IpAddr = "8.8.4.4".parse().unwrap();
        let mut cands = vec![c(CandidateKind::Host, "192.168.1.2:5000"); 50_000];
        cands.push(c(CandidateKind::ServerReflexive, "8.8.4.4:6000"));
        cands.push(c(CandidateKind::ServerReflexive, "1.2.3.4:6000")); // someone else's IP
        cands.push(c(CandidateKind::Predicted, "8.8.4.4:6001"));
        cands.push(c(CandidateKind::Host, "127.0.0.1:5000"));
        cands.push(c(CandidateKind::Host, "169.254.0.1:5000"));
        cands.push(c(CandidateKind::Host, "203.0.113.1:5000"));
        cands.push(c(CandidateKind::Host, "0.0.0.0:5000"));
        cands.extend((0..49_993u32).map(|i| {
            Candidate::new(CandidateKind::Host, SocketAddr::new(Ipv4Addr::from(0x0a00_0000 + i).into(), 5000))
        }));
        assert_eq!(cands.len(), 100_000);
        let mut st = IntroRefusals::default();
        let (out, cleaned) = clean_mesh_info(&cands, nat(Some(i32::MIN)), Some(observed), &mut st);
        assert_eq!(out.len(), MAX_CANDIDATES);
        assert_eq!(out.iter().map(|c| c.addr).collect::<HashSet<_>>().len(), MAX_CANDIDATES);
        assert_eq!(out[0].addr, "192.168.1.2:5000".parse().unwrap());
        assert_eq!(out[1].addr, "8.8.4.4:6000".parse().unwrap());
        assert_eq!(out[2].addr, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(cleaned.port_delta, None);
        let expect = IntroRefusals {
            over_cap: 49_993 - 13,
            duplicate: 49_999,
            kind: 1,
            unusable: 1,
            link_local: 1,
            reserved: 1,
            srflx_mismatch: 1,
            port_delta: 1,
            ..Default::default()
        };
        assert_eq!(st, expect);
        // A plausible step is kept; an unknown observed IP or another family skips the check.
        let mut st = IntroRefusals::default();
        let srflx = [
            c(CandidateKind::ServerReflexive, "1.2.3.4:6000"),
            c(CandidateKind::ServerReflexive, "[2a00::1]:6000"),
        ];
        let (out, cleaned) = clean_mesh_info(&srflx, nat(Some(-2)), None, &mut st);
        assert_eq!((out.len(), cleaned.port_delta, st), (2, Some(-2), IntroRefusals::default()));
        let (out, _) = clean_mesh_info(&srflx, nat(None), Some(observed), &mut st);
        assert_eq!(out, srflx[1..], "IPv6 srflx cannot be compared with an IPv4 source");
    }

    #[test]
    fn private_candidates_reach_only_a_peer_behind_the_same_nat() {
        let cands = [
            c(CandidateKind::Host, "10.0.0.2:5000"),
            c(CandidateKind::Host, "127.0.0.1:5001"),
            c(CandidateKind::ServerReflexive, "8.8.4.4:6000"),
        ];
        let (a, b, lo): (IpAddr, IpAddr, IpAddr) =
            ("8.8.4.4".parse().unwrap(), "9.9.9.9".parse().unwrap(), "127.0.0.1".parse().unwrap());
        let mut st = IntroRefusals::default();
        assert_eq!(for_peer(&cands, Some(a), Some(b), &mut st), cands[2..]);
        assert_eq!((st.private_withheld, st.loopback_withheld), (1, 1));
        assert_eq!(for_peer(&cands, Some(a), None, &mut st), cands[2..], "unknown: not shared");
        assert_eq!(for_peer(&cands, Some(a), Some(a), &mut st), [cands[0], cands[2]], "same NAT");
        assert_eq!(for_peer(&cands, Some(lo), Some(lo), &mut st), cands, "both on the shard's host");
        assert_eq!((st.private_withheld, st.loopback_withheld), (2, 3));
    }

    #[test]
    fn an_introduction_gives_each_side_the_other_s_scoped_candidates_one_key_and_its_own_token() {
        use crate::relay::verify_token;
        use rand::SeedableRng;
        let keys = TokenKeys::new(1, [9; 32]);
        let relay = IntroRelay { addr: "8.8.8.8:3478".parse().unwrap(), keys: &keys, expiry_unix: 2_000 };
        let ca = [c(CandidateKind::Host, "10.0.0.2:5000"), c(CandidateKind::ServerReflexive, "8.8.4.4:6000")];
        let cb = [c(CandidateKind::ServerReflexive, "9.9.9.9:7000")];
        let hint = nat_hint(Some(&nat(Some(2))));
        let a = IntroSide { candidates: &ca, nat: hint, ip: Some("8.8.4.4".parse().unwrap()) };
        let b = IntroSide { candidates: &cb, nat: NatHint::default(), ip: Some("9.9.9.9".parse().unwrap()) };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut st = IntroRefusals::default();
        let i = introduce(&mut rng, LinkId(7), &a, &b, Some(&relay), &mut st);
        assert_eq!((i.a.side, i.b.side, i.a.link, i.b.link), (Side::A, Side::B, LinkId(7), LinkId(7)));
        assert_eq!(i.a.key.0, i.b.key.0, "one key for both sides");
        assert_eq!(i.a.remote, cb, "A learns B's candidates");
        assert_eq!(i.b.remote, ca[1..], "B (another NAT) does not learn A's private address");
        assert_eq!(st.private_withheld, 1);
        assert_eq!((i.b.remote_nat.dependent_mapping, i.b.remote_nat.port_delta), (true, Some(2)));
        for (p, side) in [(&i.a, Side::A), (&i.b, Side::B)] {
            let r = p.relay.as_ref().expect("relay params");
            let bind_key = verify_token(&keys, LinkId(7), side, &r.token).expect("accepted for its side");
            assert_eq!(bind_key, r.bind_key);
            let other = if side == Side::A { Side::B } else { Side::A };
            assert!(verify_token(&keys, LinkId(7), other, &r.token).is_err(), "not for the other side");
        }
        let again = introduce(&mut rng, LinkId(8), &a, &b, None, &mut st);
        assert_ne!(again.a.key.0, i.a.key.0, "a fresh key per introduction");
        assert!(again.a.relay.is_none());
    }
}
