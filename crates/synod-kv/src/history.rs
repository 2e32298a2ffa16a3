//! A key's revisions: a persistent list, newest first, one allocation per
//! revision holding its value.
//!
//! Why a list and not a `Vec`: memory (issue 11, RSS after 1,000,000 puts).
//! A `Vec` of revisions grows by reallocating, and the block it leaves behind
//! (the one-revision history, freed when the second revision comes) is
//! scattered among blocks that stay, so the allocator keeps its pages: about a
//! tenth of a member's memory after 1,000,000 puts to 515,000 keys. And
//! copying a `Vec` when a snapshot shares the store copied every record of
//! it, so values had to be shared buffers (32 bytes a handle, and a counter
//! block once shared). A node is written once and never moves; a put adds
//! one in front, and a copy of the store shares every node, so a value
//! needs no handle of its own: it sits in its revision's block, after 48
//! bytes of bookkeeping and the block's counter and length.
//!
//! Reads at the current revision (almost all of them) look at the first
//! node; older revisions and a watch's replay walk back from it.

use imbl::OrdMap;
use serde::de::{SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use triomphe::{Arc, ThinArc};

/// A write's place in history: the store revision of its transaction, then its
/// position inside that transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Rev {
    pub main: i64,
    pub sub: i64,
}

/// One revision of one key, as the history lends it out: a put (`live`) or
/// a delete (`None`, a tombstone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Rec<'a> {
    pub rev: Rev,
    pub live: Option<Live<'a>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Live<'a> {
    /// Encodes as bytes (as the shared buffer of earlier builds did).
    #[serde(with = "serde_bytes")]
    pub value: &'a [u8],
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// [`Rec`] as a snapshot holds it: the value borrowed from the snapshot's
/// bytes where the decoder allows, copied once into its node.
#[derive(Deserialize)]
struct RecIn<'a> {
    rev: Rev,
    #[serde(borrow)]
    live: Option<LiveIn<'a>>,
}

#[derive(Deserialize)]
struct LiveIn<'a> {
    #[serde(borrow, with = "serde_bytes")]
    value: Cow<'a, [u8]>,
    create_revision: i64,
    version: i64,
    lease: i64,
}

/// What a revision records besides its value: 48 bytes, so that a
/// revision is one block of 64 bytes plus its value (320 for a value of
/// 256 bytes, a size class of its own in mimalloc).
struct Meta {
    rev: Rev,
    create_revision: i64,
    /// 0 for a tombstone: a put's version is at least 1.
    version: i64,
    lease: i64,
    older: Option<Node>,
}

/// A revision: its [`Meta`] and its value in one allocation.
type Node = ThinArc<Meta, u8>;

fn node(rec: Rec<'_>, older: Option<Node>) -> Node {
    let (meta, value) = match rec.live {
        Some(l) => {
            assert!(l.version >= 1, "a put's version is at least 1");
            let meta = Meta {
                rev: rec.rev,
                create_revision: l.create_revision,
                version: l.version,
                lease: l.lease,
                older,
            };
            (meta, l.value)
        }
        None => {
            let meta = Meta {
                rev: rec.rev,
                create_revision: 0,
                version: 0,
                lease: 0,
                older,
            };
            (meta, &[][..])
        }
    };
    ThinArc::from_header_and_slice(meta, value)
}

fn rec(n: &Node) -> Rec<'_> {
    let m = &n.header.header;
    Rec {
        rev: m.rev,
        live: (m.version > 0).then_some(Live {
            value: &n.slice,
            create_revision: m.create_revision,
            version: m.version,
            lease: m.lease,
        }),
    }
}

/// The older revisions of a node, taken out if nothing else holds it.
fn take_older(n: &mut Node) -> Option<Option<Node>> {
    n.with_arc_mut(|a| Arc::get_mut(a).map(|m| m.header_mut().older.take()))
}

impl Drop for Meta {
    /// Frees a long chain one node at a time: the default drop recurses once
    /// per revision, and a key written a million times between compactions
    /// would overflow the stack.
    fn drop(&mut self) {
        let mut next = self.older.take();
        while let Some(mut n) = next {
            // Only the last holder of a node frees it (and goes on down).
            next = take_older(&mut n).flatten();
        }
    }
}

