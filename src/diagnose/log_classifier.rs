//! Envoy log entries → typed events. One matcher per kind of line takes every form Envoy has
//! written across versions (docs/outside-world.md#envoy-log-lines):
//!
//! - stream closed: `gRPC config stream closed: 5, M` (≤1.13), `METHOD gRPC config stream
//!   closed: 5, M` (1.14–1.19), `... closed since 39s ago: 14, M` and `... closed: 4, M
//!   (previously 14, M' since 39s ago)` (1.20+), `METHOD gRPC config stream to TARGET closed: ...`
//!   (1.24+), and a trailing `{details}` after the message (~1.35+, e.g. `{via_upstream}`);
//! - rejections: `<gRPC|delta|REST|gRPC state-of-the-world> config for TYPE rejected: R`,
//!   `lds: listener 'N' config rejected: R`, `Filesystem config update rejected: R`;
//! - `unable to open file 'P': E` inside a rejection or an Envoy exit (`[critical]`) line;
//! - `listener 'N' failed to bind or apply socket options: R`;
//! - `gRPC config: initial fetch timed out for TYPE`, and `[critical]` lines.
//!
//! Messages written with `--log-format-escaped` are unescaped first. Nothing here panics on any
//! input; every string kept is bounded.

use std::borrow::Cow;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::observe::envoy_log::{LogEntry, LogLevel};
use crate::text::truncate_with_ellipsis;

/// Longest text kept in an event field (reasons, messages, names).
pub const MAX_FIELD_BYTES: usize = 4096;

/// What one log entry says, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    StreamClosed(StreamClosed),
    ConfigRejected(ConfigRejected),
    /// Envoy could not open a file access log (in a rejected update, or at startup, exiting).
    AccessLogDenied {
        path: String,
        /// The system's words, e.g. `Permission denied`.
        reason: String,
    },
    BindFailed {
        listener: String,
        reason: String,
    },
    InitialFetchTimeout {
        type_url: String,
    },
    /// A `[critical]` entry: Envoy is usually exiting.
    Critical {
        message: String,
    },
}

/// An xDS (or LRS) gRPC stream closed by the server or the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamClosed {
    /// `StreamAggregatedResources`, `StreamLoadStats`, `DeltaAggregatedResources`, ...; `None`
    /// before Envoy 1.14.
    pub method: Option<String>,
    /// The cluster (envoy_grpc) or target URI (google_grpc); `None` before 1.24 and for LRS.
    pub target: Option<String>,
    /// The gRPC status code.
    pub code: u32,
    /// The status message without Envoy's trailing `{details}`; may be empty (google_grpc
    /// unreachable gives `13, `).
    pub message: String,
    /// `closed since Ns ago`: the same code has been closing the stream for that long.
    pub since_secs: Option<u64>,
    /// `(previously C, M since Ns ago)`: the stream had been closing with another code.
    pub previous: Option<PreviousClose>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousClose {
    pub code: u32,
    pub message: String,
    pub since_secs: u64,
}

impl StreamClosed {
    /// `StreamAggregatedResources to xds_cluster`, for details.
    pub fn stream_name(&self) -> String {
        let method = self.method.as_deref().unwrap_or("xDS");
        match &self.target {
            Some(t) => format!("{method} to {t}"),
            None => method.to_owned(),
        }
    }
}

/// Which log line reported a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectedBy {
    /// `<gRPC|delta|REST|...> config for TYPE rejected:` (the subscription).
    Subscription,
    /// `lds: listener 'N' config rejected:` (one line per listener).
    Lds,
    /// `Filesystem config update rejected:`.
    Filesystem,
}

/// Envoy refused configuration it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRejected {
    pub by: RejectedBy,
    /// `type.googleapis.com/envoy.config.listener.v3.Listener` (v3) or
    /// `type.googleapis.com/envoy.api.v2.Listener` (v2), when the line names it.
    pub type_url: Option<String>,
    /// The resource kind, `Listener`, `Cluster`, ..., from the type URL or the reason.
    pub kind: Option<String>,
    /// Names of the rejected resources, when the line gives them.
    pub resources: Vec<String>,
    /// Envoy's reason, as written (possibly several lines).
    pub reason: String,
}

