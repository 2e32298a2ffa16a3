//! Hand-written, generated and brute-force-checked histories for the
//! linearizability checker, and JSON lines round trips.

use std::collections::HashMap;

use proptest::prelude::*;
use synod_sim::history::{
    read_jsonl, synthetic_history, write_jsonl, OpKind, OpResult, Operation, SynthConfig,
};
use synod_sim::linearizability::{check, check_with, CheckOptions, CheckResult};

// ---------------------------------------------------------------------------
// Builders. Times are in microseconds; `c` is the client.

fn put(c: u64, k: &str, v: &str, a: u64, b: u64) -> Operation {
    let kind = OpKind::Put {
        key: k.into(),
        value: v.into(),
    };
    Operation::completed(c, kind, a, b, OpResult::Ok)
}

fn get(c: u64, k: &str, v: Option<&str>, a: u64, b: u64) -> Operation {
    let kind = OpKind::Get { key: k.into() };
    Operation::completed(c, kind, a, b, OpResult::Read(v.map(String::from)))
}

fn del(c: u64, k: &str, existed: bool, a: u64, b: u64) -> Operation {
    let kind = OpKind::Delete { key: k.into() };
    Operation::completed(c, kind, a, b, OpResult::Deleted(existed))
}

fn cas(c: u64, k: &str, from: Option<&str>, to: &str, ok: bool, a: u64, b: u64) -> Operation {
    let kind = OpKind::Cas {
        key: k.into(),
        expected: from.map(String::from),
        value: to.into(),
    };
    Operation::completed(c, kind, a, b, OpResult::Swapped(ok))
}

fn lost(op: Operation) -> Operation {
    Operation {
        complete_us: None,
        result: None,
        ..op
    }
}

fn assert_ok(h: &[Operation]) {
    let r = check(h);
    assert!(r.is_linearizable(), "expected linearizable, got {r}");
}

/// Asserts a violation on `key` and returns its explanation.
fn assert_bad(h: &[Operation], key: &str) -> String {
    match check(h) {
        CheckResult::NotLinearizable(v) => {
            assert_eq!(v.key, key, "{v}");
            v.explanation.clone()
        }
        other => panic!("expected a violation on {key:?}, got {other}"),
    }
}

// ---------------------------------------------------------------------------
// Hand-written histories.

#[test]
fn empty_history_is_linearizable() {
    assert_ok(&[]);
}

#[test]
fn sequential_put_get() {
    assert_ok(&[
        get(1, "x", None, 0, 10),
        put(1, "x", "a", 20, 30),
        get(1, "x", Some("a"), 40, 50),
        put(2, "x", "b", 60, 70),
        get(1, "x", Some("b"), 80, 90),
    ]);
}

#[test]
fn sequential_get_of_overwritten_value_fails() {
    assert_bad(
        &[
            put(1, "x", "a", 0, 10),
            put(1, "x", "b", 20, 30),
            get(1, "x", Some("a"), 40, 50),
        ],
        "x",
    );
}

#[test]
fn concurrent_get_may_see_old_or_new() {
    let base = [put(1, "x", "a", 0, 10), put(1, "x", "b", 20, 60)];
    for seen in ["a", "b"] {
        let mut h = base.to_vec();
        h.push(get(2, "x", Some(seen), 30, 40));
        assert_ok(&h);
    }
    // Absent is not one of them.
    let mut h = base.to_vec();
    h.push(get(2, "x", None, 30, 40));
    assert_bad(&h, "x");
}

#[test]
fn concurrent_reads_must_agree_on_an_order() {
    // Two gets concurrent with a put, the first (in real time) sees the new value,
    // the second, which starts after the first ends, sees the old one: a new-old
    // inversion.
    assert_bad(
        &[
            put(1, "x", "a", 0, 10),
            put(1, "x", "b", 20, 100),
            get(2, "x", Some("b"), 30, 40),
            get(3, "x", Some("a"), 50, 60),
        ],
        "x",
    );
    // Overlapping gets may each see either.
    assert_ok(&[
        put(1, "x", "a", 0, 10),
        put(1, "x", "b", 20, 100),
        get(2, "x", Some("b"), 30, 55),
        get(3, "x", Some("a"), 50, 60),
    ]);
}

