//! The service's own state machine under the simulator's faults: members are
//! [`synod_kv::replica::Replica`] (synod-kv's store on the Raft core), exactly
//! the node the service runs, driven here with virtual time and faults
//! instead of threads and sockets, and kept on the service's WAL adapter
//! (`synod_raft_log`) over the simulated disk
//! ([`crate::models::wal_disk::WalBacked`]), so torn writes, bit flips and
//! power loss reach the same recovery code the service runs. With
//! [`engine::OnMultiPaxos`] (`--engine multipaxos`) the same replicas run on
//! the Multi-Paxos log instead, under the same clients and checks
//! ([`engine`] says what differs).
//! Members compact their logs every [`SNAPSHOT_EVERY`] entries, so most runs
//! take snapshots, send them to lagging members and recover from them. With
//! [`EtcdModel::with_spares`] (as `synod sim --algo etcd` runs it) the leader
//! is also asked, one change at a time, to add a spare member as a learner or
//! voter, promote a learner, or remove a voter (itself included).
//!
//! Clients behave as etcd clients do: each runs single-key operations one at a
//! time — put, linearizable get, delete, and compare-and-swap as a transaction
//! (compare the value, or version 0 for "absent", then put) — against a
//! member, following `NotLeader` hints. etcd has no client sessions, so a
//! write whose outcome is unknown (leadership changed, the member crashed, no
//! answer in time) is recorded as indefinite and the client moves on; a read
//! is simply retried.
//!
//! Checked on every run:
//! * **linearizability** of the client history (the checker of
//!   [`crate::linearizability`]);
//! * the Raft properties and storage checks of
//!   [`crate::models::raft_checks::RaftChecks`] (election
//!   safety, log matching, leader completeness, state-machine safety, the
//!   commit rule, storage), on the replica's own Raft core;
//! * **state_machine_safety** also on the store: every member that applies
//!   log entry `i` is at the same store revision afterwards, and members that
//!   have applied the same index hold stores with the same [`Store::hash`]
//!   (history, leases, revisions), compared every [`LOG_CHECK_EVERY`] and at
//!   the end.
//!
//! * **lease_expiry** — a lease client grants [`LEASES`] leases one after
//!   the other (TTL 1 or 2 s, never kept alive) and attaches a key to each;
//!   no member deletes a lease's key before the lease's TTL has passed since
//!   the client asked for the grant (the leader counts TTLs in its own ticks
//!   from when it applies the grant, as etcd's lessor does, and a new leader
//!   restarts them). Counting from the acknowledgment instead would ask for
//!   more than etcd promises: the answer leaves after the apply, and may wait
//!   behind a slow sync for longer than any margin counted in ticks.
//!
//! * **auth** — an admin client (the `admin` module) sets up users and roles, turns
//!   auth on, writes as a user with little permission (one write allowed, two
//!   denied), and turns auth off, through the log; every answer must be the
//!   one etcd's rules give, and no member may hold a denied write's key.
//!
//! Liveness: in the quiet phase every client finishes its operations, and
//! every lease whose key was attached expires.
//!
//! [`Store::hash`]: synod_kv::Store::hash

mod admin;
pub mod engine;

