//! Paxos Commit (Gray and Lamport): each participant's vote is a write-once
//! variable decided by the Paxos synod among all `n` nodes as acceptors.
//!
//! For transaction `t` and participant `p` there is one instance `(t, p)` of
//! [`crate::paxos::PaxosNode`] on every node, whose value is [`Vote`]. The
//! coordinator announces the transaction; participant `p` proposes its own vote —
//! `Prepared` (taking the lock) or `Aborted` — as the value of instance `(t, p)`.
//! The transaction commits iff every one of the `k` instances decides `Prepared`,
//! and aborts as soon as one decides `Aborted`.
//!
//! Nobody waits on a single node: any node that knows of the transaction and has
//! not learned its outcome after a timeout proposes `Aborted` for the instances
//! still undecided. Paxos makes that race harmless — an instance decides exactly
//! one value, and a later ballot adopts a value that may already be chosen — so
//! with a majority of the nodes up every instance decides and every participant
//! learns the outcome. With ⌊(n−1)/2⌋ nodes down it neither blocks nor splits.
//!
//! The Paxos code is the synod module's: this node only multiplexes instances,
//! tagging their messages and durable records with the instance key, and gives
//! each participant the fast first ballot of its own instance, so a vote is
//! decided in one round trip when nothing goes wrong.

use super::{mix, CommitEvent, CommitInput, CommitNode, Layout, Outcome, TxnId, VotePlan};
use crate::paxos::{self, PaxosNode};
use crate::sansio::{Instant, Node, NodeId, Output, MS};
use crate::write_once::{Decided, WriteOnceNode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The value of one participant's instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Vote {
    Prepared,
    Aborted,
}

/// Instance key: (transaction, participant).
pub type Key = (TxnId, NodeId);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// The coordinator announces a transaction to a participant.
    Begin { txn: TxnId },
    /// A Paxos message of instance `key`.
    Inst { key: Key, msg: paxos::Msg<Vote> },
}

/// A Paxos record of instance `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub key: Key,
    pub write: paxos::Write<Vote>,
}

/// Every instance's Paxos disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disk {
    pub instances: BTreeMap<Key, paxos::Disk<Vote>>,
}

/// Timing knobs.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// A node that knows of a transaction proposes `Aborted` for its undecided
    /// instances once it has gone this long without learning the outcome.
    pub abort_after: Instant,
    /// The coordinator re-announces a transaction this often while it is young.
    pub resend: Instant,
    /// The synod's own timing.
    pub paxos: paxos::Timing,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            abort_after: 400 * MS,
            resend: 50 * MS,
            paxos: paxos::Timing::default(),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Txn {
    /// When this incarnation first heard of it (set at the first tick after boot).
    since: Option<Instant>,
    last_begin: Instant,
    outcome: Option<Outcome>,
}

type Out = Output<Write, Msg, CommitEvent>;
type InnerOut = Output<paxos::Write<Vote>, paxos::Msg<Vote>, Decided<Vote>>;

/// One node of Paxos Commit: acceptor for every instance, coordinator (node 0) or
/// participant (nodes `1..=k`), and learner of every outcome it takes part in.
#[derive(Clone, Debug)]
pub struct PaxosCommitNode {
    id: NodeId,
    layout: Layout,
    plan: VotePlan,
    seed: u64,
    timing: Timing,
    instances: BTreeMap<Key, PaxosNode<Vote>>,
    txns: BTreeMap<TxnId, Txn>,
    /// This participant's own vote per transaction (its proposal).
    my_votes: BTreeMap<TxnId, Vote>,
    scratch: InnerOut,
}

impl PaxosCommitNode {
    pub fn new(
        id: NodeId,
        layout: Layout,
        plan: VotePlan,
        disk: &Disk,
        seed: u64,
    ) -> PaxosCommitNode {
        Self::with_timing(id, layout, plan, disk, seed, Timing::default())
    }

    pub fn with_timing(
        id: NodeId,
        layout: Layout,
        plan: VotePlan,
        disk: &Disk,
        seed: u64,
        timing: Timing,
    ) -> PaxosCommitNode {
        let mut node = PaxosCommitNode {
            id,
            layout,
            plan,
            seed,
            timing,
            instances: BTreeMap::new(),
            txns: BTreeMap::new(),
            my_votes: BTreeMap::new(),
            scratch: InnerOut::default(),
        };
        for (key, d) in &disk.instances {
            node.instances.insert(*key, node.boot_instance(*key, d));
            node.txns.entry(key.0).or_default();
            if key.1 == id {
                if let Some(v) = d.proposal {
                    node.my_votes.insert(key.0, v);
                }
            }
        }
        let txns: Vec<TxnId> = node.txns.keys().copied().collect();
        for t in txns {
            let o = node.compute_outcome(t);
            node.txns.get_mut(&t).expect("just inserted").outcome = o;
        }
        node
    }

