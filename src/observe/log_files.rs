//! What the log follower may open under Envoy's log directory, and how (docs/contract.md#11-trust).
//!
//! Anyone who can write the directory (the `envoy` user, or everyone where it is world-writable)
//! chooses what the names in it are. The agent runs as root with `CAP_DAC_READ_SEARCH`, so:
//! - a symbolic link is never followed: the link's target is whatever its maker chose, possibly
//!   a file only root may read (another user's 0600 file, `/etc/shadow`) or a device
//!   (`/dev/zero` never ends). Envoy writes its logs itself and has no reason to link them;
//!   a link is reported, not read;
//! - a name is opened `O_NOFOLLOW|O_NONBLOCK` (a FIFO swapped in after the listing does not
//!   block the open) and only a regular file is kept, checked on the open descriptor;
//! - at most [`MAX_FOLLOWED`] files are followed at once (the unit's `LimitNOFILE=` leaves room
//!   for the rest of the agent); the excess is reported, not opened;
//! - what cannot be followed is reported as one [`NotFollowed`] summary (a count and a few
//!   names), at most once a second, so 20,000 FIFOs cost one short line, not 20,000 long ones.

use std::collections::BTreeMap;
use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Files followed at once. Envoy writes a handful (access, error, admin logs).
pub const MAX_FOLLOWED: usize = 64;
/// Most bytes read from a file in one go when catching up with what it already holds (a file
/// seen for the first time, a copy read from an offset): a 64 GiB sparse log costs one bounded
/// read of its tail, not minutes of zeros.
pub const MAX_CATCH_UP_BYTES: u64 = 16 << 20;
/// Names given in a [`NotFollowed`] summary.
const SAMPLE: usize = 5;
/// Least time between two summaries while the set of files not followed keeps changing.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Reason given for a symbolic link.
pub const SYMLINK: &str = "a symbolic link (not followed)";
/// Reason given for a FIFO, a device, a directory.
pub const NOT_REGULAR: &str = "not a regular file";

/// Opens `path` for reading without following a final symbolic link and without blocking, and
/// keeps it only when the descriptor is a regular file. `Err` is the reason to report.
pub fn open_regular(path: &Path) -> Result<(File, Metadata), String> {
    use nix::fcntl::OFlag;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY).bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
                SYMLINK.to_owned()
            } else {
                e.to_string()
            }
        })?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(NOT_REGULAR.to_owned());
    }
    Ok((file, meta))
}

/// What `lstat` says of a name before anything is opened: `Err` is the reason not to open it
/// (a link or a special file is never opened: opening some devices has effects).
pub fn classify(meta: &Metadata) -> Result<(), &'static str> {
    let t = meta.file_type();
    if t.is_symlink() {
        Err(SYMLINK)
    } else if !t.is_file() {
        Err(NOT_REGULAR)
    } else {
        Ok(())
    }
}

/// A file's identity for the follower's memory of files it chose not to read: device, inode
/// and birth time, so a new file that reuses a forgotten file's inode number (common on ext4
/// right after an unlink) is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    /// Birth time (statx) in nanoseconds since the epoch, 0 where the file system has none.
    pub born: i128,
}

impl Identity {
    pub fn of(meta: &Metadata) -> Identity {
        let born = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            born,
        }
    }
}

/// The `*.log` files that cannot be followed now: how many, and the first few with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotFollowed {
    pub total: usize,
    pub sample: Vec<(PathBuf, String)>,
}

