//! Raft's durable records on synod's write-ahead log.
//!
//! The Raft core (`synod_protocols::raft`) asks its driver to persist
//! [`Write`]s and boots from a [`Disk`] image. This crate is the one place
//! where those records meet the storage crate's WAL and snapshot files:
//!
//! | Raft record | storage call |
//! | --- | --- |
//! | `HardState { term, vote, commit }` | `set_hard_state` (vote `None` is 0, node `v` is `v + 1`) |
//! | `Entries(es)` | `append`, each entry's [`EntryData`] encoded by [`codec`] |
//! | `Snapshot(s)` | `save_snapshot`, the whole Raft snapshot (configuration and application state) encoded by [`codec`] |
//!
//! A snapshot of entries the log still holds may be written later than the
//! records after it ([`RaftLog::write_deferring`], [`DeferredSnapshot`]): the
//! service writes large snapshots on another thread.
//!
//! Entries a snapshot already covers are skipped, and a batch that would
//! leave a gap is ignored, exactly as [`Disk::apply`] folds them, so the image
//! that [`RaftLog::open`] recovers is the one the core's own model of its disk
//! predicts. The simulator checks that claim on every recovery of every run.
//!
//! Recovery is strict: an entry or snapshot that does not decode, or a
//! snapshot file whose header names another index or term than the Raft
//! snapshot inside it, is an [`Error::Inconsistent`] naming the directory,
//! and the member must not start.
//!
//! The service runs `RaftLog<RealFs>`; the simulator runs `RaftLog<SimFs>`
//! with power losses and bit flips underneath. Neither has a copy of the
//! mapping.
//!
//! [`paxos::PaxosLog`] does the same for the Multi-Paxos core's records
//! (`synod_protocols::multipaxos::Write`): one journal entry per record, and
//! a snapshot file holding the whole image, behind which the journal is
//! dropped. Its entries carry a term no Raft member reaches, so it refuses
//! a Raft member's data directory by name.

pub mod codec;
pub mod paxos;

use std::path::{Path, PathBuf};

use synod_protocols::raft::{self, Disk, EntryData, Snapshot, Write};
use synod_storage::{
    DiskStorage, Error, Fs, Identity, RecoveryReport, Result, SnapStore, Storage, StorageOptions,
};

/// A snapshot the log already covers, held back by
/// [`RaftLog::write_deferring`] so that the caller can write its file away
/// from the writes that follow ([`DeferredSnapshot::write`], on any thread)
/// and then adopt it ([`RaftLog::adopt`]).
///
/// Why this is safe: the log keeps every entry the snapshot covers until it
/// is adopted, so a crash before then recovers the previous snapshot and the
/// entries after it, which is the same state; a file written but never
/// adopted is newer than the log's snapshot mark, and recovery removes it.
pub struct DeferredSnapshot<F: Fs> {
    snaps: SnapStore<F>,
    snap: Snapshot,
}

impl<F: Fs> DeferredSnapshot<F> {
    /// Where the snapshot ends.
    pub fn meta(&self) -> synod_storage::SnapshotMeta {
        synod_storage::SnapshotMeta {
            index: self.snap.meta.index,
            term: self.snap.meta.term,
        }
    }

    /// The length of the snapshot's data (the application's bytes).
    pub fn data_len(&self) -> usize {
        self.snap.data.0.len()
    }

    /// Encodes the snapshot and writes its file durably; adopt the result.
    pub fn write(self) -> Result<synod_storage::SnapshotMeta> {
        let meta = self.meta();
        let (prefix, data) = codec::encode_snapshot_parts(&self.snap);
        self.snaps.save_parts(meta, &[&prefix, data])?;
        Ok(meta)
    }

    /// As [`DeferredSnapshot::write`], with the file `streamed` already
    /// holds: installed if it is this very snapshot (same metadata and data
    /// length: its data was encoded from the same image, and the core keeps
    /// the bytes mapped from that file), written afresh otherwise (and the
    /// streamed file removed).
    pub fn write_streamed(self, streamed: StreamedSnapshot) -> Result<synod_storage::SnapshotMeta> {
        let meta = self.meta();
        if streamed.meta == self.snap.meta && streamed.data_len == self.snap.data.0.len() as u64 {
            self.snaps.install_part(meta, &streamed.path)?;
            return Ok(meta);
        }
        streamed.discard(&self.snaps);
        self.write()
    }
}

