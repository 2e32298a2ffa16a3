//! The Raft key-value model: the correct Raft passes every checker under all
//! faults, runs replay exactly, and each deliberately broken variant is caught.

use synod_protocols::kv::{KvOp, KvRequest, KvResult, KvStore};
use synod_protocols::raft::{Bugs, KvNode, RaftConfig};
use synod_protocols::{NodeId, MS};
use synod_sim::history::{OpKind, OpResult, Operation};
use synod_sim::linearizability::check;
use synod_sim::models::raft::{
    clients_for, peers, run_recorded, sim_config, standard_model, RaftModel, Recording, DEADLINES,
    IMPATIENT,
};
use synod_sim::{
    run_batch, run_one, Algo, Fault, FaultSet, RunReport, RunSpec, SimConfig, Simulation,
};

fn spec(nodes: usize) -> RunSpec {
    RunSpec::new(Algo::Raft, nodes, FaultSet::all())
}

#[test]
fn correct_raft_is_safe_and_live_under_all_faults() {
    for (nodes, runs) in [(3, 300), (5, 300)] {
        let s = run_batch(&spec(nodes), 0, runs, |_| {});
        assert_eq!(
            s.total_violations(),
            0,
            "{nodes} nodes: {:?} first: {:?}",
            s.failing_seeds,
            s.first_violation
        );
        assert_eq!(s.stuck, 0, "{nodes} nodes: stuck seeds {:?}", s.stuck_seeds);
        assert!(s.counters["ops_ok"] > 0);
    }
}

/// Membership changes under all faults: one spare node, learners added and
/// promoted, voters (leaders included) removed and re-added.
fn membership_failures(nodes: usize, seeds: std::ops::Range<u64>) -> (Vec<String>, u64) {
    let mut failures = Vec::new();
    let mut changes = 0;
    for seed in seeds {
        let model = RaftModel::new(nodes, clients_for(nodes), move |id: NodeId, disk: &_, s| {
            KvNode::new(RaftConfig::new(id, peers(nodes)), disk, s)
        })
        .with_spares(1);
        let r = Simulation::new(SimConfig::new(nodes + 1, FaultSet::all()), seed, model).run(seed);
        changes += r.counters["config_changes"];
        if let Some(v) = r.violations.first() {
            failures.push(format!("seed {seed}: {}: {}", v.property, v.detail));
        } else if !r.terminated {
            failures.push(format!("seed {seed}: stuck"));
        }
    }
    (failures, changes)
}

#[test]
fn membership_changes_are_safe_and_live() {
    for nodes in [3, 5] {
        let (failures, changes) = membership_failures(nodes, 0..150);
        let (stuck, broken): (Vec<_>, Vec<_>) = failures.iter().partition(|f| f.ends_with("stuck"));
        assert!(broken.is_empty(), "{nodes} voters + 1 spare: {broken:#?}");
        assert!(stuck.is_empty(), "{nodes} voters + 1 spare: {stuck:#?}");
        assert!(
            changes > 100,
            "{nodes} voters: only {changes} membership changes committed"
        );
    }
}

/// A longer search: `MEMBERSHIP_SEEDS=3000 cargo test -p synod-sim --test raft
/// membership_search -- --ignored --nocapture`.
#[test]
#[ignore]
fn membership_search() {
    let runs: u64 = std::env::var("MEMBERSHIP_SEEDS").map_or(3000, |s| s.parse().unwrap());
    for nodes in [3, 5] {
        let (failures, changes) = membership_failures(nodes, 0..runs);
        eprintln!(
            "{nodes} voters + 1 spare: {} failures in {runs} runs, {changes} changes",
            failures.len()
        );
        for f in &failures {
            eprintln!("  {f}");
        }
    }
}

/// Runs the correct Raft with a tweaked configuration over `seeds`; returns the
/// failures (violations first, then stuck runs).
fn tweaked_failures(
    nodes: usize,
    seeds: std::ops::Range<u64>,
    tweak: fn(&mut RaftConfig),
) -> Vec<String> {
    let mut failures = Vec::new();
    for seed in seeds {
        let model = RaftModel::new(nodes, clients_for(nodes), move |id: NodeId, disk: &_, s| {
            let mut cfg = RaftConfig::new(id, peers(nodes));
            tweak(&mut cfg);
            KvNode::new(cfg, disk, s)
        });
        let r = Simulation::new(SimConfig::new(nodes, FaultSet::all()), seed, model).run(seed);
        if let Some(v) = r.violations.first() {
            failures.push(format!("seed {seed}: {}: {}", v.property, v.detail));
        } else if !r.terminated {
            failures.push(format!("seed {seed}: stuck"));
        }
    }
    failures
}

fn lease_and_small_snapshots(cfg: &mut RaftConfig) {
    cfg.lease_reads = true;
    cfg.snapshot_every = 16;
    cfg.max_batch = 4;
    cfg.max_inflight = 2;
}

/// Lease reads (the simulator's clocks do not drift), frequent snapshots and
/// small batches, so followers often catch up by snapshot.
#[test]
fn lease_reads_and_frequent_snapshots_are_safe_and_live() {
    for nodes in [3, 5] {
        let failures = tweaked_failures(nodes, 0..150, lease_and_small_snapshots);
        assert!(failures.is_empty(), "{nodes} nodes: {failures:#?}");
    }
}

