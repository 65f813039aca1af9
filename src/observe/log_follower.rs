//! Follows every `*.log` in Envoy's log directory and hands their new bytes to a consumer.
//!
//! inotify (through `notify`) wakes it as soon as Envoy writes; a short polling interval is the
//! fallback when inotify is unavailable or misses something (e.g. the directory was deleted and
//! re-created). Files are tracked by inode, not by name, so:
//! - rotation by rename: the old inode keeps being read to its end before it is dropped, and the
//!   new file is read from its start — no line is lost;
//! - copytruncate: a size below our offset means the file was truncated; we restart at 0 and
//!   count it. What was written after our last read and before the copy is read from the copy
//!   (`envoy.log.1`, recognised by its first bytes); only bytes written between the end of the
//!   copy and the truncation are lost, by that scheme itself (they are in neither file);
//! - a missing directory is waited for;
//! - a file renamed between a listing and its `lstat` (logrotate renames `.1` to `.2` before
//!   compressing it) is missed by that listing: it is read on by its descriptor while it has a
//!   link, and found by inode under its new name at the next listing, never read again from its
//!   start; it is closed once unlinked (after a last read) or missing from several listings;
//! - a file created and renamed away between two looks (a fast rotation under a flood) is
//!   found under its rotated name (`envoy.log.1`, `envoy.log-20261122`) and read from its start,
//!   unless its first bytes show it is a copytruncate copy of a file already read. Rotated files
//!   present when the agent starts are history and are not read;
//! - a file followed under a rotated name that is rewritten in place (copytruncate copying onto
//!   it) is a copy now: dropped, not read again;
//! - what may be opened, how, and how many is `log_files`' (docs/contract.md#11-trust): no links, no FIFOs or
//!   devices, at most `MAX_FOLLOWED` files, reads bounded by the length seen and by a tail.
//!
//! The follower runs on its own thread; it blocks (does not drop) when the consumer is slow.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use notify::Watcher;

use crate::observe::log_files::{
    self, Debounce, Identity, MAX_CATCH_UP_BYTES, MAX_FOLLOWED, NotFollowed, open_regular,
};

/// Identifies one file across renames: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// What the follower reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowEvent {
    /// New bytes of a file (`path` is the name it had when read), from offset `start`.
    Data {
        file: FileId,
        path: PathBuf,
        start: u64,
        bytes: Vec<u8>,
    },
    /// The files present at start have been read (their tails, `initial_tail_bytes`): every
    /// `Data` after this was written after that read. Sent once.
    CaughtUp,
    /// The file was truncated (copytruncate); a partial line before it is void.
    Truncated { file: FileId, path: PathBuf },
    /// The file is gone and fully read; flush any partial last line.
    Closed { file: FileId, path: PathBuf },
    /// The directory is missing or unreadable (reported once per outage).
    DirUnavailable { dir: PathBuf, reason: String },
    /// The directory is back.
    DirAvailable { dir: PathBuf },
    /// The `*.log` files that cannot be followed (permission denied, not a regular file, a
    /// link, beyond the cap), each time that set changes (at most once a second), so a log
    /// Envoy writes unseen is not silent; an empty set after a report is the recovery.
    NotFollowed(NotFollowed),
}

#[derive(Debug, Clone)]
pub struct FollowerConfig {
    pub dir: PathBuf,
    /// How often to look when inotify cannot watch the directory.
    pub poll_interval: Duration,
    /// How often to look while inotify watches it: only a safety net then, so an idle agent
    /// does not list the directory twice a second.
    pub watched_interval: Duration,
    /// How much of each file already present at start is read (its tail); files appearing
    /// later are read from the start.
    pub initial_tail_bytes: u64,
    /// Largest chunk handed over at once. The read buffer is this large for the follower's
    /// life, every page of it touched by the first large read: 64 KiB (a few reads a second
    /// at 2,000 lines/s) rather than 256 KiB, which malloc also mapped on its own (issue 13).
    pub chunk_bytes: usize,
    /// Run on the follower's thread once the tail of the files present at start has been
    /// read, before anything else is: where lines were lost before issue 14 (tests write there).
    pub after_tail: Option<TestHook>,
    /// Run on the follower's thread after each listing of the directory, before any listed
    /// name is looked at: a test renames a file there, as logrotate does between the two.
    pub after_listing: Option<TestHook>,
}

