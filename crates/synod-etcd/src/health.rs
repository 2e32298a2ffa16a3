//! gRPC's standard health service (`grpc.health.v1.Health`), answered as
//! etcd 3.4 answers it, for gRPC health probes (Kubernetes `grpc` probes,
//! `grpc_health_probe`): the server as a whole (the empty service name) is
//! SERVING for as long as it runs; no service is registered by its own
//! name, so a check of one is NotFound with grpc-go's "unknown service", and
//! a watch of one says SERVICE_UNKNOWN. Like etcd's, it needs no token when
//! authentication is on. `/health` is where a member says whether it can
//! serve a quorum read.

use std::pin::Pin;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The health service of one server.
#[derive(Clone, Copy, Debug, Default)]
pub struct HealthService;

impl HealthService {
    pub fn server() -> HealthServer<HealthService> {
        HealthServer::new(HealthService)
    }
}

fn answer(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

type Statuses = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if req.get_ref().service.is_empty() {
            Ok(Response::new(answer(ServingStatus::Serving)))
        } else {
            Err(Status::not_found("unknown service"))
        }
    }

    type WatchStream = Statuses;

    /// The status now, then every change: as none ever comes, the stream
    /// stays open until the client leaves (or the server stops).
    async fn watch(&self, req: Request<HealthCheckRequest>) -> Result<Response<Statuses>, Status> {
        let status = if req.get_ref().service.is_empty() {
            ServingStatus::Serving
        } else {
            ServingStatus::ServiceUnknown
        };
        let now = tokio_stream::once(Ok(answer(status)));
        Ok(Response::new(Box::pin(now.chain(tokio_stream::pending()))))
    }
}
