//! The seeds' write-once stories as fixed scenarios, not random seeds: the
//! same offers and the same failures handed to each write-once algorithm
//! (coordinator, majority vote, Paxos), to show which of them decides and
//! which gets stuck. All three are safe, so none ever decides two values;
//! what the failures take from the first two is the decision itself, or
//! every node but one learning it. (`synod sim --scenario NAME`.)

use crate::faults::{NodeFault, Schedule};
use crate::models::write_once::{Offer, WriteOnceModel};
use crate::report::RunReport;
use crate::runner::Algo;
use crate::sim::{SimConfig, Simulation};
use crate::FaultSet;
use synod_protocols::coordinator::CoordinatorNode;
use synod_protocols::failover::FailoverNode;
use synod_protocols::majority::MajorityNode;
use synod_protocols::paxos::PaxosNode;
use synod_protocols::{Instant, NodeId, MS};

/// The algorithms a scenario is run on.
pub const ALGOS: [Algo; 3] = [Algo::Coordinator, Algo::Majority, Algo::Paxos];

/// A story: who offers what, when, and what goes wrong.
pub struct Scenario {
    pub name: &'static str,
    /// One paragraph, for the command's output.
    pub story: &'static str,
    pub nodes: usize,
    /// (node, value's name, time).
    pub offers: &'static [(NodeId, &'static str, Instant)],
    pub schedule: fn() -> Schedule,
}

/// Node `node` crashes and never comes back.
pub(crate) fn crash_for_good(node: NodeId) -> NodeFault {
    NodeFault::Crash {
        node,
        power_loss: false,
        torn: false,
        restart_after: None,
    }
}

/// Every scenario, by name.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "user-of-the-day",
        story: "Five servers pick the user of the day. Three clients offer alice at n0, \
                bob at n1 and carol at n2 at once, while the network is split into \
                {n0 n3} {n1 n4} {n2} for a second; n2 crashes for good at 300 ms and \
                n4, the highest id, at 400 ms. Three servers are left, a majority.",
        nodes: 5,
        offers: &[(0, "alice", 0), (1, "bob", 0), (2, "carol", 0)],
        schedule: || Schedule {
            events: vec![
                (
                    0,
                    NodeFault::Partition {
                        groups: vec![vec![0, 3], vec![1, 4], vec![2]],
                        heal_after: 1_000 * MS,
                    },
                ),
                (300 * MS, crash_for_good(2)),
                (400 * MS, crash_for_good(4)),
            ],
            ..Schedule::default()
        },
    },
    Scenario {
        name: "order-cancellation",
        story: "Three servers hold an order's fate. The shipper offers ship at n0 and \
                the customer offers cancel at n1 at the same moment; n2, the highest \
                id, crashes for good before it hears either. Two servers are left, a \
                majority.",
        nodes: 3,
        offers: &[(0, "ship", 0), (1, "cancel", 0)],
        schedule: || Schedule {
            events: vec![(0, crash_for_good(2))],
            ..Schedule::default()
        },
    },
    Scenario {
        name: "paxos-duel",
        story: "Three servers, two proposers: red is offered at n0 and blue at n2 at the \
                same moment, and nothing fails. Their ballots duel; one value is \
                chosen, and every server learns the same one.",
        nodes: 3,
        offers: &[(0, "red", 0), (2, "blue", 0)],
        schedule: Schedule::default,
    },
    Scenario {
        name: "coordinator-crash",
        story: "Five servers; the one with the highest id, n4, coordinates. Red is \
                offered at n0 and blue at n1, and n4 crashes for good at once. Four \
                servers are left, a majority, but the coordinator is not among them.",
        nodes: 5,
        offers: &[(0, "red", 0), (1, "blue", 0)],
        schedule: || Schedule {
            events: vec![(0, crash_for_good(4))],
            ..Schedule::default()
        },
    },
    Scenario {
        name: "three-three",
        story: "Seven servers race red against blue. The network splits into {n0 n1 n2}, \
                which hears red, {n3 n4 n5}, which hears blue, and n6 alone; after \
                300 ms it heals and n6, the last voter, breaks the 3-3 tie.",
        nodes: 7,
        offers: &[(0, "red", 0), (3, "blue", 0)],
        schedule: || Schedule {
            events: vec![(0, three_three_split())],
            ..Schedule::default()
        },
    },
    Scenario {
        name: "last-voter-crash",
        story: "The same 3-3 race on seven servers, but n6, the last voter, crashes for \
                good at 200 ms, before the network heals: six servers are left, more \
                than a majority, and three of them voted each way.",
        nodes: 7,
        offers: &[(0, "red", 0), (3, "blue", 0)],
        schedule: || Schedule {
            events: vec![(0, three_three_split()), (200 * MS, crash_for_good(6))],
            ..Schedule::default()
        },
    },
    Scenario {
        name: "split-brain",
        story: "Five servers; n4, the highest id, coordinates. At 100 ms the network \
                splits into {n3 n4} and {n0 n1 n2} for 600 ms; at 300 ms blue is \
                offered at n3 and red at n1. A design that replaces a silent \
                coordinator by timeout (`synod story split-brain`) gets one \
                coordinator per side and decides both; the safe designs decide one \
                value or wait.",
        nodes: 5,
        offers: &[(3, "blue", 300 * MS), (1, "red", 300 * MS)],
        schedule: || Schedule {
            events: vec![(
                100 * MS,
                NodeFault::Partition {
                    groups: vec![vec![3, 4], vec![0, 1, 2]],
                    heal_after: 600 * MS,
                },
            )],
            ..Schedule::default()
        },
    },
    Scenario {
        name: "majority-race",
        story: "Seven servers, nothing fails: red is offered at n0 and blue at n6 at \
                the same moment, and each server votes for the first offer that \
                reaches it. Whichever reaches four votes first is decided.",
        nodes: 7,
        offers: &[(0, "red", 0), (6, "blue", 0)],
        schedule: Schedule::default,
    },
];

