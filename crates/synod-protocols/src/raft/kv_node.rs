//! A replicated key-value node: a [`KvStore`] driven by a [`RaftNode`].
//!
//! Writes (`Put`, `Delete`, `Cas`) proposed on the leader become log entries
//! and are answered when applied; sessions make retried writes apply once.
//! Reads (`Get`) are served by ReadIndex (or a lease) without touching the log.
//! Requests travel in the log, and the store in snapshots, as bincode
//! [`Payload`]s: Raft itself never looks into them.

use super::node::{RaftEvent, RaftNode, RaftOutput};
#[cfg(any(test, feature = "broken"))]
use super::Bugs;
use super::{ConfChange, Disk, Entry, EntryData, Message, Payload, RaftConfig, Write};
use crate::kv::{AdminOp, KvError, KvEvent, KvInput, KvOp, KvRequest, KvResult, KvStore};
use crate::sansio::{Instant, Node, NodeId, Output};
use std::collections::BTreeMap;

type Out = Output<Write, Message, KvEvent>;

/// A write this node accepted as leader and still owes an answer.
#[derive(Clone, Debug)]
struct PendingWrite {
    term: u64,
    client: u64,
    seq: u64,
}

/// A read this node accepted as leader.
#[derive(Clone, Debug)]
struct PendingRead {
    client: u64,
    seq: u64,
    key: String,
    /// Set once leadership is confirmed: answer when applied reaches it.
    index: Option<u64>,
}

/// A key-value node replicated by Raft. See [`crate::raft`] for the ordering
/// contract its outputs rely on.
#[derive(Clone, Debug)]
pub struct KvNode {
    raft: RaftNode,
    /// Reused for every call into the core; merged into this node's output.
    scratch: RaftOutput,
    store: KvStore,
    writes: BTreeMap<u64, PendingWrite>,
    reads: BTreeMap<u64, PendingRead>,
    next_read: u64,
}

impl KvNode {
    /// Boots a node, or recovers it from `disk`: the store is rebuilt from the
    /// snapshot and the durable log is re-applied up to the durable commit
    /// index without emitting events.
    pub fn new(cfg: RaftConfig, disk: &Disk, seed: u64) -> KvNode {
        let raft = RaftNode::new(cfg, disk, seed);
        let store = disk
            .snapshot
            .as_ref()
            .map(|s| s.data.decode("snapshot"))
            .unwrap_or_default();
        let mut node = KvNode {
            raft,
            scratch: RaftOutput::default(),
            store,
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            next_read: 0,
        };
        let mut scratch = Out::default();
        node.apply_committed(&mut scratch);
        node
    }

    /// Turns on deliberately broken behaviour (tests only).
    #[cfg(feature = "broken")]
    pub fn with_bugs(mut self, bugs: Bugs) -> Self {
        self.raft.bugs = bugs;
        self
    }

    #[cfg(test)]
    pub(crate) fn with_test_bugs(mut self, bugs: Bugs) -> Self {
        self.raft.bugs = bugs;
        self
    }

    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    /// The log entry data that carries `req` (for tests and tools).
    pub fn entry_data(req: &KvRequest) -> EntryData {
        EntryData::App(Payload::encode(req))
    }

    /// The request a log entry carries, if it carries one.
    pub fn request(e: &Entry) -> Option<KvRequest> {
        match &e.data {
            EntryData::App(p) => Some(p.decode("log entry")),
            EntryData::Empty | EntryData::Config(_) => None,
        }
    }

    /// The snapshot payload for `store` (for tests and tools).
    pub fn snapshot_data(store: &KvStore) -> Payload {
        Payload::encode(store)
    }

    /// Runs `f` on the Raft core as one step, folding its output into ours.
    fn with_raft<R>(
        &mut self,
        out: &mut Out,
        f: impl FnOnce(&mut RaftNode, &mut RaftOutput) -> R,
    ) -> R {
        let mut inner = std::mem::take(&mut self.scratch);
        let r = f(&mut self.raft, &mut inner);
        out.take_writes_and_msgs(&mut inner);
        for e in inner.events.drain(..) {
            match e {
                RaftEvent::BecameLeader { term } => out.emit(KvEvent::BecameLeader { term }),
            }
        }
        self.scratch = inner;
        r
    }

    pub fn store(&self) -> &KvStore {
        &self.store
    }

    /// Requests waiting for an answer on this node (writes, reads).
    pub fn pending(&self) -> (usize, usize) {
        (self.writes.len(), self.reads.len())
    }

    fn respond(out: &mut Out, client: u64, seq: u64, result: Result<KvResult, KvError>) {
        out.emit(KvEvent::Response {
            client,
            seq,
            result,
        });
    }

    /// Brings the application up to date with the Raft core after a call.
    fn after(&mut self, out: &mut Out) {
        if let Some(snap) = self.raft.take_installed() {
            // Only followers install snapshots, and they owe no answers.
            self.store = snap.data.decode("snapshot");
        }
        if self.raft.take_stepped_down() {
            for (_, w) in std::mem::take(&mut self.writes) {
                Self::respond(out, w.client, w.seq, Err(KvError::Dropped));
            }
            for (_, r) in std::mem::take(&mut self.reads) {
                Self::respond(out, r.client, r.seq, Err(KvError::Dropped));
            }
        }
        self.apply_committed(out);
        for (id, index) in self.raft.take_ready_reads() {
            if let Some(r) = self.reads.get_mut(&id) {
                r.index = Some(index);
            }
        }
        self.serve_reads(out);
        let every = self.raft.config().snapshot_every;
        if every > 0 && self.raft.applied_index() >= self.raft.snapshot_index() + every {
            let data = Payload::encode(&self.store);
            self.with_raft(out, |r, out| {
                r.with_step(out, |r, out| r.compact(data, out))
            });
        }
    }

