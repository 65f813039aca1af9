//! `iptables-save` output → `parse_save`, then the verify checks and the planner's transaction
//! against the parsed nat table. The VIPs, ports and UID are taken from the rules themselves so
//! that the checks walk the paths the input makes interesting.
#![no_main]

#[path = "common.rs"]
mod common;

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use service_proxy_agent::diagnose::interception::{InterceptionInput, check};
use service_proxy_agent::intercept::is_ours;
use service_proxy_agent::intercept::plan::{
    DesiredInput, TrafficInterception, clear_transaction, plan,
};
use service_proxy_agent::observe::iptables::{MAX_UNPARSED, Owner, parse_save};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let rs = parse_save(&text);
    assert!(rs.unparsed.len() <= MAX_UNPARSED);

    let mut vips: Vec<IpNet> = vec![
        "10.0.0.1/32".parse().unwrap(),
        "fd00::1/128".parse().unwrap(),
    ];
    let mut ports: Vec<u16> = vec![80];
    let mut uid = None;
    let mut proxy_port = None;
    for r in rs
        .tables
        .iter()
        .flat_map(|t| &t.chains)
        .flat_map(|c| &c.rules)
    {
        if let Some(d) = &r.spec.destination
            && vips.len() < 32
        {
            vips.push(d.value);
        }
        if let Some(p) = &r.spec.dports
            && ports.len() < 32
        {
            ports.extend(p.value.iter().map(|r| r.first));
        }
        if let Some(o) = &r.spec.uid_owner
            && let Owner::Range(a, _) = o.value
        {
            uid.get_or_insert(a);
        }
        if let Some(p) = r.spec.to_ports {
            proxy_port.get_or_insert(p.first);
        }
    }

    for (uid, port) in [(uid, proxy_port), (None, None)] {
        let _ = check(&InterceptionInput {
            v4: Ok(&rs),
            v6: Some(Ok(&rs)),
            vips: &vips,
            serving_ports: &ports,
            envoy_uid: uid,
            has_interception_listener: true,
            proxy_port: port,
        });
    }

    let nat = rs.table("nat");
    let unparsed_in_ours = rs
        .unparsed
        .iter()
        .filter(|u| u.table.as_deref() == Some("nat") && u.chain.as_deref().is_some_and(is_ours))
        .count();
    for all in [false, true] {
        let input = DesiredInput {
            vips: vips.clone(),
            serving_ports: ports.clone(),
            envoy_uid: uid.unwrap_or(1337),
            proxy_port: proxy_port.filter(|p| *p != 0).unwrap_or(15001),
            traffic: TrafficInterception {
                intercept_all_outbound: all,
                exclude_outbound_ip_ranges: vec!["169.254.169.254".into()],
                exclude_outbound_port_ranges: vec!["22".into()],
            },
        };
        let Ok(p) = plan(&input) else { continue };
        common::check_converges(&p.v4, nat, unparsed_in_ours);
        common::check_converges(&p.v6, nat, unparsed_in_ours);
    }
    if let Ok(Some(tx)) = clear_transaction(nat) {
        common::assert_restore_text_safe(&tx.text);
    }
});
