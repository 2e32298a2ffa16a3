//! Linearizability checker for histories of the replicated key-value store.
//!
//! A history is **linearizable** if its operations can be put in one sequence that
//! (a) respects real time — an operation that completed before another was invoked
//! comes first — and (b) is legal for a plain map: every response is the one a
//! single-copy map would give when the operations are applied in that sequence.
//!
//! # Algorithm
//!
//! **Per-key splitting.** Linearizability is *local* (Herlihy and Wing): a history
//! is linearizable iff its restriction to each object is. Every operation here
//! touches exactly one key and the map is a product of independent per-key
//! registers, so each key is checked on its own — the P-compositionality used by
//! Porcupine. Per-key linearizations can be merged into one for the whole history
//! because each respects the same real-time order, and a partial order extended
//! by a union of compatible chains stays acyclic. This turns one search that is
//! exponential in the whole history into many small ones.
//!
//! **Search.** For one key, the Wing–Gong search as refined by Lowe: the invocation
//! and response events are sorted by time into a linked *entry list* (at equal
//! times invocations come first, so operations whose intervals merely touch count
//! as concurrent). An operation may be linearized next iff its invocation appears
//! before the first remaining response event — otherwise some operation that
//! completed before it was invoked is still waiting. The depth-first search tries
//! each such candidate whose result is legal in the current state: it applies it,
//! *lifts* its two events out of the list and starts again from the head; when no
//! candidate works it pops the last linearized operation, puts its events back
//! (undo) and tries the next candidate after it. The key is fine once every
//! completed operation is linearized, and not linearizable once the search pops an
//! empty stack.
//!
//! **Memoization.** Where the search stands is fully described by the set of
//! operations linearized so far (a bitset) and the model state, because the
//! candidates and everything that may follow depend only on these two. Every
//! configuration entered is cached, and a configuration met again is not explored
//! twice: this is what makes the search practical.
//!
//! **Indefinite operations** (no response) have no response event — as if they
//! returned at +∞ — so real time never forces them to be linearized, and they may
//! also be left out entirely: the search succeeds as soon as every *completed*
//! operation is linearized, whatever the indefinite ones did. They are kept in a
//! list of their own, tried after the completed candidates, with their own bitset
//! in the memo key. Leaving an indefinite operation out is always at least as good
//! as having applied it (it can still be applied later), so a configuration is
//! also skipped if the cache holds the same completed set and state with a
//! *subset* of its indefinite operations: every way to finish from the larger set
//! also finishes from the smaller one, in as many steps. For the same reason a
//! blind write (a put, or a delete whose result is unknown) is not linearized
//! right after another indefinite operation: the configuration before that one
//! reaches the same state by taking the blind write directly. Together with
//! trying completed operations first, this keeps a key with many lost writes
//! from making the search enumerate their subsets. Indefinite gets are dropped up
//! front, since they change nothing.
//!
//! **Model.** The state of a key is `Option<String>`; values are interned per key
//! to small integers (0 = absent). Every step is deterministic given the state.
//!
//! **Budget.** Each key's search counts its steps (candidate tries and undos); a key
//! that exceeds [`CheckOptions::max_steps_per_key`] is reported [`Unknown`]
//! instead of running on. No wall clock is involved, so results are reproducible.
//!
//! [`Unknown`]: CheckResult::Unknown

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use crate::history::{OpKind, OpResult, Operation, Shown};

/// Options of [`check_with`].
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Search steps allowed per key before the key is given up as
    /// [`CheckResult::Unknown`].
    pub max_steps_per_key: u64,
}

impl Default for CheckOptions {
    /// Ten million steps per key: well under a minute on any key.
    fn default() -> Self {
        CheckOptions {
            max_steps_per_key: 10_000_000,
        }
    }
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key has a linearization.
    Linearizable,
    /// Some key has none; the first such key (in key order) is described.
    NotLinearizable(Box<Violation>),
    /// No key was found bad, but the search of these keys ran out of budget.
    Unknown { keys: Vec<String> },
    /// Operation `index` of the history fails [`Operation::validate`].
    Malformed { index: usize, reason: String },
}

impl CheckResult {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }

    /// The violation, if the history was found not linearizable.
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            CheckResult::NotLinearizable(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Linearizable => write!(f, "linearizable"),
            CheckResult::NotLinearizable(v) => write!(f, "not linearizable: {v}"),
            CheckResult::Unknown { keys } => write!(
                f,
                "unknown: the search ran out of budget on {} key(s): {:?}",
                keys.len(),
                keys
            ),
            CheckResult::Malformed { index, reason } => {
                write!(f, "malformed history: operation {index}: {reason}")
            }
        }
    }
}

