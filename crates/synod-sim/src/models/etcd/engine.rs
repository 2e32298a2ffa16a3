//! What `--algo etcd` checks that depends on the engine under the
//! replicas, and how it keeps their disks.
//!
//! * [`OnRaft`]: the service as it runs, the Raft core on the WAL adapter
//!   over the simulated disk, with every Raft property ([`RaftChecks`]).
//! * [`OnMultiPaxos`] (`--engine multipaxos`): the same replicas on the
//!   Multi-Paxos log, their records in the journal the service keeps them
//!   in ([`PaxosDisk`]: `PaxosLog` on the WAL over the simulated disk, torn
//!   writes and flipped bits included); checked: agreement per slot (every
//!   member that applies a slot applies the same value, in the same ballot
//!   round), slots applied in increasing order, and the storage verdicts
//!   (every recovery returns what was made durable, every failed one failed
//!   on damaged data). A slot skipped without a snapshot
//!   would show as stores that differ at the same applied slot, which the
//!   model compares for both engines.

use crate::models::paxos_disk::PaxosDisk;
use crate::models::raft_checks::{self, RaftChecks, StorageCounters};
use crate::models::wal_disk::{Durable, WalBacked, WalDisk};
use crate::report::RunReport;
use crate::sim::Ctl;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use synod_kv::engine::{Engine, MultiPaxosEngine, RaftEngine};
use synod_kv::replica::{Replica, ReplicaEvent, ReplicaInput};
use synod_protocols::raft::{ConfChange, Disk, Write};
use synod_protocols::{Node, NodeId};

/// What `--engine multipaxos` checks besides the etcd model's own.
pub const MULTIPAXOS_PROPERTIES: &[&str] = &[
    "agreement",
    "no_gap",
    "state_machine_safety",
    "membership",
    "storage",
];
/// What `--engine multipaxos` counts besides the etcd model's own.
pub const MULTIPAXOS_COUNTERS: &[&str] = &[
    "slots_chosen",
    "leaderships",
    "torn_writes",
    "torn_tails",
    "corruptions",
    "corruption_detected",
    "snapshots_written",
    "runs_with_torn_tails",
    "runs_with_corruption_detected",
];

/// The engine-specific half of the etcd model.
pub trait SimEngine: Sized {
    type Engine: Engine;
    /// A member as the simulator runs it.
    type Node: Node<Input = ReplicaInput, Event = ReplicaEvent>;
    /// Whether followers serve linearizable reads (by read index). If not,
    /// clients send reads where they send writes instead of to any member.
    const FOLLOWER_READS: bool;

