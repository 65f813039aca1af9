//! The TOML config file → `validate_file_text`, and `Settings::resolve` reading it from disk.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::config_toml(data));
