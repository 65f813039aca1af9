//! The daemon (docs/contract.md#5-daemon): observe → diagnose → publish / act, once per poll, and at once when
//! Envoy logs a failure.
//!
//! Everything that can be missing (Envoy, its log directory, the metadata server, iptables) is
//! a finding or an `agent-last-failure`, never a crash. Every outside call has a deadline; the
//! cycle runs as a task so signals and log lines are handled while it waits. Retries are paced
//! by the poll interval (with jitter, so a fleet does not poll in step) or by their own backoff
//! (guest attributes, Cloud Logging).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{
    CloudLoggingMode, CommonArgs, DEFAULT_METADATA_HOST, InterceptionMode, LogFormat, Settings,
};
use crate::diagnose::log_findings::LogFindings;
use crate::diagnose::{self, CheckSettings, Diagnosis, History};
use crate::finding::{Finding, FindingId, findings_attribute};
use crate::intercept::desired::desired_plan;
use crate::intercept::{ReconcileReport, Reconciler};
use crate::monitor::{FailureSource, Failures, Transition};
use crate::observe::log_follower::{
    EntryCounters, EntryEvent, Follower, FollowerConfig, start_intake,
};
use crate::observe::metadata::{MetadataClient, MetadataError};
use crate::observe::{GuestAttributesState, Observer, Snapshot};
use crate::publish::cloud_logging::{self, GcpAuthTokens, SinkHandle, Target};
use crate::publish::guest_attributes::{
    AttributeSink, NAMESPACE, PublishEvent, PublisherHandle, PutError, keys, spawn_writer,
};
use crate::publish::log::{LogOutput, LogRecord};
use crate::publish::metrics::{self, AgentMetrics, CycleView};
use crate::publish::systemd;

/// How often the control-plane reachability check runs while nothing is wrong (it costs a DNS
/// query and a TCP handshake to Google from every VM of the fleet).
const CONTROL_PLANE_CHECK_EVERY: Duration = Duration::from_secs(300);
/// Log lines arriving in a burst are diagnosed together.
const LOG_DEBOUNCE: Duration = Duration::from_millis(100);
/// What the log follower reads of each file at start (older lines are aged by their time).
const INITIAL_TAIL: u64 = 256 * 1024;

/// The metadata server as a guest-attribute sink.
struct MetadataSink(MetadataClient);

impl AttributeSink for MetadataSink {
    async fn put(&self, key: &'static str, value: &str) -> Result<(), PutError> {
        match self.0.put_guest_attribute(NAMESPACE, key, value).await {
            Ok(()) => Ok(()),
            Err(MetadataError::GuestAttributesDisabled) => Err(PutError::Disabled),
            Err(e @ MetadataError::Timeout { .. }) => Err(PutError::Unanswered(e.to_string())),
            Err(e) => Err(PutError::Failed(e.to_string())),
        }
    }
}

/// What a cycle task hands back.
struct CycleResult {
    snapshot: Snapshot,
    reconciler: Option<Reconciler>,
    reconcile: Option<Result<ReconcileReport, String>>,
    /// Plan inputs left out (`field value: reason`), reported when they change.
    ignored: Vec<String>,
}

struct Agent {
    args: CommonArgs,
    settings: Settings,
    observer: Arc<Observer>,
    checks: CheckSettings,
    history: History,
    logs: LogFindings,
    publisher: PublisherHandle,
    metrics: Arc<AgentMetrics>,
    reconciler: Option<Reconciler>,
    last_snapshot: Option<Snapshot>,
    active: BTreeMap<FindingId, Finding>,
    /// Findings set aside by `ignore-findings`, as last logged.
    ignored: crate::publish::silenced::IgnoredLog,
    envoy_version: Option<String>,
    /// The agent's own failing jobs, so a persisting failure is logged once, not per poll.
    failures: Failures,
    /// `*.log` files the follower cannot read, with why.
    unreadable_logs: crate::observe::log_files::NotFollowed,
    /// Inputs kept away from iptables (listener prefixes, metadata ranges) as last reported.
    ignored_inputs: Vec<String>,
    last_cp_check: Option<Instant>,
    cloud_tx: Option<mpsc::Sender<LogRecord>>,
    cloud_rx: Option<mpsc::Receiver<LogRecord>>,
    cloud_sink: Option<SinkHandle>,
    follower: Option<(Follower, Arc<EntryCounters>)>,
    log_tx: mpsc::Sender<EntryEvent>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    project: crate::project_checks::ProjectChecks,
    state_log: crate::publish::state_event::StateLog,
}

