//! Resolved settings: flag > `SPA_*` environment > TOML file > default (docs/contract.md#2-command-line).
//!
//! clap gives us "flag or env" as an `Option`; the file fills what is still unset; defaults fill
//! the rest. Every value, wherever it comes from, goes through the same parser so a bad value
//! is reported the same way (naming the flag or file key and what it accepts).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

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

    /// Cloud Logging API base URL [default: <https://logging.googleapis.com>]
    pub cloud_logging_endpoint: Option<String>,

    /// Target of the control-plane reachability check [default: trafficdirector.googleapis.com:443]
    pub control_plane: Option<HostPort>,

    /// on | off: the project-side checks with Google's APIs (docs/contract.md#10-project-side-checks) [default: on]
    pub cloud_checks: Option<bool>,

    /// Compute API base URL [default: <https://compute.googleapis.com>]
    pub compute_endpoint: Option<String>,

    /// Traffic Director API base URL (CSDS) [default: <https://trafficdirector.googleapis.com>]
    pub trafficdirector_endpoint: Option<String>,

    /// Cloud Resource Manager API base URL [default: <https://cloudresourcemanager.googleapis.com>]
    pub resourcemanager_endpoint: Option<String>,

    /// Service Usage API base URL [default: <https://serviceusage.googleapis.com>]
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

/// One setting: `name` is the flag without `--` and the file's key (the environment variable is
/// `SPA_` and the name in upper snake case, clap's `env`); `default` is text given to `parse`, so
/// a default obeys the rules a user's value does; `doc` is the flag's help (a unit test in
/// `cmd::common` holds the two equal).
pub struct Key<T: 'static> {
    pub name: &'static str,
    pub default: Option<&'static str>,
    pub doc: &'static str,
    pub parse: fn(&str) -> Result<T, String>,
}

/// A `Key` of any type, for the table.
pub trait AnyKey: Sync {
    fn name(&self) -> &'static str;
    fn default(&self) -> Option<&'static str>;
    fn doc(&self) -> &'static str;
    /// `parse`, keeping only whether the text is valid.
    fn check(&self, text: &str) -> Result<(), String>;
}

impl<T> AnyKey for Key<T> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn default(&self) -> Option<&'static str> {
        self.default
    }
    fn doc(&self) -> &'static str {
        self.doc
    }
    fn check(&self, text: &str) -> Result<(), String> {
        (self.parse)(text).map(|_| ())
    }
}

fn as_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        Err("expected a path".into())
    } else {
        Ok(PathBuf::from(s))
    }
}

pub mod keys;

/// The file's only key that is not a flag (a list of tables has no flag form): see
/// `diagnose::silence`.
const IGNORE_FINDINGS: &str = "ignore-findings";

/// A config file's text and where it came from (for messages). Read at the edge
/// (`read_config_file`); everything after works on the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub text: String,
}

