//! The interception rules the agent wants (docs/contract.md#7-interception), and the `iptables-restore --noflush`
//! transaction that takes a nat table from what it is to that. Pure: no I/O.
//!
//! For each family with something to do (IPv4 always; IPv6 only when a listener VIP is IPv6),
//! the nat table gets exactly:
//!
//! ```text
//! -A OUTPUT -p tcp -j SERVICE_PROXY_OUTPUT
//! -A PREROUTING -p tcp -j SERVICE_PROXY_INBOUND
//! -A SERVICE_PROXY_OUTPUT -m owner --uid-owner <envoy uid> -j RETURN
//! -A SERVICE_PROXY_OUTPUT -d 127.0.0.1/32 -j RETURN              (::1/128 for IPv6)
//! -A SERVICE_PROXY_OUTPUT -j SERVICE_PROXY_SERVICE_CIDRS
//! -A SERVICE_PROXY_SERVICE_CIDRS -d <vip> -j SERVICE_PROXY_REDIRECT   (one per VIP, sorted)
//! -A SERVICE_PROXY_REDIRECT -p tcp -j REDIRECT --to-ports <proxy port>
//! -A SERVICE_PROXY_INBOUND -p tcp -m tcp --dport <port> -j SERVICE_PROXY_IN_REDIRECT  (sorted)
//! -A SERVICE_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports <proxy port>
//! ```
//!
//! With `intercept-all-outbound`, `SERVICE_PROXY_OUTPUT` becomes: the UID and loopback
//! RETURNs, `-o lo -j RETURN` (traffic that never leaves the VM has no service to reach; this
//! keeps e.g. a local DNS resolver on 127.0.0.53 working), a RETURN for the agent's own
//! marked sockets and one for the metadata server (docs/contract.md#11-trust), one RETURN per excluded IP range and
//! per excluded port range (the user's explicit exclusions win, even over a VIP), the jump to
//! `SERVICE_PROXY_SERVICE_CIDRS` (kept so the guide's "look for your VIP there" still holds),
//! and finally `-j SERVICE_PROXY_REDIRECT` for everything else. Exclusions of one family only
//! go to that family's table.
//!
//! IPv6 gets rules only when there is an IPv6 VIP: redirecting IPv6 to a proxy that does not
//! listen on IPv6 would cut the VM off. An IPv6 plan with nothing to do still exists, with no
//! chains, so that reconciling it removes our stale chains from ip6tables.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use thiserror::Error;

use crate::intercept::is_ours;
use crate::netfilter::{
    Family, PortRange, Rule, RuleSpec, Table, Target, parse_port_range, parse_save, tokenize,
};

pub use crate::contract::chains::{
    ALL as CHAINS, IN_REDIRECT, INBOUND, OUTPUT, REDIRECT, SERVICE_CIDRS,
};

/// Built-in chains of the nat table: jumps from these into our chains are ours.
pub const NAT_BUILTINS: [&str; 4] = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"];

/// `traffic-interception` of the `gce-service-proxy` metadata, as given (text is parsed here,
/// strictly, and never passed on as is).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficInterception {
    pub intercept_all_outbound: bool,
    pub exclude_outbound_ip_ranges: Vec<String>,
    pub exclude_outbound_port_ranges: Vec<String>,
}

/// Everything the desired state depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredInput {
    /// The listener VIPs (`prefix_ranges` of Envoy's dynamic listeners), already parsed.
    pub vips: Vec<IpNet>,
    /// Inbound ports to intercept.
    pub serving_ports: Vec<u16>,
    /// Excluded from outbound interception, so Envoy's own connections are not looped back.
    pub envoy_uid: u32,
    /// Where intercepted traffic is redirected.
    pub proxy_port: u16,
    pub traffic: TrafficInterception,
}

