//! Soak run of the daemon (`tests/soak.sh` builds and runs it; not part of the test suite):
//! `service-proxy-agent run --interception enforce` for SOAK_MINUTES against the real Envoy fed
//! by the test xDS control plane, with one VIP added or removed every second, 5,000 log lines a
//! second appended to a followed log file (rotated every minute, by rename and by copytruncate
//! in turn), and the metadata-server emulator. Everything runs in fresh PID, mount and network
//! namespaces (the binary re-runs itself under `unshare`), so only loopback and the
//! namespace's own iptables are used.
//!
//! Every 10 s it samples the agent's VmRSS and open descriptors; at the end it prints the curve
//! and the figures, and fails (exit 1) if RSS grew by more than 1 MiB after the warm-up, if
//! descriptors grew, if a log line written was not counted by the agent (`/metrics`), if the
//! agent died, or if the emulator saw the guest-attribute budget broken.
//!
//! A bench target of its own (`cargo bench --bench soak`) so that it shares nothing with the
//! benchmark suite's files.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use testkit::envoy::Envoy;
use testkit::metadata_emulator::{MetadataEmulator, VmIdentity};
use testkit::xds::{ControlPlane, InterceptionSpec, ServiceVip};

const INSIDE: &str = "SPA_SOAK_INSIDE";
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const LINES_PER_SEC: u64 = 5_000;
const ROTATE_EVERY: Duration = Duration::from_secs(60);
const RSS_GROWTH_MAX_KIB: i64 = 1024;

struct Options {
    minutes: f64,
    warmup: Duration,
    agent: PathBuf,
    dir: PathBuf,
}

