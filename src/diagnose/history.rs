//! What the checks remember between snapshots: some faults are only faults when they last
//! (not LIVE, disconnected) or repeat (restarts), or when a counter grows (rejections).
//! `doctor` starts with an empty history; the daemon keeps one for its life.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::observe::Snapshot;
use crate::observe::envoy_admin::ServerState;

/// How far back restarts are counted (docs/contract.md#4-1-catalogue: more than twice in 10 minutes).
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Default)]
pub struct History {
    /// Since when Envoy's state has been this non-LIVE value.
    pub not_live_since: Option<(String, Instant)>,
    /// Since when `control_plane.connected_state` has been 0. When Envoy has never accepted a
    /// listener update, its uptime bounds it from the first sight (no configuration since start).
    /// A single reading of 1 does not end it (see [`History::update`]): while it is set, Envoy
    /// is taken as disconnected whatever this snapshot read.
    pub disconnected_since: Option<Instant>,
    /// When `connected_state` was last seen other than 0, confirmed (bounds the uptime
    /// inference).
    last_connected: Option<Instant>,
    /// Whether the previous snapshot read `connected_state` other than 0.
    previous_read_connected: bool,
    /// Restarts seen (PID change or uptime going backwards), within [`RESTART_WINDOW`].
    pub restarts: VecDeque<Instant>,
    last_pid: Option<u32>,
    last_uptime: Option<Duration>,
    /// `listener_manager.lds.update_rejected` / `cluster_manager.cds.update_rejected` at the
    /// first snapshot (a baseline) and their latest values.
    pub lds_rejected: Counter,
    pub cds_rejected: Counter,
    pub lds_success: Counter,
    /// LDS's and CDS's `update_failure` together: xDS streams that failed.
    xds_failures: Counter,
    /// When a rejection counter last grew.
    pub rejected_grew_at: Option<Instant>,
    /// When `lds.update_rejected` / `cds.update_rejected` last grew, and `lds.update_success`.
    pub lds_rejected_grew_at: Option<Instant>,
    pub cds_rejected_grew_at: Option<Instant>,
    pub lds_accepted_at: Option<Instant>,
    /// Whether, in the latest snapshot, a rejection counter grew / an update was accepted.
    pub rejected_grew_now: bool,
    pub accepted_update_now: bool,
    pub snapshots: u64,
    /// The interception checks' last answer, reused while their inputs stand still.
    pub interception: super::interception::Memo,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    pub first: Option<u64>,
    pub last: Option<u64>,
}

impl Counter {
    /// Records a value; true when it grew since the previous one.
    fn update(&mut self, value: Option<u64>) -> bool {
        let Some(v) = value else { return false };
        self.first.get_or_insert(v);
        let grew = self.last.is_some_and(|l| v > l);
        // A restart resets Envoy's counters: start over from the new value.
        if self.last.is_some_and(|l| v < l) {
            self.first = Some(v);
        }
        self.last = Some(v);
        grew
    }
}

impl History {
    pub fn new() -> Self {
        History::default()
    }