/// Why one key's operations cannot be linearized. Operations are named by their
/// index in the checked history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// All operations on the key, by invocation time.
    pub ops: Vec<usize>,
    /// The longest sequence of the key's operations the search could linearize
    /// (counting completed operations; among equals, the one with the fewest
    /// indefinite operations), in linearization order.
    pub longest_linearization: Vec<usize>,
    /// The key's value after `longest_linearization`.
    pub value_after: Option<String>,
    /// The completed operations left out of `longest_linearization`, by
    /// invocation time: none of them can come next.
    pub stuck: Vec<usize>,
    /// A human-readable account of the above.
    pub explanation: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.explanation)
    }
}

/// Checks `history` with the default [`CheckOptions`].
pub fn check(history: &[Operation]) -> CheckResult {
    check_with(history, &CheckOptions::default())
}

/// Checks whether `history` is linearizable with respect to a map, key by key.
pub fn check_with(history: &[Operation], options: &CheckOptions) -> CheckResult {
    for (index, op) in history.iter().enumerate() {
        if let Err(reason) = op.validate() {
            return CheckResult::Malformed { index, reason };
        }
    }
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        by_key.entry(op.key()).or_default().push(i);
    }
    let mut unknown = Vec::new();
    for (key, indices) in by_key {
        let search = KeySearch::new(history, &indices);
        match search.run(options.max_steps_per_key) {
            Outcome::Linearizable => {}
            Outcome::OutOfBudget => unknown.push(key.to_string()),
            Outcome::Stuck { best, state } => {
                let violation = search.violation(history, key, &indices, &best, state);
                return CheckResult::NotLinearizable(Box::new(violation));
            }
        }
    }
    if unknown.is_empty() {
        CheckResult::Linearizable
    } else {
        CheckResult::Unknown { keys: unknown }
    }
}

/// A value code: 0 is "absent", `i + 1` the i-th interned value of the key.
type Val = u32;
const ABSENT: Val = 0;

/// One operation of a key, compiled against the key's interned values. `None`
/// results are unknown (indefinite operations).
#[derive(Clone, Copy, Debug)]
enum Step {
    Put(Val),
    Get(Val),
    Delete(Option<bool>),
    Cas {
        expected: Val,
        value: Val,
        swapped: Option<bool>,
    },
}

impl Step {
    /// Whether the resulting state does not depend on the state (and the step is
    /// always possible).
    fn is_blind(self) -> bool {
        matches!(self, Step::Put(_) | Step::Delete(None))
    }

    /// The state after applying the operation to `state`, or `None` if its result
    /// is impossible there.
    #[inline]
    fn apply(self, state: Val) -> Option<Val> {
        match self {
            Step::Put(v) => Some(v),
            Step::Get(v) => (v == state).then_some(state),
            Step::Delete(existed) => match existed {
                Some(e) if e != (state != ABSENT) => None,
                _ => Some(ABSENT),
            },
            Step::Cas {
                expected,
                value,
                swapped,
            } => {
                let matches = expected == state;
                match swapped {
                    Some(s) if s != matches => None,
                    _ => Some(if matches { value } else { state }),
                }
            }
        }
    }
}

/// Sentinels of the doubly linked lists: node 0 is the head, node `len - 1` the
/// tail.
const HEAD: u32 = 0;

/// A doubly linked list over nodes `1..=n` with removal and LIFO re-insertion.
struct Links {
    next: Vec<u32>,
    prev: Vec<u32>,
}

impl Links {
    fn new(n: usize) -> Links {
        let len = n as u32 + 2;
        Links {
            next: (1..=len).map(|i| i.min(len - 1)).collect(),
            prev: (0..len).map(|i| i.saturating_sub(1)).collect(),
        }
    }

    fn tail(&self) -> u32 {
        self.next.len() as u32 - 1
    }

    #[inline]
    fn unlink(&mut self, n: u32) {
        let (p, x) = (self.prev[n as usize], self.next[n as usize]);
        self.next[p as usize] = x;
        self.prev[x as usize] = p;
    }

    /// Undoes `unlink(n)`; removals must be undone in reverse order.
    #[inline]
    fn relink(&mut self, n: u32) {
        let (p, x) = (self.prev[n as usize], self.next[n as usize]);
        self.next[p as usize] = n;
        self.prev[x as usize] = n;
    }
}

