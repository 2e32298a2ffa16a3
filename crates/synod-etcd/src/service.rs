//! etcd's KV, Watch, Lease, Cluster and Maintenance services over a [`Backend`]
//! (Lock and Election: `recipes.rs`).

use crate::backend::{ApiError, Backend, MemberError, MemberInfo};
use crate::convert;
use crate::pb::etcdserverpb as pb;
use pb::cluster_server::{Cluster, ClusterServer};
use pb::kv_server::{Kv, KvServer};
use pb::lease_server::{Lease, LeaseServer};
use pb::maintenance_server::{Maintenance, MaintenanceServer};
use pb::watch_server::{Watch, WatchServer};
use prost::Message;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use synod_kv as kv;
use synod_kv::auth::PermKind;
use synod_kv::replica::ConfRefusal;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

/// Request limits, etcd's defaults unless set.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest write request accepted (`--max-request-bytes`, 1.5 MiB).
    pub max_request_bytes: usize,
    /// Most operations per transaction branch (`--max-txn-ops`, 128). Must be
    /// the same on every member: the store checks it again when applying.
    pub max_txn_ops: usize,
    /// Shortest lease TTL granted, in seconds: shorter or non-positive
    /// requests are raised to it, as etcd does. A lease must outlive the
    /// election that a leader change may need, or it would expire while no
    /// leader can take its keep-alives. See [`Limits::min_lease_ttl_for`].
    pub min_lease_ttl: i64,
    /// How long an auth token stays valid without use
    /// (`--auth-token-ttl`, 300 s).
    pub auth_token_ttl: Duration,
    /// bcrypt's cost for passwords (`--bcrypt-cost`, 10).
    pub bcrypt_cost: u32,
    /// How often a watcher that asked for progress notifications, and was
    /// sent no events since the last, is told the revision it has seen
    /// all of (`--experimental-watch-progress-notify-interval`, 10 min).
    pub watch_progress_notify_interval: Duration,
}

impl Limits {
    /// etcd's minimum TTL for a cluster's timing: one and a half election
    /// timeouts (counted in whole heartbeats), rounded up to whole seconds.
    /// 2 s with etcd's defaults (100 ms heartbeat, 1 s election timeout).
    pub fn min_lease_ttl_for(heartbeat: Duration, election: Duration) -> i64 {
        let heartbeat_ms = heartbeat.as_millis().max(1);
        let election_ticks = election.as_millis() / heartbeat_ms;
        let min_ms = (3 * election_ticks / 2) * heartbeat_ms;
        min_ms.div_ceil(1000).max(1) as i64
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 1536 * 1024,
            max_txn_ops: kv::MAX_TXN_OPS,
            min_lease_ttl: Limits::min_lease_ttl_for(
                Duration::from_millis(100),
                Duration::from_millis(1000),
            ),
            auth_token_ttl: crate::auth::DEFAULT_TOKEN_TTL,
            bcrypt_cost: crate::auth::BCRYPT_COST,
            watch_progress_notify_interval: crate::watch::PROGRESS_NOTIFY_INTERVAL,
        }
    }
}

