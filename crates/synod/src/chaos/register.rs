//! The register workload: linearizable gets, puts and compare-and-swaps on
//! a few hot keys, each recorded for the linearizability checker.

use super::cluster::channel;
use super::watch::Acked;
use super::{lock, micros};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use synod_etcd::pb::etcdserverpb as pb;
use synod_sim::history::{OpKind, OpResult, Operation};

/// What the register clients record, shared among them.
#[derive(Default)]
pub(super) struct Records {
    pub(super) history: Mutex<Vec<Operation>>,
    /// Writes acknowledged, with the revision each answer gave.
    pub(super) acked: Mutex<Vec<Acked>>,
    /// The errors the clients saw, by kind of operation, code and message.
    pub(super) errors: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Each run of failures a client had before its next success: how many
    /// operations failed in a row (each on the next member) and the time
    /// from the first failure's invocation to that success (µs).
    pub(super) outages: Mutex<Vec<(u32, u64)>>,
}

/// One client: operations on shared keys until `until`, each recorded.
pub(super) async fn client(
    worker: usize,
    seed: u64,
    endpoints: Vec<String>,
    keys: usize,
    start: Instant,
    until: Instant,
    records: Arc<Records>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (worker as u64).wrapping_mul(0x9e37_79b9));
    let mut generation = 0u64;
    let mut target = worker % endpoints.len();
    let mut kv = pb::kv_client::KvClient::new(channel(&endpoints[target]));
    let mut seen: Vec<Option<String>> = vec![None; keys];
    let mut n = 0u64;
    let mut failing: Option<(u32, u64)> = None;
    while Instant::now() < until {
        let id = (worker as u64) * 1_000_000 + generation;
        let k = rng.gen_range(0..keys);
        let key = format!("k{k}");
        n += 1;
        let value = format!("c{worker}-{n}");
        let roll = rng.gen_range(0..10);
        let invoke = micros(start);
        let (kind, answer) = if roll < 5 {
            let req = pb::RangeRequest {
                key: key.clone().into_bytes(),
                ..Default::default()
            };
            let r = kv.range(req).await.map(|r| {
                let v = r
                    .into_inner()
                    .kvs
                    .first()
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                OpResult::Read(v)
            });
            if let Ok(OpResult::Read(v)) = &r {
                seen[k].clone_from(v);
            }
            (OpKind::Get { key }, r)
        } else if roll < 8 {
            let req = pb::PutRequest {
                key: key.clone().into_bytes(),
                value: value.clone().into_bytes(),
                ..Default::default()
            };
            let r = kv.put(req).await.map(|r| {
                let revision = r.into_inner().header.map_or(0, |h| h.revision);
                lock(&records.acked).push((key.clone(), value.clone(), revision));
                OpResult::Ok
            });
            (OpKind::Put { key, value }, r)
        } else {
            let expected = seen[k].clone();
            let r = kv
                .txn(cas(&key, expected.as_deref(), &value))
                .await
                .map(|r| {
                    let r = r.into_inner();
                    if r.succeeded {
                        let revision = r.header.map_or(0, |h| h.revision);
                        lock(&records.acked).push((key.clone(), value.clone(), revision));
                    }
                    OpResult::Swapped(r.succeeded)
                });
            (
                OpKind::Cas {
                    key,
                    expected,
                    value,
                },
                r,
            )
        };
        match (&answer, &mut failing) {
            (Ok(_), f) => {
                if let Some((count, since)) = f.take() {
                    lock(&records.outages).push((count, micros(start) - since));
                }
            }
            (Err(_), Some((count, _))) => *count += 1,
            (Err(_), f) => *f = Some((1, invoke)),
        }
        if let Err(e) = &answer {
            let what = if matches!(kind, OpKind::Get { .. }) {
                "read"
            } else {
                "write"
            };
            let mut message: String = e.message().chars().take(100).collect();
            if message.is_empty() {
                message = "(no message)".into();
            }
            *lock(&records.errors)
                .entry(format!("{what}: {:?}: {message}", e.code()))
                .or_default() += 1;
        }
        let op = match answer {
            Ok(result) => Operation::completed(id, kind, invoke, micros(start), result),
            // A read that failed changed nothing: it is left out.
            Err(_) if matches!(kind, OpKind::Get { .. }) => {
                target = (target + 1) % endpoints.len();
                kv = pb::kv_client::KvClient::new(channel(&endpoints[target]));
                continue;
            }
            // A write may have taken effect: indefinite, and this client goes
            // on as another (its old self may still be pending forever).
            Err(_) => {
                generation += 1;
                target = (target + 1) % endpoints.len();
                kv = pb::kv_client::KvClient::new(channel(&endpoints[target]));
                Operation::indefinite(id, kind, invoke)
            }
        };
        lock(&records.history).push(op);
    }
}

/// Put `value` if `key` holds `expected` (absent for `None`).
pub(super) fn cas(key: &str, expected: Option<&str>, value: &str) -> pb::TxnRequest {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let compare = match expected {
        Some(v) => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(TargetUnion::Value(v.as_bytes().to_vec())),
            ..Default::default()
        },
        None => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..Default::default()
        },
    };
    pb::TxnRequest {
        compare: vec![compare],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    }
}

/// Reads every key at the end, once the cluster takes writes again, so the
/// history ends with what the cluster kept.
pub(super) async fn final_reads(
    endpoints: &[String],
    keys: usize,
    start: Instant,
    history: &Mutex<Vec<Operation>>,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for k in 0..keys {
        let key = format!("k{k}");
        let mut target = k % endpoints.len();
        loop {
            let ep = &endpoints[target];
            let mut kv = pb::kv_client::KvClient::new(channel(ep));
            let invoke = micros(start);
            let req = pb::RangeRequest {
                key: key.clone().into_bytes(),
                ..Default::default()
            };
            match kv.range(req).await {
                Ok(r) => {
                    let v = r
                        .into_inner()
                        .kvs
                        .first()
                        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                    let op = Operation::completed(
                        u64::MAX - k as u64,
                        OpKind::Get { key: key.clone() },
                        invoke,
                        micros(start),
                        OpResult::Read(v),
                    );
                    lock(history).push(op);
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("the cluster did not recover within 30 s: {e}"))
                }
                Err(_) => {
                    target = (target + 1) % endpoints.len();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    Ok(())
}