impl NotFollowed {
    pub fn of(all: &BTreeMap<PathBuf, String>) -> NotFollowed {
        NotFollowed {
            total: all.len(),
            sample: all
                .iter()
                .take(SAMPLE)
                .map(|(p, w)| (p.clone(), w.clone()))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// One line for the agent's log and `agent-last-failure`, bounded whatever the count.
    pub fn describe(&self) -> String {
        let list: Vec<String> = self
            .sample
            .iter()
            .map(|(p, why)| format!("{}: {why}", p.display()))
            .collect();
        let more = self.total.saturating_sub(self.sample.len());
        if self.total == 1 {
            format!("cannot follow Envoy's log {}", list.join("; "))
        } else if more == 0 {
            format!(
                "cannot follow {} of Envoy's logs: {}",
                self.total,
                list.join("; ")
            )
        } else {
            format!(
                "cannot follow {} of Envoy's logs: {} and {more} more",
                self.total,
                list.join("; ")
            )
        }
    }
}

/// Decides when a changed set of files not followed is reported: at once when the last report
/// is [`REPORT_EVERY`] old, else when it will be. Pure: time passed in.
#[derive(Debug, Default)]
pub struct Debounce {
    reported: Option<Vec<PathBuf>>,
    last: Option<Instant>,
}

impl Debounce {
    /// `Some(summary)` to report now; `None` when nothing changed or it is too soon (then
    /// [`Debounce::due`] says when to look again).
    pub fn poll(&mut self, all: &BTreeMap<PathBuf, String>, now: Instant) -> Option<NotFollowed> {
        if !self.changed(all) || self.due().is_some_and(|d| d > now) {
            return None;
        }
        self.reported = Some(all.keys().cloned().collect());
        self.last = Some(now);
        Some(NotFollowed::of(all))
    }

    /// Whether `all` differs from what was last reported.
    pub fn changed(&self, all: &BTreeMap<PathBuf, String>) -> bool {
        match &self.reported {
            Some(r) => r.len() != all.len() || r.iter().zip(all.keys()).any(|(a, b)| a != b),
            // Nothing reported yet: an empty set needs no report.
            None => !all.is_empty(),
        }
    }

    /// When a report held back may be made.
    pub fn due(&self) -> Option<Instant> {
        self.last.map(|l| l + REPORT_EVERY)
    }
}

/// Order in which names are taken up to [`MAX_FOLLOWED`]: Envoy's own names (`envoy*`) first,
/// so files an intruder adds in bulk cannot push them out; then by name.
pub fn priority(path: &Path) -> (bool, PathBuf) {
    let envoy = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("envoy"));
    (!envoy, path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeMap<PathBuf, String> {
        names
            .iter()
            .map(|n| (PathBuf::from(n), NOT_REGULAR.to_owned()))
            .collect()
    }

    #[test]
    fn a_summary_is_bounded_whatever_the_count() {
        let names: Vec<String> = (0..20_000).map(|i| format!("/l/{i:05}.log")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = NotFollowed::of(&set(&refs));
        let line = s.describe();
        assert!(line.len() < 400, "{line}");
        assert!(
            line.contains("cannot follow 20000 of Envoy's logs"),
            "{line}"
        );
        assert!(line.ends_with("and 19995 more"), "{line}");
        let one = NotFollowed::of(&set(&["/l/envoy.log"])).describe();
        assert_eq!(
            one,
            "cannot follow Envoy's log /l/envoy.log: not a regular file"
        );
    }

    #[test]
    fn reports_changes_at_most_once_a_second() {
        let t0 = Instant::now();
        let mut d = Debounce::default();
        assert_eq!(d.poll(&set(&[]), t0), None, "nothing to say");
        assert_eq!(d.poll(&set(&["a"]), t0).map(|s| s.total), Some(1));
        assert_eq!(d.poll(&set(&["a"]), t0), None, "unchanged");
        let soon = t0 + Duration::from_millis(10);
        assert_eq!(d.poll(&set(&["a", "b"]), soon), None, "too soon");
        assert_eq!(d.due(), Some(t0 + REPORT_EVERY));
        let later = t0 + REPORT_EVERY;
        assert_eq!(d.poll(&set(&["a", "b"]), later).map(|s| s.total), Some(2));
        // Back to nothing: the recovery is a report too.
        let after = later + REPORT_EVERY;
        assert_eq!(d.poll(&set(&[]), after).map(|s| s.total), Some(0));
        assert_eq!(d.poll(&set(&[]), after + REPORT_EVERY), None);
    }

    #[test]
    fn envoy_names_come_first() {
        let mut v = [
            PathBuf::from("/l/aaa.log"),
            PathBuf::from("/l/envoy.log"),
            PathBuf::from("/l/0.log"),
        ];
        v.sort_by_key(|p| priority(p));
        assert_eq!(v.first(), Some(&PathBuf::from("/l/envoy.log")));
    }

    #[test]
    fn links_fifos_and_devices_are_refused_on_the_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        // Would block forever without O_NONBLOCK (nobody writes to it).
        assert_eq!(open_regular(&fifo).unwrap_err(), NOT_REGULAR);
        let zero = dir.path().join("z.log");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert_eq!(open_regular(&zero).unwrap_err(), SYMLINK);
        let file = dir.path().join("envoy.log");
        std::fs::write(&file, "x\n").unwrap();
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(open_regular(&link).unwrap_err(), SYMLINK);
        assert_eq!(
            classify(&std::fs::symlink_metadata(&link).unwrap()),
            Err(SYMLINK)
        );
        assert!(open_regular(&file).is_ok());
    }
}
