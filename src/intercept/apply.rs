//! Keeping the kernel's nat tables in step with a [`Plan`]: one `*-save -t nat` per family,
//! a structural comparison, and — only when something differs — one
//! `*-restore --noflush --wait` transaction. A refused transaction changes nothing (iptables
//! applies it atomically) and comes back as an error carrying iptables' own message.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use crate::intercept::is_ours;
use crate::intercept::plan::{
    DesiredInput, FamilyPlan, Plan, PlanError, PlanMemo, Transaction, transaction, transaction_with,
};
use crate::observe::iptables::{self, Family, IptablesError, Ruleset, Tools, parse_save};
use crate::observe::nf_generation::Stamp;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum InterceptError {
    #[error("{family}: cannot read the nat table: {source}")]
    Save {
        family: Family,
        source: IptablesError,
    },
    #[error("{family}: the change was refused and the previous rules are left in place: {source}")]
    Restore {
        family: Family,
        source: IptablesError,
    },
    #[error("{family}: {source}")]
    Plan { family: Family, source: PlanError },
}

impl InterceptError {
    pub fn family(&self) -> Family {
        match self {
            InterceptError::Save { family, .. }
            | InterceptError::Restore { family, .. }
            | InterceptError::Plan { family, .. } => *family,
        }
    }

    /// iptables' own message, when iptables ran and refused.
    pub fn iptables_message(&self) -> Option<&str> {
        match self {
            InterceptError::Save { source, .. } | InterceptError::Restore { source, .. } => {
                source.iptables_message()
            }
            InterceptError::Plan { .. } => None,
        }
    }
}

/// What happened to one family in one reconcile (or clear).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FamilyOutcome {
    /// Already as wanted: no restore ran. `rules` counts our rules and jumps.
    Unchanged {
        rules: usize,
    },
    /// One restore ran and was accepted.
    Changed {
        rules: usize,
        transaction: Transaction,
    },
    /// Not read: IPv6 has nothing to do and is known to hold nothing of ours.
    Skipped,
    /// IPv6 has nothing to do and ip6tables cannot be read (e.g. the modules are not loaded),
    /// so it cannot hold anything of ours either. Not an error.
    Unavailable(IptablesError),
    Failed(InterceptError),
}

impl FamilyOutcome {
    pub fn changed(&self) -> bool {
        matches!(self, FamilyOutcome::Changed { .. })
    }

