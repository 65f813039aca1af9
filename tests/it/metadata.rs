//! The metadata client against the metadata-server emulator, over real HTTP on loopback; the
//! `gce-service-proxy` parser against gcloud-shaped fixtures; the emulator's example binary.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use service_proxy_agent::observe::http;
use service_proxy_agent::observe::metadata::{
    CLOUD_PLATFORM_SCOPE, GUEST_ATTRIBUTES_DISABLED_BODY, MetadataClient, MetadataError,
    NetworkRef, parse_service_proxy,
};
use testkit::metadata_emulator::{Fault, MetadataEmulator, RateLimit, ViolationKind, VmIdentity};

const NS: &str = "gce-service-proxy";
const FLAVOR: (&str, &str) = ("Metadata-Flavor", "Google");

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/metadata")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn emulator() -> MetadataEmulator {
    MetadataEmulator::start(VmIdentity::default()).expect("start the metadata emulator")
}

/// A client for `emu`, after checking it can only talk to loopback.
fn client_with(emu: &MetadataEmulator, timeout: Duration) -> MetadataClient {
    let c = MetadataClient::new(&emu.host(), timeout);
    let addr: std::net::SocketAddr = c.authority().parse().expect("a literal address");
    assert!(addr.ip().is_loopback(), "{addr}");
    c
}

fn client(emu: &MetadataEmulator) -> MetadataClient {
    client_with(emu, Duration::from_secs(5))
}

/// Every request the emulator saw came from loopback and carried the flavor header.
fn assert_clean_traffic(emu: &MetadataEmulator) {
    for r in emu.requests() {
        assert!(r.peer.ip().is_loopback(), "{:?}", r.peer);
        assert_eq!(
            r.header("metadata-flavor"),
            Some("Google"),
            "{} {}",
            r.method,
            r.path
        );
        assert_eq!(r.header("x-forwarded-for"), None);
    }
}

async fn raw_get(emu: &MetadataEmulator, target: &str, headers: &[(&str, &str)]) -> http::Response {
    http::get(
        &emu.host(),
        target,
        headers,
        Duration::from_secs(5),
        1 << 20,
    )
    .await
    .expect("raw request")
}

#[tokio::test]
async fn identity_paths_and_parsed_vm_metadata() {
    let emu = emulator();
    emu.set_service_proxy(&fixture("service-proxy-full.json"));
    let c = client(&emu);
    let vm = VmIdentity::default();

    for (path, want) in [
        ("instance/id", vm.instance_id.to_string()),
        (
            "instance/zone",
            "projects/123456789012/zones/us-central1-a".into(),
        ),
        (
            "instance/network-interfaces/0/network",
            "projects/123456789012/networks/default".into(),
        ),
        ("project/project-id", "demo-project".into()),
        ("project/numeric-project-id", "123456789012".into()),
        (
            "instance/service-accounts/default/scopes",
            format!("{CLOUD_PLATFORM_SCOPE}\n"),
        ),
        ("instance/attributes/enable-guest-attributes", "TRUE".into()),
    ] {
        let (value, etag) = c.get(path).await.unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(value, want, "{path}");
        assert!(etag.is_some_and(|e| !e.is_empty()), "{path} has no ETag");
    }
    let (token, _) = c
        .get("instance/service-accounts/default/token")
        .await
        .unwrap();
    let token: serde_json::Value = serde_json::from_str(&token).unwrap();
    assert_eq!(token["access_token"], emu.token());
    assert_eq!(token["token_type"], "Bearer");
    assert!(token["expires_in"].as_u64().is_some());

    let m = c.vm_metadata().await.unwrap();
    assert_eq!(m.instance_id, vm.instance_id);
    assert_eq!(m.zone, "us-central1-a");
    assert_eq!(m.project_id, "demo-project");
    assert_eq!(m.project_number, 123_456_789_012);
    assert_eq!(
        m.network,
        Ok(NetworkRef {
            project_number: 123_456_789_012,
            name: "default".into()
        })
    );
    assert_eq!(m.scopes, Ok(vec![CLOUD_PLATFORM_SCOPE.to_owned()]));
    assert_eq!(m.has_cloud_platform_scope(), Some(true));
    let sp = m.service_proxy.unwrap().expect("gce-service-proxy is set");
    assert_eq!(sp.service.serving_ports, vec![80, 8080]);
    assert_eq!(sp.proxy_spec.network_name(), "my-vpc");

    let unknown = c.get("instance/no-such-thing").await.unwrap_err();
    assert_eq!(
        unknown,
        MetadataError::NotFound {
            path: "instance/no-such-thing".into()
        }
    );
    assert_clean_traffic(&emu);
}

