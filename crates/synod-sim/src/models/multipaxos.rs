//! Multi-Paxos runs (`synod sim --algo multipaxos`): the key-value store on
//! the Multi-Paxos log ([`synod_protocols::multipaxos::MpKvNode`]), driven by
//! the same clients as the Raft model ([`super::kv_clients`]).
//!
//! Checked on every run:
//! * **agreement**: no two nodes apply different commands in one slot;
//! * **no_gap**: every node applies the slots in order, each once (after a
//!   restart it goes on after the prefix it had learned, after installing a
//!   snapshot after the snapshot's slot, which must be ahead of what it
//!   applied);
//! * **agreement** also on state: nodes that applied the same slots hold
//!   equal stores at the end (a snapshot that is not the state it claims
//!   shows here);
//! * **linearizability** of the clients' history.
//!
//! Nodes compact their logs every [`SNAPSHOT_EVERY`] slots, so most runs
//! take snapshots, send them to lagging nodes and boot from them. With
//! [`MultiPaxosModel::with_spares`] (as `synod sim --algo multipaxos` runs
//! it), the leader is also asked, in the fault phase, to add a node that is
//! not a member or, when there are more members than at the start, to
//! remove one (itself included), one member at a time.

use super::kv_clients::{token, untoken, KvClients, KvServer};
use crate::report::RunReport;
use crate::runner::RunSpec;
use crate::sim::{Ctl, Model, SimConfig};
use rand::Rng;
use std::collections::BTreeMap;
use synod_protocols::kv::{AdminOp, KvEvent, KvInput, KvRequest};
use synod_protocols::multipaxos::{Config, Disk, MpKvNode};
use synod_protocols::{Instant, NodeId, MS};

pub const PROPERTIES: &[&str] = &["agreement", "no_gap", "linearizability"];
pub const COUNTERS: &[&str] = &[
    "ops_ok",
    "ops_indefinite",
    "ops_unknown_checks",
    "slots_chosen",
    "snapshots_installed",
    "member_changes_asked",
];

/// Spare nodes beyond the `--nodes` first members, which changes of
/// members bring in and out (as `--algo raft` has).
pub const SPARES: usize = 1;

/// The wake-up kind of the next change of members (the clients use 0, 1, 4).
const WAKE_ADMIN: u64 = 2;

/// Nodes compact after this many applied slots (as the etcd model's members
/// do), so that snapshots are taken, sent and booted from in most runs.
pub const SNAPSHOT_EVERY: u64 = 16;

impl KvServer for MpKvNode {}

pub struct MultiPaxosModel<B> {
    boot: B,
    /// The first members are nodes `0..voters`; the rest up to `n` are
    /// spares.
    voters: usize,
    n: usize,
    changes_asked: u64,
    clients: KvClients,
    /// What the first node to apply each slot applied there.
    slots: BTreeMap<u64, (NodeId, u64)>,
    /// Per node: the next slot it must apply.
    next: Vec<u64>,
    /// The node leading now, and when it crashed if it did.
    leader: Option<NodeId>,
    leader_crashed_at: Option<Instant>,
    /// For every crash of the leader: the time until another node led.
    failovers: Vec<Instant>,
    snapshots_installed: u64,
}

