//! The entry assembler and the tail reader: continuation lines, chunks split anywhere, giant
//! lines, binary junk, CRLF, unreadable files; and, live, the real Envoy's log file followed
//! while Envoy rejects configuration, cannot open its access log (as UID 65534), is refused by a
//! control plane, or cannot reach one.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use proptest::prelude::*;
use serde_json::{Value, json};
use service_proxy_agent::diagnose::log_classifier::{LogEvent, classify};
use service_proxy_agent::diagnose::log_findings::{LogContext, LogFindings};
use service_proxy_agent::finding::{Finding, FindingId};
use service_proxy_agent::observe::envoy_log::{
    DEFAULT_MAX_ENTRY_BYTES, EntryAssembler, EntryFilter, LogEntry, LogError, LogLevel,
    read_recent, read_tail,
};
use testkit::envoy::{Envoy, EnvoyConfig};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/logs")
            .join(name),
    )
    .unwrap()
}

fn feed_all(chunks: &[&[u8]], filter: EntryFilter) -> (Vec<LogEntry>, EntryAssembler) {
    let mut a = EntryAssembler::new(filter, DEFAULT_MAX_ENTRY_BYTES);
    let mut out = Vec::new();
    for c in chunks {
        a.feed(c, &mut out);
    }
    a.finish(&mut out);
    (out, a)
}

fn events(entries: &[LogEntry]) -> Vec<LogEvent> {
    entries.iter().flat_map(classify).collect()
}

const ADS_5: &str = "[2026-11-22 02:38:42.734][25576][warning][config] [./source/extensions/config_subscription/grpc/grpc_stream.h:189] StreamAggregatedResources gRPC config stream to xds_cluster closed: 5, Cloud Service Mesh configuration was not found for network \"default\" in project \"123\".{via_upstream}";
const LRS_7: &str = "[2026-11-22 02:38:42.922][25598][warning][upstream] [source/common/upstream/load_stats_reporter_impl.cc:352] StreamLoadStats gRPC config stream closed: 7, Permission denied on resource project 123.{via_upstream}";

/// A sample with every shape: continuation lines, a message ending in a newline (an empty
/// line), info noise, a partial last line.
fn sample() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(
        b"[2026-11-22 02:38:40.000][1][info][main] [source/server/server.cc:1] starting\n",
    );
    s.extend_from_slice(b"[2026-11-22 02:38:40.915][25187][warning][config] [source/extensions/config_subscription/filesystem/filesystem_subscription_impl.cc:81] Filesystem config update rejected: Error adding/updating listener(s) bad_address: malformed IP address: not-an-ip\nduplicate_chains: error adding listener '127.0.0.1:0': filter chain '' has the same matching rules defined as ''. duplicate matcher is: {}\n\n");
    s.extend_from_slice(ADS_5.as_bytes());
    s.push(b'\n');
    s.extend_from_slice(b"[2026-11-22 02:38:41.000][1][debug][router] [source/common/router/router.cc:532] router decoding headers:\n':method', 'POST'\n':path', '/x'\n\n");
    s.extend_from_slice(LRS_7.as_bytes());
    s
}

#[test]
fn continuation_lines_and_empty_lines() {
    let (es, a) = feed_all(&[&sample()], EntryFilter::All);
    assert_eq!(es.len(), 5);
    assert_eq!(es[1].line_count, 3);
    assert_eq!(es[1].first_line, 2);
    assert!(
        es[1]
            .message
            .starts_with("Filesystem config update rejected:")
    );
    assert!(
        es[1].message.ends_with("duplicate matcher is: {}"),
        "trailing empty line dropped"
    );
    assert_eq!(es[3].line_count, 4);
    assert_eq!(
        es[3].message,
        "router decoding headers:\n':method', 'POST'\n':path', '/x'"
    );
    assert_eq!(es[4].first_line, 10);
    // 10 lines: 9 ended by a newline, the partial last one flushed by finish().
    assert_eq!(a.lines_seen(), 10);
    assert_eq!(a.bytes_seen(), sample().len() as u64);

    let (fast, a) = feed_all(&[&sample()], EntryFilter::Interesting);
    assert_eq!(fast.len(), 3, "{fast:#?}");
    assert_eq!(fast[0], es[1]);
    assert_eq!(a.lines_seen(), 10);
}

