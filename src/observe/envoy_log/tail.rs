//! The recent tail of the log files: what happened before the agent started following.

use super::*;

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
    /// modification time less the flush's lag ([`flush_lag`]); no time zone needed. `None`
    /// when the times are unknown.
    pub fn age_of(&self, entry: &LogEntry, now: SystemTime) -> Option<Duration> {
        let newest = self.newest_time.as_deref().and_then(parse_local_millis)?;
        let this = entry.local_millis()?;
        let modified = self.modified?;
        let since_newest = u64::try_from(newest.saturating_sub(this)).unwrap_or(0);
        let since_write = now.duration_since(modified).unwrap_or(Duration::ZERO);
        Some(since_write + Duration::from_millis(since_newest) + flush_lag(newest, modified))
    }
}

/// How long after its newest line was stamped the file was last written. Envoy buffers its log
/// and flushes it every few seconds (10 s by default), so the mtime is late by up to that, and
/// a line taken as written at the mtime looks newer than it is: newer, say, than the listener
/// update that fixed what it reports (a `doctor` run right after a fix kept the old rejection).
/// The stamps are local time of an unknown zone; the stamp minus the mtime is the zone's
/// offset less the lag, and every zone's offset is a whole number of quarter hours, so the lag
/// is the distance from that difference up to the nearest quarter hour. Zero when the
/// difference is no zone's (beyond ±14 h: a file copied or touched) or the clocks disagree.
pub fn flush_lag(newest_local_ms: i64, modified: SystemTime) -> Duration {
    const QUARTER_HOUR_MS: i64 = 15 * 60 * 1000;
    const MAX_OFFSET_MS: i64 = 14 * 3600 * 1000;
    let Ok(m) = modified.duration_since(SystemTime::UNIX_EPOCH) else {
        return Duration::ZERO;
    };
    let Ok(modified_ms) = i64::try_from(m.as_millis()) else {
        return Duration::ZERO;
    };
    let diff = newest_local_ms.saturating_sub(modified_ms);
    let offset =
        (diff.saturating_add(QUARTER_HOUR_MS / 2)).div_euclid(QUARTER_HOUR_MS) * QUARTER_HOUR_MS;
    if offset.abs() > MAX_OFFSET_MS {
        return Duration::ZERO;
    }
    u64::try_from(offset - diff).map_or(Duration::ZERO, Duration::from_millis)
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
