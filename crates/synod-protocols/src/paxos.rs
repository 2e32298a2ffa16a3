//! The Paxos synod algorithm: a fault-tolerant write-once variable.
//!
//! Every node is an acceptor and a learner; a node becomes a proposer when a
//! client offers it a value (or when it holds an accepted value nobody seems to be
//! finishing). A proposer runs ballots numbered `(round, node id)`:
//!
//! 1. **Prepare**: it asks every acceptor to promise to ignore lower ballots. An
//!    acceptor promises (durably, before replying) if the ballot is higher than any
//!    it promised, and reports the highest-ballot value it has accepted.
//! 2. **Accept**: with promises from a majority, the proposer must propose the
//!    value of the highest-ballot acceptance among them — only if there is none may
//!    it propose its own. Acceptors accept (durably) unless they promised higher.
//! 3. **Decide**: once a majority accepted the same ballot, the value is chosen;
//!    the proposer tells everyone.
//!
//! Two majorities always share an acceptor, which is why a later ballot can never
//! choose a different value. FLP says no deterministic protocol can also promise
//! to finish under asynchrony; in practice proposers that fail back off for a
//! random time (drawn from the seed given at construction), so one of them gets
//! through two phases without being interrupted.
//!
//! Everything is retransmitted on ticks until done: a lost message only delays.
//!
//! **Fast first ballot.** Ordinary ballots start at round 1, so the ballot
//! `(0, owner)` can only ever be used by one node. If a cluster agrees that one
//! node owns it ([`PaxosNode::with_fast_ballot`]), that node's first ballot has no
//! lower ballot that could have chosen anything and may skip phase 1: it sends
//! Accept straight away, and a decision takes one round trip. Gray and Lamport's
//! Paxos Commit gives each participant its own vote's instance this way. Giving it
//! to two nodes of one instance would break agreement (a test shows it does).

use crate::sansio::{Instant, Node, NodeId, Output, MS};
use crate::write_once::{Decided, WriteOnceNode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

/// A ballot number. Ordered by round, then by the proposer's id, so two proposers
/// never use the same ballot. `Ballot::ZERO` is below every real ballot.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    pub round: u64,
    pub node: NodeId,
}

impl Ballot {
    pub const ZERO: Ballot = Ballot { round: 0, node: 0 };

    /// Phase 1's acceptor rule, for an acceptor that promised `self`: it may
    /// promise `ballot` if it is higher, and answer a repeated prepare of the
    /// ballot it promised again (ZERO, which nobody prepares, excepted).
    /// Shared by the single-decree synod and Multi-Paxos.
    pub fn admits_prepare(self, ballot: Ballot) -> bool {
        ballot > self || (ballot == self && ballot != Ballot::ZERO)
    }

    /// Phase 2's acceptor rule: an acceptor that promised `self` may accept
    /// at `ballot` unless it promised a higher one.
    pub fn admits_accept(self, ballot: Ballot) -> bool {
        ballot >= self
    }
}

/// Phase 1's proposer rule: of the acceptances the promises report, the one
/// with the highest ballot is the value a proposer must carry on with.
pub fn keep_highest<V>(highest: &mut Option<(Ballot, V)>, ballot: Ballot, value: V) {
    if highest.as_ref().is_none_or(|(b, _)| ballot > *b) {
        *highest = Some((ballot, value));
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg<V> {
    Prepare {
        ballot: Ballot,
    },
    Promise {
        ballot: Ballot,
        accepted: Option<(Ballot, V)>,
    },
    Accept {
        ballot: Ballot,
        value: V,
    },
    Accepted {
        ballot: Ballot,
    },
    /// The receiver's ballot is stale: `promised` is higher.
    Reject {
        ballot: Ballot,
        promised: Ballot,
    },
    Decided(V),
    /// An undecided learner asks who knows the value.
    Query,
}

/// A durable record. Every one is synced before the message that depends on it is
/// sent (see [`crate::sansio`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write<V> {
    /// The acceptor promised `ballot`.
    Promise(Ballot),
    /// The acceptor accepted `value` at `ballot` (implies a promise of `ballot`).
    Accept(Ballot, V),
    /// The proposer is about to use this round; a restarted proposer must never
    /// reuse a ballot with a different value.
    Round(u64),
    /// The value a client asked this node to propose, so a restart resumes it.
    Proposal(V),
    /// The final value.
    Decided(V),
}

/// What survives a crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk<V> {
    pub promised: Ballot,
    pub accepted: Option<(Ballot, V)>,
    pub round: u64,
    pub proposal: Option<V>,
    pub decided: Option<V>,
}

