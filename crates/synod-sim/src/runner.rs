//! Runs one algorithm over many seeds: what `synod sim` calls.

use crate::faults::{Fault, FaultSet};
use crate::models::commit::{self, CommitModel};
use crate::models::etcd::engine::{OnMultiPaxos, OnRaft};
use crate::models::etcd::{self, EtcdModel};
use crate::models::multipaxos;
use crate::models::raft;
use crate::models::raft_checks;
use crate::models::write_once::{self, WriteOnceModel};
use crate::report::{RunReport, Summary};
use crate::sim::{SimConfig, Simulation};
use std::fmt;
use std::str::FromStr;
use synod_protocols::commit::{
    paxos_commit::PaxosCommitNode, three_pc::ThreePcNode, two_pc::TwoPcNode, Layout, VotePlan,
};
use synod_protocols::{
    coordinator::CoordinatorNode, failover::FailoverNode, majority::MajorityNode, paxos::PaxosNode,
};

/// The consensus engine under the service's replicas (`--algo etcd`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// What the service runs.
    #[default]
    Raft,
    MultiPaxos,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Raft => "raft",
            EngineKind::MultiPaxos => "multipaxos",
        }
    }
}

impl FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<EngineKind, String> {
        [EngineKind::Raft, EngineKind::MultiPaxos]
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown engine {s:?} (raft, multipaxos)"))
    }
}

/// The algorithms `synod sim` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    Coordinator,
    /// The coordinator with failover by timeout: unsafe on purpose, to show
    /// split brain (`synod_protocols::failover`).
    Failover,
    Majority,
    Paxos,
    Raft,
    /// The key-value store on the Multi-Paxos log.
    MultiPaxos,
    TwoPc,
    ThreePc,
    PaxosCommit,
    /// The service's replicated store (`synod_kv::replica::Replica`).
    Etcd,
}

impl Algo {
    pub const ALL: &'static [Algo] = &[
        Algo::Coordinator,
        Algo::Failover,
        Algo::Majority,
        Algo::Paxos,
        Algo::Raft,
        Algo::MultiPaxos,
        Algo::TwoPc,
        Algo::ThreePc,
        Algo::PaxosCommit,
        Algo::Etcd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algo::Coordinator => "coordinator",
            Algo::Failover => "failover",
            Algo::Majority => "majority",
            Algo::Paxos => "paxos",
            Algo::TwoPc => "2pc",
            Algo::ThreePc => "3pc",
            Algo::PaxosCommit => "paxos-commit",
            Algo::Raft => "raft",
            Algo::MultiPaxos => "multipaxos",
            Algo::Etcd => "etcd",
        }
    }

    /// The safety properties checked for this algorithm (each gets a
    /// `<property>_violations` count in the JSON summary, zero included).
    pub fn properties(self) -> Vec<&'static str> {
        match self {
            Algo::Coordinator | Algo::Failover | Algo::Majority | Algo::Paxos => {
                write_once::PROPERTIES.to_vec()
            }
            Algo::TwoPc | Algo::ThreePc | Algo::PaxosCommit => commit::PROPERTIES.to_vec(),
            Algo::Raft => [raft_checks::PROPERTIES, raft::PROPERTIES].concat(),
            Algo::MultiPaxos => multipaxos::PROPERTIES.to_vec(),
            Algo::Etcd => [raft_checks::PROPERTIES, etcd::PROPERTIES].concat(),
        }
    }

    /// The faults of `faults` this algorithm's model can exercise: torn
    /// writes and corruption reach only the models kept on the real WAL
    /// (`raft`, `etcd`); the others' disks are records that are written
    /// whole or not at all, so a summary of theirs does not claim them.
    pub fn exercised(self, faults: FaultSet) -> FaultSet {
        match self {
            Algo::Raft | Algo::Etcd => faults,
            _ => faults.without(Fault::TornWrite).without(Fault::Corruption),
        }
    }

    /// The write-once algorithms (they use `RunSpec::proposers`).
    pub fn is_write_once(self) -> bool {
        matches!(
            self,
            Algo::Coordinator | Algo::Failover | Algo::Majority | Algo::Paxos
        )
    }

    /// The atomic-commit algorithms (they use `RunSpec::participants`).
    pub fn is_commit(self) -> bool {
        matches!(self, Algo::TwoPc | Algo::ThreePc | Algo::PaxosCommit)
    }

    /// Extra counters this algorithm reports.
    pub fn counters(self) -> Vec<&'static str> {
        match self {
            Algo::Coordinator | Algo::Failover | Algo::Majority | Algo::Paxos => Vec::new(),
            Algo::TwoPc | Algo::ThreePc | Algo::PaxosCommit => commit::COUNTERS.to_vec(),
            Algo::Raft => [raft::COUNTERS, raft_checks::COUNTERS].concat(),
            Algo::MultiPaxos => multipaxos::COUNTERS.to_vec(),
            Algo::Etcd => [etcd::COUNTERS, raft_checks::COUNTERS].concat(),
        }
    }
}

