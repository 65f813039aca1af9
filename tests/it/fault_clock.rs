//! The wall clock jumping under the daemon (an NTP step, a VM restored from a snapshot): a day
//! forward, then two days back, then back to the true time, through libfaketime
//! (`FAKETIME_TIMESTAMP_FILE` rewritten while the agent runs, `FAKETIME_NO_CACHE=1`) with the
//! monotonic clock left alone, as on a real VM.
//!
//! The agent must keep cycling at its poll interval (no tight loop, no stall), keep writing its
//! heartbeat (which carries the wall time, so the jumps show there), stay within the
//! guest-attribute budget, and time findings by the monotonic clock: a log-derived finding
//! neither expires because the wall clock leapt forward nor stays because it went back.

use crate::faults_common as common;
use crate::support;
use crate::support_daemon as daemon;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use daemon::{ATTRIBUTE_WRITE_WAIT, Daemon, eventually};
use support::agent;
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};

const LIBFAKETIME: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
];
const TTL_SECS: u64 = 30;
const DAY: f64 = 86_400.0;

fn libfaketime() -> &'static str {
    LIBFAKETIME
        .iter()
        .find(|p| Path::new(p).exists())
        .copied()
        .unwrap_or_else(|| {
            panic!("libfaketime is needed (apt-get install faketime; tests/setup-system.sh)")
        })
}

fn real_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn finding_active(addr: SocketAddr, id: &str) -> Option<bool> {
    let text = metrics_text(addr);
    let prefix = format!("spa_finding_active{{id=\"{id}\"");
    let line = text.lines().find(|l| l.starts_with(&prefix))?;
    Some(line.ends_with(" 1"))
}

/// The agent's wall clock as its last cycle saw it, minus the real one, in seconds.
fn agent_clock_offset(addr: SocketAddr) -> Option<f64> {
    metric(addr, "spa_heartbeat_timestamp_seconds")
        .filter(|t| *t > 0.0)
        .map(|t| t - real_now())
}

fn jump(file: &Path, offset: &str) {
    std::fs::write(file, format!("{offset}\n")).unwrap();
}

/// How far a heartbeat's wall time is from the real time now, in days. Compared as instants, not
/// as date strings: a run that crosses midnight must not read "today" as another day.
fn heartbeat_offset_days(heartbeat: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339(heartbeat).ok()?;
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs_f64();
    Some((secs - real_now()) / DAY)
}

/// The heartbeat written with the agent's clock `days` away from the real one (within a tenth of
/// a day, as `wait_offset`).
fn heartbeat_at(md: &MetadataEmulator, days: f64) -> Option<String> {
    attr(md, "agent-heartbeat")
        .filter(|h| heartbeat_offset_days(h).is_some_and(|o| (o - days).abs() < 0.1))
}

/// Waits until the agent's cycles see the wall clock `days` away from the real one.
fn wait_offset(metrics: SocketAddr, days: f64, what: &str) {
    eventually(Duration::from_secs(20), what, || {
        agent_clock_offset(metrics).filter(|o| (o / DAY - days).abs() < 0.1)
    });
}

