//! The project-side calls (docs/contract.md#10-project-side-checks) against testkit's emulators of Google's APIs, with the token
//! the metadata emulator issues, read through the agent's own metadata client:
//! - the emulators are first proved with Google's real `google-api-python-client`;
//! - then every typed result the agent's calls give: answers, and each "not checked" path
//!   (403 API disabled, 403 denied, 404, 401, timeout);
//! - Cloud Logging's sink on a VM uses the same metadata token, end to end.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use service_proxy_agent::observe::metadata::MetadataClient;
use service_proxy_agent::observe::project::{
    ApiEndpoints, ApiError, GET_CONFIGS, NodeView, Plan, ProjectApis, ServiceState,
};
use service_proxy_agent::observe::token::MetadataTokens;
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};
use testkit::project_apis::{self, Api, ApiFault, ForwardingRule, ProjectState};
use testkit::xds::{ControlPlane, InterceptionSpec, ServiceVip};

fn python() -> String {
    match std::env::var("SPA_PYTHON") {
        Ok(p) if std::path::Path::new(&p).exists() => p,
        _ => panic!(
            "SPA_PYTHON must name the python of the venv with google-api-python-client (tests/run.sh sets it after tests/setup-google-clients.sh)"
        ),
    }
}

struct World {
    vm: MetadataEmulator,
    apis: project_apis::ProjectApis,
    tokens: Arc<MetadataTokens>,
    rt: tokio::runtime::Runtime,
}

fn world() -> World {
    let vm = MetadataEmulator::start(VmIdentity::default()).unwrap();
    let ident = vm.vm();
    let apis = project_apis::ProjectApis::start(ProjectState::new(
        &ident.project_id,
        ident.project_number,
        &vm.token(),
    ));
    let tokens = Arc::new(MetadataTokens::new(MetadataClient::new(
        &vm.host(),
        Duration::from_secs(3),
    )));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    World {
        vm,
        apis,
        tokens,
        rt,
    }
}

impl World {
    fn client(&self) -> ProjectApis {
        let u = self.apis.url();
        ProjectApis::new(
            ApiEndpoints {
                resourcemanager: u.clone(),
                serviceusage: u.clone(),
                trafficdirector: u.clone(),
                compute: u,
            },
            self.tokens.clone(),
        )
    }

    fn node(&self) -> NodeView {
        let v = self.vm.vm();
        NodeView {
            project_id: v.project_id,
            project_number: v.project_number,
            network: Some("default".into()),
            node_id: Some("projects/123456789012/networks/default/nodes/n1".into()),
            envoy_lds_version: None,
        }
    }
}

