//! `doctor`: one observation, all checks, a report (SPEC §4.3).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::{InterceptionMode, Settings};
use crate::diagnose::{Diagnosis, GroupReport, GroupStatus};
use crate::finding::{Finding, Health, Severity};

/// The `observed` part of the JSON report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observed {
    pub proxy_version: Option<String>,
    pub proxy_state: String,
    pub listener_vips: Vec<String>,
    pub serving_ports: Vec<u16>,
    pub interception: InterceptionMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub generated_at: SystemTime,
    pub diagnosis: Diagnosis,
    pub observed: Observed,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    health: Health,
    generated_at: String,
    findings: &'a [Finding],
    observed: &'a Observed,
    checks: &'a [GroupReport],
}

impl Report {
    pub fn health(&self) -> Health {
        self.diagnosis.health()
    }

    /// SPEC §2: 0 when no finding of severity `error`, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        u8::from(
            self.diagnosis
                .findings
                .iter()
                .any(|f| f.severity == Severity::Error),
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(JsonReport {
            health: self.health(),
            generated_at: humantime::format_rfc3339_seconds(self.generated_at).to_string(),
            findings: &self.diagnosis.findings,
            observed: &self.observed,
            checks: &self.diagnosis.groups,
        })
        .unwrap_or(serde_json::Value::Null)
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "service-proxy-agent doctor, {}",
            humantime::format_rfc3339_seconds(self.generated_at)
        );
        let _ = writeln!(out);
        for g in &self.diagnosis.groups {
            let (mark, extra) = match &g.status {
                GroupStatus::Pass => ("✓", String::new()),
                GroupStatus::Warn => ("!", String::new()),
                GroupStatus::Fail => ("✗", String::new()),
                GroupStatus::NotChecked(reason) => ("!", format!("not checked: {reason}")),
            };
            let text = match (g.note.is_empty(), extra.is_empty()) {
                (false, false) => format!("{}; {extra}", g.note),
                (true, false) => extra,
                _ => g.note.clone(),
            };
            let _ = writeln!(out, "  {mark} {:<17} {text}", g.group.title());
        }
        for f in &self.diagnosis.findings {
            let mark = match f.severity {
                Severity::Error => "✗",
                Severity::Warning => "!",
                Severity::Info => "i",
            };
            let _ = writeln!(out);
            let _ = writeln!(out, "{mark} {} ({}): {}", f.id, f.severity, f.summary);
            if !f.detail.is_empty() {
                let _ = writeln!(out, "    detail:      {}", f.detail);
            }
            let _ = writeln!(out, "    what to do:  {}", f.remediation);
            let _ = writeln!(out, "    guide:       {}", f.doc);
        }
        let errors = count(&self.diagnosis.findings, Severity::Error);
        let warnings = count(&self.diagnosis.findings, Severity::Warning);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Verdict: {} ({} error{}, {} warning{})",
            self.health(),
            errors,
            plural(errors),
            warnings,
            plural(warnings)
        );
        let vips = if self.observed.listener_vips.is_empty() {
            "none".to_owned()
        } else {
            self.observed.listener_vips.join(", ")
        };
        let _ = writeln!(
            out,
            "Envoy: {} {}; listener VIPs: {vips}; interception: {}",
            self.observed
                .proxy_version
                .as_deref()
                .unwrap_or("(version unknown)"),
            self.observed.proxy_state,
            self.observed.interception.as_str()
        );
        out
    }
}

fn count(findings: &[Finding], sev: Severity) -> usize {
    findings.iter().filter(|f| f.severity == sev).count()
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

pub async fn run(_settings: &Settings, _json: bool, _wait: Option<Duration>) -> anyhow::Result<u8> {
    anyhow::bail!("`doctor` is not implemented in this build yet")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{CheckGroup, GroupOutcome};
    use crate::finding::FindingId;

    fn report(findings: Vec<Finding>) -> Report {
        Report {
            generated_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            diagnosis: Diagnosis::from_outcomes(vec![
                (
                    CheckGroup::Proxy,
                    GroupOutcome {
                        findings,
                        note: "Envoy 1.40.0 LIVE".into(),
                        ..Default::default()
                    },
                ),
                (
                    CheckGroup::Interception,
                    GroupOutcome {
                        not_checked: Some("interception is off".into()),
                        ..Default::default()
                    },
                ),
            ]),
            observed: Observed {
                proxy_version: Some("abc/1.40.0/Clean/RELEASE/BoringSSL".into()),
                proxy_state: "LIVE".into(),
                listener_vips: vec!["10.0.0.1/32".into()],
                serving_ports: vec![80],
                interception: InterceptionMode::Verify,
            },
        }
    }

    #[test]
    fn json_has_the_contract_keys() {
        let r = report(vec![Finding::new(
            FindingId::EnvoyNotLive,
            "DRAINING for 2m",
        )]);
        let j = r.to_json();
        assert_eq!(j["health"], "DEGRADED");
        assert_eq!(j["generated_at"], "2027-01-15T08:00:00Z");
        let f = &j["findings"][0];
        for k in ["id", "severity", "summary", "detail", "remediation", "doc"] {
            assert!(f.get(k).is_some(), "missing {k}");
        }
        assert_eq!(f["id"], "ENVOY_NOT_LIVE");
        assert_eq!(f["severity"], "warning");
        assert_eq!(
            j["observed"]["proxy_version"],
            "abc/1.40.0/Clean/RELEASE/BoringSSL"
        );
        assert_eq!(j["observed"]["listener_vips"][0], "10.0.0.1/32");
        assert_eq!(j["observed"]["serving_ports"][0], 80);
        assert_eq!(j["observed"]["interception"], "verify");
        assert_eq!(r.exit_code(), 0);
    }

    #[test]
    fn text_has_group_lines_findings_and_verdict() {
        let r = report(vec![Finding::new(
            FindingId::EnvoyNotRunning,
            "no process named envoy",
        )]);
        let t = r.to_text();
        assert!(t.contains("  ✗ proxy"), "{t}");
        assert!(
            t.contains("  ! interception      not checked: interception is off"),
            "{t}"
        );
        assert!(
            t.contains("✗ ENVOY_NOT_RUNNING (error): No Envoy process is running"),
            "{t}"
        );
        assert!(t.contains("detail:      no process named envoy"), "{t}");
        assert!(t.contains("Verdict: FAILING (1 error, 0 warnings)"), "{t}");
        assert_eq!(r.exit_code(), 1);
    }
}