/// The gRPC status name of a code, for details.
pub fn grpc_code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN_CODE",
    }
}

/// The events of one assembled entry. Only entries with Envoy's `[date time]...[level]` header
/// count: an access log in the same directory (its lines start `[2026-11-22T...`) carries text
/// that clients choose, such as a User-Agent, and must not be able to forge findings.
pub fn classify(entry: &LogEntry) -> Vec<LogEvent> {
    match (&entry.time, entry.level) {
        (Some(_), Some(level)) => classify_message(Some(level), &entry.message),
        _ => Vec::new(),
    }
}

/// The events of one message (the text after Envoy's header); `level` decides whether an
/// `unable to open file` outside a rejection counts (only in `[critical]` lines, where Envoy
/// says why it exits).
pub fn classify_message(level: Option<LogLevel>, message: &str) -> Vec<LogEvent> {
    let text = unescape(message);
    let text: &str = &text;
    let mut events = Vec::new();
    if let Some(s) = stream_closed(text) {
        events.push(LogEvent::StreamClosed(s));
    }
    // One pass finds which of the other forms can be there; only those are parsed.
    let present = present_needles(text);
    let has = |n: usize| present & (1 << n) != 0;
    let rejection = if has(REJECTED) {
        config_rejected(text)
    } else {
        None
    };
    let in_exit = level == Some(LogLevel::Critical);
    if (rejection.is_some() || in_exit) && has(UNOPENABLE) {
        for (path, reason) in unopenable_files(text) {
            events.push(LogEvent::AccessLogDenied { path, reason });
        }
    }
    if let Some(r) = rejection {
        events.insert(0, LogEvent::ConfigRejected(r));
    }
    if has(BIND)
        && let Some((listener, reason)) = bind_failed(text)
    {
        events.push(LogEvent::BindFailed { listener, reason });
    }
    if has(FETCH)
        && let Some(type_url) = initial_fetch_timeout(text)
    {
        events.push(LogEvent::InitialFetchTimeout { type_url });
    }
    if in_exit {
        events.push(LogEvent::Critical {
            message: bound(text.trim_end()),
        });
    }
    events
}

/// Substrings of the forms other than stream-closed (which is anchored at the start), by index.
pub const CLASSIFIER_NEEDLES: &[&str] = &[
    " rejected:",
    "unable to open file '",
    "' failed to bind or apply socket options:",
    "initial fetch timed out for ",
];
const REJECTED: usize = 0;
const UNOPENABLE: usize = 1;
const BIND: usize = 2;
const FETCH: usize = 3;

static NEEDLE_MATCHER: LazyLock<Option<AhoCorasick>> = LazyLock::new(|| {
    AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostFirst)
        .build(CLASSIFIER_NEEDLES)
        .ok()
});

/// A bit per needle of [`CLASSIFIER_NEEDLES`] found in `text` (all bits if the matcher could
/// not be built, so nothing is missed).
fn present_needles(text: &str) -> u32 {
    let Some(m) = NEEDLE_MATCHER.as_ref() else {
        return u32::MAX;
    };
    let mut bits = 0u32;
    for found in m.find_iter(text) {
        bits |= 1 << found.pattern().as_u32().min(31);
    }
    bits
}

fn bound(s: &str) -> String {
    truncate_with_ellipsis(s, MAX_FIELD_BYTES)
}

