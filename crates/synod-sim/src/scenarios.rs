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

fn crash_for_good(node: NodeId) -> NodeFault {
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
];

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
    let cfg = SimConfig::new(n, FaultSet::NONE);
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