/// The search for one key. Local operation ids `0..ops.len()`; completed
/// operations come first (`0..completed`), then the indefinite ones.
struct KeySearch {
    /// Original history index per local op.
    orig: Vec<usize>,
    steps: Vec<Step>,
    completed: usize,
    /// Interned values, `values[i]` has code `i + 1`.
    values: Vec<String>,
    /// Event rank (position in the sorted event order) of each op's invocation,
    /// and of each completed op's response.
    call_rank: Vec<u32>,
    ret_rank: Vec<u32>,
    /// Main list: the call and return events of completed ops. Node `1 + r` for
    /// the event of rank `r` among them.
    main_len: usize,
    node_op: Vec<u32>,
    node_is_call: Vec<bool>,
    node_rank: Vec<u32>,
    call_node: Vec<u32>,
    ret_node: Vec<u32>,
    /// Indefinite list: node `1 + j` for indefinite op `completed + j` (sorted by
    /// invocation).
    indef_len: usize,
    /// Zobrist keys of the completed ops.
    zobrist: Vec<u64>,
}

enum Outcome {
    Linearizable,
    OutOfBudget,
    /// Not linearizable; the partial linearization found with the most completed
    /// ops (local ids), and the state after it.
    Stuck {
        best: Vec<u32>,
        state: Val,
    },
}

/// Where the scan of candidates stands at the current node of the search.
#[derive(Clone, Copy)]
enum Cursor {
    /// At a node of the main list.
    Main(u32),
    /// At a node of the indefinite list; only invocations ranked below `horizon`
    /// (the first remaining response) are candidates.
    Indef(u32, u32),
}

struct Frame {
    op: u32,
    prev_state: Val,
    horizon: u32,
}

impl KeySearch {
    fn new(history: &[Operation], indices: &[usize]) -> KeySearch {
        // Completed ops first, then indefinite ones; indefinite gets change nothing
        // and are dropped. Both groups sorted by invocation time.
        let mut chosen: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|&i| {
                let op = &history[i];
                !(op.is_indefinite() && matches!(op.kind, OpKind::Get { .. }))
            })
            .collect();
        chosen.sort_by_key(|&i| (history[i].is_indefinite(), history[i].invoke_us, i));
        let completed = chosen
            .iter()
            .take_while(|&&i| !history[i].is_indefinite())
            .count();

        let mut interner: HashMap<String, Val> = HashMap::new();
        let mut values: Vec<String> = Vec::new();
        let mut intern = |v: Option<&String>| -> Val {
            let Some(s) = v else { return ABSENT };
            if let Some(&code) = interner.get(s.as_str()) {
                return code;
            }
            values.push(s.clone());
            let code = values.len() as Val;
            interner.insert(s.clone(), code);
            code
        };
        let steps: Vec<Step> = chosen
            .iter()
            .map(|&i| {
                let op = &history[i];
                let flag = |r: &Option<OpResult>| match r {
                    Some(OpResult::Deleted(b)) | Some(OpResult::Swapped(b)) => Some(*b),
                    _ => None,
                };
                match &op.kind {
                    OpKind::Put { value, .. } => Step::Put(intern(Some(value))),
                    OpKind::Get { .. } => match &op.result {
                        Some(OpResult::Read(v)) => Step::Get(intern(v.as_ref())),
                        _ => unreachable!("validated, indefinite gets dropped"),
                    },
                    OpKind::Delete { .. } => Step::Delete(flag(&op.result)),
                    OpKind::Cas {
                        expected, value, ..
                    } => Step::Cas {
                        expected: intern(expected.as_ref()),
                        value: intern(Some(value)),
                        swapped: flag(&op.result),
                    },
                }
            })
            .collect();

