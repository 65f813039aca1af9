//! `doctor`: one observation, all checks, a report.

use std::time::Duration;

use crate::config::{Settings, parse_duration};

// No doc comment: the command's help is the one on `cli::Command::Doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Print the report as JSON
    #[arg(long, env = "SPA_JSON")]
    pub json: bool,
    /// Keep observing up to DURATION so log-based findings can appear
    #[arg(long, env = "SPA_WAIT", value_name = "DURATION", value_parser = parse_duration)]
    pub wait: Option<Duration>,
}

pub async fn run(settings: &Settings, args: DoctorArgs) -> anyhow::Result<u8> {
    crate::doctor::run(settings, args.json, args.wait).await
}