    fn boot_instance(&self, key: Key, disk: &paxos::Disk<Vote>) -> PaxosNode<Vote> {
        let seed = mix(self.seed ^ mix(key.0 ^ mix(key.1)));
        let inst =
            PaxosNode::with_timing(self.id, self.layout.nodes, disk, seed, self.timing.paxos);
        // A participant's own instance starts with its vote in phase 2 (Gray and
        // Lamport's ballot 0); everyone else needs a full ballot to abort it.
        if key.1 == self.id {
            inst.with_fast_ballot()
        } else {
            inst
        }
    }

    fn instance(&mut self, key: Key) -> &mut PaxosNode<Vote> {
        if !self.instances.contains_key(&key) {
            let inst = self.boot_instance(key, &paxos::Disk::default());
            self.instances.insert(key, inst);
            self.txns.entry(key.0).or_default();
        }
        self.instances.get_mut(&key).expect("just inserted")
    }

    /// Commit iff every instance decided `Prepared`; abort once one decided `Aborted`.
    fn compute_outcome(&self, txn: TxnId) -> Option<Outcome> {
        let mut all_prepared = true;
        for p in self.layout.participants() {
            match self.instances.get(&(txn, p)).and_then(|i| i.decided()) {
                Some(Vote::Aborted) => return Some(Outcome::Abort),
                Some(Vote::Prepared) => {}
                None => all_prepared = false,
            }
        }
        all_prepared.then_some(Outcome::Commit)
    }

    /// Runs `f` on instance `key` and folds its output into ours.
    fn with_instance(
        &mut self,
        key: Key,
        out: &mut Out,
        f: impl FnOnce(&mut PaxosNode<Vote>, &mut InnerOut),
    ) {
        let mut inner = std::mem::take(&mut self.scratch);
        f(self.instance(key), &mut inner);
        out.writes
            .extend(inner.writes.drain(..).map(|write| Write { key, write }));
        out.msgs
            .extend(inner.msgs.drain(..).map(|e| crate::Envelope {
                to: e.to,
                msg: Msg::Inst { key, msg: e.msg },
                early: e.early,
            }));
        let decided = !inner.events.is_empty();
        inner.clear();
        self.scratch = inner;
        if decided {
            self.check_outcome(key.0, out);
        }
    }

    fn check_outcome(&mut self, txn: TxnId, out: &mut Out) {
        if self.txns.get(&txn).is_some_and(|t| t.outcome.is_some()) {
            return;
        }
        let Some(outcome) = self.compute_outcome(txn) else {
            return;
        };
        self.txns.entry(txn).or_default().outcome = Some(outcome);
        // The instances' Decided records are in this output or an earlier one,
        // so the event is released only once the outcome is durable.
        if self.layout.is_participant(self.id) {
            out.emit(CommitEvent::Outcome { txn, outcome });
        } else if self.id == Layout::COORDINATOR {
            out.emit(CommitEvent::Decided { txn, outcome });
        }
    }

    /// Participant: casts its vote on `txn` by proposing it in its own instance.
    fn vote(&mut self, now: Instant, txn: TxnId, out: &mut Out) {
        let key = (txn, self.id);
        if self.my_votes.contains_key(&txn) || self.instance(key).decided().is_some() {
            return;
        }
        let locked = self.lock_holder().is_some();
        let yes = self.plan.votes_yes(txn, self.id) && !locked;
        let v = if yes { Vote::Prepared } else { Vote::Aborted };
        self.my_votes.insert(txn, v);
        out.emit(CommitEvent::Voted { txn, yes });
        self.with_instance(key, out, |i, o| i.input(now, v, o));
    }

    fn lock_holder(&self) -> Option<TxnId> {
        self.my_votes
            .iter()
            .find(|(t, v)| {
                **v == Vote::Prepared && self.txns.get(t).is_none_or(|x| x.outcome.is_none())
            })
            .map(|(t, _)| *t)
    }
}

impl CommitNode for PaxosCommitNode {
    fn in_doubt(&self) -> Vec<TxnId> {
        self.lock_holder().into_iter().collect()
    }
    fn outcome(&self, txn: TxnId) -> Option<Outcome> {
        self.txns.get(&txn).and_then(|t| t.outcome)
    }
    fn vote(&self, txn: TxnId) -> Option<bool> {
        self.my_votes.get(&txn).map(|v| *v == Vote::Prepared)
    }
    fn unresolved(&self) -> bool {
        self.layout.is_participant(self.id) && self.txns.values().any(|t| t.outcome.is_none())
    }
}

impl Node for PaxosCommitNode {
    type Msg = Msg;
    type Write = Write;
    type Disk = Disk;
    type Event = CommitEvent;
    type Input = CommitInput;

    fn apply_write(disk: &mut Disk, w: &Write) {
        PaxosNode::<Vote>::apply_write(disk.instances.entry(w.key).or_default(), &w.write);
    }

