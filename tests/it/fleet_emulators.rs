//! The Compute and Cloud Logging emulators (testkit/src/fleet_apis.rs) speak the real APIs:
//! Google's own Python clients (google-api-python-client from the discovery documents,
//! google-cloud-compute and google-cloud-logging over REST) list, page, filter and read through
//! them, get the 404/403/401 they would get from Google, and a 429 `rateLimitExceeded` past the
//! read quota.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use testkit::fleet_apis::{
    FleetApis, FleetProject, FleetVm, GuestAttributes, Mig, Quota, StoredEntry,
};

const PROJECT: &str = "fleet-proj";

fn python() -> String {
    let py = std::env::var("SPA_PYTHON")
        .unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")));
    let ok = Command::new(&py)
        .args([
            "-c",
            "import googleapiclient, google.cloud.compute_v1, google.cloud.logging",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{py} cannot import Google's Python clients (google-api-python-client, google-cloud-compute, google-cloud-logging): run tests/setup-google-clients.sh or set SPA_PYTHON"
    );
    py
}

fn run(script: &str, args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(format!(
            "{}/tests/fleet/{script}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn vm(
    name: &str,
    zone: &str,
    id: u64,
    on: bool,
    guest: GuestAttributes,
    mig: Option<&Mig>,
) -> FleetVm {
    let mut labels = BTreeMap::new();
    labels.insert(
        "gce-service-proxy".to_owned(),
        if on { "on" } else { "off" }.to_owned(),
    );
    let mut metadata = vec![("enable-guest-attributes".to_owned(), "TRUE".to_owned())];
    if let Some(m) = mig {
        metadata.push(("created-by".to_owned(), m.created_by(4242)));
    }
    FleetVm {
        name: name.into(),
        zone: zone.into(),
        id,
        labels,
        metadata,
        status: "RUNNING".into(),
        guest,
    }
}

fn project() -> FleetProject {
    let mig_a = Mig {
        name: "mig-a".into(),
        location: "zones/zone-a".into(),
    };
    let mig_r = Mig {
        name: "mig-r".into(),
        location: "regions/region-1".into(),
    };
    let attrs = GuestAttributes::Present(vec![
        ("health".into(), "OK".into()),
        ("agent-heartbeat".into(), "2026-12-06T10:00:00Z".into()),
    ]);
    let t = |s: &str| humantime::parse_rfc3339(s).unwrap();
    let entry = |name: &str, id: u64, at: &str, health: &str| StoredEntry {
        log_name: format!("projects/{PROJECT}/logs/service-proxy-agent"),
        instance_id: id,
        zone: "zone-a".into(),
        vm_name: Some(name.into()),
        timestamp: t(at),
        severity: "INFO".into(),
        json_payload: json!({"event": "state", "health": health, "findings": if health == "OK" { json!([]) } else { json!(["ENVOY_NOT_RUNNING"]) }}),
    };
    let mut other = entry("vm-ok", 1, "2026-12-06T10:06:00Z", "OK");
    other.json_payload["event"] = json!("finding");
    FleetProject {
        project: PROJECT.into(),
        project_number: 4242,
        vms: vec![
            vm("vm-ok", "zone-a", 1, true, attrs.clone(), Some(&mig_a)),
            vm(
                "vm-none",
                "zone-a",
                2,
                true,
                GuestAttributes::NotFound,
                Some(&mig_a),
            ),
            vm("vm-off", "zone-a", 3, false, attrs.clone(), None),
            vm(
                "vm-forbidden",
                "zone-b",
                4,
                true,
                GuestAttributes::Forbidden,
                Some(&mig_r),
            ),
            vm("vm-b2", "zone-b", 5, true, attrs.clone(), Some(&mig_r)),
            vm("vm-c1", "zone-c", 6, true, attrs.clone(), None),
            vm("vm-lost", "zone-d", 7, true, attrs.clone(), None),
        ],
        migs: vec![mig_a, mig_r],
        entries: vec![
            entry("vm-ok", 1, "2026-12-06T10:00:00Z", "FAILING"),
            entry("vm-ok", 1, "2026-12-06T10:05:00Z", "OK"),
            entry("vm-b2", 5, "2026-12-06T10:01:00Z", "OK"),
            entry("vm-c1", 6, "2026-12-06T08:00:00Z", "OK"),
            other,
        ],
        zones: ["zone-a", "zone-b", "zone-c", "zone-d", "zone-e"]
            .map(String::from)
            .to_vec(),
        unreachable_zones: vec!["zone-d".into()],
        ..FleetProject::default()
    }
}

#[test]
fn google_api_python_client_reads_through_the_emulators() {
    let _ = SystemTime::now();
    let apis = FleetApis::start(project());
    let out = run("discovery_client.py", &[&apis.url(), PROJECT]);
    // The label filter, paged two by two over every zone; the unreachable zone is reported.
    assert_eq!(
        out["aggregated"],
        json!(["vm-b2", "vm-c1", "vm-forbidden", "vm-none", "vm-ok"])
    );
    assert_eq!(out["aggregated_pages"], 3);
    // This revision of the discovery document has no returnPartialSuccess: no `unreachables`.
    assert_eq!(out["unreachables"], json!([]));
    assert_eq!(out["zone_warnings"]["zones/zone-d"], "UNREACHABLE");
    assert_eq!(out["zone_warnings"]["zones/zone-e"], "NO_RESULTS_ON_PAGE");
    assert_eq!(out["zone_a"], json!(["vm-none", "vm-ok"]));
    assert_eq!(out["guest_kind"], "compute#guestAttributes");
    assert_eq!(
        out["guest"],
        json!({"health": "OK", "agent-heartbeat": "2026-12-06T10:00:00Z"})
    );
    assert_eq!(
        out["guest_none"],
        json!({"status": 404, "reason": "notFound"})
    );
    assert_eq!(
        out["guest_forbidden"],
        json!({"status": 403, "reason": "forbidden"})
    );
    assert_eq!(out["mig_zonal"], json!(["vm-none", "vm-ok"]));
    assert_eq!(out["mig_regional"], json!(["vm-b2", "vm-forbidden"]));
    assert_eq!(out["anonymous"]["status"], 401);
    // Newest first, only state events, within the time bound, two per page.
    assert_eq!(
        out["log_entries"],
        json!([
            ["vm-ok", "OK", "2026-12-06T10:05:00Z"],
            ["vm-b2", "OK", "2026-12-06T10:01:00Z"],
            ["vm-ok", "FAILING", "2026-12-06T10:00:00Z"]
        ])
    );
    assert_eq!(out["log_pages"], 2);
    // No request went through without a token but the one meant to.
    assert_eq!(apis.count("compute", 401), 1);
}

#[test]
fn google_cloud_compute_and_logging_read_through_the_emulators() {
    let apis = FleetApis::start(project());
    let out = run("cloud_clients.py", &[&apis.url(), PROJECT, "read"]);
    assert_eq!(
        out["aggregated"],
        json!(["vm-b2", "vm-c1", "vm-forbidden", "vm-none", "vm-ok"])
    );
    assert_eq!(out["zone_warnings"]["zones/zone-e"], "NO_RESULTS_ON_PAGE");
    assert_eq!(out["guest"]["health"], "OK");
    assert_eq!(out["guest_none"], 404);
    assert_eq!(out["mig_regional"], json!(["vm-b2", "vm-forbidden"]));
    assert_eq!(out["anonymous"], 401);
    assert_eq!(
        out["log_entries"],
        json!([
            ["vm-ok", "OK", []],
            ["vm-b2", "OK", []],
            ["vm-ok", "FAILING", ["ENVOY_NOT_RUNNING"]],
            ["vm-c1", "OK", []]
        ])
    );
}

#[test]
fn past_the_read_quota_google_cloud_compute_gets_429_rate_limit_exceeded() {
    let mut p = project();
    p.compute_quota = Some(Quota {
        limit: 7,
        window: Duration::from_secs(3600),
    });
    let apis = FleetApis::start(p);
    let out = run("cloud_clients.py", &[&apis.url(), PROJECT, "quota"]);
    assert_eq!(out["reads_before_429"], 7);
    assert_eq!(out["error"]["code"], 429);
    assert_eq!(out["error"]["reason"], "rateLimitExceeded");
    assert_eq!(apis.count("compute", 429), 1);
}
