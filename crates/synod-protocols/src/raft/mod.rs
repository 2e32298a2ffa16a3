//! Raft as a sans-IO state machine, and a replicated key-value node built on it.
//!
//! [`RaftNode`] is the consensus core: elections (with pre-vote and
//! check-quorum), log replication with batching and pipelining, commitment,
//! ReadIndex and lease reads, snapshots, one-at-a-time membership changes and
//! leadership transfer. It replicates [`Payload`]s it never looks into, and
//! snapshots are payloads too, so any application can sit on top: it proposes
//! encoded commands, applies what [`RaftNode::next_committed`] hands it, and
//! encodes its state when asked to compact. [`KvNode`] is such an application
//! (a [`crate::kv::KvStore`] with client sessions) and implements
//! [`Node`](crate::sansio::Node) for the simulator.
//!
//! # Ordering contract (what the driver's persist-then-send buys us)
//!
//! Every call returns one [`Output`](crate::sansio::Output). As
//! [`crate::sansio`] requires, the driver makes all of its `writes` durable, in
//! order, before it sends any of its `msgs` or reports any of its `events`, and
//! handles outputs strictly in the order they were produced. This node relies on
//! that in the following ways:
//!
//! * **Votes.** A vote (and any term change) is recorded by a
//!   [`Write::HardState`] placed in the same output as the vote reply, *before*
//!   any entries of the new term; so no candidate can hear of a vote that a
//!   power cut could take back, and a node never forgets it voted in a term.
//! * **Entries.** A follower acknowledges an `Append` in the output that also
//!   holds the [`Write::Entries`] record; the ack (its match index) therefore
//!   never describes entries that are not durable.
//! * **The leader's own entries.** The leader counts its own entries as
//!   replicated (its match index) the moment it *emits* their write, not when
//!   the write is synced. That is safe because nothing observable depends on the
//!   commit it computes before those writes are durable: the `Append` messages
//!   and heartbeats that carry the new commit index, the client responses and
//!   the `Applied` events are all in this output or a later one, and so are
//!   released only after the leader's entries are on disk. If the leader loses
//!   power first, the "commit" existed only in volatile memory that died with it,
//!   and no one else ever learned of it.
//! * **Commit index.** Hard state records with a new commit index are
//!   written after the entries they cover, so a recovered disk never holds a
//!   commit index beyond its own log. When only the commit index moved, the
//!   record is a [`Write::Commit`], which need not be synced before the
//!   output is released: a power cut may take it back, and the node restarts
//!   with an older commit index, which is safe because the entries it covers
//!   are durable on a majority and the leader tells it again. A leader's
//!   round that only commits therefore costs no fsync.
//! * **Applying.** Committed entries are applied to the store as soon as the
//!   node knows they are committed (even if its own copy is still being synced):
//!   every effect of applying — responses, `Applied` events, reads served from
//!   the store — is released after the output's writes are durable.
//! * **Reads.** A ReadIndex read is answered only when (1) the leader has
//!   committed an entry of its current term, (2) a quorum acknowledged a
//!   heartbeat round sent after the read arrived, and (3) the store has applied
//!   the commit index recorded when the read arrived. For a follower's read,
//!   the follower counts in (2) as one acknowledgement: it takes the answer
//!   only in the term it asked in (messages of an older term are dropped, and a
//!   newer term fails the request), so, like a voter that acknowledged the
//!   round, it had voted for no later leader when the read arrived. With two or
//!   three voters, the leader and that follower are a quorum, and the read
//!   needs no round at all. With
//!   [`RaftConfig::lease_reads`] step (2) is replaced by a lease: a quorum
//!   acknowledged a round sent less than `election_ticks - 2` leader ticks ago.
//!   Followers with check-quorum refuse (pre-)votes until `election_ticks` of
//!   *their* ticks have passed since they last heard from a leader, i.e. for
//!   more than `election_ticks - 1` tick periods after receiving the round.
//!   The lease is therefore safe as long as a follower's clock does not run
//!   faster than the leader's by more than a factor
//!   `(election_ticks - 1) / (election_ticks - 2)` (about 12% with the default
//!   of 10) — the bounded clock-drift assumption. A node that restarts refuses
//!   votes for one election timeout as well, since it forgot when it last heard
//!   from the leader; and a leader stops using its lease while it transfers
//!   leadership (the target's votes bypass the followers' leases).
//! * **Snapshots.** A snapshot is written ([`Write::Snapshot`]) in the output
//!   that discards the log prefix; an installed snapshot is durable before the
//!   follower acknowledges it.
//!
//! On restart, [`KvNode::new`] rebuilds the store from the disk's snapshot and
//! re-applies the durable log up to the durable commit index, silently (no
//! events): `Applied` events after a restart resume at `commit + 1`. A
//! follower that installs a snapshot skips the `Applied` events of the entries
//! it covers; applied indexes still only increase.
//!
//! # Design notes
//!
//! * **Time** is counted in ticks (one per [`Node::tick`](crate::sansio::Node::tick)
//!   call); the `now` argument is ignored. Election timeouts are drawn from a
//!   ChaCha8 generator seeded by the constructor's `seed`.
//! * **Replication.** Per follower the leader keeps a match index, an
//!   optimistic next index and a state: *probe* (one `Append` at a time until
//!   the logs are known to match), *replicate* (up to `max_inflight` pipelined
//!   `Append`s of up to `max_batch` entries) or *snapshot*. A follower that
//!   rejects an `Append` returns a [`RejectHint`]: the term of its conflicting
//!   entry and its first index in that term (or its last index if it is
//!   short), so the leader skips a whole term per round trip. Heartbeat
//!   replies restart probes and detect stalled pipelines (lost `Append`s).
//! * **Commitment** counts the voters' match indexes, the leader's own being
//!   its last index; only entries of the current term are committed by
//!   counting. Followers learn the commit index from `Append`s and from
//!   heartbeats (capped at what the leader knows they hold).
//! * **Membership.** Configurations are log entries carrying the whole new
//!   [`ConfState`]; a node uses the latest *committed* one (as etcd's raft
//!   does), so with one change at a time every node is in one of two adjacent
//!   configurations, whose majorities intersect. The leader proposes one
//!   change at a time, only after committing an entry of its term. A leader
//!   that removes itself takes no new proposals meanwhile, tells the followers
//!   once the removal commits, and then steps down (it still answers votes).
//!   Nodes that are not voters of their configuration never campaign;
//!   a node booted with `peers` that exclude it waits for a leader to bring it
//!   the log (or a snapshot) that names it. Learners are followers that are
//!   not voters: they replicate, but do not count in quorums.
//! * **Leadership transfer.** The leader stops accepting writes, brings the
//!   target up to date, and sends it `TimeoutNow`; the target campaigns at
//!   once, with a flag that lets voters ignore their leader lease. The leader
//!   abandons the transfer after an election timeout.

