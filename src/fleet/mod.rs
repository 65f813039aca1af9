//! `service-proxy-agent fleet` (docs/contract.md#9-fleet): the state of many VMs at once, read from Google's
//! APIs. [`compute`] lists the VMs and reads each one's `gce-service-proxy/` guest attributes
//! under a [`limiter`]; [`logging`] reads the agents' `state` events (docs/contract.md#6-logs) in a few pages.
//! Both produce [`VmReport`]s; [`summarize`] and the renderers here are pure (time passed in).
//! `crate::cmd::fleet` is the command line and the I/O around it.

pub mod api;
pub mod compute;
pub mod limiter;
pub mod logging;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// What a missing JSON member reads as (`Value` indexing is denied by the crate's lints).
pub(crate) static NULL: Value = Value::Null;

/// The guest-attribute keys the report reads (docs/contract.md#3-guest-attributes).
pub use crate::contract::guest_attributes::keys;

/// Health as `fleet` reports it: the agent's three, or UNKNOWN when it could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FleetHealth {
    Failing,
    Degraded,
    Unknown,
    Ok,
}

impl FleetHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            FleetHealth::Ok => "OK",
            FleetHealth::Degraded => "DEGRADED",
            FleetHealth::Failing => "FAILING",
            FleetHealth::Unknown => "UNKNOWN",
        }
    }

    pub fn parse(s: &str) -> FleetHealth {
        match s.trim() {
            "OK" => FleetHealth::Ok,
            "DEGRADED" => FleetHealth::Degraded,
            "FAILING" => FleetHealth::Failing,
            _ => FleetHealth::Unknown,
        }
    }
}

/// The managed instance group a VM belongs to (from `created-by`, or the group listed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MigRef {
    pub name: String,
    /// `zones/<z>` or `regions/<r>`.
    pub location: String,
}

impl MigRef {
    /// From a `created-by` value or URL: `.../(zones|regions)/<loc>/instanceGroupManagers/<name>`.
    pub fn from_created_by(value: &str) -> Option<MigRef> {
        let parts: Vec<&str> = value.trim_end_matches('/').split('/').collect();
        let n = parts.len();
        if n < 4 {
            return None;
        }
        let (kind, loc, igm, name) = (
            *parts.get(n - 4)?,
            *parts.get(n - 3)?,
            *parts.get(n - 2)?,
            *parts.get(n - 1)?,
        );
        (igm == "instanceGroupManagers"
            && matches!(kind, "zones" | "regions")
            && !loc.is_empty()
            && !name.is_empty())
        .then(|| MigRef {
            name: name.to_owned(),
            location: format!("{kind}/{loc}"),
        })
    }
}

/// What is known of one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmReport {
    pub name: String,
    pub zone: String,
    pub mig: Option<MigRef>,
    pub health: FleetHealth,
    pub findings: Vec<String>,
    pub proxy_version: Option<String>,
    pub proxy_state: Option<String>,
    pub heartbeat: Option<String>,
    pub heartbeat_at: Option<SystemTime>,
    pub bootstrap_status: Option<String>,
    pub bootstrap_last_failure: Option<String>,
    pub agent_last_failure: Option<String>,
    /// Why the VM's state could not be read (then `health` is UNKNOWN).
    pub error: Option<String>,
}

impl VmReport {
    pub fn unread(name: &str, zone: &str, mig: Option<MigRef>, error: String) -> VmReport {
        VmReport {
            name: name.to_owned(),
            zone: zone.to_owned(),
            mig,
            health: FleetHealth::Unknown,
            findings: Vec::new(),
            proxy_version: None,
            proxy_state: None,
            heartbeat: None,
            heartbeat_at: None,
            bootstrap_status: None,
            bootstrap_last_failure: None,
            agent_last_failure: None,
            error: Some(error),
        }
    }

