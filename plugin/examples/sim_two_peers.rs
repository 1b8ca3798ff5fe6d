//! Two Bevy apps behind simulated home routers (port-restricted cone and full cone) meet
//! through the shard (its real roles, in memory), talk through the relay at once and switch to a direct path
//! when hole punching succeeds. Everything runs in virtual time: ~8 s of play in well under
//! a second. `cargo run -p bevy_p2pmodel --example sim_two_peers`
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bevy::prelude::*;
use bevy_p2pmodel::plugins::sim::{SimPunchServer, SimShard, SimStepper};
use bevy_p2pmodel::prelude::*;
use bevy_p2pmodel::sim::{HostConfig, LinkParams, NatConfig, Sim};
use serde::{Deserialize, Serialize};

/// What the players send each other.
#[derive(Debug, Serialize, Deserialize)]
struct Wave {
    from: String,
    n: u32,
}

fn main() {
    let mut sim = Sim::new(42);
    sim.set_core(LinkParams::with_latency(Duration::from_millis(10)));
    let punch = SimPunchServer::add_to(&mut sim, [203, 0, 113, 1].into(), [203, 0, 113, 2].into(), 42);
    // The shard's roles (Agent routing, Lobby, Game servers) on a host of their own.
    let shard = SimShard::add_to(&mut sim, [203, 0, 113, 9].into(), &punch, 42, |_| {});
    let home = sim.add_nat(NatConfig::port_restricted().public_ip([198, 18, 100, 1]));
    let cafe = sim.add_nat(NatConfig::full_cone().public_ip([198, 18, 100, 2]));
    let wifi = LinkParams::with_latency(Duration::from_millis(15)).jitter(Duration::from_millis(3));

    let mut st = SimStepper::new(Rc::new(RefCell::new(sim)), Duration::from_millis(10));
    // Both sites use the same private address, as real homes do.
    for (name, nat) in [("ana", home), ("bo", cafe)] {
        let host = HostConfig::behind(nat, [192, 168, 0, 2]).uplink(wifi);
        let app = st.client_app(name, host, &shard, punch.clock);
        st.apps[app].add_systems(Update, (wave, report));
    }
    st.run_frames(800);
    println!("done: {:?} of virtual time in {} frames", st.elapsed(), st.frames());
}

/// Every half second of play, wave at every peer.
fn wave(time: Res<Time>, me: Res<LocalPlayer>, mut n: Local<u32>, mut sender: P2pSender) {
    if time.elapsed_secs() * 2.0 >= *n as f32 {
        *n += 1;
        let _ = sender.broadcast(Channel::Reliable, &Wave { from: me.name.clone(), n: *n });
    }
}

fn report(
    me: Res<LocalPlayer>,
    time: Res<Time>,
    mut state: MessageReader<ShardEvent>,
    mut paths: MessageReader<PeerPathChanged>,
    mut got: MessageReader<P2pReceived>,
) {
    let t = time.elapsed_secs();
    for e in state.read() {
        println!("[{t:5.2}s] {}: shard {e:?}", me.name);
    }
    for p in paths.read() {
        println!("[{t:5.2}s] {}: path to {:?} is {} via {:?}", me.name, p.player, p.path.as_str(), p.remote);
    }
    for m in got.read() {
        let route = if m.p2p { "mesh" } else { "server" };
        println!("[{t:5.2}s] {}: got {:?} over the {route}", me.name, m.decode::<Wave>());
    }
}
