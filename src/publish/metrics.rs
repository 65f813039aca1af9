//! Prometheus text on `--metrics-addr` (loopback by default) and `/healthz`.
//!
//! The loop writes plain values into [`AgentMetrics`] once per cycle; a `prometheus-client`
//! collector turns them into metrics at scrape time, so nothing here sits on the loop's path.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::finding::{Finding, FindingId, Health};
use crate::observe::own_process;
use crate::publish::cloud_logging::SinkCounters;
use crate::publish::exposition::{self, Family, Kind, Value};
use crate::publish::guest_attributes::PublishCounters;
use crate::publish::log::LogCounters;

/// What one cycle saw.
#[derive(Debug, Clone, Default)]
pub struct CycleView {
    pub active: Vec<(FindingId, &'static str)>,
    pub health: Option<Health>,
    pub envoy_state: String,
    pub listeners: u64,
    pub vips: u64,
    pub heartbeat_unix: i64,
    /// Findings set aside by `ignore-findings` rules in force.
    pub ignored: Vec<FindingId>,
}

/// Shared by the loop (writer) and the metrics endpoint (reader).
#[derive(Debug)]
pub struct AgentMetrics {
    view: Mutex<CycleView>,
    last_cycle: Mutex<Option<Instant>>,
    pub cycles: AtomicU64,
    poll_errors: Mutex<BTreeMap<&'static str, u64>>,
    pub envoy_log_lines: AtomicU64,
    pub interception_restores: AtomicU64,
    pub interception_errors: AtomicU64,
    pub log: Arc<LogCounters>,
    pub guest_attributes: Arc<PublishCounters>,
    pub cloud_logging: Mutex<Option<Arc<SinkCounters>>>,
    /// Calls to Google's APIs by the project-side checks (docs/contract.md#10-project-side-checks's budget).
    pub project_api_calls: Arc<crate::observe::project::CallCounter>,
}

impl AgentMetrics {
    pub fn new(log: Arc<LogCounters>, guest_attributes: Arc<PublishCounters>) -> Arc<Self> {
        Arc::new(AgentMetrics {
            view: Mutex::new(CycleView::default()),
            last_cycle: Mutex::new(None),
            cycles: AtomicU64::new(0),
            poll_errors: Mutex::new(BTreeMap::new()),
            envoy_log_lines: AtomicU64::new(0),
            interception_restores: AtomicU64::new(0),
            interception_errors: AtomicU64::new(0),
            log,
            guest_attributes,
            cloud_logging: Mutex::new(None),
            project_api_calls: Arc::default(),
        })
    }

    /// Called at the end of every cycle: it is also the liveness signal for `/healthz`.
    pub fn cycle_done(&self, findings: &[Finding], mut view: CycleView, at: Instant) {
        view.active = findings
            .iter()
            .map(|f| (f.id, f.severity.as_str()))
            .collect();
        view.health = Some(Health::of(findings));
        if let Ok(mut v) = self.view.lock() {
            *v = view;
        }
        if let Ok(mut l) = self.last_cycle.lock() {
            *l = Some(at);
        }
        self.cycles.fetch_add(1, Ordering::Relaxed);
    }

    pub fn poll_error(&self, source: &'static str) {
        if let Ok(mut m) = self.poll_errors.lock() {
            *m.entry(source).or_default() += 1;
        }
    }

    pub fn set_cloud_logging(&self, counters: Arc<SinkCounters>) {
        if let Ok(mut c) = self.cloud_logging.lock() {
            *c = Some(counters);
        }
    }

    /// Alive when a cycle completed within `max_age` (a stuck loop stops completing cycles).
    pub fn alive(&self, now: Instant, max_age: Duration) -> bool {
        self.last_cycle
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|t| now.saturating_duration_since(t) <= max_age)
    }

