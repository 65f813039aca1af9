//! The Envoy admin observer against the real Envoy, and its parsers against outputs captured
//! from it (tests/fixtures/envoy/<version>-<name>) and against hostile input.
//!
//! Re-capturing the fixtures (e.g. for a new Envoy version): run the live tests with
//! `SPA_CAPTURE_FIXTURES=1` (and `SPA_ENVOY_BIN=/path/to/envoy` for another version):
//!
//! ```text
//! SPA_CAPTURE_FIXTURES=1 cargo test --test it envoy_admin::live_
//! ```
//!
//! Each live test then writes what Envoy answered to `tests/fixtures/envoy/<x.y.z>-<name>`,
//! and the fixture tests below check every version found for each name.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde_json::{Value, json};
use service_proxy_agent::config::parse_admin_url;
use service_proxy_agent::observe::envoy_admin::*;
use testkit::envoy::{Envoy, EnvoyConfig, envoy_version, minimal_bootstrap};

const NODE_ID: &str = "projects/123/networks/default/nodes/4f1e7d2a";
const MAX_BODY: usize = 4 << 20;

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

fn node_metadata() -> Value {
    json!({
        "TRAFFICDIRECTOR_NETWORK_NAME": "default",
        "TRAFFICDIRECTOR_GCP_PROJECT_NUMBER": "123",
        "TRAFFICDIRECTOR_INTERCEPTION_PORT": "15001",
    })
}

fn client(envoy: &Envoy) -> AdminClient {
    let url = parse_admin_url(&envoy.admin_url()).unwrap();
    AdminClient::new(&url, Duration::from_secs(5), MAX_BODY)
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/envoy")
}

/// `x.y.z` of the Envoy under test.
fn version_number() -> String {
    let v = envoy_version().expect("real Envoy is needed: run tests/setup-envoy.sh");
    parse_version_number(&v)
        .unwrap_or_else(|| panic!("cannot read a version number in {v:?}"))
        .to_string()
}

/// The fixture re-capture helper: with `SPA_CAPTURE_FIXTURES=1`, writes what the live Envoy
/// answered to `tests/fixtures/envoy/<x.y.z>-<name>`; otherwise does nothing.
fn capture(name: &str, body: &[u8]) {
    if std::env::var_os("SPA_CAPTURE_FIXTURES").is_none_or(|v| v != "1") {
        return;
    }
    let dir = fixtures_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}-{name}", version_number()));
    std::fs::write(&path, body).unwrap();
    eprintln!("captured {}", path.display());
}

/// Every captured version of a fixture; fails if there is none.
fn fixtures(name: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(fixtures_dir()).unwrap() {
        let e = e.unwrap();
        let file = e.file_name().to_string_lossy().into_owned();
        if let Some((version, rest)) = file.split_once('-')
            && rest == name
        {
            out.push((version.to_owned(), std::fs::read(e.path()).unwrap()));
        }
    }
    assert!(
        !out.is_empty(),
        "no fixture *-{name} in tests/fixtures/envoy"
    );
    out.sort();
    out
}

fn admin_body(admin: SocketAddr, path: &str) -> String {
    let (status, body) = testkit::envoy::http_get(admin, path).unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// A blocking admin POST (e.g. `/healthcheck/fail`); testkit only has GET.
fn admin_post(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // One write: `write!` sends each formatted piece as its own segment.
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Polls `f` until it returns `Some`, for at most `timeout`.
async fn eventually<T, F, Fut>(
    log: &dyn Fn() -> String,
    what: &str,
    timeout: Duration,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            let log = log();
            let tail = &log[log.len().saturating_sub(4000)..];
            panic!("{what} not reached within {timeout:?}; Envoy's log ends with:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback port with nothing listening (bound then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory the Envoy user can read, for file-based xDS.
fn xds_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::Builder::new()
        .prefix("spa-admin-xds-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Replaces `<dir>/<file>` atomically (write + rename), as Envoy's watched directory expects.
fn write_resources(dir: &Path, file: &str, resources: Vec<Value>) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&json!({ "resources": resources })).unwrap(),
    )
    .unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

fn path_source(dir: &Path, file: &str) -> Value {
    json!({
        "path_config_source": {
            "path": dir.join(file),
            "watched_directory": {"path": dir},
        },
        "resource_api_version": "V3",
    })
}

fn with_lds(mut bootstrap: Value, dir: &Path) -> Value {
    bootstrap["dynamic_resources"] = json!({ "lds_config": path_source(dir, "lds.json") });
    bootstrap
}

fn router() -> Value {
    json!([{
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }])
}

fn route_config(name: &str) -> Value {
    json!({
        "name": name,
        "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]
        }]
    })
}

/// An HTTP connection manager answering 200 from an inline route configuration.
fn hcm_inline(route_name: &str) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "spa",
            "route_config": route_config(route_name),
            "http_filters": router(),
        }
    })
}

/// An HTTP connection manager taking its routes over file-based RDS.
fn hcm_rds(route_name: &str, rds_dir: &Path) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "spa_rds",
            "rds": {"route_config_name": route_name, "config_source": path_source(rds_dir, "rds.json")},
            "http_filters": router(),
        }
    })
}

fn vip_chain(prefix: &str, len: Option<u32>, port: Option<u32>, route: &str) -> Value {
    let mut range = json!({ "address_prefix": prefix });
    if let Some(l) = len {
        range["prefix_len"] = json!(l);
    }
    let mut m = json!({ "prefix_ranges": [range] });
    if let Some(p) = port {
        m["destination_port"] = json!(p);
    }
    json!({ "filter_chain_match": m, "filters": [hcm_inline(route)] })
}

fn listener(name: &str, port: u16, original_dst: bool, chains: Vec<Value>) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "use_original_dst": original_dst,
        "filter_chains": chains,
    })
}

/// The interception listener as Cloud Service Mesh shapes it: one chain per service VIP, an
/// IPv6 VIP, a CIDR with host bits set, what Envoy accepts but we must not (prefix_len 99 on
/// IPv4, no prefix_len at all), and an inbound chain for serving port 8080.
fn interception_listener(port: u16) -> Value {
    let mut inbound = json!({
        "filter_chain_match": {"destination_port": 8080},
        "filters": [hcm_inline("inbound|default_inbound_config-8080")],
    });
    inbound["name"] = json!("inbound-8080");
    listener(
        INTERCEPTION_LISTENER_NAME,
        port,
        true,
        vec![
            vip_chain("10.0.0.1", Some(32), Some(80), "URL_MAP/123.service-a"),
            vip_chain("10.0.0.2", Some(32), Some(80), "URL_MAP/123.service-b"),
            vip_chain("fd00::5", Some(128), Some(80), "URL_MAP/123.service-v6"),
            vip_chain("10.1.2.3", Some(24), None, "URL_MAP/123.service-cidr"),
            vip_chain("10.0.0.9", Some(99), Some(80), "URL_MAP/123.bad-len"),
            vip_chain("10.7.0.0", None, Some(80), "URL_MAP/123.no-len"),
            inbound,
        ],
    )
}