pub mod app;
mod kv_node;
mod log;
mod node;
mod progress;
#[cfg(test)]
mod tests;

pub use app::{AppOutput, Application, RaftApp};
pub use kv_node::KvNode;
pub use node::{RaftEvent, RaftNode, RaftOutput, Role};

use crate::sansio::NodeId;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Bytes Raft replicates for the application without looking into them: a
/// command in a log entry, or the application's state in a snapshot.
///
/// Shared, not copied, when cloned: a snapshot of a large state travels from
/// the application to the log, the disk and every follower's message as one
/// buffer (copying 45 MB three times stalled a member for a tenth of a second).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Payload(pub Bytes);

/// The encoding [`Payload::encode`] writes: the first byte of every payload,
/// so that a build that changes an application encoding can still read (or
/// refuse by name) what an older one replicated. 2: the store records its
/// members, and the service's raft ids are etcd member ids. 3: the store
/// holds etcd's auth store (users, roles, permissions), and client writes
/// may travel as `Command::As`.
pub const PAYLOAD_VERSION: u8 = 3;

/// Why a payload is not the value it should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PayloadError {
    /// Written by an encoding this build does not read.
    UnknownVersion(u8),
    /// Not a value of the expected type.
    Malformed(String),
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::UnknownVersion(v) => write!(
                f,
                "encoding version {v}, but this build reads version {PAYLOAD_VERSION}"
            ),
            PayloadError::Malformed(e) => write!(f, "does not decode: {e}"),
        }
    }
}

impl std::error::Error for PayloadError {}

