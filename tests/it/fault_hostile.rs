//! Hostile content never crosses a boundary (docs/contract.md#3-guest-attributes, §5, §6, §7), end to end through the real
//! binary:
//!
//! - prefix ranges of Envoy's listeners that are not IP networks (iptables syntax, a bad
//!   length, an injected newline, shell syntax, giant text) never reach iptables, in `enforce`
//!   mode in a private network namespace, while the valid VIPs do; each is reported;
//! - guest-attribute values stay ≤ 1024 bytes and free of control characters when what they are
//!   made of (Envoy's version and state, log lines, metadata) is huge or holds control
//!   characters;
//! - the access token the agent uses (Cloud Logging, with a key file whose token endpoint is a
//!   loopback stub that also echoes the token back in its errors) and the metadata server's
//!   token appear in no log line, no guest attribute and no metric;
//! - no program but the iptables ones is ever executed (`strace -f -e trace=execve` over
//!   `doctor` and over daemon cycles in `enforce` mode): no shell.
//!
//! Non-loopback `--envoy-admin` / `--metrics-addr` being refused without `--allow-remote-*` is
//! covered by `src/config.rs` (`remote_admin_needs_permission`, `remote_metrics_needs_permission`)
//! and here through the binary (`remote_admin_and_metrics_need_permission`).

use crate::faults_common as common;
use crate::support;
use crate::support_daemon as daemon;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use daemon::{ATTRIBUTE_WRITE_WAIT, Daemon, eventually};
use support::agent;
use testkit::http_stub::{HttpStub, Reply};
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};
use testkit::netns;

fn vm() -> MetadataEmulator {
    MetadataEmulator::start(VmIdentity {
        project_number: 123,
        ..VmIdentity::default()
    })
    .unwrap()
}

/// Valid VIPs, and what must never reach iptables.
fn valid_ranges() -> Vec<serde_json::Value> {
    vec![
        range("10.9.0.1", 32),
        range("10.9.1.0", 24),
        range("fd00::9", 128),
    ]
}

fn hostile_ranges() -> Vec<serde_json::Value> {
    use serde_json::json;
    vec![
        json!({"address_prefix": "10.0.0.1 -j ACCEPT", "prefix_len": 32}),
        json!({"address_prefix": "1.2.3.4", "prefix_len": 99}),
        json!({"address_prefix": "10.0.0.4\n-A OUTPUT -j ACCEPT", "prefix_len": 32}),
        json!({"address_prefix": "$(touch /tmp/spa-pwned)", "prefix_len": 32}),
        json!({"address_prefix": "10.0.0.6", "prefix_len": "32 -j DROP"}),
        json!({"address_prefix": "10.0.0.7", "prefix_len": -1}),
        json!({"address_prefix": "10.0.0.8/8", "prefix_len": 32}),
        json!({"address_prefix": "::ffff:zzzz", "prefix_len": 128}),
        json!({"address_prefix": "9".repeat(100_000), "prefix_len": 32}),
        json!({"address_prefix": "10.0.0.10\u{0}\u{1b}[2J", "prefix_len": 32}),
    ]
}

/// Text of hostile ranges that must appear in no save.
const NEVER_IN_IPTABLES: [&str; 9] = [
    "10.0.0.1",
    "1.2.3.4",
    "10.0.0.4",
    "pwned",
    "10.0.0.6",
    "10.0.0.7",
    "10.0.0.8",
    "zzzz",
    "10.0.0.10",
];

/// The agent in enforce mode against `admin`; `wrap` may put a tracer in front of the binary.
fn enforce_cmd(
    md: &MetadataEmulator,
    admin: &StandInAdmin,
    dir: &Path,
    metrics: std::net::SocketAddr,
    cp_addr: &str,
) -> Command {
    let mut cmd = agent(&md.host(), dir);
    enforce_flags(&mut cmd, &admin.url(), dir, cp_addr)
        .args(["--poll-interval", "1s"])
        .args(["--metrics-addr", &metrics.to_string()]);
    cmd
}

fn all_rules() -> String {
    let mut s = String::new();
    for p in ["iptables-save", "ip6tables-save"] {
        testkit::netns::ensure_private().unwrap();
        s.push_str(&testkit::netns::run(&mut Command::new(p)).unwrap());
    }
    s
}