    /// The registry to encode (OpenMetrics text).
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::default();
        r.register_collector(Box::new(self.clone()));
        r
    }

    /// OpenMetrics 1.0 text.
    pub fn encode(self: &Arc<Self>) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry());
        out
    }

    /// The answer to a scrape with this `Accept` header: (content type, body).
    pub fn encode_for(self: &Arc<Self>, accept: Option<&str>) -> (&'static str, String) {
        if exposition::wants_openmetrics(accept) {
            (exposition::OPENMETRICS_CONTENT_TYPE, self.encode())
        } else {
            (
                exposition::CLASSIC_CONTENT_TYPE,
                exposition::encode_classic(&self.families()),
            )
        }
    }
}

/// Every state the `spa_envoy_state` family lists from the start (one of them 1 once Envoy
/// has been looked at); a state Envoy reports beyond these is added as it is seen.
const ENVOY_STATES: [&str; 6] = [
    "LIVE",
    "DRAINING",
    "PRE_INITIALIZING",
    "INITIALIZING",
    "NOT_RUNNING",
    "UNREACHABLE",
];

/// The sources `poll_error` is called with, listed at 0 from the start so an alert on their
/// rate works before the first error.
pub const POLL_SOURCES: [&str; 5] = [
    "control_plane",
    "envoy_admin",
    "guest_attributes",
    "iptables",
    "metadata",
];

/// Version and commit, for `service_proxy_agent_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("SPA_GIT_COMMIT");

