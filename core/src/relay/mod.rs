//! The UDP relay: the fallback path when two peers cannot reach each other directly.
//!
//! The relay forwards opaque peer datagrams (DESIGN.md principle 5). A client binds its side
//! of a link to the relay with a shard-issued [`RelayToken`](crate::proto::relay::RelayToken)
//! (a Bind, `0x30`); once both sides are bound, a peer datagram sent to the relay is
//! forwarded, byte for byte, to the other side's bound address. The relay reads only the
//! 6-byte route (kind, link id, side); it cannot read or forge the AEAD payload.
//!
//! - [`token`]: minting (shard) and stateless verification (relay) of tokens, key rotation.
//! - [`Relay`]: the sans-IO state machine; [`Relay::process`] is the zero-allocation hot
//!   path for the data plane (one call per datagram, answer in an [`Action`]).
//! - [`RelayEndpoint`]: the same behind the [`crate::endpoint::Endpoint`] trait.
//! - [`RelayConfig`]: every constant, with its reason; [`RelayStats`]: every outcome
//!   counted, drops by [`DropReason`].
//!
//! Client side (the link code): [`BindRequest::encode`](crate::proto::relay::BindRequest::encode)
//! and [`BindAck::decode_verified`](crate::proto::relay::BindAck::decode_verified).
//!
//! Security policy (details in `docs/RELAY.md`): nothing is answered or forwarded before a
//! token and a Bind mac verify; a Bind whose counter is not above the last accepted one for
//! its (link, side) is a replay; an address that has not returned the relay's cookie is never
//! sent more bytes than were received from it; per-link-side and per-source token buckets
//! cut a flooding flow without touching others.

pub mod config;
mod endpoint;
mod engine;
pub mod keys;
pub mod quota;
pub mod stats;
pub mod token;

#[cfg(test)]
mod tests;

pub use config::{Quota, RelayConfig};
pub use endpoint::RelayEndpoint;
pub use engine::{
    Action, BindingInfo, COOKIE_SECRET_LEN, ClockAnchor, EARLY_MAX_BYTES, EARLY_MAX_DATAGRAMS, Embedded,
    Notify, Relay, ReplyBuf,
};
pub use keys::{KeySchedule, MINT_LAG, RelayKey, SHARD_SECRET_LEN};
pub use quota::SharedLimits;
pub use stats::{DropReason, RelayStats};
pub use token::{TokenError, TokenKeys, check_expiry, mint, verify_token};