    /// From the `gce-service-proxy/` guest attributes (key → value).
    pub fn from_attributes(
        name: &str,
        zone: &str,
        mig: Option<MigRef>,
        attrs: &BTreeMap<String, String>,
    ) -> VmReport {
        let get = |k: &str| {
            attrs
                .get(k)
                .map(|v| clean(v))
                .filter(|v| !v.trim().is_empty())
        };
        let heartbeat = get(keys::HEARTBEAT);
        VmReport {
            name: name.to_owned(),
            zone: zone.to_owned(),
            mig,
            health: get(keys::HEALTH).map_or(FleetHealth::Unknown, |h| FleetHealth::parse(&h)),
            findings: get(keys::FINDINGS)
                .map(|f| split_ids(&f))
                .unwrap_or_default(),
            proxy_version: get(keys::PROXY_VERSION),
            proxy_state: get(keys::PROXY_STATE),
            heartbeat_at: heartbeat.as_deref().and_then(parse_time),
            heartbeat,
            bootstrap_status: get(keys::BOOTSTRAP_STATUS),
            bootstrap_last_failure: get(keys::BOOTSTRAP_LAST_FAILURE),
            agent_last_failure: get(keys::LAST_FAILURE),
            error: None,
        }
    }

    pub fn bootstrap_failed(&self) -> bool {
        self.bootstrap_status.as_deref() == Some("FAILED")
    }

    pub fn heartbeat_age(&self, now: SystemTime) -> Option<Duration> {
        self.heartbeat_at
            .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO))
    }

    pub fn is_stale(&self, now: SystemTime, stale: Duration) -> bool {
        self.heartbeat_age(now).is_some_and(|a| a > stale)
    }

    /// Whether the VM needs attention: not OK, stale, or bootstrap FAILED.
    pub fn needs_attention(&self, now: SystemTime, stale: Duration) -> bool {
        self.health != FleetHealth::Ok || self.is_stale(now, stale) || self.bootstrap_failed()
    }
}

/// Text from a VM is the VM's to choose: one line, no terminal escapes, bounded.
pub fn clean(s: &str) -> String {
    crate::text::truncate_with_ellipsis(&crate::text::strip_control(s), 1024)
}

pub fn split_ids(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

pub fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim().trim_end_matches('Z'))
        .ok()
        .or_else(|| humantime::parse_rfc3339(s.trim()).ok())
}

/// Which API the report was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Compute,
    Logging,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Compute => "compute",
            Source::Logging => "logging",
        }
    }
}

/// A whole read of the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetReport {
    pub source: Source,
    pub project: String,
    pub generated_at: SystemTime,
    pub vms: Vec<VmReport>,
    /// Things that make the list incomplete (unreachable zones...).
    pub warnings: Vec<String>,
    /// Requests made to Google's APIs for this report.
    pub requests: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    pub vms: usize,
    pub ok: usize,
    pub degraded: usize,
    pub failing: usize,
    pub unknown: usize,
    pub stale_heartbeats: usize,
    pub bootstrap_failed: usize,
    /// (finding id, VMs, zones), most VMs first.
    pub findings: Vec<(String, usize, Vec<String>)>,
    /// (version, VMs), most VMs first.
    pub proxy_versions: Vec<(String, usize)>,
}

