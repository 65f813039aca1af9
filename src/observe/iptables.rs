//! Reading iptables: a tolerant parser of `iptables-save` / `ip6tables-save` output into
//! structured rules, and a runner for those programs (no shell, a deadline, bounded output).
//!
//! The parser never fails as a whole: a line it cannot understand is kept, with its text and
//! the reason, in [`Ruleset::unparsed`], and options it does not know are kept verbatim in
//! [`RuleSpec::other`] so that checks can treat them as "may or may not match".

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use crate::observe::nf_generation::Stamp;

use ipnet::IpNet;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// IPv4 (`iptables*`) or IPv6 (`ip6tables*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// The command family name: `iptables` or `ip6tables`.
    pub fn command(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// Position in per-family arrays (`[v4, v6]`), in the order of [`Family::BOTH`].
    pub fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.command())
    }
}

/// A whole `*-save` output: its tables, and the lines that could not be understood.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: Vec<Table>,
    pub unparsed: Vec<Unparsed>,
    /// Unparsed lines beyond [`MAX_UNPARSED`], counted but not kept.
    pub unparsed_dropped: usize,
}

/// At most this many unparsed lines are kept (the rest are counted).
pub const MAX_UNPARSED: usize = 200;
/// Text of an unparsed line is kept up to this many bytes.
pub const MAX_UNPARSED_TEXT: usize = 512;

impl Ruleset {
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Unparsed lines that sat in `table`/`chain`.
    pub fn unparsed_in<'a>(
        &'a self,
        table: &'a str,
        chain: &'a str,
    ) -> impl Iterator<Item = &'a Unparsed> + 'a {
        self.unparsed
            .iter()
            .filter(move |u| u.table.as_deref() == Some(table) && u.chain.as_deref() == Some(chain))
    }
}

/// One `*table` ... `COMMIT` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    /// Chains in the order they were declared (or first used by a rule).
    pub chains: Vec<Chain>,
    /// Whether the section ended with `COMMIT` (a truncated output does not).
    pub committed: bool,
}

impl Table {
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// The chain `name`, added (undeclared) when new. `index` maps names to positions in
    /// `chains`: a linear search per line made a kube-proxy-sized save (10,000 services, 20,000
    /// chains) take seconds to parse.
    fn chain_mut(&mut self, index: &mut HashMap<String, usize>, name: &str) -> Option<&mut Chain> {
        let i = match index.get(name) {
            Some(&i) => i,
            None => {
                self.chains.push(Chain {
                    name: name.to_owned(),
                    policy: None,
                    declared: false,
                    rules: Vec::new(),
                });
                let i = self.chains.len() - 1;
                index.insert(name.to_owned(), i);
                i
            }
        };
        self.chains.get_mut(i)
    }
}

/// A chain: `:NAME POLICY [packets:bytes]` and its rules in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// `ACCEPT`/`DROP` for built-in chains; `None` for user chains (`-`).
    pub policy: Option<String>,
    /// Whether a `:NAME` line declared it (rules may name undeclared chains in broken input).
    pub declared: bool,
    pub rules: Vec<Rule>,
}

impl Chain {
    pub fn is_builtin(&self) -> bool {
        self.policy.is_some()
    }
}

/// One `-A CHAIN ...` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub spec: RuleSpec,
    /// The line as printed by iptables-save (bounded), for humans.
    pub text: String,
    /// 1-based line number in the save output.
    pub line: usize,
}

