//! The segmented write-ahead log.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{
    self, encode_record, encode_segment_header, parse_segment_name, segment_name, Record,
    SegmentHeader, Tail, FORMAT_VERSION, SEGMENT_HEADER_LEN,
};
use crate::fs::{join, Background, Fs, FsFile};
use crate::memlog::MemLog;
use crate::{Durable, Entry, HardState, Identity, Lsn, SnapshotMeta};

/// Tuning knobs for the WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// Start a new segment once the current one reaches this many bytes.
    pub segment_size: u64,
    /// Zero-fill the segment ahead of the write position, so that syncs
    /// overwrite already-allocated blocks and need no metadata update.
    /// Measured to more than double the single-record sync rate on ext4
    /// (see BENCHMARKS-storage.md). Also prepares each next segment, whole
    /// and zero-filled, while the current one is written ([`Fs::background`]:
    /// a thread on the real disk), so rotation does not stall appends.
    pub preallocate: bool,
    /// How far ahead to zero-fill, in bytes.
    pub prealloc_chunk: u64,
    /// Start preparing the next segment once the current one holds this
    /// many bytes (0: as soon as the current one starts). Half a segment by
    /// default: a small log then keeps no second 64 MiB file on disk, and
    /// the second half of a segment leaves ample time to prepare the next.
    pub prepare_at: u64,
    /// Write buffered appends to the file once this many bytes are pending
    /// (they are written at the latest by the next sync).
    pub write_buffer: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size: 64 << 20,
            preallocate: true,
            prealloc_chunk: 16 << 20,
            prepare_at: 32 << 20,
            write_buffer: 1 << 20,
        }
    }
}

/// A torn write found (and cut off) at the end of the last segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub path: PathBuf,
    /// Offset of the first byte removed.
    pub offset: u64,
    /// How many bytes were cut from the end of the file (with
    /// preallocation this includes the zero-filled space after the record).
    pub bytes: u64,
    /// Why the bytes were judged a torn write.
    pub reason: String,
}

impl fmt::Display for TornTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "truncated {} bytes of a torn write at offset {} of {} ({})",
            self.bytes,
            self.offset,
            self.path.display(),
            self.reason
        )
    }
}

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files read.
    pub segments: usize,
    /// Records read.
    pub records: u64,
    /// The torn tail that was cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// Leftover temporary or orphaned files that were removed.
    pub removed_files: Vec<PathBuf>,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recovered {} records from {} segments",
            self.records, self.segments
        )?;
        if let Some(t) = &self.torn_tail {
            write!(f, "; {t}")?;
        }
        if !self.removed_files.is_empty() {
            write!(f, "; removed {} leftover files", self.removed_files.len())?;
        }
        Ok(())
    }
}

/// The state rebuilt from the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The latest snapshot marker (`(0, 0)` if none).
    pub snapshot: SnapshotMeta,
    /// The latest hard state.
    pub hard_state: HardState,
    /// Live entries, `snapshot.index + 1 ..= last`.
    pub entries: Vec<Entry>,
    /// What recovery did.
    pub report: RecoveryReport,
}

#[derive(Clone, Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// Highest entry index stored in the segment (0 if none).
    max_index: u64,
}

/// A sync started with [`Wal::begin_sync`]: call [`SyncTicket::sync`]
/// (possibly without holding any lock on the WAL), then hand the result to
/// [`Wal::finish_sync`].
#[derive(Debug)]
pub struct SyncTicket<H> {
    file: H,
    path: PathBuf,
    /// The segment `file` is a handle to.
    seq: u64,
    lsn: Lsn,
    last_index: u64,
}

