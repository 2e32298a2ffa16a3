//! The store replicated by Raft, as a sans-IO node: what every member of the
//! etcd-compatible service runs, with the I/O left to its driver.
//!
//! Writes ([`Command`]s) proposed on the leader travel in the log as bincode
//! payloads; every member applies them in log order and reports the changes
//! ([`ReplicaEvent::Applied`], what watchers follow), and the leader answers
//! the request once it is applied. Linearizable reads go through ReadIndex and
//! are answered once the member has applied up to the read index. A member that
//! is not the leader refuses requests with a hint, for the driver to forward.
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

use crate::{Command, CommandResponse, Error, Event, RangeRequest, RangeResponse, Store};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use synod_protocols::raft::{
    Disk, EntryData, Message, Payload, RaftConfig, RaftEvent, RaftNode, RaftOutput, Role, Write,
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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaInput {
    Client {
        id: RequestId,
        req: Request,
    },
    /// Hand leadership to `target` (leader only).
    TransferLeader(NodeId),
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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaEvent {
    Response {
        id: RequestId,
        result: Result<Answer, ReplicaError>,
    },
    /// Log entry `index` (of `term`, its data hashing to `digest`) was
    /// applied; a write that changed something lists its changes at
    /// `revision`. The term and digest let a checker compare what members
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
}

/// Static configuration of one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    pub raft: RaftConfig,
    /// Wall-clock length of one tick, for lease TTLs (etcd: 100 ms).
    pub tick_ms: u64,
    /// Operations allowed per transaction branch; the same on every member.
    pub max_txn_ops: usize,
}

impl ReplicaConfig {
    pub fn new(id: NodeId, peers: Vec<NodeId>) -> ReplicaConfig {
        ReplicaConfig {
            raft: RaftConfig::new(id, peers),
            tick_ms: 100,
            max_txn_ops: crate::MAX_TXN_OPS,
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
}

/// One member: the Raft core, the store, and the requests it owes answers.
#[derive(Clone, Debug)]
pub struct Replica {
    cfg: ReplicaConfig,
    raft: RaftNode,
    scratch: RaftOutput,
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
        let raft = RaftNode::new(cfg.raft.clone(), disk, seed);
        let store = disk
            .snapshot
            .as_ref()
            .map(|s| s.data.decode("snapshot"))
            .unwrap_or_else(|| Store::new().with_max_txn_ops(cfg.max_txn_ops));
        let mut r = Replica {
            cfg,
            raft,
            scratch: RaftOutput::default(),
            store,
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            next_read: 0,
            ticks: 0,
            deadlines: BTreeMap::new(),
            revoking: BTreeSet::new(),
            bugs,
            before_last: None,
        };
        if r.bugs.skip_replay {
            while r.raft.next_committed().is_some() {}
        }
        r.apply_committed(&mut Out::default());
        r
    }

    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    /// The member's store, for serializable reads: possibly behind the
    /// cluster, never ahead of it.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn is_leader(&self) -> bool {
        self.raft.role() == Role::Leader
    }

    /// Seconds left on a lease as this member counts them (only the leader's
    /// count decides anything).
    pub fn lease_remaining(&self, lease: i64) -> Option<i64> {
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
        (ttl.max(0) as u64 * 1000).div_ceil(self.cfg.tick_ms.max(1)) + 2
    }

    fn respond(out: &mut Out, id: RequestId, result: Result<Answer, ReplicaError>) {
        out.emit(ReplicaEvent::Response { id, result });
    }

    fn not_leader(&self) -> ReplicaError {
        ReplicaError::NotLeader {
            hint: self.raft.leader().filter(|l| *l != self.raft.id()),
        }
    }

    /// Runs `f` on the Raft core as one step and folds its output into ours.
    fn with_raft<R>(
        &mut self,
        out: &mut Out,
        f: impl FnOnce(&mut RaftNode, &mut RaftOutput) -> R,
    ) -> R {
        let mut inner = std::mem::take(&mut self.scratch);
        let r = f(&mut self.raft, &mut inner);
        out.take_writes_and_msgs(&mut inner);
        for e in inner.events.drain(..) {
            let RaftEvent::BecameLeader { term } = e;
            // Leases restart at their full TTL under a new leader, plus one
            // election timeout (as etcd extends them): keep-alives sent
            // while there was no leader had nobody to reach.
            let now = self.ticks + u64::from(self.cfg.raft.election_ticks);
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
        self.scratch = inner;
        r
    }

    /// Catches the application up with the core after any call.
    fn after(&mut self, out: &mut Out) {
        if let Some(snap) = self.raft.take_installed() {
            self.store = snap.data.decode("snapshot");
        }
        if self.raft.take_stepped_down() {
            for (_, (_, id)) in std::mem::take(&mut self.writes) {
                Self::respond(out, id, Err(ReplicaError::LeaderChanged));
            }
            for (_, (id, _, _)) in std::mem::take(&mut self.reads) {
                Self::respond(out, id, Err(ReplicaError::LeaderChanged));
            }
            self.revoking.clear();
        }
        self.apply_committed(out);
        for (read, index) in self.raft.take_ready_reads() {
            if let Some(r) = self.reads.get_mut(&read) {
                r.2 = Some(index);
            }
        }
        self.serve_reads(out);
        let every = self.raft.config().snapshot_every;
        if every > 0 && self.raft.applied_index() >= self.raft.snapshot_index() + every {
            let data = match (&self.before_last, self.bugs.stale_snapshot) {
                (Some(stale), true) => Payload::encode(stale),
                _ => Payload::encode(&self.store),
            };
            self.with_raft(out, |r, out| {
                r.with_step(out, |r, out| r.compact(data, out))
            });
        }
    }

    fn apply_committed(&mut self, out: &mut Out) {
        while let Some(e) = self.raft.next_committed() {
            let EntryData::App(p) = &e.data else {
                continue;
            };
            let cmd: Command = p.decode("log entry");
            if self.bugs.stale_snapshot {
                self.before_last = Some(self.store.clone());
            }
            let result = self.store.apply(&cmd);
            match (&cmd, &result) {
                (_, Ok((CommandResponse::LeaseGrant { id, ttl }, _))) => {
                    let at = self.ticks + self.ttl_ticks(*ttl);
                    self.deadlines.insert(*id, at);
                }
                (Command::LeaseRevoke { id }, _) => {
                    self.deadlines.remove(id);
                    self.revoking.remove(id);
                }
                _ => {}
            }
            if let Ok((_, events)) = &result {
                out.emit(ReplicaEvent::Applied {
                    index: e.index,
                    term: e.term,
                    digest: e.digest(),
                    revision: self.store.revision(),
                    events: events.clone(),
                });
            }
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
                Self::respond(out, id, answer);
            }
        }
    }

    fn serve_reads(&mut self, out: &mut Out) {
        let applied = self.raft.applied_index();
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
                    term: self.raft.term(),
                    resp,
                })
                .map_err(ReplicaError::Kv);
            Self::respond(out, id, result);
        }
    }

    fn client(&mut self, id: RequestId, req: Request, out: &mut Out) {
        if !self.is_leader() {
            let e = self.not_leader();
            Self::respond(out, id, Err(e));
            return;
        }
        match req {
            Request::Write(cmd) => {
                if let Err(e) = cmd.validate(self.cfg.max_txn_ops) {
                    Self::respond(out, id, Err(ReplicaError::Kv(e)));
                    return;
                }
                if let Some(target) = self.raft.transferring_to() {
                    let hint = Some(target);
                    Self::respond(out, id, Err(ReplicaError::NotLeader { hint }));
                    return;
                }
                let data = EntryData::App(Payload::encode(&cmd));
                match self.with_raft(out, |r, out| {
                    r.with_step(out, |r, out| r.propose(data, out))
                }) {
                    Some((index, term)) => {
                        self.writes.insert(index, (term, id));
                    }
                    None => {
                        let e = self.not_leader();
                        Self::respond(out, id, Err(e));
                    }
                }
            }
            Request::Read(range) => {
                let read = self.next_read;
                self.next_read += 1;
                self.reads.insert(read, (id, range, None));
                let ok = self.with_raft(out, |r, out| {
                    r.with_step(out, |r, out| r.read_index(read, out))
                });
                if !ok {
                    self.reads.remove(&read);
                    let e = self.not_leader();
                    Self::respond(out, id, Err(e));
                }
            }
            Request::KeepAlive { lease } => {
                let result = match self.store.lease(lease) {
                    Some(l) => {
                        let at = self.ticks + self.ttl_ticks(l.ttl);
                        self.deadlines.insert(lease, at);
                        Ok(Answer::KeepAlive { ttl: l.ttl })
                    }
                    None => Err(ReplicaError::Kv(Error::LeaseNotFound(lease))),
                };
                Self::respond(out, id, result);
            }
            Request::TimeToLive { lease } => {
                let result = match self.store.lease(lease) {
                    Some(l) => Ok(Answer::TimeToLive {
                        remaining: self.lease_remaining(lease).unwrap_or(l.ttl),
                        granted: l.ttl,
                        keys: l.keys,
                    }),
                    None => Err(ReplicaError::Kv(Error::LeaseNotFound(lease))),
                };
                Self::respond(out, id, result);
            }
        }
    }

    /// The leader revokes leases whose deadline passed, once each.
    fn expire_leases(&mut self, out: &mut Out) {
        if !self.is_leader() || !self.raft.committed_own_term() {
            return;
        }
        let due: Vec<i64> = self
            .deadlines
            .iter()
            .filter(|(id, at)| **at <= self.ticks && !self.revoking.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let data = EntryData::App(Payload::encode(&Command::LeaseRevoke { id }));
            let placed = self.with_raft(out, |r, out| {
                r.with_step(out, |r, out| r.propose(data, out))
            });
            if placed.is_some() {
                self.revoking.insert(id);
            }
        }
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

    fn step(&mut self, _now: Instant, from: NodeId, msg: Message, out: &mut Out) {
        self.with_raft(out, |r, out| r.step(from, msg, out));
        self.after(out);
    }

    fn tick(&mut self, _now: Instant, out: &mut Out) {
        self.ticks += 1;
        self.with_raft(out, |r, out| r.tick(out));
        self.after(out);
        self.expire_leases(out);
    }

    fn input(&mut self, _now: Instant, input: ReplicaInput, out: &mut Out) {
        match input {
            ReplicaInput::Client { id, req } => self.client(id, req, out),
            ReplicaInput::TransferLeader(target) => {
                self.with_raft(out, |r, out| {
                    r.with_step(out, |r, out| r.transfer_leader(target, out))
                });
            }
        }
        self.after(out);
    }
}