use crate::history::{OpKind, OpResult, Operation};
use crate::linearizability::{self, CheckOptions};
use crate::report::RunReport;
use crate::sim::{Ctl, Model};
use engine::{OnRaft, SimEngine};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use synod_kv::replica::{
    Answer, Engine, RaftEngine, Replica, ReplicaConfig, ReplicaError, ReplicaEvent, ReplicaInput,
    Request,
};
use synod_kv::{
    Command, CommandResponse, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use synod_protocols::raft::ConfChange;
use synod_protocols::{Instant, NodeId, MS};

/// The properties this model checks besides [`crate::models::raft_checks::PROPERTIES`].
pub const PROPERTIES: &[&str] = &["linearizability", "lease_expiry", "auth"];
/// The counters this model reports besides [`crate::models::raft_checks::COUNTERS`].
pub const COUNTERS: &[&str] = &[
    "ops_ok",
    "ops_indefinite",
    "retries",
    "store_hash_checks",
    "leases_expired",
    "snapshots_encoded_elsewhere",
    "auth_steps",
];

/// Members compact their logs after this many applied entries (the service:
/// `--snapshot-count`, 10,000 by default), so that snapshots are taken, sent
/// and recovered from in most runs.
pub const SNAPSHOT_EVERY: u64 = 16;
/// How often the logs and stores of the up members are compared.
pub const LOG_CHECK_EVERY: Instant = 250 * MS;
/// The wake-up token of the periodic comparison (client tokens are smaller).
const LOG_CHECK: u64 = u64::MAX;
/// The wake-up token of the next membership change.
const MEMBERSHIP: u64 = u64::MAX - 1;
/// Spare members beyond the `--nodes` initial voters, which membership
/// changes bring in and out (as `--algo raft` has).
pub const SPARES: usize = 1;

/// Builds a member from its config, recovered image and seed.
pub type Boot<E = RaftEngine> = fn(ReplicaConfig, &<E as Engine>::Disk, u64) -> Replica<E>;

/// Leases the lease client grants per run.
pub const LEASES: i64 = 4;

/// One lease of the lease client.
#[derive(Clone, Debug, Default)]
struct Lease {
    ttl_s: i64,
    /// When the client first asked for the grant: whichever try was
    /// applied, it was applied after this.
    asked: Option<Instant>,
    /// When the try that was acknowledged was sent (the one the lease's
    /// TTL is checked from); the first try's time if only a retry found
    /// the lease granted.
    granted_after: Option<Instant>,
    /// Whether a key is attached to it for sure.
    attached: bool,
    /// When a member was first seen deleting its key.
    deleted: Option<Instant>,
}

/// The lease client: grant, then attach, one lease at a time.
#[derive(Clone, Debug, Default)]
struct LeaseClient {
    leases: Vec<Lease>,
    /// The lease being worked on (index into `leases`) and whether its key
    /// is being attached (else it is being granted).
    current: Option<(usize, bool)>,
    generation: u64,
    target: NodeId,
    /// "Not the leader" answers since the last step done; past one per
    /// member, hints are no longer followed (see [`Client::redirects`]; a
    /// removed member naming a leader down for good kept this client going
    /// between the two: `--engine multipaxos`, seed 9,318).
    redirects: u32,
    /// When the latest try of a grant was sent.
    last_sent: Instant,
}

fn lease_key(i: usize) -> Vec<u8> {
    format!("lease-{i}").into_bytes()
}

/// Operations per client and run.
const OPS: u32 = 40;
/// A client that hears nothing for this long gives the request up.
const CLIENT_TIMEOUT: u64 = 400 * MS;
const KEYS: u32 = 4;

#[derive(Clone, Debug)]
struct Client {
    /// The operation in progress, when it was first invoked, and its
    /// generation (so stale answers and timeouts are ignored).
    op: Option<(OpKind, u64)>,
    generation: u64,
    target: NodeId,
    /// "Not the leader" answers since the last completed operation. Past
    /// one per node, hints are no longer followed and the client tries the
    /// members in turn: a member removed while it was cut off never learns
    /// so and keeps naming the leader it last knew (perhaps one that is
    /// down, or another stale member), and a client that always followed
    /// hints could go round such members for ever (found by the
    /// simulator). etcd's clients do not follow hints at all.
    redirects: u32,
    /// Tries of the operation in progress.
    sent: u32,
    done: u32,
    /// Members that let a request of this client time out, and when. A
    /// read's random first try avoids them for [`SHUNNED_FOR`], as an etcd
    /// client's balancer leaves an endpoint that failed it: with two of six
    /// members down for good, one in six reads lost 400 ms to a dead member
    /// and the run missed its deadline (5 nodes, seed 1,484 once read-index
    /// requests were batched).
    failed: BTreeMap<NodeId, Instant>,
    /// Where the latest try went.
    sent_to: Option<NodeId>,
}

/// How long a client leaves a member that let its request time out out of
/// its random picks.
const SHUNNED_FOR: u64 = 1_000 * MS;

pub struct EtcdModel<K: SimEngine = OnRaft> {
    n: usize,
    clients: Vec<Client>,
    history: Vec<Operation>,
    /// Request id -> (client, generation).
    inflight: BTreeMap<u64, (usize, u64)>,
    next_request: u64,
    next_value: u64,
    /// Log index -> the revision the first member to apply it reached.
    revisions: BTreeMap<u64, (i64, NodeId)>,
    retries: u64,
    /// Deliberately broken (tests only): reads are answered from the
    /// member's own store, without ReadIndex.
    local_reads: bool,
    checks: K,
    boot: Boot<K::Engine>,
    store_hash_checks: u64,
    /// Snapshot images members handed out and got back encoded.
    images_encoded: u64,
    lessee: LeaseClient,
    /// Request id -> generation of the lease client's request.
    lease_inflight: BTreeMap<u64, u64>,
    /// The initial voters are members `0..voters`; the rest are spares.
    voters: usize,
    /// Request id -> the membership change asked for, as the service asks
    /// (`Request::Conf`).
    conf_inflight: BTreeMap<u64, ConfChange>,
    /// The request id of the latest membership change asked for.
    last_conf: u64,
    /// Membership changes answered as in force, and refused by the leader.
    confs_acked: u64,
    confs_refused: u64,
    /// Linearizable reads a follower answered (by ReadIndex).
    follower_reads: u64,
    admin: admin::AdminClient,
    /// Request id -> generation of the admin client's request.
    admin_inflight: BTreeMap<u64, u64>,
}

/// `cmd` as a client writes it: as `root`, so it is allowed whether or not
/// auth is on (the admin client turns it on and off during the run).
fn as_root(cmd: Command) -> Command {
    Command::As {
        user: "root".into(),
        cmd: Box::new(cmd),
    }
}

/// The bytes stored for value `v`: the name, then up to [`MAX_PAD`] bytes
/// of padding that depend only on the name (so a compare-and-swap can
/// name the stored bytes). Real values span WAL sectors, and a power loss
/// can tear a record in the middle, which is what `torn-write` is about.
fn padded(v: &str) -> Vec<u8> {
    let n: u64 = v.trim_start_matches('v').parse().unwrap_or(0);
    let mut bytes = v.as_bytes().to_vec();
    bytes.resize(
        bytes.len() + (n.wrapping_mul(7919) % MAX_PAD) as usize,
        b'.',
    );
    bytes
}

/// The value's name, without its padding.
fn unpadded(stored: &str) -> String {
    stored.trim_end_matches('.').to_string()
}

/// Values carry up to this much padding.
const MAX_PAD: u64 = 1200;

fn token(client: usize, generation: u64) -> u64 {
    ((client as u64) << 32) | (generation & 0xffff_ffff)
}

impl<K: SimEngine> EtcdModel<K> {
    pub fn new(n: usize, clients: usize) -> Self {
        EtcdModel {
            n,
            clients: (0..clients)
                .map(|c| Client {
                    op: None,
                    generation: 0,
                    target: (c % n) as NodeId,
                    redirects: 0,
                    sent: 0,
                    done: 0,
                    failed: BTreeMap::new(),
                    sent_to: None,
                })
                .collect(),
            history: Vec::new(),
            inflight: BTreeMap::new(),
            next_request: 1,
            next_value: 1,
            revisions: BTreeMap::new(),
            retries: 0,
            local_reads: false,
            checks: K::new(n),
            boot: Replica::new,
            store_hash_checks: 0,
            images_encoded: 0,
            lessee: LeaseClient::default(),
            lease_inflight: BTreeMap::new(),
            conf_inflight: BTreeMap::new(),
            last_conf: 0,
            confs_acked: 0,
            confs_refused: 0,
            follower_reads: 0,
            voters: n,
            admin: admin::AdminClient::default(),
            admin_inflight: BTreeMap::new(),
        }
    }

    /// Adds `spares` members outside the initial configuration (the
    /// simulation must have `nodes + spares` nodes) and turns on membership
    /// changes in the fault phase: spares are added as learners or voters,
    /// learners promoted, voters (the leader included) removed.
    /// Deliberately broken (tests only): members start over on an empty
    /// disk when recovery refuses theirs ([`SimEngine::wipe_on_corruption`]).
    pub fn with_wipe_on_corruption(mut self) -> Self {
        self.checks.wipe_on_corruption();
        self
    }

    pub fn with_spares(mut self, spares: usize) -> Self {
        self.n = self.voters + spares;
        self.checks.resize(self.n);
        self
    }

    /// Asks the leader for the next membership change, one at a time.
    fn change_membership(&mut self, ctl: &mut Ctl<'_, K::Node>) {
        let Some(leader) = self.checks.current_leader(ctl) else {
            return;
        };
        let change = self.checks.next_change(ctl, leader, self.n, self.voters);
        if let Some(change) = change {
            if ctl.tracing() {
                ctl.trace(format_args!("admin: asks n{leader} to {change:?}"));
            }
            let id = self.next_request;
            self.next_request += 1;
            self.conf_inflight.insert(id, change);
            self.last_conf = id;
            let req = Request::Conf(change);
            ctl.input(leader, ReplicaInput::Client { id, req }, MS);
        }
    }

    /// The service answers a membership change once it is in force: the
    /// answering member's configuration must show it then, unless a change
    /// asked for later (`id` is not the latest) may have replaced it since:
    /// answers wait for the member's sync, and the next change can be
    /// appended, and be in force, meanwhile.
    fn conf_answer(
        &mut self,
        ctl: &mut Ctl<'_, K::Node>,
        node: NodeId,
        id: u64,
        change: ConfChange,
        result: Result<Answer, ReplicaError>,
    ) {
        match result {
            Ok(_) => {
                self.confs_acked += 1;
                let Some(member) = ctl.node(node) else {
                    return;
                };
                if id != self.last_conf {
                    return;
                }
                if let Err(why) = K::in_force(member, change) {
                    ctl.violation(
                        "membership",
                        Some(node),
                        format!("{change:?} answered as done, but {why}"),
                    );
                }
            }
            Err(ReplicaError::Conf(_)) => self.confs_refused += 1,
            // Asked again at the next membership tick.
            Err(_) => {}
        }
    }

    /// The lease client's wake-up tokens carry this client number.
    fn lease_client(&self) -> usize {
        self.clients.len()
    }

    /// Starts (or retries) the lease client's current step.
    fn lease_send(&mut self, ctl: &mut Ctl<'_, K::Node>) {
        let Some((i, attaching)) = self.lessee.current else {
            return;
        };
        let id = 1 + i as i64;
        let cmd = if attaching {
            as_root(Command::Put(PutRequest {
                key: lease_key(i),
                value: b"held".to_vec(),
                lease: id,
                ..PutRequest::default()
            }))
        } else {
            Command::LeaseGrant {
                id,
                ttl: self.lessee.leases[i].ttl_s,
            }
        };
        if !attaching {
            let now = ctl.now();
            let lease = &mut self.lessee.leases[i];
            lease.asked.get_or_insert(now);
            self.lessee.last_sent = now;
        }
        self.lessee.generation += 1;
        let generation = self.lessee.generation;
        let req_id = self.next_request;
        self.next_request += 1;
        self.lease_inflight.insert(req_id, generation);
        let latency = ctl.rng().gen_range(MS / 2..2 * MS);
        let req = ReplicaInput::Client {
            id: req_id,
            req: Request::Write(cmd),
        };
        ctl.input(self.lessee.target, req, latency);
        ctl.wake(
            latency + CLIENT_TIMEOUT,
            token(self.lease_client(), generation),
        );
    }

    /// Moves the lease client on: attach after a grant, grant the next
    /// lease after an attach.
    fn lease_next(&mut self, ctl: &mut Ctl<'_, K::Node>) {
        self.lessee.redirects = 0;
        self.lessee.current = match self.lessee.current {
            Some((i, false)) => Some((i, true)),
            Some((i, true)) if (i as i64) + 1 < LEASES => Some((i + 1, false)),
            Some(_) => None,
            None if self.lessee.leases.is_empty() => Some((0, false)),
            None => None,
        };
        if let Some((i, false)) = self.lessee.current {
            let ttl_s = ctl.rng().gen_range(1..=2);
            self.lessee.leases.push(Lease {
                ttl_s,
                ..Lease::default()
            });
            debug_assert_eq!(self.lessee.leases.len(), i + 1);
        }
        self.lease_send(ctl);
    }

    fn lease_answer(
        &mut self,
        ctl: &mut Ctl<'_, K::Node>,
        node: NodeId,
        result: Result<Answer, ReplicaError>,
    ) {
        let Some((i, attaching)) = self.lessee.current else {
            return;
        };
        let n = self.n as NodeId;
        match result {
            Ok(_) => {
                if attaching {
                    self.lessee.leases[i].attached = true;
                } else {
                    self.lessee.leases[i].granted_after = Some(self.lessee.last_sent);
                }
                self.lease_next(ctl);
                if self.n > self.voters {
                    ctl.wake(100 * MS, MEMBERSHIP);
                }
            }
            // Granted by an earlier try whose answer was lost: after the
            // first try was sent, at the earliest.
            Err(ReplicaError::Kv(synod_kv::Error::LeaseExists(_))) if !attaching => {
                let lease = &mut self.lessee.leases[i];
                lease.granted_after = lease.asked;
                self.lease_next(ctl)
            }
            // Expired before its key could be attached: nothing to watch.
            Err(ReplicaError::Kv(synod_kv::Error::LeaseNotFound(_))) if attaching => {
                self.lease_next(ctl)
            }
            Err(ReplicaError::NotLeader { hint }) => {
                self.lessee.redirects += 1;
                let follow = self.lessee.redirects <= n as u32;
                self.lessee.target = hint
                    .filter(|_| follow)
                    .unwrap_or((self.lessee.target + 1) % n);
                self.lease_send(ctl);
            }
            Err(ReplicaError::LeaderChanged) => {
                self.lessee.target = (self.lessee.target + 1) % n;
                self.lease_send(ctl);
            }
            Err(ReplicaError::Kv(e)) => ctl.violation(
                "lease_expiry",
                Some(node),
                format!(
                    "lease {}: the store refused a well-formed request: {e}",
                    i + 1
                ),
            ),
            Err(ReplicaError::Conf(e)) => ctl.violation(
                "lease_expiry",
                Some(node),
                format!("lease {}: refused as a membership change: {e:?}", i + 1),
            ),
        }
    }

    /// A member deleted keys: a lease key may go only once its TTL has
    /// passed since the granted try was sent.
    fn lease_deletes(
        &mut self,
        ctl: &mut Ctl<'_, K::Node>,
        node: NodeId,
        events: &[synod_kv::Event],
    ) {
        for e in events {
            if e.kind != synod_kv::EventKind::Delete {
                continue;
            }
            let Some(i) = (0..self.lessee.leases.len()).find(|&i| e.kv.key == lease_key(i)) else {
                continue;
            };
            let now = ctl.now();
            let lease = &mut self.lessee.leases[i];
            if let Some(asked) = lease.granted_after {
                let due = asked + lease.ttl_s as u64 * 1_000 * MS;
                if now < due {
                    ctl.violation(
                        "lease_expiry",
                        Some(node),
                        format!(
                            "lease {} ({} s) asked for at {} ms, its key deleted at {} ms",
                            i + 1,
                            lease.ttl_s,
                            asked / MS,
                            now / MS
                        ),
                    );
                }
            }
            lease.deleted.get_or_insert(now);
        }
    }

    /// Builds members with `boot` instead of [`Replica::new`] (the tests'
    /// deliberately broken replicas).
    pub fn with_boot(mut self, boot: Boot<K::Engine>) -> Self {
        self.boot = boot;
        self
    }

    /// Members that have applied the same index must hold equal stores.
    fn check_stores(&mut self, ctl: &mut Ctl<'_, K::Node>) {
        let mut seen: BTreeMap<u64, (u64, NodeId)> = BTreeMap::new();
        for id in 0..self.n as NodeId {
            let Some(r) = ctl.node(id).and_then(K::replica) else {
                continue;
            };
            let applied = r.applied_index();
            let hash = r.store().hash();
            match seen.get(&applied) {
                Some(&(h, other)) if h != hash => {
                    ctl.violation(
                        "state_machine_safety",
                        Some(id),
                        format!("store hash {hash:#x} at applied index {applied}, n{other} has {h:#x} there"),
                    );
                    return;
                }
                Some(_) => self.store_hash_checks += 1,
                None => {
                    seen.insert(applied, (hash, id));
                }
            }
        }
    }

    /// Turns on the broken local reads (tests only).
    pub fn with_local_reads(mut self) -> Self {
        self.local_reads = true;
        self
    }

    fn request(kind: &OpKind) -> Request {
        match kind {
            OpKind::Put { key, value } => Request::Write(Command::Put(PutRequest {
                key: key.clone().into_bytes(),
                value: padded(value),
                ..PutRequest::default()
            })),
            OpKind::Get { key } => Request::Read(RangeRequest {
                key: key.clone().into_bytes(),
                ..RangeRequest::default()
            }),
            OpKind::Delete { key } => Request::Write(Command::DeleteRange(DeleteRangeRequest {
                key: key.clone().into_bytes(),
                ..DeleteRangeRequest::default()
            })),
            OpKind::Cas {
                key,
                expected,
                value,
            } => Request::Write(Command::Txn(TxnRequest {
                compare: vec![Compare {
                    key: key.clone().into_bytes(),
                    range_end: Vec::new(),
                    result: CompareResult::Equal,
                    target: match expected {
                        Some(v) => CompareTarget::Value(padded(v)),
                        None => CompareTarget::Version(0),
                    },
                }],
                success: vec![RequestOp::Put(PutRequest {
                    key: key.clone().into_bytes(),
                    value: padded(value),
                    ..PutRequest::default()
                })],
                failure: Vec::new(),
            })),
        }
    }

    fn result(kind: &OpKind, answer: &Answer) -> Option<OpResult> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Some(match (kind, answer) {
            (OpKind::Put { .. }, Answer::Write { .. }) => OpResult::Ok,
            (OpKind::Get { .. }, Answer::Read { resp, .. }) => {
                OpResult::Read(resp.kvs.first().map(|kv| unpadded(&text(&kv.value))))
            }
            (
                OpKind::Delete { .. },
                Answer::Write {
                    resp: CommandResponse::DeleteRange(d),
                    ..
                },
            ) => OpResult::Deleted(d.deleted > 0),
            (
                OpKind::Cas { .. },
                Answer::Write {
                    resp: CommandResponse::Txn(t),
                    ..
                },
            ) => OpResult::Swapped(t.succeeded),
            _ => return None,
        })
    }

    fn next_op(&mut self, ctl: &mut Ctl<'_, K::Node>, c: usize) {
        let client = &mut self.clients[c];
        if client.done >= OPS {
            client.op = None;
            return;
        }
        let rng = ctl.rng();
        let key = format!("k{}", rng.gen_range(0..KEYS));
        let value = format!("v{}", self.next_value);
        self.next_value += 1;
        let kind = match rng.gen_range(0..10) {
            0..=3 => OpKind::Put { key, value },
            4..=6 => OpKind::Get { key },
            7 => OpKind::Delete { key },
            _ => {
                let expected = if rng.gen_bool(0.3) {
                    None
                } else {
                    Some(format!("v{}", rng.gen_range(1..self.next_value)))
                };
                OpKind::Cas {
                    key,
                    expected,
                    value,
                }
            }
        };
        let now = ctl.now();
        self.clients[c].op = Some((kind, now));
        self.clients[c].sent = 0;
        self.send(ctl, c);
    }

    /// Sends client `c`'s operation to its current target.
    fn send(&mut self, ctl: &mut Ctl<'_, K::Node>, c: usize) {
        let Some((kind, _)) = self.clients[c].op.clone() else {
            return;
        };
        let client = &mut self.clients[c];
        client.generation += 1;
        client.sent += 1;
        let first_try = client.sent == 1;
        let generation = client.generation;
        let mut target = client.target;
        // Half the reads go to any member on their first try: a follower
        // serves them by ReadIndex, which is what this exercises. A retry
        // goes where the client was sent, as an etcd client leaves an
        // endpoint that failed it: retrying at random members, a read could
        // meet two that are down for good, a timeout each, often enough to
        // miss the run's deadline (5 nodes, seed 18).
        if matches!(kind, OpKind::Get { .. })
            && first_try
            && K::FOLLOWER_READS
            && !self.local_reads
            && ctl.rng().gen_bool(0.5)
        {
            let now = ctl.now();
            let failed = &self.clients[c].failed;
            let live: Vec<NodeId> = (0..self.n as NodeId)
                .filter(|m| failed.get(m).is_none_or(|at| now >= *at + SHUNNED_FOR))
                .collect();
            if !live.is_empty() {
                target = live[ctl.rng().gen_range(0..live.len())];
            }
        }
        if self.local_reads {
            if let OpKind::Get { key } = &kind {
                if let Some(node) = ctl.node(target).and_then(K::replica) {
                    let resp = node
                        .store()
                        .range(&RangeRequest {
                            key: key.clone().into_bytes(),
                            ..RangeRequest::default()
                        })
                        .expect("a plain read succeeds");
                    let answer = Answer::Read {
                        revision: 0,
                        term: 0,
                        resp,
                    };
                    self.complete(ctl, c, &answer);
                    return;
                }
            }
        }
        let id = self.next_request;
        self.next_request += 1;
        self.inflight.insert(id, (c, generation));
        let req = match Self::request(&kind) {
            Request::Write(cmd) => Request::Write(as_root(cmd)),
            read => read,
        };
        let latency = ctl.rng().gen_range(MS / 2..2 * MS);
        self.clients[c].sent_to = Some(target);
        ctl.input(target, ReplicaInput::Client { id, req }, latency);
        ctl.wake(latency + CLIENT_TIMEOUT, token(c, generation));
    }

    fn complete(&mut self, ctl: &mut Ctl<'_, K::Node>, c: usize, answer: &Answer) {
        let Some((kind, invoked)) = self.clients[c].op.take() else {
            return;
        };
        self.clients[c].redirects = 0;
        match Self::result(&kind, answer) {
            Some(result) => self.history.push(Operation::completed(
                c as u64,
                kind,
                invoked,
                ctl.now(),
                result,
            )),
            None => ctl.violation(
                "linearizability",
                None,
                format!("{kind:?} answered with {answer:?}"),
            ),
        }
        self.clients[c].done += 1;
        self.next_op(ctl, c);
    }

    /// The outcome of client `c`'s write is unknown: it stays indefinite in the
    /// history; a read is simply tried again.
    fn give_up_or_retry(&mut self, ctl: &mut Ctl<'_, K::Node>, c: usize, next_target: NodeId) {
        self.retries += 1;
        self.clients[c].target = next_target;
        let Some((kind, invoked)) = self.clients[c].op.clone() else {
            return;
        };
        if matches!(kind, OpKind::Get { .. }) {
            self.send(ctl, c);
            return;
        }
        self.clients[c].op = None;
        self.history
            .push(Operation::indefinite(c as u64, kind, invoked));
        self.clients[c].done += 1;
        self.next_op(ctl, c);
    }
}

