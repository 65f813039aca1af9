//! `status`: the `gce-service-proxy` guest attributes read back.

use crate::config::Settings;

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Print as JSON
    #[arg(long, env = "SPA_JSON")]
    pub json: bool,
}

pub async fn run(settings: &Settings, args: StatusArgs) -> anyhow::Result<u8> {
    crate::status::status(settings, args.json).await
}
