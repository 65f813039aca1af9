//! Emulators of the four Google APIs the agent's project-side checks call (docs/contract.md#10-project-side-checks), written
//! from their discovery documents (google-api-python-client's `discovery_cache/documents`):
//!
//! | API (document) | method | route |
//! |---|---|---|
//! | `cloudresourcemanager.v1` | `projects.testIamPermissions` | `POST /v1/projects/{resource}:testIamPermissions` |
//! | `serviceusage.v1` | `services.get` | `GET /v1/{+name}` (`projects/N/services/S`) |
//! | `trafficdirector.v3` | `discovery.client_status` | `POST /v3/discovery:client_status` |
//! | `compute.v1` | `forwardingRules.aggregatedList` | `GET /compute/v1/projects/{project}/aggregated/forwardingRules` |
//!
//! All four are served on one loopback port (each API's own root would be its own host). Every
//! request must carry `Authorization: Bearer <token>` with the token the metadata emulator
//! issued (401 `UNAUTHENTICATED` otherwise). A disabled API answers Google's 403 "... API has
//! not been used in project N before or it is disabled" with `SERVICE_DISABLED`; faults
//! (status, delay, hang) are set per API. Errors use Google's JSON error shape.
//!
//! The CSDS answer is fed from the test xDS control plane ([`csds_from_control_plane`]): for each
//! resource served, its version and, from Envoy's ACKs/NACKs as the control plane saw them,
//! `configStatus`/`clientStatus` — so "what the control plane sent" and "what Envoy has" differ
//! for real when Envoy rejects a listener. [`CsdsOverride`] replaces a resource's status for the
//! states the stand-in control plane cannot reach by itself (a push that never arrives).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::http_stub::{HttpStub, Recorded, Reply};
use crate::xds::{CLUSTER_TYPE, ControlPlaneHandle, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};

/// Which API a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Api {
    ResourceManager,
    ServiceUsage,
    TrafficDirector,
    Compute,
}

impl Api {
    pub const ALL: [Api; 4] = [
        Api::ResourceManager,
        Api::ServiceUsage,
        Api::TrafficDirector,
        Api::Compute,
    ];

    pub fn service(self) -> &'static str {
        match self {
            Api::ResourceManager => "cloudresourcemanager.googleapis.com",
            Api::ServiceUsage => "serviceusage.googleapis.com",
            Api::TrafficDirector => "trafficdirector.googleapis.com",
            Api::Compute => "compute.googleapis.com",
        }
    }

    /// The title Google's "has not been used" message names.
    pub fn title(self) -> &'static str {
        match self {
            Api::ResourceManager => "Cloud Resource Manager API",
            Api::ServiceUsage => "Service Usage API",
            Api::TrafficDirector => "Traffic Director API",
            Api::Compute => "Compute Engine API",
        }
    }
}

/// A way for one API to misbehave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiFault {
    /// Answer this status with Google's error JSON and this message.
    Status(u16, String),
    /// Answer normally after this delay.
    Delay(Duration),
    /// Never answer.
    Hang,
}

/// A forwarding rule of the emulated project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardingRule {
    pub name: String,
    /// `None`: global.
    pub region: Option<String>,
    pub network: String,
    pub scheme: String,
    pub ip: String,
}

impl ForwardingRule {
    pub fn self_managed(name: &str, network: &str, ip: &str) -> Self {
        ForwardingRule {
            name: name.into(),
            region: None,
            network: network.into(),
            scheme: "INTERNAL_SELF_MANAGED".into(),
            ip: ip.into(),
        }
    }
}

/// Replaces what CSDS says of one resource (type URL, name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsdsOverride {
    pub config_status: String,
    pub client_status: String,
    pub version: Option<String>,
    pub last_updated: Option<SystemTime>,
}

type CsdsFeed = Arc<dyn Fn(&str) -> Vec<Value> + Send + Sync>;

/// The emulated project.
#[derive(Clone)]
pub struct ProjectState {
    pub project_id: String,
    pub project_number: u64,
    /// The bearer token accepted (the metadata emulator's).
    pub token: String,
    /// Permissions the caller holds.
    pub granted: BTreeSet<String>,
    /// APIs enabled in the project; the others answer 403 "has not been used".
    pub enabled: BTreeSet<Api>,
    /// Whether the caller holds `serviceusage.services.get` (not in the client role).
    pub serviceusage_permitted: bool,
    pub forwarding_rules: Vec<ForwardingRule>,
    pub faults: BTreeMap<Api, ApiFault>,
    /// Answer CSDS in the older per-type `xdsConfig` form.
    pub legacy_csds: bool,
    pub csds_overrides: BTreeMap<(String, String), CsdsOverride>,
    /// How long ago the control plane sent what Envoy has not answered (`STALE`): minutes
    /// cannot pass in a test, so the test says how many did. `None`: as first seen.
    pub stale_for: Option<Duration>,
    csds: Option<CsdsFeed>,
}

