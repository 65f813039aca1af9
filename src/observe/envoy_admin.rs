//! Envoy's admin API: a client for the few endpoints the checks need, and typed models of their
//! answers.
//!
//! Every answer comes from another program and may be huge (a mesh with thousands of services),
//! truncated or hostile, so parsing is done with typed serde structs that ignore unknown fields
//! (no `serde_json::Value` trees of whole dumps), serde_json's recursion limit stays on, and the
//! body is capped by [`crate::observe::http`]. The pure `parse_*` functions are the fuzzing
//! surface: they never panic, whatever the bytes.
//!
//! Facts measured on Envoy 1.40.0 (and 1.36.4) that shape the queries:
//! - `/server_info` carries the bootstrap `node` (id, cluster, metadata), so one call gives
//!   version, state, uptime, command line and node. It is ~125 KB because the node lists every
//!   compiled-in extension; callers size `max_body` accordingly (1 MiB is comfortable).
//! - `/config_dump?resource=dynamic_listeners` gives the dynamic listeners. A `mask=` cannot
//!   reach inside `active_state.listener` (an `Any`): `mask=active_state.listener.filter_chains`
//!   answers 400, so the whole listener is fetched and the filters we do not need are skipped
//!   while parsing. With no dynamic listener the answer is `{}`. (`mask=` does work without
//!   `resource=`: it then applies to each config, e.g. `/config_dump?mask=bootstrap.node.id,
//!   bootstrap.node.metadata` returns only those ~400 bytes.)
//! - `/stats?filter=<regex>` keeps the text answer to the handful of lines the checks read.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use thiserror::Error;

use crate::config::AdminUrl;
use crate::observe::http::{self, HttpError};

pub use crate::contract::INTERCEPTION_LISTENER_NAME;

/// Route configuration names of inbound (serving-port) filter chains start with this.
pub const INBOUND_ROUTE_PREFIX: &str = "inbound|";

const INBOUND_DEFAULT_ROUTE_PREFIX: &str = "inbound|default_inbound_config-";

pub const PATH_SERVER_INFO: &str = "/server_info";
pub const PATH_READY: &str = "/ready";
pub const PATH_DYNAMIC_LISTENERS: &str = "/config_dump?resource=dynamic_listeners";
pub const PATH_CLUSTERS: &str = "/clusters?format=json";
/// The endpoint named in errors about `/stats` (the query holds a long regex).
pub const PATH_STATS: &str = "/stats";

/// The `/stats` lines the checks read: anchored so that no cluster or listener named like one
/// of them can smuggle a value in, except `*.init_fetch_timeout`, which exists per xDS
/// subscription (`listener_manager.lds.`, `cluster_manager.cds.`, `cluster.<name>.`...).
/// The listener manager's change counters are read too: while they and the Envoy process stay
/// the same, the dynamic listeners have not changed (see [`EnvoyStats::listener_fingerprint`]).
pub const STATS_FILTER: &str = r"^(control_plane\.connected_state|listener_manager\.(lds\.(update_rejected|update_success|update_attempt|update_failure|update_time|version|version_text)|total_listeners_(active|warming|draining)|listener_(added|modified|removed|stopped|create_success|create_failure|in_place_updated))|cluster_manager\.cds\.update_rejected)$|\.init_fetch_timeout$";

/// The counters without which the listener fingerprint is not trusted.
const LISTENER_CHANGE_COUNTERS: [&str; 3] = [
    "listener_manager.listener_added",
    "listener_manager.listener_modified",
    "listener_manager.listener_removed",
];
/// Bound on the `listener_manager.*` values kept for the fingerprint.
const LISTENER_FINGERPRINT_MAX: usize = 32;

/// How much of an error body is kept in [`AdminError::Status`].
const ERROR_BODY_MAX: usize = 256;
/// How many distinct non-zero `*.init_fetch_timeout` stats are kept by name (all are summed).
const MAX_TRACKED_INIT_FETCH_TIMEOUTS: usize = 256;
/// Bound on the raw text of a rejected prefix kept as evidence.
const REJECTED_RAW_MAX: usize = 96;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// Nothing accepts connections there (refused, no route...).
    #[error("Envoy admin {endpoint}: cannot connect: {reason}")]
    Unreachable {
        endpoint: &'static str,
        reason: String,
    },
    #[error("Envoy admin {endpoint}: no answer within {timeout:?}")]
    Timeout {
        endpoint: &'static str,
        timeout: Duration,
    },
    /// The peer accepted the connection but did not speak HTTP properly (closed early, garbage).
    #[error("Envoy admin {endpoint}: HTTP exchange failed: {reason}")]
    Protocol {
        endpoint: &'static str,
        reason: String,
    },
    #[error("Envoy admin {endpoint}: HTTP {status}: {body}")]
    Status {
        endpoint: &'static str,
        status: u16,
        /// The start of the body, one line, bounded.
        body: String,
    },
    #[error("Envoy admin {endpoint}: answer larger than {limit} bytes")]
    TooLarge {
        endpoint: &'static str,
        limit: usize,
    },
    #[error("Envoy admin {endpoint}: malformed answer: {reason}")]
    Malformed {
        endpoint: &'static str,
        reason: String,
    },
}

