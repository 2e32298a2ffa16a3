//! Every story tells its tale whatever the seed: the faults are the story's,
//! the seed only moves latencies and the nodes' own choices.

use synod_sim::scenarios::{self, Outcome};
use synod_sim::stories::{self, Ending, FIGURE_8_BROKEN, STORIES};
use synod_sim::Algo;

const SEEDS: std::ops::Range<u64> = 0..20;

#[test]
fn every_story_ends_as_told_for_every_seed() {
    assert!(STORIES.len() >= 12, "the seeds' diagrams need at least 12");
    for story in STORIES {
        for seed in SEEDS {
            let report = stories::run(story, seed);
            assert_eq!(
                Ending::of(&report),
                story.ends,
                "{} seed {seed}: {:?}",
                story.name,
                report.violations
            );
            let timeline = report.timeline.expect("a story records its timeline");
            assert!(
                timeline.notes.starts_with(
                    &story
                        .notes
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                ),
                "{}",
                story.name
            );
        }
    }
}

fn decided(o: &Outcome, nodes: &[usize]) -> Vec<Option<&'static str>> {
    nodes.iter().map(|&n| o.decided[n]).collect()
}

/// The failover design's two coordinators decide one value each, and the
/// agreement checker says so; the safe designs given the same split do not.
#[test]
fn split_brain_decides_two_values_and_only_there() {
    let scenario = scenarios::find("split-brain").unwrap();
    for seed in SEEDS {
        let o = scenarios::run(scenario, Algo::Failover, seed);
        assert_eq!(
            decided(&o, &[0, 1, 2]),
            [Some("red"); 3],
            "{}",
            o.describe()
        );
        assert_eq!(decided(&o, &[3, 4]), [Some("blue"); 2], "{}", o.describe());
        assert!(
            o.report
                .violations
                .iter()
                .any(|v| v.property == "agreement"),
            "{:?}",
            o.report.violations
        );
        for algo in scenarios::ALGOS {
            let o = scenarios::run(scenario, algo, seed);
            assert_eq!(o.report.violation_count, 0, "{}", o.describe());
        }
    }
}

/// Seven voters and two values: one value gets four votes and everyone
/// learns it.
#[test]
fn a_majority_race_ends_with_one_winner() {
    let scenario = scenarios::find("majority-race").unwrap();
    for seed in SEEDS {
        let o = scenarios::run(scenario, Algo::Majority, seed);
        assert!(o.terminated(), "{}", o.describe());
        let first = o.decided[0].expect("n0 decided");
        assert!(
            o.decided.iter().all(|d| *d == Some(first)),
            "{}",
            o.describe()
        );
    }
}

/// n1, pre-committed on the coordinator's side, commits; n2 and n3, cut
/// off while uncertain, abort.
#[test]
fn a_3pc_partition_splits_the_outcome() {
    let story = stories::find("3pc-partition").unwrap();
    for seed in SEEDS {
        let report = stories::run(story, seed);
        let split: Vec<_> = report
            .violations
            .iter()
            .filter(|v| v.property == "atomicity" && v.detail.starts_with("txn 0:"))
            .map(|v| v.node)
            .collect();
        assert_eq!(split, [Some(2), Some(3)], "{:?}", report.violations);
    }
}

/// With the counting rule broken, Figure 8 loses an entry that was
/// committed and applied: a checker other than the one watching the rule
/// itself sees the harm. With the rule kept, nothing is lost.
#[test]
fn figure_8_loses_a_committed_entry_only_when_counting() {
    let story = stories::find("raft-figure-8").unwrap();
    for seed in SEEDS {
        let report = stories::run(story, seed);
        let harm: Vec<_> = report
            .violations
            .iter()
            .filter(|v| v.property != "commit_rule")
            .collect();
        if FIGURE_8_BROKEN {
            assert!(!harm.is_empty(), "seed {seed}: {:?}", report.violations);
        } else {
            assert_eq!(report.violation_count, 0, "{:?}", report.violations);
            assert!(report.terminated);
        }
    }
}