/// An input value left out of the rules, and why (reported, never passed to iptables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// e.g. `exclude-outbound-ip-ranges`, `serving-ports`.
    pub field: &'static str,
    /// The value, bounded and without control characters.
    pub value: String,
    pub reason: String,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("the proxy port must be 1-65535, not 0")]
    ProxyPortZero,
    #[error(
        "Envoy's listeners name {count} VIPs, more than the {MAX_VIPS} the agent programs; interception left as it is"
    )]
    TooManyVips { count: usize },
    #[error("cannot delete the rule `{rule}` (line {line}) safely: {reason}; remove it by hand")]
    UnsafeRule {
        rule: String,
        line: usize,
        reason: String,
    },
}

/// The desired state of both families.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub v4: FamilyPlan,
    pub v6: FamilyPlan,
    /// Inputs left out, with the reason.
    pub ignored: Vec<Ignored>,
    /// VIPs that an intercept-all exclusion keeps away from Envoy (the user's choice wins).
    pub excluded_vips: Vec<IpNet>,
}

impl Plan {
    pub fn family(&self, family: Family) -> &FamilyPlan {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }
}

/// The desired nat-table content of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPlan {
    pub family: Family,
    /// Our chains, in declaration order; empty when this family has nothing to do.
    pub chains: Vec<&'static str>,
    /// The jumps from built-in chains (`-A OUTPUT ...`, `-A PREROUTING ...`).
    pub jumps: Vec<String>,
    /// The rules of our chains, in order (`-A SERVICE_PROXY_... ...`).
    pub rules: Vec<String>,
}

impl FamilyPlan {
    fn inactive(family: Family) -> Self {
        FamilyPlan {
            family,
            chains: Vec::new(),
            jumps: Vec::new(),
            rules: Vec::new(),
        }
    }

    /// Whether this family gets any rule at all.
    pub fn is_active(&self) -> bool {
        !self.chains.is_empty()
    }

    /// Rules in our chains plus jumps.
    pub fn rule_count(&self) -> usize {
        self.rules.len() + self.jumps.len()
    }

    /// The desired state as a parsed nat table (our chains and jumps only), for structural
    /// comparison with what `iptables-save` shows.
    pub fn desired_table(&self) -> Table {
        let mut text = String::from("*nat\n");
        for c in &self.chains {
            text.push_str(&format!(":{c} - [0:0]\n"));
        }
        for l in self.jumps.iter().chain(&self.rules) {
            text.push_str(l);
            text.push('\n');
        }
        text.push_str("COMMIT\n");
        parse_save(&text)
            .tables
            .into_iter()
            .next()
            .unwrap_or_else(|| Table {
                name: "nat".into(),
                chains: Vec::new(),
                committed: true,
            })
    }

