//! Atomic commit (2PC, 3PC, Paxos Commit) under the simulator's faults.
//!
//! Layout (see [`Layout`]): node 0 is the coordinator, nodes `1..=k` are the
//! participants of every transaction (`k` = `--participants`, and `k + 1` must
//! not exceed `--nodes`); remaining nodes are idle in 2PC and 3PC and serve as
//! extra acceptors in Paxos Commit, where all `n` nodes are acceptors.
//!
//! Workload: [`TXNS`] transactions, started at the coordinator at spread-out
//! times during the fault phase (a start that finds the coordinator down is
//! lost, as a client's request would be). Each participant's vote comes from a
//! [`VotePlan`] drawn from the run's seed: yes with probability 80%. A participant
//! holds the lock from its yes vote until it learns the outcome, and votes no
//! while the lock is held for another transaction.
//!
//! Checked on every run:
//! * **atomicity** — no transaction commits at one participant and aborts at
//!   another, and no participant changes its outcome;
//! * **validity** — a participant commits only after every participant voted yes.
//!
//! Counted per run (summed over runs in the summary):
//! * **blocked** — transactions that, when the run ends, have a participant that
//!   is up, voted yes and still does not know the outcome (it holds its lock);
//! * **committed** / **aborted** — transactions whose outcome some participant
//!   learned.
//!
//! Liveness goal ([`Model::done`]): in the quiet phase, every up participant knows
//! the outcome of every transaction it took part in. A 2PC run whose coordinator
//! stays down while participants are in doubt does not reach it: it is stuck and
//! blocked, which is 2PC's failure mode, not a safety violation.

use crate::report::RunReport;
use crate::sim::{Ctl, Model};
use rand::Rng;
use std::collections::BTreeMap;
use synod_protocols::commit::{CommitEvent, CommitInput, CommitNode, Layout, Outcome, TxnId};
use synod_protocols::{Node, NodeId, MS};

pub use synod_protocols::commit::VotePlan;

pub const PROPERTIES: &[&str] = &["atomicity", "validity"];
pub const COUNTERS: &[&str] = &["blocked", "committed", "aborted"];

/// Transactions per run.
pub const TXNS: u64 = 4;
/// Transaction `t` starts at about `t * SPACING` into the fault phase.
pub const SPACING: u64 = 450 * MS;

pub struct CommitModel<N, B> {
    boot: B,
    layout: Layout,
    votes: BTreeMap<TxnId, BTreeMap<NodeId, bool>>,
    outcomes: BTreeMap<TxnId, BTreeMap<NodeId, Outcome>>,
    first_outcome: Option<(u64, u64)>,
    /// Fixed start times: transaction `t` begins at exactly `at + t *
    /// SPACING` (stories that must strike at a known moment); else at a
    /// random moment of its slot.
    start: Option<u64>,
    _node: std::marker::PhantomData<N>,
}

impl<N, B> CommitModel<N, B>
where
    N: Node<Input = CommitInput, Event = CommitEvent> + CommitNode,
    B: FnMut(NodeId, &N::Disk, u64) -> N,
{
    pub fn new(layout: Layout, boot: B) -> Self {
        CommitModel {
            boot,
            layout,
            votes: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            first_outcome: None,
            start: None,
            _node: std::marker::PhantomData,
        }
    }

    /// Begins transaction `t` at exactly `at + t * SPACING`.
    pub fn starting_at(mut self, at: u64) -> Self {
        self.start = Some(at);
        self
    }

    fn on_outcome(&mut self, ctl: &mut Ctl<'_, N>, node: NodeId, txn: TxnId, outcome: Outcome) {
        if self.first_outcome.is_none() {
            self.first_outcome = Some((ctl.now(), ctl.messages_sent()));
        }
        let seen = self.outcomes.entry(txn).or_default();
        if let Some(before) = seen.get(&node) {
            if *before != outcome {
                ctl.violation(
                    "atomicity",
                    Some(node),
                    format!("txn {txn}: learned {outcome:?} after {before:?}"),
                );
            }
            return;
        }
        if let Some((other, o)) = seen.iter().find(|(_, o)| **o != outcome) {
            ctl.violation(
                "atomicity",
                Some(node),
                format!("txn {txn}: {outcome:?} here but {o:?} at participant n{other}"),
            );
        }
        seen.insert(node, outcome);
        if outcome == Outcome::Commit {
            let votes = self.votes.get(&txn);
            let missing: Vec<NodeId> = self
                .layout
                .participants()
                .filter(|p| votes.and_then(|v| v.get(p)) != Some(&true))
                .collect();
            if !missing.is_empty() {
                ctl.violation(
                    "validity",
                    Some(node),
                    format!("txn {txn}: committed without a yes vote from {missing:?}"),
                );
            }
        }
    }
}

