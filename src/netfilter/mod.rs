//! The iptables model: a tolerant parser of `iptables-save` / `ip6tables-save` output into
//! structured rules, shared by `observe` (which reads the tables), `diagnose` (which judges them)
//! and `intercept` (which plans and checks our chains). No I/O here: running the programs is
//! `observe::iptables`.
//!
//! The parser never fails as a whole: a line it cannot understand is kept, with its text and
//! the reason, in [`Ruleset::unparsed`], and options it does not know are kept verbatim in
//! [`RuleSpec::other`] so that checks can treat them as "may or may not match".

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

mod parse;

pub use parse::*;

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
    // (No copy of the chain's name: a rule is always read from its chain, and with 1,000
    // rules a name per rule was 1,000 strings held for nothing.)
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
    /// `--dport` (one range) or `--dports` (a list), from `-m tcp`/`udp`/`multiport`.
    pub dports: Option<Neg<Vec<PortRange>>>,
    pub uid_owner: Option<Neg<Owner>>,
    /// `-m comment --comment`; never a condition.
    pub comment: Option<String>,
    pub target: Option<Target>,
    /// `--to-ports` of REDIRECT/MASQUERADE.
    pub to_ports: Option<PortRange>,
    /// Match options this parser does not model, verbatim and in order (e.g. `-m`, `mark`,
    /// `--mark`, `0x1`). A rule with any is treated as "may match".
    pub other: Vec<String>,
    /// The rest, on the few rules that have any (`None` when all are empty: never an empty
    /// box, so that equality holds).
    pub rare: Option<Box<RareSpec>>,
}

/// What most rules lack, kept apart so that a rule without it (every rule of ours) is 264
/// bytes instead of 464: a ruleset of 1,000 rules is held for the daemon's life.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RareSpec {
    pub in_interface: Option<Neg<String>>,
    pub out_interface: Option<Neg<String>>,
    pub sports: Option<Neg<Vec<PortRange>>>,
    pub gid_owner: Option<Neg<Owner>>,
    /// `-m conntrack --ctstate` / `-m state --state`, upper case.
    pub ct_state: Option<Neg<Vec<String>>>,
    /// Options of the target other than `--to-ports` (e.g. `--reject-with tcp-reset`); they
    /// change what the target does, not whether the rule matches.
    pub target_options: Vec<String>,
}

impl RuleSpec {
    pub fn in_interface(&self) -> Option<&Neg<String>> {
        self.rare.as_ref().and_then(|r| r.in_interface.as_ref())
    }

    pub fn out_interface(&self) -> Option<&Neg<String>> {
        self.rare.as_ref().and_then(|r| r.out_interface.as_ref())
    }

    pub fn sports(&self) -> Option<&Neg<Vec<PortRange>>> {
        self.rare.as_ref().and_then(|r| r.sports.as_ref())
    }

    pub fn gid_owner(&self) -> Option<&Neg<Owner>> {
        self.rare.as_ref().and_then(|r| r.gid_owner.as_ref())
    }

    pub fn ct_state(&self) -> Option<&Neg<Vec<String>>> {
        self.rare.as_ref().and_then(|r| r.ct_state.as_ref())
    }

    pub fn target_options(&self) -> &[String] {
        self.rare.as_ref().map_or(&[], |r| &r.target_options)
    }
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

#[cfg(test)]
mod tests;
