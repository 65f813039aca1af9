//! Silencing: findings an SRE has accepted (`ignore-findings`, in the config file or in the
//! `gce-service-proxy` metadata's `agent` object) are set aside until a given time.
//!
//! An ignored finding is still reported (`doctor`, the log, `spa_finding_ignored`) with its
//! reason, but does not count in `health`, the `findings` guest attribute, `doctor`'s exit status
//! or `spa_finding_active`. Every rule has an `until`: no finding is silenced forever, and at
//! `until` it comes back by itself (the decision is taken again each diagnosis).
//!
//! Pure: [`apply`] takes the findings, the rules and the time; [`parse_rules`] reads the JSON
//! both sources are turned into.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use crate::finding::{Finding, FindingId};

/// Most rules read from one source; more is a mistake, not a need.
pub const MAX_RULES: usize = 100;
/// Longest reason kept (it is shown in reports and logs).
pub const MAX_REASON: usize = 300;

/// Where a rule came from (shown beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RuleSource {
    #[serde(rename = "config")]
    ConfigFile,
    #[serde(rename = "metadata")]
    Metadata,
}

impl RuleSource {
    pub fn describe(self) -> &'static str {
        match self {
            RuleSource::ConfigFile => "config file",
            RuleSource::Metadata => "gce-service-proxy metadata",
        }
    }
}

/// One `{"id", "reason", "until"}` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoreRule {
    pub id: FindingId,
    pub reason: String,
    pub until: SystemTime,
    pub source: RuleSource,
}

/// A finding set aside by a rule in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ignored {
    #[serde(flatten)]
    pub finding: Finding,
    pub reason: String,
    #[serde(serialize_with = "rfc3339")]
    pub until: SystemTime,
    pub source: RuleSource,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string())
}

impl Ignored {
    pub fn until_text(&self) -> String {
        humantime::format_rfc3339_seconds(self.until).to_string()
    }
}

/// The findings split by the rules in force at `now`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Silenced {
    pub active: Vec<Finding>,
    pub ignored: Vec<Ignored>,
}

/// Sets aside each finding whose ID has a rule with `until` later than `now`; when several
/// rules name it, the one that lasts longest is shown. Order is kept in both lists.
pub fn apply(findings: Vec<Finding>, rules: &[IgnoreRule], now: SystemTime) -> Silenced {
    let mut out = Silenced::default();
    for finding in findings {
        let rule = rules
            .iter()
            .filter(|r| r.id == finding.id && r.until > now)
            .max_by_key(|r| r.until);
        match rule {
            Some(r) => out.ignored.push(Ignored {
                finding,
                reason: r.reason.clone(),
                until: r.until,
                source: r.source,
            }),
            None => out.active.push(finding),
        }
    }
    out
}

/// Reads a list of `{"id", "reason", "until"}`; each unusable entry is left out and named in
/// the problems (an unknown ID, no reason, an `until` that is not RFC 3339...).
pub fn parse_rules(v: &Value, source: RuleSource) -> (Vec<IgnoreRule>, Vec<String>) {
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    let Value::Array(items) = v else {
        problems.push("ignore-findings: expected a list of {id, reason, until}".to_owned());
        return (rules, problems);
    };
    if items.len() > MAX_RULES {
        problems.push(format!(
            "ignore-findings: {} entries, only the first {MAX_RULES} are read",
            items.len()
        ));
    }
    for (i, item) in items.iter().take(MAX_RULES).enumerate() {
        match parse_rule(item, source) {
            Ok(r) => rules.push(r),
            Err(why) => problems.push(format!("ignore-findings[{i}]: {why}; entry ignored")),
        }
    }
    (rules, problems)
}

fn parse_rule(item: &Value, source: RuleSource) -> Result<IgnoreRule, String> {
    let Value::Object(o) = item else {
        return Err("expected an object {id, reason, until}".into());
    };
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "id" | "reason" | "until"))
    {
        return Err(format!(
            "unknown key {:?} (expected id, reason, until)",
            crate::text::truncate_with_ellipsis(&crate::text::strip_control(k), 40)
        ));
    }
    let text = |key: &str| -> Result<&str, String> {
        match o.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim()),
            Some(Value::String(_)) | None => Err(format!("{key} is missing")),
            Some(_) => Err(format!("{key} is not a string")),
        }
    };
    let id_text = text("id")?;
    let id = FindingId::from_name(id_text).ok_or_else(|| {
        format!(
            "unknown finding ID {:?}",
            crate::text::truncate_with_ellipsis(&crate::text::strip_control(id_text), 60)
        )
    })?;
    let reason = crate::text::truncate_with_ellipsis(
        &crate::text::strip_control(text("reason")?),
        MAX_REASON,
    );
    let until_text = text("until")?;
    let until = humantime::parse_rfc3339_weak(until_text)
        .ok()
        .filter(|_| until_text.ends_with(['Z', 'z']))
        .or_else(|| parse_with_offset(until_text))
        .ok_or_else(|| {
            format!(
                "until {:?} is not an RFC 3339 time such as 2027-01-31T00:00:00Z",
                crate::text::truncate_with_ellipsis(&crate::text::strip_control(until_text), 60)
            )
        })?;
    Ok(IgnoreRule {
        id,
        reason,
        until,
        source,
    })
}

