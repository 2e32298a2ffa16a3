//! The lock workload: etcd's Lock API as a mutex around two counters, one
//! written blindly by whoever thinks it holds the lock, one written only if
//! the holder's lock key still exists (the fencing check, in the same
//! transaction as the write).
//!
//! A lock held through a lease is only as good as the holder's sense of
//! time: a holder that stalls (a GC pause, a swapped-out process) longer
//! than its lease's TTL loses the lock without knowing, and another client
//! takes it. Jepsen showed this on etcd. The lockers here stall on purpose
//! now and then, so the run shows both halves: holds that overlapped and
//! the blind counter losing increments, and the fenced counter exact,
//! because a stale holder's fenced write is refused. Only the fenced
//! counter is a check; the rest is reported.

use super::cluster::channel;
use super::micros;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::{Duration, Instant};
use synod_etcd::pb::etcdserverpb as pb;
use synod_etcd::pb::v3lockpb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const NAME: &[u8] = b"chaos-lock";
pub(super) const PLAIN: &str = "lock/plain";
pub(super) const FENCED: &str = "lock/fenced";
/// The lock's lease: etcd's shortest with its default timing.
const TTL: i64 = 2;
/// A stall longer than the TTL, taken by one hold in ten.
const STALL: Duration = Duration::from_millis(2500);

/// What one locker did.
#[derive(Default)]
pub(super) struct LockLog {
    /// Each hold: acquired (answer received) and released (unlock sent), µs.
    pub(super) holds: Vec<(u64, u64)>,
    pub(super) stalls: u32,
    /// Blind increments acknowledged, and those whose outcome is unknown.
    pub(super) plain_acked: u64,
    pub(super) plain_unknown: u64,
    /// Fenced increments applied, refused (the lock key was gone), unknown.
    pub(super) fenced_acked: u64,
    pub(super) fenced_refused: u64,
    pub(super) fenced_unknown: u64,
}

/// A channel for Lock calls, which wait for the holder: longer than the
/// per-request timeout of the other clients.
fn lock_channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_string())
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

/// Keeps `lease` alive every 500 ms until the returned sender is dropped.
fn keep_alive(endpoint: String, lease: i64) -> mpsc::Sender<()> {
    let (stop, mut stopped) = mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(pb::LeaseKeepAliveRequest { id: lease });
        let mut client = pb::lease_client::LeaseClient::new(channel(&endpoint));
        let Ok(Ok(stream)) = tokio::time::timeout(
            super::OP_TIMEOUT,
            client.lease_keep_alive(ReceiverStream::new(rx)),
        )
        .await
        else {
            return;
        };
        let mut stream = stream.into_inner();
        loop {
            let Ok(Ok(Some(_))) = tokio::time::timeout(super::OP_TIMEOUT, stream.message()).await
            else {
                return;
            };
            tokio::select! {
                _ = stopped.recv() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if tx
                .send(pb::LeaseKeepAliveRequest { id: lease })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    stop
}

/// The value of a counter (absent: 0).
async fn read(kv: &mut pb::kv_client::KvClient<Channel>, key: &str) -> Result<u64, tonic::Status> {
    let r = kv
        .range(pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner()
        .kvs
        .first()
        .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
        .unwrap_or(0))
}

/// Put `value` at `key` if `lock_key` still exists.
fn fenced_put(lock_key: &[u8], key: &str, value: u64) -> pb::TxnRequest {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Greater as i32,
            target: CompareTarget::Create as i32,
            key: lock_key.to_vec(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.to_string().into_bytes(),
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    }
}

/// Takes the lock, increments both counters, lets go; until `until`.
pub(super) async fn locker(
    c: usize,
    seed: u64,
    endpoints: Vec<String>,
    start: Instant,
    until: Instant,
) -> LockLog {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4c4f_434b ^ ((c as u64) << 32));
    let mut log = LockLog::default();
    let mut target = c % endpoints.len();
    while Instant::now() < until {
        let ep = endpoints[target].clone();
        let mut kv = pb::kv_client::KvClient::new(channel(&ep));
        let mut leases = pb::lease_client::LeaseClient::new(channel(&ep));
        let Ok(lease) = leases
            .lease_grant(pb::LeaseGrantRequest { ttl: TTL, id: 0 })
            .await
        else {
            target = (target + 1) % endpoints.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let lease = lease.into_inner().id;
        let keeping = keep_alive(ep.clone(), lease);
        let mut locks = v3lockpb::lock_client::LockClient::new(lock_channel(&ep));
        let request = v3lockpb::LockRequest {
            name: NAME.to_vec(),
            lease,
        };
        let Ok(held) = locks.lock(request).await else {
            drop(keeping);
            let _ = leases
                .lease_revoke(pb::LeaseRevokeRequest { id: lease })
                .await;
            target = (target + 1) % endpoints.len();
            continue;
        };
        let lock_key = held.into_inner().key;
        let acquired = micros(start);
        let (Ok(plain), Ok(fenced)) = (read(&mut kv, PLAIN).await, read(&mut kv, FENCED).await)
        else {
            drop(keeping);
            let _ = locks
                .unlock(v3lockpb::UnlockRequest { key: lock_key })
                .await;
            target = (target + 1) % endpoints.len();
            continue;
        };
        if rng.gen_range(0..10) == 0 {
            // A stall: the whole client stops, keep-alives included.
            drop(keeping);
            log.stalls += 1;
            tokio::time::sleep(STALL).await;
        } else {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(10..100))).await;
        }
        let put = pb::PutRequest {
            key: PLAIN.as_bytes().to_vec(),
            value: (plain + 1).to_string().into_bytes(),
            ..Default::default()
        };
        match kv.put(put).await {
            Ok(_) => log.plain_acked += 1,
            Err(_) => log.plain_unknown += 1,
        }
        match kv.txn(fenced_put(&lock_key, FENCED, fenced + 1)).await {
            Ok(r) if r.get_ref().succeeded => log.fenced_acked += 1,
            Ok(_) => log.fenced_refused += 1,
            Err(_) => log.fenced_unknown += 1,
        }
        log.holds.push((acquired, micros(start)));
        let _ = locks
            .unlock(v3lockpb::UnlockRequest { key: lock_key })
            .await;
        let _ = leases
            .lease_revoke(pb::LeaseRevokeRequest { id: lease })
            .await;
    }
    log
}