impl<V> Default for Disk<V> {
    fn default() -> Self {
        Disk {
            promised: Ballot::ZERO,
            accepted: None,
            round: 0,
            proposal: None,
            decided: None,
        }
    }
}

/// Deliberately broken behaviours, so tests can show that the simulator's checkers
/// catch a broken Paxos. Only constructible with the `broken` feature, which only
/// the test suites enable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// The node keeps its acceptor state (promises, acceptances) and what it
    /// learned only in memory, so a restart forgets them.
    pub forget_promises: bool,
    /// The proposer always proposes its own value, ignoring accepted values
    /// reported in promises.
    pub ignore_accepted: bool,
    /// Quorums of ⌊n/2⌋ instead of a majority.
    pub minority_quorum: bool,
    /// Every node, not just the owner, skips phase 1 on its first ballot.
    pub everyone_fast: bool,
}

/// Timing knobs. Defaults suit a network whose round trip is a few milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Resend the current phase's message to acceptors that have not answered.
    pub retransmit: Instant,
    /// Give up on a ballot that has not completed after this long.
    pub ballot_timeout: Instant,
    /// Upper bound of the first random backoff after a failed ballot; it doubles
    /// with each failure up to `max_backoff`.
    pub backoff: Instant,
    pub max_backoff: Instant,
    /// An undecided node asks its peers for the value this often.
    pub query: Instant,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            retransmit: 20 * MS,
            ballot_timeout: 80 * MS,
            backoff: 20 * MS,
            max_backoff: 320 * MS,
            query: 100 * MS,
        }
    }
}

#[derive(Clone, Debug)]
enum Phase<V> {
    /// Not running a ballot; the next may start at `retry_at`.
    Idle { retry_at: Instant },
    Preparing {
        ballot: Ballot,
        started: Instant,
        promised: Vec<bool>,
        highest: Option<(Ballot, V)>,
    },
    Accepting {
        ballot: Ballot,
        started: Instant,
        value: V,
        accepted: Vec<bool>,
    },
}

/// One Paxos node: acceptor, learner and (when it has something to propose) proposer.
#[derive(Clone, Debug)]
pub struct PaxosNode<V> {
    id: NodeId,
    n: usize,
    timing: Timing,
    bugs: Bugs,
    rng: ChaCha8Rng,
    // Acceptor (mirrors the disk).
    promised: Ballot,
    accepted: Option<(Ballot, V)>,
    // Proposer.
    proposal: Option<V>,
    round: u64,
    highest_seen: u64,
    phase: Phase<V>,
    failures: u32,
    last_send: Instant,
    /// This node owns ballot `(0, id)` and may use it without phase 1.
    fast_ballot: bool,
    // Learner.
    decided: Option<V>,
    /// When an undecided learner next asks its peers; unset until the first tick,
    /// so a node that just heard of the instance waits one interval before asking
    /// (the decision is usually already on its way).
    next_query: Option<Instant>,
    /// When this node last saw any sign of a live proposer (used to decide when
    /// an acceptor with an accepted value should finish the job itself).
    last_activity: Instant,
}

type Out<V> = Output<Write<V>, Msg<V>, Decided<V>>;

impl<V: Clone + Debug + PartialEq> PaxosNode<V> {
    /// Node `id` of a cluster with ids `0..n`, recovered from `disk` (empty for a
    /// new node). `seed` drives the node's random backoff.
    pub fn new(id: NodeId, n: usize, disk: &Disk<V>, seed: u64) -> Self {
        Self::with_timing(id, n, disk, seed, Timing::default())
    }