impl<B> MultiPaxosModel<B>
where
    B: FnMut(NodeId, &Disk<KvRequest>, u64) -> MpKvNode,
{
    pub fn new(nodes: usize, clients: usize, boot: B) -> Self {
        MultiPaxosModel {
            boot,
            voters: nodes,
            n: nodes,
            changes_asked: 0,
            clients: KvClients::new(nodes, clients),
            slots: BTreeMap::new(),
            next: vec![1; nodes],
            leader: None,
            leader_crashed_at: None,
            failovers: Vec::new(),
            snapshots_installed: 0,
        }
    }

    /// Adds `spares` nodes (ids from `nodes` on; the simulation must be
    /// configured with `nodes + spares` nodes) and turns on changes of
    /// members in the fault phase.
    pub fn with_spares(mut self, spares: usize) -> Self {
        self.n = self.voters + spares;
        self.clients.set_nodes(self.n);
        self.next.resize(self.n, 1);
        self
    }

    /// The clients' history.
    pub fn history(&self) -> &[crate::history::Operation] {
        &self.clients.history
    }

    /// For every crash of a leading node: the virtual time until another
    /// node led.
    pub fn failovers(&self) -> &[Instant] {
        &self.failovers
    }

    fn on_applied(&mut self, ctl: &mut Ctl<'_, MpKvNode>, node: NodeId, slot: u64, digest: u64) {
        let want = self.next[node as usize];
        if slot != want {
            ctl.violation(
                "no_gap",
                Some(node),
                format!("applied slot {slot} where slot {want} was next"),
            );
        }
        self.next[node as usize] = slot + 1;
        match self.slots.get(&slot) {
            Some((first, d)) if *d != digest => ctl.violation(
                "agreement",
                Some(node),
                format!("slot {slot}: applied {digest:#x}, n{first} applied {d:#x}"),
            ),
            Some(_) => {}
            None => {
                self.slots.insert(slot, (node, digest));
            }
        }
    }
}

impl<B> MultiPaxosModel<B> {
    /// Asks the leader with the highest ballot for one change of members:
    /// a node that is not a member in, or, with more members than at the
    /// start, a member out (never below the first count, so that the f
    /// nodes a run may keep down never hold a majority). Only a settled
    /// leader is asked: with a change on its way, the members it reports
    /// may not be those it counts when the request arrives (a removal
    /// decided on four members then left two, one of them down for good).
    fn change_members(&mut self, ctl: &mut Ctl<'_, MpKvNode>) {
        let leader = (0..self.n as NodeId)
            .filter_map(|id| ctl.node(id).map(|n| (id, n.core())))
            .filter(|(_, core)| core.is_leader())
            .max_by_key(|(_, core)| core.promised())
            .filter(|(_, core)| !core.change_pending())
            .map(|(id, core)| (id, core.members().clone()));
        let Some((leader, members)) = leader else {
            return;
        };
        let outside: Vec<NodeId> = (0..self.n as NodeId)
            .filter(|i| !members.contains(i))
            .collect();
        let op = if members.len() > self.voters {
            let m: Vec<NodeId> = members.into_iter().collect();
            AdminOp::RemoveNode(m[ctl.rng().gen_range(0..m.len())])
        } else if !outside.is_empty() {
            AdminOp::AddVoter(outside[ctl.rng().gen_range(0..outside.len())])
        } else {
            return;
        };
        if ctl.tracing() {
            ctl.trace(format_args!("admin: asks n{leader} to {op:?}"));
        }
        self.changes_asked += 1;
        ctl.input(leader, KvInput::Admin(op), MS);
    }

    fn schedule_admin(&self, ctl: &mut Ctl<'_, MpKvNode>) {
        let after = ctl.rng().gen_range(100 * MS..400 * MS);
        ctl.wake(after, token(WAKE_ADMIN, 0, 0));
    }

    /// Nodes up at the end that applied the same slots must hold the same
    /// store.
    fn compare_stores(&self, ctl: &mut Ctl<'_, MpKvNode>) {
        let mut seen: BTreeMap<u64, NodeId> = BTreeMap::new();
        for id in 0..self.next.len() as NodeId {
            let Some(node) = ctl.node(id) else { continue };
            let applied = node.core().applied();
            let Some(&first) = seen.get(&applied) else {
                seen.insert(applied, id);
                continue;
            };
            let other = ctl.node(first).expect("seen up").store();
            if node.store() != other {
                ctl.violation(
                    "agreement",
                    Some(id),
                    format!("store after slot {applied} differs from n{first}'s"),
                );
            }
        }
    }
}

