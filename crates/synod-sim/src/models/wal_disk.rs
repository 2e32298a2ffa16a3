//! Raft's durable state kept in synod's real write-ahead log
//! ([`synod_storage::DiskStorage`]) on the simulated disk ([`SimFs`]).
//!
//! [`WalBacked`] wraps a [`KvNode`] for the simulator. Its durable image is a
//! [`WalDisk`]: a `SimFs` holding one data directory, plus the
//! [`synod_raft_log::RaftLog`] the running process has open on it — the same
//! adapter, codec and recovery checks the service runs over the real file
//! system. Every [`Write`] the node asks for goes through it and is synced
//! when the simulator completes the write's sync.
//!
//! A restart runs the adapter's recovery on the disk, which turns what the WAL
//! recovered back into a [`Disk`] for [`KvNode::new`]. The node therefore boots
//! from exactly what the WAL code can read back, not from the simulator's own
//! bookkeeping. That bookkeeping is still kept (a shadow [`Disk`] with every
//! synced write applied) and every successful recovery is checked against it:
//! it must return the shadow exactly, or after a torn write the shadow plus a
//! prefix of that write. Anything else (or a write the WAL refuses) is reported
//! by [`WalDisk::storage_error`].
//!
//! Faults reach the storage code as follows:
//!
//! * **Torn write** ([`WalDisk::tear`]): the record is written to the file
//!   without a sync (a snapshot is written with the disk set to fail after a
//!   random number of operations), then the disk loses power: each unsynced
//!   sector independently persists or not. Recovery must cut the torn tail.
//! * **Corruption** ([`WalDisk::corrupt`]): one bit of a stored segment or
//!   snapshot file flips, anywhere, headers included, either on the platter
//!   or in every later read of it. The running process
//!   does not notice (it serves its log from memory, as the real service does);
//!   its next recovery must refuse the data directory. The node then boots
//!   [`WalBacked::Stopped`]: it ignores every message, tick and request, so it
//!   never serves or replicates anything from the damaged disk.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::Rng;
use synod_protocols::raft::{Disk, KvNode, Message, RaftNode, Write};
use synod_protocols::{Instant, Node, NodeId, Output};
use synod_raft_log::RaftLog;
use synod_storage::{
    Error as StorageError, Fs, Identity, RecoveryReport, SimFs, StorageOptions, WalOptions,
};

use crate::sim::Ctl;

/// Where each node's data directory lives on its simulated disk.
pub const DATA_DIR: &str = "/synod";
/// Cluster id written into every segment and snapshot header.
pub const CLUSTER_ID: u64 = 0x5359_4e4f_4453_494d;
/// Segment size: small, so that runs rotate segments and compact them away,
/// and so that a sync (which copies the file on `SimFs`) stays cheap.
pub const SEGMENT_SIZE: u64 = 8 << 10;

/// The storage options the simulation uses: small segments, no
/// preallocation (zero-filling would only cost memory on `SimFs`), and no
/// write buffer, so every record reaches the file when it is appended and a
/// power loss can tear it.
pub fn storage_options() -> StorageOptions {
    StorageOptions {
        wal: WalOptions {
            segment_size: SEGMENT_SIZE,
            preallocate: false,
            prealloc_chunk: 0,
            prepare_at: 0,
            write_buffer: 0,
        },
    }
}

pub(crate) fn identity(id: NodeId) -> Identity {
    Identity {
        cluster_id: CLUSTER_ID,
        node_id: id,
    }
}

/// What the running process has open on the disk.
#[derive(Default)]
struct Open {
    storage: Option<RaftLog<SimFs>>,
    /// The node the disk belongs to (known from its first boot).
    id: Option<NodeId>,
    /// What raft made durable, applied the simulator's way ([`Disk::apply`]):
    /// the next recovery must return exactly this.
    shadow: Disk,
    /// The writes a power loss cut since the last recovery: the recovery may
    /// also return the shadow plus a prefix of them.
    torn: Vec<Write>,
    /// The first storage failure that is not the disk's fault: a write the
    /// WAL refused, or a recovery that returned something other than what
    /// was made durable. The model reports it as a violation.
    error: Option<String>,
    /// Snapshots made durable: (taken by compacting the node's own log,
    /// received from a leader and installed).
    snapshots: (u64, u64),
    /// A snapshot of the node's own log whose file is written but not yet
    /// adopted by the log: as the service does (`DeferredSnapshot`), it is
    /// adopted with the next write, and until then the log is the durable
    /// truth (a power loss meanwhile recovers the previous snapshot).
    deferred: Option<Write>,
}

