//! The etcd API's view of a member: requests go to the member's thread, and
//! from a follower on to the leader.

use crate::member::Inbox;
use std::sync::{mpsc, Arc, RwLock};
use std::time::Duration;
use synod_etcd::{
    ApiError, Applied, Backend, Header, LeaseTtl, MemberInfo, StatusInfo, Subscription,
};
use synod_kv::replica::{Answer, Replica, ReplicaError, Request};
use synod_kv::{Command, CommandResponse, Event, RangeRequest, RangeResponse};
use tokio::sync::{broadcast, oneshot};

/// How long a request may wait for its answer before the client hears
/// "request timed out" (etcd's default is about as long).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// What a member knows of every member, by raft id: names and client URLs
/// are learnt from the peers' hellos.
pub type Directory = Arc<RwLock<Vec<MemberInfo>>>;

pub struct MemberBackend {
    pub cluster_id: u64,
    pub me: MemberInfo,
    /// etcd member ids by raft id.
    pub member_ids: Vec<u64>,
    pub members: Directory,
    pub inbox: mpsc::SyncSender<Inbox>,
    /// Where the member keeps its WAL and snapshots (sized for Status).
    pub data_dir: std::path::PathBuf,
}

/// Bytes of every file under `dir`, preallocated space included (it is
/// taken from the disk): what Status reports as the database size.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

fn gone() -> ApiError {
    ApiError::Unavailable("synod: member is stopping".into())
}

fn replica_error(e: ReplicaError) -> ApiError {
    match e {
        ReplicaError::Kv(e) => ApiError::Kv(e),
        ReplicaError::NotLeader { .. } => ApiError::NoLeader,
        ReplicaError::LeaderChanged => ApiError::Unavailable("etcdserver: leader changed".into()),
    }
}

impl MemberBackend {
    fn header_at(&self, revision: i64, raft_term: u64) -> Header {
        Header {
            cluster_id: self.cluster_id,
            member_id: self.me.id,
            revision,
            raft_term,
        }
    }

    /// Hands `m` to the member. Never blocks an API thread on a full inbox:
    /// the client is told to back off, as etcd does when its apply falls
    /// behind.
    fn queue(&self, m: Inbox) -> Result<(), ApiError> {
        self.inbox.try_send(m).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => ApiError::TooManyRequests,
            mpsc::TrySendError::Disconnected(_) => gone(),
        })
    }

    async fn ask(&self, req: Request) -> Result<Answer, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.queue(Inbox::Client { req, reply })?;
        match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
            Err(_) => Err(ApiError::Timeout),
            Ok(Err(_)) => Err(gone()),
            Ok(Ok(r)) => r.map_err(replica_error),
        }
    }

    /// Runs `f` on the member's thread and returns what it computed.
    async fn local<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Replica, &broadcast::Sender<Arc<Applied>>) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(move |r: &Replica, feed: &broadcast::Sender<Arc<Applied>>| {
            let _ = tx.send(f(r, feed));
        });
        self.queue(Inbox::Local(job))?;
        rx.await.map_err(|_| gone())
    }
}

impl Backend for MemberBackend {
    async fn range(
        &self,
        req: RangeRequest,
        serializable: bool,
    ) -> Result<(Header, RangeResponse), ApiError> {
        if serializable {
            let (rev, term, r) = self
                .local(move |rep, _| {
                    let r = rep.store().range(&req);
                    (rep.store().revision(), rep.raft().term(), r)
                })
                .await?;
            return Ok((self.header_at(rev, term), r?));
        }
        match self.ask(Request::Read(req)).await? {
            Answer::Read {
                revision,
                term,
                resp,
            } => Ok((self.header_at(revision, term), resp)),
            other => Err(ApiError::Unavailable(format!(
                "synod: unexpected {other:?}"
            ))),
        }
    }

    async fn write(&self, cmd: Command) -> Result<(Header, CommandResponse), ApiError> {
        match self.ask(Request::Write(cmd)).await? {
            Answer::Write {
                revision,
                term,
                resp,
            } => Ok((self.header_at(revision, term), resp)),
            other => Err(ApiError::Unavailable(format!(
                "synod: unexpected {other:?}"
            ))),
        }
    }

    async fn keep_alive(&self, id: i64) -> Result<(Header, i64), ApiError> {
        match self.ask(Request::KeepAlive { lease: id }).await? {
            Answer::KeepAlive { ttl } => {
                let h = self.header().await?;
                Ok((h, ttl))
            }
            other => Err(ApiError::Unavailable(format!(
                "synod: unexpected {other:?}"
            ))),
        }
    }

