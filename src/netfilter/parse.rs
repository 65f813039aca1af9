//! `iptables-save` text into the model: tables, chains, rules and what could not be parsed.

use super::*;

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

/// The rare conditions of a spec being parsed, made when the first one is met; every caller
/// then writes into it (`set_once` sets an empty slot, or the option goes to `other` beside a
/// set one), so no box is left empty and equality holds.
fn rare(slot: &mut Option<Box<RareSpec>>) -> &mut RareSpec {
    slot.get_or_insert_with(Box::default)
}

pub(super) fn push_unparsed(
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
pub(super) fn tokenize_quoted(line: &str) -> Result<Vec<String>, String> {
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

pub(super) type RuleError = (Option<String>, String);

pub(super) fn parse_rule(line: &str) -> Result<(String, RuleSpec), RuleError> {
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
                    &mut rare(&mut spec.rare).in_interface,
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
                    &mut rare(&mut spec.rare).out_interface,
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
                set_once(
                    &mut rare(&mut spec.rare).sports,
                    negate,
                    ports,
                    &mut spec.other,
                    opt,
                    &v,
                );
            }
            "--uid-owner" | "--gid-owner" => {
                let v = value(&mut it, &mut negate)?;
                let owner = parse_owner(&v).map_err(|e| fail(format!("{opt} {e}")))?;
                let slot = if opt == "--uid-owner" {
                    &mut spec.uid_owner
                } else {
                    &mut rare(&mut spec.rare).gid_owner
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
                set_once(
                    &mut rare(&mut spec.rare).ct_state,
                    negate,
                    states,
                    &mut spec.other,
                    opt,
                    &v,
                );
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
                    &mut rare(&mut spec.rare).target_options
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

/// A name from input, fit for an error message (the reading side quotes table names too).
pub(crate) fn bounded(s: &str) -> String {
    crate::text::truncate_with_ellipsis(&crate::text::strip_control(s), 64)
}

/// Sets an optional field once; a second occurrence (e.g. two port matches from different
/// modules) is kept verbatim in `other`, which makes the rule "may match" for checks.
pub(super) fn set_once<T>(
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

pub(super) fn normalise_protocol(p: &str) -> String {
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

pub(super) fn contiguous_prefix(mask: u128) -> Option<u8> {
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

pub(super) fn parse_port_list(s: &str, sep: char) -> Result<Vec<PortRange>, String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    s.split(',').map(|p| parse_port_range(p, sep)).collect()
}

pub(super) fn parse_owner(s: &str) -> Result<Owner, String> {
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
