//! The etcd API's view of a member: requests go to the member's thread, and
//! from a follower on to the leader.

use crate::member::{AuthView, Directory, Inbox};
use crate::metrics::Stages;
use crate::peer::ActiveSince;
use crate::reconfig;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use synod_etcd::{
    ApiError, Applied, Backend, Header, LeaseTtl, MemberError, MemberInfo, StatusInfo, Subscription,
};
use synod_kv::auth::AuthState;
use synod_kv::replica::{Answer, ConfRefusal, ReplicaError, ReplicaView, Request};
use synod_kv::{
    AlarmType, Command, CommandResponse, Event, MemberChange, RangeRequest, RangeResponse,
};
use synod_protocols::raft::ConfChange;
use tokio::sync::{broadcast, oneshot};

/// How long a request may wait for its answer before the client hears
/// "request timed out" (etcd's default is about as long).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);
/// Between tries of a membership change while leadership moves.
const CONF_RETRY: Duration = Duration::from_millis(100);

/// Peer URLs as etcd takes them: `http` or `https`, a host and a port.
fn check_peer_urls(urls: &[String]) -> Result<(), ApiError> {
    let ok = |u: &String| {
        let Some((scheme, rest)) = u.split_once("://") else {
            return false;
        };
        let host_port = rest.trim_end_matches('/');
        matches!(scheme, "http" | "https")
            && host_port
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
    };
    if urls.is_empty() || !urls.iter().all(ok) {
        return Err(ApiError::Member(MemberError::BadUrls));
    }
    Ok(())
}

/// A new member's id, as etcd makes one for MemberAdd: from its peer URLs,
/// the cluster and the time, so that a member removed and added again at
/// the same address gets a new id.
fn new_member_id(peer_urls: &[String], cluster_id: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let token = format!("{cluster_id:x}:{nanos}");
    crate::ids::member_id(peer_urls, &token)
}

pub struct MemberBackend {
    pub cluster_id: u64,
    pub me: MemberInfo,
    /// The membership as the member last applied it.
    pub members: Directory,
    /// The auth store as the member last applied it.
    pub auth: AuthView,
    pub inbox: crate::inbox::InboxTx<Inbox>,
    /// Where the member keeps its WAL and snapshots (sized for Status).
    pub data_dir: std::path::PathBuf,
    /// `--strict-reconfig-check`: refuse membership changes that would
    /// leave no working quorum (see [`crate::reconfig`]).
    pub strict_reconfig: bool,
    /// Since when each peer has been reachable.
    pub active: ActiveSince,
    /// Where requests' time goes (the member's metrics).
    pub stages: Stages,
}

/// Bytes of every file under `dir`, preallocated space included (it is
/// taken from the disk): what Status reports as the database size. Links
/// are followed (`wal` is one with `--wal-dir`), a few levels deep only, so
/// that a link back up cannot loop.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    fn walk(dir: &std::path::Path, depth: u32) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match std::fs::metadata(e.path()) {
                Ok(m) if m.is_dir() && depth < 4 => walk(&e.path(), depth + 1),
                Ok(m) if m.is_file() => m.len(),
                _ => 0,
            })
            .sum()
    }
    walk(dir, 0)
}

fn gone() -> ApiError {
    ApiError::Unavailable("synod: member is stopping".into())
}

