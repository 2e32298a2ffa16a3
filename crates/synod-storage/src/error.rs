//! The crate's error type.
//!
//! Every variant carries enough context (a path, an offset, what was expected
//! and what was found) for an operator to act on the message without reading
//! the source.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::Identity;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors returned by the WAL, the snapshot store and the inspection tools.
#[derive(Debug)]
pub enum Error {
    /// An operating-system (or simulated-disk) I/O call failed.
    Io {
        /// What the crate was doing, e.g. `"fdatasync"`.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Stored bytes fail validation: a checksum mismatch, a malformed record,
    /// an impossible length. The data directory must not be used until an
    /// operator has looked at it.
    Corrupt {
        /// File holding the bad bytes.
        path: PathBuf,
        /// Byte offset of the bad record or header within that file.
        offset: u64,
        /// What was expected and what was found.
        detail: String,
    },
    /// Every record checksums fine but the log as a whole does not make sense
    /// (a missing segment, a gap in entry indexes, a snapshot file the log
    /// refers to is absent).
    Inconsistent {
        /// The file or directory where the problem was noticed.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The data directory belongs to another cluster or another node.
    WrongIdentity {
        /// The file whose header names the other identity.
        path: PathBuf,
        /// The identity this process was started with.
        expected: Identity,
        /// The identity recorded on disk.
        found: Identity,
    },
    /// The data directory was written by an unknown format version.
    UnsupportedVersion {
        /// The file with the unknown version.
        path: PathBuf,
        /// The version number found in its header.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// The caller asked for something the log cannot do (e.g. appending an
    /// entry that would leave a gap in the indexes).
    InvalidArgument(String),
    /// An earlier write or sync failed, so the WAL no longer knows what is on
    /// disk. It refuses all further work; the process must restart and
    /// recover from what is durable.
    Poisoned(String),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        detail: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            path: path.into(),
            offset,
            detail: detail.into(),
        }
    }

    pub(crate) fn inconsistent(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Error::Inconsistent {
            path: path.into(),
            detail: detail.into(),
        }
    }

    /// True for errors that mean "the stored data cannot be trusted":
    /// corruption, inconsistency, wrong identity or unknown version.
    pub fn is_data_error(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. }
                | Error::Inconsistent { .. }
                | Error::WrongIdentity { .. }
                | Error::UnsupportedVersion { .. }
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, path, source } => {
                write!(f, "{op} failed on {}: {source}", path.display())
            }
            Error::Corrupt {
                path,
                offset,
                detail,
            } => write!(
                f,
                "corrupt data in {} at offset {offset}: {detail}; refusing to use this data \
                 directory (restore this node from a healthy replica or a backup)",
                path.display()
            ),
            Error::Inconsistent { path, detail } => {
                write!(
                    f,
                    "inconsistent data directory at {}: {detail}",
                    path.display()
                )
            }
            Error::WrongIdentity {
                path,
                expected,
                found,
            } => write!(
                f,
                "{} belongs to cluster {:#018x} node {}, but this process is cluster {:#018x} \
                 node {}; refusing to start (is the data directory or the node id wrong?)",
                path.display(),
                found.cluster_id,
                found.node_id,
                expected.cluster_id,
                expected.node_id
            ),
            Error::UnsupportedVersion {
                path,
                found,
                supported,
            } => write!(
                f,
                "{} has WAL format version {found}, but this build only understands version \
                 {supported}",
                path.display()
            ),
            Error::InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
            Error::Poisoned(msg) => write!(
                f,
                "storage stopped after an earlier failure ({msg}); restart the process to \
                 recover from what is durable"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
