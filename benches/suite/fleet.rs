//! The fleet benchmark (issue 17): `service-proxy-agent fleet` against the Compute and Cloud
//! Logging emulators (testkit/src/fleet_apis.rs) holding a project of 10,000 VMs, every call
//! delayed by 50 ms as a remote API would be, and its peer: what a user scripts today around
//! `gcloud compute instances get-guest-attributes`, one VM after another.
//!
//! gcloud is neither on PyPI nor in Debian, so the peer is Google's real Python client
//! (`google-api-python-client`, the client built from the Compute discovery document it ships,
//! endpoint overridden, a bearer token as gcloud holds one), in two shapes
//! (`benches/suite/fleet_peer.py`):
//!
//! - one process per VM (start, build the client, one `getGuestAttributes`), what a shell loop
//!   around gcloud does, after one process that lists the VMs. Timed on a sample of VMs spread
//!   over the fleet and extrapolated to the whole fleet (the list is timed whole);
//! - one process, one client, the VMs read one after another: timed on the first VMs of the
//!   list and extrapolated.
//!
//! Both peers' answers are compared, VM by VM, with what the emulator holds; the product's
//! report is compared with it too (every VM's health, the summary's counts, the exit status).
//! The product runs as its own process under `/usr/bin/time` (wall clock, peak RSS); its
//! requests are counted by the emulator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use testkit::fleet_apis::{FleetApis, FleetProject, FleetVm, GuestAttributes, StoredEntry};
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};

use crate::common::{self, Row, Stats};

const PROJECT: &str = "fleet-bench";
const NUMBER: u64 = 5150;
const TOKEN: &str = "ya29.fleet-bench-token";
const ZONES: usize = 10;
/// The product's default rate (`fleet --max-qps`), which the benchmark keeps.
const DEFAULT_QPS: f64 = 20.0;
/// The product's `--since` default: a VM logs `state` every 10 minutes (docs/contract.md#6-logs).
const SINCE: Duration = Duration::from_secs(15 * 60);
const STATE_PERIOD: Duration = Duration::from_secs(10 * 60);

pub struct Options {
    pub dir: PathBuf,
    pub agent: PathBuf,
    pub vms: usize,
    pub latency: Duration,
    /// VMs read by the one-process-per-VM peer.
    pub process_sample: usize,
    /// VMs read by the one-client sequential peer.
    pub loop_sample: usize,
    /// Runs of the logging source (the compute source runs once: minutes at 20 a second).
    pub runs: usize,
    /// Only the logging source: no peers, no compute source.
    pub logging_only: bool,
    /// The logging source and the peers, not the compute source (minutes).
    pub peers_only: bool,
    /// Only the compute source: no logging source, no peers (its figures before and after a
    /// change to it, without the peers' minutes).
    pub compute_only: bool,
}