/// `(offset seconds east of UTC, the text before it)`.
fn parse_offset(t: &str) -> Option<(i64, &str)> {
    let (base, off) = t.split_at_checked(t.len().checked_sub(6)?)?;
    let b = off.as_bytes();
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    if b.get(3) != Some(&b':') || !base.contains('T') {
        return None;
    }
    let hh: i64 = off.get(1..3)?.parse().ok()?;
    let mm: i64 = off.get(4..6)?.parse().ok()?;
    (hh < 24 && mm < 60).then_some((sign * (hh * 3600 + mm * 60), base))
}

/// RFC 3339 with a numeric offset: the local time read as UTC, then the offset taken away.
fn parse_with_offset(t: &str) -> Option<SystemTime> {
    let (offset, base) = parse_offset(t)?;
    let local = humantime::parse_rfc3339_weak(base).ok()?;
    let shift = std::time::Duration::from_secs(offset.unsigned_abs());
    if offset >= 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
}

/// The TOML form of the config file's `ignore-findings` (an array of tables; `until` a string
/// or a TOML date-time) as the JSON [`parse_rules`] reads. Nesting deeper than a rule can have
/// is cut off (read as `null`, which the parser then names), so a hostile file costs no stack.
pub fn toml_to_json(v: &toml::Value) -> Value {
    toml_to_json_at(v, 0)
}

