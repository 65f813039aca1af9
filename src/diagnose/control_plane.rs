//! Control-plane checks: is Envoy connected to Cloud Service Mesh, and can this VM reach it?
//!
//! CONTROL_PLANE_DISCONNECTED has two sources that are combined, never listed twice:
//! - Envoy's stats: `control_plane.connected_state` 0 for longer than the grace period
//!   ([`History::disconnected_since`]; with no history, an Envoy that has never accepted a
//!   listener update has been without its control plane for its whole uptime);
//! - Envoy's log: streams closing with 13/14 repeatedly (`log_findings`).
//!
//! When both hold, one finding carries both pieces of evidence. When only the stats hold but
//! the log shows the server *answering* with a refusal (5, 7, 16), the stats finding is dropped:
//! the control plane is reachable and the refusal finding names the fault (the note keeps the
//! fact). A log-only or stats-only disconnection is reported as is.
//!
//! [`History::disconnected_since`]: crate::diagnose::History::disconnected_since

use crate::diagnose::proxy::human;
use crate::diagnose::{CheckContext, GroupOutcome};
use crate::finding::{Finding, FindingId};
use crate::observe::Snapshot;
use crate::observe::control_plane::Reachability;
use crate::observe::envoy_admin::EnvoyStats;
use crate::text::truncate_with_ellipsis;

/// The findings that mean the control plane answered Envoy (and refused it).
pub const REFUSALS: [FindingId; 4] = [
    FindingId::MeshConfigNotFound,
    FindingId::MeshEntityNotFound,
    FindingId::ControlPlanePermissionDenied,
    FindingId::ControlPlaneUnauthenticated,
];

/// Whether this control-plane finding, where it holds, explains an Envoy without listeners:
/// the server refused it, or its streams keep closing.
pub fn keeps_listeners_away(id: FindingId) -> bool {
    REFUSALS.contains(&id) || id == FindingId::ControlPlaneDisconnected
}

/// Longest detail built here.
const MAX_DETAIL: usize = 1024;

/// Said of a disconnection when this snapshot read `connected_state` 1 that no second reading
/// or accepted update has confirmed yet ([`History::update`]).
///
/// [`History::update`]: crate::diagnose::History::update
const OPENING: &str = "; this snapshot read 1: a stream opening, not yet seen to hold";

pub fn check(snap: &Snapshot, ctx: &CheckContext<'_>) -> GroupOutcome {
    let mut out = GroupOutcome::default();
    let mut notes: Vec<String> = Vec::new();
    match &snap.stats {
        Err(e) => {
            out.not_checked = Some(if snap.server_info.is_err() {
                "Envoy's admin is not answering, so its connection cannot be read".to_owned()
            } else {
                format!("Envoy's stats are unreadable ({e})")
            });
        }
        Ok(stats) => match stats.control_plane_connected_state {
            None => notes.push("Envoy has no xDS control plane (static configuration)".into()),
            // 0, or a 1 the history has not yet believed: a stream opening between refusals.
            Some(n) if !ctx.history.connected(Some(n)) => {
                match disconnected(snap, stats, ctx, n != 0) {
                    Ok(f) => out.findings.push(f),
                    Err(note) => notes.push(note),
                }
            }
            Some(2) => notes.push("connected (failover)".into()),
            Some(_) => notes.push("connected".into()),
        },
    }
    let target = ctx.settings.control_plane.as_str();
    match &snap.control_plane {
        None => notes.push(format!("{target} not probed this time")),
        Some(Reachability::Reachable { addr }) => notes.push(format!("{target} reachable ({addr})")),
        Some(Reachability::DnsFailed { host, error }) => out.findings.push(
            Finding::new(
                FindingId::ControlPlaneUnreachable,
                truncate_with_ellipsis(
                    &crate::text::strip_control(&format!(
                        "DNS step failed: {host} (from --control-plane {target}) does not resolve: {error}. TCP was not tried."
                    )),
                    MAX_DETAIL,
                ),
            )
            .with_summary("The control plane's name does not resolve on this VM")
            .with_remediation(format!(
                "Check the VM's DNS: `getent hosts {host}` must answer (Compute Engine's resolver is 169.254.169.254; check /etc/resolv.conf, Cloud DNS policies and private zones that may shadow googleapis.com)."
            )),
        ),
        Some(Reachability::TcpFailed { addrs, error }) => out.findings.push(
            Finding::new(
                FindingId::ControlPlaneUnreachable,
                truncate_with_ellipsis(
                    &crate::text::strip_control(&if addrs.len() == 1
                        && addrs.first().map(String::as_str) == Some(target)
                    {
                        format!("TCP step failed: no TCP connection to {target} could be opened: {error}.")
                    } else {
                        format!(
                            "TCP step failed: {target} resolves to {}, but no TCP connection could be opened: {error}. DNS works.",
                            list(addrs, 4)
                        )
                    }),
                    MAX_DETAIL,
                ),
            )
            .with_summary("The control plane does not accept TCP connections from this VM")
            .with_remediation(format!(
                "Allow egress to {target} over TCP: check VPC firewall egress rules, routes to Google APIs (Private Google Access for VMs without an external IP) and any forward proxy."
            )),
        ),
    }
    out.note = notes.join("; ");
    out
}