pub fn summarize(vms: &[VmReport], now: SystemTime, stale: Duration) -> Summary {
    let mut s = Summary {
        vms: vms.len(),
        ..Summary::default()
    };
    let mut findings: BTreeMap<&str, (usize, BTreeSet<&str>)> = BTreeMap::new();
    let mut versions: BTreeMap<&str, usize> = BTreeMap::new();
    for vm in vms {
        match vm.health {
            FleetHealth::Ok => s.ok += 1,
            FleetHealth::Degraded => s.degraded += 1,
            FleetHealth::Failing => s.failing += 1,
            FleetHealth::Unknown => s.unknown += 1,
        }
        s.stale_heartbeats += usize::from(vm.is_stale(now, stale));
        s.bootstrap_failed += usize::from(vm.bootstrap_failed());
        let ids: BTreeSet<&str> = vm.findings.iter().map(String::as_str).collect();
        for id in ids {
            let e = findings.entry(id).or_default();
            e.0 += 1;
            e.1.insert(vm.zone.as_str());
        }
        if let Some(v) = &vm.proxy_version {
            *versions.entry(v.as_str()).or_default() += 1;
        }
    }
    s.findings = findings
        .into_iter()
        .map(|(id, (n, zones))| {
            (
                id.to_owned(),
                n,
                zones.into_iter().map(str::to_owned).collect(),
            )
        })
        .collect();
    s.findings
        .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    s.proxy_versions = versions
        .into_iter()
        .map(|(v, n)| (v.to_owned(), n))
        .collect();
    s.proxy_versions
        .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    s
}

/// docs/contract.md#2-command-line: 0 when every VM reports and none is FAILING, stale or bootstrap FAILED; else 1.
pub fn exit_status(report: &FleetReport, stale: Duration) -> u8 {
    let s = summarize(&report.vms, report.generated_at, stale);
    let clean = s.unknown == 0
        && s.failing == 0
        && s.stale_heartbeats == 0
        && s.bootstrap_failed == 0
        && report.warnings.is_empty();
    if clean { 0 } else { 1 }
}

// The `--json` document as borrowed views of the report, serialized straight to the output:
// a `Value` tree of 10,000 VMs took about 2 KiB a VM on top of the reports. Members are in
// alphabetical order, as serde_json's own maps print them (the document is unchanged).

#[derive(serde::Serialize)]
struct VmJson<'a> {
    agent_last_failure: Option<&'a str>,
    bootstrap_last_failure: Option<&'a str>,
    bootstrap_status: Option<&'a str>,
    error: Option<&'a str>,
    findings: &'a [String],
    health: &'static str,
    heartbeat: Option<&'a str>,
    heartbeat_age_s: Option<u64>,
    name: &'a str,
    proxy_state: Option<&'a str>,
    proxy_version: Option<&'a str>,
    zone: &'a str,
}

#[derive(serde::Serialize)]
#[allow(non_snake_case)] // the contract's member names
struct HealthJson {
    DEGRADED: usize,
    FAILING: usize,
    OK: usize,
    UNKNOWN: usize,
}

#[derive(serde::Serialize)]
struct FindingJson<'a> {
    id: &'a str,
    vms: usize,
    zones: &'a [String],
}

#[derive(serde::Serialize)]
struct VersionJson<'a> {
    version: &'a str,
    vms: usize,
}

#[derive(serde::Serialize)]
struct SummaryJson<'a> {
    bootstrap_failed: usize,
    findings: Vec<FindingJson<'a>>,
    health: HealthJson,
    proxy_versions: Vec<VersionJson<'a>>,
    stale_heartbeats: usize,
    vms: usize,
}

/// Serializes the VMs one at a time, as the writer takes them.
struct VmsJson<'a> {
    vms: &'a [VmReport],
    now: SystemTime,
}

impl serde::Serialize for VmsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.vms.iter().map(|vm| VmJson {
            agent_last_failure: vm.agent_last_failure.as_deref(),
            bootstrap_last_failure: vm.bootstrap_last_failure.as_deref(),
            bootstrap_status: vm.bootstrap_status.as_deref(),
            error: vm.error.as_deref(),
            findings: &vm.findings,
            health: vm.health.as_str(),
            heartbeat: vm.heartbeat.as_deref(),
            heartbeat_age_s: vm.heartbeat_age(self.now).map(|a| a.as_secs()),
            name: &vm.name,
            proxy_state: vm.proxy_state.as_deref(),
            proxy_version: vm.proxy_version.as_deref(),
            zone: &vm.zone,
        }))
    }
}

