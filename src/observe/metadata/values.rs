//! Parsers of the metadata server's plain values: numbers, project id, zone, network, scopes.

use super::*;

/// A decimal number (instance id, project number).
pub fn parse_number(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("expected a number, got {:?}", excerpt(t)));
    }
    t.parse::<u64>()
        .map_err(|e| format!("expected a number, got {:?}: {e}", excerpt(t)))
}

/// Project ids are `[a-z0-9-]`, with `domain.com:` prefixes for old domain-scoped projects.
pub fn parse_project_id(text: &str) -> Result<String, String> {
    let t = text.trim();
    let ok = !t.is_empty()
        && t.len() <= 100
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'));
    if ok {
        Ok(t.to_owned())
    } else {
        Err(format!("not a project id: {:?}", excerpt(t)))
    }
}

/// `projects/<num>/zones/<zone>` → `<zone>` (a bare zone name is taken as is).
pub fn parse_zone(text: &str) -> Result<String, String> {
    let t = text.trim();
    let zone = match t.rsplit_once("/zones/") {
        Some((prefix, zone)) => {
            let num = prefix.strip_prefix("projects/").unwrap_or("");
            parse_number(num)
                .map_err(|_| format!("not projects/<number>/zones/<zone>: {:?}", excerpt(t)))?;
            zone
        }
        None if !t.contains('/') => t,
        None => {
            return Err(format!(
                "not projects/<number>/zones/<zone>: {:?}",
                excerpt(t)
            ));
        }
    };
    let ok = !zone.is_empty()
        && zone.len() <= 63
        && zone
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(zone.to_owned())
    } else {
        Err(format!("not a zone name: {:?}", excerpt(zone)))
    }
}

/// `projects/<num>/networks/<name>`.
pub fn parse_network(text: &str) -> Result<NetworkRef, String> {
    let t = text.trim();
    let bad = || format!("not projects/<number>/networks/<name>: {:?}", excerpt(t));
    let mut parts = t.split('/');
    let (Some("projects"), Some(num), Some("networks"), Some(name), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    let project_number = parse_number(num).map_err(|_| bad())?;
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(bad());
    }
    Ok(NetworkRef {
        project_number,
        name: name.to_owned(),
    })
}

/// One scope per line; blank lines and control characters dropped.
pub fn parse_scopes(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().any(char::is_control))
        .map(str::to_owned)
        .collect()
}

pub(super) fn excerpt(s: &str) -> String {
    text::truncate_with_ellipsis(&text::strip_control(s), 80)
}

// --- gce-service-proxy --------------------------------------------------------------------