#[test]
fn stale_read_after_completed_write_fails() {
    let explanation = assert_bad(
        &[
            put(1, "x", "a", 0, 10),
            put(1, "x", "b", 20, 30),
            get(2, "x", Some("a"), 35, 45),
        ],
        "x",
    );
    assert!(explanation.contains("key \"x\""), "{explanation}");
    assert!(explanation.contains("get \"x\""), "{explanation}");
}

#[test]
fn read_of_a_value_never_written_fails() {
    assert_bad(
        &[put(1, "x", "a", 0, 10), get(2, "x", Some("zzz"), 0, 20)],
        "x",
    );
}

#[test]
fn read_of_a_value_before_any_write_fails_unless_concurrent() {
    assert_bad(
        &[get(2, "x", Some("a"), 0, 5), put(1, "x", "a", 10, 20)],
        "x",
    );
    // A read that sees a value from an op invoked after the read completed, with
    // other traffic around.
    assert_bad(
        &[
            put(1, "x", "old", 0, 5),
            get(2, "x", Some("new"), 10, 20),
            put(3, "x", "new", 21, 30),
            get(2, "x", Some("new"), 40, 50),
        ],
        "x",
    );
    assert_ok(&[get(2, "x", Some("a"), 0, 15), put(1, "x", "a", 10, 20)]);
}

#[test]
fn cas_races() {
    let winner_and_loser = [
        put(1, "x", "a", 0, 10),
        cas(2, "x", Some("a"), "b", true, 20, 40),
        cas(3, "x", Some("a"), "c", false, 25, 35),
        get(1, "x", Some("b"), 50, 60),
    ];
    assert_ok(&winner_and_loser);
    let both_win = [
        put(1, "x", "a", 0, 10),
        cas(2, "x", Some("a"), "b", true, 20, 40),
        cas(3, "x", Some("a"), "c", true, 25, 35),
    ];
    assert_bad(&both_win, "x");
    // Both losing is wrong too: whichever goes first finds "a".
    let both_lose = [
        put(1, "x", "a", 0, 10),
        cas(2, "x", Some("a"), "b", false, 20, 40),
        cas(3, "x", Some("a"), "c", false, 25, 35),
    ];
    assert_bad(&both_lose, "x");
    // The final read must match the winner.
    let wrong_final = [
        put(1, "x", "a", 0, 10),
        cas(2, "x", Some("a"), "b", true, 20, 40),
        cas(3, "x", Some("a"), "c", false, 25, 35),
        get(1, "x", Some("c"), 50, 60),
    ];
    assert_bad(&wrong_final, "x");
}

#[test]
fn cas_from_absent() {
    assert_ok(&[
        cas(1, "x", None, "a", true, 0, 10),
        cas(2, "x", None, "b", false, 20, 30),
        get(1, "x", Some("a"), 40, 50),
    ]);
    assert_bad(
        &[
            put(1, "x", "a", 0, 10),
            cas(2, "x", None, "b", true, 20, 30),
        ],
        "x",
    );
    // A chain of cas: two clients each swap once, in either order.
    assert_ok(&[
        cas(1, "x", None, "a", true, 0, 10),
        cas(2, "x", Some("a"), "b", true, 20, 50),
        cas(3, "x", Some("b"), "c", true, 20, 50),
        get(1, "x", Some("c"), 60, 70),
    ]);
}

#[test]
fn delete_results() {
    assert_ok(&[
        del(1, "x", false, 0, 10),
        put(1, "x", "a", 20, 30),
        del(2, "x", true, 40, 50),
        get(1, "x", None, 60, 70),
        del(2, "x", false, 80, 90),
    ]);
    // Deleting an existing key must report it existed...
    assert_bad(&[put(1, "x", "a", 0, 10), del(2, "x", false, 20, 30)], "x");
    // ... and an absent one that it did not.
    assert_bad(&[del(2, "x", true, 0, 10)], "x");
    // Two concurrent deletes of one existing key: exactly one finds it.
    assert_ok(&[
        put(1, "x", "a", 0, 10),
        del(2, "x", true, 20, 40),
        del(3, "x", false, 25, 35),
    ]);
    assert_bad(
        &[
            put(1, "x", "a", 0, 10),
            del(2, "x", true, 20, 40),
            del(3, "x", true, 25, 35),
        ],
        "x",
    );
    // A read after a completed delete sees nothing.
    assert_bad(
        &[
            put(1, "x", "a", 0, 10),
            del(2, "x", true, 20, 30),
            get(1, "x", Some("a"), 40, 50),
        ],
        "x",
    );
}

