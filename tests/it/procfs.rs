//! The /proc observer on a fixture tree (tests/fixtures/proc/basic, see its README) and on the
//! live system with real Envoy processes (one as root, one as UID 65534).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use service_proxy_agent::observe::procfs::*;
use testkit::envoy::{Envoy, EnvoyConfig, minimal_bootstrap};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proc/basic")
}

fn hz() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64
}

#[test]
fn fixture_envoy_processes() {
    let ps = envoy_processes(&fixture()).unwrap();
    let pids: Vec<u32> = ps.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [100, 200, 400, 700], "{ps:#?}");

    let sidecar = &ps[0];
    assert_eq!(sidecar.uid, 1337);
    assert_eq!(sidecar.start_ticks, 12345);
    let expected = SystemTime::UNIX_EPOCH
        + Duration::from_secs(1_700_000_000)
        + Duration::from_secs_f64(12345.0 / hz() as f64);
    let got = sidecar.start_time.unwrap();
    let diff = got
        .duration_since(expected)
        .unwrap_or_else(|e| e.duration());
    assert!(diff < Duration::from_millis(1), "{got:?} vs {expected:?}");
    assert_eq!(
        sidecar.cmdline,
        "/usr/local/bin/envoy -c /etc/envoy/bootstrap.yaml --log-path /var/log/envoy/envoy.err.log"
    );
    assert_eq!(ps[1].uid, 0);
    assert_eq!(ps[2].uid, 1000);
    assert_eq!(ps[2].cmdline, "/srv/venv/bin/envoy -c /srv/b.json");

    let hostile = &ps[3];
    assert_eq!(hostile.start_ticks, 999, "fields counted from the last ')'");
    assert_eq!(hostile.uid, 42);
    assert!(!hostile.cmdline.contains('\n'));
    assert!(hostile.cmdline.starts_with("envoy --x "));
    assert!(hostile.cmdline.contains('\u{fffd}'));
}

#[test]
fn fixture_listeners_and_owners() {
    let root = fixture();
    let all = [100, 200, 400, 700];
    // 100's socket is found through its own net/tcp, 200's through the top-level tcp6.
    assert_eq!(process_listening_on(&root, 15000, &all), Some(100));
    assert_eq!(process_listening_on(&root, 15100, &all), Some(200));
    assert_eq!(process_listening_on(&root, 15000, &[200, 400]), None);
    // 100 also listens on 15001 (3A99) in its own namespace, invisible at the top level.
    assert_eq!(process_listening_on(&root, 15001, &all), Some(100));
    assert!(listen_sockets(&root, 15001).unwrap().is_empty());
    assert_eq!(process_listening_on(&root, 9999, &all), None);
    assert_eq!(process_listening_on(&root, 15000, &[]), None);

    let socks = listen_sockets(&root, 15000).unwrap();
    assert_eq!(socks.len(), 2, "{socks:?}");
    assert_eq!(socks[0].local.to_string(), "127.0.0.1");
    assert_eq!((socks[0].uid, socks[0].inode), (1337, 5001));
    assert_eq!(socks[1].local.to_string(), "::");
    assert_eq!((socks[1].uid, socks[1].inode), (99, 6002));
    let v6 = listen_sockets(&root, 15100).unwrap();
    assert_eq!(v6.len(), 1);
    assert_eq!(v6[0].local.to_string(), "::1");
    // The established connection on 15000 in 100's view is not a listener.
    let own = listen_sockets(&root.join("100"), 15000).unwrap();
    assert_eq!(own.iter().map(|s| s.inode).collect::<Vec<_>>(), [5001]);
}

#[test]
fn missing_roots() {
    let e = envoy_processes(Path::new("/nonexistent/proc")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/proc"), "{e}");
    assert!(listen_sockets(Path::new("/nonexistent/proc"), 1).is_err());
    assert_eq!(
        process_listening_on(Path::new("/nonexistent/proc"), 1, &[1]),
        None
    );
}

#[test]
fn users() {
    assert_eq!(resolve_user("root"), Some(0));
    assert_eq!(resolve_user("nobody"), Some(65534));
    assert_eq!(resolve_user("spa-no-such-user"), None);
    assert_eq!(resolve_user(""), None);
}

#[test]
fn live_envoy_processes() {
    let before = SystemTime::now() - Duration::from_secs(2);
    let root_envoy = Envoy::start(EnvoyConfig::new(minimal_bootstrap(
        "n-root",
        serde_json::json!({}),
    )))
    .expect("start real Envoy");
    let bootstrap = minimal_bootstrap("n-nobody", serde_json::json!({}));
    let mut cfg = EnvoyConfig::new(bootstrap);
    cfg.run_as = Some((65534, 65534));
    let nobody = Envoy::start(cfg).expect("start real Envoy as uid 65534");
    let after = SystemTime::now() + Duration::from_secs(2);

    let proc_root = Path::new("/proc");
    let ps = envoy_processes(proc_root).unwrap();
    let root_pid = root_envoy.pid().unwrap();
    let find = |pid: u32| {
        ps.iter()
            .find(|p| p.pid == pid)
            .unwrap_or_else(|| panic!("Envoy pid {pid} not found in {ps:#?}"))
    };
    let r = find(root_pid);
    assert_eq!(r.uid, 0);
    assert!(r.cmdline.contains(" -c "), "{}", r.cmdline);
    assert!(r.cmdline.contains("bootstrap.json"), "{}", r.cmdline);
    let n = find(nobody.pid().unwrap());
    assert_eq!(n.uid, 65534);
    for p in [r, n] {
        let t = p.start_time.expect("start time");
        assert!(t > before && t < after, "{t:?} not within the test");
    }

    // Which one serves which admin port: by its socket's inode among its file descriptors.
    let pids: Vec<u32> = ps.iter().map(|p| p.pid).collect();
    assert_eq!(
        process_listening_on(proc_root, root_envoy.admin_addr().port(), &pids),
        Some(root_pid)
    );
    assert_eq!(
        process_listening_on(proc_root, nobody.admin_addr().port(), &pids),
        nobody.pid()
    );
    // The socket's owner UID, readable even without access to the process's fds.
    let socks = listen_sockets(proc_root, nobody.admin_addr().port()).unwrap();
    assert_eq!(socks.len(), 1, "{socks:?}");
    assert_eq!(socks[0].uid, 65534);
    assert_eq!(socks[0].local.to_string(), "127.0.0.1");

    drop(nobody);
    let gone = envoy_processes(proc_root).unwrap();
    assert!(
        !gone.iter().any(|p| p.pid == n.pid),
        "stopped Envoy still listed"
    );
}
