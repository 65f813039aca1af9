//! Verify-side interception checks (docs/contract.md#4-1-catalogue: INTERCEPTION_MISSING, INTERCEPTION_LOOP,
//! SERVICE_NOT_INTERCEPTED, INBOUND_PORT_NOT_INTERCEPTED, INBOUND_PORT_BLOCKED,
//! IPTABLES_UNAVAILABLE). Pure: parsed rulesets and plain values in, findings out.
//!
//! The checks do not look for our chain names: they follow a packet through the chains the
//! kernel would walk (from `OUTPUT` / `PREROUTING` through jumps and gotos to a verdict), so
//! the agent's `SERVICE_PROXY_*` chains, a manual `ISTIO_*` setup like the guide's, or anything
//! else that redirects are judged the same way. A rule condition that cannot be decided from
//! what we know (a source address, an interface, an unknown match) is "maybe", and both ways
//! are followed. Errors are raised only on what is certain: a VIP is "not intercepted" only
//! when no path can redirect it; a loop only when Envoy's own connections are redirected on a
//! path with no undecided condition.

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;

use crate::finding::{Finding, FindingId};
use crate::netfilter::{Chain, Family, Neg, PortRange, Rule, RuleSpec, Ruleset, Table, Target};
use crate::observe::iptables::IptablesError;

/// What the checks look at.
#[derive(Debug, Clone, Copy)]
pub struct InterceptionInput<'a> {
    /// `iptables-save` (all tables, so that drops in raw/mangle/filter are seen; the nat table
    /// alone is enough for everything but INBOUND_PORT_BLOCKED), or why it could not be read.
    pub v4: Result<&'a Ruleset, &'a IptablesError>,
    /// `ip6tables-save`; `None` when not read.
    pub v6: Option<Result<&'a Ruleset, &'a IptablesError>>,
    /// The listener VIPs.
    pub vips: &'a [IpNet],
    pub serving_ports: &'a [u16],
    /// `None` when unknown: then any UID exclusion counts.
    pub envoy_uid: Option<u32>,
    pub has_interception_listener: bool,
    /// `None` when unknown: then a redirect to any port counts.
    pub proxy_port: Option<u16>,
}

/// At most this many items are listed in a detail.
const LIST_MAX: usize = 10;
/// Rule visits per traversal before giving up (the answer is then "cannot tell").
const STEP_BUDGET: usize = 20_000;
const DEPTH_MAX: usize = 64;

/// Remediation when ip6tables fails the way it does without the IPv6 modules (the guide).
pub const IPV6_MODULES_REMEDIATION: &str = "ip6tables cannot use the kernel's IPv6 netfilter modules. VMs created from the Google Cloud console can lack some IPv6 modules until they are restarted: reboot the VM and rerun the setup (VMs created with the gcloud CLI do not have this problem).";
const INSTALL_REMEDIATION: &str = "Install iptables (`apt-get install iptables` or `dnf install iptables`) so interception can be checked and set up.";

