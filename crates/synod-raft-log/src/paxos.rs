//! The Multi-Paxos core's durable records on synod's write-ahead log.
//!
//! The core (`synod_protocols::multipaxos`) emits [`Write`] records and
//! boots from a [`Disk`] image that [`Disk::apply`] folds them into. This
//! module keeps them as a journal plus an image:
//!
//! | Multi-Paxos record | storage call |
//! | --- | --- |
//! | `Promise`, `Round`, `Accept`, `Learn` | `append`: one entry each, the record encoded by [`codec`] |
//! | `Snapshot(_)` | `save_snapshot`: the whole image as of that record, encoded by [`codec`] |
//!
//! Every record, a snapshot included, takes the journal's next index, so
//! the journal is the sequence of records as the core wrote them. A
//! snapshot file holds the whole [`Disk`] (not only the core's
//! [`Snapshot`](synod_protocols::multipaxos::Snapshot)): it replaces every
//! record before it, which the storage then drops, so the journal stays
//! short while the promise, the round and the accepted values survive.
//! Recovery is the image of the latest snapshot file with every later
//! entry folded in, in index order: exactly the core's own model of its
//! disk, whatever records a snapshot made moot (the fold ignores them).
//!
//! Every entry and snapshot carries the term [`JOURNAL_TERM`], which no
//! Raft member ever reaches, and the storage's hard state stays unset: a
//! directory with anything else is a Raft member's (or damaged), and
//! [`PaxosLog::open`] refuses it by name rather than misreading its bytes.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use synod_protocols::multipaxos::{Disk, Write};
use synod_storage::{
    DiskStorage, Entry, Error, Fs, HardState, Identity, RecoveryReport, Result, SnapStore,
    Snapshot, SnapshotMeta, Storage, StorageOptions,
};

use crate::{codec, inconsistent};

/// The term of every journal entry and snapshot: "MPAXOS" and a format
/// number, far above any term a Raft election reaches, so that a Raft
/// member's data directory is refused by name instead of misread (its
/// entries' bytes may well decode as records).
pub const JOURNAL_TERM: u64 = u64::from_be_bytes(*b"MPAXOS\0\x01");

const RAFT_HINT: &str = "is this the data directory of a member of the raft engine?";

/// An image the journal already covers, held back by
/// [`PaxosLog::persist_deferring`] so that the caller can encode and write
/// it away from the records that follow ([`DeferredImage::write`], on any
/// thread), then adopt it ([`PaxosLog::adopt`]).
///
/// Only a node compacting slots it has learned defers its image: the image
/// then says nothing the journal does not (the journal keeps every entry
/// up to the image's index until it is adopted, so a crash before that
/// recovers the same acceptor, its slots not yet compacted), and a file
/// written but never adopted is newer than the log's snapshot mark, which
/// recovery removes. A snapshot installed from a leader is new information
/// and is written at once.
pub struct DeferredImage<F: Fs, V> {
    snaps: SnapStore<F>,
    meta: SnapshotMeta,
    image: Disk<V>,
}

impl<F: Fs, V: Serialize> DeferredImage<F, V> {
    /// Where the image stands in the journal.
    pub fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    /// Encodes the image and writes its file durably; adopt the result.
    pub fn write(self) -> Result<SnapshotMeta> {
        let data = codec::encode(&self.image);
        self.snaps.save_parts(self.meta, &[&data])?;
        Ok(self.meta)
    }
}

/// A Multi-Paxos member's records in one data directory.
pub struct PaxosLog<F: Fs, V> {
    storage: DiskStorage<F>,
    /// The image as of the last record written: a snapshot file is the
    /// whole image, so the log must have it at hand.
    image: Disk<V>,
    /// Why an earlier `persist` failed: the image may then be ahead of the
    /// disk, so nothing more is written (reopen to recover).
    failed: Option<String>,
}

impl<F: Fs, V: Clone + Serialize + DeserializeOwned> PaxosLog<F, V> {
    /// Opens (or creates) the data directory `dir` on `fs` for `id` and
    /// returns the image recovered from it. Refuses a directory of another
    /// cluster or member, one damaged before its tail, and one whose
    /// records are not Multi-Paxos records or do not decode.
    pub fn open(
        fs: F,
        dir: &Path,
        id: Identity,
        options: StorageOptions,
    ) -> Result<(PaxosLog<F, V>, Disk<V>, RecoveryReport)> {
        let (mut storage, report) = DiskStorage::open(fs, dir, id, options)?;
        let image = recover(&storage)?;
        // The image stands for the entries from here on.
        storage.drop_payloads();
        let log = PaxosLog {
            storage,
            image: image.clone(),
            failed: None,
        };
        Ok((log, image, report))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.storage.dir()
    }

    /// Bytes of records written to the WAL since it was opened.
    pub fn wal_bytes_written(&self) -> u64 {
        self.storage.wal().bytes_written()
    }

