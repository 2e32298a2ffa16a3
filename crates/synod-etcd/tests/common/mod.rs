//! A member served on a free loopback port, for the tests.

use std::sync::Arc;
use synod_etcd::{EtcdServer, Limits, LocalBackend};
use tokio_stream::wrappers::TcpListenerStream;

/// Starts an in-memory member on 127.0.0.1 and returns its `host:port`. The
/// server lives as long as the runtime that runs it.
pub async fn serve(limits: Limits) -> String {
    serve_backend(limits).await.0
}

/// The same, with the backend for the test to reach behind the API.
pub async fn serve_backend(limits: Limits) -> (String, Arc<LocalBackend>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = Arc::new(LocalBackend::new(1, "n1", &format!("http://{addr}")));
    let routes = EtcdServer::new(backend.clone(), limits).router();
    tokio::spawn(async move {
        // HTTP/1.1 too, for the JSON gateway.
        tonic::transport::Server::builder()
            .accept_http1(true)
            .layer(synod_etcd::GrpcGoCompat)
            .add_routes(routes)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .expect("server runs");
    });
    (addr.to_string(), backend)
}
