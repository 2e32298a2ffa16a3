//! Three-phase commit (Skeen's centralised non-blocking protocol) with its
//! timeout-driven termination protocol.
//!
//! * **CanCommit.** The coordinator asks every participant; a participant that can
//!   commit logs its yes vote and becomes *uncertain*; one that cannot aborts.
//!   The coordinator aborts on a no vote, or when votes are missing at its timeout.
//! * **PreCommit.** With every vote yes, the coordinator logs that it is
//!   pre-committing and sends `PreCommit`; a participant logs it, becomes
//!   *pre-committed* and acknowledges.
//! * **DoCommit.** Once every participant acknowledged — or when the ack timeout
//!   expires, since every vote was yes and a participant that did not answer is
//!   taken to have failed — the coordinator logs commit and sends `DoCommit`.
//!
//! **Termination.** A participant that waits too long for the next message (in
//! either the uncertain or the pre-committed state) concludes the coordinator has
//! failed and runs the termination protocol as a backup coordinator; backups are
//! tried in participant order, each waiting a little longer than the one before.
//! The backup collects the states of the participants it can reach and applies
//! Skeen's rule:
//!
//! 1. someone committed or aborted → that outcome;
//! 2. else someone is pre-committed → pre-commit the uncertain ones, then commit;
//! 3. else everyone it heard from is uncertain → abort.
//!
//! Only *operational* participants — up continuously since they voted — count in
//! rules 2 and 3; a participant that crashed and restarted in an undecided state
//! only asks (Skeen's recovery protocol) and cannot decide on its own evidence.
//! Two refinements keep this sound with restarts: a coordinator that is still
//! driving the transaction answers *busy* and the backup waits for it; and when
//! every participant answered and none committed, abort is safe even if all of
//! them had restarted (no participant committed, and nobody is driving a
//! commit). A restarted coordinator that had not started pre-committing aborts.
//!
//! Under crash faults, where a timeout means the peer really is down, this
//! neither splits nor blocks while a participant that voted stays up. It can
//! still wait after a *total* failure: if every participant that voted crashed,
//! and a participant or the coordinator that might know the outcome is down for
//! good, the restarted ones cannot tell commit from abort. Its real failure mode
//! is the network partition: the side with the coordinator (or a pre-committed
//! participant) commits, while uncertain participants cut off on the other side
//! time out and abort — atomicity is lost. Timeouts cannot tell a crashed node
//! from an unreachable one.

use super::{CommitEvent, CommitInput, Layout, Log, LogWrite, Outcome, TxnId, VotePlan};
use crate::sansio::{Instant, Node, NodeId, Output, MS};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A participant's state as reported to a backup coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Voted yes, no pre-commit. `operational`: up continuously since the vote.
    Uncertain {
        operational: bool,
    },
    PreCommitted {
        operational: bool,
    },
    Decided(Outcome),
    /// The coordinator's answer while it is still driving the transaction: it is
    /// alive, so a backup must not step in.
    Busy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    CanCommit {
        txn: TxnId,
    },
    Vote {
        txn: TxnId,
        yes: bool,
    },
    PreCommit {
        txn: TxnId,
    },
    Ack {
        txn: TxnId,
    },
    /// `DoCommit` (Commit) or the abort, from the coordinator or a backup.
    Outcome {
        txn: TxnId,
        outcome: Outcome,
    },
    /// A backup coordinator (or a restarted coordinator) asks for the state.
    StateReq {
        txn: TxnId,
    },
    StateRep {
        txn: TxnId,
        state: State,
    },
}

