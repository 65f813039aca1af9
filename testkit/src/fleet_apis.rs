//! Emulators of the Google API methods `service-proxy-agent fleet` calls, written from the
//! discovery documents `google-api-python-client` ships (`compute.v1.json`, `logging.v2.json`)
//! and proved with Google's own Python clients (tests/fleet_emulators.rs):
//!
//! - Compute `GET projects/{p}/aggregated/instances` (`filter` on labels/name/status,
//!   `maxResults`, `pageToken`, `returnPartialSuccess`; a zone with no match carries a
//!   `NO_RESULTS_ON_PAGE` warning, an unreachable zone an `UNREACHABLE` warning and an entry in
//!   `unreachables` too when the request asked for `returnPartialSuccess`);
//! - `GET projects/{p}/zones/{z}/instances` (same paging and filter);
//! - `POST projects/{p}/zones/{z}/instanceGroupManagers/{m}/listManagedInstances` and the
//!   regional `regions/{r}/instanceGroupManagers/{m}/listManagedInstances`;
//! - `GET projects/{p}/zones/{z}/instances/{vm}/getGuestAttributes?queryPath=...` (404 when the
//!   VM has no attribute under the path, as when guest attributes are disabled; 403 when the
//!   caller may not read it);
//! - Cloud Logging `POST v2/entries:list` (`resourceNames`, `filter` on `logName`,
//!   `jsonPayload.event`, `resource.type`, `timestamp`; `orderBy` `timestamp desc|asc`,
//!   `pageSize` ≤ 1000, `pageToken`).
//!
//! Both APIs answer on one loopback port (the paths do not overlap), so a test passes the same
//! URL as `--compute-endpoint` and `--cloud-logging-endpoint`. Every request needs a bearer
//! token (401 without); reads count against a per-window quota (429 `rateLimitExceeded` beyond
//! it, like Compute's per-minute read quota) and can be delayed by a configurable latency.
//! Errors have Google's JSON error shape.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::http_stub::{HttpStub, Recorded, Reply};

/// How a VM answers `getGuestAttributes`.
#[derive(Debug, Clone, PartialEq)]
pub enum GuestAttributes {
    /// `(key, value)` in the queried namespace.
    Present(Vec<(String, String)>),
    /// 404: nothing written yet, or guest attributes disabled on the VM.
    NotFound,
    /// 403: the caller lacks `compute.instances.getGuestAttributes` on this VM.
    Forbidden,
}

/// One instance.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetVm {
    pub name: String,
    pub zone: String,
    pub id: u64,
    pub labels: BTreeMap<String, String>,
    /// Instance metadata items (e.g. `enable-guest-attributes`, `created-by`).
    pub metadata: Vec<(String, String)>,
    pub status: String,
    pub guest: GuestAttributes,
}

/// A managed instance group: its members are the VMs whose `created-by` metadata names it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mig {
    pub name: String,
    /// `zones/<z>` or `regions/<r>`.
    pub location: String,
}

impl Mig {
    /// The `created-by` value Compute Engine writes on the group's instances.
    pub fn created_by(&self, project_number: u64) -> String {
        format!(
            "projects/{project_number}/{}/instanceGroupManagers/{}",
            self.location, self.name
        )
    }
}

/// A log entry as stored (what `entries:write` would have received).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    pub log_name: String,
    pub instance_id: u64,
    pub zone: String,
    /// The VM's name, as the `compute.googleapis.com/resource_name` entry label.
    pub vm_name: Option<String>,
    pub timestamp: SystemTime,
    pub severity: String,
    pub json_payload: Value,
}

/// A read quota: at most `limit` requests per `window`, counted in fixed windows from the start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub limit: u32,
    pub window: Duration,
}

