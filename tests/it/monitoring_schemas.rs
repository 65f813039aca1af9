//! deploy/monitoring/ is what `gcloud logging metrics create --config-from-file`, `gcloud alpha
//! monitoring policies create --policy-from-file` and `gcloud monitoring dashboards create
//! --config-from-file` take: each file is checked against its API's schema in the discovery
//! documents google-api-python-client ships ($SPA_DISCOVERY_DIR, see
//! tests/setup-google-clients.sh): logging.v2 LogMetric, monitoring.v3 AlertPolicy,
//! monitoring.v1 Dashboard. Unknown fields are rejected, types and enums checked, `$ref`s
//! followed. The checker itself is shown to reject wrong documents.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use testkit::discovery_schema::Discovery;

/// The shared checker of testkit (the one the Cloud Logging entries are judged by too).
fn discovery(name: &str) -> Discovery {
    Discovery::load(name).unwrap_or_else(|e| panic!("{e:#}"))
}

fn errors_of(doc: &Discovery, schema: &str, v: &Value) -> Vec<String> {
    doc.check(schema, v)
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn files(dir: &str) -> Vec<(PathBuf, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/monitoring")
        .join(dir);
    let mut out: Vec<(PathBuf, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            (p, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no files in {}", dir.display());
    out
}

#[test]
fn every_monitoring_file_matches_its_api_schema() {
    let logging = discovery("logging.v2.json");
    let v3 = discovery("monitoring.v3.json");
    let v1 = discovery("monitoring.v1.json");
    let mut metric_names = Vec::new();
    for (path, v) in files("metrics") {
        assert_eq!(
            errors_of(&logging, "LogMetric", &v),
            Vec::<String>::new(),
            "{}",
            path.display()
        );
        metric_names.push(v["name"].as_str().unwrap().to_owned());
    }
    let alerts = files("alerts");
    assert_eq!(
        alerts.len(),
        3,
        "FAILING for 5 minutes, stale heartbeat, bootstrap FAILED"
    );
    let mut referenced = String::new();
    for (path, v) in &alerts {
        assert_eq!(
            errors_of(&v3, "AlertPolicy", v),
            Vec::<String>::new(),
            "{}",
            path.display()
        );
        referenced.push_str(&v.to_string());
    }
    for (path, v) in files("dashboards") {
        assert_eq!(
            errors_of(&v1, "Dashboard", &v),
            Vec::<String>::new(),
            "{}",
            path.display()
        );
        referenced.push_str(&v.to_string());
    }
    // What the alerts and dashboard read exists: the log-based metrics defined here and the
    // agent's Prometheus series.
    for name in &metric_names {
        assert!(
            referenced.contains(&format!("logging.googleapis.com/user/{name}")),
            "{name} unused"
        );
    }
    for series in ["spa_health", "spa_heartbeat_timestamp_seconds"] {
        assert!(referenced.contains(series));
    }
    let ops = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring/ops-agent-config.yaml"),
    )
    .unwrap();
    assert!(ops.contains("type: prometheus") && ops.contains("localhost:15091"));
}

#[test]
fn the_checker_rejects_unknown_fields_bad_enums_types_and_durations() {
    let logging = discovery("logging.v2.json");
    let v3 = discovery("monitoring.v3.json");
    let errs = errors_of(
        &logging,
        "LogMetric",
        &json!({"name": "m", "filter": "x", "metricDescriptor": {"metricKind": "SOMETIMES", "valueType": "INT64", "labels": [{"key": "a", "colour": "red"}]}, "disabled": "no"}),
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("metricKind") && e.contains("SOMETIMES")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("labels[0].colour: unknown field")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("disabled: expected a boolean")),
        "{errs:?}"
    );
    let errs = errors_of(
        &v3,
        "AlertPolicy",
        &json!({"displayName": "x", "combiner": "OR", "conditions": [{"conditionThreshold": {"duration": "5 minutes", "thresholdValue": "1"}}], "severity": "ERROR"}),
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("duration") && e.contains("5 minutes")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("thresholdValue") && e.contains("number")),
        "{errs:?}"
    );
}
