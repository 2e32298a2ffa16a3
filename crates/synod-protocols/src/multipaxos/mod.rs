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
//! Not yet here (issue 17): reconfiguration, leader leases for local reads.
//! Reads go through the log.

pub mod kv_node;

use crate::paxos::{self, Ballot};
use crate::raft::Payload;
use crate::sansio::{NodeId, Output};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

pub use kv_node::MpKvNode;

/// What a slot holds: a command of the application, or a no-op that a new
/// leader puts where it found nothing, so that no gap stays open.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Command<V> {
    Noop,
    App(V),
}

/// A slot's number. The first slot is 1.
pub type Slot = u64;

/// The application's state after every slot up to `slot`, standing in for
/// those slots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub slot: Slot,
    pub data: Payload,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg<V> {
    /// Phase 1 for every slot from `from` on.
    Prepare {
        ballot: Ballot,
        from: Slot,
    },
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
    Nack {
        ballot: Ballot,
        promised: Ballot,
    },
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
    /// The leader is alive; its learned prefix.
    Heartbeat {
        ballot: Ballot,
        commit: Slot,
    },
    HeartbeatResp {
        ballot: Ballot,
        learned: Slot,
    },
    /// Chosen values of the slots from `first` on, for a follower that lags.
    Learn {
        first: Slot,
        cmds: Vec<Command<V>>,
    },
    /// The leader's snapshot, for a follower that lags behind it.
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
}

pub type Out<V> = Output<Write<V>, Msg<V>, Event<V>>;

/// Static configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub id: NodeId,
    /// Acceptors are nodes `0..n`.
    pub n: usize,
    /// A follower campaigns after a random `[election_ticks, 2 *
    /// election_ticks)` ticks without hearing a leader.
    pub election_ticks: u32,
    /// Slots per `Accept` and per `Learn`.
    pub max_batch: usize,
    /// Unanswered `Accept`s per follower. Proposals made while the pipeline
    /// is full leave together in the next one (as in the Raft core).
    pub max_inflight: usize,
    /// For the application above: compact after this many applied slots
    /// since the last snapshot (0: never).
    pub snapshot_every: u64,
}

impl Config {
    pub fn new(id: NodeId, n: usize) -> Config {
        assert!(id < n as NodeId, "node {id} is not in a cluster of {n}");
        Config {
            id,
            n,
            election_ticks: 10,
            max_batch: 64,
            max_inflight: 4,
            snapshot_every: 0,
        }
    }
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
}

#[derive(Clone, Debug)]
enum Role<V> {
    Follower,
    Candidate {
        ballot: Ballot,
        from: Slot,
        promises: BTreeMap<NodeId, Vec<(Slot, Ballot, Command<V>)>>,
    },
    Leader {
        ballot: Ballot,
        next: Slot,
        /// Proposed, not yet chosen: the command and who accepted it.
        inflight: BTreeMap<Slot, (Command<V>, BTreeSet<NodeId>)>,
        /// Per node: the last slot sent to it, its unanswered Accepts, and
        /// the ticks since it last answered one.
        sent: Vec<Slot>,
        outstanding: Vec<usize>,
        silent: Vec<u32>,
    },
}

/// One Multi-Paxos node (see the module docs).
#[derive(Clone, Debug)]
pub struct MultiPaxosNode<V> {
    cfg: Config,
    promised: Ballot,
    /// The highest round this node used or saw.
    round: u64,
    accepted: BTreeMap<Slot, (Ballot, Command<V>)>,
    learned: BTreeMap<Slot, Command<V>>,
    /// Stands in for every slot up to its own; nothing is kept about them.
    snapshot: Option<Snapshot>,
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

impl<V: Clone + Debug + PartialEq> MultiPaxosNode<V> {
    /// Boots from `disk`. Slots learned before the crash count as applied:
    /// the application rebuilds its state from [`MultiPaxosNode::snapshot`]
    /// and [`MultiPaxosNode::learned`].
    pub fn new(cfg: Config, disk: &Disk<V>, seed: u64) -> Self {
        let learned_upto = disk.learned_prefix();
        let mut node = MultiPaxosNode {
            cfg,
            promised: disk.promised,
            round: disk.round.max(disk.promised.round),
            accepted: disk.accepted.clone(),
            learned: disk.learned.clone(),
            snapshot: disk.snapshot.clone(),
            learned_upto,
            applied: learned_upto,
            role: Role::Follower,
            leader: None,
            elapsed: 0,
            timeout: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            bugs: Bugs::default(),
        };
        node.reset_timer();
        node
    }

