//! Tests of the Agones integration: the life cycle in virtual time, the Bevy wiring with a
//! recording fake, and the real SDK (the `agones` crate) against an in-test gRPC server that
//! speaks the SDK's protocol (`agones.dev.sdk.SDK` and `agones.dev.sdk.beta.SDK`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// One SDK call as a server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    GetGameServer,
    Watch,
    Ready,
    Health,
    Shutdown,
    Capacity(String, i64),
    Count(String, i64),
    Other(String),
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Call>>>);

impl Recorder {
    fn push(&self, c: Call) {
        self.0.lock().unwrap().push(c);
    }
    fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }
}

impl Agones for Recorder {
    fn ready(&mut self) {
        self.push(Call::Ready);
    }
    fn health(&mut self) {
        self.push(Call::Health);
    }
    fn set_capacity(&mut self, capacity: i64) {
        self.push(Call::Capacity(PLAYERS_COUNTER.into(), capacity));
    }
    fn set_players(&mut self, count: i64) {
        self.push(Call::Count(PLAYERS_COUNTER.into(), count));
    }
    fn shutdown(&mut self) {
        self.push(Call::Shutdown);
    }
}

fn config(zones: u32, per_zone: u32) -> ShardConfig {
    let hex: String = crate::config::random_secret().iter().map(|b| format!("{b:02x}")).collect();
    ShardConfig::parse(&format!(
        "[shard]\nname = \"t\"\nsecret = \"{hex}\"\n[lobby]\nzones = {zones}\n[game]\nservers_per_zone = {per_zone}\ncapacity = 50\n"
    ))
    .unwrap()
}

fn without_health(calls: &[Call]) -> Vec<Call> {
    calls.iter().filter(|c| **c != Call::Health).cloned().collect()
}

#[test]
fn lifecycle_ready_health_counts_and_shutdown_after_the_drain() {
    let t0 = Instant::now();
    let s = Duration::from_secs(1);
    let mut sdk = Recorder::default();
    let mut life = Lifecycle::new(s, Duration::from_millis(2500));
    life.tick(t0, 0, &mut sdk);
    assert!(sdk.calls().is_empty(), "nothing before Ready");
    life.ready(&mut sdk);
    life.ready(&mut sdk);
    // Waiting for an allocation: Health once a second, no counts.
    for ms in (0..3000).step_by(50) {
        life.tick(t0 + Duration::from_millis(ms), 0, &mut sdk);
    }
    assert_eq!(sdk.calls(), vec![Call::Ready, Call::Health, Call::Health, Call::Health]);
    assert!(!life.serving());

    let t1 = t0 + 3 * s;
    life.allocated(t1, 100, &mut sdk);
    assert!(life.serving());
    // Players join within the same second: one report after PLAYERS_EVERY, with the latest.
    for (ms, players) in [(50, 1), (100, 2), (500, 3), (1000, 3), (1050, 3), (2100, 120)] {
        life.tick(t1 + Duration::from_millis(ms), players, &mut sdk);
    }
    let p = |n| Call::Count(PLAYERS_COUNTER.into(), n);
    let c = |n| Call::Capacity(PLAYERS_COUNTER.into(), n);
    assert_eq!(without_health(&sdk.calls())[1..], [c(100), p(0), p(3), c(120), p(120)]);

    let t2 = t1 + 3 * s;
    assert!(life.drain(t2));
    assert!(!life.drain(t2), "one drain");
    assert!(!life.serving());
    assert!(
        !life.poll(t2 + Duration::from_millis(2400), &mut sdk),
        "the Lobby has not moved the players yet"
    );
    assert!(life.poll(t2 + Duration::from_millis(2500), &mut sdk));
    assert!(life.poll(t2 + 10 * s, &mut sdk));
    life.tick(t2 + 20 * s, 0, &mut sdk);
    let calls = sdk.calls();
    assert_eq!(calls.iter().filter(|c| **c == Call::Shutdown).count(), 1);
    assert_eq!(calls.last(), Some(&Call::Shutdown), "nothing after Shutdown");
}

