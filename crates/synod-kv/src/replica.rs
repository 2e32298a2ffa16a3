//! The store replicated by Raft, as a sans-IO node: what every member of the
//! etcd-compatible service runs, with the I/O left to its driver.
//!
//! Writes ([`Command`]s) proposed on the leader travel in the log as bincode
//! payloads; every member applies them in log order and reports the changes
//! ([`ReplicaEvent::Applied`], what watchers follow), and the leader answers
//! the request once it is applied. Linearizable reads go through ReadIndex and
//! are answered once the member has applied up to the read index, on any
//! member: a follower asks its leader for the index and serves the read from
//! its own store. A member that is not the leader refuses other requests with
//! a hint, for the driver to forward.
//!
//! **Leases without clocks in the log.** Every member counts lease deadlines
//! in ticks as it applies grants; only the leader acts on them: a keep-alive
//! to the leader pushes a deadline back, and when one passes the leader
//! proposes the revoke, so a lease ends at the same log position everywhere. A
//! new leader restarts every deadline at the full TTL (as etcd does), so a
//! leader change never shortens a lease.
//!
//! The driver's contract is the Raft core's ([`synod_protocols::raft`]):
//! persist an output's writes, then send its messages, then report its events.
//! The glue between the store and the core is the core's own
//! ([`synod_protocols::raft::app`]): this file only says what applying,
//! snapshotting and stepping down mean for the store.

use crate::{Command, CommandResponse, Error, Event, RangeRequest, RangeResponse, Store};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use synod_protocols::raft::{
    Application, ConfChange, Disk, Entry, EntryData, Message, Payload, RaftApp, RaftConfig,
    RaftNode, Role, Snapshot, Write,
};
use synod_protocols::{Instant, Node, NodeId, Output};

/// The driver's name for a request, echoed in its response.
pub type RequestId = u64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A change, answered once applied (durable on a majority).
    Write(Command),
    /// A linearizable read.
    Read(RangeRequest),
    /// Pushes a lease's deadline back by its TTL.
    KeepAlive { lease: i64 },
    /// What is left of a lease, as the leader (whose count decides) sees it.
    TimeToLive { lease: i64 },
    /// A membership change, answered once its configuration entry is
    /// applied, or refused at once by etcd's rules ([`ConfRefusal`]).
    Conf(ConfChange),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaInput {
    Client {
        id: RequestId,
        req: Request,
    },
    /// Hand leadership to `target` (leader only).
    TransferLeader(NodeId),
    /// The driver saw member `from` go away (its connections closed): if it
    /// is the leader, campaign soon (see `RaftNode::leader_unreachable`).
    PeerGone(NodeId),
    /// Change the membership by one server (leader only; one change at a
    /// time). The change takes effect when its entry commits.
    ConfChange(ConfChange),
    /// The driver encoded the image a [`ReplicaEvent::SnapshotImage`] handed
    /// out ([`StoreImage::encode`]): compact the log with it.
    SnapshotEncoded {
        index: u64,
        data: Payload,
    },
}

/// The store as of one applied entry, frozen (an O(1) copy; see
/// [`Store`]'s persistent maps), for the driver to encode off the member's
/// own thread.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreImage(Store);

impl StoreImage {
    /// The snapshot data: what the member would have encoded itself.
    pub fn encode(&self) -> Payload {
        Payload::encode(&self.0)
    }
}

/// Traces show where the image is from, not the whole store.
impl std::fmt::Debug for StoreImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreImage(revision {})", self.0.revision())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Write {
        revision: i64,
        term: u64,
        resp: CommandResponse,
    },
    Read {
        revision: i64,
        term: u64,
        resp: RangeResponse,
    },
    KeepAlive {
        ttl: i64,
    },
    TimeToLive {
        /// Whole seconds until the leader revokes the lease, rounded down.
        remaining: i64,
        granted: i64,
        keys: Vec<Vec<u8>>,
    },
    /// The membership change is in force.
    Conf,
}