/// What the emulated project holds and how the servers behave.
#[derive(Debug, Clone, Default)]
pub struct FleetProject {
    pub project: String,
    pub project_number: u64,
    pub vms: Vec<FleetVm>,
    pub migs: Vec<Mig>,
    pub entries: Vec<StoredEntry>,
    /// Zones that every listing reports as unreachable.
    pub unreachable_zones: Vec<String>,
    /// Every zone of the project's regions (an aggregated list names them all).
    pub zones: Vec<String>,
    pub latency: Duration,
    pub compute_quota: Option<Quota>,
    pub logging_quota: Option<Quota>,
    /// When set, only this bearer token is accepted (else any non-empty one).
    pub token: Option<String>,
}

/// One request as the emulator saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub api: &'static str,
    pub method: String,
    pub path: String,
    pub status: u16,
}

#[derive(Default)]
struct Counters {
    seen: Vec<Seen>,
    quota_window: BTreeMap<(&'static str, u64), u32>,
}

/// The running emulator; stops on drop.
pub struct FleetApis {
    stub: HttpStub,
    state: Arc<Mutex<FleetProject>>,
    counters: Arc<Mutex<Counters>>,
    started: Instant,
}

impl FleetApis {
    pub fn start(project: FleetProject) -> FleetApis {
        let state = Arc::new(Mutex::new(project));
        let counters: Arc<Mutex<Counters>> = Arc::default();
        let started = Instant::now();
        let (s, c) = (state.clone(), counters.clone());
        let stub = HttpStub::start(move |req| handle(&s, &c, started, req));
        FleetApis {
            stub,
            state,
            counters,
            started,
        }
    }

    /// `http://127.0.0.1:PORT`, for both `--compute-endpoint` and `--cloud-logging-endpoint`.
    pub fn url(&self) -> String {
        self.stub.url()
    }

    pub fn update(&self, f: impl FnOnce(&mut FleetProject)) {
        f(&mut self.state.lock().unwrap())
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.counters.lock().unwrap().seen.clone()
    }

    /// The most requests of `api` (`compute`, `logging`) that arrived within any one second.
    pub fn peak_per_second(&self, api: &str) -> usize {
        let mut at: Vec<Instant> = self
            .seen()
            .iter()
            .filter(|s| s.api == api)
            .map(|s| s.at)
            .collect();
        at.sort();
        peak_in_window(&at, Duration::from_secs(1))
    }

    pub fn count(&self, api: &str, status: u16) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.api == api && s.status == status)
            .count()
    }

    pub fn started(&self) -> Instant {
        self.started
    }
}

/// The most instants of a sorted list that fall in any half-open window `[t, t + window)`.
pub fn peak_in_window(sorted: &[Instant], window: Duration) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for (hi, t) in sorted.iter().enumerate() {
        while sorted[lo] + window <= *t {
            lo += 1;
        }
        best = best.max(hi + 1 - lo);
    }
    best
}

fn error(code: u16, status: &str, reason: &str, message: &str) -> Reply {
    let body = json!({"error": {
        "code": code,
        "message": message,
        "errors": [{"message": message, "domain": if code == 429 { "usageLimits" } else { "global" }, "reason": reason}],
        "status": status,
    }});
    Reply::json(code, body.to_string())
}

fn handle(
    state: &Mutex<FleetProject>,
    counters: &Mutex<Counters>,
    started: Instant,
    req: &Recorded,
) -> Reply {
    let (path, query) = match req.path.split_once('?') {
        Some((p, q)) => (p.to_owned(), parse_query(q)),
        None => (req.path.clone(), BTreeMap::new()),
    };
    let api: &'static str = if path.starts_with("/v2/") {
        "logging"
    } else {
        "compute"
    };
    // Routed under the lock (the server runs on one thread anyway): no copy of a project of
    // thousands of VMs per request.
    let project = state.lock().unwrap();
    let reply = route(&project, counters, started, api, req, &path, &query);
    let latency = project.latency;
    drop(project);
    let status = match &reply {
        Reply::Body(s, _, _) => *s,
        _ => 0,
    };
    counters.lock().unwrap().seen.push(Seen {
        at: req.at,
        api,
        method: req.method.clone(),
        path: req.path.clone(),
        status,
    });
    if latency.is_zero() {
        reply
    } else {
        Reply::Delay(latency, Box::new(reply))
    }
}

