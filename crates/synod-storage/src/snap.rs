//! Snapshot files, written atomically.
//!
//! A snapshot is one file `{index:016x}-{term:016x}.snap` holding a 64-byte
//! header and the state-machine bytes. It is written to a `.tmp` file,
//! fsynced, renamed into place, and the directory is fsynced, so a crash at
//! any point leaves either the old set of snapshots or the new one. A
//! snapshot may also be streamed into a `.snap.part` file as it is encoded
//! ([`SnapStore::stream`]) and renamed into place when finished; an
//! unfinished one is removed when the directory is next opened.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::FORMAT_VERSION;
use crate::fs::{join, Fs, FsFile};
use crate::{Identity, Snapshot, SnapshotMeta};

/// Magic bytes at the start of a snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"SYNODSNP";
/// Length of the snapshot header.
pub const SNAPSHOT_HEADER_LEN: usize = 64;

/// Snapshot file name for `meta`.
pub fn snapshot_name(meta: SnapshotMeta) -> String {
    format!("{:016x}-{:016x}.snap", meta.index, meta.term)
}

/// Name of the file a snapshot for `meta` is streamed into
/// ([`SnapStore::stream`]) before it is renamed into place.
pub fn part_name(meta: SnapshotMeta) -> String {
    format!("{}.part", snapshot_name(meta))
}

/// Parse a snapshot file name.
pub fn parse_snapshot_name(name: &str) -> Option<SnapshotMeta> {
    let stem = name.strip_suffix(".snap")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some(SnapshotMeta {
        index: u64::from_str_radix(a, 16).ok()?,
        term: u64::from_str_radix(b, 16).ok()?,
    })
}

/// The header of a snapshot file; the data follows it. Written apart from
/// the data, which may be tens of megabytes: one buffer holding both would
/// copy all of it into freshly faulted pages first.
fn encode_header(id: Identity, meta: SnapshotMeta, len: u64, crc: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(SNAPSHOT_HEADER_LEN);
    v.extend_from_slice(&SNAPSHOT_MAGIC);
    v.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&id.cluster_id.to_le_bytes());
    v.extend_from_slice(&id.node_id.to_le_bytes());
    v.extend_from_slice(&meta.index.to_le_bytes());
    v.extend_from_slice(&meta.term.to_le_bytes());
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&crc.to_le_bytes());
    let hcrc = crc32c::crc32c(&v);
    v.extend_from_slice(&hcrc.to_le_bytes());
    assert_eq!(v.len(), SNAPSHOT_HEADER_LEN);
    v
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Decode and fully check a snapshot file. `expect_id` is checked if given.
pub fn decode_snapshot(
    path: &Path,
    b: &[u8],
    expect_id: Option<Identity>,
) -> Result<(Identity, Snapshot)> {
    let (id, meta) = check_snapshot(path, b, expect_id)?;
    Ok((
        id,
        Snapshot {
            meta,
            data: b[SNAPSHOT_HEADER_LEN..].to_vec(),
        },
    ))
}

/// Fully checks a snapshot file (header, identity, length and the data's
/// checksum) and returns whose and where it is; its data is
/// `b[SNAPSHOT_HEADER_LEN..]`.
fn check_snapshot(
    path: &Path,
    b: &[u8],
    expect_id: Option<Identity>,
) -> Result<(Identity, SnapshotMeta)> {
    if b.len() < SNAPSHOT_HEADER_LEN {
        return Err(Error::corrupt(
            path,
            0,
            format!(
                "snapshot file is {} bytes, shorter than its header",
                b.len()
            ),
        ));
    }
    if b[..8] != SNAPSHOT_MAGIC {
        return Err(Error::corrupt(path, 0, "bad magic, expected \"SYNODSNP\""));
    }
    let stored = u32_at(b, 60);
    let actual = crc32c::crc32c(&b[..60]);
    if stored != actual {
        return Err(Error::corrupt(
            path,
            0,
            format!(
                "snapshot header checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
            ),
        ));
    }
    let version = u32_at(b, 8);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let id = Identity {
        cluster_id: u64_at(b, 16),
        node_id: u64_at(b, 24),
    };
    if let Some(expected) = expect_id {
        if expected != id {
            return Err(Error::WrongIdentity {
                path: path.to_path_buf(),
                expected,
                found: id,
            });
        }
    }
    let meta = SnapshotMeta {
        index: u64_at(b, 32),
        term: u64_at(b, 40),
    };
    let len = u64_at(b, 48);
    let data = &b[SNAPSHOT_HEADER_LEN..];
    if data.len() as u64 != len {
        return Err(Error::corrupt(
            path,
            SNAPSHOT_HEADER_LEN as u64,
            format!("snapshot data is {} bytes, header says {len}", data.len()),
        ));
    }
    let stored = u32_at(b, 56);
    let actual = crc32c::crc32c(data);
    if stored != actual {
        return Err(Error::corrupt(
            path,
            SNAPSHOT_HEADER_LEN as u64,
            format!(
                "snapshot data checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
            ),
        ));
    }
    Ok((id, meta))
}

