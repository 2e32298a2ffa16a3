//! `synod ceiling`: etcd's API served by members that answer at once and
//! keep nothing (`synod_etcd::NoopBackend`), on the ports a benchmark
//! drives. Whatever `synod bench` reaches against it is the most any server
//! could reach on this machine through that client: the ceiling that
//! `bench/vs-etcd` reports the real systems against. Never a store.

use clap::Args;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use synod_etcd::{EtcdServer, Limits, NoopBackend};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

#[derive(Args)]
pub struct CeilingArgs {
    /// Comma-separated host:port list to serve on, one no-op member each.
    #[arg(long, default_value = "127.0.0.1:2379,127.0.0.1:12379,127.0.0.1:22379")]
    listen: String,
}

pub fn run(args: CeilingArgs) -> Result<ExitCode, String> {
    let addrs = args
        .listen
        .split(',')
        .map(|a| {
            a.trim()
                .parse::<SocketAddr>()
                .map_err(|e| format!("--listen {a:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async {
        let mut servers = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let backend = Arc::new(NoopBackend::new(
                i as u64 + 1,
                &format!("noop-{}", i + 1),
                &format!("http://{addr}"),
            ));
            let routes = EtcdServer::new(backend, Limits::default()).router();
            // As a member serves: no Nagle, etcdctl's authority accepted.
            let incoming = TcpListenerStream::new(listener).map(|s| {
                let s = s?;
                s.set_nodelay(true)?;
                Ok::<_, std::io::Error>(synod_etcd::AuthorityFix::new(s))
            });
            servers.push(tokio::spawn(
                tonic::transport::Server::builder()
                    .layer(synod_etcd::GrpcGoCompat)
                    .add_routes(routes)
                    .serve_with_incoming(incoming),
            ));
        }
        eprintln!(
            "synod ceiling: answering etcd's API at once, storing nothing, on {}",
            args.listen
        );
        let signal = crate::signals::stop_signal().await?;
        eprintln!("synod ceiling: {signal}, stopping");
        for s in servers {
            s.abort();
        }
        Ok(ExitCode::SUCCESS)
    })
}
