//! The HTTP client for Envoy's admin: one request per endpoint, bodies capped, errors typed.

use std::sync::Arc;

use super::*;

/// A client for one Envoy admin endpoint. Cheap to clone; the clones (and the clients made
/// with [`with_max_body`](Self::with_max_body)) share one connection, kept open between
/// requests until [`release`](Self::release): a poll's four reads cost one connection, not
/// four.
#[derive(Debug, Clone)]
pub struct AdminClient {
    peer: Arc<http::Peer>,
    timeout: Duration,
    max_body: usize,
}

impl AdminClient {
    /// `timeout` bounds each request (connect to last body byte); `max_body` caps each answer.
    pub fn new(url: &AdminUrl, timeout: Duration, max_body: usize) -> Self {
        AdminClient {
            peer: Arc::new(http::Peer::keep_alive(&url.authority())),
            timeout,
            max_body,
        }
    }

    /// The same admin and connection, with another cap on each answer.
    pub fn with_max_body(&self, max_body: usize) -> Self {
        AdminClient {
            max_body,
            ..self.clone()
        }
    }

    /// Closes the kept connection (the daemon does after each poll's reads: Envoy is not held
    /// to an idle connection between polls, and the next poll connects afresh).
    pub fn release(&self) {
        self.peer.release();
    }

    /// Whether a connection is kept open now.
    pub fn holds_connection(&self) -> bool {
        self.peer.has_idle()
    }

    async fn get(
        &self,
        endpoint: &'static str,
        path_and_query: &str,
    ) -> Result<http::Response, AdminError> {
        self.peer
            .request(
                hyper::Method::GET,
                path_and_query,
                &[],
                None,
                self.timeout,
                self.max_body,
            )
            .await
            .map_err(|e| AdminError::from_http(endpoint, e))
    }

    async fn get_ok(
        &self,
        endpoint: &'static str,
        path_and_query: &str,
    ) -> Result<bytes::Bytes, AdminError> {
        let r = self.get(endpoint, path_and_query).await?;
        if r.status != hyper::StatusCode::OK {
            return Err(status_error(endpoint, &r));
        }
        Ok(r.body)
    }

    pub async fn server_info(&self) -> Result<ServerInfo, AdminError> {
        let body = self.get_ok(PATH_SERVER_INFO, PATH_SERVER_INFO).await?;
        parse_server_info(&body)
    }

    /// `/ready`: 200 `LIVE`, or 503 with the state; any other status is an error.
    pub async fn ready(&self) -> Result<Readiness, AdminError> {
        let r = self.get(PATH_READY, PATH_READY).await?;
        parse_ready(r.status.as_u16(), &r.body).ok_or_else(|| status_error(PATH_READY, &r))
    }

    pub async fn dynamic_listeners(&self) -> Result<Vec<DynamicListener>, AdminError> {
        let body = self
            .get_ok(PATH_DYNAMIC_LISTENERS, PATH_DYNAMIC_LISTENERS)
            .await?;
        parse_listeners(&body)
    }

    /// [`Self::dynamic_listeners`], parsed only when the body differs from the last one
    /// `parses` saw (see [`ListenerParses`]).
    pub async fn dynamic_listeners_with(
        &self,
        parses: &ListenerParses,
    ) -> Result<std::sync::Arc<Vec<DynamicListener>>, AdminError> {
        match self
            .get_ok(PATH_DYNAMIC_LISTENERS, PATH_DYNAMIC_LISTENERS)
            .await
        {
            Ok(body) => parses.parse(&body),
            Err(e) => {
                parses.forget();
                Err(e)
            }
        }
    }

    pub async fn clusters(&self) -> Result<Vec<ClusterStatus>, AdminError> {
        let body = self.get_ok(PATH_CLUSTERS, PATH_CLUSTERS).await?;
        parse_clusters(&body)
    }

    pub async fn stats(&self) -> Result<EnvoyStats, AdminError> {
        let path = format!(
            "/stats?filter={}",
            crate::text::percent_encode(STATS_FILTER)
        );
        let body = self.get_ok(PATH_STATS, &path).await?;
        let text = std::str::from_utf8(&body).map_err(|e| malformed(PATH_STATS, e))?;
        Ok(parse_stats(text))
    }
}

pub(super) fn status_error(endpoint: &'static str, r: &http::Response) -> AdminError {
    AdminError::Status {
        endpoint,
        status: r.status.as_u16(),
        body: one_line(&r.body, ERROR_BODY_MAX),
    }
}

pub(super) fn one_line(bytes: &[u8], max: usize) -> String {
    let text = crate::text::lossy_bounded(bytes, max.saturating_mul(2));
    crate::text::truncate_with_ellipsis(crate::text::strip_control(&text).trim(), max)
}

pub(super) fn from_json<'a, T: Deserialize<'a>>(
    endpoint: &'static str,
    body: &'a [u8],
) -> Result<T, AdminError> {
    // Checked up front: serde_json does not validate UTF-8 inside strings it skips.
    let text = std::str::from_utf8(body).map_err(|e| malformed(endpoint, e))?;
    // serde would also build a struct from an array: every admin answer we read is an object.
    if !text.trim_start().starts_with('{') {
        return Err(malformed(endpoint, "not a JSON object"));
    }
    serde_json::from_str(text).map_err(|e| malformed(endpoint, e))
}