/// A key's revisions, never empty, strictly increasing from oldest to newest.
/// Cloning it shares every node.
#[derive(Clone)]
pub(crate) struct History {
    newest: Node,
}

impl History {
    pub fn new(first: Rec<'_>) -> History {
        History {
            newest: node(first, None),
        }
    }

    /// Adds a revision after every one the history holds.
    pub fn push(&mut self, r: Rec<'_>) {
        assert!(
            r.rev > self.last().rev,
            "revisions of a key only go forward"
        );
        self.newest = node(r, Some(self.newest.clone()));
    }

    pub fn last(&self) -> Rec<'_> {
        rec(&self.newest)
    }

    /// The record in force at store revision `rev`, if any.
    pub fn at(&self, rev: i64) -> Option<Rec<'_>> {
        self.newest_first().find(|r| r.rev.main <= rev)
    }

    pub fn newest_first(&self) -> NewestFirst<'_> {
        NewestFirst {
            next: Some(&self.newest),
        }
    }

    /// The records from the first one at or after store revision `start`
    /// on, oldest first, each with the one before it (if history has it).
    pub fn since(&self, start: i64) -> Vec<(Option<Rec<'_>>, Rec<'_>)> {
        let mut found: Vec<(Option<Rec<'_>>, Rec<'_>)> = Vec::new();
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
    pub fn oldest_first(&self) -> Vec<Rec<'_>> {
        self.nodes_oldest_first().into_iter().map(rec).collect()
    }

    /// The nodes, oldest first: a pointer each, for the walks that must go
    /// forward in time over a list that links backward (a snapshot encodes
    /// every key's history this way).
    fn nodes_oldest_first(&self) -> Vec<&Node> {
        let mut all: Vec<&Node> = Vec::new();
        let mut next = Some(&self.newest);
        while let Some(n) = next {
            all.push(n);
            next = n.header.header.older.as_ref();
        }
        all.reverse();
        all
    }

    /// Drops the records older than the `keep` newest; returns the dropped
    /// ones' sum of `size`. `keep` 0 is for the caller to handle (the key
    /// goes). A snapshot's copy keeps what it shares.
    pub fn keep_newest(&mut self, keep: usize, size: impl Fn(Rec<'_>) -> i64) -> i64 {
        assert!(keep > 0, "a history is never empty");
        if self.newest_first().nth(keep).is_none() {
            return 0;
        }
        let freed = self.newest_first().skip(keep).map(size).sum();
        // The usual cut, right below the newest record, in place unless a
        // snapshot shares the node.
        if keep == 1 && take_older(&mut self.newest).is_some() {
            return freed;
        }
        let kept = self.newest_first().take(keep).collect::<Vec<_>>();
        let mut fresh = History::new(kept[keep - 1]);
        for r in kept[..keep - 1].iter().rev() {
            fresh.push(*r);
        }
        *self = fresh;
        freed
    }
}

pub(crate) struct NewestFirst<'a> {
    next: Option<&'a Node>,
}

impl<'a> Iterator for NewestFirst<'a> {
    type Item = Rec<'a>;

    fn next(&mut self) -> Option<Rec<'a>> {
        let n = self.next?;
        self.next = n.header.header.older.as_ref();
        Some(rec(n))
    }
}

impl PartialEq for History {
    fn eq(&self, other: &History) -> bool {
        self.newest_first().eq(other.newest_first())
    }
}

impl Eq for History {}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.oldest_first()).finish()
    }
}

/// Encodes as the `Vec` of records of earlier builds (oldest first), so
/// snapshots of either build read the same.
impl Serialize for History {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.newest.header.header.older.is_none() {
            let mut seq = s.serialize_seq(Some(1))?;
            seq.serialize_element(&self.last())?;
            return seq.end();
        }
        OldestFirst(&self.nodes_oldest_first()).serialize(s)
    }
}

/// A history's nodes, oldest first, encoded as [`History`] encodes.
struct OldestFirst<'a, 'n>(&'a [&'n Node]);

impl Serialize for OldestFirst<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for n in self.0 {
            seq.serialize_element(&rec(n))?;
        }
        seq.end()
    }
}

/// How many keys' histories a snapshot walks at once.
const WALK_TOGETHER: usize = 16;

