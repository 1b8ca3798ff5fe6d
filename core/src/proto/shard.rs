//! Messages between a client and its shard, carried on renet channels (serde, encoded by
//! [`crate::codec`]: little-endian, variable-length integers). Every message is at most [`MAX_MESSAGE`] bytes **encoded**: [`encode`] refuses
//! a larger one and [`decode`] refuses larger input before parsing it; while parsing, what
//! the decoder allocates is bounded by [`MAX_DECODED`] (in-memory sizes exceed encoded ones,
//! e.g. a 7-byte candidate is 36 bytes in memory), so a hostile length prefix allocates
//! nothing big. [`decode`] returns `Result` for any input.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::codec::{self, CodecError};
use crate::proto::intro::{Candidate, LinkParams};
use crate::proto::peer::LinkId;

/// Largest encoded shard message, in bytes (client ↔ shard and role ↔ role alike).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most bytes the decoder allocates for one message (the limit counts in-memory sizes, at
/// most ~6× the encoded size for these types): every message of at most [`MAX_MESSAGE`]
/// bytes decodes, and nothing decodes into more than this.
pub const MAX_DECODED: usize = codec::MAX_DECODE_ALLOC;
const _: () = assert!(MAX_DECODED >= 16 * MAX_MESSAGE);

/// A player's id within a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PlayerId(pub u64);

/// Where a reliable message sent through the Game server also sits in the pair's link: the
/// link and the message's index among the reliable messages queued on it (from 0). The
/// receiver delivers each index once, in order, from the link or the server route — so a
/// message lost with a dying shard still arrives by the link, and none arrives twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LinkSeq {
    /// The pair's link.
    pub link: LinkId,
    /// Index in that link's reliable stream.
    pub seq: u32,
}

/// Our NAT, as the client's discovery classified it (reported to the shard for introductions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatSummary {
    /// Seed class name: `open`, `full-cone`, `restricted`, `port-restricted`, `symmetric`,
    /// `blocked` or `unknown`.
    pub class: String,
    /// Mapping is address(-and-port)-dependent.
    pub dependent_mapping: bool,
    /// Port step of a sequential allocator, if seen.
    pub port_delta: Option<i32>,
    /// Public address seen by the STUN server.
    pub public: Option<SocketAddr>,
}

/// The path a link uses, as a client reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PathState {
    /// Connecting: no path yet.
    Connecting,
    /// Through the relay.
    Relayed,
    /// Straight to the peer.
    Direct,
    /// The peer is silent (link timeout).
    Lost,
}

