//! Findings raised from Envoy's log (docs/contract.md#4-findings): a small stateful tracker shared by `doctor --wait`
//! and the daemon. Events are recorded with the time they happened; a finding stays active for
//! `--finding-ttl` after its last sighting, and a newer observation that contradicts it (facts
//! the caller learns elsewhere, e.g. from the admin API) clears it at once.
//!
//! What counts:
//! - stream closed with 5 and `... configuration was not found for network "N" in project "P"`
//!   → `MESH_CONFIG_NOT_FOUND` (N and P compared with the VM's); any other 5 →
//!   `MESH_ENTITY_NOT_FOUND`; 7 → `CONTROL_PLANE_PERMISSION_DENIED`; 16 →
//!   `CONTROL_PLANE_UNAUTHENTICATED`;
//! - 13 or 14 *repeatedly* → `CONTROL_PLANE_DISCONNECTED`. Repeatedly means either Envoy itself
//!   says the stream has been closing for 30 s or more (`closed since Ns ago`, or `closed: 4,
//!   ... (previously 14, ... since Ns ago)`), or at least 3 such closes were seen within 2
//!   minutes spanning at least 30 s. Envoy retries within a second and deliberately logs the
//!   first 30 s of 4/8/14 at debug; this rule keeps that same 30 s of patience, so a control
//!   plane that is merely slow to come up is not reported. A close with 5, 7 or 16 is an answer
//!   from the server: it clears an earlier CONTROL_PLANE_DISCONNECTED;
//! - a rejection or a bind failure → `CONFIG_REJECTED` (one per resource kind);
//! - `unable to open file` in a rejection or exit → `ACCESS_LOG_NOT_WRITABLE` (one per path).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use crate::diagnose::log_classifier::{
    ConfigRejected, LogEvent, StreamClosed, classify, grpc_code_name,
};
use crate::finding::{Finding, FindingId};
use crate::observe::envoy_log::{LogEntry, Tail, flush_lag};
use crate::text::truncate_with_ellipsis;

/// Closes of 13/14 further apart than this do not add up to "repeatedly".
pub const DISCONNECT_WINDOW: Duration = Duration::from_secs(120);
/// How long closes must have gone on (Envoy's own threshold before it warns).
pub const DISCONNECT_MIN_SPAN: Duration = Duration::from_secs(30);
/// How many closes within [`DISCONNECT_WINDOW`] make "repeatedly".
pub const DISCONNECT_MIN_CLOSES: usize = 3;

/// Distinct keys kept per finding ID (paths, resource kinds): the log is untrusted input.
const MAX_KEYS_PER_ID: usize = 8;
const MAX_TIMES: usize = 64;
/// Longest detail produced here.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// The VM's facts, for cross-checks in details.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogContext {
    /// The VM's VPC network name (`default`); a full `projects/N/networks/NAME` is accepted.
    pub vm_network: Option<String>,
    /// The VM's project number (`numeric-project-id`).
    pub vm_project_number: Option<String>,
    /// The UID Envoy runs as.
    pub envoy_uid: Option<u32>,
}

/// A fact observed elsewhere that proves log-derived findings are over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contradiction {
    /// Envoy is connected to the control plane and has accepted configuration from it since the
    /// sighting (e.g. `control_plane.connected_state` is 1 and `lds.update_success` grew, or
    /// dynamic listeners arrived). `connected_state` alone is not enough: it is 1 for a moment
    /// on every retry, even when the server then closes the stream with 5.
    ControlPlaneServing,
    /// No dynamic resource has an `error_state` any more (and Envoy is running).
    NoRejectedConfig,
}