impl<K: SimEngine> Model for EtcdModel<K> {
    type Node = K::Node;

    fn boot(&mut self, id: NodeId, disk: &DiskOf<K>, seed: u64) -> K::Node {
        // Spares boot outside the configuration and wait to be added.
        let mut cfg = ReplicaConfig::new(id, (0..self.voters as NodeId).collect());
        // The simulator ticks every 10 ms.
        cfg.tick_ms = 10;
        cfg.raft.snapshot_every = SNAPSHOT_EVERY;
        // Both snapshot policies: by entries alone, and the service's (also
        // by the size of the log against the last snapshot's).
        if seed.is_multiple_of(2) {
            cfg.raft.snapshot_log_percent = 0;
        }
        // Both ways of encoding a snapshot: inside the step, and elsewhere
        // (the service), with entries applied in between.
        cfg.encode_snapshots_elsewhere = seed & 2 != 0;
        let boot = self.boot;
        self.checks.boot(id, disk, |d| boot(cfg.clone(), d, seed))
    }

    fn corrupt(&mut self, disk: &mut DiskOf<K>, rng: &mut ChaCha8Rng) -> bool {
        self.checks.corrupt(disk, rng)
    }

    fn tear(&mut self, disk: &mut DiskOf<K>, writes: &[WriteOf<K>], rng: &mut ChaCha8Rng) {
        self.checks.tear(disk, writes, rng);
    }

