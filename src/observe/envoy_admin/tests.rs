use super::*;
use std::sync::Arc;

fn range(addr: &str, len: Option<u64>) -> PrefixRange {
    PrefixRange {
        address_prefix: Some(JsonLeaf::Text(addr.into())),
        prefix_len: len.map(JsonLeaf::Number),
    }
}

#[test]
fn prefixes_parse_strictly() {
    let ok = |a, l| parse_prefix(&range(a, Some(l))).unwrap().to_string();
    assert_eq!(ok("10.0.0.1", 32), "10.0.0.1/32");
    assert_eq!(ok("10.1.2.3", 24), "10.1.2.0/24");
    assert_eq!(ok("fd00::5", 128), "fd00::5/128");
    assert_eq!(ok("fd00::5:1", 64), "fd00::/64");
    for (a, l) in [
        ("10.0.0.1 -j ACCEPT", Some(32)),
        ("10.0.0.1", Some(99)),
        ("10.0.0.1", Some(33)),
        ("fd00::1", Some(129)),
        ("10.0.0.1", Some(0)),
        ("10.0.0.1", None),
        ("010.0.0.1", Some(32)),
        ("10.0.0.1/32", Some(32)),
        ("fe80::1%eth0", Some(128)),
        ("", Some(32)),
        ("10.0.0.1", Some(u64::MAX)),
    ] {
        assert!(parse_prefix(&range(a, l)).is_err(), "{a:?}/{l:?} accepted");
    }
    let odd = PrefixRange {
        address_prefix: Some(JsonLeaf::Number(167772161)),
        prefix_len: Some(JsonLeaf::Text("32".into())),
    };
    assert!(parse_prefix(&odd).is_err());
}

#[test]
fn percent_encoding_of_the_filter() {
    assert_eq!(crate::text::percent_encode("a.b|c$"), "a.b%7Cc%24");
    assert!(
        crate::text::percent_encode(STATS_FILTER)
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b))
    );
}

#[test]
fn proto_durations() {
    assert_eq!(parse_proto_duration("123s"), Some(Duration::from_secs(123)));
    assert_eq!(
        parse_proto_duration("0.200s"),
        Some(Duration::from_millis(200))
    );
    assert_eq!(
        parse_proto_duration("1.000000001s"),
        Some(Duration::new(1, 1))
    );
    for bad in [
        "",
        "s",
        "12",
        "-1s",
        "1.s.s",
        "1.0000000001s",
        "1e3s",
        "99999999999999999999s",
    ] {
        assert_eq!(parse_proto_duration(bad), None, "{bad}");
    }
}

#[test]
fn version_numbers() {
    let v = parse_version_number("9e55/1.40.0/Clean/RELEASE/BoringSSL").unwrap();
    assert_eq!(v.to_string(), "1.40.0");
    let old = parse_version_number(
        "dc78069b10cc94fa07bb974b7101dd1b42e2e7bf/1.15.1-dev/Clean/RELEASE/BoringSSL",
    )
    .unwrap();
    assert!(
        old < EnvoyVersion {
            major: 1,
            minor: 24,
            patch: 9
        }
    );
    assert_eq!(parse_version_number("1.40.0"), None);
    assert_eq!(parse_version_number("x/1.40/y"), None);
}

#[test]
fn ready_answers() {
    assert_eq!(
        parse_ready(200, b"LIVE\n"),
        Some(Readiness {
            ready: true,
            state: ServerState::Live
        })
    );
    assert_eq!(
        parse_ready(503, b"DRAINING\n"),
        Some(Readiness {
            ready: false,
            state: ServerState::Draining
        })
    );
    let odd = parse_ready(503, b"WEIRD\x1b[31m\n").unwrap();
    assert_eq!(odd.state, ServerState::Other("WEIRD [31m".into()));
    assert_eq!(parse_ready(404, b"nope"), None);
}