#[test]
fn every_split_point_gives_the_same_entries() {
    let s = sample();
    for filter in [EntryFilter::All, EntryFilter::Interesting] {
        let (whole, _) = feed_all(&[&s], filter);
        for i in 0..=s.len() {
            let (split, a) = feed_all(&[&s[..i], &s[i..]], filter);
            assert_eq!(split, whole, "split at {i}");
            assert_eq!(a.lines_seen(), 10);
        }
        // Three pieces, a coarser grid.
        for i in (0..=s.len()).step_by(7) {
            for j in (i..=s.len()).step_by(11) {
                let (split, _) = feed_all(&[&s[..i], &s[i..j], &s[j..]], filter);
                assert_eq!(split, whole, "split at {i}, {j}");
            }
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(feed_all(&bytes, filter).0, whole);
    }
}

const PIECES: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"\0\0\0",
    b"[2026-11-22 02:38:42.734][1][warning][config] [a.cc:1] ",
    b"[2026-11-22 02:38:4",
    b"gRPC config stream closed: 5, x",
    b" rejected: ",
    b"][critical][",
    b"unable to open file 'p': Permission denied",
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    b"\xff\xfe",
    b"[",
    b" ",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever the input, the maximum entry size and where the chunks are cut, the entries
    /// and the line count are those of one single feed.
    #[test]
    fn any_split_gives_the_same_entries(
        picks in proptest::collection::vec(0usize..PIECES.len(), 0..60),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        cap in 1usize..400,
        interesting in any::<bool>(),
    ) {
        let input: Vec<u8> = picks.iter().flat_map(|&i| PIECES[i].iter().copied()).collect();
        let filter = if interesting { EntryFilter::Interesting } else { EntryFilter::All };
        let run = |chunks: &[&[u8]]| {
            let mut a = EntryAssembler::new(filter, cap);
            let mut out = Vec::new();
            for c in chunks {
                a.feed(c, &mut out);
                prop_assert!(a.buffered_bytes() <= cap.max(256) + cap);
            }
            a.finish(&mut out);
            Ok((out, a.lines_seen()))
        };
        let whole = run(&[&input])?;
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut prev = 0;
        for p in points {
            chunks.push(&input[prev..p]);
            prev = p;
        }
        chunks.push(&input[prev..]);
        prop_assert_eq!(run(&chunks)?, whole);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The fast path (skipping runs of uninteresting lines) builds exactly the entries of the
    /// line-by-line path that have a line holding a needle within its window.
    #[test]
    fn interesting_is_every_entry_filtered(
        picks in proptest::collection::vec(0usize..PIECES.len(), 0..80),
        cut in any::<prop::sample::Index>(),
        cap in 1usize..400,
    ) {
        let input: Vec<u8> = picks.iter().flat_map(|&i| PIECES[i].iter().copied()).collect();
        let c = cut.index(input.len() + 1);
        let run = |filter| {
            let mut a = EntryAssembler::new(filter, cap);
            let mut out = Vec::new();
            a.feed(&input[..c], &mut out);
            a.feed(&input[c..], &mut out);
            a.finish(&mut out);
            (out, a.lines_seen())
        };
        let (all, n_all) = run(EntryFilter::All);
        let (fast, n_fast) = run(EntryFilter::Interesting);
        prop_assert_eq!(n_all, n_fast);
        let mut lines: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        prop_assert_eq!(lines.len() as u64, n_all);
        let window = cap.max(256);
        let interesting = |l: &[u8]| {
            let nuls = l.iter().take_while(|&&b| b == 0).count();
            let w = &l[nuls..l.len().min(nuls + window)];
            service_proxy_agent::observe::envoy_log::INTERESTING
                .iter()
                .any(|n| w.windows(n.len()).any(|x| x == n.as_bytes()))
        };
        let expected: Vec<LogEntry> = all
            .into_iter()
            .filter(|e| {
                (e.first_line..e.first_line + e.line_count)
                    .any(|n| interesting(lines[(n - 1) as usize]))
            })
            .collect();
        prop_assert_eq!(fast, expected);
    }
}

#[test]
fn real_debug_log_in_small_chunks() {
    let log = fixture("envoy-1.40.0-ads-unreachable.debug.log");
    let newlines = log.iter().filter(|&&b| b == b'\n').count() as u64;
    let (whole, a) = feed_all(&[&log], EntryFilter::All);
    assert_eq!(a.lines_seen(), newlines);
    assert_eq!(whole.iter().map(|e| e.line_count).sum::<u64>(), newlines);
    for size in [1usize, 13, 4096, 65536] {
        let chunks: Vec<&[u8]> = log.chunks(size).collect();
        assert_eq!(
            feed_all(&chunks, EntryFilter::All).0,
            whole,
            "chunks of {size}"
        );
    }
}

#[test]
fn crlf_and_empty_lines() {
    let lf = sample();
    let mut crlf = Vec::new();
    for &b in &lf {
        if b == b'\n' {
            crlf.push(b'\r');
        }
        crlf.push(b);
    }
    let (a, _) = feed_all(&[&lf], EntryFilter::All);
    let (b, _) = feed_all(&[&crlf], EntryFilter::All);
    assert_eq!(a, b);
    for i in 0..crlf.len() {
        assert_eq!(feed_all(&[&crlf[..i], &crlf[i..]], EntryFilter::All).0, a);
    }
    let (es, asm) = feed_all(&[b"\n\n\r\n"], EntryFilter::All);
    assert_eq!(asm.lines_seen(), 3);
    assert_eq!(es.len(), 1);
    assert_eq!((es[0].time.as_deref(), es[0].message.as_str()), (None, ""));
}

/// Two real failure lines around one line of 50 MB, fed as a reader would (64 KiB reads):
/// both found, and memory held stays bounded while the giant line streams through.
#[test]
fn fifty_megabyte_line_between_two_failures() {
    const BIG: usize = 50 * 1024 * 1024;
    for giant_is_header in [false, true] {
        let mut input = Vec::with_capacity(BIG + 1024);
        input.extend_from_slice(ADS_5.as_bytes());
        input.push(b'\n');
        if giant_is_header {
            input.extend_from_slice(b"[2026-11-22 02:38:42.800][1][info][misc] [x.cc:1] ");
        }
        input.resize(input.len() + BIG, b'x');
        input.push(b'\n');
        input.extend_from_slice(LRS_7.as_bytes());
        input.push(b'\n');
        for filter in [EntryFilter::Interesting, EntryFilter::All] {
            let mut a = EntryAssembler::new(filter, DEFAULT_MAX_ENTRY_BYTES);
            let mut out = Vec::new();
            let mut max_buffered = 0;
            for chunk in input.chunks(64 * 1024) {
                a.feed(chunk, &mut out);
                max_buffered = max_buffered.max(a.buffered_bytes());
            }
            a.finish(&mut out);
            assert!(
                max_buffered <= 2 * DEFAULT_MAX_ENTRY_BYTES,
                "{max_buffered}"
            );
            assert!(
                out.iter()
                    .all(|e| e.message.len() <= DEFAULT_MAX_ENTRY_BYTES)
            );
            let codes: Vec<u32> = events(&out)
                .iter()
                .filter_map(|e| match e {
                    LogEvent::StreamClosed(s) => Some(s.code),
                    _ => None,
                })
                .collect();
            assert_eq!(codes, [5, 7], "header={giant_is_header} {filter:?}");
            assert_eq!(a.lines_seen(), 3);
            if filter == EntryFilter::All {
                assert!(out.iter().any(|e| e.truncated));
                assert_eq!(out.last().unwrap().first_line, 3);
            }
        }
        // One feed of the whole thing: same result.
        let (out, _) = feed_all(&[&input], EntryFilter::Interesting);
        assert_eq!(events(&out).len(), 2);
    }
}

#[test]
fn binary_junk_and_nul_holes_keep_real_lines() {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut junk = Vec::new();
    for _ in 0..200_000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        junk.push((rng >> 24) as u8);
    }
    let mut input = Vec::new();
    input.extend_from_slice(&junk);
    input.push(b'\n');
    input.extend_from_slice(ADS_5.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(&junk);
    input.push(b'\n');
    // A copytruncate'd file written at the old offset: a hole of NULs, then a real line.
    input.extend_from_slice(&[0u8; 100_000]);
    input.extend_from_slice(LRS_7.as_bytes());
    input.push(b'\n');
    for filter in [EntryFilter::Interesting, EntryFilter::All] {
        for size in [3usize, 4096, 1 << 20] {
            let chunks: Vec<&[u8]> = input.chunks(size).collect();
            let (out, _) = feed_all(&chunks, filter);
            let codes: Vec<u32> = events(&out)
                .iter()
                .filter_map(|e| match e {
                    LogEvent::StreamClosed(s) => Some(s.code),
                    _ => None,
                })
                .collect();
            assert_eq!(codes, [5, 7], "{filter:?} chunks of {size}");
        }
    }
}

#[test]
fn emit_pending_for_a_quiet_follower() {
    let mut a = EntryAssembler::new(EntryFilter::Interesting, DEFAULT_MAX_ENTRY_BYTES);
    let mut out = Vec::new();
    a.feed(format!("{ADS_5}\n").as_bytes(), &mut out);
    assert!(out.is_empty(), "the entry may still get continuation lines");
    a.emit_pending(&mut out);
    assert_eq!(out.len(), 1);
    // With a partial line open nothing is emitted.
    a.feed(&LRS_7.as_bytes()[..40], &mut out);
    a.emit_pending(&mut out);
    assert_eq!(out.len(), 1);
    a.feed(&LRS_7.as_bytes()[40..], &mut out);
    a.feed(b"\n", &mut out);
    a.emit_pending(&mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(a.lines_seen(), 2);
    assert!(!a.has_pending());
}

#[test]
fn escaped_format_is_one_line_per_entry() {
    let log = fixture("envoy-1.40.0-fs-lds-rejected.escaped.log");
    let (es, a) = feed_all(&[&log], EntryFilter::All);
    assert!(es.iter().all(|e| e.line_count == 1));
    assert_eq!(a.lines_seen(), es.len() as u64);
    assert!(es.iter().all(|e| e.level.is_some() && e.time.is_some()));
}

// ---------------------------------------------------------------------------------------------
// read_recent

#[test]
fn read_recent_reads_tails_and_reports_each_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("envoy.err.log"), sample()).unwrap();
    std::fs::write(d.join("notes.txt"), ADS_5).unwrap();
    std::fs::create_dir(d.join("dir.log")).unwrap();
    nix::unistd::mkfifo(
        &d.join("fifo.log"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    std::os::unix::fs::symlink(d.join("missing"), d.join("dangling.log")).unwrap();
    // Bigger than the window: the tail starts at a line boundary.
    let mut big = Vec::new();
    for i in 0..5000 {
        big.extend_from_slice(
            format!(
                "[2026-11-22 02:38:40.{:03}][1][info][main] [a.cc:1] line {i}\n",
                i % 1000
            )
            .as_bytes(),
        );
    }
    big.extend_from_slice(ADS_5.as_bytes());
    big.push(b'\n');
    std::fs::write(d.join("big.log"), &big).unwrap();

    let started = Instant::now();
    let tails = read_recent(d, 64 * 1024).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a FIFO must not block"
    );
    let names: Vec<String> = tails
        .iter()
        .map(|t| t.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "big.log",
            "dangling.log",
            "dir.log",
            "envoy.err.log",
            "fifo.log"
        ]
    );

    let big_tail = tails[0].tail.as_ref().unwrap();
    assert!(big_tail.partial);
    assert!(big_tail.bytes_read <= 64 * 1024);
    assert_eq!(big_tail.entries.len(), 1);
    assert_eq!(
        big_tail.newest_time.as_deref(),
        Some("2026-11-22 02:38:42.734")
    );
    // A link is never followed (docs/contract.md#11-trust), dangling or not.
    assert!(matches!(&tails[1].tail, Err(LogError::NotAFile { .. })));
    assert!(matches!(&tails[2].tail, Err(LogError::NotAFile { .. })));
    let envoy = tails[3].tail.as_ref().unwrap();
    assert!(!envoy.partial);
    assert_eq!(envoy.entries.len(), 3);
    assert_eq!(envoy.lines, 10);
    assert!(matches!(&tails[4].tail, Err(LogError::NotAFile { .. })));
    for t in &tails {
        if let Err(e) = &t.tail {
            assert!(e.to_string().contains(&*t.path.to_string_lossy()), "{e}");
        }
    }

    // A window starting exactly at a line start keeps that line.
    let line = b"[2026-11-22 02:38:40.000][1][info][main] [a.cc:1] hello\n";
    let mut two = line.to_vec();
    two.extend_from_slice(ADS_5.as_bytes());
    two.push(b'\n');
    std::fs::write(d.join("exact.log"), &two).unwrap();
    let t = read_tail(&d.join("exact.log"), (two.len() - line.len()) as u64).unwrap();
    assert!(t.partial);
    assert_eq!(t.lines, 1);
    assert_eq!(t.entries.len(), 1);

    // No window at all: the whole file.
    let whole = read_tail(&d.join("envoy.err.log"), u64::MAX).unwrap();
    assert!(!whole.partial);
    assert_eq!(whole.entries.len(), 3);

    let err = read_recent(&d.join("nope"), 1024).unwrap_err();
    assert!(matches!(&err, LogError::Dir { .. }));
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(matches!(
        read_recent(&d.join("notes.txt"), 1024),
        Err(LogError::Dir { .. })
    ));
}

