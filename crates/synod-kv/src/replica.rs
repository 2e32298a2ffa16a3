//! The store replicated by a consensus engine, as a sans-IO node: what every
//! member of the etcd-compatible service runs, with the I/O left to its
//! driver. The engine is Raft ([`RaftEngine`], what the service runs) or
//! Multi-Paxos ([`crate::engine::MultiPaxosEngine`]); everything in this
//! file is the same on both ([`Engine`] says what an engine provides).
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
//! The driver's contract is the engine's ([`synod_protocols::sansio`]):
//! persist an output's writes, then send its messages, then report its events.
//! The glue between the store and the core is the engine's
//! ([`crate::engine`]; on Raft, the core's own [`synod_protocols::raft::app`]):
//! this file only says what applying, snapshotting and stepping down mean for
//! the store.

use crate::engine::{Applied, AppliedData, ConfOutcome};
pub use crate::engine::{Engine, RaftEngine};
use crate::{Command, CommandResponse, Error, Event, RangeRequest, RangeResponse, Store};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use synod_protocols::raft::{ConfChange, ConfState, Payload, RaftConfig, RaftNode};
use synod_protocols::{Instant, Node, NodeId, Output};

/// Ticks a lease's deadline lies beyond its TTL (why: `ttl_ticks`).
const LEASE_MARGIN_TICKS: u64 = 2;

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

    /// Writes [`StoreImage::encode`]'s bytes to `w` as they are made.
    pub fn encode_to<W: std::io::Write>(&self, w: W) -> std::io::Result<()> {
        Payload::encode_to(&self.0, w)
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
    /// The engine has no learners (Multi-Paxos): members are added as
    /// voters straight away.
    NoLearners,
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

/// What a member's step hands its driver, on engine `E`.
pub type Out<E> = Output<<E as Engine>::Write, <E as Engine>::Msg, ReplicaEvent>;

/// Deliberately broken persistence, for the simulator's tests that show
/// `--algo etcd` catches it. All off by default; only the `broken` feature
/// can turn one on (`Replica::with_bugs`).
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
    /// A member whose leader changes sends the writes it had forwarded to
    /// the new leader at once, without learning from its own log whether
    /// they were applied: such a write may be applied twice. The service's
    /// bug, not the replica's (the simulator runs no forwarding): `synod
    /// chaos` must catch it.
    pub retry_unsettled_forwards: bool,
    /// Bugs of the Raft core underneath (with the `broken` feature; a
    /// Raft engine only).
    pub raft: synod_protocols::raft::Bugs,
}

/// One member: the consensus engine, the store, and the requests it owes
/// answers.
#[derive(Clone, Debug)]
pub struct Replica<E: Engine = RaftEngine> {
    node: E,
}

/// Everything of a member that is not the consensus core: the store, the
/// requests it owes answers, the lease deadlines. Engines hold it and call
/// into it as they apply ([`Engine`]); nothing else sees its fields.
#[derive(Clone, Debug)]
pub struct ReplicaState {
    pub(crate) cfg: ReplicaConfig,
    pub(crate) store: Store,
    /// Writes proposed here, by the engine's ticket for them (a Raft log
    /// index): (the term or ballot round they were proposed in, request).
    writes: BTreeMap<u64, (u64, RequestId)>,
    /// Reads waiting for their read index, then for apply to reach it.
    reads: BTreeMap<u64, (RequestId, RangeRequest, Option<u64>)>,
    next_read: u64,
    ticks: u64,
    /// Lease deadlines, in ticks.
    deadlines: BTreeMap<i64, u64>,
    /// Leases whose revoke this leader proposed and has not seen applied.
    revoking: BTreeSet<i64>,
    pub(crate) bugs: ReplicaBugs,
    /// The store before the last apply (kept only for `stale_snapshot`).
    before_last: Option<Store>,
    /// Replaying the log at boot (only `skip_replay` cares).
    pub(crate) booting: bool,
}

impl Replica {
    /// The Raft core (the service's engine).
    pub fn raft(&self) -> &RaftNode {
        self.node.raft()
    }
}

