//! A replicated key-value node: a [`KvStore`] driven by a [`RaftNode`].
//!
//! Writes (`Put`, `Delete`, `Cas`) proposed on the leader become log entries
//! and are answered when applied; sessions make retried writes apply once.
//! Reads (`Get`) are served by ReadIndex (or a lease) without touching the log.

use super::node::{Out, RaftNode};
#[cfg(any(test, feature = "broken"))]
use super::Bugs;
use super::{Disk, EntryData, Message, RaftConfig, Write};
use crate::kv::{AdminOp, KvError, KvEvent, KvInput, KvOp, KvRequest, KvResult, KvStore};
use crate::sansio::{Instant, Node, NodeId, Output};
use std::collections::BTreeMap;

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
            .map(|s| s.store.clone())
            .unwrap_or_default();
        let mut node = KvNode {
            raft,
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
            self.store = snap.store;
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
            let store = self.store.clone();
            self.raft.with_step(out, |r, out| r.compact(store, out));
        }
    }

    fn apply_committed(&mut self, out: &mut Out) {
        while let Some(e) = self.raft.next_committed() {
            let result = match &e.data {
                EntryData::Kv(req) => self.store.apply(req),
                EntryData::Empty | EntryData::Config(_) => None,
            };
            out.emit(KvEvent::Applied {
                index: e.index,
                term: e.term,
                digest: e.digest(),
            });
            if let Some(w) = self.writes.remove(&e.index) {
                let ours = w.term == e.term
                    && matches!(&e.data, EntryData::Kv(r) if r.client == w.client && r.seq == w.seq);
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
            self.raft.with_step(out, |r, out| r.read_index(id, out));
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
        match self
            .raft
            .with_step(out, |r, out| r.propose(EntryData::Kv(req), out))
        {
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

    fn admin(&mut self, op: AdminOp, out: &mut Out) {
        match op {
            AdminOp::Snapshot => {
                let store = self.store.clone();
                self.raft.with_step(out, |r, out| r.compact(store, out));
            }
            AdminOp::TransferLeader(target) => {
                self.raft
                    .with_step(out, |r, out| r.transfer_leader(target, out));
            }
            op => {
                self.raft.with_step(out, |r, out| r.propose_conf(&op, out));
            }
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
        self.raft.step(from, msg, out);
        self.after(out);
    }

    fn tick(&mut self, _now: Instant, out: &mut Output<Write, Message, KvEvent>) {
        self.raft.tick(out);
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
