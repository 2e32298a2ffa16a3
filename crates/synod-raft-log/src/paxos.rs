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
    DiskStorage, Entry, Error, Fs, HardState, Identity, RecoveryReport, Result, Snapshot,
    SnapshotMeta, Storage, StorageOptions,
};

use crate::{codec, inconsistent};

/// The term of every journal entry and snapshot: "MPAXOS" and a format
/// number, far above any term a Raft election reaches, so that a Raft
/// member's data directory is refused by name instead of misread (its
/// entries' bytes may well decode as records).
pub const JOURNAL_TERM: u64 = u64::from_be_bytes(*b"MPAXOS\0\x01");

const RAFT_HINT: &str = "is this the data directory of a member of the raft engine?";

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

    /// The image as of the last record written (what a reopen recovers
    /// once the last `persist` returned).
    pub fn image(&self) -> &Disk<V> {
        &self.image
    }

    /// Writes a batch of records in order and makes them durable with one
    /// sync (group commit); returns once they are. After an error the log
    /// refuses every later batch: reopen the directory.
    pub fn persist(&mut self, writes: &[Write<V>]) -> Result<()> {
        if let Some(why) = &self.failed {
            return Err(Error::Poisoned(why.clone()));
        }
        let res = self.write_batch(writes);
        if let Err(e) = &res {
            self.failed = Some(e.to_string());
        }
        res
    }

    fn write_batch(&mut self, writes: &[Write<V>]) -> Result<()> {
        let first = self.storage.last_index() + 1;
        for w in writes {
            let index = self.storage.last_index() + 1;
            self.image.apply(w);
            if let Write::Snapshot(_) = w {
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
            first + writes.len() as u64,
            "one journal index per record"
        );
        if !writes.is_empty() {
            self.storage.sync()?;
        }
        Ok(())
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
