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
