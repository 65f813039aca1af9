//! From an observation to the interception the agent wants: the VIPs Envoy's listeners serve,
//! the serving ports, the Envoy UID, the proxy port and the `traffic-interception` options.

use thiserror::Error;

use crate::intercept::plan::{DesiredInput, Plan, PlanError, TrafficInterception, plan};
use crate::observe::Snapshot;
use crate::observe::admin_trust::AdminTrust;

/// Why no plan can be made from this snapshot. Interception is then left as it is: tearing
/// rules down because Envoy's admin blinked would cut traffic.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DesiredError {
    #[error("Envoy's listeners are unknown ({0}); interception left as it is")]
    ListenersUnknown(String),
    #[error(
        "Envoy is {0}, not LIVE: its listeners are not final yet, so interception is left as it is"
    )]
    NotLive(String),
    #[error("Envoy's admin is not trusted: {0}; nothing is programmed (docs/contract.md#11-trust)")]
    AdminUntrusted(String),
    #[error("{0}")]
    Plan(String),
}

impl From<PlanError> for DesiredError {
    fn from(e: PlanError) -> Self {
        DesiredError::Plan(e.to_string())
    }
}

/// The plan for this snapshot (`intercept plan|apply`; the daemon keeps its plans in its
/// reconciler, made from [`desired_input`] again only when that moves).
pub fn desired_plan(snap: &Snapshot) -> Result<Plan, DesiredError> {
    Ok(plan(&desired_input(snap)?)?)
}

/// What the plan for this snapshot is made from. A restarting Envoy has no listeners until it
/// has its config: planning from that would tear interception down and back up on every Envoy
/// restart.
pub fn desired_input(snap: &Snapshot) -> Result<DesiredInput, DesiredError> {
    if let Ok(info) = &snap.server_info
        && info.state.as_str() != "LIVE"
    {
        return Err(DesiredError::NotLive(info.state.as_str().to_owned()));
    }
    let summary = match (&snap.listener_summary, &snap.listeners) {
        (Some(s), _) => s,
        (None, Err(e)) => return Err(DesiredError::ListenersUnknown(e.to_string())),
        (None, Ok(_)) => return Err(DesiredError::ListenersUnknown("not read".into())),
    };
    // Only a trusted admin's listeners are acted on, and the UID excluded is its socket's
    // owner (docs/contract.md#11-trust), whatever else names a UID.
    let envoy_uid = match &snap.resolved.admin_trust {
        AdminTrust::Trusted { uid, .. } => *uid,
        AdminTrust::Untrusted { why, .. } => return Err(DesiredError::AdminUntrusted(why.clone())),
    };
    let traffic = snap
        .vm
        .as_ref()
        .ok()
        .and_then(|vm| vm.service_proxy.as_ref().ok())
        .and_then(Option::as_ref)
        .map(|sp| TrafficInterception {
            intercept_all_outbound: sp.traffic_interception.intercept_all_outbound,
            exclude_outbound_ip_ranges: sp.traffic_interception.exclude_outbound_ip_ranges.clone(),
            exclude_outbound_port_ranges: sp
                .traffic_interception
                .exclude_outbound_port_ranges
                .clone(),
        })
        .unwrap_or_default();
    Ok(DesiredInput {
        vips: summary.vips.clone(),
        serving_ports: snap.resolved.serving_ports.clone(),
        envoy_uid,
        proxy_port: snap.resolved.proxy_port,
        traffic,
    })
}
