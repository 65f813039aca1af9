//! Log scanning: a synthetic Envoy log (realistic info/debug traffic, 0.1% failure entries of
//! every Envoy era), scanned by the product (the daemon's assembler fast path + classifier,
//! [`service_proxy_agent::diagnose::log_classifier::scan_reader`]) and by `rg -j1 --count` with
//! the same needles, in the same run.
//!
//! What is counted, precisely: **lines holding one of the prefilter's needles**
//! ([`INTERESTING`], searched as fixed strings): `rg --count -F -e N1 -e N2 ...` prints that,
//! and the product prints it as `matching_lines` while it also assembles the entries around
//! those lines and classifies them. The product's `failure_entries` (entries giving at least
//! one event) is checked against what the generator wrote.
//!
//! The noise comes from two sources: entries written by the real Envoy 1.40.0
//! (`tests/fixtures/logs/envoy-1.40.0-*.log`, those holding no needle) and per-request debug
//! sequences modelled on Envoy 1.40's `conn_manager_impl`/`router`/`pool` lines, with multi-line
//! header dumps. Failures and decoys (lines that hold a needle but are no failure, e.g. a
//! quoted message) come from `tests/fixtures/logs/corpus.txt`, every era.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use service_proxy_agent::diagnose::log_classifier::{classify, scan_reader};
use service_proxy_agent::observe::envoy_log::{
    DEFAULT_MAX_ENTRY_BYTES, EntryAssembler, EntryFilter, INTERESTING, LogEntry,
};

use crate::common::{self, Row, Stats};

/// Kinds of generated logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// An Envoy at debug level serving traffic (most lines per-request, header dumps over
    /// several lines), with its info lines.
    Mixed,
    /// An Envoy at info level: long, sparse single-line entries.
    Info,
}

impl Profile {
    pub fn parse(s: &str) -> anyhow::Result<Profile> {
        match s {
            "mixed" => Ok(Profile::Mixed),
            "info" => Ok(Profile::Info),
            _ => bail!("unknown log profile {s:?} (mixed, info)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Mixed => "mixed",
            Profile::Info => "info",
        }
    }
}

/// What the generator wrote, for checking the scanners' counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    pub bytes: u64,
    pub lines: u64,
    pub entries: u64,
    pub failure_entries: u64,
    pub decoy_entries: u64,
    pub matching_lines: u64,
}

/// Fraction of entries that are failures (the 0.1%); decoys are a quarter of that.
pub const FAILURE_RATE: f64 = 0.001;

/// One fixed entry (header line, its continuation lines, each ending in `\n`).
#[derive(Debug, Clone)]
struct Fixed {
    text: Vec<u8>,
    matching_lines: u64,
    lines: u64,
}

/// Lines of `text` holding a needle: plain `str::contains`, independent of the product's
/// Aho-Corasick search.
fn needle_lines(text: &[u8]) -> u64 {
    text.split(|&b| b == b'\n')
        .filter(|l| {
            let l = String::from_utf8_lossy(l);
            INTERESTING.iter().any(|n| l.contains(n))
        })
        .count() as u64
}

fn newlines(text: &[u8]) -> u64 {
    text.iter().filter(|&&b| b == b'\n').count() as u64
}

fn fixed(text: Vec<u8>) -> Fixed {
    Fixed {
        matching_lines: needle_lines(&text),
        lines: newlines(&text),
        text,
    }
}

/// Cuts `text` into entries with the product's assembler in "every entry" mode, keeping the
/// raw bytes of each (header line included).
fn raw_entries(text: &str) -> Vec<(LogEntry, Vec<u8>)> {
    let mut asm = EntryAssembler::new(EntryFilter::All, DEFAULT_MAX_ENTRY_BYTES);
    let mut out = Vec::new();
    asm.feed(text.as_bytes(), &mut out);
    asm.finish(&mut out);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    out.into_iter()
        .filter_map(|e| {
            let from = usize::try_from(e.first_line).ok()?.checked_sub(1)?;
            let to = from + usize::try_from(e.line_count).ok()?;
            let mut raw: Vec<u8> = lines.get(from..to)?.concat().into_bytes();
            if !raw.ends_with(b"\n") {
                raw.push(b'\n');
            }
            Some((e, raw))
        })
        .collect()
}