/// Client → shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// Enter the lobby under this name.
    Login {
        /// Display name.
        name: String,
    },
    /// Our mesh socket's candidates and NAT, for introductions.
    MeshInfo {
        /// Host and server-reflexive candidates.
        candidates: Vec<Candidate>,
        /// NAT classification.
        nat: NatSummary,
    },
    /// Join a zone (lobby → game).
    EnterZone {
        /// Zone number.
        zone: u32,
    },
    /// Our position at a client tick (the Game validates speed).
    Move {
        /// Client tick.
        tick: u32,
        /// World x.
        x: f32,
        /// World y.
        y: f32,
    },
    /// Path status of one of our links (session tracking).
    PathReport {
        /// The link.
        link: LinkId,
        /// Its path.
        path: PathState,
        /// Smoothed RTT in ms, if measured.
        rtt_ms: Option<f32>,
    },
    /// Join a party (empty name: leave it). Party members on the same Game server are meshed
    /// regardless of distance, so an existing party is joined only with a pending invitation
    /// from its owner ([`ClientMessage::InviteToParty`]); a name no party uses creates one,
    /// owned by the sender. Refused with [`ShardMessage::Refused`].
    JoinParty {
        /// Party name (at most 32 characters are kept).
        party: String,
    },
    /// An application message for a peer, carried by the Game server instead of the mesh
    /// (P2P off, or no path to that peer yet). Delivered only to a player the sender was
    /// introduced to.
    ToPeer {
        /// The receiving player.
        peer: PlayerId,
        /// Reliable-ordered (`true`) or unreliable.
        reliable: bool,
        /// A reliable message also queued on the pair's link: its index there, so the peer
        /// delivers it once and in order whichever route brings it first (see [`LinkSeq`]).
        seq: Option<LinkSeq>,
        /// Opaque application bytes (at most 1,200).
        data: Vec<u8>,
    },
    /// Invite a player (online, by id) into our party; only the party's owner may. The player
    /// gets [`ShardMessage::PartyInvite`] and can `JoinParty` within 60 s, once.
    InviteToParty {
        /// The invited player.
        player: PlayerId,
    },
    /// After a reconnect, instead of `Login`: come back to the session this ticket (the
    /// newest [`ShardMessage::Session`]) names — same player, zone and party; the links we
    /// still have are reported next with [`ClientMessage::KeepLinks`].
    Resume {
        /// The ticket, as received (at most 77 bytes; see `shard::resume`).
        ticket: Vec<u8>,
    },
    /// Right after every [`ShardMessage::EnteredZone`]: the links we still have (link id and
    /// peer). The Game server keeps every pair both sides report (answering
    /// [`ShardMessage::PeerKept`]) instead of introducing it again; at most 64 are read.
    KeepLinks {
        /// `(link, peer)` of each live link.
        links: Vec<(LinkId, PlayerId)>,
    },
    /// The last message of a session ended on purpose (the game disconnects): the shard
    /// drops our pairs at once. A connection lost without it is a player who is away: the
    /// Game server keeps its pairs for a grace period so it can resume.
    Leave,
    /// Our round-trip times to the shard's relays ([`ShardMessage::Relays`]), measured with
    /// STUN: `(relay index, ms)`, [`RTT_UNREACHABLE`] for a relay that did not answer. The
    /// Game server picks each pair's relay by the sum of both players' times; it reads at
    /// most [`MAX_RELAYS`] entries and ignores unknown indices.
    RelayRtts {
        /// `(relay index, round-trip ms)`.
        rtts: Vec<(u8, u16)>,
    },
    /// A message for the game's own logic on our Game server (the game's registered types,
    /// framed by the game API: `kind u8 | value`). The role only carries it; at most
    /// [`MAX_GAME_DATA`] bytes, larger ones are dropped and counted.
    ToGame {
        /// Sent on the reliable-ordered channel (`true`) or unreliable.
        reliable: bool,
        /// Opaque to the shard roles.
        data: Vec<u8>,
    },
}

/// Largest [`ClientMessage::ToGame`] payload a Game server accepts (bytes).
pub const MAX_GAME_DATA: usize = 1200;
/// Largest [`ShardMessage::FromGame`] payload a Game server sends (bytes): the server's own
/// messages (a scoreboard, an inventory) may be larger than a player's.
pub const MAX_GAME_DATA_TO_CLIENT: usize = 16 * 1024;

/// Most relays a shard lists ([`ShardMessage::Relays`]) and a client reports on.
pub const MAX_RELAYS: usize = 16;
/// The round-trip time a client reports for a relay that did not answer.
pub const RTT_UNREACHABLE: u16 = u16::MAX;

