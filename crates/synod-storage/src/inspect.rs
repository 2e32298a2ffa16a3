//! Offline inspection of a data directory: `synod wal verify` and
//! `synod wal dump`.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{Record, Tail};
use crate::fs::{join, Fs, RealFs};
use crate::snap::{decode_snapshot, parse_snapshot_name};
use crate::wal::{list_segments, replay, TornTail};
use crate::{HardState, Identity, SnapshotMeta};

/// What `verify` found in a healthy data directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The WAL directory checked.
    pub wal_dir: PathBuf,
    /// Owner recorded in the headers.
    pub identity: Identity,
    /// Segment files.
    pub segments: usize,
    /// Records read.
    pub records: u64,
    /// Index of the first live entry (snapshot index + 1).
    pub first_index: u64,
    /// Index of the last entry.
    pub last_index: u64,
    /// Latest hard state.
    pub hard_state: HardState,
    /// Latest snapshot marker in the log.
    pub snapshot: SnapshotMeta,
    /// Snapshot files found and verified.
    pub snapshot_files: Vec<PathBuf>,
    /// A torn final write that the next start will cut off (not an error).
    pub torn_tail: Option<TornTail>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "wal directory: {}", self.wal_dir.display())?;
        writeln!(
            f,
            "owner: cluster {:#018x} node {}",
            self.identity.cluster_id, self.identity.node_id
        )?;
        writeln!(
            f,
            "segments: {}, records: {}, entries: {}..={}",
            self.segments, self.records, self.first_index, self.last_index
        )?;
        writeln!(
            f,
            "hard state: term {} vote {} commit {}",
            self.hard_state.term, self.hard_state.vote, self.hard_state.commit
        )?;
        writeln!(
            f,
            "snapshot: index {} term {} ({} snapshot files verified)",
            self.snapshot.index,
            self.snapshot.term,
            self.snapshot_files.len()
        )?;
        match &self.torn_tail {
            Some(t) => writeln!(f, "torn tail (repaired at next start): {t}")?,
            None => writeln!(f, "tail: clean")?,
        }
        write!(f, "OK: all checksums verified")
    }
}

/// `DIR/wal` if it exists, else `DIR` itself (so both the data directory and
/// its `wal` subdirectory are accepted).
fn dirs<F: Fs>(fs: &F, dir: &Path) -> (PathBuf, PathBuf) {
    let wal = dir.join("wal");
    if fs.exists(&wal) {
        (wal, dir.join("snap"))
    } else {
        let snap = dir.parent().map(|p| p.join("snap")).unwrap_or_default();
        (dir.to_path_buf(), snap)
    }
}

/// Check every segment and snapshot file under `dir` on the real disk.
/// Returns an error naming the file and offset of the first problem.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    verify_with(&RealFs, dir)
}

/// [`verify`] on any file system.
pub fn verify_with<F: Fs>(fs: &F, dir: &Path) -> Result<VerifyReport> {
    let (wal_dir, snap_dir) = dirs(fs, dir);
    if !fs.exists(&wal_dir) {
        return Err(Error::io(
            "open",
            &wal_dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        ));
    }
    let (segs, _) = list_segments(fs, &wal_dir)?;
    if segs.is_empty() {
        return Err(Error::inconsistent(
            &wal_dir,
            "no WAL segment files (*.wal) found",
        ));
    }
    let rp = replay(fs, &wal_dir, &segs, None, &mut |_, _, _| {})?;
    let mut snapshot_files = Vec::new();
    if fs.exists(&snap_dir) {
        for name in fs
            .list(&snap_dir)
            .map_err(|e| Error::io("list", &snap_dir, e))?
        {
            let Some(meta) = parse_snapshot_name(&name) else {
                continue;
            };
            let p = join(&snap_dir, &name);
            let bytes = fs.read(&p).map_err(|e| Error::io("read", &p, e))?;
            let (_, snap) = decode_snapshot(&p, &bytes, Some(rp.identity))?;
            if snap.meta != meta {
                return Err(Error::corrupt(&p, 0, "header does not match the file name"));
            }
            snapshot_files.push(p);
        }
    }
    if rp.snapshot.index > 0
        && !snapshot_files.iter().any(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_snapshot_name)
                == Some(rp.snapshot)
        })
    {
        return Err(Error::inconsistent(
            &snap_dir,
            format!(
                "the log records a snapshot at index {} term {}, but its file is missing",
                rp.snapshot.index, rp.snapshot.term
            ),
        ));
    }
    let last = segs.last().expect("non-empty");
    let torn_tail = match rp.tail {
        Tail::Clean => None,
        Tail::Torn {
            offset,
            bytes,
            reason,
        } => Some(TornTail {
            path: join(&wal_dir, &last.2),
            offset,
            bytes,
            reason,
        }),
    };
    Ok(VerifyReport {
        wal_dir,
        identity: rp.identity,
        segments: segs.len(),
        records: rp.records,
        first_index: rp.snapshot.index + 1,
        last_index: rp.log.last_index(),
        hard_state: rp.hard_state,
        snapshot: rp.snapshot,
        snapshot_files,
        torn_tail,
    })
}