#[test]
fn indefinite_put_later_observed() {
    assert_ok(&[
        put(1, "x", "a", 0, 10),
        lost(put(2, "x", "b", 20, 0)),
        get(3, "x", Some("a"), 30, 40),
        get(3, "x", Some("b"), 1000, 1010),
    ]);
    // Observed long after, by a delete.
    assert_ok(&[
        lost(put(2, "x", "b", 20, 0)),
        get(3, "x", None, 30, 40),
        del(3, "x", true, 5000, 5010),
    ]);
}

#[test]
fn indefinite_put_never_observed() {
    assert_ok(&[
        put(1, "x", "a", 0, 10),
        lost(put(2, "x", "b", 20, 0)),
        get(3, "x", Some("a"), 30, 40),
        get(3, "x", Some("a"), 1000, 1010),
    ]);
}

#[test]
fn indefinite_put_cannot_be_seen_before_it_is_invoked() {
    assert_bad(
        &[get(3, "x", Some("b"), 0, 10), lost(put(2, "x", "b", 20, 0))],
        "x",
    );
}

#[test]
fn indefinite_put_takes_effect_at_most_once() {
    // Seen, then overwritten, then seen again: it cannot take effect twice.
    assert_bad(
        &[
            lost(put(2, "x", "b", 0, 0)),
            get(3, "x", Some("b"), 10, 20),
            put(1, "x", "a", 30, 40),
            get(3, "x", Some("b"), 50, 60),
        ],
        "x",
    );
}

#[test]
fn indefinite_cas_and_delete() {
    // An indefinite cas may have swapped...
    assert_ok(&[
        put(1, "x", "a", 0, 10),
        lost(cas(2, "x", Some("a"), "b", true, 20, 0)),
        get(3, "x", Some("b"), 100, 110),
    ]);
    // ... or not ...
    assert_ok(&[
        put(1, "x", "a", 0, 10),
        lost(cas(2, "x", Some("a"), "b", true, 20, 0)),
        get(3, "x", Some("a"), 100, 110),
    ]);
    // ... but it cannot swap from a value the key did not hold.
    assert_bad(
        &[
            put(1, "x", "z", 0, 10),
            lost(cas(2, "x", Some("a"), "b", true, 20, 0)),
            get(3, "x", Some("b"), 100, 110),
        ],
        "x",
    );
    // An indefinite delete explains a vanished key.
    assert_ok(&[
        put(1, "x", "a", 0, 10),
        lost(del(2, "x", true, 20, 0)),
        get(3, "x", None, 100, 110),
    ]);
    // Indefinite gets constrain nothing.
    assert_ok(&[
        lost(get(2, "x", Some("nonsense"), 0, 0)),
        get(3, "x", None, 100, 110),
    ]);
}

#[test]
fn many_indefinite_ops_on_a_violating_key_stay_cheap() {
    // 40 lost puts (never observed) and a stale read at the end: the dominance
    // pruning keeps the failing search from enumerating subsets of lost puts.
    let mut h = vec![put(1, "x", "a", 0, 10), put(1, "x", "b", 20, 30)];
    for i in 0..40 {
        h.push(lost(put(2 + i, "x", &format!("lost{i}"), 40 + i, 0)));
        h.push(get(1, "x", Some("b"), 40 + 10 * i, 45 + 10 * i));
    }
    h.push(get(1, "x", Some("a"), 1000, 1010));
    let r = check_with(
        &h,
        &CheckOptions {
            max_steps_per_key: 1_000_000,
        },
    );
    assert_eq!(r.violation().map(|v| v.key.as_str()), Some("x"), "{r}");
}

