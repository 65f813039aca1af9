//! `/config_dump?resource=dynamic_listeners` body → `parse_listeners` → `summarize_listeners`;
//! the VIPs then go into the planner, whose restore text must stay clean.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::listeners(data));
