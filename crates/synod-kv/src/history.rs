//! A key's revisions: a persistent list, newest first, one allocation per
//! revision.
//!
//! Why a list and not a `Vec`: memory (issue 11, RSS after 1,000,000 puts).
//! A `Vec` of revisions grows by reallocating, and the block it leaves behind
//! (the one-revision history, freed when the second revision comes) is
//! scattered among blocks that stay, so the allocator keeps its pages: about a
//! tenth of a member's memory after 1,000,000 puts to 515,000 keys. And
//! copying a `Vec` when a snapshot shares the store copied every record of
//! it, so values had to be shared buffers (32 bytes a handle, and a counter
//! block once shared). A node is written once and never moves; a put adds
//! one in front, and a copy of the store shares every node, so a value is a
//! plain boxed slice.
//!
//! Reads at the current revision (almost all of them) look at the first
//! node; older revisions and a watch's replay walk back from it.

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

/// A write's place in history: the store revision of its transaction, then its
/// position inside that transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Rev {
    pub main: i64,
    pub sub: i64,
}

/// One revision of one key: a put (`live`) or a delete (`None`, a tombstone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Rec {
    pub rev: Rev,
    pub live: Option<Live>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Live {
    /// Encodes as bytes (as the shared buffer it replaced did).
    #[serde(with = "serde_bytes")]
    pub value: Box<[u8]>,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

#[derive(Clone)]
struct Node {
    rec: Rec,
    older: Option<Arc<Node>>,
}

impl Drop for Node {
    /// Frees a long chain one node at a time: the default drop recurses once
    /// per revision, and a key written a million times between compactions
    /// would overflow the stack.
    fn drop(&mut self) {
        let mut next = self.older.take();
        while let Some(node) = next {
            // Only the last holder of a node frees it (and goes on down).
            next = Arc::into_inner(node).and_then(|mut n| n.older.take());
        }
    }
}

/// A key's revisions, never empty, strictly increasing from oldest to newest.
/// Cloning it shares every node.
#[derive(Clone)]
pub(crate) struct History {
    newest: Arc<Node>,
}

impl History {
    pub fn new(rec: Rec) -> History {
        History {
            newest: Arc::new(Node { rec, older: None }),
        }
    }

    /// Adds a revision after every one the history holds.
    pub fn push(&mut self, rec: Rec) {
        assert!(
            rec.rev > self.newest.rec.rev,
            "revisions of a key only go forward"
        );
        let older = Some(self.newest.clone());
        self.newest = Arc::new(Node { rec, older });
    }

    pub fn last(&self) -> &Rec {
        &self.newest.rec
    }

    /// The record in force at store revision `rev`, if any.
    pub fn at(&self, rev: i64) -> Option<&Rec> {
        self.newest_first().find(|r| r.rev.main <= rev)
    }

    pub fn newest_first(&self) -> NewestFirst<'_> {
        NewestFirst {
            next: Some(&self.newest),
        }
    }

    /// The records from the first one at or after store revision `start`
    /// on, oldest first, each with the one before it (if history has it).
    pub fn since(&self, start: i64) -> Vec<(Option<&Rec>, &Rec)> {
        let mut found: Vec<(Option<&Rec>, &Rec)> = Vec::new();
        let mut it = self.newest_first().peekable();
        while let Some(r) = it.next_if(|r| r.rev.main >= start) {
            found.push((None, r));
        }
        // Each record's predecessor is the next one found, or for the
        // oldest found, the first record before `start`.
        let before = it.next();
        for i in 0..found.len() {
            found[i].0 = found.get(i + 1).map(|f| f.1).or(before);
        }
        found.reverse();
        found
    }

    /// The records, oldest first.
    pub fn oldest_first(&self) -> Vec<&Rec> {
        let mut all: Vec<&Rec> = self.newest_first().collect();
        all.reverse();
        all
    }

    /// Drops the records older than the `keep` newest; returns the dropped
    /// ones' sum of `size`. `keep` 0 is for the caller to handle (the key
    /// goes). Nodes a snapshot still shares are copied on the way down.
    pub fn keep_newest(&mut self, keep: usize, size: impl Fn(&Rec) -> i64) -> i64 {
        assert!(keep > 0, "a history is never empty");
        let mut link = &mut self.newest;
        for _ in 1..keep {
            link = Arc::make_mut(link)
                .older
                .as_mut()
                .expect("keeps no more records than it has");
        }
        let Some(cut) = Arc::make_mut(link).older.take() else {
            return 0;
        };
        let history = History { newest: cut };
        history.newest_first().map(size).sum()
    }
}

pub(crate) struct NewestFirst<'a> {
    next: Option<&'a Arc<Node>>,
}

impl<'a> Iterator for NewestFirst<'a> {
    type Item = &'a Rec;

    fn next(&mut self) -> Option<&'a Rec> {
        let node = self.next?;
        self.next = node.older.as_ref();
        Some(&node.rec)
    }
}

