//! The in-memory Raft log: a snapshot's metadata, then the released entries
//! (index and term only), then whole entries.
//!
//! Because the driver applies writes in the order they are emitted, the
//! in-memory log is always what the disk will hold once the writes emitted so
//! far are synced; there is no separate "unstable" part to track.
//!
//! An entry is *released* once it is applied and every member holds it
//! (`RaftNode::release_bound`): no leader will send it again, and the
//! application has its effect, so only its term is still needed (to check
//! that logs match). Released entries are kept as runs of one term, a few
//! words for the whole prefix however long: between two snapshots of a large
//! store the log grows to as many entries as the store has keys, and whole
//! entries then cost as much memory as the store itself.

use bytes::Bytes;

use super::{ConfState, Entry, EntryData, Payload, SnapshotMeta};

#[derive(Clone, Debug, Default)]
pub(crate) struct RaftLog {
    /// The prefix replaced by the latest snapshot (index 0: none).
    pub snap: SnapshotMeta,
    /// The released entries `snap.index + 1 ..= released`, as runs of one
    /// term: `(first index, term)`, ascending in both.
    runs: Vec<(u64, u64)>,
    /// The last released entry (at least the snapshot's index).
    released: u64,
    /// Whole entries `released + 1 ..= last_index()`.
    entries: Vec<Entry>,
    /// The configuration entries after the snapshot, released or not, with
    /// their configurations, ascending: the configuration in force is looked
    /// up on every commit, and a scan back through a long log cost a fifth
    /// of a member's CPU.
    confs: Vec<(u64, ConfState)>,
}

fn confs_of(es: &[Entry]) -> impl Iterator<Item = (u64, ConfState)> + '_ {
    es.iter().filter_map(|e| match &e.data {
        EntryData::Config(c) => Some((e.index, c.clone())),
        _ => None,
    })
}

impl RaftLog {
    pub fn new(snap: SnapshotMeta, entries: Vec<Entry>) -> Self {
        let confs = confs_of(&entries).collect();
        let log = RaftLog {
            runs: Vec::new(),
            released: snap.index,
            snap,
            entries,
            confs,
        };
        log.check();
        log
    }

