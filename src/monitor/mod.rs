//! The daemon's decisions, kept from its I/O (issue 14): a [`Monitor`] is given snapshots,
//! log events, publish events and the time, and answers with [`Actions`] — the log lines, the
//! guest attributes, the metric updates and the diagnosis. It has no tokio, no file system and
//! no clock of its own, so its unit tests script time. `agent` (the daemon) and `doctor` drive
//! it; `agent` carries its answers out.

pub mod failure;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::diagnose::log_findings::LogFindings;
use crate::diagnose::{self, CheckSettings, Diagnosis, History};
use crate::finding::{Finding, FindingId, Health, findings_attribute};
use crate::intercept::ReconcileReport;
use crate::observe::log_follower::EntryEvent;
use crate::observe::{GuestAttributesState, Snapshot};
use crate::publish::guest_attributes::PublishEvent;
use crate::publish::metrics::CycleView;

pub use failure::{FailureSource, Failures, Transition};

/// How often the control-plane reachability check runs while nothing is wrong (it costs a DNS
/// query and a TCP handshake to Google from every VM of the fleet).
pub const CONTROL_PLANE_CHECK_EVERY: Duration = Duration::from_secs(300);

/// One log line the monitor asks for; each variant's wording is defined once, in [`Event::emit`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Failure(Transition),
    FindingRaised(Finding),
    FindingCleared(FindingId),
    EnvoyVersion(String),
    /// Inputs kept away from iptables (listener prefixes, metadata ranges), a new set of them.
    IgnoredInputs(Vec<String>),
    InterceptionUpdated {
        restores: u64,
        vips: usize,
    },
    GuestAttributesDisabled,
    GuestAttributesReenabled,
    LogDirAvailable(PathBuf),
}

impl Event {
    pub fn emit(&self) {
        match self {
            Event::Failure(t) => t.emit(),
            Event::FindingRaised(f) => {
                let (id, detail, remediation, doc) = (
                    f.id.as_str(),
                    f.detail.as_str(),
                    f.remediation.as_str(),
                    f.doc.as_str(),
                );
                let msg = format!("{id}: {}", f.summary);
                match f.severity.log_severity() {
                    "ERROR" => tracing::error!(finding = id, detail, remediation, doc, "{msg}"),
                    "WARNING" => tracing::warn!(finding = id, detail, remediation, doc, "{msg}"),
                    _ => tracing::info!(finding = id, detail, remediation, doc, "{msg}"),
                }
            }
            Event::FindingCleared(id) => {
                tracing::info!(finding = id.as_str(), "{} cleared", id.as_str());
            }
            Event::EnvoyVersion(v) => tracing::info!(version = v, "Envoy Version: {v}"),
            Event::IgnoredInputs(now) => tracing::warn!(
                source = "interception",
                ignored = now.len() as u64,
                "ignored for interception, never passed to iptables: {}",
                now.join("; ")
            ),
            Event::InterceptionUpdated { restores, vips } => {
                tracing::info!(restores, vips, "interception updated (iptables-restore)");
            }
            Event::GuestAttributesDisabled => tracing::warn!(
                finding = FindingId::GuestAttributesDisabled.as_str(),
                "guest attributes are disabled on this VM (403); retrying every 5 minutes"
            ),
            Event::GuestAttributesReenabled => tracing::info!("guest attributes are enabled again"),
            Event::LogDirAvailable(dir) => {
                tracing::info!(dir = %dir.display(), "Envoy log directory available");
            }
        }
    }
}

/// What a diagnosis publishes.
#[derive(Debug, Clone)]
pub struct Publication {
    pub diagnosis: Diagnosis,
    pub health: Health,
    /// The `findings` attribute.
    pub findings: String,
    pub proxy_state: String,
    pub proxy_version: Option<String>,
    /// Set when a cycle ended (not on a log-driven re-diagnosis): the heartbeat attribute.
    pub heartbeat: Option<String>,
    /// Set when a cycle ended: the metrics' view of it.
    pub cycle: Option<CycleView>,
}

/// What the monitor asks to be done, in this order: log lines, counts, attributes.
#[derive(Debug, Default)]
pub struct Actions {
    pub events: Vec<Event>,
    /// Failed attempts, each counted in the metrics.
    pub failed: Vec<FailureSource>,
    /// `agent-last-failure`'s new value.
    pub last_failure: Option<String>,
    pub interception_restores: u64,
    pub publication: Option<Publication>,
    /// Log entries arrived: re-diagnose soon (after a debounce).
    pub rediagnose_soon: bool,
}

