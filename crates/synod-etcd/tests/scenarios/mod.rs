//! Scenarios that drive an etcd API endpoint and return a transcript of what
//! it answered, with everything that differs between two correct servers
//! (cluster and member ids, raft terms, the absolute revision a fresh store
//! starts at) taken out. `examples/record_golden.rs` runs them against a real
//! etcd to record `tests/golden/*.json`; `tests/parity.rs` runs them against
//! synod and compares.

mod auth;

use serde_json::{json, Value};
use std::time::Duration;
use synod_etcd::pb::etcdserverpb as pb;
use synod_etcd::pb::mvccpb;
use synod_etcd::pb::v3electionpb as epb;
use synod_etcd::pb::v3lockpb as lpb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// A scenario: a name (its golden file) and what it does.
pub type Scenario = (&'static str, fn(Channel) -> Transcript);
pub type Transcript = std::pin::Pin<Box<dyn std::future::Future<Output = Value> + Send>>;

pub const SCENARIOS: &[Scenario] = &[
    ("watch_history", |c| Box::pin(watch_history(c))),
    ("watch_from_compacted", |c| {
        Box::pin(watch_from_compacted(c))
    }),
    ("watch_long_history", |c| Box::pin(watch_long_history(c))),
    ("oversized_requests", |c| Box::pin(oversized_requests(c))),
    ("lease_ttl_floor", |c| Box::pin(lease_ttl_floor(c))),
    ("lock", |c| Box::pin(lock(c))),
    ("election", |c| Box::pin(election(c))),
    // Last: it turns auth on and off again.
    ("auth", |c| Box::pin(auth::auth(c))),
];

/// How long a scenario waits for one response before it records a timeout.
const WAIT: Duration = Duration::from_secs(5);

fn put(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

/// Writes and returns the revision the write created.
async fn write(ch: &Channel, key: &str, value: &str) -> i64 {
    let r = pb::kv_client::KvClient::new(ch.clone())
        .put(put(key, value))
        .await
        .expect("put succeeds")
        .into_inner();
    r.header.expect("header").revision
}

/// One watch stream, recording what it receives relative to `base`.
struct Watch {
    tx: mpsc::Sender<pb::WatchRequest>,
    rx: tonic::Streaming<pb::WatchResponse>,
    base: i64,
    seen: Vec<Value>,
}

impl Watch {
    /// Opens a stream with its first watch. The create request is queued
    /// before the call: etcd (grpc-go) sends the response headers only with
    /// its first message, so awaiting the call first would wait forever.
    async fn open(ch: &Channel, base: i64, first: pb::WatchCreateRequest) -> Watch {
        let (tx, rx) = mpsc::channel(4);
        tx.send(Self::create_request(first))
            .await
            .expect("queue has room");
        let rx = pb::watch_client::WatchClient::new(ch.clone())
            .watch(ReceiverStream::new(rx))
            .await
            .expect("watch stream opens")
            .into_inner();
        Watch {
            tx,
            rx,
            base,
            seen: Vec::new(),
        }
    }

    fn create_request(c: pb::WatchCreateRequest) -> pb::WatchRequest {
        use pb::watch_request::RequestUnion;
        pb::WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(c)),
        }
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) {
        let req = Self::create_request(c);
        self.tx.send(req).await.expect("stream open");
    }

    /// Revisions as offsets from the scenario's first write; revision 0
    /// ("none") is null.
    fn rel(&self, rev: i64) -> Value {
        if rev == 0 {
            Value::Null
        } else {
            json!(rev - self.base)
        }
    }

    fn kv(&self, kv: &mvccpb::KeyValue) -> Value {
        json!({
            "key": String::from_utf8_lossy(&kv.key),
            "value": String::from_utf8_lossy(&kv.value),
            "create_revision": self.rel(kv.create_revision),
            "mod_revision": self.rel(kv.mod_revision),
            "version": kv.version,
        })
    }

    /// Records the next response; false on a timeout or the end of the stream.
    async fn next(&mut self) -> bool {
        let r = match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => {
                self.seen.push(json!("end of stream"));
                return false;
            }
            Ok(Err(status)) => {
                self.seen.push(
                    json!({"error": format!("{:?}", status.code()), "message": status.message()}),
                );
                return false;
            }
            Err(_) => {
                self.seen.push(json!("timeout"));
                return false;
            }
        };
        let events: Vec<Value> = r
            .events
            .iter()
            .map(|e| {
                json!({
                    "type": if e.r#type == 0 { "PUT" } else { "DELETE" },
                    "kv": e.kv.as_ref().map(|kv| self.kv(kv)),
                    "prev_kv": e.prev_kv.as_ref().map(|kv| self.kv(kv)),
                })
            })
            .collect();
        let header = r.header.map_or(0, |h| h.revision);
        self.seen.push(json!({
            "header_revision": self.rel(header),
            "watch_id": r.watch_id,
            "created": r.created,
            "canceled": r.canceled,
            "compact_revision": self.rel(r.compact_revision),
            "cancel_reason": r.cancel_reason,
            "events": events,
        }));
        true
    }

    /// Records responses until one carries an event with `value`.
    async fn until_value(&mut self, value: &str) {
        loop {
            if !self.next().await {
                return;
            }
            let last = self.seen.last().expect("just pushed");
            let found = last["events"]
                .as_array()
                .is_some_and(|es| es.iter().any(|e| e["kv"]["value"] == value));
            if found {
                return;
            }
        }
    }
}

