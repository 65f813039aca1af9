//! Envoy's admin misbehaving, endpoint by endpoint, under the real daemon: a stand-in admin
//! (`HttpStub` on loopback, healthy answers captured from Envoy 1.40.0) hangs, cuts its JSON
//! short, sends 100 MB, 100,000-deep nesting or bytes that are not UTF-8 on one of
//! `/server_info`, `/config_dump?resource=dynamic_listeners`, `/clusters?format=json`, `/stats`.
//! Each time the agent keeps completing cycles within their deadlines, reports the fault (a
//! finding for `/server_info`, a `source=envoy_admin` failure for the others) and recovers when
//! the admin is healthy again. A closed admin port (Envoy down and back) is covered with a real
//! Envoy by `tests/it/daemon.rs`.

use crate::faults_common as common;
use crate::support;
use crate::support_daemon as daemon;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use daemon::Daemon;
use support::{agent, closed_port};
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};

/// The admin client's per-request deadline (`Observer::new`).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_secs(1);

struct Run {
    md: MetadataEmulator,
    admin: StandInAdmin,
    agent: Daemon,
    metrics: SocketAddr,
}

/// The VM as the captured `/server_info` node describes it (project 123, network default).
fn vm() -> VmIdentity {
    VmIdentity {
        project_number: 123,
        ..VmIdentity::default()
    }
}

fn start() -> Run {
    let md = MetadataEmulator::start(vm()).unwrap();
    let admin = StandInAdmin::start(AdminAnswers::healthy());
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("envoy");
    std::fs::create_dir(&logs).unwrap();
    let metrics = free_addr();
    let mut cmd = agent(&md.host(), dir.path());
    cmd.args(["--envoy-admin", &admin.url()])
        .arg("--envoy-log-dir")
        .arg(&logs)
        .args(["--interception", "off", "--poll-interval", "1s"])
        .args(["--heartbeat-interval", "2s"])
        .args(["--metrics-addr", &metrics.to_string()])
        .args(["--control-plane", &format!("127.0.0.1:{}", closed_port())]);
    let agent = Daemon::start(cmd, dir);
    daemon::eventually(daemon::ATTRIBUTE_WRITE_WAIT, "proxy-state LIVE", || {
        (attr(&md, "proxy-state").as_deref() == Some("LIVE")).then_some(())
    });
    Run {
        md,
        admin,
        agent,
        metrics,
    }
}

/// How many cycles must complete, and within how long, while `ep` misbehaves: a cycle lasts
/// at most the admin deadline (the other endpoints are read concurrently) plus a poll.
fn budget(n: u32, slow: bool) -> Duration {
    let cycle = if slow { ADMIN_TIMEOUT } else { Duration::ZERO } + POLL.mul_f64(1.1);
    cycle * n + Duration::from_secs(10)
}

