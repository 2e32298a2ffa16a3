//! etcd's v3 gRPC API for synod.
//!
//! Three pieces, so the API does not care how the data is kept:
//!
//! * [`pb`]: etcd's wire types and service stubs, generated at build time from
//!   `proto/` (etcd's package, message names and field numbers; compiled with
//!   protox, so no system `protoc` is needed);
//! * [`Backend`]: what the services need from a member — reads, replicated
//!   writes, lease clocks, membership and status — with etcd's error vocabulary
//!   ([`ApiError`]);
//! * [`EtcdServer`]: the KV, Watch, Lease, Cluster, Maintenance, Auth, Lock and
//!   Election services (and gRPC's standard health service, [`HealthService`])
//!   on top of
//!   any backend: request checks and size limits, conversion between wire types
//!   and [`synod_kv`]'s, and etcd's exact error codes and messages, which
//!   etcd's clients match on.
//!
//! [`LocalBackend`] is a single member that keeps its store in memory: the test
//! double for this layer, and what etcdctl is checked against in
//! `tests/etcdctl.rs`. The replicated, durable backend (Raft over the WAL) is
//! `synod_server::backend::MemberBackend`.

pub mod pb {
    //! Generated from `proto/`: etcd's `mvccpb`, `authpb`, `etcdserverpb`, `v3lockpb`
    //! and `v3electionpb` packages.
    #![allow(clippy::all, missing_docs)]
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
        include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
    }
    pub mod authpb {
        tonic::include_proto!("authpb");
        include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
        include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
    }
    pub mod v3lockpb {
        tonic::include_proto!("v3lockpb");
        include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
    }
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
        include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
    }
}

mod auth;
mod authority;
mod backend;
mod convert;
mod cors;
mod gateway;
mod grpc_compat;
mod health;
mod host_whitelist;
mod jwt;
mod lease_ids;
mod local;
mod noop;
mod recipes;
mod service;
pub mod tls;
mod watch;

pub use auth::{BCRYPT_COST, DEFAULT_TOKEN_TTL};
pub use authority::AuthorityFix;
pub use backend::{
    ApiError, Applied, Backend, Header, LeaseTtl, MemberError, MemberInfo, StatusInfo,
    Subscription, API_VERSION,
};
pub use cors::Cors;
pub use grpc_compat::{GrpcGoCompat, GrpcGoCompatService};
pub use health::HealthService;
pub use host_whitelist::HostWhitelist;
pub use jwt::JwtKeys;
pub use lease_ids::LeaseIds;
pub use local::LocalBackend;
pub use noop::NoopBackend;
pub use recipes::prefix_end;
pub use service::{ApiBugs, EtcdServer, Limits};
pub use watch::WatchGauges;
pub use watch::{MIN_PROGRESS_NOTIFY_INTERVAL, PROGRESS_NOTIFY_INTERVAL};
