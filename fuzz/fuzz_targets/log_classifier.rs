//! Envoy log bytes, fed in chunks to `EntryAssembler` → `classify` → `LogFindings`.
//!
//! Input: a 4-byte header, then the log. Header byte 0 bit 0 picks the filter (interesting /
//! all); byte 1 the entry cap (0: the default 64 KiB, else n*4 bytes); bytes 2-3 seed the chunk
//! sizes. Checked: the entries and line count do not depend on where the chunks are cut, the
//! buffered bytes stay bounded, and the findings tracker takes whatever the classifier gives.
#![no_main]

use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use service_proxy_agent::diagnose::log_classifier::classify;
use service_proxy_agent::diagnose::log_findings::{Contradiction, LogContext, LogFindings};
use service_proxy_agent::observe::envoy_log::{
    DEFAULT_MAX_ENTRY_BYTES, EntryAssembler, EntryFilter, LogEntry, Tail,
};

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

fuzz_target!(|data: &[u8]| {
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

    let (entries, _) = whole;
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
        let _ = f;
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
});
