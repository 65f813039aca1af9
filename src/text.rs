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

/// A value fit for a guest attribute: one line, no control characters, at most 1024 bytes.
pub fn attribute_value(s: &str) -> String {
    truncate_with_ellipsis(&strip_control(s), ATTRIBUTE_MAX_BYTES)
}

pub const ATTRIBUTE_MAX_BYTES: usize = 1024;

/// Bytes from another program, shown to a human: invalid UTF-8 replaced, length bounded.
pub fn lossy_bounded(bytes: &[u8], max_bytes: usize) -> String {
    truncate_with_ellipsis(&String::from_utf8_lossy(bytes), max_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

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