impl AgentMetrics {
    /// Every family, every series: the one list both text formats are written from.
    pub fn families(&self) -> Vec<Family> {
        use Kind::{Counter, Gauge};
        use Value::{Float, Int};
        let view = self.view.lock().map(|v| v.clone()).unwrap_or_default();
        let load =
            |a: &AtomicU64| Int(i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        let mut out = Vec::new();

        out.push(
            Family::new(
                "service_proxy_agent_build_info",
                "The agent's version and the commit it was built from (always 1)",
                Gauge,
            )
            .with(&[("version", VERSION), ("commit", COMMIT)], Int(1)),
        );

        // Every catalogue ID, 0 or 1, so alerts can be written before a finding ever fires.
        let mut findings = Family::new(
            "spa_finding_active",
            "Whether a finding is active (1) or not (0)",
            Gauge,
        );
        for id in FindingId::ALL {
            let active = view.active.iter().any(|(a, _)| a == id);
            findings = findings.with(
                &[("id", id.as_str()), ("severity", id.severity().as_str())],
                Int(i64::from(active)),
            );
        }
        out.push(findings);
        let mut ignored = Family::new(
            "spa_finding_ignored",
            "Whether a finding is present but set aside by an ignore-findings rule (1) or not (0)",
            Gauge,
        );
        for id in FindingId::ALL {
            ignored = ignored.with(
                &[("id", id.as_str()), ("severity", id.severity().as_str())],
                Int(i64::from(view.ignored.contains(id))),
            );
        }
        out.push(ignored);
        let mut health = Family::new(
            "spa_health",
            "The agent's verdict: OK, DEGRADED or FAILING",
            Gauge,
        );
        for h in [Health::Ok, Health::Degraded, Health::Failing] {
            health = health.with(
                &[("health", h.as_str())],
                Int(i64::from(view.health == Some(h))),
            );
        }
        out.push(health);
        out.push(Family::single(
            "spa_heartbeat_timestamp_seconds",
            "Unix time of the last completed cycle",
            Gauge,
            Int(view.heartbeat_unix),
        ));
        let mut state = Family::new(
            "spa_envoy_state",
            "Envoy's state as last observed (LIVE, NOT_RUNNING, UNREACHABLE, ...)",
            Gauge,
        );
        for s in ENVOY_STATES {
            state = state.with(&[("state", s)], Int(i64::from(view.envoy_state == s)));
        }
        if !view.envoy_state.is_empty() && !ENVOY_STATES.contains(&view.envoy_state.as_str()) {
            state = state.with(&[("state", view.envoy_state.as_str())], Int(1));
        }
        out.push(state);
        out.push(Family::single(
            "spa_envoy_listeners",
            "Dynamic listeners Envoy has",
            Gauge,
            Int(i64::try_from(view.listeners).unwrap_or(i64::MAX)),
        ));
        out.push(Family::single(
            "spa_envoy_listener_vips",
            "Service VIPs in Envoy's listeners",
            Gauge,
            Int(i64::try_from(view.vips).unwrap_or(i64::MAX)),
        ));

        out.push(Family::single(
            "spa_cycles",
            "Completed observe/diagnose/publish cycles",
            Counter,
            load(&self.cycles),
        ));
        let polls = self
            .poll_errors
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let mut poll_family =
            Family::new("spa_poll_errors", "Failed observations, by source", Counter);
        let mut sources: Vec<&str> = POLL_SOURCES.to_vec();
        sources.extend(polls.keys().copied().filter(|s| !POLL_SOURCES.contains(s)));
        for source in sources {
            let n = polls.get(source).copied().unwrap_or(0);
            poll_family = poll_family.with(
                &[("source", source)],
                Int(i64::try_from(n).unwrap_or(i64::MAX)),
            );
        }
        out.push(poll_family);
        let cloud = self.cloud_logging.lock().ok().and_then(|c| c.clone());
        let cloud_load =
            |f: fn(&SinkCounters) -> &AtomicU64| cloud.as_ref().map_or(Int(0), |c| load(f(c)));
        out.push(
            Family::new(
                "spa_publish_errors",
                "Failed publications, by sink",
                Counter,
            )
            .with(
                &[("sink", "guest_attributes")],
                load(&self.guest_attributes.errors),
            )
            .with(&[("sink", "serial")], load(&self.log.serial_errors))
            .with(
                &[("sink", "cloud_logging")],
                cloud_load(|c| &c.requests_failed),
            ),
        );
        out.push(Family::single(
            "spa_guest_attribute_writes",
            "Guest attributes written",
            Counter,
            load(&self.guest_attributes.writes),
        ));
        out.push(Family::single(
            "spa_log_lines",
            "Lines the agent logged",
            Counter,
            load(&self.log.lines),
        ));
        out.push(Family::single(
            "spa_cloud_logging_dropped",
            "Log lines dropped because the Cloud Logging queue was full",
            Counter,
            load(&self.log.cloud_dropped),
        ));
        out.push(Family::single(
            "spa_cloud_logging_entries_sent",
            "Entries accepted by Cloud Logging",
            Counter,
            cloud_load(|c| &c.entries_sent),
        ));
        out.push(Family::single(
            "spa_envoy_log_lines",
            "Envoy log lines read",
            Counter,
            load(&self.envoy_log_lines),
        ));
        out.push(Family::single(
            "spa_interception_restores",
            "iptables-restore transactions applied",
            Counter,
            load(&self.interception_restores),
        ));
        out.push(Family::single(
            "spa_project_api_calls",
            "Calls to Google's APIs by the project-side checks",
            Counter,
            load(&self.project_api_calls.calls),
        ));
        out.push(Family::single(
            "spa_interception_errors",
            "Failed interception reconciles",
            Counter,
            load(&self.interception_errors),
        ));

        // The process_* families of Prometheus' client libraries, same names and units.
        let me = own_process::read(std::path::Path::new("/proc"));
        let or_zero = |v: Option<f64>| Float(v.unwrap_or(0.0));
        out.push(Family::single(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            Gauge,
            Int(me
                .resident_bytes
                .and_then(|b| i64::try_from(b).ok())
                .unwrap_or(0)),
        ));
        out.push(Family::single(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            Counter,
            or_zero(me.cpu_seconds),
        ));
        out.push(Family::single(
            "process_open_fds",
            "Number of open file descriptors",
            Gauge,
            Int(me.open_fds.and_then(|n| i64::try_from(n).ok()).unwrap_or(0)),
        ));
        out.push(Family::single(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            Gauge,
            or_zero(me.start_time_seconds),
        ));
        out
    }
}

/// OpenMetrics through `prometheus-client`: each family as read at scrape time.
struct Families<'a>(&'a [Family]);

impl std::fmt::Debug for Families<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Families").field(&self.0.len()).finish()
    }
}

