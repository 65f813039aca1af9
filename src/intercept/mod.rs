//! Interception (docs/contract.md#7-interception): the `SERVICE_PROXY_*` chains the agent wants ([`plan`], pure) and
//! keeping the kernel's nat tables in step with them ([`apply`], runs iptables).
//!
//! Flow for the daemon's enforce mode, once per poll:
//! `plan::plan(&DesiredInput)` → `apply::Reconciler::reconcile(&Plan)`, which saves each
//! family's nat table once and restores only when something differs.

pub mod apply;
pub mod cli;
pub mod desired;
pub mod plan;

pub use apply::{ClearReport, FamilyOutcome, InterceptError, ReconcileReport, Reconciler};
pub use plan::{
    DesiredInput, FamilyPlan, Ignored, Plan, PlanError, TrafficInterception, Transaction, plan,
};

pub use crate::contract::chains::PREFIX as CHAIN_PREFIX;

/// Whether a chain (or a jump target) is one of ours: exactly the chains of docs/contract.md#7-interception.
pub fn is_ours(chain: &str) -> bool {
    plan::CHAINS.contains(&chain)
}
