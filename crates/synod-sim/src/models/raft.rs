//! A replicated key-value store on Raft ([`synod_protocols::raft::KvNode`]), driven
//! by simulated clients and checked on every run.
//!
//! # Clients
//!
//! A few clients, each with its own session id, issue one operation at a time
//! (put, get, delete and compare-and-swap over five keys; every written value is
//! unique). A client sends to the node it believes leads, follows `NotLeader`
//! hints, and retries the *same* `(client, seq)` at another node when the node
//! answers `Dropped`, when it hears nothing for [`CLIENT_TIMEOUT`], or when the node
//! crashes. The history records an operation's first send and its first
//! successful response; an operation that never got one is indefinite. Clients
//! keep going through the fault phase and for [`QUIET_LOAD`] into the quiet phase,
//! then finish what they have in flight and fall idle.
//!
//! Some clients give up, as a real etcd client does when a request's deadline
//! expires: each client of a run is impatient with probability [`IMPATIENT`],
//! with a deadline drawn from [`DEADLINES`] (well above an election timeout, so
//! runs without faults abandon nothing). When an operation's deadline passes in
//! the fault phase, the impatient client stops retrying it and moves on to a
//! new operation with the next seq. The abandoned operation stays indefinite in
//! the history, and it may still take effect: it can sit in a leader's log and
//! commit later, even after the client's next operations, or be overwritten
//! and never apply. The store's sessions keep this exactly-once: a session
//! remembers its last applied write, and a write with an older seq that
//! commits after it is rejected rather than applied (applying it would move
//! the session back, and a retry of the newer write would then apply twice).
//! Both outcomes are legal for an indefinite operation, which may take effect
//! at any time after its invocation or never. In the quiet phase clients are
//! patient again, so liveness still requires every operation then to be
//! answered. [`RaftModel::with_impatience`] changes the share of impatient
//! clients and their deadlines, or turns giving up off.
//!
//! During the fault phase the model also asks random nodes to hand leadership
//! over ([`AdminOp::TransferLeader`]) and to compact their logs
//! ([`AdminOp::Snapshot`]), and changes the membership one server at a time:
//! every `--algo raft` run has [`SPARES`] spare node beyond the `--nodes`
//! initial voters, which the leader is asked to add as a learner and promote,
//! and voters (the leader included) are removed and added back. f is taken from
//! the initial voters.
//!
//! # Durable state: the real WAL on a simulated disk
//!
//! Every node is a [`WalBacked`] node: its hard state, log and snapshots are
//! written through `synod-storage`'s `DiskStorage` onto a `SimFs` (small
//! segments, so runs rotate and compact), and a restarted node boots from what
//! the storage crate's recovery reads back (see [`crate::models::wal_disk`]).
//! The storage faults reach that code:
//!
//! * `torn-write`: a power loss cuts the node's first unsynced write; its bytes
//!   are on the simulated disk unsynced and each sector survives or not.
//!   Recovery must cut the torn tail (`torn_tails` counts it; `torn_writes`
//!   counts the cut writes, most of which are lost whole or kept whole).
//! * `corruption`: a bit of one of the node's stored segment or snapshot
//!   files flips (`corruptions`). The running node does not notice; its next
//!   recovery refuses the disk (`corruption_detected`) and the node stays
//!   stopped for the rest of the run: it handles no message, tick or request,
//!   so it never serves or replicates data it could not verify, and the
//!   simulator counts it as down for good. The fault schedule corrupts at most
//!   f minus the permanently crashed nodes, so the cluster stays live.
//!
//! # Checked on every run
//!
//! * **election_safety** — at most one node becomes leader in any term;
//! * **log_matching** — two up nodes whose logs hold an entry of the same term at
//!   the same index agree on every earlier entry both still hold (checked every
//!   [`LOG_CHECK_EVERY`], when the quiet phase starts and at the end);
//! * **leader_completeness** — a node that becomes leader of term `T` holds every
//!   entry known to be committed before any leader of term `T` or later existed;
//! * **state_machine_safety** — no two nodes apply different entries at one index,
//!   and a node applies indexes in increasing order;
//! * **commit_rule** — a leader advances its commit index only to an entry of
//!   its own term (Raft §5.4.2: older entries are committed only indirectly).
//!   Breaking this rule is harmless until a Figure-8 sequence of leaders turns it
//!   into a lost committed entry, which random runs rarely produce, so it is
//!   checked directly: whenever a leader reports an applied entry, its commit
//!   index must still be where it was when it was elected, or at an entry of its
//!   term;
//! * **linearizability** — the client history, checked at the end of the run
//!   (a search that runs out of budget is counted in `ops_unknown_checks`, not
//!   reported as a violation);
//! * **storage** — the WAL accepted every write the node made durable; every
//!   recovery returned exactly what was made durable (after a torn write: plus a
//!   prefix of that write), checked against the simulator's own image of the
//!   disk; and every failed recovery failed on damaged data.
//!
//! Liveness: in the quiet phase, a leader of the highest term among up nodes
//! exists (a node stopped by corruption is not up), and every client is idle with
//! all its operations answered.

