use super::*;

fn input(vips: &[&str], ports: &[u16]) -> DesiredInput {
    DesiredInput {
        vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
        serving_ports: ports.to_vec(),
        envoy_uid: 1006,
        proxy_port: 15001,
        traffic: TrafficInterception::default(),
    }
}

fn nat(text: &str) -> Table {
    let rs = parse_save(text);
    assert!(rs.unparsed.is_empty(), "{:?}", rs.unparsed);
    rs.tables.into_iter().next().unwrap()
}

#[test]
fn spec_rules_sorted_and_deduplicated() {
    let p = plan(&input(
        &["10.0.0.2/32", "10.0.0.1/32", "10.0.0.2/32", "10.7.240.5/20"],
        &[8080, 80, 80],
    ))
    .unwrap();
    assert_eq!(
        p.v4.rules,
        vec![
            "-A SERVICE_PROXY_OUTPUT -m owner --uid-owner 1006 -j RETURN",
            "-A SERVICE_PROXY_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A SERVICE_PROXY_OUTPUT -j SERVICE_PROXY_SERVICE_CIDRS",
            "-A SERVICE_PROXY_SERVICE_CIDRS -d 10.0.0.1/32 -j SERVICE_PROXY_REDIRECT",
            "-A SERVICE_PROXY_SERVICE_CIDRS -d 10.0.0.2/32 -j SERVICE_PROXY_REDIRECT",
            "-A SERVICE_PROXY_SERVICE_CIDRS -d 10.7.240.0/20 -j SERVICE_PROXY_REDIRECT",
            "-A SERVICE_PROXY_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "-A SERVICE_PROXY_INBOUND -p tcp -m tcp --dport 80 -j SERVICE_PROXY_IN_REDIRECT",
            "-A SERVICE_PROXY_INBOUND -p tcp -m tcp --dport 8080 -j SERVICE_PROXY_IN_REDIRECT",
            "-A SERVICE_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        ]
    );
    assert!(!p.v6.is_active());
    assert_eq!(p.v6.restore_text(), None);
    assert!(p.ignored.is_empty());
    // Every desired line parses back without loss.
    let t = p.v4.desired_table();
    assert_eq!(
        t.chains.iter().map(|c| c.rules.len()).sum::<usize>(),
        p.v4.rule_count()
    );
}

#[test]
fn vips_are_capped() {
    let vips: Vec<String> = (0..=MAX_VIPS)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    let refs: Vec<&str> = vips.iter().map(String::as_str).collect();
    assert_eq!(
        plan(&input(&refs, &[])),
        Err(PlanError::TooManyVips {
            count: MAX_VIPS + 1
        })
    );
    let p = plan(&input(&refs[..MAX_VIPS], &[])).unwrap();
    assert_eq!(p.v4.rules.len(), MAX_VIPS + 5);
}

#[test]
fn redirected_prefixes_are_bounded() {
    let vips = [
        "0.0.0.0/1",
        "128.0.0.0/1",
        "127.0.0.0/8",
        "127.0.0.5/32",
        "169.254.0.0/16",
        "169.254.169.254/32",
        "10.0.0.0/8",
        "10.1.0.0/16",
        "::1/128",
        "::/0",
        "fd00::/16",
        "fd20:ce::254/128",
        "fd00:1::/32",
        "12.0.0.0/6",
    ];
    let cidrs = |fp: &FamilyPlan| -> Vec<String> {
        fp.rules
            .iter()
            .filter(|r| r.starts_with("-A SERVICE_PROXY_SERVICE_CIDRS"))
            .map(|r| r.split(' ').nth(3).unwrap_or("").to_owned())
            .collect()
    };
    let p = plan(&input(&vips, &[])).unwrap();
    assert_eq!(cidrs(&p.v4), ["10.0.0.0/8", "10.1.0.0/16"]);
    assert_eq!(cidrs(&p.v6), ["fd00:1::/32"]);
    let ignored: Vec<&str> = p.ignored.iter().map(|i| i.value.as_str()).collect();
    assert_eq!(ignored.len(), 11, "{ignored:?}");
    assert!(p.ignored.iter().all(|i| i.field == "prefix_ranges"));
    // With intercept-all-outbound a wide prefix is fine; loopback and metadata never are.
    let mut i = input(&vips, &[]);
    i.traffic.intercept_all_outbound = true;
    let p = plan(&i).unwrap();
    // (128.0.0.0/1 covers 169.254.169.254.)
    assert_eq!(cidrs(&p.v4), ["10.0.0.0/8", "10.1.0.0/16", "12.0.0.0/6"]);
    assert_eq!(cidrs(&p.v6), ["fd00::/16", "fd00:1::/32"]);
}

#[test]
fn ipv6_only_when_there_is_an_ipv6_vip() {
    let p = plan(&input(&["fd00:10::1/128", "10.0.0.1/32"], &[80])).unwrap();
    assert!(p.v6.is_active());
    assert!(
        p.v6.rules
            .contains(&"-A SERVICE_PROXY_OUTPUT -d ::1/128 -j RETURN".to_owned())
    );
    assert!(p.v6.rules.contains(
        &"-A SERVICE_PROXY_SERVICE_CIDRS -d fd00:10::1/128 -j SERVICE_PROXY_REDIRECT".to_owned()
    ));
    assert!(!p.v4.rules.iter().any(|r| r.contains("fd00")));
    assert!(!p.v6.rules.iter().any(|r| r.contains("10.0.0.1")));
}

#[test]
fn intercept_all_outbound_and_strict_exclusions() {
    let mut i = input(&["10.0.0.1/32", "192.168.5.5/32"], &[]);
    i.traffic = TrafficInterception {
        intercept_all_outbound: true,
        exclude_outbound_ip_ranges: vec![
            "192.168.0.0/16".into(),
            "169.254.169.254".into(),
            "fd00::/8".into(),
            "10.0.0.0/8; rm -rf /".into(),
            "-j ACCEPT".into(),
        ],
        exclude_outbound_port_ranges: vec![
            "22".into(),
            "8000-8100".into(),
            "9000:9001".into(),
            "0".into(),
            "70000".into(),
            "5-1".into(),
            "22 --to-ports 1".into(),
        ],
    };
    let p = plan(&i).unwrap();
    let out: Vec<&String> =
        p.v4.rules
            .iter()
            .filter(|r| r.starts_with("-A SERVICE_PROXY_OUTPUT"))
            .collect();
    assert_eq!(
        out,
        vec![
            "-A SERVICE_PROXY_OUTPUT -m owner --uid-owner 1006 -j RETURN",
            "-A SERVICE_PROXY_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A SERVICE_PROXY_OUTPUT -o lo -j RETURN",
            "-A SERVICE_PROXY_OUTPUT -m mark --mark 0x53000000 -j RETURN",
            "-A SERVICE_PROXY_OUTPUT -d 169.254.169.254/32 -j RETURN",
            "-A SERVICE_PROXY_OUTPUT -d 192.168.0.0/16 -j RETURN",
            "-A SERVICE_PROXY_OUTPUT -p tcp -m tcp --dport 22 -j RETURN",
            "-A SERVICE_PROXY_OUTPUT -p tcp -m tcp --dport 8000:8100 -j RETURN",
            "-A SERVICE_PROXY_OUTPUT -p tcp -m tcp --dport 9000:9001 -j RETURN",
            "-A SERVICE_PROXY_OUTPUT -j SERVICE_PROXY_SERVICE_CIDRS",
            "-A SERVICE_PROXY_OUTPUT -j SERVICE_PROXY_REDIRECT",
        ]
    );
    let bad: Vec<(&str, &str)> = p
        .ignored
        .iter()
        .map(|x| (x.field, x.value.as_str()))
        .collect();
    assert_eq!(
        bad,
        vec![
            ("exclude-outbound-ip-ranges", "10.0.0.0/8; rm -rf /"),
            ("exclude-outbound-ip-ranges", "-j ACCEPT"),
            ("exclude-outbound-port-ranges", "0"),
            ("exclude-outbound-port-ranges", "70000"),
            ("exclude-outbound-port-ranges", "5-1"),
            ("exclude-outbound-port-ranges", "22 --to-ports 1"),
        ]
    );
    assert_eq!(
        p.excluded_vips,
        vec!["192.168.5.5/32".parse::<IpNet>().unwrap()]
    );
    // IPv6 exclusions are not in the IPv4 table, and IPv6 stays off without IPv6 VIPs.
    assert!(!p.v4.rules.iter().any(|r| r.contains("fd00")));
    assert!(!p.v6.is_active());
}

#[test]
fn exclusions_without_intercept_all_are_ignored_and_serving_port_checks() {
    let mut i = input(&[], &[0, 15001, 443]);
    i.traffic.exclude_outbound_ip_ranges = vec!["10.0.0.0/8".into()];
    let p = plan(&i).unwrap();
    assert_eq!(p.ignored.len(), 3);
    assert!(p.v4.rules.iter().any(|r| r.contains("--dport 443 ")));
    assert!(!p.v4.rules.iter().any(|r| r.contains("--dport 15001")));
    i.proxy_port = 0;
    assert_eq!(plan(&i), Err(PlanError::ProxyPortZero));
}

#[test]
fn no_transaction_when_state_matches() {
    let p = plan(&input(&["10.0.0.1/32"], &[80])).unwrap();
    let saved = format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n{}\n-A OUTPUT -p tcp -j ISTIO_OUTPUT\n{}\n{}\nCOMMIT\n",
        CHAINS
            .iter()
            .map(|c| format!(":{c} - [0:0]"))
            .collect::<Vec<_>>()
            .join("\n"),
        p.v4.jumps.join("\n"),
        p.v4.rules.join("\n"),
    );
    assert_eq!(transaction(&p.v4, Some(&nat(&saved)), 0).unwrap(), None);
    // An unparsed line in our chains forces a rebuild.
    assert!(transaction(&p.v4, Some(&nat(&saved)), 1).unwrap().is_some());
}

