//! docs/contract.md#11-trust for files under Envoy's log directory, attacked as the unprivileged user who can
//! write it (UID 65534 here; the directory is made world-writable, as on a VM where it is):
//! the follower is never blinded by an inode number reused from a file it chose to ignore,
//! never blocked by a FIFO or fed /dev/zero swapped in under a log's name, never follows a
//! link to a file only root may read, does not read a 64 GiB sparse log through, and counts a
//! line once when copytruncate copies onto a rotated file it still holds.

use crate::faults_common as common;
use crate::support;
use crate::support_daemon as daemon;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use daemon::{Daemon, eventually};
use service_proxy_agent::observe::log_follower::{FollowEvent, Follower, FollowerConfig};
use support::{agent, agent_without_envoy, closed_port};
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};

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
        // Under target/ (the build's disk, ext4 on CI), not /tmp (often tmpfs: never reuses).
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
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
        "the file system of {} never reused an inode number in 50 tries (tmpfs and btrfs do \
         not): this test needs one that does, such as ext4 or XFS",
        env!("CARGO_TARGET_TMPDIR")
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

/// The daemon, as its unit runs it but with interception off, following a log directory every
/// UID may write; `prepare` fills the directory before the start.
struct Running {
    _control_plane: std::net::TcpListener,
    _md: MetadataEmulator,
    daemon: Daemon,
    metrics: SocketAddr,
    logs: PathBuf,
    /// The config file the daemon reads (`SPA_CONFIG`), empty at start.
    config: PathBuf,
}

fn start_agent(prepare: impl FnOnce(&Path)) -> Running {
    let md = MetadataEmulator::start(VmIdentity::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let logs = dir.path().join("envoy");
    std::fs::create_dir(&logs).unwrap();
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o777)).unwrap();
    prepare(&logs);
    let metrics = free_addr();
    let (control_plane, cp_addr) = reachable_control_plane();
    let mut cmd = agent_without_envoy(&md.host(), dir.path(), &logs, Some(&cp_addr));
    let config = dir.path().join("empty.toml");
    cmd.args(["--metrics-addr", &metrics.to_string()]);
    // Through the config file, so a reload can change it.
    std::fs::write(&config, "poll-interval = \"1s\"\n").unwrap();
    let daemon = Daemon::start(cmd, dir);
    eventually(Duration::from_secs(20), "first publication", || {
        attr(&md, "findings")
    });
    Running {
        _control_plane: control_plane,
        _md: md,
        daemon,
        metrics,
        logs,
        config,
    }
}

