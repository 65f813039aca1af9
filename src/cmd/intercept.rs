//! `intercept plan|apply|clear`: the daemon's interception, once, by hand.

use crate::config::Settings;
use crate::intercept::cli::InterceptAction;

#[derive(Debug, Clone, clap::Args)]
pub struct InterceptArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum Action {
    /// Print the iptables-restore input the agent wants; change nothing
    Plan,
    /// Apply it once
    Apply,
    /// Remove the agent's SERVICE_PROXY_* chains (those of docs/contract.md#7-interception) and their jumps, nothing else
    Clear,
}

impl From<Action> for InterceptAction {
    fn from(a: Action) -> Self {
        match a {
            Action::Plan => InterceptAction::Plan,
            Action::Apply => InterceptAction::Apply,
            Action::Clear => InterceptAction::Clear,
        }
    }
}

pub async fn run(settings: &Settings, args: InterceptArgs) -> anyhow::Result<u8> {
    crate::intercept::cli::run(settings, args.action.into()).await
}
