//! An emulator of the Compute Engine metadata server, the one part of the world the tests cannot
//! reach for real. It follows docs/outside-world.md#metadata-server: `Metadata-Flavor: Google` required (403 without it,
//! 403 with any `X-Forwarded-For`) and echoed on every answer, an `ETag` on every value, long
//! polling with `?wait_for_change=true&last_etag=E&timeout_sec=N`, `?recursive=true&alt=json` on
//! directories, guest attributes (PUT/GET/DELETE, listing, the exact 403 when disabled), and the
//! write budget (10 a minute, 3 a second): every write is answered 200, but writes over the
//! budget are dropped and recorded as [`Violation`]s, as Compute Engine may drop them.
//!
//! It serves plain HTTP/1.1 on loopback from its own runtime on a thread, so tests may be sync
//! or tokio; the state is shared with the test through the [`MetadataEmulator`] handle, which
//! stops the server when dropped. Every metadata request is recorded; faults ([`Fault`]) can be
//! switched on and off at runtime.
//!
//! # Control endpoint
//!
//! For a test or demo that runs the emulator as a separate process
//! (`cargo run --example metadata-emulator`), the same server answers under `/emulator/`
//! (no `Metadata-Flavor` needed, never faulted, not recorded):
//!
//! | request | effect |
//! |---|---|
//! | `GET /emulator/guest-attributes[?query-path=NS/[KEY]]` | the guest attributes as `gcloud compute instances get-guest-attributes --format=json` prints them: `[{"key","namespace","value"}]` |
//! | `GET /emulator/requests` / `writes` / `violations` | the logs, as JSON arrays |
//! | `POST /emulator/fault` with `{"fault": "status"\|"delay"\|"hang"\|"drop"\|"garbage"\|"no-flavor"\|"none", "status": 503, "delay_ms": 2000, "path_prefix": "instance/guest-attributes/"}` | sets (or with `none` lifts) the fault; `path_prefix` is relative to `/computeMetadata/v1/` |
//! | `DELETE /emulator/fault` | lifts the fault |
//! | `PUT /emulator/attributes/KEY` (body = value), `DELETE /emulator/attributes/KEY` | sets or removes an instance attribute |
//! | `PUT /emulator/guest-attributes-enabled` (body `true`/`false`) | sets `enable-guest-attributes` |
//! | `PUT /emulator/scopes` (body: one per line or comma-separated) | sets the service account's scopes |
//! | `PUT`/`DELETE /emulator/guest-attributes/NS/KEY` | seeds or removes a guest attribute (not counted as a write) |
//!
//! `POST` and `PUT` are interchangeable. Answers are `200 ok` or `400 <reason>`.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// The body of the 403 for guest attributes on a VM without `enable-guest-attributes=TRUE`.
pub const GUEST_ATTRIBUTES_DISABLED_BODY: &str = "Guest attributes endpoint access is disabled.";
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The access token the emulator hands out (tests check it never leaks into logs).
pub const DEFAULT_TOKEN: &str = "ya29.emulated-metadata-token-do-not-log";

const BASE: &str = "/computeMetadata/v1/";
const GUEST_PREFIX: &str = "instance/guest-attributes";
const MAX_REQUEST_BODY: usize = 1024 * 1024;
const MAX_RECORDED: usize = 100_000;
const MAX_HEAD: usize = 16 * 1024;
/// Without `timeout_sec`, a long poll is held this long at most.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// What the product promises never to exceed (docs/contract.md#3-guest-attributes).
pub const MAX_VALUE_BYTES: usize = 1024;

/// The emulated VM. `Default` is a demo VM: project `demo-project` (123456789012), zone
/// `us-central1-a`, network `default`, the cloud-platform scope, guest attributes enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmIdentity {
    pub project_id: String,
    pub project_number: u64,
    /// Short name; served as `projects/<number>/zones/<zone>`.
    pub zone: String,
    pub instance_id: u64,
    pub instance_name: String,
    /// Served as `projects/<network_project_number or project_number>/networks/<network>`.
    pub network: String,
    /// The host project of a Shared VPC network; `None`: the VM's project.
    pub network_project_number: Option<u64>,
    pub ip: String,
    /// The default service account's email; `None`: the VM has no service account (the
    /// `service-accounts/` directory is empty).
    pub service_account: Option<String>,
    pub scopes: Vec<String>,
    /// Instance metadata (`instance/attributes/`), e.g. `gce-service-proxy`,
    /// `enable-guest-attributes`.
    pub attributes: BTreeMap<String, String>,
    /// Project-wide metadata (`project/attributes/`).
    pub project_attributes: BTreeMap<String, String>,
}

impl Default for VmIdentity {
    fn default() -> Self {
        VmIdentity {
            project_id: "demo-project".into(),
            project_number: 123_456_789_012,
            zone: "us-central1-a".into(),
            instance_id: 4_520_031_799_277_581_759,
            instance_name: "demo-vm".into(),
            network: "default".into(),
            network_project_number: None,
            ip: "10.128.0.2".into(),
            service_account: Some("123456789012-compute@developer.gserviceaccount.com".into()),
            scopes: vec![CLOUD_PLATFORM_SCOPE.into()],
            attributes: BTreeMap::from([("enable-guest-attributes".into(), "TRUE".into())]),
            project_attributes: BTreeMap::new(),
        }
    }
}