impl ProjectState {
    /// The demo project of the metadata emulator's default VM, every API enabled, the client
    /// role and log writer granted.
    pub fn new(project_id: &str, project_number: u64, token: &str) -> Self {
        ProjectState {
            project_id: project_id.into(),
            project_number,
            token: token.into(),
            granted: [
                "trafficdirector.networks.getConfigs",
                "trafficdirector.networks.reportMetrics",
                "logging.logEntries.create",
            ]
            .into_iter()
            .map(str::to_owned)
            .collect(),
            enabled: Api::ALL.into_iter().collect(),
            serviceusage_permitted: true,
            forwarding_rules: Vec::new(),
            faults: BTreeMap::new(),
            legacy_csds: false,
            csds_overrides: BTreeMap::new(),
            stale_for: None,
            csds: None,
        }
    }
}

/// The running emulator; stops on drop.
pub struct ProjectApis {
    stub: HttpStub,
    state: Arc<Mutex<ProjectState>>,
}

fn lock(m: &Mutex<ProjectState>) -> MutexGuard<'_, ProjectState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ProjectApis {
    pub fn start(state: ProjectState) -> ProjectApis {
        let state = Arc::new(Mutex::new(state));
        let s = state.clone();
        let stub = HttpStub::start(move |req| route(&s, req));
        ProjectApis { stub, state }
    }

    /// `http://127.0.0.1:PORT`: the base URL for every `--*-endpoint` flag.
    pub fn url(&self) -> String {
        self.stub.url()
    }

    pub fn update(&self, f: impl FnOnce(&mut ProjectState)) {
        f(&mut lock(&self.state));
    }

    pub fn set_fault(&self, api: Api, fault: Option<ApiFault>) {
        self.update(|s| match fault {
            Some(f) => {
                s.faults.insert(api, f);
            }
            None => {
                s.faults.remove(&api);
            }
        });
    }

    /// Feeds CSDS from this control plane (see [`csds_from_control_plane`]).
    pub fn feed_csds(&self, cp: ControlPlaneHandle) {
        self.update(|s| s.csds = Some(csds_from_control_plane(cp)));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.stub.requests()
    }

    /// Requests to one API.
    pub fn calls_to(&self, api: Api) -> usize {
        self.stub
            .requests()
            .iter()
            .filter(|r| api_of(&r.path).is_some_and(|(a, _)| a == api))
            .count()
    }

    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Recorded]) -> bool) -> bool {
        self.stub.wait_for(timeout, pred)
    }
}

/// The route a path is for, and the path without its query.
fn api_of(path: &str) -> Option<(Api, String)> {
    let p = path.split('?').next().unwrap_or(path).to_owned();
    if p.starts_with("/v1/projects/") && p.ends_with(":testIamPermissions") {
        Some((Api::ResourceManager, p))
    } else if p.starts_with("/v1/projects/") && p.contains("/services/") {
        Some((Api::ServiceUsage, p))
    } else if p == "/v3/discovery:client_status" {
        Some((Api::TrafficDirector, p))
    } else if p.starts_with("/compute/v1/projects/") && p.ends_with("/aggregated/forwardingRules") {
        Some((Api::Compute, p))
    } else {
        None
    }
}

fn error(code: u16, status: &str, message: &str, details: Value) -> Reply {
    Reply::json(
        code,
        json!({"error": {"code": code, "message": message, "status": status, "details": details}})
            .to_string(),
    )
}

fn disabled(api: Api, number: u64) -> Reply {
    let svc = api.service();
    let message = format!(
        "{} has not been used in project {number} before or it is disabled. Enable it by visiting https://console.developers.google.com/apis/api/{svc}/overview?project={number} then retry. If you enabled this API recently, wait a few minutes for the action to propagate to our systems and retry.",
        api.title()
    );
    error(
        403,
        "PERMISSION_DENIED",
        &message,
        json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED",
                "domain": "googleapis.com",
                "metadata": {"service": svc, "consumer": format!("projects/{number}")}}]),
    )
}