/// A listener with one chain for `prefix`/16 served by the connection manager `hcm`.
fn hcm_listener(name: &str, port: u16, prefix: &str, hcm: Value) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "filter_chain_match": {"prefix_ranges": [{"address_prefix": prefix, "prefix_len": 16}]},
            "filters": [hcm],
        }],
    })
}

/// An HTTP connection manager whose routes come over gRPC from a control plane that is down,
/// with no initial-fetch timeout: its listener stays warming.
fn hcm_rds_unreachable(route_name: &str) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "spa_warming",
            "rds": {"route_config_name": route_name, "config_source": {
                "api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_down"}}]},
                "resource_api_version": "V3",
                "initial_fetch_timeout": "0s",
            }},
            "http_filters": router(),
        }
    })
}

/// A static HTTP/2 cluster to a closed port, as a control plane that never answers.
fn xds_down_cluster() -> Value {
    json!({
        "name": "xds_down", "type": "STATIC", "connect_timeout": "0.25s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "xds_down", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": closed_port()}}}}]}]}
    })
}

fn route_resource(name: &str) -> Value {
    let mut r = route_config(name);
    r["@type"] = json!("type.googleapis.com/envoy.config.route.v3.RouteConfiguration");
    r
}

fn find<'a>(listeners: &'a [DynamicListener], name: &str) -> &'a DynamicListener {
    listeners
        .iter()
        .find(|l| l.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no dynamic listener {name}: {listeners:#?}"))
}

// ------------------------------------------------------------------------------------------
// Checks shared by the live tests and the fixture tests
// ------------------------------------------------------------------------------------------

fn check_server_info(info: &ServerInfo) {
    assert!(
        info.version_number().is_some(),
        "version {:?} has no x.y.z",
        info.version
    );
    assert!(info.version.contains("/RELEASE/"), "{}", info.version);
    assert_eq!(info.node.id, NODE_ID);
    assert_eq!(info.node.cluster, "spa-test");
    assert_eq!(
        info.node.metadata_str("TRAFFICDIRECTOR_GCP_PROJECT_NUMBER"),
        Some("123")
    );
    assert_eq!(
        info.node.metadata_str("TRAFFICDIRECTOR_NETWORK_NAME"),
        Some("default")
    );
    assert_eq!(
        info.node.metadata_str("TRAFFICDIRECTOR_INTERCEPTION_PORT"),
        Some("15001")
    );
    assert!(info.uptime_current_epoch.is_some());
    assert!(
        info.command_line_options
            .config_path
            .ends_with("bootstrap.json")
    );
    assert!(info.command_line_options.log_path.ends_with("envoy.log"));
    assert!(info.command_line_options.log_format.contains("%v"));
    assert_eq!(
        parse_proto_duration(&info.command_line_options.file_flush_interval),
        Some(Duration::from_millis(200))
    );
}

/// The interception scenario, active: VIPs normalised, hostile prefixes rejected with reasons,
/// the interception listener and the inbound port found.
fn check_vips(listeners: &[DynamicListener], interception_port: Option<u16>) {
    let l = find(listeners, INTERCEPTION_LISTENER_NAME);
    let active = &l
        .active
        .as_ref()
        .expect("interception listener is active")
        .listener;
    assert!(active.use_original_dst);
    // Seven chains: four VIPs, two prefixes rejected, one inbound chain (its route name's port
    // and its destination_port, both 8080).
    let chains = &active.chains;
    let vips: Vec<String> = chains.vips.iter().map(ToString::to_string).collect();
    assert_eq!(
        vips,
        ["10.0.0.1/32", "10.0.0.2/32", "fd00::5/128", "10.1.2.0/24"]
    );
    assert_eq!(chains.rejected.len(), 2, "{:?}", chains.rejected);
    assert_eq!(chains.inbound_ports, [8080, 8080]);

    let s = summarize_listeners(listeners);
    let vips: Vec<String> = s.vips.iter().map(ToString::to_string).collect();
    assert!(vips.contains(&"10.0.0.1/32".to_owned()), "{vips:?}");
    assert!(vips.contains(&"10.0.0.2/32".to_owned()), "{vips:?}");
    assert!(vips.contains(&"fd00::5/128".to_owned()), "{vips:?}");
    assert!(vips.contains(&"10.1.2.0/24".to_owned()), "{vips:?}");
    assert!(
        !vips
            .iter()
            .any(|v| v.starts_with("10.0.0.9") || v.starts_with("10.7."))
    );
    let rejected: Vec<(&str, &str)> = s
        .rejected
        .iter()
        .map(|r| (r.raw.as_str(), r.reason.as_str()))
        .collect();
    assert!(
        rejected
            .iter()
            .any(|(raw, why)| *raw == "10.0.0.9/99" && why.contains("above 32")),
        "{rejected:?}"
    );
    assert!(
        rejected
            .iter()
            .any(|(raw, why)| *raw == "10.7.0.0" && why.contains("/0")),
        "{rejected:?}"
    );
    assert!(
        s.rejected
            .iter()
            .all(|r| r.listener == INTERCEPTION_LISTENER_NAME)
    );
    let i = s.interception.expect("interception listener");
    assert_eq!(i.name, INTERCEPTION_LISTENER_NAME);
    match interception_port {
        Some(p) => assert_eq!(i.port, Some(p)),
        None => assert!(i.port.is_some()),
    }
    assert_eq!(s.inbound_ports, [8080]);
}

/// After the rejected update: the listener keeps serving its last good configuration and gains
/// `error_state`; a nameless entry holds the same error; no hostile text reaches the VIPs.
fn check_rejected(listeners: &[DynamicListener]) {
    let l = find(listeners, INTERCEPTION_LISTENER_NAME);
    assert!(l.active.is_some(), "keeps its active state");
    let err = l.error.as_ref().expect("error_state");
    assert_eq!(
        err.failed_listener.as_deref(),
        Some(INTERCEPTION_LISTENER_NAME)
    );
    assert!(
        err.details
            .contains("malformed IP address: 10.0.0.1 -j ACCEPT"),
        "{}",
        err.details
    );
    assert!(err.last_update_attempt.is_some());
    let nameless: Vec<_> = listeners.iter().filter(|l| l.is_nameless_error()).collect();
    assert!(!nameless.is_empty(), "Envoy adds a nameless error entry");
    assert!(
        nameless
            .iter()
            .any(|l| l.error.as_ref().unwrap().details == err.details)
    );
    let s = summarize_listeners(listeners);
    assert!(s.vips.iter().all(|v| !v.to_string().contains(' ')));
    assert!(s.vips.iter().any(|v| v.to_string() == "10.0.0.1/32"));
    // The rejected text lives only in the error state.
    assert!(!s.rejected.iter().any(|r| r.raw.contains("-j")));
}

/// The access log scenario: Envoy (unprivileged) refused a listener whose log it cannot open.
fn check_access_log_denied(listeners: &[DynamicListener], path: Option<&str>) {
    let l = find(listeners, "with-access-log");
    assert!(l.active.is_none() && l.warming.is_none());
    let err = l.error.as_ref().expect("error_state");
    assert_eq!(err.failed_listener.as_deref(), Some("with-access-log"));
    assert!(
        err.details.contains("unable to open file '"),
        "{}",
        err.details
    );
    assert!(
        err.details.ends_with("': Permission denied"),
        "{}",
        err.details
    );
    if let Some(p) = path {
        assert!(err.details.contains(p), "{}", err.details);
    }
    assert!(listeners.iter().any(|l| l.is_nameless_error()));
    // The other listener of the same update is unaffected.
    let ok = find(listeners, "plain");
    assert!(ok.active.is_some() && ok.error.is_none());
}

fn check_clusters(clusters: &[ClusterStatus]) {
    let get = |n: &str| {
        clusters
            .iter()
            .find(|c| c.name == n)
            .unwrap_or_else(|| panic!("no cluster {n}"))
    };
    let dead = get("hc_dead");
    assert_eq!(dead.hosts.len(), 2);
    assert_eq!(dead.healthy_hosts(), 0);
    assert!(
        dead.hosts
            .iter()
            .all(|h| h.health.failed_active_health_check)
    );
    assert!(
        dead.hosts
            .iter()
            .all(|h| h.health.eds_health_status.as_deref() == Some("HEALTHY"))
    );
    assert!(dead.hosts[0].address.starts_with("127.0.0.1:"));
    let alive = get("hc_alive");
    assert_eq!(alive.healthy_hosts(), 1);
    assert_eq!(
        alive.hosts[0].health,
        HostHealth {
            eds_health_status: Some("HEALTHY".into()),
            ..HostHealth::default()
        }
    );
    let eds = get("eds_status");
    assert_eq!(eds.hosts.len(), 3);
    assert_eq!(eds.unhealthy_hosts(), 1);
    let statuses: Vec<_> = eds
        .hosts
        .iter()
        .map(|h| h.health.eds_health_status.clone().unwrap_or_default())
        .collect();
    assert_eq!(statuses, ["HEALTHY", "UNHEALTHY", "DEGRADED"]);
    let v6 = get("v6");
    assert_eq!(v6.hosts[0].address, "[::1]:9");
}

// ------------------------------------------------------------------------------------------
// Live: the real Envoy
// ------------------------------------------------------------------------------------------

/// A poll's reads share one connection, kept open until released: Envoy's own count of admin
/// connections says so (each raw read of the count is a connection too).
#[tokio::test]
async fn a_polls_reads_share_one_kept_connection() {
    let envoy = Envoy::start(EnvoyConfig::new(minimal_bootstrap(
        NODE_ID,
        node_metadata(),
    )))
    .expect("start real Envoy");
    let c = client(&envoy);
    let small = c.with_max_body(1 << 20);
    let connections = || -> u64 {
        let path = format!(
            "/stats?filter={}",
            urlencode("^http\\.admin\\.downstream_cx_total$")
        );
        let body = admin_body(envoy.admin_addr(), &path);
        body.lines()
            .find_map(|l| l.strip_prefix("http.admin.downstream_cx_total: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no http.admin.downstream_cx_total in {body:?}"))
    };
    let before = connections();
    for _ in 0..3 {
        c.server_info().await.unwrap();
        small.stats().await.unwrap();
        c.dynamic_listeners().await.unwrap();
        c.clusters().await.unwrap();
    }
    assert!(c.holds_connection());
    // Twelve reads on one connection, and the count's own read.
    assert_eq!(connections(), before + 2);
    c.release();
    assert!(!small.holds_connection());
    c.server_info().await.unwrap();
    assert_eq!(connections(), before + 4);
}

#[tokio::test]
async fn live_server_info_ready_draining() {
    let envoy = Envoy::start(EnvoyConfig::new(minimal_bootstrap(
        NODE_ID,
        node_metadata(),
    )))
    .expect("start real Envoy");
    let c = client(&envoy);
    let ready = eventually(
        &|| envoy.log_text(),
        "LIVE",
        Duration::from_secs(20),
        || async { c.ready().await.ok().filter(|r| r.ready) },
    )
    .await;
    assert_eq!(ready.state, ServerState::Live);

    let info = c.server_info().await.unwrap();
    assert_eq!(
        info.version,
        envoy_version().unwrap(),
        "exact version string"
    );
    assert_eq!(info.state, ServerState::Live);
    check_server_info(&info);
    assert_eq!(
        info.command_line_options.log_path,
        envoy.log_path().to_str().unwrap()
    );
    capture(
        "server_info.json",
        admin_body(envoy.admin_addr(), PATH_SERVER_INFO).as_bytes(),
    );

    // /healthcheck/fail turns Envoy DRAINING: /ready answers 503 with the state.
    assert_eq!(admin_post(envoy.admin_addr(), "/healthcheck/fail"), 200);
    let ready = c.ready().await.unwrap();
    assert_eq!(
        ready,
        Readiness {
            ready: false,
            state: ServerState::Draining
        }
    );
    assert_eq!(c.server_info().await.unwrap().state, ServerState::Draining);
}

#[tokio::test]
async fn live_control_plane_down_initializing_then_live_with_timeouts() {
    let xds_port = closed_port();
    let mut b = minimal_bootstrap(NODE_ID, node_metadata());
    b["dynamic_resources"] = json!({
        "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                       "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
        "lds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "3s"},
        "cds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "3s"},
    });
    b["static_resources"] = json!({"clusters": [{
        "name": "xds", "type": "STATIC", "connect_timeout": "0.25s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": xds_port}}}}]}]}
    }]});
    let envoy = Envoy::start(EnvoyConfig::new(b)).expect("start real Envoy");
    let c = client(&envoy);

    let early = c.ready().await.unwrap();
    assert!(
        !early.ready,
        "not ready while waiting for the control plane"
    );
    assert!(
        matches!(
            early.state,
            ServerState::PreInitializing | ServerState::Initializing
        ),
        "{early:?}"
    );
    let info = c.server_info().await.unwrap();
    assert_eq!(info.state, early.state);

    // After the initial-fetch timeouts Envoy turns LIVE with nothing: /ready alone is not enough.
    eventually(
        &|| envoy.log_text(),
        "LIVE",
        Duration::from_secs(30),
        || async { c.ready().await.ok().filter(|r| r.ready) },
    )
    .await;
    let stats = c.stats().await.unwrap();
    assert_eq!(stats.control_plane_connected_state, Some(0));
    assert_eq!(stats.total_listeners_active, Some(0));
    assert_eq!(stats.lds_update_success, Some(0));
    assert_eq!(stats.lds_update_rejected, Some(0));
    assert_eq!(stats.cds_update_rejected, Some(0));
    // Each stream that could not open counts as a failed fetch: what tells two readings of
    // connected_state 1 in separate retries from one held stream (History::update).
    assert!(
        stats.cds_update_failure.is_some_and(|n| n >= 1),
        "{stats:?}"
    );
    assert_eq!(stats.init_fetch_timeout_total, 2);
    assert_eq!(
        stats.init_fetch_timeouts.keys().collect::<Vec<_>>(),
        [
            "cluster_manager.cds.init_fetch_timeout",
            "listener_manager.lds.init_fetch_timeout"
        ]
    );
    assert_eq!(c.dynamic_listeners().await.unwrap(), []);
    let path = format!("/stats?filter={}", urlencode(STATS_FILTER));
    capture(
        "stats-control-plane-down.txt",
        admin_body(envoy.admin_addr(), &path).as_bytes(),
    );
    capture(
        "config_dump-dynamic_listeners-none.json",
        admin_body(envoy.admin_addr(), PATH_DYNAMIC_LISTENERS).as_bytes(),
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn live_dynamic_listeners_vips_then_rejected_update() {
    let lds = xds_dir();
    let rds = xds_dir();
    let port = closed_port();
    let old_port = closed_port();
    write_resources(
        rds.path(),
        "rds.json",
        vec![route_resource("URL_MAP/123.via-rds")],
    );
    write_resources(
        lds.path(),
        "lds.json",
        vec![
            interception_listener(port),
            listener(
                "old",
                old_port,
                false,
                vec![vip_chain("10.9.0.1", Some(32), None, "URL_MAP/123.old")],
            ),
        ],
    );
    let mut b = with_lds(minimal_bootstrap(NODE_ID, node_metadata()), lds.path());
    b["static_resources"] = json!({ "clusters": [xds_down_cluster()] });
    let envoy = Envoy::start(EnvoyConfig::new(b)).expect("start real Envoy");
    let c = client(&envoy);
    let listeners = eventually(
        &|| envoy.log_text(),
        "two active listeners",
        Duration::from_secs(20),
        || async {
            c.dynamic_listeners()
                .await
                .ok()
                .filter(|l| l.iter().filter(|l| l.active.is_some()).count() == 2)
        },
    )
    .await;
    check_vips(&listeners, Some(port));
    assert!(
        summarize_listeners(&listeners)
            .vips
            .iter()
            .any(|v| v.to_string() == "10.9.0.1/32")
    );
    // Nothing changed since: Envoy answers the same bytes, and the last parse is handed back
    // instead of a second copy of the same listeners (issue 13: the agent's footprint).
    let parses = ListenerParses::default();
    let first = c.dynamic_listeners_with(&parses).await.unwrap();
    assert_eq!(*first, listeners);
    let again = c.dynamic_listeners_with(&parses).await.unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&first, &again),
        "Envoy's unchanged listeners were parsed again"
    );
    assert_eq!(parses.reused(), 1);
    capture(
        "config_dump-dynamic_listeners-vips.json",
        admin_body(envoy.admin_addr(), PATH_DYNAMIC_LISTENERS).as_bytes(),
    );

    // Second update: "old" removed (draining), a listener over RDS (active, route name from
    // `rds`), one waiting on a route RDS does not have (warming).
    write_resources(
        lds.path(),
        "lds.json",
        vec![
            interception_listener(port),
            hcm_listener(
                "via-rds",
                closed_port(),
                "10.3.0.0",
                hcm_rds("URL_MAP/123.via-rds", rds.path()),
            ),
            hcm_listener(
                "warming",
                closed_port(),
                "10.4.0.0",
                hcm_rds_unreachable("URL_MAP/123.never"),
            ),
        ],
    );
    let listeners = eventually(
        &|| envoy.log_text(),
        "old draining",
        Duration::from_secs(20),
        || async {
            c.dynamic_listeners().await.ok().filter(|l| {
                l.iter()
                    .any(|l| l.name.as_deref() == Some("old") && l.draining.is_some())
                    && l.iter()
                        .any(|l| l.name.as_deref() == Some("via-rds") && l.active.is_some())
            })
        },
    )
    .await;
    check_states(&listeners);
    // The update changed the bytes: parsed afresh, not the first update's listeners again.
    let changed = c.dynamic_listeners_with(&parses).await.unwrap();
    assert!(!std::sync::Arc::ptr_eq(&first, &changed));
    assert!(
        changed
            .iter()
            .any(|l| l.name.as_deref() == Some("via-rds") && l.active.is_some()),
        "{changed:?}"
    );
    assert_eq!(parses.reused(), 1);
    capture(
        "config_dump-dynamic_listeners-states.json",
        admin_body(envoy.admin_addr(), PATH_DYNAMIC_LISTENERS).as_bytes(),
    );

    // Third update: a hostile prefix Envoy itself refuses.
    let mut bad = interception_listener(port);
    bad["filter_chains"][0]["filter_chain_match"]["prefix_ranges"][0]["address_prefix"] =
        json!("10.0.0.1 -j ACCEPT");
    write_resources(lds.path(), "lds.json", vec![bad]);
    let listeners = eventually(
        &|| envoy.log_text(),
        "error_state",
        Duration::from_secs(20),
        || async {
            c.dynamic_listeners()
                .await
                .ok()
                .filter(|l| l.iter().any(|l| l.error.is_some()))
        },
    )
    .await;
    check_rejected(&listeners);
    capture(
        "config_dump-dynamic_listeners-rejected.json",
        admin_body(envoy.admin_addr(), PATH_DYNAMIC_LISTENERS).as_bytes(),
    );
    let stats = c.stats().await.unwrap();
    assert_eq!(stats.lds_update_rejected, Some(1));
    assert_eq!(stats.lds_update_success, Some(2));
    assert_eq!(stats.control_plane_connected_state, None, "no ADS here");
    let path = format!("/stats?filter={}", urlencode(STATS_FILTER));
    capture(
        "stats-lds-rejected.txt",
        admin_body(envoy.admin_addr(), &path).as_bytes(),
    );
}