/// The snapshot directory.
#[derive(Clone, Debug)]
pub struct SnapStore<F: Fs> {
    fs: F,
    dir: PathBuf,
    id: Identity,
}

impl<F: Fs> SnapStore<F> {
    /// Use (and create) `dir` for snapshots of `id`.
    pub fn new(fs: F, dir: &Path, id: Identity) -> Result<Self> {
        fs.create_dir_all(dir)
            .map_err(|e| Error::io("create directory", dir, e))?;
        Ok(SnapStore {
            fs,
            dir: dir.to_path_buf(),
            id,
        })
    }

    /// Path of the file for `meta`.
    pub fn path(&self, meta: SnapshotMeta) -> PathBuf {
        join(&self.dir, &snapshot_name(meta))
    }

    /// Snapshots present, oldest first.
    pub fn list(&self) -> Result<Vec<SnapshotMeta>> {
        let names = self
            .fs
            .list(&self.dir)
            .map_err(|e| Error::io("list", &self.dir, e))?;
        let mut v: Vec<SnapshotMeta> = names
            .iter()
            .filter_map(|n| parse_snapshot_name(n))
            .collect();
        v.sort();
        Ok(v)
    }

    /// Write `snap` durably and atomically; returns its path.
    pub fn save(&self, snap: &Snapshot) -> Result<PathBuf> {
        self.save_parts(snap.meta, &[&snap.data])
    }

    /// Write a snapshot whose data is `parts` laid end to end, durably and
    /// atomically; returns its path. The file is the one [`save`](Self::save)
    /// writes for the concatenation: a caller whose data is a small prefix
    /// before a large shared buffer need not copy the buffer to join them.
    pub fn save_parts(&self, meta: SnapshotMeta, parts: &[&[u8]]) -> Result<PathBuf> {
        let path = self.path(meta);
        let tmp = join(&self.dir, &format!("{}.tmp", snapshot_name(meta)));
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let crc = parts.iter().fold(0, |c, p| crc32c::crc32c_append(c, p));
        let header = encode_header(self.id, meta, len, crc);
        let res = (|| {
            let mut f = self.fs.create(&tmp)?;
            f.write_all_at(&header, 0)?;
            let mut at = SNAPSHOT_HEADER_LEN as u64;
            for p in parts {
                for chunk in p.chunks(crate::WRITE_BACK_CHUNK) {
                    f.write_all_at(chunk, at)?;
                    f.write_back(at, chunk.len() as u64)?;
                    at += chunk.len() as u64;
                }
            }
            f.sync_data()?;
            drop(f);
            self.fs.rename(&tmp, &path)?;
            self.fs.sync_dir(&self.dir)
        })();
        res.map_err(|e| Error::io("write snapshot", &path, e))?;
        Ok(path)
    }