/// The pools the generator draws from.
struct Pools {
    failures: Vec<Fixed>,
    decoys: Vec<Fixed>,
    real_debug: Vec<Fixed>,
    real_info: Vec<Fixed>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/logs")
}

fn load_pools() -> anyhow::Result<Pools> {
    let dir = fixtures_dir();
    let mut pools = Pools {
        failures: Vec::new(),
        decoys: Vec::new(),
        real_debug: Vec::new(),
        real_info: Vec::new(),
    };
    // Failures and decoys: the log text of every case of the corpus.
    let corpus = std::fs::read_to_string(dir.join("corpus.txt"))
        .with_context(|| format!("read {}/corpus.txt", dir.display()))?;
    let mut case_text = String::new();
    let flush = |text: &mut String, pools: &mut Pools| {
        for (entry, raw) in raw_entries(text) {
            if entry.time.is_none() || entry.level.is_none() {
                continue;
            }
            let f = fixed(raw);
            if !classify(&entry).is_empty() {
                pools.failures.push(f);
            } else if f.matching_lines > 0 {
                pools.decoys.push(f);
            }
        }
        text.clear();
    };
    for line in corpus.lines() {
        if line.starts_with('@') || line.starts_with('#') {
            if line.starts_with("@case") || line.starts_with("@era") {
                flush(&mut case_text, &mut pools);
            }
            continue;
        }
        case_text.push_str(line);
        case_text.push('\n');
    }
    flush(&mut case_text, &mut pools);
    // Noise written by the real Envoy 1.40.0.
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("envoy-1.40.0-") && n.ends_with(".log"))
        })
        .collect();
    names.sort();
    for path in names {
        let text = String::from_utf8_lossy(&std::fs::read(&path)?).into_owned();
        for (entry, raw) in raw_entries(&text) {
            if entry.time.is_none() {
                continue;
            }
            let f = fixed(raw);
            if f.matching_lines > 0 || !classify(&entry).is_empty() {
                continue;
            }
            match entry.level {
                Some(service_proxy_agent::observe::envoy_log::LogLevel::Debug) => {
                    pools.real_debug.push(f)
                }
                Some(service_proxy_agent::observe::envoy_log::LogLevel::Info) => {
                    pools.real_info.push(f)
                }
                _ => {}
            }
        }
    }
    if pools.failures.len() < 20 || pools.real_debug.is_empty() || pools.real_info.is_empty() {
        bail!(
            "the log fixtures gave too few templates ({} failures, {} debug, {} info)",
            pools.failures.len(),
            pools.real_debug.len(),
            pools.real_info.len()
        );
    }
    Ok(pools)
}

