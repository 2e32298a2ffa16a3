//! A member's Raft records on its WAL: the driver's side of persist-then-send.
//!
//! The record mapping itself is `synod_raft_log`'s (shared with the
//! simulator); this file adds what only a real member has: the fsync
//! histogram and the slow-disk warning.

use std::path::Path;
use synod_protocols::raft::{Disk, Write};
use synod_protocols::NodeId;
use synod_raft_log::RaftLog;
use synod_storage::{Identity, RealFs, RecoveryReport, StorageOptions};

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
