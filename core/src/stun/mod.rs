//! STUN (RFC 8489) Binding, sans-IO: codec, client transaction and server.
//!
//! - [`codec`]: [`Message`] encode/decode, RFC 8489 + RFC 5780 + RFC 3489 attributes,
//!   FINGERPRINT. Never panics on any input.
//! - [`client`]: [`BindingRequest`], one transaction with RFC 8489 retransmissions,
//!   matched by transaction id and source; yields a [`BindingResponse`].
//! - [`server`]: [`StunServer`], an [`crate::endpoint::Endpoint`] answering Binding
//!   requests on up to four addresses, honouring CHANGE-REQUEST for RFC 5780 discovery.
//!
//! None of it owns a socket or reads a clock. See `docs/STUN-NAT.md` for the byte layout
//! of what we send and accept, and why we wrote the codec instead of using a crate.

pub mod client;
pub mod codec;
pub mod server;

pub use client::{BindingError, BindingRequest, BindingResponse, RetransmitConfig};
pub use codec::{Attribute, ChangeRequest, Class, Message, StunDecodeError, TransactionId};
pub use server::{StunDrops, StunServer, StunServerConfig};
