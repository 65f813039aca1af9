//! `/stats` text → `parse_stats`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_proxy_agent::observe::envoy_admin::parse_stats;

fuzz_target!(|data: &[u8]| {
    let s = parse_stats(&String::from_utf8_lossy(data));
    assert!(s.init_fetch_timeouts.len() <= 256);
});
