//! etcd's Lock and Election services, built server-side on leases, revisions
//! and the applied-change feed, with the semantics of etcd's `concurrency`
//! recipes that etcd's own `v3lock` and `v3election` servers run:
//!
//! * a contender writes `NAME/LEASE-ID-in-hex` under its lease; the key with
//!   the lowest create revision under `NAME/` holds the lock (or leads);
//! * a contender waits until every key under `NAME/` created before its own
//!   is deleted — each waits only for its predecessor, in revision order, so
//!   there is no thundering herd;
//! * the holder's key's create revision is its **fencing token**: it only
//!   grows from one holder to the next, so a resource that remembers the
//!   highest token it saw can refuse a stale holder;
//! * a holder whose lease expires loses its key, and with it the lock.
//!
//! Errors are what etcd sends: its server runs these recipes through an
//! in-process client, so every failure reaches the caller as code `Unknown`
//! with the error's message (`election: no leader`, `etcdserver: requested
//! lease not found`, ...).

use crate::auth::AsUser;
use crate::backend::{ApiError, Backend, Header};
use crate::convert;
use crate::pb::etcdserverpb::ResponseHeader;
use crate::pb::v3electionpb as epb;
use crate::pb::v3lockpb as lpb;
use crate::service::EtcdServer;
use std::pin::Pin;
use std::sync::Arc;
use synod_kv as kv;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The TTL of the lease a Lock or Campaign without one gets (etcd's session
/// default).
const DEFAULT_SESSION_TTL: i64 = 60;

const NO_LEADER: &str = "election: no leader";
const NOT_LEADER: &str = "election: not leader";
const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";
const SESSION_EXPIRED: &str = "mutex: session is expired";

/// How etcd's recipe servers report any error: code Unknown, the message.
fn unknown(e: &ApiError) -> Status {
    match e {
        ApiError::Kv(e) => Status::unknown(e.etcd_message()),
        other => crate::service::status(other),
    }
}

/// The end of the range of every key starting with `prefix` (etcdctl's
/// `--prefix`); `[0]`, every key on, when no byte can be raised.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn hdr(h: Header) -> Option<ResponseHeader> {
    convert::header(h)
}

fn put(key: &[u8], value: &[u8], lease: i64) -> kv::RequestOp {
    kv::RequestOp::Put(kv::PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        ..Default::default()
    })
}

fn get(key: &[u8]) -> kv::RequestOp {
    kv::RequestOp::Range(kv::RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    })
}

/// The key under `prefix` created first (etcd's `WithFirstCreate`).
fn first_created(prefix: &[u8]) -> kv::RangeRequest {
    kv::RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: kv::SortOrder::Ascend,
        sort_target: kv::SortTarget::Create,
        ..Default::default()
    }
}

fn create_is(key: &[u8], rev: i64) -> kv::Compare {
    kv::Compare {
        key: key.to_vec(),
        range_end: Vec::new(),
        result: kv::CompareResult::Equal,
        target: kv::CompareTarget::Create(rev),
    }
}

/// One contender's key: `NAME/` followed by its lease id in lowercase hex.
fn contender_key(name: &[u8], lease: i64) -> (Vec<u8>, Vec<u8>) {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let mut key = prefix.clone();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    (prefix, key)
}

async fn txn<B: Backend>(b: &B, t: kv::TxnRequest) -> Result<(Header, kv::TxnResponse), ApiError> {
    match b.write(kv::Command::Txn(t)).await? {
        (h, kv::CommandResponse::Txn(r)) => Ok((h, r)),
        (_, other) => Err(ApiError::Unavailable(format!(
            "synod: a txn was answered with {other:?}"
        ))),
    }
}

fn range_kvs(r: &kv::ResponseOp) -> &[kv::KeyValue] {
    match r {
        kv::ResponseOp::Range(r) => &r.kvs,
        _ => &[],
    }
}

/// A lease for a request that came without one, as etcd's session makes.
async fn lease_or_grant<B: Backend>(
    b: &B,
    ids: &crate::lease_ids::LeaseIds,
    lease: i64,
) -> Result<i64, ApiError> {
    if lease != 0 {
        return Ok(lease);
    }
    match crate::lease_ids::grant(b, ids, DEFAULT_SESSION_TTL).await? {
        (_, kv::CommandResponse::LeaseGrant { id, .. }) => Ok(id),
        (_, other) => Err(ApiError::Unavailable(format!(
            "synod: a lease grant was answered with {other:?}"
        ))),
    }
}

