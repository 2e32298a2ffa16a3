//! synod's protocols as pure, deterministic, sans-IO state machines.
//!
//! Nothing in this crate performs I/O, reads a clock, spawns a thread or uses a
//! global random number generator: see [`sansio`] for the boundary and the
//! persist-then-send contract every driver must honour.
//!
//! | module | what it decides |
//! | --- | --- |
//! | [`write_once`] | the write-once variable's API, and local/shared versions |
//! | [`coordinator`] | a write-once variable decided by one coordinator (bully rule) |
//! | [`failover`] | the coordinator with failover by timeout: unsafe on purpose (split brain) |
//! | [`majority`] | a write-once variable decided by majority-rules voting |
//! | [`paxos`] | a write-once variable decided by the Paxos synod algorithm |
//! | [`commit`] | atomic commit of a transaction: 2PC, 3PC and Paxos Commit |
//! | [`kv`] | the replicated key-value store's requests, results and state machine |
//! | [`raft`] | Raft consensus (sans-IO core) and a replicated key-value node on it |
//! | [`multipaxos`] | Multi-Paxos: the log as write-once slots, and the same key-value node on it |

pub mod commit;
pub mod coordinator;
pub mod failover;
pub mod kv;
pub mod majority;
pub mod multipaxos;
pub mod paxos;
pub mod raft;
pub mod sansio;
pub mod write_once;

pub use sansio::{Envelope, Instant, Node, NodeId, NodeOutput, Output, MS};