impl<H: FsFile> SyncTicket<H> {
    /// The LSN that becomes durable when this ticket completes.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }
    /// Perform the `fdatasync`.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// A write-ahead log in one directory, generic over the file system.
pub struct Wal<F: Fs> {
    fs: F,
    dir: PathBuf,
    id: Identity,
    opts: WalOptions,
    segments: Vec<Segment>,
    file: F::File,
    /// File offset at which `buf` will be written.
    write_off: u64,
    /// Bytes of the current segment that are zero-filled or written.
    allocated: u64,
    buf: Vec<u8>,
    /// Bytes of records written to segment files since the WAL was opened.
    written: u64,
    last_index: u64,
    snapshot: SnapshotMeta,
    hard_state: HardState,
    next_lsn: Lsn,
    flushed_lsn: Lsn,
    durable: Durable,
    /// Conflicting appends not yet known durable: (lsn, index kept below).
    truncations: Vec<(Lsn, u64)>,
    poisoned: Option<String>,
    /// The handle and path of the last sync's ticket, while its segment is
    /// the current one: the next ticket reuses them instead of a `dup` and
    /// a path per sync.
    spare_ticket: Option<(u64, F::File, PathBuf)>,
    /// The next segment, being prepared (with `preallocate`).
    prepared: Option<Prepared<F::File>>,
}

/// The next segment file, zero-filled to the full segment size and fsynced
/// under a temporary name while the current segment is written (etcd's
/// "file pipeline"). Rotation then writes only the header and renames,
/// instead of zero-filling on the append path. Its name ends in `.tmp`, so a
/// crash leaves a file that recovery deletes and `verify` ignores.
struct Prepared<H> {
    seq: u64,
    path: PathBuf,
    len: u64,
    job: Background<std::io::Result<H>>,
    cancel: Arc<AtomicBool>,
}

impl<H> Prepared<H> {
    /// Stop the job and wait for it to finish with the file.
    fn cancel(self) {
        self.cancel.store(true, Ordering::Relaxed);
        let _ = self.job.wait();
    }
}

impl<F: Fs> Drop for Wal<F> {
    fn drop(&mut self) {
        // A preparing thread that outlived this log could create or fill its
        // file after the next open of the directory had cleaned up, and that
        // open prepares the same name: two writers on one file, one of them
        // writing zeros over a live segment. So it must be stopped here.
        if let Some(p) = self.prepared.take() {
            p.cancel();
        }
    }
}

/// The temporary name a prepared segment `seq` waits under.
fn prepared_name(seq: u64) -> String {
    format!("prepared-{seq:016x}.wal.tmp")
}

/// Create `path` and zero-fill it to `len` bytes, durably. Runs off the
/// append path, so it checks `cancel` between chunks to let a closing log
/// stop it quickly.
fn prepare_segment<F: Fs>(
    fs: &F,
    path: &Path,
    len: u64,
    cancel: &AtomicBool,
) -> std::io::Result<F::File> {
    let mut f = fs.create(path)?;
    let mut at = 0;
    while at < len {
        if cancel.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "segment preparation cancelled",
            ));
        }
        let n = (len - at).min(ZEROS.len() as u64);
        f.write_all_at(&ZEROS[..n as usize], at)?;
        at += n;
        let chunk = crate::WRITE_BACK_CHUNK as u64;
        if at % chunk == 0 || at == len {
            let from = (at - 1) / chunk * chunk;
            f.write_back(from, at - from)?;
        }
    }
    f.sync_data()?;
    Ok(f)
}

impl<F: Fs> fmt::Debug for Wal<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("last_index", &self.last_index)
            .field("durable", &self.durable)
            .finish()
    }
}

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

