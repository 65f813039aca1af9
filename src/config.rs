//! Resolved settings: flag > `SPA_*` environment > TOML file > default (docs/contract.md#2-command-line).
//!
//! clap gives us "flag or env" as an `Option`; the file fills what is still unset; defaults fill
//! the rest. Every value, wherever it comes from, goes through the same parser so a bad value
//! is reported the same way (naming the flag or file key and what it accepts).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/service-proxy-agent/config.toml";
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid value '{value}' for {source_name}: {expected}")]
    Invalid {
        /// `--poll-interval`, or `poll-interval in /etc/...`.
        source_name: String,
        value: String,
        expected: String,
    },
    #[error("cannot read config file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("config file {path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

/// Envoy admin base URL, `http://host:port`; only plain HTTP (Envoy's admin has no TLS here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUrl {
    pub host: String,
    pub port: u16,
}

impl AdminUrl {
    /// Loopback means an IP in 127.0.0.0/8 or ::1, or the name `localhost`.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// `host:port` for a TCP connect and a Host header.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for AdminUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}", self.host, self.port)
    }
}

pub fn parse_admin_url(s: &str) -> Result<AdminUrl, String> {
    const EXPECTED: &str = "expected http://HOST:PORT, e.g. http://127.0.0.1:15000";
    let rest = s.strip_prefix("http://").ok_or(EXPECTED)?;
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(EXPECTED.into());
    }
    let (host, port) = split_host_port(rest).ok_or(EXPECTED)?;
    Ok(AdminUrl { host, port })
}

/// `HOST:PORT` (IPv6 in brackets). The host is a DNS name or an IP; nothing else.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let valid_host = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    };
    valid_host.then(|| (host.to_owned(), port))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

pub fn parse_host_port(s: &str) -> Result<HostPort, String> {
    split_host_port(s)
        .map(|(host, port)| HostPort { host, port })
        .ok_or_else(|| "expected HOST:PORT, e.g. trafficdirector.googleapis.com:443".into())
}

/// Longest duration accepted anywhere: the loop adds and multiplies durations, and a value
/// near the clock's range (`300000000000y`) would overflow it.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|_| "expected a duration such as 10s, 1m30s or 500ms".to_owned())?;
    if d.is_zero() {
        return Err("expected a duration greater than zero, such as 10s".into());
    }
    if d > MAX_DURATION {
        return Err("expected a duration of at most 7 days, such as 10s".into());
    }
    Ok(d)
}

pub fn parse_port(s: &str) -> Result<u16, String> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| "expected a TCP port from 1 to 65535".into())
}

/// A port list as one flag value. A newtype so clap does not read `Vec` as "the flag takes
/// several values".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

pub fn parse_port_list_arg(s: &str) -> Result<PortList, String> {
    parse_port_list(s).map(PortList)
}

