//! Shared by the fault-injection and hostile-content tests (`tests/fault_*.rs`, `tests/it/fault_hostile.rs`):
//! a stand-in for Envoy's admin built on `HttpStub`, metric and /proc readers, and private mount
//! namespaces for replacing system binaries without touching the host's.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::http_stub::{Recorded, Reply};
use testkit::metadata_emulator::MetadataEmulator;

pub const NS: &str = "gce-service-proxy";

/// The UID the fault tests give as Envoy's (`nobody`).
pub const ENVOY_UID: &str = "65534";

/// The flags of an enforce-mode agent against a (stand-in) admin at `admin_url`, following
/// `log_dir`, with Envoy's UID and a control plane to check; callers add the rest.
pub fn enforce_flags<'a>(
    cmd: &'a mut Command,
    admin_url: &str,
    log_dir: &Path,
    cp_addr: &str,
) -> &'a mut Command {
    cmd.args(["--interception", "enforce"])
        .args(["--envoy-admin", admin_url])
        .arg("--envoy-log-dir")
        .arg(log_dir)
        .args(["--envoy-user", ENVOY_UID])
        .args(["--control-plane", cp_addr])
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A loopback address that accepts TCP connections (the kernel completes the handshake), to
/// stand for a reachable control plane so that its check raises no failure of its own.
pub fn reachable_control_plane() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

pub fn attr(md: &MetadataEmulator, key: &str) -> Option<String> {
    md.guest_attributes(NS).get(key).cloned()
}

/// The value of one sample of `/metrics` (`name` may carry labels: `spa_health{health="OK"}`).
pub fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = testkit::envoy::http_get(addr, "/metrics").ok()?;
    sample(&body, name)
}

/// The value of one sample in a scrape's text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn metrics_text(addr: SocketAddr) -> String {
    testkit::envoy::http_get(addr, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

pub fn cycles(addr: SocketAddr) -> f64 {
    metric(addr, "spa_cycles_total").unwrap_or(0.0)
}

/// Waits until `spa_cycles_total` has grown by `n` from now: the loop is not stalled.
pub fn cycles_advance(addr: SocketAddr, n: u32, timeout: Duration, what: &str) {
    // A scrape that fails is told apart from a loop that stalls (both read as no progress).
    let scrape = || {
        testkit::envoy::http_get(addr, "/metrics")
            .map_err(|e| e.to_string())
            .and_then(|(_, text)| {
                sample(&text, "spa_cycles_total")
                    .ok_or_else(|| "no spa_cycles_total in the scrape".to_owned())
            })
    };
    let started = Instant::now();
    let deadline = started + timeout;
    let mut start = scrape();
    loop {
        let now = scrape();
        match (&start, &now) {
            (Ok(s), Ok(c)) if *c >= s + f64::from(n) => return,
            (Err(_), Ok(_)) => start = now.clone(),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the loop did not complete {n} cycles in {timeout:?}: spa_cycles_total \
             {start:?} at the start, {now:?} at the last scrape ({:?} in)",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A field of /proc/<pid>/status in KiB (`VmHWM`, `VmRSS`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Which admin endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    ServerInfo,
    Listeners,
    Clusters,
    Stats,
    Other,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Endpoint::ServerInfo,
        Endpoint::Listeners,
        Endpoint::Clusters,
        Endpoint::Stats,
    ];

    pub fn of(path: &str) -> Endpoint {
        if path.starts_with("/server_info") {
            Endpoint::ServerInfo
        } else if path.starts_with("/config_dump") {
            Endpoint::Listeners
        } else if path.starts_with("/clusters") {
            Endpoint::Clusters
        } else if path.starts_with("/stats") {
            Endpoint::Stats
        } else {
            Endpoint::Other
        }
    }

    /// How the agent names it in its errors.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ServerInfo => "/server_info",
            Endpoint::Listeners => "/config_dump?resource=dynamic_listeners",
            Endpoint::Clusters => "/clusters?format=json",
            Endpoint::Stats => "/stats",
            Endpoint::Other => "?",
        }
    }
}

/// A healthy Envoy 1.40.0 admin, from real captured answers: LIVE, connected to its control
/// plane, listeners with VIPs, healthy clusters.
#[derive(Clone)]
pub struct AdminAnswers {
    pub server_info: Arc<Vec<u8>>,
    pub listeners: Arc<Vec<u8>>,
    pub clusters: Arc<Vec<u8>>,
    pub stats: Arc<Vec<u8>>,
}

pub const HEALTHY_STATS: &str = "cluster_manager.cds.update_rejected: 0\n\
control_plane.connected_state: 1\n\
listener_manager.lds.update_rejected: 0\n\
listener_manager.lds.update_success: 3\n\
listener_manager.lds.version_text: \"3\"\n\
listener_manager.total_listeners_active: 1\n\
listener_manager.total_listeners_warming: 0\n";

