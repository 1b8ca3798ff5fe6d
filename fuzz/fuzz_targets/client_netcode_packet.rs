#![no_main]
//! cargo-fuzz entry for the `client_netcode_packet` target of `p2pmodel fuzz`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| p2pmodel_servers::fuzz::targets::client_netcode_packet(data));
