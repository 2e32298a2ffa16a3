//! The Multi-Paxos journal recovers what was persisted, exactly as the
//! core's model of its disk (`Disk::apply`) predicts, and refuses what is
//! damaged or not its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use synod_protocols::multipaxos::{Command, Disk, Slot, Snapshot, Write};
use synod_protocols::paxos::Ballot;
use synod_protocols::raft::{self, Payload};
use synod_raft_log::paxos::PaxosLog;
use synod_raft_log::RaftLog;
use synod_storage::{
    DiskStorage, Error, Fs, FsFile, Identity, RealFs, RecoveryReport, SimFs, Storage,
    StorageOptions, WalOptions,
};

const DIR: &str = "/member";

type W = Write<String>;

fn options() -> StorageOptions {
    StorageOptions {
        wal: WalOptions {
            segment_size: 8 << 10,
            preallocate: false,
            prealloc_chunk: 0,
            prepare_at: 0,
            write_buffer: 0,
        },
    }
}

fn id() -> Identity {
    Identity {
        cluster_id: 7,
        node_id: 1,
    }
}

fn ballot(round: u64, node: u64) -> Ballot {
    Ballot { round, node }
}

fn accept(slot: Slot, b: Ballot, v: &str) -> W {
    Write::Accept(slot, b, Command::App(v.to_string()))
}

fn snapshot(slot: Slot) -> W {
    Write::Snapshot(Snapshot {
        slot,
        confs: BTreeMap::from([(slot + 1, BTreeSet::from([0, 1, 2]))]),
        data: Payload(vec![slot as u8; 50].into()),
    })
}

fn fold<'a>(writes: impl IntoIterator<Item = &'a W>) -> Disk<String> {
    let mut d = Disk::default();
    writes.into_iter().for_each(|w| d.apply(w));
    d
}

fn open_log(fs: &SimFs) -> PaxosLog<SimFs, String> {
    PaxosLog::open(fs.clone(), Path::new(DIR), id(), options())
        .unwrap()
        .0
}

fn open(fs: &SimFs) -> Result<(Disk<String>, RecoveryReport), Error> {
    PaxosLog::<SimFs, String>::open(fs.clone(), Path::new(DIR), id(), options())
        .map(|(_, d, r)| (d, r))
}

fn recovered(fs: &SimFs) -> Disk<String> {
    open(fs).unwrap().0
}

/// A member's life in batches: promises and rounds (one lower than before),
/// accepts in sparse slots, a slot re-accepted at a higher ballot, no-ops
/// and a change of members, learns, a snapshot in the middle of a batch,
/// records the snapshot made moot, and more after it.
fn scenario() -> Vec<Vec<W>> {
    let (b1, b3) = (ballot(1, 0), ballot(3, 2));
    vec![
        vec![
            Write::Promise(b1),
            Write::Round(1),
            accept(1, b1, "a"),
            accept(2, b1, "b"),
            accept(5, b1, "sparse"),
        ],
        vec![
            Write::Learn(1, Command::App("a".into())),
            Write::Promise(b3),
            accept(2, b3, "b at a higher ballot"),
            Write::Accept(3, b3, Command::Noop),
            Write::Accept(4, b3, Command::Members(BTreeSet::from([0, 1, 2, 3]))),
        ],
        vec![
            Write::Learn(2, Command::App("b at a higher ballot".into())),
            Write::Learn(3, Command::Noop),
            snapshot(3),
            accept(6, b3, "after the snapshot"),
            Write::Learn(4, Command::Members(BTreeSet::from([0, 1, 2, 3]))),
        ],
        vec![
            Write::Round(7),
            accept(2, ballot(7, 1), "moot: below the snapshot"),
            accept(6, ballot(7, 1), "re-accepted after the snapshot"),
            Write::Learn(3, Command::App("moot too".into())),
            Write::Promise(ballot(2, 1)),
            accept(9, ballot(7, 1), "z"),
        ],
        vec![],
    ]
}

