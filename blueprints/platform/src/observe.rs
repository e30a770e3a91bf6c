//! What every gRPC call to a service leaves behind, from one tower layer on its server: a
//! server span that continues the caller's trace (`traceparent` metadata), the RED metrics
//! (`grpc_server_handled_total`, `grpc_server_handling_seconds`), and one log line with the
//! method, status code, duration, caller, end user and the deadline the caller gave.
//! Health checks leave nothing: every caller asks each replica once a second
//! (`resilience::replicas`), which would bury the calls that matter.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};
use tracing::Instrument;

use crate::metrics::{grpc_code_name, record_grpc};
use crate::service_auth::FactsSlot;
use crate::telemetry;

/// The layer: `tonic::transport::Server::builder().layer(GrpcObserveLayer)`.
#[derive(Debug, Clone, Default)]
pub struct GrpcObserveLayer;

impl<S> Layer<S> for GrpcObserveLayer {
    type Service = GrpcObserve<S>;

    fn layer(&self, inner: S) -> GrpcObserve<S> {
        GrpcObserve { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcObserve<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for GrpcObserve<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if crate::health::is_health_call(&request) {
            return Box::pin(self.inner.call(request));
        }
        let (service, method) = split_path(request.uri().path());
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let span = tracing::info_span!(
            "grpc",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
        );
        telemetry::continue_trace(&span, header("traceparent").as_deref());
        // Filled in by the admission layer inside this one (`service_auth`).
        let facts = FactsSlot::default();
        request.extensions_mut().insert(facts.clone());
        let future = span.in_scope(|| self.inner.call(request));
        let mut outcome = Outcome {
            service,
            method,
            started: Instant::now(),
            facts,
            span: span.clone(),
            recorded: false,
        };
        Box::pin(
            async move {
                let result = future.await;
                // A response without a status in its headers is a success whose status
                // follows in the trailers.
                outcome.record(match &result {
                    Ok(response) => {
                        trailers_only_status(response.headers()).map_or("OK", grpc_code_name)
                    }
                    Err(_) => "Unknown",
                });
                result
            }
            .instrument(span),
        )
    }
}

/// What one call leaves behind, recorded once: when it is answered, or as `Cancelled` when
/// the caller gave up first (its deadline passed, it went away) and the server dropped the
/// call, so a call cut short by a deadline shows up in the logs and metrics too.
struct Outcome {
    service: String,
    method: String,
    started: Instant,
    facts: FactsSlot,
    span: tracing::Span,
    recorded: bool,
}

impl Outcome {
    fn record(&mut self, code: &'static str) {
        self.recorded = true;
        let elapsed = self.started.elapsed();
        // tonic answers a path it does not route with UNIMPLEMENTED: such calls share one
        // series, or every made-up path would be a series of its own (the log keeps it).
        if code == "Unimplemented" {
            record_grpc("unknown", "unknown", code, elapsed);
        } else {
            record_grpc(&self.service, &self.method, code, elapsed);
        }
        let facts = self.facts.0.get().cloned().unwrap_or_default();
        let _in_span = self.span.enter();
        tracing::info!(
            rpc.method = %self.method,
            status = code,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            caller = facts.caller.as_deref(),
            userId = facts.user.as_deref(),
            deadline_ms = facts.deadline_ms,
            "rpc"
        );
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if !self.recorded {
            self.record("Cancelled");
        }
    }
}

/// The status of a trailers-only response, which is how a gRPC server answers a failed
/// unary call: `grpc-status` in the headers. `None` for a response that carries its status
/// in the trailers (a success, for a unary call).
pub fn trailers_only_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
fn split_path(path: &str) -> (String, String) {
    let trimmed = path.trim_start_matches('/');
    match trimmed.split_once('/') {
        Some((service, method)) => (service.to_string(), method.to_string()),
        None => ("unknown".to_string(), trimmed.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_dropped_before_it_is_answered_is_counted_as_cancelled() {
        let handle = crate::metrics::handle();
        drop(Outcome {
            service: "test.Service".into(),
            method: "Dropped".into(),
            started: Instant::now(),
            facts: FactsSlot::default(),
            span: tracing::Span::none(),
            recorded: false,
        });
        let rendered = handle.render();
        assert!(
            rendered
                .lines()
                .any(|l| l.starts_with("grpc_server_handled_total{")
                    && l.contains("grpc_method=\"Dropped\"")
                    && l.contains("grpc_code=\"Cancelled\"")),
            "{rendered}"
        );
    }

    #[test]
    fn a_call_to_a_path_nobody_serves_is_counted_as_unknown() {
        let handle = crate::metrics::handle();
        let (service, method) = split_path("/made.Up/RandomMethod42");
        let mut outcome = Outcome {
            service,
            method,
            started: Instant::now(),
            facts: FactsSlot::default(),
            span: tracing::Span::none(),
            recorded: false,
        };
        outcome.record("Unimplemented");
        let rendered = handle.render();
        assert!(!rendered.contains("RandomMethod42"), "{rendered}");
        assert!(
            rendered
                .lines()
                .any(|l| l.starts_with("grpc_server_handled_total{")
                    && l.contains("grpc_method=\"unknown\"")
                    && l.contains("grpc_code=\"Unimplemented\"")),
            "{rendered}"
        );
    }

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/shop.orders.v1.OrdersService/CreateOrder"),
            (
                "shop.orders.v1.OrdersService".to_string(),
                "CreateOrder".to_string()
            )
        );
        assert_eq!(
            split_path("/odd"),
            ("unknown".to_string(), "odd".to_string())
        );
    }
}