/// The stats-based CONTROL_PLANE_DISCONNECTED, or a note of why it is not (yet) raised.
/// `opening`: this snapshot read 1, which the history has not believed yet.
fn disconnected(
    snap: &Snapshot,
    stats: &EnvoyStats,
    ctx: &CheckContext<'_>,
    opening: bool,
) -> Result<Finding, String> {
    let grace = ctx.settings.disconnected_grace;
    let opening = if opening { OPENING } else { "" };
    let Some(since) = ctx.history.disconnected_since else {
        return Err("not connected".into());
    };
    let for_how_long = ctx.now.saturating_duration_since(since);
    if for_how_long < grace {
        return Err(format!(
            "not connected for {} (a finding after {}){opening}",
            human(for_how_long),
            human(grace)
        ));
    }
    let mut d = format!(
        "control_plane.connected_state is 0 (no xDS stream to the control plane) for {} at least (grace {})",
        human(for_how_long),
        human(grace)
    );
    let never = stats.lds_update_success == Some(0);
    if never {
        let uptime = snap
            .server_info
            .as_ref()
            .ok()
            .and_then(|i| i.uptime_current_epoch)
            .map(|u| format!(" in its {} of uptime", human(u)))
            .unwrap_or_default();
        d.push_str(&format!("; Envoy has accepted no listener update{uptime}"));
    }
    let timeouts = initial_fetch_timeouts(stats);
    if !timeouts.is_empty() {
        d.push_str(&format!("; initial fetch timed out for {timeouts}"));
    }
    d.push_str(opening);
    d.push('.');
    Ok(Finding::new(FindingId::ControlPlaneDisconnected, d))
}

/// `listeners (LDS), clusters (CDS)` from the non-zero `*.init_fetch_timeout` stats.
pub fn initial_fetch_timeouts(stats: &EnvoyStats) -> String {
    let names: Vec<String> = stats
        .init_fetch_timeouts
        .keys()
        .map(|k| match k.as_str() {
            "listener_manager.lds.init_fetch_timeout" => "listeners (LDS)".to_owned(),
            "cluster_manager.cds.init_fetch_timeout" => "clusters (CDS)".to_owned(),
            other => other
                .strip_suffix(".init_fetch_timeout")
                .unwrap_or(other)
                .to_owned(),
        })
        .collect();
    list(&names, 4)
}

