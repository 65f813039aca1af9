use super::*;
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

/// Collects Data bytes per file id and counts newline-terminated lines.
fn start(dir: &Path) -> (Follower, Arc<Mutex<Vec<FollowEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let mut cfg = FollowerConfig::new(dir);
    cfg.poll_interval = Duration::from_millis(100);
    let f = Follower::spawn(cfg, move |ev| {
        e.lock().unwrap().push(ev);
        true
    })
    .unwrap();
    (f, events)
}

fn text(events: &Arc<Mutex<Vec<FollowEvent>>>) -> String {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            FollowEvent::Data { bytes, .. } => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        })
        .collect()
}

fn wait(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "not reached: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn follows_appends_rename_rotation_and_copytruncate() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("envoy.log");
    std::fs::write(&log, "old line\n").unwrap();
    let (_f, events) = start(dir.path());
    wait("old line", || text(&events).contains("old line"));

    let mut w = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    w.write_all(b"line 1\npartial").unwrap();
    wait("partial", || text(&events).contains("partial"));
    w.write_all(b" end\n").unwrap();
    // Rename rotation: the writer keeps writing to the old inode for a moment.
    std::fs::rename(&log, dir.path().join("envoy.log.1")).unwrap();
    w.write_all(b"late line to old file\n").unwrap();
    drop(w);
    std::fs::write(&log, "first of new file\n").unwrap();
    wait("first of new file", || {
        text(&events).contains("first of new file")
    });
    wait("late line to old file", || {
        text(&events).contains("late line to old file")
    });

    // copytruncate
    let mut w = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    w.write_all(b"before truncate\n").unwrap();
    wait("before truncate", || {
        text(&events).contains("before truncate")
    });
    w.set_len(0).unwrap();
    let mut w = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    w.write_all(b"after\n").unwrap();
    wait("after\\n", || text(&events).contains("after\n"));
    let truncated = events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, FollowEvent::Truncated { .. }));
    assert!(truncated);
    let all = text(&events);
    assert_eq!(
        all.matches("line 1\n").count(),
        1,
        "no duplicate reads: {all}"
    );
}

#[test]
fn waits_for_a_missing_directory_and_survives_its_recreation() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("envoy");
    let (_f, events) = start(&dir);
    wait("dir unavailable", || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, FollowEvent::DirUnavailable { .. }))
    });
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("envoy.err.log"), "hello\n").unwrap();
    wait("hello", || text(&events).contains("hello"));
    std::fs::remove_dir_all(&dir).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("envoy.err.log"), "again\n").unwrap();
    wait("again", || text(&events).contains("again"));
    // Files that are not *.log are ignored.
    std::fs::write(dir.join("notes.txt"), "ignored\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!text(&events).contains("ignored"));
}

