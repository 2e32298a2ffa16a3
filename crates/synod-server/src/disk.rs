//! A member's Raft records on its WAL: the driver's side of persist-then-send.
//!
//! The record mapping itself is `synod_raft_log`'s (shared with the
//! simulator); this file adds what only a real member has: the fsync
//! histogram and the slow-disk warning.

use std::path::Path;
use synod_kv::replica::StoreImage;
use synod_kv::Command;
use synod_protocols::raft::{Disk, Write};
use synod_protocols::raft::{EntryData, Payload, PAYLOAD_VERSION};
use synod_protocols::NodeId;
use synod_raft_log::{RaftLog, SnapshotStream, StreamedSnapshot};
use synod_storage::{Identity, RealFs, RecoveryReport, SnapStore, StorageOptions};

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
///
/// A snapshot the member takes of its own state is written on a thread of
/// its own (see `synod_raft_log::DeferredSnapshot`): encoding, writing and
/// syncing a store of tens of megabytes took a few hundred milliseconds, and
/// every write of the member waited behind it. The log keeps what the
/// snapshot covers until its file is durable and adopted ([`MemberDisk::poll`]).
pub struct MemberDisk {
    log: RaftLog<RealFs>,
    pub meters: Option<DiskMeters>,
    /// The snapshot being written, if any (at most one at a time).
    saving: Option<Saving>,
    /// The data of the latest durable snapshot, mapped from its file, for
    /// the core to keep instead of its heap copy ([`MemberDisk::take_mapped`]).
    mapped: Option<(u64, Payload)>,
    /// A snapshot file written as its data was encoded, for the core's next
    /// snapshot if it is that one ([`MemberDisk::offer_streamed`]).
    streamed: Option<StreamedSnapshot>,
}

/// What a member's disk reports of itself: how long every sync took
/// (`etcd_disk_wal_fsync_duration_seconds`) and the bytes written to the
/// WAL (`etcd_disk_wal_write_bytes_total`).
pub struct DiskMeters {
    fsync: prometheus::Histogram,
    wal_written: prometheus::IntCounter,
    /// The WAL's own count when last reported.
    reported: u64,
}

impl DiskMeters {
    pub fn new(fsync: prometheus::Histogram, wal_written: prometheus::IntCounter) -> DiskMeters {
        DiskMeters {
            fsync,
            wal_written,
            reported: 0,
        }
    }

    /// A sync that took `took`, with `written` bytes written to the WAL
    /// since it was opened.
    pub fn synced(&mut self, took: std::time::Duration, written: u64) {
        self.fsync.observe(took.as_secs_f64());
        self.wal_written
            .inc_by(written.saturating_sub(self.reported));
        self.reported = written;
    }
}

/// A sync of the WAL that may run on another thread: `sync()` there, then
/// hand the outcome to [`MemberDisk::finish_sync`].
pub type SyncJob = synod_storage::SyncTicket<std::fs::File>;