        // Events: (time, is_return, local op). Invocations sort before responses
        // at equal times.
        let n = chosen.len();
        let mut events: Vec<(u64, bool, u32)> = Vec::with_capacity(n + completed);
        for (local, &i) in chosen.iter().enumerate() {
            let op = &history[i];
            events.push((op.invoke_us, false, local as u32));
            if let Some(t) = op.complete_us {
                events.push((t, true, local as u32));
            }
        }
        events.sort_unstable();
        let mut call_rank = vec![0; n];
        let mut ret_rank = vec![u32::MAX; n];
        let main_len = 2 * completed;
        let mut node_op = vec![u32::MAX; main_len + 2];
        let mut node_is_call = vec![false; main_len + 2];
        let mut node_rank = vec![u32::MAX; main_len + 2];
        let mut call_node = vec![0; completed];
        let mut ret_node = vec![0; completed];
        let mut main_pos = 0u32;
        for (rank, &(_, is_ret, op)) in events.iter().enumerate() {
            let rank = rank as u32;
            if is_ret {
                ret_rank[op as usize] = rank;
            } else {
                call_rank[op as usize] = rank;
            }
            if (op as usize) < completed {
                main_pos += 1;
                node_op[main_pos as usize] = op;
                node_is_call[main_pos as usize] = !is_ret;
                node_rank[main_pos as usize] = rank;
                if is_ret {
                    ret_node[op as usize] = main_pos;
                } else {
                    call_node[op as usize] = main_pos;
                }
            }
        }
        // The indefinite list must be in invocation-rank order; sorting by
        // invocation time (then history index, like the events) gives exactly that.
        debug_assert!(call_rank[completed..].windows(2).all(|w| w[0] < w[1]));