/// What a driver's requests for local state (status, serializable reads)
/// see of a member, whichever engine it runs.
pub trait ReplicaView {
    fn store(&self) -> &Store;
    /// See [`Engine::term`].
    fn term(&self) -> u64;
    /// The leader this member believes in (itself when it leads).
    fn leader(&self) -> Option<NodeId>;
    fn commit_index(&self) -> u64;
    fn applied_index(&self) -> u64;
    fn conf(&self) -> Cow<'_, ConfState>;
}

impl<E: Engine> ReplicaView for Replica<E> {
    fn store(&self) -> &Store {
        Replica::store(self)
    }

    fn term(&self) -> u64 {
        self.node.term()
    }

    fn leader(&self) -> Option<NodeId> {
        self.node.leader()
    }

    fn commit_index(&self) -> u64 {
        self.node.commit_index()
    }

    fn applied_index(&self) -> u64 {
        self.node.applied_index()
    }

    fn conf(&self) -> Cow<'_, ConfState> {
        self.node.conf()
    }
}

impl<E: Engine> Replica<E> {
    /// Boots a member, or recovers it from `disk`: the store comes from the
    /// snapshot, and committed entries are applied again without events.
    pub fn new(cfg: ReplicaConfig, disk: &E::Disk, seed: u64) -> Self {
        Self::boot(cfg, disk, seed, ReplicaBugs::default())
    }

    /// A member with deliberately broken persistence (tests only).
    #[cfg(feature = "broken")]
    pub fn with_bugs(cfg: ReplicaConfig, disk: &E::Disk, seed: u64, bugs: ReplicaBugs) -> Self {
        Self::boot(cfg, disk, seed, bugs)
    }

