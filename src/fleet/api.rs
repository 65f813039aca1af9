//! Calls to Google's REST APIs for `fleet`: a bearer token (Application Default Credentials,
//! else the metadata server's token), JSON in and out, Google's error shape read into
//! [`ApiError`], bounded in time and size, every request counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::observe::metadata::MetadataClient;
use crate::text::redact_secrets;

const SCOPES: &[&str] = &["https://www.googleapis.com/auth/cloud-platform"];
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A page of 500 instances with their metadata is well under this.
const MAX_BODY: usize = 32 << 20;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("HTTP {code}{}: {message}", reason.as_deref().map(|r| format!(" {r}")).unwrap_or_default())]
    Status {
        code: u16,
        reason: Option<String>,
        message: String,
    },
    #[error("{0}")]
    Transport(String),
    #[error("no credentials: {0}")]
    Credentials(String),
}

impl ApiError {
    /// 429, or 403 `rateLimitExceeded` / `userRateLimitExceeded`: slow down and retry.
    pub fn is_rate_limited(&self) -> bool {
        match self {
            ApiError::Status { code: 429, .. } => true,
            ApiError::Status {
                code: 403,
                reason: Some(r),
                ..
            } => r == "rateLimitExceeded" || r == "userRateLimitExceeded",
            _ => false,
        }
    }

    pub fn code(&self) -> Option<u16> {
        match self {
            ApiError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Reads Google's `{"error": {"code", "message", "errors": [{"reason"}], "status"}}`.
pub fn parse_error(code: u16, body: &[u8]) -> ApiError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = v.pointer("/error").unwrap_or(&super::NULL);
    let reason = e
        .pointer("/errors")
        .unwrap_or(&super::NULL)
        .get(0)
        .and_then(|x| x.pointer("/reason").unwrap_or(&super::NULL).as_str())
        .map(str::to_owned);
    let message = e
        .pointer("/message")
        .unwrap_or(&super::NULL)
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body.get(..300).unwrap_or(body)).into_owned());
    ApiError::Status {
        code,
        reason,
        message: crate::fleet::clean(&redact_secrets(&message)),
    }
}

enum Auth {
    Adc(tokio::sync::Mutex<Option<Arc<dyn gcp_auth::TokenProvider>>>),
    Metadata {
        client: MetadataClient,
        cached: tokio::sync::Mutex<Option<(String, Instant)>>,
    },
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One client for all of a run's calls.
pub struct Api {
    client: HttpsClient,
    auth: Auth,
    requests: AtomicU64,
}

fn adc_file() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("CLOUDSDK_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".config/gcloud"))
        })?;
    Some(base.join("application_default_credentials.json"))
}

