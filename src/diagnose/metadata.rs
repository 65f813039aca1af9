//! Metadata & agent checks: can the agent reach the metadata server, may Envoy use Google APIs
//! (scopes), can findings be published (guest attributes)?

use crate::diagnose::{CheckContext, GroupOutcome};
use crate::finding::{Finding, FindingId};
use crate::observe::metadata::CLOUD_PLATFORM_SCOPE;
use crate::observe::{GuestAttributesState, Snapshot};

pub fn check(snap: &Snapshot, _ctx: &CheckContext<'_>) -> GroupOutcome {
    let mut out = GroupOutcome::default();
    match &snap.vm {
        Err(e) => {
            out.findings.push(Finding::new(
                FindingId::MetadataUnreachable,
                format!("the metadata server did not answer: {e}"),
            ));
            out.note = "metadata server not answering".into();
            return out;
        }
        Ok(vm) => {
            out.note = format!(
                "project {} ({}), zone {}, instance {}{}",
                vm.project_id,
                vm.project_number,
                vm.zone,
                vm.instance_id,
                vm.network
                    .as_ref()
                    .map(|n| format!(", network {}", n.name))
                    .unwrap_or_default()
            );
            match &vm.scopes {
                Ok(scopes) if scopes.is_empty() => out.findings.push(Finding::new(
                    FindingId::ScopesInsufficient,
                    "the VM has no service account, so Envoy cannot authenticate to Cloud Service Mesh",
                )),
                Ok(scopes) if !scopes.iter().any(|s| s == CLOUD_PLATFORM_SCOPE) => {
                    out.findings.push(Finding::new(
                        FindingId::ScopesInsufficient,
                        format!(
                            "the default service account's scopes are {}; {CLOUD_PLATFORM_SCOPE} is missing",
                            scopes.join(", ")
                        ),
                    ));
                }
                Ok(_) => {}
                Err(e) => out.not_checked = Some(format!("scopes unreadable: {e}")),
            }
        }
    }
    if snap.guest_attributes == GuestAttributesState::Disabled {
        out.findings.push(Finding::new(
            FindingId::GuestAttributesDisabled,
            "the metadata server answered 403 \"Guest attributes endpoint access is disabled.\"",
        ));
    }
    out
}