pub fn check(input: &InterceptionInput<'_>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let vips_of = |family: Family| -> Vec<IpNet> {
        let mut v: Vec<IpNet> = input
            .vips
            .iter()
            .filter(|n| Family::of_net(n) == family)
            .map(IpNet::trunc)
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let v6_vips = vips_of(Family::V6);

    // Which families we can judge, and which we cannot read.
    let mut readable: Vec<(Family, &Ruleset)> = Vec::new();
    match input.v4 {
        Ok(rs) => readable.push((Family::V4, rs)),
        Err(e) => findings.push(unavailable(Family::V4, e)),
    }
    match input.v6 {
        Some(Ok(rs)) => readable.push((Family::V6, rs)),
        Some(Err(e)) if !v6_vips.is_empty() => findings.push(unavailable(Family::V6, e)),
        _ => {}
    }
    if input.v4.is_err() {
        return findings;
    }

    let port_ok = |p: Option<PortRange>| match input.proxy_port {
        None => true,
        Some(pp) => p.is_some_and(|r| r.contains(pp)),
    };

    // INTERCEPTION_MISSING: no redirect rule anywhere in any readable nat table.
    let any_redirect = readable.iter().any(|(_, rs)| {
        rs.table("nat").is_some_and(|t| {
            t.chains
                .iter()
                .flat_map(|c| &c.rules)
                .any(|r| target_name(&r.spec) == Some("REDIRECT"))
        })
    });
    if input.has_interception_listener && !any_redirect {
        let port = input.proxy_port.map_or_else(
            || "its interception port".to_owned(),
            |p| format!("port {p}"),
        );
        findings.push(Finding::new(
            FindingId::InterceptionMissing,
            format!(
                "Envoy listens for intercepted traffic on {port}, but no REDIRECT rule exists in the nat table of {}; VIPs not redirected: {}",
                readable.iter().map(|(f, _)| f.command()).collect::<Vec<_>>().join(" or "),
                list(input.vips.iter().map(ToString::to_string), "none")
            ),
        ));
    }

    let mut not_intercepted: Vec<String> = Vec::new();
    let mut wrong_port: Vec<String> = Vec::new();
    let mut loops: Vec<String> = Vec::new();
    let mut inbound_missing: Vec<String> = Vec::new();
    let mut blocked: Vec<String> = Vec::new();

    for &(family, rs) in &readable {
        let fam_vips = vips_of(family);
        let nat_table = rs.table("nat");
        let nat = nat_table.map(Index::new);
        let nat = nat.as_ref();
        let suffix = if family == Family::V6 {
            " (ip6tables)"
        } else {
            ""
        };

        // SERVICE_NOT_INTERCEPTED.
        if any_redirect {
            for vip in &fam_vips {
                let outs = nat
                    .map(|t| traverse(t, "OUTPUT", &Packet::app(Hook::Output, Some(*vip), None)));
                let outs = outs.unwrap_or_default();
                let covered = outs.iter().any(|o| match &o.verdict {
                    Verdict::Redirect(p) => port_ok(*p),
                    Verdict::Indeterminate => true,
                    _ => false,
                });
                if !covered {
                    not_intercepted.push(vip.to_string());
                    let elsewhere: Vec<String> = outs
                        .iter()
                        .filter_map(|o| match o.verdict {
                            Verdict::Redirect(p) => {
                                Some(p.map_or("its own port".to_owned(), |r| {
                                    format!("port {}", r.render('-'))
                                }))
                            }
                            _ => None,
                        })
                        .collect();
                    if let Some(first) = elsewhere.first() {
                        wrong_port.push(format!("{vip} is redirected to {first}"));
                    }
                }
            }
        }

        // INTERCEPTION_LOOP.
        if let (Some(t), Some(table)) = (nat, nat_table)
            && table
                .chains
                .iter()
                .flat_map(|c| &c.rules)
                .any(|r| target_name(&r.spec) == Some("REDIRECT"))
        {
            let uid = input.envoy_uid.map_or(Uid::Unknown, Uid::Is);
            let dsts: Vec<Option<IpNet>> = if fam_vips.is_empty() {
                vec![None]
            } else {
                fam_vips.iter().copied().map(Some).collect()
            };
            for dst in dsts {
                let pkt = Packet {
                    hook: Hook::Output,
                    dst,
                    dport: None,
                    uid,
                };
                let outs = traverse(t, "OUTPUT", &pkt);
                if let Some(o) = outs
                    .iter()
                    .find(|o| o.definite && matches!(o.verdict, Verdict::Redirect(_)))
                {
                    let to = dst.map_or("any address".to_owned(), |d| d.to_string());
                    let by = o
                        .rule
                        .map_or(String::new(), |r| format!(" by `{}`", r.text));
                    loops.push(format!("{to}{suffix}: redirected{by}"));
                }
            }
        }

        // Inbound: only where we expect interception (IPv4; IPv6 when it has VIPs).
        if family == Family::V6 && fam_vips.is_empty() {
            continue;
        }
        let before_nat: Vec<(&str, Index<'_>)> = ["raw", "mangle"]
            .into_iter()
            .filter_map(|n| rs.table(n).map(|t| (n, Index::new(t))))
            .collect();
        let filter = rs.table("filter").map(Index::new);
        for &port in input.serving_ports {
            let pkt = Packet {
                hook: Hook::Prerouting,
                dst: None,
                dport: Some(port),
                uid: Uid::NoSocket,
            };
            let mut dropped_before = None;
            for (tname, t) in &before_nat {
                if let Some(o) = traverse(t, "PREROUTING", &pkt)
                    .into_iter()
                    .find(|o| o.verdict == Verdict::Drop && (o.definite || o.port_specific))
                {
                    dropped_before = Some(format!(
                        "port {port}{suffix}: dropped in {tname} PREROUTING by {} before the redirect",
                        o.describe()
                    ));
                    break;
                }
            }
            let outs = nat
                .map(|t| traverse(t, "PREROUTING", &pkt))
                .unwrap_or_default();
            let redirected = outs.iter().any(|o| match &o.verdict {
                Verdict::Redirect(p) => port_ok(*p),
                Verdict::Indeterminate => true,
                _ => false,
            });
            if let Some(b) = dropped_before {
                blocked.push(b);
            }
            if !redirected {
                inbound_missing.push(format!("{port}{suffix}"));
                continue;
            }
            // After the redirect the filter table sees the proxy port, not the serving port.
            if let (Some(filter), Some(pp)) = (&filter, input.proxy_port) {
                let after = Packet {
                    hook: Hook::Input,
                    dst: None,
                    dport: Some(pp),
                    uid: Uid::NoSocket,
                };
                if let Some(o) = traverse(filter, "INPUT", &after)
                    .into_iter()
                    .find(|o| o.verdict == Verdict::Drop && (o.definite || o.port_specific))
                {
                    blocked.push(format!(
                        "port {port}{suffix}: redirected to {pp}, which filter INPUT drops ({})",
                        o.describe()
                    ));
                }
            }
        }
    }

    let missing = input.has_interception_listener && !any_redirect;
    if !not_intercepted.is_empty() && !missing {
        let port = input
            .proxy_port
            .map_or(String::new(), |p| format!(" to port {p}"));
        let mut detail = format!(
            "VIPs not redirected{port}: {}",
            list(not_intercepted.iter().cloned(), "")
        );
        if !wrong_port.is_empty() {
            detail.push_str(&format!("; {}", list(wrong_port.into_iter(), "")));
        }
        findings.push(Finding::new(FindingId::ServiceNotIntercepted, detail));
    }
    if !loops.is_empty() {
        let who = input
            .envoy_uid
            .map_or("the Envoy user (UID unknown)".to_owned(), |u| {
                format!("Envoy (UID {u})")
            });
        let excluded = excluded_uids(readable.iter().map(|(_, rs)| *rs));
        let excluded = if excluded.is_empty() {
            "no --uid-owner exclusion exists".to_owned()
        } else {
            format!("UIDs excluded: {}", excluded.join(", "))
        };
        findings.push(Finding::new(
            FindingId::InterceptionLoop,
            format!(
                "connections from {who} are redirected back to Envoy: {}; {excluded}",
                list(loops.into_iter(), "")
            ),
        ));
    }
    if !inbound_missing.is_empty() {
        let port = input
            .proxy_port
            .map_or(String::new(), |p| format!(" to port {p}"));
        findings.push(Finding::new(
            FindingId::InboundPortNotIntercepted,
            format!(
                "serving ports with no inbound redirect{port} in nat PREROUTING: {}",
                list(inbound_missing.into_iter(), "")
            ),
        ));
    }
    if !blocked.is_empty() {
        findings.push(Finding::new(
            FindingId::InboundPortBlocked,
            list(blocked.into_iter(), ""),
        ));
    }
    findings
}

fn unavailable(family: Family, e: &IptablesError) -> Finding {
    let f = Finding::new(
        FindingId::IptablesUnavailable,
        format!("{}: {e}", family.command()),
    );
    if matches!(e, IptablesError::Missing { .. }) {
        f.with_remediation(INSTALL_REMEDIATION)
    } else if family == Family::V6 && e.looks_like_missing_modules() {
        f.with_remediation(IPV6_MODULES_REMEDIATION)
    } else {
        f
    }
}

fn list(items: impl Iterator<Item = String>, empty: &str) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        return empty.to_owned();
    }
    let shown: Vec<&str> = items.iter().take(LIST_MAX).map(String::as_str).collect();
    let mut s = shown.join(", ");
    if items.len() > LIST_MAX {
        s.push_str(&format!(" and {} more", items.len() - LIST_MAX));
    }
    s
}