/// Timing knobs.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// The coordinator aborts if votes are missing after this long.
    pub vote_timeout: Instant,
    /// The coordinator commits if acks are missing after this long.
    pub ack_timeout: Instant,
    /// The coordinator resends to silent participants this often.
    pub resend: Instant,
    /// A participant waiting for the next message from its coordinator suspects it
    /// after this long (plus `stagger` per rank, so backups take turns).
    pub participant_timeout: Instant,
    pub stagger: Instant,
    /// How long a backup collects states, and waits for pre-commit acks.
    pub window: Instant,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            vote_timeout: 100 * MS,
            ack_timeout: 100 * MS,
            resend: 40 * MS,
            participant_timeout: 60 * MS,
            stagger: 30 * MS,
            window: 40 * MS,
        }
    }
}

#[derive(Clone, Debug)]
enum CoordPhase {
    Votes {
        started: Instant,
        last_send: Instant,
        votes: BTreeMap<NodeId, bool>,
    },
    Acks {
        started: Instant,
        last_send: Instant,
        acks: BTreeMap<NodeId, ()>,
    },
    /// Restarted after pre-committing: asks participants for the outcome.
    Recovering { next_ask: Instant },
}

#[derive(Clone, Debug)]
enum Term {
    Idle,
    Collect {
        until: Instant,
        states: BTreeMap<NodeId, State>,
    },
    Push {
        until: Instant,
    },
}

/// What a participant keeps in memory about an undecided transaction.
#[derive(Clone, Debug)]
struct Pending {
    /// Up continuously since the vote (false after a restart).
    operational: bool,
    deadline: Instant,
    term: Term,
}

type Out = Output<LogWrite, Msg, CommitEvent>;

/// A 3PC node: the coordinator (node 0) or a participant.
#[derive(Clone, Debug)]
pub struct ThreePcNode {
    id: NodeId,
    layout: Layout,
    plan: VotePlan,
    timing: Timing,
    log: Log,
    coord: BTreeMap<TxnId, CoordPhase>,
    pending: BTreeMap<TxnId, Pending>,
}

impl ThreePcNode {
    pub fn new(id: NodeId, layout: Layout, plan: VotePlan, disk: &Log) -> ThreePcNode {
        Self::with_timing(id, layout, plan, disk, Timing::default())
    }

    pub fn with_timing(
        id: NodeId,
        layout: Layout,
        plan: VotePlan,
        disk: &Log,
        timing: Timing,
    ) -> ThreePcNode {
        let mut node = ThreePcNode {
            id,
            layout,
            plan,
            timing,
            log: disk.clone(),
            coord: BTreeMap::new(),
            pending: BTreeMap::new(),
        };
        if layout.is_participant(id) {
            // Recovered, undecided: not operational; it asks at its first timeout.
            for txn in disk.in_doubt() {
                node.pending.insert(
                    txn,
                    Pending {
                        operational: false,
                        deadline: 0,
                        term: Term::Idle,
                    },
                );
            }
        }
        if id == Layout::COORDINATOR {
            for (txn, r) in &disk.txns {
                if r.coord_precommit && r.decision.is_none() {
                    node.coord
                        .insert(*txn, CoordPhase::Recovering { next_ask: 0 });
                }
            }
        }
        node
    }

    fn write(&mut self, w: LogWrite, out: &mut Out) {
        self.log.apply(&w);
        out.persist(w);
    }

    fn record(&self, txn: TxnId) -> super::TxnRecord {
        self.log.get(txn).cloned().unwrap_or_default()
    }

    fn timeout(&self) -> Instant {
        self.timing.participant_timeout + self.layout.rank(self.id) * self.timing.stagger
    }

    /// Everyone but this node: the coordinator and the other participants.
    fn others(&self) -> Vec<NodeId> {
        std::iter::once(Layout::COORDINATOR)
            .chain(self.layout.participants())
            .filter(|n| *n != self.id)
            .collect()
    }

    // ---- coordinator ----

    fn decide(&mut self, txn: TxnId, outcome: Outcome, out: &mut Out) {
        self.coord.remove(&txn);
        if self.record(txn).decision.is_some() {
            return;
        }
        self.write(LogWrite::Decision(txn, outcome), out);
        out.emit(CommitEvent::Decided { txn, outcome });
        for p in self.layout.participants() {
            out.send(p, Msg::Outcome { txn, outcome });
        }
    }

