//! Storage benchmark: the disk's raw fsync rate and WAL append throughput,
//! measured in the same run so the figures are comparable.
//!
//! ```text
//! cargo run --release -p synod-storage --example wal_bench [-- DIR]
//! cargo run --release -p synod-storage --example wal_bench -- DIR --latency \
//!     [--segment-mib 16] [--chunk-mib 4] [--batch 16] [--segments 8]
//! ```
//!
//! `--latency` measures only the append+sync latency distribution over a
//! run that crosses several segment boundaries (scaled-down segments, so
//! that a run takes seconds, with the default 4:1 segment-to-chunk ratio):
//! that is where segment preparation and zero-filling show up, as rare
//! spikes that rates and medians hide.
//!
//! DIR (default: a temporary directory under the current directory) must be
//! on the disk being measured; /tmp may be a RAM disk.
//!
//! The machine is shared, so background load moves fsync rates by a factor
//! of several within seconds. Every comparison is therefore *paired*: the
//! contenders run alternately in short chunks (e.g. 100 raw fsyncs, 100 WAL
//! syncs without, 100 with preallocation, repeated 20 times) and each
//! contender's rate is its total operations over its total time.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use synod_storage::{
    format, Committer, DiskStorage, Entry, Identity, RealFs, Storage, StorageOptions, WalOptions,
};

const RECORD: usize = 256;
const ID: Identity = Identity {
    cluster_id: 1,
    node_id: 1,
};

/// A thing that does one "operation" (a write plus a sync) per call.
trait Contender {
    fn op(&mut self);
}

/// write + fdatasync of `size` bytes at the end of a new file, or over
/// blocks already written (`overwrite`).
struct Raw {
    file: File,
    buf: Vec<u8>,
    off: u64,
    overwrite: bool,
}

impl Raw {
    fn new(dir: &Path, name: &str, size: usize, overwrite: bool) -> Raw {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(dir.join(name))
            .unwrap();
        if overwrite {
            file.write_all(&vec![0; 64 << 20]).unwrap();
            file.sync_all().unwrap();
        }
        Raw {
            file,
            buf: vec![0xA5; size],
            off: 0,
            overwrite,
        }
    }
}

impl Contender for Raw {
    fn op(&mut self) {
        if self.overwrite && self.off + self.buf.len() as u64 > 64 << 20 {
            self.off = 0;
        }
        self.file.write_all_at(&self.buf, self.off).unwrap();
        self.file.sync_data().unwrap();
        self.off += self.buf.len() as u64;
    }
}

/// Append `batch` 256-byte entries, then sync.
struct Wal {
    s: DiskStorage<RealFs>,
    batch: usize,
    lat_ms: Vec<f64>,
}

impl Wal {
    fn new(dir: &Path, name: &str, batch: usize, preallocate: bool) -> Wal {
        let opts = StorageOptions {
            wal: WalOptions {
                preallocate,
                ..WalOptions::default()
            },
        };
        let (mut s, _) = DiskStorage::open(RealFs, &dir.join(name), ID, opts).unwrap();
        // Warm-up: the first sync creates the first preallocated chunk.
        s.append(&[Entry {
            index: 1,
            term: 1,
            data: vec![0; RECORD],
        }])
        .unwrap();
        s.sync().unwrap();
        Wal {
            s,
            batch,
            lat_ms: Vec::new(),
        }
    }
}

