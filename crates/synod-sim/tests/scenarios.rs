//! The seeds' write-once stories (`synod sim --scenario`), each outcome
//! asserted on every algorithm over many seeds: the coordinator and majority
//! vote get stuck where Paxos decides, and none of them ever decides twice.

use synod_sim::scenarios::{self, Outcome};
use synod_sim::Algo;

fn outcomes(name: &str, algo: Algo) -> Vec<Outcome> {
    let scenario = scenarios::find(name).expect("a scenario of that name");
    (0..20)
        .map(|seed| scenarios::run(scenario, algo, seed))
        .inspect(|o| {
            assert_eq!(
                o.report.violation_count,
                0,
                "{name} on {}: {:?}",
                o.algo.name(),
                o.report.violations
            )
        })
        .collect()
}

#[test]
fn user_of_the_day_stuck_without_the_coordinator_or_with_split_votes() {
    for o in outcomes("user-of-the-day", Algo::Coordinator) {
        // The coordinator decided the one offer it heard and told its
        // proposer; then it died, and the others can never learn.
        assert!(!o.terminated());
        assert_eq!(o.decided[1], Some("bob"));
        assert_eq!((o.decided[0], o.decided[3]), (None, None));
    }
    for o in outcomes("user-of-the-day", Algo::Majority) {
        // alice 2, bob 2, carol 1 of 5, and two voters dead: no majority ever.
        assert!(!o.terminated());
        assert!(o.decided.iter().all(Option::is_none), "{o:?}");
    }
    for o in outcomes("user-of-the-day", Algo::Paxos) {
        assert!(o.terminated(), "{}", o.describe());
        let winner = o.decided[0].expect("n0 decided");
        assert!(["alice", "bob", "carol"].contains(&winner));
        assert_eq!((o.decided[1], o.decided[3]), (Some(winner), Some(winner)));
    }
}

#[test]
fn order_cancellation_needs_more_than_a_coordinator_or_a_vote() {
    for algo in [Algo::Coordinator, Algo::Majority] {
        for o in outcomes("order-cancellation", algo) {
            assert!(!o.terminated(), "{}", o.describe());
            assert!(o.decided.iter().all(Option::is_none), "{}", o.describe());
        }
    }
    for o in outcomes("order-cancellation", Algo::Paxos) {
        // Exactly one of ship and cancel wins, and both parties learn which.
        assert!(o.terminated(), "{}", o.describe());
        let fate = o.decided[0].expect("the shipper learns the fate");
        assert!(fate == "ship" || fate == "cancel");
        assert_eq!(o.decided[1], Some(fate));
    }
}

#[test]
fn the_outcome_reads_as_a_line() {
    let s = scenarios::find("order-cancellation").unwrap();
    let line = scenarios::run(s, Algo::Majority, 0).describe();
    assert_eq!(
        line,
        "majority     stuck    n0 n1 never learn anything; n2 down for good"
    );
}

/// Every value decided in an outcome (at most one for a safe algorithm).
fn values(o: &Outcome) -> Vec<&'static str> {
    let mut v: Vec<&str> = o.decided.iter().flatten().copied().collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn a_paxos_duel_chooses_one_value_for_everyone() {
    for o in outcomes("paxos-duel", Algo::Paxos) {
        assert!(o.terminated(), "{}", o.describe());
        assert_eq!(values(&o).len(), 1, "{}", o.describe());
        assert!(o.decided.iter().all(Option::is_some), "{}", o.describe());
    }
}

#[test]
fn without_its_coordinator_the_coordinator_design_is_stuck() {
    for o in outcomes("coordinator-crash", Algo::Coordinator) {
        assert!(!o.terminated(), "{}", o.describe());
        assert!(values(&o).is_empty(), "{}", o.describe());
    }
    for o in outcomes("coordinator-crash", Algo::Paxos) {
        assert!(o.terminated(), "{}", o.describe());
        assert_eq!(values(&o).len(), 1);
    }
}

#[test]
fn a_three_three_race_and_its_last_voter() {
    // Paxos decides once the split heals, whoever voted what.
    for o in outcomes("three-three", Algo::Paxos) {
        assert!(o.terminated(), "{}", o.describe());
        assert_eq!(values(&o).len(), 1);
    }
    // Majority voting decides too, once n6 hears a vote: it votes for the
    // first value it hears of, and that value has four.
    for o in outcomes("three-three", Algo::Majority) {
        assert!(o.terminated(), "{}", o.describe());
        assert_eq!(values(&o).len(), 1, "{}", o.describe());
    }
    // With the last voter dead, 3-3 can never become 4: stuck for good, and
    // so is the coordinator design, whose coordinator it was.
    for algo in [Algo::Majority, Algo::Coordinator] {
        for o in outcomes("last-voter-crash", algo) {
            assert!(!o.terminated(), "{}", o.describe());
            assert!(values(&o).is_empty(), "{}", o.describe());
        }
    }
    for o in outcomes("last-voter-crash", Algo::Paxos) {
        assert!(o.terminated(), "{}", o.describe());
        assert_eq!(values(&o).len(), 1);
    }
}
