//! Real-file-system crash test.
//!
//! The test binary re-invokes itself as a child process (selected by an
//! environment variable) that appends, syncs, records hard state and takes
//! snapshots in a loop on a real directory, announcing on stdout each record
//! *before* writing it and a `D` line *after* each successful sync. The
//! parent kills the child with SIGKILL after a random (seeded) delay, then
//! recovers the directory itself and checks that the recovered state is one
//! the child's log actually passed through, no older than the last state
//! reported durable: every durable record is there, intact and in order, and
//! nothing else (in particular nothing corrupt) is.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use synod_storage::{
    DiskStorage, Entry, HardState, Identity, RealFs, Snapshot, SnapshotMeta, Storage,
    StorageOptions, WalOptions,
};

const CHILD_DIR: &str = "SYNOD_CRASH_CHILD_DIR";
const CHILD_SEED: &str = "SYNOD_CRASH_CHILD_SEED";
const ID: Identity = Identity {
    cluster_id: 0x5EED,
    node_id: 3,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Entry payload as a function of (index, term), so corruption or a
/// misplaced entry is always visible.
fn payload(index: u64, term: u64) -> Vec<u8> {
    let len = ((index * 7 + term * 13) % 400 + 1) as usize;
    (0..len)
        .map(|k| (index as usize * 31 + term as usize * 17 + k) as u8)
        .collect()
}

fn snapshot_data(meta: SnapshotMeta) -> Vec<u8> {
    format!("snapshot {} {}", meta.index, meta.term).into_bytes()
}

fn options(seed: u64) -> StorageOptions {
    StorageOptions {
        wal: WalOptions {
            segment_size: 32 << 10,
            preallocate: seed & 1 == 0,
            prealloc_chunk: 16 << 10,
            prepare_at: 0,
            // Half the runs write each append through to the file at once.
            write_buffer: if seed % 4 < 2 { 0 } else { 1 << 20 },
        },
    }
}

/// The child: runs until killed (or for at most a few seconds).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return; // Not a child invocation: nothing to do.
    };
    let seed: u64 = std::env::var(CHILD_SEED).unwrap().parse().unwrap();
    let mut rng = Rng(seed);
    let out = std::io::stdout();
    let say = |line: String| {
        let mut o = out.lock();
        writeln!(o, "@@ {line}").unwrap();
        o.flush().unwrap();
    };
    let (mut s, _) = DiskStorage::open(RealFs, Path::new(&dir), ID, options(seed)).unwrap();
    say(format!("R {} {}", s.last_index(), s.snapshot_meta().index));
    let mut term = s
        .hard_state()
        .term
        .max(s.term(s.last_index()).unwrap_or(0))
        .max(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let last = s.last_index();
        let snap = s.snapshot_meta().index;
        match rng.below(20) {
            0..=13 => {
                let mut first = last + 1;
                if rng.below(6) == 0 && last > snap + 1 {
                    term += 1;
                    first = snap + 1 + rng.below(last - snap);
                }
                let n = 1 + rng.below(20);
                say(format!("A {first} {n} {term}"));
                let batch: Vec<Entry> = (first..first + n)
                    .map(|i| Entry {
                        index: i,
                        term,
                        data: payload(i, term),
                    })
                    .collect();
                s.append(&batch).unwrap();
                if rng.below(5) != 0 {
                    s.sync().unwrap();
                    say("D".into());
                }
            }
            14 | 15 => {
                let hs = HardState {
                    term,
                    vote: rng.below(4),
                    commit: s.durable().last_index,
                };
                say(format!("H {} {} {}", hs.term, hs.vote, hs.commit));
                s.set_hard_state(hs).unwrap();
            }
            16 if s.durable().last_index > snap => {
                let index = snap + 1 + rng.below(s.durable().last_index - snap);
                let meta = SnapshotMeta {
                    index,
                    term: s.term(index).unwrap(),
                };
                say(format!("S {} {}", meta.index, meta.term));
                s.save_snapshot(&Snapshot {
                    meta,
                    data: snapshot_data(meta),
                })
                .unwrap();
                say("D".into());
            }
            _ => {
                s.sync().unwrap();
                say("D".into());
            }
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    snap: SnapshotMeta,
    hs: HardState,
    /// (index, term) of live entries after the snapshot.
    log: Vec<(u64, u64)>,
}

impl Model {
    fn last(&self) -> (u64, u64) {
        self.log
            .last()
            .copied()
            .unwrap_or((self.snap.index, self.snap.term))
    }
}

/// Read the recovered state, checking every entry's payload.
fn observe(s: &DiskStorage<RealFs>) -> Model {
    let entries = s.entries(s.first_index(), s.last_index() + 1).unwrap();
    for e in &entries {
        assert_eq!(
            e.data,
            payload(e.index, e.term),
            "entry {} corrupt",
            e.index
        );
    }
    if let Some(snap) = s.snapshot().unwrap() {
        assert_eq!(snap.data, snapshot_data(snap.meta));
    }
    Model {
        snap: s.snapshot_meta(),
        hs: s.hard_state(),
        log: entries.iter().map(|e| (e.index, e.term)).collect(),
    }
}

/// The child's protocol text in a stdout line (the test harness may have
/// printed "test crash_child ... " in front of the first one).
fn ours(line: &str) -> Option<&str> {
    line.find("@@ ").map(|at| &line[at + 3..])
}

enum Op {
    Entry(u64, u64),
    Hard(HardState),
    Snap(SnapshotMeta),
    Durable,
}

fn parse(lines: &[String]) -> Vec<Op> {
    let mut ops = Vec::new();
    for l in lines {
        let Some(rest) = ours(l) else {
            continue;
        };
        let f: Vec<&str> = rest.split(' ').collect();
        let n = |i: usize| -> u64 { f[i].parse().unwrap() };
        match f[0] {
            "A" => (n(1)..n(1) + n(2)).for_each(|i| ops.push(Op::Entry(i, n(3)))),
            "H" => ops.push(Op::Hard(HardState {
                term: n(1),
                vote: n(2),
                commit: n(3),
            })),
            "S" => ops.push(Op::Snap(SnapshotMeta {
                index: n(1),
                term: n(2),
            })),
            "D" => ops.push(Op::Durable),
            "R" => {}
            other => panic!("unexpected child line {other:?}"),
        }
    }
    ops
}

fn apply(m: &mut Model, op: &Op) {
    match *op {
        Op::Entry(i, t) => {
            m.log.truncate((i - m.snap.index - 1) as usize);
            m.log.push((i, t));
        }
        Op::Hard(h) => m.hs = h,
        Op::Snap(s) => {
            let keep = m.log.iter().position(|&(i, _)| i == s.index);
            match keep {
                Some(k) if m.log[k].1 == s.term => {
                    m.log.drain(..=k);
                }
                _ => m.log.clear(),
            }
            m.snap = s;
        }
        Op::Durable => {}
    }
}

/// Leftover prepared next segments (`wal/prepared-*.tmp`).
fn prepared_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir.join("wal")) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("prepared-"))
        })
        .collect();
    v.sort();
    v
}