    /// Whether `saved` (an `iptables-save -t nat` output, as text) already holds exactly this
    /// plan: our chains declared, their rules and the jumps into them byte for byte as planned,
    /// nothing else of ours. Only an exact match answers `true` (and then [`transaction`] would
    /// answer `None`); any difference, formatting included, answers `false` and the caller
    /// compares structurally. This is every poll that has to save (nf_tables' generation moved,
    /// or the backend is legacy), so it costs one pass over the text and no parse.
    pub fn matches_saved_text(&self, saved: &str) -> bool {
        let mut tables = 0;
        let mut in_nat = false;
        let mut declared: Vec<&str> = Vec::new();
        let mut jumps: Vec<&str> = Vec::new();
        // Our rules, chain by chain, in the order of `self.rules`.
        let mut ours: Vec<(&str, Vec<&str>)> =
            self.chains.iter().map(|c| (*c, Vec::new())).collect();
        for raw in saved.lines() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                in_nat = name.trim() == "nat";
                tables += usize::from(in_nat);
                continue;
            }
            if !in_nat || line == "COMMIT" {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split(' ').next().unwrap_or_default();
                if is_ours(name) {
                    declared.push(name);
                }
                continue;
            }
            let Some(rest) = line.strip_prefix("-A ") else {
                if line.contains(crate::intercept::CHAIN_PREFIX) {
                    return false;
                }
                continue;
            };
            let chain = rest.split(' ').next().unwrap_or_default();
            if is_ours(chain) {
                match ours.iter_mut().find(|(c, _)| *c == chain) {
                    Some((_, lines)) => lines.push(line),
                    None => return false,
                }
            } else if jump_target(line).is_some_and(is_ours) {
                jumps.push(line);
            }
        }
        if tables > 1 {
            return false;
        }
        declared.sort_unstable();
        let mut want_chains: Vec<&str> = self.chains.clone();
        want_chains.sort_unstable();
        if declared != want_chains {
            return false;
        }
        let mut want_jumps: Vec<&str> = self.jumps.iter().map(String::as_str).collect();
        want_jumps.sort_unstable();
        jumps.sort_unstable();
        if jumps != want_jumps {
            return false;
        }
        let mut want: Vec<(&str, Vec<&str>)> =
            self.chains.iter().map(|c| (*c, Vec::new())).collect();
        for r in &self.rules {
            let chain = rule_chain(r);
            match want.iter_mut().find(|(c, _)| Some(*c) == chain) {
                Some((_, lines)) => lines.push(r),
                None => return false,
            }
        }
        ours == want
    }

    /// The restore input that builds this state on a nat table holding nothing of ours (what
    /// `intercept plan` shows); `None` when there is nothing to do.
    pub fn restore_text(&self) -> Option<String> {
        transaction(self, None, 0).ok().flatten().map(|t| t.text)
    }
}

/// The last plan and the input it was made from. The daemon plans every poll, and nearly every
/// poll has the inputs of the one before (Envoy's listeners, the ports and the options stand
/// still): building a thousand rules again each time was 6 % of an idle agent's CPU, and their
/// text a poll's worth of allocations. Equal input, the very same plan (shared, by identity).
#[derive(Debug, Default, Clone)]
pub struct PlanMemo {
    last: Option<(DesiredInput, Arc<Plan>)>,
}

impl PlanMemo {
    /// The plan for `input`: the last one when `input` equals the last input, else a new one
    /// (kept only when planning succeeded; an error is returned each time it is asked).
    pub fn plan(&mut self, input: DesiredInput) -> Result<Arc<Plan>, PlanError> {
        if let Some((last, p)) = &self.last
            && *last == input
        {
            return Ok(Arc::clone(p));
        }
        self.last = None;
        let p = Arc::new(plan(&input)?);
        self.last = Some((input, Arc::clone(&p)));
        Ok(p)
    }
}