/// Why the leader refused a membership change (etcd's rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfRefusal {
    /// The member to add is in the cluster already.
    Exists,
    /// The member to remove or promote is not in the cluster.
    NotFound,
    /// Only a learner can be promoted.
    NotLearner,
    /// A learner is promoted only once its log is within 10% of the
    /// leader's: a voter that lags would cost the cluster its quorum.
    LearnerNotReady,
    /// etcd allows one learner at a time.
    TooManyLearners,
    /// Another change is not yet committed, or the leader has not committed
    /// an entry of its term yet: changes go one at a time.
    Pending,
    /// The change would leave the cluster without a voter.
    LastVoter,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaError {
    /// Ask the leader (if one is known) instead.
    NotLeader { hint: Option<NodeId> },
    /// Leadership changed before the request was answered. A write may still
    /// be applied later (its outcome is unknown), a read or keep-alive was not.
    LeaderChanged,
    /// The store refused the request; every member would refuse it alike.
    Kv(Error),
    /// The leader refused a membership change.
    Conf(ConfRefusal),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaEvent {
    Response {
        id: RequestId,
        result: Result<Answer, ReplicaError>,
    },
    /// Log entry `index` (of `term`, its data hashing to `digest`) was
    /// applied. Every entry is reported, no-ops, configurations and refused
    /// commands included; a write that changed something lists its changes
    /// at `revision`. The term and digest let a checker compare what members
    /// applied at one index.
    Applied {
        index: u64,
        term: u64,
        digest: u64,
        revision: i64,
        events: Vec<Event>,
    },
    BecameLeader {
        term: u64,
    },
    /// A snapshot is due at applied entry `index` (only with
    /// `ReplicaConfig::encode_snapshots_elsewhere`): encode `image`, on any
    /// thread, and hand it back as [`ReplicaInput::SnapshotEncoded`]. Until
    /// then the log keeps growing and no other snapshot starts; if it never
    /// comes back (the member restarted), the next life snapshots anew.
    SnapshotImage {
        index: u64,
        image: StoreImage,
    },
}

/// Static configuration of one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    pub raft: RaftConfig,
    /// Wall-clock length of one tick, for lease TTLs (etcd: 100 ms).
    pub tick_ms: u64,
    /// Operations allowed per transaction branch; the same on every member.
    pub max_txn_ops: usize,
    /// Hand snapshots out to be encoded ([`ReplicaEvent::SnapshotImage`])
    /// instead of encoding them inside the step that makes them due.
    pub encode_snapshots_elsewhere: bool,
    /// Bytes the store may hold (`--quota-backend-bytes`; 0: no limit). The
    /// leader checks it before proposing a write that takes space; past it,
    /// it raises the NOSPACE alarm through the log, as etcd does, so every
    /// member refuses such writes alike whatever its own flag.
    pub quota_bytes: u64,
}

impl ReplicaConfig {
    pub fn new(id: NodeId, peers: Vec<NodeId>) -> ReplicaConfig {
        let mut raft = RaftConfig::new(id, peers);
        // The store keeps every revision until compacted, so it easily
        // outgrows the log between two snapshots; counting entries alone
        // rewrote a 19 MB store every 1,000 puts and stalled every write
        // behind it (issue 11).
        raft.snapshot_log_percent = 100;
        ReplicaConfig {
            raft,
            tick_ms: 100,
            max_txn_ops: crate::MAX_TXN_OPS,
            encode_snapshots_elsewhere: false,
            quota_bytes: 0,
        }
    }
}

type Out = Output<Write, Message, ReplicaEvent>;

