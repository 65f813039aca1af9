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

mod client;
mod identity;
mod service_proxy;
mod values;

pub use client::*;
pub use identity::*;
pub use service_proxy::*;
pub use values::*;

#[cfg(test)]
mod tests;