/// The parsed file: the keys of `keys::ALL` plus `ignore-findings`. Unknown keys are an error,
/// so a typo is not silently ignored on a fleet.
#[derive(Debug, Default)]
struct FileTable(toml::Table);

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
    /// The edge: read the config file (explicit, or the default path when it exists), then
    /// resolve. `env` looks up non-flag environment (`GCE_METADATA_HOST`).
    pub fn resolve(
        args: &CommonArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let file = match &args.config {
            Some(p) => Some(read_config_file(p)?),
            None => {
                let p = Path::new(DEFAULT_CONFIG_PATH);
                if p.exists() {
                    Some(read_config_file(p)?)
                } else {
                    None
                }
            }
        };
        Settings::from_sources(args, file.as_ref(), env)
    }

    /// Resolve from what was passed in: flag/env values, the file's text, the environment.
    /// No I/O: each value is the flag's (or `SPA_*`'s), else the file's, else the key's default,
    /// and the file's and the default's text go through the key's own parser.
    pub fn from_sources(
        args: &CommonArgs,
        file: Option<&ConfigFile>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let config_path = file.map(|f| f.path.clone());
        let table = match file {
            Some(f) => parse_file(&f.text).map_err(|reason| ConfigError::Malformed {
                path: f.path.clone(),
                reason,
            })?,
            None => FileTable::default(),
        };
        macro_rules! pick {
            ($field:ident, $key:expr) => {
                value(&$key, &args.$field, &table, config_path.as_deref())?
            };
        }

        let envoy_admin = pick!(envoy_admin, keys::ENVOY_ADMIN);
        let allow_remote_admin = pick!(allow_remote_admin, keys::ALLOW_REMOTE_ADMIN);
        if let Some(admin) = &envoy_admin
            && allow_remote_admin != Some(true)
            && !admin.is_loopback()
        {
            return Err(ConfigError::Invalid {
                source_name: "--envoy-admin".into(),
                value: admin.to_string(),
                expected: "expected a loopback address (127.0.0.0/8, ::1, localhost); add --allow-remote-admin to accept another".into(),
            });
        }
        let metrics_addr = pick!(metrics_addr, keys::METRICS_ADDR).and_then(|m| m.0);
        let allow_remote_metrics = pick!(allow_remote_metrics, keys::ALLOW_REMOTE_METRICS);
        if let Some(addr) = metrics_addr
            && allow_remote_metrics != Some(true)
            && !addr.ip().is_loopback()
        {
            return Err(ConfigError::Invalid {
                source_name: "--metrics-addr".into(),
                value: addr.to_string(),
                expected: "expected off or a loopback address such as 127.0.0.1:15091; add --allow-remote-metrics to accept another".into(),
            });
        }
        let ignore_findings = ignore_findings_of(&table, config_path.as_deref())?;
        Ok(Settings {
            ignore_findings,
            envoy_admin: required(envoy_admin, &keys::ENVOY_ADMIN)?,
            envoy_log_dir: required(
                pick!(envoy_log_dir, keys::ENVOY_LOG_DIR),
                &keys::ENVOY_LOG_DIR,
            )?,
            envoy_user: pick!(envoy_user, keys::ENVOY_USER),
            interception: required(pick!(interception, keys::INTERCEPTION), &keys::INTERCEPTION)?,
            proxy_port: pick!(proxy_port, keys::PROXY_PORT),
            serving_ports: pick!(serving_ports, keys::SERVING_PORTS).map(|p| p.0),
            poll_interval: required(
                pick!(poll_interval, keys::POLL_INTERVAL),
                &keys::POLL_INTERVAL,
            )?,
            heartbeat_interval: required(
                pick!(heartbeat_interval, keys::HEARTBEAT_INTERVAL),
                &keys::HEARTBEAT_INTERVAL,
            )?,
            finding_ttl: required(pick!(finding_ttl, keys::FINDING_TTL), &keys::FINDING_TTL)?,
            metrics_addr,
            log_format: pick!(log_format, keys::LOG_FORMAT),
            serial_port: pick!(serial_port, keys::SERIAL_PORT),
            cloud_logging: required(
                pick!(cloud_logging, keys::CLOUD_LOGGING),
                &keys::CLOUD_LOGGING,
            )?,
            cloud_logging_endpoint: required(
                pick!(cloud_logging_endpoint, keys::CLOUD_LOGGING_ENDPOINT),
                &keys::CLOUD_LOGGING_ENDPOINT,
            )?,
            control_plane: required(
                pick!(control_plane, keys::CONTROL_PLANE),
                &keys::CONTROL_PLANE,
            )?,
            cloud_checks: required(pick!(cloud_checks, keys::CLOUD_CHECKS), &keys::CLOUD_CHECKS)?,
            api_endpoints: crate::observe::project::ApiEndpoints {
                compute: required(
                    pick!(compute_endpoint, keys::COMPUTE_ENDPOINT),
                    &keys::COMPUTE_ENDPOINT,
                )?,
                trafficdirector: required(
                    pick!(trafficdirector_endpoint, keys::TRAFFICDIRECTOR_ENDPOINT),
                    &keys::TRAFFICDIRECTOR_ENDPOINT,
                )?,
                resourcemanager: required(
                    pick!(resourcemanager_endpoint, keys::RESOURCEMANAGER_ENDPOINT),
                    &keys::RESOURCEMANAGER_ENDPOINT,
                )?,
                serviceusage: required(
                    pick!(serviceusage_endpoint, keys::SERVICEUSAGE_ENDPOINT),
                    &keys::SERVICEUSAGE_ENDPOINT,
                )?,
            },
            metadata_host: env("GCE_METADATA_HOST")
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| DEFAULT_METADATA_HOST.to_owned()),
            config_path,
        })
    }
}