/// UIDs (or ranges) that some nat rule exempts from redirection, for the loop detail.
fn excluded_uids<'a>(rulesets: impl Iterator<Item = &'a Ruleset>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for rs in rulesets {
        let Some(nat) = rs.table("nat") else { continue };
        for r in nat.chains.iter().flat_map(|c| &c.rules) {
            if let Some(Neg { negated, value }) = &r.spec.uid_owner {
                let exempting = match target_name(&r.spec) {
                    Some("RETURN" | "ACCEPT") => !negated,
                    Some(_) => *negated,
                    None => false,
                };
                let s = value.to_string();
                if exempting && !out.contains(&s) {
                    out.push(s);
                }
            }
        }
    }
    out
}

fn target_name(spec: &RuleSpec) -> Option<&str> {
    spec.target.as_ref().map(Target::name)
}

// ---------------------------------------------------------------------------------------------
// Following a packet through a table.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Maybe,
}

impl Tri {
    fn from_bool(b: bool) -> Tri {
        if b { Tri::Yes } else { Tri::No }
    }

    fn negate_if(self, negated: bool) -> Tri {
        match (self, negated) {
            (Tri::Yes, true) => Tri::No,
            (Tri::No, true) => Tri::Yes,
            (t, _) => t,
        }
    }

    fn and(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::No, _) | (_, Tri::No) => Tri::No,
            (Tri::Maybe, _) | (_, Tri::Maybe) => Tri::Maybe,
            _ => Tri::Yes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    /// Locally generated (nat OUTPUT).
    Output,
    /// Arriving from another machine, before routing.
    Prerouting,
    /// Arriving, after routing, to a local socket.
    Input,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Uid {
    Is(u32),
    /// An application: none of the UIDs named in the rules (they are exclusions).
    App,
    Unknown,
    /// A packet from elsewhere (no local socket).
    NoSocket,
}

/// The new TCP connection whose fate we want to know. `None` fields are unknown.
#[derive(Debug, Clone, Copy)]
struct Packet {
    hook: Hook,
    dst: Option<IpNet>,
    dport: Option<u16>,
    uid: Uid,
}

impl Packet {
    fn app(hook: Hook, dst: Option<IpNet>, dport: Option<u16>) -> Packet {
        Packet {
            hook,
            dst,
            dport,
            uid: Uid::App,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Redirect(Option<PortRange>),
    Accept,
    Drop,
    Other(String),
    /// Too many rules or too deep to tell.
    Indeterminate,
}

#[derive(Debug, Clone)]
struct Outcome<'a> {
    verdict: Verdict,
    /// No undecided condition on the way.
    definite: bool,
    /// The rule that decided; `None` for a chain policy.
    rule: Option<&'a Rule>,
    /// The deciding rule names the packet's destination port explicitly.
    port_specific: bool,
}

impl Outcome<'_> {
    fn describe(&self) -> String {
        match self.rule {
            Some(r) => format!("`{}`", r.text),
            None => "chain policy DROP".to_owned(),
        }
    }
}

/// Targets that do not end the traversal.
const CONTINUING: [&str; 18] = [
    "LOG",
    "NFLOG",
    "ULOG",
    "MARK",
    "CONNMARK",
    "TRACE",
    "CT",
    "AUDIT",
    "TOS",
    "DSCP",
    "TTL",
    "HL",
    "CLASSIFY",
    "SECMARK",
    "CONNSECMARK",
    "TCPMSS",
    "CHECKSUM",
    "NOTRACK",
];

/// A position: the chain and the index of the next rule in it.
type Frame<'a> = (&'a Chain, usize);
/// A traversal state by chain names: position and return stack.
type StateKey<'a> = (&'a str, usize, Vec<(&'a str, usize)>);

/// A table with its chains found by name in O(1) (real tables can have thousands of chains),
/// and each chain's rules indexed by destination, so a packet to one VIP skips the rules for
/// every other VIP without looking at them: following 10,000 VIPs through a chain of 10,000
/// `-d VIP` rules is then 10,000 short walks, not 50 million rule visits.
struct Index<'a> {
    chains: HashMap<&'a str, (&'a Chain, DstIndex)>,
}

