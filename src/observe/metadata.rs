//! The Compute Engine metadata server: the VM's identity, the `gce-service-proxy` attribute that
//! `gcloud ... --service-proxy` writes, and guest attributes (the channel an SRE reads from
//! outside the VM with `gcloud compute instances get-guest-attributes`).
//!
//! The host comes from `Settings.metadata_host` (`GCE_METADATA_HOST`, as Google's libraries do).
//! Every request carries `Metadata-Flavor: Google`, and every answer must carry it back: anything
//! else answering on that address (a captive proxy, a stray web server) is not the metadata server
//! and its words are not trusted. Bodies are capped; names that go into URLs are validated first.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::observe::http::{self, HttpError};
use crate::text;

/// Where the metadata server lives on Compute Engine.
pub const DEFAULT_HOST: &str = crate::config::DEFAULT_METADATA_HOST;
/// No legitimate metadata answer we read comes near this (attributes are at most 256 KiB).
pub const MAX_BODY: usize = 256 * 1024;
pub use crate::contract::SERVICE_PROXY_ATTRIBUTE;
/// The body of the 403 the server gives when guest attributes are not enabled on the VM.
pub const GUEST_ATTRIBUTES_DISABLED_BODY: &str = "Guest attributes endpoint access is disabled.";
/// The scope Cloud Service Mesh needs (docs/contract.md#4-1-catalogue, `SCOPES_INSUFFICIENT`).
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
pub use crate::contract::DEFAULT_PROXY_PORT;
/// Longest namespace or key we send; the real limit is not documented.
pub const MAX_NAME_LEN: usize = 128;
/// Longest long poll we ask for, so a caller's typo cannot park a task for a day.
pub const MAX_WAIT_SEC: u64 = 3600;

const BASE_PATH: &str = "/computeMetadata/v1/";
const FLAVOR_HEADER: &str = "Metadata-Flavor";
const FLAVOR: &str = "Google";
const BODY_EXCERPT: usize = 200;
const MAX_PATH_LEN: usize = 512;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MetadataError {
    #[error("cannot reach the metadata server at {host}: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("the metadata server at {host} did not answer within {timeout:?}")]
    Timeout { host: String, timeout: Duration },
    #[error("the HTTP exchange with the metadata server at {host} failed: {reason}")]
    Protocol { host: String, reason: String },
    #[error(
        "{host} answered (HTTP {status}) without `Metadata-Flavor: Google`: it is not the metadata server"
    )]
    NotMetadataServer { host: String, status: u16 },
    #[error("metadata {path}: HTTP {status}: {body}")]
    Status {
        path: String,
        status: u16,
        body: String,
    },
    #[error("metadata {path} not found")]
    NotFound { path: String },
    #[error(
        "guest attributes are disabled on this VM (the metadata server said \"Guest attributes endpoint access is disabled.\")"
    )]
    GuestAttributesDisabled,
    #[error("metadata {path}: answer larger than {limit} bytes")]
    TooLarge { path: String, limit: usize },
    #[error("metadata {path}: {reason}")]
    Malformed { path: String, reason: String },
    #[error("invalid {what} {name:?}: {rule}")]
    InvalidName {
        what: &'static str,
        name: String,
        rule: &'static str,
    },
}

impl MetadataError {
    /// The server does not answer as the metadata server at all (down, absent, not GCE, or
    /// failing with 5xx): what `METADATA_UNREACHABLE` reports, as opposed to a specific item
    /// being absent or malformed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            MetadataError::Unreachable { .. }
            | MetadataError::Timeout { .. }
            | MetadataError::Protocol { .. }
            | MetadataError::NotMetadataServer { .. } => true,
            MetadataError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// `projects/<num>/networks/<name>` of the VM's first interface. On Shared VPC the project
/// number is the host project's, which is what Cloud Service Mesh configuration lives in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkRef {
    pub project_number: u64,
    pub name: String,
}

