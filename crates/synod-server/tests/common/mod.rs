//! What the service's integration tests share.

pub use synod_server::cluster::free_loopback_port as free_port;
