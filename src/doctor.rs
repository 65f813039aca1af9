//! `doctor`: one observation, all checks, a report.
use std::time::Duration;

use crate::config::Settings;

pub async fn run(_settings: &Settings, _json: bool, _wait: Option<Duration>) -> anyhow::Result<u8> {
    anyhow::bail!("`doctor` is not implemented in this build yet")
}
