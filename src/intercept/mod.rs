//! Interception (docs/contract.md#7-interception): the `SERVICE_PROXY_*` chains the agent wants ([`plan`](mod@plan), pure) and
//! keeping the kernel's nat tables in step with them ([`apply`], runs iptables).
//!
//! Flow for the daemon's enforce mode, once per poll:
//! `desired::desired_input(&Snapshot)` → `apply::Reconciler::plan(DesiredInput)` (the last plan
//! while the input stands still, else `plan::plan`) → `Reconciler::reconcile_with(&plan, read)`,
//! which judges the poll's read of the tables (compared again only when it or the plan moved)
//! and restores only when something differs. `intercept plan|apply` take the same steps once.

pub mod apply;
pub mod cli;
pub mod desired;
pub mod plan;

pub use apply::{ClearReport, FamilyOutcome, InterceptError, ReconcileReport, Reconciler};
pub use plan::{
    DesiredInput, FamilyPlan, Ignored, Plan, PlanError, PlanMemo, TrafficInterception, Transaction,
    plan,
};

pub use crate::contract::chains::PREFIX as CHAIN_PREFIX;

/// Whether a chain (or a jump target) is one of ours: exactly the chains of docs/contract.md#7-interception.
pub fn is_ours(chain: &str) -> bool {
    plan::CHAINS.contains(&chain)
}
