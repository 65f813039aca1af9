//! Publishing the `gce-service-proxy` guest attributes (docs/contract.md#3-guest-attributes) within the metadata server's
//! budget: at most 10 writes a minute and 3 a second per VM, above which Compute Engine may drop
//! values. The scheduler is pure (time is passed in); [`spawn_writer`] drives it against a sink.
//!
//! Policy: only a value that differs from what was last written is written; bursts coalesce
//! (the latest value per key wins); changes go before the heartbeat, unless the heartbeat is
//! overdue by a whole interval (so churn cannot make a live agent look dead). A 403 "disabled"
//! is reported once and probed every [`DISABLED_RETRY`]; other failures back off with jitter.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::Notify;

use crate::text::{attribute_value, redact_secrets};

pub use crate::contract::guest_attributes::{NAMESPACE, keys};

/// The order pending changes are written in: what an SRE looks at first goes first.
const PRIORITY: [&str; 5] = [
    keys::HEALTH,
    keys::FINDINGS,
    keys::PROXY_STATE,
    keys::LAST_FAILURE,
    keys::PROXY_VERSION,
];

/// Windows are a little longer than the server's so network delay cannot squeeze two of our
/// windows into one of its.
const MINUTE_WINDOW: Duration = Duration::from_millis(61_000);
const SECOND_WINDOW: Duration = Duration::from_millis(1_100);
/// The metadata server's limits (docs/outside-world.md#guest-attributes): per VM, whoever writes.
pub const SERVER_WRITES_PER_MINUTE: usize = 10;
pub const SERVER_WRITES_PER_SECOND: usize = 3;
/// What the agent allows itself: the rest is left to install scripts (`report-bootstrap`),
/// whose writes the server counts in the same budget. Over budget the server drops values
/// silently (it still answers 200), so sharing badly would lose findings without an error.
pub const WRITES_PER_MINUTE: usize = 8;
pub const WRITES_PER_SECOND: usize = 2;
/// Every so often all values are written again, so a value the server dropped (someone
/// else spent the budget) does not stay wrong.
pub const RESYNC_EVERY: Duration = Duration::from_secs(600);
pub const DISABLED_RETRY: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const HEARTBEAT_PRIORITY_AFTER: Duration = Duration::from_secs(120);
pub const MIN_HEARTBEAT_SPACING: Duration = Duration::from_secs(15);

/// How long a failed write (a timeout: the server may have it and process it later) is taken
/// to be still arriving, unless a later write succeeds first.
pub const UNCONFIRMED_FOR: Duration = MINUTE_WINDOW;

/// Sliding-window limiter over the instants of past writes.
///
/// A write that failed may still reach the server: one that stalls, then processes the
/// requests it held, sees them all at once. Such a write counts as happening *now* until a
/// later write succeeds (the server is answering again: it is counted then) or
/// [`UNCONFIRMED_FOR`] has passed (counted at that instant), so the writes the server can
/// process together stay within its limits.
#[derive(Debug, Clone)]
pub struct WriteBudget {
    writes: VecDeque<Instant>,
    /// Failed writes, by the instant until which they are taken as still arriving.
    unconfirmed: Vec<Instant>,
}

impl Default for WriteBudget {
    fn default() -> Self {
        WriteBudget {
            writes: VecDeque::with_capacity(WRITES_PER_MINUTE),
            unconfirmed: Vec::new(),
        }
    }
}

impl WriteBudget {
    /// Whether one more write at `at` stays within both windows.
    fn fits(&self, at: Instant) -> bool {
        [
            (WRITES_PER_SECOND, SECOND_WINDOW),
            (WRITES_PER_MINUTE, MINUTE_WINDOW),
        ]
        .iter()
        .all(|&(limit, window)| {
            // An unconfirmed write counts as a write at its expiry, and as one now before it.
            let counted = self
                .writes
                .iter()
                .chain(&self.unconfirmed)
                .filter(|x| at < **x + window)
                .count();
            counted < limit
        })
    }

    /// The earliest instant at or after `now` when one more write stays within both windows.
    pub fn next_allowed(&self, now: Instant) -> Instant {
        // Counts only fall as time passes, at an entry's instant plus a window.
        let mut candidates: Vec<Instant> = self
            .writes
            .iter()
            .chain(&self.unconfirmed)
            .flat_map(|x| [*x + SECOND_WINDOW, *x + MINUTE_WINDOW])
            .filter(|c| *c > now)
            .collect();
        candidates.push(now);
        candidates.sort();
        candidates
            .into_iter()
            .find(|c| self.fits(*c))
            .unwrap_or(now + MINUTE_WINDOW + UNCONFIRMED_FOR)
    }

