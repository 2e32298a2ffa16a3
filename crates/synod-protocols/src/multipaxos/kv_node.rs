//! The replicated key-value store on Multi-Paxos: the same requests,
//! results and state machine as Raft's [`crate::raft::KvNode`]
//! ([`crate::kv`]), so the same clients and checkers judge both engines.
//!
//! Writes are commands in the log. Reads are not: the leader confirms with a
//! heartbeat round that it still leads and answers once the slots it knew of
//! are applied ([`MultiPaxosNode::read_index`]), as Raft's ReadIndex does.
//! The leader answers the requests it took; any other node says who it
//! believes leads.
//!
//! With [`Config::snapshot_every`] set, the node compacts the log behind
//! a snapshot of its store (bincode, as Raft's node does) every that many
//! applied slots, and takes its leader's snapshot when it lags behind it.

use super::{Command, Config, Disk, Event, MultiPaxosNode, Out, Slot, Snapshot, Write};
use crate::kv::{AdminOp, KvError, KvEvent, KvInput, KvOp, KvRequest, KvResult, KvStore};
use crate::paxos::Ballot;
use crate::raft::Payload;
use crate::sansio::{Instant, Node, NodeId, Output};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};

#[derive(Debug)]
pub struct MpKvNode {
    core: MultiPaxosNode<KvRequest>,
    store: KvStore,
    /// `(client, seq)` of the requests this node proposed as leader and
    /// still owes an answer.
    owed: BTreeSet<(u64, u64)>,
    /// Reads taken as leader, by read id: client, seq and key.
    reads: BTreeMap<u64, (u64, u64, String)>,
    next_read: u64,
    scratch: Out<KvRequest>,
}

pub type KvOut = Output<Write<KvRequest>, super::Msg<KvRequest>, KvEvent>;

/// What identifies a slot's content, for checkers that compare nodes.
pub fn digest<V: Hash>(cmd: &Command<V>) -> u64 {
    let mut h = DefaultHasher::new();
    cmd.hash(&mut h);
    h.finish()
}

impl MpKvNode {
    /// Boots from `disk`, replaying the learned prefix into the store
    /// without reporting it again (it was reported before the crash).
    pub fn new(cfg: Config, disk: &Disk<KvRequest>, seed: u64) -> MpKvNode {
        let core = MultiPaxosNode::new(cfg, disk, seed);
        let mut store = core.snapshot().map_or_else(KvStore::default, restore);
        for (_, cmd) in core.learned() {
            if let Command::App(req) = cmd {
                store.apply(req);
            }
        }
        MpKvNode {
            core,
            store,
            owed: BTreeSet::new(),
            reads: BTreeMap::new(),
            next_read: 0,
            scratch: Out::default(),
        }
    }

    #[cfg(feature = "broken")]
    pub fn with_bugs(mut self, bugs: super::Bugs) -> Self {
        self.core = self.core.with_bugs(bugs);
        self
    }

    pub fn core(&self) -> &MultiPaxosNode<KvRequest> {
        &self.core
    }

    pub fn store(&self) -> &KvStore {
        &self.store
    }

    /// Hands the core's output over: its writes and messages as they are,
    /// its events turned into the store's.
    fn settle(&mut self, out: &mut KvOut) {
        let mut core_out = std::mem::take(&mut self.scratch);
        out.writes.append(&mut core_out.writes);
        out.msgs.append(&mut core_out.msgs);
        for e in core_out.events.drain(..) {
            match e {
                Event::Applied { slot, cmd } => self.apply(slot, cmd, out),
                Event::BecameLeader { ballot } => out.emit(KvEvent::BecameLeader {
                    term: term_of(ballot),
                }),
                Event::SteppedDown => {
                    let reads = std::mem::take(&mut self.reads).into_values();
                    let owed = std::mem::take(&mut self.owed).into_iter();
                    for (client, seq) in owed.chain(reads.map(|(c, s, _)| (c, s))) {
                        let result = Err(KvError::Dropped);
                        out.emit(KvEvent::Response {
                            client,
                            seq,
                            result,
                        });
                    }
                }
                Event::Restored(snap) => {
                    // Only a node that does not lead installs a snapshot,
                    // and such a node owes no answers.
                    assert!(
                        self.owed.is_empty() && self.reads.is_empty(),
                        "restored while owing answers"
                    );
                    self.store = restore(&snap);
                    out.emit(KvEvent::Restored { index: snap.slot });
                }
                Event::ReadReady { id } => {
                    let (client, seq, key) = self.reads.remove(&id).expect("a read taken");
                    let value = self.store.data.get(&key).cloned();
                    let result = Ok(KvResult::Value(value));
                    out.emit(KvEvent::Response {
                        client,
                        seq,
                        result,
                    });
                }
            }
        }
        self.scratch = core_out;
        self.compact_if_due(out);
    }

