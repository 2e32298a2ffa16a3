//! The HTTP endpoints beside gRPC on a member's client port, as etcd serves
//! them: /health (unhealthy without a leader), /version, /metrics with etcd's
//! metric names, counting gRPC calls by method and code.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use synod_etcd::pb::etcdserverpb as pb;
use synod_server::cluster::{start_cluster, ClusterSpec};
use tonic::transport::Channel;

mod common;
use common::free_port;

/// One HTTP/1.1 request: (status code, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let out = http_whole(addr, method, path);
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// One HTTP/1.1 request: the whole answer, headers included.
fn http_whole(addr: SocketAddr, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of the metric line that starts with `series`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A KV client of the member at `addr`, once it has taken a write (k = v)
/// over gRPC: the cluster has a leader.
async fn first_write(addr: SocketAddr) -> pb::kv_client::KvClient<Channel> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut kv = pb::kv_client::KvClient::new(ch);
    let deadline = Instant::now() + Duration::from_secs(20);
    let put = pb::PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    while kv.put(put.clone()).await.is_err() {
        assert!(Instant::now() < deadline, "no write accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_version_and_metrics_as_etcd_serves_them() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let spec = ClusterSpec::local(dir.path().to_path_buf(), &ports);
    let mut members = start_cluster(&spec).await.unwrap();
    let addr = spec.members[0].client;
    let mut kv = first_write(addr).await;
    // A read of a future revision fails with OutOfRange.
    let future = pb::RangeRequest {
        key: b"k".to_vec(),
        revision: 1000,
        ..Default::default()
    };
    let err = kv.range(future).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange);

    let (code, body) = tokio::task::spawn_blocking(move || http(addr, "GET", "/health"))
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, r#"{"health":"true"}"#));
    let (code, _) = tokio::task::spawn_blocking(move || http(addr, "POST", "/health"))
        .await
        .unwrap();
    assert_eq!(code, 405, "etcd answers only GET");
    // Every HTTP answer carries etcd's CORS headers (any origin, by default).
    let whole = tokio::task::spawn_blocking(move || http_whole(addr, "GET", "/version"))
        .await
        .unwrap();
    assert!(
        whole.contains("access-control-allow-origin: *\r\n"),
        "{whole}"
    );
    let (code, body) = tokio::task::spawn_blocking(move || http(addr, "GET", "/version"))
        .await
        .unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, r#"{"etcdserver":"3.4.0","etcdcluster":"3.4.0"}"#)
    );

    let (code, text) = tokio::task::spawn_blocking(move || http(addr, "GET", "/metrics"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(metric(&text, "etcd_server_has_leader"), Some(1.0), "{text}");
    assert!(metric(&text, "etcd_server_leader_changes_seen_total") >= Some(1.0));
    assert!(metric(&text, "etcd_server_proposals_committed_total") >= Some(2.0));
    assert!(metric(&text, "etcd_disk_wal_fsync_duration_seconds_count") >= Some(1.0));
    assert!(metric(&text, "etcd_mvcc_db_total_size_in_bytes") > Some(0.0));
    assert_eq!(metric(&text, "etcd_debugging_mvcc_keys_total"), Some(1.0));
    let ok_puts = r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
    assert!(metric(&text, ok_puts) >= Some(1.0), "{text}");
    let bad_range = r#"grpc_server_handled_total{grpc_code="OutOfRange",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
    assert_eq!(metric(&text, bad_range), Some(1.0), "{text}");
    // go-grpc-prometheus's other series, and etcd's client byte counts
    // (the messages' own bytes, a put of "k" = "v" is 6).
    let series = |name: &str, method: &str| {
        format!(
            r#"{name}{{grpc_method="{method}",grpc_service="etcdserverpb.KV",grpc_type="unary"}}"#
        )
    };
    let started = metric(&text, &series("grpc_server_started_total", "Put")).unwrap();
    assert!(started >= 1.0, "{text}");
    assert_eq!(
        metric(&text, &series("grpc_server_msg_received_total", "Put")),
        Some(started)
    );
    assert!(metric(&text, &series("grpc_server_msg_sent_total", "Put")) >= Some(1.0));
    assert!(metric(&text, "etcd_network_client_grpc_received_bytes_total") >= Some(6.0));
    assert!(metric(&text, "etcd_network_client_grpc_sent_bytes_total") > Some(0.0));
    // etcd lists its methods before they are called, every code of each.
    assert_eq!(
        metric(&text, &series("grpc_server_started_total", "Compact")),
        Some(0.0)
    );
    let never = r#"grpc_server_handled_total{grpc_code="DataLoss",grpc_method="MemberPromote",grpc_service="etcdserverpb.Cluster",grpc_type="unary"}"#;
    assert_eq!(metric(&text, never), Some(0.0), "{text}");
    // The member, its store, its disk and its process.
    let id = format!(
        r#"etcd_server_id{{server_id="{:x}"}}"#,
        spec.members[0].member_id
    );
    assert_eq!(metric(&text, &id), Some(1.0), "{text}");
    assert_eq!(metric(&text, "etcd_server_is_learner"), Some(0.0));
    assert_eq!(
        metric(&text, "etcd_server_quota_backend_bytes"),
        Some(2147483648.0)
    );
    assert!(metric(&text, "etcd_debugging_mvcc_current_revision") >= Some(2.0));
    assert_eq!(
        metric(&text, "etcd_debugging_mvcc_compact_revision"),
        Some(-1.0),
        "etcd says -1 before the first compaction"
    );
    assert!(metric(&text, "etcd_mvcc_db_total_size_in_use_in_bytes") > Some(0.0));
    assert!(metric(&text, "etcd_disk_wal_write_bytes_total") > Some(0.0));
    assert_eq!(metric(&text, "etcd_server_health_success"), Some(1.0));
    assert!(metric(&text, "process_resident_memory_bytes") > Some(0.0));
    assert!(metric(&text, "process_open_fds") > Some(0.0));
    assert!(metric(&text, "os_fd_used") > Some(0.0));
    assert!(metric(&text, "os_fd_limit") > Some(0.0));
    // Peer traffic, labelled with the other members' ids as etcd labels it
    // (followers send each other their hellos, if nothing else; a writer
    // whose peer was not listening yet tries again a second later).
    let me = spec.members[0].member_id;
    let others: Vec<u64> = spec.members[1..].iter().map(|m| m.member_id).collect();
    let peers_counted = |text: &str| {
        others.iter().all(|id| {
            let sent = format!(r#"etcd_network_peer_sent_bytes_total{{To="{id:x}"}}"#);
            let received = format!(r#"etcd_network_peer_received_bytes_total{{From="{id:x}"}}"#);
            let active = format!(r#"etcd_network_active_peers{{Local="{me:x}",Remote="{id:x}"}}"#);
            metric(text, &sent) > Some(0.0)
                && metric(text, &received) > Some(0.0)
                && metric(text, &active) == Some(1.0)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut peers_text = text.clone();
    while !peers_counted(&peers_text) {
        assert!(Instant::now() < deadline, "{peers_text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        peers_text = tokio::task::spawn_blocking(move || http(addr, "GET", "/metrics"))
            .await
            .unwrap()
            .1;
    }
    for id in &others {
        let failed = format!(r#"etcd_network_peer_received_failures_total{{From="{id:x}"}}"#);
        assert_eq!(metric(&peers_text, &failed), Some(0.0), "{peers_text}");
        let gone =
            format!(r#"etcd_network_disconnected_peers_total{{Local="{me:x}",Remote="{id:x}"}}"#);
        assert_eq!(metric(&peers_text, &gone), Some(0.0), "{peers_text}");
    }

    // A watch is handled when its stream ends, not when it starts: what
    // etcd's dashboards count as active streams is started - handled.
    let watch = |name: &str| {
        format!(
            r#"{name}{{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"}}"#
        )
    };
    let canceled = r#"grpc_server_handled_total{grpc_code="Canceled",grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"}"#;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut stream = pb::watch_client::WatchClient::new(ch)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let create = pb::WatchCreateRequest {
        key: b"k".to_vec(),
        ..Default::default()
    };
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
    })
    .await
    .unwrap();
    assert!(stream.message().await.unwrap().unwrap().created);
    let (_, text) = tokio::task::spawn_blocking(move || http(addr, "GET", "/metrics"))
        .await
        .unwrap();
    assert_eq!(
        metric(&text, &watch("grpc_server_started_total")),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, &watch("grpc_server_msg_received_total")),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, &watch("grpc_server_msg_sent_total")),
        Some(1.0)
    );
    assert_eq!(metric(&text, canceled), Some(0.0), "{text}");
    // etcd's gauges of open watch streams and watchers.
    let streams = "etcd_debugging_mvcc_watch_stream_total";
    let watchers = "etcd_debugging_mvcc_watcher_total";
    assert_eq!(metric(&text, streams), Some(1.0), "{text}");
    assert_eq!(metric(&text, watchers), Some(1.0), "{text}");
    drop((tx, stream));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = tokio::task::spawn_blocking(move || http(addr, "GET", "/metrics"))
            .await
            .unwrap();
        let gone = [streams, watchers].map(|g| metric(&text, g));
        if metric(&text, canceled) == Some(1.0) && gone == [Some(0.0); 2] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a closed watch never counted: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Without a quorum there is no leader (check-quorum steps it down), and
    // the member says it is unhealthy.
    for m in members.drain(1..) {
        m.stop().await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = tokio::task::spawn_blocking(move || http(addr, "GET", "/health"))
            .await
            .unwrap();
        if code == 503 {
            assert_eq!(body, r#"{"health":"false"}"#);
            break;
        }
        assert!(Instant::now() < deadline, "still healthy without a quorum");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The survivor gives its leader up once an election timeout passes
    // without it (its failed read may have told it sooner).
    loop {
        let (_, text) = tokio::task::spawn_blocking(move || http(addr, "GET", "/metrics"))
            .await
            .unwrap();
        if metric(&text, "etcd_server_has_leader") == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still a leader without a quorum: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for m in members {
        m.stop().await;
    }
}

/// `--host-whitelist`: on a plain client port, HTTP requests naming an
/// unlisted Host get etcd's 421 answer (against DNS rebinding); gRPC on
/// the same port is not checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_hosts_are_refused_over_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [(free_port(), free_port())];
    let mut spec = ClusterSpec::local(dir.path().to_path_buf(), &ports);
    spec.tuning.host_whitelist = synod_etcd::HostWhitelist::parse("localhost");
    let mut members = start_cluster(&spec).await.unwrap();
    let addr = spec.members[0].client;
    first_write(addr).await;
    // http() names the address, 127.0.0.1, as the Host.
    let (code, body) = tokio::task::spawn_blocking(move || http(addr, "GET", "/health"))
        .await
        .unwrap();
    assert_eq!(code, 421, "{body}");
    assert!(
        body.contains("etcd --host-whitelist \"127.0.0.1\""),
        "{body}"
    );
    for m in members.drain(..) {
        m.stop().await;
    }
}