impl<'a> Index<'a> {
    fn new(table: &'a Table) -> Index<'a> {
        Index {
            chains: table
                .chains
                .iter()
                .map(|c| (c.name.as_str(), (c, DstIndex::new(c))))
                .collect(),
        }
    }

    fn chain(&self, name: &str) -> Option<&'a Chain> {
        self.chains.get(name).map(|(c, _)| *c)
    }

    /// The first rule at or after `idx` of `chain` that may match a packet to `dst`: the
    /// rules skipped all require another destination, so they cannot match.
    fn next_candidate(&self, chain: &Chain, idx: usize, dst: Option<IpNet>) -> usize {
        match (dst, self.chains.get(chain.name.as_str())) {
            (Some(dst), Some((_, ix))) => ix.next(idx, dst),
            _ => idx,
        }
    }
}

/// One chain's rules by destination. Rules with a plain (not negated) `-d NET` sit in one
/// bucket per family and prefix length, sorted by network then position; every other rule is
/// in `open`, which every packet must visit.
struct DstIndex {
    open: Vec<usize>,
    buckets: Vec<DstBucket>,
}

struct DstBucket {
    v6: bool,
    len: u8,
    /// (network as a number, rule position), sorted.
    entries: Vec<(u128, usize)>,
}

fn net_key(net: &IpNet) -> (bool, u8, u128) {
    match net.trunc() {
        IpNet::V4(n) => (false, n.prefix_len(), u128::from(u32::from(n.network()))),
        IpNet::V6(n) => (true, n.prefix_len(), u128::from(n.network())),
    }
}

