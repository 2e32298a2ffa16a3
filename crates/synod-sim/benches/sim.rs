//! Simulator speed: whole Paxos runs under all faults, and raw message deliveries
//! per second (a fault-free Paxos cluster kept busy by a chatty majority vote is
//! not representative, so deliveries are counted over the same Paxos runs).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use synod_sim::{run_batch, run_one, Algo, FaultSet, RunSpec};

fn paxos_runs(c: &mut Criterion) {
    let spec = RunSpec::new(Algo::Paxos, 5, FaultSet::all());
    let mut g = c.benchmark_group("sim");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("paxos_5_nodes_all_faults_1000_runs", |b| {
        b.iter(|| {
            let s = run_batch(&spec, 0, 1_000, |_| {});
            assert_eq!(s.total_violations(), 0);
            s.runs
        })
    });
    // Deliveries per second: count them once, then time the same runs.
    let deliveries: u64 = (0..200).map(|seed| run_one(&spec, seed).deliveries).sum();
    g.throughput(Throughput::Elements(deliveries));
    g.bench_function("paxos_deliveries_200_runs", |b| {
        b.iter(|| {
            (0..200)
                .map(|seed| run_one(&spec, seed).deliveries)
                .sum::<u64>()
        })
    });
    let majority = RunSpec::new(Algo::Majority, 7, FaultSet::all());
    let deliveries: u64 = (0..50)
        .map(|seed| run_one(&majority, seed).deliveries)
        .sum();
    g.throughput(Throughput::Elements(deliveries));
    g.bench_function("majority_7_deliveries_50_runs", |b| {
        b.iter(|| {
            (0..50)
                .map(|seed| run_one(&majority, seed).deliveries)
                .sum::<u64>()
        })
    });
    g.finish();
}

criterion_group!(benches, paxos_runs);
criterion_main!(benches);
