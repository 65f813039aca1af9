//! The gRPC server: state-of-the-world ADS and LRS over tonic, on its own thread and runtime.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{ControlPlane as PbControlPlane, Node};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_server::{
    LoadReportingService, LoadReportingServiceServer,
};
use envoy_types::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};
use envoy_types::pb::google::protobuf::{Any, value::Kind};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use super::bootstrap::BootstrapSpec;
use super::grpc_message::PlainGrpcMessage;
use super::resources::{InterceptionSpec, to_any};
use super::{
    CLUSTER_TYPE, ENDPOINT_TYPE, ExpectedNode, Failure, LISTENER_TYPE, ROUTE_TYPE, StreamKind,
};

/// Records kept per list; the oldest go first (the demo runs for hours).
const MAX_RECORDS: usize = 1000;

/// The identity a node presents, read like Cloud Service Mesh does: metadata first, then the
/// node id `projects/<num>/networks/<net>/nodes/<uuid>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeIdentity {
    pub id: String,
    pub network: Option<String>,
    pub project_number: Option<String>,
}

impl NodeIdentity {
    pub fn from_node(node: &Node) -> Self {
        let meta = |key: &str| {
            node.metadata
                .as_ref()
                .and_then(|s| s.fields.get(key))
                .and_then(|v| match &v.kind {
                    Some(Kind::StringValue(s)) => Some(s.clone()),
                    Some(Kind::NumberValue(n)) => Some(format!("{n}")),
                    _ => None,
                })
        };
        let from_id = |part: &str| -> Option<String> {
            let mut it = node.id.split('/');
            while let Some(seg) = it.next() {
                if seg == part {
                    return it.next().map(str::to_owned);
                }
            }
            None
        };
        NodeIdentity {
            id: node.id.clone(),
            network: meta("TRAFFICDIRECTOR_NETWORK_NAME").or_else(|| from_id("networks")),
            project_number: meta("TRAFFICDIRECTOR_GCP_PROJECT_NUMBER")
                .or_else(|| from_id("projects")),
        }
    }

    /// The NOT_FOUND failure Cloud Service Mesh answers when it has no configuration for the
    /// node's network and project.
    fn check(&self, expected: &ExpectedNode) -> Option<Failure> {
        let net = self.network.clone().unwrap_or_default();
        let proj = self.project_number.clone().unwrap_or_default();
        if net == expected.network && proj == expected.project_number {
            None
        } else {
            Some(Failure::config_not_found(&net, &proj))
        }
    }
}

/// An ACK or NACK Envoy sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AckRecord {
    pub stream: u64,
    pub node_id: String,
    pub type_url: String,
    /// The version of the response this answers (the rejected one, for a NACK).
    pub version: String,
    /// The `version_info` Envoy sent: the last version it accepted.
    pub envoy_version_info: String,
    pub nonce: String,
    /// `error_detail` of a NACK: Envoy's code and message.
    pub nack: Option<Failure>,
}

/// A stream the control plane closed with a status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClosedRecord {
    pub stream: u64,
    pub kind: StreamKind,
    pub node_id: Option<String>,
    pub code: i32,
    pub message: String,
}

/// What the control plane has seen, for assertions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observations {
    pub ads_streams_active: usize,
    pub ads_streams_total: u64,
    pub lrs_streams_active: usize,
    pub lrs_streams_total: u64,
    /// Load reports received.
    pub lrs_requests: u64,
    /// Discovery requests per type URL (initial requests, ACKs and NACKs).
    pub requests_by_type: BTreeMap<String, u64>,
    /// ACKs and NACKs, oldest first.
    pub acks: Vec<AckRecord>,
    /// Distinct node identities, in the order first seen.
    pub nodes: Vec<NodeIdentity>,
    /// Streams closed by the control plane with a status, oldest first.
    pub closed: Vec<ClosedRecord>,
}

impl Observations {
    pub fn nacks(&self) -> impl Iterator<Item = &AckRecord> {
        self.acks.iter().filter(|a| a.nack.is_some())
    }
}

#[derive(Debug, Clone, PartialEq)]
struct TypeState {
    version: u64,
    resources: BTreeMap<String, Any>,
}

