//! The project-side checks' calls (docs/contract.md#10-project-side-checks): what the VM's own service account can ask Google's
//! APIs about the project it runs in. Each call has a timeout and a size cap and returns a typed
//! result; a call that cannot answer (403, 404, API disabled, timeout) is an [`ApiError`] whose
//! text is the "not checked" reason — never a finding of the thing it checks.
//!
//! Shapes follow the discovery documents (`cloudresourcemanager.v1`, `serviceusage.v1`,
//! `trafficdirector.v3`, `compute.v1`) as docs/outside-world.md#google-apis describes them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request};
use serde::Serialize;
use serde_json::{Value, json};
use thiserror::Error;

use crate::contract::node_metadata;
use crate::observe::token::{MetadataTokens, TokenError};
use crate::text::{lossy_bounded, redact_secrets, strip_control};

pub const DEFAULT_RESOURCEMANAGER: &str = "https://cloudresourcemanager.googleapis.com";
pub const DEFAULT_SERVICEUSAGE: &str = "https://serviceusage.googleapis.com";
pub const DEFAULT_TRAFFICDIRECTOR: &str = "https://trafficdirector.googleapis.com";
pub const DEFAULT_COMPUTE: &str = "https://compute.googleapis.com";

/// The permissions the IAM check asks about (docs/contract.md#10-project-side-checks).
pub const GET_CONFIGS: &str = "trafficdirector.networks.getConfigs";
pub const REPORT_METRICS: &str = "trafficdirector.networks.reportMetrics";
pub const LOG_WRITE: &str = "logging.logEntries.create";
pub const PERMISSIONS: [&str; 3] = [GET_CONFIGS, REPORT_METRICS, LOG_WRITE];
pub const TRAFFIC_DIRECTOR_SERVICE: &str = "trafficdirector.googleapis.com";

/// Each call's deadline (connect, headers and body).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers larger than this are not read: an IAM or Service Usage answer is a few hundred
/// bytes; a CSDS answer of a big mesh is the largest we expect.
pub const MAX_BODY: usize = 4 << 20;
/// Forwarding-rule pages followed at most (each is a call).
const MAX_PAGES: usize = 3;
const MESSAGE_EXCERPT: usize = 300;

/// The four APIs' base URLs (docs/contract.md#2-command-line flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiEndpoints {
    pub resourcemanager: String,
    pub serviceusage: String,
    pub trafficdirector: String,
    pub compute: String,
}

impl Default for ApiEndpoints {
    fn default() -> Self {
        ApiEndpoints {
            resourcemanager: DEFAULT_RESOURCEMANAGER.into(),
            serviceusage: DEFAULT_SERVICEUSAGE.into(),
            trafficdirector: DEFAULT_TRAFFICDIRECTOR.into(),
            compute: DEFAULT_COMPUTE.into(),
        }
    }
}

impl ApiEndpoints {
    /// Whether any endpoint is one of Google's own (`*.googleapis.com`).
    pub fn any_google(&self) -> bool {
        [
            &self.resourcemanager,
            &self.serviceusage,
            &self.trafficdirector,
            &self.compute,
        ]
        .iter()
        .any(|e| e.contains(".googleapis.com"))
    }
}

/// Why a call gave no usable answer: the "not checked" reason.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ApiError {
    #[error("{api} is not enabled in project {project}: {message}")]
    Disabled {
        api: String,
        project: String,
        message: String,
    },
    #[error("permission denied (HTTP 403): {0}")]
    Denied(String),
    #[error("not found (HTTP 404): {0}")]
    NotFound(String),
    #[error("the token was refused (HTTP 401): {0}")]
    Unauthenticated(String),
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the answer is not what the API documents: {0}")]
    Malformed(String),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// Google's error JSON: `{"error": {"code", "message", "status", "details": [{"reason", ...}]}}`.
