//! etcd's `--host-whitelist`, its defence against DNS rebinding
//! (CVE-2018-5702): a page in a browser that a hostile name resolves to
//! 127.0.0.1 can send requests to a member on loopback, but they carry the
//! hostile name in their Host header. With a list other than `*`, an HTTP
//! request over a plain connection whose Host is not listed is answered 421
//! with etcd's explanation. TLS connections are not checked (a browser
//! cannot be tricked into one for a name the certificate does not carry),
//! and neither is gRPC, which browsers cannot speak.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::sync::Arc;

/// `--host-whitelist`: the host names plain HTTP requests may name.
#[derive(Clone, Debug, Default)]
pub struct HostWhitelist {
    /// `None`: every host (`*`, or an empty list, as etcd reads it).
    listed: Option<Arc<[String]>>,
}

impl HostWhitelist {
    /// A comma-separated list as etcd takes it.
    pub fn parse(list: &str) -> HostWhitelist {
        let hosts: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(String::from)
            .collect();
        if hosts.is_empty() || hosts.iter().any(|h| h == "*") {
            return HostWhitelist::default();
        }
        HostWhitelist {
            listed: Some(hosts.into()),
        }
    }

    /// Whether requests are checked at all.
    pub fn restricts(&self) -> bool {
        self.listed.is_some()
    }

    /// `router` behind the check. For a plain listener only: the caller
    /// leaves TLS listeners unchecked, as etcd does.
    pub fn apply<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        match self.restricts() {
            true => router.layer(axum::middleware::from_fn_with_state(self.clone(), check)),
            false => router,
        }
    }

    fn allows(&self, host: &str) -> bool {
        self.listed
            .as_ref()
            .is_none_or(|list| list.iter().any(|h| h == host))
    }
}

/// The host a request names, without its port, as Go's
/// `httputil.GetHostname` reads it.
fn hostname(req: &Request) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port or [v6]
        if let Some((v6, tail)) = rest.split_once(']') {
            if tail.is_empty() || tail.starts_with(':') {
                return v6.to_string();
            }
        }
        return host.to_string();
    }
    match host.rsplit_once(':') {
        Some((name, _)) if !name.contains(':') => name.to_string(),
        _ => host.to_string(),
    }
}

fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"))
}

async fn check(State(list): State<HostWhitelist>, req: Request, next: Next) -> Response {
    if is_grpc(&req) {
        return next.run(req).await;
    }
    let host = hostname(&req);
    if list.allows(&host) {
        return next.run(req).await;
    }
    tracing::warn!("rejecting HTTP request from {host:?} to prevent DNS rebinding attacks");
    let body = format!(
        "\netcd received your request, but the Host header was unrecognized.\n\n\
         To fix this, choose one of the following options:\n\
         - Enable TLS, then any HTTPS request will be allowed.\n\
         - Add the hostname you want to use to the whitelist in settings.\n  \
         - e.g. etcd --host-whitelist {host:?}\n\n\
         This requirement has been added to help prevent \"DNS Rebinding\" attacks \
         (CVE-2018-5702).\n\n"
    );
    let mut resp = (StatusCode::MISDIRECTED_REQUEST, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(host: &str, content_type: &str) -> Request {
        axum::http::Request::builder()
            .uri("/health")
            .header(header::HOST, host)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::empty())
            .unwrap()
    }

    async fn status(list: &HostWhitelist, host: &str, content_type: &str) -> StatusCode {
        let mut app =
            list.apply(Router::new().route("/health", axum::routing::get(|| async { "ok" })));
        // A router is always ready: call it directly.
        tower_service::Service::call(&mut app, request(host, content_type))
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn only_listed_hosts_get_through_over_plain_http() {
        let list = HostWhitelist::parse("localhost, example.com");
        assert_eq!(status(&list, "localhost:2379", "").await, StatusCode::OK);
        assert_eq!(status(&list, "example.com", "").await, StatusCode::OK);
        let refused = status(&list, "127.0.0.1:2379", "").await;
        assert_eq!(refused, StatusCode::MISDIRECTED_REQUEST);
        // gRPC is not checked: no browser speaks it.
        let grpc = status(&list, "127.0.0.1:2379", "application/grpc").await;
        assert_eq!(grpc, StatusCode::OK);
        for all in ["*", "", "localhost,*"] {
            let open = HostWhitelist::parse(all);
            assert!(!open.restricts(), "{all:?}");
            assert_eq!(status(&open, "evil.example", "").await, StatusCode::OK);
        }
    }

    #[test]
    fn the_host_is_read_without_its_port() {
        let host = |h: &str| hostname(&request(h, ""));
        assert_eq!(host("localhost:2379"), "localhost");
        assert_eq!(host("localhost"), "localhost");
        assert_eq!(host("[::1]:2379"), "::1");
        assert_eq!(host("[::1]"), "::1");
        assert_eq!(host("10.0.0.1:80"), "10.0.0.1");
    }
}
