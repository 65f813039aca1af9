//! Envoy's log directory misbehaving under the real daemon: missing, deleted and re-created,
//! holding `*.log` files it cannot read (a FIFO, a directory, a file its UID may not open),
//! rotated by rename 100 times under 10,000 lines/s, rotated by copytruncate under load, and a
//! 50 MB line between two failure lines. Lines are counted with the agent's own metric
//! `spa_envoy_log_lines_total`; failure lines must become findings.

use crate::faults_common as common;
use crate::support;
use crate::support_daemon as daemon;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use daemon::{ATTRIBUTE_WRITE_WAIT, Daemon, eventually};
use support::agent_without_envoy;
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};

const PERMISSION_DENIED: &str = "[2026-11-22 10:00:00.000][7][warning][config] [./source/extensions/config_subscription/grpc/grpc_stream.h:189] StreamAggregatedResources gRPC config stream to trafficdirector closed: 7, permission denied\n";
const UNAUTHENTICATED: &str = "[2026-11-22 10:00:01.000][7][warning][config] [./source/extensions/config_subscription/grpc/grpc_stream.h:189] StreamAggregatedResources gRPC config stream to trafficdirector closed: 16, Request had invalid authentication credentials.\n";

fn append(path: &Path, text: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text).unwrap();
}

fn line(n: u64) -> String {
    format!(
        "[2026-11-22 10:00:02.{:03}][7][debug][http] [source/common/http/conn_manager_impl.cc:1] [C{n}] new stream\n",
        n % 1000
    )
}

struct Run {
    _control_plane: std::net::TcpListener,
    md: MetadataEmulator,
    agent: Daemon,
    metrics: SocketAddr,
    logs: PathBuf,
}