/// Waits until `key` (as it exists now, if it does) is deleted.
async fn wait_delete<B: Backend>(b: &B, key: &[u8]) -> Result<(), ApiError> {
    loop {
        // Subscribe before reading, so a delete after the read is in the feed.
        let mut sub = b.subscribe().await?;
        let (h, now) = b.range(get(key).into_range(), false).await?;
        if now.kvs.is_empty() {
            return Ok(());
        }
        loop {
            match sub.feed.recv().await {
                Ok(applied) => {
                    if applied.revision > h.revision
                        && applied
                            .events
                            .iter()
                            .any(|e| e.kind == kv::EventKind::Delete && e.kv.key == key)
                    {
                        return Ok(());
                    }
                }
                // Fell behind the feed: look again.
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => {
                    return Err(ApiError::Unavailable(
                        "etcdserver: server stopped".to_string(),
                    ))
                }
            }
        }
    }
}

/// Waits until no key under `prefix` created at or before `max_create` is
/// left (etcd's `waitDeletes`): always for the newest of them, the contender
/// just ahead. Returns the header of the read that found none.
async fn wait_deletes<B: Backend>(
    b: &B,
    prefix: &[u8],
    max_create: i64,
) -> Result<Header, ApiError> {
    loop {
        let req = kv::RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            limit: 1,
            sort_order: kv::SortOrder::Descend,
            sort_target: kv::SortTarget::Create,
            max_create_revision: max_create,
            ..Default::default()
        };
        let (h, r) = b.range(req, false).await?;
        match r.kvs.first() {
            None => return Ok(h),
            Some(ahead) => wait_delete(b, &ahead.key).await?,
        }
    }
}

trait IntoRange {
    fn into_range(self) -> kv::RangeRequest;
}

impl IntoRange for kv::RequestOp {
    fn into_range(self) -> kv::RangeRequest {
        match self {
            kv::RequestOp::Range(r) => r,
            _ => unreachable!("get() builds a range"),
        }
    }
}

/// Deletes a contender's key if the request is dropped before it finishes
/// (the client gave up or went away), as etcd's recipes do on cancellation,
/// so a waiting contender that left does not block the ones behind it.
struct Withdraw<B: Backend> {
    backend: Arc<B>,
    key: Vec<u8>,
    create: i64,
    armed: bool,
}

impl<B: Backend> Drop for Withdraw<B> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let b = self.backend.clone();
        let t = kv::TxnRequest {
            compare: vec![create_is(&self.key, self.create)],
            success: vec![kv::RequestOp::DeleteRange(kv::DeleteRangeRequest {
                key: std::mem::take(&mut self.key),
                ..Default::default()
            })],
            failure: Vec::new(),
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = txn(&*b, t).await;
            });
        }
    }
}

impl<B: Backend> EtcdServer<B> {
    /// The backend a recipe runs on: acting for the caller of `req`.
    fn recipe_backend<T>(&self, req: &Request<T>) -> Result<Arc<AsUser<B>>, Status> {
        let caller = self.caller(req)?;
        Ok(Arc::new(AsUser::new(self.backend(), caller)))
    }
}

