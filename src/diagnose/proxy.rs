//! Proxy checks: is Envoy running, answering, LIVE, recent enough, and stable?

use std::time::Duration;

use crate::diagnose::{CheckContext, GroupOutcome};
use crate::finding::{Finding, FindingId};
use crate::observe::Snapshot;
use crate::observe::envoy_admin::{EnvoyVersion, parse_version_number};

/// The guide's minimum for sidecars.
pub const MIN_VERSION: EnvoyVersion = EnvoyVersion {
    major: 1,
    minor: 24,
    patch: 9,
};

/// docs/contract.md#4-1-catalogue: more than twice in 10 minutes.
pub const MAX_RESTARTS: usize = 2;

pub fn check(snap: &Snapshot, ctx: &CheckContext<'_>) -> GroupOutcome {
    let mut out = GroupOutcome::default();
    let admin = ctx.settings.admin_url.as_str();
    let processes = snap.processes.as_ref().ok();
    let count = processes.map(Vec::len);

    match &snap.server_info {
        Err(e) => {
            // Something accepted the connection (it timed out or spoke garbage) or listens
            // there: an admin that does not answer, even when no process named envoy is
            // visible (Envoy in a container, or renamed).
            let accepted =
                e.is_unreachable_but_accepted() || snap.resolved.admin_trust.something_listens();
            match count {
                Some(0) if accepted => out.findings.push(Finding::new(
                    FindingId::EnvoyAdminUnreachable,
                    format!(
                        "no process named envoy is visible in /proc, but something listens on {admin} and does not answer ({e})"
                    ),
                )),
                Some(0) => out.findings.push(Finding::new(
                    FindingId::EnvoyNotRunning,
                    format!("no process named envoy in /proc, and its admin {admin} does not answer ({e})"),
                )),
                Some(n) => {
                    let pids: Vec<String> = processes
                        .into_iter()
                        .flatten()
                        .map(|p| format!("{} (uid {})", p.pid, p.uid))
                        .collect();
                    out.findings.push(Finding::new(
                        FindingId::EnvoyAdminUnreachable,
                        format!(
                            "{n} envoy process{} running (pid {}), but {admin} does not answer: {e}",
                            if n == 1 { "" } else { "es" },
                            pids.join(", ")
                        ),
                    ));
                }
                // /proc unreadable: the admin is all we know.
                None => out.findings.push(Finding::new(
                    FindingId::EnvoyAdminUnreachable,
                    format!("{admin} does not answer ({e}); processes could not be listed"),
                )),
            }
            out.note = format!("Envoy admin {admin} not answering");
        }
        Ok(info) => {
            let version = parse_version_number(&info.version);
            out.note = format!(
                "Envoy {} {}{}",
                version.map_or_else(|| info.version.clone(), |v| v.to_string()),
                info.state.as_str(),
                snap.admin_pid
                    .map(|p| format!(" (pid {p}{})", uid_note(snap)))
                    .unwrap_or_default()
            );
            if let Some((state, since)) = &ctx.history.not_live_since {
                let for_how_long = ctx.now.saturating_duration_since(*since);
                if for_how_long >= ctx.settings.not_live_grace {
                    out.findings.push(Finding::new(
                        FindingId::EnvoyNotLive,
                        format!(
                            "server_info.state is {state} for {} (grace {})",
                            human(for_how_long),
                            human(ctx.settings.not_live_grace)
                        ),
                    ));
                }
            }
            match version {
                Some(v) if v < MIN_VERSION => out.findings.push(Finding::new(
                    FindingId::EnvoyVersionUnsupported,
                    format!("Envoy {v} (`{}`) is older than {MIN_VERSION}", info.version),
                )),
                Some(_) => {}
                None => {
                    out.not_checked = Some(format!(
                        "cannot read a version number in `{}`",
                        crate::text::truncate_with_ellipsis(&info.version, 120)
                    ));
                }
            }
        }
    }
    let restarts = ctx.history.restarts.len();
    if restarts > MAX_RESTARTS {
        out.findings.push(Finding::new(
            FindingId::EnvoyRestarting,
            format!(
                "Envoy restarted {restarts} times in the last 10 minutes (PID or uptime reset)"
            ),
        ));
    }
    out
}

fn uid_note(snap: &Snapshot) -> String {
    snap.processes
        .as_ref()
        .ok()
        .and_then(|ps| ps.iter().find(|p| Some(p.pid) == snap.admin_pid))
        .map(|p| format!(", uid {}", p.uid))
        .unwrap_or_default()
}

pub(crate) fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}
