//! Project-side checks (docs/contract.md#10-project-side-checks), pure: from the answers of Google's APIs
//! ([`ProjectObservation`]) and what the rest of the diagnosis found, to findings and a per-check
//! report. Each check ends as *passed*, *found* or *not checked (reason)*; a call that could not
//! answer never becomes a finding of what it checks (docs/contract.md#4-1-catalogue).
//!
//! - IAM: `testIamPermissions` → IAM_PERMISSION_MISSING (error without
//!   `trafficdirector.networks.getConfigs`, warning for the others).
//! - API enabled: Envoy's close message ("... has not been used in project N before or it is
//!   disabled") and Service Usage `DISABLED` → CONTROL_PLANE_API_DISABLED. The log evidence
//!   costs no call, so it is judged even when the API checks are off.
//! - CSDS: the control plane's view of this node → XDS_NOT_SYNCED.
//! - Forwarding rules: named in MESH_CONFIG_NOT_FOUND's detail.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::diagnose::{CheckGroup, Diagnosis, GroupOutcome};
use crate::finding::{Finding, FindingId, Severity, sort_findings};
use crate::observe::project::{
    ApiError, CsdsResource, ForwardingRule, GET_CONFIGS, PERMISSIONS, ProjectObservation,
    ServiceState, disabled_api,
};
use crate::text::truncate_with_ellipsis;

/// A resource may be STALE this long (by the control plane's `lastUpdated`) before it is
/// reported: a push in flight is not a fault.
pub const STALE_GRACE: Duration = Duration::from_secs(300);
const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const MAX_ITEMS: usize = 8;
const MAX_DETAIL: usize = 1024;

/// What the project checks have to go on.
#[derive(Debug, Clone, Copy)]
pub enum ProjectInput<'a> {
    /// The API checks cannot or may not run; the reason.
    Off(&'a str),
    /// Not run yet (the first run is under way).
    Pending,
    Observed(&'a ProjectObservation),
}

/// One check's outcome, for `doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckLine {
    pub check: &'static str,
    /// `passed`, `found`, `not_checked`.
    pub status: &'static str,
    /// What was seen (passed/found) or why not checked.
    pub detail: String,
}

impl CheckLine {
    fn new(check: &'static str, status: &'static str, detail: impl Into<String>) -> Self {
        CheckLine {
            check,
            status,
            detail: detail.into(),
        }
    }
}

/// The per-check report of one diagnosis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProjectReport {
    pub checks: Vec<CheckLine>,
    /// When the APIs were asked (RFC 3339), if they were.
    pub observed_at: Option<String>,
}