        let zobrist = (0..completed as u64)
            .map(|i| splitmix64(i ^ 0x5851_f42d_4c95_7f2d))
            .collect();
        KeySearch {
            orig: chosen,
            steps,
            completed,
            values,
            call_rank,
            ret_rank,
            main_len,
            node_op,
            node_is_call,
            node_rank,
            call_node,
            ret_node,
            indef_len: n - completed,
            zobrist,
        }
    }

    fn run(&self, budget: u64) -> Outcome {
        let completed = self.completed;
        if completed == 0 {
            return Outcome::Linearizable;
        }
        let mut main = Links::new(self.main_len);
        let mut indef = Links::new(self.indef_len);
        let main_tail = main.tail();
        let indef_tail = indef.tail();
        let mut cbits = vec![0u64; completed.div_ceil(64)];
        let mut ibits = vec![0u64; self.indef_len.div_ceil(64)];
        let mut hash = 0u64;
        let mut state = ABSENT;
        let mut remaining = completed;
        let mut stack: Vec<Frame> = Vec::new();
        let mut best: Vec<u32> = Vec::new();
        let mut best_state = ABSENT;
        let mut best_done = 0;
        let mut cache = Cache::default();
        cache.insert(hash, state, &cbits, &ibits);
        let mut spent = 0u64;
        let mut cursor = Cursor::Main(main.next[HEAD as usize]);

        loop {
            // Find the candidate under the cursor, or backtrack.
            let (op, horizon) = match cursor {
                Cursor::Main(node) if node != main_tail && self.node_is_call[node as usize] => {
                    (self.node_op[node as usize], 0)
                }
                Cursor::Main(node) => {
                    // First remaining response (or none): the completed candidates
                    // are exhausted, move on to the indefinite ones.
                    let horizon = if node == main_tail {
                        u32::MAX
                    } else {
                        self.node_rank[node as usize]
                    };
                    cursor = Cursor::Indef(indef.next[HEAD as usize], horizon);
                    continue;
                }
                Cursor::Indef(node, horizon)
                    if node != indef_tail
                        && self.call_rank[completed + node as usize - 1] < horizon =>
                {
                    ((completed + node as usize - 1) as u32, horizon)
                }
                Cursor::Indef(..) => {
                    // No candidate left here: undo the last linearized operation.
                    let Some(frame) = stack.pop() else {
                        return Outcome::Stuck {
                            best,
                            state: best_state,
                        };
                    };
                    spent += 1;
                    if spent > budget {
                        return Outcome::OutOfBudget;
                    }
                    state = frame.prev_state;
                    let op = frame.op as usize;
                    if op < completed {
                        main.relink(self.ret_node[op]);
                        main.relink(self.call_node[op]);
                        cbits[op / 64] &= !(1 << (op % 64));
                        hash ^= self.zobrist[op];
                        remaining += 1;
                        cursor = Cursor::Main(main.next[self.call_node[op] as usize]);
                    } else {
                        let j = op - completed;
                        indef.relink(j as u32 + 1);
                        ibits[j / 64] &= !(1 << (j % 64));
                        cursor = Cursor::Indef(indef.next[j + 1], frame.horizon);
                    }
                    continue;
                }
            };

            spent += 1;
            if spent > budget {
                return Outcome::OutOfBudget;
            }
            let o = op as usize;
            // A blind write right after another indefinite op: the parent of that
            // op can take this one directly, reaching the same state with fewer
            // indefinite ops used, so this branch is dominated.
            let dominated = o >= completed
                && self.steps[o].is_blind()
                && stack.last().is_some_and(|f| f.op as usize >= completed);
            let next = if dominated {
                None
            } else {
                self.steps[o].apply(state)
            };
            if let Some(next_state) = next {
                // Tentatively linearize, and enter the configuration unless it is
                // known (or dominated).
                let fresh = if o < completed {
                    cbits[o / 64] |= 1 << (o % 64);
                    let h = hash ^ self.zobrist[o];
                    let fresh = cache.insert(h, next_state, &cbits, &ibits);
                    if fresh {
                        hash = h;
                    } else {
                        cbits[o / 64] &= !(1 << (o % 64));
                    }
                    fresh
                } else {
                    let j = o - completed;
                    ibits[j / 64] |= 1 << (j % 64);
                    let fresh = cache.insert(hash, next_state, &cbits, &ibits);
                    if !fresh {
                        ibits[j / 64] &= !(1 << (j % 64));
                    }
                    fresh
                };
                if fresh {
                    stack.push(Frame {
                        op,
                        prev_state: state,
                        horizon,
                    });
                    state = next_state;
                    if o < completed {
                        main.unlink(self.call_node[o]);
                        main.unlink(self.ret_node[o]);
                        remaining -= 1;
                        if remaining == 0 {
                            return Outcome::Linearizable;
                        }
                    } else {
                        indef.unlink((o - completed) as u32 + 1);
                    }
                    // Keep the prefix with the most completed ops, and among those
                    // the fewest indefinite ones: the most telling one to show.
                    let done = completed - remaining;
                    if done > best_done || (done == best_done && stack.len() < best.len()) {
                        best_done = done;
                        best.clear();
                        best.extend(stack.iter().map(|f| f.op));
                        best_state = state;
                    }
                    cursor = Cursor::Main(main.next[HEAD as usize]);
                    continue;
                }
            }
            // Not possible or already explored: next candidate.
            cursor = match cursor {
                Cursor::Main(node) => Cursor::Main(main.next[node as usize]),
                Cursor::Indef(node, h) => Cursor::Indef(indef.next[node as usize], h),
            };
        }
    }

    fn value(&self, v: Val) -> Option<String> {
        (v != ABSENT).then(|| self.values[v as usize - 1].clone())
    }

    /// Describes the failure of this key's search.
    fn violation(
        &self,
        history: &[Operation],
        key: &str,
        indices: &[usize],
        best: &[u32],
        state: Val,
    ) -> Violation {
        use std::fmt::Write as _;
        let completed = self.completed;
        let mut in_best = vec![false; self.steps.len()];
        for &op in best {
            in_best[op as usize] = true;
        }
        // Stuck: completed ops not in the best prefix, by invocation.
        let stuck_local: Vec<usize> = (0..completed).filter(|&o| !in_best[o]).collect();
        let mut ops: Vec<usize> = indices.to_vec();
        ops.sort_by_key(|&i| (history[i].invoke_us, i));
        let best_orig: Vec<usize> = best.iter().map(|&o| self.orig[o as usize]).collect();
        let stuck: Vec<usize> = stuck_local.iter().map(|&o| self.orig[o]).collect();
        let value_after = self.value(state);

        // The earliest remaining response: ops invoked after it cannot come next.
        let first_ret = stuck_local
            .iter()
            .copied()
            .min_by_key(|&o| self.ret_rank[o]);

        let mut s = String::new();
        let _ = writeln!(
            s,
            "key {key:?}: no order of its {} operations agrees with both real time and \
             the results returned",
            ops.len()
        );
        const SHOW_PREFIX: usize = 8;
        const SHOW_STUCK: usize = 12;
        let _ = writeln!(
            s,
            "  longest linearizable prefix found ({} ops), after which the key is {}:",
            best.len(),
            Shown(&value_after)
        );
        if best.len() > SHOW_PREFIX {
            let _ = writeln!(s, "    ... {} earlier ops", best.len() - SHOW_PREFIX);
        }
        for &o in &best[best.len().saturating_sub(SHOW_PREFIX)..] {
            let i = self.orig[o as usize];
            let _ = writeln!(s, "    #{i} {}", history[i]);
        }
        let _ = writeln!(
            s,
            "  none of the {} remaining completed ops can come next:",
            stuck.len()
        );
        for &o in stuck_local.iter().take(SHOW_STUCK) {
            let i = self.orig[o];
            let why = match first_ret {
                Some(r) if self.ret_rank[r] < self.call_rank[o] => {
                    format!("must follow #{}, which completed first", self.orig[r])
                }
                _ => match self.steps[o].apply(state) {
                    None => format!("impossible when the key is {}", Shown(&value_after)),
                    Some(_) => "every order that continues with it gets stuck".to_string(),
                },
            };
            let _ = writeln!(s, "    #{i} {}  ({why})", history[i]);
        }
        if stuck.len() > SHOW_STUCK {
            let _ = writeln!(s, "    ... {} more", stuck.len() - SHOW_STUCK);
        }
        let pending = self.steps.len() - completed;
        let dropped = indices.len() - self.steps.len();
        if pending + dropped > 0 {
            let _ = writeln!(
                s,
                "  ({} indefinite op(s) on the key may take effect or not, as needed)",
                pending + dropped
            );
        }
        Violation {
            key: key.to_string(),
            ops,
            longest_linearization: best_orig,
            value_after,
            stuck,
            explanation: s.trim_end().to_string(),
        }
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hasher for keys that are already well-mixed 64-bit hashes.
#[derive(Default)]
struct PremixedHasher(u64);

impl Hasher for PremixedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }
}

