use super::*;
use crate::diagnose::testutil::{self, PROJECT, active_listener, node, snapshot, with_history};
use crate::observe::envoy_admin::ListenerErrorState;
use crate::observe::files::PathChain;
use crate::observe::metadata::NetworkRef;
use std::collections::HashMap;

fn ids(o: &GroupOutcome) -> Vec<FindingId> {
    o.findings.iter().map(|f| f.id).collect()
}

fn run(s: &Snapshot) -> GroupOutcome {
    with_history(&[s], |ctx, _| check(s, ctx))
}

fn mismatch(n: &Node, vm: Option<&VmMetadata>) -> String {
    match node_mismatch(n, vm, true) {
        NodeVerdict::Mismatch(d) => d,
        other => panic!("no mismatch: {other:?}"),
    }
}

#[test]
fn node_ids_parse() {
    assert_eq!(
        parse_node_id("projects/123/networks/default/nodes/abc"),
        Some(("123", "default"))
    );
    assert_eq!(
        parse_node_id("projects/123/networks/mesh:m1/nodes/abc"),
        Some(("123", "mesh:m1"))
    );
    for bad in [
        "",
        "envoy-1",
        "projects//networks/x/nodes/y",
        "projects/1/networks/x",
    ] {
        assert_eq!(parse_node_id(bad), None, "{bad}");
    }
}

#[test]
fn matching_node_passes() {
    let p = PROJECT.to_string();
    let vm = testutil::vm();
    assert!(matches!(
        node_mismatch(&node("default", &p), Some(&vm), true),
        NodeVerdict::Match(_)
    ));
    // Empty network means default.
    let mut n = node("default", &p);
    n.metadata.insert(NETWORK_KEY.into(), "".into());
    assert!(matches!(
        node_mismatch(&n, Some(&vm), true),
        NodeVerdict::Match(_)
    ));
}

#[test]
fn wrong_network_names_what_differs() {
    let p = PROJECT.to_string();
    let d = mismatch(&node("vpc-b", &p), Some(&testutil::vm()));
    assert!(
        d.contains("TRAFFICDIRECTOR_NETWORK_NAME is \"vpc-b\" but the VM's network is \"default\""),
        "{d}"
    );
    assert!(d.contains("the node id's network is \"vpc-b\""), "{d}");
    assert!(
        d.contains("TRAFFICDIRECTOR_GCP_PROJECT_NUMBER \"123456789012\" matches"),
        "{d}"
    );
}

#[test]
fn wrong_project_names_what_differs() {
    let d = mismatch(&node("default", "999"), Some(&testutil::vm()));
    assert!(
            d.contains("TRAFFICDIRECTOR_GCP_PROJECT_NUMBER is \"999\" but the VM's project number is \"123456789012\""),
            "{d}"
        );
    assert!(
        d.contains("TRAFFICDIRECTOR_NETWORK_NAME \"default\" matches"),
        "{d}"
    );
}

#[test]
fn metadata_and_node_id_disagreeing() {
    let mut n = node("default", &PROJECT.to_string());
    n.id = format!("projects/{PROJECT}/networks/other/nodes/x");
    let d = mismatch(&n, Some(&testutil::vm()));
    assert!(d.contains("the node id's network is \"other\""), "{d}");
    assert!(!d.contains("TRAFFICDIRECTOR_NETWORK_NAME is"), "{d}");
    // Without the VM, they are compared with each other.
    let d = mismatch(&n, None);
    assert!(
        d.contains(
            "TRAFFICDIRECTOR_NETWORK_NAME is \"default\" but the node id's network is \"other\""
        ),
        "{d}"
    );
}

#[test]
fn missing_keys() {
    let mut n = node("default", &PROJECT.to_string());
    n.metadata.clear();
    let d = mismatch(&n, Some(&testutil::vm()));
    assert!(d.contains("lacks TRAFFICDIRECTOR_NETWORK_NAME"), "{d}");
    assert!(
        d.contains("lacks TRAFFICDIRECTOR_GCP_PROJECT_NUMBER"),
        "{d}"
    );
    // A static Envoy with no such metadata is not a mesh node.
    assert!(matches!(
        node_mismatch(&n, Some(&testutil::vm()), false),
        NodeVerdict::NotApplicable(_)
    ));
}

#[test]
fn mesh_and_scope_node_ids_compare_the_project_only() {
    let mut n = node("default", &PROJECT.to_string());
    n.metadata.remove(NETWORK_KEY);
    n.id = format!("projects/{PROJECT}/networks/mesh:my-mesh/nodes/x");
    assert!(matches!(
        node_mismatch(&n, Some(&testutil::vm()), true),
        NodeVerdict::Match(_)
    ));
    n.id = "projects/42/networks/scope:s1/nodes/x".into();
    let d = mismatch(&n, Some(&testutil::vm()));
    assert!(d.contains("the node id's project is \"42\""), "{d}");
    assert!(!d.contains("lacks TRAFFICDIRECTOR_NETWORK_NAME"), "{d}");
}

