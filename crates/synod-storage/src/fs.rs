//! A small file-system abstraction so the same WAL and recovery code runs on
//! the real disk ([`RealFs`]) and on the deterministic simulated disk
//! ([`crate::SimFs`]).
//!
//! Only the operations the log needs are here. Paths are ordinary
//! [`Path`]s; `SimFs` treats them as opaque keys.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// An open file handle.
pub trait FsFile: Send + 'static {
    /// Write all of `buf` at byte offset `offset`, extending the file if needed.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make the file's data (and its length) durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Truncate or extend (with zeros) the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// The current length of the file.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Push `len` bytes at `offset` to the device and wait until they are
    /// written. No durability promise (only [`sync_data`](Self::sync_data)
    /// makes one): a long background write (a snapshot, a segment being
    /// prepared) calls it as it goes so that the device never holds much
    /// of it queued, and another file's sync (the WAL's, which a client
    /// waits for) is not stuck behind all of it at once.
    fn write_back(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// A second handle to the same file, so one thread can `sync_data` while
    /// another keeps the first handle.
    fn try_clone(&self) -> io::Result<Self>
    where
        Self: Sized;
}

/// The file-system operations the WAL and snapshot store use.
pub trait Fs: Clone + Send + Sync + 'static {
    /// The handle type returned by [`Fs::create`] and [`Fs::open_rw`].
    type File: FsFile;

    /// Create a directory and its parents if they do not exist.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names (not paths) of the entries in `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether `path` exists (file or directory).
    fn exists(&self, path: &Path) -> bool;
    /// Create `path` (truncating it if it exists) for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Open an existing file for reading and writing.
    fn open_rw(&self, path: &Path) -> io::Result<Self::File>;
    /// Read the whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Atomically rename `from` to `to` (replacing `to`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Remove a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Make the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Run `job`, on another thread if this file system allows it.
    ///
    /// The default runs it at once on the caller's thread: a simulated disk
    /// must see every operation in an order fixed by the caller, or runs
    /// would stop being reproducible. [`RealFs`] runs it on a new thread, so
    /// slow preparation (zero-filling the next WAL segment) leaves the
    /// append path.
    fn background<T, J>(&self, job: J) -> Background<T>
    where
        T: Send + 'static,
        J: FnOnce() -> T + Send + 'static,
    {
        Background(Pending::Done(job()))
    }
}

/// The result of a job started with [`Fs::background`].
#[derive(Debug)]
pub struct Background<T>(Pending<T>);

#[derive(Debug)]
enum Pending<T> {
    Done(T),
    Thread(std::thread::JoinHandle<T>),
    Failed(io::Error),
}

impl<T> Background<T> {
    /// Wait for the job and return its result; an error if it could not be
    /// started or panicked.
    pub fn wait(self) -> io::Result<T> {
        match self.0 {
            Pending::Done(t) => Ok(t),
            Pending::Thread(h) => h
                .join()
                .map_err(|_| io::Error::other("background job panicked")),
            Pending::Failed(e) => Err(e),
        }
    }
}

/// The real file system, through `std::fs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

impl FsFile for File {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn try_clone(&self) -> io::Result<Self> {
        File::try_clone(self)
    }
    #[cfg(target_os = "linux")]
    fn write_back(&mut self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Ok(()); // beyond any file: nothing to push
        };
        // SAFETY: a plain system call on a descriptor this handle owns; it
        // reads no memory of ours.
        let rc = unsafe { libc::sync_file_range(self.as_raw_fd(), offset, len, flags) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Fs for RealFs {
    type File = File;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn create(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }
    fn open_rw(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).open(path)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    /// Unlinks `path` while holding the file open, and closes it on a
    /// thread of its own: the last close is what frees the file's cached
    /// pages, and for a 64 MiB WAL segment or a snapshot of tens of MB that
    /// took 15-30 ms (strace at 256 put clients), during which the member
    /// thread that compacts its log after a snapshot stood still. The name
    /// is gone on return, as before; only the freeing happens later.
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let held = File::open(path).ok();
        std::fs::remove_file(path)?;
        if let Some(file) = held {
            // If no thread can be had, the closure (and the file) is dropped
            // here instead.
            let _ = std::thread::Builder::new()
                .name("synod-release".into())
                .spawn(move || drop(file));
        }
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn background<T, J>(&self, job: J) -> Background<T>
    where
        T: Send + 'static,
        J: FnOnce() -> T + Send + 'static,
    {
        match std::thread::Builder::new()
            .name("synod-wal-prepare".into())
            .spawn(job)
        {
            Ok(h) => Background(Pending::Thread(h)),
            Err(e) => Background(Pending::Failed(e)),
        }
    }
}

/// `dir/name`.
pub(crate) fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name is gone when `remove_file` returns, though the file is
    /// closed later on another thread; a missing file is `NotFound`, which
    /// callers that remove best effort rely on.
    #[test]
    fn a_removed_file_is_gone_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let fs = RealFs;
        let f = fs.create(&path).unwrap();
        f.write_all_at(&[7; 1 << 16], 0).unwrap();
        fs.remove_file(&path).unwrap();
        assert!(!fs.exists(&path));
        assert!(fs.list(dir.path()).unwrap().is_empty());
        // The handle still open here writes to the unlinked file unharmed.
        f.write_all_at(&[8; 16], 0).unwrap();
        let err = fs.remove_file(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
