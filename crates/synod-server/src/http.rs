//! The HTTP endpoints etcd serves beside gRPC on its client port: `/health`
//! (what load balancers and Kubernetes probes ask), `/version` and
//! `/metrics`. HTTP/1.1 and gRPC share the port, as in etcd.

use crate::backend::MemberBackend;
use crate::metrics::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;
use synod_etcd::Backend;
use synod_kv::RangeRequest;

#[derive(Clone)]
struct Http {
    backend: Arc<MemberBackend>,
    metrics: Arc<Metrics>,
}

/// The routes, to merge with the gRPC services' router.
pub fn routes(backend: Arc<MemberBackend>, metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics_text))
        .with_state(Http { backend, metrics })
}

/// How long the health check's read may take (etcd: its request timeout).
const HEALTH_READ: Duration = Duration::from_secs(2);

/// Healthy, as etcd 3.4 decides it: no alarm is raised, a leader is known
/// and a linearizable read (a round through the leader) answers in time.
async fn health(State(h): State<Http>) -> impl IntoResponse {
    let leader =
        matches!(h.backend.status().await, Ok((_, s)) if s.leader != 0 && s.errors.is_empty());
    let read = RangeRequest {
        key: b"health".to_vec(),
        limit: 1,
        count_only: true,
        ..RangeRequest::default()
    };
    let healthy = leader
        && matches!(
            tokio::time::timeout(HEALTH_READ, h.backend.range(read, false)).await,
            Ok(Ok(_))
        );
    let (status, body) = if healthy {
        (StatusCode::OK, r#"{"health":"true"}"#)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, r#"{"health":"false"}"#)
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
}

async fn version() -> impl IntoResponse {
    let v = synod_etcd::API_VERSION;
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"etcdserver":"{v}","etcdcluster":"{v}"}}"#),
    )
}

async fn metrics_text(State(h): State<Http>) -> impl IntoResponse {
    if let Ok((_, s)) = h.backend.status().await {
        h.metrics.db_size.set(s.db_size);
    }
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..RangeRequest::default()
    };
    if let Ok((_, r)) = h.backend.range(all, true).await {
        h.metrics.keys.set(r.count);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        h.metrics.render(),
    )
}
