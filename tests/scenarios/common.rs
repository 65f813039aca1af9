//! Helpers shared by the scenario tests: run the real `doctor --json` against real parts and
//! read its report; drive the observer and the diagnosis in-process where that is more
//! practical (history across snapshots, short grace periods).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use service_proxy_agent::config::Settings;
use service_proxy_agent::diagnose::log_findings::LogFindings;
use service_proxy_agent::diagnose::{self, CheckSettings, Diagnosis, History};
use service_proxy_agent::observe::{Observer, Snapshot};
use testkit::envoy::Envoy;
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};
use testkit::xds::BootstrapSpec;

pub const BIN: &str = env!("CARGO_BIN_EXE_service-proxy-agent");
/// Generous bound for "eventually" (real Envoy on 2 shared cores).
pub const WAIT: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The demo VM's project number as text.
pub fn project() -> String {
    VmIdentity::default().project_number.to_string()
}

pub fn start_envoy(spec: &BootstrapSpec) -> Envoy {
    Envoy::start(spec.envoy_config()).expect("real Envoy is needed (tests/setup-envoy.sh)")
}

/// Waits until Envoy's log has `needle`; fails with the log.
pub fn wait_log(envoy: &Envoy, needle: &str, timeout: Duration) {
    envoy
        .wait_until(timeout, &format!("log line {needle:?}"), |e| {
            Ok(e.log_text().contains(needle))
        })
        .unwrap();
}

/// A stat's value from `/stats?filter=`.
pub fn stat(envoy: &Envoy, name: &str) -> Option<String> {
    let (code, body) = envoy
        .admin_get(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))
        .ok()?;
    if code != 200 {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::to_owned)
}

/// `doctor --json` as the real binary, with a clean environment, the metadata server given,
/// metrics and Cloud Logging off, and interception off unless the args say otherwise.
pub struct Doctor {
    cmd: Command,
    _dir: tempfile::TempDir,
    interception_given: bool,
}

impl Doctor {
    pub fn new(metadata_host: &str) -> Doctor {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("empty.toml");
        std::fs::write(&config, "").unwrap();
        let mut cmd = Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("SPA_") || k == "GOOGLE_APPLICATION_CREDENTIALS" {
                cmd.env_remove(k);
            }
        }
        cmd.env("GCE_METADATA_HOST", metadata_host)
            .arg("doctor")
            .arg("--json")
            .arg("--config")
            .arg(&config)
            .args(["--metrics-addr", "off", "--cloud-logging", "off"])
            .stdin(Stdio::null());
        Doctor {
            cmd,
            _dir: dir,
            interception_given: false,
        }
    }

    /// Points at a real Envoy: its admin and its log directory.
    pub fn envoy(mut self, envoy: &Envoy) -> Doctor {
        self.cmd
            .args(["--envoy-admin", &envoy.admin_url()])
            .arg("--envoy-log-dir")
            .arg(envoy.dir());
        self
    }

    /// No Envoy here: a closed admin port and an empty log directory.
    pub fn no_envoy(mut self) -> Doctor {
        let logs = self._dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        self.cmd
            .args([
                "--envoy-admin",
                &format!("http://127.0.0.1:{}", free_port()),
            ])
            .arg("--envoy-log-dir")
            .arg(logs);
        self
    }

    /// An empty log directory (for an admin given with `args`).
    pub fn no_envoy_logs(mut self) -> Doctor {
        let logs = self._dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        self.cmd.arg("--envoy-log-dir").arg(logs);
        self
    }

    pub fn control_plane(mut self, target: &str) -> Doctor {
        self.cmd.args(["--control-plane", target]);
        self
    }

    pub fn args(mut self, args: &[&str]) -> Doctor {
        if args.iter().any(|a| a.starts_with("--interception")) {
            self.interception_given = true;
        }
        self.cmd.args(args);
        self
    }

    pub fn run(mut self) -> Report {
        if !self.interception_given {
            self.cmd.args(["--interception", "off"]);
        }
        let shown = format!("{:?}", self.cmd);
        let (out, took) = run_bounded(self.cmd, Duration::from_secs(120));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "doctor printed no JSON ({e}): {shown}\nstdout:\n{text}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        Report {
            json,
            code: out.status.code(),
            took,
        }
    }
}