/// A per-request sequence of debug entries, as Envoy 1.40 writes them for one proxied HTTP/1.1
/// request (`@C` downstream connection, `@U` upstream connection, `@S` stream id, `@N` a
/// number, `@I` the client address, `@R` a request id, `@L` a length, `@M` milliseconds).
const REQUEST: &[&str] = &[
    "[debug][conn_handler] [source/common/listener_manager/active_tcp_listener.cc:160] [Tags: \"ConnectionId\":\"@C\"] new connection from @I",
    "[debug][http] [source/common/http/conn_manager_impl.cc:393] [Tags: \"ConnectionId\":\"@C\"] new stream",
    "[debug][http] [source/common/http/conn_manager_impl.cc:1183] [Tags: \"ConnectionId\":\"@C\",\"StreamId\":\"@S\"] request headers complete (end_stream=true):\n':authority', 'orders.prod.svc:8080'\n':path', '/api/v1/orders/@N'\n':method', 'GET'\n'user-agent', 'Go-http-client/1.1'\n'accept-encoding', 'gzip'\n\n",
    "[debug][http] [source/common/http/conn_manager_impl.cc:1166] [Tags: \"ConnectionId\":\"@C\",\"StreamId\":\"@S\"] request end stream timestamp recorded",
    "[debug][connection] [./source/common/network/connection_impl.h:98] [Tags: \"ConnectionId\":\"@C\"] current connecting state: false",
    "[debug][router] [source/common/router/router.cc:527] [Tags: \"ConnectionId\":\"@C\",\"StreamId\":\"@S\"] cluster 'cloud-internal-istio:cloud_mp_123456789012_8812365513431234' match for URL '/api/v1/orders/@N'",
    "[debug][router] [source/common/router/router.cc:756] [Tags: \"ConnectionId\":\"@C\",\"StreamId\":\"@S\"] router decoding headers:\n':authority', 'orders.prod.svc:8080'\n':path', '/api/v1/orders/@N'\n':method', 'GET'\n':scheme', 'http'\n'user-agent', 'Go-http-client/1.1'\n'accept-encoding', 'gzip'\n'x-forwarded-proto', 'http'\n'x-request-id', '@R'\n'x-envoy-expected-rq-timeout-ms', '15000'\n\n",
    "[debug][pool] [source/common/http/conn_pool_base.cc:78] queueing stream due to no available connections (ready=0 busy=0 connecting=0)",
    "[debug][pool] [source/common/conn_pool/conn_pool_base.cc:291] trying to create new connection",
    "[debug][pool] [source/common/conn_pool/conn_pool_base.cc:145] creating a new connection (connecting=0)",
    "[debug][connection] [source/common/network/connection_impl.cc:1017] [Tags: \"ConnectionId\":\"@U\"] connecting to 10.128.0.17:8080",
    "[debug][connection] [source/common/network/connection_impl.cc:1036] [Tags: \"ConnectionId\":\"@U\"] connection in progress",
    "[debug][connection] [source/common/network/connection_impl.cc:746] [Tags: \"ConnectionId\":\"@U\"] connected",
    "[debug][client] [source/common/http/codec_client.cc:88] [Tags: \"ConnectionId\":\"@U\"] connected",
    "[debug][pool] [source/common/conn_pool/conn_pool_base.cc:328] [Tags: \"ConnectionId\":\"@U\"] attaching to next stream",
    "[debug][pool] [source/common/conn_pool/conn_pool_base.cc:182] [Tags: \"ConnectionId\":\"@U\"] creating stream",
    "[debug][router] [source/common/router/upstream_request.cc:593] [Tags: \"ConnectionId\":\"@C\",\"StreamId\":\"@S\"] pool ready",
    "[debug][client] [source/common/http/codec_client.cc:141] [Tags: \"ConnectionId\":\"@U\"] encode complete",
    "[debug][router] [source/common/router/router.cc:1559] [Tags: \"ConnectionId\":\"@C\",\"StreamId\":\"@S\"] upstream headers complete: end_stream=false",
    "[debug][http] [source/common/http/conn_manager_impl.cc:1863] [Tags: \"ConnectionId\":\"@C\",\"StreamId\":\"@S\"] encoding headers via codec (end_stream=false):\n':status', '200'\n'content-type', 'application/json'\n'content-length', '@L'\n'date', 'Sun, 22 Nov 2026 02:38:39 GMT'\n'server', 'envoy'\n'x-envoy-upstream-service-time', '@M'\n\n",
    "[debug][client] [source/common/http/codec_client.cc:128] [Tags: \"ConnectionId\":\"@U\"] response complete",
    "[debug][pool] [source/common/http/http1/conn_pool.cc:53] [Tags: \"ConnectionId\":\"@U\"] response complete",
    "[debug][pool] [source/common/conn_pool/conn_pool_base.cc:215] [Tags: \"ConnectionId\":\"@U\"] destroying stream: 0 remaining",
    "[debug][connection] [source/common/network/connection_impl.cc:714] [Tags: \"ConnectionId\":\"@C\"] remote close",
    "[debug][connection] [source/common/network/connection_impl.cc:278] [Tags: \"ConnectionId\":\"@C\"] closing socket: 0",
    "[debug][conn_handler] [source/common/listener_manager/active_stream_listener_base.cc:136] [Tags: \"ConnectionId\":\"@C\"] adding to cleanup list",
];