/// The second update of the listener scenario: active, warming and draining states.
fn check_states(listeners: &[DynamicListener]) {
    let old = find(listeners, "old");
    assert!(old.active.is_none());
    let draining = old.draining.as_ref().expect("draining_state");
    assert_eq!(draining.listener.name, "old");
    assert!(draining.last_updated.is_some());
    let via = find(listeners, "via-rds");
    let via = &via.active.as_ref().expect("active over RDS").listener;
    // Routed over RDS (`rds.route_config_name`), not inbound: its prefix is a VIP.
    assert_eq!(via.chains.vips, ["10.3.0.0/16".parse::<IpNet>().unwrap()]);
    assert!(via.chains.inbound_ports.is_empty());
    assert!(!via.is_interception());
    let warming = find(listeners, "warming");
    assert!(warming.active.is_none(), "{warming:#?}");
    assert!(warming.warming.is_some(), "{warming:#?}");
    let current = warming.current().unwrap();
    assert_eq!(current.name, "warming");
    assert_eq!(
        current.chains.vips,
        ["10.4.0.0/16".parse::<IpNet>().unwrap()]
    );
    // Only active listeners give VIPs: not the warming one's, nor the draining one's.
    let s = summarize_listeners(listeners);
    let vips: Vec<String> = s.vips.iter().map(ToString::to_string).collect();
    assert!(vips.contains(&"10.3.0.0/16".to_owned()), "{vips:?}");
    assert!(!vips.contains(&"10.4.0.0/16".to_owned()), "{vips:?}");
    assert!(!vips.contains(&"10.9.0.1/32".to_owned()), "{vips:?}");
}