#[test]
fn stats_parser_is_tolerant() {
    let s = parse_stats(
        "control_plane.connected_state: 1\n\
             garbage line\n\
             : 5\n\
             listener_manager.lds.update_rejected: 3\n\
             listener_manager.lds.version_text: \"v-12\"\n\
             cluster.a.init_fetch_timeout: 2\n\
             cluster.b.init_fetch_timeout: 0\n\
             listener_manager.lds.init_fetch_timeout: 1\n\
             listener_manager.lds.update_success: -4\n\
             listener_manager.total_listeners_active: 99999999999999999999999\n\
             http.admin.downstream_cx_length_ms: P0(nan,0) P25(nan,1.0)\n",
    );
    assert_eq!(s.control_plane_connected_state, Some(1));
    assert_eq!(s.lds_update_rejected, Some(3));
    assert_eq!(s.lds_update_success, None);
    assert_eq!(s.total_listeners_active, None);
    assert_eq!(s.lds_version_text.as_deref(), Some("v-12"));
    assert_eq!(s.init_fetch_timeout_total, 3);
    assert_eq!(s.init_fetch_timeouts.len(), 2);
    assert_eq!(s.init_fetch_timeouts["cluster.a.init_fetch_timeout"], 2);
}

#[test]
fn host_health() {
    let h = |json: &str| serde_json::from_str::<HostHealth>(json).unwrap();
    assert!(h("{}").is_healthy());
    assert!(h(r#"{"eds_health_status": "HEALTHY"}"#).is_healthy());
    assert!(h(r#"{"eds_health_status": "UNKNOWN"}"#).is_healthy());
    let degraded = h(r#"{"eds_health_status": "DEGRADED"}"#);
    assert!(degraded.is_healthy() && degraded.is_degraded());
    assert!(h(r#"{"failed_active_degraded_check": true}"#).is_degraded());
    assert!(h(r#"{"pending_dynamic_removal": true, "pending_active_hc": true}"#).is_healthy());
    for bad in [
        r#"{"eds_health_status": "UNHEALTHY"}"#,
        r#"{"eds_health_status": "DRAINING"}"#,
        r#"{"eds_health_status": "TIMEOUT"}"#,
        r#"{"eds_health_status": "SOMETHING_NEW"}"#,
        r#"{"failed_active_health_check": true, "eds_health_status": "HEALTHY"}"#,
        r#"{"failed_outlier_check": true}"#,
        r#"{"failed_eds_health": true}"#,
        r#"{"active_hc_timeout": true}"#,
        r#"{"excluded_via_immediate_hc_fail": true}"#,
    ] {
        assert!(!h(bad).is_healthy(), "{bad}");
        assert!(!h(bad).is_degraded(), "{bad}");
    }
    // A non-text status is not trusted as healthy.
    assert!(!h(r#"{"eds_health_status": 1}"#).is_healthy());
    assert_eq!(
        h(r#"{"eds_health_status": {"x": 1}}"#)
            .eds_health_status
            .as_deref(),
        Some("<an object>")
    );
}

#[test]
fn stats_keep_a_bounded_number_of_names() {
    let text: String = (0..2000)
        .map(|i| format!("cluster.c{i}.init_fetch_timeout: 1\n"))
        .collect();
    let s = parse_stats(&text);
    assert_eq!(s.init_fetch_timeout_total, 2000);
    assert_eq!(s.init_fetch_timeouts.len(), MAX_TRACKED_INIT_FETCH_TIMEOUTS);
}

const LISTENERS_VIPS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/envoy/1.40.0-config_dump-dynamic_listeners-vips.json"
));
const LISTENERS_STATES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/envoy/1.40.0-config_dump-dynamic_listeners-states.json"
));

#[test]
fn a_byte_identical_listener_body_is_not_parsed_again() {
    let parses = ListenerParses::default();
    let first = parses.parse(LISTENERS_VIPS).unwrap();
    assert_eq!(*first, parse_listeners(LISTENERS_VIPS).unwrap());
    // The same bytes in another buffer (as each read brings them).
    let copy = LISTENERS_VIPS.to_vec();
    let again = parses.parse(&copy).unwrap();
    assert!(
        Arc::ptr_eq(&first, &again),
        "the same bytes were parsed again"
    );
    assert_eq!(parses.reused(), 1);

    // One byte more (trailing white space, still valid JSON) is another body: parsed.
    let mut longer = LISTENERS_VIPS.to_vec();
    longer.push(b'\n');
    let other = parses.parse(&longer).unwrap();
    assert!(!Arc::ptr_eq(&first, &other));
    assert_eq!(*other, *first);
    let states = parses.parse(LISTENERS_STATES).unwrap();
    assert_eq!(*states, parse_listeners(LISTENERS_STATES).unwrap());
    assert_ne!(*states, *first);
    assert_eq!(parses.reused(), 1);
}

#[test]
fn a_failed_parse_or_read_keeps_nothing_to_reuse() {
    let parses = ListenerParses::default();
    let first = parses.parse(LISTENERS_VIPS).unwrap();
    assert!(parses.parse(b"{\"configs\": [").is_err());
    // The malformed body replaced the kept parse: the good body is parsed afresh.
    let second = parses.parse(LISTENERS_VIPS).unwrap();
    assert!(!Arc::ptr_eq(&first, &second));
    parses.forget();
    let third = parses.parse(LISTENERS_VIPS).unwrap();
    assert!(!Arc::ptr_eq(&second, &third));
    assert_eq!(parses.reused(), 0);
    assert_eq!(*third, *first);
}

#[test]
fn a_listeners_chains_are_kept_as_vips_rejected_prefixes_and_inbound_ports() {
    let hcm = |route: &str| {
        serde_json::json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": format!("type.googleapis.com/envoy{HCM_TYPE}"),
            "rds": {"route_config_name": route}}})
    };
    let range = |a: &str, l: u64| serde_json::json!({"address_prefix": a, "prefix_len": l});
    let body = serde_json::json!({"configs": [{"name": "mesh", "active_state": {"listener": {
        "name": "mesh",
        "filter_chains": [
            {"name": "out-a", "filter_chain_match": {"prefix_ranges": [
                range("10.1.2.3", 24), range("10.0.0.1 -j ACCEPT", 32)]},
             "filters": [hcm("10.1.2.0:80")]},
            // Inbound: its ports, and its prefix is no VIP.
            {"filter_chain_match": {"destination_port": 9090, "prefix_ranges": [range("10.7.0.1", 32)]},
             "filters": [hcm("inbound|default_inbound_config-8080")]},
            {"filter_chain_match": {"destination_port": 70000}, "filters": [hcm("inbound|other")]},
        ],
        "default_filter_chain": {"filter_chain_match": {"prefix_ranges": [range("fd00::5:1", 64)]}}
    }}}]});
    let listeners = parse_listeners(body.to_string().as_bytes()).unwrap();
    let chains = &listeners[0].current().unwrap().chains;
    assert_eq!(
        chains.vips,
        ["10.1.2.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()] as [IpNet; 2]
    );
    assert_eq!(chains.rejected.len(), 1);
    assert_eq!(chains.rejected[0].raw, "10.0.0.1 -j ACCEPT/32");
    assert_eq!(
        chains.rejected[0].reason,
        "address_prefix is not an IP address"
    );
    assert_eq!(chains.inbound_ports, [8080, 9090]);

    let summary = summarize_listeners(&listeners);
    assert_eq!(summary.vips, chains.vips);
    assert_eq!(summary.inbound_ports, [8080, 9090]);
    assert_eq!(summary.rejected[0].listener, "mesh");
    assert_eq!(summary.rejected[0].raw, "10.0.0.1 -j ACCEPT/32");
}
