//! The consensus engines a member can run (`synod serve --engine`), and
//! what each one asks of the driver besides the [`Engine`] contract: where
//! its durable records go, and how its messages travel between members.
//!
//! The driver ([`crate::member`]) is one piece of code for both: group
//! commit, persist before send, forwarding, leases and the etcd API are
//! the same. What differs is confined here:
//!
//! | | Raft ([`RaftEngine`]) | Multi-Paxos ([`MultiPaxosEngine`]) |
//! | --- | --- | --- |
//! | records | [`MemberDisk`]: Raft's log on the WAL, snapshots written on their own thread and mapped | [`PaxosDisk`]: a journal of the acceptor's records on the WAL, compacted behind an image of the whole acceptor at each snapshot |
//! | messages | [`PeerMsg::Raft`] | [`PeerMsg::Paxos`] |
//! | leadership handoff | transferred to the most up-to-date voter | by election only: a planned stop hands nothing |
//! | learners | yes | no (a member joins as a voter) |

use crate::disk::{DiskMeters, MemberDisk, SyncJob};
use crate::peer::PeerMsg;
use std::path::Path;
use synod_kv::engine::{Engine, MultiPaxosEngine, RaftEngine, Stamped};
use synod_kv::Command;
use synod_protocols::multipaxos::{self as mp, Msg};
use synod_protocols::raft::{Message, Payload, PAYLOAD_VERSION};
use synod_protocols::NodeId;
use synod_raft_log::paxos::PaxosLog;
use synod_raft_log::StreamedSnapshot;
use synod_storage::{Identity, RealFs, RecoveryReport, SnapStore, StorageOptions};

/// Which engine a member runs (`--engine`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineChoice {
    #[default]
    Raft,
    MultiPaxos,
}

impl EngineChoice {
    pub fn name(self) -> &'static str {
        match self {
            EngineChoice::Raft => "raft",
            EngineChoice::MultiPaxos => "multipaxos",
        }
    }
}

impl std::str::FromStr for EngineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<EngineChoice, String> {
        [EngineChoice::Raft, EngineChoice::MultiPaxos]
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown engine {s:?} (raft, multipaxos)"))
    }
}

/// A member's durable records for engine `E`.
pub trait EngineDisk<E: Engine>: Sized + Send + 'static {
    /// Opens (or creates) `dir` for member `node` of cluster `cluster`:
    /// the engine's image as recovered, and what recovery had to repair.
    fn open(
        dir: &Path,
        cluster: u64,
        node: NodeId,
    ) -> synod_storage::Result<(Self, E::Disk, RecoveryReport)>;
    /// Reports every sync's time and the WAL's bytes to these.
    fn set_meters(&mut self, m: DiskMeters);
    /// Makes a round's records durable with one sync (group commit).
    fn persist(&mut self, writes: &[E::Write]) -> synod_storage::Result<()>;
    /// Writes a round's records and returns the sync that makes them
    /// durable, to run on the member's sync thread while the next round
    /// steps; `None` if nothing is left to sync. A disk that syncs on the
    /// caller's thread only ([`EngineDisk::persist`]) never returns one.
    fn write(&mut self, writes: &[E::Write]) -> synod_storage::Result<Option<SyncJob>> {
        self.persist(writes).map(|()| None)
    }
    /// The outcome of a sync [`EngineDisk::write`] returned, `took` long.
    fn finish_sync(
        &mut self,
        job: SyncJob,
        result: std::io::Result<()>,
        took: std::time::Duration,
    ) -> synod_storage::Result<()> {
        let _ = (job, result, took);
        unreachable!("a disk whose `write` hands out no sync is asked to finish one")
    }
    /// Between rounds, with no sync in flight: finishes work done off the
    /// member's thread.
    fn poll(&mut self) -> synod_storage::Result<()> {
        Ok(())
    }
    /// The latest durable snapshot's data, mapped from its file, once.
    fn take_mapped(&mut self) -> Option<(u64, Payload)> {
        None
    }
    /// A snapshot file written as its image was encoded, for the engine's
    /// next snapshot if it is that one.
    fn offer_streamed(&mut self, streamed: StreamedSnapshot) {
        drop(streamed);
    }
    /// Where a snapshot's file may be streamed from another thread, if
    /// this disk takes such files.
    fn snap_store(&self) -> Option<SnapStore<RealFs>> {
        None
    }
    /// For the recovery log line: the snapshot's index and the records
    /// after it.
    fn summary(disk: &E::Disk) -> (u64, usize);
}