#[tokio::test]
async fn live_access_log_not_writable_by_the_envoy_user() {
    use std::os::unix::fs::PermissionsExt;
    // A root-owned directory the unprivileged Envoy user may read but not write.
    let log_dir = tempfile::Builder::new()
        .prefix("spa-admin-logs-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(log_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root, to run Envoy as UID 65534 and have it refused a root-owned directory"
    );
    let access_log = log_dir.path().join("access.log");
    let lds = xds_dir();
    let mut with_log = listener(
        "with-access-log",
        closed_port(),
        false,
        vec![vip_chain("10.0.0.1", Some(32), None, "URL_MAP/123.a")],
    );
    with_log["access_log"] = json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": access_log,
        }
    }]);
    let plain = listener(
        "plain",
        closed_port(),
        false,
        vec![vip_chain("10.0.0.2", Some(32), None, "URL_MAP/123.b")],
    );
    write_resources(lds.path(), "lds.json", vec![with_log, plain]);
    let mut cfg = EnvoyConfig::new(with_lds(
        minimal_bootstrap(NODE_ID, node_metadata()),
        lds.path(),
    ));
    cfg.run_as = Some((65534, 65534));
    let envoy = Envoy::start(cfg).expect("start real Envoy as uid 65534");
    let url = parse_admin_url(&envoy.admin_url()).unwrap();
    let c = AdminClient::new(&url, Duration::from_secs(5), MAX_BODY);
    let listeners = eventually(
        &|| envoy.log_text(),
        "error_state",
        Duration::from_secs(20),
        || async {
            c.dynamic_listeners().await.ok().filter(|l| {
                l.iter().any(|l| l.error.is_some()) && l.iter().any(|l| l.active.is_some())
            })
        },
    )
    .await;
    check_access_log_denied(&listeners, access_log.to_str());
    assert!(!access_log.exists());
    capture(
        "config_dump-dynamic_listeners-access-log-denied.json",
        admin_body(envoy.admin_addr(), PATH_DYNAMIC_LISTENERS).as_bytes(),
    );
    let stats = c.stats().await.unwrap();
    assert_eq!(stats.lds_update_rejected, Some(1));
    assert_eq!(stats.total_listeners_active, Some(1));
}