#[test]
fn what_was_persisted_comes_back() {
    let fs = SimFs::default();
    let (mut log, disk, _) =
        PaxosLog::<_, String>::open(fs.clone(), Path::new(DIR), id(), options()).unwrap();
    assert_eq!(disk, Disk::default());
    let batches = scenario();
    for (i, batch) in batches.iter().enumerate() {
        log.persist(batch).unwrap();
        let expected = fold(batches[..=i].iter().flatten());
        assert_eq!(log.image(), &expected, "after batch {i}");
    }
    assert_eq!(log.dir(), Path::new(DIR));
    drop(log);
    let expected = fold(batches.iter().flatten());
    // The scenario exercises what it says it does.
    assert_eq!(expected.compacted(), 3);
    assert_eq!(expected.promised, ballot(7, 1));
    assert_eq!(expected.round, 7);
    assert_eq!(
        expected.accepted.keys().copied().collect::<Vec<_>>(),
        [4, 5, 6, 9]
    );
    assert_eq!(expected.accepted[&6].0, ballot(7, 1));
    assert_eq!(recovered(&fs), expected);
}

/// The service's case: the real file system, default options.
#[test]
fn what_was_persisted_comes_back_from_the_real_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("member");
    let open =
        || PaxosLog::<RealFs, String>::open(RealFs, &dir, id(), StorageOptions::default()).unwrap();
    let (mut log, _, _) = open();
    let batches = scenario();
    for batch in &batches {
        log.persist(batch).unwrap();
    }
    drop(log);
    let (log, disk, _) = open();
    assert_eq!(disk, fold(batches.iter().flatten()));
    assert_eq!(log.image(), &disk);
}

/// After `persist` returns, a power loss anywhere keeps all of it.
#[test]
fn a_power_loss_keeps_every_persisted_batch() {
    let fs = SimFs::default();
    let mut log = open_log(&fs);
    let batches = scenario();
    for (i, batch) in batches.iter().enumerate() {
        log.persist(batch).unwrap();
        let expected = fold(batches[..=i].iter().flatten());
        for seed in 0..16 {
            let copy = fs.fork();
            copy.power_loss(seed);
            assert_eq!(recovered(&copy), expected, "batch {i}, seed {seed}");
        }
    }
}

/// A snapshot file holds the whole image, so the journal behind it goes:
/// the accepted values above the core's snapshot survive in the file.
#[test]
fn a_snapshot_drops_the_journal_behind_it() {
    let fs = SimFs::default();
    let mut log = open_log(&fs);
    let b = ballot(1, 0);
    let mut writes = vec![Write::Promise(b)];
    for slot in 1..=400 {
        writes.push(accept(slot, b, &"x".repeat(100)));
        if slot <= 200 {
            writes.push(Write::Learn(slot, Command::App("x".repeat(100))));
        }
    }
    for batch in writes.chunks(10) {
        log.persist(batch).unwrap();
    }
    let segments = |fs: &SimFs| {
        fs.files()
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .count()
    };
    assert!(segments(&fs) > 5, "{} segments", segments(&fs));
    let after = vec![
        snapshot(200),
        accept(401, b, "a"),
        accept(402, b, "b"),
        Write::Learn(201, Command::App("x".repeat(100))),
    ];
    log.persist(&after[..2]).unwrap();
    log.persist(&after[2..]).unwrap();
    drop(log);
    let expected = fold(writes.iter().chain(&after));
    assert_eq!(expected.accepted.len(), 202);
    let disk = recovered(&fs);
    assert_eq!(disk, expected);
    // What the storage still holds: the image of the node's own learned
    // slots stands at the last entry it covers (601 records before it),
    // and the three entries after it.
    let (st, _) = DiskStorage::open(fs.clone(), Path::new(DIR), id(), options()).unwrap();
    assert_eq!(st.snapshot_meta().index, 601);
    assert_eq!((st.first_index(), st.last_index()), (602, 604));
    assert!(segments(&fs) <= 2, "{} segments", segments(&fs));
    assert_eq!(st.wal().segment_count(), segments(&fs));
}

