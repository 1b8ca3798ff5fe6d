//! The demo's networking, shared by the window and the bots: the plugin's
//! [`P2pMeshPlugin`] and [`ShardClientPlugin`] plus what every demo client does on top.
//!
//! - [`Me`]: the local player; whoever steers (keyboard or bot) moves it, and every tick
//!   (20 Hz) [`send_ticks`] reports it to the shard (`Move`) and sends it unreliably to every
//!   peer ([`PeerMsg::State`]); 10 times a second it also sends each peer the next number
//!   of a reliable sequence ([`PeerMsg::Seq`]).
//! - [`Remotes`]: every peer ever introduced, with its last state (rendered by the window),
//!   its path and the counters of what we sent and received ([`SeqCounter`]).
//! - [`RunClock`]: `--exit-after`; the last second is a drain (no new reliable numbers) so
//!   the counts are final when the run ends.
//! - [`MeshBoard`]: clients in the same process (the window and its background bots) post
//!   their position and links here, so the window can draw the whole mesh.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_p2pmodel::client::login::ShardAddress;
use bevy_p2pmodel::client::{Channel, ClientConfig, PeerPath as Route, ShardNotice};
use bevy_p2pmodel::plugins::FromServer;
use bevy_p2pmodel::plugins::{
    P2pMeshPlugin, P2pReceived, P2pSender, PeerConnected, PeerDisconnected, PeerPathChanged,
    ShardClientPlugin, ShardEvent, ShardRequest,
};
use bevy_p2pmodel::proto::shard::PlayerId;
use p2pmodel_mmo_world::{ChatLine as WorldChat, MmoClientPlugin, Npc, Npcs};

use crate::counter::SeqCounter;
use crate::wire::{PeerMsg, PlayerState};

/// State messages and `Move` requests per second (the shard's default tick rate).
pub const TICK_HZ: f64 = 20.0;
/// Reliable sequence numbers per second per peer.
pub const SEQ_HZ: f64 = 10.0;
/// Fastest the demo moves a player, in world units per second: under the shard's default
/// speed limit (`game.max_speed` = 10) so moves are never corrected.
pub const MAX_SPEED: f32 = 9.0;
/// How long logging in and entering the zone may take before the run fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The drain at the end of an `--exit-after` run: no new reliable numbers, so everything
/// sent can arrive before the counts are final.
pub const DRAIN: Duration = Duration::from_secs(1);
/// Chat lines kept.
const CHAT_LINES: usize = 8;

/// What the networking needs to know.
#[derive(Resource, Debug, Clone)]
pub struct NetSettings {
    /// Player name.
    pub name: String,
    /// The shard's login service and pinned login key.
    pub login: ShardAddress,
    /// P2P links on (`--p2p`).
    pub p2p: bool,
    /// Link keepalives on (`--keepalive`).
    pub keepalive: bool,
    /// Zone to enter.
    pub zone: u32,
    /// `--exit-after`.
    pub exit_after: Option<Duration>,
    /// `--pause-at` / `--pause-for`: (start, length) of a window with no peer traffic.
    pub pause: Option<(Duration, Duration)>,
    /// `--spawn`.
    pub spawn: Option<Vec2>,
    /// `--max-silence`: longest a live peer may stay silent before a bot's run fails.
    pub max_silence: Duration,
}

/// The plugin and the demo's networking systems for one client.
pub struct DemoNetPlugin {
    /// Settings.
    pub settings: NetSettings,
    /// The in-process mesh board, if the window draws this client's links.
    pub board: Option<MeshBoard>,
}

impl Plugin for DemoNetPlugin {
    fn build(&self, app: &mut App) {
        let s = &self.settings;
        let mut client = ClientConfig::new(s.name.clone());
        client.p2p = s.p2p;
        client.mesh.link.keepalive = s.keepalive;
        client.seed = rand::random();
        // A loopback shard gets a loopback mesh socket: only loopback traffic, no host
        // candidates on other interfaces.
        let bind: SocketAddr = if s.login.login.ip().is_loopback() { "127.0.0.1:0" } else { "0.0.0.0:0" }
            .parse()
            .expect("literal");
        let mesh = P2pMeshPlugin { client, bind, ..P2pMeshPlugin::default() };
        let shard = ShardClientPlugin {
            shard: s.login,
            credential: Vec::new(),
            auto_connect: true,
            auto_zone: Some(s.zone),
        };
        app.add_plugins((mesh, shard, MmoClientPlugin))
            .insert_resource(s.clone())
            .insert_resource(RunClock::new(s.exit_after).with_pause(s.pause))
            .init_resource::<Me>()
            .init_resource::<Remotes>()
            .init_resource::<ChatLog>()
            .init_resource::<NpcView>()
            .init_resource::<NetFailure>()
            .insert_resource(Ticker::default())
            .add_message::<FirstMessage>()
            .add_systems(
                Update,
                (
                    advance_clock,
                    on_shard_events,
                    on_world_messages,
                    on_peer_events,
                    on_peer_messages,
                    watchdog,
                    send_ticks.after(on_peer_events),
                )
                    .in_set(NetSystems),
            );
        if let Some(board) = &self.board {
            app.insert_resource(board.clone()).add_systems(Update, post_to_board.after(NetSystems));
        }
    }
}

