//! Two-phase commit with presumed abort and cooperative termination.
//!
//! * **Phase 1.** The coordinator sends `Prepare` to every participant. A
//!   participant that can commit logs its yes vote durably and only then answers
//!   yes; one that cannot logs the abort and answers no.
//! * **Phase 2.** With every vote yes the coordinator logs *commit*; on a no vote,
//!   or when a vote has not arrived in time, it logs *abort*. Only after the log
//!   record is durable does it send the decision.
//!
//! A participant that voted yes is *in doubt*: it may not decide alone, because
//! the coordinator might have decided either way. It keeps asking the coordinator
//! and, so that it can finish while the coordinator is down, the other
//! participants too (cooperative termination). A participant that knows the
//! outcome tells it; one that has not voted aborts on the spot (it is still free
//! to) and says so. A restarted coordinator that finds no decision in its log
//! answers *abort* and logs it (presumed abort): it cannot have committed.
//!
//! The failure mode: if the coordinator goes down once every participant has
//! voted yes and before any participant learned the decision, nobody can tell
//! which way it went. The participants stay in doubt, holding their locks, until
//! the coordinator returns — 2PC blocks.

use super::{CommitEvent, CommitInput, Layout, Log, LogWrite, Outcome, TxnId, VotePlan};
use crate::sansio::{Instant, Node, NodeId, Output, MS};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Prepare {
        txn: TxnId,
    },
    Vote {
        txn: TxnId,
        yes: bool,
    },
    Decision {
        txn: TxnId,
        outcome: Outcome,
    },
    /// An in-doubt participant asks for the outcome.
    Ask {
        txn: TxnId,
    },
}

/// Timing knobs.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// The coordinator aborts a transaction whose votes are not all in by then.
    pub vote_timeout: Instant,
    /// The coordinator resends `Prepare` to silent participants this often.
    pub resend: Instant,
    /// An in-doubt participant asks around this often.
    pub ask: Instant,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            vote_timeout: 150 * MS,
            resend: 40 * MS,
            ask: 100 * MS,
        }
    }
}

#[derive(Clone, Debug)]
struct Collecting {
    started: Instant,
    last_send: Instant,
    votes: BTreeMap<NodeId, bool>,
}

type Out = Output<LogWrite, Msg, CommitEvent>;

/// A 2PC node: the coordinator (node 0) or a participant.
#[derive(Clone, Debug)]
pub struct TwoPcNode {
    id: NodeId,
    layout: Layout,
    plan: VotePlan,
    timing: Timing,
    /// Mirrors the disk.
    log: Log,
    /// Coordinator: transactions whose votes are being collected.
    collecting: BTreeMap<TxnId, Collecting>,
    /// Participant: when to ask about each in-doubt transaction next.
    next_ask: BTreeMap<TxnId, Instant>,
}

impl TwoPcNode {
    pub fn new(id: NodeId, layout: Layout, plan: VotePlan, disk: &Log) -> TwoPcNode {
        Self::with_timing(id, layout, plan, disk, Timing::default())
    }

    pub fn with_timing(
        id: NodeId,
        layout: Layout,
        plan: VotePlan,
        disk: &Log,
        timing: Timing,
    ) -> TwoPcNode {
        // In-doubt transactions found on disk are asked about at the first tick.
        let next_ask = disk.in_doubt().into_iter().map(|t| (t, 0)).collect();
        TwoPcNode {
            id,
            layout,
            plan,
            timing,
            log: disk.clone(),
            collecting: BTreeMap::new(),
            next_ask,
        }
    }

    fn is_coordinator(&self) -> bool {
        self.id == Layout::COORDINATOR
    }

    fn write(&mut self, w: LogWrite, out: &mut Out) {
        self.log.apply(&w);
        out.persist(w);
    }

    // ---- coordinator ----

    fn decide(&mut self, txn: TxnId, outcome: Outcome, out: &mut Out) {
        self.collecting.remove(&txn);
        if self.log.get(txn).and_then(|r| r.decision).is_some() {
            return;
        }
        self.write(LogWrite::Decision(txn, outcome), out);
        out.emit(CommitEvent::Decided { txn, outcome });
        for p in self.layout.participants() {
            out.send(p, Msg::Decision { txn, outcome });
        }
    }

    /// What the coordinator says about `txn` when asked: its decision; nothing
    /// while it is still collecting votes; abort if it has no record (presumed
    /// abort — a restarted coordinator never committed what it did not log).
    fn answer(&mut self, from: NodeId, txn: TxnId, out: &mut Out) {
        if let Some(outcome) = self.log.get(txn).and_then(|r| r.decision) {
            out.send(from, Msg::Decision { txn, outcome });
        } else if !self.collecting.contains_key(&txn) {
            self.decide(txn, Outcome::Abort, out);
        }
    }