fn classify(status: u16, body: &[u8]) -> ApiError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map_or_else(|| lossy_bounded(body, MESSAGE_EXCERPT), str::to_owned);
    let message = strip_control(&redact_secrets(&crate::text::truncate_with_ellipsis(
        message.trim(),
        MESSAGE_EXCERPT,
    )));
    let service_disabled = err
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .is_some_and(|d| {
            d.iter()
                .any(|x| x.get("reason").and_then(Value::as_str) == Some("SERVICE_DISABLED"))
        });
    if status == 403
        && let Some((api, project)) = disabled_api(&message)
    {
        return ApiError::Disabled {
            api,
            project,
            message,
        };
    }
    match status {
        403 if service_disabled => ApiError::Disabled {
            api: "an API".into(),
            project: "this project".into(),
            message,
        },
        403 => ApiError::Denied(message),
        404 => ApiError::NotFound(message),
        401 => ApiError::Unauthenticated(message),
        _ => ApiError::Status { status, message },
    }
}

/// `<API name> has not been used in project N before or it is disabled` → (API name, N). The
/// same sentence is in Envoy's close message when the Traffic Director API is off.
pub fn disabled_api(message: &str) -> Option<(String, String)> {
    static RE: std::sync::LazyLock<Option<regex_lite::Regex>> = std::sync::LazyLock::new(|| {
        regex_lite::Regex::new(
            r"(?:^|[:.]\s*|\s)([A-Za-z][A-Za-z0-9 ()-]{0,80}? API) has not been used in project ([0-9a-z-]{1,64}) before or it is disabled",
        )
        .ok()
    });
    let caps = RE.as_ref()?.captures(message)?;
    let api = caps.get(1)?.as_str().trim().to_owned();
    let project = caps.get(2)?.as_str().to_owned();
    Some((api, project))
}

/// `state` of a Service Usage service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ServiceState {
    Enabled,
    Disabled,
    Unspecified,
}

/// One resource in the control plane's view of this node (`genericXdsConfigs`), or one type
/// (`name` `*`) from the older `xdsConfig` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CsdsResource {
    pub type_url: String,
    pub name: String,
    pub version: String,
    /// `SYNCED`, `NOT_SENT`, `STALE`, `ERROR`, `UNKNOWN`.
    pub config_status: String,
    /// `ACKED`, `NACKED`, ... (`UNKNOWN` when absent).
    pub client_status: String,
    /// RFC 3339, when the control plane says.
    pub last_updated: Option<String>,
    /// The NACK's details, when any.
    pub error: Option<String>,
}

/// An `INTERNAL_SELF_MANAGED` forwarding rule: its name and the network (short name) it is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardingRule {
    pub name: String,
    pub network: String,
}

