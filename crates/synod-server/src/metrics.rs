//! A member's metrics under etcd's names, so that dashboards and alerts
//! written for etcd read synod unchanged. Gauges that mirror the member's
//! state are set by its driver after every round (a few atomic stores);
//! the database size and key count are read when `/metrics` is scraped.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::http;

/// The metrics of one member.
pub struct Metrics {
    registry: Registry,
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub committed: IntGauge,
    pub applied: IntGauge,
    pub pending: IntGauge,
    pub failed: IntCounter,
    pub fsync: Histogram,
    /// Seconds a member's thread spent in the replica in one round (the
    /// Raft steps and applying what committed), before its sync.
    pub round_step: Histogram,
    /// Inputs handled in one round (requests, peer messages): how much one
    /// sync is shared by.
    pub round_inputs: Histogram,
    pub db_size: IntGauge,
    pub keys: IntGauge,
    pub grpc_handled: IntCounterVec,
    /// Leader to follower and back, by peer (`To`: its member id in hex),
    /// timed from a heartbeat to its answer.
    pub peer_rtt: HistogramVec,
    /// Where a client request's time goes, by stage (issue 11): see
    /// [`Stages`].
    pub stages: Stages,
}

/// A client request's time, stage by stage, on the member that took it.
/// `queued` + (`proposed` or `forwarded`) + the reply's way back to the API
/// thread make up `total`.
#[derive(Clone)]
pub struct Stages {
    /// From the API thread handing the request over to the member's thread
    /// taking it up (the inbox, and the round in progress).
    pub queued: Histogram,
    /// From the member handing the request to its replica to the replica's
    /// answer: replication, the syncs, commit and apply (reads: the read
    /// index round).
    pub proposed: Histogram,
    /// From a follower sending the request to the leader to the answer
    /// reaching it back (or its own log settling it).
    pub forwarded: Histogram,
    /// From the API thread handing the request over to it reading the
    /// answer.
    pub total: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

/// A histogram with `count` buckets doubling from `first`.
fn histogram(r: &Registry, name: &str, help: &str, (first, count): (f64, usize)) -> Histogram {
    let opts = HistogramOpts::new(name, help)
        .buckets(exponential_buckets(first, 2.0, count).expect("valid buckets"));
    let h = Histogram::with_opts(opts).expect("valid metric");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

/// [`histogram`] with one label.
fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    (first, count): (f64, usize),
    label: &str,
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help)
        .buckets(exponential_buckets(first, 2.0, count).expect("valid buckets"));
    let h = HistogramVec::new(opts, &[label]).expect("valid metric");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let r = Registry::new();
        // etcd's buckets: 1 ms to 8 s, doubling.
        let fsync = histogram(
            &r,
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            (0.001, 14),
        );
        let round_step = histogram(
            &r,
            "synod_member_round_step_duration_seconds",
            "Time a member's thread spent stepping its replica (Raft and apply) in one round, before the round's sync.",
            (0.00001, 18),
        );
        let round_inputs = histogram(
            &r,
            "synod_member_round_inputs",
            "Inputs (client requests, peer messages) a member handled in one round, sharing one sync.",
            (1.0, 12),
        );
        let grpc_handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )
        .expect("valid metric");
        r.register(Box::new(grpc_handled.clone()))
            .expect("registered once");
        // etcd's buckets: 0.1 ms to 3.3 s, doubling.
        let peer_rtt = histogram_vec(
            &r,
            "etcd_network_peer_round_trip_time_seconds",
            "Round-Trip-Time histogram between peers",
            (0.0001, 16),
            "To",
        );
        let version = IntGaugeVec::new(
            Opts::new(
                "etcd_server_version",
                "Which version is running. 1 for 'server_version' label with current version.",
            ),
            &["server_version"],
        )
        .expect("valid metric");
        r.register(Box::new(version.clone()))
            .expect("registered once");
        version.with_label_values(&[synod_etcd::API_VERSION]).set(1);
        let stage = histogram_vec(
            &r,
            "synod_request_stage_duration_seconds",
            "Time client requests spent per stage: queued (API thread to member thread), proposed (replica in, answer out: replication, syncs, commit, apply), forwarded (follower to leader and back), total (API thread to API thread).",
            (0.00001, 18),
            "stage",
        );
        let stages = Stages {
            queued: stage.with_label_values(&["queued"]),
            proposed: stage.with_label_values(&["proposed"]),
            forwarded: stage.with_label_values(&["forwarded"]),
            total: stage.with_label_values(&["total"]),
        };
        Arc::new(Metrics {
            stages,
            peer_rtt,
            has_leader: gauge(
                &r,
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                &r,
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            leader_changes: counter(
                &r,
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            ),
            committed: gauge(
                &r,
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            applied: gauge(
                &r,
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            pending: gauge(
                &r,
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            ),
            failed: counter(
                &r,
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            ),
            fsync,
            round_step,
            round_inputs,
            db_size: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            keys: gauge(
                &r,
                "etcd_debugging_mvcc_keys_total",
                "Total number of keys.",
            ),
            grpc_handled,
            registry: r,
        })
    }

    /// Everything in Prometheus's text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of valid metrics");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Counts every gRPC call by service, method and final code
/// (`grpc_server_handled_total`).
#[derive(Clone)]
pub struct GrpcMetrics(pub Arc<Metrics>);

impl<S> tower_layer::Layer<S> for GrpcMetrics {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The method's kind, as etcd's interceptor labels it.
fn grpc_type(method: &str) -> &'static str {
    match method {
        "Watch" | "LeaseKeepAlive" => "bidi_stream",
        "Snapshot" | "Observe" => "server_stream",
        _ => "unary",
    }
}

/// gRPC's status code names, as Go's `codes.Code.String()` prints them.
fn code_name(code: &[u8]) -> &'static str {
    match code {
        b"0" => "OK",
        b"1" => "Canceled",
        b"2" => "Unknown",
        b"3" => "InvalidArgument",
        b"4" => "DeadlineExceeded",
        b"5" => "NotFound",
        b"6" => "AlreadyExists",
        b"7" => "PermissionDenied",
        b"8" => "ResourceExhausted",
        b"9" => "FailedPrecondition",
        b"10" => "Aborted",
        b"11" => "OutOfRange",
        b"12" => "Unimplemented",
        b"13" => "Internal",
        b"14" => "Unavailable",
        b"15" => "DataLoss",
        b"16" => "Unauthenticated",
        _ => "Unknown",
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
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
        // A URI clone shares its bytes: no allocation per call.
        let uri = req.uri().clone();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            // "/etcdserverpb.KV/Range": gRPC; anything else (/health) is not counted.
            let names = uri
                .path()
                .strip_prefix('/')
                .and_then(|p| p.split_once('/'))
                .filter(|(service, _)| service.contains('.'));
            if let Some((service, method)) = names {
                // An error answers with its status in the headers; a call
                // that answers normally ends with OK (its trailers), counted
                // here when its answer starts.
                let code = resp
                    .headers()
                    .get("grpc-status")
                    .map_or("OK", |c| code_name(c.as_bytes()));
                metrics
                    .grpc_handled
                    .with_label_values(&[grpc_type(method), service, method, code])
                    .inc();
            }
            Ok(resp)
        })
    }
}
