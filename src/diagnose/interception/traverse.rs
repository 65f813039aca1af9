//! Following a packet through a table: which rules may match it, where it jumps, and whether it is
//! redirected (three-valued: an option we do not model may or may not match).

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tri {
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
pub(super) enum Hook {
    /// Locally generated (nat OUTPUT).
    Output,
    /// Arriving from another machine, before routing.
    Prerouting,
    /// Arriving, after routing, to a local socket.
    Input,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Uid {
    Is(u32),
    /// An application: none of the UIDs named in the rules (they are exclusions).
    App,
    Unknown,
    /// A packet from elsewhere (no local socket).
    NoSocket,
}

/// The new TCP connection whose fate we want to know. `None` fields are unknown.
#[derive(Debug, Clone, Copy)]
pub(super) struct Packet {
    pub(super) hook: Hook,
    pub(super) dst: Option<IpNet>,
    pub(super) dport: Option<u16>,
    pub(super) uid: Uid,
}

impl Packet {
    pub(super) fn app(hook: Hook, dst: Option<IpNet>, dport: Option<u16>) -> Packet {
        Packet {
            hook,
            dst,
            dport,
            uid: Uid::App,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    Redirect(Option<PortRange>),
    Accept,
    Drop,
    Other(String),
    /// Too many rules or too deep to tell.
    Indeterminate,
}

#[derive(Debug, Clone)]
pub(super) struct Outcome<'a> {
    pub(super) verdict: Verdict,
    /// No undecided condition on the way.
    pub(super) definite: bool,
    /// The rule that decided; `None` for a chain policy.
    pub(super) rule: Option<&'a Rule>,
    /// The deciding rule names the packet's destination port explicitly.
    pub(super) port_specific: bool,
}

impl Outcome<'_> {
    pub(super) fn describe(&self) -> String {
        match self.rule {
            Some(r) => format!("`{}`", r.text),
            None => "chain policy DROP".to_owned(),
        }
    }
}

/// Targets that do not end the traversal.
pub(super) const CONTINUING: [&str; 18] = [
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
pub(super) type Frame<'a> = (&'a Chain, usize);
/// A traversal state by chain names: position and return stack.
pub(super) type StateKey<'a> = (&'a str, usize, Vec<(&'a str, usize)>);

/// A table with its chains found by name in O(1) (real tables can have thousands of chains),
/// and each chain's rules indexed by destination, so a packet to one VIP skips the rules for
/// every other VIP without looking at them: following 10,000 VIPs through a chain of 10,000
/// `-d VIP` rules is then 10,000 short walks, not 50 million rule visits.
pub(super) struct Index<'a> {
    pub(super) chains: HashMap<&'a str, (&'a Chain, DstIndex)>,
}

impl<'a> Index<'a> {
    pub(super) fn new(table: &'a Table) -> Index<'a> {
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
pub(super) struct DstIndex {
    pub(super) open: Vec<usize>,
    pub(super) buckets: Vec<DstBucket>,
}

pub(super) struct DstBucket {
    pub(super) v6: bool,
    pub(super) len: u8,
    /// (network as a number, rule position), sorted.
    pub(super) entries: Vec<(u128, usize)>,
}

pub(super) fn net_key(net: &IpNet) -> (bool, u8, u128) {
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
pub(super) fn mask(key: u128, len: u8, bits: u8) -> u128 {
    key & !host_mask(len, bits)
}

/// The host bits of a prefix of `len` bits in an address of `bits` bits.
pub(super) fn host_mask(len: u8, bits: u8) -> u128 {
    let host = u32::from(bits.saturating_sub(len));
    if host == 0 {
        0
    } else {
        u128::MAX.checked_shr(128 - host).unwrap_or(0)
    }
}

pub(super) fn traverse<'a>(table: &Index<'a>, start: &'a str, pkt: &Packet) -> Vec<Outcome<'a>> {
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
pub(super) fn matches(spec: &RuleSpec, pkt: &Packet) -> (Tri, bool) {
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
    if let Some(i) = spec.in_interface() {
        let m = match pkt.hook {
            Hook::Output => Tri::Maybe,
            Hook::Prerouting | Hook::Input => iface_is_lo(&i.value, false),
        };
        t = t.and(m.negate_if(i.negated));
    }
    if let Some(o) = spec.out_interface() {
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
    if let Some(s) = spec.sports() {
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
    if spec.gid_owner().is_some() {
        t = t.and(Tri::Maybe);
    }
    if let Some(c) = spec.ct_state() {
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
pub(super) fn iface_is_lo(pattern: &str, packet_on_lo: bool) -> Tri {
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

pub(super) fn is_loopback(net: &IpNet) -> bool {
    net.addr().is_loopback()
}