/// `service-proxy-agent run`.
pub async fn run(args: CommonArgs, settings: Settings) -> anyhow::Result<u8> {
    let format = settings
        .log_format
        .unwrap_or(if std::io::stdout().is_terminal() {
            LogFormat::Text
        } else {
            LogFormat::Json
        });
    let (log_output, serial_error) =
        crate::publish::log::init(format, settings.serial_port.as_deref());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        envoy_admin = %settings.envoy_admin,
        envoy_log_dir = %settings.envoy_log_dir.display(),
        interception = settings.interception.as_str(),
        poll_interval = %humantime::format_duration(settings.poll_interval),
        metadata = %settings.metadata_host,
        "service-proxy-agent starting"
    );
    let (log_tx, log_rx) = mpsc::channel(4096);
    let (publish_tx, publish_rx) = mpsc::unbounded_channel();
    let mut agent = Agent::new(args, settings, log_output, log_tx, publish_tx);
    if let Some(e) = serial_error {
        agent.report(FailureSource::Serial, Err(e));
    }
    agent.start().await;
    let code = agent.run_loop(log_rx, publish_rx).await;
    agent.shutdown().await;
    Ok(code)
}

impl Agent {
    fn new(
        args: CommonArgs,
        settings: Settings,
        log_output: LogOutput,
        log_tx: mpsc::Sender<EntryEvent>,
        publish_tx: mpsc::UnboundedSender<PublishEvent>,
    ) -> Agent {
        let publisher = PublisherHandle::new(settings.heartbeat_interval);
        publisher.update(|p| p.hold());
        let metrics = AgentMetrics::new(log_output.counters(), publisher.counters.clone());
        let sink = MetadataSink(MetadataClient::new(
            &settings.metadata_host,
            Duration::from_secs(5),
        ));
        spawn_writer(publisher.clone(), sink, move |ev| {
            let _ = publish_tx.send(ev.clone());
        });
        let (cloud_tx, cloud_rx) = match cloud_logging_wanted(&settings) {
            Some(true) => {
                let (tx, rx) = mpsc::channel(cloud_logging::QUEUE_CAPACITY);
                log_output.attach_cloud(tx.clone());
                (Some(tx), Some(rx))
            }
            _ => (None, None),
        };
        Agent {
            project: crate::project_checks::ProjectChecks::new(
                &settings,
                metrics.project_api_calls.clone(),
            ),
            observer: Arc::new(Observer::new(&settings)),
            checks: CheckSettings::from_settings(&settings),
            reconciler: (settings.interception == InterceptionMode::Enforce)
                .then(|| Reconciler::new(crate::observe::iptables::Tools::system())),
            args,
            settings,
            history: History::new(),
            logs: LogFindings::new(),
            publisher,
            metrics,
            last_snapshot: None,
            active: BTreeMap::new(),
            ignored: Default::default(),
            envoy_version: None,
            failures: Failures::default(),
            unreadable_logs: Default::default(),
            ignored_inputs: Vec::new(),
            last_cp_check: None,
            cloud_tx,
            cloud_rx,
            cloud_sink: None,
            follower: None,
            log_tx,
            metrics_task: None,
            state_log: crate::publish::state_event::StateLog::new(log_output.clone()),
        }
    }