/// Shard → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShardMessage {
    /// Login accepted.
    Welcome {
        /// Our id.
        player: PlayerId,
        /// The STUN/relay server for NAT discovery.
        stun: SocketAddr,
    },
    /// Meet a peer: open a link with these parameters.
    PeerIntro {
        /// The peer's player id.
        peer: PlayerId,
        /// The peer's name.
        name: String,
        /// Everything our mesh needs for the link.
        params: LinkParams,
    },
    /// Close the link to a peer (moved apart, left).
    PeerOutro {
        /// The link to close.
        link: LinkId,
    },
    /// Authoritative position correction.
    Correction {
        /// World x.
        x: f32,
        /// World y.
        y: f32,
    },
    /// A request was refused.
    Refused {
        /// Why, for the user.
        reason: String,
    },
    /// We are in a zone, on a Game server, at this position: sent on entering a zone, after a
    /// resume, and again when the shard moved us to another Game server (the old one failed).
    /// The client answers [`ClientMessage::KeepLinks`]; links the new server keeps are
    /// confirmed with [`ShardMessage::PeerKept`], other pairs are introduced again.
    EnteredZone {
        /// Zone number.
        zone: u32,
        /// World x.
        x: f32,
        /// World y.
        y: f32,
    },
    /// Fresh relay token for a link, sent before the previous one expires (the relay stops
    /// forwarding on an expired token). Hand it to `Mesh::update_relay`.
    RelayRefresh {
        /// The link.
        link: LinkId,
        /// Relay address, token and bind key for our side.
        relay: crate::proto::intro::RelayParams,
    },
    /// An application message a peer sent through the Game server ([`ClientMessage::ToPeer`]).
    FromPeer {
        /// The sending player.
        peer: PlayerId,
        /// Sent reliable-ordered (`true`) or unreliable.
        reliable: bool,
        /// The sender's [`LinkSeq`], kept only when it names the pair's current link.
        seq: Option<LinkSeq>,
        /// Opaque application bytes.
        data: Vec<u8>,
    },
    /// A party's owner invites us: answer with `JoinParty { party }` within 60 s to join.
    PartyInvite {
        /// The party.
        party: String,
        /// The owner who invites.
        from: PlayerId,
        /// Its name.
        name: String,
    },
    /// Our resume ticket (after `Welcome`, on every zone or party change, and every few
    /// minutes): keep the newest and present it in [`ClientMessage::Resume`] after a
    /// reconnect.
    Session {
        /// Opaque to the client.
        ticket: Vec<u8>,
    },
    /// The Game server kept a link both of us reported in [`ClientMessage::KeepLinks`]: it
    /// is part of the mesh again, no new introduction follows.
    PeerKept {
        /// The peer.
        peer: PlayerId,
        /// The kept link.
        link: LinkId,
    },
    /// The shard's relays by index (sent with `EnteredZone` when it has more than one):
    /// measure the round-trip time to each (STUN) and report it with
    /// [`ClientMessage::RelayRtts`], now and then again.
    Relays {
        /// Each relay's address (STUN is answered there too).
        relays: Vec<SocketAddr>,
    },
    /// A second relay for a link: bind it too and keep it bound (a warm standby), and send
    /// through it when the link's relay stops answering. A `RelayRefresh` naming another
    /// relay than the link uses moves the link there once both sides are bound on it.
    RelayStandby {
        /// The link.
        link: LinkId,
        /// Relay address, token and bind key for our side.
        relay: crate::proto::intro::RelayParams,
    },
    /// A message from the game's own logic on our Game server (see
    /// [`ClientMessage::ToGame`]); at most [`MAX_GAME_DATA_TO_CLIENT`] bytes.
    FromGame {
        /// Sent on the reliable-ordered channel (`true`) or unreliable.
        reliable: bool,
        /// Opaque to the shard roles.
        data: Vec<u8>,
    },
}

/// Which shard role an internal message comes from (heartbeats, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// The DMZ gateway.
    Agent,
    /// The lobby.
    Lobby,
    /// A Game server, by its number within the shard.
    Game(u32),
}

