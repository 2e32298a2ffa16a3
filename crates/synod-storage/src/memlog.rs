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

/// What [`MemLog`] answers about indexes and terms, without the entries: runs
/// of one term, a few words however long the log. What a `DiskStorage` keeps
/// once its owner holds the entries itself (`drop_payloads`): an entry
/// record each (40 bytes) came to tens of MB between two snapshots of a
/// large store.
#[derive(Clone, Debug, Default)]
pub(crate) struct TermLog {
    base: u64,
    last: u64,
    /// `(first index, term)` of each run of `base+1 ..= last`, ascending
    /// by index; the first starts at `base + 1`.
    runs: Vec<(u64, u64)>,
}

impl TermLog {
    pub(crate) fn of(log: &MemLog) -> TermLog {
        let mut t = TermLog {
            base: log.base,
            last: log.base,
            runs: Vec::new(),
        };
        for e in &log.entries {
            t.append(e.index, e.term);
        }
        t
    }

    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.last
    }

    pub(crate) fn term(&self, index: u64) -> Option<u64> {
        if index <= self.base || index > self.last {
            return None;
        }
        let i = self.runs.partition_point(|&(first, _)| first <= index);
        Some(self.runs[i - 1].1)
    }

    /// As [`MemLog::append`]: an index at or below the last replaces that
    /// entry and everything after it.
    pub(crate) fn append(&mut self, index: u64, term: u64) {
        assert!(
            index <= self.last + 1,
            "appending {index} after {}",
            self.last
        );
        self.truncate_after(index - 1);
        match self.runs.last() {
            Some(&(_, t)) if t == term => {}
            _ => self.runs.push((index, term)),
        }
        self.last = index;
    }

    /// As [`MemLog::truncate_after`].
    pub(crate) fn truncate_after(&mut self, last: u64) {
        if last < self.base {
            self.runs.clear();
            self.base = last;
            self.last = last;
            return;
        }
        self.last = self.last.min(last);
        let keep = self.runs.partition_point(|&(first, _)| first <= self.last);
        self.runs.truncate(keep);
    }

    /// As [`MemLog::apply_snapshot`].
    pub(crate) fn apply_snapshot(&mut self, s: SnapshotMeta) {
        if s.index <= self.base {
            return;
        }
        if self.term(s.index) != Some(s.term) {
            self.runs.clear();
            self.base = s.index;
            self.last = s.index;
            return;
        }
        self.base = s.index;
        // The run holding `s.index` is the first kept; it now starts after it.
        let i = self.runs.partition_point(|&(first, _)| first <= s.index) - 1;
        self.runs.drain(..i);
        if self.last == s.index {
            self.runs.clear();
        } else if self.runs.len() > 1 && self.runs[1].0 == s.index + 1 {
            self.runs.remove(0);
        } else {
            self.runs[0].0 = s.index + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator: the tests need no more.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    fn same(m: &MemLog, t: &TermLog) {
        assert_eq!(m.base, t.base());
        assert_eq!(m.last_index(), t.last_index());
        for i in m.base.saturating_sub(2)..m.last_index() + 3 {
            assert_eq!(m.get(i).map(|e| e.term), t.term(i), "term of {i}: {t:?}");
        }
        if let Some((first, _)) = t.runs.first() {
            assert_eq!(*first, t.base + 1, "{t:?}");
        }
        assert!(t
            .runs
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 != w[1].1));
    }

    /// Every operation, at random, on both: the runs answer as the entries
    /// do. (Checked to fail with the run's start left alone on a snapshot,
    /// and with a truncation that drops the run it cuts into.)
    #[test]
    fn term_runs_answer_as_the_entries_do() {
        for seed in 0..300 {
            let mut rng = Lcg(seed);
            let mut m = MemLog::with_base(rng.below(5));
            let mut t = TermLog::of(&m);
            let mut term = 1;
            for _ in 0..200 {
                match rng.below(10) {
                    0..=5 => {
                        // Overwrites reach back a little, with a newer term.
                        let back = if rng.below(4) == 0 { rng.below(4) } else { 0 };
                        let index = (m.last_index() + 1).saturating_sub(back).max(1);
                        if back > 0 || rng.below(3) == 0 {
                            term += 1;
                        }
                        let e = Entry {
                            index,
                            term,
                            data: Vec::new(),
                        };
                        m.append(e);
                        t.append(index, term);
                    }
                    6 => {
                        let last = m.last_index().saturating_sub(rng.below(6));
                        m.truncate_after(last);
                        t.truncate_after(last);
                    }
                    _ => {
                        let index = m.base + rng.below(m.last_index() - m.base + 3);
                        let s = SnapshotMeta {
                            index,
                            term: match m.get(index) {
                                Some(e) if rng.below(4) > 0 => e.term,
                                _ => term + rng.below(2),
                            },
                        };
                        m.apply_snapshot(s);
                        t.apply_snapshot(s);
                    }
                }
                same(&m, &t);
                let rebuilt = TermLog::of(&m);
                assert_eq!(rebuilt.runs, t.runs);
            }
        }
    }
}
