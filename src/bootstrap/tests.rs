use super::*;
use crate::config::CommonArgs;
use crate::observe::metadata::{NetworkRef, parse_service_proxy};

fn settings() -> Settings {
    Settings::resolve(
        &CommonArgs {
            config: Some(PathBuf::from("/dev/null")),
            ..CommonArgs::default()
        },
        |_| None,
    )
    .unwrap()
}

fn vm(sp: Option<&str>) -> VmMetadata {
    VmMetadata {
        instance_id: 4_520_031_799_277_581_759,
        zone: "us-central1-a".into(),
        project_id: "demo-project".into(),
        project_number: 123_456_789_012,
        network: Ok(NetworkRef {
            project_number: 123_456_789_012,
            name: "vm-net".into(),
        }),
        scopes: Ok(vec![]),
        service_proxy: Ok(sp.map(|s| parse_service_proxy(s).unwrap())),
    }
}

fn input(sp: Option<&str>) -> BootstrapInput {
    BootstrapInput::resolve(&vm(sp), &settings(), None).unwrap()
}

fn meta(b: &Bootstrap) -> &Map<String, Value> {
    b.json["node"]["metadata"].as_object().unwrap()
}

#[test]
fn uuid_is_stable_and_distinct() {
    let a = node_uuid("p", "us-central1-a", 1);
    assert_eq!(a, node_uuid("p", "us-central1-a", 1));
    assert_eq!(a.get_version_num(), 5);
    assert_ne!(a, node_uuid("p", "us-central1-a", 2));
    assert_ne!(a, node_uuid("q", "us-central1-a", 1));
    // Fixed forever: a change would give every VM of a fleet a new node id.
    assert_eq!(
        node_uuid("demo-project", "us-central1-a", 4_520_031_799_277_581_759).to_string(),
        "1ced0ef5-9d0b-5f29-9291-2804fac6cb31"
    );
}

#[test]
fn defaults_without_service_proxy() {
    let i = input(None);
    assert_eq!(i.network, "vm-net");
    assert_eq!(i.interception_port, 15001);
    assert_eq!(i.warnings.len(), 1, "{:?}", i.warnings);
    let b = build(&i);
    assert!(
        b.node_id
            .starts_with("projects/123456789012/networks/vm-net/nodes/"),
        "{}",
        b.node_id
    );
    let m = meta(&b);
    assert_eq!(m[NETWORK_NAME_KEY], "vm-net");
    assert_eq!(m[PROJECT_NUMBER_KEY], "123456789012");
    assert_eq!(m[INTERCEPTION_PORT_KEY], "15001");
    assert_eq!(m[ENABLE_TRACING_KEY], "false");
    assert!(!m.contains_key(ACCESS_LOG_PATH_KEY));
    assert!(b.json.get("tracing").is_none());
    assert_eq!(
        b.json["admin"]["address"]["socket_address"],
        json!({"address": "127.0.0.1", "port_value": 15000})
    );
    let ads = &b.json["dynamic_resources"]["ads_config"]["grpc_services"][0]["google_grpc"];
    assert_eq!(ads["target_uri"], "trafficdirector.googleapis.com:443");
    assert_eq!(
        ads["call_credentials"],
        json!([{"google_compute_engine": {}}])
    );
    assert_eq!(ads["channel_credentials"], json!({"ssl_credentials": {}}));
}

