//! The lease workload: keys attached to leases, some kept alive, some left
//! to expire, while the nemesis kills, pauses and cuts off members.
//!
//! What a user of etcd's leases relies on, checked from the client's side:
//! - **a kept-alive lease does not expire**: a keep-alive sent at `s` and
//!   answered with a TTL keeps the lease until at least `s + TTL` (a new
//!   leader extends every lease, it never shortens one). A lease seen gone
//!   at a moment that such answers covered without a break is a violation;
//!   one seen gone after keep-alives failed for a whole TTL (a partition, a
//!   dead member) expired as it should, and the client grants another;
//! - **no key outlives its lease by more than the bound**: a key attached to
//!   a lease granted at `g` must still be there until `g + TTL`, and must be
//!   gone soon after. A lease ends `TTL` after its grant, but every new
//!   leader restarts every lease at its full TTL plus an election timeout
//!   (etcd does the same: keep-alives had nobody to reach while there was
//!   no leader), so each fault can move the end later. The bound is
//!   computed per lease from the faults of the run, see [`deadline`]; the
//!   overstay beyond it must stay under [`MARGIN`].

use super::cluster::channel;
use super::{micros, OP_TIMEOUT};
use std::time::{Duration, Instant};
use synod_etcd::pb::etcdserverpb as pb;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// TTL of a kept-alive lease, and how often it is kept alive.
const KEEP_TTL: i64 = 3;
const KEEP_EVERY: Duration = Duration::from_millis(500);
/// TTL of a lease left to expire: etcd's minimum with its default timing.
const EXPIRE_TTL: i64 = 2;
/// How often the key of an expiring lease is read.
const POLL: Duration = Duration::from_millis(100);
/// The election timeout both systems run with in `synod chaos` (etcd's
/// default): a new leader extends leases by it, and an election after a
/// fault takes up to two of them.
const ELECTION_US: i64 = 1_000_000;
/// How late a key may go after its lease's latest possible end: the
/// leader's expiry check (a tick for synod, 500 ms for etcd), the revoke's
/// commit, and the client's polling interval.
pub(super) const MARGIN: Duration = Duration::from_millis(1000);

/// What one lease client saw.
#[derive(Default)]
pub(super) struct LeaseLog {
    pub(super) granted: u32,
    /// Kept-alive leases: keep-alives answered, and leases given up or seen
    /// gone after their keep-alives failed for a whole TTL (allowed).
    pub(super) keep_alives: u32,
    pub(super) lapsed: u32,
    /// Leases left to expire: when each grant was answered and when a read
    /// last saw its key (µs into the run).
    pub(super) expiries: Vec<(i64, i64)>,
    pub(super) violations: Vec<String>,
}

/// Grants a lease of `ttl` seconds and attaches `key` to it; `None` if the
/// cluster did not answer both.
async fn grant_with_key(endpoint: &str, ttl: i64, key: &str) -> Option<i64> {
    let ch = channel(endpoint);
    let lease = pb::lease_client::LeaseClient::new(ch.clone())
        .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
        .await
        .ok()?
        .into_inner()
        .id;
    let put = pb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"leased".to_vec(),
        lease,
        ..Default::default()
    };
    pb::kv_client::KvClient::new(ch).put(put).await.ok()?;
    Some(lease)
}

/// Whether `key` is there (`None`: no answer).
async fn present(endpoint: &str, key: &str) -> Option<bool> {
    let req = pb::RangeRequest {
        key: key.as_bytes().to_vec(),
        count_only: true,
        ..Default::default()
    };
    let r = pb::kv_client::KvClient::new(channel(endpoint))
        .range(req)
        .await
        .ok()?;
    Some(r.into_inner().count > 0)
}

