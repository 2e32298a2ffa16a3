//! The seeds' stories as named runs to look at (`synod story NAME --html F`):
//! each is one algorithm under fixed faults, recorded for a picture. The
//! write-once ones are [`crate::scenarios`] shown on the algorithm they are
//! about; the Raft ones run the Raft key-value model with one client.

use crate::faults::{NodeFault, Schedule};
use crate::models::commit::CommitModel;
use crate::models::raft::RaftModel;
use crate::report::RunReport;
use crate::runner::Algo;
use crate::scenarios::{self, crash_for_good};
use crate::sim::{SimConfig, Simulation};
use crate::FaultSet;
use synod_protocols::commit::{three_pc::ThreePcNode, two_pc::TwoPcNode, Layout, VotePlan};
use synod_protocols::raft::{Disk, KvNode, RaftConfig};
use synod_protocols::{NodeId, MS};

/// What a story runs.
pub enum Plot {
    /// A write-once scenario, on one algorithm.
    WriteOnce { scenario: &'static str, algo: Algo },
    /// Raft with `nodes` voters and one client, under `schedule`.
    Raft {
        nodes: usize,
        schedule: fn() -> Schedule,
    },
    /// Atomic commit (`algo`: 2PC or 3PC): n0 coordinates, n1..n3 take
    /// part and always vote yes, under `schedule`.
    Commit {
        algo: Algo,
        schedule: fn() -> Schedule,
    },
}

pub struct Story {
    pub name: &'static str,
    /// One line: what to look for in the picture.
    pub about: &'static str,
    pub plot: Plot,
}

/// Every story, in the order a reader meets them.
pub const STORIES: &[Story] = &[
    Story {
        name: "coordinator-crash",
        about: "One coordinator decides for everyone; when it crashes, nobody can decide.",
        plot: Plot::WriteOnce {
            scenario: "coordinator-crash",
            algo: Algo::Coordinator,
        },
    },
    Story {
        name: "three-three",
        about: "Majority voting on seven nodes splits 3-3 and waits on the seventh.",
        plot: Plot::WriteOnce {
            scenario: "three-three",
            algo: Algo::Majority,
        },
    },
    Story {
        name: "last-voter-crash",
        about: "The seventh voter crashes: 3-3 can never become 4, and nothing is decided.",
        plot: Plot::WriteOnce {
            scenario: "last-voter-crash",
            algo: Algo::Majority,
        },
    },
    Story {
        name: "paxos-duel",
        about: "Two Paxos proposers duel with ballots; exactly one value is chosen.",
        plot: Plot::WriteOnce {
            scenario: "paxos-duel",
            algo: Algo::Paxos,
        },
    },
    Story {
        name: "paxos-last-voter",
        about: "The same lost voter does not stop Paxos: any majority will do.",
        plot: Plot::WriteOnce {
            scenario: "last-voter-crash",
            algo: Algo::Paxos,
        },
    },
    Story {
        name: "user-of-the-day",
        about: "Three offers, a three-way split and two crashes: Paxos still decides.",
        plot: Plot::WriteOnce {
            scenario: "user-of-the-day",
            algo: Algo::Paxos,
        },
    },
    Story {
        name: "leader",
        about: "Raft: an election, then a leader and four followers agreeing on every write.",
        plot: Plot::Raft {
            nodes: 5,
            schedule: Schedule::default,
        },
    },
    Story {
        name: "split",
        about: "Raft: the network splits {n0 n1} | {n2 n3 n4}; only the three can commit.",
        plot: Plot::Raft {
            nodes: 5,
            schedule: || Schedule {
                events: vec![(
                    300 * MS,
                    NodeFault::Partition {
                        groups: vec![vec![0, 1], vec![2, 3, 4]],
                        heal_after: 1_000 * MS,
                    },
                )],
                ..Schedule::default()
            },
        },
    },
    Story {
        name: "raft-election",
        about: "Raft: two of five crash and come back; the others elect and go on.",
        plot: Plot::Raft {
            nodes: 5,
            schedule: || Schedule {
                events: vec![(300 * MS, crash(0, 500)), (300 * MS, crash(1, 700))],
                ..Schedule::default()
            },
        },
    },
    Story {
        name: "2pc-blocks",
        about: "2PC: the coordinator dies after the votes; yes-voters wait in doubt for ever.",
        plot: Plot::Commit {
            algo: Algo::TwoPc,
            schedule: || Schedule {
                events: vec![(COORDINATOR_DIES * MS + MS / 4, crash_for_good(0))],
                ..Schedule::default()
            },
        },
    },
    Story {
        name: "3pc-survives",
        about: "3PC: the same coordinator crash; the participants finish without it.",
        plot: Plot::Commit {
            algo: Algo::ThreePc,
            schedule: || Schedule {
                events: vec![(COORDINATOR_DIES * MS + MS / 4, crash_for_good(0))],
                ..Schedule::default()
            },
        },
    },
];

/// The commit stories' first transaction begins at this many ms.
const BEGIN: u64 = 50;
/// When their coordinator dies: just after it asked for the votes (every
/// request is on the wire), before any vote is back.
const COORDINATOR_DIES: u64 = BEGIN;

fn crash(node: NodeId, back_after_ms: u64) -> NodeFault {
    NodeFault::Crash {
        node,
        power_loss: false,
        torn: false,
        restart_after: Some(back_after_ms * MS),
    }
}

pub fn find(name: &str) -> Option<&'static Story> {
    STORIES.iter().find(|s| s.name == name)
}

/// Runs `story` from `seed`, with its timeline recorded.
pub fn run(story: &Story, seed: u64) -> RunReport {
    match &story.plot {
        Plot::WriteOnce { scenario, algo } => {
            let s = scenarios::find(scenario).expect("a story names a scenario that exists");
            scenarios::run_drawn(s, *algo, seed).report
        }
        Plot::Raft { nodes, schedule } => {
            let n = *nodes;
            let model = RaftModel::new(n, 1, move |id, disk: &Disk, seed| {
                let peers: Vec<NodeId> = (0..n as NodeId).collect();
                KvNode::new(RaftConfig::new(id, peers), disk, seed)
            });
            let mut cfg = SimConfig::new(n, FaultSet::NONE);
            cfg.f = (n - 1) / 2;
            cfg.timeline = true;
            Simulation::with_schedule(cfg, seed, model, schedule()).run(seed)
        }
        Plot::Commit { algo, schedule } => {
            let layout = Layout::new(4, 3);
            let plan = VotePlan::all_yes();
            let mut cfg = SimConfig::new(4, FaultSet::NONE);
            cfg.f = 1;
            cfg.timeline = true;
            match algo {
                Algo::TwoPc => {
                    let model = CommitModel::new(layout, move |id, disk: &_, _| {
                        TwoPcNode::new(id, layout, plan, disk)
                    })
                    .starting_at(BEGIN * MS);
                    Simulation::with_schedule(cfg, seed, model, schedule()).run(seed)
                }
                _ => {
                    let model = CommitModel::new(layout, move |id, disk: &_, _| {
                        ThreePcNode::new(id, layout, plan, disk)
                    })
                    .starting_at(BEGIN * MS);
                    Simulation::with_schedule(cfg, seed, model, schedule()).run(seed)
                }
            }
        }
    }
}