/// The demo's networking systems (in `Update`); steering runs before them.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetSystems;

/// The local player.
#[derive(Resource, Debug, Default)]
pub struct Me {
    /// Our player id, after `Welcome`.
    pub player: Option<PlayerId>,
    /// In a zone (after `EnteredZone`).
    pub in_game: bool,
    /// Position (world units).
    pub pos: Vec2,
    /// Velocity (units per second), set by whoever steers.
    pub vel: Vec2,
    /// Where the shard put us when we entered the zone.
    pub entered_at: Option<Vec2>,
}

/// One introduced peer (kept after it leaves, for the stats).
#[derive(Debug, Clone)]
pub struct Remote {
    /// Its name.
    pub name: String,
    /// When it was (last) introduced.
    pub intro_at: Instant,
    /// Its path now.
    pub path: Route,
    /// Its address (direct) or the relay's (relayed).
    pub remote: Option<SocketAddr>,
    /// Introduced now (`false` after `PeerDisconnected`).
    pub present: bool,
    /// Its last state and when it arrived.
    pub state: Option<(PlayerState, Instant)>,
    /// Its reliable sequence numbers.
    pub reliable: SeqCounter,
    /// Our next reliable sequence number to it.
    pub next_seq: u64,
    /// Messages we sent it.
    pub sent: u64,
    /// Messages we received from it.
    pub received: u64,
    /// Whether anything arrived yet.
    pub heard: bool,
    /// When the last message arrived.
    pub last_heard: Option<Instant>,
    /// The longest silence of this peer while it was introduced and we were not in a
    /// `--pause-at` window (a live peer that stops delivering fails the bot).
    pub worst_silence: Duration,
}

impl Remote {
    /// Where to draw it now: its last position, extrapolated a little.
    pub fn position(&self, now: Instant) -> Option<Vec2> {
        let (s, at) = self.state?;
        let dt = now.saturating_duration_since(at).as_secs_f32().min(0.25);
        Some(Vec2::new(s.x + s.vx * dt, s.y + s.vy * dt))
    }
}

/// Every peer ever introduced, by player id.
#[derive(Resource, Debug, Default)]
pub struct Remotes(pub BTreeMap<PlayerId, Remote>);

/// One chat line.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatLine {
    /// Speaker (or `*` for notices).
    pub name: String,
    /// Text.
    pub text: String,
}

/// The last chat lines and notices.
#[derive(Resource, Debug, Default)]
pub struct ChatLog(pub VecDeque<ChatLine>);

impl ChatLog {
    /// Add a line, dropping the oldest beyond the panel's size.
    pub fn push(&mut self, name: impl Into<String>, text: impl Into<String>) {
        self.0.push_back(ChatLine { name: name.into(), text: text.into() });
        while self.0.len() > CHAT_LINES {
            self.0.pop_front();
        }
    }
}

/// NPCs the shard last told us about.
#[derive(Resource, Debug, Default)]
pub struct NpcView(pub Vec<Npc>);

/// Why the run failed (set once; the app then exits with an error).
#[derive(Resource, Debug, Default)]
pub struct NetFailure(pub Option<String>);

/// The first message from a peer arrived (for the bot's `first_message` line).
#[derive(Message, Debug, Clone)]
pub struct FirstMessage {
    /// The peer.
    pub player: PlayerId,
    /// Since its introduction.
    pub since_intro: Duration,
    /// Over the mesh (`true`) or through the Game server.
    pub p2p: bool,
}

/// The run's clock: start, drain and end of an `--exit-after` run.
#[derive(Resource, Debug, Clone)]
pub struct RunClock {
    /// When the client started.
    pub start: Instant,
    exit_after: Option<Duration>,
    /// In the final drain: no new reliable numbers.
    pub draining: bool,
    /// `--exit-after` elapsed.
    pub done: bool,
    pause: Option<(Duration, Duration)>,
    /// Inside the `--pause-at` window: nothing is sent to peers.
    pub paused: bool,
}

