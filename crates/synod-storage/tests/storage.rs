//! Behavioural tests of the WAL, snapshots and recovery, mostly on the
//! simulated disk so every crash point can be reached deterministically.

use std::path::{Path, PathBuf};

use synod_storage::{
    format, Committer, DiskStorage, Entry, Error, Fs, FsFile, HardState, Identity, RealFs, SimFs,
    SimStorage, Snapshot, SnapshotMeta, Storage, StorageOptions, WalOptions,
};

const ID: Identity = Identity {
    cluster_id: 0xC1,
    node_id: 1,
};

fn opts(segment_size: u64, preallocate: bool) -> StorageOptions {
    StorageOptions {
        wal: WalOptions {
            segment_size,
            preallocate,
            prealloc_chunk: 8192,
            prepare_at: 0,
            write_buffer: 1 << 20,
        },
    }
}

fn data_of(i: u64, t: u64) -> Vec<u8> {
    format!("entry {i} of term {t}").into_bytes()
}

fn ent(i: u64, t: u64) -> Entry {
    Entry {
        index: i,
        term: t,
        data: data_of(i, t),
    }
}

fn ents(lo: u64, hi: u64, t: u64) -> Vec<Entry> {
    (lo..=hi).map(|i| ent(i, t)).collect()
}

fn dir() -> &'static Path {
    Path::new("/data")
}

fn open_sim(fs: &SimFs, o: StorageOptions) -> SimStorage {
    DiskStorage::open(fs.clone(), dir(), ID, o).unwrap().0
}

fn all(s: &impl Storage) -> Vec<Entry> {
    s.entries(s.first_index(), s.last_index() + 1).unwrap()
}

fn wal_files(fs: &SimFs) -> Vec<PathBuf> {
    fs.files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect()
}

#[test]
fn rotation_and_reopen() {
    for prealloc in [false, true] {
        let fs = SimFs::new();
        let mut s = open_sim(&fs, opts(2048, prealloc));
        for b in 0..20 {
            s.append(&ents(b * 10 + 1, b * 10 + 10, 1)).unwrap();
            s.set_hard_state(HardState {
                term: 1,
                vote: 1,
                commit: b * 10,
            })
            .unwrap();
            let d = s.sync().unwrap();
            assert_eq!(d.last_index, b * 10 + 10);
        }
        assert!(s.wal().segment_count() > 3, "{}", s.wal().segment_count());
        assert_eq!(wal_files(&fs).len(), s.wal().segment_count());
        drop(s);
        let (s, report) = DiskStorage::open(fs.clone(), dir(), ID, opts(2048, prealloc)).unwrap();
        assert!(report.torn_tail.is_none());
        assert_eq!(all(&s), ents(1, 200, 1));
        assert_eq!(s.hard_state().commit, 190);
    }
}

/// A sync hands its file handle to a ticket (so that another thread can
/// run the `fdatasync`); the next sync in the same segment takes the same
/// handle back instead of a `dup` of its own.
#[test]
fn syncs_in_one_segment_share_one_file_handle() {
    let fs = SimFs::new();
    let mut s = open_sim(&fs, opts(2048, false));
    let before = fs.stats().handles_cloned;
    let syncs = 20;
    for b in 0..syncs {
        s.append(&ents(b * 10 + 1, b * 10 + 10, 1)).unwrap();
        s.sync().unwrap();
    }
    let cloned = fs.stats().handles_cloned - before;
    let segments = s.wal().segment_count() as u64;
    assert!(segments > 3, "{segments}");
    assert!(
        cloned <= segments && cloned < syncs,
        "{cloned} handles for {syncs} syncs into {segments} segments"
    );
    drop(s);
    let s = open_sim(&fs, opts(2048, false));
    assert_eq!(s.last_index(), syncs * 10);
}

