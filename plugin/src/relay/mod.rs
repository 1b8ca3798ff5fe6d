//! TEMPORARY stub so the link compiles while the relay module is written on its branch.
#![allow(missing_docs)]
use crate::proto::peer::{LinkId, Side};
use std::net::SocketAddr;
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayToken(pub [u8; 21]);
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindKey(pub [u8; 32]);
impl std::fmt::Debug for BindKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BindKey(..)")
    }
}
pub struct BindRequest;
impl BindRequest {
    pub fn encode(
        _l: LinkId,
        _s: Side,
        _t: &RelayToken,
        _k: &BindKey,
        _c: u64,
        _cookie: [u8; 8],
    ) -> Vec<u8> {
        vec![0x30]
    }
}
pub struct BindAck {
    pub counter: u64,
    pub peer_bound: bool,
    pub cookie: [u8; 8],
    pub observed: SocketAddr,
    pub link: LinkId,
}
impl BindAck {
    pub fn decode_verified(_b: &[u8], _k: &BindKey) -> Result<BindAck, crate::proto::DecodeError> {
        Err(crate::proto::DecodeError::Truncated)
    }
}