#[test]
fn empty_network_means_the_vms() {
    let i = input(Some(r#"{"proxy-spec": {"network": ""}}"#));
    assert_eq!(i.network, "vm-net");
    let i = input(Some(r#"{"proxy-spec": {"network": "other"}}"#));
    assert_eq!(i.network, "other");
}

#[test]
fn missing_network_is_named() {
    let mut v = vm(Some(r#"{"proxy-spec": {"network": ""}}"#));
    v.network = Err(MetadataError::NotFound {
        path: "instance/network-interfaces/0/network".into(),
    });
    let e = BootstrapInput::resolve(&v, &settings(), None).unwrap_err();
    assert!(e.is_missing_metadata());
    assert!(
        e.to_string()
            .contains("metadata instance/network-interfaces/0/network not found"),
        "{e}"
    );
    // A network in the attribute is enough.
    v.service_proxy = Ok(Some(
        parse_service_proxy(r#"{"proxy-spec": {"network": "n1"}}"#).unwrap(),
    ));
    assert_eq!(
        BootstrapInput::resolve(&v, &settings(), None)
            .unwrap()
            .network,
        "n1"
    );
}

#[test]
fn unusable_service_proxy_is_missing_metadata() {
    let mut v = vm(None);
    v.service_proxy = Err(parse_service_proxy("{not json").unwrap_err());
    let e = BootstrapInput::resolve(&v, &settings(), None).unwrap_err();
    assert!(e.is_missing_metadata());
    assert!(e.to_string().contains("gce-service-proxy"), "{e}");
}

#[test]
fn hostile_names_never_reach_the_node_id() {
    for sp in [
        r#"{"proxy-spec": {"network": "a/b"}}"#,
        r#"{"proxy-spec": {"mesh": "m/../x"}}"#,
        r#"{"proxy-spec": {"scope": "s s"}}"#,
        r#"{"proxy-spec": {"access-log": "relative.log"}}"#,
    ] {
        let e = BootstrapInput::resolve(&vm(Some(sp)), &settings(), None).unwrap_err();
        assert!(
            matches!(e, BootstrapError::InvalidField { .. }),
            "{sp}: {e}"
        );
    }
}

#[test]
fn mesh_and_scope() {
    let b = build(&input(Some(r#"{"proxy-spec": {"mesh": "m1"}}"#)));
    assert!(
        b.node_id.contains("/networks/mesh:m1/nodes/"),
        "{}",
        b.node_id
    );
    assert_eq!(meta(&b)[MESH_SCOPE_NAME_KEY], "m1");
    assert_eq!(meta(&b)[NETWORK_NAME_KEY], "vm-net");
    let b = build(&input(Some(r#"{"proxy-spec": {"scope": "s1"}}"#)));
    assert!(
        b.node_id.contains("/networks/scope:s1/nodes/"),
        "{}",
        b.node_id
    );
    let i = input(Some(r#"{"proxy-spec": {"scope": "s1", "mesh": "m1"}}"#));
    assert_eq!(i.attachment, Attachment::Mesh("m1".into()));
    assert!(i.warnings.iter().any(|w| w.contains("both")));
}

#[test]
fn ports_project_and_labels() {
    let i = input(Some(
        r#"{"service": {"serving-ports": [8080, 80]},
                "proxy-spec": {"proxy-port": 15002, "project-number": "999", "tracing": "ON",
                               "access-log": "/var/log/envoy/access.log"},
                "labels": {"app": "web", "TRAFFICDIRECTOR_NETWORK_NAME": "evil"}}"#,
    ));
    assert_eq!(i.interception_port, 15002);
    assert_eq!(i.project_number, 999);
    let b = build(&i);
    let m = meta(&b);
    assert_eq!(m[PROJECT_NUMBER_KEY], "999");
    assert_eq!(m[NETWORK_NAME_KEY], "vm-net");
    assert_eq!(m["app"], "web");
    assert_eq!(m[INBOUND_BACKEND_PORTS_KEY], "80,8080");
    assert_eq!(m[ACCESS_LOG_PATH_KEY], "/var/log/envoy/access.log");
    assert_eq!(m[ENABLE_TRACING_KEY], "true");
    assert!(b.node_id.starts_with("projects/999/"));
    let tracer = &b.json["tracing"]["http"]["typed_config"];
    assert_eq!(
        tracer["grpc_service"]["google_grpc"]["target_uri"],
        TRACE_ENDPOINT
    );
    assert_eq!(
        tracer["grpc_service"]["initial_metadata"][0]["value"],
        "demo-project"
    );
    // The agent's own --proxy-port wins: it is where the agent redirects.
    let mut s = settings();
    s.proxy_port = Some(15100);
    let v = vm(Some(r#"{"proxy-spec": {"proxy-port": 15002}}"#));
    assert_eq!(
        BootstrapInput::resolve(&v, &s, None)
            .unwrap()
            .interception_port,
        15100
    );
}

#[test]
fn admin_and_control_plane_follow_the_settings() {
    let mut s = settings();
    s.envoy_admin.host = "localhost".into();
    s.envoy_admin.port = 15500;
    s.control_plane.host = "td.example.internal".into();
    let i = BootstrapInput::resolve(&vm(None), &s, Some("/ca.pem".into())).unwrap();
    let b = build(&i);
    assert_eq!(
        b.json["admin"]["address"]["socket_address"],
        json!({"address": "127.0.0.1", "port_value": 15500})
    );
    let ads = &b.json["dynamic_resources"]["ads_config"]["grpc_services"][0]["google_grpc"];
    assert_eq!(ads["target_uri"], "td.example.internal:443");
    assert_eq!(
        ads["channel_credentials"]["ssl_credentials"]["root_certs"]["filename"],
        "/ca.pem"
    );
    s.envoy_admin.host = "envoy.internal".into();
    assert_eq!(
        BootstrapInput::resolve(&vm(None), &s, None).unwrap_err(),
        BootstrapError::AdminNotIp("envoy.internal".into())
    );
}

#[test]
fn same_input_same_bytes() {
    let sp = r#"{"labels": {"b": "2", "a": "1"}, "proxy-spec": {"tracing": "ON"}}"#;
    assert_eq!(
        build(&input(Some(sp))).to_text(),
        build(&input(Some(sp))).to_text()
    );
}

#[test]
fn atomic_write() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/bootstrap.json");
    write_atomically(&path, b"one").unwrap();
    write_atomically(&path, b"two").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"two");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("bootstrap.json")]);
    let e = write_atomically(Path::new("/proc/nope/x.json"), b"x").unwrap_err();
    assert!(matches!(e, BootstrapError::Write { .. }));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z0-9._/: -]{0,20}", any::<String>(), Just(String::new()),]
    }

    proptest! {
        /// Whatever the attribute says, resolving ends in an input or an error, and an
        /// input always gives a node id of exactly projects/N/networks/X/nodes/UUID.
        #[test]
        fn any_attribute_gives_a_well_formed_node_or_an_error(
            network in text(), mesh in text(), scope in text(), log in text(),
            label_key in text(), label_value in text(), port in any::<u16>(),
        ) {
            let sp = json!({
                "proxy-spec": {"network": network, "mesh": mesh, "scope": scope,
                               "access-log": log, "proxy-port": port},
                "labels": {label_key: label_value},
            });
            let mut v = vm(None);
            v.service_proxy = parse_service_proxy(&sp.to_string()).map(Some);
            if let Ok(i) = BootstrapInput::resolve(&v, &settings(), None) {
                let b = build(&i);
                let parts: Vec<&str> = b.node_id.split('/').collect();
                prop_assert_eq!(parts.len(), 6, "{}", b.node_id);
                prop_assert_eq!(parts[0], "projects");
                prop_assert_eq!(parts[4], "nodes");
                prop_assert!(serde_json::from_str::<Value>(&b.to_text()).is_ok());
                prop_assert_eq!(
                    &b.json["node"]["metadata"][NETWORK_NAME_KEY],
                    &Value::String(i.network.clone())
                );
            }
        }
    }
}

#[test]
fn ca_bundle_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ca.pem");
    std::fs::write(&f, "x").unwrap();
    let p = f.to_string_lossy().into_owned();
    assert_eq!(
        find_ca_bundle(|k| (k == "SSL_CERT_FILE").then(|| p.clone())),
        Some(f)
    );
    // A missing override falls back to the distribution's bundle (if this machine has one).
    assert_eq!(
        find_ca_bundle(|_| Some("/nonexistent".into())),
        find_ca_bundle(|_| None)
    );
}
