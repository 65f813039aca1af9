//! Checks shared by the targets that end in an `iptables-restore` input: whatever the parsers
//! were fed, what would reach iptables is plain, re-readable text that deletes only rules that
//! exist, and applying it converges (a second transaction has nothing to do).

use service_proxy_agent::intercept::is_ours;
use service_proxy_agent::intercept::plan::{
    FamilyPlan, Transaction, clear_transaction, transaction,
};
use service_proxy_agent::observe::iptables::{Chain, Table, is_name, parse_save};

/// Asserts the restore text is safe to hand to `iptables-restore --noflush`.
pub fn assert_restore_text_safe(text: &str) {
    assert!(
        text.bytes()
            .all(|b| b == b'\n' || (b' '..=b'~').contains(&b)),
        "restore text with a byte iptables must not see: {text:?}"
    );
    assert!(
        text.starts_with("*nat\n") && text.ends_with("COMMIT\n"),
        "{text:?}"
    );
    assert_eq!(
        text.matches("COMMIT").count(),
        1,
        "a second COMMIT in restore text: {text:?}"
    );
    // `-X` only ever deletes one of our chains, by a valid name.
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("-X ") {
            assert!(is_name(name) && is_ours(name), "{line:?}");
        }
    }
    // Our own parser reads every other line back (`-D` lines are rules too).
    let as_rules: String = text
        .lines()
        .filter(|l| !l.starts_with("-X "))
        .map(|l| format!("{}\n", as_append(l)))
        .collect();
    let rs = parse_save(&as_rules);
    assert!(
        rs.unparsed.is_empty() && rs.unparsed_dropped == 0,
        "restore text that does not parse back: {:?}\n{text}",
        rs.unparsed
    );
    assert_eq!(rs.tables.len(), 1, "{text:?}");
}

/// `-D CHAIN spec` and `-I CHAIN N spec` read as `-A CHAIN spec`, so our save parser can check
/// the spec; the position of an insert must be a number from 1.
fn as_append(line: &str) -> String {
    if let Some(rest) = line.strip_prefix("-D ") {
        return format!("-A {rest}");
    }
    if let Some((chain, pos, rest)) = insert_parts(line) {
        assert!(pos >= 1, "-I at position 0: {line:?}");
        return format!("-A {chain} {rest}");
    }
    line.to_owned()
}

/// `(chain, position, spec)` of an `-I CHAIN N spec` line.
fn insert_parts(line: &str) -> Option<(&str, usize, &str)> {
    let rest = line.strip_prefix("-I ")?;
    let (chain, rest) = rest.split_once(' ')?;
    let (pos, spec) = rest.split_once(' ')?;
    let pos = pos
        .parse()
        .unwrap_or_else(|_| panic!("-I without a position: {line:?}"));
    Some((chain, pos, spec))
}