/// A node's disk: a [`SimFs`] with its data directory, and the storage
/// handle of the node's current incarnation (installed by
/// [`WalDisk::recover`], dropped when the power goes).
///
/// `Clone` makes an independent copy of the disk (the copy has no storage
/// open; it opens one when first written to).
#[derive(Default)]
pub struct WalDisk {
    fs: SimFs,
    open: Arc<Mutex<Open>>,
}

impl Clone for WalDisk {
    fn clone(&self) -> Self {
        let open = self.lock();
        WalDisk {
            fs: self.fs.fork(),
            open: Arc::new(Mutex::new(Open {
                storage: None,
                id: open.id,
                shadow: open.shadow.clone(),
                torn: open.torn.clone(),
                error: open.error.clone(),
                snapshots: open.snapshots,
                // An unadopted file is newer than the log's mark: the
                // copy's recovery removes it.
                deferred: None,
            })),
        }
    }
}

impl std::fmt::Debug for WalDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalDisk")
            .field("files", &self.fs.files())
            .field("open", &self.lock().storage.is_some())
            .finish()
    }
}

/// Writes one raft record through the shared adapter; syncs if `sync`.
fn write_to(log: &mut RaftLog<SimFs>, w: &Write, sync: bool) -> synod_storage::Result<()> {
    log.write(w)?;
    if sync {
        log.sync()?;
    }
    Ok(())
}

/// Whether `got` is what a recovery may return when `shadow` was durable and
/// the batch `torn` was cut by a power loss: the shadow with the batch's
/// first k writes whole and a prefix of the next one's entries (a hard state
/// or a snapshot is all or nothing), for some k.
fn recovered_ok(shadow: &Disk, torn: &[Write], got: &Disk) -> bool {
    let mut d = shadow.clone();
    if d == *got {
        return true;
    }
    for w in torn {
        if let Write::Entries(es) = w {
            for j in 1..es.len() {
                let mut partial = d.clone();
                partial.apply(&Write::Entries(es[..j].to_vec()));
                if partial == *got {
                    return true;
                }
            }
        }
        d.apply(w);
        if d == *got {
            return true;
        }
    }
    false
}

fn summary(d: &Disk) -> String {
    format!(
        "{:?}, snapshot at {:?}, entries {:?}",
        d.hard,
        d.snapshot.as_ref().map(|s| (s.meta.index, s.meta.term)),
        d.entries
            .first()
            .zip(d.entries.last())
            .map(|(a, b)| (a.index, b.index, b.term))
    )
}

impl Open {
    /// Adopts the snapshot whose file an earlier write left durable.
    fn adopt(&mut self, pending: Write) {
        let Write::Snapshot(snap) = &pending else {
            unreachable!("only snapshots are deferred")
        };
        let meta = synod_storage::SnapshotMeta {
            index: snap.meta.index,
            term: snap.meta.term,
        };
        let Some(st) = self.storage.as_mut() else {
            return;
        };
        match st.adopt(meta) {
            Ok(true) => self.shadow.apply(&pending),
            Ok(false) => {}
            Err(e) => {
                self.error.get_or_insert(format!(
                    "the WAL refused to adopt a snapshot: {e} ({pending:?})"
                ));
            }
        }
    }
}

impl WalDisk {
    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The simulated disk (a handle sharing its contents).
    pub fn fs(&self) -> &SimFs {
        &self.fs
    }

    fn dir() -> PathBuf {
        PathBuf::from(DATA_DIR)
    }

    /// Boots node `id`'s storage: runs recovery on the disk, keeps the
    /// storage open for the writes of this incarnation, and returns the
    /// recovered state as raft's durable image. An error means the disk
    /// cannot be trusted (corruption, a missing or damaged snapshot): the
    /// node must not start.
    ///
    /// Takes `&self` because the simulator hands boot a shared reference; the
    /// `SimFs` and the open handle are shared state.
    pub fn recover(&self, id: NodeId) -> synod_storage::Result<(Disk, RecoveryReport)> {
        let mut open = self.lock();
        open.storage = None;
        open.deferred = None;
        open.id = Some(id);
        let dir = Self::dir();
        let (st, disk, report) =
            RaftLog::open(self.fs.clone(), &dir, identity(id), storage_options())?;
        let torn = std::mem::take(&mut open.torn);
        if !recovered_ok(&open.shadow, &torn, &disk) {
            let msg = format!(
                "recovery returned {}, but {} was made durable{}",
                summary(&disk),
                summary(&open.shadow),
                if !torn.is_empty() {
                    " (before a torn write)"
                } else {
                    ""
                }
            );
            open.error.get_or_insert(msg);
        }
        open.shadow = disk.clone();
        open.storage = Some(st);
        Ok((disk, report))
    }