/// What a VM's agent reports, by index modulo 20: mostly OK, some DEGRADED and FAILING, one in
/// twenty without attributes (404: agent not installed or guest attributes disabled) and one
/// the caller may not read (403).
fn class(i: usize) -> (GuestAttributes, &'static str, &'static [&'static str]) {
    let (health, findings): (&str, &[&str]) = match i % 20 {
        0..=12 => ("OK", &[]),
        13 | 14 => ("DEGRADED", &["ENDPOINTS_UNHEALTHY"]),
        15 | 16 => ("FAILING", &["CONTROL_PLANE_DISCONNECTED"]),
        17 => ("FAILING", &["ENVOY_NOT_RUNNING"]),
        18 => return (GuestAttributes::NotFound, "HTTP 404", &[]),
        _ => return (GuestAttributes::Forbidden, "HTTP 403", &[]),
    };
    let attrs = vec![
        ("bootstrap-status".to_owned(), "FINISHED".to_owned()),
        ("health".to_owned(), health.to_owned()),
        ("findings".to_owned(), findings.join(",")),
        ("proxy-version".to_owned(), "v1.40.0".to_owned()),
        ("proxy-state".to_owned(), "LIVE".to_owned()),
        ("agent-heartbeat".to_owned(), String::new()),
        ("agent-last-failure".to_owned(), String::new()),
    ];
    (GuestAttributes::Present(attrs), health, findings)
}

fn rfc(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The VM names and what each one's state reads as (`OK`..., `HTTP 404`, `HTTP 403`).
pub struct Fleet {
    pub project: FleetProject,
    pub expected: BTreeMap<String, &'static str>,
    /// `state` events within `--since`, the entries the logging source pages through.
    pub entries_in_window: usize,
}

/// `n` VMs over ten zones, labelled `gce-service-proxy=on`, with the attributes their agents
/// wrote (heartbeats within the last minute) and the `state` events they logged: one every 10
/// minutes at a phase of its own, so within 15 minutes half of them logged twice (the older
/// event says OK, the latest is the one that counts), plus one older event outside the window.
pub fn fleet(n: usize, latency: Duration, now: SystemTime) -> Fleet {
    let mut vms = Vec::with_capacity(n);
    let mut entries = Vec::new();
    let mut expected = BTreeMap::new();
    let mut in_window = 0;
    for i in 0..n {
        let zone = format!("zone-{}", (i / 7) % ZONES);
        let name = format!("vm-{i:05}");
        let id = 7_000_000 + i as u64;
        let (mut guest, health, findings) = class(i);
        let heartbeat = now - Duration::from_secs(5 + (i % 50) as u64);
        if let GuestAttributes::Present(attrs) = &mut guest {
            for (k, v) in attrs.iter_mut() {
                if k == "agent-heartbeat" {
                    *v = rfc(heartbeat);
                }
            }
            let phase = Duration::from_secs((i as u64 * 37) % STATE_PERIOD.as_secs());
            let event = |ago: Duration, health: &str, findings: &[&str]| {
                let at = now - ago;
                StoredEntry {
                    log_name: format!("projects/{PROJECT}/logs/service-proxy-agent"),
                    instance_id: id,
                    zone: zone.clone(),
                    vm_name: Some(name.clone()),
                    timestamp: at,
                    severity: "INFO".into(),
                    json_payload: json!({"message": "state", "event": "state", "health": health,
                        "findings": findings, "proxy_version": "v1.40.0", "proxy_state": "LIVE",
                        "heartbeat": rfc(at)}),
                }
            };
            for k in 0..3u32 {
                let ago = phase + STATE_PERIOD * k;
                let (h, f) = if k == 0 {
                    (health, findings)
                } else {
                    ("OK", &[][..])
                };
                entries.push(event(ago, h, f));
                in_window += usize::from(ago < SINCE);
            }
        }
        let mut labels = BTreeMap::new();
        labels.insert("gce-service-proxy".to_owned(), "on".to_owned());
        vms.push(FleetVm {
            name: name.clone(),
            zone,
            id,
            labels,
            metadata: vec![("enable-guest-attributes".into(), "TRUE".into())],
            status: "RUNNING".into(),
            guest,
        });
        expected.insert(name, health);
    }
    Fleet {
        project: FleetProject {
            project: PROJECT.into(),
            project_number: NUMBER,
            vms,
            entries,
            zones: (0..ZONES).map(|z| format!("zone-{z}")).collect(),
            latency,
            token: Some(TOKEN.into()),
            ..FleetProject::default()
        },
        expected,
        entries_in_window: in_window,
    }
}

/// The counts a correct `--json` summary holds: `(vms, OK, DEGRADED, FAILING, UNKNOWN)`.
fn expected_counts(f: &Fleet, source: &str) -> Value {
    let mut h: BTreeMap<&str, usize> = ["OK", "DEGRADED", "FAILING", "UNKNOWN"]
        .iter()
        .map(|k| (*k, 0))
        .collect();
    let mut vms = 0;
    for state in f.expected.values() {
        let key = if state.starts_with("HTTP") {
            if source == "logging" {
                // No agent, no `state` event: the logging source does not see the VM.
                continue;
            }
            "UNKNOWN"
        } else {
            state
        };
        vms += 1;
        *h.entry(key).or_default() += 1;
    }
    json!({"vms": vms, "health": h})
}

fn python() -> anyhow::Result<PathBuf> {
    let py = std::env::var_os("SPA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let ok = Command::new(&py)
        .args(["-c", "import googleapiclient, google.oauth2.credentials"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "{} cannot import google-api-python-client (the fleet benchmark's peer): run tests/setup-google-clients.sh or set SPA_PYTHON",
            py.display()
        );
    }
    Ok(py)
}

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/suite/fleet_peer.py")
}

/// Checks `NAME STATE` lines against the fleet; returns how many were checked.
fn check_peer_lines(who: &str, stdout: &str, f: &Fleet) -> anyhow::Result<usize> {
    let mut n = 0;
    for line in stdout.lines().filter(|l| !l.starts_with('#')) {
        let (name, state) = line
            .split_once(' ')
            .with_context(|| format!("{who} printed {line:?}"))?;
        match f.expected.get(name) {
            Some(want) if *want == state => n += 1,
            want => bail!("{who}: {name} read as {state:?}, the emulator holds {want:?}"),
        }
    }
    Ok(n)
}

/// One run of the product: `fleet --json` with `args`; the report, the exit status and the
/// measurement (the exit status goes through a shell because FAILING VMs make it 1).
fn product(
    o: &Options,
    apis: &FleetApis,
    md: &MetadataEmulator,
    home: &Path,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<(Value, i32, common::Measurement)> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#""$@"; echo "exit=$?""#)
        .arg("sh")
        .arg(&o.agent)
        .args(["fleet", "--json", "--project", PROJECT])
        .args(["--compute-endpoint", &apis.url()])
        .args(["--cloud-logging-endpoint", &apis.url()])
        .args(args)
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env_remove("CLOUDSDK_CONFIG")
        .env("HOME", home)
        .env("GCE_METADATA_HOST", md.host());
    let out = common::run_measured(&mut cmd, timeout)?;
    let mut lines = out.stdout.lines();
    let report = lines.next().context("fleet printed nothing")?;
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("exit="))
        .and_then(|s| s.parse::<i32>().ok())
        .context("no exit status")?;
    let report: Value = serde_json::from_str(report)
        .with_context(|| format!("fleet exited {status}, printed no JSON report"))?;
    Ok((report, status, out.measurement))
}

/// Checks the product's report against the fleet: the summary's counts, every VM's health,
/// the exit status (1: FAILING and unread VMs).
fn check_report(report: &Value, status: i32, f: &Fleet, source: &str) -> anyhow::Result<()> {
    let s = &report["summary"];
    let got = json!({"vms": s["vms"], "health": s["health"]});
    let want = expected_counts(f, source);
    if got != want {
        bail!("fleet --source {source}: summary {got}, the emulator holds {want}");
    }
    for vm in report["vms"].as_array().into_iter().flatten() {
        let name = vm["name"].as_str().unwrap_or_default();
        let health = vm["health"].as_str().unwrap_or_default();
        let want = f.expected.get(name).copied().unwrap_or("absent");
        let want = if want.starts_with("HTTP") {
            "UNKNOWN"
        } else {
            want
        };
        if health != want {
            bail!("fleet --source {source}: {name} is {health}, the emulator holds {want}");
        }
    }
    if status != 1 {
        bail!("fleet --source {source} exited {status}: FAILING VMs make it 1");
    }
    Ok(())
}

fn requests_since(apis: &FleetApis, api: &str, from: usize) -> Vec<Instant> {
    apis.seen()
        .iter()
        .skip(from)
        .filter(|s| s.api == api)
        .map(|s| s.at)
        .collect()
}

pub fn bench(o: &Options) -> anyhow::Result<Vec<Row>> {
    common::require_tool(common::GNU_TIME, "time")?;
    let py = python()?;
    let script = peer_script();
    let n = o.vms.max(1);
    let f = fleet(n, o.latency, SystemTime::now());
    let apis = FleetApis::start(f.project.clone());
    let md = MetadataEmulator::start(VmIdentity::default())?;
    md.set_token(TOKEN);
    std::fs::create_dir_all(&o.dir)?;
    let home = tempfile::Builder::new()
        .prefix("fleet-home-")
        .tempdir_in(&o.dir)?;
    let peer = |args: &[String]| -> anyhow::Result<common::Output> {
        let mut cmd = Command::new(&py);
        cmd.arg(&script)
            .args(args)
            .env("SPA_BENCH_TOKEN", TOKEN)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        common::run_measured(&mut cmd, Duration::from_secs(600))
    };
    let url = apis.url();
    eprintln!(
        "  {n} VMs over {ZONES} zones, {} ms per call; {} state events within {}",
        o.latency.as_millis(),
        f.entries_in_window,
        humantime::format_duration(SINCE)
    );

    if o.compute_only {
        let (compute_s, compute_requests, peak, compute_rss) =
            compute_step(o, &apis, &md, home.path(), &f)?;
        return Ok(vec![Row {
            what: format!(
                "fleet `--source compute`, {n} VMs, {} ms per call, default `--max-qps 20`",
                o.latency.as_millis()
            ),
            product: format!(
                "{compute_s:.0} s ({:.1} VMs/s), {compute_requests} requests, at most {peak} in any second, peak RSS {compute_rss:.1} MiB",
                n as f64 / compute_s
            ),
            peer: "not run (`--fleet-compute-only`)".into(),
            ratio: "—".into(),
            target: "RSS ≤ 64 MiB".into(),
            verdict: common::verdict(compute_rss <= 64.0),
            note: format!(
                "every VM's health identical to what the emulator holds (all {n}, exit 1)"
            ),
        }]);
    }

    // The product, logging source, first: the events are as recent as a live fleet's. The
    // project is written again before each run (the same VMs, times from now), so minutes of
    // benchmark do not age the heartbeats and events it reads.
    let refresh = || {
        let fresh = fleet(n, o.latency, SystemTime::now()).project;
        apis.update(|p| *p = fresh);
    };
    let (mut log_t, mut log_rss, mut log_req) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..o.runs.max(1) {
        refresh();
        let before = apis.seen().len();
        let (report, status, l) = product(
            o,
            &apis,
            &md,
            home.path(),
            &["--source", "logging"],
            Duration::from_secs(300),
        )?;
        check_report(&report, status, &f, "logging")?;
        log_t.push(l.wall.as_secs_f64());
        log_rss.push(l.max_rss_kib as f64 / 1024.0);
        log_req.push(requests_since(&apis, "logging", before).len() as f64);
        eprintln!(
            "  product, logging run {}: {:.2} s, {} requests, peak RSS {:.1} MiB",
            run + 1,
            log_t[run],
            log_req[run],
            log_rss[run]
        );
    }
    let (lt, lr, lq) = (Stats::of(&log_t), Stats::of(&log_rss), Stats::of(&log_req));
    let logging_row = |compute_s: Option<f64>| Row {
        what: format!(
            "fleet `--source logging`, {n} VMs ({} `state` events within 15 min), {} ms per call",
            f.entries_in_window,
            o.latency.as_millis()
        ),
        product: format!(
            "{} s, {} requests, peak RSS {} MiB",
            lt.show(2),
            lq.show(0),
            lr.show(1)
        ),
        peer: compute_s.map_or_else(
            || "`--source compute`: not run (`--fleet-logging-only`)".to_owned(),
            |c| format!("`--source compute`, same run: {c:.0} s"),
        ),
        ratio: compute_s.map_or_else(
            || "—".to_owned(),
            |c| format!("{:.0}× faster", c / lt.median),
        ),
        target: "≤ 10 s, ≤ 20 requests, RSS ≤ 64 MiB".into(),
        verdict: common::verdict(lt.max <= 10.0 && lq.max <= 20.0 && lr.max <= 64.0),
        note: format!(
            "{} VMs with an agent reported, identical to what the emulator holds; exit 1",
            expected_counts(&f, "logging")["vms"]
        ),
    };
    if o.logging_only {
        return Ok(vec![logging_row(None)]);
    }

    // The peer, one process per VM: the list (one process), then a sample of VMs.
    let list = peer(&["list".into(), url.clone(), PROJECT.into()])?;
    let listed: Vec<(String, String)> = list
        .stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(z, v)| (z.to_owned(), v.to_owned()))
        .collect();
    if listed.len() != n {
        bail!("the peer listed {} VMs of {n}", listed.len());
    }
    let list_s = list.measurement.wall.as_secs_f64();
    let k = o.process_sample.clamp(1, n);
    let mut per_vm = Vec::new();
    let mut peak_peer_rss: f64 = 0.0;
    for j in 0..k {
        // Spread over the fleet and over the classes.
        let (zone, name) = &listed[((j * n) / k + j % 20).min(n - 1)];
        let out = peer(&[
            "one".into(),
            url.clone(),
            PROJECT.into(),
            zone.clone(),
            name.clone(),
        ])?;
        check_peer_lines("the per-VM peer", &out.stdout, &f)?;
        per_vm.push(out.measurement.wall.as_secs_f64());
        peak_peer_rss = peak_peer_rss.max(out.measurement.max_rss_kib as f64 / 1024.0);
    }
    let per_vm_stats = Stats::of(&per_vm);
    let per_vm_mean = per_vm.iter().sum::<f64>() / per_vm.len() as f64;
    let process_total = list_s + per_vm_mean * n as f64;
    eprintln!(
        "  peer, a process per VM: list {list_s:.1} s, {} s a VM on {k} VMs -> {process_total:.0} s for {n} (extrapolated)",
        per_vm_stats.show(2)
    );

    // The peer, one client, one VM after another.
    let m = o.loop_sample.clamp(1, n);
    let out = peer(&["loop".into(), url.clone(), PROJECT.into(), m.to_string()])?;
    let checked = check_peer_lines("the sequential peer", &out.stdout, &f)?;
    if checked != m {
        bail!("the sequential peer read {checked} VMs of {m}");
    }
    let tail = out
        .stdout
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>();
    let reads_s: f64 = match tail.as_slice() {
        ["#", "list_s", _, "reads_s", r] => r.parse()?,
        _ => bail!("the sequential peer's last line is {tail:?}"),
    };
    let loop_wall = out.measurement.wall.as_secs_f64();
    let loop_rate = m as f64 / reads_s;
    let loop_total = loop_wall - reads_s + reads_s * n as f64 / m as f64;
    eprintln!(
        "  peer, one client: {loop_rate:.1} VMs/s on {m} VMs ({loop_wall:.1} s with start and list) -> {loop_total:.0} s for {n} (extrapolated)"
    );

    if o.peers_only {
        let not_run = "not run (`--fleet-peers-only`)".to_owned();
        return Ok(vec![
            Row {
                what: format!("fleet peer: a process per VM, {n} VMs"),
                product: not_run.clone(),
                peer: format!(
                    "{} s a VM + list {list_s:.1} s → {process_total:.0} s (extrapolated from {k} VMs)",
                    per_vm_stats.show(2)
                ),
                ratio: "—".into(),
                target: "—".into(),
                verdict: "n/a".into(),
                note: String::new(),
            },
            Row {
                what: format!("fleet peer: one client, VMs in sequence, {n} VMs"),
                product: not_run,
                peer: format!(
                    "{loop_rate:.1} VMs/s → {loop_total:.0} s (extrapolated from {m} VMs)"
                ),
                ratio: "—".into(),
                target: "—".into(),
                verdict: "n/a".into(),
                note: String::new(),
            },
        ]);
    }

    let (compute_s, compute_requests, peak, compute_rss) =
        compute_step(o, &apis, &md, home.path(), &f)?;

    let latency_ms = o.latency.as_millis();
    let ratio = process_total / compute_s;
    let loop_ratio = loop_total / compute_s;
    let product_compute = format!(
        "{compute_s:.0} s ({:.1} VMs/s), {compute_requests} requests, at most {peak} in any second, peak RSS {compute_rss:.1} MiB",
        n as f64 / compute_s
    );
    Ok(vec![
        Row {
            what: format!(
                "fleet `--source compute`, {n} VMs, {latency_ms} ms per call, default `--max-qps 20`"
            ),
            product: product_compute.clone(),
            peer: format!(
                "a process per VM (Python `google-api-python-client`, as a loop around `gcloud compute instances get-guest-attributes`): {} s a VM + list {list_s:.1} s → {process_total:.0} s (extrapolated from {k} VMs)",
                per_vm_stats.show(2)
            ),
            ratio: format!("{ratio:.1}× faster"),
            target: "≥ 15× the per-VM loop, RSS ≤ 64 MiB".into(),
            verdict: common::verdict(ratio >= 15.0 && compute_rss <= 64.0),
            note: format!(
                "every VM's health identical to what the emulator holds (product: all {n}, exit 1; peers: the VMs they read); the peer's process: Python start, imports, client built from the packaged `compute.v1` discovery document, one call (peak RSS {peak_peer_rss:.0} MiB each); gcloud itself is not installable here (not on PyPI or in Debian) and starts more slowly than this script"
            ),
        },
        Row {
            what: format!(
                "fleet `--source compute` vs one client reading VMs one after another, {n} VMs, {latency_ms} ms per call"
            ),
            product: product_compute,
            peer: format!(
                "one Python process, one `google-api-python-client` client, sequential: {loop_rate:.1} VMs/s → {loop_total:.0} s (extrapolated from {m} VMs)"
            ),
            ratio: format!("{loop_ratio:.2}×"),
            target: "none (reported)".into(),
            verdict: "n/a".into(),
            note: format!(
                "at {latency_ms} ms a call a sequential loop reads at most {:.0} VMs a second, the order of the product's default budget of 20 requests a second (it sustained {:.1} a second here: the limiter counts a request until a second after its answer, so the emulator never sees more than 20 in a second, and the pace is 20 / (1 s + the round trip)): at the default rate the product's gain over such a loop is a bounded, quota-safe rate with backoff on 429, not speed; `--max-qps` raises it",
                1000.0 / latency_ms.max(1) as f64,
                compute_requests as f64 / compute_s
            ),
        },
        logging_row(Some(compute_s)),
    ])
}