/// A key with a default always has a value; `None` here would be a key table without one.
fn required<T>(v: Option<T>, key: &dyn AnyKey) -> Result<T, ConfigError> {
    v.ok_or_else(|| ConfigError::Invalid {
        source_name: key.name().to_owned(),
        value: String::new(),
        expected: "a value (the key has no default)".into(),
    })
}

/// One key's value: the flag/env value, else the file's, else the default (both parsed with the
/// key's parser; a bad file value names the key and the file).
fn value<T: Clone>(
    key: &Key<T>,
    given: &Option<T>,
    table: &FileTable,
    path: Option<&Path>,
) -> Result<Option<T>, ConfigError> {
    if let Some(v) = given {
        return Ok(Some(v.clone()));
    }
    let (source_name, text) = match table.0.get(key.name) {
        Some(v) => (
            match path {
                Some(p) => format!("{} in {}", key.name, p.display()),
                None => key.name.to_owned(),
            },
            toml_as_flag_text(v),
        ),
        None => match key.default {
            Some(d) => (format!("the default of {}", key.name), d.to_owned()),
            None => return Ok(None),
        },
    };
    (key.parse)(&text)
        .map(Some)
        .map_err(|expected| ConfigError::Invalid {
            source_name,
            value: text,
            expected,
        })
}

/// The file's `ignore-findings`, strictly: an entry the agent cannot use is an error at start
/// (and on SIGHUP), naming it, rather than a silencing that quietly does not happen.
fn ignore_findings_of(
    file: &FileTable,
    path: Option<&Path>,
) -> Result<Vec<crate::diagnose::silence::IgnoreRule>, ConfigError> {
    use crate::diagnose::silence;
    let Some(v) = file.0.get(IGNORE_FINDINGS) else {
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

/// The edge: the file's text, read carefully.
pub fn read_config_file(path: &Path) -> Result<ConfigFile, ConfigError> {
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
    Ok(ConfigFile {
        path: path.to_owned(),
        text,
    })
}

fn parse_file(text: &str) -> Result<FileTable, String> {
    let table = toml::from_str::<toml::Table>(text).map_err(|e| {
        // toml's messages span several lines with a source excerpt; keep the first line.
        let msg = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_owned();
        match e.span() {
            Some(span) => format!("line {}: {msg}", line_of(text, span.start)),
            None => msg,
        }
    })?;
    for key in table.keys() {
        if key != IGNORE_FINDINGS && !keys::ALL.iter().any(|k| k.name() == key) {
            let names: Vec<String> = keys::ALL
                .iter()
                .map(|k| k.name())
                .chain([IGNORE_FINDINGS])
                .map(|n| format!("`{n}`"))
                .collect();
            // The key's line, for the message: the first line that starts with it.
            let line = text
                .lines()
                .position(|l| {
                    l.trim_start()
                        .trim_start_matches('[')
                        .starts_with(key.as_str())
                })
                .map_or(String::new(), |i| format!("line {}: ", i + 1));
            return Err(format!(
                "{line}unknown field `{key}`, expected one of {}",
                names.join(", ")
            ));
        }
    }
    Ok(FileTable(table))
}

/// The 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.get(..at).map_or(0, |p| p.lines().count().max(1))
}

/// Checks that a TOML text is a valid config file (used by the fuzz target and SIGHUP path).
pub fn validate_file_text(text: &str) -> Result<(), String> {
    let file = parse_file(text)?;
    ignore_findings_of(&file, None)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