#[tokio::test]
async fn shared_vpc_network_carries_the_host_project_number() {
    let emu = MetadataEmulator::start(VmIdentity {
        network: "shared-vpc".into(),
        network_project_number: Some(999_000_111),
        scopes: vec!["https://www.googleapis.com/auth/devstorage.read_only".into()],
        ..VmIdentity::default()
    })
    .unwrap();
    let m = client(&emu).vm_metadata().await.unwrap();
    assert_eq!(m.project_number, 123_456_789_012);
    assert_eq!(
        m.network,
        Ok(NetworkRef {
            project_number: 999_000_111,
            name: "shared-vpc".into()
        })
    );
    assert_eq!(m.has_cloud_platform_scope(), Some(false));
}

#[tokio::test]
async fn requests_without_the_flavor_header_or_with_x_forwarded_for_are_refused() {
    let emu = emulator();
    let target = "/computeMetadata/v1/instance/id";
    for headers in [
        &[][..],
        &[("Metadata-Flavor", "google-ish")][..],
        &[FLAVOR, ("X-Forwarded-For", "10.0.0.9")][..],
    ] {
        let r = raw_get(&emu, target, headers).await;
        assert_eq!(r.status, 403, "{headers:?}");
        assert_eq!(r.header("metadata-flavor"), Some("Google"), "{headers:?}");
    }
    let r = raw_get(&emu, target, &[FLAVOR]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), VmIdentity::default().instance_id.to_string());
    assert!(r.header("etag").is_some());
}

#[tokio::test]
async fn absent_attribute_is_none_not_an_error() {
    let emu = emulator();
    let c = client(&emu);
    let m = c.vm_metadata().await.unwrap();
    assert_eq!(m.service_proxy, Ok(None));
    assert_eq!(c.instance_attribute("gce-service-proxy").await, Ok(None));
    emu.set_service_proxy(&fixture("service-proxy-minimal.json"));
    assert!(
        c.instance_attribute("gce-service-proxy")
            .await
            .unwrap()
            .is_some()
    );
    let m = c.vm_metadata().await.unwrap();
    let sp = m.service_proxy.unwrap().unwrap();
    assert_eq!(sp.proxy_spec.network.as_deref(), Some(""));
    assert_eq!(sp.proxy_spec.network_name(), "default");
}

#[tokio::test]
async fn one_failing_optional_item_does_not_lose_the_others() {
    let emu = emulator();
    emu.set_service_proxy(&fixture("service-proxy-ga.json"));
    let c = client(&emu);

    emu.set_fault_on("instance/service-accounts/", Fault::Status(500));
    let m = c.vm_metadata().await.unwrap();
    assert!(
        matches!(&m.scopes, Err(MetadataError::Status { status: 500, .. })),
        "{:?}",
        m.scopes
    );
    assert_eq!(m.has_cloud_platform_scope(), None);
    assert!(m.network.is_ok());
    assert!(m.service_proxy.as_ref().unwrap().is_some());
    emu.clear_fault();

    emu.override_path(
        "instance/network-interfaces/0/network",
        Some("global/networks/default"),
    );
    emu.set_service_proxy("{not json");
    let m = c.vm_metadata().await.unwrap();
    assert!(
        matches!(&m.network, Err(MetadataError::Malformed { .. })),
        "{:?}",
        m.network
    );
    assert!(
        matches!(&m.service_proxy, Err(MetadataError::Malformed { .. })),
        "{:?}",
        m.service_proxy
    );
    assert_eq!(m.zone, "us-central1-a");
    assert!(m.scopes.is_ok());

    // A VM without a service account has no scopes (the scope check then reports it).
    emu.clear_overrides();
    emu.update_vm(|vm| vm.service_account = None);
    let m = c.vm_metadata().await.unwrap();
    assert_eq!(m.scopes, Ok(vec![]));
    assert_eq!(m.has_cloud_platform_scope(), Some(false));
}

#[tokio::test]
async fn failing_identity_items_fail_the_whole_call() {
    let emu = emulator();
    let c = client(&emu);
    emu.override_path("instance/zone", Some("somewhere/else"));
    let e = c.vm_metadata().await.unwrap_err();
    assert!(
        matches!(&e, MetadataError::Malformed { path, .. } if path == "instance/zone"),
        "{e}"
    );
    emu.override_path("instance/zone", None);
    let e = c.vm_metadata().await.unwrap_err();
    assert!(matches!(&e, MetadataError::NotFound { .. }), "{e}");
    emu.clear_overrides();
    emu.set_fault_on("project/", Fault::Status(503));
    let e = c.vm_metadata().await.unwrap_err();
    assert!(
        matches!(&e, MetadataError::Status { status: 503, .. }),
        "{e}"
    );
    assert!(e.is_unavailable());
    emu.clear_fault();
    assert!(c.vm_metadata().await.is_ok());
}

#[tokio::test]
async fn etag_follows_the_value() {
    let emu = emulator();
    let c = client(&emu);
    let path = "instance/attributes/gce-service-proxy";
    emu.set_service_proxy("{}");
    let (_, e1) = c.get(path).await.unwrap();
    let (_, e2) = c.get(path).await.unwrap();
    assert_eq!(e1, e2);
    emu.set_service_proxy("{\"api-version\":\"0.2\"}");
    let (_, e3) = c.get(path).await.unwrap();
    assert_ne!(e1, e3);
}