/// Encodes a store's keys exactly as `OrdMap`'s own `Serialize` does (a map
/// in key order, each history oldest first), but walks the histories of
/// [`WALK_TOGETHER`] keys at a time, a step of each in turn.
///
/// Why: a history links backward, so it is walked to the oldest record
/// before the first is encoded, one pointer to memory that is rarely cached
/// per record, each load waiting for the one before. Walked one key after
/// the other, these waits were 3.7% of the members' CPU under puts at 256
/// clients, on a thread of their own (issue 11). Steps of different keys do
/// not depend on each other, so taken in turn the processor overlaps their
/// misses.
pub(crate) fn serialize_keys<S: Serializer>(
    keys: &OrdMap<Box<[u8]>, History>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(keys.len()))?;
    let mut entries = keys.iter();
    let mut chunk: Vec<(&Box<[u8]>, &History)> = Vec::with_capacity(WALK_TOGETHER);
    let mut walks: Vec<Vec<&Node>> = (0..WALK_TOGETHER).map(|_| Vec::new()).collect();
    loop {
        chunk.clear();
        chunk.extend(entries.by_ref().take(WALK_TOGETHER));
        if chunk.is_empty() {
            break;
        }
        walk_oldest_first(chunk.iter().map(|(_, h)| *h), &mut walks);
        for ((k, _), nodes) in chunk.iter().zip(&walks) {
            map.serialize_entry(k, &OldestFirst(nodes))?;
        }
    }
    map.end()
}

