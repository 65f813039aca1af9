//! `/server_info` body → `parse_server_info`, and what the checks read from it.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::server_info(data));
