//! Runs the real `service-proxy-agent` binary for integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_service-proxy-agent");

/// A command for the agent with a clean environment: no `SPA_*` from the caller, no config file
/// from /etc (an explicit empty one), metrics and Cloud Logging off, the metadata server given.
pub fn agent(metadata_host: &str, config_dir: &Path) -> Command {
    let config = config_dir.join("empty.toml");
    if !config.exists() {
        std::fs::write(&config, "").unwrap();
    }
    // Some tests run it as an unprivileged UID.
    let bin = testkit::exec::reachable_by_all(Path::new(BIN)).expect("the agent's binary");
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("SPA_") || k == "GOOGLE_APPLICATION_CREDENTIALS" {
            cmd.env_remove(k);
        }
    }
    // Through the environment, so a test's own flags override them (flag > env).
    cmd.env("GCE_METADATA_HOST", metadata_host)
        .env("SPA_CONFIG", config)
        .env("SPA_METRICS_ADDR", "off")
        .env("SPA_CLOUD_LOGGING", "off")
        .stdin(Stdio::null());
    cmd
}

/// The agent's daemon with no Envoy beside it: its admin at a closed port, interception off,
/// `logs` as Envoy's log directory, and the control-plane check against `control_plane` (a
/// closed port when `None`). Callers add what their test is about (poll interval, metrics).
pub fn agent_without_envoy(
    metadata_host: &str,
    config_dir: &Path,
    logs: &Path,
    control_plane: Option<&str>,
) -> Command {
    let mut cmd = agent(metadata_host, config_dir);
    let closed_control_plane = format!("127.0.0.1:{}", closed_port());
    cmd.args([
        "--envoy-admin",
        &format!("http://127.0.0.1:{}", closed_port()),
    ])
    .arg("--envoy-log-dir")
    .arg(logs)
    .args(["--interception", "off"])
    .args([
        "--control-plane",
        control_plane.unwrap_or(&closed_control_plane),
    ]);
    cmd
}

/// Runs to completion with a deadline; returns the output and how long it took.
pub fn run(mut cmd: Command, timeout: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run service-proxy-agent");
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
        }
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    });
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed();
    let _ = watchdog.join();
    assert!(
        took < timeout,
        "service-proxy-agent did not finish within {timeout:?}"
    );
    (out, took)
}

/// A loopback port with nothing listening.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `cmd` (its program, arguments and environment changes) run under
/// `strace -f -e trace=execve -o trace`. strace writes each line as it happens, so a test reads
/// the trace while the agent runs. Fails saying what is missing when strace is not installed.
pub fn under_strace(cmd: &Command, trace: &Path) -> Command {
    assert!(
        Command::new("strace").arg("-V").output().is_ok(),
        "strace is needed (apt-get install strace; tests/setup-system.sh)"
    );
    let mut strace = Command::new("strace");
    strace
        .args(["-f", "-qq", "-s", "256", "-e", "trace=execve", "-o"])
        .arg(trace);
    run_through(strace, cmd)
}

/// `cmd` run by `wrapper` (strace, setpriv...): its program and arguments appended to the
/// wrapper's, its environment changes made on the wrapper (which passes them on), no stdin.
pub fn run_through(mut wrapper: Command, cmd: &Command) -> Command {
    wrapper.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapper.env(k, v),
            None => wrapper.env_remove(k),
        };
    }
    wrapper.stdin(Stdio::null());
    wrapper
}

/// Every program a trace of the agent under [`under_strace`] shows executed (successfully or
/// not), the agent itself excepted.
pub fn executed(trace: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(trace).expect("strace's output");
    let progs: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once("execve(\"").map(|(_, r)| r))
        .filter_map(|r| r.split_once('"').map(|(p, _)| p.to_owned()))
        .collect();
    assert!(
        progs
            .first()
            .is_some_and(|p| Path::new(p).file_name() == Path::new(BIN).file_name()),
        "not a trace of the agent: {text}"
    );
    progs.into_iter().skip(1).collect()
}