#[test]
fn a_file_renamed_away_before_it_was_seen_is_still_read_and_copies_are_not() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("envoy.log.7"), "history\n").unwrap();
    // Started with a long poll interval and no inotify wake-up for these files yet.
    let (_f, events) = start(dir.path());
    std::thread::sleep(Duration::from_millis(200));
    // Created and renamed away in one go.
    let log = dir.path().join("envoy.log");
    std::fs::write(&log, "[t] missed line\n").unwrap();
    std::fs::rename(&log, dir.path().join("envoy.log.1")).unwrap();
    wait("missed line", || text(&events).contains("missed line"));
    // copytruncate: a copy of the live file, then the truncation.
    std::fs::write(&log, "[t] live line\n").unwrap();
    wait("live line", || text(&events).contains("live line"));
    std::fs::copy(&log, dir.path().join("envoy.log-20261122")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    std::fs::write(&log, "[t] after copy\n").unwrap();
    wait("after copy", || text(&events).contains("after copy"));
    std::thread::sleep(Duration::from_millis(300));
    let all = text(&events);
    assert_eq!(all.matches("live line").count(), 1, "{all}");
    assert!(!all.contains("history"), "{all}");
    // Compressed rotations are never read.
    std::fs::write(dir.path().join("envoy.log.2.gz"), "gz\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!text(&events).contains("gz"));
}

#[test]
fn an_idle_watched_directory_is_not_listed_and_appends_are_read_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("envoy.log");
    std::fs::write(&log, "").unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let mut cfg = FollowerConfig::new(dir.path());
    cfg.poll_interval = Duration::from_millis(50);
    cfg.watched_interval = Duration::from_secs(30);
    let f = Follower::spawn(cfg, move |ev| {
        e.lock().unwrap().push(ev);
        true
    })
    .unwrap();
    let counters = f.counters.clone();
    wait("inotify", || {
        counters.inotify_active.load(Ordering::Relaxed)
    });
    std::thread::sleep(Duration::from_millis(300));
    let idle = counters.scans.load(Ordering::Relaxed);
    // Appends to the followed file: read without listing the directory.
    for i in 0..20 {
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(format!("[t] line {i}\n").as_bytes())
            .unwrap();
        wait("the line", || {
            text(&events).contains(&format!("line {i}\n"))
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(idle <= 2, "{idle} listings while idle");
    assert!(
        counters.scans.load(Ordering::Relaxed) <= idle + 1,
        "appends listed the directory: {} listings",
        counters.scans.load(Ordering::Relaxed)
    );
    // A new file is a change of the directory: listed and read at once.
    std::fs::write(dir.path().join("other.log"), "[t] new file\n").unwrap();
    wait("new file", || text(&events).contains("new file"));
    // The directory renamed away and replaced: the watch moves to the new one.
    let moved = dir.path().with_extension("moved");
    std::fs::rename(dir.path(), &moved).unwrap();
    std::fs::create_dir(dir.path()).unwrap();
    std::fs::write(dir.path().join("envoy.log"), "[t] in the new directory\n").unwrap();
    wait("new directory", || {
        text(&events).contains("in the new directory")
    });
    std::fs::remove_dir_all(&moved).unwrap();
}

#[test]
fn copytruncate_lines_unread_at_the_copy_are_read_from_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("envoy.log");
    std::fs::write(&log, "").unwrap();
    // Changes made through hard links outside the directory raise no inotify event in it,
    // and the poll interval is long: the follower does not look between the append, the
    // copy and the truncation, as when logrotate is faster than a scan.
    let outside = tempfile::tempdir_in(dir.path().parent().unwrap()).unwrap();
    let alias = outside.path().join("alias");
    std::fs::hard_link(&log, &alias).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let mut cfg = FollowerConfig::new(dir.path());
    cfg.poll_interval = Duration::from_secs(30);
    let _f = Follower::spawn(cfg, move |ev| {
        e.lock().unwrap().push(ev);
        true
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"[t] one\n")
        .unwrap();
    wait("one", || text(&events).contains("one"));
    let mut w = std::fs::OpenOptions::new()
        .append(true)
        .open(&alias)
        .unwrap();
    w.write_all(b"[t] two\n").unwrap();
    let copy = outside.path().join("copy");
    std::fs::copy(&alias, &copy).unwrap();
    w.set_len(0).unwrap();
    w.write_all(b"[t] three after the truncation\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !text(&events).contains("two"),
        "the follower looked too early"
    );
    // The copy appears under its rotated name: that wakes the follower.
    std::fs::hard_link(&copy, dir.path().join("envoy.log.1")).unwrap();
    wait("three", || text(&events).contains("three"));
    std::thread::sleep(Duration::from_millis(200));
    let all = text(&events);
    assert_eq!(all.matches("[t] one").count(), 1, "{all}");
    assert_eq!(all.matches("[t] two").count(), 1, "{all}");
}

#[test]
fn a_log_that_cannot_be_read_is_reported_once_and_its_recovery_too() {
    let dir = tempfile::tempdir().unwrap();
    // A directory named like a log: never opened, reported.
    std::fs::create_dir(dir.path().join("envoy.log")).unwrap();
    let (_f, events) = start(dir.path());
    let unreadable = |events: &Arc<Mutex<Vec<FollowEvent>>>| {
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, FollowEvent::NotFollowed(n) if n.total == 1))
            .count()
    };
    wait("reported", || unreadable(&events) == 1);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(unreadable(&events), 1, "reported once");
    std::fs::remove_dir(dir.path().join("envoy.log")).unwrap();
    std::fs::write(dir.path().join("envoy.log"), "[t] fine\n").unwrap();
    wait("readable again", || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, FollowEvent::NotFollowed(n) if n.is_empty()))
    });
    wait("fine", || text(&events).contains("fine"));
}