    fn worth_tearing(&self, writes: &[WriteOf<K>]) -> bool {
        K::worth_tearing(writes)
    }

    fn on_start(&mut self, ctl: &mut Ctl<'_, K::Node>) {
        for c in 0..self.clients.len() {
            self.next_op(ctl, c);
        }
        self.lease_next(ctl);
        self.admin_send(ctl);
        ctl.wake(LOG_CHECK_EVERY, LOG_CHECK);
    }

    fn on_send(
        &mut self,
        ctl: &mut Ctl<'_, K::Node>,
        from: NodeId,
        msg: &<K::Node as synod_protocols::Node>::Msg,
    ) {
        self.checks.on_send(ctl, from, msg);
    }

    fn on_crash(&mut self, ctl: &mut Ctl<'_, K::Node>, node: NodeId) {
        self.checks.on_crash(ctl, node);
        // As the service's peer readers do when a process dies: every other
        // member learns, a moment later, that the crashed one is gone.
        for other in (0..self.n as NodeId).filter(|o| *o != node) {
            let delay = ctl.rng().gen_range(MS / 2..5 * MS);
            ctl.input(other, ReplicaInput::PeerGone(node), delay);
        }
    }

    fn on_restart(&mut self, ctl: &mut Ctl<'_, K::Node>, node: NodeId) {
        self.checks.on_restart(ctl, node);
    }