impl Rule {
    /// The `-A CHAIN ...` text.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// The meaning of a rule: what it matches and what it does. Equality ignores the text, so a
/// rule from `iptables-save` and one we render compare equal when iptables would treat them
/// the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RuleSpec {
    /// Lower case; numbers 6/17/1 normalised to tcp/udp/icmp.
    pub protocol: Option<Neg<String>>,
    pub source: Option<Neg<IpNet>>,
    pub destination: Option<Neg<IpNet>>,
    pub in_interface: Option<Neg<String>>,
    pub out_interface: Option<Neg<String>>,
    /// `--dport` (one range) or `--dports` (a list), from `-m tcp`/`udp`/`multiport`.
    pub dports: Option<Neg<Vec<PortRange>>>,
    pub sports: Option<Neg<Vec<PortRange>>>,
    pub uid_owner: Option<Neg<Owner>>,
    pub gid_owner: Option<Neg<Owner>>,
    /// `-m conntrack --ctstate` / `-m state --state`, upper case.
    pub ct_state: Option<Neg<Vec<String>>>,
    /// `-m comment --comment`; never a condition.
    pub comment: Option<String>,
    pub target: Option<Target>,
    /// `--to-ports` of REDIRECT/MASQUERADE.
    pub to_ports: Option<PortRange>,
    /// Match options this parser does not model, verbatim and in order (e.g. `-m`, `mark`,
    /// `--mark`, `0x1`). A rule with any is treated as "may match".
    pub other: Vec<String>,
    /// Options of the target other than `--to-ports` (e.g. `--reject-with tcp-reset`); they
    /// change what the target does, not whether the rule matches.
    pub target_options: Vec<String>,
}

/// A value with the `!` of iptables.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Neg<T> {
    pub negated: bool,
    pub value: T,
}

impl<T> Neg<T> {
    pub fn new(value: T) -> Self {
        Neg {
            negated: false,
            value,
        }
    }
}

/// `80` or `8000:8100` (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    /// `80` or `8000:8100` as iptables-save prints it (`sep` is `:` for matches, `-` for
    /// `--to-ports`).
    pub fn render(&self, sep: char) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}{sep}{}", self.first, self.last)
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(':'))
    }
}

/// `--uid-owner` / `--gid-owner`: a number, a range, or a name iptables-save did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Range(u32, u32),
    Name(String),
}

impl Owner {
    pub fn contains(&self, id: u32) -> Option<bool> {
        match self {
            Owner::Range(a, b) => Some(*a <= id && id <= *b),
            Owner::Name(_) => None,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Range(a, b) if a == b => write!(f, "{a}"),
            Owner::Range(a, b) => write!(f, "{a}-{b}"),
            Owner::Name(n) => f.write_str(n),
        }
    }
}

/// `-j NAME` (jump, or a built-in target) or `-g NAME` (goto).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Jump(String),
    Goto(String),
}

impl Target {
    pub fn name(&self) -> &str {
        match self {
            Target::Jump(n) | Target::Goto(n) => n,
        }
    }
}

/// A line that was kept but not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unparsed {
    pub line: usize,
    pub table: Option<String>,
    pub chain: Option<String>,
    pub text: String,
    pub reason: String,
}

/// Parses the output of `iptables-save` or `ip6tables-save` (also with `-c` counters).
/// Never panics; see the module documentation.
pub fn parse_save(text: &str) -> Ruleset {
    let mut rs = Ruleset::default();
    let mut current: Option<Table> = None;
    // Chain positions in `current`.
    let mut index: HashMap<String, usize> = HashMap::new();
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let reject = |rs: &mut Ruleset, table: &Option<Table>, chain: Option<String>, why: &str| {
            push_unparsed(
                rs,
                line_no,
                table.as_ref().map(|t| t.name.clone()),
                chain,
                line,
                why,
            )
        };
        if let Some(name) = line.strip_prefix('*') {
            let name = name.trim();
            if let Some(open) = current.take() {
                rs.tables.push(open);
            }
            index.clear();
            if is_name(name) {
                current = Some(Table {
                    name: name.to_owned(),
                    chains: Vec::new(),
                    committed: false,
                });
            } else {
                reject(&mut rs, &None, None, "invalid table name");
            }
            continue;
        }
        if line == "COMMIT" {
            match current.take() {
                Some(mut t) => {
                    t.committed = true;
                    rs.tables.push(t);
                }
                None => reject(&mut rs, &None, None, "COMMIT outside a table"),
            }
            continue;
        }
        let Some(table) = current.as_mut() else {
            reject(&mut rs, &None, None, "outside a table");
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            let mut parts = decl.split_whitespace();
            let name = parts.next().unwrap_or("");
            let policy = parts.next();
            let policy_ok = policy.is_some_and(|p| {
                p == "-" || (is_name(p) && p.bytes().all(|b| b.is_ascii_uppercase()))
            });
            if !is_name(name) || !policy_ok {
                reject(&mut rs, &current, None, "malformed chain declaration");
                continue;
            }
            if let Some(chain) = table.chain_mut(&mut index, name) {
                chain.declared = true;
                chain.policy = policy.filter(|p| *p != "-").map(str::to_owned);
            }
            continue;
        }
        // `iptables-save -c` puts `[packets:bytes]` before the rule.
        let body = match line.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((_, after)) => after.trim_start(),
                None => line,
            },
            None => line,
        };
        if body.starts_with("-A ") || body.starts_with("--append ") {
            match parse_rule(body) {
                Ok((chain, spec)) => {
                    let rule = Rule {
                        chain: chain.clone(),
                        spec,
                        text: crate::text::truncate_with_ellipsis(body, MAX_UNPARSED_TEXT * 4),
                        line: line_no,
                    };
                    if let Some(c) = table.chain_mut(&mut index, &chain) {
                        c.rules.push(rule);
                    }
                }
                Err((chain, why)) => reject(&mut rs, &current, chain, &why),
            }
            continue;
        }
        reject(
            &mut rs,
            &current,
            None,
            "not a table, chain, rule or COMMIT line",
        );
    }
    if let Some(open) = current.take() {
        rs.tables.push(open);
    }
    rs
}