    /// The whole entries: those after the released ones.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn first_index(&self) -> u64 {
        self.snap.index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.released + self.entries.len() as u64
    }

    pub fn last_term(&self) -> u64 {
        match (self.entries.last(), self.runs.last()) {
            (Some(e), _) => e.term,
            (None, Some(&(_, t))) => t,
            (None, None) => self.snap.term,
        }
    }

    /// The term of the entry at `index`; the snapshot's term at its index;
    /// `None` when compacted away or beyond the end.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snap.index {
            return Some(self.snap.term);
        }
        if index <= self.snap.index {
            return None;
        }
        if index <= self.released {
            let run = self.runs.partition_point(|&(first, _)| first <= index);
            return Some(self.runs[run - 1].1);
        }
        self.entry(index).map(|e| e.term)
    }

    /// The whole entry at `index`: `None` when compacted, released or beyond
    /// the end.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.released {
            return None;
        }
        self.entries.get((index - self.released - 1) as usize)
    }

    pub fn matches(&self, index: u64, term: u64) -> bool {
        self.term(index) == Some(term)
    }

    /// The last released entry ([`RaftLog::release`]).
    pub fn released(&self) -> u64 {
        self.released
    }

    /// Releases the entries up to `upto`: their commands are dropped, their
    /// terms kept as runs.
    pub fn release(&mut self, upto: u64) {
        let upto = upto.min(self.last_index());
        if upto <= self.released {
            return;
        }
        let n = (upto - self.released) as usize;
        for e in self.entries.drain(..n) {
            match self.runs.last() {
                Some(&(_, t)) if t == e.term => {}
                _ => self.runs.push((e.index, e.term)),
            }
        }
        self.released = upto;
        // A follower that was away held everything back; once it is back
        // the log is short again, and its peak should not stay allocated.
        if self.entries.capacity() > 4096 && self.entries.capacity() > 4 * self.entries.len() {
            self.entries.shrink_to(2 * self.entries.len());
        }
    }

    /// Up to `max` whole entries starting at `lo` (neither compacted nor
    /// released).
    pub fn slice(&self, lo: u64, max: usize) -> Vec<Entry> {
        if lo > self.last_index() || lo <= self.snap.index {
            return Vec::new();
        }
        assert!(
            lo > self.released,
            "entries from {lo} asked for, released up to {}",
            self.released
        );
        let start = (lo - self.released - 1) as usize;
        let end = (start + max).min(self.entries.len());
        self.entries[start..end].to_vec()
    }

    /// What a leader with the `send_released` bug sends: entries from `lo`
    /// whose released commands are empty (configurations included).
    pub fn slice_with_released(&self, lo: u64, max: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut i = lo.max(self.first_index());
        while i <= self.released && out.len() < max {
            out.push(Entry {
                index: i,
                term: self.term(i).expect("released entries have terms"),
                data: EntryData::App(Payload(Bytes::new())),
            });
            i += 1;
        }
        out.extend(self.slice(i, max - out.len()));
        out
    }

    /// Appends entries, replacing any suffix from the first one's index.
    /// Returns how many entries were dropped from the old suffix.
    pub fn append(&mut self, es: &[Entry]) -> usize {
        let Some(first) = es.first() else { return 0 };
        assert!(
            first.index > self.released,
            "append at {} over released entries up to {}",
            first.index,
            self.released
        );
        assert!(
            first.index <= self.last_index() + 1,
            "gap: append at {} after {}",
            first.index,
            self.last_index()
        );
        let keep = (first.index - self.released - 1) as usize;
        let dropped = self.entries.len() - keep;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(es);
        let kept = self.confs.partition_point(|(i, _)| *i < first.index);
        self.confs.truncate(kept);
        self.confs.extend(confs_of(es));
        dropped
    }

    /// The first entry of `es` that this log does not already hold (same index,
    /// same term), or `None` if it holds them all.
    pub fn find_conflict(&self, es: &[Entry]) -> Option<usize> {
        es.iter()
            .position(|e| e.index > self.snap.index && !self.matches(e.index, e.term))
    }

    /// The first index of the run of entries with the same term as `index`
    /// (not before the first entry after the snapshot).
    pub fn first_index_of_term(&self, index: u64) -> u64 {
        let Some(t) = self.term(index) else {
            return index;
        };
        if index <= self.snap.index {
            return index;
        }
        let mut i = index;
        while i > self.released + 1 && self.term(i - 1) == Some(t) {
            i -= 1;
        }
        let into_runs =
            i == self.released + 1 && i > self.first_index() && self.term(i - 1) == Some(t);
        if into_runs || i <= self.released {
            // Released runs hold one term each, ascending: the run that holds
            // `i` starts where its term does.
            let at = i.min(self.released);
            let run = self.runs.partition_point(|&(first, _)| first <= at);
            i = self.runs[run - 1].0;
        }
        i
    }

    /// The last index `<= upto` whose term is `<= term`, if still in the log.
    pub fn last_index_with_term_at_most(&self, term: u64, upto: u64) -> Option<u64> {
        let mut i = upto.min(self.last_index());
        while i > self.released {
            match self.term(i) {
                Some(t) if t <= term => return Some(i),
                _ => i -= 1,
            }
        }
        if i < self.snap.index {
            return None;
        }
        // Among the released runs: the last one of a low enough term ends
        // at `i` or before its successor.
        let below = self.runs.partition_point(|&(first, _)| first <= i);
        for k in (0..below).rev() {
            let (first, t) = self.runs[k];
            if t <= term {
                let end = self.runs.get(k + 1).map_or(self.released, |&(f, _)| f - 1);
                return Some(end.min(i).max(first));
            }
        }
        (self.snap.term <= term).then_some(self.snap.index)
    }

    /// Replaces the prefix up to `meta.index` by a snapshot. Keeps the entries
    /// after it if the log agrees with the snapshot at its index, else drops all.
    pub fn restore(&mut self, meta: SnapshotMeta) {
        if self.matches(meta.index, meta.term) && meta.index >= self.snap.index {
            if meta.index <= self.released {
                // Runs that start after the snapshot stay; the one that
                // straddles it now starts right after it.
                let run = self.runs.partition_point(|&(first, _)| first <= meta.index);
                let straddling = self.runs[..run].last().map(|&(_, t)| t);
                self.runs.drain(..run);
                if let Some(t) = straddling.filter(|_| meta.index < self.released) {
                    if self.runs.first().is_none_or(|&(f, _)| f > meta.index + 1) {
                        self.runs.insert(0, (meta.index + 1, t));
                    }
                }
            } else {
                let n = (meta.index - self.released) as usize;
                self.entries.drain(..n);
                self.runs.clear();
                self.released = meta.index;
            }
            let gone = self.confs.partition_point(|(i, _)| *i <= meta.index);
            self.confs.drain(..gone);
        } else {
            self.entries.clear();
            self.runs.clear();
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
        let n = self.confs.partition_point(|(i, _)| *i <= upto);
        match n.checked_sub(1) {
            Some(k) => self.confs[k].1.clone(),
            None => self.snap.conf.clone(),
        }
    }

    /// The index of the last configuration entry, if any after the snapshot.
    pub fn last_conf_index(&self) -> Option<u64> {
        self.confs.last().map(|(i, _)| *i)
    }

    /// Structural invariants: consecutive indices, terms that never
    /// decrease, the runs and configuration index up to date.
    pub fn check(&self) {
        assert!(
            self.snap.index <= self.released,
            "released up to {}, before the snapshot at {}",
            self.released,
            self.snap.index
        );
        let mut prev_term = self.snap.term;
        for (k, &(first, t)) in self.runs.iter().enumerate() {
            let expect_first = if k == 0 { self.snap.index + 1 } else { first };
            assert_eq!(
                first, expect_first,
                "released runs start after the snapshot"
            );
            assert!(
                first <= self.released,
                "a run of released entries beyond them"
            );
            assert!(t >= prev_term, "log term decreases at index {first}");
            if k > 0 {
                assert!(
                    first > self.runs[k - 1].0 && t > prev_term,
                    "runs out of order"
                );
            }
            prev_term = t;
        }
        assert_eq!(
            self.runs.is_empty(),
            self.released == self.snap.index,
            "released entries without runs"
        );
        let mut prev = (self.released, prev_term);
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
        debug_assert!(self
            .confs
            .iter()
            .map(|(i, _)| *i)
            .filter(|i| *i > self.released)
            .eq(confs_of(&self.entries).map(|(i, _)| i)));
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// The log as plain entries, every query answered the slow way.
    struct Model {
        snap: (u64, u64),
        /// The snapshot's configuration, named by its entry's index.
        snap_conf: u64,
        /// `(index, term, configuration entry)`, consecutive after the snapshot.
        entries: Vec<(u64, u64, bool)>,
    }

    impl Model {
        fn last(&self) -> u64 {
            self.entries.last().map_or(self.snap.0, |e| e.0)
        }
        fn term(&self, i: u64) -> Option<u64> {
            if i == self.snap.0 {
                return Some(self.snap.1);
            }
            self.entries.iter().find(|e| e.0 == i).map(|e| e.1)
        }
        fn first_index_of_term(&self, index: u64) -> u64 {
            let Some(t) = self.term(index) else {
                return index;
            };
            let mut i = index;
            while i > self.snap.0 + 1 && self.term(i - 1) == Some(t) {
                i -= 1;
            }
            i
        }
        fn last_index_with_term_at_most(&self, term: u64, upto: u64) -> Option<u64> {
            let mut i = upto.min(self.last());
            loop {
                match self.term(i) {
                    Some(t) if t <= term => return Some(i),
                    Some(_) if i > self.snap.0 => i -= 1,
                    _ => return None,
                }
            }
        }
        fn conf_at(&self, index: u64) -> u64 {
            self.entries
                .iter()
                .filter(|e| e.2 && e.0 <= index)
                .map(|e| e.0)
                .next_back()
                .unwrap_or(self.snap_conf)
        }
    }

    fn conf_named(i: u64) -> ConfState {
        ConfState {
            voters: vec![i],
            learners: Vec::new(),
        }
    }

    fn meta(index: u64, term: u64) -> SnapshotMeta {
        SnapshotMeta {
            index,
            term,
            conf: conf_named(0),
        }
    }

    fn entry(index: u64, term: u64, conf: bool) -> Entry {
        let data = if conf {
            EntryData::Config(conf_named(index))
        } else {
            EntryData::App(Payload(Bytes::from(vec![1, 2, 3])))
        };
        Entry { index, term, data }
    }

    fn agree(log: &RaftLog, m: &Model, rng: &mut ChaCha8Rng) {
        log.check();
        assert_eq!(log.last_index(), m.last());
        assert_eq!(log.last_term(), m.term(m.last()).unwrap());
        let lo = m.snap.0.saturating_sub(2);
        for i in lo..=m.last() + 2 {
            assert_eq!(log.term(i), m.term(i), "term at {i}");
            assert_eq!(
                log.first_index_of_term(i),
                m.first_index_of_term(i),
                "first of term at {i}"
            );
            let expect = m.conf_at(i.min(m.last()));
            assert_eq!(log.conf_at(i).voters[0], expect, "configuration at {i}");
            if i > log.released() && i <= m.last() {
                assert!(log.entry(i).is_some_and(|e| e.index == i));
            } else {
                assert!(log.entry(i).is_none());
            }
        }
        for _ in 0..20 {
            let t = rng.gen_range(0..12);
            let upto = rng.gen_range(lo..=m.last() + 2);
            assert_eq!(
                log.last_index_with_term_at_most(t, upto),
                m.last_index_with_term_at_most(t, upto),
                "last index with term at most {t} up to {upto}"
            );
        }
    }

    /// Appends, releases and snapshots at random: the log with its
    /// released prefix as runs answers every query as whole entries do.
    #[test]
    fn released_runs_answer_as_whole_entries() {
        for seed in 0..300 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut log = RaftLog::new(meta(0, 0), Vec::new());
            let mut m = Model {
                snap: (0, 0),
                snap_conf: 0,
                entries: Vec::new(),
            };
            let mut term = 1;
            for _ in 0..60 {
                match rng.gen_range(0..10) {
                    0..=4 => {
                        // Append a batch, maybe over an unreleased suffix.
                        let from = rng.gen_range(log.released() + 1..=m.last() + 1);
                        let floor = m.term(from - 1).unwrap();
                        term = term.max(floor) + rng.gen_range(0..2);
                        let n = rng.gen_range(1..6);
                        let es: Vec<Entry> = (from..from + n)
                            .map(|i| entry(i, term, rng.gen_bool(0.15)))
                            .collect();
                        log.append(&es);
                        m.entries.retain(|e| e.0 < from);
                        m.entries
                            .extend(es.iter().map(|e| {
                                (e.index, e.term, matches!(e.data, EntryData::Config(_)))
                            }));
                    }
                    5..=7 => log.release(rng.gen_range(log.released()..=m.last() + 1)),
                    8 => {
                        // A snapshot that agrees with the log.
                        let i = rng.gen_range(m.snap.0..=m.last());
                        let t = m.term(i).unwrap();
                        let mut sm = meta(i, t);
                        m.snap_conf = m.conf_at(i);
                        sm.conf = conf_named(m.snap_conf);
                        log.restore(sm);
                        m.snap = (i, t);
                        m.entries.retain(|e| e.0 > i);
                    }
                    _ => {
                        // One that does not: everything goes.
                        let i = m.last() + rng.gen_range(1..4);
                        term += 1;
                        log.restore(meta(i, term));
                        m.snap = (i, term);
                        m.snap_conf = 0;
                        m.entries.clear();
                    }
                }
                agree(&log, &m, &mut rng);
            }
        }
    }
}
