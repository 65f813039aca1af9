//! A small loopback HTTP endpoint to drive a running control plane from another process (the
//! demo, shell scripts): switch failures and the expected node, add and remove services.
//!
//! | request | body | effect |
//! |---|---|---|
//! | `GET /state` | | observations, failures, expected node, services, versions (JSON) |
//! | `POST /fail` | `{"code":5,"message":"...","streams":"ads\|lrs\|all"}` | close streams with that status (default `ads`) |
//! | `POST /recover` | | serve normally again |
//! | `POST /expect` | `{"network":"N","project_number":"P"}` | only that node gets configuration |
//! | `DELETE /expect` | | no node check |
//! | `GET /services` | | the services served (JSON) |
//! | `POST /services/add` | `VIP:PORT` (also `VIP/LEN:PORT`, `[V6]:PORT`) | add a VIP filter chain |
//! | `POST /services/remove` | `VIP:PORT` | remove it |
//!
//! A `/services/add` or `/services/remove` body may hold several services, one a line: they
//! are all checked first and then served in one listener update (a thousand VIPs in one push,
//! where a request each rebuilds the listener a thousand times).
//!
//! Answers are JSON; errors are 4xx with `{"error": "..."}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    CLUSTER_TYPE, ControlPlaneHandle, ENDPOINT_TYPE, ExpectedNode, Failure, InterceptionSpec,
    LISTENER_TYPE, ROUTE_TYPE, ServiceVip,
};

const MAX_BODY: usize = 64 * 1024;

struct Ctx {
    handle: ControlPlaneHandle,
    spec: Mutex<InterceptionSpec>,
}

