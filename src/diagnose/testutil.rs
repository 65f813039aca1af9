//! Plain-value snapshots for the checks' unit tests: a healthy VM with a LIVE Envoy connected to
//! its control plane, which each test then breaks in one way.

use std::time::{Duration, Instant, SystemTime};

use crate::config::InterceptionMode;
use crate::diagnose::{CheckContext, CheckSettings, History};
use crate::observe::envoy_admin::{
    AdminError, ClusterStatus, CommandLineOptions, DynamicListener, EnvoyStats, Listener,
    ListenerState, Node, ServerInfo, ServerState,
};
use crate::observe::metadata::{MetadataError, NetworkRef, VmMetadata};
use crate::observe::procfs::EnvoyProcess;
use crate::observe::{GuestAttributesState, Resolved, Snapshot};

pub const PROJECT: u64 = 123_456_789_012;

pub fn node(network: &str, project: &str) -> Node {
    let mut metadata = serde_json::Map::new();
    metadata.insert("TRAFFICDIRECTOR_NETWORK_NAME".into(), network.into());
    metadata.insert("TRAFFICDIRECTOR_GCP_PROJECT_NUMBER".into(), project.into());
    Node {
        id: format!(
            "projects/{project}/networks/{network}/nodes/9a3b7c1e-0000-4000-8000-000000000001"
        ),
        cluster: "cluster".into(),
        metadata,
    }
}

pub fn vm() -> VmMetadata {
    VmMetadata {
        instance_id: 1,
        zone: "us-central1-a".into(),
        project_id: "demo-project".into(),
        project_number: PROJECT,
        network: Ok(NetworkRef {
            project_number: PROJECT,
            name: "default".into(),
        }),
        scopes: Ok(vec![crate::observe::metadata::CLOUD_PLATFORM_SCOPE.into()]),
        service_proxy: Ok(None),
    }
}

pub fn active_listener(name: &str) -> DynamicListener {
    DynamicListener {
        name: Some(name.into()),
        active: Some(ListenerState {
            version_info: Some("1".into()),
            last_updated: None,
            listener: Listener {
                name: name.into(),
                ..Listener::default()
            },
        }),
        ..DynamicListener::default()
    }
}

pub fn connected_stats() -> EnvoyStats {
    EnvoyStats {
        control_plane_connected_state: Some(1),
        lds_update_rejected: Some(0),
        lds_update_success: Some(1),
        cds_update_rejected: Some(0),
        total_listeners_active: Some(1),
        total_listeners_warming: Some(0),
        ..EnvoyStats::default()
    }
}

pub fn admin_down() -> AdminError {
    AdminError::Unreachable {
        endpoint: "/server_info",
        reason: "Connection refused".into(),
    }
}

pub fn metadata_down() -> MetadataError {
    MetadataError::Unreachable {
        host: "metadata.google.internal".into(),
        reason: "Connection refused".into(),
    }
}

/// A healthy VM: Envoy 1.40.0 LIVE for 10 minutes, connected, one interception listener.
pub fn snapshot() -> Snapshot {
    Snapshot {
        taken_at: SystemTime::now(),
        interception_mode: InterceptionMode::Off,
        processes: Ok(vec![EnvoyProcess {
            pid: 4242,
            uid: 1337,
            start_ticks: 1,
            start_time: None,
            cmdline: "envoy -c /etc/envoy/bootstrap.json".into(),
        }]),
        admin_pid: Some(4242),
        server_info: Ok(ServerInfo {
            version: "9e55/1.40.0/Clean/RELEASE/BoringSSL".into(),
            state: ServerState::Live,
            uptime_current_epoch: Some(Duration::from_secs(600)),
            uptime_all_epochs: Some(Duration::from_secs(600)),
            command_line_options: CommandLineOptions::default(),
            node: node("default", &PROJECT.to_string()),
        }),
        listeners: Ok(vec![active_listener("TRAFFICDIRECTOR_INTERCEPTION_LISTENER")].into()),
        listener_summary: None,
        clusters: Ok(Vec::<ClusterStatus>::new()),
        stats: Ok(connected_stats()),
        vm: Ok(vm()),
        iptables: None,
        control_plane: None,
        guest_attributes: GuestAttributesState::Unknown,
        resolved: Resolved {
            envoy_uid: Some(1337),
            envoy_uid_source: "owner of the admin socket".into(),
            admin_trust: crate::observe::admin_trust::AdminTrust::Trusted {
                uid: 1337,
                inode: 1,
            },
            proxy_port: 15001,
            serving_ports: Vec::new(),
        },
        access_log: None,
        envoy_groups: None,
    }
}

pub fn settings() -> CheckSettings {
    CheckSettings {
        admin_url: "http://127.0.0.1:15000".into(),
        interception: InterceptionMode::Off,
        not_live_grace: Duration::from_secs(60),
        disconnected_grace: Duration::from_secs(60),
        finding_ttl: Duration::from_secs(600),
        control_plane: "trafficdirector.googleapis.com:443".into(),
        ignore_findings: Vec::new(),
    }
}

/// A context whose history has seen `snaps` (in order, 10 s apart) and ends at `now`.
pub fn with_history<R>(snaps: &[&Snapshot], f: impl FnOnce(&CheckContext<'_>, Instant) -> R) -> R {
    let settings = settings();
    let mut history = History::new();
    // Far from the monotonic clock's origin, so uptimes can be subtracted on a fresh machine.
    let start = Instant::now() + Duration::from_secs(24 * 3600);
    let mut now = start;
    for (i, s) in snaps.iter().enumerate() {
        now = start + Duration::from_secs(10 * i as u64);
        history.update(s, now);
    }
    let ctx = CheckContext {
        now,
        settings: &settings,
        history: &history,
    };
    f(&ctx, now)
}
