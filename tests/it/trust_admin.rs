//! docs/contract.md#11-trust ("Trust"), the admin side: each attack of issue 15 made as the user who would make
//! it, against the agent run with exactly the unit's capabilities (`CAP_NET_ADMIN
//! CAP_NET_RAW CAP_DAC_READ_SEARCH`: no `CAP_SYS_PTRACE`, so Envoy's `/proc/<pid>/fd` is
//! closed to it), inside private network namespaces, with real iptables and real packets.

use crate::faults_common as faults;
use crate::support;
use crate::support_daemon as daemon;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daemon::{ATTRIBUTE_WRITE_WAIT, Daemon, eventually};
use faults::{AdminAnswers, MountNs, admin_with, listeners_dump, range};
use support::{agent, run, stderr, stdout};
use testkit::envoy::{Envoy, http_get};
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};
use testkit::netns::{self, Lab};
use testkit::xds::{ControlPlane, InterceptionSpec, ServiceVip};

/// The unit's capabilities, and nothing else, for a command run as root.
fn with_unit_caps(cmd: Command) -> Command {
    let mut setpriv = Command::new("setpriv");
    setpriv.args([
        "--bounding-set",
        "-all,+net_admin,+net_raw,+dac_read_search",
        "--inh-caps",
        "-all",
        "--",
    ]);
    support::run_through(setpriv, &cmd)
}

/// A process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const FAKE_ADMIN: &str = r#"
import ctypes, http.server, os, sys
ctypes.CDLL(None).prctl(15, b"envoy", 0, 0, 0)
d, port = sys.argv[1], int(sys.argv[2])
routes = [("/server_info", "server_info.json"), ("/config_dump", "listeners.json"),
          ("/clusters", "clusters.json"), ("/stats", "stats.txt")]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        for p, f in routes:
            if self.path.startswith(p):
                body = open(os.path.join(d, f), "rb").read()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        self.send_response(404)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