/// Info lines of a long-running Envoy 1.40 under a control plane (`@N` a number).
const INFO: &[&str] = &[
    "[info][upstream] [source/common/upstream/cds_api_helper.cc:32] cds: add @N cluster(s), remove 2 cluster(s)",
    "[info][upstream] [source/common/upstream/cds_api_helper.cc:71] cds: added/updated 3 cluster(s), skipped @N unmodified cluster(s)",
    "[info][upstream] [source/server/lds_api.cc:82] lds: add/update listener 'TRAFFICDIRECTOR_INTERCEPTION_LISTENER'",
    "[info][config] [source/common/listener_manager/listener_manager_impl.cc:930] all dependencies initialized. starting workers",
    "[info][upstream] [source/common/upstream/load_stats_reporter_impl.cc:55] Load reporter stats stream/connection will retry in 5000 ms.",
    "[info][upstream] [source/extensions/clusters/eds/eds.cc:418] EDS hosts changed for cluster: cloud-internal-istio:cloud_mp_123456789012_@N (3) priority 0",
    "[info][main] [source/server/drain_manager_impl.cc:208] shutting down parent after drain",
    "[info][runtime] [source/common/runtime/runtime_impl.cc:567] RTDS has finished initialization",
    "[info][dns] [source/extensions/network/dns_resolver/cares/dns_impl.cc:310] dns resolution for metadata.google.internal completed with status 0 after @M ms",
    "[info][admin] [source/server/admin/admin_filter.cc:66] request complete: path: /stats?filter=%5Econtrol_plane%5C.connected_state%24",
];

/// A compiled template: literal pieces and placeholders.
#[derive(Debug, Clone)]
enum Piece {
    Lit(Vec<u8>),
    Var(u8),
}

fn compile(template: &str) -> anyhow::Result<(Vec<Piece>, u64)> {
    let mut text = template.to_owned();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    if needle_lines(text.as_bytes()) > 0 {
        bail!("noise template holds a needle: {template}");
    }
    let lines = newlines(text.as_bytes());
    let mut pieces = Vec::new();
    let mut lit = Vec::new();
    let mut bytes = text.bytes().peekable();
    while let Some(b) = bytes.next() {
        if b == b'@'
            && let Some(&k) = bytes.peek()
            && k.is_ascii_uppercase()
        {
            bytes.next();
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Var(k));
            continue;
        }
        lit.push(b);
    }
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok((pieces, lines))
}

/// Writes a `[YYYY-MM-DD HH:MM:SS.mmm][tid]` header for `ms` milliseconds after midnight of day
/// `day` of November 2026.
fn header(out: &mut Vec<u8>, day: u64, ms: u64, tid: u32) {
    let (h, m, s, f) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let _ = write!(
        out,
        "[2026-11-{:02} {h:02}:{m:02}:{s:02}.{f:03}][{tid}]",
        1 + day % 30
    );
}

struct Generator {
    rng: fastrand::Rng,
    day: u64,
    ms: u64,
    conn: u64,
    expected: Expected,
    buf: Vec<u8>,
}

impl Generator {
    fn advance(&mut self) {
        self.ms += self.rng.u64(0..3);
        if self.ms >= 86_400_000 {
            self.ms -= 86_400_000;
            self.day += 1;
        }
    }