#[derive(Default)]
struct State {
    /// Per type URL; a type never set (or [`ControlPlaneHandle::unset`]) gets no response at
    /// all, so Envoy's initial fetch times out. Listeners and clusters start as empty sets.
    resources: BTreeMap<String, TypeState>,
    last_version: u64,
    ads_failure: Option<Failure>,
    lrs_failure: Option<Failure>,
    expected: Option<ExpectedNode>,
    shutting_down: bool,
    next_nonce: u64,
    next_stream: u64,
    obs: Observations,
}

struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not wedge every later assertion.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }
}

fn push_capped<T>(v: &mut Vec<T>, item: T) {
    if v.len() >= MAX_RECORDS {
        v.remove(0);
    }
    v.push(item);
}

/// A clonable handle on the control plane's state: set resources, switch failures, read what it
/// saw. Every setter pushes to connected streams at once.
#[derive(Clone)]
pub struct ControlPlaneHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for ControlPlaneHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ControlPlaneHandle {
    /// The gRPC address Envoy connects to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The runtime the server runs on (to spawn helpers next to it).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// A bootstrap for a node in `network` / `project_number` connecting here.
    pub fn bootstrap(&self, network: &str, project_number: &str) -> BootstrapSpec {
        BootstrapSpec::new(self.addr, network, project_number)
    }

    /// Replaces every resource of `type_url` (a new version only if something changed).
    pub fn set_raw(&self, type_url: &str, resources: Vec<(String, Any)>) {
        let mut st = self.shared.lock();
        if set_type(&mut st, type_url, resources) {
            drop(st);
            self.shared.notify();
        }
    }

    /// Back to "never set": the type gets no response (a new stream's initial fetch times out).
    pub fn unset(&self, type_url: &str) {
        let removed = self.shared.lock().resources.remove(type_url).is_some();
        if removed {
            self.shared.notify();
        }
    }

    pub fn set_listeners(&self, listeners: Vec<Listener>) {
        self.set_raw(LISTENER_TYPE, named(listeners, |l| l.name.clone()));
    }

    pub fn set_routes(&self, routes: Vec<RouteConfiguration>) {
        self.set_raw(ROUTE_TYPE, named(routes, |r| r.name.clone()));
    }

    pub fn set_clusters(&self, clusters: Vec<Cluster>) {
        self.set_raw(CLUSTER_TYPE, named(clusters, |c| c.name.clone()));
    }

    pub fn set_endpoints(&self, endpoints: Vec<ClusterLoadAssignment>) {
        self.set_raw(ENDPOINT_TYPE, named(endpoints, |e| e.cluster_name.clone()));
    }

    /// Serves the interception listener and its routes (clusters and endpoints untouched).
    pub fn set_interception(&self, spec: &InterceptionSpec) {
        let mut st = self.shared.lock();
        let routes = set_type(
            &mut st,
            ROUTE_TYPE,
            named(spec.route_configurations(), |r| r.name.clone()),
        );
        let listeners = set_type(
            &mut st,
            LISTENER_TYPE,
            named(vec![spec.listener()], |l| l.name.clone()),
        );
        drop(st);
        if routes || listeners {
            self.shared.notify();
        }
    }

    /// The version currently served for `type_url` (`None`: never set).
    pub fn version(&self, type_url: &str) -> Option<String> {
        self.shared
            .lock()
            .resources
            .get(type_url)
            .map(|t| t.version.to_string())
    }

    /// What is served for `type_url`: its version and resource names (`None`: never set). The
    /// CSDS emulator (`project_apis`) reports the control plane's view from this.
    pub fn served(&self, type_url: &str) -> Option<(String, Vec<String>)> {
        self.shared
            .lock()
            .resources
            .get(type_url)
            .map(|t| (t.version.to_string(), t.resources.keys().cloned().collect()))
    }

    /// Closes every ADS stream, current and future, with this status, until [`Self::recover`].
    pub fn fail_ads(&self, failure: Failure) {
        self.shared.lock().ads_failure = Some(failure);
        self.shared.notify();
    }

