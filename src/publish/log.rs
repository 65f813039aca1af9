//! The agent's own log (docs/contract.md#6-logs): one JSON line per event on stdout with Cloud Logging's
//! structured keys (`severity`, `message`, `time`, plus `finding` / `detail`), mirrored to the
//! serial port, and handed to the Cloud Logging sink through a bounded queue.
//!
//! It is a `tracing` layer, so the rest of the code logs with `tracing::info!(finding = .., "..")`
//! and never thinks about sinks. Nothing here blocks the caller for long: the serial port is
//! opened non-blocking and the Cloud Logging queue drops (and counts) when full.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde_json::Value;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::Context;
use tracing_subscriber::prelude::*;

use crate::config::LogFormat;
use crate::text::redact_secrets;

/// Field marking events about the Cloud Logging sink itself: they are not sent to Cloud Logging,
/// so a failing sink cannot feed itself.
pub const SINK_FIELD: &str = "sink";

/// One log event as Cloud Logging will receive it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub time: SystemTime,
    /// Cloud Logging severity name (`INFO`, `WARNING`, ...).
    pub severity: &'static str,
    pub message: String,
    /// Structured fields (`finding`, `detail`, `version`, ...), in the order they were given.
    pub fields: Vec<(String, Value)>,
    /// This process's number for the record ([`next_seq`]): Cloud Logging's `insertId` is
    /// made from it, so a batch sent again is not stored twice.
    pub seq: u64,
}

/// A fresh record number (unique in this process, increasing).
pub fn next_seq() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

impl LogRecord {
    /// The JSON line for stdout and the serial port: `severity` and `message` first, then
    /// `time`, then the fields in the order they were given (a reader of the raw journal sees
    /// what happened before the evidence). A field that repeats a key keeps the first value.
    pub fn to_json_line(&self) -> String {
        let head = [
            ("severity", Value::from(self.severity)),
            ("message", Value::from(self.message.as_str())),
            ("time", Value::from(rfc3339_micros(self.time))),
        ];
        let mut seen: Vec<&str> = Vec::with_capacity(head.len() + self.fields.len());
        let mut line = String::with_capacity(128);
        line.push('{');
        let pairs = head
            .iter()
            .map(|(k, v)| (*k, v))
            .chain(self.fields.iter().map(|(k, v)| (k.as_str(), v)));
        for (k, v) in pairs {
            if seen.contains(&k) {
                continue;
            }
            seen.push(k);
            if line.len() > 1 {
                line.push(',');
            }
            // Strings and JSON values always serialise.
            line.push_str(&serde_json::to_string(k).unwrap_or_default());
            line.push(':');
            line.push_str(&serde_json::to_string(v).unwrap_or_default());
        }
        line.push('}');
        line
    }

    /// A line for a human at a terminal.
    pub fn to_text_line(&self) -> String {
        let mut line = format!(
            "{} {:<7} {}",
            humantime::format_rfc3339_seconds(self.time),
            self.severity,
            self.message
        );
        for (k, v) in &self.fields {
            match v {
                Value::String(s) => {
                    let _ = write!(line, " {k}={s:?}");
                }
                other => {
                    let _ = write!(line, " {k}={other}");
                }
            }
        }
        line
    }
}

