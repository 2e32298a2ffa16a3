//! The application contract of the Raft core, implemented once.
//!
//! [`RaftNode`] replicates payloads; an application (the toy [`KvNode`],
//! the service's `synod_kv::replica::Replica`) turns them into state. Between
//! the two sits glue that must be exactly right, and that every application
//! used to write for itself. [`RaftApp`] is that glue; an application
//! implements [`Application`] and calls into the core only through
//! [`RaftApp::call`] (then [`RaftApp::settle`]) or [`RaftApp::step`] /
//! [`RaftApp::tick`].
//!
//! # The contract
//!
//! What the application feeds in, and what happens around each call:
//!
//! 1. **Every call into the core is one step.** [`RaftApp::call`] runs the
//!    closure under [`RaftNode::with_step`], so a changed term, vote or
//!    commit index is written ([`Write::HardState`]) in the same output and
//!    the core's invariants are asserted after it. Messages and peer input go
//!    through [`RaftNode::step`], ticks through [`RaftNode::tick`], which do
//!    the same.
//! 2. **The output is shared.** The core's writes and messages are appended
//!    to the caller's output in order; its events become the application's
//!    ([`Application::became_leader`]). The driver then persists the writes,
//!    sends the messages (those marked [`Envelope::early`] may go before the
//!    sync) and reports the events, as [`crate::sansio`] requires. What the
//!    application reports while settling is marked early
//!    ([`Output::early_events`]), unless the node leads as the only voter
//!    ([`RaftNode::take_applies_unsynced`]).
//! 3. **Before the driver gets the output back**, the application is brought
//!    up to date with the core ([`RaftApp::settle`]; `step` and `tick` do it
//!    themselves; an input handler makes its calls, records what it needs
//!    about them — the index a proposal got, say — and then settles once):
//!    1. a snapshot the node installed replaces the application's state
//!       ([`Application::restore`]);
//!    2. if the node stopped leading, the application drops every request it
//!       owed an answer as leader ([`Application::stepped_down`]);
//!    3. committed entries are applied, each exactly once and in index order
//!       ([`Application::apply`]);
//!    4. reads whose ReadIndex is confirmed are handed over
//!       ([`Application::read_ready`]), then the application serves those the
//!       applied index has reached ([`Application::serve_reads`]);
//!    5. if `snapshot_every` entries were applied since the last snapshot
//!       (and their commands add up to `snapshot_log_percent` of its size),
//!       the log is compacted with the application's encoded state
//!       ([`Application::snapshot`]); or the application hands an image of
//!       its state to the driver, which encodes it elsewhere and brings it
//!       back ([`Application::start_snapshot`], [`RaftApp::snapshot_encoded`]);
//!       meanwhile no other snapshot starts.
//! 4. **Boot** ([`RaftApp::new`]) restores the application from the disk's
//!    snapshot and re-applies the durable log up to the durable commit
//!    index, silently: the events of that replay are dropped, since they
//!    were reported before the crash.
//!
//! [`KvNode`]: super::KvNode
//! [`Envelope::early`]: crate::sansio::Envelope::early

use super::node::{RaftEvent, RaftNode, RaftOutput};
use super::{Disk, Entry, EntryData, Message, Payload, RaftConfig, Snapshot, Write};
use crate::sansio::Output;

/// The output type of an application with events `E`.
pub type AppOutput<E> = Output<Write, Message, E>;

/// What an application on the Raft core provides (see the module docs for
/// when each is called).
pub trait Application {
    /// What the application reports to its driver.
    type Event;

    /// Replaces the state with the one `snapshot` holds (at boot from the
    /// disk's snapshot, and when a follower installs one from its leader).
    fn restore(&mut self, snapshot: &Snapshot);

    /// Applies one committed entry (application data, a no-op or a
    /// configuration): every index once, in order.
    fn apply(&mut self, raft: &RaftNode, entry: &Entry, out: &mut AppOutput<Self::Event>);

    /// This node won the election for `term`.
    fn became_leader(&mut self, raft: &RaftNode, term: u64, out: &mut AppOutput<Self::Event>);

    /// This node stopped leading: answer every request it still owes as
    /// leader (the outcome of its writes is unknown).
    fn stepped_down(&mut self, out: &mut AppOutput<Self::Event>);