fn preview(data: &[u8]) -> String {
    let mut s: String = data.iter().take(16).map(|b| format!("{b:02x}")).collect();
    if data.len() > 16 {
        s.push_str("...");
    }
    s
}

/// Print every segment header and record under `dir` (real disk) to `out`,
/// one line each, then every snapshot file. Stops at the first corrupt
/// record, after printing the good ones before it, and returns its error.
pub fn dump(dir: &Path, out: impl Write) -> Result<()> {
    dump_with(&RealFs, dir, out)
}

/// [`dump`] on any file system.
pub fn dump_with<F: Fs>(fs: &F, dir: &Path, mut out: impl Write) -> Result<()> {
    let (wal_dir, snap_dir) = dirs(fs, dir);
    let (segs, _) = list_segments(fs, &wal_dir)?;
    let stdout_err = |e: std::io::Error| Error::io("write output", "<output>", e);
    let mut current: Option<PathBuf> = None;
    let mut write_err = None;
    let res = replay(fs, &wal_dir, &segs, None, &mut |path, off, rec| {
        if write_err.is_some() {
            return;
        }
        let mut line = String::new();
        if current.as_deref() != Some(path) {
            current = Some(path.to_path_buf());
            line.push_str(&format!("segment {}\n", path.display()));
        }
        line.push_str(&match rec {
            Record::Entry(e) => format!(
                "  @{off} entry index={} term={} len={} data={}",
                e.index,
                e.term,
                e.data.len(),
                preview(&e.data)
            ),
            Record::HardState(h) => format!(
                "  @{off} hardstate term={} vote={} commit={}",
                h.term, h.vote, h.commit
            ),
            Record::Snapshot(s) => format!("  @{off} snapshot index={} term={}", s.index, s.term),
        });
        if let Err(e) = writeln!(out, "{line}") {
            write_err = Some(e);
        }
    });
    if let Some(e) = write_err {
        return Err(stdout_err(e));
    }
    let rp = res?;
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(stdout_err);
    w(
        &mut out,
        format!(
            "owner: cluster {:#018x} node {}; last index {}; hard state term {} vote {} commit {}",
            rp.identity.cluster_id,
            rp.identity.node_id,
            rp.log.last_index(),
            rp.hard_state.term,
            rp.hard_state.vote,
            rp.hard_state.commit
        ),
    )?;
    if let Tail::Torn {
        offset,
        bytes,
        reason,
    } = &rp.tail
    {
        w(
            &mut out,
            format!("torn tail at offset {offset}: {bytes} bytes ({reason})"),
        )?;
    }
    if fs.exists(&snap_dir) {
        for name in fs
            .list(&snap_dir)
            .map_err(|e| Error::io("list", &snap_dir, e))?
        {
            if parse_snapshot_name(&name).is_none() {
                continue;
            }
            let p = join(&snap_dir, &name);
            let bytes = fs.read(&p).map_err(|e| Error::io("read", &p, e))?;
            let (_, s) = decode_snapshot(&p, &bytes, Some(rp.identity))?;
            w(
                &mut out,
                format!(
                    "snapshot {}: index={} term={} bytes={} checksum ok",
                    p.display(),
                    s.meta.index,
                    s.meta.term,
                    s.data.len()
                ),
            )?;
        }
    }
    Ok(())
}