    /// Deletes the data directory's files (durably). Only the deliberately
    /// broken recovery of the tests does this: a node that answers
    /// corruption by starting over with an empty disk.
    pub fn wipe(&self) {
        {
            let mut open = self.lock();
            open.storage = None;
            open.deferred = None;
            open.shadow = Disk::default();
            open.torn.clear();
        }
        wipe_files(&self.fs);
    }

    /// Whether the entry of `term` at `index` is durable here: held by the
    /// durable log, or covered by the durable snapshot.
    pub fn durably_holds(&self, index: u64, term: u64) -> bool {
        let open = self.lock();
        let shadow = &open.shadow;
        if let Some(s) = &shadow.snapshot {
            if s.meta.index > index || (s.meta.index, s.meta.term) == (index, term) {
                return true;
            }
        }
        let first = shadow.entries.first().map_or(u64::MAX, |e| e.index);
        index
            .checked_sub(first)
            .and_then(|i| shadow.entries.get(i as usize))
            .is_some_and(|e| (e.index, e.term) == (index, term))
    }

    /// Applies one synced write (the simulator's [`Node::apply_write`]).
    pub fn apply(&mut self, w: &Write) {
        let fs = self.fs.clone();
        let mut open = self.lock();
        if let Write::Snapshot(snap) = w {
            // A node compacts only entries it holds; a snapshot beyond its
            // log, or disagreeing with it, came from a leader.
            let held = open
                .shadow
                .entries
                .iter()
                .any(|e| (e.index, e.term) == (snap.meta.index, snap.meta.term));
            if held {
                open.snapshots.0 += 1;
            } else {
                open.snapshots.1 += 1;
            }
        }
        if open.storage.is_none() {
            // A copy made by `clone`: open it (never the case in a run).
            let Some(id) = open.id else {
                open.error
                    .get_or_insert("a write reached a disk that was never booted".into());
                return;
            };
            match RaftLog::open(fs, &Self::dir(), identity(id), storage_options()) {
                Ok((st, _, _)) => open.storage = Some(st),
                Err(e) => {
                    open.error.get_or_insert(e.to_string());
                    return;
                }
            }
        }
        if let Some(pending) = open.deferred.take() {
            open.adopt(pending);
        }
        let st = open.storage.as_mut().expect("opened above");
        let written = match st.write_deferring(w) {
            Ok(Some(d)) => match Self::write_deferred(st, d, w) {
                Ok(_) => {
                    open.deferred = Some(w.clone());
                    return;
                }
                Err(e) => Err(e),
            },
            Ok(None) => st.sync(),
            Err(e) => Err(e),
        };
        open.shadow.apply(w);
        if let Err(e) = written {
            open.error
                .get_or_insert(format!("the WAL refused a write: {e} ({w:?})"));
        }
    }

    /// Writes the file of a snapshot of the node's own log the way the
    /// service may: streamed as its data is produced and then installed
    /// (`SnapshotStream`, what a member does), or written from the data
    /// whole (`DeferredSnapshot::write`, a member's fallback); every other
    /// snapshot each way, so that faults reach both.
    fn write_deferred(
        st: &RaftLog<SimFs>,
        d: synod_raft_log::DeferredSnapshot<SimFs>,
        w: &Write,
    ) -> synod_storage::Result<synod_storage::SnapshotMeta> {
        let Write::Snapshot(snap) = w else {
            unreachable!("only snapshots are deferred")
        };
        if snap.meta.index % 2 == 1 {
            return d.write();
        }
        let data = &snap.data.0;
        // Streamed as a member does (its length learnt at the end), or
        // with the length announced, every other time each.
        let stream = if snap.meta.index % 4 == 0 {
            synod_raft_log::SnapshotStream::start_unsized(&st.snap_store(), snap.meta.clone())?
        } else {
            let len = data.len() as u64;
            synod_raft_log::SnapshotStream::start(&st.snap_store(), snap.meta.clone(), len)?
        };
        let streamed = stream.write_with(|s| std::io::Write::write_all(s, data))?;
        d.write_streamed(streamed)
    }

    /// Snapshots made durable on this disk: (taken by the node compacting its
    /// own log, installed from a leader).
    pub fn snapshots(&self) -> (u64, u64) {
        self.lock().snapshots
    }

