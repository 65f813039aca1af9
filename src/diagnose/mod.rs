//! Diagnosis: pure functions from an observation snapshot to findings, one file per check group.
//!
//! A group either passes, finds faults, or could not check (its inputs were unavailable — e.g.
//! Envoy's admin is down, so its listeners cannot be judged). "Could not check" is reported as
//! such, never as a pass.

pub mod configuration;
pub mod control_plane;
pub mod endpoints;
pub mod history;
pub mod interception;
pub mod log_classifier;
pub mod log_findings;
pub mod metadata;
pub mod project;
pub mod proxy;
pub mod silence;
#[cfg(test)]
pub(crate) mod testutil;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{InterceptionMode, Settings};
use crate::finding::{Finding, Health, Severity, sort_findings};
use crate::observe::Snapshot;
pub use history::History;
use log_findings::{Contradiction, LogContext, LogFindings};

/// The knobs of the checks, from the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSettings {
    pub admin_url: String,
    pub interception: InterceptionMode,
    /// How long Envoy may be other than LIVE before ENVOY_NOT_LIVE.
    pub not_live_grace: Duration,
    /// How long `connected_state` may be 0 before CONTROL_PLANE_DISCONNECTED.
    pub disconnected_grace: Duration,
    pub finding_ttl: Duration,
    pub control_plane: String,
    /// `ignore-findings` from the config file (the metadata's come with each snapshot).
    pub ignore_findings: Vec<silence::IgnoreRule>,
}

impl CheckSettings {
    pub fn from_settings(s: &Settings) -> Self {
        // Envoy needs up to two 15 s initial fetches to turn LIVE; don't cry before that.
        let grace = (s.poll_interval * 2).max(Duration::from_secs(60));
        CheckSettings {
            admin_url: s.envoy_admin.to_string(),
            interception: s.interception,
            not_live_grace: grace,
            disconnected_grace: grace,
            finding_ttl: s.finding_ttl,
            control_plane: s.control_plane.to_string(),
            ignore_findings: s.ignore_findings.clone(),
        }
    }
}

/// What every check may look at besides the snapshot.
pub struct CheckContext<'a> {
    pub now: Instant,
    pub settings: &'a CheckSettings,
    pub history: &'a History,
}

/// The log tracker's view of the VM, for its cross-checks.
pub fn log_context(snap: &Snapshot) -> LogContext {
    let vm = snap.vm.as_ref().ok();
    LogContext {
        vm_network: vm
            .and_then(|v| v.network.as_ref().ok())
            .map(|n| n.name.clone()),
        vm_project_number: vm.map(|v| v.project_number.to_string()),
        envoy_uid: snap.resolved.envoy_uid,
    }
}

/// Envoy retries a refused or failed xDS stream within its backoff (at most 30 s by default).
pub const MAX_XDS_BACKOFF: Duration = Duration::from_secs(30);
/// Envoy's default `--file-flush-interval-msec`.
const DEFAULT_LOG_FLUSH: Duration = Duration::from_secs(10);

/// How long a control-plane failure that is still going on can go without a log line: one
/// retry, one flush of the log, and a margin. Connected now and nothing logged for that long
/// means the failure is over, even when no update arrived to prove it (a `doctor` run after a
/// fix: Envoy re-ACKs the same version, so no counter moves).
pub fn quiet_period(snap: &Snapshot) -> Duration {
    let flush = snap
        .server_info
        .as_ref()
        .ok()
        .and_then(|i| {
            crate::observe::envoy_admin::parse_proto_duration(
                &i.command_line_options.file_flush_interval,
            )
        })
        .unwrap_or(DEFAULT_LOG_FLUSH)
        .min(Duration::from_secs(600));
    MAX_XDS_BACKOFF + flush + Duration::from_secs(20)
}

