//! Direct `entries:write` to Cloud Logging (docs/contract.md#6-logs): records come from the logger through a
//! bounded queue, are batched, and posted with a bearer token from a [`TokenSource`]. Failures
//! back off; the agent's loop is never blocked (the logger drops and counts when the queue is
//! full).
//!
//! On a VM the token is the VM's own, from its metadata server through the agent's metadata
//! client (`observe::token`, honouring `GCE_METADATA_HOST`). `gcp_auth` is kept for credentials
//! off Compute Engine, chosen explicitly rather than with `gcp_auth::provider()` (which also runs
//! the `gcloud` command and talks to a hard-coded `metadata.google.internal`, docs/outside-world.md#gcp-auth): a
//! key file (`GOOGLE_APPLICATION_CREDENTIALS`), else gcloud's ADC file.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value, json};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::publish::guest_attributes::backoff;
use crate::publish::log::{LogRecord, SINK_FIELD, rfc3339_micros};
use crate::text::{lossy_bounded, redact_secrets};

pub const LOG_ID: &str = "service-proxy-agent";
const SCOPES: &[&str] = &["https://www.googleapis.com/auth/logging.write"];
const MAX_BATCH: usize = 200;
const LINGER: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Records waiting between the logger and the sink; beyond this the logger drops.
pub const QUEUE_CAPACITY: usize = 1000;

/// Where entries go and which VM they describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https://logging.googleapis.com` (or a test endpoint).
    pub endpoint: String,
    pub project_id: String,
    pub zone: String,
    pub instance_id: String,
}

impl Target {
    pub fn log_name(&self) -> String {
        format!("projects/{}/logs/{LOG_ID}", self.project_id)
    }

    /// The `entries:write` request body for a batch.
    pub fn request_body(&self, records: &[LogRecord]) -> Value {
        let entries: Vec<Value> = records.iter().map(entry).collect();
        json!({
            "logName": self.log_name(),
            "resource": {
                "type": "gce_instance",
                "labels": {
                    "project_id": self.project_id,
                    "zone": self.zone,
                    "instance_id": self.instance_id,
                }
            },
            "entries": entries,
            "partialSuccess": true,
        })
    }
}

/// Payload fields that become entry labels, so a log query or a log-based metric can select on
/// them (`labels.finding="SCOPES_INSUFFICIENT"`) without parsing the payload.
pub const LABEL_FIELDS: [&str; 2] = ["finding", "health"];

/// `insertId`: this process's random prefix and the record's number. The same record sent again
/// (a batch retried after a failure) has the same ID and timestamp, which Cloud Logging treats
/// as one entry; records of another run of the agent have another prefix.
pub fn insert_id(r: &LogRecord) -> String {
    static RUN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| fastrand::u64(..));
    format!("spa-{run:016x}-{}", r.seq)
}