#[test]
fn only_the_tail_of_a_big_existing_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("envoy.log");
    std::fs::write(&log, vec![b'x'; 1024 * 1024]).unwrap();
    let (f, events) = start(dir.path());
    wait("bytes", || f.counters.bytes.load(Ordering::Relaxed) > 0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(f.counters.bytes.load(Ordering::Relaxed), 256 * 1024);
    drop(events);
}

/// Starts the intake on `dir` and collects its events.
fn intake(dir: &Path, after_tail: impl Fn() + Send + Sync + 'static) -> IntakeRun {
    intake_with_tail(dir, 256 * 1024, after_tail)
}

fn intake_with_tail(
    dir: &Path,
    tail: u64,
    after_tail: impl Fn() + Send + Sync + 'static,
) -> IntakeRun {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let mut cfg = FollowerConfig::new(dir);
    cfg.initial_tail_bytes = tail;
    cfg.poll_interval = Duration::from_millis(100);
    cfg.after_tail = Some(TestHook(Arc::new(after_tail)));
    let (follower, _) = start_intake(cfg, move |ev| {
        e.lock().unwrap().push(ev);
        true
    })
    .unwrap();
    IntakeRun {
        _follower: follower,
        events,
    }
}

struct IntakeRun {
    _follower: Follower,
    events: Arc<Mutex<Vec<EntryEvent>>>,
}

impl IntakeRun {
    /// The messages taken in, in order: `tail:` for a start-up tail's, `new:` for later ones.
    fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ev in self.events.lock().unwrap().iter() {
            match ev {
                EntryEvent::Tail(t) => {
                    out.extend(t.entries.iter().map(|e| format!("tail:{}", e.message)));
                }
                EntryEvent::Entry(e) => out.push(format!("new:{}", e.message)),
                EntryEvent::CaughtUp => out.push("caught-up".into()),
                _ => {}
            }
        }
        out
    }
}

fn rejected(n: &str) -> String {
    format!(
        "[2026-12-07 02:00:00.000][1][warning][config] [x.cc:1] gRPC config for \
         type.googleapis.com/envoy.config.listener.v3.Listener rejected: {n}\n"
    )
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn a_line_written_just_after_the_tail_is_read_is_taken_in_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("envoy.log");
    std::fs::write(&log, rejected("before start")).unwrap();
    let l = log.clone();
    let run = intake(dir.path(), move || append(&l, &rejected("in the gap")));
    wait("caught up", || run.messages().contains(&"caught-up".into()));
    append(&log, &rejected("after"));
    let has = |m: &[String], what: &str| m.iter().any(|x| x.ends_with(what));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !has(&run.messages(), "rejected: after") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let m = run.messages();
    let once = |what: &str| m.iter().filter(|x| x.ends_with(what)).count();
    assert_eq!(once("rejected: before start"), 1, "{m:#?}");
    assert_eq!(once("rejected: in the gap"), 1, "{m:#?}");
    assert_eq!(once("rejected: after"), 1, "{m:#?}");
    let at = |what: &str| m.iter().position(|x| x.ends_with(what));
    assert!(at("before start") < at("in the gap"), "{m:#?}");
    assert!(at("in the gap") < at("rejected: after"), "{m:#?}");
    assert_eq!(
        m.first().map(String::as_str),
        Some(
            "tail:gRPC config for type.googleapis.com/envoy.config.listener.v3.Listener rejected: before start"
        ),
        "{m:#?}"
    );
}

