#![no_main]
//! cargo-fuzz entry for the `shard_client_message` target of `p2pmodel fuzz`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| p2pmodel_servers::fuzz::targets::shard_client_message(data));