/// The image of a node's own learned slots is handed back to be written
/// elsewhere; until it is adopted the journal is the truth: a power loss
/// before then, its file written or not, recovers the acceptor with those
/// slots not yet compacted, and once adopted, with them compacted.
#[test]
fn a_deferred_image_counts_only_once_adopted() {
    let b = ballot(1, 0);
    let mut before = vec![Write::Promise(b)];
    for slot in 1..=20 {
        before.push(accept(slot, b, "v"));
        before.push(Write::Learn(slot, Command::App("v".into())));
    }
    let after = vec![accept(21, b, "w"), Write::Promise(ballot(2, 1))];
    for (write_file, adopt) in [(false, false), (true, false), (true, true)] {
        let fs = SimFs::default();
        let mut log = open_log(&fs);
        log.persist(&before).unwrap();
        let d = log
            .persist_deferring(&[snapshot(20)])
            .unwrap()
            .expect("the node's own learned slots are compacted elsewhere");
        assert_eq!(d.meta().index, before.len() as u64);
        // More records go to the journal meanwhile, as always.
        assert!(log.persist_deferring(&after).unwrap().is_none());
        if write_file {
            let meta = d.write().unwrap();
            if adopt {
                assert!(log.adopt(meta).unwrap());
            }
        }
        fs.power_loss(7);
        let expected = if adopt {
            fold(before.iter().chain([&snapshot(20)]).chain(&after))
        } else {
            fold(before.iter().chain(&after))
        };
        assert_eq!(
            recovered(&fs),
            expected,
            "file {write_file}, adopted {adopt}"
        );
    }
    // A leader's image (slots this node has not learned) is never deferred.
    let fs = SimFs::default();
    let mut log = open_log(&fs);
    log.persist(&before).unwrap();
    assert!(log.persist_deferring(&[snapshot(30)]).unwrap().is_none());
    fs.power_loss(7);
    assert_eq!(recovered(&fs), fold(before.iter().chain([&snapshot(30)])));
}

/// A snapshot as the very first record, snapshots in a row (one of them
/// stale), and a snapshot as the last record of a batch.
#[test]
fn snapshots_first_in_a_row_and_stale() {
    let fs = SimFs::default();
    let mut log = open_log(&fs);
    let b = ballot(2, 1);
    let batches = [
        vec![snapshot(5)],
        vec![snapshot(7), snapshot(9), snapshot(8)],
        vec![accept(10, b, "j"), accept(12, b, "l"), snapshot(10)],
        vec![snapshot(11)],
        vec![accept(12, b, "l again")],
    ];
    for (i, batch) in batches.iter().enumerate() {
        log.persist(batch).unwrap();
        let expected = fold(batches[..=i].iter().flatten());
        assert_eq!(recovered(&fs), expected, "after batch {i}");
    }
    assert_eq!(log.image().compacted(), 11);
    assert_eq!(log.image().accepted.len(), 1);
}

fn wal_segments(fs: &SimFs) -> Vec<PathBuf> {
    fs.files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect()
}

/// A record cut short at the end of the log was never acknowledged: it is
/// cut off, reported, and the records before it come back.
#[test]
fn a_torn_tail_is_cut_and_reported() {
    let fs = SimFs::default();
    let mut log = open_log(&fs);
    let batches = scenario();
    batches.iter().for_each(|b| log.persist(b).unwrap());
    drop(log);
    let last = wal_segments(&fs).pop().unwrap();
    let mut f = fs.open_rw(&last).unwrap();
    let len = f.len().unwrap();
    f.set_len(len - 3).unwrap();
    f.sync_data().unwrap();
    drop(f);
    let (disk, report) = open(&fs).unwrap();
    let torn = report.torn_tail.expect("a torn tail reported");
    assert_eq!(torn.path, last);
    let all: Vec<&W> = batches.iter().flatten().collect();
    assert_eq!(disk, fold(all[..all.len() - 1].iter().copied()));
    // The cut is final: the next open finds a clean log.
    assert!(open(&fs).unwrap().1.torn_tail.is_none());
}