fn replica_error(e: ReplicaError) -> ApiError {
    match e {
        ReplicaError::Kv(e) => ApiError::Kv(e),
        ReplicaError::NotLeader { .. } => ApiError::NoLeader,
        ReplicaError::LeaderChanged => ApiError::Unavailable("etcdserver: leader changed".into()),
        ReplicaError::Conf(r) => ApiError::Member(MemberError::Refused(r)),
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
        let at = Instant::now();
        self.queue(Inbox::Client { req, reply, at })?;
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, answer).await;
        self.stages.total.observe(at.elapsed().as_secs_f64());
        match answer {
            Err(_) => Err(ApiError::Timeout),
            Ok(Err(_)) => Err(gone()),
            Ok(Ok(r)) => r.map_err(replica_error),
        }
    }

    /// Whether this member's link to `id` is up now (`for_health`: and has
    /// been for the whole health interval).
    fn link(&self, id: u64, for_health: bool) -> bool {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        active
            .get(&id)
            .is_some_and(|since| !for_health || since.elapsed() >= reconfig::HEALTH_INTERVAL)
    }

    /// Runs a `--strict-reconfig-check` rule, if the check is on.
    fn strict(
        &self,
        rule: impl FnOnce(&[MemberInfo]) -> Result<(), MemberError>,
    ) -> Result<(), ApiError> {
        if !self.strict_reconfig {
            return Ok(());
        }
        rule(&self.directory()).map_err(ApiError::Member)
    }

    fn directory(&self) -> Vec<MemberInfo> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the leader for a membership change, and again while leadership
    /// moves (a leader asked to remove itself hands leadership on first and
    /// sends the request after it). `done` says whether a refusal on a
    /// retry means an earlier try took effect.
    async fn conf(
        &self,
        change: ConfChange,
        done: impl Fn(&ApiError) -> bool,
    ) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let mut retried = false;
        loop {
            match self.ask(Request::Conf(change)).await {
                Ok(_) => return Ok(()),
                Err(e) if retried && done(&e) => return Ok(()),
                Err(ApiError::NoLeader | ApiError::Unavailable(_))
                    if tokio::time::Instant::now() < deadline =>
                {
                    retried = true;
                    tokio::time::sleep(CONF_RETRY).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The revision of the store's last compaction, for `/metrics`.
    pub async fn compact_revision(&self) -> Result<i64, ApiError> {
        self.local(|rep, _| rep.store().compact_revision()).await
    }

    /// Writes what the cluster records of a member.
    async fn record(&self, change: MemberChange) -> Result<Header, ApiError> {
        let (h, _) = self.write(Command::Member(change)).await?;
        Ok(h)
    }

    /// Runs `f` on the member's thread and returns what it computed.
    async fn local<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn ReplicaView, &broadcast::Sender<Arc<Applied>>) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(
            move |r: &dyn ReplicaView, feed: &broadcast::Sender<Arc<Applied>>| {
                let value = f(r, feed);
                Box::new(move || drop(tx.send(value))) as crate::replies::Deliver
            },
        );
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
                    (rep.store().revision(), rep.term(), r)
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
            .local(|rep, _| (rep.store().revision(), rep.term(), rep.store().leases()))
            .await?;
        Ok((self.header_at(rev, term), ids))
    }

    async fn members(&self) -> Result<(Header, Vec<MemberInfo>), ApiError> {
        let h = self.header().await?;
        Ok((h, self.directory()))
    }

    async fn member_add(
        &self,
        peer_urls: Vec<String>,
        learner: bool,
    ) -> Result<(Header, MemberInfo, Vec<MemberInfo>), ApiError> {
        check_peer_urls(&peer_urls)?;
        // etcd checks health before it looks at the URLs.
        let me = self.me.id;
        self.strict(|all| reconfig::may_add(all, me, learner, |id| self.link(id, true)))?;
        let taken = self.directory();
        if taken
            .iter()
            .any(|m| m.peer_urls.iter().any(|u| peer_urls.contains(u)))
        {
            return Err(ApiError::Member(MemberError::PeerUrlExists));
        }
        let id = new_member_id(&peer_urls, self.cluster_id);
        // Where the member is reached first, then its vote: every member
        // applies the record before the change, so the leader can reach
        // the new member as soon as the change is in force.
        let urls = peer_urls.clone();
        self.record(MemberChange::PeerUrls {
            id,
            peer_urls: urls,
        })
        .await?;
        let change = if learner {
            ConfChange::AddLearner(id)
        } else {
            ConfChange::AddVoter(id)
        };
        self.conf(change, |e| {
            matches!(
                e,
                ApiError::Member(MemberError::Refused(ConfRefusal::Exists))
            )
        })
        .await?;
        let added = MemberInfo {
            id,
            name: String::new(),
            peer_urls,
            client_urls: Vec::new(),
            is_learner: learner,
        };
        let mut all = self.directory();
        if !all.iter().any(|m| m.id == id) {
            all.push(added.clone());
        }
        Ok((self.header().await?, added, all))
    }

    async fn member_remove(&self, id: u64) -> Result<(Header, Vec<MemberInfo>), ApiError> {
        if !self.directory().iter().any(|m| m.id == id) {
            return Err(ApiError::Member(MemberError::Refused(
                ConfRefusal::NotFound,
            )));
        }
        let me = self.me.id;
        self.strict(|all| {
            reconfig::may_remove(all, me, id, |p| self.link(p, true), |p| self.link(p, false))
        })?;
        self.conf(ConfChange::RemoveNode(id), |e| {
            matches!(
                e,
                ApiError::Member(MemberError::Refused(ConfRefusal::NotFound))
            )
        })
        .await?;
        // Recorded so that the others refuse it for good and tell it so if
        // it never learns. The removal is in force already: a record that
        // fails (this member may be the one removed, and stopping) only
        // means the removed member must learn it from its own log.
        if let Err(e) = self.record(MemberChange::Removed { id }).await {
            tracing::warn!(member = %format_args!("{id:x}"), "removed, but the record of it failed: {e:?}");
        }
        let all = self
            .directory()
            .into_iter()
            .filter(|m| m.id != id)
            .collect();
        Ok((self.header().await.unwrap_or(self.header_at(0, 0)), all))
    }

    async fn member_update(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<(Header, Vec<MemberInfo>), ApiError> {
        check_peer_urls(&peer_urls)?;
        let all = self.directory();
        if !all.iter().any(|m| m.id == id) {
            return Err(ApiError::Member(MemberError::Refused(
                ConfRefusal::NotFound,
            )));
        }
        if all
            .iter()
            .any(|m| m.id != id && m.peer_urls.iter().any(|u| peer_urls.contains(u)))
        {
            return Err(ApiError::Member(MemberError::PeerUrlExists));
        }
        let urls = peer_urls.clone();
        let h = self
            .record(MemberChange::PeerUrls {
                id,
                peer_urls: urls,
            })
            .await?;
        let all = all
            .into_iter()
            .map(|mut m| {
                if m.id == id {
                    m.peer_urls.clone_from(&peer_urls);
                }
                m
            })
            .collect();
        Ok((h, all))
    }

    async fn member_promote(&self, id: u64) -> Result<(Header, Vec<MemberInfo>), ApiError> {
        self.strict(reconfig::may_promote)?;
        self.conf(ConfChange::PromoteLearner(id), |e| {
            matches!(
                e,
                ApiError::Member(MemberError::Refused(ConfRefusal::NotLearner))
            )
        })
        .await?;
        let all = self
            .directory()
            .into_iter()
            .map(|mut m| {
                if m.id == id {
                    m.is_learner = false;
                }
                m
            })
            .collect();
        Ok((self.header().await?, all))
    }

    async fn status(&self) -> Result<(Header, StatusInfo), ApiError> {
        let me = self.me.id;
        let (rev, status) = self
            .local(move |rep, _| {
                let raft = rep;
                (
                    rep.store().revision(),
                    StatusInfo {
                        version: synod_etcd::API_VERSION.into(),
                        db_size: 0,
                        db_size_in_use: rep.store().retained_bytes() as i64,
                        // 0: no leader known, as in etcd.
                        leader: raft.leader().unwrap_or(0),
                        raft_index: raft.commit_index(),
                        raft_term: raft.term(),
                        raft_applied_index: raft.applied_index(),
                        // As etcd words an AlarmMember.
                        errors: rep
                            .store()
                            .alarms()
                            .iter()
                            .map(|(m, a)| {
                                let name = match a {
                                    AlarmType::NoSpace => "NOSPACE",
                                    AlarmType::Corrupt => "CORRUPT",
                                };
                                format!("memberID:{m} alarm:{name} ")
                            })
                            .collect(),
                        is_learner: raft.conf().is_learner(me),
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
        let (reply, answer) = oneshot::channel();
        self.queue(Inbox::Handoff {
            target: Some(target),
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
                (s.revision(), rep.term(), s.hash_kv(revision))
            })
            .await?;
        let (hash, compacted) = hashed?;
        Ok((self.header_at(rev, term), hash, compacted))
    }

    async fn alarm(
        &self,
        change: Option<bool>,
        member: u64,
        alarm: Option<AlarmType>,
    ) -> Result<(Header, Vec<(u64, AlarmType)>), ApiError> {
        let raised =
            |rep: &dyn ReplicaView| rep.store().alarms().iter().copied().collect::<Vec<_>>();
        let (Some(active), Some(alarm)) = (change, alarm) else {
            // GET: every alarm raised, or those of one type, as etcd lists them.
            let (rev, term, all) = self
                .local(move |rep, _| (rep.store().revision(), rep.term(), raised(rep)))
                .await?;
            let listed = all
                .into_iter()
                .filter(|(_, a)| alarm.is_none_or(|want| *a == want))
                .collect();
            return Ok((self.header_at(rev, term), listed));
        };
        let before = self.local(move |rep, _| raised(rep)).await?;
        let (h, _) = self
            .write(Command::Alarm {
                active,
                member,
                alarm,
            })
            .await?;
        // etcd answers the alarm that changed: a cleared alarm only if it was raised.
        let changed = active || before.contains(&(member, alarm));
        Ok((
            h,
            if changed {
                vec![(member, alarm)]
            } else {
                Vec::new()
            },
        ))
    }

    async fn snapshot(&self) -> Result<(Header, Vec<u8>), ApiError> {
        // The store is copied in O(1) on the member's thread and encoded off
        // it, as the member's own snapshots are.
        let (rev, term, store) = self
            .local(|rep, _| (rep.store().revision(), rep.term(), rep.store().clone()))
            .await?;
        let file = tokio::task::spawn_blocking(move || synod_kv::backup::encode(&store))
            .await
            .map_err(|e| ApiError::Unavailable(format!("synod: snapshot encoder failed: {e}")))?;
        Ok((self.header_at(rev, term), file))
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

    fn auth(&self) -> Arc<AuthState> {
        self.auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn header(&self) -> Result<Header, ApiError> {
        let (rev, term) = self
            .local(|rep, _| (rep.store().revision(), rep.term()))
            .await?;
        Ok(self.header_at(rev, term))
    }
}
