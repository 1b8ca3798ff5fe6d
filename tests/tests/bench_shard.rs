//! `p2pmodel bench shard` in small: 20 clients against an in-process shard, P2P off then on.
//! Checks that the load generator really plays the game (logins, zone entry, introductions,
//! peer state delivered both ways) and that P2P takes traffic off the servers.

use clap::Parser;
use p2pmodel_servers::bench::shard::{ShardBenchArgs, run_count};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ShardBenchArgs,
}

#[test]
fn bench_shard_small_run_logs_in_meshes_and_offloads() {
    let cli =
        Cli::parse_from(["bench", "--clients", "20", "--seconds", "2", "--warmup", "1", "--p2p", "both"]);
    let (off, on) = run_count(&cli.args, 20).expect("bench runs");
    let (off, on) = (off.expect("off phase"), on.expect("on phase"));
    for r in [&off, &on] {
        assert_eq!(r.connected, 20, "every client connected: {r:?}");
        assert_eq!(r.in_zone, 20, "every client in the zone: {r:?}");
        assert!(r.introductions >= 20, "clusters of 5-15 introduce every member: {r:?}");
        assert!(r.state_recv_per_s > 0.0, "peer state arrives: {r:?}");
        assert!(r.ticks > 0 && r.tick_p99_ms.is_some(), "game ticks timed: {r:?}");
        assert!(r.route_in_p99_ms.is_some(), "routing timed: {r:?}");
        assert!(r.agent_in_bps > 0.0 && r.agent_out_bps > 0.0);
    }
    // Through the Game server, the state is forwarded as FromPeer: the Game's bus traffic
    // carries it; over the mesh it does not.
    assert!(off.game_in_bps > 4.0 * on.game_in_bps, "off {} vs on {}", off.game_in_bps, on.game_in_bps);
    assert!(on.links_direct + on.links_relayed > 0, "mesh links have a path: {on:?}");
    let offload = on.egress_bps / off.egress_bps;
    assert!(offload < 1.0, "P2P takes egress off the shard: on {} / off {}", on.egress_bps, off.egress_bps);
}