#[test]
fn multi_key_history_with_one_bad_key() {
    let h = [
        put(1, "a", "1", 0, 10),
        put(2, "b", "1", 0, 10),
        put(3, "c", "1", 0, 10),
        get(1, "a", Some("1"), 20, 30),
        get(2, "b", Some("2"), 20, 30), // never written
        get(3, "c", Some("1"), 20, 30),
    ];
    let explanation = assert_bad(&h, "b");
    assert!(explanation.contains("\"2\""), "{explanation}");
    let v = check(&h);
    let v = v.violation().unwrap();
    assert_eq!(v.ops, vec![1, 4]);
    assert_eq!(v.longest_linearization, vec![1]);
    assert_eq!(v.value_after.as_deref(), Some("1"));
    assert_eq!(v.stuck, vec![4]);
}

#[test]
fn keys_do_not_share_values() {
    // The same value on two keys: writing it to one does not make it visible on
    // the other.
    assert_ok(&[
        put(1, "x", "v", 0, 10),
        get(2, "y", None, 20, 30),
        put(1, "y", "v", 40, 50),
        get(2, "x", Some("v"), 60, 70),
        get(2, "y", Some("v"), 60, 70),
    ]);
    assert_bad(
        &[put(1, "x", "v", 0, 10), get(2, "y", Some("v"), 20, 30)],
        "y",
    );
}

#[test]
fn malformed_history_is_reported() {
    let mut op = get(1, "x", None, 10, 20);
    op.result = Some(OpResult::Swapped(true));
    match check(&[put(1, "x", "a", 0, 5), op]) {
        CheckResult::Malformed { index, .. } => assert_eq!(index, 1),
        other => panic!("{other}"),
    }
    let backwards = get(1, "x", None, 30, 20);
    assert!(matches!(
        check(&[backwards]),
        CheckResult::Malformed { index: 0, .. }
    ));
}

#[test]
fn pathological_history_runs_out_of_budget() {
    // 24 concurrent puts of distinct values and a read of a value never written:
    // without the budget the search would visit millions of configurations.
    let mut h: Vec<Operation> = (0..24)
        .map(|i| put(i, "x", &format!("v{i}"), 0, 1000))
        .collect();
    h.push(get(99, "x", Some("never"), 0, 1000));
    h.push(put(1, "y", "fine", 0, 10));
    let r = check_with(
        &h,
        &CheckOptions {
            max_steps_per_key: 100_000,
        },
    );
    assert_eq!(
        r,
        CheckResult::Unknown {
            keys: vec!["x".into()]
        }
    );
    // A definite violation on another key still wins over an unknown one.
    h.push(get(2, "y", Some("wrong"), 20, 30));
    let r = check_with(
        &h,
        &CheckOptions {
            max_steps_per_key: 100_000,
        },
    );
    assert_eq!(r.violation().map(|v| v.key.as_str()), Some("y"), "{r}");
}

#[test]
fn synthetic_histories_are_linearizable() {
    for seed in 0..20 {
        let config = SynthConfig {
            ops: 2000,
            keys: 5,
            clients: 8,
            indefinite_ratio: 0.05,
            ..SynthConfig::default()
        };
        let h = synthetic_history(&config, seed);
        assert_eq!(h.len(), 2000);
        assert!(h.iter().any(|op| op.is_indefinite()));
        assert_ok(&h);
    }
}

#[test]
fn synthetic_history_with_a_corrupted_read_fails() {
    let h = synthetic_history(&SynthConfig::default(), 7);
    let (i, op) = h
        .iter()
        .enumerate()
        .rev()
        .find(|(_, op)| matches!(op.result, Some(OpResult::Read(Some(_)))))
        .unwrap();
    let mut bad = h.clone();
    bad[i].result = Some(OpResult::Read(Some("never written".into())));
    assert_bad(&bad, op.key());
}

// ---------------------------------------------------------------------------
// Generated histories: sequential executions against a map, with the intervals
// stretched around their linearization points.

#[derive(Clone, Debug)]
struct GenOp {
    kind: u8,
    key: u8,
    value: u8,
    expected: Option<u8>,
    before: u64,
    after: u64,
    /// 0: completed; 1: lost but took effect; 2: lost and never took effect.
    fate: u8,
}

fn gen_op() -> impl Strategy<Value = GenOp> {
    (
        0u8..4,
        0u8..3,
        0u8..4,
        proptest::option::of(0u8..4),
        0u64..400,
        0u64..400,
        prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
    )
        .prop_map(|(kind, key, value, expected, before, after, fate)| GenOp {
            kind,
            key,
            value,
            expected,
            before,
            after,
            fate,
        })
}