/// When Envoy last accepted a change to one of its active dynamic listeners (`last_updated`),
/// on the monotonic clock of `now` (the snapshot's wall time maps to `now`).
pub fn newest_listener_update(snap: &Snapshot, now: Instant) -> Option<Instant> {
    let newest = snap
        .listeners
        .as_ref()
        .ok()?
        .iter()
        .filter_map(|l| l.active.as_ref()?.last_updated.as_deref())
        .filter_map(|t| humantime::parse_rfc3339_weak(t.trim()).ok())
        .max()?;
    let age = snap
        .taken_at
        .duration_since(newest)
        .unwrap_or(Duration::ZERO);
    now.checked_sub(age)
}

/// One diagnosis: folds the snapshot into the history, applies what the snapshot contradicts
/// to the log-derived findings, runs every group's checks and merges the log findings in.
///
/// Log findings join their group's findings through the group's own rules
/// ([`control_plane::merge_log_findings`], [`configuration::merge_log_findings`]): the same
/// fault seen in the snapshot and in the log is reported once. A refusal by the control plane
/// (5, 7, 16) explains NO_MESH_CONFIG, which then gives way.
pub fn run(
    snap: &Snapshot,
    history: &mut History,
    logs: &mut LogFindings,
    settings: &CheckSettings,
    now: Instant,
) -> Diagnosis {
    history.update(snap, now);
    let connected = matches!(
        snap.stats
            .as_ref()
            .ok()
            .and_then(|s| s.control_plane_connected_state),
        Some(1 | 2)
    );
    let listener_update = newest_listener_update(snap, now);
    if connected && history.accepted_update_now {
        logs.contradict(Contradiction::ControlPlaneServing, now);
    } else if connected {
        // Served listeners since, or quiet for longer than a failure can be.
        let quiet = now.checked_sub(quiet_period(snap));
        if let Some(at) = quiet.max(listener_update) {
            logs.contradict(Contradiction::ControlPlaneServing, at);
        }
    }
    let listener_errors = snap
        .listeners
        .as_ref()
        .map(|ls| ls.iter().any(|l| l.error.is_some()))
        .unwrap_or(true);
    if !listener_errors && history.accepted_update_now && !history.rejected_grew_now {
        logs.contradict(Contradiction::NoRejectedConfig, now);
    } else if !listener_errors && let Some(at) = listener_update {
        // No rejection is pending and a listener was accepted at `at`: rejections logged
        // before are over (a `doctor` run after a fix sees no counter move).
        logs.contradict(Contradiction::NoRejectedConfig, at);
    }
    let interception = interception_group(snap, &mut history.interception);
    let ctx = CheckContext {
        now,
        settings,
        history,
    };
    let mut outcomes = vec![
        (CheckGroup::Proxy, proxy::check(snap, &ctx)),
        (CheckGroup::ControlPlane, control_plane::check(snap, &ctx)),
        (CheckGroup::Configuration, configuration::check(snap, &ctx)),
        (CheckGroup::Interception, interception),
        (CheckGroup::Endpoints, endpoints::check(snap, &ctx)),
        (CheckGroup::Metadata, metadata::check(snap, &ctx)),
    ];
    let mut by_group: BTreeMap<CheckGroup, Vec<(Finding, String)>> = BTreeMap::new();
    for (f, key) in logs.active_keyed(now, settings.finding_ttl, &log_context(snap)) {
        by_group
            .entry(CheckGroup::of(f.id))
            .or_default()
            .push((f, key));
    }
    for (group, found) in by_group {
        let pos = match outcomes.iter().position(|(g, _)| *g == group) {
            Some(p) => p,
            None => {
                outcomes.push((group, GroupOutcome::default()));
                outcomes.len() - 1
            }
        };
        let Some((_, o)) = outcomes.get_mut(pos) else {
            continue;
        };
        match group {
            CheckGroup::ControlPlane => {
                control_plane::merge_log_findings(o, found.into_iter().map(|(f, _)| f).collect());
            }
            CheckGroup::Configuration => configuration::merge_log_findings(o, found),
            _ => {
                for (f, _) in found {
                    if !o
                        .findings
                        .iter()
                        .any(|e| e.id == f.id && e.detail == f.detail)
                    {
                        o.findings.push(f);
                    }
                }
            }
        }
    }
    // A refusal or a disconnection keeps listeners away; a stream opening between refusals
    // can read as connected, so NO_MESH_CONFIG gives way to either.
    let cause = outcomes
        .iter()
        .flat_map(|(_, o)| &o.findings)
        .map(|f| f.id)
        .find(|id| control_plane::keeps_listeners_away(*id));
    if let Some(cause) = cause
        && let Some((_, o)) = outcomes
            .iter_mut()
            .find(|(g, _)| *g == CheckGroup::Configuration)
    {
        configuration::explained_by(o, cause);
    }
    outcomes.sort_by_key(|(g, _)| *g);
    // Silencing last, per group, so a group whose only finding is ignored shows as passed.
    let (rules, ignore_problems) = silence_rules(snap, settings);
    let mut ignored = Vec::new();
    for (_, o) in &mut outcomes {
        let s = silence::apply(std::mem::take(&mut o.findings), &rules, snap.taken_at);
        o.findings = s.active;
        ignored.extend(s.ignored);
    }
    let mut d = Diagnosis::from_outcomes(outcomes);
    d.ignored = ignored;
    d.ignore_problems = ignore_problems;
    d.silence = (rules, Some(snap.taken_at));
    d
}

