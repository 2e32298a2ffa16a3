//! What the replicated store needs of a consensus engine, and the two
//! engines that provide it.
//!
//! A [`Replica`](crate::replica::Replica) is the store, its leases and the
//! requests it owes answers ([`ReplicaState`]), on top of an engine that
//! orders payloads. The engine owns that state and calls into it as it
//! applies, so the contract of [`synod_protocols::raft::app`] holds on
//! either engine: every chosen entry applied once, in order; a snapshot
//! installed replaces the state; a leader that steps down answers what it
//! owed; reads are served once their index is applied.
//!
//! * [`RaftEngine`]: the Raft core, with etcd's membership rules (learners,
//!   one change at a time, a leader leaving hands its place on first). What
//!   the service runs.
//! * [`MultiPaxosEngine`]: the Multi-Paxos log of write-once slots
//!   ([`synod_protocols::multipaxos`]): members added and removed one at a
//!   time, no learners and no leadership transfer.

mod multipaxos;

pub use multipaxos::{MultiPaxosEngine, Stamped};

use crate::replica::{ConfRefusal, Out, ReplicaConfig, ReplicaEvent, ReplicaState};
use std::borrow::Cow;
use std::fmt::Debug;
use synod_protocols::raft::{
    AppOutput, Application, ConfChange, ConfState, Disk, Entry, EntryData, Message, Payload,
    RaftApp, RaftNode, Role, Snapshot, SnapshotMeta, Write,
};
use synod_protocols::NodeId;

/// The service's engine: the Raft core with the store on top.
pub type RaftEngine = RaftApp<ReplicaState>;

/// One chosen entry, as the store sees it.
#[derive(Clone, Copy, Debug)]
pub struct Applied<'a> {
    pub index: u64,
    /// The term (Raft) or ballot round (Multi-Paxos) the entry was
    /// proposed in, the same on every member.
    pub term: u64,
    /// Identifies the entry's content, for checkers that compare members.
    pub digest: u64,
    pub data: AppliedData<'a>,
    /// If a request of this member may be waiting for this entry: the
    /// engine's ticket for it, and the term the entry was proposed in (the
    /// request is answered with the entry's outcome only if it was proposed
    /// in that same term: one value per slot per term).
    pub ticket: Option<(u64, u64)>,
    /// This member leads, and the entry was proposed under an earlier
    /// leader: that leader may still learn it and answer its client later
    /// than this one applies it.
    pub inherited: bool,
}

/// What an applied entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppliedData<'a> {
    /// An encoded [`crate::Command`].
    App(&'a Payload),
    /// A change of members.
    Conf,
    /// Nothing (a new leader's entry, or a gap filled).
    Noop,
}

/// What became of a request to change the members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfOutcome {
    /// Proposed, answered when applied (see [`Applied::ticket`]).
    Proposed {
        ticket: u64,
        term: u64,
    },
    Refused(ConfRefusal),
    /// This leader is leaving: ask that member, which leads now.
    Redirect(NodeId),
}

/// A consensus engine holding a [`ReplicaState`]. Every method that takes
/// an output is one step of the engine; [`Engine::settle`] brings the state
/// up to date with it before the output goes to the driver (`step` and
/// `tick` settle themselves).
pub trait Engine: Clone + Debug + Sized {
    type Msg: Clone + Debug;
    type Write: Clone + Debug;
    /// What survives a crash.
    type Disk: Clone + Debug + Default;

    /// Boots on `disk`: the state restored from its snapshot, and the
    /// entries chosen after it applied again without events.
    fn boot(cfg: &ReplicaConfig, disk: &Self::Disk, seed: u64, state: ReplicaState) -> Self;
    fn state(&self) -> &ReplicaState;
    fn state_mut(&mut self) -> &mut ReplicaState;

    fn id(&self) -> NodeId;
    /// The leader this member believes in (itself when it leads).
    fn leader(&self) -> Option<NodeId>;
    fn is_leader(&self) -> bool;
    /// A leader that has taken over the log (Raft: committed an entry of
    /// its term): what it applied is all that was chosen before it.
    fn settled_leader(&self) -> bool;
    fn applied_index(&self) -> u64;
    /// Where leadership is being handed, if it is.
    fn transferring_to(&self) -> Option<NodeId>;
    fn describe(&self) -> String;
    /// Raft's term, or the round of the highest ballot this member
    /// promised (Multi-Paxos): what etcd's response headers call the term.
    fn term(&self) -> u64;
    /// Every entry up to here is chosen, as far as this member knows.
    fn commit_index(&self) -> u64;
    /// The members as this member knows them (Multi-Paxos has no learners).
    fn conf(&self) -> Cow<'_, ConfState>;
    /// The voter this leader would hand its place to before a planned stop
    /// (the most up-to-date other one), if the engine can hand it at all:
    /// Multi-Paxos moves leadership by election only.
    fn successor(&self) -> Option<NodeId> {
        None
    }
    /// Whether an entry's term is its proposer's term and never decreases
    /// along the log (Raft). A driver that forwards writes relies on it to
    /// tell from its own log that a write will never be applied. Not so in
    /// Multi-Paxos, where a new leader carries an older leader's value into
    /// a slot after no-ops of its own.
    fn terms_ordered(&self) -> bool {
        false
    }
    /// Whether a follower can get a read index from its leader (Raft's
    /// ReadIndex) and serve a linearizable read itself; if not, a driver
    /// passes such reads to the leader.
    fn reads_at_followers(&self) -> bool {
        false
    }
    /// Lets the engine keep its snapshot's bytes where the driver has them
    /// (mapped from their file) instead of on the heap.
    fn share_snapshot_data(&mut self, _index: u64, _data: Payload) -> bool {
        false
    }
    /// The identity the snapshot of applied entry `index` will have, if the
    /// driver may write its file before the engine hands it over.
    fn snapshot_meta_at(&self, _index: u64) -> Option<SnapshotMeta> {
        None
    }