fn entry(r: &LogRecord) -> Value {
    let time = rfc3339_micros(r.time);
    let mut payload = Map::new();
    payload.insert("message".into(), Value::from(r.message.clone()));
    payload.insert("localTimestamp".into(), Value::from(time.clone()));
    let mut labels = Map::new();
    for (k, v) in &r.fields {
        if LABEL_FIELDS.contains(&k.as_str()) && !labels.contains_key(k) {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            labels.insert(k.clone(), Value::from(text));
        }
        payload.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let mut e = json!({
        "insertId": insert_id(r),
        "timestamp": time,
        "severity": r.severity,
        "jsonPayload": payload,
    });
    if !labels.is_empty()
        && let Some(obj) = e.as_object_mut()
    {
        obj.insert("labels".into(), Value::Object(labels));
    }
    e
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CloudLoggingError {
    #[error("no credentials for Cloud Logging: {0}")]
    Credentials(String),
    #[error("cannot get a token: {0}")]
    Token(String),
    #[error("entries:write failed: {0}")]
    Write(String),
}

/// Gets bearer tokens. Implemented with `gcp_auth`; a trait so the sink's batching and
/// backoff are testable on their own.
pub trait TokenSource: Send + Sync + 'static {
    fn token(&self) -> impl std::future::Future<Output = Result<String, CloudLoggingError>> + Send;
}

/// `gcp_auth` providers, created on first use and again after a failed creation (a VM may get
/// its service account later; docs/outside-world.md#gcp-auth says creation fails without one).
pub struct GcpAuthTokens {
    use_metadata_server: bool,
    key_file: Option<std::path::PathBuf>,
    provider: tokio::sync::Mutex<Option<Arc<dyn gcp_auth::TokenProvider>>>,
}

impl GcpAuthTokens {
    /// `use_metadata_server`: allow the VM's service account (only when the metadata host is
    /// the real `metadata.google.internal`, which gcp_auth hard-codes).
    pub fn new(use_metadata_server: bool) -> Self {
        GcpAuthTokens {
            use_metadata_server,
            key_file: None,
            provider: tokio::sync::Mutex::new(None),
        }
    }

    /// Use this service-account key file (what `GOOGLE_APPLICATION_CREDENTIALS` names).
    pub fn with_key_file(path: impl Into<std::path::PathBuf>) -> Self {
        GcpAuthTokens {
            use_metadata_server: false,
            key_file: Some(path.into()),
            provider: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether some credential source is configured at all (for `--cloud-logging auto`).
    pub fn credentials_present(use_metadata_server: bool) -> bool {
        std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").is_some()
            || adc_file().is_some_and(|p| p.is_file())
            || use_metadata_server
    }

    async fn create(&self) -> Result<Arc<dyn gcp_auth::TokenProvider>, CloudLoggingError> {
        let clean = |e: gcp_auth::Error| redact_secrets(&e.to_string());
        if let Some(path) = &self.key_file {
            return gcp_auth::CustomServiceAccount::from_file(path)
                .map(|p| Arc::new(p) as Arc<dyn gcp_auth::TokenProvider>)
                .map_err(|e| CloudLoggingError::Credentials(clean(e)));
        }
        if let Some(p) = gcp_auth::CustomServiceAccount::from_env()
            .map_err(|e| CloudLoggingError::Credentials(clean(e)))?
        {
            return Ok(Arc::new(p));
        }
        if adc_file().is_some_and(|p| p.is_file()) {
            return gcp_auth::ConfigDefaultCredentials::new()
                .await
                .map(|p| Arc::new(p) as Arc<dyn gcp_auth::TokenProvider>)
                .map_err(|e| CloudLoggingError::Credentials(clean(e)));
        }
        if self.use_metadata_server {
            return gcp_auth::MetadataServiceAccount::new()
                .await
                .map(|p| Arc::new(p) as Arc<dyn gcp_auth::TokenProvider>)
                .map_err(|e| CloudLoggingError::Credentials(clean(e)));
        }
        Err(CloudLoggingError::Credentials(
            "no GOOGLE_APPLICATION_CREDENTIALS, no gcloud application-default credentials, and the metadata server is not Compute Engine's".into(),
        ))
    }
}

fn adc_file() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("CLOUDSDK_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".config/gcloud"))
        })?;
    Some(base.join("application_default_credentials.json"))
}

impl TokenSource for GcpAuthTokens {
    async fn token(&self) -> Result<String, CloudLoggingError> {
        let mut guard = self.provider.lock().await;
        let provider = match guard.as_ref() {
            Some(p) => p.clone(),
            None => {
                let p = self.create().await?;
                *guard = Some(p.clone());
                p
            }
        };
        drop(guard);
        provider
            .token(SCOPES)
            .await
            .map(|t| t.as_str().to_owned())
            .map_err(|e| CloudLoggingError::Token(redact_secrets(&e.to_string())))
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct SinkCounters {
    pub entries_sent: AtomicU64,
    pub requests_failed: AtomicU64,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub(crate) fn https_client() -> Result<HttpsClient, CloudLoggingError> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| CloudLoggingError::Write(format!("no TLS root certificates: {e}")))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(marked_http_connector());
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Marked as the agent's own traffic, so `intercept-all-outbound` never sends it to Envoy.
fn marked_http_connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_mark(crate::observe::own_traffic::mark());
    http
}

async fn post(
    client: &HttpsClient,
    target: &Target,
    token: &str,
    body: Vec<u8>,
) -> Result<(), CloudLoggingError> {
    let uri = format!("{}/v2/entries:write", target.endpoint);
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| CloudLoggingError::Write(e.to_string()))?;
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| CloudLoggingError::Write(e.to_string()))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(CloudLoggingError::Write(format!(
                "HTTP {status}: {}",
                redact_secrets(&lossy_bounded(&body, 300))
            )))
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(CloudLoggingError::Write(format!(
                "no answer within {REQUEST_TIMEOUT:?}"
            )))
        })
}