impl DstIndex {
    fn new(chain: &Chain) -> DstIndex {
        let mut open = Vec::new();
        let mut buckets: Vec<DstBucket> = Vec::new();
        for (i, rule) in chain.rules.iter().enumerate() {
            match &rule.spec.destination {
                Some(d) if !d.negated => {
                    let (v6, len, key) = net_key(&d.value);
                    match buckets.iter_mut().find(|b| b.v6 == v6 && b.len == len) {
                        Some(b) => b.entries.push((key, i)),
                        None => buckets.push(DstBucket {
                            v6,
                            len,
                            entries: vec![(key, i)],
                        }),
                    }
                }
                _ => open.push(i),
            }
        }
        for b in &mut buckets {
            b.entries.sort_unstable();
        }
        DstIndex { open, buckets }
    }

    fn next(&self, idx: usize, dst: IpNet) -> usize {
        let end = usize::MAX;
        let after = |list: &[usize]| {
            list.get(list.partition_point(|&i| i < idx))
                .copied()
                .unwrap_or(end)
        };
        let (v6, len, key) = net_key(&dst);
        let bits: u8 = if v6 { 128 } else { 32 };
        let mut best = after(&self.open);
        for b in self.buckets.iter().filter(|b| b.v6 == v6) {
            if b.len <= len {
                // The rule's network holds the destination: the same network at its length.
                let want = mask(key, b.len, bits);
                let at = b.entries.partition_point(|&(k, i)| (k, i) < (want, idx));
                if let Some(&(k, i)) = b.entries.get(at)
                    && k == want
                {
                    best = best.min(i);
                }
            } else {
                // The destination holds the rule's network (a CIDR VIP): any network inside.
                let last = key | host_mask(len, bits);
                let from = b.entries.partition_point(|&(k, _)| k < key);
                for &(k, i) in b.entries.iter().skip(from) {
                    if k > last {
                        break;
                    }
                    if i >= idx {
                        best = best.min(i);
                    }
                }
            }
        }
        best
    }
}