/// Merges the log-derived findings of this group into the snapshot's (see the module doc).
pub fn merge_log_findings(out: &mut GroupOutcome, log: Vec<Finding>) {
    let refused = log.iter().find(|f| REFUSALS.contains(&f.id)).map(|f| f.id);
    let log_disconnected = log
        .iter()
        .any(|f| f.id == FindingId::ControlPlaneDisconnected);
    if let Some(by) = refused
        && !log_disconnected
        && let Some(pos) = out
            .findings
            .iter()
            .position(|f| f.id == FindingId::ControlPlaneDisconnected)
    {
        out.findings.remove(pos);
        let note = format!("connected_state 0 is explained by {by}");
        out.note = if out.note.is_empty() {
            note
        } else {
            format!("{}; {note}", out.note)
        };
    }
    for f in log {
        if f.id == FindingId::ControlPlaneDisconnected
            && let Some(e) = out.findings.iter_mut().find(|e| e.id == f.id)
        {
            e.detail = truncate_with_ellipsis(
                &format!("{} Envoy's log: {}", e.detail, f.detail),
                MAX_DETAIL,
            );
            continue;
        }
        if !out
            .findings
            .iter()
            .any(|e| e.id == f.id && e.detail == f.detail)
        {
            out.findings.push(f);
        }
    }
}