/// The attacker: a process of UID 65534 named `envoy` answering as Envoy's admin on
/// 127.0.0.1:`port` with listeners whose prefixes are `ranges`.
fn fake_admin(port: u16, ranges: &[serde_json::Value], files: &Path) -> Proc {
    use std::os::unix::fs::PermissionsExt;
    let a = AdminAnswers::healthy();
    std::fs::write(files.join("server_info.json"), &*a.server_info).unwrap();
    std::fs::write(files.join("clusters.json"), &*a.clusters).unwrap();
    std::fs::write(files.join("stats.txt"), &*a.stats).unwrap();
    std::fs::write(files.join("listeners.json"), listeners_dump(ranges)).unwrap();
    std::fs::write(files.join("admin.py"), FAKE_ADMIN).unwrap();
    for e in std::fs::read_dir(files).unwrap() {
        std::fs::set_permissions(e.unwrap().path(), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    std::fs::set_permissions(files, std::fs::Permissions::from_mode(0o755)).unwrap();
    let child = Command::new("python3")
        .arg0("envoy")
        .arg(files.join("admin.py"))
        .arg(files)
        .arg(port.to_string())
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .spawn()
        .expect("python3 (tests/setup-system.sh) for the attacker's fake admin");
    let p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(SocketAddr::from(([127, 0, 0, 1], port)), "/server_info").is_err() {
        assert!(Instant::now() < deadline, "the fake admin never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

fn free_port() -> u16 {
    support::closed_port()
}

fn nat(v6: bool) -> String {
    netns::save(v6, Some("nat")).unwrap()
}

/// Issue 15 item 1: a UID-65534 process named `envoy` answers on the admin port while Envoy is
/// down, with prefixes covering everything. The agent programs nothing and says why.
#[test]
fn a_fake_admin_of_another_user_is_never_programmed_from() {
    netns::in_new_netns(|| {
        let lab = Lab::new()?;
        lab.route_to_peer("10.205.0.0/24")?;
        let _peer = lab.serve_on_peer("10.205.0.1".parse()?, 80, "peer\n")?;
        let md = MetadataEmulator::start(VmIdentity::default())?;
        let files = tempfile::tempdir()?;
        let port = free_port();
        let _attacker = fake_admin(
            port,
            &[
                range("0.0.0.0", 1),
                range("128.0.0.0", 1),
                range("10.205.0.1", 32),
            ],
            files.path(),
        );
        let (_cp, cp_addr) = faults::reachable_control_plane();

        // The daemon, Envoy's user given (1337): the socket is 65534's.
        let dir = tempfile::tempdir()?;
        let metrics = faults::free_addr();
        let mut cmd = agent(&md.host(), dir.path());
        cmd.args(["--interception", "enforce", "--poll-interval", "1s"])
            .args(["--envoy-admin", &format!("http://127.0.0.1:{port}")])
            .arg("--envoy-log-dir")
            .arg(dir.path())
            .args(["--envoy-user", "1337", "--control-plane", &cp_addr])
            .args(["--metrics-addr", &metrics.to_string()]);
        let d = Daemon::start(with_unit_caps(cmd), dir);
        let line = d.wait_log(Duration::from_secs(30), "why nothing is programmed", |l| {
            l.contains("is not trusted")
        });
        assert!(
            line.contains(&format!("127.0.0.1:{port} belongs to uid 65534"))
                && line.contains("not to the Envoy user (uid 1337"),
            "{line}"
        );
        // Two more cycles: still nothing.
        faults::cycles_advance(metrics, 2, Duration::from_secs(30), "the agent's loop");
        let rules = nat(false);
        assert!(!rules.contains("SERVICE_PROXY"), "{rules}");
        // Root's connections go where they are addressed.
        assert_eq!(
            http_get(SocketAddr::from(([10, 205, 0, 1], 80)), "/")
                .map(|r| r.1)
                .ok(),
            Some("peer\n".into())
        );
        let failure = eventually(ATTRIBUTE_WRITE_WAIT, "agent-last-failure", || {
            faults::attr(&md, "agent-last-failure").filter(|v| v.contains("not trusted"))
        });
        assert!(failure.contains("uid 65534"), "{failure}");
        drop(d);

        // No --envoy-user, a system user named envoy (1337): the attacker's process is named
        // envoy, but its UID is not the Envoy user's.
        let passwd = tempfile::NamedTempFile::new()?;
        let mut text = std::fs::read_to_string("/etc/passwd")?;
        text.push_str("envoy:x:1337:1337:Envoy:/nonexistent:/usr/sbin/nologin\n");
        std::fs::write(passwd.path(), text)?;
        let mnt = MountNs::new()?;
        mnt.bind(passwd.path(), "/etc/passwd")?;
        let dir = tempfile::tempdir()?;
        let mut cmd = agent(&md.host(), dir.path());
        cmd.args(["intercept", "apply"])
            .args(["--envoy-admin", &format!("http://127.0.0.1:{port}")]);
        let cmd = with_unit_caps(cmd);
        let (out, _) = mnt.run(move || run(cmd, Duration::from_secs(60)));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("belongs to uid 65534, not to the user envoy (uid 1337)"),
            "{}",
            stderr(&out)
        );
        let rules = nat(false);
        assert!(!rules.contains("SERVICE_PROXY"), "{rules}");
        Ok(())
    })
    .unwrap();
}

/// Issue 15 item 2: a decoy `exec -a envoy sleep` of another UID, older than Envoy (the
/// lowest PID named envoy). The UID excluded, and the one `INTERCEPTION_LOOP` judges by, is
/// the admin socket's owner.
#[test]
fn the_excluded_uid_is_the_admin_sockets_owner_not_a_decoys() {
    netns::in_new_netns(|| {
        let decoy = Proc(
            Command::new("sleep")
                .arg0("envoy")
                .arg("600")
                .uid(4242)
                .gid(4242)
                .stdin(Stdio::null())
                .spawn()?,
        );
        let vm = VmIdentity::default();
        let project = vm.project_number.to_string();
        let md = MetadataEmulator::start(vm)?;
        let cp = ControlPlane::start()?;
        cp.set_interception(
            &InterceptionSpec::new(15001, &project)
                .service(ServiceVip::parse("10.206.0.1:80").unwrap()),
        );
        let mut bootstrap = cp.bootstrap("default", &project);
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        bootstrap.admin = Some(admin);
        let mut cfg = bootstrap.envoy_config();
        cfg.run_as = Some((65534, 65534));
        let envoy = Envoy::start(cfg)?;
        envoy.wait_live(Duration::from_secs(30))?;
        envoy.wait_until(Duration::from_secs(15), "the VIP", |e| {
            Ok(e.admin_get("/config_dump?resource=dynamic_listeners")?
                .1
                .contains("10.206.0.1"))
        })?;
        let dir = tempfile::tempdir()?;
        let base = |args: &[&str]| {
            let mut c = agent(&md.host(), dir.path());
            c.args(args)
                .args(["--envoy-admin", &format!("http://{admin}")])
                .arg("--envoy-log-dir")
                .arg(envoy.dir())
                .args(["--control-plane", &cp.addr().to_string()]);
            with_unit_caps(c)
        };
        let (out, _) = run(base(&["intercept", "plan"]), Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let plan = stdout(&out);
        assert!(
            plan.contains("-m owner --uid-owner 65534 -j RETURN"),
            "{plan}"
        );
        assert!(!plan.contains("4242"), "{plan}");

        // Rules that exclude the decoy's UID, not Envoy's: Envoy's own traffic loops.
        let restore: String = plan
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.replace("--uid-owner 65534", "--uid-owner 4242") + "\n")
            .collect();
        netns::restore(false, &restore)?;
        let (out, _) = run(
            base(&["doctor", "--json", "--interception", "verify"]),
            Duration::from_secs(120),
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
        let ids: Vec<&str> = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["id"].as_str())
            .collect();
        assert!(ids.contains(&"INTERCEPTION_LOOP"), "{report:#}");
        drop(decoy);
        Ok(())
    })
    .unwrap();
}

/// Issue 15 item 11: a user's own `SERVICE_PROXY_FOO`, referenced from their chain, and an
/// unreferenced `SERVICE_PROXY_BAR`: apply and clear work and leave both alone.
#[test]
fn a_users_own_service_proxy_chains_are_left_alone() {
    netns::in_new_netns(|| {
        let md = MetadataEmulator::start(VmIdentity::default())?;
        let admin = admin_with(&[range("10.207.0.1", 32)]);
        let mine = "*nat\n:SERVICE_PROXY_FOO - [0:0]\n:SERVICE_PROXY_BAR - [0:0]\n:MINE - [0:0]\n\
                    -A OUTPUT -j MINE\n-A MINE -j SERVICE_PROXY_FOO\n\
                    -A SERVICE_PROXY_FOO -d 10.9.9.9/32 -j RETURN\nCOMMIT\n";
        netns::restore(false, mine)?;
        let dir = tempfile::tempdir()?;
        let cmd = |action: &str| {
            let mut c = agent(&md.host(), dir.path());
            c.args(["intercept", action])
                .args(["--envoy-admin", &admin.url()])
                .args(["--envoy-user", faults::ENVOY_UID]);
            with_unit_caps(c)
        };
        let theirs = |rules: &str| {
            for l in [
                ":SERVICE_PROXY_FOO",
                ":SERVICE_PROXY_BAR",
                "-A MINE -j SERVICE_PROXY_FOO",
                "-A SERVICE_PROXY_FOO -d 10.9.9.9/32 -j RETURN",
            ] {
                assert!(rules.contains(l), "{l} missing:\n{rules}");
            }
        };
        for _ in 0..2 {
            let (out, _) = run(cmd("apply"), Duration::from_secs(60));
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}{}",
                stdout(&out),
                stderr(&out)
            );
            let rules = nat(false);
            assert!(
                rules.contains(
                    "-A SERVICE_PROXY_SERVICE_CIDRS -d 10.207.0.1/32 -j SERVICE_PROXY_REDIRECT"
                ),
                "{rules}"
            );
            theirs(&rules);
        }
        let (out, _) = run(cmd("clear"), Duration::from_secs(60));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        let rules = nat(false);
        assert!(!rules.contains("SERVICE_PROXY_OUTPUT"), "{rules}");
        assert!(!rules.contains("SERVICE_PROXY_SERVICE_CIDRS"), "{rules}");
        theirs(&rules);
        Ok(())
    })
    .unwrap();
}

/// Issue 15 item 10: with intercept-all-outbound and Envoy down (nothing on the proxy port),
/// everyone else's outbound TCP is redirected (and fails), but the agent's own requests to
/// the metadata server (here on the far side of a veth, not loopback) still get through.
#[test]
fn the_agents_own_traffic_is_never_redirected() {
    netns::in_new_netns(|| {
        let lab = Lab::new()?;
        let md_addr = SocketAddr::new(IpAddr::V4(lab.peer_v4), 80);
        let md = lab
            .peer
            .run(move || MetadataEmulator::start_on(md_addr, VmIdentity::default()))?;
        md.set_service_proxy(
            r#"{"api-version":"0.2","service":{"serving-ports":[]},"proxy-spec":{"proxy-port":15001,"network":""},"traffic-interception":{"intercept-all-outbound":true}}"#,
        );
        let other = SocketAddr::new(IpAddr::V4(lab.peer_v4), 8080);
        let _other = netns::serve_http_in(&lab.peer, other, "peer\n")?;
        let admin = admin_with(&[range("10.208.0.1", 32)]);
        let (_cp, cp_addr) = faults::reachable_control_plane();
        let dir = tempfile::tempdir()?;
        let mut cmd = agent(&md.host(), dir.path());
        cmd.args(["--interception", "enforce", "--poll-interval", "1s"])
            .args(["--envoy-admin", &admin.url()])
            .arg("--envoy-log-dir")
            .arg(dir.path())
            .args(["--envoy-user", faults::ENVOY_UID, "--control-plane", &cp_addr]);
        let d = Daemon::start(with_unit_caps(cmd), dir);
        eventually(Duration::from_secs(30), "intercept-all rules", || {
            nat(false)
                .contains("-A SERVICE_PROXY_OUTPUT -j SERVICE_PROXY_REDIRECT")
                .then_some(())
        });
        // Interception is on: root's (unmarked) connection is redirected to the dead proxy.
        assert!(http_get(other, "/").is_err(), "not intercepted:\n{}", nat(false));
        // The agent's metadata reads after that reach the server.
        let from = md.requests().len();
        eventually(Duration::from_secs(30), "the agent's metadata requests", || {
            (md.requests().len() >= from + 5).then_some(())
        });
        assert!(
            !d.lines().iter().any(|l| l.contains("cannot read the VM's metadata")),
            "{}\nrequests since the rules: {:?}",
            d.lines().join("\n"),
            md.requests().iter().skip(from).map(|r| format!("{} {} {}", r.peer, r.method, r.path)).collect::<Vec<_>>()
        );
        // (Before the fix the agent lost the metadata, planned without intercept-all and the
        // rules flapped; they stay.)
        let rules = nat(false);
        assert!(rules.contains("-A SERVICE_PROXY_OUTPUT -j SERVICE_PROXY_REDIRECT"), "{rules}");
        assert!(rules.contains("-A SERVICE_PROXY_OUTPUT -m mark --mark 0x53000000 -j RETURN"), "{rules}");
        assert!(rules.contains("-A SERVICE_PROXY_OUTPUT -d 169.254.169.254/32 -j RETURN"), "{rules}");
        Ok(())
    })
    .unwrap();
}

/// Issue 15 item 12: something accepts on the admin port and never answers, and no process
/// named envoy is visible (the agent in a PID namespace of its own, as with Envoy in a
/// container): ENVOY_ADMIN_UNREACHABLE, not ENVOY_NOT_RUNNING.
#[test]
fn a_silent_admin_without_a_visible_envoy_is_unreachable() {
    let md = MetadataEmulator::start(VmIdentity::default()).unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = agent(&md.host(), dir.path());
    c.args(["doctor", "--json", "--interception", "off"])
        .args(["--envoy-admin", &format!("http://{addr}")])
        .arg("--envoy-log-dir")
        .arg(dir.path())
        .args(["--control-plane", &addr.to_string()]);
    let c = with_unit_caps(c);
    let mut u = Command::new("unshare");
    u.args(["--pid", "--fork", "--mount-proc", "--"])
        .arg(c.get_program())
        .args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => u.env(k, v),
            None => u.env_remove(k),
        };
    }
    let (out, _) = run(u, Duration::from_secs(60));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    let ids: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert!(ids.contains(&"ENVOY_ADMIN_UNREACHABLE"), "{report:#}");
    assert!(!ids.contains(&"ENVOY_NOT_RUNNING"), "{report:#}");
    assert_eq!(report["observed"]["proxy_state"], "UNREACHABLE");
    drop(silent);
}

