use super::*;

#[test]
fn authority_defaults_port_80() {
    assert_eq!(authority_of(""), "metadata.google.internal:80");
    assert_eq!(
        authority_of("metadata.google.internal"),
        "metadata.google.internal:80"
    );
    assert_eq!(authority_of("127.0.0.1:8080"), "127.0.0.1:8080");
    assert_eq!(authority_of("http://127.0.0.1:8080/"), "127.0.0.1:8080");
    assert_eq!(authority_of("169.254.169.254"), "169.254.169.254:80");
    assert_eq!(authority_of("[::1]:9"), "[::1]:9");
    assert_eq!(authority_of("[::1]"), "[::1]:80");
    assert_eq!(authority_of("::1"), "[::1]:80");
}

#[test]
fn paths_are_plain() {
    assert_eq!(check_path("/instance/id").unwrap(), "instance/id");
    assert!(check_path("instance/attributes/").is_ok());
    for bad in [
        "instance/id?recursive=true",
        "instance/../x",
        "a b",
        "a\r\nHost: x",
        "%2e%2e",
        "instance/./id",
    ] {
        assert!(
            matches!(check_path(bad), Err(MetadataError::InvalidName { .. })),
            "{bad}"
        );
    }
    assert!(check_path(&"a".repeat(600)).is_err());
}

#[test]
fn names_are_validated() {
    assert!(check_name("k", "agent-heartbeat").is_ok());
    assert!(check_name("k", "A_b-9").is_ok());
    for bad in ["", "a/b", "a.b", "a b", "é", "a\n", &"x".repeat(129)] {
        assert!(check_name("k", bad).is_err(), "{bad:?}");
    }
}

#[test]
fn etags_are_percent_encoded() {
    assert_eq!(crate::text::percent_encode("abc-123"), "abc-123");
    assert_eq!(crate::text::percent_encode("a&b=c d"), "a%26b%3Dc%20d");
}

#[test]
fn identity_parsers() {
    assert_eq!(
        parse_zone("projects/123/zones/us-central1-a").unwrap(),
        "us-central1-a"
    );
    assert_eq!(parse_zone("us-east1-b\n").unwrap(), "us-east1-b");
    assert!(parse_zone("projects/x/zones/us-central1-a").is_err());
    assert!(parse_zone("projects/1/zones/").is_err());
    assert!(parse_zone("projects/1/zones/US Central").is_err());
    assert!(parse_zone("a/b").is_err());
    assert_eq!(
        parse_network("projects/123456789012/networks/default").unwrap(),
        NetworkRef {
            project_number: 123456789012,
            name: "default".into()
        }
    );
    assert!(parse_network("projects/1/networks/").is_err());
    assert!(parse_network("projects/1/networks/a/b").is_err());
    assert!(parse_network("global/networks/default").is_err());
    assert_eq!(parse_number(" 42\n").unwrap(), 42);
    assert!(parse_number("-1").is_err());
    assert!(parse_number("99999999999999999999999").is_err());
    assert!(parse_number("").is_err());
    assert_eq!(parse_project_id("demo-project").unwrap(), "demo-project");
    assert_eq!(
        parse_project_id("example.com:proj").unwrap(),
        "example.com:proj"
    );
    assert!(parse_project_id("a b").is_err());
    assert!(parse_project_id("").is_err());
    assert_eq!(
        parse_scopes("https://a\n\nhttps://b\n"),
        vec!["https://a".to_owned(), "https://b".to_owned()]
    );
}

#[test]
fn service_proxy_hostile_input_is_an_error_not_a_panic() {
    for bad in [
        "",
        "[]",
        "null",
        "42",
        "\"x\"",
        "{",
        "{\"a\":",
        "\u{0}\u{1}",
    ] {
        assert!(
            matches!(
                parse_service_proxy(bad),
                Err(MetadataError::Malformed { .. })
            ),
            "{bad:?}"
        );
    }
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse_service_proxy(&deep).is_err());
    let huge = format!("{{\"labels\":{{\"a\":\"{}\"}}}}", "x".repeat(300 * 1024));
    assert!(matches!(
        parse_service_proxy(&huge),
        Err(MetadataError::TooLarge { .. })
    ));
}