/// `80,8080` or `80;8080` (gcloud's form); ports 1–65535, duplicates removed, order kept.
pub fn parse_port_list(s: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for part in s.split([',', ';']).map(str::trim).filter(|p| !p.is_empty()) {
        let port = parse_port(part)
            .map_err(|_| "expected a list of TCP ports 1-65535, e.g. 80,8080".to_owned())?;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// The Envoy user as given: a numeric UID or a user name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSpec {
    Uid(u32),
    Name(String),
}

pub fn parse_user(s: &str) -> Result<UserSpec, String> {
    const EXPECTED: &str = "expected a user name or a numeric UID, e.g. envoy or 1337";
    if let Ok(uid) = s.parse::<u32>() {
        return Ok(UserSpec::Uid(uid));
    }
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase()
                || b == b'_'
                || (i > 0 && (b.is_ascii_digit() || b == b'-' || b.is_ascii_uppercase()))
                || (i > 0 && i == s.len() - 1 && b == b'$')
        });
    if ok {
        Ok(UserSpec::Name(s.to_owned()))
    } else {
        Err(EXPECTED.into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InterceptionMode {
    Off,
    Verify,
    Enforce,
}

impl Named for InterceptionMode {
    const ALL: &'static [Self] = &[Self::Off, Self::Verify, Self::Enforce];
    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl InterceptionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            InterceptionMode::Off => "off",
            InterceptionMode::Verify => "verify",
            InterceptionMode::Enforce => "enforce",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl Named for LogFormat {
    const ALL: &'static [Self] = &[Self::Json, Self::Text];
    fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Text => "text",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudLoggingMode {
    On,
    Off,
    Auto,
}

impl Named for CloudLoggingMode {
    const ALL: &'static [Self] = &[Self::On, Self::Off, Self::Auto];
    fn name(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
            Self::Auto => "auto",
        }
    }
}

/// `off` (`None`), or a socket address. A newtype so clap does not read `Option<Option<_>>`
/// as "flag with an optional value".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

/// `off`, or a socket address; non-loopback only with `--allow-remote-metrics`.
pub fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(MetricsAddr(None));
    }
    s.parse::<SocketAddr>()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(|_| "expected off or IP:PORT, e.g. 127.0.0.1:15091".into())
}

/// A setting with a closed set of values, each with its one name in flags, env and the file.
pub trait Named: Copy + 'static {
    const ALL: &'static [Self];
    fn name(self) -> &'static str;
}

/// One of `T`'s names, in any case (as the flags always accepted).
pub fn parse_enum<T: Named>(s: &str) -> Result<T, String> {
    T::ALL
        .iter()
        .copied()
        .find(|v| v.name().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            let names: Vec<&str> = T::ALL.iter().map(|v| v.name()).collect();
            format!("expected one of {}", names.join(", "))
        })
}

pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// What the command line and environment gave (`None` = not given). The flags' clap form, with
/// their help, is `cmd::common::CommonFlags`; this plain form is what the library resolves and
/// what the daemon keeps to resolve again on SIGHUP.
#[derive(Debug, Clone, Default)]
pub struct CommonArgs {
    /// TOML file with the same keys as the flags [default: /etc/service-proxy-agent/config.toml when it exists]
    pub config: Option<PathBuf>,

    /// Envoy admin base URL [default: http://127.0.0.1:15000]
    pub envoy_admin: Option<AdminUrl>,

    /// Accept a non-loopback --envoy-admin
    pub allow_remote_admin: Option<bool>,

    /// Directory of Envoy's logs; every *.log in it is read [default: /var/log/envoy]
    pub envoy_log_dir: Option<PathBuf>,

    /// User (name or UID) excluded from interception [default: owner of the running envoy, else envoy]
    pub envoy_user: Option<UserSpec>,

    /// off | verify | enforce [default: verify]
    pub interception: Option<InterceptionMode>,

    /// Where intercepted traffic is redirected [default: gce-service-proxy proxy-port, else 15001]
    pub proxy_port: Option<u16>,

    /// Inbound ports to intercept, e.g. 80,8080 [default: gce-service-proxy serving-ports]
    pub serving_ports: Option<PortList>,

    /// Admin/iptables/metadata polling period [default: 10s]
    pub poll_interval: Option<Duration>,

    /// agent-heartbeat period [default: 60s]
    pub heartbeat_interval: Option<Duration>,

    /// How long a log-derived finding stays active after its last sighting [default: 10m]
    pub finding_ttl: Option<Duration>,

    /// Prometheus endpoint address, or off [default: 127.0.0.1:15091]
    pub metrics_addr: Option<MetricsAddr>,

    /// Accept a non-loopback --metrics-addr
    pub allow_remote_metrics: Option<bool>,

    /// json | text [default: json when stdout is not a terminal]
    pub log_format: Option<LogFormat>,

    /// Mirror the log to this file or serial device, one JSON line per event
    pub serial_port: Option<PathBuf>,