fn stream_closed(text: &str) -> Option<StreamClosed> {
    const KEY: &str = "gRPC config stream";
    // Only at the start, or after the first word: no need to search the whole message.
    let idx = if text.starts_with(KEY) {
        0
    } else {
        let space = text.find(' ')?;
        if !text.get(space + 1..)?.starts_with(KEY) {
            return None;
        }
        space + 1
    };
    // The message starts with the stream (≤1.13) or with `METHOD ` (an RPC of the xDS or LRS
    // services: `Stream...` or `Delta...`); anything else is text that merely quotes it.
    let method = match text.get(..idx)? {
        "" => None,
        before => {
            let m = before.strip_suffix(' ')?;
            let known = m.starts_with("Stream") || m.starts_with("Delta");
            if !known || !m.chars().all(|c| c.is_ascii_alphanumeric()) || m.len() > 64 {
                return None;
            }
            Some(m.to_owned())
        }
    };
    let mut rest = text.get(idx + KEY.len()..)?;
    let mut target = None;
    if let Some(r) = rest.strip_prefix(" to ") {
        let end = r.find(" closed")?;
        let t = r.get(..end)?;
        if t.is_empty() || t.contains(char::is_whitespace) {
            return None;
        }
        target = Some(bound(t));
        rest = r.get(end..)?;
    }
    rest = rest.strip_prefix(" closed")?;
    let mut since_secs = None;
    if let Some(r) = rest.strip_prefix(" since ") {
        let (secs, r) = leading_number(r)?;
        since_secs = Some(secs);
        rest = r.strip_prefix("s ago")?;
    }
    rest = rest.strip_prefix(':')?;
    rest = rest.strip_prefix(' ').unwrap_or(rest);
    let (code, r) = leading_number(rest)?;
    let code = u32::try_from(code).ok()?;
    rest = r.strip_prefix(',')?;
    rest = rest.strip_prefix(' ').unwrap_or(rest);
    let rest = rest.trim_end();
    let (message, previous) = match split_previously(rest) {
        Some((m, p)) => (m, Some(p)),
        None => (rest, None),
    };
    Some(StreamClosed {
        method,
        target,
        code,
        message: bound(strip_details_suffix(message)),
        since_secs,
        previous,
    })
}

/// `M (previously C, M' since Ns ago)` → (`M`, previous).
fn split_previously(s: &str) -> Option<(&str, PreviousClose)> {
    const KEY: &str = " (previously ";
    let inner_end = s.strip_suffix("s ago)")?;
    let at = s.rfind(KEY)?;
    let inner = inner_end.get(at + KEY.len()..)?;
    let (code, r) = leading_number(inner)?;
    let r = r.strip_prefix(',')?;
    let r = r.strip_prefix(' ').unwrap_or(r);
    let since_at = r.rfind(" since ")?;
    let (secs, tail) = leading_number(r.get(since_at + " since ".len()..)?)?;
    if !tail.is_empty() {
        return None;
    }
    let previous = PreviousClose {
        code: u32::try_from(code).ok()?,
        message: bound(strip_details_suffix(r.get(..since_at)?)),
        since_secs: secs,
    };
    Some((s.get(..at)?, previous))
}

/// Digits at the start of `s` (at most 19, so they fit) and what follows.
fn leading_number(s: &str) -> Option<(u64, &str)> {
    let len = s.bytes().take_while(u8::is_ascii_digit).count();
    if len == 0 || len > 19 {
        return None;
    }
    Some((s.get(..len)?.parse().ok()?, s.get(len..)?))
}

/// Drops a balanced trailing `{...}` without whitespace inside: Envoy (~1.35+) appends the
/// response code details (`{via_upstream}`, `{upstream_reset_before_response_started{...}}`) to
/// gRPC messages, and they never contain spaces.
fn strip_details_suffix(s: &str) -> &str {
    if !s.ends_with('}') {
        return s;
    }
    let mut depth = 0usize;
    for (i, b) in s.bytes().enumerate().rev() {
        match b {
            b'}' => depth += 1,
            b'{' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return s.get(..i).unwrap_or(s);
                }
            }
            b if b.is_ascii_whitespace() => return s,
            _ => {}
        }
    }
    s
}