fn route(
    p: &FleetProject,
    counters: &Mutex<Counters>,
    started: Instant,
    api: &'static str,
    req: &Recorded,
    path: &str,
    query: &BTreeMap<String, String>,
) -> Reply {
    let token = req
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    if token.trim().is_empty() || p.token.as_deref().is_some_and(|t| t != token) {
        return error(
            401,
            "UNAUTHENTICATED",
            "required",
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        );
    }
    let quota = if api == "logging" {
        p.logging_quota
    } else {
        p.compute_quota
    };
    if let Some(q) = quota {
        let window = (started.elapsed().as_nanos() / q.window.as_nanos().max(1)) as u64;
        let mut c = counters.lock().unwrap();
        let used = c.quota_window.entry((api, window)).or_insert(0);
        if *used >= q.limit {
            let service = if api == "logging" {
                "logging.googleapis.com"
            } else {
                "compute.googleapis.com"
            };
            return error(
                429,
                "RESOURCE_EXHAUSTED",
                "rateLimitExceeded",
                &format!(
                    "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per minute' of service '{service}' for consumer 'project_number:{}'.",
                    p.project_number
                ),
            );
        }
        *used += 1;
    }
    if api == "logging" {
        return match (req.method.as_str(), path) {
            ("POST", "/v2/entries:list") => entries_list(p, req),
            _ => error(404, "NOT_FOUND", "notFound", "Method not found."),
        };
    }
    let Some(rest) = path.strip_prefix("/compute/v1/projects/") else {
        return error(404, "NOT_FOUND", "notFound", "Not Found");
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let Some(project) = parts.first() else {
        return error(404, "NOT_FOUND", "notFound", "Not Found");
    };
    if *project != p.project {
        return error(
            403,
            "PERMISSION_DENIED",
            "forbidden",
            &format!("Required 'compute.instances.list' permission for 'projects/{project}'"),
        );
    }
    match (req.method.as_str(), &parts[1..]) {
        ("GET", ["aggregated", "instances"]) => aggregated(p, query),
        ("GET", ["zones", zone, "instances"]) => zone_list(p, zone, query),
        ("GET", ["zones", zone, "instances", vm, "getGuestAttributes"]) => {
            guest_attributes(p, zone, vm, query)
        }
        (
            "POST",
            [
                "zones",
                zone,
                "instanceGroupManagers",
                m,
                "listManagedInstances",
            ],
        ) => managed(p, &format!("zones/{zone}"), m, query),
        (
            "POST",
            [
                "regions",
                region,
                "instanceGroupManagers",
                m,
                "listManagedInstances",
            ],
        ) => managed(p, &format!("regions/{region}"), m, query),
        _ => error(
            404,
            "NOT_FOUND",
            "notFound",
            &format!("The resource '{path}' was not found"),
        ),
    }
}

fn self_link(p: &FleetProject, vm: &FleetVm) -> String {
    format!(
        "https://www.googleapis.com/compute/v1/projects/{}/zones/{}/instances/{}",
        p.project, vm.zone, vm.name
    )
}

fn instance_json(p: &FleetProject, vm: &FleetVm) -> Value {
    let items: Vec<Value> = vm
        .metadata
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    json!({
        "kind": "compute#instance",
        "id": vm.id.to_string(),
        "name": vm.name,
        "zone": format!("https://www.googleapis.com/compute/v1/projects/{}/zones/{}", p.project, vm.zone),
        "status": vm.status,
        "labels": vm.labels,
        "metadata": {"kind": "compute#metadata", "fingerprint": "AAAAAAAAAAA=", "items": items},
        "selfLink": self_link(p, vm),
        "creationTimestamp": "2026-12-01T00:00:00.000-08:00",
        "machineType": format!("https://www.googleapis.com/compute/v1/projects/{}/zones/{}/machineTypes/e2-small", p.project, vm.zone),
    })
}

/// One term of a Compute filter: `field = value`, `field != value`, value quoted or not.
fn compute_matches(filter: &str, vm: &FleetVm) -> Result<bool, String> {
    for term in split_and(filter) {
        let term = term
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .trim();
        if term.is_empty() {
            continue;
        }
        let (field, negate, value) = if let Some((f, v)) = term.split_once("!=") {
            (f, true, v)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, false, v)
        } else {
            return Err(format!(
                "Invalid value for field 'filter': '{filter}'. Invalid list filter expression."
            ));
        };
        let (field, value) = (field.trim(), unquote(value.trim()));
        let actual = if let Some(label) = field.strip_prefix("labels.") {
            vm.labels.get(label).cloned()
        } else {
            match field {
                "name" => Some(vm.name.clone()),
                "status" => Some(vm.status.clone()),
                "zone" => Some(vm.zone.clone()),
                _ => {
                    return Err(format!(
                        "Invalid value for field 'filter': '{filter}'. Invalid field name '{field}'."
                    ));
                }
            }
        };
        let eq = actual.as_deref() == Some(value.as_str());
        if eq == negate {
            return Ok(false);
        }
    }
    Ok(true)
}

