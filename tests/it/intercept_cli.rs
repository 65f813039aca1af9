//! `intercept plan|apply|clear` through the real binary, inside a private network namespace.

use crate::support;
use crate::support_daemon::free_addr;

use std::time::Duration;

use support::{agent, run, stderr, stdout};
use testkit::envoy::Envoy;
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};
use testkit::netns;
use testkit::xds::{ControlPlane, InterceptionSpec, ServiceVip};

#[test]
fn plan_changes_nothing_apply_applies_clear_removes_only_ours() {
    netns::in_new_netns(|| {
        let vm = VmIdentity::default();
        let project = vm.project_number.to_string();
        let md = MetadataEmulator::start(vm)?;
        let cp = ControlPlane::start()?;
        cp.set_interception(
            &InterceptionSpec::new(15001, &project)
                .service(ServiceVip::parse("10.202.0.1:80").unwrap())
                .service(ServiceVip::parse("10.202.8.0/22:443").unwrap()),
        );
        let mut bootstrap = cp.bootstrap("default", &project);
        let admin = free_addr();
        bootstrap.admin = Some(admin);
        // Envoy as its own user: the agent programs only from an admin whose socket is the
        // Envoy user's (docs/contract.md#11-trust).
        let mut cfg = bootstrap.envoy_config();
        cfg.run_as = Some((1337, 1337));
        let envoy = Envoy::start(cfg)?;
        envoy.wait_live(Duration::from_secs(30))?;
        envoy.wait_until(Duration::from_secs(10), "VIPs", |e| {
            Ok(e.admin_get("/config_dump?resource=dynamic_listeners")?.1.contains("10.202.8.0"))
        })?;
        // A foreign setup that must survive.
        netns::restore(false, "*nat\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -d 10.9.9.9/32 -j RETURN\nCOMMIT\n")?;
        let dir = tempfile::tempdir()?;
        let cmd = |action: &str| {
            let mut c = agent(&md.host(), dir.path());
            c.args(["intercept", action])
                .args(["--envoy-admin", &format!("http://{admin}")])
                .args(["--envoy-user", "1337"]);
            c
        };
        let before = netns::save(false, Some("nat"))?;

        let (out, _) = run(cmd("plan"), Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let plan = stdout(&out);
        assert!(plan.contains("# iptables-restore --noflush"), "{plan}");
        assert!(plan.contains("-A SERVICE_PROXY_SERVICE_CIDRS -d 10.202.0.1/32 -j SERVICE_PROXY_REDIRECT"), "{plan}");
        assert!(plan.contains("-A SERVICE_PROXY_SERVICE_CIDRS -d 10.202.8.0/22 -j SERVICE_PROXY_REDIRECT"), "{plan}");
        assert!(plan.contains("--uid-owner 1337 -j RETURN"), "{plan}");
        assert!(plan.contains("-j REDIRECT --to-ports 15001"), "{plan}");
        // Compared without the `# Generated … on <time>` comments: the clock may tick between.
        assert_eq!(
            rules_of(&netns::save(false, Some("nat"))?),
            rules_of(&before),
            "plan changed iptables"
        );

        let (out, _) = run(cmd("apply"), Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains("iptables: applied"), "{}", stdout(&out));
        let applied = netns::save(false, Some("nat"))?;
        assert!(applied.contains("-A OUTPUT -p tcp -j SERVICE_PROXY_OUTPUT"), "{applied}");
        assert!(applied.contains("-A ISTIO_OUTPUT -d 10.9.9.9/32 -j RETURN"), "{applied}");
        let (out, _) = run(cmd("apply"), Duration::from_secs(30));
        assert!(stdout(&out).contains("already as wanted"), "{}", stdout(&out));

        let (out, _) = run(cmd("clear"), Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let cleared = netns::save(false, Some("nat"))?;
        assert!(!cleared.contains("SERVICE_PROXY"), "{cleared}");
        assert!(cleared.contains("-A OUTPUT -p tcp -j ISTIO_OUTPUT"), "{cleared}");
        assert!(cleared.contains("-A ISTIO_OUTPUT -d 10.9.9.9/32 -j RETURN"), "{cleared}");

        // iptables refuses: a foreign rule jumps into our chain, so it cannot be deleted.
        let (out, _) = run(cmd("apply"), Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(0));
        netns::iptables(false, &["-t", "nat", "-A", "ISTIO_OUTPUT", "-j", "SERVICE_PROXY_REDIRECT"])?;
        let (out, _) = run(cmd("clear"), Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(stderr(&out).contains("refused"), "{}", stderr(&out));
        Ok(())
    })
    .unwrap();
}

#[test]
fn plan_without_envoy_is_an_error_of_the_command() {
    let md = MetadataEmulator::start(VmIdentity::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = agent(&md.host(), dir.path());
    c.args([
        "intercept",
        "plan",
        "--envoy-admin",
        &format!("http://127.0.0.1:{}", support::closed_port()),
    ]);
    let (out, _) = run(c, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("listeners are unknown"),
        "{}",
        stderr(&out)
    );
}

/// A save without its comment lines (they carry the time of the save).
fn rules_of(save: &str) -> Vec<&str> {
    save.lines().filter(|l| !l.starts_with('#')).collect()
}
