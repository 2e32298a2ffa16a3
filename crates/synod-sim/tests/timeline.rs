//! Recording a run's timeline watches the run without changing it.

use synod_sim::timeline::Mark;
use synod_sim::{run_one, Algo, FaultSet, RunSpec};

#[test]
fn a_recorded_run_is_the_run_and_every_delivery_is_in_its_timeline() {
    for algo in [Algo::Paxos, Algo::Raft, Algo::Etcd] {
        for seed in 0..5 {
            let mut spec = RunSpec::new(algo, 3, FaultSet::all());
            let plain = run_one(&spec, seed);
            spec.timeline = true;
            let drawn = run_one(&spec, seed);
            assert_eq!(
                (plain.messages_sent, plain.deliveries, plain.end_time),
                (drawn.messages_sent, drawn.deliveries, drawn.end_time),
                "{algo} seed {seed}: recording changed the run"
            );
            assert_eq!(plain.violation_count, drawn.violation_count);
            let t = drawn.timeline.expect("recorded");
            let delivered = t
                .marks
                .iter()
                .filter(|m| {
                    matches!(
                        m,
                        Mark::Message {
                            arrived: Some(_),
                            ..
                        }
                    )
                })
                .count() as u64;
            assert_eq!(delivered, drawn.deliveries, "{algo} seed {seed}");
            assert!(
                t.marks.iter().any(|m| matches!(m, Mark::State { .. })),
                "{algo} seed {seed}: no node described itself"
            );
            assert_eq!(t.end, drawn.end_time);
        }
    }
}
