//! Command line (docs/contract.md#2-command-line). Parsing and dispatch only; each command lives in its own module.

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser, Subcommand};

use crate::cmd;
use crate::config::{CommonArgs, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "service-proxy-agent",
    version = VERSION,
    about = "Watches the Envoy sidecar of a Cloud Service Mesh VM, names its faults, publishes them and keeps interception in step",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub common: cmd::common::CommonFlags,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: observe, diagnose, publish and (in enforce mode) intercept, continuously
    Run,
    /// One observation, all checks, a report; exit 1 if any error finding
    Doctor(cmd::doctor::DoctorArgs),
    /// Read the gce-service-proxy guest attributes back and show the heartbeat's age
    Status(cmd::status::StatusArgs),
    /// Traffic interception: plan, apply once, or clear the SERVICE_PROXY_* chains
    Intercept(cmd::intercept::InterceptArgs),
    /// Write bootstrap-status (and bootstrap-last-failure) for install scripts
    ReportBootstrap(cmd::report_bootstrap::ReportBootstrapArgs),
    /// Write Envoy's Cloud Service Mesh bootstrap for this VM
    EnvoyBootstrap(cmd::envoy_bootstrap::EnvoyBootstrapArgs),
    /// The state of many VMs at once, read from Google's APIs (docs/contract.md#9-fleet)
    Fleet(cmd::fleet::FleetArgs),
    /// Print the agent's version
    Version,
    /// Print a completion script for SHELL, generated from this command line
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: cmd::completions::Shell,
    },
    /// Print the man page (roff, section 8), generated from this command line
    #[command(hide = true)]
    Man,
}

/// The version `--version` and `version` print: the crate's and the commit (see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SPA_GIT_COMMIT"),
    ")"
);

/// Exit status 2: the command itself could not run (bad flags, unreadable config...).
pub const EXIT_USAGE: u8 = 2;

