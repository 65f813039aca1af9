//! service-proxy-agent: observe an Envoy sidecar managed by Cloud Service Mesh, diagnose its
//! faults, publish them where an SRE already looks, and keep traffic interception in step.
//!
//! The code follows the flow of the product:
//! [`observe`] (Envoy admin, logs, iptables, /proc, metadata) → [`diagnose`] (pure checks over a
//! snapshot) → [`publish`] (guest attributes, logs, metrics) / [`intercept`] (iptables chains).
//! [`agent`] is the daemon loop, [`doctor`] the one-shot report, [`cli`] the command line's
//! parser and dispatch, [`cmd`] each command's arguments and handler.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod agent;
pub mod bootstrap;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod contract;
pub mod diagnose;
pub mod doctor;
pub mod finding;
pub mod fleet;
pub mod intercept;
pub mod monitor;
pub mod netfilter;
pub mod observe;
pub mod project_checks;
pub mod publish;
pub mod status;
pub mod text;