/// A way for the server to misbehave, switched at runtime with [`MetadataEmulator::set_fault`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this HTTP status (with `Metadata-Flavor`) instead of the value.
    Status(u16),
    /// Answer normally after this delay.
    Delay(Duration),
    /// Do not answer until the fault is lifted (then answer normally).
    Hang,
    /// Close the connection without answering.
    Drop,
    /// Answer bytes that are not HTTP, then close.
    Garbage,
    /// Answer normally but without the `Metadata-Flavor` header.
    NoFlavor,
}

/// One metadata request as received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub at: SystemTime,
    pub peer: SocketAddr,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn to_json(&self) -> Value {
        json!({
            "at_unix_ms": unix_ms(self.at),
            "peer": self.peer.to_string(),
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "body": self.body_text(),
        })
    }
}

/// One guest-attribute write (PUT or DELETE), accepted or dropped.
#[derive(Debug, Clone)]
pub struct GuestAttributeWrite {
    pub at: SystemTime,
    pub instant: Instant,
    pub method: String,
    pub namespace: String,
    pub key: String,
    /// The PUT body; `None` for a DELETE.
    pub value: Option<String>,
    /// Over the rate budget: answered 200 but not applied.
    pub dropped: bool,
}

impl GuestAttributeWrite {
    fn to_json(&self) -> Value {
        json!({
            "at_unix_ms": unix_ms(self.at),
            "method": self.method,
            "namespace": self.namespace,
            "key": self.key,
            "value": self.value,
            "dropped": self.dropped,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    /// More than `per_minute` writes in 60 s.
    PerMinute,
    /// More than `per_second` writes in 1 s.
    PerSecond,
    /// A value longer than the product's 1024-byte promise (stored anyway).
    ValueTooLong,
}

/// A write that broke the metadata server's budget or the product's promises.
#[derive(Debug, Clone)]
pub struct Violation {
    pub at: SystemTime,
    pub kind: ViolationKind,
    pub namespace: String,
    pub key: String,
    pub detail: String,
}

impl Violation {
    fn to_json(&self) -> Value {
        json!({
            "at_unix_ms": unix_ms(self.at),
            "kind": format!("{:?}", self.kind),
            "namespace": self.namespace,
            "key": self.key,
            "detail": self.detail,
        })
    }
}

/// The guest-attribute write budget. Writes are counted whether accepted or dropped: it is the
/// client's rate that is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_minute: usize,
    pub per_second: usize,
}

impl Default for RateLimit {
    /// docs/outside-world.md#guest-attributes: at most 10 a minute, bursts of at most 3 a second.
    fn default() -> Self {
        RateLimit {
            per_minute: 10,
            per_second: 3,
        }
    }
}

/// One guest attribute, as gcloud lists them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GuestAttribute {
    pub namespace: String,
    pub key: String,
    pub value: String,
}

struct State {
    vm: VmIdentity,
    /// Raw values by path (relative to `/computeMetadata/v1/`), `None` = removed (404); applied
    /// over what `vm` gives, to serve malformed or missing identity items.
    overrides: BTreeMap<String, Option<String>>,
    guest: BTreeMap<String, BTreeMap<String, String>>,
    fault: Option<(Fault, Option<String>)>,
    requests: Vec<RecordedRequest>,
    writes: Vec<GuestAttributeWrite>,
    violations: Vec<Violation>,
    rate_limit: Option<RateLimit>,
    token: String,
}

impl State {
    fn guest_enabled(&self) -> bool {
        let flag = self
            .vm
            .attributes
            .get("enable-guest-attributes")
            .or_else(|| self.vm.project_attributes.get("enable-guest-attributes"));
        flag.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    fn fault_for(&self, path: &str) -> Option<Fault> {
        let (fault, prefix) = self.fault.as_ref()?;
        match prefix {
            None => Some(fault.clone()),
            Some(p) => {
                let rel = path.strip_prefix(BASE)?;
                rel.starts_with(p.as_str()).then(|| fault.clone())
            }
        }
    }

    fn record(&mut self, r: RecordedRequest) {
        if self.requests.len() >= MAX_RECORDED {
            self.requests.drain(..MAX_RECORDED / 10);
        }
        self.requests.push(r);
    }
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every change, to wake long polls and hung requests.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.lock());
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        r
    }
}

