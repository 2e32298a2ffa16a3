//! etcd's Watch service: many watchers on one bidirectional stream, each
//! replaying history from its start revision and then following live changes.
//!
//! A watcher first subscribes (learning the revision R the feed starts after),
//! then reads history from its start revision up to some revision C >= R, and
//! then takes feed entries above C. Nothing is missed (history covers up to C,
//! the feed everything after R) and nothing is sent twice (feed entries up to C
//! are skipped). A watcher that falls behind the feed catches up from history
//! the same way; if compaction got there first it is canceled, as in etcd.

use crate::auth::Caller;
use crate::backend::{ApiError, Backend, Header};
use crate::convert;
use crate::pb::etcdserverpb as pb;
use crate::pb::mvccpb;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use synod_kv::auth::PermKind;
use synod_kv::{Event, EventKind, Store};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tonic::{Status, Streaming};

type Out = mpsc::Sender<Result<pb::WatchResponse, Status>>;

/// How many watch streams and watchers a member serves now, for etcd's
/// `etcd_debugging_mvcc_watch_stream_total` and `_watcher_total`.
#[derive(Debug, Default)]
pub struct WatchGauges {
    streams: AtomicI64,
    watchers: AtomicI64,
}

impl WatchGauges {
    pub fn streams(&self) -> i64 {
        self.streams.load(Ordering::Relaxed)
    }

    pub fn watchers(&self) -> i64 {
        self.watchers.load(Ordering::Relaxed)
    }

    /// Counts one stream or watcher until the guard is dropped (the task
    /// that holds it ends or is aborted).
    fn hold(self: &Arc<Self>, watcher: bool) -> Held {
        let held = Held(self.clone(), watcher);
        held.counter().fetch_add(1, Ordering::Relaxed);
        held
    }
}

struct Held(Arc<WatchGauges>, bool);

impl Held {
    fn counter(&self) -> &AtomicI64 {
        match self.1 {
            true => &self.0.watchers,
            false => &self.0.streams,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counter().fetch_sub(1, Ordering::Relaxed);
    }
}

/// etcd's default for `--experimental-watch-progress-notify-interval`.
pub const PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);

/// The shortest interval etcd accepts; shorter ones are raised to it.
pub const MIN_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_millis(100);

/// Most distinct revisions in one response of replayed history (etcd's
/// `watchBatchMaxRevs`).
const HISTORY_BATCH_REVISIONS: usize = 1000;

/// Serves one Watch stream until the client cancels it or goes; the end
/// of its requests alone does not end it.
pub(crate) async fn serve<B: Backend>(
    backend: Arc<B>,
    caller: Caller,
    mut inbound: Streaming<pb::WatchRequest>,
    out: Out,
    limits: crate::Limits,
    bugs: crate::ApiBugs,
    gauges: Arc<WatchGauges>,
) {
    let progress_every = limits.watch_progress_notify_interval;
    use pb::watch_request::RequestUnion as R;
    let _stream = gauges.hold(false);
    let mut watchers: HashMap<i64, JoinHandle<()>> = HashMap::new();
    let mut next_id = 0i64;
    let half_closed = loop {
        let req = match inbound.message().await {
            Ok(Some(req)) => req,
            Ok(None) => break true,
            Err(_) => break false,
        };
        watchers.retain(|_, h| !h.is_finished());
        match req.request_union {
            Some(R::CreateRequest(c)) => {
                // Ids the client does not choose count up from 0, as in etcd.
                let id = if c.watch_id != 0 {
                    c.watch_id
                } else {
                    while watchers.contains_key(&next_id) {
                        next_id += 1;
                    }
                    next_id += 1;
                    next_id - 1
                };
                if watchers.contains_key(&id) {
                    let header = backend.header().await.unwrap_or_default();
                    let _ = out
                        .send(Ok(pb::WatchResponse {
                            header: convert::header(header),
                            watch_id: id,
                            created: true,
                            canceled: true,
                            cancel_reason: "etcdserver: duplicate watch ID".into(),
                            ..Default::default()
                        }))
                        .await;
                    continue;
                }
                if let Err(reason) = may_watch(&caller, &c.key, &c.range_end) {
                    let header = backend.header().await.unwrap_or_default();
                    let _ = out
                        .send(Ok(pb::WatchResponse {
                            header: convert::header(header),
                            watch_id: -1,
                            created: true,
                            canceled: true,
                            cancel_reason: reason,
                            ..Default::default()
                        }))
                        .await;
                    continue;
                }
                let (created_tx, created) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(watcher(
                    backend.clone(),
                    caller.clone(),
                    Opened {
                        id,
                        created_sent: created_tx,
                        progress_every,
                        fragment_bytes: limits.max_request_bytes
                            + crate::service::GRPC_OVERHEAD_BYTES,
                        counted: gauges.hold(true),
                    },
                    c,
                    out.clone(),
                    bugs,
                ));
                watchers.insert(id, task);
                // Created answers go out in the order of the requests, as
                // etcd sends them: a client that lets the server pick ids
                // matches them to its requests by that order.
                let _ = created.await;
            }
            Some(R::CancelRequest(c)) => {
                if let Some(task) = watchers.remove(&c.watch_id) {
                    task.abort();
                    let header = backend.header().await.unwrap_or_default();
                    let _ = out
                        .send(Ok(pb::WatchResponse {
                            header: convert::header(header),
                            watch_id: c.watch_id,
                            canceled: true,
                            ..Default::default()
                        }))
                        .await;
                }
            }
            Some(R::ProgressRequest(_)) => {
                // Every watcher on the stream is caught up to this revision:
                // events are sent before the task takes the next feed entry.
                let header = backend.header().await.unwrap_or_default();
                let _ = out
                    .send(Ok(pb::WatchResponse {
                        header: convert::header(header),
                        watch_id: -1,
                        ..Default::default()
                    }))
                    .await;
            }
            None => {}
        }
    };
    if half_closed {
        // A client that has no more requests still watches, as in etcd:
        // the stream ends when the client cancels it (tonic then drops the
        // answers' receiver) or its connection goes.
        out.closed().await;
    }
    for task in watchers.values() {
        task.abort();
    }
}

