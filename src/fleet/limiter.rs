//! The request budget of `fleet` (pure; time passed in). Two rules:
//!
//! - at most `--max-qps` requests start within any window of one second (a sliding log, not a
//!   token bucket: a bucket's burst would let a server see its capacity plus a second's refill
//!   in one second). The window is widened by [`ARRIVAL_MARGIN`] so that requests leaving here
//!   at the edge of a window still arrive within the budget when the network delays one of
//!   them more than the next (on a loaded machine that spread passed 100 ms at 400 a second).
//!   Requests are also spaced by 1/`max_qps` so no burst compresses into a server's second;
//! - a 429 / `rateLimitExceeded` pauses every request for a backoff that doubles per throttled
//!   round (1 s … 32 s) with jitter (0.5–1.5×), so many readers do not return in step; a
//!   success resets it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Slack for arrival jitter added to the one-second window.
pub const ARRIVAL_MARGIN: Duration = Duration::from_millis(250);
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(32);

#[derive(Debug)]
pub struct RateLimiter {
    max: usize,
    window: Duration,
    sent: VecDeque<Instant>,
    spacing: Duration,
    paused_until: Option<Instant>,
    backoff: Duration,
}

impl RateLimiter {
    pub fn new(max_qps: u32) -> RateLimiter {
        RateLimiter {
            max: (max_qps as usize).max(1),
            window: Duration::from_secs(1) + ARRIVAL_MARGIN,
            sent: VecDeque::new(),
            spacing: Duration::from_secs(1) / max_qps.max(1),
            paused_until: None,
            backoff: Duration::ZERO,
        }
    }

    /// Takes a slot for a request starting `now`, or says when to ask again.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Instant> {
        if let Some(p) = self.paused_until
            && p > now
        {
            return Err(p);
        }
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            self.sent.pop_front();
        }
        if let Some(last) = self.sent.back()
            && now < *last + self.spacing
        {
            return Err(*last + self.spacing);
        }
        if self.sent.len() < self.max {
            self.sent.push_back(now);
            return Ok(());
        }
        Err(self.sent.front().map_or(now, |t| *t + self.window))
    }

    /// A request was throttled (429 / rateLimitExceeded) at `now`; `jitter` in [0, 1).
    /// Returns the pause. Throttles answering requests sent before the pause began count once.
    pub fn throttled(&mut self, now: Instant, jitter: f64) -> Duration {
        if self.paused_until.is_none_or(|p| now >= p) {
            self.backoff = if self.backoff.is_zero() {
                BACKOFF_FIRST
            } else {
                (self.backoff * 2).min(BACKOFF_MAX)
            };
            let pause = self.backoff.mul_f64(0.5 + jitter.clamp(0.0, 1.0));
            self.paused_until = Some(now + pause);
        }
        self.paused_until
            .map_or(Duration::ZERO, |p| p.saturating_duration_since(now))
    }

    /// A request succeeded: the next throttle starts from the first backoff again.
    pub fn succeeded(&mut self, now: Instant) {
        if self.paused_until.is_none_or(|p| now >= p) {
            self.backoff = Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_than_max_in_any_window() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(20);
        let mut sent = Vec::new();
        let mut now = t0;
        // Ask every millisecond for 5 seconds; record what was let through.
        while now < t0 + Duration::from_secs(5) {
            if l.try_acquire(now).is_ok() {
                sent.push(now);
            }
            now += Duration::from_millis(1);
        }
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(1) + ARRIVAL_MARGIN)
                .count();
            assert!(in_window <= 20, "{in_window} within a window from {t:?}");
        }
        // And it uses the budget: 20 per 1.25 s over 5 s.
        assert!(sent.len() >= 20 * 4, "{}", sent.len());
        // Evenly: never two within 1/20 s.
        assert!(
            sent.windows(2)
                .all(|w| w[1] - w[0] >= Duration::from_millis(50))
        );
    }

    #[test]
    fn wait_names_when_a_slot_frees() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(2);
        assert!(l.try_acquire(t0).is_ok());
        assert_eq!(
            l.try_acquire(t0 + Duration::from_millis(10)),
            Err(t0 + Duration::from_millis(500)),
            "spaced by 1/2 s"
        );
        assert!(l.try_acquire(t0 + Duration::from_millis(500)).is_ok());
        assert_eq!(
            l.try_acquire(t0 + Duration::from_millis(1000)),
            Err(t0 + Duration::from_secs(1) + ARRIVAL_MARGIN)
        );
        assert!(
            l.try_acquire(t0 + Duration::from_secs(1) + ARRIVAL_MARGIN)
                .is_ok()
        );
    }

    #[test]
    fn backoff_doubles_per_round_with_jitter_and_resets() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(100);
        assert_eq!(l.throttled(t0, 0.5), Duration::from_secs(1));
        // Other requests in flight throttled in the same round do not double it.
        assert_eq!(
            l.throttled(t0 + Duration::from_millis(100), 0.9),
            Duration::from_millis(900)
        );
        assert!(l.try_acquire(t0 + Duration::from_millis(500)).is_err());
        let t1 = t0 + Duration::from_secs(1);
        assert!(l.try_acquire(t1).is_ok());
        assert_eq!(l.throttled(t1, 0.5), Duration::from_secs(2));
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(l.throttled(t2, 0.0), Duration::from_secs(2), "4 s × 0.5");
        let mut t = t2 + Duration::from_secs(2);
        for _ in 0..10 {
            let p = l.throttled(t, 0.5);
            assert!(p <= BACKOFF_MAX);
            t += p;
        }
        l.succeeded(t);
        assert_eq!(l.throttled(t, 0.5), BACKOFF_FIRST);
    }
}