/// Issue 15 item 9: an admin naming more VIPs than the cap (10,000) gets nothing programmed,
/// and the command says why.
#[test]
fn more_vips_than_the_cap_are_not_programmed() {
    netns::in_new_netns(|| {
        let md = MetadataEmulator::start(VmIdentity::default())?;
        let ranges: Vec<serde_json::Value> = (0..10_001u32)
            .map(|i| range(&format!("10.{}.{}.1", i / 256, i % 256), 32))
            .collect();
        let admin = admin_with(&ranges);
        let dir = tempfile::tempdir()?;
        let mut c = agent(&md.host(), dir.path());
        c.args(["intercept", "apply"])
            .args(["--envoy-admin", &admin.url()])
            .args(["--envoy-user", faults::ENVOY_UID]);
        let (out, _) = run(with_unit_caps(c), Duration::from_secs(60));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("name 10001 VIPs, more than the 10000 the agent programs"),
            "{}",
            stderr(&out)
        );
        let rules = nat(false);
        assert!(!rules.contains("SERVICE_PROXY"), "{rules}");
        Ok(())
    })
    .unwrap();
}

/// Issue 15 item 20: systemd's watchdog is fed while a cycle waits out its deadlines (here an
/// admin that never answers /server_info: 5 s per cycle, past a 2 s watchdog), as it would be
/// through a worst-case cycle of ~80 s under `WatchdogSec=60`.
#[test]
fn the_watchdog_is_fed_while_a_slow_cycle_waits() {
    let md = MetadataEmulator::start(VmIdentity::default()).unwrap();
    let admin = faults::StandInAdmin::start(AdminAnswers::healthy());
    admin.set(faults::Endpoint::ServerInfo, faults::AdminFault::Hang);
    let notify_dir = tempfile::tempdir().unwrap();
    let path = notify_dir.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let watchdog = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = agent(&md.host(), dir.path());
    cmd.args(["--interception", "off", "--poll-interval", "1s"])
        .args(["--envoy-admin", &admin.url()])
        .arg("--envoy-log-dir")
        .arg(dir.path())
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string());
    let d = Daemon::start(with_unit_caps(cmd), dir);
    let mut feeds: Vec<Instant> = Vec::new();
    let mut ready = None;
    let end = Instant::now() + Duration::from_secs(14);
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l == "READY=1") {
                ready.get_or_insert(Instant::now());
            }
            if msg.lines().any(|l| l == "WATCHDOG=1") {
                feeds.push(Instant::now());
            }
        }
    }
    let ready = ready.expect("READY=1 never came");
    assert!(
        admin.hits(faults::Endpoint::ServerInfo) >= 2,
        "the cycles never asked the admin"
    );
    let mut last = ready;
    for f in feeds.iter().filter(|f| **f >= ready) {
        assert!(
            f.duration_since(last) <= watchdog,
            "no WATCHDOG=1 for {:?} (watchdog {watchdog:?}); feeds at {:?}",
            f.duration_since(last),
            feeds
                .iter()
                .map(|f| f.duration_since(ready))
                .collect::<Vec<_>>()
        );
        last = *f;
    }
    assert!(
        end.duration_since(last) <= watchdog + Duration::from_millis(300),
        "the feeding stopped"
    );
    drop(d);
}

