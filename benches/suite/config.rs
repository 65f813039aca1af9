//! Config analysis at scale: a stand-in Envoy admin on loopback serves one real Envoy 1.40.0
//! config dump scaled to 10,000 VIP filter chains and 5,000 clusters (with their route
//! configurations), and the product and `curl … | jq` extract the same things from it: the
//! service VIPs of the dynamic listeners and the listeners' error states.
//!
//! The seed is captured from the real Envoy by `suite capture-config-seed` (files
//! `tests/bench/envoy-1.40.0-*.json`): the full `/config_dump`, and the answers to the queries
//! the stand-in must imitate (`?resource=dynamic_listeners`, with and without `mask=`). The
//! stand-in derives those answers from the full dump by the same rule Envoy follows, and that
//! rule is checked against the captured answers (`check_seed`).
//!
//! Both sides print one line per fact, `vip ADDR/LEN` and `error NAME FIRST-LINE-OF-DETAILS`;
//! the harness compares the sorted lines.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::common::{self, Row, Stats};

pub const LISTENERS_DUMP: &str = "type.googleapis.com/envoy.admin.v3.ListenersConfigDump";
pub const CLUSTERS_DUMP: &str = "type.googleapis.com/envoy.admin.v3.ClustersConfigDump";
pub const ROUTES_DUMP: &str = "type.googleapis.com/envoy.admin.v3.RoutesConfigDump";
const DYNAMIC_LISTENER: &str =
    "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.DynamicListener";

/// The query the product sends (the one `AdminClient::dynamic_listeners` uses).
pub const PRODUCT_QUERY: &str = service_proxy_agent::observe::envoy_admin::PATH_DYNAMIC_LISTENERS;

/// The jq program of the peer: the VIPs of the dynamic listeners' active filter chains
/// (inbound chains carry no prefix range) and their error states.
pub const JQ_FILTER: &str = r#"(.configs[] | select(."@type" == "type.googleapis.com/envoy.admin.v3.ListenersConfigDump") | .dynamic_listeners[]?) // (.configs[]? | select(."@type" == "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.DynamicListener"))
| ((.active_state.listener.filter_chains[]?.filter_chain_match.prefix_ranges[]? | "vip \(.address_prefix)/\(.prefix_len)"),
   (select(.error_state) | "error \(.name // "-") \(.error_state.details // "" | split("\n")[0])"))"#;

pub fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bench")
}

pub const SEED_FULL: &str = "envoy-1.40.0-config_dump.json";
pub const SEED_LISTENERS: &str = "envoy-1.40.0-config_dump-dynamic_listeners.json";
pub const SEED_MASKED: &str = "envoy-1.40.0-config_dump-dynamic_listeners-masked.json";
/// The mask the seed was captured with (top-level fields of each dynamic listener).
pub const SEED_MASK: &str = "name,error_state";

// ---------------------------------------------------------------------------------------------
// What Envoy answers, derived from a full dump
// ---------------------------------------------------------------------------------------------

/// Which `@type` element of the full dump a `resource=` value lives in, and the type of each
/// of its elements.
fn resource_of(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "dynamic_listeners" => (LISTENERS_DUMP, DYNAMIC_LISTENER),
        "static_listeners" => (
            LISTENERS_DUMP,
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.StaticListener",
        ),
        "dynamic_active_clusters" | "dynamic_warming_clusters" => (
            CLUSTERS_DUMP,
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.DynamicCluster",
        ),
        "static_clusters" => (
            CLUSTERS_DUMP,
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster",
        ),
        "dynamic_route_configs" => (
            ROUTES_DUMP,
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump.DynamicRouteConfig",
        ),
        _ => return None,
    })
}

/// Fields holding a `google.protobuf.Any`: Envoy 1.40 answers 400 to a mask reaching into them.
const ANY_FIELDS: &[&str] = &[
    "listener",
    "cluster",
    "route_config",
    "failed_configuration",
];

