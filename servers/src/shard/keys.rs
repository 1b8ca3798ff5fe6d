//! Keys derived from the shard secret, and connect-token minting (`p2pmodel token`).
//!
//! ```text
//! netcode private key = HMAC-SHA256(shard_secret, "p2pm-netcode-key")
//! client id of a name = first 8 bytes of HMAC-SHA256(shard_secret, "p2pm-client-id" || name)
//! ```
//! The Agent and whoever mints tokens (the login service, or a game backend running
//! `p2pmodel token`) derive the same key from the same secret; nothing else is shared.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use renet_netcode::{ConnectToken, NETCODE_KEY_BYTES, NETCODE_USER_DATA_BYTES, TokenGenerationError};
use sha2::Sha256;

use crate::config::SHARD_SECRET_LEN;

fn hmac(secret: &[u8; SHARD_SECRET_LEN], label: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
    m.update(label);
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The netcode private key of the shard's Agent.
pub fn netcode_key(secret: &[u8; SHARD_SECRET_LEN]) -> [u8; NETCODE_KEY_BYTES] {
    hmac(secret, b"p2pm-netcode-key", &[])
}

/// The key the Lobby seals resume tickets with (`p2pmodel_core::shard::resume`): every
/// Lobby of the shard, restarted or not, opens the tickets of the others.
pub fn resume_key(secret: &[u8; SHARD_SECRET_LEN]) -> p2pmodel_core::shard::resume::ResumeKey {
    p2pmodel_core::shard::resume::ResumeKey(hmac(secret, b"p2pm-resume-key", &[]))
}

/// The stable client id of a player name (netcode refuses a second connection with the same
/// id, so one name is online at most once).
pub fn client_id_for(secret: &[u8; SHARD_SECRET_LEN], name: &str) -> u64 {
    let h = hmac(secret, b"p2pm-client-id", name.as_bytes());
    u64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
}

/// Longest player name, in bytes (it travels in the token's 256-byte user data).
pub const MAX_NAME: usize = 32;

/// Put a name into netcode user data: length byte, then UTF-8.
pub fn name_to_user_data(name: &str) -> [u8; NETCODE_USER_DATA_BYTES] {
    let mut d = [0u8; NETCODE_USER_DATA_BYTES];
    let b = &name.as_bytes()[..name.len().min(MAX_NAME)];
    d[0] = b.len() as u8;
    d[1..1 + b.len()].copy_from_slice(b);
    d
}

/// Read a name back from netcode user data (`None` if malformed).
pub fn name_from_user_data(d: &[u8; NETCODE_USER_DATA_BYTES]) -> Option<String> {
    let n = d[0] as usize;
    if n == 0 || n > MAX_NAME {
        return None;
    }
    String::from_utf8(d[1..1 + n].to_vec()).ok()
}

/// Is `name` acceptable as a player name (1–32 bytes, letters, digits, `-`, `_`)?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '_')
}

/// What minting a connect token needs.
#[derive(Clone)]
pub struct TokenMinter {
    key: [u8; NETCODE_KEY_BYTES],
    /// Netcode protocol id.
    pub protocol_id: u64,
    /// The Agent's public address(es), written into the token.
    pub agent_addrs: Vec<SocketAddr>,
    /// How long the token can be used to connect.
    pub expire: Duration,
    /// Client silence timeout written into the token.
    pub timeout_secs: i32,
    /// The Agent's socket load: when set, tokens list its addresses least-loaded first
    /// (instead of `agent_addrs`).
    pub balance: Option<super::load::AgentLoad>,
}

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMinter").field("agent_addrs", &self.agent_addrs).finish_non_exhaustive()
    }
}

impl TokenMinter {
    /// A minter for the shard with this secret.
    pub fn new(
        secret: &[u8; SHARD_SECRET_LEN],
        protocol_id: u64,
        agent_addrs: Vec<SocketAddr>,
        expire: Duration,
        timeout_secs: i32,
    ) -> TokenMinter {
        TokenMinter {
            key: netcode_key(secret),
            protocol_id,
            agent_addrs,
            expire,
            timeout_secs,
            balance: None,
        }
    }

    /// Tokens list the Agent's sockets least-loaded first (see [`super::load::AgentLoad`]).
    pub fn balanced(mut self, load: super::load::AgentLoad) -> TokenMinter {
        self.agent_addrs = load.addrs().to_vec();
        self.balance = Some(load);
        self
    }

    /// Mint a connect token for `client_id`, binding `name` into its user data.
    pub fn mint(&self, client_id: u64, name: &str) -> Result<ConnectToken, TokenGenerationError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        ConnectToken::generate(
            now,
            self.protocol_id,
            self.expire.as_secs(),
            client_id,
            self.timeout_secs,
            self.balance.as_ref().map_or_else(|| self.agent_addrs.clone(), |b| b.addrs_for_token()),
            Some(&name_to_user_data(name)),
            &self.key,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_and_ids_depend_on_the_secret() {
        let d = name_to_user_data("ana");
        assert_eq!(name_from_user_data(&d).as_deref(), Some("ana"));
        assert_eq!(name_from_user_data(&[0; NETCODE_USER_DATA_BYTES]), None);
        assert_ne!(client_id_for(&[1; 32], "ana"), client_id_for(&[2; 32], "ana"));
        assert_ne!(client_id_for(&[1; 32], "ana"), client_id_for(&[1; 32], "bob"));
        assert!(valid_name("Ana_1") && !valid_name("") && !valid_name("a b") && !valid_name(&"x".repeat(33)));
        let m = TokenMinter::new(
            &[1; 32],
            7,
            vec!["127.0.0.1:7000".parse().unwrap()],
            Duration::from_secs(60),
            5,
        );
        let mut bytes = Vec::new();
        m.mint(9, "ana").unwrap().write(&mut bytes).unwrap();
        assert!(bytes.len() > 1000);
    }
}