    pub fn record(&mut self, at: Instant) {
        self.writes.push_back(at);
        while self.writes.len() > WRITES_PER_MINUTE {
            self.writes.pop_front();
        }
    }

    /// A write handed out (and recorded) failed at `now`: the server may still process it.
    pub fn unconfirmed(&mut self, now: Instant) {
        self.unconfirmed.push(now + UNCONFIRMED_FOR);
        self.settle(now);
    }

    /// A write succeeded at `now`: the server answers again, so the failed writes it held have
    /// been processed by now (or never will be).
    pub fn confirmed(&mut self, now: Instant) {
        for x in std::mem::take(&mut self.unconfirmed) {
            self.writes.push_back(x.min(now));
        }
        self.settle(now);
    }

    /// Unconfirmed writes whose time is up become writes at that time.
    fn settle(&mut self, now: Instant) {
        let (due, keep): (Vec<Instant>, Vec<Instant>) =
            self.unconfirmed.iter().partition(|x| **x <= now);
        self.unconfirmed = keep;
        for x in due {
            self.writes.push_back(x);
        }
        let mut sorted: Vec<Instant> = self.writes.drain(..).collect();
        sorted.sort();
        let skip = sorted.len().saturating_sub(WRITES_PER_MINUTE);
        self.writes.extend(sorted.into_iter().skip(skip));
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PutError {
    /// 403 `Guest attributes endpoint access is disabled.`
    #[error("guest attributes are disabled on this VM")]
    Disabled,
    /// The server answered with an error: the write will not be processed later.
    #[error("{0}")]
    Failed(String),
    /// No answer (a timeout): the server may still hold the write and process it later.
    #[error("{0}")]
    Unanswered(String),
}

/// What happened to a write, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishEvent {
    Written {
        key: &'static str,
    },
    /// First 403 after success (or start): report once.
    Disabled,
    /// A write succeeded after guest attributes had been disabled.
    Reenabled,
    Failed {
        key: &'static str,
        error: String,
    },
}

#[derive(Debug)]
pub struct Publisher {
    heartbeat_interval: Duration,
    desired: BTreeMap<&'static str, String>,
    published: BTreeMap<&'static str, String>,
    heartbeat: Option<String>,
    last_heartbeat_write: Option<Instant>,
    budget: WriteBudget,
    retry_at: Option<Instant>,
    failures: u32,
    disabled: bool,
    /// Nothing is written before the first complete set of values (the first cycle), so the
    /// start-up burst coalesces instead of spending the budget on intermediate values.
    held: bool,
    last_resync: Option<Instant>,
}

impl Publisher {
    pub fn new(heartbeat_interval: Duration) -> Self {
        Publisher {
            heartbeat_interval,
            desired: BTreeMap::new(),
            published: BTreeMap::new(),
            heartbeat: None,
            last_heartbeat_write: None,
            budget: WriteBudget::default(),
            retry_at: None,
            failures: 0,
            disabled: false,
            held: false,
            last_resync: None,
        }
    }

    /// Forgets what was written once every [`RESYNC_EVERY`], so every value is written again.
    fn maybe_resync(&mut self, now: Instant) {
        match self.last_resync {
            None => self.last_resync = Some(now),
            Some(t) if now.saturating_duration_since(t) >= RESYNC_EVERY => {
                self.published.clear();
                self.last_resync = Some(now);
            }
            Some(_) => {}
        }
    }

    /// Holds writes until [`Publisher::release`].
    pub fn hold(&mut self) {
        self.held = true;
    }

    pub fn release(&mut self) {
        self.held = false;
    }

    pub fn set_heartbeat_interval(&mut self, interval: Duration) {
        self.heartbeat_interval = interval;
    }

    /// The value `key` should have. Sanitised here: one line, ≤ 1024 bytes, no credentials.
    pub fn set(&mut self, key: &'static str, value: &str) {
        self.desired
            .insert(key, attribute_value(&redact_secrets(value)));
    }

    /// The time of the agent's last completed cycle (RFC 3339).
    pub fn set_heartbeat(&mut self, value: String) {
        self.heartbeat = Some(value);
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled
    }

