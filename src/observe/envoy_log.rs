//! Envoy's log files: cutting a byte stream into log entries, and reading the recent tail of
//! every `*.log` in the log directory (for `doctor`).
//!
//! Envoy's default format is `[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v`. A line that does not
//! start with `[date time` continues the previous entry: messages may hold raw newlines and some
//! end with one, leaving an empty line. With `--log-format-escaped` every entry is one line and
//! the message carries C escapes (`\n`, `\'`); the classifier undoes those.
//!
//! The [`EntryAssembler`] is fed arbitrary byte chunks (whatever `read` or inotify gives), keeps a
//! partial last line until it completes, works on bytes (invalid UTF-8 only becomes `U+FFFD` when
//! a message is built) and keeps at most `max_entry_bytes` of an entry while still finding where
//! its lines end, so a 50 MB line costs a scan, not 50 MB of memory, and the lines after it are
//! found. The fast path (the default [`EntryFilter::Interesting`]) copies nothing and allocates
//! nothing per line: each chunk is searched once for the few substrings the classifier needs
//! ([`INTERESTING`], Aho-Corasick's SIMD prefilter), the lines between two matches are only
//! counted (`memchr`), and only entries holding a match are cut into lines and built. On a
//! 1 GiB Envoy log this runs at 3-7 GB/s (page cache), the same order as `rg --count`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aho_corasick::{AhoCorasick, MatchKind};
use memchr::{memchr, memrchr};
use thiserror::Error;

/// How much of one entry is kept (raw bytes, line ends included); the rest is counted, not kept.
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 64 * 1024;

/// How much of the end of each file [`read_recent`] reads by default.
pub const DEFAULT_TAIL_BYTES: u64 = 1024 * 1024;

/// Every line the classifier acts on contains one of these (a test in the classifier checks it).
/// Entries without any are skipped before any parsing.
pub const INTERESTING: &[&str] = &[
    // Stream closed, every era and method.
    "gRPC config stream",
    // `gRPC config for T rejected:`, `delta config for T rejected:`, `lds: listener 'N' config
    // rejected:`, `Filesystem config update rejected:`.
    " rejected:",
    "unable to open file",
    "failed to bind",
    "initial fetch timed out",
    // Envoy's exit lines: the level field as the header parser accepts it, wherever the format
    // puts it (the fuzzer found `[time][ ][critical]]...`: a level field not followed by `[`).
    "[critical]",
];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LogError {
    #[error("cannot read the Envoy log directory {}: {reason}", .dir.display())]
    Dir { dir: PathBuf, reason: String },
    #[error("cannot read the Envoy log file {}: {reason}", .path.display())]
    File { path: PathBuf, reason: String },
    #[error("{} is not a regular file", .path.display())]
    NotAFile { path: PathBuf },
}

/// Envoy's level names (`%l`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl LogLevel {
    pub fn from_name(name: &[u8]) -> Option<LogLevel> {
        Some(match name {
            b"trace" => LogLevel::Trace,
            b"debug" => LogLevel::Debug,
            b"info" => LogLevel::Info,
            b"warning" | b"warn" => LogLevel::Warning,
            b"error" => LogLevel::Error,
            b"critical" => LogLevel::Critical,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
        }
    }
}

/// One log entry: a header line and its continuation lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The timestamp as Envoy wrote it (local time), e.g. `2026-11-22 02:32:17.173`; `None` for
    /// lines before the first header (a tail that starts inside an entry) or another format.
    pub time: Option<String>,
    pub thread: Option<String>,
    pub level: Option<LogLevel>,
    /// The logger name (`%n`): `config`, `upstream`, `main`, ...
    pub logger: Option<String>,
    /// `%g:%#`, e.g. `source/server/server.cc:449`.
    pub source: Option<String>,
    /// The message, continuation lines joined with `\n`, trailing empty lines dropped, invalid
    /// UTF-8 replaced.
    pub message: String,
    /// 1-based number of the entry's first line in what this assembler was fed.
    pub first_line: u64,
    /// How many lines the entry spans (empty continuation lines included).
    pub line_count: u64,
    /// More than `max_entry_bytes` raw bytes: only the beginning is kept.
    pub truncated: bool,
}