    /// Proposes a command as leader: its ticket and term, or `None` if this
    /// member does not lead.
    fn propose(&mut self, data: Payload, out: &mut Out<Self>) -> Option<(u64, u64)>;
    /// Asks for a read index for read `id` (the state's `read_ready`
    /// follows): `false` if it cannot be had here.
    fn read_index(&mut self, id: u64, out: &mut Out<Self>) -> bool;
    fn conf_change(&mut self, change: ConfChange, out: &mut Out<Self>) -> ConfOutcome;
    fn transfer_leader(&mut self, to: NodeId, out: &mut Out<Self>);
    /// The driver saw member `from` go away.
    fn peer_gone(&mut self, from: NodeId, out: &mut Out<Self>);
    /// The driver encoded the image handed out for applied entry `index`.
    fn snapshot_encoded(&mut self, index: u64, data: Payload, out: &mut Out<Self>);

    fn step(&mut self, from: NodeId, msg: Self::Msg, out: &mut Out<Self>);
    fn tick(&mut self, out: &mut Out<Self>);
    fn settle(&mut self, out: &mut Out<Self>);

    fn apply_write(disk: &mut Self::Disk, write: &Self::Write);
    /// Whether a batch holding `write` must be synced before what depends
    /// on it goes out ([`synod_protocols::Node::must_sync`]).
    fn must_sync(write: &Self::Write) -> bool;
}

impl Application for ReplicaState {
    type Event = ReplicaEvent;

    fn restore(&mut self, snapshot: &Snapshot) {
        ReplicaState::restore(self, &snapshot.data);
    }

    fn apply(&mut self, raft: &RaftNode, e: &Entry, out: &mut AppOutput<ReplicaEvent>) {
        let data = match &e.data {
            EntryData::App(p) => AppliedData::App(p),
            EntryData::Config(_) => AppliedData::Conf,
            _ => AppliedData::Noop,
        };
        let view = Applied {
            index: e.index,
            term: e.term,
            digest: e.digest(),
            data,
            ticket: Some((e.index, e.term)),
            inherited: raft.role() == Role::Leader && e.term < raft.term(),
        };
        ReplicaState::apply(self, view, out);
    }

    fn became_leader(&mut self, raft: &RaftNode, term: u64, out: &mut AppOutput<ReplicaEvent>) {
        let election = u64::from(raft.config().election_ticks);
        ReplicaState::became_leader(self, term, election, out);
    }

    fn stepped_down(&mut self, out: &mut AppOutput<ReplicaEvent>) {
        ReplicaState::stepped_down(self, out);
    }

    fn read_ready(&mut self, id: u64, index: u64) {
        ReplicaState::read_ready(self, id, index);
    }

    fn read_failed(&mut self, id: u64, out: &mut AppOutput<ReplicaEvent>) {
        ReplicaState::read_failed(self, id, out);
    }

    fn serve_reads(&mut self, raft: &RaftNode, out: &mut AppOutput<ReplicaEvent>) {
        ReplicaState::serve_reads(self, raft.applied_index(), raft.term(), out);
    }

    fn snapshot(&self) -> Payload {
        ReplicaState::snapshot(self)
    }

    fn start_snapshot(&mut self, index: u64, out: &mut AppOutput<ReplicaEvent>) -> Option<Payload> {
        ReplicaState::start_snapshot(self, index, out)
    }
}

/// etcd's rules for a membership change, checked on the leader.
fn conf_refusal(raft: &RaftNode, change: ConfChange) -> Option<ConfRefusal> {
    let conf = raft.conf();
    if raft.conf_change_pending() || !raft.committed_own_term() {
        return Some(ConfRefusal::Pending);
    }
    match change {
        ConfChange::AddVoter(n) | ConfChange::AddLearner(n) if conf.contains(n) => {
            Some(ConfRefusal::Exists)
        }
        ConfChange::AddLearner(_) if !conf.learners.is_empty() => {
            Some(ConfRefusal::TooManyLearners)
        }
        ConfChange::PromoteLearner(n) | ConfChange::RemoveNode(n) if !conf.contains(n) => {
            Some(ConfRefusal::NotFound)
        }
        ConfChange::PromoteLearner(n) if !conf.is_learner(n) => Some(ConfRefusal::NotLearner),
        ConfChange::PromoteLearner(n) => {
            // etcd: the learner's match index is at least 90% of the
            // leader's.
            let matched = raft.match_index(n).unwrap_or(0);
            (matched * 10 < raft.last_index() * 9).then_some(ConfRefusal::LearnerNotReady)
        }
        ConfChange::RemoveNode(n) if conf.voters == [n] => Some(ConfRefusal::LastVoter),
        _ => None,
    }
}

