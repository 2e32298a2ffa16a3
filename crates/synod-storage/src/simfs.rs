//! A deterministic in-memory file system for the simulator.
//!
//! [`SimFs`] models what a crash can do to a disk that has a volatile write
//! cache, under strict POSIX rules:
//!
//! * File contents written since the file's last `sync_data` are volatile.
//!   On [`SimFs::power_loss`] each dirty 512-byte sector independently either
//!   reaches the platter or keeps its previous durable contents (zeros past
//!   the old end of file). A write can therefore be torn at sector
//!   granularity, and later sectors can survive while earlier ones are lost.
//!   Synced bytes are never lost.
//! * Directory operations (create, rename, remove) are volatile until
//!   [`Fs::sync_dir`]; the file system journals them in order, so after a
//!   power loss some prefix of the pending operations has happened. A file
//!   whose creation was not persisted vanishes with its data even if the data
//!   was synced.
//! * [`SimFs::flip_bit`] corrupts stored bytes; [`SimFs::flip_on_read`] makes
//!   reads of one byte return it with bits flipped, leaving storage intact.
//! * [`SimFs::set_fail_syncs`] makes every sync fail with an I/O error.
//!
//! Directories themselves are created durably at once (the data directory is
//! set up before anything interesting happens).
//!
//! `SimFs` is `Clone`; clones share one disk, so a simulator keeps a clone to
//! drive faults while a node's storage owns another. [`SimFs::fork`] makes an
//! independent deep copy. Everything is kept in ordered maps and all
//! randomness comes from the seed passed to `power_loss`, so a run is
//! reproducible. Handles opened before a power loss fail afterwards, which
//! catches a node that forgets to restart its storage.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fs::{Fs, FsFile};

/// Sector size used for tearing writes.
pub const SECTOR: u64 = 512;

#[derive(Clone, Debug, Default)]
struct Inode {
    /// Contents as seen by readers (the page cache).
    data: Vec<u8>,
    /// Contents as of the last sync.
    durable: Vec<u8>,
    /// Sectors written (or length-changed) since the last sync.
    dirty: BTreeSet<u64>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(PathBuf, u64),
    Rename(PathBuf, PathBuf),
    Unlink(PathBuf),
}

fn apply_op(names: &mut BTreeMap<PathBuf, u64>, op: &DirOp) {
    match op {
        DirOp::Link(p, ino) => {
            names.insert(p.clone(), *ino);
        }
        DirOp::Rename(from, to) => {
            if let Some(ino) = names.remove(from) {
                names.insert(to.clone(), ino);
            }
        }
        DirOp::Unlink(p) => {
            names.remove(p);
        }
    }
}

/// Counters a simulator can use to charge time for disk work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Bytes passed to `write_all_at`.
    pub bytes_written: u64,
    /// Calls to `sync_data`.
    pub file_syncs: u64,
    /// Calls to `sync_dir`.
    pub dir_syncs: u64,
    /// Power losses so far.
    pub power_losses: u64,
    /// Calls to `try_clone` (each a `dup` on a real disk).
    pub handles_cloned: u64,
}

#[derive(Clone, Debug, Default)]
struct State {
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    pending: Vec<DirOp>,
    dirs: BTreeSet<PathBuf>,
    generation: u64,
    read_faults: BTreeMap<(PathBuf, u64), u8>,
    fail_syncs: bool,
    op_budget: Option<u64>,
    stats: SimStats,
}

impl State {
    /// Charge one mutating operation against the crash budget.
    fn spend(&mut self) -> io::Result<()> {
        match self.op_budget {
            Some(0) => Err(io::Error::other(
                "simulated crash: the process died before this operation",
            )),
            Some(n) => {
                self.op_budget = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// The simulated disk. See the module documentation.
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("SimFs")
            .field("files", &st.names.len())
            .field("pending_dir_ops", &st.pending.len())
            .field("stats", &st.stats)
            .finish()
    }
}

/// A handle to a file on a [`SimFs`].
pub struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
    generation: u64,
}

/// SplitMix64: tiny, deterministic, good enough for fault choices.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

fn mark_dirty(inode: &mut Inode, from: u64, to: u64) {
    if to <= from {
        return;
    }
    for s in from / SECTOR..to.div_ceil(SECTOR) {
        inode.dirty.insert(s);
    }
}

impl SimFs {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An independent deep copy of the disk (unsynced state included).
    pub fn fork(&self) -> SimFs {
        SimFs {
            state: Arc::new(Mutex::new(self.lock().clone())),
        }
    }

