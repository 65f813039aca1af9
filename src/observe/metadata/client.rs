//! The HTTP client for the metadata server: the VM's values, instance attributes and guest
//! attributes, with the flavor header checked both ways and every name validated before it goes
//! into a URL.

use super::*;

/// A client for one metadata server. Cheap to clone (clones share the server's address, looked
/// up once); one connection per request.
#[derive(Debug, Clone)]
pub struct MetadataClient {
    peer: std::sync::Arc<http::Peer>,
    timeout: Duration,
}

impl MetadataClient {
    /// `host` is `host[:port]` (port 80 when absent, as `GCE_METADATA_HOST` is used by Google's
    /// libraries); an `http://` prefix and a trailing `/` are tolerated, an empty host means the
    /// default. `timeout` bounds each request (a long poll gets its wait on top).
    pub fn new(host: &str, timeout: Duration) -> Self {
        MetadataClient {
            peer: std::sync::Arc::new(http::Peer::new(&authority_of(host))),
            timeout,
        }
    }

    /// `host:port` the requests go to.
    pub fn authority(&self) -> &str {
        self.peer.authority()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `GET /computeMetadata/v1/<path>`: the value and its `ETag`.
    pub async fn get(&self, path: &str) -> Result<(String, Option<String>), MetadataError> {
        let path = check_path(path)?;
        let resp = self.send(Method::GET, path, "", None, self.timeout).await?;
        value_of(path, &resp)
    }

    /// Like [`get`](Self::get), with a 404 meaning "not set".
    pub async fn get_optional(&self, path: &str) -> Result<Option<String>, MetadataError> {
        match self.get(path).await {
            Ok((v, _)) => Ok(Some(v)),
            Err(MetadataError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// An instance attribute (`instance/attributes/<key>`); `None` when not set.
    pub async fn instance_attribute(&self, key: &str) -> Result<Option<String>, MetadataError> {
        check_name("attribute key", key)?;
        self.get_optional(&format!("instance/attributes/{key}"))
            .await
    }

    /// Long poll: returns once the value's ETag differs from `last_etag` (with `None`, once it
    /// changes from what it is now), or after `timeout_sec` with the current value.
    pub async fn wait_for_change(
        &self,
        path: &str,
        last_etag: Option<&str>,
        timeout_sec: u64,
    ) -> Result<(String, Option<String>), MetadataError> {
        let path = check_path(path)?;
        let timeout_sec = timeout_sec.clamp(1, MAX_WAIT_SEC);
        let mut query = format!("?wait_for_change=true&timeout_sec={timeout_sec}");
        if let Some(etag) = last_etag {
            query.push_str("&last_etag=");
            query.push_str(&crate::text::percent_encode(etag));
        }
        // The server holds the answer up to timeout_sec: our deadline must outlast it.
        let deadline = Duration::from_secs(timeout_sec).saturating_add(self.timeout);
        let resp = self.send(Method::GET, path, &query, None, deadline).await?;
        value_of(path, &resp)
    }

    /// Everything the agent needs about its VM, fetched in parallel (one slow item costs one
    /// timeout, not seven). Fails only when an identity item (project, zone, instance) fails.
    pub async fn vm_metadata(&self) -> Result<VmMetadata, MetadataError> {
        let (project_id, project_number, instance_id, zone, network, scopes, service_proxy) = tokio::join!(
            self.get("project/project-id"),
            self.get("project/numeric-project-id"),
            self.get("instance/id"),
            self.get("instance/zone"),
            self.get("instance/network-interfaces/0/network"),
            self.get("instance/service-accounts/default/scopes"),
            self.service_proxy(),
        );
        let project_id = parse_project_id(&project_id?.0)
            .map_err(|reason| malformed("project/project-id", reason))?;
        let project_number = parse_number(&project_number?.0)
            .map_err(|reason| malformed("project/numeric-project-id", reason))?;
        let instance_id =
            parse_number(&instance_id?.0).map_err(|reason| malformed("instance/id", reason))?;
        let zone = parse_zone(&zone?.0).map_err(|reason| malformed("instance/zone", reason))?;
        let network = network.and_then(|(text, _)| {
            parse_network(&text)
                .map_err(|reason| malformed("instance/network-interfaces/0/network", reason))
        });
        let scopes = match scopes {
            Ok((text, _)) => Ok(parse_scopes(&text)),
            // No service account: no scopes, which the scope check reports.
            Err(MetadataError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        };
        Ok(VmMetadata {
            instance_id,
            zone,
            project_id,
            project_number,
            network,
            scopes,
            service_proxy,
        })
    }

    /// The `gce-service-proxy` attribute, parsed; `Ok(None)` when it is not set. The one
    /// item the daemon reads every poll once it holds the VM's identity (see
    /// [`KeptIdentity`]).
    pub async fn service_proxy(&self) -> Result<Option<ServiceProxyConfig>, MetadataError> {
        self.get_optional(&sp_path())
            .await
            .and_then(|v| v.as_deref().map(parse_service_proxy).transpose())
    }

    /// `PUT instance/guest-attributes/<namespace>/<key>`. The value is made fit first (one
    /// line, no control characters, at most 1024 bytes).
    pub async fn put_guest_attribute(
        &self,
        namespace: &str,
        key: &str,
        value: &str,
    ) -> Result<(), MetadataError> {
        let path = guest_path(namespace, Some(key))?;
        let body = Bytes::from(text::attribute_value(value));
        let resp = self
            .send(Method::PUT, &path, "", Some(body), self.timeout)
            .await?;
        check_status(&path, &resp)
    }

    /// The attribute's value; `None` when it is not set.
    pub async fn get_guest_attribute(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<String>, MetadataError> {
        let path = guest_path(namespace, Some(key))?;
        let resp = self
            .send(Method::GET, &path, "", None, self.timeout)
            .await?;
        match value_of(&path, &resp) {
            Ok((v, _)) => Ok(Some(v)),
            Err(MetadataError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deleting an attribute that is not there is not an error.
    pub async fn delete_guest_attribute(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<(), MetadataError> {
        let path = guest_path(namespace, Some(key))?;
        let resp = self
            .send(Method::DELETE, &path, "", None, self.timeout)
            .await?;
        match check_status(&path, &resp) {
            Err(MetadataError::NotFound { .. }) => Ok(()),
            r => r,
        }
    }

    /// The keys set in `namespace` (empty when none, including an unknown namespace).
    pub async fn list_guest_attributes(
        &self,
        namespace: &str,
    ) -> Result<Vec<String>, MetadataError> {
        let path = guest_path(namespace, None)?;
        let resp = self
            .send(Method::GET, &path, "", None, self.timeout)
            .await?;
        match value_of(&path, &resp) {
            Ok((text, _)) => Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()),
            Err(MetadataError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// One exchange; checks the flavor of the answer, not its status.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<http::Response, MetadataError> {
        let target = format!("{BASE_PATH}{path}{query}");
        let resp = self
            .peer
            .request(
                method,
                &target,
                &[(FLAVOR_HEADER, FLAVOR)],
                body,
                timeout,
                MAX_BODY,
            )
            .await
            .map_err(|e| match e {
                HttpError::Connect { authority, reason } => MetadataError::Unreachable {
                    host: authority,
                    reason,
                },
                HttpError::Timeout { authority, timeout } => MetadataError::Timeout {
                    host: authority,
                    timeout,
                },
                HttpError::TooLarge { limit, .. } => MetadataError::TooLarge {
                    path: path.to_owned(),
                    limit,
                },
                HttpError::Protocol { authority, reason } => MetadataError::Protocol {
                    host: authority,
                    reason,
                },
            })?;
        let flavored = resp
            .header(FLAVOR_HEADER)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case(FLAVOR));
        if !flavored {
            return Err(MetadataError::NotMetadataServer {
                host: self.authority().to_owned(),
                status: resp.status.as_u16(),
            });
        }
        Ok(resp)
    }
}

pub(super) fn malformed(path: &str, reason: String) -> MetadataError {
    MetadataError::Malformed {
        path: path.to_owned(),
        reason,
    }
}

/// Maps a non-2xx answer to its error.
pub(super) fn check_status(path: &str, resp: &http::Response) -> Result<(), MetadataError> {
    if resp.status.is_success() {
        return Ok(());
    }
    if resp.status == StatusCode::NOT_FOUND {
        return Err(MetadataError::NotFound {
            path: path.to_owned(),
        });
    }
    let body = text::strip_control(&text::lossy_bounded(&resp.body, BODY_EXCERPT));
    if resp.status == StatusCode::FORBIDDEN
        && body.contains(GUEST_ATTRIBUTES_DISABLED_BODY.trim_end_matches('.'))
    {
        return Err(MetadataError::GuestAttributesDisabled);
    }
    Err(MetadataError::Status {
        path: path.to_owned(),
        status: resp.status.as_u16(),
        body: body.trim().to_owned(),
    })
}

pub(super) fn value_of(
    path: &str,
    resp: &http::Response,
) -> Result<(String, Option<String>), MetadataError> {
    check_status(path, resp)?;
    let text = std::str::from_utf8(&resp.body)
        .map_err(|_| malformed(path, "the value is not UTF-8".into()))?
        .to_owned();
    let etag = resp
        .header("etag")
        .map(str::trim)
        .filter(|e| !e.is_empty() && e.len() <= 128 && e.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned);
    Ok((text, etag))
}

/// `host[:port]` → `host:port` for the connection.
pub(super) fn authority_of(host: &str) -> String {
    let h = host.trim();
    let h = h.strip_prefix("http://").unwrap_or(h);
    let h = h.trim_end_matches('/');
    let h = if h.is_empty() { DEFAULT_HOST } else { h };
    if h.starts_with('[') {
        // [v6] or [v6]:port
        if h.contains("]:") {
            h.to_owned()
        } else {
            format!("{h}:80")
        }
    } else {
        match h.matches(':').count() {
            0 => format!("{h}:80"),
            1 => h.to_owned(),
            _ => format!("[{h}]:80"), // a bare IPv6 address
        }
    }
}

/// A metadata path relative to `/computeMetadata/v1/`: plain segments only, so that nothing the
/// caller passes can add a query, climb out of the tree or smuggle bytes into the request line.
pub(super) fn check_path(path: &str) -> Result<&str, MetadataError> {
    let p = path.trim_start_matches('/');
    let invalid = |rule| MetadataError::InvalidName {
        what: "metadata path",
        name: text::truncate_with_ellipsis(&text::strip_control(path), 80),
        rule,
    };
    if p.len() > MAX_PATH_LEN {
        return Err(invalid("too long"));
    }
    if !p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
    {
        return Err(invalid(
            "only A-Z, a-z, 0-9, '_', '-', '.' and '/' are allowed",
        ));
    }
    if p.split('/').any(|s| s == "." || s == "..") {
        return Err(invalid("'.' and '..' segments are not allowed"));
    }
    Ok(p)
}

/// Namespace and key names: `[A-Za-z0-9_-]`, as the server requires.
pub(super) fn check_name(what: &'static str, name: &str) -> Result<(), MetadataError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(MetadataError::InvalidName {
            what,
            name: text::truncate_with_ellipsis(&text::strip_control(name), 80),
            rule: "1 to 128 of A-Z, a-z, 0-9, '_' and '-'",
        })
    }
}

pub(super) fn guest_path(namespace: &str, key: Option<&str>) -> Result<String, MetadataError> {
    check_name("guest attribute namespace", namespace)?;
    match key {
        Some(k) => {
            check_name("guest attribute key", k)?;
            Ok(format!("instance/guest-attributes/{namespace}/{k}"))
        }
        None => Ok(format!("instance/guest-attributes/{namespace}/")),
    }
}
