//! A member's Raft records on its WAL: the driver's side of persist-then-send.

use std::path::Path;
use synod_protocols::raft::{self, Disk, EntryData, Snapshot, Write};
use synod_protocols::NodeId;
use synod_storage::{
    Error as StorageError, Identity, RealFs, RealStorage, RecoveryReport, Storage, StorageOptions,
};

/// Raft's durable records, kept in a synod-storage data directory.
pub struct MemberDisk {
    storage: RealStorage,
    /// Observes every sync (`etcd_disk_wal_fsync_duration_seconds`).
    pub fsync: Option<prometheus::Histogram>,
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("raft records serialize")
}

fn inconsistent(dir: &Path, detail: String) -> StorageError {
    StorageError::Inconsistent {
        path: dir.to_path_buf(),
        detail,
    }
}

impl MemberDisk {
    /// Opens (or creates) `dir` for member `node` of cluster `cluster` and
    /// returns Raft's durable image as recovered. Refuses a directory of
    /// another cluster or member, and one whose log is damaged before its tail.
    pub fn open(
        dir: &Path,
        cluster: u64,
        node: NodeId,
    ) -> synod_storage::Result<(MemberDisk, Disk, RecoveryReport)> {
        let id = Identity {
            cluster_id: cluster,
            node_id: node,
        };
        let (storage, report) = RealStorage::open(RealFs, dir, id, StorageOptions::default())?;
        let hs = storage.hard_state();
        let hard = raft::HardState {
            term: hs.term,
            vote: hs.vote.checked_sub(1),
            commit: hs.commit,
        };
        let snapshot = match storage.snapshot()? {
            None => None,
            Some(s) => Some(bincode::deserialize::<Snapshot>(&s.data).map_err(|e| {
                inconsistent(
                    dir,
                    format!("snapshot at {:?} does not decode: {e}", s.meta),
                )
            })?),
        };
        let mut entries = Vec::new();
        for e in storage.entries(storage.first_index(), storage.last_index() + 1)? {
            let data: EntryData = bincode::deserialize(&e.data).map_err(|err| {
                inconsistent(dir, format!("entry {} does not decode: {err}", e.index))
            })?;
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
        Ok((
            MemberDisk {
                storage,
                fsync: None,
            },
            disk,
            report,
        ))
    }

    /// Writes a batch of records and makes them durable with one sync (group
    /// commit: every step whose output is in the batch shares it).
    pub fn persist(&mut self, writes: &[Write]) -> synod_storage::Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        for w in writes {
            match w {
                Write::HardState(hs) => {
                    self.storage.set_hard_state(synod_storage::HardState {
                        term: hs.term,
                        vote: hs.vote.map_or(0, |v| v + 1),
                        commit: hs.commit,
                    })?;
                }
                Write::Entries(es) => {
                    // As raft's own Disk::apply: never leave a gap, and skip
                    // what a snapshot covers.
                    if es
                        .first()
                        .is_some_and(|e| e.index > self.storage.last_index() + 1)
                    {
                        continue;
                    }
                    let base = self.storage.snapshot_meta().index;
                    let entries: Vec<synod_storage::Entry> = es
                        .iter()
                        .filter(|e| e.index > base)
                        .map(|e| synod_storage::Entry {
                            index: e.index,
                            term: e.term,
                            data: encode(&e.data),
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
                        data: encode(snap),
                    })?;
                }
            }
        }
        let started = std::time::Instant::now();
        self.storage.sync()?;
        let took = started.elapsed();
        if let Some(h) = &self.fsync {
            h.observe(took.as_secs_f64());
        }
        // etcd warns of syncs over a second: the disk is too slow for the
        // election timeout, and leaders will be lost.
        if took >= std::time::Duration::from_secs(1) {
            tracing::warn!(took_ms = took.as_millis() as u64, "slow fdatasync");
        }
        Ok(())
    }
}