/// Item 8: UID 65534 opens 300 connections to the metrics port, each sending ~400 KiB of
/// request headers and holding on. The agent's memory stays bounded, and a scrape made during
/// the attack is answered.
#[test]
fn a_slowloris_on_the_metrics_port_neither_grows_memory_nor_stops_scrapes() {
    let mut run = start_agent(|_| {});
    cycles_advance(run.metrics, 1, Duration::from_secs(15), "start");
    let pid = run.daemon.pid();
    let hwm_before = status_kib(pid, "VmHWM").unwrap();
    let attack = format!(
        r#"use IO::Socket::INET; $SIG{{PIPE}} = "IGNORE";
        my $head = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " . ("a" x (400 * 1024));
        my @c;
        for (1 .. 300) {{
            my $s = IO::Socket::INET->new(PeerAddr => "{addr}", Blocking => 0) or next;
            push @c, [$s, 0];
        }}
        my $end = time + 6;
        while (time < $end) {{
            for my $c (@c) {{
                next if $c->[1] >= length $head;
                my $n = syswrite($c->[0], $head, 65536, $c->[1]);
                $c->[1] += $n if defined $n && $n > 0;
            }}
            select(undef, undef, undef, 0.01);
        }}"#,
        addr = run.metrics
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut attacker = as_nobody(tmp.path(), &attack);
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let scraped = eventually(
        Duration::from_secs(10),
        "a scrape during the attack",
        || metric(run.metrics, "spa_cycles_total"),
    );
    eprintln!(
        "scrape during the attack answered after {:?}",
        started.elapsed()
    );
    assert!(scraped >= 1.0);
    assert!(attacker.wait().unwrap().success(), "the attacker's program");
    let hwm = status_kib(pid, "VmHWM").unwrap();
    eprintln!("VmHWM {hwm_before} KiB before, {hwm} KiB after the attack");
    assert!(
        hwm < hwm_before + 32 * 1024,
        "memory grew from {hwm_before} KiB to {hwm} KiB"
    );
    cycles_advance(run.metrics, 1, Duration::from_secs(15), "after the attack");
    assert!(run.daemon.stop().0.success());
}

/// Item 6: 1,500 files named `*.log` made by UID 65534: the agent holds a bounded number of
/// descriptors, keeps cycling, still follows `envoy.log`, and reports the excess in one line.
#[test]
fn thousands_of_logs_are_capped_and_the_excess_reported() {
    let mut run = start_agent(|logs| {
        std::fs::write(logs.join("envoy.log"), "").unwrap();
        std::fs::set_permissions(
            logs.join("envoy.log"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
    });
    let pid = run.daemon.pid();
    let fds_before = fd_count(pid);
    let mut attacker = as_nobody(
        &run.logs,
        r#"for my $i (1 .. 1500) { open(my $f, ">", sprintf("x%04d.log", $i)) or die; print $f "[t] x\n"; close $f; }"#,
    );
    assert!(attacker.wait().unwrap().success(), "the attacker's program");
    cycles_advance(run.metrics, 2, Duration::from_secs(15), "many files");
    let fds = fd_count(pid);
    assert!(
        fds < fds_before + 80,
        "{fds_before} descriptors before, {fds} with 1,500 logs"
    );
    let l = run
        .daemon
        .wait_log(Duration::from_secs(15), "the excess reported", |l| {
            l.contains("\"source\":\"envoy_log_file\"") && l.contains("files followed at once")
        });
    assert!(l.len() < 1024, "{l}");
    append(
        &run.logs.join("envoy.log"),
        "[2026-11-22 10:00:00.000][7][warning][config] [./source/extensions/config_subscription/grpc/grpc_stream.h:189] StreamAggregatedResources gRPC config stream to trafficdirector closed: 7, permission denied\n",
    );
    // Through the metric: guest-attribute writes are rate-limited.
    eventually(Duration::from_secs(15), "envoy.log still followed", || {
        metrics_text(run.metrics)
            .lines()
            .any(|l| {
                l.starts_with("spa_finding_active{id=\"CONTROL_PLANE_PERMISSION_DENIED\"")
                    && l.ends_with(" 1")
            })
            .then_some(())
    });

    assert!(run.daemon.stop().0.success());
}

/// Item 7: 1,500 FIFOs named `*.log` made by UID 65534: reported in a handful of short lines,
/// not one line per FIFO listing them all.
#[test]
fn thousands_of_fifos_are_reported_in_a_few_short_lines() {
    let mut run = start_agent(|_| {});
    let skip = run.daemon.lines().len();
    let mut attacker = as_nobody(
        &run.logs,
        r#"use POSIX; for my $i (1 .. 1500) { POSIX::mkfifo(sprintf("p%04d.log", $i), 0644) or die; }"#,
    );
    assert!(attacker.wait().unwrap().success(), "the attacker's program");
    run.daemon
        .wait_log(Duration::from_secs(15), "the FIFOs reported", |l| {
            l.contains("\"source\":\"envoy_log_file\"") && l.contains("not a regular file")
        });
    cycles_advance(run.metrics, 2, Duration::from_secs(15), "many FIFOs");
    let lines = run.daemon.lines();
    let reports: Vec<&String> = lines
        .iter()
        .skip(skip)
        .filter(|l| l.contains("\"source\":\"envoy_log_file\""))
        .collect();
    let bytes: usize = reports.iter().map(|l| l.len()).sum();
    eprintln!("{} report lines, {bytes} bytes", reports.len());
    assert!(
        reports.len() <= 10 && bytes < 10 * 1024,
        "{} lines, {bytes} bytes",
        reports.len()
    );
    assert!(run.daemon.stop().0.success());
}

/// The agent binary for a one-shot command against `md`.
fn command(md: &MetadataEmulator, config: &Path, args: &[&str]) -> Command {
    let mut cmd = agent(&md.host(), config);
    cmd.args(args);
    cmd
}

/// Item 21: a command whose reader goes away before it prints (`status | true`) ends quietly,
/// with the status of a death by SIGPIPE (141), never a panic and an abort.
#[test]
fn a_reader_that_goes_away_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let md = MetadataEmulator::start(VmIdentity::default()).unwrap();
    md.seed_guest_attribute(
        "gce-service-proxy",
        "agent-heartbeat",
        "2026-11-22T10:00:00Z",
    );
    let config = tempfile::tempdir().unwrap();
    for args in [&["status"][..], &["status", "--json"], &["version"]] {
        // The read end is closed before the command starts, so it can write nothing. (Closing
        // it after the spawn raced a quick command: `version` had once written its line into
        // the pipe's buffer first and ended with 0.)
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = command(&md, config.path(), args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            (out.status.code(), out.status.signal()),
            (Some(141), None),
            "{args:?}: {stderr}"
        );
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

/// Item 17: `status` prints no terminal escape from an attribute value (any local root, or an
/// install script, writes them), and a heartbeat in the future is not an agent alive.
#[test]
fn status_prints_no_escapes_and_a_future_heartbeat_is_not_alive() {
    let md = MetadataEmulator::start(VmIdentity::default()).unwrap();
    md.seed_guest_attribute(
        "gce-service-proxy",
        "agent-heartbeat",
        "2099-01-01T00:00:00Z",
    );
    md.seed_guest_attribute(
        "gce-service-proxy",
        "bootstrap-last-failure",
        "fine\u{1b}]0;pwned\u{7}\u{1b}[2J\rforged line",
    );
    let config = tempfile::tempdir().unwrap();
    let out = command(&md, config.path(), &["status"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.chars().any(|c| c.is_control() && c != '\n'),
        "{stdout:?}"
    );
    assert!(stdout.contains("forged line"), "{stdout}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a future heartbeat is not alive: {stdout}"
    );
    assert!(stdout.contains("in the future"), "{stdout}");
}

/// Item 14: a duration too large for the clock (`300000000000y`) is a one-line error naming
/// the flag, not an abort; in the config file on SIGHUP, the reload is refused, naming the key,
/// and the daemon goes on.
#[test]
fn absurd_durations_are_refused_naming_the_flag_or_key() {
    let md = MetadataEmulator::start(VmIdentity::default()).unwrap();
    let config = tempfile::tempdir().unwrap();
    for flag in ["--poll-interval", "--heartbeat-interval", "--finding-ttl"] {
        let out = command(&md, config.path(), &["run", flag, "300000000000y"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.lines().count() == 1,
            "{flag}: {stderr}"
        );
    }

    let mut run = start_agent(|_| {});
    std::fs::write(&run.config, "poll-interval = \"300000000000y\"\n").unwrap();
    run.daemon.signal(nix::sys::signal::Signal::SIGHUP);
    run.daemon
        .wait_log(Duration::from_secs(10), "the reload refused", |l| {
            l.contains("config not reloaded") && l.contains("poll-interval")
        });
    cycles_advance(
        run.metrics,
        2,
        Duration::from_secs(15),
        "after the bad reload",
    );
    assert!(run.daemon.is_running());
    assert!(run.daemon.stop().0.success());
}

/// Item 15: the config file replaced by a FIFO (nobody writes it), then SIGHUP: the reload is
/// refused at once and the loop goes on cycling.
#[test]
fn a_fifo_as_config_file_does_not_hang_the_reload() {
    let mut run = start_agent(|_| {});
    std::fs::remove_file(&run.config).unwrap();
    nix::unistd::mkfifo(&run.config, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    run.daemon.signal(nix::sys::signal::Signal::SIGHUP);
    run.daemon
        .wait_log(Duration::from_secs(10), "the reload refused", |l| {
            l.contains("config not reloaded")
        });
    cycles_advance(
        run.metrics,
        2,
        Duration::from_secs(15),
        "after SIGHUP with a FIFO",
    );
    assert!(run.daemon.stop().0.success());
}

/// Item 16: `doctor` shows the log line behind a finding; a token in it is redacted as the
/// daemon redacts it (one redaction for both), in the text and the JSON report.
#[test]
fn doctor_redacts_tokens_from_log_lines() {
    let md = MetadataEmulator::start(VmIdentity::default()).unwrap();
    let config = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    append(
        &logs.path().join("envoy.log"),
        "[2026-11-22 10:00:00.000][7][warning][config] [./source/extensions/config_subscription/grpc/grpc_stream.h:189] StreamAggregatedResources gRPC config stream to trafficdirector closed: 7, permission denied; authorization: Bearer ya29.SECRET-TOKEN-0123456789\n",
    );
    let (_cp, cp_addr) = reachable_control_plane();
    for json in [false, true] {
        let mut cmd = command(&md, config.path(), &["doctor"]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd
            .args([
                "--envoy-admin",
                &format!("http://127.0.0.1:{}", closed_port()),
            ])
            .arg("--envoy-log-dir")
            .arg(logs.path())
            .args(["--control-plane", &cp_addr])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("CONTROL_PLANE_PERMISSION_DENIED"),
            "json {json}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("permission denied"),
            "json {json}: {stdout}"
        );
        assert!(!stdout.contains("SECRET-TOKEN"), "json {json}: {stdout}");
        if json {
            serde_json::from_str::<serde_json::Value>(&stdout).expect("the report stays JSON");
        }
    }
}

/// Item 18, the mechanism the unit relies on, with the real legacy iptables: in a private mount
/// namespace, /run read-only as `ProtectSystem=strict` makes it. Without the lock file,
/// `ReadWritePaths=-/run/xtables.lock` has nothing to open and every restore fails ("Read-only
/// file system"); with the file created first (the unit's `ExecStartPre=-+touch`) and bound
/// writable over itself (what `ReadWritePaths=` does), the restore works. Each restore runs in
/// a private network namespace (`unshare -n`).
#[test]
fn the_legacy_backend_needs_the_lock_file_made_before_the_sandbox() {
    use nix::mount::{MsFlags, mount};
    let ns = MountNs::new().unwrap();
    ns.tmpfs("/run").unwrap();
    let remount = |flags: MsFlags| {
        ns.run(move || {
            mount(
                None::<&str>,
                "/run",
                None::<&str>,
                MsFlags::MS_REMOUNT | flags,
                None::<&str>,
            )
            .unwrap()
        })
    };
    let restore = || {
        ns.run(|| {
            let mut child = Command::new("unshare")
                .args(["-n", "iptables-legacy-restore", "--noflush"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("unshare and iptables-legacy-restore (Debian: util-linux, iptables)");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"*filter\n:SERVICE_PROXY_TEST - [0:0]\nCOMMIT\n")
                .unwrap();
            child.wait_with_output().unwrap()
        })
    };

    // The sandbox built while the file is absent: /run stays read-only.
    remount(MsFlags::MS_RDONLY);
    let out = restore();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Read-only file system"),
        "{stderr}"
    );

    // The file made first, then the sandbox: the file bound writable over itself.
    remount(MsFlags::empty());
    ns.run(|| std::fs::write("/run/xtables.lock", "").unwrap());
    remount(MsFlags::MS_RDONLY);
    ns.bind("/run/xtables.lock", "/run/xtables.lock").unwrap();
    ns.run(|| {
        mount(
            None::<&str>,
            "/run/xtables.lock",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap()
    });
    let out = restore();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