    /// Folds a snapshot in. `now` is the monotonic time it was taken.
    pub fn update(&mut self, snap: &Snapshot, now: Instant) {
        self.snapshots += 1;
        match &snap.server_info {
            Ok(info) => {
                let state = info.state.as_str().to_owned();
                if state == "LIVE" {
                    self.not_live_since = None;
                } else {
                    match &self.not_live_since {
                        Some((s, _)) if *s == state => {}
                        _ => {
                            // Without history, uptime bounds how long it has been so, but only
                            // for the states Envoy starts in: DRAINING begins at any time.
                            let starting = matches!(
                                info.state,
                                ServerState::PreInitializing | ServerState::Initializing
                            );
                            let since = info
                                .uptime_current_epoch
                                .filter(|_| self.snapshots == 1 && starting)
                                .and_then(|u| now.checked_sub(u))
                                .unwrap_or(now);
                            self.not_live_since = Some((state, since));
                        }
                    }
                }
                let pid = snap.admin_pid;
                let uptime = info.uptime_current_epoch;
                let restarted = match (self.last_pid, pid) {
                    (Some(a), Some(b)) if a != b => true,
                    _ => matches!((self.last_uptime, uptime), (Some(a), Some(b)) if b < a),
                };
                if restarted {
                    self.restarts.push_back(now);
                }
                if pid.is_some() {
                    self.last_pid = pid;
                }
                self.last_uptime = uptime;
            }
            Err(_) => self.not_live_since = None,
        }
        while self
            .restarts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > RESTART_WINDOW)
        {
            self.restarts.pop_front();
        }
        if let Ok(stats) = &snap.stats {
            self.accepted_update_now = self.lds_success.update(stats.lds_update_success);
            if self.accepted_update_now {
                self.lds_accepted_at = Some(now);
            }
            let stream_failed = self.xds_failures.update(stats.xds_fetch_failures());
            let read_connected = match stats.control_plane_connected_state {
                Some(0) => {
                    if self.disconnected_since.is_none() {
                        self.disconnected_since = Some(self.disconnected_start(snap, now));
                    }
                    false
                }
                Some(_) => {
                    // Envoy sets connected_state to 1 as it opens each stream, before the
                    // server has answered, so a stream refused at once (14 on every retry)
                    // reads 1 for tens of milliseconds a retry (40-45 ms measured on Envoy
                    // 1.40 against a loopback server; a connect timeout's worth where packets
                    // are dropped) and a poll can land there. A reading of 1 counts as
                    // connected when a listener update was accepted (a stream that carried
                    // configuration), or when the previous poll read 1 too and no stream
                    // failed in between (each failure adds to `update_failure`).
                    if self.accepted_update_now || (self.previous_read_connected && !stream_failed)
                    {
                        self.disconnected_since = None;
                        self.last_connected = Some(now);
                    }
                    true
                }
                None => false,
            };
            self.previous_read_connected = read_connected;
            let lds = self.lds_rejected.update(stats.lds_update_rejected);
            let cds = self.cds_rejected.update(stats.cds_update_rejected);
            self.rejected_grew_now = lds || cds;
            if self.rejected_grew_now {
                self.rejected_grew_at = Some(now);
            }
            if lds {
                self.lds_rejected_grew_at = Some(now);
            }
            if cds {
                self.cds_rejected_grew_at = Some(now);
            }
        } else {
            self.disconnected_since = None;
            self.previous_read_connected = false;
            self.rejected_grew_now = false;
            self.accepted_update_now = false;
        }
    }
}

impl History {
    /// Whether Envoy is taken as connected to its control plane when this snapshot reads
    /// `connected_state` as `state`: not 0 (1, or 2 in failover), and not a reading the history
    /// discounts as a stream opening between refusals.
    pub fn connected(&self, state: Option<u64>) -> bool {
        state.is_some_and(|n| n != 0) && self.disconnected_since.is_none()
    }

    /// When a disconnection just seen began. Envoy that has never accepted a listener update
    /// has had no configuration since it started, so its uptime bounds it (later than the last
    /// time it was seen connected, if it was).
    fn disconnected_start(&self, snap: &Snapshot, now: Instant) -> Instant {
        let never_configured = snap
            .stats
            .as_ref()
            .is_ok_and(|s| s.lds_update_success == Some(0))
            && snap
                .listeners
                .as_ref()
                .is_ok_and(|ls| ls.iter().all(|l| l.active.is_none() && l.warming.is_none()));
        let from_uptime = snap
            .server_info
            .as_ref()
            .ok()
            .and_then(|i| i.uptime_current_epoch)
            .filter(|_| never_configured)
            .and_then(|u| now.checked_sub(u));
        match (from_uptime, self.last_connected) {
            (Some(start), Some(seen)) => start.max(seen),
            (Some(start), None) => start,
            _ => now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_grow_and_reset() {
        let mut c = Counter::default();
        assert!(!c.update(Some(2)));
        assert!(c.update(Some(3)));
        assert!(!c.update(Some(3)));
        assert!(!c.update(Some(0)));
        assert_eq!(c.first, Some(0));
        assert!(!c.update(None));
    }
}
