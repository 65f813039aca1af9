//! `envoy-bootstrap`: Envoy's Cloud Service Mesh bootstrap for this VM (docs/contract.md#2-command-line).
//!
//! Two halves: [`BootstrapInput::resolve`] gathers what the bootstrap depends on (the VM's
//! metadata, the `gce-service-proxy` attribute, the agent's own settings) and refuses when
//! something the control plane needs is missing; [`build`] is a pure function from that input to
//! the JSON, so every choice below is unit-tested without a metadata server.
//!
//! Choices, and why:
//! - **Node id** `projects/<number>/networks/<network>/nodes/<uuid>`. The UUID is a version-5
//!   UUID of the VM's identity (project id, zone, instance id): the same VM gets the same node id
//!   at every boot and every re-run of the startup script (so Cloud Service Mesh sees one proxy,
//!   not a new one per reboot, and rewriting the bootstrap changes nothing), while a VM recreated
//!   by a managed instance group has a new instance id and so a new node id. Anyone can
//!   recompute it: `uuid5(uuid5(NAMESPACE_URL, "service-proxy-agent:envoy-node-id"),
//!   "projects/<project-id>/zones/<zone>/instances/<instance-id>")`.
//! - With `proxy-spec.mesh` the network part is `mesh:<name>`, with `proxy-spec.scope` it is
//!   `scope:<name>` (the service-routing APIs); the name is also given as
//!   `TRAFFICDIRECTOR_MESH_SCOPE_NAME`, and `TRAFFICDIRECTOR_NETWORK_NAME` stays the VPC network.
//!   When both are set the mesh wins and a warning says so.
//! - **Network**: `proxy-spec.network` when not empty, else the VM's own network. (gcloud writes
//!   `network: ""` by default; the VM's network is what the forwarding rules must be in.)
//! - **Project number**: `proxy-spec.project-number` when set (configuration in another project,
//!   e.g. a Shared VPC host), else the VM's project number.
//! - **Interception port**: the agent's `--proxy-port` when given (the agent redirects traffic
//!   there, so Envoy must listen there), else `proxy-spec.proxy-port`, else 15001.
//! - **Admin** on the agent's `--envoy-admin` address (127.0.0.1:15000 by default), so the agent
//!   and Envoy agree without a second setting.
//! - **ADS** to the agent's `--control-plane` (trafficdirector.googleapis.com:443) over
//!   `google_grpc` with TLS (the system CA bundle) and the VM's service-account credentials
//!   from the metadata server (`google_compute_engine` call credentials: Google default
//!   credentials on Compute Engine), LDS and CDS from ADS, API version V3.
//! - **Tracing** ON: `TRAFFICDIRECTOR_ENABLE_TRACING=true` (the control plane then enables
//!   tracing in the listeners it sends) and a server-wide OpenTelemetry tracer exporting to Cloud
//!   Trace's OTLP endpoint (telemetry.googleapis.com). Envoy 1.40 no longer has the OpenCensus
//!   tracer older Cloud Service Mesh bootstraps used, and logs the bootstrap-level `tracing`
//!   field as deprecated (still accepted).
//! - A downstream-connection limit (overload manager), as Cloud Service Mesh's own bootstraps
//!   set one: without it Envoy warns at every start and accepts connections without bound.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};
use thiserror::Error;
use uuid::Uuid;

use crate::config::Settings;
use crate::observe::metadata::{
    DEFAULT_PROXY_PORT, MetadataClient, MetadataError, ServiceProxyConfig, VmMetadata,
};
use crate::text;

/// Node metadata keys Cloud Service Mesh reads (docs/outside-world.md#bootstrap-node-metadata).
use crate::contract::node_metadata;
pub use crate::contract::node_metadata::{
    ACCESS_LOG_PATH as ACCESS_LOG_PATH_KEY, ENABLE_TRACING as ENABLE_TRACING_KEY,
    GCP_PROJECT_NUMBER as PROJECT_NUMBER_KEY, INBOUND_BACKEND_PORTS as INBOUND_BACKEND_PORTS_KEY,
    INTERCEPTION_PORT as INTERCEPTION_PORT_KEY, MESH_SCOPE_NAME as MESH_SCOPE_NAME_KEY,
    NETWORK_NAME as NETWORK_NAME_KEY,
};

/// Cloud Trace's OTLP endpoint (the Telemetry API).
pub const TRACE_ENDPOINT: &str = "telemetry.googleapis.com:443";
/// What Envoy accepts at most at once (Cloud Service Mesh's bootstraps use the same figure).
pub const MAX_DOWNSTREAM_CONNECTIONS: u64 = 50_000;
/// Where Linux distributions keep the CA bundle: Debian/Ubuntu, RHEL family, SUSE, old RHEL.
pub const CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
];