impl AdminError {
    /// True when the admin did not answer over HTTP at all (what `ENVOY_ADMIN_UNREACHABLE`
    /// means), as opposed to answering something we could not use.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            AdminError::Unreachable { .. }
                | AdminError::Timeout { .. }
                | AdminError::Protocol { .. }
        )
    }

    /// Something accepted the connection and then did not answer properly: an admin that
    /// hangs, not a missing one.
    pub fn is_unreachable_but_accepted(&self) -> bool {
        matches!(
            self,
            AdminError::Timeout { .. } | AdminError::Protocol { .. }
        )
    }

    fn from_http(endpoint: &'static str, e: HttpError) -> Self {
        match e {
            HttpError::Connect { reason, .. } => AdminError::Unreachable { endpoint, reason },
            HttpError::Timeout { timeout, .. } => AdminError::Timeout { endpoint, timeout },
            HttpError::TooLarge { limit, .. } => AdminError::TooLarge { endpoint, limit },
            HttpError::Protocol { reason, .. } => AdminError::Protocol { endpoint, reason },
        }
    }
}

fn malformed(endpoint: &'static str, reason: impl fmt::Display) -> AdminError {
    AdminError::Malformed {
        endpoint,
        reason: crate::text::truncate_with_ellipsis(
            &crate::text::strip_control(&reason.to_string()),
            200,
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A client for one Envoy admin endpoint. Cheap to clone; holds no connection.
#[derive(Debug, Clone)]
pub struct AdminClient {
    authority: String,
    timeout: Duration,
    max_body: usize,
}

impl AdminClient {
    /// `timeout` bounds each request (connect to last body byte); `max_body` caps each answer.
    pub fn new(url: &AdminUrl, timeout: Duration, max_body: usize) -> Self {
        AdminClient {
            authority: url.authority(),
            timeout,
            max_body,
        }
    }

    async fn get(
        &self,
        endpoint: &'static str,
        path_and_query: &str,
    ) -> Result<http::Response, AdminError> {
        http::get(
            &self.authority,
            path_and_query,
            &[],
            self.timeout,
            self.max_body,
        )
        .await
        .map_err(|e| AdminError::from_http(endpoint, e))
    }

    async fn get_ok(
        &self,
        endpoint: &'static str,
        path_and_query: &str,
    ) -> Result<bytes::Bytes, AdminError> {
        let r = self.get(endpoint, path_and_query).await?;
        if r.status != hyper::StatusCode::OK {
            return Err(status_error(endpoint, &r));
        }
        Ok(r.body)
    }

    pub async fn server_info(&self) -> Result<ServerInfo, AdminError> {
        let body = self.get_ok(PATH_SERVER_INFO, PATH_SERVER_INFO).await?;
        parse_server_info(&body)
    }

    /// `/ready`: 200 `LIVE`, or 503 with the state; any other status is an error.
    pub async fn ready(&self) -> Result<Readiness, AdminError> {
        let r = self.get(PATH_READY, PATH_READY).await?;
        parse_ready(r.status.as_u16(), &r.body).ok_or_else(|| status_error(PATH_READY, &r))
    }

    pub async fn dynamic_listeners(&self) -> Result<Vec<DynamicListener>, AdminError> {
        let body = self
            .get_ok(PATH_DYNAMIC_LISTENERS, PATH_DYNAMIC_LISTENERS)
            .await?;
        parse_listeners(&body)
    }

    pub async fn clusters(&self) -> Result<Vec<ClusterStatus>, AdminError> {
        let body = self.get_ok(PATH_CLUSTERS, PATH_CLUSTERS).await?;
        parse_clusters(&body)
    }

    pub async fn stats(&self) -> Result<EnvoyStats, AdminError> {
        let path = format!(
            "/stats?filter={}",
            crate::text::percent_encode(STATS_FILTER)
        );
        let body = self.get_ok(PATH_STATS, &path).await?;
        let text = std::str::from_utf8(&body).map_err(|e| malformed(PATH_STATS, e))?;
        Ok(parse_stats(text))
    }
}

fn status_error(endpoint: &'static str, r: &http::Response) -> AdminError {
    AdminError::Status {
        endpoint,
        status: r.status.as_u16(),
        body: one_line(&r.body, ERROR_BODY_MAX),
    }
}

fn one_line(bytes: &[u8], max: usize) -> String {
    let text = crate::text::lossy_bounded(bytes, max.saturating_mul(2));
    crate::text::truncate_with_ellipsis(crate::text::strip_control(&text).trim(), max)
}

fn from_json<'a, T: Deserialize<'a>>(
    endpoint: &'static str,
    body: &'a [u8],
) -> Result<T, AdminError> {
    // Checked up front: serde_json does not validate UTF-8 inside strings it skips.
    let text = std::str::from_utf8(body).map_err(|e| malformed(endpoint, e))?;
    // serde would also build a struct from an array: every admin answer we read is an object.
    if !text.trim_start().starts_with('{') {
        return Err(malformed(endpoint, "not a JSON object"));
    }
    serde_json::from_str(text).map_err(|e| malformed(endpoint, e))
}

// ---------------------------------------------------------------------------------------------
// Lenient leaves
// ---------------------------------------------------------------------------------------------

/// A JSON leaf kept as evidence instead of failing the whole dump: Envoy writes strings and
/// numbers where we read these, but a hostile or unexpected value must end up reported (e.g. in
/// [`ListenerSummary::rejected`]), not abort parsing or pass silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonLeaf {
    Text(String),
    Number(u64),
    Bool(bool),
    /// Anything else, named by its JSON type (`"a negative number"`, `"an object"`, ...).
    Other(&'static str),
}

impl JsonLeaf {
    fn as_u64(&self) -> Option<u64> {
        match self {
            JsonLeaf::Number(n) => Some(*n),
            _ => None,
        }
    }

    fn into_text(self) -> Option<String> {
        match self {
            JsonLeaf::Text(s) => Some(s),
            _ => None,
        }
    }

    /// What kind of JSON value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            JsonLeaf::Text(_) => "text",
            JsonLeaf::Number(_) => "a number",
            JsonLeaf::Bool(_) => "a boolean",
            JsonLeaf::Other(what) => what,
        }
    }
}

impl fmt::Display for JsonLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonLeaf::Text(s) => f.write_str(s),
            JsonLeaf::Number(n) => write!(f, "{n}"),
            JsonLeaf::Bool(b) => write!(f, "{b}"),
            JsonLeaf::Other(what) => write!(f, "<{what}>"),
        }
    }
}

