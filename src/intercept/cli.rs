//! `intercept plan|apply|clear` (docs/contract.md#2-command-line): the daemon's interception, once, by hand.

use crate::config::{InterceptionMode, Settings};
use crate::intercept::apply::{FamilyOutcome, ReconcileReport, Reconciler};
use crate::intercept::desired::desired_plan;
use crate::observe::Observer;
use crate::observe::iptables::{Family, Tools};

/// What `intercept` was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterceptAction {
    Plan,
    Apply,
    Clear,
}

/// Exit status: 0 done; 1 iptables refused (its message shown). Not being able to work out
/// what is wanted (Envoy's admin down, Envoy UID unknown) is an error of the command (2).
pub async fn run(settings: &Settings, action: InterceptAction) -> anyhow::Result<u8> {
    let mut reconciler = Reconciler::new(Tools::system());
    let report = match action {
        InterceptAction::Clear => reconciler.clear().await,
        InterceptAction::Plan | InterceptAction::Apply => {
            // Only Envoy, the metadata and /proc are needed; iptables is read by the reconciler.
            let mut s = settings.clone();
            s.interception = InterceptionMode::Off;
            let snap = Observer::new(&s).snapshot(false).await;
            let plan = desired_plan(&snap)?;
            for ig in &plan.ignored {
                eprintln!("# ignored {} {:?}: {}", ig.field, ig.value, ig.reason);
            }
            if let Some(s) = &snap.listener_summary {
                for r in &s.rejected {
                    eprintln!(
                        "# ignored listener {} prefix {:?}: {}",
                        r.listener, r.raw, r.reason
                    );
                }
            }
            if matches!(action, InterceptAction::Plan) {
                for family in Family::BOTH {
                    let fp = plan.family(family);
                    if let Some(text) = fp.restore_text() {
                        crate::text::print_out(format_args!(
                            "# {}-restore --noflush\n",
                            family.command()
                        ));
                        crate::text::print_out(format_args!("{text}"));
                    }
                }
                return Ok(0);
            }
            reconciler.reconcile(&plan).await
        }
    };
    Ok(summarize(&report))
}

fn summarize(report: &ReconcileReport) -> u8 {
    let mut code = 0;
    for family in Family::BOTH {
        let name = family.command();
        match report.family(family) {
            FamilyOutcome::Unchanged { rules } => {
                crate::text::print_out(format_args!(
                    "{name}: already as wanted ({rules} rules), nothing applied\n"
                ));
            }
            FamilyOutcome::Changed { rules, .. } => {
                crate::text::print_out(format_args!("{name}: applied ({rules} rules)\n"));
            }
            FamilyOutcome::Skipped => {}
            FamilyOutcome::Unavailable(e) => {
                crate::text::print_out(format_args!(
                    "{name}: not available ({e}); nothing of ours to change there\n"
                ));
            }
            FamilyOutcome::Failed(e) => {
                eprintln!("{name}: refused: {e}");
                code = 1;
            }
        }
    }
    code
}
