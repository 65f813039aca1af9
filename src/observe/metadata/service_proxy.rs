//! The `gce-service-proxy` attribute gcloud writes: parsed leniently, anything unusable defaulted
//! with a warning.

use super::*;

/// Largest `gce-service-proxy` document accepted (GCE caps a metadata value at 256 KiB).
pub const SERVICE_PROXY_MAX_BYTES: usize = 256 * 1024;
pub(super) const MAX_WARNINGS: usize = 32;
pub(super) const MAX_STRING: usize = 4096;
pub(super) const MAX_LIST: usize = 1024;
/// Where the attribute is read from.
pub(super) fn sp_path() -> String {
    format!("instance/attributes/{SERVICE_PROXY_ATTRIBUTE}")
}

/// Parses the `gce-service-proxy` JSON. Only a document that is not a JSON object (or too
/// large) is an error; anything inside it that is unusable is defaulted with a warning.
pub fn parse_service_proxy(text: &str) -> Result<ServiceProxyConfig, MetadataError> {
    if text.len() > SERVICE_PROXY_MAX_BYTES {
        return Err(MetadataError::TooLarge {
            path: sp_path(),
            limit: SERVICE_PROXY_MAX_BYTES,
        });
    }
    let value: Value = serde_json::from_str(text).map_err(|e| {
        malformed(
            &sp_path(),
            format!("{SERVICE_PROXY_ATTRIBUTE} is not JSON: {e}"),
        )
    })?;
    let Value::Object(top) = value else {
        return Err(malformed(
            &sp_path(),
            format!(
                "gce-service-proxy is not a JSON object but {}",
                kind_of(&value)
            ),
        ));
    };
    let mut w = Warnings::default();
    let mut cfg = ServiceProxyConfig {
        api_version: string_field(&top, "api-version", "api-version", &mut w),
        ..ServiceProxyConfig::default()
    };

    if let Some(service) = object_field(&top, "service", "service", &mut w) {
        if let Some(v) = present(service, "serving-ports") {
            let mut ports = port_list(v, "service.serving-ports", &mut w);
            ports.sort_unstable();
            ports.dedup();
            cfg.service.serving_ports = ports;
        }
    }

    if let Some(spec) = object_field(&top, "proxy-spec", "proxy-spec", &mut w) {
        let p = &mut cfg.proxy_spec;
        p.proxy_port =
            present(spec, "proxy-port").and_then(|v| port(v, "proxy-spec.proxy-port", &mut w));
        p.network = string_field(spec, "network", "proxy-spec.network", &mut w);
        p.tracing = present(spec, "tracing").and_then(|v| on_off(v, "proxy-spec.tracing", &mut w));
        p.access_log = string_field(spec, "access-log", "proxy-spec.access-log", &mut w);
        p.scope = string_field(spec, "scope", "proxy-spec.scope", &mut w);
        p.mesh = string_field(spec, "mesh", "proxy-spec.mesh", &mut w);
        p.project_number = present(spec, "project-number")
            .and_then(|v| project_number(v, "proxy-spec.project-number", &mut w));
    }

    if let Some(ti) = object_field(&top, "traffic-interception", "traffic-interception", &mut w) {
        let t = &mut cfg.traffic_interception;
        t.intercept_all_outbound = present(ti, "intercept-all-outbound")
            .and_then(|v| boolean(v, "traffic-interception.intercept-all-outbound", &mut w))
            .unwrap_or(false);
        t.exclude_outbound_ip_ranges = present(ti, "exclude-outbound-ip-ranges")
            .map(|v| string_list(v, "traffic-interception.exclude-outbound-ip-ranges", &mut w))
            .unwrap_or_default();
        t.exclude_outbound_port_ranges = present(ti, "exclude-outbound-port-ranges")
            .map(|v| {
                string_list(
                    v,
                    "traffic-interception.exclude-outbound-port-ranges",
                    &mut w,
                )
            })
            .unwrap_or_default();
        t.intercept_dns = present(ti, "intercept-dns")
            .and_then(|v| boolean(v, "traffic-interception.intercept-dns", &mut w))
            .unwrap_or(false);
    }

    if let Some(labels) = object_field(&top, "labels", "labels", &mut w) {
        for (k, v) in labels.iter().take(MAX_LIST) {
            let name = format!("labels.{}", excerpt(k));
            if !clean_string(k) {
                w.push(format!(
                    "{name}: label name is empty, too long or has control characters; ignored"
                ));
                continue;
            }
            if let Some(v) = scalar_string(v, &name, &mut w) {
                cfg.labels.insert(k.clone(), v);
            }
        }
    }

    if let Some(agent) = object_field(&top, "agent", "agent", &mut w) {
        cfg.ignore_findings = present(agent, "ignore-findings").cloned();
    }

    cfg.warnings = w.0;
    Ok(cfg)
}

