//! gRPC calls counted as etcd counts them, so that etcd's dashboards (RPC
//! rate, active streams, client traffic) and alerts (failed RPCs) read synod
//! unchanged:
//!
//! * go-grpc-prometheus's series, by method: `grpc_server_started_total`,
//!   `grpc_server_handled_total` (by final code, when the call ends: a watch
//!   is handled when its stream closes), `grpc_server_msg_received_total` and
//!   `grpc_server_msg_sent_total`;
//! * etcd's codec counters: `etcd_network_client_grpc_received_bytes_total`
//!   and `..._sent_bytes_total`, the sizes of the messages themselves;
//! * with `--metrics=extensive`, as in etcd, `grpc_server_handling_seconds`:
//!   each call's time from its request to its end, by method.
//!
//! etcd's server lists its own services' methods from the start, every
//! series at 0; lock and election, registered on its server later, appear
//! once called. Synod does the same.
//!
//! The counting happens in a layer around the whole router, on the bodies as
//! they pass: gRPC frames each message with a 5-byte prefix (a flag and a
//! big-endian length), which is all it reads. A body's bytes are neither
//! copied nor held.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::codegen::http;

/// The kind of a method, as go-grpc-prometheus labels it (`grpc_type`).
#[derive(Clone, Copy)]
enum Kind {
    Unary,
    ServerStream,
    BidiStream,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Unary => "unary",
            Kind::ServerStream => "server_stream",
            Kind::BidiStream => "bidi_stream",
        }
    }
}

use Kind::{BidiStream, ServerStream, Unary};

/// etcd 3.4's methods whose series its server lists from the start.
const LISTED: &[(&str, &[(&str, Kind)])] = &[
    (
        "etcdserverpb.KV",
        &[
            ("Range", Unary),
            ("Put", Unary),
            ("DeleteRange", Unary),
            ("Txn", Unary),
            ("Compact", Unary),
        ],
    ),
    ("etcdserverpb.Watch", &[("Watch", BidiStream)]),
    (
        "etcdserverpb.Lease",
        &[
            ("LeaseGrant", Unary),
            ("LeaseRevoke", Unary),
            ("LeaseKeepAlive", BidiStream),
            ("LeaseTimeToLive", Unary),
            ("LeaseLeases", Unary),
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            ("MemberAdd", Unary),
            ("MemberRemove", Unary),
            ("MemberUpdate", Unary),
            ("MemberList", Unary),
            ("MemberPromote", Unary),
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            ("Alarm", Unary),
            ("Status", Unary),
            ("Defragment", Unary),
            ("Hash", Unary),
            ("HashKV", Unary),
            ("Snapshot", ServerStream),
            ("MoveLeader", Unary),
        ],
    ),
    (
        "etcdserverpb.Auth",
        &[
            ("AuthEnable", Unary),
            ("AuthDisable", Unary),
            ("Authenticate", Unary),
            ("UserAdd", Unary),
            ("UserGet", Unary),
            ("UserList", Unary),
            ("UserDelete", Unary),
            ("UserChangePassword", Unary),
            ("UserGrantRole", Unary),
            ("UserRevokeRole", Unary),
            ("RoleAdd", Unary),
            ("RoleGet", Unary),
            ("RoleList", Unary),
            ("RoleDelete", Unary),
            ("RoleGrantPermission", Unary),
            ("RoleRevokePermission", Unary),
        ],
    ),
    (
        "grpc.health.v1.Health",
        &[("Check", Unary), ("Watch", ServerStream)],
    ),
];

/// The methods counted only once called.
const UNLISTED: &[(&str, &[(&str, Kind)])] = &[
    ("v3lockpb.Lock", &[("Lock", Unary), ("Unlock", Unary)]),
    (
        "v3electionpb.Election",
        &[
            ("Campaign", Unary),
            ("Proclaim", Unary),
            ("Leader", Unary),
            ("Observe", ServerStream),
            ("Resign", Unary),
        ],
    ),
];

