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

use crate::history::{OpKind, OpResult, Operation};
use crate::linearizability::{check, CheckResult};
use crate::models::raft_checks::{self, RaftChecks};
use crate::models::wal_disk::{WalBacked, WalDisk};
use crate::report::RunReport;
use crate::runner::RunSpec;
use crate::sim::{Ctl, Model, SimConfig, Simulation};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::rc::Rc;
use synod_protocols::kv::{AdminOp, KvError, KvEvent, KvInput, KvOp, KvRequest, KvResult};
use synod_protocols::raft::{ConfChange, Disk, EntryData, KvNode, RaftConfig, Write};
use synod_protocols::{Instant, NodeId, MS};

/// The properties this model checks besides [`crate::models::raft_checks::PROPERTIES`].
pub const PROPERTIES: &[&str] = &["linearizability"];

/// The counters this model reports besides [`crate::models::raft_checks::COUNTERS`].
pub const COUNTERS: &[&str] = &["ops_ok", "ops_indefinite", "ops_unknown_checks"];

/// How long a client waits for an answer before retrying elsewhere.
pub const CLIENT_TIMEOUT: Instant = 200 * MS;
/// The chance that a client of a run is impatient: it gives up on an operation
/// whose deadline passes (see [`DEADLINES`]).
pub const IMPATIENT: f64 = 0.5;
/// The range an impatient client's deadline is drawn from, once per run: how
/// long after invoking an operation it stops retrying it.
pub const DEADLINES: std::ops::Range<Instant> = 300 * MS..1_500 * MS;
/// How long clients keep issuing new operations once the quiet phase begins.
pub const QUIET_LOAD: Instant = 500 * MS;
/// How often the logs of the up nodes are compared.
pub const LOG_CHECK_EVERY: Instant = 250 * MS;
/// Number of keys the clients use.
pub const KEYS: usize = 5;

const WAKE_NEXT_OP: u64 = 0;
const WAKE_TIMEOUT: u64 = 1;
const WAKE_ADMIN: u64 = 2;
const WAKE_LOG_CHECK: u64 = 3;
const WAKE_DEADLINE: u64 = 4;

fn token(kind: u64, client: usize, generation: u64) -> u64 {
    (kind << 56) | ((client as u64) << 32) | (generation & 0xffff_ffff)
}

fn untoken(t: u64) -> (u64, usize, u64) {
    (t >> 56, ((t >> 32) & 0xff_ffff) as usize, t & 0xffff_ffff)
}

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

struct Pending {
    seq: u64,
    op: KvOp,
    /// Index of the operation in the history.
    hist: usize,
    target: NodeId,
}

struct Client {
    session: u64,
    seq: u64,
    pending: Option<Pending>,
    leader_guess: NodeId,
    /// Bumped with every send and every scheduled next operation, so that stale
    /// timers are recognised.
    generation: u64,
    /// NotLeader answers in a row (to back off when hints go round in circles).
    redirects: u32,
    stopped: bool,
    /// Last value this client saw per key: what its cas operations expect.
    seen: Vec<Option<String>>,
    /// How long after invoking an operation an impatient client gives up on it
    /// (during the fault phase); `None` for a client that retries until answered.
    deadline: Option<Instant>,
}

impl Client {
    fn idle(&self) -> bool {
        self.stopped && self.pending.is_none()
    }
}

/// The Raft key-value model; `B` builds a node from its id, durable image and seed.
/// The image is what the WAL recovered from the node's simulated disk; the model
/// wraps the node in a [`WalBacked`].
pub struct RaftModel<B> {
    boot: B,
    n: usize,
    clients: Vec<Client>,
    history: Vec<Operation>,
    checks: RaftChecks,
    /// When the first client command was applied, and the messages sent by then.
    first_commit: Option<(Instant, u64)>,
    admin: bool,
    /// The chance that a client is impatient, and the range its deadline is
    /// drawn from.
    impatience: (f64, std::ops::Range<Instant>),
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
            clients: (0..clients)
                .map(|i| Client {
                    session: 1 + i as u64,
                    seq: 0,
                    pending: None,
                    leader_guess: 0,
                    generation: 0,
                    redirects: 0,
                    stopped: false,
                    seen: vec![None; KEYS],
                    deadline: None,
                })
                .collect(),
            history: Vec::new(),
            checks: RaftChecks::new(nodes),
            first_commit: None,
            admin: true,
            impatience: (IMPATIENT, DEADLINES),
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

