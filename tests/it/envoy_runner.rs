//! The test harness's Envoy runner against the real binary.
use std::time::Duration;
use testkit::envoy::{Envoy, EnvoyConfig, minimal_bootstrap};

#[test]
fn real_envoy_starts_answers_admin_and_stops() {
    let mut envoy = Envoy::start(EnvoyConfig::new(minimal_bootstrap(
        "projects/123/networks/default/nodes/test",
        serde_json::json!({"TRAFFICDIRECTOR_NETWORK_NAME": "default"}),
    )))
    .expect("start real Envoy");
    envoy.wait_live(Duration::from_secs(20)).unwrap();
    let (status, body) = envoy.admin_get("/server_info").unwrap();
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["state"], "LIVE");
    assert_eq!(
        info["version"].as_str().unwrap(),
        testkit::envoy::envoy_version().unwrap()
    );
    assert!(envoy.is_running());
    envoy.stop();
    assert!(!envoy.is_running());
}

#[test]
fn real_envoy_runs_as_an_unprivileged_uid() {
    let mut cfg = EnvoyConfig::new(minimal_bootstrap("n", serde_json::json!({})));
    cfg.run_as = Some((65534, 65534));
    let envoy = Envoy::start(cfg).expect("start real Envoy as uid 65534");
    envoy.wait_live(Duration::from_secs(20)).unwrap();
    let pid = envoy.pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().nth(1) == Some("65534"),
        "{uid_line}"
    );
}