/// Calls made, for the budget metric.
#[derive(Debug, Default)]
pub struct CallCounter {
    pub calls: AtomicU64,
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// The client for the four APIs, with the VM's token.
pub struct ProjectApis {
    endpoints: ApiEndpoints,
    tokens: Arc<MetadataTokens>,
    client: Option<HttpsClient>,
    timeout: Duration,
    pub counter: Arc<CallCounter>,
}

impl ProjectApis {
    pub fn new(endpoints: ApiEndpoints, tokens: Arc<MetadataTokens>) -> Self {
        ProjectApis {
            endpoints,
            tokens,
            client: crate::publish::cloud_logging::https_client().ok(),
            timeout: CALL_TIMEOUT,
            counter: Arc::default(),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn tokens(&self) -> &Arc<MetadataTokens> {
        &self.tokens
    }

    /// One call: the token, the request, the status, the capped body as JSON.
    async fn call(
        &self,
        method: Method,
        url: String,
        extra: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Value, ApiError> {
        let token = self.tokens.token().await?;
        let Some(client) = &self.client else {
            return Err(ApiError::Unreachable {
                endpoint: url,
                reason: "no TLS root certificates".into(),
            });
        };
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", token.secret()))
            .header("accept", "application/json");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let payload = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| ApiError::Malformed(e.to_string()))?;
        self.counter.calls.fetch_add(1, Ordering::Relaxed);
        let endpoint = url.split('?').next().unwrap_or_default().to_owned();
        let exchange = async {
            let resp = client
                .request(req)
                .await
                .map_err(|e| ApiError::Unreachable {
                    endpoint: endpoint.clone(),
                    reason: redact_secrets(&e.to_string()),
                })?;
            let status = resp.status().as_u16();
            let bytes = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        ApiError::TooLarge(MAX_BODY)
                    } else {
                        ApiError::Unreachable {
                            endpoint: endpoint.clone(),
                            reason: e.to_string(),
                        }
                    }
                })?
                .to_bytes();
            if !(200..300).contains(&status) {
                return Err(classify(status, &bytes));
            }
            serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| ApiError::Malformed(format!("not JSON: {e}")))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Timeout(self.timeout)),
        }
    }

    /// `projects/{p}:testIamPermissions`: the subset of [`PERMISSIONS`] the caller holds.
    pub async fn test_iam_permissions(&self, project_id: &str) -> Result<Vec<String>, ApiError> {
        check_segment(project_id)?;
        let url = format!(
            "{}/v1/projects/{project_id}:testIamPermissions",
            self.endpoints.resourcemanager
        );
        let v = self
            .call(
                Method::POST,
                url,
                &[],
                Some(json!({ "permissions": PERMISSIONS })),
            )
            .await?;
        parse_permissions(&v)
    }

    /// `services.get` of the Traffic Director API in the project (by number).
    pub async fn service_state(&self, project_number: u64) -> Result<ServiceState, ApiError> {
        let url = format!(
            "{}/v1/projects/{project_number}/services/{TRAFFIC_DIRECTOR_SERVICE}",
            self.endpoints.serviceusage
        );
        let v = self.call(Method::GET, url, &[], None).await?;
        Ok(match v.get("state").and_then(Value::as_str) {
            Some("ENABLED") => ServiceState::Enabled,
            Some("DISABLED") => ServiceState::Disabled,
            _ => ServiceState::Unspecified,
        })
    }

    /// `discovery:client_status` for this node, matched by id and the two metadata keys.
    pub async fn client_status(
        &self,
        node_id: &str,
        network: &str,
        project_number: u64,
    ) -> Result<Vec<CsdsResource>, ApiError> {
        let url = format!(
            "{}/v3/discovery:client_status",
            self.endpoints.trafficdirector
        );
        let number = project_number.to_string();
        let body = csds_request(node_id, network, &number);
        let v = self
            .call(
                Method::POST,
                url,
                &[("x-goog-user-project", number.as_str())],
                Some(body),
            )
            .await?;
        parse_client_status(&v)
    }

    /// The project's `INTERNAL_SELF_MANAGED` forwarding rules, all regions and global.
    pub async fn forwarding_rules(
        &self,
        project_id: &str,
    ) -> Result<Vec<ForwardingRule>, ApiError> {
        check_segment(project_id)?;
        let mut rules = Vec::new();
        let mut page: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = format!(
                "{}/compute/v1/projects/{project_id}/aggregated/forwardingRules?filter=loadBalancingScheme%3D%22INTERNAL_SELF_MANAGED%22",
                self.endpoints.compute
            );
            if let Some(p) = &page {
                url.push_str("&pageToken=");
                url.push_str(&crate::text::percent_encode(p));
            }
            let v = self.call(Method::GET, url, &[], None).await?;
            rules.extend(parse_forwarding_rules(&v)?);
            page = v
                .get("nextPageToken")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty() && t.len() <= 1024)
                .map(str::to_owned);
            if page.is_none() {
                break;
            }
        }
        Ok(rules)
    }
}

/// Project ids go into a URL path: `[a-z0-9-:.]` only (domain-scoped ids have `:` and `.`).
fn check_segment(s: &str) -> Result<(), ApiError> {
    if !s.is_empty()
        && s.len() <= 100
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b':' | b'.')
        })
    {
        Ok(())
    } else {
        Err(ApiError::Malformed(format!(
            "project id {:?} is not a valid project id",
            strip_control(s)
        )))
    }
}

