//! `service-proxy-agent fleet`: its arguments and the I/O around the pure report.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};

use crate::config::{CommonArgs, Settings, parse_duration};
use crate::fleet::api::Api;
use crate::fleet::compute::{self, Budget, ComputeQuery};
use crate::fleet::{FleetReport, MigRef, Source, exit_status, to_text, write_json};
use crate::publish::state_event::STATE_PERIOD;

/// The label `gcloud ... --service-proxy` puts on its VMs.
pub const DEFAULT_FILTER: &str = "labels.gce-service-proxy = \"on\"";
const DEFAULT_COMPUTE: &str = "https://compute.googleapis.com";

/// `--source`'s names; mapped to the library's `fleet::Source`, which knows no clap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceArg {
    Compute,
    Logging,
}

impl From<SourceArg> for Source {
    fn from(s: SourceArg) -> Self {
        match s {
            SourceArg::Compute => Source::Compute,
            SourceArg::Logging => Source::Logging,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Print the report as JSON (every VM)
    #[arg(long, env = "SPA_JSON")]
    pub json: bool,
    /// Redraw the report every DURATION
    #[arg(long, env = "SPA_WATCH", value_name = "DURATION", value_parser = parse_duration)]
    pub watch: Option<Duration>,
    /// Where the VMs' state is read
    #[arg(long, env = "SPA_SOURCE", value_enum, default_value = "compute")]
    pub source: SourceArg,
    /// Project ID [default: GOOGLE_CLOUD_PROJECT, else the metadata server's project]
    #[arg(long, env = "SPA_PROJECT")]
    pub project: Option<String>,
    /// Only these zones (repeatable)
    #[arg(
        long = "zone",
        env = "SPA_ZONE",
        value_name = "ZONE",
        value_delimiter = ','
    )]
    pub zones: Vec<String>,
    /// The region of a regional managed instance group (with --group)
    #[arg(long, env = "SPA_REGION")]
    pub region: Option<String>,
    /// Only the members of this managed instance group (needs --zone or --region)
    #[arg(long, env = "SPA_GROUP", value_name = "MIG")]
    pub group: Option<String>,
    /// Compute filter [default: labels.gce-service-proxy = "on", unless --group or --all]
    #[arg(long, env = "SPA_FILTER")]
    pub filter: Option<String>,
    /// Every VM of the project, not only the labelled ones
    #[arg(long, env = "SPA_ALL")]
    pub all: bool,
    /// Most requests a second to the Compute API
    #[arg(long, env = "SPA_MAX_QPS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_qps: u32,
    /// With --source logging: state events newer than this
    #[arg(long, env = "SPA_SINCE", value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub since: Duration,
    /// A heartbeat older than this is stale
    #[arg(long, env = "SPA_STALE", value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub stale: Duration,
    /// List every VM, not only those that need attention
    #[arg(long, env = "SPA_ALL_VMS")]
    pub all_vms: bool,
}

impl FleetArgs {
    pub fn source(&self) -> Source {
        self.source.into()
    }

    /// The stale threshold for this source. A `state` event repeats every 10 minutes, so with
    /// the logging source a heartbeat is stale only beyond that period plus `--stale`.
    pub fn stale_after(&self) -> Duration {
        match self.source() {
            Source::Compute => self.stale,
            Source::Logging => self.stale + STATE_PERIOD,
        }
    }

    fn compute_query(&self, endpoint: &str, project: &str) -> anyhow::Result<ComputeQuery> {
        let group = match &self.group {
            None => None,
            Some(name) => {
                let location = match (&self.region, self.zones.as_slice()) {
                    (Some(r), _) => format!("regions/{r}"),
                    (None, [z]) => format!("zones/{z}"),
                    _ => bail!(
                        "--group needs its location: --zone ZONE (zonal) or --region REGION (regional)"
                    ),
                };
                Some(MigRef {
                    name: name.clone(),
                    location,
                })
            }
        };
        let filter = match &self.filter {
            Some(f) => Some(f.clone()),
            None if self.group.is_some() || self.all => None,
            None => Some(DEFAULT_FILTER.to_owned()),
        };
        Ok(ComputeQuery {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            project: project.to_owned(),
            zones: if group
                .as_ref()
                .is_some_and(|g| g.location.starts_with("zones/"))
            {
                Vec::new()
            } else {
                self.zones.clone()
            },
            group,
            filter,
        })
    }
}

