//! Relay token keys derived from the shard secret by time epoch, so the shard's minter and
//! every relay rotate in step without talking to each other.
//!
//! ```text
//! epoch      = floor(unix_secs / rotation)          (0 forever when rotation = 0)
//! key_id     = epoch mod 256
//! secret[e]  = HMAC-SHA256(shard_secret, "p2pm-relay-token-key" || e u64)
//! ```
//! The relay holds the keys of the current and the previous epoch; the minter signs with
//! the key of `epoch(now − MINT_LAG)`, so a minter whose clock is up to `MINT_LAG` ahead of
//! a relay never uses a key the relay does not hold yet.

use std::time::Duration;

use bevy_p2pmodel::relay::TokenKeys;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::SHARD_SECRET_LEN;

const LABEL: &[u8] = b"p2pm-relay-token-key";

/// How far behind the current epoch the minter signs (clock skew allowance).
pub const MINT_LAG: Duration = Duration::from_secs(60);

/// The shard's token key schedule.
#[derive(Clone)]
pub struct KeySchedule {
    secret: [u8; SHARD_SECRET_LEN],
    rotation_secs: u64,
}

impl std::fmt::Debug for KeySchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySchedule").field("rotation_secs", &self.rotation_secs).finish_non_exhaustive()
    }
}

impl KeySchedule {
    /// A schedule from the shard secret and the epoch length (`Duration::ZERO`: one key
    /// forever).
    pub fn new(secret: [u8; SHARD_SECRET_LEN], rotation: Duration) -> KeySchedule {
        KeySchedule { secret, rotation_secs: rotation.as_secs() }
    }

    /// The epoch at `unix_secs`.
    pub fn epoch(&self, unix_secs: u64) -> u64 {
        unix_secs.checked_div(self.rotation_secs).unwrap_or(0)
    }

    /// The token secret of `epoch`.
    pub fn secret(&self, epoch: u64) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).expect("any key length");
        m.update(LABEL);
        m.update(&epoch.to_be_bytes());
        m.finalize().into_bytes().into()
    }

    /// What a relay accepts at `unix_secs`: the current epoch's key and the previous one.
    pub fn relay_keys(&self, unix_secs: u64) -> TokenKeys {
        let e = self.epoch(unix_secs);
        if e == 0 {
            return TokenKeys::new(0, self.secret(0));
        }
        let mut k = TokenKeys::new(((e - 1) % 256) as u8, self.secret(e - 1));
        k.rotate((e % 256) as u8, self.secret(e)).expect("consecutive epochs have distinct ids");
        k
    }

    /// What a minter signs with at `unix_secs` (the key of `epoch(now − MINT_LAG)`).
    pub fn minting_keys(&self, unix_secs: u64) -> TokenKeys {
        let e = self.epoch(unix_secs.saturating_sub(MINT_LAG.as_secs()));
        TokenKeys::new((e % 256) as u8, self.secret(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bevy_p2pmodel::proto::peer::{LinkId, Side};
    use bevy_p2pmodel::relay::{mint, verify_token};

    #[test]
    fn keys_minted_tokens_verify_across_a_rotation() {
        let s = KeySchedule::new([3; 32], Duration::from_secs(3600));
        let t0 = 1_000 * 3600 + 3599; // the last second of an epoch
        let (tok, key) = mint(&s.minting_keys(t0), LinkId(1), Side::A, 0);
        for now in [t0, t0 + 1, t0 + 3600] {
            assert_eq!(verify_token(&s.relay_keys(now), LinkId(1), Side::A, &tok), Ok(key.clone()), "{now}");
        }
        assert!(verify_token(&s.relay_keys(t0 + 7200), LinkId(1), Side::A, &tok).is_err());
        // A minter a few seconds ahead at the boundary still signs with a key relays hold.
        let (tok, _) = mint(&s.minting_keys(t0 + 30), LinkId(1), Side::A, 0);
        assert!(verify_token(&s.relay_keys(t0 - 1), LinkId(1), Side::A, &tok).is_ok());
        let never = KeySchedule::new([3; 32], Duration::ZERO);
        assert_eq!(never.relay_keys(5).current_id(), never.relay_keys(u32::MAX as u64).current_id());
        assert_ne!(s.secret(1), KeySchedule::new([4; 32], Duration::ZERO).secret(1));
    }
}
