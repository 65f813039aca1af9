//! Resolution from passed-in sources: flag values, file text, environment. No file system
//! (except `read_config_file`'s own test, the edge).

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

/// What clap would have filled from `--poll-interval 3s` etc. is built directly: the flags'
/// own parsing is `cmd::common`'s (and clap's) business.
fn args() -> CommonArgs {
    CommonArgs::default()
}

fn with_file(a: CommonArgs, toml: &str) -> Result<Settings, ConfigError> {
    let file = ConfigFile {
        path: PathBuf::from("/etc/spa-test.toml"),
        text: toml.to_owned(),
    };
    Settings::from_sources(&a, Some(&file), no_env)
}

fn resolve(a: CommonArgs) -> Result<Settings, ConfigError> {
    Settings::from_sources(&a, None, no_env)
}

#[test]
fn defaults() {
    let s = resolve(args()).unwrap();
    assert_eq!(s.envoy_admin.to_string(), "http://127.0.0.1:15000");
    assert_eq!(s.poll_interval, Duration::from_secs(10));
    assert_eq!(s.heartbeat_interval, Duration::from_secs(60));
    assert_eq!(s.finding_ttl, Duration::from_secs(600));
    assert_eq!(s.interception, InterceptionMode::Verify);
    assert_eq!(s.metrics_addr, Some("127.0.0.1:15091".parse().unwrap()));
    assert_eq!(
        s.control_plane.to_string(),
        "trafficdirector.googleapis.com:443"
    );
    assert_eq!(s.metadata_host, "metadata.google.internal");
    assert_eq!(s.cloud_logging, CloudLoggingMode::Auto);
    assert!(s.cloud_checks);
    assert_eq!(s.envoy_log_dir, PathBuf::from("/var/log/envoy"));
    assert_eq!(s.config_path, None);
}

/// The table is the one place a key is written: every default goes through its key's parser,
/// names are unique kebab-case, and every key is accepted in the file.
#[test]
fn key_table_is_consistent() {
    let mut names = std::collections::BTreeSet::new();
    for k in keys::ALL {
        assert!(names.insert(k.name()), "{} twice", k.name());
        assert!(
            k.name()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-'),
            "{}",
            k.name()
        );
        assert!(!k.doc().is_empty(), "{}", k.name());
        if let Some(d) = k.default() {
            k.check(d)
                .unwrap_or_else(|e| panic!("default of {}: {e}", k.name()));
            // A documented default is the one applied.
            assert!(
                k.doc().contains(&format!("[default: {d}]")) || !k.doc().contains("[default: "),
                "{}: doc does not state {d}",
                k.name()
            );
        }
    }
    let every_key: String = keys::ALL
        .iter()
        .map(|k| format!("{} = \"{}\"\n", k.name(), k.default().unwrap_or("1")))
        .collect();
    assert!(validate_file_text(&every_key).is_ok());
}

#[test]
fn flag_beats_file_beats_default() {
    let a = CommonArgs {
        poll_interval: Some(Duration::from_secs(3)),
        ..args()
    };
    let s = with_file(
        a,
        "poll-interval = \"7s\"\nheartbeat-interval = \"2m\"\nserving-ports = [80, 8080]\nproxy-port = 15002\n",
    )
    .unwrap();
    assert_eq!(s.poll_interval, Duration::from_secs(3));
    assert_eq!(s.heartbeat_interval, Duration::from_secs(120));
    assert_eq!(s.serving_ports, Some(vec![80, 8080]));
    assert_eq!(s.proxy_port, Some(15002));
    assert_eq!(s.finding_ttl, Duration::from_secs(600));
    assert_eq!(s.config_path, Some(PathBuf::from("/etc/spa-test.toml")));
}

#[test]
fn bad_file_value_names_key_and_file() {
    let msg = with_file(args(), "poll-interval = \"soon\"\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "invalid value 'soon' for poll-interval in /etc/spa-test.toml: expected a duration such as 10s, 1m30s or 500ms"
    );
    // Typed TOML values are read as the flag's text would be.
    let s = with_file(args(), "cloud-checks = false\nproxy-port = 15003\n").unwrap();
    assert!(!s.cloud_checks);
    assert_eq!(s.proxy_port, Some(15003));
}

#[test]
fn ignore_findings_from_the_file_strictly() {
    let s = with_file(
        args(),
        "[[ignore-findings]]\nid = \"SERVER_FIRST_PROTOCOL\"\nreason = \"MySQL\"\nuntil = 2027-01-31T00:00:00Z\n",
    )
    .unwrap();
    assert_eq!(s.ignore_findings.len(), 1);
    assert_eq!(
        s.ignore_findings[0].id,
        crate::finding::FindingId::ServerFirstProtocol
    );
    let bad =
        "[[ignore-findings]]\nid = \"SERVER_FIRST_PROTOCOL\"\nuntil = \"2027-01-31T00:00:00Z\"\n";
    let msg = with_file(args(), bad).unwrap_err().to_string();
    assert!(
        msg.contains("ignore-findings[0]: reason is missing"),
        "{msg}"
    );
    assert!(msg.contains("/etc/spa-test.toml"), "{msg}");
    assert!(validate_file_text(bad).is_err());
}