#[test]
fn shared_vpc_host_project_is_accepted() {
    let mut vm = testutil::vm();
    vm.network = Ok(NetworkRef {
        project_number: 555,
        name: "shared".into(),
    });
    assert!(matches!(
        node_mismatch(&node("shared", "555"), Some(&vm), true),
        NodeVerdict::Match(_)
    ));
    assert!(matches!(
        node_mismatch(&node("shared", &PROJECT.to_string()), Some(&vm), true),
        NodeVerdict::Match(_)
    ));
    let d = mismatch(&node("shared", "777"), Some(&vm));
    assert!(
            d.contains("is \"777\", neither the VM's project number \"123456789012\" nor its Shared VPC host project's \"555\""),
            "{d}"
        );
}

#[test]
fn numeric_metadata_counts() {
    let mut n = node("default", "0");
    n.metadata
        .insert(PROJECT_KEY.into(), serde_json::json!(123456789012u64));
    n.id = format!("projects/{PROJECT}/networks/default/nodes/x");
    assert!(matches!(
        node_mismatch(&n, Some(&testutil::vm()), true),
        NodeVerdict::Match(_)
    ));
}

#[test]
fn no_mesh_config_when_connected_without_listeners() {
    let mut s = snapshot();
    s.listeners = Ok(Vec::new().into());
    let o = run(&s);
    assert_eq!(ids(&o), [FindingId::NoMeshConfig]);
    assert!(o.findings[0].detail.contains("accepted 1 listener update"));

    let st = s.stats.as_mut().unwrap();
    st.lds_update_success = Some(0);
    let o = run(&s);
    assert!(o.findings.is_empty(), "{o:?}");
    let st = s.stats.as_mut().unwrap();
    st.init_fetch_timeouts
        .insert("listener_manager.lds.init_fetch_timeout".into(), 1);
    let o = run(&s);
    assert_eq!(ids(&o), [FindingId::NoMeshConfig]);
    assert!(
        o.findings[0]
            .detail
            .contains("initial fetch timed out for listeners (LDS)")
    );
    // Not connected: that is the control plane group's business.
    s.stats.as_mut().unwrap().control_plane_connected_state = Some(0);
    assert!(run(&s).findings.is_empty());
    // A refusal explains it.
    s.stats.as_mut().unwrap().control_plane_connected_state = Some(1);
    let mut o = run(&s);
    explained_by(&mut o, FindingId::MeshConfigNotFound);
    assert!(o.findings.is_empty());
    assert!(
        o.note
            .ends_with("no listener: explained by MESH_CONFIG_NOT_FOUND"),
        "{}",
        o.note
    );
}

fn rejected_entry(name: Option<&str>, details: &str) -> DynamicListener {
    DynamicListener {
        name: name.map(Into::into),
        error: Some(ListenerErrorState {
            failed_listener: Some("L".into()),
            last_update_attempt: Some("2026-11-22T10:00:00Z".into()),
            details: details.into(),
        }),
        ..DynamicListener::default()
    }
}

#[test]
fn rejected_listener_once_with_envoys_reason() {
    let mut s = snapshot();
    let reason = "Error adding/updating listener(s) L: error adding listener '127.0.0.1:9': multiple filter chains with the same matching rules are defined\n";
    let mut l = active_listener("L");
    l.error = rejected_entry(Some("L"), reason).error;
    s.listeners = Ok(vec![l, rejected_entry(None, reason)].into());
    let o = run(&s);
    assert_eq!(ids(&o), [FindingId::ConfigRejected]);
    assert_eq!(
        o.findings[0].detail,
        "Envoy holds a rejected update of listener L (last attempt 2026-11-22T10:00:00Z): Error adding/updating listener(s) L: error adding listener '127.0.0.1:9': multiple filter chains with the same matching rules are defined"
    );
}

#[test]
fn counters_growing_are_rejections_until_an_accepted_update() {
    let a = snapshot();
    let mut b = snapshot();
    b.stats.as_mut().unwrap().lds_update_rejected = Some(2);
    b.stats.as_mut().unwrap().cds_update_rejected = Some(1);
    let o = with_history(&[&a, &b], |ctx, _| check(&b, ctx));
    let d: Vec<&str> = o.findings.iter().map(|f| f.detail.as_str()).collect();
    assert_eq!(
        d,
        [
            "Envoy rejected a listener update: listener_manager.lds.update_rejected grew from 0 to 2 (Envoy's reason is in its log).",
            "Envoy rejected a cluster update: cluster_manager.cds.update_rejected grew from 0 to 1 (Envoy's reason is in its log)."
        ]
    );
    // A later accepted listener update ends the listener one.
    let mut c = b.clone();
    c.stats.as_mut().unwrap().lds_update_success = Some(2);
    let o = with_history(&[&a, &b, &c], |ctx, _| check(&c, ctx));
    assert_eq!(o.findings.len(), 1);
    assert!(o.findings[0].detail.contains("cluster update"));
    // One snapshot alone: a counter above 0 is history, not a finding.
    assert!(run(&b).findings.is_empty());
}

