//! Diagnosis: pure functions from an observation snapshot to findings, one file per check group.
//!
//! A group either passes, finds faults, or could not check (its inputs were unavailable — e.g.
//! Envoy's admin is down, so its listeners cannot be judged). "Could not check" is reported as
//! such, never as a pass.

pub mod interception;
pub mod log_classifier;
pub mod log_findings;

use serde::Serialize;

use crate::finding::{Finding, FindingId, Health, Severity, sort_findings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckGroup {
    Proxy,
    ControlPlane,
    Configuration,
    Interception,
    Endpoints,
    Metadata,
}

impl CheckGroup {
    pub const ALL: [CheckGroup; 6] = [
        CheckGroup::Proxy,
        CheckGroup::ControlPlane,
        CheckGroup::Configuration,
        CheckGroup::Interception,
        CheckGroup::Endpoints,
        CheckGroup::Metadata,
    ];

    pub fn title(self) -> &'static str {
        match self {
            CheckGroup::Proxy => "proxy",
            CheckGroup::ControlPlane => "control plane",
            CheckGroup::Configuration => "configuration",
            CheckGroup::Interception => "interception",
            CheckGroup::Endpoints => "endpoints",
            CheckGroup::Metadata => "metadata & agent",
        }
    }

    /// The group a finding belongs to.
    pub fn of(id: FindingId) -> CheckGroup {
        use FindingId::*;
        match id {
            EnvoyNotRunning
            | EnvoyAdminUnreachable
            | EnvoyNotLive
            | EnvoyVersionUnsupported
            | EnvoyRestarting => CheckGroup::Proxy,
            ControlPlaneDisconnected
            | ControlPlaneUnreachable
            | MeshConfigNotFound
            | MeshEntityNotFound
            | ControlPlanePermissionDenied
            | ControlPlaneUnauthenticated => CheckGroup::ControlPlane,
            NodeMetadataMismatch | NoMeshConfig | ConfigRejected | AccessLogNotWritable => {
                CheckGroup::Configuration
            }
            InterceptionMissing
            | InterceptionLoop
            | ServiceNotIntercepted
            | InboundPortNotIntercepted
            | InboundPortBlocked
            | IptablesUnavailable
            | ServerFirstProtocol => CheckGroup::Interception,
            EndpointsUnhealthy | EndpointsPanic => CheckGroup::Endpoints,
            ScopesInsufficient | GuestAttributesDisabled | MetadataUnreachable => {
                CheckGroup::Metadata
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum GroupStatus {
    Pass,
    Warn,
    Fail,
    /// The group's inputs were unavailable; the reason says which.
    NotChecked(String),
}

/// The outcome of one group: its status and a short note (what was seen, or why not checked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupReport {
    pub group: CheckGroup,
    #[serde(flatten)]
    pub status: GroupStatus,
    pub note: String,
}

/// What a group's checks return before the status is derived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupOutcome {
    pub findings: Vec<Finding>,
    /// Set when the group could not judge (some or all of) its checks.
    pub not_checked: Option<String>,
    /// What was seen, for the one-line summary (e.g. "Envoy 1.40.0 LIVE").
    pub note: String,
}

/// Findings and group lines of one diagnosis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnosis {
    pub findings: Vec<Finding>,
    pub groups: Vec<GroupReport>,
}

impl Diagnosis {
    /// Builds the diagnosis from each group's outcome; findings are sorted errors first and
    /// each ID appears once per group outcome as given.
    pub fn from_outcomes(outcomes: Vec<(CheckGroup, GroupOutcome)>) -> Diagnosis {
        let mut findings = Vec::new();
        let mut groups = Vec::new();
        for (group, outcome) in outcomes {
            let worst = outcome.findings.iter().map(|f| f.severity).min();
            let status = match (worst, &outcome.not_checked) {
                (Some(Severity::Error), _) => GroupStatus::Fail,
                (Some(Severity::Warning), _) => GroupStatus::Warn,
                (_, Some(reason)) => GroupStatus::NotChecked(reason.clone()),
                _ => GroupStatus::Pass,
            };
            groups.push(GroupReport {
                group,
                status,
                note: outcome.note,
            });
            findings.extend(outcome.findings);
        }
        sort_findings(&mut findings);
        Diagnosis { findings, groups }
    }

    pub fn health(&self) -> Health {
        Health::of(&self.findings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_finding_has_a_group_and_status_follows_severity() {
        for id in FindingId::ALL {
            let _ = CheckGroup::of(*id);
        }
        let d = Diagnosis::from_outcomes(vec![
            (
                CheckGroup::Proxy,
                GroupOutcome {
                    note: "Envoy 1.40.0 LIVE".into(),
                    ..Default::default()
                },
            ),
            (
                CheckGroup::Endpoints,
                GroupOutcome {
                    findings: vec![Finding::new(FindingId::EndpointsUnhealthy, "c: 1 of 2")],
                    ..Default::default()
                },
            ),
            (
                CheckGroup::Interception,
                GroupOutcome {
                    not_checked: Some("iptables-save is missing".into()),
                    ..Default::default()
                },
            ),
            (
                CheckGroup::ControlPlane,
                GroupOutcome {
                    findings: vec![Finding::new(FindingId::ControlPlaneDisconnected, "")],
                    not_checked: Some("x".into()),
                    ..Default::default()
                },
            ),
        ]);
        assert_eq!(d.groups[0].status, GroupStatus::Pass);
        assert_eq!(d.groups[1].status, GroupStatus::Warn);
        assert_eq!(
            d.groups[2].status,
            GroupStatus::NotChecked("iptables-save is missing".into())
        );
        assert_eq!(d.groups[3].status, GroupStatus::Fail);
        assert_eq!(d.findings[0].id, FindingId::ControlPlaneDisconnected);
        assert_eq!(d.health(), Health::Failing);
    }
}