impl<'de> Deserialize<'de> for JsonLeaf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match d.deserialize_any(LeafVisitor)? {
            JsonLeafRef::Text(t) => JsonLeaf::Text(t.into_owned()),
            JsonLeafRef::Number(n) => JsonLeaf::Number(n),
            JsonLeafRef::Bool(b) => JsonLeaf::Bool(b),
            JsonLeafRef::Other(what) => JsonLeaf::Other(what),
        })
    }
}

/// A [`JsonLeaf`] whose text is borrowed from the input when it can be: for leaves that are
/// only looked at, never kept.
enum JsonLeafRef<'de> {
    Text(std::borrow::Cow<'de, str>),
    Number(u64),
    Bool(bool),
    Other(&'static str),
}

struct LeafVisitor;

impl<'de> Visitor<'de> for LeafVisitor {
    type Value = JsonLeafRef<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(JsonLeafRef::Text(std::borrow::Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(JsonLeafRef::Text(std::borrow::Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(JsonLeafRef::Text(std::borrow::Cow::Owned(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(JsonLeafRef::Number(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(v).map_or(JsonLeafRef::Other("a negative number"), JsonLeafRef::Number))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(JsonLeafRef::Other("a fractional number"))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(JsonLeafRef::Bool(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(JsonLeafRef::Other("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(JsonLeafRef::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(JsonLeafRef::Other("an object"))
    }
}

/// An object key compared with `K::KEY` as it is read, without copying it.
struct KeyIs<K>(bool, PhantomData<K>);

impl<'de, K: FieldKey> Deserialize<'de> for KeyIs<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let is = matches!(d.deserialize_str(LeafVisitor)?, JsonLeafRef::Text(t) if t == K::KEY);
        Ok(KeyIs(is, PhantomData))
    }
}

/// Names the one string field [`Pick`] extracts.
trait FieldKey {
    const KEY: &'static str;
}

/// One string field of an object whose shape we do not control: filters' `typed_config` differ
/// by filter type (e.g. `route_config` is an object in the HTTP connection manager and an array
/// in the Dubbo proxy), so any other shape yields `None` instead of an error.
struct Pick<K>(Option<String>, PhantomData<K>);

impl<'de, K: FieldKey> Deserialize<'de> for Pick<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PickVisitor::<K>(PhantomData))
    }
}

struct PickVisitor<K>(PhantomData<K>);

impl<'de, K: FieldKey> Visitor<'de> for PickVisitor<K> {
    type Value = Pick<K>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pick<K>, A::Error> {
        let mut found = None;
        while let Some(KeyIs(is_key, _)) = map.next_key::<KeyIs<K>>()? {
            if is_key && found.is_none() {
                found = map.next_value::<JsonLeaf>()?.into_text();
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Pick(found, PhantomData))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Pick<K>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Pick(None, PhantomData))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Pick<K>, E> {
        Ok(Pick(None, PhantomData))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Pick<K>, E> {
        Ok(Pick(None, PhantomData))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Pick<K>, E> {
        Ok(Pick(None, PhantomData))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Pick<K>, E> {
        Ok(Pick(None, PhantomData))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Pick<K>, E> {
        Ok(Pick(None, PhantomData))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Pick<K>, E> {
        Ok(Pick(None, PhantomData))
    }
}

struct NameKey;
impl FieldKey for NameKey {
    const KEY: &'static str = "name";
}
struct RouteConfigNameKey;
impl FieldKey for RouteConfigNameKey {
    const KEY: &'static str = "route_config_name";
}

// ---------------------------------------------------------------------------------------------
// /server_info and /ready
// ---------------------------------------------------------------------------------------------

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

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(leaf_text(d)?.unwrap_or_default())
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(matches!(
        Option::<JsonLeaf>::deserialize(d)?,
        Some(JsonLeaf::Bool(true))
    ))
}

fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
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
struct ServerInfoRaw {
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

// ---------------------------------------------------------------------------------------------
// /config_dump?resource=dynamic_listeners
// ---------------------------------------------------------------------------------------------

/// One entry of `dynamic_listeners`. On a rejected update Envoy keeps the listener's states and
/// adds `error_state`, and also adds an entry with no name holding only `error_state`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DynamicListener {
    pub name: Option<String>,
    pub active: Option<ListenerState>,
    pub warming: Option<ListenerState>,
    pub draining: Option<ListenerState>,
    pub error: Option<ListenerErrorState>,
}

impl DynamicListener {
    /// The configuration Envoy is serving (or about to): active, else warming.
    pub fn current(&self) -> Option<&Listener> {
        self.active
            .as_ref()
            .or(self.warming.as_ref())
            .map(|s| &s.listener)
    }

    /// The nameless entry Envoy adds on a rejected update.
    pub fn is_nameless_error(&self) -> bool {
        self.name.is_none() && self.error.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListenerState {
    pub version_info: Option<String>,
    pub last_updated: Option<String>,
    pub listener: Listener,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListenerErrorState {
    /// The name inside `failed_configuration`, when it has one.
    pub failed_listener: Option<String>,
    pub last_update_attempt: Option<String>,
    /// Envoy's reason, e.g. `unable to open file '/var/log/x.log': Permission denied`. Raw text
    /// (may hold newlines): sanitise before publishing.
    pub details: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listener {
    pub name: String,
    pub address: Option<SocketAddress>,
    pub use_original_dst: bool,
    /// Has the `envoy.filters.listener.original_dst` listener filter (the newer way to say
    /// `use_original_dst`).
    pub original_dst_filter: bool,
    pub filter_chains: Vec<FilterChain>,
    pub default_filter_chain: Option<FilterChain>,
    /// Paths of the file access logs configured on the listener itself.
    pub access_log_paths: Vec<String>,
}

impl Listener {
    /// Whether this listener takes traffic redirected by iptables.
    pub fn is_interception(&self) -> bool {
        self.use_original_dst || self.original_dst_filter
    }
}

/// A socket address as configured; `port` is `None` when absent or out of range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SocketAddress {
    pub address: String,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilterChain {
    pub name: Option<String>,
    pub prefix_ranges: Vec<PrefixRange>,
    /// `filter_chain_match.destination_port`, when a number.
    pub destination_port: Option<u32>,
    /// The HTTP connection managers' `rds.route_config_name` or inline `route_config.name`.
    pub route_config_names: Vec<String>,
}

impl FilterChain {
    /// A chain serving an inbound port (route configuration `inbound|...`).
    pub fn is_inbound(&self) -> bool {
        self.route_config_names
            .iter()
            .any(|n| n.starts_with(INBOUND_ROUTE_PREFIX))
    }
}

/// `filter_chain_match.prefix_ranges[]` as Envoy gave it, not yet validated: see [`parse_prefix`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixRange {
    pub address_prefix: Option<JsonLeaf>,
    pub prefix_len: Option<JsonLeaf>,
}

#[derive(Deserialize)]
struct ListenersDumpRaw {
    #[serde(default)]
    configs: Vec<DynamicListenerRaw>,
}

#[derive(Deserialize)]
struct DynamicListenerRaw {
    name: Option<String>,
    active_state: Option<ListenerStateRaw>,
    warming_state: Option<ListenerStateRaw>,
    draining_state: Option<ListenerStateRaw>,
    error_state: Option<ErrorStateRaw>,
}

#[derive(Deserialize)]
struct ListenerStateRaw {
    version_info: Option<String>,
    last_updated: Option<String>,
    listener: Option<ListenerRaw>,
}

#[derive(Deserialize)]
struct ErrorStateRaw {
    failed_configuration: Option<Pick<NameKey>>,
    last_update_attempt: Option<String>,
    details: Option<String>,
}

#[derive(Deserialize)]
struct ListenerRaw {
    name: Option<String>,
    address: Option<AddressRaw>,
    use_original_dst: Option<bool>,
    #[serde(default)]
    filter_chains: Vec<FilterChainRaw>,
    default_filter_chain: Option<FilterChainRaw>,
    #[serde(default)]
    listener_filters: Vec<FilterRaw>,
    #[serde(default)]
    access_log: Vec<FilterRaw>,
}

#[derive(Deserialize)]
struct AddressRaw {
    socket_address: Option<SocketAddressRaw>,
}

#[derive(Deserialize)]
struct SocketAddressRaw {
    address: Option<JsonLeaf>,
    port_value: Option<JsonLeaf>,
}

#[derive(Deserialize)]
struct FilterChainRaw {
    name: Option<String>,
    filter_chain_match: Option<FilterChainMatchRaw>,
    #[serde(default)]
    filters: Vec<FilterRaw>,
}

#[derive(Deserialize)]
struct FilterChainMatchRaw {
    #[serde(default)]
    prefix_ranges: Vec<PrefixRangeRaw>,
    destination_port: Option<JsonLeaf>,
}

#[derive(Deserialize)]
struct PrefixRangeRaw {
    address_prefix: Option<JsonLeaf>,
    prefix_len: Option<JsonLeaf>,
}

#[derive(Deserialize)]
struct FilterRaw {
    name: Option<FilterName>,
    typed_config: Option<TypedConfigRaw>,
}

/// The few fields of a filter's `typed_config` we read; which ones mean something depends on
/// `@type`, and each tolerates any shape.
#[derive(Deserialize)]
struct TypedConfigRaw {
    #[serde(rename = "@type")]
    type_url: Option<TypeUrl>,
    route_config: Option<Pick<NameKey>>,
    rds: Option<Pick<RouteConfigNameKey>>,
    path: Option<JsonLeaf>,
}

impl TypedConfigRaw {
    fn is_type(&self, kind: KnownType) -> bool {
        self.type_url == Some(TypeUrl(Some(kind)))
    }
}

/// The `@type`s whose fields we read. A big mesh has thousands of filter chains, each with
/// its filters' `@type`: they are recognised while parsing, not kept as strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KnownType {
    Hcm,
    FileAccessLog,
    OriginalDst,
}

/// `@type`: one of [`KnownType`] (by suffix, whatever the API version prefix), or `None` for
/// any other value, text or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TypeUrl(Option<KnownType>);

impl<'de> Deserialize<'de> for TypeUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let known = match d.deserialize_any(LeafVisitor)? {
            JsonLeafRef::Text(t) if t.ends_with(HCM_TYPE) => Some(KnownType::Hcm),
            JsonLeafRef::Text(t) if t.ends_with(FILE_ACCESS_LOG_TYPE) => {
                Some(KnownType::FileAccessLog)
            }
            JsonLeafRef::Text(t) if t.ends_with(ORIGINAL_DST_TYPE) => Some(KnownType::OriginalDst),
            _ => None,
        };
        Ok(TypeUrl(known))
    }
}

/// A filter's `name`: all we need is whether it is the original-destination listener filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FilterName {
    original_dst: bool,
}

impl<'de> Deserialize<'de> for FilterName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let original_dst = matches!(d.deserialize_any(LeafVisitor)?, JsonLeafRef::Text(t) if t == ORIGINAL_DST_FILTER);
        Ok(FilterName { original_dst })
    }
}

const HCM_TYPE: &str =
    ".extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const FILE_ACCESS_LOG_TYPE: &str = ".extensions.access_loggers.file.v3.FileAccessLog";
const ORIGINAL_DST_FILTER: &str = "envoy.filters.listener.original_dst";
const ORIGINAL_DST_TYPE: &str = ".extensions.filters.listener.original_dst.v3.OriginalDst";

fn port_of(leaf: Option<JsonLeaf>) -> Option<u16> {
    leaf.and_then(|l| l.as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

fn convert_chain(raw: FilterChainRaw) -> FilterChain {
    let (prefix_ranges, destination_port) = match raw.filter_chain_match {
        Some(m) => (
            m.prefix_ranges
                .into_iter()
                .map(|p| PrefixRange {
                    address_prefix: p.address_prefix,
                    prefix_len: p.prefix_len,
                })
                .collect(),
            m.destination_port
                .and_then(|l| l.as_u64())
                .and_then(|p| u32::try_from(p).ok()),
        ),
        None => (Vec::new(), None),
    };
    let mut route_config_names = Vec::new();
    for f in raw.filters {
        let Some(tc) = f.typed_config else { continue };
        if !tc.is_type(KnownType::Hcm) {
            continue;
        }
        let names = [tc.rds.and_then(|p| p.0), tc.route_config.and_then(|p| p.0)];
        for n in names.into_iter().flatten() {
            if !route_config_names.contains(&n) {
                route_config_names.push(n);
            }
        }
    }
    FilterChain {
        name: raw.name.filter(|n| !n.is_empty()),
        prefix_ranges,
        destination_port,
        route_config_names,
    }
}

fn convert_listener(raw: ListenerRaw) -> Listener {
    let address = raw
        .address
        .and_then(|a| a.socket_address)
        .map(|s| SocketAddress {
            address: s.address.and_then(JsonLeaf::into_text).unwrap_or_default(),
            port: port_of(s.port_value),
        });
    let original_dst_filter = raw.listener_filters.iter().any(|f| {
        f.name.is_some_and(|n| n.original_dst)
            || f.typed_config
                .as_ref()
                .is_some_and(|t| t.is_type(KnownType::OriginalDst))
    });
    let access_log_paths = raw
        .access_log
        .into_iter()
        .filter_map(|f| f.typed_config)
        .filter(|t| t.is_type(KnownType::FileAccessLog))
        .filter_map(|t| t.path.and_then(JsonLeaf::into_text))
        .collect();
    Listener {
        name: raw.name.unwrap_or_default(),
        address,
        use_original_dst: raw.use_original_dst.unwrap_or(false),
        original_dst_filter,
        filter_chains: raw.filter_chains.into_iter().map(convert_chain).collect(),
        default_filter_chain: raw.default_filter_chain.map(convert_chain),
        access_log_paths,
    }
}

fn convert_state(raw: ListenerStateRaw) -> ListenerState {
    ListenerState {
        version_info: raw.version_info.filter(|v| !v.is_empty()),
        last_updated: raw.last_updated,
        listener: raw.listener.map(convert_listener).unwrap_or_default(),
    }
}

/// The body of `/config_dump?resource=dynamic_listeners`.
pub fn parse_listeners(body: &[u8]) -> Result<Vec<DynamicListener>, AdminError> {
    let raw: ListenersDumpRaw = from_json(PATH_DYNAMIC_LISTENERS, body)?;
    Ok(raw
        .configs
        .into_iter()
        .map(|l| DynamicListener {
            name: l.name.filter(|n| !n.is_empty()),
            active: l.active_state.map(convert_state),
            warming: l.warming_state.map(convert_state),
            draining: l.draining_state.map(convert_state),
            error: l.error_state.map(|e| ListenerErrorState {
                failed_listener: e.failed_configuration.and_then(|p| p.0),
                last_update_attempt: e.last_update_attempt,
                details: e.details.unwrap_or_default(),
            }),
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Listener summary: VIPs, interception listener, inbound ports
// ---------------------------------------------------------------------------------------------

/// A `prefix_ranges` entry that is not a usable IP network: never passed on, always reported.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RejectedPrefix {
    pub listener: String,
    /// What Envoy had, as `address/len` text, sanitised and bounded.
    pub raw: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptionListener {
    pub name: String,
    pub port: Option<u16>,
}

/// What the interception checks need from the dynamic listeners.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListenerSummary {
    /// Service VIPs/CIDRs of the active listeners' outbound filter chains, normalised
    /// (host bits cleared), sorted, deduplicated.
    pub vips: Vec<IpNet>,
    /// Sorted, deduplicated.
    pub rejected: Vec<RejectedPrefix>,
    pub interception: Option<InterceptionListener>,
    /// Ports of the inbound filter chains (route configuration `inbound|...`), sorted.
    pub inbound_ports: Vec<u16>,
}

/// Strictly parses one prefix range: an IP address and a prefix length within its family, not
/// /0 (a missing `prefix_len` is 0 in Envoy's proto, and /0 would intercept everything).
/// Host bits are cleared (`10.1.2.3/24` → `10.1.2.0/24`).
pub fn parse_prefix(range: &PrefixRange) -> Result<IpNet, String> {
    let ip: IpAddr = match &range.address_prefix {
        Some(JsonLeaf::Text(t)) => t
            .parse()
            .map_err(|_| "address_prefix is not an IP address".to_owned())?,
        Some(other) => return Err(format!("address_prefix is {}", other.kind())),
        None => return Err("address_prefix is missing".into()),
    };
    let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let len = match &range.prefix_len {
        None => {
            return Err("prefix_len is missing (0 in Envoy), /0 would intercept everything".into());
        }
        Some(JsonLeaf::Number(n)) => *n,
        Some(other) => return Err(format!("prefix_len is {}", other.kind())),
    };
    if len == 0 {
        return Err("prefix_len is 0, /0 would intercept everything".into());
    }
    let len = u8::try_from(len)
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| format!("prefix_len {len} is above {max}"))?;
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .map_err(|e| e.to_string())
}

fn raw_prefix_text(range: &PrefixRange) -> String {
    let addr = range
        .address_prefix
        .as_ref()
        .map_or_else(|| "<none>".to_owned(), JsonLeaf::to_string);
    let text = match &range.prefix_len {
        Some(len) => format!("{addr}/{len}"),
        None => addr,
    };
    crate::text::truncate_with_ellipsis(&crate::text::strip_control(&text), REJECTED_RAW_MAX)
}

/// The port in `inbound|default_inbound_config-<port>`.
fn inbound_route_port(name: &str) -> Option<u16> {
    name.strip_prefix(INBOUND_DEFAULT_ROUTE_PREFIX)?
        .parse()
        .ok()
        .filter(|p| *p != 0)
}

/// VIPs come from active listeners only: a warming listener does not serve yet, a draining one
/// no longer takes new connections.
pub fn summarize_listeners(listeners: &[DynamicListener]) -> ListenerSummary {
    let mut vips = BTreeSet::new();
    let mut rejected = BTreeSet::new();
    let mut inbound = BTreeSet::new();
    let mut interception: Option<InterceptionListener> = None;

    for dl in listeners {
        let Some(state) = &dl.active else { continue };
        let l = &state.listener;
        let name = dl.name.as_deref().unwrap_or(&l.name);
        if l.is_interception() {
            let candidate = InterceptionListener {
                name: name.to_owned(),
                port: l.address.as_ref().and_then(|a| a.port),
            };
            let better = match &interception {
                None => true,
                Some(cur) => {
                    cur.name != INTERCEPTION_LISTENER_NAME
                        && (candidate.name == INTERCEPTION_LISTENER_NAME
                            || candidate.name < cur.name)
                }
            };
            if better {
                interception = Some(candidate);
            }
        }
        for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            if chain.is_inbound() {
                inbound.extend(
                    chain
                        .route_config_names
                        .iter()
                        .filter_map(|n| inbound_route_port(n)),
                );
                inbound.extend(
                    chain
                        .destination_port
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|p| *p != 0),
                );
                continue;
            }
            for range in &chain.prefix_ranges {
                match parse_prefix(range) {
                    Ok(net) => {
                        vips.insert(net);
                    }
                    Err(reason) => {
                        rejected.insert(RejectedPrefix {
                            listener: name.to_owned(),
                            raw: raw_prefix_text(range),
                            reason,
                        });
                    }
                }
            }
        }
    }
    ListenerSummary {
        vips: vips.into_iter().collect(),
        rejected: rejected.into_iter().collect(),
        interception,
        inbound_ports: inbound.into_iter().collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// /clusters?format=json
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterStatus {
    pub name: String,
    pub added_via_api: bool,
    pub hosts: Vec<HostStatus>,
}

impl ClusterStatus {
    pub fn healthy_hosts(&self) -> usize {
        self.hosts.iter().filter(|h| h.health.is_healthy()).count()
    }

    pub fn unhealthy_hosts(&self) -> usize {
        self.hosts.len() - self.healthy_hosts()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostStatus {
    /// `ip:port` (`[ip]:port` for IPv6), or the pipe path; empty when Envoy gave neither.
    pub address: String,
    pub health: HostHealth,
}

/// `host_statuses[].health_status`. Envoy omits false flags, so absent means false.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct HostHealth {
    pub failed_active_health_check: bool,
    pub failed_outlier_check: bool,
    pub failed_active_degraded_check: bool,
    pub pending_dynamic_removal: bool,
    pub pending_active_hc: bool,
    pub excluded_via_immediate_hc_fail: bool,
    pub active_hc_timeout: bool,
    /// The text admin output's `/failed_eds_health` flag, accepted should JSON ever carry it.
    pub failed_eds_health: bool,
    /// `HEALTHY`, `UNHEALTHY`, `DRAINING`, `TIMEOUT`, `DEGRADED`, `UNKNOWN`; `None` if absent.
    /// A value that is not text is kept as its JSON rendering (and so counts as unhealthy).
    #[serde(deserialize_with = "leaf_rendered")]
    pub eds_health_status: Option<String>,
}

fn leaf_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<JsonLeaf>::deserialize(d)?.and_then(JsonLeaf::into_text))
}

fn leaf_rendered<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<JsonLeaf>::deserialize(d)?.map(|l| match l {
        JsonLeaf::Text(t) => t,
        other => other.to_string(),
    }))
}

impl HostHealth {
    /// Healthy iff no failure flag is set and EDS says HEALTHY or nothing (Envoy treats
    /// `UNKNOWN` as healthy too). Degraded hosts still take traffic and count as healthy here.
    pub fn is_healthy(&self) -> bool {
        let failed = self.failed_active_health_check
            || self.failed_outlier_check
            || self.failed_eds_health
            || self.excluded_via_immediate_hc_fail
            || self.active_hc_timeout;
        let eds_ok = matches!(
            self.eds_health_status.as_deref(),
            None | Some("HEALTHY" | "UNKNOWN" | "DEGRADED")
        );
        !failed && eds_ok
    }

    /// Takes traffic only when too few hosts are healthy.
    pub fn is_degraded(&self) -> bool {
        self.is_healthy()
            && (self.failed_active_degraded_check
                || self.eds_health_status.as_deref() == Some("DEGRADED"))
    }
}

#[derive(Deserialize)]
struct ClustersRaw {
    #[serde(default)]
    cluster_statuses: Vec<ClusterRaw>,
}

#[derive(Deserialize)]
struct ClusterRaw {
    name: Option<String>,
    added_via_api: Option<bool>,
    #[serde(default)]
    host_statuses: Vec<HostRaw>,
}

#[derive(Deserialize)]
struct HostRaw {
    address: Option<HostAddressRaw>,
    #[serde(default)]
    health_status: HostHealth,
}

#[derive(Deserialize)]
struct HostAddressRaw {
    socket_address: Option<SocketAddressRaw>,
    pipe: Option<Pick<PathKey>>,
}

struct PathKey;
impl FieldKey for PathKey {
    const KEY: &'static str = "path";
}

fn host_address(raw: Option<HostAddressRaw>) -> String {
    let Some(raw) = raw else {
        return String::new();
    };
    if let Some(sa) = raw.socket_address {
        let addr = sa.address.and_then(JsonLeaf::into_text).unwrap_or_default();
        let port = sa.port_value.and_then(|l| l.as_u64()).unwrap_or(0);
        return if addr.contains(':') {
            format!("[{addr}]:{port}")
        } else {
            format!("{addr}:{port}")
        };
    }
    raw.pipe.and_then(|p| p.0).unwrap_or_default()
}

/// The body of `/clusters?format=json`.
pub fn parse_clusters(body: &[u8]) -> Result<Vec<ClusterStatus>, AdminError> {
    let raw: ClustersRaw = from_json(PATH_CLUSTERS, body)?;
    Ok(raw
        .cluster_statuses
        .into_iter()
        .map(|c| ClusterStatus {
            name: c.name.unwrap_or_default(),
            added_via_api: c.added_via_api.unwrap_or(false),
            hosts: c
                .host_statuses
                .into_iter()
                .map(|h| HostStatus {
                    address: host_address(h.address),
                    health: h.health_status,
                })
                .collect(),
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// /stats
// ---------------------------------------------------------------------------------------------

/// The stats the checks read. `None`: Envoy did not report it (e.g. no ADS configured means no
/// `control_plane.connected_state`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvoyStats {
    /// 0 disconnected, 1 connected, 2 failover.
    pub control_plane_connected_state: Option<u64>,
    pub lds_update_rejected: Option<u64>,
    pub lds_update_success: Option<u64>,
    pub cds_update_rejected: Option<u64>,
    pub total_listeners_active: Option<u64>,
    pub total_listeners_warming: Option<u64>,
    /// Without its quotes.
    pub lds_version_text: Option<String>,
    /// Sum of every `*.init_fetch_timeout`.
    pub init_fetch_timeout_total: u64,
    /// The non-zero `*.init_fetch_timeout` stats by full name (at most 256 kept).
    pub init_fetch_timeouts: BTreeMap<String, u64>,
    /// Every `listener_manager.*` value read, as text (at most 32).
    pub listener_manager: BTreeMap<String, String>,
}

impl EnvoyStats {
    /// What the dynamic listeners depend on, as far as the listener manager tells: every
    /// listener added, modified, removed, warmed, drained, or rejected moves one of these
    /// counters or gauges. `None` unless the change counters are all there (an admin that
    /// does not report them cannot be trusted to have changed nothing).
    pub fn listener_fingerprint(&self) -> Option<&BTreeMap<String, String>> {
        LISTENER_CHANGE_COUNTERS
            .iter()
            .all(|c| self.listener_manager.contains_key(*c))
            .then_some(&self.listener_manager)
    }
}

/// Parses Envoy's text stats (`name: value` per line). Lines that are not a known stat with a
/// value of the expected kind are skipped: the text format also carries histograms and text.
pub fn parse_stats(text: &str) -> EnvoyStats {
    let mut s = EnvoyStats::default();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        let name = name.trim();
        let value = value.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            continue;
        }
        if name.starts_with("listener_manager.")
            && (s.listener_manager.len() < LISTENER_FINGERPRINT_MAX
                || s.listener_manager.contains_key(name))
        {
            s.listener_manager.insert(
                crate::text::truncate_with_ellipsis(name, 128),
                crate::text::truncate_with_ellipsis(value, 256),
            );
        }
        if name == "listener_manager.lds.version_text" {
            if let Some(v) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                s.lds_version_text = Some(crate::text::truncate_with_ellipsis(
                    &crate::text::strip_control(v),
                    256,
                ));
            }
            continue;
        }
        let Ok(n) = value.parse::<u64>() else {
            continue;
        };
        match name {
            "control_plane.connected_state" => s.control_plane_connected_state = Some(n),
            "listener_manager.lds.update_rejected" => s.lds_update_rejected = Some(n),
            "listener_manager.lds.update_success" => s.lds_update_success = Some(n),
            "cluster_manager.cds.update_rejected" => s.cds_update_rejected = Some(n),
            "listener_manager.total_listeners_active" => s.total_listeners_active = Some(n),
            "listener_manager.total_listeners_warming" => s.total_listeners_warming = Some(n),
            _ if name.ends_with(".init_fetch_timeout") => {
                s.init_fetch_timeout_total = s.init_fetch_timeout_total.saturating_add(n);
                if n > 0
                    && (s.init_fetch_timeouts.len() < MAX_TRACKED_INIT_FETCH_TIMEOUTS
                        || s.init_fetch_timeouts.contains_key(name))
                {
                    let e = s.init_fetch_timeouts.entry(name.to_owned()).or_insert(0);
                    *e = e.saturating_add(n);
                }
            }
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests;