/// A running emulator; stops when dropped.
pub struct MetadataEmulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MetadataEmulator {
    /// Starts on `127.0.0.1:0`.
    pub fn start(vm: VmIdentity) -> anyhow::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), vm)
    }

    /// Starts on `addr` (port 0 picks a free port).
    pub fn start_on(addr: SocketAddr, vm: VmIdentity) -> anyhow::Result<Self> {
        let listener = StdTcpListener::bind(addr)
            .with_context(|| format!("metadata emulator: bind {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (changed, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                vm,
                overrides: BTreeMap::new(),
                guest: BTreeMap::new(),
                fault: None,
                requests: Vec::new(),
                writes: Vec::new(),
                violations: Vec::new(),
                rate_limit: Some(RateLimit::default()),
                token: DEFAULT_TOKEN.into(),
            }),
            changed,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("metadata-emulator")
            .build()?;
        let (shutdown, shutdown_rx) = oneshot::channel();
        let server_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("metadata-emulator".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => serve(l, server_shared, shutdown_rx).await,
                        Err(e) => eprintln!("metadata emulator: {e}"),
                    }
                });
                // Cancels hung and long-polling requests.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(MetadataEmulator {
            shared,
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, what `GCE_METADATA_HOST` takes.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the VM (identity, scopes, attributes) in place.
    pub fn update_vm(&self, f: impl FnOnce(&mut VmIdentity)) {
        self.shared.update(|st| f(&mut st.vm));
    }

    pub fn vm(&self) -> VmIdentity {
        self.shared.lock().vm.clone()
    }

    pub fn set_attribute(&self, key: &str, value: &str) {
        self.update_vm(|vm| {
            vm.attributes.insert(key.into(), value.into());
        });
    }

    pub fn remove_attribute(&self, key: &str) {
        self.update_vm(|vm| {
            vm.attributes.remove(key);
        });
    }

    /// Sets the `gce-service-proxy` instance attribute.
    pub fn set_service_proxy(&self, json: &str) {
        self.set_attribute("gce-service-proxy", json);
    }

    pub fn set_scopes(&self, scopes: &[&str]) {
        self.update_vm(|vm| vm.scopes = scopes.iter().map(|s| (*s).to_owned()).collect());
    }

    /// Sets `enable-guest-attributes` to `TRUE` or `FALSE`.
    pub fn set_guest_attributes_enabled(&self, enabled: bool) {
        self.set_attribute(
            "enable-guest-attributes",
            if enabled { "TRUE" } else { "FALSE" },
        );
    }

    /// Serves `value` at `path` (relative to `/computeMetadata/v1/`) whatever the VM says, or a
    /// 404 with `None`: for malformed or missing identity items.
    pub fn override_path(&self, path: &str, value: Option<&str>) {
        let path = path.trim_matches('/').to_owned();
        self.shared.update(|st| {
            st.overrides.insert(path, value.map(str::to_owned));
        });
    }

    pub fn clear_overrides(&self) {
        self.shared.update(|st| st.overrides.clear());
    }

    pub fn set_token(&self, token: &str) {
        self.shared.update(|st| st.token = token.to_owned());
    }

    pub fn token(&self) -> String {
        self.shared.lock().token.clone()
    }

    /// `None` disables the budget (no write is dropped).
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        self.shared.update(|st| st.rate_limit = limit);
    }

    /// Applies `fault` to every metadata request (not to `/emulator/`).
    pub fn set_fault(&self, fault: Fault) {
        self.shared.update(|st| st.fault = Some((fault, None)));
    }

    /// Applies `fault` to paths under `prefix` (relative to `/computeMetadata/v1/`, e.g.
    /// `instance/guest-attributes/`).
    pub fn set_fault_on(&self, prefix: &str, fault: Fault) {
        let prefix = normalise_prefix(prefix);
        self.shared
            .update(|st| st.fault = Some((fault, Some(prefix))));
    }

    /// Restores normal service; hung requests then get their answer.
    pub fn clear_fault(&self) {
        self.shared.update(|st| st.fault = None);
    }

    /// Sets a guest attribute directly (not counted as a write).
    pub fn seed_guest_attribute(&self, namespace: &str, key: &str, value: &str) {
        self.shared.update(|st| {
            st.guest
                .entry(namespace.to_owned())
                .or_default()
                .insert(key.to_owned(), value.to_owned());
        });
    }

    pub fn guest_attributes(&self, namespace: &str) -> BTreeMap<String, String> {
        self.shared
            .lock()
            .guest
            .get(namespace)
            .cloned()
            .unwrap_or_default()
    }

    pub fn all_guest_attributes(&self) -> Vec<GuestAttribute> {
        all_guest(&self.shared.lock(), None, None)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// How many GETs of `path` (under `/computeMetadata/v1/`, e.g. `instance/id`) it answered.
    pub fn gets(&self, path: &str) -> usize {
        let path = format!("/computeMetadata/v1/{path}");
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .count()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    pub fn writes(&self) -> Vec<GuestAttributeWrite> {
        self.shared.lock().writes.clone()
    }

    pub fn violations(&self) -> Vec<Violation> {
        self.shared.lock().violations.clone()
    }

    /// Forgets requests, writes and violations (not the values).
    pub fn clear_logs(&self) {
        let mut st = self.shared.lock();
        st.requests.clear();
        st.writes.clear();
        st.violations.clear();
    }

    /// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
    pub fn wait_until(&self, timeout: Duration, mut cond: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (also done on drop).
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetadataEmulator {
    fn drop(&mut self) {
        self.stop();
    }
}

fn normalise_prefix(prefix: &str) -> String {
    let p = prefix.trim_start_matches('/');
    let p = p.strip_prefix("computeMetadata/v1/").unwrap_or(p);
    p.to_owned()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

// --- server ---------------------------------------------------------------------------------

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(connection(stream, peer, shared.clone()));
                }
                // e.g. out of file descriptors: do not spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
        }
    }
}

/// One connection. Drop and Garbage are decided on its first request; later requests on a kept-
/// alive connection get Garbage as Drop (see `handle`).
async fn connection(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let raw_fault = matches!(shared.lock().fault, Some((Fault::Drop | Fault::Garbage, _)));
    if !raw_fault {
        serve_http(stream, peer, shared).await;
        return;
    }
    // Drop and Garbage act below HTTP: read the head ourselves, and replay it to hyper when the
    // request is not affected.
    let head = read_head(&mut stream).await;
    if let Some((method, target, headers)) = parse_head(&head) {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.clone(), None),
        };
        if !is_control(&path) {
            let fault = shared.lock().fault_for(&path);
            if let Some(f @ (Fault::Drop | Fault::Garbage)) = fault {
                shared.lock().record(RecordedRequest {
                    at: SystemTime::now(),
                    peer,
                    method,
                    path,
                    query,
                    headers,
                    body: Vec::new(),
                });
                if f == Fault::Garbage {
                    let _ = stream
                        .write_all(b"\x00\x01\x02GARBAGE\xff\xfe not http at all\r\n\r\n")
                        .await;
                    let _ = stream.shutdown().await;
                }
                return;
            }
        }
    }
    let (r, w) = stream.into_split();
    let io = tokio::io::join(std::io::Cursor::new(head).chain(r), w);
    serve_http(io, peer, shared).await;
}