fn split_and(filter: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for word in filter.split(' ') {
        if word.eq_ignore_ascii_case("AND") {
            out.push(std::mem::take(&mut cur));
        } else {
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(word);
        }
    }
    out.push(cur);
    // Compute also takes `(a = "x") (b = "y")`: split at `) (`.
    out.iter()
        .flat_map(|t| t.split(") (").map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

fn unquote(v: &str) -> String {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
        .to_owned()
}

fn page_params(
    query: &BTreeMap<String, String>,
    default: usize,
    max: usize,
) -> Result<(usize, usize), Reply> {
    let size = match query.get("maxResults") {
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n <= max => n,
            _ => {
                return Err(error(
                    400,
                    "INVALID_ARGUMENT",
                    "invalid",
                    &format!(
                        "Invalid value for field 'maxResults': '{v}'. Must be less than or equal to {max}"
                    ),
                ));
            }
        },
        None => default,
    };
    let offset = match query.get("pageToken") {
        Some(t) => match decode_token(t) {
            Some(o) => o,
            None => {
                return Err(error(
                    400,
                    "INVALID_ARGUMENT",
                    "invalid",
                    "Invalid value for field 'pageToken'.",
                ));
            }
        },
        None => 0,
    };
    Ok((size.max(1), offset))
}

/// Page tokens are opaque to clients; here an offset with a prefix so a made-up one is refused.
fn encode_token(offset: usize) -> String {
    format!("Cg{offset:x}")
}

fn decode_token(t: &str) -> Option<usize> {
    usize::from_str_radix(t.strip_prefix("Cg")?, 16).ok()
}

fn matching<'a>(
    p: &'a FleetProject,
    query: &BTreeMap<String, String>,
) -> Result<Vec<&'a FleetVm>, Reply> {
    let filter = query.get("filter").map(String::as_str).unwrap_or("");
    let mut out = Vec::new();
    for vm in &p.vms {
        match compute_matches(filter, vm) {
            Ok(true) => out.push(vm),
            Ok(false) => {}
            Err(e) => return Err(error(400, "INVALID_ARGUMENT", "invalid", &e)),
        }
    }
    Ok(out)
}