    fn on_quiet(&mut self, ctl: &mut Ctl<'_, K::Node>) {
        self.checks.check_logs(ctl);
        self.check_stores(ctl);
        self.check_denied_keys(ctl);
    }

    fn on_event(&mut self, ctl: &mut Ctl<'_, K::Node>, node: NodeId, event: ReplicaEvent) {
        match event {
            ReplicaEvent::Applied {
                index,
                term,
                digest,
                revision,
                events,
            } => {
                self.checks.on_applied(ctl, node, index, term, digest);
                self.lease_deletes(ctl, node, &events);
                match self.revisions.get(&index) {
                    Some((r, first)) if *r != revision => ctl.violation(
                        "state_machine_safety",
                        Some(node),
                        format!("entry {index}: revision {revision} here, {r} at n{first}"),
                    ),
                    Some(_) => {}
                    None => {
                        self.revisions.insert(index, (revision, node));
                    }
                }
            }
            ReplicaEvent::Response { id, result } => {
                if let Some(change) = self.conf_inflight.remove(&id) {
                    self.conf_answer(ctl, node, id, change, result);
                    return;
                }
                if let Some(generation) = self.admin_inflight.remove(&id) {
                    if generation == self.admin.generation {
                        self.admin_answer(ctl, node, result);
                    }
                    return;
                }
                if let Some(generation) = self.lease_inflight.remove(&id) {
                    if generation == self.lessee.generation {
                        self.lease_answer(ctl, node, result);
                    }
                    return;
                }
                let Some((c, generation)) = self.inflight.remove(&id) else {
                    return;
                };
                if self.clients[c].generation != generation || self.clients[c].op.is_none() {
                    return;
                }
                match result {
                    Ok(answer) => {
                        if matches!(answer, Answer::Read { .. })
                            && ctl
                                .node(node)
                                .and_then(K::replica)
                                .is_some_and(|r| !r.is_leader())
                        {
                            self.follower_reads += 1;
                        }
                        self.complete(ctl, c, &answer)
                    }
                    Err(ReplicaError::NotLeader { hint }) => {
                        // Not proposed anywhere: safe to send again.
                        self.retries += 1;
                        let n = self.n as NodeId;
                        self.clients[c].redirects += 1;
                        let follow = self.clients[c].redirects <= n as u32;
                        self.clients[c].target = hint
                            .filter(|_| follow)
                            .unwrap_or_else(|| (self.clients[c].target + 1) % n);
                        let backoff = if hint.is_some() { MS } else { 20 * MS };
                        let tok = token(c, self.clients[c].generation) | (1 << 31);
                        ctl.wake(backoff, tok);
                    }
                    Err(ReplicaError::LeaderChanged) => {
                        let next = (self.clients[c].target + 1) % self.n as NodeId;
                        self.give_up_or_retry(ctl, c, next);
                    }
                    Err(ReplicaError::Kv(e)) => ctl.violation(
                        "linearizability",
                        Some(node),
                        format!("client {c}: the store refused a well-formed request: {e}"),
                    ),
                    Err(ReplicaError::Conf(e)) => ctl.violation(
                        "linearizability",
                        Some(node),
                        format!(
                            "client {c}: a key-value request refused as a membership change: {e:?}"
                        ),
                    ),
                }
            }
            ReplicaEvent::BecameLeader { term } => self.checks.on_became_leader(ctl, node, term),
            ReplicaEvent::SnapshotImage { index, image } => {
                // The service encodes on another thread while the member
                // goes on applying: the encoding comes back after a while,
                // or never (the member crashed meanwhile).
                self.images_encoded += 1;
                let data = image.encode();
                let latency = ctl.rng().gen_range(MS..30 * MS);
                ctl.input(node, ReplicaInput::SnapshotEncoded { index, data }, latency);
            }
        }
    }