#[tokio::test]
async fn wait_for_change_returns_when_the_value_changes() {
    let emu = Arc::new(emulator());
    let c = client(&emu);
    let path = "instance/attributes/gce-service-proxy";
    emu.set_service_proxy("{}");
    let (_, etag) = c.get(path).await.unwrap();
    let etag = etag.unwrap();

    let waiter = {
        let c = c.clone();
        let etag = etag.clone();
        tokio::spawn(async move { c.wait_for_change(path, Some(&etag), 30).await })
    };
    let seen = tokio::task::spawn_blocking({
        let emu = emu.clone();
        move || {
            emu.wait_until(Duration::from_secs(10), |e| {
                e.requests().iter().any(|r| {
                    r.query
                        .as_deref()
                        .is_some_and(|q| q.contains("wait_for_change=true"))
                })
            })
        }
    })
    .await
    .unwrap();
    assert!(seen, "the long poll never reached the emulator");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "returned before any change");
    let q = emu
        .requests()
        .into_iter()
        .find_map(|r| r.query.filter(|q| q.contains("wait_for_change")))
        .unwrap();
    assert!(q.contains(&format!("last_etag={etag}")), "{q}");
    assert!(q.contains("timeout_sec=30"), "{q}");

    emu.set_service_proxy("{\"api-version\":\"0.2\"}");
    let (value, new_etag) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the long poll did not return after the change")
        .unwrap()
        .unwrap();
    assert_eq!(value, "{\"api-version\":\"0.2\"}");
    assert_ne!(new_etag.unwrap(), etag);

    // A stale ETag answers at once.
    let (value, _) = tokio::time::timeout(
        Duration::from_secs(10),
        c.wait_for_change(path, Some("stale"), 30),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(value, "{\"api-version\":\"0.2\"}");
}

#[tokio::test]
async fn wait_for_change_returns_the_current_value_on_timeout() {
    let emu = emulator();
    // The client's own timeout is shorter than the wait: the long poll must still succeed.
    let c = client_with(&emu, Duration::from_millis(500));
    let (value, etag) = c.get("instance/id").await.unwrap();
    let start = Instant::now();
    let (v2, e2) = c
        .wait_for_change("instance/id", etag.as_deref(), 1)
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    assert_eq!((v2, e2), (value, etag));
}