use crate::history::Operation;
use crate::models::kv_clients::{token, untoken, KvClients, KvServer};
use crate::models::raft_checks::{self, RaftChecks};
use crate::models::wal_disk::{WalBacked, WalDisk};
use crate::report::RunReport;
use crate::runner::RunSpec;
use crate::sim::{Ctl, Model, SimConfig, Simulation};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::rc::Rc;
use synod_protocols::kv::{AdminOp, KvEvent, KvInput};
use synod_protocols::raft::{ConfChange, Disk, EntryData, KvNode, Message, RaftConfig, Write};
use synod_protocols::{Instant, NodeId, MS};

/// The properties this model checks besides [`crate::models::raft_checks::PROPERTIES`].
pub const PROPERTIES: &[&str] = &["linearizability"];

/// The counters this model reports besides [`crate::models::raft_checks::COUNTERS`].
pub const COUNTERS: &[&str] = &["ops_ok", "ops_indefinite", "ops_unknown_checks"];

pub use super::kv_clients::{CLIENT_TIMEOUT, DEADLINES, IMPATIENT, KEYS, QUIET_LOAD};
/// How often the logs of the up nodes are compared.
pub const LOG_CHECK_EVERY: Instant = 250 * MS;

const WAKE_ADMIN: u64 = 2;
const WAKE_LOG_CHECK: u64 = 3;

/// What a run leaves behind besides its report, for callers that want it (the
/// `--history` flag, benchmarks).
#[derive(Clone, Debug, Default)]
pub struct Recording {
    /// The client history, in invocation order.
    pub history: Vec<Operation>,
    /// For every crash of a node that was leading: the virtual time until a node
    /// became leader of a higher term.
    pub failovers: Vec<Instant>,
}

/// The Raft key-value model; `B` builds a node from its id, durable image and seed.
/// The image is what the WAL recovered from the node's simulated disk; the model
/// wraps the node in a [`WalBacked`].
pub struct RaftModel<B> {
    boot: B,
    n: usize,
    clients: KvClients,
    checks: RaftChecks,
    /// When the first client command was applied, and the messages sent by then.
    first_commit: Option<(Instant, u64)>,
    admin: bool,
    /// A run ends only once every member that is up has applied everything
    /// its leader committed ([`RaftChecks::members_caught_up`]).
    catch_up: bool,
    /// The initial voters are nodes `0..voters`; nodes from `voters` up to `n`
    /// are spares that membership changes may bring in.
    voters: usize,
    recording: Option<Rc<RefCell<Recording>>>,
}

