//! Scenarios that drive an etcd API endpoint and return a transcript of what
//! it answered, with everything that differs between two correct servers
//! (cluster and member ids, raft terms, the absolute revision a fresh store
//! starts at) taken out. `examples/record_golden.rs` runs them against a real
//! etcd to record `tests/golden/*.json`; `tests/parity.rs` runs them against
//! synod and compares.

use serde_json::{json, Value};
use std::time::Duration;
use synod_etcd::pb::etcdserverpb as pb;
use synod_etcd::pb::mvccpb;
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