    /// Heartbeats are at least [`MIN_HEARTBEAT_SPACING`] apart whatever the interval, so at
    /// most 4 of the 10 writes a minute go to them and changes keep the rest.
    fn heartbeat_spacing(&self) -> Duration {
        self.heartbeat_interval.max(MIN_HEARTBEAT_SPACING)
    }

    fn heartbeat_due(&self, now: Instant) -> bool {
        let spacing = self.heartbeat_spacing();
        self.heartbeat.is_some()
            && self
                .last_heartbeat_write
                .is_none_or(|t| now.saturating_duration_since(t) >= spacing)
    }

    /// Overdue enough to go before changes: two intervals, and at least two minutes, so a
    /// short heartbeat interval cannot starve real changes, while `status` (which calls a
    /// heartbeat older than 5 minutes dead) never sees a live agent as dead.
    fn heartbeat_overdue(&self, now: Instant) -> bool {
        let overdue = (self.heartbeat_spacing() * 2).max(HEARTBEAT_PRIORITY_AFTER);
        self.heartbeat.is_some()
            && self
                .last_heartbeat_write
                .is_none_or(|t| now.saturating_duration_since(t) >= overdue)
    }

    fn pending_change(&self) -> Option<&'static str> {
        let changed = |k: &&'static str| self.desired.get(*k) != self.published.get(*k);
        PRIORITY
            .iter()
            .copied()
            .find(|k| self.desired.contains_key(k) && changed(k))
            .or_else(|| self.desired.keys().copied().find(|k| changed(k)))
    }

    /// The most important write wanted now, budget aside.
    pub fn wanted(&self, now: Instant) -> Option<(&'static str, String)> {
        let heartbeat = || {
            self.heartbeat
                .clone()
                .map(|v| (keys::HEARTBEAT, attribute_value(&v)))
        };
        if self.heartbeat_overdue(now) {
            return heartbeat();
        }
        if let Some(key) = self.pending_change() {
            return self.desired.get(key).map(|v| (key, v.clone()));
        }
        if self.heartbeat_due(now) {
            return heartbeat();
        }
        None
    }

    /// When the writer should look again (None: only when something is set).
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        if self.held {
            return None;
        }
        let blocked_until = self
            .retry_at
            .unwrap_or(now)
            .max(self.budget.next_allowed(now));
        if self.wanted(now).is_some() {
            return Some(blocked_until);
        }
        // Nothing now: the heartbeat becomes due later.
        let due = match (self.heartbeat.as_ref(), self.last_heartbeat_write) {
            (Some(_), Some(t)) => t + self.heartbeat_spacing(),
            _ => return None,
        };
        Some(due.max(blocked_until))
    }

    /// The write to perform now, if the budget and backoff allow; it is counted in the budget.
    pub fn poll(&mut self, now: Instant) -> Option<(&'static str, String)> {
        if self.held {
            return None;
        }
        self.maybe_resync(now);
        if self.retry_at.is_some_and(|t| now < t) || self.budget.next_allowed(now) > now {
            return None;
        }
        let write = self.wanted(now)?;
        self.budget.record(now);
        Some(write)
    }

    fn failed(&mut self, key: &'static str, error: String, now: Instant) -> PublishEvent {
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now + backoff(self.failures));
        PublishEvent::Failed { key, error }
    }

    /// Records the outcome of a write handed out by [`Publisher::poll`].
    pub fn complete(
        &mut self,
        key: &'static str,
        value: String,
        result: Result<(), PutError>,
        now: Instant,
    ) -> PublishEvent {
        match result {
            Ok(()) => {
                self.budget.confirmed(now);
                let was_disabled = std::mem::take(&mut self.disabled);
                self.failures = 0;
                self.retry_at = None;
                if key == keys::HEARTBEAT {
                    self.last_heartbeat_write = Some(now);
                } else {
                    self.published.insert(key, value);
                }
                if was_disabled {
                    PublishEvent::Reenabled
                } else {
                    PublishEvent::Written { key }
                }
            }
            Err(PutError::Disabled) => {
                self.retry_at = Some(now + DISABLED_RETRY);
                if std::mem::replace(&mut self.disabled, true) {
                    PublishEvent::Failed {
                        key,
                        error: PutError::Disabled.to_string(),
                    }
                } else {
                    PublishEvent::Disabled
                }
            }
            Err(PutError::Unanswered(error)) => {
                self.budget.unconfirmed(now);
                self.failed(key, error, now)
            }
            Err(PutError::Failed(error)) => self.failed(key, error, now),
        }
    }
}