/// The config file's rules and those of the `gce-service-proxy` metadata, with what was wrong
/// in the metadata's (the file's were checked when it was read).
fn silence_rules(
    snap: &Snapshot,
    settings: &CheckSettings,
) -> (Vec<silence::IgnoreRule>, Vec<String>) {
    let mut rules = settings.ignore_findings.clone();
    let mut problems = Vec::new();
    let from_metadata = snap
        .vm
        .as_ref()
        .ok()
        .and_then(|vm| vm.service_proxy.as_ref().ok())
        .and_then(Option::as_ref)
        .and_then(|sp| sp.ignore_findings.as_ref());
    if let Some(v) = from_metadata {
        let (r, p) = silence::parse_rules(v, silence::RuleSource::Metadata);
        rules.extend(r);
        problems.extend(
            p.into_iter()
                .map(|p| format!("gce-service-proxy metadata agent.{p}")),
        );
    }
    (rules, problems)
}

/// The verify-side interception checks over the snapshot's iptables view.
fn interception_group(snap: &Snapshot, memo: &mut interception::Memo) -> GroupOutcome {
    let Some(view) = &snap.iptables else {
        return GroupOutcome {
            not_checked: Some("interception is off".into()),
            ..GroupOutcome::default()
        };
    };
    let Some(summary) = &snap.listener_summary else {
        return GroupOutcome {
            not_checked: Some("Envoy's listeners are unknown (admin not answering)".into()),
            ..GroupOutcome::default()
        };
    };
    let input = interception::InterceptionInput {
        v4: view.v4.as_deref(),
        v6: view.v6.as_ref().map(Result::as_deref),
        vips: &summary.vips,
        serving_ports: &snap.resolved.serving_ports,
        envoy_uid: snap.resolved.envoy_uid,
        has_interception_listener: summary.interception.is_some(),
        proxy_port: Some(snap.resolved.proxy_port),
    };
    let findings = match (&view.v4, &view.v6) {
        (Ok(v4), None) => memo.check(&input, v4, None),
        (Ok(v4), Some(Ok(v6))) => memo.check(&input, v4, Some(v6)),
        _ => interception::check(&input),
    };
    GroupOutcome {
        findings,
        not_checked: None,
        note: format!(
            "{} VIP{}, {} serving port{}, proxy port {}",
            summary.vips.len(),
            if summary.vips.len() == 1 { "" } else { "s" },
            snap.resolved.serving_ports.len(),
            if snap.resolved.serving_ports.len() == 1 {
                ""
            } else {
                "s"
            },
            snap.resolved.proxy_port
        ),
    }
}

pub use crate::finding::CheckGroup;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum GroupStatus {
    Pass,
    Warn,
    Fail,
    /// The group's inputs were unavailable; the reason says which.
    NotChecked(String),
}