/// Keeps leases alive until `stop`, granting a new one whenever the last
/// expired after its keep-alives failed for a whole TTL. At `stop` it
/// checks that its lease is still there.
pub(super) async fn keeper(
    c: usize,
    endpoints: Vec<String>,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> LeaseLog {
    let mut log = LeaseLog::default();
    let mut target = c % endpoints.len();
    let ttl_us = KEEP_TTL as u64 * 1_000_000;
    'lease: loop {
        let key = format!("lease/keep/{c}/{}", log.granted);
        let granted_at = micros(start);
        let Some(lease) = grant_with_key(&endpoints[target], KEEP_TTL, &key).await else {
            if *stop.borrow() {
                return log;
            }
            target = (target + 1) % endpoints.len();
            tokio::time::sleep(KEEP_EVERY).await;
            continue;
        };
        log.granted += 1;
        // The lease is known to be alive until this moment.
        let mut covered_until = granted_at + ttl_us;
        loop {
            if *stop.borrow() {
                final_word(
                    &endpoints[target],
                    lease,
                    micros(start),
                    covered_until,
                    &mut log,
                )
                .await;
                return log;
            }
            // The first keep-alive goes with the call: etcd's server sends
            // its response headers only with its first answer.
            let (tx, rx) = mpsc::channel(1);
            let mut sent = micros(start);
            tx.try_send(pb::LeaseKeepAliveRequest { id: lease })
                .expect("an empty channel");
            let mut client = pb::lease_client::LeaseClient::new(channel(&endpoints[target]));
            let call = client.lease_keep_alive(ReceiverStream::new(rx));
            let Ok(Ok(stream)) = tokio::time::timeout(OP_TIMEOUT, call).await else {
                target = (target + 1) % endpoints.len();
                if micros(start) > covered_until {
                    log.lapsed += 1;
                    continue 'lease;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut stream = stream.into_inner();
            loop {
                let answer = tokio::time::timeout(OP_TIMEOUT, stream.message()).await;
                let Ok(Ok(Some(r))) = answer else {
                    break;
                };
                let now = micros(start);
                if r.ttl <= 0 {
                    if now < covered_until {
                        log.violations.push(format!(
                            "kept-alive lease {lease:x} gone at {:.3} s, though keep-alives \
                             covered it until {:.3} s",
                            now as f64 / 1e6,
                            covered_until as f64 / 1e6
                        ));
                    } else {
                        log.lapsed += 1;
                    }
                    continue 'lease;
                }
                log.keep_alives += 1;
                covered_until = covered_until.max(sent + ttl_us);
                let _ = tokio::time::timeout(KEEP_EVERY, stop.changed()).await;
                if *stop.borrow() {
                    break;
                }
                sent = micros(start);
                let request = tx.send(pb::LeaseKeepAliveRequest { id: lease });
                if !matches!(tokio::time::timeout(OP_TIMEOUT, request).await, Ok(Ok(()))) {
                    break;
                }
            }
            // The stream broke (or the run is over): the next member, the
            // same lease.
            if !*stop.borrow() {
                target = (target + 1) % endpoints.len();
            }
        }
    }
}

/// At the end of the run the lease must be there, if keep-alives covered it
/// without a break until the moment of asking.
async fn final_word(
    endpoint: &str,
    lease: i64,
    asked: u64,
    covered_until: u64,
    log: &mut LeaseLog,
) {
    let alive = tokio::time::timeout(OP_TIMEOUT, time_to_live(endpoint, lease))
        .await
        .ok()
        .flatten();
    if alive == Some(false) && asked < covered_until {
        log.violations.push(format!(
            "kept-alive lease {lease:x} gone at the end ({:.3} s), though keep-alives \
             covered it until {:.3} s",
            asked as f64 / 1e6,
            covered_until as f64 / 1e6
        ));
    }
}

/// Whether a lease is still there (`None`: no answer). A lease in its last
/// second reads 0, as in etcd; only a lease that is gone reads -1.
async fn time_to_live(endpoint: &str, lease: i64) -> Option<bool> {
    let r = pb::lease_client::LeaseClient::new(channel(endpoint))
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: lease,
            keys: false,
        })
        .await
        .ok()?;
    Some(r.into_inner().ttl >= 0)
}

/// Grants leases and leaves them to expire, one after another until
/// `until`, measuring how long each key outlives its lease.
pub(super) async fn expirer(
    c: usize,
    endpoints: Vec<String>,
    start: Instant,
    until: Instant,
) -> LeaseLog {
    let mut log = LeaseLog::default();
    let mut target = c % endpoints.len();
    let ttl_us = EXPIRE_TTL * 1_000_000;
    while Instant::now() < until {
        let key = format!("lease/expire/{c}/{}", log.granted);
        let invoked = micros(start) as i64;
        let Some(lease) = grant_with_key(&endpoints[target], EXPIRE_TTL, &key).await else {
            target = (target + 1) % endpoints.len();
            tokio::time::sleep(POLL).await;
            continue;
        };
        let answered = micros(start) as i64;
        log.granted += 1;
        // The latest read that still saw the key, and the first that did not.
        let mut last_seen = answered;
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            if Instant::now() > give_up {
                log.violations.push(format!(
                    "{key} (lease {lease:x}) still there 30 s after its grant"
                ));
                break;
            }
            let asked = micros(start) as i64;
            match present(&endpoints[target], &key).await {
                Some(true) => last_seen = asked,
                Some(false) => {
                    let done = micros(start) as i64;
                    if done < invoked + ttl_us {
                        log.violations.push(format!(
                            "{key} (lease {lease:x}, TTL {EXPIRE_TTL} s) gone {:.0} ms after \
                             the grant was sent",
                            (done - invoked) as f64 / 1e3
                        ));
                    }
                    break;
                }
                None => target = (target + 1) % endpoints.len(),
            }
            tokio::time::sleep(POLL).await;
        }
        log.expiries.push((answered, last_seen));
    }
    log
}