/// Deliberately broken persistence, for the simulator's tests that show
/// `--algo etcd` catches it. All off by default; only the `broken` feature
/// can turn one on ([`Replica::with_bugs`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaBugs {
    /// The snapshot is labelled with the applied index but holds the store
    /// as it was one entry earlier: the applied index is persisted ahead of
    /// the state it describes.
    pub stale_snapshot: bool,
    /// A restarted member counts the committed entries after its snapshot
    /// as applied without applying them.
    pub skip_replay: bool,
    /// Lease deadlines are counted without the ticks that cover the
    /// current tick and the answer's trip (the lease ends a little early).
    pub short_leases: bool,
    /// An image encoded elsewhere is labelled with the index applied when it
    /// comes back, not the one it was taken at: the entries applied in
    /// between are missing from the snapshot.
    pub late_image_index: bool,
    /// A membership change is answered as done when the leader proposes
    /// it, before it is committed and in force.
    pub conf_answered_early: bool,
    /// A write sent on a user's behalf is applied without checking that
    /// user's permissions.
    pub auth_unchecked: bool,
    /// Bugs of the Raft core underneath (with the `broken` feature).
    pub raft: synod_protocols::raft::Bugs,
}

/// One member: the Raft core, the store, and the requests it owes answers.
#[derive(Clone, Debug)]
pub struct Replica {
    node: RaftApp<State>,
}

/// Everything of a member that is not the Raft core.
#[derive(Clone, Debug)]
struct State {
    cfg: ReplicaConfig,
    store: Store,
    /// Writes proposed here, by log index: (term, request).
    writes: BTreeMap<u64, (u64, RequestId)>,
    /// Reads waiting for their read index, then for apply to reach it.
    reads: BTreeMap<u64, (RequestId, RangeRequest, Option<u64>)>,
    next_read: u64,
    ticks: u64,
    /// Lease deadlines, in ticks.
    deadlines: BTreeMap<i64, u64>,
    /// Leases whose revoke this leader proposed and has not seen applied.
    revoking: BTreeSet<i64>,
    bugs: ReplicaBugs,
    /// The store before the last apply (kept only for `stale_snapshot`).
    before_last: Option<Store>,
    /// Replaying the log at boot (only `skip_replay` cares).
    booting: bool,
}

impl Replica {
    /// Boots a member, or recovers it from `disk`: the store comes from the
    /// snapshot, and committed entries are applied again without events.
    pub fn new(cfg: ReplicaConfig, disk: &Disk, seed: u64) -> Replica {
        Self::boot(cfg, disk, seed, ReplicaBugs::default())
    }

    /// A member with deliberately broken persistence (tests only).
    #[cfg(feature = "broken")]
    pub fn with_bugs(cfg: ReplicaConfig, disk: &Disk, seed: u64, bugs: ReplicaBugs) -> Replica {
        Self::boot(cfg, disk, seed, bugs)
    }

    fn boot(cfg: ReplicaConfig, disk: &Disk, seed: u64, bugs: ReplicaBugs) -> Replica {
        let state = State {
            store: Store::new().with_max_txn_ops(cfg.max_txn_ops),
            cfg: cfg.clone(),
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            next_read: 0,
            ticks: 0,
            deadlines: BTreeMap::new(),
            revoking: BTreeSet::new(),
            bugs,
            before_last: None,
            booting: true,
        };
        let mut node = RaftApp::new(cfg.raft, disk, seed, state);
        #[cfg(feature = "broken")]
        node.set_raft_bugs(bugs.raft);
        node.app_mut().booting = false;
        Replica { node }
    }

    pub fn raft(&self) -> &RaftNode {
        self.node.raft()
    }

    /// The member's store, for serializable reads: possibly behind the
    /// cluster, never ahead of it.
    pub fn store(&self) -> &Store {
        &self.node.app().store
    }

    pub fn is_leader(&self) -> bool {
        self.raft().role() == Role::Leader
    }

    /// Seconds left on a lease as this member counts them (only the leader's
    /// count decides anything).
    pub fn lease_remaining(&self, lease: i64) -> Option<i64> {
        self.node.app().lease_remaining(lease)
    }