/// Computes the desired state. Total: bad inputs are left out and listed in `ignored`.
pub fn plan(input: &DesiredInput) -> Result<Plan, PlanError> {
    if input.proxy_port == 0 {
        return Err(PlanError::ProxyPortZero);
    }
    let mut ignored = Vec::new();
    let all = input.traffic.intercept_all_outbound;
    let vips: BTreeSet<IpNet> = input
        .vips
        .iter()
        .map(IpNet::trunc)
        .filter(|v| match unsafe_vip(v, all) {
            Some(why) => {
                ignored.push(ignore("prefix_ranges", &v.to_string(), why));
                false
            }
            None => true,
        })
        .collect();

    if vips.len() > MAX_VIPS {
        return Err(PlanError::TooManyVips { count: vips.len() });
    }

    let mut serving = BTreeSet::new();
    for &p in &input.serving_ports {
        if p == 0 {
            ignored.push(ignore("serving-ports", "0", "0 is not a port"));
        } else if p == input.proxy_port {
            ignored.push(ignore(
                "serving-ports",
                &p.to_string(),
                "it is the proxy port itself; redirecting it would loop",
            ));
        } else {
            serving.insert(p);
        }
    }

    let mut excl_nets = BTreeSet::new();
    for raw in &input.traffic.exclude_outbound_ip_ranges {
        if !all {
            ignored.push(ignore(
                "exclude-outbound-ip-ranges",
                raw,
                "only used with intercept-all-outbound",
            ));
            continue;
        }
        match parse_exclude_ip_range(raw) {
            Ok(n) => {
                excl_nets.insert(n);
            }
            Err(e) => ignored.push(ignore("exclude-outbound-ip-ranges", raw, &e)),
        }
    }
    if all {
        excl_nets.extend(METADATA_SERVER.iter().map(|m| IpNet::from(*m)));
    }
    let mut excl_ports = BTreeSet::new();
    for raw in &input.traffic.exclude_outbound_port_ranges {
        if !all {
            ignored.push(ignore(
                "exclude-outbound-port-ranges",
                raw,
                "only used with intercept-all-outbound",
            ));
            continue;
        }
        match parse_exclude_port_range(raw) {
            Ok(r) => {
                excl_ports.insert(r);
            }
            Err(e) => ignored.push(ignore("exclude-outbound-port-ranges", raw, &e)),
        }
    }
    let excluded_vips = vips
        .iter()
        .filter(|v| excl_nets.iter().any(|e| e.contains(*v)))
        .copied()
        .collect();

    let build = |family: Family| -> FamilyPlan {
        let fam_vips: Vec<&IpNet> = vips
            .iter()
            .filter(|v| Family::of_net(v) == family)
            .collect();
        if family == Family::V6 && fam_vips.is_empty() {
            return FamilyPlan::inactive(family);
        }
        let loopback = match family {
            Family::V4 => IpNet::from(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Family::V6 => IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        };
        let redirect = format!("-p tcp -j REDIRECT --to-ports {}", input.proxy_port);
        let mut rules = vec![
            format!(
                "-A {OUTPUT} -m owner --uid-owner {} -j RETURN",
                input.envoy_uid
            ),
            format!("-A {OUTPUT} -d {loopback} -j RETURN"),
        ];
        if all {
            rules.push(format!("-A {OUTPUT} -o lo -j RETURN"));
            // The agent's own traffic is never redirected (docs/contract.md#11-trust): with Envoy down, the agent
            // must still be able to say so. The metadata server is among the exclusions.
            rules.push(format!(
                "-A {OUTPUT} -m mark --mark {:#x} -j RETURN",
                crate::observe::own_traffic::MARK
            ));
            for n in excl_nets.iter().filter(|n| Family::of_net(n) == family) {
                rules.push(format!("-A {OUTPUT}{} -j RETURN", dest(n)));
            }
            for r in &excl_ports {
                rules.push(format!(
                    "-A {OUTPUT} -p tcp -m tcp --dport {} -j RETURN",
                    r.render(':')
                ));
            }
        }
        rules.push(format!("-A {OUTPUT} -j {SERVICE_CIDRS}"));
        if all {
            rules.push(format!("-A {OUTPUT} -j {REDIRECT}"));
        }
        // One rule per VIP: thousands on a big mesh, so each is written in one allocation.
        rules.reserve(fam_vips.len() + 4);
        for v in &fam_vips {
            use std::fmt::Write as _;
            let mut r = String::with_capacity(SERVICE_CIDRS.len() + REDIRECT.len() + 60);
            let _ = if v.prefix_len() == 0 {
                write!(r, "-A {SERVICE_CIDRS} -j {REDIRECT}")
            } else {
                write!(r, "-A {SERVICE_CIDRS} -d {v} -j {REDIRECT}")
            };
            rules.push(r);
        }
        rules.push(format!("-A {REDIRECT} {redirect}"));
        for p in &serving {
            rules.push(format!(
                "-A {INBOUND} -p tcp -m tcp --dport {p} -j {IN_REDIRECT}"
            ));
        }
        rules.push(format!("-A {IN_REDIRECT} {redirect}"));
        FamilyPlan {
            family,
            chains: CHAINS.to_vec(),
            jumps: vec![
                format!("-A OUTPUT -p tcp -j {OUTPUT}"),
                format!("-A PREROUTING -p tcp -j {INBOUND}"),
            ],
            rules,
        }
    };

    Ok(Plan {
        v4: build(Family::V4),
        v6: build(Family::V6),
        ignored,
        excluded_vips,
    })
}

/// The metadata server (IPv4, and the IPv6 address Compute Engine gives it).
pub const METADATA_SERVER: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V6(Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)),
];
/// The most VIPs programmed (docs/contract.md#11-trust bounds): the biggest meshes seen have a few thousand
/// services; 450,000 from a hostile or broken admin cost 600–740 MB and as many rules. Above
/// it nothing is changed and the agent says why.
pub const MAX_VIPS: usize = 10_000;

