//! The in-memory view of the log that replay builds and `DiskStorage` keeps.
//!
//! Entries `base+1 ..= base+len` are held; everything at or below `base` is
//! either covered by the snapshot or (transiently, while replaying a log
//! whose oldest segments were dropped) not yet known.

use std::collections::VecDeque;

use crate::{Entry, SnapshotMeta};

#[derive(Clone, Debug, Default)]
pub(crate) struct MemLog {
    pub(crate) base: u64,
    pub(crate) entries: VecDeque<Entry>,
}

impl MemLog {
    pub(crate) fn with_base(base: u64) -> Self {
        MemLog {
            base,
            entries: VecDeque::new(),
        }
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    pub(crate) fn get(&self, index: u64) -> Option<&Entry> {
        if index <= self.base {
            return None;
        }
        self.entries.get((index - self.base - 1) as usize)
    }

    /// Append one entry; an index at or below the last index replaces that
    /// entry and everything after it. The caller has checked
    /// `index <= last_index() + 1`.
    pub(crate) fn append(&mut self, e: Entry) {
        debug_assert!(e.index <= self.last_index() + 1);
        if e.index <= self.base {
            self.entries.clear();
            self.base = e.index - 1;
        } else {
            self.entries.truncate((e.index - self.base - 1) as usize);
        }
        self.entries.push_back(e);
    }

    /// Drop every entry after `last`. Below the base, the log is emptied
    /// and restarts after `last`.
    pub(crate) fn truncate_after(&mut self, last: u64) {
        if last < self.base {
            self.entries.clear();
            self.base = last;
        } else {
            self.entries.truncate((last - self.base) as usize);
        }
    }

    /// Apply a snapshot marker: entries up to `s.index` are dropped. If the
    /// log holds the entry at `s.index` with term `s.term`, later entries are
    /// kept; otherwise the whole log is discarded (the snapshot replaces it).
    pub(crate) fn apply_snapshot(&mut self, s: SnapshotMeta) {
        if s.index <= self.base {
            return;
        }
        match self.get(s.index) {
            Some(e) if e.term == s.term => {
                self.entries.drain(..(s.index - self.base) as usize);
            }
            _ => self.entries.clear(),
        }
        self.base = s.index;
    }
}
