//! `/stats?filter=...`: the counters and gauges the checks read.

use super::*;

/// The stats the checks read. `None`: Envoy did not report it (e.g. no ADS configured means no
/// `control_plane.connected_state`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvoyStats {
    /// 0 disconnected, 1 connected, 2 failover.
    pub control_plane_connected_state: Option<u64>,
    pub lds_update_rejected: Option<u64>,
    pub lds_update_success: Option<u64>,
    pub cds_update_rejected: Option<u64>,
    /// Fetches that failed on the connection (each xDS stream that closed or could not open
    /// adds one to CDS's, and to LDS's once listeners are subscribed).
    pub lds_update_failure: Option<u64>,
    pub cds_update_failure: Option<u64>,
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
    /// xDS fetches failed on the connection, LDS's and CDS's together (`None` if neither is
    /// reported).
    pub fn xds_fetch_failures(&self) -> Option<u64> {
        match (self.lds_update_failure, self.cds_update_failure) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
        }
    }

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
            "listener_manager.lds.update_failure" => s.lds_update_failure = Some(n),
            "cluster_manager.cds.update_failure" => s.cds_update_failure = Some(n),
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
