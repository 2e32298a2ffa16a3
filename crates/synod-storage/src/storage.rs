//! The [`Storage`] trait and its WAL-backed implementation.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fs::{Fs, RealFs};
use crate::memlog::{MemLog, TermLog};
use crate::simfs::SimFs;
use crate::snap::SnapStore;
use crate::wal::{RecoveryReport, SyncTicket, Wal, WalOptions};
use crate::{Durable, Entry, HardState, Identity, Lsn, Snapshot, SnapshotMeta};

/// What a Raft node needs from durable storage.
///
/// Writes are buffered until [`Storage::sync`]; nothing may be acknowledged
/// to a client or a peer before [`Storage::durable`] covers it.
pub trait Storage {
    /// Append entries. The first index may be at most `last_index() + 1`;
    /// a lower index replaces that entry and everything after it (a Raft
    /// conflict). Returns the LSN of the last record written.
    fn append(&mut self, entries: &[Entry]) -> Result<Lsn>;
    /// Record a new hard state. Returns its LSN.
    fn set_hard_state(&mut self, hs: HardState) -> Result<Lsn>;
    /// Make everything appended so far durable (one fsync for all of it).
    fn sync(&mut self) -> Result<Durable>;
    /// What is durable now.
    fn durable(&self) -> Durable;
    /// Durably store a snapshot and drop the log prefix it covers. If the
    /// log holds `snap.meta.index` with `snap.meta.term`, later entries are
    /// kept; otherwise the log is emptied. Durable on return.
    fn save_snapshot(&mut self, snap: &Snapshot) -> Result<()>;
    /// The latest snapshot, read back and checksum-verified.
    fn snapshot(&self) -> Result<Option<Snapshot>>;
    /// Position of the latest snapshot (`(0, 0)` if none).
    fn snapshot_meta(&self) -> SnapshotMeta;
    /// The latest hard state (durable or not).
    fn hard_state(&self) -> HardState;
    /// Index of the first entry held (`snapshot_meta().index + 1`).
    fn first_index(&self) -> u64;
    /// Index of the last entry (or of the snapshot if the log is empty).
    fn last_index(&self) -> u64;
    /// Term of entry `index`, also answering for the snapshot's index.
    fn term(&self, index: u64) -> Option<u64>;
    /// Entries `lo..hi`; all must lie in `first_index()..=last_index()`.
    fn entries(&self, lo: u64, hi: u64) -> Result<Vec<Entry>>;
}

/// Options for [`DiskStorage`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageOptions {
    /// WAL tuning.
    pub wal: WalOptions,
}

/// [`Storage`] over a WAL in `DIR/wal` and snapshots in `DIR/snap`, on any
/// [`Fs`]: `DiskStorage<RealFs>` for the service, `DiskStorage<SimFs>` for
/// the simulator.
#[derive(Debug)]
pub struct DiskStorage<F: Fs> {
    wal: Wal<F>,
    snaps: SnapStore<F>,
    log: Held,
    snapshot: SnapshotMeta,
    hard_state: HardState,
    dir: PathBuf,
}

/// What the storage holds of the log since the snapshot.
#[derive(Debug)]
enum Held {
    /// Whole entries, as recovered and appended since.
    Entries(MemLog),
    /// Indexes and terms only (see [`DiskStorage::drop_payloads`]).
    Terms(TermLog),
}

impl Held {
    fn base(&self) -> u64 {
        match self {
            Held::Entries(l) => l.base,
            Held::Terms(l) => l.base(),
        }
    }

    fn last_index(&self) -> u64 {
        match self {
            Held::Entries(l) => l.last_index(),
            Held::Terms(l) => l.last_index(),
        }
    }

    fn term(&self, index: u64) -> Option<u64> {
        match self {
            Held::Entries(l) => l.get(index).map(|e| e.term),
            Held::Terms(l) => l.term(index),
        }
    }

    fn apply_snapshot(&mut self, s: SnapshotMeta) {
        match self {
            Held::Entries(l) => l.apply_snapshot(s),
            Held::Terms(l) => l.apply_snapshot(s),
        }
    }
}

/// Storage on the real disk.
pub type RealStorage = DiskStorage<RealFs>;
/// Storage on the simulated disk.
pub type SimStorage = DiskStorage<SimFs>;

impl<F: Fs> DiskStorage<F> {
    /// Open (creating if empty) the data directory `dir` and recover.
    ///
    /// Refuses to start on corruption, on a log that belongs to another
    /// cluster or node, or when the snapshot the log refers to is missing or
    /// damaged. A torn final write is cut off and described in the report;
    /// the caller should log it.
    pub fn open(
        fs: F,
        dir: &Path,
        id: Identity,
        opts: StorageOptions,
    ) -> Result<(Self, RecoveryReport)> {
        let (wal, rec) = Wal::open(fs.clone(), &dir.join("wal"), id, opts.wal)?;
        let snaps = SnapStore::new(fs, &dir.join("snap"), id)?;
        let mut report = rec.report;
        if rec.snapshot.index > 0 {
            let path = snaps.path(rec.snapshot);
            if !snaps.list()?.contains(&rec.snapshot) {
                return Err(Error::inconsistent(
                    path,
                    format!(
                        "the log records a snapshot at index {} term {}, but its file is missing",
                        rec.snapshot.index, rec.snapshot.term
                    ),
                ));
            }
            snaps.load(rec.snapshot)?;
        }
        // Snapshots newer than the log's marker were never committed to the
        // log (crash between writing the file and the marker); older ones
        // are superseded.
        report
            .removed_files
            .extend(snaps.remove_except(rec.snapshot, true)?);
        let mut log = MemLog::with_base(rec.snapshot.index);
        log.entries.extend(rec.entries);
        Ok((
            DiskStorage {
                wal,
                snaps,
                log: Held::Entries(log),
                snapshot: rec.snapshot,
                hard_state: rec.hard_state,
                dir: dir.to_path_buf(),
            },
            report,
        ))
    }

