//! Serves etcd's API from one in-memory member, to try the API layer with
//! etcdctl: `cargo run -p synod-etcd --example local -- 127.0.0.1:23790`, then
//! `ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:23790 put k v`. Nothing is
//! replicated or durable.

use std::sync::Arc;
use synod_etcd::{EtcdServer, Limits, LocalBackend};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:23790".into());
    let addr: std::net::SocketAddr = addr.parse()?;
    let backend = Arc::new(LocalBackend::new(1, "local", &format!("http://{addr}")));
    eprintln!("serving etcd's API from memory on {addr}");
    tonic::transport::Server::builder()
        .layer(synod_etcd::GrpcGoCompat)
        .add_routes(EtcdServer::new(backend, Limits::default()).router())
        .serve(addr)
        .await?;
    Ok(())
}