    #[cfg(feature = "broken")]
    pub fn with_bugs(mut self, bugs: Bugs) -> Self {
        self.bugs = bugs;
        if bugs.forget_promises {
            // Booted without the promise its disk holds.
            self.promised = Ballot::ZERO;
        }
        self
    }

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader { .. })
    }

    /// The leader this node believes in (itself when it leads).
    pub fn leader(&self) -> Option<NodeId> {
        match self.role {
            Role::Leader { .. } => Some(self.cfg.id),
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
        let snap = Snapshot { slot, data };
        out.persist(Write::Snapshot(snap.clone()));
        self.forget_upto(snap);
        self.check_invariants();
    }

    /// Keeps `snap` in place of every slot up to its own.
    fn forget_upto(&mut self, snap: Snapshot) {
        drop_upto(&mut self.accepted, snap.slot);
        drop_upto(&mut self.learned, snap.slot);
        self.snapshot = Some(snap);
    }

    /// Takes a peer's snapshot if it is ahead of the learned prefix: the
    /// application's state becomes the snapshot's, then the slots learned
    /// after it (if any) are applied.
    fn install(&mut self, snap: Snapshot, out: &mut Out<V>) {
        if snap.slot <= self.learned_upto {
            return;
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

    fn quorum(&self) -> usize {
        self.cfg.n / 2 + 1
    }

    fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.cfg.n as NodeId).filter(move |p| *p != self.cfg.id)
    }

    fn reset_timer(&mut self) {
        let e = self.cfg.election_ticks;
        self.elapsed = 0;
        self.timeout = self.rng.gen_range(e..2 * e);
    }

    /// Proposes `cmd` in the next free slot, if this node leads; the slot
    /// it got, or `None` (the caller should redirect to [`Self::leader`]).
    pub fn propose(&mut self, cmd: V, out: &mut Out<V>) -> Option<Slot> {
        let Role::Leader { ballot, next, .. } = &mut self.role else {
            return None;
        };
        let (ballot, slot) = (*ballot, *next);
        *next += 1;
        self.lead_slot(ballot, slot, Command::App(cmd), out);
        self.send_accepts(out);
        // A cluster of one chooses alone.
        self.advance_commit(out);
        Some(slot)
    }

    /// The leader accepts `cmd` in `slot` itself; [`Self::send_accepts`]
    /// asks the others.
    fn lead_slot(&mut self, ballot: Ballot, slot: Slot, cmd: Command<V>, out: &mut Out<V>) {
        self.accepted.insert(slot, (ballot, cmd.clone()));
        out.persist(Write::Accept(slot, ballot, cmd.clone()));
        if let Role::Leader { inflight, .. } = &mut self.role {
            inflight.insert(slot, (cmd, BTreeSet::from([self.cfg.id])));
        }
    }

    /// Sends every follower whose pipeline has room the slots it has not
    /// been sent, a batch per `Accept`.
    fn send_accepts(&mut self, out: &mut Out<V>) {
        let (max_batch, max_inflight) = (self.cfg.max_batch, self.cfg.max_inflight);
        let commit = self.learned_upto;
        let Role::Leader {
            ballot,
            next,
            sent,
            outstanding,
            ..
        } = &mut self.role
        else {
            return;
        };
        let ballot = *ballot;
        let compacted = self.snapshot.as_ref().map_or(0, |s| s.slot);
        for p in 0..self.cfg.n {
            if p as NodeId == self.cfg.id {
                continue;
            }
            // Slots in the snapshot are chosen; a follower that never
            // accepted them gets the snapshot ([`Self::catch_up`]).
            sent[p] = sent[p].max(compacted);
            while outstanding[p] < max_inflight && sent[p] + 1 < *next {
                let first = sent[p] + 1;
                let last = (*next - 1).min(sent[p] + max_batch as u64);
                let cmds: Vec<Command<V>> = (first..=last)
                    .map(|s| match self.accepted.get(&s) {
                        Some((b, c)) if *b == ballot => c.clone(),
                        _ => unreachable!("a leader accepted every slot it leads"),
                    })
                    .collect();
                out.send(
                    p as NodeId,
                    Msg::Accept {
                        ballot,
                        first,
                        cmds,
                        commit,
                    },
                );
                sent[p] = last;
                outstanding[p] += 1;
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
        let mine = match &self.role {
            Role::Leader { ballot: b, .. } | Role::Candidate { ballot: b, .. } => Some(*b),
            Role::Follower => None,
        };
        if mine.is_some_and(|b| b < ballot) {
            self.step_down(out);
        }
    }

    fn step_down(&mut self, out: &mut Out<V>) {
        if matches!(self.role, Role::Leader { .. }) {
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
        for p in self.peers().collect::<Vec<_>>() {
            out.send(p, Msg::Prepare { ballot, from });
        }
        self.try_lead(out);
    }

    fn accepted_from(&self, from: Slot) -> Vec<(Slot, Ballot, Command<V>)> {
        self.accepted
            .range(from..)
            .map(|(s, (b, c))| (*s, *b, c.clone()))
            .collect()
    }

    /// With promises from a majority, the candidate takes over the log.
    fn try_lead(&mut self, out: &mut Out<V>) {
        let Role::Candidate {
            ballot,
            from,
            promises,
        } = &self.role
        else {
            return;
        };
        if promises.len() < self.quorum() {
            return;
        }
        let (ballot, from) = (*ballot, *from);
        let mut highest: BTreeMap<Slot, Option<(Ballot, Command<V>)>> = BTreeMap::new();
        if !self.bugs.skip_phase1 {
            for (s, b, c) in promises.values().flatten() {
                paxos::keep_highest(highest.entry(*s).or_default(), *b, c.clone());
            }
        }
        // Slots learned while campaigning (a `Learn` still on its way from
        // the last leader) are chosen already: nothing to propose there.
        let from = from.max(self.learned_upto + 1);
        let last = highest
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(from - 1);
        self.role = Role::Leader {
            ballot,
            next: last + 1,
            inflight: BTreeMap::new(),
            sent: vec![from - 1; self.cfg.n],
            outstanding: vec![0; self.cfg.n],
            silent: vec![0; self.cfg.n],
        };
        out.emit(Event::BecameLeader { ballot });
        for slot in from..=last {
            let cmd = match highest.remove(&slot).flatten() {
                Some((_, c)) => c,
                None => Command::Noop,
            };
            self.lead_slot(ballot, slot, cmd, out);
        }
        self.send_accepts(out);
        self.advance_commit(out);
    }

    /// Learns every in-flight slot a majority accepted, in order.
    fn advance_commit(&mut self, out: &mut Out<V>) {
        let quorum = self.quorum();
        let Role::Leader { inflight, .. } = &mut self.role else {
            return;
        };
        let mut chosen = Vec::new();
        while let Some(entry) = inflight.first_entry() {
            if entry.get().1.len() < quorum
                || *entry.key() != self.learned_upto + 1 + chosen.len() as u64
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
        self.learned.insert(slot, cmd.clone());
        out.persist(Write::Learn(slot, cmd));
        self.learned_upto = prefix(&self.learned, self.learned_upto);
        // A leader can learn a slot it is still driving from a `Learn` an
        // earlier leader sent: the value is the same (the synod's rule
        // carried it on), and the slot needs no more accepts.
        if let Role::Leader { inflight, .. } = &mut self.role {
            inflight.retain(|s, _| *s > self.learned_upto && !self.learned.contains_key(s));
        }
    }

    fn apply(&mut self, out: &mut Out<V>) {
        while self.applied < self.learned_upto {
            self.applied += 1;
            let cmd = self.learned[&self.applied].clone();
            out.emit(Event::Applied {
                slot: self.applied,
                cmd,
            });
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
        if !matches!(self.role, Role::Leader { .. }) {
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
        let Role::Leader {
            ballot: mine,
            inflight,
            outstanding,
            silent,
            ..
        } = &mut self.role
        else {
            return;
        };
        if *mine != ballot {
            return;
        }
        for (_, (_, by)) in inflight.range_mut(range.0..=range.1) {
            by.insert(from);
        }
        outstanding[from as usize] = outstanding[from as usize].saturating_sub(1);
        silent[from as usize] = 0;
        self.advance_commit(out);
        self.send_accepts(out);
        self.catch_up(from, learned, out);
    }

    /// Sends `peer` the chosen values it has not learned, a batch at a time,
    /// or the snapshot if it lags behind that.
    fn catch_up(&mut self, peer: NodeId, learned: Slot, out: &mut Out<V>) {
        if learned >= self.learned_upto {
            return;
        }
        if let Some(snap) = self.snapshot.as_ref().filter(|s| learned < s.slot) {
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
        let mine = match &self.role {
            Role::Leader { ballot: b, .. } | Role::Candidate { ballot: b, .. } => *b,
            Role::Follower => return,
        };
        if mine == ballot && promised > ballot {
            self.step_down(out);
        }
    }

    fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        accepted: Vec<(Slot, Ballot, Command<V>)>,
        snapshot: Option<Snapshot>,
        out: &mut Out<V>,
    ) {
        if !matches!(&self.role, Role::Candidate { ballot: b, .. } if *b == ballot) {
            return;
        }
        // The slots the snapshot replaced are chosen: the candidate must
        // learn them, not propose there ([`Self::try_lead`] starts after
        // its learned prefix).
        if let Some(snap) = snapshot {
            self.install(snap, out);
        }
        if let Role::Candidate { promises, .. } = &mut self.role {
            promises.insert(from, accepted);
        }
        self.try_lead(out);
    }

    /// The leader's round: to a follower that has left Accepts unanswered
    /// for two ticks (lost, or it restarted), the first run of slots it has
    /// not accepted again, with its pipeline reset; to the others, that the
    /// leader is alive.
    fn heartbeat(&mut self, out: &mut Out<V>) {
        let (max_batch, commit) = (self.cfg.max_batch, self.learned_upto);
        let id = self.cfg.id;
        let Role::Leader {
            ballot,
            inflight,
            sent,
            outstanding,
            silent,
            ..
        } = &mut self.role
        else {
            return;
        };
        let ballot = *ballot;
        for p in 0..self.cfg.n {
            if p as NodeId == id {
                continue;
            }
            silent[p] += 1;
            let mut missing = inflight
                .iter()
                .filter(|(_, (_, by))| !by.contains(&(p as NodeId)));
            let resend = silent[p] >= 2;
            let msg = match missing.next() {
                Some((first, (c, _))) if resend => {
                    let mut cmds = vec![c.clone()];
                    for (s, (c, _)) in missing.take(max_batch - 1) {
                        if *s != first + cmds.len() as u64 {
                            break;
                        }
                        cmds.push(c.clone());
                    }
                    sent[p] = sent[p].max(first + cmds.len() as u64 - 1);
                    outstanding[p] = 1;
                    silent[p] = 0;
                    Msg::Accept {
                        ballot,
                        first: *first,
                        cmds,
                        commit,
                    }
                }
                _ => Msg::Heartbeat { ballot, commit },
            };
            out.send(p as NodeId, msg);
        }
    }

    pub fn describe(&self) -> String {
        let role = match &self.role {
            Role::Follower => match self.leader {
                Some(l) => format!("follows n{l}"),
                None => "follower".to_string(),
            },
            Role::Candidate { ballot, .. } => format!("prepares {}.{}", ballot.round, ballot.node),
            Role::Leader { ballot, .. } => format!("leads {}.{}", ballot.round, ballot.node),
        };
        match self.compacted() {
            0 => format!("{role}, learned {}", self.learned_upto),
            c => format!("{role}, learned {} (snapshot {c})", self.learned_upto),
        }
    }

    /// A message from `from`.
    pub fn step(&mut self, from: NodeId, msg: Msg<V>, out: &mut Out<V>) {
        if from as usize >= self.cfg.n || from == self.cfg.id {
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
            Msg::Heartbeat { ballot, commit } => {
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
                out.send(from, Msg::HeartbeatResp { ballot, learned });
            }
            Msg::HeartbeatResp { ballot, learned } => {
                if matches!(&self.role, Role::Leader { ballot: b, .. } if *b == ballot) {
                    self.catch_up(from, learned, out);
                }
            }
            Msg::Learn { first, cmds } => {
                for (i, cmd) in cmds.into_iter().enumerate() {
                    self.learn(first + i as u64, cmd, out);
                }
                self.apply(out);
            }
            Msg::Snapshot(snap) => {
                if snap.slot > self.learned_upto {
                    // Only a leader's snapshot travels, and only to nodes
                    // behind it: a leader this far behind has been replaced.
                    if self.is_leader() {
                        self.step_down(out);
                    }
                    self.install(snap, out);
                }
            }
        }
        self.check_invariants();
    }

    /// One tick of the clock.
    pub fn tick(&mut self, out: &mut Out<V>) {
        if matches!(self.role, Role::Leader { .. }) {
            self.heartbeat(out);
        } else {
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
        if let Role::Leader {
            ballot,
            next,
            inflight,
            ..
        } = &self.role
        {
            assert_eq!(*ballot, self.promised, "a leader promised another ballot");
            assert!(
                inflight.keys().all(|s| *s > self.learned_upto && s < next),
                "n{}: leader's slots in flight {:?} outside ({}, {next})",
                self.cfg.id,
                inflight.keys().collect::<Vec<_>>(),
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