#[test]
fn duplicates_strays_and_stale_chains() {
    let p = plan(&input(&["10.0.0.1/32"], &[80])).unwrap();
    let saved = "*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:SERVICE_PROXY_OUTPUT - [0:0]
:SERVICE_PROXY_OLD - [0:0]
:MINE - [0:0]
-A OUTPUT -p tcp -j SERVICE_PROXY_OUTPUT
-A OUTPUT -j MINE
-A OUTPUT -p tcp -j SERVICE_PROXY_OUTPUT
-A OUTPUT -m comment --comment \"old agent\" -j SERVICE_PROXY_OLD
-A POSTROUTING -g SERVICE_PROXY_OLD
-A SERVICE_PROXY_OUTPUT -d 10.0.0.9/32 -j RETURN
-A MINE -d 1.2.3.4/32 -j RETURN
COMMIT
";
    let t = transaction(&p.v4, Some(&nat(saved)), 0).unwrap().unwrap();
    // SERVICE_PROXY_OLD is not one of docs/contract.md#7-interception's chains: someone else's, left alone with
    // the jumps into it (docs/contract.md#11-trust).
    let head = "*nat
:SERVICE_PROXY_OUTPUT - [0:0]
:SERVICE_PROXY_SERVICE_CIDRS - [0:0]
:SERVICE_PROXY_REDIRECT - [0:0]
:SERVICE_PROXY_INBOUND - [0:0]
:SERVICE_PROXY_IN_REDIRECT - [0:0]
-D OUTPUT -p tcp -j SERVICE_PROXY_OUTPUT
-A PREROUTING -p tcp -j SERVICE_PROXY_INBOUND
-A SERVICE_PROXY_OUTPUT -m owner";
    assert!(t.text.starts_with(head), "{}", t.text);
    assert!(t.text.ends_with("COMMIT\n"));
    assert!(!t.text.contains("MINE"));
    assert!(!t.text.contains("SERVICE_PROXY_OLD"), "{}", t.text);
    assert_eq!((t.deleted_jumps, t.added_jumps), (1, 1));
    assert!(t.removed_chains.is_empty());

    let c = clear_transaction(Some(&nat(saved))).unwrap().unwrap();
    assert_eq!(
        c.text,
        "*nat
:SERVICE_PROXY_OUTPUT - [0:0]
-D OUTPUT -p tcp -j SERVICE_PROXY_OUTPUT
-D OUTPUT -p tcp -j SERVICE_PROXY_OUTPUT
-X SERVICE_PROXY_OUTPUT
COMMIT
"
    );
    assert_eq!(
        clear_transaction(Some(&nat(
            "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j MINE\nCOMMIT\n"
        )))
        .unwrap(),
        None
    );
    assert_eq!(clear_transaction(None).unwrap(), None);
}

