//! The VM's own access token, from the metadata server
//! (`instance/service-accounts/default/token`), read through the agent's metadata client so it
//! honours `GCE_METADATA_HOST` and checks `Metadata-Flavor` like every other metadata read.
//!
//! The token is cached until shortly before it expires (the server hands out the same token
//! until ~5 minutes before expiry, so asking more often only costs requests). It is a secret: it
//! never appears in a log line, an error or a `Debug` print (errors carry the path and the
//! status, never a body that could hold it).

use std::time::{Duration, Instant};

use serde::Deserialize;
use thiserror::Error;

use crate::observe::metadata::{MetadataClient, MetadataError};

pub const TOKEN_PATH: &str = "instance/service-accounts/default/token";
pub const EMAIL_PATH: &str = "instance/service-accounts/default/email";
/// A cached token is renewed this long before it expires, so a request never carries a token
/// that expires in flight.
pub const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// Longest lifetime believed: a server claiming more is capped (tokens live an hour).
const MAX_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    #[error("the VM has no service account (metadata {TOKEN_PATH} not found)")]
    NoServiceAccount,
    #[error("cannot get the VM's token: {0}")]
    Metadata(String),
    #[error("the metadata server's token answer is unusable: {0}")]
    Malformed(&'static str),
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
    #[serde(default)]
    token_type: Option<String>,
}

/// A bearer token with the instant it stops being used.
#[derive(Clone)]
pub struct Token {
    secret: String,
    renew_at: Instant,
}

impl Token {
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Parses the metadata server's token JSON; `now` is when the request was sent.
pub fn parse_token(body: &str, now: Instant) -> Result<Token, TokenError> {
    let answer: TokenAnswer =
        serde_json::from_str(body).map_err(|_| TokenError::Malformed("not the token JSON"))?;
    if let Some(t) = &answer.token_type
        && !t.eq_ignore_ascii_case("bearer")
    {
        return Err(TokenError::Malformed("token_type is not Bearer"));
    }
    // A token goes into an HTTP header: visible ASCII only, bounded.
    let secret = answer.access_token;
    if secret.is_empty() || secret.len() > 4096 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Malformed(
            "access_token is empty, too long or not printable ASCII",
        ));
    }
    let lifetime = Duration::from_secs(answer.expires_in).min(MAX_LIFETIME);
    Ok(Token {
        secret,
        renew_at: now + lifetime.saturating_sub(RENEW_BEFORE),
    })
}

/// Tokens from one metadata server, cached.
pub struct MetadataTokens {
    client: MetadataClient,
    cached: tokio::sync::Mutex<Option<Token>>,
}

impl std::fmt::Debug for MetadataTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataTokens")
            .field("metadata", &self.client.authority())
            .finish_non_exhaustive()
    }
}

impl MetadataTokens {
    pub fn new(client: MetadataClient) -> Self {
        MetadataTokens {
            client,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The cached token while it is fresh, else a new one from the metadata server.
    pub async fn token(&self) -> Result<Token, TokenError> {
        let mut cached = self.cached.lock().await;
        let now = Instant::now();
        if let Some(t) = cached.as_ref()
            && now < t.renew_at
        {
            return Ok(t.clone());
        }
        let body = match self.client.get(TOKEN_PATH).await {
            Ok((body, _)) => body,
            Err(MetadataError::NotFound { .. }) => return Err(TokenError::NoServiceAccount),
            Err(e) => {
                return Err(TokenError::Metadata(crate::text::redact_secrets(
                    &e.to_string(),
                )));
            }
        };
        let token = parse_token(&body, now)?;
        *cached = Some(token.clone());
        Ok(token)
    }

    /// The default service account's email (named in IAM findings); `None` when the VM has
    /// none.
    pub async fn email(&self) -> Result<Option<String>, MetadataError> {
        let email = self.client.get_optional(EMAIL_PATH).await?;
        Ok(email
            .map(|e| crate::text::strip_control(e.trim()))
            .filter(|e| !e.is_empty() && e.len() <= 256))
    }
}

/// Cloud Logging's sink on a VM: the same tokens.
impl crate::publish::cloud_logging::TokenSource for std::sync::Arc<MetadataTokens> {
    async fn token(&self) -> Result<String, crate::publish::cloud_logging::CloudLoggingError> {
        MetadataTokens::token(self)
            .await
            .map(|t| t.secret)
            .map_err(|e| crate::publish::cloud_logging::CloudLoggingError::Token(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_schedules_renewal() {
        let now = Instant::now();
        let t = parse_token(
            r#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#,
            now,
        )
        .unwrap();
        assert_eq!(t.secret(), "ya29.x");
        assert_eq!(t.renew_at, now + Duration::from_secs(3599 - 300));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn a_short_lived_token_is_renewed_at_once_and_lifetimes_are_capped() {
        let now = Instant::now();
        let t = parse_token(r#"{"access_token":"a","expires_in":10}"#, now).unwrap();
        assert_eq!(t.renew_at, now);
        let t = parse_token(r#"{"access_token":"a","expires_in":999999}"#, now).unwrap();
        assert_eq!(t.renew_at, now + Duration::from_secs(3300));
    }

    #[test]
    fn rejects_bad_answers_without_echoing_them() {
        let now = Instant::now();
        for body in [
            "",
            "ya29.secret",
            r#"{"access_token":"","expires_in":1}"#,
            r#"{"access_token":"a b","expires_in":1}"#,
            r#"{"access_token":"ya29.s","expires_in":1,"token_type":"MAC"}"#,
        ] {
            let e = parse_token(body, now).unwrap_err();
            assert!(!e.to_string().contains("ya29"), "{e}");
        }
    }
}
