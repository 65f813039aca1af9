//! `/config_dump?resource=dynamic_listeners`: the dynamic listeners, with only the fields the
//! checks read.

use super::*;

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
    /// What its filter chains and default filter chain say, reduced as they are read.
    pub chains: ChainFacts,
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

/// What a listener's filter chains tell the checks, taken from each chain as it is parsed: the
/// VIPs of the outbound chains, the prefixes that are not usable networks, and the ports of
/// the inbound chains. Nothing else of a chain is read, and a mesh of a thousand services
/// sends a thousand chains: kept whole (name, raw prefixes, route names) they held ~350 bytes
/// of heap each for as long as Envoy's listeners stood still, where a VIP is an `IpNet`
/// (issue 13: the agent's footprint).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChainFacts {
    /// The outbound chains' `prefix_ranges` that [`parse_prefix`] accepts, in Envoy's order.
    pub vips: Vec<IpNet>,
    /// The outbound chains' `prefix_ranges` that it does not accept.
    pub rejected: Vec<RejectedRange>,
    /// The inbound chains' ports (route configuration `inbound|...`): from the route name
    /// `inbound|default_inbound_config-<port>` and from `destination_port`.
    pub inbound_ports: Vec<u16>,
}

/// A `prefix_ranges` entry that is not a usable IP network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRange {
    /// What Envoy had, as `address/len` text, sanitised and bounded.
    pub raw: String,
    pub reason: String,
}

impl ChainFacts {
    /// Adds what one filter chain says: an inbound chain (one of its HTTP connection managers
    /// routes with an `inbound|...` configuration) gives ports and no VIP.
    fn add(&mut self, raw: FilterChainRaw) {
        let (ranges, destination_port) = match raw.filter_chain_match {
            Some(m) => (m.prefix_ranges, m.destination_port),
            None => (Vec::new(), None),
        };
        let mut inbound = false;
        for tc in raw.filters.into_iter().filter_map(|f| f.typed_config) {
            if !tc.is_type(KnownType::Hcm) {
                continue;
            }
            let names = [tc.rds.and_then(|p| p.0), tc.route_config.and_then(|p| p.0)];
            for n in names.into_iter().flatten() {
                if n.starts_with(INBOUND_ROUTE_PREFIX) {
                    inbound = true;
                    self.inbound_ports.extend(inbound_route_port(&n));
                }
            }
        }
        if inbound {
            self.inbound_ports.extend(port_of(destination_port));
            return;
        }
        for p in ranges {
            let range = PrefixRange {
                address_prefix: p.address_prefix,
                prefix_len: p.prefix_len,
            };
            match parse_prefix(&range) {
                Ok(net) => self.vips.push(net),
                Err(reason) => self.rejected.push(RejectedRange {
                    raw: raw_prefix_text(&range),
                    reason,
                }),
            }
        }
    }
}

/// `filter_chain_match.prefix_ranges[]` as Envoy gave it, not yet validated: see [`parse_prefix`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixRange {
    pub address_prefix: Option<JsonLeaf>,
    pub prefix_len: Option<JsonLeaf>,
}

#[derive(Deserialize)]
pub(super) struct ListenersDumpRaw {
    #[serde(default)]
    configs: Vec<DynamicListenerRaw>,
}

#[derive(Deserialize)]
pub(super) struct DynamicListenerRaw {
    name: Option<String>,
    active_state: Option<ListenerStateRaw>,
    warming_state: Option<ListenerStateRaw>,
    draining_state: Option<ListenerStateRaw>,
    error_state: Option<ErrorStateRaw>,
}

#[derive(Deserialize)]
pub(super) struct ListenerStateRaw {
    version_info: Option<String>,
    last_updated: Option<String>,
    listener: Option<ListenerRaw>,
}

