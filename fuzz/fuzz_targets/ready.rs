//! `/ready` status and body → `parse_ready`. The first byte picks the status (200, 503, other).
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::ready(data));