async fn serve_http<IO>(io: IO, peer: SocketAddr, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(req, peer, shared.clone()));
    // Keep-alive stays on, as on the real server (and `Connection: close` answers race with the
    // agent's HTTP client, which then reports the connection closed before the response).
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// Reads up to the end of the request head (bounded in size and time).
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        while buf.len() < MAX_HEAD && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    buf
}

type Head = (String, String, Vec<(String, String)>);

fn parse_head(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let target = first.next()?.to_owned();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some((method, target, headers))
}

fn is_control(path: &str) -> bool {
    path == "/emulator" || path.starts_with("/emulator/")
}

type Answer = Response<Full<Bytes>>;

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> io::Result<Answer> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Ok(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large\n",
            ));
        }
    };
    if is_control(&path) {
        return Ok(control(&shared, &method, &path, query.as_deref(), &body));
    }
    shared.lock().record(RecordedRequest {
        at: SystemTime::now(),
        peer,
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        headers: headers.clone(),
        body: body.to_vec(),
    });

    let mut flavor = true;
    loop {
        // Subscribe before reading the fault, so that lifting it cannot be missed.
        let mut changes = shared.changed.subscribe();
        let fault = shared.lock().fault_for(&path);
        match fault {
            None => break,
            Some(Fault::Hang) => {
                let _ = changes.changed().await;
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                break;
            }
            Some(Fault::Status(code)) => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return Ok(text(status, &format!("emulated fault: HTTP {code}\n")));
            }
            Some(Fault::NoFlavor) => {
                flavor = false;
                break;
            }
            // A connection accepted before the fault was set, or kept alive: close without answer.
            Some(Fault::Drop | Fault::Garbage) => {
                return Err(io::Error::other("emulated connection drop"));
            }
        }
    }
    let mut answer = metadata(&shared, &method, &path, query.as_deref(), &headers, &body).await;
    if !flavor {
        answer.headers_mut().remove("metadata-flavor");
    }
    Ok(answer)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A plain answer carrying `Metadata-Flavor: Google`, as all the server's answers do.
fn text(status: StatusCode, body: &str) -> Answer {
    answer(status, "text/html; charset=UTF-8", body.to_owned(), None)
}