/// The last lines of `synod wal dump` output, for failure messages.
fn dump_tail(dir: &Path) -> String {
    let mut out = Vec::new();
    let res = synod_storage::dump(dir, &mut out);
    let text = String::from_utf8_lossy(&out);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(60)..].join("\n");
    format!(
        "dump of {} (last 60 lines):\n{tail}\ndump result: {res:?}",
        dir.display()
    )
}

#[test]
fn sigkill_at_random_points_loses_nothing_durable() {
    let iterations: u64 = std::env::var("SYNOD_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(0xC0FFEE);
    let mut base = Model::default();
    let (mut total_durable_ops, mut torn_tails, mut mid_write_kills) = (0usize, 0, 0);
    let mut kills_with_prepared = 0;
    let started = Instant::now();
    for it in 0..iterations {
        let seed = rng.next();
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, &dir)
            .env(CHILD_SEED, seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                if buf.ends_with(b"\n") {
                    let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
                buf.clear();
            }
        });
        let mut lines = Vec::new();
        if rng.below(5) == 0 {
            // Sometimes kill early, possibly while the child is recovering.
            std::thread::sleep(Duration::from_millis(rng.below(30)));
        } else {
            // Otherwise time the kill from the end of the child's recovery,
            // so that a slow start on a loaded machine does not eat the run.
            let until = Instant::now() + Duration::from_secs(20);
            while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                let ready = ours(&line).is_some_and(|l| l.starts_with("R "));
                lines.push(line);
                if ready {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(1 + rng.below(40)));
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());

        // The child's view after its own recovery must match ours.
        let recovered_line = lines
            .iter()
            .filter_map(|l| ours(l))
            .find(|l| l.starts_with("R "));
        if let Some(r) = recovered_line {
            let f: Vec<u64> = r[2..].split(' ').map(|x| x.parse().unwrap()).collect();
            assert_eq!(
                (f[0], f[1]),
                (base.last().0, base.snap.index),
                "iteration {it}"
            );
        }
        let ops = parse(&lines);
        // A next segment that was being prepared (or was ready) when the
        // child died must not count as a segment, for verify or recovery.
        let prepared = prepared_files(&dir);
        if !prepared.is_empty() {
            kills_with_prepared += 1;
            if let Err(e) = synod_storage::verify(&dir) {
                panic!(
                    "iteration {it}: verify failed with {prepared:?} present: {e}\n{}",
                    dump_tail(&dir)
                );
            }
        }
        let (s, report) = DiskStorage::open(RealFs, &dir, ID, options(seed)).unwrap_or_else(|e| {
            panic!("iteration {it}: recovery failed: {e}\n{}", dump_tail(&dir))
        });
        for p in &prepared {
            assert!(
                report.removed_files.contains(p),
                "iteration {it}: recovery kept {}",
                p.display()
            );
        }
        torn_tails += report.torn_tail.is_some() as usize;
        let got = observe(&s);
        drop(s);

        let durable_at = ops.iter().rposition(|o| matches!(o, Op::Durable));
        total_durable_ops += ops.iter().filter(|o| matches!(o, Op::Durable)).count();
        let mut m = base.clone();
        let mut matched = durable_at.is_none() && m == got;
        for (k, op) in ops.iter().enumerate() {
            apply(&mut m, op);
            if durable_at.is_none_or(|d| k >= d) && !matched && m.last() == got.last() && m == got {
                matched = true;
                mid_write_kills += (Some(k) != durable_at) as usize;
            }
        }
        assert!(
            matched,
            "iteration {it} (seed {seed}): recovered state (last {:?}, snapshot {:?}, hard state \
             {:?}) is not a state the log passed through at or after its last durable point\n{}",
            got.last(),
            got.snap,
            got.hs,
            dump_tail(&dir)
        );
        base = got;
    }
    eprintln!(
        "{iterations} SIGKILLs in {:.1}s: {total_durable_ops} syncs reported durable, \
         {mid_write_kills} recoveries kept unsynced records, {torn_tails} torn tails cut, \
         {kills_with_prepared} kills left a prepared segment",
        started.elapsed().as_secs_f64()
    );
    if iterations >= 50 {
        assert!(
            kills_with_prepared > 0,
            "half the runs preallocate, so some kills must leave a prepared segment"
        );
    }
    assert!(
        total_durable_ops > iterations as usize,
        "the children must make progress"
    );
}
