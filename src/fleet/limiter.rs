//! The request budget of `fleet` (pure; time passed in). Three rules:
//!
//! - at most `--max-qps` requests reach the server in any one-second window, whatever the
//!   network and the machines' schedulers do on the way. The server sees a request after it
//!   was started here and before its answer came back, so a request is counted from its start
//!   until a second after its answer: a new one starts only while fewer than `--max-qps` are
//!   counted. Two requests a server could see within one second are then never both let
//!   through beyond the budget, without a guess at the delays (the earlier limiter counted
//!   starts in a one-second window widened by a guessed 250 ms of arrival spread, and so
//!   sustained 20 / 1.25 = 16 a second; this one sustains `max_qps / (1 s + round trip)`:
//!   19 a second at 20 with 50 ms round trips);
//! - starts are spaced by 1 / `--max-qps`, so a budget does not go out as a burst at the
//!   start or after a pause. A start up to [`LATE_SLACK`] after its slot keeps the schedule
//!   (a timer wakes a millisecond or so late; counting each interval from the actual start
//!   would lose that much per request), a later one restarts it (no burst to catch up);
//! - a 429 / `rateLimitExceeded` pauses every request for a backoff that doubles per throttled
//!   round (1 s … 32 s) with jitter (0.5–1.5×), so many readers do not return in step; a
//!   success resets it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The server's counting window.
pub const WINDOW: Duration = Duration::from_secs(1);
/// A start this late keeps the spacing's schedule.
pub const LATE_SLACK: Duration = Duration::from_millis(5);
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(32);

#[derive(Debug)]
pub struct RateLimiter {
    max: usize,
    interval: Duration,
    /// When the next request may start by the spacing (GCRA's theoretical arrival time).
    next: Option<Instant>,
    /// Requests started and not yet answered.
    in_flight: usize,
    /// When the answered requests of the last [`WINDOW`] were answered, oldest first.
    answered: VecDeque<Instant>,
    paused_until: Option<Instant>,
    backoff: Duration,
}

impl RateLimiter {
    pub fn new(max_qps: u32) -> RateLimiter {
        let max_qps = max_qps.max(1);
        RateLimiter {
            max: max_qps as usize,
            interval: WINDOW / max_qps,
            next: None,
            in_flight: 0,
            answered: VecDeque::new(),
            paused_until: None,
            backoff: Duration::ZERO,
        }
    }

