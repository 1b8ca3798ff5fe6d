//! Relay tokens: minted by the shard, verified statelessly by the relay.
//!
//! ```text
//! token.mac = HMAC-SHA256(secret[key_id], "p2pm-relay-token" || link u32 || side u8
//!                                         || key_id u8 || expiry u32 [|| relay_id u8])[..16]
//! bind_key  = HMAC-SHA256(secret[key_id], "p2pm-bind-key" || token (21 B) || link u32 || side u8)
//! ```
//! Both are keyed by the same secret with distinct labels (domain separation), so a token
//! mac can never be mistaken for a bind key or the other way round. A shard with several
//! relays gives each an id (0, 1, …): relay 0's tokens are exactly the single-relay ones,
//! any other relay's mac ends with its id (and its secrets come from its own relay key,
//! [`crate::relay::RelayKey::derive_for`]), so a token names its relay and another relay
//! refuses it (`BadMac`).
//!
//! Rotation: [`TokenKeys`] holds the current secret and the previous one, each under its own
//! key id. New tokens are minted with the current one; tokens minted with the previous one
//! keep working until they expire. Rotate again only after the longest token lifetime has
//! passed, or tokens under the secret that falls out are refused early (`UnknownKey`).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::proto::peer::{LinkId, Side};
use crate::proto::relay::{BIND_KEY_LABEL, BIND_KEY_LEN, BindKey, MAC_LEN, RelayToken, TOKEN_LABEL};

type HmacSha256 = Hmac<Sha256>;

/// Length of a token secret.
pub const SECRET_LEN: usize = 32;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TokenError {
    /// Its key id is neither the current nor the previous one.
    #[error("unknown token key id {0}")]
    UnknownKey(u8),
    /// Its mac does not verify for this link and side (forged, or another link's token).
    #[error("token mac does not verify")]
    BadMac,
    /// Its expiry has passed.
    #[error("token expired")]
    Expired,
    /// Its expiry is further in the future than the relay allows.
    #[error("token lifetime exceeds the relay's maximum")]
    TooLong,
    /// A rotation tried to reuse the current key id.
    #[error("key id {0} is already the current key")]
    DuplicateKeyId(u8),
}

/// One secret with its key id; the HMAC key schedule is computed once and cloned per use
/// (cloning copies a fixed-size state, no allocation).
#[derive(Clone)]
struct KeyEntry {
    id: u8,
    mac: HmacSha256,
}

impl KeyEntry {
    fn new(id: u8, secret: &[u8; SECRET_LEN]) -> KeyEntry {
        let mac = match HmacSha256::new_from_slice(secret) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        KeyEntry { id, mac }
    }
}

/// The shard's relay secrets by key id: the current one (mints) and the previous one (still
/// verifies). The shard and every relay of it hold the same set.
#[derive(Clone)]
pub struct TokenKeys {
    current: KeyEntry,
    previous: Option<KeyEntry>,
    relay_id: u8,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys")
            .field("current_id", &self.current.id)
            .field("previous_id", &self.previous.as_ref().map(|k| k.id))
            .field("relay_id", &self.relay_id)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// A key set with one secret.
    pub fn new(key_id: u8, secret: [u8; SECRET_LEN]) -> TokenKeys {
        TokenKeys { current: KeyEntry::new(key_id, &secret), previous: None, relay_id: 0 }
    }

    /// The same keys for the relay with this id (0: the shard's first relay, whose tokens
    /// do not name it, as before shards had several).
    pub fn for_relay(mut self, relay_id: u8) -> TokenKeys {
        self.relay_id = relay_id;
        self
    }

    /// The relay these keys mint and verify tokens for.
    pub fn relay_id(&self) -> u8 {
        self.relay_id
    }

