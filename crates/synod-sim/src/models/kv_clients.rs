//! The key-value clients of the Raft and Multi-Paxos models: each runs one
//! operation at a time on a few keys (get, put, delete, compare-and-swap),
//! retries at the node it is told leads or at another, may give up on an
//! operation whose deadline passes (it stays indefinite), and records
//! everything in a history for the linearizability checker. The same
//! clients for both engines, so both are judged alike.

use crate::history::{OpKind, OpResult, Operation};
use crate::linearizability::{check, CheckResult};
use crate::report::RunReport;
use crate::sim::Ctl;
use rand::Rng;
use synod_protocols::kv::{KvError, KvEvent, KvInput, KvOp, KvRequest, KvResult};
use synod_protocols::{Instant, Node, NodeId, MS};

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
/// Number of keys the clients use.
pub const KEYS: usize = 5;

const WAKE_NEXT_OP: u64 = 0;
const WAKE_TIMEOUT: u64 = 1;
const WAKE_DEADLINE: u64 = 4;

/// A timer token: what it is for (`kind`; the clients use 0, 1 and 4, a
/// model its own), which client, and which generation of its state.
pub(crate) fn token(kind: u64, client: usize, generation: u64) -> u64 {
    (kind << 56) | ((client as u64) << 32) | (generation & 0xffff_ffff)
}

pub(crate) fn untoken(t: u64) -> (u64, usize, u64) {
    (t >> 56, ((t >> 32) & 0xff_ffff) as usize, t & 0xffff_ffff)
}

/// A node the clients can talk to.
pub trait KvServer: Node<Input = KvInput, Event = KvEvent> {
    /// Whether it answers at all (a node stopped on a damaged disk does not).
    fn serves(&self) -> bool {
        true
    }
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

/// The clients of one run, and their history.
pub struct KvClients {
    /// Nodes `0..n` are the ones clients may try.
    n: usize,
    clients: Vec<Client>,
    pub history: Vec<Operation>,
    /// The chance that a client is impatient, and the range its deadline is
    /// drawn from.
    impatience: (f64, std::ops::Range<Instant>),
}

impl KvClients {
    pub fn new(nodes: usize, clients: usize) -> KvClients {
        KvClients {
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
            impatience: (IMPATIENT, DEADLINES),
        }
    }

    pub fn set_nodes(&mut self, n: usize) {
        self.n = n;
    }

    pub fn set_impatience(&mut self, share: f64, deadlines: std::ops::Range<Instant>) {
        self.impatience = (share, deadlines);
    }

    /// Where the first client sends its requests now.
    pub fn first_guess(&self) -> NodeId {
        self.clients.first().map_or(0, |c| c.leader_guess)
    }

    /// Every client stopped, with nothing pending.
    pub fn idle(&self) -> bool {
        self.clients.iter().all(Client::idle)
    }

    /// Picks each client's first target and deadline, and schedules its
    /// first operation.
    pub fn start<N: KvServer>(&mut self, ctl: &mut Ctl<'_, N>) {
        for c in 0..self.clients.len() {
            self.clients[c].leader_guess = ctl.rng().gen_range(0..self.n as NodeId);
            let (share, deadlines) = self.impatience.clone();
            if share > 0.0 && ctl.rng().gen_bool(share) {
                self.clients[c].deadline = Some(ctl.rng().gen_range(deadlines));
            }
            self.schedule_next(ctl, c);
        }
    }

    /// Handles a client timer; false if `tok` is not one.
    pub fn on_wake<N: KvServer>(&mut self, ctl: &mut Ctl<'_, N>, tok: u64) -> bool {
        let (kind, c, generation) = untoken(tok);
        match kind {
            WAKE_NEXT_OP | WAKE_TIMEOUT => {
                let Some(client) = self.clients.get(c) else {
                    return true;
                };
                if client.generation & 0xffff_ffff != generation {
                    return true;
                }
                if kind == WAKE_NEXT_OP {
                    self.next_op(ctl, c);
                } else {
                    self.retry(ctl, c, None, 0);
                }
            }
            WAKE_DEADLINE => {
                if c < self.clients.len() {
                    self.deadline_passed(ctl, c, generation);
                }
            }
            _ => return false,
        }
        true
    }

    /// Counts the operations and checks the history for linearizability
    /// (`ops_ok`, `ops_indefinite`, `ops_unknown_checks`).
    pub fn finish<N: KvServer>(&self, ctl: &mut Ctl<'_, N>, report: &mut RunReport) {
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
    }

    /// Clients waiting on `node` try another.
    pub fn on_crash<N: KvServer>(&mut self, ctl: &mut Ctl<'_, N>, node: NodeId) {
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

    fn random_other<N: KvServer>(&self, ctl: &mut Ctl<'_, N>, not: NodeId) -> NodeId {
        let up: Vec<NodeId> = (0..self.n as NodeId)
            .filter(|&i| i != not && ctl.node(i).is_some_and(KvServer::serves))
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
    fn send<N: KvServer>(&mut self, ctl: &mut Ctl<'_, N>, c: usize, extra: Instant) {
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
    fn retry<N: KvServer>(
        &mut self,
        ctl: &mut Ctl<'_, N>,
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

    fn schedule_next<N: KvServer>(&mut self, ctl: &mut Ctl<'_, N>, c: usize) {
        let think = ctl.rng().gen_range(0..20 * MS);
        let client = &mut self.clients[c];
        client.generation += 1;
        ctl.wake(think, token(WAKE_NEXT_OP, c, client.generation));
    }

    fn next_op<N: KvServer>(&mut self, ctl: &mut Ctl<'_, N>, c: usize) {
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
    fn deadline_passed<N: KvServer>(&mut self, ctl: &mut Ctl<'_, N>, c: usize, seq: u64) {
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

    pub fn on_response<N: KvServer>(
        &mut self,
        ctl: &mut Ctl<'_, N>,
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
}
