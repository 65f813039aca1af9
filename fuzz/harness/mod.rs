//! What each fuzz target does with its input, shared with `tests/fuzz_regressions.rs` (which
//! replays the inputs the fuzzer once crashed on, on the stable toolchain). One function per
//! target; each panics when a parser panics or a property it checks does not hold.

#![allow(dead_code)]

mod restore;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use service_proxy_agent::config::{CommonArgs, Settings, validate_file_text};
use service_proxy_agent::diagnose::interception::{InterceptionInput, check};
use service_proxy_agent::diagnose::log_classifier::classify;
use service_proxy_agent::diagnose::log_findings::{
    Contradiction, LogContext, LogFindings, MAX_DETAIL_BYTES,
};
use service_proxy_agent::intercept::is_ours;
use service_proxy_agent::intercept::plan::{
    DesiredInput, TrafficInterception, parse_exclude_ip_range, parse_exclude_port_range, plan,
};
use service_proxy_agent::observe::envoy_admin::{
    parse_clusters, parse_listeners, parse_proto_duration, parse_ready, parse_server_info,
    parse_stats, summarize_listeners,
};
use service_proxy_agent::observe::envoy_log::{
    DEFAULT_MAX_ENTRY_BYTES, EntryAssembler, EntryFilter, INTERESTING, LogEntry, Tail,
};
use service_proxy_agent::observe::iptables::{MAX_UNPARSED, Owner, parse_save};
use service_proxy_agent::observe::metadata::{
    parse_network, parse_number, parse_project_id, parse_scopes, parse_service_proxy, parse_zone,
};

/// A target's name and what it does with an input.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, for the regression test.
pub const TARGETS: &[Target] = &[
    ("server_info", server_info),
    ("listeners", listeners),
    ("clusters", clusters),
    ("stats", stats),
    ("ready", ready),
    ("iptables_save", iptables_save),
    ("log_classifier", log_classifier),
    ("service_proxy_metadata", service_proxy_metadata),
    ("config_toml", config_toml),
];

/// `/server_info` body → `parse_server_info`, and what the checks read from it.
pub fn server_info(data: &[u8]) {
    if let Ok(info) = parse_server_info(data) {
        let _ = info.version_number();
        let _ = info.state.as_str();
        let _ = info.node.metadata_str("TRAFFICDIRECTOR_NETWORK_NAME");
        let _ = parse_proto_duration(&info.command_line_options.file_flush_interval);
    }
}

/// `/config_dump?resource=dynamic_listeners` body → `parse_listeners` → `summarize_listeners`;
/// the VIPs then go into the planner, whose restore text must stay clean.
pub fn listeners(data: &[u8]) {
    let Ok(listeners) = parse_listeners(data) else {
        return;
    };
    for l in &listeners {
        let _ = l.current();
        let _ = l.is_nameless_error();
    }
    let summary = summarize_listeners(&listeners);
    for v in &summary.vips {
        assert_ne!(v.prefix_len(), 0, "a /0 VIP would intercept everything");
        assert_eq!(*v, v.trunc(), "VIPs are normalised");
    }
    for r in &summary.rejected {
        assert!(!r.raw.chars().any(char::is_control), "{r:?}");
    }
    let p = plan(&DesiredInput {
        vips: summary.vips.clone(),
        serving_ports: summary.inbound_ports.clone(),
        envoy_uid: 1337,
        proxy_port: summary
            .interception
            .as_ref()
            .and_then(|i| i.port)
            .filter(|p| *p != 0)
            .unwrap_or(15001),
        traffic: TrafficInterception::default(),
    });
    if let Ok(p) = p {
        for fp in [&p.v4, &p.v6] {
            if let Some(text) = fp.restore_text() {
                restore::assert_restore_text_safe(&text);
            }
        }
    }
}

/// `/clusters?format=json` body → `parse_clusters`.
pub fn clusters(data: &[u8]) {
    if let Ok(clusters) = parse_clusters(data) {
        for c in &clusters {
            assert!(c.healthy_hosts() + c.unhealthy_hosts() <= c.hosts.len());
            for h in &c.hosts {
                let _ = h.health.is_healthy();
                let _ = h.health.is_degraded();
            }
        }
    }
}