#[test]
fn unknown_or_malformed_file_is_an_error_naming_the_line() {
    let e = with_file(args(), "poll-interval = \"10s\"\npol-interval = \"10s\"\n").unwrap_err();
    match e {
        ConfigError::Malformed { path, reason } => {
            assert_eq!(path, PathBuf::from("/etc/spa-test.toml"));
            assert!(
                reason.starts_with(
                    "line 2: unknown field `pol-interval`, expected one of `envoy-admin`"
                ),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    let e = with_file(args(), "a = 1\nb = [\n").unwrap_err();
    assert!(matches!(e, ConfigError::Malformed { .. }), "{e}");
}

/// The edge: the only test here that touches the file system.
#[test]
fn read_config_file_refuses_a_missing_file() {
    let e = read_config_file(Path::new("/nonexistent/spa.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Unreadable { .. }), "{e}");
}

#[test]
fn remote_admin_needs_permission() {
    let remote = || Some(parse_admin_url("http://10.0.0.1:15000").unwrap());
    let e = resolve(CommonArgs {
        envoy_admin: remote(),
        ..args()
    })
    .unwrap_err();
    assert!(e.to_string().contains("--allow-remote-admin"), "{e}");
    let s = resolve(CommonArgs {
        envoy_admin: remote(),
        allow_remote_admin: Some(true),
        ..args()
    })
    .unwrap();
    assert_eq!(s.envoy_admin.host, "10.0.0.1");
    // The permission from the file works as the flag does.
    let s = with_file(
        CommonArgs {
            envoy_admin: remote(),
            ..args()
        },
        "allow-remote-admin = true\n",
    )
    .unwrap();
    assert_eq!(s.envoy_admin.host, "10.0.0.1");
    for ok in [
        "http://localhost:1",
        "http://127.0.0.2:9",
        "http://[::1]:15000",
    ] {
        let a = CommonArgs {
            envoy_admin: Some(parse_admin_url(ok).unwrap()),
            ..args()
        };
        assert!(resolve(a).is_ok(), "{ok}");
    }
}

#[test]
fn remote_metrics_needs_permission() {
    let a = |s: &str| CommonArgs {
        metrics_addr: Some(parse_metrics_addr(s).unwrap()),
        ..args()
    };
    assert!(resolve(a("0.0.0.0:9")).is_err());
    assert_eq!(resolve(a("off")).unwrap().metrics_addr, None);
    let s = with_file(args(), "metrics-addr = \"off\"\n").unwrap();
    assert_eq!(s.metrics_addr, None);
}

#[test]
fn enum_names_any_case_and_a_list_when_wrong() {
    assert_eq!(
        parse_enum::<InterceptionMode>("Enforce"),
        Ok(InterceptionMode::Enforce)
    );
    assert_eq!(
        parse_enum::<LogFormat>("xml"),
        Err("expected one of json, text".to_owned())
    );
    assert_eq!(
        parse_enum::<CloudLoggingMode>("maybe"),
        Err("expected one of on, off, auto".to_owned())
    );
}

#[test]
fn parsers_reject_hostile_text() {
    assert!(parse_admin_url("http://127.0.0.1:15000/x").is_err());
    assert!(parse_admin_url("http://user@127.0.0.1:1").is_err());
    assert!(parse_admin_url("https://127.0.0.1:1").is_err());
    assert!(parse_host_port("a b:443").is_err());
    assert!(parse_host_port("host:0").is_err());
    assert_eq!(parse_port_list("80;8080,80").unwrap(), vec![80, 8080]);
    assert!(parse_port_list("80,70000").is_err());
    assert!(parse_user("root; rm -rf /").is_err());
    assert_eq!(parse_user("1337").unwrap(), UserSpec::Uid(1337));
    assert_eq!(parse_user("envoy").unwrap(), UserSpec::Name("envoy".into()));
    assert!(parse_duration("0s").is_err());
    assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    // Beyond the clock's arithmetic: refused, not an overflow later (issue 15 item 14).
    assert!(parse_duration("300000000000y").is_err());
    assert_eq!(parse_duration("7d").unwrap(), MAX_DURATION);
}

#[test]
fn metadata_host_from_env() {
    let s = Settings::from_sources(&args(), None, |k| {
        (k == "GCE_METADATA_HOST").then(|| "127.0.0.1:8080".to_owned())
    })
    .unwrap();
    assert_eq!(s.metadata_host, "127.0.0.1:8080");
}
