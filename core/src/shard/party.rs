//! Parties by consent. Members of a party on the same Game server are introduced to each
//! other whatever the distance (so they learn each other's addresses): nobody gets into a
//! party without its owner's invitation.
//!
//! - `JoinParty` with a name no party uses creates it; the creator owns it.
//! - Only the owner invites (`InviteToParty { player }`): the members trusted the owner when
//!   they accepted, not each other. An invitation is for one player, expires after
//!   [`INVITE_TTL`] and is used up by the join; a party holds at most [`MAX_INVITES`] pending.
//! - `JoinParty` with the name of an existing party succeeds only with a pending invitation;
//!   otherwise the client is answered `Refused`.
//! - When the owner leaves, the member with the lowest player id owns the party; the last
//!   member leaving ends it (and its invitations).
//!
//! - A party holds at most [`PartyRules::max_members`]; with [`PartyRules::open`] (rooms of a
//!   match-based game) anyone may join an existing party without an invitation while it has
//!   room.
//!
//! Sans-IO: every call takes the time, so tests drive expiry with virtual time.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::proto::shard::PlayerId;

/// How long an invitation can be accepted.
pub const INVITE_TTL: Duration = Duration::from_secs(60);
/// Pending invitations per party at most (older ones must expire or be used first).
pub const MAX_INVITES: usize = 16;
/// Longest party name kept, in characters (longer names are cut).
pub const MAX_PARTY_NAME: usize = 32;

/// Why a party request was refused (the text goes to the client in `Refused`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartyError {
    /// The party exists and the player holds no valid invitation to it.
    #[error("party {0:?} exists: joining it needs an invitation from its owner")]
    NotInvited(String),
    /// Invitations come from a party's owner.
    #[error("only the owner of a party invites")]
    NotOwner,
    /// The inviter is in no party.
    #[error("create a party (join a new name) before inviting")]
    NoParty,
    /// The invited player is already a member.
    #[error("already a member of the party")]
    AlreadyMember,
    /// [`MAX_INVITES`] invitations are pending.
    #[error("too many pending invitations (at most {MAX_INVITES})")]
    TooManyInvites,
    /// The party has [`PartyRules::max_members`] members.
    #[error("party {0:?} is full")]
    Full(String),
}

/// How parties (or rooms) work on a shard (`[lobby]` `open_parties`, `max_party_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartyRules {
    /// Anyone may join an existing party while it has room (rooms of a match-based game);
    /// `false`: only with the owner's invitation.
    pub open: bool,
    /// Members at most.
    pub max_members: usize,
}

impl Default for PartyRules {
    /// By invitation, at most 32 members.
    fn default() -> Self {
        PartyRules { open: false, max_members: 32 }
    }
}

#[derive(Debug, Clone)]
struct Party {
    owner: PlayerId,
    members: BTreeSet<PlayerId>,
    invites: HashMap<PlayerId, Instant>,
}

/// Every party of the Lobby.
#[derive(Debug, Default)]
pub struct Parties {
    parties: HashMap<String, Party>,
    member_of: HashMap<PlayerId, String>,
    rules: PartyRules,
}

impl Parties {
    /// No party yet, under these rules.
    pub fn new(rules: PartyRules) -> Parties {
        Parties { rules, ..Parties::default() }
    }

    /// Members of `party` (empty if it does not exist).
    pub fn members(&self, party: &str) -> usize {
        self.parties.get(party).map_or(0, |p| p.members.len())
    }

    /// The party `player` is in.
    pub fn party_of(&self, player: PlayerId) -> Option<&str> {
        self.member_of.get(&player).map(String::as_str)
    }

    /// The owner of `party`, if it exists.
    pub fn owner(&self, party: &str) -> Option<PlayerId> {
        self.parties.get(party).map(|p| p.owner)
    }

    /// Number of parties.
    pub fn len(&self) -> usize {
        self.parties.len()
    }

    /// No party at all.
    pub fn is_empty(&self) -> bool {
        self.parties.is_empty()
    }

