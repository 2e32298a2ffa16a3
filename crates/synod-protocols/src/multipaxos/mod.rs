//! Multi-Paxos: a replicated log as a sequence of write-once slots, each
//! decided by the Paxos synod, with a stable leader that runs phase 1 once
//! for every slot it will ever use.
//!
//! Every node is an acceptor and a learner; one at a time leads.
//!
//! * **Election by ballot.** A node that hears no leader for a random
//!   election timeout picks a ballot `(round, id)` above every round it has
//!   seen, makes the round durable, and sends `Prepare { ballot, from }`
//!   where `from` is the first slot it has not learned. One prepare covers
//!   that slot and every later one: an acceptor that promises (durably) also
//!   reports everything it accepted from `from` on.
//! * **Taking over the log.** With promises from a majority, the new leader
//!   proposes, in every slot from `from` up to the highest one reported, the
//!   value of that slot's highest-ballot acceptance ([`paxos::keep_highest`],
//!   the synod's own rule), or a no-op where there is none, so that no gap
//!   stays open. Then it proposes clients' commands in the next free slots.
//! * **Phase 2 only, per slot.** `Accept { ballot, first, cmds, commit }`
//!   carries a batch of consecutive slots; an acceptor takes them unless it
//!   promised a higher ballot ([`Ballot::admits_accept`]). A slot accepted
//!   by a majority at the leader's ballot is chosen. The leader learns it,
//!   and the commit index it sends tells the others.
//! * **Learning.** A follower learns slot `s` when the leader's commit index
//!   reaches `s` and the follower accepted `s` at the leader's very ballot
//!   (a leader proposes one value per slot per ballot). Otherwise the leader
//!   sends the chosen values (`Learn`) to followers that report they lag.
//!   Learned slots are applied in order, each once ([`Event::Applied`]).
//! * **Losing the lead.** A leader that meets a higher ballot (a promise it
//!   makes, or an acceptor's `Nack`) steps down ([`Event::SteppedDown`]);
//!   the outcome of what it had in flight is unknown to it.
//!
//! Safety is the synod's, slot by slot: two majorities share an acceptor,
//! promises are durable before they are reported, and a new ballot carries
//! on with the highest-ballot acceptance of every slot. Liveness needs one
//! leader at a time for long enough: the election timeouts are random, and
//! a follower that hears a leader does not campaign.
//!
//! * **Compaction.** The application may replace the slots it applied with
//!   a [`Snapshot`] of its state ([`MultiPaxosNode::compact`]). The node then
//!   forgets what it accepted and learned there, which is safe only because
//!   those slots are chosen and the node never hides that: a promise for a
//!   prepare whose `from` the snapshot covers carries the snapshot, so the
//!   candidate installs it and proposes nothing in those slots (a no-op
//!   there would overwrite a chosen command); and a follower that lags
//!   behind the leader's snapshot gets the snapshot instead of the slots.
//!
//! * **Reconfiguration.** The acceptors are a set of members that the log
//!   itself changes: a [`Command::Members`] chosen in slot `c` governs every
//!   slot from `c + window` on ([`Config::window`]). A leader proposes slot
//!   `s` only once it has learned every slot up to `s - window`, so whoever
//!   proposes in `s`, at whatever ballot, counts the same members for it:
//!   each slot is a synod with one fixed set of acceptors. A leader proposes
//!   in a slot only with promises from a majority of that slot's members,
//!   and asks the new members for theirs (phase 1 with its own ballot) when
//!   the members change under it. After a change it fills the window with
//!   no-ops, so the change is in force at once; it takes one change at a
//!   time, of one member. A leader that is not among the members in force
//!   steps down; a node that is not among the latest members it knows never
//!   campaigns (a new member learns that it is one from the log).
//!
//! * **Reads without the log** ([`MultiPaxosNode::read_index`]). The
//!   leader notes the last slot it learned or must take over, then sends a
//!   round of heartbeats; once a majority of the members answer that round
//!   with its ballot, no other leader chose anything meanwhile, and the read
//!   is served when that slot is applied ([`Event::ReadReady`]). Reads wait
//!   while a change of members is in flight, or while the leader lacks the
//!   promises of a majority of the members of its next slot: a slot a
//!   leader it does not know of chose could otherwise be missing.
//!
//! docs/multipaxos.md argues why each rule is safe.

pub mod kv_node;

use crate::paxos::{self, Ballot};
use crate::raft::Payload;
use crate::sansio::{NodeId, Output};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;

pub use kv_node::MpKvNode;

/// The acceptors that choose a slot.
pub type Members = BTreeSet<NodeId>;

/// What a slot holds: a command of the application, a no-op that a new
/// leader puts where it found nothing (so that no gap stays open), or the
/// members for the slots from this one's plus the window on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Command<V> {
    Noop,
    App(V),
    Members(Members),
}

/// A slot's number. The first slot is 1.
pub type Slot = u64;

/// The application's state after every slot up to `slot`, standing in for
/// those slots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub slot: Slot,
    /// The members from each key slot on, for the slots after `slot`
    /// (changes chosen up to `slot` govern slots up to `slot + window`).
    pub confs: BTreeMap<Slot, Members>,
    pub data: Payload,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg<V> {
    /// Phase 1 for every slot from `from` on.
    Prepare { ballot: Ballot, from: Slot },
    /// The sender promised `ballot`, and had accepted these at or after the
    /// prepare's `from`. `learned`: its learned prefix. `snapshot`: its
    /// snapshot, if it covers the prepare's `from` (the slots it replaced
    /// are chosen, and their accepted values are gone).
    Promise {
        ballot: Ballot,
        accepted: Vec<(Slot, Ballot, Command<V>)>,
        learned: Slot,
        snapshot: Option<Snapshot>,
    },
    /// The sender promised `promised`, higher than `ballot`.
    Nack { ballot: Ballot, promised: Ballot },
    /// Phase 2 for the slots `first..first + cmds.len()`; `commit`: the
    /// leader's learned prefix.
    Accept {
        ballot: Ballot,
        first: Slot,
        cmds: Vec<Command<V>>,
        commit: Slot,
    },
    /// The sender accepted `first..=last` at `ballot`; `learned` as above.
    Accepted {
        ballot: Ballot,
        first: Slot,
        last: Slot,
        learned: Slot,
    },
    /// The leader is alive; its learned prefix. `round` numbers the
    /// leader's heartbeat rounds, which confirm reads.
    Heartbeat {
        ballot: Ballot,
        commit: Slot,
        round: u64,
    },
    HeartbeatResp {
        ballot: Ballot,
        learned: Slot,
        round: u64,
    },
    /// Chosen values of the slots from `first` on, for a node that lags.
    Learn { first: Slot, cmds: Vec<Command<V>> },
    /// The leader's snapshot, for a node that lags behind it.
    Snapshot(Snapshot),
}

