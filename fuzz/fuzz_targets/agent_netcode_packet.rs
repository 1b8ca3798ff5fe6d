#![no_main]
//! cargo-fuzz entry for the `agent_netcode_packet` target of `p2pmodel fuzz`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| p2pmodel_servers::fuzz::targets::agent_netcode_packet(data));