/// Sets `body` (or a hang) on `ep`, checks the agent goes on and says what is wrong, lifts it,
/// checks the agent recovers. `expect` is a part of the report (the agent's error text).
fn inject(run: &mut Run, ep: Endpoint, fault: AdminFault, expect: &str, slow: bool) {
    let what = format!("{} {expect}", ep.name());
    let skip = run.agent.lines().len();
    run.admin.set(ep, fault);
    // Reported.
    let line = if ep == Endpoint::ServerInfo {
        wait_line_after(
            || run.agent.lines(),
            skip,
            budget(2, slow),
            &format!("{what}: an admin finding"),
            |l| {
                (l.contains("\"finding\":\"ENVOY_NOT_RUNNING\"")
                    || l.contains("\"finding\":\"ENVOY_ADMIN_UNREACHABLE\""))
                    && l.contains(expect)
            },
        )
    } else {
        wait_line_after(
            || run.agent.lines(),
            skip,
            budget(2, slow),
            &format!("{what}: a failure with source envoy_admin"),
            |l| {
                l.contains("\"source\":\"envoy_admin\"")
                    && l.contains(ep.name())
                    && l.contains(expect)
            },
        )
    };
    assert!(line.contains(ep.name()), "{line}");
    // Keeps running, cycles complete within their deadlines.
    cycles_advance(run.metrics, 3, budget(3, slow), &what);
    assert!(run.agent.is_running(), "{what}: the agent died");
    let status = std::fs::read_to_string(format!("/proc/{}/status", run.agent.pid())).unwrap();
    assert!(!status.contains("State:\tZ"), "{what}: zombie");
    // Recovers.
    let skip = run.agent.lines().len();
    run.admin.clear();
    if ep == Endpoint::ServerInfo {
        wait_line_after(
            || run.agent.lines(),
            skip,
            budget(3, false),
            &format!("{what}: the admin finding cleared"),
            |l| {
                l.contains("ENVOY_NOT_RUNNING cleared")
                    || l.contains("ENVOY_ADMIN_UNREACHABLE cleared")
            },
        );
    } else {
        wait_line_after(
            || run.agent.lines(),
            skip,
            budget(3, false),
            &format!("{what}: recovered"),
            |l| l.contains("\"source\":\"envoy_admin\"") && l.contains("recovered"),
        );
    }
    cycles_advance(
        run.metrics,
        2,
        budget(2, false),
        &format!("{what}: after recovery"),
    );
}

fn healthy_body(ep: Endpoint) -> Vec<u8> {
    let a = AdminAnswers::healthy();
    match ep {
        Endpoint::ServerInfo => (*a.server_info).clone(),
        Endpoint::Listeners => (*a.listeners).clone(),
        Endpoint::Clusters => (*a.clusters).clone(),
        Endpoint::Stats => (*a.stats).clone(),
        Endpoint::Other => Vec::new(),
    }
}

#[test]
fn an_admin_endpoint_hanging_forever_costs_one_deadline_per_cycle() {
    let mut run = start();
    for ep in Endpoint::ALL {
        inject(&mut run, ep, AdminFault::Hang, "no answer within", true);
    }
    assert!(run.agent.stop().0.success());
    drop(run.md);
}

#[test]
fn truncated_answers_are_reported_and_survived() {
    let mut run = start();
    for ep in [
        Endpoint::ServerInfo,
        Endpoint::Listeners,
        Endpoint::Clusters,
    ] {
        let mut body = healthy_body(ep);
        body.truncate(body.len() / 2);
        inject(
            &mut run,
            ep,
            AdminFault::Body(Arc::new(body)),
            "malformed answer",
            false,
        );
    }
    // `/stats` is text: a cut answer is the lines that arrived (a cut line is ignored). The
    // agent reads it as such; the connection state it lacks is then unknown, not 0.
    let mut stats = healthy_body(Endpoint::Stats);
    stats.truncate(stats.len() / 2);
    let before = run.agent.lines().len();
    run.admin
        .set(Endpoint::Stats, AdminFault::Body(Arc::new(stats)));
    cycles_advance(run.metrics, 3, budget(3, false), "truncated /stats");
    assert!(run.agent.is_running());
    let lines = run.agent.lines();
    assert!(
        !lines[before..]
            .iter()
            .any(|l| l.contains("CONTROL_PLANE_DISCONNECTED")),
        "a cut /stats was read as disconnected: {lines:#?}"
    );
    run.admin.clear();
    assert!(run.agent.stop().0.success());
}

#[test]
fn deeply_nested_answers_are_refused_without_overflowing_the_stack() {
    let mut run = start();
    let depth = 100_000;
    for ep in [
        Endpoint::ServerInfo,
        Endpoint::Listeners,
        Endpoint::Clusters,
    ] {
        // At the top, and inside a field the agent otherwise skips.
        let top = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        inject(
            &mut run,
            ep,
            AdminFault::Body(Arc::new(top.into_bytes())),
            "malformed answer",
            false,
        );
        let inner = format!(
            "{{\"ignored\": {}{}, \"state\": \"LIVE\"}}",
            "{\"a\":".repeat(depth),
            "}".repeat(depth)
        );
        inject(
            &mut run,
            ep,
            AdminFault::Body(Arc::new(inner.into_bytes())),
            "malformed answer",
            false,
        );
    }
    // `/stats` is text: one absurd line, ignored; the loop goes on.
    let nested = format!(
        "{}{}\n{HEALTHY_STATS}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    run.admin.set(
        Endpoint::Stats,
        AdminFault::Body(Arc::new(nested.into_bytes())),
    );
    cycles_advance(run.metrics, 3, budget(3, false), "nested /stats");
    assert!(run.agent.is_running());
    run.admin.clear();
    assert!(run.agent.stop().0.success());
}