fn aggregated(p: &FleetProject, query: &BTreeMap<String, String>) -> Reply {
    // With returnPartialSuccess the unreachable zones are also listed in `unreachables`;
    // either way their scope carries an UNREACHABLE warning.
    let partial = query.get("returnPartialSuccess").map(String::as_str) == Some("true");
    let (size, offset) = match page_params(query, 500, 500) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let all = match matching(p, query) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let reachable: Vec<&FleetVm> = all
        .into_iter()
        .filter(|vm| !p.unreachable_zones.contains(&vm.zone))
        .collect();
    let page: Vec<&FleetVm> = reachable.iter().skip(offset).take(size).copied().collect();
    let mut items = serde_json::Map::new();
    let mut zones = p.zones.clone();
    for vm in &reachable {
        if !zones.contains(&vm.zone) {
            zones.push(vm.zone.clone());
        }
    }
    for zone in &zones {
        let key = format!("zones/{zone}");
        let here: Vec<Value> = page
            .iter()
            .filter(|vm| &vm.zone == zone)
            .map(|vm| instance_json(p, vm))
            .collect();
        let value = if p.unreachable_zones.contains(zone) {
            json!({"warning": {"code": "UNREACHABLE", "message": format!("Scope '{key}' is unreachable."), "data": [{"key": "scope", "value": key}]}})
        } else if here.is_empty() {
            json!({"warning": {"code": "NO_RESULTS_ON_PAGE", "message": format!("There are no results for scope '{key}' on this page."), "data": [{"key": "scope", "value": key}]}})
        } else {
            json!({"instances": here})
        };
        items.insert(key, value);
    }
    let mut body = json!({
        "kind": "compute#instanceAggregatedList",
        "id": format!("projects/{}/aggregated/instances", p.project),
        "items": items,
        "selfLink": format!("https://www.googleapis.com/compute/v1/projects/{}/aggregated/instances", p.project),
    });
    if offset + size < reachable.len() {
        body["nextPageToken"] = json!(encode_token(offset + size));
    }
    if partial && !p.unreachable_zones.is_empty() {
        body["unreachables"] = json!(
            p.unreachable_zones
                .iter()
                .map(|z| format!("zones/{z}"))
                .collect::<Vec<_>>()
        );
    }
    Reply::json(200, body.to_string())
}

fn zone_list(p: &FleetProject, zone: &str, query: &BTreeMap<String, String>) -> Reply {
    if p.unreachable_zones.iter().any(|z| z == zone) {
        return error(
            503,
            "UNAVAILABLE",
            "backendError",
            &format!("Zone '{zone}' is unreachable."),
        );
    }
    if !p.zones.iter().any(|z| z == zone) && !p.vms.iter().any(|v| v.zone == zone) {
        return error(
            404,
            "NOT_FOUND",
            "notFound",
            &format!(
                "The resource 'projects/{}/zones/{zone}' was not found",
                p.project
            ),
        );
    }
    let (size, offset) = match page_params(query, 500, 500) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let all = match matching(p, query) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let here: Vec<&FleetVm> = all.into_iter().filter(|vm| vm.zone == zone).collect();
    let items: Vec<Value> = here
        .iter()
        .skip(offset)
        .take(size)
        .map(|vm| instance_json(p, vm))
        .collect();
    let mut body = json!({
        "kind": "compute#instanceList",
        "id": format!("projects/{}/zones/{zone}/instances", p.project),
        "items": items,
        "selfLink": format!("https://www.googleapis.com/compute/v1/projects/{}/zones/{zone}/instances", p.project),
    });
    if offset + size < here.len() {
        body["nextPageToken"] = json!(encode_token(offset + size));
    }
    Reply::json(200, body.to_string())
}

