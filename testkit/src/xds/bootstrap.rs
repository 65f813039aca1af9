//! The Envoy bootstrap of a Cloud Service Mesh node, pointed at a loopback control plane.
//!
//! Same node identity and metadata as the real bootstrap (docs/outside-world.md#bootstrap-node-metadata); the control plane is
//! reached over plaintext HTTP/2 on loopback instead of `trafficdirector.googleapis.com:443`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::envoy::EnvoyConfig;

/// The name of the static cluster that reaches the control plane.
pub const CONTROL_PLANE_CLUSTER: &str = "trafficdirector";

/// Which Envoy gRPC client talks to the control plane. It shows in the "stream closed" log
/// lines: `envoy_grpc` names the cluster, `google_grpc` names the target URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcClient {
    EnvoyGrpc,
    /// As the real bootstrap does (without TLS and credentials here).
    GoogleGrpc,
}

#[derive(Debug, Clone)]
pub struct BootstrapSpec {
    pub control_plane: SocketAddr,
    /// `TRAFFICDIRECTOR_NETWORK_NAME` and the network part of the node id.
    pub network: String,
    /// `TRAFFICDIRECTOR_GCP_PROJECT_NUMBER` and the project part of the node id.
    pub project_number: String,
    pub node_uuid: String,
    /// `TRAFFICDIRECTOR_INTERCEPTION_PORT`; `None` leaves it out (no interception listener).
    pub interception_port: Option<u16>,
    /// `TRAFFICDIRECTOR_ACCESS_LOG_PATH`.
    pub access_log_path: Option<String>,
    /// Leave the network and project out of the metadata (the NODE_METADATA_MISMATCH case).
    pub omit_network_metadata: bool,
    /// `lds_config`/`cds_config` `initial_fetch_timeout` (Envoy's default is 15 s).
    pub initial_fetch_timeout: Duration,
    /// Also report load (LRS) to the control plane, as Cloud Service Mesh's bootstrap does.
    pub load_reporting: bool,
    pub grpc_client: GrpcClient,
    /// More `node.metadata` keys.
    pub extra_metadata: Map<String, Value>,
    /// The admin listener; `None` leaves it to `testkit::envoy` (127.0.0.1, port 0).
    pub admin: Option<SocketAddr>,
}

impl BootstrapSpec {
    pub fn new(
        control_plane: SocketAddr,
        network: impl Into<String>,
        project_number: impl Into<String>,
    ) -> Self {
        BootstrapSpec {
            control_plane,
            network: network.into(),
            project_number: project_number.into(),
            node_uuid: pseudo_uuid(),
            interception_port: Some(15001),
            access_log_path: None,
            omit_network_metadata: false,
            initial_fetch_timeout: Duration::from_secs(15),
            load_reporting: false,
            grpc_client: GrpcClient::EnvoyGrpc,
            extra_metadata: Map::new(),
            admin: None,
        }
    }

    /// `projects/<num>/networks/<net>/nodes/<uuid>`.
    pub fn node_id(&self) -> String {
        format!(
            "projects/{}/networks/{}/nodes/{}",
            self.project_number, self.network, self.node_uuid
        )
    }

    fn grpc_service(&self) -> Value {
        match self.grpc_client {
            GrpcClient::EnvoyGrpc => json!({"envoy_grpc": {"cluster_name": CONTROL_PLANE_CLUSTER}}),
            GrpcClient::GoogleGrpc => json!({"google_grpc": {
                "target_uri": self.control_plane.to_string(),
                "stat_prefix": CONTROL_PLANE_CLUSTER,
            }}),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut metadata = Map::new();
        if !self.omit_network_metadata {
            metadata.insert("TRAFFICDIRECTOR_NETWORK_NAME".into(), json!(self.network));
            metadata.insert(
                "TRAFFICDIRECTOR_GCP_PROJECT_NUMBER".into(),
                json!(self.project_number),
            );
        }
        if let Some(p) = self.interception_port {
            metadata.insert(
                "TRAFFICDIRECTOR_INTERCEPTION_PORT".into(),
                json!(p.to_string()),
            );
        }
        if let Some(p) = &self.access_log_path {
            metadata.insert("TRAFFICDIRECTOR_ACCESS_LOG_PATH".into(), json!(p));
        }
        for (k, v) in &self.extra_metadata {
            metadata.insert(k.clone(), v.clone());
        }
        let ads_source = json!({
            "ads": {},
            "resource_api_version": "V3",
            "initial_fetch_timeout": duration_json(self.initial_fetch_timeout),
        });
        let mut bootstrap = json!({
            "node": {
                "id": self.node_id(),
                "cluster": "cluster",
                "metadata": metadata,
            },
            "dynamic_resources": {
                "ads_config": {
                    "api_type": "GRPC",
                    "transport_api_version": "V3",
                    "set_node_on_first_message_only": true,
                    "grpc_services": [self.grpc_service()],
                },
                "lds_config": ads_source,
                "cds_config": ads_source,
            },
            "static_resources": {
                "clusters": [{
                    "name": CONTROL_PLANE_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": CONTROL_PLANE_CLUSTER,
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                            "address": self.control_plane.ip().to_string(),
                            "port_value": self.control_plane.port(),
                        }}}}]}],
                    },
                }],
            },
        });
        if let Some(a) = self.admin {
            bootstrap["admin"] = json!({"address": {"socket_address": {
                "address": a.ip().to_string(),
                "port_value": a.port(),
            }}});
        }
        if self.load_reporting {
            bootstrap["cluster_manager"] = json!({"load_stats_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [self.grpc_service()],
            }});
        }
        bootstrap
    }

    /// An [`EnvoyConfig`] for `testkit::envoy::Envoy::start` with this bootstrap.
    pub fn envoy_config(&self) -> EnvoyConfig {
        EnvoyConfig::new(self.to_json())
    }
}

/// `15s`, `0.250s`: the JSON form of a protobuf Duration.
pub fn duration_json(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}.{:03}s", d.as_secs(), d.subsec_millis())
    }
}

/// A unique UUID-shaped id (no randomness needed: time, pid and a counter).
pub fn pseudo_uuid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let a = nanos as u64;
    let b = (u64::from(std::process::id()) << 32) ^ n;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        (a & 0xfff) as u16,
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_names_node_and_control_plane() {
        let spec = BootstrapSpec::new("127.0.0.1:4444".parse().unwrap(), "default", "123");
        let b = spec.to_json();
        let id = b["node"]["id"].as_str().unwrap();
        assert!(
            id.starts_with("projects/123/networks/default/nodes/"),
            "{id}"
        );
        assert_eq!(
            b["node"]["metadata"]["TRAFFICDIRECTOR_NETWORK_NAME"],
            "default"
        );
        assert_eq!(
            b["node"]["metadata"]["TRAFFICDIRECTOR_INTERCEPTION_PORT"],
            "15001"
        );
        let ep = &b["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0];
        assert_eq!(
            ep["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"],
            4444
        );
        assert_eq!(
            b["dynamic_resources"]["lds_config"]["initial_fetch_timeout"],
            "15s"
        );
        assert_ne!(pseudo_uuid(), pseudo_uuid());
        assert_eq!(duration_json(Duration::from_millis(1500)), "1.500s");
    }
}