impl Payload {
    /// An application value as a payload: [`PAYLOAD_VERSION`], then bincode.
    ///
    /// The buffer is sized first (a walk that writes nothing): a growing one
    /// is copied at every doubling, and a store image of tens of megabytes
    /// then faults in twice its size in fresh pages, which perf showed as a
    /// quarter of the members' CPU under load. It also keeps a put's command
    /// to one allocation.
    pub fn encode<T: Serialize>(value: &T) -> Payload {
        let size = bincode::serialized_size(value).expect("in-memory values serialize");
        let mut bytes = Vec::with_capacity(1 + size as usize);
        bytes.push(PAYLOAD_VERSION);
        bincode::serialize_into(&mut bytes, value).expect("in-memory values serialize");
        debug_assert_eq!(bytes.len(), bytes.capacity(), "serialized_size was exact");
        Payload(bytes.into())
    }

    /// Writes the bytes [`Payload::encode`] makes of `value` to `w`, without
    /// holding them: a snapshot of a large state goes straight to its file.
    pub fn encode_to<T: Serialize, W: std::io::Write>(value: &T, mut w: W) -> std::io::Result<()> {
        w.write_all(&[PAYLOAD_VERSION])?;
        bincode::serialize_into(w, value).map_err(|e| match *e {
            bincode::ErrorKind::Io(e) => e,
            other => std::io::Error::other(other.to_string()),
        })
    }

    /// The value `encode` made, or why these bytes are not one. Never panics,
    /// whatever the bytes: peers' payloads are checked with it before they
    /// reach the log.
    pub fn try_decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, PayloadError> {
        use bincode::Options;
        let (&version, body) = self
            .0
            .split_first()
            .ok_or_else(|| PayloadError::Malformed("empty".into()))?;
        if version != PAYLOAD_VERSION {
            return Err(PayloadError::UnknownVersion(version));
        }
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .with_limit(self.0.len() as u64)
            .deserialize(body)
            .map_err(|e| PayloadError::Malformed(e.to_string()))
    }

    /// The value `encode` made. Committed entries and snapshots hold only the
    /// application's own encodings (members check peers' payloads before
    /// accepting them); anything else means replicated state is damaged,
    /// which no replica may paper over, so this panics, naming `what`.
    pub fn decode<T: serde::de::DeserializeOwned>(&self, what: &str) -> T {
        self.try_decode()
            .unwrap_or_else(|e| panic!("{what} ({self:?}): {e}"))
    }
}

/// Traces show the size and the first bytes, not kilobytes of numbers.
impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} B", self.0.len())?;
        if !self.0.is_empty() {
            write!(f, ": ")?;
            for b in self.0.iter().take(12) {
                write!(f, "{b:02x}")?;
            }
            if self.0.len() > 12 {
                write!(f, "..")?;
            }
        }
        write!(f, ")")
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Payload;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Payload, E> {
                Ok(Payload(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload(v.into()))
            }
            // Self-describing formats without a bytes type (JSON) give a sequence.
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Payload, A::Error> {
                let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0));
                while let Some(b) = a.next_element()? {
                    v.push(b);
                }
                Ok(Payload(v.into()))
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

/// A membership change, proposed one at a time (see [`RaftNode::propose_conf`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConfChange {
    AddVoter(NodeId),
    AddLearner(NodeId),
    PromoteLearner(NodeId),
    RemoveNode(NodeId),
}

/// Static configuration of one Raft node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftConfig {
    pub id: NodeId,
    /// The initial voters (including `id` when this node is one of them). Used
    /// only when the disk holds no configuration yet. A node joining an existing
    /// cluster is booted with peers that do not include itself (or none): it
    /// stays idle until a leader contacts it.
    pub peers: Vec<NodeId>,
    /// A follower campaigns after a random timeout in
    /// `[election_ticks, 2 * election_ticks)` without hearing from a leader.
    pub election_ticks: u32,
    /// The leader sends heartbeats every `heartbeat_ticks`.
    pub heartbeat_ticks: u32,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Unacknowledged `Append` messages per follower in the pipeline. Small on
    /// purpose: entries proposed while the pipeline is full leave together in
    /// the next `Append` (up to `max_batch`), which is where batching comes
    /// from in a node that handles one proposal per call. In the simulator
    /// under load, 4 instead of 64 cut messages per entry by 3x and raised
    /// throughput by 30% (BENCHMARKS.md).
    pub max_inflight: usize,
    /// Entries per `Append` message.
    pub max_batch: usize,
    /// Serve reads from a leader lease instead of a heartbeat round (needs
    /// `check_quorum`; see the module docs for the clock-drift assumption).
    pub lease_reads: bool,
    /// Snapshot and compact after this many applied entries; 0 = never.
    pub snapshot_every: u64,
    /// Also wait until the commands applied since the last snapshot add up
    /// to this percentage of that snapshot's size (0: count entries only).
    /// A snapshot rewrites the whole state, so counting entries alone makes
    /// a large state with small writes rewrite itself over and over: at 100
    /// the disk writes at most about twice what the log holds, and a restart
    /// replays at most about a snapshot's worth of log.
    pub snapshot_log_percent: u64,
    /// Drop the commands of applied entries that every member holds, keeping
    /// only their index and term: the store already has their effect, and a
    /// log since the last snapshot otherwise costs as much memory as the
    /// state itself. A follower that later needs them after all (a member
    /// added since, one whose disk lost what it acknowledged) gets a
    /// snapshot, which the node asks its driver for
    /// ([`RaftNode::wants_snapshot`]); so only a driver that answers that
    /// may set it. [`RaftApp`] does.
    pub release_payloads: bool,
}