#[test]
fn googles_python_client_drives_the_emulators() {
    let py = python();
    let w = world();
    let cp = ControlPlane::start().unwrap();
    cp.set_interception(
        &InterceptionSpec::new(15001, "123456789012")
            .service(ServiceVip::parse("10.0.0.1:80").unwrap()),
    );
    w.apis.feed_csds(cp.handle());
    w.apis.update(|s| {
        s.forwarding_rules = vec![
            ForwardingRule::self_managed("fr-a", "default", "10.0.0.1"),
            ForwardingRule {
                scheme: "EXTERNAL".into(),
                ..ForwardingRule::self_managed("ext", "default", "34.1.1.1")
            },
        ];
        s.granted.remove("logging.logEntries.create");
    });
    // The token as the agent reads it from the metadata emulator.
    let token = w.rt.block_on(w.tokens.token()).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/google_clients/project_apis.py"
    );
    let run = || -> Value {
        let out = Command::new(&py)
            .args([
                script,
                &w.apis.url(),
                token.secret(),
                "demo-project",
                "123456789012",
                "projects/123456789012/networks/default/nodes/n1",
                "default",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let v = run();
    assert_eq!(
        v["iam"]["ok"]["permissions"],
        serde_json::json!([
            "trafficdirector.networks.getConfigs",
            "trafficdirector.networks.reportMetrics"
        ]),
        "{v}"
    );
    assert_eq!(v["service"]["ok"]["state"], "ENABLED", "{v}");
    let generic = &v["csds"]["ok"]["config"][0]["genericXdsConfigs"];
    assert!(
        generic
            .as_array()
            .is_some_and(|g| g.iter().any(|r| r["typeUrl"]
                .as_str()
                .is_some_and(|t| t.ends_with("Listener")))),
        "{v}"
    );
    let rules = &v["rules"]["ok"]["items"]["global"]["forwardingRules"];
    assert_eq!(rules.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(rules[0]["name"], "fr-a");
    // Every request carried the metadata emulator's token.
    for r in w.apis.requests() {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {}", w.vm.token()).as_str())
        );
    }

    // Errors as Google gives them, as the client reads them.
    w.apis.update(|s| {
        s.enabled.remove(&Api::ResourceManager);
        s.serviceusage_permitted = false;
    });
    w.apis.set_fault(
        Api::Compute,
        Some(ApiFault::Status(404, "not found".into())),
    );
    let v = run();
    assert_eq!(v["iam"]["status"], 403, "{v}");
    assert!(
        v["iam"]["reason"]
            .as_str()
            .is_some_and(|r| r
                .contains("has not been used in project 123456789012 before or it is disabled")),
        "{v}"
    );
    assert_eq!(v["iam"]["details"][0]["reason"], "SERVICE_DISABLED", "{v}");
    assert_eq!(v["service"]["status"], 403, "{v}");
    assert_eq!(v["rules"]["status"], 404, "{v}");
}

#[test]
fn the_agents_calls_answer_with_the_metadata_token() {
    let w = world();
    w.apis.update(|s| {
        s.granted.remove(GET_CONFIGS);
        s.forwarding_rules = vec![ForwardingRule::self_managed("fr-a", "default", "10.0.0.1")];
    });
    let c = w.client();
    let obs = w.rt.block_on(c.gather(w.node(), Plan::ALL));
    assert_eq!(
        obs.iam,
        Some(Ok(vec![
            "trafficdirector.networks.reportMetrics".to_owned(),
            "logging.logEntries.create".to_owned()
        ]))
    );
    assert_eq!(
        obs.account.as_deref(),
        Some("123456789012-compute@developer.gserviceaccount.com")
    );
    assert_eq!(obs.service, Some(Ok(ServiceState::Enabled)));
    assert_eq!(obs.csds, Some(Ok(vec![])));
    let rules = obs.forwarding_rules.unwrap().unwrap();
    assert_eq!(rules[0].network, "default");
    assert_eq!(
        c.counter.calls.load(std::sync::atomic::Ordering::Relaxed),
        4
    );
    // One token request for the four calls: it is cached.
    let token_reads =
        w.vm.requests()
            .iter()
            .filter(|r| r.path.ends_with("service-accounts/default/token"))
            .count();
    assert_eq!(token_reads, 1);
}

#[test]
fn each_not_checked_path_has_its_reason() {
    let w = world();
    let c = w.client().with_timeout(Duration::from_millis(500));
    // Cloud Resource Manager disabled: 403 "has not been used".
    w.apis.update(|s| {
        s.enabled.remove(&Api::ResourceManager);
    });
    let e =
        w.rt.block_on(c.test_iam_permissions("demo-project"))
            .unwrap_err();
    assert!(
        matches!(&e, ApiError::Disabled { api, project, .. } if api == "Cloud Resource Manager API" && project == "123456789012"),
        "{e}"
    );
    // Service Usage: the client role lacks serviceusage.services.get.
    w.apis.update(|s| s.serviceusage_permitted = false);
    let e = w.rt.block_on(c.service_state(123_456_789_012)).unwrap_err();
    assert!(matches!(e, ApiError::Denied(_)), "{e}");
    // 404.
    let e =
        w.rt.block_on(c.forwarding_rules("other-project"))
            .unwrap_err();
    assert!(matches!(e, ApiError::NotFound(_)), "{e}");
    // Timeout: the call gives up at its deadline.
    w.apis.set_fault(Api::TrafficDirector, Some(ApiFault::Hang));
    let start = Instant::now();
    let e =
        w.rt.block_on(c.client_status("n", "default", 123_456_789_012))
            .unwrap_err();
    assert!(matches!(e, ApiError::Timeout(_)), "{e}");
    assert!(start.elapsed() < Duration::from_secs(3));
    // A token the APIs do not accept: 401.
    w.apis.update(|s| s.token = "ya29.another".into());
    w.apis.set_fault(Api::TrafficDirector, None);
    let e =
        w.rt.block_on(c.client_status("n", "default", 123_456_789_012))
            .unwrap_err();
    assert!(matches!(e, ApiError::Unauthenticated(_)), "{e}");
    assert!(!e.to_string().contains("ya29"), "{e}");
    // No service account: the token cannot be had, and says why.
    let w2 = world();
    w2.vm.update_vm(|v| v.service_account = None);
    let e = w2
        .rt
        .block_on(w2.client().test_iam_permissions("demo-project"))
        .unwrap_err();
    assert!(e.to_string().contains("no service account"), "{e}");
}

#[test]
fn cloud_logging_on_a_vm_posts_with_the_metadata_token() {
    use service_proxy_agent::publish::cloud_logging::{self, Target};
    use testkit::http_stub::{HttpStub, Reply};
    let w = world();
    let expected = format!("Bearer {}", w.vm.token());
    let logging = HttpStub::start(move |req| {
        if req.header("authorization") == Some(expected.as_str()) {
            Reply::json(200, "{}")
        } else {
            Reply::json(401, r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#)
        }
    });
    let target = Target {
        endpoint: logging.url(),
        project_id: "demo-project".into(),
        zone: "us-central1-a".into(),
        instance_id: "1".into(),
    };
    let sent = w.rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(10);
        let sink = cloud_logging::spawn(target, w.tokens.clone(), rx).unwrap();
        tx.send(cloud_logging::record("INFO", "one")).await.unwrap();
        sink.shutdown(Duration::from_secs(5)).await;
        let (tx, rx) = tokio::sync::mpsc::channel(10);
        let sink = cloud_logging::spawn(
            Target {
                endpoint: logging.url(),
                project_id: "demo-project".into(),
                zone: "us-central1-a".into(),
                instance_id: "1".into(),
            },
            w.tokens.clone(),
            rx,
        )
        .unwrap();
        tx.send(cloud_logging::record("INFO", "two")).await.unwrap();
        let counters = sink.counters.clone();
        sink.shutdown(Duration::from_secs(5)).await;
        counters
            .entries_sent
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    assert_eq!(sent, 1);
    let writes: Vec<_> = logging
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v2/entries:write")
        .collect();
    assert_eq!(writes.len(), 2, "{writes:?}");
    // Both writes, one token read: the token is cached across the sinks that share it.
    let token_reads =
        w.vm.requests()
            .iter()
            .filter(|r| r.path.ends_with("service-accounts/default/token"))
            .count();
    assert_eq!(token_reads, 1);
}