    fn on_vote(&mut self, from: NodeId, txn: TxnId, yes: bool, out: &mut Out) {
        let Some(c) = self.collecting.get_mut(&txn) else {
            return self.answer(from, txn, out);
        };
        c.votes.insert(from, yes);
        if !yes {
            self.decide(txn, Outcome::Abort, out);
        } else if c.votes.len() == self.layout.participants {
            self.decide(txn, Outcome::Commit, out);
        }
    }

    // ---- participant ----

    fn learn(&mut self, txn: TxnId, outcome: Outcome, out: &mut Out) {
        if self.log.get(txn).and_then(|r| r.outcome).is_some() {
            return;
        }
        self.write(LogWrite::Outcome(txn, outcome), out);
        self.next_ask.remove(&txn);
        out.emit(CommitEvent::Outcome { txn, outcome });
    }

    /// Casts the vote for `txn` if not cast yet; returns it.
    fn vote(&mut self, now: Instant, txn: TxnId, out: &mut Out) -> bool {
        let rec = self.log.get(txn).cloned().unwrap_or_default();
        if let Some(v) = rec.vote {
            return v;
        }
        if rec.outcome.is_some() {
            // Aborted before voting.
            return false;
        }
        let yes = self.plan.votes_yes(txn, self.id) && self.log.lock_holder().is_none();
        self.write(LogWrite::Vote(txn, yes), out);
        out.emit(CommitEvent::Voted { txn, yes });
        if yes {
            self.next_ask.insert(txn, now + self.timing.ask);
        } else {
            self.learn(txn, Outcome::Abort, out);
        }
        yes
    }

    fn on_prepare(&mut self, now: Instant, from: NodeId, txn: TxnId, out: &mut Out) {
        let yes = self.vote(now, txn, out);
        out.send(from, Msg::Vote { txn, yes });
    }

    /// Another participant asks: tell it the outcome, or abort now if we have
    /// not voted (we are still free to); an in-doubt participant cannot help.
    fn on_ask_participant(&mut self, from: NodeId, txn: TxnId, out: &mut Out) {
        let rec = self.log.get(txn).cloned().unwrap_or_default();
        if let Some(outcome) = rec.outcome {
            out.send(from, Msg::Decision { txn, outcome });
        } else if rec.vote.is_none() {
            self.write(LogWrite::Vote(txn, false), out);
            out.emit(CommitEvent::Voted { txn, yes: false });
            self.learn(txn, Outcome::Abort, out);
            out.send(
                from,
                Msg::Decision {
                    txn,
                    outcome: Outcome::Abort,
                },
            );
        }
    }
}

impl super::LoggedNode for TwoPcNode {
    fn commit_log(&self) -> &Log {
        &self.log
    }
    fn participates(&self) -> bool {
        self.layout.is_participant(self.id)
    }
}

impl Node for TwoPcNode {
    type Msg = Msg;
    type Write = LogWrite;
    type Disk = Log;
    type Event = CommitEvent;
    type Input = CommitInput;

    fn apply_write(disk: &mut Log, w: &LogWrite) {
        disk.apply(w);
    }