/// Runs the ops in order against a map, op `i` taking effect at time `100 * (i +
/// 1) + 1000`, and returns the resulting history.
fn run_sequentially(ops: &[GenOp]) -> Vec<Operation> {
    let mut map: HashMap<String, String> = HashMap::new();
    let mut history = Vec::new();
    for (i, g) in ops.iter().enumerate() {
        let at = 100 * (i as u64 + 1) + 1000;
        let key = format!("k{}", g.key);
        let value = format!("v{}", g.value);
        let kind = match g.kind {
            0 => OpKind::Get { key: key.clone() },
            1 => OpKind::Put {
                key: key.clone(),
                value,
            },
            2 => OpKind::Delete { key: key.clone() },
            _ => OpKind::Cas {
                key: key.clone(),
                expected: g.expected.map(|e| format!("v{e}")),
                value,
            },
        };
        let result = if g.fate == 2 {
            None
        } else {
            Some(match &kind {
                OpKind::Put { value, .. } => {
                    map.insert(key.clone(), value.clone());
                    OpResult::Ok
                }
                OpKind::Get { .. } => OpResult::Read(map.get(&key).cloned()),
                OpKind::Delete { .. } => OpResult::Deleted(map.remove(&key).is_some()),
                OpKind::Cas {
                    expected, value, ..
                } => {
                    let swap = map.get(&key) == expected.as_ref();
                    if swap {
                        map.insert(key.clone(), value.clone());
                    }
                    OpResult::Swapped(swap)
                }
            })
        };
        let op = if g.fate == 0 {
            Operation::completed(i as u64, kind, at - g.before, at + g.after, result.unwrap())
        } else {
            Operation::indefinite(i as u64, kind, at - g.before)
        };
        history.push(op);
    }
    history
}

// ---------------------------------------------------------------------------
// A brute-force oracle: try every order of every subset that contains all
// completed operations, on the whole history at once (no per-key splitting).

fn oracle(h: &[Operation]) -> bool {
    fn apply(op: &Operation, map: &HashMap<String, String>) -> Option<HashMap<String, String>> {
        let mut map = map.clone();
        let cur = map.get(op.key()).cloned();
        let result = match &op.kind {
            OpKind::Put { key, value } => {
                map.insert(key.clone(), value.clone());
                OpResult::Ok
            }
            OpKind::Get { .. } => OpResult::Read(cur),
            OpKind::Delete { key } => OpResult::Deleted(map.remove(key).is_some()),
            OpKind::Cas {
                key,
                expected,
                value,
            } => {
                let swap = cur == *expected;
                if swap {
                    map.insert(key.clone(), value.clone());
                }
                OpResult::Swapped(swap)
            }
        };
        match &op.result {
            Some(r) if *r != result => None,
            _ => Some(map),
        }
    }
    fn go(h: &[Operation], used: &mut [bool], map: &HashMap<String, String>) -> bool {
        if (0..h.len()).all(|i| used[i] || h[i].is_indefinite()) {
            return true;
        }
        for i in 0..h.len() {
            if used[i] {
                continue;
            }
            // Some unused completed op finished strictly before i was invoked.
            let blocked = (0..h.len()).any(|j| {
                !used[j] && j != i && h[j].complete_us.is_some_and(|t| t < h[i].invoke_us)
            });
            if blocked {
                continue;
            }
            if let Some(next) = apply(&h[i], map) {
                used[i] = true;
                let ok = go(h, used, &next);
                used[i] = false;
                if ok {
                    return true;
                }
            }
        }
        false
    }
    go(h, &mut vec![false; h.len()], &HashMap::new())
}