fn push_unparsed(
    rs: &mut Ruleset,
    line: usize,
    table: Option<String>,
    chain: Option<String>,
    text: &str,
    reason: &str,
) {
    if rs.unparsed.len() >= MAX_UNPARSED {
        rs.unparsed_dropped += 1;
        return;
    }
    rs.unparsed.push(Unparsed {
        line,
        table,
        chain,
        text: crate::text::truncate_with_ellipsis(
            &crate::text::strip_control(text),
            MAX_UNPARSED_TEXT,
        ),
        reason: reason.to_owned(),
    });
}

/// Table and chain names as iptables allows them (and nothing that could be mistaken for an
/// option or break a line).
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && !s.starts_with('!')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+' | b'@'))
}

/// Splits a save line into tokens: whitespace-separated, `"..."` quoted with `\"` and `\\`.
pub fn tokenize(line: &str) -> Result<Vec<String>, String> {
    // Almost every line has no quote: plain splitting gives the same tokens, much faster.
    if !line.contains('"') {
        return Ok(line.split_whitespace().map(str::to_owned).collect());
    }
    tokenize_quoted(line)
}

/// The tokenizer proper, quotes and escapes included.
fn tokenize_quoted(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { break };
        let mut tok = String::new();
        if first == '"' {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(n) => tok.push(n),
                        None => return Err("unterminated escape".into()),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => tok.push(c),
                }
            }
            if !closed {
                return Err("unterminated quote".into());
            }
            if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                return Err("text right after a closing quote".into());
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                tok.push(c);
                chars.next();
            }
        }
        out.push(tok);
    }
    Ok(out)
}

type RuleError = (Option<String>, String);

