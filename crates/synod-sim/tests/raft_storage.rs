//! The Raft simulation on the real WAL (synod-storage on `SimFs`): the WAL
//! gives back exactly raft's durable image, torn writes are cut off at
//! recovery, corrupted disks are refused and their nodes stay down, and a
//! recovery that answers corruption by starting over empty is caught.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use synod_protocols::kv::{KvOp, KvRequest, KvStore};
use synod_protocols::raft::{
    ConfState, Disk, Entry, HardState, KvNode, RaftConfig, Snapshot, SnapshotMeta, Write,
};
use synod_protocols::{NodeId, MS};
use synod_sim::faults::{NodeFault, Schedule};
use synod_sim::models::raft::{clients_for, peers, RaftModel};
use synod_sim::models::wal_disk::WalDisk;
use synod_sim::{run_batch, Algo, FaultSet, RunReport, RunSpec, SimConfig, Simulation};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: KvNode::entry_data(&KvRequest {
            client: 1,
            seq: index,
            op: KvOp::Put {
                key: format!("k{}", index % 5),
                value: format!("v{index}.{term}-{}", "x".repeat((index % 7) as usize * 40)),
            },
        }),
    }
}

fn entries(lo: u64, hi: u64, term: u64) -> Write {
    Write::Entries((lo..hi).map(|i| entry(i, term)).collect())
}

fn snapshot(index: u64, term: u64) -> Write {
    let mut store = KvStore::default();
    store.data.insert("k".into(), format!("at {index}"));
    Write::Snapshot(Snapshot {
        meta: SnapshotMeta {
            index,
            term,
            conf: ConfState {
                voters: vec![0, 1, 2],
                learners: vec![],
            },
        },
        data: KvNode::snapshot_data(&store),
    })
}

fn hard(term: u64, vote: Option<NodeId>, commit: u64) -> Write {
    Write::HardState(HardState { term, vote, commit })
}

/// A story with every kind of write: votes for node 0 (stored as 1), a
/// conflicting append, a snapshot that matches the log and one that does
/// not, and enough records to rotate segments.
fn story() -> Vec<Write> {
    vec![
        hard(1, Some(0), 0),
        entries(1, 40, 1),
        hard(2, Some(2), 30),
        entries(35, 60, 2),
        snapshot(50, 2),
        entries(61, 120, 2),
        hard(3, None, 100),
        entries(100, 130, 3),
        snapshot(200, 4),
        entries(201, 210, 4),
        hard(4, Some(1), 205),
    ]
}

#[test]
fn the_wal_gives_back_raft_s_durable_image() {
    let mut disk = WalDisk::default();
    let mut image = Disk::default();
    disk.recover(3).unwrap();
    for w in story() {
        // A snapshot of entries the log holds is adopted only with the next
        // write (as the service adopts it once written on another thread):
        // a restart right after it recovers the log without it.
        let covered = matches!(&w, Write::Snapshot(s) if image.entries.iter()
            .any(|e| (e.index, e.term) == (s.meta.index, s.meta.term)));
        disk.apply(&w);
        if !covered {
            image.apply(&w);
        }
        let (back, report) = disk.recover(3).unwrap();
        assert_eq!(back, image, "after {w:?}");
        assert!(report.torn_tail.is_none());
    }
    assert!(disk.storage_error().is_none());
    // Without restarts in between, the snapshot of the log is adopted.
    let mut disk = WalDisk::default();
    let mut image = Disk::default();
    disk.recover(3).unwrap();
    for w in story() {
        disk.apply(&w);
        image.apply(&w);
    }
    let (back, _) = disk.recover(3).unwrap();
    assert_eq!(back, image);
    assert!(disk.storage_error().is_none());
    let (taken, installed) = disk.snapshots();
    assert_eq!(
        (taken, installed),
        (1, 1),
        "snapshot(50) adopted, snapshot(200) installed"
    );
    // The check against the simulator's image notices a disk that lost data
    // behind recovery's back (here: every file removed, without a crash).
    for p in disk.fs().files() {
        synod_storage::Fs::remove_file(disk.fs(), &p).unwrap();
    }
    let (back, _) = disk.recover(3).unwrap();
    assert_eq!(back, Disk::default());
    let err = disk.storage_error().expect("the lost log is noticed");
    assert!(err.contains("was made durable"), "{err}");
}

