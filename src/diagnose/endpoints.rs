//! Endpoint health, per cluster, from `/clusters?format=json`'s health flags.
//!
//! A cluster with some unhealthy endpoints is ENDPOINTS_UNHEALTHY; with 99% or more of them
//! unhealthy it is ENDPOINTS_PANIC (the guide: the data plane then ignores health and spreads
//! traffic over every endpoint). One finding per ID lists every such cluster with its counts and
//! the flags that made its endpoints unhealthy. Endpoints still waiting for their first active
//! health check (`pending_active_hc`) are not judged either way.

use std::collections::BTreeMap;

use crate::diagnose::{CheckContext, GroupOutcome};
use crate::finding::{Finding, FindingId};
use crate::observe::Snapshot;
use crate::observe::envoy_admin::{ClusterStatus, HostHealth};
use crate::text::{strip_control, truncate_with_ellipsis};

/// At or above this share of unhealthy endpoints, health is ignored (docs/contract.md#4-1-catalogue).
pub const PANIC_PERCENT: usize = 99;
/// Clusters named in one detail.
const MAX_CLUSTERS: usize = 8;
const MAX_NAME: usize = 120;
const MAX_DETAIL: usize = 1024;

/// One cluster's health, counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterHealth {
    pub name: String,
    /// Endpoints judged (all but those awaiting their first health check).
    pub judged: usize,
    pub unhealthy: usize,
    /// Why, by flag: `failed_active_health_check` → 3.
    pub reasons: BTreeMap<String, usize>,
}

impl ClusterHealth {
    pub fn of(c: &ClusterStatus) -> ClusterHealth {
        let mut judged = 0;
        let mut unhealthy = 0;
        let mut reasons = BTreeMap::new();
        for h in &c.hosts {
            if h.health.pending_active_hc {
                continue;
            }
            judged += 1;
            if h.health.is_healthy() {
                continue;
            }
            unhealthy += 1;
            for r in reasons_of(&h.health) {
                *reasons.entry(r).or_insert(0) += 1;
            }
        }
        ClusterHealth {
            name: truncate_with_ellipsis(&strip_control(&c.name), MAX_NAME),
            judged,
            unhealthy,
            reasons,
        }
    }

    pub fn panics(&self) -> bool {
        self.unhealthy > 0 && self.unhealthy * 100 >= PANIC_PERCENT * self.judged
    }

    /// `c1: 3 of 4 endpoints unhealthy (failed_active_health_check)`.
    pub fn describe(&self) -> String {
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| {
                if *n == self.unhealthy {
                    r.clone()
                } else {
                    format!("{r} ×{n}")
                }
            })
            .collect();
        format!(
            "{}: {} of {} endpoint{} unhealthy ({})",
            self.name,
            self.unhealthy,
            self.judged,
            if self.judged == 1 { "" } else { "s" },
            reasons.join(", ")
        )
    }
}

fn reasons_of(h: &HostHealth) -> Vec<String> {
    let mut r = Vec::new();
    let flags = [
        (h.failed_active_health_check, "failed_active_health_check"),
        (h.failed_outlier_check, "failed_outlier_check"),
        (h.failed_eds_health, "failed_eds_health"),
        (
            h.excluded_via_immediate_hc_fail,
            "excluded_via_immediate_hc_fail",
        ),
        (h.active_hc_timeout, "active_hc_timeout"),
    ];
    r.extend(
        flags
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| (*n).to_owned()),
    );
    if let Some(s) = &h.eds_health_status
        && !matches!(s.as_str(), "HEALTHY" | "UNKNOWN" | "DEGRADED")
    {
        r.push(format!(
            "eds_health_status {}",
            truncate_with_ellipsis(&strip_control(s), 32)
        ));
    }
    if r.is_empty() {
        r.push("unhealthy".into());
    }
    r
}

pub fn check(snap: &Snapshot, _ctx: &CheckContext<'_>) -> GroupOutcome {
    let clusters = match &snap.clusters {
        Ok(c) => c,
        Err(e) => {
            return GroupOutcome {
                not_checked: Some(if snap.server_info.is_err() {
                    "Envoy's admin is not answering, so endpoint health cannot be read".into()
                } else {
                    format!("/clusters is unreadable ({e})")
                }),
                ..GroupOutcome::default()
            };
        }
    };
    let mut unhealthy = Vec::new();
    let mut panic = Vec::new();
    let mut endpoints = 0;
    let mut bad = 0;
    for c in clusters {
        let h = ClusterHealth::of(c);
        endpoints += h.judged;
        bad += h.unhealthy;
        if h.unhealthy == 0 {
            continue;
        }
        if h.panics() {
            panic.push(h);
        } else {
            unhealthy.push(h);
        }
    }
    let mut out = GroupOutcome {
        note: format!(
            "{} cluster{}, {} of {} endpoint{} unhealthy",
            clusters.len(),
            if clusters.len() == 1 { "" } else { "s" },
            bad,
            endpoints,
            if endpoints == 1 { "" } else { "s" }
        ),
        ..GroupOutcome::default()
    };
    // Worst first, then by name, so the detail is stable.
    let order = |v: &mut Vec<ClusterHealth>| {
        v.sort_by(|a, b| {
            (b.unhealthy * a.judged.max(1))
                .cmp(&(a.unhealthy * b.judged.max(1)))
                .then_with(|| a.name.cmp(&b.name))
        });
    };
    order(&mut panic);
    order(&mut unhealthy);
    if !panic.is_empty() {
        let lines: Vec<String> = panic.iter().map(ClusterHealth::describe).collect();
        out.findings.push(Finding::new(
            FindingId::EndpointsPanic,
            truncate_with_ellipsis(
                &format!(
                    "{}. With {PANIC_PERCENT}% or more unhealthy, health is ignored and traffic goes to every endpoint.",
                    join_clusters(&lines)
                ),
                MAX_DETAIL,
            ),
        ));
    }
    if !unhealthy.is_empty() {
        let lines: Vec<String> = unhealthy.iter().map(ClusterHealth::describe).collect();
        out.findings.push(Finding::new(
            FindingId::EndpointsUnhealthy,
            truncate_with_ellipsis(&format!("{}.", join_clusters(&lines)), MAX_DETAIL),
        ));
    }
    out
}

