use super::*;
use crate::intercept::plan::{DesiredInput, TrafficInterception, plan};
use crate::netfilter::parse_save;

fn ours(vips: &[&str], ports: &[u16], uid: u32) -> Ruleset {
    let p = plan(&DesiredInput {
        vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
        serving_ports: ports.to_vec(),
        envoy_uid: uid,
        proxy_port: 15001,
        traffic: TrafficInterception::default(),
    })
    .unwrap();
    parse_save(&p.v4.restore_text().unwrap())
}

fn vips(v: &[&str]) -> Vec<IpNet> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

struct Case<'a> {
    v4: Result<&'a Ruleset, &'a IptablesError>,
    v6: Option<Result<&'a Ruleset, &'a IptablesError>>,
    vips: Vec<IpNet>,
    ports: Vec<u16>,
    uid: Option<u32>,
    listener: bool,
}

impl Case<'_> {
    fn run(&self) -> Vec<Finding> {
        check(&InterceptionInput {
            v4: self.v4,
            v6: self.v6,
            vips: &self.vips,
            serving_ports: &self.ports,
            envoy_uid: self.uid,
            has_interception_listener: self.listener,
            proxy_port: Some(15001),
        })
    }
}

fn case<'a>(rs: &'a Ruleset, v: &[&str], ports: &[u16]) -> Case<'a> {
    Case {
        v4: Ok(rs),
        v6: None,
        vips: vips(v),
        ports: ports.to_vec(),
        uid: Some(1006),
        listener: true,
    }
}

fn ids(f: &[Finding]) -> Vec<FindingId> {
    f.iter().map(|f| f.id).collect()
}

#[test]
fn our_chains_are_clean() {
    let rs = ours(&["10.0.0.1/32", "10.7.240.0/20"], &[80, 8080], 1006);
    let f = case(&rs, &["10.0.0.1/32", "10.7.240.20/32"], &[80, 8080]).run();
    assert!(f.is_empty(), "{f:?}");
}

/// The guide's manual setup, completed with the ISTIO_REDIRECT rule and an inbound jump.
const ISTIO: &str = "*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A PREROUTING -p tcp -m tcp --dport 80 -j ISTIO_IN_REDIRECT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_OUTPUT -m owner --uid-owner 1006 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -d 10.0.0.1/32 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
";

#[test]
fn manual_istio_setup_counts_as_interception() {
    let rs = parse_save(ISTIO);
    assert!(case(&rs, &["10.0.0.1/32"], &[80]).run().is_empty());
    // A second VIP the manual rules do not know about.
    let f = case(&rs, &["10.0.0.1/32", "10.0.0.2/32"], &[80, 8080]).run();
    assert_eq!(
        ids(&f),
        vec![
            FindingId::ServiceNotIntercepted,
            FindingId::InboundPortNotIntercepted
        ]
    );
    assert_eq!(
        f[0].detail,
        "VIPs not redirected to port 15001: 10.0.0.2/32"
    );
    assert_eq!(
        f[1].detail,
        "serving ports with no inbound redirect to port 15001 in nat PREROUTING: 8080"
    );
}

#[test]
fn guide_example_as_printed_redirects_nothing() {
    // As printed in the guide: ISTIO_REDIRECT has no rule, so 10.0.0.1 is jumped to an empty
    // chain and returns; only ISTIO_IN_REDIRECT holds a REDIRECT, and nothing jumps there.
    let text = ISTIO
        .replace(
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n",
            "",
        )
        .replace(
            "-A PREROUTING -p tcp -m tcp --dport 80 -j ISTIO_IN_REDIRECT\n",
            "",
        );
    let rs = parse_save(&text);
    let f = case(&rs, &["10.0.0.1/32"], &[]).run();
    assert_eq!(ids(&f), vec![FindingId::ServiceNotIntercepted]);
}

