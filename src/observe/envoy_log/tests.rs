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
    let e =
        all(b"[2026-11-22 02:32:17.173][12184][warning][config] [./source/x.h:189] hello world\n");
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

#[test]
fn flush_lag_is_the_mtime_past_the_newest_stamp_whatever_the_zone() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let stamp = parse_local_millis("2026-12-07 07:11:40.250").unwrap();
    let hour = 3_600_000;
    // mtime = the stamp's UTC instant + lag, for a zone of `offset` ms east.
    let written = |offset: i64, lag_ms: i64| {
        UNIX_EPOCH + Duration::from_millis(u64::try_from(stamp - offset + lag_ms).unwrap())
    };
    assert_eq!(flush_lag(stamp, written(0, 4_000)), Duration::from_secs(4));
    assert_eq!(
        flush_lag(stamp, written(5 * hour + hour / 2, 9_500)),
        Duration::from_millis(9_500)
    );
    assert_eq!(flush_lag(stamp, written(-8 * hour, 0)), Duration::ZERO);
    assert_eq!(
        flush_lag(stamp, written(12 * hour + 3 * hour / 4, 250)),
        Duration::from_millis(250)
    );
    // A stamp a little after the mtime (the mtime's milliseconds): no lag, not a huge one.
    assert_eq!(flush_lag(stamp, written(0, -3)), Duration::ZERO);
    // No zone explains the difference (a file touched or copied later): no lag.
    assert_eq!(
        flush_lag(stamp, written(0, 20 * 86_400_000)),
        Duration::ZERO
    );
    assert_eq!(flush_lag(stamp, SystemTime::UNIX_EPOCH), Duration::ZERO);
}
