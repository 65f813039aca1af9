//! A running `service-proxy-agent run` for integration tests: its stdout lines are collected,
//! it is stopped with SIGTERM on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub struct Daemon {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `run` with `args` (after the clean base of `support::agent`).
    pub fn start(mut cmd: Command, dir: tempfile::TempDir) -> Daemon {
        cmd.arg("run").stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start service-proxy-agent run");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Daemon {
            child: Some(child),
            lines,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Parsed JSON log lines (every line must be JSON).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
            })
            .collect()
    }

    pub fn wait_log(&self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "agent never logged {what}; its log:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// SIGTERM and wait (bounded); returns the exit status and how long it took.
    pub fn stop(&mut self) -> (ExitStatus, Duration) {
        let start = Instant::now();
        self.signal(Signal::SIGTERM);
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                panic!("agent did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// How long a change may take to reach the guest attributes: the agent writes at most 8 a
/// minute, so a change that follows a burst of writes (the first publication, a failure and
/// its recovery) waits for the minute's window to free. Waits on attribute changes use this.
pub const ATTRIBUTE_WRITE_WAIT: Duration = Duration::from_secs(75);

/// Waits (bounded) for `pred` to hold.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "not reached within {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A loopback address no one listens on now (the port the kernel would give next).
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A guest attribute the agent published in `gce-service-proxy/`, as the emulator holds it.
pub fn guest_attr(md: &testkit::metadata_emulator::MetadataEmulator, key: &str) -> Option<String> {
    md.guest_attributes(service_proxy_agent::contract::guest_attributes::NAMESPACE)
        .get(key)
        .cloned()
}

/// The world of the daemon tests: the metadata emulator, the xDS stand-in serving one VIP
/// (10.0.0.1:80) to the node it expects, and a real Envoy fed by it, LIVE, with its admin on
/// `admin`.
pub struct OneVipMesh {
    pub md: testkit::metadata_emulator::MetadataEmulator,
    pub cp: testkit::xds::ControlPlane,
    pub envoy: testkit::envoy::Envoy,
    pub admin: std::net::SocketAddr,
    /// What Envoy was started from, to start it again.
    pub bootstrap: testkit::xds::BootstrapSpec,
}

impl OneVipMesh {
    pub fn start() -> OneVipMesh {
        use testkit::xds::{ExpectedNode, InterceptionSpec, ServiceVip};
        let vm = testkit::metadata_emulator::VmIdentity::default();
        let project = vm.project_number.to_string();
        let md = testkit::metadata_emulator::MetadataEmulator::start(vm).unwrap();
        let cp = testkit::xds::ControlPlane::start().unwrap();
        cp.set_interception(
            &InterceptionSpec::new(15001, &project)
                .service(ServiceVip::parse("10.0.0.1:80").unwrap()),
        );
        cp.expect_node(Some(ExpectedNode::new("default", &project)));
        let mut bootstrap = cp.bootstrap("default", &project);
        let admin = free_addr();
        bootstrap.admin = Some(admin);
        let envoy = testkit::envoy::Envoy::start(bootstrap.envoy_config())
            .expect("real Envoy (tests/setup-envoy.sh)");
        envoy.wait_live(Duration::from_secs(30)).unwrap();
        OneVipMesh {
            md,
            cp,
            envoy,
            admin,
            bootstrap,
        }
    }
}
