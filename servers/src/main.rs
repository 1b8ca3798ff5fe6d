//! `p2pmodel`: run shard roles and operator tools.

use clap::Parser;

/// P2PModel shard servers and operator tools (commands arrive with the shard issues).
#[derive(Parser, Debug)]
#[command(name = "p2pmodel", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("p2pmodel: no shard roles yet; see README.md");
}
