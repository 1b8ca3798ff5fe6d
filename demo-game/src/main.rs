//! The P2PModel demo MMO client. The windowed game and the headless bot arrive with the
//! plugin/demo issue; until then this says so instead of pretending.

fn main() {
    eprintln!(
        "p2pmodel-demo: the playable demo is not built yet.\n\
         What works today:\n\
         - `cargo test`: the seed scenarios TC-01…TC-07 and the NAT class matrix in the simulator,\n\
           the relay and the shard end to end over loopback;\n\
         - `cargo run --release -p p2pmodel-servers -- shard all --config assets/shard.toml`: a whole\n\
           shard (relay + STUN, Agent with login, Lobby, Game servers) on this host;\n\
         - `cargo run -p p2pmodel-tests --release --bin nat-matrix`: the NAT class matrix."
    );
}
