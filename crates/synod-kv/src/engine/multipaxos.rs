//! The store on the Multi-Paxos log ([`synod_protocols::multipaxos`]).
//!
//! Multi-Paxos assigns a proposal its slot only when the leader's window
//! lets it out, and a new leader may carry an older leader's value into a
//! slot, so a slot number says nothing about whose request a value
//! answers. Each command therefore travels [`Stamped`] with its proposer,
//! the round of the ballot it was proposed under and a ticket: a leader
//! answers a request when a value with its own id, its current round and
//! the request's ticket is applied (a leader proposes one value per ticket,
//! and rounds are never reused, not even across restarts).
//!
//! Differences from Raft that a client can see: members join as voters at
//! once (there are no learners: a new acceptor takes part in new slots
//! with an empty log and catches up by `Learn` and snapshots), a change of
//! members is answered when its slot is applied and governs the slots a
//! window later (the leader fills the window with no-ops), and leadership
//! moves by election only.

use super::{Applied, AppliedData, ConfOutcome, Engine};
use crate::replica::{ConfRefusal, Out, ReplicaConfig, ReplicaState};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use synod_protocols::multipaxos::{
    self as mp, Command, Config, Disk, Event, Members, Msg, MultiPaxosNode, Write,
};
use synod_protocols::raft::{ConfChange, ConfState, Payload};
use synod_protocols::{NodeId, Output};

/// A command as the log holds it (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stamped {
    pub by: NodeId,
    pub round: u64,
    pub ticket: u64,
    pub data: Payload,
}

/// One member's Multi-Paxos node with the store on top.
#[derive(Clone, Debug)]
pub struct MultiPaxosEngine {
    core: MultiPaxosNode<Stamped>,
    state: ReplicaState,
    /// Reused for every call into the core.
    scratch: mp::Out<Stamped>,
    /// The round of the ballot this member leads with.
    leading: Option<u64>,
    next_ticket: u64,
    /// The change of members this leader proposed and has not seen
    /// applied: the members, its ticket and round.
    conf: Option<(Members, u64, u64)>,
    /// The applied slot of a snapshot being encoded by the driver.
    encoding: Option<u64>,
}

/// The Multi-Paxos configuration the service's configuration implies.
fn config(cfg: &ReplicaConfig) -> Config {
    let raft = &cfg.raft;
    // `n` only numbers the default first members, which `boot` replaces
    // with the configured voters.
    let mut c = Config::new(raft.id, raft.peers.len().max(1));
    c.election_ticks = raft.election_ticks;
    c.snapshot_every = raft.snapshot_every;
    c
}

impl MultiPaxosEngine {
    /// The Multi-Paxos node, for checkers.
    pub fn core(&self) -> &MultiPaxosNode<Stamped> {
        &self.core
    }

    /// Runs `f` on the core as one step and hands its output over: writes
    /// and messages as they are, events to the store.
    fn call<R>(
        &mut self,
        out: &mut Out<Self>,
        f: impl FnOnce(&mut MultiPaxosNode<Stamped>, &mut mp::Out<Stamped>) -> R,
    ) -> R {
        let mut inner = std::mem::take(&mut self.scratch);
        let r = f(&mut self.core, &mut inner);
        out.writes.append(&mut inner.writes);
        out.msgs.append(&mut inner.msgs);
        let mut events = std::mem::take(&mut inner.events);
        self.scratch = inner;
        for e in events.drain(..) {
            self.event(e, out);
        }
        r
    }

    fn event(&mut self, e: Event<Stamped>, out: &mut Out<Self>) {
        match e {
            Event::Applied { slot, cmd } => self.apply(slot, &cmd, out),
            Event::BecameLeader { ballot } => {
                self.leading = Some(ballot.round);
                let election = u64::from(self.core.config().election_ticks);
                self.state.became_leader(ballot.round, election, out);
            }
            Event::SteppedDown => {
                self.leading = None;
                self.conf = None;
                self.state.stepped_down(out);
            }
            Event::Restored(snap) => {
                self.state.restore(&snap.data);
                self.encoding = None;
            }
            Event::ReadReady { id } => self.state.read_ready(id, self.core.applied()),
        }
    }

