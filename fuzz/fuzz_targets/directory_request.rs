#![no_main]
//! cargo-fuzz entry for the `directory_request` target of `p2pmodel fuzz`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| p2pmodel_servers::fuzz::directory::directory_request(data));