#[test]
fn suffix_truncation_replaces_the_tail() {
    let fs = SimFs::new();
    let mut s = open_sim(&fs, opts(1 << 20, false));
    s.append(&ents(1, 10, 1)).unwrap();
    assert_eq!(s.sync().unwrap().last_index, 10);
    // Conflict at index 6: entries 6.. are replaced.
    s.append(&ents(6, 7, 2)).unwrap();
    assert_eq!(s.last_index(), 7);
    assert_eq!(
        s.durable().last_index,
        5,
        "unsynced replacement lowers the durable index"
    );
    assert_eq!(s.term(8), None);
    assert_eq!(s.sync().unwrap().last_index, 7);
    drop(s);
    let s = open_sim(&fs, opts(1 << 20, false));
    let mut want = ents(1, 5, 1);
    want.extend(ents(6, 7, 2));
    assert_eq!(all(&s), want);

    // Gaps and rewriting below the snapshot are refused.
    let mut s = s;
    assert!(matches!(
        s.append(&[ent(9, 2)]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.append(&[ent(8, 2), ent(10, 2)]),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn truncation_reaching_into_an_older_segment() {
    let fs = SimFs::new();
    let mut s = open_sim(&fs, opts(1024, false));
    for b in 0..10 {
        s.append(&ents(b * 10 + 1, b * 10 + 10, 1)).unwrap();
        s.sync().unwrap();
    }
    assert!(s.wal().segment_count() >= 4);
    s.append(&ents(12, 14, 3)).unwrap();
    s.sync().unwrap();
    drop(s);
    let s = open_sim(&fs, opts(1024, false));
    let mut want = ents(1, 11, 1);
    want.extend(ents(12, 14, 3));
    assert_eq!(all(&s), want);
}

#[test]
fn snapshot_drops_whole_segments_below_it() {
    let fs = SimFs::new();
    let o = opts(2048, true);
    let mut s = open_sim(&fs, o);
    for b in 0..30 {
        s.append(&ents(b * 10 + 1, b * 10 + 10, 1)).unwrap();
        s.sync().unwrap();
    }
    let before = s.wal().segment_count();
    s.save_snapshot(&Snapshot {
        meta: SnapshotMeta {
            index: 250,
            term: 1,
        },
        data: b"state@250".to_vec(),
    })
    .unwrap();
    let after = s.wal().segment_count();
    assert!(after < before && after >= 1, "{before} -> {after}");
    assert_eq!(s.first_index(), 251);
    assert_eq!(all(&s), ents(251, 300, 1));
    assert!(s.entries(10, 20).is_err());
    assert_eq!(s.term(250), Some(1));
    drop(s);
    let s = open_sim(&fs, o);
    assert_eq!(
        s.snapshot_meta(),
        SnapshotMeta {
            index: 250,
            term: 1
        }
    );
    assert_eq!(s.snapshot().unwrap().unwrap().data, b"state@250");
    assert_eq!(all(&s), ents(251, 300, 1));

    // A snapshot from a leader beyond our log replaces the log entirely.
    let mut s = s;
    s.save_snapshot(&Snapshot {
        meta: SnapshotMeta {
            index: 500,
            term: 4,
        },
        data: b"state@500".to_vec(),
    })
    .unwrap();
    assert_eq!((s.first_index(), s.last_index()), (501, 500));
    s.append(&ents(501, 502, 4)).unwrap();
    s.sync().unwrap();
    // A snapshot whose term does not match our entry at its index also
    // empties the log.
    s.save_snapshot(&Snapshot {
        meta: SnapshotMeta {
            index: 501,
            term: 5,
        },
        data: b"x".to_vec(),
    })
    .unwrap();
    assert_eq!(s.last_index(), 501);
    drop(s);
    let s = open_sim(&fs, o);
    assert_eq!((s.first_index(), s.last_index()), (502, 501));
    let snaps: Vec<_> = fs
        .files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    assert_eq!(snaps.len(), 1, "older snapshots are removed: {snaps:?}");
}

/// Write entries 1..=5 then a large entry 6; returns the fs, the last
/// segment's path and the byte range of entry 6's frame.
fn log_with_big_last_record(prealloc: bool) -> (SimFs, PathBuf, u64, u64) {
    let fs = SimFs::new();
    let mut s = open_sim(&fs, opts(1 << 20, prealloc));
    s.append(&ents(1, 5, 1)).unwrap();
    s.sync().unwrap();
    let path = wal_files(&fs).pop().unwrap();
    let start = {
        // End of good data = offset of the next frame; read it via verify.
        let mut f = fs.open_rw(&path).unwrap();
        let len = f.len().unwrap();
        f.sync_data().unwrap();
        if prealloc {
            let bytes = fs.read(&path).unwrap();
            format::scan_segment(&path, &bytes, true).unwrap().end
        } else {
            len
        }
    };
    s.append(&[Entry {
        index: 6,
        term: 1,
        data: vec![0x5A; 1500],
    }])
    .unwrap();
    s.sync().unwrap();
    let end = start + format::frame_len(16 + 1500) as u64;
    (fs, path, start, end)
}

#[test]
fn torn_tail_every_cut_point_is_repaired() {
    let (fs, path, start, end) = log_with_big_last_record(false);
    for cut in start + 1..end {
        let g = fs.fork();
        let mut f = g.open_rw(&path).unwrap();
        f.set_len(cut).unwrap();
        f.sync_data().unwrap();
        let (mut s, report) =
            DiskStorage::open(g.clone(), dir(), ID, opts(1 << 20, false)).unwrap();
        let t = report.torn_tail.expect("torn tail reported");
        assert_eq!(
            (t.path.clone(), t.offset, t.bytes),
            (path.clone(), start, cut - start)
        );
        assert!(t
            .to_string()
            .contains(&format!("truncated {} bytes", cut - start)));
        assert_eq!(all(&s), ents(1, 5, 1));
        // The repaired log accepts new writes and reopens cleanly.
        s.append(&ents(6, 7, 2)).unwrap();
        s.sync().unwrap();
        drop(s);
        let (s, report) = DiskStorage::open(g, dir(), ID, opts(1 << 20, false)).unwrap();
        assert!(report.torn_tail.is_none());
        assert_eq!(s.last_index(), 7);
    }
}

#[test]
fn torn_tail_with_preallocation_unwritten_sectors() {
    let (fs, path, start, end) = log_with_big_last_record(true);
    // Lose any one sector of the record (it reads back as zeros).
    let first_sector = start / 512;
    let last_sector = (end - 1) / 512;
    for sector in first_sector..=last_sector {
        let g = fs.fork();
        let mut f = g.open_rw(&path).unwrap();
        let from = (sector * 512).max(start);
        let to = ((sector + 1) * 512).min(end);
        f.write_all_at(&vec![0; (to - from) as usize], from)
            .unwrap();
        f.sync_data().unwrap();
        let (s, report) = DiskStorage::open(g, dir(), ID, opts(1 << 20, true)).unwrap();
        assert_eq!(all(&s), ents(1, 5, 1), "sector {sector}");
        if from == start && to - from >= 16 {
            // Zeroed header: looks like the clean end of a preallocated file,
            // or torn if later sectors of the record survived.
            assert!(report.torn_tail.is_none() || to < end);
        } else {
            assert_eq!(report.torn_tail.unwrap().offset, start);
        }
    }
}

#[test]
fn corruption_before_the_tail_refuses_to_start() {
    for prealloc in [false, true] {
        let fs = SimFs::new();
        let mut s = open_sim(&fs, opts(2048, prealloc));
        for b in 0..10 {
            s.append(&ents(b * 10 + 1, b * 10 + 10, 1)).unwrap();
            s.sync().unwrap();
        }
        drop(s);
        let files = wal_files(&fs);
        assert!(files.len() >= 3);
        // One byte in the middle of an older segment, and one in a record of
        // the last segment that is followed by other records.
        for path in [&files[0], &files[files.len() - 1]] {
            let bytes = fs.read(path).unwrap();
            let scan = format::scan_segment(path, &bytes, true).unwrap();
            assert!(scan.records.len() >= 3);
            let (off, _) = scan.records[2];
            let g = fs.fork();
            assert!(g.flip_bit(path, off + 20, 3));
            let err = DiskStorage::open(g, dir(), ID, opts(2048, prealloc))
                .err()
                .unwrap();
            match &err {
                Error::Corrupt {
                    path: p, offset, ..
                } => {
                    assert_eq!((p, *offset), (path, off));
                }
                e => panic!("expected corruption, got {e}"),
            }
            let msg = err.to_string();
            assert!(
                msg.contains(&path.display().to_string()) && msg.contains(&format!("offset {off}"))
            );
        }
    }
}

#[test]
fn flip_on_read_is_detected_and_the_node_stops() {
    let fs = SimFs::new();
    let mut s = open_sim(&fs, opts(1 << 20, true));
    s.append(&ents(1, 20, 1)).unwrap();
    s.sync().unwrap();
    s.save_snapshot(&Snapshot {
        meta: SnapshotMeta { index: 5, term: 1 },
        data: vec![7; 100],
    })
    .unwrap();
    let seg = wal_files(&fs).pop().unwrap();
    let snap = fs
        .files()
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "snap"))
        .unwrap();
    // Reading the snapshot while running: the bad byte is caught.
    fs.flip_on_read(&snap, 100, 0x01);
    assert!(matches!(s.snapshot(), Err(Error::Corrupt { .. })));
    fs.clear_read_faults();
    assert_eq!(s.snapshot().unwrap().unwrap().data, vec![7; 100]);
    drop(s);
    // Reading the log at startup: refuses to start.
    fs.flip_on_read(&seg, 230, 0x80);
    let e = DiskStorage::open(fs.clone(), dir(), ID, opts(1 << 20, true))
        .err()
        .unwrap();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    fs.clear_read_faults();
    fs.flip_on_read(&snap, 70, 0x02);
    let e = DiskStorage::open(fs.clone(), dir(), ID, opts(1 << 20, true))
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::Corrupt { ref path, offset: 64, .. } if *path == snap),
        "{e}"
    );
}

