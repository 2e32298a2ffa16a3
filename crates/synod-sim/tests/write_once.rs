//! The seeds' failure stories, replayed in the simulator, and the proof that the
//! checkers catch a broken Paxos.

use synod_protocols::coordinator::CoordinatorNode;
use synod_protocols::majority::MajorityNode;
use synod_protocols::paxos::{Bugs, PaxosNode};
use synod_protocols::MS;
use synod_sim::faults::{NodeFault, Schedule};
use synod_sim::models::write_once::WriteOnceModel;
use synod_sim::{run_batch, Algo, FaultSet, RunReport, RunSpec, SimConfig, Simulation};

/// Seven nodes; proposers 0 and 1 each reach two other nodes, node 6 hears
/// nobody and then crashes for good: votes split 3–3 with the tie-breaker gone.
fn split_three_three() -> Schedule {
    Schedule {
        events: vec![
            (
                0,
                NodeFault::Partition {
                    groups: vec![vec![0, 2, 3], vec![1, 4, 5], vec![6]],
                    heal_after: 1_000 * MS,
                },
            ),
            (
                500 * MS,
                NodeFault::Crash {
                    node: 6,
                    power_loss: false,
                    torn: false,
                    restart_after: None,
                },
            ),
        ],
        ..Schedule::default()
    }
}

fn run_majority(schedule: Schedule, seed: u64) -> RunReport {
    let model = WriteOnceModel::new(7, 2, |id, disk: &_, _| MajorityNode::new(id, 7, disk));
    Simulation::with_schedule(SimConfig::new(7, FaultSet::NONE), seed, model, schedule).run(seed)
}

fn run_paxos(schedule: Schedule, seed: u64) -> RunReport {
    let model = WriteOnceModel::new(7, 2, |id, disk: &_, s| PaxosNode::new(id, 7, disk, s));
    Simulation::with_schedule(SimConfig::new(7, FaultSet::NONE), seed, model, schedule).run(seed)
}

#[test]
fn majority_vote_split_three_three_then_a_crash_never_decides() {
    for seed in 0..20 {
        let r = run_majority(split_three_three(), seed);
        assert_eq!(
            r.violation_count, 0,
            "seed {seed}: majority voting must stay safe: {:?}",
            r.violations
        );
        assert!(
            !r.terminated,
            "seed {seed}: a 3-3 split without its tie-breaker must never decide"
        );
        assert_eq!(r.decision_time, None, "seed {seed}: nobody may decide");
    }
}

#[test]
fn majority_vote_decides_without_the_split() {
    let r = run_majority(Schedule::default(), 1);
    assert!(r.terminated && r.violation_count == 0);
}

#[test]
fn paxos_decides_in_the_same_split_story() {
    for seed in 0..20 {
        let r = run_paxos(split_three_three(), seed);
        assert_eq!(r.violation_count, 0, "seed {seed}: {:?}", r.violations);
        assert!(
            r.terminated,
            "seed {seed}: Paxos must decide once the partition heals"
        );
    }
}

#[test]
fn coordinator_is_safe_but_stuck_while_the_coordinator_is_down() {
    let schedule = Schedule {
        events: vec![(
            0,
            NodeFault::Crash {
                node: 4,
                power_loss: false,
                torn: false,
                restart_after: None,
            },
        )],
        ..Schedule::default()
    };
    for seed in 0..20 {
        let model = WriteOnceModel::new(5, 3, |id, disk: &_, _| CoordinatorNode::new(id, 5, disk));
        let r = Simulation::with_schedule(
            SimConfig::new(5, FaultSet::NONE),
            seed,
            model,
            schedule.clone(),
        )
        .run(seed);
        assert_eq!(r.violation_count, 0);
        assert!(
            !r.terminated,
            "seed {seed}: nobody can decide without the coordinator"
        );
    }
    // The same algorithm under random crashes never breaks a property, and gets
    // stuck exactly when the coordinator is among the nodes that stay down.
    let s = run_batch(
        &RunSpec::new(Algo::Coordinator, 5, FaultSet::parse("crash").unwrap()),
        0,
        2_000,
        |_| {},
    );
    assert_eq!(s.total_violations(), 0);
    assert!(
        s.stuck > 0,
        "2,000 crash schedules include some where the coordinator stays down"
    );
}

/// Failover by timeout is the unsafe design the seeds warn about: a
/// partition gives it two coordinators at once, and a crash hands the
/// decision to a successor that never heard the first coordinator's. The
/// agreement checker sees two values decided either way.
#[test]
fn failover_by_timeout_decides_twice_and_is_caught() {
    for faults in ["partition", "crash"] {
        let s = run_batch(
            &RunSpec::new(Algo::Failover, 5, FaultSet::parse(faults).unwrap()),
            0,
            300,
            |_| {},
        );
        assert!(s.total_violations() > 0, "{faults}: nothing caught");
    }
}

