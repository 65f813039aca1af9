//! Runs the metadata-server emulator as a process, for the demo and for trying the agent by
//! hand: `GCE_METADATA_HOST=127.0.0.1:8089 service-proxy-agent doctor` after
//!
//! ```text
//! cargo run --example metadata-emulator -- --addr 127.0.0.1:8089 [--project-id ID]
//!     [--project-number N] [--zone ZONE] [--instance-id N] [--network NAME] [--scopes a,b]
//!     [--gce-service-proxy JSON] [--attribute KEY=VALUE]... [--guest-attributes-disabled]
//! ```
//!
//! Prints `metadata-emulator listening on ADDR` once it serves, then runs until SIGTERM or
//! ctrl-c. Faults and attributes can be changed while it runs through its control endpoint
//! (`/emulator/...`, documented in `testkit::metadata_emulator`).

use testkit::metadata_emulator::{EmulatorArgs, MetadataEmulator};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = match EmulatorArgs::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let emulator = match MetadataEmulator::start_on(args.addr, args.vm) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("metadata-emulator: {e:#}");
            return std::process::ExitCode::from(1);
        }
    };
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("metadata-emulator: cannot watch SIGTERM: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    println!("metadata-emulator listening on {}", emulator.addr());
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(emulator);
    std::process::ExitCode::SUCCESS
}