impl RaftConfig {
    pub fn new(id: NodeId, peers: Vec<NodeId>) -> Self {
        RaftConfig {
            id,
            peers,
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            max_inflight: 4,
            max_batch: 64,
            lease_reads: false,
            snapshot_every: 1000,
            snapshot_log_percent: 0,
            release_payloads: false,
        }
    }
}

/// Deliberately broken behaviours, so tests can show that checkers catch them.
/// Only installable with the `broken` feature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Grant votes without checking that the candidate's log is up to date.
    pub vote_without_log_check: bool,
    /// Commit any entry stored on a quorum, even one from an earlier term.
    pub commit_old_term_by_counting: bool,
    /// Send vote and append acknowledgements without persisting the hard state
    /// or the entries they acknowledge.
    pub reply_before_persist: bool,
    /// A follower answers a read at its own commit index instead of asking
    /// the leader for one.
    pub follower_reads_own_commit: bool,
    /// The leader answers a follower's read at once, whatever the cluster's
    /// size, as if the follower and the leader were always a quorum.
    pub asker_confirms_alone: bool,
    /// Write every hard state change as a [`Write::Commit`], so votes and
    /// terms leave without waiting for their sync.
    pub lazy_votes: bool,
    /// Drop the commands of every applied entry, whoever still lacks them,
    /// and send followers such entries (empty) instead of a snapshot.
    pub send_released: bool,
    /// A leader that is the only voter marks what it applies early too: it
    /// may answer a write that its own output has not made durable yet.
    pub sole_voter_events_early: bool,
}

/// A cluster configuration: who votes, who only replicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfState {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl ConfState {
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }
    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryData {
    /// Appended by every new leader, so it can commit an entry of its term.
    Empty,
    /// An application command.
    App(Payload),
    /// The complete configuration after a membership change. It takes effect
    /// when it is committed (one uncommitted change at a time).
    Config(ConfState),
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub data: EntryData,
}

impl Entry {
    /// A deterministic hash of the entry's data: FNV-1a's constants over
    /// 8-byte words, then the length. Checkers compare it between members
    /// of one run; every member computes it for every entry it applies, so
    /// it eats words, not bytes (eight times fewer dependent multiplies).
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            let mut words = bytes.chunks_exact(8);
            for w in &mut words {
                let w = u64::from_le_bytes(w.try_into().expect("eight bytes"));
                h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
            }
            for b in words.remainder() {
                h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
            h = (h ^ bytes.len() as u64).wrapping_mul(0x0000_0100_0000_01b3);
        };
        match &self.data {
            EntryData::Empty => eat(&[0]),
            EntryData::App(p) => {
                eat(&[1]);
                eat(&p.0);
            }
            EntryData::Config(c) => {
                eat(&[2]);
                eat(format!("{c:?}").as_bytes());
            }
        }
        h
    }
}

/// Describes the log prefix a snapshot replaces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last index the snapshot covers (0: no snapshot).
    pub index: u64,
    pub term: u64,
    /// The configuration as of `index`.
    pub conf: ConfState,
}

/// A snapshot: the application's state as of `meta.index`, encoded by the
/// application.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Payload,
}

/// The state that must survive a crash apart from the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: u64,
    pub vote: Option<NodeId>,
    pub commit: u64,
}

