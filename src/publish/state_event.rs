//! The `state` log event (docs/contract.md#6-logs): every 10 minutes and at each change of `health` or
//! `findings`, one event carrying the VM's whole published state. It is what
//! `fleet --source logging` reads, so a fleet's state costs a few `entries:list` pages instead of
//! one guest-attribute read per VM; the 10-minute repeat keeps every healthy VM inside any
//! `--since` window of 15 minutes or more.
//!
//! [`StateSchedule`] decides (pure, time passed in); [`StateLog`] writes the event through the
//! agent's log output, so it reaches stdout, the serial port and Cloud Logging (as jsonPayload)
//! like every other event, with `findings` as a JSON array rather than text.

use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::publish::log::{LogOutput, LogRecord};

/// The repeat period of an unchanged state.
pub const STATE_PERIOD: Duration = Duration::from_secs(600);

/// The value of the `event` field.
pub const STATE_EVENT: &str = "state";

/// When to log the state: the first time, at a change of health or findings, and when
/// [`STATE_PERIOD`] has passed since the last one.
#[derive(Debug, Default)]
pub struct StateSchedule {
    last: Option<(String, Vec<String>, Instant)>,
}

impl StateSchedule {
    /// Whether a state event is due now; when it is, the schedule counts it as logged.
    pub fn due(&mut self, health: &str, findings: &[String], now: Instant) -> bool {
        let due = match &self.last {
            None => true,
            Some((h, f, at)) => {
                h != health || f != findings || now.saturating_duration_since(*at) >= STATE_PERIOD
            }
        };
        if due {
            self.last = Some((health.to_owned(), findings.to_vec(), now));
        }
        due
    }
}

/// What one state event says.
#[derive(Debug, Clone, PartialEq)]
pub struct VmState<'a> {
    pub health: &'a str,
    /// Finding IDs, errors first (the order of the `findings` guest attribute).
    pub findings: &'a [String],
    pub proxy_version: Option<&'a str>,
    pub proxy_state: &'a str,
    /// The `agent-heartbeat` value (RFC 3339).
    pub heartbeat: &'a str,
}

impl VmState<'_> {
    /// The log record: `event`, `health`, `findings` (array), `proxy_version`, `proxy_state`,
    /// `heartbeat` as structured fields.
    pub fn record(&self, time: SystemTime) -> LogRecord {
        let clean = |s: &str| {
            crate::text::truncate_with_ellipsis(
                &crate::text::strip_control(&crate::text::redact_secrets(s)),
                1024,
            )
        };
        let message = if self.findings.is_empty() {
            format!("state {}", self.health)
        } else {
            format!("state {}: {}", self.health, self.findings.join(","))
        };
        LogRecord {
            seq: crate::publish::log::next_seq(),
            time,
            severity: "INFO",
            message,
            fields: vec![
                ("event".into(), Value::from(STATE_EVENT)),
                ("health".into(), Value::from(self.health)),
                (
                    "findings".into(),
                    Value::Array(
                        self.findings
                            .iter()
                            .map(|f| Value::from(f.as_str()))
                            .collect(),
                    ),
                ),
                (
                    "proxy_version".into(),
                    self.proxy_version
                        .map_or(Value::Null, |v| Value::from(clean(v))),
                ),
                ("proxy_state".into(), Value::from(clean(self.proxy_state))),
                ("heartbeat".into(), Value::from(self.heartbeat)),
            ],
        }
    }
}

/// The schedule and where the events go.
pub struct StateLog {
    schedule: StateSchedule,
    out: LogOutput,
}

impl StateLog {
    pub fn new(out: LogOutput) -> StateLog {
        StateLog {
            schedule: StateSchedule::default(),
            out,
        }
    }

    /// Called after each completed cycle; logs the state when it is due.
    pub fn observe(&mut self, state: &VmState<'_>, now: Instant) {
        if self.schedule.due(state.health, state.findings, now) {
            self.out.write(state.record(SystemTime::now()), true);
        }
    }
}