/// A step a test runs at a fixed point of the follower's work.
#[derive(Clone)]
pub struct TestHook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for TestHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestHook")
    }
}

impl FollowerConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FollowerConfig {
            dir: dir.into(),
            poll_interval: Duration::from_millis(500),
            watched_interval: Duration::from_secs(5),
            initial_tail_bytes: 256 * 1024,
            chunk_bytes: 64 * 1024,
            after_tail: None,
            after_listing: None,
        }
    }
}

/// Counters for metrics and for tests proving nothing was lost.
#[derive(Debug, Default)]
pub struct FollowerCounters {
    pub bytes: AtomicU64,
    pub truncations: AtomicU64,
    pub rotations: AtomicU64,
    pub read_errors: AtomicU64,
    pub inotify_active: AtomicBool,
    /// Listings of the directory.
    pub scans: AtomicU64,
}

struct Tracked {
    file: File,
    path: PathBuf,
    offset: u64,
    /// First bytes of the content being read (from offset 0), and of the content before the
    /// last truncation: a rotated copy is recognised by them.
    head: Vec<u8>,
    head_before_truncate: Vec<u8>,
    /// The latest copy made of this content (copytruncate's `envoy.log.1`): what was written
    /// after our last read and before the truncation is read from it.
    copy: Option<(Identity, File)>,
    /// Still has a name in the directory.
    present: bool,
    /// Listings in a row that did not find it while it still had a link somewhere: renamed
    /// (logrotate renames `.1` to `.2` between our listing and our lstat) and followed by its
    /// descriptor until a listing finds it by identity again, for at most `MAX_MISSED_SCANS`.
    missed: u32,
    /// Modification time at the last read: an equal-length rewrite changes it.
    modified: (i64, i64),
    /// Rewritten under a rotated name (copytruncate copying onto the file it renamed before):
    /// what it holds now is a copy, not to be read again.
    became_copy: bool,
}

fn modified(meta: &std::fs::Metadata) -> (i64, i64) {
    (meta.mtime(), meta.mtime_nsec())
}

/// Handle to the follower thread; dropping it stops the thread at its next wake-up.
pub struct Follower {
    stop: Arc<AtomicBool>,
    pub counters: Arc<FollowerCounters>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // The thread wakes at least every poll interval; don't wait on a blocked consumer.
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Follower {
    /// Starts following. `sink` receives events in order and returns false to stop.
    pub fn spawn(
        cfg: FollowerConfig,
        sink: impl FnMut(FollowEvent) -> bool + Send + 'static,
    ) -> std::io::Result<Follower> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(FollowerCounters::default());
        let (s, c) = (stop.clone(), counters.clone());
        let thread = std::thread::Builder::new()
            .name("log-follower".into())
            .spawn(move || run(cfg, sink, s, c))?;
        Ok(Follower {
            stop,
            counters,
            thread: Some(thread),
        })
    }
}

const HEAD_BYTES: usize = 512;

/// Listings a renamed file may be missing from before it is closed though it still has a
/// link (moved out of the directory): bounds how long it holds one of the `MAX_FOLLOWED` slots.
const MAX_MISSED_SCANS: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum NameKind {
    /// `*.log`: followed.
    Live,
    /// `*.log.1`, `*.log-20261122`: followed only when it is a file we were reading, or one
    /// we missed (created and rotated between two looks).
    Rotated,
}

fn name_kind(path: &Path) -> Option<NameKind> {
    let name = path.file_name()?.to_str()?;
    if name.ends_with(".log") {
        return Some(NameKind::Live);
    }
    const COMPRESSED: [&str; 5] = [".gz", ".bz2", ".xz", ".zst", ".zip"];
    if (name.contains(".log.") || name.contains(".log-"))
        && !COMPRESSED.iter().any(|c| name.ends_with(c))
    {
        return Some(NameKind::Rotated);
    }
    None
}

fn read_head(file: &File) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut head = vec![0u8; HEAD_BYTES];
    let n = file.read_at(&mut head, 0).unwrap_or(0);
    head.truncate(n);
    head
}