/// `TWEAK_SEEDS=3000 cargo test -p synod-sim --test raft tweaked_search --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn tweaked_search() {
    let runs: u64 = std::env::var("TWEAK_SEEDS").map_or(3000, |s| s.parse().unwrap());
    for nodes in [3, 5] {
        let failures = tweaked_failures(nodes, 0..runs, lease_and_small_snapshots);
        eprintln!("{nodes} nodes: {} failures in {runs} runs", failures.len());
        for f in &failures {
            eprintln!("  {f}");
        }
    }
}

#[test]
fn same_seed_same_run() {
    let mut sp = spec(5);
    sp.trace = true;
    for seed in [3, 11] {
        let a = run_one(&sp, seed);
        let b = run_one(&sp, seed);
        assert!(a.trace.as_deref().is_some_and(|t| !t.is_empty()));
        assert_eq!(a.trace, b.trace, "seed {seed}: traces differ");
        assert_eq!(a.counters, b.counters);
        assert_eq!(a.end_time, b.end_time);
    }
}

#[test]
fn recorded_history_is_linearizable_and_complete() {
    let (report, rec) = run_recorded(&RunSpec::new(Algo::Raft, 3, FaultSet::NONE), 1);
    assert!(
        report.terminated && report.violation_count == 0,
        "{:?}",
        report.violations
    );
    assert!(rec.history.len() > 10);
    assert!(
        rec.history.iter().all(|o| !o.is_indefinite()),
        "no faults: every operation completes"
    );
    assert!(check(&rec.history).is_linearizable());
}

/// Impatient clients give up on operations during faults: those stay
/// indefinite in the history, some of them take effect anyway (their unique
/// value is read later) and some never do, and every history still checks.
#[test]
fn abandoned_operations_are_indefinite_and_histories_check() {
    for nodes in [3, 5] {
        let (mut indefinite, mut observed, mut unobserved) = (0, 0, 0);
        for seed in 0..100 {
            let (report, rec) = run_recorded(&spec(nodes), seed);
            assert!(
                report.terminated && report.violation_count == 0,
                "{nodes} nodes, seed {seed}: {:?}",
                report.violations
            );
            let r = check(&rec.history);
            assert!(r.is_linearizable(), "{nodes} nodes, seed {seed}: {r}");
            let read: std::collections::HashSet<&str> = rec
                .history
                .iter()
                .filter_map(|o| match &o.result {
                    Some(OpResult::Read(Some(v))) => Some(v.as_str()),
                    _ => None,
                })
                .collect();
            for op in rec.history.iter().filter(|o| o.is_indefinite()) {
                indefinite += 1;
                if let OpKind::Put { value, .. } | OpKind::Cas { value, .. } = &op.kind {
                    if read.contains(value.as_str()) {
                        observed += 1;
                    } else {
                        unobserved += 1;
                    }
                }
            }
        }
        eprintln!(
            "{nodes} nodes: {indefinite} indefinite ops; writes among them observed {observed}, never observed {unobserved}"
        );
        assert!(indefinite > 0, "{nodes} nodes: no client gave up");
        assert!(
            observed > 0,
            "{nodes} nodes: no abandoned write took effect"
        );
        assert!(
            unobserved > 0,
            "{nodes} nodes: every abandoned write took effect"
        );
    }
}

/// Every client impatient, with deadlines as short as a few round trips:
/// about a fifth of the operations are abandoned, many while an election is
/// still going on, and every history still checks, within budget.
#[test]
fn many_abandoned_operations_still_check() {
    for nodes in [3, 5] {
        let (mut ops, mut indefinite) = (0, 0);
        for seed in 0..60 {
            let rec = std::rc::Rc::new(std::cell::RefCell::new(Recording::default()));
            let model = standard_model(nodes)
                .with_impatience(1.0, 30 * MS..300 * MS)
                .record_into(rec.clone());
            let r = Simulation::new(sim_config(&spec(nodes)), seed, model).run(seed);
            assert!(
                r.terminated && r.violation_count == 0,
                "{nodes} nodes, seed {seed}: {:?}",
                r.violations
            );
            assert_eq!(r.counters["ops_unknown_checks"], 0, "seed {seed}");
            let history = rec.take().history;
            ops += history.len();
            indefinite += history.iter().filter(|o| o.is_indefinite()).count();
        }
        assert!(
            indefinite * 10 > ops,
            "{nodes} nodes: only {indefinite} of {ops} ops indefinite"
        );
    }
}

/// Without deadlines every client retries until answered: nothing is
/// indefinite even under faults (the quiet phase answers everything).
#[test]
fn patient_clients_leave_no_indefinite_operations() {
    let nodes = 3;
    for seed in 0..30 {
        let rec = std::rc::Rc::new(std::cell::RefCell::new(Default::default()));
        let model = RaftModel::new(nodes, clients_for(nodes), move |id: NodeId, disk: &_, s| {
            KvNode::new(RaftConfig::new(id, peers(nodes)), disk, s)
        })
        .with_impatience(0.0, DEADLINES)
        .record_into(rec.clone());
        let r = Simulation::new(spec(nodes).config(), seed, model).run(seed);
        assert!(r.terminated && r.violation_count == 0, "seed {seed}");
        let rec: Recording = rec.take();
        assert!(
            rec.history.iter().all(|o| !o.is_indefinite()),
            "seed {seed}"
        );
    }
}