    fn boot(cfg: ReplicaConfig, disk: &E::Disk, seed: u64, bugs: ReplicaBugs) -> Self {
        let state = ReplicaState {
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
        let mut node = E::boot(&cfg, disk, seed, state);
        node.state_mut().booting = false;
        Replica { node }
    }

    /// The engine underneath, for checkers and drivers.
    pub fn engine(&self) -> &E {
        &self.node
    }

    /// Lets the engine keep its snapshot's bytes in the durable file,
    /// mapped, instead of on the heap ([`Engine::share_snapshot_data`]).
    pub fn share_snapshot_data(&mut self, index: u64, data: Payload) -> bool {
        self.node.share_snapshot_data(index, data)
    }

    /// The member's store, for serializable reads: possibly behind the
    /// cluster, never ahead of it.
    pub fn store(&self) -> &Store {
        &self.node.state().store
    }

    /// Whether applied writes list what they changed (see
    /// [`Store::set_events`]): a driver with nobody to hand them to turns
    /// them off. Takes effect from the next entry applied.
    pub fn set_events(&mut self, on: bool) {
        self.node.state_mut().store.set_events(on);
    }

    pub fn is_leader(&self) -> bool {
        self.node.is_leader()
    }

    /// Every log entry (slot) up to here is applied to the store.
    pub fn applied_index(&self) -> u64 {
        self.node.applied_index()
    }

    /// Seconds left on a lease as this member counts them (only the leader's
    /// count decides anything).
    pub fn lease_remaining(&self, lease: i64) -> Option<i64> {
        self.node.state().lease_remaining(lease)
    }

    fn not_leader(&self) -> ReplicaError {
        ReplicaError::NotLeader {
            hint: self.node.leader().filter(|l| *l != self.node.id()),
        }
    }

    fn read(&mut self, id: RequestId, range: RangeRequest, out: &mut Out<E>) {
        let app = self.node.state_mut();
        let read = app.next_read;
        app.next_read += 1;
        app.reads.insert(read, (id, range, None));
        if !self.node.read_index(read, out) {
            self.node.state_mut().reads.remove(&read);
            let e = self.not_leader();
            respond(out, id, Err(e));
        }
    }

    /// Whether `cmd` (`cost` bytes encoded) would take the store past its
    /// quota. Once the alarm is raised, the store itself refuses.
    fn over_quota(&self, cmd: &Command, cost: usize) -> bool {
        let quota = self.node.state().cfg.quota_bytes;
        let store = self.store();
        quota > 0
            && cmd.takes_space()
            && !store.no_space()
            && store.retained_bytes() + cost as u64 > quota
    }

    /// Proposes the NOSPACE alarm in this member's name.
    fn raise_no_space(&mut self, out: &mut Out<E>) {
        let alarm = Command::Alarm {
            active: true,
            member: self.node.id(),
            alarm: crate::AlarmType::NoSpace,
        };
        self.node.propose(Payload::encode(&alarm), out);
    }

    /// Proposes a membership change, by the engine's rules.
    fn conf_change(&mut self, id: RequestId, change: ConfChange, out: &mut Out<E>) {
        match self.node.conf_change(change, out) {
            ConfOutcome::Refused(refusal) => respond(out, id, Err(ReplicaError::Conf(refusal))),
            ConfOutcome::Redirect(to) => {
                respond(out, id, Err(ReplicaError::NotLeader { hint: Some(to) }))
            }
            ConfOutcome::Proposed { ticket, term } => {
                if self.node.state().bugs.conf_answered_early {
                    respond(out, id, Ok(Answer::Conf));
                    return;
                }
                self.node.state_mut().writes.insert(ticket, (term, id));
            }
        }
    }

    fn client(&mut self, id: RequestId, req: Request, out: &mut Out<E>) {
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
                if let Err(e) = cmd.validate(self.node.state().cfg.max_txn_ops) {
                    respond(out, id, Err(ReplicaError::Kv(e)));
                    return;
                }
                if let Some(target) = self.node.transferring_to() {
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
                match self.node.propose(data, out) {
                    Some((ticket, term)) => {
                        self.node.state_mut().writes.insert(ticket, (term, id));
                    }
                    None => {
                        let e = self.not_leader();
                        respond(out, id, Err(e));
                    }
                }
            }
            Request::Read(range) => self.read(id, range, out),
            Request::KeepAlive { lease } => {
                let app = self.node.state_mut();
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
                let app = self.node.state();
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
    fn expire_leases(&mut self, out: &mut Out<E>) {
        if !self.is_leader() || !self.node.settled_leader() {
            return;
        }
        let app = self.node.state();
        let due: Vec<i64> = app
            .deadlines
            .iter()
            .filter(|(id, at)| **at <= app.ticks && !app.revoking.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let data = Payload::encode(&Command::LeaseRevoke { id });
            if self.node.propose(data, out).is_some() {
                self.node.state_mut().revoking.insert(id);
            }
        }
    }
}

/// What a client hears of its applied write.
fn answer_write(
    result: Result<CommandResponse, Error>,
    revision: i64,
    term: u64,
) -> Result<Answer, ReplicaError> {
    result.map_err(ReplicaError::Kv).map(|resp| Answer::Write {
        revision,
        term,
        resp,
    })
}

fn respond<W, M>(
    out: &mut Output<W, M, ReplicaEvent>,
    id: RequestId,
    result: Result<Answer, ReplicaError>,
) {
    out.emit(ReplicaEvent::Response { id, result });
}

impl ReplicaState {
    /// Seconds left on a lease as this member counts them.
    /// Whole seconds left of the lease's TTL, truncated as etcd does (a
    /// 60 s lease just granted has 59 s and a fraction left). The deadline's
    /// margin (see `ttl_ticks`) is not reported: it is there for the
    /// client, not promised to it.
    fn lease_remaining(&self, lease: i64) -> Option<i64> {
        let at = *self.deadlines.get(&lease)?;
        let ticks = at
            .saturating_sub(self.ticks)
            .saturating_sub(LEASE_MARGIN_TICKS);
        // Now lies somewhere inside the current tick, so strictly less
        // than the whole ticks' time is left.
        let ms = (ticks * self.cfg.tick_ms).saturating_sub(1);
        Some((ms / 1000) as i64)
    }

    /// Ticks a lease must outlive from now. Two more than the TTL spans:
    /// now falls somewhere inside the current tick, so counting the current
    /// tick as whole would revoke up to one tick before `now + TTL`. The
    /// second tick is for the client, which hears of the grant only after
    /// this apply (a forwarded answer travels back through a follower, and
    /// an answer waits for the sync of its round): with it a lease also
    /// outlives its TTL counted from the answer, as long as the answer is
    /// not held up for more than a tick (100 ms in the service, against a
    /// sync of well under a millisecond). What is promised, as etcd does, is
    /// only the TTL from the apply, hence from the request: the simulator
    /// checks that, since its slow disks can hold an answer up longer than
    /// a tick (`lease_expiry` in the etcd model).
    fn ttl_ticks(&self, ttl: i64) -> u64 {
        let ticks = (ttl.max(0) as u64 * 1000).div_ceil(self.cfg.tick_ms.max(1));
        if self.bugs.short_leases {
            return ticks.saturating_sub(1);
        }
        ticks + LEASE_MARGIN_TICKS
    }

    /// Replaces the store with the one a snapshot holds (at boot, and when
    /// a follower installs its leader's snapshot).
    pub(crate) fn restore(&mut self, data: &Payload) {
        self.store = data.decode("snapshot");
    }

    /// Applies one chosen entry: every index once, in order.
    pub(crate) fn apply<W, M>(&mut self, e: Applied<'_>, out: &mut Output<W, M, ReplicaEvent>) {
        // Every entry is reported, no-ops and configurations included, so
        // checkers see each index applied; only writes list changes.
        let applied = |store: &Store, events: Vec<Event>| ReplicaEvent::Applied {
            index: e.index,
            term: e.term,
            digest: e.digest,
            revision: store.revision(),
            events,
        };
        // The request this entry answers, and whether it is the entry
        // proposed for it (another leader's entry may have taken its place).
        let owed = e
            .ticket
            .and_then(|(ticket, term)| Some((self.writes.remove(&ticket)?, term)))
            .map(|((proposed_in, id), term)| (id, proposed_in == term));
        let AppliedData::App(p) = e.data else {
            out.emit(applied(&self.store, Vec::new()));
            if let Some((id, ours)) = owed {
                let answer = if ours && e.data == AppliedData::Conf {
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
                let mut at = self.ticks + self.ttl_ticks(*ttl);
                if e.inherited {
                    // Its own leader may answer the grant later than this
                    // apply (it learns the entry from acknowledgements
                    // still on their way): count from a new leader's
                    // start, as `became_leader` does for the leases it
                    // knew (found by `--engine multipaxos`, seed 10,792:
                    // revoked 36 ms before the TTL since the answer).
                    at += u64::from(self.cfg.raft.election_ticks);
                }
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
        // The events go out once, moved (a clone copied every key and value
        // they hold); the answer needs only the response.
        let (result, events) = match result {
            Ok((resp, events)) => (Ok(resp), events),
            Err(e) => (Err(e), Vec::new()),
        };
        out.emit(applied(&self.store, events));
        // A write this member forwarded: its own apply answers it as the
        // leader would have (every member computes the same result), so a
        // leader that dies before answering costs the client nothing.
        let forwarded = match cmd {
            Command::Tagged { by, id, .. } if by == self.cfg.raft.id => Some(id),
            _ => None,
        };
        let revision = self.store.revision();
        match (owed, forwarded) {
            (Some((id, true)), _) => respond(out, id, answer_write(result, revision, e.term)),
            (Some((id, false)), tag) => {
                // Another leader's entry took the slot: ours was lost.
                respond(out, id, Err(ReplicaError::LeaderChanged));
                if let Some(tag) = tag {
                    respond(out, tag, answer_write(result, revision, e.term));
                }
            }
            (None, Some(tag)) => respond(out, tag, answer_write(result, revision, e.term)),
            (None, None) => {}
        }
    }

    /// This member now leads, in `term`; `election_ticks` is how long the
    /// cluster may have gone without a leader before it.
    pub(crate) fn became_leader<W, M>(
        &mut self,
        term: u64,
        election_ticks: u64,
        out: &mut Output<W, M, ReplicaEvent>,
    ) {
        // Leases restart at their full TTL under a new leader, plus one
        // election timeout (as etcd extends them): keep-alives sent while
        // there was no leader had nobody to reach.
        let now = self.ticks + election_ticks;
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

    /// This member stopped leading: every request it owed an answer as
    /// leader is answered (the outcome of its writes is unknown).
    pub(crate) fn stepped_down<W, M>(&mut self, out: &mut Output<W, M, ReplicaEvent>) {
        for (_, (_, id)) in std::mem::take(&mut self.writes) {
            respond(out, id, Err(ReplicaError::LeaderChanged));
        }
        for (_, (id, _, _)) in std::mem::take(&mut self.reads) {
            respond(out, id, Err(ReplicaError::LeaderChanged));
        }
        self.revoking.clear();
    }

    /// The read `id` may be served once the applied index reaches `index`.
    pub(crate) fn read_ready(&mut self, id: u64, index: u64) {
        if let Some(r) = self.reads.get_mut(&id) {
            r.2 = Some(index);
        }
    }

    /// The read `id` will get no index: its client asks again.
    pub(crate) fn read_failed<W, M>(&mut self, id: u64, out: &mut Output<W, M, ReplicaEvent>) {
        if let Some((client, _, _)) = self.reads.remove(&id) {
            respond(out, client, Err(ReplicaError::LeaderChanged));
        }
    }

    /// Serves the reads that `applied` has reached, in `term`.
    pub(crate) fn serve_reads<W, M>(
        &mut self,
        applied: u64,
        term: u64,
        out: &mut Output<W, M, ReplicaEvent>,
    ) {
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
                    term,
                    resp,
                })
                .map_err(ReplicaError::Kv);
            respond(out, id, result);
        }
    }

    /// The store, encoded for a snapshot.
    pub(crate) fn snapshot(&self) -> Payload {
        match (&self.before_last, self.bugs.stale_snapshot) {
            (Some(stale), true) => Payload::encode(stale),
            _ => Payload::encode(&self.store),
        }
    }

    /// A snapshot is due at applied entry `index`: the encoded store, or
    /// `None` after handing an image of it to the driver to encode
    /// elsewhere ([`ReplicaEvent::SnapshotImage`]).
    pub(crate) fn start_snapshot<W, M>(
        &mut self,
        index: u64,
        out: &mut Output<W, M, ReplicaEvent>,
    ) -> Option<Payload> {
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

impl<E: Engine> Node for Replica<E> {
    type Msg = E::Msg;
    type Write = E::Write;
    type Disk = E::Disk;
    type Event = ReplicaEvent;
    type Input = ReplicaInput;

    fn apply_write(disk: &mut E::Disk, write: &E::Write) {
        E::apply_write(disk, write);
    }

    fn must_sync(write: &E::Write) -> bool {
        E::must_sync(write)
    }

    fn step(&mut self, _now: Instant, from: NodeId, msg: E::Msg, out: &mut Out<E>) {
        self.node.step(from, msg, out);
    }

    fn tick(&mut self, _now: Instant, out: &mut Out<E>) {
        self.node.state_mut().ticks += 1;
        self.node.tick(out);
        self.expire_leases(out);
    }

    fn input(&mut self, _now: Instant, input: ReplicaInput, out: &mut Out<E>) {
        match input {
            ReplicaInput::Client { id, req } => self.client(id, req, out),
            ReplicaInput::TransferLeader(target) => self.node.transfer_leader(target, out),
            ReplicaInput::PeerGone(from) => self.node.peer_gone(from, out),
            ReplicaInput::SnapshotEncoded { index, data } => {
                let index = if self.node.state().bugs.late_image_index {
                    self.node.applied_index()
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
            self.node.describe(),
            self.store().revision()
        )
    }
}
