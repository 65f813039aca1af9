//! The daemon's I/O pieces that are not its loop: the observation cycle task (observe, then
//! reconcile iptables when enforcing), the metadata server as a guest-attribute sink, and
//! whether Cloud Logging is wanted.

use std::sync::Arc;

use crate::config::{CloudLoggingMode, DEFAULT_METADATA_HOST, Settings};
use crate::intercept::Reconciler;
use crate::intercept::desired::DesiredError;
use crate::intercept::desired::desired_input;
use crate::monitor::CycleOutcome;
use crate::observe::metadata::{MetadataClient, MetadataError};
use crate::observe::{Observer, Snapshot};
use crate::publish::cloud_logging::GcpAuthTokens;
use crate::publish::guest_attributes::{AttributeSink, NAMESPACE, PutError};

/// The metadata server as a guest-attribute sink.
pub(super) struct MetadataSink(pub(super) MetadataClient);

impl AttributeSink for MetadataSink {
    async fn put(&self, key: &'static str, value: &str) -> Result<(), PutError> {
        match self.0.put_guest_attribute(NAMESPACE, key, value).await {
            Ok(()) => Ok(()),
            Err(MetadataError::GuestAttributesDisabled) => Err(PutError::Disabled),
            Err(e @ MetadataError::Timeout { .. }) => Err(PutError::Unanswered(e.to_string())),
            Err(e) => Err(PutError::Failed(e.to_string())),
        }
    }
}

/// What a cycle task hands back.
pub(super) struct CycleResult {
    pub(super) snapshot: Snapshot,
    /// The reconciler, handed back for the next cycle.
    pub(super) reconciler: Option<Reconciler>,
    pub(super) outcome: CycleOutcome,
}

/// One observation, and with a reconciler (interception enforced) one reconciliation.
pub(super) async fn observe_and_reconcile(
    observer: Arc<Observer>,
    mut reconciler: Option<Reconciler>,
    check_cp: bool,
) -> CycleResult {
    let mut snapshot = observer.snapshot(check_cp).await;
    let mut ignored = Vec::new();
    let reconcile = match &mut reconciler {
        Some(rec) => Some(
            match desired_input(&snapshot)
                .and_then(|input| rec.plan(input).map_err(DesiredError::from))
            {
                Ok(plan) => {
                    let view = snapshot.iptables.as_ref();
                    let v4 = view.and_then(|v| v.v4.as_ref().ok());
                    let v6 = view.and_then(|v| v.v6.as_ref().and_then(|r| r.as_ref().ok()));
                    let report = rec.reconcile_with(&plan, v4, v6).await;
                    if report.changed() {
                        // Judge what is there now, not what was there before the fix.
                        observer.refresh_iptables(&mut snapshot).await;
                    }
                    ignored = plan
                        .ignored
                        .iter()
                        .map(|ig| format!("{} {:?}: {}", ig.field, ig.value, ig.reason))
                        .collect();
                    Ok(report)
                }
                Err(e) => Err(e.to_string()),
            },
        ),
        None => None,
    };
    CycleResult {
        snapshot,
        reconciler,
        outcome: CycleOutcome { reconcile, ignored },
    }
}

/// `Some(true)`: send to Cloud Logging; `Some(false)`: auto found nothing to send with;
/// `None`: off by flag.
pub(super) fn cloud_logging_wanted(s: &Settings) -> Option<bool> {
    match s.cloud_logging {
        CloudLoggingMode::Off => None,
        CloudLoggingMode::On => Some(true),
        CloudLoggingMode::Auto => Some(GcpAuthTokens::credentials_present(
            s.metadata_host == DEFAULT_METADATA_HOST,
        )),
    }
}