/// Fills `walks[i]` with the nodes of the `i`th of `histories`, oldest
/// first, stepping through all the lists in turn.
fn walk_oldest_first<'n>(
    histories: impl ExactSizeIterator<Item = &'n History>,
    walks: &mut [Vec<&'n Node>],
) {
    assert!(histories.len() <= walks.len(), "one walk per history");
    let mut at: Vec<Option<&'n Node>> = histories.map(|h| Some(&h.newest)).collect();
    for w in walks.iter_mut() {
        w.clear();
    }
    let mut left = at.len();
    while left > 0 {
        for (cursor, walk) in at.iter_mut().zip(walks.iter_mut()) {
            if let Some(n) = *cursor {
                walk.push(n);
                *cursor = n.header.header.older.as_ref();
                if cursor.is_none() {
                    left -= 1;
                }
            }
        }
    }
    for w in walks.iter_mut() {
        w.reverse();
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
                let mut h: Option<History> = None;
                while let Some(r) = seq.next_element::<RecIn<'de>>()? {
                    let r_ref = Rec {
                        rev: r.rev,
                        live: r.live.as_ref().map(|l| Live {
                            value: &l.value,
                            create_revision: l.create_revision,
                            version: l.version,
                            lease: l.lease,
                        }),
                    };
                    if r_ref.live.is_some_and(|l| l.version < 1) {
                        return Err(A::Error::custom("a put with version 0"));
                    }
                    match &mut h {
                        None => h = Some(History::new(r_ref)),
                        Some(h) if r_ref.rev > h.last().rev => h.push(r_ref),
                        Some(_) => return Err(A::Error::custom("a key's revisions out of order")),
                    }
                }
                h.ok_or_else(|| A::Error::custom("a key with no revisions"))
            }
        }
        d.deserialize_seq(Recs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(main: i64, value: &[u8]) -> Rec<'_> {
        Rec {
            rev: Rev { main, sub: 0 },
            live: Some(Live {
                value,
                create_revision: 1,
                version: main,
                lease: 0,
            }),
        }
    }

    fn tombstone(main: i64) -> Rec<'static> {
        Rec {
            rev: Rev { main, sub: 0 },
            live: None,
        }
    }

    /// The keys, encoded by `serialize_keys`.
    struct Keys<'a>(&'a OrdMap<Box<[u8]>, History>);

    impl Serialize for Keys<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            serialize_keys(self.0, s)
        }
    }

    #[test]
    fn keys_walked_together_encode_as_one_by_one() {
        // More keys than one walk takes, and histories of every length
        // from one record to a dozen, tombstones among them.
        let mut keys = OrdMap::new();
        let mut main = 1;
        for k in 0..(2 * WALK_TOGETHER + 5) {
            let value = format!("v{k}");
            let mut h = History::new(put(main, value.as_bytes()));
            for i in 0..(k * 7) % 12 {
                main += 1;
                h.push(if i % 5 == 4 {
                    tombstone(main)
                } else {
                    put(main, value.as_bytes())
                });
            }
            main += 1;
            keys.insert(format!("key{k:03}").into_bytes().into_boxed_slice(), h);
        }
        let together = bincode::serialize(&Keys(&keys)).unwrap();
        assert_eq!(together, bincode::serialize(&keys).unwrap());
        let back: OrdMap<Box<[u8]>, History> = bincode::deserialize(&together).unwrap();
        assert!(back.iter().eq(keys.iter()), "decoded as encoded");
        assert!(
            bincode::serialize(&Keys(&OrdMap::new())).unwrap()
                == bincode::serialize(&OrdMap::<Box<[u8]>, History>::new()).unwrap()
        );
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
        assert_eq!(h.at(5).unwrap().live.unwrap().value, b"b");
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

    fn value_len(r: Rec<'_>) -> i64 {
        r.live.map_or(0, |l| l.value.len() as i64)
    }

    #[test]
    fn compaction_leaves_a_shared_copy_untouched() {
        for keep in [1, 2] {
            let mut h = History::new(put(2, b"a"));
            h.push(put(5, b"bb"));
            h.push(put(9, b"ccc"));
            let snapshot = h.clone();
            let freed = h.keep_newest(keep, value_len);
            assert_eq!(freed, [3, 1][keep - 1]);
            assert_eq!(mains(&h), [&[9][..], &[5, 9]][keep - 1]);
            assert_eq!(mains(&snapshot), [2, 5, 9]);
            assert_eq!(h.keep_newest(keep, |_| 1), 0);
            assert_ne!(h, snapshot);
        }
    }

    #[test]
    fn compaction_without_a_copy_cuts_in_place() {
        let mut h = History::new(put(2, b"a"));
        h.push(put(5, b"bb"));
        h.push(tombstone(9));
        assert_eq!(h.keep_newest(1, value_len), 3);
        assert_eq!(mains(&h), [9]);
        let mut h = History::new(put(2, b"a"));
        h.push(put(5, b"bb"));
        h.push(tombstone(9));
        assert_eq!(h.keep_newest(2, value_len), 1);
        assert_eq!(mains(&h), [5, 9]);
        assert_eq!(h.at(6).unwrap().live.unwrap().value, b"bb");
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

    /// The layout the memory figures rest on: a revision of a 256-byte
    /// value is one block of 320 bytes.
    #[test]
    fn a_revision_is_one_block_with_its_value() {
        assert_eq!(std::mem::size_of::<Meta>(), 48);
        assert_eq!(std::mem::size_of::<History>(), 8);
        assert_eq!(std::mem::size_of::<Option<Node>>(), 8);
    }

    /// The encoding of earlier builds: a `Vec` of records whose values were
    /// shared buffers (`bytes::Bytes`, which encodes as bytes).
    #[derive(Serialize)]
    struct OldRec {
        rev: Rev,
        live: Option<OldLive>,
    }

    #[derive(Serialize)]
    struct OldLive {
        value: bytes::Bytes,
        create_revision: i64,
        version: i64,
        lease: i64,
    }

    #[test]
    fn encodes_as_earlier_builds_did() {
        let mut h = History::new(put(2, b"a"));
        h.push(tombstone(4));
        h.push(put(6, b"xyz"));
        let old: Vec<OldRec> = h
            .oldest_first()
            .iter()
            .map(|r| OldRec {
                rev: r.rev,
                live: r.live.map(|l| OldLive {
                    value: bytes::Bytes::copy_from_slice(l.value),
                    create_revision: l.create_revision,
                    version: l.version,
                    lease: l.lease,
                }),
            })
            .collect();
        let bytes = bincode::serialize(&h).unwrap();
        assert_eq!(bytes, bincode::serialize(&old).unwrap());
        let back: History = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, h);
        let empty = bincode::serialize(&Vec::<OldRec>::new()).unwrap();
        assert!(bincode::deserialize::<History>(&empty).is_err());
        let backwards: Vec<OldRec> = old.into_iter().rev().collect();
        let bytes = bincode::serialize(&backwards).unwrap();
        assert!(bincode::deserialize::<History>(&bytes).is_err());
    }
}
