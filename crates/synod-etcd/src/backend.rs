//! What the API services need from a member, whatever keeps its data.

use std::future::Future;
use std::sync::Arc;
use synod_kv::auth::AuthState;
use synod_kv::replica::ConfRefusal;
use synod_kv::{Command, CommandResponse, Event, RangeRequest, RangeResponse};
use tokio::sync::broadcast;

/// The changes one applied command made, all at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub revision: i64,
    pub events: Vec<Event>,
}

/// A feed of everything applied after `revision`, in revision order. A
/// receiver that falls behind gets `Lagged` and must catch up from history.
pub struct Subscription {
    pub revision: i64,
    pub feed: broadcast::Receiver<Arc<Applied>>,
}

/// The header etcd puts on every response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub cluster_id: u64,
    pub member_id: u64,
    /// The store's revision when the request was served.
    pub revision: i64,
    pub raft_term: u64,
}

/// A lease's remaining and granted time, in seconds, and its keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseTtl {
    pub remaining: i64,
    pub granted: i64,
    pub keys: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// The version a member reports in Status: the etcd release whose API and
/// behaviour synod implements and is tested against (3.4, with its answers
/// recorded in `tests/golden/`). Clients gate features on it; claiming a later
/// release would promise what synod does not serve.
pub const API_VERSION: &str = "3.4.0";

/// What `etcdctl endpoint status` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusInfo {
    /// The etcd API level served: [`API_VERSION`].
    pub version: String,
    /// Bytes on disk of everything the member keeps (etcd: its database
    /// file's size).
    pub db_size: i64,
    /// Bytes of the data the store still holds, every retained revision
    /// (etcd: the part of its database file in use).
    pub db_size_in_use: i64,
    pub leader: u64,
    pub raft_index: u64,
    pub raft_term: u64,
    pub raft_applied_index: u64,
    pub errors: Vec<String>,
    pub is_learner: bool,
}

impl StatusInfo {
    /// The status of a member that is the whole cluster (and so its leader)
    /// and keeps no Raft log on disk: `size` bytes of data, all in use.
    pub fn single_member(id: u64, size: i64) -> StatusInfo {
        StatusInfo {
            version: API_VERSION.into(),
            db_size: size,
            db_size_in_use: size,
            leader: id,
            raft_index: 0,
            raft_term: 1,
            raft_applied_index: 0,
            errors: Vec::new(),
            is_learner: false,
        }
    }
}

/// Why a backend could not serve a request, in etcd's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// The store refused the request (bad key, compacted revision, ...).
    Kv(synod_kv::Error),
    /// No leader is known right now; the client should retry.
    NoLeader,
    /// The request was not applied in time; it may still be.
    Timeout,
    /// The member cannot serve (shutting down, disk failed, ...).
    Unavailable(String),
    /// Only the leader can do this (MoveLeader).
    NotLeader,
    /// MoveLeader's target is not a voting member.
    BadLeaderTransferee,
    /// MoveLeader's target did not take over in time.
    LeaderTransferTimeout,
    /// The member has more requests queued than it takes; the client
    /// should back off and retry.
    TooManyRequests,
    /// A membership change refused by etcd's rules.
    Member(MemberError),
    /// This backend cannot do that (a single-member backend has no peers).
    Unimplemented(&'static str),
}

/// Why a membership change was refused, each with etcd's code and message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberError {
    /// The leader refused it by etcd's rules.
    Refused(ConfRefusal),
    /// Another member has one of these peer URLs.
    PeerUrlExists,
    /// A peer URL does not parse.
    BadUrls,
    /// `--strict-reconfig-check`: too few voters have started (published
    /// their names) for the cluster to keep a quorum after the change.
    NotEnoughStarted,
    /// `--strict-reconfig-check`: this member has not been connected to
    /// enough voters for long enough for the change to be safe.
    Unhealthy,
}

impl MemberError {
    /// etcd's message for it, which clients match on.
    pub fn etcd_message(self) -> &'static str {
        match self {
            MemberError::PeerUrlExists => "etcdserver: Peer URLs already exists",
            MemberError::BadUrls => "etcdserver: given member URLs are invalid",
            MemberError::NotEnoughStarted => {
                "etcdserver: re-configuration failed due to not enough started members"
            }
            MemberError::Unhealthy => "etcdserver: unhealthy cluster",
            MemberError::Refused(r) => match r {
                ConfRefusal::Exists => "etcdserver: member ID already exist",
                ConfRefusal::NotFound => "etcdserver: member not found",
                ConfRefusal::NotLearner => "etcdserver: can only promote a learner member",
                ConfRefusal::LearnerNotReady => {
                    "etcdserver: can only promote a learner member which is in sync with leader"
                }
                ConfRefusal::TooManyLearners => "etcdserver: too many learner members in cluster",
                // etcd 3.4 drops the proposal and times out; synod refuses at once.
                ConfRefusal::Pending => {
                    "etcdserver: another membership change is in progress; retry when it is done"
                }
                ConfRefusal::LastVoter => {
                    "etcdserver: re-configuration failed: the cluster would have no voting member"
                }
                ConfRefusal::NoLearners => {
                    "etcdserver: this cluster's engine (Multi-Paxos) has no learner members"
                }
            },
        }
    }
}

impl From<synod_kv::Error> for ApiError {
    fn from(e: synod_kv::Error) -> ApiError {
        ApiError::Kv(e)
    }
}

