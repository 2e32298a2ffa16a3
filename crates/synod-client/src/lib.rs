//! An async client for synod's etcd v3 API, over the project's own generated
//! stubs (`synod_etcd::pb`, compiled with protox: no system protoc).
//!
//! * [`Client`]: endpoints with failover. Calls that are safe to repeat
//!   (reads, lease time-to-live, keep-alives) move on to the next endpoint
//!   when one is unreachable; writes are sent once and their error returned,
//!   since a write whose answer was lost may have happened.
//! * [`Txn`]: a builder for compare-then-else transactions.
//! * Lease grant and keep-alive ([`Client::keep_alive`] runs a keeper task),
//!   Lock with its fencing token, Election.
//! * [`ServiceWriteOnce`]: the write-once variable of
//!   [`synod_protocols::write_once::WriteOnce`] held by a synod cluster, so
//!   code written against the trait runs in one process, in the simulator
//!   and on the service alike.
//! * [`stories`]: the seeds' examples as library functions, run by the
//!   examples of the `synod` crate and asserted by this crate's tests.

mod client;
pub mod stories;
pub mod txn;
mod write_once;

pub use client::{Client, Error, KeepAlive, LockGuard};
pub use synod_etcd::pb;
pub use txn::Txn;
pub use write_once::ServiceWriteOnce;

/// The client endpoints of `synod up` with its default ports.
pub const UP_ENDPOINTS: [&str; 3] = ["127.0.0.1:2379", "127.0.0.1:12379", "127.0.0.1:22379"];

/// Endpoints from `SYNOD_ENDPOINTS` (comma-separated), else `synod up`'s.
pub fn endpoints_from_env() -> Vec<String> {
    match std::env::var("SYNOD_ENDPOINTS") {
        Ok(s) if !s.trim().is_empty() => s.split(',').map(|e| e.trim().to_string()).collect(),
        _ => UP_ENDPOINTS.iter().map(|e| e.to_string()).collect(),
    }
}
