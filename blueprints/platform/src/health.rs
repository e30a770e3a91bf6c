//! `<binary> healthcheck`: asks the process running on this host whether it is ready, for
//! container health checks. The images carry one binary and no curl or grpc_health_probe,
//! so the binary probes itself.

use std::error::Error;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a probe may take before it counts as a failure.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether an HTTP/2 request is a call to the standard gRPC health service, which probes
/// make without a credential and which no fault or admission check may hold up.
pub fn is_health_call<B>(request: &http::Request<B>) -> bool {
    request.uri().path().starts_with("/grpc.health.v1.Health/")
}

/// The address to probe for a listen address: a wildcard (`0.0.0.0`) becomes loopback.
pub fn local(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
    } else {
        addr
    }
}

/// Success when the gRPC health service at `addr` reports `service` as SERVING (it
/// reports NOT_SERVING while the process drains before it stops).
pub async fn grpc(addr: SocketAddr, service: &str) -> ExitCode {
    run(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", local(addr)))?
            .connect()
            .await?;
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        let status = HealthClient::new(channel)
            .check(request)
            .await?
            .into_inner()
            .status;
        if status == ServingStatus::Serving as i32 {
            Ok(())
        } else {
            Err(format!("{service} is not serving (status {status})").into())
        }
    })
    .await
}

/// Runs a probe within [`PROBE_TIMEOUT`] and turns its outcome into the exit code a
/// container runtime reads.
pub async fn run(
    probe: impl Future<Output = Result<(), Box<dyn Error + Send + Sync>>>,
) -> ExitCode {
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("unhealthy: no answer within {} s", PROBE_TIMEOUT.as_secs());
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_probed_on_loopback() {
        let any: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        assert_eq!(local(any), "127.0.0.1:50051".parse().unwrap());
        let own: SocketAddr = "10.0.0.7:50051".parse().unwrap();
        assert_eq!(local(own), own);
    }

    #[tokio::test]
    async fn nothing_listening_is_unhealthy() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert_eq!(grpc(addr, "any").await, ExitCode::FAILURE);
    }
}