/// A snapshot file being written as the application's state is encoded
/// ([`SnapStore::stream`]), with the Raft record's prefix in front: the
/// file [`DeferredSnapshot::write`] would write for the same snapshot.
/// Write the data into it (exactly `data_len` bytes if it was announced),
/// then [`SnapshotStream::finish`].
pub struct SnapshotStream<F: Fs> {
    snaps: SnapStore<F>,
    writer: synod_storage::SnapWriter<F>,
    meta: raft::SnapshotMeta,
    /// Announced, or (`None`) the writer's count once all is written.
    data_len: Option<u64>,
}

/// A finished [`SnapshotStream`]: durable, not yet a snapshot of the log
/// ([`DeferredSnapshot::write_streamed`] installs it).
#[derive(Debug)]
pub struct StreamedSnapshot {
    pub path: PathBuf,
    pub meta: raft::SnapshotMeta,
    pub data_len: u64,
}

impl StreamedSnapshot {
    /// Removes the file, unused (best effort: the next open removes it too).
    pub fn discard<F: Fs>(self, snaps: &SnapStore<F>) {
        let _ = snaps.remove_part(&self.path);
    }
}

impl<F: Fs> SnapshotStream<F> {
    /// Starts the file of the snapshot at `meta` in `snaps`, for `data_len`
    /// bytes of data.
    pub fn start(snaps: &SnapStore<F>, meta: raft::SnapshotMeta, data_len: u64) -> Result<Self> {
        let prefix = codec::snapshot_prefix(&meta, data_len);
        let file_meta = file_meta(&meta);
        let mut writer = snaps.stream(file_meta, prefix.len() as u64 + data_len)?;
        std::io::Write::write_all(&mut writer, &prefix).map_err(|e| Error::Io {
            op: "write snapshot",
            path: writer.path().to_path_buf(),
            source: e,
        })?;
        Ok(SnapshotStream {
            snaps: snaps.clone(),
            writer,
            meta,
            data_len: Some(data_len),
        })
    }

    /// As [`SnapshotStream::start`], for data of a length not known until
    /// it is all written: the prefix that states it is written last. The
    /// file is the same; the encoder spares a walk of the state that only
    /// measured it (37% of the snapshot thread's samples under puts to
    /// 1,000 keys, each with a long history).
    pub fn start_unsized(snaps: &SnapStore<F>, meta: raft::SnapshotMeta) -> Result<Self> {
        // The prefix states the length in fixed width: its own length
        // does not depend on it.
        let front = codec::snapshot_prefix(&meta, 0).len();
        let writer = snaps.stream_unsized(file_meta(&meta), front)?;
        Ok(SnapshotStream {
            snaps: snaps.clone(),
            writer,
            meta,
            data_len: None,
        })
    }

    /// Writes the data with `encode` (exactly `data_len` bytes into the
    /// stream, if announced) and finishes the file; on any failure the file
    /// is removed.
    pub fn write_with(
        mut self,
        encode: impl FnOnce(&mut Self) -> std::io::Result<()>,
    ) -> Result<StreamedSnapshot> {
        let part = self.path().to_path_buf();
        let snaps = self.snaps.clone();
        let res = encode(&mut self)
            .map_err(|source| Error::Io {
                op: "write snapshot",
                path: part.clone(),
                source,
            })
            .and_then(|()| self.finish());
        if res.is_err() {
            let _ = snaps.remove_part(&part);
        }
        res
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        self.writer.path()
    }

    /// Makes the file durable (an error if the data was not the `data_len`
    /// bytes announced).
    pub fn finish(self) -> Result<StreamedSnapshot> {
        let (path, data_len) = match self.data_len {
            Some(len) => (self.writer.finish()?, len),
            None => {
                let len = self.writer.written();
                let prefix = codec::snapshot_prefix(&self.meta, len);
                (self.writer.finish_front(&prefix)?, len)
            }
        };
        Ok(StreamedSnapshot {
            path,
            meta: self.meta,
            data_len,
        })
    }
}

fn file_meta(meta: &raft::SnapshotMeta) -> synod_storage::SnapshotMeta {
    synod_storage::SnapshotMeta {
        index: meta.index,
        term: meta.term,
    }
}

impl<F: Fs> std::io::Write for SnapshotStream<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