    fn step(&mut self, now: Instant, from: NodeId, msg: Msg, out: &mut Out) {
        match msg {
            Msg::Begin { txn } => {
                if self.layout.is_participant(self.id) && from == Layout::COORDINATOR {
                    self.txns.entry(txn).or_default();
                    self.vote(now, txn, out);
                }
            }
            Msg::Inst { key, msg } => {
                if !self.layout.is_participant(key.1) {
                    return;
                }
                self.with_instance(key, out, |i, o| i.step(now, from, msg, o));
            }
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Out) {
        let keys: Vec<Key> = self.instances.keys().copied().collect();
        for key in keys {
            self.with_instance(key, out, |i, o| i.tick(now, o));
        }
        let txns: Vec<TxnId> = self.txns.keys().copied().collect();
        for txn in txns {
            let t = self.txns.get_mut(&txn).expect("listed");
            if t.outcome.is_some() {
                continue;
            }
            let since = *t.since.get_or_insert(now);
            if self.id == Layout::COORDINATOR
                && now < since + self.timing.abort_after
                && now >= t.last_begin + self.timing.resend
            {
                t.last_begin = now;
                for p in self.layout.participants() {
                    out.send(p, Msg::Begin { txn });
                }
            }
            if now >= since + self.timing.abort_after {
                // Too long without an outcome: propose Aborted wherever the vote is
                // still open (a no-op where this node already proposes something).
                for p in self.layout.participants() {
                    let key = (txn, p);
                    let open = self
                        .instances
                        .get(&key)
                        .is_none_or(|i| i.decided().is_none());
                    if !open {
                        continue;
                    }
                    if p == self.id && !self.my_votes.contains_key(&txn) {
                        self.my_votes.insert(txn, Vote::Aborted);
                        out.emit(CommitEvent::Voted { txn, yes: false });
                    }
                    self.with_instance(key, out, |i, o| i.input(now, Vote::Aborted, o));
                }
            }
        }
    }

    fn input(&mut self, now: Instant, input: CommitInput, out: &mut Out) {
        let CommitInput::Begin(txn) = input;
        if self.id != Layout::COORDINATOR || self.txns.contains_key(&txn) {
            return;
        }
        self.txns.insert(
            txn,
            Txn {
                since: Some(now),
                last_begin: now,
                outcome: None,
            },
        );
        for p in self.layout.participants() {
            out.send(p, Msg::Begin { txn });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;

    fn cluster(n: usize, k: usize, plan: VotePlan) -> Vec<PaxosCommitNode> {
        let layout = Layout::new(n, k);
        (0..n as NodeId)
            .map(|i| PaxosCommitNode::new(i, layout, plan, &Disk::default(), i))
            .collect()
    }

    fn settle(
        nodes: &mut [PaxosCommitNode],
        now: Instant,
        up: &[bool],
        mut pending: Vec<(NodeId, Envelope<Msg>)>,
    ) {
        while !pending.is_empty() {
            let (from, env) = pending.remove(0);
            if !up[env.to as usize] || !up[from as usize] {
                continue;
            }
            let mut out = Out::default();
            nodes[env.to as usize].step(now, from, env.msg, &mut out);
            pending.extend(out.msgs.into_iter().map(|e| (env.to, e)));
        }
    }

    #[test]
    fn all_prepared_commits_everywhere() {
        let mut nodes = cluster(5, 3, VotePlan::all_yes());
        let mut out = Out::default();
        nodes[0].input(0, CommitInput::Begin(1), &mut out);
        settle(
            &mut nodes,
            0,
            &[true; 5],
            out.msgs.into_iter().map(|e| (0, e)).collect(),
        );
        for n in &nodes {
            assert_eq!(n.outcome(1), Some(Outcome::Commit));
        }
    }

    #[test]
    fn participants_finish_without_the_coordinator() {
        let mut nodes = cluster(5, 3, VotePlan::all_yes());
        // Only participant 1 hears of the transaction; then the coordinator and
        // node 4 go down for good (two of five: a majority is still up).
        let mut out = Out::default();
        nodes[1].step(0, 0, Msg::Begin { txn: 7 }, &mut out);
        let up = [false, true, true, true, false];
        settle(
            &mut nodes,
            0,
            &up,
            out.msgs.into_iter().map(|e| (1, e)).collect(),
        );
        assert_eq!(nodes[1].in_doubt(), vec![7]);
        for step in 1..200 {
            let now = step * 10 * MS;
            for i in 1..4 {
                let mut out = Out::default();
                nodes[i].tick(now, &mut out);
                settle(
                    &mut nodes,
                    now,
                    &up,
                    out.msgs.into_iter().map(|e| (i as NodeId, e)).collect(),
                );
            }
        }
        for n in &nodes[1..4] {
            assert_eq!(n.outcome(7), Some(Outcome::Abort));
            assert!(n.in_doubt().is_empty());
        }
    }
}
