//! The atomic-commit protocols' failure modes, as the simulator finds them.
//!
//! Every test runs a bounded range of seeds through the runner, exactly as
//! `synod sim --algo ...` does, so any failure replays from the command line.

use synod_protocols::commit::paxos_commit::PaxosCommitNode;
use synod_protocols::commit::three_pc::ThreePcNode;
use synod_protocols::commit::{Layout, VotePlan};
use synod_protocols::MS;
use synod_sim::faults::{NodeFault, Schedule};
use synod_sim::models::commit::CommitModel;
use synod_sim::{
    run_batch, run_one, Algo, FaultSet, RunReport, RunSpec, SimConfig, Simulation, Summary,
};

fn spec(algo: Algo, faults: &str) -> RunSpec {
    RunSpec::new(algo, 5, FaultSet::parse(faults).unwrap())
}

fn batch(algo: Algo, faults: &str, first: u64, runs: u64) -> Summary {
    run_batch(&spec(algo, faults), first, runs, |_| {})
}

fn counter(s: &Summary, name: &str) -> u64 {
    s.counters.get(name).copied().unwrap_or(0)
}

fn violations(s: &Summary, property: &str) -> u64 {
    s.violations.get(property).copied().unwrap_or(0)
}

#[test]
fn two_pc_is_atomic_but_blocks_while_its_coordinator_stays_down() {
    let s = batch(Algo::TwoPc, "crash", 0, 3000);
    assert_eq!(violations(&s, "atomicity"), 0, "{:?}", s.failing_seeds);
    assert_eq!(violations(&s, "validity"), 0, "{:?}", s.failing_seeds);
    assert!(counter(&s, "committed") > 0 && counter(&s, "aborted") > 0);
    assert!(
        counter(&s, "blocked") > 0,
        "2PC should block when the coordinator stays down after the yes votes"
    );
    // A blocked run cannot reach the liveness goal: it is stuck, not unsafe.
    assert!(s.stuck > 0);

    // The blocked participants wait for the coordinator: the trace shows it down
    // for good and the in-doubt participants still holding their locks.
    let seed = s.stuck_seeds[0];
    let mut traced = spec(Algo::TwoPc, "crash");
    traced.trace = true;
    let r = run_one(&traced, seed);
    let trace = r.trace.unwrap();
    let down = trace
        .lines()
        .next()
        .and_then(|l| l.split("down for good: ").nth(1))
        .unwrap_or("");
    assert!(
        down.trim_matches(|c| c == '[' || c == ']')
            .split(", ")
            .any(|n| n == "0"),
        "seed {seed}: coordinator not down for good: {down}"
    );
    assert!(trace.contains("BLOCKED: n"), "seed {seed}");
}

#[test]
fn paxos_commit_finishes_where_two_pc_blocks() {
    // The same seeds mean the same crashes: where 2PC's participants are stuck
    // waiting for the coordinator, Paxos Commit's finish without it.
    let s = batch(Algo::TwoPc, "crash", 0, 1500);
    assert!(!s.stuck_seeds.is_empty());
    for &seed in &s.stuck_seeds {
        let r = run_one(&spec(Algo::PaxosCommit, "crash"), seed);
        assert!(r.terminated, "seed {seed}");
        assert_eq!(
            r.counters.get("blocked").copied().unwrap_or(0),
            0,
            "seed {seed}"
        );
        assert_eq!(r.violation_count, 0, "seed {seed}");
    }
}

#[test]
fn three_pc_never_blocks_where_two_pc_does_under_crash_stop() {
    // `crash` alone is crash-stop: at most f nodes crash and none comes back,
    // the model in which 3PC's non-blocking guarantee is stated.
    let three = batch(Algo::ThreePc, "crash", 0, 3000);
    let two = batch(Algo::TwoPc, "crash", 0, 3000);
    assert_eq!(three.total_violations(), 0, "{:?}", three.failing_seeds);
    assert_eq!(counter(&three, "blocked"), 0, "{:?}", three.stuck_seeds);
    assert_eq!(three.stuck, 0, "{:?}", three.stuck_seeds);
    assert!(counter(&three, "committed") > 0 && counter(&three, "aborted") > 0);
    assert!(counter(&two, "blocked") > 0);
}

/// Coordinator n0 collects three yes votes and sends PreCommit; n1 and n2
/// crash before it reaches them (and come back later), n0 stays down. n3, the
/// only pre-committed participant up, finds nobody else operational and, as
/// 3PC's termination rule says, commits alone; then it goes down for good.
/// n1 and n2 recover uncertain, and the only nodes that know the outcome are
/// gone: a total failure, after which no safe protocol could tell them what
/// happened (n3 might as well have voted no). Times fit the latencies of seed 1.
fn total_failure() -> Schedule {
    let crash = |node, restart_after| NodeFault::Crash {
        node,
        power_loss: false,
        torn: false,
        restart_after,
    };
    Schedule {
        events: vec![
            (77 * MS + MS / 2, crash(1, Some(500 * MS))),
            (77 * MS + MS / 2, crash(2, Some(500 * MS))),
            (78 * MS, crash(0, None)),
            (400 * MS, crash(3, None)),
        ],
        permanently_down: vec![0, 3],
        ..Schedule::default()
    }
}