fn set_mtime(path: &Path, at: SystemTime) {
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

#[test]
fn tail_ages_entries_from_mtime_without_time_zones() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("envoy.log");
    let text = format!(
        "{}\n[2026-11-22 02:48:42.734][1][info][main] [a.cc:1] ten minutes later\n",
        ADS_5
    );
    std::fs::write(&p, text).unwrap();
    let written = SystemTime::now() - Duration::from_secs(30);
    set_mtime(&p, written);
    let tail = read_tail(&p, 1 << 20).unwrap();
    let age = tail.age_of(&tail.entries[0], SystemTime::now()).unwrap();
    assert!(
        age >= Duration::from_secs(630) && age < Duration::from_secs(640),
        "{age:?}"
    );
    // Old enough to have expired with a 10-minute TTL.
    let now = Instant::now() + Duration::from_secs(3600);
    let mut lf = LogFindings::new();
    lf.record_tail(&tail, now, SystemTime::now());
    assert!(lf.active(now, Duration::from_secs(600), &vm()).is_empty());
    let mut lf = LogFindings::new();
    lf.record_tail(&tail, now, SystemTime::now());
    assert_eq!(lf.active(now, Duration::from_secs(3600), &vm()).len(), 1);
}

/// Envoy flushes its log every few seconds: the file's mtime is later than its newest line. A
/// line's age counts that lag, so a rejection logged before a fix is not taken as newer than
/// the fix (a `doctor` run right after a fix kept the old rejection when the flush came late).
#[test]
fn tail_ages_count_the_flush_lag_after_the_newest_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("envoy.log");
    std::fs::write(
        &p,
        format!(
            "[2026-12-07 07:11:38.000][1][warning][config] [a.cc:1] {}\n\
             [2026-12-07 07:11:40.000][1][info][main] [a.cc:2] newest\n",
            "gRPC config for type.googleapis.com/envoy.config.listener.v3.Listener rejected: Error adding/updating listener(s) L: unable to open file '/x/access.log': Permission denied"
        ),
    )
    .unwrap();
    // Written 8 s after the newest stamp (in a zone 2 h east: the zone does not matter).
    let newest =
        service_proxy_agent::observe::envoy_log::parse_local_millis("2026-12-07 07:11:40.000")
            .unwrap();
    let written = SystemTime::UNIX_EPOCH
        + Duration::from_millis(u64::try_from(newest - 2 * 3_600_000 + 8_000).unwrap());
    set_mtime(&p, written);
    let tail = read_tail(&p, 1 << 20).unwrap();
    let now = written + Duration::from_secs(1);
    let rejection = &tail.entries[0];
    // 1 s since the write, 8 s of lag, 2 s before the newest line.
    assert_eq!(tail.age_of(rejection, now), Some(Duration::from_secs(11)));
}