fn guest_attributes(
    p: &FleetProject,
    zone: &str,
    name: &str,
    query: &BTreeMap<String, String>,
) -> Reply {
    let Some(vm) = p.vms.iter().find(|v| v.zone == zone && v.name == name) else {
        return error(
            404,
            "NOT_FOUND",
            "notFound",
            &format!(
                "The resource 'projects/{}/zones/{zone}/instances/{name}' was not found",
                p.project
            ),
        );
    };
    let query_path = query.get("queryPath").cloned().unwrap_or_default();
    let namespace = query_path.trim_end_matches('/').to_owned();
    match &vm.guest {
        GuestAttributes::Forbidden => error(
            403,
            "PERMISSION_DENIED",
            "forbidden",
            &format!(
                "Required 'compute.instances.getGuestAttributes' permission for 'projects/{}/zones/{zone}/instances/{name}'",
                p.project
            ),
        ),
        GuestAttributes::NotFound => error(
            404,
            "NOT_FOUND",
            "notFound",
            &format!(
                "The resource 'projects/{}/zones/{zone}/instances/{name}/guestAttributes/{query_path}' was not found",
                p.project
            ),
        ),
        GuestAttributes::Present(items) => {
            let items: Vec<Value> = items
                .iter()
                .map(|(k, v)| json!({"namespace": namespace, "key": k, "value": v}))
                .collect();
            let body = json!({
                "kind": "compute#guestAttributes",
                "queryPath": query_path,
                "queryValue": {"items": items},
                "selfLink": format!("{}/guestAttributes/{query_path}", self_link(p, vm)),
            });
            Reply::json(200, body.to_string())
        }
    }
}

fn managed(
    p: &FleetProject,
    location: &str,
    name: &str,
    query: &BTreeMap<String, String>,
) -> Reply {
    let Some(mig) = p
        .migs
        .iter()
        .find(|m| m.location == location && m.name == name)
    else {
        return error(
            404,
            "NOT_FOUND",
            "notFound",
            &format!(
                "The resource 'projects/{}/{location}/instanceGroupManagers/{name}' was not found",
                p.project
            ),
        );
    };
    let (size, offset) = match page_params(query, 500, 500) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let created_by = mig.created_by(p.project_number);
    let members: Vec<&FleetVm> = p
        .vms
        .iter()
        .filter(|vm| {
            vm.metadata
                .iter()
                .any(|(k, v)| k == "created-by" && *v == created_by)
        })
        .collect();
    let items: Vec<Value> = members
        .iter()
        .skip(offset)
        .take(size)
        .map(|vm| {
            json!({
                "instance": self_link(p, vm),
                "id": vm.id.to_string(),
                "name": vm.name,
                "instanceStatus": vm.status,
                "currentAction": "NONE",
            })
        })
        .collect();
    let mut body = json!({"managedInstances": items});
    if offset + size < members.len() {
        body["nextPageToken"] = json!(encode_token(offset + size));
    }
    Reply::json(200, body.to_string())
}

