//! `/ready` status and body → `parse_ready`. The first byte picks the status (200, 503, other).
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_proxy_agent::observe::envoy_admin::parse_ready;

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data.split_first() {
        Some((b, rest)) => (
            match b % 3 {
                0 => 200,
                1 => 503,
                _ => u16::from(*b) * 3,
            },
            rest,
        ),
        None => (200, data),
    };
    if let Some(r) = parse_ready(status, body) {
        assert!(r.state.as_str().len() <= 256);
    }
});
