//! A small HTTP/1.1 client on hyper for the two local HTTP peers the agent reads (Envoy's admin
//! and the metadata server): a deadline on the whole exchange, and a cap on the body so a
//! hostile or broken peer cannot make us hang or balloon. One connection per request, or (a
//! [`Peer::keep_alive`], Envoy's admin) one kept open across a poll's requests: a connection
//! costs the agent and Envoy a socket, a task and hyper's buffers each time.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HttpError {
    #[error("cannot connect to {authority}: {reason}")]
    Connect { authority: String, reason: String },
    #[error("no answer from {authority} within {timeout:?}")]
    Timeout {
        authority: String,
        timeout: Duration,
    },
    #[error("response from {authority} is larger than {limit} bytes")]
    TooLarge { authority: String, limit: usize },
    #[error("HTTP exchange with {authority} failed: {reason}")]
    Protocol { authority: String, reason: String },
}

/// What came back: status, headers, body (at most the cap).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An idle connection older than this is not used again (the daemon closes its admin
/// connection after each poll anyway; this bounds any other use).
pub const KEEP_IDLE_MAX: Duration = Duration::from_secs(30);

/// How long looked-up addresses are used before the name is looked up again. The metadata
/// server's name (`metadata.google.internal`, in `/etc/hosts` or answered by the VM's
/// resolver) was looked up on tokio's blocking pool for every request, seven a poll; its
/// address is fixed on Compute Engine, and the bound still follows a change of `/etc/hosts`.
pub const RESOLVED_TTL: Duration = Duration::from_secs(300);

/// One HTTP peer (`host:port`) of a client: its addresses, looked up once and kept for
/// [`RESOLVED_TTL`] or until none of them can be connected to. Shared by a client's clones.
#[derive(Debug)]
pub struct Peer {
    authority: String,
    resolved: Mutex<Option<(Arc<[SocketAddr]>, Instant)>>,
    /// Held while the name is looked up: requests that find nothing kept at the same time wait
    /// for that one lookup instead of making their own. Each lookup takes a thread of tokio's
    /// blocking pool, and the identity's seven requests at once, every time the kept addresses
    /// expired, kept seven idle threads (stacks, and arenas without the unit's malloc
    /// environment) alive for the agent's life (issue 13).
    lookup: tokio::sync::Mutex<()>,
    /// `Some` when connections are kept open between requests ([`Peer::keep_alive`]): the
    /// idle one, if any.
    idle: Option<Mutex<Option<Idle>>>,
}

impl Peer {
    /// A peer with a connection per request.
    pub fn new(authority: &str) -> Peer {
        Peer {
            authority: authority.to_owned(),
            resolved: Mutex::new(None),
            lookup: tokio::sync::Mutex::new(()),
            idle: None,
        }
    }

    /// A peer whose connection is kept open after a whole answer and used for the next
    /// request (at most [`KEEP_IDLE_MAX`] later), until [`release`](Self::release) closes it.
    /// Requests at the same time each get their own connection; one is kept.
    pub fn keep_alive(authority: &str) -> Peer {
        Peer {
            idle: Some(Mutex::new(None)),
            ..Peer::new(authority)
        }
    }

    /// Closes the idle connection, if any (the next request opens a new one).
    pub fn release(&self) {
        drop(self.take_idle());
    }

    /// Whether a connection is kept open now.
    pub fn has_idle(&self) -> bool {
        self.idle
            .as_ref()
            .and_then(|slot| slot.lock().ok().map(|idle| idle.is_some()))
            .unwrap_or(false)
    }

    /// The idle connection, when there is one still open and not too old.
    fn take_idle(&self) -> Option<Idle> {
        let idle = self.idle.as_ref()?.lock().ok()?.take()?;
        (idle.since.elapsed() < KEEP_IDLE_MAX && !idle.sender.is_closed()).then_some(idle)
    }