// ---------------------------------------------------------------------------------------------
// Live, against the real Envoy.

fn vm() -> LogContext {
    LogContext {
        vm_network: Some("default".into()),
        vm_project_number: Some("123".into()),
        envoy_uid: Some(65534),
    }
}

/// Reads what Envoy appends to its log, as the daemon's follower will.
struct Follower {
    path: PathBuf,
    offset: u64,
    newlines: u64,
    asm: EntryAssembler,
    findings: LogFindings,
    events: Vec<LogEvent>,
    entries: Vec<LogEntry>,
}

impl Follower {
    fn new(path: &Path) -> Self {
        Follower {
            path: path.to_path_buf(),
            offset: 0,
            newlines: 0,
            asm: EntryAssembler::default(),
            findings: LogFindings::new(),
            events: Vec::new(),
            entries: Vec::new(),
        }
    }

    fn poll(&mut self) {
        let Ok(mut f) = File::open(&self.path) else {
            return;
        };
        f.seek(SeekFrom::Start(self.offset)).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            self.offset += n as u64;
            self.newlines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            self.asm.feed(&buf[..n], &mut out);
        }
        self.asm.emit_pending(&mut out);
        let now = Instant::now();
        for e in out {
            for ev in classify(&e) {
                self.findings.record(&ev, now);
                self.events.push(ev);
            }
            self.entries.push(e);
        }
    }

    fn active(&mut self) -> Vec<Finding> {
        self.findings
            .active(Instant::now(), Duration::from_secs(600), &vm())
    }

    /// Polls until `want` are all active, or fails with the log.
    fn wait_for(&mut self, want: &[FindingId], timeout: Duration) -> Vec<Finding> {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll();
            let f = self.active();
            let have: BTreeSet<FindingId> = f.iter().map(|f| f.id).collect();
            if want.iter().all(|w| have.contains(w)) {
                // Every line Envoy wrote so far was seen.
                assert_eq!(self.asm.lines_seen(), self.newlines);
                return f;
            }
            if Instant::now() > deadline {
                panic!(
                    "{want:?} not raised within {timeout:?}; active {have:?}; log:\n{}",
                    String::from_utf8_lossy(&std::fs::read(&self.path).unwrap_or_default())
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn tcp_proxy_listener(name: &str, port: u16, access_log: Option<&Path>) -> Value {
    let mut proxy = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "t", "cluster": "x"
    });
    if let Some(p) = access_log {
        proxy["access_log"] = json!([{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": p
            }
        }]);
    }
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy}]}]
    })
}

