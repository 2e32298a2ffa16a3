//! Storage benchmark: the disk's raw fsync rate and WAL append throughput,
//! measured in the same run so the figures are comparable.
//!
//! ```text
//! cargo run --release -p synod-storage --example wal_bench [-- DIR]
//! ```
//!
//! DIR (default: a temporary directory under the current directory) must be
//! on the disk being measured; /tmp may be a RAM disk.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use synod_storage::{
    Committer, DiskStorage, Entry, Identity, RealFs, Storage, StorageOptions, WalOptions,
};

const RECORD: usize = 256;
const ID: Identity = Identity {
    cluster_id: 1,
    node_id: 1,
};

/// write + fdatasync of `size` bytes, `n` times, appending to a new file.
fn raw_fsync(dir: &Path, size: usize, n: usize, preallocated: bool) -> f64 {
    let p = dir.join(format!("raw-{size}-{preallocated}"));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&p)
        .unwrap();
    if preallocated {
        f.write_all(&vec![0; size * n]).unwrap();
        f.sync_all().unwrap();
    }
    let buf = vec![0xA5u8; size];
    let t = Instant::now();
    for i in 0..n {
        std::os::unix::fs::FileExt::write_all_at(&f, &buf, (i * size) as u64).unwrap();
        f.sync_data().unwrap();
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    std::fs::remove_file(p).unwrap();
    rate
}

struct Run {
    appends_per_s: f64,
    mb_per_s: f64,
    syncs_per_s: f64,
}

fn wal_run(dir: &Path, batch: usize, syncs: usize, preallocate: bool) -> Run {
    let d = dir.join(format!("wal-{batch}-{preallocate}"));
    let opts = StorageOptions {
        wal: WalOptions {
            preallocate,
            ..WalOptions::default()
        },
    };
    let (mut s, _) = DiskStorage::open(RealFs, &d, ID, opts).unwrap();
    let data = vec![0x5Au8; RECORD];
    let mut next = 1;
    let mut batch_buf: Vec<Entry> = Vec::with_capacity(batch);
    // Warm-up: one sync (creates the first preallocated chunk).
    s.append(&[Entry {
        index: next,
        term: 1,
        data: data.clone(),
    }])
    .unwrap();
    s.sync().unwrap();
    next += 1;
    let t = Instant::now();
    for _ in 0..syncs {
        batch_buf.clear();
        for _ in 0..batch {
            batch_buf.push(Entry {
                index: next,
                term: 1,
                data: data.clone(),
            });
            next += 1;
        }
        s.append(&batch_buf).unwrap();
        s.sync().unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    drop(s);
    std::fs::remove_dir_all(d).unwrap();
    let appends = (syncs * batch) as f64;
    Run {
        appends_per_s: appends / secs,
        mb_per_s: appends * RECORD as f64 / secs / 1e6,
        syncs_per_s: syncs as f64 / secs,
    }
}

/// `threads` writers each doing `per_thread` single-record durable appends
/// through the group-commit front.
fn committer_run(dir: &Path, threads: usize, per_thread: usize) -> f64 {
    let d = dir.join(format!("committer-{threads}"));
    let (s, _) = DiskStorage::open(RealFs, &d, ID, StorageOptions::default()).unwrap();
    let c = Committer::new(s);
    let t = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || {
                for _ in 0..per_thread {
                    let lsn = c
                        .with(|s| {
                            let i = s.last_index() + 1;
                            s.append(&[Entry {
                                index: i,
                                term: 1,
                                data: vec![0x11; RECORD],
                            }])
                        })
                        .unwrap();
                    c.wait_durable(lsn).unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let rate = (threads * per_thread) as f64 / t.elapsed().as_secs_f64();
    drop(c);
    std::fs::remove_dir_all(d).unwrap();
    rate
}

fn main() {
    let tmp;
    let dir = match std::env::args().nth(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir_in(".").unwrap();
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir).unwrap();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = std::io::stdout();
    writeln!(out, "load average at start: {}", loadavg().trim()).unwrap();
    let batch256_bytes = 256 * synod_storage::format::frame_len(16 + RECORD);
    let configs = [
        (true, 1, 2000),
        (true, 16, 1000),
        (true, 256, 200),
        (false, 1, 1000),
        (false, 16, 500),
        (false, 256, 100),
    ];
    // Rounds interleave every measurement so that load from other work on
    // the machine hits them alike; medians are reported.
    let mut raw = Vec::new();
    let mut raw_pre = Vec::new();
    let mut raw_big = Vec::new();
    let mut runs: Vec<Vec<Run>> = configs.iter().map(|_| Vec::new()).collect();
    let mut committer: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for round in 0..rounds {
        raw.push(raw_fsync(&dir, 4096, 1000, false));
        raw_pre.push(raw_fsync(&dir, 4096, 1000, true));
        raw_big.push(raw_fsync(&dir, batch256_bytes, 200, true));
        for (i, &(pre, batch, syncs)) in configs.iter().enumerate() {
            runs[i].push(wal_run(&dir, batch, syncs, pre));
        }
        for (i, threads) in [1, 16, 64].into_iter().enumerate() {
            committer[i].push(committer_run(&dir, threads, 2000 / threads));
        }
        eprintln!(
            "round {round}: raw 4 KiB {:.0}/s, WAL batch 1 {:.0}/s",
            raw[round], runs[0][round].syncs_per_s
        );
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let raw_m = med(raw.clone());
    writeln!(
        out,
        "raw write+fdatasync, 4 KiB appended to a new file, x1000: {raw_m:.0}/s (rounds: {})",
        raw.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
    .unwrap();
    writeln!(
        out,
        "raw write+fdatasync, 4 KiB over already-written blocks, x1000: {:.0}/s",
        med(raw_pre)
    )
    .unwrap();
    let big = med(raw_big);
    writeln!(
        out,
        "raw write+fdatasync, {} KiB over already-written blocks, x200: {big:.0}/s = {:.1} MB/s",
        batch256_bytes / 1024,
        big * batch256_bytes as f64 / 1e6
    )
    .unwrap();
    writeln!(out).unwrap();
    writeln!(
        out,
        "| preallocate | batch | appends/s | MB/s (payload) | syncs/s | syncs/s / raw 4 KiB rate |"
    )
    .unwrap();
    writeln!(out, "|---|---:|---:|---:|---:|---:|").unwrap();
    for (i, &(pre, batch, _)) in configs.iter().enumerate() {
        let a = med(runs[i].iter().map(|r| r.appends_per_s).collect());
        let m = med(runs[i].iter().map(|r| r.mb_per_s).collect());
        let s = med(runs[i].iter().map(|r| r.syncs_per_s).collect());
        writeln!(
            out,
            "| {} | {batch} | {a:.0} | {m:.2} | {s:.0} | {:.0}% |",
            if pre { "yes" } else { "no" },
            100.0 * s / raw_m
        )
        .unwrap();
    }
    writeln!(out).unwrap();
    for (i, threads) in [1, 16, 64].into_iter().enumerate() {
        writeln!(
            out,
            "Committer, {threads} threads each appending one 256-byte record and waiting for it: \
             {:.0} durable appends/s",
            med(committer[i].clone())
        )
        .unwrap();
    }
    writeln!(out, "load average at end: {}", loadavg().trim()).unwrap();
}