impl LogEntry {
    /// The timestamp as milliseconds since 1970-01-01 00:00 *of the same local clock*: only the
    /// difference between two entries of one machine means anything.
    pub fn local_millis(&self) -> Option<i64> {
        self.time.as_deref().and_then(parse_local_millis)
    }
}

/// Which entries the assembler builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EntryFilter {
    /// Only entries containing one of [`INTERESTING`]: the fast path.
    #[default]
    Interesting,
    /// Every entry.
    All,
}

/// Cuts a byte stream into [`LogEntry`]s; see the module documentation.
#[derive(Debug, Clone)]
pub struct EntryAssembler {
    max_entry_bytes: usize,
    matcher: Option<AhoCorasick>,
    /// The physical line not yet ended by `\n`: its first `line_window()` bytes after any
    /// leading NULs.
    partial: Vec<u8>,
    partial_open: bool,
    partial_len: u64,
    entry: Pending,
    lines: u64,
    /// Lines with a prefilter match in their window (see [`EntryAssembler::matched_lines`]).
    matched: u64,
    bytes: u64,
}

/// The entry being assembled. Its bytes are in `buf` (carried over from earlier chunks, capped)
/// followed by `chunk[chunk_start..]` of the chunk being processed.
#[derive(Debug, Clone, Default)]
struct Pending {
    open: bool,
    has_header: bool,
    buf: Vec<u8>,
    chunk_start: Option<usize>,
    raw_len: u64,
    first_line: u64,
    lines: u64,
    interesting: bool,
}

impl Default for EntryAssembler {
    fn default() -> Self {
        EntryAssembler::new(EntryFilter::Interesting, DEFAULT_MAX_ENTRY_BYTES)
    }
}