/// Shortest VIP prefix taken without `intercept-all-outbound` (docs/contract.md#11-trust): anything wider is
/// "redirect a quarter of the Internet", which no service VIP is.
pub const MIN_PREFIX_V4: u8 = 8;
pub const MIN_PREFIX_V6: u8 = 32;

/// Why a listener prefix must not be redirected (docs/contract.md#11-trust), or `None`. Loopback and the
/// metadata server are never redirected (the agent's tokens and every local service would go
/// to whoever answers as Envoy); a prefix shorter than /8 (IPv6 /32) only when all outbound
/// traffic is intercepted anyway.
fn unsafe_vip(v: &IpNet, intercept_all: bool) -> Option<&'static str> {
    let loopback = match v {
        IpNet::V4(_) => IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).ok()?),
        IpNet::V6(_) => IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    };
    if v.contains(&loopback) || loopback.contains(v) {
        return Some("it covers loopback, which is never redirected");
    }
    if METADATA_SERVER.iter().any(|m| v.contains(m)) {
        return Some("it covers the metadata server, which is never redirected");
    }
    let min = match v {
        IpNet::V4(_) => MIN_PREFIX_V4,
        IpNet::V6(_) => MIN_PREFIX_V6,
    };
    if !intercept_all && v.prefix_len() < min {
        return Some(
            "a prefix this wide is only redirected with intercept-all-outbound (shortest /8, IPv6 /32)",
        );
    }
    None
}

/// The target of a rule's `-j`/`-g`, if any.
fn jump_target(line: &str) -> Option<&str> {
    let mut words = line.split(' ');
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" {
            return words.next();
        }
    }
    None
}

/// The chain of a `-A CHAIN ...` line.
fn rule_chain(line: &str) -> Option<&str> {
    line.strip_prefix("-A ")?.split(' ').next()
}

/// ` -d <net>` as iptables-save prints it; nothing for a /0 (it matches everything).
fn dest(net: &IpNet) -> String {
    if net.prefix_len() == 0 {
        String::new()
    } else {
        format!(" -d {net}")
    }
}

fn ignore(field: &'static str, value: &str, reason: &str) -> Ignored {
    Ignored {
        field,
        value: crate::text::truncate_with_ellipsis(&crate::text::strip_control(value), 128),
        reason: reason.to_owned(),
    }
}

/// An `exclude-outbound-ip-ranges` entry: a CIDR or a bare address (host bits are cleared,
/// as iptables would).
pub fn parse_exclude_ip_range(raw: &str) -> Result<IpNet, String> {
    let s = raw.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(a));
    }
    Err("not an IP address or CIDR range".into())
}

/// An `exclude-outbound-port-ranges` entry: `22`, `8000-8100` or `8000:8100`, ports 1-65535.
pub fn parse_exclude_port_range(raw: &str) -> Result<PortRange, String> {
    let s = raw.trim();
    let sep = if s.contains('-') { '-' } else { ':' };
    let r = parse_port_range(s, sep)
        .map_err(|_| "not a port or port range (e.g. 22, 8000-8100)".to_owned())?;
    if r.first == 0 {
        return Err("0 is not a port".into());
    }
    Ok(r)
}

mod transaction;

pub use transaction::*;

#[cfg(test)]
mod tests;
