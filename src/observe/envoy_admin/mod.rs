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
pub const STATS_FILTER: &str = r"^(control_plane\.connected_state|listener_manager\.(lds\.(update_rejected|update_success|update_attempt|update_failure|update_time|version|version_text)|total_listeners_(active|warming|draining)|listener_(added|modified|removed|stopped|create_success|create_failure|in_place_updated))|cluster_manager\.cds\.update_(rejected|failure))$|\.init_fetch_timeout$";

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

mod client;
mod clusters;
mod json;
mod listeners;
mod server_info;
mod stats;
mod summary;

pub use client::*;
pub use clusters::*;
pub use json::*;
pub use listeners::*;
pub use server_info::*;
pub use stats::*;
pub use summary::*;

#[cfg(test)]
mod tests;
