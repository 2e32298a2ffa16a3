//! etcd's key-value semantics, one scenario at a time.

use synod_kv::*;

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn put(store: &mut Store, k: &str, v: &str) -> PutResponse {
    match store
        .apply(&Command::Put(PutRequest {
            key: b(k),
            value: b(v),
            prev_kv: true,
            ..PutRequest::default()
        }))
        .unwrap()
        .0
    {
        CommandResponse::Put(p) => p,
        other => panic!("{other:?}"),
    }
}

fn range(store: &Store, key: &str, end: &str) -> RangeResponse {
    store
        .range(&RangeRequest {
            key: b(key),
            range_end: b(end),
            ..RangeRequest::default()
        })
        .unwrap()
}

fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn txn(store: &mut Store, t: TxnRequest) -> Result<TxnResponse, Error> {
    store.apply(&Command::Txn(t)).map(|(r, _)| match r {
        CommandResponse::Txn(t) => t,
        other => panic!("{other:?}"),
    })
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: b(k),
        value: b(v),
        ..PutRequest::default()
    })
}

fn version_is(k: &str, v: i64) -> Compare {
    Compare {
        key: b(k),
        range_end: Vec::new(),
        result: CompareResult::Equal,
        target: CompareTarget::Version(v),
    }
}

#[test]
fn revisions_versions_and_create_revisions() {
    let mut s = Store::new();
    assert_eq!(
        s.revision(),
        1,
        "an empty store is at revision 1, as etcd's is"
    );
    assert_eq!(put(&mut s, "foo", "1").prev_kv, None);
    let prev = put(&mut s, "foo", "2").prev_kv.unwrap();
    assert_eq!(
        (prev.value, prev.mod_revision, prev.version),
        (b("1"), 2, 1)
    );
    let kv = &range(&s, "foo", "").kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    // A delete ends the key; a new put starts a new life.
    s.apply(&Command::DeleteRange(DeleteRangeRequest {
        key: b("foo"),
        ..DeleteRangeRequest::default()
    }))
    .unwrap();
    assert_eq!(s.revision(), 4);
    put(&mut s, "foo", "3");
    let kv = &range(&s, "foo", "").kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // Deleting nothing is not a change.
    s.apply(&Command::DeleteRange(DeleteRangeRequest {
        key: b("nope"),
        ..DeleteRangeRequest::default()
    }))
    .unwrap();
    assert_eq!(s.revision(), 5);
}

#[test]
fn ranges_follow_etcds_conventions() {
    let mut s = Store::new();
    for k in ["a", "b", "b/1", "b/2", "c"] {
        put(&mut s, k, k);
    }
    assert_eq!(keys(&range(&s, "b", "")), ["b"]);
    assert_eq!(keys(&range(&s, "b/", "b0")), ["b/1", "b/2"], "prefix b/");
    assert_eq!(
        keys(&range(&s, "b", "\0")),
        ["b", "b/1", "b/2", "c"],
        "from b on"
    );
    assert_eq!(keys(&range(&s, "\0", "\0")).len(), 5, "everything");
    assert!(
        range(&s, "c", "a").kvs.is_empty(),
        "an end before the key is empty"
    );

    let r = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            limit: 2,
            ..RangeRequest::default()
        })
        .unwrap();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["a".into(), "b".into()], true, 5)
    );

    let r = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            sort_order: SortOrder::Descend,
            limit: 2,
            keys_only: true,
            ..RangeRequest::default()
        })
        .unwrap();
    assert_eq!(keys(&r), ["c", "b/2"]);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));

    let r = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            count_only: true,
            ..RangeRequest::default()
        })
        .unwrap();
    assert!(r.kvs.is_empty() && r.count == 5 && !r.more);

    // Filters do not change the count.
    let r = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            min_mod_revision: 5,
            ..RangeRequest::default()
        })
        .unwrap();
    assert_eq!((keys(&r), r.count), (vec!["b/2".into(), "c".into()], 5));

    // Sorting by another target defaults to ascending.
    put(&mut s, "a", "again");
    let r = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            sort_target: SortTarget::Mod,
            ..RangeRequest::default()
        })
        .unwrap();
    assert_eq!(keys(&r), ["b", "b/1", "b/2", "c", "a"]);

    assert_eq!(
        s.range(&RangeRequest::default()).unwrap_err(),
        Error::EmptyKey
    );
}