/// A durable record; each is synced before any message that depends on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write<V> {
    Promise(Ballot),
    /// The node is about to lead with this round: a restart never reuses it.
    Round(u64),
    Accept(Slot, Ballot, Command<V>),
    /// The slot's value is chosen.
    Learn(Slot, Command<V>),
    /// Replaces every slot up to the snapshot's.
    Snapshot(Snapshot),
}

/// What survives a crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk<V> {
    pub promised: Ballot,
    pub round: u64,
    pub accepted: BTreeMap<Slot, (Ballot, Command<V>)>,
    pub learned: BTreeMap<Slot, Command<V>>,
    pub snapshot: Option<Snapshot>,
}

impl<V> Default for Disk<V> {
    fn default() -> Self {
        Disk {
            promised: Ballot::ZERO,
            round: 0,
            accepted: BTreeMap::new(),
            learned: BTreeMap::new(),
            snapshot: None,
        }
    }
}

impl<V: Clone> Disk<V> {
    pub fn apply(&mut self, w: &Write<V>) {
        match w {
            Write::Promise(b) => self.promised = self.promised.max(*b),
            Write::Round(r) => self.round = self.round.max(*r),
            Write::Accept(s, b, c) => {
                self.promised = self.promised.max(*b);
                if *s > self.compacted() {
                    self.accepted.insert(*s, (*b, c.clone()));
                }
            }
            Write::Learn(s, c) => {
                if *s > self.compacted() {
                    self.learned.insert(*s, c.clone());
                }
            }
            Write::Snapshot(snap) => {
                if snap.slot > self.compacted() {
                    drop_upto(&mut self.accepted, snap.slot);
                    drop_upto(&mut self.learned, snap.slot);
                    self.snapshot = Some(snap.clone());
                }
            }
        }
    }

    /// The last slot the snapshot replaced (0: none).
    pub fn compacted(&self) -> Slot {
        self.snapshot.as_ref().map_or(0, |s| s.slot)
    }

    /// The highest slot such that every slot up to it is learned (or in the
    /// snapshot).
    pub fn learned_prefix(&self) -> Slot {
        prefix(&self.learned, self.compacted())
    }
}

/// Forgets every slot up to `upto`.
fn drop_upto<T>(map: &mut BTreeMap<Slot, T>, upto: Slot) {
    *map = map.split_off(&(upto + 1));
}

/// The highest slot from `from` on such that every slot up to it is in `map`.
fn prefix<T>(map: &BTreeMap<Slot, T>, from: Slot) -> Slot {
    let mut s = from;
    while map.contains_key(&(s + 1)) {
        s += 1;
    }
    s
}

/// What the core reports to the application above it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<V> {
    /// Slot `slot` is chosen and this node applies it now (in slot order).
    Applied { slot: Slot, cmd: Command<V> },
    /// This node leads with `ballot`.
    BecameLeader { ballot: Ballot },
    /// This node stopped leading.
    SteppedDown,
    /// This node installed a peer's snapshot: the application's state is
    /// now the snapshot's, and applying goes on after its slot.
    Restored(Snapshot),
    /// The read `id` may be served from the application's state now. A
    /// leader that steps down drops its reads without an event.
    ReadReady { id: u64 },
}

pub type Out<V> = Output<Write<V>, Msg<V>, Event<V>>;

/// Static configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub id: NodeId,
    /// The first members are nodes `0..n`. A node with a higher id is a
    /// spare until a change of members adds it.
    pub n: usize,
    /// A follower campaigns after a random `[election_ticks, 2 *
    /// election_ticks)` ticks without hearing a leader.
    pub election_ticks: u32,
    /// Slots per `Accept` and per `Learn`.
    pub max_batch: usize,
    /// Unanswered `Accept`s per follower. Proposals made while the pipeline
    /// is full leave together in the next one (as in the Raft core).
    pub max_inflight: usize,
    /// A leader proposes slot `s` only after learning every slot up to
    /// `s - window`, and a change of members chosen in slot `c` governs
    /// the slots from `c + window` on. It bounds the slots in flight.
    /// Every node of a cluster must use the same value.
    pub window: u64,
    /// For the application above: compact after this many applied slots
    /// since the last snapshot (0: never).
    pub snapshot_every: u64,
}

impl Config {
    pub fn new(id: NodeId, n: usize) -> Config {
        assert!(n > 0, "a cluster needs a member");
        Config {
            id,
            n,
            election_ticks: 10,
            max_batch: 64,
            max_inflight: 4,
            window: 64,
            snapshot_every: 0,
        }
    }

    /// The first members.
    pub fn initial_members(&self) -> Members {
        (0..self.n as NodeId).collect()
    }
}

/// Why a change of members was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReconfigError {
    /// Only the leader changes members; the one this node believes in.
    NotLeader(Option<NodeId>),
    /// A change is still on its way into force (or the leader is still
    /// taking over the log, which may hold one).
    Pending,
    /// A change adds or removes exactly one member, and leaves one.
    NotOneMember,
}

/// Deliberately broken behaviours, so tests can show the checkers catch
/// them. Only installable with the `broken` feature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// A new leader skips phase 1: it proposes in the slots after its own
    /// learned prefix without asking what the acceptors accepted there.
    pub skip_phase1: bool,
    /// An acceptor's promises are not made durable, and a restart boots
    /// without the promise its disk holds: it forgets them.
    pub forget_promises: bool,
    /// A promise leaves out the snapshot that covers the prepare's `from`:
    /// the candidate cannot tell that the compacted slots are chosen.
    pub promise_without_snapshot: bool,
    /// A change of members governs the very next slot, while leaders still
    /// propose a window ahead: a leader counts the old members in slots
    /// after a change it has not learned, another leader the new ones.
    pub no_window: bool,
    /// A leader serves reads without a heartbeat round: one that another
    /// leader replaced without its knowing serves stale values.
    pub reads_without_round: bool,
}

/// A read the leader took: its id, the slot that must be applied first,
/// and the heartbeat round that must come back from a majority.
#[derive(Clone, Copy, Debug)]
struct PendingRead {
    id: u64,
    slot: Slot,
    round: u64,
}

/// What an acceptor reports accepting: slot, ballot, value.
type Report<V> = (Slot, Ballot, Command<V>);

/// What the leader tracks per node it sends to.
#[derive(Clone, Debug)]
struct Peer {
    /// The last slot sent to it.
    sent: Slot,
    /// Its unanswered Accepts.
    outstanding: usize,
    /// Ticks since it last answered one.
    silent: u32,
    /// The first slot this leadership sent it: what it misses before that,
    /// no commit index will fill.
    first: Slot,
    /// It accepted every slot from `first` up to here in this ballot.
    accepted_upto: Slot,
    /// Ticks since it was last sent the snapshot.
    snapshot_age: Option<u32>,
}

