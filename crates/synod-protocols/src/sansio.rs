//! The sans-IO boundary every protocol in this crate sits behind.
//!
//! A protocol node is a plain value. It never touches a socket, a file, a thread,
//! a clock or a global random number generator: time arrives as an argument, the
//! randomness it needs comes from a seed handed to its constructor, and everything
//! it wants done to the outside world is *returned* in an [`Output`].
//!
//! # The ordering contract (persist, then send, then notify)
//!
//! A driver (the simulator, or later the network service) that receives an
//! [`Output`] from one call must:
//!
//! 1. write every record in [`Output::writes`] to stable storage, in order, and
//!    make them durable (fsync) — records from consecutive outputs may share one
//!    sync (group commit), but their order must be kept;
//! 2. only then send the messages in [`Output::msgs`];
//! 3. only then report the [`Output::events`] (decisions, applied commands,
//!    client responses) to whoever is waiting for them.
//!
//! Outputs are handled strictly in the order they were produced. A message never
//! overtakes the sync of a write produced earlier by the same node, so a peer can
//! never learn of a promise, a vote or a log entry that a power cut could erase.
//!
//! Crashing between steps 1 and 2 is always allowed and the protocols are written
//! for it: whatever was written but not yet synced may or may not survive.
//!
//! One exception to step 2 is carried as data: a message marked
//! [`Envelope::early`] may leave while its own output's writes are still being
//! synced, provided every *earlier* output's writes are already durable (a
//! driver that syncs outputs one at a time always satisfies that, and so does
//! one that keeps one sync in flight, holds the outputs produced meanwhile, and
//! syncs them as one group once it is done, their early messages leaving as
//! that sync starts). Raft
//! leaders mark their appends and heartbeats so, replicating entries while
//! they write them (Ongaro's thesis, §10.2.1). The node decides when it
//! produces the message; the driver never has to ask.
//!
//! The same holds for step 3: the first [`Output::early_events`] events may be
//! reported while their output's writes are being synced, under the same
//! condition (every earlier output is durable, and so every earlier event was
//! reported). Raft nodes mark what they apply so: an entry counts as
//! committed once a quorum acknowledged it durable, and a leader's own copy
//! of it was written by an earlier output (a follower can only acknowledge
//! what an earlier output sent), so the answer need not wait for the sync of
//! the output that applies it. Only a leader that is a quorum alone commits
//! what its current output writes, and it marks nothing. Early events are
//! always a prefix of the output's events, so that none overtakes another.

use serde::{Deserialize, Serialize};

/// Identifies a node within a cluster. `u64` because that is what etcd's member
/// ids are, and the service will carry these ids on the wire.
pub type NodeId = u64;

/// Virtual or real time in microseconds since an arbitrary epoch chosen by the
/// driver. Protocols only compare and subtract instants; they never read a clock.
pub type Instant = u64;

/// Microseconds per millisecond, for readability at call sites.
pub const MS: Instant = 1_000;

/// A message addressed to one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<M> {
    pub to: NodeId,
    pub msg: M,
    /// May leave before the writes of the output it belongs to are durable
    /// (see the module docs for the condition).
    pub early: bool,
}

/// What one call into a node asks its driver to do. See the module docs for the
/// order in which a driver must carry it out.
#[derive(Clone, Debug)]
pub struct Output<W, M, E> {
    /// Records to make durable before any message below is sent.
    pub writes: Vec<W>,
    /// Messages to send once the writes are durable.
    pub msgs: Vec<Envelope<M>>,
    /// Observations for the application (and the simulator's checkers), released
    /// after the writes are durable.
    pub events: Vec<E>,
    /// How many of the first `events` may be released before the writes are
    /// durable (see the module docs for the condition). Set by
    /// [`Output::mark_early_events`] only, which keeps them a prefix.
    pub early_events: usize,
}

impl<W, M, E> Default for Output<W, M, E> {
    fn default() -> Self {
        Output {
            writes: Vec::new(),
            msgs: Vec::new(),
            events: Vec::new(),
            early_events: 0,
        }
    }
}

