//! `service-proxy-agent fleet` end to end against the Compute and Cloud Logging emulators
//! (testkit/src/fleet_apis.rs, proved with Google's clients in tests/it/fleet_emulators.rs), the
//! token from the metadata-server emulator: 2,000 VMs over 10 zones in 3 managed instance
//! groups, every class of VM; counts, exit status, the rate limit as the server measures it,
//! a read quota with 429s, the MIG remedy.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use testkit::fleet_apis::{
    FleetApis, FleetProject, FleetVm, GuestAttributes, Mig, Quota, StoredEntry,
};
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};

const PROJECT: &str = "fleet-proj";
const NUMBER: u64 = 4242;
const TOKEN: &str = "ya29.fleet-test-token";

/// The classes of VM, by index modulo 20.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Class {
    Ok,
    Degraded(&'static [&'static str]),
    Failing(&'static [&'static str]),
    StaleOk,
    StaleFailing,
    BootstrapFailed,
    Disabled,
    NoAttributes,
    Forbidden,
}

fn class(i: usize) -> Class {
    match i % 20 {
        0..=9 => Class::Ok,
        10 => Class::Degraded(&["ENDPOINTS_UNHEALTHY"]),
        11 => Class::Degraded(&["ENVOY_NOT_LIVE"]),
        12 => Class::Failing(&["CONTROL_PLANE_DISCONNECTED"]),
        13 => Class::Failing(&["MESH_CONFIG_NOT_FOUND", "ENDPOINTS_UNHEALTHY"]),
        14 => Class::StaleOk,
        15 => Class::StaleFailing,
        16 => Class::BootstrapFailed,
        17 => Class::Disabled,
        18 => Class::NoAttributes,
        _ => Class::Forbidden,
    }
}

fn migs() -> Vec<Mig> {
    vec![
        Mig {
            name: "mig-web".into(),
            location: "zones/zone-0".into(),
        },
        Mig {
            name: "mig-api".into(),
            location: "regions/region-a".into(),
        },
        Mig {
            name: "mig-batch".into(),
            location: "regions/region-b".into(),
        },
    ]
}

fn mig_of(zone: usize) -> Mig {
    let m = migs();
    match zone {
        0 => m[0].clone(),
        1..=4 => m[1].clone(),
        _ => m[2].clone(),
    }
}

/// Zones cycle more slowly than classes, so every class lands in several zones.
fn zone_of(i: usize) -> usize {
    (i / 7) % 10
}