impl EntryAssembler {
    pub fn new(filter: EntryFilter, max_entry_bytes: usize) -> Self {
        let matcher = match filter {
            EntryFilter::All => None,
            // The needles are constant and valid: building cannot fail; if it somehow did, the
            // assembler degrades to building every entry rather than missing any.
            // Leftmost-first gets the SIMD prefilter (standard semantics do not: 20x slower).
            EntryFilter::Interesting => AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostFirst)
                .build(INTERESTING)
                .ok(),
        };
        EntryAssembler {
            max_entry_bytes: max_entry_bytes.max(1),
            matcher,
            partial: Vec::new(),
            partial_open: false,
            partial_len: 0,
            entry: Pending::default(),
            lines: 0,
            matched: 0,
            bytes: 0,
        }
    }

    /// Lines completed so far (a flushed partial line counts). A follower compares this with its
    /// own count of newlines to prove no line was lost.
    pub fn lines_seen(&self) -> u64 {
        self.lines
    }

    /// Lines holding one of [`INTERESTING`] within their first `max_entry_bytes` (at least 256)
    /// bytes: what `rg --count -F -e NEEDLE...` counts, for lines shorter than that. Always 0
    /// with [`EntryFilter::All`] (nothing is searched).
    pub fn matched_lines(&self) -> u64 {
        self.matched
    }

    /// Bytes fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.bytes
    }

    /// Bytes held for the partial line and the pending entry: at most twice `max_entry_bytes`
    /// (or `max_entry_bytes` + 256 when it is tiny), whatever the input.
    pub fn buffered_bytes(&self) -> usize {
        self.partial.len() + self.entry.buf.len()
    }

    /// Whether a partial line or an entry is waiting for more input.
    pub fn has_pending(&self) -> bool {
        self.partial_open || self.entry.open
    }

    /// Feeds the next bytes of the stream. Entries that are complete (the next header line has
    /// been seen) are appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<LogEntry>) {
        self.bytes += chunk.len() as u64;
        let mut pos = 0;
        if self.partial_open {
            let Some(nl) = memchr(b'\n', chunk) else {
                self.extend_partial(chunk);
                return;
            };
            self.extend_partial(chunk.get(..nl).unwrap_or_default());
            self.complete_partial(out);
            pos = nl + 1;
        }
        let rest = chunk.get(pos..).unwrap_or_default();
        let region_end = memrchr(b'\n', rest).map_or(pos, |i| pos + i + 1);
        if region_end > pos {
            self.scan_region(chunk, pos, region_end, out);
        }
        self.carry(chunk, region_end);
        if region_end < chunk.len() {
            self.partial_open = true;
            self.extend_partial(chunk.get(region_end..).unwrap_or_default());
        }
    }

    /// Emits the pending entry when no partial line is open: for a follower whose file has been
    /// quiet for a while (Envoy writes an entry with its continuation lines at once). Lines that
    /// continue it later become an entry without a header.
    pub fn emit_pending(&mut self, out: &mut Vec<LogEntry>) {
        if !self.partial_open {
            self.finish_entry(&[], 0, out);
        }
    }

    /// End of input (EOF, rotation, shutdown): the partial line counts as a line and the pending
    /// entry is emitted. Feeding may go on afterwards (a new file); the counters keep counting.
    pub fn finish(&mut self, out: &mut Vec<LogEntry>) {
        if self.partial_open {
            self.complete_partial(out);
        }
        self.finish_entry(&[], 0, out);
    }

    /// How much of one line is kept to recognise its header and search it for [`INTERESTING`],
    /// whether the line came in one chunk or several.
    fn line_window(&self) -> usize {
        self.max_entry_bytes.max(MIN_LINE_WINDOW)
    }

    fn extend_partial(&mut self, mut bytes: &[u8]) {
        if self.partial_len == 0 {
            // Leading NULs (a hole left by copytruncate) are dropped, so the cap keeps the text
            // after them, as it does for a line found whole in a chunk.
            let nuls = bytes.iter().take_while(|&&b| b == 0).count();
            bytes = bytes.get(nuls..).unwrap_or_default();
        }
        self.partial_len += bytes.len() as u64;
        let room = self.line_window().saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
    }

    /// The partial line has ended (or the input has): process it as an owned line.
    fn complete_partial(&mut self, out: &mut Vec<LogEntry>) {
        let line = std::mem::take(&mut self.partial);
        let full_len = self.partial_len;
        self.partial_open = false;
        self.partial_len = 0;
        self.owned_line(&line, full_len, out);
        self.partial = line;
        self.partial.clear();
    }

    fn owned_line(&mut self, line: &[u8], full_len: u64, out: &mut Vec<LogEntry>) {
        self.lines += 1;
        let interesting = self.matcher.as_ref().is_some_and(|m| m.is_match(line));
        self.matched += u64::from(interesting);
        let skip = header_offset(strip_cr(line));
        if skip.is_some() {
            self.finish_entry(&[], 0, out);
            self.open_entry(true, None, interesting);
        } else {
            self.continue_entry(None, interesting);
        }
        let kept = line.get(skip.unwrap_or(0)..).unwrap_or_default();
        let e = &mut self.entry;
        e.raw_len += full_len.saturating_sub(skip.unwrap_or(0) as u64) + 1;
        push_capped(&mut e.buf, kept, self.max_entry_bytes);
        push_capped(&mut e.buf, b"\n", self.max_entry_bytes);
    }

    /// Lines of `chunk[start..end]`, which ends with `\n`.
    fn scan_region(&mut self, chunk: &[u8], start: usize, end: usize, out: &mut Vec<LogEntry>) {
        let Some(matcher) = self.matcher.clone() else {
            // Every entry is wanted: line by line.
            let mut p = start;
            while p < end {
                let nl = line_end(chunk, p, end);
                let nuls = leading_nuls(chunk, p, nl);
                self.region_line(chunk, p, nl, nuls, false, out);
                p = nl + 1;
            }
            return;
        };
        // One search over the whole region; needles hold no newline, so each match lies in one
        // line. A line is interesting when a match lies within its first `line_window()` bytes
        // (after leading NULs): exactly what a line assembled across chunks keeps and searches.
        // Lines are only looked at one by one inside a wanted entry; between them, runs of
        // lines are counted and skipped (see `skip_lines`).
        let region = chunk.get(start..end).unwrap_or_default();
        let mut matches = matcher.find_iter(region);
        let mut next = || matches.next().map(|m| (start + m.start(), start + m.end()));
        let mut pending = next();
        let window = self.line_window();
        let mut p = start;
        while p < end {
            if self.entry.open && self.entry.interesting {
                let nl = line_end(chunk, p, end);
                let nuls = leading_nuls(chunk, p, nl);
                let kept_end = nl.min(p + nuls + window);
                let mut interesting = false;
                while let Some((ms, me)) = pending {
                    if ms >= nl {
                        break;
                    }
                    interesting |= ms >= p && me <= kept_end;
                    pending = next();
                }
                self.region_line(chunk, p, nl, nuls, interesting, out);
                p = nl + 1;
                continue;
            }
            // The open entry is not wanted: go straight to the next line with a match.
            let mut target = None;
            while let Some((ms, me)) = pending {
                if ms < p {
                    pending = next();
                    continue;
                }
                let ls = chunk
                    .get(p..ms)
                    .and_then(|b| memrchr(b'\n', b))
                    .map_or(p, |i| p + i + 1);
                let le = line_end(chunk, ms, end);
                let nuls = leading_nuls(chunk, ls, le);
                pending = next();
                if me <= le.min(ls + nuls + window) {
                    target = Some((ls, le, nuls));
                    break;
                }
            }
            let Some((ls, le, nuls)) = target else {
                self.skip_lines(chunk, p, end, out);
                break;
            };
            self.skip_lines(chunk, p, ls, out);
            while let Some((ms, _)) = pending {
                if ms >= le {
                    break;
                }
                pending = next();
            }
            self.region_line(chunk, ls, le, nuls, true, out);
            p = le + 1;
        }
    }

    /// The lines of `chunk[from..to]` (whole lines, none interesting), in bulk: the state ends
    /// as if each had gone through `region_line`. Only the last header line among them and
    /// the lines starting with NUL after it matter; the rest is counted.
    fn skip_lines(&mut self, chunk: &[u8], from: usize, to: usize, out: &mut Vec<LogEntry>) {
        if from >= to {
            return;
        }
        // The last header line, searching backwards.
        let mut header = None;
        let mut pos = to;
        while pos > from {
            let le = pos - 1;
            let ls = chunk
                .get(from..le)
                .and_then(|b| memrchr(b'\n', b))
                .map_or(from, |i| from + i + 1);
            if let Some(skip) = header_offset(strip_cr(chunk.get(ls..le).unwrap_or_default())) {
                header = Some((ls, le, skip));
                break;
            }
            pos = ls;
        }
        let rest_from = match header {
            Some((h, le, skip)) => {
                self.lines += count_lines(chunk, from, h);
                self.finish_entry(chunk, h, out);
                self.lines += 1;
                self.open_entry(true, Some(h + skip), false);
                le + 1
            }
            None if !self.entry.open => {
                let le = line_end(chunk, from, to);
                self.lines += 1;
                self.open_entry(false, Some(from + leading_nuls(chunk, from, le)), false);
                le + 1
            }
            None => from,
        };
        // Continuation lines of the open entry.
        let n = count_lines(chunk, rest_from, to);
        self.lines += n;
        self.entry.lines += n;
        if n == 0 {
            return;
        }
        if chunk.get(rest_from) != Some(&0) && self.entry.chunk_start.is_none() {
            self.entry.chunk_start = Some(rest_from);
        }
        // Lines starting with NUL: as in `region_line`, their NULs are left out.
        let mut nul_lines: Vec<usize> = Vec::new();
        if chunk.get(rest_from) == Some(&0) {
            nul_lines.push(rest_from);
        }
        let span = chunk.get(rest_from..to).unwrap_or_default();
        nul_lines.extend(
            memchr::memmem::find_iter(span, b"\n\0")
                .map(|q| rest_from + q + 1)
                .filter(|&s| s < to),
        );
        for s in nul_lines {
            let le = line_end(chunk, s, to);
            self.carry(chunk, s);
            self.entry.chunk_start = Some(s + leading_nuls(chunk, s, le));
        }
    }

    fn region_line(
        &mut self,
        chunk: &[u8],
        start: usize,
        end: usize,
        nuls: usize,
        interesting: bool,
        out: &mut Vec<LogEntry>,
    ) {
        self.lines += 1;
        self.matched += u64::from(interesting);
        let line = chunk.get(start..end).unwrap_or_default();
        if header_offset(strip_cr(line)).is_some() {
            self.finish_entry(chunk, start, out);
            self.open_entry(true, Some(start + nuls), interesting);
        } else {
            if nuls > 0 {
                // Leading NULs are not part of the entry (as for a line assembled across
                // chunks): close the contiguous region before them.
                self.carry(chunk, start);
            }
            self.continue_entry(Some(start + nuls), interesting);
        }
    }

    fn open_entry(&mut self, has_header: bool, chunk_start: Option<usize>, interesting: bool) {
        let e = &mut self.entry;
        e.open = true;
        e.has_header = has_header;
        e.chunk_start = chunk_start;
        e.raw_len = 0;
        e.first_line = self.lines;
        e.lines = 1;
        e.interesting = interesting;
        e.buf.clear();
    }

    fn continue_entry(&mut self, line_start: Option<usize>, interesting: bool) {
        if !self.entry.open {
            // Lines before any header: an entry of their own, so nothing is dropped silently.
            self.open_entry(false, line_start, interesting);
            return;
        }
        let e = &mut self.entry;
        e.lines += 1;
        e.interesting |= interesting;
        if e.chunk_start.is_none() {
            e.chunk_start = line_start;
        }
    }

    /// At the end of a chunk, the open entry's bytes in that chunk move to its own buffer.
    fn carry(&mut self, chunk: &[u8], upto: usize) {
        let e = &mut self.entry;
        if let Some(s) = e.chunk_start.take()
            && e.open
        {
            let region = chunk.get(s..upto).unwrap_or_default();
            e.raw_len += region.len() as u64;
            push_capped(&mut e.buf, region, self.max_entry_bytes);
        }
    }

    fn finish_entry(&mut self, chunk: &[u8], upto: usize, out: &mut Vec<LogEntry>) {
        if !self.entry.open {
            return;
        }
        let wanted = self.matcher.is_none() || self.entry.interesting;
        let cap = self.max_entry_bytes;
        let e = &mut self.entry;
        if wanted {
            let region = e
                .chunk_start
                .and_then(|s| chunk.get(s..upto))
                .unwrap_or_default();
            let raw_len = e.raw_len + region.len() as u64;
            let raw: &[u8] = if e.buf.is_empty() {
                region.get(..cap.min(region.len())).unwrap_or_default()
            } else {
                push_capped(&mut e.buf, region, cap);
                &e.buf
            };
            out.push(build_entry(
                raw,
                e.has_header,
                e.first_line,
                e.lines,
                raw_len > cap as u64,
            ));
        }
        e.open = false;
        e.chunk_start = None;
        e.raw_len = 0;
        e.interesting = false;
        e.buf.clear();
    }
}