/// 1 s, 2 s, 4 s ... up to 5 minutes, each scaled by a random factor in [0.5, 1).
pub fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(1u64 << failures.saturating_sub(1).min(9)).min(MAX_BACKOFF);
    base.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// Where attribute writes go (the metadata server in production).
pub trait AttributeSink: Send + Sync + 'static {
    fn put(
        &self,
        key: &'static str,
        value: &str,
    ) -> impl std::future::Future<Output = Result<(), PutError>> + Send;
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct PublishCounters {
    pub writes: AtomicU64,
    pub errors: AtomicU64,
}

/// Shared between the agent loop (which sets values) and the writer task.
#[derive(Clone)]
pub struct PublisherHandle {
    inner: Arc<Mutex<Publisher>>,
    wake: Arc<Notify>,
    pub counters: Arc<PublishCounters>,
}

impl PublisherHandle {
    pub fn new(heartbeat_interval: Duration) -> Self {
        PublisherHandle {
            inner: Arc::new(Mutex::new(Publisher::new(heartbeat_interval))),
            wake: Arc::new(Notify::new()),
            counters: Arc::new(PublishCounters::default()),
        }
    }

    /// Applies `f` to the publisher and wakes the writer.
    pub fn update(&self, f: impl FnOnce(&mut Publisher)) {
        if let Ok(mut p) = self.inner.lock() {
            f(&mut p);
        }
        self.wake.notify_one();
    }

    pub fn is_disabled(&self) -> bool {
        self.inner.lock().map(|p| p.is_disabled()).unwrap_or(false)
    }
}