#[test]
fn a_torn_write_is_cut_back_to_a_prefix() {
    let base = story();
    let mut image = Disk::default();
    base.iter().for_each(|w| image.apply(w));
    let torn = entries(210, 240, 4);
    let (mut tails, mut whole) = (0, 0);
    for seed in 0..64 {
        let mut disk = WalDisk::default();
        disk.recover(0).unwrap();
        base.iter().for_each(|w| disk.apply(w));
        disk.tear(std::slice::from_ref(&torn), seed, 0);
        let (back, report) = disk.recover(0).expect("a torn write is not corruption");
        assert!(disk.storage_error().is_none(), "{:?}", disk.storage_error());
        tails += u64::from(report.torn_tail.is_some());
        // What survived is the synced image plus a prefix of the torn batch.
        assert_eq!(back.hard, image.hard);
        assert_eq!(back.snapshot, image.snapshot);
        let n = image.entries.len();
        assert_eq!(back.entries[..n], image.entries[..], "seed {seed}");
        let Write::Entries(es) = &torn else {
            unreachable!()
        };
        assert_eq!(
            back.entries[n..],
            es[..back.entries.len() - n],
            "seed {seed}"
        );
        whole += u64::from(back.entries.len() - n == es.len());
        // And the node can carry on writing after recovery.
        let next = back.entries.last().expect("entries from 201").index + 1;
        disk.apply(&entries(next, next + 3, 5));
        assert!(disk.storage_error().is_none());
        assert_eq!(
            disk.recover(0).unwrap().0.entries.last().unwrap().index,
            next + 2
        );
    }
    assert!(tails > 0, "no seed tore the write");
    assert!(whole > 0, "no seed kept the whole write");
    // A snapshot cut at any step of its save is never half-installed.
    for budget in 0..12 {
        let mut disk = WalDisk::default();
        disk.recover(0).unwrap();
        base.iter().for_each(|w| disk.apply(w));
        disk.tear(&[snapshot(209, 4)], budget, budget);
        let (back, _) = disk.recover(0).unwrap();
        assert!(disk.storage_error().is_none(), "{:?}", disk.storage_error());
        let at = back.snapshot.as_ref().map(|s| s.meta.index);
        assert!(
            at == Some(200) || at == Some(209),
            "budget {budget}: {at:?}"
        );
    }
}