#[test]
fn a_tail_that_starts_inside_a_line_skips_it_and_keeps_the_times() {
    let dir = tempfile::tempdir().unwrap();
    let whole = rejected("whole");
    std::fs::write(
        dir.path().join("envoy.log"),
        format!("{}{whole}", rejected("cut")),
    )
    .unwrap();
    let run = intake_with_tail(dir.path(), whole.len() as u64 + 10, || {});
    wait("caught up", || run.messages().contains(&"caught-up".into()));
    let events = run.events.lock().unwrap();
    let Some(EntryEvent::Tail(t)) = events.first() else {
        panic!("{events:#?}");
    };
    let messages: Vec<&str> = t.entries.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0].ends_with("rejected: whole"), "{messages:?}");
    assert!(t.partial);
    assert_eq!(t.bytes_read, whole.len() as u64);
    assert_eq!(t.newest_time.as_deref(), Some("2026-12-07 02:00:00.000"));
    assert!(t.modified.is_some());
}

/// logrotate renames `envoy.log.1` to `envoy.log.2` before compressing it: a scan that listed
/// the `.1` name finds nothing there. The file must be read on from where it was (by its
/// descriptor), not closed and read again from its start under `.2` (every line twice), nor
/// dropped (lines the writer adds before it reopens its log lost).
#[test]
fn a_file_renamed_between_the_listing_and_its_lstat_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("envoy.log");
    let one = dir.path().join("envoy.log.1");
    let two = dir.path().join("envoy.log.2");
    std::fs::write(&log, "").unwrap();
    // The hook renames `.1` to `.2` once, when armed, right after a listing that saw `.1`.
    let armed = Arc::new(AtomicBool::new(false));
    let fired_at = Arc::new(AtomicU64::new(0));
    let counters: Arc<Mutex<Option<Arc<FollowerCounters>>>> = Arc::new(Mutex::new(None));
    let (a, at, c, from, to) = (
        armed.clone(),
        fired_at.clone(),
        counters.clone(),
        one.clone(),
        two.clone(),
    );
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let mut cfg = FollowerConfig::new(dir.path());
    cfg.poll_interval = Duration::from_millis(100);
    cfg.after_listing = Some(TestHook(Arc::new(move || {
        if from.exists() && a.swap(false, Ordering::SeqCst) {
            std::fs::rename(&from, &to).unwrap();
            let scans = c
                .lock()
                .unwrap()
                .as_ref()
                .unwrap()
                .scans
                .load(Ordering::SeqCst);
            at.store(scans, Ordering::SeqCst);
        }
    })));
    let f = Follower::spawn(cfg, move |ev| {
        e.lock().unwrap().push(ev);
        true
    })
    .unwrap();
    *counters.lock().unwrap() = Some(f.counters.clone());

    // The writer's file, rotated to `.1` while it keeps writing to it.
    let mut w = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    w.write_all(b"line 1\n").unwrap();
    wait("line 1", || text(&events).contains("line 1\n"));
    std::fs::rename(&log, &one).unwrap();
    std::fs::write(&log, "").unwrap();
    w.write_all(b"line 2\n").unwrap();
    wait("line 2", || text(&events).contains("line 2\n"));

    // The next listing sees `.1`; the hook renames it to `.2` before it is looked at, and the
    // writer goes on writing to it (it has not reopened its log yet).
    armed.store(true, Ordering::SeqCst);
    // A new file makes the follower list the directory at once (an append would not).
    std::fs::write(dir.path().join("access.log"), "new 1\n").unwrap();
    wait("the rename between listing and lstat", || {
        fired_at.load(Ordering::SeqCst) > 0
    });
    w.write_all(b"line 3\n").unwrap();
    drop(w);
    let fired = fired_at.load(Ordering::SeqCst);
    wait("a later listing", || {
        f.counters.scans.load(Ordering::SeqCst) > fired
    });
    // A file created after that listing is read at the round of that listing or later; one
    // created after it was read, at a later round still: the round that found `.2` is over.
    std::fs::write(dir.path().join("other.log"), "marker 1\n").unwrap();
    wait("marker 1", || text(&events).contains("marker 1\n"));
    std::fs::write(dir.path().join("more.log"), "marker 2\n").unwrap();
    wait("marker 2", || text(&events).contains("marker 2\n"));
    wait("line 3", || text(&events).contains("line 3\n"));

    let all = text(&events);
    let lines = [
        "line 1\n",
        "line 2\n",
        "line 3\n",
        "new 1\n",
        "marker 1\n",
        "marker 2\n",
    ];
    for line in lines {
        assert_eq!(all.matches(line).count(), 1, "{line:?} in {all:?}");
    }
}

