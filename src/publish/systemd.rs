//! What systemd and journald see of the agent (docs/contract.md#5-daemon, §6): the syslog priority of each
//! stdout line when stdout is the journal, and the `STATUS=` line of `systemctl status`.
//!
//! journald reads a leading `<N>` on a line of a service's stdout as the line's priority
//! (sd-daemon(3), `SyslogLevelPrefix=` on by default) and strips it, so
//! `journalctl -p err -u service-proxy-agent` lists exactly the error lines. The prefix is only
//! written when stdout *is* the journal: systemd then sets `JOURNAL_STREAM=<dev>:<inode>` of
//! that stream, and a program whose stdout was redirected elsewhere (a pipe, a file) inherits
//! the variable with a different stream, so the variable alone is not enough (systemd.exec(5)).

use std::os::unix::fs::MetadataExt as _;

/// The sd-daemon priority prefix for a Cloud Logging severity (syslog's eight levels, which
/// Cloud Logging's severities are named after).
pub fn priority_prefix(severity: &str) -> &'static str {
    match severity {
        "EMERGENCY" => "<0>",
        "ALERT" => "<1>",
        "CRITICAL" => "<2>",
        "ERROR" => "<3>",
        "WARNING" => "<4>",
        "NOTICE" => "<5>",
        "INFO" | "DEFAULT" => "<6>",
        _ => "<7>",
    }
}

/// Whether `JOURNAL_STREAM` (`<device>:<inode>`, decimal) names the stream with this device and
/// inode number.
pub fn names_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// Whether this process's stdout is connected to the journal.
pub fn stdout_is_journal() -> bool {
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some(var) = var.to_str() else {
        return false;
    };
    // /proc/self/fd/1 resolves to the stream itself (a socket inode), as fstat(1) would.
    match std::fs::metadata("/proc/self/fd/1") {
        Ok(m) => names_stream(var, m.dev(), m.ino()),
        Err(_) => false,
    }
}

/// The longest `STATUS=` text sent: `systemctl status` shows one line, and a VM with many
/// findings must not send kilobytes every cycle.
pub const MAX_STATUS: usize = 200;

/// The `STATUS=` line: the verdict, the findings raised (by id, at most a handful named), and
/// the interception mode, e.g. `FAILING: ENVOY_NOT_RUNNING, IPTABLES_MISSING | interception
/// enforce`.
pub fn status_line<'a>(
    health: &str,
    findings: impl IntoIterator<Item = &'a str>,
    interception: &str,
) -> String {
    let ids: Vec<&str> = findings.into_iter().collect();
    let mut s = health.to_owned();
    if !ids.is_empty() {
        s.push_str(": ");
        const NAMED: usize = 4;
        s.push_str(
            &ids.iter()
                .take(NAMED)
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
        );
        if ids.len() > NAMED {
            s.push_str(&format!(" and {} more", ids.len() - NAMED));
        }
    }
    s.push_str(" | interception ");
    s.push_str(interception);
    // One line, bounded, whatever an id contained.
    let mut s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > MAX_STATUS {
        let mut cut = MAX_STATUS;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Tells systemd the verdict (`STATUS=`); nothing happens outside systemd.
pub fn notify_status(line: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(line)]);
}

/// `RELOADING=1` before a reload re-reads the config; [`notify_reloaded`] after it.
pub fn notify_reloading() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
}

/// `READY=1`: the reload is over (whether the new config was taken or refused).
pub fn notify_reloaded() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_severity() {
        assert_eq!(priority_prefix("ERROR"), "<3>");
        assert_eq!(priority_prefix("WARNING"), "<4>");
        assert_eq!(priority_prefix("INFO"), "<6>");
        assert_eq!(priority_prefix("DEBUG"), "<7>");
        assert_eq!(priority_prefix("CRITICAL"), "<2>");
        assert_eq!(priority_prefix("whatever"), "<7>");
    }

    #[test]
    fn journal_stream_must_name_this_stream() {
        assert!(names_stream("8:12345", 8, 12345));
        assert!(!names_stream("8:12345", 8, 12346));
        assert!(!names_stream("8:12345", 9, 12345));
        assert!(!names_stream("", 8, 12345));
        assert!(!names_stream("8", 8, 12345));
        assert!(!names_stream("x:y", 8, 12345));
    }

    #[test]
    fn status_names_the_verdict_findings_and_mode() {
        assert_eq!(
            status_line("OK", [], "enforce"),
            "OK | interception enforce"
        );
        assert_eq!(
            status_line(
                "FAILING",
                ["ENVOY_NOT_RUNNING", "XDS_STREAM_DOWN"],
                "verify"
            ),
            "FAILING: ENVOY_NOT_RUNNING, XDS_STREAM_DOWN | interception verify"
        );
        let many = ["A", "B", "C", "D", "E", "F"];
        assert_eq!(
            status_line("DEGRADED", many, "off"),
            "DEGRADED: A, B, C, D and 2 more | interception off"
        );
    }

    #[test]
    fn status_is_one_bounded_line() {
        let long = "é".repeat(500);
        let s = status_line("FAILING", [long.as_str(), "X\nY"], "enforce");
        assert!(s.len() <= MAX_STATUS);
        assert!(!s.contains('\n'));
        let s = status_line("FAILING", ["X\nY"], "enforce");
        assert_eq!(s, "FAILING: X Y | interception enforce");
    }
}