    /// Keeps `idle` for the next request, unless the answer closes it or one is kept already.
    fn put_idle(&self, idle: Idle, resp: &Response) {
        let closing = resp
            .headers
            .get_all(hyper::header::CONNECTION)
            .iter()
            .any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
            });
        if closing || idle.sender.is_closed() {
            return;
        }
        if let Some(Ok(mut slot)) = self.idle.as_ref().map(|s| s.lock())
            && slot.is_none()
        {
            *slot = Some(Idle {
                since: Instant::now(),
                ..idle
            });
        }
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The kept addresses, when younger than [`RESOLVED_TTL`].
    pub fn resolved(&self) -> Option<Arc<[SocketAddr]>> {
        let kept = self.resolved.lock().ok()?;
        let (addrs, at) = kept.as_ref()?;
        (at.elapsed() < RESOLVED_TTL).then(|| Arc::clone(addrs))
    }

    fn keep(&self, addrs: Option<Arc<[SocketAddr]>>) {
        if let Ok(mut kept) = self.resolved.lock() {
            *kept = addrs.map(|a| (a, Instant::now()));
        }
    }

    /// Connects through the kept addresses (looked up first when none are kept; a literal
    /// address is parsed, not looked up). When no address answers, they are forgotten: the
    /// next connection looks the name up again.
    async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        let addrs = match self.resolved() {
            Some(a) => a,
            None => {
                let _one_lookup = self.lookup.lock().await;
                match self.resolved() {
                    Some(a) => a,
                    None => {
                        let a: Arc<[SocketAddr]> = tokio::net::lookup_host(self.authority.as_str())
                            .await?
                            .collect();
                        self.keep(Some(Arc::clone(&a)));
                        a
                    }
                }
            }
        };
        let connected = crate::observe::own_traffic::connect_any(&addrs, &self.authority).await;
        if connected.is_err() {
            self.keep(None);
        }
        connected
    }

    /// [`request`] to this peer, through its kept addresses.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response, HttpError> {
        let exchange = exchange(
            self,
            method,
            &self.authority,
            path_and_query,
            headers,
            body,
            max_body,
        );
        deadline(&self.authority, timeout, exchange).await
    }
}

async fn deadline(
    authority: &str,
    timeout: Duration,
    exchange: impl Future<Output = Result<Response, HttpError>>,
) -> Result<Response, HttpError> {
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout {
            authority: authority.to_owned(),
            timeout,
        }),
    }
}

/// One request to `authority` (`host:port`) on a connection of its own (the name looked up
/// for it). `timeout` bounds connect, headers and body.
pub async fn request(
    method: Method,
    authority: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
    timeout: Duration,
    max_body: usize,
) -> Result<Response, HttpError> {
    Peer::new(authority)
        .request(method, path_and_query, headers, body, timeout, max_body)
        .await
}

/// `GET` shorthand.
pub async fn get(
    authority: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
    max_body: usize,
) -> Result<Response, HttpError> {
    request(
        Method::GET,
        authority,
        path_and_query,
        headers,
        None,
        timeout,
        max_body,
    )
    .await
}

/// hyper's largest read buffer for one connection.
const READ_BUF_MAX: usize = 64 << 10;

async fn exchange(
    peer: &Peer,
    method: Method,
    authority: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
    max_body: usize,
) -> Result<Response, HttpError> {
    let protocol = |reason: String| HttpError::Protocol {
        authority: authority.to_owned(),
        reason,
    };
    let request = || {
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path_and_query)
            .header(hyper::header::HOST, authority);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder
            .body(Full::new(body.clone().unwrap_or_default()))
            .map_err(|e| protocol(e.to_string()))
    };
    if let Some(mut idle) = peer.take_idle() {
        // The peer may have closed a kept connection since its last answer (a restart, an
        // idle timeout): a request that could be sent twice (GET, HEAD) and failed on it
        // before any answer is sent again on a new connection.
        match send(&mut idle.sender, request()?, authority, max_body).await {
            Ok(resp) => {
                peer.put_idle(idle, &resp);
                return Ok(resp);
            }
            Err(Failed::BeforeAnswer(_)) if matches!(method, Method::GET | Method::HEAD) => {}
            Err(Failed::BeforeAnswer(e) | Failed::After(e)) => return Err(e),
        }
    }
    let stream = peer.connect().await.map_err(|e| HttpError::Connect {
        authority: authority.to_owned(),
        reason: e.to_string(),
    })?;
    let _ = stream.set_nodelay(true);
    // A small read buffer (hyper's grows to ~400 KB on a big body): the body is kept by us.
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(READ_BUF_MAX)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| protocol(e.to_string()))?;
    // The connection runs beside the exchange and is aborted with it (also on timeout), or
    // kept idle with it. It is not raced against the response: a peer that sends
    // `Connection: close` ends the connection future before we have read the body.
    let conn_task = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let resp = send(&mut sender, request()?, authority, max_body)
        .await
        .map_err(|(Failed::BeforeAnswer(e) | Failed::After(e))| e)?;
    // Kept only by a keep-alive peer; otherwise dropped here, which closes the connection.
    let idle = Idle {
        sender,
        _conn: conn_task,
        since: Instant::now(),
    };
    peer.put_idle(idle, &resp);
    Ok(resp)
}

/// How an exchange failed: before any answer came (the request may not have reached the
/// peer), or after.
enum Failed {
    BeforeAnswer(HttpError),
    After(HttpError),
}