#[test]
fn wrong_cluster_or_node_is_refused() {
    let fs = SimFs::new();
    let mut s = open_sim(&fs, opts(1 << 20, false));
    s.append(&ents(1, 3, 1)).unwrap();
    s.sync().unwrap();
    drop(s);
    for other in [
        Identity {
            cluster_id: 0xC1,
            node_id: 2,
        },
        Identity {
            cluster_id: 0xC2,
            node_id: 1,
        },
    ] {
        let e = DiskStorage::open(fs.clone(), dir(), other, opts(1 << 20, false))
            .err()
            .unwrap();
        assert!(
            matches!(e, Error::WrongIdentity { found, expected, .. } if found == ID && expected == other)
        );
        let msg = e.to_string();
        assert!(
            msg.contains("refusing to start") && msg.contains("node 1"),
            "{msg}"
        );
    }
}

#[test]
fn failed_fsync_poisons_the_log() {
    let fs = SimFs::new();
    let mut s = open_sim(&fs, opts(1 << 20, false));
    s.append(&ents(1, 3, 1)).unwrap();
    s.sync().unwrap();
    s.append(&ents(4, 4, 1)).unwrap();
    fs.set_fail_syncs(true);
    assert!(matches!(
        s.sync(),
        Err(Error::Io {
            op: "fdatasync",
            ..
        })
    ));
    fs.set_fail_syncs(false);
    assert!(matches!(s.append(&ents(5, 5, 1)), Err(Error::Poisoned(_))));
    assert!(matches!(s.sync(), Err(Error::Poisoned(_))));
    assert_eq!(s.durable().last_index, 3);
}