/// `key` with all but its first `len` bits (of `bits`) cleared.
fn mask(key: u128, len: u8, bits: u8) -> u128 {
    key & !host_mask(len, bits)
}

/// The host bits of a prefix of `len` bits in an address of `bits` bits.
fn host_mask(len: u8, bits: u8) -> u128 {
    let host = u32::from(bits.saturating_sub(len));
    if host == 0 {
        0
    } else {
        u128::MAX.checked_shr(128 - host).unwrap_or(0)
    }
}

fn traverse<'a>(table: &Index<'a>, start: &'a str, pkt: &Packet) -> Vec<Outcome<'a>> {
    let policy = |definite| -> Outcome<'a> {
        let drop = table
            .chain(start)
            .and_then(|c| c.policy.as_deref())
            .is_some_and(|p| p == "DROP");
        Outcome {
            verdict: if drop { Verdict::Drop } else { Verdict::Accept },
            definite,
            rule: None,
            port_specific: false,
        }
    };
    let indeterminate = Outcome {
        verdict: Verdict::Indeterminate,
        definite: false,
        rule: None,
        port_specific: false,
    };
    let Some(first) = table.chain(start) else {
        return vec![policy(true)];
    };
    let mut outcomes: Vec<Outcome<'a>> = Vec::new();
    let mut seen: HashSet<StateKey<'a>> = HashSet::new();
    // Work items: (current chain, next rule, return stack, definite so far).
    let mut work: Vec<(Frame<'a>, Vec<Frame<'a>>, bool)> = vec![((first, 0), Vec::new(), true)];
    let mut steps = 0usize;
    while let Some(((chain, idx), stack, definite)) = work.pop() {
        steps += 1;
        if steps > STEP_BUDGET || stack.len() > DEPTH_MAX {
            outcomes.push(indeterminate);
            break;
        }
        // The definite path is a single line (any fork makes both branches indefinite), so
        // only indefinite states can meet again and need remembering.
        if !definite {
            let key = (
                chain.name.as_str(),
                idx,
                stack.iter().map(|(c, i)| (c.name.as_str(), *i)).collect(),
            );
            if !seen.insert(key) {
                continue;
            }
        }
        let idx = table.next_candidate(chain, idx, pkt.dst);
        let Some(rule) = chain.rules.get(idx) else {
            // End of chain: back to the caller, or the start chain's policy.
            let mut stack = stack;
            match stack.pop() {
                Some(frame) => work.push((frame, stack, definite)),
                None => outcomes.push(policy(definite)),
            }
            continue;
        };
        let (m, port_specific) = matches(&rule.spec, pkt);
        if m == Tri::No {
            work.push(((chain, idx + 1), stack, definite));
            continue;
        }
        if m == Tri::Maybe {
            // The branch where the rule does not match.
            work.push(((chain, idx + 1), stack.clone(), false));
        }
        let definite = definite && m == Tri::Yes;
        let terminal = |verdict: Verdict| Outcome {
            verdict,
            definite,
            rule: Some(rule),
            port_specific,
        };
        let user_chain = match &rule.spec.target {
            Some(Target::Jump(n) | Target::Goto(n)) => table.chain(n).filter(|c| !c.is_builtin()),
            None => None,
        };
        match (&rule.spec.target, user_chain) {
            (None, _) => work.push(((chain, idx + 1), stack, definite)),
            (Some(t), Some(next)) => {
                let mut stack = stack;
                if matches!(t, Target::Jump(_)) {
                    stack.push((chain, idx + 1));
                }
                work.push(((next, 0), stack, definite));
            }
            (Some(t), None) => match t.name() {
                "RETURN" => {
                    let mut stack = stack;
                    match stack.pop() {
                        Some(frame) => work.push((frame, stack, definite)),
                        None => outcomes.push(policy(definite)),
                    }
                }
                "ACCEPT" => outcomes.push(terminal(Verdict::Accept)),
                "DROP" | "REJECT" => outcomes.push(terminal(Verdict::Drop)),
                "REDIRECT" => outcomes.push(terminal(Verdict::Redirect(rule.spec.to_ports))),
                n if CONTINUING.contains(&n) => work.push(((chain, idx + 1), stack, definite)),
                n => outcomes.push(terminal(Verdict::Other(n.to_owned()))),
            },
        }
    }
    outcomes
}

