//! Builders for the xDS resources Cloud Service Mesh serves, as plain prost values.
//!
//! The shapes follow what real Cloud Service Mesh dumps show (see docs/outside-world.md#bootstrap-and-listeners): one interception
//! listener named `TRAFFICDIRECTOR_INTERCEPTION_LISTENER` with `use_original_dst` and one filter
//! chain per service VIP, routes over RDS named `URL_MAP/<project>.<name>` and
//! `inbound|default_inbound_config-<port>`. Routes answer with a `direct_response` that names the
//! service, so a test proves interception with one real HTTP request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, CidrRange, ConfigSource, DataSource, HealthCheck,
    SocketAddress, address, config_source, data_source, health_check, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    AdditionalAddress, Filter, FilterChain, FilterChainMatch, Listener, filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route,
    route_action, route_match,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::{self as pbuf, Any, BoolValue, UInt32Value};
use envoy_types::util::pack_any;

/// The name Cloud Service Mesh gives its interception listener.
pub const INTERCEPTION_LISTENER: &str = "TRAFFICDIRECTOR_INTERCEPTION_LISTENER";

/// A protobuf `Duration` from a std one.
pub fn pb_duration(d: Duration) -> pbuf::Duration {
    pbuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A TCP socket address as Envoy wants it.
pub fn socket_address(ip: IpAddr, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// "Take this resource from the ADS stream", as Cloud Service Mesh's resources say.
pub fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// Where the traffic of a service goes once Envoy has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Envoy itself answers 200 with [`ServiceVip::response_body`]: proof the request was
    /// intercepted, with no upstream needed.
    DirectResponse,
    /// Route to this cluster (the test serves the cluster too).
    Cluster(String),
}

/// One service of the mesh: a VIP (or CIDR) and port, matched by its own filter chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceVip {
    pub name: String,
    pub address: IpAddr,
    pub prefix_len: u32,
    pub port: u16,
    pub backend: Backend,
}

impl ServiceVip {
    /// A single-address VIP (`/32` or `/128`) named after its address and port.
    pub fn new(address: IpAddr, port: u16) -> Self {
        let prefix_len = if address.is_ipv4() { 32 } else { 128 };
        ServiceVip {
            name: default_service_name(address, prefix_len, port),
            address,
            prefix_len,
            port,
            backend: Backend::DirectResponse,
        }
    }

    /// Parses `VIP:PORT`, `VIP/LEN:PORT`, `[V6]:PORT` or `[V6/LEN]:PORT`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?}: expected VIP:PORT"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{text:?}: bad port {port:?}"))?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner
                .strip_suffix(']')
                .ok_or_else(|| format!("{text:?}: unbalanced brackets"))?,
            None => host,
        };
        let (addr, len) = match host.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (host, None),
        };
        let address: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?}: {addr:?} is not an IP address"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            Some(l) => l
                .parse::<u32>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{text:?}: bad prefix length {l:?}"))?,
            None => max,
        };
        Ok(ServiceVip {
            name: default_service_name(address, prefix_len, port),
            address,
            prefix_len,
            port,
            backend: Backend::DirectResponse,
        })
    }

    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Route to `cluster` instead of answering directly.
    pub fn to_cluster(mut self, cluster: impl Into<String>) -> Self {
        self.backend = Backend::Cluster(cluster.into());
        self
    }

    /// `10.0.0.1/32`, `fd00::/64`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix_len)
    }

    /// What the direct response says: names the service, its VIP and port.
    pub fn response_body(&self) -> String {
        format!(
            "service={} vip={} port={}\n",
            self.name,
            self.cidr(),
            self.port
        )
    }

    /// Cloud Service Mesh names route configurations after the URL map.
    pub fn route_config_name(&self, project_number: &str) -> String {
        format!("URL_MAP/{project_number}.{}", self.name)
    }
}

fn default_service_name(address: IpAddr, prefix_len: u32, port: u16) -> String {
    let full = if address.is_ipv4() { 32 } else { 128 };
    let addr: String = address
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if prefix_len == full {
        format!("service-{addr}-{port}")
    } else {
        format!("service-{addr}-{prefix_len}-{port}")
    }
}

/// The route configuration name Cloud Service Mesh uses for an inbound serving port.
pub fn inbound_route_config_name(port: u16) -> String {
    format!("inbound|default_inbound_config-{port}")
}