#[derive(Clone, Debug)]
struct Leader<V> {
    ballot: Ballot,
    /// Where phase 1 started; every promise reports from here.
    from: Slot,
    /// The next slot to propose in.
    next: Slot,
    /// The nodes that promised this ballot, and those asked to.
    promisers: BTreeSet<NodeId>,
    asked: BTreeSet<NodeId>,
    /// Phase 1's findings for slots not yet proposed in: the highest-ballot
    /// value reported.
    found: BTreeMap<Slot, Option<(Ballot, Command<V>)>>,
    /// Up to here, slots take what phase 1 found, or a no-op.
    takeover_last: Slot,
    /// Up to here, slots take no-ops, so a change of members comes into
    /// force at once.
    noops_until: Slot,
    /// Commands waiting for the window to open.
    queued: VecDeque<Command<V>>,
    /// Proposed, not yet chosen: the command and who accepted it.
    inflight: BTreeMap<Slot, (Command<V>, BTreeSet<NodeId>)>,
    peers: BTreeMap<NodeId, Peer>,
    /// The last heartbeat round sent, and per node the last it answered.
    round: u64,
    acked: BTreeMap<NodeId, u64>,
    /// Reads wait for a round that has not been sent: send it as soon as
    /// the one in flight comes back (rounds batch reads, as Raft's do).
    round_wanted: bool,
    /// Reads waiting until they may be taken (a change of members in
    /// flight, promises missing), then for their round, then for their
    /// slot to be applied.
    held_reads: Vec<u64>,
    reads: Vec<PendingRead>,
    ready_reads: Vec<(u64, Slot)>,
}

#[derive(Clone, Debug)]
enum Role<V> {
    Follower,
    Candidate {
        ballot: Ballot,
        from: Slot,
        promises: BTreeMap<NodeId, Vec<Report<V>>>,
    },
    Leader(Box<Leader<V>>),
}

/// One Multi-Paxos node (see the module docs).
#[derive(Clone, Debug)]
pub struct MultiPaxosNode<V> {
    cfg: Config,
    /// The members of the first slots ([`Config::initial_members`] unless
    /// booted with [`MultiPaxosNode::with_members`]).
    initial: Members,
    promised: Ballot,
    /// The highest round this node used or saw.
    round: u64,
    accepted: BTreeMap<Slot, (Ballot, Command<V>)>,
    learned: BTreeMap<Slot, Command<V>>,
    /// Stands in for every slot up to its own; nothing is kept about them.
    snapshot: Option<Snapshot>,
    /// The members from each key slot on, as far as the learned slots tell.
    confs: BTreeMap<Slot, Members>,
    /// Every slot up to here is learned.
    learned_upto: Slot,
    /// Every slot up to here has been applied (reported).
    applied: Slot,
    role: Role<V>,
    /// The leader this node last heard from.
    leader: Option<NodeId>,
    elapsed: u32,
    timeout: u32,
    rng: ChaCha8Rng,
    bugs: Bugs,
}

/// The members governing `slot`.
fn conf_at(confs: &BTreeMap<Slot, Members>, slot: Slot) -> &Members {
    confs
        .range(..=slot)
        .next_back()
        .map(|(_, m)| m)
        .expect("members are known for every slot after the snapshot")
}

/// Whether `nodes` hold a majority of `members`.
fn majority_of(nodes: &BTreeSet<NodeId>, members: &Members) -> bool {
    2 * members.iter().filter(|m| nodes.contains(m)).count() > members.len()
}

/// The changes that govern slots after `slot`: the one in force at
/// `slot + 1` and those after it.
fn confs_after(confs: &BTreeMap<Slot, Members>, slot: Slot) -> BTreeMap<Slot, Members> {
    let from = confs
        .range(..=slot + 1)
        .next_back()
        .map_or(slot + 1, |(k, _)| *k);
    confs.range(from..).map(|(k, m)| (*k, m.clone())).collect()
}

impl<V: Clone + Debug + PartialEq> MultiPaxosNode<V> {
    /// Boots from `disk`. Slots learned before the crash count as applied:
    /// the application rebuilds its state from [`MultiPaxosNode::snapshot`]
    /// and [`MultiPaxosNode::learned`].
    pub fn new(cfg: Config, disk: &Disk<V>, seed: u64) -> Self {
        Self::with_members(cfg, cfg.initial_members(), disk, seed)
    }

    /// Boots like [`MultiPaxosNode::new`], with `initial` as the members
    /// of the first slots instead of nodes `0..n`: the service numbers its
    /// members with etcd's member ids. Every node of a cluster must boot
    /// with the same set; a node that joins a running cluster passes none
    /// and learns the members from the slots and snapshots it is sent.
    pub fn with_members(cfg: Config, initial: Members, disk: &Disk<V>, seed: u64) -> Self {
        let learned_upto = disk.learned_prefix();
        let mut node = MultiPaxosNode {
            cfg,
            initial,
            promised: disk.promised,
            round: disk.round.max(disk.promised.round),
            accepted: disk.accepted.clone(),
            learned: disk.learned.clone(),
            snapshot: disk.snapshot.clone(),
            confs: BTreeMap::new(),
            learned_upto,
            applied: learned_upto,
            role: Role::Follower,
            leader: None,
            elapsed: 0,
            timeout: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            bugs: Bugs::default(),
        };
        node.rebuild_confs();
        node.reset_timer();
        node.check_invariants();
        node
    }

    /// The members of every slot, from the snapshot's and the changes in
    /// the learned slots.
    fn rebuild_confs(&mut self) {
        self.confs = match &self.snapshot {
            Some(snap) => snap.confs.clone(),
            None => BTreeMap::from([(1, self.initial.clone())]),
        };
        for (s, cmd) in &self.learned {
            if let Command::Members(m) = cmd {
                self.confs.insert(s + self.conf_delay(), m.clone());
            }
        }
    }

    #[cfg(feature = "broken")]
    pub fn with_bugs(mut self, bugs: Bugs) -> Self {
        self.bugs = bugs;
        if bugs.forget_promises {
            // Booted without the promise its disk holds.
            self.promised = Ballot::ZERO;
        }
        self.rebuild_confs();
        self
    }

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// The leader this node believes in (itself when it leads).
    pub fn leader(&self) -> Option<NodeId> {
        match self.role {
            Role::Leader(_) => Some(self.cfg.id),
            _ => self.leader,
        }
    }

    pub fn promised(&self) -> Ballot {
        self.promised
    }

    pub fn learned_upto(&self) -> Slot {
        self.learned_upto
    }