pub fn rfc3339_micros(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// Counters the metrics endpoint reports.
#[derive(Debug, Default)]
pub struct LogCounters {
    pub lines: AtomicU64,
    pub serial_errors: AtomicU64,
    pub cloud_dropped: AtomicU64,
}

/// Where records go. Shared by the layer; cheap to clone.
#[derive(Clone)]
pub struct LogOutput {
    inner: Arc<OutputInner>,
}

struct OutputInner {
    format: LogFormat,
    stdout: bool,
    /// stdout is the journal: each line starts with its sd-daemon priority.
    journal: bool,
    serial: Option<Mutex<File>>,
    cloud: Mutex<Option<mpsc::Sender<LogRecord>>>,
    counters: Arc<LogCounters>,
    /// Records also kept in memory (tests and `doctor` use it); `None` in the daemon.
    capture: Option<Mutex<Vec<LogRecord>>>,
}

impl LogOutput {
    pub fn new(format: LogFormat, serial_port: Option<&Path>) -> (LogOutput, Option<String>) {
        let (serial, serial_error) = match serial_port.map(open_serial) {
            Some(Ok(f)) => (Some(Mutex::new(f)), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        let out = LogOutput {
            inner: Arc::new(OutputInner {
                format,
                stdout: true,
                journal: super::systemd::stdout_is_journal(),
                serial,
                cloud: Mutex::new(None),
                counters: Arc::new(LogCounters::default()),
                capture: None,
            }),
        };
        (out, serial_error)
    }

    /// An output that only keeps records in memory (for tests).
    pub fn capturing() -> LogOutput {
        LogOutput {
            inner: Arc::new(OutputInner {
                format: LogFormat::Json,
                stdout: false,
                journal: false,
                serial: None,
                cloud: Mutex::new(None),
                counters: Arc::new(LogCounters::default()),
                capture: Some(Mutex::new(Vec::new())),
            }),
        }
    }

    pub fn captured(&self) -> Vec<LogRecord> {
        self.inner
            .capture
            .as_ref()
            .and_then(|c| c.lock().ok().map(|v| v.clone()))
            .unwrap_or_default()
    }

    pub fn counters(&self) -> Arc<LogCounters> {
        self.inner.counters.clone()
    }

    /// From now on, records also go to this queue (the Cloud Logging sink).
    pub fn attach_cloud(&self, tx: mpsc::Sender<LogRecord>) {
        if let Ok(mut c) = self.inner.cloud.lock() {
            *c = Some(tx);
        }
    }

    pub fn write(&self, record: LogRecord, to_cloud: bool) {
        let inner = &self.inner;
        inner.counters.lines.fetch_add(1, Ordering::Relaxed);
        let json = record.to_json_line();
        if inner.stdout {
            let line = match inner.format {
                LogFormat::Json => json.clone(),
                LogFormat::Text => record.to_text_line(),
            };
            let prefix = if inner.journal {
                super::systemd::priority_prefix(record.severity)
            } else {
                ""
            };
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{prefix}{line}");
            let _ = stdout.flush();
        }
        if let Some(serial) = &inner.serial
            && let Ok(mut f) = serial.lock()
            && f.write_all(format!("{json}\n").as_bytes()).is_err()
        {
            inner.counters.serial_errors.fetch_add(1, Ordering::Relaxed);
        }
        if to_cloud
            && let Ok(cloud) = inner.cloud.lock()
            && let Some(tx) = cloud.as_ref()
            && tx.try_send(record.clone()).is_err()
        {
            inner.counters.cloud_dropped.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(capture) = &inner.capture
            && let Ok(mut v) = capture.lock()
        {
            v.push(record);
        }
    }
}

/// Non-blocking, append, no controlling terminal: a stuck serial line must not stall the agent.
fn open_serial(path: &Path) -> Result<File, String> {
    use nix::fcntl::OFlag;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(!path.starts_with("/dev"))
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(path)
        .map_err(|e| format!("cannot open serial port {}: {e}", path.display()))
}

/// The tracing layer that turns events into [`LogRecord`]s.
pub struct AgentLogLayer {
    out: LogOutput,
}

impl AgentLogLayer {
    pub fn new(out: LogOutput) -> Self {
        AgentLogLayer { out }
    }
}

fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        _ => "DEBUG",
    }
}

#[derive(Default)]
struct Collector {
    message: String,
    fields: Vec<(String, Value)>,
    to_cloud: bool,
}

impl Collector {
    fn push(&mut self, field: &Field, value: Value) {
        if field.name() == SINK_FIELD {
            self.to_cloud = false;
        }
        self.fields.push((field.name().to_owned(), value));
    }
}

/// Bytes kept of one text field of a log event.
pub const FIELD_MAX_BYTES: usize = 16 << 10;

/// Text in a log event often comes from other programs (Envoy's version, its log lines,
/// iptables' messages): no credentials, one line without terminal escapes, bounded.
fn clean_field(value: &str) -> String {
    crate::text::truncate_with_ellipsis(
        &crate::text::strip_control(&redact_secrets(value)),
        FIELD_MAX_BYTES,
    )
}

impl Visit for Collector {
    fn record_str(&mut self, field: &Field, value: &str) {
        let value = clean_field(value);
        if field.name() == "message" {
            self.message = value;
        } else {
            self.push(field, Value::from(value));
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = clean_field(&format!("{value:?}"));
        if field.name() == "message" {
            self.message = text;
        } else {
            self.push(field, Value::from(text));
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }
}

impl<S: Subscriber> Layer<S> for AgentLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut c = Collector {
            to_cloud: true,
            ..Collector::default()
        };
        event.record(&mut c);
        let record = LogRecord {
            time: SystemTime::now(),
            severity: severity(event.metadata().level()),
            message: c.message,
            fields: c.fields,
            seq: next_seq(),
        };
        self.out.write(record, c.to_cloud);
    }
}

/// The default filter: our own events at info and above, libraries' warnings only (their debug
/// output can carry request details). `SPA_LOG` overrides it with a list of `target=level`
/// directives (`warn,service_proxy_agent=debug`); one it cannot read leaves everything at info.
/// Targets and levels only, not `EnvFilter`'s span and field matching: that pulled in a regex
/// engine for a feature nobody used (issue 13).
pub fn default_filter() -> Targets {
    filter_from(std::env::var("SPA_LOG").ok().as_deref())
}

const DEFAULT_DIRECTIVES: &str =
    "warn,service_proxy_agent=info,gcp_auth=error,hyper=warn,notify=warn";

fn filter_from(directives: Option<&str>) -> Targets {
    directives
        .unwrap_or(DEFAULT_DIRECTIVES)
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(Level::INFO))
}

/// Installs the agent's logger as the global subscriber. Returns the output handle (to attach
/// Cloud Logging later and read counters) and an error about the serial port, if any.
pub fn init(format: LogFormat, serial_port: Option<&Path>) -> (LogOutput, Option<String>) {
    let (out, serial_error) = LogOutput::new(format, serial_port);
    let layer = AgentLogLayer::new(out.clone()).with_filter(default_filter());
    let _ = tracing_subscriber::registry().with(layer).try_init();
    (out, serial_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_keeps_our_info_and_libraries_warnings_and_reads_spa_log() {
        let default = filter_from(None);
        assert!(default.would_enable("service_proxy_agent::run", &Level::INFO));
        assert!(!default.would_enable("service_proxy_agent::run", &Level::DEBUG));
        assert!(!default.would_enable("gcp_auth::types", &Level::WARN));
        assert!(default.would_enable("rustls::conn", &Level::WARN));
        assert!(!default.would_enable("hyper::proto", &Level::INFO));
        let debug = filter_from(Some("warn,service_proxy_agent=debug"));
        assert!(debug.would_enable("service_proxy_agent::observe", &Level::DEBUG));
        assert!(!debug.would_enable("hyper::proto", &Level::INFO));
        let unreadable = filter_from(Some("service_proxy_agent[span{x=1}]=loud"));
        assert!(unreadable.would_enable("hyper::proto", &Level::INFO));
        assert!(!unreadable.would_enable("service_proxy_agent", &Level::DEBUG));
    }

    fn with_capture(f: impl FnOnce()) -> Vec<LogRecord> {
        let out = LogOutput::capturing();
        let subscriber = tracing_subscriber::registry().with(AgentLogLayer::new(out.clone()));
        tracing::subscriber::with_default(subscriber, f);
        out.captured()
    }

    #[test]
    fn records_have_cloud_logging_keys() {
        let recs = with_capture(|| {
            tracing::warn!(
                finding = "ENVOY_NOT_RUNNING",
                detail = "no envoy process",
                "finding raised"
            );
        });
        assert_eq!(recs.len(), 1);
        let v: Value = serde_json::from_str(&recs[0].to_json_line()).unwrap();
        assert_eq!(v["severity"], "WARNING");
        assert_eq!(v["message"], "finding raised");
        assert_eq!(v["finding"], "ENVOY_NOT_RUNNING");
        assert_eq!(v["detail"], "no envoy process");
        let t = v["time"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(t).is_ok(), "{t}");
    }

    #[test]
    fn secrets_are_redacted_and_lines_stay_single() {
        let recs = with_capture(|| {
            tracing::error!(
                detail = "Authorization: Bearer ya29.a0AfH6SMBx",
                "got ya29.secretToken\nnext"
            );
        });
        let line = recs[0].to_json_line();
        assert!(
            !line.contains("ya29.a0AfH6SMBx") && !line.contains("secretToken"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn sink_events_do_not_go_to_cloud() {
        let out = LogOutput::capturing();
        let (tx, mut rx) = mpsc::channel(4);
        out.attach_cloud(tx);
        let subscriber = tracing_subscriber::registry().with(AgentLogLayer::new(out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(sink = "cloud-logging", "post failed");
            tracing::info!("hello");
        });
        assert_eq!(rx.try_recv().unwrap().message, "hello");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn full_cloud_queue_drops_and_counts() {
        let out = LogOutput::capturing();
        let (tx, _rx) = mpsc::channel(1);
        out.attach_cloud(tx);
        let subscriber = tracing_subscriber::registry().with(AgentLogLayer::new(out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..5 {
                tracing::info!(i, "line");
            }
        });
        assert_eq!(out.counters().cloud_dropped.load(Ordering::Relaxed), 4);
        assert_eq!(out.captured().len(), 5);
    }

    #[test]
    fn serial_mirror_gets_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ttyS0");
        let (out, err) = LogOutput::new(LogFormat::Json, Some(&path));
        assert!(err.is_none());
        out.write(
            LogRecord {
                time: SystemTime::now(),
                severity: "INFO",
                message: "Envoy Version: x/1.40.0".into(),
                fields: vec![],
                seq: next_seq(),
            },
            false,
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["message"], "Envoy Version: x/1.40.0");
    }

    #[test]
    fn json_lines_start_with_severity_message_time_then_fields_in_order() {
        let r = LogRecord {
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
            severity: "ERROR",
            message: "SCOPES_INSUFFICIENT: no cloud-platform".into(),
            fields: vec![
                ("finding".into(), Value::from("SCOPES_INSUFFICIENT")),
                ("detail".into(), Value::from("a \"quoted\" detail")),
                (
                    "message".into(),
                    Value::from("a field named message is not a second key"),
                ),
                ("count".into(), Value::from(3)),
            ],
            seq: 0,
        };
        assert_eq!(
            r.to_json_line(),
            r#"{"severity":"ERROR","message":"SCOPES_INSUFFICIENT: no cloud-platform","time":"2027-01-15T08:00:00.000000Z","finding":"SCOPES_INSUFFICIENT","detail":"a \"quoted\" detail","count":3}"#
        );
    }

    #[test]
    fn fields_from_other_programs_are_one_bounded_line() {
        let out = LogOutput::capturing();
        let subscriber = tracing_subscriber::registry().with(AgentLogLayer::new(out.clone()));
        let hostile = format!("1.40.0\u{1b}[31m\r\nforged: yes\u{0}{}", "é".repeat(50_000));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(version = hostile.as_str(), "Envoy Version: {hostile}");
        });
        let rec = out.captured().pop().unwrap();
        let line = rec.to_json_line();
        let v: Value = serde_json::from_str(&line).unwrap();
        for key in ["message", "version"] {
            let m = v[key].as_str().unwrap();
            assert!(!m.chars().any(char::is_control), "{key}: {m:?}");
            assert!(m.len() <= FIELD_MAX_BYTES && m.ends_with('…'), "{key}");
            assert!(m.contains("1.40.0 [31m  forged: yes "), "{key}");
        }
    }
}
