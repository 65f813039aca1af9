//! `doctor` end to end: the real binary against a real Envoy fed by the xDS stand-in, with the
//! metadata emulator as the metadata server.

use crate::support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{agent, closed_port, run, stderr, stdout};
use testkit::envoy::{Envoy, envoy_version};
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};
use testkit::xds::{ControlPlane, ExpectedNode, InterceptionSpec, ServiceVip};

const WAIT: Duration = Duration::from_secs(30);

fn json(o: &std::process::Output) -> Value {
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}):\n{}\n{}",
            stdout(o),
            stderr(o)
        )
    })
}

fn ids(report: &Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn doctor_reports_real_envoy_version_state_and_vips() {
    let vm = VmIdentity::default();
    let project = vm.project_number.to_string();
    let md = MetadataEmulator::start(vm).unwrap();
    let cp = ControlPlane::start().unwrap();
    let spec = InterceptionSpec::new(15001, &project)
        .service(ServiceVip::parse("10.0.0.1:80").unwrap())
        .service(ServiceVip::parse("10.7.240.0/20:8080").unwrap());
    cp.set_interception(&spec);
    cp.expect_node(Some(ExpectedNode::new("default", &project)));
    let mut bootstrap = cp.bootstrap("default", &project);
    bootstrap.interception_port = Some(15001);
    let envoy = Envoy::start(bootstrap.envoy_config()).expect("real Envoy (tests/setup-envoy.sh)");
    envoy.wait_live(WAIT).unwrap();
    envoy
        .wait_until(WAIT, "VIPs in dynamic listeners", |e| {
            Ok(e.admin_get("/config_dump?resource=dynamic_listeners")?
                .1
                .contains("10.7.240.0"))
        })
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut cmd = agent(&md.host(), dir.path());
    cmd.args(["doctor", "--json", "--interception", "off"])
        .args(["--envoy-admin", &envoy.admin_url()])
        .arg("--envoy-log-dir")
        .arg(envoy.dir())
        .args(["--control-plane", &cp.addr().to_string()]);
    let (out, _) = run(cmd, Duration::from_secs(60));
    let report = json(&out);
    assert_eq!(
        report["observed"]["proxy_version"],
        envoy_version().unwrap().as_str(),
        "{report:#}"
    );
    assert_eq!(report["observed"]["proxy_state"], "LIVE");
    assert_eq!(
        report["observed"]["listener_vips"],
        serde_json::json!(["10.0.0.1/32", "10.7.240.0/20"])
    );
    assert_eq!(report["observed"]["interception"], "off");
    assert_eq!(report["health"], "OK", "{report:#}");
    assert!(ids(&report).is_empty(), "{report:#}");
    assert!(humantime::parse_rfc3339(report["generated_at"].as_str().unwrap()).is_ok());
    assert_eq!(out.status.code(), Some(0));

    // The text report says the same, one line per check group.
    let mut cmd = agent(&md.host(), dir.path());
    cmd.args(["doctor", "--interception", "off"])
        .args(["--envoy-admin", &envoy.admin_url()])
        .arg("--envoy-log-dir")
        .arg(envoy.dir())
        .args(["--control-plane", &cp.addr().to_string()]);
    let (out, _) = run(cmd, Duration::from_secs(60));
    let text = stdout(&out);
    assert!(text.contains("  ✓ proxy             Envoy 1."), "{text}");
    assert!(text.contains("Verdict: OK"), "{text}");
    assert_eq!(out.status.code(), Some(0));
}

/// In a fresh PID namespace no Envoy runs, whatever the rest of the machine (other tests) runs.
#[test]
fn doctor_without_envoy_reports_it_and_exits_1() {
    let md = MetadataEmulator::start(VmIdentity::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inner = agent(&md.host(), dir.path());
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--"])
        .arg(inner.get_program());
    cmd.args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.args(["doctor", "--json", "--interception", "off"])
        .args([
            "--envoy-admin",
            &format!("http://127.0.0.1:{}", closed_port()),
        ])
        .arg("--envoy-log-dir")
        .arg(dir.path().join("no-logs"))
        .args(["--control-plane", &format!("127.0.0.1:{}", closed_port())]);
    let (out, _) = run(cmd, Duration::from_secs(60));
    assert!(
        !stderr(&out).contains("unshare:"),
        "a private PID namespace needs root: {}",
        stderr(&out)
    );
    let report = json(&out);
    let found = ids(&report);
    assert!(
        found.contains(&"ENVOY_NOT_RUNNING".to_owned()),
        "{report:#}"
    );
    assert!(
        !found.contains(&"ENVOY_ADMIN_UNREACHABLE".to_owned()),
        "{report:#}"
    );
    assert_eq!(report["observed"]["proxy_state"], "NOT_RUNNING");
    assert_eq!(report["health"], "FAILING");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn doctor_without_metadata_server_finishes_quickly_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = agent(&format!("127.0.0.1:{}", closed_port()), dir.path());
    cmd.args(["doctor", "--json", "--interception", "off"])
        .args([
            "--envoy-admin",
            &format!("http://127.0.0.1:{}", closed_port()),
        ])
        .arg("--envoy-log-dir")
        .arg(dir.path())
        .args(["--control-plane", &format!("127.0.0.1:{}", closed_port())]);
    let (out, took) = run(cmd, Duration::from_secs(60));
    let report = json(&out);
    assert!(
        ids(&report).contains(&"METADATA_UNREACHABLE".to_owned()),
        "{report:#}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bad_flag_value_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = agent("127.0.0.1:1", dir.path());
    cmd.args(["doctor", "--poll-interval", "soon"]);
    let (out, _) = run(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--poll-interval") && err.contains("expected a duration"),
        "{err}"
    );
}
