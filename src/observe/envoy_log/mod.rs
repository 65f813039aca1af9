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

mod assembler;
mod header;
mod tail;

pub use assembler::*;
pub use header::*;
pub use tail::*;

#[cfg(test)]
mod tests;
