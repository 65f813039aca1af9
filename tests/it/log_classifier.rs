//! The classifier and the log-derived findings against the corpus of every Envoy era
//! (`tests/fixtures/logs/corpus.txt`), against logs captured from the real Envoy 1.40.0
//! (`tests/fixtures/logs/envoy-1.40.0-*.log`, see `capture.sh`), and against hostile input.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use service_proxy_agent::diagnose::log_classifier::{LogEvent, classify, classify_message};
use service_proxy_agent::diagnose::log_findings::{LogContext, LogFindings};
use service_proxy_agent::finding::{Finding, FindingId};
use service_proxy_agent::observe::envoy_log::{
    DEFAULT_MAX_ENTRY_BYTES, EntryAssembler, EntryFilter, LogEntry, LogLevel,
};

const TTL: Duration = Duration::from_secs(600);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/logs")
}

fn entries(text: &[u8], filter: EntryFilter) -> Vec<LogEntry> {
    let mut a = EntryAssembler::new(filter, DEFAULT_MAX_ENTRY_BYTES);
    let mut out = Vec::new();
    a.feed(text, &mut out);
    a.finish(&mut out);
    out
}

fn events_of(entries: &[LogEntry]) -> Vec<LogEvent> {
    entries.iter().flat_map(classify).collect()
}

/// Records every entry at a time spaced like its timestamp, and returns the active findings
/// at the last one.
fn findings_of(entries: &[LogEntry], ctx: &LogContext) -> Vec<Finding> {
    let t0 = Instant::now();
    let first = entries.iter().find_map(LogEntry::local_millis);
    let mut lf = LogFindings::new();
    let mut last = t0;
    for e in entries {
        let offset = match (first, e.local_millis()) {
            (Some(f), Some(m)) => Duration::from_millis(u64::try_from(m - f).unwrap_or(0)),
            _ => Duration::ZERO,
        };
        let at = t0 + offset;
        last = last.max(at);
        lf.record_entry(e, at);
    }
    lf.active(last, TTL, ctx)
}