    /// `player` asks to join `name` (cut to [`MAX_PARTY_NAME`] characters; empty: leave its
    /// party). A new name creates a party owned by `player`; an existing one needs a pending,
    /// unexpired invitation, used up here. On success `player` left its previous party and
    /// the party it is in now is returned.
    pub fn join(&mut self, player: PlayerId, name: &str, now: Instant) -> Result<Option<String>, PartyError> {
        let name: String = name.chars().take(MAX_PARTY_NAME).collect();
        if name.is_empty() {
            self.leave(player);
            return Ok(None);
        }
        if self.party_of(player) == Some(name.as_str()) {
            return Ok(Some(name));
        }
        match self.parties.get_mut(&name) {
            Some(p) => {
                if p.members.len() >= self.rules.max_members {
                    return Err(PartyError::Full(name));
                }
                let valid = p.invites.remove(&player).is_some_and(|until| now < until);
                if !valid && !self.rules.open {
                    return Err(PartyError::NotInvited(name));
                }
                self.leave(player);
                if let Some(p) = self.parties.get_mut(&name) {
                    p.members.insert(player);
                }
            }
            None => {
                self.leave(player);
                let members = BTreeSet::from([player]);
                self.parties.insert(name.clone(), Party { owner: player, members, invites: HashMap::new() });
            }
        }
        self.member_of.insert(player, name.clone());
        Ok(Some(name))
    }

    /// `player` comes back to `name` with a resume ticket the shard sealed while it was a
    /// member: it joins without an invitation; a party that ended meanwhile is created again,
    /// owned by `player`.
    pub fn restore(&mut self, player: PlayerId, name: &str) -> Option<String> {
        let name: String = name.chars().take(MAX_PARTY_NAME).collect();
        if name.is_empty() {
            return None;
        }
        if self.member_of.get(&player) == Some(&name) {
            // Still a member (it was away and came back): nothing changes, ownership stays.
            return Some(name);
        }
        self.leave(player);
        self.parties
            .entry(name.clone())
            .or_insert_with(|| Party { owner: player, members: BTreeSet::new(), invites: HashMap::new() })
            .members
            .insert(player);
        self.member_of.insert(player, name.clone());
        Some(name)
    }

    /// `from` invites `to` into its party, until `now + INVITE_TTL`. Returns the party name.
    pub fn invite(&mut self, from: PlayerId, to: PlayerId, now: Instant) -> Result<String, PartyError> {
        let name = self.member_of.get(&from).ok_or(PartyError::NoParty)?;
        let p = self.parties.get_mut(name).ok_or(PartyError::NoParty)?;
        if p.owner != from {
            return Err(PartyError::NotOwner);
        }
        if p.members.contains(&to) {
            return Err(PartyError::AlreadyMember);
        }
        p.invites.retain(|_, until| now < *until);
        if p.invites.len() >= MAX_INVITES && !p.invites.contains_key(&to) {
            return Err(PartyError::TooManyInvites);
        }
        p.invites.insert(to, now + INVITE_TTL);
        Ok(name.clone())
    }

