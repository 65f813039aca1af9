//! The two text formats a Prometheus scrape may ask for, from one list of [`Family`]s.
//!
//! - Classic text 0.0.4 (`text/plain; version=0.0.4`): what Prometheus' own tools (`promtool
//!   check metrics`), the Ops Agent and most scrapers expect unless they ask otherwise. Written
//!   here: `prometheus-client` only writes OpenMetrics.
//! - OpenMetrics 1.0 (`application/openmetrics-text`), when the scrape's `Accept` prefers it:
//!   written by `prometheus-client` (see `metrics.rs`).
//!
//! In both, a counter's series is `<name>_total`, so dashboards and alerts work whichever format
//! the scraper negotiated.

use std::fmt::Write as _;

/// The content type of each format, as sent back.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
}

/// One series: its labels (in order) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

/// One metric family. `name` is without the `_total` a counter's series carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: &'static str, help: &'static str, kind: Kind) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// One unlabelled series.
    pub fn single(name: &'static str, help: &'static str, kind: Kind, value: Value) -> Family {
        Family::new(name, help, kind).with(&[], value)
    }

    pub fn with(mut self, labels: &[(&'static str, &str)], value: Value) -> Family {
        self.samples.push(Sample {
            labels: labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            value,
        });
        self
    }

    /// The series name as written (`_total` for counters).
    pub fn series_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            Kind::Gauge => self.name.to_owned(),
        }
    }
}

/// Whether the `Accept` header prefers OpenMetrics to the classic text (q-values honoured; a
/// tie goes to OpenMetrics, as Prometheus itself lists it first). No header: classic.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let mut best_om: f32 = 0.0;
    let mut best_text: f32 = 0.0;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .filter(|q| q.is_finite())
            .unwrap_or(1.0)
            .clamp(0.0, 1.0);
        match media.as_str() {
            "application/openmetrics-text" => best_om = best_om.max(q),
            "text/plain" => best_text = best_text.max(q),
            _ => {}
        }
    }
    best_om > 0.0 && best_om >= best_text
}

fn escape(s: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

fn write_value(out: &mut String, v: Value) {
    match v {
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) if f.is_nan() => out.push_str("NaN"),
        Value::Float(f) if f.is_infinite() => out.push_str(if f > 0.0 { "+Inf" } else { "-Inf" }),
        Value::Float(f) => {
            let _ = write!(out, "{f}");
        }
    }
}

/// The classic text format 0.0.4: `# HELP` and `# TYPE` on the series name, then the series.
pub fn encode_classic(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        let name = f.series_name();
        let kind = match f.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(out, "# HELP {name} {}", escape(f.help, false));
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for s in &f.samples {
            out.push_str(&name);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape(v, true));
                }
                out.push('}');
            }
            out.push(' ');
            write_value(&mut out, s.value);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_with_total_and_escapes() {
        let fams = vec![
            Family::single(
                "spa_cycles",
                "Completed cycles",
                Kind::Counter,
                Value::Int(3),
            ),
            Family::new("spa_state", "A \\ help\nline", Kind::Gauge)
                .with(&[("state", "a\"b\\c\nd")], Value::Int(1)),
            Family::single(
                "process_cpu_seconds",
                "CPU",
                Kind::Counter,
                Value::Float(0.25),
            ),
        ];
        assert_eq!(
            encode_classic(&fams),
            "# HELP spa_cycles_total Completed cycles\n\
             # TYPE spa_cycles_total counter\n\
             spa_cycles_total 3\n\
             # HELP spa_state A \\\\ help\\nline\n\
             # TYPE spa_state gauge\n\
             spa_state{state=\"a\\\"b\\\\c\\nd\"} 1\n\
             # HELP process_cpu_seconds_total CPU\n\
             # TYPE process_cpu_seconds_total counter\n\
             process_cpu_seconds_total 0.25\n"
        );
    }

    #[test]
    fn negotiation_follows_accept_and_q_values() {
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(wants_openmetrics(Some("application/openmetrics-text")));
        // What Prometheus 2.x sends.
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        // Asked for the classic format first.
        assert!(!wants_openmetrics(Some(
            "text/plain;version=0.0.4,application/openmetrics-text;version=1.0.0;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
        // A q that is not a number counts as 1 rather than hiding the range.
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;q=nan"
        )));
        assert!(wants_openmetrics(Some("Application/OpenMetrics-Text; q=1")));
    }
}
