//! iptables failing under the daemon in `--interception enforce`, inside a private network
//! namespace (real nat tables) and a private mount namespace (the agent runs the system's
//! programs by their system paths; the test hides or replaces them there, never on the host):
//!
//! - missing: an empty tmpfs over `/usr/sbin` while the agent runs;
//! - restore refused: `/etc/alternatives/iptables-restore` pointed at the real restore fed one
//!   rule it must refuse (`tests/fixtures/faults/refusing-restore.sh`);
//! - the xtables lock held by another process (the test's `flock` on `/run/xtables.lock`, on a
//!   private /run).
//!   With the nf_tables backend (Debian's default, iptables 1.8.9) the lock is not used and
//!   `--wait` is a no-op (xtables-nft(8)): a held lock changes nothing, which the first lock test
//!   shows. With the legacy backend (`xtables-legacy-multi` bound over the nft one) a restore
//!   waits for the lock up to `--wait` seconds and then fails ("Another app is currently
//!   holding the xtables lock"); without `--wait` it would block until the lock is released.
//!
//! Each time the agent keeps completing cycles, reports the failure (log line with `source`,
//! `agent-last-failure`), leaves the rules it cannot change as they are, and catches up with
//! Envoy's listeners once iptables works again.

use crate::faults_common as common;
use crate::support;
use crate::support_daemon as daemon;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use daemon::{Daemon, eventually};
use support::agent;
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};
use testkit::netns;

struct Run {
    md: MetadataEmulator,
    admin: StandInAdmin,
    agent: Daemon,
    metrics: SocketAddr,
    _control_plane: std::net::TcpListener,
}

/// The agent in enforce mode, started on `mnt`'s thread, against a stand-in admin with
/// `ranges`. Must be called from the test's private network namespace.
fn start(mnt: &MountNs, ranges: &[serde_json::Value]) -> Run {
    let md = MetadataEmulator::start(VmIdentity {
        project_number: 123,
        ..VmIdentity::default()
    })
    .unwrap();
    let admin = admin_with(ranges);
    let (control_plane, cp_addr) = reachable_control_plane();
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_addr();
    let mut cmd = agent(&md.host(), dir.path());
    enforce_flags(&mut cmd, &admin.url(), dir.path(), &cp_addr)
        .args(["--poll-interval", "1s"])
        .args(["--metrics-addr", &metrics.to_string()]);
    let agent = mnt.run(move || Daemon::start(cmd, dir));
    Run {
        md,
        admin,
        agent,
        metrics,
        _control_plane: control_plane,
    }
}

fn has_vip(save: &str, vip: &str) -> bool {
    save.contains(&format!(
        "-A SERVICE_PROXY_SERVICE_CIDRS -d {vip} -j SERVICE_PROXY_REDIRECT"
    ))
}

fn wait_vip(program: &str, vip: &str, timeout: Duration) {
    eventually(timeout, &format!("{vip} intercepted ({program})"), || {
        has_vip(&nat_rules(program), vip).then_some(())
    });
}

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn wait_log(
    run: &Run,
    skip: usize,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    wait_line_after(|| run.agent.lines(), skip, timeout, what, pred)
}

#[test]
fn iptables_missing_then_refusing_a_restore() {
    netns::in_new_netns(|| {
        let mnt = MountNs::new()?;
        let mut run = start(&mnt, &[range("10.9.0.1", 32)]);
        wait_vip("iptables-save", "10.9.0.1/32", Duration::from_secs(20));

        // Missing: the programs vanish while the agent runs.
        let skip = run.agent.lines().len();
        mnt.tmpfs("/usr/sbin")?;
        run.admin
            .set_listeners(&[range("10.9.0.1", 32), range("10.9.0.2", 32)]);
        let l = wait_log(
            &run,
            skip,
            Duration::from_secs(20),
            "iptables missing",
            |l| l.contains("\"source\":\"iptables") && l.contains("is not installed"),
        );
        eprintln!("missing: {l}");
        wait_log(
            &run,
            skip,
            Duration::from_secs(20),
            "IPTABLES_UNAVAILABLE",
            |l| l.contains("\"finding\":\"IPTABLES_UNAVAILABLE\""),
        );
        cycles_advance(run.metrics, 3, Duration::from_secs(30), "iptables missing");
        assert!(run.agent.is_running());
        // What was applied stays; what cannot be applied waits.
        let rules = nat_rules("iptables-save");
        assert!(
            has_vip(&rules, "10.9.0.1/32") && !has_vip(&rules, "10.9.0.2/32"),
            "{rules}"
        );
        eventually(Duration::from_secs(75), "agent-last-failure", || {
            attr(&run.md, "agent-last-failure").filter(|f| f.contains("is not installed"))
        });
        let skip = run.agent.lines().len();
        mnt.umount("/usr/sbin")?;
        wait_vip("iptables-save", "10.9.0.2/32", Duration::from_secs(20));
        wait_log(&run, skip, Duration::from_secs(20), "recovered", |l| {
            l.contains("\"source\":\"iptables") && l.contains("recovered")
        });

        // Refused: the restore is iptables' own refusal of a transaction; nothing of it applies.
        let script = fixture_path("faults/refusing-restore.sh");
        let alternatives = alternatives_with(&[
            ("iptables-restore", script.as_path()),
            ("ip6tables-restore", script.as_path()),
        ]);
        let skip = run.agent.lines().len();
        mnt.bind(alternatives.path(), "/etc/alternatives")?;
        run.admin.set_listeners(&[
            range("10.9.0.1", 32),
            range("10.9.0.2", 32),
            range("10.9.0.3", 32),
        ]);
        let l = wait_log(
            &run,
            skip,
            Duration::from_secs(20),
            "restore refused",
            |l| {
                l.contains("\"source\":\"iptables\"")
                    && l.contains("refused")
                    && l.contains("SPA_NO_SUCH_TARGET")
            },
        );
        eprintln!("refused: {l}");
        cycles_advance(run.metrics, 3, Duration::from_secs(30), "restore refused");
        assert!(run.agent.is_running());
        let rules = nat_rules("iptables-save");
        assert!(
            has_vip(&rules, "10.9.0.2/32") && !has_vip(&rules, "10.9.0.3/32"),
            "a refused transaction changed the rules: {rules}"
        );
        assert!(!rules.contains("SPA_NO_SUCH_TARGET"), "{rules}");
        let errors = metric(run.metrics, "spa_interception_errors_total").unwrap_or(0.0);
        assert!(errors >= 1.0, "{errors}");
        eventually(Duration::from_secs(75), "agent-last-failure", || {
            attr(&run.md, "agent-last-failure").filter(|f| f.contains("SPA_NO_SUCH_TARGET"))
        });
        let skip = run.agent.lines().len();
        mnt.umount("/etc/alternatives")?;
        wait_vip("iptables-save", "10.9.0.3/32", Duration::from_secs(20));
        wait_log(&run, skip, Duration::from_secs(20), "recovered", |l| {
            l.contains("\"source\":\"iptables\"") && l.contains("recovered")
        });
        assert!(run.agent.stop().0.success());
        drop(run.md);
        Ok(())
    })
    .unwrap();
}