/// Three revisions of one key, then a watch from the first: etcd replays the
/// history in one response headed with the store's revision, then sends live
/// changes one revision per response.
async fn watch_history(ch: Channel) -> Value {
    let base = write(&ch, "wh", "0").await;
    write(&ch, "wh", "1").await;
    write(&ch, "wh", "2").await;
    write(&ch, "other", "x").await;
    let first = pb::WatchCreateRequest {
        key: "wh".into(),
        start_revision: base,
        prev_kv: true,
        ..Default::default()
    };
    let mut w = Watch::open(&ch, base, first).await;
    w.next().await;
    w.until_value("2").await;
    write(&ch, "wh", "3").await;
    w.until_value("3").await;
    json!(w.seen)
}

/// A watch from below the compaction revision is canceled with the
/// compaction revision; from it, history is replayed.
async fn watch_from_compacted(ch: Channel) -> Value {
    let base = write(&ch, "wc", "0").await;
    write(&ch, "wc", "1").await;
    write(&ch, "wc", "2").await;
    pb::kv_client::KvClient::new(ch.clone())
        .compact(pb::CompactionRequest {
            revision: base + 1,
            physical: true,
        })
        .await
        .expect("compaction succeeds");
    let first = pb::WatchCreateRequest {
        key: "wc".into(),
        start_revision: base,
        ..Default::default()
    };
    let mut w = Watch::open(&ch, base, first).await;
    w.next().await;
    w.next().await;
    w.create(pb::WatchCreateRequest {
        key: "wc".into(),
        start_revision: base + 1,
        ..Default::default()
    })
    .await;
    w.next().await;
    w.until_value("2").await;
    json!(w.seen)
}

/// More history than one response carries: etcd splits a replay into
/// responses of at most 1,000 revisions, each headed with the store's
/// revision. Recorded as a summary per response (event count, first and last
/// revision), not event by event.
async fn watch_long_history(ch: Channel) -> Value {
    const WRITES: i64 = 1_500;
    let base = write(&ch, "wl", "0").await;
    for i in 1..WRITES {
        write(&ch, "wl", &i.to_string()).await;
    }
    let first = pb::WatchCreateRequest {
        key: "wl".into(),
        start_revision: base,
        ..Default::default()
    };
    let mut w = Watch::open(&ch, base, first).await;
    w.next().await;
    w.until_value(&(WRITES - 1).to_string()).await;
    let summary: Vec<Value> = w
        .seen
        .iter()
        .map(|r| {
            let events = r["events"].as_array().cloned().unwrap_or_default();
            json!({
                "header_revision": r["header_revision"],
                "created": r["created"],
                "events": events.len(),
                "first": events.first().map(|e| e["kv"]["mod_revision"].clone()),
                "last": events.last().map(|e| e["kv"]["mod_revision"].clone()),
            })
        })
        .collect();
    json!(summary)
}

/// The outcome of a call as a transcript entry: the error's code and message,
/// or what `ok` makes of the answer.
fn outcome<T>(r: Result<tonic::Response<T>, tonic::Status>, ok: impl Fn(T) -> Value) -> Value {
    match r {
        Ok(resp) => json!({ "ok": ok(resp.into_inner()) }),
        Err(e) => json!({ "code": format!("{:?}", e.code()), "message": e.message() }),
    }
}

/// Puts around the two limits on a request's size with etcd's defaults: its
/// own (`--max-request-bytes`, 1.5 MiB, refused as InvalidArgument) and
/// gRPC's, 512 KiB above it (refused by the transport as ResourceExhausted).
async fn oversized_requests(ch: Channel) -> Value {
    let mut kv = pb::kv_client::KvClient::new(ch);
    let mut seen = Vec::new();
    for size in [1_572_800, 1_600_000, 2_200_000] {
        let r = kv.put(put("big", &"x".repeat(size))).await;
        seen.push(json!({ "value_bytes": size, "put": outcome(r, |_| json!("put")) }));
    }
    json!(seen)
}