#[tokio::test]
async fn guest_attributes_put_get_list_delete() {
    let emu = emulator();
    emu.set_rate_limit(None);
    let c = client(&emu);
    c.put_guest_attribute(NS, "bootstrap-status", "FINISHED")
        .await
        .unwrap();
    c.put_guest_attribute(NS, "findings", "").await.unwrap();
    let long = format!("line one\nline two\t{}", "é".repeat(2000));
    c.put_guest_attribute(NS, "agent-last-failure", &long)
        .await
        .unwrap();

    assert_eq!(
        c.get_guest_attribute(NS, "bootstrap-status").await,
        Ok(Some("FINISHED".into()))
    );
    assert_eq!(
        c.get_guest_attribute(NS, "findings").await,
        Ok(Some(String::new()))
    );
    assert_eq!(c.get_guest_attribute(NS, "health").await, Ok(None));
    assert_eq!(
        c.list_guest_attributes(NS).await.unwrap(),
        vec!["agent-last-failure", "bootstrap-status", "findings"]
    );
    let stored = emu.guest_attributes(NS);
    let failure = &stored["agent-last-failure"];
    assert!(failure.len() <= 1024, "{}", failure.len());
    assert!(failure.starts_with("line one line two "), "{failure}");
    assert!(failure.ends_with('…'));
    assert!(!failure.chars().any(char::is_control));

    c.delete_guest_attribute(NS, "findings").await.unwrap();
    c.delete_guest_attribute(NS, "findings").await.unwrap();
    assert_eq!(c.get_guest_attribute(NS, "findings").await, Ok(None));
    assert_eq!(
        emu.guest_attributes(NS).keys().collect::<Vec<_>>(),
        vec!["agent-last-failure", "bootstrap-status"]
    );
    assert_eq!(c.list_guest_attributes("other-ns").await, Ok(vec![]));

    let writes = emu.writes();
    assert_eq!(
        writes
            .iter()
            .map(|w| (w.method.as_str(), w.key.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("PUT", "bootstrap-status"),
            ("PUT", "findings"),
            ("PUT", "agent-last-failure"),
            ("DELETE", "findings"),
            ("DELETE", "findings"),
        ]
    );
    assert!(writes.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(emu.violations().is_empty(), "{:?}", emu.violations());
    assert_clean_traffic(&emu);
}

#[tokio::test]
async fn bad_names_are_refused_before_any_request() {
    let emu = emulator();
    let c = client(&emu);
    for (ns, key) in [
        ("gce-service-proxy", "a/b"),
        ("gce-service-proxy", "a b"),
        ("gce-service-proxy", ""),
        ("gce.service", "k"),
        ("../instance", "k"),
        ("gce-service-proxy", "k?x=1"),
    ] {
        let e = c.put_guest_attribute(ns, key, "v").await.unwrap_err();
        assert!(
            matches!(e, MetadataError::InvalidName { .. }),
            "{ns}/{key}: {e}"
        );
        assert!(matches!(
            c.get_guest_attribute(ns, key).await,
            Err(MetadataError::InvalidName { .. })
        ));
        assert!(matches!(
            c.delete_guest_attribute(ns, key).await,
            Err(MetadataError::InvalidName { .. })
        ));
    }
    assert!(matches!(
        c.list_guest_attributes("a/b").await,
        Err(MetadataError::InvalidName { .. })
    ));
    assert!(matches!(
        c.get("instance/id?recursive=true").await,
        Err(MetadataError::InvalidName { .. })
    ));
    assert!(emu.requests().is_empty(), "{:?}", emu.requests());
}

#[tokio::test]
async fn disabled_guest_attributes_have_their_own_error() {
    let emu = emulator();
    emu.set_guest_attributes_enabled(false);
    let c = client(&emu);
    assert_eq!(
        c.put_guest_attribute(NS, "health", "OK").await,
        Err(MetadataError::GuestAttributesDisabled)
    );
    assert_eq!(
        c.get_guest_attribute(NS, "health").await,
        Err(MetadataError::GuestAttributesDisabled)
    );
    assert_eq!(
        c.list_guest_attributes(NS).await,
        Err(MetadataError::GuestAttributesDisabled)
    );
    assert_eq!(
        c.delete_guest_attribute(NS, "health").await,
        Err(MetadataError::GuestAttributesDisabled)
    );
    let r = raw_get(
        &emu,
        "/computeMetadata/v1/instance/guest-attributes/gce-service-proxy/health",
        &[FLAVOR],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), GUEST_ATTRIBUTES_DISABLED_BODY);
    assert!(emu.guest_attributes(NS).is_empty());

    // The flag may also come from project metadata when the instance does not set it.
    emu.remove_attribute("enable-guest-attributes");
    emu.update_vm(|vm| {
        vm.project_attributes
            .insert("enable-guest-attributes".into(), "true".into());
    });
    c.put_guest_attribute(NS, "health", "OK").await.unwrap();
    assert_eq!(emu.guest_attributes(NS)["health"], "OK");
}

#[tokio::test]
async fn writes_over_the_budget_are_dropped_and_counted() {
    let emu = emulator();
    let c = client(&emu);
    // 12 writes in well under a minute: the 11th and 12th are over 10 a minute whatever the
    // pace, and back-to-back writes also break 3 a second.
    for i in 0..12 {
        c.put_guest_attribute(NS, "agent-heartbeat", &format!("beat-{i}"))
            .await
            .unwrap();
    }
    let writes = emu.writes();
    assert_eq!(writes.len(), 12);
    let per_minute = emu
        .violations()
        .iter()
        .filter(|v| v.kind == ViolationKind::PerMinute)
        .count();
    assert_eq!(per_minute, 2, "{:#?}", emu.violations());
    assert!(
        emu.violations()
            .iter()
            .any(|v| v.kind == ViolationKind::PerSecond),
        "{:#?}",
        emu.violations()
    );
    assert!(writes[10].dropped && writes[11].dropped);
    let last_applied = writes.iter().rev().find(|w| !w.dropped).unwrap();
    assert_eq!(
        emu.guest_attributes(NS)["agent-heartbeat"],
        last_applied.value.clone().unwrap()
    );
    assert_ne!(emu.guest_attributes(NS)["agent-heartbeat"], "beat-11");

    // A value over the product's 1024-byte promise is a violation too (the client never
    // sends one: it truncates).
    emu.set_rate_limit(Some(RateLimit {
        per_minute: 1000,
        per_second: 1000,
    }));
    let r = http::request(
        hyper::Method::PUT,
        &emu.host(),
        "/computeMetadata/v1/instance/guest-attributes/gce-service-proxy/findings",
        &[FLAVOR],
        Some(bytes::Bytes::from("x".repeat(2000))),
        Duration::from_secs(5),
        1 << 20,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        emu.violations()
            .iter()
            .any(|v| v.kind == ViolationKind::ValueTooLong)
    );
}

/// Each fault gives the client a clear error within its timeout, and service comes back when
/// the fault is lifted.
#[tokio::test]
async fn faults_give_clear_errors_quickly_and_service_recovers() {
    let emu = emulator();
    let c = client_with(&emu, Duration::from_millis(700));
    type Expect = fn(&MetadataError) -> bool;
    let cases: Vec<(Fault, Expect)> = vec![
        (Fault::Status(503), |e| {
            matches!(e, MetadataError::Status { status: 503, .. })
        }),
        (Fault::Status(429), |e| {
            matches!(e, MetadataError::Status { status: 429, .. })
        }),
        (Fault::Delay(Duration::from_secs(5)), |e| {
            matches!(e, MetadataError::Timeout { .. })
        }),
        (Fault::Hang, |e| matches!(e, MetadataError::Timeout { .. })),
        (Fault::Drop, |e| matches!(e, MetadataError::Protocol { .. })),
        (Fault::Garbage, |e| {
            matches!(e, MetadataError::Protocol { .. })
        }),
        (Fault::NoFlavor, |e| {
            matches!(e, MetadataError::NotMetadataServer { status: 200, .. })
        }),
    ];
    for (fault, expected) in cases {
        emu.set_fault(fault.clone());
        let start = Instant::now();
        let e = c.get("instance/id").await.unwrap_err();
        assert!(expected(&e), "{fault:?}: {e}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{fault:?} took {:?}",
            start.elapsed()
        );
        let e = c.vm_metadata().await.unwrap_err();
        assert!(expected(&e), "{fault:?} vm_metadata: {e}");
        let e = c.put_guest_attribute(NS, "health", "OK").await.unwrap_err();
        assert!(expected(&e), "{fault:?} put: {e}");
        assert!(!e.to_string().is_empty());
        if !matches!(fault, Fault::Status(429)) {
            assert!(e.is_unavailable(), "{fault:?}: {e}");
        }
        emu.clear_fault();
        let (v, _) = c
            .get("instance/id")
            .await
            .unwrap_or_else(|e| panic!("after lifting {fault:?}: {e}"));
        assert_eq!(v, VmIdentity::default().instance_id.to_string());
    }
    // A short delay is just a slow answer.
    emu.set_fault(Fault::Delay(Duration::from_millis(100)));
    assert!(c.get("instance/id").await.is_ok());
    emu.clear_fault();
}

/// The daemon's read: the identity once, then only `gce-service-proxy`; a server failure on
/// that one request is the read's error (as when the identity was read every poll), a value
/// fault stays on the attribute; `forget` (the daemon's reload) reads the identity again.
#[tokio::test]
async fn the_kept_identity_is_read_once_and_again_after_forget() {
    use service_proxy_agent::observe::metadata::KeptIdentity;
    let emu = emulator();
    let c = client_with(&emu, Duration::from_millis(700));
    let kept = KeptIdentity::default();
    let first = kept.vm_metadata(&c).await.unwrap();
    assert_eq!(first, c.vm_metadata().await.unwrap());
    assert_eq!(emu.gets("instance/id"), 2);
    emu.set_scopes(&["https://www.googleapis.com/auth/devstorage.read_only"]);
    emu.set_service_proxy(r#"{"service": {"serving-ports": [8080]}}"#);
    for _ in 0..3 {
        let vm = kept.vm_metadata(&c).await.unwrap();
        // The identity as first read; the attribute as it is now.
        assert_eq!(vm.scopes, first.scopes);
        let sp = vm.service_proxy.unwrap().unwrap();
        assert_eq!(sp.service.serving_ports, vec![8080]);
    }
    assert_eq!(emu.gets("instance/id"), 2, "the identity was read again");
    assert_eq!(emu.gets("instance/service-accounts/default/scopes"), 2);
    // The server failing: the read fails, as it did when every poll read the identity.
    for fault in [
        Fault::Status(503),
        Fault::Status(403),
        Fault::Hang,
        Fault::NoFlavor,
    ] {
        emu.set_fault(fault.clone());
        let e = kept.vm_metadata(&c).await.unwrap_err();
        assert!(
            matches!(e, MetadataError::Status { .. }) || e.is_unavailable(),
            "{fault:?}: {e}"
        );
        emu.clear_fault();
    }
    // A value the agent cannot use is the attribute's fault, not the server's.
    emu.set_service_proxy("[1, 2]");
    let vm = kept.vm_metadata(&c).await.unwrap();
    assert!(vm.service_proxy.is_err(), "{vm:?}");
    // Not set is not a failure.
    emu.remove_attribute("gce-service-proxy");
    assert_eq!(kept.vm_metadata(&c).await.unwrap().service_proxy, Ok(None));
    assert_eq!(emu.gets("instance/id"), 2);
    // A reload: the identity is read again, with the scopes as they are now.
    kept.forget();
    let vm = kept.vm_metadata(&c).await.unwrap();
    assert_eq!(emu.gets("instance/id"), 3);
    assert_eq!(vm.has_cloud_platform_scope(), Some(false));
    assert!(kept.is_kept());
}

/// An identity read with an item failing is not kept: the next read asks for all of it.
#[tokio::test]
async fn an_identity_with_a_failed_item_is_read_again() {
    use service_proxy_agent::observe::metadata::KeptIdentity;
    let emu = emulator();
    let c = client(&emu);
    emu.set_fault_on("instance/service-accounts/", Fault::Status(500));
    let kept = KeptIdentity::default();
    let vm = kept.vm_metadata(&c).await.unwrap();
    assert!(vm.scopes.is_err(), "{vm:?}");
    assert!(!kept.is_kept());
    emu.clear_fault();
    let vm = kept.vm_metadata(&c).await.unwrap();
    assert_eq!(vm.has_cloud_platform_scope(), Some(true));
    assert!(kept.is_kept());
}

#[tokio::test]
async fn a_fault_on_a_prefix_leaves_the_rest_alone() {
    let emu = emulator();
    let c = client_with(&emu, Duration::from_secs(2));
    emu.set_fault_on("instance/guest-attributes/", Fault::Drop);
    assert!(c.vm_metadata().await.is_ok());
    let e = c.put_guest_attribute(NS, "health", "OK").await.unwrap_err();
    assert!(matches!(e, MetadataError::Protocol { .. }), "{e}");
    emu.set_fault_on(
        "/computeMetadata/v1/instance/guest-attributes/",
        Fault::Garbage,
    );
    assert!(c.vm_metadata().await.is_ok());
    assert!(c.get_guest_attribute(NS, "health").await.is_err());
    emu.clear_fault();
    c.put_guest_attribute(NS, "health", "OK").await.unwrap();
}

#[tokio::test]
async fn a_hung_request_is_answered_when_the_fault_is_lifted() {
    let emu = Arc::new(emulator());
    let c = client_with(&emu, Duration::from_secs(30));
    emu.set_fault(Fault::Hang);
    let pending = tokio::spawn(async move { c.get("project/project-id").await });
    let seen = tokio::task::spawn_blocking({
        let emu = emu.clone();
        move || emu.wait_until(Duration::from_secs(10), |e| !e.requests().is_empty())
    })
    .await
    .unwrap();
    assert!(seen);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pending.is_finished());
    emu.clear_fault();
    let (v, _) = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("still hung after lifting the fault")
        .unwrap()
        .unwrap();
    assert_eq!(v, "demo-project");
}

#[test]
fn dropping_the_emulator_stops_it_even_with_requests_hanging() {
    let emu = emulator();
    let host = emu.host();
    emu.set_fault(Fault::Hang);
    let hung = std::thread::spawn({
        let host = host.clone();
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(MetadataClient::new(&host, Duration::from_secs(20)).get("instance/id"))
        }
    });
    assert!(emu.wait_until(Duration::from_secs(10), |e| !e.requests().is_empty()));
    drop(emu);
    let e = hung.join().unwrap().unwrap_err();
    assert!(matches!(e, MetadataError::Protocol { .. }), "{e}");
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(&host).is_err());
}