/// The xtables lock (`flock(LOCK_EX)` on `/run/xtables.lock`, as iptables-legacy takes it),
/// held by the test process on the mount namespace's private /run until [`release`].
///
/// Held here rather than by `flock FILE sleep N`: `flock` passes the locked descriptor to its
/// command, so killing `flock` left `sleep` holding the lock and iptables never got it back.
fn hold_xtables_lock(mnt: &MountNs) -> nix::fcntl::Flock<std::fs::File> {
    let file = mnt.run(|| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/xtables.lock")
            .expect("open /run/xtables.lock on the private /run")
    });
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .expect("flock /run/xtables.lock");
    // Seen as held from the namespace: a non-blocking attempt by another process fails.
    let code = mnt.run(|| {
        Command::new("flock")
            .args(["-n", "/run/xtables.lock", "true"])
            .stdin(Stdio::null())
            .status()
            .expect("flock (util-linux)")
    });
    assert_eq!(code.code(), Some(1), "the lock is not seen as held");
    held
}

fn release(held: nix::fcntl::Flock<std::fs::File>) {
    held.unlock().map_err(|(_, e)| e).expect("unlock");
}

#[test]
fn the_xtables_lock_does_not_concern_the_nf_tables_backend() {
    netns::in_new_netns(|| {
        let mnt = MountNs::new()?;
        mnt.tmpfs("/run")?;
        let holder = hold_xtables_lock(&mnt);
        let mut run = start(&mnt, &[range("10.9.0.1", 32)]);
        wait_vip("iptables-save", "10.9.0.1/32", Duration::from_secs(20));
        run.admin
            .set_listeners(&[range("10.9.0.1", 32), range("10.9.0.2", 32)]);
        wait_vip("iptables-save", "10.9.0.2/32", Duration::from_secs(10));
        assert!(
            !run.agent.lines().iter().any(|l| l.contains("xtables lock")),
            "{:#?}",
            run.agent.lines()
        );
        release(holder);
        assert!(run.agent.stop().0.success());
        Ok(())
    })
    .unwrap();
}

#[test]
fn the_xtables_lock_held_by_another_process_with_the_legacy_backend() {
    netns::in_new_netns(|| {
        let mnt = MountNs::new()?;
        mnt.tmpfs("/run")?;
        // Every iptables program is the legacy one (it takes its personality from its name).
        mnt.bind(
            "/usr/sbin/xtables-legacy-multi",
            "/usr/sbin/xtables-nft-multi",
        )?;
        let mut run = start(&mnt, &[range("10.9.0.1", 32)]);
        wait_vip(
            "iptables-legacy-save",
            "10.9.0.1/32",
            Duration::from_secs(20),
        );

        let holder = hold_xtables_lock(&mnt);
        let skip = run.agent.lines().len();
        run.admin
            .set_listeners(&[range("10.9.0.1", 32), range("10.9.0.2", 32)]);
        // The restore waits up to --wait (9 s), then gives up with iptables' message.
        let l = wait_log(&run, skip, Duration::from_secs(30), "lock held", |l| {
            l.contains("\"source\":\"iptables\"") && l.contains("xtables lock")
        });
        eprintln!("lock: {l}");
        // Each cycle now lasts one --wait: they still complete.
        cycles_advance(run.metrics, 2, Duration::from_secs(40), "xtables lock held");
        assert!(run.agent.is_running());
        assert!(!has_vip(&nat_rules("iptables-legacy-save"), "10.9.0.2/32"));

        let skip = run.agent.lines().len();
        release(holder);
        wait_vip(
            "iptables-legacy-save",
            "10.9.0.2/32",
            Duration::from_secs(30),
        );
        wait_log(&run, skip, Duration::from_secs(20), "recovered", |l| {
            l.contains("\"source\":\"iptables\"") && l.contains("recovered")
        });
        assert!(run.agent.stop().0.success());
        Ok(())
    })
    .unwrap();
}