    pub fn error(&self) -> Option<&InterceptError> {
        match self {
            FamilyOutcome::Failed(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for FamilyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FamilyOutcome::Unchanged { rules } => write!(f, "unchanged ({rules} rules)"),
            FamilyOutcome::Changed { rules, transaction }
                if !transaction.edited_chains.is_empty() =>
            {
                write!(
                    f,
                    "updated ({rules} rules; {} rules deleted, {} inserted in place)",
                    transaction.deleted_rules, transaction.inserted_rules,
                )
            }
            FamilyOutcome::Changed { rules, transaction } => write!(
                f,
                "updated ({rules} rules; {} jumps deleted, {} added, {} stale chains removed)",
                transaction.deleted_jumps,
                transaction.added_jumps,
                transaction.removed_chains.len()
            ),
            FamilyOutcome::Skipped => f.write_str("nothing to do"),
            FamilyOutcome::Unavailable(e) => write!(f, "not readable, nothing to do ({e})"),
            FamilyOutcome::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// The result of one [`Reconciler::reconcile`] or [`Reconciler::clear`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub v4: FamilyOutcome,
    pub v6: FamilyOutcome,
    /// `*-save` runs during this call.
    pub saves: u32,
    /// `*-restore` runs during this call.
    pub restores: u32,
}

/// `clear` reports the same way.
pub type ClearReport = ReconcileReport;

impl ReconcileReport {
    pub fn family(&self, family: Family) -> &FamilyOutcome {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    pub fn changed(&self) -> bool {
        self.v4.changed() || self.v6.changed()
    }

    pub fn errors(&self) -> Vec<&InterceptError> {
        [&self.v4, &self.v6]
            .into_iter()
            .filter_map(FamilyOutcome::error)
            .collect()
    }

    pub fn is_ok(&self) -> bool {
        self.errors().is_empty()
    }
}

/// Running totals, for the daemon's metrics and for tests ("steady state: no save, no
/// restore").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub saves: u64,
    pub restores: u64,
    pub failed_restores: u64,
    /// Saves found equal to the plan from their text alone (no parse).
    pub unchanged_by_text: u64,
    /// Polls that found nf_tables' ruleset generation where it was when the table last matched
    /// the same plan, and so ran no save at all: the steady state.
    pub unchanged_by_generation: u64,
    /// Polls handed the very rules (the daemon's read, shared while the generation stood still)
    /// last found in step with the same plan, and so compared nothing: the daemon's steady state.
    pub unchanged_by_identity: u64,
}

/// Applies plans. Keep one for the life of the daemon: it remembers that ip6tables holds
/// nothing of ours, so an IPv4-only VM reads a single family per poll. (A
/// `SERVICE_PROXY_*` chain created in ip6tables by someone else after that is only noticed
/// after a restart.)
#[derive(Debug, Clone)]
pub struct Reconciler {
    tools: Tools,
    v6_clean: bool,
    totals: Counters,
    /// Per family (v4, v6): the last plan (its family's part is the one meant). Not its parsed
    /// table: with 1,000 VIPs that was a second copy of the rules (about 0.7 MiB) kept for the
    /// life of the daemon, and a comparison is needed only when the tables or the plan moved.
    /// Shared with `plans`, so the rules are held once.
    desired: [Option<Arc<Plan>>; 2],
    /// The daemon's plans, made again only when their input moves ([`Reconciler::plan`]).
    plans: PlanMemo,
    /// Per family: the stamp (ruleset generation, save program) read before the save that last
    /// found the table equal to the plan held in `desired`.
    in_step: [Option<Stamp>; 2],
    /// Per family: the rules handed in (the daemon's read of the tables) that were last found
    /// equal to the plan held in `desired`. Held, so that no other read can take its address.
    agreed: [Option<Arc<Ruleset>>; 2],
}

impl Reconciler {
    pub fn new(tools: Tools) -> Self {
        Reconciler {
            tools,
            v6_clean: false,
            totals: Counters::default(),
            desired: [None, None],
            plans: PlanMemo::default(),
            in_step: [None, None],
            agreed: [None, None],
        }
    }

    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    pub fn totals(&self) -> Counters {
        self.totals
    }

    /// The plan for `input`: the one made last while `input` stands where it stood (the
    /// daemon's every poll but a change), so the reconciler finds it held by identity.
    pub fn plan(&mut self, input: DesiredInput) -> Result<Arc<Plan>, PlanError> {
        self.plans.plan(input)
    }

    /// Brings both families to `plan`. Each family is handled on its own: a failure of one
    /// is reported in its outcome and does not stop the other.
    pub async fn reconcile(&mut self, plan: &Plan) -> ReconcileReport {
        self.reconcile_with(&Arc::new(plan.clone()), None, None)
            .await
    }

    /// As [`Reconciler::reconcile`], judging against rules already read this poll (a save of
    /// the nat table or of all tables) instead of saving again: the daemon reads iptables once
    /// per poll for verification and reuses that read here.
    pub async fn reconcile_with(
        &mut self,
        plan: &Arc<Plan>,
        v4: Option<&Arc<Ruleset>>,
        v6: Option<&Arc<Ruleset>>,
    ) -> ReconcileReport {
        let mut report = ReconcileReport {
            v4: FamilyOutcome::Skipped,
            v6: FamilyOutcome::Skipped,
            saves: 0,
            restores: 0,
        };
        for family in Family::BOTH {
            let given = match family {
                Family::V4 => v4,
                Family::V6 => v6,
            };
            let outcome = self
                .reconcile_family(plan, family, given, &mut report)
                .await;
            match family {
                Family::V4 => report.v4 = outcome,
                Family::V6 => report.v6 = outcome,
            }
        }
        report
    }

    /// Removes our chains (exactly those of docs/contract.md#7-interception) and every jump into them, nothing else (a
    /// user's own `SERVICE_PROXY_FOO` stays), one transaction per family that has any.
    pub async fn clear(&mut self) -> ClearReport {
        self.v6_clean = false;
        let nothing = |family| FamilyPlan {
            family,
            chains: Vec::new(),
            jumps: Vec::new(),
            rules: Vec::new(),
        };
        let nothing = Arc::new(Plan {
            v4: nothing(Family::V4),
            v6: nothing(Family::V6),
            ignored: Vec::new(),
            excluded_vips: Vec::new(),
        });
        let mut report = ReconcileReport {
            v4: FamilyOutcome::Skipped,
            v6: FamilyOutcome::Skipped,
            saves: 0,
            restores: 0,
        };
        report.v4 = self
            .reconcile_family(&nothing, Family::V4, None, &mut report)
            .await;
        report.v6 = self
            .reconcile_family(&nothing, Family::V6, None, &mut report)
            .await;
        report
    }

    /// What `reconcile` would run, without running it: per family, the transaction or `None`
    /// when nothing differs. Reads the tables (one save per family), changes nothing.
    pub async fn preview(
        &mut self,
        plan: &Plan,
    ) -> Vec<(Family, Result<Option<Transaction>, InterceptError>)> {
        let mut out = Vec::new();
        for family in Family::BOTH {
            let fp = plan.family(family);
            let r = match self.save_nat(family).await {
                Ok(text) if fp.matches_saved_text(&text) => Ok(None),
                Ok(text) => {
                    let rs = parse_save(&text);
                    transaction(fp, rs.table("nat"), unparsed_in_ours(&rs))
                        .map_err(|source| InterceptError::Plan { family, source })
                }
                Err(source) if family == Family::V6 && !fp.is_active() => {
                    let _ = source;
                    Ok(None)
                }
                Err(source) => Err(InterceptError::Save { family, source }),
            };
            out.push((family, r));
        }
        out
    }

    async fn reconcile_family(
        &mut self,
        plan: &Arc<Plan>,
        family: Family,
        given: Option<&Arc<Ruleset>>,
        report: &mut ReconcileReport,
    ) -> FamilyOutcome {
        let fp = plan.family(family);
        self.remember(plan, family);
        let idle_v6 = family == Family::V6 && !fp.is_active();
        if idle_v6 && self.v6_clean {
            return FamilyOutcome::Skipped;
        }
        if family == Family::V6 && fp.is_active() {
            self.v6_clean = false;
        }
        let i = family.index();
        let saved;
        let rs = match given {
            Some(rs) => {
                // The same read as the one last found in step: nothing changed any table since
                // (the daemon reads again when the generation moves), and the plan is the same.
                if self
                    .agreed
                    .get(i)
                    .and_then(Option::as_ref)
                    .is_some_and(|a| Arc::ptr_eq(a, rs))
                {
                    self.totals.unchanged_by_identity += 1;
                    return FamilyOutcome::Unchanged {
                        rules: fp.rule_count(),
                    };
                }
                rs.as_ref()
            }
            None => {
                let stamp = Stamp::read(self.tools.save_program(family));
                // (`remember` above: a plan other than the last one is in step with nothing.)
                if stamp.is_some() && self.in_step.get(i).copied().flatten() == stamp {
                    self.totals.unchanged_by_generation += 1;
                    return FamilyOutcome::Unchanged {
                        rules: fp.rule_count(),
                    };
                }
                if let Some(s) = self.in_step.get_mut(i) {
                    *s = None;
                }
                report.saves += 1;
                let text = match self.save_nat(family).await {
                    Ok(text) => text,
                    Err(e) if idle_v6 => {
                        self.v6_clean = true;
                        return FamilyOutcome::Unavailable(e);
                    }
                    Err(source) => {
                        return FamilyOutcome::Failed(InterceptError::Save { family, source });
                    }
                };
                if fp.matches_saved_text(&text) {
                    self.totals.unchanged_by_text += 1;
                    if let Some(stamp) = Stamp::for_save(stamp, &text) {
                        if let Some(s) = self.in_step.get_mut(i) {
                            *s = Some(stamp);
                        }
                    }
                    if idle_v6 {
                        self.v6_clean = true;
                    }
                    return FamilyOutcome::Unchanged {
                        rules: fp.rule_count(),
                    };
                }
                saved = parse_save(&text);
                &saved
            }
        };
        if let Some(a) = self.agreed.get_mut(i) {
            *a = None;
        }
        let tx = match transaction_with(
            fp,
            &fp.desired_table(),
            rs.table("nat"),
            unparsed_in_ours(rs),
        ) {
            Ok(tx) => tx,
            Err(source) => return FamilyOutcome::Failed(InterceptError::Plan { family, source }),
        };
        let rules = fp.rule_count();
        let Some(tx) = tx else {
            if idle_v6 {
                self.v6_clean = true;
            }
            if let (Some(rs), Some(a)) = (given, self.agreed.get_mut(i)) {
                *a = Some(Arc::clone(rs));
            }
            return FamilyOutcome::Unchanged { rules };
        };
        report.restores += 1;
        match self.restore(family, &tx.text).await {
            Ok(()) => {
                if idle_v6 {
                    self.v6_clean = true;
                }
                FamilyOutcome::Changed {
                    rules,
                    transaction: tx,
                }
            }
            Err(source) => {
                self.totals.failed_restores += 1;
                FamilyOutcome::Failed(InterceptError::Restore { family, source })
            }
        }
    }

    /// Holds `plan` as the plan of `family`; a new plan is in step with nothing yet.
    fn remember(&mut self, plan: &Arc<Plan>, family: Family) {
        if self.holds(plan, family) {
            return;
        }
        let i = family.index();
        if let Some(slot) = self.desired.get_mut(i) {
            *slot = Some(Arc::clone(plan));
        }
        if let Some(s) = self.in_step.get_mut(i) {
            *s = None;
        }
        if let Some(a) = self.agreed.get_mut(i) {
            *a = None;
        }
    }

    /// Whether `desired` holds this plan of `family`: the same one (the memo's, every steady
    /// poll) or an equal one. An equal plan is kept in the new one's place, so the next poll
    /// finds it by identity and the old one is freed.
    fn holds(&mut self, plan: &Arc<Plan>, family: Family) -> bool {
        let Some(slot) = self.desired.get_mut(family.index()) else {
            return false;
        };
        match slot {
            Some(held) if Arc::ptr_eq(held, plan) => true,
            Some(held) if held.family(family) == plan.family(family) => {
                *held = Arc::clone(plan);
                true
            }
            _ => false,
        }
    }

    async fn save_nat(&mut self, family: Family) -> Result<String, IptablesError> {
        self.totals.saves += 1;
        iptables::save_text(&self.tools, family, Some("nat")).await
    }

    async fn restore(&mut self, family: Family, text: &str) -> Result<(), IptablesError> {
        self.totals.restores += 1;
        // Wait for the xtables lock (legacy backend) a little less than our own deadline.
        let wait = format!(
            "--wait={}",
            self.tools.timeout.as_secs().saturating_sub(1).max(1)
        );
        iptables::run_tool(
            self.tools.restore_program(family),
            &["--noflush", &wait],
            Some(text.as_bytes()),
            self.tools.timeout,
            64 << 10,
        )
        .await
        .map(|_| ())
    }
}

fn unparsed_in_ours(rs: &Ruleset) -> usize {
    rs.unparsed
        .iter()
        .filter(|u| u.table.as_deref() == Some("nat") && u.chain.as_deref().is_some_and(is_ours))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intercept::plan::{DesiredInput, TrafficInterception, plan};

    fn is_send<T: Send>(_: &T) {}

    #[test]
    fn futures_are_send_for_the_daemon() {
        let p = plan(&DesiredInput {
            vips: vec![],
            serving_ports: vec![],
            envoy_uid: 0,
            proxy_port: 15001,
            traffic: TrafficInterception::default(),
        })
        .unwrap();
        let mut r = Reconciler::new(Tools::system());
        is_send(&r.reconcile(&p));
        let mut r = Reconciler::new(Tools::system());
        is_send(&r.clear());
        let mut r = Reconciler::new(Tools::system());
        is_send(&r.preview(&p));
        is_send(&iptables::save(&Tools::system(), Family::V4, None));
    }

    #[test]
    fn outcome_wording() {
        let e = InterceptError::Restore {
            family: Family::V6,
            source: IptablesError::Failed {
                program: "ip6tables-restore".into(),
                status: "exit status 4".into(),
                message: "line 8: CHAIN_DEL failed".into(),
            },
        };
        assert_eq!(e.iptables_message(), Some("line 8: CHAIN_DEL failed"));
        assert_eq!(
            FamilyOutcome::Failed(e).to_string(),
            "failed: ip6tables: the change was refused and the previous rules are left in place: ip6tables-restore failed (exit status 4): line 8: CHAIN_DEL failed"
        );
        assert_eq!(
            FamilyOutcome::Unchanged { rules: 9 }.to_string(),
            "unchanged (9 rules)"
        );
    }
}
