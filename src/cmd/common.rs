//! The global flags: every command takes them (`global = true`), and every one can also come from
//! `SPA_*` environment or the config file. Their help is the CLI surface
//! (docs/contract.md#2-command-line); what they resolve to is `config`'s business.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{
    self, AdminUrl, CloudLoggingMode, CommonArgs, HostPort, InterceptionMode, LogFormat,
    MetricsAddr, PortList, UserSpec,
};

// What the command line and environment gave (clap fills this; `None` = not given).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonFlags {
    /// TOML file with the same keys as the flags [default: /etc/service-proxy-agent/config.toml when it exists]
    #[arg(long, global = true, env = "SPA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Envoy admin base URL [default: http://127.0.0.1:15000]
    #[arg(long, global = true, env = "SPA_ENVOY_ADMIN", value_name = "URL", value_parser = config::parse_admin_url)]
    pub envoy_admin: Option<AdminUrl>,

    /// Accept a non-loopback --envoy-admin
    #[arg(long, global = true, env = "SPA_ALLOW_REMOTE_ADMIN", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = config::parse_bool)]
    pub allow_remote_admin: Option<bool>,

    /// Directory of Envoy's logs; every *.log in it is read [default: /var/log/envoy]
    #[arg(long, global = true, env = "SPA_ENVOY_LOG_DIR", value_name = "DIR")]
    pub envoy_log_dir: Option<PathBuf>,

    /// User (name or UID) excluded from interception [default: owner of the running envoy, else envoy]
    #[arg(long, global = true, env = "SPA_ENVOY_USER", value_name = "NAME|UID", value_parser = config::parse_user)]
    pub envoy_user: Option<UserSpec>,

    /// off | verify | enforce [default: verify]
    #[arg(long, global = true, env = "SPA_INTERCEPTION", value_name = "MODE", value_parser = config::parse_enum::<InterceptionMode>)]
    pub interception: Option<InterceptionMode>,

    /// Where intercepted traffic is redirected [default: gce-service-proxy proxy-port, else 15001]
    #[arg(long, global = true, env = "SPA_PROXY_PORT", value_name = "N", value_parser = config::parse_port)]
    pub proxy_port: Option<u16>,

    /// Inbound ports to intercept, e.g. 80,8080 [default: gce-service-proxy serving-ports]
    #[arg(long, global = true, env = "SPA_SERVING_PORTS", value_name = "LIST", value_parser = config::parse_port_list_arg)]
    pub serving_ports: Option<PortList>,

    /// Admin/iptables/metadata polling period [default: 10s]
    #[arg(long, global = true, env = "SPA_POLL_INTERVAL", value_name = "DURATION", value_parser = config::parse_duration)]
    pub poll_interval: Option<Duration>,

    /// agent-heartbeat period [default: 60s]
    #[arg(long, global = true, env = "SPA_HEARTBEAT_INTERVAL", value_name = "DURATION", value_parser = config::parse_duration)]
    pub heartbeat_interval: Option<Duration>,

    /// How long a log-derived finding stays active after its last sighting [default: 10m]
    #[arg(long, global = true, env = "SPA_FINDING_TTL", value_name = "DURATION", value_parser = config::parse_duration)]
    pub finding_ttl: Option<Duration>,

    /// Prometheus endpoint address, or off [default: 127.0.0.1:15091]
    #[arg(long, global = true, env = "SPA_METRICS_ADDR", value_name = "ADDR", value_parser = config::parse_metrics_addr)]
    pub metrics_addr: Option<MetricsAddr>,

    /// Accept a non-loopback --metrics-addr
    #[arg(long, global = true, env = "SPA_ALLOW_REMOTE_METRICS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = config::parse_bool)]
    pub allow_remote_metrics: Option<bool>,

    /// json | text [default: json when stdout is not a terminal]
    #[arg(long, global = true, env = "SPA_LOG_FORMAT", value_name = "FORMAT", value_parser = config::parse_enum::<LogFormat>)]
    pub log_format: Option<LogFormat>,

    /// Mirror the log to this file or serial device, one JSON line per event
    #[arg(long, global = true, env = "SPA_SERIAL_PORT", value_name = "PATH")]
    pub serial_port: Option<PathBuf>,

    /// on | off | auto [default: auto]
    #[arg(long, global = true, env = "SPA_CLOUD_LOGGING", value_name = "MODE", value_parser = config::parse_enum::<CloudLoggingMode>)]
    pub cloud_logging: Option<CloudLoggingMode>,

    /// Cloud Logging API base URL [default: https://logging.googleapis.com]
    #[arg(long, global = true, env = "SPA_CLOUD_LOGGING_ENDPOINT", value_name = "URL", value_parser = config::parse_endpoint)]
    pub cloud_logging_endpoint: Option<String>,

    /// Target of the control-plane reachability check [default: trafficdirector.googleapis.com:443]
    #[arg(long, global = true, env = "SPA_CONTROL_PLANE", value_name = "HOST:PORT", value_parser = config::parse_host_port)]
    pub control_plane: Option<HostPort>,

    /// on | off: the project-side checks with Google's APIs (docs/contract.md#10-project-side-checks) [default: on]
    #[arg(long, global = true, env = "SPA_CLOUD_CHECKS", value_name = "on|off", value_parser = config::parse_bool)]
    pub cloud_checks: Option<bool>,

    /// Compute API base URL [default: https://compute.googleapis.com]
    #[arg(long, global = true, env = "SPA_COMPUTE_ENDPOINT", value_name = "URL", value_parser = config::parse_endpoint)]
    pub compute_endpoint: Option<String>,

    /// Traffic Director API base URL (CSDS) [default: https://trafficdirector.googleapis.com]
    #[arg(long, global = true, env = "SPA_TRAFFICDIRECTOR_ENDPOINT", value_name = "URL", value_parser = config::parse_endpoint)]
    pub trafficdirector_endpoint: Option<String>,

    /// Cloud Resource Manager API base URL [default: https://cloudresourcemanager.googleapis.com]
    #[arg(long, global = true, env = "SPA_RESOURCEMANAGER_ENDPOINT", value_name = "URL", value_parser = config::parse_endpoint)]
    pub resourcemanager_endpoint: Option<String>,

    /// Service Usage API base URL [default: https://serviceusage.googleapis.com]
    #[arg(long, global = true, env = "SPA_SERVICEUSAGE_ENDPOINT", value_name = "URL", value_parser = config::parse_endpoint)]
    pub serviceusage_endpoint: Option<String>,
}