/// What the agent needs to know about its VM. The identity fields are certain (the call fails
/// without them); each other item carries its own result, so one failing item does not hide
/// the others.
#[derive(Debug, Clone, PartialEq)]
pub struct VmMetadata {
    pub instance_id: u64,
    /// Short zone name, e.g. `us-central1-a`.
    pub zone: String,
    pub project_id: String,
    /// `project/numeric-project-id`.
    pub project_number: u64,
    pub network: Result<NetworkRef, MetadataError>,
    /// The default service account's scopes; an empty list when the VM has none.
    pub scopes: Result<Vec<String>, MetadataError>,
    /// The `gce-service-proxy` attribute; `Ok(None)` when it is not set.
    pub service_proxy: Result<Option<ServiceProxyConfig>, MetadataError>,
}

impl VmMetadata {
    /// `Some(true)` when the scopes include cloud-platform; `None` when the scopes are unknown.
    pub fn has_cloud_platform_scope(&self) -> Option<bool> {
        self.scopes
            .as_ref()
            .ok()
            .map(|s| s.iter().any(|x| x == CLOUD_PLATFORM_SCOPE))
    }
}

/// The `gce-service-proxy` JSON, read tolerantly: gcloud says its format "is not a public API and
/// may change", so unknown keys are ignored, missing keys defaulted, and a field of the wrong
/// type is defaulted and noted in `warnings` instead of losing the whole document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceProxyConfig {
    pub api_version: Option<String>,
    pub service: ServiceSpec,
    pub proxy_spec: ProxySpec,
    pub traffic_interception: TrafficInterception,
    /// `--service-proxy-labels`, which gcloud also copies into Envoy's node metadata.
    pub labels: BTreeMap<String, String>,
    /// `agent.ignore-findings` as given (read by `diagnose::silence`, which names what is
    /// unusable in it).
    pub ignore_findings: Option<Value>,
    /// One line per field that was present but unusable (and so defaulted).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceSpec {
    /// Sorted, without duplicates (gcloud writes a set).
    pub serving_ports: Vec<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProxySpec {
    /// `None` when absent, so the caller can fall back to the bootstrap, then 15001.
    pub proxy_port: Option<u16>,
    /// gcloud always writes it, often empty (meaning `default`).
    pub network: Option<String>,
    /// `ON`/`OFF`.
    pub tracing: Option<bool>,
    pub access_log: Option<String>,
    pub scope: Option<String>,
    pub mesh: Option<String>,
    pub project_number: Option<u64>,
}