/// Index of the `\n` ending the line that starts at `p` (or `end`).
#[inline]
fn line_end(chunk: &[u8], p: usize, end: usize) -> usize {
    chunk
        .get(p..end)
        .and_then(|b| memchr(b'\n', b))
        .map_or(end, |i| p + i)
}

/// How many NUL bytes start the line `chunk[p..le]`.
#[inline]
fn leading_nuls(chunk: &[u8], p: usize, le: usize) -> usize {
    match chunk.get(p) {
        Some(0) => chunk
            .get(p..le)
            .unwrap_or_default()
            .iter()
            .take_while(|&&b| b == 0)
            .count(),
        _ => 0,
    }
}

/// Lines ended by `\n` in `chunk[from..to]`.
fn count_lines(chunk: &[u8], from: usize, to: usize) -> u64 {
    chunk
        .get(from..to)
        .map_or(0, |b| memchr::memchr_iter(b'\n', b).count() as u64)
}

fn push_capped(buf: &mut Vec<u8>, bytes: &[u8], cap: usize) {
    let room = cap.saturating_sub(buf.len());
    buf.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Where the `[YYYY-MM-DD HH:MM:SS` header starts in `line`, if it is a header line. Leading NUL bytes are
/// skipped: a copytruncate'd file written at the writer's old offset starts with a hole.
#[inline]
fn header_offset(line: &[u8]) -> Option<usize> {
    let skip = match line.first() {
        Some(b'[') => 0,
        Some(0) => line.iter().position(|&b| b != 0)?,
        _ => return None,
    };
    let head: &[u8; 20] = line.get(skip..skip + 20)?.try_into().ok()?;
    let [
        open,
        y1,
        y2,
        y3,
        y4,
        dash1,
        mo1,
        mo2,
        dash2,
        d1,
        d2,
        space,
        h1,
        h2,
        colon1,
        mi1,
        mi2,
        colon2,
        s1,
        s2,
    ] = *head;
    let digits = [y1, y2, y3, y4, mo1, mo2, d1, d2, h1, h2, mi1, mi2, s1, s2];
    let ok = open == b'['
        && dash1 == b'-'
        && dash2 == b'-'
        && space == b' '
        && colon1 == b':'
        && colon2 == b':'
        && digits.iter().all(u8::is_ascii_digit);
    ok.then_some(skip)
}

/// Lines are searched this far at least, even with a tiny `max_entry_bytes`.
const MIN_LINE_WINDOW: usize = 256;

/// Longest bracketed header field we accept (thread ids, level and logger names, source paths).
const MAX_FIELD: usize = 512;

fn build_entry(
    raw: &[u8],
    has_header: bool,
    first_line: u64,
    line_count: u64,
    truncated: bool,
) -> LogEntry {
    let first_end = memchr(b'\n', raw).unwrap_or(raw.len());
    let first = strip_cr(raw.get(..first_end).unwrap_or_default());
    let mut entry = LogEntry {
        time: None,
        thread: None,
        level: None,
        logger: None,
        source: None,
        message: String::new(),
        first_line,
        line_count,
        truncated,
    };
    let msg_start = if has_header {
        parse_header(first, &mut entry)
    } else {
        first.iter().take_while(|&&b| b == 0).count()
    };
    let mut msg: Vec<u8> = Vec::with_capacity(raw.len().saturating_sub(msg_start));
    msg.extend_from_slice(first.get(msg_start..).unwrap_or_default());
    let mut rest = raw.get(first_end + 1..).unwrap_or_default();
    while !rest.is_empty() {
        let end = memchr(b'\n', rest).unwrap_or(rest.len());
        let line = strip_cr(rest.get(..end).unwrap_or_default());
        let nuls = line.iter().take_while(|&&b| b == 0).count();
        msg.push(b'\n');
        msg.extend_from_slice(line.get(nuls..).unwrap_or_default());
        rest = rest.get(end + 1..).unwrap_or_default();
    }
    while msg.last() == Some(&b'\n') {
        msg.pop();
    }
    entry.message = String::from_utf8(msg)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    entry
}

/// Fills the header fields of `entry` from its first line; returns where the message starts.
fn parse_header(line: &[u8], entry: &mut LogEntry) -> usize {
    let Some((time, mut pos)) = bracketed(line, 0) else {
        return 0;
    };
    entry.time = Some(lossy(time));
    let mut fields: Vec<&[u8]> = Vec::with_capacity(3);
    while fields.len() < 4 {
        match bracketed(line, pos) {
            Some((f, next)) => {
                fields.push(f);
                pos = next;
            }
            None => break,
        }
    }
    // The default `[%t][%l][%n]`; other formats may drop or reorder fields, so recognise the
    // level by its name, the thread by its digits, and take the next other field as the logger.
    let level_at = fields.iter().position(|f| LogLevel::from_name(f).is_some());
    entry.level = level_at
        .and_then(|i| fields.get(i))
        .and_then(|f| LogLevel::from_name(f));
    entry.thread = fields
        .iter()
        .find(|f| !f.is_empty() && f.iter().all(u8::is_ascii_digit))
        .map(|f| lossy(f));
    entry.logger = level_at
        .and_then(|i| fields.get(i + 1))
        .filter(|f| !f.is_empty())
        .map(|f| lossy(f));
    // ` [file:line] ` before the message.
    if line.get(pos) == Some(&b' ')
        && let Some((src, next)) = bracketed(line, pos + 1)
        && !src.contains(&b' ')
    {
        entry.source = Some(lossy(src));
        pos = next;
    }
    if line.get(pos) == Some(&b' ') {
        pos += 1;
    }
    pos
}

/// `[...]` starting at `line[pos]`: its content and the position after `]`.
fn bracketed(line: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    if line.get(pos) != Some(&b'[') {
        return None;
    }
    let rest = line.get(pos + 1..)?;
    let window = rest.get(..MAX_FIELD.min(rest.len()))?;
    let close = memchr(b']', window)?;
    Some((window.get(..close)?, pos + 1 + close + 1))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `YYYY-MM-DD HH:MM:SS[.fff]` → milliseconds since 1970-01-01 of that clock (no time zone).
pub fn parse_local_millis(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let d = b.get(from..from + len)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(d).ok()?.parse().ok()
    };
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || b.get(13) != Some(&b':') {
        return None;
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut millis = 0;
    if b.get(19) == Some(&b'.') {
        let frac: Vec<u8> = b
            .iter()
            .skip(20)
            .take_while(|c| c.is_ascii_digit())
            .copied()
            .collect();
        let mut v: i64 = 0;
        for (i, c) in frac.iter().take(3).enumerate() {
            v += i64::from(c - b'0') * [100, 10, 1].get(i).copied().unwrap_or(0);
        }
        millis = v;
    }
    let days = days_from_civil(y, mo, d);
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The recent tail of one log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// The interesting entries of the tail, oldest first.
    pub entries: Vec<LogEntry>,
    /// The file's modification time: about when its newest entry was written.
    pub modified: Option<SystemTime>,
    /// The timestamp of the newest header line in the tail, interesting or not.
    pub newest_time: Option<String>,
    /// The tail started inside the file (older content was not read).
    pub partial: bool,
    pub bytes_read: u64,
    /// Lines in the tail, counting from its first line boundary.
    pub lines: u64,
}

impl Tail {
    /// How long ago `entry` was written, from its distance to the newest entry and the file's
    /// modification time; no time zone needed. `None` when the times are unknown.
    pub fn age_of(&self, entry: &LogEntry, now: SystemTime) -> Option<Duration> {
        let newest = self.newest_time.as_deref().and_then(parse_local_millis)?;
        let this = entry.local_millis()?;
        let since_newest = u64::try_from(newest.saturating_sub(this)).unwrap_or(0);
        let since_write = now.duration_since(self.modified?).unwrap_or(Duration::ZERO);
        Some(since_write + Duration::from_millis(since_newest))
    }
}

/// One `*.log` file of the directory and what reading its tail gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTail {
    pub path: PathBuf,
    pub tail: Result<Tail, LogError>,
}

/// The last `max_bytes_per_file` bytes (from the first line boundary in them) of every `*.log`
/// in `dir`, sorted by name, as interesting entries. A file that cannot be read gets its own
/// error and the others are still read; the directory itself missing or unreadable is the `Err`.
pub fn read_recent(dir: &Path, max_bytes_per_file: u64) -> Result<Vec<FileTail>, LogError> {
    let dir_err = |e: std::io::Error| LogError::Dir {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    };
    let mut paths = Vec::new();
    for item in std::fs::read_dir(dir).map_err(dir_err)? {
        let item = item.map_err(dir_err)?;
        let name = item.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".log") && !name.starts_with('.') {
            paths.push(item.path());
        }
    }
    // As many as the follower follows, Envoy's own names first (docs/contract.md#11-trust: bounded numbers).
    paths.sort_by_cached_key(|p| crate::observe::log_files::priority(p));
    paths.truncate(crate::observe::log_files::MAX_FOLLOWED);
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|path| {
            let tail = read_tail(&path, max_bytes_per_file);
            FileTail { path, tail }
        })
        .collect())
}

