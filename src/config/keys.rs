//! The settings a flag, `SPA_*` variable or file key can give, each written once: name,
//! default (as text, through the key's parser), help text, parser.

use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::observe::project as p;

pub const ENVOY_ADMIN: Key<AdminUrl> = Key {
    name: "envoy-admin",
    default: Some("http://127.0.0.1:15000"),
    doc: "Envoy admin base URL [default: http://127.0.0.1:15000]",
    parse: parse_admin_url,
};
pub const ALLOW_REMOTE_ADMIN: Key<bool> = Key {
    name: "allow-remote-admin",
    default: Some("false"),
    doc: "Accept a non-loopback --envoy-admin",
    parse: parse_bool,
};
pub const ENVOY_LOG_DIR: Key<PathBuf> = Key {
    name: "envoy-log-dir",
    default: Some("/var/log/envoy"),
    doc: "Directory of Envoy's logs; every *.log in it is read [default: /var/log/envoy]",
    parse: as_path,
};
pub const ENVOY_USER: Key<UserSpec> = Key {
    name: "envoy-user",
    // Found at run time: the owner of the running envoy, else `envoy`.
    default: None,
    doc: "User (name or UID) excluded from interception [default: owner of the running envoy, else envoy]",
    parse: parse_user,
};
pub const INTERCEPTION: Key<InterceptionMode> = Key {
    name: "interception",
    default: Some("verify"),
    doc: "off | verify | enforce [default: verify]",
    parse: parse_enum::<InterceptionMode>,
};
pub const PROXY_PORT: Key<u16> = Key {
    name: "proxy-port",
    // The metadata's proxy-port, else 15001: decided where the metadata is read.
    default: None,
    doc: "Where intercepted traffic is redirected [default: gce-service-proxy proxy-port, else 15001]",
    parse: parse_port,
};
pub const SERVING_PORTS: Key<PortList> = Key {
    name: "serving-ports",
    default: None,
    doc: "Inbound ports to intercept, e.g. 80,8080 [default: gce-service-proxy serving-ports]",
    parse: parse_port_list_arg,
};
pub const POLL_INTERVAL: Key<Duration> = Key {
    name: "poll-interval",
    default: Some("10s"),
    doc: "Admin/iptables/metadata polling period [default: 10s]",
    parse: parse_duration,
};
pub const HEARTBEAT_INTERVAL: Key<Duration> = Key {
    name: "heartbeat-interval",
    default: Some("60s"),
    doc: "agent-heartbeat period [default: 60s]",
    parse: parse_duration,
};
pub const FINDING_TTL: Key<Duration> = Key {
    name: "finding-ttl",
    default: Some("10m"),
    doc: "How long a log-derived finding stays active after its last sighting [default: 10m]",
    parse: parse_duration,
};
pub const METRICS_ADDR: Key<MetricsAddr> = Key {
    name: "metrics-addr",
    default: Some("127.0.0.1:15091"),
    doc: "Prometheus endpoint address, or off [default: 127.0.0.1:15091]",
    parse: parse_metrics_addr,
};
pub const ALLOW_REMOTE_METRICS: Key<bool> = Key {
    name: "allow-remote-metrics",
    default: Some("false"),
    doc: "Accept a non-loopback --metrics-addr",
    parse: parse_bool,
};
pub const LOG_FORMAT: Key<LogFormat> = Key {
    name: "log-format",
    // Decided where the log is set up: json unless stdout is a terminal.
    default: None,
    doc: "json | text [default: json when stdout is not a terminal]",
    parse: parse_enum::<LogFormat>,
};
pub const SERIAL_PORT: Key<PathBuf> = Key {
    name: "serial-port",
    default: None,
    doc: "Mirror the log to this file or serial device, one JSON line per event",
    parse: as_path,
};
pub const CLOUD_LOGGING: Key<CloudLoggingMode> = Key {
    name: "cloud-logging",
    default: Some("auto"),
    doc: "on | off | auto [default: auto]",
    parse: parse_enum::<CloudLoggingMode>,
};
pub const CLOUD_LOGGING_ENDPOINT: Key<String> = Key {
    name: "cloud-logging-endpoint",
    default: Some("https://logging.googleapis.com"),
    doc: "Cloud Logging API base URL [default: https://logging.googleapis.com]",
    parse: parse_endpoint,
};
pub const CONTROL_PLANE: Key<HostPort> = Key {
    name: "control-plane",
    default: Some("trafficdirector.googleapis.com:443"),
    doc: "Target of the control-plane reachability check [default: trafficdirector.googleapis.com:443]",
    parse: parse_host_port,
};
pub const CLOUD_CHECKS: Key<bool> = Key {
    name: "cloud-checks",
    default: Some("on"),
    doc: "on | off: the project-side checks with Google's APIs (docs/contract.md#10-project-side-checks) [default: on]",
    parse: parse_bool,
};
pub const COMPUTE_ENDPOINT: Key<String> = Key {
    name: "compute-endpoint",
    default: Some(p::DEFAULT_COMPUTE),
    doc: "Compute API base URL [default: https://compute.googleapis.com]",
    parse: parse_endpoint,
};
pub const TRAFFICDIRECTOR_ENDPOINT: Key<String> = Key {
    name: "trafficdirector-endpoint",
    default: Some(p::DEFAULT_TRAFFICDIRECTOR),
    doc: "Traffic Director API base URL (CSDS) [default: https://trafficdirector.googleapis.com]",
    parse: parse_endpoint,
};
pub const RESOURCEMANAGER_ENDPOINT: Key<String> = Key {
    name: "resourcemanager-endpoint",
    default: Some(p::DEFAULT_RESOURCEMANAGER),
    doc: "Cloud Resource Manager API base URL [default: https://cloudresourcemanager.googleapis.com]",
    parse: parse_endpoint,
};
pub const SERVICEUSAGE_ENDPOINT: Key<String> = Key {
    name: "serviceusage-endpoint",
    default: Some(p::DEFAULT_SERVICEUSAGE),
    doc: "Service Usage API base URL [default: https://serviceusage.googleapis.com]",
    parse: parse_endpoint,
};

/// Every key, in the flags' order. `--config` is not here: it names the file, it is not in it.
pub const ALL: &[&dyn AnyKey] = &[
    &ENVOY_ADMIN,
    &ALLOW_REMOTE_ADMIN,
    &ENVOY_LOG_DIR,
    &ENVOY_USER,
    &INTERCEPTION,
    &PROXY_PORT,
    &SERVING_PORTS,
    &POLL_INTERVAL,
    &HEARTBEAT_INTERVAL,
    &FINDING_TTL,
    &METRICS_ADDR,
    &ALLOW_REMOTE_METRICS,
    &LOG_FORMAT,
    &SERIAL_PORT,
    &CLOUD_LOGGING,
    &CLOUD_LOGGING_ENDPOINT,
    &CONTROL_PLANE,
    &CLOUD_CHECKS,
    &COMPUTE_ENDPOINT,
    &TRAFFICDIRECTOR_ENDPOINT,
    &RESOURCEMANAGER_ENDPOINT,
    &SERVICEUSAGE_ENDPOINT,
];