/// An engine the service can run.
pub trait Served: Engine<Msg: Send, Write: Send> + Send + 'static {
    type Log: EngineDisk<Self>;
    const NAME: &'static str;
    fn wrap(msg: Self::Msg) -> PeerMsg;
    /// This engine's message, or `Err` with what came instead (a peer that
    /// runs the other engine).
    fn unwrap(msg: PeerMsg) -> Result<Self::Msg, PeerMsg>;
    /// The round of a leader's heartbeat, and of the answer to one (for
    /// the peer round-trip metric).
    fn heartbeat(msg: &Self::Msg) -> Option<u64>;
    fn heartbeat_answer(msg: &Self::Msg) -> Option<u64>;
    /// The index and size of a snapshot the message carries (logged).
    fn snapshot(msg: &Self::Msg) -> Option<(u64, usize)>;
}

impl EngineDisk<RaftEngine> for MemberDisk {
    fn open(
        dir: &Path,
        cluster: u64,
        node: NodeId,
    ) -> synod_storage::Result<(Self, synod_protocols::raft::Disk, RecoveryReport)> {
        MemberDisk::open(dir, cluster, node)
    }

    fn set_meters(&mut self, m: DiskMeters) {
        self.meters = Some(m);
    }

    fn persist(&mut self, writes: &[synod_protocols::raft::Write]) -> synod_storage::Result<()> {
        MemberDisk::persist(self, writes)
    }

    fn write(
        &mut self,
        writes: &[synod_protocols::raft::Write],
    ) -> synod_storage::Result<Option<SyncJob>> {
        MemberDisk::write(self, writes)
    }

    fn finish_sync(
        &mut self,
        job: SyncJob,
        result: std::io::Result<()>,
        took: std::time::Duration,
    ) -> synod_storage::Result<()> {
        MemberDisk::finish_sync(self, job, result, took)
    }

    fn poll(&mut self) -> synod_storage::Result<()> {
        MemberDisk::poll(self)
    }

    fn take_mapped(&mut self) -> Option<(u64, Payload)> {
        MemberDisk::take_mapped(self)
    }

    fn offer_streamed(&mut self, streamed: StreamedSnapshot) {
        MemberDisk::offer_streamed(self, streamed)
    }

    fn snap_store(&self) -> Option<SnapStore<RealFs>> {
        Some(MemberDisk::snap_store(self))
    }

    fn summary(disk: &synod_protocols::raft::Disk) -> (u64, usize) {
        let snap = disk.snapshot.as_ref().map_or(0, |s| s.meta.index);
        (snap, disk.entries.len())
    }
}

impl Served for RaftEngine {
    type Log = MemberDisk;
    const NAME: &'static str = "raft";

    fn wrap(msg: Message) -> PeerMsg {
        PeerMsg::Raft(msg)
    }

    fn unwrap(msg: PeerMsg) -> Result<Message, PeerMsg> {
        match msg {
            PeerMsg::Raft(m) => Ok(m),
            other => Err(other),
        }
    }

    fn heartbeat(msg: &Message) -> Option<u64> {
        match msg {
            Message::Heartbeat { ctx, .. } => Some(*ctx),
            _ => None,
        }
    }

    fn heartbeat_answer(msg: &Message) -> Option<u64> {
        match msg {
            Message::HeartbeatResp { ctx, .. } => Some(*ctx),
            _ => None,
        }
    }

    fn snapshot(msg: &Message) -> Option<(u64, usize)> {
        match msg {
            Message::InstallSnapshot { snapshot, .. } => {
                Some((snapshot.meta.index, snapshot.data.0.len()))
            }
            _ => None,
        }
    }
}

/// The Multi-Paxos acceptor's records ([`PaxosLog`]), with the checks a
/// member makes before it trusts them.
///
/// The image of a snapshot the member takes of its own slots is encoded
/// and written on a thread of its own
/// ([`synod_raft_log::paxos::DeferredImage`]), as Raft's snapshots are
/// ([`MemberDisk`]), so that no request waits while the whole store is
/// encoded and synced. The journal keeps what the image stands for until
/// it is adopted ([`PaxosDisk::poll`]).
pub struct PaxosDisk {
    log: PaxosLog<RealFs, Stamped>,
    meters: Option<DiskMeters>,
    /// The image being written, if any (at most one at a time).
    saving: Option<std::thread::JoinHandle<synod_storage::Result<synod_storage::SnapshotMeta>>>,
}

impl PaxosDisk {
    /// Waits for the image being written, if any, and adopts it.
    fn finish_saving(&mut self) -> synod_storage::Result<()> {
        let Some(thread) = self.saving.take() else {
            return Ok(());
        };
        let meta = thread.join().unwrap_or_else(|_| {
            Err(synod_storage::Error::InvalidArgument(
                "the thread writing the journal's image panicked".into(),
            ))
        })?;
        let adopted = self.log.adopt(meta)?;
        tracing::debug!(index = meta.index, adopted, "journal image saved");
        Ok(())
    }
}

