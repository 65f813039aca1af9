//! Envoy's log-line header: `[time][thread][level][logger] [file:line]`, parsed from bytes without
//! allocating for lines we skip.

use super::*;

/// Where the `[YYYY-MM-DD HH:MM:SS` header starts in `line`, if it is a header line. Leading NUL bytes are
/// skipped: a copytruncate'd file written at the writer's old offset starts with a hole.
#[inline]
pub(super) fn header_offset(line: &[u8]) -> Option<usize> {
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
pub(super) const MIN_LINE_WINDOW: usize = 256;

/// Longest bracketed header field we accept (thread ids, level and logger names, source paths).
pub(super) const MAX_FIELD: usize = 512;

pub(super) fn build_entry(
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
pub(super) fn parse_header(line: &[u8], entry: &mut LogEntry) -> usize {
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
pub(super) fn bracketed(line: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    if line.get(pos) != Some(&b'[') {
        return None;
    }
    let rest = line.get(pos + 1..)?;
    let window = rest.get(..MAX_FIELD.min(rest.len()))?;
    let close = memchr(b']', window)?;
    Some((window.get(..close)?, pos + 1 + close + 1))
}

pub(super) fn lossy(b: &[u8]) -> String {
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
pub(super) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
