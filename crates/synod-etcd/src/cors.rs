//! etcd's CORS rule for every HTTP answer of a client port (the JSON
//! gateway, /health, /version, /metrics; not gRPC): with `--cors` empty or
//! `*` every origin may call, and the answers say `*`; with a list of
//! origins, an answer names the request's origin if it is listed and says
//! nothing otherwise. An OPTIONS request (a browser's preflight) is answered
//! at once, as etcd answers it.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::sync::Arc;

/// `--cors`: which origins' pages may call the HTTP endpoints.
#[derive(Clone, Debug, Default)]
pub struct Cors {
    /// `None`: every origin.
    listed: Option<Arc<[String]>>,
}

impl Cors {
    /// A comma-separated list as etcd takes it; empty or `*` means all.
    pub fn parse(list: &str) -> Cors {
        let origins: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(String::from)
            .collect();
        if origins.is_empty() || origins.iter().any(|o| o == "*") {
            return Cors::default();
        }
        Cors {
            listed: Some(origins.into()),
        }
    }

    /// `router`'s answers with the CORS headers this rule gives them.
    pub fn apply<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), answer))
    }

    /// The origin an answer allows, if any.
    fn allowed(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match &self.listed {
            None => Some(HeaderValue::from_static("*")),
            Some(list) => origin
                .filter(|o| o.to_str().is_ok_and(|o| list.iter().any(|l| l == o)))
                .cloned(),
        }
    }
}

async fn answer(State(cors): State<Cors>, req: Request, next: Next) -> Response {
    let allowed = cors.allowed(req.headers().get(header::ORIGIN));
    let mut resp = if req.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(req).await
    };
    if let Some(origin) = allowed {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("accept, content-type, authorization"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_origin_or_the_listed_ones() {
        let o = |s: &'static str| HeaderValue::from_static(s);
        for all in ["", "*", " * ", "http://a,*"] {
            assert_eq!(Cors::parse(all).allowed(None), Some(o("*")), "{all:?}");
        }
        let listed = Cors::parse("http://a.example, http://b.example");
        assert_eq!(
            listed.allowed(Some(&o("http://b.example"))),
            Some(o("http://b.example"))
        );
        assert_eq!(listed.allowed(Some(&o("http://c.example"))), None);
        assert_eq!(listed.allowed(None), None);
    }
}
