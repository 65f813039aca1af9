//! `/clusters?format=json` body → `parse_clusters`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_proxy_agent::observe::envoy_admin::parse_clusters;

fuzz_target!(|data: &[u8]| {
    if let Ok(clusters) = parse_clusters(data) {
        for c in &clusters {
            assert!(c.healthy_hosts() + c.unhealthy_hosts() <= c.hosts.len());
            for h in &c.hosts {
                let _ = h.health.is_healthy();
                let _ = h.health.is_degraded();
            }
        }
    }
});