    /// on | off | auto [default: auto]
    pub cloud_logging: Option<CloudLoggingMode>,

    /// Cloud Logging API base URL [default: https://logging.googleapis.com]
    pub cloud_logging_endpoint: Option<String>,

    /// Target of the control-plane reachability check [default: trafficdirector.googleapis.com:443]
    pub control_plane: Option<HostPort>,

    /// on | off: the project-side checks with Google's APIs (docs/contract.md#10-project-side-checks) [default: on]
    pub cloud_checks: Option<bool>,

    /// Compute API base URL [default: https://compute.googleapis.com]
    pub compute_endpoint: Option<String>,

    /// Traffic Director API base URL (CSDS) [default: https://trafficdirector.googleapis.com]
    pub trafficdirector_endpoint: Option<String>,

    /// Cloud Resource Manager API base URL [default: https://cloudresourcemanager.googleapis.com]
    pub resourcemanager_endpoint: Option<String>,

    /// Service Usage API base URL [default: https://serviceusage.googleapis.com]
    pub serviceusage_endpoint: Option<String>,
}

pub fn parse_endpoint(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or("expected an http:// or https:// URL")?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', '@', '?', '#', ' ']) {
        return Err("expected a base URL such as https://logging.googleapis.com".into());
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// The TOML file: the flags' names as keys. Unknown keys are an error, so a typo is not
/// silently ignored on a fleet.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    envoy_admin: Option<toml::Value>,
    allow_remote_admin: Option<toml::Value>,
    envoy_log_dir: Option<toml::Value>,
    envoy_user: Option<toml::Value>,
    interception: Option<toml::Value>,
    proxy_port: Option<toml::Value>,
    serving_ports: Option<toml::Value>,
    poll_interval: Option<toml::Value>,
    heartbeat_interval: Option<toml::Value>,
    finding_ttl: Option<toml::Value>,
    metrics_addr: Option<toml::Value>,
    allow_remote_metrics: Option<toml::Value>,
    log_format: Option<toml::Value>,
    serial_port: Option<toml::Value>,
    cloud_logging: Option<toml::Value>,
    cloud_logging_endpoint: Option<toml::Value>,
    control_plane: Option<toml::Value>,
    cloud_checks: Option<toml::Value>,
    compute_endpoint: Option<toml::Value>,
    trafficdirector_endpoint: Option<toml::Value>,
    resourcemanager_endpoint: Option<toml::Value>,
    serviceusage_endpoint: Option<toml::Value>,
    /// File only (a list of tables has no flag form): see `diagnose::silence`.
    ignore_findings: Option<toml::Value>,
}

/// A TOML scalar or list as the text a flag would have held.
fn toml_as_flag_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Array(items) => items
            .iter()
            .map(toml_as_flag_text)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// Everything the agent needs to know about how it was configured, fully resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub config_path: Option<PathBuf>,
    pub envoy_admin: AdminUrl,
    pub envoy_log_dir: PathBuf,
    pub envoy_user: Option<UserSpec>,
    pub interception: InterceptionMode,
    pub proxy_port: Option<u16>,
    pub serving_ports: Option<Vec<u16>>,
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    pub finding_ttl: Duration,
    pub metrics_addr: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub serial_port: Option<PathBuf>,
    pub cloud_logging: CloudLoggingMode,
    pub cloud_logging_endpoint: String,
    pub control_plane: HostPort,
    /// `host[:port]` of the metadata server (`GCE_METADATA_HOST`, as Google's libraries do).
    pub metadata_host: String,
    /// `--cloud-checks` (docs/contract.md#10-project-side-checks).
    pub cloud_checks: bool,
    pub api_endpoints: crate::observe::project::ApiEndpoints,
    /// The config file's `ignore-findings`.
    pub ignore_findings: Vec<crate::diagnose::silence::IgnoreRule>,
}