    fn coord_step(&mut self, now: Instant, from: NodeId, msg: Msg, out: &mut Out) {
        match msg {
            Msg::Vote { txn, yes } => {
                let all = self.layout.participants;
                match self.coord.get_mut(&txn) {
                    Some(CoordPhase::Votes { votes, .. }) => {
                        votes.insert(from, yes);
                        if !yes {
                            self.decide(txn, Outcome::Abort, out);
                        } else if votes.len() == all {
                            self.write(LogWrite::CoordPreCommit(txn), out);
                            self.coord.insert(
                                txn,
                                CoordPhase::Acks {
                                    started: now,
                                    last_send: now,
                                    acks: BTreeMap::new(),
                                },
                            );
                            for p in self.layout.participants() {
                                out.send(p, Msg::PreCommit { txn });
                            }
                        }
                    }
                    Some(_) => {}
                    None => self.answer(from, txn, out),
                }
            }
            Msg::Ack { txn } => {
                if let Some(CoordPhase::Acks { acks, .. }) = self.coord.get_mut(&txn) {
                    acks.insert(from, ());
                    if acks.len() == self.layout.participants {
                        self.decide(txn, Outcome::Commit, out);
                    }
                }
            }
            Msg::StateReq { txn } => self.answer(from, txn, out),
            Msg::Outcome { txn, outcome }
            | Msg::StateRep {
                txn,
                state: State::Decided(outcome),
            } if self.record(txn).decision.is_none() => {
                // A backup decided (or a participant knows): adopt it.
                self.coord.remove(&txn);
                self.write(LogWrite::Decision(txn, outcome), out);
                out.emit(CommitEvent::Decided { txn, outcome });
            }
            _ => {}
        }
    }

    /// Someone asks about `txn`: the decision if there is one; nothing while the
    /// protocol runs or while recovering; abort if the coordinator has no trace
    /// of having pre-committed (it restarted before that, so nobody can have).
    fn answer(&mut self, from: NodeId, txn: TxnId, out: &mut Out) {
        let r = self.record(txn);
        if let Some(outcome) = r.decision {
            out.send(
                from,
                Msg::StateRep {
                    txn,
                    state: State::Decided(outcome),
                },
            );
        } else if matches!(
            self.coord.get(&txn),
            Some(CoordPhase::Votes { .. } | CoordPhase::Acks { .. })
        ) {
            out.send(
                from,
                Msg::StateRep {
                    txn,
                    state: State::Busy,
                },
            );
        } else if !self.coord.contains_key(&txn) && !r.coord_precommit {
            self.decide(txn, Outcome::Abort, out);
        }
    }

    fn coord_tick(&mut self, now: Instant, out: &mut Out) {
        let t = self.timing;
        let mut decisions = Vec::new();
        for (txn, phase) in self.coord.iter_mut() {
            let txn = *txn;
            match phase {
                CoordPhase::Votes {
                    started,
                    last_send,
                    votes,
                } => {
                    if now >= *started + t.vote_timeout {
                        decisions.push((txn, Outcome::Abort));
                    } else if now >= *last_send + t.resend {
                        *last_send = now;
                        for p in 1..=self.layout.participants as NodeId {
                            if !votes.contains_key(&p) {
                                out.send(p, Msg::CanCommit { txn });
                            }
                        }
                    }
                }
                CoordPhase::Acks {
                    started,
                    last_send,
                    acks,
                } => {
                    if now >= *started + t.ack_timeout {
                        // Every vote was yes; the silent ones are taken as failed
                        // and will learn the outcome when they recover.
                        decisions.push((txn, Outcome::Commit));
                    } else if now >= *last_send + t.resend {
                        *last_send = now;
                        for p in 1..=self.layout.participants as NodeId {
                            if !acks.contains_key(&p) {
                                out.send(p, Msg::PreCommit { txn });
                            }
                        }
                    }
                }
                CoordPhase::Recovering { next_ask } => {
                    if now >= *next_ask {
                        *next_ask = now + t.participant_timeout;
                        for p in 1..=self.layout.participants as NodeId {
                            out.send(p, Msg::StateReq { txn });
                        }
                    }
                }
            }
        }
        for (txn, o) in decisions {
            self.decide(txn, o, out);
        }
    }