fn run(
    cfg: FollowerConfig,
    mut sink: impl FnMut(FollowEvent) -> bool,
    stop: Arc<AtomicBool>,
    counters: Arc<FollowerCounters>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher: Option<notify::RecommendedWatcher> = None;
    let mut tracked: BTreeMap<FileId, Tracked> = BTreeMap::new();
    let mut first_scan = true;
    let mut dir_down = false;
    // Rotated files not to read: history present at start, and copytruncate copies. Keyed by
    // more than the inode (reused at once after an unlink), and never consulted for a live name.
    let mut ignored: std::collections::BTreeSet<Identity> = std::collections::BTreeSet::new();
    // How many listings in a row missed each of them: one renamed between a listing and its
    // lstat (`.1` to `.2`) is still ignored under its new name at the next one, not read from
    // its start as a file created and rotated unseen (every line of it counted again).
    let mut ignored_missed: BTreeMap<Identity, u32> = BTreeMap::new();
    let mut buf = vec![0u8; cfg.chunk_bytes.max(4096)];
    // `*.log` names that cannot be followed, and when that was last reported.
    let mut not_followed: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut debounce = Debounce::default();

    // The directory inotify watches (a directory renamed away and replaced keeps the watch on
    // the old one), and whether the next round must list the directory: not when all that
    // happened since is data appended to files already followed.
    let mut watched_dir: Option<FileId> = None;
    let mut scan = true;
    let mut caught_up = false;

    while !stop.load(Ordering::Relaxed) {
        let dir_meta = std::fs::metadata(&cfg.dir).ok();
        let dir_id = dir_meta.as_ref().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        });
        if watcher.is_some() && dir_id != watched_dir {
            watcher = None;
            scan = true;
        }
        // (Re)arm inotify on the directory; it dies with the directory.
        if watcher.is_none() && dir_meta.as_ref().is_some_and(std::fs::Metadata::is_dir) {
            let tx = tx.clone();
            watcher = notify::recommended_watcher(move |e| {
                let _ = tx.send(e);
            })
            .ok()
            .and_then(|mut w| {
                w.watch(&cfg.dir, notify::RecursiveMode::NonRecursive)
                    .ok()
                    .map(|()| w)
            });
            counters
                .inotify_active
                .store(watcher.is_some(), Ordering::Relaxed);
            watched_dir = dir_id;
        }

        let listing = if scan || watcher.is_none() {
            counters.scans.fetch_add(1, Ordering::Relaxed);
            Some(std::fs::read_dir(&cfg.dir))
        } else {
            None
        };
        match listing {
            None => {}
            Some(Ok(entries)) => {
                if dir_down {
                    dir_down = false;
                    if !sink(FollowEvent::DirAvailable {
                        dir: cfg.dir.clone(),
                    }) {
                        return;
                    }
                }
                for t in tracked.values_mut() {
                    t.present = false;
                }
                let mut names: Vec<(PathBuf, NameKind)> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter_map(|p| name_kind(&p).map(|k| (p, k)))
                    .collect();
                names.sort_by_cached_key(|(p, _)| log_files::priority(p));
                if let Some(hook) = &cfg.after_listing {
                    (hook.0)();
                }
                let mut seen_ignored = std::collections::BTreeSet::new();
                not_followed.clear();
                for (path, kind) in names {
                    let Ok(meta) = std::fs::symlink_metadata(&path) else {
                        continue;
                    };
                    // A FIFO would block an open for reading, a link may lead anywhere (another
                    // user's file, /dev/zero), a directory has no lines: none is opened.
                    if let Err(why) = log_files::classify(&meta) {
                        if kind == NameKind::Live {
                            not_followed.insert(path, why.to_owned());
                        }
                        continue;
                    }
                    let id = FileId {
                        dev: meta.dev(),
                        ino: meta.ino(),
                    };
                    if let Some(t) = tracked.get_mut(&id) {
                        if t.path != path {
                            counters.rotations.fetch_add(1, Ordering::Relaxed);
                            t.path = path;
                        }
                        t.present = true;
                        continue;
                    }
                    let identity = Identity::of(&meta);
                    if kind == NameKind::Rotated {
                        if ignored.contains(&identity) {
                            seen_ignored.insert(identity);
                            continue;
                        }
                        if first_scan {
                            ignored.insert(identity);
                            seen_ignored.insert(identity);
                            continue;
                        }
                    }
                    if tracked.len() >= MAX_FOLLOWED {
                        if kind == NameKind::Live {
                            not_followed.insert(
                                path,
                                format!("beyond the {MAX_FOLLOWED} files followed at once"),
                            );
                        }
                        continue;
                    }
                    let (file, meta) = match open_regular(&path) {
                        Ok(f) => f,
                        Err(why) => {
                            counters.read_errors.fetch_add(1, Ordering::Relaxed);
                            if kind == NameKind::Live {
                                not_followed.insert(path, why);
                            }
                            continue;
                        }
                    };
                    if (meta.dev(), meta.ino()) != (id.dev, id.ino) {
                        // Replaced between the listing and the open: judged at the next look.
                        continue;
                    }
                    let head = read_head(&file);
                    if kind == NameKind::Rotated {
                        // A copy being written may still be empty: judge it once it is not.
                        if head.is_empty() {
                            continue;
                        }
                        // A copy of what a tracked file holds (its first bytes, or their
                        // beginning while the copy is being written) is not read as a new file.
                        let copy_of = tracked
                            .iter()
                            .find(|(_, t)| {
                                same_start(&t.head, &head) || same_start(&read_head(&t.file), &head)
                            })
                            .map(|(tid, _)| *tid);
                        let old_copy = tracked
                            .values()
                            .any(|t| same_start(&t.head_before_truncate, &head));
                        if copy_of.is_some() || old_copy {
                            if let Some(t) = copy_of.and_then(|tid| tracked.get_mut(&tid)) {
                                t.copy = Some((identity, file));
                            }
                            ignored.insert(identity);
                            seen_ignored.insert(identity);
                            continue;
                        }
                        counters.rotations.fetch_add(1, Ordering::Relaxed);
                    }
                    // A file seen for the first time is read from its start, but never more
                    // than a bounded tail of it (a 64 GiB sparse file is not read through).
                    let offset = if first_scan {
                        meta.len().saturating_sub(cfg.initial_tail_bytes)
                    } else {
                        meta.len().saturating_sub(MAX_CATCH_UP_BYTES)
                    };
                    tracked.insert(
                        id,
                        Tracked {
                            file,
                            path,
                            offset,
                            head,
                            head_before_truncate: Vec::new(),
                            copy: None,
                            present: true,
                            missed: 0,
                            modified: modified(&meta),
                            became_copy: false,
                        },
                    );
                }
                for t in tracked.values_mut() {
                    t.missed = if t.present {
                        0
                    } else {
                        t.missed.saturating_add(1)
                    };
                }
                ignored.retain(|id| {
                    if seen_ignored.contains(id) {
                        ignored_missed.remove(id);
                        return true;
                    }
                    let missed = ignored_missed.entry(*id).or_insert(0);
                    *missed = missed.saturating_add(1);
                    *missed <= MAX_MISSED_SCANS
                });
                ignored_missed.retain(|id, _| ignored.contains(id));
                for t in tracked.values_mut() {
                    if t.copy
                        .as_ref()
                        .is_some_and(|(cid, _)| !seen_ignored.contains(cid))
                    {
                        t.copy = None;
                    }
                }
                first_scan = false;
            }
            Some(Err(e)) => {
                if !dir_down {
                    dir_down = true;
                    watcher = None;
                    counters.inotify_active.store(false, Ordering::Relaxed);
                    if !sink(FollowEvent::DirUnavailable {
                        dir: cfg.dir.clone(),
                        reason: e.to_string(),
                    }) {
                        return;
                    }
                }
                // Files deleted with their directory are still readable through our handles.
                for t in tracked.values_mut() {
                    t.present = false;
                    t.missed = u32::MAX;
                }
                first_scan = false;
            }
        }

        // Read every tracked file to its end; drop those that are gone and drained.
        let mut closed = Vec::new();
        for (id, t) in tracked.iter_mut() {
            // Judged before the last read: what a writer adds before the last link goes is read.
            let gone = !t.present && !renamed_away(t);
            if !drain(*id, t, &cfg.dir, &mut buf, &mut sink, &counters) {
                return;
            }
            if t.became_copy || gone {
                closed.push(*id);
            }
        }
        for id in closed {
            if let Some(t) = tracked.remove(&id) {
                if t.became_copy
                    && let Ok(m) = t.file.metadata()
                {
                    ignored.insert(Identity::of(&m));
                }
                if !sink(FollowEvent::Closed {
                    file: id,
                    path: t.path,
                }) {
                    return;
                }
            }
        }
        if let Some(summary) = debounce.poll(&not_followed, std::time::Instant::now())
            && !sink(FollowEvent::NotFollowed(summary))
        {
            return;
        }
        if !caught_up {
            caught_up = true;
            if let Some(hook) = &cfg.after_tail {
                (hook.0)();
            }
            if !sink(FollowEvent::CaughtUp) {
                return;
            }
        }

        // Sleep until inotify says something changed, or the poll interval passes. Our own
        // reads and directory listings raise access/open events: they must not wake us, or we
        // would spin.
        let interval = if watcher.is_some() {
            cfg.watched_interval
        } else {
            cfg.poll_interval
        };
        let mut deadline = std::time::Instant::now() + interval;
        // A change of the files not followed held back by the debounce is reported when due.
        if debounce.changed(&not_followed)
            && let Some(due) = debounce.due()
        {
            deadline = deadline.min(due);
        }
        scan = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(event) => {
                    if let Some(list) = wake_for(&event, &tracked) {
                        break list;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break true,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(left);
                    break true;
                }
            }
        };
        // Coalesce a burst of events into one round.
        while let Ok(event) = rx.try_recv() {
            scan |= wake_for(&event, &tracked).unwrap_or(false);
        }
    }
}

