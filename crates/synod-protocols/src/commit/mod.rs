//! Atomic commit: every participant of a transaction ends with the same outcome,
//! and the outcome is *commit* only if every participant voted yes.
//!
//! Three protocols share the vocabulary defined here:
//!
//! | module | how the outcome is reached | what goes wrong |
//! | --- | --- | --- |
//! | [`two_pc`] | one coordinator collects votes and logs the decision | blocks while the coordinator is down after the votes are in |
//! | [`three_pc`] | an extra pre-commit round and timeout-driven termination | a network partition can split the outcome |
//! | [`paxos_commit`] | each participant's vote is a Paxos write-once instance | nothing, while a majority of nodes is up |
//!
//! # Cluster layout
//!
//! A cluster has `n` nodes. Node 0 is the coordinator (the transaction manager),
//! nodes `1..=k` are the participants of every transaction, and any further nodes
//! take no part in 2PC and 3PC. In Paxos Commit every one of the `n` nodes is an
//! acceptor, so the vote instances tolerate ⌊(n−1)/2⌋ nodes down. See [`Layout`].
//!
//! # Votes and locks
//!
//! Whether a participant is willing to commit a transaction is the application's
//! business; here a [`VotePlan`] (a seeded function of the transaction and the
//! participant) stands in for it. A participant also holds one lock, on the data
//! every transaction touches: it takes the lock when it votes yes and keeps it
//! until it learns the outcome. A participant asked to vote while it holds the
//! lock for another transaction votes no.

use crate::sansio::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub mod paxos_commit;
pub mod three_pc;
pub mod two_pc;

/// Identifies a transaction.
pub type TxnId = u64;

/// How a transaction ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    Commit,
    Abort,
}

/// A request from the application: the coordinator starts a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitInput {
    Begin(TxnId),
}

/// What a commit node reports, always after the record behind it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitEvent {
    /// A participant cast its vote (`yes` also means it now holds the lock).
    Voted { txn: TxnId, yes: bool },
    /// A participant learned the outcome (and released the lock).
    Outcome { txn: TxnId, outcome: Outcome },
    /// The coordinator decided (it is not a participant; informational).
    Decided { txn: TxnId, outcome: Outcome },
}

/// Which node plays which role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Participants per transaction: nodes `1..=participants`.
    pub participants: usize,
}

impl Layout {
    pub const COORDINATOR: NodeId = 0;

    /// Panics unless the coordinator and `participants` participants fit in `nodes`.
    pub fn new(nodes: usize, participants: usize) -> Layout {
        assert!(
            participants >= 1 && participants < nodes,
            "{participants} participants and a coordinator do not fit in {nodes} nodes"
        );
        Layout {
            nodes,
            participants,
        }
    }

    pub fn is_participant(&self, id: NodeId) -> bool {
        id >= 1 && id as usize <= self.participants
    }

    pub fn participants(&self) -> impl Iterator<Item = NodeId> {
        1..=self.participants as NodeId
    }

    /// 0 for the first participant, 1 for the second, ...
    pub fn rank(&self, id: NodeId) -> u64 {
        id.saturating_sub(1)
    }
}

/// The application's willingness to commit, decided up front from a seed so a
/// run replays exactly: participant `p` votes yes on `txn` with probability
/// `yes_percent`%.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VotePlan {
    pub seed: u64,
    pub yes_percent: u64,
}

impl VotePlan {
    pub fn new(seed: u64) -> VotePlan {
        VotePlan {
            seed,
            yes_percent: 80,
        }
    }

    /// Every participant always votes yes.
    pub fn all_yes() -> VotePlan {
        VotePlan {
            seed: 0,
            yes_percent: 100,
        }
    }

    pub fn votes_yes(&self, txn: TxnId, participant: NodeId) -> bool {
        let h =
            mix(self.seed
                ^ mix(txn.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ participant.wrapping_add(1)));
        h % 100 < self.yes_percent
    }
}

/// A 64-bit finaliser (the one from SplitMix64): spreads every input bit over the output.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// What the simulator's checkers may ask any commit node.
pub trait CommitNode {
    /// Transactions in which this participant voted yes but does not know the
    /// outcome: it is in doubt and holds the lock.
    fn in_doubt(&self) -> Vec<TxnId>;
    /// The outcome of `txn` as this node knows it.
    fn outcome(&self, txn: TxnId) -> Option<Outcome>;
    /// The vote this participant cast on `txn`, as far as it remembers.
    fn vote(&self, txn: TxnId) -> Option<bool>;
    /// This participant took part in a transaction whose outcome it does not know.
    fn unresolved(&self) -> bool;
}