/// One request on an open connection, its body read whole (so the connection can carry the
/// next).
async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
    authority: &str,
    max_body: usize,
) -> Result<Response, Failed> {
    let protocol = |reason: String| HttpError::Protocol {
        authority: authority.to_owned(),
        reason,
    };
    sender
        .ready()
        .await
        .map_err(|e| Failed::BeforeAnswer(protocol(e.to_string())))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| Failed::BeforeAnswer(protocol(e.to_string())))?;
    let (parts, incoming) = resp.into_parts();
    let body = read_capped(incoming, max_body)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge => HttpError::TooLarge {
                authority: authority.to_owned(),
                limit: max_body,
            },
            ReadError::Body(reason) => protocol(reason),
        })
        .map_err(Failed::After)?;
    Ok(Response {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A connection kept open after a whole answer, for the next request to the same peer.
struct Idle {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    _conn: AbortOnDrop,
    since: Instant,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").field("since", &self.since).finish()
    }
}

/// Aborts the connection task when the request is done or abandoned.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum ReadError {
    TooLarge,
    Body(String),
}

/// Reads frames until the end or until more than `max` bytes arrived (then stops reading), and
/// returns the body in one buffer of its exact size. Envoy's admin answers are chunked (no
/// length ahead). Small chunks are copied into segments of [`SEGMENT`] bytes as they come (a
/// peer sending 1-byte chunks must not cost a `Bytes` handle, and a pin on hyper's read buffer,
/// per byte); big ones are kept as they are. The segments are joined once at the end: growing
/// one buffer by doubling would hold up to three times a megabyte-sized config dump at once.
async fn read_capped(mut body: Incoming, max: usize) -> Result<Bytes, ReadError> {
    let mut body_chunks = Coalesced::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Body(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if body_chunks.len + data.len() > max {
                return Err(ReadError::TooLarge);
            }
            body_chunks.push(data);
        }
    }
    Ok(body_chunks.finish())
}

/// Segment size for coalescing small chunks.
const SEGMENT: usize = 64 << 10;

#[derive(Default)]
struct Coalesced {
    done: Vec<Bytes>,
    open: BytesMut,
    len: usize,
}

impl Coalesced {
    fn push(&mut self, data: Bytes) {
        self.len += data.len();
        if data.len() >= SEGMENT / 4 {
            self.seal();
            self.done.push(data);
            return;
        }
        if self.open.len() + data.len() > SEGMENT {
            self.seal();
        }
        // Grows by doubling up to one segment: a small body stays small.
        self.open.extend_from_slice(&data);
    }

    /// The open segment becomes a finished one, trimmed to its length.
    fn seal(&mut self) {
        if !self.open.is_empty() {
            let seg = std::mem::take(&mut self.open);
            // Copied only when most of its capacity would be held for nothing.
            if seg.capacity() - seg.len() > seg.len() {
                self.done.push(Bytes::copy_from_slice(&seg));
            } else {
                self.done.push(seg.freeze());
            }
        }
    }

    fn finish(mut self) -> Bytes {
        self.seal();
        if self.done.len() == 1 {
            return self.done.pop().unwrap_or_default();
        }
        let mut buf = BytesMut::with_capacity(self.len);
        for c in self.done.drain(..) {
            buf.extend_from_slice(&c);
        }
        buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn serve_once(response: &'static [u8]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(response).await;
            // Keep the socket open to exercise timeouts where the response is incomplete.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        addr
    }

    #[tokio::test]
    async fn reads_a_body() {
        let addr = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello").await;
        let r = get(&addr, "/x", &[], Duration::from_secs(2), 100)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"hello");
        assert_eq!(r.header("x-a"), Some("b"));
    }