pub fn csds_request(node_id: &str, network: &str, project_number: &str) -> Value {
    let meta = |key: &str, value: &str| json!({"path": [{"key": key}], "value": {"stringMatch": {"exact": value}}});
    json!({"nodeMatchers": [{
        "nodeId": {"exact": node_id},
        "nodeMetadatas": [
            meta(node_metadata::NETWORK_NAME, network),
            meta(node_metadata::GCP_PROJECT_NUMBER, project_number),
        ],
    }]})
}

/// `{"permissions": [...]}`; the key is absent when the caller holds none.
pub fn parse_permissions(v: &Value) -> Result<Vec<String>, ApiError> {
    match v.get("permissions") {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items
            .iter()
            .filter_map(Value::as_str)
            .filter(|p| PERMISSIONS.contains(p))
            .map(str::to_owned)
            .collect()),
        Some(_) => Err(ApiError::Malformed("permissions is not a list".into())),
    }
}

fn text_field(v: &Value, key: &str, max: usize) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(|s| strip_control(&crate::text::truncate_with_ellipsis(s, max)))
}

/// Resources of every `config[]`: `genericXdsConfigs` where present, else the per-type
/// `xdsConfig` (older servers).
pub fn parse_client_status(v: &Value) -> Result<Vec<CsdsResource>, ApiError> {
    let configs = match v.get("config") {
        None => return Ok(Vec::new()),
        Some(Value::Array(c)) => c,
        Some(_) => return Err(ApiError::Malformed("config is not a list".into())),
    };
    let mut out = Vec::new();
    for c in configs.iter().take(16) {
        if let Some(Value::Array(generic)) = c.get("genericXdsConfigs") {
            for g in generic.iter().take(10_000) {
                out.push(CsdsResource {
                    type_url: text_field(g, "typeUrl", 200).unwrap_or_default(),
                    name: text_field(g, "name", 300).unwrap_or_default(),
                    version: text_field(g, "versionInfo", 200).unwrap_or_default(),
                    config_status: text_field(g, "configStatus", 32)
                        .unwrap_or_else(|| "UNKNOWN".into()),
                    client_status: text_field(g, "clientStatus", 32)
                        .unwrap_or_else(|| "UNKNOWN".into()),
                    last_updated: text_field(g, "lastUpdated", 64),
                    error: g
                        .get("errorState")
                        .map(|e| text_field(e, "details", 300).unwrap_or_else(|| "error".into())),
                });
            }
        } else if let Some(Value::Array(per_type)) = c.get("xdsConfig") {
            for x in per_type.iter().take(16) {
                let (type_url, dump) = [
                    (
                        "listenerConfig",
                        "type.googleapis.com/envoy.config.listener.v3.Listener",
                    ),
                    (
                        "clusterConfig",
                        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                    ),
                    (
                        "routeConfig",
                        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
                    ),
                    (
                        "endpointConfig",
                        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                    ),
                ]
                .iter()
                .find_map(|(k, t)| x.get(*k).map(|d| (*t, d)))
                .unwrap_or(("", &Value::Null));
                out.push(CsdsResource {
                    type_url: type_url.to_owned(),
                    name: "*".into(),
                    version: text_field(dump, "versionInfo", 200).unwrap_or_default(),
                    config_status: text_field(x, "status", 32).unwrap_or_else(|| "UNKNOWN".into()),
                    client_status: text_field(x, "clientStatus", 32)
                        .map(|s| s.trim_start_matches("CLIENT_").to_owned())
                        .unwrap_or_else(|| "UNKNOWN".into()),
                    last_updated: None,
                    error: None,
                });
            }
        }
    }
    Ok(out)
}