fn fs_lds_bootstrap(lds_path: &Path) -> Value {
    json!({
        "node": {"id": "projects/123/networks/default/nodes/live", "cluster": "live"},
        "dynamic_resources": {"lds_config": {
            "path_config_source": {"path": lds_path}, "resource_api_version": "V3"}}
    })
}

fn lds_file(listeners: &[Value]) -> Value {
    let resources: Vec<Value> = listeners
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
            l
        })
        .collect();
    json!({"version_info": "1", "resources": resources})
}

#[test]
fn live_filesystem_rejection_followed_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let lds = dir.path().join("lds.json");
    let mut bad = tcp_proxy_listener("bad_address", 0, None);
    bad["address"]["socket_address"]["address"] = json!("not-an-ip");
    std::fs::write(&lds, serde_json::to_vec(&lds_file(&[bad])).unwrap()).unwrap();
    let envoy = Envoy::start(EnvoyConfig::new(fs_lds_bootstrap(&lds))).expect("start real Envoy");
    let mut follower = Follower::new(envoy.log_path());
    let f = follower.wait_for(&[FindingId::ConfigRejected], Duration::from_secs(30));
    let rejected = f
        .iter()
        .find(|f| f.id == FindingId::ConfigRejected)
        .unwrap();
    assert!(
        rejected
            .detail
            .contains("Listener bad_address: Error adding/updating listener(s) bad_address: malformed IP address: not-an-ip"),
        "{}",
        rejected.detail
    );
    // doctor's path: the tail of the directory gives the same finding.
    let tails = read_recent(envoy.dir(), 1 << 20).unwrap();
    assert_eq!(tails.len(), 1);
    let tail = tails[0].tail.as_ref().unwrap();
    let mut lf = LogFindings::new();
    lf.record_tail(tail, Instant::now(), SystemTime::now());
    let f = lf.active(Instant::now(), Duration::from_secs(600), &vm());
    assert_eq!(
        f.iter().map(|f| f.id).collect::<Vec<_>>(),
        [FindingId::ConfigRejected]
    );
}