/// A member as the API services see it. Implementations decide how reads are
/// made linearizable and how writes become durable; the services only promise
/// to call them with requests that passed etcd's static checks.
pub trait Backend: Send + Sync + 'static {
    /// Reads keys. Unless `serializable`, the answer must reflect every write
    /// acknowledged before the call (linearizable); a serializable read may be
    /// served from this member's possibly stale state.
    fn range(
        &self,
        req: RangeRequest,
        serializable: bool,
    ) -> impl Future<Output = Result<(Header, RangeResponse), ApiError>> + Send;

    /// Applies a command that changes the store. Answers only once the command
    /// is applied, and for a replicated backend durable on a majority.
    fn write(
        &self,
        cmd: Command,
    ) -> impl Future<Output = Result<(Header, CommandResponse), ApiError>> + Send;

    /// Renews a lease; returns its TTL in seconds, or `LeaseNotFound`.
    fn keep_alive(&self, id: i64) -> impl Future<Output = Result<(Header, i64), ApiError>> + Send;

    /// A lease's remaining time, or `None` if it does not exist.
    fn time_to_live(
        &self,
        id: i64,
    ) -> impl Future<Output = Result<(Header, Option<LeaseTtl>), ApiError>> + Send;

    /// Every lease id.
    fn leases(&self) -> impl Future<Output = Result<(Header, Vec<i64>), ApiError>> + Send;

    fn members(&self) -> impl Future<Output = Result<(Header, Vec<MemberInfo>), ApiError>> + Send;

    /// Adds a member reached at `peer_urls` (a learner if `learner`);
    /// answers once the change is in force, with the new member and the
    /// whole membership.
    fn member_add(
        &self,
        _peer_urls: Vec<String>,
        _learner: bool,
    ) -> impl Future<Output = Result<(Header, MemberInfo, Vec<MemberInfo>), ApiError>> + Send {
        async {
            Err(ApiError::Unimplemented(
                "this member has no peers to add to",
            ))
        }
    }

    /// Removes member `id` (etcd member id) for good.
    fn member_remove(
        &self,
        _id: u64,
    ) -> impl Future<Output = Result<(Header, Vec<MemberInfo>), ApiError>> + Send {
        async {
            Err(ApiError::Unimplemented(
                "this member has no peers to remove",
            ))
        }
    }

    /// Changes where member `id` is reached.
    fn member_update(
        &self,
        _id: u64,
        _peer_urls: Vec<String>,
    ) -> impl Future<Output = Result<(Header, Vec<MemberInfo>), ApiError>> + Send {
        async {
            Err(ApiError::Unimplemented(
                "this member has no peers to update",
            ))
        }
    }

    /// Makes learner `id` a voter.
    fn member_promote(
        &self,
        _id: u64,
    ) -> impl Future<Output = Result<(Header, Vec<MemberInfo>), ApiError>> + Send {
        async { Err(ApiError::Unimplemented("this member has no learners")) }
    }

    fn status(&self) -> impl Future<Output = Result<(Header, StatusInfo), ApiError>> + Send;

    /// Hands leadership to member `target` (etcd member id); only the
    /// leader can. Moving it to the leader itself succeeds at once.
    fn move_leader(&self, target: u64) -> impl Future<Output = Result<Header, ApiError>> + Send;

    /// This member's digest of the key-value history up to `revision` (0:
    /// its current one) and its compacted revision: etcd's HashKV, compared
    /// across members to check that they hold the same data.
    fn hash_kv(
        &self,
        revision: i64,
    ) -> impl Future<Output = Result<(Header, u32, i64), ApiError>> + Send;

    /// etcd's Alarm: list the alarms raised (`None`: raise or clear nothing),
    /// or raise (`Some(true)`) or clear (`Some(false)`) alarm `alarm` of
    /// member `member` through the log. Answers the alarms listed, or the
    /// one that changed.
    fn alarm(
        &self,
        _change: Option<bool>,
        _member: u64,
        _alarm: Option<synod_kv::AlarmType>,
    ) -> impl Future<Output = Result<(Header, Vec<(u64, synod_kv::AlarmType)>), ApiError>> + Send
    {
        async {
            let h = self.header().await?;
            Ok((h, Vec::new()))
        }
    }

    /// This member's whole store as a backup file ([`synod_kv::backup`]),
    /// as of its applied state: what `etcdctl snapshot save` streams.
    fn snapshot(&self) -> impl Future<Output = Result<(Header, Vec<u8>), ApiError>> + Send {
        async { Err(ApiError::Unimplemented("this member keeps no snapshot")) }
    }

    /// Subscribes to every change applied on this member from now on.
    fn subscribe(&self) -> impl Future<Output = Result<Subscription, ApiError>> + Send;

    /// The changes to `key..range_end` from `start` on, with the revision they
    /// run up to (everything up to it is included), or `Compacted`.
    fn history(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        start: i64,
    ) -> impl Future<Output = Result<(i64, Vec<Event>), ApiError>> + Send;

    /// The member's current revision (for watch headers).
    fn header(&self) -> impl Future<Output = Result<Header, ApiError>> + Send;

    /// Users, roles and permissions as this member has applied them. Called
    /// on every request, so it must be cheap (a shared copy, not a clone).
    fn auth(&self) -> Arc<AuthState> {
        static DISABLED: std::sync::LazyLock<Arc<AuthState>> =
            std::sync::LazyLock::new(|| Arc::new(AuthState::default()));
        DISABLED.clone()
    }

    /// Waits until this member has applied everything acknowledged before
    /// the call (a linearizable read of nothing).
    fn barrier(&self) -> impl Future<Output = Result<Header, ApiError>> + Send {
        async {
            let req = RangeRequest {
                key: vec![0],
                count_only: true,
                ..RangeRequest::default()
            };
            Ok(self.range(req, false).await?.0)
        }
    }
}