/// Seven nodes split 3 | 3 | 1 for 300 ms.
fn three_three_split() -> NodeFault {
    NodeFault::Partition {
        groups: vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]],
        heal_after: 300 * MS,
    }
}

/// `text` (a node's description) with the write-once model's value numbers
/// replaced by the scenario's names for them: `decided 1` reads `decided
/// blue`. Only numbers right after the words that name a value change.
fn name_values(text: &str, names: &[&str]) -> String {
    let mut out = Vec::new();
    let mut prev = "";
    for word in text.split(' ') {
        let bare = word.trim_end_matches([',', ';']);
        let named = matches!(prev, "decided" | "accepted" | "proposes" | "voted" | "for")
            .then(|| bare.parse::<usize>().ok())
            .flatten()
            .and_then(|i| names.get(i));
        match named {
            Some(name) => out.push(format!("{name}{}", &word[bare.len()..])),
            None => out.push(word.to_string()),
        }
        prev = word;
    }
    out.join(" ")
}

/// Looks a scenario up by name.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// How one algorithm fared in a scenario.
#[derive(Debug)]
pub struct Outcome {
    pub algo: Algo,
    /// Per node: the value it decided (by name), if any.
    pub decided: Vec<Option<&'static str>>,
    /// Per node: when it learned its value (simulated time).
    pub decided_at: Vec<Option<Instant>>,
    /// Nodes that were down for good at the end.
    pub down: Vec<NodeId>,
    pub report: RunReport,
}

impl Outcome {
    /// Whether every node that is up decided.
    pub fn terminated(&self) -> bool {
        self.report.terminated
    }