/// Whether `spec` matches `pkt`, and whether it does so by naming the packet's port.
fn matches(spec: &RuleSpec, pkt: &Packet) -> (Tri, bool) {
    let mut t = Tri::Yes;
    if let Some(p) = &spec.protocol {
        t = t.and(Tri::from_bool(matches!(p.value.as_str(), "tcp" | "all")).negate_if(p.negated));
    }
    if spec.source.is_some() {
        t = t.and(Tri::Maybe);
    }
    if let Some(d) = &spec.destination {
        let m = match pkt.dst {
            None => Tri::Maybe,
            Some(dst) if Family::of_net(&dst) != Family::of_net(&d.value) => Tri::No,
            Some(dst) if d.value.contains(&dst) => Tri::Yes,
            Some(dst) if dst.contains(&d.value) => Tri::Maybe,
            Some(_) => Tri::No,
        };
        t = t.and(m.negate_if(d.negated));
    }
    if let Some(i) = &spec.in_interface {
        let m = match pkt.hook {
            Hook::Output => Tri::Maybe,
            Hook::Prerouting | Hook::Input => iface_is_lo(&i.value, false),
        };
        t = t.and(m.negate_if(i.negated));
    }
    if let Some(o) = &spec.out_interface {
        let m = match (pkt.hook, pkt.dst) {
            (Hook::Output, Some(dst)) if !is_loopback(&dst) => iface_is_lo(&o.value, false),
            _ => Tri::Maybe,
        };
        t = t.and(m.negate_if(o.negated));
    }
    let mut port_specific = false;
    if let Some(d) = &spec.dports {
        let m = match pkt.dport {
            None => Tri::Maybe,
            Some(p) => Tri::from_bool(d.value.iter().any(|r| r.contains(p))),
        };
        port_specific = m == Tri::Yes && !d.negated;
        t = t.and(m.negate_if(d.negated));
    }
    if let Some(s) = &spec.sports {
        let all = s.value.iter().any(|r| r.first <= 1 && r.last == u16::MAX);
        t = t.and(if all {
            Tri::Yes.negate_if(s.negated)
        } else {
            Tri::Maybe
        });
    }
    if let Some(u) = &spec.uid_owner {
        let m = match pkt.uid {
            Uid::Is(id) => u.value.contains(id).map_or(Tri::Maybe, Tri::from_bool),
            Uid::App => Tri::No,
            Uid::Unknown | Uid::NoSocket => Tri::Maybe,
        };
        t = t.and(m.negate_if(u.negated));
    }
    if spec.gid_owner.is_some() {
        t = t.and(Tri::Maybe);
    }
    if let Some(c) = &spec.ct_state {
        // Every packet we follow opens a new connection.
        t = t.and(Tri::from_bool(c.value.iter().any(|s| s == "NEW")).negate_if(c.negated));
    }
    if !spec.other.is_empty() {
        t = t.and(Tri::Maybe);
    }
    (t, port_specific)
}

/// Whether an interface pattern (`eth0`, `eth+`, `+`) matches `lo`, for a packet that does
/// (`packet_on_lo`) or does not use loopback.
fn iface_is_lo(pattern: &str, packet_on_lo: bool) -> Tri {
    if pattern == "+" {
        return Tri::Yes;
    }
    let matches_lo = match pattern.strip_suffix('+') {
        Some(prefix) => "lo".starts_with(prefix),
        None => pattern == "lo",
    };
    match (matches_lo, packet_on_lo) {
        (true, true) => Tri::Yes,
        // `lo+`-like patterns match only loopback-ish names: a packet not on lo is not matched.
        (true, false) if pattern == "lo" || pattern == "lo+" => Tri::No,
        (false, true) => Tri::No,
        _ => Tri::Maybe,
    }
}

fn is_loopback(net: &IpNet) -> bool {
    net.addr().is_loopback()
}

#[cfg(test)]
mod tests;
