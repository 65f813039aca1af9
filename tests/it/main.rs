//! The integration tests, one binary (issue 14 step 8): each module is a former tests/*.rs
//! binary, so the crate and testkit are linked once instead of once per file. Run one module
//! with `cargo nextest run -E 'binary(it) and test(/^doctor::/)'` or `cargo test --test it doctor::`.

// Helpers the modules share, compiled once.
#[path = "../faults/common.rs"]
mod faults_common;
#[path = "../scenarios/common.rs"]
mod scenarios_common;
#[path = "../support/agent.rs"]
mod support;
#[path = "../support/daemon.rs"]
mod support_daemon;

mod bootstrap;
mod cli_tools;
mod cloud_logging;
mod daemon;
mod doctor;
mod enforce;
mod envoy_admin;
mod envoy_log;
mod envoy_runner;
mod fault_admin;
mod fault_clock;
mod fault_hostile;
mod fault_iptables;
mod fault_logs;
mod fault_metadata;
mod fleet;
mod fleet_emulators;
mod fuzz_regressions;
mod intercept;
mod intercept_cli;
mod iptables;
mod log_classifier;
mod metadata;
mod metrics_consumers;
mod monitoring_schemas;
mod procfs;
mod project_apis;
mod readme;
mod scenario_interception;
mod scenario_project;
mod scenarios;
mod silencing;
mod startup_script;
mod systemd_units;
mod trust_admin;
mod trust_files;
mod xds_control_plane;