/// A file followed by its descriptor after it left the directory is not held for ever: with no
/// link left it is closed at once; moved elsewhere, after `MAX_MISSED_SCANS` listings.
#[test]
fn a_file_gone_from_the_directory_is_closed_when_unlinked_or_after_a_bound() {
    let dir = tempfile::tempdir().unwrap();
    let away = tempfile::tempdir_in(dir.path().parent().unwrap()).unwrap();
    let (moved, removed) = (dir.path().join("moved.log"), dir.path().join("removed.log"));
    std::fs::write(&moved, "moved\n").unwrap();
    std::fs::write(&removed, "removed\n").unwrap();
    let (f, events) = start(dir.path());
    wait("both files", || {
        let t = text(&events);
        t.contains("moved\n") && t.contains("removed\n")
    });
    let closed = |name: &str| {
        events.lock().unwrap().iter().any(
            |e| matches!(e, FollowEvent::Closed { path, .. } if path.file_name().unwrap() == name),
        )
    };
    std::fs::rename(&moved, away.path().join("moved.log")).unwrap();
    std::fs::remove_file(&removed).unwrap();
    wait("the unlinked file closed", || closed("removed.log"));
    // Each new file is one more listing; the moved file is closed once it missed enough.
    let mut listings = 0;
    while !closed("moved.log") {
        assert!(listings <= MAX_MISSED_SCANS + 2, "moved.log still followed");
        let before = f.counters.scans.load(Ordering::SeqCst);
        std::fs::write(dir.path().join(format!("n{listings}.log")), "x\n").unwrap();
        wait("a listing", || {
            f.counters.scans.load(Ordering::SeqCst) > before
        });
        listings += 1;
    }
    assert!(
        listings >= MAX_MISSED_SCANS - 1,
        "closed after {listings} listings"
    );
}

/// A rotated file present at start is history, not read; renamed between a listing and its
/// lstat (logrotate's `.1` to `.2`), it is still history under its new name, not a file
/// created and rotated unseen to be read from its start (after a reload restarted the
/// follower, the tier counted such a file's lines once more).
#[test]
fn history_renamed_between_the_listing_and_its_lstat_is_still_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (
        dir.path().join("envoy.log.1"),
        dir.path().join("envoy.log.2"),
    );
    std::fs::write(dir.path().join("envoy.log"), "live\n").unwrap();
    std::fs::write(&one, "history\n").unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let fired = Arc::new(AtomicBool::new(false));
    let (a, fd, from, to) = (armed.clone(), fired.clone(), one.clone(), two.clone());
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let mut cfg = FollowerConfig::new(dir.path());
    cfg.poll_interval = Duration::from_millis(100);
    cfg.after_listing = Some(TestHook(Arc::new(move || {
        if from.exists() && a.swap(false, Ordering::SeqCst) {
            std::fs::rename(&from, &to).unwrap();
            fd.store(true, Ordering::SeqCst);
        }
    })));
    let _f = Follower::spawn(cfg, move |ev| {
        e.lock().unwrap().push(ev);
        true
    })
    .unwrap();
    wait("caught up", || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, FollowEvent::CaughtUp))
    });
    armed.store(true, Ordering::SeqCst);
    std::fs::write(dir.path().join("access.log"), "new 1\n").unwrap();
    wait("the rename between listing and lstat", || {
        fired.load(Ordering::SeqCst)
    });
    // Two files made one after the other: the second is read at a round after the one whose
    // listing found `.2`.
    std::fs::write(dir.path().join("other.log"), "marker 1\n").unwrap();
    wait("marker 1", || text(&events).contains("marker 1\n"));
    std::fs::write(dir.path().join("more.log"), "marker 2\n").unwrap();
    wait("marker 2", || text(&events).contains("marker 2\n"));
    let all = text(&events);
    assert!(!all.contains("history"), "history read: {all:?}");
    assert_eq!(all.matches("live\n").count(), 1, "{all:?}");
}

