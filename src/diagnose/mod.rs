//! Diagnosis: pure functions from an observation snapshot to findings, one file per check group.
pub mod interception;