/// Handle to flush and stop the sink at shutdown.
pub struct SinkHandle {
    pub counters: Arc<SinkCounters>,
    flush: mpsc::Sender<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl SinkHandle {
    /// Sends what is queued (bounded by `deadline`), then stops.
    pub async fn shutdown(self, deadline: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.flush.send(tx).await.is_ok() {
            let _ = tokio::time::timeout(deadline, rx).await;
        }
        self.task.abort();
    }
}

/// Starts the sink task reading `rx`.
pub fn spawn<T: TokenSource>(
    target: Target,
    tokens: T,
    mut rx: mpsc::Receiver<LogRecord>,
) -> Result<SinkHandle, CloudLoggingError> {
    let client = https_client()?;
    let counters = Arc::new(SinkCounters::default());
    let c = counters.clone();
    let (flush_tx, mut flush_rx) = mpsc::channel::<oneshot::Sender<()>>(1);
    let task = tokio::spawn(async move {
        let mut batch: Vec<LogRecord> = Vec::new();
        let mut failures = 0u32;
        let mut closed = false;
        loop {
            let mut flush_done: Option<oneshot::Sender<()>> = None;
            // Wait for the first record (or a flush request), then linger to fill the batch.
            if batch.is_empty() && !closed {
                tokio::select! {
                    r = rx.recv() => match r {
                        Some(rec) => batch.push(rec),
                        None => closed = true,
                    },
                    Some(done) = flush_rx.recv() => flush_done = Some(done),
                }
            }
            if flush_done.is_none() && !closed {
                let linger = tokio::time::sleep(LINGER);
                tokio::pin!(linger);
                while batch.len() < MAX_BATCH {
                    tokio::select! {
                        r = rx.recv() => match r {
                            Some(rec) => batch.push(rec),
                            None => { closed = true; break; }
                        },
                        Some(done) = flush_rx.recv() => { flush_done = Some(done); break; }
                        () = &mut linger => break,
                    }
                }
            }
            if flush_done.is_some() {
                while batch.len() < MAX_BATCH * 5 {
                    match rx.try_recv() {
                        Ok(rec) => batch.push(rec),
                        Err(_) => break,
                    }
                }
            }
            if !batch.is_empty() {
                let result = match tokens.token().await {
                    Ok(token) => {
                        let body = target.request_body(&batch).to_string().into_bytes();
                        post(&client, &target, &token, body).await
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => {
                        c.entries_sent
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        batch.clear();
                        failures = 0;
                    }
                    Err(e) => {
                        c.requests_failed.fetch_add(1, Ordering::Relaxed);
                        failures = failures.saturating_add(1);
                        tracing::warn!(
                            { SINK_FIELD } = "cloud-logging",
                            error = %e,
                            "Cloud Logging write failed; retrying later"
                        );
                        // Keep the newest entries if failures pile up.
                        if batch.len() > MAX_BATCH * 5 {
                            let excess = batch.len() - MAX_BATCH * 5;
                            batch.drain(..excess);
                        }
                        if flush_done.is_none() {
                            tokio::time::sleep(backoff(failures)).await;
                        }
                    }
                }
            }
            if let Some(done) = flush_done {
                let _ = done.send(());
            }
            if closed && batch.is_empty() {
                return;
            }
        }
    });
    Ok(SinkHandle {
        counters,
        flush: flush_tx,
        task,
    })
}

/// Time helper for tests and callers that build records by hand.
pub fn record(severity: &'static str, message: &str) -> LogRecord {
    LogRecord {
        time: SystemTime::now(),
        severity,
        message: message.to_owned(),
        fields: Vec::new(),
        seq: crate::publish::log::next_seq(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_contract_shape() {
        let t = Target {
            endpoint: "http://127.0.0.1:1".into(),
            project_id: "demo-project".into(),
            zone: "us-central1-a".into(),
            instance_id: "42".into(),
        };
        let mut r = record("WARNING", "finding raised");
        r.fields
            .push(("finding".into(), Value::from("ENVOY_NOT_RUNNING")));
        let b = t.request_body(&[r]);
        assert_eq!(
            b["logName"],
            "projects/demo-project/logs/service-proxy-agent"
        );
        assert_eq!(b["resource"]["type"], "gce_instance");
        assert_eq!(b["resource"]["labels"]["instance_id"], "42");
        let e = &b["entries"][0];
        assert_eq!(e["severity"], "WARNING");
        assert_eq!(e["jsonPayload"]["message"], "finding raised");
        assert_eq!(e["jsonPayload"]["finding"], "ENVOY_NOT_RUNNING");
        assert_eq!(e["jsonPayload"]["localTimestamp"], e["timestamp"]);
    }

    #[test]
    fn insert_ids_are_stable_per_record_and_distinct_between_records() {
        let t = Target {
            endpoint: "http://127.0.0.1:1".into(),
            project_id: "p".into(),
            zone: "z".into(),
            instance_id: "1".into(),
        };
        let mut a = record("ERROR", "raised");
        a.fields
            .push(("finding".into(), Value::from("ENVOY_NOT_RUNNING")));
        a.fields.push(("health".into(), Value::from("FAILING")));
        let b = record("ERROR", "raised");
        let first = t.request_body(&[a.clone(), b.clone()]);
        let again = t.request_body(&[a, b]);
        assert_eq!(first, again, "a retried batch is the same batch");
        let ids: Vec<&str> = first["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["insertId"].as_str().unwrap())
            .collect();
        assert_ne!(ids[0], ids[1]);
        assert_eq!(
            first["entries"][0]["labels"],
            json!({"finding": "ENVOY_NOT_RUNNING", "health": "FAILING"})
        );
        assert!(first["entries"][1].get("labels").is_none());
    }
}