fn join_clusters(lines: &[String]) -> String {
    match lines.get(..MAX_CLUSTERS) {
        Some(shown) if lines.len() > MAX_CLUSTERS => format!(
            "{}; and {} more clusters",
            shown.join("; "),
            lines.len() - MAX_CLUSTERS
        ),
        _ => lines.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testutil::{admin_down, snapshot, with_history};
    use crate::observe::envoy_admin::HostStatus;

    fn host(f: impl FnOnce(&mut HostHealth)) -> HostStatus {
        let mut health = HostHealth {
            eds_health_status: Some("HEALTHY".into()),
            ..HostHealth::default()
        };
        f(&mut health);
        HostStatus {
            address: "10.0.0.1:80".into(),
            health,
        }
    }

    fn cluster(name: &str, hosts: Vec<HostStatus>) -> ClusterStatus {
        ClusterStatus {
            name: name.into(),
            added_via_api: true,
            hosts,
        }
    }

    fn ok() -> HostStatus {
        host(|_| {})
    }

    fn failed_hc() -> HostStatus {
        host(|h| h.failed_active_health_check = true)
    }

    fn run(clusters: Vec<ClusterStatus>) -> GroupOutcome {
        let mut s = snapshot();
        s.clusters = Ok(clusters);
        with_history(&[&s], |ctx, _| check(&s, ctx))
    }

    #[test]
    fn counts_per_cluster_with_reasons() {
        let o = run(vec![
            cluster("c1", vec![failed_hc(), failed_hc(), failed_hc(), ok()]),
            cluster(
                "c2",
                vec![
                    ok(),
                    host(|h| h.failed_outlier_check = true),
                    host(|h| h.eds_health_status = Some("UNHEALTHY".into())),
                ],
            ),
            cluster("healthy", vec![ok(), ok()]),
            cluster("static-empty", vec![]),
        ]);
        assert_eq!(o.findings.len(), 1);
        let f = &o.findings[0];
        assert_eq!(f.id, FindingId::EndpointsUnhealthy);
        assert_eq!(
            f.detail,
            "c1: 3 of 4 endpoints unhealthy (failed_active_health_check); c2: 2 of 3 endpoints unhealthy (eds_health_status UNHEALTHY ×1, failed_outlier_check ×1)."
        );
        assert_eq!(o.note, "4 clusters, 5 of 9 endpoints unhealthy");
    }

    #[test]
    fn ninety_nine_percent_is_panic() {
        let mut hosts = vec![ok()];
        hosts.extend((0..99).map(|_| failed_hc()));
        let o = run(vec![
            cluster("big", hosts),
            cluster("all-dead", vec![failed_hc(), failed_hc()]),
            cluster("half", vec![failed_hc(), ok()]),
        ]);
        let ids: Vec<_> = o.findings.iter().map(|f| f.id).collect();
        assert_eq!(
            ids,
            [FindingId::EndpointsPanic, FindingId::EndpointsUnhealthy]
        );
        assert!(
            o.findings[0].detail.starts_with(
                "all-dead: 2 of 2 endpoints unhealthy (failed_active_health_check); big: 99 of 100 endpoints unhealthy"
            ),
            "{}",
            o.findings[0].detail
        );
        assert!(o.findings[0].detail.contains("health is ignored"));
        assert!(o.findings[1].detail.starts_with("half: 1 of 2"));
        // 98 of 100 is not panic.
        let mut hosts = vec![ok(), ok()];
        hosts.extend((0..98).map(|_| failed_hc()));
        let o = run(vec![cluster("c", hosts)]);
        assert_eq!(o.findings[0].id, FindingId::EndpointsUnhealthy);
    }

    #[test]
    fn hosts_awaiting_their_first_check_are_not_judged() {
        let pending = host(|h| {
            h.failed_active_health_check = true;
            h.pending_active_hc = true;
        });
        let o = run(vec![cluster("new", vec![pending.clone(), pending])]);
        assert!(o.findings.is_empty(), "{o:?}");
        assert_eq!(o.note, "1 cluster, 0 of 0 endpoints unhealthy");
    }

    #[test]
    fn many_clusters_are_bounded() {
        let clusters: Vec<_> = (0..50)
            .map(|i| cluster(&format!("c{i:02}"), vec![failed_hc(), ok()]))
            .collect();
        let o = run(clusters);
        let d = &o.findings[0].detail;
        assert!(d.contains("; and 42 more clusters."), "{d}");
        assert!(d.len() <= MAX_DETAIL);
    }

    #[test]
    fn admin_down_is_not_checked() {
        let mut s = snapshot();
        s.server_info = Err(admin_down());
        s.clusters = Err(admin_down());
        let o = with_history(&[&s], |ctx, _| check(&s, ctx));
        assert!(o.findings.is_empty());
        assert!(o.not_checked.unwrap().contains("admin is not answering"));
    }
}