fn config_rejected(text: &str) -> Option<ConfigRejected> {
    // `lds: listener 'N' config rejected: R`
    if let Some(i) = text.find("lds: listener '") {
        let r = text.get(i + "lds: listener '".len()..)?;
        if let Some(end) = r.find("' config rejected:") {
            let name = r.get(..end)?;
            let reason = r.get(end + "' config rejected:".len()..)?;
            return Some(ConfigRejected {
                by: RejectedBy::Lds,
                type_url: None,
                kind: Some("Listener".into()),
                resources: vec![bound(name)],
                reason: bound(reason.trim()),
            });
        }
    }
    if let Some(i) = text.find("Filesystem config update rejected:") {
        let reason = text
            .get(i + "Filesystem config update rejected:".len()..)?
            .trim();
        let (kind, resources) = resources_in_reason(reason);
        return Some(ConfigRejected {
            by: RejectedBy::Filesystem,
            type_url: None,
            kind,
            resources,
            reason: bound(reason),
        });
    }
    // `gRPC config for T rejected: R` and its delta / REST / state-of-the-world siblings.
    let mut search = 0;
    while let Some(i) = text.get(search..)?.find("config for ") {
        let start = search + i + "config for ".len();
        search = start;
        let r = text.get(start..)?;
        let Some(end) = r.find(" rejected:") else {
            continue;
        };
        let type_url = r.get(..end)?;
        if type_url.is_empty() || type_url.contains(char::is_whitespace) {
            continue;
        }
        let reason = r.get(end + " rejected:".len()..)?.trim();
        let (reason_kind, resources) = resources_in_reason(reason);
        let kind = kind_of_type_url(type_url).or(reason_kind);
        return Some(ConfigRejected {
            by: RejectedBy::Subscription,
            type_url: Some(bound(type_url)),
            kind,
            resources,
            reason: bound(reason),
        });
    }
    None
}

/// `type.googleapis.com/envoy.config.listener.v3.Listener` → `Listener`.
pub fn kind_of_type_url(type_url: &str) -> Option<String> {
    let name = type_url.rsplit(['/', '.']).next()?;
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric())).then(|| name.to_owned())
}

/// `Error adding/updating listener(s) A: why\nB: why\n` → (`Listener`, [A, B]).
fn resources_in_reason(reason: &str) -> (Option<String>, Vec<String>) {
    const KEY: &str = "Error adding/updating ";
    let Some(i) = reason.find(KEY) else {
        return (None, Vec::new());
    };
    let Some(r) = reason.get(i + KEY.len()..) else {
        return (None, Vec::new());
    };
    let Some(paren) = r.find("(s)") else {
        return (None, Vec::new());
    };
    let word = r.get(..paren).unwrap_or_default();
    let kind = (!word.is_empty() && word.chars().all(|c| c.is_ascii_alphabetic())).then(|| {
        let mut k = word.to_ascii_lowercase();
        if let Some(first) = k.get_mut(..1) {
            first.make_ascii_uppercase();
        }
        k
    });
    let mut names = Vec::new();
    let first = r
        .get(paren + "(s)".len()..)
        .unwrap_or_default()
        .trim_start();
    for (n, line) in first.lines().enumerate() {
        let line = if n == 0 { line } else { line.trim_start() };
        let Some(colon) = line.find(':') else {
            continue;
        };
        let name = line.get(..colon).unwrap_or_default();
        if !name.is_empty()
            && !name.contains(char::is_whitespace)
            && !name.contains('\'')
            && names.len() < 64
            && !names.iter().any(|x: &String| x == name)
        {
            names.push(bound(name));
        }
    }
    (kind, names)
}

/// Every `unable to open file 'P': E` → (P, E).
pub fn unopenable_files(text: &str) -> Vec<(String, String)> {
    const KEY: &str = "unable to open file '";
    let mut found: Vec<(String, String)> = Vec::new();
    let mut search = 0;
    while let Some(i) = text.get(search..).and_then(|t| t.find(KEY)) {
        let start = search + i + KEY.len();
        search = start;
        let Some(r) = text.get(start..) else { break };
        let Some(end) = r.find("':") else { continue };
        let path = r.get(..end).unwrap_or_default();
        if path.is_empty() || path.contains('\n') {
            continue;
        }
        let after = r.get(end + 2..).unwrap_or_default().trim_start();
        let reason_end = after.find(['\n', '`']).unwrap_or(after.len());
        let reason = after.get(..reason_end).unwrap_or_default().trim();
        if found.len() < 16 && !found.iter().any(|(p, _)| p == path) {
            found.push((bound(path), bound(reason)));
        }
    }
    found
}