    pub fn with_timing(id: NodeId, n: usize, disk: &Disk<V>, seed: u64, timing: Timing) -> Self {
        assert!(
            n > 0 && id < n as NodeId,
            "node {id} is not in a cluster of {n}"
        );
        PaxosNode {
            id,
            n,
            timing,
            bugs: Bugs::default(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            promised: disk.promised,
            accepted: disk.accepted.clone(),
            proposal: disk.proposal.clone(),
            round: disk.round,
            highest_seen: disk.round.max(disk.promised.round),
            phase: Phase::Idle { retry_at: 0 },
            failures: 0,
            last_send: 0,
            fast_ballot: false,
            decided: disk.decided.clone(),
            next_query: None,
            last_activity: 0,
        }
    }

    /// Turns on deliberately broken behaviour (tests only).
    #[cfg(feature = "broken")]
    pub fn with_bugs(mut self, bugs: Bugs) -> Self {
        self.bugs = bugs;
        self
    }

    /// Declares this node the owner of ballot `(0, id)` (see the module docs). The
    /// caller must give it to at most one node per instance, and to the same node
    /// after every restart.
    pub fn with_fast_ballot(mut self) -> Self {
        self.fast_ballot = true;
        self
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    fn quorum(&self) -> usize {
        if self.bugs.minority_quorum {
            (self.n / 2).max(1)
        } else {
            self.n / 2 + 1
        }
    }

    fn broadcast(&mut self, msg: Msg<V>, out: &mut Out<V>) {
        for j in 0..self.n as NodeId {
            out.send(j, msg.clone());
        }
    }

    fn persist(&self, w: Write<V>, out: &mut Out<V>) {
        let volatile = matches!(w, Write::Promise(_) | Write::Accept(..) | Write::Decided(_))
            && self.bugs.forget_promises;
        if !volatile {
            out.persist(w);
        }
    }

    fn decide(&mut self, v: V, out: &mut Out<V>) {
        if let Some(d) = &self.decided {
            assert_eq!(*d, v, "paxos node {} learned two different values", self.id);
            return;
        }
        self.decided = Some(v.clone());
        self.phase = Phase::Idle {
            retry_at: Instant::MAX,
        };
        self.persist(Write::Decided(v.clone()), out);
        out.emit(Decided(v));
    }

    /// Starts a new ballot above every round this node has seen.
    fn start_ballot(&mut self, now: Instant, out: &mut Out<V>) {
        // The fast ballot carries only the node's own proposal, which is durable
        // before the Accept leaves and never changes: a restarted owner may send
        // it again, but never with another value. Round 0 stays on disk until a
        // normal ballot starts, so once that has happened the fast one is spent.
        let fast = self.fast_ballot || self.bugs.everyone_fast;
        if fast && self.round == 0 && self.highest_seen == 0 {
            if let Some(value) = self.proposal.clone() {
                let ballot = Ballot {
                    round: 0,
                    node: self.id,
                };
                self.begin_accept(now, ballot, value, out);
                return;
            }
        }
        self.round = self.round.max(self.highest_seen) + 1;
        self.highest_seen = self.round;
        let ballot = Ballot {
            round: self.round,
            node: self.id,
        };
        out.persist(Write::Round(self.round));
        self.phase = Phase::Preparing {
            ballot,
            started: now,
            promised: vec![false; self.n],
            highest: None,
        };
        self.last_send = now;
        self.broadcast(Msg::Prepare { ballot }, out);
    }

    /// The current ballot failed: wait a random, growing time before the next.
    fn back_off(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let cap = (self.timing.backoff << self.failures.min(16)).min(self.timing.max_backoff);
        let wait = self.rng.gen_range(0..=cap);
        self.phase = Phase::Idle {
            retry_at: now + wait,
        };
    }

    fn wants_to_propose(&self, now: Instant) -> bool {
        if self.decided.is_some() {
            return false;
        }
        if self.proposal.is_some() {
            return true;
        }
        // An acceptor holding an accepted value finishes the job itself if no
        // proposer has been heard from for a while: otherwise a value could stay
        // half-chosen forever after its proposer crashed.
        self.accepted.is_some() && now >= self.last_activity + 4 * self.timing.ballot_timeout
    }

    fn on_prepare(&mut self, from: NodeId, ballot: Ballot, out: &mut Out<V>) {
        self.highest_seen = self.highest_seen.max(ballot.round);
        if self.promised.admits_prepare(ballot) {
            if ballot > self.promised {
                self.promised = ballot;
                self.persist(Write::Promise(ballot), out);
            }
            out.send(
                from,
                Msg::Promise {
                    ballot,
                    accepted: self.accepted.clone(),
                },
            );
        } else {
            out.send(
                from,
                Msg::Reject {
                    ballot,
                    promised: self.promised,
                },
            );
        }
    }

    fn on_accept(&mut self, from: NodeId, ballot: Ballot, value: V, out: &mut Out<V>) {
        self.highest_seen = self.highest_seen.max(ballot.round);
        if self.promised.admits_accept(ballot) {
            let already = self.accepted.as_ref().is_some_and(|(b, _)| *b == ballot);
            if !already {
                self.promised = ballot;
                self.accepted = Some((ballot, value.clone()));
                self.persist(Write::Accept(ballot, value), out);
            }
            out.send(from, Msg::Accepted { ballot });
        } else {
            out.send(
                from,
                Msg::Reject {
                    ballot,
                    promised: self.promised,
                },
            );
        }
    }

    fn on_promise(
        &mut self,
        now: Instant,
        from: NodeId,
        ballot: Ballot,
        acc: Option<(Ballot, V)>,
        out: &mut Out<V>,
    ) {
        let quorum = self.quorum();
        let Phase::Preparing {
            ballot: mine,
            promised,
            highest,
            ..
        } = &mut self.phase
        else {
            return;
        };
        if *mine != ballot || promised[from as usize] {
            return;
        }
        promised[from as usize] = true;
        if let Some((b, v)) = acc {
            keep_highest(highest, b, v);
        }
        if promised.iter().filter(|p| **p).count() < quorum {
            return;
        }
        let own = self.proposal.clone();
        let value = match (highest.take(), own) {
            (Some((_, v)), Some(mine_v)) => {
                if self.bugs.ignore_accepted {
                    mine_v
                } else {
                    v
                }
            }
            (Some((_, v)), None) => v,
            (None, Some(v)) => v,
            // Recovery proposer with nothing reported: propose what we accepted.
            (None, None) => match &self.accepted {
                Some((_, v)) => v.clone(),
                None => return,
            },
        };
        let ballot = *mine;
        self.begin_accept(now, ballot, value, out);
    }

    /// Phase 2: asks every acceptor to accept `value` at `ballot`.
    fn begin_accept(&mut self, now: Instant, ballot: Ballot, value: V, out: &mut Out<V>) {
        self.phase = Phase::Accepting {
            ballot,
            started: now,
            value: value.clone(),
            accepted: vec![false; self.n],
        };
        self.last_send = now;
        self.broadcast(Msg::Accept { ballot, value }, out);
    }

    fn on_accepted(&mut self, from: NodeId, ballot: Ballot, out: &mut Out<V>) {
        let quorum = self.quorum();
        let Phase::Accepting {
            ballot: mine,
            value,
            accepted,
            ..
        } = &mut self.phase
        else {
            return;
        };
        if *mine != ballot || accepted[from as usize] {
            return;
        }
        accepted[from as usize] = true;
        if accepted.iter().filter(|a| **a).count() >= quorum {
            let v = value.clone();
            self.failures = 0;
            self.decide(v.clone(), out);
            for j in 0..self.n as NodeId {
                if j != self.id {
                    out.send(j, Msg::Decided(v.clone()));
                }
            }
        }
    }

    /// Resends the current phase's message to the acceptors that have not answered.
    fn retransmit(&mut self, now: Instant, out: &mut Out<V>) {
        match &self.phase {
            Phase::Preparing {
                ballot, promised, ..
            } => {
                let ballot = *ballot;
                for (j, ok) in promised.iter().enumerate() {
                    if !ok {
                        out.send(j as NodeId, Msg::Prepare { ballot });
                    }
                }
            }
            Phase::Accepting {
                ballot,
                value,
                accepted,
                ..
            } => {
                for (j, ok) in accepted.iter().enumerate() {
                    if !ok {
                        out.send(
                            j as NodeId,
                            Msg::Accept {
                                ballot: *ballot,
                                value: value.clone(),
                            },
                        );
                    }
                }
            }
            Phase::Idle { .. } => return,
        }
        self.last_send = now;
    }

    fn assert_invariants(&self) {
        if let Some((b, _)) = &self.accepted {
            assert!(
                *b <= self.promised,
                "node {}: accepted {b:?} above promise {:?}",
                self.id,
                self.promised
            );
        }
        match &self.phase {
            Phase::Preparing { ballot, .. } | Phase::Accepting { ballot, .. } => {
                assert_eq!(ballot.node, self.id, "running another node's ballot");
                assert!(ballot.round <= self.round, "ballot round not recorded");
            }
            Phase::Idle { .. } => {}
        }
    }
}

impl<V: Clone + Debug + PartialEq> WriteOnceNode<V> for PaxosNode<V> {
    fn decided(&self) -> Option<&V> {
        self.decided.as_ref()
    }
}

impl<V: Clone + Debug + PartialEq> Node for PaxosNode<V> {
    type Msg = Msg<V>;
    type Write = Write<V>;
    type Disk = Disk<V>;
    type Event = Decided<V>;
    type Input = V;

    fn apply_write(disk: &mut Disk<V>, write: &Write<V>) {
        match write {
            Write::Promise(b) => disk.promised = disk.promised.max(*b),
            Write::Accept(b, v) => {
                disk.promised = disk.promised.max(*b);
                disk.accepted = Some((*b, v.clone()));
            }
            Write::Round(r) => disk.round = disk.round.max(*r),
            Write::Proposal(v) => disk.proposal = Some(v.clone()),
            Write::Decided(v) => disk.decided = Some(v.clone()),
        }
    }

    fn step(&mut self, now: Instant, from: NodeId, msg: Msg<V>, out: &mut Out<V>) {
        if from as usize >= self.n {
            return;
        }
        if let Some(d) = &self.decided {
            // Once decided, answer everything with the value: it ends ballots early
            // and brings restarted or partitioned peers up to date.
            // An Accepted arriving after the decision needs no answer: the
            // decision was sent to everyone when it was reached.
            match msg {
                Msg::Decided(_) | Msg::Accepted { .. } => {}
                _ => out.send(from, Msg::Decided(d.clone())),
            }
            return;
        }
        match msg {
            Msg::Prepare { ballot } => {
                self.last_activity = now;
                self.on_prepare(from, ballot, out)
            }
            Msg::Accept { ballot, value } => {
                self.last_activity = now;
                self.on_accept(from, ballot, value, out)
            }
            Msg::Promise { ballot, accepted } => self.on_promise(now, from, ballot, accepted, out),
            Msg::Accepted { ballot } => self.on_accepted(from, ballot, out),
            Msg::Reject { ballot, promised } => {
                self.highest_seen = self.highest_seen.max(promised.round);
                let current = match &self.phase {
                    Phase::Preparing { ballot: b, .. } | Phase::Accepting { ballot: b, .. } => {
                        Some(*b)
                    }
                    Phase::Idle { .. } => None,
                };
                if current == Some(ballot) {
                    self.back_off(now);
                }
            }
            Msg::Decided(v) => self.decide(v, out),
            Msg::Query => {}
        }
        self.assert_invariants();
    }

    fn tick(&mut self, now: Instant, out: &mut Out<V>) {
        if self.decided.is_some() {
            return;
        }
        match &self.phase {
            Phase::Idle { retry_at } => {
                if now >= *retry_at && self.wants_to_propose(now) {
                    self.start_ballot(now, out);
                }
            }
            Phase::Preparing { started, .. } | Phase::Accepting { started, .. } => {
                if now >= started + self.timing.ballot_timeout {
                    self.back_off(now);
                } else if now >= self.last_send + self.timing.retransmit {
                    self.retransmit(now, out);
                }
            }
        }
        let next_query = *self.next_query.get_or_insert(now + self.timing.query);
        if self.proposal.is_none() && now >= next_query {
            self.next_query = Some(now + self.timing.query);
            for j in 0..self.n as NodeId {
                if j != self.id {
                    out.send(j, Msg::Query);
                }
            }
        }
        self.assert_invariants();
    }

    fn input(&mut self, now: Instant, v: V, out: &mut Out<V>) {
        if self.decided.is_some() || self.proposal.is_some() {
            return;
        }
        self.proposal = Some(v.clone());
        out.persist(Write::Proposal(v));
        if matches!(self.phase, Phase::Idle { .. }) {
            self.start_ballot(now, out);
        }
    }

    fn describe(&self) -> String {
        let v = |v: &V| format!("{v:?}").trim_matches('"').to_string();
        let b = |b: &Ballot| format!("{}.{}", b.round, b.node);
        if let Some(d) = &self.decided {
            return format!("decided {}", v(d));
        }
        let mut parts = Vec::new();
        match &self.phase {
            Phase::Preparing { ballot, .. } => parts.push(format!("prepares {}", b(ballot))),
            Phase::Accepting { ballot, value, .. } => {
                parts.push(format!("proposes {} at {}", v(value), b(ballot)))
            }
            Phase::Idle { .. } => {}
        }
        if self.promised != Ballot::ZERO {
            parts.push(format!("promised {}", b(&self.promised)));
        }
        if let Some((ballot, value)) = &self.accepted {
            parts.push(format!("accepted {} at {}", v(value), b(ballot)));
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type O = Out<u64>;

    fn cluster(n: usize) -> Vec<PaxosNode<u64>> {
        (0..n as NodeId)
            .map(|i| PaxosNode::new(i, n, &Disk::default(), i))
            .collect()
    }

    /// Delivers messages until none are left (no faults), returning how many.
    fn settle(
        nodes: &mut [PaxosNode<u64>],
        mut pending: Vec<(NodeId, crate::Envelope<Msg<u64>>)>,
    ) -> usize {
        let mut count = 0;
        while !pending.is_empty() {
            let (from, env) = pending.remove(0);
            count += 1;
            let mut out = O::default();
            nodes[env.to as usize].step(0, from, env.msg, &mut out);
            pending.extend(out.msgs.into_iter().map(|e| (env.to, e)));
        }
        count
    }

    #[test]
    fn one_proposer_decides_its_value_everywhere() {
        let mut nodes = cluster(3);
        let mut out = O::default();
        nodes[0].input(0, 42, &mut out);
        assert_eq!(out.writes[0], Write::Proposal(42));
        settle(&mut nodes, out.msgs.into_iter().map(|e| (0, e)).collect());
        for n in &nodes {
            assert_eq!(n.decided(), Some(&42));
        }
    }

    #[test]
    fn a_later_ballot_adopts_the_accepted_value() {
        let mut nodes = cluster(3);
        // Node 1 accepted 7 at ballot (1, 0); a new proposer with 9 must pick 7.
        let mut out = O::default();
        nodes[1].step(
            0,
            0,
            Msg::Accept {
                ballot: Ballot { round: 1, node: 0 },
                value: 7,
            },
            &mut out,
        );
        let mut out = O::default();
        nodes[2].input(0, 9, &mut out);
        settle(&mut nodes, out.msgs.into_iter().map(|e| (2, e)).collect());
        assert_eq!(nodes[2].decided(), Some(&7));
    }

    #[test]
    fn acceptor_rejects_lower_ballots_and_persists_before_promising() {
        let mut a = PaxosNode::<u64>::new(0, 3, &Disk::default(), 0);
        let mut out = O::default();
        a.step(
            0,
            1,
            Msg::Prepare {
                ballot: Ballot { round: 5, node: 1 },
            },
            &mut out,
        );
        assert_eq!(
            out.writes,
            vec![Write::Promise(Ballot { round: 5, node: 1 })]
        );
        let mut out = O::default();
        a.step(
            0,
            2,
            Msg::Accept {
                ballot: Ballot { round: 4, node: 2 },
                value: 1,
            },
            &mut out,
        );
        assert!(out.writes.is_empty());
        assert!(matches!(out.msgs[0].msg, Msg::Reject { .. }));
    }

    #[test]
    fn restart_never_reuses_a_ballot() {
        let mut disk = Disk::default();
        let mut a = PaxosNode::<u64>::new(0, 3, &disk, 0);
        let mut out = O::default();
        a.input(0, 1, &mut out);
        for w in &out.writes {
            PaxosNode::apply_write(&mut disk, w);
        }
        let mut b = PaxosNode::<u64>::new(0, 3, &disk, 1);
        let mut out = O::default();
        b.tick(0, &mut out);
        let rounds: Vec<_> = out
            .writes
            .iter()
            .filter_map(|w| {
                if let Write::Round(r) = w {
                    Some(*r)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(
            rounds,
            vec![2],
            "the restarted proposer resumes with a fresh round"
        );
    }
}