impl AdminAnswers {
    pub fn healthy() -> AdminAnswers {
        AdminAnswers {
            server_info: Arc::new(fixture("envoy/1.40.0-server_info.json")),
            listeners: Arc::new(fixture(
                "envoy/1.40.0-config_dump-dynamic_listeners-vips.json",
            )),
            clusters: Arc::new(fixture("envoy/1.40.0-clusters-health.json")),
            stats: Arc::new(HEALTHY_STATS.as_bytes().to_vec()),
        }
    }

    pub fn answer(&self, ep: Endpoint) -> Reply {
        match ep {
            Endpoint::ServerInfo => {
                Reply::Body(200, "application/json", (*self.server_info).clone())
            }
            Endpoint::Listeners => Reply::Body(200, "application/json", (*self.listeners).clone()),
            Endpoint::Clusters => Reply::Body(200, "application/json", (*self.clusters).clone()),
            Endpoint::Stats => Reply::Body(200, "text/plain", (*self.stats).clone()),
            Endpoint::Other => Reply::text(404, "not found"),
        }
    }
}

/// What a stand-in admin does to one endpoint.
#[derive(Clone)]
pub enum AdminFault {
    None,
    Hang,
    Drop,
    /// Answer 200 with this body instead.
    Body(Arc<Vec<u8>>),
}

/// A stand-in admin: healthy answers except where a fault is set; switchable at runtime.
pub struct StandInAdmin {
    pub stub: testkit::http_stub::HttpStub,
    faults: Arc<Mutex<Vec<(Endpoint, AdminFault)>>>,
}

impl StandInAdmin {
    pub fn start(answers: AdminAnswers) -> StandInAdmin {
        let faults: Arc<Mutex<Vec<(Endpoint, AdminFault)>>> = Arc::default();
        let f = faults.clone();
        // Its socket is owned by Envoy's UID, as a real Envoy's would be: the agent trusts an
        // admin only then (docs/contract.md#11-trust).
        let uid: u32 = ENVOY_UID.parse().unwrap();
        let stub = testkit::http_stub::HttpStub::start_owned_by(uid, move |r: &Recorded| {
            let ep = Endpoint::of(&r.path);
            let fault = f
                .lock()
                .unwrap()
                .iter()
                .find(|(e, _)| *e == ep)
                .map(|(_, f)| f.clone());
            match fault {
                None | Some(AdminFault::None) => answers.answer(ep),
                Some(AdminFault::Hang) => Reply::Hang,
                Some(AdminFault::Drop) => Reply::Drop,
                Some(AdminFault::Body(b)) => Reply::Body(200, "application/json", (*b).clone()),
            }
        });
        StandInAdmin { stub, faults }
    }

    pub fn url(&self) -> String {
        self.stub.url()
    }

    pub fn set(&self, ep: Endpoint, fault: AdminFault) {
        let mut f = self.faults.lock().unwrap();
        f.retain(|(e, _)| *e != ep);
        f.push((ep, fault));
    }

    pub fn clear(&self) {
        self.faults.lock().unwrap().clear();
    }

    /// Requests for `ep` seen so far.
    pub fn hits(&self, ep: Endpoint) -> usize {
        self.stub
            .requests()
            .iter()
            .filter(|r| Endpoint::of(&r.path) == ep)
            .count()
    }
}

/// Waits until the agent logged a line matching `pred` after `skip` lines.
pub fn wait_line_after(
    lines: impl Fn() -> Vec<String>,
    skip: usize,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let all = lines();
        if let Some(l) = all.iter().skip(skip).find(|l| pred(l)) {
            return l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "agent never logged {what}; its log since:\n{}",
            all.iter()
                .skip(skip)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A JSON log line's field.
pub fn field(line: &str, key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    match &v[key] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Where the workspace's binaries are: next to the agent's.
pub fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_service-proxy-agent"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A `/config_dump?resource=dynamic_listeners` answer: the interception listener with one
/// filter chain per prefix range, each given as Envoy would print it (`address_prefix`,
/// `prefix_len`), hostile ones included.
pub fn listeners_dump(ranges: &[serde_json::Value]) -> Vec<u8> {
    let chains: Vec<serde_json::Value> = ranges
        .iter()
        .map(|r| {
            serde_json::json!({
                "filter_chain_match": {"prefix_ranges": [r], "destination_port": 80},
                "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "spa",
                        "rds": {"route_config_name": "URL_MAP/123.service"}
                    }
                }]
            })
        })
        .collect();
    serde_json::to_vec_pretty(&serde_json::json!({
        "configs": [{
            "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.DynamicListener",
            "name": "TRAFFICDIRECTOR_INTERCEPTION_LISTENER",
            "active_state": {
                "version_info": "1",
                "listener": {
                    "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                    "name": "TRAFFICDIRECTOR_INTERCEPTION_LISTENER",
                    "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
                    "use_original_dst": true,
                    "filter_chains": chains
                },
                "last_updated": "2026-11-22T10:00:00Z"
            }
        }]
    }))
    .unwrap()
}

/// A valid prefix range.
pub fn range(addr: &str, len: u32) -> serde_json::Value {
    serde_json::json!({"address_prefix": addr, "prefix_len": len})
}