impl Contender for Wal {
    fn op(&mut self) {
        let t = Instant::now();
        let first = self.s.last_index() + 1;
        let entries: Vec<Entry> = (first..first + self.batch as u64)
            .map(|index| Entry {
                index,
                term: 1,
                data: vec![0x5A; RECORD],
            })
            .collect();
        self.s.append(&entries).unwrap();
        self.s.sync().unwrap();
        self.lat_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
}

/// Run the contenders alternately, `chunks` times `per_chunk` operations
/// each; returns each one's operations per second.
fn paired(cs: &mut [&mut dyn Contender], chunks: usize, per_chunk: usize) -> Vec<f64> {
    let mut secs = vec![0.0; cs.len()];
    for _ in 0..chunks {
        for (i, c) in cs.iter_mut().enumerate() {
            let t = Instant::now();
            for _ in 0..per_chunk {
                c.op();
            }
            secs[i] += t.elapsed().as_secs_f64();
        }
    }
    let n = (chunks * per_chunk) as f64;
    secs.iter().map(|s| n / s).collect()
}

fn pct(lat: &mut [f64], q: f64) -> f64 {
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    lat[((lat.len() - 1) as f64 * q) as usize]
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
    (threads * per_thread) as f64 / t.elapsed().as_secs_f64()
}

/// Options of the `--latency` run.
struct LatencyArgs {
    segment_mib: u64,
    chunk_mib: u64,
    batch: usize,
    segments: usize,
}

impl LatencyArgs {
    fn parse(args: &[String]) -> LatencyArgs {
        let mut a = LatencyArgs {
            segment_mib: 16,
            chunk_mib: 4,
            batch: 16,
            segments: 8,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || -> u64 {
                it.next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{flag} needs a number"))
            };
            match flag.as_str() {
                "--segment-mib" => a.segment_mib = value(),
                "--chunk-mib" => a.chunk_mib = value(),
                "--batch" => a.batch = value() as usize,
                "--segments" => a.segments = value() as usize,
                _ => {}
            }
        }
        a
    }
}

/// Append+sync `batch` records at a time, with preallocation, from the first
/// rotation until `segments` more rotations have happened; print the
/// latency distribution. The first segment is skipped because a fresh log
/// starts without a prepared segment.
fn latency_run(dir: &Path, a: &LatencyArgs, out: &mut impl Write) {
    let opts = StorageOptions {
        wal: WalOptions {
            segment_size: a.segment_mib << 20,
            prealloc_chunk: a.chunk_mib << 20,
            prepare_at: 0,
            preallocate: true,
            ..WalOptions::default()
        },
    };
    let d = dir.join("latency");
    let (mut s, _) = DiskStorage::open(RealFs, &d, ID, opts).unwrap();
    let op = |s: &mut DiskStorage<RealFs>| {
        let first = s.last_index() + 1;
        let entries: Vec<Entry> = (first..first + a.batch as u64)
            .map(|index| Entry {
                index,
                term: 1,
                data: vec![0x5A; RECORD],
            })
            .collect();
        let t = Instant::now();
        s.append(&entries).unwrap();
        s.sync().unwrap();
        t.elapsed().as_secs_f64() * 1e3
    };
    // With preallocation the current segment's file grows only when the WAL
    // zero-fills inline, so its length (read outside the timed region) tells
    // which syncs paid for a fill.
    let wal_dir = d.join("wal");
    let newest_segment = || {
        let mut names: Vec<_> = std::fs::read_dir(&wal_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .collect();
        names.sort();
        names.pop().unwrap()
    };
    while s.wal().segment_count() < 2 {
        op(&mut s);
    }
    let (mut lat, mut rotation_lat, mut fill_lat, mut other_lat) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut current = newest_segment();
    let len_of = |p: &Path| std::fs::metadata(p).unwrap().len();
    let mut len = len_of(&current);
    let start = Instant::now();
    let target = 2 + a.segments;
    while s.wal().segment_count() < target {
        let before = s.wal().segment_count();
        let ms = op(&mut s);
        if s.wal().segment_count() != before {
            rotation_lat.push(ms);
            current = newest_segment();
            len = len_of(&current);
        } else {
            let now = len_of(&current);
            if now > len {
                fill_lat.push(ms);
            } else {
                other_lat.push(ms);
            }
            len = now;
        }
        lat.push(ms);
    }
    let secs = start.elapsed().as_secs_f64();
    let n = lat.len();
    let over = |ms: f64| lat.iter().filter(|&&l| l > ms).count();
    let (over5, over20) = (over(5.0), over(20.0));
    writeln!(
        out,
        "latency: {} MiB segments, {} MiB zero-fill chunk, batch {} x {RECORD} B, {n} syncs \
         over {} rotations in {secs:.1} s ({:.0} syncs/s)",
        a.segment_mib,
        a.chunk_mib,
        a.batch,
        rotation_lat.len(),
        n as f64 / secs
    )
    .unwrap();
    writeln!(
        out,
        "append+sync ms: p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.1}; syncs > 5 ms: {over5}, > 20 ms: \
         {over20}; rotating syncs max {:.1} ms",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 0.999),
        pct(&mut lat, 1.0),
        pct(&mut rotation_lat, 1.0),
    )
    .unwrap();
    let fills = if fill_lat.is_empty() {
        "none".to_string()
    } else {
        format!(
            "{}, median {:.1} ms, max {:.1} ms",
            fill_lat.len(),
            pct(&mut fill_lat, 0.5),
            pct(&mut fill_lat, 1.0)
        )
    };
    writeln!(
        out,
        "syncs that zero-filled inline: {fills}; syncs neither rotating nor filling: p99 {:.3} \
         max {:.1} ms",
        pct(&mut other_lat, 0.99),
        pct(&mut other_lat, 1.0),
    )
    .unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tmp;
    let dir = match args.first().filter(|a| !a.starts_with("--")) {
        Some(d) => {
            let d = std::path::PathBuf::from(d).join("wal_bench");
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            d
        }
        None => {
            tmp = tempfile::tempdir_in(".").unwrap();
            tmp.path().to_path_buf()
        }
    };
    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = std::io::stdout();
    writeln!(out, "load average at start: {}", loadavg().trim()).unwrap();
    if args.iter().any(|a| a == "--latency") {
        latency_run(&dir, &LatencyArgs::parse(&args), &mut out);
        writeln!(out, "load average at end: {}", loadavg().trim()).unwrap();
        return;
    }

    // Batch 1: the raw 4 KiB fsync rate against WAL single-record syncs.
    let mut raw4 = Raw::new(&dir, "raw4k", 4096, false);
    let mut raw4_over = Raw::new(&dir, "raw4k-over", 4096, true);
    let mut pre = Wal::new(&dir, "b1-pre", 1, true);
    let mut nopre = Wal::new(&dir, "b1-nopre", 1, false);
    let r = paired(
        &mut [&mut raw4, &mut raw4_over, &mut pre, &mut nopre],
        20,
        50,
    );
    writeln!(
        out,
        "raw write+fdatasync of 4 KiB appended to a file: {:.0}/s",
        r[0]
    )
    .unwrap();
    writeln!(
        out,
        "raw write+fdatasync of 4 KiB over already-written blocks: {:.0}/s",
        r[1]
    )
    .unwrap();
    writeln!(out).unwrap();
    writeln!(
        out,
        "| batch | preallocate | appends/s | MB/s (payload) | syncs/s | vs raw 4 KiB fsync | raw fsync of same bytes | p50 ms | p99 ms | max ms |"
    )
    .unwrap();
    writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    let row = |batch: usize, w: &mut Wal, rate: f64, raw4k: f64, raw_same: f64, pre: bool| {
        format!(
            "| {batch} | {} | {:.0} | {:.2} | {rate:.0} | {:.0}% | {raw_same:.0}/s | {:.2} | {:.2} | {:.1} |",
            if pre { "yes" } else { "no" },
            rate * batch as f64,
            rate * (batch * RECORD) as f64 / 1e6,
            100.0 * rate / raw4k,
            pct(&mut w.lat_ms, 0.5),
            pct(&mut w.lat_ms, 0.99),
            pct(&mut w.lat_ms, 1.0),
        )
    };
    writeln!(out, "{}", row(1, &mut pre, r[2], r[0], r[0], true)).unwrap();
    writeln!(out, "{}", row(1, &mut nopre, r[3], r[0], r[0], false)).unwrap();
    drop((raw4_over, pre, nopre));

    // Batches 16 and 256: also against a raw fsync of the same byte count.
    for (batch, chunks, per_chunk) in [(16, 20, 25), (256, 20, 5)] {
        let bytes = batch * format::frame_len(16 + RECORD);
        let mut raw_same = Raw::new(&dir, &format!("raw-{bytes}"), bytes, false);
        let mut pre = Wal::new(&dir, &format!("b{batch}-pre"), batch, true);
        let mut nopre = Wal::new(&dir, &format!("b{batch}-nopre"), batch, false);
        let r = paired(
            &mut [&mut raw4, &mut raw_same, &mut pre, &mut nopre],
            chunks,
            per_chunk,
        );
        writeln!(out, "{}", row(batch, &mut pre, r[2], r[0], r[1], true)).unwrap();
        writeln!(out, "{}", row(batch, &mut nopre, r[3], r[0], r[1], false)).unwrap();
        let mb = r[1] * bytes as f64 / 1e6;
        writeln!(
            out,
            "|  | (raw fsync of {bytes} bytes = {mb:.1} MB/s on disk; the WAL writes {bytes} bytes of frames per sync) | | | | | | | | |"
        )
        .unwrap();
    }
    writeln!(out).unwrap();
    for threads in [1, 16, 64] {
        let rate = committer_run(&dir, threads, 2000 / threads);
        writeln!(
            out,
            "Committer, {threads} threads each appending one 256-byte record and waiting for it: \
             {rate:.0} durable appends/s"
        )
        .unwrap();
    }
    // Recovery: time to open a log of 64 MiB of 256-byte entries.
    let d = dir.join("recovery");
    let (mut s, _) = DiskStorage::open(RealFs, &d, ID, StorageOptions::default()).unwrap();
    let frames = (64 << 20) / format::frame_len(16 + RECORD);
    let mut next = 1u64;
    while (next as usize) <= frames {
        let batch: Vec<Entry> = (next..next + 1024)
            .map(|index| Entry {
                index,
                term: 1,
                data: vec![0x77; RECORD],
            })
            .collect();
        s.append(&batch).unwrap();
        s.sync().unwrap();
        next += 1024;
    }
    drop(s);
    let t = Instant::now();
    let (s, report) = DiskStorage::open(RealFs, &d, ID, StorageOptions::default()).unwrap();
    writeln!(
        out,
        "Recovery of {} entries ({} segments, {} records): {:.0} ms (page cache warm)",
        s.last_index(),
        report.segments,
        report.records,
        t.elapsed().as_secs_f64() * 1e3
    )
    .unwrap();
    writeln!(out, "load average at end: {}", loadavg().trim()).unwrap();
}