    fn not_leader(&self) -> ReplicaError {
        let raft = self.raft();
        ReplicaError::NotLeader {
            hint: raft.leader().filter(|l| *l != raft.id()),
        }
    }

    fn read(&mut self, id: RequestId, range: RangeRequest, out: &mut Out) {
        let app = self.node.app_mut();
        let read = app.next_read;
        app.next_read += 1;
        app.reads.insert(read, (id, range, None));
        if !self.node.call(out, |r, out| r.read_index(read, out)) {
            self.node.app_mut().reads.remove(&read);
            let e = self.not_leader();
            respond(out, id, Err(e));
        }
    }

    /// Whether `cmd` (`cost` bytes encoded) would take the store past its
    /// quota. Once the alarm is raised, the store itself refuses.
    fn over_quota(&self, cmd: &Command, cost: usize) -> bool {
        let quota = self.node.app().cfg.quota_bytes;
        let store = self.store();
        quota > 0
            && cmd.takes_space()
            && !store.no_space()
            && store.retained_bytes() + cost as u64 > quota
    }

    /// Proposes the NOSPACE alarm in this member's name.
    fn raise_no_space(&mut self, out: &mut Out) {
        let alarm = Command::Alarm {
            active: true,
            member: self.raft().id(),
            alarm: crate::AlarmType::NoSpace,
        };
        let data = EntryData::App(Payload::encode(&alarm));
        self.node.call(out, |r, out| r.propose(data, out));
    }

    /// etcd's rules for a membership change, checked on the leader.
    fn conf_refusal(&self, change: ConfChange) -> Option<ConfRefusal> {
        let raft = self.raft();
        let conf = raft.conf();
        if raft.conf_change_pending() || !raft.committed_own_term() {
            return Some(ConfRefusal::Pending);
        }
        match change {
            ConfChange::AddVoter(n) | ConfChange::AddLearner(n) if conf.contains(n) => {
                Some(ConfRefusal::Exists)
            }
            ConfChange::AddLearner(_) if !conf.learners.is_empty() => {
                Some(ConfRefusal::TooManyLearners)
            }
            ConfChange::PromoteLearner(n) | ConfChange::RemoveNode(n) if !conf.contains(n) => {
                Some(ConfRefusal::NotFound)
            }
            ConfChange::PromoteLearner(n) if !conf.is_learner(n) => Some(ConfRefusal::NotLearner),
            ConfChange::PromoteLearner(n) => {
                // etcd: the learner's match index is at least 90% of the
                // leader's.
                let matched = raft.match_index(n).unwrap_or(0);
                (matched * 10 < raft.last_index() * 9).then_some(ConfRefusal::LearnerNotReady)
            }
            ConfChange::RemoveNode(n) if conf.voters == [n] => Some(ConfRefusal::LastVoter),
            _ => None,
        }
    }

    /// Proposes a membership change. A leader asked to remove itself hands
    /// leadership to the most up-to-date other voter first and sends the
    /// client there (as a hint), so that the cluster never waits out an
    /// election for a leader that is leaving.
    fn conf_change(&mut self, id: RequestId, change: ConfChange, out: &mut Out) {
        if let Some(refusal) = self.conf_refusal(change) {
            respond(out, id, Err(ReplicaError::Conf(refusal)));
            return;
        }
        let me = self.raft().id();
        if change == ConfChange::RemoveNode(me) {
            let raft = self.raft();
            let successor = raft
                .voters()
                .into_iter()
                .filter(|v| *v != me)
                .max_by_key(|v| raft.match_index(*v).unwrap_or(0));
            if let Some(to) = successor {
                self.node.call(out, |r, out| r.transfer_leader(to, out));
                respond(out, id, Err(ReplicaError::NotLeader { hint: Some(to) }));
                return;
            }
        }
        if self.node.call(out, |r, out| r.propose_conf(change, out)) {
            if self.node.app().bugs.conf_answered_early {
                respond(out, id, Ok(Answer::Conf));
                return;
            }
            let raft = self.raft();
            let (index, term) = (raft.last_index(), raft.term());
            self.node.app_mut().writes.insert(index, (term, id));
        } else {
            respond(out, id, Err(ReplicaError::Conf(ConfRefusal::Pending)));
        }
    }

