//! The one encoding of typed application messages both ends use (serde, encoded by
//! [`crate::codec`]), and its errors; shared by [`P2pSender`](super::P2pSender) and
//! [`P2pReceived`](super::P2pReceived).

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client;
use crate::proto::shard::PlayerId;

/// Why a typed message could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The player is not one of our introduced peers (not near us, or already gone).
    #[error("player {0:?} is not an introduced peer")]
    UnknownPeer(PlayerId),
    /// The encoded message is larger than [`client::MAX_APP_MESSAGE`]; split it.
    #[error("message of {0} bytes exceeds the {max}-byte limit", max = client::MAX_APP_MESSAGE)]
    TooLarge(usize),
    /// The shard is unreachable and this peer has no P2P link (P2P off): nothing can carry it.
    #[error("the shard is unreachable and this peer has no P2P link")]
    Offline,
    /// A message for the Game server before the player entered a zone.
    #[error("not in a zone: there is no Game server to send to")]
    NotInGame,
    /// The value could not be encoded (a serde shape the encoding does not support).
    #[error("cannot encode the message: {0}")]
    Encode(String),
}

impl From<client::SendError> for SendError {
    fn from(e: client::SendError) -> Self {
        match e {
            client::SendError::UnknownPeer(p) => SendError::UnknownPeer(p),
            client::SendError::TooLarge(n) => SendError::TooLarge(n),
            client::SendError::Offline => SendError::Offline,
            client::SendError::NotInGame => SendError::NotInGame,
        }
    }
}

/// Why a received message did not decode as the requested type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode the message as the requested type: {0}")]
pub struct P2pDecodeError(pub String);

/// Encode a value as [`P2pSender::send`](super::P2pSender::send) does (serde, [`crate::codec`]); larger than
/// [`client::MAX_APP_MESSAGE`] is [`SendError::TooLarge`].
pub fn encode_message<T: Serialize>(value: &T) -> Result<Bytes, SendError> {
    match crate::codec::encode(value, client::MAX_APP_MESSAGE) {
        Ok(b) => Ok(Bytes::from(b)),
        Err(crate::codec::CodecError::TooLarge { len, .. }) => Err(SendError::TooLarge(len)),
        Err(e) => Err(SendError::Encode(e.to_string())),
    }
}

/// Decode a value sent with [`P2pSender::send`](super::P2pSender::send); trailing bytes are an error, so a message
/// of another type is less likely to decode by accident.
pub fn decode_message<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, P2pDecodeError> {
    crate::codec::decode(bytes, client::MAX_APP_MESSAGE).map_err(|e| P2pDecodeError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Hit {
        target: u32,
        damage: f32,
    }

    #[test]
    fn roundtrip_and_wrong_type_is_an_error() {
        let b = encode_message(&Hit { target: 7, damage: 1.5 }).unwrap();
        assert_eq!(decode_message::<Hit>(&b).unwrap(), Hit { target: 7, damage: 1.5 });
        assert!(decode_message::<String>(&b).is_err());
        assert!(decode_message::<Hit>(&[0xff; 3]).is_err());
        assert!(decode_message::<Vec<u8>>(&[0xfc, 0xff, 0xff, 0xff, 0x7f]).is_err(), "hostile length");
    }
}