#[test]
fn answers_that_are_not_utf8_are_reported() {
    let mut run = start();
    for ep in Endpoint::ALL {
        // Valid JSON / text around bytes that are not UTF-8, inside a value the agent reads.
        let body = match ep {
            Endpoint::ServerInfo => b"{\"version\":\"1.40.0\xff\xfe\",\"state\":\"LIVE\"}".to_vec(),
            Endpoint::Listeners => {
                let mut b = healthy_body(ep);
                let at = b.windows(10).position(|w| w == b"10.0.0.1\",").unwrap();
                b.splice(at..at + 8, b"10.0.\xc0\x80.1".iter().copied());
                b
            }
            Endpoint::Clusters => {
                let mut b = healthy_body(ep);
                let at = b.windows(2).position(|w| w == b"\":").unwrap();
                b.insert(at, 0xff);
                b
            }
            _ => {
                let mut b = b"control_plane.connected_state: \xff\xfe1\n".to_vec();
                b.extend_from_slice(HEALTHY_STATS.as_bytes());
                b
            }
        };
        inject(
            &mut run,
            ep,
            AdminFault::Body(Arc::new(body)),
            "malformed answer",
            false,
        );
    }
    assert!(run.agent.stop().0.success());
}

/// A 100 MB answer is cut at the admin cap and refused; the agent's peak memory stays modest.
#[test]
fn a_100_mb_answer_is_refused_and_memory_stays_bounded() {
    let mut run = start();
    let pid = run.agent.pid();
    let hwm_before = status_kib(pid, "VmHWM").unwrap();
    // Valid JSON all along (a string that never ends within the cap), so only size stops it.
    let mut big = Vec::with_capacity(100 << 20);
    big.extend_from_slice(b"{\"version\":\"");
    big.resize(100 << 20, b'x');
    let big = Arc::new(big);
    for ep in Endpoint::ALL {
        inject(
            &mut run,
            ep,
            AdminFault::Body(big.clone()),
            "answer larger than",
            false,
        );
    }
    let hwm = status_kib(pid, "VmHWM").unwrap();
    let rss = status_kib(pid, "VmRSS").unwrap();
    eprintln!(
        "agent VmHWM before {hwm_before} KiB, after four 100 MB answers {hwm} KiB; VmRSS now {rss} KiB"
    );
    assert!(
        hwm < 100 * 1024,
        "peak memory {hwm} KiB with 100 MB admin answers (before: {hwm_before} KiB)"
    );
    // Three at once (`/server_info` healthy, so the others are read): the two big answers are
    // read one after the other and `/stats` has a small cap, so the peak stays about one cap.
    for ep in [Endpoint::Listeners, Endpoint::Clusters, Endpoint::Stats] {
        run.admin.set(ep, AdminFault::Body(big.clone()));
    }
    cycles_advance(
        run.metrics,
        3,
        budget(3, false),
        "three 100 MB answers at once",
    );
    assert!(run.agent.is_running());
    let hwm3 = status_kib(pid, "VmHWM").unwrap();
    eprintln!("agent VmHWM with three 100 MB answers in the same cycle: {hwm3} KiB");
    assert!(
        hwm3 < 100 * 1024,
        "peak memory {hwm3} KiB with three 100 MB answers at once"
    );
    run.admin.clear();
    assert!(run.agent.stop().0.success());
}
