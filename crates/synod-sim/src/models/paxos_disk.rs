//! The Multi-Paxos acceptor's records in synod's real write-ahead log on the
//! simulated disk: [`PaxosLog`], the adapter `synod serve --engine
//! multipaxos` runs over the real file system, here over [`SimFs`].
//!
//! As [`WalDisk`](crate::models::wal_disk::WalDisk) does for Raft: every
//! record the node makes durable goes through the adapter, a restart boots
//! from what the adapter's recovery reads back, and each recovery is
//! checked against a shadow image (every synced record folded in with
//! [`Disk::apply`]): it must return the shadow, or after a torn batch the
//! shadow with a prefix of that batch's records (each one is a single WAL
//! entry, or a snapshot file, and so all or nothing). Torn batches are
//! written with the disk failing after a random number of operations, then
//! the power goes; flipped bits must make recovery refuse the directory.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::Rng;
use synod_kv::engine::Stamped;
use synod_protocols::multipaxos::{Disk, Write};
use synod_protocols::NodeId;
use synod_raft_log::paxos::PaxosLog;
use synod_storage::{Error as StorageError, RecoveryReport, SimFs};

use crate::models::wal_disk::{
    flip_a_bit, identity, storage_options, wipe_files, SimDisk, DATA_DIR,
};

type Image = Disk<Stamped>;
type Record = Write<Stamped>;

#[derive(Default)]
struct Open {
    log: Option<PaxosLog<SimFs, Stamped>>,
    id: Option<NodeId>,
    /// What the node made durable, folded the core's way.
    shadow: Image,
    /// The batch a power loss cut since the last recovery.
    torn: Vec<Record>,
    /// The first storage failure that is not the disk's fault.
    error: Option<String>,
    /// Snapshots made durable.
    snapshots: u64,
    /// The record of an image of the node's own slots whose file is written
    /// but not yet adopted by the journal: as the service does
    /// (`DeferredImage`), it is adopted with the next write, and until then
    /// the journal is the durable truth.
    deferred: Option<(synod_storage::SnapshotMeta, Record)>,
}

/// A Multi-Paxos node's disk: a [`SimFs`] with its data directory and the
/// journal its current incarnation has open.
#[derive(Default)]
pub struct PaxosDisk {
    fs: SimFs,
    open: Arc<Mutex<Open>>,
}

impl Clone for PaxosDisk {
    /// An independent copy, with no journal open (it opens one when first
    /// written to).
    fn clone(&self) -> Self {
        let open = self.lock();
        PaxosDisk {
            fs: self.fs.fork(),
            open: Arc::new(Mutex::new(Open {
                log: None,
                id: open.id,
                shadow: open.shadow.clone(),
                torn: open.torn.clone(),
                error: open.error.clone(),
                snapshots: open.snapshots,
                // An unadopted file is newer than the journal's mark: the
                // copy's recovery removes it.
                deferred: None,
            })),
        }
    }
}

impl std::fmt::Debug for PaxosDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaxosDisk")
            .field("files", &self.fs.files())
            .field("open", &self.lock().log.is_some())
            .finish()
    }
}

/// Whether `got` is what a recovery may return when `shadow` was durable
/// and the batch `torn` was cut: the shadow with the batch's first k
/// records, for some k; or with the first k of its other records, without
/// its snapshots. An image of the node's own slots is written to a file of
/// its own after the journal records around it (the service writes it on
/// another thread) and adopted only with a later write, so the cut may keep
/// later records and not the image. That loses nothing: the journal still
/// holds every slot the image would have covered.
fn recovered_ok(shadow: &Image, torn: &[Record], got: &Image) -> bool {
    let prefix_ok = |records: Vec<&Record>| {
        let mut d = shadow.clone();
        if d == *got {
            return true;
        }
        records.into_iter().any(|w| {
            d.apply(w);
            d == *got
        })
    };
    prefix_ok(torn.iter().collect())
        || prefix_ok(
            torn.iter()
                .filter(|w| !matches!(w, Write::Snapshot(_)))
                .collect(),
        )
}

fn summary(d: &Image) -> String {
    format!(
        "promised {:?}, round {}, {} accepted, {} learned, snapshot at {}",
        d.promised,
        d.round,
        d.accepted.len(),
        d.learned.len(),
        d.compacted()
    )
}