    /// The image as of the last record written (what a reopen recovers
    /// once the last `persist` returned).
    pub fn image(&self) -> &Disk<V> {
        &self.image
    }

    /// Writes a batch of records in order and makes them durable with one
    /// sync (group commit); returns once they are. After an error the log
    /// refuses every later batch: reopen the directory.
    pub fn persist(&mut self, writes: &[Write<V>]) -> Result<()> {
        if let Some(d) = self.persist_deferring(writes)? {
            let meta = d.write()?;
            self.adopt(meta)?;
        }
        Ok(())
    }

    /// As [`PaxosLog::persist`], except that the image of a node
    /// compacting its own learned slots is not written but handed back
    /// (see [`DeferredImage`]); the latest one if the batch holds several.
    pub fn persist_deferring(
        &mut self,
        writes: &[Write<V>],
    ) -> Result<Option<DeferredImage<F, V>>> {
        if let Some(why) = &self.failed {
            return Err(Error::Poisoned(why.clone()));
        }
        let res = self.write_batch(writes);
        if let Err(e) = &res {
            self.failed = Some(e.to_string());
        }
        res
    }

    /// Makes the image file that [`DeferredImage::write`] made durable the
    /// base of the journal, and drops the entries it stands for; false (and
    /// the file removed) if a newer image replaced them meanwhile.
    pub fn adopt(&mut self, meta: SnapshotMeta) -> Result<bool> {
        self.storage.adopt_snapshot(meta)
    }

    fn write_batch(&mut self, writes: &[Write<V>]) -> Result<Option<DeferredImage<F, V>>> {
        let first = self.storage.last_index() + 1;
        let mut deferred = None;
        let mut journaled = 0;
        for w in writes {
            let index = self.storage.last_index() + 1;
            let own = matches!(w, Write::Snapshot(s) if s.slot <= self.image.learned_prefix());
            self.image.apply(w);
            let covered = SnapshotMeta {
                index: index - 1,
                term: JOURNAL_TERM,
            };
            if own && self.storage.covers(covered) {
                deferred = Some(DeferredImage {
                    snaps: self.storage.snap_store(),
                    meta: covered,
                    image: self.image.clone(),
                });
                continue;
            }
            journaled += 1;
            if let Write::Snapshot(_) = w {
                // Written now (the image may be new information, or no
                // entry came since the last image), so it may not wait.
                // Taking the next index rather than the last one: the
                // storage refuses a snapshot at or below its current one,
                // which the last index is when no entry came since (an
                // empty journal, two snapshots in a row). Beyond the log,
                // the snapshot empties it, which here is all it covers.
                self.storage.save_snapshot(&Snapshot {
                    meta: SnapshotMeta {
                        index,
                        term: JOURNAL_TERM,
                    },
                    data: codec::encode(&self.image),
                })?;
            } else {
                self.storage.append(&[Entry {
                    index,
                    term: JOURNAL_TERM,
                    data: codec::encode(w),
                }])?;
            }
        }
        assert_eq!(
            self.storage.last_index() + 1,
            first + journaled,
            "one journal index per record written"
        );
        if journaled > 0 {
            self.storage.sync()?;
        }
        Ok(deferred)
    }
}

/// The image the storage holds: the latest snapshot's, with every later
/// entry folded in.
fn recover<F: Fs, V: Clone + DeserializeOwned>(st: &DiskStorage<F>) -> Result<Disk<V>> {
    let dir = st.dir();
    let mut image = match st.snapshot()? {
        None => Disk::default(),
        Some(s) => {
            let at = s.meta.index;
            if s.meta.term != JOURNAL_TERM {
                let detail = format!(
                    "the snapshot at index {at} is not a Multi-Paxos image (term {}): {RAFT_HINT}",
                    s.meta.term
                );
                return Err(inconsistent(dir, detail));
            }
            codec::decode(&s.data)
                .map_err(|e| inconsistent(dir, format!("the snapshot at index {at}: {e}")))?
        }
    };
    let (lo, hi) = (st.first_index(), st.last_index() + 1);
    for (expect, e) in (lo..).zip(st.entries(lo, hi)?) {
        assert_eq!(e.index, expect, "the storage returns consecutive entries");
        if e.term != JOURNAL_TERM {
            let detail = format!(
                "entry {} is not a Multi-Paxos record (term {}): {RAFT_HINT}",
                e.index, e.term
            );
            return Err(inconsistent(dir, detail));
        }
        let w: Write<V> = codec::decode(&e.data)
            .map_err(|err| inconsistent(dir, format!("entry {}: {err}", e.index)))?;
        image.apply(&w);
    }
    // Checked last, so that a Raft directory with entries is named by them.
    let hs = st.hard_state();
    if hs != HardState::default() {
        let detail = format!(
            "the log holds a hard state (term {}, vote {}, commit {}), which a Multi-Paxos \
             journal never writes: {RAFT_HINT}",
            hs.term, hs.vote, hs.commit
        );
        return Err(inconsistent(dir, detail));
    }
    Ok(image)
}