fn rfc(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `n` labelled VMs (plus 100 unlabelled ones the default filter leaves out) and the state
/// events their agents logged.
fn fleet(n: usize, now: SystemTime) -> FleetProject {
    let mut vms = Vec::new();
    let mut entries = Vec::new();
    for i in 0..n + 100 {
        let zone_n = zone_of(i);
        let zone = format!("zone-{zone_n}");
        let name = format!("vm-{i:05}");
        let c = class(i);
        let on = i < n;
        let heartbeat = match c {
            Class::StaleOk | Class::StaleFailing => now - Duration::from_secs(20 * 60),
            _ => now - Duration::from_secs(30 + (i % 4) as u64 * 30),
        };
        let (health, findings): (&str, Vec<&str>) = match c {
            Class::Ok | Class::StaleOk => ("OK", vec![]),
            Class::Degraded(f) => ("DEGRADED", f.to_vec()),
            Class::Failing(f) => ("FAILING", f.to_vec()),
            Class::StaleFailing => ("FAILING", vec!["ENVOY_NOT_RUNNING"]),
            _ => ("", vec![]),
        };
        let version = if i % 3 == 0 { "v1.39.0" } else { "v1.40.0" };
        let guest = match c {
            Class::BootstrapFailed => GuestAttributes::Present(vec![
                ("bootstrap-status".into(), "FAILED".into()),
                (
                    "bootstrap-last-failure".into(),
                    "apt-get install envoy: exit 100".into(),
                ),
            ]),
            Class::Disabled | Class::NoAttributes => GuestAttributes::NotFound,
            Class::Forbidden => GuestAttributes::Forbidden,
            _ => GuestAttributes::Present(vec![
                ("bootstrap-status".into(), "FINISHED".into()),
                ("health".into(), health.into()),
                ("findings".into(), findings.join(",")),
                ("proxy-version".into(), version.into()),
                ("proxy-state".into(), "LIVE".into()),
                ("agent-heartbeat".into(), rfc(heartbeat)),
                ("agent-last-failure".into(), String::new()),
            ]),
        };
        let mut labels = BTreeMap::new();
        labels.insert(
            "gce-service-proxy".to_owned(),
            if on { "on" } else { "off" }.to_owned(),
        );
        let enabled = if c == Class::Disabled {
            "FALSE"
        } else {
            "TRUE"
        };
        vms.push(FleetVm {
            name: name.clone(),
            zone: zone.clone(),
            id: 1_000_000 + i as u64,
            labels,
            metadata: vec![
                ("enable-guest-attributes".into(), enabled.into()),
                ("created-by".into(), mig_of(zone_n).created_by(NUMBER)),
            ],
            status: "RUNNING".into(),
            guest,
        });
        if on && !health.is_empty() {
            let entry = |at: SystemTime, health: &str, findings: &[&str]| StoredEntry {
                log_name: format!("projects/{PROJECT}/logs/service-proxy-agent"),
                instance_id: 1_000_000 + i as u64,
                zone: zone.clone(),
                vm_name: Some(name.clone()),
                timestamp: at,
                severity: "INFO".into(),
                json_payload: json!({"message": "state", "event": "state", "health": health,
                    "findings": findings, "proxy_version": version, "proxy_state": "LIVE",
                    "heartbeat": rfc(at)}),
            };
            // An older state with another health: only the latest may count.
            entries.push(entry(
                heartbeat - Duration::from_secs(120),
                "FAILING",
                &["CONFIG_REJECTED"],
            ));
            entries.push(entry(heartbeat, health, &findings));
        }
    }
    FleetProject {
        project: PROJECT.into(),
        project_number: NUMBER,
        vms,
        migs: migs(),
        entries,
        zones: (0..10).map(|z| format!("zone-{z}")).collect(),
        token: Some(TOKEN.into()),
        ..FleetProject::default()
    }
}

/// What a correct report of `n` labelled VMs says, tallied from the classes.
fn expected(n: usize, source: &str) -> Value {
    let (mut ok, mut degraded, mut failing, mut unknown, mut stale, mut boot) = (0, 0, 0, 0, 0, 0);
    let mut vms = 0;
    let mut findings: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..n {
        let c = class(i);
        let has_agent = !matches!(
            c,
            Class::BootstrapFailed | Class::Disabled | Class::NoAttributes | Class::Forbidden
        );
        if source == "logging" && !has_agent {
            continue;
        }
        vms += 1;
        match c {
            Class::Ok | Class::StaleOk => ok += 1,
            Class::Degraded(_) => degraded += 1,
            Class::Failing(_) | Class::StaleFailing => failing += 1,
            _ => unknown += 1,
        }
        stale += usize::from(matches!(c, Class::StaleOk | Class::StaleFailing));
        boot += usize::from(c == Class::BootstrapFailed);
        let f: &[&str] = match c {
            Class::Degraded(f) | Class::Failing(f) => f,
            Class::StaleFailing => &["ENVOY_NOT_RUNNING"],
            _ => &[],
        };
        for id in f {
            *findings.entry(id).or_default() += 1;
        }
    }
    json!({"vms": vms, "health": {"OK": ok, "DEGRADED": degraded, "FAILING": failing, "UNKNOWN": unknown},
           "stale_heartbeats": stale, "bootstrap_failed": boot, "findings": findings})
}

struct Env {
    apis: FleetApis,
    _md: MetadataEmulator,
    home: tempfile::TempDir,
    md_host: String,
}

fn env(p: FleetProject) -> Env {
    let md = MetadataEmulator::start(VmIdentity::default()).unwrap();
    md.set_token(TOKEN);
    Env {
        apis: FleetApis::start(p),
        md_host: md.host(),
        _md: md,
        home: tempfile::tempdir().unwrap(),
    }
}

fn fleet_cmd(e: &Env, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_service-proxy-agent"))
        .arg("fleet")
        .args([
            "--project",
            PROJECT,
            "--compute-endpoint",
            &e.apis.url(),
            "--cloud-logging-endpoint",
            &e.apis.url(),
        ])
        .args(args)
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env_remove("CLOUDSDK_CONFIG")
        .env("HOME", e.home.path())
        .env("GCE_METADATA_HOST", &e.md_host)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(TOKEN), "the token leaked: {stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(TOKEN));
    out
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The summary reduced to what `expected` tallies (findings as id → VMs).
fn counts(report: &Value) -> Value {
    let s = &report["summary"];
    let findings: BTreeMap<String, u64> = s["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_owned(),
                f["vms"].as_u64().unwrap(),
            )
        })
        .collect();
    json!({"vms": s["vms"], "health": s["health"], "stale_heartbeats": s["stale_heartbeats"],
           "bootstrap_failed": s["bootstrap_failed"], "findings": findings})
}

