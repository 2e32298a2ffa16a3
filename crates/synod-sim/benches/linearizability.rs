//! Checks a generated linearizable history of 10,000 operations over 100 keys.

use criterion::{criterion_group, criterion_main, Criterion};
use synod_sim::history::{synthetic_history, SynthConfig};
use synod_sim::linearizability::check;

fn bench(c: &mut Criterion) {
    // Ten clients against a linearizable map, overlapping intervals, 2% of the
    // operations indefinite (half of those took effect).
    let config = SynthConfig {
        ops: 10_000,
        keys: 100,
        clients: 10,
        indefinite_ratio: 0.02,
        max_latency_us: 1000,
        max_think_us: 200,
    };
    let history = synthetic_history(&config, 42);
    assert!(check(&history).is_linearizable());
    c.bench_function("check 10k ops / 100 keys / 10 clients", |b| {
        b.iter(|| check(&history))
    });

    // The same volume on few keys, so each key's search is long and contended.
    let contended = SynthConfig {
        keys: 5,
        clients: 20,
        ..config
    };
    let history = synthetic_history(&contended, 42);
    assert!(check(&history).is_linearizable());
    c.bench_function("check 10k ops / 5 keys / 20 clients", |b| {
        b.iter(|| check(&history))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