fn saved_text(fp: &FamilyPlan, extra: &str) -> String {
    let mut saved = String::from(
        "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
    );
    for c in &fp.chains {
        saved.push_str(&format!(":{c} - [0:0]\n"));
    }
    for l in fp.jumps.iter().chain(&fp.rules) {
        saved.push_str(l);
        saved.push('\n');
    }
    saved.push_str(extra);
    saved.push_str("COMMIT\n# Completed\n");
    saved
}

#[test]
fn saved_text_equal_to_the_plan_needs_no_parse() {
    let p = plan(&input(&["10.0.0.1/32", "10.0.0.2/32"], &[80])).unwrap();
    let fp = &p.v4;
    let saved = saved_text(fp, "");
    assert!(fp.matches_saved_text(&saved));
    assert!(fp.matches_saved_text(&saved.replace('\n', "\r\n")));
    // Foreign chains and rules are not ours to judge.
    assert!(fp.matches_saved_text(&saved_text(
        fp,
        ":ISTIO_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -j RETURN\n"
    )));
    // A user's own SERVICE_PROXY_* chain, and a jump into it, are not ours (docs/contract.md#11-trust).
    assert!(fp.matches_saved_text(&saved_text(
            fp,
            ":SERVICE_PROXY_FOO - [0:0]\n-A OUTPUT -j SERVICE_PROXY_FOO\n-A SERVICE_PROXY_FOO -j RETURN\n"
        )));
    let other_tables =
        format!("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j SERVICE_PROXY_X\nCOMMIT\n{saved}");
    assert!(fp.matches_saved_text(&other_tables));
    for (why, text) in [
        (
            "rule missing",
            saved.replace(
                "-A SERVICE_PROXY_SERVICE_CIDRS -d 10.0.0.2/32 -j SERVICE_PROXY_REDIRECT\n",
                "",
            ),
        ),
        (
            "rules swapped",
            saved
                .replace("10.0.0.1/32", "10.0.0.X")
                .replace("10.0.0.2/32", "10.0.0.1/32")
                .replace("10.0.0.X", "10.0.0.2/32"),
        ),
        (
            "extra rule",
            saved_text(
                fp,
                "-A SERVICE_PROXY_SERVICE_CIDRS -d 10.0.0.3/32 -j SERVICE_PROXY_REDIRECT\n",
            ),
        ),
        (
            "duplicate jump",
            saved_text(fp, "-A OUTPUT -p tcp -j SERVICE_PROXY_OUTPUT\n"),
        ),
        (
            "stray jump",
            saved_text(fp, "-A POSTROUTING -g SERVICE_PROXY_REDIRECT\n"),
        ),
        (
            "jump from a foreign chain",
            saved_text(fp, "-A ISTIO_OUTPUT -j SERVICE_PROXY_OUTPUT\n"),
        ),
        (
            "other spelling",
            saved.replace("-p tcp -j REDIRECT", "-p 6 -j REDIRECT"),
        ),
        (
            "counters",
            saved.replace(
                "-A SERVICE_PROXY_REDIRECT",
                "[1:60] -A SERVICE_PROXY_REDIRECT",
            ),
        ),
        ("two nat tables", format!("{saved}{saved}")),
        (
            "missing chain",
            saved.replace(":SERVICE_PROXY_INBOUND - [0:0]\n", ""),
        ),
    ] {
        assert!(!fp.matches_saved_text(&text), "{why}:\n{text}");
    }
    // Nothing of ours wanted (an idle IPv6 plan): only a table without any of ours matches.
    assert!(p.v6.matches_saved_text("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"));
    assert!(p.v6.matches_saved_text(""));
    assert!(!p.v6.matches_saved_text(&saved));
}