    /// `player` leaves its party (also when it goes offline): ownership passes to the member
    /// with the lowest id; an empty party ends.
    pub fn leave(&mut self, player: PlayerId) {
        let Some(name) = self.member_of.remove(&player) else { return };
        let Some(p) = self.parties.get_mut(&name) else { return };
        p.members.remove(&player);
        match p.members.first() {
            None => {
                self.parties.remove(&name);
            }
            Some(next) if p.owner == player => p.owner = *next,
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parties_need_the_owners_invitation_which_expires_and_is_used_once() {
        let t0 = Instant::now();
        let (ana, bob, cid, eve) = (PlayerId(1), PlayerId(2), PlayerId(3), PlayerId(4));
        let mut ps = Parties::default();
        assert_eq!(ps.join(ana, "p", t0), Ok(Some("p".into())), "a new name: created");
        assert_eq!(ps.owner("p"), Some(ana));
        // Without an invitation nobody gets in.
        assert_eq!(ps.join(eve, "p", t0), Err(PartyError::NotInvited("p".into())));
        assert_eq!(ps.party_of(eve), None);
        // Only the owner invites; a member cannot bring someone in.
        assert_eq!(ps.invite(ana, bob, t0), Ok("p".into()));
        assert_eq!(ps.join(bob, "p", t0 + Duration::from_secs(59)), Ok(Some("p".into())));
        assert_eq!(ps.invite(bob, eve, t0), Err(PartyError::NotOwner));
        assert_eq!(ps.invite(eve, cid, t0), Err(PartyError::NoParty));
        assert_eq!(ps.invite(ana, bob, t0), Err(PartyError::AlreadyMember));
        // An invitation expires after INVITE_TTL...
        ps.invite(ana, cid, t0).unwrap();
        assert_eq!(ps.join(cid, "p", t0 + INVITE_TTL), Err(PartyError::NotInvited("p".into())));
        // ... and is used up by a join: leaving and coming back needs a new one.
        ps.invite(ana, cid, t0).unwrap();
        assert!(ps.join(cid, "p", t0).is_ok());
        assert_eq!(ps.join(cid, "", t0), Ok(None));
        assert!(ps.join(cid, "p", t0).is_err());
        // An invitation is for one player: eve cannot use cid's.
        ps.invite(ana, cid, t0).unwrap();
        assert!(ps.join(eve, "p", t0).is_err());
        // Pending invitations are bounded.
        for i in 100..100 + MAX_INVITES as u64 - 1 {
            ps.invite(ana, PlayerId(i), t0).unwrap();
        }
        assert_eq!(ps.invite(ana, PlayerId(999), t0), Err(PartyError::TooManyInvites));
        assert!(ps.invite(ana, PlayerId(999), t0 + INVITE_TTL).is_ok(), "expired ones make room");
        // The owner leaving hands the party to the lowest member; the last one ends it.
        ps.leave(ana);
        assert_eq!(ps.owner("p"), Some(bob));
        assert_eq!(ps.invite(bob, eve, t0), Ok("p".into()));
        ps.leave(bob);
        assert!(ps.is_empty(), "last member gone: party and invitations gone");
        assert_eq!(ps.join(eve, "p", t0), Ok(Some("p".into())), "the name is free again");
        assert_eq!(ps.owner("p"), Some(eve));
        // Names are cut to 32 characters; joining another party leaves the first.
        let long = "x".repeat(100);
        assert_eq!(ps.join(eve, &long, t0), Ok(Some("x".repeat(32))));
        assert_eq!(ps.len(), 1);
    }
}

#[cfg(test)]
mod room_tests {
    use super::*;

    #[test]
    fn open_parties_are_rooms_anyone_joins_until_full_and_closed_ones_still_need_an_invitation() {
        let t0 = Instant::now();
        let mut rooms = Parties::new(PartyRules { open: true, max_members: 3 });
        for p in 1..=3 {
            assert_eq!(rooms.join(PlayerId(p), "arena-1", t0), Ok(Some("arena-1".into())));
        }
        assert_eq!(rooms.join(PlayerId(4), "arena-1", t0), Err(PartyError::Full("arena-1".into())));
        assert_eq!(rooms.members("arena-1"), 3);
        rooms.leave(PlayerId(2));
        assert_eq!(rooms.join(PlayerId(4), "arena-1", t0), Ok(Some("arena-1".into())), "room again");
        let mut closed = Parties::new(PartyRules { open: false, max_members: 2 });
        closed.join(PlayerId(1), "wolves", t0).unwrap();
        assert_eq!(closed.join(PlayerId(2), "wolves", t0), Err(PartyError::NotInvited("wolves".into())));
        closed.invite(PlayerId(1), PlayerId(2), t0).unwrap();
        closed.join(PlayerId(2), "wolves", t0).unwrap();
        closed.invite(PlayerId(1), PlayerId(3), t0).unwrap();
        assert_eq!(closed.join(PlayerId(3), "wolves", t0), Err(PartyError::Full("wolves".into())));
    }
}
