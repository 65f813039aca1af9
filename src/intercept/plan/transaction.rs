//! From the current tables to the wanted ones: the `iptables-restore --noflush` input that edits
//! only our chains and jumps, or nothing when they already match.

use super::*;

/// One `iptables-restore --noflush` input and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub text: String,
    /// Jumps from built-in chains deleted (duplicates, stale ones).
    pub deleted_jumps: usize,
    pub added_jumps: usize,
    /// Our chains deleted because they are not wanted any more.
    pub removed_chains: Vec<String>,
    /// Our chains (re)built: declared (which flushes them) and filled.
    pub rebuilt_chains: Vec<String>,
    /// Our chains edited in place: only the rules that differ deleted or inserted.
    pub edited_chains: Vec<String>,
    /// Rules deleted from / inserted into the edited chains.
    pub deleted_rules: usize,
    pub inserted_rules: usize,
}

/// The transaction taking `current` (this family's nat table as saved, `None` when it has no
/// nat table) to `desired`, or `None` when they already agree. `unparsed_in_ours` counts
/// lines of our chains the parser could not read; any makes the chains be rebuilt.
///
/// Our chains are declared (`:NAME - [0:0]`, which creates or flushes them in the same
/// transaction) and refilled; stale ones are flushed and deleted; jumps from built-in chains
/// into ours are made exactly the wanted ones (duplicates and strays deleted by their exact
/// spec, missing ones appended). Nothing else is touched.
pub fn transaction(
    desired: &FamilyPlan,
    current: Option<&Table>,
    unparsed_in_ours: usize,
) -> Result<Option<Transaction>, PlanError> {
    transaction_with(desired, &desired.desired_table(), current, unparsed_in_ours)
}