/// `/stats` text → `parse_stats`.
pub fn stats(data: &[u8]) {
    let s = parse_stats(&String::from_utf8_lossy(data));
    assert!(s.init_fetch_timeouts.len() <= 256);
}

/// `/ready` status and body → `parse_ready`. The first byte picks the status (200, 503, other).
pub fn ready(data: &[u8]) {
    let (status, body) = match data.split_first() {
        Some((b, rest)) => (
            match b % 3 {
                0 => 200,
                1 => 503,
                _ => u16::from(*b) * 3,
            },
            rest,
        ),
        None => (200, data),
    };
    if let Some(r) = parse_ready(status, body) {
        assert!(r.state.as_str().len() <= 256);
    }
}

/// `iptables-save` output → `parse_save`, then the verify checks and the planner's transaction
/// against the parsed nat table. The VIPs, ports and UID are taken from the rules themselves so
/// that the checks walk the paths the input makes interesting.
pub fn iptables_save(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let rs = parse_save(&text);
    assert!(rs.unparsed.len() <= MAX_UNPARSED);

    let mut vips: Vec<IpNet> = vec![
        "10.0.0.1/32".parse().unwrap(),
        "fd00::1/128".parse().unwrap(),
    ];
    let mut ports: Vec<u16> = vec![80];
    let mut uid = None;
    let mut proxy_port = None;
    for r in rs
        .tables
        .iter()
        .flat_map(|t| &t.chains)
        .flat_map(|c| &c.rules)
    {
        // A few of each: every VIP and port is one more walk through the chains.
        if let Some(d) = &r.spec.destination
            && vips.len() < 6
        {
            vips.push(d.value);
        }
        if let Some(p) = &r.spec.dports
            && ports.len() < 4
        {
            ports.extend(p.value.iter().map(|r| r.first).take(2));
        }
        if let Some(o) = &r.spec.uid_owner
            && let Owner::Range(a, _) = o.value
        {
            uid.get_or_insert(a);
        }
        if let Some(p) = r.spec.to_ports {
            proxy_port.get_or_insert(p.first);
        }
    }

    for (uid, port) in [(uid, proxy_port), (None, None)] {
        let _ = check(&InterceptionInput {
            v4: Ok(&rs),
            v6: Some(Ok(&rs)),
            vips: &vips,
            serving_ports: &ports,
            envoy_uid: uid,
            has_interception_listener: true,
            proxy_port: port,
        });
    }

    let nat = rs.table("nat");
    let unparsed_in_ours = rs
        .unparsed
        .iter()
        .filter(|u| u.table.as_deref() == Some("nat") && u.chain.as_deref().is_some_and(is_ours))
        .count();
    restore::check_clear_converges(nat);
    let input = DesiredInput {
        vips,
        serving_ports: ports,
        envoy_uid: uid.unwrap_or(1337),
        proxy_port: proxy_port.filter(|p| *p != 0).unwrap_or(15001),
        traffic: TrafficInterception {
            // Either way, by the input's length (each plan costs several parses).
            intercept_all_outbound: data.len() % 2 == 1,
            exclude_outbound_ip_ranges: vec!["169.254.169.254".into()],
            exclude_outbound_port_ranges: vec!["22".into()],
        },
    };
    let p = plan(&input).unwrap();
    restore::check_converges(&p.v4, nat, unparsed_in_ours);
    restore::check_converges(&p.v6, nat, unparsed_in_ours);
}