    /// Make `secret` (under a new `key_id`) current; the current one becomes the previous
    /// one and the previous one is forgotten.
    pub fn rotate(&mut self, key_id: u8, secret: [u8; SECRET_LEN]) -> Result<(), TokenError> {
        if key_id == self.current.id {
            return Err(TokenError::DuplicateKeyId(key_id));
        }
        let old = std::mem::replace(&mut self.current, KeyEntry::new(key_id, &secret));
        // (the relay id stays: a rotation changes the secret, not the relay)
        self.previous = Some(old);
        Ok(())
    }

    /// Forget the previous secret (once every token it minted has expired).
    pub fn retire_previous(&mut self) {
        self.previous = None;
    }

    /// The key id new tokens are minted under.
    pub fn current_id(&self) -> u8 {
        self.current.id
    }

    /// The key id still accepted from before the last rotation, if any.
    pub fn previous_id(&self) -> Option<u8> {
        self.previous.as_ref().map(|k| k.id)
    }

    fn entry(&self, key_id: u8) -> Option<&KeyEntry> {
        if self.current.id == key_id {
            Some(&self.current)
        } else {
            self.previous.as_ref().filter(|k| k.id == key_id)
        }
    }
}

fn token_mac(entry: &KeyEntry, relay_id: u8, link: LinkId, side: Side, expiry: u32) -> HmacSha256 {
    let mut m = entry.mac.clone();
    m.update(TOKEN_LABEL);
    m.update(&link.0.to_be_bytes());
    m.update(&[side.to_byte(), entry.id]);
    m.update(&expiry.to_be_bytes());
    if relay_id != 0 {
        m.update(&[relay_id]);
    }
    m
}

fn bind_key(entry: &KeyEntry, token: &RelayToken, link: LinkId, side: Side) -> BindKey {
    let mut m = entry.mac.clone();
    m.update(BIND_KEY_LABEL);
    m.update(&token.to_bytes());
    m.update(&link.0.to_be_bytes());
    m.update(&[side.to_byte()]);
    let full = m.finalize().into_bytes();
    let mut k = [0u8; BIND_KEY_LEN];
    k.copy_from_slice(&full);
    BindKey(k)
}

/// Mint a token for `side` of `link`, valid until `expiry_unix_secs`, with the current
/// secret (shard side). Returns the token and the bind key; the client gets both.
pub fn mint(keys: &TokenKeys, link: LinkId, side: Side, expiry_unix_secs: u32) -> (RelayToken, BindKey) {
    let full = token_mac(&keys.current, keys.relay_id, link, side, expiry_unix_secs).finalize().into_bytes();
    let mut mac = [0u8; MAC_LEN];
    mac.copy_from_slice(&full[..MAC_LEN]);
    let token = RelayToken { key_id: keys.current.id, expiry_unix_secs, mac };
    let key = bind_key(&keys.current, &token, link, side);
    (token, key)
}

/// Check a token's key id and mac for (`link`, `side`) in constant time, and re-derive its
/// bind key (relay side). Expiry is checked by [`check_expiry`], which needs the time.
pub fn verify_token(
    keys: &TokenKeys,
    link: LinkId,
    side: Side,
    token: &RelayToken,
) -> Result<BindKey, TokenError> {
    let entry = keys.entry(token.key_id).ok_or(TokenError::UnknownKey(token.key_id))?;
    token_mac(entry, keys.relay_id, link, side, token.expiry_unix_secs)
        .verify_truncated_left(&token.mac)
        .map_err(|_| TokenError::BadMac)?;
    Ok(bind_key(entry, token, link, side))
}

