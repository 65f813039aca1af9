//! `ignore-findings` in the `gce-service-proxy` metadata, end to end: the real daemon and
//! `doctor` against a real Envoy (fed by the xDS stand-in) and the metadata emulator. An ignored
//! finding leaves `health`, `findings`, `spa_finding_active` and the exit status, stays visible
//! (log, `doctor`, `spa_finding_ignored`) with its reason, and comes back by itself at `until`.

use crate::support;
use crate::support_daemon as daemon;
use crate::support_daemon::{OneVipMesh, free_addr, guest_attr as attr};

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use daemon::{Daemon, eventually};
use support::{agent, run};

const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const REASON: &str = "read-only VMs in this pool accepted (TICKET-42)";

fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = testkit::envoy::http_get(addr, "/metrics").ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn ignore_until(until: SystemTime) -> String {
    serde_json::json!({
        "agent": {"ignore-findings": [
            {"id": "SCOPES_INSUFFICIENT", "reason": REASON,
             "until": humantime::format_rfc3339_seconds(until).to_string()},
            {"id": "NOT_A_FINDING", "reason": "typo", "until": "2030-01-01T00:00:00Z"}
        ]}
    })
    .to_string()
}

#[test]
fn an_ignored_finding_stops_counting_stays_visible_and_comes_back_at_until() {
    let OneVipMesh {
        md,
        cp,
        envoy,
        admin,
        ..
    } = OneVipMesh::start();

    let common = |cmd: &mut std::process::Command| {
        cmd.args(["--envoy-admin", &format!("http://{admin}")])
            .arg("--envoy-log-dir")
            .arg(envoy.dir())
            .args(["--interception", "off", "--poll-interval", "1s"])
            .args(["--control-plane", &cp.addr().to_string()]);
    };
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_addr();
    let mut cmd = agent(&md.host(), dir.path());
    common(&mut cmd);
    cmd.args(["--metrics-addr", &metrics.to_string()]);
    let daemon = Daemon::start(cmd, dir);

    let published = |health: &str, findings: &str| {
        attr(&md, "health").as_deref() == Some(health)
            && attr(&md, "findings").as_deref() == Some(findings)
    };
    eventually(Duration::from_secs(30), "health OK", || {
        published("OK", "").then_some(())
    });

    // The fault: the VM's service account loses the cloud-platform scope.
    md.set_scopes(&["https://www.googleapis.com/auth/devstorage.read_only"]);
    // The agent reads the VM's identity (scopes included) once; a reload reads it again.
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(
        Duration::from_secs(30),
        "FAILING, SCOPES_INSUFFICIENT",
        || published("FAILING", "SCOPES_INSUFFICIENT").then_some(()),
    );

    // The same rule from a config file, read by doctor through the same decision.
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("config.toml");
    std::fs::write(
        &conf,
        format!(
            "[[ignore-findings]]\nid = \"SCOPES_INSUFFICIENT\"\nreason = \"{REASON}\"\nuntil = {}\n",
            humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600))
        ),
    )
    .unwrap();
    let mut cmd = agent(&md.host(), conf_dir.path());
    cmd.args(["doctor", "--json"]).arg("--config").arg(&conf);
    common(&mut cmd);
    let (out, _) = run(cmd, Duration::from_secs(60));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json ({e}): {}", support::stderr(&out)));
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(
        report["ignored"][0]["id"], "SCOPES_INSUFFICIENT",
        "{report:#}"
    );
    assert_eq!(report["ignored"][0]["source"], "config", "{report:#}");

    // Accepted for an hour: it stops counting everywhere, and says so.
    md.set_service_proxy(&ignore_until(SystemTime::now() + Duration::from_secs(3600)));
    // The decision is seen at once in the metrics; the guest attributes follow within the
    // metadata server's write budget (10 writes in any 61 s), which a slow machine can have
    // spent by now (start-up, FAILING, a heartbeat every 15 s while doctor ran): the wait for
    // them is bounded by that window, not by a guess (the test was flaky with 30 s under load).
    eventually(Duration::from_secs(30), "metrics: OK while ignored", || {
        (metric(metrics, "spa_health{health=\"OK\"}") == Some(1.0)).then_some(())
    });
    let budget_window = Duration::from_secs(61);
    eventually(
        budget_window + Duration::from_secs(15),
        "guest attributes: OK while ignored",
        || published("OK", "").then_some(()),
    );
    assert!(
        md.writes().iter().all(|w| !w.dropped),
        "a write over the budget was sent: {:?}",
        md.writes()
    );
    let line = daemon.wait_log(Duration::from_secs(10), "the ignored finding", |l| {
        l.contains("\"finding\":\"SCOPES_INSUFFICIENT\"") && l.contains("\"ignored\":true")
    });
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["reason"], REASON, "{line}");
    assert_eq!(line["ignored_by"], "gce-service-proxy metadata", "{line}");
    assert!(
        line["message"].as_str().unwrap().contains(&format!(
            "(ignored until {}: {REASON})",
            line["until"].as_str().unwrap()
        )),
        "{line}"
    );
    daemon.wait_log(Duration::from_secs(10), "the unusable rule", |l| {
        l.contains("agent.ignore-findings[1]: unknown finding ID")
    });
    let id = "{id=\"SCOPES_INSUFFICIENT\",severity=\"error\"}";
    eventually(
        Duration::from_secs(10),
        "metrics: ignored, not active",
        || {
            (metric(metrics, &format!("spa_finding_ignored{id}")) == Some(1.0)
                && metric(metrics, &format!("spa_finding_active{id}")) == Some(0.0)
                && metric(metrics, "spa_health{health=\"OK\"}") == Some(1.0))
            .then_some(())
        },
    );
    assert!(
        !daemon
            .lines()
            .iter()
            .any(|l| l.contains("SCOPES_INSUFFICIENT cleared")),
        "set aside is not cleared"
    );

    // doctor reads the same metadata through the same decision.
    let doctor_dir = tempfile::tempdir().unwrap();
    let mut cmd = agent(&md.host(), doctor_dir.path());
    cmd.args(["doctor", "--json"]);
    common(&mut cmd);
    let (out, _) = run(cmd, Duration::from_secs(60));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("doctor --json ({e}): {}", support::stderr(&out));
    });
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["schema_version"], 1, "{report:#}");
    assert_eq!(report["health"], "OK", "{report:#}");
    assert_eq!(report["findings"], serde_json::json!([]), "{report:#}");
    assert_eq!(
        report["ignored"][0]["id"], "SCOPES_INSUFFICIENT",
        "{report:#}"
    );
    assert_eq!(report["ignored"][0]["reason"], REASON, "{report:#}");
    assert_eq!(report["ignored"][0]["source"], "metadata", "{report:#}");
    assert!(
        report["ignore_problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("NOT_A_FINDING")),
        "{report:#}"
    );

    // The rule now ends in a few seconds: at `until` the finding counts again by itself.
    // Whole seconds, as the rule says it.
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let until = SystemTime::UNIX_EPOCH + Duration::from_secs(secs + 6);
    md.set_service_proxy(&ignore_until(until));
    // Read from the metrics: the guest attributes follow within the metadata server's write
    // budget (10 a minute), which this test has spent by now.
    eventually(Duration::from_secs(30), "FAILING again after until", || {
        (metric(metrics, "spa_health{health=\"FAILING\"}") == Some(1.0)
            && metric(metrics, &format!("spa_finding_active{id}")) == Some(1.0)
            && metric(metrics, &format!("spa_finding_ignored{id}")) == Some(0.0))
        .then_some(())
    });
    assert!(SystemTime::now() >= until, "came back before its until");
    daemon.wait_log(Duration::from_secs(10), "no longer ignored", |l| {
        l.contains("SCOPES_INSUFFICIENT no longer ignored")
    });
    eventually(Duration::from_secs(10), "raised a second time", || {
        let raised = daemon
            .lines()
            .iter()
            .filter(|l| {
                l.contains("\"finding\":\"SCOPES_INSUFFICIENT\"")
                    && l.contains("\"severity\":\"ERROR\"")
            })
            .count();
        (raised >= 2).then_some(())
    });
    md.set_scopes(&[CLOUD_PLATFORM]);
}
