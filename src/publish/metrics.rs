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
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::finding::{Finding, FindingId, Health};
use crate::publish::cloud_logging::SinkCounters;
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
    /// Calls to Google's APIs by the project-side checks (SPEC §10's budget).
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

    pub fn encode(self: &Arc<Self>) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry());
        out
    }
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Vec<(&str, &str)>, i64)],
) -> Result<(), std::fmt::Error> {
    let mut metric =
        enc.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    if let [(labels, value)] = samples
        && labels.is_empty()
    {
        return ConstGauge::new(*value).encode(metric);
    }
    for (labels, value) in samples {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Vec<(&str, &str)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric =
        enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    if let [(labels, value)] = samples
        && labels.is_empty()
    {
        return ConstCounter::new(*value).encode(metric);
    }
    for (labels, value) in samples {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for AgentMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = self.view.lock().map(|v| v.clone()).unwrap_or_default();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        // Every catalogue ID, 0 or 1, so alerts can be written before a finding ever fires.
        let findings: Vec<(Vec<(&str, &str)>, i64)> = FindingId::ALL
            .iter()
            .map(|id| {
                let active = view.active.iter().any(|(a, _)| a == id);
                (
                    vec![("id", id.as_str()), ("severity", id.severity().as_str())],
                    i64::from(active),
                )
            })
            .collect();
        gauge(
            &mut enc,
            "spa_finding_active",
            "Whether a finding is active (1) or not (0)",
            &findings,
        )?;
        let health: Vec<(Vec<(&str, &str)>, i64)> = [Health::Ok, Health::Degraded, Health::Failing]
            .iter()
            .map(|h| {
                (
                    vec![("health", h.as_str())],
                    i64::from(view.health == Some(*h)),
                )
            })
            .collect();
        gauge(
            &mut enc,
            "spa_health",
            "The agent's verdict: OK, DEGRADED or FAILING",
            &health,
        )?;
        gauge(
            &mut enc,
            "spa_heartbeat_timestamp_seconds",
            "Unix time of the last completed cycle",
            &[(vec![], view.heartbeat_unix)],
        )?;
        if !view.envoy_state.is_empty() {
            gauge(
                &mut enc,
                "spa_envoy_state",
                "Envoy's state as last observed (LIVE, NOT_RUNNING, UNREACHABLE, ...)",
                &[(vec![("state", view.envoy_state.as_str())], 1)],
            )?;
        }
        gauge(
            &mut enc,
            "spa_envoy_listeners",
            "Dynamic listeners Envoy has",
            &[(vec![], view.listeners as i64)],
        )?;
        gauge(
            &mut enc,
            "spa_envoy_listener_vips",
            "Service VIPs in Envoy's listeners",
            &[(vec![], view.vips as i64)],
        )?;

        counter(
            &mut enc,
            "spa_cycles",
            "Completed observe/diagnose/publish cycles",
            &[(vec![], load(&self.cycles))],
        )?;
        let polls = self
            .poll_errors
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let polls: Vec<(Vec<(&str, &str)>, u64)> = polls
            .iter()
            .map(|(s, n)| (vec![("source", *s)], *n))
            .collect();
        if !polls.is_empty() {
            counter(
                &mut enc,
                "spa_poll_errors",
                "Failed observations, by source",
                &polls,
            )?;
        }
        let cloud = self.cloud_logging.lock().ok().and_then(|c| c.clone());
        let mut publish = vec![
            (
                vec![("sink", "guest_attributes")],
                load(&self.guest_attributes.errors),
            ),
            (vec![("sink", "serial")], load(&self.log.serial_errors)),
        ];
        if let Some(c) = &cloud {
            publish.push((vec![("sink", "cloud_logging")], load(&c.requests_failed)));
        }
        counter(
            &mut enc,
            "spa_publish_errors",
            "Failed publications, by sink",
            &publish,
        )?;
        counter(
            &mut enc,
            "spa_guest_attribute_writes",
            "Guest attributes written",
            &[(vec![], load(&self.guest_attributes.writes))],
        )?;
        counter(
            &mut enc,
            "spa_log_lines",
            "Lines the agent logged",
            &[(vec![], load(&self.log.lines))],
        )?;
        counter(
            &mut enc,
            "spa_cloud_logging_dropped",
            "Log lines dropped because the Cloud Logging queue was full",
            &[(vec![], load(&self.log.cloud_dropped))],
        )?;
        if let Some(c) = &cloud {
            counter(
                &mut enc,
                "spa_cloud_logging_entries_sent",
                "Entries accepted by Cloud Logging",
                &[(vec![], load(&c.entries_sent))],
            )?;
        }
        counter(
            &mut enc,
            "spa_envoy_log_lines",
            "Envoy log lines read",
            &[(vec![], load(&self.envoy_log_lines))],
        )?;
        counter(
            &mut enc,
            "spa_interception_restores",
            "iptables-restore transactions applied",
            &[(vec![], load(&self.interception_restores))],
        )?;
        counter(
            &mut enc,
            "spa_project_api_calls",
            "Calls to Google's APIs by the project-side checks",
            &[(vec![], load(&self.project_api_calls.calls))],
        )?;
        counter(
            &mut enc,
            "spa_interception_errors",
            "Failed interception reconciles",
            &[(vec![], load(&self.interception_errors))],
        )?;
        Ok(())
    }
}

/// Serves `/metrics` and `/healthz` until the task is dropped. `max_age` is how old the last
/// cycle may be for `/healthz` to answer 200.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<AgentMetrics>,
    max_age: Duration,
) {
    // Any local user can connect (SPEC §11): connections, header bytes and time are bounded,
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
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
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
