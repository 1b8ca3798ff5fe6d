//! The Lobby's embedded character store: a name → character map, optionally backed by a JSON
//! file (written atomically: temp file, then rename). With a time-to-live ([`Store::with_ttl`],
//! `lobby.guest_ttl_secs` in open/guest mode) characters not seen for that long are forgotten,
//! so guest names do not pile up forever.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A persisted character.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Character {
    /// Player id.
    pub player: u64,
    /// Last zone.
    pub zone: u32,
    /// Last position x.
    pub x: f32,
    /// Last position y.
    pub y: f32,
    /// When the player last logged in or moved (unix seconds; 0 in files from before).
    #[serde(default)]
    pub last_seen: u64,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Characters by name.
#[derive(Debug, Default)]
pub struct Store {
    path: Option<PathBuf>,
    chars: BTreeMap<String, Character>,
    next: u64,
    dirty: bool,
    ttl: Option<Duration>,
    last_sweep: u64,
}

impl Store {
    /// Open (or create) the store at `path`; `None`: in memory. A corrupt file is an error.
    pub fn open(path: Option<PathBuf>) -> std::io::Result<Store> {
        let chars: BTreeMap<String, Character> = match &path {
            Some(p) if p.exists() => serde_json::from_slice(&std::fs::read(p)?)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            _ => BTreeMap::new(),
        };
        let next = chars.values().map(|c| c.player).max().unwrap_or(0) + 1;
        Ok(Store { path, chars, next, dirty: false, ttl: None, last_sweep: 0 })
    }

    /// Forget characters not seen for `ttl` (`None`: keep them forever). Records from files
    /// without a `last_seen` count as seen now.
    pub fn with_ttl(mut self, ttl: Option<Duration>) -> Store {
        self.ttl = ttl;
        let now = unix_now();
        for c in self.chars.values_mut().filter(|c| c.last_seen == 0) {
            c.last_seen = now;
        }
        self.expire(now);
        self
    }

    /// Drop characters last seen more than the TTL before `now` (unix seconds); returns how
    /// many were dropped.
    pub fn expire(&mut self, now: u64) -> usize {
        let Some(ttl) = self.ttl else { return 0 };
        let before = self.chars.len();
        self.chars.retain(|_, c| c.last_seen.saturating_add(ttl.as_secs()) >= now);
        self.last_sweep = now;
        let dropped = before - self.chars.len();
        self.dirty |= dropped > 0;
        dropped
    }

    /// Characters stored.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// No characters stored?
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The character of `name`, created at the origin of zone 0 if new.
    pub fn load_or_create(&mut self, name: &str) -> Character {
        let now = unix_now();
        if let Some(c) = self.chars.get_mut(name) {
            if now > c.last_seen + 60 {
                c.last_seen = now;
                self.dirty = true;
            }
            return c.clone();
        }
        let c = Character { player: self.next, zone: 0, x: 0.0, y: 0.0, last_seen: now };
        self.next += 1;
        self.chars.insert(name.to_string(), c.clone());
        self.dirty = true;
        c
    }

    /// Update a character's zone and position.
    pub fn update(&mut self, name: &str, zone: u32, x: f32, y: f32) {
        if let Some(c) = self.chars.get_mut(name)
            && (c.zone, c.x, c.y) != (zone, x, y)
        {
            (c.zone, c.x, c.y) = (zone, x, y);
            c.last_seen = unix_now();
            self.dirty = true;
        }
    }

    /// Write the file if anything changed.
    pub fn flush(&mut self) -> std::io::Result<()> {
        let now = unix_now();
        if self.ttl.is_some() && now >= self.last_sweep + 3600 {
            self.expire(now);
        }
        let Some(p) = &self.path else { return Ok(()) };
        if !self.dirty {
            return Ok(());
        }
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.chars).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, p)?;
        self.dirty = false;
        Ok(())
    }
}

/// The Lobby reads and writes characters through the core's store interface.
impl p2pmodel_core::shard::CharacterStore for Store {
    fn load_or_create(&mut self, name: &str) -> p2pmodel_core::shard::StoredCharacter {
        let c = Store::load_or_create(self, name);
        p2pmodel_core::shard::StoredCharacter { player: c.player, zone: c.zone, x: c.x, y: c.y }
    }
    fn update(&mut self, name: &str, zone: u32, x: f32, y: f32) {
        Store::update(self, name, zone, x, y)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Store::flush(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_positions_survive_a_reopen() {
        let p = std::env::temp_dir().join(format!("p2pm-store-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let mut s = Store::open(Some(p.clone())).unwrap();
        let a = s.load_or_create("ana");
        s.update("ana", 1, 5.0, 6.0);
        s.flush().unwrap();
        let mut s = Store::open(Some(p.clone())).unwrap();
        let back = s.load_or_create("ana");
        assert_eq!((back.player, back.zone, back.x, back.y), (a.player, 1, 5.0, 6.0));
        assert_ne!(s.load_or_create("bob").player, a.player);
        std::fs::write(&p, "not json").unwrap();
        assert!(Store::open(Some(p.clone())).is_err());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn guest_characters_expire_after_the_ttl() {
        let mut s = Store::open(None).unwrap().with_ttl(Some(Duration::from_secs(100)));
        let a = s.load_or_create("ana");
        s.load_or_create("bob");
        let now = a.last_seen;
        assert_eq!(s.expire(now + 100), 0);
        s.chars.get_mut("bob").unwrap().last_seen = now + 50;
        assert_eq!(s.expire(now + 101), 1, "ana unseen for 101 s");
        assert_eq!(s.len(), 1);
        assert_ne!(s.load_or_create("ana").player, a.player, "a new character");
        let mut forever = Store::open(None).unwrap();
        forever.load_or_create("cid");
        assert_eq!(forever.expire(u64::MAX), 0);
    }
}
