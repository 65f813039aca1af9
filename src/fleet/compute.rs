//! `fleet --source compute`: list the VMs (aggregated list, per-zone lists, or a managed
//! instance group's members), then read each VM's `gce-service-proxy/` guest attributes,
//! concurrently, every request under one [`RateLimiter`]. A throttled request is retried after
//! the limiter's backoff; a VM whose attributes cannot be read is reported with the reason.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;

use super::api::{Api, ApiError, escape};
use super::limiter::RateLimiter;
use super::{MigRef, VmReport};

/// Attempts per request when Google keeps answering 429 (with the backoff, minutes).
const MAX_ATTEMPTS: u32 = 12;
/// Reads under way at once (a task each, spawned as others end, not one per VM up front: a
/// task holds its whole future from the start); the rate limit, not this, sets the pace.
const MAX_IN_FLIGHT: usize = 128;
const PAGE_SIZE: u32 = 500;
pub use crate::contract::guest_attributes::NAMESPACE;

/// What to list.
#[derive(Debug, Clone, PartialEq)]
pub struct ComputeQuery {
    /// Base URL, e.g. `https://compute.googleapis.com`.
    pub endpoint: String,
    pub project: String,
    pub zones: Vec<String>,
    /// A managed instance group and its location (`zones/<z>` or `regions/<r>`).
    pub group: Option<MigRef>,
    /// Compute filter; `None` lists every VM.
    pub filter: Option<String>,
}

/// A listed VM, before its attributes are read.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub name: String,
    pub zone: String,
    pub mig: Option<MigRef>,
    /// The instance's `enable-guest-attributes` metadata (None: unknown or not set).
    pub guest_attributes_enabled: Option<bool>,
}

/// Shared budget: the limiter and the retry loop around each call.
pub struct Budget {
    limiter: Mutex<RateLimiter>,
    /// Callers wait for a slot one at a time, in turn (tokio's mutex is fair): the one at the
    /// head sleeps until the limiter names, the others queue behind it instead of all waking
    /// to race for each slot.
    queue: tokio::sync::Mutex<()>,
    /// An answer came in (it may free a slot before the time the limiter named).
    answer: tokio::sync::Notify,
}

/// A started request: tells the limiter when its answer is in, also when the call is dropped
/// half-way (a slot held for ever would stop every later request).
struct Started<'a> {
    budget: &'a Budget,
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        // The time is read after the answer is in: the server saw the request before it.
        let now = Instant::now();
        if let Ok(mut l) = self.budget.limiter.lock() {
            l.answered(now);
        }
        self.budget.answer.notify_one();
    }
}

impl Budget {
    pub fn new(max_qps: u32) -> Budget {
        Budget {
            limiter: Mutex::new(RateLimiter::new(max_qps)),
            queue: tokio::sync::Mutex::new(()),
            answer: tokio::sync::Notify::new(),
        }
    }

    async fn acquire(&self) -> Started<'_> {
        let _turn = self.queue.lock().await;
        loop {
            let wait = match self.limiter.lock() {
                Ok(mut l) => l.try_acquire(Instant::now()),
                Err(_) => Ok(()),
            };
            match wait {
                Ok(()) => return Started { budget: self },
                // An answer since the check left a permit: `notified` returns at once then.
                Err(Some(at)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = self.answer.notified() => {}
                    }
                }
                Err(None) => self.answer.notified().await,
            }
        }
    }

    /// Runs `call` under the limit, retrying while it is throttled.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = self.acquire().await;
            let result = call().await;
            drop(started);
            let now = Instant::now();
            match &result {
                Err(e) if e.is_rate_limited() && attempt < MAX_ATTEMPTS => {
                    if let Ok(mut l) = self.limiter.lock() {
                        l.throttled(now, fastrand::f64());
                    }
                }
                Err(ApiError::Transport(_)) if attempt < 3 => {}
                _ => {
                    if result.is_ok()
                        && let Ok(mut l) = self.limiter.lock()
                    {
                        l.succeeded(now);
                    }
                    return result;
                }
            }
        }
    }
}