/// logrotate's `create` + `delaycompress` rotation (`.1` renamed `.2`, the live file renamed
/// `.1`, a new one created, the writer told to reopen, `.2` compressed to `.2.gz` and removed),
/// forced 20 times while a writer appends: the intake's line counter grows by exactly the
/// lines written (issue 13; the tier runs the same with real logrotate and systemd).
#[test]
fn rotations_with_create_and_delaycompress_under_a_writer_count_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = |suffix: &str| dir.path().join(format!("envoy.err.log{suffix}"));
    let log = path("");
    std::fs::write(&log, "").unwrap();
    let caught_up = Arc::new(AtomicBool::new(false));
    let cu = caught_up.clone();
    let mut cfg = FollowerConfig::new(dir.path());
    cfg.poll_interval = Duration::from_millis(100);
    let (follower, counters) = start_intake(cfg, move |ev| {
        if matches!(ev, EntryEvent::CaughtUp) {
            cu.store(true, Ordering::SeqCst);
        }
        true
    })
    .unwrap();
    // Lines read before CaughtUp are the start-up tail, not counted: the writer starts after.
    wait("caught up", || caught_up.load(Ordering::SeqCst));

    const LINES: u64 = 6_000;
    let reopen = Arc::new(AtomicBool::new(false));
    let (r, l) = (reopen.clone(), log.clone());
    let writer = std::thread::spawn(move || {
        let mut w = std::fs::OpenOptions::new().append(true).open(&l).unwrap();
        for i in 1..=LINES {
            if r.swap(false, Ordering::SeqCst) {
                w = std::fs::OpenOptions::new().append(true).open(&l).unwrap();
            }
            let line = format!("[2026-12-07 05:00:00.000][7][info][main] [writer.cc:1] line {i}\n");
            w.write_all(line.as_bytes()).unwrap();
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(40));
        for i in (2..5).rev() {
            let _ = std::fs::rename(path(&format!(".{i}.gz")), path(&format!(".{}.gz", i + 1)));
        }
        let _ = std::fs::rename(path(".1"), path(".2"));
        std::fs::rename(&log, path(".1")).unwrap();
        std::fs::write(&log, "").unwrap();
        // Rotations far apart next to the follower's pace, as logrotate's are: a listing has
        // seen each new file. (A file created, rotated and compressed away between two looks
        // is never seen, on a machine busy enough, and its lines are lost: only a `.gz` holds
        // them, and compressed files are not read.)
        let listed = follower.counters.scans.load(Ordering::SeqCst);
        reopen.store(true, Ordering::SeqCst);
        wait("a listing after the rotation", || {
            follower.counters.scans.load(Ordering::SeqCst) > listed
        });
        if let Ok(b) = std::fs::read(path(".2")) {
            std::fs::write(path(".2.gz"), b).unwrap();
            std::fs::remove_file(path(".2")).unwrap();
        }
    }
    writer.join().unwrap();
    let lines = || counters.lines.load(Ordering::SeqCst);
    wait("every line", || lines() >= LINES);
    // A last file makes one more listing and reading round: a file read again would be then.
    std::fs::write(dir.path().join("marker.log"), "marker\n").unwrap();
    wait("the marker", || lines() > LINES);
    assert_eq!(lines(), LINES + 1, "lines counted, with the marker's");
}