fn service_rules(save: &str) -> Vec<String> {
    let mut v: Vec<String> = save
        .lines()
        .filter(|l| l.starts_with("-A SERVICE_PROXY_SERVICE_CIDRS "))
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

#[test]
fn hostile_prefix_ranges_never_reach_iptables_and_are_reported() {
    netns::in_new_netns(|| {
        let md = vm();
        let mut ranges = valid_ranges();
        ranges.extend(hostile_ranges());
        let admin = admin_with(&ranges);
        let (_cp, cp_addr) = reachable_control_plane();
        let dir = tempfile::tempdir().unwrap();
        let metrics = free_addr();
        let cmd = enforce_cmd(&md, &admin, dir.path(), metrics, &cp_addr);
        let mut agent = Daemon::start(cmd, dir);

        let want = [
            "-A SERVICE_PROXY_SERVICE_CIDRS -d 10.9.0.1/32 -j SERVICE_PROXY_REDIRECT",
            "-A SERVICE_PROXY_SERVICE_CIDRS -d 10.9.1.0/24 -j SERVICE_PROXY_REDIRECT",
            "-A SERVICE_PROXY_SERVICE_CIDRS -d fd00::9/128 -j SERVICE_PROXY_REDIRECT",
        ];
        let save = eventually(Duration::from_secs(30), "the valid VIPs applied", || {
            let s = all_rules();
            want.iter().all(|w| s.contains(w)).then_some(s)
        });
        // A few more cycles with the same hostile input: still nothing of it.
        cycles_advance(metrics, 3, Duration::from_secs(30), "hostile listeners");
        let save2 = all_rules();
        for s in [&save, &save2] {
            assert_eq!(service_rules(s), want.to_vec(), "{s}");
            for bad in NEVER_IN_IPTABLES {
                assert!(!s.contains(bad), "{bad:?} reached iptables:\n{s}");
            }
            // Nothing but our chains and the kernel's defaults: no ACCEPT/DROP rule at all.
            assert!(
                !s.lines()
                    .any(|l| l.starts_with("-A") && (l.contains("ACCEPT") || l.contains("DROP"))),
                "{s}"
            );
        }
        assert!(!Path::new("/tmp/spa-pwned").exists());

        // Reported, once, with each hostile input shown escaped on one line.
        let l = agent.wait_log(Duration::from_secs(10), "ignored inputs", |l| {
            l.contains("never passed to iptables")
        });
        let msg = field(&l, "message").unwrap();
        for shown in [
            "10.0.0.1 -j ACCEPT",
            "1.2.3.4",
            // Control characters become spaces: still one line.
            "10.0.0.4 -A OUTPUT -j ACCEPT",
            "$(touch /tmp/spa-pwned)",
            "10.0.0.8/8",
            "::ffff:zzzz",
        ] {
            assert!(msg.contains(shown), "{shown:?} not reported: {msg}");
        }
        assert!(!msg.chars().any(char::is_control), "{msg:?}");
        assert!(msg.len() < 64 << 10, "report of {} bytes", msg.len());
        let reports = agent
            .lines()
            .iter()
            .filter(|l| l.contains("never passed to iptables"))
            .count();
        assert_eq!(reports, 1, "reported again with nothing new");
        // And every log line stays one JSON line without control characters.
        for j in agent.json_lines() {
            let m = j["message"].as_str().unwrap_or_default();
            assert!(!m.chars().any(char::is_control), "{m:?}");
        }
        assert!(agent.stop().0.success());
        Ok(())
    })
    .unwrap();
}

/// Envoy's version: a real one followed by terminal escapes, newlines, NULs and 200 KB.
fn hostile_version() -> String {
    format!(
        "9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL\u{1b}[31m\r\nagent-heartbeat: forged\u{0}\u{7}{}\u{202e}",
        "é".repeat(100_000)
    )
}

/// `n` failure lines as Envoy writes them (local time, now), each with a huge message full of
/// control characters and terminal escapes.
fn failure_lines(n: usize) -> String {
    let out = Command::new("date")
        .arg("+%Y-%m-%d %H:%M:%S")
        .output()
        .unwrap();
    let now = String::from_utf8(out.stdout).unwrap();
    let mut log = String::new();
    for i in 0..n {
        log.push_str(&format!(
            "[{}.{i:03}][1][warning][config] [source/extensions/config_subscription/grpc/grpc_stream.h:191] StreamAggregatedResources gRPC config stream to cp closed: 5, Cloud Service Mesh configuration was not found for network \"a\u{1b}]0;pwn\u{7}\r{}\" in project \"123\".\n",
            now.trim(),
            "\u{1}z".repeat(30_000)
        ));
    }
    log
}

fn is_clean_value(v: &str) -> bool {
    v.len() <= 1024 && !v.chars().any(char::is_control)
}

#[test]
fn guest_attributes_stay_bounded_and_free_of_control_characters() {
    netns::in_new_netns(|| {
        let md = vm();
        // Metadata the agent reads, hostile too.
        md.set_service_proxy(&format!(
            "{{\"api-version\":\"0.2\",\"service\":{{\"serving-ports\":[80]}},\"proxy-spec\":{{\"proxy-port\":15001,\"network\":\"net\\n\\u001b[2J{}\"}}}}",
            "x".repeat(50_000)
        ));
        let mut answers = AdminAnswers::healthy();
        // Disconnected, so that the log's failure is not contradicted by the stats.
        answers.stats = Arc::new(
            HEALTHY_STATS
                .replace("connected_state: 1", "connected_state: 0")
                .into_bytes(),
        );
        let mut info: serde_json::Value = serde_json::from_slice(&answers.server_info).unwrap();
        info["version"] = hostile_version().into();
        answers.server_info = Arc::new(serde_json::to_vec(&info).unwrap());
        let admin = StandInAdmin::start(answers);
        let (_cp, cp_addr) = reachable_control_plane();
        let dir = tempfile::tempdir().unwrap();
        // Failure lines with huge, control-laden messages in the followed log.
        let log = failure_lines(20);
        std::fs::write(dir.path().join("envoy.err.log"), &log).unwrap();
        let metrics = free_addr();
        let cmd = enforce_cmd(&md, &admin, dir.path(), metrics, &cp_addr);
        let mut agent = Daemon::start(cmd, dir);

        let version = eventually(ATTRIBUTE_WRITE_WAIT, "proxy-version", || {
            attr(&md, "proxy-version")
        });
        assert!(
            version.starts_with("9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL"),
            "{version:?}"
        );
        assert!(version.ends_with('…'), "{version:?}");
        // A finding raised from the hostile lines (its detail quotes them)...
        let l = agent.wait_log(Duration::from_secs(60), "a finding from the hostile lines", |l| {
            l.contains("pwn") && field(l, "finding").is_some()
        });
        let id = field(&l, "finding").unwrap();
        // ...and published.
        eventually(Duration::from_secs(90), "findings with the log's", || {
            attr(&md, "findings").filter(|f| f.contains(&id))
        });
        // Two more lines while it runs, through the follower.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(agent.log_dir().join("envoy.err.log"))
            .unwrap();
        std::io::Write::write_all(&mut f, failure_lines(2).as_bytes()).unwrap();
        drop(f);
        cycles_advance(metrics, 3, Duration::from_secs(30), "hostile inputs");
        assert!(agent.is_running());

        let writes = md.writes();
        assert!(writes.len() >= 3, "{writes:?}");
        for w in &writes {
            if let Some(v) = &w.value {
                assert!(
                    is_clean_value(v),
                    "{}: {} bytes: {:?}",
                    w.key,
                    v.len(),
                    v.get(..200.min(v.len()))
                );
            }
        }
        for (k, v) in md.guest_attributes(NS) {
            assert!(is_clean_value(&v), "{k}: {v:?}");
        }
        // The log shows the version bounded and on one line too.
        let l = agent.wait_log(Duration::from_secs(5), "Envoy Version", |l| {
            l.contains("Envoy Version: ")
        });
        let msg = field(&l, "message").unwrap();
        assert!(!msg.chars().any(char::is_control), "{msg:?}");
        assert!(msg.len() <= 16 << 10, "{} bytes", msg.len());
        for j in agent.json_lines() {
            for key in ["message", "detail"] {
                if let Some(m) = j[key].as_str() {
                    assert!(!m.chars().any(char::is_control), "{key}: {m:?}");
                    assert!(m.len() <= 16 << 10, "{key}: {} bytes", m.len());
                }
            }
        }
        assert!(agent.stop().0.success());
        Ok(())
    })
    .unwrap();
}

fn rsa_key_pem() -> String {
    let out = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA"])
        .args(["-pkeyopt", "rsa_keygen_bits:2048"])
        .output()
        .expect("openssl is needed to make a service-account key (apt-get install openssl)");
    assert!(out.status.success(), "openssl genpkey failed");
    String::from_utf8(out.stdout).unwrap()
}

const TOKEN: &str = "ya29.c.SPA-hostile-test-token-0123456789abcdef";
const MD_TOKEN: &str = "ya29.metadata-server-token-fedcba9876543210";

#[test]
fn no_token_in_logs_attributes_or_metrics() {
    let md = vm();
    md.set_token(MD_TOKEN);
    let token_endpoint = HttpStub::start(|r| {
        if r.path == "/token" {
            Reply::json(
                200,
                serde_json::json!({"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"})
                    .to_string(),
            )
        } else {
            Reply::text(404, "no")
        }
    });
    // Cloud Logging refuses every write and echoes the credentials it was sent in its error, as
    // a misbehaving proxy might.
    let logging = HttpStub::start(|r| {
        let auth = r.header("authorization").unwrap_or_default().to_owned();
        Reply::json(
            401,
            serde_json::json!({"error": {"code": 401, "message": format!("bad credentials: {auth} access_token={TOKEN}")}})
                .to_string(),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.json");
    std::fs::write(
        &key,
        serde_json::json!({
            "type": "service_account",
            "project_id": "demo-project",
            "private_key_id": "1",
            "private_key": rsa_key_pem(),
            "client_email": "spa@demo-project.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": format!("{}/token", token_endpoint.url()),
        })
        .to_string(),
    )
    .unwrap();
    let admin = StandInAdmin::start(AdminAnswers::healthy());
    let (_cp, cp_addr) = reachable_control_plane();
    let metrics = free_addr();
    let mut cmd = agent(&md.host(), dir.path());
    cmd.env("GOOGLE_APPLICATION_CREDENTIALS", &key)
        .args(["--cloud-logging", "on"])
        .args(["--cloud-logging-endpoint", &logging.url()])
        .args(["--interception", "off", "--poll-interval", "1s"])
        .args(["--envoy-admin", &admin.url()])
        .arg("--envoy-log-dir")
        .arg(dir.path())
        .args(["--metrics-addr", &metrics.to_string()])
        .args(["--control-plane", &cp_addr]);
    let mut agent = Daemon::start(cmd, tempfile::tempdir().unwrap());

    // The token is really in use: Cloud Logging got it, and refused it.
    eventually(Duration::from_secs(60), "a write to Cloud Logging", || {
        logging
            .requests()
            .iter()
            .any(|r| r.header("authorization") == Some(&format!("Bearer {TOKEN}")))
            .then_some(())
    });
    eventually(Duration::from_secs(30), "the refusal logged", || {
        agent
            .lines()
            .iter()
            .any(|l| l.contains("Cloud Logging") && l.contains("401"))
            .then_some(())
    });
    cycles_advance(metrics, 2, Duration::from_secs(30), "token test");
    eventually(ATTRIBUTE_WRITE_WAIT, "heartbeat", || {
        attr(&md, "agent-heartbeat")
    });
    let metrics_text = metrics_text(metrics);
    assert!(agent.is_running());
    agent.stop();

    let secrets = [
        TOKEN,
        MD_TOKEN,
        "SPA-hostile-test-token",
        "metadata-server-token",
    ];
    let mut places: Vec<(String, String)> = agent
        .lines()
        .into_iter()
        .map(|l| ("log".to_owned(), l))
        .collect();
    places.extend(
        md.writes()
            .into_iter()
            .filter_map(|w| w.value.map(|v| (format!("attribute {}", w.key), v))),
    );
    places.push(("/metrics".into(), metrics_text.clone()));
    // What the agent sent to Cloud Logging (entries, not headers).
    places.extend(
        logging
            .requests()
            .into_iter()
            .map(|r| ("Cloud Logging entry".to_owned(), r.body_text())),
    );
    for (place, text) in &places {
        for s in secrets {
            assert!(!text.contains(s), "token in {place}: {text}");
        }
    }
    assert!(metrics_text.contains("spa_cycles_total"), "{metrics_text}");
}

#[test]
fn remote_admin_and_metrics_need_permission() {
    let md = vm();
    let dir = tempfile::tempdir().unwrap();
    for (flags, named) in [
        (
            vec!["--envoy-admin", "http://10.1.2.3:15000"],
            "--allow-remote-admin",
        ),
        (
            vec!["--metrics-addr", "0.0.0.0:15091"],
            "--allow-remote-metrics",
        ),
        (
            vec!["--metrics-addr", "[::]:15091"],
            "--allow-remote-metrics",
        ),
    ] {
        let mut cmd = agent(&md.host(), dir.path());
        cmd.args(&flags).arg("run");
        let (out, _) = support::run(cmd, Duration::from_secs(20));
        assert!(!out.status.success(), "{flags:?} accepted");
        let err = support::stderr(&out);
        assert!(err.contains(named), "{flags:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// No shell, ever.

/// Programs the agent may execute (by the name it runs, or where the alternatives lead).
const ALLOWED: [&str; 6] = [
    "iptables-save",
    "ip6tables-save",
    "iptables-restore",
    "ip6tables-restore",
    "xtables-nft-multi",
    "xtables-legacy-multi",
];

/// The agent as `agent()` makes it, under strace (execve only).
fn traced(md: &MetadataEmulator, dir: &Path, trace: &Path) -> Command {
    support::under_strace(&agent(&md.host(), dir), trace)
}

fn assert_allowed(progs: &[String]) {
    for p in progs {
        let name = Path::new(p)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert!(ALLOWED.contains(&name), "the agent executed {p}");
        let real = std::fs::canonicalize(p).unwrap_or_else(|_| p.into());
        let real_name = real
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert!(ALLOWED.contains(&real_name), "{p} is {}", real.display());
        for sh in ["sh", "bash", "dash", "zsh", "busybox", "env"] {
            assert_ne!(real_name, sh, "{p}");
        }
    }
}

#[test]
fn no_program_but_iptables_is_ever_executed() {
    netns::in_new_netns(|| {
        let md = vm();
        let mut ranges = valid_ranges();
        ranges.extend(hostile_ranges());
        let admin = admin_with(&ranges);
        let (_cp, cp_addr) = reachable_control_plane();

        // doctor, enforce mode.
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("doctor.trace");
        let mut cmd = traced(&md, dir.path(), &trace);
        enforce_flags(&mut cmd, &admin.url(), dir.path(), &cp_addr).args(["doctor", "--json"]);
        let (out, _) = support::run(cmd, Duration::from_secs(60));
        assert!(out.status.code().is_some_and(|c| c < 2), "{out:?}");
        let progs = support::executed(&trace);
        assert!(
            progs.iter().any(|p| p.ends_with("iptables-save")),
            "doctor did not read iptables: {progs:?}"
        );
        assert_allowed(&progs);

        // The daemon, enforce mode: apply, a change of VIPs, a few cycles, stop.
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("run.trace");
        let metrics = free_addr();
        let mut cmd = traced(&md, dir.path(), &trace);
        enforce_flags(&mut cmd, &admin.url(), dir.path(), &cp_addr)
            .args(["--poll-interval", "1s"])
            .args(["--metrics-addr", &metrics.to_string()]);
        let mut run = Daemon::start(cmd, dir);
        eventually(Duration::from_secs(30), "VIP applied", || {
            all_rules().contains("-d 10.9.0.1/32").then_some(())
        });
        admin.set_listeners(&[range("10.9.0.2", 32)]);
        eventually(Duration::from_secs(30), "VIP changed", || {
            let s = all_rules();
            (s.contains("-d 10.9.0.2/32") && !s.contains("-d 10.9.0.1/32")).then_some(())
        });
        cycles_advance(metrics, 3, Duration::from_secs(30), "traced daemon");
        // SIGTERM to the agent (strace's child), then strace ends with it.
        let strace_pid = run.pid();
        let children =
            std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children"))
                .unwrap();
        let agent_pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent_pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        eventually(Duration::from_secs(15), "agent stopped", || {
            (!run.is_running()).then_some(())
        });
        let progs = support::executed(&run.dir.path().join("run.trace"));
        assert!(
            progs.iter().any(|p| p.ends_with("iptables-restore")),
            "the daemon never applied: {progs:?}"
        );
        assert_allowed(&progs);
        Ok(())
    })
    .unwrap();
}
