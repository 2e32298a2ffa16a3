//! Transport-level refusals worded as etcd's server (grpc-go) words them.
//!
//! tonic refuses a request larger than the decoding limit with `OUT_OF_RANGE`
//! and its own message; grpc-go, and so etcd, answers `RESOURCE_EXHAUSTED`
//! with `grpc: received message larger than max (N vs. M)`. Clients retry or
//! give up by code, so the code must match. The refusal happens before any
//! handler runs (it is sent as a trailers-only response), which is why this is
//! a layer around the whole router rather than a check in the services.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::codegen::http::{self, HeaderValue};
use tonic::Code;

/// Apply with `tonic::transport::Server::builder().layer(GrpcGoCompat)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcGoCompat;

impl<S> tower_layer::Layer<S> for GrpcGoCompat {
    type Service = GrpcGoCompatService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcGoCompatService { inner }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcGoCompatService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for GrpcGoCompatService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            reword_oversize(resp.headers_mut());
            Ok(resp)
        })
    }
}

/// Rewrites tonic's "decoded message length too large" refusal in place.
fn reword_oversize(headers: &mut http::HeaderMap) {
    let out_of_range = (Code::OutOfRange as i32).to_string();
    if headers.get("grpc-status").map(|v| v.as_bytes()) != Some(out_of_range.as_bytes()) {
        return;
    }
    let Some((found, limit)) = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .and_then(parse_tonic_oversize)
    else {
        return;
    };
    let message = format!("grpc: received message larger than max ({found} vs. {limit})");
    let code = (Code::ResourceExhausted as i32).to_string();
    // Both values are plain ASCII digits and text, so they are valid headers.
    headers.insert("grpc-status", HeaderValue::from_str(&code).expect("ascii"));
    headers.insert(
        "grpc-message",
        HeaderValue::from_str(&message).expect("ascii"),
    );
}

/// `(found, limit)` from tonic's message, which may arrive percent-encoded.
fn parse_tonic_oversize(message: &str) -> Option<(u64, u64)> {
    let message = message.replace("%20", " ").replace("%3A", ":");
    let rest = message.strip_prefix("Error, decoded message length too large: found ")?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, limit.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewords_tonics_oversize_refusal_as_grpc_go() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static(
                "Error, decoded message length too large: found 2200010 bytes, the limit is: 2097152 bytes",
            ),
        );
        reword_oversize(&mut h);
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(
            h["grpc-message"],
            "grpc: received message larger than max (2200010 vs. 2097152)"
        );
    }

    #[test]
    fn leaves_other_out_of_range_errors_alone() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("etcdserver: too large lease TTL"),
        );
        reword_oversize(&mut h);
        assert_eq!(h["grpc-status"], "11");
        assert_eq!(h["grpc-message"], "etcdserver: too large lease TTL");
    }
}