const N: usize = 2000;

#[test]
fn compute_source_counts_every_class_of_2000_vms_within_the_rate_limit() {
    let e = env(fleet(N, SystemTime::now()));
    let out = fleet_cmd(&e, &["--json", "--max-qps", "400"]);
    let report = json_of(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "FAILING, stale and unread VMs: exit 1"
    );
    assert!(
        out.stderr.is_empty(),
        "no progress line when stderr is not a terminal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(counts(&report), expected(N, "compute"));
    assert_eq!(report["source"], "compute");
    assert_eq!(report["project"], PROJECT);
    let vms = report["vms"].as_array().unwrap();
    assert_eq!(vms.len(), N, "every labelled VM is listed, none dropped");
    let by_name = |name: &str| vms.iter().find(|v| v["name"] == name).unwrap().clone();
    assert_eq!(
        by_name("vm-00017")["error"],
        "guest attributes disabled (metadata enable-guest-attributes is not TRUE)"
    );
    assert_eq!(
        by_name("vm-00018")["error"],
        "no attributes yet: agent not installed?"
    );
    assert!(
        by_name("vm-00019")["error"]
            .as_str()
            .unwrap()
            .starts_with("permission denied: HTTP 403")
    );
    let boot = by_name("vm-00016");
    assert_eq!(boot["bootstrap_status"], "FAILED");
    assert_eq!(
        boot["bootstrap_last_failure"],
        "apt-get install envoy: exit 100"
    );
    let stale = by_name("vm-00015");
    assert!(stale["heartbeat_age_s"].as_u64().unwrap() >= 1200);
    assert_eq!(stale["findings"], json!(["ENVOY_NOT_RUNNING"]));
    let versions = &report["summary"]["proxy_versions"];
    assert_eq!(
        versions
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["vms"].as_u64().unwrap())
            .sum::<u64>(),
        1600
    );
    let mesh = report["summary"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "MESH_CONFIG_NOT_FOUND")
        .unwrap()
        .clone();
    let mut zones: Vec<String> = (0..N)
        .filter(|i| i % 20 == 13)
        .map(|i| format!("zone-{}", zone_of(i)))
        .collect();
    zones.sort();
    zones.dedup();
    assert_eq!(mesh["zones"], json!(zones));
    // The server saw the list pages and one read per VM, never more than 400 in a second.
    assert_eq!(e.apis.count("compute", 401), 0);
    let reads = e
        .apis
        .seen()
        .iter()
        .filter(|s| s.path.contains("getGuestAttributes"))
        .count();
    assert_eq!(reads, N);
    let peak = e.apis.peak_per_second("compute");
    assert!(peak <= 400, "peak {peak} requests in one second");
}

#[test]
fn compute_source_at_the_default_rate_never_exceeds_20_a_second() {
    let e = env(fleet(150, SystemTime::now()));
    let t = Instant::now();
    let out = fleet_cmd(&e, &["--json"]);
    let took = t.elapsed();
    assert_eq!(counts(&json_of(&out)), expected(150, "compute"));
    let peak = e.apis.peak_per_second("compute");
    assert!(
        peak <= 20,
        "peak {peak} requests in one second at --max-qps 20"
    );
    // 151 requests at 20 a second take at least 7 s: the limit is what set the pace.
    assert!(took >= Duration::from_secs(7), "{took:?}");
    // And the limit is used: a request counts from its start until a second after its answer
    // (here a millisecond or so), so the reads come at nearly 20 a second (the earlier
    // limiter, 20 in a window of 1.25 s, sustained 16).
    let reads: Vec<Instant> = e
        .apis
        .seen()
        .iter()
        .filter(|s| s.path.contains("getGuestAttributes"))
        .map(|s| s.at)
        .collect();
    let span = reads
        .iter()
        .max()
        .unwrap()
        .duration_since(*reads.iter().min().unwrap());
    let rate = (reads.len() - 1) as f64 / span.as_secs_f64();
    assert!(rate >= 18.0, "{rate:.1} reads a second at --max-qps 20");
}

