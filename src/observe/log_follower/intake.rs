//! The log intake shared by the daemon and `doctor`: the follower's start-up tail as
//! [`EntryEvent::Tail`]s, then entries as they are written.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{EntryCounters, EntryEvent, FileId, FollowEvent, Follower, FollowerConfig, HEAD_BYTES};

/// The start-up tail of one file, as it is read.
struct TailRead {
    path: PathBuf,
    entries: Vec<crate::observe::envoy_log::LogEntry>,
    /// The tail began inside a line: its rest is skipped (it belongs to an older entry).
    mid_line: bool,
    partial: bool,
    bytes: u64,
    newest_time: Option<String>,
    /// The last, unfinished line so far, for the newest header time across chunks.
    carry: Vec<u8>,
}

/// The one way the daemon and `doctor` take in Envoy's logs (issue 14): following starts
/// first and reads the tail of each file present (`cfg.initial_tail_bytes`) as its first act,
/// so no line written meanwhile is lost or seen twice. `sink` gets, in order: one
/// [`EntryEvent::Tail`] per file present at start (its entries to be aged by their own
/// times), [`EntryEvent::CaughtUp`], then the entries written since, as they come. Bytes are
/// turned into entries on the follower thread, one assembler per file (an entry never mixes
/// two files); only entries that can matter to a check are emitted.
pub fn start_intake(
    cfg: FollowerConfig,
    mut sink: impl FnMut(EntryEvent) -> bool + Send + 'static,
) -> std::io::Result<(Follower, Arc<EntryCounters>)> {
    use crate::observe::envoy_log::{
        DEFAULT_MAX_ENTRY_BYTES, EntryAssembler, EntryFilter, Tail, newest_header_time,
    };
    let counters = Arc::new(EntryCounters::default());
    let c = counters.clone();
    let mut assemblers: BTreeMap<FileId, EntryAssembler> = BTreeMap::new();
    // Until `CaughtUp`, what is read is the files' tails.
    let mut tails: Option<BTreeMap<FileId, TailRead>> = Some(BTreeMap::new());
    let mut out = Vec::new();
    let follower = Follower::spawn(cfg, move |ev| {
        let file_lines = |a: &EntryAssembler| a.lines_seen();
        match ev {
            FollowEvent::Data {
                file,
                path,
                start,
                bytes,
            } => {
                let a = assemblers.entry(file).or_insert_with(|| {
                    EntryAssembler::new(EntryFilter::Interesting, DEFAULT_MAX_ENTRY_BYTES)
                });
                if let Some(tails) = tails.as_mut() {
                    let t = tails.entry(file).or_insert_with(|| TailRead {
                        path,
                        entries: Vec::new(),
                        mid_line: start > 0,
                        partial: start > 0,
                        bytes: 0,
                        newest_time: None,
                        carry: Vec::new(),
                    });
                    let mut body: &[u8] = &bytes;
                    if t.mid_line {
                        match memchr::memchr(b'\n', body) {
                            Some(i) => {
                                body = body.get(i + 1..).unwrap_or_default();
                                t.mid_line = false;
                            }
                            None => return true,
                        }
                    }
                    t.bytes += body.len() as u64;
                    let joined = [t.carry.as_slice(), body].concat();
                    if let Some(time) = newest_header_time(&joined) {
                        t.newest_time = Some(time);
                    }
                    // A header is at a line's start: the first bytes of the unfinished line do.
                    let rest = memchr::memrchr(b'\n', &joined).map_or(0, |i| i + 1);
                    let rest = joined.get(rest..).unwrap_or_default();
                    t.carry = rest
                        .get(..rest.len().min(HEAD_BYTES))
                        .unwrap_or_default()
                        .to_vec();
                    a.feed(body, &mut t.entries);
                    return true;
                }
                let before = file_lines(a);
                a.feed(&bytes, &mut out);
                // The last line may be complete but not yet followed by the next entry's
                // header: emit it now so it is classified without waiting for more output.
                a.emit_pending(&mut out);
                c.lines
                    .fetch_add(file_lines(a).saturating_sub(before), Ordering::Relaxed);
            }
            FollowEvent::CaughtUp => {
                for (file, mut t) in tails.take().unwrap_or_default() {
                    let lines = match assemblers.get_mut(&file) {
                        Some(a) => {
                            a.emit_pending(&mut t.entries);
                            a.lines_seen()
                        }
                        None => 0,
                    };
                    // As a read of the tail dates it: the file's modification time now.
                    let modified = std::fs::symlink_metadata(&t.path)
                        .and_then(|m| m.modified())
                        .ok();
                    let tail = Tail {
                        entries: t.entries,
                        modified,
                        newest_time: t.newest_time,
                        partial: t.partial,
                        bytes_read: t.bytes,
                        lines,
                    };
                    if !sink(EntryEvent::Tail(Box::new(tail))) {
                        return false;
                    }
                }
                return sink(EntryEvent::CaughtUp);
            }
            FollowEvent::Truncated { file, .. } => {
                assemblers.remove(&file);
                if let Some(t) = tails.as_mut() {
                    t.remove(&file);
                }
            }
            FollowEvent::Closed { file, .. } => {
                if let Some(mut a) = assemblers.remove(&file) {
                    match tails.as_mut().and_then(|t| t.get_mut(&file)) {
                        Some(t) => a.finish(&mut t.entries),
                        None => {
                            let before = file_lines(&a);
                            a.finish(&mut out);
                            c.lines.fetch_add(
                                file_lines(&a).saturating_sub(before),
                                Ordering::Relaxed,
                            );
                        }
                    }
                }
            }
            FollowEvent::DirUnavailable { dir, reason } => {
                return sink(EntryEvent::DirUnavailable { dir, reason });
            }
            FollowEvent::DirAvailable { dir } => return sink(EntryEvent::DirAvailable { dir }),
            FollowEvent::NotFollowed(n) => return sink(EntryEvent::NotFollowed(n)),
        }
        for e in out.drain(..) {
            if !sink(EntryEvent::Entry(Box::new(e))) {
                return false;
            }
        }
        true
    })?;
    Ok((follower, counters))
}
