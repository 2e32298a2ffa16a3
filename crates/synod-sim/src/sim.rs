//! The discrete-event simulator: one run of one cluster under one seed.

use crate::faults::{FaultSet, NetRates, NodeFault, Schedule};
use crate::report::{RunReport, Violation};
use crate::timeline::{label_of, Mark, Timeline};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use synod_protocols::{Instant, Node, NodeId, NodeOutput, Output, MS};

/// What an algorithm brings to the simulator besides its node type: how to build
/// nodes, what clients do, and which properties to check. One `Model` value lives
/// for exactly one run.
pub trait Model {
    type Node: Node;

    /// Builds node `id` from its durable image: empty at the start of a run, and
    /// whatever survived on its disk after a restart. `seed` feeds the node's own
    /// random number generator (election timeouts, backoff).
    fn boot(&mut self, id: NodeId, disk: &<Self::Node as Node>::Disk, seed: u64) -> Self::Node;

    /// Called once before the first event: schedule client inputs here.
    fn on_start(&mut self, ctl: &mut Ctl<'_, Self::Node>);

    /// A node reported an event (after its writes were durable).
    fn on_event(
        &mut self,
        ctl: &mut Ctl<'_, Self::Node>,
        node: NodeId,
        event: <Self::Node as Node>::Event,
    );

    /// A timer set with [`Ctl::wake`] fired.
    fn on_wake(&mut self, _ctl: &mut Ctl<'_, Self::Node>, _token: u64) {}

    /// A node crashed (its volatile state is gone).
    fn on_crash(&mut self, _ctl: &mut Ctl<'_, Self::Node>, _node: NodeId) {}

    /// A node came back up from its disk.
    fn on_restart(&mut self, _ctl: &mut Ctl<'_, Self::Node>, _node: NodeId) {}

    /// Node `from` sends `msg` now (a checker of what may leave when).
    fn on_send(
        &mut self,
        _ctl: &mut Ctl<'_, Self::Node>,
        _from: NodeId,
        _msg: &<Self::Node as Node>::Msg,
    ) {
    }

    /// The fault phase is over: the network is healed and every node that is not
    /// down for good has been restarted.
    fn on_quiet(&mut self, _ctl: &mut Ctl<'_, Self::Node>) {}

    /// Damages the durable image so that the next read of it would see flipped
    /// bits. Returns false if the model has nothing that can be corrupted; the
    /// default does nothing (models without a checksummed disk format).
    fn corrupt(&mut self, _disk: &mut <Self::Node as Node>::Disk, _rng: &mut ChaCha8Rng) -> bool {
        false
    }

    /// Applies part of the writes of a batch that a power loss cut while
    /// they were being synced. The default drops them entirely, which is what
    /// atomic record writes do.
    fn tear(
        &mut self,
        _disk: &mut <Self::Node as Node>::Disk,
        _writes: &[<Self::Node as Node>::Write],
        _rng: &mut ChaCha8Rng,
    ) {
    }

    /// Whether an armed torn-write power loss should strike while `writes`
    /// are synced, or wait for a later batch (at most the arming window).
    /// The default strikes at the first write.
    fn worth_tearing(&self, _writes: &[<Self::Node as Node>::Write]) -> bool {
        true
    }

    /// In the quiet phase: has the liveness goal been reached? Checked after every
    /// event, so it should be cheap.
    fn done(&self, ctl: &Ctl<'_, Self::Node>) -> bool;

    /// The run is over (`terminated` says whether [`Model::done`] held in time):
    /// run end-of-run checks and fill in the report's metrics.
    fn finish(&mut self, ctl: &mut Ctl<'_, Self::Node>, terminated: bool, report: &mut RunReport);
}

/// Parameters of a run that do not come from the seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    /// The number of nodes the algorithm claims to tolerate; at most this many stay
    /// down in the quiet phase.
    pub f: usize,
    pub faults: FaultSet,
    /// Length of the fault phase.
    pub fault_phase: Instant,
    /// How long after the quiet phase begins the liveness goal must be reached.
    pub quiet_limit: Instant,
    /// How often each node's `tick` is called.
    pub tick: Instant,
    /// Record a human-readable trace of the run.
    pub trace: bool,
    /// Record the run's [`Timeline`] (for its picture).
    pub timeline: bool,
    /// Deliberate bugs in the simulated driver, to show a checker catches
    /// them (tests only; nothing else sets them).
    pub bugs: DriverBugs,
}

/// Deliberate bugs in how the simulator carries out a node's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverBugs {
    /// Messages marked early leave as soon as they are produced, even while
    /// an earlier output's sync is in flight (`Envelope::early` allows them
    /// out only once every earlier output is durable).
    pub early_while_syncing: bool,
}

impl SimConfig {
    pub fn new(nodes: usize, faults: FaultSet) -> SimConfig {
        SimConfig {
            nodes,
            f: nodes.saturating_sub(1) / 2,
            faults,
            fault_phase: 2_000 * MS,
            quiet_limit: 10_000 * MS,
            tick: 10 * MS,
            trace: false,
            timeline: false,
            bugs: DriverBugs::default(),
        }
    }
}

enum Ev<N: Node> {
    Deliver {
        from: NodeId,
        to: NodeId,
        msg: N::Msg,
        /// Its mark in the timeline ([`NO_MARK`] when none is recorded).
        mark: usize,
    },
    Tick {
        node: NodeId,
        incarnation: u64,
    },
    Input {
        node: NodeId,
        input: N::Input,
    },
    SyncDone {
        node: NodeId,
        incarnation: u64,
    },
    Wake {
        token: u64,
    },
    Fault(NodeFault),
    /// An armed power loss that found no write to cut goes off anyway.
    ArmedPowerLoss {
        node: NodeId,
        incarnation: u64,
    },
    Restart {
        node: NodeId,
    },
    Heal {
        partition: u64,
    },
    SlowEnd {
        node: NodeId,
        generation: u64,
    },
    Quiet,
}

struct Queued<N: Node> {
    at: Instant,
    seq: u64,
    ev: Ev<N>,
}

impl<N: Node> PartialEq for Queued<N> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<N: Node> Eq for Queued<N> {}
impl<N: Node> PartialOrd for Queued<N> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<N: Node> Ord for Queued<N> {
    // Reversed so that BinaryHeap (a max-heap) pops the earliest event; `seq`
    // breaks ties in insertion order, which keeps runs deterministic.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// How long a sync takes on a fast disk and on a slow one (per node, per run;
/// the network's latency is 1-5 ms).
const FAST_SYNC: std::ops::Range<Instant> = MS / 10..2 * MS;
const SLOW_SYNC: std::ops::Range<Instant> = 2 * MS..10 * MS;

/// How long an armed torn-write power loss waits for a write to cut before
/// it goes off anyway.
const ARM_WINDOW: Instant = 50 * MS;

/// The output of one step, or of every step taken while a sync was in
/// flight (one group), waiting for its writes to become durable.
struct Batch<N: Node> {
    writes: Vec<N::Write>,
    msgs: Vec<synod_protocols::Envelope<N::Msg>>,
    events: Vec<N::Event>,
    /// How many of the first `events` may be reported as its sync starts
    /// (`Output::early_events`).
    early_events: usize,
    /// When its sync ends (set when it starts).
    done_at: Instant,
}

impl<N: Node> Batch<N> {
    fn take(out: &mut NodeOutput<N>) -> Batch<N> {
        Batch {
            writes: std::mem::take(&mut out.writes),
            msgs: std::mem::take(&mut out.msgs),
            events: std::mem::take(&mut out.events),
            early_events: std::mem::take(&mut out.early_events),
            done_at: 0,
        }
    }

    /// Adds a later output to this group: its early events stay early only
    /// if every event before them is.
    fn append(&mut self, out: &mut NodeOutput<N>) {
        if self.early_events == self.events.len() {
            self.early_events += out.early_events;
        }
        out.early_events = 0;
        self.writes.append(&mut out.writes);
        self.msgs.append(&mut out.msgs);
        self.events.append(&mut out.events);
    }
}

struct Slot<N: Node> {
    node: Option<N>,
    incarnation: u64,
    disk: N::Disk,
    /// How long its syncs take (a range drawn from): on a fast disk a
    /// round trip to a peer outlasts a sync; on a slow one, peers answer
    /// messages that left early while the sync is still in flight.
    sync_time: std::ops::Range<Instant>,
    /// The batch whose writes are being synced: one sync at a time, as the
    /// service's member runs them (on a thread of its own while the node
    /// keeps stepping). A process crash keeps its writes (the OS has them).
    syncing: Option<Batch<N>>,
    /// The output of the steps taken while `syncing` was in flight, held in
    /// memory until it is done, then written and synced as one group: a
    /// crash of any kind loses it.
    waiting: Option<Batch<N>>,
    /// Writes of released batches that did not need a sync
    /// ([`Node::must_sync`]), in order: in the page cache, not yet on disk.
    /// The next synced batch makes them durable; a power loss drops them.
    lazy: Vec<N::Write>,
    down_for_good: bool,
    slow_extra: Instant,
    slow_generation: u64,
    /// Crashed because its disk was found corrupt: it must not come back.
    refuses_to_start: bool,
    /// A torn-write power loss waiting for the node's next write, so that
    /// it cuts a write in the middle of its sync: the restart delay it was
    /// scheduled with.
    tear_armed: Option<Option<Instant>>,
}

/// The simulator's state, as far as a [`Model`] may see and steer it.
pub struct Ctl<'a, N: Node> {
    core: &'a mut Core<N>,
}

struct Core<N: Node> {
    cfg: SimConfig,
    now: Instant,
    seq: u64,
    queue: BinaryHeap<Queued<N>>,
    slots: Vec<Slot<N>>,
    net_rng: ChaCha8Rng,
    node_seed_rng: ChaCha8Rng,
    fault_rng: ChaCha8Rng,
    rates: NetRates,
    /// partition[node] = group id; messages cross only within a group.
    partition: Vec<u32>,
    partition_id: u64,
    /// The latest arrival time scheduled on each link (from * n + to), to keep
    /// links FIFO when reordering is off.
    link_last: Vec<Instant>,
    quiet: bool,
    quiet_at: Instant,
    violations: Vec<Violation>,
    violation_count: u64,
    messages_sent: u64,
    deliveries: u64,
    trace: Option<String>,
    timeline: Option<Timeline>,
    scratch: NodeOutput<N>,
    /// How to size a message on the wire, when a benchmark wants bytes counted.
    message_size: Option<fn(&N::Msg) -> u64>,
    bytes_sent: u64,
}

impl<'a, N: Node> Ctl<'a, N> {
    pub fn now(&self) -> Instant {
        self.core.now
    }
    pub fn nodes(&self) -> usize {
        self.core.slots.len()
    }
    pub fn is_up(&self, node: NodeId) -> bool {
        self.core
            .slots
            .get(node as usize)
            .is_some_and(|s| s.node.is_some())
    }
    /// Whether the node holds output it has not written yet (waiting in
    /// memory behind a sync in flight): a crash would lose its writes.
    pub fn holds_unwritten(&self, node: NodeId) -> bool {
        self.core
            .slots
            .get(node as usize)
            .is_some_and(|s| s.waiting.is_some())
    }
    /// The live node, if it is up: checkers may inspect its state.
    pub fn node(&self, node: NodeId) -> Option<&N> {
        self.core
            .slots
            .get(node as usize)
            .and_then(|s| s.node.as_ref())
    }
    /// What is durably on the node's disk.
    pub fn disk(&self, node: NodeId) -> &N::Disk {
        &self.core.slots[node as usize].disk
    }
    pub fn is_down_for_good(&self, node: NodeId) -> bool {
        self.core.slots[node as usize].down_for_good
            || self.core.slots[node as usize].refuses_to_start
    }
    pub fn in_quiet_phase(&self) -> bool {
        self.core.quiet
    }
    pub fn quiet_started_at(&self) -> Instant {
        self.core.quiet_at
    }
    pub fn config(&self) -> &SimConfig {
        &self.core.cfg
    }
    pub fn messages_sent(&self) -> u64 {
        self.core.messages_sent
    }
    /// Hands `input` to `node` after `delay` (dropped if the node is down then).
    pub fn input(&mut self, node: NodeId, input: N::Input, delay: Instant) {
        let at = self.core.now + delay;
        self.core.push(at, Ev::Input { node, input });
    }
    /// Calls [`Model::on_wake`] with `token` after `delay`.
    pub fn wake(&mut self, delay: Instant, token: u64) {
        let at = self.core.now + delay;
        self.core.push(at, Ev::Wake { token });
    }
    /// Records a broken property.
    pub fn violation(&mut self, property: &'static str, node: Option<NodeId>, detail: String) {
        self.core.violation(property, node, detail);
    }
    /// Random numbers for client workloads, drawn from the run's seed.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.core.fault_rng
    }
    pub fn tracing(&self) -> bool {
        self.core.trace.is_some()
    }
    /// Adds a line to the trace (if tracing).
    pub fn trace(&mut self, line: std::fmt::Arguments<'_>) {
        self.core.trace_line(None, line);
    }
}

impl<N: Node> Core<N> {
    fn push(&mut self, at: Instant, ev: Ev<N>) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn trace_line(&mut self, node: Option<NodeId>, line: std::fmt::Arguments<'_>) {
        if let Some(t) = self.trace.as_mut() {
            let now = self.now;
            let _ = write!(t, "{:>6}.{:03} ", now / MS, now % MS);
            match node {
                Some(n) => {
                    let _ = write!(t, "n{n:<2} ");
                }
                None => t.push_str("    "),
            }
            let _ = t.write_fmt(line);
            t.push('\n');
        }
    }

    fn violation(&mut self, property: &'static str, node: Option<NodeId>, detail: String) {
        self.trace_line(node, format_args!("VIOLATION {property}: {detail}"));
        self.violation_count += 1;
        if self.violations.len() < 16 {
            self.violations.push(Violation {
                property,
                node,
                at: self.now,
                detail,
            });
        }
    }

    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.partition[a as usize] == self.partition[b as usize]
    }

    fn latency(&mut self, from: NodeId, to: NodeId) -> Instant {
        let mut l = self.net_rng.gen_range(MS..5 * MS);
        if !self.quiet {
            if self.rates.reorder > 0.0 && self.net_rng.gen_bool(self.rates.reorder) {
                l += self.net_rng.gen_range(0..30 * MS);
            }
            if self.rates.delay > 0.0 && self.net_rng.gen_bool(self.rates.delay) {
                l += self.net_rng.gen_range(50 * MS..500 * MS);
            }
        }
        l + self.slots[from as usize].slow_extra + self.slots[to as usize].slow_extra
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: N::Msg) {
        self.messages_sent += 1;
        if let Some(size) = self.message_size {
            self.bytes_sent += size(&msg);
        }
        if to as usize >= self.slots.len() {
            return;
        }
        if self.tracing() {
            self.trace_line(Some(from), format_args!("-> n{to} {msg:?}"));
        }
        let mark = self.mark_sent(from, to, &msg);
        if !self.connected(from, to) {
            self.trace_line(Some(from), format_args!("   (lost in partition)"));
            let now = self.now;
            self.mark_lost(mark, now);
            return;
        }
        if !self.quiet && self.rates.loss > 0.0 && self.net_rng.gen_bool(self.rates.loss) {
            self.trace_line(Some(from), format_args!("   (lost)"));
            let at = self.now + self.cfg.tick.min(MS);
            self.mark_lost(mark, at);
            return;
        }
        if !self.quiet && self.rates.duplicate > 0.0 && self.net_rng.gen_bool(self.rates.duplicate)
        {
            let at = self.arrival(from, to);
            let mark = self.mark_sent(from, to, &msg);
            self.push(
                at,
                Ev::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                    mark,
                },
            );
        }
        let at = self.arrival(from, to);
        self.push(
            at,
            Ev::Deliver {
                from,
                to,
                msg,
                mark,
            },
        );
    }

    /// When a message sent now from `from` arrives at `to`. Links are FIFO (like
    /// a TCP connection) unless the reorder fault is active in the fault phase.
    fn arrival(&mut self, from: NodeId, to: NodeId) -> Instant {
        let mut at = self.now + self.latency(from, to);
        let reordering = !self.quiet && self.rates.reorder > 0.0;
        let link = from as usize * self.slots.len() + to as usize;
        if !reordering {
            at = at.max(self.link_last[link]);
        }
        self.link_last[link] = self.link_last[link].max(at);
        at
    }

    fn tracing(&self) -> bool {
        self.trace.is_some()
    }

    fn mark_sent(&mut self, from: NodeId, to: NodeId, msg: &N::Msg) -> usize {
        let now = self.now;
        match self.timeline.as_mut() {
            Some(t) => t.sent(from, to, now, label_of(&format!("{msg:?}"))),
            None => NO_MARK,
        }
    }

    fn mark_lost(&mut self, mark: usize, at: Instant) {
        if let Some(t) = self.timeline.as_mut() {
            t.lost(mark, at);
        }
    }

    /// Records what node `id` says of itself now, if it changed.
    fn note_state(&mut self, id: NodeId) {
        let Some(t) = self.timeline.as_mut() else {
            return;
        };
        if let Some(node) = self.slots[id as usize].node.as_ref() {
            t.state(id, self.now, node.describe());
        }
    }

    fn mark(&mut self, m: Mark) {
        if let Some(t) = self.timeline.as_mut() {
            t.push(m);
        }
    }
}

/// No timeline mark: the run records none.
const NO_MARK: usize = usize::MAX;

/// One simulated run of a cluster of `M::Node`s.
pub struct Simulation<M: Model> {
    model: M,
    core: Core<M::Node>,
    schedule: Schedule,
}

impl<M: Model> Simulation<M> {
    /// Sets up a run: the fault schedule is drawn from `seed` alone.
    pub fn new(cfg: SimConfig, seed: u64, model: M) -> Simulation<M> {
        let mut sched_rng = ChaCha8Rng::seed_from_u64(seed);
        sched_rng.set_stream(1);
        let schedule = Schedule::draw(
            &mut sched_rng,
            cfg.nodes,
            cfg.f,
            cfg.faults,
            cfg.fault_phase,
        );
        Self::with_schedule(cfg, seed, model, schedule)
    }

    /// Sets up a run with a hand-written fault schedule: for scenario tests that
    /// replay a story exactly (the seed still drives latencies and nodes' choices).
    pub fn with_schedule(
        cfg: SimConfig,
        seed: u64,
        mut model: M,
        schedule: Schedule,
    ) -> Simulation<M> {
        let stream = |s: u64| {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            r.set_stream(s);
            r
        };
        let mut node_seed_rng = stream(3);
        let mut disk_rng = stream(5);
        let slots = (0..cfg.nodes as NodeId)
            .map(|id| {
                let disk = <M::Node as Node>::Disk::default();
                let node = model.boot(id, &disk, node_seed_rng.gen());
                Slot {
                    node: Some(node),
                    incarnation: 0,
                    disk,
                    sync_time: if disk_rng.gen_bool(0.5) {
                        FAST_SYNC
                    } else {
                        SLOW_SYNC
                    },
                    syncing: None,
                    waiting: None,
                    lazy: Vec::new(),
                    down_for_good: false,
                    slow_extra: 0,
                    slow_generation: 0,
                    refuses_to_start: false,
                    tear_armed: None,
                }
            })
            .collect();
        let nodes = cfg.nodes;
        let core = Core {
            partition: vec![0; cfg.nodes],
            trace: cfg.trace.then(String::new),
            timeline: cfg.timeline.then(|| Timeline::new(cfg.nodes)),
            cfg,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            slots,
            net_rng: stream(2),
            node_seed_rng,
            fault_rng: stream(4),
            rates: schedule.rates.clone(),
            partition_id: 0,
            link_last: vec![0; nodes * nodes],
            quiet: false,
            quiet_at: 0,
            violations: Vec::new(),
            violation_count: 0,
            messages_sent: 0,
            deliveries: 0,
            scratch: Output::default(),
            message_size: None,
            bytes_sent: 0,
        };
        Simulation {
            model,
            core,
            schedule,
        }
    }

    /// Counts the bytes of every message sent, sized by `size` (for benchmarks:
    /// the simulator itself never serializes anything). Reported in
    /// [`RunReport::bytes_sent`].
    pub fn with_message_size(mut self, size: fn(&<M::Node as Node>::Msg) -> u64) -> Self {
        self.core.message_size = Some(size);
        self
    }

    /// Runs to the end and reports.
    pub fn run(self, seed: u64) -> RunReport {
        self.run_keep_model(seed).0
    }

    /// Runs to the end and hands back the model too, for tests that inspect it.
    pub fn run_keep_model(mut self, seed: u64) -> (RunReport, M) {
        self.start(seed);
        self.run_rest(seed)
    }

    /// Runs a started run to its end (as [`Simulation::run_keep_model`]
    /// does after [`Simulation::start`]), for a driver that stepped its
    /// beginning itself.
    pub fn run_rest(mut self, seed: u64) -> (RunReport, M) {
        let deadline = self.core.cfg.fault_phase + self.core.cfg.quiet_limit;
        let terminated = self.run_until(deadline, |m, ctl| ctl.in_quiet_phase() && m.done(ctl));
        if !terminated {
            self.core.now = self.core.now.max(deadline);
        }
        self.finish(seed, terminated)
    }

    /// Schedules the faults, the quiet phase and the first ticks, and lets
    /// the model schedule its clients. [`Simulation::run_keep_model`] does
    /// this; a driver that steps the run itself ([`Simulation::run_until`])
    /// calls it once first.
    pub fn start(&mut self, seed: u64) {
        let cfg = self.core.cfg.clone();
        if self.core.tracing() {
            let s = &self.schedule;
            let line = format!(
                "seed {seed}: {} nodes, f={}, faults={}, loss={:.3} dup={:.3} reorder={:.3} delay={:.3}, {} scheduled faults, down for good: {:?}",
                cfg.nodes,
                cfg.f,
                cfg.faults,
                s.rates.loss,
                s.rates.duplicate,
                s.rates.reorder,
                s.rates.delay,
                s.events.len(),
                s.permanently_down
            );
            self.core.trace_line(None, format_args!("{line}"));
        }
        for (at, f) in std::mem::take(&mut self.schedule.events) {
            self.core.push(at, Ev::Fault(f));
        }
        self.core.quiet_at = cfg.fault_phase;
        self.core.push(cfg.fault_phase, Ev::Quiet);
        for id in 0..cfg.nodes as NodeId {
            let first = self.core.net_rng.gen_range(0..cfg.tick);
            self.core.push(
                first,
                Ev::Tick {
                    node: id,
                    incarnation: 0,
                },
            );
        }
        self.model.on_start(&mut Ctl {
            core: &mut self.core,
        });
    }

    /// Handles events in time order until `stop` holds (checked after
    /// every event: true is returned) or the next event is later than
    /// `limit` (false; the clock then stands at the last event handled).
    pub fn run_until(
        &mut self,
        limit: Instant,
        mut stop: impl FnMut(&M, &Ctl<'_, M::Node>) -> bool,
    ) -> bool {
        if stop(
            &self.model,
            &Ctl {
                core: &mut self.core,
            },
        ) {
            return true;
        }
        while self.core.queue.peek().is_some_and(|q| q.at <= limit) {
            let q = self.core.queue.pop().expect("peeked");
            debug_assert!(q.at >= self.core.now, "time went backwards");
            self.core.now = q.at;
            self.handle(q.ev);
            if stop(
                &self.model,
                &Ctl {
                    core: &mut self.core,
                },
            ) {
                return true;
            }
        }
        false
    }

    /// Hands `input` to `node` now (dropped if the node is down), for a
    /// driver that steps the run itself.
    pub fn input(&mut self, node: NodeId, input: <M::Node as Node>::Input) {
        Ctl {
            core: &mut self.core,
        }
        .input(node, input, 0);
    }

    /// The simulated time.
    pub fn now(&self) -> Instant {
        self.core.now
    }

    /// Whether the run is in its quiet phase (no new faults, all healed).
    pub fn in_quiet_phase(&self) -> bool {
        self.core.quiet
    }

    /// Strikes with `fault` now, for a driver that steps the run itself and
    /// strikes when the run reaches a state rather than at a set time (the
    /// stories that need a fault between two particular messages).
    pub fn fault_now(&mut self, fault: NodeFault) {
        self.handle(Ev::Fault(fault));
    }

    /// Restarts `node` now, if it is down and not down for good (a driver's
    /// restart on cue; crash it with a distant `restart_after` first).
    pub fn restart_now(&mut self, node: NodeId) {
        self.restart(node);
    }

    /// Begins the quiet phase now (all healed, every node that is not down
    /// for good restarted, no new faults), for a driver whose story is told.
    pub fn quiet_now(&mut self) {
        if !self.core.quiet {
            // Clients time their last operations from here.
            self.core.quiet_at = self.core.now;
            self.quiet();
        }
    }

    /// Ends the partition in force now.
    pub fn heal_now(&mut self) {
        let partition = self.core.partition_id;
        self.handle(Ev::Heal { partition });
    }

    /// Loses every message `from` sent that has not arrived yet, as a power
    /// cut loses what still sat in the node's send buffers. Returns how many.
    pub fn lose_in_flight(&mut self, from: NodeId) -> usize {
        let (lost, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.core.queue)
            .into_vec()
            .into_iter()
            .partition(|q| matches!(q.ev, Ev::Deliver { from: f, .. } if f == from));
        self.core.queue = kept.into();
        let now = self.core.now;
        for q in &lost {
            if let Ev::Deliver { to, mark, .. } = q.ev {
                self.core
                    .trace_line(Some(from), format_args!("-> n{to} lost in the send buffer"));
                self.core.mark_lost(mark, now);
            }
        }
        lost.len()
    }

    /// The model, for a driver that steps the run itself.
    pub fn model(&self) -> &M {
        &self.model
    }

    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    /// Ends the run: the model's end-of-run checks, and the report.
    fn finish(mut self, seed: u64, terminated: bool) -> (RunReport, M) {
        let mut report = RunReport {
            seed,
            terminated,
            end_time: self.core.now,
            ..RunReport::default()
        };
        self.model.finish(
            &mut Ctl {
                core: &mut self.core,
            },
            terminated,
            &mut report,
        );
        if !terminated {
            self.core.trace_line(
                None,
                format_args!("STUCK: the liveness goal was not reached by the deadline"),
            );
        }
        report.violations.append(&mut self.core.violations);
        report.violation_count += self.core.violation_count;
        report.messages_sent = self.core.messages_sent;
        report.bytes_sent = self.core.bytes_sent;
        report.deliveries = self.core.deliveries;
        report.trace = self.core.trace.take();
        report.timeline = self.core.timeline.take().map(|mut t| {
            t.end = self.core.now;
            t
        });
        (report, self.model)
    }

    /// The violations recorded so far.
    pub fn violations(&self) -> &[Violation] {
        &self.core.violations
    }

    fn handle(&mut self, ev: Ev<M::Node>) {
        match ev {
            Ev::Deliver {
                from,
                to,
                msg,
                mark,
            } => {
                let core = &mut self.core;
                let now = core.now;
                if !core.connected(from, to) || core.slots[to as usize].node.is_none() {
                    core.mark_lost(mark, now);
                    return;
                }
                if let Some(t) = core.timeline.as_mut() {
                    t.arrived(mark, now);
                }
                core.deliveries += 1;
                if core.trace.is_some() {
                    let line = format!("<- n{from} {msg:?}");
                    core.trace_line(Some(to), format_args!("{line}"));
                }
                let node = core.slots[to as usize]
                    .node
                    .as_mut()
                    .expect("checked above");
                let mut out = std::mem::take(&mut core.scratch);
                node.step(core.now, from, msg, &mut out);
                core.note_state(to);
                self.after_step(to, out);
            }
            Ev::Tick {
                node: id,
                incarnation,
            } => {
                let core = &mut self.core;
                let slot = &mut core.slots[id as usize];
                if slot.incarnation != incarnation {
                    return;
                }
                let Some(node) = slot.node.as_mut() else {
                    return;
                };
                let mut out = std::mem::take(&mut core.scratch);
                node.tick(core.now, &mut out);
                core.note_state(id);
                let next = core.now + core.cfg.tick;
                core.push(
                    next,
                    Ev::Tick {
                        node: id,
                        incarnation,
                    },
                );
                self.after_step(id, out);
            }
            Ev::Input { node: id, input } => {
                let core = &mut self.core;
                if core.slots[id as usize].node.is_none() {
                    core.trace_line(
                        Some(id),
                        format_args!("input dropped (node down): {input:?}"),
                    );
                    return;
                }
                if core.trace.is_some() {
                    let line = format!("input {input:?}");
                    core.trace_line(Some(id), format_args!("{line}"));
                }
                let node = core.slots[id as usize]
                    .node
                    .as_mut()
                    .expect("checked above");
                let mut out = std::mem::take(&mut core.scratch);
                node.input(core.now, input, &mut out);
                core.note_state(id);
                self.after_step(id, out);
            }
            Ev::SyncDone { node, incarnation } => {
                if self.core.slots[node as usize].incarnation == incarnation {
                    self.complete_synced(node);
                }
            }
            Ev::Wake { token } => self.model.on_wake(
                &mut Ctl {
                    core: &mut self.core,
                },
                token,
            ),
            Ev::Fault(f) => {
                if !self.core.quiet {
                    self.fault(f);
                }
            }
            Ev::ArmedPowerLoss { node, incarnation } => {
                let slot = &mut self.core.slots[node as usize];
                if slot.incarnation == incarnation && slot.node.is_some() {
                    if let Some(restart_after) = slot.tear_armed.take() {
                        self.crash_then(node, true, true, restart_after);
                    }
                }
            }
            Ev::Restart { node } => {
                if !self.core.quiet {
                    self.restart(node);
                }
            }
            Ev::Heal { partition } => {
                if self.core.partition_id == partition {
                    self.heal();
                }
            }
            Ev::SlowEnd { node, generation } => {
                let slot = &mut self.core.slots[node as usize];
                if slot.slow_generation == generation {
                    slot.slow_extra = 0;
                    self.core
                        .trace_line(Some(node), format_args!("no longer slow"));
                }
            }
            Ev::Quiet => self.quiet_now(),
        }
    }

    /// Starts a step's output on its way to the disk, or, if a sync is in
    /// flight, adds it to the group that waits for that sync.
    fn after_step(&mut self, id: NodeId, mut out: NodeOutput<M::Node>) {
        let core = &mut self.core;
        if out.is_empty() {
            core.scratch = out;
            return;
        }
        let slot = &mut core.slots[id as usize];
        if slot.syncing.is_some() {
            if core.cfg.bugs.early_while_syncing && !out.writes.is_empty() {
                // The bug: early messages leave before the sync in flight
                // is done, so their commit index may count entries only
                // this node's unsynced writes hold.
                self.send_early(id, &mut out.msgs);
            }
            let core = &mut self.core;
            let slot = &mut core.slots[id as usize];
            match slot.waiting.as_mut() {
                Some(w) => w.append(&mut out),
                None => slot.waiting = Some(Batch::take(&mut out)),
            }
            core.scratch = out;
            return;
        }
        let batch = Batch::take(&mut out);
        core.scratch = out;
        self.start_sync(id, batch);
    }

    /// Writes a batch and starts its sync (none is in flight): messages
    /// marked early leave now, since every earlier output is durable (the
    /// condition `Envelope::early` carries); a batch with nothing to sync
    /// is done at once.
    fn start_sync(&mut self, id: NodeId, mut batch: Batch<M::Node>) {
        debug_assert!(self.core.slots[id as usize].syncing.is_none());
        if !batch.writes.is_empty() && self.core.slots[id as usize].node.is_some() {
            self.send_early(id, &mut batch.msgs);
            if batch.early_events > 0 {
                let early = batch.events.drain(..batch.early_events).collect();
                batch.early_events = 0;
                self.report(id, early);
            }
        }
        let core = &mut self.core;
        if !batch.writes.iter().any(<M::Node as Node>::must_sync) {
            self.complete(id, batch);
            return;
        }
        let sync_time = core.slots[id as usize].sync_time.clone();
        batch.done_at = core.now + core.net_rng.gen_range(sync_time);
        let strike =
            core.slots[id as usize].tear_armed.is_some() && self.model.worth_tearing(&batch.writes);
        let slot = &mut core.slots[id as usize];
        let incarnation = slot.incarnation;
        let done_at = batch.done_at;
        slot.syncing = Some(batch);
        core.push(
            done_at,
            Ev::SyncDone {
                node: id,
                incarnation,
            },
        );
        if strike {
            // The armed power loss strikes while this write is synced.
            let restart_after = core.slots[id as usize].tear_armed.take().flatten();
            self.crash_then(id, true, true, restart_after);
        }
    }

    /// The sync in flight is done: its batch is complete, and the group
    /// that waited for it starts.
    fn complete_synced(&mut self, id: NodeId) {
        let now = self.core.now;
        let slot = &mut self.core.slots[id as usize];
        let Some(batch) = slot.syncing.take_if(|b| b.done_at <= now) else {
            return;
        };
        self.complete(id, batch);
        let slot = &mut self.core.slots[id as usize];
        if slot.syncing.is_none() {
            if let Some(next) = slot.waiting.take() {
                self.start_sync(id, next);
            }
        }
    }

    /// Sends the messages of `msgs` marked early, and keeps the others.
    fn send_early(
        &mut self,
        id: NodeId,
        msgs: &mut Vec<synod_protocols::Envelope<<M::Node as Node>::Msg>>,
    ) {
        let (early, late): (Vec<_>, Vec<_>) =
            std::mem::take(msgs).into_iter().partition(|e| e.early);
        *msgs = late;
        for env in early {
            self.send_from(id, env);
        }
    }

    /// Sends a message of node `id`'s output, shown to the model first.
    fn send_from(&mut self, id: NodeId, env: synod_protocols::Envelope<<M::Node as Node>::Msg>) {
        self.model.on_send(
            &mut Ctl {
                core: &mut self.core,
            },
            id,
            &env.msg,
        );
        self.core.send(id, env.to, env.msg);
    }

    /// A batch of `id` is durable: apply, send, notify.
    fn complete(&mut self, id: NodeId, batch: Batch<M::Node>) {
        let slot = &mut self.core.slots[id as usize];
        if batch.writes.iter().any(<M::Node as Node>::must_sync) {
            // One sync makes everything written before durable too.
            for w in slot.lazy.drain(..).chain(batch.writes) {
                <M::Node as Node>::apply_write(&mut slot.disk, &w);
            }
        } else {
            slot.lazy.extend(batch.writes);
        }
        for env in batch.msgs {
            self.send_from(id, env);
        }
        self.report(id, batch.events);
    }

    /// Reports events of node `id` to the model, in order.
    fn report(&mut self, id: NodeId, events: Vec<<M::Node as Node>::Event>) {
        for e in events {
            if self.core.trace.is_some() {
                let line = format!("event {e:?}");
                self.core.trace_line(Some(id), format_args!("{line}"));
            }
            self.model.on_event(
                &mut Ctl {
                    core: &mut self.core,
                },
                id,
                e,
            );
        }
    }

    fn fault(&mut self, f: NodeFault) {
        match f {
            NodeFault::Crash {
                node,
                power_loss,
                torn,
                restart_after,
            } => {
                if self.core.slots[node as usize].node.is_none() {
                    if restart_after.is_none() {
                        self.core.slots[node as usize].down_for_good = true;
                    }
                    return;
                }
                let slot = &mut self.core.slots[node as usize];
                if power_loss && torn && slot.syncing.is_none() {
                    // Nothing is being written: wait for the next write (up
                    // to ARM_WINDOW) so that the power loss cuts one.
                    slot.tear_armed = Some(restart_after);
                    let incarnation = slot.incarnation;
                    let at = self.core.now + ARM_WINDOW;
                    self.core.push(at, Ev::ArmedPowerLoss { node, incarnation });
                    self.core.trace_line(
                        Some(node),
                        format_args!("POWER LOSS armed: during the next write"),
                    );
                    return;
                }
                self.crash_then(node, power_loss, torn, restart_after);
            }
            NodeFault::Partition { groups, heal_after } => {
                self.core.partition_id += 1;
                for (g, members) in groups.iter().enumerate() {
                    for &n in members {
                        self.core.partition[n as usize] = g as u32;
                    }
                }
                self.core
                    .trace_line(None, format_args!("PARTITION {groups:?}"));
                let from = self.core.now;
                // A new split replaces the one in force.
                if let Some(t) = self.core.timeline.as_mut() {
                    t.healed(from);
                }
                self.core.mark(Mark::Partition {
                    from,
                    until: None,
                    groups: groups.clone(),
                });
                let (at, id) = (self.core.now + heal_after, self.core.partition_id);
                self.core.push(at, Ev::Heal { partition: id });
            }
            NodeFault::Slow {
                node,
                extra,
                duration,
            } => {
                let slot = &mut self.core.slots[node as usize];
                slot.slow_generation += 1;
                slot.slow_extra = extra;
                let generation = slot.slow_generation;
                self.core
                    .trace_line(Some(node), format_args!("SLOW +{}ms", extra / MS));
                let at = self.core.now + duration;
                self.core.push(at, Ev::SlowEnd { node, generation });
            }
            NodeFault::Corrupt { node } => {
                let core = &mut self.core;
                let slot = &mut core.slots[node as usize];
                if self.model.corrupt(&mut slot.disk, &mut core.fault_rng) {
                    core.trace_line(
                        Some(node),
                        format_args!("DISK CORRUPTED (seen on next read)"),
                    );
                }
            }
        }
    }

    /// Crashes `node`, then restarts it after `restart_after` or keeps it
    /// down for good.
    fn crash_then(
        &mut self,
        node: NodeId,
        power_loss: bool,
        torn: bool,
        restart_after: Option<Instant>,
    ) {
        self.crash(node, power_loss, torn);
        match restart_after {
            Some(d) => {
                let at = self.core.now + d;
                self.core.push(at, Ev::Restart { node });
            }
            None => {
                self.core.slots[node as usize].down_for_good = true;
                self.core
                    .trace_line(Some(node), format_args!("stays down for good"));
            }
        }
    }

    fn crash(&mut self, id: NodeId, power_loss: bool, torn: bool) {
        let at = self.core.now;
        self.core.mark(Mark::Crash {
            node: id,
            at,
            power_loss,
        });
        if let Some(t) = self.core.timeline.as_mut() {
            t.forget_state(id);
        }
        let core = &mut self.core;
        let slot = &mut core.slots[id as usize];
        slot.node = None;
        slot.tear_armed = None;
        slot.incarnation += 1;
        let syncing = slot.syncing.take();
        // Never written: it was waiting in memory for the sync in flight.
        let waiting = slot.waiting.take().map_or(0, |b| b.writes.len());
        // Written in this order: the released unsynced writes, then the
        // batch being synced.
        let mut lazy = std::mem::take(&mut slot.lazy);
        let mut unsynced = waiting;
        if !power_loss {
            // The OS had the writes; a process crash does not lose them.
            for w in lazy
                .drain(..)
                .chain(syncing.into_iter().flat_map(|b| b.writes))
            {
                <M::Node as Node>::apply_write(&mut slot.disk, &w);
            }
        } else {
            if let Some(b) = syncing {
                lazy.extend(b.writes);
            }
            unsynced += lazy.len();
            if torn && !lazy.is_empty() {
                // The power went while they were on their way to the disk.
                self.model.tear(&mut slot.disk, &lazy, &mut core.fault_rng);
            }
        }
        let what = if power_loss { "POWER LOSS" } else { "CRASH" };
        core.trace_line(
            Some(id),
            format_args!("{what} ({unsynced} unsynced writes lost)"),
        );
        self.model.on_crash(
            &mut Ctl {
                core: &mut self.core,
            },
            id,
        );
    }

    fn restart(&mut self, id: NodeId) {
        let core = &mut self.core;
        let slot = &mut core.slots[id as usize];
        if slot.node.is_some() || slot.down_for_good || slot.refuses_to_start {
            return;
        }
        let seed = core.node_seed_rng.gen();
        slot.node = Some(self.model.boot(id, &slot.disk, seed));
        let incarnation = slot.incarnation;
        core.trace_line(Some(id), format_args!("RESTART from disk"));
        let now = core.now;
        core.mark(Mark::Restart { node: id, at: now });
        core.note_state(id);
        let at = core.now + core.net_rng.gen_range(0..core.cfg.tick);
        core.push(
            at,
            Ev::Tick {
                node: id,
                incarnation,
            },
        );
        self.model.on_restart(
            &mut Ctl {
                core: &mut self.core,
            },
            id,
        );
    }

    fn heal(&mut self) {
        self.core.partition.iter_mut().for_each(|g| *g = 0);
        self.core.trace_line(None, format_args!("HEAL partition"));
        let now = self.core.now;
        if let Some(t) = self.core.timeline.as_mut() {
            t.healed(now);
        }
    }

    fn quiet(&mut self) {
        let core = &mut self.core;
        core.quiet = true;
        core.rates = NetRates::default();
        core.partition_id += 1;
        core.partition.iter_mut().for_each(|g| *g = 0);
        for s in core.slots.iter_mut() {
            s.slow_extra = 0;
            s.slow_generation += 1;
            // No new faults: an armed power loss that has not struck is off.
            s.tear_armed = None;
        }
        core.trace_line(
            None,
            format_args!("QUIET PHASE: network healed, no new faults"),
        );
        for id in 0..core.slots.len() as NodeId {
            // restart() leaves nodes that are down for good where they are.
            self.restart(id);
        }
        self.model.on_quiet(&mut Ctl {
            core: &mut self.core,
        });
    }
}

/// Marks a node as having found its disk corrupt: it crashes and never restarts.
impl<'a, N: Node> Ctl<'a, N> {
    pub fn refuse_to_start(&mut self, node: NodeId) {
        self.core.slots[node as usize].refuses_to_start = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{FaultSet, NodeFault, Schedule};

    /// Node 0 persists every input and tells node 1 about it; node 1 reports what
    /// it hears. Just enough protocol to test the simulator's disk and network.
    /// Records from [`LAZY`] up need no sync.
    #[derive(Debug)]
    struct Toy;

    impl Node for Toy {
        type Msg = u64;
        type Write = u64;
        type Disk = Vec<u64>;
        type Event = u64;
        type Input = u64;
        fn apply_write(disk: &mut Vec<u64>, w: &u64) {
            disk.push(*w);
        }
        fn must_sync(w: &u64) -> bool {
            *w < LAZY
        }
        fn step(&mut self, _now: Instant, _from: NodeId, msg: u64, out: &mut NodeOutput<Self>) {
            out.emit(msg);
        }
        fn tick(&mut self, _now: Instant, _out: &mut NodeOutput<Self>) {}
        fn input(&mut self, _now: Instant, x: u64, out: &mut NodeOutput<Self>) {
            out.persist(x);
            out.send(1, x);
        }
    }

    const LAZY: u64 = 100;

    #[derive(Default)]
    struct ToyModel {
        inputs: u64,
        /// Inputs at chosen times, after the `inputs` ones.
        timed: Vec<(u64, Instant)>,
        heard: Vec<u64>,
        disk0_at_end: Vec<u64>,
    }

    impl Model for ToyModel {
        type Node = Toy;
        fn boot(&mut self, _id: NodeId, _disk: &Vec<u64>, _seed: u64) -> Toy {
            Toy
        }
        fn on_start(&mut self, ctl: &mut Ctl<'_, Toy>) {
            for x in 0..self.inputs {
                ctl.input(0, x, x * 10);
            }
            for &(x, at) in &self.timed {
                ctl.input(0, x, at);
            }
        }
        fn on_event(&mut self, ctl: &mut Ctl<'_, Toy>, node: NodeId, x: u64) {
            assert_eq!(node, 1);
            // Persist-then-send: the sender's write is durable before the message leaves.
            if x < LAZY && !ctl.disk(0).contains(&x) {
                ctl.violation(
                    "persist_before_send",
                    Some(0),
                    format!("{x} heard before it was durable"),
                );
            }
            self.heard.push(x);
        }
        fn done(&self, _ctl: &Ctl<'_, Toy>) -> bool {
            true
        }
        fn finish(&mut self, ctl: &mut Ctl<'_, Toy>, _terminated: bool, _report: &mut RunReport) {
            self.disk0_at_end = ctl.disk(0).clone();
        }
    }

    fn run(schedule: Schedule, inputs: u64) -> (RunReport, Vec<u64>, Vec<u64>) {
        run_timed(schedule, inputs, Vec::new())
    }

    fn run_timed(
        schedule: Schedule,
        inputs: u64,
        timed: Vec<(u64, Instant)>,
    ) -> (RunReport, Vec<u64>, Vec<u64>) {
        let mut cfg = SimConfig::new(2, FaultSet::NONE);
        cfg.fault_phase = 100 * MS;
        let sim = Simulation::with_schedule(
            cfg,
            7,
            ToyModel {
                inputs,
                timed,
                ..ToyModel::default()
            },
            schedule,
        );
        let (report, model) = sim.run_keep_model(7);
        (report, model.heard, model.disk0_at_end)
    }

    fn crash_at(at: Instant, power_loss: bool) -> Schedule {
        Schedule {
            events: vec![(
                at,
                NodeFault::Crash {
                    node: 0,
                    power_loss,
                    torn: false,
                    restart_after: None,
                },
            )],
            ..Schedule::default()
        }
    }

    #[test]
    fn messages_leave_only_after_their_writes_are_durable() {
        let (r, heard, disk) = run(Schedule::default(), 5);
        assert_eq!(r.violation_count, 0, "{:?}", r.violations);
        assert_eq!(
            heard,
            vec![0, 1, 2, 3, 4],
            "in order, none lost on a quiet network"
        );
        assert_eq!(disk, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_process_crash_keeps_written_data_but_not_unsent_messages() {
        // The first sync takes at least 100 µs; the crash comes at 50 µs.
        let (r, heard, disk) = run(crash_at(50, false), 1);
        assert_eq!(r.violation_count, 0);
        assert!(
            heard.is_empty(),
            "the message waited for a sync that never finished"
        );
        assert_eq!(disk, vec![0], "the OS had the write");
    }

    #[test]
    fn a_power_loss_drops_unsynced_writes() {
        let (r, heard, disk) = run(crash_at(50, true), 1);
        assert_eq!(r.violation_count, 0);
        assert!(heard.is_empty());
        assert!(disk.is_empty(), "unsynced data is gone after a power loss");
    }

    #[test]
    fn a_write_that_needs_no_sync_is_released_at_once_and_a_power_loss_drops_it() {
        let (r, heard, disk) = run_timed(crash_at(50, true), 0, vec![(LAZY, 0)]);
        assert_eq!(r.violation_count, 0);
        assert_eq!(heard, vec![LAZY], "nothing to wait for");
        assert!(disk.is_empty(), "it was only in the page cache");
        let (_, _, disk) = run_timed(crash_at(50, false), 0, vec![(LAZY, 0)]);
        assert_eq!(disk, vec![LAZY], "a process crash keeps it");
    }

    #[test]
    fn a_sync_makes_the_unsynced_writes_before_it_durable() {
        let timed = vec![(LAZY, 0), (1, 10)];
        let (r, heard, disk) = run_timed(Schedule::default(), 0, timed.clone());
        assert_eq!(r.violation_count, 0, "{:?}", r.violations);
        assert_eq!(heard, vec![LAZY, 1]);
        assert_eq!(disk, vec![LAZY, 1], "in the order written");
        // The power goes while the second write is synced: both are lost.
        let (_, heard, disk) = run_timed(crash_at(50, true), 0, timed);
        assert_eq!(heard, vec![LAZY]);
        assert!(disk.is_empty());
    }
}