/// Adds the project group, its findings and the forwarding-rule evidence to `diag`.
pub fn apply(diag: &mut Diagnosis, input: ProjectInput<'_>, now: SystemTime) -> ProjectReport {
    let mut findings = Vec::new();
    let mut lines = Vec::new();
    let obs = match input {
        ProjectInput::Observed(o) => Some(o),
        _ => None,
    };
    let off = |what: &'static str| -> CheckLine {
        let reason = match input {
            ProjectInput::Off(r) => r.to_owned(),
            ProjectInput::Pending => "the first check is under way".to_owned(),
            ProjectInput::Observed(_) => "not asked this time".to_owned(),
        };
        CheckLine::new(what, "not_checked", reason)
    };

    // IAM
    match obs.and_then(|o| o.iam.as_ref().map(|r| (o, r))) {
        None => lines.push(off("iam")),
        Some((_, Err(e))) => lines.push(not_checked("iam", e)),
        Some((o, Ok(granted))) => {
            let missing: Vec<&str> = PERMISSIONS
                .iter()
                .copied()
                .filter(|p| !granted.iter().any(|g| g == p))
                .collect();
            let account = o
                .account
                .as_deref()
                .unwrap_or("the VM's default service account");
            if missing.is_empty() {
                lines.push(CheckLine::new(
                    "iam",
                    "passed",
                    format!("{account} holds {}", PERMISSIONS.join(", ")),
                ));
            } else {
                let mut f = Finding::new(
                    FindingId::IamPermissionMissing,
                    format!(
                        "service account {account} lacks {} in project {} (testIamPermissions)",
                        missing.join(", "),
                        o.node.project_id
                    ),
                );
                if !missing.contains(&GET_CONFIGS) {
                    f.severity = Severity::Warning;
                    f.summary = "The VM's service account lacks permissions for load reports or Cloud Logging".into();
                }
                lines.push(CheckLine::new("iam", "found", f.detail.clone()));
                findings.push(f);
            }
        }
    }

    // API enabled: Envoy's own words first (they cost nothing), then Service Usage.
    let from_envoy = diag
        .findings
        .iter()
        .filter(|f| f.id == FindingId::ControlPlanePermissionDenied)
        .find_map(|f| disabled_api(&f.detail).map(|(api, n)| (api, n, f.detail.clone())));
    let service = obs.and_then(|o| o.service.as_ref().map(|r| (o, r)));
    match (from_envoy, service) {
        (Some((api, project, evidence)), _) => {
            let f = api_disabled(
                &project,
                format!(
                    "{api} is disabled in project {project}: Envoy's stream says so ({evidence})"
                ),
            );
            lines.push(CheckLine::new("api", "found", f.detail.clone()));
            findings.push(f);
        }
        (None, Some((o, Ok(ServiceState::Disabled)))) => {
            let n = o.node.project_number.to_string();
            let f = api_disabled(
                &n,
                format!(
                    "Service Usage says trafficdirector.googleapis.com is DISABLED in project {n}"
                ),
            );
            lines.push(CheckLine::new("api", "found", f.detail.clone()));
            findings.push(f);
        }
        (None, Some((_, Ok(state)))) => lines.push(CheckLine::new(
            "api",
            "passed",
            format!(
                "trafficdirector.googleapis.com is {}",
                match state {
                    ServiceState::Enabled => "ENABLED",
                    _ => "in an unspecified state",
                }
            ),
        )),
        (None, Some((_, Err(e)))) => lines.push(not_checked("api", e)),
        (None, None) => lines.push(off("api")),
    }

    // CSDS
    match obs.and_then(|o| o.csds.as_ref().map(|r| (o, r))) {
        None => lines.push(off("csds")),
        Some((_, Err(e))) => lines.push(not_checked("csds", e)),
        Some((o, Ok(resources))) => match not_synced(resources, o, now) {
            None => lines.push(CheckLine::new(
                "csds",
                "passed",
                if resources.is_empty() {
                    "the control plane has no configuration recorded for this node".to_owned()
                } else {
                    format!("{} resources in sync", resources.len())
                },
            )),
            Some(f) => {
                lines.push(CheckLine::new("csds", "found", f.detail.clone()));
                findings.push(f);
            }
        },
    }

    // Forwarding rules, asked only with MESH_CONFIG_NOT_FOUND.
    let rules = obs.and_then(|o| o.forwarding_rules.as_ref().map(|r| (o, r)));
    let mesh = diag
        .findings
        .iter_mut()
        .find(|f| f.id == FindingId::MeshConfigNotFound);
    match (mesh, rules) {
        (Some(f), Some((o, Ok(list)))) => {
            let network = o.node.network.as_deref().unwrap_or("default");
            let text = rules_text(list, network);
            f.detail = truncate_with_ellipsis(
                &format!(
                    "{} INTERNAL_SELF_MANAGED forwarding rules: {text}.",
                    f.detail
                ),
                MAX_DETAIL,
            );
            let status = if list.iter().any(|r| r.network == network) {
                "passed"
            } else {
                "found"
            };
            lines.push(CheckLine::new("forwarding_rules", status, text));
        }
        (Some(_), Some((_, Err(e)))) => lines.push(not_checked("forwarding_rules", e)),
        (Some(_), None) => lines.push(off("forwarding_rules")),
        // Asked only to explain MESH_CONFIG_NOT_FOUND: without it the check does not apply
        // (it is not reported as passed, since it decided nothing).
        (None, _) => {}
    }

    let not_checked: Vec<String> = lines
        .iter()
        .filter(|l| l.status == "not_checked")
        .map(|l| format!("{}: {}", l.check, l.detail))
        .collect();
    let note = lines
        .iter()
        .map(|l| format!("{} {}", l.check, l.status.replace('_', " ")))
        .collect::<Vec<_>>()
        .join(", ");
    // The same ignore-findings rules as every other group (diagnose::run kept them).
    if let (rules, Some(at)) = &diag.silence {
        let s = crate::diagnose::silence::apply(findings, rules, *at);
        findings = s.active;
        diag.ignored
            .retain(|i| CheckGroup::of(i.finding.id) != CheckGroup::Project);
        diag.ignored.extend(s.ignored);
    }
    let outcome = GroupOutcome {
        findings,
        not_checked: (!not_checked.is_empty()).then(|| not_checked.join("; ")),
        note,
    };
    let mut added = Diagnosis::from_outcomes(vec![(CheckGroup::Project, outcome)]);
    diag.groups.retain(|g| g.group != CheckGroup::Project);
    diag.groups.append(&mut added.groups);
    diag.findings
        .retain(|f| CheckGroup::of(f.id) != CheckGroup::Project);
    diag.findings.append(&mut added.findings);
    sort_findings(&mut diag.findings);
    ProjectReport {
        checks: lines,
        observed_at: obs.map(|o| humantime::format_rfc3339_seconds(o.at).to_string()),
    }
}

