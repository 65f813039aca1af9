//! `doctor`: one observation, all checks, a report (docs/contract.md#4-3-doctor-output).

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::config::{InterceptionMode, Settings};
use crate::diagnose::{CheckSettings, Diagnosis, GroupReport, GroupStatus};
use crate::finding::{Finding, Health, Severity};
use crate::monitor::Monitor;
use crate::observe::Observer;
use crate::observe::envoy_log::DEFAULT_TAIL_BYTES;
use crate::observe::log_follower::{EntryEvent, FollowerConfig, start_intake};

/// How long `doctor` waits for the tails of the logs present to be read.
const TAIL_DEADLINE: Duration = Duration::from_secs(10);

/// Takes in one event of the log intake, as the daemon does; true when it held entries.
fn take_in(monitor: &mut Monitor, ev: EntryEvent) -> bool {
    monitor
        .log_event(ev, Instant::now(), SystemTime::now())
        .rediagnose_soon
}

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
    /// The project-side checks, each passed / found / not checked (docs/contract.md#10-project-side-checks).
    pub project: crate::diagnose::project::ProjectReport,
}

/// The version of `doctor --json`'s shape: raised when a key changes meaning or goes away
/// (new keys may appear without a raise).
pub const JSON_SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
struct JsonReport<'a> {
    schema_version: u32,
    health: Health,
    generated_at: String,
    findings: &'a [Finding],
    observed: &'a Observed,
    checks: &'a [GroupReport],
    project: &'a crate::diagnose::project::ProjectReport,
    /// Findings set aside by `ignore-findings` (not counted in `health` or the exit status).
    ignored: &'a [crate::diagnose::silence::Ignored],
    ignore_problems: &'a [String],
}

impl Report {
    pub fn health(&self) -> Health {
        self.diagnosis.health()
    }