fn options() -> anyhow::Result<Options> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let minutes: f64 = env("SOAK_MINUTES")
        .unwrap_or_else(|| "10".into())
        .parse()
        .context("SOAK_MINUTES: a number of minutes")?;
    let warmup_s: u64 = env("SOAK_WARMUP_SECONDS")
        .unwrap_or_else(|| "120".into())
        .parse()
        .context("SOAK_WARMUP_SECONDS: a number of seconds")?;
    let agent = PathBuf::from(
        env("SOAK_AGENT").context("SOAK_AGENT: the service-proxy-agent binary to soak")?,
    );
    let dir = PathBuf::from(env("SOAK_DIR").unwrap_or_else(|| "target/soak".into()));
    if minutes * 60.0 <= warmup_s as f64 + 3.0 * SAMPLE_EVERY.as_secs_f64() {
        bail!("SOAK_MINUTES must leave at least 30 s after the {warmup_s} s warm-up");
    }
    Ok(Options {
        minutes,
        warmup: Duration::from_secs(warmup_s),
        agent,
        dir,
    })
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    if std::env::var_os(INSIDE).is_none() {
        // Fresh namespaces: this process again, inside.
        let me = std::env::current_exe()?;
        let status = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--net", "--"])
            .arg(me)
            .env(INSIDE, "1")
            .status()
            .context("run unshare (util-linux; needs root)")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let ok = inside(&o)?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

fn fd_count(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// One sample of `/metrics` by name (no labels), over plain HTTP on loopback.
fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = testkit::envoy::http_get(addr, "/metrics").ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Appends Envoy-format lines at a steady rate; rotates the file by rename or by copytruncate.
/// The writer and the rotation share a lock, so a copytruncate loses nothing (logrotate's
/// inherent window is not what this soak measures).
struct LogWriter {
    path: PathBuf,
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    file: Arc<Mutex<std::fs::File>>,
}

impl LogWriter {
    fn start(path: PathBuf) -> anyhow::Result<(LogWriter, std::thread::JoinHandle<()>)> {
        let file = Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?,
        ));
        let w = LogWriter {
            path,
            written: Arc::default(),
            stop: Arc::default(),
            file,
        };
        let (file, written, stop) = (w.file.clone(), w.written.clone(), w.stop.clone());
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut n: u64 = 0;
            let mut buf = String::new();
            while !stop.load(Ordering::Relaxed) {
                // Catch up with the rate, 10 ms at a time.
                let due = (start.elapsed().as_secs_f64() * LINES_PER_SEC as f64) as u64;
                buf.clear();
                let batch = due.saturating_sub(n).min(LINES_PER_SEC);
                for i in 0..batch {
                    let k = n + i;
                    if k % 10_000 == 9_999 {
                        buf.push_str("[2026-11-22 10:00:00.000][7][warning][config] [source/extensions/config_subscription/grpc/grpc_stream.h:191] StreamAggregatedResources gRPC config stream to cp closed since 39s ago: 14, upstream connect error\n");
                    } else {
                        buf.push_str(&format!(
                            "[2026-11-22 10:00:00.000][7][info][upstream] [source/common/upstream/cluster_manager_impl.cc:{k}] cm init: line {k} of the soak\n"
                        ));
                    }
                }
                if batch > 0
                    && let Ok(mut f) = file.lock()
                    && f.write_all(buf.as_bytes()).is_ok()
                {
                    n += batch;
                    written.store(n, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Ok((w, handle))
    }

    /// Rotation `n`: the file becomes (rename) or is copied to (copytruncate) `<name>.<n>`, a
    /// new name each time, as logrotate shifts its numbered files; the copy from two rotations
    /// ago is deleted.
    fn rotate(&self, n: u32, by_rename: bool) -> anyhow::Result<()> {
        let mut f = self.file.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let rotated = |k: u32| self.path.with_extension(format!("log.{k}"));
        if by_rename {
            std::fs::rename(&self.path, rotated(n))?;
            *f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        } else {
            std::fs::copy(&self.path, rotated(n))?;
            f.set_len(0)?;
        }
        if n >= 2 {
            let _ = std::fs::remove_file(rotated(n - 2));
        }
        Ok(())
    }
}

struct Sample {
    t: Duration,
    rss: u64,
    fds: usize,
    written: u64,
    counted: f64,
    cycles: f64,
    vips: usize,
}

/// Runs the soak inside the namespaces; true when every check passed.
fn inside(o: &Options) -> anyhow::Result<bool> {
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()?;
    if !up.success() {
        bail!("ip link set lo up failed");
    }
    std::fs::create_dir_all(&o.dir)?;
    let vm = VmIdentity::default();
    let emulator = MetadataEmulator::start(vm.clone())?;
    let cp = ControlPlane::start()?;
    let proxy_port = free_port()?;
    let mut spec = InterceptionSpec::new(proxy_port, vm.project_number.to_string());
    for i in 1..=20u8 {
        spec.add_service(ServiceVip::new(
            IpAddr::V4(Ipv4Addr::new(10, 100, 0, i)),
            80,
        ));
    }
    cp.set_interception(&spec);
    let mut bootstrap = cp.bootstrap(&vm.network, &vm.project_number.to_string());
    bootstrap.interception_port = Some(proxy_port);
    let envoy = Envoy::start(bootstrap.envoy_config())?;
    envoy.wait_until(Duration::from_secs(60), "VIPs in Envoy", |e| {
        let (_, body) = e.admin_get("/config_dump?resource=dynamic_listeners")?;
        Ok(body.matches("\"address_prefix\"").count() >= 20)
    })?;

    let log_dir = tempfile::tempdir_in(&o.dir)?;
    let log_path = log_dir.path().join("envoy.err.log");
    std::fs::write(&log_path, b"")?;
    let config = log_dir.path().join("agent-empty.toml");
    std::fs::write(&config, "")?;
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let out_path = o.dir.join("agent.out");
    let mut cmd = Command::new(&o.agent);
    for (k, _) in std::env::vars() {
        if k.starts_with("SPA_") || k == "GOOGLE_APPLICATION_CREDENTIALS" {
            cmd.env_remove(k);
        }
    }
    cmd.env("GCE_METADATA_HOST", emulator.host())
        .arg("--config")
        .arg(&config)
        .arg("--envoy-admin")
        .arg(envoy.admin_url())
        .arg("--envoy-log-dir")
        .arg(log_dir.path())
        .args(["--interception", "enforce", "--poll-interval", "1s"])
        .arg("--envoy-user")
        .arg(nix::unistd::getuid().as_raw().to_string())
        .arg("--metrics-addr")
        .arg(metrics.to_string())
        .args(["--cloud-logging", "off", "--log-format", "json"])
        .arg("--control-plane")
        .arg(cp.addr().to_string())
        .arg("run")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(o.dir.join("agent.err"))?);
    let mut agent: Child = cmd.spawn().context("start the agent")?;
    let pid = agent.id();
    // Lines are written once the agent follows the file (after its first cycle): every line
    // written must then be counted.
    let ready = Instant::now() + Duration::from_secs(60);
    while metric(metrics, "spa_cycles_total").unwrap_or(0.0) < 1.0 {
        if let Some(status) = agent.try_wait()? {
            bail!(
                "the agent exited at start ({status}); see {}",
                o.dir.display()
            );
        }
        if Instant::now() > ready {
            bail!(
                "the agent completed no cycle in 60 s; see {}",
                o.dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let counted0 = metric(metrics, "spa_envoy_log_lines_total").unwrap_or(0.0);
    let (writer, writer_thread) = LogWriter::start(log_path)?;

    let total = Duration::from_secs_f64(o.minutes * 60.0);
    let t0 = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = t0 + SAMPLE_EVERY;
    let mut next_rotate = t0 + ROTATE_EVERY;
    let mut rotations = 0u32;
    let mut churn = 0u32;
    let mut next_churn = t0 + Duration::from_secs(1);
    let mut died = None;
    while t0.elapsed() < total {
        let now = Instant::now();
        if now >= next_churn {
            // One VIP added, or the oldest churned one removed: the set moves every second.
            churn += 1;
            let k = churn.div_ceil(2);
            let vip = IpAddr::V4(Ipv4Addr::new(10, 101, (k >> 8) as u8, k as u8));
            if churn % 2 == 1 {
                spec.add_service(ServiceVip::new(vip, 80));
            } else {
                spec.remove_service(vip, 32, 80);
            }
            cp.set_interception(&spec);
            next_churn += Duration::from_secs(1);
        }
        if now >= next_rotate {
            writer.rotate(rotations, rotations % 2 == 0)?;
            rotations += 1;
            next_rotate += ROTATE_EVERY;
        }
        if now >= next_sample {
            if let Some(status) = agent.try_wait()? {
                died = Some(status);
                break;
            }
            samples.push(Sample {
                t: t0.elapsed(),
                rss: status_kib(pid, "VmRSS:")?,
                fds: fd_count(pid)?,
                written: writer.written.load(Ordering::Relaxed),
                counted: metric(metrics, "spa_envoy_log_lines_total").unwrap_or(f64::NAN)
                    - counted0,
                cycles: metric(metrics, "spa_cycles_total").unwrap_or(f64::NAN),
                vips: spec.services.len(),
            });
            next_sample += SAMPLE_EVERY;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.stop.store(true, Ordering::Relaxed);
    let _ = writer_thread.join();
    let written = writer.written.load(Ordering::Relaxed);
    // Every line counted, within a few seconds of the last write.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut counted = f64::NAN;
    while Instant::now() < deadline && died.is_none() {
        counted = metric(metrics, "spa_envoy_log_lines_total").unwrap_or(f64::NAN) - counted0;
        if counted >= written as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let hwm = status_kib(pid, "VmHWM:").unwrap_or(0);
    let restores = metric(metrics, "spa_interception_restores_total").unwrap_or(f64::NAN);
    let restore_errors = metric(metrics, "spa_interception_errors_total").unwrap_or(f64::NAN);
    let violations = emulator.violations();
    let writes = emulator.writes().len();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let stop_deadline = Instant::now() + Duration::from_secs(10);
    let mut stopped = None;
    while Instant::now() < stop_deadline {
        if let Some(s) = agent.try_wait()? {
            stopped = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if stopped.is_none() {
        let _ = agent.kill();
        let _ = agent.wait();
    }
    drop(envoy);

    // The curve and the figures.
    println!("soak: {:.1} min, agent {}", o.minutes, o.agent.display());
    println!(
        "{:>6} {:>9} {:>5} {:>12} {:>12} {:>7} {:>5}",
        "t(s)", "RSS(KiB)", "fds", "lines wrtn", "lines cntd", "cycles", "VIPs"
    );
    for s in &samples {
        println!(
            "{:>6} {:>9} {:>5} {:>12} {:>12} {:>7} {:>5}",
            s.t.as_secs(),
            s.rss,
            s.fds,
            s.written,
            s.counted,
            s.cycles,
            s.vips
        );
    }
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t >= o.warmup).collect();
    let mut ok = true;
    let mut fail = |why: String| {
        println!("FAIL: {why}");
        ok = false;
    };
    if let Some(status) = died {
        fail(format!(
            "the agent exited during the soak ({status}); see {}",
            o.dir.join("agent.err").display()
        ));
    }
    let (Some(first), Some(warm), Some(last)) = (samples.first(), after.first(), after.last())
    else {
        fail("not enough samples after the warm-up".into());
        return Ok(false);
    };
    let max_rss = samples.iter().map(|s| s.rss).max().unwrap_or(0);
    let max_after = after.iter().map(|s| s.rss).max().unwrap_or(0);
    let growth = last.rss as i64 - warm.rss as i64;
    let growth_max = max_after as i64 - warm.rss as i64;
    let fds_min = samples.iter().map(|s| s.fds).min().unwrap_or(0);
    let fds_max = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let fds_warm = after.iter().map(|s| s.fds).take(3).max().unwrap_or(0);
    let fds_end = after.iter().rev().map(|s| s.fds).take(3).min().unwrap_or(0);
    println!(
        "RSS at start (first sample, {} s): {} KiB",
        first.t.as_secs(),
        first.rss
    );
    println!(
        "RSS after warm-up ({} s): {} KiB",
        o.warmup.as_secs(),
        warm.rss
    );
    println!("RSS max: {max_rss} KiB (after warm-up: {max_after} KiB); VmHWM {hwm} KiB");
    println!(
        "RSS growth after warm-up: {growth:+} KiB at the end, {growth_max:+} KiB at most (limit {RSS_GROWTH_MAX_KIB})"
    );
    println!("fds: min {fds_min}, max {fds_max}; after warm-up {fds_warm}, at the end {fds_end}");
    println!("log lines written {written}, counted by the agent {counted}");
    println!(
        "rotations {rotations}, VIP changes {churn}, cycles {}, guest-attribute writes {writes}, budget violations {}",
        last.cycles,
        violations.len()
    );
    println!(
        "iptables-restore transactions applied {restores}, interception errors {restore_errors}"
    );
    println!(
        "load average at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if growth > RSS_GROWTH_MAX_KIB {
        fail(format!(
            "RSS grew by {growth} KiB after the warm-up (limit {RSS_GROWTH_MAX_KIB})"
        ));
    }
    if fds_end > fds_warm {
        fail(format!(
            "open descriptors grew from {fds_warm} to {fds_end} after the warm-up"
        ));
    }
    if counted.is_nan() || (counted as u64) != written {
        fail(format!(
            "the agent counted {counted} log lines of the {written} written"
        ));
    }
    // The VIPs move every second and the agent polls every second: most changes are applied.
    if restores.is_nan() || restores < f64::from(churn) / 4.0 {
        fail(format!(
            "only {restores} iptables-restore transactions for {churn} VIP changes"
        ));
    }
    if !violations.is_empty() {
        fail(format!(
            "guest-attribute budget broken {} times",
            violations.len()
        ));
    }
    if stopped.is_none_or(|s| !s.success()) {
        fail(format!("no clean stop on SIGTERM: {stopped:?}"));
    }
    println!("{}", if ok { "soak: PASS" } else { "soak: FAIL" });
    let _ = Path::new(&out_path);
    Ok(ok)
}