#[test]
fn every_flipped_bit_that_matters_stops_the_node() {
    let (mut refused, mut harmless) = (0, 0);
    for seed in 0..200 {
        let mut disk = WalDisk::default();
        disk.recover(1).unwrap();
        let mut image = Disk::default();
        for w in story() {
            disk.apply(&w);
            image.apply(&w);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (path, offset) = disk.corrupt(&mut rng).expect("files to damage");
        match disk.recover(1) {
            Err(e) => {
                assert!(e.is_data_error(), "{e}");
                refused += 1;
            }
            // Only a bit no checksum covers (frame padding) may go unnoticed,
            // and then nothing read back may differ.
            Ok((back, _)) => {
                assert_eq!(
                    back,
                    image,
                    "seed {seed}: {} @ {offset} read back wrong",
                    path.display()
                );
                harmless += 1;
            }
        }
    }
    assert!(refused > 150, "{refused} refused, {harmless} unnoticed");
}

fn sums(s: &synod_sim::Summary) -> String {
    let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
    format!(
        "torn_writes {} torn_tails {} corruptions {} corruption_detected {}",
        c("torn_writes"),
        c("torn_tails"),
        c("corruptions"),
        c("corruption_detected")
    )
}

#[test]
fn torn_writes_and_corruption_under_the_simulator_keep_raft_safe_and_live() {
    let faults = FaultSet::parse("restart,power-loss,torn-write,corruption,loss,reorder").unwrap();
    let (mut tails, mut detected) = (0, 0);
    for (nodes, runs) in [(3, 600), (5, 400)] {
        let s = run_batch(&RunSpec::new(Algo::Raft, nodes, faults), 0, runs, |_| {});
        eprintln!("{nodes} nodes, {runs} runs: {}", sums(&s));
        assert_eq!(
            s.total_violations(),
            0,
            "{nodes} nodes: {:?} first: {:?}",
            s.failing_seeds,
            s.first_violation
        );
        assert_eq!(s.stuck, 0, "{nodes} nodes: stuck seeds {:?}", s.stuck_seeds);
        tails += s.counters["torn_tails"];
        detected += s.counters["corruption_detected"];
    }
    assert!(tails > 0, "no torn tail was ever repaired");
    assert!(detected > 0, "no corruption was ever detected");
}

/// Background faults from the seed (no permanent crashes), plus node 0's disk
/// corrupted and node 0 restarted again and again: at most one node (f for
/// three nodes) is ever damaged.
fn corrupt_node_zero(seed: u64, nodes: usize) -> Schedule {
    let faults = FaultSet::parse("restart,partition,loss,reorder").unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let cfg = SimConfig::new(nodes, faults);
    let mut s = Schedule::draw(&mut rng, nodes, cfg.f, faults, cfg.fault_phase);
    for _ in 0..6 {
        let at = rng.gen_range(0..cfg.fault_phase - 100 * MS);
        s.events.push((at, NodeFault::Corrupt { node: 0 }));
        s.events.push((
            at + rng.gen_range(MS..50 * MS),
            NodeFault::Crash {
                node: 0,
                power_loss: false,
                torn: false,
                restart_after: Some(rng.gen_range(MS..30 * MS)),
            },
        ));
    }
    s.events.sort_by_key(|(at, _)| *at);
    s
}

fn run_corrupting(seed: u64, wipe: bool) -> RunReport {
    let nodes = 3;
    let model = RaftModel::new(nodes, clients_for(nodes), move |id: NodeId, disk: &_, s| {
        KvNode::new(RaftConfig::new(id, peers(nodes)), disk, s)
    });
    let model = if wipe {
        model.with_wipe_on_corruption()
    } else {
        model
    };
    let cfg = SimConfig::new(nodes, FaultSet::all());
    Simulation::with_schedule(cfg, seed, model, corrupt_node_zero(seed, nodes)).run(seed)
}

#[test]
fn a_node_that_restarts_empty_after_corruption_is_caught() {
    // The correct recovery survives the schedule: node 0 stops for good.
    let mut detected = 0;
    for seed in 0..40 {
        let r = run_corrupting(seed, false);
        assert_eq!(
            r.violation_count,
            0,
            "seed {seed}: {:?}",
            r.violations.first()
        );
        assert!(r.terminated, "seed {seed}: stuck");
        detected += r.counters["corruption_detected"];
    }
    assert!(detected > 0);
    // Starting over from an empty disk forgets votes and acknowledged
    // entries (Raft's version of an acceptor forgetting its promise).
    let caught = (0..400).find_map(|seed| {
        let r = run_corrupting(seed, true);
        r.violations
            .first()
            .map(|v| (seed, v.property, v.detail.clone()))
    });
    let (seed, property, detail) = caught.expect("no seed in 400 caught the wiped node");
    eprintln!("wipe on corruption: seed {seed}: {property}: {detail}");
}

#[test]
fn corrupted_nodes_count_toward_f() {
    for seed in 0..300 {
        for n in [3, 5] {
            let f = (n - 1) / 2;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let s = Schedule::draw(&mut rng, n, f, FaultSet::all(), 2_000 * MS);
            let mut out = s.permanently_down.clone();
            for (_, e) in &s.events {
                if let NodeFault::Corrupt { node } = e {
                    assert!(!s.permanently_down.contains(node), "seed {seed}");
                    if !out.contains(node) {
                        out.push(*node);
                    }
                }
            }
            assert!(out.len() <= f, "seed {seed}, {n} nodes: {out:?}");
        }
    }
}

/// Every bit of every stored file, flipped one at a time: recovery either
/// refuses the disk or reads back exactly what was written (a bit in frame
/// padding, which no checksum covers, changes nothing). It never returns a
/// different state, e.g. by taking a damaged final record for a torn write.
#[test]
fn no_single_flipped_bit_changes_what_recovery_returns() {
    let mut base = WalDisk::default();
    base.recover(1).unwrap();
    let mut image = Disk::default();
    for w in story() {
        base.apply(&w);
        image.apply(&w);
    }
    let (mut refused, mut same) = (0, 0);
    for path in base.fs().files() {
        let len = synod_storage::Fs::read(base.fs(), &path).unwrap().len() as u64;
        for off in 0..len {
            for bit in 0..8 {
                let d = base.clone();
                d.fs().flip_bit(&path, off, bit);
                match d.recover(1) {
                    Err(e) => {
                        assert!(e.is_data_error(), "{e}");
                        refused += 1;
                    }
                    Ok((back, r)) => {
                        assert!(d.storage_error().is_none());
                        assert_eq!(back, image, "{} byte {off} bit {bit}: {r}", path.display());
                        same += 1;
                    }
                }
            }
        }
    }
    eprintln!("single-bit flips: {refused} refused, {same} harmless");
    assert!(refused > 10 * same);
}