    #[tokio::test]
    async fn caps_the_body() {
        let addr =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n01234567890123456789").await;
        let e = get(&addr, "/x", &[], Duration::from_secs(2), 10)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::TooLarge { limit: 10, .. }), "{e}");
    }

    #[tokio::test]
    async fn times_out_on_a_silent_peer() {
        let addr = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n0123").await;
        let e = get(&addr, "/x", &[], Duration::from_millis(300), 100)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
    }

    #[test]
    fn tiny_chunks_are_coalesced() {
        let mut c = Coalesced::default();
        for i in 0..200_000u32 {
            c.push(Bytes::copy_from_slice(&[(i % 251) as u8]));
        }
        // 200,000 one-byte chunks: a handful of 64 KiB segments, not 200,000 handles.
        assert!(c.done.len() <= 4, "{} segments", c.done.len());
        let big = Bytes::from(vec![7u8; SEGMENT]);
        c.push(big.clone());
        c.push(Bytes::from_static(b"end"));
        let body = c.finish();
        assert_eq!(body.len(), 200_000 + SEGMENT + 3);
        assert!(
            body.iter()
                .take(200_000)
                .enumerate()
                .all(|(i, b)| *b == (i % 251) as u8)
        );
        assert!(body.ends_with(b"end"));
        assert_eq!(Coalesced::default().finish().len(), 0);
    }

    #[tokio::test]
    async fn a_body_in_one_byte_chunks_arrives_whole() {
        let mut wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for i in 0..5_000u32 {
            wire.extend_from_slice(format!("1\r\n{}\r\n", i % 10).as_bytes());
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let addr = serve_once(Box::leak(wire.into_boxed_slice())).await;
        let r = get(&addr, "/x", &[], Duration::from_secs(10), 10_000)
            .await
            .unwrap();
        assert_eq!(r.body.len(), 5_000);
        assert!(
            r.body
                .iter()
                .enumerate()
                .all(|(i, b)| *b == b'0' + (i % 10) as u8)
        );
    }

    #[tokio::test]
    async fn a_peer_keeps_its_addresses_until_none_answers() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let port = l.local_addr().unwrap().port();
        // One answer, then the listener is closed.
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
        });
        // A name, looked up on the first request and kept.
        let peer = Peer::new(&format!("localhost:{port}"));
        assert!(peer.resolved().is_none());
        let r = peer
            .request(Method::GET, "/x", &[], None, Duration::from_secs(2), 100)
            .await
            .unwrap();
        assert_eq!(&r.body[..], b"ok");
        let kept = peer.resolved().expect("the addresses are kept");
        assert!(kept.iter().any(|a| a.to_string() == addr), "{kept:?}");
        server.await.unwrap();
        // Nothing listens any more: the connection fails and the addresses are forgotten, so
        // the next request looks the name up again.
        let e = peer
            .request(Method::GET, "/x", &[], None, Duration::from_secs(2), 100)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e}");
        assert!(peer.resolved().is_none());
    }

    /// A keep-alive server: answers every request on a connection with `ok`, and counts the
    /// connections. With `close_after`, it closes each connection (without saying so) after
    /// that many answers, as a restarted or idle-timing-out peer would.
    async fn keep_alive_server(
        close_after: Option<usize>,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut answered = 0;
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while close_after.is_none_or(|n| answered < n) {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .await;
                            answered += 1;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn get_ok(peer: &Peer) {
        let r = peer
            .request(Method::GET, "/x", &[], None, Duration::from_secs(2), 100)
            .await
            .unwrap();
        assert_eq!(&r.body[..], b"ok");
    }

    #[tokio::test]
    async fn a_kept_connection_carries_the_requests_until_released() {
        use std::sync::atomic::Ordering;
        let (addr, accepted) = keep_alive_server(None).await;
        let peer = Peer::keep_alive(&addr);
        for _ in 0..4 {
            get_ok(&peer).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert!(peer.has_idle());
        peer.release();
        assert!(!peer.has_idle());
        get_ok(&peer).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // A peer without keep-alive: a connection each.
        let once = Peer::new(&addr);
        get_ok(&once).await;
        get_ok(&once).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        assert!(!once.has_idle());
    }

    #[tokio::test]
    async fn a_kept_connection_closed_by_the_peer_is_opened_again() {
        use std::sync::atomic::Ordering;
        let (addr, accepted) = keep_alive_server(Some(1)).await;
        let peer = Peer::keep_alive(&addr);
        for i in 1..=3 {
            get_ok(&peer).await;
            assert_eq!(accepted.load(Ordering::SeqCst), i);
        }
    }

    #[tokio::test]
    async fn connection_close_is_not_kept() {
        let addr =
            serve_once(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
                .await;
        let peer = Peer::keep_alive(&addr);
        get_ok(&peer).await;
        assert!(!peer.has_idle());
    }

    #[tokio::test]
    async fn refused_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let e = get(&addr, "/x", &[], Duration::from_secs(2), 100)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e}");
    }

    #[tokio::test]
    async fn connection_close_responses_are_read() {
        let addr =
            serve_once(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
                .await;
        let r = get(&addr, "/x", &[], Duration::from_secs(2), 100)
            .await
            .unwrap();
        assert_eq!(&r.body[..], b"ok");
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_error() {
        let addr = serve_once(b"\x00\x01garbage\r\n\r\n").await;
        let e = get(&addr, "/x", &[], Duration::from_secs(2), 100)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Protocol { .. }), "{e}");
    }
}
