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
use crate::observe::iptables::{
    Chain, Family, IptablesError, Neg, PortRange, Rule, RuleSpec, Ruleset, Table, Target,
};

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
mod tests {
    use super::*;
    use crate::intercept::plan::{DesiredInput, TrafficInterception, plan};
    use crate::observe::iptables::parse_save;

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
            parse_save("*filter\n:INPUT DROP [0:0]\n-A INPUT -p tcp -m tcp --dport 15001 -j ACCEPT\nCOMMIT\n").tables,
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
        use crate::observe::iptables::parse_save;
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
}
