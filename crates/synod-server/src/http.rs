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
    if healthy {
        h.metrics.health_success.inc();
    } else {
        h.metrics.health_failures.inc();
    }
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

/// The process's open file descriptors and its limit on them (etcd's
/// `os_fd_used` and `os_fd_limit`); 0 where unknown.
fn file_descriptors() -> (i64, i64) {
    let used = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let limit = if ok {
        i64::try_from(limit.rlim_cur).unwrap_or(i64::MAX)
    } else {
        0
    };
    (used, limit)
}

async fn metrics_text(State(h): State<Http>) -> impl IntoResponse {
    let m = &h.metrics;
    if let Ok((header, s)) = h.backend.status().await {
        m.db_size.set(s.db_size);
        m.db_size_debugging.set(s.db_size);
        m.db_size_in_use.set(s.db_size_in_use);
        m.revision.set(header.revision);
        m.is_learner.set(i64::from(s.is_learner));
    }
    if let Ok(rev) = h.backend.compact_revision().await {
        // etcd says -1 until the first compaction, as HashKV does.
        m.compact_revision.set(if rev > 0 { rev } else { -1 });
    }
    m.watch_streams.set(m.watch.streams());
    m.watchers.set(m.watch.watchers());
    let (used, limit) = file_descriptors();
    m.fd_used.set(used);
    m.fd_limit.set(limit);
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
