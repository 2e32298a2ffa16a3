//! The coordinator design with automatic failover — **unsafe on purpose**.
//!
//! [`crate::coordinator`] is safe but stops when its coordinator dies. The
//! obvious repair is to let the others replace it: every node says "still
//! here" to every other, and each node follows the highest id it has heard
//! from lately (itself included). When the coordinator goes quiet, the next
//! highest id takes over.
//!
//! It fails twice over. Split the network, and each side hears only its
//! own members, follows its own coordinator, and decides whatever reaches
//! that coordinator first: two final values, split brain. And a coordinator
//! that decides and dies before telling anyone leaves a successor that
//! decides afresh. A timeout cannot tell a dead coordinator from an
//! unreachable one, the old coordinator's decision dies with it, and
//! choosing the replacement is itself a consensus problem. synod keeps
//! this node only to show that (`synod story split-brain`, and the
//! simulator's agreement checker catching it under `synod sim --algo
//! failover`); nothing else uses it.

use crate::sansio::{Instant, Node, NodeId, Output, MS};
use crate::write_once::{Decided, WriteOnceNode};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg<V> {
    /// "I am still here" (sent to everyone, every [`BEAT`]).
    Heartbeat,
    /// Please decide this value (or tell me what you decided).
    Propose(V),
    /// What did you decide?
    Query,
    /// The final value, as the coordinator that sends it decided it.
    Decided(V),
}

/// A node keeps its decision, as the coordinator's followers do.
pub type Disk<V> = Option<V>;

/// How often a node says it is still here.
pub const BEAT: Instant = 50 * MS;
/// A node not heard from for this long is taken for dead.
pub const TIMEOUT: Instant = 180 * MS;
/// How often an undecided node asks its coordinator again.
const RETRY: Instant = 50 * MS;

#[derive(Clone, Debug)]
pub struct FailoverNode<V> {
    id: NodeId,
    /// When each node was last heard from (`None`: not since this boot).
    heard: Vec<Option<Instant>>,
    /// The first tick since boot: everyone counts as alive for one timeout
    /// after it, so that a fresh cluster starts with one coordinator.
    booted: Option<Instant>,
    /// Who this node follows (the highest id it has heard from lately).
    coordinator: NodeId,
    proposal: Option<V>,
    decided: Option<V>,
    next_beat: Instant,
    next_retry: Instant,
}

type Out<V> = Output<V, Msg<V>, Decided<V>>;

impl<V: Clone + Debug + PartialEq> FailoverNode<V> {
    /// Node `id` in a cluster of `n` nodes with ids `0..n`.
    pub fn new(id: NodeId, n: usize, disk: &Disk<V>) -> Self {
        assert!(
            n > 0 && id < n as NodeId,
            "node {id} is not in a cluster of {n}"
        );
        FailoverNode {
            id,
            heard: vec![None; n],
            booted: None,
            coordinator: n as NodeId - 1,
            proposal: None,
            decided: disk.clone(),
            next_beat: 0,
            next_retry: 0,
        }
    }

    /// The node this one follows.
    pub fn coordinator(&self) -> NodeId {
        self.coordinator
    }

    fn is_coordinator(&self) -> bool {
        self.id == self.coordinator
    }

    /// Re-picks the coordinator: the highest id heard from within the timeout.
    fn follow(&mut self, now: Instant) {
        let booted = self.booted.unwrap_or(now);
        let alive = |p: usize, heard: Option<Instant>| {
            p as NodeId == self.id || heard.unwrap_or(booted).max(booted) + TIMEOUT > now
        };
        self.coordinator = (0..self.heard.len())
            .rev()
            .find(|&p| alive(p, self.heard[p]))
            .expect("a node is always alive to itself") as NodeId;
    }

    /// The design's flaw is not here: a node never changes its own decision.
    /// It is that two coordinators can each make one.
    fn decide(&mut self, v: V, out: &mut Out<V>) {
        if self.decided.is_none() {
            self.decided = Some(v.clone());
            out.persist(v.clone());
            out.emit(Decided(v));
        }
    }

    fn ask(&mut self, now: Instant, out: &mut Out<V>) {
        self.next_retry = now + RETRY;
        let msg = match &self.proposal {
            Some(v) => Msg::Propose(v.clone()),
            None => Msg::Query,
        };
        out.send(self.coordinator, msg);
    }
}

impl<V: Clone + Debug + PartialEq> WriteOnceNode<V> for FailoverNode<V> {
    fn decided(&self) -> Option<&V> {
        self.decided.as_ref()
    }
}

