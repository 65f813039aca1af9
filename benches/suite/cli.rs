//! The suite's command line, shared by the bench binary (`benches/suite/main.rs`) and the smoke
//! test (`tests/bench_smoke.rs`), which both re-run themselves for the product's side.

use crate::{common, config, daemon, fleet, logscan, reconcile};

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "suite",
    about = "service-proxy-agent benchmarks, product and peer side by side"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, clap::Args)]
struct Common {
    /// Where workloads and results go (generated logs are reused when their parameters match).
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Runs of each measured command (product and peer alternate).
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

#[derive(Debug, Clone, clap::Args)]
struct LogArgs {
    /// Size of each generated log.
    #[arg(long, default_value = "1GiB", value_parser = common::parse_size)]
    log_size: u64,
    /// Which log profiles to run: `mixed` (debug traffic and info, the workload), `info`.
    #[arg(long, value_delimiter = ',', default_value = "mixed,info")]
    log_profiles: Vec<String>,
    /// The product's read size.
    #[arg(long, default_value_t = logscan::DEFAULT_READ_SIZE)]
    read_size: usize,
}

#[derive(Debug, Clone, clap::Args)]
struct ConfigArgs {
    /// Service VIPs (filter chains of the interception listener) in the scaled dump.
    #[arg(long, default_value_t = 10_000)]
    vips: usize,
    /// Clusters in the scaled dump.
    #[arg(long, default_value_t = 5_000)]
    clusters: usize,
}

#[derive(Debug, Clone, clap::Args)]
struct ReconcileArgs {
    /// VIPs in the plan.
    #[arg(long = "reconcile-vips", default_value_t = 10_000)]
    reconcile_vips: usize,
    /// VIPs for the naive peer loop (one `iptables -A` per rule); `0` means as many as the plan.
    #[arg(long, default_value_t = 0)]
    naive_vips: usize,
    /// Runs of the naive loop (about 30 s each for 10,000 rules).
    #[arg(long, default_value_t = 3)]
    naive_runs: usize,
}

#[derive(Debug, Clone, clap::Args)]
struct DaemonArgs {
    /// How long the footprint run lasts.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    footprint_duration: Duration,
    /// VIPs served to the real Envoy for the footprint and latency runs.
    #[arg(long, default_value_t = 1_000)]
    daemon_vips: usize,
    /// Detection-latency trials.
    #[arg(long, default_value_t = 100)]
    latency_trials: usize,
    /// The agent binary (default: the one cargo built next to this harness).
    #[arg(long)]
    agent: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
struct FleetArgs {
    /// VMs in the emulated project (the README's figures: 10,000).
    #[arg(long, default_value_t = 10_000)]
    fleet_vms: usize,
    /// Latency the emulators add to every call.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    fleet_latency: Duration,
    /// VMs read by the one-process-per-VM peer (extrapolated to the fleet).
    #[arg(long, default_value_t = 150)]
    fleet_process_sample: usize,
    /// VMs read by the one-client sequential peer (extrapolated to the fleet).
    #[arg(long, default_value_t = 1_000)]
    fleet_loop_sample: usize,
    /// Only `--source logging` (seconds): no peers, no compute source.
    #[arg(long)]
    fleet_logging_only: bool,
    /// The logging source and the peers, without the compute source's minutes.
    #[arg(long)]
    fleet_peers_only: bool,
    /// Only the compute source: no logging source, no peers.
    #[arg(long)]
    fleet_compute_only: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every benchmark, then the table.
    All {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        reconcile: ReconcileArgs,
        #[command(flatten)]
        daemon: DaemonArgs,
        #[command(flatten)]
        fleet: FleetArgs,
        /// Benchmarks to skip (log, config, reconcile, footprint, latency, fleet).
        #[arg(long, value_delimiter = ',')]
        skip: Vec<String>,
    },
    /// Log scanning against `rg -j1 --count`.
    Log {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Config analysis at scale against `curl | jq`.
    Config {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Interception reconcile in a private network namespace against a naive `iptables -A` loop.
    Reconcile {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        reconcile: ReconcileArgs,
    },
    /// The daemon's footprint against a real Envoy.
    Footprint {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Detection latency: a failure line appended → the finding in guest attributes.
    Latency {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// `fleet` against the Compute and Logging emulators, and a per-VM loop of Google's client.
    Fleet {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        fleet: FleetArgs,
        /// The agent binary (default: the one cargo built next to this harness).
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// Writes a synthetic Envoy log and prints what it holds (JSON).
    LogGen {
        file: PathBuf,
        #[arg(long, default_value = "64MiB", value_parser = common::parse_size)]
        size: u64,
        #[arg(long, default_value = "mixed")]
        profile: String,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// (internal) The product's log scan of FILE; prints counts as JSON.
    LogScanProduct {
        file: PathBuf,
        #[arg(long, default_value_t = logscan::DEFAULT_READ_SIZE)]
        read_size: usize,
    },
    /// Writes the scaled config dump and the answers the stand-in admin serves.
    ConfigGen {
        dir: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// (internal) Serves the answers of a `config-gen` directory as Envoy's admin would.
    AdminStandin {
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: std::net::SocketAddr,
    },
    /// (internal) The product's config analysis against an admin URL; prints the result.
    ConfigProduct {
        #[arg(long)]
        admin: String,
    },
    /// Captures the seed config dump from the real Envoy into DIR (default tests/bench).
    CaptureConfigSeed { dir: Option<PathBuf> },
    /// (internal) The footprint or latency world, run by `unshare` in fresh namespaces.
    DaemonWorld {
        kind: String,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// (internal) Times parsing FILE (an answer to `?resource=dynamic_listeners`) several ways.
    ConfigParseTimes { file: PathBuf },
}

/// Runs the command line `argv` (program name first).
pub fn main_with(argv: Vec<String>) -> anyhow::Result<()> {
    // `cargo bench` adds `--bench`; it means nothing here.
    let argv: Vec<String> = argv.into_iter().filter(|a| a != "--bench").collect();
    let args = Args::parse_from(argv);
    let self_exe = std::env::current_exe().context("where is this harness?")?;
    match args.command {
        Cmd::All {
            common,
            log,
            config,
            reconcile,
            daemon,
            fleet,
            skip,
        } => {
            let mut rows = Vec::new();
            let mut errors = Vec::new();
            let mut step = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<Vec<common::Row>>| {
                if skip.iter().any(|s| s == name) {
                    return;
                }
                eprintln!("== {name} (load average {})", common::load_average());
                match f() {
                    Ok(r) => rows.extend(r),
                    Err(e) => {
                        eprintln!("  {name} failed: {e:#}");
                        errors.push(format!("{name}: {e:#}"));
                    }
                }
            };
            step("log", &mut || run_log(&common, &log, &self_exe));
            step("config", &mut || {
                config::bench(
                    &common.dir,
                    config.vips,
                    config.clusters,
                    common.runs,
                    &self_exe,
                )
                .map(|r| vec![r])
            });
            step("reconcile", &mut || {
                reconcile::bench(&reconcile::Options {
                    vips: reconcile.reconcile_vips,
                    naive_vips: reconcile.naive_vips,
                    naive_runs: reconcile.naive_runs,
                    runs: common.runs,
                })
            });
            step("footprint", &mut || {
                daemon::footprint(&daemon_opts(&common, &daemon, &self_exe)?)
            });
            step("latency", &mut || {
                daemon::latency(&daemon_opts(&common, &daemon, &self_exe)?).map(|r| vec![r])
            });
            step("fleet", &mut || {
                fleet::bench(&fleet_opts(&common, &fleet, daemon.agent.as_deref()))
            });
            report(&common, &rows, &errors)?;
            if !errors.is_empty() {
                anyhow::bail!("{} benchmark(s) could not run", errors.len());
            }
        }
        Cmd::Log { common, log } => {
            let rows = run_log(&common, &log, &self_exe)?;
            report(&common, &rows, &[])?;
        }
        Cmd::Config { common, config } => {
            let row = config::bench(
                &common.dir,
                config.vips,
                config.clusters,
                common.runs,
                &self_exe,
            )?;
            report(&common, &[row], &[])?;
        }
        Cmd::Reconcile { common, reconcile } => {
            let rows = reconcile::bench(&reconcile::Options {
                vips: reconcile.reconcile_vips,
                naive_vips: reconcile.naive_vips,
                naive_runs: reconcile.naive_runs,
                runs: common.runs,
            })?;
            report(&common, &rows, &[])?;
        }
        Cmd::Footprint { common, daemon } => {
            let rows = daemon::footprint(&daemon_opts(&common, &daemon, &self_exe)?)?;
            report(&common, &rows, &[])?;
        }
        Cmd::Latency { common, daemon } => {
            let row = daemon::latency(&daemon_opts(&common, &daemon, &self_exe)?)?;
            report(&common, &[row], &[])?;
        }
        Cmd::Fleet {
            common,
            fleet,
            agent,
        } => {
            let rows = fleet::bench(&fleet_opts(&common, &fleet, agent.as_deref()))?;
            report(&common, &rows, &[])?;
        }
        Cmd::LogGen {
            file,
            size,
            profile,
            seed,
        } => {
            let e = logscan::generate(&file, size, logscan::Profile::parse(&profile)?, seed)?;
            println!("{}", serde_json::to_string(&e)?);
        }
        Cmd::LogScanProduct { file, read_size } => logscan::product_main(&file, read_size)?,
        Cmd::ConfigGen { dir, config } => {
            let s = config::generate(&dir, config.vips, config.clusters)?;
            println!("{}", serde_json::to_string(&s)?);
        }
        Cmd::AdminStandin { dir, addr } => config::standin_main(&dir, addr)?,
        Cmd::ConfigProduct { admin } => config::product_main(&admin)?,
        Cmd::ConfigParseTimes { file } => config::parse_times(&file)?,
        Cmd::DaemonWorld {
            kind,
            common,
            daemon,
        } => daemon::world_main(&kind, &daemon_opts(&common, &daemon, &self_exe)?)?,
        Cmd::CaptureConfigSeed { dir } => {
            let dir = dir.unwrap_or_else(config::seed_dir);
            config::capture_seed(&dir)?;
            config::check_seed(&dir)?;
            eprintln!("seed written to {} and checked", dir.display());
        }
    }
    Ok(())
}

fn run_log(
    common: &Common,
    log: &LogArgs,
    self_exe: &std::path::Path,
) -> anyhow::Result<Vec<common::Row>> {
    let mut rows = Vec::new();
    for p in &log.log_profiles {
        let opts = logscan::Options {
            dir: common.dir.clone(),
            size: log.log_size,
            profile: logscan::Profile::parse(p)?,
            runs: common.runs,
            read_size: log.read_size,
        };
        rows.push(logscan::bench(&opts, self_exe)?);
    }
    Ok(rows)
}

fn daemon_opts(
    common: &Common,
    d: &DaemonArgs,
    self_exe: &std::path::Path,
) -> anyhow::Result<daemon::Options> {
    let agent = match &d.agent {
        Some(a) => a.clone(),
        None => PathBuf::from(env!("CARGO_BIN_EXE_service-proxy-agent")),
    };
    Ok(daemon::Options {
        self_exe: self_exe.to_path_buf(),
        dir: common.dir.clone(),
        agent,
        vips: d.daemon_vips,
        duration: d.footprint_duration,
        trials: d.latency_trials,
    })
}

fn fleet_opts(common: &Common, f: &FleetArgs, agent: Option<&std::path::Path>) -> fleet::Options {
    fleet::Options {
        dir: common.dir.clone(),
        agent: agent.map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_service-proxy-agent")),
            std::path::Path::to_path_buf,
        ),
        vms: f.fleet_vms,
        latency: f.fleet_latency,
        process_sample: f.fleet_process_sample,
        loop_sample: f.fleet_loop_sample,
        runs: common.runs,
        logging_only: f.fleet_logging_only,
        peers_only: f.fleet_peers_only,
        compute_only: f.fleet_compute_only,
    }
}

/// Prints the machine, the table and the errors; writes them to `<dir>/results.md`.
fn report(common: &Common, rows: &[common::Row], errors: &[String]) -> anyhow::Result<()> {
    let mut text = String::new();
    text.push_str(&format!("Machine: {}\n", common::machine()));
    text.push_str(&format!(
        "Peers: {}; {}; {}; {}\n\n",
        common::tool_version("rg", "--version"),
        common::tool_version("jq", "--version"),
        common::tool_version("curl", "--version"),
        common::tool_version("iptables", "--version")
    ));
    text.push_str(&common::table(rows));
    for e in errors {
        text.push_str(&format!("\nNOT RUN: {e}\n"));
    }
    println!("{text}");
    std::fs::create_dir_all(&common.dir)?;
    std::fs::write(common.dir.join("results.md"), &text)?;
    std::fs::write(
        common.dir.join("results.json"),
        serde_json::to_vec_pretty(rows)?,
    )?;
    Ok(())
}