    /// Starts writing the snapshot `meta` as it is produced, into a file of
    /// its own that [`SnapStore::install_part`] later renames into place:
    /// the data of a large store then never sits whole in memory (encoding
    /// it into a buffer first faulted in and zeroed that much fresh memory,
    /// and the buffer was then copied into the file). `len` is the exact
    /// length of the data to come; [`SnapWriter::finish`] refuses any other.
    ///
    /// The file is not a snapshot until installed: a crash leaves it
    /// behind, and the next open removes it ([`SnapStore::remove_except`]).
    pub fn stream(&self, meta: SnapshotMeta, len: u64) -> Result<SnapWriter<F>> {
        let path = join(&self.dir, &part_name(meta));
        // A new file, not the old one truncated: a mapping of an earlier
        // one (by the process that wrote it) must keep its bytes.
        let _ = self.fs.remove_file(&path);
        let file = self
            .fs
            .create(&path)
            .map_err(|e| Error::io("create snapshot", &path, e))?;
        Ok(SnapWriter {
            file,
            path,
            id: self.id,
            meta,
            len: Some(len),
            front: 0,
            crc: 0,
            at: SNAPSHOT_HEADER_LEN as u64,
            buf: Vec::with_capacity(crate::WRITE_BACK_CHUNK),
        })
    }

    /// As [`SnapStore::stream`], for data whose length is known only once
    /// it is all written, and whose first `front` bytes depend on that
    /// length (a record's prefix that states it): they are left out, and
    /// given to [`SnapWriter::finish_front`]. The file is byte for byte the
    /// one `stream` would write. It spares the caller a walk of its state
    /// only to learn the length.
    pub fn stream_unsized(&self, meta: SnapshotMeta, front: usize) -> Result<SnapWriter<F>> {
        let mut w = self.stream(meta, 0)?;
        w.len = None;
        w.front = front as u64;
        w.at += front as u64;
        Ok(w)
    }

    /// Renames a streamed snapshot file (finished, so durable) into place as
    /// the snapshot `meta`, and makes the rename durable.
    pub fn install_part(&self, meta: SnapshotMeta, part: &Path) -> Result<PathBuf> {
        let path = self.path(meta);
        let expected = join(&self.dir, &part_name(meta));
        if part != expected {
            return Err(Error::InvalidArgument(format!(
                "{} is not the streamed file of the snapshot at index {} term {}",
                part.display(),
                meta.index,
                meta.term
            )));
        }
        self.fs
            .rename(part, &path)
            .and_then(|()| self.fs.sync_dir(&self.dir))
            .map_err(|e| Error::io("install snapshot", &path, e))?;
        Ok(path)
    }

    /// Removes a streamed snapshot file that will not be installed.
    pub fn remove_part(&self, part: &Path) -> Result<()> {
        self.fs
            .remove_file(part)
            .map_err(|e| Error::io("remove", part, e))
    }

    /// Read and verify the snapshot `meta`.
    pub fn load(&self, meta: SnapshotMeta) -> Result<Snapshot> {
        let path = self.path(meta);
        let mut bytes = self
            .fs
            .read(&path)
            .map_err(|e| Error::io("read snapshot", &path, e))?;
        let (_, meta_read) = check_snapshot(&path, &bytes, Some(self.id))?;
        // The data is most of the file: move it to the front of the buffer
        // rather than copy it into a second one (a restart's peak memory).
        bytes.drain(..SNAPSHOT_HEADER_LEN);
        let snap = Snapshot {
            meta: meta_read,
            data: bytes,
        };
        if snap.meta != meta {
            return Err(Error::corrupt(
                &path,
                0,
                format!(
                    "header says index {} term {}, file name says index {} term {}",
                    snap.meta.index, snap.meta.term, meta.index, meta.term
                ),
            ));
        }
        Ok(snap)
    }

    /// Removes the snapshot file `meta` if it exists.
    pub fn remove(&self, meta: SnapshotMeta) -> Result<()> {
        let path = self.path(meta);
        match self.fs.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("remove", &path, e)),
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("fsync directory", &self.dir, e))
    }

    /// Remove every snapshot and temp file except `keep`, and the files of
    /// unfinished streamed snapshots ([`SnapStore::stream`]) if `streamed`
    /// (at open, when nothing can be writing one); returns what was removed.
    pub fn remove_except(&self, keep: SnapshotMeta, streamed: bool) -> Result<Vec<PathBuf>> {
        let keep_name = snapshot_name(keep);
        let mut removed = Vec::new();
        let names = self
            .fs
            .list(&self.dir)
            .map_err(|e| Error::io("list", &self.dir, e))?;
        for n in names {
            let doomed = n.ends_with(".tmp")
                || parse_snapshot_name(&n).is_some()
                || (streamed && n.ends_with(".snap.part"));
            if n != keep_name && doomed {
                let p = join(&self.dir, &n);
                self.fs
                    .remove_file(&p)
                    .map_err(|e| Error::io("remove", &p, e))?;
                removed.push(p);
            }
        }
        if !removed.is_empty() {
            self.fs
                .sync_dir(&self.dir)
                .map_err(|e| Error::io("fsync directory", &self.dir, e))?;
        }
        Ok(removed)
    }
}

