//! The in-memory Raft log: a snapshot's metadata followed by entries.
//!
//! Because the driver applies writes in the order they are emitted, the
//! in-memory log is always what the disk will hold once the writes emitted so
//! far are synced; there is no separate "unstable" part to track.

use bytes::Bytes;

use super::{ConfState, Entry, EntryData, Payload, SnapshotMeta};

#[derive(Clone, Debug, Default)]
pub(crate) struct RaftLog {
    /// The prefix replaced by the latest snapshot (index 0: none).
    pub snap: SnapshotMeta,
    /// Entries `snap.index + 1 ..= last_index()`.
    entries: Vec<Entry>,
    /// The indexes of the configuration entries among `entries`, ascending:
    /// the configuration in force is looked up on every commit, and a
    /// scan back through a long log cost a fifth of a member's CPU.
    confs: Vec<u64>,
    /// Entries up to here (at least the snapshot's index) have had their
    /// commands dropped: applied, and held by every member, so no follower
    /// will be sent them again (see `RaftNode::release_bound`). Their index
    /// and term stay, for the log-matching checks.
    released: u64,
}

fn conf_indexes(es: &[Entry]) -> impl Iterator<Item = u64> + '_ {
    es.iter()
        .filter(|e| matches!(e.data, EntryData::Config(_)))
        .map(|e| e.index)
}

impl RaftLog {
    pub fn new(snap: SnapshotMeta, entries: Vec<Entry>) -> Self {
        let confs = conf_indexes(&entries).collect();
        let log = RaftLog {
            released: snap.index,
            snap,
            entries,
            confs,
        };
        log.check();
        log
    }

    /// The entries after the snapshot.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn first_index(&self) -> u64 {
        self.snap.index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.snap.index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.snap.term, |e| e.term)
    }

    /// The term of the entry at `index`; the snapshot's term at its index;
    /// `None` when compacted away or beyond the end.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snap.index {
            return Some(self.snap.term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.snap.index {
            return None;
        }
        self.entries.get((index - self.first_index()) as usize)
    }

    pub fn matches(&self, index: u64, term: u64) -> bool {
        self.term(index) == Some(term)
    }

    /// The last entry whose command was dropped ([`RaftLog::release`]).
    pub fn released(&self) -> u64 {
        self.released
    }

    /// Drops the commands of the entries up to `upto` (config entries stay
    /// whole: the configuration in force is read from them).
    pub fn release(&mut self, upto: u64) {
        let upto = upto.min(self.last_index());
        if upto <= self.released {
            return;
        }
        let from = (self.released + 1 - self.first_index()) as usize;
        let to = (upto + 1 - self.first_index()) as usize;
        for e in &mut self.entries[from..to] {
            if let EntryData::App(p) = &mut e.data {
                *p = Payload(Bytes::new());
            }
        }
        self.released = upto;
    }

    /// Up to `max` entries starting at `lo` (which must not be compacted;
    /// the caller checks that they were not released either).
    pub fn slice(&self, lo: u64, max: usize) -> Vec<Entry> {
        if lo > self.last_index() || lo <= self.snap.index {
            return Vec::new();
        }
        let start = (lo - self.first_index()) as usize;
        let end = (start + max).min(self.entries.len());
        self.entries[start..end].to_vec()
    }

    /// Appends entries, replacing any suffix from the first one's index.
    /// Returns how many entries were dropped from the old suffix.
    pub fn append(&mut self, es: &[Entry]) -> usize {
        let Some(first) = es.first() else { return 0 };
        assert!(
            first.index > self.snap.index,
            "append at {} below snapshot {}",
            first.index,
            self.snap.index
        );
        assert!(
            first.index <= self.last_index() + 1,
            "gap: append at {} after {}",
            first.index,
            self.last_index()
        );
        assert!(
            first.index > self.released,
            "append at {} over released entries up to {}",
            first.index,
            self.released
        );
        let keep = (first.index - self.first_index()) as usize;
        let dropped = self.entries.len() - keep;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(es);
        let kept = self.confs.partition_point(|i| *i < first.index);
        self.confs.truncate(kept);
        self.confs.extend(conf_indexes(es));
        dropped
    }

    /// The first entry of `es` that this log does not already hold (same index,
    /// same term), or `None` if it holds them all.
    pub fn find_conflict(&self, es: &[Entry]) -> Option<usize> {
        es.iter()
            .position(|e| e.index > self.snap.index && !self.matches(e.index, e.term))
    }

    /// The first index of the run of entries with the same term as `index`.
    pub fn first_index_of_term(&self, index: u64) -> u64 {
        let Some(t) = self.term(index) else {
            return index;
        };
        let mut i = index;
        while i > self.first_index() && self.term(i - 1) == Some(t) {
            i -= 1;
        }
        i
    }

    /// The last index `<= upto` whose term is `<= term`, if still in the log.
    pub fn last_index_with_term_at_most(&self, term: u64, upto: u64) -> Option<u64> {
        let mut i = upto.min(self.last_index());
        loop {
            match self.term(i) {
                Some(t) if t <= term => return Some(i),
                Some(_) if i > self.snap.index => i -= 1,
                _ => return None,
            }
        }
    }

    /// Replaces the prefix up to `meta.index` by a snapshot. Keeps the entries
    /// after it if the log agrees with the snapshot at its index, else drops all.
    pub fn restore(&mut self, meta: SnapshotMeta) {
        if self.matches(meta.index, meta.term) && meta.index >= self.snap.index {
            let n = (meta.index - self.snap.index) as usize;
            self.entries.drain(..n);
            let gone = self.confs.partition_point(|i| *i <= meta.index);
            self.confs.drain(..gone);
            self.released = self.released.max(meta.index);
        } else {
            self.entries.clear();
            self.confs.clear();
            self.released = meta.index;
        }
        self.snap = meta;
        self.check();
    }

    /// The configuration in force after the entries up to `index`: the last
    /// configuration entry at or before it, else the snapshot's.
    pub fn conf_at(&self, index: u64) -> ConfState {
        let upto = index.min(self.last_index());
        let n = self.confs.partition_point(|i| *i <= upto);
        match n.checked_sub(1).and_then(|k| self.entry(self.confs[k])) {
            Some(Entry {
                data: EntryData::Config(c),
                ..
            }) => c.clone(),
            Some(e) => panic!("entry {} is indexed as a configuration", e.index),
            None => self.snap.conf.clone(),
        }
    }

    /// The index of the last configuration entry, if any after the snapshot.
    pub fn last_conf_index(&self) -> Option<u64> {
        self.confs.last().copied()
    }

    /// Structural invariants: consecutive indices, terms that never
    /// decrease, the configuration index up to date.
    pub fn check(&self) {
        debug_assert!(conf_indexes(&self.entries).eq(self.confs.iter().copied()));
        assert!(
            self.snap.index <= self.released && self.released <= self.last_index(),
            "released up to {}, outside the log {}..={}",
            self.released,
            self.snap.index,
            self.last_index()
        );
        let mut prev = (self.snap.index, self.snap.term);
        for e in &self.entries {
            assert_eq!(e.index, prev.0 + 1, "log indices not consecutive");
            assert!(
                e.term >= prev.1,
                "log term decreases at index {}: {} after {}",
                e.index,
                e.term,
                prev.1
            );
            prev = (e.index, e.term);
        }
    }
}
