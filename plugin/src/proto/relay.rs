//! Relay binding control datagrams (bind, bind-ack, bind-confirm). Relayed data itself is a
//! peer datagram ([`super::peer`]) sent to the relay's address and forwarded unchanged.

/// The first byte of a relay control datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RelayKind {
    /// Client → relay: bind (or refresh) one side of a link with a shard-issued token.
    Bind = 0x30,
    /// Relay → client: binding accepted; carries the client's observed address.
    BindAck = 0x31,
    /// Client → relay: proves the client receives at its source address (return routability).
    BindConfirm = 0x32,
}

impl RelayKind {
    /// Parse the first byte.
    pub fn from_byte(b: u8) -> Option<RelayKind> {
        Some(match b {
            0x30 => RelayKind::Bind,
            0x31 => RelayKind::BindAck,
            0x32 => RelayKind::BindConfirm,
            _ => return None,
        })
    }
}