/// What makes abandoning safe in the store: a session keeps only its last
/// applied write, so an abandoned write that reaches the log after a newer
/// write of the same client must be rejected, not applied (else the session
/// would move back and a retry of the newer write would apply twice). An
/// abandoned write that arrives first is applied, once.
#[test]
fn an_abandoned_write_applies_at_most_once_and_never_after_a_newer_one() {
    let put = |seq: u64, value: &str| KvRequest {
        client: 7,
        seq,
        op: KvOp::Put {
            key: "k".into(),
            value: value.into(),
        },
    };
    // Abandoned seq 5 is committed after seq 6: rejected, and a retry of seq 6
    // answers from the session without applying it again.
    let mut s = KvStore::default();
    assert_eq!(s.apply(&put(6, "b")), Some(KvResult::Ok));
    assert_eq!(s.apply(&put(5, "a")), None);
    s.apply_op(&KvOp::Put {
        key: "k".into(),
        value: "other".into(),
    });
    assert_eq!(s.apply(&put(6, "b")), Some(KvResult::Ok));
    assert_eq!(s.data["k"], "other");
    // Abandoned seq 5 committed (twice: a retry reached another leader's log)
    // before seq 6: it takes effect once.
    let mut s = KvStore::default();
    assert_eq!(s.apply(&put(5, "a")), Some(KvResult::Ok));
    s.apply_op(&KvOp::Put {
        key: "k".into(),
        value: "other".into(),
    });
    assert_eq!(s.apply(&put(5, "a")), Some(KvResult::Ok));
    assert_eq!(s.data["k"], "other");
    assert_eq!(s.apply(&put(6, "b")), Some(KvResult::Ok));
    assert_eq!(s.apply(&put(5, "a")), None);
    assert_eq!(s.data["k"], "b");
}

/// The shape of a history with an abandoned operation: client 1 gives up on
/// its put at 300 ms and moves on. Its value may show up any time after the
/// invocation, even after the client's next operation, but never before it
/// was invoked.
#[test]
fn an_abandoned_write_is_never_seen_before_it_was_invoked() {
    let kx = || "x".to_string();
    let abandoned = Operation::indefinite(
        1,
        OpKind::Put {
            key: kx(),
            value: "c1.5".into(),
        },
        100_000,
    );
    let next = Operation::completed(
        1,
        OpKind::Put {
            key: kx(),
            value: "c1.6".into(),
        },
        310_000,
        320_000,
        OpResult::Ok,
    );
    let read = |v: &str, at: u64| {
        Operation::completed(
            2,
            OpKind::Get { key: kx() },
            at,
            at + 10_000,
            OpResult::Read(Some(v.into())),
        )
    };
    // Takes effect after the client's next operation completed.
    let late = [abandoned.clone(), next.clone(), read("c1.5", 400_000)];
    assert!(check(&late).is_linearizable());
    // Never takes effect.
    let never = [abandoned.clone(), next.clone(), read("c1.6", 400_000)];
    assert!(check(&never).is_linearizable());
    // Seen before it was invoked: rejected.
    let early = [read("c1.5", 0), abandoned.clone(), next.clone()];
    let r = check(&early);
    assert!(r.violation().is_some_and(|v| v.key == "x"), "{r}");
    // An abandoned cas, seen swapped before it was invoked: rejected too.
    let cas = Operation::indefinite(
        1,
        OpKind::Cas {
            key: kx(),
            expected: None,
            value: "c1.7".into(),
        },
        500_000,
    );
    let r = check(&[next, read("c1.7", 330_000), cas]);
    assert!(r.violation().is_some_and(|v| v.key == "x"), "{r}");
}

fn bugs(which: &str) -> Bugs {
    Bugs {
        vote_without_log_check: which == "vote_without_log_check",
        commit_old_term_by_counting: which == "commit_old_term_by_counting",
        reply_before_persist: which == "reply_before_persist",
        follower_reads_own_commit: which == "follower_reads_own_commit",
        asker_confirms_alone: which == "asker_confirms_alone",
        lazy_votes: which == "lazy_votes",
        send_released: which == "send_released",
        sole_voter_events_early: which == "sole_voter_events_early",
    }
}

fn run_broken(which: &'static str, nodes: usize, seed: u64) -> RunReport {
    run_broken_under(which, nodes, seed, FaultSet::all())
}

/// The same under the faults `faults` only.
fn run_broken_under(which: &'static str, nodes: usize, seed: u64, faults: FaultSet) -> RunReport {
    let model = RaftModel::new(nodes, clients_for(nodes), move |id: NodeId, disk: &_, s| {
        let mut cfg = RaftConfig::new(id, peers(nodes));
        if which == "commit_old_term_by_counting" {
            // One entry per message, one message in flight: a new leader's older
            // entries reach a quorum before its own, which is when counting bites.
            cfg.max_batch = 1;
            cfg.max_inflight = 1;
            cfg.pre_vote = false;
            cfg.check_quorum = false;
        }
        KvNode::new(cfg, disk, s).with_bugs(bugs(which))
    });
    let sp = RunSpec::new(Algo::Raft, nodes, faults);
    Simulation::new(sp.config(), seed, model).run(seed)
}

/// Runs seeds until one breaks a property; returns (seed, property).
fn first_failure(which: &'static str, max_runs: u64) -> Option<(u64, &'static str)> {
    first_failure_under(which, max_runs, FaultSet::all())
}

/// The same under the faults `faults` only (see `lazy_votes_are_caught`).
fn first_failure_under(
    which: &'static str,
    max_runs: u64,
    faults: FaultSet,
) -> Option<(u64, &'static str)> {
    for seed in 0..max_runs {
        for nodes in [5, 3] {
            let r = run_broken_under(which, nodes, seed, faults);
            if let Some(v) = r.violations.first() {
                eprintln!(
                    "{which}: seed {seed}, {nodes} nodes: {} — {}",
                    v.property, v.detail
                );
                return Some((seed, v.property));
            }
        }
    }
    None
}