    /// Every slot up to here has been applied.
    pub fn applied(&self) -> Slot {
        self.applied
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The snapshot in force: a restarted application starts from it.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// The last slot the snapshot replaced (0: none).
    pub fn compacted(&self) -> Slot {
        self.snapshot.as_ref().map_or(0, |s| s.slot)
    }

    /// The latest members this node knows of (chosen, perhaps not yet in
    /// force).
    pub fn members(&self) -> &Members {
        self.confs
            .values()
            .next_back()
            .expect("members are always known")
    }

    /// The members governing `slot`, as far as this node learned.
    pub fn members_at(&self, slot: Slot) -> &Members {
        conf_at(&self.confs, slot)
    }

    /// The slots after which a chosen change of members is in force.
    fn conf_delay(&self) -> u64 {
        if self.bugs.no_window {
            1
        } else {
            self.cfg.window
        }
    }

    /// Replaces the slots up to `slot`, which must be applied, with `data`,
    /// the application's state after them.
    pub fn compact(&mut self, slot: Slot, data: Payload, out: &mut Out<V>) {
        assert!(
            slot <= self.applied,
            "compacting to slot {slot}, applied only {}",
            self.applied
        );
        if slot <= self.compacted() {
            return;
        }
        let confs = confs_after(&self.confs, slot);
        let snap = Snapshot { slot, confs, data };
        out.persist(Write::Snapshot(snap.clone()));
        self.forget_upto(snap);
        self.check_invariants();
    }

    /// Keeps `snap` in place of every slot up to its own.
    fn forget_upto(&mut self, snap: Snapshot) {
        drop_upto(&mut self.accepted, snap.slot);
        drop_upto(&mut self.learned, snap.slot);
        // Changes learned here and those the snapshot knows agree: both
        // come from chosen slots.
        self.confs.extend(snap.confs.clone());
        self.confs = confs_after(&self.confs, snap.slot);
        self.snapshot = Some(snap);
    }

    /// Takes a peer's snapshot if it is ahead of the learned prefix: the
    /// application's state becomes the snapshot's, then the slots learned
    /// after it (if any) are applied. A leader this far behind has been
    /// replaced: it steps down first.
    fn install(&mut self, snap: Snapshot, out: &mut Out<V>) {
        if snap.slot <= self.learned_upto {
            return;
        }
        if self.is_leader() {
            self.step_down(out);
        }
        out.persist(Write::Snapshot(snap.clone()));
        let slot = snap.slot;
        self.forget_upto(snap.clone());
        self.learned_upto = prefix(&self.learned, slot);
        self.applied = slot;
        out.emit(Event::Restored(snap));
        self.apply(out);
    }

    /// The learned prefix after the snapshot, in slot order (what a
    /// restarted application replays).
    pub fn learned(&self) -> impl Iterator<Item = (Slot, &Command<V>)> {
        self.learned
            .range(..=self.learned_upto)
            .map(|(s, c)| (*s, c))
    }

    /// Every node that is a member of a slot after the learned prefix.
    fn targets(&self) -> Members {
        let first = self.learned_upto + 1;
        let mut all = conf_at(&self.confs, first).clone();
        for m in self.confs.range(first + 1..).map(|(_, m)| m) {
            all.extend(m);
        }
        all
    }

    fn reset_timer(&mut self) {
        let e = self.cfg.election_ticks;
        self.elapsed = 0;
        self.timeout = self.rng.gen_range(e..2 * e);
    }

    /// Proposes `cmd` in the next free slot, if this node leads: whether it
    /// took it (otherwise the caller should redirect to [`Self::leader`]).
    /// The command waits while the window is closed.
    pub fn propose(&mut self, cmd: V, out: &mut Out<V>) -> bool {
        let Role::Leader(l) = &mut self.role else {
            return false;
        };
        l.queued.push_back(Command::App(cmd));
        self.drive(out);
        true
    }

    /// Proposes `members` as the members: one more or one fewer than the
    /// latest, with no other change on its way.
    pub fn reconfigure(&mut self, members: Members, out: &mut Out<V>) -> Result<(), ReconfigError> {
        if !self.is_leader() {
            return Err(ReconfigError::NotLeader(self.leader));
        }
        if self.change_pending() {
            return Err(ReconfigError::Pending);
        }
        if members.is_empty() || self.members().symmetric_difference(&members).count() != 1 {
            return Err(ReconfigError::NotOneMember);
        }
        if let Role::Leader(l) = &mut self.role {
            l.queued.push_back(Command::Members(members));
        }
        self.drive(out);
        Ok(())
    }

    /// Whether a change of members may be on its way as far as this leader
    /// knows: proposed and not chosen, chosen and not yet in force, or
    /// among the slots it is still taking over. (Not leading: `false`.)
    pub fn change_pending(&self) -> bool {
        let Role::Leader(l) = &self.role else {
            return false;
        };
        let first = self.learned_upto + 1;
        let change = |c: &Command<V>| matches!(c, Command::Members(_));
        self.confs.keys().next_back().is_some_and(|k| *k > first)
            || l.next <= l.takeover_last.max(l.noops_until)
            || l.queued.iter().any(change)
            || l.inflight.values().any(|(c, _)| change(c))
    }

    /// The leader's loop: propose what may be proposed, learn what is
    /// chosen, until neither moves; then send.
    fn drive(&mut self, out: &mut Out<V>) {
        loop {
            let before = (self.learned_upto, self.next_slot());
            self.fill(out);
            self.advance_commit(out);
            if (self.learned_upto, self.next_slot()) == before {
                break;
            }
        }
        self.send_accepts(out);
        // A leader that is not among the members in force steps down.
        let first = self.learned_upto + 1;
        if self.is_leader() && !conf_at(&self.confs, first).contains(&self.cfg.id) {
            self.step_down(out);
        }
        self.take_held_reads(out);
    }

    /// Takes a linearizable read as leader: `false` if this node does not
    /// lead. [`Event::ReadReady`] says when to serve it.
    pub fn read_index(&mut self, id: u64, out: &mut Out<V>) -> bool {
        let Role::Leader(l) = &mut self.role else {
            return false;
        };
        l.held_reads.push(id);
        self.take_held_reads(out);
        true
    }

    /// Whether this leader may take reads now: it knows every slot that
    /// could be chosen without it. No change of members may be in flight
    /// (its members are not yet those the learned slots tell), and it must
    /// hold promises from a majority of the members of every slot after
    /// the ones it proposed in.
    fn reads_safe(&self) -> bool {
        let Role::Leader(l) = &self.role else {
            return false;
        };
        let change = |c: &Command<V>| matches!(c, Command::Members(_));
        if l.inflight.values().any(|(c, _)| change(c))
            || l.queued.iter().any(change)
            || l.found.values().flatten().any(|(_, c)| change(c))
        {
            return false;
        }
        std::iter::once(conf_at(&self.confs, l.next))
            .chain(self.confs.range(l.next + 1..).map(|(_, m)| m))
            .all(|m| majority_of(&l.promisers, m))
    }

    /// Gives the held reads their slot and round, if they may be taken.
    fn take_held_reads(&mut self, out: &mut Out<V>) {
        let safe = self.reads_safe();
        let (learned, solo) = (self.learned_upto, self.targets().len() <= 1);
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        if l.held_reads.is_empty() || !safe {
            return;
        }
        // Every slot a client may have seen chosen: those this leader
        // learned, and those an earlier leader may have chosen. Its own
        // proposals in flight were acknowledged to nobody yet.
        let slot = l.takeover_last.max(learned);
        let round = l.round + 1;
        for id in l.held_reads.drain(..) {
            l.reads.push(PendingRead { id, slot, round });
        }
        if solo || self.bugs.reads_without_round {
            for r in l.reads.drain(..) {
                l.ready_reads.push((r.id, r.slot));
            }
            self.serve_reads(out);
        } else if self.acked_round() >= self.round_sent() {
            self.send_round(out);
        } else if let Role::Leader(l) = &mut self.role {
            l.round_wanted = true;
        }
    }

    fn round_sent(&self) -> u64 {
        match &self.role {
            Role::Leader(l) => l.round,
            _ => 0,
        }
    }

    /// The last heartbeat round a majority of the members of every slot
    /// after the learned prefix answered (this node counting itself).
    fn acked_round(&self) -> u64 {
        let Role::Leader(l) = &self.role else {
            return 0;
        };
        let first = self.learned_upto + 1;
        std::iter::once(conf_at(&self.confs, first))
            .chain(self.confs.range(first + 1..).map(|(_, m)| m))
            .map(|members| {
                let mut rounds: Vec<u64> = members
                    .iter()
                    .map(|m| match *m == self.cfg.id {
                        true => l.round,
                        false => l.acked.get(m).copied().unwrap_or(0),
                    })
                    .collect();
                rounds.sort_unstable_by(|a, b| b.cmp(a));
                rounds[members.len() / 2]
            })
            .min()
            .unwrap_or(0)
    }

    /// Moves the reads whose round a majority answered on to wait for
    /// their slot, and serves those whose slot is applied.
    fn confirm_reads(&mut self, out: &mut Out<V>) {
        let acked = self.acked_round();
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let (confirmed, waiting): (Vec<_>, Vec<_>) =
            l.reads.drain(..).partition(|r| r.round <= acked);
        l.reads = waiting;
        l.ready_reads
            .extend(confirmed.into_iter().map(|r| (r.id, r.slot)));
        let again = l.round_wanted && acked >= l.round;
        self.serve_reads(out);
        if again {
            self.send_round(out);
        }
    }

    /// A heartbeat round for reads, to every peer.
    fn send_round(&mut self, out: &mut Out<V>) {
        let commit = self.learned_upto;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        l.round += 1;
        l.round_wanted = false;
        let (ballot, round) = (l.ballot, l.round);
        for p in l.peers.keys() {
            let msg = Msg::Heartbeat {
                ballot,
                commit,
                round,
            };
            out.send(*p, msg);
        }
    }

    /// Reports the confirmed reads whose slot is applied.
    fn serve_reads(&mut self, out: &mut Out<V>) {
        let applied = self.applied;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        l.ready_reads.retain(|(id, slot)| {
            let ready = *slot <= applied;
            if ready {
                out.emit(Event::ReadReady { id: *id });
            }
            !ready
        });
    }

    fn next_slot(&self) -> Slot {
        match &self.role {
            Role::Leader(l) => l.next,
            _ => 0,
        }
    }

    /// Proposes in the next slots while the window is open and this
    /// leader holds promises from a majority of their members; asks the
    /// members it has not asked when it does not.
    fn fill(&mut self, out: &mut Out<V>) {
        let (window, delay) = (self.cfg.window, self.conf_delay());
        // The slot from which the latest learned change is in force: until
        // there, no-ops, even for a change an earlier leader proposed.
        let in_force = self.confs.keys().next_back().copied().unwrap_or(0);
        loop {
            let Role::Leader(l) = &mut self.role else {
                return;
            };
            let s = l.next;
            if s > self.learned_upto + window {
                return;
            }
            let members = conf_at(&self.confs, s);
            if !majority_of(&l.promisers, members) {
                for m in members {
                    if l.asked.insert(*m) {
                        let (ballot, from) = (l.ballot, l.from);
                        out.send(*m, Msg::Prepare { ballot, from });
                    }
                }
                return;
            }
            let cmd = if s <= l.takeover_last {
                match l.found.remove(&s).flatten() {
                    Some((_, c)) => c,
                    None => Command::Noop,
                }
            } else if s <= l.noops_until || s < in_force {
                Command::Noop
            } else if let Some(c) = l.queued.pop_front() {
                c
            } else {
                return;
            };
            if matches!(cmd, Command::Members(_)) {
                l.noops_until = l.noops_until.max(s + delay - 1);
            }
            l.next += 1;
            let ballot = l.ballot;
            self.lead_slot(ballot, s, cmd, out);
        }
    }

    /// The leader accepts `cmd` in `slot` itself; [`Self::send_accepts`]
    /// asks the others.
    fn lead_slot(&mut self, ballot: Ballot, slot: Slot, cmd: Command<V>, out: &mut Out<V>) {
        self.accepted.insert(slot, (ballot, cmd.clone()));
        out.persist(Write::Accept(slot, ballot, cmd.clone()));
        if let Role::Leader(l) = &mut self.role {
            l.inflight
                .insert(slot, (cmd, BTreeSet::from([self.cfg.id])));
        }
    }

    /// Brings the leader's peers in line with the members of the slots
    /// after the learned prefix: new ones start after it.
    fn refresh_peers(&mut self) {
        let targets = self.targets();
        let (id, learned) = (self.cfg.id, self.learned_upto);
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        l.peers.retain(|p, _| targets.contains(p));
        for p in targets.into_iter().filter(|p| *p != id) {
            l.peers.entry(p).or_insert(Peer {
                sent: learned,
                outstanding: 0,
                silent: 0,
                first: learned + 1,
                accepted_upto: learned,
                snapshot_age: None,
            });
        }
    }

    /// Sends every peer whose pipeline has room the slots it has not been
    /// sent, a batch per `Accept`.
    fn send_accepts(&mut self, out: &mut Out<V>) {
        let (max_batch, max_inflight) = (self.cfg.max_batch, self.cfg.max_inflight);
        let commit = self.learned_upto;
        let compacted = self.snapshot.as_ref().map_or(0, |s| s.slot);
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let (ballot, next) = (l.ballot, l.next);
        for (p, peer) in l.peers.iter_mut() {
            // Slots in the snapshot are chosen; a peer that never accepted
            // them gets the snapshot ([`Self::catch_up`]).
            peer.sent = peer.sent.max(compacted);
            while peer.outstanding < max_inflight && peer.sent + 1 < next {
                let first = peer.sent + 1;
                let last = (next - 1).min(peer.sent + max_batch as u64);
                let cmds: Vec<Command<V>> = (first..=last)
                    .map_while(|s| match self.accepted.get(&s) {
                        Some((b, c)) if *b == ballot => Some(c.clone()),
                        _ => None,
                    })
                    .collect();
                if cmds.is_empty() {
                    // The leader learned this slot from another ballot
                    // instead of proposing there: chosen, and the peer
                    // gets it by catch-up.
                    peer.sent = first;
                    continue;
                }
                let last = first + cmds.len() as u64 - 1;
                out.send(
                    *p,
                    Msg::Accept {
                        ballot,
                        first,
                        cmds,
                        commit,
                    },
                );
                peer.sent = last;
                peer.outstanding += 1;
            }
        }
    }

    /// Promises `ballot` if it is higher than the promise in force; steps
    /// down if that was this node's own leadership.
    fn promise(&mut self, ballot: Ballot, out: &mut Out<V>) {
        if ballot <= self.promised {
            return;
        }
        self.promised = ballot;
        self.round = self.round.max(ballot.round);
        if !self.bugs.forget_promises {
            out.persist(Write::Promise(ballot));
        }
        if self.own_ballot().is_some_and(|b| b < ballot) {
            self.step_down(out);
        }
    }

    /// The ballot this node leads or campaigns with.
    fn own_ballot(&self) -> Option<Ballot> {
        match &self.role {
            Role::Leader(l) => Some(l.ballot),
            Role::Candidate { ballot, .. } => Some(*ballot),
            Role::Follower => None,
        }
    }

    fn step_down(&mut self, out: &mut Out<V>) {
        if self.is_leader() {
            out.emit(Event::SteppedDown);
        }
        self.role = Role::Follower;
        self.reset_timer();
    }

    fn campaign(&mut self, out: &mut Out<V>) {
        self.round = self.round.max(self.promised.round) + 1;
        let ballot = Ballot {
            round: self.round,
            node: self.cfg.id,
        };
        out.persist(Write::Round(self.round));
        let from = self.learned_upto + 1;
        self.step_down(out);
        self.promise(ballot, out);
        let own = self.accepted_from(from);
        self.role = Role::Candidate {
            ballot,
            from,
            promises: BTreeMap::from([(self.cfg.id, own)]),
        };
        self.leader = None;
        for p in self.targets() {
            if p != self.cfg.id {
                out.send(p, Msg::Prepare { ballot, from });
            }
        }
        self.try_lead(out);
    }

    fn accepted_from(&self, from: Slot) -> Vec<Report<V>> {
        self.accepted
            .range(from..)
            .map(|(s, (b, c))| (*s, *b, c.clone()))
            .collect()
    }

    /// With promises from a majority of the members of its first slot, the
    /// candidate takes over the log.
    fn try_lead(&mut self, out: &mut Out<V>) {
        let Role::Candidate {
            ballot,
            from,
            promises,
        } = &mut self.role
        else {
            return;
        };
        // Slots learned while campaigning (from a snapshot in a promise, or
        // a `Learn` still on its way from the last leader) are chosen
        // already: nothing to propose there.
        let from = (*from).max(self.learned_upto + 1);
        let promisers: BTreeSet<NodeId> = promises.keys().copied().collect();
        if !majority_of(&promisers, conf_at(&self.confs, from)) {
            return;
        }
        let ballot = *ballot;
        let promises = std::mem::take(promises);
        let mut asked = self.targets();
        asked.insert(self.cfg.id);
        self.role = Role::Leader(Box::new(Leader {
            ballot,
            from,
            next: from,
            promisers,
            asked,
            found: BTreeMap::new(),
            takeover_last: from - 1,
            noops_until: 0,
            queued: VecDeque::new(),
            inflight: BTreeMap::new(),
            peers: BTreeMap::new(),
            round: 0,
            acked: BTreeMap::new(),
            round_wanted: false,
            held_reads: Vec::new(),
            reads: Vec::new(),
            ready_reads: Vec::new(),
        }));
        out.emit(Event::BecameLeader { ballot });
        for reports in promises.into_values() {
            self.take_reports(reports);
        }
        self.refresh_peers();
        self.drive(out);
    }

    /// Adds what a promiser reported to phase 1's findings, for the slots
    /// this leader has not proposed in yet.
    fn take_reports(&mut self, reports: Vec<Report<V>>) {
        if self.bugs.skip_phase1 {
            return;
        }
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        for (s, b, c) in reports.into_iter().filter(|(s, _, _)| *s >= l.next) {
            paxos::keep_highest(l.found.entry(s).or_default(), b, c);
            l.takeover_last = l.takeover_last.max(s);
        }
    }

    /// Learns every in-flight slot a majority of its members accepted, in
    /// order.
    fn advance_commit(&mut self, out: &mut Out<V>) {
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let mut chosen = Vec::new();
        while let Some(entry) = l.inflight.first_entry() {
            let slot = *entry.key();
            if slot != self.learned_upto + 1 + chosen.len() as u64
                || !majority_of(&entry.get().1, conf_at(&self.confs, slot))
            {
                break;
            }
            let (slot, (cmd, _)) = entry.remove_entry();
            chosen.push((slot, cmd));
        }
        for (slot, cmd) in chosen {
            self.learn(slot, cmd, out);
        }
        self.apply(out);
    }

    fn learn(&mut self, slot: Slot, cmd: Command<V>, out: &mut Out<V>) {
        if slot <= self.learned_upto || self.learned.contains_key(&slot) {
            return;
        }
        if let Command::Members(m) = &cmd {
            self.confs.insert(slot + self.conf_delay(), m.clone());
        }
        let members_changed = matches!(cmd, Command::Members(_));
        self.learned.insert(slot, cmd.clone());
        out.persist(Write::Learn(slot, cmd));
        self.learned_upto = prefix(&self.learned, self.learned_upto);
        // A leader can learn a slot it is still driving from a `Learn` an
        // earlier leader sent: the value is the same (the synod's rule
        // carried it on), and the slot needs no more accepts.
        if let Role::Leader(l) = &mut self.role {
            l.inflight
                .retain(|s, _| *s > self.learned_upto && !self.learned.contains_key(s));
            // Nothing to propose in slots learned that way.
            l.next = l.next.max(self.learned_upto + 1);
            l.found = l.found.split_off(&l.next);
        }
        if members_changed {
            self.refresh_peers();
        }
    }

    fn apply(&mut self, out: &mut Out<V>) {
        let before = self.applied;
        while self.applied < self.learned_upto {
            self.applied += 1;
            let cmd = self.learned[&self.applied].clone();
            out.emit(Event::Applied {
                slot: self.applied,
                cmd,
            });
        }
        if self.applied > before {
            self.serve_reads(out);
        }
    }

    /// A follower learns the slots up to `commit` that it accepted at the
    /// leader's own ballot: that is the value the leader chose there.
    fn learn_committed(&mut self, ballot: Ballot, commit: Slot, out: &mut Out<V>) {
        let mut s = self.learned_upto + 1;
        while s <= commit {
            match self.accepted.get(&s) {
                Some((b, c)) if *b == ballot => {
                    let c = c.clone();
                    self.learn(s, c, out);
                }
                _ => break,
            }
            s += 1;
        }
        self.apply(out);
    }

    /// A message from the leader of `ballot`: keep following it.
    fn heard_leader(&mut self, ballot: Ballot) {
        if !self.is_leader() {
            self.role = Role::Follower;
            self.leader = Some(ballot.node);
            self.elapsed = 0;
        }
    }

    fn on_prepare(&mut self, from: NodeId, ballot: Ballot, first: Slot, out: &mut Out<V>) {
        self.round = self.round.max(ballot.round);
        if !self.promised.admits_prepare(ballot) {
            let promised = self.promised;
            out.send(from, Msg::Nack { ballot, promised });
            return;
        }
        self.promise(ballot, out);
        // Give the candidate the time to finish.
        self.elapsed = 0;
        let snapshot = self
            .snapshot
            .clone()
            .filter(|s| s.slot >= first && !self.bugs.promise_without_snapshot);
        let accepted = self.accepted_from(first);
        let learned = self.learned_upto;
        out.send(
            from,
            Msg::Promise {
                ballot,
                accepted,
                learned,
                snapshot,
            },
        );
    }

    fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        first: Slot,
        cmds: Vec<Command<V>>,
        commit: Slot,
        out: &mut Out<V>,
    ) {
        self.round = self.round.max(ballot.round);
        if !self.promised.admits_accept(ballot) {
            let promised = self.promised;
            out.send(from, Msg::Nack { ballot, promised });
            return;
        }
        self.promise(ballot, out);
        self.heard_leader(ballot);
        let last = first + cmds.len() as u64 - 1;
        let compacted = self.compacted();
        for (i, cmd) in cmds.into_iter().enumerate() {
            let slot = first + i as u64;
            // A compacted slot is chosen: nothing to accept there.
            if slot > compacted && self.accepted.get(&slot) != Some(&(ballot, cmd.clone())) {
                self.accepted.insert(slot, (ballot, cmd.clone()));
                out.persist(Write::Accept(slot, ballot, cmd));
            }
        }
        self.learn_committed(ballot, commit, out);
        let learned = self.learned_upto;
        out.send(
            from,
            Msg::Accepted {
                ballot,
                first,
                last,
                learned,
            },
        );
    }

