//! The plugins over the simulator: a [`MeshIo`] backed by a simulated host, the shard (the
//! real roles, [`SimShard`]) behind an in-memory transport, a punch server (STUN + relay) and
//! a stepper that advances the simulator and the
//! Bevy apps together in virtual time.
//!
//! The apps share one simulator through `Rc<RefCell<_>>`, which is why [`MeshSocket`] is a
//! `NonSend` resource. A frame of the [`SimStepper`] runs the network for one frame's time,
//! then updates each app with that much manual time, so a test of two players behind NATs
//! runs in milliseconds and gives the same result on every run.
//!
//! ```no_run
//! # use std::{cell::RefCell, rc::Rc, time::Duration};
//! # use bevy_p2pmodel::plugins::sim::*;
//! # use bevy_p2pmodel::sim::{HostConfig, NatConfig, Sim};
//! let mut sim = Sim::new(1);
//! let punch = SimPunchServer::add_to(&mut sim, [203, 0, 113, 1].into(), [203, 0, 113, 2].into(), 1);
//! let shard = SimShard::add_to(&mut sim, [203, 0, 113, 9].into(), &punch, 1, |_| {});
//! let nat = sim.add_nat(NatConfig::port_restricted().public_ip([198, 51, 100, 1]));
//! let mut stepper = SimStepper::new(Rc::new(RefCell::new(sim)), Duration::from_millis(10));
//! let ana = stepper.client_app("ana", HostConfig::behind(nat, [192, 168, 0, 2]), &shard, punch.clock);
//! stepper.run_frames(100);
//! ```

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy::state::app::StatesPlugin;
use bevy::time::TimeUpdateStrategy;

use super::io::{MeshIo, MeshSocket};
use super::mesh::P2pMeshPlugin;
use super::shard::{ShardClientPlugin, ShardTransport};
use crate::endpoint::{ClockAnchor, Endpoint, Transmit};
use crate::proto::shard::{ClientMessage, ShardMessage};
use crate::sim::{HostConfig, HostId, Sim};

/// Most datagrams a [`SimMailbox`] holds before it drops (a stalled app must not grow
/// memory without bound).
pub const MAILBOX_CAPACITY: usize = 65_536;

/// A simulated host that only queues: the simulator delivers into its inbox, the app's
/// [`SimMeshIo`] drains it and fills the outbox the simulator sends from.
#[derive(Debug, Default)]
pub struct SimMailbox {
    inbox: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    outbox: VecDeque<Transmit>,
    /// Datagrams dropped because the inbox was full.
    pub dropped: u64,
}

impl Endpoint for SimMailbox {
    fn handle_datagram(&mut self, _now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]) {
        if self.inbox.len() >= MAILBOX_CAPACITY {
            self.dropped += 1;
            return;
        }
        self.inbox.push_back((local, from, data.to_vec()));
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

/// A [`MeshIo`] on a simulated host: datagrams cross the simulated NATs, `now()` is the
/// simulator's clock. `W` is the simulator or anything that owns one (a test world).
pub struct SimMeshIo<W: AsRef<Sim> + AsMut<Sim> + 'static = Sim> {
    net: Rc<RefCell<W>>,
    host: HostId,
    anchor: ClockAnchor,
}

impl<W: AsRef<Sim> + AsMut<Sim> + 'static> SimMeshIo<W> {
    /// Add a mailbox host with `config` to the simulator and return its socket. `anchor`
    /// ties the simulator's clock to Unix time (use the relay's, so tokens agree).
    pub fn attach(net: &Rc<RefCell<W>>, config: HostConfig, anchor: ClockAnchor) -> Self {
        let host = net.borrow_mut().as_mut().add_host(config, SimMailbox::default());
        SimMeshIo { net: net.clone(), host, anchor }
    }

    /// The simulated host.
    pub fn host(&self) -> HostId {
        self.host
    }
}

impl<W: AsRef<Sim> + AsMut<Sim> + 'static> MeshIo for SimMeshIo<W> {
    fn now(&self) -> Instant {
        self.net.borrow().as_ref().now()
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        vec![self.net.borrow().as_ref().host_addr(self.host)]
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<(usize, SocketAddr, SocketAddr)> {
        let mut net = self.net.borrow_mut();
        let mailbox = net.as_mut().try_node_mut::<SimMailbox>(self.host)?;
        let (local, from, data) = mailbox.inbox.pop_front()?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Some((n, from, local))
    }

    fn send(&mut self, t: &Transmit) {
        let mut net = self.net.borrow_mut();
        if let Some(mailbox) = net.as_mut().try_node_mut::<SimMailbox>(self.host) {
            mailbox.outbox.push_back(t.clone());
        }
    }

    fn clock_anchor(&self) -> ClockAnchor {
        self.anchor
    }
}

pub use crate::sim::hosts::{
    PunchInfo as SimPunchInfo, PunchServer as SimPunchServer, SIM_UNIX_START, SimShard, public_ip,
};