fn parse_rule(line: &str) -> Result<(String, RuleSpec), RuleError> {
    let tokens = tokenize(line).map_err(|e| (None, e))?;
    let mut it = tokens.into_iter().peekable();
    it.next(); // -A
    let chain = match it.next() {
        Some(c) if is_name(&c) => c,
        _ => return Err((None, "rule without a valid chain name".into())),
    };
    let fail = |why: String| (Some(chain.clone()), why);
    let mut spec = RuleSpec::default();
    let mut negate = false;
    let mut in_target = false;
    while let Some(tok) = it.next() {
        if tok == "!" {
            if negate {
                return Err(fail("double negation".into()));
            }
            negate = true;
            continue;
        }
        let opt = tok.as_str();
        // Older syntax puts `!` after the option: `-d ! 10.0.0.0/8`.
        let value = |it: &mut std::iter::Peekable<std::vec::IntoIter<String>>,
                     negate: &mut bool|
         -> Result<String, RuleError> {
            let mut v = it.next();
            if v.as_deref() == Some("!") {
                *negate = !*negate;
                v = it.next();
            }
            v.ok_or_else(|| (Some(chain.clone()), format!("{opt} without a value")))
        };
        match opt {
            "-p" | "--protocol" => {
                let v = value(&mut it, &mut negate)?;
                set_once(
                    &mut spec.protocol,
                    negate,
                    normalise_protocol(&v),
                    &mut spec.other,
                    opt,
                    &v,
                );
            }
            "-s" | "--source" | "--src" => {
                let v = value(&mut it, &mut negate)?;
                let net = parse_net(&v).map_err(|e| fail(format!("{opt} {e}")))?;
                if net.prefix_len() != 0 || negate {
                    set_once(&mut spec.source, negate, net, &mut spec.other, opt, &v);
                }
            }
            "-d" | "--destination" | "--dst" => {
                let v = value(&mut it, &mut negate)?;
                let net = parse_net(&v).map_err(|e| fail(format!("{opt} {e}")))?;
                if net.prefix_len() != 0 || negate {
                    set_once(&mut spec.destination, negate, net, &mut spec.other, opt, &v);
                }
            }
            "-i" | "--in-interface" => {
                let v = value(&mut it, &mut negate)?;
                set_once(
                    &mut spec.in_interface,
                    negate,
                    v.clone(),
                    &mut spec.other,
                    opt,
                    &v,
                );
            }
            "-o" | "--out-interface" => {
                let v = value(&mut it, &mut negate)?;
                set_once(
                    &mut spec.out_interface,
                    negate,
                    v.clone(),
                    &mut spec.other,
                    opt,
                    &v,
                );
            }
            "-m" | "--match" => {
                let v = value(&mut it, &mut negate)?;
                if negate {
                    return Err(fail("negated -m".into()));
                }
                match v.as_str() {
                    // Modules whose options are modelled below; the module itself adds nothing.
                    "tcp" | "udp" | "multiport" | "owner" | "comment" | "conntrack" | "state" => {}
                    _ => {
                        spec.other.push(tok.clone());
                        spec.other.push(v);
                    }
                }
            }
            "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                let v = value(&mut it, &mut negate)?;
                let ports = parse_port_list(&v, ':').map_err(|e| fail(format!("{opt} {e}")))?;
                set_once(&mut spec.dports, negate, ports, &mut spec.other, opt, &v);
            }
            "--sport" | "--source-port" | "--sports" | "--source-ports" => {
                let v = value(&mut it, &mut negate)?;
                let ports = parse_port_list(&v, ':').map_err(|e| fail(format!("{opt} {e}")))?;
                set_once(&mut spec.sports, negate, ports, &mut spec.other, opt, &v);
            }
            "--uid-owner" | "--gid-owner" => {
                let v = value(&mut it, &mut negate)?;
                let owner = parse_owner(&v).map_err(|e| fail(format!("{opt} {e}")))?;
                let slot = if opt == "--uid-owner" {
                    &mut spec.uid_owner
                } else {
                    &mut spec.gid_owner
                };
                set_once(slot, negate, owner, &mut spec.other, opt, &v);
            }
            "--ctstate" | "--state" => {
                let v = value(&mut it, &mut negate)?;
                let states: Vec<String> = v
                    .split(',')
                    .map(|s| s.trim().to_ascii_uppercase())
                    .collect();
                if states
                    .iter()
                    .any(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_uppercase()))
                {
                    return Err(fail(format!("{opt} with invalid states")));
                }
                set_once(&mut spec.ct_state, negate, states, &mut spec.other, opt, &v);
            }
            "--comment" => {
                let v = value(&mut it, &mut negate)?;
                spec.comment = Some(v);
            }
            "-j" | "--jump" | "-g" | "--goto" => {
                let v = value(&mut it, &mut negate)?;
                if negate || spec.target.is_some() || !is_name(&v) {
                    return Err(fail(format!("invalid target {opt} {v}")));
                }
                spec.target = Some(if opt == "-j" || opt == "--jump" {
                    Target::Jump(v)
                } else {
                    Target::Goto(v)
                });
                in_target = true;
            }
            "--to-ports" | "--to-port" if in_target => {
                let v = value(&mut it, &mut negate)?;
                let range = parse_port_range(&v, '-').map_err(|e| fail(format!("{opt} {e}")))?;
                spec.to_ports = Some(range);
            }
            _ if opt.starts_with('-') => {
                // Unknown option: keep it with its values (tokens up to the next option).
                let keep = if in_target {
                    &mut spec.target_options
                } else {
                    &mut spec.other
                };
                if negate {
                    keep.push("!".into());
                }
                keep.push(tok.clone());
                while let Some(next) = it.peek() {
                    if next.starts_with('-') || next == "!" {
                        break;
                    }
                    if let Some(v) = it.next() {
                        keep.push(v);
                    }
                }
            }
            _ => return Err(fail(format!("unexpected token {}", bounded(opt)))),
        }
        negate = false;
    }
    if negate {
        return Err(fail("dangling !".into()));
    }
    Ok((chain, spec))
}