    fn client(&mut self, id: RequestId, req: Request, out: &mut Out) {
        if let Request::Read(range) = req {
            // Any member serves a linearizable read: a follower asks its
            // leader for the read index and answers from its own store once
            // it has applied that far.
            self.read(id, range, out);
            return;
        }
        if !self.is_leader() {
            let e = self.not_leader();
            respond(out, id, Err(e));
            return;
        }
        match req {
            Request::Write(cmd) => {
                if let Err(e) = cmd.validate(self.node.app().cfg.max_txn_ops) {
                    respond(out, id, Err(ReplicaError::Kv(e)));
                    return;
                }
                if let Some(target) = self.raft().transferring_to() {
                    let hint = Some(target);
                    respond(out, id, Err(ReplicaError::NotLeader { hint }));
                    return;
                }
                let data = Payload::encode(&cmd);
                if self.over_quota(&cmd, data.0.len()) {
                    self.raise_no_space(out);
                    respond(out, id, Err(ReplicaError::Kv(Error::NoSpace)));
                    return;
                }
                let data = EntryData::App(data);
                match self.node.call(out, |r, out| r.propose(data, out)) {
                    Some((index, term)) => {
                        self.node.app_mut().writes.insert(index, (term, id));
                    }
                    None => {
                        let e = self.not_leader();
                        respond(out, id, Err(e));
                    }
                }
            }
            Request::Read(range) => self.read(id, range, out),
            Request::KeepAlive { lease } => {
                let app = self.node.app_mut();
                let result = match app.store.lease(lease) {
                    Some(l) => {
                        let at = app.ticks + app.ttl_ticks(l.ttl);
                        app.deadlines.insert(lease, at);
                        Ok(Answer::KeepAlive { ttl: l.ttl })
                    }
                    None => Err(ReplicaError::Kv(Error::LeaseNotFound(lease))),
                };
                respond(out, id, result);
            }
            Request::Conf(change) => self.conf_change(id, change, out),
            Request::TimeToLive { lease } => {
                let app = self.node.app();
                let result = match app.store.lease(lease) {
                    Some(l) => Ok(Answer::TimeToLive {
                        remaining: app.lease_remaining(lease).unwrap_or(l.ttl),
                        granted: l.ttl,
                        keys: l.keys,
                    }),
                    None => Err(ReplicaError::Kv(Error::LeaseNotFound(lease))),
                };
                respond(out, id, result);
            }
        }
    }

    /// The leader revokes leases whose deadline passed, once each.
    fn expire_leases(&mut self, out: &mut Out) {
        if !self.is_leader() || !self.raft().committed_own_term() {
            return;
        }
        let app = self.node.app();
        let due: Vec<i64> = app
            .deadlines
            .iter()
            .filter(|(id, at)| **at <= app.ticks && !app.revoking.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let data = EntryData::App(Payload::encode(&Command::LeaseRevoke { id }));
            let placed = self.node.call(out, |r, out| r.propose(data, out));
            if placed.is_some() {
                self.node.app_mut().revoking.insert(id);
            }
        }
    }
}

fn respond(out: &mut Out, id: RequestId, result: Result<Answer, ReplicaError>) {
    out.emit(ReplicaEvent::Response { id, result });
}

impl State {
    /// Seconds left on a lease as this member counts them.
    fn lease_remaining(&self, lease: i64) -> Option<i64> {
        let at = *self.deadlines.get(&lease)?;
        Some((at.saturating_sub(self.ticks) * self.cfg.tick_ms / 1000) as i64)
    }

