//! One [`crate::Model`] per family of algorithms: how its nodes are built, what its
//! clients do, and which properties are checked on every run.

pub mod commit;
pub mod etcd;
pub mod kv_clients;
pub mod multipaxos;
pub mod paxos_disk;
pub mod raft;
pub mod raft_checks;
pub mod wal_disk;
pub mod write_once;
