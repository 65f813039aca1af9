//! `fleet --source logging`: the latest `state` event (docs/contract.md#6-logs) of every VM of the project
//! within `--since`, from Cloud Logging's `entries:list`, newest first, 1,000 entries a page: a
//! fleet of 10,000 VMs logging every 10 minutes is about 15 pages over 15 minutes, where the
//! compute source needs one request per VM.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::api::{Api, ApiError};
use super::compute::Budget;
use super::{FleetHealth, VmReport, clean, parse_time};
use crate::publish::cloud_logging::LOG_ID;
use crate::publish::state_event::STATE_EVENT;

const PAGE_SIZE: u64 = 1000;
/// A bound on one read (10 million entries): a query never pages forever.
const MAX_PAGES: usize = 10_000;

/// The `entries:list` filter.
pub fn filter(project: &str, since: SystemTime) -> String {
    format!(
        "logName=\"projects/{project}/logs/{LOG_ID}\" AND jsonPayload.event=\"{STATE_EVENT}\" AND timestamp>=\"{}\"",
        humantime::format_rfc3339_seconds(since)
    )
}

/// One entry to a report; `None` when it is not a state event of a VM.
pub fn report_of(entry: &Value) -> Option<(String, VmReport)> {
    let labels = entry.pointer("/resource/labels").unwrap_or(&super::NULL);
    let id = labels
        .pointer("/instance_id")
        .unwrap_or(&super::NULL)
        .as_str()?;
    let zone = labels
        .pointer("/zone")
        .unwrap_or(&super::NULL)
        .as_str()
        .unwrap_or("");
    let p = entry.pointer("/jsonPayload").unwrap_or(&super::NULL);
    if p.pointer("/event").unwrap_or(&super::NULL).as_str() != Some(STATE_EVENT) {
        return None;
    }
    let name = entry
        .pointer("/labels/compute.googleapis.com~1resource_name")
        .unwrap_or(&super::NULL)
        .as_str()
        .unwrap_or(id);
    let text = |k: &str| {
        p.get(k)
            .and_then(Value::as_str)
            .map(clean)
            .filter(|s| !s.is_empty())
    };
    let heartbeat = text("heartbeat").or_else(|| {
        entry
            .pointer("/timestamp")
            .unwrap_or(&super::NULL)
            .as_str()
            .map(clean)
    });
    let report = VmReport {
        name: clean(name),
        zone: clean(zone),
        mig: None,
        health: p
            .pointer("/health")
            .unwrap_or(&super::NULL)
            .as_str()
            .map_or(FleetHealth::Unknown, FleetHealth::parse),
        findings: p
            .pointer("/findings")
            .unwrap_or(&super::NULL)
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(clean)
            .collect(),
        proxy_version: text("proxy_version"),
        proxy_state: text("proxy_state"),
        heartbeat_at: heartbeat.as_deref().and_then(parse_time),
        heartbeat,
        bootstrap_status: None,
        bootstrap_last_failure: None,
        agent_last_failure: None,
        error: None,
    };
    Some((format!("{zone}/{id}"), report))
}

/// Reads the latest state of every VM that logged one since `now - since`.
pub async fn read(
    api: &Api,
    budget: &Budget,
    endpoint: &str,
    project: &str,
    since: Duration,
    now: SystemTime,
) -> Result<Vec<VmReport>, ApiError> {
    let url = format!("{endpoint}/v2/entries:list");
    let from = now.checked_sub(since).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut body = json!({
        "resourceNames": [format!("projects/{project}")],
        "filter": filter(project, from),
        "orderBy": "timestamp desc",
        "pageSize": PAGE_SIZE,
    });
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for _ in 0..MAX_PAGES {
        let page = budget.call(|| api.post_json(&url, &body)).await?;
        for e in page
            .pointer("/entries")
            .unwrap_or(&super::NULL)
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some((key, report)) = report_of(e)
                && seen.insert(key)
            {
                out.push(report);
            }
        }
        match page
            .pointer("/nextPageToken")
            .unwrap_or(&super::NULL)
            .as_str()
        {
            Some(t) if !t.is_empty() => {
                if let Some(o) = body.as_object_mut() {
                    o.insert("pageToken".into(), Value::from(t));
                }
            }
            _ => break,
        }
    }
    out.sort_by(|a, b| (&a.zone, &a.name).cmp(&(&b.zone, &b.name)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_and_entry() {
        let t = humantime::parse_rfc3339("2026-12-06T10:00:00Z").unwrap();
        assert_eq!(
            filter("p1", t),
            "logName=\"projects/p1/logs/service-proxy-agent\" AND jsonPayload.event=\"state\" AND timestamp>=\"2026-12-06T10:00:00Z\""
        );
        let e = json!({
            "resource": {"type": "gce_instance", "labels": {"instance_id": "77", "zone": "z1"}},
            "labels": {"compute.googleapis.com/resource_name": "web-1"},
            "timestamp": "2026-12-06T10:00:01Z",
            "jsonPayload": {"event": "state", "health": "FAILING", "findings": ["ENVOY_NOT_RUNNING"],
                            "proxy_state": "NOT_RUNNING", "heartbeat": "2026-12-06T10:00:00Z"}
        });
        let (key, r) = report_of(&e).unwrap();
        assert_eq!(key, "z1/77");
        assert_eq!((r.name.as_str(), r.health), ("web-1", FleetHealth::Failing));
        assert_eq!(r.findings, vec!["ENVOY_NOT_RUNNING"]);
        assert_eq!(r.heartbeat_at, Some(t));
        let mut other = e.clone();
        other["jsonPayload"]["event"] = json!("finding");
        assert!(report_of(&other).is_none());
        let mut unnamed = e;
        unnamed["labels"] = json!({});
        assert_eq!(report_of(&unnamed).unwrap().1.name, "77");
    }
}
