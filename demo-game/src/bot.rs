//! The bot: a player that wanders near its spawn point, and the headless runner that steps
//! one or many bot Apps on one thread.
//!
//! Traffic (state 20/s unreliable, sequence numbers 10/s reliable, to every peer) is the
//! same for every demo client ([`crate::net`]); the bot adds the walking and, headless, the
//! reports: log lines on stderr, or with `--json` the JSON lines of [`crate::json`] on
//! stdout.

use std::io::Write;
use std::time::{Duration, Instant};

use bevy::app::AppExit;
use bevy::prelude::*;
use bevy::state::app::StatesPlugin;
use bevy_p2pmodel::client::ShardNotice;
use bevy_p2pmodel::plugins::{
    NatDiscovered, P2pClient, PeerConnected, PeerPathChanged, ShardEvent, ShardLink, ShardState,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::json::{Event, JsonLine, PeerLine};
use crate::net::{
    DemoNetPlugin, FirstMessage, MAX_SPEED, Me, MeshBoard, NetFailure, NetSettings, NetSystems, Remotes,
    RunClock, fail,
};

/// How far from its home the bot wanders (world units). Two bots with the same home stay
/// within the shard's default interest radius (50) of each other, so they stay introduced.
pub const WANDER_RADIUS: f32 = 20.0;
/// Walking speed while wandering (units per second).
pub const WANDER_SPEED: f32 = 5.0;
/// Frame rate of the headless bot loop.
const BOT_FRAME_HZ: f64 = 60.0;

/// The bot's walking.
pub struct BotWalkPlugin;

impl Plugin for BotWalkPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(Walker { rng: StdRng::from_os_rng(), home: None, at_home: false, target: None })
            .add_systems(Update, wander.before(NetSystems));
    }
}

#[derive(Resource)]
struct Walker {
    rng: StdRng,
    home: Option<Vec2>,
    at_home: bool,
    target: Option<Vec2>,
}

/// Walk to the spawn point at the speed limit, then random-walk around it.
fn wander(mut me: ResMut<Me>, mut w: ResMut<Walker>, settings: Res<NetSettings>, time: Res<Time>) {
    if !me.in_game {
        me.vel = Vec2::ZERO;
        return;
    }
    let home = *w.home.get_or_insert_with(|| settings.spawn.or(me.entered_at).unwrap_or(me.pos));
    let (target, speed) = if !w.at_home {
        (home, MAX_SPEED)
    } else {
        let target = match w.target {
            Some(t) => t,
            None => {
                let a = w.rng.random_range(0.0..std::f32::consts::TAU);
                let r = WANDER_RADIUS * w.rng.random_range(0.0f32..1.0).sqrt();
                let t = home + Vec2::from_angle(a) * r;
                w.target = Some(t);
                t
            }
        };
        (target, WANDER_SPEED)
    };
    let dt = time.delta_secs().min(0.1);
    let to = target - me.pos;
    let step = speed * dt;
    if to.length() <= step.max(0.05) {
        me.pos = target;
        me.vel = Vec2::ZERO;
        w.at_home = true;
        w.target = None;
    } else {
        me.vel = to.normalize() * speed;
        let v = me.vel;
        me.pos += v * dt;
    }
}

/// Where the bot's reports go.
#[derive(Resource, Debug, Clone)]
pub struct BotReporting {
    /// JSON lines on stdout (else log lines).
    pub json: bool,
    /// The `"bot"` field (several bots per process).
    pub label: Option<String>,
}

/// How the bot's run ended.
#[derive(Resource, Debug, Default, Clone)]
pub struct BotOutcome {
    /// Set when the run is over: `true` = logged in, no gaps, no duplicates.
    pub ok: Option<bool>,
}

/// The headless bot's reports and end of run.
pub struct BotReportPlugin(pub BotReporting);

impl Plugin for BotReportPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(self.0.clone())
            .init_resource::<BotOutcome>()
            .insert_resource(StatsTimer(None))
            .add_systems(Update, (report_events, report_stats, finish).chain().after(NetSystems));
    }
}

#[derive(Resource)]
struct StatsTimer(Option<Instant>);