impl Drop for PaxosDisk {
    /// A stopping member leaves no writer behind in its directory.
    fn drop(&mut self) {
        if let Some(t) = self.saving.take() {
            let _ = t.join();
        }
    }
}

/// Refuses records this build cannot apply, naming them, rather than fail
/// half-way through the replay.
fn paxos_readable(dir: &Path, disk: &mp::Disk<Stamped>) -> synod_storage::Result<()> {
    let refuse = |detail: String| synod_storage::Error::Inconsistent {
        path: dir.to_path_buf(),
        detail,
    };
    if let Some(s) = &disk.snapshot {
        let version = s.data.0.first().copied();
        if version != Some(PAYLOAD_VERSION) {
            return Err(refuse(format!(
                "the snapshot at slot {} is in encoding {version:?}; this build reads {PAYLOAD_VERSION}",
                s.slot
            )));
        }
    }
    let accepted = disk.accepted.iter().map(|(s, (_, c))| (s, c));
    for (slot, cmd) in accepted.chain(disk.learned.iter()) {
        if let mp::Command::App(stamped) = cmd {
            stamped.data.try_decode::<Command>().map_err(|err| {
                refuse(format!(
                    "slot {slot} holds no command this build reads: {err}"
                ))
            })?;
        }
    }
    Ok(())
}

impl EngineDisk<MultiPaxosEngine> for PaxosDisk {
    fn open(
        dir: &Path,
        cluster: u64,
        node: NodeId,
    ) -> synod_storage::Result<(Self, mp::Disk<Stamped>, RecoveryReport)> {
        let id = Identity {
            cluster_id: cluster,
            node_id: node,
        };
        let (log, disk, report) = PaxosLog::open(RealFs, dir, id, StorageOptions::default())?;
        paxos_readable(dir, &disk)?;
        let disk_handle = PaxosDisk {
            log,
            meters: None,
            saving: None,
        };
        Ok((disk_handle, disk, report))
    }

    fn set_meters(&mut self, m: DiskMeters) {
        self.meters = Some(m);
    }

    /// Every record of the acceptor must be durable before what depends on
    /// it leaves, so every round with records syncs.
    fn persist(&mut self, writes: &[mp::Write<Stamped>]) -> synod_storage::Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        if writes.iter().any(|w| matches!(w, mp::Write::Snapshot(_))) {
            // One image file at a time: saving one removes the others.
            self.finish_saving()?;
        }
        let started = std::time::Instant::now();
        let deferred = self.log.persist_deferring(writes)?;
        let took = started.elapsed();
        if let Some(d) = deferred {
            let thread = std::thread::Builder::new()
                .name("synod-journal-image".into())
                .spawn(move || {
                    crate::disk::background_priority();
                    d.write()
                })
                .map_err(|source| synod_storage::Error::Io {
                    op: "start the journal image writer",
                    path: self.log.dir().to_path_buf(),
                    source,
                })?;
            self.saving = Some(thread);
        }
        if let Some(m) = &mut self.meters {
            m.synced(took, self.log.wal_bytes_written());
        }
        if took >= std::time::Duration::from_secs(1) {
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                "slow write and fdatasync"
            );
        }
        Ok(())
    }

    fn poll(&mut self) -> synod_storage::Result<()> {
        if self.saving.as_ref().is_some_and(|t| t.is_finished()) {
            self.finish_saving()?;
        }
        Ok(())
    }

    fn summary(disk: &mp::Disk<Stamped>) -> (u64, usize) {
        (disk.compacted(), disk.accepted.len() + disk.learned.len())
    }
}

impl Served for MultiPaxosEngine {
    type Log = PaxosDisk;
    const NAME: &'static str = "multipaxos";

    fn wrap(msg: Msg<Stamped>) -> PeerMsg {
        PeerMsg::Paxos(msg)
    }

    fn unwrap(msg: PeerMsg) -> Result<Msg<Stamped>, PeerMsg> {
        match msg {
            PeerMsg::Paxos(m) => Ok(m),
            other => Err(other),
        }
    }

    fn heartbeat(msg: &Msg<Stamped>) -> Option<u64> {
        match msg {
            Msg::Heartbeat { round, .. } => Some(*round),
            _ => None,
        }
    }

    fn heartbeat_answer(msg: &Msg<Stamped>) -> Option<u64> {
        match msg {
            Msg::HeartbeatResp { round, .. } => Some(*round),
            _ => None,
        }
    }

    fn snapshot(msg: &Msg<Stamped>) -> Option<(u64, usize)> {
        match msg {
            Msg::Snapshot(s)
            | Msg::Promise {
                snapshot: Some(s), ..
            } => Some((s.slot, s.data.0.len())),
            _ => None,
        }
    }
}