fn toml_to_json_at(v: &toml::Value, depth: usize) -> Value {
    if depth > 4 {
        return Value::Null;
    }
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => {
            Value::Array(a.iter().map(|x| toml_to_json_at(x, depth + 1)).collect())
        }
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json_at(v, depth + 1)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn rule(id: FindingId, until: &str) -> IgnoreRule {
        IgnoreRule {
            id,
            reason: format!("accepted until {until}"),
            until: t(until),
            source: RuleSource::ConfigFile,
        }
    }

    #[test]
    fn a_rule_in_force_sets_the_finding_aside_and_it_comes_back_at_until() {
        let findings = vec![
            Finding::new(FindingId::EnvoyNotRunning, ""),
            Finding::new(FindingId::ServerFirstProtocol, "port 3306"),
        ];
        let rules = [rule(FindingId::ServerFirstProtocol, "2027-01-01T00:00:00Z")];

        let before = apply(findings.clone(), &rules, t("2026-12-31T23:59:59Z"));
        assert_eq!(before.active, vec![findings[0].clone()]);
        assert_eq!(before.ignored.len(), 1);
        assert_eq!(before.ignored[0].finding, findings[1]);
        assert_eq!(
            before.ignored[0].reason,
            "accepted until 2027-01-01T00:00:00Z"
        );
        assert_eq!(before.ignored[0].until_text(), "2027-01-01T00:00:00Z");

        // At `until` exactly, and after, it counts again.
        for now in ["2027-01-01T00:00:00Z", "2027-06-01T00:00:00Z"] {
            let after = apply(findings.clone(), &rules, t(now));
            assert_eq!(after.active, findings, "{now}");
            assert!(after.ignored.is_empty(), "{now}");
        }
    }

    #[test]
    fn the_longest_rule_in_force_wins_and_others_do_not_leak() {
        let findings = vec![Finding::new(FindingId::EndpointsUnhealthy, "c: 1 of 3")];
        let rules = [
            rule(FindingId::EndpointsUnhealthy, "2026-01-01T00:00:00Z"),
            rule(FindingId::EndpointsUnhealthy, "2027-03-01T00:00:00Z"),
            rule(FindingId::EndpointsUnhealthy, "2027-02-01T00:00:00Z"),
            rule(FindingId::EndpointsPanic, "2030-01-01T00:00:00Z"),
        ];
        let s = apply(findings, &rules, t("2026-12-01T00:00:00Z"));
        assert!(s.active.is_empty());
        assert_eq!(s.ignored[0].until_text(), "2027-03-01T00:00:00Z");
        assert!(apply(vec![], &rules, SystemTime::now()).ignored.is_empty());
    }

    #[test]
    fn parses_entries_and_names_each_bad_one() {
        let v = serde_json::json!([
            {"id": "SERVER_FIRST_PROTOCOL", "reason": "MySQL on 3306 is known", "until": "2027-01-31T00:00:00Z"},
            {"id": "ENDPOINTS_UNHEALTHY", "reason": "canary", "until": "2027-01-31T01:00:00+01:00"},
            {"id": "NOT_A_FINDING", "reason": "x", "until": "2027-01-31T00:00:00Z"},
            {"id": "ENVOY_NOT_LIVE", "until": "2027-01-31T00:00:00Z"},
            {"id": "ENVOY_NOT_LIVE", "reason": "x", "until": "next tuesday"},
            {"id": "ENVOY_NOT_LIVE", "reason": "x", "until": "2027-01-31T00:00:00"},
            {"id": "ENVOY_NOT_LIVE", "reason": "x", "until": "2027-01-31T00:00:00Z", "forever": true},
            "ENVOY_NOT_LIVE",
            {"id": 7, "reason": "x", "until": "2027-01-31T00:00:00Z"}
        ]);
        let (rules, problems) = parse_rules(&v, RuleSource::Metadata);
        assert_eq!(rules.len(), 2, "{problems:#?}");
        assert_eq!(rules[0].id, FindingId::ServerFirstProtocol);
        assert_eq!(rules[0].reason, "MySQL on 3306 is known");
        assert_eq!(rules[0].until, t("2027-01-31T00:00:00Z"));
        assert_eq!(rules[0].source, RuleSource::Metadata);
        // +01:00 is an hour ahead of UTC.
        assert_eq!(rules[1].until, t("2027-01-31T00:00:00Z"));
        assert_eq!(problems.len(), 7, "{problems:#?}");
        assert!(problems[0].contains("unknown finding ID \"NOT_A_FINDING\""));
        assert!(problems[1].contains("reason is missing"));
        assert!(problems[2].contains("not an RFC 3339 time"));
        assert!(problems[3].contains("not an RFC 3339 time"), "no zone");
        assert!(problems[4].contains("unknown key \"forever\""));
        assert!(problems[5].contains("expected an object"));
        assert!(problems[6].contains("id is not a string"));

        let (rules, problems) = parse_rules(&serde_json::json!({"id": "x"}), RuleSource::Metadata);
        assert!(rules.is_empty());
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn hostile_lists_are_bounded() {
        let one = serde_json::json!({"id": "ENVOY_NOT_LIVE", "reason": "r\u{1b}[31m".repeat(1000), "until": "2027-01-31T00:00:00Z"});
        let v = Value::Array(vec![one; MAX_RULES + 50]);
        let (rules, problems) = parse_rules(&v, RuleSource::Metadata);
        assert_eq!(rules.len(), MAX_RULES);
        assert_eq!(problems.len(), 1);
        assert!(rules[0].reason.chars().count() <= MAX_REASON);
        assert!(!rules[0].reason.contains('\u{1b}'));
    }

    #[test]
    fn deep_toml_is_cut_off_not_recursed() {
        let deep = format!("x = {}1{}", "[".repeat(100), "]".repeat(100));
        if let Ok(file) = toml::from_str::<toml::Table>(&deep) {
            let (rules, problems) = parse_rules(&toml_to_json(&file["x"]), RuleSource::ConfigFile);
            assert!(rules.is_empty());
            assert!(!problems.is_empty());
        }
    }

    #[test]
    fn toml_tables_and_datetimes_read_like_json() {
        let file: toml::Table = toml::from_str(
            r#"
            [[ignore-findings]]
            id = "SERVER_FIRST_PROTOCOL"
            reason = "MySQL"
            until = 2027-01-31T00:00:00Z

            [[ignore-findings]]
            id = "ENVOY_NOT_LIVE"
            reason = "slow start"
            until = "2027-01-31T00:00:00Z"
            "#,
        )
        .unwrap();
        let (rules, problems) = parse_rules(
            &toml_to_json(&file["ignore-findings"]),
            RuleSource::ConfigFile,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(rules.len(), 2);
        assert!(
            rules
                .iter()
                .all(|r| r.until == t("2027-01-31T00:00:00Z") + Duration::ZERO)
        );
    }
}