impl Contradiction {
    /// The findings this fact clears.
    pub fn clears(self) -> &'static [FindingId] {
        match self {
            Contradiction::ControlPlaneServing => &[
                FindingId::ControlPlaneDisconnected,
                FindingId::MeshConfigNotFound,
                FindingId::MeshEntityNotFound,
                FindingId::ControlPlanePermissionDenied,
                FindingId::ControlPlaneUnauthenticated,
            ],
            Contradiction::NoRejectedConfig => {
                &[FindingId::ConfigRejected, FindingId::AccessLogNotWritable]
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Evidence {
    Stream(StreamClosed),
    Rejected(ConfigRejected),
    Bind { listener: String, reason: String },
    AccessLog { path: String, reason: String },
}

#[derive(Debug, Clone)]
struct Sighting {
    last: Instant,
    evidence: Evidence,
    evidence_at: Instant,
    /// Times of the closes (CONTROL_PLANE_DISCONNECTED only), sorted, within the window.
    times: Vec<Instant>,
    /// Why CONTROL_PLANE_DISCONNECTED holds, once it does; always set for the other IDs.
    qualified: Option<String>,
}

/// The tracker. Time is injected: nothing here reads a clock.
#[derive(Debug, Clone, Default)]
pub struct LogFindings {
    sightings: BTreeMap<(FindingId, String), Sighting>,
    cleared: BTreeMap<FindingId, Instant>,
}

impl LogFindings {
    pub fn new() -> Self {
        Self::default()
    }

    /// Classifies an entry and records its events.
    pub fn record_entry(&mut self, entry: &LogEntry, at: Instant) {
        for ev in classify(entry) {
            self.record(&ev, at);
        }
    }

    /// Records an entry the follower has just read, at `now` less Envoy's flush lag: Envoy
    /// buffers its log and writes it every few seconds, so a line read now may be seconds old,
    /// and a rejection logged before a fix must not look newer than the fix. The lag is read
    /// from the line's own stamp against the wall clock, as for a tail ([`flush_lag`]); none
    /// when the stamp is missing or no zone explains it.
    pub fn record_followed(&mut self, entry: &LogEntry, now: Instant, wall_now: SystemTime) {
        let lag = entry
            .local_millis()
            .map_or(Duration::ZERO, |stamp| flush_lag(stamp, wall_now));
        self.record_entry(entry, now.checked_sub(lag).unwrap_or(now));
    }

    /// Records the entries of a file tail (`doctor`), each at the time it was written, estimated
    /// from its timestamp and the file's mtime ([`Tail::age_of`]); entries of unknown age count
    /// as seen `now`. Entries older than the monotonic clock's origin (before the boot, so from
    /// an Envoy long gone) are skipped.
    pub fn record_tail(&mut self, tail: &Tail, now: Instant, wall_now: SystemTime) {
        for entry in &tail.entries {
            let age = tail.age_of(entry, wall_now).unwrap_or(Duration::ZERO);
            if let Some(at) = now.checked_sub(age) {
                self.record_entry(entry, at);
            }
        }
    }

    /// Records one event seen at `at`: when the line was written, as well as the caller knows
    /// (Envoy flushes its log file every 10 s by default). A sighting no later than a
    /// contradiction of its finding is ignored.
    pub fn record(&mut self, event: &LogEvent, at: Instant) {
        match event {
            LogEvent::StreamClosed(s) => self.record_stream(s, at),
            LogEvent::ConfigRejected(r) => {
                let key = r.kind.clone().unwrap_or_else(|| "config".into());
                self.sight(
                    FindingId::ConfigRejected,
                    key,
                    Evidence::Rejected(r.clone()),
                    at,
                );
            }
            LogEvent::BindFailed { listener, reason } => {
                self.sight(
                    FindingId::ConfigRejected,
                    "Listener".into(),
                    Evidence::Bind {
                        listener: listener.clone(),
                        reason: reason.clone(),
                    },
                    at,
                );
            }
            LogEvent::AccessLogDenied { path, reason } => {
                self.sight(
                    FindingId::AccessLogNotWritable,
                    path.clone(),
                    Evidence::AccessLog {
                        path: path.clone(),
                        reason: reason.clone(),
                    },
                    at,
                );
            }
            LogEvent::InitialFetchTimeout { .. } | LogEvent::Critical { .. } => {}
        }
    }

    fn record_stream(&mut self, s: &StreamClosed, at: Instant) {
        let ev = || Evidence::Stream(s.clone());
        let direct = match s.code {
            5 if config_not_found(&s.message).is_some() => Some(FindingId::MeshConfigNotFound),
            5 => Some(FindingId::MeshEntityNotFound),
            7 => Some(FindingId::ControlPlanePermissionDenied),
            16 => Some(FindingId::ControlPlaneUnauthenticated),
            _ => None,
        };
        if let Some(id) = direct {
            // The server answered: whatever closed the stream before, it is reachable now.
            let k = (FindingId::ControlPlaneDisconnected, String::new());
            if self.sightings.get(&k).is_some_and(|sg| sg.last <= at) {
                self.sightings.remove(&k);
            }
            self.sight(id, String::new(), ev(), at);
            return;
        }
        // `(previously 14, ... since Ns ago)` counts while the stream still fails in transit
        // (4 or 8 now); after an answer from the server it is history.
        let since = if is_disconnect(s.code) {
            Some(s.since_secs)
        } else {
            s.previous
                .as_ref()
                .filter(|p| is_disconnect(p.code) && matches!(s.code, 4 | 8))
                .map(|p| Some(p.since_secs))
        };
        let Some(since) = since else { return };
        let id = FindingId::ControlPlaneDisconnected;
        if !self.sight(id, String::new(), ev(), at) {
            return;
        }
        let Some(sg) = self.sightings.get_mut(&(id, String::new())) else {
            return;
        };
        let pos = sg.times.partition_point(|t| *t <= at);
        sg.times.insert(pos, at);
        if let Some(&newest) = sg.times.last() {
            sg.times
                .retain(|t| newest.saturating_duration_since(*t) <= DISCONNECT_WINDOW);
        }
        if sg.times.len() > MAX_TIMES {
            let excess = sg.times.len() - MAX_TIMES;
            sg.times.drain(..excess);
        }
        if sg.qualified.is_some() {
            return;
        }
        if let Some(secs) = since.filter(|&secs| secs >= DISCONNECT_MIN_SPAN.as_secs()) {
            sg.qualified = Some(format!("Envoy reports it closing for {secs}s"));
        } else if let (Some(first), Some(last)) = (sg.times.first(), sg.times.last()) {
            let span = last.saturating_duration_since(*first);
            if sg.times.len() >= DISCONNECT_MIN_CLOSES && span >= DISCONNECT_MIN_SPAN {
                sg.qualified = Some(format!(
                    "{} closes within {}s",
                    sg.times.len(),
                    span.as_secs()
                ));
            }
        }
    }

    /// Returns false when the sighting was ignored (contradicted already).
    fn sight(&mut self, id: FindingId, key: String, evidence: Evidence, at: Instant) -> bool {
        if self.cleared.get(&id).is_some_and(|c| at <= *c) {
            return false;
        }
        let qualified = (id != FindingId::ControlPlaneDisconnected).then(String::new);
        let k = (id, key);
        if let Some(sg) = self.sightings.get_mut(&k) {
            // The newest evidence, but the ADS stream's over the LRS stream's: it names the
            // stream that carries the configuration.
            if at >= sg.evidence_at && (is_ads(&evidence) || !is_ads(&sg.evidence)) {
                sg.evidence = evidence;
                sg.evidence_at = at;
            }
            sg.last = sg.last.max(at);
            return true;
        }
        // Bound the keys of one ID: evict the one seen least recently.
        let same: Vec<_> = self
            .sightings
            .iter()
            .filter(|((i, _), _)| *i == id)
            .map(|(k, s)| (s.last, k.clone()))
            .collect();
        if same.len() >= MAX_KEYS_PER_ID
            && let Some((_, oldest)) = same.into_iter().min_by_key(|(last, _)| *last)
        {
            self.sightings.remove(&oldest);
        }
        self.sightings.insert(
            k,
            Sighting {
                last: at,
                evidence,
                evidence_at: at,
                times: Vec::new(),
                qualified,
            },
        );
        true
    }

    /// Clears the findings `fact` contradicts, for sightings up to `at`; older lines recorded
    /// later (a delayed flush) are ignored too.
    pub fn contradict(&mut self, fact: Contradiction, at: Instant) {
        for &id in fact.clears() {
            self.sightings.retain(|(i, _), s| *i != id || s.last > at);
            let c = self.cleared.entry(id).or_insert(at);
            *c = (*c).max(at);
        }
    }

    /// Forgets every sighting of `id`.
    pub fn clear(&mut self, id: FindingId) {
        self.sightings.retain(|(i, _), _| *i != id);
    }

    /// The findings active at `now`: seen within `ttl`, and, for CONTROL_PLANE_DISCONNECTED,
    /// repeated. Expired sightings are dropped.
    pub fn active(&mut self, now: Instant, ttl: Duration, ctx: &LogContext) -> Vec<Finding> {
        self.active_keyed(now, ttl, ctx)
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    }

    /// [`Self::active`], each finding with its key: the path for ACCESS_LOG_NOT_WRITABLE, the
    /// resource kind (`Listener`, `Cluster`, ...) for CONFIG_REJECTED, empty otherwise. Lets
    /// the checks tell whether the snapshot already shows the same fault.
    pub fn active_keyed(
        &mut self,
        now: Instant,
        ttl: Duration,
        ctx: &LogContext,
    ) -> Vec<(Finding, String)> {
        self.sightings
            .retain(|_, s| now.saturating_duration_since(s.last) <= ttl);
        self.sightings
            .iter()
            .filter_map(|((id, key), s)| {
                let why = s.qualified.as_deref()?;
                Some((Finding::new(*id, detail(*id, s, why, ctx)), key.clone()))
            })
            .collect()
    }

    /// Whether nothing is being tracked.
    pub fn is_empty(&self) -> bool {
        self.sightings.is_empty()
    }
}

fn is_ads(e: &Evidence) -> bool {
    matches!(e, Evidence::Stream(s) if s.method.as_deref().is_some_and(|m| m.ends_with("AggregatedResources")))
}

fn is_disconnect(code: u32) -> bool {
    matches!(code, 13 | 14)
}

/// `... configuration was not found for network "N" in project "P"` → (N, P).
pub fn config_not_found(message: &str) -> Option<(String, String)> {
    const KEY: &str = "configuration was not found for network \"";
    let i = message.find(KEY)?;
    let r = message.get(i + KEY.len()..)?;
    let end = r.find('"')?;
    let network = r.get(..end)?;
    let r = r.get(end + 1..)?.strip_prefix(" in project \"")?;
    let end = r.find('"')?;
    let project = r.get(..end)?;
    Some((
        truncate_with_ellipsis(network, 256),
        truncate_with_ellipsis(project, 256),
    ))
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn closed_with(s: &StreamClosed) -> String {
    let mut d = format!(
        "{} closed with {} ({})",
        s.stream_name(),
        s.code,
        grpc_code_name(s.code)
    );
    if !s.message.is_empty() {
        d.push_str(": ");
        d.push_str(&s.message);
    }
    d
}

fn detail(id: FindingId, s: &Sighting, why: &str, ctx: &LogContext) -> String {
    let d = match (&s.evidence, id) {
        (Evidence::Stream(st), FindingId::MeshConfigNotFound) => {
            let mut d = closed_with(st);
            if let Some((n, p)) = config_not_found(&st.message) {
                d.push(' ');
                d.push_str(&compare_with_vm(&n, &p, ctx));
            }
            d
        }
        (Evidence::Stream(st), FindingId::ControlPlaneDisconnected) => {
            let (code, message) = if is_disconnect(st.code) {
                (st.code, st.message.as_str())
            } else {
                st.previous
                    .as_ref()
                    .map_or((st.code, ""), |p| (p.code, p.message.as_str()))
            };
            let mut d = format!(
                "{} keeps closing with {} ({})",
                st.stream_name(),
                code,
                grpc_code_name(code)
            );
            if !message.is_empty() {
                d.push_str(": ");
                d.push_str(message);
            } else if code == 13 {
                d.push_str(
                    " and no message, which is how google_grpc reports a server it cannot reach",
                );
            }
            d.push_str(&format!(" ({why})."));
            d
        }
        (Evidence::Stream(st), _) => closed_with(st),
        (Evidence::Rejected(r), _) => {
            let mut d = format!(
                "Envoy rejected {}",
                r.kind.as_deref().unwrap_or("configuration")
            );
            if !r.resources.is_empty() {
                d.push(' ');
                d.push_str(&r.resources.join(", "));
            }
            if let Some(t) = &r.type_url {
                d.push_str(&format!(" ({t})"));
            }
            d.push_str(": ");
            d.push_str(&r.reason);
            d
        }
        (Evidence::Bind { listener, reason }, _) => {
            format!("Envoy could not bind listener '{listener}': {reason}")
        }
        (Evidence::AccessLog { path, reason }, _) => {
            let who = match ctx.envoy_uid {
                Some(uid) => format!("Envoy runs as UID {uid}"),
                None => "the UID Envoy runs as is unknown".to_owned(),
            };
            format!("Envoy cannot open its access log '{path}': {reason}; {who}.")
        }
    };
    truncate_with_ellipsis(&one_line(&d), MAX_DETAIL_BYTES)
}

/// Says which of network and project differ from the VM's, or that both match.
fn compare_with_vm(network: &str, project: &str, ctx: &LogContext) -> String {
    let vm_net = ctx
        .vm_network
        .as_deref()
        .map(|n| n.rsplit('/').next().unwrap_or(n));
    let vm_proj = ctx.vm_project_number.as_deref();
    if vm_net == Some(network) && vm_proj == Some(project) {
        return format!(
            "Network \"{network}\" and project \"{project}\" both match the VM: the forwarding rule is missing (no INTERNAL_SELF_MANAGED forwarding rule in network \"{network}\")."
        );
    }
    let net = match vm_net {
        Some(v) if v == network => format!("network \"{network}\" matches the VM"),
        Some(v) => format!("network \"{network}\" vs VM network \"{v}\""),
        None => format!("network \"{network}\" (the VM's network is unknown)"),
    };
    let proj = match vm_proj {
        Some(v) if v == project => format!("project \"{project}\" matches the VM"),
        Some(v) => format!("project \"{project}\" vs VM project number \"{v}\""),
        None => format!("project \"{project}\" (the VM's project number is unknown)"),
    };
    format!("Envoy asked with {net}; {proj}.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::log_classifier::PreviousClose;

    fn closed(code: u32, message: &str, since: Option<u64>) -> LogEvent {
        LogEvent::StreamClosed(StreamClosed {
            method: Some("StreamAggregatedResources".into()),
            target: Some("trafficdirector.googleapis.com:443".into()),
            code,
            message: message.into(),
            since_secs: since,
            previous: None,
        })
    }

    fn ctx() -> LogContext {
        LogContext {
            vm_network: Some("projects/456/networks/default".into()),
            vm_project_number: Some("456".into()),
            envoy_uid: Some(1337),
        }
    }

    const TTL: Duration = Duration::from_secs(600);

    fn ids(f: &[Finding]) -> Vec<FindingId> {
        f.iter().map(|f| f.id).collect()
    }

    /// A rejection read by the follower 8 s after Envoy stamped it (the flush came late) is
    /// dated 8 s back, whatever Envoy's zone: with a 5 s lifetime it has already ended, where
    /// dating it at the read would keep it.
    #[test]
    fn followed_lines_are_dated_back_by_the_flush_lag() {
        use crate::observe::envoy_log::{EntryAssembler, parse_local_millis};
        let stamp = "2026-12-07 07:11:40.000";
        let mut out = Vec::new();
        let mut a = EntryAssembler::default();
        a.feed(
            format!(
                "[{stamp}][1][warning][config] [x.cc:1] gRPC config for \
                 type.googleapis.com/envoy.config.listener.v3.Listener rejected: bad listener\n"
            )
            .as_bytes(),
            &mut out,
        );
        a.finish(&mut out);
        let entry = out.pop().unwrap();
        let stamp_ms = u64::try_from(parse_local_millis(stamp).unwrap()).unwrap();
        let hour = 3_600_000;
        let t0 = Instant::now();
        let ttl = Duration::from_secs(5);
        for zone_ms in [0, 2 * hour, 5 * hour + hour / 2] {
            // Read 8 s after the stamp, the stamp being local time `zone_ms` east of UTC.
            let wall = SystemTime::UNIX_EPOCH + Duration::from_millis(stamp_ms - zone_ms + 8_000);
            let mut lf = LogFindings::new();
            lf.record_followed(&entry, t0, wall);
            assert!(lf.active(t0, ttl, &ctx()).is_empty(), "zone {zone_ms}");
            // (`active` forgets what has ended: a fresh record for the second look.)
            let mut lf = LogFindings::new();
            lf.record_followed(&entry, t0, wall);
            assert_eq!(
                ids(&lf.active(t0 - Duration::from_secs(4), ttl, &ctx())),
                [FindingId::ConfigRejected],
                "zone {zone_ms}"
            );
        }
        // A stamp no zone explains (a replayed old file): dated at the read.
        let wall = SystemTime::UNIX_EPOCH + Duration::from_millis(stamp_ms + 20 * 86_400_000);
        let mut lf = LogFindings::new();
        lf.record_followed(&entry, t0, wall);
        assert_eq!(
            ids(&lf.active(t0, ttl, &ctx())),
            [FindingId::ConfigRejected]
        );
    }

    #[test]
    fn mesh_config_not_found_compares_with_vm() {
        let t0 = Instant::now();
        let mut lf = LogFindings::new();
        let msg = |n: &str, p: &str| {
            format!(
                "Cloud Service Mesh configuration was not found for network \"{n}\" in project \"{p}\"."
            )
        };
        lf.record(&closed(5, &msg("wrong-net", "123"), None), t0);
        let f = lf.active(t0, TTL, &ctx());
        assert_eq!(ids(&f), [FindingId::MeshConfigNotFound]);
        assert!(
            f[0].detail.contains(
                "network \"wrong-net\" vs VM network \"default\"; project \"123\" vs VM project number \"456\""
            ),
            "{}",
            f[0].detail
        );

        let mut lf = LogFindings::new();
        lf.record(&closed(5, &msg("default", "123"), None), t0);
        let d = &lf.active(t0, TTL, &ctx())[0].detail;
        assert!(
            d.contains(
                "network \"default\" matches the VM; project \"123\" vs VM project number \"456\""
            ),
            "{d}"
        );

        let mut lf = LogFindings::new();
        lf.record(&closed(5, &msg("default", "456"), None), t0);
        let d = &lf.active(t0, TTL, &ctx())[0].detail;
        assert!(
            d.contains("both match the VM: the forwarding rule is missing"),
            "{d}"
        );

        let mut lf = LogFindings::new();
        lf.record(&closed(5, &msg("default", "456"), None), t0);
        let d = &lf.active(t0, TTL, &LogContext::default())[0].detail;
        assert!(d.contains("the VM's network is unknown"), "{d}");
    }

    #[test]
    fn codes_map_to_findings() {
        let t0 = Instant::now();
        let mut lf = LogFindings::new();
        lf.record(&closed(5, "Requested entity was not found.", None), t0);
        lf.record(&closed(7, "Permission denied", None), t0);
        lf.record(&closed(16, "bad token", None), t0);
        lf.record(&closed(0, "Envoy initiated close.", None), t0);
        lf.record(&closed(4, "slow", None), t0);
        assert_eq!(
            ids(&lf.active(t0, TTL, &ctx())),
            [
                FindingId::MeshEntityNotFound,
                FindingId::ControlPlanePermissionDenied,
                FindingId::ControlPlaneUnauthenticated,
            ]
        );
    }

    #[test]
    fn ttl_expires_after_last_sighting() {
        let t0 = Instant::now();
        let mut lf = LogFindings::new();
        lf.record(&closed(7, "x", None), t0);
        lf.record(&closed(7, "x", None), t0 + Duration::from_secs(300));
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(lf.active(at(900), TTL, &ctx()).len(), 1);
        assert_eq!(lf.active(at(901), TTL, &ctx()).len(), 0);
        assert!(lf.is_empty());
    }

    #[test]
    fn disconnected_needs_repetition_or_envoys_own_30s() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        // Three quick closes at startup: not yet.
        let mut lf = LogFindings::new();
        for s in [0, 1, 2] {
            lf.record(&closed(14, "refused", None), at(s));
        }
        assert!(lf.active(at(2), TTL, &ctx()).is_empty());
        // Still closing 30 s later: yes.
        lf.record(&closed(14, "refused", None), at(31));
        let f = lf.active(at(31), TTL, &ctx());
        assert_eq!(ids(&f), [FindingId::ControlPlaneDisconnected]);
        assert!(
            f[0].detail.contains("4 closes within 31s"),
            "{}",
            f[0].detail
        );

        // Closes too far apart (outside the 2-minute window) do not add up.
        let mut lf = LogFindings::new();
        for s in [0, 200, 400] {
            lf.record(&closed(13, "", None), at(s));
        }
        assert!(lf.active(at(400), TTL, &ctx()).is_empty());

        // One line where Envoy says 30 s or more is enough.
        let mut lf = LogFindings::new();
        lf.record(&closed(14, "refused", Some(47)), at(0));
        let f = lf.active(at(0), TTL, &ctx());
        assert!(f[0].detail.contains("closing for 47s"), "{}", f[0].detail);

        // So is the "previously 14 ... since Ns ago" of another code.
        let mut lf = LogFindings::new();
        let LogEvent::StreamClosed(mut s) = closed(4, "deadline", None) else {
            unreachable!()
        };
        s.previous = Some(PreviousClose {
            code: 14,
            message: "refused".into(),
            since_secs: 40,
        });
        lf.record(&LogEvent::StreamClosed(s), at(0));
        let f = lf.active(at(0), TTL, &ctx());
        assert_eq!(ids(&f), [FindingId::ControlPlaneDisconnected]);
        assert!(
            f[0].detail
                .contains("closing with 14 (UNAVAILABLE): refused"),
            "{}",
            f[0].detail
        );

        // google_grpc's empty 13 is explained.
        let mut lf = LogFindings::new();
        lf.record(&closed(13, "", Some(60)), at(0));
        assert!(
            lf.active(at(0), TTL, &ctx())[0]
                .detail
                .contains("google_grpc")
        );
    }

    #[test]
    fn an_answer_from_the_server_ends_disconnected() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut lf = LogFindings::new();
        lf.record(&closed(14, "refused", Some(45)), at(0));
        assert_eq!(
            ids(&lf.active(at(0), TTL, &ctx())),
            [FindingId::ControlPlaneDisconnected]
        );
        let LogEvent::StreamClosed(mut s) = closed(5, "Requested entity was not found.", None)
        else {
            unreachable!()
        };
        s.previous = Some(PreviousClose {
            code: 14,
            message: "refused".into(),
            since_secs: 45,
        });
        lf.record(&LogEvent::StreamClosed(s), at(1));
        assert_eq!(
            ids(&lf.active(at(1), TTL, &ctx())),
            [FindingId::MeshEntityNotFound]
        );
        // Unreachable again later: raised again.
        lf.record(&closed(14, "refused", Some(31)), at(100));
        assert_eq!(lf.active(at(100), TTL, &ctx()).len(), 2);
    }

    #[test]
    fn contradiction_clears_and_blocks_older_lines() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut lf = LogFindings::new();
        lf.record(&closed(7, "x", None), at(0));
        lf.record(
            &LogEvent::AccessLogDenied {
                path: "/var/log/envoy.log".into(),
                reason: "Permission denied".into(),
            },
            at(0),
        );
        lf.contradict(Contradiction::ControlPlaneServing, at(5));
        assert_eq!(
            ids(&lf.active(at(5), TTL, &ctx())),
            [FindingId::AccessLogNotWritable]
        );
        // A line written before the contradiction but read after it stays ignored.
        lf.record(&closed(7, "x", None), at(4));
        assert_eq!(lf.active(at(6), TTL, &ctx()).len(), 1);
        // A newer one raises it again.
        lf.record(&closed(7, "x", None), at(6));
        assert_eq!(lf.active(at(6), TTL, &ctx()).len(), 2);
        lf.contradict(Contradiction::NoRejectedConfig, at(7));
        lf.clear(FindingId::ControlPlanePermissionDenied);
        assert!(lf.active(at(7), TTL, &ctx()).is_empty());
    }

    #[test]
    fn access_log_detail_names_path_and_uid() {
        let t0 = Instant::now();
        let mut lf = LogFindings::new();
        lf.record(
            &LogEvent::AccessLogDenied {
                path: "/var/log/envoy.log".into(),
                reason: "Permission denied".into(),
            },
            t0,
        );
        let f = lf.active(t0, TTL, &ctx());
        assert_eq!(
            f[0].detail,
            "Envoy cannot open its access log '/var/log/envoy.log': Permission denied; Envoy runs as UID 1337."
        );
    }

    #[test]
    fn keys_per_id_are_bounded() {
        let t0 = Instant::now();
        let mut lf = LogFindings::new();
        for i in 0..100u64 {
            lf.record(
                &LogEvent::AccessLogDenied {
                    path: format!("/p/{i}"),
                    reason: "Permission denied".into(),
                },
                t0 + Duration::from_millis(i),
            );
        }
        let f = lf.active(t0 + Duration::from_secs(1), TTL, &ctx());
        assert_eq!(f.len(), MAX_KEYS_PER_ID);
        assert!(f.iter().any(|f| f.detail.contains("/p/99")));
    }
}