#[test]
fn reads_at_past_revisions_until_compaction() {
    let mut s = Store::new();
    put(&mut s, "k", "v2"); // revision 2
    put(&mut s, "k", "v3"); // 3
    put(&mut s, "other", "x"); // 4
    let at = |s: &Store, rev| {
        s.range(&RangeRequest {
            key: b("k"),
            revision: rev,
            ..RangeRequest::default()
        })
    };
    assert_eq!(at(&s, 2).unwrap().kvs[0].value, b("v2"));
    assert_eq!(at(&s, 1).unwrap().kvs.len(), 0);
    assert_eq!(
        at(&s, 5).unwrap_err(),
        Error::FutureRevision {
            requested: 5,
            current: 4
        }
    );
    s.apply(&Command::Compact { revision: 3 }).unwrap();
    assert_eq!(s.revision(), 4, "compaction is not a revision");
    assert!(matches!(
        at(&s, 2),
        Err(Error::Compacted { compacted: 3, .. })
    ));
    assert_eq!(at(&s, 3).unwrap().kvs[0].value, b("v3"));
    assert!(matches!(
        s.apply(&Command::Compact { revision: 3 }),
        Err(Error::Compacted { .. })
    ));
    assert!(matches!(
        s.apply(&Command::Compact { revision: 9 }),
        Err(Error::FutureRevision { .. })
    ));
    s.assert_invariants();
}

#[test]
fn a_watch_may_start_at_the_compaction_revision() {
    let mut s = Store::new();
    put(&mut s, "k", "v"); // 2
    s.apply(&Command::DeleteRange(DeleteRangeRequest {
        key: b("k"),
        ..DeleteRangeRequest::default()
    }))
    .unwrap(); // 3
    put(&mut s, "j", "w"); // 4
    s.apply(&Command::Compact { revision: 3 }).unwrap();
    let events = s.events_since(b"\0", b"\0", 3).unwrap();
    let kinds: Vec<(EventKind, i64)> = events.iter().map(|e| (e.kind, e.kv.mod_revision)).collect();
    assert_eq!(kinds, [(EventKind::Delete, 3), (EventKind::Put, 4)]);
    assert!(matches!(
        s.events_since(b"\0", b"\0", 2),
        Err(Error::Compacted { .. })
    ));
    // The next compaction drops the tombstone: the key is gone from history.
    s.apply(&Command::Compact { revision: 4 }).unwrap();
    assert_eq!(s.events_since(b"k", b"", 4).unwrap(), []);
    s.assert_invariants();
}

#[test]
fn transactions_compare_then_apply_one_branch_atomically() {
    let mut s = Store::new();
    put(&mut s, "a", "1");
    let r = txn(
        &mut s,
        TxnRequest {
            compare: vec![version_is("a", 1)],
            success: vec![
                put_op("b", "2"),
                put_op("c", "3"),
                RequestOp::Range(RangeRequest {
                    key: b("b"),
                    ..RangeRequest::default()
                }),
            ],
            failure: vec![put_op("z", "no")],
        },
    )
    .unwrap();
    assert!(r.succeeded);
    assert_eq!(s.revision(), 3, "one transaction, one revision");
    let ResponseOp::Range(seen) = &r.responses[2] else {
        panic!()
    };
    assert_eq!(
        seen.kvs[0].value,
        b("2"),
        "a read sees the writes before it"
    );
    assert_eq!(range(&s, "c", "").kvs[0].mod_revision, 3);

    // A value comparison on a missing key never holds; other targets see zeros.
    let value_of_missing = Compare {
        key: b("missing"),
        range_end: Vec::new(),
        result: CompareResult::NotEqual,
        target: CompareTarget::Value(b("x")),
    };
    let r = txn(
        &mut s,
        TxnRequest {
            compare: vec![value_of_missing],
            ..TxnRequest::default()
        },
    )
    .unwrap();
    assert!(!r.succeeded);
    assert!(
        txn(
            &mut s,
            TxnRequest {
                compare: vec![version_is("missing", 0)],
                ..TxnRequest::default()
            }
        )
        .unwrap()
        .succeeded
    );

    // A failing operation on the taken path fails the whole transaction.
    let before = s.clone();
    let err = txn(
        &mut s,
        TxnRequest {
            success: vec![
                put_op("d", "4"),
                RequestOp::Put(PutRequest {
                    key: b("e"),
                    lease: 77,
                    ..PutRequest::default()
                }),
            ],
            ..TxnRequest::default()
        },
    )
    .unwrap_err();
    assert_eq!(err, Error::LeaseNotFound(77));
    assert_eq!(s, before);
}

