//! The daemon (docs/contract.md#5-daemon): observe → diagnose → publish / act, once per poll, and at once when
//! Envoy logs a failure.
//!
//! Everything that can be missing (Envoy, its log directory, the metadata server, iptables) is
//! a finding or an `agent-last-failure`, never a crash. Every outside call has a deadline; the
//! cycle runs as a task so signals and log lines are handled while it waits. Retries are paced
//! by the poll interval (with jitter, so a fleet does not poll in step) or by their own backoff
//! (guest attributes, Cloud Logging). What to say and publish is decided by the
//! [`Monitor`]; this module wires it to tokio, signals and reload.

mod apply;
mod cycle;
mod satellites;
mod schedule;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{CommonArgs, InterceptionMode, LogFormat, Settings};
use crate::diagnose::CheckSettings;
use crate::intercept::Reconciler;
use crate::monitor::{FailureSource, Monitor};
use crate::observe::Observer;
use crate::observe::log_follower::{EntryCounters, EntryEvent, Follower};
use crate::observe::metadata::MetadataClient;
use crate::publish::cloud_logging::{self, SinkHandle};
use crate::publish::guest_attributes::{PublishEvent, PublisherHandle, spawn_writer};
use crate::publish::log::{LogOutput, LogRecord};
use crate::publish::metrics::AgentMetrics;
use crate::publish::systemd;
use cycle::{CycleResult, MetadataSink, cloud_logging_wanted, observe_and_reconcile};
use schedule::feed_watchdog;

/// Log lines arriving in a burst are diagnosed together.
const LOG_DEBOUNCE: Duration = Duration::from_millis(100);

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
                _ = hup.recv() => {
                    self.reload().await;
                    // A shorter poll interval takes effect now, not once the old one has run out
                    // (a longer one after the pending cycle; a running cycle sets `next` itself).
                    next = next.min(self.next_cycle());
                }
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

    /// SIGHUP: re-read the config file; a bad file keeps the old settings.
    async fn reload(&mut self) {
        systemd::notify_reloading();
        self.reload_config().await;
        systemd::notify_reloaded();
    }

    async fn reload_config(&mut self) {
        // The VM's identity is read once (it cannot change while the VM runs); a reload is how
        // an operator makes the agent read it again, whatever becomes of the config.
        self.observer.vm_identity.forget();
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
}