#[test]
fn service_proxy_wrong_types_are_defaulted_with_warnings() {
    let c = parse_service_proxy(
        r#"{"service":"80","proxy-spec":{"proxy-port":[1],"tracing":"maybe","network":{"a":1},
               "project-number":"12x"},"traffic-interception":{"intercept-all-outbound":"yes",
               "exclude-outbound-ip-ranges":{"x":1},"intercept-dns":2},"labels":[1]}"#,
    )
    .unwrap();
    assert_eq!(c.proxy_spec, ProxySpec::default());
    assert!(c.traffic_interception.intercept_all_outbound);
    assert!(c.traffic_interception.exclude_outbound_ip_ranges.is_empty());
    assert!(!c.traffic_interception.intercept_dns);
    assert!(c.labels.is_empty());
    assert_eq!(c.warnings.len(), 8, "{:#?}", c.warnings);
}

#[test]
fn service_proxy_ports_and_lists() {
    let c = parse_service_proxy(
        r#"{"service":{"serving-ports":[8080,"80",80,0,70000,"x"]},
                "proxy-spec":{"proxy-port":"15002","tracing":"ON","project-number":123},
                "traffic-interception":{"exclude-outbound-ip-ranges":"8.8.8.8;10.0.0.0/8",
                                        "exclude-outbound-port-ranges":[81," 8080-8090 ",""]}}"#,
    )
    .unwrap();
    assert_eq!(c.service.serving_ports, vec![80, 8080]);
    assert_eq!(c.proxy_spec.proxy_port, Some(15002));
    assert_eq!(c.proxy_spec.tracing, Some(true));
    assert_eq!(c.proxy_spec.project_number, Some(123));
    assert_eq!(c.proxy_spec.network_name(), "default");
    assert_eq!(
        c.traffic_interception.exclude_outbound_ip_ranges,
        vec!["8.8.8.8", "10.0.0.0/8"]
    );
    assert_eq!(
        c.traffic_interception.exclude_outbound_port_ranges,
        vec!["81", "8080-8090"]
    );
    assert_eq!(c.warnings.len(), 3, "{:#?}", c.warnings);
}

#[test]
fn warnings_are_bounded() {
    let ports: Vec<String> = (0..500).map(|i| format!("\"bad{i}\"")).collect();
    let doc = format!(
        "{{\"service\":{{\"serving-ports\":[{}]}}}}",
        ports.join(",")
    );
    let c = parse_service_proxy(&doc).unwrap();
    assert_eq!(c.warnings.len(), MAX_WARNINGS);
    assert!(c.service.serving_ports.is_empty());
}

#[test]
fn unavailable_errors() {
    assert!(
        MetadataError::Status {
            path: "x".into(),
            status: 503,
            body: String::new()
        }
        .is_unavailable()
    );
    assert!(!MetadataError::NotFound { path: "x".into() }.is_unavailable());
    assert!(!MetadataError::GuestAttributesDisabled.is_unavailable());
}

mod prop {
    use super::super::*;
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z0-9;,/ .-]{0,12}".prop_map(Value::String),
            any::<String>().prop_map(Value::String),
        ];
        let keys = prop_oneof![
            Just("service".to_owned()),
            Just("serving-ports".to_owned()),
            Just("proxy-spec".to_owned()),
            Just("proxy-port".to_owned()),
            Just("tracing".to_owned()),
            Just("project-number".to_owned()),
            Just("traffic-interception".to_owned()),
            Just("exclude-outbound-ip-ranges".to_owned()),
            Just("labels".to_owned()),
            "[a-z-]{1,8}",
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(keys.clone(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the document, parsing ends with a config or an error, and the result
        /// stays within its bounds.
        #[test]
        fn never_panics_on_json(v in json()) {
            if let Ok(c) = parse_service_proxy(&v.to_string()) {
                prop_assert!(c.warnings.len() <= MAX_WARNINGS);
                prop_assert!(c.service.serving_ports.iter().all(|p| *p > 0));
                prop_assert!(c.service.serving_ports.windows(2).all(|w| w[0] < w[1]));
            }
        }

        #[test]
        fn never_panics_on_text(s in any::<String>()) {
            let _ = parse_service_proxy(&s);
            let _ = parse_zone(&s);
            let _ = parse_network(&s);
            let _ = parse_number(&s);
            let _ = parse_project_id(&s);
            let _ = check_path(&s);
            let _ = authority_of(&s);
        }
    }
}
