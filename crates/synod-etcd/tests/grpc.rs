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
    let s = MaintenanceClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.leader, 1);
    assert!(!s.version.is_empty());
}