/// The tail of one file; see [`read_recent`].
pub fn read_tail(path: &Path, max_bytes: u64) -> Result<Tail, LogError> {
    let file_err = |e: std::io::Error| LogError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    // A link or a special file is not opened at all (opening some devices has effects).
    if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(LogError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    // O_NONBLOCK: a FIFO named *.log must not hang `doctor`; it is refused just below.
    // O_NOFOLLOW: a link may lead to a file only root may read (docs/contract.md#11-trust).
    let mut file: File = OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOFOLLOW).bits())
        .open(path)
        .map_err(file_err)?;
    let meta = file.metadata().map_err(file_err)?;
    if !meta.is_file() {
        return Err(LogError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let len = meta.len();
    // Read one byte before the window to know whether it starts on a line boundary.
    let start = len.saturating_sub(max_bytes);
    let from = start.saturating_sub(1);
    file.seek(SeekFrom::Start(from)).map_err(file_err)?;
    let want = (len - from).min(max_bytes.saturating_add(1));
    let mut buf = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(file_err)?;
    let body: &[u8] = if start == 0 {
        &buf
    } else if buf.first() == Some(&b'\n') {
        buf.get(1..).unwrap_or_default()
    } else {
        // Skip the rest of a line that began before the window.
        match memchr(b'\n', &buf) {
            Some(i) => buf.get(i + 1..).unwrap_or_default(),
            None => &[],
        }
    };
    let mut asm = EntryAssembler::default();
    let mut entries = Vec::new();
    asm.feed(body, &mut entries);
    asm.finish(&mut entries);
    Ok(Tail {
        entries,
        modified: meta.modified().ok(),
        newest_time: newest_header_time(body),
        partial: start > 0,
        bytes_read: body.len() as u64,
        lines: asm.lines_seen(),
    })
}

/// The timestamp of the last header line in `body`, searching backwards.
pub(crate) fn newest_header_time(body: &[u8]) -> Option<String> {
    let mut end = body.len();
    loop {
        let start = memrchr(b'\n', body.get(..end)?).map_or(0, |i| i + 1);
        let line = body.get(start..end)?;
        if let Some(skip) = header_offset(line)
            && let Some((time, _)) = bracketed(line, skip)
        {
            return Some(lossy(time));
        }
        if start == 0 {
            return None;
        }
        end = start - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Vec<LogEntry> {
        let mut a = EntryAssembler::new(EntryFilter::All, DEFAULT_MAX_ENTRY_BYTES);
        let mut out = Vec::new();
        a.feed(input, &mut out);
        a.finish(&mut out);
        out
    }

    #[test]
    fn parses_default_header() {
        let e = all(
            b"[2026-11-22 02:32:17.173][12184][warning][config] [./source/x.h:189] hello world\n",
        );
        assert_eq!(e.len(), 1);
        let e = &e[0];
        assert_eq!(e.time.as_deref(), Some("2026-11-22 02:32:17.173"));
        assert_eq!(e.thread.as_deref(), Some("12184"));
        assert_eq!(e.level, Some(LogLevel::Warning));
        assert_eq!(e.logger.as_deref(), Some("config"));
        assert_eq!(e.source.as_deref(), Some("./source/x.h:189"));
        assert_eq!(e.message, "hello world");
        assert_eq!((e.first_line, e.line_count, e.truncated), (1, 1, false));
    }

    #[test]
    fn other_formats_keep_what_they_can() {
        let e = all(b"[2026-11-22 02:32:17][critical] boom\nnot a header\n");
        assert_eq!(e[0].level, Some(LogLevel::Critical));
        assert_eq!(e[0].thread, None);
        assert_eq!(e[0].message, "boom\nnot a header");
        let e = all(b"plain text\n");
        assert_eq!(e[0].time, None);
        assert_eq!(e[0].message, "plain text");
    }

    #[test]
    fn local_millis() {
        assert_eq!(parse_local_millis("1970-01-01 00:00:00.000"), Some(0));
        assert_eq!(
            parse_local_millis("1970-01-02 00:00:01.5"),
            Some(86_401_500)
        );
        assert_eq!(
            parse_local_millis("2026-11-22 02:32:17.173").unwrap()
                - parse_local_millis("2026-11-21 23:59:59.000").unwrap(),
            (2 * 3600 + 32 * 60 + 18) * 1000 + 173
        );
        assert_eq!(parse_local_millis("2026-13-22 02:32:17"), None);
        assert_eq!(parse_local_millis("garbage"), None);
    }

    #[test]
    fn header_mask() {
        assert_eq!(header_offset(b"[2026-11-22 02:32:17.173][1]"), Some(0));
        assert_eq!(
            header_offset(b"\0\0\0[2026-11-22 02:32:17.173][1]"),
            Some(3)
        );
        assert_eq!(header_offset(b"[2026-11-22 02:32"), None);
        assert_eq!(header_offset(b" [2026-11-22 02:32:17.173]"), None);
        assert_eq!(header_offset(b"\0\0"), None);
        assert_eq!(header_offset(b""), None);
    }
}