/// gRPC's framing on top of the largest request, as etcd allows it.
pub(crate) const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The status etcd sends for an error: its code and its exact message (etcd's
/// Go client turns known messages back into typed errors).
pub(crate) fn status(e: &ApiError) -> Status {
    match e {
        ApiError::Kv(e) => {
            let code = match e.class() {
                kv::ErrorClass::InvalidArgument => Code::InvalidArgument,
                kv::ErrorClass::NotFound => Code::NotFound,
                kv::ErrorClass::FailedPrecondition => Code::FailedPrecondition,
                kv::ErrorClass::OutOfRange => Code::OutOfRange,
                kv::ErrorClass::ResourceExhausted => Code::ResourceExhausted,
                kv::ErrorClass::PermissionDenied => Code::PermissionDenied,
                kv::ErrorClass::Unauthenticated => Code::Unauthenticated,
            };
            Status::new(code, e.etcd_message())
        }
        ApiError::NoLeader => Status::unavailable("etcdserver: no leader"),
        ApiError::Timeout => Status::unavailable("etcdserver: request timed out"),
        ApiError::Unavailable(why) => Status::unavailable(why.clone()),
        ApiError::NotLeader => Status::failed_precondition("etcdserver: not leader"),
        ApiError::BadLeaderTransferee => {
            Status::failed_precondition("etcdserver: bad leader transferee")
        }
        ApiError::LeaderTransferTimeout => {
            Status::unavailable("etcdserver: request timed out, leader transfer took too long")
        }
        ApiError::TooManyRequests => Status::resource_exhausted("etcdserver: too many requests"),
        ApiError::Member(m) => {
            let code = match m {
                MemberError::BadUrls => Code::InvalidArgument,
                MemberError::Refused(ConfRefusal::NotFound) => Code::NotFound,
                MemberError::Unhealthy => Code::Unavailable,
                _ => Code::FailedPrecondition,
            };
            Status::new(code, m.etcd_message())
        }
        ApiError::Unimplemented(why) => Status::unimplemented(*why),
    }
}

fn member(m: MemberInfo) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

fn members(ms: Vec<MemberInfo>) -> Vec<pb::Member> {
    ms.into_iter().map(member).collect()
}

/// The size of the pieces a snapshot is streamed in (etcd's).
const SNAPSHOT_PIECE: usize = 32 * 1024;

fn too_large() -> Status {
    Status::invalid_argument("etcdserver: request is too large")
}

/// Deliberate bugs in the API layer, to show that `synod chaos` catches
/// them. They take effect only in builds with the `broken` feature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiBugs {
    /// A watch created with a start revision begins one revision later: a
    /// client that resumes after a disconnect misses an event.
    pub watch_resume_skips_one: bool,
}

/// The etcd API of one member.
pub struct EtcdServer<B> {
    backend: Arc<B>,
    limits: Limits,
    bugs: ApiBugs,
    tokens: Arc<crate::auth::Tokens>,
    cors: crate::Cors,
    lease_ids: Arc<crate::lease_ids::LeaseIds>,
    watch_gauges: Arc<crate::WatchGauges>,
}

impl<B> Clone for EtcdServer<B> {
    fn clone(&self) -> Self {
        EtcdServer {
            backend: self.backend.clone(),
            limits: self.limits,
            bugs: self.bugs,
            tokens: self.tokens.clone(),
            cors: self.cors.clone(),
            lease_ids: self.lease_ids.clone(),
            watch_gauges: self.watch_gauges.clone(),
        }
    }
}