    /// Each client is impatient with probability `share` (default
    /// [`IMPATIENT`]), with a deadline drawn from `deadlines` (default
    /// [`DEADLINES`]). With `share` 0 every client retries each operation until
    /// it is answered, and runs are exactly those of a model without deadlines.
    pub fn with_impatience(mut self, share: f64, deadlines: std::ops::Range<Instant>) -> Self {
        self.impatience = (share, deadlines);
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
        self.checks.resize(self.n);
        self
    }

    /// Hands the run's history and failover times to `rec` at the end of the run.
    pub fn record_into(mut self, rec: Rc<RefCell<Recording>>) -> Self {
        self.recording = Some(rec);
        self
    }

    fn random_other(&self, ctl: &mut Ctl<'_, WalBacked>, not: NodeId) -> NodeId {
        let up: Vec<NodeId> = (0..self.n as NodeId)
            .filter(|&i| i != not && ctl.node(i).is_some_and(|n| !n.is_stopped()))
            .collect();
        if !up.is_empty() {
            return up[ctl.rng().gen_range(0..up.len())];
        }
        if self.n <= 1 {
            return 0;
        }
        let r = ctl.rng().gen_range(0..self.n as NodeId - 1);
        if r >= not {
            r + 1
        } else {
            r
        }
    }

    /// (Re)sends client `c`'s pending request to its target after `extra`.
    fn send(&mut self, ctl: &mut Ctl<'_, WalBacked>, c: usize, extra: Instant) {
        let latency = ctl.rng().gen_range(MS..5 * MS) + extra;
        let client = &mut self.clients[c];
        let Some(p) = client.pending.as_ref() else {
            return;
        };
        let req = KvRequest {
            client: client.session,
            seq: p.seq,
            op: p.op.clone(),
        };
        let target = p.target;
        client.generation += 1;
        let tok = token(WAKE_TIMEOUT, c, client.generation);
        ctl.input(target, KvInput::Client(req), latency);
        ctl.wake(latency + CLIENT_TIMEOUT, tok);
    }

    /// Sends client `c`'s pending request to another node (or to `hint`).
    fn retry(
        &mut self,
        ctl: &mut Ctl<'_, WalBacked>,
        c: usize,
        hint: Option<NodeId>,
        extra: Instant,
    ) {
        let Some(current) = self.clients[c].pending.as_ref().map(|p| p.target) else {
            return;
        };
        let target = match hint {
            Some(h) if (h as usize) < self.n && h != current => h,
            _ => self.random_other(ctl, current),
        };
        let client = &mut self.clients[c];
        client.leader_guess = target;
        if let Some(p) = client.pending.as_mut() {
            p.target = target;
        }
        if ctl.tracing() {
            let (session, seq) = (client.session, client.pending.as_ref().map_or(0, |p| p.seq));
            ctl.trace(format_args!(
                "client {session} retries seq {seq} at n{target}"
            ));
        }
        self.send(ctl, c, extra);
    }

    fn schedule_next(&mut self, ctl: &mut Ctl<'_, WalBacked>, c: usize) {
        let think = ctl.rng().gen_range(0..20 * MS);
        let client = &mut self.clients[c];
        client.generation += 1;
        ctl.wake(think, token(WAKE_NEXT_OP, c, client.generation));
    }

    fn next_op(&mut self, ctl: &mut Ctl<'_, WalBacked>, c: usize) {
        if ctl.in_quiet_phase() && ctl.now() >= ctl.quiet_started_at() + QUIET_LOAD {
            self.clients[c].stopped = true;
            return;
        }
        let k = ctl.rng().gen_range(0..KEYS);
        let key = format!("k{k}");
        let roll = ctl.rng().gen_range(0..100);
        let expect_absent = ctl.rng().gen_bool(0.2);
        let client = &mut self.clients[c];
        client.seq += 1;
        let value = format!("c{}.{}", client.session, client.seq);
        let op = match roll {
            0..=29 => KvOp::Get { key },
            30..=64 => KvOp::Put { key, value },
            65..=74 => KvOp::Delete { key },
            _ => {
                let expected = if expect_absent {
                    None
                } else {
                    client.seen[k].clone()
                };
                KvOp::Cas {
                    key,
                    expected,
                    value,
                }
            }
        };
        let kind = match op.clone() {
            KvOp::Put { key, value } => OpKind::Put { key, value },
            KvOp::Get { key } => OpKind::Get { key },
            KvOp::Delete { key } => OpKind::Delete { key },
            KvOp::Cas {
                key,
                expected,
                value,
            } => OpKind::Cas {
                key,
                expected,
                value,
            },
        };
        if ctl.tracing() {
            let (session, seq, at) = (client.session, client.seq, client.leader_guess);
            ctl.trace(format_args!(
                "client {session} invokes seq {seq}: {op:?} at n{at}"
            ));
        }
        self.history
            .push(Operation::indefinite(client.session, kind, ctl.now()));
        client.pending = Some(Pending {
            seq: client.seq,
            op,
            hist: self.history.len() - 1,
            target: client.leader_guess,
        });
        if let Some(deadline) = client.deadline {
            let tok = token(WAKE_DEADLINE, c, client.seq);
            ctl.wake(deadline, tok);
        }
        self.send(ctl, c, 0);
    }