#[tonic::async_trait]
impl<B: Backend> lpb::lock_server::Lock for EtcdServer<B> {
    async fn lock(
        &self,
        req: Request<lpb::LockRequest>,
    ) -> Result<Response<lpb::LockResponse>, Status> {
        let b = self.recipe_backend(&req)?;
        let req = req.into_inner();
        let lease = lease_or_grant(&*b, self.lease_ids(), req.lease)
            .await
            .map_err(|e| unknown(&e))?;
        let (prefix, key) = contender_key(&req.name, lease);
        let (h, r) = txn(
            &*b,
            kv::TxnRequest {
                compare: vec![create_is(&key, 0)],
                success: vec![
                    put(&key, b"", lease),
                    kv::RequestOp::Range(first_created(&prefix)),
                ],
                failure: vec![get(&key), kv::RequestOp::Range(first_created(&prefix))],
            },
        )
        .await
        .map_err(|e| unknown(&e))?;
        let my_rev = if r.succeeded {
            h.revision
        } else {
            range_kvs(&r.responses[0])
                .first()
                .map(|k| k.create_revision)
                .unwrap_or(h.revision)
        };
        let owner = range_kvs(&r.responses[1])
            .first()
            .map(|k| k.create_revision);
        if owner.is_none() || owner == Some(my_rev) {
            return Ok(Response::new(lpb::LockResponse {
                header: hdr(h),
                key,
            }));
        }
        let mut guard = Withdraw {
            backend: b.clone(),
            key: key.clone(),
            create: my_rev,
            armed: true,
        };
        let h = wait_deletes(&*b, &prefix, my_rev - 1)
            .await
            .map_err(|e| unknown(&e))?;
        // Our lease may have run out while we waited: then the key is gone
        // and so is our turn (etcd 3.5 checks this too).
        let (_, mine) = b
            .range(get(&key).into_range(), false)
            .await
            .map_err(|e| unknown(&e))?;
        guard.armed = false;
        if mine.kvs.first().map(|k| k.create_revision) != Some(my_rev) {
            return Err(Status::unknown(SESSION_EXPIRED));
        }
        Ok(Response::new(lpb::LockResponse {
            header: hdr(h),
            key,
        }))
    }

    async fn unlock(
        &self,
        req: Request<lpb::UnlockRequest>,
    ) -> Result<Response<lpb::UnlockResponse>, Status> {
        let b = self.recipe_backend(&req)?;
        let key = req.into_inner().key;
        if key.is_empty() {
            return Err(unknown(&kv::Error::EmptyKey.into()));
        }
        let (h, _) = b
            .write(kv::Command::DeleteRange(kv::DeleteRangeRequest {
                key,
                ..Default::default()
            }))
            .await
            .map_err(|e| unknown(&e))?;
        Ok(Response::new(lpb::UnlockResponse { header: hdr(h) }))
    }
}

type ObserveStream =
    Pin<Box<dyn Stream<Item = Result<epb::LeaderResponse, Status>> + Send + 'static>>;

async fn proclaim<B: Backend>(
    b: &B,
    leader: &epb::LeaderKey,
    value: &[u8],
) -> Result<Header, Status> {
    let (h, r) = txn(
        b,
        kv::TxnRequest {
            compare: vec![create_is(&leader.key, leader.rev)],
            success: vec![put(&leader.key, value, leader.lease)],
            failure: Vec::new(),
        },
    )
    .await
    .map_err(|e| unknown(&e))?;
    if !r.succeeded {
        return Err(Status::unknown(NOT_LEADER));
    }
    Ok(h)
}

async fn resign<B: Backend>(b: &B, leader: &epb::LeaderKey) -> Result<Header, Status> {
    let (h, _) = txn(
        b,
        kv::TxnRequest {
            compare: vec![create_is(&leader.key, leader.rev)],
            success: vec![kv::RequestOp::DeleteRange(kv::DeleteRangeRequest {
                key: leader.key.clone(),
                ..Default::default()
            })],
            failure: Vec::new(),
        },
    )
    .await
    .map_err(|e| unknown(&e))?;
    Ok(h)
}