impl fmt::Display for Algo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algo {
    type Err = String;
    fn from_str(s: &str) -> Result<Algo, String> {
        Algo::ALL
            .iter()
            .copied()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Algo::ALL.iter().map(|a| a.name()).collect();
                format!(
                    "unknown algorithm {s:?}; expected one of: {}",
                    names.join(", ")
                )
            })
    }
}

/// Everything about a batch of runs except the seed.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub algo: Algo,
    pub nodes: usize,
    pub proposers: usize,
    /// Participants per transaction, for the atomic-commit algorithms.
    pub participants: usize,
    pub faults: FaultSet,
    pub trace: bool,
    /// Record the run's timeline, for [`crate::picture`].
    pub timeline: bool,
    /// The engine under the replicas (`--algo etcd` only).
    pub engine: EngineKind,
}

impl RunSpec {
    pub fn new(algo: Algo, nodes: usize, faults: FaultSet) -> RunSpec {
        RunSpec {
            algo,
            nodes,
            proposers: 3.min(nodes),
            participants: 3,
            faults,
            trace: false,
            timeline: false,
            engine: EngineKind::Raft,
        }
    }

    /// The algorithm's name, with the engine when it is not the default.
    pub fn name(&self) -> String {
        match self.engine {
            EngineKind::Raft => self.algo.name().to_string(),
            e => format!("{} --engine {}", self.algo.name(), e.name()),
        }
    }

    /// The safety properties checked (see [`Algo::properties`]).
    pub fn properties(&self) -> Vec<&'static str> {
        match (self.algo, self.engine) {
            (Algo::Etcd, EngineKind::MultiPaxos) => {
                [etcd::engine::MULTIPAXOS_PROPERTIES, etcd::PROPERTIES].concat()
            }
            (algo, _) => algo.properties(),
        }
    }

    /// Extra counters reported (see [`Algo::counters`]).
    pub fn counters(&self) -> Vec<&'static str> {
        match (self.algo, self.engine) {
            (Algo::Etcd, EngineKind::MultiPaxos) => {
                [etcd::COUNTERS, etcd::engine::MULTIPAXOS_COUNTERS].concat()
            }
            (algo, _) => algo.counters(),
        }
    }

    /// The faults exercised (see [`Algo::exercised`]): on Multi-Paxos the
    /// replicas' disks are the engine's records, not the WAL.
    pub fn exercised(&self) -> FaultSet {
        match self.engine {
            EngineKind::Raft => self.algo.exercised(self.faults),
            EngineKind::MultiPaxos => Algo::MultiPaxos.exercised(self.faults),
        }
    }

    pub fn config(&self) -> SimConfig {
        let mut cfg = SimConfig::new(self.nodes, self.faults);
        cfg.trace = self.trace;
        cfg.timeline = self.timeline;
        cfg
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.nodes == 0 {
            return Err("--nodes must be at least 1".into());
        }
        if self.nodes > 64 {
            return Err(format!(
                "--nodes {} is more than the simulator supports (64)",
                self.nodes
            ));
        }
        if self.engine != EngineKind::Raft && self.algo != Algo::Etcd {
            return Err(format!(
                "--engine {} is for --algo etcd (the service's replicas); --algo {} has its own",
                self.engine.name(),
                self.algo
            ));
        }
        if self.algo.is_write_once() && (self.proposers == 0 || self.proposers > self.nodes) {
            return Err(format!(
                "--proposers must be between 1 and --nodes ({}), not {}",
                self.nodes, self.proposers
            ));
        }
        if self.algo.is_commit() && (self.participants == 0 || self.participants + 1 > self.nodes) {
            return Err(format!(
                "--participants must be between 1 and --nodes minus one ({}): node 0 is the coordinator, nodes 1..=K the participants; got {}",
                self.nodes.saturating_sub(1),
                self.participants
            ));
        }
        Ok(())
    }
}

