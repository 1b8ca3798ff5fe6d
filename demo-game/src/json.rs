//! The bot's `--json` output: one JSON object per line on stdout. This is a public
//! interface (the netlab parses it); docs/DEMO.md documents every field. Add fields, never
//! rename or remove them.

use serde::{Deserialize, Serialize};

/// One line of `--json` output: an [`Event`], plus the bot's name when one process runs
/// several bots (`--bots N`, N > 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonLine {
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
    /// The bot's name (only with `--bots N`, N > 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot: Option<String>,
}

impl JsonLine {
    /// The line as printed (no trailing newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("JSON lines hold only strings and numbers")
    }
}

/// A bot event. Times are milliseconds; ids are player ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// `--directory`: the shard chosen from the directory's list (before logging in).
    ShardChosen {
        /// Its name.
        name: String,
        /// Its region.
        region: String,
        /// Its login address (`KEY@HOST:PORT`).
        login: String,
        /// Players on it at its last heartbeat.
        population: u32,
        /// Players it takes.
        capacity: u32,
        /// How many shards the directory listed.
        listed: u32,
    },
    /// The shard connection changed state: `connecting`, `lobby`, `in_game`,
    /// `reconnecting` (lost after a login: links keep running) or `disconnected`.
    Shard {
        /// The new state.
        state: String,
        /// Since the bot started.
        t_ms: u64,
    },
    /// A live peer delivered nothing for longer than `--max-silence` (5 s) (the run
    /// fails).
    Silent {
        /// The peer's player id.
        peer: u64,
        /// How long it has been silent.
        silent_ms: u64,
    },
    /// Logged in to the shard.
    Connected {
        /// Our player id.
        client: u64,
        /// Since the bot started.
        t_ms: u64,
    },
    /// NAT discovery finished.
    Nat {
        /// `open`, `full-cone`, `restricted`, `port-restricted`, `symmetric`, `blocked` or
        /// `unknown`.
        class: String,
        /// RFC 4787 mapping behaviour (`no-nat`, `endpoint-independent`, ...).
        mapping: String,
        /// RFC 4787 filtering behaviour.
        filtering: String,
        /// Our public (server-reflexive) address, `null` when unknown.
        public: Option<String>,
    },
    /// A peer's path changed (also the first path after the introduction).
    Path {
        /// The peer's player id.
        peer: u64,
        /// `connecting`, `relayed`, `direct`, `lost` or `server` (P2P off).
        path: String,
        /// The peer's address (direct) or the relay's (relayed); `null` otherwise.
        remote: Option<String>,
        /// Since the shard introduced the peer.
        since_intro_ms: u64,
    },
    /// The first message from a peer arrived.
    FirstMessage {
        /// The peer's player id.
        peer: u64,
        /// Since the shard introduced the peer.
        since_intro_ms: u64,
        /// `true` over the mesh, `false` through the Game server.
        p2p: bool,
    },
    /// Once a second.
    Stats {
        /// Since the bot started.
        t_ms: u64,
        /// Every peer ever introduced.
        peers: Vec<PeerLine>,
        /// Bytes received from the shard (its transport), since the start.
        server_bytes_in: u64,
        /// Bytes sent to the shard, since the start.
        server_bytes_out: u64,
        /// Bytes received on the mesh socket (peers, relay, STUN), since the start.
        p2p_bytes_in: u64,
        /// Bytes sent on the mesh socket, since the start.
        p2p_bytes_out: u64,
    },
    /// The last line.
    Exit {
        /// Logged in, no reliable gaps or duplicates from any peer, and no live peer silent
        /// for longer than `--max-silence` (5 s).
        ok: bool,
    },
}

/// One peer in a [`Event::Stats`] line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerLine {
    /// The peer's player id.
    pub peer: u64,
    /// Current path (as in [`Event::Path`]; `gone` once the shard un-introduced it).
    pub path: String,
    /// Smoothed round-trip time over the mesh path, `null` when not measured.
    pub rtt_ms: Option<f64>,
    /// Messages we sent to the peer (reliable + unreliable).
    pub sent: u64,
    /// Messages we received from the peer (reliable + unreliable).
    pub received: u64,
    /// Reliable sequence numbers missing right now.
    pub gaps: u64,
    /// Reliable messages received more than once.
    pub dups: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_event() -> Vec<Event> {
        vec![
            Event::Connected { client: 7, t_ms: 1234 },
            Event::Nat {
                class: "port-restricted".into(),
                mapping: "endpoint-independent".into(),
                filtering: "address-and-port-dependent".into(),
                public: Some("198.51.100.2:40000".into()),
            },
            Event::Path {
                peer: 8,
                path: "direct".into(),
                remote: Some("203.0.113.9:5000".into()),
                since_intro_ms: 42,
            },
            Event::FirstMessage { peer: 8, since_intro_ms: 3, p2p: false },
            Event::Stats {
                t_ms: 2000,
                peers: vec![PeerLine {
                    peer: 8,
                    path: "relayed".into(),
                    rtt_ms: Some(1.5),
                    sent: 30,
                    received: 29,
                    gaps: 0,
                    dups: 0,
                }],
                server_bytes_in: 1,
                server_bytes_out: 2,
                p2p_bytes_in: 3,
                p2p_bytes_out: 4,
            },
            Event::Exit { ok: true },
        ]
    }

    #[test]
    fn every_event_round_trips_through_one_json_line() {
        for bot in [None, Some("bot-2".to_string())] {
            for event in every_event() {
                let line = JsonLine { event, bot: bot.clone() };
                let text = line.to_line();
                assert!(!text.contains('\n'), "{text}");
                let back: JsonLine = serde_json::from_str(&text).unwrap();
                assert_eq!(back, line);
            }
        }
    }

    #[test]
    fn lines_have_the_documented_shape() {
        let v = |e: Event| serde_json::to_value(JsonLine { event: e, bot: None }).unwrap();
        assert_eq!(
            v(Event::Connected { client: 7, t_ms: 5 }),
            serde_json::json!({"event": "connected", "client": 7, "t_ms": 5})
        );
        assert_eq!(
            v(Event::FirstMessage { peer: 1, since_intro_ms: 2, p2p: true }),
            serde_json::json!({"event": "first_message", "peer": 1, "since_intro_ms": 2, "p2p": true})
        );
        assert_eq!(v(Event::Exit { ok: false }), serde_json::json!({"event": "exit", "ok": false}));
        let with_bot = JsonLine { event: Event::Exit { ok: true }, bot: Some("bot-1".into()) };
        assert_eq!(
            serde_json::to_value(with_bot).unwrap(),
            serde_json::json!({"event": "exit", "ok": true, "bot": "bot-1"})
        );
        let stats = v(every_event().remove(4));
        for key in ["t_ms", "peers", "server_bytes_in", "server_bytes_out", "p2p_bytes_in", "p2p_bytes_out"] {
            assert!(stats.get(key).is_some(), "stats has {key}: {stats}");
        }
        let peer = &stats["peers"][0];
        for key in ["peer", "path", "rtt_ms", "sent", "received", "gaps", "dups"] {
            assert!(peer.get(key).is_some(), "peer line has {key}: {peer}");
        }
    }
}