#[tokio::test]
async fn live_clusters_health() {
    let dead = closed_port();
    // Accepts connections (the kernel completes them; nothing needs to accept()).
    let alive = TcpListener::bind("127.0.0.1:0").unwrap();
    let alive_port = alive.local_addr().unwrap().port();
    let endpoint = |ip: &str, port: u16| json!({"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}}});
    let hc = json!([{
        "timeout": "0.2s", "interval": "0.3s", "unhealthy_threshold": 1, "healthy_threshold": 1,
        "tcp_health_check": {}
    }]);
    let cluster = |name: &str, eps: Vec<Value>| {
        json!({
            "name": name, "type": "STATIC", "connect_timeout": "0.25s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": eps}]}
        })
    };
    let mut hc_dead = cluster(
        "hc_dead",
        vec![endpoint("127.0.0.1", dead), endpoint("127.0.0.2", dead)],
    );
    hc_dead["health_checks"] = hc.clone();
    let mut hc_alive = cluster("hc_alive", vec![endpoint("127.0.0.1", alive_port)]);
    hc_alive["health_checks"] = hc;
    let mut unhealthy = endpoint("127.0.0.1", 10);
    unhealthy["health_status"] = json!("UNHEALTHY");
    let mut degraded = endpoint("127.0.0.1", 11);
    degraded["health_status"] = json!("DEGRADED");
    let eds_status = cluster(
        "eds_status",
        vec![endpoint("127.0.0.1", 9), unhealthy, degraded],
    );
    let v6 = cluster("v6", vec![endpoint("::1", 9)]);
    let mut b = minimal_bootstrap(NODE_ID, node_metadata());
    b["static_resources"] = json!({"clusters": [hc_dead, hc_alive, eds_status, v6]});
    let envoy = Envoy::start(EnvoyConfig::new(b)).expect("start real Envoy");
    let c = client(&envoy);
    let clusters = eventually(
        &|| envoy.log_text(),
        "health checks settled",
        Duration::from_secs(20),
        || async {
            c.clusters().await.ok().filter(|cs| {
                let settled = |n: &str, want: bool| {
                    cs.iter().any(|c| {
                        c.name == n
                            && c.hosts
                                .iter()
                                .all(|h| h.health.failed_active_health_check == want)
                    })
                };
                settled("hc_dead", true) && settled("hc_alive", false)
            })
        },
    )
    .await;
    check_clusters(&clusters);
    capture(
        "clusters-health.json",
        admin_body(envoy.admin_addr(), PATH_CLUSTERS).as_bytes(),
    );
    drop(alive);
}