fn route(state: &Mutex<ProjectState>, req: &Recorded) -> Reply {
    let Some((api, path)) = api_of(&req.path) else {
        return error(404, "NOT_FOUND", "no such method", json!([]));
    };
    let st = lock(state).clone();
    let fault = st.faults.get(&api).cloned();
    let reply = match &fault {
        Some(ApiFault::Status(code, msg)) => error(*code, status_name(*code), msg, json!([])),
        Some(ApiFault::Hang) => Reply::Hang,
        _ => answer(&st, api, &path, req),
    };
    match fault {
        Some(ApiFault::Delay(d)) => Reply::Delay(d, Box::new(reply)),
        _ => reply,
    }
}

fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    }
}

fn answer(st: &ProjectState, api: Api, path: &str, req: &Recorded) -> Reply {
    let bearer = req
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "));
    if bearer != Some(st.token.as_str()) {
        return error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            json!([]),
        );
    }
    if !st.enabled.contains(&api) {
        return disabled(api, st.project_number);
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    match api {
        Api::ResourceManager => {
            let project = path
                .trim_start_matches("/v1/projects/")
                .trim_end_matches(":testIamPermissions");
            if project != st.project_id && project != st.project_number.to_string() {
                return error(
                    403,
                    "PERMISSION_DENIED",
                    "The caller does not have permission",
                    json!([]),
                );
            }
            let asked: Vec<&str> = body
                .get("permissions")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let held: Vec<&str> = asked
                .into_iter()
                .filter(|p| st.granted.contains(*p))
                .collect();
            // Like the real API, the key is absent when none is held.
            if held.is_empty() {
                Reply::json(200, "{}")
            } else {
                Reply::json(200, json!({ "permissions": held }).to_string())
            }
        }
        Api::ServiceUsage => {
            let name = path.trim_start_matches("/v1/");
            let mut parts = name.split('/');
            let (Some("projects"), Some(p), Some("services"), Some(svc), None) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                return error(
                    404,
                    "NOT_FOUND",
                    "Requested entity was not found.",
                    json!([]),
                );
            };
            if p != st.project_number.to_string() && p != st.project_id {
                return error(
                    403,
                    "PERMISSION_DENIED",
                    "Permission denied to get service",
                    json!([]),
                );
            }
            if !st.serviceusage_permitted {
                return error(
                    403,
                    "PERMISSION_DENIED",
                    &format!(
                        "Permission 'serviceusage.services.get' denied on resource 'projects/{p}/services/{svc}'"
                    ),
                    json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "IAM_PERMISSION_DENIED", "domain": "serviceusage.googleapis.com"}]),
                );
            }
            let enabled = Api::ALL
                .iter()
                .find(|a| a.service() == svc)
                .is_none_or(|a| st.enabled.contains(a));
            Reply::json(
                200,
                json!({
                    "name": format!("projects/{}/services/{svc}", st.project_number),
                    "parent": format!("projects/{}", st.project_number),
                    "config": {"name": svc, "title": svc},
                    "state": if enabled { "ENABLED" } else { "DISABLED" },
                })
                .to_string(),
            )
        }
        Api::TrafficDirector => {
            if req.header("x-goog-user-project") != Some(&st.project_number.to_string()) {
                // The agent always names its project; a request without it is a bug to see.
                return error(
                    400,
                    "INVALID_ARGUMENT",
                    "x-goog-user-project must name the project",
                    json!([]),
                );
            }
            let node_id = body
                .pointer("/nodeMatchers/0/nodeId/exact")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let mut generic = st.csds.as_ref().map_or_else(Vec::new, |f| f(&node_id));
            for g in &mut generic {
                if let Some(d) = st.stale_for
                    && g["configStatus"] == "STALE"
                {
                    g["lastUpdated"] = json!(rfc3339(SystemTime::now() - d));
                }
                let key = (
                    g["typeUrl"].as_str().unwrap_or_default().to_owned(),
                    g["name"].as_str().unwrap_or_default().to_owned(),
                );
                if let Some(o) = st.csds_overrides.get(&key) {
                    g["configStatus"] = json!(o.config_status);
                    g["clientStatus"] = json!(o.client_status);
                    if let Some(v) = &o.version {
                        g["versionInfo"] = json!(v);
                    }
                    if let Some(t) = o.last_updated {
                        g["lastUpdated"] = json!(rfc3339(t));
                    }
                }
            }
            if generic.is_empty() {
                return Reply::json(200, "{}");
            }
            let config = if st.legacy_csds {
                let per_type: Vec<Value> = generic
                    .iter()
                    .map(|g| {
                        let key = match g["typeUrl"].as_str() {
                            Some(LISTENER_TYPE) => "listenerConfig",
                            Some(CLUSTER_TYPE) => "clusterConfig",
                            Some(ROUTE_TYPE) => "routeConfig",
                            _ => "endpointConfig",
                        };
                        json!({"status": g["configStatus"], key: {"versionInfo": g["versionInfo"]}})
                    })
                    .collect();
                json!({"node": {"id": node_id}, "xdsConfig": per_type})
            } else {
                json!({"node": {"id": node_id}, "genericXdsConfigs": generic})
            };
            Reply::json(200, json!({ "config": [config] }).to_string())
        }
        Api::Compute => {
            let project = path
                .trim_start_matches("/compute/v1/projects/")
                .trim_end_matches("/aggregated/forwardingRules");
            if project != st.project_id {
                return error(
                    404,
                    "NOT_FOUND",
                    &format!("The resource 'projects/{project}' was not found"),
                    json!([]),
                );
            }
            let query = req.path.split_once('?').map(|(_, q)| q).unwrap_or("");
            let filter = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("filter="))
                .map(decode)
                .unwrap_or_default();
            let want_scheme = filter.strip_prefix("loadBalancingScheme").map(|r| {
                r.trim_start()
                    .trim_start_matches('=')
                    .trim()
                    .trim_matches('"')
                    .to_owned()
            });
            let mut items = serde_json::Map::new();
            for r in &st.forwarding_rules {
                if want_scheme.as_deref().is_some_and(|w| w != r.scheme) {
                    continue;
                }
                let scope = r
                    .region
                    .as_ref()
                    .map_or("global".to_owned(), |x| format!("regions/{x}"));
                let entry = items
                    .entry(scope)
                    .or_insert_with(|| json!({"forwardingRules": []}));
                if let Some(list) = entry["forwardingRules"].as_array_mut() {
                    list.push(json!({
                        "kind": "compute#forwardingRule",
                        "name": r.name,
                        "IPAddress": r.ip,
                        "loadBalancingScheme": r.scheme,
                        "network": format!("https://www.googleapis.com/compute/v1/projects/{}/global/networks/{}", st.project_id, r.network),
                    }));
                }
            }
            if items.is_empty() {
                items.insert(
                    "global".into(),
                    json!({"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "There are no results for scope 'global' on this page."}}),
                );
            }
            Reply::json(
                200,
                json!({"kind": "compute#forwardingRuleAggregatedList", "id": format!("projects/{}/aggregated/forwardingRules", st.project_id), "items": items}).to_string(),
            )
        }
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b.get(i) {
            Some(b'%') => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            Some(b'+') => out.push(b' '),
            Some(c) => out.push(*c),
            None => {}
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// CSDS from the control plane's own records: every resource it serves, with the status its
/// last ACK/NACK from `node_id` gives: the served version ACKed → `SYNCED`/`ACKED`; NACKed →
/// `ERROR`/`NACKED` with Envoy's reason; not answered yet → `STALE`/`REQUESTED` (sent, no
/// answer). `lastUpdated` is when the emulator first saw that version served.
pub fn csds_from_control_plane(cp: ControlPlaneHandle) -> CsdsFeed {
    let first_seen: Arc<Mutex<BTreeMap<(String, String), SystemTime>>> = Arc::default();
    Arc::new(move |node_id: &str| {
        let obs = cp.observations();
        let mut out = Vec::new();
        for type_url in [LISTENER_TYPE, ROUTE_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE] {
            let Some((version, names)) = cp.served(type_url) else {
                continue;
            };
            let seen = *first_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry((type_url.to_owned(), version.clone()))
                .or_insert_with(SystemTime::now);
            let answer =
                obs.acks.iter().rev().find(|a| {
                    a.node_id == node_id && a.type_url == type_url && a.version == version
                });
            let (config, client, err) = match answer {
                Some(a) => match &a.nack {
                    Some(f) => ("ERROR", "NACKED", Some(f.message.clone())),
                    None => ("SYNCED", "ACKED", None),
                },
                None => ("STALE", "REQUESTED", None),
            };
            for name in names {
                let mut g = json!({
                    "typeUrl": type_url,
                    "name": name,
                    "versionInfo": version,
                    "configStatus": config,
                    "clientStatus": client,
                    "lastUpdated": rfc3339(seen),
                });
                if let Some(e) = &err {
                    g["errorState"] = json!({"details": e, "versionInfo": version});
                }
                out.push(g);
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            "2027-01-15T08:00:00Z"
        );
    }

    #[test]
    fn routes() {
        assert_eq!(
            api_of("/v1/projects/p:testIamPermissions").map(|x| x.0),
            Some(Api::ResourceManager)
        );
        assert_eq!(
            api_of("/v1/projects/1/services/trafficdirector.googleapis.com?alt=json").map(|x| x.0),
            Some(Api::ServiceUsage)
        );
        assert_eq!(decode("a%3D%22b%22+c"), "a=\"b\" c");
    }
}