#[test]
fn nested_transactions_compare_against_the_state_before_the_outer_one() {
    let mut s = Store::new();
    let r = txn(
        &mut s,
        TxnRequest {
            success: vec![
                put_op("a", "1"),
                RequestOp::Txn(TxnRequest {
                    // "a" did not exist when the outer transaction began.
                    compare: vec![version_is("a", 0)],
                    success: vec![put_op("b", "then")],
                    failure: vec![put_op("b", "else")],
                }),
            ],
            ..TxnRequest::default()
        },
    )
    .unwrap();
    let ResponseOp::Txn(inner) = &r.responses[1] else {
        panic!()
    };
    assert!(inner.succeeded);
    assert_eq!(range(&s, "b", "").kvs[0].value, b("then"));
}

#[test]
fn a_branch_may_not_write_a_key_twice() {
    let mut s = Store::new();
    let dup = |success: Vec<RequestOp>| TxnRequest {
        success,
        ..TxnRequest::default()
    };
    let delete_all = RequestOp::DeleteRange(DeleteRangeRequest {
        key: b("a"),
        range_end: b("\0"),
        ..DeleteRangeRequest::default()
    });
    for t in [
        dup(vec![put_op("a", "1"), put_op("a", "2")]),
        dup(vec![put_op("k", "1"), delete_all.clone()]),
        dup(vec![
            put_op("a", "1"),
            RequestOp::Txn(TxnRequest {
                success: vec![put_op("a", "2")],
                ..TxnRequest::default()
            }),
        ]),
    ] {
        assert_eq!(txn(&mut s, t).unwrap_err(), Error::DuplicateKey);
    }
    // The two branches of a nested transaction exclude each other.
    txn(
        &mut s,
        dup(vec![RequestOp::Txn(TxnRequest {
            success: vec![put_op("a", "1")],
            failure: vec![put_op("a", "2")],
            ..TxnRequest::default()
        })]),
    )
    .unwrap();
    // Overlapping deletes are fine.
    txn(&mut s, dup(vec![delete_all.clone(), delete_all])).unwrap();
    let too_many = dup((0..=MAX_TXN_OPS)
        .map(|i| put_op(&format!("k{i}"), "v"))
        .collect());
    assert!(matches!(
        txn(&mut s, too_many),
        Err(Error::TooManyOps { .. })
    ));
}

#[test]
fn puts_that_keep_the_value_or_the_lease() {
    let mut s = Store::new();
    let keep = |k: &str| {
        Command::Put(PutRequest {
            key: b(k),
            ignore_value: true,
            ..PutRequest::default()
        })
    };
    assert_eq!(s.apply(&keep("k")).unwrap_err(), Error::KeyNotFound);
    put(&mut s, "k", "v");
    s.apply(&keep("k")).unwrap();
    let kv = &range(&s, "k", "").kvs[0];
    assert_eq!((kv.value.clone(), kv.version), (b("v"), 2));
    let both = Command::Put(PutRequest {
        key: b("k"),
        value: b("x"),
        ignore_value: true,
        ..PutRequest::default()
    });
    assert_eq!(s.apply(&both).unwrap_err(), Error::ValueProvided);
    assert_eq!(
        s.apply(&Command::Put(PutRequest::default())).unwrap_err(),
        Error::EmptyKey
    );
}