/// One client's connection to a [`SimShard`]: the real shard roles behind an in-memory
/// transport.
#[derive(Debug)]
pub struct SimShardTransport {
    shard: SimShard,
    client: u64,
}

impl SimShardTransport {
    /// A connection to `shard` as `name` from public IP `ip` (connected at once).
    pub fn new(shard: &SimShard, name: &str, ip: Option<IpAddr>) -> Self {
        SimShardTransport { shard: shard.clone(), client: shard.connect(name, ip) }
    }

    /// The shard's id of this connection.
    pub fn client(&self) -> u64 {
        self.client
    }
}

impl ShardTransport for SimShardTransport {
    fn is_connected(&self) -> bool {
        self.shard.is_connected(self.client)
    }
    fn send(&mut self, msg: &ClientMessage, _reliable: bool) {
        self.shard.send(self.client, msg);
    }
    fn receive(&mut self) -> Option<ShardMessage> {
        self.shard.receive(self.client)
    }
    fn bytes_in(&self) -> u64 {
        self.shard.bytes(self.client).0
    }
    fn bytes_out(&self) -> u64 {
        self.shard.bytes(self.client).1
    }
    fn disconnect(&mut self) {
        self.shard.disconnect(self.client);
    }
    fn connect(&mut self) {
        self.shard.reconnect(self.client);
    }
}

/// Steps the simulator and a set of Bevy apps together: each frame runs the network for
/// `frame` of virtual time, then updates every app with `frame` of manual time.
pub struct SimStepper<W: AsRef<Sim> + AsMut<Sim> + 'static = Sim> {
    /// The shared simulator (or the world owning it).
    pub net: Rc<RefCell<W>>,
    /// The apps, in the order they were added.
    pub apps: Vec<App>,
    /// One frame.
    pub frame: Duration,
    frames: u64,
}

impl<W: AsRef<Sim> + AsMut<Sim> + 'static> SimStepper<W> {
    /// A stepper with no apps yet.
    pub fn new(net: Rc<RefCell<W>>, frame: Duration) -> Self {
        SimStepper { net, apps: Vec::new(), frame, frames: 0 }
    }

    /// Add an app: it gets manual time of one frame per update and is finished (plugins'
    /// `finish`/`cleanup`). Returns its index.
    pub fn add_app(&mut self, mut app: App) -> usize {
        app.insert_resource(TimeUpdateStrategy::ManualDuration(self.frame));
        app.finish();
        app.cleanup();
        self.apps.push(app);
        self.apps.len() - 1
    }

    /// A headless game client on a new simulated host: `MinimalPlugins`, `StatesPlugin`,
    /// the mesh over the simulator and the shard plugin over `shard`. Returns its index.
    pub fn client_app(
        &mut self,
        name: &str,
        host: HostConfig,
        shard: &SimShard,
        clock: ClockAnchor,
    ) -> usize {
        let mut mesh = P2pMeshPlugin::new(name);
        mesh.client.seed = self.apps.len() as u64 + 1;
        self.client_app_with(mesh, host, shard, clock, Some(0))
    }

    /// [`SimStepper::client_app`] with your own mesh settings and auto zone.
    pub fn client_app_with(
        &mut self,
        mesh: P2pMeshPlugin,
        host: HostConfig,
        shard: &SimShard,
        clock: ClockAnchor,
        auto_zone: Option<u32>,
    ) -> usize {
        let mut app = App::new();
        app.add_plugins((MinimalPlugins, StatesPlugin));
        let ip = public_ip(self.net.borrow().as_ref(), &host);
        let transport = SimShardTransport::new(shard, &mesh.client.name, ip);
        app.insert_non_send(MeshSocket(Box::new(SimMeshIo::attach(&self.net, host, clock))));
        app.add_plugins(mesh);
        let plugin = ShardClientPlugin { auto_zone, ..ShardClientPlugin::default() };
        app.add_plugins(plugin.with_transport(transport));
        self.add_app(app)
    }

    /// Run one frame.
    pub fn step(&mut self) {
        let frame = self.frame;
        self.net.borrow_mut().as_mut().run_for(frame);
        for app in &mut self.apps {
            app.update();
        }
        self.frames += 1;
    }

    /// Run `n` frames.
    pub fn run_frames(&mut self, n: u64) {
        for _ in 0..n {
            self.step();
        }
    }

    /// Step until `cond` holds, at most `max_frames`; returns whether it held.
    pub fn run_until(&mut self, max_frames: u64, mut cond: impl FnMut(&mut Self) -> bool) -> bool {
        for _ in 0..max_frames {
            if cond(self) {
                return true;
            }
            self.step();
        }
        cond(self)
    }

    /// Frames run so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Virtual time elapsed in the simulator.
    pub fn elapsed(&self) -> Duration {
        self.net.borrow().as_ref().elapsed()
    }

    /// One app's world.
    pub fn world(&self, app: usize) -> &World {
        self.apps[app].world()
    }

    /// One app's world, mutably.
    pub fn world_mut(&mut self, app: usize) -> &mut World {
        self.apps[app].world_mut()
    }
}