#[test]
fn missing_when_no_redirect_exists() {
    let rs = parse_save("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
    let f = case(&rs, &["10.0.0.1/32", "10.0.0.2/32"], &[]).run();
    assert_eq!(ids(&f), vec![FindingId::InterceptionMissing]);
    assert!(f[0].detail.contains("port 15001"), "{}", f[0].detail);
    assert!(
        f[0].detail
            .ends_with("VIPs not redirected: 10.0.0.1/32, 10.0.0.2/32"),
        "{}",
        f[0].detail
    );
    // Without an interception listener there is nothing to miss.
    let mut c = case(&rs, &[], &[]);
    c.listener = false;
    assert!(c.run().is_empty());
    // An empty nat table output (no table at all) is the same.
    let none = Ruleset::default();
    assert_eq!(
        ids(&case(&none, &[], &[]).run()),
        vec![FindingId::InterceptionMissing]
    );
}

#[test]
fn service_not_intercepted_lists_vips_and_wrong_ports() {
    let text = "*nat
:OUTPUT ACCEPT [0:0]
:R - [0:0]
-A OUTPUT -m owner --uid-owner 1006 -j RETURN
-A OUTPUT -d 10.0.0.1/32 -p tcp -j REDIRECT --to-ports 15001
-A OUTPUT -d 10.0.0.3/32 -p tcp -j REDIRECT --to-ports 8080
-A OUTPUT -d 10.1.0.0/16 -j R
-A R -p tcp -j REDIRECT --to-ports 15001
COMMIT
";
    let rs = parse_save(text);
    let f = case(
        &rs,
        &[
            "10.0.0.1/32",
            "10.0.0.2/32",
            "10.0.0.3/32",
            "10.1.2.0/24",
            "10.0.0.0/8",
        ],
        &[],
    )
    .run();
    assert_eq!(ids(&f), vec![FindingId::ServiceNotIntercepted]);
    assert_eq!(
        f[0].detail,
        "VIPs not redirected to port 15001: 10.0.0.2/32, 10.0.0.3/32; 10.0.0.3/32 is redirected to port 8080"
    );
}

#[test]
fn loop_when_envoy_uid_is_not_excluded() {
    let text = ISTIO.replace("--uid-owner 1006", "--uid-owner 1337");
    let rs = parse_save(&text);
    let f = case(&rs, &["10.0.0.1/32"], &[80]).run();
    assert_eq!(ids(&f), vec![FindingId::InterceptionLoop]);
    assert_eq!(
        f[0].detail,
        "connections from Envoy (UID 1006) are redirected back to Envoy: 10.0.0.1/32: redirected by `-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001`; UIDs excluded: 1337"
    );
    // Our own rules made for another UID loop as well.
    let rs = ours(&["10.0.0.1/32"], &[], 999);
    assert_eq!(
        ids(&case(&rs, &["10.0.0.1/32"], &[]).run()),
        vec![FindingId::InterceptionLoop]
    );
    // An unknown Envoy UID: any exclusion will do, none is a loop.
    let rs =
        parse_save(&ISTIO.replace("-A ISTIO_OUTPUT -m owner --uid-owner 1006 -j RETURN\n", ""));
    let mut c = case(&rs, &["10.0.0.1/32"], &[80]);
    c.uid = None;
    let f = c.run();
    assert_eq!(ids(&f), vec![FindingId::InterceptionLoop]);
    assert!(
        f[0].detail.contains("UID unknown")
            && f[0].detail.ends_with("no --uid-owner exclusion exists"),
        "{}",
        f[0].detail
    );
    let rs = parse_save(ISTIO);
    let mut c = case(&rs, &["10.0.0.1/32"], &[80]);
    c.uid = None;
    assert!(c.run().is_empty());
}

#[test]
fn undecidable_conditions_do_not_raise_a_loop() {
    // Istio's own variant: loopback traffic of the proxy is redirected only under -o lo.
    let text = "*nat
:OUTPUT ACCEPT [0:0]
-A OUTPUT -s 10.0.0.5/32 -p tcp -j REDIRECT --to-ports 15001
-A OUTPUT -m owner --uid-owner 1006 -j RETURN
-A OUTPUT -d 10.0.0.1/32 -p tcp -j REDIRECT --to-ports 15001
COMMIT
";
    let rs = parse_save(text);
    assert!(case(&rs, &["10.0.0.1/32"], &[]).run().is_empty());
}

#[test]
fn inbound_blocked_before_and_after_the_redirect() {
    let mut text = ours(&["10.0.0.1/32"], &[80, 8080], 1006);
    let extra = parse_save(
        "*raw
:PREROUTING ACCEPT [0:0]
-A PREROUTING -s 203.0.113.0/24 -p tcp -m tcp --dport 8080 -j DROP
COMMIT
*filter
:INPUT DROP [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p tcp -m tcp --dport 80 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT
COMMIT
",
    );
    text.tables.extend(extra.tables);
    let f = case(&text, &["10.0.0.1/32"], &[80, 8080]).run();
    assert_eq!(ids(&f), vec![FindingId::InboundPortBlocked]);
    assert_eq!(
        f[0].detail,
        "port 80: redirected to 15001, which filter INPUT drops (chain policy DROP), \
             port 8080: dropped in raw PREROUTING by `-A PREROUTING -s 203.0.113.0/24 -p tcp -m tcp --dport 8080 -j DROP` before the redirect, \
             port 8080: redirected to 15001, which filter INPUT drops (chain policy DROP)"
    );
    // Opening the proxy port fixes the filter part.
    let mut fixed = ours(&["10.0.0.1/32"], &[80], 1006);
    fixed.tables.extend(
        parse_save(
            "*filter\n:INPUT DROP [0:0]\n-A INPUT -p tcp -m tcp --dport 15001 -j ACCEPT\nCOMMIT\n",
        )
        .tables,
    );
    assert!(case(&fixed, &["10.0.0.1/32"], &[80]).run().is_empty());
    // An explicit REJECT of the proxy port.
    let mut rej = ours(&[], &[80], 1006);
    rej.tables.extend(
            parse_save("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m multiport --dports 15000:15010 -j REJECT --reject-with tcp-reset\nCOMMIT\n").tables,
        );
    let f = case(&rej, &[], &[80]).run();
    assert_eq!(ids(&f), vec![FindingId::InboundPortBlocked]);
    assert!(
        f[0].detail.contains("--reject-with tcp-reset"),
        "{}",
        f[0].detail
    );
}

#[test]
fn iptables_unavailable() {
    let missing = IptablesError::Missing {
        program: "iptables-save".into(),
        reason: "No such file or directory (os error 2)".into(),
    };
    let rs = Ruleset::default();
    let mut c = case(&rs, &["10.0.0.1/32"], &[80]);
    c.v4 = Err(&missing);
    let f = c.run();
    assert_eq!(ids(&f), vec![FindingId::IptablesUnavailable]);
    assert!(
        f[0].detail
            .starts_with("iptables: iptables-save is not installed")
    );
    assert_eq!(f[0].remediation, INSTALL_REMEDIATION);

    let modules = IptablesError::Failed {
            program: "ip6tables-save".into(),
            status: "exit status 1".into(),
            message: "ip6tables-save v1.8.7 (legacy): can't initialize ip6tables table `nat': Table does not exist (do you need to insmod?)".into(),
        };
    let ok = ours(&["10.0.0.1/32"], &[80], 1006);
    let mut c = case(&ok, &["10.0.0.1/32", "fd00::1/128"], &[80]);
    c.v6 = Some(Err(&modules));
    let f = c.run();
    assert_eq!(ids(&f), vec![FindingId::IptablesUnavailable]);
    assert_eq!(f[0].remediation, IPV6_MODULES_REMEDIATION);
    assert!(
        f[0].detail
            .starts_with("ip6tables: ip6tables-save failed (exit status 1): ")
    );
    // No IPv6 VIP: a broken ip6tables does not matter.
    c.vips = vips(&["10.0.0.1/32"]);
    assert!(c.run().is_empty());
}

#[test]
fn ipv6_vips_are_checked_in_ip6tables() {
    let v4 = ours(&["10.0.0.1/32"], &[80], 1006);
    let empty6 = parse_save("*nat\n:OUTPUT ACCEPT [0:0]\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n");
    let mut c = case(&v4, &["10.0.0.1/32", "fd00::1/128"], &[80]);
    c.v6 = Some(Ok(&empty6));
    let f = c.run();
    assert_eq!(
        ids(&f),
        vec![
            FindingId::ServiceNotIntercepted,
            FindingId::InboundPortNotIntercepted
        ]
    );
    assert_eq!(
        f[0].detail,
        "VIPs not redirected to port 15001: fd00::1/128"
    );
    assert!(f[1].detail.ends_with(": 80 (ip6tables)"), "{}", f[1].detail);
}

#[test]
fn traversal_is_bounded_on_hostile_tables() {
    // A parsed (not kernel-checked) loop and a wide fan of undecidable rules.
    let mut text = String::from(
        "*nat\n:OUTPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n-A OUTPUT -j A\n-A A -j B\n-A B -j A\n",
    );
    for i in 0..3000 {
        text.push_str(&format!(
            "-A OUTPUT -s 10.{}.{}.0/24 -j A\n",
            i / 256,
            i % 256
        ));
    }
    text.push_str("COMMIT\n");
    let rs = parse_save(&text);
    let nat = rs.table("nat").unwrap();
    let outs = traverse(
        &Index::new(nat),
        "OUTPUT",
        &Packet::app(Hook::Output, None, None),
    );
    assert!(outs.iter().any(|o| o.verdict == Verdict::Indeterminate));
    // And the checks give the benefit of the doubt rather than an error.
    let f = case(&rs, &["10.0.0.1/32"], &[]).run();
    assert_eq!(ids(&f), vec![FindingId::InterceptionMissing]);
}

#[test]
fn goto_returns_to_the_caller_of_the_calling_chain() {
    let text = "*nat
:OUTPUT ACCEPT [0:0]
:A - [0:0]
:G - [0:0]
-A OUTPUT -j A
-A OUTPUT -p tcp -j REDIRECT --to-ports 15001
-A A -g G
-A A -j DROP_NEVER_REACHED
-A G -j RETURN
COMMIT
";
    let rs = parse_save(text);
    let outs = traverse(
        &Index::new(rs.table("nat").unwrap()),
        "OUTPUT",
        &Packet::app(Hook::Output, None, None),
    );
    assert_eq!(outs.len(), 1);
    assert_eq!(
        outs[0].verdict,
        Verdict::Redirect(Some(PortRange::single(15001)))
    );
    assert!(outs[0].definite);
}

#[test]
fn large_kube_proxy_like_tables() {
    // Thousands of chains and rules beside ours, hundreds of VIPs.
    let mut text = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n",
    );
    for i in 0..3000 {
        text.push_str(&format!(":KUBE-SVC-{i} - [0:0]\n"));
    }
    text.push_str(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    for i in 0..3000 {
        text.push_str(&format!(
                "-A KUBE-SERVICES -d 172.20.{}.{}/32 -p tcp -m tcp --dport 443 -j KUBE-SVC-{i}\n-A KUBE-SVC-{i} -j DNAT --to-destination 10.1.{}.{}:443\n",
                i / 256, i % 256, i / 256, i % 256
            ));
    }
    text.push_str("COMMIT\n");
    let vips: Vec<String> = (0..300)
        .map(|i| format!("10.{}.{}.1/32", 100 + i / 256, i % 256))
        .collect();
    let vip_refs: Vec<&str> = vips.iter().map(String::as_str).collect();
    let mut rs = parse_save(&text);
    let ours = ours(&vip_refs, &[80], 1006);
    let ours_nat = ours.tables.into_iter().next().unwrap();
    let nat = rs.tables.first_mut().unwrap();
    for c in ours_nat.chains {
        match nat.chains.iter_mut().find(|x| x.name == c.name) {
            Some(x) => x.rules.extend(c.rules),
            None => nat.chains.push(c),
        }
    }
    let started = std::time::Instant::now();
    let f = case(&rs, &vip_refs, &[80]).run();
    eprintln!(
        "{} VIPs over {} chains checked in {:?}",
        vips.len(),
        rs.tables[0].chains.len(),
        started.elapsed()
    );
    assert!(f.is_empty(), "{f:?}");
}

mod dst_index {
    use super::super::*;
    use crate::netfilter::parse_save;
    use proptest::prelude::*;

    /// The table without its destination index: every rule is visited.
    fn plain(table: &Table) -> Index<'_> {
        Index {
            chains: table
                .chains
                .iter()
                .map(|c| {
                    let open = (0..c.rules.len()).collect();
                    (
                        c.name.as_str(),
                        (
                            c,
                            DstIndex {
                                open,
                                buckets: Vec::new(),
                            },
                        ),
                    )
                })
                .collect(),
        }
    }

    fn summary(outs: &[Outcome<'_>]) -> Vec<String> {
        outs.iter()
            .map(|o| {
                format!(
                    "{:?} {} {} {:?}",
                    o.verdict,
                    o.definite,
                    o.port_specific,
                    o.rule.map(|r| r as *const Rule)
                )
            })
            .collect()
    }

    /// Networks from a small space so that rules and packets overlap often.
    fn net() -> impl Strategy<Value = String> {
        (
            0u8..4,
            0u8..4,
            prop::sample::select(vec![8u8, 16, 24, 30, 32]),
        )
            .prop_map(|(b, d, len)| format!("10.{b}.0.{d}/{len}"))
    }

    fn rule(chains: usize) -> impl Strategy<Value = String> {
        (
            prop::option::of((any::<bool>(), net())),
            prop::option::of(prop::sample::select(vec![
                "-p tcp",
                "-p udp",
                "-s 10.9.0.0/16",
                "-m owner --uid-owner 7",
            ])),
            0..chains + 3,
        )
            .prop_map(move |(dst, other, target)| {
                let mut r = String::new();
                if let Some((neg, n)) = dst {
                    r.push_str(if neg { "! -d " } else { "-d " });
                    r.push_str(&n);
                    r.push(' ');
                }
                if let Some(o) = other {
                    r.push_str(o);
                    r.push(' ');
                }
                match target {
                    t if t < chains => r.push_str(&format!("-j C{t}")),
                    t if t == chains => r.push_str("-j RETURN"),
                    t if t == chains + 1 => r.push_str("-j REDIRECT --to-ports 15001"),
                    _ => r.push_str("-j ACCEPT"),
                }
                r
            })
    }

    proptest! {
        /// Skipping by destination never changes where a packet ends up, or by which rule.
        #[test]
        fn indexed_traversal_is_the_plain_one(
            rules in prop::collection::vec((0usize..4, rule(3)), 0..40),
            dst in prop::option::of(net()),
        ) {
            let mut text = String::from("*nat\n:OUTPUT ACCEPT [0:0]\n:C0 - [0:0]\n:C1 - [0:0]\n:C2 - [0:0]\n");
            for (chain, r) in &rules {
                let name = match chain { 0 => "OUTPUT".to_owned(), c => format!("C{}", c - 1) };
                text.push_str(&format!("-A {name} {r}\n"));
            }
            text.push_str("COMMIT\n");
            let rs = parse_save(&text);
            let table = rs.table("nat").expect("nat");
            let dst = dst.map(|d| d.parse::<IpNet>().expect("net"));
            let pkt = Packet { hook: Hook::Output, dst, dport: None, uid: Uid::App };
            let fast = traverse(&Index::new(table), "OUTPUT", &pkt);
            let slow = traverse(&plain(table), "OUTPUT", &pkt);
            prop_assert_eq!(summary(&fast), summary(&slow));
        }
    }
}

fn memo_input<'a>(
    rs: &'a Ruleset,
    vips: &'a [IpNet],
    ports: &'a [u16],
    uid: u32,
) -> (Vec<Finding>, InterceptionInput<'a>) {
    let input = InterceptionInput {
        v4: Ok(rs),
        v6: None,
        vips,
        serving_ports: ports,
        envoy_uid: Some(uid),
        has_interception_listener: true,
        proxy_port: Some(15001),
    };
    (check(&input), input)
}

/// The memo answers as `check` does, walks the chains again when any input changes (a new
/// ruleset, even an equal one, other VIPs, another port or UID), and not when none does.
#[test]
fn the_memo_answers_as_check_does_and_walks_again_only_when_an_input_changes() {
    let clean = Arc::new(ours(&["10.0.0.1/32"], &[80], 1006));
    let v = vips(&["10.0.0.1/32", "10.0.0.2/32"]);
    let ports = [80u16];
    let mut memo = Memo::default();
    let (want, i) = memo_input(&clean, &v, &ports, 1006);
    assert_eq!(ids(&want), [FindingId::ServiceNotIntercepted]);
    assert_eq!(memo.check(&i, &clean, None), want);
    assert_eq!(memo.check(&i, &clean, None), want);
    assert_eq!(memo.computed(), 1, "the same inputs walked twice");

    // Each input in turn: the answer is check's, from a new walk.
    let fixed = Arc::new(ours(&["10.0.0.1/32", "10.0.0.2/32"], &[80], 1006));
    let (want, i) = memo_input(&fixed, &v, &ports, 1006);
    assert!(want.is_empty(), "{want:?}");
    assert_eq!(memo.check(&i, &fixed, None), want);
    assert_eq!(memo.computed(), 2);
    let one = vips(&["10.0.0.2/32"]);
    let (want, i) = memo_input(&fixed, &one, &ports, 1006);
    assert_eq!(memo.check(&i, &fixed, None), want);
    assert_eq!(memo.computed(), 3);
    let (want, i) = memo_input(&fixed, &one, &[80, 8080], 1006);
    assert_eq!(ids(&want), [FindingId::InboundPortNotIntercepted]);
    assert_eq!(memo.check(&i, &fixed, None), want);
    assert_eq!(memo.computed(), 4);
    let (want, i) = memo_input(&fixed, &one, &[80, 8080], 0);
    assert_eq!(memo.check(&i, &fixed, None), want);
    assert_eq!(memo.computed(), 5);
    // An equal ruleset from another save is walked again: identity, not content, is the key.
    let copy = Arc::new((*fixed).clone());
    let (want, i) = memo_input(&copy, &one, &[80, 8080], 0);
    assert_eq!(memo.check(&i, &copy, None), want);
    assert_eq!(memo.computed(), 6);
    // An IPv6 ruleset read where none was.
    let v6 = Arc::new(Ruleset::default());
    let i6 = InterceptionInput {
        v6: Some(Ok(&v6)),
        ..i
    };
    assert_eq!(memo.check(&i6, &copy, Some(&v6)), check(&i6));
    assert_eq!(memo.computed(), 7);
    assert_eq!(memo.check(&i6, &copy, Some(&v6)), check(&i6));
    assert_eq!(memo.computed(), 7);
}
