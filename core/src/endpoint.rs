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

/// Ties a monotonic `Instant` to Unix time, so sans-IO code can reason about wall-clock
/// values (token expiries, bind counters that must grow across restarts) from `now` alone.
/// The driver reads the system clock once and builds the anchor; the core never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockAnchor {
    /// A moment on the monotonic clock…
    pub at: Instant,
    /// …and the Unix time in microseconds at that moment.
    pub unix_micros: u64,
}

impl ClockAnchor {
    /// Unix microseconds at `now` (instants before the anchor count as the anchor).
    pub fn unix_micros_at(&self, now: Instant) -> u64 {
        self.unix_micros.saturating_add(now.saturating_duration_since(self.at).as_micros() as u64)
    }

    /// Unix seconds at `now`.
    pub fn unix_secs_at(&self, now: Instant) -> u64 {
        self.unix_micros_at(now) / 1_000_000
    }
}
