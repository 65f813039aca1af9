//! The names other programs know the agent by, each written once (docs/contract.md).
//!
//! Envoy's node metadata keys, the guest-attribute namespace and keys, the metadata attribute
//! gcloud writes, the interception listener's name, the default proxy port and the names of our
//! iptables chains are read and written by the bootstrap writer, the checks, `observe`,
//! `status`, `fleet` and `intercept`. A typo in one of those copies would be a silent mismatch
//! with the outside world (a key nobody reads), so every module imports them from here.

/// The `TRAFFICDIRECTOR_*` keys of Envoy's node metadata: the bootstrap writes them, the
/// control plane and the checks read them (docs/outside-world.md#node-identity-and-metadata).
pub mod node_metadata {
    /// What every key of this family starts with; labels with it are refused by the bootstrap.
    pub const PREFIX: &str = "TRAFFICDIRECTOR_";
    pub const NETWORK_NAME: &str = "TRAFFICDIRECTOR_NETWORK_NAME";
    pub const GCP_PROJECT_NUMBER: &str = "TRAFFICDIRECTOR_GCP_PROJECT_NUMBER";
    pub const INTERCEPTION_PORT: &str = "TRAFFICDIRECTOR_INTERCEPTION_PORT";
    pub const ACCESS_LOG_PATH: &str = "TRAFFICDIRECTOR_ACCESS_LOG_PATH";
    pub const ENABLE_TRACING: &str = "TRAFFICDIRECTOR_ENABLE_TRACING";
    pub const MESH_SCOPE_NAME: &str = "TRAFFICDIRECTOR_MESH_SCOPE_NAME";
    pub const INBOUND_BACKEND_PORTS: &str = "TRAFFICDIRECTOR_INBOUND_BACKEND_PORTS";
}

/// The guest attributes the agent publishes and `status` / `fleet` read back
/// (docs/contract.md#3-guest-attributes).
pub mod guest_attributes {
    /// The namespace every key lives in.
    pub const NAMESPACE: &str = "gce-service-proxy";

    /// The keys of [`NAMESPACE`].
    pub mod keys {
        pub const BOOTSTRAP_STATUS: &str = "bootstrap-status";
        pub const BOOTSTRAP_LAST_FAILURE: &str = "bootstrap-last-failure";
        pub const PROXY_VERSION: &str = "proxy-version";
        pub const PROXY_STATE: &str = "proxy-state";
        pub const HEARTBEAT: &str = "agent-heartbeat";
        pub const LAST_FAILURE: &str = "agent-last-failure";
        pub const HEALTH: &str = "health";
        pub const FINDINGS: &str = "findings";
    }
}

/// The instance metadata attribute holding gcloud's `--service-proxy` configuration
/// (docs/outside-world.md, what `gcloud ... --service-proxy` writes). The same text as the
/// guest-attribute namespace, but a different contract: one is gcloud's, the other ours.
pub const SERVICE_PROXY_ATTRIBUTE: &str = "gce-service-proxy";

/// The name Cloud Service Mesh gives its interception listener.
pub const INTERCEPTION_LISTENER_NAME: &str = "TRAFFICDIRECTOR_INTERCEPTION_LISTENER";

/// Where intercepted traffic goes when neither the settings, the metadata nor the bootstrap say
/// otherwise: gcloud's default `proxy-port`.
pub const DEFAULT_PROXY_PORT: u16 = 15001;

/// The iptables chains the agent owns in the nat table (docs/contract.md#7-interception).
pub mod chains {
    /// The prefix of our chains' names. Not every chain with it is ours: a user's own
    /// `SERVICE_PROXY_FOO` is left alone (docs/contract.md#11-trust).
    pub const PREFIX: &str = "SERVICE_PROXY_";
    pub const OUTPUT: &str = "SERVICE_PROXY_OUTPUT";
    pub const SERVICE_CIDRS: &str = "SERVICE_PROXY_SERVICE_CIDRS";
    pub const REDIRECT: &str = "SERVICE_PROXY_REDIRECT";
    pub const INBOUND: &str = "SERVICE_PROXY_INBOUND";
    pub const IN_REDIRECT: &str = "SERVICE_PROXY_IN_REDIRECT";
    /// Our chains in the order they are declared.
    pub const ALL: [&str; 5] = [OUTPUT, SERVICE_CIDRS, REDIRECT, INBOUND, IN_REDIRECT];
}
