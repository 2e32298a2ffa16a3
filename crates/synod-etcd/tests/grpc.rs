//! The API over real gRPC, with the generated client: answers, headers, and
//! etcd's exact error codes and messages.

mod common;

use pb::cluster_client::ClusterClient;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::maintenance_client::MaintenanceClient;
use synod_etcd::pb::etcdserverpb as pb;
use synod_etcd::Limits;
use tonic::transport::Channel;
use tonic::Code;

async fn connect(limits: Limits) -> Channel {
    let addr = common::serve(limits).await;
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn put(k: &str, v: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

fn get(k: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: k.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn put_get_delete_with_revisions_in_the_header() {
    let mut kv = KvClient::new(connect(Limits::default()).await);
    let r = kv.put(put("foo", "bar")).await.unwrap().into_inner();
    assert_eq!(r.header.unwrap().revision, 2);
    let r = kv
        .put(pb::PutRequest {
            prev_kv: true,
            ..put("foo", "baz")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.prev_kv.unwrap().value, b"bar");
    let r = kv.range(get("foo")).await.unwrap().into_inner();
    let h = r.header.unwrap();
    assert_eq!((h.revision, h.member_id), (3, 1));
    let got = &r.kvs[0];
    assert_eq!(
        (
            got.value.as_slice(),
            got.create_revision,
            got.mod_revision,
            got.version
        ),
        (&b"baz"[..], 2, 3, 2)
    );
    let r = kv
        .delete_range(pb::DeleteRangeRequest {
            key: "foo".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted, 1);
    assert!(kv
        .range(get("foo"))
        .await
        .unwrap()
        .into_inner()
        .kvs
        .is_empty());
}

#[tokio::test]
async fn errors_carry_etcds_codes_and_messages() {
    let mut kv = KvClient::new(
        connect(Limits {
            max_request_bytes: 1024,
            ..Limits::default()
        })
        .await,
    );
    let cases: Vec<(tonic::Status, Code, &str)> = vec![
        (
            kv.range(get("")).await.unwrap_err(),
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        ),
        (
            kv.put(pb::PutRequest {
                lease: 99,
                ..put("k", "v")
            })
            .await
            .unwrap_err(),
            Code::NotFound,
            "etcdserver: requested lease not found",
        ),
        (
            kv.range(pb::RangeRequest {
                revision: 50,
                ..get("k")
            })
            .await
            .unwrap_err(),
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        (
            kv.put(put("big", &"x".repeat(2048))).await.unwrap_err(),
            Code::InvalidArgument,
            "etcdserver: request is too large",
        ),
        (
            kv.txn(pb::TxnRequest {
                success: vec![
                    pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(put("a", "1"))),
                    },
                    pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(put("a", "2"))),
                    },
                ],
                ..Default::default()
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        ),
    ];
    for (status, code, message) in cases {
        assert_eq!((status.code(), status.message()), (code, message));
    }
    // Past the limit plus gRPC's allowance for framing, the transport refuses
    // the message before any handler sees it, with grpc-go's code and words.
    let huge = put("huge", &"x".repeat(600 * 1024));
    let found = prost::Message::encoded_len(&huge);
    let e = kv.put(huge).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::ResourceExhausted,
            format!(
                "grpc: received message larger than max ({found} vs. {})",
                1024 + 512 * 1024
            )
            .as_str()
        )
    );
    // Compaction, then a read before it.
    kv.put(put("k", "1")).await.unwrap();
    kv.put(put("k", "2")).await.unwrap();
    kv.compact(pb::CompactionRequest {
        revision: 3,
        physical: false,
    })
    .await
    .unwrap();
    let e = kv
        .range(pb::RangeRequest {
            revision: 2,
            ..get("k")
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
}

#[tokio::test]
async fn transactions_compare_and_answer_per_operation() {
    let mut kv = KvClient::new(connect(Limits::default()).await);
    kv.put(put("a", "1")).await.unwrap();
    let cmp = pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Value as i32,
        key: "a".into(),
        target_union: Some(pb::compare::TargetUnion::Value("1".into())),
        range_end: Vec::new(),
    };
    let op = |r| pb::RequestOp { request: Some(r) };
    let r = kv
        .txn(pb::TxnRequest {
            compare: vec![cmp],
            success: vec![
                op(pb::request_op::Request::RequestPut(put("b", "2"))),
                op(pb::request_op::Request::RequestRange(get("b"))),
            ],
            failure: vec![op(pb::request_op::Request::RequestPut(put("c", "no")))],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.succeeded);
    assert_eq!(r.header.unwrap().revision, 3);
    match &r.responses[1].response {
        Some(pb::response_op::Response::ResponseRange(rr)) => assert_eq!(rr.kvs[0].value, b"2"),
        other => panic!("{other:?}"),
    }
    assert!(kv
        .range(get("c"))
        .await
        .unwrap()
        .into_inner()
        .kvs
        .is_empty());
}

#[tokio::test]
async fn leases_keep_keys_alive_until_revoked() {
    let channel = connect(Limits::default()).await;
    let mut kv = KvClient::new(channel.clone());
    let mut lease = LeaseClient::new(channel);
    let g = lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(g.id != 0 && g.ttl == 30);
    kv.put(pb::PutRequest {
        lease: g.id,
        ..put("session", "alive")
    })
    .await
    .unwrap();

    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(pb::LeaseKeepAliveRequest { id: g.id })
        .await
        .unwrap();
    let ka = replies.message().await.unwrap().unwrap();
    assert_eq!((ka.id, ka.ttl), (g.id, 30));
    tx.send(pb::LeaseKeepAliveRequest { id: 12345 })
        .await
        .unwrap();
    assert_eq!(
        replies.message().await.unwrap().unwrap().ttl,
        0,
        "unknown lease"
    );

    let t = lease
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: g.id,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (t.granted_ttl, t.keys.clone()),
        (30, vec![b"session".to_vec()])
    );
    assert!(t.ttl > 0 && t.ttl <= 30);
    let ids: Vec<i64> = lease
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .leases
        .iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(ids, [g.id]);

    lease
        .lease_revoke(pb::LeaseRevokeRequest { id: g.id })
        .await
        .unwrap();
    assert!(kv
        .range(get("session"))
        .await
        .unwrap()
        .into_inner()
        .kvs
        .is_empty());
    let t = lease
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: g.id,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.ttl, -1, "a revoked lease reads as expired");
}

#[tokio::test]
async fn members_and_status() {
    let channel = connect(Limits::default()).await;
    let m = ClusterClient::new(channel.clone())
        .member_list(pb::MemberListRequest {
            linearizable: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.members.len(), 1);
    assert_eq!((m.members[0].id, m.members[0].name.as_str()), (1, "n1"));
    // etcd's cluster service fills only the ids and the term.
    let h = m.header.unwrap();
    assert_eq!((h.member_id, h.revision), (1, 0));
    let s = MaintenanceClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.leader, 1);
    assert_eq!(s.version, "3.4.0", "the etcd API level synod implements");
    assert!(s.db_size_in_use >= 0);
}

mod watch {
    use super::*;
    use pb::watch_client::WatchClient;
    use pb::watch_request::RequestUnion;
    use synod_etcd::pb::mvccpb::event::EventType;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    struct Stream {
        tx: mpsc::Sender<pb::WatchRequest>,
        rx: tonic::Streaming<pb::WatchResponse>,
    }

    impl Stream {
        async fn open(channel: Channel) -> Stream {
            let (tx, rx) = mpsc::channel(8);
            let rx = WatchClient::new(channel)
                .watch(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            Stream { tx, rx }
        }
        async fn create(&mut self, c: pb::WatchCreateRequest) -> pb::WatchResponse {
            self.tx
                .send(pb::WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(c)),
                })
                .await
                .unwrap();
            self.next().await
        }
        async fn next(&mut self) -> pb::WatchResponse {
            self.rx.message().await.unwrap().expect("stream open")
        }
    }

    fn events(r: &pb::WatchResponse) -> Vec<(EventType, String, String)> {
        r.events
            .iter()
            .map(|e| {
                let kv = e.kv.clone().unwrap();
                (
                    e.r#type(),
                    String::from_utf8(kv.key).unwrap(),
                    String::from_utf8(kv.value).unwrap(),
                )
            })
            .collect()
    }

    /// A member that installs a leader's snapshot jumps over revisions it
    /// never applied one by one; a watcher open on it must still see them
    /// (found by `synod chaos` with partitions: a watcher missed ~1,000).
    #[tokio::test]
    async fn a_watch_sees_the_revisions_a_snapshot_jumped_over() {
        let (addr, backend) = common::serve_backend(Limits::default()).await;
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut w = Stream::open(channel.clone()).await;
        let created = w
            .create(pb::WatchCreateRequest {
                key: "k".into(),
                range_end: "l".into(),
                ..Default::default()
            })
            .await;
        assert!(created.created);
        // The leader's store: two puts this member never applied.
        let mut leader = synod_kv::Store::new();
        for (k, v) in [("k1", "a"), ("k2", "b")] {
            let put = synod_kv::Command::Put(synod_kv::PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            });
            leader.apply(&put).unwrap();
        }
        backend.install(leader);
        KvClient::new(channel).put(put("k3", "c")).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let r = tokio::time::timeout(std::time::Duration::from_secs(5), w.next())
                .await
                .unwrap_or_else(|_| panic!("only {seen:?} arrived"));
            seen.extend(events(&r).into_iter().map(|(_, k, v)| (k, v)));
        }
        let want: Vec<(String, String)> = [("k1", "a"), ("k2", "b"), ("k3", "c")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(seen, want);
    }

    /// A client that sends its creates and then closes its side of the
    /// stream (grpcurl does) still gets events: etcd ends a watch stream
    /// only when the client cancels it.
    #[tokio::test]
    async fn a_watch_outlives_the_end_of_its_requests() {
        let channel = connect(Limits::default()).await;
        let Stream { tx, mut rx } = Stream::open(channel.clone()).await;
        tx.send(pb::WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: "k".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        drop(tx);
        let created = rx.message().await.unwrap().expect("stream open");
        assert!(created.created && !created.canceled);
        KvClient::new(channel).put(put("k", "v")).await.unwrap();
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), rx.message())
            .await
            .expect("no event after the requests ended")
            .unwrap()
            .expect("stream open");
        assert_eq!(events(&r), [(EventType::Put, "k".into(), "v".into())]);
    }

    /// A watcher that asks for progress notifications hears, when no events
    /// went to it, an empty answer headed with the revision it has seen all
    /// of; one that did not ask hears nothing.
    #[tokio::test]
    async fn progress_notifications_go_to_the_watchers_that_asked() {
        let channel = connect(Limits {
            watch_progress_notify_interval: std::time::Duration::from_millis(100),
            ..Limits::default()
        })
        .await;
        let mut kv = KvClient::new(channel.clone());
        kv.put(put("elsewhere", "1")).await.unwrap(); // revision 2
        let mut w = Stream::open(channel).await;
        let quiet = w
            .create(pb::WatchCreateRequest {
                key: "k".into(),
                ..Default::default()
            })
            .await;
        let asked = w
            .create(pb::WatchCreateRequest {
                key: "k".into(),
                progress_notify: true,
                ..Default::default()
            })
            .await;
        assert_ne!(quiet.watch_id, asked.watch_id);
        for revision in [2, 2, 3] {
            if revision == 3 {
                kv.put(put("elsewhere", "2")).await.unwrap();
            }
            let r = loop {
                let r = tokio::time::timeout(std::time::Duration::from_secs(10), w.next())
                    .await
                    .expect("no progress notification");
                assert_eq!(r.watch_id, asked.watch_id, "{r:?}");
                assert!(r.events.is_empty() && !r.created && !r.canceled, "{r:?}");
                // One may already have been due before the put.
                if r.header.as_ref().unwrap().revision == revision {
                    break r;
                }
                assert!(revision == 3, "{r:?}");
            };
            assert_eq!(r.compact_revision, 0);
        }
    }

    #[tokio::test]
    async fn a_watch_replays_history_then_follows_live_changes() {
        let channel = connect(Limits::default()).await;
        let mut kv = KvClient::new(channel.clone());
        kv.put(put("app/a", "1")).await.unwrap(); // revision 2
        kv.put(put("other", "x")).await.unwrap(); // 3
        kv.put(put("app/a", "2")).await.unwrap(); // 4

        let mut w = Stream::open(channel).await;
        let created = w
            .create(pb::WatchCreateRequest {
                key: "app/".into(),
                range_end: "app0".into(),
                start_revision: 2,
                prev_kv: true,
                ..Default::default()
            })
            .await;
        assert!(created.created && !created.canceled);
        assert_eq!(created.watch_id, 0, "ids count up from 0");
        // History comes in one response headed with the store's revision, as
        // etcd sends it (not one response per revision).
        let r = w.next().await;
        assert_eq!(r.header.unwrap().revision, 4);
        assert_eq!(
            events(&r),
            [
                (EventType::Put, "app/a".into(), "1".into()),
                (EventType::Put, "app/a".into(), "2".into())
            ]
        );
        assert_eq!(r.events[1].prev_kv.clone().unwrap().value, b"1");

        // Live: a transaction that touches two watched keys is one response.
        let op = |r| pb::RequestOp { request: Some(r) };
        kv.txn(pb::TxnRequest {
            success: vec![
                op(pb::request_op::Request::RequestPut(put("app/b", "3"))),
                op(pb::request_op::Request::RequestDeleteRange(
                    pb::DeleteRangeRequest {
                        key: "app/a".into(),
                        ..Default::default()
                    },
                )),
                op(pb::request_op::Request::RequestPut(put("unwatched", "4"))),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
        let r = w.next().await;
        assert_eq!(r.header.unwrap().revision, 5);
        assert_eq!(
            events(&r),
            [
                (EventType::Put, "app/b".into(), "3".into()),
                (EventType::Delete, "app/a".into(), "".into())
            ]
        );

        // A second watcher on the same stream, without puts.
        let c = w
            .create(pb::WatchCreateRequest {
                key: "app/b".into(),
                filters: vec![pb::watch_create_request::FilterType::Noput as i32],
                ..Default::default()
            })
            .await;
        assert_eq!(c.watch_id, 1);
        kv.put(put("app/b", "5")).await.unwrap();
        kv.delete_range(pb::DeleteRangeRequest {
            key: "app/b".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let r = w.next().await;
            seen.push((r.watch_id, events(&r)));
        }
        assert!(seen.contains(&(0, vec![(EventType::Put, "app/b".into(), "5".into())])));
        assert!(seen.contains(&(0, vec![(EventType::Delete, "app/b".into(), "".into())])));
        assert!(seen.contains(&(1, vec![(EventType::Delete, "app/b".into(), "".into())])));

        // Cancel one.
        w.tx.send(pb::WatchRequest {
            request_union: Some(RequestUnion::CancelRequest(pb::WatchCancelRequest {
                watch_id: 1,
            })),
        })
        .await
        .unwrap();
        let r = w.next().await;
        assert!(r.canceled && r.watch_id == 1);
    }

    #[tokio::test]
    async fn a_watch_from_a_compacted_revision_is_canceled() {
        let channel = connect(Limits::default()).await;
        let mut kv = KvClient::new(channel.clone());
        for v in ["1", "2", "3"] {
            kv.put(put("k", v)).await.unwrap();
        }
        kv.compact(pb::CompactionRequest {
            revision: 3,
            physical: false,
        })
        .await
        .unwrap();
        let mut w = Stream::open(channel).await;
        let created = w
            .create(pb::WatchCreateRequest {
                key: "k".into(),
                start_revision: 2,
                ..Default::default()
            })
            .await;
        assert!(created.created);
        let r = w.next().await;
        assert!(r.canceled);
        assert_eq!(r.compact_revision, 3);
        // As etcd 3.4: no reason; clients derive their error from the
        // compaction revision.
        assert_eq!(r.cancel_reason, "");
        // From the compaction revision itself it works.
        let created = w
            .create(pb::WatchCreateRequest {
                key: "k".into(),
                start_revision: 3,
                ..Default::default()
            })
            .await;
        assert!(created.created && !created.canceled);
        let r = w.next().await;
        assert_eq!(
            events(&r),
            [
                (EventType::Put, "k".into(), "2".into()),
                (EventType::Put, "k".into(), "3".into())
            ]
        );
    }
}

/// etcd 3.4 with its default timing answers `lease grant 0`, `-5` and `1`
/// with a TTL of 2 s, and keeps larger TTLs as asked.
#[tokio::test]
async fn short_and_non_positive_lease_ttls_are_raised_to_the_minimum() {
    let mut lease = LeaseClient::new(connect(Limits::default()).await);
    for (asked, granted) in [(0, 2), (-5, 2), (1, 2), (2, 2), (3, 3)] {
        let g = lease
            .lease_grant(pb::LeaseGrantRequest { ttl: asked, id: 0 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(g.ttl, granted, "lease grant {asked}");
        let t = lease
            .lease_time_to_live(pb::LeaseTimeToLiveRequest {
                id: g.id,
                keys: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.granted_ttl, granted, "time-to-live after grant {asked}");
    }
}

#[test]
fn the_minimum_ttl_follows_the_election_timeout_as_in_etcd() {
    use std::time::Duration;
    let ms = Duration::from_millis;
    assert_eq!(Limits::min_lease_ttl_for(ms(100), ms(1000)), 2);
    assert_eq!(Limits::min_lease_ttl_for(ms(100), ms(500)), 1);
    assert_eq!(Limits::min_lease_ttl_for(ms(50), ms(3000)), 5);
    assert_eq!(Limits::min_lease_ttl_for(ms(250), ms(1300)), 2);
}

/// gRPC's health service, as etcd 3.4 answers it (recorded against etcd
/// 3.4.23 with grpcio's health client): the server as a whole is SERVING;
/// a named service is unknown.
#[tokio::test]
async fn grpc_health_answers_as_etcd_does() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let mut health = HealthClient::new(connect(Limits::default()).await);
    let ask = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let r = health.check(ask("")).await.unwrap().into_inner();
    assert_eq!(r.status(), ServingStatus::Serving);
    let err = health.check(ask("etcdserverpb.KV")).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "unknown service")
    );
    let mut all = health.watch(ask("")).await.unwrap().into_inner();
    let first = all.message().await.unwrap().expect("the status now");
    assert_eq!(first.status(), ServingStatus::Serving);
    let mut named = health.watch(ask("nope")).await.unwrap().into_inner();
    let first = named.message().await.unwrap().expect("the status now");
    assert_eq!(first.status(), ServingStatus::ServiceUnknown);
}