/// Envoy log bytes, fed in chunks to `EntryAssembler` → `classify` → `LogFindings`.
///
/// Input: a 4-byte header, then the log. Header byte 0 bit 0 picks the filter (interesting /
/// all); byte 1 the entry cap (0: the default 64 KiB, else n*4 bytes); bytes 2-3 seed the chunk
/// sizes. Checked: the entries and line count do not depend on where the chunks are cut, the
/// buffered bytes stay bounded, and the findings tracker takes whatever the classifier gives.
pub fn log_classifier(data: &[u8]) {
    let (header, log) = data.split_at(data.len().min(4));
    let byte = |i: usize| header.get(i).copied().unwrap_or(0);
    let filter = if byte(0) & 1 == 0 {
        EntryFilter::Interesting
    } else {
        EntryFilter::All
    };
    let cap = match byte(1) {
        0 => DEFAULT_MAX_ENTRY_BYTES,
        n => usize::from(n) * 4,
    };
    let mut seed = u32::from(byte(2)) << 8 | u32::from(byte(3)) | 1;
    let chunked = assemble(log, filter, cap, || {
        // xorshift32: chunk sizes of 1 to 64 bytes.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        (seed % 64) as usize + 1
    });
    let whole = assemble(log, filter, cap, || usize::MAX);
    assert_eq!(chunked, whole, "the chunking changed the entries");

    // The fast path builds exactly the entries holding a needle, and skips none the classifier
    // would act on.
    let (all, n_all) = match filter {
        EntryFilter::All => whole.clone(),
        EntryFilter::Interesting => assemble(log, EntryFilter::All, cap, || usize::MAX),
    };
    let (fast, n_fast) = match filter {
        EntryFilter::Interesting => whole,
        EntryFilter::All => assemble(log, EntryFilter::Interesting, cap, || usize::MAX),
    };
    assert_eq!(n_all, n_fast, "the filters counted different lines");
    let mut lines: Vec<&[u8]> = log.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    assert_eq!(lines.len() as u64, n_all, "lines miscounted");
    let window = cap.max(256);
    let interesting = |l: &[u8]| {
        let nuls = l.iter().take_while(|&&b| b == 0).count();
        let w = l.get(nuls..l.len().min(nuls + window)).unwrap_or_default();
        INTERESTING
            .iter()
            .any(|n| w.windows(n.len()).any(|x| x == n.as_bytes()))
    };
    let (expected, skipped): (Vec<LogEntry>, Vec<LogEntry>) = all.into_iter().partition(|e| {
        (e.first_line..e.first_line + e.line_count)
            .any(|n| lines.get(n as usize - 1).is_some_and(|l| interesting(l)))
    });
    assert_eq!(fast, expected, "the fast path built other entries");
    for e in &skipped {
        assert!(
            classify(e).is_empty(),
            "the fast path skipped an entry the classifier acts on: {e:?}"
        );
    }

    let entries = fast;
    let start = Instant::now();
    let mut findings = LogFindings::new();
    for (i, e) in entries.iter().enumerate() {
        let at = start + Duration::from_secs(i as u64);
        for ev in classify(e) {
            findings.record(&ev, at);
        }
    }
    let ctx = LogContext {
        vm_network: Some("default".into()),
        vm_project_number: Some("123456789012".into()),
        envoy_uid: Some(1337),
    };
    let later = start + Duration::from_secs(entries.len() as u64);
    for f in findings.active(later, Duration::from_secs(600), &ctx) {
        assert!(
            f.detail.len() <= MAX_DETAIL_BYTES && !f.detail.chars().any(char::is_control),
            "a log finding's detail must be one bounded line: {:?}",
            f.detail
        );
    }
    findings.contradict(Contradiction::NoRejectedConfig, later);
    let _ = findings.active(later, Duration::from_secs(600), &LogContext::default());

    // The doctor's path: the entries as a file tail, aged by their own timestamps.
    let tail = Tail {
        newest_time: entries.iter().rev().find_map(|e| e.time.clone()),
        entries,
        modified: Some(SystemTime::now()),
        partial: true,
        bytes_read: log.len() as u64,
        lines: 0,
    };
    let mut from_tail = LogFindings::new();
    from_tail.record_tail(&tail, Instant::now(), SystemTime::now());
    let _ = from_tail.active(Instant::now(), Duration::from_secs(600), &ctx);
}