/// What an observation cycle did besides observing.
#[derive(Debug, Default)]
pub struct CycleOutcome {
    /// The reconciliation, when interception is enforced: its report or why no plan was made.
    pub reconcile: Option<Result<ReconcileReport, String>>,
    /// Plan inputs left out (`field value: reason`).
    pub ignored: Vec<String>,
}

/// The daemon's memory between cycles.
#[derive(Debug)]
pub struct Monitor {
    checks: CheckSettings,
    history: History,
    logs: LogFindings,
    active: BTreeMap<FindingId, Finding>,
    failures: Failures,
    envoy_version: Option<String>,
    ignored_inputs: Vec<String>,
    last_cp_check: Option<Instant>,
    last_snapshot: Option<Snapshot>,
}

impl Monitor {
    pub fn new(checks: CheckSettings) -> Monitor {
        Monitor {
            checks,
            history: History::new(),
            logs: LogFindings::new(),
            active: BTreeMap::new(),
            failures: Failures::default(),
            envoy_version: None,
            ignored_inputs: Vec::new(),
            last_cp_check: None,
            last_snapshot: None,
        }
    }

    /// New settings (SIGHUP).
    pub fn set_checks(&mut self, checks: CheckSettings) {
        self.checks = checks;
    }

    /// Whether the cycle starting `now` checks the control plane's reachability: every cycle
    /// while Envoy is disconnected or the control plane unreachable, else every
    /// [`CONTROL_PLANE_CHECK_EVERY`].
    pub fn control_plane_due(&mut self, now: Instant) -> bool {
        let disconnected = self.history.disconnected_since.is_some()
            || self
                .active
                .contains_key(&FindingId::ControlPlaneDisconnected)
            || self
                .active
                .contains_key(&FindingId::ControlPlaneUnreachable);
        let due = disconnected
            || self
                .last_cp_check
                .is_none_or(|t| now.saturating_duration_since(t) >= CONTROL_PLANE_CHECK_EVERY);
        if due {
            self.last_cp_check = Some(now);
        }
        due
    }

    /// The outcome of one of the agent's own jobs.
    pub fn report(
        &mut self,
        source: FailureSource,
        outcome: Result<(), String>,
        wall: SystemTime,
    ) -> Actions {
        let mut a = Actions::default();
        self.report_into(&mut a, source, outcome, wall);
        a
    }

    /// A failure is counted every time, logged and written to `agent-last-failure` once while
    /// it persists (with the time it was first met); a recovery is logged once.
    fn report_into(
        &mut self,
        a: &mut Actions,
        source: FailureSource,
        outcome: Result<(), String>,
        wall: SystemTime,
    ) {
        if outcome.is_err() {
            a.failed.push(source);
        }
        let Some(t) = self.failures.report(source, outcome) else {
            return;
        };
        if let Transition::Raised { source, message } = &t
            && source.sets_last_failure()
        {
            a.last_failure = Some(format!(
                "{} {message}",
                humantime::format_rfc3339_seconds(wall)
            ));
        }
        a.events.push(Event::Failure(t));
    }

    /// One event of the log intake.
    pub fn log_event(&mut self, ev: EntryEvent, now: Instant, wall: SystemTime) -> Actions {
        let mut a = Actions::default();
        match ev {
            EntryEvent::Tail(tail) => {
                self.logs.record_tail(&tail, now, wall);
                a.rediagnose_soon = !tail.entries.is_empty();
            }
            EntryEvent::Entry(entry) => {
                self.logs.record_followed(&entry, now, wall);
                a.rediagnose_soon = true;
            }
            EntryEvent::CaughtUp => {}
            EntryEvent::DirUnavailable { dir, reason } => {
                let why = format!(
                    "Envoy log directory {} unavailable: {reason}; waiting for it",
                    dir.display()
                );
                self.report_into(&mut a, FailureSource::EnvoyLog, Err(why), wall);
            }
            EntryEvent::DirAvailable { dir } => {
                a.events.push(Event::LogDirAvailable(dir));
                self.report_into(&mut a, FailureSource::EnvoyLog, Ok(()), wall);
            }
            EntryEvent::NotFollowed(n) => {
                let outcome = if n.is_empty() {
                    Ok(())
                } else {
                    Err(n.describe())
                };
                self.report_into(&mut a, FailureSource::EnvoyLogFile, outcome, wall);
            }
        }
        a
    }

    /// Diagnoses `snap` with what the logs said (`doctor` and every publication).
    pub fn diagnose(&mut self, snap: &Snapshot, now: Instant) -> Diagnosis {
        diagnose::run(snap, &mut self.history, &mut self.logs, &self.checks, now)
    }