#[tokio::test]
async fn an_absent_server_is_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = MetadataClient::new(&format!("127.0.0.1:{port}"), Duration::from_secs(2));
    let e = c.vm_metadata().await.unwrap_err();
    assert!(matches!(e, MetadataError::Unreachable { .. }), "{e}");
    assert!(e.is_unavailable());
}

#[tokio::test]
async fn directories_list_and_recurse_as_json() {
    let emu = emulator();
    emu.set_attribute("ssh-keys", "alice:ssh-ed25519 AAAA");
    let r = raw_get(
        &emu,
        "/computeMetadata/v1/instance/attributes/?recursive=true&alt=json",
        &[FLAVOR],
    )
    .await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"enable-guest-attributes": "TRUE", "ssh-keys": "alice:ssh-ed25519 AAAA"})
    );
    let (listing, _) = client(&emu).get("instance/attributes/").await.unwrap();
    assert_eq!(listing, "enable-guest-attributes\nssh-keys\n");
    let (listing, _) = client(&emu).get("instance/").await.unwrap();
    assert!(
        listing.lines().any(|l| l == "service-accounts/"),
        "{listing}"
    );
}

#[tokio::test]
async fn control_endpoint_drives_the_emulator() {
    let emu = emulator();
    let c = client_with(&emu, Duration::from_secs(2));
    let host = emu.host();
    let send = |method: hyper::Method, path: &'static str, body: &'static str| {
        let host = host.clone();
        async move {
            let r = http::request(
                method,
                &host,
                path,
                &[],
                Some(bytes::Bytes::from(body)),
                Duration::from_secs(5),
                1 << 20,
            )
            .await
            .unwrap();
            assert_eq!(r.status, 200, "{path}: {}", r.text());
        }
    };
    send(
        hyper::Method::POST,
        "/emulator/fault",
        r#"{"fault":"status","status":502,"path_prefix":"instance/"}"#,
    )
    .await;
    assert!(matches!(
        c.get("instance/id").await,
        Err(MetadataError::Status { status: 502, .. })
    ));
    assert!(c.get("project/project-id").await.is_ok());
    send(hyper::Method::DELETE, "/emulator/fault", "").await;
    assert!(c.get("instance/id").await.is_ok());

    send(
        hyper::Method::POST,
        "/emulator/fault",
        r#"{"fault":"drop"}"#,
    )
    .await;
    assert!(c.get("instance/id").await.is_err());
    // The control endpoint is never faulted, so the fault can always be lifted.
    send(
        hyper::Method::POST,
        "/emulator/fault",
        r#"{"fault":"none"}"#,
    )
    .await;
    assert!(c.get("instance/id").await.is_ok());

    send(
        hyper::Method::PUT,
        "/emulator/attributes/gce-service-proxy",
        r#"{"service":{"serving-ports":[9090]}}"#,
    )
    .await;
    let m = c.vm_metadata().await.unwrap();
    assert_eq!(
        m.service_proxy.unwrap().unwrap().service.serving_ports,
        vec![9090]
    );
    send(
        hyper::Method::PUT,
        "/emulator/scopes",
        "logging.write,cloud-platform",
    )
    .await;
    let m = c.vm_metadata().await.unwrap();
    assert_eq!(m.has_cloud_platform_scope(), Some(true));
    assert_eq!(m.scopes.unwrap().len(), 2);

    c.put_guest_attribute(NS, "health", "OK").await.unwrap();
    send(
        hyper::Method::PUT,
        "/emulator/guest-attributes/other/k",
        "v",
    )
    .await;
    let r = raw_get(&emu, "/emulator/guest-attributes", &[]).await;
    let all: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        all,
        serde_json::json!([
            {"key": "health", "namespace": "gce-service-proxy", "value": "OK"},
            {"key": "k", "namespace": "other", "value": "v"},
        ])
    );
    let r = raw_get(
        &emu,
        "/emulator/guest-attributes?query-path=gce-service-proxy/",
        &[],
    )
    .await;
    let ours: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(ours.as_array().unwrap().len(), 1);

    send(
        hyper::Method::PUT,
        "/emulator/guest-attributes-enabled",
        "false",
    )
    .await;
    assert_eq!(
        c.put_guest_attribute(NS, "health", "OK").await,
        Err(MetadataError::GuestAttributesDisabled)
    );
    let r = raw_get(&emu, "/emulator/requests", &[]).await;
    let reqs: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(reqs.as_array().unwrap().len(), emu.requests().len());
    assert!(
        emu.requests()
            .iter()
            .all(|r| !r.path.starts_with("/emulator")),
        "control requests are not recorded"
    );
    let r = raw_get(&emu, "/emulator/writes", &[]).await;
    let writes: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(writes.as_array().unwrap().len(), emu.writes().len());
}

