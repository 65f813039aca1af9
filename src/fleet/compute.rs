//! `fleet --source compute`: list the VMs (aggregated list, per-zone lists, or a managed
//! instance group's members), then read each VM's `gce-service-proxy/` guest attributes,
//! concurrently, every request under one [`RateLimiter`]. A throttled request is retried after
//! the limiter's backoff; a VM whose attributes cannot be read is reported with the reason.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;

use super::api::{Api, ApiError, escape};
use super::limiter::RateLimiter;
use super::{MigRef, VmReport};

/// Attempts per request when Google keeps answering 429 (with the backoff, minutes).
const MAX_ATTEMPTS: u32 = 12;
/// Requests in flight at once; the rate limit, not this, sets the pace.
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
}

impl Budget {
    pub fn new(max_qps: u32) -> Budget {
        Budget {
            limiter: Mutex::new(RateLimiter::new(max_qps)),
        }
    }

    async fn acquire(&self) {
        loop {
            let wait = match self.limiter.lock() {
                Ok(mut l) => l.try_acquire(Instant::now()),
                Err(_) => Ok(()),
            };
            match wait {
                Ok(()) => return,
                Err(at) => tokio::time::sleep_until(at.into()).await,
            }
        }
    }

    /// Runs `call` under the limit, retrying while it is throttled.
    pub async fn call<F, Fut>(&self, mut call: F) -> Result<Value, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Value, ApiError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.acquire().await;
            let result = call().await;
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

/// Reads every listed VM's attributes. `progress(done, total)` is called as reads finish.
pub async fn read_all(
    api: Arc<Api>,
    budget: Arc<Budget>,
    q: &ComputeQuery,
    vms: Vec<Listed>,
    progress: Arc<dyn Fn(usize, usize) + Send + Sync>,
) -> Vec<VmReport> {
    let total = vms.len();
    let done = Arc::new(AtomicUsize::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut set = tokio::task::JoinSet::new();
    for (i, vm) in vms.into_iter().enumerate() {
        let (api, budget, sem, done, progress) = (
            api.clone(),
            budget.clone(),
            sem.clone(),
            done.clone(),
            progress.clone(),
        );
        let url = format!(
            "{}/compute/v1/projects/{}/zones/{}/instances/{}/getGuestAttributes?queryPath={}",
            q.endpoint,
            escape(&q.project),
            escape(&vm.zone),
            escape(&vm.name),
            escape(&format!("{NAMESPACE}/"))
        );
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let result = budget.call(|| api.get_json(&url)).await;
            let report = match result {
                Ok(v) => {
                    let attrs: BTreeMap<String, String> = v
                        .pointer("/queryValue/items")
                        .unwrap_or(&super::NULL)
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|i| {
                            i.pointer("/namespace")
                                .unwrap_or(&super::NULL)
                                .as_str()
                                .is_none_or(|n| n == NAMESPACE)
                        })
                        .filter_map(|i| {
                            Some((
                                i.pointer("/key")
                                    .unwrap_or(&super::NULL)
                                    .as_str()?
                                    .to_owned(),
                                i.pointer("/value")
                                    .unwrap_or(&super::NULL)
                                    .as_str()?
                                    .to_owned(),
                            ))
                        })
                        .collect();
                    VmReport::from_attributes(&vm.name, &vm.zone, vm.mig.clone(), &attrs)
                }
                Err(e) => VmReport::unread(
                    &vm.name,
                    &vm.zone,
                    vm.mig.clone(),
                    unread_reason(&e, vm.guest_attributes_enabled),
                ),
            };
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            progress(n, total);
            (i, report)
        });
    }
    let mut out: Vec<(usize, VmReport)> = Vec::with_capacity(total);
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            out.push(r);
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
