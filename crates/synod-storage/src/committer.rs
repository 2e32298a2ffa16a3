//! Group commit for concurrent writers.
//!
//! Many threads append and then wait for durability; one of them (the first
//! to find no sync running) writes out everything buffered and runs a single
//! `fdatasync` *without holding the lock*, so others keep appending into the
//! next batch meanwhile. When it finishes, every waiter whose record made it
//! into that batch wakes up. No async runtime is needed.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::fs::Fs;
use crate::storage::{DiskStorage, Storage};
use crate::{Durable, Entry, HardState, Lsn};

struct Inner<F: Fs> {
    storage: DiskStorage<F>,
    syncing: bool,
}

struct Shared<F: Fs> {
    inner: Mutex<Inner<F>>,
    done: Condvar,
}

/// A thread-safe, cloneable group-commit front over [`DiskStorage`].
pub struct Committer<F: Fs> {
    shared: Arc<Shared<F>>,
}

impl<F: Fs> Clone for Committer<F> {
    fn clone(&self) -> Self {
        Committer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<F: Fs> Committer<F> {
    /// Wrap storage.
    pub fn new(storage: DiskStorage<F>) -> Self {
        Committer {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    storage,
                    syncing: false,
                }),
                done: Condvar::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<F>> {
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append entries (buffered); returns the LSN to wait for.
    pub fn append(&self, entries: &[Entry]) -> Result<Lsn> {
        self.lock().storage.append(entries)
    }

    /// Record a hard state (buffered); returns the LSN to wait for.
    pub fn set_hard_state(&self, hs: HardState) -> Result<Lsn> {
        self.lock().storage.set_hard_state(hs)
    }

    /// Append and wait until the entries are durable.
    pub fn append_durable(&self, entries: &[Entry]) -> Result<Durable> {
        let lsn = self.append(entries)?;
        self.wait_durable(lsn)
    }

    /// Block until every record up to `lsn` is durable, taking part in (or
    /// leading) a shared sync.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<Durable> {
        let mut g = self.lock();
        if lsn > g.storage.last_lsn() {
            return Err(Error::InvalidArgument(format!(
                "LSN {lsn} has not been appended (last is {})",
                g.storage.last_lsn()
            )));
        }
        loop {
            let d = g.storage.durable();
            if d.lsn >= lsn {
                return Ok(d);
            }
            if g.storage.wal().is_poisoned() {
                // Surface the original failure.
                return g
                    .storage
                    .sync()
                    .and(Err(Error::Poisoned("sync failed".into())));
            }
            if g.syncing {
                g = self.shared.done.wait(g).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let ticket = g.storage.begin_sync()?;
            let Some(mut ticket) = ticket else {
                continue;
            };
            g.syncing = true;
            drop(g);
            let res = ticket.sync();
            g = self.lock();
            g.syncing = false;
            let out = g.storage.finish_sync(ticket, res);
            self.shared.done.notify_all();
            out?;
        }
    }

    /// Run `f` with exclusive access to the storage (reads, snapshots).
    pub fn with<R>(&self, f: impl FnOnce(&mut DiskStorage<F>) -> R) -> R {
        f(&mut self.lock().storage)
    }
}