fn emit(rep: &BotReporting, event: Event) {
    if rep.json {
        let line = JsonLine { event, bot: rep.label.clone() }.to_line();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

#[allow(clippy::too_many_arguments)]
fn report_events(
    rep: Res<BotReporting>,
    clock: Res<RunClock>,
    mut shard: MessageReader<ShardEvent>,
    mut nat: MessageReader<NatDiscovered>,
    mut paths: MessageReader<PeerPathChanged>,
    mut introduced: MessageReader<PeerConnected>,
    mut first: MessageReader<FirstMessage>,
    settings: Res<NetSettings>,
    mut welcomed: Local<bool>,
    state: Res<State<ShardState>>,
    mut last_state: Local<Option<ShardState>>,
) {
    let now = Instant::now();
    if *last_state != Some(*state.get()) {
        *last_state = Some(*state.get());
        let name = match state.get() {
            ShardState::Disconnected => "disconnected",
            ShardState::Connecting => "connecting",
            ShardState::Lobby => "lobby",
            ShardState::InGame => "in_game",
            ShardState::Reconnecting => "reconnecting",
        };
        info!(bot = %settings.name, state = name, "shard state");
        emit(&rep, Event::Shard { state: name.into(), t_ms: clock.ms(now) });
    }
    // With P2P off the plugin reports no path changes: the one path, `server`, is set at
    // the introduction.
    for c in introduced.read().filter(|_| !settings.p2p) {
        emit(&rep, Event::Path { peer: c.player.0, path: "server".into(), remote: None, since_intro_ms: 0 });
    }
    for ev in shard.read() {
        // The shard may repeat `Welcome` (it answers every `Login`): one line per run.
        if let ShardNotice::Welcome { player } = &ev.0
            && !*welcomed
        {
            *welcomed = true;
            emit(&rep, Event::Connected { client: player.0, t_ms: clock.ms(now) });
        }
    }
    for NatDiscovered(r) in nat.read() {
        info!(class = r.class.as_str(), public = ?r.public, "NAT discovered");
        emit(
            &rep,
            Event::Nat {
                class: r.class.as_str().into(),
                mapping: r.mapping.as_str().into(),
                filtering: r.filtering.as_str().into(),
                public: r.public.map(|a| a.to_string()),
            },
        );
    }
    for p in paths.read() {
        emit(
            &rep,
            Event::Path {
                peer: p.player.0,
                path: p.path.as_str().into(),
                remote: p.remote.map(|a| a.to_string()),
                since_intro_ms: p.since_intro.as_millis() as u64,
            },
        );
    }
    for f in first.read() {
        emit(
            &rep,
            Event::FirstMessage {
                peer: f.player.0,
                since_intro_ms: f.since_intro.as_millis() as u64,
                p2p: f.p2p,
            },
        );
    }
}

/// The stats line for now.
fn stats(clock: &RunClock, remotes: &Remotes, client: &P2pClient, link: Option<&ShardLink>) -> Event {
    let peers = remotes
        .0
        .iter()
        .map(|(p, r)| PeerLine {
            peer: p.0,
            path: if r.present { r.path.as_str().into() } else { "gone".into() },
            rtt_ms: client.peer_rtt(*p).map(|d| d.as_secs_f64() * 1000.0),
            sent: r.sent,
            received: r.received,
            gaps: r.reliable.gaps(),
            dups: r.reliable.dups(),
        })
        .collect();
    let (sin, sout) = link.map_or((0, 0), |l| (l.bytes_in(), l.bytes_out()));
    let mesh = client.totals().mesh;
    Event::Stats {
        t_ms: clock.ms(Instant::now()),
        peers,
        server_bytes_in: sin,
        server_bytes_out: sout,
        p2p_bytes_in: mesh.bytes_received,
        p2p_bytes_out: mesh.bytes_sent,
    }
}

fn report_stats(
    rep: Res<BotReporting>,
    clock: Res<RunClock>,
    mut remotes: ResMut<Remotes>,
    client: Res<P2pClient>,
    link: Option<Res<ShardLink>>,
    settings: Res<NetSettings>,
    mut timer: ResMut<StatsTimer>,
) {
    let now = Instant::now();
    let next = *timer.0.get_or_insert(clock.start + Duration::from_secs(1));
    // At the end `finish` prints the last stats line.
    if now < next || clock.done {
        return;
    }
    timer.0 = Some(next + Duration::from_secs(1));
    // A live peer that stopped delivering is a failure the user must see.
    for (p, r) in remotes.0.iter_mut().filter(|(_, r)| r.present) {
        let Some(since) = r.last_heard else { continue };
        let silent = now.saturating_duration_since(since);
        if silent > r.worst_silence && !clock.silence_excused(since) {
            if silent > settings.max_silence && r.worst_silence <= settings.max_silence {
                warn!(bot = %settings.name, peer = %r.name, ?silent, "a live peer is silent");
                emit(&rep, Event::Silent { peer: p.0, silent_ms: silent.as_millis() as u64 });
            }
            r.worst_silence = silent;
        }
    }
    let line = stats(&clock, &remotes, &client, link.as_deref());
    if rep.json {
        emit(&rep, line);
    } else if clock.ms(now) % 5000 < 1000 {
        for (p, r) in &remotes.0 {
            info!(
                bot = %settings.name,
                peer = %r.name,
                player = p.0,
                path = r.path.as_str(),
                sent = r.sent,
                received = r.received,
                gaps = r.reliable.gaps(),
                dups = r.reliable.dups(),
                "peer stats"
            );
        }
    }
}

/// At `--exit-after` (or on a failure): the final stats, the `exit` line, the app's exit.
#[allow(clippy::too_many_arguments)]
fn finish(
    rep: Res<BotReporting>,
    clock: Res<RunClock>,
    me: Res<Me>,
    remotes: Res<Remotes>,
    client: Res<P2pClient>,
    link: Option<Res<ShardLink>>,
    settings: Res<NetSettings>,
    mut failure: ResMut<NetFailure>,
    mut outcome: ResMut<BotOutcome>,
    mut exit: MessageWriter<AppExit>,
) {
    if outcome.ok.is_some() || (!clock.done && failure.0.is_none()) {
        return;
    }
    let clean = remotes.0.values().all(|r| r.reliable.gaps() == 0 && r.reliable.dups() == 0);
    let talking = remotes.0.values().all(|r| r.worst_silence <= settings.max_silence);
    let ok = failure.0.is_none() && me.player.is_some() && clean && talking;
    emit(&rep, stats(&clock, &remotes, &client, link.as_deref()));
    emit(&rep, Event::Exit { ok });
    let summary: Vec<String> = remotes
        .0
        .values()
        .map(|r| {
            format!(
                "{}: {} sent, {} received ({} reliable), {} gaps, {} dups, longest silence {} ms",
                r.name,
                r.sent,
                r.received,
                r.reliable.distinct(),
                r.reliable.gaps(),
                r.reliable.dups(),
                r.worst_silence.as_millis()
            )
        })
        .collect();
    info!(bot = %settings.name, ok, peers = ?summary, "bot finished");
    outcome.ok = Some(ok);
    if ok {
        exit.write(AppExit::Success);
    } else if failure.0.is_none() {
        fail(
            &mut failure,
            &mut exit,
            format!("bot {}: reliable gaps, duplicates or a silent peer: {summary:?}", settings.name),
        );
    }
}

/// A headless bot App (no `run`: [`run_bots`] steps it). The process's logger is set up
/// elsewhere, once.
pub fn bot_app(settings: NetSettings, reporting: Option<BotReporting>, board: Option<MeshBoard>) -> App {
    let mut app = App::new();
    app.add_plugins((MinimalPlugins, StatesPlugin));
    app.add_plugins((DemoNetPlugin { settings, board }, BotWalkPlugin));
    if let Some(r) = reporting {
        app.add_plugins(BotReportPlugin(r));
    }
    app
}

/// Names of `n` bots from a base name: the base itself for one bot, `base-1..n` otherwise.
pub fn bot_names(base: &str, n: usize) -> Vec<String> {
    if n == 1 { vec![base.to_string()] } else { (1..=n).map(|i| format!("{base}-{i}")).collect() }
}

/// Step `apps` on this thread at 60 Hz until every one has exited (or forever, for the
/// window's background bots). Returns each App's exit, and the Apps.
pub fn run_bots(mut apps: Vec<App>) -> (Vec<AppExit>, Vec<App>) {
    for app in &mut apps {
        app.finish();
        app.cleanup();
    }
    let mut exits: Vec<Option<AppExit>> = vec![None; apps.len()];
    let frame = Duration::from_secs_f64(1.0 / BOT_FRAME_HZ);
    while exits.iter().any(Option::is_none) {
        let t0 = Instant::now();
        for (app, exit) in apps.iter_mut().zip(exits.iter_mut()).filter(|(_, e)| e.is_none()) {
            app.update();
            *exit = app.should_exit();
        }
        if let Some(rest) = frame.checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    (exits.into_iter().map(|e| e.unwrap_or(AppExit::Success)).collect(), apps)
}