struct Saving {
    index: u64,
    /// The length of the snapshot's data (what the mapped file must hold).
    len: usize,
    thread: std::thread::JoinHandle<synod_storage::Result<synod_storage::SnapshotMeta>>,
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
        let mut disk_handle = MemberDisk {
            log,
            meters: None,
            saving: None,
            mapped: None,
            streamed: None,
        };
        if let Some(s) = &disk.snapshot {
            disk_handle.map(s.meta.index, s.meta.term, s.data.0.len());
        }
        Ok((disk_handle, disk, report))
    }

    /// Writes a batch of records and makes them durable with one sync (group
    /// commit: every step whose output is in the batch shares it), on this
    /// thread.
    pub fn persist(&mut self, writes: &[Write]) -> synod_storage::Result<()> {
        match self.write(writes)? {
            Some(mut job) => {
                let started = std::time::Instant::now();
                let result = job.sync();
                self.finish_sync(job, result, started.elapsed())
            }
            None => Ok(()),
        }
    }

    /// Writes a batch of records and returns the sync that makes them
    /// durable, for the member's sync thread, or `None` if there is nothing
    /// to sync. Until [`MemberDisk::finish_sync`] has its outcome, nothing
    /// else may be written. A snapshot of the member's own log is written on
    /// another thread instead.
    pub fn write(&mut self, writes: &[Write]) -> synod_storage::Result<Option<SyncJob>> {
        if writes.is_empty() {
            return Ok(None);
        }
        if writes.iter().any(|w| matches!(w, Write::Snapshot(_))) {
            // One snapshot file at a time: saving one removes the others.
            self.finish_saving()?;
        }
        let mut deferred = None;
        for w in writes {
            match self.log.write_deferring(w)? {
                Some(d) => deferred = Some(d),
                // A snapshot written now (installed from the leader) replaces
                // the log, and any snapshot of it taken earlier in the batch.
                // Its file is durable already.
                None => {
                    if let Write::Snapshot(snap) = w {
                        deferred = None;
                        self.map(snap.meta.index, snap.meta.term, snap.data.0.len());
                    }
                }
            }
        }
        if let Some(d) = deferred {
            let index = d.meta().index;
            let len = d.data_len();
            let streamed = self.streamed.take();
            let thread = std::thread::Builder::new()
                .name("synod-snapshot".into())
                .spawn(move || {
                    background_priority();
                    match streamed {
                        Some(s) => d.write_streamed(s),
                        None => d.write(),
                    }
                })
                .map_err(|source| synod_storage::Error::Io {
                    op: "start the snapshot writer",
                    path: self.log.dir().to_path_buf(),
                    source,
                })?;
            self.saving = Some(Saving { index, len, thread });
        }
        if !writes.iter().any(Write::must_sync) {
            // Only the commit index moved: the next sync takes it along (a
            // power cut may lose it, and the leader tells us again).
            return Ok(None);
        }
        self.log.begin_sync()
    }

    /// Takes the outcome of a sync [`MemberDisk::write`] returned, `took`
    /// long. A failed sync poisons the log: every later write fails too.
    pub fn finish_sync(
        &mut self,
        job: SyncJob,
        result: std::io::Result<()>,
        took: std::time::Duration,
    ) -> synod_storage::Result<()> {
        self.log.finish_sync(job, result)?;
        if let Some(m) = &mut self.meters {
            m.synced(took, self.log.wal_bytes_written());
        }
        // etcd warns of syncs over a second: the disk is too slow for the
        // election timeout, and leaders will be lost.
        if took >= std::time::Duration::from_secs(1) {
            tracing::warn!(took_ms = took.as_millis() as u64, "slow fdatasync");
        }
        Ok(())
    }

    /// Keeps `streamed` for the snapshot the core takes next (installed
    /// instead of written, if it is that one); one offered earlier and not
    /// taken is removed.
    pub fn offer_streamed(&mut self, streamed: StreamedSnapshot) {
        if let Some(old) = self.streamed.replace(streamed) {
            old.discard(&self.log.snap_store());
        }
    }

    /// The snapshot directory, for [`stream_snapshot`] on another thread.
    pub fn snap_store(&self) -> SnapStore<RealFs> {
        self.log.snap_store()
    }

    /// Adopts the snapshot being written once its file is durable (the log
    /// is then cut at it); call between rounds.
    pub fn poll(&mut self) -> synod_storage::Result<()> {
        if self.saving.as_ref().is_some_and(|s| s.thread.is_finished()) {
            self.finish_saving()?;
        }
        Ok(())
    }

    /// Waits for the snapshot being written, if any, and adopts it.
    fn finish_saving(&mut self) -> synod_storage::Result<()> {
        let Some(s) = self.saving.take() else {
            return Ok(());
        };
        let meta = s.thread.join().unwrap_or_else(|_| {
            Err(synod_storage::Error::InvalidArgument(format!(
                "the thread writing the snapshot at index {} panicked",
                s.index
            )))
        })?;
        let adopted = self.log.adopt(meta)?;
        tracing::debug!(index = meta.index, adopted, "snapshot saved");
        if adopted {
            self.map(meta.index, meta.term, s.len);
        }
        Ok(())
    }

    /// The data of the latest durable snapshot, mapped from its file, once:
    /// hand it to the core (`Replica::share_snapshot_data`), whose heap copy
    /// of the whole state is then freed. Resident memory then holds only the
    /// pages a follower's catch-up reads, and the kernel may drop those again.
    pub fn take_mapped(&mut self) -> Option<(u64, Payload)> {
        self.mapped.take()
    }

    /// Maps the data of the snapshot file at `index`/`term`. Best effort: a
    /// file that cannot be mapped leaves the heap copy in place (and says so).
    fn map(&mut self, index: u64, term: u64, len: usize) {
        let path = self
            .log
            .snapshot_path(synod_storage::SnapshotMeta { index, term });
        match map_snapshot_data(&path, len) {
            Ok(data) => self.mapped = Some((index, data)),
            Err(e) => tracing::warn!(path = %path.display(), "cannot map the snapshot: {e}"),
        }
    }
}