/// gRPC's status codes, by number, as Go's `codes.Code.String()` names them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;

/// The index in [`CODES`] of a `grpc-status` value.
fn code_index(value: &[u8]) -> usize {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&c| c < CODES.len())
        .unwrap_or(UNKNOWN)
}

/// One method's series, resolved once so that a call costs a few atomic
/// additions and no label lookups.
struct Series {
    started: IntCounter,
    received: IntCounter,
    sent: IntCounter,
    handled: [OnceLock<IntCounter>; 17],
    /// Made once handling times are kept (`--metrics=extensive`).
    handling: OnceLock<Histogram>,
    labels: [&'static str; 3],
    vec: Arc<Vecs>,
}

impl Series {
    fn handled(&self, code: usize) -> &IntCounter {
        self.handled[code].get_or_init(|| {
            let [kind, service, method] = self.labels;
            self.vec
                .handled
                .with_label_values(&[kind, service, method, CODES[code]])
        })
    }

    fn handling(&self) -> Option<&Histogram> {
        let times = self.vec.handling.get()?;
        Some(
            self.handling
                .get_or_init(|| times.with_label_values(&self.labels)),
        )
    }

    /// When a call starts, if its handling time is kept.
    fn start(&self) -> Option<Instant> {
        self.started.inc();
        self.vec.handling.get().map(|_| Instant::now())
    }

    /// The call that started at `since` ended with `code`.
    fn end(&self, code: usize, since: Option<Instant>) {
        self.handled(code).inc();
        if let (Some(h), Some(t)) = (self.handling(), since) {
            h.observe(t.elapsed().as_secs_f64());
        }
    }
}

struct Vecs {
    started: IntCounterVec,
    handled: IntCounterVec,
    received: IntCounterVec,
    sent: IntCounterVec,
    client_received_bytes: IntCounter,
    client_sent_bytes: IntCounter,
    /// Set by [`GrpcCounters::time_handling`].
    handling: OnceLock<HistogramVec>,
}

/// A method known by its path, its series made when it is first called
/// (or at once, for etcd's listed ones).
struct Method {
    labels: [&'static str; 3],
    series: OnceLock<Arc<Series>>,
}

/// Every counter of the gRPC calls of one member.
pub struct GrpcCounters {
    vecs: Arc<Vecs>,
    /// By path: `/etcdserverpb.KV/Put`.
    methods: HashMap<Box<str>, Method>,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

impl GrpcCounters {
    pub fn new(r: &Registry) -> GrpcCounters {
        let labels = ["grpc_type", "grpc_service", "grpc_method"];
        let coded = ["grpc_type", "grpc_service", "grpc_method", "grpc_code"];
        let vecs = Arc::new(Vecs {
            started: counter_vec(
                r,
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &labels,
            ),
            handled: counter_vec(
                r,
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &coded,
            ),
            received: counter_vec(
                r,
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                &labels,
            ),
            sent: counter_vec(
                r,
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                &labels,
            ),
            client_received_bytes: counter(
                r,
                "etcd_network_client_grpc_received_bytes_total",
                "The total number of bytes received from grpc clients.",
            ),
            client_sent_bytes: counter(
                r,
                "etcd_network_client_grpc_sent_bytes_total",
                "The total number of bytes sent to grpc clients.",
            ),
            handling: OnceLock::new(),
        });
        let mut counters = GrpcCounters {
            vecs,
            methods: HashMap::new(),
        };
        for (list, listed) in [(LISTED, true), (UNLISTED, false)] {
            for &(service, methods) in list {
                for &(name, kind) in methods {
                    let method = Method {
                        labels: [kind.label(), service, name],
                        series: OnceLock::new(),
                    };
                    if listed {
                        let series = counters.series(&method);
                        for code in 0..CODES.len() {
                            series.handled(code);
                        }
                    }
                    counters
                        .methods
                        .insert(format!("/{service}/{name}").into(), method);
                }
            }
        }
        counters
    }