/// The outcome of one group: its status and a short note (what was seen, or why not checked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupReport {
    pub group: CheckGroup,
    #[serde(flatten)]
    pub status: GroupStatus,
    pub note: String,
}

/// What a group's checks return before the status is derived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupOutcome {
    pub findings: Vec<Finding>,
    /// Set when the group could not judge (some or all of) its checks.
    pub not_checked: Option<String>,
    /// What was seen, for the one-line summary (e.g. "Envoy 1.40.0 LIVE").
    pub note: String,
}

/// Findings and group lines of one diagnosis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnosis {
    /// The findings that count (health, `findings`, exit status, alerts).
    pub findings: Vec<Finding>,
    pub groups: Vec<GroupReport>,
    /// Findings set aside by `ignore-findings` rules in force.
    pub ignored: Vec<silence::Ignored>,
    /// Entries of the metadata's `ignore-findings` that could not be used.
    pub ignore_problems: Vec<String>,
    /// The rules in force and the time they were judged at, kept for the groups added after
    /// `run` (the project checks), so every finding passes through the same silencing.
    pub silence: (Vec<silence::IgnoreRule>, Option<std::time::SystemTime>),
}

impl Diagnosis {
    /// Builds the diagnosis from each group's outcome; findings are sorted errors first and
    /// each ID appears once per group outcome as given.
    pub fn from_outcomes(outcomes: Vec<(CheckGroup, GroupOutcome)>) -> Diagnosis {
        let mut findings = Vec::new();
        let mut groups = Vec::new();
        for (group, outcome) in outcomes {
            let worst = outcome.findings.iter().map(|f| f.severity).min();
            let status = match (worst, &outcome.not_checked) {
                (Some(Severity::Error), _) => GroupStatus::Fail,
                (Some(Severity::Warning), _) => GroupStatus::Warn,
                (_, Some(reason)) => GroupStatus::NotChecked(reason.clone()),
                _ => GroupStatus::Pass,
            };
            groups.push(GroupReport {
                group,
                status,
                note: outcome.note,
            });
            findings.extend(outcome.findings);
        }
        sort_findings(&mut findings);
        Diagnosis {
            findings,
            groups,
            ignored: Vec::new(),
            ignore_problems: Vec::new(),
            silence: (Vec::new(), None),
        }
    }

    pub fn health(&self) -> Health {
        Health::of(&self.findings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::FindingId;

    /// Diagnosis judges the snapshot and the time it is handed: no file system, process, network,
    /// environment or clock of its own. Checked on the source (outside test blocks) so a new
    /// read cannot slip in unnoticed.
    #[test]
    fn diagnose_does_no_io() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/diagnose");
        let banned = [
            "std::fs",
            "fs::",
            "std::process",
            "std::env",
            "std::net::Tcp",
            "tokio",
            ".exists()",
            "read_to_string",
            "Instant::now",
            "SystemTime::now",
            "\"/proc",
        ];
        let mut checked = 0;
        let mut dirs = vec![dir.clone()];
        while let Some(d) = dirs.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let name = path.strip_prefix(&dir).unwrap().display().to_string();
                if !name.ends_with(".rs")
                    || name.ends_with("testutil.rs")
                    || name.ends_with("tests.rs")
                {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
                for b in banned {
                    assert!(
                        !code.contains(b),
                        "src/diagnose/{name} uses {b}: read it in observe"
                    );
                }
                checked += 1;
            }
        }
        assert!(
            checked >= 10,
            "only {checked} files read from {}",
            dir.display()
        );
    }

