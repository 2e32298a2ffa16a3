//! The watch workload: watchers on the register's key prefix, spread over
//! the members, that lose their streams (to the nemesis, or on purpose) and
//! resume on another member from the revision after the last one they saw.
//!
//! The property, as a user of etcd's watch relies on it: every watcher sees
//! exactly the committed sequence of events for its range, in revision
//! order, with no gap and no duplicate, however often it resumed. The
//! committed sequence is read at the end by a fresh watch from the same
//! start revision, and checked in turn against the revisions that the
//! register clients' acknowledged writes were given. Every value a register
//! client writes is its own, so the committed sequence also shows a request
//! that took effect twice (the same value put again).

use super::micros;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::{Duration, Instant};
use synod_etcd::pb::etcdserverpb as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// The register's keys are `k0`, `k1`, …: the watchers take the prefix.
pub(super) const PREFIX: &[u8] = b"k";
const PREFIX_END: &[u8] = b"l";
/// Written once the workload is over; a watcher that sees it has seen
/// everything before it.
pub(super) const END_KEY: &str = "k~end";

/// One event as a watcher saw it: revision, key, value (`None`: deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    pub(super) revision: i64,
    pub(super) key: String,
    pub(super) value: Option<String>,
}

/// What one watcher saw.
#[derive(Default)]
pub(super) struct WatchLog {
    pub(super) events: Vec<Seen>,
    /// Streams it opened after the first, and how many of those it chose to
    /// drop itself.
    pub(super) resumes: u32,
    pub(super) voluntary: u32,
    /// Why it stopped early, if it did (a compacted start revision, or no
    /// member answering before the deadline).
    pub(super) failure: Option<String>,
}

/// A channel for a stream: the clients' per-request timeout would cut it.
fn stream_channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_string())
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy()
}

/// Opens a watch on the prefix from `from` on `endpoint`. The sender is
/// returned so that the stream stays open as long as the caller holds it.
async fn open(
    endpoint: &str,
    from: i64,
) -> Result<
    (
        mpsc::Sender<pb::WatchRequest>,
        tonic::Streaming<pb::WatchResponse>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(1);
    let create = pb::WatchCreateRequest {
        key: PREFIX.to_vec(),
        range_end: PREFIX_END.to_vec(),
        start_revision: from,
        ..Default::default()
    };
    let req = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
    };
    tx.send(req).await.expect("the receiver is alive");
    // A member that never answers (paused, or cut off) must not hold the
    // watcher past its deadline.
    let mut client = pb::watch_client::WatchClient::new(stream_channel(endpoint));
    let opening = client.watch(ReceiverStream::new(rx));
    let stream = tokio::time::timeout(super::OP_TIMEOUT, opening)
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no answer"))??
        .into_inner();
    Ok((tx, stream))
}

fn seen(e: &synod_etcd::pb::mvccpb::Event) -> Option<Seen> {
    let kv = e.kv.as_ref()?;
    let deleted = e.r#type == synod_etcd::pb::mvccpb::event::EventType::Delete as i32;
    Some(Seen {
        revision: kv.mod_revision,
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: (!deleted).then(|| String::from_utf8_lossy(&kv.value).into_owned()),
    })
}