    fn templated(&mut self, pieces: &[Piece], lines: u64, vars: &Vars) {
        self.advance();
        header(&mut self.buf, self.day, self.ms, vars.tid);
        for p in pieces {
            match p {
                Piece::Lit(l) => self.buf.extend_from_slice(l),
                Piece::Var(k) => {
                    let _ = match k {
                        b'C' => write!(self.buf, "{}", vars.conn),
                        b'U' => write!(self.buf, "{}", vars.conn + 1),
                        b'S' => write!(self.buf, "{}", vars.stream),
                        b'N' => write!(self.buf, "{}", vars.n),
                        b'I' => write!(
                            self.buf,
                            "10.128.{}.{}:{}",
                            vars.n % 250,
                            vars.conn % 250,
                            30000 + vars.n % 30000
                        ),
                        b'R' => write!(
                            self.buf,
                            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                            vars.stream as u32,
                            vars.n & 0xffff,
                            vars.conn & 0xfff,
                            vars.n & 0xfff,
                            vars.stream >> 16
                        ),
                        b'L' => write!(self.buf, "{}", 100 + vars.n % 4000),
                        b'M' => write!(self.buf, "{}", 1 + vars.n % 40),
                        _ => write!(self.buf, "?"),
                    };
                }
            }
        }
        self.expected.lines += lines;
        self.expected.entries += 1;
    }

    fn fixed(&mut self, f: &Fixed) {
        self.buf.extend_from_slice(&f.text);
        self.expected.lines += f.lines;
        self.expected.matching_lines += f.matching_lines;
        self.expected.entries += 1;
    }
}

struct Vars {
    conn: u64,
    stream: u64,
    n: u64,
    tid: u32,
}

/// Writes about `size` bytes of `profile` log to `path` (whole entries; stops at the first
/// entry boundary past `size`) and returns what it wrote.
pub fn generate(path: &Path, size: u64, profile: Profile, seed: u64) -> anyhow::Result<Expected> {
    let pools = load_pools()?;
    let request: Vec<(Vec<Piece>, u64)> = REQUEST
        .iter()
        .map(|t| compile(t))
        .collect::<anyhow::Result<_>>()?;
    let info: Vec<(Vec<Piece>, u64)> = INFO
        .iter()
        .map(|t| compile(t))
        .collect::<anyhow::Result<_>>()?;
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut g = Generator {
        rng: fastrand::Rng::with_seed(seed),
        day: 21,
        ms: 2 * 3_600_000,
        conn: 1000,
        expected: Expected {
            bytes: 0,
            lines: 0,
            entries: 0,
            failure_entries: 0,
            decoy_entries: 0,
            matching_lines: 0,
        },
        buf: Vec::with_capacity(1 << 16),
    };
    // The request being written, entry by entry, so that failures fall between any two entries.
    let mut request_at: Option<(usize, Vars)> = None;
    while g.expected.bytes < size {
        // One entry: a failure or a decoy now and then, else the profile's noise.
        let roll = g.rng.f64();
        if roll < FAILURE_RATE {
            let f = &pools.failures[g.rng.usize(..pools.failures.len())];
            g.fixed(f);
            g.expected.failure_entries += 1;
        } else if roll < FAILURE_RATE * 1.25 && !pools.decoys.is_empty() {
            let f = &pools.decoys[g.rng.usize(..pools.decoys.len())];
            g.fixed(f);
            g.expected.decoy_entries += 1;
        } else if let Some((i, vars)) = request_at.take() {
            let (p, l) = &request[i];
            g.templated(p, *l, &vars);
            if i + 1 < request.len() {
                request_at = Some((i + 1, vars));
            }
        } else {
            match profile {
                Profile::Mixed => {
                    let pick = g.rng.u32(0..100);
                    if pick < 20 {
                        // A whole request, 26 entries from here on.
                        g.conn += 2;
                        let vars = Vars {
                            conn: g.conn,
                            stream: g.rng.u64(1 << 60..u64::MAX >> 1),
                            n: g.rng.u64(0..1_000_000),
                            tid: 25088 + g.rng.u32(0..4),
                        };
                        let (p, l) = &request[0];
                        g.templated(p, *l, &vars);
                        request_at = Some((1, vars));
                    } else if pick < 70 {
                        let f = &pools.real_debug[g.rng.usize(..pools.real_debug.len())];
                        g.fixed(f);
                    } else if pick < 90 {
                        let (p, l) = &info[g.rng.usize(..info.len())];
                        let vars = Vars {
                            conn: 0,
                            stream: 0,
                            n: g.rng.u64(0..100_000),
                            tid: 25087,
                        };
                        g.templated(p, *l, &vars);
                    } else {
                        let f = &pools.real_info[g.rng.usize(..pools.real_info.len())];
                        g.fixed(f);
                    }
                }
                Profile::Info => {
                    if g.rng.bool() {
                        let (p, l) = &info[g.rng.usize(..info.len())];
                        let vars = Vars {
                            conn: 0,
                            stream: 0,
                            n: g.rng.u64(0..100_000),
                            tid: 25087,
                        };
                        g.templated(p, *l, &vars);
                    } else {
                        let f = &pools.real_info[g.rng.usize(..pools.real_info.len())];
                        g.fixed(f);
                    }
                }
            }
        }
        g.expected.bytes += g.buf.len() as u64;
        w.write_all(&g.buf)?;
        g.buf.clear();
    }
    w.flush()?;
    Ok(g.expected)
}