/// Lease grants below etcd's minimum TTL (2 s with default timing), at zero,
/// negative, and past the largest TTL etcd accepts.
async fn lease_ttl_floor(ch: Channel) -> Value {
    let mut lease = pb::lease_client::LeaseClient::new(ch);
    let mut seen = Vec::new();
    for ttl in [0, -5, 1, 2, 3, 9_000_000_001] {
        let r = lease
            .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
            .await;
        let granted = outcome(r, |g| json!({ "ttl": g.ttl, "error": g.error }));
        seen.push(json!({ "asked": ttl, "grant": granted }));
    }
    json!(seen)
}

async fn grant(ch: &Channel, ttl: i64) -> i64 {
    pb::lease_client::LeaseClient::new(ch.clone())
        .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
        .await
        .expect("lease granted")
        .into_inner()
        .id
}

/// A key as a transcript shows it: contender keys name their lease in hex,
/// and lease ids differ between servers, so the lease part becomes `LEASE`
/// when it is the expected one.
fn contender(key: &[u8], name: &str, lease: i64) -> Value {
    let key = String::from_utf8_lossy(key).into_owned();
    if key == format!("{name}/{lease:x}") {
        json!(format!("{name}/LEASE"))
    } else {
        json!(key)
    }
}

/// Lock: the first holder gets `NAME/LEASE` at once; a second waits until
/// the first unlocks and gets a higher revision (the fencing token);
/// unknown leases, missing names and keys, and a lock without a lease.
async fn lock(ch: Channel) -> Value {
    let base = write(&ch, "lock-base", "").await;
    let mut locks = lpb::lock_client::LockClient::new(ch.clone());
    let (a, b) = (grant(&ch, 30).await, grant(&ch, 30).await);
    let rel = |h: Option<pb::ResponseHeader>| h.map(|h| h.revision - base);
    let first = locks
        .lock(lpb::LockRequest {
            name: "L".into(),
            lease: a,
        })
        .await
        .expect("free lock is taken")
        .into_inner();
    let mut waiting = locks.clone();
    let second = tokio::spawn(async move {
        waiting
            .lock(lpb::LockRequest {
                name: "L".into(),
                lease: b,
            })
            .await
    });
    // Give the second contender time to queue: it must still be waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued = !second.is_finished();
    let unlocked = locks
        .unlock(lpb::UnlockRequest {
            key: first.key.clone(),
        })
        .await
        .map(|r| rel(r.into_inner().header));
    let second = tokio::time::timeout(WAIT, second)
        .await
        .map(|r| r.expect("task").map(|r| r.into_inner()));
    let second = match second {
        Ok(Ok(r)) => json!({ "key": contender(&r.key, "L", b), "revision": rel(r.header) }),
        Ok(Err(e)) => json!({ "code": format!("{:?}", e.code()), "message": e.message() }),
        Err(_) => json!("timed out"),
    };
    let unknown_lease = outcome(
        locks
            .lock(lpb::LockRequest {
                name: "M".into(),
                lease: 0x7777,
            })
            .await,
        |r| json!(String::from_utf8_lossy(&r.key)),
    );
    let no_lease = outcome(
        locks
            .lock(lpb::LockRequest {
                name: "N".into(),
                lease: 0,
            })
            .await,
        |r| json!(String::from_utf8_lossy(&r.key).starts_with("N/")),
    );
    let no_name = outcome(
        locks
            .lock(lpb::LockRequest {
                name: Vec::new(),
                lease: a,
            })
            .await,
        |r| contender(&r.key, "", a),
    );
    let unlock_missing = outcome(
        locks
            .unlock(lpb::UnlockRequest {
                key: "L/none".into(),
            })
            .await,
        |r| json!(rel(r.header)),
    );
    let unlock_empty = outcome(
        locks.unlock(lpb::UnlockRequest { key: Vec::new() }).await,
        |r| json!(rel(r.header)),
    );
    json!({
        "first": { "key": contender(&first.key, "L", a), "revision": rel(first.header) },
        "second_queued": queued,
        "unlock_first": format!("{unlocked:?}"),
        "second": second,
        "unknown_lease": unknown_lease,
        "no_lease": no_lease,
        "no_name": no_name,
        "unlock_missing": unlock_missing,
        "unlock_empty": unlock_empty,
    })
}