/// A member's Raft records in one data directory.
pub struct RaftLog<F: Fs> {
    storage: DiskStorage<F>,
}

fn inconsistent(dir: &Path, detail: String) -> Error {
    Error::Inconsistent {
        path: dir.to_path_buf(),
        detail,
    }
}

const PAXOS_HINT: &str = "is this the data directory of a member of the multipaxos engine?";

impl<F: Fs> RaftLog<F> {
    /// Opens (or creates) the data directory `dir` on `fs` for `id` and
    /// returns the Raft image recovered from it. Refuses a directory of
    /// another cluster or member, one damaged before its tail, and one whose
    /// records do not decode or contradict each other.
    pub fn open(
        fs: F,
        dir: &Path,
        id: Identity,
        options: StorageOptions,
    ) -> Result<(RaftLog<F>, Disk, RecoveryReport)> {
        let (storage, report) = DiskStorage::open(fs, dir, id, options)?;
        let mut log = RaftLog { storage };
        let disk = log.image()?;
        // The core holds the log from here on; the storage only writes it.
        log.storage.drop_payloads();
        Ok((log, disk, report))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.storage.dir()
    }

    /// Bytes of records written to the WAL since it was opened.
    pub fn wal_bytes_written(&self) -> u64 {
        self.storage.wal().bytes_written()
    }

    /// The snapshot directory, for streaming a snapshot's file from another
    /// thread ([`SnapshotStream::start`]).
    pub fn snap_store(&self) -> SnapStore<F> {
        self.storage.snap_store()
    }

    /// The file of the snapshot `meta` (present once it is durable).
    pub fn snapshot_path(&self, meta: synod_storage::SnapshotMeta) -> PathBuf {
        self.storage.snap_store().path(meta)
    }

    fn dir_buf(&self) -> PathBuf {
        self.storage.dir().to_path_buf()
    }

    /// Rebuilds the Raft image from what the storage holds.
    fn image(&self) -> Result<Disk> {
        let dir = self.dir_buf();
        let st = &self.storage;
        let hs = st.hard_state();
        let hard = raft::HardState {
            term: hs.term,
            vote: hs.vote.checked_sub(1),
            commit: hs.commit,
        };
        let snapshot = match st.snapshot()? {
            None => None,
            Some(s) if s.meta.term == paxos::JOURNAL_TERM => {
                let detail = format!(
                    "the snapshot at index {} is a Multi-Paxos image: {PAXOS_HINT}",
                    s.meta.index
                );
                return Err(inconsistent(&dir, detail));
            }
            Some(s) => {
                let snap = codec::decode_snapshot(s.data).map_err(|e| {
                    inconsistent(&dir, format!("snapshot file at {:?}: {e}", s.meta))
                })?;
                if (snap.meta.index, snap.meta.term) != (s.meta.index, s.meta.term) {
                    return Err(inconsistent(
                        &dir,
                        format!(
                            "snapshot file at {:?} holds a raft snapshot at index {} term {}",
                            s.meta, snap.meta.index, snap.meta.term
                        ),
                    ));
                }
                Some(snap)
            }
        };
        let stored = st.entries(st.first_index(), st.last_index() + 1)?;
        let mut entries = Vec::with_capacity(stored.len());
        for e in stored {
            if e.term == paxos::JOURNAL_TERM {
                let detail = format!("entry {} is a Multi-Paxos record: {PAXOS_HINT}", e.index);
                return Err(inconsistent(&dir, detail));
            }
            let data: EntryData = codec::decode(&e.data)
                .map_err(|err| inconsistent(&dir, format!("entry {}: {err}", e.index)))?;
            entries.push(raft::Entry {
                index: e.index,
                term: e.term,
                data,
            });
        }
        let disk = Disk {
            hard,
            snapshot,
            entries,
        };
        check_image(&disk).map_err(|detail| inconsistent(&dir, detail))?;
        Ok(disk)
    }

