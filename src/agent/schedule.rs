//! When cycles run, and systemd's watchdog.

use std::time::{Duration, Instant};

use super::Agent;

impl Agent {
    pub(super) fn tick_period(&self) -> Duration {
        let poll = self.settings.poll_interval;
        match sd_notify::watchdog_enabled() {
            Some(w) if !w.is_zero() => poll.min(w / 2),
            _ => poll,
        }
    }

    /// The next cycle's start: the period with ±10% jitter.
    pub(super) fn next_cycle(&self) -> tokio::time::Instant {
        let period = self.tick_period();
        let jitter = period.mul_f64(0.9 + fastrand::f64() * 0.2);
        tokio::time::Instant::now() + jitter
    }
}

/// A cycle running longer than this is stuck, not slow (each of its calls has a deadline).
const CYCLE_STUCK: Duration = Duration::from_secs(300);

/// `WATCHDOG=1` while the main loop runs and no cycle is stuck.
pub(super) fn feed_watchdog(cycle_running: bool, cycle_started: Instant) {
    if !cycle_running || cycle_started.elapsed() < CYCLE_STUCK {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
    }
}