/// Runs the algorithm once with `seed`.
pub fn run_one(spec: &RunSpec, seed: u64) -> RunReport {
    let cfg = spec.config();
    let n = spec.nodes;
    match spec.algo {
        Algo::Coordinator => {
            let model = WriteOnceModel::new(n, spec.proposers, move |id, disk: &_, _seed| {
                CoordinatorNode::new(id, n, disk)
            });
            Simulation::new(cfg, seed, model).run(seed)
        }
        Algo::Failover => {
            let model = WriteOnceModel::new(n, spec.proposers, move |id, disk: &_, _seed| {
                FailoverNode::new(id, n, disk)
            });
            Simulation::new(cfg, seed, model).run(seed)
        }
        Algo::Majority => {
            let model = WriteOnceModel::new(n, spec.proposers, move |id, disk: &_, _seed| {
                MajorityNode::new(id, n, disk)
            });
            Simulation::new(cfg, seed, model).run(seed)
        }
        Algo::Paxos => {
            let model = WriteOnceModel::new(n, spec.proposers, move |id, disk: &_, seed| {
                PaxosNode::new(id, n, disk, seed)
            });
            Simulation::new(cfg, seed, model).run(seed)
        }
        Algo::Raft => {
            Simulation::new(raft::sim_config(spec), seed, raft::standard_model(n)).run(seed)
        }
        Algo::MultiPaxos => {
            let model = multipaxos::standard_model(n);
            Simulation::new(multipaxos::sim_config(spec), seed, model).run(seed)
        }
        Algo::Etcd => match spec.engine {
            EngineKind::Raft => {
                let model = EtcdModel::<OnRaft>::new(n, 3).with_spares(etcd::SPARES);
                Simulation::new(etcd::sim_config(spec), seed, model).run(seed)
            }
            EngineKind::MultiPaxos => {
                let model = EtcdModel::<OnMultiPaxos>::new(n, 3).with_spares(etcd::SPARES);
                Simulation::new(etcd::sim_config(spec), seed, model).run(seed)
            }
        },
        Algo::TwoPc | Algo::ThreePc | Algo::PaxosCommit => {
            // Node 0 coordinates, nodes 1..=k participate; the votes come from the seed.
            let layout = Layout::new(n, spec.participants);
            let plan = VotePlan::new(seed);
            match spec.algo {
                Algo::TwoPc => {
                    let model = CommitModel::new(layout, move |id, disk: &_, _seed| {
                        TwoPcNode::new(id, layout, plan, disk)
                    });
                    Simulation::new(cfg, seed, model).run(seed)
                }
                Algo::ThreePc => {
                    let model = CommitModel::new(layout, move |id, disk: &_, _seed| {
                        ThreePcNode::new(id, layout, plan, disk)
                    });
                    Simulation::new(cfg, seed, model).run(seed)
                }
                _ => {
                    let model = CommitModel::new(layout, move |id, disk: &_, seed| {
                        PaxosCommitNode::new(id, layout, plan, disk, seed)
                    });
                    Simulation::new(cfg, seed, model).run(seed)
                }
            }
        }
    }
}

/// Runs seeds `first_seed..first_seed + runs`, calling `progress` after each run.
pub fn run_batch(
    spec: &RunSpec,
    first_seed: u64,
    runs: u64,
    mut progress: impl FnMut(&RunReport),
) -> Summary {
    let mut summary = Summary::new(
        &spec.name(),
        spec.nodes,
        spec.exercised().to_string(),
        first_seed,
        &spec.properties(),
        &spec.counters(),
    );
    for seed in first_seed..first_seed.saturating_add(runs) {
        let report = run_one(spec, seed);
        summary.add(&report);
        progress(&report);
    }
    summary
}

/// Like [`run_batch`], on `jobs` threads. Each thread takes a contiguous range of
/// seeds and the partial summaries are merged in seed order, so the result is
/// identical to a single-threaded batch (only the order of `progress` calls
/// differs).
pub fn run_batch_parallel(
    spec: &RunSpec,
    first_seed: u64,
    runs: u64,
    jobs: usize,
    progress: &(dyn Fn(&RunReport) + Sync),
) -> Summary {
    let jobs = (jobs.max(1) as u64).min(runs.max(1));
    if jobs == 1 {
        return run_batch(spec, first_seed, runs, progress);
    }
    let chunk = runs.div_ceil(jobs);
    let parts: Vec<Summary> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs)
            .map(|j| {
                let lo = first_seed + j * chunk;
                let n = chunk.min(runs.saturating_sub(j * chunk));
                s.spawn(move || run_batch(spec, lo, n, progress))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    let mut parts = parts.into_iter();
    let mut total = parts.next().expect("at least one job");
    for p in parts {
        total.merge(p);
    }
    total
}