fn not_checked(check: &'static str, e: &ApiError) -> CheckLine {
    CheckLine::new(check, "not_checked", e.to_string())
}

fn api_disabled(project: &str, detail: String) -> Finding {
    Finding::new(
        FindingId::ControlPlaneApiDisabled,
        truncate_with_ellipsis(&detail, MAX_DETAIL),
    )
    .with_remediation(format!(
        "Enable the API: `gcloud services enable trafficdirector.googleapis.com --project {project}`, then restart Envoy (or wait for its next retry)."
    ))
}

/// "none in network prod-vpc; 2 in default (fr-a, fr-b)".
pub fn rules_text(rules: &[ForwardingRule], network: &str) -> String {
    let mut by_net: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for r in rules {
        by_net.entry(r.network.as_str()).or_default().push(&r.name);
    }
    let mut parts = Vec::new();
    match by_net.remove(network) {
        None => parts.push(format!("none in network {network}")),
        Some(names) => parts.push(format!(
            "{} in network {network} ({})",
            names.len(),
            names.join(", ")
        )),
    }
    for (net, names) in by_net {
        parts.push(format!("{} in {net} ({})", names.len(), names.join(", ")));
    }
    parts.join("; ")
}

fn short_type(t: &str) -> &str {
    t.rsplit('.').next().unwrap_or(t)
}