/// What an inbound filter chain's direct response says.
pub fn inbound_response_body(port: u16) -> String {
    format!("inbound port={port}\n")
}

/// The interception listener and its routes, as Cloud Service Mesh would serve them to one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptionSpec {
    /// `TRAFFICDIRECTOR_INTERCEPTION_PORT`, 15001 by default.
    pub proxy_port: u16,
    /// Used in route configuration names.
    pub project_number: String,
    pub services: Vec<ServiceVip>,
    /// Inbound filter chains, one per port.
    pub serving_ports: Vec<u16>,
    /// A file access log on every filter chain (Envoy rejects the listener when it cannot open
    /// the file: the ACCESS_LOG_NOT_WRITABLE scenario).
    pub access_log_path: Option<String>,
    /// Also listen on `[::]:<proxy port>`; by default only when some VIP is IPv6.
    pub listen_ipv6: Option<bool>,
}

impl InterceptionSpec {
    pub fn new(proxy_port: u16, project_number: impl Into<String>) -> Self {
        InterceptionSpec {
            proxy_port,
            project_number: project_number.into(),
            services: Vec::new(),
            serving_ports: Vec::new(),
            access_log_path: None,
            listen_ipv6: None,
        }
    }

    pub fn service(mut self, service: ServiceVip) -> Self {
        self.services.push(service);
        self
    }

    pub fn serving_port(mut self, port: u16) -> Self {
        self.serving_ports.push(port);
        self
    }

    pub fn access_log(mut self, path: impl Into<String>) -> Self {
        self.access_log_path = Some(path.into());
        self
    }

    /// Adds a service unless one with the same prefix and port is there; true if added.
    pub fn add_service(&mut self, service: ServiceVip) -> bool {
        let dup = self.services.iter().any(|s| {
            s.address == service.address
                && s.prefix_len == service.prefix_len
                && s.port == service.port
        });
        if !dup {
            self.services.push(service);
        }
        !dup
    }

    /// Removes the services with this prefix and port; true if one was there.
    pub fn remove_service(&mut self, address: IpAddr, prefix_len: u32, port: u16) -> bool {
        let before = self.services.len();
        self.services
            .retain(|s| !(s.address == address && s.prefix_len == prefix_len && s.port == port));
        self.services.len() != before
    }

    /// `TRAFFICDIRECTOR_INTERCEPTION_LISTENER` on `0.0.0.0:<proxy port>`.
    pub fn listener(&self) -> Listener {
        let access_log = self.access_log_path.as_deref();
        let mut chains = Vec::new();
        for s in &self.services {
            chains.push(FilterChain {
                name: format!("{}:{}", s.cidr(), s.port),
                filter_chain_match: Some(FilterChainMatch {
                    prefix_ranges: vec![CidrRange {
                        address_prefix: s.address.to_string(),
                        prefix_len: Some(UInt32Value {
                            value: s.prefix_len,
                        }),
                    }],
                    destination_port: Some(UInt32Value {
                        value: u32::from(s.port),
                    }),
                    ..Default::default()
                }),
                filters: vec![http_connection_manager_filter(
                    &format!("outbound_{}", s.name),
                    &s.route_config_name(&self.project_number),
                    access_log,
                )],
                ..Default::default()
            });
        }
        for port in &self.serving_ports {
            chains.push(FilterChain {
                name: format!("inbound|{port}"),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(UInt32Value {
                        value: u32::from(*port),
                    }),
                    ..Default::default()
                }),
                filters: vec![http_connection_manager_filter(
                    &format!("inbound_{port}"),
                    &inbound_route_config_name(*port),
                    access_log,
                )],
                ..Default::default()
            });
        }
        let ipv6 = self
            .listen_ipv6
            .unwrap_or_else(|| self.services.iter().any(|s| s.address.is_ipv6()));
        let additional_addresses = if ipv6 {
            vec![AdditionalAddress {
                address: Some(socket_address(
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    self.proxy_port,
                )),
                ..Default::default()
            }]
        } else {
            Vec::new()
        };
        Listener {
            name: INTERCEPTION_LISTENER.into(),
            address: Some(socket_address(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                self.proxy_port,
            )),
            additional_addresses,
            use_original_dst: Some(BoolValue { value: true }),
            filter_chains: chains,
            ..Default::default()
        }
    }

    /// The route configurations the listener's filter chains ask for over RDS.
    pub fn route_configurations(&self) -> Vec<RouteConfiguration> {
        let mut routes = Vec::new();
        for s in &self.services {
            let action = match &s.backend {
                Backend::DirectResponse => direct_response(&s.response_body()),
                Backend::Cluster(c) => route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(c.clone())),
                    ..Default::default()
                }),
            };
            routes.push(single_route_config(
                &s.route_config_name(&self.project_number),
                action,
            ));
        }
        for port in &self.serving_ports {
            routes.push(single_route_config(
                &inbound_route_config_name(*port),
                direct_response(&inbound_response_body(*port)),
            ));
        }
        routes
    }
}