#[tokio::test]
async fn live_errors_unreachable_too_large_and_status() {
    // Nothing listens.
    let url = parse_admin_url(&format!("http://127.0.0.1:{}", closed_port())).unwrap();
    let e = AdminClient::new(&url, Duration::from_secs(2), MAX_BODY)
        .server_info()
        .await
        .unwrap_err();
    assert!(matches!(e, AdminError::Unreachable { .. }), "{e}");
    assert!(e.is_unreachable());

    // The real /server_info is ~125 KB: a small cap refuses it.
    let envoy = Envoy::start(EnvoyConfig::new(minimal_bootstrap(
        NODE_ID,
        node_metadata(),
    )))
    .expect("start real Envoy");
    let url = parse_admin_url(&envoy.admin_url()).unwrap();
    let small = AdminClient::new(&url, Duration::from_secs(5), 10_000);
    let e = small.server_info().await.unwrap_err();
    assert_eq!(
        e,
        AdminError::TooLarge {
            endpoint: PATH_SERVER_INFO,
            limit: 10_000
        }
    );
    assert!(!e.is_unreachable());
    // ... while the small answers fit.
    let ready = eventually(
        &|| envoy.log_text(),
        "LIVE",
        Duration::from_secs(20),
        || async { small.ready().await.ok().filter(|r| r.ready) },
    )
    .await;
    assert_eq!(ready.state, ServerState::Live);
    small.stats().await.unwrap();
}

// ------------------------------------------------------------------------------------------
// Hostile peers (a raw TCP server answering what it is told)
// ------------------------------------------------------------------------------------------

async fn serve(response: Vec<u8>) -> AdminClient {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let response = response.clone();
            // The same answer to each request on the connection (the client keeps its
            // connection open between requests), until the client closes it.
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while s.read(&mut buf).await.is_ok_and(|n| n > 0) {
                    let _ = s.write_all(&response).await;
                }
            });
        }
    });
    let url = parse_admin_url(&format!("http://127.0.0.1:{port}")).unwrap();
    AdminClient::new(&url, Duration::from_millis(800), 64 * 1024)
}