/// Writes the snapshot at `meta` of `image` to its file as it is encoded
/// ([`SnapshotStream`]), and maps the file's data: what the core keeps and
/// sends to followers, and what [`MemberDisk::offer_streamed`] takes.
pub fn stream_snapshot(
    snaps: &SnapStore<RealFs>,
    meta: synod_protocols::raft::SnapshotMeta,
    image: &StoreImage,
) -> synod_storage::Result<(Payload, StreamedSnapshot)> {
    let streamed =
        SnapshotStream::start_unsized(snaps, meta)?.write_with(|s| image.encode_to(s))?;
    match map_snapshot_data(&streamed.path, streamed.data_len as usize) {
        Ok(data) => Ok((data, streamed)),
        Err(source) => {
            let path = streamed.path.clone();
            streamed.discard(snaps);
            Err(synod_storage::Error::Io {
                op: "map snapshot",
                path,
                source,
            })
        }
    }
}

/// The last `len` bytes of the snapshot file at `path` (where a snapshot
/// record keeps its data), mapped read-only.
fn map_snapshot_data(path: &Path, len: usize) -> std::io::Result<Payload> {
    let file = std::fs::File::open(path)?;
    // SAFETY: a snapshot file is written once under a temporary name,
    // synced and renamed into place, and never written again; it is only
    // removed, which leaves a mapping of it intact. A streamed one is mapped
    // once finished (synced) under its `.part` name, which a new stream of
    // the same snapshot unlinks rather than truncates. So the mapped bytes do
    // not change while any `Bytes` of them lives.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let total = map.len();
    if total < synod_storage::SNAPSHOT_HEADER_LEN + len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{total} bytes cannot hold a snapshot of {len} bytes of data"),
        ));
    }
    let data = bytes::Bytes::from_owner(map).slice(total - len..);
    if len > 0 && data[0] != PAYLOAD_VERSION {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "its data starts with {:#04x}, not encoding {PAYLOAD_VERSION}",
                data[0]
            ),
        ));
    }
    Ok(Payload(data))
}

impl Drop for MemberDisk {
    /// A stopping member leaves no writer behind in its directory (a
    /// restart in the same process would open it meanwhile).
    fn drop(&mut self) {
        if let Some(s) = self.saving.take() {
            let _ = s.thread.join();
        }
    }
}

/// Lowers the calling thread's CPU priority to the least (nice 19). For the
/// snapshot threads: on a busy machine they otherwise take the cores from
/// the member and gRPC threads for as long as they encode and write tens of
/// megabytes, which showed as the puts' p99 (see BENCHMARKS.md). They still
/// run whenever a core is free. Best effort: a refusal changes nothing else.
pub fn background_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take no pointers; on Linux
    // PRIO_PROCESS with a thread id applies to that thread alone.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
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
        let newer = EntryData::App(Payload(vec![PAYLOAD_VERSION + 1, 0, 0].into()));
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
        let newer = format!("encoding version {}", PAYLOAD_VERSION + 1);
        assert!(err.contains("entry 2") && err.contains(&newer), "{err}");
    }
}