/// [`transaction`] with `want`, the plan's [`FamilyPlan::desired_table`], already parsed (the
/// reconciler keeps it while the plan stays the same).
pub fn transaction_with(
    desired: &FamilyPlan,
    want: &Table,
    current: Option<&Table>,
    unparsed_in_ours: usize,
) -> Result<Option<Transaction>, PlanError> {
    let empty = Table {
        name: "nat".into(),
        chains: Vec::new(),
        committed: true,
    };
    let cur = current.unwrap_or(&empty);

    let cur_ours: Vec<&str> = cur
        .chains
        .iter()
        .filter(|c| is_ours(&c.name) && c.declared)
        .map(|c| c.name.as_str())
        .collect();
    let chains_same = unparsed_in_ours == 0
        && cur_ours.len() == desired.chains.len()
        && desired.chains.iter().all(|name| {
            let have = cur.chain(name).map(|c| &c.rules[..]).unwrap_or(&[]);
            let wanted = want.chain(name).map(|c| &c.rules[..]).unwrap_or(&[]);
            cur_ours.contains(name) && same_specs(have, wanted)
        });

    // Jumps from built-in chains into ours: which to delete, which to add.
    let mut deletes: Vec<String> = Vec::new();
    let mut adds: Vec<String> = Vec::new();
    for builtin in NAT_BUILTINS {
        let wanted: Vec<&Rule> = want
            .chain(builtin)
            .map(|c| c.rules.iter().collect())
            .unwrap_or_default();
        let have: Vec<&Rule> = cur
            .chain(builtin)
            .map(|c| c.rules.iter().filter(|r| targets_ours(&r.spec)).collect())
            .unwrap_or_default();
        let mut kept = vec![false; wanted.len()];
        for r in have {
            let keep = wanted
                .iter()
                .zip(kept.iter_mut())
                .find(|(w, k)| !**k && w.spec == r.spec);
            match keep {
                Some((_, k)) => *k = true,
                None => deletes.push(delete_line(r)?),
            }
        }
        for (w, k) in wanted.iter().zip(&kept) {
            if !k {
                adds.push(w.text.clone());
            }
        }
    }

    if chains_same && deletes.is_empty() && adds.is_empty() {
        return Ok(None);
    }

    let stale: Vec<String> = cur_ours
        .iter()
        .filter(|c| !desired.chains.contains(c))
        .map(|c| (*c).to_owned())
        .collect();
    // The usual change (a VIP added or removed): the same chains and jumps, a few rules
    // differ. Editing just those keeps the transaction, and iptables' work, small.
    if deletes.is_empty()
        && adds.is_empty()
        && stale.is_empty()
        && unparsed_in_ours == 0
        && cur_ours.len() == desired.chains.len()
        && desired.chains.iter().all(|c| cur_ours.contains(c))
    {
        return Ok(Some(edit_chains(desired, want, cur)));
    }
    // Chains referenced by a rule but never declared do not exist in the kernel.
    let mut text = String::from("*nat\n");
    for c in desired
        .chains
        .iter()
        .copied()
        .chain(stale.iter().map(String::as_str))
    {
        text.push_str(&format!(":{c} - [0:0]\n"));
    }
    for d in &deletes {
        text.push_str(d);
        text.push('\n');
    }
    for a in &adds {
        text.push_str(a);
        text.push('\n');
    }
    for c in &stale {
        text.push_str(&format!("-X {c}\n"));
    }
    for r in &desired.rules {
        text.push_str(r);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    Ok(Some(Transaction {
        text,
        deleted_jumps: deletes.len(),
        added_jumps: adds.len(),
        removed_chains: stale,
        rebuilt_chains: desired.chains.iter().map(|c| (*c).to_owned()).collect(),
        edited_chains: Vec::new(),
        deleted_rules: 0,
        inserted_rules: 0,
    }))
}

/// The transaction for tables whose chains and jumps are already right: each chain that
/// differs is edited in place when that is unambiguous and shorter, else rebuilt.
pub(super) fn edit_chains(desired: &FamilyPlan, want: &Table, cur: &Table) -> Transaction {
    let mut declarations = String::new();
    let mut edits = String::new();
    let mut refills = String::new();
    let mut tx = Transaction {
        text: String::new(),
        deleted_jumps: 0,
        added_jumps: 0,
        removed_chains: Vec::new(),
        rebuilt_chains: Vec::new(),
        edited_chains: Vec::new(),
        deleted_rules: 0,
        inserted_rules: 0,
    };
    for name in &desired.chains {
        let have = cur.chain(name).map(|c| &c.rules[..]).unwrap_or(&[]);
        let wanted = want.chain(name).map(|c| &c.rules[..]).unwrap_or(&[]);
        if same_specs(have, wanted) {
            continue;
        }
        match chain_edits(name, have, wanted) {
            Some((text, deleted, inserted)) => {
                edits.push_str(&text);
                tx.deleted_rules += deleted;
                tx.inserted_rules += inserted;
                tx.edited_chains.push((*name).to_owned());
            }
            None => {
                declarations.push_str(&format!(":{name} - [0:0]\n"));
                for r in wanted {
                    refills.push_str(&r.text);
                    refills.push('\n');
                }
                tx.rebuilt_chains.push((*name).to_owned());
            }
        }
    }
    tx.text = format!("*nat\n{declarations}{edits}{refills}COMMIT\n");
    tx
}

/// `-D` lines for the rules of `have` that are not wanted, then `-I CHAIN N` lines for the
/// wanted rules that are missing, at their final positions (deletes run first, inserts in
/// increasing position). `None` when that would be ambiguous (a rule twice), when the rules
/// kept are not in the wanted order, or when a rebuild is as short.
pub(super) fn chain_edits(
    name: &str,
    have: &[Rule],
    wanted: &[Rule],
) -> Option<(String, usize, usize)> {
    use std::collections::HashSet;
    let want_specs: HashSet<&RuleSpec> = wanted.iter().map(|r| &r.spec).collect();
    let mut have_specs = HashSet::with_capacity(have.len());
    if want_specs.len() != wanted.len() || !have.iter().all(|r| have_specs.insert(&r.spec)) {
        return None;
    }
    let mut text = String::new();
    let mut kept: Vec<&RuleSpec> = Vec::with_capacity(have.len());
    let mut deleted = 0;
    for r in have {
        if want_specs.contains(&r.spec) {
            kept.push(&r.spec);
        } else {
            text.push_str(&delete_line(r).ok()?);
            text.push('\n');
            deleted += 1;
        }
    }
    let mut inserted = 0;
    let mut k = 0;
    for (i, w) in wanted.iter().enumerate() {
        if kept.get(k) == Some(&&w.spec) {
            k += 1;
            continue;
        }
        let rest = w.text.strip_prefix("-A ")?.strip_prefix(name)?;
        if !rest.starts_with(' ') {
            return None;
        }
        // The chain holds the kept rules and those inserted so far: past its end, append.
        if i < kept.len() + inserted {
            text.push_str(&format!("-I {name} {}{rest}\n", i + 1));
        } else {
            text.push_str(&format!("-A {name}{rest}\n"));
        }
        inserted += 1;
    }
    if k != kept.len() || deleted + inserted > wanted.len().max(have.len()) / 2 {
        return None;
    }
    Some((text, deleted, inserted))
}

/// The transaction removing all our chains and the jumps into them, or `None` if there are
/// none.
pub fn clear_transaction(current: Option<&Table>) -> Result<Option<Transaction>, PlanError> {
    transaction(&FamilyPlan::inactive(Family::V4), current, 0)
}

pub(super) fn same_specs(a: &[Rule], b: &[Rule]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.spec == y.spec)
}

pub(super) fn targets_ours(spec: &RuleSpec) -> bool {
    matches!(&spec.target, Some(Target::Jump(t) | Target::Goto(t)) if is_ours(t))
}

/// `-D CHAIN <spec>` for a rule as iptables-save printed it. The tokens came from iptables
/// itself, but are still checked: printable ASCII only, quoted when they hold spaces.
pub(super) fn delete_line(rule: &Rule) -> Result<String, PlanError> {
    let unsafe_rule = |reason: &str| PlanError::UnsafeRule {
        rule: crate::text::truncate_with_ellipsis(&rule.text, 200),
        line: rule.line,
        reason: reason.to_owned(),
    };
    if rule.text.ends_with('…') {
        return Err(unsafe_rule("the rule is too long"));
    }
    let tokens = tokenize(&rule.text).map_err(|e| unsafe_rule(&e))?;
    let mut out = String::from("-D");
    for (i, tok) in tokens.iter().enumerate() {
        if i == 0 {
            if tok != "-A" && tok != "--append" {
                return Err(unsafe_rule("not an -A line"));
            }
            continue;
        }
        if tok.is_empty()
            || !tok
                .bytes()
                .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
        {
            return Err(unsafe_rule(
                "it holds characters we do not pass to iptables",
            ));
        }
        out.push(' ');
        if tok.contains(' ') {
            out.push('"');
            out.push_str(tok);
            out.push('"');
        } else {
            out.push_str(tok);
        }
    }
    Ok(out)
}
