//! A replicated key-value node: a [`KvStore`] driven by a [`RaftNode`].
//!
//! Writes (`Put`, `Delete`, `Cas`) proposed on the leader become log entries
//! and are answered when applied; sessions make retried writes apply once.
//! Reads (`Get`) are served by ReadIndex (or a lease) without touching the log.
//! Requests travel in the log, and the store in snapshots, as bincode
//! [`Payload`]s: Raft itself never looks into them.

use super::app::{Application, RaftApp};
use super::node::RaftNode;
#[cfg(any(test, feature = "broken"))]
use super::Bugs;
use super::{ConfChange, Disk, Entry, EntryData, Message, Payload, RaftConfig, Snapshot, Write};
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
/// contract its outputs rely on, and [`super::app`] for how it sits on the
/// core.
#[derive(Clone, Debug)]
pub struct KvNode {
    node: RaftApp<KvApp>,
}

/// The node's application state: the store and the requests it owes.
#[derive(Clone, Debug, Default)]
struct KvApp {
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
        KvNode {
            node: RaftApp::new(cfg, disk, seed, KvApp::default()),
        }
    }

    /// Turns on deliberately broken behaviour (tests only).
    #[cfg(feature = "broken")]
    pub fn with_bugs(mut self, bugs: Bugs) -> Self {
        self.node.raft_mut().bugs = bugs;
        self
    }

    #[cfg(test)]
    pub(crate) fn with_test_bugs(mut self, bugs: Bugs) -> Self {
        self.node.raft_mut().bugs = bugs;
        self
    }

    pub fn raft(&self) -> &RaftNode {
        self.node.raft()
    }

    #[cfg(test)]
    pub(crate) fn raft_mut(&mut self) -> &mut RaftNode {
        self.node.raft_mut()
    }

    /// The driver learned that `leader` is gone (tests of the core's timers).
    #[cfg(test)]
    pub(crate) fn leader_unreachable(&mut self, leader: NodeId, out: &mut Out) {
        self.node.call(out, |r, _| r.leader_unreachable(leader));
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

    pub fn store(&self) -> &KvStore {
        &self.node.app().store
    }

    /// Requests waiting for an answer on this node (writes, reads).
    pub fn pending(&self) -> (usize, usize) {
        let app = self.node.app();
        (app.writes.len(), app.reads.len())
    }

    fn not_leader(&self) -> KvError {
        let raft = self.node.raft();
        let hint = raft.leader().filter(|l| *l != raft.id());
        KvError::NotLeader { hint }
    }

    fn client(&mut self, req: KvRequest, out: &mut Out) {
        if self.node.raft().role() != super::Role::Leader {
            let e = self.not_leader();
            respond(out, req.client, req.seq, Err(e));
            return;
        }
        if let KvOp::Get { key } = &req.op {
            let app = self.node.app_mut();
            let id = app.next_read;
            app.next_read += 1;
            app.reads.insert(
                id,
                PendingRead {
                    client: req.client,
                    seq: req.seq,
                    key: key.clone(),
                    index: None,
                },
            );
            self.node.call(out, |r, out| r.read_index(id, out));
            return;
        }
        if let Some(target) = self.node.raft().transferring_to() {
            respond(
                out,
                req.client,
                req.seq,
                Err(KvError::NotLeader { hint: Some(target) }),
            );
            return;
        }
        let (client, seq) = (req.client, req.seq);
        let data = Self::entry_data(&req);
        match self.node.call(out, |r, out| r.propose(data, out)) {
            Some((index, term)) => {
                self.node
                    .app_mut()
                    .writes
                    .insert(index, PendingWrite { term, client, seq });
            }
            None => {
                let e = self.not_leader();
                respond(out, client, seq, Err(e));
            }
        }
    }

    fn conf_change(&mut self, change: ConfChange, out: &mut Out) {
        self.node.call(out, |r, out| r.propose_conf(change, out));
    }

    fn admin(&mut self, op: AdminOp, out: &mut Out) {
        match op {
            AdminOp::Snapshot => {
                let data = self.node.app().snapshot();
                self.node.call(out, |r, out| r.compact(data, out));
            }
            AdminOp::TransferLeader(target) => {
                self.node.call(out, |r, out| r.transfer_leader(target, out));
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

    fn must_sync(write: &Write) -> bool {
        write.must_sync()
    }

    fn step(
        &mut self,
        _now: Instant,
        from: NodeId,
        msg: Message,
        out: &mut Output<Write, Message, KvEvent>,
    ) {
        self.node.step(from, msg, out);
    }

    fn tick(&mut self, _now: Instant, out: &mut Output<Write, Message, KvEvent>) {
        self.node.tick(out);
    }

    fn input(&mut self, _now: Instant, input: KvInput, out: &mut Output<Write, Message, KvEvent>) {
        match input {
            KvInput::Client(req) => self.client(req, out),
            KvInput::Admin(op) => self.admin(op, out),
        }
        self.node.settle(out);
    }

    fn describe(&self) -> String {
        self.raft().describe()
    }
}

fn respond(out: &mut Out, client: u64, seq: u64, result: Result<KvResult, KvError>) {
    out.emit(KvEvent::Response {
        client,
        seq,
        result,
    });
}

impl Application for KvApp {
    type Event = KvEvent;

    fn restore(&mut self, snapshot: &Snapshot) {
        // Only followers install snapshots, and they owe no answers.
        self.store = snapshot.data.decode("snapshot");
    }

    fn apply(&mut self, _raft: &RaftNode, e: &Entry, out: &mut Out) {
        let req = KvNode::request(e);
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
                (true, Some(res)) => respond(out, w.client, w.seq, Ok(res)),
                // The client has moved past this request: nobody waits.
                (true, None) => {}
                (false, _) => respond(out, w.client, w.seq, Err(KvError::Dropped)),
            }
        }
    }

    fn became_leader(&mut self, _raft: &RaftNode, term: u64, out: &mut Out) {
        out.emit(KvEvent::BecameLeader { term });
    }

    fn stepped_down(&mut self, out: &mut Out) {
        for (_, w) in std::mem::take(&mut self.writes) {
            respond(out, w.client, w.seq, Err(KvError::Dropped));
        }
        for (_, r) in std::mem::take(&mut self.reads) {
            respond(out, r.client, r.seq, Err(KvError::Dropped));
        }
    }

    fn read_ready(&mut self, id: u64, index: u64) {
        if let Some(r) = self.reads.get_mut(&id) {
            r.index = Some(index);
        }
    }

    fn serve_reads(&mut self, raft: &RaftNode, out: &mut Out) {
        let applied = raft.applied_index();
        let ready: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.index.is_some_and(|i| i <= applied))
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            let r = self.reads.remove(&id).expect("listed above");
            let value = self.store.data.get(&r.key).cloned();
            respond(out, r.client, r.seq, Ok(KvResult::Value(value)));
        }
    }

    fn snapshot(&self) -> Payload {
        Payload::encode(&self.store)
    }
}