/// The latest a lease answered at `answered` can end, given the faults of
/// the run (`(start, end)`, µs). A fault that begins before the lease's
/// revocation is committed (its end plus [`MARGIN`]: etcd's leader looks
/// for expired leases every 500 ms) may cost the leader; the next one is
/// elected within two election timeouts of the fault's end and restarts the
/// lease at its full TTL plus one election timeout. That can move the end
/// past a later fault, so the faults are taken in order.
pub(super) fn deadline(answered: i64, ttl_us: i64, faults: &[(u64, u64)]) -> i64 {
    let mut end = answered + ttl_us;
    let margin = MARGIN.as_micros() as i64;
    let mut faults: Vec<(i64, i64)> = faults.iter().map(|(s, e)| (*s as i64, *e as i64)).collect();
    faults.sort_unstable();
    for (start, stop) in faults {
        if start < end + margin {
            end = end.max(stop + 2 * ELECTION_US + ELECTION_US + ttl_us);
        }
    }
    end
}

/// Every violation, with the bound applied to the leases left to expire,
/// and how long their keys outlived the TTL (µs, sorted).
pub(super) fn check(logs: &[LeaseLog], faults: &[(u64, u64)]) -> (Vec<String>, Vec<i64>) {
    let mut problems: Vec<String> = logs.iter().flat_map(|l| l.violations.clone()).collect();
    let ttl_us = EXPIRE_TTL * 1_000_000;
    let margin = MARGIN.as_micros() as i64;
    let mut overstays = Vec::new();
    for (answered, last_seen) in logs.iter().flat_map(|l| l.expiries.iter().copied()) {
        overstays.push(last_seen - (answered + ttl_us));
        let end = deadline(answered, ttl_us, faults);
        if last_seen > end + margin {
            problems.push(format!(
                "the key of a lease answered at {:.3} s was still there at {:.3} s, {:.0} ms \
                 after the latest end the faults allow ({:.3} s)",
                answered as f64 / 1e6,
                last_seen as f64 / 1e6,
                (last_seen - end) as f64 / 1e3,
                end as f64 / 1e6
            ));
        }
    }
    overstays.sort_unstable();
    (problems, overstays)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_during_a_lease_move_its_latest_end() {
        let ttl = 2_000_000;
        // No fault: TTL after the answer.
        assert_eq!(deadline(1_000_000, ttl, &[]), 3_000_000);
        // One just after the end may still find the lease unrevoked (etcd
        // looks every 500 ms): elected by 7 s, extended by 1 s + TTL.
        assert_eq!(
            deadline(1_000_000, ttl, &[(3_400_000, 5_000_000)]),
            10_000_000
        );
        // A fault after the end and the revocation changes nothing.
        assert_eq!(
            deadline(1_000_000, ttl, &[(4_000_000, 5_000_000)]),
            3_000_000
        );
        // A fault from 2 s to 4 s: elected by 6 s, extended by 1 s + TTL.
        assert_eq!(
            deadline(1_000_000, ttl, &[(2_000_000, 4_000_000)]),
            9_000_000
        );
        // ... which reaches a second fault, from 8 s to 9 s.
        let two = [(8_000_000, 9_000_000), (2_000_000, 4_000_000)];
        assert_eq!(deadline(1_000_000, ttl, &two), 14_000_000);
        // A key seen after that, beyond the margin, is a problem.
        let log = LeaseLog {
            expiries: vec![(1_000_000, 3_500_000), (1_000_000, 4_100_000)],
            ..Default::default()
        };
        let (problems, overstays) = check(&[log], &[]);
        assert_eq!(overstays, vec![500_000, 1_100_000]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("still there at 4.100 s"),
            "{problems:?}"
        );
    }
}