/// Namespace of the node UUIDs (itself a v5 UUID of the project's name, so it is fixed).
fn uuid_namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, b"service-proxy-agent:envoy-node-id")
}

/// Exit status when something the bootstrap needs is missing (docs/contract.md#2-command-line).
pub const EXIT_MISSING: u8 = 1;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BootstrapError {
    /// The metadata server did not answer, or an identity item (project id, project number,
    /// instance id, zone) is missing or malformed; the inner error names the path.
    #[error("cannot read the VM's identity from the metadata server: {0}")]
    Identity(MetadataError),
    #[error(
        "the VM's network is unknown ({reason}) and the gce-service-proxy metadata sets no proxy-spec.network"
    )]
    MissingNetwork { reason: String },
    #[error("the gce-service-proxy metadata cannot be used: {0}")]
    ServiceProxy(MetadataError),
    #[error("invalid {field} {value:?} in the gce-service-proxy metadata: {rule}")]
    InvalidField {
        field: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error("--envoy-admin host {0:?} is not an IP address (Envoy's admin needs one)")]
    AdminNotIp(String),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

impl BootstrapError {
    /// Missing or unusable metadata (exit 1), as opposed to a failure of the command itself.
    pub fn is_missing_metadata(&self) -> bool {
        matches!(
            self,
            BootstrapError::Identity(_)
                | BootstrapError::MissingNetwork { .. }
                | BootstrapError::ServiceProxy(_)
                | BootstrapError::InvalidField { .. }
        )
    }
}

/// Where the node says it belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// A VPC network (forwarding rules, the classic API).
    Network,
    /// `mesh:<name>` (the service-routing Mesh API).
    Mesh(String),
    /// `scope:<name>` (the service-routing Gateway API).
    Scope(String),
}

/// Everything the bootstrap is made of, already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapInput {
    pub project_id: String,
    /// The project whose Cloud Service Mesh configuration applies.
    pub project_number: u64,
    pub zone: String,
    pub instance_id: u64,
    pub network: String,
    pub attachment: Attachment,
    pub interception_port: u16,
    pub access_log: Option<String>,
    pub tracing: bool,
    pub serving_ports: Vec<u16>,
    pub labels: BTreeMap<String, String>,
    pub admin: SocketAddr,
    /// `host:port` of the xDS server.
    pub control_plane: String,
    /// The CA bundle for TLS to Google APIs; `None`: gRPC's built-in roots.
    pub ca_bundle: Option<PathBuf>,
    /// What was ignored or assumed, one line each, for the operator.
    pub warnings: Vec<String>,
}

/// The bootstrap and its node id.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    pub node_id: String,
    pub json: Value,
}

impl Bootstrap {
    /// Pretty JSON with a final newline, as written to the file.
    pub fn to_text(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.json).unwrap_or_else(|_| "{}".to_owned());
        s.push('\n');
        s
    }
}

/// The node UUID of a VM: stable for the VM, different for any other (see the module doc).
pub fn node_uuid(project_id: &str, zone: &str, instance_id: u64) -> Uuid {
    let name = format!("projects/{project_id}/zones/{zone}/instances/{instance_id}");
    Uuid::new_v5(&uuid_namespace(), name.as_bytes())
}

/// Names that go into the node id: a segment of a resource path, so no `/`, no spaces.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

const NAME_RULE: &str = "1 to 128 of A-Z, a-z, 0-9, '-', '_' and '.'";