    // ---- participant ----

    fn state(&self, txn: TxnId) -> Option<State> {
        let r = self.record(txn);
        if let Some(o) = r.outcome {
            return Some(State::Decided(o));
        }
        r.vote?;
        let operational = self.pending.get(&txn).is_some_and(|p| p.operational);
        Some(if r.precommitted {
            State::PreCommitted { operational }
        } else {
            State::Uncertain { operational }
        })
    }

    fn learn(&mut self, txn: TxnId, outcome: Outcome, out: &mut Out) {
        self.pending.remove(&txn);
        if self.record(txn).outcome.is_some() {
            return;
        }
        self.write(LogWrite::Outcome(txn, outcome), out);
        out.emit(CommitEvent::Outcome { txn, outcome });
    }

    /// Aborts a transaction this participant has not voted on (still its right).
    fn abort_unvoted(&mut self, txn: TxnId, out: &mut Out) {
        self.write(LogWrite::Vote(txn, false), out);
        out.emit(CommitEvent::Voted { txn, yes: false });
        self.learn(txn, Outcome::Abort, out);
    }

    /// Someone is alive and working on `txn`: restart the wait.
    fn heard(&mut self, now: Instant, txn: TxnId) {
        let timeout = self.timeout();
        if let Some(p) = self.pending.get_mut(&txn) {
            p.deadline = now + timeout;
        }
    }

    fn part_step(&mut self, now: Instant, from: NodeId, msg: Msg, out: &mut Out) {
        match msg {
            Msg::CanCommit { txn } if from == Layout::COORDINATOR => {
                let r = self.record(txn);
                let yes = match (r.vote, r.outcome) {
                    (Some(v), _) => v,
                    (None, Some(_)) => false,
                    (None, None) => {
                        let yes =
                            self.plan.votes_yes(txn, self.id) && self.log.lock_holder().is_none();
                        self.write(LogWrite::Vote(txn, yes), out);
                        out.emit(CommitEvent::Voted { txn, yes });
                        if yes {
                            let deadline = now + self.timeout();
                            self.pending.insert(
                                txn,
                                Pending {
                                    operational: true,
                                    deadline,
                                    term: Term::Idle,
                                },
                            );
                        } else {
                            self.learn(txn, Outcome::Abort, out);
                        }
                        yes
                    }
                };
                self.heard(now, txn);
                out.send(from, Msg::Vote { txn, yes });
            }
            Msg::PreCommit { txn } => {
                let r = self.record(txn);
                if let Some(outcome) = r.outcome {
                    out.send(from, Msg::Outcome { txn, outcome });
                } else if r.vote == Some(true) {
                    if !r.precommitted {
                        self.write(LogWrite::PreCommit(txn), out);
                    }
                    self.heard(now, txn);
                    out.send(from, Msg::Ack { txn });
                }
            }
            Msg::Ack { txn } => self.heard(now, txn),
            Msg::Outcome { txn, outcome }
            | Msg::StateRep {
                txn,
                state: State::Decided(outcome),
            } => self.learn(txn, outcome, out),
            Msg::StateReq { txn } => {
                if self.record(txn).vote.is_none() && self.record(txn).outcome.is_none() {
                    self.abort_unvoted(txn, out);
                }
                // A backup at work restarts the wait; a restarted coordinator that
                // only asks does not (it is not driving the protocol).
                if from != Layout::COORDINATOR {
                    self.heard(now, txn);
                }
                if let Some(state) = self.state(txn) {
                    out.send(from, Msg::StateRep { txn, state });
                }
            }
            Msg::StateRep { txn, state } => {
                if let Some(Pending {
                    term: Term::Collect { states, .. },
                    ..
                }) = self.pending.get_mut(&txn)
                {
                    states.insert(from, state);
                }
            }
            _ => {}
        }
    }

