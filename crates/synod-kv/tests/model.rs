//! The store against a model that keeps a full copy of the key space for every
//! revision: whatever random commands do, reads at every retained revision, the
//! watch history and the errors must agree with the copies.

use proptest::prelude::*;
use std::collections::BTreeMap;
use synod_kv::*;

type Snapshot = BTreeMap<Vec<u8>, KeyValue>;
/// A key and what to write there: a value and lease, or `None` to delete it.
type KeyWrite = (Vec<u8>, Option<(Vec<u8>, i64)>);

#[derive(Clone, Debug)]
enum Op {
    Put {
        key: u8,
        value: u8,
        lease: u8,
    },
    Delete {
        key: u8,
        span: u8,
    },
    Txn {
        key: u8,
        version: i64,
        then: Vec<(u8, Option<u8>)>,
        otherwise: Vec<(u8, Option<u8>)>,
    },
    Compact {
        back: u8,
    },
    Grant {
        id: u8,
    },
    Revoke {
        id: u8,
    },
}

fn key(k: u8) -> Vec<u8> {
    vec![b'a' + (k % 5)]
}

fn op() -> impl Strategy<Value = Op> {
    let write = (0u8..5, proptest::option::of(0u8..4));
    prop_oneof![
        4 => (0u8..5, 0u8..4, 0u8..4).prop_map(|(key, value, lease)| Op::Put { key, value, lease }),
        2 => (0u8..5, 0u8..3).prop_map(|(key, span)| Op::Delete { key, span }),
        2 => (0u8..5, 0i64..3, proptest::collection::vec(write.clone(), 0..3), proptest::collection::vec(write, 0..3))
            .prop_map(|(key, version, then, otherwise)| Op::Txn { key, version, then, otherwise }),
        1 => (0u8..6).prop_map(|back| Op::Compact { back }),
        1 => (0u8..4).prop_map(|id| Op::Grant { id }),
        1 => (0u8..4).prop_map(|id| Op::Revoke { id }),
    ]
}

fn request_op(k: u8, w: Option<u8>) -> RequestOp {
    match w {
        Some(v) => RequestOp::Put(PutRequest {
            key: key(k),
            value: vec![v],
            ..PutRequest::default()
        }),
        None => RequestOp::DeleteRange(DeleteRangeRequest {
            key: key(k),
            ..DeleteRangeRequest::default()
        }),
    }
}

fn command(op: &Op, store: &Store) -> Command {
    match op {
        Op::Put {
            key: k,
            value,
            lease,
        } => Command::Put(PutRequest {
            key: key(*k),
            value: vec![*value],
            lease: *lease as i64,
            prev_kv: true,
            ..PutRequest::default()
        }),
        Op::Delete { key: k, span } => Command::DeleteRange(DeleteRangeRequest {
            key: key(*k),
            range_end: if *span == 0 {
                Vec::new()
            } else {
                key(k + span)
            },
            prev_kv: true,
        }),
        Op::Txn {
            key: k,
            version,
            then,
            otherwise,
        } => Command::Txn(TxnRequest {
            compare: vec![Compare {
                key: key(*k),
                range_end: Vec::new(),
                result: CompareResult::Equal,
                target: CompareTarget::Version(*version),
            }],
            success: then.iter().map(|(k, w)| request_op(*k, *w)).collect(),
            failure: otherwise.iter().map(|(k, w)| request_op(*k, *w)).collect(),
        }),
        Op::Compact { back } => Command::Compact {
            revision: store.revision() - *back as i64,
        },
        Op::Grant { id } => Command::LeaseGrant {
            id: *id as i64,
            ttl: 10,
        },
        Op::Revoke { id } => Command::LeaseRevoke { id: *id as i64 },
    }
}

/// The model: one full snapshot per revision (index = revision), leases apart.
struct Model {
    snaps: Vec<Snapshot>,
    compacted: i64,
    leases: BTreeMap<i64, ()>,
    last_lease: i64,
}

impl Model {
    fn current(&self) -> &Snapshot {
        self.snaps.last().unwrap()
    }
    fn revision(&self) -> i64 {
        self.snaps.len() as i64 - 1
    }

    /// Applies a list of single-key writes at the next revision; returns the
    /// new snapshot, or `None` if nothing changed.
    fn write(&self, base: &Snapshot, writes: &[KeyWrite]) -> Option<Snapshot> {
        let rev = self.revision() + 1;
        let mut next = base.clone();
        let mut changed = false;
        for (k, w) in writes {
            match w {
                Some((value, lease)) => {
                    let (create, version) = match next.get(k) {
                        Some(kv) => (kv.create_revision, kv.version + 1),
                        None => (rev, 1),
                    };
                    next.insert(
                        k.clone(),
                        KeyValue {
                            key: k.clone(),
                            create_revision: create,
                            mod_revision: rev,
                            version,
                            value: value.clone(),
                            lease: *lease,
                        },
                    );
                    changed = true;
                }
                None => changed |= next.remove(k).is_some(),
            }
        }
        changed.then_some(next)
    }

