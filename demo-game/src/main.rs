//! The P2PModel demo MMO client. The windowed game and the headless bot arrive with the
//! plugin/demo issue; until then this says so instead of pretending.

fn main() {
    eprintln!(
        "p2pmodel-demo: the playable demo is not built yet.\n\
         What works today: the P2P core and its simulator — run `cargo test` to see the seed\n\
         scenarios TC-01…TC-07 pass in simulation, and `cargo run -p p2pmodel-tests --release --bin nat-matrix`\n\
         to print the NAT class matrix."
    );
    std::process::exit(0);
}
