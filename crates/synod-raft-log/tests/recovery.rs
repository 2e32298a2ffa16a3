//! Recovery returns what was persisted, and refuses records that contradict
//! themselves instead of booting a member from them.

use std::path::Path;
use synod_protocols::raft::{
    ConfState, Disk, Entry, EntryData, HardState, Payload, Snapshot, SnapshotMeta, Write,
};
use synod_raft_log::{codec, RaftLog};
use synod_storage::{DiskStorage, Error, Fs, Identity, SimFs, Storage, StorageOptions, WalOptions};

const DIR: &str = "/member";

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

fn entries(from: u64, to: u64, term: u64) -> Write {
    Write::Entries(
        (from..to)
            .map(|index| Entry {
                index,
                term,
                data: EntryData::App(Payload(vec![index as u8; 100].into())),
            })
            .collect(),
    )
}

fn snapshot(index: u64, term: u64) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            index,
            term,
            conf: ConfState::default(),
        },
        data: Payload(vec![9; 40].into()),
    }
}

fn open(fs: &SimFs) -> Result<Disk, Error> {
    RaftLog::open(fs.clone(), Path::new(DIR), id(), options()).map(|(_, d, _)| d)
}

#[test]
fn what_was_persisted_comes_back() {
    let fs = SimFs::default();
    let (mut log, disk, _) = RaftLog::open(fs.clone(), Path::new(DIR), id(), options()).unwrap();
    assert_eq!(disk, Disk::default());
    let writes = vec![
        Write::HardState(HardState {
            term: 2,
            vote: Some(0),
            commit: 0,
        }),
        entries(1, 60, 2),
        Write::Snapshot(snapshot(30, 2)),
        entries(55, 80, 3),
        Write::HardState(HardState {
            term: 3,
            vote: None,
            commit: 70,
        }),
    ];
    log.persist(&writes).unwrap();
    drop(log);
    let mut expected = Disk::default();
    writes.iter().for_each(|w| expected.apply(w));
    assert_eq!(open(&fs).unwrap(), expected);
}