    /// Cut the power. Unsynced file data is lost or kept per 512-byte sector
    /// and a prefix of the unsynced directory operations survives, all chosen
    /// deterministically from `seed`. Open handles become invalid and any
    /// [`SimFs::crash_after`] limit is lifted (the machine restarts).
    pub fn power_loss(&self, seed: u64) {
        let mut st = self.lock();
        let mut rng = Rng(seed);
        let keep_ops = rng.below(st.pending.len() as u64 + 1) as usize;
        let pending = std::mem::take(&mut st.pending);
        let mut names = std::mem::take(&mut st.durable_names);
        for op in &pending[..keep_ops] {
            apply_op(&mut names, op);
        }
        st.durable_names = names.clone();
        st.names = names;
        let live: BTreeSet<u64> = st.names.values().copied().collect();
        st.inodes.retain(|ino, _| live.contains(ino));
        for inode in st.inodes.values_mut() {
            let dirty: Vec<u64> = std::mem::take(&mut inode.dirty).into_iter().collect();
            let mut out = inode.durable.clone();
            if !dirty.is_empty() {
                let mode = rng.below(3);
                let cut = rng.below(dirty.len() as u64 + 1) as usize;
                for (i, &s) in dirty.iter().enumerate() {
                    let persist = match mode {
                        0 => false,
                        1 => i < cut,
                        _ => rng.below(2) == 0,
                    };
                    let start = (s * SECTOR) as usize;
                    if !persist || start >= inode.data.len() {
                        continue;
                    }
                    let end = ((s + 1) * SECTOR).min(inode.data.len() as u64) as usize;
                    if out.len() < end {
                        out.resize(end, 0);
                    }
                    out[start..end].copy_from_slice(&inode.data[start..end]);
                }
                // An unsynced truncation may or may not have reached the disk.
                if inode.data.len() < out.len() && rng.below(2) == 0 {
                    out.truncate(inode.data.len());
                }
            }
            inode.durable = out.clone();
            inode.data = out;
        }
        st.generation += 1;
        st.stats.power_losses += 1;
        st.op_budget = None;
    }

    /// Flip bit `bit` (0..8) of the stored byte at `offset` of `path`, both
    /// in the cache and on the platter. Returns false if there is no such byte.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> bool {
        let mut st = self.lock();
        let Some(&ino) = st.names.get(path) else {
            return false;
        };
        let inode = st.inodes.get_mut(&ino).expect("named inode exists");
        let o = offset as usize;
        if o >= inode.data.len() {
            return false;
        }
        inode.data[o] ^= 1 << (bit % 8);
        if o < inode.durable.len() {
            inode.durable[o] ^= 1 << (bit % 8);
        }
        true
    }

    /// From now on, reads of `path` return the byte at `offset` XORed with
    /// `mask` (the stored byte is unchanged). Cleared by
    /// [`SimFs::clear_read_faults`].
    pub fn flip_on_read(&self, path: &Path, offset: u64, mask: u8) {
        self.lock()
            .read_faults
            .insert((path.to_path_buf(), offset), mask);
    }

    /// Remove all faults registered with [`SimFs::flip_on_read`].
    pub fn clear_read_faults(&self) {
        self.lock().read_faults.clear();
    }

    /// Make every following `sync_data` and `sync_dir` fail (or succeed again).
    pub fn set_fail_syncs(&self, fail: bool) {
        self.lock().fail_syncs = fail;
    }

    /// Let `n` more mutating operations (create, write, set_len, sync,
    /// rename, remove, sync_dir) succeed, then fail every later one, as if
    /// the process had died at that point; `None` lifts the limit. Combine
    /// with [`SimFs::power_loss`] to crash at every step of a protocol.
    pub fn crash_after(&self, n: Option<u64>) {
        self.lock().op_budget = n;
    }