#[test]
fn revoking_a_lease_deletes_its_keys_in_one_revision() {
    let mut s = Store::new();
    let (CommandResponse::LeaseGrant { id, .. }, _) =
        s.apply(&Command::LeaseGrant { id: 0, ttl: 5 }).unwrap()
    else {
        panic!()
    };
    assert_eq!(id, 1, "the store picks the next free id");
    for k in ["x", "y"] {
        s.apply(&Command::Put(PutRequest {
            key: b(k),
            value: b("v"),
            lease: id,
            ..PutRequest::default()
        }))
        .unwrap();
    }
    put(&mut s, "z", "no lease");
    // A plain put detaches a key from its lease.
    put(&mut s, "y", "detached");
    assert_eq!(s.lease(id).unwrap().keys, [b("x")]);
    let rev = s.revision();
    let (_, events) = s.apply(&Command::LeaseRevoke { id }).unwrap();
    assert_eq!(s.revision(), rev + 1);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Delete);
    assert_eq!(keys(&range(&s, "\0", "\0")), ["y", "z"]);
    assert_eq!(
        s.apply(&Command::LeaseRevoke { id }).unwrap_err(),
        Error::LeaseNotFound(id)
    );
    assert_eq!(
        s.apply(&Command::LeaseGrant { id: 9, ttl: 1 }).map(|r| r.0),
        Ok(CommandResponse::LeaseGrant { id: 9, ttl: 1 })
    );
    assert_eq!(
        s.apply(&Command::LeaseGrant { id: 9, ttl: 1 }).unwrap_err(),
        Error::LeaseExists(9)
    );
    // A client may take the largest id; the store's next pick starts over
    // from the smallest free one instead of overflowing.
    let grant = |s: &mut Store, id| match s.apply(&Command::LeaseGrant { id, ttl: 1 }) {
        Ok((CommandResponse::LeaseGrant { id, .. }, _)) => id,
        other => panic!("{other:?}"),
    };
    assert_eq!(grant(&mut s, i64::MAX), i64::MAX);
    assert_eq!(grant(&mut s, 0), 1);
    assert_eq!(grant(&mut s, 0), 2);
    s.assert_invariants();
}

