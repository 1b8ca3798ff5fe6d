//! Sending typed application messages to peers: [`P2pSender`] (encoding in
//! [`message`](super::message)).

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use bytes::Bytes;
use serde::Serialize;

use super::client::P2pClient;
use super::message::{SendError, encode_message};
use crate::client::Channel;
use crate::proto::shard::PlayerId;

/// Send application messages to peers: over the mesh when the peer has a path (relayed or
/// direct), through the Game server otherwise, so nothing is lost while a link connects.
#[derive(SystemParam)]
pub struct P2pSender<'w> {
    client: Res<'w, P2pClient>,
}

impl P2pSender<'_> {
    /// Send a typed message to one peer. `Ok(true)`: it went over the mesh.
    pub fn send<T: Serialize>(
        &mut self,
        player: PlayerId,
        channel: Channel,
        value: &T,
    ) -> Result<bool, SendError> {
        let data = encode_message(value)?;
        self.send_bytes(player, channel, data)
    }

    /// Send a typed message to every introduced peer. Returns how many went over the mesh.
    pub fn broadcast<T: Serialize>(&mut self, channel: Channel, value: &T) -> Result<usize, SendError> {
        let data = encode_message(value)?;
        Ok(self.client.broadcast(channel, data)?)
    }

    /// Send raw bytes to one peer. `Ok(true)`: it went over the mesh.
    pub fn send_bytes(&mut self, player: PlayerId, channel: Channel, data: Bytes) -> Result<bool, SendError> {
        Ok(self.client.send(player, channel, data)?)
    }
}
