//! Text that crosses a boundary (guest attributes, log lines, metrics labels) comes from other
//! programs; these helpers keep it bounded and free of control characters.

/// Cut `s` to at most `max_bytes` bytes at a character boundary; a cut value ends in `…`.
pub fn truncate_with_ellipsis(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_owned();
    }
    const ELLIPSIS: &str = "…";
    let budget = max_bytes.saturating_sub(ELLIPSIS.len());
    let mut end = budget.min(s.len());
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + ELLIPSIS.len());
    out.push_str(s.get(..end).unwrap_or(""));
    if max_bytes >= ELLIPSIS.len() {
        out.push_str(ELLIPSIS);
    }
    out
}

/// Replace control characters (newlines included) by spaces, so a value stays one line and
/// cannot forge log lines or terminal escapes.
pub fn strip_control(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Writes a command's output to stdout. A reader that went away (`status | head -1`,
/// `status | true`) ends the process quietly with the status a death by SIGPIPE would give
/// (141), instead of a panic and an abort; any other write error ends it with status 2.
pub fn print_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        let _ = writeln!(
            std::io::stderr(),
            "service-proxy-agent: cannot write output: {e}"
        );
        std::process::exit(2);
    }
}

/// A value fit for a guest attribute: one line, no control characters, at most 1024 bytes.
pub fn attribute_value(s: &str) -> String {
    truncate_with_ellipsis(&strip_control(s), ATTRIBUTE_MAX_BYTES)
}

pub const ATTRIBUTE_MAX_BYTES: usize = 1024;

/// Bytes from another program, shown to a human: invalid UTF-8 replaced, length bounded.
pub fn lossy_bounded(bytes: &[u8], max_bytes: usize) -> String {
    truncate_with_ellipsis(&String::from_utf8_lossy(bytes), max_bytes)
}

/// Removes anything that looks like a credential (OAuth access tokens, bearer headers, JWTs,
/// private keys) before text reaches a log, an attribute or a metric. The agent never logs
/// tokens on purpose; this is the net under errors from libraries that might echo them.
pub fn redact_secrets(s: &str) -> String {
    const TRIGGERS: [&str; 7] = [
        "ya29.",
        "earer",
        "EARER",
        "access_token",
        "PRIVATE KEY",
        "private_key",
        "eyJ",
    ];
    if !TRIGGERS.iter().any(|t| s.contains(t)) {
        return s.to_owned();
    }
    static PATTERNS: std::sync::LazyLock<Option<regex_lite::Regex>> =
        std::sync::LazyLock::new(|| {
            regex_lite::Regex::new(concat!(
                r"ya29\.[0-9A-Za-z_\-.]+",
                r"|(?i:bearer)\s+[A-Za-z0-9_\-.=+/]+",
                r#"|"(?:access_token|private_key|id_token|refresh_token)"\s*:\s*"[^"]*""#,
                r"|-----BEGIN[^-]*PRIVATE KEY-----[\s\S]*?(?:-----END[^-]*PRIVATE KEY-----|$)",
                r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*",
            ))
            .ok()
        });
    match PATTERNS.as_ref() {
        Some(re) => re.replace_all(s, "[redacted]").into_owned(),
        // Cannot happen with a constant pattern; refuse to pass the text on rather than leak.
        None => "[redacted]".to_owned(),
    }
}

/// [`redact_secrets`] on every string of a JSON value (keys too), so the redaction cannot
/// break the document's syntax as redacting its serialized text could.
pub fn redact_json(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => *s = redact_secrets(s),
        Value::Array(a) => a.iter_mut().for_each(redact_json),
        Value::Object(o) => {
            let old = std::mem::take(o);
            for (k, mut val) in old {
                redact_json(&mut val);
                o.insert(redact_secrets(&k), val);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// [`redact_secrets`] line by line: a report is many lines, and a key's pattern that runs to
/// the end of its text must not swallow the lines after it.
pub fn redact_lines(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|l| match l.strip_suffix('\n') {
            Some(body) => redact_secrets(body) + "\n",
            None => redact_secrets(l),
        })
        .collect()
}

/// URL query/path encoding: everything but RFC 3986 unreserved characters is `%XX` (ETags, the
/// admin's stats filter, project ids in Google API paths).
pub fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        let cases = [
            "token ya29.a0AfH6SMB-x_y.z here",
            "Authorization: Bearer abc.def-ghi",
            r#"{"access_token":"secret","expires_in":3599}"#,
            "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
            "assertion=eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4eHh4eHgifQ.c2lnbmF0dXJl",
        ];
        for c in cases {
            let r = redact_secrets(c);
            assert!(r.contains("[redacted]"), "{c} -> {r}");
            for secret in ["a0AfH6SMB", "abc.def", "secret", "MIIE", "c2lnbmF0dXJl"] {
                assert!(!r.contains(secret), "{c} -> {r}");
            }
        }
        assert_eq!(redact_secrets("plain text"), "plain text");
        // What surrounds a credential stays: the pattern compiled (its fallback redacts all).
        assert_eq!(
            redact_secrets("token ya29.a0Af-x here, BEARER abc=/+ and eyJ"),
            "token [redacted] here, [redacted] and eyJ"
        );
        let mut v = serde_json::json!({"a": ["Bearer abc.def", {"k": "ya29.x"}], "n": 1});
        redact_json(&mut v);
        assert!(!v.to_string().contains("abc.def") && !v.to_string().contains("ya29.x"));
        assert_eq!(
            redact_lines("-----BEGIN PRIVATE KEY----- MIIE\nnext line\n"),
            "[redacted]\nnext line\n"
        );
    }

    #[test]
    fn truncates_at_char_boundary() {
        assert_eq!(truncate_with_ellipsis("abc", 3), "abc");
        let s = "é".repeat(600); // 1200 bytes
        let t = truncate_with_ellipsis(&s, 1024);
        assert!(t.len() <= 1024, "{}", t.len());
        assert!(t.ends_with('…'));
        assert!(t.trim_end_matches('…').chars().all(|c| c == 'é'));
    }

    #[test]
    fn attribute_values_are_one_bounded_line() {
        let v = attribute_value(&format!("a\nb\r\u{1b}[31m{}", "x".repeat(5000)));
        assert!(!v.contains('\n') && !v.contains('\u{1b}'));
        assert!(v.len() <= ATTRIBUTE_MAX_BYTES);
    }
}
