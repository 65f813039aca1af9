//! The daemon's decisions, kept from its I/O: which of the agent's own failures to report, ...
//! (issue 14). `agent` wires them to tokio, files and clocks.

pub mod failure;

pub use failure::{FailureSource, Failures, Transition};
