//! Durable storage for synod: a segmented, checksummed write-ahead log with
//! group commit, atomic snapshots, and crash recovery, over a small
//! file-system abstraction with a real ([`RealFs`]) and a simulated
//! ([`SimFs`]) implementation.
//!
//! The log is Raft-shaped but knows nothing of the protocol: it stores
//! [`Entry`]s `(index, term, data)`, a [`HardState`] `(term, vote, commit)`
//! and [`SnapshotMeta`] markers `(index, term)`.
//!
//! # Suffix truncation
//!
//! The log is append-only on disk. Appending an entry whose index is at or
//! below the current last index *logically replaces that entry and every
//! entry after it*: replay keeps the latest version of each index and drops
//! everything that followed the replaced one. This is how Raft log conflicts
//! are resolved.
//!
//! # Durability
//!
//! [`Storage::append`] and [`Storage::set_hard_state`] only buffer; they
//! return the record's log sequence number ([`Lsn`]). [`Storage::sync`]
//! makes everything appended so far durable with one `fdatasync` and returns
//! the [`Durable`] position. A service acknowledges a write only once the
//! durable LSN has reached it. [`Committer`] lets many threads share one
//! fsync.
//!
//! See `README.md` in this crate for the on-disk format and recovery rules.

#![warn(missing_docs)]

mod committer;
mod error;
pub mod format;
mod fs;
mod inspect;
mod memlog;
mod simfs;
mod snap;
mod storage;
mod wal;

use serde::{Deserialize, Serialize};

pub use committer::Committer;
pub use error::{Error, Result};
pub use fs::{Background, Fs, FsFile, RealFs};
pub use inspect::{dump, dump_with, verify, verify_with, VerifyReport};
pub use simfs::{SimFile, SimFs, SimStats, SECTOR};
pub use snap::{SnapStore, SnapWriter, SNAPSHOT_HEADER_LEN};
pub use storage::{DiskStorage, RealStorage, SimStorage, Storage, StorageOptions};
pub use wal::{owner, Recovered, RecoveryReport, SyncTicket, TornTail, Wal, WalOptions};

/// How much of a long background write (a snapshot, a WAL segment being
/// prepared) is written before it is pushed to the device and waited for
/// ([`FsFile::write_back`]). Measured (BENCHMARKS.md, issue 11): written
/// whole and synced at the end, three members' snapshots queued tens of MB
/// on the shared disk, and every WAL sync meanwhile waited 30-100 ms.
pub(crate) const WRITE_BACK_CHUNK: usize = 1 << 20;

/// Log sequence number: the position of a record in this process's stream
/// of appends. Every record (entry, hard state, snapshot marker) gets the
/// next number; `0` means "nothing". LSNs restart after each recovery.
pub type Lsn = u64;

/// Who a data directory belongs to. Written into every segment and snapshot
/// header; a mismatch refuses to start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// Cluster id.
    pub cluster_id: u64,
    /// Node id within the cluster.
    pub node_id: u64,
}

/// A log entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, starting at 1.
    pub index: u64,
    /// Term in which a leader created it.
    pub term: u64,
    /// Opaque payload.
    pub data: Vec<u8>,
}

/// Raft's persistent per-node state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Candidate voted for in `term` (0 = none).
    pub vote: u64,
    /// Highest index known committed.
    pub commit: u64,
}

/// Identifies a snapshot: it covers the log up to and including `index`,
/// whose entry had `term`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Last index covered.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
}

/// A snapshot: its position and the serialized state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Position.
    pub meta: SnapshotMeta,
    /// State-machine bytes (opaque to storage).
    pub data: Vec<u8>,
}

/// What is known to be on stable storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    /// Every record with an LSN at or below this is durable.
    pub lsn: Lsn,
    /// Every entry of the *current* log at or below this index is durable
    /// (an unsynced conflicting append lowers it until the next sync).
    pub last_index: u64,
}