/// Damage before the tail is refused, naming the file and the offset.
#[test]
fn a_flipped_bit_refuses_to_start() {
    let fs = SimFs::default();
    let mut log = open_log(&fs);
    let b = ballot(1, 0);
    for slot in 1..=200 {
        log.persist(&[accept(slot, b, &"y".repeat(100))]).unwrap();
    }
    let segments = wal_segments(&fs);
    assert!(segments.len() >= 2);
    let first = &segments[0];
    let middle = fs.read(first).unwrap().len() as u64 / 2;
    let damaged = fs.fork();
    assert!(damaged.flip_bit(first, middle, 3));
    match open(&damaged) {
        Err(Error::Corrupt { path, offset, .. }) => {
            assert_eq!(&path, first);
            assert!(offset <= middle, "record at {offset}, flip at {middle}");
        }
        other => panic!("expected corruption, got {:?}", other.map(|(d, _)| d)),
    }
    // The snapshot file is checked too.
    log.persist(&[snapshot(100), accept(201, b, "z")]).unwrap();
    drop(log);
    let snap = fs
        .files()
        .into_iter()
        .find(|p| p.extension().is_some_and(|x| x == "snap"))
        .unwrap();
    let damaged = fs.fork();
    let middle = fs.read(&snap).unwrap().len() as u64 / 2;
    assert!(damaged.flip_bit(&snap, middle, 0));
    let err = open(&damaged).map(|_| ()).unwrap_err();
    assert!(err.is_data_error(), "{err}");
    assert!(err.to_string().contains(".snap"), "{err}");
    assert!(open(&fs).is_ok());
}

#[test]
fn another_members_directory_is_refused() {
    let fs = SimFs::default();
    open_log(&fs).persist(&scenario()[0]).unwrap();
    let other = Identity {
        cluster_id: 7,
        node_id: 2,
    };
    let err = PaxosLog::<SimFs, String>::open(fs.clone(), Path::new(DIR), other, options())
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, Error::WrongIdentity { found, .. } if found == id()),
        "{err}"
    );
}

/// A Raft member's directory is not misread as a journal, whether it holds
/// entries or only a vote.
#[test]
fn a_raft_directory_is_refused_by_name() {
    let raft_dir = |entries: bool, snapshot: bool| {
        let fs = SimFs::default();
        let (mut log, _, _) = RaftLog::open(fs.clone(), Path::new(DIR), id(), options()).unwrap();
        let mut writes = vec![raft::Write::HardState(raft::HardState {
            term: 3,
            vote: Some(1),
            commit: 0,
        })];
        if entries {
            writes.push(raft::Write::Entries(
                (1..8)
                    .map(|index| raft::Entry {
                        index,
                        term: 3,
                        data: raft::EntryData::App(Payload(vec![1; 20].into())),
                    })
                    .collect(),
            ));
        }
        if snapshot {
            writes.push(raft::Write::Snapshot(raft::Snapshot {
                meta: raft::SnapshotMeta {
                    index: 5,
                    term: 3,
                    conf: raft::ConfState::default(),
                },
                data: Payload(vec![2; 20].into()),
            }));
        }
        log.persist(&writes).unwrap();
        fs
    };
    let refusal = |fs: &SimFs| match open(fs) {
        Err(Error::Inconsistent { path, detail }) => {
            assert_eq!(path, Path::new(DIR));
            assert!(detail.contains("raft engine"), "{detail}");
            detail
        }
        other => panic!("expected a refusal, got {:?}", other.map(|(d, _)| d)),
    };
    let detail = refusal(&raft_dir(true, false));
    assert!(
        detail.contains("entry 1 is not a Multi-Paxos record (term 3)"),
        "{detail}"
    );
    let detail = refusal(&raft_dir(true, true));
    assert!(
        detail.contains("the snapshot at index 5 is not a Multi-Paxos image (term 3)"),
        "{detail}"
    );
    let detail = refusal(&raft_dir(false, false));
    assert!(detail.contains("hard state (term 3, vote 2"), "{detail}");
}