/// Snapshot installation crashed at every possible step, then power lost:
/// recovery always succeeds with either the old or the new snapshot.
#[test]
fn snapshot_atomic_at_every_crash_point() {
    let o = opts(1024, true);
    let base = SimFs::new();
    let mut s = open_sim(&base, o);
    for b in 0..6 {
        s.append(&ents(b * 10 + 1, b * 10 + 10, 1)).unwrap();
        s.sync().unwrap();
    }
    s.save_snapshot(&Snapshot {
        meta: SnapshotMeta { index: 20, term: 1 },
        data: b"old".to_vec(),
    })
    .unwrap();
    drop(s);
    let mut saw = [false; 2];
    let mut step = 0;
    loop {
        let fs = base.fork();
        let mut s = open_sim(&fs, o);
        fs.crash_after(Some(step));
        let res = s.save_snapshot(&Snapshot {
            meta: SnapshotMeta { index: 45, term: 1 },
            data: b"new".to_vec(),
        });
        drop(s);
        for seed in 0..8 {
            let g = fs.fork();
            g.power_loss(seed * 7919 + step);
            let (s, _) = DiskStorage::open(g, dir(), ID, o)
                .unwrap_or_else(|e| panic!("step {step} seed {seed}: {e}"));
            let snap = s.snapshot().unwrap().unwrap();
            match snap.meta.index {
                20 => {
                    assert_eq!(snap.data, b"old");
                    assert_eq!(all(&s), ents(21, 60, 1));
                    saw[0] = true;
                }
                45 => {
                    assert_eq!(snap.data, b"new");
                    assert_eq!(all(&s), ents(46, 60, 1));
                    saw[1] = true;
                }
                i => panic!("unexpected snapshot {i}"),
            }
        }
        if res.is_ok() {
            break;
        }
        step += 1;
    }
    assert!(step > 5, "the protocol has several steps");
    assert_eq!(saw, [true, true]);
}

/// A conflicting append that fills a segment, crashed at every step and
/// followed by more work and a snapshot that deletes older segments: the log
/// must always recover and stay consistent. (Found by the SIGKILL test: a
/// segment named after the conflicting entry's index broke replay once the
/// segments before it were deleted; and a segment left empty by a crash
/// right after rotation lacked the hard state, which was then lost with the
/// deleted segments.)
#[test]
fn crash_at_every_step_of_a_conflict_that_rotates() {
    let o = opts(1024, false);
    let base = SimFs::new();
    let mut s = open_sim(&base, o);
    // Fill segment 1 exactly past its size, so the conflicting batch
    // rotates before its very first entry.
    s.append(&ents(1, 13, 1)).unwrap();
    let hs = HardState {
        term: 1,
        vote: 1,
        commit: 10,
    };
    s.set_hard_state(hs).unwrap();
    s.sync().unwrap();
    assert_eq!(s.wal().segment_count(), 1);
    drop(s);
    let mut step = 0;
    loop {
        let fs = base.fork();
        let mut s = open_sim(&fs, o);
        fs.crash_after(Some(step));
        let done = s.append(&ents(5, 30, 2)).and_then(|_| s.sync()).is_ok();
        drop(s);
        for seed in 0..6 {
            let g = fs.fork();
            g.power_loss(seed * 31 + step);
            let mut s = open_sim(&g, o);
            let last = s.last_index();
            let t = s.term(last).unwrap();
            assert!(last >= 13 || t == 2, "step {step}: lost durable entries");
            s.append(&ents(last + 1, last + 5, 3)).unwrap();
            s.sync().unwrap();
            let snap = SnapshotMeta {
                index: last + 2,
                term: 3,
            };
            s.save_snapshot(&Snapshot {
                meta: snap,
                data: vec![1],
            })
            .unwrap();
            s.append(&ents(last + 6, last + 7, 3)).unwrap();
            s.sync().unwrap();
            drop(s);
            let s = open_sim(&g, o);
            assert_eq!(s.snapshot_meta(), snap, "step {step}");
            assert_eq!(s.hard_state(), hs, "step {step}: hard state lost");
            assert_eq!(all(&s), ents(last + 3, last + 7, 3), "step {step}");
        }
        if done {
            break;
        }
        step += 1;
    }
    assert!(step > 5);
}