/// A snapshot file being written as its data is produced
/// ([`SnapStore::stream`]); an [`std::io::Write`], buffered: the data goes
/// to the file [`WRITE_BACK_CHUNK`](crate::WRITE_BACK_CHUNK) bytes at a
/// time, each pushed to the device before the next (see
/// [`FsFile::write_back`]).
pub struct SnapWriter<F: Fs> {
    file: F::File,
    path: PathBuf,
    id: Identity,
    meta: SnapshotMeta,
    /// The data's announced length (`None`: [`SnapStore::stream_unsized`]).
    len: Option<u64>,
    /// How many bytes at the start of the data [`SnapWriter::finish_front`]
    /// writes: the data written through [`std::io::Write`] follows them.
    front: u64,
    /// The checksum of the data written to the file so far (after `front`).
    crc: u32,
    /// Where the next chunk goes.
    at: u64,
    buf: Vec<u8>,
}

impl<F: Fs> SnapWriter<F> {
    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn drain(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let written = self.at - SNAPSHOT_HEADER_LEN as u64 + self.buf.len() as u64;
        if let Some(len) = self.len.filter(|&len| written > len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("snapshot data longer than the {len} bytes announced"),
            ));
        }
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.file.write_all_at(&self.buf, self.at)?;
        self.file.write_back(self.at, self.buf.len() as u64)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is buffered and the header, and makes the file durable;
    /// returns its path, for [`SnapStore::install_part`]. An error if the
    /// data written is not of the length announced.
    pub fn finish(self) -> Result<PathBuf> {
        self.finish_front(&[])
    }

    /// How many bytes of data went through [`std::io::Write`] so far (the
    /// room left in front not counted).
    pub fn written(&self) -> u64 {
        self.at - SNAPSHOT_HEADER_LEN as u64 - self.front + self.buf.len() as u64
    }

    /// [`SnapWriter::finish`] for [`SnapStore::stream_unsized`]: writes
    /// `front`, the data's first bytes, in the room left for them.
    pub fn finish_front(mut self, front: &[u8]) -> Result<PathBuf> {
        let path = self.path.clone();
        let res = (|| {
            if front.len() as u64 != self.front {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{} bytes to put in front of the snapshot data, room for {}",
                        front.len(),
                        self.front
                    ),
                ));
            }
            self.drain()?;
            let written = self.at - SNAPSHOT_HEADER_LEN as u64;
            if let Some(len) = self.len.filter(|&len| written != len) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{written} bytes of snapshot data, {len} announced"),
                ));
            }
            let mut crc = self.crc;
            if !front.is_empty() {
                let rest = (written - self.front) as usize;
                crc = crc32c::crc32c_combine(crc32c::crc32c(front), crc, rest);
                self.file.write_all_at(front, SNAPSHOT_HEADER_LEN as u64)?;
            }
            let header = encode_header(self.id, self.meta, written, crc);
            self.file.write_all_at(&header, 0)?;
            self.file.sync_data()
        })();
        res.map_err(|e| Error::io("write snapshot", &path, e))?;
        Ok(path)
    }
}

impl<F: Fs> std::io::Write for SnapWriter<F> {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let room = crate::WRITE_BACK_CHUNK - self.buf.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.buf.extend_from_slice(now);
            data = rest;
            if self.buf.len() == crate::WRITE_BACK_CHUNK {
                self.drain()?;
            }
        }
        Ok(n)
    }

    /// Writes nothing early: the buffer goes out whole chunks at a time,
    /// and the rest at [`SnapWriter::finish`].
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