fn start_with(logs_exist: bool, configure: impl FnOnce(&mut Command)) -> Run {
    let md = MetadataEmulator::start(VmIdentity::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("envoy");
    if logs_exist {
        std::fs::create_dir(&logs).unwrap();
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Open to every UID (one test runs the agent as 65534).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let metrics = free_addr();
    let (control_plane, cp_addr) = reachable_control_plane();
    let mut cmd = agent_without_envoy(&md.host(), dir.path(), &logs, Some(&cp_addr));
    cmd.args(["--poll-interval", "1s"])
        .args(["--metrics-addr", &metrics.to_string()]);
    configure(&mut cmd);
    let agent = Daemon::start(cmd, dir);
    eventually(Duration::from_secs(20), "first publication", || {
        attr(&md, "findings")
    });
    Run {
        _control_plane: control_plane,
        md,
        agent,
        metrics,
        logs,
    }
}

fn start() -> Run {
    start_with(true, |_| {})
}

fn lines_counted(metrics: SocketAddr) -> f64 {
    metric(metrics, "spa_envoy_log_lines_total").unwrap_or(-1.0)
}

/// Waits for `id` in the `findings` attribute, within the write budget's window.
fn wait_finding(run: &Run, id: &str) {
    eventually(ATTRIBUTE_WRITE_WAIT, &format!("{id} in findings"), || {
        attr(&run.md, "findings").filter(|f| f.contains(id))
    });
}

/// The agent logs that the log file is usable again, then the failure it held raises `finding`.
fn recovers_with(run: &Run, skip: usize, finding: &str) {
    wait_log(run, skip, "recovered", |l| {
        l.contains("\"source\":\"envoy_log_file\"") && l.contains("recovered")
    });
    wait_finding(run, finding);
}

fn wait_log(run: &Run, skip: usize, what: &str, pred: impl Fn(&str) -> bool) -> String {
    wait_line_after(
        || run.agent.lines(),
        skip,
        Duration::from_secs(15),
        what,
        pred,
    )
}

#[test]
fn a_missing_directory_is_waited_for_and_a_deleted_one_followed_again_when_recreated() {
    let mut run = start_with(false, |_| {});
    let l = wait_log(&run, 0, "directory unavailable", |l| {
        l.contains("\"source\":\"envoy_log\"") && l.contains("unavailable")
    });
    assert!(l.contains(&run.logs.display().to_string()), "{l}");
    cycles_advance(run.metrics, 3, Duration::from_secs(15), "missing directory");
    eventually(ATTRIBUTE_WRITE_WAIT, "agent-last-failure", || {
        attr(&run.md, "agent-last-failure").filter(|f| f.contains("Envoy log directory"))
    });

    // Created: followed from its first line.
    let skip = run.agent.lines().len();
    std::fs::create_dir(&run.logs).unwrap();
    append(&run.logs.join("envoy.log"), PERMISSION_DENIED.as_bytes());
    wait_log(&run, skip, "recovery", |l| {
        l.contains("\"source\":\"envoy_log\"") && l.contains("recovered")
    });
    wait_finding(&run, "CONTROL_PLANE_PERMISSION_DENIED");

    // Deleted with its files, then re-created: reported, then followed again.
    let skip = run.agent.lines().len();
    std::fs::remove_dir_all(&run.logs).unwrap();
    wait_log(&run, skip, "deleted directory", |l| {
        l.contains("\"source\":\"envoy_log\"") && l.contains("unavailable")
    });
    cycles_advance(run.metrics, 2, Duration::from_secs(15), "deleted directory");
    let skip = run.agent.lines().len();
    std::fs::create_dir(&run.logs).unwrap();
    append(&run.logs.join("envoy.err.log"), UNAUTHENTICATED.as_bytes());
    wait_log(&run, skip, "recovery after re-creation", |l| {
        l.contains("\"source\":\"envoy_log\"") && l.contains("recovered")
    });
    wait_finding(&run, "CONTROL_PLANE_UNAUTHENTICATED");
    assert!(run.agent.is_running());
    assert!(run.agent.stop().0.success());
}

/// A FIFO or a directory named `*.log` cannot be followed (opening a FIFO to read it would
/// block the follower): reported, not opened; once it is a file, it is followed.
#[test]
fn a_fifo_or_a_directory_named_like_a_log_is_reported_not_opened() {
    let mut run = start();
    let fifo = run.logs.join("envoy.log");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success(), "mkfifo");
    std::fs::create_dir(run.logs.join("admin.log")).unwrap();
    let l = wait_log(&run, 0, "FIFO reported", |l| {
        l.contains("\"source\":\"envoy_log_file\"") && l.contains("not a regular file")
    });
    eprintln!("{l}");
    cycles_advance(
        run.metrics,
        3,
        Duration::from_secs(15),
        "FIFO in the log directory",
    );
    // Nobody writes to the FIFO: had the follower opened it, it would be stuck. A file
    // written meanwhile is still followed.
    append(
        &run.logs.join("envoy.err.log"),
        PERMISSION_DENIED.as_bytes(),
    );
    wait_finding(&run, "CONTROL_PLANE_PERMISSION_DENIED");

    let skip = run.agent.lines().len();
    std::fs::remove_file(&fifo).unwrap();
    std::fs::remove_dir(run.logs.join("admin.log")).unwrap();
    append(&fifo, UNAUTHENTICATED.as_bytes());
    recovers_with(&run, skip, "CONTROL_PLANE_UNAUTHENTICATED");
    assert!(run.agent.stop().0.success());
}

/// As root every file is readable: the agent runs as UID 65534 here, so a log it may not
/// open is denied for real by the kernel.
#[test]
fn a_log_the_agent_may_not_read_is_reported_and_read_once_permitted() {
    let mut run = start_with(true, |cmd| {
        std::os::unix::process::CommandExt::uid(cmd, 65534);
        std::os::unix::process::CommandExt::gid(cmd, 65534);
    });
    let secret = run.logs.join("envoy.log");
    // Created 0600 (root's): never readable by the agent until the test says so.
    std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new().create_new(true).write(true),
        0o600,
    )
    .open(&secret)
    .unwrap()
    .write_all(PERMISSION_DENIED.as_bytes())
    .unwrap();
    let l = wait_log(&run, 0, "permission denied reported", |l| {
        l.contains("\"source\":\"envoy_log_file\"") && l.contains("Permission denied")
    });
    assert!(l.contains("envoy.log"), "{l}");
    cycles_advance(run.metrics, 3, Duration::from_secs(15), "unreadable log");
    eventually(ATTRIBUTE_WRITE_WAIT, "agent-last-failure", || {
        attr(&run.md, "agent-last-failure").filter(|f| f.contains("Permission denied"))
    });

    let skip = run.agent.lines().len();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    // What it could not read before is read now.
    recovers_with(&run, skip, "CONTROL_PLANE_PERMISSION_DENIED");
    assert!(run.agent.stop().0.success());
}

