//! Names for the things in a simulated network: hosts, NATs, realms, and errors when
//! building the topology.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use super::link::LinkParams;

/// A host added with [`crate::Sim::add_host`]. Only meaningful for the `Sim` that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub(crate) u32);

impl HostId {
    /// Position of the host in order of creation (0 for the first host).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host{}", self.0)
    }
}

/// A NAT box added with [`crate::Sim::add_nat`]. Only meaningful for the `Sim` that
/// made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NatId(pub(crate) u32);

impl NatId {
    /// Position of the NAT in order of creation (0 for the first NAT).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for NatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nat{}", self.0)
    }
}

/// An addressing realm (RFC 4787 §2): a set of hosts that reach each other directly.
///
/// Addresses are looked up only inside the sender's realm, so every site may reuse the same
/// private range (192.168.0.0/24 behind each NAT) without one site ever reaching another's
/// private hosts. Traffic leaves a private realm only through its NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Realm {
    /// The public internet.
    Public,
    /// The private network on the inside of a NAT.
    Behind(NatId),
}

impl fmt::Display for Realm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Realm::Public => f.write_str("public"),
            Realm::Behind(n) => write!(f, "behind {n}"),
        }
    }
}

/// How a host is attached to the simulated network.
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    /// The host's IP addresses in its realm (at least one). A `Transmit` may use any of them
    /// as source; `Transmit::src == None` means the first one with `default_port`.
    pub ips: Vec<IpAddr>,
    /// Which realm the host sits in.
    pub realm: Realm,
    /// The port of the host's default socket (used when `Transmit::src` is `None`).
    pub default_port: u16,
    /// The host's access link, crossed once by every datagram it sends and once by every
    /// datagram it receives.
    pub uplink: LinkParams,
}

impl HostConfig {
    /// Default port of hosts made with [`HostConfig::public`] / [`HostConfig::behind`].
    pub const DEFAULT_PORT: u16 = 4000;

    /// A host with one address on the public internet, port 4000, ideal uplink.
    pub fn public(ip: impl Into<IpAddr>) -> Self {
        HostConfig {
            ips: vec![ip.into()],
            realm: Realm::Public,
            default_port: Self::DEFAULT_PORT,
            uplink: LinkParams::IDEAL,
        }
    }

    /// A host with one private address behind `nat`, port 4000, ideal uplink.
    pub fn behind(nat: NatId, ip: impl Into<IpAddr>) -> Self {
        HostConfig { realm: Realm::Behind(nat), ..Self::public(ip) }
    }

    /// The same host with `default_port` as its default socket's port.
    pub fn port(mut self, default_port: u16) -> Self {
        self.default_port = default_port;
        self
    }

    /// The same host with one more address (multi-homed host).
    pub fn extra_ip(mut self, ip: impl Into<IpAddr>) -> Self {
        self.ips.push(ip.into());
        self
    }

    /// The same host with this access link.
    pub fn uplink(mut self, uplink: LinkParams) -> Self {
        self.uplink = uplink;
        self
    }
}

/// One side of a [`crate::Sim::block`] rule: a whole IP, or one IP and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathEnd {
    /// Every port of this IP.
    Ip(IpAddr),
    /// Exactly this address.
    Addr(SocketAddr),
}

impl PathEnd {
    pub(crate) fn matches(&self, a: SocketAddr) -> bool {
        match *self {
            PathEnd::Ip(ip) => a.ip() == ip,
            PathEnd::Addr(s) => a == s,
        }
    }
}

impl From<IpAddr> for PathEnd {
    fn from(ip: IpAddr) -> Self {
        PathEnd::Ip(ip)
    }
}

impl From<std::net::Ipv4Addr> for PathEnd {
    fn from(ip: std::net::Ipv4Addr) -> Self {
        PathEnd::Ip(ip.into())
    }
}

impl From<SocketAddr> for PathEnd {
    fn from(a: SocketAddr) -> Self {
        PathEnd::Addr(a)
    }
}

/// A topology change the simulator refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SimError {
    /// The `NatId` does not belong to this simulator.
    #[error("unknown {0}: use an id returned by this Sim's add_nat")]
    UnknownNat(NatId),
    /// The `HostId` does not belong to this simulator.
    #[error("unknown {0}: use an id returned by this Sim's add_host")]
    UnknownHost(HostId),
    /// A host needs at least one IP address.
    #[error("a host needs at least one IP address")]
    NoAddress,
    /// The address is not usable as a host or NAT address (unspecified, loopback,
    /// multicast or broadcast).
    #[error("{0} cannot be a host or NAT address: use a unicast address")]
    BadAddress(IpAddr),
    /// Another host or NAT already owns this IP in the same realm.
    #[error("{ip} is already in use in the {realm} realm: pick another address")]
    AddressInUse {
        /// The contested address.
        ip: IpAddr,
        /// The realm where it is taken.
        realm: Realm,
    },
    /// The NAT's port range is empty.
    #[error("the NAT's port range is empty")]
    EmptyPortRange,
}
