//! The metrics endpoint of a running agent, read by the tools that consume it: Prometheus'
//! own linter (`promtool check metrics`, Debian's `prometheus`) on the classic text a plain
//! scrape gets, and the OpenMetrics parser of Prometheus' Python client on the answer to a
//! scrape that asks for OpenMetrics.

use crate::support;
use crate::support_daemon as daemon;
use crate::support_daemon::free_addr;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use daemon::{Daemon, eventually};
use support::{agent, agent_without_envoy};
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};

const OPENMETRICS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// GET /metrics with an optional `Accept`: (content type, body).
fn scrape(addr: SocketAddr, accept: Option<&str>) -> Option<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    // One write: `write!` sends each formatted piece as its own segment.
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let ctype = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-type")
            .then(|| v.trim().to_owned())
    })?;
    Some((ctype, body.to_owned()))
}

fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn python() -> String {
    std::env::var("SPA_PYTHON").unwrap_or_else(|_| {
        testkit::envoy::workspace_root()
            .join(".venv/bin/python")
            .to_string_lossy()
            .into_owned()
    })
}

/// Runs `program` with `input` on stdin: (success, stdout + stderr).
fn run_with_stdin(cmd: &mut Command, input: &str) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} ({e}): run tests/setup-system.sh and tests/setup-google-clients.sh"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn promtool_and_the_openmetrics_parser_accept_the_endpoint() {
    let md = MetadataEmulator::start(VmIdentity::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_addr();
    let logs = dir.path().join("no-envoy-logs");
    let mut cmd = agent_without_envoy(&md.host(), dir.path(), &logs, None);
    cmd.args(["--poll-interval", "1s"])
        .args(["--metrics-addr", &metrics.to_string()]);
    let _agent = Daemon::start(cmd, dir);

    // After the first cycle (and the first CPU tick); no error has happened to the sinks yet.
    let (ctype, classic) = eventually(Duration::from_secs(30), "a first cycle", || {
        scrape(metrics, None).filter(|(_, b)| {
            value(b, "spa_cycles_total").is_some_and(|c| c >= 1.0)
                && value(b, "process_cpu_seconds_total").is_some_and(|s| s > 0.0)
        })
    });
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");

    let (ok, out) = run_with_stdin(
        Command::new("promtool").args(["check", "metrics"]),
        &classic,
    );
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}\n---\n{classic}"
    );

    // Every series from the start: error counters at 0, the build and the process.
    for series in [
        "spa_publish_errors_total{sink=\"cloud_logging\"}",
        "spa_publish_errors_total{sink=\"serial\"}",
        "spa_poll_errors_total{source=\"iptables\"}",
        "spa_cloud_logging_entries_sent_total",
        "spa_interception_errors_total",
        "spa_envoy_state{state=\"LIVE\"}",
    ] {
        assert_eq!(value(&classic, series), Some(0.0), "{series} in\n{classic}");
    }
    // Envoy's admin port is closed and no envoy runs: that error is counted.
    assert!(
        value(&classic, "spa_poll_errors_total{source=\"envoy_admin\"}").is_some_and(|n| n >= 1.0),
        "{classic}"
    );
    let version_dir = tempfile::tempdir().unwrap();
    let mut version = agent(&md.host(), version_dir.path());
    version.arg("version");
    let version = support::run(version, Duration::from_secs(10)).0;
    let version = support::stdout(&version);
    let commit = version
        .split("(commit ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| panic!("no commit in `version`: {version}"))
        .to_owned();
    let build_info = format!(
        "service_proxy_agent_build_info{{version=\"{}\",commit=\"{commit}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        value(&classic, &build_info),
        Some(1.0),
        "{build_info} in\n{classic}"
    );
    assert!(
        value(&classic, "process_resident_memory_bytes").is_some_and(|b| b > 1e6),
        "{classic}"
    );
    assert!(
        value(&classic, "process_open_fds").is_some_and(|n| n >= 3.0),
        "{classic}"
    );
    assert!(
        value(&classic, "process_cpu_seconds_total").is_some_and(|s| s > 0.0),
        "{classic}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        value(&classic, "process_start_time_seconds")
            .is_some_and(|t| t > now - 120.0 && t <= now + 1.0),
        "{classic}"
    );

    // OpenMetrics when asked (what Prometheus itself sends), parsed by the reference parser.
    let (ctype, om) = scrape(metrics, Some(OPENMETRICS_ACCEPT)).expect("an OpenMetrics scrape");
    assert_eq!(
        ctype,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let parse = r#"
import sys, json
from prometheus_client.openmetrics.parser import text_string_to_metric_families
fams = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    fams[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(fams))
"#;
    let (ok, out) = run_with_stdin(Command::new(python()).args(["-c", parse]), &om);
    assert!(
        ok,
        "the OpenMetrics parser refused the answer:\n{out}\n---\n{om}"
    );
    let fams: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(fams["spa_cycles"]["type"], "counter", "{out}");
    assert_eq!(fams["spa_finding_active"]["type"], "gauge", "{out}");
    assert_eq!(fams["process_cpu_seconds"]["type"], "counter", "{out}");
    assert_eq!(
        fams["service_proxy_agent_build_info"]["samples"][0][1]["commit"],
        commit.as_str(),
        "{out}"
    );
    // Same families in both formats.
    let classic_families: std::collections::BTreeSet<&str> = classic
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(|n| n.strip_suffix("_total").unwrap_or(n))
        .collect();
    let om_families: std::collections::BTreeSet<&str> = fams
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(classic_families, om_families);
}