/// Envoy's answer to `/config_dump?resource=R[&mask=M]` from the full dump: `Ok(body)` or
/// `Err((status, body))`.
pub fn answer(
    full: &Value,
    resource: Option<&str>,
    mask: Option<&str>,
) -> Result<Value, (u16, String)> {
    let configs = full["configs"].as_array().cloned().unwrap_or_default();
    let mask: Option<Vec<Vec<&str>>> =
        mask.map(|m| m.split(',').map(|p| p.split('.').collect()).collect());
    if let Some(paths) = &mask
        && paths.iter().any(|p| {
            p.iter()
                .take(p.len().saturating_sub(1))
                .any(|s| ANY_FIELDS.contains(s))
        })
    {
        return Err((400, "FieldMask could not be applied".into()));
    }
    let apply = |v: &Value| -> Value {
        match &mask {
            None => v.clone(),
            Some(paths) => masked(v, paths),
        }
    };
    let Some(resource) = resource else {
        return Ok(json!({ "configs": configs.iter().map(apply).collect::<Vec<_>>() }));
    };
    let Some((dump_type, element_type)) = resource_of(resource) else {
        return Err((404, format!("{resource} not found in config dump")));
    };
    let mut out = Vec::new();
    for c in &configs {
        if c["@type"] != dump_type {
            continue;
        }
        for e in c[resource].as_array().into_iter().flatten() {
            let mut m = Map::new();
            m.insert("@type".into(), Value::String(element_type.into()));
            if let Value::Object(fields) = apply(e) {
                m.extend(fields);
            }
            out.push(Value::Object(m));
        }
    }
    if out.is_empty() {
        return Ok(json!({}));
    }
    Ok(json!({ "configs": out }))
}

fn masked(v: &Value, paths: &[Vec<&str>]) -> Value {
    let Value::Object(obj) = v else {
        return v.clone();
    };
    let mut out = Map::new();
    for (k, val) in obj {
        let sub: Vec<Vec<&str>> = paths
            .iter()
            .filter(|p| p.first() == Some(&k.as_str()))
            .map(|p| p[1..].to_vec())
            .collect();
        if sub.is_empty() {
            continue;
        }
        if sub.iter().any(Vec::is_empty) {
            out.insert(k.clone(), val.clone());
        } else {
            out.insert(k.clone(), masked(val, &sub));
        }
    }
    Value::Object(out)
}

/// Envoy prints its JSON with one space of indentation per level.
pub fn envoy_json(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    let _ = v.serialize(&mut ser);
    out.push(b'\n');
    out
}

/// Checks that [`answer`] gives, for the seed, what the real Envoy gave.
pub fn check_seed(dir: &Path) -> anyhow::Result<()> {
    let read = |n: &str| -> anyhow::Result<Value> {
        let p = dir.join(n);
        serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("read {}", p.display()))?)
            .with_context(|| format!("parse {}", p.display()))
    };
    let full = read(SEED_FULL)?;
    let listeners = read(SEED_LISTENERS)?;
    let masked = read(SEED_MASKED)?;
    let ours =
        answer(&full, Some("dynamic_listeners"), None).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if ours != listeners {
        bail!("the stand-in's ?resource=dynamic_listeners differs from the real Envoy's answer");
    }
    let ours = answer(&full, Some("dynamic_listeners"), Some(SEED_MASK))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if ours != masked {
        bail!("the stand-in's masked answer differs from the real Envoy's answer");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scaling the seed
// ---------------------------------------------------------------------------------------------

/// What `generate` wrote.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Generated {
    pub vips: usize,
    pub clusters: usize,
    pub full_bytes: u64,
    pub product_bytes: u64,
    /// `?resource=dynamic_listeners&mask=name,active_state,warming_state,error_state`: the
    /// most a mask can cut while keeping what the product reads.
    pub masked_bytes: u64,
    /// The facts both sides must print, sorted.
    pub expected: Vec<String>,
}

/// The `n`-th VIP: 10.0.0.0/8 and up, one address each.
fn vip(n: usize) -> String {
    let n = n as u32 + 256;
    format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
}