    fn apply(&mut self, op: &Op, cmd: &Command) -> Result<(), Error> {
        let cur = self.current().clone();
        let writes: Vec<KeyWrite> = match (op, cmd) {
            (Op::Put { .. }, Command::Put(p)) => {
                if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                    return Err(Error::LeaseNotFound(p.lease));
                }
                vec![(p.key.clone(), Some((p.value.clone(), p.lease)))]
            }
            (Op::Delete { .. }, Command::DeleteRange(d)) => cur
                .keys()
                .filter(|k| {
                    if d.range_end.is_empty() {
                        **k == d.key
                    } else {
                        **k >= d.key && **k < d.range_end
                    }
                })
                .map(|k| (k.clone(), None))
                .collect(),
            (
                Op::Txn {
                    key: k,
                    version,
                    then,
                    otherwise,
                },
                _,
            ) => {
                let dup = |ws: &Vec<(u8, Option<u8>)>| {
                    let mut seen = std::collections::BTreeSet::new();
                    let deleted: Vec<u8> = ws
                        .iter()
                        .filter(|(_, w)| w.is_none())
                        .map(|(k, _)| k % 5)
                        .collect();
                    ws.iter().any(|(k, w)| {
                        w.is_some() && (!seen.insert(k % 5) || deleted.contains(&(k % 5)))
                    })
                };
                if dup(then) || dup(otherwise) {
                    return Err(Error::DuplicateKey);
                }
                let v = cur.get(&key(*k)).map_or(0, |kv| kv.version);
                let branch = if v == *version { then } else { otherwise };
                // A plain put sets lease 0, as in etcd.
                branch
                    .iter()
                    .map(|(k, w)| (key(*k), w.map(|v| (vec![v], 0))))
                    .collect()
            }
            (Op::Compact { .. }, Command::Compact { revision }) => {
                if *revision > self.revision() {
                    return Err(Error::FutureRevision {
                        requested: *revision,
                        current: self.revision(),
                    });
                }
                if *revision <= self.compacted {
                    return Err(Error::Compacted {
                        requested: *revision,
                        compacted: self.compacted,
                    });
                }
                self.compacted = *revision;
                return Ok(());
            }
            (Op::Grant { .. }, Command::LeaseGrant { id, .. }) => {
                let id = if *id == 0 {
                    let mut n = self.last_lease;
                    loop {
                        n += 1;
                        if !self.leases.contains_key(&n) {
                            break n;
                        }
                    }
                } else {
                    *id
                };
                if self.leases.contains_key(&id) {
                    return Err(Error::LeaseExists(id));
                }
                self.last_lease = self.last_lease.max(id);
                self.leases.insert(id, ());
                return Ok(());
            }
            (Op::Revoke { .. }, Command::LeaseRevoke { id }) => {
                if self.leases.remove(id).is_none() {
                    return Err(Error::LeaseNotFound(*id));
                }
                cur.values()
                    .filter(|kv| kv.lease == *id)
                    .map(|kv| (kv.key.clone(), None))
                    .collect()
            }
            _ => unreachable!(),
        };
        if let Some(next) = self.write(&cur, &writes) {
            self.snaps.push(next);
        }
        Ok(())
    }
}

fn all_at(store: &Store, revision: i64) -> Result<Snapshot, Error> {
    let r = store.range(&RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..RangeRequest::default()
    })?;
    assert_eq!(r.count as usize, r.kvs.len());
    Ok(r.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn store_matches_a_copy_per_revision(ops in proptest::collection::vec(op(), 1..60)) {
        let mut store = Store::new();
        let mut model = Model { snaps: vec![Snapshot::new(), Snapshot::new()], compacted: 0, leases: BTreeMap::new(), last_lease: 0 };
        for op in &ops {
            let cmd = command(op, &store);
            let before = store.clone();
            let got = store.apply(&cmd);
            let want = model.apply(op, &cmd);
            match (&got, &want) {
                (Ok(_), Ok(())) => {}
                (Err(a), Err(b)) => {
                    prop_assert_eq!(a, b);
                    prop_assert_eq!(&store, &before, "a refused command changed the store");
                }
                _ => prop_assert!(false, "{:?}: store {:?}, model {:?}", cmd, got, want),
            }
            store.assert_invariants();
            prop_assert_eq!(store.revision(), model.revision());
            prop_assert_eq!(store.compact_revision(), model.compacted);
            // Every retained revision reads back its copy; older ones are refused.
            for rev in 1..=model.revision() {
                let read = all_at(&store, rev);
                if rev < model.compacted {
                    let compacted = matches!(read, Err(Error::Compacted { .. }));
                    prop_assert!(compacted, "rev {}: {:?}", rev, read);
                } else {
                    prop_assert_eq!(&read.unwrap(), &model.snaps[rev as usize], "revision {}", rev);
                }
            }
            let future = all_at(&store, model.revision() + 1);
            let is_future = matches!(future, Err(Error::FutureRevision { .. }));
            prop_assert!(is_future, "{:?}", future);
            // Replaying the watch history from any start onto the copy before it
            // gives every later copy.
            for start in model.compacted.max(1) + 1..=model.revision() {
                let events = store.events_since(&[0], &[0], start).unwrap();
                let mut snap = model.snaps[start as usize - 1].clone();
                let mut i = 0;
                for rev in start..=model.revision() {
                    while i < events.len() && events[i].kv.mod_revision == rev {
                        let e = &events[i];
                        match e.kind {
                            EventKind::Put => {
                                prop_assert_eq!(e.prev_kv.as_ref(), snap.get(&e.kv.key));
                                snap.insert(e.kv.key.clone(), e.kv.clone());
                            }
                            EventKind::Delete => {
                                let prev = snap.remove(&e.kv.key);
                                prop_assert_eq!(e.prev_kv.as_ref(), prev.as_ref());
                            }
                        }
                        i += 1;
                    }
                    prop_assert_eq!(&snap, &model.snaps[rev as usize], "after events of revision {}", rev);
                }
                prop_assert_eq!(i, events.len());
            }
        }
        // A replica that applied the same commands has the same hash.
        let mut replica = Store::new();
        for op in &ops {
            let cmd = command(op, &replica);
            let _ = replica.apply(&cmd);
        }
        prop_assert_eq!(replica.hash(), store.hash());
    }
}