/// Random workload on the simulated disk with power losses: every recovered
/// state is one the log passed through, no earlier than the last sync.
#[test]
fn power_loss_recovers_a_prefix_no_shorter_than_durable() {
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Model {
        snap: SnapshotMeta,
        hs: HardState,
        log: Vec<Entry>,
    }
    let mut rng = 0x1234_5678_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let rounds: u64 = std::env::var("SYNOD_POWER_LOSS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let (mut torn, mut beyond) = (0, 0);
    for round in 0..rounds {
        let prealloc = round % 2 == 0;
        let mut o = opts(1024 + (round % 3) * 1024, prealloc);
        // Mostly write each append through to the (volatile) file at once,
        // so power loss meets half-written records.
        o.wal.write_buffer = if round % 5 == 0 { 1 << 20 } else { 0 };
        let fs = SimFs::new();
        let mut s = open_sim(&fs, o);
        let mut term = 1;
        let mut model = Model {
            snap: SnapshotMeta::default(),
            hs: HardState::default(),
            log: vec![],
        };
        // history[k] = state after the k-th record of this run.
        let mut history = vec![model.clone()];
        let mut durable_at = 0;
        for _ in 0..(5 + next() % 40) {
            match next() % 10 {
                0..=5 => {
                    let last = model.snap.index + model.log.len() as u64;
                    let mut first = last + 1;
                    if next() % 4 == 0 && last > model.snap.index + 1 {
                        term += 1;
                        first = model.snap.index + 1 + next() % (last - model.snap.index);
                    }
                    let n = 1 + next() % 5;
                    let batch: Vec<Entry> = (first..first + n)
                        .map(|i| Entry {
                            index: i,
                            term,
                            data: vec![(i * 31 + term) as u8; (next() % 600) as usize],
                        })
                        .collect();
                    s.append(&batch).unwrap();
                    for e in batch {
                        model
                            .log
                            .truncate((e.index - model.snap.index - 1) as usize);
                        model.log.push(e);
                        history.push(model.clone());
                    }
                }
                6 => {
                    model.hs = HardState {
                        term,
                        vote: next() % 3,
                        commit: model.snap.index + model.log.len() as u64,
                    };
                    s.set_hard_state(model.hs).unwrap();
                    history.push(model.clone());
                }
                7 if !model.log.is_empty() => {
                    let k = next() % model.log.len() as u64;
                    let e = &model.log[k as usize];
                    let meta = SnapshotMeta {
                        index: e.index,
                        term: e.term,
                    };
                    s.save_snapshot(&Snapshot {
                        meta,
                        data: meta.index.to_le_bytes().to_vec(),
                    })
                    .unwrap();
                    model.log.drain(..=k as usize);
                    model.snap = meta;
                    history.push(model.clone());
                    durable_at = history.len() - 1;
                }
                _ => {
                    s.sync().unwrap();
                    durable_at = history.len() - 1;
                }
            }
        }
        drop(s);
        fs.power_loss(next());
        let (s, report) = DiskStorage::open(fs.clone(), dir(), ID, o)
            .unwrap_or_else(|e| panic!("round {round}: recovery failed: {e}"));
        torn += report.torn_tail.is_some() as u32;
        let got = Model {
            snap: s.snapshot_meta(),
            hs: s.hard_state(),
            log: all(&s),
        };
        let k = history
            .iter()
            .rposition(|m| *m == got)
            .unwrap_or_else(|| panic!("round {round}: recovered state never existed: {got:?}"));
        assert!(
            k >= durable_at,
            "round {round}: lost durable records ({k} < {durable_at})"
        );
        beyond += (k > durable_at) as u32;
        if got.snap.index > 0 {
            assert_eq!(
                s.snapshot().unwrap().unwrap().data,
                got.snap.index.to_le_bytes()
            );
        }
    }
    // The workload must actually exercise torn writes and unsynced survivors.
    eprintln!("{rounds} rounds: {torn} torn tails, {beyond} kept unsynced records");
    assert!(torn > rounds as u32 / 20 && beyond > rounds as u32 / 20);
}

#[test]
fn committer_groups_concurrent_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = DiskStorage::open(RealFs, tmp.path(), ID, opts(64 << 10, true)).unwrap();
    let c = Committer::new(s);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for k in 0..25u64 {
                    let lsn = c
                        .with(|s| {
                            let i = s.last_index() + 1;
                            s.append(&[Entry {
                                index: i,
                                term: 1,
                                data: vec![t as u8; 256 + k as usize],
                            }])
                        })
                        .unwrap();
                    let d = c.wait_durable(lsn).unwrap();
                    assert!(d.lsn >= lsn);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(c.with(|s| s.durable().last_index), 200);
    drop(c);
    let (s, _) = DiskStorage::open(RealFs, tmp.path(), ID, opts(64 << 10, true)).unwrap();
    assert_eq!(s.last_index(), 200);
    assert!(matches!(
        Committer::new(s).wait_durable(1_000_000),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn verify_and_dump_on_the_real_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(4096, true);
    let (mut s, _) = DiskStorage::open(RealFs, tmp.path(), ID, o).unwrap();
    for b in 0..10 {
        s.append(&ents(b * 20 + 1, b * 20 + 20, 2)).unwrap();
        s.set_hard_state(HardState {
            term: 2,
            vote: 1,
            commit: b * 20,
        })
        .unwrap();
        s.sync().unwrap();
    }
    s.save_snapshot(&Snapshot {
        meta: SnapshotMeta { index: 50, term: 2 },
        data: b"sm".to_vec(),
    })
    .unwrap();
    drop(s);
    let r = synod_storage::verify(tmp.path()).unwrap();
    assert_eq!(
        (r.first_index, r.last_index, r.snapshot.index),
        (51, 200, 50)
    );
    assert_eq!(r.identity, ID);
    assert!(r.to_string().contains("OK"));
    let mut out = Vec::new();
    synod_storage::dump(tmp.path(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("entry index=200 term=2"), "{text}");
    assert!(text.contains("hardstate term=2 vote=1 commit=180"));
    assert!(text.contains("snapshot index=50 term=2"));

    // Flip one byte in the first segment: verify names file and offset.
    let wal = tmp.path().join("wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let victim = &segs[0];
    let mut bytes = std::fs::read(victim).unwrap();
    let scan = format::scan_segment(victim, &bytes, false).unwrap();
    let (off, _) = scan.records[3];
    bytes[off as usize + 30] ^= 0xFF;
    std::fs::write(victim, &bytes).unwrap();
    let e = synod_storage::verify(tmp.path()).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Corrupt { offset, .. } if offset == off),
        "{msg}"
    );
    assert!(
        msg.contains(&victim.display().to_string()) && msg.contains(&format!("offset {off}")),
        "{msg}"
    );
    // Dump prints the good records before the damage, then fails the same way.
    let mut out = Vec::new();
    let e = synod_storage::dump(&wal, &mut out).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }));
    assert!(String::from_utf8(out).unwrap().lines().count() >= 3);
    // Verify also refuses a data dir from another node when opened.
    bytes[off as usize + 30] ^= 0xFF;
    std::fs::write(victim, &bytes).unwrap();
    synod_storage::verify(tmp.path()).unwrap();
    let other = Identity {
        cluster_id: 0xC1,
        node_id: 9,
    };
    assert!(matches!(
        DiskStorage::open(RealFs, tmp.path(), other, o),
        Err(Error::WrongIdentity { .. })
    ));
}

