//! NAT behaviour discovery (RFC 5780 tests, RFC 4787 vocabulary), sans-IO.
//!
//! - [`discovery`]: [`NatDiscovery`], an [`crate::endpoint::Endpoint`] that runs the tests
//!   over the client's one socket against a [`crate::stun::StunServer`] (or any RFC 5780 /
//!   RFC 3489 server with two addresses).
//! - [`classify`](mod@classify): [`Observations`] → [`NatReport`], a pure function, and the
//!   public names: [`NatClass`] displays as
//!   `open|full-cone|restricted|port-restricted|symmetric|blocked|unknown`.
//!
//! The run loop is the same as for every endpoint:
//!
//! ```text
//! let mut d = NatDiscovery::new(now, server, None, local, NatDiscoveryConfig::default(), &mut rng);
//! while !d.is_done() {
//!     while let Some(t) = d.poll_transmit() { socket.send_to(&t.payload, t.dst) }
//!     match socket.recv_until(d.poll_timeout()) {
//!         Some((from, bytes)) => d.handle_datagram(now(), local, from, &bytes),
//!         None => d.handle_timeout(now()),
//!     }
//! }
//! let report = d.report(); // report.class.to_string() == "port-restricted", …
//! ```

pub mod classify;
pub mod discovery;

#[cfg(test)]
mod tests;

pub use classify::{
    ClassifyConfig, Filtering, Mapping, NatClass, NatReport, Observations, PortAllocation, Probe, classify,
    classify_with,
};
pub use discovery::{NatDiscovery, NatDiscoveryConfig};