    /// Compacts the log behind a snapshot of the store every
    /// `snapshot_every` applied slots.
    fn compact_if_due(&mut self, out: &mut KvOut) {
        let every = self.core.config().snapshot_every;
        let applied = self.core.applied();
        if every == 0 || applied < self.core.compacted() + every {
            return;
        }
        let data = Payload::encode(&self.store);
        let mut core_out = std::mem::take(&mut self.scratch);
        self.core.compact(applied, data, &mut core_out);
        out.writes.append(&mut core_out.writes);
        debug_assert!(core_out.msgs.is_empty() && core_out.events.is_empty());
        self.scratch = core_out;
    }

    fn apply(&mut self, slot: Slot, cmd: Command<KvRequest>, out: &mut KvOut) {
        let digest = digest(&cmd);
        out.emit(KvEvent::Applied {
            index: slot,
            term: 0,
            digest,
        });
        if let Command::App(req) = cmd {
            let result = self.store.apply(&req);
            if self.owed.remove(&(req.client, req.seq)) {
                if let Some(r) = result {
                    let (client, seq) = (req.client, req.seq);
                    out.emit(KvEvent::Response {
                        client,
                        seq,
                        result: Ok(r),
                    });
                }
            }
        }
    }
}

/// The store a snapshot holds.
fn restore(snap: &Snapshot) -> KvStore {
    snap.data.decode("snapshot")
}

/// A ballot as one number, where the service's events speak of terms.
fn term_of(b: Ballot) -> u64 {
    b.round
}

impl Node for MpKvNode {
    type Msg = super::Msg<KvRequest>;
    type Write = Write<KvRequest>;
    type Disk = Disk<KvRequest>;
    type Event = KvEvent;
    type Input = KvInput;

    fn apply_write(disk: &mut Disk<KvRequest>, write: &Write<KvRequest>) {
        disk.apply(write);
    }

    fn step(&mut self, _now: Instant, from: NodeId, msg: Self::Msg, out: &mut KvOut) {
        let mut core_out = std::mem::take(&mut self.scratch);
        self.core.step(from, msg, &mut core_out);
        self.scratch = core_out;
        self.settle(out);
    }

    fn tick(&mut self, _now: Instant, out: &mut KvOut) {
        let mut core_out = std::mem::take(&mut self.scratch);
        self.core.tick(&mut core_out);
        self.scratch = core_out;
        self.settle(out);
    }

    fn input(&mut self, _now: Instant, input: KvInput, out: &mut KvOut) {
        let req = match input {
            KvInput::Client(req) => req,
            KvInput::Admin(op) => return self.admin(op, out),
        };
        let key = (req.client, req.seq);
        if self.owed.contains(&key) {
            return;
        }
        let mut core_out = std::mem::take(&mut self.scratch);
        let taken = match &req.op {
            KvOp::Get { key: k } => {
                let id = self.next_read;
                let taken = self.core.read_index(id, &mut core_out);
                if taken {
                    self.next_read += 1;
                    self.reads.insert(id, (req.client, req.seq, k.clone()));
                }
                taken
            }
            _ => {
                let taken = self.core.propose(req.clone(), &mut core_out);
                if taken {
                    self.owed.insert(key);
                }
                taken
            }
        };
        self.scratch = core_out;
        if !taken {
            let hint = self.core.leader();
            out.emit(KvEvent::Response {
                client: req.client,
                seq: req.seq,
                result: Err(KvError::NotLeader { hint }),
            });
        }
        self.settle(out);
    }

    fn describe(&self) -> String {
        self.core.describe()
    }
}

impl MpKvNode {
    /// An operator's request. Members are added straight away: an acceptor
    /// takes part in new slots with an empty log, so there is no learner
    /// stage to go through. Leadership moves by election only. A change
    /// the leader refuses (not the leader, another change on its way) is
    /// dropped; the operator asks again.
    fn admin(&mut self, op: AdminOp, out: &mut KvOut) {
        let mut members = self.core.members().clone();
        match op {
            AdminOp::AddVoter(n) => {
                members.insert(n);
            }
            AdminOp::RemoveNode(n) => {
                members.remove(&n);
            }
            AdminOp::Snapshot => {
                let data = Payload::encode(&self.store);
                let applied = self.core.applied();
                let mut core_out = std::mem::take(&mut self.scratch);
                self.core.compact(applied, data, &mut core_out);
                self.scratch = core_out;
                return self.settle(out);
            }
            AdminOp::AddLearner(_) | AdminOp::PromoteLearner(_) | AdminOp::TransferLeader(_) => {
                return;
            }
        }
        let mut core_out = std::mem::take(&mut self.scratch);
        let _refused = self.core.reconfigure(members, &mut core_out);
        self.scratch = core_out;
        self.settle(out);
    }
}