/// 2PC and 3PC nodes keep everything a checker asks about in one [`Log`];
/// this gives them [`CommitNode`] from it.
pub(crate) trait LoggedNode {
    fn commit_log(&self) -> &Log;
    /// Whether this node is a participant (not the coordinator or a bystander).
    fn participates(&self) -> bool;
}

impl<T: LoggedNode> CommitNode for T {
    fn in_doubt(&self) -> Vec<TxnId> {
        self.commit_log().in_doubt()
    }
    fn outcome(&self, txn: TxnId) -> Option<Outcome> {
        self.commit_log().get(txn).and_then(|r| r.outcome)
    }
    fn vote(&self, txn: TxnId) -> Option<bool> {
        self.commit_log().get(txn).and_then(|r| r.vote)
    }
    fn unresolved(&self) -> bool {
        self.participates() && self.commit_log().lock_holder().is_some()
    }
}

/// One transaction as recorded on a 2PC or 3PC node's disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRecord {
    /// Participant: the vote it cast.
    pub vote: Option<bool>,
    /// Participant (3PC): it acknowledged a pre-commit.
    pub precommitted: bool,
    /// Participant: the outcome it learned.
    pub outcome: Option<Outcome>,
    /// Coordinator (3PC): it started sending pre-commits.
    pub coord_precommit: bool,
    /// Coordinator: its decision.
    pub decision: Option<Outcome>,
}

impl TxnRecord {
    /// Voted yes and does not know the outcome.
    pub fn in_doubt(&self) -> bool {
        self.vote == Some(true) && self.outcome.is_none()
    }
}

/// A durable record of the 2PC and 3PC nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogWrite {
    Vote(TxnId, bool),
    PreCommit(TxnId),
    Outcome(TxnId, Outcome),
    CoordPreCommit(TxnId),
    Decision(TxnId, Outcome),
}

/// The durable image of a 2PC or 3PC node: one record per transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log {
    pub txns: BTreeMap<TxnId, TxnRecord>,
}

impl Log {
    pub fn apply(&mut self, w: &LogWrite) {
        match *w {
            LogWrite::Vote(t, yes) => self.txns.entry(t).or_default().vote = Some(yes),
            LogWrite::PreCommit(t) => self.txns.entry(t).or_default().precommitted = true,
            LogWrite::Outcome(t, o) => self.txns.entry(t).or_default().outcome = Some(o),
            LogWrite::CoordPreCommit(t) => self.txns.entry(t).or_default().coord_precommit = true,
            LogWrite::Decision(t, o) => self.txns.entry(t).or_default().decision = Some(o),
        }
    }

    pub fn get(&self, txn: TxnId) -> Option<&TxnRecord> {
        self.txns.get(&txn)
    }

    /// The transaction this participant holds the lock for, if any.
    pub fn lock_holder(&self) -> Option<TxnId> {
        self.txns
            .iter()
            .find(|(_, r)| r.in_doubt())
            .map(|(t, _)| *t)
    }

    pub fn in_doubt(&self) -> Vec<TxnId> {
        self.txns
            .iter()
            .filter(|(_, r)| r.in_doubt())
            .map(|(t, _)| *t)
            .collect()
    }

    /// The latest transaction's state in a few words, for pictures of runs.
    pub fn describe(&self) -> String {
        let Some((txn, r)) = self.txns.iter().next_back() else {
            return String::new();
        };
        let word = |o: Outcome| match o {
            Outcome::Commit => "commit",
            Outcome::Abort => "abort",
        };
        let mut parts = Vec::new();
        if let Some(yes) = r.vote {
            parts.push(if yes { "voted yes" } else { "voted no" }.to_string());
        }
        if r.precommitted || r.coord_precommit {
            parts.push("pre-committed".to_string());
        }
        if let Some(d) = r.decision {
            parts.push(format!("decided {}", word(d)));
        }
        if let Some(o) = r.outcome {
            parts.push(format!("learned {}", word(o)));
        }
        if r.in_doubt() {
            parts.push("in doubt".to_string());
        }
        format!("txn {txn}: {}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vote_plan_is_deterministic_and_mostly_yes() {
        let plan = VotePlan::new(7);
        let yes = (0..1000u64).filter(|t| plan.votes_yes(*t, 1)).count();
        assert!((700..900).contains(&yes), "{yes}");
        assert_eq!(plan.votes_yes(3, 2), VotePlan::new(7).votes_yes(3, 2));
        assert!((0..100).all(|t| VotePlan::all_yes().votes_yes(t, 1)));
    }

    #[test]
    fn log_tracks_the_lock() {
        let mut log = Log::default();
        log.apply(&LogWrite::Vote(1, true));
        assert_eq!(log.lock_holder(), Some(1));
        log.apply(&LogWrite::Outcome(1, Outcome::Commit));
        assert_eq!(log.lock_holder(), None);
    }
}
