//! `run`: the daemon. It takes no arguments of its own; it keeps the global ones so SIGHUP can
//! resolve the settings again.

use crate::config::{CommonArgs, Settings};

pub async fn run(common: CommonArgs, settings: Settings) -> anyhow::Result<u8> {
    crate::agent::run(common, settings).await
}