impl<B> Model for MultiPaxosModel<B>
where
    B: FnMut(NodeId, &Disk<KvRequest>, u64) -> MpKvNode,
{
    type Node = MpKvNode;

    fn boot(&mut self, id: NodeId, disk: &Disk<KvRequest>, seed: u64) -> MpKvNode {
        // The learned prefix was applied before the crash; it goes on after it.
        self.next[id as usize] = disk.learned_prefix() + 1;
        (self.boot)(id, disk, seed)
    }

    fn on_start(&mut self, ctl: &mut Ctl<'_, MpKvNode>) {
        self.clients.start(ctl);
        if self.n > self.voters {
            self.schedule_admin(ctl);
        }
    }

    fn on_event(&mut self, ctl: &mut Ctl<'_, MpKvNode>, node: NodeId, event: KvEvent) {
        match event {
            KvEvent::Response {
                client,
                seq,
                result,
            } => self.clients.on_response(ctl, node, client, seq, result),
            KvEvent::Applied { index, digest, .. } => self.on_applied(ctl, node, index, digest),
            KvEvent::Restored { index } => {
                let next = self.next[node as usize];
                if index < next {
                    ctl.violation(
                        "no_gap",
                        Some(node),
                        format!(
                            "restored a snapshot of slot {index}, having applied {}",
                            next - 1
                        ),
                    );
                }
                self.next[node as usize] = index + 1;
                self.snapshots_installed += 1;
            }
            KvEvent::BecameLeader { .. } => {
                if let Some(at) = self.leader_crashed_at.take() {
                    self.failovers.push(ctl.now() - at);
                }
                self.leader = Some(node);
            }
        }
    }

    fn on_wake(&mut self, ctl: &mut Ctl<'_, MpKvNode>, tok: u64) {
        if self.clients.on_wake(ctl, tok) || untoken(tok).0 != WAKE_ADMIN {
            return;
        }
        if !ctl.in_quiet_phase() {
            self.change_members(ctl);
            self.schedule_admin(ctl);
        }
    }

    fn on_crash(&mut self, ctl: &mut Ctl<'_, MpKvNode>, node: NodeId) {
        if self.leader == Some(node) {
            self.leader = None;
            self.leader_crashed_at.get_or_insert(ctl.now());
        }
        self.clients.on_crash(ctl, node);
    }

    fn done(&self, ctl: &Ctl<'_, MpKvNode>) -> bool {
        self.clients.idle()
            && (0..self.next.len() as NodeId)
                .any(|id| ctl.node(id).is_some_and(|n| n.core().is_leader()))
    }

    fn finish(&mut self, ctl: &mut Ctl<'_, MpKvNode>, _terminated: bool, report: &mut RunReport) {
        self.clients.finish(ctl, report);
        report.count("slots_chosen", self.slots.len() as u64);
        report.count("snapshots_installed", self.snapshots_installed);
        report.count("member_changes_asked", self.changes_asked);
        self.compare_stores(ctl);
    }
}

/// The model `synod sim --algo multipaxos` runs: `n` nodes, the Raft
/// model's number of clients.
pub fn standard_model(
    n: usize,
) -> MultiPaxosModel<impl FnMut(NodeId, &Disk<KvRequest>, u64) -> MpKvNode> {
    MultiPaxosModel::new(n, super::raft::clients_for(n), move |id, disk: &_, seed| {
        let cfg = Config {
            snapshot_every: SNAPSHOT_EVERY,
            ..Config::new(id, n)
        };
        MpKvNode::new(cfg, disk, seed)
    })
    .with_spares(SPARES)
}

/// The simulator configuration for `--algo multipaxos`: the first members
/// plus the spares, with f taken from the first members (as Raft's).
pub fn sim_config(spec: &RunSpec) -> SimConfig {
    super::raft::sim_config(spec)
}