/// Whether a file a listing missed is to be followed on by its descriptor: it still has a link
/// (renamed, to be found by identity at the next listing) and has not been missing for long.
/// Closing it would read it again from its start when it is found under its new name; a file
/// with no link left (removed, or compressed and unlinked) has just been read to its end.
fn renamed_away(t: &Tracked) -> bool {
    t.missed <= MAX_MISSED_SCANS && t.file.metadata().is_ok_and(|m| m.nlink() > 0)
}

/// What an inotify event asks of the follower: `None`, nothing (our own opens); `Some(false)`,
/// a read of the files followed (data appended to them); `Some(true)`, a listing of the
/// directory too (anything else, errors and overflows included).
fn wake_for(
    event: &notify::Result<notify::Event>,
    tracked: &BTreeMap<FileId, Tracked>,
) -> Option<bool> {
    use notify::event::{EventKind, ModifyKind};
    let Ok(event) = event else {
        return Some(true);
    };
    if event.need_rescan() {
        return Some(true);
    }
    if !is_change(&event.kind) {
        return None;
    }
    let appends_only = matches!(event.kind, EventKind::Modify(ModifyKind::Data(_)))
        && !event.paths.is_empty()
        && event
            .paths
            .iter()
            .all(|p| tracked.values().any(|t| &t.path == p));
    Some(!appends_only)
}