/// What `iptables-restore --noflush` does with `tx` on `table` (the nat table), as far as the
/// planner relies on it. Panics where the real command would refuse the transaction.
pub fn apply(table: Option<&Table>, tx: &Transaction) -> Table {
    let mut t = table.cloned().unwrap_or_else(|| Table {
        name: "nat".into(),
        chains: Vec::new(),
        committed: true,
    });
    let as_rules: String = tx
        .text
        .lines()
        .map(|l| format!("{}\n", as_append(l)))
        .collect();
    let parsed = parse_save(&as_rules);
    let Some(ops) = parsed.tables.first() else {
        panic!("no table in {:?}", tx.text)
    };
    // parse_save groups rules by chain; the order of operations is the line order.
    let mut rules: Vec<_> = ops
        .chains
        .iter()
        .flat_map(|c| c.rules.iter().map(move |r| (c.name.as_str(), r)))
        .collect();
    rules.sort_by_key(|(_, r)| r.line);
    let lines: Vec<&str> = tx.text.lines().collect();
    let mut rule_iter = rules.into_iter().peekable();
    for (idx, line) in lines.iter().enumerate() {
        let line_no = idx + 1;
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            match t.chains.iter_mut().find(|c| c.name == name) {
                Some(c) => {
                    c.rules.clear();
                    c.declared = true;
                }
                None => t.chains.push(Chain {
                    name: name.to_owned(),
                    policy: None,
                    declared: true,
                    rules: Vec::new(),
                }),
            }
        } else if let Some(name) = line.strip_prefix("-X ") {
            let pos = t.chains.iter().position(|c| c.name == name);
            let Some(pos) = pos else {
                panic!("-X of a chain that does not exist: {name}\n{}", tx.text)
            };
            assert!(
                t.chains[pos].rules.is_empty(),
                "-X of a chain that still has rules: {name}\n{}",
                tx.text
            );
            t.chains.remove(pos);
        } else if line.starts_with("-A ") || line.starts_with("-D ") || line.starts_with("-I ") {
            let Some((rule_chain, rule)) = rule_iter.next() else {
                panic!("rule line not parsed: {line}")
            };
            assert_eq!(rule.line, line_no);
            let chain = match t.chains.iter_mut().find(|c| c.name == rule_chain) {
                Some(c) => c,
                None => {
                    assert!(
                        line.starts_with("-A "),
                        "-D in a chain that does not exist: {line}\n{}",
                        tx.text
                    );
                    t.chains.push(Chain {
                        name: rule_chain.to_owned(),
                        policy: None,
                        declared: false,
                        rules: Vec::new(),
                    });
                    t.chains.last_mut().unwrap()
                }
            };
            if line.starts_with("-D ") {
                let Some(pos) = chain.rules.iter().position(|r| r.spec == rule.spec) else {
                    panic!("-D of a rule that does not exist: {line}\n{}", tx.text)
                };
                chain.rules.remove(pos);
            } else if let Some((_, pos, _)) = insert_parts(line) {
                assert!(
                    pos <= chain.rules.len() + 1,
                    "-I past the end of the chain: {line}\n{}",
                    tx.text
                );
                let mut r = rule.clone();
                r.text = format!(
                    "-A {} {}",
                    rule_chain,
                    insert_parts(line).map_or("", |p| p.2)
                );
                chain.rules.insert(pos - 1, r);
            } else {
                let mut r = rule.clone();
                r.text = line.to_string();
                chain.rules.push(r);
            }
        }
    }
    t
}

/// Runs the planner's transaction from `current` to `fp`, checks its text, applies it and
/// checks that nothing is left to do.
pub fn check_converges(fp: &FamilyPlan, current: Option<&Table>, unparsed_in_ours: usize) {
    let tx = match transaction(fp, current, unparsed_in_ours) {
        Ok(Some(tx)) => tx,
        Ok(None) | Err(_) => return,
    };
    assert_restore_text_safe(&tx.text);
    let after = apply(current, &tx);
    match transaction(fp, Some(&after), 0) {
        Ok(None) => {}
        Ok(Some(again)) => panic!(
            "the transaction does not converge:\nfirst:\n{}\nthen:\n{}",
            tx.text, again.text
        ),
        Err(e) => panic!("after the transaction: {e}\nfirst:\n{}", tx.text),
    }
}

/// The same for `intercept clear`: after it, nothing of ours is left to remove.
pub fn check_clear_converges(current: Option<&Table>) {
    let Ok(Some(tx)) = clear_transaction(current) else {
        return;
    };
    assert_restore_text_safe(&tx.text);
    let after = apply(current, &tx);
    match clear_transaction(Some(&after)) {
        Ok(None) => {}
        Ok(Some(again)) => panic!(
            "clearing does not converge:\nfirst:\n{}\nthen:\n{}",
            tx.text, again.text
        ),
        Err(e) => panic!("after clearing: {e}\nfirst:\n{}", tx.text),
    }
}