    fn new(n: usize) -> Self;
    fn resize(&mut self, n: usize);
    /// Boots member `id` from `disk` with `build`.
    fn boot(
        &mut self,
        id: NodeId,
        disk: &<Self::Node as Node>::Disk,
        build: impl FnMut(&<Self::Engine as Engine>::Disk) -> Replica<Self::Engine>,
    ) -> Self::Node;
    /// The replica, unless the member stopped.
    fn replica(node: &Self::Node) -> Option<&Replica<Self::Engine>>;
    /// The member that leads, as far as the checks can tell.
    fn current_leader(&self, ctl: &Ctl<'_, Self::Node>) -> Option<NodeId>;
    /// The next change of members to ask `leader` for (members `0..n`, the
    /// first `voters` of them the initial ones), if any.
    fn next_change(
        &self,
        ctl: &mut Ctl<'_, Self::Node>,
        leader: NodeId,
        n: usize,
        voters: usize,
    ) -> Option<ConfChange>;
    /// Whether `node`'s members show `change` in force (an error says what
    /// they are instead).
    fn in_force(node: &Self::Node, change: ConfChange) -> Result<(), String>;

    fn corrupt(&mut self, _disk: &mut <Self::Node as Node>::Disk, _rng: &mut ChaCha8Rng) -> bool {
        false
    }
    fn tear(
        &mut self,
        _disk: &mut <Self::Node as Node>::Disk,
        _writes: &[<Self::Node as Node>::Write],
        _rng: &mut ChaCha8Rng,
    ) {
    }
    fn worth_tearing(_writes: &[<Self::Node as Node>::Write]) -> bool {
        true
    }

    fn on_crash(&mut self, ctl: &mut Ctl<'_, Self::Node>, node: NodeId);
    /// Member `from` sends `msg` now.
    fn on_send(
        &mut self,
        _ctl: &mut Ctl<'_, Self::Node>,
        _from: NodeId,
        _msg: &<Self::Node as Node>::Msg,
    ) {
    }
    fn on_restart(&mut self, ctl: &mut Ctl<'_, Self::Node>, node: NodeId);
    /// Compares the members' logs (periodically and at the quiet phase).
    fn check_logs(&mut self, ctl: &mut Ctl<'_, Self::Node>);
    fn on_applied(
        &mut self,
        ctl: &mut Ctl<'_, Self::Node>,
        node: NodeId,
        index: u64,
        term: u64,
        digest: u64,
    );
    fn on_became_leader(&mut self, ctl: &mut Ctl<'_, Self::Node>, node: NodeId, term: u64);
    fn finish(&mut self, ctl: &mut Ctl<'_, Self::Node>, report: &mut RunReport);
    /// Whether every member that is up has applied what its leader
    /// committed, for the end of a run (by default not asked).
    fn members_caught_up(&self, _ctl: &Ctl<'_, Self::Node>) -> bool {
        true
    }
    /// Deliberately broken (tests only): a member whose recovery refuses
    /// its damaged disk deletes it and starts over instead of staying down.
    fn wipe_on_corruption(&mut self);
}

/// The service's engine: Raft on the WAL, with [`RaftChecks`].
pub struct OnRaft(RaftChecks);

impl SimEngine for OnRaft {
    type Engine = RaftEngine;
    type Node = WalBacked<Replica>;
    const FOLLOWER_READS: bool = true;

    fn new(n: usize) -> Self {
        OnRaft(RaftChecks::new(n))
    }

    fn resize(&mut self, n: usize) {
        self.0.resize(n);
    }

    fn boot(
        &mut self,
        id: NodeId,
        disk: &WalDisk,
        build: impl FnMut(&Disk) -> Replica,
    ) -> Self::Node {
        self.0.boot(id, disk, build)
    }

    fn replica(node: &Self::Node) -> Option<&Replica> {
        node.inner()
    }

    fn current_leader(&self, ctl: &Ctl<'_, Self::Node>) -> Option<NodeId> {
        self.0.current_leader(ctl).map(|(id, _)| id)
    }

    fn members_caught_up(&self, ctl: &Ctl<'_, Self::Node>) -> bool {
        self.0.members_caught_up(ctl)
    }

    fn wipe_on_corruption(&mut self) {
        self.0.wipe_on_corruption();
    }

    fn next_change(
        &self,
        ctl: &mut Ctl<'_, Self::Node>,
        leader: NodeId,
        n: usize,
        voters: usize,
    ) -> Option<ConfChange> {
        let r = ctl.node(leader).and_then(WalBacked::raft).cloned()?;
        raft_checks::next_membership_change(&r, n, voters, ctl.rng())
    }

    fn in_force(node: &Self::Node, change: ConfChange) -> Result<(), String> {
        let Some(conf) = node.raft().map(|r| r.conf().clone()) else {
            return Ok(());
        };
        let in_force = match change {
            ConfChange::AddVoter(n) | ConfChange::PromoteLearner(n) => conf.is_voter(n),
            ConfChange::AddLearner(n) => conf.is_learner(n),
            ConfChange::RemoveNode(n) => !conf.contains(n),
        };
        if in_force {
            Ok(())
        } else {
            Err(format!("the configuration is {conf:?}"))
        }
    }

    fn corrupt(&mut self, disk: &mut WalDisk, rng: &mut ChaCha8Rng) -> bool {
        self.0.corrupt(disk, rng)
    }

    fn tear(&mut self, disk: &mut WalDisk, writes: &[Write], rng: &mut ChaCha8Rng) {
        self.0.tear(disk, writes, rng);
    }

    fn worth_tearing(writes: &[Write]) -> bool {
        RaftChecks::worth_tearing(writes)
    }

    fn on_crash(&mut self, ctl: &mut Ctl<'_, Self::Node>, node: NodeId) {
        self.0.on_crash(ctl, node);
    }

    fn on_send(
        &mut self,
        ctl: &mut Ctl<'_, Self::Node>,
        from: NodeId,
        msg: &synod_protocols::raft::Message,
    ) {
        self.0.on_send(ctl, from, msg);
    }

    fn on_restart(&mut self, ctl: &mut Ctl<'_, Self::Node>, node: NodeId) {
        self.0.on_restart(ctl, node);
    }

    fn check_logs(&mut self, ctl: &mut Ctl<'_, Self::Node>) {
        self.0.check_logs(ctl);
    }

    fn on_applied(
        &mut self,
        ctl: &mut Ctl<'_, Self::Node>,
        node: NodeId,
        index: u64,
        term: u64,
        digest: u64,
    ) {
        self.0.on_applied(ctl, node, index, term, digest);
    }

    fn on_became_leader(&mut self, ctl: &mut Ctl<'_, Self::Node>, node: NodeId, term: u64) {
        self.0.on_became_leader(ctl, node, term);
    }

    fn finish(&mut self, ctl: &mut Ctl<'_, Self::Node>, report: &mut RunReport) {
        self.0.finish(ctl, report);
    }
}

/// The replicas on Multi-Paxos (see the module docs).
pub struct OnMultiPaxos {
    /// Slot -> (round, digest, the first member to apply it).
    slots: BTreeMap<u64, (u64, u64, NodeId)>,
    /// The last slot each member applied in this life.
    last_applied: Vec<Option<u64>>,
    leaderships: u64,
    storage: StorageCounters,
    /// See [`SimEngine::wipe_on_corruption`].
    wipe_on_corruption: bool,
}

type MpReplica = Replica<MultiPaxosEngine>;

impl Durable for MpReplica {
    type OnDisk = PaxosDisk;
}

impl SimEngine for OnMultiPaxos {
    type Engine = MultiPaxosEngine;
    type Node = WalBacked<MpReplica>;
    /// A follower redirects reads to its leader (`read_index` is the
    /// leader's), which the clients follow.
    const FOLLOWER_READS: bool = false;

    fn new(n: usize) -> Self {
        OnMultiPaxos {
            slots: BTreeMap::new(),
            last_applied: vec![None; n],
            leaderships: 0,
            storage: StorageCounters::default(),
            wipe_on_corruption: false,
        }
    }

    fn resize(&mut self, n: usize) {
        self.last_applied.resize(n, None);
    }

    /// A node whose disk fails recovery stays stopped.
    fn boot(
        &mut self,
        id: NodeId,
        disk: &PaxosDisk,
        build: impl FnMut(&<MpReplica as Node>::Disk) -> MpReplica,
    ) -> Self::Node {
        self.storage.boot(id, disk, self.wipe_on_corruption, build)
    }

    fn wipe_on_corruption(&mut self) {
        self.wipe_on_corruption = true;
    }

    fn replica(node: &Self::Node) -> Option<&MpReplica> {
        node.inner()
    }

    /// The leader with the highest ballot.
    fn current_leader(&self, ctl: &Ctl<'_, Self::Node>) -> Option<NodeId> {
        (0..self.last_applied.len() as NodeId)
            .filter_map(|id| Some((id, ctl.node(id)?.inner()?.engine().core())))
            .filter(|(_, core)| core.is_leader())
            .max_by_key(|(_, core)| core.promised())
            .map(|(id, _)| id)
    }

    /// A member in, or, with more members than at the start, one out (the
    /// leader included). Only a leader with no change on its way is asked:
    /// the members it reports are then those it counts.
    fn next_change(
        &self,
        ctl: &mut Ctl<'_, Self::Node>,
        leader: NodeId,
        n: usize,
        voters: usize,
    ) -> Option<ConfChange> {
        let core = ctl.node(leader)?.inner()?.engine().core();
        if core.change_pending() {
            return None;
        }
        let members = core.members().clone();
        let outside: Vec<NodeId> = (0..n as NodeId).filter(|i| !members.contains(i)).collect();
        let rng = ctl.rng();
        if members.len() > voters {
            let m: Vec<NodeId> = members.into_iter().collect();
            Some(ConfChange::RemoveNode(m[rng.gen_range(0..m.len())]))
        } else if !outside.is_empty() {
            Some(ConfChange::AddVoter(
                outside[rng.gen_range(0..outside.len())],
            ))
        } else {
            None
        }
    }

    fn in_force(node: &Self::Node, change: ConfChange) -> Result<(), String> {
        let Some(replica) = node.inner() else {
            return Ok(());
        };
        let members = replica.engine().core().members();
        let in_force = match change {
            ConfChange::AddVoter(n) => members.contains(&n),
            ConfChange::RemoveNode(n) => !members.contains(&n),
            ConfChange::AddLearner(_) | ConfChange::PromoteLearner(_) => false,
        };
        if in_force {
            Ok(())
        } else {
            Err(format!("the members are {members:?}"))
        }
    }

    fn corrupt(&mut self, disk: &mut PaxosDisk, rng: &mut ChaCha8Rng) -> bool {
        let hit = disk.corrupt(rng).is_some();
        self.storage.corrupted(hit);
        hit
    }

    fn tear(
        &mut self,
        disk: &mut PaxosDisk,
        writes: &[<MpReplica as Node>::Write],
        rng: &mut ChaCha8Rng,
    ) {
        self.storage.torn();
        let (seed, budget) = (rng.gen(), rng.gen_range(0..12));
        disk.tear(writes, seed, budget);
    }

    fn on_crash(&mut self, _ctl: &mut Ctl<'_, Self::Node>, node: NodeId) {
        self.last_applied[node as usize] = None;
    }

    /// A node whose disk failed recovery stays down.
    fn on_restart(&mut self, ctl: &mut Ctl<'_, Self::Node>, node: NodeId) {
        self.last_applied[node as usize] = None;
        WalBacked::keep_stopped_down(ctl, node);
    }

    fn check_logs(&mut self, _ctl: &mut Ctl<'_, Self::Node>) {}

    fn on_applied(
        &mut self,
        ctl: &mut Ctl<'_, Self::Node>,
        node: NodeId,
        slot: u64,
        round: u64,
        digest: u64,
    ) {
        if let Some(last) = self.last_applied[node as usize] {
            if slot <= last {
                ctl.violation(
                    "no_gap",
                    Some(node),
                    format!("applied slot {slot} after slot {last}"),
                );
            }
        }
        self.last_applied[node as usize] = Some(slot);
        match self.slots.get(&slot) {
            Some(&(r, d, first)) if (r, d) != (round, digest) => ctl.violation(
                "agreement",
                Some(node),
                format!("slot {slot}: applied {digest:#x} of round {round}, n{first} applied {d:#x} of round {r}"),
            ),
            Some(_) => {}
            None => {
                self.slots.insert(slot, (round, digest, node));
            }
        }
    }

    fn on_became_leader(&mut self, _ctl: &mut Ctl<'_, Self::Node>, _node: NodeId, _term: u64) {
        self.leaderships += 1;
    }

    fn finish(&mut self, ctl: &mut Ctl<'_, Self::Node>, report: &mut RunReport) {
        report.count("slots_chosen", self.slots.len() as u64);
        report.count("leaderships", self.leaderships);
        let mut written = 0;
        for node in 0..self.last_applied.len() as NodeId {
            if let Some(e) = ctl.disk(node).storage_error() {
                ctl.violation("storage", Some(node), e);
            }
            written += ctl.disk(node).snapshots();
        }
        report.count("snapshots_written", written);
        self.storage.finish(ctl, report);
    }
}
