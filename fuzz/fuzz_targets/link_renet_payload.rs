#![no_main]
//! cargo-fuzz entry for the `link_renet_payload` target of `p2pmodel fuzz`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| p2pmodel_servers::fuzz::targets::link_renet_payload(data));