    /// Metrics endpoint, log follower, readiness.
    async fn start(&mut self) {
        match cloud_logging_wanted(&self.settings) {
            Some(false) => tracing::info!(
                "Cloud Logging is off (--cloud-logging auto found no credentials for this metadata server)"
            ),
            None => {}
            Some(true) => {
                tracing::info!("Cloud Logging on; entries are sent once the VM's project is known")
            }
        }
        // "Empty when none since start" (docs/contract.md#3-guest-attributes).
        self.publisher.update(|p| p.set(keys::LAST_FAILURE, ""));
        self.start_metrics().await;
        self.start_follower();
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }

    async fn start_metrics(&mut self) {
        if let Some(task) = self.metrics_task.take() {
            task.abort();
        }
        let Some(addr) = self.settings.metrics_addr else {
            return;
        };
        match metrics::bind(addr).await {
            Ok(listener) => {
                let max_age = (self.tick_period() * 3).max(Duration::from_secs(30));
                self.metrics_task = Some(tokio::spawn(metrics::serve(
                    listener,
                    self.metrics.clone(),
                    max_age,
                )));
                tracing::info!(addr = %addr, "metrics on http://{addr}/metrics, liveness on /healthz");
            }
            Err(e) => self.report(
                FailureSource::Metrics,
                Err(format!("cannot listen on {addr}: {e}")),
            ),
        }
    }

    fn start_follower(&mut self) {
        self.follower = None;
        // What is already there comes first, aged by the entries' own times, so a restart of
        // the agent does not resurrect old failures as fresh ones.
        let mut cfg = FollowerConfig::new(&self.settings.envoy_log_dir);
        cfg.initial_tail_bytes = INITIAL_TAIL;
        let tx = self.log_tx.clone();
        match start_intake(cfg, move |ev| tx.blocking_send(ev).is_ok()) {
            Ok(f) => self.follower = Some(f),
            Err(e) => self.report(
                FailureSource::EnvoyLog,
                Err(format!("cannot start the log follower: {e}")),
            ),
        }
    }

    fn tick_period(&self) -> Duration {
        let poll = self.settings.poll_interval;
        match sd_notify::watchdog_enabled() {
            Some(w) if !w.is_zero() => poll.min(w / 2),
            _ => poll,
        }
    }

    /// The next cycle's start: the period with ±10% jitter.
    fn next_cycle(&self) -> tokio::time::Instant {
        let period = self.tick_period();
        let jitter = period.mul_f64(0.9 + fastrand::f64() * 0.2);
        tokio::time::Instant::now() + jitter
    }

