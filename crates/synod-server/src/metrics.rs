//! A member's metrics under etcd's names, so that dashboards and alerts
//! written for etcd read synod unchanged. Gauges that mirror the member's
//! state are set by its driver after every round (a few atomic stores);
//! the database sizes, keys, revisions and file descriptors are read when
//! `/metrics` is scraped, and gRPC calls are counted as they pass
//! ([`crate::grpc_metrics`]).

use crate::grpc_metrics::GrpcCounters;
use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::Arc;

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
    /// etcd 3.4 also reports the size under its older, debugging name.
    pub db_size_debugging: IntGauge,
    pub db_size_in_use: IntGauge,
    pub keys: IntGauge,
    pub revision: IntGauge,
    pub compact_revision: IntGauge,
    pub is_learner: IntGauge,
    /// Bytes appended to the WAL (records and their framing).
    pub wal_written: IntCounter,
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    pub fd_used: IntGauge,
    pub fd_limit: IntGauge,
    server_id: IntGaugeVec,
    quota: IntGauge,
    /// Calls, messages and bytes, by gRPC method (`grpc_metrics`).
    pub grpc: Arc<GrpcCounters>,
    /// Leader to follower and back, by peer (`To`: its member id in hex),
    /// timed from a heartbeat to its answer.
    pub peer_rtt: HistogramVec,
    /// Bytes to and from each peer, and whether it is reachable.
    pub peers: PeerMeters,
    /// Where a client request's time goes, by stage (issue 11): see
    /// [`Stages`].
    pub stages: Stages,
    /// Watch streams and watchers open now, counted by the watch service
    /// and copied into the two gauges below at each scrape.
    pub watch: Arc<synod_etcd::WatchGauges>,
    pub watch_streams: IntGauge,
    pub watchers: IntGauge,
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

/// etcd's peer traffic series (`etcd_network_*`), labelled with member ids
/// in hex. Each link takes its own counters once ([`PeerMeters::link`],
/// [`PeerMeters::from`]), so that counting on the peer paths is an atomic
/// add per system call, with no label lookup.
#[derive(Clone)]
pub struct PeerMeters {
    sent_bytes: IntCounterVec,
    sent_failures: IntCounterVec,
    received_bytes: IntCounterVec,
    received_failures: IntCounterVec,
    active: IntGaugeVec,
    disconnected: IntCounterVec,
}

/// What a member's writer to one peer counts.
#[derive(Clone)]
pub struct LinkMeters {
    /// Bytes of frames written to the peer's socket.
    pub sent: IntCounter,
    /// A round's frames for the peer dropped: its queue was full, the
    /// connection broke under them, or the peer was down.
    pub sent_failures: IntCounter,
    /// 1 while the peer is reachable.
    pub active: IntGauge,
    /// Times a reachable peer became unreachable.
    pub disconnected: IntCounter,
}

/// What a connection from one peer counts.
#[derive(Clone)]
pub struct FromMeters {
    /// Bytes read from the peer's connections.
    pub received: IntCounter,
    /// Connections ended because of what the peer sent.
    pub failures: IntCounter,
}

impl PeerMeters {
    fn new(r: &Registry) -> PeerMeters {
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let active = IntGaugeVec::new(
            Opts::new(
                "etcd_network_active_peers",
                "The current number of active peer connections.",
            ),
            &["Local", "Remote"],
        )
        .expect("valid metric");
        r.register(Box::new(active.clone()))
            .expect("registered once");
        PeerMeters {
            sent_bytes: counters(
                "etcd_network_peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                &["To"],
            ),
            sent_failures: counters(
                "etcd_network_peer_sent_failures_total",
                "The total number of send failures from peers.",
                &["To"],
            ),
            received_bytes: counters(
                "etcd_network_peer_received_bytes_total",
                "The total number of bytes received from peers.",
                &["From"],
            ),
            received_failures: counters(
                "etcd_network_peer_received_failures_total",
                "The total number of receive failures from peers.",
                &["From"],
            ),
            active,
            disconnected: counters(
                "etcd_network_disconnected_peers_total",
                "The total number of disconnected peers.",
                &["Local", "Remote"],
            ),
        }
    }

    /// Meters that no registry reads (tests of the peer layer alone).
    pub fn detached() -> PeerMeters {
        PeerMeters::new(&Registry::new())
    }

