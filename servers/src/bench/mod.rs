//! `p2pmodel bench relay` (being written).
/// Arguments of `p2pmodel bench relay`.
#[derive(clap::Args, Debug)]
pub struct RelayBenchArgs {}
/// Run it.
pub fn run_relay_bench(_a: &RelayBenchArgs) -> Result<(), String> {
    Ok(())
}