// --- gce-service-proxy fixtures ------------------------------------------------------------

#[test]
fn full_service_proxy_config() {
    let c = parse_service_proxy(&fixture("service-proxy-full.json")).unwrap();
    assert_eq!(c.api_version.as_deref(), Some("0.2"));
    assert_eq!(c.service.serving_ports, vec![80, 8080]);
    let p = &c.proxy_spec;
    assert_eq!(p.proxy_port, Some(15001));
    assert_eq!(p.tracing, Some(true));
    assert_eq!(p.access_log.as_deref(), Some("/var/log/envoy/access.log"));
    assert_eq!(p.network.as_deref(), Some("my-vpc"));
    assert_eq!(p.mesh.as_deref(), Some("my-mesh"));
    assert_eq!(p.scope, None);
    assert_eq!(p.project_number, Some(123_456_789_012));
    let t = &c.traffic_interception;
    assert!(t.intercept_all_outbound && t.intercept_dns);
    assert_eq!(
        t.exclude_outbound_ip_ranges,
        vec!["8.8.8.8", "129.168.10.0/24"]
    );
    assert_eq!(t.exclude_outbound_port_ranges, vec!["81", "8080-8090"]);
    assert_eq!(
        c.labels,
        BTreeMap::from([
            ("app".to_owned(), "review".to_owned()),
            ("version".to_owned(), "canary".to_owned())
        ])
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn ga_and_minimal_service_proxy_configs() {
    let c = parse_service_proxy(&fixture("service-proxy-ga.json")).unwrap();
    assert_eq!(c.service.serving_ports, vec![80, 443]);
    assert_eq!(c.proxy_spec.proxy_port, Some(15002));
    assert_eq!(c.proxy_spec.tracing, Some(false));
    assert_eq!(c.proxy_spec.network_name(), "prod-vpc");
    assert_eq!(c.traffic_interception, Default::default());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    let c = parse_service_proxy(&fixture("service-proxy-minimal.json")).unwrap();
    assert!(c.service.serving_ports.is_empty());
    assert_eq!(c.proxy_spec.proxy_port, None);
    assert_eq!(c.proxy_spec.network_name(), "default");
    assert!(!c.traffic_interception.intercept_all_outbound);
    assert!(c.labels.is_empty() && c.warnings.is_empty());
}

#[test]
fn unknown_keys_are_ignored() {
    let c = parse_service_proxy(&fixture("service-proxy-unknown-keys.json")).unwrap();
    assert_eq!(c.api_version.as_deref(), Some("0.3"));
    assert_eq!(c.service.serving_ports, vec![8080]);
    assert_eq!(c.proxy_spec.scope.as_deref(), Some("gateway-scope"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn wrongly_typed_fields_are_defaulted_and_noted() {
    let c = parse_service_proxy(&fixture("service-proxy-wrong-types.json")).unwrap();
    assert_eq!(c.api_version.as_deref(), Some("0.2"));
    assert_eq!(c.service.serving_ports, vec![80]);
    assert_eq!(c.proxy_spec.proxy_port, None);
    assert_eq!(c.proxy_spec.tracing, None);
    assert_eq!(c.proxy_spec.access_log, None);
    assert_eq!(c.proxy_spec.network.as_deref(), Some("default"));
    assert_eq!(c.proxy_spec.project_number, None);
    assert!(c.traffic_interception.intercept_all_outbound);
    assert_eq!(
        c.traffic_interception.exclude_outbound_ip_ranges,
        vec!["10.0.0.0/8"]
    );
    assert!(!c.traffic_interception.intercept_dns);
    assert_eq!(
        c.labels,
        BTreeMap::from([
            ("app".to_owned(), "web".to_owned()),
            ("tier".to_owned(), "2".to_owned())
        ])
    );
    let w = c.warnings.join("\n");
    for field in [
        "service.serving-ports",
        "proxy-spec.proxy-port",
        "proxy-spec.tracing",
        "proxy-spec.project-number",
        "traffic-interception.intercept-dns",
        "labels.bad",
    ] {
        assert!(w.contains(field), "no warning about {field}:\n{w}");
    }
    assert_eq!(c.warnings.len(), 7, "{w}");
}

#[test]
fn ports_as_strings_and_in_flag_syntax() {
    let c = parse_service_proxy(&fixture("service-proxy-string-ports.json")).unwrap();
    assert_eq!(c.service.serving_ports, vec![80, 8080]);
    assert_eq!(c.proxy_spec.proxy_port, Some(15001));
    assert_eq!(c.proxy_spec.project_number, Some(123_456_789_012));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    let c = parse_service_proxy(&fixture("service-proxy-flag-syntax-ports.json")).unwrap();
    assert_eq!(c.service.serving_ports, vec![80, 443]);
    assert_eq!(
        c.traffic_interception.exclude_outbound_ip_ranges,
        vec!["8.8.8.8", "10.0.0.0/8"]
    );
    assert_eq!(
        c.traffic_interception.exclude_outbound_port_ranges,
        vec!["81", "8080-8090"]
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

// --- the example -------------------------------------------------------------------------

/// Kills the child when the test fails half-way.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `examples/metadata-emulator.rs`, built (or found up to date) by the cargo running this test,
/// so that a test run never exercises a stale binary.
fn example_bin() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // The variables cargo sets for this test would make build scripts that watch them (ring's
    // watches CARGO_MANIFEST_DIR) rebuild, and again at the next plain build.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_EXE_")
            || matches!(
                k.as_str(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
            )
        {
            build.env_remove(k);
        }
    }
    let out = build
        .args(["build", "--example", "metadata-emulator"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo to build the metadata-emulator example");
    assert!(
        out.status.success(),
        "cargo build --example metadata-emulator failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Next to this test binary: target/<profile>/deps/metadata-* → target/<profile>/examples/.
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/metadata-emulator");
    assert!(
        bin.is_file(),
        "{} is missing after the build",
        bin.display()
    );
    bin
}

#[tokio::test]
async fn the_example_serves_until_sigterm() {
    let bin = tokio::task::spawn_blocking(example_bin).await.unwrap();
    let mut child = ChildGuard(
        Command::new(bin)
            .args([
                "--addr",
                "127.0.0.1:0",
                "--project-id",
                "other-project",
                "--zone",
                "europe-west1-b",
                "--scopes",
                "cloud-platform",
                "--attribute",
                "foo=bar",
                "--gce-service-proxy",
                r#"{"service":{"serving-ports":[80]}}"#,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .expect("the example printed nothing")
        .unwrap()
        .unwrap();
    let host = line
        .trim()
        .strip_prefix("metadata-emulator listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let c = MetadataClient::new(&host, Duration::from_secs(5));
    let m = c.vm_metadata().await.unwrap();
    assert_eq!(m.project_id, "other-project");
    assert_eq!(m.zone, "europe-west1-b");
    assert_eq!(m.has_cloud_platform_scope(), Some(true));
    assert_eq!(c.instance_attribute("foo").await, Ok(Some("bar".into())));
    assert_eq!(
        m.service_proxy.unwrap().unwrap().service.serving_ports,
        vec![80]
    );
    c.put_guest_attribute(NS, "bootstrap-status", "FINISHED")
        .await
        .unwrap();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.0.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            panic!("the example did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}
