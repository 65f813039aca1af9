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
use std::sync::Arc;

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

/// The last answer of [`check`] and what it was given. A steady poll hands the checks the same
/// rulesets (the observer's saves, shared while the tables' generation stands still) and the
/// same listeners, and walking 1,000 VIPs through the chains again was a fifth of the agent's
/// CPU in such a poll (perf, 1,000 VIPs, 10 s polls); the answer depends on nothing else (no
/// clock), so it is reused. The rulesets are compared by identity, and the memo holds them so
/// that an address cannot be reused by another ruleset while it is compared against.
#[derive(Debug, Default, Clone)]
pub struct Memo {
    last: Option<(MemoKey, Vec<Finding>)>,
    /// How many times the chains were walked (for the tests).
    computed: u64,
}

#[derive(Debug, Clone)]
struct MemoKey {
    v4: Arc<Ruleset>,
    v6: Option<Arc<Ruleset>>,
    vips: Vec<IpNet>,
    serving_ports: Vec<u16>,
    envoy_uid: Option<u32>,
    has_interception_listener: bool,
    proxy_port: Option<u16>,
}

impl MemoKey {
    fn matches(
        &self,
        v4: &Arc<Ruleset>,
        v6: Option<&Arc<Ruleset>>,
        i: &InterceptionInput<'_>,
    ) -> bool {
        Arc::ptr_eq(&self.v4, v4)
            && match (&self.v6, v6) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
            && self.vips == i.vips
            && self.serving_ports == i.serving_ports
            && self.envoy_uid == i.envoy_uid
            && self.has_interception_listener == i.has_interception_listener
            && self.proxy_port == i.proxy_port
    }
}

impl Memo {
    /// [`check`] of `input`, whose rulesets are `v4` and `v6` (`None`: not read); reused when
    /// every input is what it was last time. Inputs with a read error are checked each time
    /// (no walk happens then).
    pub fn check(
        &mut self,
        input: &InterceptionInput<'_>,
        v4: &Arc<Ruleset>,
        v6: Option<&Arc<Ruleset>>,
    ) -> Vec<Finding> {
        if let Some((key, findings)) = &self.last
            && key.matches(v4, v6, input)
        {
            return findings.clone();
        }
        let findings = check(input);
        self.computed += 1;
        self.last = Some((
            MemoKey {
                v4: Arc::clone(v4),
                v6: v6.cloned(),
                vips: input.vips.to_vec(),
                serving_ports: input.serving_ports.to_vec(),
                envoy_uid: input.envoy_uid,
                has_interception_listener: input.has_interception_listener,
                proxy_port: input.proxy_port,
            },
            findings.clone(),
        ));
        findings
    }

    /// How many times the chains were walked.
    pub fn computed(&self) -> u64 {
        self.computed
    }
}

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

mod traverse;

use traverse::*;

#[cfg(test)]
mod tests;
