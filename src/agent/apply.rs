//! Carrying out what the [`Monitor`](crate::monitor::Monitor) decided: log lines, metrics,
//! guest attributes, systemd's status.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Agent;
use crate::monitor::Actions;
use crate::publish::guest_attributes::keys;
use crate::publish::systemd;

impl Agent {
    /// Carries out what the monitor decided: log lines, metrics, attributes, status.
    pub(super) fn apply(&mut self, a: Actions) {
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
}
