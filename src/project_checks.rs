//! When and how the project-side checks (docs/contract.md#10-project-side-checks) run, for the daemon and for `doctor`.
//!
//! The calls go to Google, cost quota and may hang, so they never run in the poll cycle: the
//! daemon starts them in their own task and takes the answers at a later cycle. When to run is
//! decided by [`Scheduler`], pure with time passed in (like the guest-attribute scheduler):
//! - at start: IAM and CSDS (2 calls);
//! - when the control plane refuses Envoy or a log line or stat points at the project (a new
//!   trigger finding), at most every [`TRIGGER_SPACING`]: everything, Service Usage and (with
//!   MESH_CONFIG_NOT_FOUND) the forwarding rules included;
//! - otherwise every [`PERIOD`] plus up to [`JITTER`]: IAM and CSDS. Runs are always more than
//!   30 minutes apart, so any hour of steady state holds at most two runs: 4 calls.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{DEFAULT_METADATA_HOST, Settings};
use crate::diagnose::Diagnosis;
use crate::diagnose::project::{ProjectInput, ProjectReport, apply};
use crate::finding::FindingId;
use crate::observe::Snapshot;
use crate::observe::metadata::MetadataClient;
use crate::observe::project::{CallCounter, NodeView, Plan, ProjectApis, ProjectObservation};
use crate::observe::token::MetadataTokens;

pub const PERIOD: Duration = Duration::from_secs(30 * 60);
pub const JITTER: Duration = Duration::from_secs(6 * 60);
/// Triggered runs are at least this far apart, however often Envoy is refused.
pub const TRIGGER_SPACING: Duration = Duration::from_secs(5 * 60);

/// Findings that point at the project: a run is due when one is newly raised.
pub const TRIGGERS: [FindingId; 6] = [
    FindingId::ControlPlanePermissionDenied,
    FindingId::ControlPlaneUnauthenticated,
    FindingId::MeshConfigNotFound,
    FindingId::MeshEntityNotFound,
    FindingId::ConfigRejected,
    FindingId::NoMeshConfig,
];

/// Decides when the checks run and what they ask.
#[derive(Debug, Default)]
pub struct Scheduler {
    last_run: Option<Instant>,
    next_periodic: Option<Instant>,
    seen: BTreeSet<FindingId>,
    pending_trigger: bool,
}

impl Scheduler {
    /// `triggers`: the trigger findings active now; `jitter` in `[0, 1)`; `busy`: a run is in
    /// flight (nothing starts, a new trigger waits).
    pub fn decide(
        &mut self,
        now: Instant,
        triggers: &BTreeSet<FindingId>,
        jitter: f64,
        busy: bool,
    ) -> Option<Plan> {
        if triggers.difference(&self.seen).next().is_some() {
            self.pending_trigger = true;
        }
        self.seen.clone_from(triggers);
        if busy {
            return None;
        }
        let mesh = triggers.contains(&FindingId::MeshConfigNotFound);
        let plan = match self.last_run {
            None => Plan {
                iam: true,
                csds: true,
                service: self.pending_trigger,
                forwarding_rules: mesh,
            },
            Some(last)
                if self.pending_trigger
                    && now.saturating_duration_since(last) >= TRIGGER_SPACING =>
            {
                Plan {
                    forwarding_rules: mesh,
                    ..Plan::ALL
                }
            }
            Some(_) if self.next_periodic.is_some_and(|t| now >= t) => Plan {
                iam: true,
                csds: true,
                ..Plan::default()
            },
            Some(_) => return None,
        };
        self.pending_trigger = false;
        self.last_run = Some(now);
        // Strictly more than PERIOD: two runs never fall in one hour with a third.
        self.next_periodic =
            Some(now + PERIOD + Duration::from_secs(1) + JITTER.mul_f64(jitter.clamp(0.0, 1.0)));
        Some(plan)
    }
}

/// Why the checks cannot run at all with these settings, if so.
pub fn off_reason(settings: &Settings) -> Option<String> {
    if !settings.cloud_checks {
        return Some("--cloud-checks off".into());
    }
    // A token from anything but Compute Engine's metadata server is no Google token: it is
    // never sent to Google's own endpoints.
    if settings.metadata_host != DEFAULT_METADATA_HOST && settings.api_endpoints.any_google() {
        return Some(format!(
            "the metadata server is not Compute Engine's (GCE_METADATA_HOST={}), so its token is not sent to Google's APIs",
            settings.metadata_host
        ));
    }
    None
}