fn facts<'a>(map: &'a HashMap<&'a str, FileFacts>) -> impl Fn(&Path) -> StatResult + 'a {
    move |p: &Path| Ok(map.get(p.to_str().unwrap()).copied())
}

/// An access-log path as observe would have read it.
fn chain(path: &str, stats: &[(&str, StatResult)]) -> PathChain {
    PathChain {
        path: path.into(),
        stats: stats
            .iter()
            .map(|(p, s)| (PathBuf::from(p), s.clone()))
            .collect(),
    }
}

fn dir(uid: u32, mode: u32) -> FileFacts {
    FileFacts {
        uid,
        gid: uid,
        mode,
        is_dir: true,
    }
}

fn file(uid: u32, gid: u32, mode: u32) -> FileFacts {
    FileFacts {
        uid,
        gid,
        mode,
        is_dir: false,
    }
}

#[test]
fn write_permission_follows_owner_group_other() {
    let nobody = Credentials {
        uid: 65534,
        gids: Some(vec![65534]),
    };
    let mut fs = HashMap::from([
        ("/", dir(0, 0o755)),
        ("/var", dir(0, 0o755)),
        ("/var/log", dir(0, 0o755)),
    ]);
    let p = Path::new("/var/log/envoy.log");
    match can_write(p, &nobody, facts(&fs)) {
        Access::Denied(why) => assert_eq!(
            why,
            "'/var/log/envoy.log' does not exist and UID 65534 may not create it in '/var/log' (owner 0:0, mode 0755)"
        ),
        other => panic!("{other:?}"),
    }
    // Root may.
    let root = Credentials { uid: 0, gids: None };
    assert_eq!(can_write(p, &root, facts(&fs)), Access::Allowed);
    // An existing file owned by root, group-writable for a group Envoy is in.
    fs.insert("/var/log/envoy.log", file(0, 4, 0o664));
    assert!(matches!(
        can_write(p, &nobody, facts(&fs)),
        Access::Denied(_)
    ));
    let adm = Credentials {
        uid: 65534,
        gids: Some(vec![65534, 4]),
    };
    assert_eq!(can_write(p, &adm, facts(&fs)), Access::Allowed);
    // Groups unknown: cannot tell.
    let unknown = Credentials {
        uid: 65534,
        gids: None,
    };
    assert!(matches!(
        can_write(p, &unknown, facts(&fs)),
        Access::Unknown(_)
    ));
    // Owner without the write bit is denied even if others may write.
    fs.insert("/var/log/envoy.log", file(65534, 0, 0o466));
    assert!(matches!(
        can_write(p, &nobody, facts(&fs)),
        Access::Denied(_)
    ));
    // A directory it cannot enter.
    fs.insert("/var/log", dir(0, 0o700));
    match can_write(p, &nobody, facts(&fs)) {
        Access::Denied(why) => {
            assert!(why.contains("cannot enter directory '/var/log'"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // A missing directory.
    let q = Path::new("/var/missing/envoy.log");
    match can_write(q, &nobody, facts(&fs)) {
        Access::Denied(why) => assert!(why.contains("'/var/missing' does not exist"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        can_write(Path::new("relative.log"), &nobody, facts(&fs)),
        Access::Unknown(_)
    ));
}

#[test]
fn access_log_from_error_state_names_path_uid_and_listener() {
    let mut s = snapshot();
    let reason = "Error adding/updating listener(s) TRAFFICDIRECTOR_INTERCEPTION_LISTENER: unable to open file '/nonexistent-spa/access.log': Permission denied\n";
    let mut l = active_listener("TRAFFICDIRECTOR_INTERCEPTION_LISTENER");
    l.error = rejected_entry(Some("TRAFFICDIRECTOR_INTERCEPTION_LISTENER"), reason).error;
    s.listeners = Ok(vec![l].into());
    s.server_info
        .as_mut()
        .unwrap()
        .node
        .metadata
        .insert(ACCESS_LOG_KEY.into(), "/nonexistent-spa/access.log".into());
    s.access_log = Some(chain(
        "/nonexistent-spa/access.log",
        &[
            ("/", Ok(Some(dir(0, 0o755)))),
            ("/nonexistent-spa", Ok(None)),
        ],
    ));
    s.resolved.envoy_uid = Some(65534);
    s.admin_pid = None;
    let o = run(&s);
    assert_eq!(
        ids(&o),
        [FindingId::ConfigRejected, FindingId::AccessLogNotWritable]
    );
    let d = &o.findings[1].detail;
    assert_eq!(
        d,
        "Envoy cannot write its access log '/nonexistent-spa/access.log': directory '/nonexistent-spa' does not exist (Envoy does not create directories); Envoy runs as UID 65534. Envoy rejected listener TRAFFICDIRECTOR_INTERCEPTION_LISTENER because of it: unable to open file '/nonexistent-spa/access.log': Permission denied."
    );
    assert!(o.findings[1].remediation.contains("Let UID 65534 write"));

    // The log's sightings of the same path and of the listener rejection add nothing.
    let mut o2 = o.clone();
    merge_log_findings(
        &mut o2,
        vec![
            (
                Finding::new(FindingId::AccessLogNotWritable, "from the log"),
                "/nonexistent-spa/access.log".into(),
            ),
            (
                Finding::new(FindingId::ConfigRejected, "from the log"),
                "Listener".into(),
            ),
            (
                Finding::new(FindingId::ConfigRejected, "cluster"),
                "Cluster".into(),
            ),
        ],
    );
    assert_eq!(o2.findings.len(), 3);
    assert_eq!(o2.findings[2].detail, "cluster");
}

#[test]
fn configured_access_log_path_is_judged_without_a_rejection() {
    let mut s = snapshot();
    s.server_info
        .as_mut()
        .unwrap()
        .node
        .metadata
        .insert(ACCESS_LOG_KEY.into(), "/proc/spa-no-such/access.log".into());
    s.access_log = Some(chain(
        "/proc/spa-no-such/access.log",
        &[
            ("/", Ok(Some(dir(0, 0o755)))),
            ("/proc", Ok(Some(dir(0, 0o555)))),
            ("/proc/spa-no-such", Ok(None)),
        ],
    ));
    s.resolved.envoy_uid = Some(65534);
    s.admin_pid = None;
    let o = run(&s);
    assert_eq!(ids(&o), [FindingId::AccessLogNotWritable]);
    assert!(
        o.findings[0]
            .detail
            .contains("listeners that log there will be rejected"),
        "{}",
        o.findings[0].detail
    );
    // Unknown UID: said, not guessed.
    s.resolved.envoy_uid = None;
    let o = run(&s);
    assert!(o.findings.is_empty());
    assert!(
        o.not_checked
            .unwrap()
            .contains("the UID Envoy runs as is unknown")
    );
}

#[test]
fn server_first_ports() {
    let mut s = snapshot();
    s.resolved.serving_ports = vec![80, 3306, 25];
    let o = run(&s);
    assert_eq!(ids(&o), [FindingId::ServerFirstProtocol]);
    assert_eq!(
        o.findings[0].detail,
        "serving ports 3306 (MySQL), 25 (SMTP) are a protocol whose server speaks first: intercepted by Envoy, its clients wait for a greeting that never comes."
    );
    s.resolved.serving_ports = vec![80, 8080];
    assert!(run(&s).findings.is_empty());
}

#[test]
fn admin_down_is_not_checked_but_ports_still_are() {
    let mut s = snapshot();
    s.server_info = Err(testutil::admin_down());
    s.listeners = Err(testutil::admin_down());
    s.stats = Err(testutil::admin_down());
    s.resolved.serving_ports = vec![3306];
    let o = run(&s);
    assert_eq!(ids(&o), [FindingId::ServerFirstProtocol]);
    assert!(o.not_checked.unwrap().contains("admin is not answering"));
}

#[test]
fn no_node_in_server_info_is_unknown_not_lacking() {
    let mut s = snapshot();
    let info = s.server_info.as_mut().unwrap();
    info.node = Node::default();
    s.listeners = Err(crate::observe::envoy_admin::AdminError::Status {
        endpoint: "/config_dump?resource=dynamic_listeners",
        status: 404,
        body: "invalid path".into(),
    });
    let o = run(&s);
    assert!(o.findings.is_empty(), "{o:?}");
    let why = o.not_checked.unwrap();
    assert!(why.contains("shows no bootstrap node"), "{why}");
    assert!(why.contains("dynamic listeners unreadable"), "{why}");
}

#[test]
fn metadata_down_is_said() {
    let mut s = snapshot();
    s.vm = Err(testutil::metadata_down());
    let o = run(&s);
    assert!(o.findings.is_empty());
    assert!(
        o.not_checked
            .unwrap()
            .contains("metadata server not answering")
    );
}