/// The peer's command line: `rg -j1 --count --no-config -F -e N1 ... FILE`.
pub fn rg_command(file: &Path) -> Command {
    let mut cmd = Command::new("rg");
    cmd.args(["-j1", "--count", "--no-config", "-F"]);
    for n in INTERESTING {
        cmd.arg("-e").arg(n);
    }
    cmd.arg(file);
    cmd
}

/// The product's side, run as its own process: scan `file`, print the counts as JSON.
pub fn product_main(file: &Path, buf_size: usize) -> anyhow::Result<()> {
    let f = std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
    let summary = scan_reader(f, buf_size)?;
    let json = serde_json::json!({
        "bytes": summary.bytes,
        "lines": summary.lines,
        "matching_lines": summary.matching_lines,
        "candidate_entries": summary.candidate_entries,
        "failure_entries": summary.failure_entries,
        "events": summary.events(),
    });
    println!("{json}");
    Ok(())
}

/// Read size of the product's scan: large enough to amortise the per-chunk work, small enough
/// to stay in the CPU's L2 cache between the read and the search.
pub const DEFAULT_READ_SIZE: usize = 256 << 10;

/// Options of one log-scanning benchmark.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub size: u64,
    pub profile: Profile,
    pub runs: usize,
    pub read_size: usize,
}