impl RunClock {
    /// Whether a silence of the peers ending `now` may be ours: it overlaps the `--pause-at`
    /// window or the 15 s after it (a link that idled past its NAT binding is found lost and
    /// rebuilt then).
    pub fn silence_excused(&self, since: Instant) -> bool {
        self.pause.is_some_and(|(at, len)| {
            let (from, to) = (self.start + at, self.start + at + len + Duration::from_secs(15));
            since < to && Instant::now() > from
        })
    }
}

impl RunClock {
    /// A clock starting now.
    pub fn new(exit_after: Option<Duration>) -> Self {
        RunClock {
            start: Instant::now(),
            exit_after,
            draining: false,
            done: false,
            pause: None,
            paused: false,
        }
    }

    /// The same clock with a window of silence toward peers (`--pause-at`, `--pause-for`).
    pub fn with_pause(mut self, pause: Option<(Duration, Duration)>) -> Self {
        self.pause = pause;
        self
    }

    /// Milliseconds since the start.
    pub fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_millis() as u64
    }

    /// Update `draining` and `done` for `now`.
    pub fn advance(&mut self, now: Instant) {
        let t = now.saturating_duration_since(self.start);
        self.paused = self.pause.is_some_and(|(at, len)| t >= at && t < at + len);
        let Some(total) = self.exit_after else { return };
        let drain = DRAIN.min(total / 4);
        self.draining = t + drain >= total;
        self.done = t >= total;
    }
}

/// Next due times of the periodic sends.
#[derive(Resource, Debug, Default)]
struct Ticker {
    state_due: Option<Instant>,
    seq_due: Option<Instant>,
    state_seq: u64,
}

/// Whether a periodic action of `period` is due at `now` (catching up at most one period).
fn due(next: &mut Option<Instant>, now: Instant, period: Duration) -> bool {
    match *next {
        Some(t) if now < t => false,
        Some(t) => {
            *next = Some(if now - t > period { now + period } else { t + period });
            true
        }
        None => {
            *next = Some(now + period);
            true
        }
    }
}

fn advance_clock(mut clock: ResMut<RunClock>) {
    clock.advance(Instant::now());
}

/// Record a failure once and end the app with an error.
pub fn fail(failure: &mut NetFailure, exit: &mut MessageWriter<AppExit>, why: String) {
    if failure.0.is_none() {
        error!("{why}");
        failure.0 = Some(why);
        exit.write(AppExit::error());
    }
}

/// What the world's server logic says: chat lines in range, the NPCs near us.
fn on_world_messages(
    mut lines: MessageReader<FromServer<WorldChat>>,
    mut seen: MessageReader<FromServer<Npcs>>,
    mut chat: ResMut<ChatLog>,
    mut npcs: ResMut<NpcView>,
) {
    for l in lines.read() {
        chat.push(l.message.name.clone(), l.message.text.clone());
    }
    if let Some(n) = seen.read().last() {
        npcs.0 = n.message.npcs.clone();
    }
}

fn on_shard_events(
    mut events: MessageReader<ShardEvent>,
    mut me: ResMut<Me>,
    mut chat: ResMut<ChatLog>,
    mut failure: ResMut<NetFailure>,
    mut exit: MessageWriter<AppExit>,
    settings: Res<NetSettings>,
) {
    for ev in events.read() {
        match &ev.0 {
            ShardNotice::Welcome { player } => {
                info!(name = %settings.name, player = player.0, "logged in");
                me.player = Some(*player);
            }
            ShardNotice::EnteredZone { zone, x, y } => {
                info!(name = %settings.name, zone, x, y, "entered zone");
                me.in_game = true;
                me.pos = Vec2::new(*x, *y);
                me.entered_at = Some(me.pos);
                chat.push("*", format!("entered zone {zone} at ({x:.0}, {y:.0})"));
            }
            ShardNotice::Correction { x, y } => {
                warn!(name = %settings.name, x, y, "position corrected by the shard");
                me.pos = Vec2::new(*x, *y);
            }
            ShardNotice::Refused(why) if !me.in_game => fail(
                &mut failure,
                &mut exit,
                format!("the shard at {} refused {:?}: {why}", settings.login.login, settings.name),
            ),
            ShardNotice::Refused(why) => {
                warn!("shard refused a request: {why}");
                chat.push("*", format!("refused: {why}"));
            }
            ShardNotice::PartyInvite { party, name, .. } => {
                chat.push("*", format!("{name} invites you to party {party:?}"));
            }
            ShardNotice::Reconnecting { attempt, retry_in, reason } => {
                warn!(name = %settings.name, attempt, ?retry_in, %reason, "shard connection lost; reconnecting");
                chat.push(
                    "*",
                    format!(
                        "shard unreachable ({reason}); peers stay connected, retry {attempt} in {:.1} s",
                        retry_in.as_secs_f32()
                    ),
                );
            }
            ShardNotice::Disconnected(why) if me.player.is_none() => fail(
                &mut failure,
                &mut exit,
                format!(
                    "cannot reach the shard at {}: {why} (is it running, and is --server its login address?)",
                    settings.login.login
                ),
            ),
            ShardNotice::Disconnected(why) => fail(
                &mut failure,
                &mut exit,
                format!("disconnected from the shard at {}: {why}", settings.login.login),
            ),
        }
    }
}

