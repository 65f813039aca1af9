//! `envoy-bootstrap`: Envoy's Cloud Service Mesh bootstrap for this VM.

use std::path::PathBuf;

use crate::config::Settings;

#[derive(Debug, Clone, clap::Args)]
pub struct EnvoyBootstrapArgs {
    /// Write to FILE instead of stdout
    #[arg(long, env = "SPA_OUT", value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub async fn run(settings: &Settings, args: EnvoyBootstrapArgs) -> anyhow::Result<u8> {
    crate::bootstrap::run(settings, args.out.as_deref()).await
}