impl Settings {
    /// Resolve from clap's values, reading the config file (explicit, or the default path
    /// when it exists). `env` looks up non-flag environment (`GCE_METADATA_HOST`).
    pub fn resolve(
        args: &CommonArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let (config_path, file) = match &args.config {
            Some(p) => (Some(p.clone()), Some(read_file(p)?)),
            None => {
                let p = Path::new(DEFAULT_CONFIG_PATH);
                if p.exists() {
                    (Some(p.to_path_buf()), Some(read_file(p)?))
                } else {
                    (None, None)
                }
            }
        };
        let file = file.unwrap_or_default();
        let from_file = |key: &str, v: &Option<toml::Value>| -> Option<(String, String)> {
            v.as_ref().map(|v| {
                let name = match &config_path {
                    Some(p) => format!("{key} in {}", p.display()),
                    None => key.to_owned(),
                };
                (name, toml_as_flag_text(v))
            })
        };
        // The flag/env value, else the file's (parsed with the flag's own parser).
        macro_rules! pick {
            ($field:ident, $key:literal, $parse:expr) => {{
                match (&args.$field, from_file($key, &file.$field)) {
                    (Some(v), _) => Some(v.clone()),
                    (None, Some((name, text))) => {
                        Some(($parse)(text.as_str()).map_err(|expected: String| {
                            ConfigError::Invalid {
                                source_name: name,
                                value: text.clone(),
                                expected,
                            }
                        })?)
                    }
                    (None, None) => None,
                }
            }};
        }
        let as_path = |s: &str| -> Result<PathBuf, String> {
            if s.is_empty() {
                Err("expected a path".into())
            } else {
                Ok(PathBuf::from(s))
            }
        };

        let envoy_admin = pick!(envoy_admin, "envoy-admin", parse_admin_url).unwrap_or(AdminUrl {
            host: "127.0.0.1".into(),
            port: 15000,
        });
        let allow_remote_admin =
            pick!(allow_remote_admin, "allow-remote-admin", parse_bool).unwrap_or(false);
        if !allow_remote_admin && !envoy_admin.is_loopback() {
            return Err(ConfigError::Invalid {
                source_name: "--envoy-admin".into(),
                value: envoy_admin.to_string(),
                expected: "expected a loopback address (127.0.0.0/8, ::1, localhost); add --allow-remote-admin to accept another".into(),
            });
        }
        let metrics_addr = pick!(metrics_addr, "metrics-addr", parse_metrics_addr)
            .map_or(Some(SocketAddr::from(([127, 0, 0, 1], 15091))), |m| m.0);
        let allow_remote_metrics =
            pick!(allow_remote_metrics, "allow-remote-metrics", parse_bool).unwrap_or(false);
        if let Some(addr) = metrics_addr
            && !allow_remote_metrics
            && !addr.ip().is_loopback()
        {
            return Err(ConfigError::Invalid {
                source_name: "--metrics-addr".into(),
                value: addr.to_string(),
                expected: "expected off or a loopback address such as 127.0.0.1:15091; add --allow-remote-metrics to accept another".into(),
            });
        }

        let ignore_findings = ignore_findings_of(&file, config_path.as_deref())?;
        Ok(Settings {
            ignore_findings,
            envoy_admin,
            envoy_log_dir: pick!(envoy_log_dir, "envoy-log-dir", as_path)
                .unwrap_or_else(|| PathBuf::from("/var/log/envoy")),
            envoy_user: pick!(envoy_user, "envoy-user", parse_user),
            interception: pick!(interception, "interception", parse_enum::<InterceptionMode>)
                .unwrap_or(InterceptionMode::Verify),
            proxy_port: pick!(proxy_port, "proxy-port", parse_port),
            serving_ports: pick!(serving_ports, "serving-ports", parse_port_list_arg).map(|p| p.0),
            poll_interval: pick!(poll_interval, "poll-interval", parse_duration)
                .unwrap_or(Duration::from_secs(10)),
            heartbeat_interval: pick!(heartbeat_interval, "heartbeat-interval", parse_duration)
                .unwrap_or(Duration::from_secs(60)),
            finding_ttl: pick!(finding_ttl, "finding-ttl", parse_duration)
                .unwrap_or(Duration::from_secs(600)),
            metrics_addr,
            log_format: pick!(log_format, "log-format", parse_enum::<LogFormat>),
            serial_port: pick!(serial_port, "serial-port", as_path),
            cloud_logging: pick!(
                cloud_logging,
                "cloud-logging",
                parse_enum::<CloudLoggingMode>
            )
            .unwrap_or(CloudLoggingMode::Auto),
            cloud_logging_endpoint: pick!(
                cloud_logging_endpoint,
                "cloud-logging-endpoint",
                parse_endpoint
            )
            .unwrap_or_else(|| "https://logging.googleapis.com".to_owned()),
            control_plane: pick!(control_plane, "control-plane", parse_host_port).unwrap_or(
                HostPort {
                    host: "trafficdirector.googleapis.com".into(),
                    port: 443,
                },
            ),
            cloud_checks: pick!(cloud_checks, "cloud-checks", parse_bool).unwrap_or(true),
            api_endpoints: {
                use crate::observe::project as p;
                p::ApiEndpoints {
                    compute: pick!(compute_endpoint, "compute-endpoint", parse_endpoint)
                        .unwrap_or_else(|| p::DEFAULT_COMPUTE.to_owned()),
                    trafficdirector: pick!(
                        trafficdirector_endpoint,
                        "trafficdirector-endpoint",
                        parse_endpoint
                    )
                    .unwrap_or_else(|| p::DEFAULT_TRAFFICDIRECTOR.to_owned()),
                    resourcemanager: pick!(
                        resourcemanager_endpoint,
                        "resourcemanager-endpoint",
                        parse_endpoint
                    )
                    .unwrap_or_else(|| p::DEFAULT_RESOURCEMANAGER.to_owned()),
                    serviceusage: pick!(
                        serviceusage_endpoint,
                        "serviceusage-endpoint",
                        parse_endpoint
                    )
                    .unwrap_or_else(|| p::DEFAULT_SERVICEUSAGE.to_owned()),
                }
            },
            metadata_host: env("GCE_METADATA_HOST")
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| DEFAULT_METADATA_HOST.to_owned()),
            config_path,
        })
    }
}