#[derive(Deserialize)]
pub(super) struct ErrorStateRaw {
    failed_configuration: Option<Pick<NameKey>>,
    last_update_attempt: Option<String>,
    details: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct ListenerRaw {
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
pub(super) struct AddressRaw {
    socket_address: Option<SocketAddressRaw>,
}

#[derive(Deserialize)]
pub(super) struct SocketAddressRaw {
    pub(super) address: Option<JsonLeaf>,
    pub(super) port_value: Option<JsonLeaf>,
}

#[derive(Deserialize)]
pub(super) struct FilterChainRaw {
    filter_chain_match: Option<FilterChainMatchRaw>,
    #[serde(default)]
    filters: Vec<FilterRaw>,
}

#[derive(Deserialize)]
pub(super) struct FilterChainMatchRaw {
    #[serde(default)]
    prefix_ranges: Vec<PrefixRangeRaw>,
    destination_port: Option<JsonLeaf>,
}

#[derive(Deserialize)]
pub(super) struct PrefixRangeRaw {
    address_prefix: Option<JsonLeaf>,
    prefix_len: Option<JsonLeaf>,
}

#[derive(Deserialize)]
pub(super) struct FilterRaw {
    name: Option<FilterName>,
    typed_config: Option<TypedConfigRaw>,
}

/// The few fields of a filter's `typed_config` we read; which ones mean something depends on
/// `@type`, and each tolerates any shape.
#[derive(Deserialize)]
pub(super) struct TypedConfigRaw {
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
pub(super) enum KnownType {
    Hcm,
    FileAccessLog,
    OriginalDst,
}

/// `@type`: one of [`KnownType`] (by suffix, whatever the API version prefix), or `None` for
/// any other value, text or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TypeUrl(Option<KnownType>);

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
pub(super) struct FilterName {
    original_dst: bool,
}

impl<'de> Deserialize<'de> for FilterName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let original_dst = matches!(d.deserialize_any(LeafVisitor)?, JsonLeafRef::Text(t) if t == ORIGINAL_DST_FILTER);
        Ok(FilterName { original_dst })
    }
}

pub(super) const HCM_TYPE: &str =
    ".extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub(super) const FILE_ACCESS_LOG_TYPE: &str = ".extensions.access_loggers.file.v3.FileAccessLog";
pub(super) const ORIGINAL_DST_FILTER: &str = "envoy.filters.listener.original_dst";
pub(super) const ORIGINAL_DST_TYPE: &str =
    ".extensions.filters.listener.original_dst.v3.OriginalDst";

pub(super) fn port_of(leaf: Option<JsonLeaf>) -> Option<u16> {
    leaf.and_then(|l| l.as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

pub(super) fn convert_listener(raw: ListenerRaw) -> Listener {
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
    let mut chains = ChainFacts::default();
    for chain in raw
        .filter_chains
        .into_iter()
        .chain(raw.default_filter_chain)
    {
        chains.add(chain);
    }
    Listener {
        name: raw.name.unwrap_or_default(),
        address,
        use_original_dst: raw.use_original_dst.unwrap_or(false),
        original_dst_filter,
        chains,
        access_log_paths,
    }
}

pub(super) fn convert_state(raw: ListenerStateRaw) -> ListenerState {
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

/// The last parse of the dynamic listeners, kept with a digest of the body it came from, so a
/// body byte-identical to the last one is not parsed again. The observer re-reads the
/// listeners at least once a minute even when Envoy's counters say nothing changed; with 1,000
/// VIPs that body is a megabyte, and parsing it again would build a second copy of the same
/// listeners beside the first (issue 13: the agent's footprint).
///
/// The digest is SipHash with keys drawn at random for this process (the length is compared
/// too): the admin's answers come from another program, and keyed, it cannot make two
/// different bodies look the same.
#[derive(Debug, Default)]
pub struct ListenerParses {
    keys: std::hash::RandomState,
    last: std::sync::Mutex<Option<LastListenerParse>>,
    reused: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct LastListenerParse {
    len: usize,
    digest: u64,
    listeners: std::sync::Arc<Vec<DynamicListener>>,
}

impl ListenerParses {
    /// `body` parsed ([`parse_listeners`]), or the last parse again when `body` is the same
    /// bytes as the last body parsed successfully.
    pub fn parse(&self, body: &[u8]) -> Result<std::sync::Arc<Vec<DynamicListener>>, AdminError> {
        use std::hash::BuildHasher;
        let digest = self.keys.hash_one(body);
        if let Ok(last) = self.last.lock()
            && let Some(l) = last.as_ref()
            && l.len == body.len()
            && l.digest == digest
        {
            self.reused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(std::sync::Arc::clone(&l.listeners));
        }
        // The old parse is let go first: the new one is not built beside it.
        self.forget();
        let parsed = parse_listeners(body).map(std::sync::Arc::new);
        if let (Ok(listeners), Ok(mut last)) = (&parsed, self.last.lock()) {
            *last = Some(LastListenerParse {
                len: body.len(),
                digest,
                listeners: std::sync::Arc::clone(listeners),
            });
        }
        parsed
    }

    /// Drops the kept parse (the admin did not answer: nothing to compare the next body with).
    pub fn forget(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = None;
        }
    }

    /// How many bodies were answered with the last parse.
    pub fn reused(&self) -> u64 {
        self.reused.load(std::sync::atomic::Ordering::Relaxed)
    }
}