/// Role ↔ role messages inside a shard (Agent ↔ Lobby ↔ Game). Same encoding as the client
/// messages ([`encode`] / [`decode`]). `client` is the Agent's netcode client id: internal
/// roles never learn a client's port, only its IP, to filter introductions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InternalMessage {
    /// Liveness: each role sends one every heartbeat interval to each role it talks to.
    Heartbeat {
        /// The sender.
        from: Role,
    },
    /// Agent → Lobby: an authenticated client connected under this (token-bound) name.
    ClientJoined {
        /// Netcode client id.
        client: u64,
        /// The name bound into its connect token.
        name: String,
        /// The IP its packets come from (only to judge which of its candidates a peer may
        /// get: private ones only to a peer behind the same public IP).
        ip: Option<IpAddr>,
    },
    /// Agent → Lobby / Game: the client is gone.
    ClientLeft {
        /// Netcode client id.
        client: u64,
    },
    /// Agent → Lobby / Game: a message from a client.
    FromClient {
        /// Netcode client id.
        client: u64,
        /// The message.
        msg: ClientMessage,
    },
    /// Lobby / Game → Agent: deliver to a client.
    ToClient {
        /// Netcode client id.
        client: u64,
        /// The message.
        msg: ShardMessage,
    },
    /// Lobby → Agent: route this client's game-phase messages to Game `game` (`None`: back to
    /// the lobby).
    Route {
        /// Netcode client id.
        client: u64,
        /// Game server number.
        game: Option<u32>,
    },
    /// Lobby → Game: admit a player at a position.
    Join {
        /// Netcode client id.
        client: u64,
        /// Player id.
        player: PlayerId,
        /// Display name.
        name: String,
        /// Zone number.
        zone: u32,
        /// World x.
        x: f32,
        /// World y.
        y: f32,
        /// Mesh candidates, if the client reported them.
        candidates: Vec<Candidate>,
        /// NAT summary, if reported.
        nat: Option<NatSummary>,
        /// The player's party, if any.
        party: Option<String>,
        /// The IP its packets come from, as the Agent sees it (see `ClientJoined`).
        ip: Option<IpAddr>,
    },
    /// Lobby → Game: the client joined (`Some`) or left (`None`) a party.
    SetParty {
        /// Netcode client id.
        client: u64,
        /// Party name.
        party: Option<String>,
    },
    /// Lobby → Game: you were declared dead and your players were moved; drop every player
    /// and pair and start empty.
    Reset,
    /// Game → Lobby: where players are now (persistence, failover) and the server's load.
    Positions {
        /// Game server number.
        game: u32,
        /// `(player, x, y)` of every player on it.
        players: Vec<(PlayerId, f32, f32)>,
    },
    /// Lobby → Game: a (restarted) Lobby asks which parties the Game's players are in.
    ReportParties,
    /// Game → Lobby: the party of each of its players that has one (answer to
    /// `ReportParties`, in chunks like `Positions`).
    Parties {
        /// Game server number.
        game: u32,
        /// `(player, party)`.
        members: Vec<(PlayerId, String)>,
    },
    /// Agent → Lobby / Game: the client's connection was lost without a
    /// [`ClientMessage::Leave`] (a timeout, a changed address): like `ClientLeft`, but its
    /// Game server keeps its pairs for [`crate::shard::game::AWAY_GRACE`] so a resume finds
    /// them.
    ClientAway {
        /// Netcode client id.
        client: u64,
    },
}

/// Why a shard message failed to encode or decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MessageError {
    /// Bytes were not a valid message.
    #[error("undecodable shard message: {0}")]
    Malformed(String),
    /// Bytes left over after the message.
    #[error("{0} trailing bytes after shard message")]
    Trailing(usize),
    /// Longer than [`MAX_MESSAGE`] encoded (the length is given).
    #[error("shard message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    /// The value cannot be represented in the encoding.
    #[error("unencodable shard message: {0}")]
    Unencodable(String),
}

impl From<CodecError> for MessageError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::TooLarge { len, .. } => MessageError::TooLarge(len),
            CodecError::Malformed(m) => MessageError::Malformed(m),
            CodecError::Trailing(n) => MessageError::Trailing(n),
            CodecError::Unencodable(m) => MessageError::Unencodable(m),
        }
    }
}

/// Encode a message for a renet channel; more than [`MAX_MESSAGE`] bytes is an error.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, MessageError> {
    Ok(codec::encode(msg, MAX_MESSAGE)?)
}