/// The file's `ignore-findings`, strictly: an entry the agent cannot use is an error at start
/// (and on SIGHUP), naming it, rather than a silencing that quietly does not happen.
fn ignore_findings_of(
    file: &FileConfig,
    path: Option<&Path>,
) -> Result<Vec<crate::diagnose::silence::IgnoreRule>, ConfigError> {
    use crate::diagnose::silence;
    let Some(v) = &file.ignore_findings else {
        return Ok(Vec::new());
    };
    let (rules, problems) =
        silence::parse_rules(&silence::toml_to_json(v), silence::RuleSource::ConfigFile);
    match problems.first() {
        None => Ok(rules),
        Some(p) => Err(ConfigError::Malformed {
            path: path.map(Path::to_path_buf).unwrap_or_default(),
            reason: p.clone(),
        }),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let unreadable = |e: std::io::Error| ConfigError::Unreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    // O_NONBLOCK: a FIFO in its place must not hang the loop on SIGHUP; only a regular file
    // or a character device (`--config /dev/null`: no file) is read, checked on the
    // descriptor, and never more than MAX_BYTES.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)
            .map_err(unreadable)?
    };
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() && !std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()) {
        return Err(ConfigError::Unreadable {
            path: path.to_owned(),
            reason: "not a regular file".into(),
        });
    }
    // A config file is a handful of lines; refuse anything absurd rather than read it.
    const MAX_BYTES: u64 = 1024 * 1024;
    if meta.len() > MAX_BYTES {
        return Err(ConfigError::Malformed {
            path: path.to_owned(),
            reason: format!("{} bytes is too large for a config file", meta.len()),
        });
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_BYTES), &mut text)
        .map_err(unreadable)?;
    parse_file(&text).map_err(|reason| ConfigError::Malformed {
        path: path.to_owned(),
        reason,
    })
}

fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str::<FileConfig>(text).map_err(|e| {
        // toml's messages span several lines with a source excerpt; keep the first line.
        let msg = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_owned();
        match e.span() {
            Some(span) => {
                let line = text
                    .get(..span.start)
                    .map_or(0, |p| p.lines().count().max(1));
                format!("line {line}: {msg}")
            }
            None => msg,
        }
    })
}

/// Checks that a TOML text is a valid config file (used by the fuzz target and SIGHUP path).
pub fn validate_file_text(text: &str) -> Result<(), String> {
    let file = parse_file(text)?;
    ignore_findings_of(&file, None)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Write;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        c: crate::cmd::common::CommonFlags,
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn args(a: &[&str]) -> CommonArgs {
        T::try_parse_from(std::iter::once("t").chain(a.iter().copied()))
            .unwrap()
            .c
            .into_args()
    }

    fn with_file(
        a: &[&str],
        toml: &str,
    ) -> (tempfile::NamedTempFile, Result<Settings, ConfigError>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(toml.as_bytes()).unwrap();
        let path = f.path().to_str().unwrap().to_owned();
        let mut v: Vec<&str> = a.to_vec();
        v.push("--config");
        v.push(&path);
        let r = Settings::resolve(&args(&v), no_env);
        (f, r)
    }

    #[test]
    fn defaults() {
        let s = Settings::resolve(&args(&[]), no_env).unwrap();
        assert_eq!(s.envoy_admin.to_string(), "http://127.0.0.1:15000");
        assert_eq!(s.poll_interval, Duration::from_secs(10));
        assert_eq!(s.heartbeat_interval, Duration::from_secs(60));
        assert_eq!(s.finding_ttl, Duration::from_secs(600));
        assert_eq!(s.interception, InterceptionMode::Verify);
        assert_eq!(s.metrics_addr, Some("127.0.0.1:15091".parse().unwrap()));
        assert_eq!(
            s.control_plane.to_string(),
            "trafficdirector.googleapis.com:443"
        );
        assert_eq!(s.metadata_host, "metadata.google.internal");
        assert_eq!(s.cloud_logging, CloudLoggingMode::Auto);
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let (_f, s) = with_file(
            &["--poll-interval", "3s"],
            "poll-interval = \"7s\"\nheartbeat-interval = \"2m\"\nserving-ports = [80, 8080]\nproxy-port = 15002\n",
        );
        let s = s.unwrap();
        assert_eq!(s.poll_interval, Duration::from_secs(3));
        assert_eq!(s.heartbeat_interval, Duration::from_secs(120));
        assert_eq!(s.serving_ports, Some(vec![80, 8080]));
        assert_eq!(s.proxy_port, Some(15002));
        assert_eq!(s.finding_ttl, Duration::from_secs(600));
    }

    #[test]
    fn bad_file_value_names_key_and_file() {
        let (f, s) = with_file(&[], "poll-interval = \"soon\"\n");
        let msg = s.unwrap_err().to_string();
        assert!(msg.contains("poll-interval in"), "{msg}");
        assert!(msg.contains(f.path().to_str().unwrap()), "{msg}");
        assert!(msg.contains("expected a duration"), "{msg}");
    }

    #[test]
    fn serving_ports_flag_is_one_value() {
        let s = Settings::resolve(&args(&["--serving-ports", "80,8080"]), no_env).unwrap();
        assert_eq!(s.serving_ports, Some(vec![80, 8080]));
        let s = Settings::resolve(&args(&["--serving-ports", "443;8443"]), no_env).unwrap();
        assert_eq!(s.serving_ports, Some(vec![443, 8443]));
    }

    #[test]
    fn ignore_findings_from_the_file_strictly() {
        let (_f, s) = with_file(
            &[],
            "[[ignore-findings]]\nid = \"SERVER_FIRST_PROTOCOL\"\nreason = \"MySQL\"\nuntil = 2027-01-31T00:00:00Z\n",
        );
        let s = s.unwrap();
        assert_eq!(s.ignore_findings.len(), 1);
        assert_eq!(
            s.ignore_findings[0].id,
            crate::finding::FindingId::ServerFirstProtocol
        );
        let bad = "[[ignore-findings]]\nid = \"SERVER_FIRST_PROTOCOL\"\nuntil = \"2027-01-31T00:00:00Z\"\n";
        let (f, s) = with_file(&[], bad);
        let msg = s.unwrap_err().to_string();
        assert!(
            msg.contains("ignore-findings[0]: reason is missing"),
            "{msg}"
        );
        assert!(msg.contains(f.path().to_str().unwrap()), "{msg}");
        assert!(validate_file_text(bad).is_err());
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        let (_f, s) = with_file(&[], "pol-interval = \"10s\"\n");
        assert!(matches!(s, Err(ConfigError::Malformed { .. })));
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let s = Settings::resolve(&args(&["--config", "/nonexistent/spa.toml"]), no_env);
        assert!(matches!(s, Err(ConfigError::Unreadable { .. })));
    }

    #[test]
    fn remote_admin_needs_permission() {
        let e = Settings::resolve(&args(&["--envoy-admin", "http://10.0.0.1:15000"]), no_env)
            .unwrap_err();
        assert!(e.to_string().contains("--allow-remote-admin"), "{e}");
        let s = Settings::resolve(
            &args(&[
                "--envoy-admin",
                "http://10.0.0.1:15000",
                "--allow-remote-admin",
            ]),
            no_env,
        )
        .unwrap();
        assert_eq!(s.envoy_admin.host, "10.0.0.1");
        for ok in [
            "http://localhost:1",
            "http://127.0.0.2:9",
            "http://[::1]:15000",
        ] {
            assert!(
                Settings::resolve(&args(&["--envoy-admin", ok]), no_env).is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn remote_metrics_needs_permission() {
        assert!(Settings::resolve(&args(&["--metrics-addr", "0.0.0.0:9"]), no_env).is_err());
        let s = Settings::resolve(&args(&["--metrics-addr", "off"]), no_env).unwrap();
        assert_eq!(s.metrics_addr, None);
    }

    #[test]
    fn parsers_reject_hostile_text() {
        assert!(parse_admin_url("http://127.0.0.1:15000/x").is_err());
        assert!(parse_admin_url("http://user@127.0.0.1:1").is_err());
        assert!(parse_admin_url("https://127.0.0.1:1").is_err());
        assert!(parse_host_port("a b:443").is_err());
        assert!(parse_host_port("host:0").is_err());
        assert_eq!(parse_port_list("80;8080,80").unwrap(), vec![80, 8080]);
        assert!(parse_port_list("80,70000").is_err());
        assert!(parse_user("root; rm -rf /").is_err());
        assert_eq!(parse_user("1337").unwrap(), UserSpec::Uid(1337));
        assert_eq!(parse_user("envoy").unwrap(), UserSpec::Name("envoy".into()));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        // Beyond the clock's arithmetic: refused, not an overflow later (issue 15 item 14).
        assert!(parse_duration("300000000000y").is_err());
        assert_eq!(parse_duration("7d").unwrap(), MAX_DURATION);
    }

    #[test]
    fn metadata_host_from_env() {
        let s = Settings::resolve(&args(&[]), |k| {
            (k == "GCE_METADATA_HOST").then(|| "127.0.0.1:8080".to_owned())
        })
        .unwrap();
        assert_eq!(s.metadata_host, "127.0.0.1:8080");
    }
}
