//! A lease never ends before the TTL its holder was granted, counted from
//! when the holder heard the grant: 1,000 leases on a three-member cluster,
//! each with a key, all left to expire; the deletion of every key, as a
//! watcher on one member sees it, comes after grant answer + TTL. And right
//! after a restart, TimeToLive says how long a lease will still live.

use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::watch_client::WatchClient;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use synod_etcd::pb::etcdserverpb as pb;
use synod_etcd::pb::mvccpb;
use synod_server::cluster::{start_cluster, ClusterSpec};
use tokio::sync::mpsc;
use tonic::transport::Channel;

const LEASES: usize = 1_000;
const PREFIX: &str = "lease-expiry/";

mod common;
use common::free_port;

fn channel(spec: &ClusterSpec, i: usize) -> Channel {
    let url = format!("http://{}", spec.members[i].client);
    Channel::from_shared(url).unwrap().connect_lazy()
}

/// Grants a lease (retrying while an election is under way), attaches a key,
/// and returns when the grant's answer arrived and the granted TTL.
async fn hold(ch: Channel, n: usize) -> (String, Instant, i64) {
    let ttl = 2 + (n % 2) as i64;
    let deadline = Instant::now() + Duration::from_secs(20);
    let (answered, g) = loop {
        match LeaseClient::new(ch.clone())
            .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
            .await
        {
            Ok(g) => break (Instant::now(), g.into_inner()),
            Err(e) => {
                assert!(Instant::now() < deadline, "no lease granted: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(g.ttl, ttl);
    let key = format!("{PREFIX}{n:04}");
    KvClient::new(ch)
        .put(pb::PutRequest {
            key: key.clone().into(),
            value: b"held".to_vec(),
            lease: g.id,
            ..Default::default()
        })
        .await
        .expect("the lease is still alive when its key is attached");
    (key, answered, g.ttl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lease_ends_before_its_ttl_from_the_grant_answer() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let spec = ClusterSpec::local(dir.path().to_path_buf(), &ports);
    let members = start_cluster(&spec).await.unwrap();

    // A watcher on one member sees every deletion under the prefix.
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: PREFIX.into(),
                range_end: b"lease-expiry0".to_vec(),
                filters: vec![pb::watch_create_request::FilterType::Noput as i32],
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let mut events = WatchClient::new(channel(&spec, 2))
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("the watch opens")
        .into_inner();
    assert!(events.message().await.unwrap().unwrap().created);

    // Holders through every member, 50 at a time.
    let mut held: BTreeMap<String, (Instant, i64)> = BTreeMap::new();
    for batch in (0..LEASES).collect::<Vec<_>>().chunks(50) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|&n| tokio::spawn(hold(channel(&spec, n % 3), n)))
            .collect();
        for t in tasks {
            let (key, answered, ttl) = t.await.unwrap();
            held.insert(key, (answered, ttl));
        }
    }

    // The longest TTL is 3 s; give expiry and delivery ample slack.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut early = Vec::new();
    let mut gone = 0;
    while gone < LEASES {
        let r = tokio::time::timeout_at(deadline.max(Instant::now()).into(), events.message())
            .await
            .expect("every lease expires in time")
            .unwrap()
            .expect("the watch stays open");
        let seen = Instant::now();
        for e in r.events {
            assert_eq!(e.r#type, mvccpb::event::EventType::Delete as i32);
            let key = String::from_utf8(e.kv.unwrap().key).unwrap();
            let (answered, ttl) = held[&key];
            let lived = seen - answered;
            if lived < Duration::from_secs(ttl as u64) {
                early.push(format!("{key}: {lived:?} of {ttl} s"));
            }
            gone += 1;
        }
    }
    assert!(early.is_empty(), "ended before their TTL: {early:?}");
    drop(tx);
    for m in members {
        m.stop().await;
    }
}

/// Right after the whole cluster restarts, TimeToLive reports what will
/// happen: the lease lives at least the reported remaining seconds, and not
/// much longer (the report once said 4 s of a lease that then lived 6 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_to_live_after_a_restart_reports_what_will_happen() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let spec = ClusterSpec::local(dir.path().to_path_buf(), &ports);
    let members = start_cluster(&spec).await.unwrap();
    let (key, _, _) = hold(channel(&spec, 0), 1).await; // TTL 3 s
    for m in members {
        m.stop().await;
    }
    let members = start_cluster(&spec).await.unwrap();
    let lease = {
        let mut kv = KvClient::new(channel(&spec, 1));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = kv
                .range(pb::RangeRequest {
                    key: key.clone().into(),
                    serializable: true,
                    ..Default::default()
                })
                .await;
            if let Some(kv) = r.ok().and_then(|r| r.into_inner().kvs.pop()) {
                break kv.lease;
            }
            assert!(Instant::now() < deadline, "the key did not come back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // Asked as soon as the restarted cluster answers.
    let mut leases = LeaseClient::new(channel(&spec, 2));
    let deadline = Instant::now() + Duration::from_secs(20);
    let (asked, reported) = loop {
        let r = leases
            .lease_time_to_live(pb::LeaseTimeToLiveRequest {
                id: lease,
                keys: false,
            })
            .await;
        if let Ok(r) = r {
            break (Instant::now(), r.into_inner().ttl);
        }
        assert!(Instant::now() < deadline, "no TimeToLive answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(reported > 0, "the lease was reported gone: {reported}");
    let mut kv = KvClient::new(channel(&spec, 0));
    let deadline = Instant::now() + Duration::from_secs(30);
    let lived = loop {
        let r = kv
            .range(pb::RangeRequest {
                key: key.clone().into(),
                ..Default::default()
            })
            .await;
        if r.is_ok_and(|r| r.into_inner().kvs.is_empty()) {
            break asked.elapsed();
        }
        assert!(Instant::now() < deadline, "the lease never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Whole seconds, truncated, and the deadline's two ticks of margin are
    // not reported: a lease lives up to 1.2 s past its report, and the
    // revoke still has to commit.
    let reported = Duration::from_secs(reported as u64);
    assert!(
        lived >= reported && lived <= reported + Duration::from_millis(1700),
        "reported {reported:?} remaining, lived {lived:?}"
    );
    for m in members {
        m.stop().await;
    }
}
