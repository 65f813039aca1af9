//! `/clusters?format=json`: each cluster's hosts and their health.

use super::*;

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

pub(super) fn leaf_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<JsonLeaf>::deserialize(d)?.and_then(JsonLeaf::into_text))
}

pub(super) fn leaf_rendered<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
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
pub(super) struct ClustersRaw {
    #[serde(default)]
    cluster_statuses: Vec<ClusterRaw>,
}

#[derive(Deserialize)]
pub(super) struct ClusterRaw {
    name: Option<String>,
    added_via_api: Option<bool>,
    #[serde(default)]
    host_statuses: Vec<HostRaw>,
}

#[derive(Deserialize)]
pub(super) struct HostRaw {
    address: Option<HostAddressRaw>,
    #[serde(default)]
    health_status: HostHealth,
}

#[derive(Deserialize)]
pub(super) struct HostAddressRaw {
    socket_address: Option<SocketAddressRaw>,
    pipe: Option<Pick<PathKey>>,
}

pub(super) struct PathKey;
impl FieldKey for PathKey {
    const KEY: &'static str = "path";
}

pub(super) fn host_address(raw: Option<HostAddressRaw>) -> String {
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