/// Envoy writing 10,000 lines/s, its log rotated by rename 100 times (Envoy goes on writing to
/// the renamed file until it reopens, as after logrotate's `postrotate`): every line counted
/// once.
#[test]
fn a_hundred_rename_rotations_under_10000_lines_per_second_lose_no_line() {
    let run = start();
    let pid = run.agent.pid();
    let fds_before = fd_count(pid);
    let base = lines_counted(run.metrics);
    assert_eq!(base, 0.0);
    let log = run.logs.join("envoy.log");
    const RATE: u64 = 10_000;
    const ROTATIONS: u64 = 100;
    const PER_FILE: u64 = 1_000;
    const BATCH: u64 = 50;
    const LATE: u64 = 20;
    let start = Instant::now();
    let mut n = 0u64;
    let mut w = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    for rotation in 1..=ROTATIONS {
        let mut in_file = 0;
        while in_file < PER_FILE {
            let mut batch = String::new();
            for _ in 0..BATCH {
                n += 1;
                in_file += 1;
                batch.push_str(&line(n));
            }
            w.write_all(batch.as_bytes()).unwrap();
            // Paced: line n is due at n / RATE seconds.
            let due = start + Duration::from_secs_f64(n as f64 / RATE as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        std::fs::rename(&log, run.logs.join(format!("envoy.log.{rotation}"))).unwrap();
        // Written to the renamed file before Envoy reopens its log.
        for _ in 0..LATE {
            n += 1;
            w.write_all(line(n).as_bytes()).unwrap();
        }
        w = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        // logrotate keeps a bounded number of old files.
        if rotation > 20 {
            std::fs::remove_file(run.logs.join(format!("envoy.log.{}", rotation - 20))).unwrap();
        }
    }
    drop(w);
    let took = start.elapsed();
    let total = n as f64;
    eprintln!(
        "{n} lines in {took:?} ({:.0} lines/s), {ROTATIONS} rotations",
        n as f64 / took.as_secs_f64()
    );
    let counted = eventually(Duration::from_secs(60), "every line counted", || {
        Some(lines_counted(run.metrics)).filter(|c| *c >= total)
    });
    assert_eq!(counted, total, "lines lost or counted twice");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lines_counted(run.metrics), total, "counted twice later");
    // Files deleted by the rotation are let go. The 20 rotated files still in the directory
    // stay open, on purpose: Envoy writes to a renamed log until it is told to reopen (if
    // logrotate lacks that `postrotate`, for ever), so a renamed file is followed as long as it
    // is there. The bound on log files is logrotate's retention plus the live file; other
    // descriptors (sockets of requests in flight to the metadata server and of scrapes, more of
    // them on a loaded machine) are bounded separately.
    let fds_after = fd_count(pid);
    let targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    eprintln!("agent descriptors: {fds_before} before, {fds_after} after: {targets:?}");
    let logs_dir = run.logs.display().to_string();
    let log_files: Vec<&String> = targets
        .iter()
        .filter(|t| t.starts_with(&logs_dir))
        .collect();
    assert!(
        log_files.iter().all(|t| !t.ends_with("(deleted)")),
        "a deleted rotated file is still open: {log_files:?}"
    );
    assert!(
        log_files.len() <= 20 + 1,
        "{} log files open: {log_files:?}",
        log_files.len()
    );
    assert!(
        fds_after - log_files.len() <= fds_before + 12,
        "descriptors other than log files grew: {fds_before} → {}",
        fds_after - log_files.len()
    );
    drop(run);
}

/// copytruncate under load. By its nature it loses the lines Envoy writes between the end of
/// the copy and the truncation: they are in neither file. The agent must count every line that
/// is in a copy or in the live file at the end (it reads from the copy what it had not read
/// yet), and none twice; it may also have seen some of the lost ones before the truncation.
#[test]
fn copytruncate_under_load_loses_only_what_copytruncate_itself_loses() {
    let mut run = start();
    let log = run.logs.join("envoy.log");
    std::fs::File::create(&log).unwrap();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (log, written, stop) = (log.clone(), written.clone(), stop.clone());
        std::thread::spawn(move || {
            // Envoy opens its log for appending: after a truncation it writes at the new end.
            let mut w = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            let start = Instant::now();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                w.write_all(line(n).as_bytes()).unwrap();
                written.store(n, std::sync::atomic::Ordering::Relaxed);
                let due = start + Duration::from_secs_f64(n as f64 / 5_000.0);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            n
        })
    };
    let count_lines = |p: &Path| {
        std::fs::read(p)
            .unwrap()
            .iter()
            .filter(|b| **b == b'\n')
            .count() as u64
    };
    let mut in_copies = 0;
    const ROTATIONS: u32 = 20;
    for k in 1..=ROTATIONS {
        std::thread::sleep(Duration::from_millis(500));
        // logrotate's copytruncate: copy, then truncate the original in place.
        let copy = run.logs.join(format!("envoy.log.{k}"));
        std::fs::copy(&log, &copy).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap();
        in_copies += count_lines(&copy);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total = writer.join().unwrap();
    let in_live = count_lines(&log);
    let kept = in_copies + in_live;
    let lost_by_copytruncate = total - kept;
    eprintln!("written {total}, kept {kept} ({in_copies} + {in_live})");
    let counted = eventually(Duration::from_secs(30), "the kept lines counted", || {
        let c = lines_counted(run.metrics);
        eprintln!("counted {c}");
        Some(c).filter(|c| *c >= kept as f64)
    });
    std::thread::sleep(Duration::from_secs(3));
    let counted_later = lines_counted(run.metrics);
    eprintln!(
        "copytruncate x{ROTATIONS}: written {total}, in the copies {in_copies}, in the live file {in_live}, \
         lost by copytruncate itself {lost_by_copytruncate}; counted by the agent {counted_later}"
    );
    assert!(counted >= kept as f64);
    assert!(
        counted_later <= total as f64,
        "counted {counted_later} of {total} written: lines counted twice"
    );
    assert!(run.agent.is_running());
    drop(run);
}

/// One 50 MB line between two failure lines: both failures are found, the agent's memory stays
/// bounded (entries are capped), and the line counts as one.
#[test]
fn a_50_mb_line_between_two_failure_lines_hides_neither() {
    let mut run = start();
    let pid = run.agent.pid();
    let log = run.logs.join("envoy.log");
    append(&log, PERMISSION_DENIED.as_bytes());
    let mut huge = b"[2026-11-22 10:00:00.500][7][warning][config] [x.cc:1] ".to_vec();
    huge.resize(50 << 20, b'x');
    huge.push(b'\n');
    append(&log, &huge);
    append(&log, UNAUTHENTICATED.as_bytes());
    wait_finding(&run, "CONTROL_PLANE_PERMISSION_DENIED");
    wait_finding(&run, "CONTROL_PLANE_UNAUTHENTICATED");
    eventually(Duration::from_secs(20), "3 lines counted", || {
        (lines_counted(run.metrics) == 3.0).then_some(())
    });
    let hwm = status_kib(pid, "VmHWM").unwrap();
    eprintln!("agent VmHWM after a 50 MB line: {hwm} KiB");
    assert!(hwm < 64 * 1024, "peak memory {hwm} KiB");
    assert!(run.agent.stop().0.success());
}
