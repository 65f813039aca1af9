//! deploy/monitoring/ is what `gcloud logging metrics create --config-from-file`, `gcloud alpha
//! monitoring policies create --policy-from-file` and `gcloud monitoring dashboards create
//! --config-from-file` take: each file is checked against its API's schema in the discovery
//! documents google-api-python-client ships ($SPA_DISCOVERY_DIR, see
//! tests/setup-google-clients.sh): logging.v2 LogMetric, monitoring.v3 AlertPolicy,
//! monitoring.v1 Dashboard. Unknown fields are rejected, types and enums checked, `$ref`s
//! followed. The checker itself is shown to reject wrong documents.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

fn discovery(name: &str) -> Value {
    let dir = std::env::var("SPA_DISCOVERY_DIR")
        .ok()
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // tests/run.sh exports it; when run alone, the venv's copy.
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(
                ".venv/lib/python3.11/site-packages/googleapiclient/discovery_cache/documents",
            )
        });
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the discovery document {} ({e}): run tests/setup-google-clients.sh and set SPA_DISCOVERY_DIR to the directory it prints",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// Checks `v` against a discovery-document schema; pushes one line per problem.
fn check(
    schemas: &Map<String, Value>,
    schema: &Value,
    v: &Value,
    at: &str,
    errs: &mut Vec<String>,
) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        match schemas.get(r) {
            Some(s) => return check(schemas, s, v, at, errs),
            None => return errs.push(format!("{at}: schema {r} not in the document")),
        }
    }
    let format = schema.get("format").and_then(Value::as_str).unwrap_or("");
    match schema.get("type").and_then(Value::as_str).unwrap_or("any") {
        "object" => {
            let Some(obj) = v.as_object() else {
                return errs.push(format!("{at}: expected an object, got {v}"));
            };
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties");
            for (k, val) in obj {
                let here = format!("{at}.{k}");
                match (props.and_then(|p| p.get(k)), extra) {
                    (Some(s), _) => check(schemas, s, val, &here, errs),
                    (None, Some(s)) => check(schemas, s, val, &here, errs),
                    (None, None) => errs.push(format!("{here}: unknown field")),
                }
            }
        }
        "array" => match (v.as_array(), schema.get("items")) {
            (Some(items), Some(s)) => {
                for (i, item) in items.iter().enumerate() {
                    check(schemas, s, item, &format!("{at}[{i}]"), errs);
                }
            }
            _ => errs.push(format!("{at}: expected an array, got {v}")),
        },
        "string" => {
            // 64-bit integers travel as strings in Google's JSON; numbers are accepted too.
            let int64 = matches!(format, "int64" | "uint64");
            let Some(s) = v.as_str() else {
                if !(int64 && v.is_i64()) {
                    errs.push(format!("{at}: expected a string, got {v}"));
                }
                return;
            };
            if let Some(values) = schema.get("enum").and_then(Value::as_array)
                && !values.iter().any(|e| e.as_str() == Some(s))
            {
                errs.push(format!("{at}: '{s}' is not one of {values:?}"));
            }
            if format == "google-duration"
                && !(s.ends_with('s') && s[..s.len() - 1].parse::<f64>().is_ok())
            {
                errs.push(format!("{at}: '{s}' is not a duration like \"300s\""));
            }
            if int64 && s.parse::<i128>().is_err() {
                errs.push(format!("{at}: '{s}' is not an integer"));
            }
        }
        "integer" if !v.is_i64() && !v.is_u64() => {
            errs.push(format!("{at}: expected an integer, got {v}"))
        }
        "number" if !v.is_number() => errs.push(format!("{at}: expected a number, got {v}")),
        "boolean" if !v.is_boolean() => errs.push(format!("{at}: expected true or false, got {v}")),
        _ => {}
    }
}

fn errors_of(doc: &Value, schema: &str, v: &Value) -> Vec<String> {
    let schemas = doc["schemas"].as_object().unwrap();
    let mut errs = Vec::new();
    check(schemas, &json!({"$ref": schema}), v, schema, &mut errs);
    errs
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
            .any(|e| e.ends_with("labels[0].colour: unknown field")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("disabled: expected true or false")),
        "{errs:?}"
    );
    let errs = errors_of(
        &v3,
        "AlertPolicy",
        &json!({"displayName": "x", "combiner": "OR", "conditions": [{"conditionThreshold": {"duration": "5 minutes", "thresholdValue": "1"}}], "severity": "ERROR"}),
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("'5 minutes' is not a duration")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("thresholdValue: expected a number")),
        "{errs:?}"
    );
}
