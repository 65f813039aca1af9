//! The benchmark suite runs (`tests/bench.sh` is the real thing): every benchmark, product and
//! peer, on a small workload, with the real parts (rg, curl, jq, iptables in a private network
//! namespace, Envoy, the metadata emulator). The suite itself fails when the two sides disagree
//! (counts, VIPs, rules); nothing here looks at a time.
//!
//! A plain harness (`harness = false`): the suite re-runs its own binary for the product's
//! side, and this binary answers those subcommands like the bench binary does.

#[path = "../benches/suite/cli.rs"]
mod cli;
#[path = "../benches/suite/common.rs"]
mod common;
#[path = "../benches/suite/config.rs"]
mod config;
#[path = "../benches/suite/daemon.rs"]
mod daemon;
#[path = "../benches/suite/fleet.rs"]
mod fleet;
#[path = "../benches/suite/logscan.rs"]
mod logscan;
#[path = "../benches/suite/reconcile.rs"]
mod reconcile;

/// Subcommands the suite runs as the product's side.
const INTERNAL: &[&str] = &[
    "log-scan-product",
    "admin-standin",
    "config-product",
    "daemon-world",
];

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| INTERNAL.contains(&a.as_str())) {
        return match cli::main_with(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    // `--list` (cargo test -- --list, cargo nextest): libtest's terse listing of the one test;
    // it has no ignored tests.
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("bench_harness_runs_on_a_small_workload: test");
        }
        return std::process::ExitCode::SUCCESS;
    }
    // `cargo test` may pass a filter or libtest flags: a filter that does not name this test
    // skips it, as libtest would.
    let filter: Vec<&String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if filter
        .iter()
        .any(|f| !"bench_harness_runs_on_a_small_workload".contains(f.as_str()))
    {
        println!("running 0 tests (filtered out)");
        return std::process::ExitCode::SUCCESS;
    }
    println!("running 1 test\ntest bench_harness_runs_on_a_small_workload ...");
    let dir = match tempfile::Builder::new()
        .prefix("spa-bench-smoke-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot make a temporary directory: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let argv: Vec<String> = [
        "suite",
        "all",
        "--dir",
        &dir.path().display().to_string(),
        "--runs",
        "2",
        "--log-size",
        "4MiB",
        "--vips",
        "300",
        "--clusters",
        "100",
        "--reconcile-vips",
        "500",
        "--naive-runs",
        "1",
        "--daemon-vips",
        "50",
        "--footprint-duration",
        "12s",
        "--latency-trials",
        "3",
        "--fleet-vms",
        "60",
        "--fleet-process-sample",
        "2",
        "--fleet-loop-sample",
        "20",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    match cli::main_with(argv) {
        Ok(()) => {
            // The table was written; its verdicts mean nothing for so small a workload.
            let results =
                std::fs::read_to_string(dir.path().join("results.md")).unwrap_or_default();
            let rows = results.lines().filter(|l| l.starts_with("| ")).count();
            if rows < 10 {
                eprintln!("the results table has {rows} lines:\n{results}");
                return std::process::ExitCode::FAILURE;
            }
            println!(
                "test bench_harness_runs_on_a_small_workload ... ok\n\ntest result: ok. 1 passed"
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("test bench_harness_runs_on_a_small_workload ... FAILED\n{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