#[test]
fn majority_vote_gets_stuck_but_stays_safe_under_all_faults() {
    let s = run_batch(
        &RunSpec::new(Algo::Majority, 7, FaultSet::all()),
        0,
        500,
        |_| {},
    );
    assert_eq!(s.total_violations(), 0);
    assert!(s.stuck > 0);
}

#[test]
fn paxos_is_safe_and_terminates_under_all_faults() {
    for nodes in [3, 5, 7] {
        let s = run_batch(
            &RunSpec::new(Algo::Paxos, nodes, FaultSet::all()),
            0,
            2_000,
            |_| {},
        );
        assert_eq!(
            s.total_violations(),
            0,
            "{nodes} nodes: {:?}",
            s.first_violation
        );
        assert_eq!(s.stuck, 0, "{nodes} nodes: stuck seeds {:?}", s.stuck_seeds);
    }
}

/// Runs a broken Paxos over seeds 0.. and returns the first seed that the checkers
/// flag, if any within `limit`.
fn first_caught(bugs: Bugs, limit: u64) -> Option<(u64, RunReport)> {
    (0..limit).find_map(|seed| {
        let model = WriteOnceModel::new(5, 3, move |id, disk: &_, s| {
            PaxosNode::new(id, 5, disk, s).with_bugs(bugs)
        });
        let r = Simulation::new(SimConfig::new(5, FaultSet::all()), seed, model).run(seed);
        (r.violation_count > 0).then_some((seed, r))
    })
}

#[test]
fn checkers_catch_an_acceptor_that_forgets_its_promises() {
    let (seed, r) = first_caught(
        Bugs {
            forget_promises: true,
            ..Bugs::default()
        },
        5_000,
    )
    .expect("a Paxos whose acceptors forget promises across restarts must be caught");
    assert!(
        r.violations
            .iter()
            .any(|v| v.property == "agreement" || v.property == "decoherence"),
        "seed {seed}: {:?}",
        r.violations
    );
}

#[test]
fn checkers_catch_a_proposer_that_ignores_accepted_values() {
    let (seed, r) = first_caught(
        Bugs {
            ignore_accepted: true,
            ..Bugs::default()
        },
        5_000,
    )
    .expect("a proposer that ignores reported acceptances must be caught");
    assert!(
        r.violations.iter().any(|v| v.property == "agreement"),
        "seed {seed}: {:?}",
        r.violations
    );
}

#[test]
fn checkers_catch_minority_quorums() {
    let (seed, r) = first_caught(
        Bugs {
            minority_quorum: true,
            ..Bugs::default()
        },
        5_000,
    )
    .expect("quorums that do not intersect must be caught");
    assert!(
        r.violations.iter().any(|v| v.property == "agreement"),
        "seed {seed}: {:?}",
        r.violations
    );
}

#[test]
fn checkers_catch_every_proposer_skipping_phase_one() {
    let (seed, r) = first_caught(
        Bugs {
            everyone_fast: true,
            ..Bugs::default()
        },
        5_000,
    )
    .expect("two nodes that both skip phase 1 at round 0 must be caught");
    assert!(
        r.violations.iter().any(|v| v.property == "agreement"),
        "seed {seed}: {:?}",
        r.violations
    );
}

#[test]
fn one_owner_of_the_fast_ballot_keeps_paxos_safe_and_live() {
    // Node 0 proposes in every run and owns ballot (0, 0); proposers 1 and 2
    // compete with ordinary ballots under every fault.
    for seed in 0..2_000 {
        let model = WriteOnceModel::new(5, 3, |id, disk: &_, s| {
            let node = PaxosNode::new(id, 5, disk, s);
            if id == 0 {
                node.with_fast_ballot()
            } else {
                node
            }
        });
        let r = Simulation::new(SimConfig::new(5, FaultSet::all()), seed, model).run(seed);
        assert_eq!(r.violation_count, 0, "seed {seed}: {:?}", r.violations);
        assert!(r.terminated, "seed {seed}");
    }
}

#[test]
fn the_same_seed_replays_byte_for_byte() {
    let mut spec = RunSpec::new(Algo::Paxos, 5, FaultSet::all());
    spec.trace = true;
    for seed in [0, 42, 4242] {
        let a = synod_sim::run_one(&spec, seed).trace.unwrap();
        let b = synod_sim::run_one(&spec, seed).trace.unwrap();
        assert!(a.len() > 1_000, "the trace shows the run");
        assert_eq!(a, b, "seed {seed} must replay identically");
    }
}
