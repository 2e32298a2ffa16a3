//! What every member pays per put on its thread, outside Raft: decoding the
//! command from its log entry, and applying it to the store (issue 11's
//! profile put both among the top costs of the member thread).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use synod_kv::{Command, PutRequest, Store};
use synod_protocols::raft::Payload;

fn put(i: u64) -> Command {
    Command::Put(PutRequest {
        key: format!("key-{:08}", i % 20_000).into_bytes(),
        value: vec![b'v'; 256],
        ..PutRequest::default()
    })
}

fn decode(c: &mut Criterion) {
    let payload = Payload::encode(&put(1));
    let mut g = c.benchmark_group("command");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_put_256b", |b| {
        b.iter(|| payload.try_decode::<Command>().expect("valid"))
    });
    g.bench_function("encode_put_256b", |b| {
        let cmd = put(1);
        b.iter(|| Payload::encode(&cmd))
    });
    g.finish();
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    // 20,000 keys, as `synod bench` writes them. Each sample starts from a
    // store built afresh (untimed), so the history grows only by the
    // sample's own puts, and no node is shared with a copy.
    let fresh = || {
        let mut s = Store::new();
        for i in 0..20_000 {
            s.apply(&put(i)).expect("put applies");
        }
        s
    };
    let cmds: Vec<Command> = (0..1024).map(|i| put(i * 19)).collect();
    g.bench_function("apply_put_256b_20k_keys", |b| {
        b.iter_custom(|iters| {
            let mut store = fresh();
            let started = std::time::Instant::now();
            for i in 0..iters as usize {
                store.apply(&cmds[i % cmds.len()]).expect("put applies");
            }
            started.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, decode, apply);
criterion_main!(benches);
