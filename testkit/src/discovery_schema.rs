//! Checks a JSON value against a schema of a Google API discovery document (the `schemas` of
//! e.g. `logging.v2.json`, as shipped by google-api-python-client: `$SPA_DISCOVERY_DIR`).
//!
//! What a request body must satisfy to be what the API reads, strictly:
//! - an object's keys are its schema's `properties` (an unknown key is an error: the real API
//!   rejects it with INVALID_ARGUMENT), or values of its `additionalProperties` (maps);
//! - a property marked `readOnly` ("Output only") is an error in a request;
//! - `type` (`object`, `array`, `string`, `integer`, `number`, `boolean`, `any`), `enum`, `$ref`,
//!   `items`, and the string `format`s the documents use (`int64`, `uint64`, `int32`, `uint32`,
//!   `double`, `float`, `google-datetime`, `google-duration`, `byte`, `google-fieldmask`);
//! - `null` is refused (a client that means "unset" leaves the key out).
//!
//! Every problem is reported with its JSON path, not just the first.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Map, Value};

/// One discovery document's schemas.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// e.g. `logging:v2`, for messages.
    pub id: String,
    schemas: Map<String, Value>,
}

/// One place where a value does not fit its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// `$.entries[0].labels.finding`
    pub path: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The directory of discovery documents (`SPA_DISCOVERY_DIR`, set by `tests/run.sh` from
/// `tests/setup-google-clients.sh`), or an error that says how to get it.
pub fn discovery_dir() -> anyhow::Result<PathBuf> {
    match std::env::var_os("SPA_DISCOVERY_DIR") {
        Some(d) if !d.is_empty() => Ok(PathBuf::from(d)),
        _ => bail!(
            "SPA_DISCOVERY_DIR is not set: run `export SPA_DISCOVERY_DIR=$(tests/setup-google-clients.sh | tail -n 1)` (tests/run.sh does)"
        ),
    }
}

impl Discovery {
    /// `name` is a file in [`discovery_dir`], e.g. `logging.v2.json`.
    pub fn load(name: &str) -> anyhow::Result<Discovery> {
        Discovery::load_path(&discovery_dir()?.join(name))
    }

    pub fn load_path(path: &Path) -> anyhow::Result<Discovery> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading discovery document {}", path.display()))?;
        Discovery::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Discovery> {
        let doc: Value = serde_json::from_str(text).context("not JSON")?;
        let schemas = doc
            .get("schemas")
            .and_then(Value::as_object)
            .cloned()
            .context("no `schemas` object")?;
        let id = doc
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        Ok(Discovery { id, schemas })
    }

    /// The named schema, if the document has it.
    pub fn schema(&self, name: &str) -> Option<&Value> {
        self.schemas.get(name)
    }

    /// Every violation of schema `name` by `value` (empty: it fits).
    pub fn check(&self, name: &str, value: &Value) -> Vec<Violation> {
        let mut out = Vec::new();
        match self.schemas.get(name) {
            Some(schema) => self.check_node(schema, value, "$", 0, &mut out),
            None => out.push(Violation {
                path: "$".into(),
                message: format!("{} has no schema {name:?}", self.id),
            }),
        }
        out
    }

    /// Panics with every violation listed (and the value) when `value` does not fit.
    pub fn assert_valid(&self, name: &str, value: &Value) {
        let v = self.check(name, value);
        assert!(
            v.is_empty(),
            "not a valid {} {name}:\n  {}\nvalue: {value:#}",
            self.id,
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }

    fn check_node(
        &self,
        schema: &Value,
        value: &Value,
        path: &str,
        depth: usize,
        out: &mut Vec<Violation>,
    ) {
        let mut bad = |message: String| {
            out.push(Violation {
                path: path.to_owned(),
                message,
            })
        };
        // Schemas refer to themselves (Struct → Value → Struct): values are finite, but bound
        // the walk anyway.
        if depth > 64 {
            bad("nested too deeply".into());
            return;
        }
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            match self.schemas.get(r) {
                Some(s) => self.check_node(s, value, path, depth + 1, out),
                None => bad(format!("$ref {r:?} is not in {}", self.id)),
            }
            return;
        }
        let ty = schema.get("type").and_then(Value::as_str).unwrap_or("any");
        if value.is_null() && ty != "any" {
            bad(format!("null where {ty} is expected (leave the key out)"));
            return;
        }
        match ty {
            "any" => {}
            "object" => {
                let Some(obj) = value.as_object() else {
                    bad(format!("expected an object, got {}", kind(value)));
                    return;
                };
                let props = schema.get("properties").and_then(Value::as_object);
                let additional = schema.get("additionalProperties");
                for (k, v) in obj {
                    let child = format!("{path}.{k}");
                    match (props.and_then(|p| p.get(k)), additional) {
                        (Some(p), _) => {
                            if p.get("readOnly").and_then(Value::as_bool) == Some(true) {
                                out.push(Violation {
                                    path: child,
                                    message: "output only (readOnly): not to be sent".into(),
                                });
                            } else {
                                self.check_node(p, v, &child, depth + 1, out);
                            }
                        }
                        (None, Some(a)) => self.check_node(a, v, &child, depth + 1, out),
                        (None, None) => out.push(Violation {
                            path: child,
                            message: format!(
                                "unknown field (known: {})",
                                props
                                    .map(|p| p.keys().cloned().collect::<Vec<_>>().join(", "))
                                    .unwrap_or_default()
                            ),
                        }),
                    }
                }
            }
            "array" => {
                let Some(items) = value.as_array() else {
                    bad(format!("expected an array, got {}", kind(value)));
                    return;
                };
                let Some(item_schema) = schema.get("items") else {
                    bad("array schema without items".into());
                    return;
                };
                for (i, v) in items.iter().enumerate() {
                    self.check_node(item_schema, v, &format!("{path}[{i}]"), depth + 1, out);
                }
            }
            "string" => {
                let Some(s) = value.as_str() else {
                    bad(format!("expected a string, got {}", kind(value)));
                    return;
                };
                if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
                    && !allowed.iter().any(|a| a.as_str() == Some(s))
                {
                    bad(format!(
                        "{s:?} is not one of {}",
                        allowed
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                if let Some(f) = schema.get("format").and_then(Value::as_str)
                    && let Err(why) = string_format(f, s)
                {
                    bad(format!("{s:?} is not {f}: {why}"));
                }
            }
            "integer" => {
                let fits = match schema.get("format").and_then(Value::as_str) {
                    Some("int32") => value.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
                    Some("uint32") => value.as_u64().is_some_and(|n| u32::try_from(n).is_ok()),
                    _ => value.is_i64() || value.is_u64(),
                };
                if !fits {
                    bad(format!("expected an integer in range, got {value}"));
                }
            }
            "number" => {
                if !value.is_number() {
                    bad(format!("expected a number, got {}", kind(value)));
                }
            }
            "boolean" => {
                if !value.is_boolean() {
                    bad(format!("expected a boolean, got {}", kind(value)));
                }
            }
            other => bad(format!(
                "schema type {other:?} is not known to this checker"
            )),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The string formats of discovery documents (64-bit integers travel as strings in JSON).
fn string_format(format: &str, s: &str) -> Result<(), String> {
    match format {
        "int64" => s.parse::<i64>().map(|_| ()).map_err(|e| e.to_string()),
        "uint64" => s.parse::<u64>().map(|_| ()).map_err(|e| e.to_string()),
        "int32" => s.parse::<i32>().map(|_| ()).map_err(|e| e.to_string()),
        "uint32" => s.parse::<u32>().map(|_| ()).map_err(|e| e.to_string()),
        "double" | "float" => s.parse::<f64>().map(|_| ()).map_err(|e| e.to_string()),
        "google-datetime" | "date-time" => rfc3339(s),
        "google-duration" => {
            let n = s.strip_suffix('s').ok_or("no trailing s")?;
            n.parse::<f64>()
                .map(|_| ())
                .map_err(|e| format!("seconds: {e}"))
        }
        "byte" => {
            let base64 =
                |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'=');
            if s.bytes().all(base64) {
                Ok(())
            } else {
                Err("not base64".into())
            }
        }
        // Field masks, and formats that put no constraint on the text.
        _ => Ok(()),
    }
}

/// RFC 3339 as Google's APIs read it: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
fn rfc3339(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(digits(0..4)
        && at(4, b'-')
        && digits(5..7)
        && at(7, b'-')
        && digits(8..10)
        && (at(10, b'T') || at(10, b't'))
        && digits(11..13)
        && at(13, b':')
        && digits(14..16)
        && at(16, b':')
        && digits(17..19))
    {
        return Err("expected YYYY-MM-DDTHH:MM:SS".into());
    }
    let mut i = 19;
    if at(i, b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start || i - start > 9 {
            return Err("fraction of 1 to 9 digits expected".into());
        }
    }
    let zone = &b[i.min(b.len())..];
    let zone_ok = zone == b"Z"
        || zone == b"z"
        || (zone.len() == 6
            && matches!(zone.first(), Some(b'+' | b'-'))
            && zone[1..3].iter().all(u8::is_ascii_digit)
            && zone[3] == b':'
            && zone[4..6].iter().all(u8::is_ascii_digit));
    if !zone_ok {
        return Err("expected Z or ±HH:MM at the end".into());
    }
    let num = |r: std::ops::Range<usize>| -> u32 {
        std::str::from_utf8(&b[r])
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(99)
    };
    if !(1..=12).contains(&num(5..7))
        || !(1..=31).contains(&num(8..10))
        || num(11..13) > 23
        || num(14..16) > 59
        || num(17..19) > 60
    {
        return Err("a field is out of range".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Discovery {
        Discovery::parse(
            &json!({
                "id": "demo:v1",
                "schemas": {
                    "Req": {"id": "Req", "type": "object", "properties": {
                        "name": {"type": "string"},
                        "entries": {"type": "array", "items": {"$ref": "Entry"}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "count": {"type": "integer", "format": "int32"},
                        "size": {"type": "string", "format": "int64"},
                        "ok": {"type": "boolean"},
                        "ratio": {"type": "number", "format": "double"}
                    }},
                    "Entry": {"id": "Entry", "type": "object", "properties": {
                        "severity": {"type": "string", "enum": ["DEFAULT", "INFO", "ERROR"]},
                        "timestamp": {"type": "string", "format": "google-datetime"},
                        "payload": {"type": "object", "additionalProperties": {"type": "any"}},
                        "receiveTimestamp": {"type": "string", "format": "google-datetime", "readOnly": true},
                        "next": {"$ref": "Entry"},
                        "missing": {"$ref": "Nowhere"}
                    }}
                }
            })
            .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn a_fitting_value_passes() {
        let v = json!({
            "name": "x", "count": 3, "size": "-12345678901234", "ok": true, "ratio": 0.5,
            "labels": {"a": "b"},
            "entries": [{"severity": "INFO", "timestamp": "2026-12-06T23:00:00.123456Z",
                         "payload": {"anything": [1, {"x": null}]},
                         "next": {"severity": "ERROR", "timestamp": "2026-12-06T23:00:00+01:00"}}]
        });
        assert_eq!(doc().check("Req", &v), vec![]);
    }

    #[test]
    fn every_violation_is_named_with_its_path() {
        let v = json!({
            "name": 1,
            "extra": true,
            "count": 3_000_000_000u64,
            "size": "12x",
            "labels": {"a": 1},
            "entries": [
                {"severity": "LOUD", "timestamp": "2026-12-06 23:00:00", "receiveTimestamp": "2026-12-06T23:00:00Z"},
                {"missing": {}, "next": {"severity": null}},
                "not an object"
            ]
        });
        let got: Vec<String> = doc()
            .check("Req", &v)
            .iter()
            .map(ToString::to_string)
            .collect();
        let expect = [
            "$.count: expected an integer in range",
            "$.entries[0].receiveTimestamp: output only",
            "$.entries[0].severity: \"LOUD\" is not one of DEFAULT, INFO, ERROR",
            "$.entries[0].timestamp: \"2026-12-06 23:00:00\" is not google-datetime",
            "$.entries[1].missing: $ref \"Nowhere\" is not in demo:v1",
            "$.entries[1].next.severity: null where string is expected",
            "$.entries[2]: expected an object, got a string",
            "$.extra: unknown field (known: ",
            "$.labels.a: expected a string, got a number",
            "$.name: expected a string, got a number",
            "$.size: \"12x\" is not int64",
        ];
        for e in expect {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in {got:#?}"
            );
        }
        assert_eq!(got.len(), expect.len(), "{got:#?}");
        assert_eq!(doc().check("Nope", &v).len(), 1);
    }

    #[test]
    fn rfc3339_edges() {
        assert!(rfc3339("2026-12-06T23:00:00Z").is_ok());
        assert!(rfc3339("2026-12-06T23:00:00.123456789-05:30").is_ok());
        assert!(rfc3339("2026-12-06T23:00:00").is_err());
        assert!(rfc3339("2026-13-06T23:00:00Z").is_err());
        assert!(rfc3339("2026-12-06T23:00:00.Z").is_err());
        assert!(rfc3339("2026-12-06T23:00:00.1234567890Z").is_err());
        assert!(rfc3339("").is_err());
        assert!(rfc3339("2026-12-06T23:00:00+0100").is_err());
    }
}
