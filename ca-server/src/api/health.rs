//! `grpc.health.v1.Health`, for load balancers and `grpcurl`: `SERVING` only when [`Ca::ready`]
//! passes (the `/readyz` check: the HSM signs, the registry reads), checked on every call.
//! Like `/readyz` it needs no signature.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::Ca;

/// The services whose health can be asked for; `""` is the server as a whole.
pub const SERVICES: [&str; 4] = ["", "hsca.v1.CertificateAuthority", "hsca.v1.Registry", "hsca.v1.Admin"];

/// How often `Watch` checks again.
const WATCH_PERIOD: Duration = Duration::from_secs(5);

/// The health service over the shared [`Ca`].
#[derive(Clone)]
pub struct HealthService(pub Arc<Ca>);

async fn serving(ca: &Arc<Ca>) -> ServingStatus {
    let ca = ca.clone();
    match tokio::task::spawn_blocking(move || ca.ready()).await {
        Ok(Ok(())) => ServingStatus::Serving,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health: not serving");
            ServingStatus::NotServing
        }
        Err(_) => ServingStatus::NotServing,
    }
}

fn answer(s: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: s as i32 }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(&self, req: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &req.get_ref().service;
        if !SERVICES.contains(&service.as_str()) {
            return Err(Status::not_found(format!("unknown service {service:?}")));
        }
        Ok(Response::new(answer(serving(&self.0).await)))
    }

    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<HealthCheckResponse, Status>>;

    async fn watch(&self, req: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let known = SERVICES.contains(&req.get_ref().service.as_str());
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let ca = self.0.clone();
        tokio::spawn(async move {
            if !known {
                let _ = tx.send(Ok(answer(ServingStatus::ServiceUnknown))).await;
                return;
            }
            let mut last = None;
            loop {
                let now = serving(&ca).await;
                if last != Some(now) {
                    if tx.send(Ok(answer(now))).await.is_err() {
                        return;
                    }
                    last = Some(now);
                }
                tokio::select! {
                    () = tokio::time::sleep(WATCH_PERIOD) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