/// And the other way round: the Raft log refuses a Multi-Paxos member's
/// directory by name, its journal entries and its image alike.
#[test]
fn the_raft_log_refuses_a_multipaxos_directory_by_name() {
    let refusal = |fs: &SimFs| match RaftLog::open(fs.clone(), Path::new(DIR), id(), options()) {
        Err(Error::Inconsistent { detail, .. }) => detail,
        other => panic!("expected a refusal, got {:?}", other.map(|(_, d, _)| d)),
    };
    let fs = SimFs::default();
    let mut log = open_log(&fs);
    log.persist(&[Write::Promise(ballot(2, 1)), accept(1, ballot(2, 1), "a")])
        .unwrap();
    let detail = refusal(&fs);
    assert!(
        detail.contains("entry 1 is a Multi-Paxos record") && detail.contains("multipaxos engine"),
        "{detail}"
    );
    log.persist(&[snapshot(1)]).unwrap();
    let detail = refusal(&fs);
    assert!(
        detail.contains("the snapshot at index 3 is a Multi-Paxos image"),
        "{detail}"
    );
}

/// A batch that fails leaves the image ahead of the disk, so the log
/// writes nothing more; recovery gives the batches acknowledged before.
#[test]
fn a_failed_batch_stops_the_log() {
    let fs = SimFs::default();
    let mut log = open_log(&fs);
    let batches = scenario();
    log.persist(&batches[0]).unwrap();
    // The snapshot's file cannot be made durable (the log itself is fine).
    fs.set_fail_syncs(true);
    assert!(log.persist(&[snapshot(2)]).is_err());
    fs.set_fail_syncs(false);
    let err = log.persist(&batches[1]).unwrap_err();
    assert!(matches!(err, Error::Poisoned(_)), "{err}");
    drop(log);
    fs.power_loss(3);
    assert_eq!(recovered(&fs), fold(&batches[0]));
}

mod random {
    //! Random records in random batches: every reopen, after any power
    //! loss, gives the fold of every batch persisted so far.
    use super::*;
    use proptest::prelude::*;

    fn write() -> impl Strategy<Value = W> {
        let ballot = (0..6u64, 0..3u64).prop_map(|(r, n)| ballot(r, n));
        let cmd = prop_oneof![
            Just(Command::Noop),
            "[a-z]{0,12}".prop_map(Command::App),
            proptest::collection::btree_set(0..5u64, 1..4).prop_map(Command::Members),
        ];
        prop_oneof![
            ballot.clone().prop_map(Write::Promise),
            (0..10u64).prop_map(Write::Round),
            (1..40u64, ballot, cmd.clone()).prop_map(|(s, b, c)| Write::Accept(s, b, c)),
            (1..40u64, cmd).prop_map(|(s, c)| Write::Learn(s, c)),
            (1..40u64).prop_map(snapshot),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_batches_come_back(
            writes in proptest::collection::vec(write(), 0..120),
            cuts in proptest::collection::vec(1..12usize, 1..40),
            seed in any::<u64>(),
        ) {
            let fs = SimFs::default();
            let mut log = open_log(&fs);
            let mut done = 0;
            for cut in cuts.iter().cycle() {
                let end = (done + cut).min(writes.len());
                log.persist(&writes[done..end]).unwrap();
                done = end;
                let expected = fold(&writes[..done]);
                prop_assert_eq!(log.image(), &expected);
                let copy = fs.fork();
                copy.power_loss(seed.wrapping_add(done as u64));
                prop_assert_eq!(recovered(&copy), expected);
                if done == writes.len() {
                    break;
                }
            }
        }
    }
}