    async fn time_to_live(&self, id: i64) -> Result<(Header, Option<LeaseTtl>), ApiError> {
        // Only the leader's count of a lease decides when it ends (a
        // follower never sees keep-alives), so the leader answers, as in etcd.
        match self.ask(Request::TimeToLive { lease: id }).await {
            Ok(Answer::TimeToLive {
                remaining,
                granted,
                keys,
            }) => {
                let h = self.header().await?;
                let ttl = LeaseTtl {
                    remaining,
                    granted,
                    keys,
                };
                Ok((h, Some(ttl)))
            }
            Err(ApiError::Kv(synod_kv::Error::LeaseNotFound(_))) => {
                Ok((self.header().await?, None))
            }
            Err(e) => Err(e),
            Ok(other) => Err(ApiError::Unavailable(format!(
                "synod: unexpected {other:?}"
            ))),
        }
    }

    async fn leases(&self) -> Result<(Header, Vec<i64>), ApiError> {
        let (rev, term, ids) = self
            .local(|rep, _| {
                (
                    rep.store().revision(),
                    rep.raft().term(),
                    rep.store().leases(),
                )
            })
            .await?;
        Ok((self.header_at(rev, term), ids))
    }

    async fn members(&self) -> Result<(Header, Vec<MemberInfo>), ApiError> {
        let h = self.header().await?;
        let members = self
            .members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok((h, members))
    }

    async fn status(&self) -> Result<(Header, StatusInfo), ApiError> {
        let ids = self.member_ids.clone();
        let (rev, status) = self
            .local(move |rep, _| {
                let raft = rep.raft();
                (
                    rep.store().revision(),
                    StatusInfo {
                        version: synod_etcd::API_VERSION.into(),
                        db_size: 0,
                        db_size_in_use: rep.store().retained_bytes() as i64,
                        // 0: no leader known, as in etcd.
                        leader: raft
                            .leader()
                            .and_then(|l| ids.get(l as usize).copied())
                            .unwrap_or(0),
                        raft_index: raft.commit_index(),
                        raft_term: raft.term(),
                        raft_applied_index: raft.applied_index(),
                        errors: Vec::new(),
                        is_learner: false,
                    },
                )
            })
            .await?;
        let dir = self.data_dir.clone();
        let db_size = tokio::task::spawn_blocking(move || dir_bytes(&dir))
            .await
            .unwrap_or(0);
        let status = StatusInfo {
            db_size: db_size as i64,
            ..status
        };
        Ok((self.header_at(rev, status.raft_term), status))
    }

    async fn move_leader(&self, target: u64) -> Result<Header, ApiError> {
        use crate::member::Handoff;
        let Some(raft_id) = self.member_ids.iter().position(|id| *id == target) else {
            return Err(ApiError::BadLeaderTransferee);
        };
        let (reply, answer) = oneshot::channel();
        self.queue(Inbox::Handoff {
            target: Some(raft_id as u64),
            reply,
        })?;
        match answer.await.map_err(|_| gone())? {
            Handoff::Moved | Handoff::Stayed => self.header().await,
            Handoff::NotLeader => Err(ApiError::NotLeader),
            Handoff::BadTarget => Err(ApiError::BadLeaderTransferee),
            Handoff::TimedOut => Err(ApiError::LeaderTransferTimeout),
        }
    }

    async fn hash_kv(&self, revision: i64) -> Result<(Header, u32, i64), ApiError> {
        // This member's own state, as etcd's HashKV: members are compared
        // with each other, never through the leader.
        let (rev, term, hashed) = self
            .local(move |rep, _| {
                let s = rep.store();
                (s.revision(), rep.raft().term(), s.hash_kv(revision))
            })
            .await?;
        let (hash, compacted) = hashed?;
        Ok((self.header_at(rev, term), hash, compacted))
    }

    async fn subscribe(&self) -> Result<Subscription, ApiError> {
        // On the member's thread, the only sender: nothing applied after this
        // revision can be missed by the new receiver.
        self.local(|rep, feed| Subscription {
            revision: rep.store().revision(),
            feed: feed.subscribe(),
        })
        .await
    }

    async fn history(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        start: i64,
    ) -> Result<(i64, Vec<Event>), ApiError> {
        let (rev, events) = self
            .local(move |rep, _| {
                let s = rep.store();
                (s.revision(), s.events_since(&key, &range_end, start))
            })
            .await?;
        Ok((rev, events?))
    }

    async fn header(&self) -> Result<Header, ApiError> {
        let (rev, term) = self
            .local(|rep, _| (rep.store().revision(), rep.raft().term()))
            .await?;
        Ok(self.header_at(rev, term))
    }
}