    fn apply_committed(&mut self, out: &mut Out) {
        while let Some(e) = self.raft.next_committed() {
            let req = Self::request(&e);
            let result = req.as_ref().and_then(|r| self.store.apply(r));
            out.emit(KvEvent::Applied {
                index: e.index,
                term: e.term,
                digest: e.digest(),
            });
            if let Some(w) = self.writes.remove(&e.index) {
                let ours = w.term == e.term
                    && req
                        .as_ref()
                        .is_some_and(|r| r.client == w.client && r.seq == w.seq);
                match (ours, result) {
                    (true, Some(res)) => Self::respond(out, w.client, w.seq, Ok(res)),
                    // The client has moved past this request: nobody waits.
                    (true, None) => {}
                    (false, _) => Self::respond(out, w.client, w.seq, Err(KvError::Dropped)),
                }
            }
        }
    }

    fn serve_reads(&mut self, out: &mut Out) {
        let applied = self.raft.applied_index();
        let ready: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.index.is_some_and(|i| i <= applied))
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            let r = self.reads.remove(&id).expect("listed above");
            let value = self.store.data.get(&r.key).cloned();
            Self::respond(out, r.client, r.seq, Ok(KvResult::Value(value)));
        }
    }

    fn not_leader(&self) -> KvError {
        let hint = self.raft.leader().filter(|l| *l != self.raft.id());
        KvError::NotLeader { hint }
    }

    fn client(&mut self, req: KvRequest, out: &mut Out) {
        if self.raft.role() != super::Role::Leader {
            let e = self.not_leader();
            Self::respond(out, req.client, req.seq, Err(e));
            return;
        }
        if let KvOp::Get { key } = &req.op {
            let id = self.next_read;
            self.next_read += 1;
            self.reads.insert(
                id,
                PendingRead {
                    client: req.client,
                    seq: req.seq,
                    key: key.clone(),
                    index: None,
                },
            );
            self.with_raft(out, |r, out| {
                r.with_step(out, |r, out| r.read_index(id, out))
            });
            return;
        }
        if let Some(target) = self.raft.transferring_to() {
            Self::respond(
                out,
                req.client,
                req.seq,
                Err(KvError::NotLeader { hint: Some(target) }),
            );
            return;
        }
        let (client, seq) = (req.client, req.seq);
        let data = Self::entry_data(&req);
        match self.with_raft(out, |r, out| {
            r.with_step(out, |r, out| r.propose(data, out))
        }) {
            Some((index, term)) => {
                self.writes
                    .insert(index, PendingWrite { term, client, seq });
            }
            None => {
                let e = self.not_leader();
                Self::respond(out, client, seq, Err(e));
            }
        }
    }

    fn conf_change(&mut self, change: ConfChange, out: &mut Out) {
        self.with_raft(out, |r, out| {
            r.with_step(out, |r, out| r.propose_conf(change, out))
        });
    }

    fn admin(&mut self, op: AdminOp, out: &mut Out) {
        match op {
            AdminOp::Snapshot => {
                let data = Payload::encode(&self.store);
                self.with_raft(out, |r, out| {
                    r.with_step(out, |r, out| r.compact(data, out))
                });
            }
            AdminOp::TransferLeader(target) => {
                self.with_raft(out, |r, out| {
                    r.with_step(out, |r, out| r.transfer_leader(target, out))
                });
            }
            AdminOp::AddVoter(n) => self.conf_change(ConfChange::AddVoter(n), out),
            AdminOp::AddLearner(n) => self.conf_change(ConfChange::AddLearner(n), out),
            AdminOp::PromoteLearner(n) => self.conf_change(ConfChange::PromoteLearner(n), out),
            AdminOp::RemoveNode(n) => self.conf_change(ConfChange::RemoveNode(n), out),
        }
    }
}

impl Node for KvNode {
    type Msg = Message;
    type Write = Write;
    type Disk = Disk;
    type Event = KvEvent;
    type Input = KvInput;

    fn apply_write(disk: &mut Disk, write: &Write) {
        disk.apply(write);
    }

    fn step(
        &mut self,
        _now: Instant,
        from: NodeId,
        msg: Message,
        out: &mut Output<Write, Message, KvEvent>,
    ) {
        self.with_raft(out, |r, out| r.step(from, msg, out));
        self.after(out);
    }

    fn tick(&mut self, _now: Instant, out: &mut Output<Write, Message, KvEvent>) {
        self.with_raft(out, |r, out| r.tick(out));
        self.after(out);
    }

    fn input(&mut self, _now: Instant, input: KvInput, out: &mut Output<Write, Message, KvEvent>) {
        match input {
            KvInput::Client(req) => self.client(req, out),
            KvInput::Admin(op) => self.admin(op, out),
        }
        self.after(out);
    }
}
