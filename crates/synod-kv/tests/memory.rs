//! What the store costs in memory per key and per revision, counted by the
//! allocator rather than read from a process's RSS (issue 11: RSS after
//! 1,000,000 puts). Figures, not a timed test: `cargo test --release -p
//! synod-kv --test memory -- --ignored --nocapture`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use synod_kv::{Command, PutRequest, Store};

/// The system allocator, counting what is live.
struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size() as isize, Relaxed);
        BLOCKS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        BYTES.fetch_sub(l.size() as isize, Relaxed);
        BLOCKS.fetch_sub(1, Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        BYTES.fetch_add(new as isize - l.size() as isize, Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> (isize, isize) {
    (BYTES.load(Relaxed), BLOCKS.load(Relaxed))
}

/// The keys `synod bench --op put --clients 64 --keys 1000000` writes:
/// client `c` its `i`th put under key `c * 7919 + i`.
fn bench_key(c: usize, i: usize) -> Vec<u8> {
    format!("bench/{:08}", (c * 7919 + i) % 1_000_000).into_bytes()
}

#[test]
#[ignore]
fn a_million_puts() {
    let puts: usize = std::env::var("PUTS").map_or(1_000_000, |s| s.parse().unwrap());
    let clients = 64;
    let (b0, n0) = live();
    let mut store = Store::new();
    // As in a member: now and then a snapshot holds a copy of the store
    // (structure shared) while later puts go on, for a while.
    let mut copy: Option<Store> = None;
    for i in 0..puts / clients {
        if i % 2000 == 0 {
            copy = Some(store.clone());
        } else if i % 2000 == 600 {
            copy = None;
        }
        for c in 0..clients {
            let cmd = Command::Put(PutRequest {
                key: bench_key(c, i),
                value: vec![b'v'; 256],
                ..PutRequest::default()
            });
            store.apply(&cmd).expect("put applies");
        }
    }
    drop(copy);
    let (b1, n1) = live();
    let keys = store.live_keys();
    let (bytes, blocks) = ((b1 - b0) as f64, (n1 - n0) as f64);
    eprintln!(
        "{puts} puts, {keys} keys: {:.1} MB in {blocks} blocks; {:.0} B per put, {:.0} B per key beyond 256 B per put",
        bytes / 1e6,
        bytes / puts as f64,
        (bytes - 256.0 * puts as f64) / keys as f64,
    );
    // The same store as a restarted member gets it: decoded from its
    // snapshot.
    let data = synod_protocols::raft::Payload::encode(&store);
    let (b2, n2) = live();
    let decoded: Store = data.decode("snapshot");
    let (b3, n3) = live();
    eprintln!(
        "decoded from its snapshot ({:.1} MB): {:.1} MB in {} blocks",
        data.0.len() as f64 / 1e6,
        (b3 - b2) as f64 / 1e6,
        n3 - n2
    );
    assert_eq!(decoded, store);
}