    async fn run_loop(
        &mut self,
        mut log_rx: mpsc::Receiver<EntryEvent>,
        mut publish_rx: mpsc::UnboundedReceiver<PublishEvent>,
    ) -> u8 {
        let (mut term, mut int, mut hup) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(t), Ok(i), Ok(h)) => (t, i, h),
            _ => {
                tracing::error!("cannot install signal handlers");
                return 1;
            }
        };
        let mut cycle: Option<tokio::task::JoinHandle<CycleResult>> = Some(self.spawn_cycle());
        let mut next = self.next_cycle();
        // systemd's watchdog is fed from this loop's own tick, so it proves the loop is alive
        // even while a cycle waits out its deadlines (~80 s at worst, past WatchdogSec=60);
        // a cycle stuck longer than CYCLE_STUCK stops the feeding (issue 15 item 20).
        let mut cycle_started = Instant::now();
        let mut watchdog = tokio::time::interval(
            sd_notify::watchdog_enabled().map_or(Duration::from_secs(3600), |w| {
                (w / 2).max(Duration::from_millis(100))
            }),
        );
        let mut rediagnose_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                res = async {
                    match cycle.as_mut() {
                        Some(task) => task.await,
                        None => std::future::pending().await,
                    }
                }, if cycle.is_some() => {
                    cycle = None;
                    match res {
                        Ok(r) => {
                            self.report(FailureSource::Cycle, Ok(()));
                            self.finish_cycle(r);
                        }
                        Err(e) => {
                            // The task panicked or was cancelled: report, keep going. The
                            // reconciler went with it; start a fresh one.
                            if self.settings.interception == InterceptionMode::Enforce {
                                self.reconciler = Some(Reconciler::new(self.observer.iptables.clone()));
                            }
                            self.report(FailureSource::Cycle, Err(format!("observation cycle failed: {e}")));
                        }
                    }
                    next = self.next_cycle();
                }
                () = tokio::time::sleep_until(next), if cycle.is_none() => {
                    cycle = Some(self.spawn_cycle());
                    cycle_started = Instant::now();
                }
                _ = watchdog.tick() => feed_watchdog(cycle.is_some(), cycle_started),
                ev = log_rx.recv() => match ev {
                    Some(EntryEvent::Entry(entry)) => {
                        self.logs.record_entry(&entry, Instant::now());
                        rediagnose_at.get_or_insert(tokio::time::Instant::now() + LOG_DEBOUNCE);
                    }
                    Some(EntryEvent::DirUnavailable { dir, reason }) => self.report(FailureSource::EnvoyLog, Err(format!("Envoy log directory {} unavailable: {reason}; waiting for it", dir.display()),
                    )),
                    Some(EntryEvent::DirAvailable { dir }) => {
                        tracing::info!(dir = %dir.display(), "Envoy log directory available");
                        self.report(FailureSource::EnvoyLog, Ok(()));
                    }
                    Some(EntryEvent::NotFollowed(n)) => {
                        self.unreadable_logs = n;
                        self.report_unreadable_logs();
                    }
                    Some(EntryEvent::Tail(tail)) => {
                        self.logs.record_tail(&tail, Instant::now(), SystemTime::now());
                        rediagnose_at.get_or_insert(tokio::time::Instant::now() + LOG_DEBOUNCE);
                    }
                    Some(EntryEvent::CaughtUp) | None => {}
                },
                () = async {
                    match rediagnose_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                }, if rediagnose_at.is_some() => {
                    rediagnose_at = None;
                    self.rediagnose();
                }
                ev = publish_rx.recv() => if let Some(ev) = ev { self.on_publish_event(ev) },
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
                _ = hup.recv() => self.reload().await,
            }
        }
        if let Some(c) = cycle {
            c.abort();
        }
        0
    }

    fn spawn_cycle(&mut self) -> tokio::task::JoinHandle<CycleResult> {
        let observer = self.observer.clone();
        let now = Instant::now();
        let disconnected = self.history.disconnected_since.is_some()
            || self
                .active
                .contains_key(&FindingId::ControlPlaneDisconnected)
            || self
                .active
                .contains_key(&FindingId::ControlPlaneUnreachable);
        let check_cp = disconnected
            || self
                .last_cp_check
                .is_none_or(|t| now.saturating_duration_since(t) >= CONTROL_PLANE_CHECK_EVERY);
        if check_cp {
            self.last_cp_check = Some(now);
        }
        let mut reconciler = self.reconciler.take();
        let enforce = self.settings.interception == InterceptionMode::Enforce;
        tokio::spawn(async move {
            let mut snapshot = observer.snapshot(check_cp).await;
            let mut ignored = Vec::new();
            let reconcile = match (&mut reconciler, enforce) {
                (Some(rec), true) => Some(match desired_plan(&snapshot) {
                    Ok(plan) => {
                        let view = snapshot.iptables.as_ref();
                        let v4 = view.and_then(|v| v.v4.as_deref().ok());
                        let v6 = view.and_then(|v| v.v6.as_ref().and_then(|r| r.as_deref().ok()));
                        let report = rec.reconcile_with(&plan, v4, v6).await;
                        if report.changed() {
                            // Judge what is there now, not what was there before the fix.
                            observer.refresh_iptables(&mut snapshot).await;
                        }
                        ignored = plan
                            .ignored
                            .iter()
                            .map(|ig| format!("{} {:?}: {}", ig.field, ig.value, ig.reason))
                            .collect();
                        Ok(report)
                    }
                    Err(e) => Err(e.to_string()),
                }),
                _ => None,
            };
            CycleResult {
                snapshot,
                reconciler,
                reconcile,
                ignored,
            }
        })
    }

    fn finish_cycle(&mut self, r: CycleResult) {
        let CycleResult {
            mut snapshot,
            reconciler,
            reconcile,
            ignored,
        } = r;
        if reconciler.is_some() {
            self.reconciler = reconciler;
        }
        snapshot.guest_attributes = if self.publisher.is_disabled() {
            GuestAttributesState::Disabled
        } else {
            GuestAttributesState::Unknown
        };
        self.note_agent_failures(&snapshot);
        self.report_ignored(&snapshot, ignored);
        match reconcile {
            Some(Ok(report)) => {
                if report.changed() {
                    self.metrics
                        .interception_restores
                        .fetch_add(u64::from(report.restores), Ordering::Relaxed);
                    tracing::info!(
                        restores = report.restores,
                        vips = snapshot
                            .listener_summary
                            .as_ref()
                            .map_or(0, |s| s.vips.len()),
                        "interception updated (iptables-restore)"
                    );
                }
                // A plan was made: a plan failure of an earlier cycle is over (logged once).
                self.report(FailureSource::Interception, Ok(()));
                let errors: Vec<String> = report.errors().iter().map(ToString::to_string).collect();
                if errors.is_empty() {
                    self.report(FailureSource::Iptables, Ok(()));
                } else {
                    self.report(FailureSource::Iptables, Err(errors.join("; ")));
                }
            }
            Some(Err(why)) => self.report(FailureSource::Interception, Err(why)),
            None => {}
        }
        if let Ok(vm) = &snapshot.vm {
            self.ensure_cloud_logging(vm);
        }
        if let Some(v) = snapshot.proxy_version()
            && self.envoy_version.as_deref() != Some(v)
        {
            tracing::info!(version = v, "Envoy Version: {v}");
            self.envoy_version = Some(v.to_owned());
        }
        let mut diagnosis = diagnose::run(
            &snapshot,
            &mut self.history,
            &mut self.logs,
            &self.checks,
            Instant::now(),
        );
        self.project.after_diagnosis(&snapshot, &mut diagnosis);
        self.publish(&snapshot, &diagnosis, true);
        self.publisher.update(|p| p.release());
        self.last_snapshot = Some(snapshot);
    }

    /// Log lines arrived: judge them against the last snapshot now, not at the next poll.
    fn rediagnose(&mut self) {
        let Some(snap) = self.last_snapshot.take() else {
            return;
        };
        let mut diagnosis = diagnose::run(
            &snap,
            &mut self.history,
            &mut self.logs,
            &self.checks,
            Instant::now(),
        );
        self.project.after_diagnosis(&snap, &mut diagnosis);
        self.publish(&snap, &diagnosis, false);
        self.last_snapshot = Some(snap);
    }

    /// Failures of the agent's own work seen in a snapshot.
    fn note_agent_failures(&mut self, snap: &Snapshot) {
        match &snap.vm {
            Err(e) => {
                self.report(
                    FailureSource::Metadata,
                    Err(format!("cannot read the VM's metadata: {e}")),
                );
            }
            Ok(_) => {
                self.report(FailureSource::Metadata, Ok(()));
            }
        }
        match &snap.server_info {
            // ENVOY_NOT_RUNNING / ENVOY_ADMIN_UNREACHABLE say it, and nothing else was read.
            Err(_) => FailureSource::EnvoyAdmin.count(&self.metrics),
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
                if errors.is_empty() {
                    self.report(FailureSource::EnvoyAdmin, Ok(()));
                } else {
                    self.report(FailureSource::EnvoyAdmin, Err(errors.join("; ")));
                }
            }
        }
        if let Some(view) = &snap.iptables {
            if let Err(e) = &view.v4 {
                self.report(
                    FailureSource::IptablesSave,
                    Err(format!("iptables-save failed: {e}")),
                );
            } else {
                self.report(FailureSource::IptablesSave, Ok(()));
            }
        }
        match &snap.control_plane {
            Some(r) if !r.is_reachable() => {
                let why = match r {
                    crate::observe::control_plane::Reachability::DnsFailed { host, error } => {
                        format!("DNS lookup of {host} failed: {error}")
                    }
                    crate::observe::control_plane::Reachability::TcpFailed { addrs, error } => {
                        format!("TCP connect to {} failed: {error}", addrs.join(", "))
                    }
                    crate::observe::control_plane::Reachability::Reachable { .. } => String::new(),
                };
                self.report(
                    FailureSource::ControlPlane,
                    Err(format!(
                        "Cannot reach the Cloud Service Mesh API server {}: {why}",
                        self.settings.control_plane
                    )),
                );
            }
            Some(_) => {
                self.report(FailureSource::ControlPlane, Ok(()));
            }
            None => {}
        }
    }

    /// The outcome of one of the agent's own jobs: a failure is counted every time, logged and
    /// written to `agent-last-failure` once while it persists (with the time it was first met);
    /// a recovery is logged once, so an operator sees the fault end.
    fn report(&mut self, source: FailureSource, outcome: Result<(), String>) {
        if outcome.is_err() {
            source.count(&self.metrics);
        }
        let Some(t) = self.failures.report(source, outcome) else {
            return;
        };
        t.emit();
        if let Transition::Raised { source, message } = &t
            && source.sets_last_failure()
        {
            let value = format!(
                "{} {message}",
                humantime::format_rfc3339_seconds(SystemTime::now())
            );
            self.publisher.update(|p| p.set(keys::LAST_FAILURE, &value));
        }
    }

    fn report_unreadable_logs(&mut self) {
        if self.unreadable_logs.is_empty() {
            self.report(FailureSource::EnvoyLogFile, Ok(()));
            return;
        }
        self.report(
            FailureSource::EnvoyLogFile,
            Err(self.unreadable_logs.describe()),
        );
    }

    /// Inputs that are not valid networks, ports or ranges never reach iptables (docs/contract.md#7-interception); each
    /// new set of them is reported once.
    fn report_ignored(&mut self, snap: &Snapshot, plan_ignored: Vec<String>) {
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
            tracing::warn!(
                source = "interception",
                ignored = now.len() as u64,
                "ignored for interception, never passed to iptables: {}",
                now.join("; ")
            );
        }
        self.ignored_inputs = now;
    }

    fn on_publish_event(&mut self, ev: PublishEvent) {
        match ev {
            PublishEvent::Written { .. } => {
                self.report(FailureSource::GuestAttributes, Ok(()));
            }
            PublishEvent::Disabled => {
                tracing::warn!(
                    finding = FindingId::GuestAttributesDisabled.as_str(),
                    "guest attributes are disabled on this VM (403); retrying every 5 minutes"
                );
                // Surface it as a finding at once.
                self.rediagnose();
            }
            PublishEvent::Reenabled => {
                tracing::info!("guest attributes are enabled again");
                self.rediagnose();
            }
            PublishEvent::Failed { key, error } => {
                if !self.publisher.is_disabled() {
                    let msg = format!("cannot write guest attribute {NAMESPACE}/{key}: {error}");
                    self.report(FailureSource::GuestAttributes, Err(msg));
                }
            }
        }
    }

    /// Logs transitions, sets the attributes, updates metrics.
    fn publish(&mut self, snap: &Snapshot, diagnosis: &Diagnosis, cycle_done: bool) {
        let now_ids: BTreeMap<FindingId, &Finding> =
            diagnosis.findings.iter().map(|f| (f.id, f)).collect();
        for (id, f) in &now_ids {
            if !self.active.contains_key(id) {
                let sev = f.severity.log_severity();
                let (id_s, detail, remediation, doc) = (
                    id.as_str(),
                    f.detail.as_str(),
                    f.remediation.as_str(),
                    f.doc.as_str(),
                );
                let msg = format!("{id_s}: {}", f.summary);
                match sev {
                    "ERROR" => tracing::error!(finding = id_s, detail, remediation, doc, "{msg}"),
                    "WARNING" => tracing::warn!(finding = id_s, detail, remediation, doc, "{msg}"),
                    _ => tracing::info!(finding = id_s, detail, remediation, doc, "{msg}"),
                }
            }
        }
        let now_ignored: Vec<FindingId> = diagnosis.ignored.iter().map(|i| i.finding.id).collect();
        for id in self.active.keys() {
            // One set aside now is logged as ignored just below, not as cleared.
            if !now_ids.contains_key(id) && !now_ignored.contains(id) {
                tracing::info!(finding = id.as_str(), "{} cleared", id.as_str());
            }
        }
        self.ignored.update(diagnosis);
        self.active = diagnosis
            .findings
            .iter()
            .map(|f| (f.id, f.clone()))
            .collect();

        let health = diagnosis.health();
        let findings = findings_attribute(&diagnosis.findings);
        let state = snap.proxy_state();
        let version = snap.proxy_version().map(str::to_owned);
        let heartbeat =
            cycle_done.then(|| humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        if let Some(hb) = &heartbeat {
            let ids = crate::publish::state_event::finding_ids(&findings);
            let vm = crate::publish::state_event::VmState {
                health: health.as_str(),
                findings: &ids,
                proxy_version: version.as_deref(),
                proxy_state: &state,
                heartbeat: hb,
            };
            self.state_log.observe(&vm, Instant::now());
        }
        self.publisher.update(|p| {
            p.set(keys::HEALTH, health.as_str());
            p.set(keys::FINDINGS, &findings);
            p.set(keys::PROXY_STATE, &state);
            if let Some(v) = &version {
                p.set(keys::PROXY_VERSION, v);
            }
            if let Some(hb) = heartbeat {
                p.set_heartbeat(hb);
            }
        });
        if cycle_done {
            systemd::notify_status(&systemd::status_line(
                health.as_str(),
                diagnosis.findings.iter().map(|f| f.id.as_str()),
                self.settings.interception.as_str(),
            ));
            if let Some((_, c)) = &self.follower {
                self.metrics
                    .envoy_log_lines
                    .store(c.lines.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            let summary = snap.listener_summary.as_ref();
            self.metrics.cycle_done(
                &diagnosis.findings,
                CycleView {
                    envoy_state: state,
                    listeners: snap.listeners.as_ref().map_or(0, |l| l.len() as u64),
                    vips: summary.map_or(0, |s| s.vips.len() as u64),
                    heartbeat_unix: SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64),
                    ignored: now_ignored,
                    ..CycleView::default()
                },
                Instant::now(),
            );
        }
    }

    fn ensure_cloud_logging(&mut self, vm: &crate::observe::metadata::VmMetadata) {
        let Some(rx) = self.cloud_rx.take() else {
            return;
        };
        let target = Target {
            endpoint: self.settings.cloud_logging_endpoint.clone(),
            project_id: vm.project_id.clone(),
            zone: vm.zone.clone(),
            instance_id: vm.instance_id.to_string(),
        };
        // On a VM the token comes from its metadata server (the project checks' tokens);
        // gcp_auth only for a key file or gcloud's credentials.
        let spawned = if GcpAuthTokens::credentials_present(false) {
            cloud_logging::spawn(target, GcpAuthTokens::new(false), rx)
        } else {
            cloud_logging::spawn(target, self.project.tokens(), rx)
        };
        match spawned {
            Ok(handle) => {
                self.metrics.set_cloud_logging(handle.counters.clone());
                self.cloud_sink = Some(handle);
            }
            Err(e) => self.report(FailureSource::CloudLogging, Err(e.to_string())),
        }
    }

    /// SIGHUP: re-read the config file; a bad file keeps the old settings.
    async fn reload(&mut self) {
        systemd::notify_reloading();
        self.reload_config().await;
        systemd::notify_reloaded();
    }

    async fn reload_config(&mut self) {
        let new = match Settings::resolve(&self.args, |k| std::env::var(k).ok()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("SIGHUP: config not reloaded, keeping the previous one: {e}");
                self.report(
                    FailureSource::Config,
                    Err(format!("config reload failed: {e}")),
                );
                return;
            }
        };
        if new == self.settings {
            tracing::info!("SIGHUP: config unchanged");
            return;
        }
        let old = std::mem::replace(&mut self.settings, new);
        let s = &self.settings;
        if s.log_format != old.log_format || s.serial_port != old.serial_port {
            tracing::warn!(
                "SIGHUP: --log-format and --serial-port take effect at the next restart"
            );
        }
        self.checks = CheckSettings::from_settings(s);
        if s.cloud_checks != old.cloud_checks || s.api_endpoints != old.api_endpoints {
            let calls = self.metrics.project_api_calls.clone();
            self.project = crate::project_checks::ProjectChecks::new(s, calls);
        }
        self.observer = Arc::new(Observer::new(s));
        let hb = s.heartbeat_interval;
        self.publisher.update(|p| p.set_heartbeat_interval(hb));
        if s.interception == InterceptionMode::Enforce && self.reconciler.is_none() {
            self.reconciler = Some(Reconciler::new(self.observer.iptables.clone()));
        }
        if s.interception != InterceptionMode::Enforce {
            self.reconciler = None;
        }
        let restart_follower = s.envoy_log_dir != old.envoy_log_dir;
        let restart_metrics = s.metrics_addr != old.metrics_addr;
        self.report(FailureSource::Config, Ok(()));
        tracing::info!(
            interception = self.settings.interception.as_str(),
            poll_interval = %humantime::format_duration(self.settings.poll_interval),
            "SIGHUP: config reloaded"
        );
        if restart_follower {
            self.start_follower();
        }
        if restart_metrics {
            self.start_metrics().await;
        }
    }

    async fn shutdown(&mut self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        self.follower = None;
        if let Some(t) = self.metrics_task.take() {
            t.abort();
        }
        if let Some(sink) = self.cloud_sink.take() {
            sink.shutdown(Duration::from_secs(2)).await;
        }
        drop(self.cloud_tx.take());
        tracing::info!("service-proxy-agent stopped");
    }
}

/// A cycle running longer than this is stuck, not slow (each of its calls has a deadline).
const CYCLE_STUCK: Duration = Duration::from_secs(300);

/// `WATCHDOG=1` while the main loop runs and no cycle is stuck.
fn feed_watchdog(cycle_running: bool, cycle_started: Instant) {
    if !cycle_running || cycle_started.elapsed() < CYCLE_STUCK {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
    }
}

/// `Some(true)`: send to Cloud Logging; `Some(false)`: auto found nothing to send with;
/// `None`: off by flag.
fn cloud_logging_wanted(s: &Settings) -> Option<bool> {
    match s.cloud_logging {
        CloudLoggingMode::Off => None,
        CloudLoggingMode::On => Some(true),
        CloudLoggingMode::Auto => Some(GcpAuthTokens::credentials_present(
            s.metadata_host == DEFAULT_METADATA_HOST,
        )),
    }
}