/// Decode a message; any input gives `Ok` or `Err`, never a panic. Input longer than
/// [`MAX_MESSAGE`] is refused unread.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, MessageError> {
    Ok(codec::decode(bytes, MAX_MESSAGE)?)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::proto::intro::{CandidateKind, LinkKey, NatHint};
    use crate::proto::peer::Side;

    #[test]
    fn roundtrip_and_garbage_never_panics() {
        let intro = ShardMessage::PeerIntro {
            peer: PlayerId(7),
            name: "ana".into(),
            params: LinkParams {
                link: LinkId(3),
                side: Side::B,
                key: LinkKey([1; 32]),
                remote: vec![Candidate::new(
                    CandidateKind::ServerReflexive,
                    "203.0.113.5:4000".parse().unwrap(),
                )],
                remote_nat: NatHint { dependent_mapping: true, port_delta: Some(1) },
                relay: None,
            },
        };
        let bytes = encode(&intro).unwrap();
        assert_eq!(decode::<ShardMessage>(&bytes).unwrap(), intro);
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(decode::<ShardMessage>(&extra), Err(MessageError::Trailing(1))));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for i in 0..20_000 {
            let mut b = bytes.clone();
            let n = rng.random_range(0..4);
            for _ in 0..=n {
                let at = rng.random_range(0..b.len());
                b[at] = rng.random();
            }
            b.truncate(rng.random_range(0..=b.len()));
            let _ = decode::<ShardMessage>(&b);
            let junk: Vec<u8> = (0..(i % 64)).map(|_| rng.random()).collect();
            let _ = decode::<ClientMessage>(&junk);
        }
        // a huge length prefix is refused, not allocated
        let mut huge = vec![4u8]; // Refused
        huge.extend_from_slice(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode::<ShardMessage>(&huge).is_err());
    }

    #[test]
    fn game_messages_are_laid_out_as_protocol_md_says() {
        let to = encode(&ClientMessage::ToGame { reliable: true, data: vec![2, 9, 9] }).unwrap();
        assert_eq!(to, [0x0C, 1, 3, 2, 9, 9]);
        let from = encode(&ShardMessage::FromGame { reliable: false, data: vec![0] }).unwrap();
        assert_eq!(from, [0x0D, 0, 1, 0]);
    }

    #[test]
    fn the_limit_is_max_message_encoded_bytes_whatever_the_content() {
        // ToPeer = variant, peer, bool, no seq, 3-byte length, data: 7 bytes + data.
        let to_peer = |n: usize| ClientMessage::ToPeer {
            peer: PlayerId(1),
            reliable: true,
            seq: None,
            data: vec![7; n],
        };
        let at = encode(&to_peer(MAX_MESSAGE - 7)).unwrap();
        assert_eq!(at.len(), MAX_MESSAGE);
        assert_eq!(decode::<ClientMessage>(&at).unwrap(), to_peer(MAX_MESSAGE - 7));
        assert!(
            matches!(encode(&to_peer(MAX_MESSAGE - 6)), Err(MessageError::TooLarge(n)) if n == MAX_MESSAGE + 1)
        );
        let over = crate::codec::encode(&to_peer(MAX_MESSAGE - 6), usize::MAX).unwrap();
        assert_eq!(over.len(), MAX_MESSAGE + 1);
        assert!(
            matches!(decode::<ClientMessage>(&over), Err(MessageError::TooLarge(n)) if n == MAX_MESSAGE + 1)
        );
        // A message of small items (each far larger in memory than on the wire) up to the
        // limit decodes too: the same limit holds for every kind of message.
        let nat =
            NatSummary { class: "open".into(), dependent_mapping: false, port_delta: None, public: None };
        let c = Candidate::new(CandidateKind::Host, "1.2.3.4:5".parse().unwrap());
        let mut n = 9000;
        let mesh = |n| ClientMessage::MeshInfo { candidates: vec![c; n], nat: nat.clone() };
        while encode(&mesh(n + 1)).is_ok() {
            n += 1;
        }
        let bytes = encode(&mesh(n)).unwrap();
        assert!(bytes.len() > MAX_MESSAGE - 8, "{}", bytes.len());
        assert_eq!(decode::<ClientMessage>(&bytes).unwrap(), mesh(n));
    }
}