    fn on_accepted(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        range: (Slot, Slot),
        learned: Slot,
        out: &mut Out<V>,
    ) {
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        if l.ballot != ballot {
            return;
        }
        for (_, (_, by)) in l.inflight.range_mut(range.0..=range.1) {
            by.insert(from);
        }
        if let Some(peer) = l.peers.get_mut(&from) {
            peer.outstanding = peer.outstanding.saturating_sub(1);
            peer.silent = 0;
            if range.0 <= peer.accepted_upto + 1 {
                peer.accepted_upto = peer.accepted_upto.max(range.1);
            }
        }
        self.drive(out);
        // A peer whose learned prefix runs up to the slots it just accepted
        // learns them from the commit index of the next Accept or
        // heartbeat. Only a gap before them (Accepts it missed for slots
        // chosen since) needs the values sent.
        if learned + 1 < range.0 {
            self.catch_up(from, learned, out);
        }
    }

    /// Sends `peer` the chosen values it has not learned, a batch at a time,
    /// or the snapshot if it lags behind that.
    ///
    /// A peer's learned prefix trails the leader's by the Accepts in
    /// flight, and it learns what it accepted from the commit index of the
    /// next message, so right after the leader compacts, every peer seems
    /// to lag behind the snapshot: sending each the whole state then (once
    /// per answer) cost the service more than the writes did. A peer that
    /// accepted, in this ballot, every slot from its learned prefix through
    /// the snapshot's needs only the commit index; the others get the
    /// snapshot, at most once a tick.
    fn catch_up(&mut self, peer: NodeId, learned: Slot, out: &mut Out<V>) {
        if learned >= self.learned_upto {
            return;
        }
        if let Some(snap) = self.snapshot.as_ref().filter(|s| learned < s.slot) {
            // A leader that just stepped down (it removed itself) still
            // answers: the peer may learn only from this snapshot that it
            // is a member, and must campaign.
            if let Role::Leader(l) = &mut self.role {
                if let Some(p) = l.peers.get_mut(&peer) {
                    let holds = learned + 1 >= p.first && p.accepted_upto >= snap.slot;
                    if holds || p.snapshot_age == Some(0) {
                        return;
                    }
                    p.snapshot_age = Some(0);
                }
            }
            out.send(peer, Msg::Snapshot(snap.clone()));
            return;
        }
        let first = learned + 1;
        let cmds: Vec<Command<V>> = self
            .learned
            .range(first..=self.learned_upto)
            .take(self.cfg.max_batch)
            .map(|(_, c)| c.clone())
            .collect();
        out.send(peer, Msg::Learn { first, cmds });
    }

