//! SPEC §11 for files under Envoy's log directory, attacked as the unprivileged user who can
//! write it (UID 65534 here; the directory is made world-writable, as on a VM where it is):
//! the follower is never blinded by an inode number reused from a file it chose to ignore,
//! never blocked by a FIFO or fed /dev/zero swapped in under a log's name, never follows a
//! link to a file only root may read, does not read a 64 GiB sparse log through, and counts a
//! line once when copytruncate copies onto a rotated file it still holds.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use service_proxy_agent::observe::log_follower::{FollowEvent, Follower, FollowerConfig};

const NOBODY: u32 = 65534;

struct Followed {
    follower: Follower,
    events: Arc<Mutex<Vec<FollowEvent>>>,
}

impl Followed {
    fn start(dir: &Path) -> Followed {
        let events = Arc::new(Mutex::new(Vec::new()));
        let e = events.clone();
        let mut cfg = FollowerConfig::new(dir);
        cfg.poll_interval = Duration::from_millis(100);
        cfg.initial_tail_bytes = 0;
        let follower = Follower::spawn(cfg, move |ev| {
            e.lock().unwrap().push(ev);
            true
        })
        .unwrap();
        Followed { follower, events }
    }

    fn text(&self) -> String {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                FollowEvent::Data { bytes, .. } => {
                    Some(String::from_utf8_lossy(bytes).into_owned())
                }
                _ => None,
            })
            .collect()
    }

    fn scans(&self) -> u64 {
        self.follower.counters.scans.load(Ordering::Relaxed)
    }

    fn wait_text(&self, what: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while !self.text().contains(what) {
            if Instant::now() > deadline {
                return Err(format!("{what:?} never read"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// A log directory every UID may write.
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Runs a Perl program as UID 65534 (the attacker; Perl is in every Debian base system).
fn as_nobody(dir: &Path, program: &str) -> std::process::Child {
    Command::new("perl")
        .arg("-e")
        .arg(program)
        .current_dir(dir)
        .uid(NOBODY)
        .gid(NOBODY)
        .spawn()
        .expect("perl (Debian's perl-base) is needed to act as UID 65534")
}

/// Item 3: a history file (`envoy.log.1` present at start, not read) is deleted and a new
/// `envoy.log` takes its inode number at once, as ext4 does: the new log must be read. Tried
/// on fresh followers until the file system reuses the number (bounded); then deterministic:
/// a history file renamed back to a live name is a live log.
#[test]
fn a_live_log_that_reuses_an_ignored_inode_is_read() {
    let mut reused = false;
    for attempt in 0..50 {
        let dir = tempfile::tempdir().unwrap();
        let history = dir.path().join("envoy.log.1");
        std::fs::write(&history, "[t] history\n").unwrap();
        let ino = std::fs::metadata(&history).unwrap().ino();
        let f = Followed::start(dir.path());
        let deadline = Instant::now() + Duration::from_secs(5);
        while f.scans() == 0 {
            assert!(Instant::now() < deadline, "no first listing");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Rotation: the oldest file deleted, the new log created at once.
        std::fs::remove_file(&history).unwrap();
        let log = dir.path().join("envoy.log");
        std::fs::write(&log, "").unwrap();
        if std::fs::metadata(&log).unwrap().ino() != ino {
            continue;
        }
        reused = true;
        append(&log, &format!("[t] failure line {attempt}\n"));
        f.wait_text(&format!("failure line {attempt}"), Duration::from_secs(5))
            .unwrap();
        assert!(!f.text().contains("history"));
        break;
    }
    assert!(
        reused,
        "the file system never reused an inode number in 50 tries"
    );

    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("envoy.log.1");
    std::fs::write(&history, "").unwrap();
    let f = Followed::start(dir.path());
    std::thread::sleep(Duration::from_millis(200));
    std::fs::rename(&history, dir.path().join("envoy.log")).unwrap();
    append(
        &dir.path().join("envoy.log"),
        "[t] written under the live name\n",
    );
    f.wait_text("written under the live name", Duration::from_secs(5))
        .unwrap();
}

/// Item 4: `envoy.log` swapped again and again, as UID 65534, for a FIFO nobody writes and for
/// a link to /dev/zero (between the follower's listing and its open, at some point): the
/// follower is never stuck on the FIFO nor reads /dev/zero, and a line written afterwards is
/// read at once.
#[test]
fn a_log_swapped_for_a_fifo_or_dev_zero_neither_blocks_nor_floods() {
    let dir = open_dir();
    let other = dir.path().join("envoy.err.log");
    std::fs::write(&other, "").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o666)).unwrap();
    let f = Followed::start(dir.path());
    let mut attacker = as_nobody(
        dir.path(),
        r#"use POSIX; my $end = time + 3; my $n = 0;
        while (time < $end) {
            POSIX::mkfifo("f.tmp", 0644); rename("f.tmp", "envoy.log");
            symlink("/dev/zero", "z.tmp"); rename("z.tmp", "envoy.log");
            open(my $fh, ">", "r.tmp"); print $fh "[t] regular $n\n"; close $fh;
            rename("r.tmp", "envoy.log"); $n++;
        }"#,
    );
    assert!(attacker.wait().unwrap().success(), "the attacker's program");
    let bytes_after_attack = f.follower.counters.bytes.load(Ordering::Relaxed);
    append(&other, "[t] after the attack\n");
    f.wait_text("after the attack", Duration::from_secs(10))
        .expect("the follower is stuck");
    std::thread::sleep(Duration::from_millis(500));
    let bytes = f.follower.counters.bytes.load(Ordering::Relaxed);
    assert!(
        bytes < 64 << 20 && bytes - bytes_after_attack < 1 << 20,
        "{bytes} bytes read: /dev/zero was read"
    );
}

/// Item 13: a `*.log` link made by UID 65534 to a file only root may read is not followed,
/// and is reported; a 64 GiB sparse log appearing costs a bounded tail, not 64 GiB of reads.
#[test]
fn links_are_not_followed_and_a_sparse_giant_is_read_by_its_tail_only() {
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("secret");
    std::fs::write(&secret, "[t] SECRET-TOKEN-123\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(secrets.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = open_dir();
    let f = Followed::start(dir.path());
    std::thread::sleep(Duration::from_millis(200));
    let mut attacker = as_nobody(
        dir.path(),
        &format!(
            r#"symlink("{}", "leak.log") or die "symlink: $!";"#,
            secret.display()
        ),
    );
    assert!(attacker.wait().unwrap().success(), "the attacker's program");
    // The sparse giant, as the envoy user (who owns its logs) could make it.
    let giant = dir.path().join("giant.log");
    let g = std::fs::File::create(&giant).unwrap();
    g.set_len(64 << 30).unwrap();
    drop(g);
    append(&giant, "[t] end of the giant\n");
    let started = Instant::now();
    f.wait_text("end of the giant", Duration::from_secs(5))
        .unwrap();
    eprintln!("giant's tail read in {:?}", started.elapsed());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!f.text().contains("SECRET"), "the link was followed");
    assert!(
        f.follower.counters.bytes.load(Ordering::Relaxed) < 64 << 20,
        "the giant was read through"
    );
}

/// Item 5: rename rotation, then later a copytruncate that copies the live file onto the
/// rotated name the follower still holds (`cp envoy.log envoy.log.1; truncate -s0 envoy.log`):
/// every line is read once. And a file rewritten to the very same length is read again.
#[test]
fn copytruncate_onto_a_held_rotated_file_counts_each_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("envoy.log");
    let rotated = dir.path().join("envoy.log.1");
    std::fs::write(&log, "").unwrap();
    let f = Followed::start(dir.path());
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..7 {
        append(&log, &format!("[t] a{i}\n"));
    }
    f.wait_text("a6", Duration::from_secs(5)).unwrap();
    std::fs::rename(&log, &rotated).unwrap();
    for i in 0..7 {
        append(&log, &format!("[t] bbbbbbbbbb{i}\n"));
    }
    f.wait_text("bbbbbbbbbb6", Duration::from_secs(5)).unwrap();
    // cp onto the existing file: the same inode, overwritten.
    std::fs::copy(&log, &rotated).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, "[t] after\n");
    f.wait_text("after", Duration::from_secs(5)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let all = f.text();
    for i in 0..7 {
        assert_eq!(all.matches(&format!("a{i}\n")).count(), 1, "{all}");
        assert_eq!(all.matches(&format!("bbbbbbbbbb{i}\n")).count(), 1, "{all}");
    }

    // Equal-length rewrite, made through a link outside the directory (no event there) so
    // the follower sees only the result.
    let outside = tempfile::tempdir().unwrap();
    let alias = outside.path().join("alias");
    std::fs::hard_link(&log, &alias).unwrap();
    let before = std::fs::metadata(&log).unwrap().len();
    std::thread::sleep(Duration::from_millis(20));
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .open(&alias)
        .unwrap();
    w.set_len(0).unwrap();
    w.write_all(b"[t] rewr!\n").unwrap();
    drop(w);
    assert_eq!(std::fs::metadata(&log).unwrap().len(), before);
    // Any change in the directory wakes the follower.
    std::fs::write(dir.path().join("wake.log"), "").unwrap();
    f.wait_text("rewr", Duration::from_secs(5)).unwrap();
}