impl Ctx {
    fn spec(&self) -> MutexGuard<'_, InterceptionSpec> {
        self.spec.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running endpoint; stops on drop.
pub struct ControlEndpoint {
    addr: SocketAddr,
    ctx: Arc<Ctx>,
    task: tokio::task::JoinHandle<()>,
}

impl ControlEndpoint {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The interception spec as it stands after the requests so far.
    pub fn spec(&self) -> InterceptionSpec {
        self.ctx.spec().clone()
    }
}

impl Drop for ControlEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `spec` through `handle` (at once) and listens on `addr` for control requests.
pub fn serve_control(
    handle: &ControlPlaneHandle,
    addr: SocketAddr,
    spec: InterceptionSpec,
) -> anyhow::Result<ControlEndpoint> {
    handle.set_interception(&spec);
    let std_listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("bind control {addr}"))?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let ctx = Arc::new(Ctx {
        handle: handle.clone(),
        spec: Mutex::new(spec),
    });
    let listener = {
        let _guard = handle.runtime().enter();
        tokio::net::TcpListener::from_std(std_listener)?
    };
    let accept_ctx = ctx.clone();
    let task = handle.runtime().spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let ctx = accept_ctx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(route(&ctx, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(ControlEndpoint { addr, ctx, task })
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn bad(msg: impl std::fmt::Display) -> Response<Full<Bytes>> {
    reply(StatusCode::BAD_REQUEST, json!({"error": msg.to_string()}))
}

#[derive(Deserialize)]
struct FailBody {
    code: i32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    streams: Option<String>,
}

async fn route(ctx: &Ctx, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad(format!("body: {e}")),
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    let h = &ctx.handle;
    match (method, path.as_str()) {
        (Method::GET, "/state") => reply(StatusCode::OK, state(ctx)),
        (Method::GET, "/services") => reply(StatusCode::OK, services(&ctx.spec())),
        (Method::POST, "/fail") => {
            let f: FailBody = match serde_json::from_str(&text) {
                Ok(f) => f,
                Err(e) => return bad(format!("expected {{\"code\":N,\"message\":\"...\"}}: {e}")),
            };
            if !(0..=16).contains(&f.code) {
                return bad(format!("{} is not a gRPC status code", f.code));
            }
            let failure = Failure::new(f.code, f.message);
            match f.streams.as_deref().unwrap_or("ads") {
                "ads" => h.fail_ads(failure),
                "lrs" => h.fail_lrs(failure),
                "all" => {
                    h.fail_ads(failure.clone());
                    h.fail_lrs(failure);
                }
                other => return bad(format!("streams must be ads, lrs or all, not {other:?}")),
            }
            reply(StatusCode::OK, state(ctx))
        }
        (Method::POST, "/recover") => {
            h.recover();
            reply(StatusCode::OK, state(ctx))
        }
        (Method::POST, "/expect") => match serde_json::from_str::<ExpectedNode>(&text) {
            Ok(e) => {
                h.expect_node(Some(e));
                reply(StatusCode::OK, state(ctx))
            }
            Err(e) => bad(format!(
                "expected {{\"network\":\"N\",\"project_number\":\"P\"}}: {e}"
            )),
        },
        (Method::DELETE, "/expect") => {
            h.expect_node(None);
            reply(StatusCode::OK, state(ctx))
        }
        (Method::POST, "/services/add") | (Method::POST, "/services/remove") => {
            let list = match parse_services(&text) {
                Ok(l) => l,
                Err(e) => return bad(e),
            };
            let mut spec = ctx.spec();
            let mut changed = false;
            for svc in list {
                changed |= if path.ends_with("/add") {
                    spec.add_service(svc)
                } else {
                    spec.remove_service(svc.address, svc.prefix_len, svc.port)
                };
            }
            h.set_interception(&spec);
            let mut v = services(&spec);
            v["changed"] = json!(changed);
            v["listener_version"] = json!(h.version(LISTENER_TYPE));
            reply(StatusCode::OK, v)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"error": "unknown request", "see": "GET /state, POST /fail, POST /recover, POST|DELETE /expect, GET /services, POST /services/add|remove"}),
        ),
    }
}

/// The services of a `/services/add|remove` body, one a line (blank lines ignored); an error
/// names the first bad line, and then none is taken.
fn parse_services(text: &str) -> Result<Vec<ServiceVip>, String> {
    let list = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| ServiceVip::parse(l).map_err(|e| format!("{l:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if list.is_empty() {
        return Err("no service in the body (VIP:PORT, one a line)".into());
    }
    Ok(list)
}

fn services(spec: &InterceptionSpec) -> Value {
    let list: Vec<Value> = spec
        .services
        .iter()
        .map(|s| json!({"name": s.name, "vip": s.cidr(), "port": s.port}))
        .collect();
    json!({
        "proxy_port": spec.proxy_port,
        "services": list,
        "serving_ports": spec.serving_ports,
    })
}

fn state(ctx: &Ctx) -> Value {
    let h = &ctx.handle;
    let v = services(&ctx.spec());
    json!({
        "addr": h.addr().to_string(),
        "ads_failure": h.ads_failure(),
        "lrs_failure": h.lrs_failure(),
        "expected_node": h.expected_node(),
        "versions": {
            "listeners": h.version(LISTENER_TYPE),
            "routes": h.version(ROUTE_TYPE),
            "clusters": h.version(CLUSTER_TYPE),
            "endpoints": h.version(ENDPOINT_TYPE),
        },
        "interception": v,
        "observed": h.observations(),
    })
}

#[cfg(test)]
mod tests {
    use super::parse_services;

    #[test]
    fn a_body_holds_one_service_a_line() {
        let list = parse_services("10.0.1.0:80\n\n10.0.1.1:80\r\n[fd00::1]:443\n").unwrap();
        let got: Vec<(String, u16)> = list.iter().map(|s| (s.cidr(), s.port)).collect();
        assert_eq!(
            got,
            [
                ("10.0.1.0/32".to_string(), 80),
                ("10.0.1.1/32".to_string(), 80),
                ("fd00::1/128".to_string(), 443)
            ]
        );
        assert_eq!(parse_services("10.0.0.1:80").unwrap().len(), 1);
    }

    #[test]
    fn one_bad_line_takes_none() {
        let e = parse_services("10.0.1.0:80\nnot-a-vip\n").unwrap_err();
        assert!(e.contains("not-a-vip"), "{e}");
        assert!(parse_services(" \n").is_err());
    }
}