    fn on_wake(&mut self, ctl: &mut Ctl<'_, K::Node>, tok: u64) {
        if tok == MEMBERSHIP {
            if !ctl.in_quiet_phase() {
                self.change_membership(ctl);
                let after = ctl.rng().gen_range(100 * MS..400 * MS);
                ctl.wake(after, MEMBERSHIP);
            }
            return;
        }
        if tok == LOG_CHECK {
            self.checks.check_logs(ctl);
            self.check_stores(ctl);
            ctl.wake(LOG_CHECK_EVERY, LOG_CHECK);
            return;
        }
        let c = (tok >> 32) as usize;
        let resend = tok & (1 << 31) != 0;
        let generation = tok & 0x7fff_ffff;
        if c == self.admin_client() {
            if resend {
                self.admin_send(ctl);
            } else {
                self.admin_timeout(ctl, generation);
            }
            return;
        }
        if c == self.lease_client() {
            // No answer in time: ask the next member.
            if self.lessee.generation & 0x7fff_ffff == generation {
                self.lessee.target = (self.lessee.target + 1) % self.n as NodeId;
                self.lease_send(ctl);
            }
            return;
        }
        if c >= self.clients.len() || self.clients[c].generation & 0x7fff_ffff != generation {
            return;
        }
        if self.clients[c].op.is_none() {
            return;
        }
        if resend {
            self.send(ctl, c);
        } else {
            // No answer in time.
            let now = ctl.now();
            let client = &mut self.clients[c];
            if let Some(sent_to) = client.sent_to {
                client.failed.insert(sent_to, now);
            }
            let next = (self.clients[c].target + 1) % self.n as NodeId;
            self.give_up_or_retry(ctl, c, next);
        }
    }

