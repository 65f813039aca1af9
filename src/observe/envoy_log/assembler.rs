//! Cutting a byte stream into entries: header lines start an entry, continuation lines join it,
//! bounded in size.

use super::*;

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
pub(super) struct Pending {
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
pub(super) fn line_end(chunk: &[u8], p: usize, end: usize) -> usize {
    chunk
        .get(p..end)
        .and_then(|b| memchr(b'\n', b))
        .map_or(end, |i| p + i)
}

/// How many NUL bytes start the line `chunk[p..le]`.
#[inline]
pub(super) fn leading_nuls(chunk: &[u8], p: usize, le: usize) -> usize {
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
pub(super) fn count_lines(chunk: &[u8], from: usize, to: usize) -> u64 {
    chunk
        .get(from..to)
        .map_or(0, |b| memchr::memchr_iter(b'\n', b).count() as u64)
}

pub(super) fn push_capped(buf: &mut Vec<u8>, bytes: &[u8], cap: usize) {
    let room = cap.saturating_sub(buf.len());
    buf.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
}

pub(super) fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}