/// Issue 14's first defect: the daemon's `interception` failure (a plan it cannot make, here
/// more VIPs than the cap) was never cleared, so its recovery was never logged and a second
/// occurrence, after the plan had worked again, was silently dropped.
#[test]
fn an_interception_failure_recovers_and_is_reported_again_when_it_returns() {
    netns::in_new_netns(|| {
        let md = MetadataEmulator::start(VmIdentity::default())?;
        let too_many: Vec<serde_json::Value> = (0..10_001u32)
            .map(|i| range(&format!("10.{}.{}.1", i / 256, i % 256), 32))
            .collect();
        let admin = admin_with(&too_many);
        let dir = tempfile::tempdir()?;
        let mut cmd = agent(&md.host(), dir.path());
        cmd.args(["--interception", "enforce", "--poll-interval", "1s"])
            .args(["--envoy-admin", &admin.url()])
            .args(["--envoy-user", faults::ENVOY_UID])
            .args(["--metrics-addr", "off", "--cloud-checks", "off"])
            .args(["--control-plane", "127.0.0.1:9"])
            .arg("--envoy-log-dir")
            .arg(dir.path());
        let d = Daemon::start(with_unit_caps(cmd), dir);
        let failed = |l: &str| {
            l.contains("\"source\":\"interception\"") && l.contains("more than the 10000")
        };
        d.wait_log(Duration::from_secs(30), "the cap's failure", failed);

        admin.set_listeners(&[range("10.209.0.1", 32)]);
        d.wait_log(Duration::from_secs(30), "the recovery", |l| {
            l.contains("\"source\":\"interception\"") && l.contains("recovered")
        });
        eventually(Duration::from_secs(30), "the VIP programmed", || {
            nat(false)
                .contains("-A SERVICE_PROXY_SERVICE_CIDRS -d 10.209.0.1/32")
                .then_some(())
        });

        admin.set_listeners(&too_many);
        eventually(Duration::from_secs(30), "the failure logged again", || {
            (d.lines().iter().filter(|l| failed(l)).count() == 2).then_some(())
        });
        Ok(())
    })
    .unwrap();
}