    fn series(&self, method: &Method) -> Arc<Series> {
        method
            .series
            .get_or_init(|| {
                let labels = &method.labels;
                Arc::new(Series {
                    started: self.vecs.started.with_label_values(labels),
                    received: self.vecs.received.with_label_values(labels),
                    sent: self.vecs.sent.with_label_values(labels),
                    handled: Default::default(),
                    handling: OnceLock::new(),
                    labels: method.labels,
                    vec: self.vecs.clone(),
                })
            })
            .clone()
    }

    /// Keeps every call's handling time from now on, in `r`
    /// (`--metrics=extensive`): go-grpc-prometheus's histogram, with its
    /// default buckets, listed for etcd's methods from the start as the
    /// counters are.
    pub fn time_handling(&self, r: &Registry) {
        let h = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            ),
            &["grpc_type", "grpc_service", "grpc_method"],
        )
        .expect("valid metric");
        if self.vecs.handling.set(h.clone()).is_err() {
            return;
        }
        r.register(Box::new(h)).expect("registered once");
        for m in self.methods.values() {
            if let Some(s) = m.series.get() {
                s.handling();
            }
        }
    }

    /// The series of the method at `path`; none for anything else (HTTP
    /// endpoints, unknown methods: grpc-go counts no call it has no
    /// handler for).
    fn lookup(&self, path: &str) -> Option<Arc<Series>> {
        self.methods.get(path).map(|m| self.series(m))
    }
}

/// Counts every gRPC call: apply with
/// `tonic::transport::Server::builder().layer(..)`, outside anything that
/// rewrites a call's status.
#[derive(Clone)]
pub struct GrpcMetrics(pub Arc<GrpcCounters>);

impl<S> tower_layer::Layer<S> for GrpcMetrics {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            counters: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    counters: Arc<GrpcCounters>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower_service::Service<http::Request<Counted<ReqBody>>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Counted<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let series = self.counters.lookup(req.uri().path());
        let since = series.as_ref().and_then(|s| s.start());
        let req = req.map(|body| Counted::new(body, series.clone(), Direction::Received));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let mut out = Direction::Sent {
                handled: false,
                since,
            };
            if let (Some(s), Some(code)) = (&series, resp.headers().get("grpc-status")) {
                // An error before any message: a trailers-only answer.
                s.end(code_index(code.as_bytes()), since);
                out = Direction::Sent {
                    handled: true,
                    since,
                };
            }
            Ok(resp.map(|body| Counted::new(body, series, out)))
        })
    }
}

/// Which way a body goes, and for an answer whether its call was counted
/// as handled yet, and when it started if its handling time is kept.
#[derive(Clone, Copy)]
enum Direction {
    Received,
    Sent {
        handled: bool,
        since: Option<Instant>,
    },
}

/// Where a body stands in its run of gRPC frames.
#[derive(Default)]
struct Frames {
    prefix: [u8; 5],
    /// Bytes of `prefix` read so far.
    have: usize,
    /// Bytes of the current message still to come.
    left: u64,
}

impl Frames {
    /// Calls `message` with the length of every message whose prefix ends
    /// in `data`.
    fn feed(&mut self, mut data: &[u8], mut message: impl FnMut(u64)) {
        while !data.is_empty() {
            if self.left > 0 {
                let skip = data
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                data = &data[skip..];
                self.left -= skip as u64;
                continue;
            }
            let take = data.len().min(5 - self.have);
            self.prefix[self.have..self.have + take].copy_from_slice(&data[..take]);
            self.have += take;
            data = &data[take..];
            if self.have == 5 {
                let len = u32::from_be_bytes(self.prefix[1..5].try_into().expect("4 bytes"));
                message(u64::from(len));
                self.have = 0;
                self.left = u64::from(len);
            }
        }
    }
}

/// A request's or an answer's body, counted as it passes.
pub struct Counted<B> {
    inner: B,
    series: Option<Arc<Series>>,
    direction: Direction,
    frames: Frames,
}

