//! Shared by the fault-injection and hostile-content tests (`tests/fault_*.rs`, `tests/hostile.rs`):
//! a stand-in for Envoy's admin built on `HttpStub`, metric and /proc readers, and private mount
//! namespaces for replacing system binaries without touching the host's.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::http_stub::{Recorded, Reply};
use testkit::metadata_emulator::MetadataEmulator;

pub const NS: &str = "gce-service-proxy";

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
    body.lines()
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
    let start = cycles(addr);
    let deadline = Instant::now() + timeout;
    loop {
        let now = cycles(addr);
        if now >= start + f64::from(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the loop completed {} cycles in {timeout:?}, expected {n}",
            now - start
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
        let stub = testkit::http_stub::HttpStub::start(move |r: &Recorded| {
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
