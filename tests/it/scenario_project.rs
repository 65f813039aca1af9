//! The project-side checks (docs/contract.md#10-project-side-checks) end to end, from real parts: real Envoy against the xDS
//! stand-in, the metadata emulator issuing the token, and testkit's emulators of Google's APIs
//! checking it (`testkit::project_apis`, proved with Google's Python client in
//! `tests/it/project_apis.rs`), through the real `doctor --json` binary and the real daemon.
//! Each new finding is produced here, and each "not checked" path (403 API disabled, 403
//! denied, 404, timeout, `--cloud-checks off`).

use crate::scenarios_common as common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use testkit::envoy::Envoy;
use testkit::metadata_emulator::MetadataEmulator;
use testkit::project_apis::{Api, ApiFault, ForwardingRule, ProjectApis, ProjectState};
use testkit::xds::{ControlPlane, ExpectedNode, Failure, InterceptionSpec, ServiceVip};

const ACCOUNT: &str = "123456789012-compute@developer.gserviceaccount.com";

fn apis(md: &MetadataEmulator) -> ProjectApis {
    let v = md.vm();
    ProjectApis::start(ProjectState::new(
        &v.project_id,
        v.project_number,
        &md.token(),
    ))
}

fn endpoint_flags(url: &str) -> Vec<String> {
    [
        "--compute-endpoint",
        "--trafficdirector-endpoint",
        "--resourcemanager-endpoint",
        "--serviceusage-endpoint",
    ]
    .iter()
    .flat_map(|f| [(*f).to_owned(), url.to_owned()])
    .collect()
}

fn doctor(md: &MetadataEmulator, envoy: &Envoy, cp: &ControlPlane, apis: &ProjectApis) -> Report {
    let flags = endpoint_flags(&apis.url());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Doctor::new(&md.host())
        .envoy(envoy)
        .control_plane(&cp.addr().to_string())
        .args(&flags)
        .run()
}

/// The project report's line for one check: `{check, status, detail}`.
fn check(r: &Report, name: &str) -> Value {
    r.json["project"]["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["check"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no project check {name}: {:#}", r.json))
}