    /// A cycle ended with `snapshot`. `amend` adds what is not the monitor's (the project
    /// checks) to the diagnosis before it is published.
    pub fn cycle(
        &mut self,
        mut snapshot: Snapshot,
        outcome: CycleOutcome,
        guest_attributes_disabled: bool,
        (now, wall): (Instant, SystemTime),
        amend: impl FnOnce(&Snapshot, &mut Diagnosis),
    ) -> Actions {
        let mut a = Actions::default();
        self.report_into(&mut a, FailureSource::Cycle, Ok(()), wall);
        snapshot.guest_attributes = if guest_attributes_disabled {
            GuestAttributesState::Disabled
        } else {
            GuestAttributesState::Unknown
        };
        self.note_agent_failures(&mut a, &snapshot, wall);
        self.note_ignored(&mut a, &snapshot, outcome.ignored);
        match outcome.reconcile {
            Some(Ok(report)) => {
                if report.changed() {
                    a.interception_restores = u64::from(report.restores);
                    a.events.push(Event::InterceptionUpdated {
                        restores: u64::from(report.restores),
                        vips: snapshot
                            .listener_summary
                            .as_ref()
                            .map_or(0, |s| s.vips.len()),
                    });
                }
                // A plan was made: a plan failure of an earlier cycle is over.
                self.report_into(&mut a, FailureSource::Interception, Ok(()), wall);
                let errors: Vec<String> = report.errors().iter().map(ToString::to_string).collect();
                let outcome = if errors.is_empty() {
                    Ok(())
                } else {
                    Err(errors.join("; "))
                };
                self.report_into(&mut a, FailureSource::Iptables, outcome, wall);
            }
            Some(Err(why)) => {
                self.report_into(&mut a, FailureSource::Interception, Err(why), wall);
            }
            None => {}
        }
        if let Some(v) = snapshot.proxy_version()
            && self.envoy_version.as_deref() != Some(v)
        {
            a.events.push(Event::EnvoyVersion(v.to_owned()));
            self.envoy_version = Some(v.to_owned());
        }
        let mut diagnosis = self.diagnose(&snapshot, now);
        amend(&snapshot, &mut diagnosis);
        self.publish(&mut a, &snapshot, diagnosis, Some(wall));
        self.last_snapshot = Some(snapshot);
        a
    }

    /// Log lines arrived (or guest attributes changed): judges them against the last snapshot
    /// now, not at the next poll. No heartbeat: no cycle ended. Nothing before a first cycle.
    pub fn rediagnose(
        &mut self,
        now: Instant,
        amend: impl FnOnce(&Snapshot, &mut Diagnosis),
    ) -> Actions {
        let mut a = Actions::default();
        let Some(snap) = self.last_snapshot.take() else {
            return a;
        };
        let mut diagnosis = self.diagnose(&snap, now);
        amend(&snap, &mut diagnosis);
        self.publish(&mut a, &snap, diagnosis, None);
        self.last_snapshot = Some(snap);
        a
    }

    /// What the guest-attribute writer reports. `disabled`: the writer holds them as disabled.
    pub fn publish_event(
        &mut self,
        ev: PublishEvent,
        disabled: bool,
        (now, wall): (Instant, SystemTime),
        amend: impl FnOnce(&Snapshot, &mut Diagnosis),
    ) -> Actions {
        match ev {
            PublishEvent::Written { .. } => {
                self.report(FailureSource::GuestAttributes, Ok(()), wall)
            }
            PublishEvent::Disabled | PublishEvent::Reenabled => {
                let event = if matches!(ev, PublishEvent::Disabled) {
                    Event::GuestAttributesDisabled
                } else {
                    Event::GuestAttributesReenabled
                };
                // Surfaced (or withdrawn) as a finding at once.
                let mut a = self.rediagnose(now, amend);
                a.events.insert(0, event);
                a
            }
            PublishEvent::Failed { key, error } if !disabled => {
                let ns = crate::publish::guest_attributes::NAMESPACE;
                let msg = format!("cannot write guest attribute {ns}/{key}: {error}");
                self.report(FailureSource::GuestAttributes, Err(msg), wall)
            }
            PublishEvent::Failed { .. } => Actions::default(),
        }
    }

