//! etcd's key-value data model as a deterministic state machine.
//!
//! This is what synod's Raft log replicates for the etcd-compatible service: a
//! [`Store`] to which every replica applies the same [`Command`]s in log order.
//! It keeps the semantics etcd clients rely on:
//!
//! * a cluster-wide **revision**, +1 per write transaction that changes
//!   something; every key records its `create_revision`, `mod_revision` and
//!   `version`;
//! * **ranges** `[key, range_end)` with etcd's conventions (empty end: one key;
//!   end `\0`: everything from `key` on), limits, sorting, filters, and reads at
//!   any revision not yet compacted;
//! * **transactions**: comparisons, then one branch of puts, deletes, ranges and
//!   nested transactions, applied atomically under one revision; a branch may
//!   not write a key twice;
//! * **leases**: keys attached to a lease are deleted when it is revoked. Time is
//!   not the store's business: the leader counts TTLs down and proposes the
//!   revoke, so expiry happens at the same log position everywhere;
//! * **auth**: users, roles and key permissions ([`auth`]), replicated with
//!   the keys and checked when a write is applied;
//! * **compaction** and the **history** a watch replays ([`Store::events_since`]).
//!
//! No I/O, clocks or randomness: a store is a pure function of the commands
//! applied to it, and [`Store::hash`] lets replicas compare notes. Error
//! messages are etcd's, byte for byte ([`Error::etcd_message`]).
//!
//! [`replica::Replica`] puts the store on a consensus engine ([`engine`]:
//! synod's Raft core, or its Multi-Paxos log) as a sans-IO node: what each
//! member of the service runs, with its driver doing the I/O.

pub mod auth;
pub mod backup;
pub mod engine;
mod error;
mod history;
pub mod replica;
mod store;
mod types;

pub use error::{Error, ErrorClass};
pub use store::{Store, MAX_LEASE_TTL, MAX_TXN_OPS};
pub use types::*;