fn story<N, B>(boot: B) -> RunReport
where
    N: synod_protocols::Node<
            Input = synod_protocols::commit::CommitInput,
            Event = synod_protocols::commit::CommitEvent,
        > + synod_protocols::commit::CommitNode,
    B: FnMut(synod_protocols::NodeId, &N::Disk, u64) -> N,
{
    let mut cfg = SimConfig::new(5, FaultSet::NONE);
    cfg.trace = true;
    let model = CommitModel::new(Layout::new(5, 3), boot);
    Simulation::with_schedule(cfg, 1, model, total_failure()).run(1)
}

#[test]
fn three_pc_blocks_after_a_total_failure_under_crash_recovery() {
    let layout = Layout::new(5, 3);
    let r = story(move |id, disk: &_, _| ThreePcNode::new(id, layout, VotePlan::all_yes(), disk));
    let trace = r.trace.clone().unwrap();
    assert_eq!(r.violation_count, 0, "{:?}", r.violations);
    assert!(
        trace.contains("n3  event Outcome { txn: 0, outcome: Commit }"),
        "n3 should commit alone as backup coordinator:\n{trace}"
    );
    assert!(!trace.contains("n1  event Outcome { txn: 0"), "{trace}");
    assert_eq!(r.counters.get("blocked"), Some(&1), "{trace}");
    for n in [1, 2] {
        assert!(
            trace.contains(&format!("BLOCKED: n{n} voted yes on txn 0")),
            "{trace}"
        );
    }
    assert!(!r.terminated);

    // Paxos Commit keeps the outcome on a majority of acceptors, so the same
    // story does not stop it.
    let r = story(move |id, disk: &_, seed| {
        PaxosCommitNode::new(id, layout, VotePlan::all_yes(), disk, seed)
    });
    assert_eq!(r.violation_count, 0, "{:?}", r.violations);
    assert_eq!(r.counters.get("blocked"), Some(&0));
    assert!(r.terminated);
}

#[test]
fn three_pc_is_atomic_under_crash_recovery() {
    let s = batch(Algo::ThreePc, "crash,restart,power-loss", 0, 3000);
    assert_eq!(s.total_violations(), 0, "{:?}", s.failing_seeds);
}

#[test]
fn a_partition_makes_three_pc_commit_and_abort_the_same_transaction() {
    let s = batch(Algo::ThreePc, "partition", 0, 3000);
    assert!(
        violations(&s, "atomicity") > 0,
        "the simulator should find 3PC's partition anomaly"
    );
    assert_eq!(violations(&s, "validity"), 0);
    let (seed, v) = s.first_violation.clone().unwrap();
    assert_eq!(v.property, "atomicity");
    // The replayed run shows the split: a partition, then both outcomes.
    let mut traced = spec(Algo::ThreePc, "partition");
    traced.trace = true;
    let trace = run_one(&traced, seed).trace.unwrap();
    assert!(trace.contains("PARTITION"), "seed {seed}");
    assert!(
        trace.contains("outcome: Commit") && trace.contains("outcome: Abort"),
        "seed {seed}"
    );
}

#[test]
fn two_pc_stays_atomic_under_partitions() {
    let s = batch(Algo::TwoPc, "partition", 0, 1500);
    assert_eq!(s.total_violations(), 0, "{:?}", s.failing_seeds);
}

#[test]
fn paxos_commit_is_atomic_and_never_blocks_under_every_fault() {
    let s = batch(Algo::PaxosCommit, "all", 0, 1500);
    assert_eq!(s.total_violations(), 0, "{:?}", s.failing_seeds);
    assert_eq!(counter(&s, "blocked"), 0);
    assert_eq!(s.stuck, 0, "{:?}", s.stuck_seeds);
    assert!(counter(&s, "committed") > 0 && counter(&s, "aborted") > 0);
}

#[test]
fn participants_must_fit_next_to_the_coordinator() {
    let mut sp = spec(Algo::TwoPc, "none");
    sp.participants = 5;
    let err = sp.validate().unwrap_err();
    assert!(err.contains("--participants"), "{err}");
    sp.participants = 0;
    assert!(sp.validate().is_err());
    for algo in [Algo::TwoPc, Algo::ThreePc, Algo::PaxosCommit] {
        for k in [1, 4] {
            let mut sp = spec(algo, "none");
            sp.participants = k;
            sp.validate().unwrap();
            let s = run_batch(&sp, 0, 50, |_| {});
            assert_eq!(s.total_violations(), 0, "{algo} with {k} participants");
            assert_eq!(
                s.stuck, 0,
                "{algo} with {k} participants: {:?}",
                s.stuck_seeds
            );
            assert!(counter(&s, "committed") > 0, "{algo} with {k} participants");
        }
    }
}