/// A term of a Cloud Logging filter this emulator understands.
fn logging_matches(filter: &str, e: &StoredEntry) -> Result<bool, String> {
    for term in split_and(filter) {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        let (field, op, value) = if let Some((f, v)) = term.split_once(">=") {
            (f, ">=", v)
        } else if let Some((f, v)) = term.split_once("<=") {
            (f, "<=", v)
        } else if let Some((f, v)) = term.split_once('>') {
            (f, ">", v)
        } else if let Some((f, v)) = term.split_once('<') {
            (f, "<", v)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, "=", v)
        } else {
            return Err(format!("Unparseable filter: syntax error at '{term}'"));
        };
        let (field, value) = (field.trim(), unquote(value.trim()));
        let ok = match field {
            "timestamp" => {
                let t = parse_timestamp(&value)
                    .ok_or_else(|| format!("Invalid timestamp '{value}'"))?;
                match op {
                    ">=" => e.timestamp >= t,
                    ">" => e.timestamp > t,
                    "<=" => e.timestamp <= t,
                    "<" => e.timestamp < t,
                    _ => e.timestamp == t,
                }
            }
            "logName" if op == "=" => e.log_name == value,
            "resource.type" if op == "=" => value == "gce_instance",
            f if op == "=" && f.starts_with("jsonPayload.") => {
                let key = &f["jsonPayload.".len()..];
                e.json_payload.get(key).and_then(Value::as_str) == Some(value.as_str())
            }
            _ => return Err(format!("Unsupported filter term '{term}'")),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// RFC 3339 in UTC: `Z`, `+00:00` or `+0000` (google-cloud-logging writes the last).
fn parse_timestamp(v: &str) -> Option<SystemTime> {
    let base = v
        .strip_suffix('Z')
        .or_else(|| v.strip_suffix("+00:00"))
        .or_else(|| v.strip_suffix("+0000"))?;
    humantime::parse_rfc3339_weak(base).ok()
}

fn entries_list(p: &FleetProject, req: &Recorded) -> Reply {
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return error(
            400,
            "INVALID_ARGUMENT",
            "badRequest",
            "Invalid JSON payload received.",
        );
    };
    let names: Vec<&str> = body["resourceNames"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if names.is_empty() {
        return error(
            400,
            "INVALID_ARGUMENT",
            "badRequest",
            "resourceNames is required",
        );
    }
    let ours = format!("projects/{}", p.project);
    if let Some(other) = names.iter().find(|n| **n != ours) {
        return error(
            403,
            "PERMISSION_DENIED",
            "forbidden",
            &format!("The caller does not have permission to read {other}"),
        );
    }
    let page_size = body["pageSize"].as_u64().unwrap_or(50) as usize;
    if page_size > 1000 {
        return error(
            400,
            "INVALID_ARGUMENT",
            "badRequest",
            "pageSize must be at most 1000",
        );
    }
    let offset = match body["pageToken"].as_str() {
        Some(t) => match decode_token(t) {
            Some(o) => o,
            None => return error(400, "INVALID_ARGUMENT", "badRequest", "Invalid page token"),
        },
        None => 0,
    };
    let desc = match body["orderBy"].as_str().map(str::trim) {
        None | Some("timestamp asc") | Some("timestamp") => false,
        Some("timestamp desc") => true,
        Some(o) => {
            return error(
                400,
                "INVALID_ARGUMENT",
                "badRequest",
                &format!("Invalid orderBy '{o}'"),
            );
        }
    };
    let filter = body["filter"].as_str().unwrap_or("");
    let mut hits = Vec::new();
    for e in &p.entries {
        match logging_matches(filter, e) {
            Ok(true) => hits.push(e),
            Ok(false) => {}
            Err(m) => return error(400, "INVALID_ARGUMENT", "badRequest", &m),
        }
    }
    hits.sort_by_key(|e| e.timestamp);
    if desc {
        hits.reverse();
    }
    let page_size = page_size.max(1);
    let entries: Vec<Value> = hits
        .iter()
        .enumerate()
        .skip(offset)
        .take(page_size)
        .map(|(i, e)| {
            let ts = humantime::format_rfc3339(e.timestamp).to_string();
            let mut v = json!({
                "logName": e.log_name,
                "resource": {"type": "gce_instance", "labels": {"project_id": p.project, "zone": e.zone, "instance_id": e.instance_id.to_string()}},
                "timestamp": ts,
                "receiveTimestamp": ts,
                "severity": e.severity,
                "insertId": format!("{:016x}", i),
                "jsonPayload": e.json_payload,
            });
            if let Some(name) = &e.vm_name {
                v["labels"] = json!({"compute.googleapis.com/resource_name": name});
            }
            v
        })
        .collect();
    let mut out = json!({"entries": entries});
    if offset + page_size < hits.len() {
        out["nextPageToken"] = json!(encode_token(offset + page_size));
    }
    Reply::json(200, out.to_string())
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_and_windows() {
        assert_eq!(
            percent_decode("labels.a%20%3D%20%22on%22"),
            "labels.a = \"on\""
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        let t = Instant::now();
        let at: Vec<Instant> = [0, 100, 999, 1000, 1500, 1999]
            .iter()
            .map(|ms| t + Duration::from_millis(*ms))
            .collect();
        assert_eq!(peak_in_window(&at, Duration::from_secs(1)), 3);
    }
}
