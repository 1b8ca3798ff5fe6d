#![no_main]
//! cargo-fuzz entry for the `game_messages` target of `p2pmodel fuzz`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| p2pmodel_servers::fuzz::targets::game_messages(data));