#[derive(serde::Serialize)]
struct ReportJson<'a> {
    generated_at: String,
    project: &'a str,
    schema_version: u32,
    source: &'static str,
    summary: SummaryJson<'a>,
    vms: VmsJson<'a>,
}

fn document<'a>(report: &'a FleetReport, s: &'a Summary) -> ReportJson<'a> {
    ReportJson {
        generated_at: humantime::format_rfc3339_seconds(report.generated_at).to_string(),
        project: &report.project,
        schema_version: 1,
        source: report.source.as_str(),
        summary: SummaryJson {
            bootstrap_failed: s.bootstrap_failed,
            findings: s
                .findings
                .iter()
                .map(|(id, n, zones)| FindingJson { id, vms: *n, zones })
                .collect(),
            health: HealthJson {
                DEGRADED: s.degraded,
                FAILING: s.failing,
                OK: s.ok,
                UNKNOWN: s.unknown,
            },
            proxy_versions: s
                .proxy_versions
                .iter()
                .map(|(version, n)| VersionJson { version, vms: *n })
                .collect(),
            stale_heartbeats: s.stale_heartbeats,
            vms: s.vms,
        },
        vms: VmsJson {
            vms: &report.vms,
            now: report.generated_at,
        },
    }
}

/// Writes the `--json` document (docs/contract.md#9-fleet, plus `schema_version`) to `w`,
/// one line, without building it in memory first.
pub fn write_json<W: std::io::Write>(
    w: W,
    report: &FleetReport,
    stale: Duration,
) -> serde_json::Result<()> {
    let s = summarize(&report.vms, report.generated_at, stale);
    serde_json::to_writer(w, &document(report, &s))
}

/// The `--json` document as a `Value` (what [`write_json`] writes).
pub fn to_json(report: &FleetReport, stale: Duration) -> Value {
    let s = summarize(&report.vms, report.generated_at, stale);
    // Cannot fail: every map key is a string.
    serde_json::to_value(document(report, &s)).unwrap_or(Value::Null)
}

/// The guide's remedy for MIG VMs whose heartbeat is stale or whose bootstrap FAILED: one
/// `recreate-instances` command per group, ready to paste (fleet itself changes nothing).
pub fn remedies(report: &FleetReport, stale: Duration) -> Vec<String> {
    let mut by_mig: BTreeMap<&MigRef, Vec<&str>> = BTreeMap::new();
    for vm in &report.vms {
        if let Some(mig) = &vm.mig
            && (vm.is_stale(report.generated_at, stale) || vm.bootstrap_failed())
        {
            by_mig.entry(mig).or_default().push(vm.name.as_str());
        }
    }
    by_mig
        .into_iter()
        .map(|(mig, names)| {
            let loc = match mig.location.split_once('/') {
                Some(("regions", r)) => format!("--region={r}"),
                Some((_, z)) => format!("--zone={z}"),
                None => format!("--zone={}", mig.location),
            };
            format!(
                "gcloud compute instance-groups managed recreate-instances {} --instances={} {loc} --project={}",
                mig.name,
                names.join(","),
                report.project
            )
        })
        .collect()
}