impl<B> RaftModel<B>
where
    B: FnMut(NodeId, &Disk, u64) -> KvNode,
{
    /// `nodes` nodes, `clients` clients, nodes built by `boot`.
    pub fn new(nodes: usize, clients: usize, boot: B) -> Self {
        RaftModel {
            boot,
            n: nodes,
            clients: KvClients::new(nodes, clients),
            checks: RaftChecks::new(nodes),
            first_commit: None,
            admin: true,
            catch_up: true,
            voters: nodes,
            recording: None,
        }
    }

    /// Deliberately broken (for tests): a node whose recovery finds its disk
    /// damaged deletes the data directory and starts over from an empty log
    /// with no vote, instead of staying down. It forgets promises it made
    /// (votes, acknowledged entries), which the checkers must catch.
    pub fn with_wipe_on_corruption(mut self) -> Self {
        self.checks.wipe_on_corruption();
        self
    }

    /// Whether the model injects leadership transfers and snapshots (default on).
    pub fn with_admin(mut self, admin: bool) -> Self {
        self.admin = admin;
        self
    }

    /// Whether a run waits for every member to catch up before it ends (by
    /// default it does; a scripted story whose partitions outlive its plot
    /// ends when its leader is known).
    pub fn with_catch_up(mut self, catch_up: bool) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// Each client is impatient with probability `share` (default
    /// [`IMPATIENT`]), with a deadline drawn from `deadlines` (default
    /// [`DEADLINES`]). With `share` 0 every client retries each operation until
    /// it is answered, and runs are exactly those of a model without deadlines.
    pub fn with_impatience(mut self, share: f64, deadlines: std::ops::Range<Instant>) -> Self {
        self.clients.set_impatience(share, deadlines);
        self
    }

    /// Adds `spares` nodes (ids from `nodes` on; the simulation must be
    /// configured with `nodes + spares` nodes, and `boot` must leave the spares
    /// out of their initial peers) and turns on membership changes in the fault
    /// phase: the leader is asked to add a spare or a removed node as a learner
    /// or straight as a voter, to promote a learner, and to remove a voter
    /// (possibly itself) whenever there are more voters than at the start.
    pub fn with_spares(mut self, spares: usize) -> Self {
        self.n = self.voters + spares;
        self.clients.set_nodes(self.n);
        self.checks.resize(self.n);
        self
    }

    /// Hands the run's history and failover times to `rec` at the end of the run.
    pub fn record_into(mut self, rec: Rc<RefCell<Recording>>) -> Self {
        self.recording = Some(rec);
        self
    }

    fn on_applied(
        &mut self,
        ctl: &mut Ctl<'_, WalBacked>,
        node: NodeId,
        index: u64,
        term: u64,
        digest: u64,
    ) {
        if self.first_commit.is_none() {
            let raft = ctl.node(node).and_then(WalBacked::raft);
            if raft
                .and_then(|r| r.entry(index))
                .is_some_and(|e| matches!(e.data, EntryData::App(_)))
            {
                self.first_commit = Some((ctl.now(), ctl.messages_sent()));
            }
        }
        self.checks.on_applied(ctl, node, index, term, digest);
    }

    fn current_leader(&self, ctl: &Ctl<'_, WalBacked>) -> Option<(NodeId, u64)> {
        self.checks.current_leader(ctl)
    }

    fn admin(&mut self, ctl: &mut Ctl<'_, WalBacked>) {
        if ctl.in_quiet_phase() {
            return;
        }
        if self.n > self.voters && ctl.rng().gen_bool(0.5) {
            self.change_membership(ctl);
        } else if ctl.rng().gen_bool(0.5) {
            // Ask the node the first client believes leads to hand over.
            let to = ctl.rng().gen_range(0..self.n as NodeId);
            let at = self.clients.first_guess();
            ctl.input(at, KvInput::Admin(AdminOp::TransferLeader(to)), MS);
        } else {
            let at = ctl.rng().gen_range(0..self.n as NodeId);
            ctl.input(at, KvInput::Admin(AdminOp::Snapshot), MS);
        }
        self.schedule_admin(ctl);
    }

    fn change_membership(&mut self, ctl: &mut Ctl<'_, WalBacked>) {
        let Some((leader, _)) = self.current_leader(ctl) else {
            return;
        };
        let Some(r) = ctl.node(leader).and_then(WalBacked::raft).cloned() else {
            return;
        };
        let Some(change) = raft_checks::next_membership_change(&r, self.n, self.voters, ctl.rng())
        else {
            return;
        };
        let op = match change {
            ConfChange::AddVoter(x) => AdminOp::AddVoter(x),
            ConfChange::AddLearner(x) => AdminOp::AddLearner(x),
            ConfChange::PromoteLearner(x) => AdminOp::PromoteLearner(x),
            ConfChange::RemoveNode(x) => AdminOp::RemoveNode(x),
        };
        if ctl.tracing() {
            ctl.trace(format_args!("admin: asks n{leader} to {op:?}"));
        }
        ctl.input(leader, KvInput::Admin(op), MS);
    }

    fn schedule_admin(&mut self, ctl: &mut Ctl<'_, WalBacked>) {
        let after = ctl.rng().gen_range(100 * MS..400 * MS);
        ctl.wake(after, token(WAKE_ADMIN, 0, 0));
    }
}