fn on_peer_events(
    mut connected: MessageReader<PeerConnected>,
    mut paths: MessageReader<PeerPathChanged>,
    mut gone: MessageReader<PeerDisconnected>,
    mut remotes: ResMut<Remotes>,
    settings: Res<NetSettings>,
) {
    let now = Instant::now();
    for c in connected.read() {
        info!(name = %settings.name, peer = %c.name, player = c.player.0, "peer introduced");
        let r = remotes.0.entry(c.player).or_insert_with(|| Remote {
            name: c.name.clone(),
            intro_at: now,
            path: Route::Connecting,
            remote: None,
            present: true,
            state: None,
            reliable: SeqCounter::default(),
            next_seq: 0,
            sent: 0,
            received: 0,
            heard: false,
            last_heard: None,
            worst_silence: Duration::ZERO,
        });
        r.intro_at = now;
        r.present = true;
        r.path = if settings.p2p { Route::Connecting } else { Route::Server };
        r.remote = None;
    }
    for p in paths.read() {
        if let Some(r) = remotes.0.get_mut(&p.player) {
            info!(name = %settings.name, peer = %r.name, path = p.path.as_str(), remote = ?p.remote, "peer path");
            r.path = p.path;
            r.remote = p.remote;
        }
    }
    for g in gone.read() {
        if let Some(r) = remotes.0.get_mut(&g.player) {
            info!(name = %settings.name, peer = %r.name, "peer left");
            r.present = false;
        }
    }
}

fn on_peer_messages(
    mut received: MessageReader<P2pReceived>,
    mut remotes: ResMut<Remotes>,
    mut first: MessageWriter<FirstMessage>,
) {
    let now = Instant::now();
    for m in received.read() {
        let Some(r) = remotes.0.get_mut(&m.player) else { continue };
        let msg = match m.decode::<PeerMsg>() {
            Ok(msg) => msg,
            Err(e) => {
                warn!(peer = %r.name, "undecodable peer message: {e:?}");
                continue;
            }
        };
        r.received += 1;
        r.last_heard = Some(now);
        if !r.heard {
            r.heard = true;
            let since_intro = now.saturating_duration_since(r.intro_at);
            first.write(FirstMessage { player: m.player, since_intro, p2p: m.p2p });
        }
        match msg {
            PeerMsg::State(s) => {
                if r.state.is_none_or(|(old, _)| s.seq > old.seq) {
                    r.state = Some((s, now));
                }
            }
            PeerMsg::Seq { seq } => {
                r.reliable.record(seq);
            }
        }
    }
}

fn watchdog(
    me: Res<Me>,
    clock: Res<RunClock>,
    settings: Res<NetSettings>,
    mut failure: ResMut<NetFailure>,
    mut exit: MessageWriter<AppExit>,
) {
    if !me.in_game && clock.start.elapsed() > CONNECT_TIMEOUT {
        let step = if me.player.is_some() { "logged in but did not enter a zone" } else { "no login" };
        fail(
            &mut failure,
            &mut exit,
            format!(
                "cannot reach the shard at {} ({step} within {} s): is it running, and is --server \
                 its login address?",
                settings.login.login,
                CONNECT_TIMEOUT.as_secs()
            ),
        );
    }
}