    /// Closes every LRS stream, current and future, with this status, until [`Self::recover`].
    pub fn fail_lrs(&self, failure: Failure) {
        self.shared.lock().lrs_failure = Some(failure);
        self.shared.notify();
    }

    /// Serves normally again (the expected-node check stays as it is).
    pub fn recover(&self) {
        let mut st = self.shared.lock();
        st.ads_failure = None;
        st.lrs_failure = None;
        drop(st);
        self.shared.notify();
    }

    /// Only nodes of this network and project get configuration; others' ADS streams are closed
    /// with 5 and Cloud Service Mesh's "configuration was not found" message (also applies to
    /// streams already connected).
    pub fn expect_node(&self, expected: Option<ExpectedNode>) {
        self.shared.lock().expected = expected;
        self.shared.notify();
    }

    pub fn ads_failure(&self) -> Option<Failure> {
        self.shared.lock().ads_failure.clone()
    }

    pub fn lrs_failure(&self) -> Option<Failure> {
        self.shared.lock().lrs_failure.clone()
    }

    pub fn expected_node(&self) -> Option<ExpectedNode> {
        self.shared.lock().expected.clone()
    }

    /// A copy of everything observed so far.
    pub fn observations(&self) -> Observations {
        self.shared.lock().obs.clone()
    }

    pub fn ads_streams_active(&self) -> usize {
        self.shared.lock().obs.ads_streams_active
    }

    pub fn requests_seen(&self, type_url: &str) -> u64 {
        self.shared
            .lock()
            .obs
            .requests_by_type
            .get(type_url)
            .copied()
            .unwrap_or(0)
    }

    pub fn nacks(&self) -> Vec<AckRecord> {
        self.shared.lock().obs.nacks().cloned().collect()
    }

    /// Whether some node ACKed `version` of `type_url`.
    pub fn acked(&self, type_url: &str, version: &str) -> bool {
        self.shared
            .lock()
            .obs
            .acks
            .iter()
            .any(|a| a.nack.is_none() && a.type_url == type_url && a.version == version)
    }

    pub fn node_ids(&self) -> Vec<String> {
        self.shared
            .lock()
            .obs
            .nodes
            .iter()
            .map(|n| n.id.clone())
            .collect()
    }