    /// One line: the verdict and who learned what.
    pub fn describe(&self) -> String {
        let names = |ids: Vec<usize>| {
            ids.iter()
                .map(|i| format!("n{i}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut values: Vec<&str> = self.decided.iter().flatten().copied().collect();
        values.sort_unstable();
        values.dedup();
        let live = |i: &usize| !self.down.contains(&(*i as NodeId));
        let undecided: Vec<usize> = (0..self.decided.len())
            .filter(|i| self.decided[*i].is_none() && live(i))
            .collect();
        let verdict = if self.report.violation_count > 0 {
            format!("VIOLATED {:?}", self.report.violations)
        } else if self.terminated() {
            "decided".into()
        } else {
            "stuck".into()
        };
        let mut line = format!("{:<12} {verdict:<8}", self.algo.name());
        for v in &values {
            let who: Vec<usize> = (0..self.decided.len())
                .filter(|i| self.decided[*i] == Some(*v))
                .collect();
            let last = who.iter().filter_map(|i| self.decided_at[*i]).max();
            line += &format!(" {v} on {}", names(who));
            if let Some(t) = last {
                line += &format!(" by {} ms", t / MS);
            }
            line += ";";
        }
        if !undecided.is_empty() {
            line += &format!(" {} never learn", names(undecided));
            line += if values.is_empty() {
                " anything;"
            } else {
                " it;"
            };
        }
        if !self.down.is_empty() {
            let down: Vec<usize> = self.down.iter().map(|d| *d as usize).collect();
            line += &format!(" {} down for good", names(down));
        }
        line.trim_end_matches(';').to_string()
    }
}

/// Runs `scenario` on `algo` from `seed` (which drives latencies and the
/// nodes' own choices; the offers and failures are the scenario's).
pub fn run(scenario: &Scenario, algo: Algo, seed: u64) -> Outcome {
    run_with(scenario, algo, seed, false)
}

/// The same, recording the run's timeline for a picture (values by name).
pub fn run_drawn(scenario: &Scenario, algo: Algo, seed: u64) -> Outcome {
    let mut outcome = run_with(scenario, algo, seed, true);
    let names: Vec<&str> = scenario.offers.iter().map(|o| o.1).collect();
    if let Some(t) = outcome.report.timeline.as_mut() {
        for m in &mut t.marks {
            if let crate::timeline::Mark::State { text, .. } = m {
                *text = name_values(text, &names);
            }
        }
    }
    outcome
}

fn run_with(scenario: &Scenario, algo: Algo, seed: u64, timeline: bool) -> Outcome {
    let n = scenario.nodes;
    let offers: Vec<Offer> = scenario
        .offers
        .iter()
        .enumerate()
        .map(|(i, (node, _, at))| Offer {
            node: *node,
            value: i as u64,
            at: Some(*at),
        })
        .collect();
    let schedule = (scenario.schedule)();
    let mut down: Vec<NodeId> = schedule
        .events
        .iter()
        .filter_map(|(_, f)| match f {
            NodeFault::Crash {
                node,
                restart_after: None,
                ..
            } => Some(*node),
            _ => None,
        })
        .collect();
    down.sort_unstable();
    let mut cfg = SimConfig::new(n, FaultSet::NONE);
    cfg.timeline = timeline;
    macro_rules! go {
        ($boot:expr) => {{
            let model = WriteOnceModel::with_offers(n, offers, $boot);
            let (report, model) =
                Simulation::with_schedule(cfg, seed, model, schedule).run_keep_model(seed);
            (
                report,
                model.decisions().to_vec(),
                model.decision_times().to_vec(),
            )
        }};
    }
    let (report, decisions, decided_at) = match algo {
        Algo::Coordinator => go!(move |id, disk: &_, _| CoordinatorNode::new(id, n, disk)),
        Algo::Failover => go!(move |id, disk: &_, _| FailoverNode::new(id, n, disk)),
        Algo::Majority => go!(move |id, disk: &_, _| MajorityNode::new(id, n, disk)),
        Algo::Paxos => go!(move |id, disk: &_, s| PaxosNode::new(id, n, disk, s)),
        other => panic!("{} is not a write-once algorithm", other.name()),
    };
    Outcome {
        algo,
        decided: decisions
            .iter()
            .map(|d| d.map(|i| scenario.offers[i as usize].1))
            .collect(),
        decided_at,
        down,
        report,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_named_where_a_description_names_a_value() {
        let names = ["red", "blue"];
        assert_eq!(name_values("decided 1", &names), "decided blue");
        assert_eq!(
            name_values("prepares 2.0, accepted 0 at 1.2", &names),
            "prepares 2.0, accepted red at 1.2"
        );
        assert_eq!(
            name_values("voted 1; of 7: 3 for 0, 2 for 1", &names),
            "voted blue; of 7: 3 for red, 2 for blue"
        );
        assert_eq!(name_values("promised 1.2", &names), "promised 1.2");
    }
}
