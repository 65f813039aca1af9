//! The daemon (docs/contract.md#5-daemon): observe → diagnose → publish / act, once per poll, and at once when
//! Envoy logs a failure.
//!
//! Everything that can be missing (Envoy, its log directory, the metadata server, iptables) is
//! a finding or an `agent-last-failure`, never a crash. Every outside call has a deadline; the
//! cycle runs as a task so signals and log lines are handled while it waits. Retries are paced
//! by the poll interval (with jitter, so a fleet does not poll in step) or by their own backoff
//! (guest attributes, Cloud Logging). What to say and publish is decided by the
//! [`Monitor`](crate::monitor::Monitor); this module wires it to tokio, signals and reload.

mod cycle;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{CommonArgs, InterceptionMode, LogFormat, Settings};
use crate::diagnose::CheckSettings;
use crate::intercept::Reconciler;
use crate::monitor::{Actions, FailureSource, Monitor};
use crate::observe::Observer;
use crate::observe::log_follower::{
    EntryCounters, EntryEvent, Follower, FollowerConfig, start_intake,
};
use crate::observe::metadata::MetadataClient;
use crate::publish::cloud_logging::{self, GcpAuthTokens, SinkHandle, Target};
use crate::publish::guest_attributes::{PublishEvent, PublisherHandle, keys, spawn_writer};
use crate::publish::log::{LogOutput, LogRecord};
use crate::publish::metrics::{self, AgentMetrics};
use crate::publish::systemd;
use cycle::{CycleResult, MetadataSink, cloud_logging_wanted, observe_and_reconcile};

/// Log lines arriving in a burst are diagnosed together.
const LOG_DEBOUNCE: Duration = Duration::from_millis(100);
/// What the log intake reads of each file present at start (older lines are aged by their time).
const INITIAL_TAIL: u64 = 256 * 1024;

struct Agent {
    args: CommonArgs,
    settings: Settings,
    observer: Arc<Observer>,
    monitor: Monitor,
    publisher: PublisherHandle,
    metrics: Arc<AgentMetrics>,
    reconciler: Option<Reconciler>,
    /// Findings set aside by `ignore-findings`, as last logged.
    ignored: crate::publish::silenced::IgnoredLog,
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
            monitor: Monitor::new(CheckSettings::from_settings(&settings)),
            reconciler: (settings.interception == InterceptionMode::Enforce)
                .then(|| Reconciler::new(crate::observe::iptables::Tools::system())),
            args,
            settings,
            publisher,
            metrics,
            ignored: Default::default(),
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
                        Ok(r) => self.finish_cycle(r),
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
                ev = log_rx.recv() => if let Some(ev) = ev {
                    let a = self.monitor.log_event(ev, Instant::now(), SystemTime::now());
                    if a.rediagnose_soon {
                        rediagnose_at.get_or_insert(tokio::time::Instant::now() + LOG_DEBOUNCE);
                    }
                    self.apply(a);
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
        let check_cp = self.monitor.control_plane_due(Instant::now());
        let reconciler = match self.settings.interception {
            InterceptionMode::Enforce => self.reconciler.take(),
            _ => None,
        };
        tokio::spawn(observe_and_reconcile(
            self.observer.clone(),
            reconciler,
            check_cp,
        ))
    }

    fn finish_cycle(&mut self, r: CycleResult) {
        if r.reconciler.is_some() {
            self.reconciler = r.reconciler;
        }
        if let Ok(vm) = &r.snapshot.vm {
            self.ensure_cloud_logging(vm);
        }
        let project = &mut self.project;
        let a = self.monitor.cycle(
            r.snapshot,
            r.outcome,
            self.publisher.is_disabled(),
            (Instant::now(), SystemTime::now()),
            |snap, d| project.after_diagnosis(snap, d),
        );
        self.apply(a);
        self.publisher.update(|p| p.release());
    }

    /// Log lines arrived: judge them against the last snapshot now, not at the next poll.
    fn rediagnose(&mut self) {
        let project = &mut self.project;
        let a = self
            .monitor
            .rediagnose(Instant::now(), |snap, d| project.after_diagnosis(snap, d));
        self.apply(a);
    }

    /// The outcome of a job of the agent's own, outside the monitor's cycle.
    fn report(&mut self, source: FailureSource, outcome: Result<(), String>) {
        let a = self.monitor.report(source, outcome, SystemTime::now());
        self.apply(a);
    }

    fn on_publish_event(&mut self, ev: PublishEvent) {
        let project = &mut self.project;
        let a = self.monitor.publish_event(
            ev,
            self.publisher.is_disabled(),
            (Instant::now(), SystemTime::now()),
            |snap, d| project.after_diagnosis(snap, d),
        );
        self.apply(a);
    }

    /// Carries out what the monitor decided: log lines, metrics, attributes, status.
    fn apply(&mut self, a: Actions) {
        for e in &a.events {
            e.emit();
        }
        for source in &a.failed {
            source.count(&self.metrics);
        }
        if a.interception_restores > 0 {
            self.metrics
                .interception_restores
                .fetch_add(a.interception_restores, Ordering::Relaxed);
        }
        if let Some(value) = &a.last_failure {
            self.publisher.update(|p| p.set(keys::LAST_FAILURE, value));
        }
        let Some(p) = a.publication else {
            return;
        };
        self.ignored.update(&p.diagnosis);
        if let Some(hb) = &p.heartbeat {
            let ids = crate::publish::state_event::finding_ids(&p.findings);
            let vm = crate::publish::state_event::VmState {
                health: p.health.as_str(),
                findings: &ids,
                proxy_version: p.proxy_version.as_deref(),
                proxy_state: &p.proxy_state,
                heartbeat: hb,
            };
            self.state_log.observe(&vm, Instant::now());
        }
        self.publisher.update(|pb| {
            pb.set(keys::HEALTH, p.health.as_str());
            pb.set(keys::FINDINGS, &p.findings);
            pb.set(keys::PROXY_STATE, &p.proxy_state);
            if let Some(v) = &p.proxy_version {
                pb.set(keys::PROXY_VERSION, v);
            }
            if let Some(hb) = p.heartbeat.clone() {
                pb.set_heartbeat(hb);
            }
        });
        if let Some(view) = p.cycle {
            systemd::notify_status(&systemd::status_line(
                p.health.as_str(),
                p.diagnosis.findings.iter().map(|f| f.id.as_str()),
                self.settings.interception.as_str(),
            ));
            if let Some((_, c)) = &self.follower {
                self.metrics
                    .envoy_log_lines
                    .store(c.lines.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            self.metrics
                .cycle_done(&p.diagnosis.findings, view, Instant::now());
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
        self.monitor.set_checks(CheckSettings::from_settings(s));
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