    /// Ticks a lease must outlive from now. Two more than the TTL spans:
    /// now falls somewhere inside the current tick, so counting the current
    /// tick as whole would revoke up to one tick before `now + TTL`; and the
    /// client hears of the grant only after this apply (a forwarded answer
    /// travels back through a follower), so a revocation due exactly at
    /// `apply + TTL` could still come before `answer + TTL`. The second
    /// tick covers that trip (found by `lease_expiry.rs` with its watcher on
    /// the leader: up to 2.5 ms early with one).
    fn ttl_ticks(&self, ttl: i64) -> u64 {
        let ticks = (ttl.max(0) as u64 * 1000).div_ceil(self.cfg.tick_ms.max(1));
        if self.bugs.short_leases {
            return ticks.saturating_sub(1);
        }
        ticks + 2
    }
}

impl Application for State {
    type Event = ReplicaEvent;

    fn restore(&mut self, snapshot: &Snapshot) {
        self.store = snapshot.data.decode("snapshot");
    }

    fn apply(&mut self, _raft: &RaftNode, e: &Entry, out: &mut Out) {
        // Every entry is reported, no-ops and configurations included, so
        // checkers see each index applied; only writes list changes.
        let applied = |store: &Store, events: Vec<Event>| ReplicaEvent::Applied {
            index: e.index,
            term: e.term,
            digest: e.digest(),
            revision: store.revision(),
            events,
        };
        let EntryData::App(p) = &e.data else {
            out.emit(applied(&self.store, Vec::new()));
            if let Some((term, id)) = self.writes.remove(&e.index) {
                let answer = if term == e.term && matches!(e.data, EntryData::Config(_)) {
                    Ok(Answer::Conf)
                } else {
                    // Another leader's entry took the slot: ours was lost.
                    Err(ReplicaError::LeaderChanged)
                };
                respond(out, id, answer);
            }
            return;
        };
        if self.booting && self.bugs.skip_replay {
            return;
        }
        let cmd: Command = p.decode("log entry");
        if self.bugs.stale_snapshot {
            self.before_last = Some(self.store.clone());
        }
        let result = if self.bugs.auth_unchecked {
            self.store.apply_unchecked(&cmd)
        } else {
            self.store.apply(&cmd)
        };
        match (cmd.inner(), &result) {
            (_, Ok((CommandResponse::LeaseGrant { id, ttl }, _))) => {
                let at = self.ticks + self.ttl_ticks(*ttl);
                self.deadlines.insert(*id, at);
            }
            // A revoke its sender had no right to leaves the lease running.
            (Command::LeaseRevoke { .. }, Err(crate::Error::Auth(_))) => {}
            (Command::LeaseRevoke { id }, _) => {
                self.deadlines.remove(id);
                self.revoking.remove(id);
            }
            _ => {}
        }
        let events = match &result {
            Ok((_, events)) => events.clone(),
            Err(_) => Vec::new(),
        };
        out.emit(applied(&self.store, events));
        if let Some((term, id)) = self.writes.remove(&e.index) {
            let answer = if term == e.term {
                result
                    .map_err(ReplicaError::Kv)
                    .map(|(resp, _)| Answer::Write {
                        revision: self.store.revision(),
                        term: e.term,
                        resp,
                    })
            } else {
                // Another leader's entry took the slot: ours was lost.
                Err(ReplicaError::LeaderChanged)
            };
            respond(out, id, answer);
        }
    }

    fn became_leader(&mut self, raft: &RaftNode, term: u64, out: &mut Out) {
        // Leases restart at their full TTL under a new leader, plus one
        // election timeout (as etcd extends them): keep-alives sent while
        // there was no leader had nobody to reach.
        let now = self.ticks + u64::from(raft.config().election_ticks);
        let ttls: Vec<(i64, i64)> = self
            .store
            .leases()
            .into_iter()
            .filter_map(|id| self.store.lease(id).map(|l| (id, l.ttl)))
            .collect();
        for (id, ttl) in ttls {
            let at = now + self.ttl_ticks(ttl);
            self.deadlines.insert(id, at);
        }
        self.revoking.clear();
        out.emit(ReplicaEvent::BecameLeader { term });
    }