fn prepared_files(fs: &SimFs) -> Vec<PathBuf> {
    fs.files()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("prepared-"))
        })
        .collect()
}

/// With preallocation the next segment waits, zero-filled, under a temp
/// name. A crash (with power loss) while it exists must leave a log that
/// `verify` accepts without counting the prepared file as a segment, and
/// that recovers to the synced state, deletes the file and prepares afresh.
#[test]
fn crash_with_a_prepared_segment_recovers_and_removes_it() {
    let o = opts(2048, true);
    let base = SimFs::new();
    let mut s = open_sim(&base, o);
    let mut last = 0;
    while s.wal().segment_count() < 3 {
        s.append(&ents(last + 1, last + 4, 1)).unwrap();
        s.sync().unwrap();
        last += 4;
    }
    // Unsynced records too, so that power loss has something to drop.
    s.append(&ents(last + 1, last + 2, 1)).unwrap();
    let prepared = prepared_files(&base);
    assert_eq!(prepared.len(), 1, "{:?}", base.files());
    // The prepared file is whole and zero-filled, and not a segment.
    let bytes = base.read(&prepared[0]).unwrap();
    assert_eq!(bytes.len(), 2048);
    assert!(bytes.iter().all(|&b| b == 0));
    drop(s);
    let mut survived = 0;
    for seed in 0..16 {
        let fs = base.fork();
        fs.power_loss(seed);
        let r = synod_storage::verify_with(&fs, dir())
            .unwrap_or_else(|e| panic!("seed {seed}: verify failed: {e}"));
        assert_eq!(r.segments, 3, "seed {seed}");
        let had_prepared = fs.exists(&prepared[0]);
        let (mut s, report) = DiskStorage::open(fs.clone(), dir(), ID, o).unwrap();
        let got = all(&s);
        assert!(
            got == ents(1, last, 1) || got == ents(1, last + 2, 1),
            "seed {seed}: recovered up to {}",
            s.last_index()
        );
        // Power loss may have dropped the file's creation; if it survived,
        // recovery removed it.
        survived += had_prepared as u32;
        if had_prepared {
            assert!(report.removed_files.contains(&prepared[0]), "seed {seed}");
        }
        // A fresh one is prepared for the segment after the current one.
        let again = prepared_files(&fs);
        assert_eq!(again, prepared, "seed {seed}");
        // And rotation into it works and survives a reopen.
        let from = s.last_index();
        s.append(&ents(from + 1, from + 100, 2)).unwrap();
        s.sync().unwrap();
        assert!(s.wal().segment_count() > 4, "seed {seed}");
        drop(s);
        let s = open_sim(&fs, o);
        let mut want = ents(1, from, 1);
        want.extend(ents(from + 1, from + 100, 2));
        assert_eq!(all(&s), want, "seed {seed}");
        synod_storage::verify_with(&fs, dir()).unwrap();
    }
    assert!(survived > 0, "no power loss kept the prepared file");
}

/// A rotation into a prepared segment crashed at every step (header write,
/// its fsync, the rename, the directory fsync, preparing the next one),
/// then power lost: every recovery keeps what was synced and the log goes
/// on working.
#[test]
fn crash_at_every_step_of_a_rotation_into_a_prepared_segment() {
    let o = opts(2048, true);
    let base = SimFs::new();
    let mut s = open_sim(&base, o);
    let mut last = 0;
    // Stop just short of the segment size, so the next batch rotates.
    while s.wal().segment_count() < 2 {
        s.append(&ents(last + 1, last + 1, 1)).unwrap();
        s.sync().unwrap();
        last += 1;
    }
    drop(s);
    let (mut step, mut saw_prepared_at_crash) = (0, 0);
    loop {
        let fs = base.fork();
        let mut s = open_sim(&fs, o);
        assert_eq!(prepared_files(&fs).len(), 1);
        fs.crash_after(Some(step));
        let done = s
            .append(&ents(last + 1, last + 60, 2))
            .and_then(|_| s.sync())
            .is_ok();
        drop(s);
        fs.crash_after(None);
        saw_prepared_at_crash += !prepared_files(&fs).is_empty() as u32;
        for seed in 0..6 {
            let g = fs.fork();
            g.power_loss(seed * 131 + step);
            synod_storage::verify_with(&g, dir())
                .unwrap_or_else(|e| panic!("step {step} seed {seed}: verify failed: {e}"));
            let (mut s, _) = DiskStorage::open(g.clone(), dir(), ID, o)
                .unwrap_or_else(|e| panic!("step {step} seed {seed}: recovery failed: {e}"));
            let got = all(&s);
            let n = got.len() as u64;
            assert!(n >= last, "step {step} seed {seed}: lost synced entries");
            let mut want = ents(1, last, 1);
            want.extend(ents(last + 1, n, 2));
            assert_eq!(got, want, "step {step} seed {seed}");
            assert!(
                g.files()
                    .iter()
                    .all(|p| !p.to_string_lossy().ends_with(".tmp")
                        || prepared_files(&g).contains(p)),
                "step {step} seed {seed}: leftover temp files {:?}",
                g.files()
            );
            s.append(&ents(n + 1, n + 30, 3)).unwrap();
            s.sync().unwrap();
            drop(s);
            let s = open_sim(&g, o);
            assert_eq!(s.last_index(), n + 30, "step {step} seed {seed}");
            assert_eq!(s.term(n + 30), Some(3));
        }
        if done {
            break;
        }
        step += 1;
    }
    assert!(step > 5, "a rotation has several steps, got {step}");
    assert!(saw_prepared_at_crash > 0);
}

