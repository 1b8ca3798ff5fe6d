//! Relay token keys derived from the relay key by time epoch, so the shard's minter and
//! every relay rotate in step without talking to each other.
//!
//! ```text
//! relay_key  = HKDF-SHA256(ikm = shard_secret, salt = none, info = "p2pmodel relay v1")
//! epoch      = floor(unix_secs / rotation)          (0 forever when rotation = 0)
//! key_id     = epoch mod 256
//! secret[e]  = HMAC-SHA256(relay_key, "p2pm-relay-token-key" || e u64 BE)
//! ```
//! A relay needs only `relay_key` (`[relay] key` in its config): it cannot derive the shard
//! secret, the netcode key, client ids or the internal link PSK from it.
//!
//! A shard with several relays gives each an id (`[relay] id`, the index in `[shard]
//! relays`) and its own relay key: relay 0's is the one above, relay `r ≥ 1`'s
//! `HKDF-SHA256(ikm = shard_secret, info = "p2pmodel relay v1 #" || r u8)`, and its tokens
//! name it ([`crate::relay::TokenKeys::for_relay`]). So a relay holds nothing that lets it
//! mint tokens another relay accepts. They rotate in step without talking to each other:
//! every relay and every minter derive the epoch from the same clock arithmetic
//! (`floor(unix / token_key_rotation_secs)`, one setting for the whole shard), and the Game
//! servers, which hold the shard secret, derive each relay's schedule from it.
//! The relay holds the keys of the current and the previous epoch; the minter signs with
//! the key of `epoch(now − MINT_LAG)`, so a minter whose clock is up to `MINT_LAG` ahead of
//! a relay never uses a key the relay does not hold yet.

use std::time::Duration;

use super::TokenKeys;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a shard secret (the root of every key of a shard).
pub const SHARD_SECRET_LEN: usize = 32;

const LABEL: &[u8] = b"p2pm-relay-token-key";
const RELAY_KEY_INFO: &[u8] = b"p2pmodel relay v1";

/// The one secret a relay holds: derived from the shard secret, the root of the relay
/// token keys (see the module docs). Its `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayKey([u8; 32]);

impl RelayKey {
    /// The relay key of the shard with this secret (its relay 0).
    pub fn derive(secret: &[u8; SHARD_SECRET_LEN]) -> RelayKey {
        Self::derive_for(secret, 0)
    }

    /// The relay key of relay `id` of the shard with this secret (id 0: [`RelayKey::derive`]).
    pub fn derive_for(secret: &[u8; SHARD_SECRET_LEN], id: u8) -> RelayKey {
        let mut k = [0u8; 32];
        let hk = Hkdf::<Sha256>::new(None, secret);
        let done = if id == 0 {
            hk.expand(RELAY_KEY_INFO, &mut k)
        } else {
            hk.expand_multi_info(&[RELAY_KEY_INFO, b" #", &[id]], &mut k)
        };
        done.expect("32 bytes is a valid HKDF length");
        RelayKey(k)
    }

    /// A relay key given as bytes (`[relay] key` in a relay's config).
    pub fn from_bytes(bytes: [u8; 32]) -> RelayKey {
        RelayKey(bytes)
    }

    /// The key as 64 lowercase hex digits (what `p2pmodel relay-key` prints).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for RelayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayKey(<redacted>)")
    }
}

/// How far behind the current epoch the minter signs (clock skew allowance).
pub const MINT_LAG: Duration = Duration::from_secs(60);

/// The shard's token key schedule.
#[derive(Clone)]
pub struct KeySchedule {
    key: RelayKey,
    rotation_secs: u64,
    relay_id: u8,
}

impl std::fmt::Debug for KeySchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySchedule")
            .field("rotation_secs", &self.rotation_secs)
            .field("relay_id", &self.relay_id)
            .finish_non_exhaustive()
    }
}

impl KeySchedule {
    /// A schedule from the relay key and the epoch length (`Duration::ZERO`: one key
    /// forever).
    pub fn new(key: RelayKey, rotation: Duration) -> KeySchedule {
        KeySchedule { key, rotation_secs: rotation.as_secs(), relay_id: 0 }
    }

    /// Relay `id`'s schedule of the shard with this secret: its own relay key
    /// ([`RelayKey::derive_for`]) and tokens that name it.
    pub fn for_relay(secret: &[u8; SHARD_SECRET_LEN], id: u8, rotation: Duration) -> KeySchedule {
        KeySchedule::new(RelayKey::derive_for(secret, id), rotation).with_relay_id(id)
    }

    /// This schedule for the relay with this id (its key must be that relay's).
    pub fn with_relay_id(mut self, id: u8) -> KeySchedule {
        self.relay_id = id;
        self
    }

    /// The relay whose tokens this schedule mints and verifies.
    pub fn relay_id(&self) -> u8 {
        self.relay_id
    }

    /// The epoch at `unix_secs`.
    pub fn epoch(&self, unix_secs: u64) -> u64 {
        unix_secs.checked_div(self.rotation_secs).unwrap_or(0)
    }