    /// Client `c`'s deadline for operation `seq` has passed. In the fault phase
    /// it gives up, like an etcd client whose request context expires: the
    /// application sees an error and moves on to a new operation with a new
    /// seq. The operation stays indefinite in the history: it may still take
    /// effect, e.g. from a leader's log, even after later operations of the
    /// same client, or never (the store rejects a write whose seq is older than
    /// one it applied for the session). In the quiet phase clients are patient
    /// again, so liveness still means every operation gets answered.
    fn deadline_passed(&mut self, ctl: &mut Ctl<'_, WalBacked>, c: usize, seq: u64) {
        if ctl.in_quiet_phase() {
            return;
        }
        let client = &mut self.clients[c];
        // The token holds the low 32 bits of the seq.
        if client.pending.as_ref().map(|p| p.seq & 0xffff_ffff) != Some(seq) {
            return;
        }
        client.pending = None;
        client.redirects = 0;
        if ctl.tracing() {
            let (session, seq) = (client.session, client.seq);
            ctl.trace(format_args!(
                "client {session} gives up on seq {seq}: it stays indefinite"
            ));
        }
        // Bumps the generation: the retry timer of the abandoned operation is
        // ignored from now on, and so is any answer to it (its seq is stale).
        self.schedule_next(ctl, c);
    }

    fn on_response(
        &mut self,
        ctl: &mut Ctl<'_, WalBacked>,
        node: NodeId,
        session: u64,
        seq: u64,
        result: Result<KvResult, KvError>,
    ) {
        let Some(c) = self.clients.iter().position(|cl| cl.session == session) else {
            return;
        };
        let Some(p) = self.clients[c].pending.as_ref() else {
            return;
        };
        if p.seq != seq {
            return;
        }
        let target = p.target;
        match result {
            Ok(r) => {
                let p = self.clients[c].pending.take().expect("checked above");
                let result = match (&p.op, r) {
                    (KvOp::Put { .. }, KvResult::Ok) => Some(OpResult::Ok),
                    (KvOp::Get { .. }, KvResult::Value(v)) => Some(OpResult::Read(v)),
                    (KvOp::Delete { .. }, KvResult::Bool(b)) => Some(OpResult::Deleted(b)),
                    (KvOp::Cas { .. }, KvResult::Bool(b)) => Some(OpResult::Swapped(b)),
                    (op, r) => {
                        ctl.violation(
                            "linearizability",
                            Some(node),
                            format!("client {session} seq {seq}: {op:?} answered with {r:?}"),
                        );
                        None
                    }
                };
                if let Some(result) = result {
                    let k: usize = p.op.key()[1..].parse().unwrap_or(0);
                    let client = &mut self.clients[c];
                    match (&p.op, &result) {
                        (KvOp::Put { value, .. }, _)
                        | (KvOp::Cas { value, .. }, OpResult::Swapped(true)) => {
                            client.seen[k] = Some(value.clone())
                        }
                        (KvOp::Get { .. }, OpResult::Read(v)) => client.seen[k] = v.clone(),
                        (KvOp::Delete { .. }, _) => client.seen[k] = None,
                        _ => {}
                    }
                    if ctl.tracing() {
                        ctl.trace(format_args!(
                            "client {session} seq {seq} completes: {result:?}"
                        ));
                    }
                    let op = &mut self.history[p.hist];
                    op.complete_us = Some(ctl.now());
                    op.result = Some(result);
                }
                let client = &mut self.clients[c];
                client.leader_guess = node;
                client.redirects = 0;
                self.schedule_next(ctl, c);
            }
            Err(_) if node != target => {}
            Err(KvError::NotLeader { hint }) => {
                let client = &mut self.clients[c];
                client.redirects += 1;
                let backoff = if hint.is_none() || client.redirects > 3 {
                    20 * MS
                } else {
                    0
                };
                self.retry(ctl, c, hint, backoff);
            }
            Err(KvError::Dropped) => self.retry(ctl, c, None, 10 * MS),
        }
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
            let at = self.clients.first().map_or(0, |c| c.leader_guess);
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
        for c in 0..self.clients.len() {
            self.clients[c].leader_guess = ctl.rng().gen_range(0..self.n as NodeId);
            let (share, deadlines) = self.impatience.clone();
            if share > 0.0 && ctl.rng().gen_bool(share) {
                self.clients[c].deadline = Some(ctl.rng().gen_range(deadlines));
            }
            self.schedule_next(ctl, c);
        }
        if self.admin {
            self.schedule_admin(ctl);
        }
        ctl.wake(LOG_CHECK_EVERY, token(WAKE_LOG_CHECK, 0, 0));
    }

