//! Observation: everything the agent reads from the VM, each source behind its own module with
//! typed results and its own error type. No diagnosis here.

pub mod envoy_admin;
pub mod envoy_log;
pub mod http;
pub mod iptables;
pub mod log_follower;
pub mod metadata;
pub mod procfs;