/// XDS_NOT_SYNCED from the control plane's view, or `None` when all is in step.
fn not_synced(
    resources: &[CsdsResource],
    obs: &ProjectObservation,
    now: SystemTime,
) -> Option<Finding> {
    let mut items = Vec::new();
    let mut error = false;
    for r in resources {
        let what = format!(
            "{} {} version {}",
            short_type(&r.type_url),
            if r.name.is_empty() { "?" } else { &r.name },
            if r.version.is_empty() {
                "?"
            } else {
                &r.version
            }
        );
        let age = r
            .last_updated
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
            .and_then(|t| now.duration_since(t).ok())
            .map(|a| Duration::from_secs(a.as_secs()));
        let for_how_long = |a: Option<Duration>| {
            a.map(|a| format!(" for {}", humantime::format_duration(a)))
                .unwrap_or_default()
        };
        if r.client_status == "NACKED" || r.config_status == "ERROR" {
            error = true;
            let mut s = format!(
                "{what}: {}/{}{}",
                r.config_status,
                r.client_status,
                for_how_long(age)
            );
            if let Some(e) = &r.error {
                s.push_str(&format!(" ({e})"));
            }
            items.push(s);
        } else if r.config_status == "NOT_SENT" {
            items.push(format!("{what}: NOT_SENT{}", for_how_long(age)));
        } else if r.config_status == "STALE" {
            if let Some(age) = age
                && age > STALE_GRACE
            {
                items.push(format!("{what}: STALE{}", for_how_long(Some(age))));
            }
        } else if r.type_url == LISTENER_TYPE
            && (r.config_status == "SYNCED" || r.client_status == "ACKED")
            && !r.version.is_empty()
            && let Some(envoy) = &obs.node.envoy_lds_version
            && envoy != &r.version
        {
            items.push(format!(
                "{what}: the control plane counts it as acknowledged, Envoy has version {envoy}"
            ));
        }
    }
    if items.is_empty() {
        return None;
    }
    let n = items.len();
    items.truncate(MAX_ITEMS);
    let mut detail = format!(
        "control plane's view (CSDS) of this node: {}",
        items.join("; ")
    );
    if n > MAX_ITEMS {
        detail.push_str(&format!("; and {} more", n - MAX_ITEMS));
    }
    let mut f = Finding::new(
        FindingId::XdsNotSynced,
        truncate_with_ellipsis(&detail, MAX_DETAIL),
    );
    if error {
        f.severity = Severity::Error;
    }
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::project::NodeView;

    fn obs() -> ProjectObservation {
        ProjectObservation {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            node: NodeView {
                project_id: "demo-project".into(),
                project_number: 42,
                network: Some("prod-vpc".into()),
                node_id: Some("n".into()),
                envoy_lds_version: Some("3".into()),
            },
            account: Some("sa@x.iam.gserviceaccount.com".into()),
            iam: Some(Ok(PERMISSIONS.iter().map(|s| (*s).to_owned()).collect())),
            service: None,
            csds: Some(Ok(vec![])),
            forwarding_rules: None,
        }
    }

    fn res(status: &str, client: &str, version: &str) -> CsdsResource {
        CsdsResource {
            type_url: LISTENER_TYPE.into(),
            name: "l1".into(),
            version: version.into(),
            config_status: status.into(),
            client_status: client.into(),
            last_updated: None,
            error: None,
        }
    }

    fn run(o: &ProjectObservation, base: Vec<Finding>) -> (Diagnosis, ProjectReport) {
        let mut d = Diagnosis::from_outcomes(vec![(
            CheckGroup::ControlPlane,
            GroupOutcome {
                findings: base,
                ..Default::default()
            },
        )]);
        let r = apply(&mut d, ProjectInput::Observed(o), o.at);
        (d, r)
    }

    fn status(r: &ProjectReport, check: &str) -> &'static str {
        r.checks.iter().find(|l| l.check == check).unwrap().status
    }

    #[test]
    fn all_passed() {
        let (d, r) = run(&obs(), vec![]);
        assert!(d.findings.is_empty(), "{d:?}");
        assert_eq!(status(&r, "iam"), "passed");
        assert_eq!(status(&r, "csds"), "passed");
        assert_eq!(status(&r, "api"), "not_checked");
        assert_eq!(d.groups.last().unwrap().group, CheckGroup::Project);
    }

    #[test]
    fn project_findings_are_silenced_like_the_others() {
        use crate::diagnose::silence::{IgnoreRule, RuleSource};
        let mut o = obs();
        o.iam = Some(Ok(vec![]));
        let mut d = Diagnosis::from_outcomes(vec![]);
        d.silence = (
            vec![IgnoreRule {
                id: FindingId::IamPermissionMissing,
                reason: "accepted".into(),
                until: o.at + std::time::Duration::from_secs(60),
                source: RuleSource::ConfigFile,
            }],
            Some(o.at),
        );
        apply(&mut d, ProjectInput::Observed(&o), o.at);
        assert!(d.findings.is_empty(), "{:?}", d.findings);
        assert_eq!(d.ignored.len(), 1);
        assert_eq!(d.ignored[0].finding.id, FindingId::IamPermissionMissing);
        // Applied again (the next cycle), the ignored entry is replaced, not doubled; and once
        // the rule has lapsed the finding counts again.
        apply(&mut d, ProjectInput::Observed(&o), o.at);
        assert_eq!(d.ignored.len(), 1);
        d.silence.1 = Some(o.at + std::time::Duration::from_secs(61));
        apply(&mut d, ProjectInput::Observed(&o), o.at);
        assert_eq!(d.findings[0].id, FindingId::IamPermissionMissing);
        assert!(d.ignored.is_empty());
    }

    #[test]
    fn iam_severity_follows_the_missing_permission() {
        let mut o = obs();
        o.iam = Some(Ok(vec![GET_CONFIGS.into()]));
        let (d, r) = run(&o, vec![]);
        assert_eq!(d.findings[0].id, FindingId::IamPermissionMissing);
        assert_eq!(d.findings[0].severity, Severity::Warning);
        assert!(
            d.findings[0]
                .detail
                .contains("sa@x.iam.gserviceaccount.com")
        );
        assert!(d.findings[0].detail.contains("logging.logEntries.create"));
        assert_eq!(status(&r, "iam"), "found");
        o.iam = Some(Ok(vec![]));
        let (d, _) = run(&o, vec![]);
        assert_eq!(d.findings[0].severity, Severity::Error);
        o.iam = Some(Err(ApiError::Disabled {
            api: "Cloud Resource Manager API".into(),
            project: "42".into(),
            message: "m".into(),
        }));
        let (d, r) = run(&o, vec![]);
        assert!(d.findings.is_empty());
        assert!(
            r.checks[0]
                .detail
                .contains("Cloud Resource Manager API is not enabled")
        );
    }

    #[test]
    fn api_disabled_from_envoy_or_service_usage() {
        let envoy = Finding::new(
            FindingId::ControlPlanePermissionDenied,
            "ADS closed with 7 (PERMISSION_DENIED): Traffic Director API has not been used in project 42 before or it is disabled.",
        );
        let (d, r) = run(&obs(), vec![envoy]);
        let f = d
            .findings
            .iter()
            .find(|f| f.id == FindingId::ControlPlaneApiDisabled)
            .unwrap();
        assert!(
            f.remediation
                .contains("gcloud services enable trafficdirector.googleapis.com --project 42")
        );
        assert_eq!(status(&r, "api"), "found");
        let mut o = obs();
        o.service = Some(Ok(ServiceState::Disabled));
        let (d, _) = run(&o, vec![]);
        assert_eq!(d.findings[0].id, FindingId::ControlPlaneApiDisabled);
        o.service = Some(Err(ApiError::Denied("no serviceusage.services.get".into())));
        let (d, r) = run(&o, vec![]);
        assert!(d.findings.is_empty());
        assert_eq!(status(&r, "api"), "not_checked");
    }

    #[test]
    fn csds_statuses() {
        let mut o = obs();
        o.csds = Some(Ok(vec![res("ERROR", "NACKED", "4")]));
        let (d, _) = run(&o, vec![]);
        assert_eq!(d.findings[0].id, FindingId::XdsNotSynced);
        assert_eq!(d.findings[0].severity, Severity::Error);
        o.csds = Some(Ok(vec![res("NOT_SENT", "UNKNOWN", "4")]));
        let (d, _) = run(&o, vec![]);
        assert_eq!(d.findings[0].severity, Severity::Warning);
        // A version Envoy does not have.
        o.csds = Some(Ok(vec![res("SYNCED", "ACKED", "4")]));
        let (d, _) = run(&o, vec![]);
        assert!(
            d.findings[0].detail.contains("Envoy has version 3"),
            "{d:?}"
        );
        o.csds = Some(Ok(vec![res("SYNCED", "ACKED", "3")]));
        assert!(run(&o, vec![]).0.findings.is_empty());
        // STALE: only beyond the grace period.
        let mut stale = res("STALE", "ACKED", "3");
        stale.last_updated =
            Some(humantime::format_rfc3339_seconds(o.at - Duration::from_secs(60)).to_string());
        o.csds = Some(Ok(vec![stale.clone()]));
        assert!(run(&o, vec![]).0.findings.is_empty());
        stale.last_updated =
            Some(humantime::format_rfc3339_seconds(o.at - Duration::from_secs(900)).to_string());
        o.csds = Some(Ok(vec![stale]));
        let (d, _) = run(&o, vec![]);
        assert!(d.findings[0].detail.contains("STALE for 15m"), "{d:?}");
    }

    #[test]
    fn forwarding_rules_join_mesh_config_not_found() {
        let mut o = obs();
        o.forwarding_rules = Some(Ok(vec![
            ForwardingRule {
                name: "a".into(),
                network: "default".into(),
            },
            ForwardingRule {
                name: "b".into(),
                network: "default".into(),
            },
        ]));
        let mesh = Finding::new(FindingId::MeshConfigNotFound, "closed with 5.");
        let (d, r) = run(&o, vec![mesh]);
        let f = d
            .findings
            .iter()
            .find(|f| f.id == FindingId::MeshConfigNotFound)
            .unwrap();
        assert!(
            f.detail
                .contains("none in network prod-vpc; 2 in default (a, b)"),
            "{}",
            f.detail
        );
        assert_eq!(status(&r, "forwarding_rules"), "found");
    }

    #[test]
    fn off_marks_every_check_not_checked_but_envoys_words_still_count() {
        let mut d = Diagnosis::default();
        let r = apply(
            &mut d,
            ProjectInput::Off("--cloud-checks off"),
            SystemTime::now(),
        );
        assert!(r.checks.iter().all(|l| l.status != "found"));
        assert_eq!(r.checks[0].detail, "--cloud-checks off");
    }
}
