//! The one interface every sans-IO state machine in the core offers to its drivers.
//!
//! A driver (a real UDP socket loop, the simulator, a Bevy system) runs the same small loop
//! around any [`Endpoint`]:
//!
//! ```text
//! loop {
//!     while let Some(t) = ep.poll_transmit() { socket(t.src).send_to(&t.payload, t.dst) }
//!     let deadline = ep.poll_timeout();
//!     match wait_for(socket readable, deadline) {
//!         Datagram { local, from, bytes } => ep.handle_datagram(now, local, from, &bytes),
//!         Timeout => ep.handle_timeout(now),
//!     }
//! }
//! ```
//!
//! Nothing behind this trait owns a socket, a thread or a clock: `now` always comes in.

use std::net::SocketAddr;
use std::time::Instant;

/// One datagram an endpoint wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Local address to send from; `None` means the endpoint's only (default) socket.
    pub src: Option<SocketAddr>,
    /// Where the datagram goes.
    pub dst: SocketAddr,
    /// The UDP payload.
    pub payload: Vec<u8>,
}

/// A sans-IO protocol state machine: bytes and time in, bytes, events and a deadline out.
pub trait Endpoint {
    /// A datagram arrived on local address `local` from `from`.
    fn handle_datagram(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]);
    /// The deadline from [`Endpoint::poll_timeout`] has passed (calling it early is harmless).
    fn handle_timeout(&mut self, now: Instant);
    /// Next datagram to send, if any.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// When [`Endpoint::handle_timeout`] should next be called; `None` = only on input.
    fn poll_timeout(&self) -> Option<Instant>;
}