    /// Stops keeping the entries' payloads in memory: from here on the
    /// storage writes them and remembers only their indexes and terms, and
    /// [`Storage::entries`] refuses. For an owner that holds the log itself
    /// once it has read it back (the Raft core does): keeping both cost a
    /// second copy of every command since the last snapshot, and a copy per
    /// appended entry.
    pub fn drop_payloads(&mut self) {
        if let Held::Entries(log) = &self.log {
            self.log = Held::Terms(TermLog::of(log));
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The underlying WAL (read-only).
    pub fn wal(&self) -> &Wal<F> {
        &self.wal
    }

    /// Start a sync that can run without holding a lock (see [`Wal::begin_sync`]).
    pub fn begin_sync(&mut self) -> Result<Option<SyncTicket<F::File>>> {
        self.wal.begin_sync()
    }

    /// Finish a sync started with [`DiskStorage::begin_sync`].
    pub fn finish_sync(
        &mut self,
        t: SyncTicket<F::File>,
        r: std::io::Result<()>,
    ) -> Result<Durable> {
        self.wal.finish_sync(t, r)
    }

    /// LSN of the last record appended.
    pub fn last_lsn(&self) -> Lsn {
        self.wal.last_lsn()
    }

    /// The snapshot directory, for writing a snapshot file away from the
    /// log's owner ([`SnapStore::save`], then [`DiskStorage::adopt_snapshot`]).
    pub fn snap_store(&self) -> SnapStore<F> {
        self.snaps.clone()
    }

    /// Whether the log holds the entry a snapshot at `meta` would end with,
    /// above the current snapshot: such a snapshot only shortens the log,
    /// so it may become durable later than the writes that follow it, as
    /// long as the log is kept until it is.
    pub fn covers(&self, meta: SnapshotMeta) -> bool {
        meta.index > self.snapshot.index && self.log.term(meta.index) == Some(meta.term)
    }

    /// Makes the snapshot file at `meta`, already durable, the log's base
    /// (as [`Storage::save_snapshot`] does after writing it) if the log
    /// still covers it; otherwise (a newer snapshot replaced the log in the
    /// meantime) removes the file and returns false.
    pub fn adopt_snapshot(&mut self, meta: SnapshotMeta) -> Result<bool> {
        if !self.covers(meta) {
            self.snaps.remove(meta)?;
            return Ok(false);
        }
        self.mark_snapshot(meta)?;
        Ok(true)
    }

    /// Records in the log that the durable snapshot file `meta` is its base,
    /// then drops what it supersedes.
    fn mark_snapshot(&mut self, meta: SnapshotMeta) -> Result<()> {
        let discards = self.log.last_index() > meta.index && !self.covers(meta);
        self.wal.append_snapshot_mark(meta)?;
        self.log.apply_snapshot(meta);
        self.wal.set_last_index(self.log.last_index());
        self.wal.sync()?;
        if discards {
            // Before compaction may delete the entry whose term showed the
            // tail to be dead (see `Wal::start_next_segment`).
            self.wal.start_next_segment()?;
        }
        self.snapshot = meta;
        // Syncs again (re-recording the hard state) only if it deletes.
        self.wal.compact(meta.index)?;
        self.snaps.remove_except(meta, false)?;
        Ok(())
    }
}

impl<F: Fs> Storage for DiskStorage<F> {
    fn append(&mut self, entries: &[Entry]) -> Result<Lsn> {
        let lsn = self.wal.append_entries(entries)?;
        for e in entries {
            match &mut self.log {
                Held::Entries(log) => log.append(e.clone()),
                Held::Terms(log) => log.append(e.index, e.term),
            }
        }
        Ok(lsn)
    }

    fn set_hard_state(&mut self, hs: HardState) -> Result<Lsn> {
        let lsn = self.wal.append_hard_state(hs)?;
        self.hard_state = hs;
        Ok(lsn)
    }

    fn sync(&mut self) -> Result<Durable> {
        self.wal.sync()
    }

    fn durable(&self) -> Durable {
        self.wal.durable()
    }

    fn save_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        if snap.meta.index <= self.snapshot.index {
            return Err(Error::InvalidArgument(format!(
                "snapshot at index {} is not newer than the current one at {}",
                snap.meta.index, self.snapshot.index
            )));
        }
        self.snaps.save(snap)?;
        self.mark_snapshot(snap.meta)
    }

    fn snapshot(&self) -> Result<Option<Snapshot>> {
        if self.snapshot.index == 0 {
            return Ok(None);
        }
        self.snaps.load(self.snapshot).map(Some)
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.snapshot
    }

    fn hard_state(&self) -> HardState {
        self.hard_state
    }

    fn first_index(&self) -> u64 {
        self.log.base() + 1
    }

    fn last_index(&self) -> u64 {
        self.log.last_index()
    }

    fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.log.term(index)
    }

    fn entries(&self, lo: u64, hi: u64) -> Result<Vec<Entry>> {
        let Held::Entries(log) = &self.log else {
            return Err(Error::InvalidArgument(format!(
                "entries {lo}..{hi} requested, but this storage keeps no payloads in memory \
                 (drop_payloads); reopen the directory to read them"
            )));
        };
        if lo < self.first_index() || hi > self.last_index() + 1 || lo > hi {
            return Err(Error::InvalidArgument(format!(
                "entries {lo}..{hi} requested, but the log holds {}..={}",
                self.first_index(),
                self.last_index()
            )));
        }
        Ok((lo..hi)
            .map(|i| log.get(i).expect("in range").clone())
            .collect())
    }
}