    #[test]
    fn every_finding_has_a_group_and_status_follows_severity() {
        for id in FindingId::ALL {
            let _ = CheckGroup::of(*id);
        }
        let d = Diagnosis::from_outcomes(vec![
            (
                CheckGroup::Proxy,
                GroupOutcome {
                    note: "Envoy 1.40.0 LIVE".into(),
                    ..Default::default()
                },
            ),
            (
                CheckGroup::Endpoints,
                GroupOutcome {
                    findings: vec![Finding::new(FindingId::EndpointsUnhealthy, "c: 1 of 2")],
                    ..Default::default()
                },
            ),
            (
                CheckGroup::Interception,
                GroupOutcome {
                    not_checked: Some("iptables-save is missing".into()),
                    ..Default::default()
                },
            ),
            (
                CheckGroup::ControlPlane,
                GroupOutcome {
                    findings: vec![Finding::new(FindingId::ControlPlaneDisconnected, "")],
                    not_checked: Some("x".into()),
                    ..Default::default()
                },
            ),
        ]);
        assert_eq!(d.groups[0].status, GroupStatus::Pass);
        assert_eq!(d.groups[1].status, GroupStatus::Warn);
        assert_eq!(
            d.groups[2].status,
            GroupStatus::NotChecked("iptables-save is missing".into())
        );
        assert_eq!(d.groups[3].status, GroupStatus::Fail);
        assert_eq!(d.findings[0].id, FindingId::ControlPlaneDisconnected);
        assert_eq!(d.health(), Health::Failing);
    }

    mod driver {
        use super::super::*;
        use crate::diagnose::log_classifier::{LogEvent, StreamClosed};
        use crate::diagnose::testutil::{self, snapshot};
        use crate::finding::FindingId;
        use crate::observe::envoy_admin::ServerState;

        fn closed(code: u32, message: &str) -> LogEvent {
            LogEvent::StreamClosed(StreamClosed {
                method: Some("StreamAggregatedResources".into()),
                target: Some("trafficdirector.googleapis.com:443".into()),
                code,
                message: message.into(),
                since_secs: None,
                previous: None,
            })
        }

        const NOT_FOUND: &str = "Cloud Service Mesh configuration was not found for network \"default\" in project \"123456789012\".";

        fn ids(d: &Diagnosis) -> Vec<FindingId> {
            d.findings.iter().map(|f| f.id).collect()
        }

        fn base() -> Instant {
            Instant::now() + Duration::from_secs(24 * 3600)
        }

        /// Envoy LIVE with no listener, never configured, its LDS initial fetch timed out.
        fn never_configured() -> Snapshot {
            let mut s = snapshot();
            s.listeners = Ok(Vec::new().into());
            let st = s.stats.as_mut().unwrap();
            st.lds_update_success = Some(0);
            st.init_fetch_timeouts
                .insert("listener_manager.lds.init_fetch_timeout".into(), 1);
            s
        }

        /// `s` diagnosed with no history, as `doctor`'s one snapshot is.
        fn once(s: &Snapshot, logs: &mut LogFindings, now: Instant) -> Diagnosis {
            run(s, &mut History::new(), logs, &testutil::settings(), now)
        }

        fn note_of(d: &Diagnosis, group: CheckGroup) -> &str {
            &d.groups.iter().find(|g| g.group == group).unwrap().note
        }

        #[test]
        fn a_refusal_explains_no_listener_and_a_disconnection() {
            let now = base();
            let mut s = never_configured();
            let mut logs = LogFindings::new();
            logs.record(&closed(5, NOT_FOUND), now - Duration::from_secs(5));
            // Sampled in the moment the stream is open: connected_state 1.
            let d = once(&s, &mut logs, now);
            assert_eq!(ids(&d), [FindingId::MeshConfigNotFound]);
            // And while it is closed: 0 for the whole uptime, explained by the refusal too.
            s.stats.as_mut().unwrap().control_plane_connected_state = Some(0);
            let d = once(&s, &mut logs, now);
            assert_eq!(ids(&d), [FindingId::MeshConfigNotFound]);
            let note = note_of(&d, CheckGroup::ControlPlane);
            assert!(
                note.contains("explained by MESH_CONFIG_NOT_FOUND"),
                "{note}"
            );
        }

