//! The shipped systemd units, checked by systemd's own tools (Debian's `systemd` package):
//! `systemd-analyze verify` is clean on both, and `systemd-analyze security --offline=yes`
//! rates the agent's exposure 4.0 or lower.
//!
//! `verify` checks that each `Exec*=` command exists and is executable, and needs the units it
//! depends on (sysinit.target, ...). No systemd runs here and /usr/local/bin has neither binary,
//! so the units are verified with `--root` in a temporary tree holding: the units in
//! etc/systemd/system, a copy of this machine's usr/lib/systemd/system, `/bin/kill` (the
//! agent's ExecReload) and, at the paths the units name, the real agent binary as built and the
//! real Envoy (hard links, or copies across file systems).

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

const UNITS: [&str; 2] = ["service-proxy-agent.service", "envoy.service"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn systemd_analyze() -> Command {
    let probe = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "systemd-analyze is needed (Debian package systemd)"
    );
    Command::new("systemd-analyze")
}

fn link_or_copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let ty = e.file_type().unwrap();
        let dest = to.join(e.file_name());
        if ty.is_symlink() {
            let target = std::fs::read_link(e.path()).unwrap();
            std::os::unix::fs::symlink(target, dest).unwrap();
        } else if ty.is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A root tree for `systemd-analyze verify --root`, with `units` (name, text) installed.
fn verify_root(units: &[(&str, String)]) -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("spa-units-root-")
        .tempdir()
        .unwrap();
    let r = root.path();
    let host_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .iter()
        .map(Path::new)
        .find(|p| p.join("sysinit.target").exists())
        .expect("this machine's systemd unit directory (Debian package systemd)");
    copy_dir(host_units, &r.join("usr/lib/systemd/system"));
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
    let kill = ["/usr/bin/kill", "/bin/kill"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("kill (procps)");
    link_or_copy(kill, &r.join("usr/bin/kill"));
    link_or_copy(Path::new("/usr/bin/touch"), &r.join("usr/bin/touch"));
    link_or_copy(
        Path::new(support::BIN),
        &r.join("usr/local/bin/service-proxy-agent"),
    );
    let envoy =
        testkit::envoy::envoy_bin().expect("real Envoy is needed: run tests/setup-envoy.sh");
    link_or_copy(&envoy, &r.join("usr/local/bin/envoy"));
    let dir = r.join("etc/systemd/system");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in units {
        std::fs::write(dir.join(name), text).unwrap();
    }
    root
}

fn shipped(name: &str) -> String {
    std::fs::read_to_string(repo().join("systemd").join(name)).unwrap()
}

/// `systemd-analyze verify --root` on `units`: its exit status and everything it said.
fn verify(units: &[(&str, String)]) -> (bool, String) {
    let root = verify_root(units);
    let out = systemd_analyze()
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(units.iter().map(|(n, _)| *n))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn verify_is_clean_on_both_units() {
    let units: Vec<(&str, String)> = UNITS.iter().map(|n| (*n, shipped(n))).collect();
    let (ok, said) = verify(&units);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

/// The harness can fail: a unknown key, a bad value and a missing binary are all reported.
#[test]
fn verify_reports_what_is_wrong() {
    let agent = shipped("service-proxy-agent.service")
        .replace("Restart=always", "Restart=always\nRestartWhenBored=yes")
        .replace("ProtectSystem=strict", "ProtectSystem=sometimes")
        .replace(
            "/usr/local/bin/service-proxy-agent run",
            "/usr/local/bin/not-installed run",
        );
    let (ok, said) = verify(&[("service-proxy-agent.service", agent)]);
    assert!(!ok, "{said}");
    assert!(said.contains("RestartWhenBored"), "{said}");
    assert!(said.contains("sometimes"), "{said}");
    assert!(said.contains("/usr/local/bin/not-installed"), "{said}");
}

/// `Overall exposure level for NAME: 2.4 OK 🙂` → 2.4.
fn exposure(unit: &str) -> (f64, String) {
    let out = systemd_analyze()
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(repo().join("systemd").join(unit))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let level = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in systemd-analyze security's output:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (level, text)
}

#[test]
fn agent_unit_exposure_is_at_most_4() {
    let (level, report) = exposure("service-proxy-agent.service");
    assert!(level <= 4.0, "exposure {level} > 4.0:\n{report}");
    // systemd's own verdict agrees (--threshold is the level times ten).
    let status = systemd_analyze()
        .args(["security", "--offline=yes", "--threshold=40", "--no-pager"])
        .arg(repo().join("systemd/service-proxy-agent.service"))
        .output()
        .unwrap()
        .status;
    assert!(
        status.success(),
        "systemd-analyze security --threshold=40 failed"
    );
}

#[test]
fn envoy_unit_is_confined_too() {
    let (level, report) = exposure("envoy.service");
    assert!(level <= 4.0, "exposure {level} > 4.0:\n{report}");
    let unit = shipped("envoy.service");
    assert!(unit.contains("\nUser=envoy\n"), "{unit}");
}

/// The agent's descriptor budget in its unit covers its caps (docs/contract.md#11-trust: files under the log
/// directory and metrics connections are bounded in number) with room for everything else.
#[test]
fn agent_unit_limits_descriptors_above_the_agents_own_caps() {
    let unit = shipped("service-proxy-agent.service");
    let limit: usize = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("LimitNOFILE= in the agent's unit")
        .trim()
        .parse()
        .expect("one number");
    let caps = service_proxy_agent::observe::log_files::MAX_FOLLOWED
        + service_proxy_agent::publish::metrics::MAX_CONNECTIONS;
    assert!(
        limit >= 4 * caps,
        "LimitNOFILE={limit} leaves too little beside {caps} capped descriptors"
    );
}

/// The legacy iptables backend needs /run/xtables.lock writable; under `ProtectSystem=strict`
/// `ReadWritePaths=-/run/xtables.lock` only works when the file exists before the sandbox is
/// built (else every restore failed with "Read-only file system"): the unit creates it first,
/// outside the sandbox, without failing the start on it.
#[test]
fn agent_unit_creates_the_xtables_lock_before_its_sandbox() {
    let unit = shipped("service-proxy-agent.service");
    let lines: Vec<&str> = unit.lines().collect();
    let pre = lines
        .iter()
        .position(|l| *l == "ExecStartPre=-+/usr/bin/touch /run/xtables.lock")
        .expect("ExecStartPre creating /run/xtables.lock outside the sandbox");
    let start = lines
        .iter()
        .position(|l| l.starts_with("ExecStart="))
        .expect("ExecStart=");
    assert!(pre < start);
    assert!(lines.contains(&"ReadWritePaths=-/run/xtables.lock"));
    assert!(lines.contains(&"ProtectSystem=strict"));
}