    fn stepped_down(&mut self, out: &mut Out) {
        for (_, (_, id)) in std::mem::take(&mut self.writes) {
            respond(out, id, Err(ReplicaError::LeaderChanged));
        }
        for (_, (id, _, _)) in std::mem::take(&mut self.reads) {
            respond(out, id, Err(ReplicaError::LeaderChanged));
        }
        self.revoking.clear();
    }

    fn read_ready(&mut self, id: u64, index: u64) {
        if let Some(r) = self.reads.get_mut(&id) {
            r.2 = Some(index);
        }
    }

    fn read_failed(&mut self, id: u64, out: &mut Out) {
        if let Some((client, _, _)) = self.reads.remove(&id) {
            respond(out, client, Err(ReplicaError::LeaderChanged));
        }
    }

    fn serve_reads(&mut self, raft: &RaftNode, out: &mut Out) {
        let applied = raft.applied_index();
        let ready: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.2.is_some_and(|i| i <= applied))
            .map(|(k, _)| *k)
            .collect();
        for k in ready {
            let (id, req, _) = self.reads.remove(&k).expect("listed above");
            let result = self
                .store
                .range(&req)
                .map(|resp| Answer::Read {
                    revision: self.store.revision(),
                    term: raft.term(),
                    resp,
                })
                .map_err(ReplicaError::Kv);
            respond(out, id, result);
        }
    }

    fn snapshot(&self) -> Payload {
        match (&self.before_last, self.bugs.stale_snapshot) {
            (Some(stale), true) => Payload::encode(stale),
            _ => Payload::encode(&self.store),
        }
    }

    fn start_snapshot(&mut self, index: u64, out: &mut Out) -> Option<Payload> {
        if !self.cfg.encode_snapshots_elsewhere {
            return Some(self.snapshot());
        }
        let image = match (&self.before_last, self.bugs.stale_snapshot) {
            (Some(stale), true) => stale.clone(),
            _ => self.store.clone(),
        };
        out.emit(ReplicaEvent::SnapshotImage {
            index,
            image: StoreImage(image),
        });
        None
    }
}

impl Node for Replica {
    type Msg = Message;
    type Write = Write;
    type Disk = Disk;
    type Event = ReplicaEvent;
    type Input = ReplicaInput;

    fn apply_write(disk: &mut Disk, write: &Write) {
        disk.apply(write);
    }

    fn must_sync(write: &Write) -> bool {
        write.must_sync()
    }

    fn step(&mut self, _now: Instant, from: NodeId, msg: Message, out: &mut Out) {
        self.node.step(from, msg, out);
    }

    fn tick(&mut self, _now: Instant, out: &mut Out) {
        self.node.app_mut().ticks += 1;
        self.node.tick(out);
        self.expire_leases(out);
    }

    fn input(&mut self, _now: Instant, input: ReplicaInput, out: &mut Out) {
        match input {
            ReplicaInput::Client { id, req } => self.client(id, req, out),
            ReplicaInput::TransferLeader(target) => {
                self.node.call(out, |r, out| r.transfer_leader(target, out));
            }
            ReplicaInput::PeerGone(from) => {
                self.node.call(out, |r, _| r.leader_unreachable(from));
            }
            ReplicaInput::ConfChange(change) => {
                self.node.call(out, |r, out| r.propose_conf(change, out));
            }
            ReplicaInput::SnapshotEncoded { index, data } => {
                let index = if self.node.app().bugs.late_image_index {
                    self.node.raft().applied_index()
                } else {
                    index
                };
                self.node.snapshot_encoded(index, data, out);
            }
        }
        self.node.settle(out);
    }

    fn describe(&self) -> String {
        format!(
            "{}, revision {}",
            self.raft().describe(),
            self.store().revision()
        )
    }
}