/// Reads a counter at the end, retrying on every member for up to 30 s.
pub(super) async fn final_value(endpoints: &[String], key: &str) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    loop {
        let mut kv = pb::kv_client::KvClient::new(channel(&endpoints[i]));
        match read(&mut kv, key).await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(format!("reading {key}: {e}")),
            Err(_) => {
                i = (i + 1) % endpoints.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The lock workload's figures and verdict.
pub(super) struct LockReport {
    pub(super) holds: usize,
    pub(super) stalls: u32,
    /// Pairs of holds by different clients that overlapped in time.
    pub(super) overlaps: usize,
    /// Blind increments acknowledged but missing from the final value.
    pub(super) plain_lost: u64,
    pub(super) fenced_refused: u64,
    /// What is wrong with the fenced counter, if anything.
    pub(super) problem: Option<String>,
}

pub(super) fn check(logs: &[LockLog], plain: u64, fenced: u64) -> LockReport {
    let mut holds: Vec<(u64, u64, usize)> = logs
        .iter()
        .enumerate()
        .flat_map(|(c, l)| l.holds.iter().map(move |(a, r)| (*a, *r, c)))
        .collect();
    holds.sort_unstable();
    let mut overlaps = 0;
    for (i, (_, end, c)) in holds.iter().enumerate() {
        overlaps += holds[i + 1..]
            .iter()
            .take_while(|(a, _, _)| a < end)
            .filter(|(_, _, d)| d != c)
            .count();
    }
    let sum = |f: fn(&LockLog) -> u64| logs.iter().map(f).sum::<u64>();
    let (acked, unknown) = (sum(|l| l.fenced_acked), sum(|l| l.fenced_unknown));
    let problem = (fenced < acked || fenced > acked + unknown).then(|| {
        format!(
            "the fenced counter is {fenced}, but {acked} fenced increments were acknowledged \
             and {unknown} more may have been applied"
        )
    });
    LockReport {
        holds: holds.len(),
        stalls: logs.iter().map(|l| l.stalls).sum(),
        overlaps,
        plain_lost: sum(|l| l.plain_acked).saturating_sub(plain),
        fenced_refused: sum(|l| l.fenced_refused),
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_and_a_wrong_fenced_counter_are_found() {
        let a = LockLog {
            holds: vec![(0, 10), (20, 30)],
            plain_acked: 2,
            fenced_acked: 2,
            ..Default::default()
        };
        let b = LockLog {
            holds: vec![(5, 8), (30, 40)],
            plain_acked: 2,
            fenced_acked: 1,
            fenced_refused: 1,
            ..Default::default()
        };
        let logs = [a, b];
        let r = check(&logs, 3, 3);
        assert_eq!(
            (r.holds, r.overlaps, r.plain_lost, r.fenced_refused),
            (4, 1, 1, 1)
        );
        assert!(r.problem.is_none());
        assert!(check(&logs, 4, 2).problem.is_some(), "an increment lost");
        assert!(check(&logs, 4, 4).problem.is_some(), "one applied twice");
    }
}