/// Applies a restore transaction to a parsed table the way `iptables-restore --noflush`
/// does, for the statements our transactions use.
fn apply_restore(table: &mut Table, text: &str) {
    let spec_of = |chain: &str, rest: &str| {
        nat(&format!("*nat\n-A {chain} {rest}\nCOMMIT\n")).chains[0].rules[0].clone()
    };
    for line in text.lines() {
        if line == "*nat" || line == "COMMIT" {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split(' ').next().unwrap();
            match table.chains.iter_mut().find(|c| c.name == name) {
                Some(c) => c.rules.clear(),
                None => table.chains.push(crate::netfilter::Chain {
                    name: name.into(),
                    policy: None,
                    declared: true,
                    rules: Vec::new(),
                }),
            }
            continue;
        }
        let (op, rest) = line.split_once(' ').unwrap();
        let (chain, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        if op == "-X" {
            table.chains.retain(|c| c.name != chain);
            continue;
        }
        let c = table.chains.iter_mut().find(|c| c.name == chain).unwrap();
        match op {
            "-A" => c.rules.push(spec_of(chain, rest)),
            "-D" => {
                let r = spec_of(chain, rest);
                let at = c.rules.iter().position(|x| x.spec == r.spec).unwrap();
                c.rules.remove(at);
            }
            "-I" => {
                let (n, rest) = rest.split_once(' ').unwrap();
                let n: usize = n.parse().unwrap();
                assert!(
                    n >= 1 && n <= c.rules.len(),
                    "-I {n} into {} rules",
                    c.rules.len()
                );
                c.rules.insert(n - 1, spec_of(chain, rest));
            }
            _ => panic!("unexpected statement {line}"),
        }
    }
}

#[test]
fn one_vip_changed_is_edited_in_place() {
    let vips: Vec<String> = (1..=20).map(|i| format!("10.0.0.{i}/32")).collect();
    let refs: Vec<&str> = vips.iter().map(String::as_str).collect();
    let before = plan(&input(&refs, &[80])).unwrap();
    let mut changed = refs.clone();
    changed[7] = "10.9.0.1/32";
    changed.push("10.0.0.0/24");
    let after = plan(&input(&changed, &[80])).unwrap();
    let mut cur = nat(&saved_text(&before.v4, ""));
    let t = transaction(&after.v4, Some(&cur), 0).unwrap().unwrap();
    assert_eq!(
        t.text,
        "*nat
-D SERVICE_PROXY_SERVICE_CIDRS -d 10.0.0.8/32 -j SERVICE_PROXY_REDIRECT
-I SERVICE_PROXY_SERVICE_CIDRS 1 -d 10.0.0.0/24 -j SERVICE_PROXY_REDIRECT
-A SERVICE_PROXY_SERVICE_CIDRS -d 10.9.0.1/32 -j SERVICE_PROXY_REDIRECT
COMMIT
"
    );
    assert_eq!(t.edited_chains, vec![SERVICE_CIDRS]);
    assert!(t.rebuilt_chains.is_empty());
    assert_eq!((t.deleted_rules, t.inserted_rules), (1, 2));
    apply_restore(&mut cur, &t.text);
    assert_eq!(transaction(&after.v4, Some(&cur), 0).unwrap(), None);

    // Most of a chain changed, or a small chain: rebuilt, alone.
    let other = plan(&input(&["192.168.0.1/32"], &[8080])).unwrap();
    let mut cur = nat(&saved_text(&before.v4, ""));
    let t = transaction(&other.v4, Some(&cur), 0).unwrap().unwrap();
    assert_eq!(t.rebuilt_chains, vec![SERVICE_CIDRS, INBOUND]);
    assert!(t.edited_chains.is_empty());
    assert!(!t.text.contains(OUTPUT), "{}", t.text);
    apply_restore(&mut cur, &t.text);
    assert_eq!(transaction(&other.v4, Some(&cur), 0).unwrap(), None);
}

#[test]
fn jump_with_other_spec_is_replaced() {
    let p = plan(&input(&[], &[])).unwrap();
    let saved = format!(
        "*nat\n{}\n-A OUTPUT -j SERVICE_PROXY_OUTPUT\n-A PREROUTING -p tcp -j SERVICE_PROXY_INBOUND\n{}\nCOMMIT\n",
        CHAINS
            .iter()
            .map(|c| format!(":{c} - [0:0]"))
            .collect::<Vec<_>>()
            .join("\n"),
        p.v4.rules.join("\n")
    );
    let t = transaction(&p.v4, Some(&nat(&saved)), 0).unwrap().unwrap();
    assert!(
        t.text.contains(
            "-D OUTPUT -j SERVICE_PROXY_OUTPUT\n-A OUTPUT -p tcp -j SERVICE_PROXY_OUTPUT\n"
        ),
        "{}",
        t.text
    );
    assert!(!t.text.contains("PREROUTING"));
}

#[test]
fn unsafe_text_is_not_passed_on() {
    let p = plan(&input(&[], &[])).unwrap();
    let saved = "*nat\n-A OUTPUT -m comment --comment \"é\" -j SERVICE_PROXY_OUTPUT\nCOMMIT\n";
    let e = transaction(&p.v4, Some(&nat(saved)), 0).unwrap_err();
    assert!(matches!(e, PlanError::UnsafeRule { line: 2, .. }), "{e}");
}

#[test]
fn exclude_parsers() {
    assert_eq!(
        parse_exclude_ip_range(" 10.1.2.3/8 ").unwrap().to_string(),
        "10.0.0.0/8"
    );
    assert!(parse_exclude_ip_range("10.0.0.0/8,10.1.0.0/16").is_err());
    assert!(parse_exclude_ip_range("").is_err());
    assert_eq!(
        parse_exclude_port_range("1:65535").unwrap(),
        PortRange {
            first: 1,
            last: 65535
        }
    );
    assert!(parse_exclude_port_range("1-2-3").is_err());
    assert!(parse_exclude_port_range("-5").is_err());
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// From any set of VIPs to any other (and ports), the transaction (in place or
        /// not) takes the table exactly to the plan.
        #[test]
        fn any_change_reaches_the_plan(
            a in prop::collection::btree_set(0u8..60, 0..40),
            b in prop::collection::btree_set(0u8..60, 0..40),
            pa in prop::collection::vec(1u16..6, 0..3),
            pb in prop::collection::vec(1u16..6, 0..3),
        ) {
            let vips = |s: &std::collections::BTreeSet<u8>| -> Vec<String> {
                s.iter().map(|i| format!("10.0.{i}.0/{}", 16 + i % 17)).collect()
            };
            let (va, vb) = (vips(&a), vips(&b));
            let ra: Vec<&str> = va.iter().map(String::as_str).collect();
            let rb: Vec<&str> = vb.iter().map(String::as_str).collect();
            let before = plan(&input(&ra, &pa)).unwrap();
            let after = plan(&input(&rb, &pb)).unwrap();
            let mut cur = nat(&saved_text(&before.v4, ""));
            if let Some(t) = transaction(&after.v4, Some(&cur), 0).unwrap() {
                apply_restore(&mut cur, &t.text);
            }
            prop_assert_eq!(transaction(&after.v4, Some(&cur), 0).unwrap(), None);
            let mut text = String::from("*nat\n");
            for c in &cur.chains {
                text.push_str(&format!(":{} - [0:0]\n", c.name));
            }
            for c in &cur.chains {
                for r in &c.rules {
                    text.push_str(&r.text);
                    text.push('\n');
                }
            }
            text.push_str("COMMIT\n");
            prop_assert!(after.v4.matches_saved_text(&text), "{}", text);
        }

        /// A table already holding exactly the plan needs no transaction; an empty one gets
        /// one that declares every chain and adds every rule.
        #[test]
        fn plan_is_a_fixed_point(
            v4 in prop::collection::vec((any::<u32>(), 0u8..=32), 0..20),
            v6 in prop::collection::vec((any::<u128>(), 0u8..=128), 0..5),
            ports in prop::collection::vec(any::<u16>(), 0..10),
            uid in any::<u32>(),
            proxy in 1u16..,
        ) {
            let mut vips: Vec<IpNet> = v4.iter().map(|(a, l)| IpNet::new(IpAddr::V4((*a).into()), *l).unwrap()).collect();
            vips.extend(v6.iter().map(|(a, l)| IpNet::new(IpAddr::V6((*a).into()), *l).unwrap()));
            let p = plan(&DesiredInput {
                vips, serving_ports: ports, envoy_uid: uid, proxy_port: proxy,
                traffic: TrafficInterception::default(),
            }).unwrap();
            for fp in [&p.v4, &p.v6] {
                let want = fp.desired_table();
                let rules: usize = want.chains.iter().map(|c| c.rules.len()).sum();
                prop_assert_eq!(rules, fp.rule_count());
                let mut saved = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
                for c in &fp.chains { saved.push_str(&format!(":{c} - [0:0]\n")); }
                for l in fp.jumps.iter().chain(&fp.rules) { saved.push_str(l); saved.push('\n'); }
                saved.push_str("COMMIT\n");
                let rs = parse_save(&saved);
                prop_assert!(rs.unparsed.is_empty());
                prop_assert!(fp.matches_saved_text(&saved));
                prop_assert_eq!(transaction(fp, rs.table("nat"), 0).unwrap(), None);
                let fresh = transaction(fp, None, 0).unwrap();
                prop_assert_eq!(fresh.is_some(), fp.is_active());
            }
        }
    }
}