fn checked_name(field: &'static str, value: &str) -> Result<String, BootstrapError> {
    if valid_name(value) {
        Ok(value.to_owned())
    } else {
        Err(BootstrapError::InvalidField {
            field,
            value: text::truncate_with_ellipsis(&text::strip_control(value), 80),
            rule: NAME_RULE,
        })
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl BootstrapInput {
    /// Combines the VM's metadata and the agent's settings; `ca_bundle` is the CA file found on
    /// this machine ([`find_ca_bundle`]).
    pub fn resolve(
        vm: &VmMetadata,
        settings: &Settings,
        ca_bundle: Option<PathBuf>,
    ) -> Result<BootstrapInput, BootstrapError> {
        let mut warnings = Vec::new();
        let sp: ServiceProxyConfig = match &vm.service_proxy {
            Ok(Some(c)) => c.clone(),
            Ok(None) => {
                warnings.push(
                    "the instance has no gce-service-proxy metadata: using the defaults (the VM's network, no access log, no tracing)"
                        .to_owned(),
                );
                ServiceProxyConfig::default()
            }
            Err(e) => return Err(BootstrapError::ServiceProxy(e.clone())),
        };
        warnings.extend(
            sp.warnings
                .iter()
                .map(|w| format!("gce-service-proxy: {w}")),
        );
        let spec = &sp.proxy_spec;

        let network = match non_empty(&spec.network) {
            Some(n) => checked_name("proxy-spec.network", n)?,
            None => match &vm.network {
                Ok(n) => n.name.clone(),
                Err(e) => {
                    return Err(BootstrapError::MissingNetwork {
                        reason: e.to_string(),
                    });
                }
            },
        };
        let mesh = non_empty(&spec.mesh)
            .map(|m| checked_name("proxy-spec.mesh", m))
            .transpose()?;
        let scope = non_empty(&spec.scope)
            .map(|s| checked_name("proxy-spec.scope", s))
            .transpose()?;
        let attachment = match (mesh, scope) {
            (Some(m), Some(s)) => {
                warnings.push(format!(
                    "proxy-spec sets both mesh {m:?} and scope {s:?}: the node joins the mesh"
                ));
                Attachment::Mesh(m)
            }
            (Some(m), None) => Attachment::Mesh(m),
            (None, Some(s)) => Attachment::Scope(s),
            (None, None) => Attachment::Network,
        };

        let access_log = match non_empty(&spec.access_log) {
            None => None,
            Some(p) if p.starts_with('/') && !p.chars().any(char::is_control) => Some(p.to_owned()),
            Some(p) => {
                return Err(BootstrapError::InvalidField {
                    field: "proxy-spec.access-log",
                    value: text::truncate_with_ellipsis(&text::strip_control(p), 80),
                    rule: "an absolute file path",
                });
            }
        };

        let mut labels = BTreeMap::new();
        for (k, v) in &sp.labels {
            if k.starts_with(node_metadata::PREFIX) {
                warnings.push(format!(
                    "label {k} ignored: {}* node metadata is set by the bootstrap",
                    node_metadata::PREFIX
                ));
            } else {
                labels.insert(k.clone(), v.clone());
            }
        }

        let admin_ip = match settings.envoy_admin.host.as_str() {
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            h => h
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .map_err(|_| BootstrapError::AdminNotIp(h.to_owned()))?,
        };

        Ok(BootstrapInput {
            project_id: vm.project_id.clone(),
            project_number: spec.project_number.unwrap_or(vm.project_number),
            zone: vm.zone.clone(),
            instance_id: vm.instance_id,
            network,
            attachment,
            interception_port: settings
                .proxy_port
                .or(spec.proxy_port)
                .unwrap_or(DEFAULT_PROXY_PORT),
            access_log,
            tracing: spec.tracing.unwrap_or(false),
            serving_ports: sp.service.serving_ports.clone(),
            labels,
            admin: SocketAddr::new(admin_ip, settings.envoy_admin.port),
            control_plane: settings.control_plane.to_string(),
            ca_bundle,
            warnings,
        })
    }

    pub fn node_id(&self) -> String {
        let place = match &self.attachment {
            Attachment::Network => self.network.clone(),
            Attachment::Mesh(m) => format!("mesh:{m}"),
            Attachment::Scope(s) => format!("scope:{s}"),
        };
        format!(
            "projects/{}/networks/{place}/nodes/{}",
            self.project_number,
            node_uuid(&self.project_id, &self.zone, self.instance_id)
        )
    }
}

/// The first CA bundle that exists: `SSL_CERT_FILE` (OpenSSL's own override), else the
/// distribution's usual places.
pub fn find_ca_bundle(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("SSL_CERT_FILE")
        .filter(|p| !p.trim().is_empty())
        .map(PathBuf::from)
        .into_iter()
        .chain(CA_BUNDLES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// A `google_grpc` service to a Google API with the VM's credentials.
fn google_grpc(target: &str, stat_prefix: &str, ca_bundle: Option<&Path>) -> Value {
    let ssl = match ca_bundle {
        Some(p) => json!({"root_certs": {"filename": p.to_string_lossy()}}),
        None => json!({}),
    };
    json!({
        "target_uri": target,
        "stat_prefix": stat_prefix,
        "channel_credentials": {"ssl_credentials": ssl},
        "call_credentials": [{"google_compute_engine": {}}],
    })
}

/// The bootstrap for `input`. Pure: same input, same bytes.
pub fn build(input: &BootstrapInput) -> Bootstrap {
    let node_id = input.node_id();
    let ca = input.ca_bundle.as_deref();

    let mut metadata = Map::new();
    // Labels first, so that nothing a label says can replace what the bootstrap sets.
    for (k, v) in &input.labels {
        metadata.insert(k.clone(), Value::String(v.clone()));
    }
    let mut set = |k: &str, v: String| {
        metadata.insert(k.to_owned(), Value::String(v));
    };
    set(NETWORK_NAME_KEY, input.network.clone());
    set(PROJECT_NUMBER_KEY, input.project_number.to_string());
    set(INTERCEPTION_PORT_KEY, input.interception_port.to_string());
    set(ENABLE_TRACING_KEY, input.tracing.to_string());
    if let Some(p) = &input.access_log {
        set(ACCESS_LOG_PATH_KEY, p.clone());
    }
    if let Attachment::Mesh(n) | Attachment::Scope(n) = &input.attachment {
        set(MESH_SCOPE_NAME_KEY, n.clone());
    }
    if !input.serving_ports.is_empty() {
        let ports: Vec<String> = input.serving_ports.iter().map(u16::to_string).collect();
        set(INBOUND_BACKEND_PORTS_KEY, ports.join(","));
    }

    let mut json = json!({
        "node": {
            "id": node_id,
            // Cloud Service Mesh identifies the node by its id; the cluster is not used.
            "cluster": "cluster",
            "locality": {"zone": input.zone},
            "metadata": metadata,
        },
        "admin": {
            "address": {"socket_address": {
                "address": input.admin.ip().to_string(),
                "port_value": input.admin.port(),
            }},
        },
        "dynamic_resources": {
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{
                    "google_grpc": google_grpc(&input.control_plane, "trafficdirector", ca),
                }],
            },
        },
        "overload_manager": {
            "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                },
            }],
        },
    });
    if input.tracing
        && let Value::Object(top) = &mut json
    {
        let tracer = json!({
            "http": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "service_name": "envoy",
                    "grpc_service": {
                        "google_grpc": google_grpc(TRACE_ENDPOINT, "cloud_trace", ca),
                        // The Telemetry API bills and authorizes against this project.
                        "initial_metadata": [{"key": "x-goog-user-project", "value": input.project_id}],
                        "timeout": "5s",
                    },
                    "resource_detectors": [{
                        "name": "envoy.tracers.opentelemetry.resource_detectors.static_config",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.tracers.opentelemetry.resource_detectors.v3.StaticConfigResourceDetectorConfig",
                            "attributes": {
                                "gcp.project_id": input.project_id,
                                "cloud.availability_zone": input.zone,
                                "host.id": input.instance_id.to_string(),
                            },
                        },
                    }],
                },
            },
        });
        top.insert("tracing".to_owned(), tracer);
    }
    Bootstrap { node_id, json }
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never a part:
/// a temporary file in the same directory, flushed, mode 0644, then renamed over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BootstrapError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |e: std::io::Error| BootstrapError::Write {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name() else {
        return Err(BootstrapError::Write {
            path: path.to_owned(),
            reason: "not a file name".into(),
        });
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The umask may have narrowed the mode; Envoy's user must be able to read it.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename itself must survive a crash right after the script goes on.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Reads the VM's metadata, retrying briefly while the server does not answer (at boot it may
/// come up a moment after the startup script starts).
async fn read_vm(client: &MetadataClient) -> Result<VmMetadata, MetadataError> {
    let mut delay = Duration::from_secs(1);
    let mut attempt = 1;
    loop {
        match client.vm_metadata().await {
            Err(e) if e.is_unavailable() && attempt < 3 => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// `envoy-bootstrap [--out FILE]`: 0 written; 1 metadata missing or unusable (the message says
/// which); an error (exit 2 from the CLI) when the file cannot be written.
pub async fn run(settings: &Settings, out: Option<&Path>) -> anyhow::Result<u8> {
    let client = MetadataClient::new(&settings.metadata_host, Duration::from_secs(5));
    let input = read_vm(&client)
        .await
        .map_err(BootstrapError::Identity)
        .and_then(|vm| {
            BootstrapInput::resolve(&vm, settings, find_ca_bundle(|k| std::env::var(k).ok()))
        });
    let input = match input {
        Ok(i) => i,
        Err(e) if e.is_missing_metadata() => {
            eprintln!("service-proxy-agent: envoy-bootstrap: {e}");
            return Ok(EXIT_MISSING);
        }
        Err(e) => return Err(e.into()),
    };
    for w in &input.warnings {
        eprintln!("service-proxy-agent: envoy-bootstrap: warning: {w}");
    }
    if input.ca_bundle.is_none() {
        eprintln!(
            "service-proxy-agent: envoy-bootstrap: warning: no CA bundle found (SSL_CERT_FILE, {}): Envoy will use gRPC's built-in roots",
            CA_BUNDLES.join(", ")
        );
    }
    let bootstrap = build(&input);
    let text = bootstrap.to_text();
    match out {
        Some(path) => {
            write_atomically(path, text.as_bytes())?;
            eprintln!(
                "service-proxy-agent: envoy-bootstrap: wrote {} (node {})",
                path.display(),
                bootstrap.node_id
            );
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes())?;
            stdout.flush()?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests;
