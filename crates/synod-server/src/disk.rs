//! A member's Raft records on its WAL: the driver's side of persist-then-send.
//!
//! The record mapping itself is `synod_raft_log`'s (shared with the
//! simulator); this file adds what only a real member has: the fsync
//! histogram and the slow-disk warning.

use std::path::Path;
use synod_kv::Command;
use synod_protocols::raft::{Disk, Write};
use synod_protocols::raft::{EntryData, PAYLOAD_VERSION};
use synod_protocols::NodeId;
use synod_raft_log::RaftLog;
use synod_storage::{Identity, RealFs, RecoveryReport, StorageOptions};

/// Refuses a log this build cannot replay, naming what it cannot read,
/// rather than fail half-way through the replay: every command after the
/// snapshot must decode, and the snapshot must be in this build's encoding
/// (decoding a large snapshot twice would double the restart time; its
/// bytes passed the storage checksums).
fn readable(dir: &Path, disk: &Disk) -> synod_storage::Result<()> {
    let refuse = |detail: String| synod_storage::Error::Inconsistent {
        path: dir.to_path_buf(),
        detail,
    };
    if let Some(s) = &disk.snapshot {
        let version = s.data.0.first().copied();
        if version != Some(PAYLOAD_VERSION) {
            return Err(refuse(format!(
                "the snapshot at index {} is in encoding {version:?}; this build reads {PAYLOAD_VERSION}",
                s.meta.index
            )));
        }
    }
    for e in &disk.entries {
        if let EntryData::App(p) = &e.data {
            p.try_decode::<Command>().map_err(|err| {
                refuse(format!(
                    "entry {} holds no command this build reads: {err}",
                    e.index
                ))
            })?;
        }
    }
    Ok(())
}

/// Raft's durable records, kept in a synod-storage data directory.
pub struct MemberDisk {
    log: RaftLog<RealFs>,
    /// Observes every sync (`etcd_disk_wal_fsync_duration_seconds`).
    pub fsync: Option<prometheus::Histogram>,
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
        let (log, disk, report) = RaftLog::open(RealFs, dir, id, StorageOptions::default())?;
        readable(dir, &disk)?;
        Ok((MemberDisk { log, fsync: None }, disk, report))
    }

    /// Writes a batch of records and makes them durable with one sync (group
    /// commit: every step whose output is in the batch shares it).
    pub fn persist(&mut self, writes: &[Write]) -> synod_storage::Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        for w in writes {
            self.log.write(w)?;
        }
        let started = std::time::Instant::now();
        self.log.sync()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use synod_protocols::raft::{Entry, HardState, Payload};

    #[test]
    fn a_log_this_build_cannot_replay_is_refused_by_entry() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity {
            cluster_id: 9,
            node_id: 1,
        };
        let (mut log, _, _) =
            RaftLog::open(RealFs, dir.path(), id, StorageOptions::default()).unwrap();
        let good = EntryData::App(Payload::encode(&Command::LeaseRevoke { id: 1 }));
        let newer = EntryData::App(Payload(vec![PAYLOAD_VERSION + 1, 0, 0]));
        log.persist(&[
            Write::HardState(HardState {
                term: 1,
                vote: Some(0),
                commit: 2,
            }),
            Write::Entries(vec![
                Entry {
                    index: 1,
                    term: 1,
                    data: good,
                },
                Entry {
                    index: 2,
                    term: 1,
                    data: newer,
                },
            ]),
        ])
        .unwrap();
        drop(log);
        let err = MemberDisk::open(dir.path(), 9, 1)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("entry 2") && err.contains("encoding version 2"),
            "{err}"
        );
    }
}
