//! synod's deterministic simulator and property checkers.
//!
//! # The simulation model
//!
//! A **run** simulates one cluster of `n` nodes of one protocol from one seed. All
//! randomness — the fault schedule, message latencies and losses, each node's own
//! random choices, the clients' choices — is drawn from ChaCha streams derived from
//! that seed, and time is virtual (microseconds), so a run replays bit for bit.
//!
//! A run has two phases:
//!
//! * the **fault phase** (2 s of virtual time by default): faults drawn from the
//!   seed happen — crashes (volatile state lost, written data kept), restarts,
//!   power losses (unsynced writes lost, possibly torn), partitions into arbitrary
//!   groups and their healing, message loss, duplication, reordering, slow nodes
//!   and slow messages. With `restart` in the fault set any number of nodes may be
//!   down at once (crash-recovery); `crash` without it is crash-stop: at most f
//!   nodes crash and none comes back. Safety must hold throughout; nothing is
//!   promised about progress.
//! * the **quiet phase**: the network heals, no new fault starts, and every node
//!   restarts except at most **f** that stay down for good, where f is the number of
//!   failures the algorithm claims to tolerate (⌊(n−1)/2⌋ for majority-quorum
//!   algorithms). The same schedule is handed to every algorithm for a given seed,
//!   so an algorithm that is not fault-tolerant visibly gets stuck where Paxos does
//!   not. A fault-tolerant algorithm must reach its liveness goal (every up node
//!   decides) within a bound after the quiet phase begins; a run that does not is
//!   **stuck**.
//!
//! Nodes are the protocols' own sans-IO state machines ([`synod_protocols::Node`]).
//! The simulator honours their ordering contract: a step's writes are synced
//! (taking a little virtual time, and shared by steps that queue behind it — group
//! commit) before its messages leave and its events are reported.
//!
//! Checkers live in the per-algorithm [`Model`]s ([`models`]) and in
//! [`linearizability`]; every violation carries the seed, the property and the
//! virtual time, and `--trace` replays the run event by event.
//!
//! # Glossary
//!
//! | the seeds say | the literature says |
//! | --- | --- |
//! | coherence (all nodes end with the same value) | agreement |
//! | conflict resolution (one proposal wins; the value was proposed) | validity |
//! | no-decoherence (a decided value never changes) | stability / integrity |
//! | the algorithm eventually decides | termination (liveness) |
//! | fault tolerance | liveness with up to f crashed nodes |

pub mod faults;
pub mod history;
pub mod linearizability;
pub mod models;
pub mod picture;
pub mod report;
pub mod runner;
pub mod scenarios;
pub mod sim;
pub mod sim_write_once;
pub mod stories;
pub mod timeline;

pub use faults::{Fault, FaultSet};
pub use report::{RunReport, Summary, Violation};
pub use runner::{run_batch, run_batch_parallel, run_one, Algo, RunSpec};
pub use sim::{Ctl, DriverBugs, Model, SimConfig, Simulation};
