//! `report-bootstrap`: what install scripts call to set `bootstrap-status`.

use crate::config::Settings;
use crate::status::BootstrapStatus;

/// The positional value's names; mapped to the library's `BootstrapStatus`, which knows no clap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusArg {
    InProgress,
    Finished,
    Failed,
}

impl From<StatusArg> for BootstrapStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::InProgress => BootstrapStatus::InProgress,
            StatusArg::Finished => BootstrapStatus::Finished,
            StatusArg::Failed => BootstrapStatus::Failed,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReportBootstrapArgs {
    #[arg(value_enum)]
    pub status: StatusArg,
    /// What failed (with `failed`)
    #[arg(long, env = "SPA_REASON", value_name = "TEXT")]
    pub reason: Option<String>,
}

pub async fn run(settings: &Settings, args: ReportBootstrapArgs) -> anyhow::Result<u8> {
    crate::status::report_bootstrap(settings, args.status.into(), args.reason.as_deref()).await
}
