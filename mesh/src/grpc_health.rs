//! Active health check over gRPC's standard `grpc.health.v1.Health/Check`, for clusters whose
//! endpoints are gRPC servers (pingora-load-balancing ships only TCP and HTTP checks).

use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::Backend;
use pingora::{Error, ErrorType, Result};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub struct GrpcHealthCheck {
    /// The service name asked about; empty = the server as a whole.
    pub service: String,
    pub timeout: Duration,
    pub consecutive_success: usize,
    pub consecutive_failure: usize,
}

#[async_trait]
impl HealthCheck for GrpcHealthCheck {
    async fn check(&self, target: &Backend) -> Result<()> {
        let Some(addr) = target.addr.as_inet() else {
            return Error::e_explain(ErrorType::ConnectError, "grpc health: not an inet address");
        };
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| {
                Error::explain(ErrorType::ConnectError, format!("grpc health {addr}: {e}"))
            })?
            .connect_timeout(self.timeout)
            .timeout(self.timeout);
        let channel = endpoint.connect().await.map_err(|e| {
            Error::explain(ErrorType::ConnectError, format!("grpc health {addr}: {e}"))
        })?;
        let resp = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: self.service.clone(),
            })
            .await
            .map_err(|s| {
                Error::explain(
                    ErrorType::HTTPStatus(503),
                    format!("grpc health {addr}: {}", s.message()),
                )
            })?;
        if resp.into_inner().status == ServingStatus::Serving as i32 {
            Ok(())
        } else {
            Error::e_explain(
                ErrorType::HTTPStatus(503),
                format!("grpc health {addr}: not SERVING"),
            )
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.consecutive_success
        } else {
            self.consecutive_failure
        }
    }
}