impl PaxosDisk {
    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open_log(
        &self,
        id: NodeId,
    ) -> Result<(PaxosLog<SimFs, Stamped>, Image, RecoveryReport), StorageError> {
        PaxosLog::open(
            self.fs.clone(),
            &PathBuf::from(DATA_DIR),
            identity(id),
            storage_options(),
        )
    }

    /// Power loss in the middle of syncing `writes`: the disk fails after
    /// `budget` operations (failing every write after it), then the power
    /// goes (`seed` picks which unsynced sectors survive).
    pub fn tear(&mut self, writes: &[Record], seed: u64, budget: u64) {
        let mut open = self.lock();
        open.torn = writes.to_vec();
        open.deferred = None;
        if let Some(log) = open.log.as_mut() {
            self.fs.crash_after(Some(budget));
            let _ = log.persist(writes);
        }
        open.log = None;
        // Also lifts the crash budget.
        self.fs.power_loss(seed);
    }

    /// Deletes the data directory's files (durably). Only the deliberately
    /// broken recovery of the tests does this: a member that answers a
    /// damaged journal by starting over, forgetting its promises.
    pub fn wipe(&self) {
        {
            let mut open = self.lock();
            open.log = None;
            open.deferred = None;
            open.shadow = Image::default();
            open.torn.clear();
        }
        wipe_files(&self.fs);
    }

    /// Flips one random bit of a stored file ([`flip_a_bit`]).
    pub fn corrupt(&mut self, rng: &mut impl Rng) -> Option<(PathBuf, u64)> {
        flip_a_bit(&self.fs, rng)
    }

    /// The first storage failure that is not the disk's fault, if any.
    pub fn storage_error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    /// Snapshots made durable on this disk.
    pub fn snapshots(&self) -> u64 {
        self.lock().snapshots
    }
}

impl SimDisk for PaxosDisk {
    type Image = Image;
    type Write = Record;

    fn recover(&self, id: NodeId) -> Result<(Image, RecoveryReport), StorageError> {
        let mut open = self.lock();
        open.log = None;
        open.deferred = None;
        open.id = Some(id);
        let (log, image, report) = self.open_log(id)?;
        let torn = std::mem::take(&mut open.torn);
        if !recovered_ok(&open.shadow, &torn, &image) {
            let msg = format!(
                "recovery returned {}, but {} was made durable{}",
                summary(&image),
                summary(&open.shadow),
                if torn.is_empty() {
                    ""
                } else {
                    " (before a torn write)"
                }
            );
            open.error.get_or_insert(msg);
        }
        open.shadow = image.clone();
        open.log = Some(log);
        Ok((image, report))
    }

    fn apply(&mut self, w: &Record) {
        let mut open = self.lock();
        if open.log.is_none() {
            // A copy made by `clone`: open it (never the case in a run).
            let Some(id) = open.id else {
                open.error
                    .get_or_insert("a write reached a disk that was never booted".into());
                return;
            };
            match self.open_log(id) {
                Ok((log, _, _)) => open.log = Some(log),
                Err(e) => {
                    open.error.get_or_insert(e.to_string());
                    return;
                }
            }
        }
        let open = &mut *open;
        let log = open.log.as_mut().expect("opened above");
        if let Some((meta, pending)) = open.deferred.take() {
            match log.adopt(meta) {
                Ok(adopted) => {
                    if adopted {
                        open.shadow.apply(&pending);
                    }
                }
                Err(e) => {
                    open.error
                        .get_or_insert(format!("the journal refused to adopt an image: {e}"));
                }
            }
        }
        let written = match log.persist_deferring(std::slice::from_ref(w)) {
            // The image of the node's own slots, written at once here (the
            // service writes it on another thread): adopted with the next
            // write, so that a power loss may fall between.
            Ok(Some(d)) => match d.write() {
                Ok(meta) => {
                    open.deferred = Some((meta, w.clone()));
                    open.snapshots += 1;
                    return;
                }
                Err(e) => Err(e),
            },
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        open.shadow.apply(w);
        open.snapshots += u64::from(matches!(w, Write::Snapshot(_)));
        if let Err(e) = written {
            open.error
                .get_or_insert(format!("the journal refused a write: {e} ({w:?})"));
        }
    }

    fn wipe(&self) {
        PaxosDisk::wipe(self);
    }
}