fn encode_value(kind: Kind, value: Value, enc: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
    match (kind, value) {
        (Kind::Gauge, Value::Int(v)) => ConstGauge::new(v).encode(enc),
        (Kind::Gauge, Value::Float(v)) => ConstGauge::new(v).encode(enc),
        (Kind::Counter, Value::Int(v)) => {
            ConstCounter::new(u64::try_from(v).unwrap_or(0)).encode(enc)
        }
        (Kind::Counter, Value::Float(v)) => ConstCounter::new(v).encode(enc),
    }
}

impl Families<'_> {
    fn encode_openmetrics(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in self.0 {
            let metric_type = match f.kind {
                Kind::Gauge => ConstGauge::new(0i64).metric_type(),
                Kind::Counter => ConstCounter::new(0u64).metric_type(),
            };
            let mut metric = enc.encode_descriptor(f.name, f.help, None, metric_type)?;
            if let [s] = f.samples.as_slice()
                && s.labels.is_empty()
            {
                encode_value(f.kind, s.value, metric)?;
                continue;
            }
            for s in &f.samples {
                let labels: Vec<(&str, &str)> =
                    s.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                encode_value(f.kind, s.value, metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Collector for AgentMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        Families(&self.families()).encode_openmetrics(&mut enc)
    }
}

/// Serves `/metrics` and `/healthz` until the task is dropped. `max_age` is how old the last
/// cycle may be for `/healthz` to answer 200.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<AgentMetrics>,
    max_age: Duration,
) {
    // Any local user can connect (docs/contract.md#11-trust): connections, header bytes and time are bounded,
    // so a flood of slow, huge requests costs at most MAX_CONNECTIONS × MAX_REQUEST_BUFFER.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Full: closed at once rather than left queued, so a scraper retries into a slot
        // freed by the header timeout instead of waiting behind the flood.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(route(&req, &metrics, max_age)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(MAX_REQUEST_BUFFER)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            // A client that never finishes does not keep its slot forever.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}

/// Connections served at once; Prometheus needs one.
pub const MAX_CONNECTIONS: usize = 32;
/// Bytes of a request buffered (hyper's least): a scrape's request is a few hundred bytes.
pub const MAX_REQUEST_BUFFER: usize = 8192;
/// Time for a client to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Life of a connection, keep-alive included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

fn route(
    req: &Request<hyper::body::Incoming>,
    metrics: &Arc<AgentMetrics>,
    max_age: Duration,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        r
    };
    if req.method() != hyper::Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let accept = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let (ctype, body) = metrics.encode_for(accept);
            reply(StatusCode::OK, ctype, body)
        }
        "/healthz" => {
            if metrics.alive(Instant::now(), max_age) {
                reply(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "loop not cycling\n".into(),
                )
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /healthz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Finding;

    #[test]
    fn encodes_findings_health_and_counters() {
        let m = AgentMetrics::new(Arc::default(), Arc::default());
        m.poll_error("envoy_admin");
        m.cycle_done(
            &[Finding::new(FindingId::EnvoyNotRunning, "")],
            CycleView {
                envoy_state: "NOT_RUNNING".into(),
                heartbeat_unix: 1_500_000_000,
                ..CycleView::default()
            },
            Instant::now(),
        );
        let text = m.encode();
        assert!(
            text.contains("spa_finding_active{id=\"ENVOY_NOT_RUNNING\",severity=\"error\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("spa_finding_active{id=\"ENDPOINTS_PANIC\",severity=\"error\"} 0"),
            "{text}"
        );
        assert!(text.contains("spa_health{health=\"FAILING\"} 1"), "{text}");
        assert!(
            text.contains("spa_envoy_state{state=\"NOT_RUNNING\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("spa_poll_errors_total{source=\"envoy_admin\"} 1"),
            "{text}"
        );
        assert!(text.contains("spa_cycles_total 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn alive_only_while_cycling() {
        let m = AgentMetrics::new(Arc::default(), Arc::default());
        let t = Instant::now();
        assert!(!m.alive(t, Duration::from_secs(30)));
        m.cycle_done(&[], CycleView::default(), t);
        assert!(m.alive(t + Duration::from_secs(29), Duration::from_secs(30)));
        assert!(!m.alive(t + Duration::from_secs(31), Duration::from_secs(30)));
    }
}