impl Api {
    /// Application Default Credentials when a key file or gcloud's ADC file is there (a
    /// workstation, Cloud Shell), else the metadata server at `metadata_host` (a VM;
    /// `GCE_METADATA_HOST` honoured, which gcp_auth's own metadata path is not).
    pub fn new(metadata_host: &str) -> Result<Api, ApiError> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| ApiError::Transport(format!("no TLS root certificates: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        let adc = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").is_some()
            || adc_file().is_some_and(|p| p.is_file());
        let auth = if adc {
            Auth::Adc(tokio::sync::Mutex::new(None))
        } else {
            Auth::Metadata {
                client: MetadataClient::new(metadata_host, Duration::from_secs(5)),
                cached: tokio::sync::Mutex::new(None),
            }
        };
        Ok(Api {
            client,
            auth,
            requests: AtomicU64::new(0),
        })
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    async fn token(&self) -> Result<String, ApiError> {
        let clean = |e: String| ApiError::Credentials(redact_secrets(&e));
        match &self.auth {
            Auth::Adc(provider) => {
                let mut guard = provider.lock().await;
                let p = match guard.as_ref() {
                    Some(p) => p.clone(),
                    None => {
                        let p: Arc<dyn gcp_auth::TokenProvider> =
                            match gcp_auth::CustomServiceAccount::from_env() {
                                Ok(Some(sa)) => Arc::new(sa),
                                Ok(None) => Arc::new(
                                    gcp_auth::ConfigDefaultCredentials::new()
                                        .await
                                        .map_err(|e| clean(e.to_string()))?,
                                ),
                                Err(e) => return Err(clean(e.to_string())),
                            };
                        *guard = Some(p.clone());
                        p
                    }
                };
                drop(guard);
                p.token(SCOPES)
                    .await
                    .map(|t| t.as_str().to_owned())
                    .map_err(|e| clean(e.to_string()))
            }
            Auth::Metadata { client, cached } => {
                let mut guard = cached.lock().await;
                if let Some((t, until)) = guard.as_ref()
                    && Instant::now() < *until
                {
                    return Ok(t.clone());
                }
                let (body, _) = client
                    .get("instance/service-accounts/default/token")
                    .await
                    .map_err(|e| {
                        clean(format!(
                            "no Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud auth application-default login) and the metadata server gave no token: {e}"
                        ))
                    })?;
                let v: Value = serde_json::from_str(&body)
                    .map_err(|_| clean("the metadata server's token is not JSON".into()))?;
                let token = v
                    .pointer("/access_token")
                    .unwrap_or(&super::NULL)
                    .as_str()
                    .ok_or_else(|| {
                        clean("the metadata server's answer has no access_token".into())
                    })?
                    .to_owned();
                let ttl = v
                    .pointer("/expires_in")
                    .unwrap_or(&super::NULL)
                    .as_u64()
                    .unwrap_or(300)
                    .saturating_sub(60);
                *guard = Some((token.clone(), Instant::now() + Duration::from_secs(ttl)));
                Ok(token)
            }
        }
    }

    pub async fn get_json(&self, url: &str) -> Result<Value, ApiError> {
        self.call(Method::GET, url, None).await
    }

    /// A GET whose answer is read straight into `T` (no `Value` tree of the whole answer).
    pub async fn get<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, ApiError> {
        self.call(Method::GET, url, None).await
    }

    pub async fn post_json(&self, url: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(Method::POST, url, Some(body.to_string())).await
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
        body: Option<String>,
    ) -> Result<T, ApiError> {
        let token = self.token().await?;
        let req = Request::builder()
            .method(method)
            .uri(url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("service-proxy-agent/", env!("CARGO_PKG_VERSION"), " fleet"),
            )
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ApiError::Transport(format!("bad request URL {url}: {e}")))?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ApiError::Transport(redact_secrets(&format!("{url}: {e}"))))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| ApiError::Transport(format!("{url}: reading the answer: {e}")))?;
            if (200..300).contains(&status) {
                serde_json::from_slice(&body)
                    .map_err(|e| ApiError::Transport(format!("{url}: the answer is not JSON: {e}")))
            } else {
                Err(parse_error(status, &body))
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::Transport(format!(
                    "{url}: no answer within {REQUEST_TIMEOUT:?}"
                )))
            })
    }
}

/// `application/x-www-form-urlencoded`-style escaping of a query value.
pub fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_errors_and_rate_limits() {
        let e = parse_error(
            403,
            br#"{"error":{"code":403,"message":"Quota exceeded","errors":[{"reason":"rateLimitExceeded"}]}}"#,
        );
        assert!(e.is_rate_limited());
        assert_eq!(e.to_string(), "HTTP 403 rateLimitExceeded: Quota exceeded");
        let e = parse_error(403, br#"{"error":{"code":403,"message":"Required permission","errors":[{"reason":"forbidden"}]}}"#);
        assert!(!e.is_rate_limited());
        assert!(parse_error(429, b"slow down").is_rate_limited());
        assert_eq!(parse_error(404, b"<html>").code(), Some(404));
        assert_eq!(escape("labels.a = \"on\""), "labels.a%20%3D%20%22on%22");
    }
}