#[test]
fn a_drain_before_any_allocation_shuts_down_at_once() {
    let t0 = Instant::now();
    let mut sdk = Recorder::default();
    let mut life = Lifecycle::new(Duration::from_secs(1), Duration::from_secs(5));
    life.ready(&mut sdk);
    life.drain(t0);
    assert!(life.poll(t0, &mut sdk));
    assert_eq!(sdk.calls(), vec![Call::Ready, Call::Shutdown]);
}

#[test]
fn the_allocation_annotation_names_the_game_servers() {
    let c = config(2, 2); // Game servers 0, 1 (zone 0) and 2, 3 (zone 1)
    let view = |v: Option<&str>| GameServerView {
        state: "Allocated".into(),
        annotations: v.map(|v| [(GAMES_ANNOTATION.to_string(), v.to_string())].into()).unwrap_or_default(),
        ..GameServerView::default()
    };
    assert_eq!(assignment(&c, &view(Some("0, 2")), &[]).unwrap(), vec![(0, 0), (2, 1)]);
    assert_eq!(assignment(&c, &view(None), &[3]).unwrap(), vec![(3, 1)]);
    assert_eq!(assignment(&c, &view(None), &[]).unwrap().len(), 4, "no annotation, no --games: all");
    assert!(assignment(&c, &view(Some("4")), &[]).unwrap_err().to_string().contains("does not exist"));
    assert!(assignment(&c, &view(Some("zero")), &[]).unwrap_err().to_string().contains("not numbers"));
}

/// The Bevy wiring: the player count comes from the running Game servers, a drain stops
/// their ticks and heartbeats, and Shutdown ends the app.
#[test]
fn the_plugin_reports_players_from_the_game_tick_and_drains_the_game_servers() {
    use crate::shard::bus::ShardBus;
    use bevy::time::TimeUpdateStrategy;
    use p2pmodel_core::proto::shard::{InternalMessage, PlayerId, Role};

    let c = config(1, 2);
    let mut app = App::new();
    app.add_plugins(MinimalPlugins)
        .insert_resource(TimeUpdateStrategy::ManualDuration(Duration::from_millis(50)));
    crate::shard::add_games(&mut app, &c, &[(0, 0), (1, 0)], None);
    let rec = Recorder::default();
    let mut life = Lifecycle::new(Duration::from_secs(1), Duration::ZERO).with_players_every(Duration::ZERO);
    let mut sdk = rec.clone();
    life.ready(&mut sdk);
    life.allocated(Instant::now(), 100, &mut sdk);
    app.insert_resource(AgonesState { life, sdk: Box::new(rec.clone()) }).add_plugins(AgonesPlugin);
    for _ in 0..3 {
        app.update();
    }
    for (client, g) in [(1u64, 0u32), (2, 1), (3, 1)] {
        app.world_mut().resource_mut::<ShardBus>().send(
            Role::Game(g),
            &InternalMessage::Join {
                client,
                player: PlayerId(client),
                name: format!("p{client}"),
                zone: 0,
                x: 0.0,
                y: 0.0,
                candidates: Vec::new(),
                nat: None,
                party: None,
                ip: None,
            },
        );
    }
    for _ in 0..3 {
        app.update();
    }
    let count = |n| Call::Count(PLAYERS_COUNTER.into(), n);
    assert!(rec.calls().contains(&count(3)), "{:?}", rec.calls());
    assert!(rec.calls().contains(&Call::Health));
    assert!(!rec.calls().contains(&Call::Shutdown));

    app.world_mut().resource_mut::<AgonesState>().life.drain(Instant::now());
    app.update();
    let games = app.world().resource::<GameServers>();
    assert!(!games.alive(0) && !games.alive(1), "drained Game servers stop ticking and heart-beating");
    assert_eq!(rec.calls().iter().filter(|c| **c == Call::Shutdown).count(), 1);
    assert!(app.should_exit().is_some());
}