/// At most `max` items joined by ", ", then " and N more".
pub fn list<S: AsRef<str>>(items: &[S], max: usize) -> String {
    let shown: Vec<&str> = items.iter().take(max).map(AsRef::as_ref).collect();
    let mut s = shown.join(", ");
    if items.len() > max {
        s.push_str(&format!(" and {} more", items.len() - max));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testutil::{self, snapshot, with_history};
    use std::time::Duration;

    fn ids(o: &GroupOutcome) -> Vec<FindingId> {
        o.findings.iter().map(|f| f.id).collect()
    }

    fn down(success: u64, uptime_secs: u64) -> Snapshot {
        let mut s = snapshot();
        let stats = s.stats.as_mut().unwrap();
        stats.control_plane_connected_state = Some(0);
        stats.lds_update_success = Some(success);
        stats
            .init_fetch_timeouts
            .insert("listener_manager.lds.init_fetch_timeout".into(), 1);
        stats
            .init_fetch_timeouts
            .insert("cluster_manager.cds.init_fetch_timeout".into(), 1);
        s.server_info.as_mut().unwrap().uptime_current_epoch =
            Some(Duration::from_secs(uptime_secs));
        if success == 0 {
            s.listeners = Ok(Vec::new().into());
        }
        s
    }

    /// `s` read while a stream opens: `connected_state` 1, the rest as it was.
    fn opening(s: &Snapshot) -> Snapshot {
        let mut o = s.clone();
        o.stats.as_mut().unwrap().control_plane_connected_state = Some(1);
        o
    }

    #[test]
    fn connected_passes_with_a_note() {
        let s = snapshot();
        let o = with_history(&[&s], |ctx, _| check(&s, ctx));
        assert!(o.findings.is_empty());
        assert_eq!(o.not_checked, None);
        assert!(o.note.starts_with("connected"), "{}", o.note);
    }

    #[test]
    fn never_configured_envoy_is_disconnected_since_it_started() {
        // One snapshot: 5 minutes of uptime without any listener update.
        let s = down(0, 300);
        let o = with_history(&[&s], |ctx, _| check(&s, ctx));
        assert_eq!(ids(&o), [FindingId::ControlPlaneDisconnected]);
        let d = &o.findings[0].detail;
        assert!(d.contains("for 5m at least (grace 1m)"), "{d}");
        assert!(
            d.contains("accepted no listener update in its 5m of uptime"),
            "{d}"
        );
        assert!(
            d.contains("initial fetch timed out for clusters (CDS), listeners (LDS)"),
            "{d}"
        );
        // Young Envoy: not yet.
        let s = down(0, 20);
        let o = with_history(&[&s], |ctx, _| check(&s, ctx));
        assert!(o.findings.is_empty(), "{o:?}");
        assert!(
            o.note
                .contains("not connected for 20s (a finding after 1m)"),
            "{}",
            o.note
        );
    }

    #[test]
    fn configured_envoy_needs_the_grace_period_across_snapshots() {
        let s = down(3, 3600);
        // First sight of the disconnection: it starts now.
        let o = with_history(&[&s], |ctx, _| check(&s, ctx));
        assert!(o.findings.is_empty(), "{o:?}");
        // Seven snapshots 10 s apart: 60 s.
        let snaps: Vec<&Snapshot> = std::iter::repeat_n(&s, 7).collect();
        let o = with_history(&snaps, |ctx, _| check(&s, ctx));
        assert_eq!(ids(&o), [FindingId::ControlPlaneDisconnected]);
        // Connected in between, read twice in a row: starts over.
        let up = snapshot();
        let snaps = [&s, &s, &s, &s, &up, &up, &s];
        let o = with_history(&snaps, |ctx, _| check(&s, ctx));
        assert!(o.findings.is_empty(), "{o:?}");
    }

    #[test]
    fn a_single_reading_of_one_between_refusals_does_not_end_a_disconnection() {
        // Envoy reads connected_state 1 while each retried stream opens, tens of milliseconds
        // before the server closes it: one poll in a run of 0s may land there.
        let s = down(3, 3600);
        let flicker = opening(&s);
        let snaps = [&s, &s, &s, &flicker, &s, &s, &s];
        let o = with_history(&snaps, |ctx, _| check(&s, ctx));
        assert_eq!(ids(&o), [FindingId::ControlPlaneDisconnected], "{o:?}");
        assert!(o.findings[0].detail.contains("for 1m at least"), "{o:?}");

        // The latest snapshot is the one that read 1: still the finding, saying so.
        let snaps = [&s, &s, &s, &s, &s, &s, &flicker];
        let o = with_history(&snaps, |ctx, _| check(&flicker, ctx));
        assert_eq!(ids(&o), [FindingId::ControlPlaneDisconnected], "{o:?}");
        let d = &o.findings[0].detail;
        assert!(
            d.ends_with("; this snapshot read 1: a stream opening, not yet seen to hold."),
            "{d}"
        );
        let o = with_history(&snaps, |ctx, _| {
            crate::diagnose::configuration::check(&flicker, ctx)
        });
        assert!(
            !ids(&o).contains(&FindingId::NoMeshConfig),
            "a stream opening is not a connection without listeners: {o:?}"
        );

        // Envoy that has never been configured, first seen during an opening stream, then 0:
        // its uptime still bounds the disconnection (the 1 was not a connection).
        let never = down(0, 300);
        let o = with_history(&[&opening(&never), &never], |ctx, _| check(&never, ctx));
        assert_eq!(ids(&o), [FindingId::ControlPlaneDisconnected], "{o:?}");

        // Two readings of 1 with a failed stream between them are two openings.
        let mut again = flicker.clone();
        again.stats.as_mut().unwrap().cds_update_failure = Some(9);
        let mut before = flicker.clone();
        before.stats.as_mut().unwrap().cds_update_failure = Some(8);
        let o = with_history(&[&s, &s, &s, &s, &s, &s, &before, &again], |ctx, _| {
            check(&again, ctx)
        });
        assert_eq!(ids(&o), [FindingId::ControlPlaneDisconnected], "{o:?}");

        // A second reading of 1, or an accepted listener update with the first, is a connection.
        let o = with_history(&[&s, &s, &s, &s, &s, &s, &flicker, &flicker], |ctx, _| {
            check(&flicker, ctx)
        });
        assert!(o.findings.is_empty(), "{o:?}");
        let mut carried = flicker.clone();
        carried.stats.as_mut().unwrap().lds_update_success = Some(4);
        let o = with_history(&[&s, &s, &s, &s, &s, &s, &carried], |ctx, _| {
            check(&carried, ctx)
        });
        assert!(o.findings.is_empty(), "{o:?}");
        assert!(o.note.starts_with("connected"), "{}", o.note);
    }

    #[test]
    fn unreachable_says_which_step_failed() {
        let mut s = snapshot();
        s.control_plane = Some(Reachability::DnsFailed {
            host: "trafficdirector.invalid".into(),
            error: "failed to lookup address information: Name or service not known".into(),
        });
        let o = with_history(&[&s], |ctx, _| check(&s, ctx));
        assert_eq!(ids(&o), [FindingId::ControlPlaneUnreachable]);
        assert!(
            o.findings[0]
                .detail
                .starts_with("DNS step failed: trafficdirector.invalid")
        );
        assert!(o.findings[0].summary.contains("does not resolve"));

        s.control_plane = Some(Reachability::TcpFailed {
            addrs: vec!["127.0.0.1:9".into()],
            error: "Connection refused (os error 111)".into(),
        });
        let o = with_history(&[&s], |ctx, _| check(&s, ctx));
        let d = &o.findings[0].detail;
        assert!(
            d.starts_with(
                "TCP step failed: trafficdirector.googleapis.com:443 resolves to 127.0.0.1:9"
            ),
            "{d}"
        );
        assert!(d.contains("Connection refused"), "{d}");

        s.control_plane = Some(Reachability::Reachable {
            addr: "1.2.3.4:443".into(),
        });
        let o = with_history(&[&s], |ctx, _| check(&s, ctx));
        assert!(o.findings.is_empty());
        assert!(o.note.contains("reachable (1.2.3.4:443)"), "{}", o.note);
    }

    #[test]
    fn admin_down_is_not_checked_but_reachability_still_is() {
        let mut s = snapshot();
        s.server_info = Err(testutil::admin_down());
        s.stats = Err(testutil::admin_down());
        s.control_plane = Some(Reachability::TcpFailed {
            addrs: vec!["127.0.0.1:9".into()],
            error: "refused".into(),
        });
        let o = with_history(&[&s], |ctx, _| check(&s, ctx));
        assert!(
            o.not_checked
                .as_deref()
                .unwrap()
                .contains("admin is not answering")
        );
        assert_eq!(ids(&o), [FindingId::ControlPlaneUnreachable]);
    }

    #[test]
    fn static_envoy_has_nothing_to_judge() {
        let mut s = snapshot();
        s.stats.as_mut().unwrap().control_plane_connected_state = None;
        let o = with_history(&[&s], |ctx, _| check(&s, ctx));
        assert!(o.findings.is_empty());
        assert!(o.note.contains("static configuration"));
    }

    #[test]
    fn stats_and_log_disconnections_make_one_finding() {
        let stats = Finding::new(FindingId::ControlPlaneDisconnected, "connected_state is 0.");
        let log = Finding::new(
            FindingId::ControlPlaneDisconnected,
            "StreamAggregatedResources keeps closing with 14 (UNAVAILABLE) (Envoy reports it closing for 47s).",
        );
        let mut o = GroupOutcome {
            findings: vec![stats.clone()],
            ..Default::default()
        };
        merge_log_findings(&mut o, vec![log.clone()]);
        assert_eq!(o.findings.len(), 1);
        assert_eq!(
            o.findings[0].detail,
            format!("connected_state is 0. Envoy's log: {}", log.detail)
        );

        // Log only.
        let mut o = GroupOutcome::default();
        merge_log_findings(&mut o, vec![log.clone()]);
        assert_eq!(o.findings, vec![log.clone()]);

        // The server answered with a refusal: the stats finding gives way to it.
        let refusal = Finding::new(FindingId::MeshConfigNotFound, "closed with 5");
        let mut o = GroupOutcome {
            findings: vec![stats.clone()],
            note: "x".into(),
            ..Default::default()
        };
        merge_log_findings(&mut o, vec![refusal.clone()]);
        assert_eq!(o.findings, vec![refusal.clone()]);
        assert_eq!(
            o.note,
            "x; connected_state 0 is explained by MESH_CONFIG_NOT_FOUND"
        );

        // ... unless the log also says it is unreachable now (the newer fact).
        let mut o = GroupOutcome {
            findings: vec![stats],
            ..Default::default()
        };
        merge_log_findings(&mut o, vec![refusal, log]);
        assert_eq!(
            ids(&o),
            [
                FindingId::ControlPlaneDisconnected,
                FindingId::MeshConfigNotFound
            ]
        );
    }

    #[test]
    fn lists_are_bounded() {
        assert_eq!(list(&["a", "b", "c"], 2), "a, b and 1 more");
        assert_eq!(list::<&str>(&[], 2), "");
    }
}