/// The node as the checks see it, from one snapshot; `Err` says why it is unknown.
pub fn node_view(snap: &Snapshot) -> Result<NodeView, String> {
    let vm = snap
        .vm
        .as_ref()
        .map_err(|e| format!("the VM's metadata is unreadable ({e})"))?;
    let node = snap.server_info.as_ref().ok().map(|i| &i.node);
    let network = node
        .and_then(|n| n.metadata_str(crate::contract::node_metadata::NETWORK_NAME))
        .map(str::to_owned)
        .or_else(|| vm.network.as_ref().ok().map(|n| n.name.clone()));
    Ok(NodeView {
        project_id: vm.project_id.clone(),
        project_number: vm.project_number,
        network,
        node_id: node.map(|n| n.id.clone()).filter(|id| !id.is_empty()),
        envoy_lds_version: snap
            .stats
            .as_ref()
            .ok()
            .and_then(|s| s.lds_version_text.clone()),
    })
}

fn triggers(diag: &Diagnosis) -> BTreeSet<FindingId> {
    diag.findings
        .iter()
        .map(|f| f.id)
        .filter(|id| TRIGGERS.contains(id))
        .collect()
}

fn apis(settings: &Settings, counter: Arc<CallCounter>) -> ProjectApis {
    let tokens = Arc::new(MetadataTokens::new(MetadataClient::new(
        &settings.metadata_host,
        Duration::from_secs(5),
    )));
    let mut apis = ProjectApis::new(settings.api_endpoints.clone(), tokens);
    apis.counter = counter;
    apis
}

/// The daemon's side: the scheduler, the task, the last answers.
pub struct ProjectChecks {
    off: Option<String>,
    apis: Arc<ProjectApis>,
    scheduler: Scheduler,
    slot: Arc<Mutex<Option<ProjectObservation>>>,
    running: Option<tokio::task::JoinHandle<()>>,
    last: Option<ProjectObservation>,
    logged: BTreeMap<&'static str, String>,
}

impl ProjectChecks {
    pub fn new(settings: &Settings, counter: Arc<CallCounter>) -> Self {
        ProjectChecks {
            off: off_reason(settings),
            apis: Arc::new(apis(settings, counter)),
            scheduler: Scheduler::default(),
            slot: Arc::default(),
            running: None,
            last: None,
            logged: BTreeMap::new(),
        }
    }

    /// The VM's token source, shared with Cloud Logging.
    pub fn tokens(&self) -> Arc<MetadataTokens> {
        self.apis.tokens().clone()
    }

    /// After each diagnosis: takes finished answers, maybe starts a run (never waits for one),
    /// and adds the project group to `diag`.
    pub fn after_diagnosis(&mut self, snap: &Snapshot, diag: &mut Diagnosis) {
        if let Some(mut o) = self.slot.lock().ok().and_then(|mut s| s.take()) {
            // What a run did not ask stays as last known.
            if let Some(prev) = self.last.take() {
                if o.service.is_none() {
                    o.service = prev.service;
                }
                if o.forwarding_rules.is_none() {
                    o.forwarding_rules = prev.forwarding_rules;
                }
            }
            self.last = Some(o);
        }
        let busy = self.running.as_ref().is_some_and(|t| !t.is_finished());
        let node = node_view(snap);
        if self.off.is_none()
            && let Ok(node) = &node
            && let Some(plan) =
                self.scheduler
                    .decide(Instant::now(), &triggers(diag), fastrand::f64(), busy)
        {
            let (apis, slot, node) = (self.apis.clone(), self.slot.clone(), node.clone());
            self.running = Some(tokio::spawn(async move {
                let o = apis.gather(node, plan).await;
                if let Ok(mut s) = slot.lock() {
                    *s = Some(o);
                }
            }));
        }
        let reason = match (&self.off, &node) {
            (Some(r), _) => Some(r.clone()),
            (None, Err(r)) if self.last.is_none() => Some(r.clone()),
            _ => None,
        };
        let input = match (&reason, &self.last) {
            (Some(r), _) => ProjectInput::Off(r),
            (None, Some(o)) => ProjectInput::Observed(o),
            (None, None) => ProjectInput::Pending,
        };
        let report = apply(diag, input, SystemTime::now());
        self.log_not_checked(&report, matches!(input, ProjectInput::Observed(_)));
    }