/// One durable record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    HardState(HardState),
    /// A hard state whose term and vote are already durable: only the commit
    /// index moved. It is written like [`Write::HardState`], but it need not
    /// be synced before the output's messages and events are released (etcd
    /// raft's `MustSync`): a commit index is knowledge that a majority already
    /// holds durably, so a node that loses it to a power cut restarts with an
    /// older one and learns the rest again. See [`Write::must_sync`].
    Commit(HardState),
    /// Entries with consecutive indices. If the first index is not beyond the
    /// last stored index, the stored suffix from there is replaced (etcd's WAL
    /// convention).
    Entries(Vec<Entry>),
    /// A new snapshot. Stored entries it covers are dropped; if the stored log
    /// disagrees with it at its index, the whole stored log is dropped.
    Snapshot(Snapshot),
}

impl Write {
    /// Whether the output holding this record may release its messages and
    /// events only once the record is durable. Every record but
    /// [`Write::Commit`] must be; a commit-only record rides along with the
    /// next sync, or is lost by a power cut.
    pub fn must_sync(&self) -> bool {
        !matches!(self, Write::Commit(_))
    }
}

/// The durable image of a node: the result of applying every synced [`Write`]
/// in order to `Disk::default()`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub hard: HardState,
    pub snapshot: Option<Snapshot>,
    /// The entries after the snapshot, with consecutive indices.
    pub entries: Vec<Entry>,
}

impl Disk {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.meta.index)
    }

    /// Folds one record into the image.
    pub fn apply(&mut self, write: &Write) {
        match write {
            Write::HardState(hs) | Write::Commit(hs) => self.hard = *hs,
            Write::Entries(es) => {
                let Some(first) = es.first() else { return };
                let offset = self.snapshot_index() + 1;
                let next = offset + self.entries.len() as u64;
                if first.index > next {
                    // A gap: only possible when an earlier write was withheld
                    // (the `reply_before_persist` bug). Nothing to attach to.
                    return;
                }
                let skip = offset.saturating_sub(first.index) as usize;
                if skip >= es.len() {
                    return;
                }
                let keep = (first.index.max(offset) - offset) as usize;
                self.entries.truncate(keep);
                self.entries.extend_from_slice(&es[skip..]);
            }
            Write::Snapshot(snap) => {
                let idx = snap.meta.index;
                let offset = self.snapshot_index() + 1;
                let matches = idx >= offset
                    && self
                        .entries
                        .get((idx - offset) as usize)
                        .is_some_and(|e| e.term == snap.meta.term);
                if matches {
                    self.entries.drain(..=(idx - offset) as usize);
                } else {
                    self.entries.clear();
                }
                self.snapshot = Some(snap.clone());
            }
        }
    }
}

/// The wire messages between Raft nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// "Would you vote for me in `term`?" The sender does not change its term.
    ///
    /// Vote requests and their answers also carry the sender's commit index
    /// and the term of its entry there: a node holding that entry learns
    /// that its log is committed that far, and with it which configuration
    /// is in force. Without it, when a leader dies before telling the others
    /// that a membership change committed, a learner it promoted never
    /// campaigns although its log is the longest, or the voters that remain
    /// after it removed itself still need its vote, which it refuses them
    /// because its log is longer: nobody can be elected (both found by the
    /// simulator).
    PreVote {
        term: u64,
        last_index: u64,
        last_term: u64,
        commit: u64,
        commit_term: u64,
    },
    /// `term` is the term asked about when granted, the voter's term otherwise.
    PreVoteResp {
        term: u64,
        granted: bool,
        commit: u64,
        commit_term: u64,
    },
    /// `transfer`: the candidate campaigns on its leader's request, so voters
    /// must not refuse it for having heard from that leader recently.
    Vote {
        term: u64,
        last_index: u64,
        last_term: u64,
        commit: u64,
        commit_term: u64,
        transfer: bool,
    },
    VoteResp {
        term: u64,
        granted: bool,
        commit: u64,
        commit_term: u64,
    },
    Append {
        term: u64,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
        /// Every member of the leader's configuration holds the leader's
        /// log up to here, durably (the lowest acknowledged index): entries
        /// no leader will send again, whose commands may be dropped.
        held: u64,
    },
    /// On success `index` is the follower's last index matching the leader. On
    /// rejection `index` is the rejected `prev_index` and `hint` says where the
    /// follower's log diverges.
    AppendResp {
        term: u64,
        success: bool,
        index: u64,
        hint: Option<RejectHint>,
    },
    /// `ctx` numbers the leader's heartbeat rounds (for reads).
    Heartbeat {
        term: u64,
        commit: u64,
        ctx: u64,
        /// As in `Append`: an idle leader's followers learn it here.
        held: u64,
    },
    HeartbeatResp {
        term: u64,
        ctx: u64,
    },
    InstallSnapshot {
        term: u64,
        snapshot: Box<Snapshot>,
    },
    /// "Campaign now": sent by a leader to the target of a leadership transfer.
    TimeoutNow {
        term: u64,
    },
    /// A follower asks its leader for a read index, for its read `id`: a
    /// linearizable read served by the follower itself once it has applied
    /// that far (the Raft dissertation, 6.4), instead of the read travelling
    /// to the leader and its answer back.
    ReadIndex {
        term: u64,
        id: u64,
    },
    /// The leader's commit index once it confirmed it still leads (after
    /// the request arrived); `None` if it cannot serve the read.
    ReadIndexResp {
        term: u64,
        id: u64,
        index: Option<u64>,
    },
}