/// `items` keyed `regions/<r>` or `global`, each with `forwardingRules[]` (or a `warning`).
pub fn parse_forwarding_rules(v: &Value) -> Result<Vec<ForwardingRule>, ApiError> {
    let Some(items) = v.get("items") else {
        return Ok(Vec::new());
    };
    let Some(items) = items.as_object() else {
        return Err(ApiError::Malformed("items is not a map".into()));
    };
    let mut out = Vec::new();
    for scoped in items.values() {
        let Some(Value::Array(rules)) = scoped.get("forwardingRules") else {
            continue;
        };
        for r in rules.iter().take(5000) {
            // The filter asked for these only; a server that ignores filters is not believed.
            if r.get("loadBalancingScheme").and_then(Value::as_str) != Some("INTERNAL_SELF_MANAGED")
            {
                continue;
            }
            let network = r
                .get("network")
                .and_then(Value::as_str)
                .map_or("default", |n| n.rsplit('/').next().unwrap_or(n));
            out.push(ForwardingRule {
                name: text_field(r, "name", 100).unwrap_or_default(),
                network: strip_control(&crate::text::truncate_with_ellipsis(network, 100)),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disabled_sentence_names_the_api_and_project() {
        let m = "Cloud Resource Manager API has not been used in project 123456789012 before or it is disabled. Enable it by visiting https://console.developers.google.com/apis/api/cloudresourcemanager.googleapis.com/overview?project=123456789012 then retry.";
        assert_eq!(
            disabled_api(m),
            Some(("Cloud Resource Manager API".into(), "123456789012".into()))
        );
        let envoy = "StreamAggregatedResources gRPC config stream to trafficdirector.googleapis.com:443 closed: 7, Traffic Director API has not been used in project 42 before or it is disabled.";
        assert_eq!(
            disabled_api(envoy),
            Some(("Traffic Director API".into(), "42".into()))
        );
        assert_eq!(disabled_api("Permission denied"), None);
    }

    #[test]
    fn errors_are_classified_from_googles_error_json() {
        let body = br#"{"error":{"code":403,"message":"Cloud Resource Manager API has not been used in project 7 before or it is disabled.","status":"PERMISSION_DENIED","details":[{"reason":"SERVICE_DISABLED"}]}}"#;
        assert!(
            matches!(classify(403, body), ApiError::Disabled { ref project, .. } if project == "7")
        );
        let body = br#"{"error":{"code":403,"message":"Permission 'serviceusage.services.get' denied","status":"PERMISSION_DENIED"}}"#;
        assert!(matches!(classify(403, body), ApiError::Denied(_)));
        assert!(matches!(classify(404, b"nope"), ApiError::NotFound(_)));
        assert!(matches!(classify(401, b"{}"), ApiError::Unauthenticated(_)));
        let e = classify(500, br#"{"error":{"message":"Bearer ya29.leak"}}"#);
        assert!(!e.to_string().contains("ya29.leak"), "{e}");
    }

    #[test]
    fn parses_permissions_csds_and_rules() {
        assert_eq!(parse_permissions(&json!({})).unwrap(), Vec::<String>::new());
        assert_eq!(
            parse_permissions(&json!({"permissions": [GET_CONFIGS, "other.x"]})).unwrap(),
            vec![GET_CONFIGS.to_owned()]
        );
        let csds = json!({"config": [{"genericXdsConfigs": [
            {"typeUrl": "t/L", "name": "l1", "versionInfo": "3", "configStatus": "ERROR",
             "clientStatus": "NACKED", "errorState": {"details": "bad"}}
        ]}, {"xdsConfig": [{"status": "STALE", "listenerConfig": {"versionInfo": "9"}}]}]});
        let r = parse_client_status(&csds).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].client_status, "NACKED");
        assert_eq!(r[0].error.as_deref(), Some("bad"));
        assert_eq!(r[1].name, "*");
        assert_eq!(r[1].version, "9");
        assert_eq!(r[1].config_status, "STALE");
        let rules = json!({"items": {
            "regions/us-central1": {"warning": {"code": "NO_RESULTS_ON_PAGE"}},
            "global": {"forwardingRules": [
                {"name": "fr1", "loadBalancingScheme": "INTERNAL_SELF_MANAGED",
                 "network": "https://www.googleapis.com/compute/v1/projects/p/global/networks/default"},
                {"name": "ext", "loadBalancingScheme": "EXTERNAL"}]}}});
        assert_eq!(
            parse_forwarding_rules(&rules).unwrap(),
            vec![ForwardingRule {
                name: "fr1".into(),
                network: "default".into()
            }]
        );
        assert!(parse_client_status(&json!({"config": 3})).is_err());
    }

    #[test]
    fn project_ids_are_validated_before_use_in_a_path() {
        assert!(check_segment("demo-project").is_ok());
        assert!(check_segment("example.com:proj").is_ok());
        for bad in ["", "a/b", "a?b", "A", "p%2f"] {
            assert!(check_segment(bad).is_err(), "{bad}");
        }
    }
}

/// What this VM's node looks like to the checks: read from Envoy's `/server_info` (node id and
/// its `TRAFFICDIRECTOR_*` metadata) and stats, and the VM's metadata, at the time of the calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub project_id: String,
    pub project_number: u64,
    /// The network Envoy announces (node metadata), else the VM's.
    pub network: Option<String>,
    /// `None` when Envoy's admin does not answer.
    pub node_id: Option<String>,
    /// Envoy's LDS version (`listener_manager.lds.version_text`) when the calls were made.
    pub envoy_lds_version: Option<String>,
}

/// Which calls one run makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Plan {
    pub iam: bool,
    pub service: bool,
    pub csds: bool,
    pub forwarding_rules: bool,
}

impl Plan {
    pub const ALL: Plan = Plan {
        iam: true,
        service: true,
        csds: true,
        forwarding_rules: true,
    };

    pub fn calls(&self) -> usize {
        [self.iam, self.service, self.csds, self.forwarding_rules]
            .iter()
            .filter(|b| **b)
            .count()
    }
}

/// One check's typed result: `Ok` is what the API said; `Err` is why it could not be asked;
/// `None` (in [`ProjectObservation`]) means it was not asked this time.
pub type Probe<T> = Option<Result<T, ApiError>>;

/// The answers of one run of the project-side checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectObservation {
    pub at: std::time::SystemTime,
    pub node: NodeView,
    /// The default service account's email.
    pub account: Option<String>,
    /// The permissions held, of [`PERMISSIONS`].
    pub iam: Probe<Vec<String>>,
    pub service: Probe<ServiceState>,
    pub csds: Probe<Vec<CsdsResource>>,
    pub forwarding_rules: Probe<Vec<ForwardingRule>>,
}