fn bounded(s: &str) -> String {
    crate::text::truncate_with_ellipsis(&crate::text::strip_control(s), 64)
}

/// Sets an optional field once; a second occurrence (e.g. two port matches from different
/// modules) is kept verbatim in `other`, which makes the rule "may match" for checks.
fn set_once<T>(
    slot: &mut Option<Neg<T>>,
    negated: bool,
    value: T,
    other: &mut Vec<String>,
    opt: &str,
    raw: &str,
) {
    if slot.is_none() {
        *slot = Some(Neg { negated, value });
    } else {
        if negated {
            other.push("!".into());
        }
        other.push(opt.to_owned());
        other.push(raw.to_owned());
    }
}

fn normalise_protocol(p: &str) -> String {
    match p.to_ascii_lowercase().as_str() {
        "6" => "tcp".into(),
        "17" => "udp".into(),
        "1" => "icmp".into(),
        "58" => "ipv6-icmp".into(),
        "0" => "all".into(),
        other => other.to_owned(),
    }
}

/// `10.0.0.1/32`, `10.0.0.0/255.0.0.0` (contiguous masks only), or a bare address.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    if let Some((addr, mask)) = s.split_once('/')
        && let (Ok(addr), Ok(mask)) = (addr.parse::<IpAddr>(), mask.parse::<IpAddr>())
    {
        let prefix = match mask {
            IpAddr::V4(m) => contiguous_prefix(u128::from(u32::from(m)) << 96),
            IpAddr::V6(m) => contiguous_prefix(u128::from(m)),
        };
        if let Some(prefix) = prefix
            && let Ok(net) = IpNet::new(addr, prefix)
        {
            return Ok(net);
        }
        return Err(format!("has a non-contiguous mask: {}", bounded(s)));
    }
    Err(format!("is not an address: {}", bounded(s)))
}

fn contiguous_prefix(mask: u128) -> Option<u8> {
    let ones = mask.leading_ones();
    if mask.checked_shl(ones).unwrap_or(0) == 0 {
        u8::try_from(ones).ok()
    } else {
        None
    }
}

/// `80`, `8000:8100` (or with `sep` `-`); 0 is not a port we match on.
pub fn parse_port_range(s: &str, sep: char) -> Result<PortRange, String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("is not a port range: {}", bounded(s)))
    };
    match s.split_once(sep) {
        Some((a, b)) => {
            let (first, last) = (port(a)?, port(b)?);
            if first > last {
                return Err(format!("is a reversed range: {}", bounded(s)));
            }
            Ok(PortRange { first, last })
        }
        None => port(s).map(PortRange::single),
    }
}

fn parse_port_list(s: &str, sep: char) -> Result<Vec<PortRange>, String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    s.split(',').map(|p| parse_port_range(p, sep)).collect()
}

fn parse_owner(s: &str) -> Result<Owner, String> {
    if let Ok(id) = s.parse::<u32>() {
        return Ok(Owner::Range(id, id));
    }
    if let Some((a, b)) = s.split_once('-')
        && let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>())
    {
        return if a <= b {
            Ok(Owner::Range(a, b))
        } else {
            Err(format!("is a reversed range: {}", bounded(s)))
        };
    }
    if is_name(s) {
        Ok(Owner::Name(s.to_owned()))
    } else {
        Err(format!("is not a user: {}", bounded(s)))
    }
}

// ---------------------------------------------------------------------------------------------
// Running the programs.

/// Where the iptables programs are, and how long / how much output we accept. Tests point
/// these at other binaries (a missing path, a wrapper).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub save_v4: PathBuf,
    pub save_v6: PathBuf,
    pub restore_v4: PathBuf,
    pub restore_v6: PathBuf,
    /// Deadline for one run of one program.
    pub timeout: Duration,
    /// Cap on a save's output (a VM with a huge ruleset gets an error, not an OOM).
    pub max_output: usize,
}

