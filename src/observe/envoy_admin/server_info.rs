//! `/server_info` and `/ready`: version, state, uptime, command line and the bootstrap node.

use super::*;

/// `server_info.state`; values this version does not know are kept as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerState {
    Live,
    Draining,
    PreInitializing,
    Initializing,
    Other(String),
}

impl ServerState {
    pub fn parse(s: &str) -> Self {
        match s {
            "LIVE" => ServerState::Live,
            "DRAINING" => ServerState::Draining,
            "PRE_INITIALIZING" => ServerState::PreInitializing,
            "INITIALIZING" => ServerState::Initializing,
            other => ServerState::Other(crate::text::truncate_with_ellipsis(
                &crate::text::strip_control(other),
                64,
            )),
        }
    }

    /// Envoy's spelling, as published in the `proxy-state` guest attribute.
    pub fn as_str(&self) -> &str {
        match self {
            ServerState::Live => "LIVE",
            ServerState::Draining => "DRAINING",
            ServerState::PreInitializing => "PRE_INITIALIZING",
            ServerState::Initializing => "INITIALIZING",
            ServerState::Other(s) => s,
        }
    }
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `major.minor.patch` of Envoy's version string, for the minimum-version check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvoyVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for EnvoyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The number in `<sha>/1.40.0/Clean/RELEASE/BoringSSL` (also `1.15.1-dev`).
pub fn parse_version_number(version: &str) -> Option<EnvoyVersion> {
    let semver = version.split('/').nth(1)?;
    let semver = semver.split(['-', '+']).next()?;
    let mut parts = semver.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(EnvoyVersion {
        major,
        minor,
        patch,
    })
}

/// Parses a protobuf JSON duration (`"123s"`, `"0.200s"`).
pub fn parse_proto_duration(s: &str) -> Option<Duration> {
    let n = s.strip_suffix('s')?;
    let (secs, frac) = match n.split_once('.') {
        Some((s, f)) => (s, f),
        None => (n, ""),
    };
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let digits: u32 = frac.parse().ok()?;
        let scale = 10u32.checked_pow(9 - u32::try_from(frac.len()).ok()?)?;
        digits.checked_mul(scale)?
    };
    Some(Duration::new(secs, nanos))
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerInfo {
    /// Exactly as Envoy gives it, e.g. `9e55.../1.40.0/Clean/RELEASE/BoringSSL`.
    pub version: String,
    pub state: ServerState,
    /// `None` when absent or not a protobuf duration.
    pub uptime_current_epoch: Option<Duration>,
    pub uptime_all_epochs: Option<Duration>,
    pub command_line_options: CommandLineOptions,
    pub node: Node,
}

impl ServerInfo {
    pub fn version_number(&self) -> Option<EnvoyVersion> {
        parse_version_number(&self.version)
    }
}

/// The part of Envoy's command line the checks use (where its config and log are). Each field
/// tolerates an unexpected type (left at its default) so that a change in a field we barely
/// need cannot cost us the version and state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct CommandLineOptions {
    #[serde(deserialize_with = "lenient_string")]
    pub config_path: String,
    #[serde(deserialize_with = "lenient_string")]
    pub log_path: String,
    #[serde(deserialize_with = "lenient_string")]
    pub log_format: String,
    #[serde(deserialize_with = "lenient_string")]
    pub log_level: String,
    #[serde(deserialize_with = "lenient_bool")]
    pub log_format_escaped: bool,
    /// Protobuf duration text, e.g. `"10s"`; see [`parse_proto_duration`].
    #[serde(deserialize_with = "lenient_string")]
    pub file_flush_interval: String,
    #[serde(deserialize_with = "lenient_string")]
    pub mode: String,
    #[serde(deserialize_with = "lenient_u32")]
    pub restart_epoch: u32,
}

pub(super) fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(leaf_text(d)?.unwrap_or_default())
}

pub(super) fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(matches!(
        Option::<JsonLeaf>::deserialize(d)?,
        Some(JsonLeaf::Bool(true))
    ))
}

pub(super) fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    Ok(Option::<JsonLeaf>::deserialize(d)?
        .and_then(|l| l.as_u64())
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0))
}

/// The bootstrap node as Envoy runs it.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct Node {
    pub id: String,
    pub cluster: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl Node {
    /// A metadata value that is a string (Cloud Service Mesh's keys all are).
    pub fn metadata_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(serde_json::Value::as_str)
    }

    /// A metadata value as text fit for a report (numbers as written, control characters
    /// removed, at most 128 characters), whatever its JSON type.
    pub fn metadata_text(&self, key: &str) -> Option<String> {
        match self.metadata.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(
                n.as_u64()
                    .map(|u| u.to_string())
                    .or_else(|| n.as_f64().map(|f| format!("{f:.0}")))
                    .unwrap_or_else(|| n.to_string()),
            ),
            other => Some(other.to_string()),
        }
        .map(|s| crate::text::truncate_with_ellipsis(&crate::text::strip_control(&s), 128))
    }
}

#[derive(Deserialize)]
pub(super) struct ServerInfoRaw {
    version: Option<String>,
    state: Option<String>,
    #[serde(default, deserialize_with = "leaf_text")]
    uptime_current_epoch: Option<String>,
    #[serde(default, deserialize_with = "leaf_text")]
    uptime_all_epochs: Option<String>,
    #[serde(default)]
    command_line_options: CommandLineOptions,
    #[serde(default)]
    node: Node,
}

pub fn parse_server_info(body: &[u8]) -> Result<ServerInfo, AdminError> {
    let raw: ServerInfoRaw = from_json(PATH_SERVER_INFO, body)?;
    let version = raw
        .version
        .filter(|v| !v.is_empty())
        .ok_or_else(|| malformed(PATH_SERVER_INFO, "no version"))?;
    let state = raw
        .state
        .ok_or_else(|| malformed(PATH_SERVER_INFO, "no state"))?;
    Ok(ServerInfo {
        version,
        state: ServerState::parse(&state),
        uptime_current_epoch: raw
            .uptime_current_epoch
            .as_deref()
            .and_then(parse_proto_duration),
        uptime_all_epochs: raw
            .uptime_all_epochs
            .as_deref()
            .and_then(parse_proto_duration),
        command_line_options: raw.command_line_options,
        node: raw.node,
    })
}

/// What `/ready` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// 200 (Envoy answers `LIVE`).
    pub ready: bool,
    pub state: ServerState,
}

/// `/ready`'s status and body; `None` for a status other than 200 or 503.
pub fn parse_ready(status: u16, body: &[u8]) -> Option<Readiness> {
    let text = one_line(body, 64);
    match status {
        200 => Some(Readiness {
            ready: true,
            state: if text.is_empty() {
                ServerState::Live
            } else {
                ServerState::parse(&text)
            },
        }),
        503 => Some(Readiness {
            ready: false,
            state: ServerState::parse(&text),
        }),
        _ => None,
    }
}
