#![no_main]
//! cargo-fuzz entry for the `relay_stun_hook` target of `p2pmodel fuzz`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| p2pmodel_servers::fuzz::targets::relay_stun_hook(data));