    fn step(&mut self, now: Instant, from: NodeId, msg: Msg, out: &mut Out) {
        let coordinator = self.is_coordinator();
        let participant = self.layout.is_participant(self.id);
        match msg {
            Msg::Prepare { txn } if participant && from == Layout::COORDINATOR => {
                self.on_prepare(now, from, txn, out)
            }
            Msg::Vote { txn, yes } if coordinator && self.layout.is_participant(from) => {
                self.on_vote(from, txn, yes, out)
            }
            Msg::Decision { txn, outcome } if participant => self.learn(txn, outcome, out),
            Msg::Ask { txn } if coordinator => self.answer(from, txn, out),
            Msg::Ask { txn } if participant => self.on_ask_participant(from, txn, out),
            _ => {}
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Out) {
        if self.is_coordinator() {
            let mut expired = Vec::new();
            for (txn, c) in self.collecting.iter_mut() {
                if now >= c.started + self.timing.vote_timeout {
                    expired.push(*txn);
                } else if now >= c.last_send + self.timing.resend {
                    c.last_send = now;
                    for p in 1..=self.layout.participants as NodeId {
                        if !c.votes.contains_key(&p) {
                            out.send(p, Msg::Prepare { txn: *txn });
                        }
                    }
                }
            }
            for txn in expired {
                self.decide(txn, Outcome::Abort, out);
            }
        }
        if self.layout.is_participant(self.id) {
            let due: Vec<TxnId> = self
                .next_ask
                .iter()
                .filter(|(_, at)| now >= **at)
                .map(|(t, _)| *t)
                .collect();
            for txn in due {
                self.next_ask.insert(txn, now + self.timing.ask);
                out.send(Layout::COORDINATOR, Msg::Ask { txn });
                for p in self.layout.participants().filter(|p| *p != self.id) {
                    out.send(p, Msg::Ask { txn });
                }
            }
        }
    }

    fn input(&mut self, now: Instant, input: CommitInput, out: &mut Out) {
        let CommitInput::Begin(txn) = input;
        if !self.is_coordinator()
            || self.collecting.contains_key(&txn)
            || self.log.get(txn).is_some()
        {
            return;
        }
        self.collecting.insert(
            txn,
            Collecting {
                started: now,
                last_send: now,
                votes: BTreeMap::new(),
            },
        );
        for p in self.layout.participants() {
            out.send(p, Msg::Prepare { txn });
        }
    }

    fn describe(&self) -> String {
        self.log.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::CommitNode;
    use crate::Envelope;

    fn cluster(k: usize) -> Vec<TwoPcNode> {
        let layout = Layout::new(k + 1, k);
        (0..=k as NodeId)
            .map(|i| TwoPcNode::new(i, layout, VotePlan::all_yes(), &Log::default()))
            .collect()
    }

    /// Delivers messages (to nodes that are `up`) until none are left.
    fn settle(
        nodes: &mut [TwoPcNode],
        up: &[bool],
        mut pending: Vec<(NodeId, Envelope<Msg>)>,
    ) -> Vec<(NodeId, CommitEvent)> {
        let mut events = Vec::new();
        while !pending.is_empty() {
            let (from, env) = pending.remove(0);
            if !up[env.to as usize] {
                continue;
            }
            let mut out = Out::default();
            nodes[env.to as usize].step(0, from, env.msg, &mut out);
            events.extend(out.events.iter().map(|e| (env.to, *e)));
            pending.extend(out.msgs.into_iter().map(|e| (env.to, e)));
        }
        events
    }

    #[test]
    fn all_yes_commits_everywhere_and_votes_are_logged_first() {
        let mut nodes = cluster(3);
        let mut out = Out::default();
        nodes[0].input(0, CommitInput::Begin(1), &mut out);
        // A participant's vote is in its writes before its reply leaves.
        let mut p = Out::default();
        nodes[1].step(0, 0, Msg::Prepare { txn: 1 }, &mut p);
        assert_eq!(p.writes, vec![LogWrite::Vote(1, true)]);
        settle(
            &mut nodes,
            &[true; 4],
            out.msgs.into_iter().map(|e| (0, e)).collect(),
        );
        for n in &nodes[1..] {
            assert_eq!(n.outcome(1), Some(Outcome::Commit));
        }
    }

    #[test]
    fn coordinator_gone_after_yes_votes_blocks_everyone() {
        let mut nodes = cluster(2);
        // Both participants vote yes; the coordinator never hears back.
        for node in nodes.iter_mut().skip(1) {
            node.step(0, 0, Msg::Prepare { txn: 9 }, &mut Out::default());
        }
        // Ask each other with the coordinator down: nobody can help.
        for p in 1..=2usize {
            let mut out = Out::default();
            nodes[p].tick(10 * Timing::default().ask, &mut out);
            settle(
                &mut nodes,
                &[false, true, true],
                out.msgs.into_iter().map(|e| (p as NodeId, e)).collect(),
            );
        }
        assert_eq!(nodes[1].in_doubt(), vec![9]);
        assert_eq!(nodes[2].in_doubt(), vec![9]);
        // A restarted coordinator with nothing logged presumes abort.
        nodes[0] = TwoPcNode::new(0, Layout::new(3, 2), VotePlan::all_yes(), &Log::default());
        let mut out = Out::default();
        nodes[1].tick(20 * Timing::default().ask, &mut out);
        settle(
            &mut nodes,
            &[true; 3],
            out.msgs.into_iter().map(|e| (1, e)).collect(),
        );
        assert_eq!(nodes[1].outcome(9), Some(Outcome::Abort));
        assert_eq!(nodes[2].outcome(9), Some(Outcome::Abort));
    }

    #[test]
    fn a_participant_that_has_not_voted_aborts_when_asked() {
        let mut nodes = cluster(2);
        let mut out = Out::default();
        nodes[1].step(0, 0, Msg::Prepare { txn: 4 }, &mut out);
        let mut out = Out::default();
        nodes[1].tick(Timing::default().ask, &mut out);
        settle(
            &mut nodes,
            &[false, true, true],
            out.msgs.into_iter().map(|e| (1, e)).collect(),
        );
        assert_eq!(nodes[2].outcome(4), Some(Outcome::Abort));
        assert_eq!(nodes[1].outcome(4), Some(Outcome::Abort));
        // Its late vote is no.
        let mut out = Out::default();
        nodes[2].step(0, 0, Msg::Prepare { txn: 4 }, &mut out);
        assert_eq!(out.msgs[0].msg, Msg::Vote { txn: 4, yes: false });
    }

    #[test]
    fn the_lock_makes_a_second_transaction_vote_no() {
        let mut nodes = cluster(1);
        let mut out = Out::default();
        nodes[1].step(0, 0, Msg::Prepare { txn: 1 }, &mut out);
        let mut out = Out::default();
        nodes[1].step(0, 0, Msg::Prepare { txn: 2 }, &mut out);
        assert_eq!(out.msgs[0].msg, Msg::Vote { txn: 2, yes: false });
    }
}
