//! The `gce-service-proxy` metadata value → `parse_service_proxy`, then the planner's strict
//! parsing of the exclusions and serving ports; what would reach iptables must stay clean.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use service_proxy_agent::intercept::plan::{
    DesiredInput, TrafficInterception, parse_exclude_ip_range, parse_exclude_port_range, plan,
};
use service_proxy_agent::observe::metadata::parse_service_proxy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = parse_service_proxy(text) else {
        return;
    };
    let _ = cfg.proxy_spec.network_name();
    for w in &cfg.warnings {
        assert!(w.len() <= 1024, "unbounded warning");
    }
    let t = &cfg.traffic_interception;
    for r in &t.exclude_outbound_ip_ranges {
        let _ = parse_exclude_ip_range(r);
    }
    for r in &t.exclude_outbound_port_ranges {
        if let Ok(p) = parse_exclude_port_range(r) {
            assert!(p.first != 0 && p.first <= p.last, "{r:?} → {p:?}");
        }
    }
    let p = plan(&DesiredInput {
        vips: vec![
            "10.0.0.1/32".parse().unwrap(),
            "fd00::1/128".parse().unwrap(),
        ],
        serving_ports: cfg.service.serving_ports.clone(),
        envoy_uid: 1337,
        proxy_port: cfg.proxy_spec.proxy_port.unwrap_or(15001),
        traffic: TrafficInterception {
            intercept_all_outbound: t.intercept_all_outbound,
            exclude_outbound_ip_ranges: t.exclude_outbound_ip_ranges.clone(),
            exclude_outbound_port_ranges: t.exclude_outbound_port_ranges.clone(),
        },
    });
    if let Ok(p) = p {
        for i in &p.ignored {
            assert!(!i.value.chars().any(char::is_control), "{i:?}");
        }
        for fp in [&p.v4, &p.v6] {
            if let Some(text) = fp.restore_text() {
                common::assert_restore_text_safe(&text);
            }
        }
    }
});