impl CommonFlags {
    /// The plain values the library resolves (`config::Settings::resolve`).
    pub fn into_args(self) -> CommonArgs {
        let CommonFlags {
            config,
            envoy_admin,
            allow_remote_admin,
            envoy_log_dir,
            envoy_user,
            interception,
            proxy_port,
            serving_ports,
            poll_interval,
            heartbeat_interval,
            finding_ttl,
            metrics_addr,
            allow_remote_metrics,
            log_format,
            serial_port,
            cloud_logging,
            cloud_logging_endpoint,
            control_plane,
            cloud_checks,
            compute_endpoint,
            trafficdirector_endpoint,
            resourcemanager_endpoint,
            serviceusage_endpoint,
        } = self;
        CommonArgs {
            config,
            envoy_admin,
            allow_remote_admin,
            envoy_log_dir,
            envoy_user,
            interception,
            proxy_port,
            serving_ports,
            poll_interval,
            heartbeat_interval,
            finding_ttl,
            metrics_addr,
            allow_remote_metrics,
            log_format,
            serial_port,
            cloud_logging,
            cloud_logging_endpoint,
            control_plane,
            cloud_checks,
            compute_endpoint,
            trafficdirector_endpoint,
            resourcemanager_endpoint,
            serviceusage_endpoint,
        }
    }
}
