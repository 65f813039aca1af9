//! What every benchmark of the suite shares: running a command under `/usr/bin/time`, medians
//! with min–max, the results table and the description of the machine.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One run of a measured command.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measurement {
    /// Wall-clock time from spawn to exit, measured here.
    pub wall: Duration,
    pub user_secs: f64,
    pub sys_secs: f64,
    /// Peak resident set of the process and its waited-for children (`%M`, KiB).
    pub max_rss_kib: u64,
}

/// What a measured command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub measurement: Measurement,
}

/// The GNU `time` binary (Debian package `time`), the ordinary tool for peak RSS.
pub const GNU_TIME: &str = "/usr/bin/time";

/// Runs `cmd` under `/usr/bin/time -f '%U %S %M'`, fails when it exits non-zero or runs longer
/// than `timeout`. Stdout is captured, stderr passes through (bounded by what the tools say).
pub fn run_measured(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(ToOwned::to_owned).collect();
    let shown = format!("{cmd:?}");
    let tmp = tempfile::NamedTempFile::new().context("temp file for /usr/bin/time")?;
    let mut timed = Command::new(GNU_TIME);
    timed
        .arg("-f")
        .arg("%U %S %M")
        .arg("-o")
        .arg(tmp.path())
        .arg(program)
        .args(args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    timed.stdin(Stdio::null()).stdout(Stdio::piped());
    let start = Instant::now();
    let mut child = timed
        .spawn()
        .with_context(|| format!("cannot run {GNU_TIME} (Debian package `time`) for {shown}"))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{shown} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let wall = start.elapsed();
    let stdout = reader.join().unwrap_or_default();
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    let report = std::fs::read_to_string(tmp.path()).context("read /usr/bin/time's report")?;
    let last = report.lines().last().unwrap_or_default();
    let f: Vec<&str> = last.split_whitespace().collect();
    if f.len() != 3 {
        bail!("unexpected /usr/bin/time report {report:?}");
    }
    Ok(Output {
        stdout,
        measurement: Measurement {
            wall,
            user_secs: f[0].parse().unwrap_or(0.0),
            sys_secs: f[1].parse().unwrap_or(0.0),
            max_rss_kib: f[2].parse().unwrap_or(0),
        },
    })
}

/// Median, min and max of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    pub fn of(values: &[f64]) -> Stats {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Stats {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                n,
            };
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Stats {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        }
    }

    /// `1.23 (1.10–1.40)` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        if self.n <= 1 {
            return format!("{:.*}", digits, self.median);
        }
        format!(
            "{:.*} ({:.*}–{:.*})",
            digits, self.median, digits, self.min, digits, self.max
        )
    }

    /// The same, scaled.
    pub fn scaled(&self, k: f64) -> Stats {
        Stats {
            median: self.median * k,
            min: self.min * k,
            max: self.max * k,
            n: self.n,
        }
    }
}

/// One line of the results table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub what: String,
    pub product: String,
    pub peer: String,
    pub ratio: String,
    pub target: String,
    /// `met`, `MISSED` or `n/a`.
    pub verdict: String,
    pub note: String,
}

pub fn verdict(met: bool) -> String {
    if met { "met".into() } else { "MISSED".into() }
}

/// A Markdown table (so it can be pasted into the README as is).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| what | product | peer (same run) | ratio | target | verdict |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.what, r.product, r.peer, r.ratio, r.target, r.verdict
        );
    }
    let notes: Vec<&Row> = rows.iter().filter(|r| !r.note.is_empty()).collect();
    if !notes.is_empty() {
        out.push('\n');
        for r in notes {
            let _ = writeln!(out, "- {}: {}", r.what, r.note);
        }
    }
    out
}

/// `nproc`, the CPU model, the kernel, memory and the load average when measuring.
pub fn machine() -> String {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .map(|l| l.trim_start_matches("MemTotal:").trim().to_owned())
        .unwrap_or_default();
    format!(
        "{nproc} CPUs ({model}), {mem} RAM, Linux {}, load average {}",
        kernel.trim(),
        load_average()
    )
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The version line of a tool, for the report.
pub fn tool_version(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            // `curl 7.88.1 (x86_64-pc-linux-gnu) libcurl/...`: the name and version are enough.
            let line = String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            line.split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| format!("{program}: not found"))
}

/// Fails, naming the Debian package, when a tool the benchmark needs is missing.
pub fn require_tool(program: &str, package: &str) -> anyhow::Result<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(program);
        if p.is_file() {
            return Ok(p);
        }
    }
    let direct = Path::new(program);
    if direct.is_absolute() && direct.is_file() {
        return Ok(direct.to_path_buf());
    }
    bail!("`{program}` is missing: install the Debian package `{package}`")
}

/// Reads a whole file once so that later runs read it from the page cache.
pub fn warm_page_cache(path: &Path) -> anyhow::Result<()> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    while std::io::Read::read(&mut f, &mut buf)? > 0 {}
    Ok(())
}

/// `1.5 GiB`-style sizes on the command line: a number with an optional K/M/G(iB) suffix.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let digits = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: f64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
    let k: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" | "kb" => 1024.0,
        "m" | "mib" | "mb" => 1024.0 * 1024.0,
        "g" | "gib" | "gb" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("bad size unit {other:?} in {s:?}"),
    };
    Ok((n * k) as u64)
}

pub fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}