/// Sends the election's leader and every change of it until the client goes
/// away (etcd's `Election.Observe`): the current leader's value, each new
/// value it proclaims, and after it resigns or expires, the next leader.
async fn observe<B: Backend>(
    b: Arc<B>,
    prefix: Vec<u8>,
    out: tokio::sync::mpsc::Sender<Result<epb::LeaderResponse, Status>>,
) {
    let send = |h: Header, kv: kv::KeyValue| {
        let out = out.clone();
        async move {
            out.send(Ok(epb::LeaderResponse {
                header: hdr(h),
                kv: Some(convert::key_value(kv)),
            }))
            .await
            .is_ok()
        }
    };
    'restart: loop {
        let mut sub = match b.subscribe().await {
            Ok(s) => s,
            Err(e) => {
                let _ = out.send(Err(unknown(&e))).await;
                return;
            }
        };
        let (h, r) = match b.range(first_created(&prefix), false).await {
            Ok(x) => x,
            Err(e) => {
                let _ = out.send(Err(unknown(&e))).await;
                return;
            }
        };
        let (mut seen, leader) =
            match r.kvs.into_iter().next() {
                Some(kv) => (h.revision, kv),
                // No leader yet: the first put under the prefix makes one.
                None => loop {
                    match sub.feed.recv().await {
                        Ok(a) if a.revision > h.revision => {
                            if let Some(e) = a.events.iter().find(|e| {
                                e.kind == kv::EventKind::Put && e.kv.key.starts_with(&prefix)
                            }) {
                                break (a.revision, e.kv.clone());
                            }
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => continue 'restart,
                        Err(RecvError::Closed) => return,
                    }
                },
            };
        let key = leader.key.clone();
        if !send(
            Header {
                revision: seen,
                ..h
            },
            leader,
        )
        .await
        {
            return;
        }
        // Follow the leader's key until it is deleted.
        loop {
            match sub.feed.recv().await {
                Ok(a) if a.revision > seen => {
                    seen = a.revision;
                    for e in a.events.iter().filter(|e| e.kv.key == key) {
                        match e.kind {
                            kv::EventKind::Delete => continue 'restart,
                            kv::EventKind::Put => {
                                let h = Header {
                                    revision: a.revision,
                                    ..h
                                };
                                if !send(h, e.kv.clone()).await {
                                    return;
                                }
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => continue 'restart,
                Err(RecvError::Closed) => return,
            }
        }
    }
}

#[tonic::async_trait]
impl<B: Backend> epb::election_server::Election for EtcdServer<B> {
    async fn campaign(
        &self,
        req: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        let b = self.recipe_backend(&req)?;
        let req = req.into_inner();
        let lease = lease_or_grant(&*b, self.lease_ids(), req.lease)
            .await
            .map_err(|e| unknown(&e))?;
        let (prefix, key) = contender_key(&req.name, lease);
        let (h, r) = txn(
            &*b,
            kv::TxnRequest {
                compare: vec![create_is(&key, 0)],
                success: vec![put(&key, &req.value, lease)],
                failure: vec![get(&key)],
            },
        )
        .await
        .map_err(|e| unknown(&e))?;
        let mut leader = epb::LeaderKey {
            name: req.name.clone(),
            key: key.clone(),
            rev: h.revision,
            lease,
        };
        if !r.succeeded {
            let existing = range_kvs(&r.responses[0]).first().cloned();
            if let Some(kv) = existing {
                leader.rev = kv.create_revision;
                if kv.value != req.value {
                    if let Err(e) = proclaim(&*b, &leader, &req.value).await {
                        let _ = resign(&*b, &leader).await;
                        return Err(e);
                    }
                }
            }
        }
        let mut guard = Withdraw {
            backend: b.clone(),
            key,
            create: leader.rev,
            armed: true,
        };
        wait_deletes(&*b, &prefix, leader.rev - 1)
            .await
            .map_err(|e| unknown(&e))?;
        guard.armed = false;
        Ok(Response::new(epb::CampaignResponse {
            header: hdr(h),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let b = self.recipe_backend(&req)?;
        let req = req.into_inner();
        let leader = req
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        let h = proclaim(&*b, &leader, &req.value).await?;
        Ok(Response::new(epb::ProclaimResponse { header: hdr(h) }))
    }

    async fn leader(
        &self,
        req: Request<epb::LeaderRequest>,
    ) -> Result<Response<epb::LeaderResponse>, Status> {
        let b = self.recipe_backend(&req)?;
        let (prefix, _) = contender_key(&req.into_inner().name, 0);
        let (h, r) = b
            .range(first_created(&prefix), false)
            .await
            .map_err(|e| unknown(&e))?;
        match r.kvs.into_iter().next() {
            None => Err(Status::unknown(NO_LEADER)),
            Some(kv) => Ok(Response::new(epb::LeaderResponse {
                header: hdr(h),
                kv: Some(convert::key_value(kv)),
            })),
        }
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        req: Request<epb::LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let b = self.recipe_backend(&req)?;
        let (prefix, _) = contender_key(&req.into_inner().name, 0);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let task = tokio::spawn(observe(b, prefix, tx.clone()));
        // Stop following when the client goes away.
        tokio::spawn(async move {
            tx.closed().await;
            task.abort();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        req: Request<epb::ResignRequest>,
    ) -> Result<Response<epb::ResignResponse>, Status> {
        let b = self.recipe_backend(&req)?;
        let leader = req
            .into_inner()
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        let h = resign(&*b, &leader).await?;
        Ok(Response::new(epb::ResignResponse { header: hdr(h) }))
    }
}
