#![no_main]
//! cargo-fuzz entry for the `relay_datagram` target of `p2pmodel fuzz`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| p2pmodel_servers::fuzz::targets::relay_datagram(data));