/// Election: no leader yet, campaign, leader, proclaim (right and stale
/// leader keys), observe a change of leader, resign, and the missing-field
/// errors.
async fn election(ch: Channel) -> Value {
    let base = write(&ch, "election-base", "").await;
    let mut el = epb::election_client::ElectionClient::new(ch.clone());
    let (a, b) = (grant(&ch, 30).await, grant(&ch, 30).await);
    let rel = |h: Option<pb::ResponseHeader>| h.map(|h| h.revision - base);
    let leader_kv = |r: epb::LeaderResponse| {
        let kv = r.kv.unwrap_or_default();
        json!({
            "key": contender(&kv.key, "E", a),
            "value": String::from_utf8_lossy(&kv.value),
            "create": kv.create_revision - base,
            "revision": rel(r.header),
        })
    };
    let mut seen = Vec::new();
    seen.push(json!({ "leader_before": outcome(
        el.leader(epb::LeaderRequest { name: "E".into() }).await, leader_kv) }));
    let won = el
        .campaign(epb::CampaignRequest {
            name: "E".into(),
            lease: a,
            value: "one".into(),
        })
        .await
        .expect("campaign wins an empty election")
        .into_inner();
    let lk = won.leader.clone().expect("leader key");
    seen.push(json!({ "campaign": {
        "revision": rel(won.header),
        "name": String::from_utf8_lossy(&lk.name),
        "key": contender(&lk.key, "E", a),
        "rev": lk.rev - base,
        "lease_is_given": lk.lease == a,
    }}));
    let mut observe = el
        .observe(epb::LeaderRequest { name: "E".into() })
        .await
        .expect("observe opens")
        .into_inner();
    let mut next_observed = async || match tokio::time::timeout(WAIT, observe.message()).await {
        Ok(Ok(Some(r))) => leader_kv(r),
        other => json!(format!("{other:?}")),
    };
    seen.push(json!({ "observed": next_observed().await }));
    seen.push(json!({ "leader": outcome(
        el.leader(epb::LeaderRequest { name: "E".into() }).await, leader_kv) }));
    let proclaimed = el
        .proclaim(epb::ProclaimRequest {
            leader: Some(lk.clone()),
            value: "two".into(),
        })
        .await;
    seen.push(json!({ "proclaim": outcome(proclaimed, |r| json!(rel(r.header))) }));
    seen.push(json!({ "observed": next_observed().await }));
    let stale = epb::LeaderKey {
        rev: lk.rev + 100,
        ..lk.clone()
    };
    seen.push(json!({ "proclaim_stale": outcome(
        el.proclaim(epb::ProclaimRequest { leader: Some(stale.clone()), value: "x".into() }).await,
        |r| json!(rel(r.header))) }));
    seen.push(json!({ "proclaim_no_leader": outcome(
        el.proclaim(epb::ProclaimRequest { leader: None, value: "x".into() }).await,
        |r| json!(rel(r.header))) }));
    // A second candidate waits behind the leader and takes over on resign.
    let mut el2 = el.clone();
    let second = tokio::spawn(async move {
        el2.campaign(epb::CampaignRequest {
            name: "E".into(),
            lease: b,
            value: "three".into(),
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    seen.push(json!({ "second_waits": !second.is_finished() }));
    seen.push(json!({ "resign_stale": outcome(
        el.resign(epb::ResignRequest { leader: Some(stale) }).await,
        |r| json!(rel(r.header))) }));
    seen.push(json!({ "resign_no_leader": outcome(
        el.resign(epb::ResignRequest { leader: None }).await,
        |r| json!(rel(r.header))) }));
    seen.push(json!({ "resign": outcome(
        el.resign(epb::ResignRequest { leader: Some(lk) }).await,
        |r| json!(rel(r.header))) }));
    let second = match tokio::time::timeout(WAIT, second).await {
        Ok(Ok(Ok(r))) => {
            let l = r.into_inner().leader.unwrap_or_default();
            json!({ "key": contender(&l.key, "E", b), "rev": l.rev - base })
        }
        other => json!(format!("{other:?}")),
    };
    seen.push(json!({ "second_campaign": second }));
    let observed = match tokio::time::timeout(WAIT, observe.message()).await {
        Ok(Ok(Some(r))) => {
            let kv = r.kv.unwrap_or_default();
            json!({ "key": contender(&kv.key, "E", b), "value": String::from_utf8_lossy(&kv.value) })
        }
        other => json!(format!("{other:?}")),
    };
    seen.push(json!({ "observed": observed }));
    json!(seen)
}
