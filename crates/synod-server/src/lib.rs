//! synod's etcd-compatible service: members that run the replicated store
//! ([`synod_kv::replica::Replica`]) on a real clock, disk (synod-storage's
//! WAL, fsynced before anything is acknowledged) and network, behind etcd's
//! v3 gRPC API ([`synod_etcd`]).
//!
//! * [`member`]: the driver thread of one member — group-committed persist,
//!   then send, then answer; requests that reach a follower are forwarded to
//!   the leader.
//! * [`peer`]: member-to-member TCP transport.
//! * [`inbox`]: the member thread's inbox, whose senders wake it from its
//!   wait on the peers' sockets.
//! * [`disk`]: Raft's records on the WAL, and recovery from it.
//! * [`engines`]: the consensus engines a member can run (`--engine`), and
//!   what each needs of the driver.
//! * [`backend`]: the etcd API's [`synod_etcd::Backend`] for a member.
//! * [`cluster`]: starting members with their API (`synod serve`, tests).
//! * [`ids`]: member and cluster ids, derived as etcd derives them.
//! * [`http`], [`metrics`], [`grpc_metrics`]: `/health`, `/version` and
//!   `/metrics` beside gRPC on the client port, under etcd's metric names;
//!   gRPC calls counted by method as etcd counts them.

pub mod backend;
pub mod cluster;
pub mod compactor;
pub mod disk;
pub mod engines;
pub mod grpc_metrics;
pub mod http;
pub mod ids;
pub mod inbox;
pub mod member;
pub mod metrics;
pub mod peer;
pub mod peer_conn;
pub mod reconfig;
pub mod replies;
pub mod tls;

/// Whether this build can plant deliberate bugs in members (the `broken`
/// feature; test builds of `synod` have it, release builds do not).
pub const CAN_PLANT_BUGS: bool = cfg!(feature = "broken");