fn bind_failed(text: &str) -> Option<(String, String)> {
    const KEY: &str = "' failed to bind or apply socket options:";
    let end = text.find(KEY)?;
    let before = text.get(..end)?;
    let start = before.rfind("listener '")? + "listener '".len();
    let name = before.get(start..)?;
    let reason = text.get(end + KEY.len()..)?.trim();
    Some((bound(name), bound(reason)))
}

fn initial_fetch_timeout(text: &str) -> Option<String> {
    const KEY: &str = "initial fetch timed out for ";
    let i = text.find(KEY)?;
    let r = text.get(i + KEY.len()..)?;
    let t = r.split(char::is_whitespace).next()?;
    (!t.is_empty()).then(|| bound(t))
}

/// What reading a whole log stream gives, counted: the daemon's per-chunk path (assembler fast
/// path + classifier) run over a file, for benchmarks and one-off checks of big logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanSummary {
    pub bytes: u64,
    pub lines: u64,
    /// Lines holding one of the prefilter's needles ([`crate::observe::envoy_log::INTERESTING`]):
    /// the count `rg --count -F -e N1 -e N2 ...` gives for the same needles.
    pub matching_lines: u64,
    /// Entries the prefilter let through (they are parsed and classified).
    pub candidate_entries: u64,
    /// Entries that gave at least one event.
    pub failure_entries: u64,
    pub stream_closed: u64,
    pub config_rejected: u64,
    pub access_log_denied: u64,
    pub bind_failed: u64,
    pub initial_fetch_timeout: u64,
    pub critical: u64,
}

impl ScanSummary {
    pub fn events(&self) -> u64 {
        self.stream_closed
            + self.config_rejected
            + self.access_log_denied
            + self.bind_failed
            + self.initial_fetch_timeout
            + self.critical
    }

    fn count(&mut self, entries: &mut Vec<LogEntry>) {
        for entry in entries.drain(..) {
            self.candidate_entries += 1;
            let events = classify(&entry);
            self.failure_entries += u64::from(!events.is_empty());
            for e in &events {
                let n = match e {
                    LogEvent::StreamClosed(_) => &mut self.stream_closed,
                    LogEvent::ConfigRejected(_) => &mut self.config_rejected,
                    LogEvent::AccessLogDenied { .. } => &mut self.access_log_denied,
                    LogEvent::BindFailed { .. } => &mut self.bind_failed,
                    LogEvent::InitialFetchTimeout { .. } => &mut self.initial_fetch_timeout,
                    LogEvent::Critical { .. } => &mut self.critical,
                };
                *n += 1;
            }
        }
    }
}

/// Reads `reader` to its end in `buf_size` chunks through the assembler's fast path and the
/// classifier, and counts what they find. Memory stays bounded by `buf_size` plus the
/// assembler's cap, whatever the input.
pub fn scan_reader<R: std::io::Read>(
    mut reader: R,
    buf_size: usize,
) -> std::io::Result<ScanSummary> {
    use crate::observe::envoy_log::EntryAssembler;
    let mut asm = EntryAssembler::default();
    let mut buf = vec![0u8; buf_size.max(4096)];
    let mut entries = Vec::new();
    let mut summary = ScanSummary::default();
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        asm.feed(buf.get(..n).unwrap_or_default(), &mut entries);
        summary.count(&mut entries);
    }
    asm.finish(&mut entries);
    summary.count(&mut entries);
    summary.bytes = asm.bytes_seen();
    summary.lines = asm.lines_seen();
    summary.matching_lines = asm.matched_lines();
    Ok(summary)
}

