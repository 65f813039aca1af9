//! The listener summary the checks and interception need: VIPs, the interception listener, inbound
//! ports.

use super::*;

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

pub(super) fn raw_prefix_text(range: &PrefixRange) -> String {
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
pub(super) fn inbound_route_port(name: &str) -> Option<u16> {
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
        vips.extend(l.chains.vips.iter().copied());
        inbound.extend(l.chains.inbound_ports.iter().copied());
        rejected.extend(l.chains.rejected.iter().map(|r| RejectedPrefix {
            listener: name.to_owned(),
            raw: r.raw.clone(),
            reason: r.reason.clone(),
        }));
    }
    ListenerSummary {
        vips: vips.into_iter().collect(),
        rejected: rejected.into_iter().collect(),
        interception,
        inbound_ports: inbound.into_iter().collect(),
    }
}