    /// Each check that cannot run is logged once per reason (docs/contract.md#4-1-catalogue); when none can run,
    /// one line says why.
    fn log_not_checked(&mut self, report: &ProjectReport, observed: bool) {
        if !observed {
            let reason = report.checks.first().map(|l| l.detail.clone());
            if let Some(reason) = reason
                && !reason.contains("under way")
                && self.logged.get("all") != Some(&reason)
            {
                tracing::info!("project checks not checked: {reason}");
                self.logged.clear();
                self.logged.insert("all", reason);
            }
            return;
        }
        self.logged.remove("all");
        for line in &report.checks {
            if line.status != "not_checked" {
                continue;
            }
            if self.logged.get(line.check) != Some(&line.detail) {
                tracing::info!(
                    check = line.check,
                    "project check {} not checked: {}",
                    line.check,
                    line.detail
                );
                self.logged.insert(line.check, line.detail.clone());
            }
        }
    }
}

impl Drop for ProjectChecks {
    fn drop(&mut self) {
        if let Some(t) = self.running.take() {
            t.abort();
        }
    }
}

/// `doctor`: one run now (IAM, Service Usage, CSDS, and the forwarding rules with
/// MESH_CONFIG_NOT_FOUND), added to `diag`.
pub async fn once(settings: &Settings, snap: &Snapshot, diag: &mut Diagnosis) -> ProjectReport {
    let now = SystemTime::now();
    if let Some(r) = off_reason(settings) {
        return apply(diag, ProjectInput::Off(&r), now);
    }
    match node_view(snap) {
        Err(r) => apply(diag, ProjectInput::Off(&r), now),
        Ok(node) => {
            let plan = Plan {
                forwarding_rules: diag
                    .findings
                    .iter()
                    .any(|f| f.id == FindingId::MeshConfigNotFound),
                ..Plan::ALL
            };
            let o = apis(settings, Arc::default()).gather(node, plan).await;
            apply(diag, ProjectInput::Observed(&o), SystemTime::now())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A day of steady state, then a refusal: the call budget with time passed in.
    #[test]
    fn steady_state_costs_at_most_four_calls_an_hour() {
        let mut s = Scheduler::default();
        let t0 = Instant::now();
        let none = BTreeSet::new();
        let mut calls: Vec<(Duration, usize)> = Vec::new();
        for step in 0..(24 * 360) {
            let at = Duration::from_secs(step * 10);
            let jitter = (step as f64 * 0.37) % 1.0;
            if let Some(p) = s.decide(t0 + at, &none, jitter, false) {
                calls.push((at, p.calls()));
            }
        }
        assert_eq!(calls.first(), Some(&(Duration::ZERO, 2)));
        for (start, _) in &calls {
            let in_hour: usize = calls
                .iter()
                .filter(|(t, _)| *t >= *start && *t < *start + Duration::from_secs(3600))
                .map(|(_, n)| n)
                .sum();
            assert!(in_hour <= 4, "{in_hour} calls in the hour from {start:?}");
        }
        assert!(calls.len() >= 24 * 60 / 36, "{}", calls.len());
    }

    #[test]
    fn a_refusal_runs_everything_soon_but_not_in_a_loop() {
        let mut s = Scheduler::default();
        let t0 = Instant::now();
        let none = BTreeSet::new();
        assert!(s.decide(t0, &none, 0.0, false).is_some());
        let refused: BTreeSet<FindingId> = [FindingId::MeshConfigNotFound].into();
        // Within the spacing: waits.
        assert_eq!(
            s.decide(t0 + Duration::from_secs(60), &refused, 0.0, false),
            None
        );
        // A run in flight: waits too.
        assert_eq!(s.decide(t0 + TRIGGER_SPACING, &refused, 0.0, true), None);
        let p = s
            .decide(t0 + TRIGGER_SPACING, &refused, 0.0, false)
            .unwrap();
        assert_eq!(p, Plan::ALL);
        // The same refusal persisting is not a new trigger.
        assert_eq!(
            s.decide(t0 + TRIGGER_SPACING * 3, &refused, 0.0, false),
            None
        );
        // Cleared and raised again: a new trigger.
        assert_eq!(s.decide(t0 + TRIGGER_SPACING * 3, &none, 0.0, false), None);
        assert!(
            s.decide(t0 + TRIGGER_SPACING * 4, &refused, 0.0, false)
                .is_some()
        );
    }

    #[test]
    fn a_refusal_at_start_asks_service_usage_and_forwarding_rules() {
        let mut s = Scheduler::default();
        let refused: BTreeSet<FindingId> = [FindingId::MeshConfigNotFound].into();
        assert_eq!(
            s.decide(Instant::now(), &refused, 0.5, false),
            Some(Plan::ALL)
        );
    }
}