/// Runs the writer until the task is dropped. `on_event` sees every outcome (for logging).
pub fn spawn_writer<S: AttributeSink>(
    handle: PublisherHandle,
    sink: S,
    on_event: impl Fn(&PublishEvent) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now = tokio::time::Instant::now().into_std();
            let (write, wake) = match handle.inner.lock() {
                Ok(mut p) => (p.poll(now), p.next_wake(now)),
                Err(_) => return,
            };
            if let Some((key, value)) = write {
                let result = sink.put(key, &value).await;
                let counter = if result.is_ok() {
                    &handle.counters.writes
                } else {
                    &handle.counters.errors
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let done = tokio::time::Instant::now().into_std();
                let event = match handle.inner.lock() {
                    Ok(mut p) => p.complete(key, value, result, done),
                    Err(_) => return,
                };
                on_event(&event);
                continue;
            }
            match wake {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                        () = handle.wake.notified() => {}
                    }
                }
                None => handle.wake.notified().await,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metadata server that stalls from the start for `stall`: writes sent meanwhile time
    /// out (after 5 s) on our side but are processed when the stall ends, as the server may;
    /// later writes are processed and answered at once. Values change every 300 ms and the
    /// heartbeat every second, for 5 minutes. Returns the instants the server processed writes.
    fn stalled_server_run(stall: Duration) -> Vec<Instant> {
        let t0 = Instant::now();
        let stall_end = t0 + stall;
        let mut p = Publisher::new(Duration::from_secs(15));
        let mut processed = Vec::new();
        let mut now = t0;
        let mut n = 0u64;
        while now < t0 + Duration::from_secs(300) {
            n += 1;
            p.set(keys::FINDINGS, &format!("v{}", n / 3));
            p.set_heartbeat(format!("h{}", n / 10));
            if let Some((key, value)) = p.poll(now) {
                if now < stall_end {
                    processed.push(stall_end);
                    now += Duration::from_secs(5);
                    p.complete(
                        key,
                        value,
                        Err(PutError::Unanswered("timed out".into())),
                        now,
                    );
                } else {
                    processed.push(now);
                    now += Duration::from_millis(20);
                    p.complete(key, value, Ok(()), now);
                }
            }
            now += Duration::from_millis(100);
        }
        processed.sort();
        processed
    }

    /// The most writes the server processed in any window of `w` (windows ending at a write).
    fn densest(processed: &[Instant], w: Duration) -> usize {
        processed
            .iter()
            .map(|end| {
                processed
                    .iter()
                    .filter(|t| **t <= *end && *end - **t < w)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn a_stalled_server_processing_timed_out_writes_late_stays_within_its_limits() {
        for secs in [3, 8, 12, 20, 30, 45, 60] {
            let processed = stalled_server_run(Duration::from_secs(secs));
            let per_second = densest(&processed, Duration::from_secs(1));
            let per_minute = densest(&processed, Duration::from_secs(60));
            assert!(
                per_second <= SERVER_WRITES_PER_SECOND && per_minute <= SERVER_WRITES_PER_MINUTE,
                "stall {secs}s: {per_second}/s, {per_minute}/min"
            );
            // And the agent is not silenced: writes go on after the stall.
            assert!(
                processed.len() > 20,
                "stall {secs}s: {} writes",
                processed.len()
            );
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Simulates a writer that writes whenever allowed, for `total` of simulated time, with
    /// values changing every `churn`; returns the write instants (offsets) and keys.
    fn simulate(
        heartbeat: Duration,
        churn: Duration,
        total: Duration,
    ) -> Vec<(Duration, &'static str)> {
        let t0 = Instant::now();
        let mut p = Publisher::new(heartbeat);
        let mut writes = Vec::new();
        let mut next_change = Duration::ZERO;
        let mut counter = 0u64;
        let mut t = Duration::ZERO;
        let step = secs(0.05);
        while t < total {
            let now = t0 + t;
            p.set_heartbeat(format!("hb {}", t.as_secs()));
            if t >= next_change {
                counter += 1;
                p.set(keys::FINDINGS, &format!("F{counter}"));
                p.set(
                    keys::HEALTH,
                    if counter % 2 == 0 { "OK" } else { "FAILING" },
                );
                next_change += churn;
            }
            while let Some((k, v)) = p.poll(now) {
                writes.push((t, k));
                p.complete(k, v, Ok(()), now);
            }
            t += step;
        }
        writes
    }

    fn assert_within_budget(writes: &[(Duration, &'static str)]) {
        for (i, (t, _)) in writes.iter().enumerate() {
            let in_minute = writes[i..]
                .iter()
                .take_while(|(u, _)| *u < *t + secs(60.0))
                .count();
            let in_second = writes[i..]
                .iter()
                .take_while(|(u, _)| *u < *t + secs(1.0))
                .count();
            assert!(
                in_minute <= SERVER_WRITES_PER_MINUTE - 2,
                "{in_minute} writes in a minute from {t:?}"
            );
            assert!(
                in_second < SERVER_WRITES_PER_SECOND,
                "{in_second} writes in a second from {t:?}"
            );
        }
    }

    #[test]
    fn churn_and_fast_heartbeat_stay_within_budget() {
        for (hb, churn) in [(0.5, 0.1), (60.0, 0.2), (1.0, 5.0), (10.0, 1.0)] {
            let w = simulate(secs(hb), secs(churn), secs(600.0));
            assert_within_budget(&w);
            assert!(w.len() > 50, "writes still happen: {}", w.len());
        }
    }

    #[test]
    fn heartbeat_is_not_starved_by_churn() {
        let w = simulate(secs(60.0), secs(0.1), secs(900.0));
        let beats: Vec<Duration> = w
            .iter()
            .filter(|(_, k)| *k == keys::HEARTBEAT)
            .map(|(t, _)| *t)
            .collect();
        assert!(beats.len() >= 6, "{beats:?}");
        for pair in beats.windows(2) {
            assert!(pair[1] - pair[0] <= secs(125.0), "{beats:?}");
        }
    }

    #[test]
    fn unchanged_values_are_not_rewritten() {
        let t0 = Instant::now();
        let mut p = Publisher::new(secs(60.0));
        p.set(keys::HEALTH, "OK");
        let (k, v) = p.poll(t0).unwrap();
        p.complete(k, v, Ok(()), t0);
        p.set(keys::HEALTH, "OK");
        assert_eq!(p.poll(t0 + secs(2.0)), None);
        // A flip and back before the write coalesces to nothing.
        p.set(keys::HEALTH, "FAILING");
        p.set(keys::HEALTH, "OK");
        assert_eq!(p.poll(t0 + secs(3.0)), None);
    }

    #[test]
    fn changes_go_first_in_priority_order() {
        let t0 = Instant::now();
        let mut p = Publisher::new(secs(60.0));
        p.set_heartbeat("t".into());
        let (k, v) = p.poll(t0).unwrap();
        assert_eq!(k, keys::HEARTBEAT); // never written: overdue
        p.complete(k, v, Ok(()), t0);
        p.set(keys::PROXY_VERSION, "v");
        p.set(keys::FINDINGS, "A");
        p.set(keys::HEALTH, "FAILING");
        let order: Vec<&str> = (0..3)
            .map(|i| {
                let now = t0 + secs(2.0 * (i as f64 + 1.0));
                let (k, v) = p.poll(now).unwrap();
                p.complete(k, v, Ok(()), now);
                k
            })
            .collect();
        assert_eq!(order, [keys::HEALTH, keys::FINDINGS, keys::PROXY_VERSION]);
    }

    #[test]
    fn a_short_heartbeat_interval_does_not_starve_changes() {
        let t0 = Instant::now();
        let mut p = Publisher::new(secs(1.0));
        let mut now = t0;
        let mut written = Vec::new();
        for i in 0..120 {
            p.set_heartbeat(format!("hb{i}"));
            p.set(keys::FINDINGS, &format!("F{}", i / 10));
            if let Some((k, v)) = p.poll(now) {
                written.push(k);
                p.complete(k, v, Ok(()), now);
            }
            now += secs(1.0);
        }
        let changes = written.iter().filter(|k| **k == keys::FINDINGS).count();
        let beats = written.iter().filter(|k| **k == keys::HEARTBEAT).count();
        assert!(
            changes >= 10,
            "{changes} of 12 changes written: {written:?}"
        );
        assert!((6..=9).contains(&beats), "{beats} heartbeats: {written:?}");
    }

    #[test]
    fn values_are_written_again_after_a_while() {
        let t0 = Instant::now();
        let mut p = Publisher::new(secs(60.0));
        p.set(keys::HEALTH, "OK");
        let (k, v) = p.poll(t0).unwrap();
        p.complete(k, v, Ok(()), t0);
        assert_eq!(p.poll(t0 + secs(30.0)), None);
        let later = t0 + RESYNC_EVERY + secs(1.0);
        assert_eq!(p.poll(later).map(|(k, _)| k), Some(keys::HEALTH));
    }

    #[test]
    fn held_until_released() {
        let t0 = Instant::now();
        let mut p = Publisher::new(secs(60.0));
        p.hold();
        p.set(keys::HEALTH, "OK");
        assert_eq!(p.poll(t0), None);
        assert_eq!(p.next_wake(t0), None);
        p.release();
        assert_eq!(p.poll(t0).map(|(k, _)| k), Some(keys::HEALTH));
    }

    #[test]
    fn values_are_sanitised() {
        let mut p = Publisher::new(secs(60.0));
        p.set(
            keys::LAST_FAILURE,
            &format!("boom\nBearer ya29.secret {}", "x".repeat(3000)),
        );
        let (_, v) = p.poll(Instant::now()).unwrap();
        assert!(
            v.len() <= 1024 && !v.contains('\n') && !v.contains("ya29.secret"),
            "{v}"
        );
    }

    #[test]
    fn disabled_is_reported_once_and_retried_slowly() {
        let t0 = Instant::now();
        let mut p = Publisher::new(secs(1.0));
        p.set(keys::HEALTH, "OK");
        let (k, v) = p.poll(t0).unwrap();
        assert_eq!(
            p.complete(k, v, Err(PutError::Disabled), t0),
            PublishEvent::Disabled
        );
        assert!(p.is_disabled());
        // Nothing for almost five minutes, whatever changes.
        for s in 1..299 {
            p.set(keys::HEALTH, if s % 2 == 0 { "OK" } else { "FAILING" });
            assert_eq!(p.poll(t0 + secs(s as f64)), None, "at {s}s");
        }
        let now = t0 + DISABLED_RETRY;
        let (k, v) = p.poll(now).unwrap();
        assert!(matches!(
            p.complete(k, v, Err(PutError::Disabled), now),
            PublishEvent::Failed { .. }
        ));
        let now = now + DISABLED_RETRY;
        let (k, v) = p.poll(now).unwrap();
        assert_eq!(p.complete(k, v, Ok(()), now), PublishEvent::Reenabled);
        assert!(!p.is_disabled());
    }

    #[test]
    fn failures_back_off() {
        let t0 = Instant::now();
        let mut p = Publisher::new(secs(60.0));
        p.set(keys::HEALTH, "OK");
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..8 {
            let wake = p.next_wake(now).unwrap();
            gaps.push(wake.saturating_duration_since(now));
            now = wake.max(now);
            let (k, v) = p.poll(now).unwrap();
            p.complete(k, v, Err(PutError::Failed("503".into())), now);
        }
        assert!(gaps[7] >= secs(30.0), "{gaps:?}");
        assert!(p.next_wake(now).unwrap() - now <= MAX_BACKOFF);
    }
}