    fn apply<W, M>(
        &mut self,
        slot: u64,
        cmd: &Command<Stamped>,
        out: &mut Output<W, M, crate::replica::ReplicaEvent>,
    ) {
        let me = self.core.id();
        let mut inherited = false;
        let (data, term, ticket) = match cmd {
            Command::App(s) => {
                let mine = s.by == me && self.leading == Some(s.round);
                inherited = self.leading.is_some_and(|r| s.round < r);
                (
                    AppliedData::App(&s.data),
                    s.round,
                    mine.then_some((s.ticket, s.round)),
                )
            }
            Command::Members(m) => {
                let ticket = match &self.conf {
                    Some((want, ticket, round)) if want == m => Some((*ticket, *round)),
                    _ => None,
                };
                if ticket.is_some() {
                    self.conf = None;
                }
                (AppliedData::Conf, 0, ticket)
            }
            Command::Noop => (AppliedData::Noop, 0, None),
        };
        let view = Applied {
            index: slot,
            term,
            digest: mp::kv_node::digest(cmd),
            data,
            ticket,
            inherited,
        };
        self.state.apply(view, out);
    }

    /// Compacts the log behind the store every `snapshot_every` applied
    /// slots (one snapshot at a time when the driver encodes them).
    fn snapshot_if_due(&mut self, out: &mut Out<Self>) {
        let every = self.core.config().snapshot_every;
        let applied = self.core.applied();
        if every == 0 || self.encoding.is_some() || applied < self.core.compacted() + every {
            return;
        }
        match self.state.start_snapshot(applied, out) {
            Some(data) => self.call(out, |c, o| c.compact(applied, data, o)),
            None => self.encoding = Some(applied),
        }
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }
}

impl Engine for MultiPaxosEngine {
    type Msg = Msg<Stamped>;
    type Write = Write<Stamped>;
    type Disk = Disk<Stamped>;

    fn boot(cfg: &ReplicaConfig, disk: &Disk<Stamped>, seed: u64, state: ReplicaState) -> Self {
        let first: Members = cfg.raft.peers.iter().copied().collect();
        let core = MultiPaxosNode::with_members(config(cfg), first, disk, seed);
        let mut engine = MultiPaxosEngine {
            core,
            state,
            scratch: mp::Out::default(),
            leading: None,
            next_ticket: 0,
            conf: None,
            encoding: None,
        };
        if let Some(snap) = engine.core.snapshot() {
            let data = snap.data.clone();
            engine.state.restore(&data);
        }
        // The learned slots count as applied: replay them into the store,
        // without the events, which were reported before the crash.
        let learned: Vec<(u64, Command<Stamped>)> =
            engine.core.learned().map(|(s, c)| (s, c.clone())).collect();
        let mut silent: Out<Self> = Output::default();
        for (slot, cmd) in &learned {
            engine.apply(*slot, cmd, &mut silent);
        }
        engine
    }

    fn state(&self) -> &ReplicaState {
        &self.state
    }

    fn state_mut(&mut self) -> &mut ReplicaState {
        &mut self.state
    }

    fn id(&self) -> NodeId {
        self.core.id()
    }

    fn leader(&self) -> Option<NodeId> {
        self.core.leader()
    }

    fn is_leader(&self) -> bool {
        self.core.is_leader()
    }

    /// Conservative: a change of members on its way counts as not settled
    /// too (leases then wait a window longer to be revoked).
    fn settled_leader(&self) -> bool {
        self.core.is_leader() && !self.core.change_pending()
    }

    fn applied_index(&self) -> u64 {
        self.core.applied()
    }

