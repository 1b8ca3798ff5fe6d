//! `--directory HOST:PORT`: ask the directory which shards exist and choose one: `--shard NAME`
//! if given, else the least loaded open one (what bots do). The window prints the list with
//! the choice marked; `--json` bots print a `shard_chosen` event.

use std::time::Duration;

use bevy_p2pmodel::client::directory::{ShardEntry, list_shards, pick_least_loaded};
use bevy_p2pmodel::client::login::{ShardAddress, resolve_shard_address};

use crate::json::Event;

/// The list and the chosen entry.
pub struct Choice {
    /// Every listed shard (sorted by region, name).
    pub listed: Vec<ShardEntry>,
    /// The chosen one.
    pub chosen: ShardEntry,
    /// Its login address, resolved.
    pub login: ShardAddress,
}

/// List the shards of `region` (empty: all) at `directory` and choose `name` or the least
/// loaded open one.
pub fn choose(directory: &str, region: &str, name: Option<&str>) -> Result<Choice, String> {
    let listed =
        list_shards(directory, region, Duration::from_secs(5)).map_err(|e| format!("{directory}: {e}"))?;
    let chosen = match name {
        Some(n) => listed.iter().find(|e| e.name == n).ok_or_else(|| {
            let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
            format!("--shard {n}: the directory lists {names:?}")
        })?,
        None => pick_least_loaded(&listed).ok_or_else(|| {
            format!("the directory at {directory} lists no open shard ({} listed)", listed.len())
        })?,
    }
    .clone();
    let login = resolve_shard_address(&chosen.login).map_err(|e| format!("shard {}: {e}", chosen.name))?;
    Ok(Choice { listed, chosen, login })
}

/// The server list as text, the chosen shard marked with `>`.
pub fn render(c: &Choice) -> String {
    let mut out = String::from("  shard            region   players   health\n");
    for e in &c.listed {
        let mark = if e.name == c.chosen.name { '>' } else { ' ' };
        out += &format!(
            "{mark} {:<16} {:<8} {:>4}/{:<4} {:?}{}\n",
            e.name,
            e.region,
            e.population,
            e.capacity,
            e.health,
            if e.open() { "" } else { " (closed)" }
        );
    }
    out
}

/// The `shard_chosen` JSON event.
pub fn event(c: &Choice) -> Event {
    Event::ShardChosen {
        name: c.chosen.name.clone(),
        region: c.chosen.region.clone(),
        login: c.chosen.login.clone(),
        population: c.chosen.population,
        capacity: c.chosen.capacity,
        listed: c.listed.len() as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bevy_p2pmodel::client::directory::Health;

    fn entry(name: &str, population: u32) -> ShardEntry {
        ShardEntry {
            name: name.into(),
            region: "eu".into(),
            login: format!("{}@127.0.0.1:7001", "ab".repeat(32)),
            population,
            capacity: 10,
            health: Health::Ok,
            age_ms: 0,
        }
    }

    #[test]
    fn the_list_marks_the_choice_and_the_event_names_it() {
        let listed = vec![entry("eu-1", 9), entry("eu-2", 10)];
        let chosen = listed[0].clone();
        let login = resolve_shard_address(&chosen.login).unwrap();
        let c = Choice { listed, chosen, login };
        let text = render(&c);
        assert!(text.contains("> eu-1") && text.contains("  eu-2") && text.contains("(closed)"), "{text}");
        let line = crate::json::JsonLine { event: event(&c), bot: None }.to_line();
        assert!(line.contains(r#""event":"shard_chosen""#) && line.contains(r#""listed":2"#), "{line}");
    }

    #[test]
    fn an_unreachable_directory_is_an_error_naming_it() {
        let e = choose("127.0.0.1:1", "", None).err().unwrap();
        assert!(e.contains("127.0.0.1:1"), "{e}");
    }
}