/// One line, naming the flag and what it accepts (clap's own message spans several lines).
fn one_line_clap_error(err: &clap::Error) -> String {
    let get = |kind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => Some(v.join(", ")),
        _ => None,
    };
    let arg = get(ContextKind::InvalidArg)
        .map(|a| a.split_whitespace().next().unwrap_or_default().to_owned());
    match err.kind() {
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let value = get(ContextKind::InvalidValue).unwrap_or_default();
            let expected = match (err.kind(), get(ContextKind::ValidValue)) {
                (ErrorKind::InvalidValue, Some(valid)) => format!("expected one of {valid}"),
                _ => std::error::Error::source(err)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "invalid value".into()),
            };
            format!(
                "invalid value '{value}' for {}: {expected}",
                arg.unwrap_or_else(|| "an argument".into())
            )
        }
        _ => {
            // Keep clap's first line ("error: unexpected argument ...") without the prefix.
            let rendered = err.to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            first.trim_start_matches("error: ").to_owned()
        }
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = err.print();
                return if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(EXIT_USAGE)
                } else {
                    ExitCode::SUCCESS
                };
            }
            eprintln!("service-proxy-agent: {}", one_line_clap_error(&err));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let Cli { common, command } = cli;
    let common = common.into_args();
    match command {
        Command::Version => {
            crate::text::print_out(format_args!("service-proxy-agent {VERSION}\n"));
            return ExitCode::SUCCESS;
        }
        Command::Completions { shell } => {
            cmd::completions::completions(shell, Cli::command(), &mut std::io::stdout().lock());
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            return match cmd::completions::man_page(Cli::command(), &mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("service-proxy-agent: cannot write the man page: {e}");
                    ExitCode::from(EXIT_USAGE)
                }
            };
        }
        _ => {}
    }
    let settings = match Settings::resolve(&common, |k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("service-proxy-agent: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("service-proxy-agent: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let code = runtime.block_on(dispatch(command, common, settings));
    // Dropping the runtime would wait for every blocking task (a DNS lookup of an unreachable
    // Cloud Logging endpoint, the log follower's thread) without bound; SIGTERM must end the
    // process within 5 s (docs/contract.md#5-daemon).
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

/// How long an idle thread of tokio's blocking pool is kept. The pool does the agent's name
/// lookups (the metadata server's, once per `RESOLVED_TTL` and by one request at a time; Cloud
/// Logging's and the token's through hyper's resolver): with tokio's 10 s default, about the
/// poll interval, the threads ended between polls and were created again at the next one (a
/// dozen threads in 70 s, measured with perf on the booted image, when each request looked the
/// name up). Kept past a poll they are reused.
const BLOCKING_THREAD_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(300);

async fn dispatch(command: Command, common: CommonArgs, settings: Settings) -> ExitCode {
    let result: anyhow::Result<u8> = match command {
        Command::Doctor(args) => cmd::doctor::run(&settings, args).await,
        Command::Run => cmd::run::run(common, settings.clone()).await,
        Command::Status(args) => cmd::status::run(&settings, args).await,
        Command::Intercept(args) => cmd::intercept::run(&settings, args).await,
        Command::ReportBootstrap(args) => cmd::report_bootstrap::run(&settings, args).await,
        Command::EnvoyBootstrap(args) => cmd::envoy_bootstrap::run(&settings, args).await,
        Command::Fleet(args) => cmd::fleet::run(&settings, &common, args).await,
        // Answered before the settings are read.
        Command::Version | Command::Completions { .. } | Command::Man => Ok(0),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("service-proxy-agent: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_value_is_one_line_naming_the_flag() {
        let err = Cli::try_parse_from(["spa", "doctor", "--poll-interval", "abc"]).unwrap_err();
        let line = one_line_clap_error(&err);
        assert_eq!(
            line,
            "invalid value 'abc' for --poll-interval: expected a duration such as 10s, 1m30s or 500ms"
        );
        let err = Cli::try_parse_from(["spa", "run", "--interception", "maybe"]).unwrap_err();
        let line = one_line_clap_error(&err);
        assert!(
            line.starts_with("invalid value 'maybe' for --interception"),
            "{line}"
        );
        assert!(line.contains("off, verify, enforce"), "{line}");
        assert!(!line.contains('\n'));
    }

    /// Every flag with a valid value parses (clap checks types at run time, not compile time).
    #[test]
    fn every_flag_parses() {
        let cli = Cli::try_parse_from([
            "spa",
            "doctor",
            "--json",
            "--wait",
            "5s",
            "--config",
            "/x.toml",
            "--envoy-admin",
            "http://127.0.0.1:15000",
            "--allow-remote-admin",
            "--envoy-log-dir",
            "/var/log/envoy",
            "--envoy-user",
            "envoy",
            "--interception",
            "enforce",
            "--proxy-port",
            "15001",
            "--serving-ports",
            "80,8080",
            "--poll-interval",
            "10s",
            "--heartbeat-interval",
            "60s",
            "--finding-ttl",
            "10m",
            "--metrics-addr",
            "127.0.0.1:15091",
            "--allow-remote-metrics",
            "false",
            "--log-format",
            "text",
            "--serial-port",
            "/dev/ttyS0",
            "--cloud-logging",
            "auto",
            "--cloud-logging-endpoint",
            "https://logging.googleapis.com",
            "--control-plane",
            "trafficdirector.googleapis.com:443",
        ])
        .unwrap();
        assert_eq!(cli.common.serving_ports.map(|p| p.0), Some(vec![80, 8080]));
        for args in [
            vec!["spa", "run"],
            vec!["spa", "status", "--json"],
            vec!["spa", "intercept", "plan"],
            vec!["spa", "intercept", "apply"],
            vec!["spa", "intercept", "clear"],
            vec!["spa", "report-bootstrap", "in-progress"],
            vec!["spa", "envoy-bootstrap", "--out", "/tmp/b.json"],
            vec!["spa", "version"],
            vec![
                "spa",
                "fleet",
                "--json",
                "--watch",
                "1m",
                "--source",
                "logging",
                "--project",
                "p",
                "--zone",
                "a",
                "--zone",
                "b",
                "--region",
                "r",
                "--group",
                "g",
                "--filter",
                "x",
                "--all",
                "--max-qps",
                "5",
                "--since",
                "1h",
                "--stale",
                "2m",
                "--all-vms",
                "--compute-endpoint",
                "http://127.0.0.1:1",
            ],
        ] {
            Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }

    #[test]
    fn global_flags_after_subcommand() {
        let cli =
            Cli::try_parse_from(["spa", "doctor", "--json", "--proxy-port", "15002"]).unwrap();
        assert_eq!(cli.common.proxy_port, Some(15002));
        assert!(matches!(cli.command, Command::Doctor(ref d) if d.json));
        let cli =
            Cli::try_parse_from(["spa", "report-bootstrap", "failed", "--reason", "x"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::ReportBootstrap(ref r)
                if r.status == cmd::report_bootstrap::StatusArg::Failed
        ));
    }
}