    fn on_nack(&mut self, ballot: Ballot, promised: Ballot, out: &mut Out<V>) {
        self.round = self.round.max(promised.round);
        if self.own_ballot() == Some(ballot) && promised > ballot {
            self.step_down(out);
        }
    }

    fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        accepted: Vec<Report<V>>,
        snapshot: Option<Snapshot>,
        out: &mut Out<V>,
    ) {
        if self.own_ballot() != Some(ballot) {
            return;
        }
        // The slots the snapshot replaced are chosen: this node must learn
        // them, not propose there ([`Self::try_lead`] starts after its
        // learned prefix; a leader this far behind steps down).
        if let Some(snap) = snapshot {
            self.install(snap, out);
        }
        match &mut self.role {
            Role::Candidate { promises, .. } => {
                promises.insert(from, accepted);
                self.try_lead(out);
            }
            // A member the leader asked once the members changed.
            Role::Leader(l) => {
                l.promisers.insert(from);
                self.take_reports(accepted);
                self.drive(out);
            }
            Role::Follower => {}
        }
    }

    /// The leader's round: to a peer that has left Accepts unanswered for
    /// two ticks (lost, or it restarted), the first run of slots it has not
    /// accepted again, with its pipeline reset; to the others, that the
    /// leader is alive.
    fn heartbeat(&mut self, out: &mut Out<V>) {
        // Members whose slots are all learned leave the peers here.
        self.refresh_peers();
        // A prepare or promise for the members a change brought may be
        // lost: ask again those that have not promised.
        if let Role::Leader(l) = &mut self.role {
            l.asked.clone_from(&l.promisers);
        }
        self.drive(out);
        let (max_batch, commit) = (self.cfg.max_batch, self.learned_upto);
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let ballot = l.ballot;
        l.round += 1;
        l.round_wanted = false;
        let round = l.round;
        for (p, peer) in l.peers.iter_mut() {
            peer.silent += 1;
            peer.snapshot_age = peer.snapshot_age.map(|age| age + 1);
            let mut missing = l.inflight.iter().filter(|(_, (_, by))| !by.contains(p));
            let resend = peer.silent >= 2;
            let msg = match missing.next() {
                Some((first, (c, _))) if resend => {
                    let mut cmds = vec![c.clone()];
                    for (s, (c, _)) in missing.take(max_batch - 1) {
                        if *s != first + cmds.len() as u64 {
                            break;
                        }
                        cmds.push(c.clone());
                    }
                    peer.sent = peer.sent.max(first + cmds.len() as u64 - 1);
                    peer.outstanding = 1;
                    peer.silent = 0;
                    Msg::Accept {
                        ballot,
                        first: *first,
                        cmds,
                        commit,
                    }
                }
                _ => Msg::Heartbeat {
                    ballot,
                    commit,
                    round,
                },
            };
            out.send(*p, msg);
        }
    }

    pub fn describe(&self) -> String {
        let role = match &self.role {
            Role::Follower => match self.leader {
                Some(l) => format!("follows n{l}"),
                None => "follower".to_string(),
            },
            Role::Candidate { ballot, .. } => format!("prepares {}.{}", ballot.round, ballot.node),
            Role::Leader(l) => format!("leads {}.{}", l.ballot.round, l.ballot.node),
        };
        let mut s = format!("{role}, learned {}", self.learned_upto);
        if self.compacted() > 0 {
            s += &format!(" (snapshot {})", self.compacted());
        }
        if *self.members() != self.initial {
            let m: Vec<String> = self.members().iter().map(|m| format!("n{m}")).collect();
            s += &format!(", members {}", m.join(" "));
        }
        s
    }

    /// A message from `from`.
    pub fn step(&mut self, from: NodeId, msg: Msg<V>, out: &mut Out<V>) {
        if from == self.cfg.id {
            return;
        }
        match msg {
            Msg::Prepare {
                ballot,
                from: first,
            } => self.on_prepare(from, ballot, first, out),
            Msg::Promise {
                ballot,
                accepted,
                snapshot,
                ..
            } => self.on_promise(from, ballot, accepted, snapshot, out),
            Msg::Nack { ballot, promised } => self.on_nack(ballot, promised, out),
            Msg::Accept {
                ballot,
                first,
                cmds,
                commit,
            } => {
                if !cmds.is_empty() {
                    self.on_accept(from, ballot, first, cmds, commit, out);
                }
            }
            Msg::Accepted {
                ballot,
                first,
                last,
                learned,
            } => self.on_accepted(from, ballot, (first, last), learned, out),
            Msg::Heartbeat {
                ballot,
                commit,
                round,
            } => {
                self.round = self.round.max(ballot.round);
                if !self.promised.admits_accept(ballot) {
                    let promised = self.promised;
                    out.send(from, Msg::Nack { ballot, promised });
                    return;
                }
                self.promise(ballot, out);
                self.heard_leader(ballot);
                self.learn_committed(ballot, commit, out);
                let learned = self.learned_upto;
                out.send(
                    from,
                    Msg::HeartbeatResp {
                        ballot,
                        learned,
                        round,
                    },
                );
            }
            Msg::HeartbeatResp {
                ballot,
                learned,
                round,
            } => {
                if let Role::Leader(l) = &mut self.role {
                    if l.ballot == ballot {
                        let acked = l.acked.entry(from).or_default();
                        *acked = (*acked).max(round);
                        self.confirm_reads(out);
                        self.catch_up(from, learned, out);
                    }
                }
            }
            Msg::Learn { first, cmds } => {
                for (i, cmd) in cmds.into_iter().enumerate() {
                    self.learn(first + i as u64, cmd, out);
                }
                self.apply(out);
                // A leader learning this way may now open its window.
                if self.is_leader() {
                    self.drive(out);
                }
            }
            Msg::Snapshot(snap) => self.install(snap, out),
        }
        self.check_invariants();
    }

    /// One tick of the clock.
    pub fn tick(&mut self, out: &mut Out<V>) {
        if self.is_leader() {
            self.heartbeat(out);
        } else if self
            .members_at(self.learned_upto + 1)
            .contains(&self.cfg.id)
        {
            self.elapsed += 1;
            if self.elapsed >= self.timeout {
                self.reset_timer();
                self.campaign(out);
            }
        }
        self.check_invariants();
    }

    fn check_invariants(&self) {
        let compacted = self.compacted();
        assert!(
            compacted <= self.applied && self.applied <= self.learned_upto,
            "snapshot {compacted}, applied {}, learned {}: out of order",
            self.applied,
            self.learned_upto
        );
        assert!(
            self.learned.keys().next().is_none_or(|s| *s > compacted)
                && self.accepted.keys().next().is_none_or(|s| *s > compacted),
            "slots kept that snapshot {compacted} replaced"
        );
        assert!(
            self.confs
                .keys()
                .next()
                .is_some_and(|k| *k <= compacted + 1),
            "no members known for slot {}",
            compacted + 1
        );
        if let Role::Leader(l) = &self.role {
            assert_eq!(l.ballot, self.promised, "a leader promised another ballot");
            assert!(
                l.inflight
                    .keys()
                    .all(|s| *s > self.learned_upto && *s < l.next),
                "n{}: leader's slots in flight {:?} outside ({}, {})",
                self.cfg.id,
                l.inflight.keys().collect::<Vec<_>>(),
                self.learned_upto,
                l.next
            );
            assert!(
                l.next <= self.learned_upto + self.cfg.window + 1,
                "n{}: proposed in slot {} beyond the window after {}",
                self.cfg.id,
                l.next - 1,
                self.learned_upto
            );
        }
        if let Role::Candidate { ballot, .. } = &self.role {
            assert_eq!(
                *ballot, self.promised,
                "a candidate promised another ballot"
            );
        }
        // The learned prefix ends where the map has a hole (checked at its
        // end only: walking it from 1 would cost a whole log per step).
        assert!(
            !self.learned.contains_key(&(self.learned_upto + 1))
                && (self.learned_upto == compacted
                    || self.learned.contains_key(&self.learned_upto)),
            "learned prefix {} out of step with the learned slots",
            self.learned_upto
        );
    }
}

#[cfg(test)]
mod tests;