impl<N, B> Model for CommitModel<N, B>
where
    N: Node<Input = CommitInput, Event = CommitEvent> + CommitNode,
    B: FnMut(NodeId, &N::Disk, u64) -> N,
{
    type Node = N;

    fn boot(&mut self, id: NodeId, disk: &N::Disk, seed: u64) -> N {
        (self.boot)(id, disk, seed)
    }

    fn on_start(&mut self, ctl: &mut Ctl<'_, N>) {
        for txn in 0..TXNS {
            let at = match self.start {
                Some(start) => start + txn * SPACING,
                None => txn * SPACING + ctl.rng().gen_range(0..100 * MS),
            };
            ctl.input(Layout::COORDINATOR, CommitInput::Begin(txn), at);
        }
    }

    fn on_event(&mut self, ctl: &mut Ctl<'_, N>, node: NodeId, event: CommitEvent) {
        match event {
            CommitEvent::Voted { txn, yes } => {
                if self.layout.is_participant(node) {
                    self.votes.entry(txn).or_default().insert(node, yes);
                }
            }
            CommitEvent::Outcome { txn, outcome } => {
                if self.layout.is_participant(node) {
                    self.on_outcome(ctl, node, txn, outcome);
                }
            }
            CommitEvent::Decided { .. } => {}
        }
    }

    /// A restarted participant may have made a vote or an outcome durable and
    /// crashed before the event left: take them from its recovered state.
    fn on_restart(&mut self, ctl: &mut Ctl<'_, N>, node: NodeId) {
        if !self.layout.is_participant(node) {
            return;
        }
        let Some(n) = ctl.node(node) else { return };
        let known: Vec<(TxnId, Option<bool>, Option<Outcome>)> =
            (0..TXNS).map(|t| (t, n.vote(t), n.outcome(t))).collect();
        for (txn, vote, outcome) in known {
            if let Some(yes) = vote {
                self.votes
                    .entry(txn)
                    .or_default()
                    .entry(node)
                    .or_insert(yes);
            }
            if let Some(o) = outcome {
                self.on_outcome(ctl, node, txn, o);
            }
        }
    }

    fn done(&self, ctl: &Ctl<'_, N>) -> bool {
        self.layout
            .participants()
            .all(|p| ctl.node(p).is_none_or(|n| !n.unresolved()))
    }

    fn finish(&mut self, ctl: &mut Ctl<'_, N>, _terminated: bool, report: &mut RunReport) {
        let in_doubt: Vec<(NodeId, TxnId)> = self
            .layout
            .participants()
            .filter_map(|p| ctl.node(p).map(|n| (p, n.in_doubt())))
            .flat_map(|(p, txns)| txns.into_iter().map(move |t| (p, t)))
            .collect();
        let mut blocked: Vec<TxnId> = Vec::new();
        for (p, txn) in in_doubt {
            ctl.trace(format_args!(
                "BLOCKED: n{p} voted yes on txn {txn}, is still in doubt and holds its lock"
            ));
            blocked.push(txn);
        }
        blocked.sort_unstable();
        blocked.dedup();
        report.count("blocked", blocked.len() as u64);
        let mut committed = 0;
        let mut aborted = 0;
        for seen in self.outcomes.values() {
            match seen.values().next() {
                Some(Outcome::Commit) => committed += 1,
                Some(Outcome::Abort) => aborted += 1,
                None => {}
            }
        }
        report.count("committed", committed);
        report.count("aborted", aborted);
        if let Some((t, m)) = self.first_outcome {
            report.decision_time = Some(t);
            report.decision_messages = Some(m);
        }
    }
}
