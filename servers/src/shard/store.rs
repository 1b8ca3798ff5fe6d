//! The Lobby's embedded character store: a name → character map, optionally backed by a JSON
//! file (written atomically: temp file, then rename).

use std::collections::BTreeMap;
use std::path::PathBuf;

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
}

/// Characters by name.
#[derive(Debug, Default)]
pub struct Store {
    path: Option<PathBuf>,
    chars: BTreeMap<String, Character>,
    next: u64,
    dirty: bool,
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
        Ok(Store { path, chars, next, dirty: false })
    }

    /// The character of `name`, created at the origin of zone 0 if new.
    pub fn load_or_create(&mut self, name: &str) -> Character {
        if let Some(c) = self.chars.get(name) {
            return c.clone();
        }
        let c = Character { player: self.next, zone: 0, x: 0.0, y: 0.0 };
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
            self.dirty = true;
        }
    }

    /// Write the file if anything changed.
    pub fn flush(&mut self) -> std::io::Result<()> {
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
        assert_eq!(s.load_or_create("ana"), Character { player: a.player, zone: 1, x: 5.0, y: 6.0 });
        assert_ne!(s.load_or_create("bob").player, a.player);
        std::fs::write(&p, "not json").unwrap();
        assert!(Store::open(Some(p.clone())).is_err());
        std::fs::remove_file(&p).unwrap();
    }
}