impl<W, M, E> Output<W, M, E> {
    pub fn persist(&mut self, w: W) {
        self.writes.push(w);
    }
    /// A message to send once this output's writes are durable.
    pub fn send(&mut self, to: NodeId, msg: M) {
        self.send_with(to, msg, false);
    }
    /// A message that may leave while this output's writes are being synced
    /// (see the module docs).
    pub fn send_early(&mut self, to: NodeId, msg: M) {
        self.send_with(to, msg, true);
    }
    /// A message, early or not (see [`Envelope::early`]).
    pub fn send_with(&mut self, to: NodeId, msg: M, early: bool) {
        self.msgs.push(Envelope { to, msg, early });
    }
    pub fn emit(&mut self, e: E) {
        self.events.push(e);
    }
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.msgs.is_empty() && self.events.is_empty()
    }
    pub fn clear(&mut self) {
        self.writes.clear();
        self.msgs.clear();
        self.events.clear();
        self.early_events = 0;
    }
    /// Marks the events from index `from` on as early (see the module docs),
    /// if every event before them is early too: one that is not stays a
    /// barrier for every event after it.
    pub fn mark_early_events(&mut self, from: usize) {
        debug_assert!(from <= self.events.len());
        if self.early_events == from {
            self.early_events = self.events.len();
        }
    }
    /// Takes the early events out (the events left are all to be released
    /// after the writes are durable).
    pub fn take_early_events(&mut self) -> std::vec::Drain<'_, E> {
        let n = std::mem::take(&mut self.early_events);
        debug_assert!(n <= self.events.len());
        self.events.drain(..n)
    }
    /// Moves `inner`'s writes and messages to the end of this output, in
    /// order, for a node that wraps another: the wrapper maps `inner`'s
    /// events into its own.
    pub fn take_writes_and_msgs<F>(&mut self, inner: &mut Output<W, M, F>) {
        self.writes.append(&mut inner.writes);
        self.msgs.append(&mut inner.msgs);
    }
}

/// A protocol node as the simulator (and any other driver) sees it.
///
/// The associated types keep each protocol's vocabulary its own: its wire
/// messages, its durable records, the durable image those records build up, the
/// events it reports and the client requests it accepts.
pub trait Node {
    /// Wire message exchanged between nodes.
    type Msg: Clone + std::fmt::Debug;
    /// One durable record (a promise, a vote, a batch of log entries, ...).
    type Write: Clone + std::fmt::Debug;
    /// Everything that survives a crash: the result of applying every synced
    /// [`Node::Write`] in order to `Default::default()`.
    type Disk: Clone + Default + std::fmt::Debug;
    /// Something the node wants its application to know (a decision, a response).
    type Event: Clone + std::fmt::Debug;
    /// A request from a local client (propose a value, run a command, ...).
    type Input: Clone + std::fmt::Debug;

    /// Folds one durable record into the durable image. Pure: the simulator uses it
    /// to maintain what a node would find on its disk after a restart.
    fn apply_write(disk: &mut Self::Disk, write: &Self::Write);

    /// Whether `write` must be durable before the output holding it is
    /// released. A record that need not be (a commit index that a majority
    /// already holds) is written behind the earlier ones and becomes durable
    /// with the next sync, or is lost by a power cut. By default every record
    /// must be synced.
    fn must_sync(_write: &Self::Write) -> bool {
        true
    }

    /// Handles a message from a peer.
    fn step(
        &mut self,
        now: Instant,
        from: NodeId,
        msg: Self::Msg,
        out: &mut Output<Self::Write, Self::Msg, Self::Event>,
    );

    /// Lets time pass: retransmissions, timeouts and elections happen here. The
    /// driver calls it periodically; `now` never goes backwards.
    fn tick(&mut self, now: Instant, out: &mut Output<Self::Write, Self::Msg, Self::Event>);

    /// Handles a client request.
    fn input(
        &mut self,
        now: Instant,
        input: Self::Input,
        out: &mut Output<Self::Write, Self::Msg, Self::Event>,
    );

    /// What a picture of a run writes on this node's lane when it changes:
    /// a few words of its state (a Raft role, term and commit index; the
    /// ballot promised and the value accepted or decided). A decision reads
    /// `decided VALUE`, which the picture colours by value. Empty: nothing.
    fn describe(&self) -> String {
        String::new()
    }
}

/// Shorthand for a node's output type.
pub type NodeOutput<N> = Output<<N as Node>::Write, <N as Node>::Msg, <N as Node>::Event>;
