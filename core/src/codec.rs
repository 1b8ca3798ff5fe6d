//! The one place where values become bytes and back: every serde-encoded wire format (shard
//! messages, link control messages, the game's typed peer messages) goes through here.
//!
//! The encoding is bincode 2's `standard()` configuration — little-endian, variable-length
//! integers, enums as a varint variant index, strings and vectors as varint length + bytes
//! (byte-level description in docs/PROTOCOL.md). bincode is advised as unmaintained
//! (RUSTSEC-2025-0141); it stays because it is the format this project was specified with and
//! 2.0.1 is finished, but no bincode type crosses this module: callers see [`CodecError`],
//! every call names its size limit, and swapping the serializer touches this file only.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Most memory one decode may allocate, whatever the input claims (lengths are checked
/// against it before allocating). Every input is also capped by the caller's `max_len`.
pub const MAX_DECODE_ALLOC: usize = 1 << 20;

/// Why a value could not be encoded or decoded. Holds no dependency type, so it can be
/// matched, cloned and shown without knowing the serializer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The encoded form (or the input) is longer than the limit.
    #[error("{len} bytes exceed the {limit}-byte limit")]
    TooLarge {
        /// Bytes encoded or given.
        len: usize,
        /// The limit that applied.
        limit: usize,
    },
    /// The bytes are not a value of the expected type.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The value decoded but bytes were left over (likely another type).
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// The value cannot be represented (e.g. a map with non-string keys the format refuses).
    #[error("cannot encode: {0}")]
    Unencodable(String),
}

/// Decoding configuration: `standard()` with the allocation limit (the layout is the same
/// as encoding's; the limit only bounds what a claimed length may allocate).
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODE_ALLOC>()
}

/// Encode `value`; more than `max_len` bytes is [`CodecError::TooLarge`].
pub fn encode<T: Serialize + ?Sized>(value: &T, max_len: usize) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| CodecError::Unencodable(e.to_string()))?;
    if bytes.len() > max_len {
        return Err(CodecError::TooLarge { len: bytes.len(), limit: max_len });
    }
    Ok(bytes)
}

/// Decode a `T` from exactly `bytes`. Any input gives `Ok` or `Err`, never a panic; input
/// longer than `max_len` is refused unread, and trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, CodecError> {
    if bytes.len() > max_len {
        return Err(CodecError::TooLarge { len: bytes.len(), limit: max_len });
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_the_documented_byte_layout() {
        // varint integers, length-prefixed strings and vectors, enum variant index.
        #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
        enum E {
            A,
            B { n: u64, s: String, v: Vec<u16> },
        }
        let v = E::B { n: 300, s: "hi".into(), v: vec![1, 2] };
        let bytes = encode(&v, 64).unwrap();
        assert_eq!(bytes, [1, 251, 44, 1, 2, b'h', b'i', 2, 1, 2]);
        assert_eq!(decode::<E>(&bytes, 64).unwrap(), v);
        assert_eq!(encode(&E::A, 64).unwrap(), [0]);
    }

    #[test]
    fn limits_trailing_bytes_and_garbage_are_errors() {
        let v: Vec<u8> = vec![7; 100];
        assert_eq!(encode(&v, 50), Err(CodecError::TooLarge { len: 101, limit: 50 }));
        let bytes = encode(&v, 200).unwrap();
        assert_eq!(decode::<Vec<u8>>(&bytes, 100), Err(CodecError::TooLarge { len: 101, limit: 100 }));
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(decode::<Vec<u8>>(&extra, 200), Err(CodecError::Trailing(1)));
        assert!(matches!(decode::<Vec<u8>>(&bytes[..50], 200), Err(CodecError::Malformed(_))));
    }

    /// A length prefix claiming far more than the input holds allocates nothing large and
    /// fails: the decoder checks claimed lengths against its allocation limit.
    #[test]
    fn a_huge_claimed_length_is_refused_without_allocating_it() {
        // varint 0xFD + u64 little-endian: a vector of 2^40 elements.
        let mut b = vec![0xFD];
        b.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(decode::<Vec<u64>>(&b, 64), Err(CodecError::Malformed(_))));
        assert!(matches!(decode::<String>(&b, 64), Err(CodecError::Malformed(_))));
    }
}