struct Nobody {
    child: Child,
    log: PathBuf,
}

impl Drop for Nobody {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const NOBODY: u32 = 65534;

/// Starts Envoy as UID/GID 65534 in `dir` (made theirs), with `bootstrap`.
fn start_as_nobody(dir: &Path, bootstrap: &Value) -> Nobody {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it runs Envoy as UID {NOBODY}"
    );
    let boot = dir.join("bootstrap.json");
    std::fs::write(&boot, serde_json::to_vec(bootstrap).unwrap()).unwrap();
    let log = dir.join("envoy.log");
    for p in [dir, boot.as_path()] {
        nix::unistd::chown(
            p,
            Some(nix::unistd::Uid::from_raw(NOBODY)),
            Some(nix::unistd::Gid::from_raw(NOBODY)),
        )
        .unwrap();
    }
    let child = Command::new(
        testkit::envoy::envoy_bin()
            .and_then(|b| testkit::exec::reachable_by_all(&b))
            .expect("real Envoy (tests/setup-envoy.sh), executable by nobody"),
    )
    .arg("-c")
    .arg(&boot)
    .arg("--log-path")
    .arg(&log)
    .args(["--file-flush-interval-msec", "100", "-l", "info"])
    .args(["--disable-hot-restart", "--concurrency", "1"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .uid(NOBODY)
    .gid(NOBODY)
    .spawn()
    .expect("start Envoy as nobody");
    Nobody { child, log }
}

/// A directory Envoy (as 65534) cannot create files in, inside a fresh temporary directory.
fn unwritable_access_log(tmp: &Path) -> PathBuf {
    let ro = tmp.join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    ro.join("access.log")
}

#[test]
fn live_access_log_not_writable_in_an_lds_update() {
    let tmp = tempfile::tempdir().unwrap();
    let access = unwritable_access_log(tmp.path());
    let work = tmp.path().join("envoy");
    std::fs::create_dir(&work).unwrap();
    let lds = work.join("lds.json");
    std::fs::write(
        &lds,
        serde_json::to_vec(&lds_file(&[tcp_proxy_listener(
            "TRAFFICDIRECTOR_INTERCEPTION_LISTENER",
            0,
            Some(&access),
        )]))
        .unwrap(),
    )
    .unwrap();
    let envoy = start_as_nobody(&work, &fs_lds_bootstrap(&lds));
    let mut follower = Follower::new(&envoy.log);
    let f = follower.wait_for(
        &[FindingId::AccessLogNotWritable, FindingId::ConfigRejected],
        Duration::from_secs(30),
    );
    let a = f
        .iter()
        .find(|f| f.id == FindingId::AccessLogNotWritable)
        .unwrap();
    assert_eq!(
        a.detail,
        format!(
            "Envoy cannot open its access log '{}': Permission denied; Envoy runs as UID 65534.",
            access.display()
        )
    );
}

#[test]
fn live_access_log_not_writable_in_a_static_bootstrap_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let access = unwritable_access_log(tmp.path());
    let work = tmp.path().join("envoy");
    std::fs::create_dir(&work).unwrap();
    let bootstrap = json!({
        "node": {"id": "projects/123/networks/default/nodes/live", "cluster": "live"},
        "static_resources": {"listeners": [tcp_proxy_listener("static_listener", 0, Some(&access))]}
    });
    let mut envoy = start_as_nobody(&work, &bootstrap);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = envoy.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "Envoy did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
    let tails = read_recent(&work, 1 << 20).unwrap();
    let tail = tails[0].tail.as_ref().unwrap();
    let exit = tail
        .entries
        .iter()
        .find(|e| e.level == Some(LogLevel::Critical))
        .expect("a [critical] line");
    let evs = classify(exit);
    assert!(evs.iter().any(|e| matches!(e, LogEvent::Critical { .. })));
    let mut lf = LogFindings::new();
    lf.record_tail(tail, Instant::now(), SystemTime::now());
    let f = lf.active(Instant::now(), Duration::from_secs(600), &vm());
    assert_eq!(
        f.iter().map(|f| f.id).collect::<Vec<_>>(),
        [FindingId::AccessLogNotWritable]
    );
    assert!(f[0].detail.contains(&*access.to_string_lossy()));
}

/// ADS (and LRS) over envoy_grpc to 127.0.0.1:`port`.
fn ads_bootstrap(port: u16, lrs: bool) -> Value {
    let grpc = json!([{"envoy_grpc": {"cluster_name": "xds_cluster"}}]);
    let mut b = json!({
        "node": {"id": "projects/123/networks/default/nodes/live", "cluster": "live",
                 "metadata": {"TRAFFICDIRECTOR_NETWORK_NAME": "default",
                              "TRAFFICDIRECTOR_GCP_PROJECT_NUMBER": "123"}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "grpc_services": grpc},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {"clusters": [{
            "name": "xds_cluster", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "xds_cluster", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}
        }]}
    });
    if lrs {
        b["cluster_manager"] = json!({"load_stats_config": {
            "api_type": "GRPC", "transport_api_version": "V3", "grpc_services": grpc}});
    }
    b
}