    /// Failures of the agent's own work seen in a snapshot.
    fn note_agent_failures(&mut self, a: &mut Actions, snap: &Snapshot, wall: SystemTime) {
        let metadata = match &snap.vm {
            Err(e) => Err(format!("cannot read the VM's metadata: {e}")),
            Ok(_) => Ok(()),
        };
        self.report_into(a, FailureSource::Metadata, metadata, wall);
        match &snap.server_info {
            // ENVOY_NOT_RUNNING / ENVOY_ADMIN_UNREACHABLE say it, and nothing else was read.
            Err(_) => a.failed.push(FailureSource::EnvoyAdmin),
            Ok(_) => {
                // Envoy answers, but an answer we need is unusable (malformed, too large, an
                // error status, cut short): the checks built on it cannot run; say so.
                let errors: Vec<String> = [
                    snap.listeners.as_ref().err(),
                    snap.clusters.as_ref().err(),
                    snap.stats.as_ref().err(),
                ]
                .into_iter()
                .flatten()
                .map(ToString::to_string)
                .collect();
                let outcome = if errors.is_empty() {
                    Ok(())
                } else {
                    Err(errors.join("; "))
                };
                self.report_into(a, FailureSource::EnvoyAdmin, outcome, wall);
            }
        }
        if let Some(view) = &snap.iptables {
            let outcome = match &view.v4 {
                Err(e) => Err(format!("iptables-save failed: {e}")),
                Ok(_) => Ok(()),
            };
            self.report_into(a, FailureSource::IptablesSave, outcome, wall);
        }
        if let Some(r) = &snap.control_plane {
            use crate::observe::control_plane::Reachability;
            let why = match r {
                Reachability::DnsFailed { host, error } => {
                    Some(format!("DNS lookup of {host} failed: {error}"))
                }
                Reachability::TcpFailed { addrs, error } => Some(format!(
                    "TCP connect to {} failed: {error}",
                    addrs.join(", ")
                )),
                Reachability::Reachable { .. } => None,
            };
            let outcome = match why {
                Some(why) if !r.is_reachable() => Err(format!(
                    "Cannot reach the Cloud Service Mesh API server {}: {why}",
                    self.checks.control_plane
                )),
                _ => Ok(()),
            };
            self.report_into(a, FailureSource::ControlPlane, outcome, wall);
        }
    }

    /// Inputs that are not valid networks, ports or ranges never reach iptables
    /// (docs/contract.md#7-interception); each new set of them is reported once.
    fn note_ignored(&mut self, a: &mut Actions, snap: &Snapshot, plan_ignored: Vec<String>) {
        let Some(summary) = &snap.listener_summary else {
            // Listeners unread this time: what was reported still stands.
            return;
        };
        let mut now: Vec<String> = summary
            .rejected
            .iter()
            .map(|r| format!("listener {} prefix {:?}: {}", r.listener, r.raw, r.reason))
            .chain(plan_ignored)
            .collect();
        now.sort();
        now.dedup();
        if now == self.ignored_inputs {
            return;
        }
        if !now.is_empty() {
            a.events.push(Event::IgnoredInputs(now.clone()));
        }
        self.ignored_inputs = now;
    }

    /// The transitions of the findings (raised, cleared) and what to publish; `wall` is set
    /// when a cycle ended.
    fn publish(
        &mut self,
        a: &mut Actions,
        snap: &Snapshot,
        diagnosis: Diagnosis,
        wall: Option<SystemTime>,
    ) {
        for f in &diagnosis.findings {
            if !self.active.contains_key(&f.id) {
                a.events.push(Event::FindingRaised(f.clone()));
            }
        }
        let now_ignored: Vec<FindingId> = diagnosis.ignored.iter().map(|i| i.finding.id).collect();
        for id in self.active.keys() {
            // One set aside now is logged as ignored (by the publisher), not as cleared.
            if !diagnosis.findings.iter().any(|f| f.id == *id) && !now_ignored.contains(id) {
                a.events.push(Event::FindingCleared(*id));
            }
        }
        self.active = diagnosis
            .findings
            .iter()
            .map(|f| (f.id, f.clone()))
            .collect();
        let proxy_state = snap.proxy_state();
        let cycle = wall.map(|wall| CycleView {
            envoy_state: proxy_state.clone(),
            listeners: snap.listeners.as_ref().map_or(0, |l| l.len() as u64),
            vips: snap
                .listener_summary
                .as_ref()
                .map_or(0, |s| s.vips.len() as u64),
            heartbeat_unix: wall
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            ignored: now_ignored,
            ..CycleView::default()
        });
        a.publication = Some(Publication {
            health: diagnosis.health(),
            findings: findings_attribute(&diagnosis.findings),
            proxy_state,
            proxy_version: snap.proxy_version().map(str::to_owned),
            heartbeat: wall.map(|w| humantime::format_rfc3339_seconds(w).to_string()),
            cycle,
            diagnosis,
        });
    }
}

#[cfg(test)]
mod tests;