impl<B> Model for RaftModel<B>
where
    B: FnMut(NodeId, &Disk, u64) -> KvNode,
{
    type Node = WalBacked;

    fn boot(&mut self, id: NodeId, disk: &WalDisk, seed: u64) -> WalBacked {
        let build = &mut self.boot;
        self.checks.boot(id, disk, |d| build(id, d, seed))
    }

    fn corrupt(&mut self, disk: &mut WalDisk, rng: &mut ChaCha8Rng) -> bool {
        self.checks.corrupt(disk, rng)
    }

    fn tear(&mut self, disk: &mut WalDisk, writes: &[Write], rng: &mut ChaCha8Rng) {
        self.checks.tear(disk, writes, rng);
    }

    fn worth_tearing(&self, writes: &[Write]) -> bool {
        RaftChecks::worth_tearing(writes)
    }

    fn on_start(&mut self, ctl: &mut Ctl<'_, WalBacked>) {
        self.clients.start(ctl);
        if self.admin {
            self.schedule_admin(ctl);
        }
        ctl.wake(LOG_CHECK_EVERY, token(WAKE_LOG_CHECK, 0, 0));
    }

    fn on_send(&mut self, ctl: &mut Ctl<'_, WalBacked>, from: NodeId, msg: &Message) {
        self.checks.on_send(ctl, from, msg);
    }

    fn on_event(&mut self, ctl: &mut Ctl<'_, WalBacked>, node: NodeId, event: KvEvent) {
        match event {
            KvEvent::Response {
                client,
                seq,
                result,
            } => self.clients.on_response(ctl, node, client, seq, result),
            KvEvent::Applied {
                index,
                term,
                digest,
            } => self.on_applied(ctl, node, index, term, digest),
            KvEvent::BecameLeader { term } => self.checks.on_became_leader(ctl, node, term),
            // Raft's node reports snapshots through its core (RaftChecks).
            KvEvent::Restored { .. } => {}
        }
    }

    fn on_wake(&mut self, ctl: &mut Ctl<'_, WalBacked>, tok: u64) {
        if self.clients.on_wake(ctl, tok) {
            return;
        }
        let (kind, _, _) = untoken(tok);
        match kind {
            WAKE_ADMIN => self.admin(ctl),
            WAKE_LOG_CHECK => {
                self.checks.check_logs(ctl);
                ctl.wake(LOG_CHECK_EVERY, token(WAKE_LOG_CHECK, 0, 0));
            }
            _ => {}
        }
    }

    fn on_crash(&mut self, ctl: &mut Ctl<'_, WalBacked>, node: NodeId) {
        self.checks.on_crash(ctl, node);
        self.clients.on_crash(ctl, node);
    }

    fn on_restart(&mut self, ctl: &mut Ctl<'_, WalBacked>, node: NodeId) {
        self.checks.on_restart(ctl, node);
    }

    fn on_quiet(&mut self, ctl: &mut Ctl<'_, WalBacked>) {
        self.checks.check_logs(ctl);
    }

    fn done(&self, ctl: &Ctl<'_, WalBacked>) -> bool {
        self.clients.idle()
            && if self.catch_up {
                self.checks.members_caught_up(ctl)
            } else {
                self.current_leader(ctl).is_some()
            }
    }

    fn finish(&mut self, ctl: &mut Ctl<'_, WalBacked>, _terminated: bool, report: &mut RunReport) {
        self.checks.finish(ctl, report);
        self.clients.finish(ctl, report);
        if let Some((t, m)) = self.first_commit {
            report.decision_time = Some(t);
            report.decision_messages = Some(m);
        }
        if let Some(rec) = &self.recording {
            let mut rec = rec.borrow_mut();
            rec.history = std::mem::take(&mut self.clients.history);
            rec.failovers = self.checks.take_failovers();
        }
    }
}

impl KvServer for WalBacked {
    fn serves(&self) -> bool {
        !self.is_stopped()
    }
}

/// The peers of a cluster of `n` nodes: every node id.
pub fn peers(n: usize) -> Vec<NodeId> {
    (0..n as NodeId).collect()
}

/// Number of clients for a cluster of `n` nodes.
pub fn clients_for(n: usize) -> usize {
    if n >= 5 {
        4
    } else {
        3
    }
}

/// Builds the model `runner::run_one` uses for the correct Raft.
pub fn standard_model(n: usize) -> RaftModel<impl FnMut(NodeId, &Disk, u64) -> KvNode> {
    RaftModel::new(n, clients_for(n), move |id, disk: &Disk, seed| {
        KvNode::new(RaftConfig::new(id, peers(n)), disk, seed)
    })
    .with_spares(SPARES)
}

/// Every `--algo raft` run has this many spare nodes beyond the `--nodes`
/// initial voters, so membership changes (learners added and promoted, voters
/// removed and re-added) happen under the same faults as everything else.
pub const SPARES: usize = 1;

/// The simulator configuration for `--algo raft`: the voters plus the spares,
/// with f taken from the initial voters (⌊(n−1)/2⌋).
pub fn sim_config(spec: &RunSpec) -> SimConfig {
    let mut cfg = SimConfig::new(spec.nodes + SPARES, spec.faults);
    cfg.f = spec.nodes.saturating_sub(1) / 2;
    cfg.trace = spec.trace;
    cfg.timeline = spec.timeline;
    cfg
}

/// Runs the correct Raft once and returns the report with the run's recording.
pub fn run_recorded(spec: &RunSpec, seed: u64) -> (RunReport, Recording) {
    let rec = Rc::new(RefCell::new(Recording::default()));
    let model = standard_model(spec.nodes).record_into(rec.clone());
    let report = Simulation::new(sim_config(spec), seed, model).run(seed);
    let recording = rec.take();
    (report, recording)
}