    /// The first storage failure that is not the disk's fault (see the
    /// module docs), if any.
    pub fn storage_error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    /// Power loss in the middle of syncing `writes`: their bytes reach the
    /// files without a sync (a snapshot is saved with the disk failing after
    /// `budget` operations, which also fails every write after it), then the
    /// power goes (`seed` picks which unsynced sectors survive). The open
    /// storage dies with the process.
    pub fn tear(&mut self, writes: &[Write], seed: u64, budget: u64) {
        let mut open = self.lock();
        open.torn = writes.to_vec();
        if let Some(st) = open.storage.as_mut() {
            for w in writes {
                if matches!(w, Write::Snapshot(_)) {
                    self.fs.crash_after(Some(budget));
                    // One of the node's own log is written as a member
                    // writes it (streamed or whole, then adopted), so that
                    // the cut may fall inside either way of writing it.
                    if let Ok(Some(d)) = st.write_deferring(w) {
                        let _ = Self::write_deferred(st, d, w).and_then(|m| st.adopt(m));
                    }
                    continue;
                }
                let _ = write_to(st, w, false);
            }
        }
        open.storage = None;
        open.deferred = None;
        // Also lifts the crash budget.
        self.fs.power_loss(seed);
    }

    /// Flips one random bit of one stored segment or snapshot file (see
    /// [`flip_a_bit`]).
    pub fn corrupt(&mut self, rng: &mut impl Rng) -> Option<(PathBuf, u64)> {
        flip_a_bit(&self.fs, rng)
    }
}

/// Flips one random bit of one stored segment or snapshot file on `fs`,
/// either in the stored bytes or in what every later read returns. Returns
/// the file and offset, or `None` if there is nothing to damage.
pub fn flip_a_bit(fs: &SimFs, rng: &mut impl Rng) -> Option<(PathBuf, u64)> {
    let files: Vec<PathBuf> = fs
        .files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "wal" || x == "snap"))
        .collect();
    if files.is_empty() {
        return None;
    }
    let path = files[rng.gen_range(0..files.len())].clone();
    let len = fs.read(&path).ok()?.len() as u64;
    if len == 0 {
        return None;
    }
    let offset = rng.gen_range(0..len);
    let bit = rng.gen_range(0..8u8);
    if rng.gen_bool(0.5) {
        // The stored byte is damaged.
        fs.flip_bit(&path, offset, bit).then_some((path, offset))
    } else {
        // The stored byte is fine but every read returns it damaged (a bad
        // cable or controller): recovery cannot tell the difference.
        fs.flip_on_read(&path, offset, 1 << bit);
        Some((path, offset))
    }
}