fn run_bounded(mut cmd: Command, timeout: Duration) -> (Output, Duration) {
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
            // A zombie (exited, not yet reaped) is done too.
            if std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
            {
                return;
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed();
    let _ = watchdog.join();
    assert!(took < timeout, "doctor did not finish within {timeout:?}");
    (out, took)
}

/// `doctor --json`'s report.
pub struct Report {
    pub json: Value,
    pub code: Option<i32>,
    pub took: Duration,
}

impl Report {
    pub fn findings(&self) -> Vec<Value> {
        self.json["findings"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn ids(&self) -> Vec<String> {
        self.findings()
            .iter()
            .map(|f| f["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    pub fn has(&self, id: &str) -> bool {
        self.ids().iter().any(|i| i == id)
    }

    pub fn count(&self, id: &str) -> usize {
        self.ids().iter().filter(|i| *i == id).count()
    }

    /// The one finding with this ID; fails with the whole report otherwise.
    pub fn one(&self, id: &str) -> Value {
        let found: Vec<Value> = self
            .findings()
            .into_iter()
            .filter(|f| f["id"] == id)
            .collect();
        assert_eq!(found.len(), 1, "expected one {id}:\n{:#}", self.json);
        let f = found.into_iter().next().unwrap();
        for k in ["id", "severity", "summary", "detail", "remediation", "doc"] {
            assert!(
                f[k].as_str().is_some_and(|s| !s.is_empty()),
                "{id} has no {k}: {f:#}"
            );
        }
        f
    }

    /// The `detail` of the one finding with this ID.
    pub fn detail(&self, id: &str) -> String {
        self.one(id)["detail"].as_str().unwrap().to_owned()
    }

    pub fn lacks(&self, id: &str) {
        assert!(!self.has(id), "unexpected {id}:\n{:#}", self.json);
    }

    /// The group's line: `{group, status, reason?, note}`.
    pub fn group(&self, name: &str) -> Value {
        self.json["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["group"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no group {name}: {:#}", self.json))
    }
}

/// Asserts `text` contains every needle, showing the text otherwise.
#[track_caller]
pub fn contains_all(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "{n:?} not in:\n{text}");
    }
}

pub fn vm() -> MetadataEmulator {
    MetadataEmulator::start(VmIdentity::default()).unwrap()
}

/// The settings `doctor` would resolve from these flags (config file: none).
pub fn settings(metadata_host: &str, flags: &[&str]) -> Settings {
    use clap::Parser;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let mut argv: Vec<String> = vec!["spa".into(), "doctor".into()];
    argv.extend(["--config".into(), config.display().to_string()]);
    argv.extend(flags.iter().map(|s| (*s).to_owned()));
    let cli = service_proxy_agent::cli::Cli::try_parse_from(argv).unwrap();
    let host = metadata_host.to_owned();
    Settings::resolve(&cli.common.into_args(), move |k| {
        (k == "GCE_METADATA_HOST").then(|| host.clone())
    })
    .unwrap()
}

/// The observer and the diagnosis state the daemon keeps, driven snapshot by snapshot.
pub struct InProcess {
    pub rt: tokio::runtime::Runtime,
    pub observer: Observer,
    pub checks: CheckSettings,
    pub history: History,
    pub logs: LogFindings,
}

impl InProcess {
    pub fn new(settings: &Settings) -> InProcess {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The observer's HTTP clients live on this runtime.
        let observer = {
            let _g = rt.enter();
            Observer::new(settings)
        };
        InProcess {
            rt,
            observer,
            checks: CheckSettings::from_settings(settings),
            history: History::new(),
            logs: LogFindings::new(),
        }
    }

    /// One snapshot (with the reachability probe when `probe`), diagnosed now.
    pub fn diagnose(&mut self, probe: bool) -> Diagnosis {
        self.observe_and_diagnose(probe).1
    }

    /// [`Self::diagnose`], with the snapshot it diagnosed.
    pub fn observe_and_diagnose(&mut self, probe: bool) -> (Snapshot, Diagnosis) {
        let snap = self.rt.block_on(self.observer.snapshot(probe));
        let d = diagnose::run(
            &snap,
            &mut self.history,
            &mut self.logs,
            &self.checks,
            Instant::now(),
        );
        (snap, d)
    }

    /// Reads the log directory's recent entries into the log tracker, as `doctor` does.
    pub fn read_logs(&mut self, dir: &Path) {
        let files = service_proxy_agent::observe::envoy_log::read_recent(
            dir,
            service_proxy_agent::observe::envoy_log::DEFAULT_TAIL_BYTES,
        )
        .unwrap();
        for f in files {
            if let Ok(tail) = &f.tail {
                self.logs
                    .record_tail(tail, Instant::now(), std::time::SystemTime::now());
            }
        }
    }
}

pub fn ids_of(d: &Diagnosis) -> Vec<&'static str> {
    d.findings.iter().map(|f| f.id.as_str()).collect()
}