/// The real SDK client against an SDK server on loopback: the calls arrive, in order.
#[test]
fn the_sdk_client_speaks_the_agones_sdk_protocol() {
    let server = fake::FakeSdk::start();
    let (mut sdk, worker) = SdkClient::connect(Some(server.port)).expect("connects to the fake SDK server");
    let t0 = Instant::now();
    let s = Duration::from_secs(1);
    let mut life = Lifecycle::new(s, Duration::from_secs(2));
    life.ready(&mut sdk);
    life.tick(t0, 0, &mut sdk);
    // The watch sees Ready, then the allocation with its annotation.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let allocated = loop {
        assert!(Instant::now() < deadline, "no Allocated update; saw {seen:?}");
        if let Some(gs) = worker.next_update(Duration::from_millis(100)).unwrap() {
            if gs.state == "Ready" {
                server.allocate(&[(GAMES_ANNOTATION, "1")]);
            }
            seen.push(gs.state.clone());
            if gs.state == "Allocated" {
                break gs;
            }
        }
    };
    assert_eq!(allocated.name, "p2pmodel-test-gs");
    let mut worker = worker;
    worker.stop_watching();
    assert!(worker.next_update(Duration::ZERO).is_err());
    let c = config(1, 2);
    assert_eq!(assignment(&c, &allocated, &[]).unwrap(), vec![(1, 0)]);
    life.allocated(t0 + s, 50, &mut sdk);
    life.tick(t0 + 3 * s, 7, &mut sdk);
    life.tick(t0 + 4 * s, 7, &mut sdk);
    life.drain(t0 + 5 * s);
    assert!(life.poll(t0 + 7 * s, &mut sdk));
    drop(sdk);
    worker.finish();
    let calls = server
        .wait_for(|c| c.contains(&Call::Shutdown) && c.iter().filter(|c| **c == Call::Health).count() >= 3);
    let pos = |x: &Call| calls.iter().position(|c| c == x).unwrap();
    let p = |n| Call::Count(PLAYERS_COUNTER.into(), n);
    let cap = Call::Capacity(PLAYERS_COUNTER.into(), 50);
    assert_eq!(calls[0], Call::GetGameServer, "the SDK checks the connection first");
    let ordered: Vec<Call> = without_health(&calls)
        .into_iter()
        .filter(|c| !matches!(c, Call::GetGameServer | Call::Watch | Call::Other(_)))
        .collect();
    assert_eq!(ordered, vec![Call::Ready, cap, p(0), p(7), Call::Shutdown], "{calls:?}");
    let healths: Vec<usize> =
        calls.iter().enumerate().filter(|(_, c)| **c == Call::Health).map(|(i, _)| i).collect();
    assert!(healths.iter().all(|i| *i > pos(&Call::Ready)), "Health only after Ready: {calls:?}");
    assert_eq!(server.counter(), (7, 50), "the players Counter on the GameServer");
    assert_eq!(server.state(), "Shutdown");
}

/// The wait before an allocation, with the real SDK: Ready, Health meanwhile, then the
/// allocated GameServer with its annotation; or Shutdown when told to stop first.
#[test]
fn waiting_for_an_allocation_sends_ready_and_health_and_returns_the_allocation() {
    let server = fake::FakeSdk::start();
    let (mut sdk, worker) = SdkClient::connect(Some(server.port)).unwrap();
    let mut life = Lifecycle::new(Duration::ZERO, Duration::from_secs(5));
    let s2 = server.clone();
    let mut polls = 0;
    let allocate_after_3_healths = || {
        polls += 1;
        if s2.calls().iter().filter(|c| **c == Call::Health).count() >= 3 && s2.state() == "Ready" {
            s2.allocate(&[(GAMES_ANNOTATION, "0")]);
        }
        assert!(polls < 200, "no allocation seen");
        false
    };
    let gs = wait_for_allocation(&mut life, &mut sdk, &worker, allocate_after_3_healths).unwrap().unwrap();
    assert_eq!(gs.state, "Allocated");
    assert_eq!(gs.annotations.get(GAMES_ANNOTATION).map(String::as_str), Some("0"));
    assert_eq!(life.phase(), Phase::Ready, "allocated() comes once the Game servers run");

    // A second process told to stop before any allocation: Ready, then Shutdown.
    let other = fake::FakeSdk::start();
    let (mut sdk2, worker2) = SdkClient::connect(Some(other.port)).unwrap();
    let mut life2 = Lifecycle::new(Duration::from_secs(1), Duration::from_secs(5));
    let mut n = 0;
    let got = wait_for_allocation(&mut life2, &mut sdk2, &worker2, || {
        n += 1;
        n > 3
    })
    .unwrap();
    assert!(got.is_none());
    drop(sdk2);
    worker2.finish();
    let calls = other.wait_for(|c| c.contains(&Call::Shutdown));
    let unary: Vec<Call> =
        without_health(&calls).into_iter().filter(|c| matches!(c, Call::Ready | Call::Shutdown)).collect();
    assert_eq!(unary, vec![Call::Ready, Call::Shutdown]);
    assert_eq!(other.state(), "Shutdown");
}

