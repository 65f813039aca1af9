//! `iptables-save` output → `parse_save`, then the verify checks and the planner's transaction
//! against the parsed nat table. The VIPs, ports and UID are taken from the rules themselves so
//! that the checks walk the paths the input makes interesting.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::iptables_save(data));
