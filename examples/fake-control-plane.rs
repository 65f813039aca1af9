//! A stand-in for Cloud Service Mesh's control plane, as a process, for the demo and for manual
//! runs against a real Envoy:
//!
//! ```text
//! cargo run --example fake-control-plane -- --addr 127.0.0.1:18000 \
//!     --network default --project-number 123 --service 10.0.0.1:80 --service '[fd00::1]:80' \
//!     --proxy-port 15001 --serving-port 8080 --control-addr 127.0.0.1:18001 \
//!     --write-bootstrap /tmp/envoy-bootstrap.json
//! curl -s 127.0.0.1:18001/state
//! curl -s -d '10.0.0.2:443' 127.0.0.1:18001/services/add
//! curl -s -d '{"network":"other","project_number":"123"}' 127.0.0.1:18001/expect   # break it
//! curl -s -d '{"code":7,"message":"permission denied"}' 127.0.0.1:18001/fail
//! curl -s -X POST 127.0.0.1:18001/recover
//! ```
//!
//! The control endpoint's requests are listed in `testkit::xds::control`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use testkit::xds::control::serve_control;
use testkit::xds::{ControlPlane, ExpectedNode, InterceptionSpec, ServiceVip};

#[derive(Parser, Debug)]
#[command(about = "Fake Cloud Service Mesh control plane (xDS over gRPC) for tests and demos")]
struct Args {
    /// gRPC address Envoy connects to.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Expected node network: other nodes are refused with 5 "configuration was not found".
    #[arg(long, requires = "project_number")]
    network: Option<String>,
    /// Expected node project number (also used in route configuration names).
    #[arg(long, requires = "network")]
    project_number: Option<String>,
    /// A service VIP: `VIP:PORT`, `VIP/LEN:PORT` or `[V6]:PORT` (repeatable).
    #[arg(long = "service", value_parser = ServiceVip::parse)]
    services: Vec<ServiceVip>,
    /// The interception listener's port.
    #[arg(long, default_value_t = 15001)]
    proxy_port: u16,
    /// An inbound serving port (repeatable).
    #[arg(long = "serving-port")]
    serving_ports: Vec<u16>,
    /// A file access log on every filter chain.
    #[arg(long)]
    access_log: Option<String>,
    /// Loopback HTTP endpoint to switch failures and services at runtime.
    #[arg(long, default_value = "127.0.0.1:0")]
    control_addr: SocketAddr,
    /// Write an Envoy bootstrap for the expected node, connecting here, to this file.
    #[arg(long)]
    write_bootstrap: Option<std::path::PathBuf>,
    /// Envoy's admin address in that bootstrap (Cloud Service Mesh's installs use port 15000).
    #[arg(long, default_value = "127.0.0.1:15000")]
    bootstrap_admin: SocketAddr,
    /// `initial_fetch_timeout` in that bootstrap.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    initial_fetch_timeout: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.control_addr.ip().is_loopback() {
        bail!(
            "--control-addr must be a loopback address (it has no authentication), not {}",
            args.control_addr
        );
    }
    let project = args.project_number.clone().unwrap_or_else(|| "0".into());
    let mut spec = InterceptionSpec::new(args.proxy_port, project.clone());
    for s in args.services {
        spec.add_service(s);
    }
    spec.serving_ports = args.serving_ports;
    spec.access_log_path = args.access_log;

    let cp = ControlPlane::start_on(args.addr).context("start the control plane")?;
    if let Some(network) = &args.network {
        cp.expect_node(Some(ExpectedNode::new(network.clone(), project.clone())));
    }
    let control = serve_control(&cp, args.control_addr, spec)?;
    if let Some(path) = &args.write_bootstrap {
        let mut b = cp.bootstrap(args.network.as_deref().unwrap_or("default"), &project);
        b.interception_port = Some(args.proxy_port);
        b.initial_fetch_timeout = args.initial_fetch_timeout;
        b.access_log_path = control.spec().access_log_path;
        b.admin = Some(args.bootstrap_admin);
        std::fs::write(path, serde_json::to_vec_pretty(&b.to_json())?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    println!(
        "fake-control-plane listening on {} (control on {})",
        cp.addr(),
        control.addr()
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    // Serve until killed (SIGINT/SIGTERM end the process).
    loop {
        std::thread::park();
    }
}
