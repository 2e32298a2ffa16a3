//! Multi-Paxos under every fault, and the checkers shown to catch a broken
//! Multi-Paxos.

use synod_protocols::multipaxos::{Bugs, Config, MpKvNode};
use synod_protocols::NodeId;
use synod_sim::models::multipaxos::MultiPaxosModel;
use synod_sim::models::raft::clients_for;
use synod_sim::{run_batch, Algo, FaultSet, RunSpec, Simulation};

#[test]
fn multipaxos_is_safe_and_live_under_all_faults() {
    for nodes in [3, 5] {
        let s = run_batch(
            &RunSpec::new(Algo::MultiPaxos, nodes, FaultSet::all()),
            0,
            500,
            |_| {},
        );
        assert_eq!(s.total_violations(), 0, "{nodes} nodes");
        assert_eq!(s.stuck, 0, "{nodes} nodes");
    }
}

/// The first seed at which Multi-Paxos with `bugs` breaks a property.
fn first_failure(bugs: Bugs, max_runs: u64) -> Option<(u64, &'static str)> {
    (0..max_runs).find_map(|seed| {
        let model = MultiPaxosModel::new(3, clients_for(3), move |id: NodeId, disk: &_, s| {
            MpKvNode::new(Config::new(id, 3), disk, s).with_bugs(bugs)
        });
        let spec = RunSpec::new(Algo::MultiPaxos, 3, FaultSet::all());
        let r = Simulation::new(spec.config(), seed, model).run(seed);
        let v = r.violations.first()?;
        eprintln!("{bugs:?}: seed {seed}: {} — {}", v.property, v.detail);
        Some((seed, v.property))
    })
}

/// A new leader that does not ask what was accepted overwrites chosen
/// slots: the agreement checker sees two values applied in one slot.
#[test]
fn a_leader_that_skips_phase_1_is_caught() {
    let bugs = Bugs {
        skip_phase1: true,
        ..Bugs::default()
    };
    assert!(first_failure(bugs, 200).is_some());
}

/// An acceptor that forgets its promise on restart lets two ballots
/// choose in one slot.
#[test]
fn an_acceptor_that_forgets_its_promises_is_caught() {
    let bugs = Bugs {
        forget_promises: true,
        ..Bugs::default()
    };
    assert!(first_failure(bugs, 2_000).is_some());
}