impl ProjectApis {
    /// Runs the planned calls concurrently (each under its own deadline).
    pub async fn gather(&self, node: NodeView, plan: Plan) -> ProjectObservation {
        let at = std::time::SystemTime::now();
        let iam = async {
            if plan.iam {
                Some(self.test_iam_permissions(&node.project_id).await)
            } else {
                None
            }
        };
        let service = async {
            if plan.service {
                Some(self.service_state(node.project_number).await)
            } else {
                None
            }
        };
        let csds = async {
            if !plan.csds {
                return None;
            }
            Some(match (&node.node_id, &node.network) {
                (Some(id), Some(net)) => self.client_status(id, net, node.project_number).await,
                (None, _) => Err(ApiError::Malformed(
                    "Envoy's node id is unknown (its admin is not answering)".into(),
                )),
                (_, None) => Err(ApiError::Malformed("the node's network is unknown".into())),
            })
        };
        let rules = async {
            if plan.forwarding_rules {
                Some(self.forwarding_rules(&node.project_id).await)
            } else {
                None
            }
        };
        let email = async {
            if plan.iam {
                self.tokens.email().await.ok().flatten()
            } else {
                None
            }
        };
        let (iam, service, csds, forwarding_rules, account) =
            tokio::join!(iam, service, csds, rules, email);
        ProjectObservation {
            at,
            node,
            account,
            iam,
            service,
            csds,
            forwarding_rules,
        }
    }
}