fn zero_fill<H: FsFile>(file: &mut H, from: u64, to: u64) -> std::io::Result<()> {
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

impl<F: Fs> Wal<F> {
    /// Open the log in `dir`, creating it if the directory holds no segment,
    /// and recover its state.
    ///
    /// Fails with [`Error::WrongIdentity`] if the log belongs to another
    /// cluster or node, with [`Error::Corrupt`] (naming file and offset) on
    /// any checksum failure except a torn write at the very end, which is
    /// cut off and reported in [`RecoveryReport::torn_tail`]. On success the
    /// whole recovered log is durable.
    pub fn open(fs: F, dir: &Path, id: Identity, opts: WalOptions) -> Result<(Wal<F>, Recovered)> {
        fs.create_dir_all(dir)
            .map_err(|e| Error::io("create directory", dir, e))?;
        let mut report = RecoveryReport::default();
        let (segs, tmps) = list_segments(&fs, dir)?;
        // Leftover temporary files go only once the log is known to be ours
        // (after replay): a directory that is refused is left as it was.
        let remove_tmps = |report: &mut RecoveryReport| -> Result<()> {
            for name in &tmps {
                let p = join(dir, name);
                fs.remove_file(&p).map_err(|e| Error::io("remove", &p, e))?;
                report.removed_files.push(p);
            }
            Ok(())
        };
        let fresh = segs.is_empty();
        if fresh {
            remove_tmps(&mut report)?;
        }
        let file = match segs.last() {
            Some((_, _, name)) => {
                let p = join(dir, name);
                fs.open_rw(&p).map_err(|e| Error::io("open", &p, e))?
            }
            None => create_segment_file(&fs, dir, id, 1, 1)?,
        };
        let mut wal = Wal {
            fs: fs.clone(),
            dir: dir.to_path_buf(),
            id,
            opts,
            segments: Vec::new(),
            file,
            write_off: 0,
            allocated: 0,
            buf: Vec::new(),
            written: 0,
            last_index: 0,
            snapshot: SnapshotMeta::default(),
            hard_state: HardState::default(),
            next_lsn: 1,
            flushed_lsn: 0,
            durable: Durable::default(),
            truncations: Vec::new(),
            poisoned: None,
            spare_ticket: None,
            prepared: None,
        };
        if fresh {
            wal.install_segment(1, 1);
            wal.sync()?;
            wal.maybe_start_preparing();
            return Ok((wal, Recovered::default_with(report)));
        }

        let rp = replay(&fs, dir, &segs, Some(id), &mut |_, _, _| {})?;
        remove_tmps(&mut report)?;
        report.records = rp.records;
        for (seq, name, max_index) in &rp.segments {
            wal.segments.push(Segment {
                seq: *seq,
                path: join(dir, name),
                max_index: *max_index,
            });
        }
        let last_path = wal.segments.last().expect("non-empty").path.clone();
        wal.write_off = rp.end;
        wal.allocated = rp.file_len;
        if let Tail::Torn {
            offset,
            bytes: nbytes,
            reason,
        } = rp.tail
        {
            wal.file
                .set_len(offset)
                .map_err(|e| Error::io("truncate torn tail", &last_path, e))?;
            wal.allocated = offset;
            report.torn_tail = Some(TornTail {
                path: last_path.clone(),
                offset,
                bytes: nbytes,
                reason,
            });
        }
        let (log, snapshot, hard_state) = (rp.log, rp.snapshot, rp.hard_state);
        let n = segs.len();
        report.segments = n;
        // Whatever we read may have come from the page cache of a process
        // that died before syncing: make it durable before trusting it.
        wal.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync", &last_path, e))?;
        fs.sync_dir(dir)
            .map_err(|e| Error::io("fsync directory", dir, e))?;
        wal.last_index = log.last_index();
        wal.snapshot = snapshot;
        wal.hard_state = hard_state;
        wal.durable = Durable {
            lsn: 0,
            last_index: wal.last_index,
        };
        let recovered = Recovered {
            snapshot,
            hard_state,
            entries: log.entries.into_iter().collect(),
            report,
        };
        wal.maybe_start_preparing();
        Ok((wal, recovered))
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The owner identity.
    pub fn identity(&self) -> Identity {
        self.id
    }
    /// Index of the last entry appended (durable or not).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }
    /// The latest snapshot marker appended.
    pub fn snapshot(&self) -> SnapshotMeta {
        self.snapshot
    }
    /// The latest hard state appended.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }
    /// LSN of the last record appended.
    pub fn last_lsn(&self) -> Lsn {
        self.next_lsn - 1
    }
    /// What is durable.
    pub fn durable(&self) -> Durable {
        self.durable
    }
    /// Bytes of records written to segment files since the WAL was opened
    /// (etcd's `etcd_disk_wal_write_bytes_total`); buffered records count
    /// once they are written.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }
    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
    /// Whether an earlier failure stopped the log.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn check_poison(&self) -> Result<()> {
        match &self.poisoned {
            Some(m) => Err(Error::Poisoned(m.clone())),
            None => Ok(()),
        }
    }

    fn poison(&mut self, e: Error) -> Error {
        if self.poisoned.is_none() {
            self.poisoned = Some(e.to_string());
        }
        e
    }

    fn current_path(&self) -> PathBuf {
        self.segments.last().expect("a segment").path.clone()
    }

    /// Append entries (buffered). The first entry's index may be at most
    /// `last_index() + 1`; if it is lower, it replaces that entry and all
    /// later ones. Indexes within the batch must be consecutive and above
    /// the snapshot. Returns the LSN of the last record.
    pub fn append_entries(&mut self, entries: &[Entry]) -> Result<Lsn> {
        self.check_poison()?;
        let Some(first) = entries.first() else {
            return Ok(self.last_lsn());
        };
        if first.index > self.last_index + 1 || first.index <= self.snapshot.index {
            return Err(Error::InvalidArgument(format!(
                "cannot append entry {} to a log whose last index is {} and snapshot index is {}",
                first.index, self.last_index, self.snapshot.index
            )));
        }
        for w in entries.windows(2) {
            if w[1].index != w[0].index + 1 {
                return Err(Error::InvalidArgument(format!(
                    "entry indexes in a batch must be consecutive, got {} then {}",
                    w[0].index, w[1].index
                )));
            }
        }
        if let Some(e) = entries
            .iter()
            .find(|e| e.data.len() > format::MAX_PAYLOAD - 16)
        {
            return Err(Error::InvalidArgument(format!(
                "entry {} has {} bytes, more than the maximum {}",
                e.index,
                e.data.len(),
                format::MAX_PAYLOAD - 16
            )));
        }
        let truncating = first.index <= self.last_index;
        let mut first_lsn = 0;
        for e in entries {
            self.maybe_rotate()?;
            if first_lsn == 0 {
                first_lsn = self.next_lsn;
            }
            // Encoding a borrowed entry without cloning its data.
            encode_entry(e, &mut self.buf);
            self.next_lsn += 1;
            let seg = self.segments.last_mut().expect("a segment");
            seg.max_index = seg.max_index.max(e.index);
            self.last_index = e.index;
        }
        if truncating {
            let keep = first.index - 1;
            self.truncations.push((first_lsn, keep));
            self.durable.last_index = self.durable.last_index.min(keep);
        }
        self.maybe_flush()?;
        Ok(self.last_lsn())
    }

    /// Append a hard-state record (buffered).
    pub fn append_hard_state(&mut self, hs: HardState) -> Result<Lsn> {
        self.check_poison()?;
        self.maybe_rotate()?;
        self.push_record(&Record::HardState(hs));
        self.hard_state = hs;
        self.maybe_flush()?;
        Ok(self.last_lsn())
    }

    /// Append a snapshot marker (buffered): the log up to `meta.index` is
    /// covered by a snapshot. Entries up to it are dropped; later entries
    /// survive only if the log holds `meta.index` with `meta.term`.
    pub fn append_snapshot_mark(&mut self, meta: SnapshotMeta) -> Result<Lsn> {
        self.check_poison()?;
        if meta.index < self.snapshot.index {
            return Err(Error::InvalidArgument(format!(
                "snapshot index {} is below the current snapshot index {}",
                meta.index, self.snapshot.index
            )));
        }
        self.maybe_rotate()?;
        self.push_record(&Record::Snapshot(meta));
        self.snapshot = meta;
        // The caller's log decides whether later entries survive; the WAL
        // only needs a bound for validating appends.
        self.last_index = self.last_index.max(meta.index);
        self.maybe_flush()?;
        Ok(self.last_lsn())
    }

    /// Seal the current segment and start the next one now, named after
    /// the current last index. `DiskStorage` calls it after a snapshot
    /// marker that discarded the entries after it: once the segment that
    /// held the conflicting entry at the snapshot index is compacted away,
    /// replay cannot compare terms to see that the discarded entries in the
    /// current segment are dead, but the next segment's name says so.
    pub(crate) fn start_next_segment(&mut self) -> Result<()> {
        self.check_poison()?;
        self.rotate()
    }

    /// Tell the WAL the log was emptied by a snapshot that did not match it
    /// (so the last index is the snapshot's). Used by `DiskStorage`.
    pub(crate) fn set_last_index(&mut self, last: u64) {
        if last < self.last_index {
            self.truncations.push((self.last_lsn(), last));
            self.durable.last_index = self.durable.last_index.min(last);
        }
        self.last_index = last;
    }

    fn push_record(&mut self, r: &Record) {
        encode_record(r, &mut self.buf);
        self.next_lsn += 1;
    }

    fn maybe_flush(&mut self) -> Result<()> {
        if self.buf.len() >= self.opts.write_buffer {
            self.flush()?;
        }
        Ok(())
    }

    /// Write buffered records to the file (not yet durable).
    fn flush(&mut self) -> Result<()> {
        self.check_poison()?;
        if self.buf.is_empty() {
            self.flushed_lsn = self.last_lsn();
            return Ok(());
        }
        let end = self.write_off + self.buf.len() as u64;
        let res = (|| {
            if self.opts.preallocate && end > self.allocated {
                // Only the record that fills a segment lands past its size,
                // and the segment is sealed (its zero tail cut) right after:
                // a chunk filled there would be a stall for nothing.
                let cap = self.opts.segment_size;
                let target = end.max((self.allocated + self.opts.prealloc_chunk).min(cap));
                if target > end {
                    zero_fill(&mut self.file, self.allocated, target)?;
                    self.allocated = target;
                }
            }
            self.file.write_all_at(&self.buf, self.write_off)
        })();
        if let Err(e) = res {
            let err = Error::io("write", self.current_path(), e);
            return Err(self.poison(err));
        }
        self.write_off = end;
        self.allocated = self.allocated.max(end);
        self.written += self.buf.len() as u64;
        self.buf.clear();
        self.flushed_lsn = self.last_lsn();
        self.maybe_start_preparing();
        Ok(())
    }

    /// Write out buffered records and return a ticket whose
    /// [`SyncTicket::sync`] makes them durable, or `None` if everything is
    /// already durable. Lets a group-commit front run the fsync without
    /// holding its lock.
    pub fn begin_sync(&mut self) -> Result<Option<SyncTicket<F::File>>> {
        self.flush()?;
        if self.flushed_lsn <= self.durable.lsn {
            return Ok(None);
        }
        let seq = self.segments.last().expect("a segment").seq;
        let (file, path) = match self.spare_ticket.take() {
            Some((s, file, path)) if s == seq => (file, path),
            _ => {
                let path = self.current_path();
                match self.file.try_clone() {
                    Ok(f) => (f, path),
                    Err(e) => {
                        let err = Error::io("dup file handle", &path, e);
                        return Err(self.poison(err));
                    }
                }
            }
        };
        Ok(Some(SyncTicket {
            file,
            path,
            seq,
            lsn: self.flushed_lsn,
            last_index: self.last_index,
        }))
    }

    /// Record the outcome of a ticket's sync. A failed sync poisons the log:
    /// after a failed fsync the kernel may have dropped the dirty pages, so
    /// nothing written since the last good sync can be trusted.
    pub fn finish_sync(
        &mut self,
        ticket: SyncTicket<F::File>,
        result: std::io::Result<()>,
    ) -> Result<Durable> {
        if let Err(e) = result {
            let err = Error::io("fdatasync", ticket.path, e);
            return Err(self.poison(err));
        }
        self.check_poison()?;
        self.mark_durable(ticket.lsn, ticket.last_index);
        if self.segments.last().is_some_and(|s| s.seq == ticket.seq) {
            self.spare_ticket = Some((ticket.seq, ticket.file, ticket.path));
        }
        Ok(self.durable)
    }

    fn mark_durable(&mut self, lsn: Lsn, last_index_then: u64) {
        if lsn <= self.durable.lsn {
            return;
        }
        let later_cut = self
            .truncations
            .iter()
            .filter(|(l, _)| *l > lsn)
            .map(|(_, keep)| *keep)
            .min()
            .unwrap_or(u64::MAX);
        self.durable = Durable {
            lsn,
            last_index: last_index_then.min(later_cut),
        };
        self.truncations.retain(|(l, _)| *l > lsn);
    }

    /// Make every record appended so far durable (one `fdatasync`), and
    /// return the durable position.
    pub fn sync(&mut self) -> Result<Durable> {
        match self.begin_sync()? {
            None => Ok(self.durable),
            Some(mut t) => {
                let r = t.sync();
                self.finish_sync(t, r)
            }
        }
    }

    /// Rotate if the current segment is full.
    fn maybe_rotate(&mut self) -> Result<()> {
        if self.write_off + self.buf.len() as u64 >= self.opts.segment_size {
            self.rotate()?;
        }
        Ok(())
    }

    /// Seal the current segment (made durable and trimmed of its zero
    /// tail) and start the next one, which begins with the current snapshot
    /// marker and hard state so that older segments can later be deleted.
    ///
    /// The new segment is named after `last_index + 1`, where `last_index`
    /// is the log's last index *before* the record about to be written.
    /// Replay relies on this: when older segments have been deleted, the
    /// first remaining segment's name says which index its entries follow
    /// (a conflicting entry written into it may still go lower).
    fn rotate(&mut self) -> Result<()> {
        self.flush()?;
        let path = self.current_path();
        let res = self
            .file
            .set_len(self.write_off)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = res {
            let err = Error::io("seal segment", &path, e);
            return Err(self.poison(err));
        }
        let (lsn, last) = (self.flushed_lsn, self.last_index);
        self.mark_durable(lsn, last);
        let seq = self.segments.last().expect("a segment").seq + 1;
        self.start_segment(seq, self.last_index + 1)
    }

    /// Create segment `seq` (from the prepared file if there is one) and
    /// make it current.
    fn start_segment(&mut self, seq: u64, first_index: u64) -> Result<()> {
        let res = match self.take_prepared(seq) {
            Some((tmp, f, len)) => {
                publish_segment(&self.fs, &self.dir, self.id, seq, first_index, &tmp, f)
                    .map(|f| (f, len))
            }
            None => create_segment_file(&self.fs, &self.dir, self.id, seq, first_index)
                .map(|f| (f, SEGMENT_HEADER_LEN as u64)),
        };
        match res {
            Ok((f, len)) => {
                self.file = f;
                // Its handle would keep the old segment open, even once
                // it is deleted.
                self.spare_ticket = None;
                self.install_segment(seq, first_index);
                self.allocated = len;
                self.maybe_start_preparing();
                Ok(())
            }
            Err(e) => Err(self.poison(e)),
        }
    }

    /// Start preparing the segment after the current one.
    /// Starts preparing the next segment if the current one has reached
    /// [`WalOptions::prepare_at`] and none is being prepared.
    fn maybe_start_preparing(&mut self) {
        let next = self.segments.last().map_or(0, |s| s.seq + 1);
        let have = self.prepared.as_ref().is_some_and(|p| p.seq == next);
        if !have && self.write_off >= self.opts.prepare_at {
            self.start_preparing();
        }
    }

    fn start_preparing(&mut self) {
        if !self.opts.preallocate || self.poisoned.is_some() {
            return;
        }
        if let Some(p) = self.prepared.take() {
            p.cancel();
        }
        let seq = self.segments.last().expect("a segment").seq + 1;
        let path = join(&self.dir, &prepared_name(seq));
        let len = self.opts.segment_size.max(SEGMENT_HEADER_LEN as u64);
        let cancel = Arc::new(AtomicBool::new(false));
        let job = {
            let (fs, path, cancel) = (self.fs.clone(), path.clone(), cancel.clone());
            self.fs
                .background(move || prepare_segment(&fs, &path, len, &cancel))
        };
        self.prepared = Some(Prepared {
            seq,
            path,
            len,
            job,
            cancel,
        });
    }

    /// The prepared file for segment `seq` as `(temp path, handle, length)`,
    /// waiting for it if it is not ready yet; `None` if there is none or its
    /// preparation failed. A failure is not an error of the log: the
    /// prepared file holds no data, and rotation falls back to creating the
    /// segment inline, where a real disk problem surfaces and poisons.
    fn take_prepared(&mut self, seq: u64) -> Option<(PathBuf, F::File, u64)> {
        let p = self.prepared.take()?;
        if p.seq != seq {
            let path = p.path.clone();
            p.cancel();
            let _ = self.fs.remove_file(&path);
            return None;
        }
        match p.job.wait() {
            Ok(Ok(f)) => Some((p.path, f, p.len)),
            _ => {
                // Best effort: recovery removes it too.
                let _ = self.fs.remove_file(&p.path);
                None
            }
        }
    }

    /// Make the freshly created segment current and queue the snapshot
    /// marker and hard state at its head, so that older segments can later
    /// be deleted without losing either.
    fn install_segment(&mut self, seq: u64, first_index: u64) {
        self.segments.push(Segment {
            seq,
            path: join(&self.dir, &segment_name(seq, first_index)),
            max_index: 0,
        });
        self.write_off = SEGMENT_HEADER_LEN as u64;
        self.allocated = SEGMENT_HEADER_LEN as u64;
        self.push_record(&Record::Snapshot(self.snapshot));
        self.push_record(&Record::HardState(self.hard_state));
    }

    /// Delete whole segments, oldest first, that hold only entries at or
    /// below `index`, which must not exceed the latest snapshot marker. The
    /// current segment is never deleted.
    ///
    /// Before deleting anything the current hard state is re-recorded in
    /// the current segment and everything is synced, so the latest hard
    /// state and snapshot marker never live only in a deleted segment.
    /// Returns how many segments were removed.
    pub fn compact(&mut self, index: u64) -> Result<usize> {
        self.check_poison()?;
        if index > self.snapshot.index {
            return Err(Error::InvalidArgument(format!(
                "can only drop log segments below the snapshot marker (asked {index}, snapshot \
                 at {})",
                self.snapshot.index
            )));
        }
        if self.segments.len() < 2 || self.segments[0].max_index > index {
            return Ok(0);
        }
        self.maybe_rotate()?;
        self.push_record(&Record::HardState(self.hard_state));
        self.sync()?;
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[0].max_index <= index {
            let seg = self.segments.remove(0);
            if let Err(e) = self.fs.remove_file(&seg.path) {
                let err = Error::io("remove segment", &seg.path, e);
                return Err(self.poison(err));
            }
            removed += 1;
        }
        if let Err(e) = self.fs.sync_dir(&self.dir) {
            let err = Error::io("fsync directory", &self.dir, e);
            return Err(self.poison(err));
        }
        Ok(removed)
    }
}

/// Create segment `seq` atomically: write its header to a temp file, fsync,
/// rename into place, fsync the directory.
fn create_segment_file<F: Fs>(
    fs: &F,
    dir: &Path,
    id: Identity,
    seq: u64,
    first_index: u64,
) -> Result<F::File> {
    let name = segment_name(seq, first_index);
    let tmp = join(dir, &format!("{name}.tmp"));
    let f = fs
        .create(&tmp)
        .map_err(|e| Error::io("create segment", &tmp, e))?;
    publish_segment(fs, dir, id, seq, first_index, &tmp, f)
}

/// Turn the temp file `tmp` (new, or prepared and zero-filled) into segment
/// `seq`: write its header, fsync, rename into place, fsync the directory.
/// The header is durable before the name is, so a segment file never exists
/// without a valid header.
fn publish_segment<F: Fs>(
    fs: &F,
    dir: &Path,
    id: Identity,
    seq: u64,
    first_index: u64,
    tmp: &Path,
    mut f: F::File,
) -> Result<F::File> {
    let path = join(dir, &segment_name(seq, first_index));
    let header = encode_segment_header(&SegmentHeader {
        version: FORMAT_VERSION,
        identity: id,
        seq,
        first_index,
    });
    let res = (|| {
        f.write_all_at(&header, 0)?;
        f.sync_data()?;
        fs.rename(tmp, &path)?;
        fs.sync_dir(dir)
    })();
    res.map_err(|e| Error::io("create segment", &path, e))?;
    Ok(f)
}

fn encode_entry(e: &Entry, out: &mut Vec<u8>) {
    // `Record` owns its data; frame the borrowed entry to avoid a copy.
    format::encode_frame(out, format::TYPE_ENTRY, 16 + e.data.len(), |out| {
        out.extend_from_slice(&e.index.to_le_bytes());
        out.extend_from_slice(&e.term.to_le_bytes());
        out.extend_from_slice(&e.data);
    });
}

/// A segment file name parsed: `(seq, first_index, name)`.
pub(crate) type SegmentName = (u64, u64, String);

/// Everything replaying a directory's segments yields.
pub(crate) struct Replayed {
    pub(crate) identity: Identity,
    pub(crate) log: MemLog,
    pub(crate) snapshot: SnapshotMeta,
    pub(crate) hard_state: HardState,
    pub(crate) records: u64,
    /// `(seq, file name, highest entry index)` per segment.
    pub(crate) segments: Vec<(u64, String, u64)>,
    /// End of good data in the last segment.
    pub(crate) end: u64,
    /// Length of the last segment file.
    pub(crate) file_len: u64,
    pub(crate) tail: Tail,
}

/// Who owns the WAL in `dir` (a data directory's `wal/`), from its first
/// segment's header alone: `None` if it holds no segment. A member that
/// restarts on its data learns its cluster and id from it, as etcd reads
/// them from its WAL's metadata.
pub fn owner<F: Fs>(fs: &F, dir: &Path) -> Result<Option<Identity>> {
    if !fs.exists(dir) {
        return Ok(None);
    }
    let (segs, _) = list_segments(fs, dir)?;
    let Some((_, _, name)) = segs.first() else {
        return Ok(None);
    };
    let path = dir.join(name);
    let bytes = fs.read(&path).map_err(|e| Error::io("read", &path, e))?;
    let header = crate::format::decode_segment_header(&path, &bytes)?;
    Ok(Some(header.identity))
}

/// List the segment files of `dir` as `(seq, first_index, name)`, sorted,
/// plus the names of leftover temp files.
pub(crate) fn list_segments<F: Fs>(fs: &F, dir: &Path) -> Result<(Vec<SegmentName>, Vec<String>)> {
    let mut segs = Vec::new();
    let mut tmps = Vec::new();
    for name in fs.list(dir).map_err(|e| Error::io("list", dir, e))? {
        if name.ends_with(".tmp") {
            tmps.push(name);
        } else if let Some((seq, first)) = parse_segment_name(&name) {
            segs.push((seq, first, name));
        }
    }
    segs.sort();
    Ok((segs, tmps))
}

/// Read and check every segment, rebuilding the log. `expect_id` is the
/// identity to insist on (verify passes `None` and takes the first
/// segment's). `on_record` sees every good record with its file and offset,
/// including those before an error.
pub(crate) fn replay<F: Fs>(
    fs: &F,
    dir: &Path,
    segs: &[SegmentName],
    expect_id: Option<Identity>,
    on_record: &mut dyn FnMut(&Path, u64, &Record),
) -> Result<Replayed> {
    let mut log = MemLog::with_base(segs[0].1.saturating_sub(1));
    let mut snapshot = SnapshotMeta::default();
    let mut hard_state = HardState::default();
    let mut identity = expect_id;
    let mut records = 0;
    let mut segments = Vec::new();
    let (mut end, mut file_len, mut tail) = (0, 0, Tail::Clean);
    let n = segs.len();
    for (i, (seq, first, name)) in segs.iter().enumerate() {
        let path = join(dir, name);
        if i > 0 && *seq != segs[i - 1].0 + 1 {
            return Err(Error::inconsistent(
                dir,
                format!(
                    "segment sequence jumps from {} to {seq}: a segment file is missing",
                    segs[i - 1].0
                ),
            ));
        }
        let bytes = fs.read(&path).map_err(|e| Error::io("read", &path, e))?;
        let is_last = i + 1 == n;
        let mut recs = Vec::new();
        let scanned = format::scan_segment_into(&path, &bytes, is_last, &mut recs);
        for (off, rec) in &recs {
            on_record(&path, *off, rec);
        }
        let (header, seg_end, seg_tail) = scanned?;
        let id = *identity.get_or_insert(header.identity);
        check_header(&path, &header, id, *seq, *first)?;
        let mut max_index = 0;
        if i > 0 {
            // The log held exactly `first - 1` entries when this segment
            // was started (see `Wal::rotate`): anything later in the
            // replayed log had been discarded by then.
            log.truncate_after(first.saturating_sub(1));
        }
        for (off, rec) in recs {
            records += 1;
            match rec {
                Record::Entry(e) => {
                    if e.index > log.last_index() + 1 || e.index <= snapshot.index {
                        return Err(Error::corrupt(
                            &path,
                            off,
                            format!(
                                "entry index {} cannot follow last index {} (snapshot at {})",
                                e.index,
                                log.last_index(),
                                snapshot.index
                            ),
                        ));
                    }
                    max_index = max_index.max(e.index);
                    log.append(e);
                }
                Record::HardState(h) => hard_state = h,
                Record::Snapshot(s) => {
                    if s.index >= snapshot.index {
                        snapshot = s;
                        log.apply_snapshot(s);
                    }
                }
            }
        }
        segments.push((*seq, name.clone(), max_index));
        if is_last {
            end = seg_end;
            file_len = bytes.len() as u64;
            tail = seg_tail;
        }
    }
    if log.base > snapshot.index {
        return Err(Error::inconsistent(
            dir,
            format!(
                "entries {}..={} are missing: the oldest segment starts after the snapshot at \
                 index {}",
                snapshot.index + 1,
                log.base,
                snapshot.index
            ),
        ));
    }
    Ok(Replayed {
        identity: identity.expect("at least one segment"),
        log,
        snapshot,
        hard_state,
        records,
        segments,
        end,
        file_len,
        tail,
    })
}

fn check_header(
    path: &Path,
    h: &SegmentHeader,
    id: Identity,
    seq: u64,
    first_index: u64,
) -> Result<()> {
    if h.identity != id {
        return Err(Error::WrongIdentity {
            path: path.to_path_buf(),
            expected: id,
            found: h.identity,
        });
    }
    if h.seq != seq || h.first_index != first_index {
        return Err(Error::corrupt(
            path,
            0,
            format!(
                "header says segment {} starting at index {}, but the file name says {} and {}",
                h.seq, h.first_index, seq, first_index
            ),
        ));
    }
    Ok(())
}

impl Recovered {
    fn default_with(report: RecoveryReport) -> Self {
        Recovered {
            report,
            ..Default::default()
        }
    }
}