/// Directories searched for the iptables programs, so the agent never depends on `PATH`.
const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

impl Tools {
    /// The system's programs, found in the standard directories (falling back to the bare
    /// name, which then fails as "missing" if `PATH` has nothing either).
    pub fn system() -> Tools {
        let find = |name: &str| {
            SYSTEM_DIRS
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from(name))
        };
        Tools {
            save_v4: find("iptables-save"),
            save_v6: find("ip6tables-save"),
            restore_v4: find("iptables-restore"),
            restore_v6: find("ip6tables-restore"),
            timeout: Duration::from_secs(10),
            max_output: 32 << 20,
        }
    }

    pub fn save_program(&self, family: Family) -> &Path {
        match family {
            Family::V4 => &self.save_v4,
            Family::V6 => &self.save_v6,
        }
    }

    pub fn restore_program(&self, family: Family) -> &Path {
        match family {
            Family::V4 => &self.restore_v4,
            Family::V6 => &self.restore_v6,
        }
    }
}

impl Default for Tools {
    fn default() -> Self {
        Tools::system()
    }
}

/// Why a run of an iptables program did not give us its output.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum IptablesError {
    #[error("{program} is not installed ({reason})")]
    Missing { program: String, reason: String },
    #[error("cannot run {program}: {reason}")]
    Spawn { program: String, reason: String },
    #[error("{program} failed ({status}): {message}")]
    Failed {
        program: String,
        status: String,
        /// iptables' own message (stderr), bounded, one line.
        message: String,
    },
    #[error("{program} did not finish within {timeout:?}")]
    Timeout { program: String, timeout: Duration },
    #[error("{program} printed more than {limit} bytes")]
    TooLarge { program: String, limit: usize },
    #[error("refusing to run {program}: {reason}")]
    Invalid { program: String, reason: String },
}

impl IptablesError {
    /// The message iptables printed, when it ran and failed.
    pub fn iptables_message(&self) -> Option<&str> {
        match self {
            IptablesError::Failed { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Whether this looks like the kernel lacking the (IPv6) netfilter modules, the case the
    /// guide answers with "reboot the VM and rerun the setup".
    pub fn looks_like_missing_modules(&self) -> bool {
        let IptablesError::Failed { message, .. } = self else {
            return false;
        };
        const SIGNS: [&str; 7] = [
            "insmod",
            "Table does not exist",
            "Address family not supported",
            "Protocol not supported",
            "Could not fetch rule set generation id",
            "can't initialize",
            "Failed to initialize nft",
        ];
        SIGNS.iter().any(|s| message.contains(s))
    }
}

/// Bytes of stderr kept from a failing program.
const STDERR_CAP: usize = 64 << 10;
/// Bytes of iptables' message carried in an error.
pub const MESSAGE_MAX: usize = 1024;

/// Output of a program that exited 0.
pub(crate) struct ToolOutput {
    pub stdout: Vec<u8>,
}

/// Runs `program args` directly (no shell) with `stdin`, a deadline and a cap on stdout.
/// On timeout the child is killed.
pub(crate) async fn run_tool(
    program: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
    max_stdout: usize,
) -> Result<ToolOutput, IptablesError> {
    let name = program.display().to_string();
    let run = async {
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => IptablesError::Missing {
                    program: name.clone(),
                    reason: e.to_string(),
                },
                _ => IptablesError::Spawn {
                    program: name.clone(),
                    reason: e.to_string(),
                },
            })?;
        let input = child.stdin.take();
        let write = async move {
            if let (Some(mut pipe), Some(data)) = (input, stdin) {
                // A program that exits early closes the pipe; its exit status tells why.
                let _ = pipe.write_all(data).await;
                let _ = pipe.shutdown().await;
            }
        };
        let out = read_capped(child.stdout.take(), max_stdout);
        let err = read_capped(child.stderr.take(), STDERR_CAP);
        let ((), out, err) = tokio::join!(write, out, err);
        let status = child.wait().await.map_err(|e| IptablesError::Spawn {
            program: name.clone(),
            reason: e.to_string(),
        })?;
        let (stdout, over) = out;
        let (stderr, _) = err;
        if over {
            return Err(IptablesError::TooLarge {
                program: name.clone(),
                limit: max_stdout,
            });
        }
        if !status.success() {
            let status = match status.code() {
                Some(c) => format!("exit status {c}"),
                None => "killed by a signal".to_owned(),
            };
            return Err(IptablesError::Failed {
                program: name.clone(),
                status,
                message: iptables_message(&stderr),
            });
        }
        Ok(ToolOutput { stdout })
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(IptablesError::Timeout {
            program: name,
            timeout,
        }),
    }
}

/// Reads up to `cap` bytes. Returns the bytes and whether there was more; on "more" it stops
/// reading and drops the pipe, so a writer that does not stop gets SIGPIPE instead of blocking.
async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>, cap: usize) -> (Vec<u8>, bool) {
    let Some(mut reader) = reader else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, false),
            Ok(n) => {
                let chunk = buf.get(..n).unwrap_or(&[]);
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or(&[]));
                if chunk.len() > room {
                    return (kept, true);
                }
            }
        }
    }
}