/// Replaces every occurrence of `from` by `to` in the strings of `v`.
fn rename(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::String(s) if s.contains(from) => *s = s.replace(from, to),
        Value::Array(a) => a.iter_mut().for_each(|x| rename(x, from, to)),
        Value::Object(o) => o.values_mut().for_each(|x| rename(x, from, to)),
        _ => {}
    }
}

/// Scales the seed's full dump: the interception listener gets `vips` outbound filter chains
/// (the seed's first outbound chain, re-addressed; its inbound chains are kept), the dynamic
/// clusters and route configurations become `clusters` each (VIP `i` routes to cluster
/// `i % clusters`); everything else (bootstrap, error states) stays as Envoy wrote it.
pub fn scale(seed: &Value, vips: usize, clusters: usize) -> anyhow::Result<Value> {
    let mut full = seed.clone();
    let configs = full["configs"]
        .as_array_mut()
        .context("the seed has no configs")?;
    for c in configs.iter_mut() {
        let t = c["@type"].as_str().unwrap_or_default().to_owned();
        if t == LISTENERS_DUMP {
            let dls = c["dynamic_listeners"]
                .as_array_mut()
                .context("seed: no dynamic_listeners")?;
            let il = dls
                .iter_mut()
                .find(|l| l["name"] == "TRAFFICDIRECTOR_INTERCEPTION_LISTENER")
                .context("seed: no interception listener")?;
            let chains = il["active_state"]["listener"]["filter_chains"]
                .as_array_mut()
                .context("seed: no filter chains")?;
            let (outbound, inbound): (Vec<Value>, Vec<Value>) = chains
                .drain(..)
                .partition(|ch| ch["filter_chain_match"]["prefix_ranges"].is_array());
            let template = outbound.first().context("seed: no outbound chain")?.clone();
            let old_ip = template["filter_chain_match"]["prefix_ranges"][0]["address_prefix"]
                .as_str()
                .context("seed: no address_prefix")?
                .to_owned();
            let old_route = route_name_of(&template).context("seed: no rds name")?;
            for i in 0..vips {
                let mut ch = template.clone();
                let ip = vip(i);
                rename(&mut ch, &old_ip, &ip);
                rename(
                    &mut ch,
                    &old_route,
                    &format!("URL_MAP/123.service-{}", i % clusters.max(1)),
                );
                ch["filter_chain_match"]["prefix_ranges"][0]["address_prefix"] = json!(ip);
                chains.push(ch);
            }
            chains.extend(inbound);
        } else if t == CLUSTERS_DUMP {
            let dyn_clusters = c["dynamic_active_clusters"]
                .as_array_mut()
                .context("seed: no dynamic_active_clusters")?;
            let template = dyn_clusters
                .first()
                .context("seed: no dynamic cluster")?
                .clone();
            let old = template["cluster"]["name"]
                .as_str()
                .context("seed: cluster without name")?
                .to_owned();
            dyn_clusters.clear();
            for i in 0..clusters {
                let mut cl = template.clone();
                rename(&mut cl, &old, &format!("service-{i}"));
                dyn_clusters.push(cl);
            }
        } else if t == ROUTES_DUMP {
            let routes = c["dynamic_route_configs"]
                .as_array_mut()
                .context("seed: no dynamic_route_configs")?;
            let template = routes
                .iter()
                .find(|r| {
                    r["route_config"]["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("URL_MAP/"))
                })
                .context("seed: no URL_MAP route config")?
                .clone();
            let old = template["route_config"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let old_cluster = first_cluster_of(&template).unwrap_or_default();
            routes.retain(|r| {
                !r["route_config"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("URL_MAP/"))
            });
            for i in 0..clusters {
                let mut r = template.clone();
                rename(&mut r, &old, &format!("URL_MAP/123.service-{i}"));
                if !old_cluster.is_empty() {
                    rename(&mut r, &old_cluster, &format!("service-{i}"));
                }
                routes.push(r);
            }
        }
    }
    Ok(full)
}

fn route_name_of(chain: &Value) -> Option<String> {
    chain["filters"].as_array()?.iter().find_map(|f| {
        f["typed_config"]["rds"]["route_config_name"]
            .as_str()
            .map(str::to_owned)
    })
}

fn first_cluster_of(route: &Value) -> Option<String> {
    route["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"]
        .as_str()
        .map(str::to_owned)
}

/// The facts of a dump as both sides print them, sorted.
pub fn facts(full: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for c in full["configs"].as_array().into_iter().flatten() {
        if c["@type"] != LISTENERS_DUMP {
            continue;
        }
        for l in c["dynamic_listeners"].as_array().into_iter().flatten() {
            for ch in l["active_state"]["listener"]["filter_chains"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for r in ch["filter_chain_match"]["prefix_ranges"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    out.push(format!(
                        "vip {}/{}",
                        r["address_prefix"].as_str().unwrap_or_default(),
                        r["prefix_len"]
                    ));
                }
            }
            if l.get("error_state").is_some() {
                let details = l["error_state"]["details"].as_str().unwrap_or_default();
                out.push(format!(
                    "error {} {}",
                    l["name"].as_str().unwrap_or("-"),
                    details.split('\n').next().unwrap_or_default()
                ));
            }
        }
    }
    out.sort();
    out
}

/// Writes, into `dir`, the scaled full dump and every answer the stand-in serves, each as
/// `<percent-free query>.json` listed in `index.json`.
pub fn generate(dir: &Path, vips: usize, clusters: usize) -> anyhow::Result<Generated> {
    let seed_path = seed_dir().join(SEED_FULL);
    let seed: Value = serde_json::from_slice(
        &std::fs::read(&seed_path).with_context(|| format!("read {}", seed_path.display()))?,
    )?;
    let full = scale(&seed, vips, clusters)?;
    std::fs::create_dir_all(dir)?;
    let mut index = BTreeMap::new();
    let mut put = |query: &str, body: Vec<u8>| -> anyhow::Result<u64> {
        let file = format!("answer-{}.json", index.len());
        std::fs::write(dir.join(&file), &body)?;
        index.insert(query.to_owned(), file);
        Ok(body.len() as u64)
    };
    let full_bytes = put("/config_dump", envoy_json(&full))?;
    let product_bytes = put(
        PRODUCT_QUERY,
        envoy_json(
            &answer(&full, Some("dynamic_listeners"), None)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        ),
    )?;
    let mask = "name,active_state,warming_state,error_state";
    let masked_bytes = put(
        &format!("/config_dump?resource=dynamic_listeners&mask={mask}"),
        envoy_json(
            &answer(&full, Some("dynamic_listeners"), Some(mask))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        ),
    )?;
    std::fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
    let g = Generated {
        vips,
        clusters,
        full_bytes,
        product_bytes,
        masked_bytes,
        expected: facts(&full),
    };
    std::fs::write(dir.join("generated.json"), serde_json::to_vec(&g)?)?;
    Ok(g)
}

// ---------------------------------------------------------------------------------------------
// The stand-in admin
// ---------------------------------------------------------------------------------------------

/// Serves the answers of a `generate` directory over HTTP/1.1 (keep-alive, Content-Length),
/// one thread per connection; other queries get 404 as from Envoy. Prints its address.
pub fn standin_main(dir: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!("the stand-in admin only listens on loopback, not {addr}");
    }
    let index: BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let mut answers = BTreeMap::new();
    for (q, f) in index {
        answers.insert(q, std::fs::read(dir.join(f))?);
    }
    let answers = Arc::new(answers);
    let listener = TcpListener::bind(addr)?;
    println!("admin-standin listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let answers = Arc::clone(&answers);
        std::thread::spawn(move || {
            let _ = serve(conn, &answers);
        });
    }
    Ok(())
}

fn serve(conn: TcpStream, answers: &BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut close = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let lower = h.to_ascii_lowercase();
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        let (status, body): (&str, &[u8]) = match answers.get(&target) {
            Some(b) => ("200 OK", b),
            None => ("404 Not Found", b"not found\n"),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        conn.write_all(head.as_bytes())?;
        conn.write_all(body)?;
        if close {
            return Ok(());
        }
    }
}

/// A running stand-in, killed on drop.
pub struct Standin {
    child: Child,
    pub addr: SocketAddr,
}

impl Standin {
    pub fn start(self_exe: &Path, dir: &Path) -> anyhow::Result<Standin> {
        let mut child = Command::new(self_exe)
            .arg("admin-standin")
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .context("start the stand-in admin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("stand-in said {line:?}"))?;
        Ok(Standin { child, addr })
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The product's side
// ---------------------------------------------------------------------------------------------

/// The product's analysis, as the daemon does it each poll: `AdminClient::dynamic_listeners`
/// (one GET with `resource=`, body capped, typed parse skipping what is not needed), then
/// `summarize_listeners` (strict prefix parsing, dedup, inbound chains apart) and the error
/// states. Prints the facts.
pub fn product_main(admin: &str) -> anyhow::Result<()> {
    use service_proxy_agent::config::parse_admin_url;
    use service_proxy_agent::observe::ADMIN_MAX_BODY;
    use service_proxy_agent::observe::envoy_admin::{AdminClient, summarize_listeners};
    let url = parse_admin_url(admin).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = AdminClient::new(&url, Duration::from_secs(5), ADMIN_MAX_BODY);
    let t = std::time::Instant::now();
    let listeners = rt.block_on(client.dynamic_listeners())?;
    let fetched_and_parsed = t.elapsed();
    let summary = summarize_listeners(&listeners);
    if std::env::var_os("SPA_BENCH_PROFILE").is_some() {
        // Where the time goes: fetch alone, parse alone, summary.
        let t1 = std::time::Instant::now();
        let body = rt.block_on(service_proxy_agent::observe::http::get(
            &url.authority(),
            PRODUCT_QUERY,
            &[],
            Duration::from_secs(5),
            ADMIN_MAX_BODY,
        ))?;
        let fetch = t1.elapsed();
        let t2 = std::time::Instant::now();
        let parsed = service_proxy_agent::observe::envoy_admin::parse_listeners(&body.body)?;
        let parse = t2.elapsed();
        let t3 = std::time::Instant::now();
        let _ = summarize_listeners(&parsed);
        eprintln!(
            "fetch+parse {fetched_and_parsed:?}; fetch {fetch:?} ({} bytes), parse {parse:?}, summary {:?}",
            body.body.len(),
            t3.elapsed()
        );
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for v in &summary.vips {
        writeln!(out, "vip {v}")?;
    }
    for l in &listeners {
        if let Some(e) = &l.error {
            writeln!(
                out,
                "error {} {}",
                l.name.as_deref().unwrap_or("-"),
                e.details.split('\n').next().unwrap_or_default()
            )?;
        }
    }
    if !summary.rejected.is_empty() {
        writeln!(out, "rejected {}", summary.rejected.len())?;
    }
    out.flush()?;
    Ok(())
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_owned).collect();
    v.sort();
    v
}

/// The benchmark: generate, serve, run product and peers alternately, compare.
pub fn bench(
    dir: &Path,
    vips: usize,
    clusters: usize,
    runs: usize,
    self_exe: &Path,
) -> anyhow::Result<Row> {
    common::require_tool("curl", "curl")?;
    common::require_tool("jq", "jq")?;
    let dir = dir.join(format!("config-{vips}-{clusters}"));
    check_seed(&seed_dir())?;
    let g = generate(&dir, vips, clusters)?;
    let standin = Standin::start(self_exe, &dir)?;
    let base = format!("http://{}", standin.addr);
    let timeout = Duration::from_secs(300);
    let jq_file = dir.join("filter.jq");
    std::fs::write(&jq_file, JQ_FILTER)?;
    let peer = |query: &str| -> anyhow::Result<common::Output> {
        let script = format!(
            "curl -sS --fail '{base}{query}' | jq -r -f '{}'",
            jq_file.display()
        );
        common::run_measured(Command::new("sh").arg("-c").arg(script), timeout)
    };
    let (mut prod_t, mut peer_t, mut peer_smart_t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut prod_rss, mut peer_rss) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let p = common::run_measured(
            Command::new(self_exe)
                .arg("config-product")
                .arg("--admin")
                .arg(&base),
            timeout,
        )?;
        let q = peer("/config_dump")?;
        let q2 = peer(PRODUCT_QUERY)?;
        for (who, out) in [
            ("product", &p),
            ("curl | jq", &q),
            ("curl resource= | jq", &q2),
        ] {
            let lines = sorted_lines(&out.stdout);
            if lines != g.expected {
                bail!(
                    "{who} printed {} facts, {} expected (first difference: {:?})",
                    lines.len(),
                    g.expected.len(),
                    lines.iter().zip(&g.expected).find(|(a, b)| a != b)
                );
            }
        }
        prod_t.push(p.measurement.wall.as_secs_f64() * 1000.0);
        peer_t.push(q.measurement.wall.as_secs_f64() * 1000.0);
        peer_smart_t.push(q2.measurement.wall.as_secs_f64() * 1000.0);
        prod_rss.push(p.measurement.max_rss_kib as f64 / 1024.0);
        peer_rss.push(q.measurement.max_rss_kib as f64 / 1024.0);
        eprintln!(
            "  run {}: product {:.0} ms ({:.1} MiB), curl|jq {:.0} ms ({:.1} MiB), curl resource=|jq {:.0} ms",
            run + 1,
            prod_t[run],
            prod_rss[run],
            peer_t[run],
            peer_rss[run],
            peer_smart_t[run]
        );
    }
    let ratios: Vec<f64> = peer_t.iter().zip(&prod_t).map(|(q, p)| q / p).collect();
    let smart: Vec<f64> = peer_smart_t
        .iter()
        .zip(&prod_t)
        .map(|(q, p)| q / p)
        .collect();
    let (rt, rs, rss) = (Stats::of(&ratios), Stats::of(&smart), Stats::of(&prod_rss));
    let bytes_ratio = g.full_bytes as f64 / g.product_bytes as f64;
    Ok(Row {
        what: format!("config analysis, {vips} VIPs + {clusters} clusters"),
        product: format!(
            "{} ms, peak RSS {} MiB",
            Stats::of(&prod_t).show(0),
            rss.show(1)
        ),
        peer: format!(
            "{} ms, peak RSS {} MiB (`curl /config_dump \\| jq`)",
            Stats::of(&peer_t).show(0),
            Stats::of(&peer_rss).show(1)
        ),
        ratio: format!("{}× faster; bytes fetched ÷{bytes_ratio:.1}", rt.show(1)),
        target: "≥ 10× faster, RSS ≤ 64 MiB, fewer bytes".into(),
        verdict: common::verdict(rt.median >= 10.0 && rss.max <= 64.0 && bytes_ratio > 1.0),
        note: format!(
            "{} facts (VIPs + error states), identical on both sides; bytes fetched: full dump {:.1} MiB, product's `?resource=dynamic_listeners` {:.1} MiB; a mask keeping what the product reads (`mask=name,active_state,warming_state,error_state`; `mask=` cannot reach inside `active_state.listener`, 400 from Envoy 1.40) gives {:.1} MiB; against a peer that also asks `?resource=dynamic_listeners` the product is {}× faster",
            g.expected.len(),
            common::mib(g.full_bytes as f64),
            common::mib(g.product_bytes as f64),
            common::mib(g.masked_bytes as f64),
            rs.show(1)
        ),
    })
}

/// Captures the seed from the real Envoy (needs `.venv/bin/envoy` or `SPA_ENVOY_BIN`): a
/// control plane serves three VIPs routed to EDS clusters, an inbound port, then an update
/// Envoy rejects, so the dump holds error states too.
pub fn capture_seed(out: &Path) -> anyhow::Result<()> {
    use testkit::envoy::Envoy;
    use testkit::xds::{
        ClusterSpec, ControlPlane, Discovery, HealthCheckSpec, InterceptionSpec, ServiceVip,
    };
    let cp = ControlPlane::start()?;
    let proxy_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut bootstrap = cp.bootstrap("default", "123");
    bootstrap.interception_port = Some(proxy_port);
    let envoy = Envoy::start(bootstrap.envoy_config())?;
    let closed: SocketAddr = "127.0.0.1:9".parse()?;
    let clusters: Vec<ClusterSpec> = ["service-a", "service-b", "service-c"]
        .iter()
        .map(|n| {
            ClusterSpec::new(*n, vec![closed], Discovery::Eds)
                .with_health_check(HealthCheckSpec::http("/healthz"))
        })
        .collect();
    cp.set_clusters(clusters.iter().map(ClusterSpec::cluster).collect());
    cp.set_endpoints(clusters.iter().map(ClusterSpec::load_assignment).collect());
    let mut spec = InterceptionSpec::new(proxy_port, "123").serving_port(8080);
    for (i, c) in clusters.iter().enumerate() {
        spec.add_service(
            ServiceVip::parse(&format!("10.0.0.{}:80", i + 1))
                .map_err(anyhow::Error::msg)?
                .to_cluster(c.name.clone()),
        );
    }
    cp.set_interception(&spec);
    let wait = Duration::from_secs(30);
    envoy.wait_until(wait, "interception listener", |e| {
        let (_, body) = e.admin_get(PRODUCT_QUERY)?;
        Ok(body.contains("10.0.0.3") && body.contains("active_state"))
    })?;
    // An update Envoy refuses: the listener keeps its active state and gains error_state.
    let mut listeners = vec![
        spec.listener(),
        testkit::xds::resources::rejected_listener("rejected-listener", proxy_port + 1),
    ];
    listeners.truncate(2);
    cp.set_listeners(listeners);
    envoy.wait_until(wait, "error_state", |e| {
        let (_, body) = e.admin_get(PRODUCT_QUERY)?;
        Ok(body.contains("error_state"))
    })?;
    std::thread::sleep(Duration::from_secs(1));
    std::fs::create_dir_all(out)?;
    for (name, query) in [
        (SEED_FULL, "/config_dump".to_owned()),
        (SEED_LISTENERS, PRODUCT_QUERY.to_owned()),
        (SEED_MASKED, format!("{PRODUCT_QUERY}&mask={SEED_MASK}")),
    ] {
        let (code, body) = envoy.admin_get(&query)?;
        if code != 200 {
            bail!("{query}: HTTP {code}: {body}");
        }
        std::fs::write(out.join(name), body)?;
    }
    let (code, body) = envoy.admin_get(&format!(
        "{PRODUCT_QUERY}&mask=active_state.listener.filter_chains"
    ))?;
    eprintln!(
        "mask into active_state.listener: HTTP {code}: {}",
        body.trim()
    );
    Ok(())
}

/// Where parsing time goes, for one answer: serde_json skipping everything (the floor of any
/// typed parse with serde_json), the product's typed parse, and the summary.
pub fn parse_times(file: &Path) -> anyhow::Result<()> {
    let body = std::fs::read(file)?;
    if let Some(n) = std::env::var("SPA_BENCH_PARSE_LOOP")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        // Only the product's parse, `n` times (for a profiler).
        for _ in 0..n {
            service_proxy_agent::observe::envoy_admin::parse_listeners(&body)?;
        }
        return Ok(());
    }
    let time = |f: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            f()?;
            best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(best)
    };
    let utf8 = time(&|| {
        std::str::from_utf8(&body)?;
        Ok(())
    })?;
    let skip = time(&|| {
        let _: serde::de::IgnoredAny = serde_json::from_slice(&body)?;
        Ok(())
    })?;
    let value = time(&|| {
        let _: Value = serde_json::from_slice(&body)?;
        Ok(())
    })?;
    let typed = time(&|| {
        service_proxy_agent::observe::envoy_admin::parse_listeners(&body)?;
        Ok(())
    })?;
    let parsed = service_proxy_agent::observe::envoy_admin::parse_listeners(&body)?;
    let summary = time(&|| {
        let _ = service_proxy_agent::observe::envoy_admin::summarize_listeners(&parsed);
        Ok(())
    })?;
    eprintln!(
        "{} bytes: utf8 {utf8:.1} ms, serde skip-all {skip:.1} ms, Value {value:.1} ms, product parse {typed:.1} ms, summary {summary:.1} ms",
        body.len()
    );
    Ok(())
}