/// `resp` in pieces for a watcher that asked for fragments, as etcd cuts
/// it: whole if it is smaller than `max` bytes or holds one event;
/// otherwise each piece takes events while it stays under `max` (at least
/// one), and every piece but the last is marked `fragment`, so that the
/// client joins them.
fn fragments(resp: pb::WatchResponse, max: usize) -> Vec<pb::WatchResponse> {
    use prost::Message;
    if resp.encoded_len() < max || resp.events.len() < 2 {
        return vec![resp];
    }
    // Sizes add up field by field: an event costs its key byte (field 11,
    // length-delimited), its length and its bytes.
    let piece_of = |events: Vec<mvccpb::Event>| pb::WatchResponse {
        events,
        fragment: true,
        ..resp.clone()
    };
    let empty = piece_of(Vec::new()).encoded_len();
    let mut pieces = Vec::new();
    let (mut events, mut size) = (Vec::new(), empty);
    for ev in resp.events.iter() {
        let len = ev.encoded_len();
        let cost = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        if !events.is_empty() && size + cost >= max {
            pieces.push(piece_of(std::mem::take(&mut events)));
            size = empty;
        }
        events.push(ev.clone());
        size += cost;
    }
    let mut last = piece_of(events);
    last.fragment = false;
    pieces.push(last);
    pieces
}

/// Whether the caller may watch `[key, range_end)`; if not, the reason a
/// refused watch carries, worded as etcd's (a gRPC status as Go prints it).
fn may_watch(caller: &Caller, key: &[u8], range_end: &[u8]) -> Result<(), String> {
    caller
        .check(key, range_end, PermKind::Read)
        .map_err(|st| format!("rpc error: code = {:?} desc = {}", st.code(), st.message()))
}

struct Watcher {
    id: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    header: Header,
    out: Out,
    /// Whether events went out since the last progress notification was
    /// due: etcd leaves out the next one if they did.
    sent_events: AtomicBool,
    /// With `fragment` asked for: the size at which a response is split.
    fragment_bytes: Option<usize>,
}

impl Watcher {
    fn wants(&self, e: &Event) -> bool {
        Store::watch_matches(&self.key, &self.range_end, &e.kv.key)
            && match e.kind {
                EventKind::Put => !self.no_put,
                EventKind::Delete => !self.no_delete,
            }
    }