    /// The counters of member `local`'s link to peer `remote`.
    pub fn link(&self, local: u64, remote: u64) -> LinkMeters {
        let (local, remote) = (format!("{local:x}"), format!("{remote:x}"));
        LinkMeters {
            sent: self.sent_bytes.with_label_values(&[&remote]),
            sent_failures: self.sent_failures.with_label_values(&[&remote]),
            active: self.active.with_label_values(&[&local, &remote]),
            disconnected: self.disconnected.with_label_values(&[&local, &remote]),
        }
    }

    /// The counters of connections from peer `remote`.
    pub fn from(&self, remote: u64) -> FromMeters {
        let remote = format!("{remote:x}");
        FromMeters {
            received: self.received_bytes.with_label_values(&[&remote]),
            failures: self.received_failures.with_label_values(&[&remote]),
        }
    }
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
        let grpc = Arc::new(GrpcCounters::new(&r));
        // Memory, CPU, file descriptors and start time of the process, the
        // series every Prometheus exporter has (`etcdctl check datascale`
        // reads the memory).
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
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
        let cluster_version = IntGaugeVec::new(
            Opts::new(
                "etcd_cluster_version",
                "Which version is running. 1 for 'cluster_version' label with current cluster version",
            ),
            &["cluster_version"],
        )
        .expect("valid metric");
        r.register(Box::new(cluster_version.clone()))
            .expect("registered once");
        // Major and minor, as etcd labels it.
        let minor = synod_etcd::API_VERSION
            .rsplit_once('.')
            .map_or("", |(mm, _)| mm);
        cluster_version.with_label_values(&[minor]).set(1);
        let server_id = IntGaugeVec::new(
            Opts::new(
                "etcd_server_id",
                "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            ),
            &["server_id"],
        )
        .expect("valid metric");
        r.register(Box::new(server_id.clone()))
            .expect("registered once");
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
        let peers = PeerMeters::new(&r);
        Arc::new(Metrics {
            stages,
            peer_rtt,
            peers,
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
            db_size_debugging: gauge(
                &r,
                "etcd_debugging_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            db_size_in_use: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            ),
            keys: gauge(
                &r,
                "etcd_debugging_mvcc_keys_total",
                "Total number of keys.",
            ),
            revision: gauge(
                &r,
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
            ),
            compact_revision: gauge(
                &r,
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
            ),
            is_learner: gauge(
                &r,
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            ),
            wal_written: counter(
                &r,
                "etcd_disk_wal_write_bytes_total",
                "Total number of bytes written in WAL.",
            ),
            health_success: counter(
                &r,
                "etcd_server_health_success",
                "The total number of successful health checks",
            ),
            health_failures: counter(
                &r,
                "etcd_server_health_failures",
                "The total number of failed health checks",
            ),
            fd_used: gauge(&r, "os_fd_used", "The number of used file descriptors."),
            fd_limit: gauge(&r, "os_fd_limit", "The file descriptor limit."),
            quota: gauge(
                &r,
                "etcd_server_quota_backend_bytes",
                "Current backend storage quota size in bytes.",
            ),
            server_id,
            grpc,
            watch: Arc::default(),
            watch_streams: gauge(
                &r,
                "etcd_debugging_mvcc_watch_stream_total",
                "Total number of watch streams.",
            ),
            watchers: gauge(
                &r,
                "etcd_debugging_mvcc_watcher_total",
                "Total number of watchers.",
            ),
            registry: r,
        })
    }

    /// What a member is for its lifetime: its id (hex, as etcd labels it)
    /// and its quota (`None`: no quota, reported as -1 as etcd reports a
    /// negative `--quota-backend-bytes`, so that a size-to-quota alert
    /// never fires).
    pub fn describe(&self, member_id: u64, quota_bytes: Option<u64>) {
        self.server_id
            .with_label_values(&[&format!("{member_id:x}")])
            .set(1);
        self.quota
            .set(quota_bytes.map_or(-1, |q| i64::try_from(q).unwrap_or(i64::MAX)));
    }

    /// Keeps every gRPC call's handling time (`--metrics=extensive`).
    pub fn time_grpc_handling(&self) {
        self.grpc.time_handling(&self.registry);
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