    /// docs/contract.md#2-command-line: 0 when no finding of severity `error`, 1 otherwise.
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
            schema_version: JSON_SCHEMA_VERSION,
            health: self.health(),
            generated_at: humantime::format_rfc3339_seconds(self.generated_at).to_string(),
            findings: &self.diagnosis.findings,
            observed: &self.observed,
            checks: &self.diagnosis.groups,
            project: &self.project,
            ignored: &self.diagnosis.ignored,
            ignore_problems: &self.diagnosis.ignore_problems,
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
        // The project group comes last: its checks one by one, each with what it saw or why not.
        for c in &self.project.checks {
            let status = c.status.replace('_', " ");
            let _ = writeln!(out, "      {:<17} {status}: {}", c.check, c.detail);
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
        for i in &self.diagnosis.ignored {
            let f = &i.finding;
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "- {} ({}, ignored until {}): {}",
                f.id,
                f.severity,
                i.until_text(),
                f.summary
            );
            let _ = writeln!(
                out,
                "    ignored:     {} ({})",
                i.reason,
                i.source.describe()
            );
            if !f.detail.is_empty() {
                let _ = writeln!(out, "    detail:      {}", f.detail);
            }
        }
        for p in &self.diagnosis.ignore_problems {
            let _ = writeln!(out);
            let _ = writeln!(out, "! {p}");
        }
        let errors = count(&self.diagnosis.findings, Severity::Error);
        let warnings = count(&self.diagnosis.findings, Severity::Warning);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Verdict: {} ({} error{}, {} warning{}{})",
            self.health(),
            errors,
            plural(errors),
            warnings,
            plural(warnings),
            match self.diagnosis.ignored.len() {
                0 => String::new(),
                n => format!(", {n} ignored"),
            }
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

/// Observes once (or keeps observing for `wait`), diagnoses, prints the report; returns the exit
/// status of docs/contract.md#2-command-line.
pub async fn run(settings: &Settings, json: bool, wait: Option<Duration>) -> anyhow::Result<u8> {
    let report = observe_and_diagnose(settings, wait).await;
    // Redacted as the daemon redacts what it publishes: log lines can hold tokens.
    if json {
        let mut j = report.to_json();
        crate::text::redact_json(&mut j);
        crate::text::print_out(format_args!("{}\n", serde_json::to_string_pretty(&j)?));
    } else {
        let text = crate::text::redact_lines(&report.to_text());
        crate::text::print_out(format_args!("{text}"));
    }
    Ok(report.exit_code())
}

/// The report `doctor` prints. With `wait`, the log directory is followed and the VM polled
/// (every poll interval, at most every 2 s) until `wait` has passed, so failures that show up
/// only in Envoy's buffered log (flushed every 10 s by default) are caught.
pub async fn observe_and_diagnose(settings: &Settings, wait: Option<Duration>) -> Report {
    let observer = Observer::new(settings);
    let checks = CheckSettings::from_settings(settings);
    // The daemon's decisions: the same intake of the logs, the same diagnosis.
    let mut monitor = Monitor::new(checks);
    let start = Instant::now();

    // The daemon's intake: what is already there, then (with `wait`) what is written after.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut cfg = FollowerConfig::new(&settings.envoy_log_dir);
    cfg.initial_tail_bytes = DEFAULT_TAIL_BYTES;
    cfg.poll_interval = Duration::from_millis(250);
    let mut follower = start_intake(cfg, move |ev| tx.send(ev).is_ok()).ok();
    if follower.is_some() {
        let tails = async {
            while let Some(ev) = rx.recv().await {
                if matches!(ev, EntryEvent::CaughtUp) {
                    break;
                }
                take_in(&mut monitor, ev);
            }
        };
        let _ = tokio::time::timeout(TAIL_DEADLINE, tails).await;
    }
    if wait.is_none() {
        follower = None;
    }

    let (mut snap, ga) = tokio::join!(observer.snapshot(true), observer.probe_guest_attributes());
    snap.guest_attributes = ga;
    let mut diagnosis = monitor.diagnose(&snap, Instant::now());
    if let Some(wait) = wait {
        let deadline = start + wait;
        let period = settings.poll_interval.min(Duration::from_secs(2));
        while Instant::now() < deadline {
            let next = (Instant::now() + period).min(deadline);
            // Drain log entries as they come until the next poll.
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ev) => { take_in(&mut monitor, ev); }
                        None => { tokio::time::sleep_until(next.into()).await; break; }
                    },
                    () = tokio::time::sleep_until(next.into()) => break,
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            let (mut s, ga) =
                tokio::join!(observer.snapshot(false), observer.probe_guest_attributes());
            s.guest_attributes = ga;
            // The reachability result of the first snapshot stays valid for the report.
            s.control_plane = snap.control_plane.take();
            snap = s;
            diagnosis = monitor.diagnose(&snap, Instant::now());
        }
        let mut late = false;
        while let Ok(ev) = rx.try_recv() {
            late |= take_in(&mut monitor, ev);
        }
        if late {
            diagnosis = monitor.diagnose(&snap, Instant::now());
        }
    }
    drop(follower);
    let project = crate::project_checks::once(settings, &snap, &mut diagnosis).await;
    Report {
        project,
        generated_at: SystemTime::now(),
        observed: Observed {
            proxy_version: snap.proxy_version().map(str::to_owned),
            proxy_state: snap.proxy_state(),
            listener_vips: snap.listener_vips(),
            serving_ports: snap.resolved.serving_ports.clone(),
            interception: settings.interception,
        },
        diagnosis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{CheckGroup, GroupOutcome};
    use crate::finding::FindingId;

    fn report(findings: Vec<Finding>) -> Report {
        Report {
            project: Default::default(),
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
    fn ignored_findings_are_shown_with_their_reason_and_do_not_count() {
        use crate::diagnose::silence::{Ignored, RuleSource};
        let mut r = report(vec![]);
        r.diagnosis.ignored = vec![Ignored {
            finding: Finding::new(FindingId::ServerFirstProtocol, "port 3306 (MySQL)"),
            reason: "MySQL stays outside the mesh (TICKET-1)".into(),
            until: SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000),
            source: RuleSource::Metadata,
        }];
        assert_eq!(r.exit_code(), 0);
        let j = r.to_json();
        assert_eq!(j["schema_version"], JSON_SCHEMA_VERSION);
        assert_eq!(j["health"], "OK");
        assert_eq!(j["findings"], serde_json::json!([]));
        let i = &j["ignored"][0];
        assert_eq!(i["id"], "SERVER_FIRST_PROTOCOL");
        assert_eq!(i["severity"], "warning");
        assert_eq!(i["detail"], "port 3306 (MySQL)");
        assert_eq!(i["reason"], "MySQL stays outside the mesh (TICKET-1)");
        assert_eq!(i["until"], "2030-03-17T17:46:40Z");
        assert_eq!(i["source"], "metadata");
        let text = r.to_text();
        assert!(
            text.contains("- SERVER_FIRST_PROTOCOL (warning, ignored until 2030-03-17T17:46:40Z)"),
            "{text}"
        );
        assert!(
            text.contains(
                "ignored:     MySQL stays outside the mesh (TICKET-1) (gce-service-proxy metadata)"
            ),
            "{text}"
        );
        assert!(
            text.contains("Verdict: OK (0 errors, 0 warnings, 1 ignored)"),
            "{text}"
        );
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
    fn project_checks_are_listed_one_by_one_in_text_and_json() {
        let mut r = report(vec![]);
        let mut d = r.diagnosis.clone();
        r.project = crate::diagnose::project::apply(
            &mut d,
            crate::diagnose::project::ProjectInput::Off("--cloud-checks off"),
            r.generated_at,
        );
        r.diagnosis = d;
        let t = r.to_text();
        assert!(t.contains("  ! project           "), "{t}");
        assert!(
            t.contains("      iam               not checked: --cloud-checks off"),
            "{t}"
        );
        let j = r.to_json();
        assert_eq!(j["project"]["checks"][0]["check"], "iam");
        assert_eq!(j["project"]["checks"][0]["status"], "not_checked");
        assert_eq!(j["project"]["checks"][0]["detail"], "--cloud-checks off");
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