impl PartialEq for History {
    fn eq(&self, other: &History) -> bool {
        Arc::ptr_eq(&self.newest, &other.newest) || self.newest_first().eq(other.newest_first())
    }
}

impl Eq for History {}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.oldest_first()).finish()
    }
}

/// Encodes as the `Vec<Rec>` it replaced (oldest first), so snapshots of
/// either build read the same.
impl Serialize for History {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let all = self.oldest_first();
        let mut seq = s.serialize_seq(Some(all.len()))?;
        for r in all {
            seq.serialize_element(r)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for History {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<History, D::Error> {
        struct Recs;
        impl<'de> Visitor<'de> for Recs {
            type Value = History;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key's revisions, oldest first")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<History, A::Error> {
                use serde::de::Error;
                let first = seq
                    .next_element::<Rec>()?
                    .ok_or_else(|| A::Error::custom("a key with no revisions"))?;
                let mut h = History::new(first);
                while let Some(r) = seq.next_element::<Rec>()? {
                    if r.rev <= h.last().rev {
                        return Err(A::Error::custom("a key's revisions out of order"));
                    }
                    h.push(r);
                }
                Ok(h)
            }
        }
        d.deserialize_seq(Recs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(main: i64, value: &[u8]) -> Rec {
        Rec {
            rev: Rev { main, sub: 0 },
            live: Some(Live {
                value: value.into(),
                create_revision: 1,
                version: main,
                lease: 0,
            }),
        }
    }

    fn tombstone(main: i64) -> Rec {
        Rec {
            rev: Rev { main, sub: 0 },
            live: None,
        }
    }

    fn mains(h: &History) -> Vec<i64> {
        h.oldest_first().iter().map(|r| r.rev.main).collect()
    }

    #[test]
    fn reads_at_a_revision_find_the_record_in_force() {
        let mut h = History::new(put(2, b"a"));
        h.push(put(5, b"b"));
        h.push(tombstone(7));
        assert!(h.at(1).is_none());
        assert_eq!(h.at(4).unwrap().rev.main, 2);
        assert_eq!(h.at(5).unwrap().rev.main, 5);
        assert_eq!(h.at(6).unwrap().rev.main, 5);
        assert!(h.at(9).unwrap().live.is_none());
        assert_eq!(mains(&h), [2, 5, 7]);
    }

    #[test]
    fn since_pairs_each_record_with_the_one_before() {
        let mut h = History::new(put(2, b"a"));
        h.push(put(5, b"b"));
        h.push(put(9, b"c"));
        let got: Vec<(Option<i64>, i64)> = h
            .since(5)
            .iter()
            .map(|(p, r)| (p.map(|p| p.rev.main), r.rev.main))
            .collect();
        assert_eq!(got, [(Some(2), 5), (Some(5), 9)]);
        let all: Vec<_> = h.since(0).iter().map(|(p, _)| p.is_some()).collect();
        assert_eq!(all, [false, true, true]);
        assert!(h.since(10).is_empty());
    }

    #[test]
    fn compaction_leaves_a_shared_copy_untouched() {
        let mut h = History::new(put(2, b"a"));
        h.push(put(5, b"bb"));
        h.push(put(9, b"ccc"));
        let snapshot = h.clone();
        let freed = h.keep_newest(2, |r| r.live.as_ref().map_or(0, |l| l.value.len() as i64));
        assert_eq!(freed, 1);
        assert_eq!(mains(&h), [5, 9]);
        assert_eq!(mains(&snapshot), [2, 5, 9]);
        assert_eq!(h.keep_newest(2, |_| 1), 0);
        assert_ne!(h, snapshot);
    }

    #[test]
    #[should_panic(expected = "only go forward")]
    fn a_revision_from_the_past_is_refused() {
        let mut h = History::new(put(5, b"a"));
        h.push(put(3, b"b"));
    }

    #[test]
    fn a_long_history_drops_without_deep_recursion() {
        let mut h = History::new(put(1, b""));
        for main in 2..2_000_000 {
            h.push(tombstone(main));
        }
        let shared = h.clone();
        drop(h);
        assert_eq!(shared.last().rev.main, 1_999_999);
        drop(shared);
    }

    #[test]
    fn encodes_as_a_vec_of_records_does() {
        let mut h = History::new(put(2, b"a"));
        h.push(tombstone(4));
        h.push(put(6, b"xyz"));
        let as_vec: Vec<Rec> = h.oldest_first().into_iter().cloned().collect();
        let bytes = bincode::serialize(&h).unwrap();
        assert_eq!(bytes, bincode::serialize(&as_vec).unwrap());
        let back: History = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, h);
        let empty = bincode::serialize(&Vec::<Rec>::new()).unwrap();
        assert!(bincode::deserialize::<History>(&empty).is_err());
        let backwards: Vec<Rec> = as_vec.into_iter().rev().collect();
        let bytes = bincode::serialize(&backwards).unwrap();
        assert!(bincode::deserialize::<History>(&bytes).is_err());
    }
}
