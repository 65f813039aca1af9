//! `completions` and `man`: shell completions and the man page, generated from the clap
//! definitions (so they can never disagree with the parser). `cli.rs` hands its command in, so
//! this room does not import `cli`. Hidden commands print them:
//!
//! ```sh
//! service-proxy-agent completions bash > /usr/share/bash-completion/completions/service-proxy-agent
//! service-proxy-agent completions zsh  > /usr/share/zsh/vendor-completions/_service-proxy-agent
//! service-proxy-agent completions fish > /usr/share/fish/vendor_completions.d/service-proxy-agent.fish
//! service-proxy-agent man | gzip -9n > /usr/share/man/man8/service-proxy-agent.8.gz
//! ```

use std::io::Write;

use clap::ValueEnum;

/// The binary's name, as completions register it.
const BIN: &str = "service-proxy-agent";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// The completion script for `shell`.
pub fn completions(shell: Shell, mut cmd: clap::Command, out: &mut impl Write) {
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, &mut cmd, BIN, out);
}

/// The man page (roff), section 8: an administrator's daemon and tool.
pub fn man_page(cmd: clap::Command, out: &mut impl Write) -> std::io::Result<()> {
    let cmd = cmd.name(BIN);
    clap_mangen::Man::new(cmd).section("8").render(out)
}