/// Watches from revision `from` until it sees [`END_KEY`] or `deadline`
/// passes. Until `churn_until`, it drops its stream now and then on
/// purpose and resumes on the next member.
pub(super) async fn watcher(
    w: usize,
    seed: u64,
    endpoints: Vec<String>,
    from: i64,
    churn_until: Instant,
    deadline: Instant,
) -> WatchLog {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5741_5443_4800 ^ w as u64);
    let mut log = WatchLog::default();
    let mut next = from;
    let mut target = w % endpoints.len();
    let mut first = true;
    loop {
        if Instant::now() > deadline {
            log.failure = Some(format!(
                "did not see the end of the workload (last revision {})",
                next - 1
            ));
            return log;
        }
        if !first {
            log.resumes += 1;
        }
        first = false;
        let Ok((tx, mut stream)) = open(&endpoints[target], next).await else {
            target = (target + 1) % endpoints.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Drop the stream on purpose after this long, while faults run.
        let hang_up = Instant::now() + Duration::from_millis(rng.gen_range(500..4000));
        loop {
            let wait = if Instant::now() < churn_until {
                hang_up.saturating_duration_since(Instant::now())
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            let message = match tokio::time::timeout(wait, stream.message()).await {
                Err(_) if Instant::now() < deadline => {
                    log.voluntary += 1;
                    break;
                }
                Err(_) => break,
                Ok(Err(_)) | Ok(Ok(None)) => break,
                Ok(Ok(Some(m))) => m,
            };
            if message.compact_revision > 0 || message.canceled {
                log.failure = Some(format!(
                    "watch from revision {next} on {} canceled: compact revision {}, {:?}",
                    endpoints[target], message.compact_revision, message.cancel_reason
                ));
                return log;
            }
            let mut done = false;
            for e in &message.events {
                let Some(s) = seen(e) else { continue };
                next = next.max(s.revision + 1);
                done |= s.key == END_KEY;
                log.events.push(s);
            }
            if done {
                drop(tx);
                return log;
            }
        }
        drop(tx);
        target = (target + 1) % endpoints.len();
    }
}

/// Writes [`END_KEY`], retrying on every member until one takes it.
pub(super) async fn write_end(endpoints: &[String], start: Instant) -> Result<i64, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    loop {
        let mut kv = pb::kv_client::KvClient::new(super::cluster::channel(&endpoints[i]));
        let req = pb::PutRequest {
            key: END_KEY.as_bytes().to_vec(),
            value: format!("at {}", micros(start)).into_bytes(),
            ..Default::default()
        };
        match kv.put(req).await {
            Ok(r) => return Ok(r.into_inner().header.map_or(0, |h| h.revision)),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("could not write {END_KEY} within 30 s: {e}"))
            }
            Err(_) => {
                i = (i + 1) % endpoints.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An acknowledged write of the register workload: the key, the value and
/// the revision its answer carried.
pub(super) type Acked = (String, String, i64);

/// The verdict on the watchers: `Ok` with a summary, or every problem found.
pub(super) fn check(reference: &WatchLog, logs: &[WatchLog], acked: &[Acked]) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(f) = &reference.failure {
        problems.push(format!("reference watch: {f}"));
    }
    problems.extend(in_order(&reference.events).map(|p| format!("reference watch: {p}")));
    problems.extend(applied_twice(&reference.events));
    let mut by_revision = std::collections::HashMap::new();
    for s in &reference.events {
        by_revision
            .entry(s.revision)
            .or_insert_with(Vec::new)
            .push(s);
    }
    for (key, value, revision) in acked {
        let found = by_revision.get(revision).is_some_and(|v| {
            v.iter()
                .any(|s| &s.key == key && s.value.as_deref() == Some(value))
        });
        if !found {
            problems.push(format!(
                "acknowledged write {key}={value} at revision {revision} has no event there"
            ));
            if problems.len() > 20 {
                break;
            }
        }
    }
    for (w, log) in logs.iter().enumerate() {
        if let Some(f) = &log.failure {
            problems.push(format!("watcher {w}: {f}"));
            continue;
        }
        if let Some(p) = first_difference(&reference.events, &log.events) {
            problems.push(format!("watcher {w}: {p}"));
        }
    }
    problems
}

/// Values put more than once: each register write has a value of its own,
/// so a second put of one is a request applied twice (a retry of a write
/// that had in fact been applied).
fn applied_twice(events: &[Seen]) -> Vec<String> {
    let mut first = std::collections::HashMap::new();
    let mut problems = Vec::new();
    for s in events {
        let Some(value) = &s.value else { continue };
        if let Some(at) = first.insert((&s.key, value), s.revision) {
            problems.push(format!(
                "{}={value} put at revision {at} and again at revision {}: one write applied twice",
                s.key, s.revision
            ));
        }
    }
    problems
}

/// Revisions must rise, except for events of one transaction.
fn in_order(events: &[Seen]) -> impl Iterator<Item = String> + '_ {
    events
        .windows(2)
        .filter(|w| {
            w[1].revision < w[0].revision
                || (w[1].revision == w[0].revision && w[1].key == w[0].key)
        })
        .map(|w| {
            format!(
                "revision {} ({}) after revision {} ({})",
                w[1].revision, w[1].key, w[0].revision, w[0].key
            )
        })
}

/// Where `got` departs from `want`, named as a user would: a gap, a
/// duplicate, or another event.
fn first_difference(want: &[Seen], got: &[Seen]) -> Option<String> {
    for (i, g) in got.iter().enumerate() {
        let Some(w) = want.get(i) else {
            return Some(format!(
                "{} events where the committed sequence has {}",
                got.len(),
                want.len()
            ));
        };
        if g == w {
            continue;
        }
        let what = if g.revision > w.revision {
            "gap: missed"
        } else if i > 0 && got[..i].contains(g) {
            "duplicate: saw again"
        } else {
            "wrong event: expected"
        };
        return Some(format!(
            "{what} revision {} ({}), got revision {} ({}) as event {i}",
            w.revision, w.key, g.revision, g.key
        ));
    }
    (got.len() < want.len()).then(|| {
        format!(
            "stopped after {} of {} events (next: revision {})",
            got.len(),
            want.len(),
            want[got.len()].revision
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(revision: i64, key: &str, value: &str) -> Seen {
        Seen {
            revision,
            key: key.into(),
            value: Some(value.into()),
        }
    }

    fn log(events: Vec<Seen>) -> WatchLog {
        WatchLog {
            events,
            ..Default::default()
        }
    }

    #[test]
    fn the_checker_names_gaps_duplicates_and_lost_writes() {
        let reference = log(vec![s(5, "k0", "a"), s(6, "k1", "b"), s(7, "k0", "c")]);
        let acked = vec![("k0".to_string(), "a".to_string(), 5)];
        let same = log(reference.events.clone());
        assert!(check(&reference, &[same], &acked).is_empty());

        let gap = log(vec![s(5, "k0", "a"), s(7, "k0", "c")]);
        let dup = log(vec![s(5, "k0", "a"), s(6, "k1", "b"), s(6, "k1", "b")]);
        let short = log(vec![s(5, "k0", "a")]);
        let problems = check(&reference, &[gap, dup, short], &acked);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].contains("gap: missed revision 6"),
            "{problems:?}"
        );
        assert!(problems[1].contains("duplicate"), "{problems:?}");
        assert!(problems[2].contains("stopped after 1 of 3"), "{problems:?}");

        let lost = vec![("k1".to_string(), "z".to_string(), 6)];
        let problems = check(&reference, &[], &lost);
        assert!(problems[0].contains("k1=z at revision 6"), "{problems:?}");

        let disorder = log(vec![s(6, "k1", "b"), s(5, "k0", "a")]);
        assert!(!check(&disorder, &[], &[]).is_empty());

        let twice = log(vec![s(5, "k0", "a"), s(6, "k1", "b"), s(8, "k0", "a")]);
        let problems = check(&twice, &[], &[]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("k0=a put at revision 5 and again at revision 8"),
            "{problems:?}"
        );
    }
}