fn direct_response(body: &str) -> route::Action {
    route::Action::DirectResponse(DirectResponseAction {
        status: 200,
        body: Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString(body.to_owned())),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A route configuration with one catch-all virtual host and one `/` route.
pub fn single_route_config(name: &str, action: route::Action) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: format!("{name}-vh"),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(action),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A file access log as Cloud Service Mesh configures from `TRAFFICDIRECTOR_ACCESS_LOG_PATH`.
pub fn file_access_log(path: &str) -> AccessLog {
    AccessLog {
        name: "envoy.access_loggers.file".into(),
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(
            FileAccessLog {
                path: path.to_owned(),
                ..Default::default()
            },
        ))),
        ..Default::default()
    }
}

/// An HTTP connection manager network filter taking route configuration `route_config` from ADS.
pub fn http_connection_manager_filter(
    stat_prefix: &str,
    route_config: &str,
    access_log_path: Option<&str>,
) -> Filter {
    let hcm = HttpConnectionManager {
        stat_prefix: stat_prefix.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: route_config.to_owned(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        access_log: access_log_path.map(file_access_log).into_iter().collect(),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
    }
}

/// A listener Envoy 1.40 rejects (two filter chains with the same match), for NACK scenarios.
pub fn rejected_listener(name: &str, port: u16) -> Listener {
    let chain = |n: &str| FilterChain {
        name: n.to_owned(),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(UInt32Value {
                value: u32::from(port),
            }),
            ..Default::default()
        }),
        filters: vec![http_connection_manager_filter(
            "rejected",
            &inbound_route_config_name(port),
            None,
        )],
        ..Default::default()
    };
    Listener {
        name: name.to_owned(),
        address: Some(socket_address(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
        filter_chains: vec![chain("first"), chain("second")],
        ..Default::default()
    }
}

/// An active health check for a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSpec {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// `GET path`, healthy on 200.
    Http { path: String },
    /// Healthy when a TCP connection opens.
    Tcp,
}

impl HealthCheckSpec {
    /// Fast checks (1 s, one failure is enough) so tests see the verdict quickly.
    pub fn http(path: impl Into<String>) -> Self {
        HealthCheckSpec {
            kind: HealthCheckKind::Http { path: path.into() },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 1,
            healthy_threshold: 1,
        }
    }

    pub fn tcp() -> Self {
        HealthCheckSpec {
            kind: HealthCheckKind::Tcp,
            ..Self::http("/")
        }
    }

    pub fn health_check(&self) -> HealthCheck {
        let checker = match &self.kind {
            HealthCheckKind::Http { path } => {
                health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
                    path: path.clone(),
                    ..Default::default()
                })
            }
            HealthCheckKind::Tcp => {
                health_check::HealthChecker::TcpHealthCheck(health_check::TcpHealthCheck::default())
            }
        };
        HealthCheck {
            timeout: Some(pb_duration(self.timeout)),
            interval: Some(pb_duration(self.interval)),
            unhealthy_threshold: Some(UInt32Value {
                value: self.unhealthy_threshold,
            }),
            healthy_threshold: Some(UInt32Value {
                value: self.healthy_threshold,
            }),
            no_traffic_interval: Some(pb_duration(self.interval)),
            health_checker: Some(checker),
            ..Default::default()
        }
    }
}

/// How a cluster gets its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// Endpoints inline in the cluster (`STATIC`).
    Static,
    /// Endpoints over ADS (`EDS`), as Cloud Service Mesh serves them; serve
    /// [`ClusterSpec::load_assignment`] too.
    Eds,
}