fn status(r: &Report, name: &str) -> String {
    check(r, name)["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn connected_envoy(cp: &ControlPlane, p: &str) -> (Envoy, InterceptionSpec) {
    let spec =
        InterceptionSpec::new(free_port(), p).service(ServiceVip::parse("10.0.0.1:80").unwrap());
    cp.set_interception(&spec);
    let envoy = start_envoy(&cp.bootstrap("default", p));
    envoy
        .wait_until(WAIT, "listener", |e| {
            Ok(e.admin_get("/config_dump?resource=dynamic_listeners")?
                .1
                .contains("10.0.0.1"))
        })
        .unwrap();
    (envoy, spec)
}

#[test]
fn iam_api_and_xds_sync_from_the_projects_apis() {
    let md = vm();
    let p = project();
    let cp = ControlPlane::start().unwrap();
    let (envoy, spec) = connected_envoy(&cp, &p);
    let apis = apis(&md);
    apis.feed_csds(cp.handle());

    // All well: every project check passed, with the emulators checking the VM's token.
    let r = doctor(&md, &envoy, &cp, &apis);
    for c in ["iam", "api", "csds"] {
        assert_eq!(status(&r, c), "passed", "{c}: {:#}", r.json);
    }
    assert_eq!(r.group("project")["status"], "pass", "{:#}", r.json);
    r.lacks("XDS_NOT_SYNCED");
    let bearer = format!("Bearer {}", md.token());
    assert!(
        apis.requests()
            .iter()
            .all(|q| q.header("authorization") == Some(bearer.as_str()))
    );

    // IAM_PERMISSION_MISSING: without getConfigs an error naming the account and permission.
    apis.update(|s| {
        s.granted.remove("trafficdirector.networks.getConfigs");
    });
    let r = doctor(&md, &envoy, &cp, &apis);
    let f = r.one("IAM_PERMISSION_MISSING");
    assert_eq!(f["severity"], "error");
    contains_all(
        f["detail"].as_str().unwrap(),
        &[ACCOUNT, "trafficdirector.networks.getConfigs"],
    );
    assert_eq!(r.code, Some(1));
    // ... and a warning for logging only.
    apis.update(|s| {
        s.granted
            .insert("trafficdirector.networks.getConfigs".into());
        s.granted.remove("logging.logEntries.create");
    });
    let r = doctor(&md, &envoy, &cp, &apis);
    assert_eq!(r.one("IAM_PERMISSION_MISSING")["severity"], "warning");
    apis.update(|s| {
        s.granted.insert("logging.logEntries.create".into());
    });

    // XDS_NOT_SYNCED: a listener Envoy rejects; the control plane's view (fed from its own
    // records of Envoy's NACK) says NACKED, while Envoy keeps the older version.
    cp.set_listeners(vec![
        spec.listener(),
        testkit::xds::resources::rejected_listener("bad-listener", free_port()),
    ]);
    wait_log(&envoy, "rejected: ", WAIT);
    cp.wait_until(WAIT, "a NACK", |o| o.nacks().next().is_some())
        .unwrap();
    let r = doctor(&md, &envoy, &cp, &apis);
    let f = r.one("XDS_NOT_SYNCED");
    assert_eq!(f["severity"], "error", "{f:#}");
    contains_all(
        f["detail"].as_str().unwrap(),
        &["Listener bad-listener", "ERROR/NACKED"],
    );
    assert_eq!(status(&r, "csds"), "found");

    // A resource the control plane holds STALE beyond the grace period, in the older
    // `xdsConfig` answer: a warning.
    cp.set_listeners(vec![spec.listener()]);
    let good = cp.version(testkit::xds::LISTENER_TYPE).unwrap();
    cp.wait_until(WAIT, "the fixed listeners ACKed", |o| {
        o.acks
            .iter()
            .any(|a| a.version == good && a.nack.is_none() && a.type_url.ends_with("Listener"))
    })
    .unwrap();
    let r = doctor(&md, &envoy, &cp, &apis);
    r.lacks("XDS_NOT_SYNCED");
    // The control plane counts a listener version as acknowledged that Envoy does not have.
    apis.update(|s| {
        s.csds_overrides.insert(
            (testkit::xds::LISTENER_TYPE.into(), spec.listener().name),
            testkit::project_apis::CsdsOverride {
                config_status: "SYNCED".into(),
                client_status: "ACKED".into(),
                version: Some("999".into()),
                last_updated: None,
            },
        );
    });
    let r = doctor(&md, &envoy, &cp, &apis);
    contains_all(
        &r.detail("XDS_NOT_SYNCED"),
        &[&format!(
            "version 999: the control plane counts it as acknowledged, Envoy has version {good}"
        )],
    );
    apis.update(|s| {
        s.csds_overrides.insert(
            (testkit::xds::LISTENER_TYPE.into(), spec.listener().name),
            testkit::project_apis::CsdsOverride {
                config_status: "NOT_SENT".into(),
                client_status: "UNKNOWN".into(),
                version: None,
                last_updated: None,
            },
        );
        s.legacy_csds = true;
    });
    let r = doctor(&md, &envoy, &cp, &apis);
    assert_eq!(
        r.one("XDS_NOT_SYNCED")["severity"],
        "warning",
        "{:#}",
        r.json
    );
    apis.update(|s| {
        s.csds_overrides.clear();
        s.legacy_csds = false;
    });

    // Service Usage says DISABLED: CONTROL_PLANE_API_DISABLED; CSDS then answers 403
    // "has not been used", which is a reason not to check, not a finding.
    apis.update(|s| {
        s.enabled.remove(&Api::TrafficDirector);
    });
    let r = doctor(&md, &envoy, &cp, &apis);
    contains_all(
        r.one("CONTROL_PLANE_API_DISABLED")["remediation"]
            .as_str()
            .unwrap(),
        &["gcloud services enable trafficdirector.googleapis.com --project 123456789012"],
    );
    assert_eq!(status(&r, "csds"), "not_checked");
    contains_all(
        check(&r, "csds")["detail"].as_str().unwrap(),
        &["Traffic Director API is not enabled in project 123456789012"],
    );
    r.lacks("XDS_NOT_SYNCED");
}

/// The control plane stops pushing: it holds a newer listener version that Envoy never got, so
/// its own view (CSDS) says STALE; beyond the grace period that is XDS_NOT_SYNCED.
#[test]
fn a_control_plane_that_stops_pushing_is_xds_not_synced_stale() {
    let md = vm();
    let p = project();
    let cp = ControlPlane::start().unwrap();
    let (envoy, spec) = connected_envoy(&cp, &p);
    let apis = apis(&md);
    apis.feed_csds(cp.handle());
    let r = doctor(&md, &envoy, &cp, &apis);
    r.lacks("XDS_NOT_SYNCED");
    cp.fail_ads(Failure::new(14, "upstream connect error"));
    envoy
        .wait_until(WAIT, "disconnected", |e| {
            Ok(stat(e, "control_plane.connected_state").as_deref() == Some("0"))
        })
        .unwrap();
    let mut more = spec.clone();
    more.add_service(ServiceVip::parse("10.0.0.2:80").unwrap());
    cp.set_listeners(vec![more.listener()]);
    let newer = cp.version(testkit::xds::LISTENER_TYPE).unwrap();
    // Just sent: within the grace period, not a fault yet.
    let r = doctor(&md, &envoy, &cp, &apis);
    r.lacks("XDS_NOT_SYNCED");
    apis.update(|s| s.stale_for = Some(Duration::from_secs(600)));
    let r = doctor(&md, &envoy, &cp, &apis);
    let f = r.one("XDS_NOT_SYNCED");
    assert_eq!(f["severity"], "warning");
    contains_all(
        f["detail"].as_str().unwrap(),
        &[&format!("version {newer}: STALE for 10m")],
    );
    // Envoy really does not have it.
    assert!(
        !envoy
            .admin_get("/config_dump?resource=dynamic_listeners")
            .unwrap()
            .1
            .contains("10.0.0.2")
    );
}

#[test]
fn envoys_close_message_is_control_plane_api_disabled() {
    let md = vm();
    let p = project();
    let cp = ControlPlane::start().unwrap();
    cp.fail_ads(Failure::new(
        7,
        "Traffic Director API has not been used in project 123456789012 before or it is disabled. Enable it by visiting https://console.developers.google.com/apis/api/trafficdirector.googleapis.com/overview?project=123456789012 then retry.",
    ));
    let mut spec = cp.bootstrap("default", &p);
    spec.initial_fetch_timeout = Duration::from_secs(1);
    let envoy = start_envoy(&spec);
    wait_log(&envoy, "closed: 7, ", WAIT);
    // Service Usage is not permitted to the client role: its check is not checked, and
    // Envoy's own words still name the cause.
    let apis = apis(&md);
    apis.update(|s| s.serviceusage_permitted = false);
    let r = doctor(&md, &envoy, &cp, &apis);
    let f = r.one("CONTROL_PLANE_API_DISABLED");
    contains_all(
        f["detail"].as_str().unwrap(),
        &["Traffic Director API is disabled in project 123456789012"],
    );
    contains_all(
        f["remediation"].as_str().unwrap(),
        &["gcloud services enable trafficdirector.googleapis.com --project 123456789012"],
    );
    assert_eq!(status(&r, "api"), "found");
}

#[test]
fn mesh_config_not_found_names_the_forwarding_rules_networks() {
    let md = vm();
    let p = project();
    let cp = ControlPlane::start().unwrap();
    cp.expect_node(Some(ExpectedNode::new("default", &p)));
    let mut spec = cp.bootstrap("prod-vpc", &p);
    spec.initial_fetch_timeout = Duration::from_secs(1);
    let envoy = start_envoy(&spec);
    wait_log(&envoy, "closed: 5, ", WAIT);
    let apis = apis(&md);
    apis.update(|s| {
        s.forwarding_rules = vec![
            ForwardingRule::self_managed("td-a", "default", "10.0.0.1"),
            ForwardingRule::self_managed("td-b", "default", "10.0.0.2"),
        ];
    });
    let r = doctor(&md, &envoy, &cp, &apis);
    contains_all(
        &r.detail("MESH_CONFIG_NOT_FOUND"),
        &["none in network prod-vpc; 2 in default (td-a, td-b)"],
    );
    assert_eq!(status(&r, "forwarding_rules"), "found");
    assert_eq!(apis.calls_to(Api::Compute), 1);
}

#[test]
fn each_check_that_cannot_run_is_not_checked_with_its_reason() {
    let md = vm();
    let p = project();
    let cp = ControlPlane::start().unwrap();
    let (envoy, _spec) = connected_envoy(&cp, &p);
    let apis = apis(&md);
    apis.feed_csds(cp.handle());
    // 403 (Cloud Resource Manager disabled), 403 (denied), timeout; no finding from any.
    apis.update(|s| {
        s.enabled.remove(&Api::ResourceManager);
        s.serviceusage_permitted = false;
    });
    apis.set_fault(Api::TrafficDirector, Some(ApiFault::Hang));
    let start = Instant::now();
    let r = doctor(&md, &envoy, &cp, &apis);
    assert!(start.elapsed() < Duration::from_secs(30));
    for id in [
        "IAM_PERMISSION_MISSING",
        "CONTROL_PLANE_API_DISABLED",
        "XDS_NOT_SYNCED",
    ] {
        r.lacks(id);
    }
    assert_eq!(r.code, Some(0), "{:#}", r.json);
    contains_all(
        check(&r, "iam")["detail"].as_str().unwrap(),
        &["Cloud Resource Manager API is not enabled in project 123456789012"],
    );
    contains_all(
        check(&r, "api")["detail"].as_str().unwrap(),
        &["permission denied (HTTP 403)", "serviceusage.services.get"],
    );
    contains_all(
        check(&r, "csds")["detail"].as_str().unwrap(),
        &["no answer within"],
    );
    assert_eq!(r.group("project")["status"], "not_checked", "{:#}", r.json);

    // 404.
    apis.set_fault(
        Api::TrafficDirector,
        Some(ApiFault::Status(
            404,
            "Requested entity was not found.".into(),
        )),
    );
    let r = doctor(&md, &envoy, &cp, &apis);
    contains_all(
        check(&r, "csds")["detail"].as_str().unwrap(),
        &["not found (HTTP 404)"],
    );

    // --cloud-checks off: no call at all.
    let before = apis.requests().len();
    let flags = endpoint_flags(&apis.url());
    let mut flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    flags.extend(["--cloud-checks", "off"]);
    let r = Doctor::new(&md.host())
        .envoy(&envoy)
        .control_plane(&cp.addr().to_string())
        .args(&flags)
        .run();
    assert_eq!(check(&r, "iam")["detail"], "--cloud-checks off");
    assert_eq!(apis.requests().len(), before);
}

/// The daemon: the checks run at start in their own task (2 calls: IAM and CSDS), and polling
/// costs no more; the metric counts the calls. An API that hangs does not delay the cycle.
#[test]
fn daemon_call_budget_and_a_hanging_api_never_delay_the_poll() {
    let md = vm();
    let p = project();
    let cp = ControlPlane::start().unwrap();
    let (envoy, _spec) = connected_envoy(&cp, &p);
    let apis = apis(&md);
    apis.feed_csds(cp.handle());
    apis.set_fault(Api::ResourceManager, Some(ApiFault::Hang));
    let metrics_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("SPA_") || k == "GOOGLE_APPLICATION_CREDENTIALS" {
            cmd.env_remove(k);
        }
    }
    cmd.env("GCE_METADATA_HOST", md.host())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--envoy-admin", &envoy.admin_url()])
        .arg("--envoy-log-dir")
        .arg(envoy.dir())
        .args([
            "--interception",
            "off",
            "--cloud-logging",
            "off",
            "--poll-interval",
            "1s",
            "--log-format",
            "json",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--control-plane",
            &cp.addr().to_string(),
        ])
        .args(endpoint_flags(&apis.url()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("out.log")).unwrap())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let scrape = || -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    };
    let value = |text: &str, name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
    };
    // While Resource Manager hangs (10 s deadline), cycles keep completing.
    let deadline = Instant::now() + WAIT;
    let mut cycles_seen = 0;
    while Instant::now() < deadline {
        if let Some(t) = scrape()
            && let Some(c) = value(&t, "spa_cycles_total")
        {
            cycles_seen = c;
            if c >= 6 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        cycles_seen >= 6,
        "the poll cycle stalled: {cycles_seen} cycles"
    );
    assert!(
        apis.calls_to(Api::ResourceManager) == 1 && apis.calls_to(Api::TrafficDirector) == 1,
        "{:?}",
        apis.requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );
    // Twelve more polls: no further call; the metric says 2.
    let start = value(&scrape().unwrap_or_default(), "spa_cycles_total").unwrap_or(0);
    let deadline = Instant::now() + WAIT;
    let mut text = String::new();
    while Instant::now() < deadline {
        text = scrape().unwrap_or_default();
        if value(&text, "spa_cycles_total").is_some_and(|c| c >= start + 12) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        value(&text, "spa_cycles_total").is_some_and(|c| c >= start + 12),
        "{text}"
    );
    assert_eq!(
        value(&text, "spa_project_api_calls_total"),
        Some(2),
        "{text}"
    );
    assert_eq!(apis.requests().len(), 2);
    // The hanging call ended at its deadline: "not checked" with the reason, logged once; the
    // token in no line.
    let log = || std::fs::read_to_string(dir.path().join("out.log")).unwrap_or_default();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline && !log().contains("project check iam not checked") {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let log = log();
    assert_eq!(
        log.matches("project check iam not checked: no answer within")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains(&md.token()), "the token leaked into the log");
}