impl<V: Clone + Debug + PartialEq> Node for FailoverNode<V> {
    type Msg = Msg<V>;
    type Write = V;
    type Disk = Disk<V>;
    type Event = Decided<V>;
    type Input = V;

    fn apply_write(disk: &mut Disk<V>, write: &V) {
        *disk = Some(write.clone());
    }

    fn step(&mut self, now: Instant, from: NodeId, msg: Msg<V>, out: &mut Out<V>) {
        if let Some(h) = self.heard.get_mut(from as usize) {
            *h = Some(now);
        }
        self.follow(now);
        match msg {
            Msg::Heartbeat => {}
            Msg::Propose(v) if self.is_coordinator() => {
                self.decide(v, out);
                let d = self.decided.clone().expect("decided above");
                out.send(from, Msg::Decided(d));
            }
            Msg::Query if self.is_coordinator() => {
                if let Some(d) = &self.decided {
                    out.send(from, Msg::Decided(d.clone()));
                }
            }
            Msg::Decided(v) if from == self.coordinator => self.decide(v, out),
            // A proposal sent to a node that no longer leads, or a decision
            // from a node this one does not follow, is ignored.
            _ => {}
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Out<V>) {
        self.booted.get_or_insert(now);
        self.follow(now);
        if now >= self.next_beat {
            self.next_beat = now + BEAT;
            for p in 0..self.heard.len() as NodeId {
                if p != self.id {
                    out.send(p, Msg::Heartbeat);
                }
            }
        }
        if self.decided.is_none() && !self.is_coordinator() && now >= self.next_retry {
            self.ask(now, out);
        }
    }

    fn input(&mut self, now: Instant, v: V, out: &mut Out<V>) {
        self.follow(now);
        if self.proposal.is_none() {
            self.proposal = Some(v.clone());
        }
        if self.is_coordinator() {
            self.decide(v, out);
        } else if self.decided.is_none() {
            self.ask(now, out);
        }
    }

    fn describe(&self) -> String {
        let v = |v: &V| format!("{v:?}").trim_matches('"').to_string();
        let role = if self.is_coordinator() {
            "coordinator".to_string()
        } else {
            format!("follows n{}", self.coordinator)
        };
        match (&self.decided, &self.proposal) {
            (Some(d), _) => format!("{role}, decided {}", v(d)),
            (None, Some(p)) => format!("{role}, asks for {}", v(p)),
            (None, None) => role,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type O = Out<u64>;

    fn beat(node: &mut FailoverNode<u64>, now: Instant, from: NodeId) {
        node.step(now, from, Msg::Heartbeat, &mut O::default());
    }

    #[test]
    fn the_highest_id_leads_while_it_is_heard() {
        let mut n = FailoverNode::<u64>::new(0, 3, &None);
        n.tick(0, &mut O::default());
        assert_eq!(n.coordinator(), 2);
        beat(&mut n, 100 * MS, 2);
        n.tick(200 * MS, &mut O::default());
        assert_eq!(n.coordinator(), 2, "heard 100 ms ago");
    }

    #[test]
    fn a_quiet_coordinator_is_replaced_by_the_next_id() {
        let mut n = FailoverNode::<u64>::new(0, 3, &None);
        n.tick(0, &mut O::default());
        beat(&mut n, 100 * MS, 1);
        n.tick(TIMEOUT + MS, &mut O::default());
        assert_eq!(n.coordinator(), 1, "n2 is silent, n1 was heard");
        n.tick(100 * MS + TIMEOUT + MS, &mut O::default());
        assert_eq!(n.coordinator(), 0, "nobody heard: it follows itself");
    }

    /// The flaw itself, without a simulator: two sides of a split each
    /// decide their own value.
    #[test]
    fn two_sides_of_a_split_decide_two_values() {
        // n2 (coordinator) hears only n1; n0 hears nobody and leads itself.
        let mut n0 = FailoverNode::<u64>::new(0, 3, &None);
        let mut n2 = FailoverNode::<u64>::new(2, 3, &None);
        let t = TIMEOUT + MS;
        n0.tick(0, &mut O::default());
        n2.tick(0, &mut O::default());
        beat(&mut n2, t - MS, 1);
        let (mut o0, mut o2) = (O::default(), O::default());
        n0.input(t, 7, &mut o0);
        n2.input(t, 9, &mut o2);
        assert_eq!(n0.decided(), Some(&7));
        assert_eq!(n2.decided(), Some(&9));
    }
}