    /// The read `id` may be served once the applied index reaches `index`.
    fn read_ready(&mut self, id: u64, index: u64);

    /// The read `id` will get no index (the leader asked for it changed, or
    /// did not answer): answer it, so its client can ask again.
    fn read_failed(&mut self, id: u64, out: &mut AppOutput<Self::Event>) {
        let _ = (id, out);
    }

    /// Serves the reads the applied index has reached.
    fn serve_reads(&mut self, raft: &RaftNode, out: &mut AppOutput<Self::Event>);

    /// The state to snapshot, encoded; it reflects every applied entry.
    fn snapshot(&self) -> Payload;

    /// A snapshot is due at applied entry `index`. Returns the encoded state
    /// (by default [`Application::snapshot`]), or `None` after handing a
    /// frozen image of the state to the driver (as an event) to encode
    /// elsewhere and bring back through [`RaftApp::snapshot_encoded`]: a
    /// large state then costs its owner a copy, not an encoding.
    fn start_snapshot(&mut self, index: u64, out: &mut AppOutput<Self::Event>) -> Option<Payload> {
        let _ = (index, out);
        Some(self.snapshot())
    }
}

/// The Raft core with an application on top, glued by the contract above.
#[derive(Clone, Debug)]
pub struct RaftApp<A> {
    raft: RaftNode,
    /// Reused for every call into the core; merged into the caller's output.
    scratch: RaftOutput,
    app: A,
    /// The size of the last snapshot's state and of the commands applied
    /// since, for `RaftConfig::snapshot_log_percent`.
    snapshot_bytes: u64,
    applied_bytes: u64,
    /// The applied index of a snapshot being encoded by the driver.
    encoding: Option<u64>,
}

impl<A: Application> RaftApp<A> {
    /// Boots `app` on a core recovered from `disk` (see the module docs).
    pub fn new(mut cfg: RaftConfig, disk: &Disk, seed: u64, mut app: A) -> RaftApp<A> {
        // We take a snapshot whenever the core asks for one, which is what
        // releasing applied commands needs.
        cfg.release_payloads = true;
        if let Some(snap) = &disk.snapshot {
            app.restore(snap);
        }
        let mut node = RaftApp {
            raft: RaftNode::new(cfg, disk, seed),
            scratch: RaftOutput::default(),
            app,
            snapshot_bytes: disk.snapshot.as_ref().map_or(0, |s| s.data.0.len() as u64),
            applied_bytes: 0,
            encoding: None,
        };
        node.apply_committed(&mut Output::default());
        node
    }

    /// The Raft core.
    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    /// The application.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// The application, for its own bookkeeping. Anything that changes the
    /// core goes through [`RaftApp::call`].
    pub fn app_mut(&mut self) -> &mut A {
        &mut self.app
    }

    /// See [`RaftNode::share_snapshot_data`]: not a step (nothing the core
    /// decides changes, only where the snapshot's bytes live).
    pub fn share_snapshot_data(&mut self, index: u64, data: Payload) -> bool {
        self.raft.share_snapshot_data(index, data)
    }

    /// The core, for tests that install deliberate bugs.
    #[cfg(any(test, feature = "broken"))]
    pub(crate) fn raft_mut(&mut self) -> &mut RaftNode {
        &mut self.raft
    }

    /// Installs deliberate bugs in the core (tests of the checkers only).
    #[cfg(feature = "broken")]
    pub fn set_raft_bugs(&mut self, bugs: super::Bugs) {
        self.raft.bugs = bugs;
    }

    /// Runs `f` on the core as one step. The only way an application
    /// changes the core; settle before handing the output to the driver.
    pub fn call<R>(
        &mut self,
        out: &mut AppOutput<A::Event>,
        f: impl FnOnce(&mut RaftNode, &mut RaftOutput) -> R,
    ) -> R {
        self.core(out, |r, o| r.with_step(o, f))
    }

    /// Hands a peer's message to the core.
    pub fn step(&mut self, from: u64, msg: Message, out: &mut AppOutput<A::Event>) {
        self.core(out, |r, o| r.step(from, msg, o));
        self.settle(out);
    }

    /// Lets one tick pass.
    pub fn tick(&mut self, out: &mut AppOutput<A::Event>) {
        self.core(out, |r, o| r.tick(o));
        self.settle(out);
    }