fn snap_files(fs: &SimFs) -> Vec<String> {
    fs.files()
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_deferred_snapshot_counts_only_once_adopted() {
    let fs = SimFs::default();
    let (mut log, _, _) = RaftLog::open(fs.clone(), Path::new(DIR), id(), options()).unwrap();
    let before = vec![
        Write::HardState(HardState {
            term: 2,
            vote: Some(0),
            commit: 50,
        }),
        entries(1, 60, 2),
    ];
    log.persist(&before).unwrap();
    // A snapshot of the log's own entries is handed back, not written...
    let own = Write::Snapshot(snapshot(40, 2));
    let deferred = log
        .write_deferring(&own)
        .unwrap()
        .expect("the log covers index 40");
    // ...and the log goes on meanwhile.
    log.persist(&[entries(60, 70, 2)]).unwrap();
    let meta = deferred.write().unwrap();
    assert_eq!(snap_files(&fs).len(), 1);
    // Power lost before adoption: the file is not part of the log, and
    // recovery removes it; every entry is still there.
    let copy = fs.fork();
    copy.power_loss(1);
    let mut expected = Disk::default();
    before.iter().for_each(|w| expected.apply(w));
    expected.apply(&entries(60, 70, 2));
    assert_eq!(open(&copy).unwrap(), expected);
    assert!(snap_files(&copy).is_empty(), "{:?}", snap_files(&copy));
    // Adopted: the log starts at the snapshot.
    assert!(log.adopt(meta).unwrap());
    drop(log);
    expected.apply(&own);
    let recovered = open(&fs).unwrap();
    assert_eq!(recovered, expected);
    assert_eq!(recovered.snapshot.unwrap().meta.index, 40);
}

#[test]
fn a_snapshot_from_the_leader_is_written_at_once_and_wins_over_a_deferred_one() {
    let fs = SimFs::default();
    let (mut log, _, _) = RaftLog::open(fs.clone(), Path::new(DIR), id(), options()).unwrap();
    log.persist(&[entries(1, 30, 2)]).unwrap();
    let deferred = log
        .write_deferring(&Write::Snapshot(snapshot(20, 2)))
        .unwrap()
        .expect("covered");
    let meta = deferred.write().unwrap();
    // A snapshot beyond the log (installed from a leader) is not deferred.
    let installed = Write::Snapshot(snapshot(50, 3));
    assert!(log.write_deferring(&installed).unwrap().is_none());
    log.sync().unwrap();
    // The older file is no longer needed: adopting it removes it.
    assert!(!log.adopt(meta).unwrap());
    drop(log);
    let recovered = open(&fs).unwrap();
    assert_eq!(recovered.snapshot.unwrap().meta.index, 50);
    assert_eq!(snap_files(&fs).len(), 1);
}

#[test]
fn a_snapshot_file_that_names_another_snapshot_is_refused() {
    let fs = SimFs::default();
    let (mut st, _) = DiskStorage::open(fs.clone(), Path::new(DIR), id(), options()).unwrap();
    // The file's header says index 12 term 3, the snapshot inside is at 11.
    st.save_snapshot(&synod_storage::Snapshot {
        meta: synod_storage::SnapshotMeta { index: 12, term: 3 },
        data: codec::encode(&snapshot(11, 3)),
    })
    .unwrap();
    drop(st);
    let err = open(&fs).unwrap_err().to_string();
    assert!(
        err.contains("holds a raft snapshot at index 11 term 3"),
        "{err}"
    );
}

#[test]
fn an_entry_of_an_unknown_format_is_refused_by_name() {
    let fs = SimFs::default();
    let (mut st, _) = DiskStorage::open(fs.clone(), Path::new(DIR), id(), options()).unwrap();
    let mut data = codec::encode(&EntryData::Empty);
    data[0] = 9;
    st.append(&[synod_storage::Entry {
        index: 1,
        term: 1,
        data,
    }])
    .unwrap();
    st.sync().unwrap();
    drop(st);
    let err = open(&fs).unwrap_err().to_string();
    assert!(
        err.contains("entry 1") && err.contains("version 9"),
        "{err}"
    );
}

mod fuzz {
    //! Bounded fuzzing of recovery: arbitrary bytes written over a member's
    //! WAL segments or snapshot files give a recovered image or an error,
    //! never a panic (and never a runaway allocation).
    use super::*;
    use proptest::prelude::*;
    use synod_storage::{Fs, FsFile};

    /// A data directory with entries, a snapshot and a hard state.
    fn member() -> SimFs {
        let fs = SimFs::default();
        let (mut log, _, _) = RaftLog::open(fs.clone(), Path::new(DIR), id(), options()).unwrap();
        log.persist(&[
            Write::HardState(HardState {
                term: 2,
                vote: Some(1),
                commit: 40,
            }),
            entries(1, 50, 2),
            Write::Snapshot(snapshot(20, 2)),
            entries(50, 90, 2),
        ])
        .unwrap();
        fs
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn damaged_files_are_refused_or_recovered_never_a_panic(
            pick in any::<usize>(),
            at in any::<u64>(),
            bytes in proptest::collection::vec(any::<u8>(), 1..300),
        ) {
            let fs = member();
            let files = fs.files();
            let path = &files[pick % files.len()];
            let len = fs.read(path).unwrap().len() as u64;
            let mut f = fs.open_rw(path).unwrap();
            f.write_all_at(&bytes, at % (len + 1)).unwrap();
            f.sync_data().unwrap();
            drop(f);
            let _ = open(&fs);
        }
    }
}

/// A snapshot streamed into its file while its data was encoded is
/// installed as the file `write` would have written, and recovers as that
/// snapshot; one streamed for other metadata is discarded and the snapshot
/// written afresh.
#[test]
fn a_streamed_snapshot_is_installed_as_the_written_one() {
    use std::io::Write as _;
    let stream = |log: &RaftLog<SimFs>, snap: &Snapshot, sized: bool| {
        let data = &snap.data.0;
        let snaps = log.snap_store();
        let mut s = if sized {
            synod_raft_log::SnapshotStream::start(&snaps, snap.meta.clone(), data.len() as u64)
        } else {
            synod_raft_log::SnapshotStream::start_unsized(&snaps, snap.meta.clone())
        }
        .unwrap();
        s.write_all(&data[..7]).unwrap();
        s.write_all(&data[7..]).unwrap();
        s.finish().unwrap()
    };
    let run = |streamed_meta: Option<SnapshotMeta>, sized: bool| {
        let fs = SimFs::default();
        let (mut log, _, _) = RaftLog::open(fs.clone(), Path::new(DIR), id(), options()).unwrap();
        log.persist(&[entries(1, 30, 2)]).unwrap();
        let snap = snapshot(20, 2);
        let deferred = log
            .write_deferring(&Write::Snapshot(snap.clone()))
            .unwrap()
            .expect("covered");
        let meta = match streamed_meta {
            None => deferred.write().unwrap(),
            Some(m) => {
                let streamed = stream(
                    &log,
                    &Snapshot {
                        meta: m,
                        ..snap.clone()
                    },
                    sized,
                );
                deferred.write_streamed(streamed).unwrap()
            }
        };
        assert!(log.adopt(meta).unwrap());
        drop(log);
        let files: Vec<(String, Vec<u8>)> = fs
            .files()
            .iter()
            .filter(|p| p.to_string_lossy().contains(".snap"))
            .map(|p| (p.to_string_lossy().into_owned(), fs.read(p).unwrap()))
            .collect();
        (open(&fs).unwrap(), files)
    };
    let (written, written_files) = run(None, true);
    assert_eq!(written.snapshot.as_ref().unwrap().meta.index, 20);
    // With its length announced, or learnt at the end (the prefix that
    // states it written last).
    for sized in [true, false] {
        let (streamed, streamed_files) = run(Some(snapshot(20, 2).meta), sized);
        assert_eq!(streamed, written);
        assert!(
            streamed_files == written_files,
            "the same files, byte for byte (sized: {sized})"
        );
        // Streamed for another configuration than the core's: not installed.
        let mut other = snapshot(20, 2).meta;
        other.conf.voters.push(5);
        let (fallback, fallback_files) = run(Some(other), sized);
        assert_eq!(fallback, written);
        assert!(fallback_files == written_files, "the part file is gone");
    }
}

/// A stream whose encoder fails, or writes other than the length it
/// announced, leaves no file behind.
#[test]
fn a_failed_snapshot_stream_removes_its_file() {
    use std::io::Write as _;
    let fs = SimFs::default();
    let (log, _, _) = RaftLog::open(fs.clone(), Path::new(DIR), id(), options()).unwrap();
    let start = || {
        synod_raft_log::SnapshotStream::start(&log.snap_store(), snapshot(20, 2).meta, 40).unwrap()
    };
    let short = start().write_with(|s| s.write_all(&[9; 39]));
    assert!(short.is_err());
    let failed = start().write_with(|_| Err(std::io::Error::other("encoder broke")));
    assert!(failed.unwrap_err().to_string().contains("encoder broke"));
    let halfway =
        synod_raft_log::SnapshotStream::start_unsized(&log.snap_store(), snapshot(20, 2).meta)
            .unwrap()
            .write_with(|s| {
                s.write_all(&[9; 40])?;
                Err(std::io::Error::other("encoder broke halfway"))
            });
    assert!(halfway.unwrap_err().to_string().contains("halfway"));
    let left: Vec<_> = fs
        .files()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".snap"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let ok = start().write_with(|s| s.write_all(&[9; 40])).unwrap();
    assert!(fs.exists(&ok.path));
}