    fn done(&self, ctl: &Ctl<'_, K::Node>) -> bool {
        self.clients.iter().all(|c| c.done >= OPS && c.op.is_none())
            && self.checks.members_caught_up(ctl)
            && self.lessee.current.is_none()
            && self.admin_done()
            && self
                .lessee
                .leases
                .iter()
                .all(|l| !l.attached || l.deleted.is_some())
    }

    fn finish(&mut self, ctl: &mut Ctl<'_, K::Node>, _terminated: bool, report: &mut RunReport) {
        self.checks.finish(ctl, report);
        self.check_stores(ctl);
        self.check_denied_keys(ctl);
        report.count("store_hash_checks", self.store_hash_checks);
        report.count("auth_steps", self.admin.answered);
        report.count("snapshots_encoded_elsewhere", self.images_encoded);
        report.count("membership_changes_answered", self.confs_acked);
        report.count("membership_changes_refused", self.confs_refused);
        report.count("reads_served_by_followers", self.follower_reads);
        let expired = self.lessee.leases.iter().filter(|l| l.deleted.is_some());
        report.count("leases_expired", expired.count() as u64);
        // An operation still in progress at the end is indefinite.
        for (c, client) in self.clients.iter().enumerate() {
            if let Some((kind, invoked)) = &client.op {
                self.history
                    .push(Operation::indefinite(c as u64, kind.clone(), *invoked));
            }
        }
        let result = linearizability::check_with(&self.history, &CheckOptions::default());
        if let Some(v) = result.violation() {
            ctl.violation("linearizability", None, format!("{v:?}"));
        }
        let ok = self.history.iter().filter(|o| !o.is_indefinite()).count() as u64;
        report.count("ops_ok", ok);
        report.count("ops_indefinite", self.history.len() as u64 - ok);
        report.count("retries", self.retries);
    }
}

type DiskOf<K> = <<K as SimEngine>::Node as synod_protocols::Node>::Disk;
type WriteOf<K> = <<K as SimEngine>::Node as synod_protocols::Node>::Write;

/// The simulator configuration for `--algo etcd`: the voters plus the
/// spares, with f taken from the initial voters.
pub fn sim_config(spec: &crate::runner::RunSpec) -> crate::sim::SimConfig {
    let mut cfg = crate::sim::SimConfig::new(spec.nodes + SPARES, spec.faults);
    cfg.f = spec.nodes.saturating_sub(1) / 2;
    cfg.trace = spec.trace;
    cfg.timeline = spec.timeline;
    cfg
}