impl Message {
    /// The sender's commit index and the term of its entry there, carried
    /// by vote requests and answers (see [`Message::PreVote`]).
    pub fn commit_mark(&self) -> Option<(u64, u64)> {
        match *self {
            Message::PreVote {
                commit,
                commit_term,
                ..
            }
            | Message::Vote {
                commit,
                commit_term,
                ..
            }
            | Message::PreVoteResp {
                commit,
                commit_term,
                ..
            }
            | Message::VoteResp {
                commit,
                commit_term,
                ..
            } => Some((commit, commit_term)),
            _ => None,
        }
    }

    /// Whether the message is one a correct node could have sent: the
    /// entries of an append consecutive from `prev_index + 1`, no term above
    /// the message's own, terms never decreasing. A message that fails comes
    /// from a broken or hostile peer, or from damaged bytes; the node drops
    /// it rather than let it break the log's invariants.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Message::PreVote {
                term, last_term, ..
            }
            | Message::Vote {
                term, last_term, ..
            } if last_term > term => Err(format!(
                "a vote request of term {term} claims a last term of {last_term}"
            )),
            Message::PreVote {
                last_index,
                last_term,
                commit,
                commit_term,
                ..
            }
            | Message::Vote {
                last_index,
                last_term,
                commit,
                commit_term,
                ..
            } if commit > last_index || commit_term > last_term => Err(format!(
                "a vote request claims commit index {commit} (term {commit_term}) beyond its last entry {last_index} (term {last_term})"
            )),
            Message::Append {
                term,
                prev_index,
                prev_term,
                entries,
                ..
            } => {
                if prev_term > term {
                    return Err(format!(
                        "an append of term {term} has a previous term of {prev_term}"
                    ));
                }
                let mut last = (*prev_index, *prev_term);
                for e in entries {
                    if e.index != last.0.saturating_add(1) || e.term < last.1 || e.term > *term {
                        return Err(format!(
                            "an append of term {term} has entry {} of term {} after entry {} of term {}",
                            e.index, e.term, last.0, last.1
                        ));
                    }
                    if matches!(&e.data, EntryData::App(p) if p.0.is_empty()) {
                        // What a released entry looks like: never sent.
                        return Err(format!("an append has entry {} without its command", e.index));
                    }
                    last = (e.index, e.term);
                }
                Ok(())
            }
            Message::InstallSnapshot { term, snapshot } if snapshot.meta.term > *term => {
                Err(format!(
                    "a snapshot of term {} sent in term {term}",
                    snapshot.meta.term
                ))
            }
            _ => Ok(()),
        }
    }

    pub fn term(&self) -> u64 {
        match self {
            Message::PreVote { term, .. }
            | Message::PreVoteResp { term, .. }
            | Message::Vote { term, .. }
            | Message::VoteResp { term, .. }
            | Message::Append { term, .. }
            | Message::AppendResp { term, .. }
            | Message::Heartbeat { term, .. }
            | Message::HeartbeatResp { term, .. }
            | Message::InstallSnapshot { term, .. }
            | Message::TimeoutNow { term }
            | Message::ReadIndex { term, .. }
            | Message::ReadIndexResp { term, .. } => *term,
        }
    }
}

/// Where a follower's log diverges from an `Append`'s `prev_index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectHint {
    /// The term of the follower's entry at `prev_index`; `None` if the follower's
    /// log is shorter than `prev_index`.
    pub term: Option<u64>,
    /// With a term: the follower's first index in that term. Without: the
    /// follower's last index.
    pub index: u64,
}