/// Generates the workload (or reuses one generated with the same parameters), then runs product
/// and peer alternately `runs` times each, checks the counts and returns the table row.
pub fn bench(opts: &Options, self_exe: &Path) -> anyhow::Result<Row> {
    common::require_tool("rg", "ripgrep")?;
    std::fs::create_dir_all(&opts.dir)?;
    let name = format!("envoy-{}-{}.log", opts.profile.name(), opts.size);
    let file = opts.dir.join(&name);
    let meta = opts.dir.join(format!("{name}.json"));
    let expected: Expected = match std::fs::read(&meta)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(e) if file.is_file() => e,
        _ => {
            eprintln!(
                "  generating {} ({} profile)...",
                file.display(),
                opts.profile.name()
            );
            let e = generate(&file, opts.size, opts.profile, 7)?;
            std::fs::write(&meta, serde_json::to_vec(&e)?)?;
            e
        }
    };
    common::warm_page_cache(&file)?;
    let gib = expected.bytes as f64 / f64::from(1u32 << 30);
    let timeout = Duration::from_secs(600);
    let mut product_tp = Vec::new();
    let mut peer_tp = Vec::new();
    let mut product_rss = Vec::new();
    let mut product_cpu = Vec::new();
    let mut counts = None;
    for run in 0..opts.runs {
        let out = common::run_measured(
            Command::new(self_exe)
                .arg("log-scan-product")
                .arg(&file)
                .arg("--read-size")
                .arg(opts.read_size.to_string()),
            timeout,
        )?;
        let p: serde_json::Value = serde_json::from_str(out.stdout.trim())
            .with_context(|| format!("product output {:?}", out.stdout))?;
        let peer = common::run_measured(&mut rg_command(&file), timeout)?;
        let rg_count: u64 = peer
            .stdout
            .trim()
            .parse()
            .with_context(|| format!("rg output {:?}", peer.stdout))?;
        let product_matching = p["matching_lines"].as_u64().unwrap_or(u64::MAX);
        let product_failures = p["failure_entries"].as_u64().unwrap_or(u64::MAX);
        let product_lines = p["lines"].as_u64().unwrap_or(u64::MAX);
        if product_matching != rg_count
            || rg_count != expected.matching_lines
            || product_failures != expected.failure_entries
            || product_lines != expected.lines
        {
            bail!(
                "counts differ on {}: product matching lines {product_matching}, rg {rg_count}, \
                 generator {}; product failure entries {product_failures}, generator {}; \
                 product lines {product_lines}, generator {}",
                file.display(),
                expected.matching_lines,
                expected.failure_entries,
                expected.lines
            );
        }
        counts = Some((rg_count, product_failures));
        product_tp.push(gib / out.measurement.wall.as_secs_f64());
        peer_tp.push(gib / peer.measurement.wall.as_secs_f64());
        product_rss.push(out.measurement.max_rss_kib as f64 / 1024.0);
        product_cpu.push(out.measurement.user_secs + out.measurement.sys_secs);
        eprintln!(
            "  run {}: product {:.2} GiB/s ({:.1} MiB RSS), rg {:.2} GiB/s ({:.1} MiB RSS)",
            run + 1,
            gib / out.measurement.wall.as_secs_f64(),
            out.measurement.max_rss_kib as f64 / 1024.0,
            gib / peer.measurement.wall.as_secs_f64(),
            peer.measurement.max_rss_kib as f64 / 1024.0
        );
    }
    let p = Stats::of(&product_tp);
    let r = Stats::of(&peer_tp);
    let ratios: Vec<f64> = product_tp
        .iter()
        .zip(&peer_tp)
        .map(|(a, b)| a / b)
        .collect();
    let ratio = Stats::of(&ratios);
    let (matching, failures) = counts.unwrap_or_default();
    Ok(Row {
        what: format!(
            "log scanning, {} {} log",
            if gib >= 1.0 {
                format!("{gib:.2} GiB")
            } else {
                format!("{:.0} MiB", gib * 1024.0)
            },
            opts.profile.name()
        ),
        product: format!("{} GiB/s", p.show(2)),
        peer: format!(
            "{} GiB/s (`rg -j1 --count -F`, {} needles)",
            r.show(2),
            INTERESTING.len()
        ),
        ratio: format!("{}×", ratio.show(2)),
        target: "≥ 0.5×, identical counts".into(),
        verdict: common::verdict(ratio.median >= 0.5),
        note: format!(
            "{} lines, {matching} matching lines (product = rg = generator), {failures} failure entries classified (= generator); product peak RSS {} MiB, CPU (user+sys) {} s; {} runs each, alternating, file in page cache",
            expected.lines,
            Stats::of(&product_rss).show(1),
            Stats::of(&product_cpu).show(2),
            opts.runs
        ),
    })
}