    /// Skeen's decision rule, applied by a backup to the states it collected.
    fn terminate(
        &mut self,
        now: Instant,
        txn: TxnId,
        states: BTreeMap<NodeId, State>,
        out: &mut Out,
    ) {
        let coordinator_busy = states.get(&Layout::COORDINATOR) == Some(&State::Busy);
        let participants_heard = self
            .layout
            .participants()
            .filter(|p| *p == self.id || states.contains_key(p))
            .count();
        let mut all: Vec<State> = states.into_values().collect();
        all.extend(self.state(txn));
        if let Some(o) = all.iter().find_map(|s| {
            if let State::Decided(o) = s {
                Some(*o)
            } else {
                None
            }
        }) {
            return self.finish(txn, o, out);
        }
        if coordinator_busy {
            // The coordinator is alive and will finish: wait for it.
            return self.retry_later(now, txn);
        }
        if all.contains(&State::PreCommitted { operational: true }) {
            if !self.record(txn).precommitted {
                self.write(LogWrite::PreCommit(txn), out);
            }
            for p in self.layout.participants().filter(|p| *p != self.id) {
                out.send(p, Msg::PreCommit { txn });
            }
            let until = now + self.timing.window;
            if let Some(p) = self.pending.get_mut(&txn) {
                p.term = Term::Push { until };
            }
            return;
        }
        if all.contains(&State::Uncertain { operational: true }) {
            return self.finish(txn, Outcome::Abort, out);
        }
        if participants_heard == self.layout.participants {
            // Every participant answered and none committed, while nobody drives a
            // commit (no busy coordinator, no operational pre-committed
            // participant): no participant has committed or will, so abort.
            return self.finish(txn, Outcome::Abort, out);
        }
        // Only some recovered participants answered: a missing one may have
        // committed. Nobody here may decide; ask again later.
        self.retry_later(now, txn);
    }

    fn retry_later(&mut self, now: Instant, txn: TxnId) {
        let deadline = now + self.timeout();
        if let Some(p) = self.pending.get_mut(&txn) {
            p.term = Term::Idle;
            p.deadline = deadline;
        }
    }

    /// The backup decided: log, then tell everyone (the coordinator included).
    fn finish(&mut self, txn: TxnId, outcome: Outcome, out: &mut Out) {
        self.learn(txn, outcome, out);
        for n in self.others() {
            out.send(n, Msg::Outcome { txn, outcome });
        }
    }

    fn part_tick(&mut self, now: Instant, out: &mut Out) {
        let window = self.timing.window;
        let others = self.others();
        let txns: Vec<TxnId> = self.pending.keys().copied().collect();
        for txn in txns {
            let Some(p) = self.pending.get_mut(&txn) else {
                continue;
            };
            match &mut p.term {
                Term::Idle if now >= p.deadline => {
                    p.term = Term::Collect {
                        until: now + window,
                        states: BTreeMap::new(),
                    };
                    for n in &others {
                        out.send(*n, Msg::StateReq { txn });
                    }
                }
                Term::Collect { until, states }
                    if now >= *until || states.len() >= others.len() =>
                {
                    let states = std::mem::take(states);
                    self.terminate(now, txn, states, out);
                }
                Term::Push { until } if now >= *until => self.finish(txn, Outcome::Commit, out),
                _ => {}
            }
        }
    }
}

impl super::LoggedNode for ThreePcNode {
    fn commit_log(&self) -> &Log {
        &self.log
    }
    fn participates(&self) -> bool {
        self.layout.is_participant(self.id)
    }
}

