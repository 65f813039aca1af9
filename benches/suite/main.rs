//! The benchmark suite of service-proxy-agent: the product and a named peer tool measured in the
//! same run, medians of several runs with min–max, ratios, one Markdown table.
//!
//! Run it through `tests/bench.sh` (builds, checks the tools, passes the defaults of the issue),
//! or directly: `cargo bench --bench suite -- all --dir target/bench`. Subcommands run one
//! benchmark (`log`, `config`, `reconcile`, `footprint`, `latency`, `fleet`), and the internal ones
//! (`log-scan-product`, `config-product`, ...) are the product's side, run as their own process
//! so that its time and peak RSS are measured like the peer's.

mod cli;
mod common;
mod config;
mod daemon;
mod fleet;
mod logscan;
mod reconcile;

fn main() -> anyhow::Result<()> {
    cli::main_with(std::env::args().collect())
}
