//! The single-coordinator write-once variable.
//!
//! The bully rule picks the node with the highest id as coordinator; it decides
//! the first proposal it receives and tells whoever asks. It is safe — only one
//! node ever decides anything — but it is not fault-tolerant: while the
//! coordinator is down nobody can decide, and electing a replacement would risk
//! two coordinators deciding differently (split brain). The simulator shows both.

use crate::sansio::{Instant, Node, NodeId, Output, MS};
use crate::write_once::{Decided, WriteOnceNode};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg<V> {
    /// Please decide this value (or tell me what you decided).
    Propose(V),
    /// What did you decide?
    Query,
    /// The final value.
    Decided(V),
}

/// The coordinator's durable state is its decision; followers also keep theirs
/// so that a restart never forgets what they reported.
pub type Disk<V> = Option<V>;

#[derive(Clone, Debug)]
pub struct CoordinatorNode<V> {
    id: NodeId,
    coordinator: NodeId,
    proposal: Option<V>,
    decided: Option<V>,
    next_retry: Instant,
}

/// How often an undecided node asks the coordinator again.
const RETRY: Instant = 50 * MS;

impl<V: Clone + Debug + PartialEq> CoordinatorNode<V> {
    /// Node `id` in a cluster of `n` nodes with ids `0..n`.
    pub fn new(id: NodeId, n: usize, disk: &Disk<V>) -> Self {
        assert!(
            n > 0 && id < n as NodeId,
            "node {id} is not in a cluster of {n}"
        );
        // The bully rule: the highest id is the coordinator.
        CoordinatorNode {
            id,
            coordinator: n as NodeId - 1,
            proposal: None,
            decided: disk.clone(),
            next_retry: 0,
        }
    }

    fn is_coordinator(&self) -> bool {
        self.id == self.coordinator
    }

    fn decide(&mut self, v: V, out: &mut Output<V, Msg<V>, Decided<V>>) {
        match &self.decided {
            Some(d) => assert_eq!(
                *d, v,
                "coordinator node {} was told two different final values",
                self.id
            ),
            None => {
                self.decided = Some(v.clone());
                out.persist(v.clone());
                out.emit(Decided(v));
            }
        }
    }

    fn ask(&mut self, now: Instant, out: &mut Output<V, Msg<V>, Decided<V>>) {
        self.next_retry = now + RETRY;
        let msg = match &self.proposal {
            Some(v) => Msg::Propose(v.clone()),
            None => Msg::Query,
        };
        out.send(self.coordinator, msg);
    }
}

impl<V: Clone + Debug + PartialEq> WriteOnceNode<V> for CoordinatorNode<V> {
    fn decided(&self) -> Option<&V> {
        self.decided.as_ref()
    }
}

impl<V: Clone + Debug + PartialEq> Node for CoordinatorNode<V> {
    type Msg = Msg<V>;
    type Write = V;
    type Disk = Disk<V>;
    type Event = Decided<V>;
    type Input = V;

    fn apply_write(disk: &mut Disk<V>, write: &V) {
        *disk = Some(write.clone());
    }

    fn step(
        &mut self,
        _now: Instant,
        from: NodeId,
        msg: Msg<V>,
        out: &mut Output<V, Msg<V>, Decided<V>>,
    ) {
        match msg {
            Msg::Propose(v) if self.is_coordinator() => {
                if self.decided.is_none() {
                    self.decide(v, out);
                }
                out.send(
                    from,
                    Msg::Decided(self.decided.clone().expect("decided above")),
                );
            }
            Msg::Query if self.is_coordinator() => {
                if let Some(d) = &self.decided {
                    out.send(from, Msg::Decided(d.clone()));
                }
            }
            Msg::Decided(v) if from == self.coordinator => self.decide(v, out),
            // Messages that only the coordinator should get, or decisions from a
            // node that is not the coordinator, are ignored.
            _ => {}
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Output<V, Msg<V>, Decided<V>>) {
        if self.decided.is_none() && !self.is_coordinator() && now >= self.next_retry {
            self.ask(now, out);
        }
    }

    fn input(&mut self, now: Instant, v: V, out: &mut Output<V, Msg<V>, Decided<V>>) {
        if self.is_coordinator() {
            if self.decided.is_none() {
                self.decide(v, out);
            }
            return;
        }
        if self.proposal.is_none() {
            self.proposal = Some(v);
        }
        if self.decided.is_none() {
            self.ask(now, out);
        }
    }

    fn describe(&self) -> String {
        let v = |v: &V| format!("{v:?}").trim_matches('"').to_string();
        let role = if self.is_coordinator() {
            "coordinator"
        } else {
            ""
        };
        match (&self.decided, &self.proposal) {
            (Some(d), _) => format!("{role} decided {}", v(d)).trim().to_string(),
            (None, Some(p)) => format!("{role} asks for {}", v(p)).trim().to_string(),
            (None, None) => role.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Out = Output<u64, Msg<u64>, Decided<u64>>;

    #[test]
    fn first_proposal_to_reach_the_coordinator_wins() {
        let mut c = CoordinatorNode::<u64>::new(2, 3, &None);
        let mut out = Out::default();
        c.step(0, 0, Msg::Propose(7), &mut out);
        assert_eq!(out.writes, vec![7]);
        assert_eq!(out.events, vec![Decided(7)]);
        out.clear();
        c.step(0, 1, Msg::Propose(9), &mut out);
        assert!(out.writes.is_empty());
        assert_eq!(out.msgs[0].msg, Msg::Decided(7));
    }

    #[test]
    fn follower_asks_until_told_and_remembers_across_restart() {
        let mut f = CoordinatorNode::<u64>::new(0, 3, &None);
        let mut out = Out::default();
        f.input(0, 5, &mut out);
        assert_eq!(out.msgs[0].to, 2);
        out.clear();
        f.tick(RETRY, &mut out);
        assert_eq!(out.msgs.len(), 1, "retries after the timeout");
        out.clear();
        f.step(RETRY, 2, Msg::Decided(5), &mut out);
        let mut disk = None;
        for w in &out.writes {
            CoordinatorNode::apply_write(&mut disk, w);
        }
        let g = CoordinatorNode::<u64>::new(0, 3, &disk);
        assert_eq!(g.decided(), Some(&5));
    }
}
