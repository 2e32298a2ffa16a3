//! A single member that keeps its store in memory.
//!
//! Nothing is replicated or written to disk, so it must never be offered as a
//! service: it exists to test the API layer (conversions, errors, streams)
//! against real clients such as etcdctl, independently of replication.

use crate::backend::{
    ApiError, Applied, Backend, Header, LeaseTtl, MemberInfo, StatusInfo, Subscription,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use synod_kv::auth::AuthState;
use synod_kv::{Command, CommandResponse, Error, Event, RangeRequest, RangeResponse, Store};
use tokio::sync::broadcast;

/// Applied changes buffered per subscriber before it counts as lagging.
const FEED_CAPACITY: usize = 1024;

/// Shortest lease TTL granted, in seconds (etcd raises shorter requests too).
const MIN_TTL: i64 = 2;

struct State {
    store: Store,
    /// When each lease expires unless kept alive.
    deadlines: BTreeMap<i64, Instant>,
    /// The store's auth state, shared with the services (replaced, never
    /// changed in place, when an auth command is applied).
    auth: Arc<AuthState>,
}

pub struct LocalBackend {
    cluster_id: u64,
    member: MemberInfo,
    state: Mutex<State>,
    /// Sent under the state lock, so the feed is in revision order.
    feed: broadcast::Sender<Arc<Applied>>,
}

impl LocalBackend {
    pub fn new(member_id: u64, name: &str, client_url: &str) -> LocalBackend {
        LocalBackend {
            cluster_id: 0x5359_4e4f_4400_0001,
            member: MemberInfo {
                id: member_id,
                name: name.to_string(),
                peer_urls: Vec::new(),
                client_urls: vec![client_url.to_string()],
                is_learner: false,
            },
            state: Mutex::new(State {
                store: Store::new(),
                deadlines: BTreeMap::new(),
                auth: Arc::new(AuthState::default()),
            }),
            feed: broadcast::channel(FEED_CAPACITY).0,
        }
    }

    /// Replaces the whole store, as a member does when it installs a
    /// leader's snapshot: the revisions it skips are published to no
    /// watcher one by one; watchers find them in the new store's history.
    pub fn install(&self, store: Store) {
        if let Ok(mut s) = self.state() {
            s.auth = Arc::new(store.auth().clone());
            s.store = store;
        }
    }

    fn publish(&self, store: &Store, events: Vec<Event>) {
        if !events.is_empty() {
            // No subscriber is not an error.
            let _ = self.feed.send(Arc::new(Applied {
                revision: store.revision(),
                events,
            }));
        }
    }

    fn header_at(&self, store: &Store) -> Header {
        Header {
            cluster_id: self.cluster_id,
            member_id: self.member.id,
            revision: store.revision(),
            raft_term: 1,
        }
    }

    /// The state with every lease whose deadline passed already revoked, so no
    /// caller ever sees a key whose lease has expired.
    fn state(&self) -> Result<MutexGuard<'_, State>, ApiError> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| ApiError::Unavailable("synod: local backend poisoned".into()))?;
        let now = Instant::now();
        let due: Vec<i64> = s
            .deadlines
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            s.deadlines.remove(&id);
            let (_, events) = s
                .store
                .apply(&Command::LeaseRevoke { id })
                .expect("a lease with a deadline exists");
            self.publish(&s.store, events);
        }
        Ok(s)
    }
}

impl Backend for LocalBackend {
    fn auth(&self) -> Arc<AuthState> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.auth.clone()
    }

    async fn range(
        &self,
        req: RangeRequest,
        _serializable: bool,
    ) -> Result<(Header, RangeResponse), ApiError> {
        let s = self.state()?;
        let r = s.store.range(&req)?;
        Ok((self.header_at(&s.store), r))
    }

    async fn write(&self, cmd: Command) -> Result<(Header, CommandResponse), ApiError> {
        let cmd = match cmd {
            Command::LeaseGrant { id, ttl } => Command::LeaseGrant {
                id,
                ttl: ttl.max(MIN_TTL),
            },
            other => other,
        };
        if let Command::Auth(_) = cmd.inner() {
            let mut s = self.state()?;
            let (resp, _) = s.store.apply(&cmd)?;
            s.auth = Arc::new(s.store.auth().clone());
            return Ok((self.header_at(&s.store), resp));
        }
        let mut s = self.state()?;
        let (resp, events) = s.store.apply(&cmd)?;
        self.publish(&s.store, events);
        match (cmd.inner(), &resp) {
            (_, CommandResponse::LeaseGrant { id, ttl }) => {
                let at = Instant::now() + Duration::from_secs(*ttl as u64);
                s.deadlines.insert(*id, at);
            }
            (Command::LeaseRevoke { id }, _) => {
                s.deadlines.remove(id);
            }
            _ => {}
        }
        Ok((self.header_at(&s.store), resp))
    }

    async fn keep_alive(&self, id: i64) -> Result<(Header, i64), ApiError> {
        let mut s = self.state()?;
        let lease = s.store.lease(id).ok_or(Error::LeaseNotFound(id))?;
        s.deadlines
            .insert(id, Instant::now() + Duration::from_secs(lease.ttl as u64));
        Ok((self.header_at(&s.store), lease.ttl))
    }

    async fn time_to_live(&self, id: i64) -> Result<(Header, Option<LeaseTtl>), ApiError> {
        let s = self.state()?;
        let ttl = s.store.lease(id).map(|l| {
            let left = s.deadlines.get(&id).map_or(Duration::ZERO, |at| {
                at.saturating_duration_since(Instant::now())
            });
            LeaseTtl {
                remaining: left.as_secs() as i64,
                granted: l.ttl,
                keys: l.keys,
            }
        });
        Ok((self.header_at(&s.store), ttl))
    }

    async fn leases(&self) -> Result<(Header, Vec<i64>), ApiError> {
        let s = self.state()?;
        Ok((self.header_at(&s.store), s.store.leases()))
    }

    async fn members(&self) -> Result<(Header, Vec<MemberInfo>), ApiError> {
        let s = self.state()?;
        Ok((self.header_at(&s.store), vec![self.member.clone()]))
    }

    async fn subscribe(&self) -> Result<Subscription, ApiError> {
        let s = self.state()?;
        Ok(Subscription {
            revision: s.store.revision(),
            feed: self.feed.subscribe(),
        })
    }

    async fn history(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        start: i64,
    ) -> Result<(i64, Vec<Event>), ApiError> {
        let s = self.state()?;
        let events = s.store.events_since(&key, &range_end, start)?;
        Ok((s.store.revision(), events))
    }

    async fn header(&self) -> Result<Header, ApiError> {
        let s = self.state()?;
        Ok(self.header_at(&s.store))
    }

    async fn move_leader(&self, target: u64) -> Result<Header, ApiError> {
        // The only member, and so the leader: moving to itself is done.
        if target != self.member.id {
            return Err(ApiError::BadLeaderTransferee);
        }
        let s = self.state()?;
        Ok(self.header_at(&s.store))
    }

    async fn hash_kv(&self, revision: i64) -> Result<(Header, u32, i64), ApiError> {
        let s = self.state()?;
        let (hash, compacted) = s.store.hash_kv(revision)?;
        Ok((self.header_at(&s.store), hash, compacted))
    }

    async fn status(&self) -> Result<(Header, StatusInfo), ApiError> {
        let s = self.state()?;
        // Nothing on disk: the size is that of the data held.
        let size = s.store.retained_bytes() as i64;
        Ok((
            self.header_at(&s.store),
            StatusInfo::single_member(self.member.id, size),
        ))
    }
}