fn failure_line() -> String {
    let now = String::from_utf8(
        std::process::Command::new("date")
            .arg("+%Y-%m-%d %H:%M:%S.000")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    format!(
        "[{}][12][warning][config] [source/extensions/config_subscription/grpc/grpc_stream.h:191] StreamAggregatedResources gRPC config stream to cp closed: 5, Cloud Service Mesh configuration was not found for network \"default\" in project \"123\".\n",
        now.trim()
    )
}

#[test]
fn the_daemon_survives_the_wall_clock_jumping() {
    let lib = libfaketime();
    let md = MetadataEmulator::start(VmIdentity {
        project_number: 123,
        ..VmIdentity::default()
    })
    .unwrap();
    let mut answers = AdminAnswers::healthy();
    // Disconnected: the stats do not contradict the log's finding, only time clears it.
    answers.stats = Arc::new(
        HEALTHY_STATS
            .replace("connected_state: 1", "connected_state: 0")
            .into_bytes(),
    );
    let admin = StandInAdmin::start(answers);
    let (_cp, cp_addr) = reachable_control_plane();
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("faketime");
    jump(&clock, "+0");
    let log = dir.path().join("envoy.err.log");
    std::fs::write(&log, "").unwrap();
    let metrics = free_addr();
    let mut cmd = agent(&md.host(), dir.path());
    cmd.env("LD_PRELOAD", lib)
        .env("FAKETIME_TIMESTAMP_FILE", &clock)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .args(["--interception", "off", "--poll-interval", "1s"])
        .args(["--heartbeat-interval", "1s"])
        .args(["--finding-ttl", &format!("{TTL_SECS}s")])
        .args(["--envoy-admin", &admin.url()])
        .arg("--envoy-log-dir")
        .arg(dir.path())
        .args(["--metrics-addr", &metrics.to_string()])
        .args(["--control-plane", &cp_addr]);
    let start = Instant::now();
    let mut agent = Daemon::start(cmd, tempfile::tempdir().unwrap());
    wait_offset(metrics, 0.0, "first cycle at the true time");
    let hb0 = eventually(Duration::from_secs(30), "first heartbeat", || {
        attr(&md, "agent-heartbeat")
    });

    // A finding from the log, then the clock a day forward.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, failure_line().as_bytes()).unwrap();
    drop(f);
    eventually(Duration::from_secs(10), "finding raised", || {
        finding_active(metrics, "MESH_CONFIG_NOT_FOUND").filter(|a| *a)
    });
    let sighted = Instant::now();
    jump(&clock, "+1d");
    wait_offset(metrics, 1.0, "the agent's clock a day forward");
    cycles_advance(metrics, 3, Duration::from_secs(15), "after jumping forward");
    assert!(
        sighted.elapsed() < Duration::from_secs(TTL_SECS - 5),
        "too slow to judge the expiry"
    );
    assert_eq!(
        finding_active(metrics, "MESH_CONFIG_NOT_FOUND"),
        Some(true),
        "a day of wall clock expired a finding seen {:?} ago",
        sighted.elapsed()
    );
    let hb1 = eventually(ATTRIBUTE_WRITE_WAIT, "heartbeat from tomorrow", || {
        heartbeat_at(&md, 1.0)
    });
    eprintln!("heartbeats: {hb0} -> {hb1}");

    // Two days back: yesterday.
    jump(&clock, "-1d");
    wait_offset(metrics, -1.0, "the agent's clock a day back");
    cycles_advance(metrics, 3, Duration::from_secs(15), "after jumping back");
    let hb2 = eventually(ATTRIBUTE_WRITE_WAIT, "heartbeat from yesterday", || {
        heartbeat_at(&md, -1.0)
    });
    eprintln!("heartbeat: {hb2}");
    // The finding clears after its TTL of monotonic time, the clock's leaps notwithstanding.
    eventually(
        Duration::from_secs(TTL_SECS + 20).saturating_sub(sighted.elapsed()),
        "finding cleared after its TTL",
        || finding_active(metrics, "MESH_CONFIG_NOT_FOUND").filter(|a| !*a),
    );
    let cleared = sighted.elapsed();
    assert!(
        cleared >= Duration::from_secs(TTL_SECS - 2),
        "cleared after {cleared:?}, TTL {TTL_SECS} s"
    );

    // The true time again.
    jump(&clock, "+0");
    wait_offset(metrics, 0.0, "the agent's clock back to the true time");
    cycles_advance(metrics, 3, Duration::from_secs(15), "back to the true time");
    eventually(ATTRIBUTE_WRITE_WAIT, "heartbeat from today", || {
        heartbeat_at(&md, 0.0).filter(|h| *h > hb0)
    });
    assert!(agent.is_running());

    // No tight loop: cycles at the poll interval, writes within the budget.
    let secs = start.elapsed().as_secs_f64();
    let n = cycles(metrics);
    assert!(
        n <= secs * 1.5 + 5.0,
        "{n} cycles in {secs:.0} s at a 1 s poll interval"
    );
    assert!(n >= secs / 3.0, "{n} cycles in {secs:.0} s: stalled");
    assert!(md.violations().is_empty(), "{:?}", md.violations());
    let writes = md.writes().len() as f64;
    assert!(
        writes <= 10.0 * (secs / 60.0).ceil() + 3.0,
        "{writes} guest-attribute writes in {secs:.0} s"
    );
    let (status, _) = agent.stop();
    assert!(status.success(), "{status}");
    // One log line per event: no error storm from the jumps.
    let lines = agent.lines().len() as f64;
    assert!(
        lines < secs * 2.0 + 50.0,
        "{lines} log lines in {secs:.0} s"
    );
}
