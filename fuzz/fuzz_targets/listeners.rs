//! `/config_dump?resource=dynamic_listeners` body → `parse_listeners` → `summarize_listeners`;
//! the VIPs then go into the planner, whose restore text must stay clean.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use service_proxy_agent::intercept::plan::{DesiredInput, TrafficInterception, plan};
use service_proxy_agent::observe::envoy_admin::{parse_listeners, summarize_listeners};

fuzz_target!(|data: &[u8]| {
    let Ok(listeners) = parse_listeners(data) else {
        return;
    };
    for l in &listeners {
        let _ = l.current();
        let _ = l.is_nameless_error();
    }
    let summary = summarize_listeners(&listeners);
    for v in &summary.vips {
        assert_ne!(v.prefix_len(), 0, "a /0 VIP would intercept everything");
        assert_eq!(*v, v.trunc(), "VIPs are normalised");
    }
    for r in &summary.rejected {
        assert!(!r.raw.chars().any(char::is_control), "{r:?}");
    }
    let p = plan(&DesiredInput {
        vips: summary.vips.clone(),
        serving_ports: summary.inbound_ports.clone(),
        envoy_uid: 1337,
        proxy_port: summary
            .interception
            .as_ref()
            .and_then(|i| i.port)
            .filter(|p| *p != 0)
            .unwrap_or(15001),
        traffic: TrafficInterception::default(),
    });
    if let Ok(p) = p {
        for fp in [&p.v4, &p.v6] {
            if let Some(text) = fp.restore_text() {
                common::assert_restore_text_safe(&text);
            }
        }
    }
});