/// A container restarted inside an allocation finds its GameServer Allocated: it takes the
/// allocation's Game servers again and does not say Ready (that would return it to the pool).
#[test]
fn a_restarted_container_of_an_allocated_pod_resumes_without_ready() {
    let server = fake::FakeSdk::start_in("Allocated", &[(GAMES_ANNOTATION, "0,1")]);
    let (mut sdk, worker) = SdkClient::connect(Some(server.port)).unwrap();
    let mut life = Lifecycle::new(Duration::from_secs(1), Duration::from_secs(5));
    let gs = wait_for_allocation(&mut life, &mut sdk, &worker, || false).unwrap().unwrap();
    assert_eq!(assignment(&config(1, 2), &gs, &[]).unwrap(), vec![(0, 0), (1, 0)]);
    life.allocated(Instant::now(), 100, &mut sdk);
    drop(sdk);
    worker.finish();
    let calls = server.calls();
    assert!(!calls.contains(&Call::Ready), "{calls:?}");
    assert!(calls.contains(&Call::Capacity(PLAYERS_COUNTER.into(), 100)), "{calls:?}");
    assert_eq!(server.state(), "Allocated");
}

/// End to end over real sockets: a Game server process allocated through the SDK links to a
/// real Lobby, which hears its Game server; on a drain the Lobby declares it dead (so it moves
/// its players) before Shutdown reaches Agones.
#[test]
fn an_allocated_game_server_joins_the_lobby_and_drains_before_shutdown() {
    use crate::shard::lobby::LobbyState;
    use crate::shard::remote::{RemoteBus, RemoteBusPlugin};
    use p2pmodel_core::proto::shard::Role;

    let mut c = config(1, 2);
    c.lobby.heartbeat = Duration::from_millis(50);
    c.lobby.heartbeat_timeout = Duration::from_millis(400);
    let mut lobby = App::new();
    lobby.add_plugins(MinimalPlugins);
    crate::shard::add_lobby(&mut lobby, &c, "127.0.0.1:3478".parse().unwrap()).unwrap();
    let (bus, bound) = RemoteBus::listen(
        vec![Role::Lobby],
        "127.0.0.1:0".parse().unwrap(),
        c.shard.secret,
        c.lobby.heartbeat,
        c.lobby.heartbeat_timeout,
    )
    .unwrap();
    lobby.insert_resource(bus).add_plugins(RemoteBusPlugin);
    c.lobby.internal = bound;

    let server = fake::FakeSdk::start();
    let (mut sdk, worker) = SdkClient::connect(Some(server.port)).unwrap();
    let mut life = Lifecycle::new(Duration::from_millis(200), drain_wait(&c));
    let s2 = server.clone();
    let gs = wait_for_allocation(&mut life, &mut sdk, &worker, || {
        if s2.state() == "Ready" {
            s2.allocate(&[(GAMES_ANNOTATION, "1")]);
        }
        false
    })
    .unwrap()
    .unwrap();
    let games = assignment(&c, &gs, &[]).unwrap();
    assert_eq!(games, vec![(1, 0)]);
    let mut game = App::new();
    game.add_plugins(MinimalPlugins);
    add_allocated_games(&mut game, &c, &games, life, Box::new(sdk)).unwrap();

    let heard =
        |lobby: &App| lobby.world().resource::<LobbyState>().games.get(&1).map(|g| (g.heard, g.alive));
    let deadline = Instant::now() + Duration::from_secs(10);
    while heard(&lobby) != Some((true, true)) {
        assert!(Instant::now() < deadline, "the Lobby never heard Game server 1");
        lobby.update();
        game.update();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(heard(&lobby).map(|h| h.0), Some(true));
    assert!(!lobby.world().resource::<LobbyState>().games[&0].heard, "Game server 0 was not allocated here");

    let drained_at = Instant::now();
    game.world_mut().resource_mut::<AgonesState>().life.drain(drained_at);
    let mut dead_at = None;
    while game.should_exit().is_none() {
        assert!(Instant::now() < deadline, "no Shutdown after the drain");
        lobby.update();
        game.update();
        if dead_at.is_none() && heard(&lobby) == Some((true, false)) {
            dead_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let shutdown_at = Instant::now();
    let dead_at = dead_at.expect("the Lobby declared the drained Game server dead before Shutdown");
    assert!(dead_at - drained_at >= c.lobby.heartbeat_timeout / 2, "{:?}", dead_at - drained_at);
    assert!(shutdown_at >= drained_at + drain_wait(&c));
    drop(game);
    worker.finish();
    let calls = server.wait_for(|c| c.contains(&Call::Shutdown));
    let ordered: Vec<Call> = without_health(&calls)
        .into_iter()
        .filter(|c| !matches!(c, Call::GetGameServer | Call::Watch | Call::Other(_)))
        .collect();
    let p = |n| Call::Count(PLAYERS_COUNTER.into(), n);
    assert_eq!(ordered, vec![Call::Ready, Call::Capacity(PLAYERS_COUNTER.into(), 50), p(0), Call::Shutdown]);
}

/// An Agones SDK server (the sidecar's gRPC protocol) for tests, written with tonic's server
/// API (the `agones` crate generates only the client). Messages are hand-declared with the
/// field numbers of the SDK's `sdk.proto` and `beta.proto` (Agones 1.61); the GameServer is
/// the crate's own type.
// tonic's handlers return `Result<_, tonic::Status>` (a large error type we do not choose).
#[allow(clippy::result_large_err)]
mod fake {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use std::time::{Duration, Instant};

    use tonic::body::BoxBody;
    use tonic::codec::ProstCodec;
    use tonic::codegen::{BoxFuture, Service, StdError, http, tokio_stream::Stream};
    use tonic::server::{Grpc, NamedService};
    use tonic::{Request, Response, Status, Streaming};

    use super::Call;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Counter {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(int64, tag = "2")]
        pub count: i64,
        #[prost(int64, tag = "3")]
        pub capacity: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CounterUpdateRequest {
        #[prost(string, tag = "1")]
        pub name: String,
        /// google.protobuf.Int64Value
        #[prost(message, optional, tag = "2")]
        pub count: Option<i64>,
        /// google.protobuf.Int64Value
        #[prost(message, optional, tag = "3")]
        pub capacity: Option<i64>,
        #[prost(int64, tag = "4")]
        pub count_diff: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UpdateCounterRequest {
        #[prost(message, optional, tag = "1")]
        pub counter_update_request: Option<CounterUpdateRequest>,
    }

    struct State {
        calls: Vec<Call>,
        gs: agones::GameServer,
        counter: (i64, i64),
        watchers: Vec<tokio::sync::mpsc::UnboundedSender<agones::GameServer>>,
    }

    /// The server; it runs until the test process ends.
    #[derive(Clone)]
    pub struct FakeSdk {
        state: Arc<Mutex<State>>,
        /// Its port on 127.0.0.1.
        pub port: u16,
    }

    impl FakeSdk {
        /// Start on a free loopback port, GameServer `p2pmodel-test-gs` in state `Scheduled`.
        pub fn start() -> FakeSdk {
            FakeSdk::start_in("Scheduled", &[])
        }

        /// Start with the GameServer in `state` with `annotations`.
        pub fn start_in(state: &str, annotations: &[(&str, &str)]) -> FakeSdk {
            let meta = agones::ObjectMeta {
                name: "p2pmodel-test-gs".into(),
                annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..Default::default()
            };
            let gs = agones::GameServer {
                object_meta: Some(meta),
                spec: None,
                status: Some(agones::Status { state: state.into(), ..Default::default() }),
            };
            let state =
                Arc::new(Mutex::new(State { calls: Vec::new(), gs, counter: (0, 0), watchers: Vec::new() }));
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            listener.set_nonblocking(true).unwrap();
            let fake = FakeSdk { state, port };
            let f = fake.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let incoming =
                        tonic::transport::server::TcpIncoming::from_listener(listener, true, None).unwrap();
                    let _ = tonic::transport::Server::builder()
                        .add_service(Sdk(f.clone()))
                        .add_service(Beta(f))
                        .serve_with_incoming(incoming)
                        .await;
                });
            });
            fake
        }

        fn record(&self, c: Call) {
            self.state.lock().unwrap().calls.push(c);
        }

        fn set_state(&self, state: &str, annotations: &[(&str, &str)]) {
            let mut st = self.state.lock().unwrap();
            let gs = &mut st.gs;
            if let Some(s) = gs.status.as_mut() {
                s.state = state.into();
            }
            if let Some(m) = gs.object_meta.as_mut() {
                m.annotations.extend(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            }
            let gs = gs.clone();
            st.watchers.retain(|w| w.send(gs.clone()).is_ok());
        }

        /// What an allocation does: state `Allocated` and the allocation's annotations.
        pub fn allocate(&self, annotations: &[(&str, &str)]) {
            self.set_state("Allocated", annotations);
        }

        /// The GameServer's state.
        pub fn state(&self) -> String {
            self.state.lock().unwrap().gs.status.as_ref().map(|s| s.state.clone()).unwrap_or_default()
        }

        /// The players Counter: (count, capacity).
        pub fn counter(&self) -> (i64, i64) {
            self.state.lock().unwrap().counter
        }

        /// The calls so far.
        pub fn calls(&self) -> Vec<Call> {
            self.state.lock().unwrap().calls.clone()
        }

        /// The calls so far, once `done` holds (at most 10 s).
        pub fn wait_for(&self, done: impl Fn(&[Call]) -> bool) -> Vec<Call> {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let calls = self.state.lock().unwrap().calls.clone();
                if done(&calls) || Instant::now() > deadline {
                    return calls;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// A synchronous handler closure as a tower Service (what tonic's method wrappers are).
    struct Handler<F>(F);

    impl<F, M1, M2> Service<Request<M1>> for Handler<F>
    where
        F: FnMut(Request<M1>) -> Result<Response<M2>, Status>,
    {
        type Response = Response<M2>;
        type Error = Status;
        type Future = std::future::Ready<Result<Response<M2>, Status>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, r: Request<M1>) -> Self::Future {
            std::future::ready((self.0)(r))
        }
    }

    /// A [`Handler`], the closure's signature fixed by the bound.
    fn handler<F, M1, M2>(f: F) -> Handler<F>
    where
        F: FnMut(Request<M1>) -> Result<Response<M2>, Status>,
    {
        Handler(f)
    }

    /// The Health stream: one recorded call per message.
    struct Health(FakeSdk);

    impl Service<Request<Streaming<Empty>>> for Health {
        type Response = Response<Empty>;
        type Error = Status;
        type Future = BoxFuture<Response<Empty>, Status>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, r: Request<Streaming<Empty>>) -> Self::Future {
            let f = self.0.clone();
            Box::pin(async move {
                let mut s = r.into_inner();
                while let Ok(Some(_)) = s.message().await {
                    f.record(Call::Health);
                }
                Ok(Response::new(Empty {}))
            })
        }
    }

    /// The WatchGameServer response stream.
    struct Updates(tokio::sync::mpsc::UnboundedReceiver<agones::GameServer>);

    impl Stream for Updates {
        type Item = Result<agones::GameServer, Status>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx).map(|o| o.map(Ok))
        }
    }

    fn empty(
        f: &FakeSdk,
        call: Call,
        state: Option<&'static str>,
    ) -> Handler<impl FnMut(Request<Empty>) -> Result<Response<Empty>, Status>> {
        let f = f.clone();
        handler(move |_r: Request<Empty>| {
            f.record(call.clone());
            if let Some(s) = state {
                f.set_state(s, &[]);
            }
            Ok(Response::new(Empty {}))
        })
    }

    #[derive(Clone)]
    struct Sdk(FakeSdk);

    impl NamedService for Sdk {
        const NAME: &'static str = "agones.dev.sdk.SDK";
    }

    impl<B> Service<http::Request<B>> for Sdk
    where
        B: tonic::codegen::Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        type Response = http::Response<BoxBody>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Infallible>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            let f = self.0.clone();
            Box::pin(async move {
                let method = req.uri().path().rsplit('/').next().unwrap_or_default().to_string();
                let codec = ProstCodec::<Empty, Empty>::default();
                Ok(match method.as_str() {
                    "Ready" => Grpc::new(codec).unary(empty(&f, Call::Ready, Some("Ready")), req).await,
                    "Shutdown" => {
                        Grpc::new(codec).unary(empty(&f, Call::Shutdown, Some("Shutdown")), req).await
                    }
                    "Allocate" => {
                        Grpc::new(codec).unary(empty(&f, Call::Other(method), Some("Allocated")), req).await
                    }
                    "Health" => Grpc::new(codec).client_streaming(Health(f), req).await,
                    "GetGameServer" => {
                        let h = handler(move |_r: Request<Empty>| {
                            f.record(Call::GetGameServer);
                            let gs = f.state.lock().unwrap().gs.clone();
                            Ok(Response::new(gs))
                        });
                        Grpc::new(ProstCodec::<agones::GameServer, Empty>::default()).unary(h, req).await
                    }
                    "WatchGameServer" => {
                        let h = handler(move |_r: Request<Empty>| {
                            f.record(Call::Watch);
                            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                            let mut st = f.state.lock().unwrap();
                            let _ = tx.send(st.gs.clone());
                            st.watchers.push(tx);
                            Ok(Response::new(Updates(rx)))
                        });
                        Grpc::new(ProstCodec::<agones::GameServer, Empty>::default())
                            .server_streaming(h, req)
                            .await
                    }
                    _ => {
                        f.record(Call::Other(method));
                        Status::unimplemented("not in the fake").into_http()
                    }
                })
            })
        }
    }

    #[derive(Clone)]
    struct Beta(FakeSdk);

    impl NamedService for Beta {
        const NAME: &'static str = "agones.dev.sdk.beta.SDK";
    }

    impl<B> Service<http::Request<B>> for Beta
    where
        B: tonic::codegen::Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        type Response = http::Response<BoxBody>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Infallible>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            let f = self.0.clone();
            Box::pin(async move {
                let method = req.uri().path().rsplit('/').next().unwrap_or_default().to_string();
                Ok(match method.as_str() {
                    "UpdateCounter" => {
                        let h = handler(move |r: Request<UpdateCounterRequest>| {
                            let u = r.into_inner().counter_update_request.unwrap_or_default();
                            let mut st = f.state.lock().unwrap();
                            if u.name != super::PLAYERS_COUNTER {
                                return Err(Status::not_found("no such counter"));
                            }
                            if let Some(c) = u.capacity {
                                st.calls.push(Call::Capacity(u.name.clone(), c));
                                st.counter.1 = c;
                            }
                            if let Some(n) = u.count {
                                st.calls.push(Call::Count(u.name.clone(), n));
                                st.counter.0 = n;
                            }
                            let (count, capacity) = st.counter;
                            let out = Counter { name: u.name, count, capacity };
                            Ok(Response::new(out))
                        });
                        Grpc::new(ProstCodec::<Counter, UpdateCounterRequest>::default()).unary(h, req).await
                    }
                    _ => {
                        f.record(Call::Other(method));
                        Status::unimplemented("not in the fake").into_http()
                    }
                })
            })
        }
    }
}