impl<B: Backend> EtcdServer<B> {
    pub fn new(backend: Arc<B>, limits: Limits) -> Self {
        EtcdServer {
            backend,
            limits,
            bugs: ApiBugs::default(),
            tokens: Arc::new(crate::auth::Tokens::new(limits.auth_token_ttl)),
            cors: crate::Cors::default(),
            lease_ids: Arc::new(crate::lease_ids::LeaseIds::starting_now()),
            watch_gauges: Arc::default(),
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn tokens(&self) -> &crate::auth::Tokens {
        &self.tokens
    }

    /// Hands out and takes JWTs (`--auth-token jwt,...`) instead of simple
    /// tokens.
    pub fn with_jwt(mut self, keys: Arc<crate::jwt::JwtKeys>) -> Self {
        let tokens = crate::auth::Tokens::new(self.limits.auth_token_ttl).with_jwt(keys);
        self.tokens = Arc::new(tokens);
        self
    }

    /// The origins the JSON gateway's answers allow (`--cors`; all by
    /// default).
    pub fn with_cors(mut self, cors: crate::Cors) -> Self {
        self.cors = cors;
        self
    }

    /// Counts this member's watch streams and watchers into `gauges`
    /// (shared by all its listeners, read by its metrics).
    pub fn with_watch_gauges(mut self, gauges: Arc<crate::WatchGauges>) -> Self {
        self.watch_gauges = gauges;
        self
    }

    /// Plants deliberate bugs (ignored unless built with `broken`).
    pub fn with_bugs(mut self, bugs: ApiBugs) -> Self {
        self.bugs = bugs;
        self
    }

    pub(crate) fn backend(&self) -> Arc<B> {
        self.backend.clone()
    }

    /// All eight services, gRPC's health service, and etcd's HTTP/JSON
    /// gateway to the eight under `/v3/` (see `gateway.rs`), ready to serve
    /// (`.serve(addr)` or `.serve_with_incoming(listener)`).
    pub fn router(self) -> tonic::service::Routes {
        let max = self.limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let gateway = self.cors.apply(self.clone().gateway());
        let grpc =
            tonic::service::Routes::new(KvServer::new(self.clone()).max_decoding_message_size(max))
                .add_service(LeaseServer::new(self.clone()).max_decoding_message_size(max))
                .add_service(WatchServer::new(self.clone()))
                .add_service(ClusterServer::new(self.clone()))
                .add_service(MaintenanceServer::new(self.clone()))
                .add_service(pb::auth_server::AuthServer::new(self.clone()))
                .add_service(crate::pb::v3lockpb::lock_server::LockServer::new(
                    self.clone(),
                ))
                .add_service(crate::pb::v3electionpb::election_server::ElectionServer::new(self))
                .add_service(crate::HealthService::server());
        tonic::service::Routes::from(grpc.into_axum_router().merge(gateway))
    }

    pub(crate) async fn write(
        &self,
        cmd: kv::Command,
    ) -> Result<(crate::Header, kv::CommandResponse), Status> {
        cmd.validate(self.limits.max_txn_ops)
            .map_err(|e| status(&e.into()))?;
        self.backend.write(cmd).await.map_err(|e| status(&e))
    }

    /// Hands out lease ids from `ids` (shared by all of a member's
    /// listeners; see `lease_ids.rs`).
    pub fn with_lease_ids(mut self, ids: Arc<crate::LeaseIds>) -> Self {
        self.lease_ids = ids;
        self
    }

    /// The ids this member gives leases granted without one.
    pub(crate) fn lease_ids(&self) -> &crate::lease_ids::LeaseIds {
        &self.lease_ids
    }

    fn check_size(&self, req: &impl Message) -> Result<(), Status> {
        if req.encoded_len() > self.limits.max_request_bytes {
            return Err(too_large());
        }
        Ok(())
    }
}

fn unexpected(what: &str, got: &kv::CommandResponse) -> Status {
    Status::internal(format!("synod: a {what} was answered with {got:?}"))
}

#[tonic::async_trait]
impl<B: Backend> Kv for EtcdServer<B> {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let caller = self.caller(&req)?;
        let req = req.into_inner();
        let serializable = req.serializable;
        let r = convert::range_request(req)?;
        if r.key.is_empty() {
            return Err(status(&kv::Error::EmptyKey.into()));
        }
        caller.check(&r.key, &r.range_end, PermKind::Read)?;
        let (h, resp) = self
            .backend
            .range(r, serializable)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(convert::range_response(h, resp)))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let caller = self.caller(&req)?;
        let req = req.into_inner();
        self.check_size(&req)?;
        match self
            .write(caller.wrap(kv::Command::Put(convert::put_request(req))))
            .await?
        {
            (h, kv::CommandResponse::Put(p)) => Ok(Response::new(convert::put_response(h, p))),
            (_, other) => Err(unexpected("put", &other)),
        }
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let caller = self.caller(&req)?;
        let req = req.into_inner();
        self.check_size(&req)?;
        match self
            .write(caller.wrap(kv::Command::DeleteRange(convert::delete_request(req))))
            .await?
        {
            (h, kv::CommandResponse::DeleteRange(d)) => {
                Ok(Response::new(convert::delete_response(h, d)))
            }
            (_, other) => Err(unexpected("delete", &other)),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let caller = self.caller(&req)?;
        let req = req.into_inner();
        self.check_size(&req)?;
        let t = convert::txn_request(req)?;
        match self.write(caller.wrap(kv::Command::Txn(t))).await? {
            (h, kv::CommandResponse::Txn(t)) => Ok(Response::new(convert::txn_response(h, t))),
            (_, other) => Err(unexpected("txn", &other)),
        }
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let caller = self.caller(&req)?;
        let revision = req.into_inner().revision;
        let (h, _) = self
            .write(caller.wrap(kv::Command::Compact { revision }))
            .await?;
        Ok(Response::new(pb::CompactionResponse {
            header: convert::header(h),
        }))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<B: Backend> Watch for EtcdServer<B> {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let caller = self.caller(&req)?;
        let (tx, rx) = tokio::sync::mpsc::channel(128);
        tokio::spawn(crate::watch::serve(
            self.backend.clone(),
            caller,
            req.into_inner(),
            tx,
            self.limits,
            self.bugs,
            self.watch_gauges.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<B: Backend> Lease for EtcdServer<B> {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        self.caller(&req)?;
        let req = req.into_inner();
        let ttl = req.ttl.max(self.limits.min_lease_ttl);
        let granted = match req.id {
            0 => crate::lease_ids::grant(&*self.backend, &self.lease_ids, ttl)
                .await
                .map_err(|e| status(&e))?,
            id => self.write(kv::Command::LeaseGrant { id, ttl }).await?,
        };
        match granted {
            (h, kv::CommandResponse::LeaseGrant { id, ttl }) => {
                Ok(Response::new(pb::LeaseGrantResponse {
                    header: convert::header(h),
                    id,
                    ttl,
                    error: String::new(),
                }))
            }
            (_, other) => Err(unexpected("lease grant", &other)),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let caller = self.caller(&req)?;
        let id = req.into_inner().id;
        let (h, _) = self
            .write(caller.wrap(kv::Command::LeaseRevoke { id }))
            .await?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: convert::header(h),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let backend = self.backend.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let reply = match backend.keep_alive(msg.id).await {
                    Ok((h, ttl)) => Ok(pb::LeaseKeepAliveResponse {
                        header: convert::header(h),
                        id: msg.id,
                        ttl,
                    }),
                    // etcd tells a client its lease is gone with a TTL of 0,
                    // under a header as any answer.
                    Err(ApiError::Kv(kv::Error::LeaseNotFound(_))) => {
                        let h = backend.header().await.unwrap_or_default();
                        Ok(pb::LeaseKeepAliveResponse {
                            header: convert::header(h),
                            id: msg.id,
                            ttl: 0,
                        })
                    }
                    Err(e) => Err(status(&e)),
                };
                if tx.send(reply).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        let (h, ttl) = self
            .backend
            .time_to_live(req.id)
            .await
            .map_err(|e| status(&e))?;
        // etcd reports a missing lease as TTL -1 rather than an error.
        let resp = match ttl {
            Some(t) => pb::LeaseTimeToLiveResponse {
                header: convert::header(h),
                id: req.id,
                ttl: t.remaining,
                granted_ttl: t.granted,
                keys: if req.keys { t.keys } else { Vec::new() },
            },
            None => pb::LeaseTimeToLiveResponse {
                header: convert::header(h),
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let (h, ids) = self.backend.leases().await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: convert::header(h),
            leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }))
    }
}

#[tonic::async_trait]
impl<B: Backend> Cluster for EtcdServer<B> {
    async fn member_list(
        &self,
        _req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let (h, all) = self.backend.members().await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::MemberListResponse {
            header: convert::cluster_header(h),
            members: members(all),
        }))
    }

    async fn member_add(
        &self,
        req: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        self.caller(&req)?.admin()?;
        let req = req.into_inner();
        let (h, added, all) = self
            .backend
            .member_add(req.peer_ur_ls, req.is_learner)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::MemberAddResponse {
            header: convert::cluster_header(h),
            member: Some(member(added)),
            members: members(all),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.caller(&req)?.admin()?;
        let (h, all) = self
            .backend
            .member_remove(req.into_inner().id)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: convert::cluster_header(h),
            members: members(all),
        }))
    }

    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        self.caller(&req)?.admin()?;
        let req = req.into_inner();
        let (h, all) = self
            .backend
            .member_update(req.id, req.peer_ur_ls)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: convert::cluster_header(h),
            members: members(all),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.caller(&req)?.admin()?;
        let (h, all) = self
            .backend
            .member_promote(req.into_inner().id)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: convert::cluster_header(h),
            members: members(all),
        }))
    }
}