/// The next segment is prepared only once the current one is half full, so
/// a small log does not keep a second, empty segment on disk.
#[test]
fn the_next_segment_is_prepared_only_past_prepare_at() {
    let mut o = opts(4096, true);
    o.wal.prepare_at = 2048;
    let base = SimFs::new();
    let mut s = open_sim(&base, o);
    s.append(&ents(1, 2, 1)).unwrap();
    s.sync().unwrap();
    assert!(prepared_files(&base).is_empty(), "{:?}", base.files());
    let mut last = 2;
    while s.wal().segment_count() == 1 && prepared_files(&base).is_empty() {
        s.append(&ents(last + 1, last + 2, 1)).unwrap();
        s.sync().unwrap();
        last += 2;
    }
    assert_eq!(s.wal().segment_count(), 1, "prepared before the rotation");
    assert_eq!(prepared_files(&base).len(), 1);
}

/// A snapshot from a leader whose term differs from our entry at its index
/// discards the entries after it, and the compaction that follows deletes
/// the segment holding the entry that told replay so. Recovery must still
/// drop them, at every crash point. (Found by `synod sim --algo etcd` seed
/// 5436: a member came back with a term-1 entry after a term-2 snapshot
/// and refused to start.)
#[test]
fn a_mismatching_snapshot_discards_the_tail_after_its_segment_is_deleted() {
    let o = opts(1024, false);
    let base = SimFs::new();
    let mut s = open_sim(&base, o);
    // Append until an entry opens a new segment: that segment then holds
    // only entries after the snapshot index below.
    let mut last = 0;
    while s.wal().segment_count() < 3 {
        last += 1;
        s.append(&[ent(last, 1)]).unwrap();
        s.sync().unwrap();
    }
    let snap = SnapshotMeta {
        index: last - 1,
        term: 2,
    };
    drop(s);
    let mut saw = [false; 2];
    let mut step = 0;
    loop {
        let fs = base.fork();
        let mut s = open_sim(&fs, o);
        fs.crash_after(Some(step));
        let res = s.save_snapshot(&Snapshot {
            meta: snap,
            data: b"installed".to_vec(),
        });
        drop(s);
        for seed in 0..8 {
            let g = fs.fork();
            g.power_loss(seed * 7919 + step);
            let (s, _) = DiskStorage::open(g, dir(), ID, o)
                .unwrap_or_else(|e| panic!("step {step} seed {seed}: {e}"));
            if s.snapshot_meta() == snap {
                assert_eq!(s.last_index(), snap.index, "step {step} seed {seed}");
                saw[1] = true;
            } else {
                assert_eq!(s.snapshot_meta(), SnapshotMeta::default());
                assert_eq!(all(&s), ents(1, last, 1), "step {step} seed {seed}");
                saw[0] = true;
            }
        }
        if res.is_ok() {
            break;
        }
        step += 1;
    }
    assert_eq!(saw, [true, true]);
    // Without a crash, the log is the snapshot alone, and the leader's
    // entries that follow it survive a restart.
    let fs = base.fork();
    let mut s = open_sim(&fs, o);
    s.save_snapshot(&Snapshot {
        meta: snap,
        data: b"installed".to_vec(),
    })
    .unwrap();
    s.append(&ents(last, last + 1, 2)).unwrap();
    s.sync().unwrap();
    drop(s);
    let s = open_sim(&fs, o);
    assert_eq!(all(&s), ents(last, last + 1, 2));
}

/// A storage that dropped its payloads still writes them, and still knows
/// indexes and terms (for truncation and snapshots); it refuses to hand
/// entries back, and reopening the directory reads them all.
#[test]
fn dropped_payloads_are_written_and_read_back_on_reopen() {
    let fs = SimFs::new();
    let mut s = open_sim(&fs, opts(2048, false));
    s.append(&ents(1, 5, 1)).unwrap();
    s.drop_payloads();
    s.append(&ents(6, 10, 2)).unwrap();
    // A new leader's entries replace the tail, as with payloads kept.
    s.append(&ents(9, 12, 3)).unwrap();
    s.sync().unwrap();
    assert_eq!((s.first_index(), s.last_index()), (1, 12));
    assert_eq!(
        (s.term(5), s.term(8), s.term(9)),
        (Some(1), Some(2), Some(3))
    );
    assert!(s.entries(1, 3).is_err());
    drop(s);
    let s = open_sim(&fs, opts(2048, false));
    let want: Vec<Entry> = [ents(1, 5, 1), ents(6, 8, 2), ents(9, 12, 3)].concat();
    assert_eq!(all(&s), want);
}