/// Small random histories with close, often tied, times and results that are
/// right or wrong at random.
fn small_history() -> impl Strategy<Value = Vec<Operation>> {
    let op = (
        0u8..4,
        0u8..2,
        0u8..3,
        proptest::option::of(0u8..3),
        0u64..12,
        0u64..6,
        prop_oneof![3 => Just(0u8), 1 => Just(1u8)],
        any::<bool>(),
        proptest::option::of(0u8..3),
    );
    proptest::collection::vec(op, 0..10).prop_map(|ops| {
        ops.into_iter()
            .enumerate()
            .map(
                |(i, (kind, key, value, expected, start, len, fate, flag, read))| {
                    let key = ["x", "y"][key as usize].to_string();
                    let v = |n: u8| format!("{}", (b'a' + n) as char);
                    let (kind, result) = match kind {
                        0 => (OpKind::Get { key }, OpResult::Read(read.map(v))),
                        1 => (
                            OpKind::Put {
                                key,
                                value: v(value),
                            },
                            OpResult::Ok,
                        ),
                        2 => (OpKind::Delete { key }, OpResult::Deleted(flag)),
                        _ => (
                            OpKind::Cas {
                                key,
                                expected: expected.map(v),
                                value: v(value),
                            },
                            OpResult::Swapped(flag),
                        ),
                    };
                    if fate == 0 {
                        Operation::completed(i as u64, kind, start, start + len, result)
                    } else {
                        Operation::indefinite(i as u64, kind, start)
                    }
                },
            )
            .collect()
    })
}

fn op_strategy() -> impl Strategy<Value = Operation> {
    let text = "[a-z\"\\\\\n é]{0,6}";
    (
        any::<u64>(),
        0u8..4,
        text,
        text,
        proptest::option::of(text),
        0u64..(1 << 51),
        proptest::option::of(0u64..(1 << 40)),
        any::<bool>(),
        proptest::option::of(text),
    )
        .prop_map(
            |(client, kind, key, value, expected, invoke, dur, flag, read)| {
                let (kind, result) = match kind {
                    0 => (OpKind::Get { key }, OpResult::Read(read)),
                    1 => (OpKind::Put { key, value }, OpResult::Ok),
                    2 => (OpKind::Delete { key }, OpResult::Deleted(flag)),
                    _ => (
                        OpKind::Cas {
                            key,
                            expected,
                            value,
                        },
                        OpResult::Swapped(flag),
                    ),
                };
                match dur {
                    Some(d) if invoke + d < (1 << 51) => {
                        Operation::completed(client, kind, invoke, invoke + d, result)
                    }
                    _ => Operation::indefinite(client, kind, invoke),
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn sequential_runs_with_stretched_intervals_pass(ops in proptest::collection::vec(gen_op(), 0..60)) {
        let h = run_sequentially(&ops);
        let r = check(&h);
        prop_assert!(r.is_linearizable(), "{}", r);
    }

    #[test]
    fn a_read_of_a_value_never_written_fails(
        ops in proptest::collection::vec(gen_op(), 1..60),
        pick in any::<proptest::sample::Index>(),
    ) {
        let mut h = run_sequentially(&ops);
        let reads: Vec<usize> = (0..h.len())
            .filter(|&i| matches!(h[i].result, Some(OpResult::Read(_))))
            .collect();
        prop_assume!(!reads.is_empty());
        let i = reads[pick.index(reads.len())];
        h[i].result = Some(OpResult::Read(Some("never written".into())));
        let key = h[i].key().to_string();
        let r = check(&h);
        prop_assert_eq!(r.violation().map(|v| v.key.clone()), Some(key), "{}", r);
    }

    #[test]
    fn agrees_with_brute_force(h in small_history()) {
        let expected = oracle(&h);
        let r = check(&h);
        prop_assert_eq!(r.is_linearizable(), expected, "{}\n{:#?}", r, h);
        if !expected {
            prop_assert!(r.violation().is_some());
        }
    }

    #[test]
    fn json_round_trip(h in proptest::collection::vec(op_strategy(), 0..20)) {
        let mut buf = Vec::new();
        write_jsonl(&h, &mut buf).unwrap();
        prop_assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), h.len());
        let back = read_jsonl(buf.as_slice()).unwrap();
        prop_assert_eq!(back, h);
    }
}

// ---------------------------------------------------------------------------
// JSON lines.

#[test]
fn json_lines_match_the_documented_format() {
    let h = [
        put(1, "x", "a", 0, 1250),
        lost(cas(2, "x", Some("a"), "b", true, 500, 0)),
        get(3, "x", Some("b"), 2001, 3000),
        del(4, "x", true, 3500, 3600),
        cas(5, "x", None, "c", false, 4000, 4000),
        get(6, "y", None, 1, 2),
    ];
    let mut buf = Vec::new();
    write_jsonl(&h, &mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            r#"{"client":1,"op":"put","key":"x","value":"a","expected":null,"invoke_ms":0,"complete_ms":1.25,"result":"ok"}"#,
            r#"{"client":2,"op":"cas","key":"x","value":"b","expected":"a","invoke_ms":0.5,"complete_ms":null,"result":null}"#,
            r#"{"client":3,"op":"get","key":"x","value":null,"expected":null,"invoke_ms":2.001,"complete_ms":3,"result":"b"}"#,
            r#"{"client":4,"op":"delete","key":"x","value":null,"expected":null,"invoke_ms":3.5,"complete_ms":3.6,"result":true}"#,
            r#"{"client":5,"op":"cas","key":"x","value":"c","expected":null,"invoke_ms":4,"complete_ms":4,"result":false}"#,
            r#"{"client":6,"op":"get","key":"y","value":null,"expected":null,"invoke_ms":0.001,"complete_ms":0.002,"result":null}"#,
        ]
    );
    assert_eq!(read_jsonl(text.as_bytes()).unwrap(), h);
}