/// A cluster and its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
    pub discovery: Discovery,
    pub health_check: Option<HealthCheckSpec>,
    pub connect_timeout: Duration,
}

impl ClusterSpec {
    pub fn new(name: impl Into<String>, endpoints: Vec<SocketAddr>, discovery: Discovery) -> Self {
        ClusterSpec {
            name: name.into(),
            endpoints,
            discovery,
            health_check: None,
            connect_timeout: Duration::from_secs(1),
        }
    }

    pub fn with_health_check(mut self, hc: HealthCheckSpec) -> Self {
        self.health_check = Some(hc);
        self
    }

    pub fn cluster(&self) -> Cluster {
        let (kind, load_assignment, eds) = match self.discovery {
            Discovery::Static => (
                cluster::DiscoveryType::Static,
                Some(self.load_assignment()),
                None,
            ),
            Discovery::Eds => (
                cluster::DiscoveryType::Eds,
                None,
                Some(cluster::EdsClusterConfig {
                    eds_config: Some(ads_config_source()),
                    service_name: String::new(),
                }),
            ),
        };
        Cluster {
            name: self.name.clone(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(kind as i32)),
            connect_timeout: Some(pb_duration(self.connect_timeout)),
            load_assignment,
            eds_cluster_config: eds,
            health_checks: self
                .health_check
                .iter()
                .map(HealthCheckSpec::health_check)
                .collect(),
            ..Default::default()
        }
    }

    /// The endpoints, as EDS serves them (also inlined for `Static`).
    pub fn load_assignment(&self) -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: self.name.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: self
                    .endpoints
                    .iter()
                    .map(|a| LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(socket_address(a.ip(), a.port())),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }
}

/// Packs a resource for a discovery response.
pub fn to_any<T: prost::Message + prost::Name>(value: T) -> Any {
    pack_any(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn parses_service_forms() {
        let s = ServiceVip::parse("10.0.0.1:80").unwrap();
        assert_eq!((s.cidr(), s.port), ("10.0.0.1/32".to_owned(), 80));
        let s = ServiceVip::parse("10.1.0.0/16:8080").unwrap();
        assert_eq!((s.cidr(), s.port), ("10.1.0.0/16".to_owned(), 8080));
        let s = ServiceVip::parse("[fd00::1]:443").unwrap();
        assert_eq!(s.cidr(), "fd00::1/128");
        let s = ServiceVip::parse("[fd00::/64]:443").unwrap();
        assert_eq!(s.cidr(), "fd00::/64");
        for bad in [
            "",
            "10.0.0.1",
            "10.0.0.1:0",
            "10.0.0.1:x",
            "10.0.0.1/33:80",
            "[fd00::1:80",
            "host:80",
            "fd00::1",
        ] {
            assert!(ServiceVip::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn interception_listener_has_a_chain_per_vip_and_port() {
        let spec = InterceptionSpec::new(15001, "123")
            .service(ServiceVip::parse("10.0.0.1:80").unwrap())
            .service(ServiceVip::parse("[fd00::1]:80").unwrap())
            .serving_port(8080);
        let l = spec.listener();
        assert_eq!(l.name, INTERCEPTION_LISTENER);
        assert_eq!(l.use_original_dst, Some(BoolValue { value: true }));
        assert_eq!(l.filter_chains.len(), 3);
        assert_eq!(l.additional_addresses.len(), 1, "IPv6 VIP adds [::]");
        let m = l.filter_chains[0].filter_chain_match.as_ref().unwrap();
        assert_eq!(m.prefix_ranges[0].address_prefix, "10.0.0.1");
        assert_eq!(m.destination_port, Some(UInt32Value { value: 80 }));
        let names: Vec<String> = spec
            .route_configurations()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(
            names,
            [
                "URL_MAP/123.service-10-0-0-1-80",
                "URL_MAP/123.service-fd00--1-80",
                "inbound|default_inbound_config-8080"
            ]
        );
        // Round-trips through protobuf encoding.
        let back = Listener::decode(l.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn add_and_remove_services() {
        let mut spec = InterceptionSpec::new(15001, "1");
        let s = ServiceVip::parse("10.0.0.2:80").unwrap();
        assert!(spec.add_service(s.clone()));
        assert!(!spec.add_service(s.clone()));
        assert!(spec.remove_service(s.address, 32, 80));
        assert!(!spec.remove_service(s.address, 32, 80));
    }
}
