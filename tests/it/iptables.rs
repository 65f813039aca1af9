//! The iptables observer and the verify-side checks against real iptables output: fixtures
//! captured from Debian's iptables 1.8.9 (nf_tables) in private namespaces
//! (`tests/fixtures/iptables/capture.sh`), a live check that this machine's iptables still
//! prints exactly that, and each interception finding produced from a real ruleset.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use service_proxy_agent::diagnose::interception::{
    IPV6_MODULES_REMEDIATION, InterceptionInput, check,
};
use service_proxy_agent::finding::{Finding, FindingId};
use service_proxy_agent::observe::iptables::{
    self as ipt, Family, IptablesError, Neg, Owner, PortRange, Ruleset, Target, Tools, parse_save,
};
use testkit::netns;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures().join("iptables").join(name)).unwrap()
}

fn golden(name: &str) -> String {
    std::fs::read_to_string(fixtures().join("intercept").join(name)).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// How each `.save` fixture is made (mirrors capture.sh): (file, IPv6?, table, inputs).
fn recipes() -> Vec<(&'static str, bool, Option<&'static str>, Vec<String>)> {
    let f = fixture;
    let g = golden;
    vec![
        (
            "guide_istio_literal.save",
            false,
            Some("nat"),
            vec![f("guide_istio_literal.rules")],
        ),
        (
            "istio_complete.save",
            false,
            Some("nat"),
            vec![f("istio_complete.rules")],
        ),
        (
            "kitchen_sink.save",
            false,
            None,
            vec![f("kitchen_sink.rules")],
        ),
        (
            "kitchen_sink_v6.save",
            true,
            None,
            vec![f("kitchen_sink_v6.rules")],
        ),
        (
            "repair_state.save",
            false,
            Some("nat"),
            vec![f("repair_state.rules")],
        ),
        (
            "agent_v4.save",
            false,
            Some("nat"),
            vec![g("basic_v4.restore")],
        ),
        (
            "agent_dual_v4.save",
            false,
            Some("nat"),
            vec![g("dual_v4.restore")],
        ),
        (
            "agent_dual_v6.save",
            true,
            Some("nat"),
            vec![g("dual_v6.restore")],
        ),
        (
            "agent_with_istio.save",
            false,
            Some("nat"),
            vec![f("istio_complete.rules"), g("basic_v4.restore")],
        ),
        (
            "agent_firewall.save",
            false,
            None,
            vec![g("basic_v4.restore"), f("firewall.rules")],
        ),
    ]
}

/// A chain as (name, policy, rules with their meaning and text).
type ChainShape = (String, Option<String>, Vec<String>);

/// Tables, chains and rules with their meaning and text, for comparing two saves.
fn shape(rs: &Ruleset) -> Vec<(String, Vec<ChainShape>)> {
    rs.tables
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.chains
                    .iter()
                    .map(|c| {
                        (
                            c.name.clone(),
                            c.policy.clone(),
                            c.rules
                                .iter()
                                .map(|r| format!("{} {:?}", r.text, r.spec))
                                .collect(),
                        )
                    })
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn every_fixture_parses_without_loss() {
    for (name, ..) in recipes() {
        let text = fixture(name);
        let rs = parse_save(&text);
        assert!(rs.unparsed.is_empty(), "{name}: {:?}", rs.unparsed);
        assert!(
            !rs.tables.is_empty() && rs.tables.iter().all(|t| t.committed),
            "{name}"
        );
        let rules: usize = rs
            .tables
            .iter()
            .flat_map(|t| &t.chains)
            .map(|c| c.rules.len())
            .sum();
        assert_eq!(
            rules,
            text.lines().filter(|l| l.starts_with("-A ")).count(),
            "{name}"
        );
    }
}

#[test]
fn kitchen_sink_is_understood() {
    let rs = parse_save(&fixture("kitchen_sink.save"));
    let names: Vec<&str> = rs.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["mangle", "raw", "filter", "nat"]);
    let nat = rs.table("nat").unwrap();
    let out = &nat.chain("OUTPUT").unwrap().rules;
    // `--uid-owner nobody` is printed numerically by iptables-save.
    assert!(
        out.iter()
            .any(|r| r.spec.uid_owner == Some(Neg::new(Owner::Range(65534, 65534))))
    );
    assert_eq!(out[0].spec.comment.as_deref(), Some("hi there \"q\""));
    assert_eq!(
        out[0].spec.dports.as_ref().unwrap().value,
        vec![
            PortRange::single(80),
            PortRange {
                first: 90,
                last: 95
            }
        ]
    );
    // `-p 6` comes back as tcp, the dotted mask as a prefix.
    assert_eq!(out[1].spec.protocol.as_ref().unwrap().value, "tcp");
    assert_eq!(
        out[2].spec.destination.as_ref().unwrap().value.to_string(),
        "10.0.0.0/16"
    );
    let redirect = out.iter().find(|r| r.spec.to_ports.is_some()).unwrap();
    assert_eq!(
        redirect.spec.to_ports,
        Some(PortRange {
            first: 15001,
            last: 15003
        })
    );
    assert!(
        out.iter()
            .any(|r| r.spec.target == Some(Target::Goto("NAMED.chain-1".into())))
    );
    let ct = out.iter().find(|r| r.spec.ct_state().is_some()).unwrap();
    assert_eq!(
        ct.spec.ct_state().unwrap().value,
        vec!["NEW", "ESTABLISHED"]
    );
    let addrtype = out.iter().find(|r| r.text.contains("addrtype")).unwrap();
    assert_eq!(
        addrtype.spec.other,
        vec!["-m", "addrtype", "--dst-type", "LOCAL"]
    );
    let filter = rs.table("filter").unwrap();
    assert_eq!(
        filter.chain("INPUT").unwrap().policy.as_deref(),
        Some("DROP")
    );
    let reject = filter
        .chain("INPUT")
        .unwrap()
        .rules
        .iter()
        .find(|r| r.spec.target == Some(Target::Jump("REJECT".into())))
        .unwrap();
    assert_eq!(
        reject.spec.target_options(),
        vec!["--reject-with", "tcp-reset"]
    );
    assert!(reject.spec.other.is_empty());
    let log = filter.chain("INPUT").unwrap().rules.last().unwrap();
    assert_eq!(log.spec.target_options(), vec!["--log-prefix", "in drop: "]);

    let v6 = parse_save(&fixture("kitchen_sink_v6.save"));
    let out6 = &v6.table("nat").unwrap().chain("OUTPUT").unwrap().rules;
    assert_eq!(
        out6[0].spec.destination.as_ref().unwrap().value.to_string(),
        "fd00:10::/64"
    );
    assert!(out6[1].spec.destination.as_ref().unwrap().negated);
}

#[test]
fn hostile_lines_inside_real_output_lose_nothing_else() {
    let real = fixture("agent_with_istio.save");
    let clean = parse_save(&real);
    let mut hostile = String::new();
    for line in real.lines() {
        hostile.push_str(line);
        hostile.push('\n');
        if line.starts_with("-A ") {
            hostile.push_str("-A OUTPUT -d 10.0.0.0/255.0.255.0 -j RETURN\n");
            hostile.push_str("-A ISTIO_OUTPUT \"unterminated\n");
            hostile.push_str("\u{0}\u{1b}[31m\u{feff}garbage\n");
        }
    }
    hostile.push_str(&"-A OUTPUT ".repeat(20_000));
    let rs = parse_save(&hostile);
    let kept: usize = rs
        .tables
        .iter()
        .flat_map(|t| &t.chains)
        .map(|c| c.rules.len())
        .sum();
    let want: usize = clean
        .tables
        .iter()
        .flat_map(|t| &t.chains)
        .map(|c| c.rules.len())
        .sum();
    assert_eq!(kept, want);
    assert!(rs.unparsed.len() + rs.unparsed_dropped >= 3 * want);
    assert!(
        rs.unparsed
            .iter()
            .all(|u| !u.text.contains('\u{1b}') && !u.text.contains('\u{0}'))
    );
    assert_eq!(rs.unparsed[1].chain.as_deref(), None); // unterminated quote: no chain known
}

#[test]
fn fixtures_are_what_this_iptables_prints() {
    for (name, v6, table, inputs) in recipes() {
        let live = netns::in_new_netns(move || {
            for text in &inputs {
                netns::restore(v6, text)?;
            }
            netns::save(v6, table)
        })
        .unwrap();
        assert_eq!(
            shape(&parse_save(&live)),
            shape(&parse_save(&fixture(name))),
            "{name} no longer matches this machine's iptables; rerun tests/fixtures/iptables/capture.sh\n{live}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Findings from real rulesets.

struct Scene {
    v4: Result<Ruleset, IptablesError>,
    v6: Option<Result<Ruleset, IptablesError>>,
}

/// Loads `v4`/`v6` restore inputs into a fresh namespace and reads them back with the
/// agent's own runner (all tables).
fn scene(v4: Vec<String>, v6: Vec<String>, tools: Tools) -> Scene {
    netns::in_new_netns(move || {
        for t in &v4 {
            netns::restore(false, t)?;
        }
        for t in &v6 {
            netns::restore(true, t)?;
        }
        let rt = runtime();
        Ok(Scene {
            v4: rt.block_on(ipt::save(&tools, Family::V4, None)),
            v6: Some(rt.block_on(ipt::save(&tools, Family::V6, None))),
        })
    })
    .unwrap()
}

fn findings(s: &Scene, vips: &[&str], ports: &[u16], uid: u32) -> Vec<Finding> {
    let vips: Vec<IpNet> = vips.iter().map(|v| v.parse().unwrap()).collect();
    check(&InterceptionInput {
        v4: s.v4.as_ref(),
        v6: s.v6.as_ref().map(Result::as_ref),
        vips: &vips,
        serving_ports: ports,
        envoy_uid: Some(uid),
        has_interception_listener: true,
        proxy_port: Some(15001),
    })
}

fn ids(f: &[Finding]) -> Vec<FindingId> {
    f.iter().map(|f| f.id).collect()
}

#[test]
fn real_rulesets_agent_and_manual_setups_are_clean() {
    let s = scene(
        vec![golden("dual_v4.restore")],
        vec![golden("dual_v6.restore")],
        Tools::system(),
    );
    let f = findings(
        &s,
        &["10.0.0.1/32", "10.7.240.20/32", "fd00:10::1/128"],
        &[80, 8080],
        1006,
    );
    assert!(f.is_empty(), "{f:#?}");
    let s = scene(
        vec![fixture("istio_complete.rules")],
        vec![],
        Tools::system(),
    );
    assert!(findings(&s, &["10.0.0.1/32"], &[80], 1006).is_empty());
    let s = scene(
        vec![fixture("istio_complete.rules"), golden("basic_v4.restore")],
        vec![],
        Tools::system(),
    );
    assert!(findings(&s, &["10.0.0.1/32", "10.7.240.1/32"], &[80, 8080], 1006).is_empty());
}

#[test]
fn real_rulesets_interception_missing() {
    let s = scene(vec![], vec![], Tools::system());
    let f = findings(&s, &["10.0.0.1/32"], &[], 1006);
    assert_eq!(ids(&f), vec![FindingId::InterceptionMissing]);
}

#[test]
fn real_rulesets_service_not_intercepted_guide_example_as_printed() {
    let s = scene(
        vec![fixture("guide_istio_literal.rules")],
        vec![],
        Tools::system(),
    );
    let f = findings(&s, &["10.0.0.1/32"], &[], 1006);
    assert_eq!(ids(&f), vec![FindingId::ServiceNotIntercepted]);
    assert_eq!(
        f[0].detail,
        "VIPs not redirected to port 15001: 10.0.0.1/32"
    );
    // And a VIP our chains do not have yet.
    let s = scene(vec![golden("basic_v4.restore")], vec![], Tools::system());
    let f = findings(&s, &["10.0.0.1/32", "10.9.9.9/32"], &[80], 1006);
    assert_eq!(ids(&f), vec![FindingId::ServiceNotIntercepted]);
    assert!(f[0].detail.ends_with(": 10.9.9.9/32"), "{}", f[0].detail);
}

#[test]
fn real_rulesets_interception_loop() {
    let s = scene(vec![golden("basic_v4.restore")], vec![], Tools::system());
    let f = findings(&s, &["10.0.0.1/32"], &[80], 2000);
    assert_eq!(ids(&f), vec![FindingId::InterceptionLoop]);
    assert!(
        f[0].detail.contains("UID 2000") && f[0].detail.ends_with("UIDs excluded: 1006"),
        "{}",
        f[0].detail
    );
}

#[test]
fn real_rulesets_inbound_not_intercepted_and_blocked() {
    let s = scene(vec![golden("basic_v4.restore")], vec![], Tools::system());
    let f = findings(&s, &["10.0.0.1/32"], &[80, 443], 1006);
    assert_eq!(ids(&f), vec![FindingId::InboundPortNotIntercepted]);
    assert!(f[0].detail.ends_with(": 443"), "{}", f[0].detail);

    let s = scene(
        vec![golden("basic_v4.restore"), fixture("firewall.rules")],
        vec![],
        Tools::system(),
    );
    let f = findings(&s, &["10.0.0.1/32"], &[80], 1006);
    assert_eq!(ids(&f), vec![FindingId::InboundPortBlocked]);
    assert_eq!(
        f[0].detail,
        "port 80: redirected to 15001, which filter INPUT drops (chain policy DROP)"
    );

    let raw_drop = "*raw\n-A PREROUTING -p tcp --dport 80 -j DROP\nCOMMIT\n".to_owned();
    let s = scene(
        vec![golden("basic_v4.restore"), raw_drop],
        vec![],
        Tools::system(),
    );
    let f = findings(&s, &["10.0.0.1/32"], &[80], 1006);
    assert_eq!(ids(&f), vec![FindingId::InboundPortBlocked]);
    assert!(
        f[0].detail.contains(
            "dropped in raw PREROUTING by `-A PREROUTING -p tcp -m tcp --dport 80 -j DROP`"
        ),
        "{}",
        f[0].detail
    );
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn real_rulesets_iptables_unavailable() {
    // iptables-save missing: a real spawn of a path that does not exist.
    let mut tools = Tools::system();
    tools.save_v4 = "/nonexistent/sbin/iptables-save".into();
    let s = scene(vec![], vec![], tools);
    assert!(matches!(s.v4, Err(IptablesError::Missing { .. })));
    let f = findings(&s, &["10.0.0.1/32"], &[80], 1006);
    assert_eq!(ids(&f), vec![FindingId::IptablesUnavailable]);
    assert!(
        f[0].detail
            .starts_with("iptables: /nonexistent/sbin/iptables-save is not installed"),
        "{}",
        f[0].detail
    );

    // ip6tables failing as it does without the IPv6 modules. The kernel here has them, so a
    // wrapper prints the message legacy ip6tables gives (exit status 3) instead.
    let tmp = tempfile::tempdir().unwrap();
    let mut tools = Tools::system();
    tools.save_v6 = script(
        tmp.path(),
        "ip6tables-save",
        "echo \"ip6tables-save v1.8.7 (legacy): can't initialize ip6tables table \\`nat': Table does not exist (do you need to insmod?)\" >&2\n\
         echo 'Perhaps ip6tables or your kernel needs to be upgraded.' >&2\nexit 3",
    );
    let s = scene(vec![golden("dual_v4.restore")], vec![], tools);
    let f = findings(&s, &["10.0.0.1/32", "fd00:10::1/128"], &[80], 1006);
    assert_eq!(ids(&f), vec![FindingId::IptablesUnavailable]);
    assert_eq!(f[0].remediation, IPV6_MODULES_REMEDIATION);
    assert!(
        f[0].detail.contains("(exit status 3)") && f[0].detail.contains("do you need to insmod?"),
        "{}",
        f[0].detail
    );
}

// ---------------------------------------------------------------------------------------------
// The runner.

#[test]
fn runner_bounds_time_and_output() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut tools = Tools::system();
    tools.timeout = Duration::from_millis(500);
    tools.max_output = 1 << 20;

    tools.save_v4 = script(tmp.path(), "hang", "exec sleep 30");
    let started = std::time::Instant::now();
    let e = rt
        .block_on(ipt::save(&tools, Family::V4, Some("nat")))
        .unwrap_err();
    assert!(matches!(e, IptablesError::Timeout { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));

    tools.save_v4 = script(tmp.path(), "flood", "exec yes 'A OUTPUT -j RETURN'");
    let e = rt
        .block_on(ipt::save(&tools, Family::V4, None))
        .unwrap_err();
    assert!(
        matches!(e, IptablesError::TooLarge { limit, .. } if limit == 1 << 20),
        "{e}"
    );

    tools.save_v4 = script(
        tmp.path(),
        "args",
        "echo \"*nat\"; echo \"-A OUTPUT -m comment --comment \\\"$*\\\" -j RETURN\"; echo COMMIT",
    );
    let rs = rt
        .block_on(ipt::save(&tools, Family::V4, Some("nat")))
        .unwrap();
    let r = &rs.table("nat").unwrap().chain("OUTPUT").unwrap().rules[0];
    assert_eq!(r.spec.comment.as_deref(), Some("-t nat"));
    let e = rt
        .block_on(ipt::save(&tools, Family::V4, Some("nat; rm -rf /")))
        .unwrap_err();
    assert!(matches!(e, IptablesError::Invalid { .. }), "{e}");

    tools.save_v4 = script(
        tmp.path(),
        "binary",
        "printf '\\377\\376\\000garbage\\n*nat\\n-A OUTPUT -j RETURN\\n'; printf 'x%.0s' $(seq 1 3000) >&2; exit 1",
    );
    let e = rt
        .block_on(ipt::save(&tools, Family::V4, None))
        .unwrap_err();
    match &e {
        IptablesError::Failed {
            status, message, ..
        } => {
            assert_eq!(status, "exit status 1");
            assert!(message.len() <= ipt::MESSAGE_MAX, "{}", message.len());
        }
        other => panic!("{other}"),
    }
}