/// Events that can mean new bytes or a new, renamed or removed file.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    matches!(
        kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
    )
}

/// Reads `t` from its offset to the current end. Returns false when the sink asked to stop.
fn drain(
    id: FileId,
    t: &mut Tracked,
    dir: &Path,
    buf: &mut [u8],
    sink: &mut impl FnMut(FollowEvent) -> bool,
    counters: &FollowerCounters,
) -> bool {
    let (len, changed) = match t.file.metadata() {
        Ok(m) => (m.len(), modified(&m)),
        Err(_) => {
            counters.read_errors.fetch_add(1, Ordering::Relaxed);
            return true;
        }
    };
    // Truncated: shorter than what we read, or (truncated and rewritten past our offset, or to
    // the very same length, before we looked) different first bytes.
    let rewritten = || {
        let now = read_head(&t.file);
        let k = now.len().min(t.head.len());
        t.offset > 0 && k > 0 && now.get(..k) != t.head.get(..k)
    };
    let written = len > t.offset || (len == t.offset && changed != t.modified);
    t.modified = changed;
    if len < t.offset || (written && rewritten()) {
        if name_kind(&t.path) == Some(NameKind::Rotated) {
            // A file renamed away, then overwritten in place (copytruncate copying onto it):
            // it holds a copy of the live file now, read there. Reading it again would count
            // every line twice.
            t.became_copy = true;
            return true;
        }
        counters.truncations.fetch_add(1, Ordering::Relaxed);
        // copytruncate: the lines written between our last read and the copy are in the copy.
        // Only those written between the copy and the truncation are lost (by that scheme).
        // The copy was seen at a scan, or (made and the original truncated since the last
        // scan, or still empty then) is looked for now.
        let copy = t
            .copy
            .take()
            .map(|(_, f)| f)
            .filter(|c| same_start(&read_head(c), &t.head))
            .or_else(|| find_copy(dir, &t.head));
        if let Some(copy) = copy
            && !read_to_end_from(copy, t.offset, id, &t.path, buf, sink, counters)
        {
            return false;
        }
        t.offset = 0;
        t.head_before_truncate = std::mem::take(&mut t.head);
        if !sink(FollowEvent::Truncated {
            file: id,
            path: t.path.clone(),
        }) {
            return false;
        }
    }
    // Far behind (a sparse jump of gigabytes): only a bounded tail is worth reading.
    t.offset = t.offset.max(len.saturating_sub(MAX_CATCH_UP_BYTES));
    if t.file.seek(SeekFrom::Start(t.offset)).is_err() {
        counters.read_errors.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    // Up to the length seen now: a file that grows as fast as it is read ends this round.
    let mut left = len.saturating_sub(t.offset);
    loop {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let Some(chunk) = buf.get_mut(..want) else {
            return true;
        };
        match t.file.read(chunk) {
            Ok(0) => return true,
            Ok(n) => {
                if t.offset == 0 || t.head.is_empty() {
                    t.head = read_head(&t.file);
                }
                let start = t.offset;
                t.offset += n as u64;
                left = left.saturating_sub(n as u64);
                counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
                let bytes = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
                if !sink(FollowEvent::Data {
                    file: id,
                    path: t.path.clone(),
                    start,
                    bytes,
                }) {
                    return false;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                counters.read_errors.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
    }
}

/// Whether two first-bytes samples agree on their common length (a copy being written has
/// only the beginning of the original's).
fn same_start(a: &[u8], b: &[u8]) -> bool {
    let k = a.len().min(b.len());
    k > 0 && a.get(..k) == b.get(..k)
}

/// A rotated-named file in `dir` whose first bytes are `head`'s: the copy copytruncate made of
/// the content that started so.
fn find_copy(dir: &Path, head: &[u8]) -> Option<File> {
    if head.is_empty() {
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| name_kind(p) == Some(NameKind::Rotated))
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| log_files::classify(&m).is_ok()))
        .filter_map(|p| open_regular(&p).ok())
        .map(|(f, _)| f)
        .find(|f| same_start(&read_head(f), head))
}

/// Hands over `file`'s bytes from `offset` to its length now (at most a bounded tail) as Data
/// of `id`. False: stop.
fn read_to_end_from(
    file: File,
    offset: u64,
    id: FileId,
    path: &Path,
    buf: &mut [u8],
    sink: &mut impl FnMut(FollowEvent) -> bool,
    counters: &FollowerCounters,
) -> bool {
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        counters.read_errors.fetch_add(1, Ordering::Relaxed);
        return true;
    };
    let offset = offset.max(len.saturating_sub(MAX_CATCH_UP_BYTES));
    let mut file = file.take(len.saturating_sub(offset));
    let mut start = offset;
    if file.get_mut().seek(SeekFrom::Start(offset)).is_err() {
        counters.read_errors.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    loop {
        match file.read(buf) {
            Ok(0) => return true,
            Ok(n) => {
                counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
                let bytes = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
                if !sink(FollowEvent::Data {
                    file: id,
                    path: path.to_path_buf(),
                    start,
                    bytes,
                }) {
                    return false;
                }
                start += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                counters.read_errors.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
    }
}

/// What the entry pipeline reports: assembled, prefiltered Envoy log entries and the state of
/// the directory.
#[derive(Debug, Clone)]
pub enum EntryEvent {
    /// What one file held at start (its tail), to be aged by the entries' own times.
    Tail(Box<crate::observe::envoy_log::Tail>),
    /// Every file present at start has been read to its end: what follows is new.
    CaughtUp,
    Entry(Box<crate::observe::envoy_log::LogEntry>),
    DirUnavailable {
        dir: PathBuf,
        reason: String,
    },
    DirAvailable {
        dir: PathBuf,
    },
    NotFollowed(NotFollowed),
}

/// Counts for proving nothing is lost: lines seen across every file.
#[derive(Debug, Default)]
pub struct EntryCounters {
    pub lines: AtomicU64,
}

mod intake;
pub use intake::start_intake;

#[cfg(test)]
mod tests;