    /// Polls `cond` every 20 ms until it holds, or fails after `timeout` with what was observed.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&Observations) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let obs = self.observations();
            if cond(&obs) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "control plane: {what} not seen within {timeout:?}; observed: {}",
                    serde_json::to_string_pretty(&obs).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn named<T: prost::Message + prost::Name>(
    items: Vec<T>,
    name: impl Fn(&T) -> String,
) -> Vec<(String, Any)> {
    items.into_iter().map(|i| (name(&i), to_any(i))).collect()
}

/// Replaces a type's resources; true (and a new version) if they changed.
fn set_type(st: &mut State, type_url: &str, resources: Vec<(String, Any)>) -> bool {
    let resources: BTreeMap<String, Any> = resources.into_iter().collect();
    if st
        .resources
        .get(type_url)
        .is_some_and(|t| t.resources == resources)
    {
        return false;
    }
    st.last_version += 1;
    let version = st.last_version;
    st.resources
        .insert(type_url.to_owned(), TypeState { version, resources });
    true
}

/// A control plane on loopback, stopped on drop. Derefs to its [`ControlPlaneHandle`].
pub struct ControlPlane {
    handle: ControlPlaneHandle,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::ops::Deref for ControlPlane {
    type Target = ControlPlaneHandle;
    fn deref(&self) -> &ControlPlaneHandle {
        &self.handle
    }
}

impl ControlPlane {
    /// Starts on `127.0.0.1:0`.
    pub fn start() -> anyhow::Result<ControlPlane> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn start_on(addr: SocketAddr) -> anyhow::Result<ControlPlane> {
        let listener = std::net::TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (changed, _) = watch::channel(0u64);
        // Like Cloud Service Mesh, answer listeners and clusters from the start, even if empty.
        let mut state = State::default();
        set_type(&mut state, CLUSTER_TYPE, Vec::new());
        set_type(&mut state, LISTENER_TYPE, Vec::new());
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changed,
        });
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let (rt_tx, rt_rx) = std::sync::mpsc::channel();
        let server_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("xds-control-plane".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = rt_tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                let _ = rt_tx.send(Ok(rt.handle().clone()));
                rt.block_on(serve(server_shared, listener, shutdown_rx));
            })?;
        let runtime = rt_rx
            .recv()
            .context("control plane thread died at start")??;
        Ok(ControlPlane {
            handle: ControlPlaneHandle {
                shared,
                addr,
                runtime,
            },
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> ControlPlaneHandle {
        self.handle.clone()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.handle.shared.lock().shutting_down = true;
        self.handle.shared.notify();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    shutdown: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("xds control plane: {e}");
            return;
        }
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(PlainGrpcMessage(AggregatedDiscoveryServiceServer::new(
            Ads {
                shared: shared.clone(),
            },
        )))
        .add_service(PlainGrpcMessage(LoadReportingServiceServer::new(Lrs {
            shared: shared.clone(),
        })))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => {
            if let Err(e) = r {
                eprintln!("xds control plane: {e}");
            }
            return;
        }
        _ = shutdown => {}
    }
    // Streams end themselves on `shutting_down`; give the connections a moment to close.
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
}

/// Registers a stream in the observations; unregisters on drop.
struct StreamGuard {
    shared: Arc<Shared>,
    kind: StreamKind,
    id: u64,
}

impl StreamGuard {
    fn open(shared: &Arc<Shared>, kind: StreamKind) -> StreamGuard {
        let mut st = shared.lock();
        st.next_stream += 1;
        let id = st.next_stream;
        match kind {
            StreamKind::Ads => {
                st.obs.ads_streams_active += 1;
                st.obs.ads_streams_total += 1;
            }
            StreamKind::Lrs => {
                st.obs.lrs_streams_active += 1;
                st.obs.lrs_streams_total += 1;
            }
        }
        StreamGuard {
            shared: shared.clone(),
            kind,
            id,
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        match self.kind {
            StreamKind::Ads => {
                st.obs.ads_streams_active = st.obs.ads_streams_active.saturating_sub(1)
            }
            StreamKind::Lrs => {
                st.obs.lrs_streams_active = st.obs.lrs_streams_active.saturating_sub(1)
            }
        }
    }
}

/// Why a stream must close now, if it must.
fn closing_status(st: &State, kind: StreamKind, node: Option<&NodeIdentity>) -> Option<Failure> {
    if st.shutting_down {
        return Some(Failure::new(14, "control plane shutting down"));
    }
    let forced = match kind {
        StreamKind::Ads => &st.ads_failure,
        StreamKind::Lrs => &st.lrs_failure,
    };
    if let Some(f) = forced {
        return Some(f.clone());
    }
    match (kind, node, &st.expected) {
        (StreamKind::Ads, Some(n), Some(e)) => n.check(e),
        _ => None,
    }
}

fn record_node(st: &mut State, node: &NodeIdentity) {
    if !st.obs.nodes.contains(node) {
        push_capped(&mut st.obs.nodes, node.clone());
    }
}

async fn close_with(
    shared: &Shared,
    guard: &StreamGuard,
    node: Option<&NodeIdentity>,
    failure: Failure,
    send: impl std::future::Future<Output = ()>,
) {
    {
        let mut st = shared.lock();
        push_capped(
            &mut st.obs.closed,
            ClosedRecord {
                stream: guard.id,
                kind: guard.kind,
                node_id: node.map(|n| n.id.clone()),
                code: failure.code,
                message: failure.message.clone(),
            },
        );
    }
    send.await;
}

struct Ads {
    shared: Arc<Shared>,
}

/// Per stream and type: what Envoy asked for and what it was last sent.
#[derive(Default)]
struct Subscription {
    /// Requested names, sorted; empty (or `*`) means all.
    names: Vec<String>,
    sent: Option<Sent>,
}

struct Sent {
    version: u64,
    nonce: String,
    names: Vec<String>,
}

type AdsTx = mpsc::Sender<Result<DiscoveryResponse, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(ads_stream(self.shared.clone(), request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "this test control plane speaks state-of-the-world ADS only",
        ))
    }
}