    /// Writes one record without syncing, except that a snapshot is durable
    /// on return (the storage crate writes it to its own file and syncs it).
    pub fn write(&mut self, w: &Write) -> Result<()> {
        match w {
            Write::HardState(hs) | Write::Commit(hs) => {
                self.storage.set_hard_state(synod_storage::HardState {
                    term: hs.term,
                    vote: hs.vote.map_or(0, |v| v + 1),
                    commit: hs.commit,
                })?;
            }
            Write::Entries(es) => {
                let Some(first) = es.first() else {
                    return Ok(());
                };
                // As Disk::apply: never leave a gap.
                if first.index > self.storage.last_index() + 1 {
                    return Ok(());
                }
                let base = self.storage.snapshot_meta().index;
                let entries: Vec<synod_storage::Entry> = es
                    .iter()
                    .filter(|e| e.index > base)
                    .map(|e| synod_storage::Entry {
                        index: e.index,
                        term: e.term,
                        data: codec::encode(&e.data),
                    })
                    .collect();
                if !entries.is_empty() {
                    self.storage.append(&entries)?;
                }
            }
            Write::Snapshot(snap) => {
                self.storage.save_snapshot(&synod_storage::Snapshot {
                    meta: synod_storage::SnapshotMeta {
                        index: snap.meta.index,
                        term: snap.meta.term,
                    },
                    data: codec::encode(snap),
                })?;
            }
        }
        Ok(())
    }

    /// As [`RaftLog::write`], except that a snapshot the log covers (the
    /// node compacting its own log, never one installed from a leader) is
    /// not written but handed back (see [`DeferredSnapshot`]).
    pub fn write_deferring(&mut self, w: &Write) -> Result<Option<DeferredSnapshot<F>>> {
        if let Write::Snapshot(snap) = w {
            let meta = synod_storage::SnapshotMeta {
                index: snap.meta.index,
                term: snap.meta.term,
            };
            if self.storage.covers(meta) {
                return Ok(Some(DeferredSnapshot {
                    snaps: self.storage.snap_store(),
                    snap: snap.clone(),
                }));
            }
        }
        self.write(w).map(|()| None)
    }

    /// Makes the snapshot file that [`DeferredSnapshot::write`] made durable
    /// the base of the log, and drops what it supersedes; false (and the
    /// file removed) if a newer snapshot replaced the log meanwhile.
    pub fn adopt(&mut self, meta: synod_storage::SnapshotMeta) -> Result<bool> {
        self.storage.adopt_snapshot(meta)
    }

    /// Makes everything written so far durable.
    pub fn sync(&mut self) -> Result<()> {
        self.storage.sync().map(|_| ())
    }

    /// Writes out what is buffered and returns the sync that makes it
    /// durable, to run on another thread while this log is left alone
    /// ([`synod_storage::SyncTicket::sync`]), or `None` if all is durable.
    pub fn begin_sync(&mut self) -> Result<Option<synod_storage::SyncTicket<F::File>>> {
        self.storage.begin_sync()
    }

    /// Records the outcome of a sync started with [`RaftLog::begin_sync`]; a
    /// failed one poisons the log (the kernel may have dropped the pages).
    pub fn finish_sync(
        &mut self,
        ticket: synod_storage::SyncTicket<F::File>,
        result: std::io::Result<()>,
    ) -> Result<()> {
        self.storage.finish_sync(ticket, result).map(|_| ())
    }

    /// Writes a batch of records and makes them durable with one sync (group
    /// commit: every step whose output is in the batch shares it). A batch of
    /// commit-only records ([`Write::must_sync`] false) is written but not
    /// synced: the next sync takes it along.
    pub fn persist(&mut self, writes: &[Write]) -> Result<()> {
        for w in writes {
            self.write(w)?;
        }
        if writes.iter().any(Write::must_sync) {
            self.sync()?;
        }
        Ok(())
    }
}

/// The invariants every recovered log must hold, whatever the storage
/// returned: entries consecutive and right after the snapshot, terms never
/// decreasing. A violation means the directory was damaged in a way its
/// checksums did not catch.
fn check_image(d: &Disk) -> std::result::Result<(), String> {
    let base = d.snapshot.as_ref().map_or(0, |s| s.meta.index);
    let base_term = d.snapshot.as_ref().map_or(0, |s| s.meta.term);
    let mut term = base_term;
    for (expect, e) in (base + 1..).zip(&d.entries) {
        if e.index != expect {
            return Err(format!(
                "entry {} follows index {} (snapshot at {base})",
                e.index,
                expect - 1
            ));
        }
        if e.term < term {
            return Err(format!(
                "entry {} has term {} after term {term}",
                e.index, e.term
            ));
        }
        term = e.term;
    }
    Ok(())
}