#[test]
fn voting_without_the_log_check_is_caught() {
    assert!(first_failure("vote_without_log_check", 1000).is_some());
}

#[test]
fn committing_old_term_entries_by_counting_is_caught() {
    // The commit_rule checker sees the rule broken long before harm is done.
    assert!(first_failure("commit_old_term_by_counting", 1000).is_some());
}

/// The harm itself (Raft's Figure 8): a committed entry lost to a later leader,
/// seen by a checker other than `commit_rule`. Rare (about one seed in 20,000
/// produces the sequence of leaders it takes), so this searches instead of
/// pinning a seed that moves whenever the core changes: `HARM_SEEDS=40000 cargo
/// test -p synod-sim --test raft counting_loses_a_committed_entry -- --ignored
/// --nocapture`.
#[test]
#[ignore]
fn counting_loses_a_committed_entry() {
    let runs: u64 = std::env::var("HARM_SEEDS").map_or(40_000, |s| s.parse().unwrap());
    let harm = (0..runs).find_map(|seed| {
        let r = run_broken("commit_old_term_by_counting", 5, seed);
        let v = r.violations.iter().find(|v| v.property != "commit_rule")?;
        Some((seed, v.property, v.detail.clone()))
    });
    let (seed, property, detail) = harm.expect("no run lost a committed entry");
    eprintln!("seed {seed}: {property}: {detail}");
}

#[test]
fn replying_before_persisting_is_caught() {
    assert!(first_failure("reply_before_persist", 1000).is_some());
}

/// Votes and terms written like commit indexes, without waiting for their
/// sync: a power cut makes a node forget a vote it gave and vote twice.
/// Under every fault 5 of the first 1,500 seeds caught it, so the old budget
/// of 1,000 failed about one change of timing in thirty; with power cuts,
/// restarts, torn writes and slow messages only, 11 of 1,500 do.
#[test]
fn lazy_votes_are_caught() {
    let faults = FaultSet::NONE
        .with(Fault::PowerLoss)
        .with(Fault::Restart)
        .with(Fault::TornWrite)
        .with(Fault::Delay);
    assert!(first_failure_under("lazy_votes", 3000, faults).is_some());
}