/// Check a token's expiry against the unix time `now_unix_secs`: valid while
/// `now < expiry <= now + max_lifetime_secs`.
pub fn check_expiry(
    token: &RelayToken,
    now_unix_secs: u64,
    max_lifetime_secs: u64,
) -> Result<(), TokenError> {
    let expiry = u64::from(token.expiry_unix_secs);
    if expiry <= now_unix_secs {
        Err(TokenError::Expired)
    } else if expiry > now_unix_secs.saturating_add(max_lifetime_secs) {
        Err(TokenError::TooLong)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_token_mint_verify_and_rotation() {
        let mut keys = TokenKeys::new(1, [1; 32]);
        let (t1, k1) = mint(&keys, LinkId(5), Side::A, 1000);
        assert_eq!(t1.key_id, 1);
        assert_eq!(verify_token(&keys, LinkId(5), Side::A, &t1), Ok(k1.clone()));
        assert_eq!(verify_token(&keys, LinkId(5), Side::B, &t1), Err(TokenError::BadMac));
        assert_eq!(verify_token(&keys, LinkId(6), Side::A, &t1), Err(TokenError::BadMac));
        let mut longer = t1;
        longer.expiry_unix_secs += 1;
        assert_eq!(verify_token(&keys, LinkId(5), Side::A, &longer), Err(TokenError::BadMac));
        assert_eq!(keys.rotate(1, [2; 32]), Err(TokenError::DuplicateKeyId(1)));
        keys.rotate(2, [2; 32]).unwrap();
        assert_eq!((keys.current_id(), keys.previous_id()), (2, Some(1)));
        assert_eq!(verify_token(&keys, LinkId(5), Side::A, &t1), Ok(k1));
        let (t2, k2) = mint(&keys, LinkId(5), Side::A, 1000);
        assert_eq!(t2.key_id, 2);
        assert_ne!(t2.mac, t1.mac);
        assert_eq!(verify_token(&keys, LinkId(5), Side::A, &t2), Ok(k2));
        keys.rotate(3, [3; 32]).unwrap();
        assert_eq!(verify_token(&keys, LinkId(5), Side::A, &t1), Err(TokenError::UnknownKey(1)));
        keys.retire_previous();
        assert_eq!(verify_token(&keys, LinkId(5), Side::A, &t2), Err(TokenError::UnknownKey(2)));
        // The same key id with another secret is another key: its tokens do not verify.
        let other = TokenKeys::new(3, [9; 32]);
        let (t3, _) = mint(&other, LinkId(5), Side::A, 1000);
        assert_eq!(verify_token(&keys, LinkId(5), Side::A, &t3), Err(TokenError::BadMac));
        assert!(!format!("{keys:?}").contains("[3"));
    }

    #[test]
    fn a_token_names_its_relay_and_another_relay_refuses_it() {
        // Even with the same secret (a misconfigured relay holding another's key), the id in
        // the mac keeps the relays apart; relay 0's tokens are the single-relay ones.
        let zero = TokenKeys::new(1, [1; 32]);
        let one = TokenKeys::new(1, [1; 32]).for_relay(1);
        let two = TokenKeys::new(1, [1; 32]).for_relay(2);
        let (t1, k1) = mint(&one, LinkId(5), Side::A, 1000);
        assert_eq!(verify_token(&one, LinkId(5), Side::A, &t1), Ok(k1));
        assert_eq!(verify_token(&two, LinkId(5), Side::A, &t1), Err(TokenError::BadMac));
        assert_eq!(verify_token(&zero, LinkId(5), Side::A, &t1), Err(TokenError::BadMac));
        let (t0, _) = mint(&zero, LinkId(5), Side::A, 1000);
        assert_eq!(verify_token(&one, LinkId(5), Side::A, &t0), Err(TokenError::BadMac));
        let mut rotated = one.clone();
        rotated.rotate(2, [2; 32]).unwrap();
        assert_eq!(rotated.relay_id(), 1);
        assert!(verify_token(&rotated, LinkId(5), Side::A, &t1).is_ok(), "the previous key still verifies");
    }

    #[test]
    fn relay_token_expiry_window() {
        let keys = TokenKeys::new(1, [1; 32]);
        let (t, _) = mint(&keys, LinkId(1), Side::A, 1000);
        assert_eq!(check_expiry(&t, 999, 3600), Ok(()));
        assert_eq!(check_expiry(&t, 1000, 3600), Err(TokenError::Expired));
        assert_eq!(check_expiry(&t, 10, 100), Err(TokenError::TooLong));
        assert_eq!(check_expiry(&t, 900, 100), Ok(()));
    }
}