    /// Runs `f` on the core and folds its output into `out`.
    fn core<R>(
        &mut self,
        out: &mut AppOutput<A::Event>,
        f: impl FnOnce(&mut RaftNode, &mut RaftOutput) -> R,
    ) -> R {
        let mut inner = std::mem::take(&mut self.scratch);
        let r = f(&mut self.raft, &mut inner);
        out.take_writes_and_msgs(&mut inner);
        for e in inner.events.drain(..) {
            let RaftEvent::BecameLeader { term } = e;
            self.app.became_leader(&self.raft, term, out);
        }
        self.scratch = inner;
        r
    }

    /// Brings the application up to date with the core (step 3 of the
    /// contract).
    pub fn settle(&mut self, out: &mut AppOutput<A::Event>) {
        let from = out.events.len();
        self.settle_app(out);
        // What was committed by a quorum's acknowledgments was written by
        // earlier outputs, which the driver has made durable by the time
        // early events leave; only a leader that is a quorum alone applies
        // writes of this very output.
        let unsynced = self.raft.take_applies_unsynced();
        if !unsynced || self.raft.bugs.sole_voter_events_early {
            out.mark_early_events(from);
        }
        // A snapshot's events (an image handed out to be encoded) wait for
        // the sync, and so does everything after them: the log is cut
        // behind an image once it comes back encoded, and that cut should
        // follow a durable state of this node, as it did before answers
        // went early. The simulator and the service both run this rule.
        self.maybe_snapshot(out);
    }

    fn settle_app(&mut self, out: &mut AppOutput<A::Event>) {
        if let Some(snap) = self.raft.take_installed() {
            self.app.restore(&snap);
            self.snapshot_bytes = snap.data.0.len() as u64;
            self.applied_bytes = 0;
        }
        if self.raft.take_stepped_down() {
            self.app.stepped_down(out);
        }
        self.apply_committed(out);
        for (id, index) in self.raft.take_ready_reads() {
            self.app.read_ready(id, index);
        }
        for id in self.raft.take_failed_reads() {
            self.app.read_failed(id, out);
        }
        self.app.serve_reads(&self.raft, out);
    }

    /// Takes a snapshot if one is due: encoded here, or handed out as an
    /// event to be encoded elsewhere.
    fn maybe_snapshot(&mut self, out: &mut AppOutput<A::Event>) {
        if self.encoding.is_none() && self.snapshot_due() {
            let index = self.raft.applied_index();
            self.applied_bytes = 0;
            match self.app.start_snapshot(index, out) {
                Some(data) => self.compact(index, data, out),
                None => self.encoding = Some(index),
            }
        }
    }

    /// The driver encoded the image of the state at applied entry `index`
    /// that [`Application::start_snapshot`] handed out: compact the log
    /// with it. Any image of this state machine at an index the node has
    /// applied is right, so one of an earlier life of the node is used too.
    pub fn snapshot_encoded(&mut self, index: u64, data: Payload, out: &mut AppOutput<A::Event>) {
        if self.encoding == Some(index) {
            self.encoding = None;
        }
        self.compact(index, data, out);
    }

    fn compact(&mut self, index: u64, data: Payload, out: &mut AppOutput<A::Event>) {
        self.snapshot_bytes = data.0.len() as u64;
        self.core(out, |r, o| {
            r.with_step(o, |r, o| r.compact_at(index, data, o))
        });
    }

    /// Whether enough was applied since the last snapshot to take another.
    fn snapshot_due(&self) -> bool {
        let cfg = self.raft.config();
        let every = cfg.snapshot_every;
        let counted = every > 0
            && self.raft.applied_index() >= self.raft.snapshot_index() + every
            && self.applied_bytes.saturating_mul(100)
                >= self.snapshot_bytes.saturating_mul(cfg.snapshot_log_percent);
        counted || self.raft.wants_snapshot()
    }

    fn apply_committed(&mut self, out: &mut AppOutput<A::Event>) {
        while let Some(e) = self.raft.next_committed() {
            if let EntryData::App(p) = &e.data {
                self.applied_bytes += p.0.len() as u64;
            }
            self.app.apply(&self.raft, &e, out);
        }
    }
}