fn age_text(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// The text report: summary first, then the VMs needing attention (all with `all_vms`), then
/// the remedies.
pub fn to_text(report: &FleetReport, stale: Duration, all_vms: bool) -> String {
    let now = report.generated_at;
    let s = summarize(&report.vms, now, stale);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fleet of project {} (source {}, {}): {} VMs",
        report.project,
        report.source.as_str(),
        humantime::format_rfc3339_seconds(now),
        s.vms
    );
    let _ = writeln!(
        out,
        "  health: {} OK, {} DEGRADED, {} FAILING, {} UNKNOWN",
        s.ok, s.degraded, s.failing, s.unknown
    );
    let _ = writeln!(
        out,
        "  stale heartbeats (older than {}): {}",
        age_text(stale),
        s.stale_heartbeats
    );
    let _ = writeln!(out, "  bootstrap FAILED: {}", s.bootstrap_failed);
    if !s.findings.is_empty() {
        let _ = writeln!(out, "  findings:");
        for (id, n, zones) in &s.findings {
            let _ = writeln!(out, "    {id:<34} {n:>6} VMs  zones {}", zones.join(","));
        }
    }
    if !s.proxy_versions.is_empty() {
        let _ = writeln!(out, "  Envoy versions:");
        for (v, n) in &s.proxy_versions {
            let _ = writeln!(out, "    {n:>6}  {v}");
        }
    }
    for w in &report.warnings {
        let _ = writeln!(out, "  warning: {w}");
    }
    let shown: Vec<&VmReport> = report
        .vms
        .iter()
        .filter(|vm| all_vms || vm.needs_attention(now, stale))
        .collect();
    if !shown.is_empty() {
        let _ = writeln!(
            out,
            "\n{}:",
            if all_vms {
                "VMs"
            } else {
                "VMs that need attention"
            }
        );
        for vm in shown {
            let mut line = format!("  {:<8} {}/{}", vm.health.as_str(), vm.zone, vm.name);
            if !vm.findings.is_empty() {
                let _ = write!(line, "  {}", vm.findings.join(","));
            }
            match vm.heartbeat_age(now) {
                Some(a) if vm.is_stale(now, stale) => {
                    let _ = write!(line, "  heartbeat STALE ({} ago)", age_text(a));
                }
                Some(a) => {
                    let _ = write!(line, "  heartbeat {} ago", age_text(a));
                }
                None => {}
            }
            if let Some(b) = &vm.bootstrap_status
                && b != "FINISHED"
            {
                let _ = write!(line, "  bootstrap {b}");
                if let Some(r) = &vm.bootstrap_last_failure {
                    let _ = write!(line, ": {r}");
                }
            }
            if let Some(e) = &vm.error {
                let _ = write!(line, "  ({e})");
            }
            let _ = writeln!(out, "{line}");
        }
    }
    let fixes = remedies(report, stale);
    if !fixes.is_empty() {
        let _ = writeln!(
            out,
            "\nRecreate the managed VMs whose heartbeat is stale or whose bootstrap failed:"
        );
        for f in fixes {
            let _ = writeln!(out, "  {f}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn report(vms: Vec<VmReport>) -> FleetReport {
        FleetReport {
            source: Source::Compute,
            project: "p".into(),
            generated_at: at("2026-12-06T10:10:00Z"),
            vms,
            warnings: vec![],
            requests: 0,
        }
    }

    #[test]
    fn mig_from_created_by() {
        assert_eq!(
            MigRef::from_created_by("projects/12/zones/us-a/instanceGroupManagers/web"),
            Some(MigRef {
                name: "web".into(),
                location: "zones/us-a".into()
            })
        );
        assert_eq!(
            MigRef::from_created_by(
                "https://www.googleapis.com/compute/v1/projects/p/regions/r1/instanceGroupManagers/x"
            )
            .unwrap()
            .location,
            "regions/r1"
        );
        assert_eq!(MigRef::from_created_by("projects/12/zones/us-a"), None);
        assert_eq!(MigRef::from_created_by(""), None);
    }

    #[test]
    fn classification_summary_exit_and_remedy() {
        let mig = MigRef {
            name: "web".into(),
            location: "regions/r1".into(),
        };
        let ok = VmReport::from_attributes(
            "a",
            "z1",
            Some(mig.clone()),
            &attrs(&[
                ("health", "OK"),
                ("findings", ""),
                ("agent-heartbeat", "2026-12-06T10:09:00Z"),
                ("proxy-version", "v1"),
                ("bootstrap-status", "FINISHED"),
            ]),
        );
        let failing = VmReport::from_attributes(
            "b",
            "z2",
            Some(mig.clone()),
            &attrs(&[
                ("health", "FAILING"),
                ("findings", "ENVOY_NOT_RUNNING,ENDPOINTS_UNHEALTHY"),
                ("agent-heartbeat", "2026-12-06T10:00:00Z"),
                ("proxy-version", "v1"),
            ]),
        );
        let degraded = VmReport::from_attributes(
            "c",
            "z1",
            None,
            &attrs(&[
                ("health", "DEGRADED"),
                ("findings", "ENDPOINTS_UNHEALTHY"),
                ("agent-heartbeat", "2026-12-06T10:09:30Z"),
                ("proxy-version", "v2\u{1b}[2J"),
            ]),
        );
        let boot = VmReport::from_attributes(
            "d",
            "z1",
            Some(mig.clone()),
            &attrs(&[
                ("bootstrap-status", "FAILED"),
                ("bootstrap-last-failure", "apt failed"),
            ]),
        );
        let unread = VmReport::unread("e", "z2", None, "HTTP 403".into());
        let r = report(vec![ok.clone(), failing, degraded, boot, unread]);
        let stale = Duration::from_secs(300);
        let s = summarize(&r.vms, r.generated_at, stale);
        assert_eq!(
            (s.vms, s.ok, s.degraded, s.failing, s.unknown),
            (5, 1, 1, 1, 2)
        );
        assert_eq!(s.stale_heartbeats, 1, "b's heartbeat is 10 minutes old");
        assert_eq!(s.bootstrap_failed, 1);
        assert_eq!(
            s.findings,
            vec![
                (
                    "ENDPOINTS_UNHEALTHY".into(),
                    2,
                    vec!["z1".into(), "z2".into()]
                ),
                ("ENVOY_NOT_RUNNING".into(), 1, vec!["z2".into()]),
            ]
        );
        assert_eq!(s.proxy_versions.first(), Some(&("v1".to_owned(), 2)));
        assert!(!s.proxy_versions.iter().any(|(v, _)| v.contains('\u{1b}')));
        assert_eq!(exit_status(&r, stale), 1);
        assert_eq!(exit_status(&report(vec![ok.clone()]), stale), 0);
        let mut warned = report(vec![ok]);
        warned.warnings.push("zone z9 unreachable".into());
        assert_eq!(exit_status(&warned, stale), 1);

        assert_eq!(
            remedies(&r, stale),
            vec![
                "gcloud compute instance-groups managed recreate-instances web --instances=b,d --region=r1 --project=p"
            ]
        );
        let j = to_json(&r, stale);
        // Streamed, the same document byte for byte (members in serde_json's map order).
        let mut streamed = Vec::new();
        write_json(&mut streamed, &r, stale).unwrap();
        assert_eq!(String::from_utf8(streamed).unwrap(), j.to_string());
        assert_eq!(j["schema_version"], 1);
        assert_eq!(j["source"], "compute");
        assert_eq!(
            j["summary"]["findings"][0],
            json!({"id": "ENDPOINTS_UNHEALTHY", "vms": 2, "zones": ["z1", "z2"]})
        );
        assert_eq!(j["summary"]["health"]["UNKNOWN"], 2);
        assert_eq!(j["vms"][1]["heartbeat_age_s"], 600);
        assert_eq!(
            j["vms"][1]["findings"],
            json!(["ENVOY_NOT_RUNNING", "ENDPOINTS_UNHEALTHY"])
        );
        assert_eq!(j["vms"][4]["error"], "HTTP 403");
        assert!(j["vms"][4]["heartbeat"].is_null());
        let text = to_text(&r, stale, false);
        assert!(
            text.contains("1 OK, 1 DEGRADED, 1 FAILING, 2 UNKNOWN"),
            "{text}"
        );
        assert!(!text.contains("z1/a"), "OK VMs only with --all-vms");
        assert!(text.contains("z2/b") && text.contains("STALE"), "{text}");
        assert!(text.contains("recreate-instances web"));
        assert!(to_text(&r, stale, true).contains("z1/a"));
    }
}