/// The `findings` guest-attribute text (comma-separated) as the event's array.
pub fn finding_ids(attribute: &str) -> Vec<String> {
    attribute
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &str) -> Vec<String> {
        finding_ids(s)
    }

    #[test]
    fn first_change_and_period() {
        let t0 = Instant::now();
        let mut s = StateSchedule::default();
        assert!(s.due("OK", &[], t0), "the first state is logged");
        assert!(!s.due("OK", &[], t0 + Duration::from_secs(10)));
        assert!(!s.due("OK", &[], t0 + Duration::from_secs(599)));
        assert!(s.due("OK", &[], t0 + STATE_PERIOD), "10 minutes later");
        let t1 = t0 + STATE_PERIOD;
        assert!(
            s.due(
                "DEGRADED",
                &ids("ENVOY_NOT_LIVE"),
                t1 + Duration::from_secs(1)
            ),
            "health changed"
        );
        assert!(!s.due(
            "DEGRADED",
            &ids("ENVOY_NOT_LIVE"),
            t1 + Duration::from_secs(2)
        ));
        assert!(
            s.due(
                "DEGRADED",
                &ids("ENVOY_NOT_LIVE,ENDPOINTS_UNHEALTHY"),
                t1 + Duration::from_secs(3)
            ),
            "findings changed with the same health"
        );
        // The period restarts at each logged event.
        let t2 = t1 + Duration::from_secs(3);
        let same = ids("ENVOY_NOT_LIVE,ENDPOINTS_UNHEALTHY");
        assert!(!s.due("DEGRADED", &same, t2 + Duration::from_secs(599)));
        assert!(s.due("DEGRADED", &same, t2 + Duration::from_secs(600)));
    }

    #[test]
    fn record_has_the_contract_fields() {
        let findings = ids("CONTROL_PLANE_DISCONNECTED, ENVOY_NOT_LIVE");
        let state = VmState {
            health: "FAILING",
            findings: &findings,
            proxy_version: Some("abc/1.40.0/Clean/RELEASE/BoringSSL\u{1b}[31m"),
            proxy_state: "LIVE",
            heartbeat: "2026-12-06T10:00:00Z",
        };
        let line: Value =
            serde_json::from_str(&state.record(SystemTime::UNIX_EPOCH).to_json_line()).unwrap();
        assert_eq!(line["event"], "state");
        assert_eq!(line["health"], "FAILING");
        assert_eq!(
            line["findings"],
            serde_json::json!(["CONTROL_PLANE_DISCONNECTED", "ENVOY_NOT_LIVE"])
        );
        assert_eq!(line["proxy_state"], "LIVE");
        assert_eq!(line["heartbeat"], "2026-12-06T10:00:00Z");
        assert_eq!(line["severity"], "INFO");
        let v = line["proxy_version"].as_str().unwrap();
        assert!(v.starts_with("abc/1.40.0/") && !v.contains('\u{1b}'), "{v}");
        let empty: Vec<String> = Vec::new();
        let none = VmState {
            findings: &empty,
            proxy_version: None,
            ..state
        };
        let line: Value =
            serde_json::from_str(&none.record(SystemTime::UNIX_EPOCH).to_json_line()).unwrap();
        assert_eq!(line["findings"], serde_json::json!([]));
        assert!(line["proxy_version"].is_null());
    }

    #[test]
    fn state_log_writes_only_when_due() {
        let out = LogOutput::capturing();
        let mut log = StateLog::new(out.clone());
        let findings = Vec::new();
        let state = VmState {
            health: "OK",
            findings: &findings,
            proxy_version: None,
            proxy_state: "LIVE",
            heartbeat: "2026-12-06T10:00:00Z",
        };
        let t0 = Instant::now();
        log.observe(&state, t0);
        log.observe(&state, t0 + Duration::from_secs(10));
        assert_eq!(out.captured().len(), 1);
        log.observe(&state, t0 + STATE_PERIOD);
        assert_eq!(out.captured().len(), 2);
    }
}