/// Every tick: `Move` to the shard, our state to every peer; 10 Hz: the next reliable
/// sequence number to every peer (not while draining).
fn send_ticks(
    me: Res<Me>,
    settings: Res<NetSettings>,
    clock: Res<RunClock>,
    mut ticker: ResMut<Ticker>,
    mut remotes: ResMut<Remotes>,
    mut sender: P2pSender,
    mut requests: MessageWriter<ShardRequest>,
) {
    if !me.in_game {
        return;
    }
    let now = Instant::now();
    let ticker = &mut *ticker;
    if clock.paused {
        // Idle toward peers (TC-05); the shard still gets our position.
        if due(&mut ticker.state_due, now, Duration::from_secs_f64(1.0 / TICK_HZ)) {
            requests.write(ShardRequest::Move { x: me.pos.x, y: me.pos.y });
        }
        return;
    }
    if due(&mut ticker.state_due, now, Duration::from_secs_f64(1.0 / TICK_HZ)) {
        requests.write(ShardRequest::Move { x: me.pos.x, y: me.pos.y });
        ticker.state_seq += 1;
        let state = PeerMsg::State(PlayerState {
            seq: ticker.state_seq,
            x: me.pos.x,
            y: me.pos.y,
            vx: me.vel.x,
            vy: me.vel.y,
        });
        for (player, r) in remotes.0.iter_mut().filter(|(_, r)| r.present) {
            if sender.send(*player, Channel::Unreliable, &state).is_ok() {
                r.sent += 1;
            }
        }
    }
    if due(&mut ticker.seq_due, now, Duration::from_secs_f64(1.0 / SEQ_HZ)) && !clock.draining {
        // With P2P on, the reliable stream tests the mesh: it pauses while a link has no
        // path (the plugin would send through the Game server, whose `ToPeer` routing is not
        // on every shard yet). With P2P off it goes through the server, as everything does.
        let ready = |r: &Remote| !settings.p2p || matches!(r.path, Route::Relayed | Route::Direct);
        for (player, r) in remotes.0.iter_mut().filter(|(_, r)| r.present && ready(r)) {
            if sender.send(*player, Channel::Reliable, &PeerMsg::Seq { seq: r.next_seq }).is_ok() {
                r.next_seq += 1;
                r.sent += 1;
            }
        }
    }
}

/// One client's entry on the [`MeshBoard`].
#[derive(Debug, Clone)]
pub struct BoardEntry {
    /// Position.
    pub pos: Vec2,
    /// Its links: peer and path.
    pub links: Vec<(PlayerId, Route)>,
    /// Last update.
    pub at: Instant,
}

/// Clients of this process post their position and links here (the window draws them).
#[derive(Resource, Debug, Clone, Default)]
pub struct MeshBoard(pub Arc<Mutex<BTreeMap<PlayerId, BoardEntry>>>);

fn post_to_board(me: Res<Me>, remotes: Res<Remotes>, board: Res<MeshBoard>) {
    let Some(player) = me.player.filter(|_| me.in_game) else { return };
    let links = remotes.0.iter().filter(|(_, r)| r.present).map(|(p, r)| (*p, r.path)).collect();
    let entry = BoardEntry { pos: me.pos, links, at: Instant::now() };
    if let Ok(mut b) = board.0.lock() {
        b.insert(player, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_sends_keep_their_rate_and_do_not_burst_after_a_stall() {
        let t0 = Instant::now();
        let p = Duration::from_millis(50);
        let mut next = None;
        assert!(due(&mut next, t0, p), "first call fires");
        assert!(!due(&mut next, t0 + Duration::from_millis(10), p));
        assert!(due(&mut next, t0 + Duration::from_millis(50), p));
        // A 1 s stall fires once, not 20 times.
        assert!(due(&mut next, t0 + Duration::from_secs(1), p));
        assert!(!due(&mut next, t0 + Duration::from_millis(1010), p));
    }

    #[test]
    fn the_pause_window_silences_peers_only_inside_it() {
        let mut c = RunClock::new(None).with_pause(Some((Duration::from_secs(2), Duration::from_secs(3))));
        let at = |s: u64| c.start + Duration::from_secs(s);
        let (t1, t3, t5) = (at(1), at(3), at(5));
        c.advance(t1);
        assert!(!c.paused);
        c.advance(t3);
        assert!(c.paused);
        c.advance(t5);
        assert!(!c.paused, "the window is [2 s, 5 s)");
    }

    #[test]
    fn the_clock_drains_for_the_last_second_then_ends() {
        let mut c = RunClock::new(Some(Duration::from_secs(6)));
        let s = c.start;
        c.advance(s + Duration::from_secs(4));
        assert!(!c.draining && !c.done);
        c.advance(s + Duration::from_millis(5100));
        assert!(c.draining && !c.done);
        c.advance(s + Duration::from_secs(6));
        assert!(c.done);
        let mut short = RunClock::new(Some(Duration::from_secs(2)));
        let s = short.start;
        short.advance(s + Duration::from_millis(1400));
        assert!(!short.draining, "a short run drains for a quarter of it");
        short.advance(s + Duration::from_millis(1600));
        assert!(short.draining);
    }
}
