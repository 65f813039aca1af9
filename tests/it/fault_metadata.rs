//! The metadata server misbehaving under the real daemon, beyond the 5xx / hang / 403 of
//! `tests/it/daemon.rs`: answers that are not HTTP, connections reset without an answer, answers
//! without `Metadata-Flavor: Google` (something else on that address). Each time the agent goes
//! on completing cycles, logs the failure with `source=metadata` (once), and when the server is
//! itself again says so, resumes its heartbeat and publishes what it met in
//! `agent-last-failure`.

use crate::faults_common as common;
use crate::support;
use crate::support_daemon as daemon;

use std::time::Duration;

use common::*;
use daemon::{Daemon, eventually};
use support::agent_without_envoy;
use testkit::metadata_emulator::{Fault, MetadataEmulator, VmIdentity};

#[test]
fn garbage_resets_and_a_server_without_the_flavor_header_are_survived_and_reported() {
    let md = MetadataEmulator::start(VmIdentity::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_addr();
    // A reachable control plane: its check raises no failure to overwrite the one we wait for.
    let (_control_plane, cp_addr) = reachable_control_plane();
    let mut cmd = agent_without_envoy(&md.host(), dir.path(), dir.path(), Some(&cp_addr));
    cmd.args(["--poll-interval", "1s", "--heartbeat-interval", "2s"])
        .args(["--metrics-addr", &metrics.to_string()]);
    let mut agent = Daemon::start(cmd, dir);
    eventually(Duration::from_secs(20), "first heartbeat", || {
        attr(&md, "agent-heartbeat")
    });

    let cases = [
        (
            Fault::Garbage,
            "garbage",
            "HTTP exchange with the metadata server",
        ),
        (Fault::Drop, "connection reset", "metadata server"),
        (
            Fault::NoFlavor,
            "no Metadata-Flavor",
            "it is not the metadata server",
        ),
    ];
    for (fault, name, expect) in cases {
        let skip = agent.lines().len();
        md.set_fault(fault);
        let line = wait_line_after(
            || agent.lines(),
            skip,
            Duration::from_secs(15),
            &format!("{name}: the failure"),
            |l| l.contains("\"source\":\"metadata\"") && l.contains(expect),
        );
        eprintln!("{name}: {line}");
        cycles_advance(metrics, 3, Duration::from_secs(30), name);
        assert!(agent.is_running(), "{name}: the agent died");
        // Logged once while it lasts, not once per poll.
        let reports = agent.lines()[skip..]
            .iter()
            .filter(|l| l.contains("\"source\":\"metadata\"") && !l.contains("recovered"))
            .count();
        assert_eq!(reports, 1, "{name}: reported {reports} times");
        let metric_errors = metric(metrics, "spa_poll_errors_total{source=\"metadata\"}");
        assert!(
            metric_errors.unwrap_or(0.0) >= 1.0,
            "{name}: {metric_errors:?}"
        );

        let skip = agent.lines().len();
        md.clear_fault();
        wait_line_after(
            || agent.lines(),
            skip,
            Duration::from_secs(15),
            &format!("{name}: recovery"),
            |l| l.contains("\"source\":\"metadata\"") && l.contains("recovered"),
        );
        // The heartbeat moves again and the failure is published (writes wait for the
        // guest-attribute budget's minute at worst).
        let hb = attr(&md, "agent-heartbeat");
        eventually(
            Duration::from_secs(75),
            &format!("{name}: heartbeat"),
            || attr(&md, "agent-heartbeat").filter(|h| Some(h) != hb.as_ref()),
        );
        eventually(
            Duration::from_secs(75),
            &format!("{name}: agent-last-failure"),
            || attr(&md, "agent-last-failure").filter(|f| f.contains(expect)),
        );
    }
    assert!(md.violations().is_empty(), "{:#?}", md.violations());
    let (status, _) = agent.stop();
    assert!(status.success());
}
