//! The daemon's satellites: the metrics endpoint, the log intake and the Cloud Logging sink,
//! their start (and restart on SIGHUP) and stop.

use std::time::Duration;

use super::Agent;
use super::cycle::cloud_logging_wanted;
use crate::monitor::FailureSource;
use crate::observe::log_follower::{FollowerConfig, start_intake};
use crate::publish::cloud_logging::{self, GcpAuthTokens, Target};
use crate::publish::guest_attributes::keys;
use crate::publish::metrics;

/// What the log intake reads of each file present at start (older lines are aged by their time).
const INITIAL_TAIL: u64 = 256 * 1024;

impl Agent {
    /// Metrics endpoint, log follower, readiness.
    pub(super) async fn start(&mut self) {
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

    pub(super) async fn shutdown(&mut self) {
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

    pub(super) async fn start_metrics(&mut self) {
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

    pub(super) fn start_follower(&mut self) {
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

    pub(super) fn ensure_cloud_logging(&mut self, vm: &crate::observe::metadata::VmMetadata) {
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
}