async fn project_id(args: &FleetArgs, settings: &Settings) -> anyhow::Result<String> {
    if let Some(p) = &args.project {
        return Ok(p.clone());
    }
    if let Ok(p) = std::env::var("GOOGLE_CLOUD_PROJECT")
        && !p.is_empty()
    {
        return Ok(p);
    }
    let md = crate::observe::metadata::MetadataClient::new(
        &settings.metadata_host,
        Duration::from_secs(3),
    );
    md.get("project/project-id")
        .await
        .map(|(p, _)| p.trim().to_owned())
        .context("no --project, no GOOGLE_CLOUD_PROJECT, and no metadata server to ask")
}

/// A progress line on stderr, only when stderr is a terminal.
fn progress_line() -> Arc<dyn Fn(usize, usize) + Send + Sync> {
    if !std::io::stderr().is_terminal() {
        return Arc::new(|_, _| {});
    }
    Arc::new(|done, total| {
        if done == total || done % 25 == 0 {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[Kreading guest attributes: {done}/{total}");
            if done == total {
                let _ = write!(e, "\r\x1b[K");
            }
            let _ = e.flush();
        }
    })
}

/// One read of the fleet.
pub async fn read(
    args: &FleetArgs,
    api: Arc<Api>,
    budget: Arc<Budget>,
    compute_endpoint: &str,
    logging_endpoint: &str,
    project: &str,
) -> anyhow::Result<FleetReport> {
    let before = api.requests();
    let (vms, warnings) = match args.source() {
        Source::Compute => {
            let q = args.compute_query(compute_endpoint, project)?;
            let (listed, warnings) = compute::list(&api, &budget, &q)
                .await
                .context("cannot list the VMs")?;
            let vms = compute::read_all(api.clone(), budget, &q, listed, progress_line()).await;
            (vms, warnings)
        }
        Source::Logging => {
            let vms = crate::fleet::logging::read(
                &api,
                &budget,
                logging_endpoint.trim_end_matches('/'),
                project,
                args.since,
                SystemTime::now(),
            )
            .await
            .context("cannot read the state events from Cloud Logging")?;
            (vms, Vec::new())
        }
    };
    Ok(FleetReport {
        source: args.source(),
        project: project.to_owned(),
        generated_at: SystemTime::now(),
        vms,
        warnings,
        requests: api.requests() - before,
    })
}

fn print(args: &FleetArgs, report: &FleetReport, redraw: bool) {
    let mut out = std::io::stdout().lock();
    if args.json {
        // Streamed: the document of a large fleet is not built in memory first.
        let _ = write_json(&mut out, report, args.stale_after());
        let _ = writeln!(out);
    } else {
        if redraw && std::io::stdout().is_terminal() {
            let _ = write!(out, "\x1b[2J\x1b[H");
        }
        let _ = write!(out, "{}", to_text(report, args.stale_after(), args.all_vms));
    }
    let _ = out.flush();
}

/// `service-proxy-agent fleet`.
pub async fn run(settings: &Settings, common: &CommonArgs, args: FleetArgs) -> anyhow::Result<u8> {
    let project = project_id(&args, settings).await?;
    let compute_endpoint = common
        .compute_endpoint
        .clone()
        .unwrap_or_else(|| DEFAULT_COMPUTE.to_owned());
    let api = Arc::new(Api::new(&settings.metadata_host)?);
    let budget = Arc::new(Budget::new(args.max_qps));
    // Flags are checked before the first request.
    if args.source() == Source::Compute {
        args.compute_query(&compute_endpoint, &project)?;
    }
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut code;
    loop {
        let report = read(
            &args,
            api.clone(),
            budget.clone(),
            &compute_endpoint,
            &settings.cloud_logging_endpoint,
            &project,
        )
        .await?;
        for w in &report.warnings {
            eprintln!("service-proxy-agent: warning: {w}");
        }
        print(&args, &report, args.watch.is_some());
        code = exit_status(&report, args.stale_after());
        let Some(every) = args.watch else {
            break;
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = interrupt.recv() => break,
        }
    }
    Ok(code)
}