fn metadata_item<'a>(instance: &'a Value, key: &str) -> Option<&'a str> {
    instance
        .pointer("/metadata/items")
        .unwrap_or(&super::NULL)
        .as_array()?
        .iter()
        .find(|i| i.pointer("/key").unwrap_or(&super::NULL).as_str() == Some(key))
        .and_then(|i| i.pointer("/value").unwrap_or(&super::NULL).as_str())
}

fn last_segment(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

fn listed(instance: &Value, mig: Option<&MigRef>) -> Option<Listed> {
    let name = instance.pointer("/name").unwrap_or(&super::NULL).as_str()?;
    let zone = last_segment(instance.pointer("/zone").unwrap_or(&super::NULL).as_str()?);
    Some(Listed {
        name: name.to_owned(),
        zone: zone.to_owned(),
        mig: mig
            .cloned()
            .or_else(|| metadata_item(instance, "created-by").and_then(MigRef::from_created_by)),
        // Absent on a listed instance means not enabled on it (gcloud's --service-proxy sets it).
        guest_attributes_enabled: Some(
            metadata_item(instance, "enable-guest-attributes")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        ),
    })
}

/// Lists the VMs. Returns them and warnings (unreachable zones: the list is incomplete).
pub async fn list(
    api: &Api,
    budget: &Budget,
    q: &ComputeQuery,
) -> Result<(Vec<Listed>, Vec<String>), ApiError> {
    let base = format!("{}/compute/v1/projects/{}", q.endpoint, escape(&q.project));
    let filter = q
        .filter
        .as_deref()
        .map(|f| format!("&filter={}", escape(f)))
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    if let Some(mig) = &q.group {
        let url = format!(
            "{base}/{}/instanceGroupManagers/{}/listManagedInstances?maxResults={PAGE_SIZE}",
            mig.location,
            escape(&mig.name)
        );
        let empty = Value::Object(Default::default());
        let mut token: Option<String> = None;
        loop {
            let page_url = match &token {
                Some(t) => format!("{url}&pageToken={}", escape(t)),
                None => url.clone(),
            };
            let page = budget.call(|| api.post_json(&page_url, &empty)).await?;
            for m in page
                .pointer("/managedInstances")
                .unwrap_or(&super::NULL)
                .as_array()
                .into_iter()
                .flatten()
            {
                let Some(instance) = m.pointer("/instance").unwrap_or(&super::NULL).as_str() else {
                    continue;
                };
                let parts: Vec<&str> = instance.rsplit('/').take(4).collect();
                if let [name, "instances", zone, "zones"] = parts.as_slice() {
                    out.push(Listed {
                        name: (*name).to_owned(),
                        zone: (*zone).to_owned(),
                        mig: Some(mig.clone()),
                        guest_attributes_enabled: None,
                    });
                }
            }
            token = page
                .pointer("/nextPageToken")
                .unwrap_or(&super::NULL)
                .as_str()
                .map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        if !q.zones.is_empty() {
            out.retain(|l| q.zones.contains(&l.zone));
        }
        return Ok((out, warnings));
    }
    let urls: Vec<String> = if q.zones.is_empty() {
        vec![format!(
            "{base}/aggregated/instances?maxResults={PAGE_SIZE}&returnPartialSuccess=true{filter}"
        )]
    } else {
        q.zones
            .iter()
            .map(|z| {
                format!(
                    "{base}/zones/{}/instances?maxResults={PAGE_SIZE}{filter}",
                    escape(z)
                )
            })
            .collect()
    };
    for url in urls {
        let mut token: Option<String> = None;
        loop {
            let page_url = match &token {
                Some(t) => format!("{url}&pageToken={}", escape(t)),
                None => url.clone(),
            };
            let page = budget.call(|| api.get_json(&page_url)).await?;
            match page.pointer("/items").unwrap_or(&super::NULL) {
                // Per-zone list: an array of instances.
                Value::Array(items) => out.extend(items.iter().filter_map(|i| listed(i, None))),
                // Aggregated list: scopes, each with instances or a warning.
                Value::Object(scopes) => {
                    for (scope, scoped) in scopes {
                        out.extend(
                            scoped
                                .pointer("/instances")
                                .unwrap_or(&super::NULL)
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|i| listed(i, None)),
                        );
                        if scoped
                            .pointer("/warning/code")
                            .unwrap_or(&super::NULL)
                            .as_str()
                            == Some("UNREACHABLE")
                        {
                            let w = format!("{scope} is unreachable: its VMs are not listed");
                            if !warnings.contains(&w) {
                                warnings.push(w);
                            }
                        }
                    }
                }
                _ => {}
            }
            for u in page
                .pointer("/unreachables")
                .unwrap_or(&super::NULL)
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some(u) = u.as_str() {
                    let w = format!("{u} is unreachable: its VMs are not listed");
                    if !warnings.contains(&w) {
                        warnings.push(w);
                    }
                }
            }
            token = page
                .pointer("/nextPageToken")
                .unwrap_or(&super::NULL)
                .as_str()
                .map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
    }
    Ok((out, warnings))
}

/// What a failed read says about the VM.
pub fn unread_reason(e: &ApiError, guest_attributes_enabled: Option<bool>) -> String {
    match (e.code(), guest_attributes_enabled) {
        (Some(404), Some(true)) => "no attributes yet: agent not installed?".into(),
        (Some(404), Some(false)) => {
            "guest attributes disabled (metadata enable-guest-attributes is not TRUE)".into()
        }
        (Some(404), None) => {
            "no guest attributes: guest attributes disabled, or agent not installed?".into()
        }
        (Some(403), _) if e.is_rate_limited() => format!("rate limited, gave up: {e}"),
        (Some(403), _) => format!("permission denied: {e}"),
        _ => format!("cannot read guest attributes: {e}"),
    }
}

/// A `getGuestAttributes` answer, read into what is used of it: one small allocation per
/// string instead of a `Value` map per item (one of these is parsed per VM).
#[derive(Debug, Default, serde::Deserialize)]
pub struct GuestAttributesAnswer {
    #[serde(default, rename = "queryValue")]
    query_value: Option<QueryValue>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct QueryValue {
    #[serde(default)]
    items: Option<Vec<GuestAttributeItem>>,
}

/// Members of another type than a string are skipped, as a missing one is.
#[derive(Debug, serde::Deserialize)]
struct GuestAttributeItem {
    #[serde(default)]
    namespace: Option<Value>,
    #[serde(default)]
    key: Option<Value>,
    #[serde(default)]
    value: Option<Value>,
}

/// The attributes of the `gce-service-proxy/` namespace in a `getGuestAttributes` answer.
fn attributes(answer: GuestAttributesAnswer) -> BTreeMap<String, String> {
    answer
        .query_value
        .and_then(|q| q.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|i| {
            i.namespace
                .as_ref()
                .is_none_or(|n| n.as_str().is_none_or(|n| n == NAMESPACE))
        })
        .filter_map(|i| match (i.key, i.value) {
            (Some(Value::String(k)), Some(Value::String(v))) => Some((k, v)),
            _ => None,
        })
        .collect()
}

/// Reads one VM's attributes under the budget.
async fn read_one(api: Arc<Api>, budget: Arc<Budget>, url: String, vm: Listed) -> VmReport {
    match budget.call(|| api.get::<GuestAttributesAnswer>(&url)).await {
        Ok(answer) => VmReport::from_attributes(&vm.name, &vm.zone, vm.mig, &attributes(answer)),
        Err(e) => VmReport::unread(
            &vm.name,
            &vm.zone,
            vm.mig,
            unread_reason(&e, vm.guest_attributes_enabled),
        ),
    }
}

/// Reads every listed VM's attributes, at most `MAX_IN_FLIGHT` (128) at once. `progress(done,
/// total)` is called as reads finish. The reports are in the order of `vms`.
pub async fn read_all(
    api: Arc<Api>,
    budget: Arc<Budget>,
    q: &ComputeQuery,
    vms: Vec<Listed>,
    progress: Arc<dyn Fn(usize, usize) + Send + Sync>,
) -> Vec<VmReport> {
    let total = vms.len();
    let mut pending = vms.into_iter().enumerate();
    let mut set = tokio::task::JoinSet::new();
    let mut out: Vec<(usize, VmReport)> = Vec::with_capacity(total);
    loop {
        while set.len() < MAX_IN_FLIGHT {
            let Some((i, vm)) = pending.next() else {
                break;
            };
            let url = format!(
                "{}/compute/v1/projects/{}/zones/{}/instances/{}/getGuestAttributes?queryPath={}",
                q.endpoint,
                escape(&q.project),
                escape(&vm.zone),
                escape(&vm.name),
                escape(&format!("{NAMESPACE}/"))
            );
            let read = read_one(api.clone(), budget.clone(), url, vm);
            set.spawn(async move { (i, read.await) });
        }
        match set.join_next().await {
            Some(Ok(r)) => {
                out.push(r);
                progress(out.len(), total);
            }
            // A task that panicked (it cannot: no panics on this path) is not a report.
            Some(Err(_)) => {}
            None => break,
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_for_unread_vms() {
        let e404 = ApiError::Status {
            code: 404,
            reason: Some("notFound".into()),
            message: "x".into(),
        };
        assert_eq!(
            unread_reason(&e404, Some(true)),
            "no attributes yet: agent not installed?"
        );
        assert!(unread_reason(&e404, Some(false)).starts_with("guest attributes disabled"));
        assert!(unread_reason(&e404, None).contains("disabled, or agent not installed"));
        let e403 = ApiError::Status {
            code: 403,
            reason: Some("forbidden".into()),
            message: "Required 'compute.instances.getGuestAttributes' permission".into(),
        };
        assert!(unread_reason(&e403, Some(true)).starts_with("permission denied: HTTP 403"));
    }

    #[test]
    fn attributes_of_the_namespace_from_an_answer() {
        let answer: GuestAttributesAnswer = serde_json::from_value(serde_json::json!({
            "kind": "compute#guestAttributes",
            "queryPath": "gce-service-proxy/",
            "queryValue": {"items": [
                {"namespace": "gce-service-proxy", "key": "health", "value": "OK"},
                {"key": "findings", "value": ""},
                {"namespace": "other", "key": "health", "value": "FAILING"},
                {"namespace": "gce-service-proxy", "key": "proxy-version", "value": 7},
                {"namespace": "gce-service-proxy", "value": "no key"}
            ]}
        }))
        .unwrap();
        let a = attributes(answer);
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(a.get("health").map(String::as_str), Some("OK"));
        assert_eq!(a.get("findings").map(String::as_str), Some(""));
        let empty: GuestAttributesAnswer = serde_json::from_str("{}").unwrap();
        assert!(attributes(empty).is_empty());
    }

    #[test]
    fn listed_reads_zone_mig_and_guest_flag() {
        let i = serde_json::json!({
            "name": "vm-1",
            "zone": "https://www.googleapis.com/compute/v1/projects/p/zones/us-a",
            "metadata": {"items": [
                {"key": "created-by", "value": "projects/1/regions/us/instanceGroupManagers/web"},
                {"key": "enable-guest-attributes", "value": "FALSE"}
            ]}
        });
        let l = listed(&i, None).unwrap();
        assert_eq!(l.zone, "us-a");
        assert_eq!(l.mig.unwrap().location, "regions/us");
        assert_eq!(l.guest_attributes_enabled, Some(false));
        assert!(listed(&serde_json::json!({"name": "x"}), None).is_none());
    }
}