#[test]
fn error_messages_are_etcds() {
    assert_eq!(
        Error::Compacted {
            requested: 1,
            compacted: 5
        }
        .etcd_message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(
        Error::LeaseNotFound(3).etcd_message(),
        "etcdserver: requested lease not found"
    );
    assert_eq!(Error::LeaseNotFound(3).class(), ErrorClass::NotFound);
    assert!(Error::FutureRevision {
        requested: 9,
        current: 4
    }
    .to_string()
    .contains("asked for 9, current 4"));
}

#[test]
fn snapshots_round_trip_and_replicas_agree() {
    let mut a = Store::new();
    put(&mut a, "k", "v");
    a.apply(&Command::LeaseGrant { id: 0, ttl: 5 }).unwrap();
    let bytes = bincode::serialize(&a).unwrap();
    let mut b2: Store = bincode::deserialize(&bytes).unwrap();
    assert_eq!(a, b2);
    assert_eq!(a.hash(), b2.hash());
    put(&mut b2, "k", "w");
    assert_ne!(a.hash(), b2.hash());
}

/// HashKV at a revision does not move when later writes come: two members,
/// one ahead of the other, agree at every revision both hold.
#[test]
fn hash_kv_at_a_revision_ignores_what_came_after() {
    let (mut ahead, mut behind) = (Store::new(), Store::new());
    for s in [&mut ahead, &mut behind] {
        put(s, "a", "1"); // revision 2
        put(s, "b", "2"); // 3
    }
    put(&mut ahead, "a", "3"); // 4, only on the member ahead
    let (h3, compacted) = behind.hash_kv(3).unwrap();
    assert_eq!(compacted, -1, "nothing compacted yet, as etcd says it");
    assert_eq!(ahead.hash_kv(3).unwrap().0, h3);
    assert_eq!(
        behind.hash_kv(0).unwrap().0,
        h3,
        "0 is the current revision"
    );
    assert_ne!(ahead.hash_kv(4).unwrap().0, h3);
    assert_ne!(ahead.hash_kv(2).unwrap().0, h3);
    assert!(matches!(
        behind.hash_kv(4),
        Err(Error::FutureRevision {
            requested: 4,
            current: 3
        })
    ));
    ahead.apply(&Command::Compact { revision: 3 }).unwrap();
    assert!(matches!(ahead.hash_kv(2), Err(Error::Compacted { .. })));
    assert_eq!(ahead.hash_kv(0).unwrap().1, 3);
    // A store that diverged at a revision hashes differently there.
    let mut other = Store::new();
    put(&mut other, "a", "1");
    put(&mut other, "b", "X");
    assert_ne!(other.hash_kv(3).unwrap().0, h3);
}

/// The running count of retained bytes (what the quota checks on every
/// put) agrees with a walk of the whole history, through puts, deletes,
/// transactions, lease revocations and compaction; a store decoded from a
/// snapshot walks once and then keeps counting.
#[test]
fn retained_bytes_are_counted_as_the_store_changes() {
    let walked = |s: &Store| {
        let copy: Store = bincode::deserialize(&bincode::serialize(s).unwrap()).unwrap();
        copy.retained_bytes()
    };
    let mut s = Store::new();
    assert_eq!(s.retained_bytes(), 0);
    for i in 0..20 {
        put(&mut s, &format!("k{}", i % 7), &"v".repeat(i));
    }
    assert_eq!(s.retained_bytes(), walked(&s));
    s.apply(&Command::DeleteRange(DeleteRangeRequest {
        key: b("k1"),
        range_end: b("k4"),
        ..DeleteRangeRequest::default()
    }))
    .unwrap();
    txn(
        &mut s,
        TxnRequest {
            compare: vec![version_is("k5", 3)],
            success: vec![put_op("k5", "t"), put_op("new", "n")],
            failure: vec![put_op("k6", "f")],
        },
    )
    .unwrap();
    s.apply(&Command::LeaseGrant { id: 7, ttl: 5 }).unwrap();
    s.apply(&Command::Put(PutRequest {
        key: b("leased"),
        value: b("x"),
        lease: 7,
        ..PutRequest::default()
    }))
    .unwrap();
    s.apply(&Command::LeaseRevoke { id: 7 }).unwrap();
    let before = s.retained_bytes();
    assert_eq!(before, walked(&s));
    s.apply(&Command::Compact { revision: 15 }).unwrap();
    assert!(s.retained_bytes() < before, "compaction frees history");
    assert_eq!(s.retained_bytes(), walked(&s));
    let mut decoded: Store = bincode::deserialize(&bincode::serialize(&s).unwrap()).unwrap();
    assert_eq!(decoded.retained_bytes(), s.retained_bytes());
    put(&mut decoded, "after", "decode");
    assert_eq!(decoded.retained_bytes(), walked(&decoded));
}

/// With events off, the same commands leave the same store (the same hash,
/// history and answers, `prev_kv` included) and list no changes; with them
/// on, every put and delete lists its change and what it replaced.
#[test]
fn without_events_writes_change_the_store_alike() {
    let grant = Command::LeaseGrant { id: 9, ttl: 60 };
    let cmds = vec![
        grant,
        Command::Put(PutRequest {
            key: b("a"),
            value: b("1"),
            lease: 9,
            ..PutRequest::default()
        }),
        Command::Put(PutRequest {
            key: b("a"),
            value: b("2"),
            prev_kv: true,
            ..PutRequest::default()
        }),
        Command::Put(PutRequest {
            key: b("a"),
            ignore_value: true,
            lease: 9,
            prev_kv: true,
            ..PutRequest::default()
        }),
        Command::Txn(TxnRequest {
            success: vec![put_op("b", "3"), put_op("c", "4")],
            ..TxnRequest::default()
        }),
        Command::DeleteRange(DeleteRangeRequest {
            key: b("b"),
            prev_kv: true,
            ..DeleteRangeRequest::default()
        }),
        Command::LeaseRevoke { id: 9 },
    ];
    let mut on = Store::new();
    let mut off = Store::new();
    off.set_events(false);
    let mut listed = 0;
    for cmd in &cmds {
        let (a, events_on) = on.apply(cmd).unwrap();
        let (b, events_off) = off.apply(cmd).unwrap();
        assert_eq!(a, b, "{cmd:?}");
        assert!(events_off.is_empty(), "{cmd:?}: {events_off:?}");
        listed += events_on.len();
        assert_eq!(on, off);
        assert_eq!(on.hash(), off.hash());
    }
    // Three puts of a, two of the transaction, the delete of b, a revoked.
    assert_eq!(listed, 7);
    for rev in 1..=on.revision() {
        let at = |s: &Store| {
            s.range(&RangeRequest {
                key: b("a"),
                range_end: b("z"),
                revision: rev,
                ..RangeRequest::default()
            })
            .unwrap()
        };
        assert_eq!(at(&on), at(&off));
    }
}
