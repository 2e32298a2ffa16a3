//! [`NoopBackend`]: answers every request at once and keeps nothing.
//!
//! It measures the ceiling of a benchmark (issue 11): the same gRPC
//! services, request checks and conversions as a real member, driven by the
//! same client on the same machine, with no consensus, storage or store
//! behind them. No server of etcd's API can answer faster through this
//! client here, so a member's throughput is judged against it. Never a
//! store: writes are acknowledged and forgotten, reads find nothing.

use crate::backend::{ApiError, Backend, Header, LeaseTtl, MemberInfo, StatusInfo, Subscription};
use std::sync::atomic::{AtomicI64, Ordering};
use synod_kv::{
    Command, CommandResponse, DeleteRangeResponse, Event, PutResponse, RangeRequest, RangeResponse,
    RequestOp, ResponseOp, TxnResponse,
};
use tokio::sync::broadcast;

/// A member that answers everything at once (see the module docs).
pub struct NoopBackend {
    member: MemberInfo,
    /// Lease ids handed out by grants that asked for id 0.
    next_lease: AtomicI64,
    /// Never sent on: watchers wait for ever.
    feed: broadcast::Sender<std::sync::Arc<crate::Applied>>,
}

impl NoopBackend {
    pub fn new(id: u64, name: &str, client_url: &str) -> NoopBackend {
        NoopBackend {
            member: MemberInfo {
                id,
                name: name.into(),
                peer_urls: Vec::new(),
                client_urls: vec![client_url.into()],
                is_learner: false,
            },
            next_lease: AtomicI64::new(1),
            feed: broadcast::channel(1).0,
        }
    }

    fn header(&self) -> Header {
        Header {
            cluster_id: 1,
            member_id: self.member.id,
            revision: 1,
            raft_term: 1,
        }
    }
}

/// What a request would have answered on an empty store that applied it.
fn answer(op: &RequestOp) -> ResponseOp {
    match op {
        RequestOp::Range(_) => ResponseOp::Range(RangeResponse::default()),
        RequestOp::Put(_) => ResponseOp::Put(PutResponse::default()),
        RequestOp::DeleteRange(_) => ResponseOp::DeleteRange(DeleteRangeResponse::default()),
        RequestOp::Txn(t) => ResponseOp::Txn(TxnResponse {
            succeeded: true,
            responses: t.success.iter().map(answer).collect(),
        }),
    }
}

impl Backend for NoopBackend {
    async fn range(
        &self,
        _req: RangeRequest,
        _serializable: bool,
    ) -> Result<(Header, RangeResponse), ApiError> {
        Ok((self.header(), RangeResponse::default()))
    }

    async fn write(&self, mut cmd: Command) -> Result<(Header, CommandResponse), ApiError> {
        while let Command::As { cmd: inner, .. } | Command::Tagged { cmd: inner, .. } = cmd {
            cmd = *inner;
        }
        let resp = match cmd {
            Command::Put(_) => CommandResponse::Put(PutResponse::default()),
            Command::DeleteRange(_) => CommandResponse::DeleteRange(DeleteRangeResponse::default()),
            Command::Txn(t) => CommandResponse::Txn(TxnResponse {
                succeeded: true,
                responses: t.success.iter().map(answer).collect(),
            }),
            Command::Compact { .. } => CommandResponse::Compact,
            Command::LeaseGrant { id, ttl } => CommandResponse::LeaseGrant {
                id: if id == 0 {
                    self.next_lease.fetch_add(1, Ordering::Relaxed)
                } else {
                    id
                },
                ttl,
            },
            Command::LeaseRevoke { .. } => CommandResponse::LeaseRevoke,
            Command::Member(_) => CommandResponse::Member,
            Command::Alarm { .. } => CommandResponse::Alarm,
            Command::Auth(_) => CommandResponse::Auth,
            Command::As { .. } | Command::Tagged { .. } => unreachable!("unwrapped above"),
        };
        Ok((self.header(), resp))
    }

    async fn keep_alive(&self, _id: i64) -> Result<(Header, i64), ApiError> {
        Ok((self.header(), 300))
    }

    async fn time_to_live(&self, _id: i64) -> Result<(Header, Option<LeaseTtl>), ApiError> {
        Ok((self.header(), None))
    }

    async fn leases(&self) -> Result<(Header, Vec<i64>), ApiError> {
        Ok((self.header(), Vec::new()))
    }

    async fn members(&self) -> Result<(Header, Vec<MemberInfo>), ApiError> {
        Ok((self.header(), vec![self.member.clone()]))
    }

    async fn status(&self) -> Result<(Header, StatusInfo), ApiError> {
        Ok((self.header(), StatusInfo::single_member(self.member.id, 0)))
    }

    async fn move_leader(&self, target: u64) -> Result<Header, ApiError> {
        if target != self.member.id {
            return Err(ApiError::BadLeaderTransferee);
        }
        Ok(self.header())
    }

    async fn hash_kv(&self, _revision: i64) -> Result<(Header, u32, i64), ApiError> {
        Ok((self.header(), 0, 0))
    }

    async fn subscribe(&self) -> Result<Subscription, ApiError> {
        Ok(Subscription {
            revision: 1,
            feed: self.feed.subscribe(),
        })
    }

    async fn history(
        &self,
        _key: Vec<u8>,
        _range_end: Vec<u8>,
        _start: i64,
    ) -> Result<(i64, Vec<Event>), ApiError> {
        Ok((1, Vec::new()))
    }

    async fn header(&self) -> Result<Header, ApiError> {
        Ok(self.header())
    }
}