#[tonic::async_trait]
impl<B: Backend> Maintenance for EtcdServer<B> {
    /// etcd rewrites its bbolt file without free pages. synod's WAL and
    /// snapshots have none to reclaim: old segments are deleted once a
    /// snapshot covers them, and a snapshot holds only the history kept.
    /// So there is nothing to do, and the call succeeds, as etcdctl's
    /// `defrag` expects of a healthy member.
    async fn defragment(
        &self,
        req: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.caller(&req)?.admin_raw()?;
        // etcd answers a defragment with no header.
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.caller(&req)?.admin_raw()?;
        let target = req.into_inner().target_id;
        let h = self
            .backend
            .move_leader(target)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::MoveLeaderResponse {
            header: convert::header(h),
        }))
    }

    type SnapshotStream =
        Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send + 'static>>;

    /// The backup file in 32 KiB pieces, each saying how much is left (as
    /// etcd streams its database file).
    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.caller(&req)?.admin_raw()?;
        let (_, file) = self.backend.snapshot().await.map_err(|e| status(&e))?;
        let total = file.len();
        let pieces = (0..total.div_ceil(SNAPSHOT_PIECE)).map(move |i| {
            let end = ((i + 1) * SNAPSHOT_PIECE).min(total);
            // etcd's pieces carry no header.
            Ok(pb::SnapshotResponse {
                header: None,
                remaining_bytes: (total - end) as u64,
                blob: file[i * SNAPSHOT_PIECE..end].to_vec(),
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(pieces))))
    }

    async fn alarm(
        &self,
        req: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        let req = req.into_inner();
        let change = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => None,
            Ok(AlarmAction::Activate) => Some(true),
            Ok(AlarmAction::Deactivate) => Some(false),
            Err(_) => return Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        };
        let alarm = match pb::AlarmType::try_from(req.alarm) {
            Ok(pb::AlarmType::Nospace) => Some(kv::AlarmType::NoSpace),
            Ok(pb::AlarmType::Corrupt) => Some(kv::AlarmType::Corrupt),
            _ => None,
        };
        let (_, alarms) = self
            .backend
            .alarm(change, req.member_id, alarm)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::AlarmResponse {
            // etcd's answer to an alarm request carries no header.
            header: None,
            alarms: alarms
                .into_iter()
                .map(|(member_id, a)| pb::AlarmMember {
                    member_id,
                    alarm: match a {
                        kv::AlarmType::NoSpace => pb::AlarmType::Nospace,
                        kv::AlarmType::Corrupt => pb::AlarmType::Corrupt,
                    } as i32,
                })
                .collect(),
        }))
    }

    /// The digest of the whole key-value history this member holds.
    async fn hash(
        &self,
        req: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        self.caller(&req)?.admin_raw()?;
        let (h, hash, _) = self.backend.hash_kv(0).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::HashResponse {
            header: convert::header(h),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        self.caller(&req)?.admin_raw()?;
        let revision = req.into_inner().revision;
        let (h, hash, compact_revision) = self
            .backend
            .hash_kv(revision)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::HashKvResponse {
            header: convert::header(h),
            hash,
            compact_revision,
        }))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let (h, s) = self.backend.status().await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::StatusResponse {
            header: convert::header(h),
            version: s.version,
            db_size: s.db_size,
            leader: s.leader,
            raft_index: s.raft_index,
            raft_term: s.raft_term,
            raft_applied_index: s.raft_applied_index,
            errors: s.errors,
            db_size_in_use: s.db_size_in_use,
            is_learner: s.is_learner,
        }))
    }
}