fn http_response(status: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[tokio::test]
async fn hostile_peers() {
    let c = serve(http_response("404 Not Found", b"no such path\nsecond line")).await;
    let e = c.clusters().await.unwrap_err();
    assert_eq!(
        e,
        AdminError::Status {
            endpoint: PATH_CLUSTERS,
            status: 404,
            body: "no such path second line".into()
        }
    );
    let e = c.ready().await.unwrap_err();
    assert!(matches!(e, AdminError::Status { status: 404, .. }), "{e}");

    let c = serve(http_response(
        "200 OK",
        br#"{"cluster_statuses": [{"name": "a", "host_st"#,
    ))
    .await;
    let e = c.clusters().await.unwrap_err();
    assert!(matches!(e, AdminError::Malformed { .. }), "{e}");

    let c = serve(http_response("200 OK", &vec![b'x'; 100_000])).await;
    let e = c.dynamic_listeners().await.unwrap_err();
    assert!(
        matches!(e, AdminError::TooLarge { limit: 65536, .. }),
        "{e}"
    );

    let c = serve(http_response("200 OK", b"\xff\xfe\x00junk")).await;
    let e = c.stats().await.unwrap_err();
    assert!(matches!(e, AdminError::Malformed { .. }), "{e}");

    // Headers, then silence.
    let c = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{".to_vec()).await;
    let e = c.server_info().await.unwrap_err();
    assert!(matches!(e, AdminError::Timeout { .. }), "{e}");
    assert!(e.is_unreachable());

    let c = serve(b"\x16\x03\x01 not http at all\r\n\r\n".to_vec()).await;
    let e = c.server_info().await.unwrap_err();
    assert!(matches!(e, AdminError::Protocol { .. }), "{e}");
}

// ------------------------------------------------------------------------------------------
// Parsers on captured fixtures
// ------------------------------------------------------------------------------------------

#[test]
fn fixture_server_info() {
    for (version, body) in fixtures("server_info.json") {
        let info = parse_server_info(&body).unwrap();
        assert_eq!(info.version_number().unwrap().to_string(), version);
        assert_eq!(info.state, ServerState::Live);
        check_server_info(&info);
    }
}

#[test]
fn fixture_listeners() {
    for (_, body) in fixtures("config_dump-dynamic_listeners-vips.json") {
        check_vips(&parse_listeners(&body).unwrap(), None);
    }
    for (_, body) in fixtures("config_dump-dynamic_listeners-states.json") {
        check_states(&parse_listeners(&body).unwrap());
    }
    for (_, body) in fixtures("config_dump-dynamic_listeners-rejected.json") {
        check_rejected(&parse_listeners(&body).unwrap());
    }
    for (_, body) in fixtures("config_dump-dynamic_listeners-access-log-denied.json") {
        check_access_log_denied(&parse_listeners(&body).unwrap(), None);
    }
    for (_, body) in fixtures("config_dump-dynamic_listeners-none.json") {
        assert_eq!(parse_listeners(&body).unwrap(), []);
    }
}

#[test]
fn fixture_clusters() {
    for (_, body) in fixtures("clusters-health.json") {
        check_clusters(&parse_clusters(&body).unwrap());
    }
}

#[test]
fn fixture_stats() {
    for (_, body) in fixtures("stats-control-plane-down.txt") {
        let s = parse_stats(std::str::from_utf8(&body).unwrap());
        assert_eq!(s.control_plane_connected_state, Some(0));
        assert_eq!(s.init_fetch_timeout_total, 2);
        assert_eq!(s.lds_version_text.as_deref(), Some(""));
        assert!(s.cds_update_failure.is_some_and(|n| n >= 1), "{s:?}");
        assert!(s.xds_fetch_failures().is_some_and(|n| n >= 1), "{s:?}");
    }
    for (_, body) in fixtures("stats-lds-rejected.txt") {
        let s = parse_stats(std::str::from_utf8(&body).unwrap());
        assert_eq!(s.lds_update_rejected, Some(1));
        assert_eq!(s.lds_update_success, Some(2));
        assert_eq!(s.control_plane_connected_state, None);
        assert!(s.total_listeners_active.is_some());
    }
}

// ------------------------------------------------------------------------------------------
// Hostile input to the pure parsers
// ------------------------------------------------------------------------------------------

fn all_parsers(body: &[u8]) -> [bool; 4] {
    [
        parse_server_info(body).is_ok(),
        parse_listeners(body).is_ok(),
        parse_clusters(body).is_ok(),
        {
            parse_stats(&String::from_utf8_lossy(body));
            true
        },
    ]
}

#[test]
fn truncated_fixtures_are_malformed_not_panics() {
    let cases = [
        ("config_dump-dynamic_listeners-rejected.json", 1),
        ("clusters-health.json", 2),
        ("server_info.json", 0),
    ];
    for (name, which) in cases {
        for (_, body) in fixtures(name) {
            let n = body.len();
            let cuts = (0..200.min(n)).chain((0..500).map(|i| i * n / 500));
            for cut in cuts {
                let t = &body[..cut];
                let r = match which {
                    0 => parse_server_info(t).map(|_| ()),
                    1 => parse_listeners(t).map(|_| ()),
                    _ => parse_clusters(t).map(|_| ()),
                };
                let e = r.expect_err("a truncated dump parses");
                assert!(matches!(e, AdminError::Malformed { .. }), "{e}");
            }
        }
    }
}

/// serde_json skips ignored values iteratively (no recursion), and its recursion limit (128)
/// guards every value we do build: deep nesting never overflows the stack. Where the nesting
/// sits in something we skip, the dump is still usable; where it sits in a value we keep
/// (node metadata), it is an error.
#[test]
fn deep_nesting_never_overflows_the_stack() {
    for depth in [1_000, 100_000] {
        let open = "[".repeat(depth);
        let close = "]".repeat(depth);
        let nested = format!("{open}{close}");

        let top = nested.clone();
        assert_eq!(all_parsers(top.as_bytes())[..3], [false, false, false]);
        let deep_obj = format!("{}1{}", "{\"a\": ".repeat(depth), "}".repeat(depth));
        assert_eq!(parse_listeners(deep_obj.as_bytes()).unwrap(), []);
        assert!(parse_server_info(deep_obj.as_bytes()).is_err());

        let in_ignored = format!(r#"{{"configs": [], "cluster_statuses": [], "junk": {nested}}}"#);
        assert_eq!(parse_listeners(in_ignored.as_bytes()).unwrap(), []);
        assert_eq!(parse_clusters(in_ignored.as_bytes()).unwrap(), []);

        let in_leaf = format!(
            r#"{{"configs": [{{"name": "x", "active_state": {{"listener": {{"filter_chains": [{{"filter_chain_match": {{"prefix_ranges": [{{"address_prefix": {nested}, "prefix_len": 32}}]}}, "filters": [{{"typed_config": {{"@type": "x.HttpConnectionManager", "route_config": {nested}}}}}]}}]}}}}}}]}}"#
        );
        let listeners = parse_listeners(in_leaf.as_bytes()).unwrap();
        let s = summarize_listeners(&listeners);
        assert!(s.vips.is_empty());
        assert_eq!(s.rejected.len(), 1);
        assert_eq!(s.rejected[0].reason, "address_prefix is an array");

        let in_metadata = format!(
            r#"{{"version": "a/1.2.3/b", "state": "LIVE", "node": {{"metadata": {{"k": {nested}}}}}}}"#
        );
        let e = parse_server_info(in_metadata.as_bytes()).unwrap_err();
        assert!(
            matches!(&e, AdminError::Malformed { reason, .. } if reason.contains("recursion limit")),
            "{e}"
        );
    }
}

#[test]
fn binary_junk_and_bad_utf8() {
    let mut junk = Vec::new();
    let mut x: u32 = 0x1234_5678;
    for _ in 0..100_000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        junk.push(x as u8);
    }
    assert_eq!(all_parsers(&junk)[..3], [false, false, false]);
    assert_eq!(
        parse_stats(&String::from_utf8_lossy(&junk)),
        EnvoyStats::default()
    );
    // Invalid UTF-8 inside a string that would otherwise be skipped.
    let body = b"{\"configs\": [], \"x\": \"\xff\xfe\"}";
    let e = parse_listeners(body).unwrap_err();
    assert!(matches!(e, AdminError::Malformed { .. }), "{e}");
    assert!(parse_listeners(b"").is_err());
    assert!(parse_listeners(b"null").is_err());
}

#[test]
fn wrong_types() {
    for body in [
        r#"{"configs": 5}"#,
        r#"{"configs": [{"name": 5}]}"#,
        r#"{"configs": [{"active_state": {"listener": {"filter_chains": {}}}}]}"#,
        r#"{"configs": [{"active_state": {"listener": {"use_original_dst": "yes"}}}]}"#,
        r#"[]"#,
    ] {
        assert!(parse_listeners(body.as_bytes()).is_err(), "{body}");
    }
    for body in [
        r#"{"state": "LIVE"}"#,
        r#"{"version": 1, "state": "LIVE"}"#,
        r#"{"version": "a/1.2.3/b", "state": ["LIVE"]}"#,
        r#"{"version": "a/1.2.3/b", "state": "LIVE", "node": {"metadata": []}}"#,
    ] {
        assert!(parse_server_info(body.as_bytes()).is_err(), "{body}");
    }
    // A field we barely need does not cost us the version and state.
    let info = parse_server_info(
        br#"{"version": "a/1.2.3/b", "state": "LIVE", "uptime_current_epoch": 7,
             "command_line_options": {"log_path": 5, "restart_epoch": "1", "log_format_escaped": "yes",
                                      "config_path": "/etc/envoy.yaml", "concurrency": "x"}}"#,
    )
    .unwrap();
    assert_eq!(info.uptime_current_epoch, None);
    assert_eq!(info.command_line_options.log_path, "");
    assert_eq!(info.command_line_options.config_path, "/etc/envoy.yaml");
    assert_eq!(info.command_line_options.restart_epoch, 0);
    assert!(!info.command_line_options.log_format_escaped);
    assert!(
        parse_clusters(br#"{"cluster_statuses": [{"host_statuses": [{"health_status": {"failed_outlier_check": "true"}}]}]}"#)
            .is_err()
    );

    // Where the value is evidence (VIPs), odd types are reported, not fatal.
    let body = br#"{"configs": [{"name": "L", "active_state": {"listener": {"name": "L",
        "filter_chains": [{"filter_chain_match": {"prefix_ranges": [
            {"address_prefix": 167772161, "prefix_len": 32},
            {"address_prefix": "10.0.0.1", "prefix_len": "32"},
            {"address_prefix": "10.0.0.2", "prefix_len": -1},
            {"address_prefix": "10.0.0.3", "prefix_len": 32.5},
            {"address_prefix": {"a": 1}, "prefix_len": 32},
            {"address_prefix": "10.0.0.4\n-A OUTPUT -j ACCEPT", "prefix_len": 32},
            {"prefix_len": 32},
            {"address_prefix": "10.0.0.5", "prefix_len": 32}
        ], "destination_port": "80"},
        "filters": [
          {"name": "dubbo", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", "route_config": [{"name": "arr"}], "rds": 7}},
          {"name": "other", "typed_config": {"@type": "x.Other", "route_config": {"name": "not-hcm"}}}
        ]}]}}}]}"#;
    let listeners = parse_listeners(body).unwrap();
    // The odd route names make no inbound chain: its prefixes are read as VIPs and judged.
    let chains = &listeners[0].active.as_ref().unwrap().listener.chains;
    assert!(chains.inbound_ports.is_empty(), "{chains:?}");
    assert_eq!(chains.rejected.len(), 7, "{chains:?}");
    let s = summarize_listeners(&listeners);
    assert_eq!(
        s.vips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["10.0.0.5/32"]
    );
    assert_eq!(s.rejected.len(), 7, "{:#?}", s.rejected);
    for r in &s.rejected {
        assert!(!r.raw.contains('\n') && !r.reason.is_empty(), "{r:?}");
        assert!(r.raw.len() <= 96);
    }
}