    /// The token secret of `epoch`.
    pub fn secret(&self, epoch: u64) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key.0).expect("any key length");
        m.update(LABEL);
        m.update(&epoch.to_be_bytes());
        m.finalize().into_bytes().into()
    }

    /// What a relay accepts at `unix_secs`: the current epoch's key and the previous one.
    pub fn relay_keys(&self, unix_secs: u64) -> TokenKeys {
        let e = self.epoch(unix_secs);
        if e == 0 {
            return TokenKeys::new(0, self.secret(0)).for_relay(self.relay_id);
        }
        let mut k = TokenKeys::new(((e - 1) % 256) as u8, self.secret(e - 1)).for_relay(self.relay_id);
        k.rotate((e % 256) as u8, self.secret(e)).expect("consecutive epochs have distinct ids");
        k
    }

    /// What a minter signs with at `unix_secs` (the key of `epoch(now − MINT_LAG)`).
    pub fn minting_keys(&self, unix_secs: u64) -> TokenKeys {
        let e = self.epoch(unix_secs.saturating_sub(MINT_LAG.as_secs()));
        TokenKeys::new((e % 256) as u8, self.secret(e)).for_relay(self.relay_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::peer::{LinkId, Side};
    use crate::relay::{mint, verify_token};

    #[test]
    fn keys_minted_tokens_verify_across_a_rotation() {
        let s = KeySchedule::new(RelayKey::derive(&[3; 32]), Duration::from_secs(3600));
        let t0 = 1_000 * 3600 + 3599; // the last second of an epoch
        let (tok, key) = mint(&s.minting_keys(t0), LinkId(1), Side::A, 0);
        for now in [t0, t0 + 1, t0 + 3600] {
            assert_eq!(verify_token(&s.relay_keys(now), LinkId(1), Side::A, &tok), Ok(key.clone()), "{now}");
        }
        assert!(verify_token(&s.relay_keys(t0 + 7200), LinkId(1), Side::A, &tok).is_err());
        // A minter a few seconds ahead at the boundary still signs with a key relays hold.
        let (tok, _) = mint(&s.minting_keys(t0 + 30), LinkId(1), Side::A, 0);
        assert!(verify_token(&s.relay_keys(t0 - 1), LinkId(1), Side::A, &tok).is_ok());
        let never = KeySchedule::new(RelayKey::derive(&[3; 32]), Duration::ZERO);
        assert_eq!(never.relay_keys(5).current_id(), never.relay_keys(u32::MAX as u64).current_id());
        assert_ne!(s.secret(1), KeySchedule::new(RelayKey::derive(&[4; 32]), Duration::ZERO).secret(1));
    }

    #[test]
    fn each_relay_of_a_shard_has_its_own_key_and_they_rotate_in_step() {
        let secret = [7u8; 32];
        assert_eq!(RelayKey::derive_for(&secret, 0), RelayKey::derive(&secret), "relay 0 as before");
        let rot = Duration::from_secs(3600);
        let s: Vec<KeySchedule> = (0..3).map(|id| KeySchedule::for_relay(&secret, id, rot)).collect();
        assert_ne!(RelayKey::derive_for(&secret, 1), RelayKey::derive_for(&secret, 2));
        // A relay holding only its own key (`[relay] key`) verifies its tokens, across a
        // rotation, and refuses the others'.
        let relay1 = KeySchedule::new(RelayKey::derive_for(&secret, 1), rot).with_relay_id(1);
        let t0 = 2_000 * 3600 + 3599;
        for (id, sch) in s.iter().enumerate() {
            let (tok, key) = mint(&sch.minting_keys(t0), LinkId(1), Side::A, 0);
            let at_relay1 = verify_token(&relay1.relay_keys(t0 + 1), LinkId(1), Side::A, &tok);
            assert_eq!(at_relay1.is_ok(), id == 1, "relay {id}'s token at relay 1");
            assert_eq!(verify_token(&sch.relay_keys(t0 + 1), LinkId(1), Side::A, &tok), Ok(key));
            assert_eq!(sch.relay_keys(t0 + 1).current_id(), s[0].relay_keys(t0 + 1).current_id(), "in step");
        }
    }

    #[test]
    fn relay_key_is_not_the_secret_and_a_relay_holding_only_it_verifies_minted_tokens() {
        let secret = [3u8; 32];
        let key = RelayKey::derive(&secret);
        assert_eq!(key, RelayKey::derive(&secret));
        assert_ne!(key.0, secret);
        assert_ne!(key, RelayKey::derive(&[4; 32]));
        assert_eq!(key.to_hex().len(), 64);
        assert_eq!(format!("{key:?}"), "RelayKey(<redacted>)");
        // The Game server's minter derives from the secret; the relay gets only the key bytes.
        let minter = KeySchedule::new(RelayKey::derive(&secret), Duration::from_secs(3600));
        let bytes: [u8; 32] = (0..32)
            .map(|i| u8::from_str_radix(&key.to_hex()[2 * i..2 * i + 2], 16).unwrap())
            .collect::<Vec<_>>()
            .try_into()
            .unwrap();
        let relay = KeySchedule::new(RelayKey::from_bytes(bytes), Duration::from_secs(3600));
        let now = 5_000 * 3600;
        let (tok, key) = mint(&minter.minting_keys(now), LinkId(2), Side::B, 0);
        assert_eq!(verify_token(&relay.relay_keys(now), LinkId(2), Side::B, &tok), Ok(key));
    }
}