    fn event(&self, e: &Event) -> mvccpb::Event {
        mvccpb::Event {
            r#type: match e.kind {
                EventKind::Put => mvccpb::event::EventType::Put,
                EventKind::Delete => mvccpb::event::EventType::Delete,
            } as i32,
            kv: Some(convert::key_value(e.kv.clone())),
            prev_kv: if self.prev_kv {
                e.prev_kv.clone().map(convert::key_value)
            } else {
                None
            },
        }
    }

    /// Sends live events: one response per revision, with that revision in
    /// its header, as etcd notifies its synced watchers. False once the
    /// client is gone.
    async fn deliver(&self, events: &[Event]) -> bool {
        for batch in events.chunk_by(|a, b| a.kv.mod_revision == b.kv.mod_revision) {
            let revision = batch[0].kv.mod_revision;
            if !self.send_events(batch, revision).await {
                return false;
            }
        }
        true
    }

    /// Sends replayed history as etcd does for a watcher that starts in the
    /// past: as few responses as possible (each spanning at most
    /// [`HISTORY_BATCH_REVISIONS`] revisions), each headed with `upto`, the
    /// store revision the replay runs up to. Clients that resume from a
    /// header revision or count responses rely on this shape.
    async fn replay(&self, events: &[Event], upto: i64) -> bool {
        let mut rest = events;
        while !rest.is_empty() {
            let mut revisions = 0;
            let mut last = None;
            let end = rest
                .iter()
                .position(|e| {
                    if last != Some(e.kv.mod_revision) {
                        last = Some(e.kv.mod_revision);
                        revisions += 1;
                    }
                    revisions > HISTORY_BATCH_REVISIONS
                })
                .unwrap_or(rest.len());
            if !self.send_events(&rest[..end], upto).await {
                return false;
            }
            rest = &rest[end..];
        }
        true
    }

    /// Sends the wanted ones of `events` in one response headed with
    /// `revision`; nothing if none is wanted. False once the client is gone.
    async fn send_events(&self, events: &[Event], revision: i64) -> bool {
        let wanted: Vec<mvccpb::Event> = events
            .iter()
            .filter(|e| self.wants(e))
            .map(|e| self.event(e))
            .collect();
        if wanted.is_empty() {
            return true;
        }
        self.sent_events.store(true, Ordering::Relaxed);
        let resp = pb::WatchResponse {
            header: convert::header(Header {
                revision,
                ..self.header
            }),
            watch_id: self.id,
            events: wanted,
            ..Default::default()
        };
        let Some(max) = self.fragment_bytes else {
            return self.out.send(Ok(resp)).await.is_ok();
        };
        for piece in fragments(resp, max) {
            if self.out.send(Ok(piece)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Tells the client it has every event up to `revision`, unless events
    /// went out since the last time this was due. False once the client is
    /// gone.
    async fn progress(&self, revision: i64) -> bool {
        if self.sent_events.swap(false, Ordering::Relaxed) {
            return true;
        }
        let resp = pb::WatchResponse {
            header: convert::header(Header {
                revision,
                ..self.header
            }),
            watch_id: self.id,
            ..Default::default()
        };
        self.out.send(Ok(resp)).await.is_ok()
    }

    /// Cancels the watcher. The header is at `revision`, which etcd sets to 0
    /// for a compaction.
    async fn cancel(&self, revision: i64, compact_revision: i64, reason: String) {
        let resp = pb::WatchResponse {
            header: convert::header(Header {
                revision,
                ..self.header
            }),
            watch_id: self.id,
            canceled: true,
            compact_revision,
            cancel_reason: reason,
            ..Default::default()
        };
        let _ = self.out.send(Ok(resp)).await;
    }

    /// Replays history from `start`; returns the revision it covered, or
    /// `None` if the watcher had to stop.
    async fn catch_up<B: Backend>(&self, backend: &B, start: i64) -> Option<i64> {
        match backend
            .history(self.key.clone(), self.range_end.clone(), start)
            .await
        {
            Ok((upto, events)) => self.replay(&events, upto).await.then_some(upto),
            Err(ApiError::Kv(synod_kv::Error::Compacted { compacted, .. })) => {
                // etcd 3.4 says only this: the compaction revision, with no
                // reason and a header at revision 0; clients turn it into
                // their own "required revision has been compacted" error.
                self.cancel(0, compacted, String::new()).await;
                None
            }
            Err(e) => {
                let reason = crate::service::status(&e).message().into();
                self.cancel(self.header.revision, 0, reason).await;
                None
            }
        }
    }
}

/// What the stream tells a watcher it starts.
struct Opened {
    id: i64,
    /// Told once the created answer is out.
    created_sent: tokio::sync::oneshot::Sender<()>,
    progress_every: Duration,
    /// The size past which a watcher that asked for fragments gets its
    /// responses in pieces: `--max-request-bytes` and gRPC's 512 KiB of
    /// overhead, as etcd reckons it.
    fragment_bytes: usize,
    /// Counts the watcher while its task lives.
    counted: Held,
}

/// When a watcher's progress notifications are due, if it asked for them:
/// every `every` and up to a tenth more, drawn once per watcher as etcd
/// draws it, so that watchers opened together do not all wake together.
fn progress_ticks(asked: bool, every: Duration) -> Option<tokio::time::Interval> {
    if !asked {
        return None;
    }
    let every = every.max(MIN_PROGRESS_NOTIFY_INTERVAL);
    let mut seed = [0u8; 8];
    let draw = getrandom::getrandom(&mut seed).map_or(0, |()| u64::from_le_bytes(seed));
    let tenth = (every.as_nanos() / 10).max(1) as u64;
    let period = every + Duration::from_nanos(draw % tenth);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Some(ticks)
}

/// The next progress notification's time, or never.
async fn next_tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn watcher<B: Backend>(
    backend: Arc<B>,
    mut caller: Caller,
    opened: Opened,
    c: pb::WatchCreateRequest,
    out: Out,
    bugs: crate::ApiBugs,
) {
    let Opened {
        id,
        created_sent,
        progress_every,
        fragment_bytes,
        counted: _counted,
    } = opened;
    use pb::watch_create_request::FilterType;
    let sub = match backend.subscribe().await {
        Ok(s) => s,
        Err(e) => {
            let _ = out.send(Err(crate::service::status(&e))).await;
            return;
        }
    };
    let header = backend.header().await.unwrap_or_default();
    let w = Watcher {
        id,
        key: c.key,
        range_end: c.range_end,
        prev_kv: c.prev_kv,
        no_put: c.filters.contains(&(FilterType::Noput as i32)),
        no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
        header: Header {
            revision: sub.revision,
            ..header
        },
        out,
        sent_events: AtomicBool::new(false),
        fragment_bytes: c.fragment.then_some(fragment_bytes),
    };
    let created = pb::WatchResponse {
        header: convert::header(w.header),
        watch_id: id,
        created: true,
        ..Default::default()
    };
    if w.out.send(Ok(created)).await.is_err() {
        return;
    }
    let _ = created_sent.send(());
    // The next revision this watcher owes the client.
    let mut next = if c.start_revision > 0 {
        let skip = cfg!(feature = "broken") && bugs.watch_resume_skips_one;
        c.start_revision + i64::from(skip)
    } else {
        sub.revision + 1
    };
    if next <= sub.revision {
        match w.catch_up(&*backend, next).await {
            Some(upto) => next = next.max(upto + 1),
            None => return,
        }
    }
    let mut feed = sub.feed;
    let mut ticks = progress_ticks(c.progress_notify, progress_every);
    loop {
        let received = tokio::select! {
            r = feed.recv() => r,
            () = next_tick(&mut ticks) => {
                // Everything before `next` has gone out; what is still in
                // the feed comes after this notification.
                if !w.progress(next - 1).await {
                    return;
                }
                continue;
            }
        };
        match received {
            Ok(applied) => {
                if applied.revision < next {
                    continue;
                }
                // The feed carries every revision in turn, except across a
                // snapshot installed from the leader: the store jumps ahead
                // and the revisions in between were never applied here one
                // by one. Their events are in the store's history.
                if applied.revision > next {
                    match w.catch_up(&*backend, next).await {
                        Some(upto) => next = next.max(upto + 1),
                        None => return,
                    }
                    if applied.revision < next {
                        continue;
                    }
                }
                // A permission revoked while the watch is open stops it
                // (etcd 3.4 only checks when the watch is created).
                let auth = backend.auth();
                if !Arc::ptr_eq(&caller.auth, &auth) {
                    caller.auth = auth;
                    if let Err(reason) = may_watch(&caller, &w.key, &w.range_end) {
                        w.cancel(applied.revision, 0, reason).await;
                        return;
                    }
                }
                if !w.deliver(&applied.events).await {
                    return;
                }
                next = applied.revision + 1;
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                match w.catch_up(&*backend, next).await {
                    Some(upto) => next = next.max(upto + 1),
                    None => return,
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn event(i: u8) -> mvccpb::Event {
        mvccpb::Event {
            kv: Some(mvccpb::KeyValue {
                key: vec![b'k', i],
                value: vec![i; 100],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_large_response_goes_in_fragments_that_join_to_it() {
        let whole = pb::WatchResponse {
            watch_id: 7,
            events: (0..50).map(event).collect(),
            ..Default::default()
        };
        // Small enough, or a single event: whole, unmarked.
        assert_eq!(fragments(whole.clone(), 1 << 20), vec![whole.clone()]);
        let one = pb::WatchResponse {
            events: vec![event(1)],
            ..whole.clone()
        };
        assert_eq!(fragments(one.clone(), 10), [one]);
        // 50 events of about 110 bytes under a 1,000-byte limit.
        let pieces = fragments(whole.clone(), 1000);
        assert!(pieces.len() > 5, "{}", pieces.len());
        for (i, p) in pieces.iter().enumerate() {
            assert!(p.encoded_len() < 1000, "piece {i}: {}", p.encoded_len());
            assert_eq!(p.fragment, i + 1 < pieces.len(), "piece {i}");
            assert_eq!(p.watch_id, 7);
        }
        let joined: Vec<_> = pieces.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, whole.events);
        // A limit below one event's size: one event per piece.
        assert_eq!(fragments(whole, 10).len(), 50);
    }
}
