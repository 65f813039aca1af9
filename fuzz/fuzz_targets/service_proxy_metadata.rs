//! The `gce-service-proxy` metadata value → `parse_service_proxy`, then the planner's strict
//! parsing of the exclusions and serving ports; what would reach iptables must stay clean. The
//! metadata server's plain values (project id, zone, network, scopes) go through their parsers too.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::service_proxy_metadata(data));
