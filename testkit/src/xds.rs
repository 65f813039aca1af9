//! A stand-in for Cloud Service Mesh's control plane that speaks real xDS over gRPC, so tests and
//! the demo run a real Envoy against it.
//!
//! - [`ControlPlane`] serves state-of-the-world ADS (`StreamAggregatedResources`) and LRS
//!   (`StreamLoadStats`) with tonic on its own thread; setters push new versions to every
//!   connected stream at once. Delta ADS answers `UNIMPLEMENTED`.
//! - Failures switch at runtime: [`ControlPlaneHandle::fail_ads`] closes every ADS stream,
//!   current and future, with a chosen gRPC status; [`ControlPlaneHandle::expect_node`] closes
//!   streams of nodes from another network or project with 5 and the exact message Cloud Service
//!   Mesh uses.
//! - [`resources`] builds the listeners, routes and clusters Cloud Service Mesh serves;
//!   [`bootstrap`] the Envoy bootstrap of a node connecting here; [`control`] a small HTTP
//!   endpoint to drive a running control plane from another process (the demo).

pub mod bootstrap;
pub mod control;
mod grpc_message;
pub mod resources;
mod server;

use serde::{Deserialize, Serialize};

pub use bootstrap::{BootstrapSpec, GrpcClient};
pub use resources::{
    Backend, ClusterSpec, Discovery, HealthCheckKind, HealthCheckSpec, INTERCEPTION_LISTENER,
    InterceptionSpec, ServiceVip,
};
pub use server::{
    AckRecord, ClosedRecord, ControlPlane, ControlPlaneHandle, NodeIdentity, Observations,
};

pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// A gRPC status to close streams with (or a NACK's `error_detail`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: i32,
    pub message: String,
    /// How long a stream is held open before it is closed with this status (0: at once).
    /// Envoy reads `control_plane.connected_state` 1 while a stream is open, so a held
    /// refusal makes that reading last long enough to be polled on purpose.
    #[serde(default)]
    pub hold_ms: u64,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            hold_ms: 0,
        }
    }

    /// The same status, sent after holding each stream open for `hold`.
    pub fn held_for(mut self, hold: std::time::Duration) -> Self {
        self.hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// What Cloud Service Mesh answers a node whose network/project has no configuration.
    pub fn config_not_found(network: &str, project_number: &str) -> Self {
        Failure::new(
            5,
            format!(
                "Cloud Service Mesh configuration was not found for network \"{network}\" in project \"{project_number}\"."
            ),
        )
    }

    pub fn status(&self) -> tonic::Status {
        tonic::Status::new(tonic::Code::from(self.code), self.message.clone())
    }
}

/// The network and project number whose nodes get configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedNode {
    pub network: String,
    pub project_number: String,
}

impl ExpectedNode {
    pub fn new(network: impl Into<String>, project_number: impl Into<String>) -> Self {
        ExpectedNode {
            network: network.into(),
            project_number: project_number.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    Ads,
    Lrs,
}