/// Compute's default read quota is 1,500 a minute, in fixed windows, 429 beyond. Scaled so the
/// test takes seconds: 500 reads per 4 s window (the minute divided by 15, the reads by 3), so
/// the 2,001 reads of 2,000 VMs span four windows and meet the 429 wall in each before the
/// next opens; the backoff (1 s, 2 s, ... with jitter) must still end with every VM read.
#[test]
fn a_read_quota_with_429s_still_ends_with_every_vm_read() {
    let mut p = fleet(N, SystemTime::now());
    p.compute_quota = Some(Quota {
        limit: 500,
        window: Duration::from_secs(4),
    });
    let e = env(p);
    let out = fleet_cmd(&e, &["--json", "--max-qps", "400"]);
    let report = json_of(&out);
    assert!(e.apis.count("compute", 429) > 0, "the quota was reached");
    assert_eq!(counts(&report), expected(N, "compute"));
    let gave_up: Vec<&Value> = report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["error"].as_str().is_some_and(|e| e.contains("rate")))
        .collect();
    assert!(gave_up.is_empty(), "{gave_up:?}");
    assert!(e.apis.peak_per_second("compute") <= 400);
}

#[test]
fn logging_source_counts_the_latest_state_of_every_vm_in_a_few_requests() {
    let e = env(fleet(N, SystemTime::now()));
    let out = fleet_cmd(&e, &["--source", "logging", "--json", "--since", "1h"]);
    let report = json_of(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(report["source"], "logging");
    assert_eq!(counts(&report), expected(N, "logging"));
    // 3,200 entries, 1,000 a page: 4 requests, no per-VM call.
    assert_eq!(e.apis.seen().len(), 4);
    assert_eq!(e.apis.count("compute", 200), 0);
    // Within the default 15 minutes the stale VMs' last events (20 minutes old) are absent.
    let out = fleet_cmd(&e, &["--source", "logging", "--json"]);
    let r = json_of(&out);
    assert_eq!(r["summary"]["stale_heartbeats"], 0);
    assert_eq!(
        r["summary"]["vms"],
        expected(N, "logging")["vms"].as_u64().unwrap() - 200
    );
}

#[test]
fn a_managed_group_ends_with_the_recreate_remedy_and_a_healthy_one_exits_0() {
    let e = env(fleet(400, SystemTime::now()));
    let out = fleet_cmd(&e, &["--group", "mig-api", "--region", "region-a"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    // Members of mig-api (zones 1-4) whose heartbeat is stale (i%20 = 14, 15) or whose
    // bootstrap failed (16).
    // (--group lists every member, labelled or not: 500 VMs.)
    let mut names: Vec<String> = (0..500)
        .filter(|i| (1..=4).contains(&zone_of(*i)) && matches!(i % 20, 14..=16))
        .map(|i| format!("vm-{i:05}"))
        .collect();
    names.sort();
    let remedy = format!(
        "gcloud compute instance-groups managed recreate-instances mig-api --instances={} --region=region-a --project={PROJECT}",
        names.join(",")
    );
    assert!(text.contains(&remedy), "{text}\nwanted: {remedy}");
    assert!(text.contains("VMs that need attention"));
    assert!(!text.contains("mig-web") && !text.contains("mig-batch"));
    let zonal = fleet_cmd(&e, &["--group", "mig-web", "--zone", "zone-0"]);
    let zonal = String::from_utf8_lossy(&zonal.stdout);
    assert!(
        zonal.contains("recreate-instances mig-web --instances=")
            && zonal.contains(" --zone=zone-0 "),
        "{zonal}"
    );

    // A fleet of healthy VMs: exit 0.
    let healthy = env(fleet(10, SystemTime::now()));
    let out = fleet_cmd(
        &healthy,
        &["--zone", "zone-0", "--zone", "zone-1", "--json"],
    );
    let r = json_of(&out);
    assert_eq!(r["summary"]["vms"], 10);
    assert_eq!(out.status.code(), Some(0), "{r}");
    // A --group without a location is a usage error.
    let out = fleet_cmd(&healthy, &["--group", "mig-api"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--group needs its location"));
}

/// On a workstation: a service-account key file (GOOGLE_APPLICATION_CREDENTIALS) through the
/// real gcp_auth crate, its token endpoint on loopback; no metadata server at all.
#[test]
fn application_default_credentials_from_a_key_file() {
    let token_endpoint = testkit::http_stub::HttpStub::start(|req| {
        if req.path == "/token" && req.method == "POST" {
            testkit::http_stub::Reply::json(
                200,
                json!({"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"})
                    .to_string(),
            )
        } else {
            testkit::http_stub::Reply::text(404, "no")
        }
    });
    let e = env(fleet(20, SystemTime::now()));
    let pem = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl is needed to generate a service-account key (apt-get install openssl)");
    assert!(pem.status.success(), "openssl genpkey failed");
    let key = json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0123456789abcdef",
        "private_key": String::from_utf8(pem.stdout).unwrap(),
        "client_email": "sre@fleet-proj.iam.gserviceaccount.com",
        "client_id": "100000000000000000001",
        "token_uri": format!("{}/token", token_endpoint.url()),
    });
    let key_path = e.home.path().join("key.json");
    std::fs::write(&key_path, key.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_service-proxy-agent"))
        .args([
            "fleet",
            "--json",
            "--project",
            PROJECT,
            "--compute-endpoint",
            &e.apis.url(),
        ])
        .env("GOOGLE_APPLICATION_CREDENTIALS", &key_path)
        .env("HOME", e.home.path())
        .env("GCE_METADATA_HOST", "127.0.0.1:9")
        .output()
        .unwrap();
    let report = json_of(&out);
    assert_eq!(counts(&report), expected(20, "compute"));
    assert_eq!(
        e.apis.count("compute", 401),
        0,
        "every request carried the key's token"
    );
    assert_eq!(token_endpoint.requests().len(), 1, "one token, cached");
    // Without any credentials: exit 2, saying what is missing.
    let out = Command::new(env!("CARGO_BIN_EXE_service-proxy-agent"))
        .args([
            "fleet",
            "--project",
            PROJECT,
            "--compute-endpoint",
            &e.apis.url(),
        ])
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env("HOME", e.home.path())
        .env("GCE_METADATA_HOST", "127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no Application Default Credentials"), "{err}");
}

/// An unreachable zone: the others are read (returnPartialSuccess), the zone is named on
/// stderr, and the exit status is 1 because the list is incomplete.
#[test]
fn an_unreachable_zone_is_a_warning_and_exit_1() {
    let mut p = fleet(10, SystemTime::now());
    p.unreachable_zones = vec!["zone-1".into()];
    let e = env(p);
    let out = fleet_cmd(&e, &["--json"]);
    let r = json_of(&out);
    assert_eq!(r["summary"]["vms"], 7, "zone-0's VMs");
    assert_eq!(r["summary"]["health"]["OK"], 7);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("zones/zone-1 is unreachable"), "{err}");
}

/// `--watch` reads and prints again every DURATION until interrupted; the exit status is the
/// last report's.
#[test]
fn watch_redraws_until_interrupted() {
    use std::io::BufRead;
    let e = env(fleet(10, SystemTime::now()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_service-proxy-agent"))
        .args(["fleet", "--json", "--watch", "300ms", "--project", PROJECT])
        .args(["--compute-endpoint", &e.apis.url()])
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env("HOME", e.home.path())
        .env("GCE_METADATA_HOST", &e.md_host)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        let line = lines.next().expect("a report per round").unwrap();
        let r: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(r["summary"]["vms"], 10);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "fleet --watch did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "ten healthy VMs");
    // Three rounds of 1 list + 10 reads, at least.
    assert!(e.apis.seen().len() >= 33);
}