#[test]
fn the_memo_plans_again_only_when_the_input_changes() {
    let mut memo = PlanMemo::default();
    let a = memo.plan(input(&["10.0.0.1/32"], &[80])).unwrap();
    assert_eq!(*a, plan(&input(&["10.0.0.1/32"], &[80])).unwrap());
    // An equal input: the very same plan, not one built again.
    let again = memo.plan(input(&["10.0.0.1/32"], &[80])).unwrap();
    assert!(Arc::ptr_eq(&a, &again));
    // Each input in turn: a new plan, equal to what `plan` makes of it.
    let mut changed = vec![
        input(&["10.0.0.2/32"], &[80]),
        input(&["10.0.0.2/32"], &[80, 8080]),
    ];
    let mut uid = input(&["10.0.0.2/32"], &[80]);
    uid.envoy_uid = 1007;
    changed.push(uid);
    let mut port = input(&["10.0.0.2/32"], &[80]);
    port.proxy_port = 15002;
    changed.push(port);
    let mut all = input(&["10.0.0.2/32"], &[80]);
    all.traffic.intercept_all_outbound = true;
    changed.push(all);
    let mut last = a;
    for i in changed {
        let p = memo.plan(i.clone()).unwrap();
        assert!(!Arc::ptr_eq(&p, &last), "{i:?}");
        assert_eq!(*p, plan(&i).unwrap(), "{i:?}");
        last = p;
    }
    // A failed plan is not remembered: the error each time, then a plan again.
    let mut bad = input(&["10.0.0.1/32"], &[80]);
    bad.proxy_port = 0;
    assert_eq!(memo.plan(bad.clone()), Err(PlanError::ProxyPortZero));
    assert_eq!(memo.plan(bad), Err(PlanError::ProxyPortZero));
    let p = memo.plan(input(&["10.0.0.1/32"], &[80])).unwrap();
    assert_eq!(*p, plan(&input(&["10.0.0.1/32"], &[80])).unwrap());
}