#[test]
fn big_dumps_parse() {
    // 10,000 filter chains, each with a bulky inline route configuration the parser skips.
    let chain = |i: u32| {
        json!({
            "filter_chain_match": {"prefix_ranges": [{"address_prefix": format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255), "prefix_len": 32}], "destination_port": 80},
            "filters": [hcm_inline(&format!("URL_MAP/123.s{i}"))],
        })
    };
    let dump = json!({"configs": [{
        "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.DynamicListener",
        "name": INTERCEPTION_LISTENER_NAME,
        "active_state": {"listener": {
            "name": INTERCEPTION_LISTENER_NAME, "use_original_dst": true,
            "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
            "filter_chains": (0..10_000).map(chain).collect::<Vec<_>>(),
        }}
    }]});
    let body = serde_json::to_vec(&dump).unwrap();
    let listeners = parse_listeners(&body).unwrap();
    let s = summarize_listeners(&listeners);
    assert_eq!(s.vips.len(), 10_000);
    assert_eq!(
        s.interception,
        Some(InterceptionListener {
            name: INTERCEPTION_LISTENER_NAME.into(),
            port: Some(15001)
        })
    );

    // 5,000 clusters of 3 hosts with their (skipped) stats.
    let host = |i: u32| {
        json!({
            "address": {"socket_address": {"address": "10.0.0.1", "port_value": i % 65535}},
            "stats": [{"name": "cx_total", "value": "3"}, {"name": "rq_error"}, {"type": "GAUGE", "name": "cx_active"}],
            "health_status": if i % 2 == 0 { json!({"eds_health_status": "HEALTHY"}) } else { json!({"failed_outlier_check": true, "eds_health_status": "HEALTHY"}) },
            "weight": 1, "locality": {}
        })
    };
    let clusters = json!({"cluster_statuses": (0..5_000).map(|c| json!({
        "name": format!("cluster-{c}"), "added_via_api": true,
        "host_statuses": (0..3).map(|h| host(c * 3 + h)).collect::<Vec<_>>(),
        "circuit_breakers": {"thresholds": [{"max_connections": 1024}]},
    })).collect::<Vec<_>>()});
    let parsed = parse_clusters(&serde_json::to_vec(&clusters).unwrap()).unwrap();
    assert_eq!(parsed.len(), 5_000);
    assert!(parsed.iter().all(|c| c.added_via_api && c.hosts.len() == 3));
    let unhealthy: usize = parsed.iter().map(ClusterStatus::unhealthy_hosts).sum();
    assert_eq!(unhealthy, 7_500);
}

/// The observer reads `/server_info` (~125 KB) when the Envoy processes are new, and while
/// they stand asks `/ready` for the state: Envoy's own admin access log says which it was
/// asked. A new Envoy process is a reason to read it whole again.
#[tokio::test]
async fn server_info_is_read_whole_only_when_the_envoy_processes_change() {
    use service_proxy_agent::config::{CommonArgs, InterceptionMode, Settings};
    use service_proxy_agent::observe::Observer;

    let dir = tempfile::tempdir().unwrap();
    let admin_log = dir.path().join("admin.log");
    let mut b = minimal_bootstrap(NODE_ID, node_metadata());
    b["admin"]["access_log"] = json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": admin_log,
        }
    }]);
    let envoy = Envoy::start(EnvoyConfig::new(b)).expect("start real Envoy");
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let settings = Settings::resolve(
        &CommonArgs {
            config: Some(config),
            envoy_admin: Some(parse_admin_url(&envoy.admin_url()).unwrap()),
            interception: Some(InterceptionMode::Off),
            ..CommonArgs::default()
        },
        |k| (k == "GCE_METADATA_HOST").then(|| "127.0.0.1:1".to_owned()),
    )
    .unwrap();
    let observer = Observer::new(&settings);
    let asked = || asked_for_server_info(&admin_log);
    let after = |before| requests_after(&envoy, &admin_log, before);

    let first = observer.snapshot(false).await;
    let first_info = first.server_info.clone().expect("server_info");
    assert_eq!(
        after((0, 0)).await,
        (1, 0),
        "a first snapshot reads it whole"
    );
    // Other tests' Envoys start and stop beside this one (each a reason to read it whole): a
    // few tries for a snapshot taken while the processes stood.
    let mut kept = None;
    for _ in 0..10 {
        let before = asked();
        let snap = observer.snapshot(false).await;
        if after(before).await == (0, 1) {
            kept = Some(snap);
            break;
        }
    }
    let kept = kept.expect("every snapshot read /server_info whole, none asked /ready");
    let info = kept.server_info.expect("server_info from /ready");
    assert_eq!(info.state, ServerState::Live);
    assert_eq!(info.version, first_info.version);
    assert_eq!(info.node, first_info.node);
    assert!(info.uptime_current_epoch >= first_info.uptime_current_epoch);

    // A new Envoy process: read whole again.
    let _second = Envoy::start(EnvoyConfig::new(minimal_bootstrap(
        NODE_ID,
        node_metadata(),
    )))
    .expect("start a second Envoy");
    let before = asked();
    observer.snapshot(false).await.server_info.unwrap();
    assert_eq!(after(before).await.0, 1, "a new Envoy process: read whole");
}

/// (`/server_info`, `/ready`) requests in Envoy's admin access log so far.
fn asked_for_server_info(admin_log: &Path) -> (usize, usize) {
    let log = std::fs::read_to_string(admin_log).unwrap_or_default();
    (
        log.matches("\"GET /server_info ").count(),
        log.matches("\"GET /ready ").count(),
    )
}

/// The requests logged since `before`: waits for one more (Envoy flushes the log every
/// 200 ms here), and a flush more for anything after it.
async fn requests_after(envoy: &Envoy, admin_log: &Path, before: (usize, usize)) -> (usize, usize) {
    let now = eventually(
        &|| envoy.log_text(),
        "the admin access log's next line",
        Duration::from_secs(10),
        || async {
            Some(asked_for_server_info(admin_log)).filter(|n| n.0 + n.1 > before.0 + before.1)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        asked_for_server_info(admin_log),
        now,
        "more requests than one snapshot makes"
    );
    (now.0 - before.0, now.1 - before.1)
}