/// A stand-in admin whose listeners carry `ranges`.
pub fn admin_with(ranges: &[serde_json::Value]) -> StandInAdmin {
    let mut a = AdminAnswers::healthy();
    a.listeners = Arc::new(listeners_dump(ranges));
    StandInAdmin::start(a)
}

impl StandInAdmin {
    /// Envoy's listeners change to `ranges`.
    pub fn set_listeners(&self, ranges: &[serde_json::Value]) {
        self.set(
            Endpoint::Listeners,
            AdminFault::Body(Arc::new(listeners_dump(ranges))),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Private mount namespaces

fn ns_inode(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread in a mount namespace of its own (and in the network namespace of the thread that
/// made it). Mounts made through it, and processes spawned through [`MountNs::run`], see a
/// system whose binaries the test may hide or replace; the host's mounts are never touched:
/// every mount first checks that the thread's mount namespace is not the process's.
pub struct MountNs {
    tx: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MountNs {
    pub fn new() -> anyhow::Result<MountNs> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let thread = std::thread::Builder::new()
            .name("mountns".into())
            .spawn(move || {
                let setup = || -> anyhow::Result<()> {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| {
                        anyhow::anyhow!(
                            "cannot create a private mount namespace: unshare(CLONE_NEWNS): {e}; \
                             these tests need root (CAP_SYS_ADMIN)"
                        )
                    })?;
                    ensure_private_mountns()?;
                    // Nothing mounted here may propagate back to the host.
                    nix::mount::mount(
                        None::<&str>,
                        "/",
                        None::<&str>,
                        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                        None::<&str>,
                    )
                    .map_err(|e| anyhow::anyhow!("cannot make / private: {e}"))?;
                    Ok(())
                };
                let r = setup();
                let ok = r.is_ok();
                let _ = ready_tx.send(r);
                if ok {
                    for job in rx {
                        job();
                    }
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("mount namespace thread died"))??;
        Ok(MountNs {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Runs `f` on the namespace's thread (processes it spawns live in the namespace).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (rtx, rrx) = std::sync::mpsc::channel();
        self.tx
            .as_ref()
            .unwrap()
            .send(Box::new(move || {
                let _ = rtx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
            }))
            .unwrap();
        match rrx.recv().unwrap() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// `mount --bind SRC TARGET` in the namespace (a symlink TARGET is followed, as mount does).
    pub fn bind(&self, src: impl Into<PathBuf>, target: impl Into<PathBuf>) -> anyhow::Result<()> {
        let (src, target) = (src.into(), target.into());
        self.run(move || {
            ensure_private_mountns()?;
            nix::mount::mount(
                Some(&src),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| anyhow::anyhow!("bind {} on {}: {e}", src.display(), target.display()))
        })
    }

    /// An empty tmpfs over `target` in the namespace.
    pub fn tmpfs(&self, target: impl Into<PathBuf>) -> anyhow::Result<()> {
        let target = target.into();
        self.run(move || {
            ensure_private_mountns()?;
            nix::mount::mount(
                Some("spa-test"),
                &target,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some("mode=0755"),
            )
            .map_err(|e| anyhow::anyhow!("tmpfs on {}: {e}", target.display()))
        })
    }

    pub fn umount(&self, target: impl Into<PathBuf>) -> anyhow::Result<()> {
        let target = target.into();
        self.run(move || {
            ensure_private_mountns()?;
            nix::mount::umount(&target)
                .map_err(|e| anyhow::anyhow!("umount {}: {e}", target.display()))
        })
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ensure_private_mountns() -> anyhow::Result<()> {
    let own = ns_inode("/proc/thread-self/ns/mnt");
    let process = ns_inode("/proc/self/ns/mnt");
    if own == 0 || own == process {
        anyhow::bail!("refusing to mount: this thread is in the process's mount namespace");
    }
    Ok(())
}

/// A copy of `/etc/alternatives` (its symlinks) where `replace` names point elsewhere: bound
/// over `/etc/alternatives` in a [`MountNs`], it swaps one iptables program for another while
/// the rest (`iptables-save`, ...) stay the system's.
pub fn alternatives_with(replace: &[(&str, &Path)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir("/etc/alternatives").unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let to = match replace.iter().find(|(n, _)| name == *n) {
            Some((_, p)) => p.to_path_buf(),
            None => match std::fs::read_link(e.path()) {
                Ok(t) => t,
                Err(_) => continue,
            },
        };
        std::os::unix::fs::symlink(to, dir.path().join(&name)).unwrap();
    }
    for (n, p) in replace {
        let link = dir.path().join(n);
        if !link.exists() {
            std::os::unix::fs::symlink(p, link).unwrap();
        }
    }
    dir
}

/// `iptables-save -t nat` (or ip6tables, or the legacy ones) in the calling thread's private
/// network namespace, through the host's binaries.
pub fn nat_rules(program: &str) -> String {
    testkit::netns::ensure_private().unwrap();
    testkit::netns::run(Command::new(program).args(["-t", "nat"])).unwrap()
}