/// A control plane made of a second real Envoy: every gRPC call gets a trailers-only answer with
/// `grpc-status` and `grpc-message`, which the client Envoy logs as it would a real one's.
fn stub_control_plane(status: u32, message: &str) -> (Envoy, u16) {
    let hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "cp", "codec_type": "AUTO",
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
            "match": {"prefix": "/"},
            "direct_response": {"status": 200},
            "response_headers_to_add": [
                {"header": {"key": "content-type", "value": "application/grpc"},
                 "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                {"header": {"key": "grpc-status", "value": status.to_string()}},
                {"header": {"key": "grpc-message", "value": message}}]}]}]}
    });
    let bootstrap = json!({
        "node": {"id": "stub-control-plane", "cluster": "stub"},
        "static_resources": {"listeners": [{
            "name": "cp",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}]}
    });
    let mut cfg = EnvoyConfig::new(bootstrap);
    cfg.log_level = "error".into();
    let cp = Envoy::start(cfg).expect("start the stub control plane (real Envoy)");
    cp.wait_live(Duration::from_secs(20)).unwrap();
    let (code, body) = cp.admin_get("/listeners?format=json").unwrap();
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let port = v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
        .as_u64()
        .expect("the stub's port") as u16;
    (cp, port)
}

#[test]
fn live_control_plane_says_config_not_found() {
    let (_cp, port) = stub_control_plane(
        5,
        "Cloud Service Mesh configuration was not found for network \"wrong-net\" in project \"123\".",
    );
    let envoy =
        Envoy::start(EnvoyConfig::new(ads_bootstrap(port, true))).expect("start real Envoy");
    let mut follower = Follower::new(envoy.log_path());
    let f = follower.wait_for(&[FindingId::MeshConfigNotFound], Duration::from_secs(30));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        f[0].detail,
        "StreamAggregatedResources to xds_cluster closed with 5 (NOT_FOUND): Cloud Service Mesh configuration was not found for network \"wrong-net\" in project \"123\". Envoy asked with network \"wrong-net\" vs VM network \"default\"; project \"123\" matches the VM."
    );
    // The control plane starts serving: the finding is contradicted and cleared.
    let now = Instant::now();
    follower.findings.contradict(
        service_proxy_agent::diagnose::log_findings::Contradiction::ControlPlaneServing,
        now,
    );
    assert!(follower.active().is_empty());
}

