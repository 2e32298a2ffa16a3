//! Majority-rules voting: every node votes once, for the first proposal it hears,
//! and a value is final when a majority of distinct voters is known to hold it.
//!
//! Safe — two majorities share a voter, and a vote never changes (it is persisted
//! before it is announced) — but it can get stuck: with 7 nodes a 3–3 split leaves
//! the decision to the seventh, and if that node crashes nobody can ever decide.
//! Votes cannot be taken back, so there is no way out of the split.

use crate::sansio::{Instant, Node, NodeId, Output, MS};
use crate::write_once::{Decided, WriteOnceNode};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg<V> {
    /// Please vote for this value, if you have not voted yet.
    Propose(V),
    /// The sender voted for this value. `reply` asks for the receiver's own vote back.
    Vote { value: V, reply: bool },
    /// The sender has not voted and wants to hear votes.
    Query,
    /// The final value.
    Decided(V),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write<V> {
    Vote(V),
    Decided(V),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk<V> {
    pub vote: Option<V>,
    pub decided: Option<V>,
}

impl<V> Default for Disk<V> {
    fn default() -> Self {
        Disk {
            vote: None,
            decided: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct MajorityNode<V> {
    id: NodeId,
    n: usize,
    vote: Option<V>,
    /// votes[j] = what node j told us it voted for (volatile; relearned after restarts).
    votes: Vec<Option<V>>,
    decided: Option<V>,
    next_retry: Instant,
}

const RETRY: Instant = 50 * MS;

type Out<V> = Output<Write<V>, Msg<V>, Decided<V>>;

impl<V: Clone + Debug + PartialEq> MajorityNode<V> {
    pub fn new(id: NodeId, n: usize, disk: &Disk<V>) -> Self {
        assert!(
            n > 0 && id < n as NodeId,
            "node {id} is not in a cluster of {n}"
        );
        let mut votes = vec![None; n];
        votes[id as usize] = disk.vote.clone();
        MajorityNode {
            id,
            n,
            vote: disk.vote.clone(),
            votes,
            decided: disk.decided.clone(),
            next_retry: 0,
        }
    }

    fn broadcast(&self, msg: Msg<V>, out: &mut Out<V>) {
        for j in 0..self.n as NodeId {
            if j != self.id {
                out.send(j, msg.clone());
            }
        }
    }

    fn cast_vote(&mut self, v: V, out: &mut Out<V>) {
        if self.vote.is_some() {
            return;
        }
        self.vote = Some(v.clone());
        self.votes[self.id as usize] = Some(v.clone());
        out.persist(Write::Vote(v.clone()));
        self.broadcast(
            Msg::Vote {
                value: v.clone(),
                reply: self.decided.is_none(),
            },
            out,
        );
        self.count(v, out);
    }

    fn count(&mut self, v: V, out: &mut Out<V>) {
        if self.decided.is_some() {
            return;
        }
        let holders = self.votes.iter().filter(|x| x.as_ref() == Some(&v)).count();
        if holders > self.n / 2 {
            self.decide(v, out);
        }
    }

    fn decide(&mut self, v: V, out: &mut Out<V>) {
        match &self.decided {
            Some(d) => assert_eq!(*d, v, "node {} saw two different majorities", self.id),
            None => {
                self.decided = Some(v.clone());
                out.persist(Write::Decided(v.clone()));
                out.emit(Decided(v));
            }
        }
    }
}

impl<V: Clone + Debug + PartialEq> WriteOnceNode<V> for MajorityNode<V> {
    fn decided(&self) -> Option<&V> {
        self.decided.as_ref()
    }
}

impl<V: Clone + Debug + PartialEq> Node for MajorityNode<V> {
    type Msg = Msg<V>;
    type Write = Write<V>;
    type Disk = Disk<V>;
    type Event = Decided<V>;
    type Input = V;

    fn apply_write(disk: &mut Disk<V>, write: &Write<V>) {
        match write {
            Write::Vote(v) => disk.vote = Some(v.clone()),
            Write::Decided(v) => disk.decided = Some(v.clone()),
        }
    }

    fn step(&mut self, _now: Instant, from: NodeId, msg: Msg<V>, out: &mut Out<V>) {
        if from as usize >= self.n {
            return;
        }
        match msg {
            Msg::Propose(v) => {
                self.cast_vote(v, out);
                if let Some(d) = &self.decided {
                    out.send(from, Msg::Decided(d.clone()));
                }
            }
            Msg::Vote { value, reply } => {
                self.votes[from as usize] = Some(value.clone());
                // A peer's vote names a proposal: a node that has not voted
                // votes for the first one it hears of, however it hears. A
                // node cut off while the proposals went round (the seventh
                // of a 3-3 split) so still votes once the network heals.
                self.cast_vote(value.clone(), out);
                if reply {
                    if let Some(d) = &self.decided {
                        out.send(from, Msg::Decided(d.clone()));
                    } else if let Some(mine) = &self.vote {
                        out.send(
                            from,
                            Msg::Vote {
                                value: mine.clone(),
                                reply: false,
                            },
                        );
                    }
                }
                self.count(value, out);
            }
            Msg::Query => {
                if let Some(d) = &self.decided {
                    out.send(from, Msg::Decided(d.clone()));
                } else if let Some(mine) = &self.vote {
                    out.send(
                        from,
                        Msg::Vote {
                            value: mine.clone(),
                            reply: false,
                        },
                    );
                }
            }
            Msg::Decided(v) => self.decide(v, out),
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Out<V>) {
        if self.decided.is_some() || now < self.next_retry {
            return;
        }
        self.next_retry = now + RETRY;
        let msg = match &self.vote {
            Some(v) => Msg::Vote {
                value: v.clone(),
                reply: true,
            },
            None => Msg::Query,
        };
        self.broadcast(msg, out);
    }

    fn input(&mut self, _now: Instant, v: V, out: &mut Out<V>) {
        if self.decided.is_some() {
            return;
        }
        // A proposer asks everyone to vote for its value, and votes for it itself
        // unless it already voted for something else.
        self.broadcast(Msg::Propose(v.clone()), out);
        self.cast_vote(v, out);
    }

    fn describe(&self) -> String {
        let v = |v: &V| format!("{v:?}").trim_matches('"').to_string();
        match (&self.decided, &self.vote) {
            (Some(d), _) => format!("decided {}", v(d)),
            (None, Some(mine)) => {
                // The tally as this node knows it: "voted 0; of 7: 3 for 0, 3 for 1".
                let mut tally: Vec<(&V, usize)> = Vec::new();
                for x in self.votes.iter().flatten() {
                    match tally.iter_mut().find(|(y, _)| *y == x) {
                        Some((_, k)) => *k += 1,
                        None => tally.push((x, 1)),
                    }
                }
                let tally: Vec<String> = tally
                    .iter()
                    .map(|(x, k)| format!("{k} for {}", v(x)))
                    .collect();
                format!("voted {}; of {}: {}", v(mine), self.n, tally.join(", "))
            }
            (None, None) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_when_a_majority_of_distinct_voters_agree() {
        let mut a = MajorityNode::<u64>::new(0, 3, &Disk::default());
        let mut out = Out::default();
        a.input(0, 1, &mut out);
        assert_eq!(out.writes, vec![Write::Vote(1)]);
        assert!(out.events.is_empty());
        out.clear();
        // The same voter twice does not make a majority.
        a.step(
            0,
            0,
            Msg::Vote {
                value: 1,
                reply: false,
            },
            &mut out,
        );
        assert!(out.events.is_empty());
        a.step(
            0,
            2,
            Msg::Vote {
                value: 1,
                reply: false,
            },
            &mut out,
        );
        assert_eq!(out.events, vec![Decided(1)]);
    }

    #[test]
    fn a_vote_is_never_changed() {
        let mut a = MajorityNode::<u64>::new(
            1,
            3,
            &Disk {
                vote: Some(4),
                decided: None,
            },
        );
        let mut out = Out::default();
        a.step(0, 0, Msg::Propose(5), &mut out);
        assert!(
            out.writes.is_empty(),
            "voted before the restart, so no new vote"
        );
    }
}