fn ids(f: &[Finding]) -> BTreeSet<&'static str> {
    f.iter().map(|f| f.id.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// The corpus.

#[derive(Debug, Default)]
struct Case {
    era: String,
    name: String,
    text: Vec<String>,
    expects: Vec<Expect>,
    expect_none: bool,
    events: Vec<EventExpect>,
    event_none: bool,
}

#[derive(Debug)]
struct Expect {
    id: String,
    kv: Vec<(String, String)>,
    details: Vec<String>,
}

#[derive(Debug)]
struct EventExpect {
    kind: String,
    kv: Vec<(String, String)>,
    message: Option<String>,
}

fn kv(words: &[&str]) -> Vec<(String, String)> {
    words
        .iter()
        .map(|w| {
            let (k, v) = w.split_once('=').unwrap_or_else(|| panic!("bad k=v: {w}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn parse_corpus(text: &str) -> (LogContext, Vec<Case>) {
    let mut ctx = LogContext::default();
    let mut cases: Vec<Case> = Vec::new();
    let mut era = String::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(directive) = line.strip_prefix('@') else {
            if let Some(c) = cases.last_mut() {
                c.text.push(line.to_owned());
            } else {
                assert!(line.trim().is_empty(), "text outside a case: {line}");
            }
            continue;
        };
        let (word, rest) = directive.split_once(' ').unwrap_or((directive, ""));
        let words: Vec<&str> = rest.split_whitespace().collect();
        match word {
            "ctx" => {
                for (k, v) in kv(&words) {
                    match k.as_str() {
                        "network" => ctx.vm_network = Some(v),
                        "project" => ctx.vm_project_number = Some(v),
                        "uid" => ctx.envoy_uid = Some(v.parse().unwrap()),
                        _ => panic!("unknown ctx key {k}"),
                    }
                }
            }
            "era" => era = rest.trim().to_owned(),
            "case" => cases.push(Case {
                era: era.clone(),
                name: rest.trim().to_owned(),
                ..Case::default()
            }),
            _ => {
                let c = cases.last_mut().expect("directive outside a case");
                match word {
                    "expect" if words == ["none"] => c.expect_none = true,
                    "expect" => c.expects.push(Expect {
                        id: words[0].to_owned(),
                        kv: kv(&words[1..]),
                        details: Vec::new(),
                    }),
                    "detail" => c
                        .expects
                        .last_mut()
                        .expect("@detail without @expect")
                        .details
                        .push(rest.to_owned()),
                    "event" if words == ["none"] => c.event_none = true,
                    "event" => c.events.push(EventExpect {
                        kind: words[0].to_owned(),
                        kv: kv(&words[1..]),
                        message: None,
                    }),
                    "message" => {
                        c.events
                            .last_mut()
                            .expect("@message without @event")
                            .message = Some(rest.to_owned())
                    }
                    _ => panic!("unknown directive @{word}"),
                }
            }
        }
    }
    for c in &mut cases {
        while c.text.last().is_some_and(|l| l.trim().is_empty()) {
            c.text.pop();
        }
        assert!(!c.text.is_empty(), "case {} has no text", c.name);
        assert!(
            c.expect_none || !c.expects.is_empty(),
            "case {} says nothing about findings",
            c.name
        );
    }
    (ctx, cases)
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// (kind, fields, message) of an event, in the corpus's words.
fn describe(ev: &LogEvent) -> (&'static str, Vec<(&'static str, String)>, Option<String>) {
    match ev {
        LogEvent::StreamClosed(s) => (
            "stream_closed",
            vec![
                ("code", s.code.to_string()),
                ("method", opt(&s.method)),
                ("target", opt(&s.target)),
                ("since", s.since_secs.map_or("-".into(), |v| v.to_string())),
                (
                    "previous",
                    s.previous
                        .as_ref()
                        .map_or("-".into(), |p| p.code.to_string()),
                ),
            ],
            Some(s.message.clone()),
        ),
        LogEvent::ConfigRejected(r) => (
            "config_rejected",
            vec![
                ("type_url", opt(&r.type_url)),
                ("kind", opt(&r.kind)),
                (
                    "resources",
                    if r.resources.is_empty() {
                        "-".into()
                    } else {
                        r.resources.join(",")
                    },
                ),
            ],
            Some(r.reason.clone()),
        ),
        LogEvent::AccessLogDenied { path, reason } => (
            "access_log_denied",
            vec![("path", path.clone())],
            Some(reason.clone()),
        ),
        LogEvent::BindFailed { listener, reason } => (
            "bind_failed",
            vec![("listener", listener.clone())],
            Some(reason.clone()),
        ),
        LogEvent::InitialFetchTimeout { type_url } => (
            "initial_fetch_timeout",
            vec![("type_url", type_url.clone())],
            None,
        ),
        LogEvent::Critical { message } => ("critical", vec![], Some(message.clone())),
    }
}

fn event_matches(want: &EventExpect, ev: &LogEvent) -> bool {
    let (kind, fields, message) = describe(ev);
    if kind != want.kind {
        return false;
    }
    for (k, v) in &want.kv {
        let Some((_, have)) = fields.iter().find(|(f, _)| f == k) else {
            panic!("unknown key {k} for {kind}");
        };
        if have != v {
            return false;
        }
    }
    match &want.message {
        Some(m) => message.as_deref() == Some(m.as_str()),
        None => true,
    }
}

fn check_case(c: &Case, ctx: &LogContext) -> Result<(), String> {
    let text = format!("{}\n", c.text.join("\n"));
    let all = entries(text.as_bytes(), EntryFilter::All);
    let events = events_of(&all);

    // The fast path (prefiltered entries) must see exactly the same events.
    let fast = events_of(&entries(text.as_bytes(), EntryFilter::Interesting));
    if fast != events {
        return Err(format!(
            "prefilter changes the events:\n all: {events:#?}\n fast: {fast:#?}"
        ));
    }

    if c.event_none && !events.is_empty() {
        return Err(format!("expected no event, got {events:#?}"));
    }
    for want in &c.events {
        if !events.iter().any(|ev| event_matches(want, ev)) {
            return Err(format!("no event matches {want:?}; events: {events:#?}"));
        }
    }

    let found = findings_of(&all, ctx);
    let want: BTreeSet<&str> = c.expects.iter().map(|e| e.id.as_str()).collect();
    if ids(&found) != want {
        return Err(format!(
            "findings {:?}, expected {want:?}; details: {:#?}",
            ids(&found),
            found.iter().map(|f| &f.detail).collect::<Vec<_>>()
        ));
    }
    for e in &c.expects {
        assert!(FindingId::from_name(&e.id).is_some(), "unknown ID {}", e.id);
        let mut needles: Vec<String> = e.details.clone();
        for (k, v) in &e.kv {
            needles.push(match k.as_str() {
                "network" => format!("network \"{v}\""),
                "project" => format!("project \"{v}\""),
                "path" | "resource" => v.clone(),
                _ => panic!("unknown expect key {k}"),
            });
        }
        let ok = found
            .iter()
            .filter(|f| f.id.as_str() == e.id)
            .any(|f| needles.iter().all(|n| f.detail.contains(n.as_str())));
        if !ok {
            return Err(format!(
                "no {} finding has all of {needles:?}; details: {:#?}",
                e.id,
                found.iter().map(|f| &f.detail).collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}

#[test]
fn corpus_every_era() {
    let text = std::fs::read_to_string(fixtures().join("corpus.txt")).unwrap();
    let (ctx, cases) = parse_corpus(&text);
    assert_eq!(ctx.vm_network.as_deref(), Some("default"));
    let eras: BTreeSet<&str> = cases.iter().map(|c| c.era.as_str()).collect();
    for era in ["<=1.13", "1.14-1.19", "1.20+", "1.24+", "1.35+", "noise"] {
        assert!(eras.contains(era), "corpus lacks era {era}");
    }
    let mut failures = Vec::new();
    for c in &cases {
        if let Err(e) = check_case(c, &ctx) {
            failures.push(format!("[{}] {}: {e}", c.era, c.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Every finding this module can raise appears in the corpus.
    let raised: BTreeSet<&str> = cases
        .iter()
        .flat_map(|c| c.expects.iter().map(|e| e.id.as_str()))
        .collect();
    for id in [
        "MESH_CONFIG_NOT_FOUND",
        "MESH_ENTITY_NOT_FOUND",
        "CONTROL_PLANE_PERMISSION_DENIED",
        "CONTROL_PLANE_UNAUTHENTICATED",
        "CONTROL_PLANE_DISCONNECTED",
        "CONFIG_REJECTED",
        "ACCESS_LOG_NOT_WRITABLE",
    ] {
        assert!(raised.contains(id), "corpus never raises {id}");
    }
}

// ---------------------------------------------------------------------------------------------
// Logs captured from the real Envoy 1.40.0.

fn captured(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(format!("envoy-1.40.0-{name}.log")))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn vm() -> LogContext {
    LogContext {
        vm_network: Some("default".into()),
        vm_project_number: Some("123".into()),
        envoy_uid: Some(65534),
    }
}

fn captured_findings(name: &str) -> (Vec<LogEntry>, Vec<LogEvent>, Vec<Finding>) {
    let es = entries(&captured(name), EntryFilter::Interesting);
    let evs = events_of(&es);
    let f = findings_of(&es, &vm());
    (es, evs, f)
}

fn set(v: &[&'static str]) -> BTreeSet<&'static str> {
    v.iter().copied().collect()
}

#[test]
fn captured_stub_control_plane_codes() {
    let (_, evs, f) = captured_findings("cp-mesh-config-not-found");
    assert_eq!(ids(&f), set(&["MESH_CONFIG_NOT_FOUND"]));
    assert!(
        f[0].detail
            .contains("both match the VM: the forwarding rule is missing"),
        "{}",
        f[0].detail
    );
    // Both the ADS and the LRS stream report it.
    let methods: BTreeSet<String> = evs
        .iter()
        .filter_map(|e| match e {
            LogEvent::StreamClosed(s) => s.method.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(
        methods,
        ["StreamAggregatedResources", "StreamLoadStats"]
            .map(String::from)
            .into()
    );

    let (_, _, f) = captured_findings("cp-traffic-director-not-found");
    assert_eq!(ids(&f), set(&["MESH_CONFIG_NOT_FOUND"]));
    assert!(f[0].detail.contains(
        "network \"wrong-net\" vs VM network \"default\"; project \"456\" vs VM project number \"123\""
    ));

    for (name, id) in [
        ("cp-entity-not-found", "MESH_ENTITY_NOT_FOUND"),
        ("cp-permission-denied", "CONTROL_PLANE_PERMISSION_DENIED"),
        ("cp-unauthenticated", "CONTROL_PLANE_UNAUTHENTICATED"),
    ] {
        let (_, _, f) = captured_findings(name);
        assert_eq!(ids(&f), set(&[id]), "{name}");
        assert!(!f[0].detail.contains("{via_upstream}"), "{}", f[0].detail);
    }
}

#[test]
fn captured_unreachable_control_plane() {
    // ADS over envoy_grpc to a closed port, LRS too, logged at debug for a minute.
    let all = entries(&captured("ads-unreachable.debug"), EntryFilter::All);
    let closes: Vec<(&LogEntry, _)> = all
        .iter()
        .filter_map(|e| {
            classify(e).into_iter().find_map(|ev| match ev {
                LogEvent::StreamClosed(s) => Some((e, s)),
                _ => None,
            })
        })
        .collect();
    let start = all[0].local_millis().unwrap();
    let ads: Vec<_> = closes
        .iter()
        .filter(|(_, s)| s.method.as_deref() == Some("StreamAggregatedResources"))
        .collect();
    assert!(
        ads.iter()
            .all(|(_, s)| s.code == 14 && s.target.as_deref() == Some("xds_cluster"))
    );
    // What docs/outside-world.md#envoy-stream-closed says: 14 is logged at debug for the first 30 s, then as a warning that
    // says for how long.
    for (e, s) in &ads {
        let at = (e.local_millis().unwrap() - start) / 1000;
        match e.level {
            Some(LogLevel::Debug) => assert!(at < 35 && s.since_secs.is_none(), "{e:?}"),
            Some(LogLevel::Warning) => assert!(s.since_secs.unwrap() >= 30, "{e:?}"),
            other => panic!("unexpected level {other:?}"),
        }
    }
    assert!(ads.iter().any(|(e, _)| e.level == Some(LogLevel::Debug)));
    assert!(ads.iter().any(|(e, _)| e.level == Some(LogLevel::Warning)));
    // Measured: the LRS stream's 14 is a warning from the first close on, every 5 s.
    let lrs: Vec<_> = closes
        .iter()
        .filter(|(_, s)| s.method.as_deref() == Some("StreamLoadStats"))
        .collect();
    assert!(lrs.len() >= 5);
    assert!(
        lrs.iter()
            .all(|(e, s)| e.level == Some(LogLevel::Warning) && s.target.is_none())
    );

    let f = findings_of(&all, &vm());
    assert_eq!(ids(&f), set(&["CONTROL_PLANE_DISCONNECTED"]));

    // The same file seen only up to 20 s after start: quick retries, no finding yet.
    let early: Vec<LogEntry> = all
        .iter()
        .filter(|e| e.local_millis().is_some_and(|m| m - start < 20_000))
        .cloned()
        .collect();
    assert!(
        events_of(&early)
            .iter()
            .any(|e| matches!(e, LogEvent::StreamClosed(_)))
    );
    assert!(findings_of(&early, &vm()).is_empty());

    // google_grpc to a closed port: 13 with an empty message, a warning every time.
    let (es, evs, f) = captured_findings("google-grpc-unreachable");
    assert!(f.is_empty(), "8 s of closes are not 'repeatedly': {f:?}");
    let closes: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            LogEvent::StreamClosed(s) => Some(s),
            _ => None,
        })
        .collect();
    assert!(closes.len() >= 3);
    assert!(closes.iter().all(|s| s.code == 13 && s.message.is_empty()));
    assert!(
        es.iter()
            .filter(|e| e.message.contains("closed: 13"))
            .all(|e| e.level == Some(LogLevel::Warning))
    );

    // 14 then 4: "(previously 14, ... since 9s ago)".
    let (_, evs, f) = captured_findings("previously");
    assert!(f.is_empty(), "{f:?}");
    let prev = evs
        .iter()
        .find_map(|e| match e {
            LogEvent::StreamClosed(s) if s.previous.is_some() => Some(s),
            _ => None,
        })
        .expect("a (previously ...) line");
    assert_eq!(prev.code, 4);
    assert_eq!(prev.message, "Deadline exceeded by the stub.");
    let p = prev.previous.as_ref().unwrap();
    assert_eq!(p.code, 14);
    assert!(
        p.message
            .ends_with("reset reason: remote connection failure")
    );
}

#[test]
fn captured_rejections() {
    let (_, evs, f) = captured_findings("fs-lds-rejected");
    assert_eq!(ids(&f), set(&["CONFIG_REJECTED"]));
    assert!(
        f[0].detail.contains("bad_address, duplicate_chains"),
        "{}",
        f[0].detail
    );
    let (_, evs_escaped, f_escaped) = captured_findings("fs-lds-rejected.escaped");
    assert_eq!(
        evs, evs_escaped,
        "--log-format-escaped gives the same events"
    );
    assert_eq!(f, f_escaped);

    let (_, evs, f) = captured_findings("access-log-denied-lds");
    assert_eq!(
        ids(&f),
        set(&["CONFIG_REJECTED", "ACCESS_LOG_NOT_WRITABLE"])
    );
    let access = f
        .iter()
        .find(|f| f.id == FindingId::AccessLogNotWritable)
        .unwrap();
    assert!(
        access
            .detail
            .contains("/al/ro/access.log': Permission denied; Envoy runs as UID 65534"),
        "{}",
        access.detail
    );
    assert!(evs.iter().any(|e| matches!(e, LogEvent::ConfigRejected(r)
        if r.resources == ["TRAFFICDIRECTOR_INTERCEPTION_LISTENER"])));

    let (es, evs, f) = captured_findings("access-log-denied-static");
    assert_eq!(ids(&f), set(&["ACCESS_LOG_NOT_WRITABLE"]));
    assert!(evs.iter().any(|e| matches!(e, LogEvent::Critical { .. })));
    // The exit line carries a raw newline: its continuation is part of the entry.
    let exit = es
        .iter()
        .find(|e| e.level == Some(LogLevel::Critical))
        .unwrap();
    assert_eq!(exit.line_count, 2);
    assert!(exit.message.ends_with("/al/static/bootstrap.json'"));

    let (_, evs, f) = captured_findings("bind-failed");
    assert_eq!(ids(&f), set(&["CONFIG_REJECTED"]));
    assert!(evs.iter().any(
        |e| matches!(e, LogEvent::BindFailed { listener, .. } if listener == "busy_listener")
    ));
}

#[test]
fn every_captured_event_passes_the_prefilter() {
    for item in std::fs::read_dir(fixtures()).unwrap() {
        let path = item.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("log") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let all = events_of(&entries(&bytes, EntryFilter::All));
        let fast = events_of(&entries(&bytes, EntryFilter::Interesting));
        assert_eq!(all, fast, "{}", path.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile input: nothing panics, every string stays bounded.

fn corpus_lines() -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join("corpus.txt")).unwrap();
    text.lines()
        .filter(|l| l.starts_with('['))
        .map(str::to_owned)
        .collect()
}

fn run_everything(bytes: &[u8]) {
    for filter in [EntryFilter::All, EntryFilter::Interesting] {
        let es = entries(bytes, filter);
        for e in &es {
            assert!(e.message.len() <= 3 * DEFAULT_MAX_ENTRY_BYTES);
            for ev in classify(e) {
                if let LogEvent::StreamClosed(s) = &ev {
                    assert!(s.message.len() <= 4096 + 3);
                }
            }
        }
        let f = findings_of(&es, &vm());
        assert!(f.iter().all(|f| f.detail.len() <= 1024));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        run_everything(&bytes);
    }

    #[test]
    fn random_messages_never_panic(msg in "\\PC*", level in 0usize..7) {
        let level = [None, Some(LogLevel::Trace), Some(LogLevel::Debug), Some(LogLevel::Info),
            Some(LogLevel::Warning), Some(LogLevel::Error), Some(LogLevel::Critical)][level];
        let _ = classify_message(level, &msg);
    }

    #[test]
    fn mutated_real_lines_never_panic(
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 1..8),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..8, any::<u8>()), 0..24),
    ) {
        let lines = corpus_lines();
        let mut text: Vec<u8> = Vec::new();
        for p in &picks {
            text.extend_from_slice(lines[p.index(lines.len())].as_bytes());
            text.push(b'\n');
        }
        for (at, kind, byte) in edits {
            if text.is_empty() { break; }
            let i = at.index(text.len());
            const SPECIAL: &[u8] = b"\n\r{}\\'\"0:,( )[]";
            match kind {
                0 => text[i] = byte,
                1 => text.insert(i, SPECIAL[usize::from(byte) % SPECIAL.len()]),
                2 => { text.remove(i); }
                3 => text.truncate(i),
                4 => text.insert(i, b'0' + byte % 10),
                5 => { let d: Vec<u8> = text[i..].iter().take(40).copied().collect(); text.splice(i..i, d); }
                6 => text.insert(i, 0),
                _ => text.insert(i, 0xff),
            }
        }
        run_everything(&text);
        let s = String::from_utf8_lossy(&text);
        for l in s.lines() {
            let _ = classify_message(Some(LogLevel::Critical), l);
        }
    }
}

#[test]
fn giant_and_binary_messages() {
    let huge = format!(
        "StreamAggregatedResources gRPC config stream closed: 5, {}{}",
        "x".repeat(3_000_000),
        "{".repeat(100_000)
    );
    let evs = classify_message(Some(LogLevel::Warning), &huge);
    let LogEvent::StreamClosed(s) = &evs[0] else {
        panic!("{evs:?}")
    };
    assert!(s.message.len() <= 4096 + 3);
    let junk: String = (0..200_000u32)
        .map(|i| char::from_u32(i % 0xD7FF).unwrap_or('?'))
        .collect();
    let _ = classify_message(Some(LogLevel::Critical), &junk);
    let nested = format!(
        "gRPC config stream closed: 14, m{}",
        "{a".repeat(50_000) + &"}".repeat(50_000)
    );
    let _ = classify_message(Some(LogLevel::Warning), &nested);
}