#[test]
fn live_unreachable_control_plane_after_envoys_30_seconds() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // The production default level: the first 30 s of closes are debug lines, not written.
    let envoy =
        Envoy::start(EnvoyConfig::new(ads_bootstrap(port, false))).expect("start real Envoy");
    let started = Instant::now();
    let mut follower = Follower::new(envoy.log_path());
    let f = follower.wait_for(
        &[FindingId::ControlPlaneDisconnected],
        Duration::from_secs(120),
    );
    assert!(
        started.elapsed() >= Duration::from_secs(25),
        "raised too early: {f:?}"
    );
    let closes: Vec<_> = follower
        .events
        .iter()
        .filter_map(|e| match e {
            LogEvent::StreamClosed(s) => Some(s),
            _ => None,
        })
        .collect();
    assert!(!closes.is_empty());
    assert!(
        closes
            .iter()
            .all(|s| s.code == 14 && s.since_secs.is_some_and(|v| v >= 30))
    );
    let d = &f
        .iter()
        .find(|f| f.id == FindingId::ControlPlaneDisconnected)
        .unwrap()
        .detail;
    assert!(d.starts_with("StreamAggregatedResources to xds_cluster keeps closing with 14 (UNAVAILABLE): upstream connect error"), "{d}");
    assert!(!d.contains("{upstream_reset"), "{d}");
}