#[test]
fn json_reader_accepts_any_field_order_and_blank_lines() {
    let text = "\n{\"result\":\"ok\",\"complete_ms\":2.0,\"invoke_ms\":1,\"expected\":null,\
                \"value\":\"v\",\"key\":\"k\",\"op\":\"put\",\"client\":7}\n\n";
    assert_eq!(
        read_jsonl(text.as_bytes()).unwrap(),
        vec![put(7, "k", "v", 1000, 2000)]
    );
}

#[test]
fn json_reader_names_the_bad_line() {
    let good = r#"{"client":1,"op":"get","key":"x","value":null,"expected":null,"invoke_ms":0,"complete_ms":1,"result":null}"#;
    let cases: [(&str, &str); 11] = [
        ("not json", "not valid JSON"),
        ("[1,2]", "expected a JSON object"),
        (
            r#"{"client":1,"op":"get","key":"x","value":null,"expected":null,"invoke_ms":0,"complete_ms":1}"#,
            "missing field `result`",
        ),
        (
            r#"{"client":1,"op":"get","key":"x","value":null,"expected":null,"invoke_ms":0,"complete_ms":1,"result":null,"extra":1}"#,
            "unknown field `extra`",
        ),
        (
            r#"{"client":1,"op":"frob","key":"x","value":null,"expected":null,"invoke_ms":0,"complete_ms":1,"result":null}"#,
            "unknown `op`",
        ),
        (
            r#"{"client":-1,"op":"get","key":"x","value":null,"expected":null,"invoke_ms":0,"complete_ms":1,"result":null}"#,
            "`client`",
        ),
        (
            r#"{"client":1,"op":"put","key":"x","value":null,"expected":null,"invoke_ms":0,"complete_ms":1,"result":"ok"}"#,
            "`value` must be a string for a put",
        ),
        (
            r#"{"client":1,"op":"put","key":"x","value":"a","expected":null,"invoke_ms":0,"complete_ms":1,"result":true}"#,
            "must be \"ok\"",
        ),
        (
            r#"{"client":1,"op":"delete","key":"x","value":null,"expected":null,"invoke_ms":0,"complete_ms":null,"result":true}"#,
            "`result` must be null when `complete_ms` is null",
        ),
        (
            r#"{"client":1,"op":"get","key":"x","value":null,"expected":null,"invoke_ms":5,"complete_ms":1,"result":null}"#,
            "before it is invoked",
        ),
        (
            r#"{"client":1,"op":"get","key":"x","value":null,"expected":null,"invoke_ms":-1,"complete_ms":1,"result":null}"#,
            "`invoke_ms` is -1",
        ),
    ];
    for (bad, message) in cases {
        let text = format!("{good}\n\n{bad}\n{good}\n");
        let err = read_jsonl(text.as_bytes()).unwrap_err();
        assert_eq!(err.line(), 3, "{err}");
        let shown = err.to_string();
        assert!(shown.starts_with("line 3: "), "{shown}");
        assert!(shown.contains(message), "{bad}: {shown}");
    }
}

#[test]
fn json_writer_refuses_malformed_operations() {
    let mut op = get(1, "x", None, 0, 1);
    op.result = Some(OpResult::Ok);
    let err = write_jsonl(&[op], Vec::new()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}