/// Deletes every file on `fs` (durably) and lifts read faults: a node
/// that starts over with an empty disk.
pub fn wipe_files(fs: &SimFs) {
    fs.clear_read_faults();
    let mut dirs = Vec::new();
    for path in fs.files() {
        let _ = fs.remove_file(&path);
        if let Some(d) = path.parent() {
            dirs.push(d.to_path_buf());
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        let _ = fs.sync_dir(&d);
    }
}

/// A simulated disk that keeps a node's records with the service's own
/// adapter: [`WalDisk`] (Raft's log) or
/// [`PaxosDisk`](crate::models::paxos_disk::PaxosDisk) (the Multi-Paxos
/// journal).
pub trait SimDisk: Clone + Default + std::fmt::Debug {
    /// The engine's durable image, as recovery returns it.
    type Image;
    type Write;
    /// Runs the adapter's recovery for node `id`; an error means the node
    /// must not start.
    fn recover(&self, id: NodeId) -> Result<(Self::Image, RecoveryReport), StorageError>;
    /// Writes and syncs one record (the simulator's [`Node::apply_write`]).
    fn apply(&mut self, w: &Self::Write);
    /// Deletes the data directory's files (the broken recovery of the
    /// tests: a node that answers corruption by starting over).
    fn wipe(&self);
}

impl SimDisk for WalDisk {
    type Image = Disk;
    type Write = Write;

    fn recover(&self, id: NodeId) -> Result<(Disk, RecoveryReport), StorageError> {
        WalDisk::recover(self, id)
    }

    fn apply(&mut self, w: &Write) {
        WalDisk::apply(self, w);
    }

    fn wipe(&self) {
        WalDisk::wipe(self);
    }
}

/// A node whose durable image a [`SimDisk`] keeps.
pub trait Durable: Node {
    type OnDisk: SimDisk<Image = Self::Disk, Write = Self::Write>;
}

impl Durable for KvNode {
    type OnDisk = WalDisk;
}

impl Durable for synod_kv::replica::Replica {
    type OnDisk = WalDisk;
}

/// A node built on the Raft core whose durable image is a Raft [`Disk`]: the
/// toy [`KvNode`] and the service's `synod_kv::replica::Replica` alike, so
/// both run on the WAL over the simulated disk and under the same checkers.
pub trait OnRaft:
    Durable<OnDisk = WalDisk> + Node<Msg = Message, Write = Write, Disk = Disk>
{
    /// The node's Raft core, for the checkers.
    fn raft(&self) -> &RaftNode;
}

impl OnRaft for KvNode {
    fn raft(&self) -> &RaftNode {
        KvNode::raft(self)
    }
}

impl OnRaft for synod_kv::replica::Replica {
    fn raft(&self) -> &RaftNode {
        synod_kv::replica::Replica::raft(self)
    }
}

/// A node whose durable state lives in the WAL on a [`WalDisk`], or a node
/// that found its disk damaged and stopped.
#[derive(Debug)]
pub enum WalBacked<N = KvNode> {
    /// Recovered and running.
    Running(Box<N>),
    /// Recovery refused the disk: does nothing, ever.
    Stopped {
        /// The storage error.
        reason: String,
    },
}

impl WalBacked<KvNode> {
    /// The key-value node, unless stopped.
    pub fn kv(&self) -> Option<&KvNode> {
        self.inner()
    }
}

impl<N> WalBacked<N> {
    /// The node, unless stopped.
    pub fn inner(&self) -> Option<&N> {
        match self {
            WalBacked::Running(n) => Some(n),
            WalBacked::Stopped { .. } => None,
        }
    }

    /// Whether the node stopped on a damaged disk.
    pub fn is_stopped(&self) -> bool {
        matches!(self, WalBacked::Stopped { .. })
    }
}

impl<N: OnRaft> WalBacked<N> {
    /// The Raft core, unless stopped.
    pub fn raft(&self) -> Option<&RaftNode> {
        self.inner().map(OnRaft::raft)
    }
}

impl<N: Durable> WalBacked<N> {
    /// After node `node` restarted: one whose disk failed recovery stays
    /// down (the run stops counting on it).
    pub(crate) fn keep_stopped_down(ctl: &mut Ctl<'_, WalBacked<N>>, node: NodeId) {
        if let Some(WalBacked::Stopped { reason }) = ctl.node(node) {
            if ctl.tracing() {
                let reason = reason.clone();
                ctl.trace(format_args!("n{node} refuses to start: {reason}"));
            }
            ctl.refuse_to_start(node);
        }
    }

    /// Boots node `id` from `disk` with `build`; a disk that fails recovery
    /// gives a stopped node. Returns the recovery report on success.
    pub fn boot(
        id: NodeId,
        disk: &N::OnDisk,
        build: impl FnOnce(&N::Disk) -> N,
    ) -> (WalBacked<N>, Result<RecoveryReport, StorageError>) {
        match disk.recover(id) {
            Ok((d, report)) => (WalBacked::Running(Box::new(build(&d))), Ok(report)),
            Err(e) => (
                WalBacked::Stopped {
                    reason: e.to_string(),
                },
                Err(e),
            ),
        }
    }
}

type Out<N> = Output<<N as Node>::Write, <N as Node>::Msg, <N as Node>::Event>;

impl<N: Durable> Node for WalBacked<N> {
    type Msg = N::Msg;
    type Write = N::Write;
    type Disk = N::OnDisk;
    type Event = N::Event;
    type Input = N::Input;

    fn apply_write(disk: &mut N::OnDisk, write: &N::Write) {
        disk.apply(write);
    }

    fn must_sync(write: &N::Write) -> bool {
        N::must_sync(write)
    }

    fn step(&mut self, now: Instant, from: NodeId, msg: N::Msg, out: &mut Out<N>) {
        if let WalBacked::Running(n) = self {
            n.step(now, from, msg, out);
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Out<N>) {
        if let WalBacked::Running(n) = self {
            n.tick(now, out);
        }
    }

    fn input(&mut self, now: Instant, input: N::Input, out: &mut Out<N>) {
        if let WalBacked::Running(n) = self {
            n.input(now, input, out);
        }
    }

    fn describe(&self) -> String {
        match self {
            WalBacked::Running(n) => n.describe(),
            WalBacked::Stopped { .. } => "refuses to start (damaged log)".into(),
        }
    }
}