/// Undoes `--log-format-escaped` (C escapes: `\n`, `\'`, `\"`, `\\`, octal, `\xHH`) when the
/// message has a backslash; other text is borrowed as is.
pub fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let Some(&n) = b.get(i + 1) else {
            out.push(c);
            break;
        };
        let simple = match n {
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'\'' => Some(b'\''),
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            _ => None,
        };
        if let Some(v) = simple {
            out.push(v);
            i += 2;
        } else if let Some(v) = octal(b.get(i + 1..i + 4)) {
            out.push(v);
            i += 4;
        } else if n == b'x'
            && let Some(v) = b
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 4;
        } else {
            out.push(c);
            i += 1;
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn octal(d: Option<&[u8]>) -> Option<u8> {
    let d = d?;
    if d.len() != 3 || !d.iter().all(|c| (b'0'..=b'7').contains(c)) {
        return None;
    }
    let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
    u8::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(msg: &str) -> StreamClosed {
        match classify_message(Some(LogLevel::Warning), msg)
            .into_iter()
            .next()
        {
            Some(LogEvent::StreamClosed(s)) => s,
            other => panic!("{msg}: {other:?}"),
        }
    }

    #[test]
    fn stream_closed_every_era() {
        let s = closed("gRPC config stream closed: 14, no healthy upstream");
        assert_eq!((s.method, s.target, s.code), (None, None, 14));
        assert_eq!(s.message, "no healthy upstream");

        let s = closed(
            "StreamAggregatedResources gRPC config stream closed: 5, Requested entity was not found.",
        );
        assert_eq!(s.method.as_deref(), Some("StreamAggregatedResources"));
        assert_eq!(s.message, "Requested entity was not found.");

        let s = closed("StreamAggregatedResources gRPC config stream closed since 39s ago: 14, x");
        assert_eq!((s.since_secs, s.code), (Some(39), 14));

        let s = closed(
            "DeltaAggregatedResources gRPC config stream to td:443 closed: 4, a.{via_upstream} (previously 14, b{c{d|e:_f}} since 9s ago)",
        );
        assert_eq!(s.target.as_deref(), Some("td:443"));
        assert_eq!(s.message, "a.");
        assert_eq!(
            s.previous,
            Some(PreviousClose {
                code: 14,
                message: "b".into(),
                since_secs: 9
            })
        );

        let s = closed("StreamAggregatedResources gRPC config stream to 127.0.0.1:1 closed: 13, ");
        assert_eq!((s.code, s.message.as_str()), (13, ""));
    }

    #[test]
    fn details_suffix() {
        assert_eq!(strip_details_suffix("x.{via_upstream}"), "x.");
        assert_eq!(strip_details_suffix("x{a{b}c}"), "x");
        assert_eq!(strip_details_suffix("x{a b}"), "x{a b}");
        assert_eq!(strip_details_suffix("x}"), "x}");
        assert_eq!(strip_details_suffix("}}}"), "}}}");
    }

    #[test]
    fn not_stream_closed() {
        for m in [
            "gRPC config stream closed: x, y",
            "gRPC config stream closed",
            "gRPC config stream to  closed: 5, y",
            "Establishing new gRPC bidi stream to xds_cluster for rpc StreamAggregatedResources",
            "gRPC config stream closed: 99999999999999999999, y",
            "the words gRPC config stream closed: 5, are quoted",
            " gRPC config stream closed: 5, x",
        ] {
            assert!(
                !classify_message(Some(LogLevel::Warning), m)
                    .iter()
                    .any(|e| matches!(e, LogEvent::StreamClosed(_))),
                "{m}"
            );
        }
    }

    #[test]
    fn needles_are_in_the_prefilter() {
        use crate::observe::envoy_log::INTERESTING;
        for n in CLASSIFIER_NEEDLES {
            assert!(
                INTERESTING.iter().any(|i| n.contains(i)),
                "{n} is not covered by the assembler's prefilter"
            );
        }
        assert!(INTERESTING.contains(&"gRPC config stream"));
    }

    #[test]
    fn unescapes() {
        assert_eq!(unescape(r"a\'b\'\nc\\d\101\x42"), "a'b'\nc\\dAB");
        assert_eq!(unescape(r"trailing\"), r"trailing\");
        assert_eq!(unescape(r"\q\777"), r"\q\777");
    }

    #[test]
    fn kinds() {
        assert_eq!(
            kind_of_type_url("type.googleapis.com/envoy.api.v2.Listener").as_deref(),
            Some("Listener")
        );
        assert_eq!(
            kind_of_type_url("type.googleapis.com/envoy.config.route.v3.RouteConfiguration")
                .as_deref(),
            Some("RouteConfiguration")
        );
    }
}