impl Engine for RaftEngine {
    type Msg = Message;
    type Write = Write;
    type Disk = Disk;

    fn boot(cfg: &ReplicaConfig, disk: &Disk, seed: u64, state: ReplicaState) -> Self {
        #[cfg(feature = "broken")]
        let bugs = state.bugs.raft;
        #[allow(unused_mut)]
        let mut node = RaftApp::new(cfg.raft.clone(), disk, seed, state);
        #[cfg(feature = "broken")]
        node.set_raft_bugs(bugs);
        node
    }

    fn state(&self) -> &ReplicaState {
        self.app()
    }

    fn state_mut(&mut self) -> &mut ReplicaState {
        self.app_mut()
    }

    fn id(&self) -> NodeId {
        self.raft().id()
    }

    fn leader(&self) -> Option<NodeId> {
        self.raft().leader()
    }

    fn is_leader(&self) -> bool {
        self.raft().role() == Role::Leader
    }

    fn settled_leader(&self) -> bool {
        self.is_leader() && self.raft().committed_own_term()
    }

    fn applied_index(&self) -> u64 {
        self.raft().applied_index()
    }

    fn transferring_to(&self) -> Option<NodeId> {
        self.raft().transferring_to()
    }

    fn describe(&self) -> String {
        self.raft().describe()
    }

    fn term(&self) -> u64 {
        self.raft().term()
    }

    fn commit_index(&self) -> u64 {
        self.raft().commit_index()
    }

    fn conf(&self) -> Cow<'_, ConfState> {
        Cow::Borrowed(self.raft().conf())
    }

    fn successor(&self) -> Option<NodeId> {
        let raft = self.raft();
        let me = raft.id();
        raft.voters()
            .into_iter()
            .filter(|v| *v != me)
            .max_by_key(|v| raft.match_index(*v).unwrap_or(0))
    }

    fn terms_ordered(&self) -> bool {
        true
    }

    fn reads_at_followers(&self) -> bool {
        true
    }

    fn share_snapshot_data(&mut self, index: u64, data: Payload) -> bool {
        RaftApp::share_snapshot_data(self, index, data)
    }

    fn snapshot_meta_at(&self, index: u64) -> Option<SnapshotMeta> {
        self.raft().snapshot_meta_at(index)
    }

    fn propose(&mut self, data: Payload, out: &mut Out<Self>) -> Option<(u64, u64)> {
        let data = EntryData::App(data);
        self.call(out, |r, out| r.propose(data, out))
    }

    fn read_index(&mut self, id: u64, out: &mut Out<Self>) -> bool {
        self.call(out, |r, out| r.read_index(id, out))
    }

    /// A leader asked to remove itself hands leadership to the most
    /// up-to-date other voter first and sends the client there, so that
    /// the cluster never waits out an election for a leader that is
    /// leaving.
    fn conf_change(&mut self, change: ConfChange, out: &mut Out<Self>) -> ConfOutcome {
        if let Some(refusal) = conf_refusal(self.raft(), change) {
            return ConfOutcome::Refused(refusal);
        }
        let me = self.raft().id();
        if change == ConfChange::RemoveNode(me) {
            if let Some(to) = Engine::successor(self) {
                self.call(out, |r, out| r.transfer_leader(to, out));
                return ConfOutcome::Redirect(to);
            }
        }
        if self.call(out, |r, out| r.propose_conf(change, out)) {
            let raft = self.raft();
            ConfOutcome::Proposed {
                ticket: raft.last_index(),
                term: raft.term(),
            }
        } else {
            ConfOutcome::Refused(ConfRefusal::Pending)
        }
    }

    fn transfer_leader(&mut self, to: NodeId, out: &mut Out<Self>) {
        self.call(out, |r, out| r.transfer_leader(to, out));
    }

    fn peer_gone(&mut self, from: NodeId, out: &mut Out<Self>) {
        self.call(out, |r, _| r.leader_unreachable(from));
    }

    fn snapshot_encoded(&mut self, index: u64, data: Payload, out: &mut Out<Self>) {
        RaftApp::snapshot_encoded(self, index, data, out);
    }

    fn step(&mut self, from: NodeId, msg: Message, out: &mut Out<Self>) {
        RaftApp::step(self, from, msg, out);
    }

    fn tick(&mut self, out: &mut Out<Self>) {
        RaftApp::tick(self, out);
    }

    fn settle(&mut self, out: &mut Out<Self>) {
        RaftApp::settle(self, out);
    }

    fn apply_write(disk: &mut Disk, write: &Write) {
        disk.apply(write);
    }

    fn must_sync(write: &Write) -> bool {
        write.must_sync()
    }
}