fn assemble(
    log: &[u8],
    filter: EntryFilter,
    cap: usize,
    mut next_size: impl FnMut() -> usize,
) -> (Vec<LogEntry>, u64) {
    let mut a = EntryAssembler::new(filter, cap);
    let mut out = Vec::new();
    let mut rest = log;
    while !rest.is_empty() {
        let (chunk, more) = rest.split_at(next_size().min(rest.len()));
        a.feed(chunk, &mut out);
        assert!(
            a.buffered_bytes() <= cap.max(256) + cap,
            "{} bytes buffered with a cap of {cap}",
            a.buffered_bytes()
        );
        rest = more;
    }
    a.finish(&mut out);
    (out, a.lines_seen())
}

/// The `gce-service-proxy` metadata value → `parse_service_proxy`, then the planner's strict
/// parsing of the exclusions and serving ports; what would reach iptables must stay clean. The
/// metadata server's plain values (project id, zone, network, scopes) go through their parsers too.
pub fn service_proxy_metadata(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    metadata_values(text);
    let Ok(cfg) = parse_service_proxy(text) else {
        return;
    };
    let _ = cfg.proxy_spec.network_name();
    for w in &cfg.warnings {
        assert!(w.len() <= 1024, "unbounded warning");
    }
    let t = &cfg.traffic_interception;
    for r in &t.exclude_outbound_ip_ranges {
        let _ = parse_exclude_ip_range(r);
    }
    for r in &t.exclude_outbound_port_ranges {
        if let Ok(p) = parse_exclude_port_range(r) {
            assert!(p.first != 0 && p.first <= p.last, "{r:?} → {p:?}");
        }
    }
    let p = plan(&DesiredInput {
        vips: vec![
            "10.0.0.1/32".parse().unwrap(),
            "fd00::1/128".parse().unwrap(),
        ],
        serving_ports: cfg.service.serving_ports.clone(),
        envoy_uid: 1337,
        proxy_port: cfg.proxy_spec.proxy_port.unwrap_or(15001),
        traffic: TrafficInterception {
            intercept_all_outbound: t.intercept_all_outbound,
            exclude_outbound_ip_ranges: t.exclude_outbound_ip_ranges.clone(),
            exclude_outbound_port_ranges: t.exclude_outbound_port_ranges.clone(),
        },
    });
    if let Ok(p) = p {
        for i in &p.ignored {
            assert!(!i.value.chars().any(char::is_control), "{i:?}");
        }
        for fp in [&p.v4, &p.v6] {
            if let Some(text) = fp.restore_text() {
                restore::assert_restore_text_safe(&text);
            }
        }
    }
}

/// The metadata server's plain values, which end up in attributes and findings: what they
/// accept is made of the characters their names allow.
fn metadata_values(text: &str) {
    let _ = parse_number(text);
    let name_chars = |s: &str, extra: &[u8]| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    };
    if let Ok(p) = parse_project_id(text) {
        assert!(!p.is_empty() && name_chars(&p, b"-.:_"), "{p:?}");
    }
    if let Ok(z) = parse_zone(text) {
        assert!(
            !z.is_empty() && name_chars(&z, b"-") && z.len() <= 63,
            "{z:?}"
        );
    }
    if let Ok(n) = parse_network(text) {
        assert!(!n.name.is_empty() && name_chars(&n.name, b"-_."), "{n:?}");
    }
    for s in parse_scopes(text) {
        assert!(!s.is_empty() && !s.chars().any(char::is_control), "{s:?}");
    }
}

/// The TOML config file → `validate_file_text`, and `Settings::resolve` reading it from disk.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let valid = validate_file_text(text);
    let path = scratch();
    if std::fs::write(path, data).is_err() {
        return;
    }
    let args = CommonArgs {
        config: Some(path.clone()),
        ..CommonArgs::default()
    };
    let resolved = Settings::resolve(&args, |_| None);
    if valid.is_err() {
        assert!(
            resolved.is_err(),
            "invalid file {valid:?} resolved to {resolved:?}"
        );
    }
    // Without an explicit allow (which may be spelt with escapes), only loopback is accepted.
    if let Ok(s) = resolved
        && !text.contains("allow")
        && !text.contains('\\')
    {
        assert!(s.envoy_admin.is_loopback() && s.metrics_addr.is_none_or(|a| a.ip().is_loopback()));
    }
}

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("spa-fuzz-config-{}.toml", std::process::id()))
    })
}