    /// Work counters.
    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// All file paths currently visible, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        self.lock().names.keys().cloned().collect()
    }

    /// Bytes written but not yet synced, summed over files (in whole sectors).
    pub fn unsynced_bytes(&self) -> u64 {
        self.lock()
            .inodes
            .values()
            .map(|i| i.dirty.len() as u64 * SECTOR)
            .sum()
    }
}

impl std::fmt::Debug for SimFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimFile(inode {})", self.ino)
    }
}

impl SimFile {
    fn with<R>(&self, f: impl FnOnce(&mut State, u64) -> io::Result<R>) -> io::Result<R> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.generation != self.generation || !st.inodes.contains_key(&self.ino) {
            return Err(io::Error::other(
                "stale SimFs handle: the disk lost power after this file was opened",
            ));
        }
        f(&mut st, self.ino)
    }
}

impl FsFile for SimFile {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(|st, ino| {
            st.spend()?;
            st.stats.bytes_written += buf.len() as u64;
            let inode = st.inodes.get_mut(&ino).expect("checked");
            let start = offset as usize;
            let end = start + buf.len();
            let old_len = inode.data.len() as u64;
            if inode.data.len() < end {
                inode.data.resize(end, 0);
            }
            inode.data[start..end].copy_from_slice(buf);
            mark_dirty(inode, offset.min(old_len), end as u64);
            Ok(())
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.with(|st, ino| {
            st.spend()?;
            if st.fail_syncs {
                return Err(io::Error::other("simulated fsync failure"));
            }
            st.stats.file_syncs += 1;
            let inode = st.inodes.get_mut(&ino).expect("checked");
            inode.durable = inode.data.clone();
            inode.dirty.clear();
            Ok(())
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.with(|st, ino| {
            st.spend()?;
            let inode = st.inodes.get_mut(&ino).expect("checked");
            let old = inode.data.len() as u64;
            inode.data.resize(len as usize, 0);
            mark_dirty(inode, old.min(len), old.max(len));
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with(|st, ino| Ok(st.inodes[&ino].data.len() as u64))
    }

    fn try_clone(&self) -> io::Result<Self> {
        self.with(|st, _| {
            st.stats.handles_cloned += 1;
            Ok(())
        })?;
        Ok(SimFile {
            state: Arc::clone(&self.state),
            ino: self.ino,
            generation: self.generation,
        })
    }
}

impl Fs for SimFs {
    type File = SimFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        for anc in dir.ancestors() {
            if !anc.as_os_str().is_empty() {
                st.dirs.insert(anc.to_path_buf());
            }
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock();
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let mut out: Vec<String> = st
            .names
            .keys()
            .chain(st.dirs.iter())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn exists(&self, path: &Path) -> bool {
        let st = self.lock();
        st.names.contains_key(path) || st.dirs.contains(path)
    }

    fn create(&self, path: &Path) -> io::Result<SimFile> {
        let mut st = self.lock();
        st.spend()?;
        let parent = path.parent().unwrap_or(Path::new(""));
        if !st.dirs.contains(parent) {
            return Err(not_found(parent));
        }
        let ino = if let Some(&ino) = st.names.get(path) {
            let inode = st.inodes.get_mut(&ino).expect("named inode exists");
            let old = inode.data.len() as u64;
            inode.data.clear();
            mark_dirty(inode, 0, old);
            ino
        } else {
            st.next_ino += 1;
            let ino = st.next_ino;
            st.inodes.insert(ino, Inode::default());
            st.names.insert(path.to_path_buf(), ino);
            st.pending.push(DirOp::Link(path.to_path_buf(), ino));
            ino
        };
        Ok(SimFile {
            state: Arc::clone(&self.state),
            ino,
            generation: st.generation,
        })
    }

    fn open_rw(&self, path: &Path) -> io::Result<SimFile> {
        let st = self.lock();
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(SimFile {
            state: Arc::clone(&self.state),
            ino,
            generation: st.generation,
        })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.lock();
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        let mut data = st.inodes[&ino].data.clone();
        for ((p, off), mask) in st.read_faults.range((path.to_path_buf(), 0)..) {
            if p != path {
                break;
            }
            if let Some(b) = data.get_mut(*off as usize) {
                *b ^= mask;
            }
        }
        Ok(data)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.spend()?;
        let ino = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_path_buf(), ino);
        st.pending
            .push(DirOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.spend()?;
        st.names.remove(path).ok_or_else(|| not_found(path))?;
        st.pending.push(DirOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.spend()?;
        if st.fail_syncs {
            return Err(io::Error::other("simulated directory fsync failure"));
        }
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        st.stats.dir_syncs += 1;
        // An ordered journal: committing the directory commits every
        // metadata operation queued before it.
        let pending = std::mem::take(&mut st.pending);
        let mut names = std::mem::take(&mut st.durable_names);
        for op in &pending {
            apply_op(&mut names, op);
        }
        st.durable_names = names;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn synced_data_survives_and_unsynced_may_not() {
        let fs = SimFs::new();
        fs.create_dir_all(&p("/d")).unwrap();
        let mut f = fs.create(&p("/d/a")).unwrap();
        fs.sync_dir(&p("/d")).unwrap();
        f.write_all_at(&[1u8; 1000], 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(&[2u8; 2000], 1000).unwrap();
        let mut saw_lost = false;
        let mut saw_kept = false;
        for seed in 0..64 {
            let g = fs.fork();
            g.power_loss(seed);
            let data = g.read(&p("/d/a")).unwrap();
            assert!(data.len() >= 1000);
            assert!(data[..1000].iter().all(|&b| b == 1), "synced bytes lost");
            // Every sector past the synced part is all-new or all-zero.
            for chunk_start in (1024..data.len()).step_by(512) {
                let end = (chunk_start + 512).min(data.len());
                let c = &data[chunk_start..end];
                assert!(c.iter().all(|&b| b == 2) || c.iter().all(|&b| b == 0));
            }
            if data.len() == 1000 {
                saw_lost = true;
            }
            if data.len() == 3000 {
                saw_kept = true;
            }
            assert!(f.try_clone().is_ok(), "fork must not affect the original");
        }
        assert!(saw_lost && saw_kept);
        fs.power_loss(1);
        assert!(f.write_all_at(b"x", 0).is_err(), "stale handle must fail");
    }

    #[test]
    fn unsynced_create_vanishes_rename_is_atomic() {
        let fs = SimFs::new();
        fs.create_dir_all(&p("/d")).unwrap();
        let mut f = fs.create(&p("/d/new")).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        let g = fs.fork();
        g.power_loss(0); // seed 0 keeps no pending op
        let kept = g.exists(&p("/d/new"));
        let mut outcomes = BTreeSet::new();
        for seed in 0..32 {
            let g = fs.fork();
            g.power_loss(seed);
            outcomes.insert(g.exists(&p("/d/new")));
        }
        assert!(outcomes.contains(&false), "{kept}");
        fs.sync_dir(&p("/d")).unwrap();
        fs.rename(&p("/d/new"), &p("/d/final")).unwrap();
        for seed in 0..32 {
            let g = fs.fork();
            g.power_loss(seed);
            let a = g.exists(&p("/d/new"));
            let b = g.exists(&p("/d/final"));
            assert!(a ^ b, "rename must be atomic");
        }
    }

    #[test]
    fn flips() {
        let fs = SimFs::new();
        fs.create_dir_all(&p("/d")).unwrap();
        let mut f = fs.create(&p("/d/a")).unwrap();
        f.write_all_at(&[0u8; 4], 0).unwrap();
        fs.flip_on_read(&p("/d/a"), 2, 0x10);
        assert_eq!(fs.read(&p("/d/a")).unwrap(), vec![0, 0, 0x10, 0]);
        fs.clear_read_faults();
        assert!(fs.flip_bit(&p("/d/a"), 1, 0));
        assert_eq!(fs.read(&p("/d/a")).unwrap(), vec![0, 1, 0, 0]);
        fs.set_fail_syncs(true);
        assert!(f.sync_data().is_err());
    }
}
