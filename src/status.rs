//! `status` (read the `gce-service-proxy` guest attributes back, with the heartbeat's age) and
//! `report-bootstrap` (what install scripts call to set `bootstrap-status`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::config::Settings;
use crate::contract::guest_attributes::{NAMESPACE, keys};
use crate::observe::metadata::{MetadataClient, MetadataError};
use crate::text::strip_control;

/// The guide: a heartbeat older than 5 minutes means the agent is stuck.
pub const STALE_AFTER: Duration = Duration::from_secs(300);

/// Keys in the order an SRE reads them.
const ORDER: [&str; 8] = [
    keys::BOOTSTRAP_STATUS,
    keys::BOOTSTRAP_LAST_FAILURE,
    keys::HEALTH,
    keys::FINDINGS,
    keys::PROXY_STATE,
    keys::PROXY_VERSION,
    keys::HEARTBEAT,
    keys::LAST_FAILURE,
];

fn client(settings: &Settings) -> MetadataClient {
    MetadataClient::new(&settings.metadata_host, Duration::from_secs(5))
}

/// How far ahead of this VM's clock a heartbeat may be (a clock stepped back a little since it
/// was written). The agent writes it with this very clock: more is a forged or broken value,
/// and must not make a stopped agent look alive forever.
pub const FUTURE_TOLERANCE: Duration = Duration::from_secs(60);

/// The heartbeat's age at `now`: `Ok(age)` (zero within [`FUTURE_TOLERANCE`] ahead), `Err(ahead)`
/// when it is further in the future; `None` when it does not parse.
pub fn heartbeat_age(value: &str, now: SystemTime) -> Option<Result<Duration, Duration>> {
    let t = humantime::parse_rfc3339_weak(value.trim()).ok()?;
    Some(match now.duration_since(t) {
        Ok(age) => Ok(age),
        Err(e) if e.duration() <= FUTURE_TOLERANCE => Ok(Duration::ZERO),
        Err(e) => Err(e.duration()),
    })
}

pub async fn status(settings: &Settings, json_out: bool) -> anyhow::Result<u8> {
    let md = client(settings);
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let listed = match md.list_guest_attributes(NAMESPACE).await {
        Ok(keys) => keys,
        Err(e) => return Ok(unreachable(&md, &e, json_out)),
    };
    for key in listed {
        match md.get_guest_attribute(NAMESPACE, &key).await {
            Ok(Some(v)) => {
                values.insert(key, v);
            }
            Ok(None) => {}
            Err(e) => return Ok(unreachable(&md, &e, json_out)),
        }
    }
    let now = SystemTime::now();
    let age = values
        .get(keys::HEARTBEAT)
        .and_then(|v| heartbeat_age(v, now));
    let alive = age.is_some_and(|a| a.is_ok_and(|a| a < STALE_AFTER));
    let verdict = match (values.get(keys::HEARTBEAT), age) {
        (None, _) => "no agent-heartbeat: the agent has never published on this VM".to_owned(),
        (Some(v), None) => format!("agent-heartbeat {v:?} is not an RFC 3339 time"),
        (Some(_), Some(Err(ahead))) => format!(
            "agent-heartbeat is {} in the future: not a time this agent wrote",
            human(ahead)
        ),
        (Some(_), Some(Ok(a))) if alive => format!("agent alive (heartbeat {} ago)", human(a)),
        (Some(_), Some(Ok(a))) => format!(
            "agent stuck or stopped: heartbeat {} ago (more than 5 minutes)",
            human(a)
        ),
    };
    if json_out {
        let out = json!({
            "schema_version": JSON_SCHEMA_VERSION,
            "namespace": NAMESPACE,
            "attributes": values,
            "heartbeat_age_seconds": age.and_then(Result::ok).map(|a| a.as_secs()),
            "alive": alive,
            "verdict": verdict,
        });
        crate::text::print_out(format_args!("{}\n", serde_json::to_string_pretty(&out)?));
    } else {
        crate::text::print_out(format_args!(
            "guest attributes {NAMESPACE}/ on {}:\n",
            md.authority()
        ));
        let width = ORDER
            .iter()
            .map(|k| k.len())
            .chain(values.keys().map(String::len))
            .max()
            .unwrap_or(0);
        let mut shown = Vec::new();
        for key in ORDER
            .iter()
            .map(|k| (*k).to_owned())
            .chain(values.keys().cloned())
        {
            if shown.contains(&key) {
                continue;
            }
            let value = match values.get(&key) {
                Some(v) if v.is_empty() => "(empty)".to_owned(),
                Some(v) => v.clone(),
                None if key == keys::BOOTSTRAP_STATUS => "[none]".to_owned(),
                None => "(absent)".to_owned(),
            };
            // Values come from whoever can write guest attributes: no terminal escapes.
            let (k, v) = (strip_control(&key), strip_control(&value));
            crate::text::print_out(format_args!("  {k:<width$}  {v}\n"));
            shown.push(key);
        }
        crate::text::print_out(format_args!("{}\n", strip_control(&verdict)));
    }
    Ok(if alive { 0 } else { 1 })
}

/// The version of `status --json`'s shape: raised when a key changes meaning or goes away (new
/// keys may appear without a raise).
pub const JSON_SCHEMA_VERSION: u32 = 1;

fn unreachable(md: &MetadataClient, e: &MetadataError, json_out: bool) -> u8 {
    let msg = format!("cannot read guest attributes from {}: {e}", md.authority());
    if json_out {
        crate::text::print_out(format_args!(
            "{}\n",
            json!({"schema_version": JSON_SCHEMA_VERSION, "error": msg, "alive": false})
        ));
    } else {
        eprintln!("service-proxy-agent: {msg}");
    }
    2
}

/// What an install script reports (`report-bootstrap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapStatus {
    InProgress,
    Finished,
    Failed,
}

impl BootstrapStatus {
    /// The guest-attribute value (docs/contract.md#3-guest-attributes).
    pub fn attribute_value(self) -> &'static str {
        match self {
            BootstrapStatus::InProgress => "IN PROGRESS",
            BootstrapStatus::Finished => "FINISHED",
            BootstrapStatus::Failed => "FAILED",
        }
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

pub async fn report_bootstrap(
    settings: &Settings,
    status: BootstrapStatus,
    reason: Option<&str>,
) -> anyhow::Result<u8> {
    let md = client(settings);
    let mut writes = vec![(keys::BOOTSTRAP_STATUS, status.attribute_value().to_owned())];
    if status == BootstrapStatus::Failed {
        writes.push((
            keys::BOOTSTRAP_LAST_FAILURE,
            reason.unwrap_or("unknown failure").to_owned(),
        ));
    }
    for (key, value) in writes {
        if let Err(e) = md.put_guest_attribute(NAMESPACE, key, &value).await {
            eprintln!("service-proxy-agent: cannot write {NAMESPACE}/{key}: {e}");
            return Ok(1);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_ages() {
        let now = humantime::parse_rfc3339("2026-11-22T10:05:00Z").unwrap();
        assert_eq!(
            heartbeat_age("2026-11-22T10:00:00Z", now),
            Some(Ok(Duration::from_secs(300)))
        );
        assert_eq!(heartbeat_age("yesterday", now), None);
        // A clock stepped back a little: age zero.
        assert_eq!(
            heartbeat_age("2026-11-22T10:06:00Z", now),
            Some(Ok(Duration::ZERO))
        );
        // Further ahead: not alive, whatever its distance (issue 15 item 17).
        assert_eq!(
            heartbeat_age("2099-01-01T00:00:00Z", now).map(|r| r.is_err()),
            Some(true)
        );
    }
}