/// iptables' stderr as one bounded line, without its "Try `iptables -h'" boilerplate.
fn iptables_message(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Try `"))
        .collect();
    let mut joined = String::new();
    for l in &lines {
        if !joined.is_empty() {
            joined.push_str(if joined.ends_with(':') { " " } else { "; " });
        }
        joined.push_str(l);
    }
    if joined.is_empty() {
        joined.push_str("(no message)");
    }
    crate::text::truncate_with_ellipsis(&crate::text::strip_control(&joined), MESSAGE_MAX)
}

/// Runs `iptables-save` (or `ip6tables-save`) for one table (`Some("nat")`) or all tables
/// (`None`), and parses it.
pub async fn save(
    tools: &Tools,
    family: Family,
    table: Option<&str>,
) -> Result<Ruleset, IptablesError> {
    Ok(parse_save(&save_text(tools, family, table).await?))
}

/// Like [`save`], without parsing: the output as text (invalid UTF-8 replaced), for a caller
/// that can tell from the text alone that nothing changed (a parse of a 10,000-rule table
/// costs more than the comparison).
pub async fn save_text(
    tools: &Tools,
    family: Family,
    table: Option<&str>,
) -> Result<String, IptablesError> {
    let program = tools.save_program(family);
    let mut args = Vec::new();
    if let Some(t) = table {
        if !is_name(t) || !t.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(IptablesError::Invalid {
                program: program.display().to_string(),
                reason: format!("invalid table name {}", bounded(t)),
            });
        }
        args.push("-t");
        args.push(t);
    }
    let out = run_tool(program, &args, None, tools.timeout, tools.max_output).await?;
    Ok(match String::from_utf8(out.stdout) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// A save and the stamp read before it.
type Kept = (Stamp, Arc<Ruleset>);

/// Saves of every table, one per family, kept with the [`Stamp`] read before each and reused
/// while the stamp holds: a daemon polling an unchanged 10,000-rule ruleset runs no
/// `iptables-save` and parses nothing.
#[derive(Debug, Default)]
pub struct SaveCache {
    kept: std::sync::Mutex<[Option<Kept>; 2]>,
    /// Reads answered from the cache, for tests and metrics.
    reused: std::sync::atomic::AtomicU64,
}

impl SaveCache {
    /// All tables of `family`, from the cache if nothing changed since they were read.
    pub async fn save(&self, tools: &Tools, family: Family) -> Result<Arc<Ruleset>, IptablesError> {
        let i = family.index();
        let stamp = Stamp::read(tools.save_program(family));
        if let Some(stamp) = stamp
            && let Ok(kept) = self.kept.lock()
            && let Some(Some((at, rs))) = kept.get(i)
            && *at == stamp
        {
            self.reused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Arc::clone(rs));
        }
        let text = save_text(tools, family, None).await;
        let keep = match &text {
            Ok(t) => Stamp::for_save(stamp, t),
            Err(_) => None,
        };
        let rs = text.map(|t| Arc::new(parse_save(&t)));
        if let Ok(mut kept) = self.kept.lock()
            && let Some(slot) = kept.get_mut(i)
        {
            *slot = match (keep, &rs) {
                (Some(stamp), Ok(rs)) => Some((stamp, Arc::clone(rs))),
                _ => None,
            };
        }
        rs
    }

    pub fn reused(&self) -> u64 {
        self.reused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