impl ProxySpec {
    /// The network Envoy should announce: the configured one, `default` when empty or absent.
    pub fn network_name(&self) -> &str {
        match self.network.as_deref() {
            Some(n) if !n.is_empty() => n,
            _ => "default",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrafficInterception {
    pub intercept_all_outbound: bool,
    /// Raw text: the interception code parses these strictly as networks.
    pub exclude_outbound_ip_ranges: Vec<String>,
    /// Raw text (`81`, `8080-8090`): parsed strictly where used.
    pub exclude_outbound_port_ranges: Vec<String>,
    pub intercept_dns: bool,
}

/// A client for one metadata server. Cheap to clone; one connection per request.
#[derive(Debug, Clone)]
pub struct MetadataClient {
    authority: String,
    timeout: Duration,
}

impl MetadataClient {
    /// `host` is `host[:port]` (port 80 when absent, as `GCE_METADATA_HOST` is used by Google's
    /// libraries); an `http://` prefix and a trailing `/` are tolerated, an empty host means the
    /// default. `timeout` bounds each request (a long poll gets its wait on top).
    pub fn new(host: &str, timeout: Duration) -> Self {
        MetadataClient {
            authority: authority_of(host),
            timeout,
        }
    }

    /// `host:port` the requests go to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `GET /computeMetadata/v1/<path>`: the value and its `ETag`.
    pub async fn get(&self, path: &str) -> Result<(String, Option<String>), MetadataError> {
        let path = check_path(path)?;
        let resp = self.send(Method::GET, path, "", None, self.timeout).await?;
        value_of(path, &resp)
    }

    /// Like [`get`](Self::get), with a 404 meaning "not set".
    pub async fn get_optional(&self, path: &str) -> Result<Option<String>, MetadataError> {
        match self.get(path).await {
            Ok((v, _)) => Ok(Some(v)),
            Err(MetadataError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// An instance attribute (`instance/attributes/<key>`); `None` when not set.
    pub async fn instance_attribute(&self, key: &str) -> Result<Option<String>, MetadataError> {
        check_name("attribute key", key)?;
        self.get_optional(&format!("instance/attributes/{key}"))
            .await
    }

    /// Long poll: returns once the value's ETag differs from `last_etag` (with `None`, once it
    /// changes from what it is now), or after `timeout_sec` with the current value.
    pub async fn wait_for_change(
        &self,
        path: &str,
        last_etag: Option<&str>,
        timeout_sec: u64,
    ) -> Result<(String, Option<String>), MetadataError> {
        let path = check_path(path)?;
        let timeout_sec = timeout_sec.clamp(1, MAX_WAIT_SEC);
        let mut query = format!("?wait_for_change=true&timeout_sec={timeout_sec}");
        if let Some(etag) = last_etag {
            query.push_str("&last_etag=");
            query.push_str(&crate::text::percent_encode(etag));
        }
        // The server holds the answer up to timeout_sec: our deadline must outlast it.
        let deadline = Duration::from_secs(timeout_sec).saturating_add(self.timeout);
        let resp = self.send(Method::GET, path, &query, None, deadline).await?;
        value_of(path, &resp)
    }

    /// Everything the agent needs about its VM, fetched in parallel (one slow item costs one
    /// timeout, not seven). Fails only when an identity item (project, zone, instance) fails.
    pub async fn vm_metadata(&self) -> Result<VmMetadata, MetadataError> {
        let (project_id, project_number, instance_id, zone, network, scopes, service_proxy) = tokio::join!(
            self.get("project/project-id"),
            self.get("project/numeric-project-id"),
            self.get("instance/id"),
            self.get("instance/zone"),
            self.get("instance/network-interfaces/0/network"),
            self.get("instance/service-accounts/default/scopes"),
            self.get_optional("instance/attributes/gce-service-proxy"),
        );
        let project_id = parse_project_id(&project_id?.0)
            .map_err(|reason| malformed("project/project-id", reason))?;
        let project_number = parse_number(&project_number?.0)
            .map_err(|reason| malformed("project/numeric-project-id", reason))?;
        let instance_id =
            parse_number(&instance_id?.0).map_err(|reason| malformed("instance/id", reason))?;
        let zone = parse_zone(&zone?.0).map_err(|reason| malformed("instance/zone", reason))?;
        let network = network.and_then(|(text, _)| {
            parse_network(&text)
                .map_err(|reason| malformed("instance/network-interfaces/0/network", reason))
        });
        let scopes = match scopes {
            Ok((text, _)) => Ok(parse_scopes(&text)),
            // No service account: no scopes, which the scope check reports.
            Err(MetadataError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        };
        let service_proxy =
            service_proxy.and_then(|v| v.as_deref().map(parse_service_proxy).transpose());
        Ok(VmMetadata {
            instance_id,
            zone,
            project_id,
            project_number,
            network,
            scopes,
            service_proxy,
        })
    }

    /// `PUT instance/guest-attributes/<namespace>/<key>`. The value is made fit first (one
    /// line, no control characters, at most 1024 bytes).
    pub async fn put_guest_attribute(
        &self,
        namespace: &str,
        key: &str,
        value: &str,
    ) -> Result<(), MetadataError> {
        let path = guest_path(namespace, Some(key))?;
        let body = Bytes::from(text::attribute_value(value));
        let resp = self
            .send(Method::PUT, &path, "", Some(body), self.timeout)
            .await?;
        check_status(&path, &resp)
    }

    /// The attribute's value; `None` when it is not set.
    pub async fn get_guest_attribute(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<String>, MetadataError> {
        let path = guest_path(namespace, Some(key))?;
        let resp = self
            .send(Method::GET, &path, "", None, self.timeout)
            .await?;
        match value_of(&path, &resp) {
            Ok((v, _)) => Ok(Some(v)),
            Err(MetadataError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deleting an attribute that is not there is not an error.
    pub async fn delete_guest_attribute(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<(), MetadataError> {
        let path = guest_path(namespace, Some(key))?;
        let resp = self
            .send(Method::DELETE, &path, "", None, self.timeout)
            .await?;
        match check_status(&path, &resp) {
            Err(MetadataError::NotFound { .. }) => Ok(()),
            r => r,
        }
    }

    /// The keys set in `namespace` (empty when none, including an unknown namespace).
    pub async fn list_guest_attributes(
        &self,
        namespace: &str,
    ) -> Result<Vec<String>, MetadataError> {
        let path = guest_path(namespace, None)?;
        let resp = self
            .send(Method::GET, &path, "", None, self.timeout)
            .await?;
        match value_of(&path, &resp) {
            Ok((text, _)) => Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()),
            Err(MetadataError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// One exchange; checks the flavor of the answer, not its status.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<http::Response, MetadataError> {
        let target = format!("{BASE_PATH}{path}{query}");
        let resp = http::request(
            method,
            &self.authority,
            &target,
            &[(FLAVOR_HEADER, FLAVOR)],
            body,
            timeout,
            MAX_BODY,
        )
        .await
        .map_err(|e| match e {
            HttpError::Connect { authority, reason } => MetadataError::Unreachable {
                host: authority,
                reason,
            },
            HttpError::Timeout { authority, timeout } => MetadataError::Timeout {
                host: authority,
                timeout,
            },
            HttpError::TooLarge { limit, .. } => MetadataError::TooLarge {
                path: path.to_owned(),
                limit,
            },
            HttpError::Protocol { authority, reason } => MetadataError::Protocol {
                host: authority,
                reason,
            },
        })?;
        let flavored = resp
            .header(FLAVOR_HEADER)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case(FLAVOR));
        if !flavored {
            return Err(MetadataError::NotMetadataServer {
                host: self.authority.clone(),
                status: resp.status.as_u16(),
            });
        }
        Ok(resp)
    }
}

fn malformed(path: &str, reason: String) -> MetadataError {
    MetadataError::Malformed {
        path: path.to_owned(),
        reason,
    }
}

/// Maps a non-2xx answer to its error.
fn check_status(path: &str, resp: &http::Response) -> Result<(), MetadataError> {
    if resp.status.is_success() {
        return Ok(());
    }
    if resp.status == StatusCode::NOT_FOUND {
        return Err(MetadataError::NotFound {
            path: path.to_owned(),
        });
    }
    let body = text::strip_control(&text::lossy_bounded(&resp.body, BODY_EXCERPT));
    if resp.status == StatusCode::FORBIDDEN
        && body.contains(GUEST_ATTRIBUTES_DISABLED_BODY.trim_end_matches('.'))
    {
        return Err(MetadataError::GuestAttributesDisabled);
    }
    Err(MetadataError::Status {
        path: path.to_owned(),
        status: resp.status.as_u16(),
        body: body.trim().to_owned(),
    })
}

fn value_of(path: &str, resp: &http::Response) -> Result<(String, Option<String>), MetadataError> {
    check_status(path, resp)?;
    let text = std::str::from_utf8(&resp.body)
        .map_err(|_| malformed(path, "the value is not UTF-8".into()))?
        .to_owned();
    let etag = resp
        .header("etag")
        .map(str::trim)
        .filter(|e| !e.is_empty() && e.len() <= 128 && e.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned);
    Ok((text, etag))
}

/// `host[:port]` → `host:port` for the connection.
fn authority_of(host: &str) -> String {
    let h = host.trim();
    let h = h.strip_prefix("http://").unwrap_or(h);
    let h = h.trim_end_matches('/');
    let h = if h.is_empty() { DEFAULT_HOST } else { h };
    if h.starts_with('[') {
        // [v6] or [v6]:port
        if h.contains("]:") {
            h.to_owned()
        } else {
            format!("{h}:80")
        }
    } else {
        match h.matches(':').count() {
            0 => format!("{h}:80"),
            1 => h.to_owned(),
            _ => format!("[{h}]:80"), // a bare IPv6 address
        }
    }
}

/// A metadata path relative to `/computeMetadata/v1/`: plain segments only, so that nothing the
/// caller passes can add a query, climb out of the tree or smuggle bytes into the request line.
fn check_path(path: &str) -> Result<&str, MetadataError> {
    let p = path.trim_start_matches('/');
    let invalid = |rule| MetadataError::InvalidName {
        what: "metadata path",
        name: text::truncate_with_ellipsis(&text::strip_control(path), 80),
        rule,
    };
    if p.len() > MAX_PATH_LEN {
        return Err(invalid("too long"));
    }
    if !p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
    {
        return Err(invalid(
            "only A-Z, a-z, 0-9, '_', '-', '.' and '/' are allowed",
        ));
    }
    if p.split('/').any(|s| s == "." || s == "..") {
        return Err(invalid("'.' and '..' segments are not allowed"));
    }
    Ok(p)
}

/// Namespace and key names: `[A-Za-z0-9_-]`, as the server requires.
fn check_name(what: &'static str, name: &str) -> Result<(), MetadataError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(MetadataError::InvalidName {
            what,
            name: text::truncate_with_ellipsis(&text::strip_control(name), 80),
            rule: "1 to 128 of A-Z, a-z, 0-9, '_' and '-'",
        })
    }
}

fn guest_path(namespace: &str, key: Option<&str>) -> Result<String, MetadataError> {
    check_name("guest attribute namespace", namespace)?;
    match key {
        Some(k) => {
            check_name("guest attribute key", k)?;
            Ok(format!("instance/guest-attributes/{namespace}/{k}"))
        }
        None => Ok(format!("instance/guest-attributes/{namespace}/")),
    }
}

/// A decimal number (instance id, project number).
pub fn parse_number(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("expected a number, got {:?}", excerpt(t)));
    }
    t.parse::<u64>()
        .map_err(|e| format!("expected a number, got {:?}: {e}", excerpt(t)))
}

/// Project ids are `[a-z0-9-]`, with `domain.com:` prefixes for old domain-scoped projects.
pub fn parse_project_id(text: &str) -> Result<String, String> {
    let t = text.trim();
    let ok = !t.is_empty()
        && t.len() <= 100
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'));
    if ok {
        Ok(t.to_owned())
    } else {
        Err(format!("not a project id: {:?}", excerpt(t)))
    }
}

/// `projects/<num>/zones/<zone>` → `<zone>` (a bare zone name is taken as is).
pub fn parse_zone(text: &str) -> Result<String, String> {
    let t = text.trim();
    let zone = match t.rsplit_once("/zones/") {
        Some((prefix, zone)) => {
            let num = prefix.strip_prefix("projects/").unwrap_or("");
            parse_number(num)
                .map_err(|_| format!("not projects/<number>/zones/<zone>: {:?}", excerpt(t)))?;
            zone
        }
        None if !t.contains('/') => t,
        None => {
            return Err(format!(
                "not projects/<number>/zones/<zone>: {:?}",
                excerpt(t)
            ));
        }
    };
    let ok = !zone.is_empty()
        && zone.len() <= 63
        && zone
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(zone.to_owned())
    } else {
        Err(format!("not a zone name: {:?}", excerpt(zone)))
    }
}

/// `projects/<num>/networks/<name>`.
pub fn parse_network(text: &str) -> Result<NetworkRef, String> {
    let t = text.trim();
    let bad = || format!("not projects/<number>/networks/<name>: {:?}", excerpt(t));
    let mut parts = t.split('/');
    let (Some("projects"), Some(num), Some("networks"), Some(name), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    let project_number = parse_number(num).map_err(|_| bad())?;
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(bad());
    }
    Ok(NetworkRef {
        project_number,
        name: name.to_owned(),
    })
}

/// One scope per line; blank lines and control characters dropped.
pub fn parse_scopes(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().any(char::is_control))
        .map(str::to_owned)
        .collect()
}

fn excerpt(s: &str) -> String {
    text::truncate_with_ellipsis(&text::strip_control(s), 80)
}

// --- gce-service-proxy --------------------------------------------------------------------

/// Largest `gce-service-proxy` document accepted (GCE caps a metadata value at 256 KiB).
pub const SERVICE_PROXY_MAX_BYTES: usize = 256 * 1024;
const MAX_WARNINGS: usize = 32;
const MAX_STRING: usize = 4096;
const MAX_LIST: usize = 1024;
const SP_PATH: &str = "instance/attributes/gce-service-proxy";

/// Parses the `gce-service-proxy` JSON. Only a document that is not a JSON object (or too
/// large) is an error; anything inside it that is unusable is defaulted with a warning.
pub fn parse_service_proxy(text: &str) -> Result<ServiceProxyConfig, MetadataError> {
    if text.len() > SERVICE_PROXY_MAX_BYTES {
        return Err(MetadataError::TooLarge {
            path: SP_PATH.to_owned(),
            limit: SERVICE_PROXY_MAX_BYTES,
        });
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| malformed(SP_PATH, format!("gce-service-proxy is not JSON: {e}")))?;
    let Value::Object(top) = value else {
        return Err(malformed(
            SP_PATH,
            format!(
                "gce-service-proxy is not a JSON object but {}",
                kind_of(&value)
            ),
        ));
    };
    let mut w = Warnings::default();
    let mut cfg = ServiceProxyConfig {
        api_version: string_field(&top, "api-version", "api-version", &mut w),
        ..ServiceProxyConfig::default()
    };

    if let Some(service) = object_field(&top, "service", "service", &mut w) {
        if let Some(v) = present(service, "serving-ports") {
            let mut ports = port_list(v, "service.serving-ports", &mut w);
            ports.sort_unstable();
            ports.dedup();
            cfg.service.serving_ports = ports;
        }
    }

    if let Some(spec) = object_field(&top, "proxy-spec", "proxy-spec", &mut w) {
        let p = &mut cfg.proxy_spec;
        p.proxy_port =
            present(spec, "proxy-port").and_then(|v| port(v, "proxy-spec.proxy-port", &mut w));
        p.network = string_field(spec, "network", "proxy-spec.network", &mut w);
        p.tracing = present(spec, "tracing").and_then(|v| on_off(v, "proxy-spec.tracing", &mut w));
        p.access_log = string_field(spec, "access-log", "proxy-spec.access-log", &mut w);
        p.scope = string_field(spec, "scope", "proxy-spec.scope", &mut w);
        p.mesh = string_field(spec, "mesh", "proxy-spec.mesh", &mut w);
        p.project_number = present(spec, "project-number")
            .and_then(|v| project_number(v, "proxy-spec.project-number", &mut w));
    }

    if let Some(ti) = object_field(&top, "traffic-interception", "traffic-interception", &mut w) {
        let t = &mut cfg.traffic_interception;
        t.intercept_all_outbound = present(ti, "intercept-all-outbound")
            .and_then(|v| boolean(v, "traffic-interception.intercept-all-outbound", &mut w))
            .unwrap_or(false);
        t.exclude_outbound_ip_ranges = present(ti, "exclude-outbound-ip-ranges")
            .map(|v| string_list(v, "traffic-interception.exclude-outbound-ip-ranges", &mut w))
            .unwrap_or_default();
        t.exclude_outbound_port_ranges = present(ti, "exclude-outbound-port-ranges")
            .map(|v| {
                string_list(
                    v,
                    "traffic-interception.exclude-outbound-port-ranges",
                    &mut w,
                )
            })
            .unwrap_or_default();
        t.intercept_dns = present(ti, "intercept-dns")
            .and_then(|v| boolean(v, "traffic-interception.intercept-dns", &mut w))
            .unwrap_or(false);
    }

    if let Some(labels) = object_field(&top, "labels", "labels", &mut w) {
        for (k, v) in labels.iter().take(MAX_LIST) {
            let name = format!("labels.{}", excerpt(k));
            if !clean_string(k) {
                w.push(format!(
                    "{name}: label name is empty, too long or has control characters; ignored"
                ));
                continue;
            }
            if let Some(v) = scalar_string(v, &name, &mut w) {
                cfg.labels.insert(k.clone(), v);
            }
        }
    }

    if let Some(agent) = object_field(&top, "agent", "agent", &mut w) {
        cfg.ignore_findings = present(agent, "ignore-findings").cloned();
    }

    cfg.warnings = w.0;
    Ok(cfg)
}

#[derive(Default)]
struct Warnings(Vec<String>);

impl Warnings {
    fn push(&mut self, msg: String) {
        if self.0.len() < MAX_WARNINGS {
            self.0.push(text::truncate_with_ellipsis(&msg, 200));
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value of `key`, treating `null` as absent.
fn present<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn object_field<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    name: &str,
    w: &mut Warnings,
) -> Option<&'a Map<String, Value>> {
    match present(map, key)? {
        Value::Object(o) => Some(o),
        other => {
            w.push(format!(
                "{name}: expected an object, got {}; ignored",
                kind_of(other)
            ));
            None
        }
    }
}

fn clean_string(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_STRING && !s.chars().any(char::is_control)
}

/// Strings, and numbers/booleans written where a string was meant (e.g. a project number).
fn scalar_string(v: &Value, name: &str, w: &mut Warnings) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => {
            w.push(format!(
                "{name}: expected a string, got {}; ignored",
                kind_of(other)
            ));
            return None;
        }
    };
    if s.len() > MAX_STRING || s.chars().any(char::is_control) {
        w.push(format!(
            "{name}: too long or has control characters; ignored"
        ));
        return None;
    }
    Some(s)
}

fn string_field(
    map: &Map<String, Value>,
    key: &str,
    name: &str,
    w: &mut Warnings,
) -> Option<String> {
    present(map, key).and_then(|v| scalar_string(v, name, w))
}

fn port(v: &Value, name: &str, w: &mut Warnings) -> Option<u16> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n @ 1..=65535) => u16::try_from(n).ok(),
        _ => {
            w.push(format!(
                "{name}: {} is not a port (1-65535); ignored",
                excerpt(&v.to_string())
            ));
            None
        }
    }
}

/// A list of ports: a JSON array (numbers or numeric strings), or gcloud's flag syntax
/// `"80;8080"` when someone wrote the metadata by hand.
fn port_list(v: &Value, name: &str, w: &mut Warnings) -> Vec<u16> {
    match v {
        Value::Array(items) => items
            .iter()
            .take(MAX_LIST)
            .filter_map(|i| port(i, name, w))
            .collect(),
        Value::Number(_) => port(v, name, w).into_iter().collect(),
        Value::String(s) => s
            .split([';', ','])
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .take(MAX_LIST)
            .filter_map(|p| port(&Value::String(p.to_owned()), name, w))
            .collect(),
        other => {
            w.push(format!(
                "{name}: expected a list of ports, got {}; ignored",
                kind_of(other)
            ));
            Vec::new()
        }
    }
}

/// A list of strings (an array, or one `;`-separated string), entries trimmed, blanks dropped.
fn string_list(v: &Value, name: &str, w: &mut Warnings) -> Vec<String> {
    let items: Vec<String> = match v {
        Value::Array(items) => items
            .iter()
            .take(MAX_LIST)
            .filter_map(|i| scalar_string(i, name, w))
            .collect(),
        Value::String(_) | Value::Number(_) => scalar_string(v, name, w)
            .map(|s| s.split([';', ',']).map(str::to_owned).collect())
            .unwrap_or_default(),
        other => {
            w.push(format!(
                "{name}: expected a list of strings, got {}; ignored",
                kind_of(other)
            ));
            return Vec::new();
        }
    };
    items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .take(MAX_LIST)
        .collect()
}

fn boolean(v: &Value, name: &str, w: &mut Warnings) -> Option<bool> {
    let b = match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Some(true),
            "false" | "off" | "no" | "0" | "" => Some(false),
            _ => None,
        },
        Value::Number(n) => match n.as_u64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        _ => None,
    };
    if b.is_none() {
        w.push(format!(
            "{name}: {} is not a boolean; ignored",
            excerpt(&v.to_string())
        ));
    }
    b
}

/// gcloud writes `"ON"`/`"OFF"`.
fn on_off(v: &Value, name: &str, w: &mut Warnings) -> Option<bool> {
    boolean(v, name, w)
}

/// gcloud writes the project number as a string; accept a number too; empty means unset.
fn project_number(v: &Value, name: &str, w: &mut Warnings) -> Option<u64> {
    let text = match v {
        Value::String(s) if s.trim().is_empty() => return None,
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => {
            w.push(format!(
                "{name}: expected a project number, got {}; ignored",
                kind_of(other)
            ));
            return None;
        }
    };
    match parse_number(&text) {
        Ok(n) => Some(n),
        Err(e) => {
            w.push(format!("{name}: {e}; ignored"));
            None
        }
    }
}

#[cfg(test)]
mod tests;