async fn ads_stream(shared: Arc<Shared>, mut inbound: Streaming<DiscoveryRequest>, tx: AdsTx) {
    let guard = StreamGuard::open(&shared, StreamKind::Ads);
    let mut changes = shared.changed.subscribe();
    let mut node: Option<NodeIdentity> = None;
    let mut subs: BTreeMap<String, Subscription> = BTreeMap::new();
    loop {
        // Mark changes seen before reading the state, so none slips between the two.
        changes.borrow_and_update();
        let (closing, responses) = {
            let mut st = shared.lock();
            let closing = closing_status(&st, StreamKind::Ads, node.as_ref());
            let responses = if closing.is_none() {
                due_responses(&mut st, &mut subs)
            } else {
                Vec::new()
            };
            (closing, responses)
        };
        if let Some(f) = closing {
            if f.hold_ms > 0 {
                tokio::time::sleep(Duration::from_millis(f.hold_ms)).await;
            }
            let status = f.status();
            close_with(&shared, &guard, node.as_ref(), f, async {
                let _ = tx.send(Err(status)).await;
            })
            .await;
            return;
        }
        for r in responses {
            if tx.send(Ok(r)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(req)) => on_request(&shared, guard.id, &mut node, &mut subs, req),
                Ok(None) | Err(_) => return,
            },
            r = changes.changed() => if r.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

fn on_request(
    shared: &Shared,
    stream: u64,
    node: &mut Option<NodeIdentity>,
    subs: &mut BTreeMap<String, Subscription>,
    req: DiscoveryRequest,
) {
    let mut st = shared.lock();
    if node.is_none()
        && let Some(n) = &req.node
    {
        let id = NodeIdentity::from_node(n);
        record_node(&mut st, &id);
        *node = Some(id);
    }
    *st.obs
        .requests_by_type
        .entry(req.type_url.clone())
        .or_insert(0) += 1;
    let mut names = req.resource_names.clone();
    names.sort();
    names.dedup();
    let sub = subs.entry(req.type_url.clone()).or_default();
    if req.response_nonce.is_empty() {
        // A new subscription (or Envoy starting over): answer with what we have.
        sub.names = names;
        sub.sent = None;
        return;
    }
    let Some(sent) = &sub.sent else { return };
    if sent.nonce != req.response_nonce {
        // Stale: Envoy will answer the newer response too.
        return;
    }
    let nack = req.error_detail.as_ref().map(|e| Failure {
        code: e.code,
        message: e.message.clone(),
        hold_ms: 0,
    });
    let record = AckRecord {
        stream,
        node_id: node.as_ref().map(|n| n.id.clone()).unwrap_or_default(),
        type_url: req.type_url.clone(),
        version: sent.version.to_string(),
        envoy_version_info: req.version_info.clone(),
        nonce: req.response_nonce.clone(),
        nack,
    };
    push_capped(&mut st.obs.acks, record);
    sub.names = names;
}

/// The responses this stream is owed: types whose version or requested names changed since the
/// last response. A NACKed version is not sent again.
fn due_responses(
    st: &mut State,
    subs: &mut BTreeMap<String, Subscription>,
) -> Vec<DiscoveryResponse> {
    let mut out = Vec::new();
    // Clusters before endpoints and listeners before routes, as ADS clients expect.
    let mut order: Vec<&String> = subs.keys().collect();
    order.sort_by_key(|t| match t.as_str() {
        CLUSTER_TYPE => 0,
        ENDPOINT_TYPE => 1,
        LISTENER_TYPE => 2,
        ROUTE_TYPE => 3,
        _ => 4,
    });
    let order: Vec<String> = order.into_iter().cloned().collect();
    for type_url in order {
        let Some(sub) = subs.get_mut(&type_url) else {
            continue;
        };
        let Some(ts) = st.resources.get(&type_url) else {
            continue;
        };
        if let Some(sent) = &sub.sent
            && sent.version == ts.version
            && sent.names == sub.names
        {
            continue;
        }
        let wildcard = sub.names.is_empty() || sub.names.iter().any(|n| n == "*");
        let resources: Vec<Any> = ts
            .resources
            .iter()
            .filter(|(name, _)| wildcard || sub.names.binary_search(name).is_ok())
            .map(|(_, any)| any.clone())
            .collect();
        st.next_nonce += 1;
        let nonce = st.next_nonce.to_string();
        sub.sent = Some(Sent {
            version: ts.version,
            nonce: nonce.clone(),
            names: sub.names.clone(),
        });
        out.push(DiscoveryResponse {
            version_info: ts.version.to_string(),
            resources,
            type_url: type_url.clone(),
            nonce,
            control_plane: Some(PbControlPlane {
                identifier: "testkit-fake-control-plane".into(),
            }),
            ..Default::default()
        });
    }
    out
}

struct Lrs {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl LoadReportingService for Lrs {
    type StreamLoadStatsStream = ReceiverStream<Result<LoadStatsResponse, Status>>;

    async fn stream_load_stats(
        &self,
        request: Request<Streaming<LoadStatsRequest>>,
    ) -> Result<Response<Self::StreamLoadStatsStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(lrs_stream(self.shared.clone(), request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Accepts load reports and holds the stream open; never asks for any cluster.
async fn lrs_stream(
    shared: Arc<Shared>,
    mut inbound: Streaming<LoadStatsRequest>,
    tx: mpsc::Sender<Result<LoadStatsResponse, Status>>,
) {
    let guard = StreamGuard::open(&shared, StreamKind::Lrs);
    let mut changes = shared.changed.subscribe();
    let mut node: Option<NodeIdentity> = None;
    loop {
        changes.borrow_and_update();
        let closing = closing_status(&shared.lock(), StreamKind::Lrs, node.as_ref());
        if let Some(f) = closing {
            if f.hold_ms > 0 {
                tokio::time::sleep(Duration::from_millis(f.hold_ms)).await;
            }
            let status = f.status();
            close_with(&shared, &guard, node.as_ref(), f, async {
                let _ = tx.send(Err(status)).await;
            })
            .await;
            return;
        }
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(req)) => {
                    let mut st = shared.lock();
                    st.obs.lrs_requests += 1;
                    if node.is_none() && let Some(n) = &req.node {
                        let id = NodeIdentity::from_node(n);
                        record_node(&mut st, &id);
                        node = Some(id);
                    }
                }
                Ok(None) | Err(_) => return,
            },
            r = changes.changed() => if r.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};

    fn node(id: &str, meta: &[(&str, &str)]) -> Node {
        Node {
            id: id.into(),
            metadata: Some(Struct {
                fields: meta
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            Value {
                                kind: Some(Kind::StringValue(v.to_string())),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn node_identity_prefers_metadata_then_id() {
        let n = node(
            "projects/1/networks/a/nodes/x",
            &[
                ("TRAFFICDIRECTOR_NETWORK_NAME", "b"),
                ("TRAFFICDIRECTOR_GCP_PROJECT_NUMBER", "2"),
            ],
        );
        let id = NodeIdentity::from_node(&n);
        assert_eq!(id.network.as_deref(), Some("b"));
        assert_eq!(id.project_number.as_deref(), Some("2"));
        let id = NodeIdentity::from_node(&node("projects/1/networks/a/nodes/x", &[]));
        assert_eq!(id.network.as_deref(), Some("a"));
        assert_eq!(id.project_number.as_deref(), Some("1"));
        let expected = ExpectedNode::new("a", "1");
        assert_eq!(id.check(&expected), None);
        let f = id.check(&ExpectedNode::new("other", "1")).unwrap();
        assert_eq!(f.code, 5);
        assert_eq!(
            f.message,
            r#"Cloud Service Mesh configuration was not found for network "a" in project "1"."#
        );
        let id = NodeIdentity::from_node(&node("junk", &[]));
        assert_eq!((id.network, id.project_number), (None, None));
    }

    #[test]
    fn versions_change_only_with_content() {
        let mut st = State::default();
        let a = vec![("a".to_owned(), Any::default())];
        assert!(set_type(&mut st, LISTENER_TYPE, a.clone()));
        assert!(!set_type(&mut st, LISTENER_TYPE, a));
        assert!(set_type(&mut st, LISTENER_TYPE, Vec::new()));
        assert_eq!(st.resources[LISTENER_TYPE].version, 2);
    }
}