impl<B> Counted<B> {
    fn new(inner: B, series: Option<Arc<Series>>, direction: Direction) -> Counted<B> {
        Counted {
            inner,
            series,
            direction,
            frames: Frames::default(),
        }
    }

    fn data(&mut self, data: &[u8]) {
        let Some(s) = &self.series else { return };
        let (messages, bytes) = match self.direction {
            Direction::Received => (&s.received, &s.vec.client_received_bytes),
            Direction::Sent { .. } => (&s.sent, &s.vec.client_sent_bytes),
        };
        self.frames.feed(data, |len| {
            messages.inc();
            bytes.inc_by(len);
        });
    }

    /// The call ended with `code` (an answer's trailers, or its end).
    fn handled(&mut self, code: usize) {
        if let (
            Some(s),
            Direction::Sent {
                handled: false,
                since,
            },
        ) = (&self.series, self.direction)
        {
            s.end(code, since);
            self.direction = Direction::Sent {
                handled: true,
                since,
            };
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.data(data);
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .map_or(UNKNOWN, |c| code_index(c.as_bytes()));
                    this.handled(code);
                }
            }
            // A body that ends without trailers ended badly.
            Poll::Ready(None) => this.handled(UNKNOWN),
            Poll::Ready(Some(Err(_))) => this.handled(UNKNOWN),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Counted<B> {
    /// An answer dropped before its end: the client went away (a watch it
    /// closed, a call it cancelled), which etcd's handler sees as Canceled.
    fn drop(&mut self) {
        self.handled(CANCELED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut f = vec![0];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend(std::iter::repeat_n(7u8, len as usize));
        f
    }

    /// Messages are found however the stream is cut into chunks.
    #[test]
    fn frames_are_counted_across_any_chunking() {
        let mut stream = frame(3);
        stream.extend(frame(0));
        stream.extend(frame(300));
        stream.extend(frame(1));
        for cut in 1..stream.len() {
            let mut frames = Frames::default();
            let mut seen = Vec::new();
            for chunk in stream.chunks(cut) {
                frames.feed(chunk, |len| seen.push(len));
            }
            assert_eq!(seen, [3, 0, 300, 1], "chunks of {cut}");
            assert_eq!((frames.have, frames.left), (0, 0));
        }
    }

    #[test]
    fn codes_read_as_go_names_them() {
        assert_eq!(CODES[code_index(b"0")], "OK");
        assert_eq!(CODES[code_index(b"11")], "OutOfRange");
        assert_eq!(CODES[code_index(b"16")], "Unauthenticated");
        assert_eq!(CODES[code_index(b"17")], "Unknown");
        assert_eq!(CODES[code_index(b"x")], "Unknown");
    }

    #[test]
    fn etcds_methods_are_listed_from_the_start() {
        let r = Registry::new();
        let _counters = GrpcCounters::new(&r);
        let families = r.gather();
        let count = |name: &str| {
            families
                .iter()
                .find(|f| f.name() == name)
                .map_or(0, |f| f.get_metric().len())
        };
        // As etcd 3.4 lists them: 41 methods, every code of each.
        assert_eq!(count("grpc_server_started_total"), 41);
        assert_eq!(count("grpc_server_msg_sent_total"), 41);
        assert_eq!(count("grpc_server_handled_total"), 41 * 17);
    }

    #[test]
    fn handling_times_are_kept_only_when_asked() {
        let r = Registry::new();
        let counters = GrpcCounters::new(&r);
        let has = |r: &Registry| {
            r.gather()
                .iter()
                .find(|f| f.name() == "grpc_server_handling_seconds")
                .map(|f| f.get_metric().len())
        };
        let put = counters.lookup("/etcdserverpb.KV/Put").unwrap();
        put.end(0, put.start());
        assert_eq!(has(&r), None, "basic metrics keep no times");
        counters.time_handling(&r);
        assert_eq!(has(&r), Some(41), "etcd's methods, listed from the start");
        let since = put.start();
        assert!(since.is_some());
        put.end(0, since);
        assert_eq!(put.handling().unwrap().get_sample_count(), 1);
    }
}