#[derive(Default)]
pub(super) struct Warnings(Vec<String>);

impl Warnings {
    fn push(&mut self, msg: String) {
        if self.0.len() < MAX_WARNINGS {
            self.0.push(text::truncate_with_ellipsis(&msg, 200));
        }
    }
}

pub(super) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value of `key`, treating `null` as absent.
pub(super) fn present<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

pub(super) fn object_field<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    name: &str,
    w: &mut Warnings,
) -> Option<&'a Map<String, Value>> {
    match present(map, key)? {
        Value::Object(o) => Some(o),
        other => {
            w.push(format!(
                "{name}: expected an object, got {}; ignored",
                kind_of(other)
            ));
            None
        }
    }
}

pub(super) fn clean_string(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_STRING && !s.chars().any(char::is_control)
}

/// Strings, and numbers/booleans written where a string was meant (e.g. a project number).
pub(super) fn scalar_string(v: &Value, name: &str, w: &mut Warnings) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => {
            w.push(format!(
                "{name}: expected a string, got {}; ignored",
                kind_of(other)
            ));
            return None;
        }
    };
    if s.len() > MAX_STRING || s.chars().any(char::is_control) {
        w.push(format!(
            "{name}: too long or has control characters; ignored"
        ));
        return None;
    }
    Some(s)
}

pub(super) fn string_field(
    map: &Map<String, Value>,
    key: &str,
    name: &str,
    w: &mut Warnings,
) -> Option<String> {
    present(map, key).and_then(|v| scalar_string(v, name, w))
}

pub(super) fn port(v: &Value, name: &str, w: &mut Warnings) -> Option<u16> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n @ 1..=65535) => u16::try_from(n).ok(),
        _ => {
            w.push(format!(
                "{name}: {} is not a port (1-65535); ignored",
                excerpt(&v.to_string())
            ));
            None
        }
    }
}

/// A list of ports: a JSON array (numbers or numeric strings), or gcloud's flag syntax
/// `"80;8080"` when someone wrote the metadata by hand.
pub(super) fn port_list(v: &Value, name: &str, w: &mut Warnings) -> Vec<u16> {
    match v {
        Value::Array(items) => items
            .iter()
            .take(MAX_LIST)
            .filter_map(|i| port(i, name, w))
            .collect(),
        Value::Number(_) => port(v, name, w).into_iter().collect(),
        Value::String(s) => s
            .split([';', ','])
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .take(MAX_LIST)
            .filter_map(|p| port(&Value::String(p.to_owned()), name, w))
            .collect(),
        other => {
            w.push(format!(
                "{name}: expected a list of ports, got {}; ignored",
                kind_of(other)
            ));
            Vec::new()
        }
    }
}

/// A list of strings (an array, or one `;`-separated string), entries trimmed, blanks dropped.
pub(super) fn string_list(v: &Value, name: &str, w: &mut Warnings) -> Vec<String> {
    let items: Vec<String> = match v {
        Value::Array(items) => items
            .iter()
            .take(MAX_LIST)
            .filter_map(|i| scalar_string(i, name, w))
            .collect(),
        Value::String(_) | Value::Number(_) => scalar_string(v, name, w)
            .map(|s| s.split([';', ',']).map(str::to_owned).collect())
            .unwrap_or_default(),
        other => {
            w.push(format!(
                "{name}: expected a list of strings, got {}; ignored",
                kind_of(other)
            ));
            return Vec::new();
        }
    };
    items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .take(MAX_LIST)
        .collect()
}

pub(super) fn boolean(v: &Value, name: &str, w: &mut Warnings) -> Option<bool> {
    let b = match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Some(true),
            "false" | "off" | "no" | "0" | "" => Some(false),
            _ => None,
        },
        Value::Number(n) => match n.as_u64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        _ => None,
    };
    if b.is_none() {
        w.push(format!(
            "{name}: {} is not a boolean; ignored",
            excerpt(&v.to_string())
        ));
    }
    b
}

/// gcloud writes `"ON"`/`"OFF"`.
pub(super) fn on_off(v: &Value, name: &str, w: &mut Warnings) -> Option<bool> {
    boolean(v, name, w)
}

/// gcloud writes the project number as a string; accept a number too; empty means unset.
pub(super) fn project_number(v: &Value, name: &str, w: &mut Warnings) -> Option<u64> {
    let text = match v {
        Value::String(s) if s.trim().is_empty() => return None,
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => {
            w.push(format!(
                "{name}: expected a project number, got {}; ignored",
                kind_of(other)
            ));
            return None;
        }
    };
    match parse_number(&text) {
        Ok(n) => Some(n),
        Err(e) => {
            w.push(format!("{name}: {e}; ignored"));
            None
        }
    }
}