/// A snapshot written as a prefix and a shared buffer is byte for byte the
/// file of the same data written whole, and loads as that data.
#[test]
fn a_snapshot_saved_in_parts_is_the_file_of_the_whole() {
    let fs = SimFs::new();
    let id = Identity {
        cluster_id: 7,
        node_id: 2,
    };
    let snaps = synod_storage::SnapStore::new(fs.clone(), &dir().join("snap"), id).unwrap();
    let whole = SnapshotMeta { index: 10, term: 2 };
    let parts = SnapshotMeta { index: 11, term: 2 };
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
    snaps
        .save(&Snapshot {
            meta: whole,
            data: data.clone(),
        })
        .unwrap();
    snaps
        .save_parts(parts, &[&data[..3], &[], &data[3..4000], &data[4000..]])
        .unwrap();
    let a = fs.read(&snaps.path(whole)).unwrap();
    let b = fs.read(&snaps.path(parts)).unwrap();
    assert_eq!(a.len(), b.len());
    // Only the header's index differs (bytes 32..40) and with it the header
    // checksum (60..64).
    let differ: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    assert!(differ
        .iter()
        .all(|&i| (32..40).contains(&i) || (60..64).contains(&i)));
    assert_eq!(snaps.load(parts).unwrap().data, data);
}

/// A snapshot streamed into its file as it is produced, in writes of any
/// size, is byte for byte the file `save` writes, once installed; one that
/// ends short of (or runs past) the length it announced is refused; and an
/// unfinished one is removed when the directory is next opened.
#[test]
fn a_streamed_snapshot_is_the_file_save_writes() {
    use std::io::Write;
    let fs = SimFs::new();
    let snaps = synod_storage::SnapStore::new(fs.clone(), &dir().join("snap"), ID).unwrap();
    let meta = SnapshotMeta { index: 10, term: 2 };
    // Longer than the writer's 1 MiB buffer, so that it writes in chunks.
    let data: Vec<u8> = (0..(3 << 20) + 77u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    snaps
        .save(&Snapshot {
            meta,
            data: data.clone(),
        })
        .unwrap();
    let saved = fs.read(&snaps.path(meta)).unwrap();
    snaps.remove(meta).unwrap();

    let mut w = snaps.stream(meta, data.len() as u64).unwrap();
    for piece in data.chunks(300_001) {
        w.write_all(piece).unwrap();
    }
    let part = w.finish().unwrap();
    assert!(
        snaps.list().unwrap().is_empty(),
        "not a snapshot until installed"
    );
    assert_eq!(snaps.install_part(meta, &part).unwrap(), snaps.path(meta));
    assert!(fs.read(&snaps.path(meta)).unwrap() == saved);
    assert_eq!(snaps.load(meta).unwrap().data, data);

    // Its length learnt at the end, its first bytes given last: the same file.
    snaps.remove(meta).unwrap();
    let mut w = snaps.stream_unsized(meta, 1000).unwrap();
    for piece in data[1000..].chunks(300_001) {
        w.write_all(piece).unwrap();
    }
    let part = w.finish_front(&data[..1000]).unwrap();
    assert_eq!(snaps.install_part(meta, &part).unwrap(), snaps.path(meta));
    assert!(fs.read(&snaps.path(meta)).unwrap() == saved);
    let mut w = snaps.stream_unsized(meta, 1000).unwrap();
    w.write_all(&data[1000..2000]).unwrap();
    let err = w.finish_front(&data[..999]).unwrap_err().to_string();
    assert!(
        err.contains("999 bytes to put in front of the snapshot data, room for 1000"),
        "{err}"
    );

    let other = SnapshotMeta { index: 11, term: 2 };
    let mut short = snaps.stream(other, 10).unwrap();
    short.write_all(&[1; 9]).unwrap();
    let err = short.finish().unwrap_err().to_string();
    assert!(
        err.contains("9 bytes of snapshot data, 10 announced"),
        "{err}"
    );
    let mut long = snaps.stream(other, 10).unwrap();
    long.write_all(&[1; 11]).unwrap();
    assert!(long.finish().is_err());
    // Left behind (as by a crash): the next open removes it, and keeps the
    // snapshot the log names.
    assert!(fs.exists(
        &dir()
            .join("snap")
            .join("000000000000000b-0000000000000002.snap.part")
    ));
    let (st, report) = DiskStorage::open(fs.clone(), dir(), ID, opts(1 << 20, false)).unwrap();
    drop(st);
    assert!(report
        .removed_files
        .iter()
        .any(|p| p.to_string_lossy().ends_with(".snap.part")));
    assert!(!fs.exists(
        &dir()
            .join("snap")
            .join("000000000000000b-0000000000000002.snap.part")
    ));
}
