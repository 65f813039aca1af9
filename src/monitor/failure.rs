//! The agent's own failure sources (what it could not do, as opposed to Envoy's faults, which
//! are findings), each defined once: its `source` log field, its metric, whether it is
//! published as `agent-last-failure`.
//!
//! Every source is reported `Ok` or `Err` whenever its work is done (most once per cycle), so a
//! recovery is noticed by the same code that noticed the failure, and a failure that returns
//! after a recovery is reported again (issue 14's first defect: a source cleared nowhere stayed
//! "failing" for ever and its repeats were dropped).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use crate::publish::metrics::AgentMetrics;

/// One kind of work of the agent's own that can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureSource {
    /// The serial port named by `--serial-port` (checked at start only).
    Serial,
    /// The metrics endpoint's listener.
    Metrics,
    /// Envoy's log directory (missing, unreadable) or the follower itself.
    EnvoyLog,
    /// `*.log` files in that directory that cannot be followed.
    EnvoyLogFile,
    /// An observation cycle that panicked or was cancelled.
    Cycle,
    /// The VM's metadata.
    Metadata,
    /// Envoy's admin API answered, but an answer a check needs is unusable.
    EnvoyAdmin,
    /// `iptables-save`.
    IptablesSave,
    /// The control plane's reachability check.
    ControlPlane,
    /// Making the interception plan (inputs over a cap, ...).
    Interception,
    /// Applying the interception plan (`iptables-restore`).
    Iptables,
    /// Writing a guest attribute.
    GuestAttributes,
    /// Starting the Cloud Logging sink.
    CloudLogging,
    /// Re-reading the configuration on SIGHUP.
    Config,
}

impl FailureSource {
    /// The `source` field of the log lines (docs/contract.md#6-logs).
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureSource::Serial => "serial",
            FailureSource::Metrics => "metrics",
            FailureSource::EnvoyLog => "envoy_log",
            FailureSource::EnvoyLogFile => "envoy_log_file",
            FailureSource::Cycle => "cycle",
            FailureSource::Metadata => "metadata",
            FailureSource::EnvoyAdmin => "envoy_admin",
            FailureSource::IptablesSave => "iptables_save",
            FailureSource::ControlPlane => "control_plane",
            FailureSource::Interception => "interception",
            FailureSource::Iptables => "iptables",
            FailureSource::GuestAttributes => "guest_attributes",
            FailureSource::CloudLogging => "cloud_logging",
            FailureSource::Config => "config",
        }
    }

    /// The `source` label of `spa_poll_errors_total`, for the sources that are observations.
    pub const fn poll_error_label(self) -> Option<&'static str> {
        match self {
            FailureSource::Metadata => Some("metadata"),
            FailureSource::EnvoyAdmin => Some("envoy_admin"),
            FailureSource::IptablesSave => Some("iptables"),
            FailureSource::ControlPlane => Some("control_plane"),
            FailureSource::GuestAttributes => Some("guest_attributes"),
            _ => None,
        }
    }

    /// Whether a failure is written to `agent-last-failure`: not a failure to write guest
    /// attributes (the write would fail the same way).
    pub const fn sets_last_failure(self) -> bool {
        !matches!(self, FailureSource::GuestAttributes)
    }

    /// Counts one failed attempt in the metrics (every attempt, not only the first of a run).
    pub fn count(self, metrics: &AgentMetrics) {
        if let Some(label) = self.poll_error_label() {
            metrics.poll_error(label);
        }
        if self == FailureSource::Iptables {
            metrics.interception_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A change of a source's state, to be logged (and published) once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Failing, or failing differently than last said.
    Raised {
        source: FailureSource,
        message: String,
    },
    /// Fine again after `was`.
    Recovered { source: FailureSource, was: String },
}

impl Transition {
    /// The log line of the transition.
    pub fn emit(&self) {
        match self {
            Transition::Raised { source, message } => {
                tracing::warn!(source = source.as_str(), "{message}");
            }
            Transition::Recovered { source, was } => {
                tracing::info!(source = source.as_str(), "recovered: {was}");
            }
        }
    }
}

/// The sources failing now, with their last message.
#[derive(Debug, Default, Clone)]
pub struct Failures {
    failing: BTreeMap<FailureSource, String>,
}

impl Failures {
    /// Records the outcome of `source`'s work. A failure is a transition when it is new or its
    /// message changed; a success when the source was failing. Messages are cleaned of
    /// control characters and secrets here, before anything shows them.
    pub fn report(
        &mut self,
        source: FailureSource,
        outcome: Result<(), String>,
    ) -> Option<Transition> {
        match outcome {
            Ok(()) => self
                .failing
                .remove(&source)
                .map(|was| Transition::Recovered { source, was }),
            Err(message) => {
                let message = crate::text::redact_secrets(&crate::text::strip_control(&message));
                if self.failing.get(&source) == Some(&message) {
                    return None;
                }
                self.failing.insert(source, message.clone());
                Some(Transition::Raised { source, message })
            }
        }
    }

    pub fn is_failing(&self, source: FailureSource) -> bool {
        self.failing.contains_key(&source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_raised_once_recovered_once_and_raised_again() {
        let mut f = Failures::default();
        let s = FailureSource::Interception;
        let raised = Some(Transition::Raised {
            source: s,
            message: "too many".into(),
        });
        assert_eq!(f.report(s, Err("too many".into())), raised);
        assert_eq!(f.report(s, Err("too many".into())), None);
        assert_eq!(
            f.report(s, Ok(())),
            Some(Transition::Recovered {
                source: s,
                was: "too many".into()
            })
        );
        assert_eq!(f.report(s, Ok(())), None);
        assert_eq!(f.report(s, Err("too many".into())), raised);
    }

    #[test]
    fn a_changed_message_is_raised_and_sources_are_independent() {
        let mut f = Failures::default();
        assert!(f.report(FailureSource::Metadata, Err("a".into())).is_some());
        assert!(f.report(FailureSource::Metadata, Err("b".into())).is_some());
        assert_eq!(f.report(FailureSource::Iptables, Ok(())), None);
        assert!(f.is_failing(FailureSource::Metadata));
    }

    #[test]
    fn messages_lose_control_characters_before_comparison() {
        let mut f = Failures::default();
        let t = f.report(FailureSource::Config, Err("bad\u{1b}[31m file".into()));
        let Some(Transition::Raised { message, .. }) = t else {
            panic!("{t:?}");
        };
        assert!(!message.contains('\u{1b}'), "{message:?}");
    }

    #[test]
    fn names_and_labels_are_the_published_ones() {
        assert_eq!(FailureSource::IptablesSave.as_str(), "iptables_save");
        assert_eq!(
            FailureSource::IptablesSave.poll_error_label(),
            Some("iptables")
        );
        assert_eq!(FailureSource::Interception.poll_error_label(), None);
        assert!(!FailureSource::GuestAttributes.sets_last_failure());
    }
}
