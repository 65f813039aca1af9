//! Sends `grpc-message` the way Google's gRPC servers do.
//!
//! tonic percent-encodes spaces, quotes and braces in `grpc-message`, but the gRPC spec (and
//! gRPC C++/Go servers, Cloud Service Mesh included) encode only bytes outside `0x20..=0x7E` and
//! `%`. Envoy logs the header as it arrives, so without this its log would say
//! `configuration%20was%20not%20found` instead of the real line.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, HeaderValue, Request, Response};
use tonic::codegen::{Body as HttpBody, Service};
use tonic::server::NamedService;

const GRPC_MESSAGE: &str = "grpc-message";

/// Percent-decodes, then encodes only what the gRPC spec requires.
pub fn respec(value: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (
                value.get(i + 1).and_then(|c| (*c as char).to_digit(16)),
                value.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
            )
        {
            decoded.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        decoded.push(b);
        i += 1;
    }
    let mut out = Vec::with_capacity(decoded.len());
    for b in decoded {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

fn rewrite(headers: &mut HeaderMap) {
    if let Some(v) = headers.get(GRPC_MESSAGE)
        && let Ok(nv) = HeaderValue::from_bytes(&respec(v.as_bytes()))
    {
        headers.insert(GRPC_MESSAGE, nv);
    }
}

/// Wraps a tonic service so its `grpc-message` (trailers-only or in trailers) is spec-encoded.
#[derive(Debug, Clone)]
pub struct PlainGrpcMessage<S>(pub S);

impl<S: NamedService> NamedService for PlainGrpcMessage<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for PlainGrpcMessage<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let fut = self.0.call(req);
        Box::pin(async move {
            let (mut parts, body) = fut.await?.into_parts();
            rewrite(&mut parts.headers);
            Ok(Response::from_parts(
                parts,
                Body::new(RewriteTrailers { inner: body }),
            ))
        })
    }
}

struct RewriteTrailers {
    inner: Body,
}

impl HttpBody for RewriteTrailers {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_trailers() {
                    Ok(mut t) => {
                        rewrite(&mut t);
                        Frame::trailers(t)
                    }
                    Err(f) => f,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_grpc_spec() {
        assert_eq!(
            respec(b"Cloud%20Service%20Mesh%20%22default%22%7B%7D"),
            b"Cloud Service Mesh \"default\"{}"
        );
        assert_eq!(respec(b"100%25 caf%C3%A9\n"), b"100%25 caf%C3%A9%0A");
        assert_eq!(respec("tab\t".as_bytes()), b"tab%09");
        assert_eq!(respec(b"bad % escape %zz"), b"bad %25 escape %25zz");
    }
}