/// Configurations explored: per (completed set, state), the indefinite sets
/// entered with them, none a subset of another.
#[derive(Default)]
struct Cache {
    map: HashMap<u64, Vec<CacheEntry>, BuildHasherDefault<PremixedHasher>>,
}

struct CacheEntry {
    state: Val,
    completed: Box<[u64]>,
    indefinite: Vec<Box<[u64]>>,
}

fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x & !y == 0)
}

impl Cache {
    /// Records the configuration; returns false if it (or one that dominates it)
    /// was already there. `hash` covers `completed` only.
    fn insert(&mut self, hash: u64, state: Val, completed: &[u64], indefinite: &[u64]) -> bool {
        let key = hash ^ splitmix64(u64::from(state) ^ 0xd6e8_feb8_6659_fd93);
        let bucket = self.map.entry(key).or_default();
        if let Some(entry) = bucket
            .iter_mut()
            .find(|e| e.state == state && *e.completed == *completed)
        {
            if entry.indefinite.iter().any(|s| is_subset(s, indefinite)) {
                return false;
            }
            entry.indefinite.retain(|s| !is_subset(indefinite, s));
            entry.indefinite.push(indefinite.into());
            return true;
        }
        bucket.push(CacheEntry {
            state,
            completed: completed.into(),
            indefinite: vec![indefinite.into()],
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str, a: u64, b: u64) -> Operation {
        Operation::completed(
            1,
            OpKind::Put {
                key: k.into(),
                value: v.into(),
            },
            a,
            b,
            OpResult::Ok,
        )
    }

    fn get(k: &str, v: Option<&str>, a: u64, b: u64) -> Operation {
        Operation::completed(
            2,
            OpKind::Get { key: k.into() },
            a,
            b,
            OpResult::Read(v.map(String::from)),
        )
    }

    #[test]
    fn touching_intervals_are_concurrent() {
        // The get completes exactly when the put is invoked: either order is allowed.
        let h = [get("x", Some("a"), 0, 10), put("x", "a", 10, 20)];
        assert!(check(&h).is_linearizable());
        let h = [get("x", Some("a"), 0, 9), put("x", "a", 10, 20)];
        assert!(!check(&h).is_linearizable());
    }

    #[test]
    fn budget_exhaustion_is_unknown() {
        let h: Vec<Operation> = (0..20)
            .map(|i| put("x", &i.to_string(), 0, 100))
            .chain([get("x", Some("nope"), 0, 100)])
            .collect();
        let r = check_with(
            &h,
            &CheckOptions {
                max_steps_per_key: 50,
            },
        );
        assert_eq!(
            r,
            CheckResult::Unknown {
                keys: vec!["x".into()]
            }
        );
    }

    #[test]
    fn links_undo_in_reverse_order() {
        let mut l = Links::new(4);
        l.unlink(2);
        l.unlink(3);
        assert_eq!(l.next[1], 4);
        l.relink(3);
        l.relink(2);
        assert_eq!(l.next, vec![1, 2, 3, 4, 5, 5]);
        assert_eq!(l.prev, vec![0, 0, 1, 2, 3, 4]);
    }
}