fn answer(status: StatusCode, content_type: &str, body: String, etag: Option<String>) -> Answer {
    let mut b = Response::builder()
        .status(status)
        .header("Metadata-Flavor", "Google")
        .header("Server", "Metadata Server for VM")
        .header("Content-Type", content_type);
    if let Some(e) = etag {
        b = b.header("ETag", e);
    }
    b.body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn metadata(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &[(String, String)],
    body: &[u8],
) -> Answer {
    if header(headers, "metadata-flavor") != Some("Google") {
        return text(
            StatusCode::FORBIDDEN,
            "Your client does not have permission to get URL from this server. Missing Metadata-Flavor:Google header.\n",
        );
    }
    if header(headers, "x-forwarded-for").is_some() {
        return text(
            StatusCode::FORBIDDEN,
            "Your client does not have permission to get URL from this server. Requests with X-Forwarded-For are refused.\n",
        );
    }
    let rel = match path.strip_prefix(BASE) {
        Some(r) => r,
        None if path == "/computeMetadata/v1" => "",
        None => return text(StatusCode::NOT_FOUND, "Not Found\n"),
    };
    let is_guest = rel == GUEST_PREFIX || rel.starts_with("instance/guest-attributes/");
    if is_guest && (method == Method::PUT || method == Method::DELETE) {
        return shared.update(|st| guest_write(st, method, rel, body));
    }
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    }
    let q = Query::parse(query.unwrap_or(""));
    if !q.wait_for_change {
        return render(&shared.lock(), rel, &q).into_answer();
    }
    let wait = q
        .timeout_sec
        .map_or(DEFAULT_WAIT, Duration::from_secs)
        .min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let mut baseline = q.last_etag.clone();
    loop {
        let mut changes = shared.changed.subscribe();
        let r = render(&shared.lock(), rel, &q);
        if r.status != StatusCode::OK {
            return r.into_answer();
        }
        match &baseline {
            None => baseline = r.etag.clone(),
            Some(b) if r.etag.as_deref() != Some(b.as_str()) => return r.into_answer(),
            Some(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return r.into_answer();
        }
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[derive(Default)]
struct Query {
    wait_for_change: bool,
    last_etag: Option<String>,
    timeout_sec: Option<u64>,
    recursive: bool,
    alt_json: bool,
    params: Vec<(String, String)>,
}

impl Query {
    fn parse(q: &str) -> Query {
        let mut out = Query::default();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (percent_decode(k), percent_decode(v));
            match k.as_str() {
                "wait_for_change" => out.wait_for_change = v.eq_ignore_ascii_case("true"),
                "last_etag" => out.last_etag = Some(v.clone()),
                "timeout_sec" => out.timeout_sec = v.parse().ok(),
                "recursive" => out.recursive = v.eq_ignore_ascii_case("true"),
                "alt" => out.alt_json = v == "json",
                _ => {}
            }
            out.params.push((k, v));
        }
        out
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Rendered {
    status: StatusCode,
    content_type: &'static str,
    body: String,
    etag: Option<String>,
}

impl Rendered {
    fn ok(content_type: &'static str, body: String) -> Rendered {
        let etag = Some(etag_of(&body));
        Rendered {
            status: StatusCode::OK,
            content_type,
            body,
            etag,
        }
    }

    fn error(status: StatusCode, body: &str) -> Rendered {
        Rendered {
            status,
            content_type: "text/html; charset=UTF-8",
            body: body.to_owned(),
            etag: None,
        }
    }

    fn into_answer(self) -> Answer {
        answer(self.status, self.content_type, self.body, self.etag)
    }
}

/// FNV-1a of the value: stable, and different when the value differs.
fn etag_of(body: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

enum Node {
    Text(String),
    Json(Value),
    Dir(BTreeMap<String, Node>),
}

impl Node {
    fn dir() -> Node {
        Node::Dir(BTreeMap::new())
    }

    fn to_json(&self) -> Value {
        match self {
            Node::Text(s) => Value::String(s.clone()),
            Node::Json(v) => v.clone(),
            Node::Dir(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    fn insert(&mut self, path: &str, node: Node) {
        let Node::Dir(m) = self else { return };
        match path.split_once('/') {
            None => {
                m.insert(path.to_owned(), node);
            }
            Some((first, rest)) => {
                let child = m.entry(first.to_owned()).or_insert_with(Node::dir);
                if !matches!(child, Node::Dir(_)) {
                    *child = Node::dir();
                }
                child.insert(rest, node);
            }
        }
    }

    fn remove(&mut self, path: &str) {
        let Node::Dir(m) = self else { return };
        match path.split_once('/') {
            None => {
                m.remove(path);
            }
            Some((first, rest)) => {
                if let Some(child) = m.get_mut(first) {
                    child.remove(rest);
                }
            }
        }
    }

    fn lookup(&self, rel: &str) -> Option<&Node> {
        let trailing = rel.ends_with('/');
        let trimmed = rel.trim_end_matches('/');
        let mut node = self;
        if !trimmed.is_empty() {
            for seg in trimmed.split('/') {
                match node {
                    Node::Dir(m) if !seg.is_empty() => node = m.get(seg)?,
                    _ => return None,
                }
            }
        }
        if trailing && !matches!(node, Node::Dir(_)) {
            return None;
        }
        Some(node)
    }
}

fn tree(st: &State) -> Node {
    let vm = &st.vm;
    let mut root = Node::dir();
    root.insert("instance/id", Node::Text(vm.instance_id.to_string()));
    root.insert("instance/name", Node::Text(vm.instance_name.clone()));
    root.insert(
        "instance/hostname",
        Node::Text(format!(
            "{}.{}.c.{}.internal",
            vm.instance_name, vm.zone, vm.project_id
        )),
    );
    root.insert(
        "instance/zone",
        Node::Text(format!("projects/{}/zones/{}", vm.project_number, vm.zone)),
    );
    root.insert(
        "instance/network-interfaces/0/network",
        Node::Text(format!(
            "projects/{}/networks/{}",
            vm.network_project_number.unwrap_or(vm.project_number),
            vm.network
        )),
    );
    root.insert(
        "instance/network-interfaces/0/ip",
        Node::Text(vm.ip.clone()),
    );
    root.insert("instance/attributes", Node::dir());
    for (k, v) in &vm.attributes {
        root.insert(&format!("instance/attributes/{k}"), Node::Text(v.clone()));
    }
    root.insert("instance/service-accounts", Node::dir());
    if let Some(email) = &vm.service_account {
        let mut scopes = vm.scopes.join("\n");
        scopes.push('\n');
        let token = json!({"access_token": st.token, "expires_in": 3599, "token_type": "Bearer"});
        for name in ["default", email.as_str()] {
            let base = format!("instance/service-accounts/{name}");
            root.insert(&format!("{base}/email"), Node::Text(email.clone()));
            root.insert(&format!("{base}/aliases"), Node::Text("default\n".into()));
            root.insert(&format!("{base}/scopes"), Node::Text(scopes.clone()));
            root.insert(&format!("{base}/token"), Node::Json(token.clone()));
        }
    }
    root.insert("project/project-id", Node::Text(vm.project_id.clone()));
    root.insert(
        "project/numeric-project-id",
        Node::Text(vm.project_number.to_string()),
    );
    root.insert("project/attributes", Node::dir());
    for (k, v) in &vm.project_attributes {
        root.insert(&format!("project/attributes/{k}"), Node::Text(v.clone()));
    }
    for (path, value) in &st.overrides {
        match value {
            Some(v) => root.insert(path, Node::Text(v.clone())),
            None => root.remove(path),
        }
    }
    root
}

/// The answer to a GET (also what a long poll compares).
fn render(st: &State, rel: &str, q: &Query) -> Rendered {
    if rel == GUEST_PREFIX || rel.starts_with("instance/guest-attributes/") {
        return render_guest(st, rel);
    }
    let root = tree(st);
    let Some(node) = root.lookup(rel) else {
        return Rendered::error(StatusCode::NOT_FOUND, "Not Found\n");
    };
    match node {
        Node::Text(s) if q.alt_json => {
            Rendered::ok("application/json", Value::String(s.clone()).to_string())
        }
        Node::Text(s) => Rendered::ok("application/text", s.clone()),
        Node::Json(v) => Rendered::ok("application/json", v.to_string()),
        Node::Dir(_) if q.recursive => Rendered::ok("application/json", node_json(node)),
        Node::Dir(m) if q.alt_json => Rendered::ok(
            "application/json",
            Value::Array(m.keys().map(|k| Value::String(k.clone())).collect()).to_string(),
        ),
        Node::Dir(m) => Rendered::ok("application/text", listing(m)),
    }
}

fn node_json(node: &Node) -> String {
    node.to_json().to_string()
}

fn listing(m: &BTreeMap<String, Node>) -> String {
    m.iter()
        .map(|(k, v)| match v {
            Node::Dir(_) => format!("{k}/\n"),
            _ => format!("{k}\n"),
        })
        .collect()
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `instance/guest-attributes[/ns[/key]]` → (namespace, key).
fn guest_parts(rel: &str) -> Result<(Option<&str>, Option<&str>), Rendered> {
    let rest = rel
        .strip_prefix(GUEST_PREFIX)
        .unwrap_or("")
        .trim_start_matches('/');
    let mut parts = rest.splitn(2, '/');
    let ns = parts.next().filter(|s| !s.is_empty());
    let key = parts.next().filter(|s| !s.is_empty());
    if key.is_some_and(|k| k.contains('/')) {
        return Err(Rendered::error(StatusCode::NOT_FOUND, "Not Found\n"));
    }
    if ns.is_some_and(|n| !valid_name(n)) || key.is_some_and(|k| !valid_name(k)) {
        return Err(Rendered::error(
            StatusCode::BAD_REQUEST,
            "Invalid guest attribute name: namespace and key must match [A-Za-z0-9_-]+\n",
        ));
    }
    Ok((ns, key))
}

fn render_guest(st: &State, rel: &str) -> Rendered {
    if !st.guest_enabled() {
        return Rendered::error(StatusCode::FORBIDDEN, GUEST_ATTRIBUTES_DISABLED_BODY);
    }
    let (ns, key) = match guest_parts(rel) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match (ns, key) {
        (None, _) => Rendered::ok(
            "application/text",
            st.guest
                .iter()
                .filter(|(_, keys)| !keys.is_empty())
                .map(|(n, _)| format!("{n}/\n"))
                .collect(),
        ),
        (Some(ns), None) => match st.guest.get(ns).filter(|k| !k.is_empty()) {
            Some(keys) => Rendered::ok(
                "application/text",
                keys.keys().map(|k| format!("{k}\n")).collect(),
            ),
            None => Rendered::error(StatusCode::NOT_FOUND, "Not Found\n"),
        },
        (Some(ns), Some(key)) => match st.guest.get(ns).and_then(|m| m.get(key)) {
            Some(v) => Rendered::ok("application/text", v.clone()),
            None => Rendered::error(StatusCode::NOT_FOUND, "Not Found\n"),
        },
    }
}

fn guest_write(st: &mut State, method: &Method, rel: &str, body: &[u8]) -> Answer {
    if !st.guest_enabled() {
        return text(StatusCode::FORBIDDEN, GUEST_ATTRIBUTES_DISABLED_BODY);
    }
    let (ns, key) = match guest_parts(rel) {
        Ok((Some(ns), Some(key))) => (ns.to_owned(), key.to_owned()),
        Ok(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "A namespace and a key are required\n",
            );
        }
        Err(r) => return r.into_answer(),
    };
    let value = if *method == Method::PUT {
        match std::str::from_utf8(body) {
            Ok(v) => Some(v.to_owned()),
            Err(_) => return text(StatusCode::BAD_REQUEST, "The value is not UTF-8\n"),
        }
    } else {
        None
    };
    let now = Instant::now();
    let at = SystemTime::now();
    let mut dropped = false;
    if let Some(limit) = st.rate_limit {
        let in_window = |w: Duration| {
            st.writes
                .iter()
                .filter(|x| now.duration_since(x.instant) < w)
                .count()
        };
        let (last_minute, last_second) = (
            in_window(Duration::from_secs(60)),
            in_window(Duration::from_secs(1)),
        );
        let mut violate = |kind, detail: String| {
            st.violations.push(Violation {
                at,
                kind,
                namespace: ns.clone(),
                key: key.clone(),
                detail,
            });
        };
        if last_minute >= limit.per_minute {
            dropped = true;
            violate(
                ViolationKind::PerMinute,
                format!(
                    "write #{} within 60 s (budget {} a minute); dropped",
                    last_minute + 1,
                    limit.per_minute
                ),
            );
        }
        if last_second >= limit.per_second {
            dropped = true;
            violate(
                ViolationKind::PerSecond,
                format!(
                    "write #{} within 1 s (budget {} a second); dropped",
                    last_second + 1,
                    limit.per_second
                ),
            );
        }
    }
    if let Some(v) = &value
        && v.len() > MAX_VALUE_BYTES
    {
        st.violations.push(Violation {
            at,
            kind: ViolationKind::ValueTooLong,
            namespace: ns.clone(),
            key: key.clone(),
            detail: format!(
                "{} bytes (the product promises at most {MAX_VALUE_BYTES})",
                v.len()
            ),
        });
    }
    st.writes.push(GuestAttributeWrite {
        at,
        instant: now,
        method: method.to_string(),
        namespace: ns.clone(),
        key: key.clone(),
        value: value.clone(),
        dropped,
    });
    if !dropped {
        match value {
            Some(v) => {
                st.guest.entry(ns).or_default().insert(key, v);
            }
            None => {
                if let Some(m) = st.guest.get_mut(&ns) {
                    m.remove(&key);
                }
            }
        }
    }
    answer(StatusCode::OK, "application/text", String::new(), None)
}

fn all_guest(st: &State, ns: Option<&str>, key: Option<&str>) -> Vec<GuestAttribute> {
    st.guest
        .iter()
        .filter(|(n, _)| ns.is_none_or(|x| x == n.as_str()))
        .flat_map(|(n, keys)| {
            keys.iter()
                .filter(|(k, _)| key.is_none_or(|x| x == k.as_str()))
                .map(|(k, v)| GuestAttribute {
                    namespace: n.clone(),
                    key: k.clone(),
                    value: v.clone(),
                })
        })
        .collect()
}

// --- control endpoint -----------------------------------------------------------------------

fn control(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Answer {
    let rest = path.trim_start_matches("/emulator").trim_start_matches('/');
    let body_text = String::from_utf8_lossy(body).into_owned();
    let set = *method == Method::POST || *method == Method::PUT;
    let ok = || text(StatusCode::OK, "ok\n");
    let bad = |msg: String| text(StatusCode::BAD_REQUEST, &format!("{msg}\n"));
    let json_answer = |v: Value| answer(StatusCode::OK, "application/json", v.to_string(), None);

    match (method.clone(), rest) {
        (Method::GET, "guest-attributes") => {
            let q = Query::parse(query.unwrap_or(""));
            let qp = q.get("query-path").unwrap_or("");
            let (ns, key) = match qp.split_once('/') {
                Some((n, k)) => (Some(n), Some(k).filter(|k| !k.is_empty())),
                None => (Some(qp).filter(|n| !n.is_empty()), None),
            };
            let st = shared.lock();
            let items: Vec<Value> = all_guest(&st, ns, key)
                .into_iter()
                .map(|a| json!({"key": a.key, "namespace": a.namespace, "value": a.value}))
                .collect();
            json_answer(Value::Array(items))
        }
        (Method::GET, "requests") => json_answer(
            shared
                .lock()
                .requests
                .iter()
                .map(RecordedRequest::to_json)
                .collect(),
        ),
        (Method::GET, "writes") => json_answer(
            shared
                .lock()
                .writes
                .iter()
                .map(GuestAttributeWrite::to_json)
                .collect(),
        ),
        (Method::GET, "violations") => json_answer(
            shared
                .lock()
                .violations
                .iter()
                .map(Violation::to_json)
                .collect(),
        ),
        (Method::DELETE, "fault") => {
            shared.update(|st| st.fault = None);
            ok()
        }
        (_, "fault") if set => match parse_fault(&body_text) {
            Ok(f) => {
                shared.update(|st| st.fault = f);
                ok()
            }
            Err(e) => bad(e),
        },
        (_, "guest-attributes-enabled") if set => match body_text.trim() {
            v @ ("true" | "false" | "TRUE" | "FALSE") => {
                let flag = if v.eq_ignore_ascii_case("true") {
                    "TRUE"
                } else {
                    "FALSE"
                };
                shared.update(|st| {
                    st.vm
                        .attributes
                        .insert("enable-guest-attributes".into(), flag.into())
                });
                ok()
            }
            other => bad(format!("expected true or false, got {other:?}")),
        },
        (_, "scopes") if set => {
            let scopes: Vec<String> = body_text
                .split(['\n', ','])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(expand_scope)
                .collect();
            shared.update(|st| st.vm.scopes = scopes);
            ok()
        }
        (m, r) if r.starts_with("attributes/") => {
            let key = r.trim_start_matches("attributes/");
            if key.is_empty() || key.contains('/') {
                return bad(format!("bad attribute key {key:?}"));
            }
            if set {
                shared.update(|st| st.vm.attributes.insert(key.to_owned(), body_text.clone()));
                ok()
            } else if m == Method::DELETE {
                shared.update(|st| st.vm.attributes.remove(key));
                ok()
            } else {
                text(StatusCode::METHOD_NOT_ALLOWED, "use PUT or DELETE\n")
            }
        }
        (m, r) if r.starts_with("guest-attributes/") => {
            let mut parts = r.trim_start_matches("guest-attributes/").split('/');
            let (Some(ns), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
                return bad("expected /emulator/guest-attributes/NAMESPACE/KEY".into());
            };
            if !valid_name(ns) || !valid_name(key) {
                return bad("namespace and key must match [A-Za-z0-9_-]+".into());
            }
            if set {
                shared.update(|st| {
                    st.guest
                        .entry(ns.to_owned())
                        .or_default()
                        .insert(key.to_owned(), body_text.clone())
                });
                ok()
            } else if m == Method::DELETE {
                shared.update(|st| st.guest.get_mut(ns).and_then(|m| m.remove(key)));
                ok()
            } else {
                text(StatusCode::METHOD_NOT_ALLOWED, "use PUT or DELETE\n")
            }
        }
        _ => text(StatusCode::NOT_FOUND, "unknown emulator control path\n"),
    }
}

/// `cloud-platform` → `https://www.googleapis.com/auth/cloud-platform`; full URLs unchanged.
pub fn expand_scope(s: &str) -> String {
    if s.contains("://") {
        s.to_owned()
    } else {
        format!("https://www.googleapis.com/auth/{s}")
    }
}

/// The control endpoint's fault JSON; `Ok(None)` lifts the fault.
fn parse_fault(body: &str) -> Result<Option<(Fault, Option<String>)>, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("fault: not JSON: {e}"))?;
    let kind = v.get("fault").and_then(Value::as_str).ok_or(
        "fault: expected {\"fault\": \"status|delay|hang|drop|garbage|no-flavor|none\", ...}",
    )?;
    let fault = match kind {
        "none" => return Ok(None),
        "status" => {
            let code = v
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (100..=599).contains(c))
                .ok_or("fault status: expected \"status\": 100-599")?;
            Fault::Status(code)
        }
        "delay" => {
            let ms = v
                .get("delay_ms")
                .and_then(Value::as_u64)
                .ok_or("fault delay: expected \"delay_ms\": N")?;
            Fault::Delay(Duration::from_millis(ms))
        }
        "hang" => Fault::Hang,
        "drop" => Fault::Drop,
        "garbage" => Fault::Garbage,
        "no-flavor" => Fault::NoFlavor,
        other => return Err(format!("fault: unknown kind {other:?}")),
    };
    let prefix = v
        .get("path_prefix")
        .and_then(Value::as_str)
        .map(normalise_prefix);
    Ok(Some((fault, prefix)))
}

// --- command line of the example -------------------------------------------------------------

/// The command line of `examples/metadata-emulator.rs`, parsed here so that tests can check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatorArgs {
    pub addr: SocketAddr,
    pub vm: VmIdentity,
}

pub const USAGE: &str = "usage: metadata-emulator --addr 127.0.0.1:PORT [--project-id ID] [--project-number N] \
[--zone ZONE] [--instance-id N] [--instance-name NAME] [--network NAME] [--scopes a,b] \
[--gce-service-proxy JSON] [--attribute KEY=VALUE]... [--guest-attributes-disabled]";

impl EmulatorArgs {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<EmulatorArgs, String> {
        let mut vm = VmIdentity::default();
        let mut addr: Option<SocketAddr> = None;
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            if flag == "--guest-attributes-disabled" {
                vm.attributes
                    .insert("enable-guest-attributes".into(), "FALSE".into());
                continue;
            }
            if flag == "--help" || flag == "-h" {
                return Err(USAGE.into());
            }
            let mut value = || -> Result<String, String> {
                match inline.clone() {
                    Some(v) => Ok(v),
                    None => it.next().ok_or(format!("{flag} needs a value\n{USAGE}")),
                }
            };
            let number = |v: String, what: &str| -> Result<u64, String> {
                v.parse::<u64>()
                    .map_err(|_| format!("{what}: expected a number, got {v:?}"))
            };
            match flag.as_str() {
                "--addr" => {
                    let v = value()?;
                    addr = Some(
                        v.parse()
                            .map_err(|_| format!("--addr: expected IP:PORT, got {v:?}"))?,
                    );
                }
                "--project-id" => vm.project_id = value()?,
                "--project-number" => vm.project_number = number(value()?, "--project-number")?,
                "--zone" => vm.zone = value()?,
                "--instance-id" => vm.instance_id = number(value()?, "--instance-id")?,
                "--instance-name" => vm.instance_name = value()?,
                "--network" => vm.network = value()?,
                "--scopes" => {
                    vm.scopes = value()?
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(expand_scope)
                        .collect();
                }
                "--gce-service-proxy" => {
                    vm.attributes.insert("gce-service-proxy".into(), value()?);
                }
                "--attribute" => {
                    let v = value()?;
                    let (k, val) = v
                        .split_once('=')
                        .ok_or(format!("--attribute: expected KEY=VALUE, got {v:?}"))?;
                    if k.is_empty() || k.contains('/') {
                        return Err(format!("--attribute: bad key {k:?}"));
                    }
                    vm.attributes.insert(k.to_owned(), val.to_owned());
                }
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        let addr = addr.ok_or(format!("--addr is required\n{USAGE}"))?;
        Ok(EmulatorArgs { addr, vm })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_lookup_and_listing() {
        let st = State {
            vm: VmIdentity::default(),
            overrides: BTreeMap::from([("instance/zone".to_owned(), None)]),
            guest: BTreeMap::new(),
            fault: None,
            requests: vec![],
            writes: vec![],
            violations: vec![],
            rate_limit: None,
            token: "t".into(),
        };
        let q = Query::default();
        assert_eq!(render(&st, "instance/id", &q).body, "4520031799277581759");
        assert_eq!(
            render(&st, "instance/zone", &q).status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            render(&st, "instance/id/", &q).status,
            StatusCode::NOT_FOUND
        );
        let l = render(&st, "instance/", &q).body;
        assert!(l.contains("attributes/\n") && l.contains("id\n"), "{l}");
        let q = Query::parse("recursive=true&alt=json");
        let j: Value = serde_json::from_str(&render(&st, "instance/attributes/", &q).body).unwrap();
        assert_eq!(j, json!({"enable-guest-attributes": "TRUE"}));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%3d"), "a b=");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    #[test]
    fn args() {
        let a = EmulatorArgs::parse(
            [
                "--addr",
                "127.0.0.1:0",
                "--scopes",
                "cloud-platform,https://x/y",
                "--attribute",
                "a=b=c",
                "--guest-attributes-disabled",
                "--project-number=42",
            ]
            .map(String::from),
        )
        .unwrap();
        assert_eq!(a.vm.scopes, vec![CLOUD_PLATFORM_SCOPE, "https://x/y"]);
        assert_eq!(a.vm.attributes["a"], "b=c");
        assert_eq!(a.vm.attributes["enable-guest-attributes"], "FALSE");
        assert_eq!(a.vm.project_number, 42);
        assert!(EmulatorArgs::parse(["--zone".to_owned()]).is_err());
        assert!(EmulatorArgs::parse(Vec::<String>::new()).is_err());
        assert!(EmulatorArgs::parse(["--addr", "x"].map(String::from)).is_err());
    }
}