/// A leader that sends followers entries whose commands it already dropped
/// (and drops them before everyone has them): a lagging follower applies
/// empty commands where the others applied writes.
#[test]
fn sending_released_entries_is_caught() {
    // The follower refuses such an append, so it never catches up: the run
    // never ends (every member of the configuration must apply everything).
    let caught = (0..1000).find(|&seed| {
        let r = run_broken("send_released", 3, seed);
        !r.terminated || !r.violations.is_empty()
    });
    assert!(caught.is_some());
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Benchmark figures (not a timed test): `cargo test -p synod-sim --test raft
/// figures -- --ignored --nocapture`.
#[test]
#[ignore]
fn figures() {
    let crash = FaultSet::parse("crash,restart").unwrap();
    for nodes in [3, 5] {
        let mut failovers = Vec::new();
        for seed in 0..500 {
            let (r, rec) = run_recorded(&RunSpec::new(Algo::Raft, nodes, crash), seed);
            assert_eq!(r.violation_count, 0);
            failovers.extend(rec.failovers);
        }
        failovers.sort_unstable();
        eprintln!(
            "{nodes} nodes: new leader after the leader crashes: {} samples, median {:.1} ms, p99 {:.1} ms",
            failovers.len(),
            percentile(&failovers, 50.0) as f64 / 1000.0,
            percentile(&failovers, 99.0) as f64 / 1000.0
        );
        let (mut msgs, mut entries, mut ops) = (0, 0, 0);
        for seed in 0..100 {
            let model =
                RaftModel::new(nodes, clients_for(nodes), move |id: NodeId, disk: &_, s| {
                    KvNode::new(RaftConfig::new(id, peers(nodes)), disk, s)
                })
                .with_admin(false);
            let sp = RunSpec::new(Algo::Raft, nodes, FaultSet::NONE);
            let r = Simulation::new(sp.config(), seed, model).run(seed);
            msgs += r.counters["messages"];
            entries += r.counters["entries_committed"];
            ops += r.counters["ops_ok"];
        }
        eprintln!(
            "{nodes} nodes, no faults: {:.1} messages per committed entry, {:.1} per client operation (heartbeats included)",
            msgs as f64 / entries as f64,
            msgs as f64 / ops as f64
        );
        // Steady state under load, with and without batching: 32 clients keep
        // the leader busy; bytes are the messages' bincode size.
        // Without batching every proposal travels alone (max_batch 1, up to 64
        // appends in flight); with batching at most 2 appends are in flight per
        // follower and entries proposed meanwhile leave together (up to 64).
        for (max_batch, max_inflight) in [(1, 64), (64, 64), (64, 2), (64, 4), (64, 8)] {
            let (mut msgs, mut bytes, mut entries, mut ops) = (0, 0, 0, 0);
            for seed in 0..20 {
                let model = RaftModel::new(nodes, 32, move |id: NodeId, disk: &_, s| {
                    let mut cfg = RaftConfig::new(id, peers(nodes));
                    cfg.max_batch = max_batch;
                    cfg.max_inflight = max_inflight;
                    KvNode::new(cfg, disk, s)
                })
                .with_admin(false);
                let sp = RunSpec::new(Algo::Raft, nodes, FaultSet::NONE);
                let r = Simulation::new(sp.config(), seed, model)
                    .with_message_size(|m| bincode::serialized_size(m).expect("sizable"))
                    .run(seed);
                assert_eq!(r.violation_count, 0);
                msgs += r.counters["messages"];
                bytes += r.bytes_sent;
                entries += r.counters["entries_committed"];
                ops += r.counters["ops_ok"];
            }
            eprintln!(
                "{nodes} nodes, 32 clients, max_batch {max_batch}, max_inflight {max_inflight}: {:.2} messages and {:.0} bytes per committed entry, {:.2} messages and {:.0} bytes per client operation ({} entries, {} ops)",
                msgs as f64 / entries as f64,
                bytes as f64 / entries as f64,
                msgs as f64 / ops as f64,
                bytes as f64 / ops as f64,
                entries,
                ops
            );
        }
    }
}

/// Prints the trace of one membership run: `SEED=.. NODES=.. cargo test -p
/// synod-sim --test raft membership_trace -- --ignored --nocapture`.
#[test]
#[ignore]
fn membership_trace() {
    let seed: u64 = std::env::var("SEED").map_or(0, |s| s.parse().unwrap());
    let nodes: usize = std::env::var("NODES").map_or(3, |s| s.parse().unwrap());
    let model = RaftModel::new(nodes, clients_for(nodes), move |id: NodeId, disk: &_, s| {
        KvNode::new(RaftConfig::new(id, peers(nodes)), disk, s)
    })
    .with_spares(1);
    let mut cfg = SimConfig::new(nodes + 1, FaultSet::all());
    cfg.trace = true;
    let r = Simulation::new(cfg, seed, model).run(seed);
    println!("{}", r.trace.unwrap_or_default());
    println!("terminated {} violations {:?}", r.terminated, r.violations);
}

/// Linearizability checker time and whole-run time, with and without
/// impatient clients, seed by seed on the same seeds (interleaved, so a loaded
/// machine slows both alike): `CHECK_SEEDS=2000 cargo test --release -p
/// synod-sim --test raft checker_time -- --ignored --nocapture`.
#[test]
#[ignore]
fn checker_time() {
    use std::time::{Duration, Instant};
    let runs: u64 = std::env::var("CHECK_SEEDS").map_or(200, |s| s.parse().unwrap());
    for nodes in [3, 5] {
        // Per variant (patient, impatient): run time, checker time, slowest
        // check (time, seed), ops, indefinite ops.
        let mut stats = [(Duration::ZERO, Duration::ZERO, (Duration::ZERO, 0), 0, 0); 2];
        for seed in 0..runs {
            for (v, share) in [0.0, IMPATIENT].into_iter().enumerate() {
                let deadlines = share > 0.0;
                let rec = std::rc::Rc::new(std::cell::RefCell::new(Recording::default()));
                let model = standard_model(nodes)
                    .with_impatience(share, DEADLINES)
                    .record_into(rec.clone());
                let started = Instant::now();
                let r = Simulation::new(sim_config(&spec(nodes)), seed, model).run(seed);
                let ran = started.elapsed();
                assert!(r.terminated && r.violation_count == 0, "seed {seed}");
                let history = rec.take().history;
                let started = Instant::now();
                let c = check(&history);
                let took = started.elapsed();
                assert!(c.is_linearizable(), "{nodes} nodes, seed {seed}: {c}");
                let s = &mut stats[v];
                s.0 += ran;
                s.1 += took;
                s.2 = s.2.max((took, seed));
                s.3 += history.len();
                s.4 += history.iter().filter(|o| o.is_indefinite()).count();
                if seed < 3 {
                    eprintln!(
                        "{nodes} nodes, seed {seed}, deadlines {deadlines}: {} ops ({} indefinite) checked in {took:?}",
                        history.len(),
                        history.iter().filter(|o| o.is_indefinite()).count(),
                    );
                }
            }
        }
        for (v, s) in stats.iter().enumerate() {
            eprintln!(
                "{nodes} nodes, {runs} seeds, deadlines {}: {} ops ({} indefinite); runs {:?} in total ({:.0} runs/s, one thread), of which checker {:?} ({:?} per run), slowest check seed {} ({:?})",
                v == 1,
                s.3,
                s.4,
                s.0,
                runs as f64 / s.0.as_secs_f64(),
                s.1,
                s.1 / runs as u32,
                s.2 .1,
                s.2 .0
            );
        }
    }
}

mod etcd_replica {
    //! The service's replicated store (`synod_kv::replica::Replica`) in the
    //! simulator: linearizable under every fault, and the checker catches a
    //! member that answers reads from its own store without ReadIndex.
    use synod_kv::replica::{Replica, ReplicaBugs};
    use synod_sim::models::etcd::engine::{OnRaft, SimEngine};
    use synod_sim::models::etcd::EtcdModel;
    use synod_sim::{run_batch, Algo, FaultSet, RunSpec, SimConfig, Simulation};

    #[test]
    fn the_service_store_is_linearizable_under_every_fault() {
        for nodes in [3, 5] {
            let s = run_batch(
                &RunSpec::new(Algo::Etcd, nodes, FaultSet::all()),
                0,
                150,
                |_| {},
            );
            assert_eq!(
                s.total_violations(),
                0,
                "{nodes} nodes: {:?}",
                s.first_violation
            );
            assert_eq!(s.stuck, 0, "{nodes} nodes: {:?}", s.stuck_seeds);
            assert!(s.counters["ops_ok"] > 0 && s.counters["ops_indefinite"] > 0);
            // The faults reached the replica's persistence, not only its
            // network: snapshots sent and installed, torn tails cut,
            // corruption refused.
            for c in [
                "runs_with_snapshots_installed",
                "runs_with_torn_tails",
                "runs_with_corruption_detected",
                "store_hash_checks",
                "snapshots_encoded_elsewhere",
            ] {
                assert!(s.counters[c] > 0, "{nodes} nodes: no {c}");
            }
        }
    }

    /// The first seed below `limit` whose run with `bugs` violates a
    /// property, and the property.
    fn first_caught(bugs: ReplicaBugs, limit: u64) -> Option<(u64, &'static str)> {
        first_caught_with(bugs, limit, 0)
    }

    /// With `spares` members outside the initial configuration, and so
    /// membership changes.
    fn first_caught_with(
        bugs: ReplicaBugs,
        limit: u64,
        spares: usize,
    ) -> Option<(u64, &'static str)> {
        first_caught_on::<OnRaft>(bugs, limit, spares)
    }

    /// The same on the replicas' engine `K`.
    pub(super) fn first_caught_on<K: SimEngine>(
        bugs: ReplicaBugs,
        limit: u64,
        spares: usize,
    ) -> Option<(u64, &'static str)> {
        first_caught_sized::<K>(bugs, limit, 3, spares, true)
    }

    /// The same with `nodes` voters to begin with, and with or without
    /// check-quorum (without it, a leader cut off from a quorum stays leader
    /// until it hears of a later term, which widens the window a stale-read
    /// bug needs).
    fn first_caught_sized<K: SimEngine>(
        bugs: ReplicaBugs,
        limit: u64,
        nodes: usize,
        spares: usize,
        check_quorum: bool,
    ) -> Option<(u64, &'static str)> {
        first_caught_under::<K>(bugs, limit, nodes, spares, check_quorum, FaultSet::all())
    }

    /// The same under the faults `faults` only.
    fn first_caught_under<K: SimEngine>(
        bugs: ReplicaBugs,
        limit: u64,
        nodes: usize,
        spares: usize,
        check_quorum: bool,
        faults: FaultSet,
    ) -> Option<(u64, &'static str)> {
        thread_local! {
            static BUGS: std::cell::Cell<(ReplicaBugs, bool)> =
                std::cell::Cell::new((ReplicaBugs::default(), true));
        }
        BUGS.with(|b| b.set((bugs, check_quorum)));
        (0..limit).find_map(|seed| {
            let model: EtcdModel<K> = EtcdModel::new(nodes, 3).with_spares(spares).with_boot(
                |mut cfg, disk: &_, seed| {
                    let (bugs, check_quorum) = BUGS.with(|b| b.get());
                    cfg.raft.check_quorum = check_quorum;
                    Replica::with_bugs(cfg, disk, seed, bugs)
                },
            );
            let mut cfg = SimConfig::new(nodes + spares, faults);
            cfg.f = (nodes - 1) / 2;
            let r = Simulation::new(cfg, seed, model).run(seed);
            r.violations.first().map(|v| (seed, v.property))
        })
    }

    #[test]
    fn a_follower_read_at_its_own_commit_index_is_caught() {
        let bugs = ReplicaBugs {
            raft: synod_protocols::raft::Bugs {
                follower_reads_own_commit: true,
                ..Default::default()
            },
            ..ReplicaBugs::default()
        };
        let caught = first_caught(bugs, 300);
        eprintln!("follower reads at their own commit index caught: {caught:?}");
        assert!(
            matches!(caught, Some((_, "linearizability"))),
            "stale follower reads went unnoticed in 300 runs: {caught:?}"
        );
    }

    /// With five voters, a leader and the follower asking for a read are
    /// not a quorum: a leader that answers such a read at once, without a
    /// heartbeat round, serves stale reads once a partition leaves the two
    /// of them behind a new leader. Partitions only: with every fault about
    /// one run in 1,500 caught it, with partitions and slow nodes one in
    /// 600 (and which seeds hit moved with any change of timing), with
    /// partitions alone 21 runs in the first 1,000.
    #[test]
    fn a_read_index_confirmed_by_less_than_a_quorum_is_caught() {
        let bugs = ReplicaBugs {
            raft: synod_protocols::raft::Bugs {
                asker_confirms_alone: true,
                ..Default::default()
            },
            ..ReplicaBugs::default()
        };
        let faults = FaultSet::NONE.with(synod_sim::Fault::Partition);
        let caught = first_caught_under::<OnRaft>(bugs, 2000, 5, 0, false, faults);
        eprintln!("read index confirmed by the asker alone caught: {caught:?}");
        assert!(
            matches!(caught, Some((_, "linearizability"))),
            "read indexes confirmed by less than a quorum went unnoticed in 2000 runs: {caught:?}"
        );
        // The same runs without the bug stay clean: it is the bug, not the
        // missing check-quorum, that was caught.
        let seed = caught.expect("checked").0;
        let clean =
            first_caught_under::<OnRaft>(ReplicaBugs::default(), seed + 1, 5, 0, false, faults);
        assert_eq!(clean, None, "the correct rule failed without check-quorum");
        // With three voters the correct rule answers a follower's read at
        // once too: a partition that leaves an old leader running does not
        // make it stale.
        let three = first_caught_sized::<OnRaft>(ReplicaBugs::default(), 400, 3, 0, false);
        assert_eq!(three, None, "three voters without check-quorum");
    }

    #[test]
    fn a_membership_change_answered_before_it_is_in_force_is_caught() {
        let bugs = ReplicaBugs {
            conf_answered_early: true,
            ..ReplicaBugs::default()
        };
        let caught = first_caught_with(bugs, 200, 1);
        eprintln!("early membership answer caught: {caught:?}");
        assert!(
            matches!(caught, Some((_, "membership"))),
            "membership changes answered early went unnoticed in 200 runs: {caught:?}"
        );
    }

    /// Members report what they apply before the sync of the output that
    /// applies it (a quorum acknowledged it durable), except a leader that
    /// is a quorum alone: it commits what that very output writes. One that
    /// reports early anyway answers writes a power cut then takes away.
    #[test]
    fn a_sole_voter_answering_before_its_sync_is_caught() {
        let bugs = ReplicaBugs {
            raft: synod_protocols::raft::Bugs {
                sole_voter_events_early: true,
                ..Default::default()
            },
            ..ReplicaBugs::default()
        };
        let caught = first_caught_sized::<OnRaft>(bugs, 300, 1, 0, true);
        eprintln!("a sole voter answering before its sync caught: {caught:?}");
        let (seed, _) = caught.expect("no seed in 300 caught the sole voter's early answers");
        let clean = first_caught_sized::<OnRaft>(ReplicaBugs::default(), seed + 1, 1, 0, true);
        assert_eq!(clean, None, "a sole voter failed without the bug");
    }

    /// The service's store under a driver that lets a leader's early
    /// messages out while an earlier sync is still in flight.
    #[test]
    fn early_messages_sent_while_a_sync_is_in_flight_are_caught() {
        let run = |seed: u64, early_while_syncing: bool| {
            let model: EtcdModel<OnRaft> = EtcdModel::new(3, 3);
            let mut cfg = SimConfig::new(3, FaultSet::all());
            cfg.bugs.early_while_syncing = early_while_syncing;
            Simulation::new(cfg, seed, model).run(seed)
        };
        let caught = (0..300).find_map(|seed| {
            let r = run(seed, true);
            r.violations.first().map(|v| (seed, v.property))
        });
        eprintln!("the service's store, early messages while a sync is in flight: {caught:?}");
        let (seed, _) = caught.expect("no seed in 300 caught the early messages");
        let r = run(seed, false);
        assert_eq!(r.violation_count, 0, "{:?}", r.violations.first());
    }

    #[test]
    fn leases_that_end_early_are_caught() {
        let bugs = ReplicaBugs {
            short_leases: true,
            ..ReplicaBugs::default()
        };
        let caught = first_caught(bugs, 200);
        eprintln!("short leases caught: {caught:?}");
        assert!(
            matches!(caught, Some((_, "lease_expiry"))),
            "leases ending early went unnoticed in 200 runs: {caught:?}"
        );
    }

    #[test]
    fn writes_applied_without_their_senders_permissions_are_caught() {
        let bugs = ReplicaBugs {
            auth_unchecked: true,
            ..ReplicaBugs::default()
        };
        let caught = first_caught(bugs, 50);
        eprintln!("unchecked auth caught: {caught:?}");
        assert!(
            matches!(caught, Some((_, "auth"))),
            "writes applied without permission checks went unnoticed in 50 runs: {caught:?}"
        );
    }

    #[test]
    fn a_snapshot_labelled_ahead_of_its_store_is_caught() {
        let bugs = ReplicaBugs {
            stale_snapshot: true,
            ..ReplicaBugs::default()
        };
        let caught = first_caught(bugs, 200);
        eprintln!("stale snapshot caught: {caught:?}");
        assert!(
            caught.is_some(),
            "a stale snapshot went unnoticed in 200 runs"
        );
    }

    /// The ordering rule that lets the service encode snapshots on another
    /// thread: the image keeps the index it was taken at, however many
    /// entries were applied before it came back.
    #[test]
    fn an_image_labelled_with_a_later_index_is_caught() {
        let bugs = ReplicaBugs {
            late_image_index: true,
            ..ReplicaBugs::default()
        };
        let caught = first_caught(bugs, 200);
        eprintln!("late image index caught: {caught:?}");
        assert!(
            caught.is_some(),
            "images labelled with a later index went unnoticed in 200 runs"
        );
    }

    #[test]
    fn a_restart_that_skips_replaying_the_log_is_caught() {
        let bugs = ReplicaBugs {
            skip_replay: true,
            ..ReplicaBugs::default()
        };
        let caught = first_caught(bugs, 200);
        eprintln!("skipped replay caught: {caught:?}");
        assert!(
            caught.is_some(),
            "skipped replay went unnoticed in 200 runs"
        );
    }

    #[test]
    fn reads_without_read_index_are_caught() {
        let caught = (0..400).find(|&seed| {
            let model: EtcdModel = EtcdModel::new(3, 3).with_local_reads();
            let r = Simulation::new(SimConfig::new(3, FaultSet::all()), seed, model).run(seed);
            r.violations.iter().any(|v| v.property == "linearizability")
        });
        assert!(
            caught.is_some(),
            "stale local reads went unnoticed in 400 runs"
        );
    }
}

mod etcd_replica_on_multipaxos {
    //! The same replicas on the Multi-Paxos log (`--algo etcd --engine
    //! multipaxos`): the same clients, leases, auth and membership changes,
    //! the same checkers, and the replicas' deliberate bugs caught on this
    //! engine too.
    use super::etcd_replica::first_caught_on;
    use synod_kv::replica::ReplicaBugs;
    use synod_sim::models::etcd::engine::OnMultiPaxos;
    use synod_sim::runner::EngineKind;
    use synod_sim::{run_batch, Algo, FaultSet, RunSpec};

    #[test]
    fn the_service_store_on_multipaxos_is_linearizable_under_every_fault() {
        for nodes in [3, 5] {
            let mut spec = RunSpec::new(Algo::Etcd, nodes, FaultSet::all());
            spec.engine = EngineKind::MultiPaxos;
            let s = run_batch(&spec, 0, 150, |_| {});
            assert_eq!(
                s.total_violations(),
                0,
                "{nodes} nodes: {:?}",
                s.first_violation
            );
            assert_eq!(s.stuck, 0, "{nodes} nodes: {:?}", s.stuck_seeds);
            for c in [
                "ops_ok",
                "ops_indefinite",
                "store_hash_checks",
                "snapshots_encoded_elsewhere",
                "membership_changes_answered",
                "leases_expired",
                "auth_steps",
            ] {
                assert!(s.counters[c] > 0, "{nodes} nodes: no {c}");
            }
        }
    }

    fn caught(bugs: ReplicaBugs, limit: u64, spares: usize) -> Option<(u64, &'static str)> {
        first_caught_on::<OnMultiPaxos>(bugs, limit, spares)
    }

    #[test]
    fn a_membership_change_answered_before_it_is_chosen_is_caught() {
        let bugs = ReplicaBugs {
            conf_answered_early: true,
            ..ReplicaBugs::default()
        };
        let c = caught(bugs, 200, 1);
        eprintln!("early membership answer caught on Multi-Paxos: {c:?}");
        assert!(matches!(c, Some((_, "membership"))), "{c:?}");
    }

    #[test]
    fn leases_that_end_early_are_caught() {
        let bugs = ReplicaBugs {
            short_leases: true,
            ..ReplicaBugs::default()
        };
        let c = caught(bugs, 200, 0);
        eprintln!("short leases caught on Multi-Paxos: {c:?}");
        assert!(matches!(c, Some((_, "lease_expiry"))), "{c:?}");
    }

    #[test]
    fn a_snapshot_labelled_ahead_of_its_store_is_caught() {
        let bugs = ReplicaBugs {
            stale_snapshot: true,
            ..ReplicaBugs::default()
        };
        let c = caught(bugs, 200, 0);
        eprintln!("stale snapshot caught on Multi-Paxos: {c:?}");
        assert!(c.is_some(), "a stale snapshot went unnoticed in 200 runs");
    }

    #[test]
    fn a_restart_that_skips_replaying_the_log_is_caught() {
        let bugs = ReplicaBugs {
            skip_replay: true,
            ..ReplicaBugs::default()
        };
        let c = caught(bugs, 200, 0);
        eprintln!("skipped replay caught on Multi-Paxos: {c:?}");
        assert!(c.is_some(), "skipped replay went unnoticed in 200 runs");
    }

    fn run_journal(seed: u64, wipe: bool) -> synod_sim::RunReport {
        use synod_sim::models::etcd::EtcdModel;
        use synod_sim::{SimConfig, Simulation};
        let model: EtcdModel<OnMultiPaxos> = EtcdModel::new(3, 3);
        let model = if wipe {
            model.with_wipe_on_corruption()
        } else {
            model
        };
        let mut cfg = SimConfig::new(3, FaultSet::all());
        cfg.f = 1;
        Simulation::new(cfg, seed, model).run(seed)
    }

    /// The members' records are in the journal the service writes
    /// (`PaxosLog` on the simulated disk), so flipped bits reach its
    /// recovery, which refuses the directory: the member stays down. One
    /// that starts over on an empty disk instead forgets its promises and
    /// accepted values, and the checkers catch it; the same seed with the
    /// member staying down runs clean.
    #[test]
    fn a_member_that_starts_over_on_a_damaged_journal_is_caught() {
        let caught = (0..400).find_map(|seed| {
            let r = run_journal(seed, true);
            r.violations.first().map(|v| (seed, v.property))
        });
        eprintln!("a member starting over on a damaged journal caught: {caught:?}");
        let (seed, _) = caught.expect("no seed in 400 caught the member that started over");
        let r = run_journal(seed, false);
        assert_eq!(r.violation_count, 0, "{:?}", r.violations.first());
        assert!(r.counters["corruption_detected"] > 0, "seed {seed}");
    }
}

/// The driver's side of `Envelope::early`: a leader's appends may leave
/// before their own output is durable, but only once every earlier output
/// is. A driver that lets them out while an earlier sync is still in flight
/// tells followers of a commit that rests on the leader's unsynced entries;
/// a power cut then takes them away after a follower applied them.
#[test]
fn early_messages_sent_while_a_sync_is_in_flight_are_caught() {
    let run = |nodes: usize, seed: u64, early_while_syncing: bool| {
        let model = RaftModel::new(nodes, clients_for(nodes), move |id: NodeId, disk: &_, s| {
            KvNode::new(RaftConfig::new(id, peers(nodes)), disk, s)
        });
        let mut cfg = spec(nodes).config();
        cfg.bugs.early_while_syncing = early_while_syncing;
        Simulation::new(cfg, seed, model).run(seed)
    };
    let caught = (0..3000).find_map(|seed| {
        [3, 5].into_iter().find_map(|nodes| {
            let r = run(nodes, seed, true);
            r.violations.first().map(|v| (seed, nodes, v.property))
        })
    });
    eprintln!("early messages while a sync is in flight caught: {caught:?}");
    let (seed, nodes, _) = caught.expect("no seed in 3,000 caught the early messages");
    let r = run(nodes, seed, false);
    assert_eq!(r.violation_count, 0, "{:?}", r.violations.first());
}