    /// Takes a slot for a request starting `now`; [`RateLimiter::answered`] must follow when
    /// its answer (or its failure) is in. Else says until when to wait: `Some(t)` at the
    /// latest, `None` for an answer; an answer may free a slot earlier in either case.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Option<Instant>> {
        if let Some(p) = self.paused_until
            && p > now
        {
            return Err(Some(p));
        }
        while self.answered.front().is_some_and(|a| *a + WINDOW <= now) {
            self.answered.pop_front();
        }
        if self.in_flight + self.answered.len() >= self.max {
            return Err(self.answered.front().map(|a| *a + WINDOW));
        }
        let scheduled = match self.next {
            Some(next) if now < next => return Err(Some(next)),
            Some(next) if now < next + LATE_SLACK => next,
            _ => now,
        };
        self.next = Some(scheduled + self.interval);
        self.in_flight += 1;
        Ok(())
    }

    /// A request started by [`RateLimiter::try_acquire`] was answered (or failed, or timed
    /// out) at `now`, read after the answer was in.
    pub fn answered(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        // Callers read the time before taking the lock: keep the order.
        let at = self
            .answered
            .iter()
            .rposition(|a| *a <= now)
            .map_or(0, |p| p + 1);
        self.answered.insert(at, now);
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

    /// The most instants within any half-open window `[t, t + 1 s)` (the emulator's count).
    fn peak(mut at: Vec<Instant>) -> usize {
        at.sort();
        let mut lo = 0;
        let mut best = 0;
        for (hi, t) in at.iter().enumerate() {
            while at.get(lo).is_some_and(|first| *first + WINDOW <= *t) {
                lo += 1;
            }
            best = best.max(hi + 1 - lo);
        }
        best
    }

    /// Callers that always have a request to start, driven as `Budget` drives the limiter,
    /// in scripted time: a request started at `s` is answered after `rtt(k)`; a caller told
    /// to wait wakes at the time named or at the next answer, whichever is first, plus
    /// `late(k)`. Returns each request's (start, answer).
    fn drive(
        qps: u32,
        secs: u64,
        rtt: impl Fn(usize) -> Duration,
        late: impl Fn(usize) -> Duration,
    ) -> Vec<(Instant, Instant)> {
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(secs);
        let mut l = RateLimiter::new(qps);
        let mut done: Vec<(Instant, Instant)> = Vec::new();
        // Answers still to come.
        let mut pending: Vec<(Instant, Instant)> = Vec::new();
        let mut now = t0;
        while now < end {
            // Answers due by now, in their order.
            pending.sort_by_key(|(_, a)| *a);
            while pending.first().is_some_and(|(_, a)| *a <= now) {
                let r = pending.remove(0);
                l.answered(r.1);
                done.push(r);
            }
            let k = done.len() + pending.len();
            match l.try_acquire(now) {
                Ok(()) => pending.push((now, now + rtt(k))),
                Err(at) => {
                    let answer = pending.iter().map(|(_, a)| *a).min();
                    let wake = match (at, answer) {
                        (Some(t), Some(a)) => t.min(a),
                        (Some(t), None) => t,
                        (None, Some(a)) => a,
                        (None, None) => panic!("told to wait for an answer, none to come"),
                    };
                    assert!(wake >= now, "told to wait for a time already past");
                    now = wake.max(now + Duration::from_nanos(1)) + late(k);
                }
            }
        }
        done.extend(pending);
        done
    }

    /// Wherever between its start and its answer the server sees each request (first, last,
    /// between, in a mix no pattern favours), no second holds more than `max`.
    fn check_every_arrival(qps: u32, reqs: &[(Instant, Instant)]) {
        for pick in 0..4usize {
            let arrivals: Vec<Instant> = reqs
                .iter()
                .enumerate()
                .map(|(k, (s, a))| match (k * 7 + pick) % 4 {
                    0 => *s,
                    1 => *a,
                    2 => *s + (*a - *s) / 2,
                    _ => {
                        if pick % 2 == 0 {
                            *s
                        } else {
                            *a
                        }
                    }
                })
                .collect();
            let p = peak(arrivals);
            assert!(p <= qps as usize, "{qps}/s: {p} arrivals within a second");
        }
    }

    #[test]
    fn never_more_than_max_at_the_server_in_any_second_whatever_the_delays() {
        for qps in [1u32, 2, 20, 400] {
            // Round trips of 0.1 to 700 ms, and wake-ups up to 4 ms late, neither periodic.
            let reqs = drive(
                qps,
                20,
                |k| Duration::from_micros(100 + (k as u64 * 104_729) % 700_000),
                |k| Duration::from_micros((k as u64 * 7919) % 4000),
            );
            check_every_arrival(qps, &reqs);
        }
    }

    #[test]
    fn sustains_max_over_one_second_plus_the_round_trip() {
        for (qps, rtt_ms) in [(20u32, 50u64), (20, 0), (400, 2), (1, 50)] {
            let rtt = Duration::from_millis(rtt_ms);
            let reqs = drive(qps, 60, |_| rtt, |k| Duration::from_micros(k as u64 % 1500));
            check_every_arrival(qps, &reqs);
            let expected = 60.0 * f64::from(qps) / (1.0 + rtt.as_secs_f64());
            let got = reqs.len() as f64;
            assert!(
                got >= expected * 0.99 - 1.0,
                "{qps}/s at {rtt_ms} ms a round trip: {got} in 60 s, expected {expected:.0}"
            );
        }
    }

    #[test]
    fn starts_are_spaced_and_an_idle_time_gives_no_burst() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(4);
        let i = Duration::from_millis(250);
        assert!(l.try_acquire(t0).is_ok());
        l.answered(t0 + Duration::from_millis(1));
        assert_eq!(
            l.try_acquire(t0 + Duration::from_millis(10)),
            Err(Some(t0 + i))
        );
        // 3 ms late: the schedule is kept.
        assert!(l.try_acquire(t0 + i + Duration::from_millis(3)).is_ok());
        assert_eq!(
            l.try_acquire(t0 + i * 2 - Duration::from_millis(1)),
            Err(Some(t0 + i * 2))
        );
        l.answered(t0 + i * 2);
        // Idle for ten seconds: one start, then the interval again, not a burst.
        let later = t0 + Duration::from_secs(10);
        assert!(l.try_acquire(later).is_ok());
        assert_eq!(l.try_acquire(later), Err(Some(later + i)));
    }

    #[test]
    fn a_request_counts_until_a_second_after_its_answer() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(2);
        let i = Duration::from_millis(500);
        assert!(l.try_acquire(t0).is_ok());
        assert!(l.try_acquire(t0 + i).is_ok());
        // Both in flight: only an answer can free a slot.
        assert_eq!(l.try_acquire(t0 + i * 2), Err(None));
        let a = t0 + Duration::from_millis(1200);
        l.answered(a);
        // Answered at 1.2 s: counted until 2.2 s.
        assert_eq!(
            l.try_acquire(t0 + Duration::from_millis(1300)),
            Err(Some(a + WINDOW))
        );
        assert!(l.try_acquire(a + WINDOW).is_ok());
        // Answers recorded out of order are kept in order.
        let mut l = RateLimiter::new(3);
        for k in 0..3 {
            assert!(l.try_acquire(t0 + i * k).is_ok());
        }
        l.answered(t0 + Duration::from_millis(2000));
        l.answered(t0 + Duration::from_millis(1900));
        l.answered(t0 + Duration::from_millis(2100));
        assert_eq!(
            l.try_acquire(t0 + Duration::from_millis(2500)),
            Err(Some(t0 + Duration::from_millis(2900)))
        );
    }

    #[test]
    fn a_pause_holds_every_start_until_it_ends() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(20);
        assert!(l.try_acquire(t0).is_ok());
        let answered = t0 + Duration::from_millis(60);
        l.answered(answered);
        let pause = l.throttled(answered, 0.5);
        assert_eq!(pause, BACKOFF_FIRST);
        let end = answered + pause;
        assert_eq!(
            l.try_acquire(t0 + Duration::from_millis(100)),
            Err(Some(end))
        );
        assert!(l.try_acquire(end).is_ok());
        assert_eq!(l.try_acquire(end), Err(Some(end + WINDOW / 20)));
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
