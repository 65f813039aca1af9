//! A loopback HTTP/1.1 server whose answers the test scripts, recording every request. Used as
//! the Cloud Logging and OAuth token endpoints, and as a hostile stand-in for Envoy's admin.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// A request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What to answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// status, content type, body
    Body(u16, &'static str, Vec<u8>),
    /// Wait this long, then answer.
    Delay(Duration, Box<Reply>),
    /// Never answer (the connection stays open until the server stops).
    Hang,
    /// Close the connection without answering.
    Drop,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply::Body(status, "application/json", body.into().into_bytes())
    }
    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply::Body(status, "text/plain", body.into().into_bytes())
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// The running server; stops on drop.
pub struct HttpStub {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    handler: Arc<Mutex<Arc<Handler>>>,
    _runtime: tokio::runtime::Runtime,
}

impl HttpStub {
    /// Starts on 127.0.0.1:0 with its own runtime thread.
    pub fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> HttpStub {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        Self::serve(listener, handler)
    }

    /// Like [`HttpStub::start`], with a listening socket that the kernel records as created
    /// by `uid` (as `/proc/net/tcp` shows it): what a server run by that user would have. The
    /// socket is made on a thread of its own whose file-system UID is `uid` (`setfsuid`,
    /// per thread; the socket's owner is its creator's fsuid), so nothing else in the test
    /// process changes identity. Needs root.
    pub fn start_owned_by(
        uid: u32,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> HttpStub {
        Self::serve(listener_owned_by(uid, "127.0.0.1:0"), handler)
    }

    fn serve(
        listener: std::net::TcpListener,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> HttpStub {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener).expect("listener")
        };
        let addr = listener.local_addr().expect("addr");
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let handler: Arc<Mutex<Arc<Handler>>> = Arc::new(Mutex::new(Arc::new(handler)));
        let (reqs, h) = (requests.clone(), handler.clone());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (reqs, h) = (reqs.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (reqs, h) = (reqs.clone(), h.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let rec = Recorded {
                                method: parts.method.to_string(),
                                path: parts.uri.to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect(),
                                body: body.to_vec(),
                                at: Instant::now(),
                            };
                            let handler = h.lock().unwrap().clone();
                            let mut reply = handler(&rec);
                            reqs.lock().unwrap().push(rec);
                            loop {
                                match reply {
                                    Reply::Delay(d, next) => {
                                        tokio::time::sleep(d).await;
                                        reply = *next;
                                    }
                                    Reply::Hang => std::future::pending::<()>().await,
                                    Reply::Drop => return Err(std::io::Error::other("dropped")),
                                    Reply::Body(status, ctype, body) => {
                                        return Ok::<_, std::io::Error>(
                                            Response::builder()
                                                .status(status)
                                                .header("content-type", ctype)
                                                .body(Full::new(Bytes::from(body)))
                                                .unwrap(),
                                        );
                                    }
                                }
                            }
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        HttpStub {
            addr,
            requests,
            handler,
            _runtime: runtime,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Replaces the handler.
    pub fn set_handler(&self, handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        *self.handler.lock().unwrap() = Arc::new(handler);
    }

    /// Waits (bounded) until `pred` holds over the recorded requests.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Recorded]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if pred(&self.requests.lock().unwrap()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        pred(&self.requests.lock().unwrap())
    }
}

/// A TCP listener on `addr` whose owner, as `/proc/net/tcp` shows it, is `uid` (see
/// [`HttpStub::start_owned_by`]). Panics when it cannot be made.
pub fn listener_owned_by(uid: u32, addr: &str) -> std::net::TcpListener {
    let addr = addr.to_owned();
    std::thread::spawn(move || {
        // setfsuid returns the previous value and cannot report failure: check the result.
        nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
        let now = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
        assert_eq!(now.as_raw(), uid, "setfsuid({uid}) needs root");
        std::net::TcpListener::bind(&addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
    })
    .join()
    .expect("the socket thread")
}