    fn transferring_to(&self) -> Option<NodeId> {
        None
    }

    fn describe(&self) -> String {
        self.core.describe()
    }

    fn term(&self) -> u64 {
        self.core.promised().round
    }

    fn commit_index(&self) -> u64 {
        self.core.learned_upto()
    }

    fn conf(&self) -> Cow<'_, ConfState> {
        Cow::Owned(ConfState {
            voters: self.core.members().iter().copied().collect(),
            learners: Vec::new(),
        })
    }

    fn propose(&mut self, data: Payload, out: &mut Out<Self>) -> Option<(u64, u64)> {
        let round = self.leading?;
        let ticket = self.ticket();
        let cmd = Stamped {
            by: self.core.id(),
            round,
            ticket,
            data,
        };
        self.call(out, |c, o| c.propose(cmd, o))
            .then_some((ticket, round))
    }

    fn read_index(&mut self, id: u64, out: &mut Out<Self>) -> bool {
        self.call(out, |c, o| c.read_index(id, o))
    }

    fn conf_change(&mut self, change: ConfChange, out: &mut Out<Self>) -> ConfOutcome {
        let Some(round) = self.leading else {
            return ConfOutcome::Refused(ConfRefusal::Pending);
        };
        if self.core.change_pending() || self.conf.is_some() {
            return ConfOutcome::Refused(ConfRefusal::Pending);
        }
        let mut members = self.core.members().clone();
        let refusal = match change {
            ConfChange::AddLearner(_) | ConfChange::PromoteLearner(_) => {
                Some(ConfRefusal::NoLearners)
            }
            ConfChange::AddVoter(n) if !members.insert(n) => Some(ConfRefusal::Exists),
            ConfChange::RemoveNode(n) if !members.contains(&n) => Some(ConfRefusal::NotFound),
            ConfChange::RemoveNode(_) if members.len() == 1 => Some(ConfRefusal::LastVoter),
            ConfChange::RemoveNode(n) => {
                members.remove(&n);
                None
            }
            ConfChange::AddVoter(_) => None,
        };
        if let Some(r) = refusal {
            return ConfOutcome::Refused(r);
        }
        let wanted = members.clone();
        match self.call(out, |c, o| c.reconfigure(members, o)) {
            Ok(()) => {
                let ticket = self.ticket();
                self.conf = Some((wanted, ticket, round));
                ConfOutcome::Proposed {
                    ticket,
                    term: round,
                }
            }
            Err(_) => ConfOutcome::Refused(ConfRefusal::Pending),
        }
    }

    fn transfer_leader(&mut self, _to: NodeId, _out: &mut Out<Self>) {}

    fn peer_gone(&mut self, _from: NodeId, _out: &mut Out<Self>) {}

    fn snapshot_encoded(&mut self, index: u64, data: Payload, out: &mut Out<Self>) {
        if self.encoding == Some(index) {
            self.encoding = None;
        }
        // An image of this store at any slot applied here will do, one of
        // an earlier life included (the store is a function of the slots).
        if index > self.core.compacted() && index <= self.core.applied() {
            self.call(out, |c, o| c.compact(index, data, o));
        }
    }

    fn step(&mut self, from: NodeId, msg: Msg<Stamped>, out: &mut Out<Self>) {
        self.call(out, |c, o| c.step(from, msg, o));
        self.settle(out);
    }

    fn tick(&mut self, out: &mut Out<Self>) {
        self.call(out, |c, o| c.tick(o));
        self.settle(out);
    }

    fn settle(&mut self, out: &mut Out<Self>) {
        let (applied, round) = (self.core.applied(), self.core.promised().round);
        self.state.serve_reads(applied, round, out);
        self.snapshot_if_due(out);
    }

    fn apply_write(disk: &mut Disk<Stamped>, write: &Write<Stamped>) {
        disk.apply(write);
    }

    fn must_sync(_write: &Write<Stamped>) -> bool {
        true
    }
}