    fn on_event(&mut self, ctl: &mut Ctl<'_, WalBacked>, node: NodeId, event: KvEvent) {
        match event {
            KvEvent::Response {
                client,
                seq,
                result,
            } => self.on_response(ctl, node, client, seq, result),
            KvEvent::Applied {
                index,
                term,
                digest,
            } => self.on_applied(ctl, node, index, term, digest),
            KvEvent::BecameLeader { term } => self.checks.on_became_leader(ctl, node, term),
        }
    }

    fn on_wake(&mut self, ctl: &mut Ctl<'_, WalBacked>, tok: u64) {
        let (kind, c, generation) = untoken(tok);
        match kind {
            WAKE_NEXT_OP | WAKE_TIMEOUT => {
                let Some(client) = self.clients.get(c) else {
                    return;
                };
                if client.generation & 0xffff_ffff != generation {
                    return;
                }
                if kind == WAKE_NEXT_OP {
                    self.next_op(ctl, c);
                } else {
                    self.retry(ctl, c, None, 0);
                }
            }
            WAKE_DEADLINE if c < self.clients.len() => self.deadline_passed(ctl, c, generation),
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
        for c in 0..self.clients.len() {
            if self.clients[c]
                .pending
                .as_ref()
                .is_some_and(|p| p.target == node)
            {
                self.retry(ctl, c, None, 0);
            }
        }
    }

    fn on_restart(&mut self, ctl: &mut Ctl<'_, WalBacked>, node: NodeId) {
        self.checks.on_restart(ctl, node);
    }

    fn on_quiet(&mut self, ctl: &mut Ctl<'_, WalBacked>) {
        self.checks.check_logs(ctl);
    }

    fn done(&self, ctl: &Ctl<'_, WalBacked>) -> bool {
        self.clients.iter().all(Client::idle) && self.current_leader(ctl).is_some()
    }

    fn finish(&mut self, ctl: &mut Ctl<'_, WalBacked>, _terminated: bool, report: &mut RunReport) {
        self.checks.finish(ctl, report);
        let ok = self.history.iter().filter(|o| !o.is_indefinite()).count() as u64;
        report.count("ops_ok", ok);
        report.count("ops_indefinite", self.history.len() as u64 - ok);
        report.count("ops_unknown_checks", 0);
        match check(&self.history) {
            CheckResult::Linearizable => {}
            CheckResult::Unknown { .. } => report.count("ops_unknown_checks", 1),
            r @ (CheckResult::NotLinearizable(_) | CheckResult::Malformed { .. }) => {
                let mut detail = r.to_string();
                if detail.len() > 2000 {
                    let mut cut = 2000;
                    while !detail.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    detail.truncate(cut);
                    detail.push_str(" ...");
                }
                ctl.violation("linearizability", None, detail);
            }
        }
        if let Some((t, m)) = self.first_commit {
            report.decision_time = Some(t);
            report.decision_messages = Some(m);
        }
        if let Some(rec) = &self.recording {
            let mut rec = rec.borrow_mut();
            rec.history = std::mem::take(&mut self.history);
            rec.failovers = self.checks.take_failovers();
        }
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