        #[test]
        fn streams_closing_with_unavailable_explain_no_listener_read_while_one_opens() {
            // doctor's single snapshot lands in the tens of milliseconds a retried stream is
            // open (connected_state 1); the log says the streams keep closing with 14.
            let now = base();
            let s = never_configured();
            let mut logs = LogFindings::new();
            for ago in [40, 25, 10] {
                logs.record(
                    &closed(14, "upstream connect error"),
                    now - Duration::from_secs(ago),
                );
            }
            let d = once(&s, &mut logs, now);
            assert_eq!(ids(&d), [FindingId::ControlPlaneDisconnected], "{d:#?}");
            let note = note_of(&d, CheckGroup::Configuration);
            assert!(
                note.contains("no listener: explained by CONTROL_PLANE_DISCONNECTED"),
                "{note}"
            );
        }

        #[test]
        fn connected_and_quiet_for_long_enough_ends_a_refusal() {
            let now = base();
            let s = snapshot();
            assert_eq!(quiet_period(&s), Duration::from_secs(60));
            let mut logs = LogFindings::new();
            logs.record(&closed(7, "denied"), now - Duration::from_secs(30));
            let d = once(&s, &mut logs, now);
            assert_eq!(ids(&d), [FindingId::ControlPlanePermissionDenied]);
            let d = once(&s, &mut logs, now + Duration::from_secs(31));
            assert!(d.findings.is_empty(), "{d:?}");
        }

        #[test]
        fn a_listener_accepted_after_the_lines_ends_them() {
            let now = base();
            let mut s = snapshot();
            let updated = s.taken_at - Duration::from_secs(2);
            std::sync::Arc::make_mut(s.listeners.as_mut().unwrap())[0]
                .active
                .as_mut()
                .unwrap()
                .last_updated = Some(humantime::format_rfc3339_millis(updated).to_string());
            // Millisecond precision, as Envoy writes it.
            let at = newest_listener_update(&s, now).unwrap();
            let off =
                (now - Duration::from_secs(2)).max(at) - (now - Duration::from_secs(2)).min(at);
            assert!(off < Duration::from_millis(2), "{off:?}");
            let mut logs = LogFindings::new();
            logs.record(&closed(7, "denied"), now - Duration::from_secs(5));
            logs.record(
                &LogEvent::AccessLogDenied {
                    path: "/var/log/envoy/access.log".into(),
                    reason: "Permission denied".into(),
                },
                now - Duration::from_secs(5),
            );
            // A line newer than the update survives.
            logs.record(&closed(16, "bad token"), now - Duration::from_secs(1));
            let d = once(&s, &mut logs, now);
            assert_eq!(ids(&d), [FindingId::ControlPlaneUnauthenticated]);
        }

        #[test]
        fn draining_is_not_dated_from_the_start() {
            let now = base();
            let mut s = snapshot();
            s.server_info.as_mut().unwrap().state = ServerState::Draining;
            let mut h = History::new();
            let mut logs = LogFindings::new();
            let d = run(&s, &mut h, &mut logs, &testutil::settings(), now);
            assert!(d.findings.is_empty(), "{d:?}");
            let d = run(
                &s,
                &mut h,
                &mut logs,
                &testutil::settings(),
                now + Duration::from_secs(61),
            );
            assert_eq!(ids(&d), [FindingId::EnvoyNotLive]);
            // Initializing, by contrast, has been so since Envoy started (10 minutes).
            s.server_info.as_mut().unwrap().state = ServerState::Initializing;
            let d = once(&s, &mut logs, now);
            assert_eq!(ids(&d), [FindingId::EnvoyNotLive]);
            assert!(
                d.findings[0].detail.contains("INITIALIZING for 10m"),
                "{d:?}"
            );
        }

        #[test]
        fn every_group_reports_and_server_first_is_configuration() {
            let d = run(
                &snapshot(),
                &mut History::new(),
                &mut LogFindings::new(),
                &testutil::settings(),
                base(),
            );
            let groups: Vec<CheckGroup> = d.groups.iter().map(|g| g.group).collect();
            // The project group joins later, from its own task's answers (`project::apply`).
            assert_eq!(groups, CheckGroup::ALL[..6]);
            assert_eq!(
                CheckGroup::of(FindingId::ServerFirstProtocol),
                CheckGroup::Configuration
            );
        }
    }
}
