//! The log side of silencing (`diagnose::silence`): an ignored finding is logged once when it is
//! set aside (with its reason and until), again if its rule changes, and once when it stops
//! being ignored (cleared, or its rule lapsed and it counts again). Unusable metadata rules are
//! logged once each time the set of them changes.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::diagnose::Diagnosis;
use crate::finding::FindingId;

#[derive(Debug, Default)]
pub struct IgnoredLog {
    shown: BTreeMap<FindingId, (String, SystemTime)>,
    problems: Vec<String>,
}

impl IgnoredLog {
    /// Whether `id` is set aside now (as last updated).
    pub fn contains(&self, id: FindingId) -> bool {
        self.shown.contains_key(&id)
    }

    pub fn update(&mut self, d: &Diagnosis) {
        let mut now = BTreeMap::new();
        for i in &d.ignored {
            let key = (i.reason.clone(), i.until);
            let id = i.finding.id;
            if self.shown.get(&id) != Some(&key) {
                let until = i.until_text();
                tracing::info!(
                    finding = id.as_str(),
                    ignored = true,
                    reason = i.reason.as_str(),
                    until = until.as_str(),
                    ignored_by = i.source.describe(),
                    detail = i.finding.detail.as_str(),
                    "{id}: {} (ignored until {until}: {})",
                    i.finding.summary,
                    i.reason
                );
            }
            now.insert(id, key);
        }
        for id in self.shown.keys() {
            if !now.contains_key(id) {
                tracing::info!(finding = id.as_str(), "{id} no longer ignored");
            }
        }
        self.shown = now;
        if d.ignore_problems != self.problems {
            for p in &d.ignore_problems {
                tracing::warn!(source = "ignore-findings", "{p}");
            }
            self.problems = d.ignore_problems.clone();
        }
    }
}