/// The product, compute source, default rate, once (10,000 VMs take minutes): wall seconds,
/// requests the emulator saw, the most of them within any one second, peak RSS (MiB). Fails
/// when the report differs from the emulator's VMs or the rate limit was broken.
fn compute_step(
    o: &Options,
    apis: &FleetApis,
    md: &MetadataEmulator,
    home: &Path,
    f: &Fleet,
) -> anyhow::Result<(f64, usize, usize, f64)> {
    let n = o.vms.max(1);
    let pages = n.div_ceil(500);
    let requests = (n + pages) as f64;
    let timeout = Duration::from_secs_f64(requests / DEFAULT_QPS * 2.0 + 300.0);
    let fresh = fleet(n, o.latency, SystemTime::now()).project;
    apis.update(|p| *p = fresh);
    let before = apis.seen().len();
    let (report, status, c) = product(o, apis, md, home, &[], timeout)?;
    check_report(&report, status, f, "compute")?;
    let mut at = requests_since(apis, "compute", before);
    at.sort();
    let compute_requests = at.len();
    let peak = testkit::fleet_apis::peak_in_window(&at, Duration::from_secs(1));
    // How close the arrivals came to breaking the limit: the shortest time between a request
    // and the 20th after it (under a second: 21 in a second).
    let q = DEFAULT_QPS as usize;
    let closest = at
        .windows(q + 1)
        .filter_map(|w| Some(*w.get(q)? - *w.first()?))
        .min()
        .unwrap_or_default();
    let compute_s = c.wall.as_secs_f64();
    let compute_rss = c.max_rss_kib as f64 / 1024.0;
    eprintln!(
        "  product, compute: {compute_s:.1} s, {compute_requests} requests (peak {peak} in a second; a request and the {q}th after it at least {} ms apart), peak RSS {compute_rss:.1} MiB",
        closest.as_millis()
    );
    if peak > DEFAULT_QPS as usize {
        bail!("the emulator saw {peak} requests within one second at --max-qps 20");
    }
    Ok((compute_s, compute_requests, peak, compute_rss))
}