impl Node for ThreePcNode {
    type Msg = Msg;
    type Write = LogWrite;
    type Disk = Log;
    type Event = CommitEvent;
    type Input = CommitInput;

    fn apply_write(disk: &mut Log, w: &LogWrite) {
        disk.apply(w);
    }

    fn step(&mut self, now: Instant, from: NodeId, msg: Msg, out: &mut Out) {
        if self.id == Layout::COORDINATOR {
            self.coord_step(now, from, msg, out);
        } else if self.layout.is_participant(self.id) {
            self.part_step(now, from, msg, out);
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Out) {
        if self.id == Layout::COORDINATOR {
            self.coord_tick(now, out);
        } else if self.layout.is_participant(self.id) {
            self.part_tick(now, out);
        }
    }

    fn input(&mut self, now: Instant, input: CommitInput, out: &mut Out) {
        let CommitInput::Begin(txn) = input;
        if self.id != Layout::COORDINATOR
            || self.coord.contains_key(&txn)
            || self.log.get(txn).is_some()
        {
            return;
        }
        self.coord.insert(
            txn,
            CoordPhase::Votes {
                started: now,
                last_send: now,
                votes: BTreeMap::new(),
            },
        );
        for p in self.layout.participants() {
            out.send(p, Msg::CanCommit { txn });
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

    type Net = Vec<(NodeId, Envelope<Msg>)>;

    fn cluster(k: usize) -> Vec<ThreePcNode> {
        let layout = Layout::new(k + 1, k);
        (0..=k as NodeId)
            .map(|i| ThreePcNode::new(i, layout, VotePlan::all_yes(), &Log::default()))
            .collect()
    }

    /// Delivers messages between nodes that can reach each other (`group` equal)
    /// until none are left.
    fn settle(nodes: &mut [ThreePcNode], now: Instant, group: &[u8], mut pending: Net) {
        while !pending.is_empty() {
            let (from, env) = pending.remove(0);
            if group[from as usize] != group[env.to as usize] {
                continue;
            }
            let mut out = Out::default();
            nodes[env.to as usize].step(now, from, env.msg, &mut out);
            pending.extend(out.msgs.into_iter().map(|e| (env.to, e)));
        }
    }

    fn tick_all(nodes: &mut [ThreePcNode], now: Instant, group: &[u8]) {
        for i in 0..nodes.len() {
            let mut out = Out::default();
            nodes[i].tick(now, &mut out);
            settle(
                nodes,
                now,
                group,
                out.msgs.into_iter().map(|e| (i as NodeId, e)).collect(),
            );
        }
    }

    fn begin(nodes: &mut [ThreePcNode], group: &[u8]) {
        let mut out = Out::default();
        nodes[0].input(0, CommitInput::Begin(1), &mut out);
        settle(
            nodes,
            0,
            group,
            out.msgs.into_iter().map(|e| (0, e)).collect(),
        );
    }

    #[test]
    fn all_yes_commits() {
        let mut nodes = cluster(3);
        begin(&mut nodes, &[0; 4]);
        for n in &nodes[1..] {
            assert_eq!(n.outcome(1), Some(Outcome::Commit));
        }
    }

    #[test]
    fn coordinator_crash_before_precommit_terminates_with_abort() {
        let mut nodes = cluster(3);
        // The coordinator's CanCommit arrives, then the coordinator is cut off for good.
        let group = [1, 0, 0, 0];
        let mut out = Out::default();
        nodes[0].input(0, CommitInput::Begin(1), &mut out);
        let mut pending: Net = out.msgs.into_iter().map(|e| (0, e)).collect();
        // Participants vote; votes are lost.
        for (_, env) in pending.drain(..) {
            let mut o = Out::default();
            nodes[env.to as usize].step(0, 0, env.msg, &mut o);
        }
        for t in 1..100 {
            tick_all(&mut nodes[..], t * 10 * MS, &group);
        }
        for n in &nodes[1..] {
            assert_eq!(n.outcome(1), Some(Outcome::Abort), "no participant blocks");
        }
    }

    #[test]
    fn a_partition_after_precommit_splits_the_outcome() {
        let mut nodes = cluster(3);
        let mut out = Out::default();
        nodes[0].input(0, CommitInput::Begin(1), &mut out);
        settle(&mut nodes, 0, &[9, 9, 9, 9], Vec::new());
        // Votes reach the coordinator; then participants 2 and 3 are cut off
        // before the pre-commit reaches them.
        let mut votes: Net = Vec::new();
        for env in out.msgs {
            let mut o = Out::default();
            nodes[env.to as usize].step(0, 0, env.msg, &mut o);
            votes.extend(o.msgs.into_iter().map(|e| (env.to, e)));
        }
        let group = [0, 0, 1, 1];
        let mut pre = Vec::new();
        for (from, env) in votes {
            let mut o = Out::default();
            nodes[0].step(0, from, env.msg, &mut o);
            pre.extend(o.msgs.into_iter().map(|e| (0, e)));
        }
        settle(&mut nodes, 0, &group, pre);
        for t in 1..100 {
            tick_all(&mut nodes[..], t * 10 * MS, &group);
        }
        assert_eq!(nodes[1].outcome(1), Some(Outcome::Commit));
        assert_eq!(nodes[2].outcome(1), Some(Outcome::Abort));
        assert_eq!(nodes[3].outcome(1), Some(Outcome::Abort));
    }

    #[test]
    fn a_recovered_participant_does_not_decide_alone() {
        // Participants 1 and 2 restarted uncertain; participant 3 is silent and
        // may have committed, so they must wait.
        let layout = Layout::new(4, 3);
        let mut disk = Log::default();
        disk.apply(&LogWrite::Vote(5, true));
        let recovered = State::Uncertain { operational: false };
        let mut p = ThreePcNode::new(1, layout, VotePlan::all_yes(), &disk);
        let mut out = Out::default();
        p.tick(0, &mut out);
        p.step(
            MS,
            2,
            Msg::StateRep {
                txn: 5,
                state: recovered,
            },
            &mut out,
        );
        p.tick(Timing::default().window + MS, &mut out);
        assert_eq!(p.outcome(5), None);
        assert_eq!(p.in_doubt(), vec![5]);
        // Once every participant answers and none committed, abort is safe.
        let mut out = Out::default();
        p.tick(10 * Timing::default().participant_timeout, &mut out);
        for q in [2, 3] {
            p.step(
                11 * Timing::default().participant_timeout,
                q,
                Msg::StateRep {
                    txn: 5,
                    state: recovered,
                },
                &mut out,
            );
        }
        p.tick(11 * Timing::default().participant_timeout, &mut out);
        assert_eq!(p.outcome(5), Some(Outcome::Abort));
    }

    #[test]
    fn a_busy_coordinator_keeps_backups_waiting() {
        let layout = Layout::new(3, 2);
        let mut p = ThreePcNode::new(1, layout, VotePlan::all_yes(), &Log::default());
        let mut out = Out::default();
        p.step(0, 0, Msg::CanCommit { txn: 1 }, &mut out);
        let t = Timing::default().participant_timeout;
        p.tick(t, &mut out);
        p.step(
            t,
            0,
            Msg::StateRep {
                txn: 1,
                state: State::Busy,
            },
            &mut out,
        );
        p.step(
            t,
            2,
            Msg::StateRep {
                txn: 1,
                state: State::Uncertain { operational: true },
            },
            &mut out,
        );
        p.tick(t + Timing::default().window, &mut out);
        assert_eq!(
            p.outcome(1),
            None,
            "the coordinator is alive: no backup decision"
        );
    }
}
