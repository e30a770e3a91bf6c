//! RED metrics in Prometheus text format. One recorder per process (the `metrics` facade
//! with the Prometheus exporter); `/metrics` is served on a listener of its own
//! (`<PREFIX>__METRICS__ADDR`), never on the public API port.
//!
//! Names follow the conventions dashboards already know: go-grpc-prometheus for gRPC
//! servers (`grpc_server_handled_total`, `grpc_server_handling_seconds`) and clients
//! (`grpc_client_handled_total`, `grpc_client_handling_seconds`, per caller and callee), and
//! `http_requests_total` / `http_request_duration_seconds` for HTTP. `deploy/alerts.yml`
//! is written against these names.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const GRPC_HANDLED: &str = "grpc_server_handled_total";
pub const GRPC_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
/// The caller's side of every call to a dependency (each attempt), per caller and callee.
pub const GRPC_CLIENT_HANDLED: &str = "grpc_client_handled_total";
pub const GRPC_CLIENT_HANDLING_SECONDS: &str = "grpc_client_handling_seconds";
pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_DURATION_SECONDS: &str = "http_request_duration_seconds";
pub const OUTBOX_BACKLOG: &str = "outbox_backlog";
pub const OUTBOX_PUBLISHED: &str = "outbox_published_total";
/// Outbox rows parked because the broker refuses them: a gauge, and a counter per topic.
pub const OUTBOX_PARKED: &str = "outbox_parked";
pub const OUTBOX_PARKED_TOTAL: &str = "outbox_parked_total";
pub const MESSAGES_CONSUMED: &str = "bus_messages_consumed_total";
pub const CONSUMER_LAG: &str = "consumer_lag_messages";
/// Times a consumer joined its group again because nobody consumed what waited.
pub const CONSUMER_REJOINS: &str = "bus_consumer_rejoins_total";
/// Calls a service refused because the spec does not let their caller call it.
pub const CALLS_DENIED: &str = "service_calls_denied_total";

/// How long a scrape waits for gauges read from elsewhere (the database, the broker);
/// past it, the last values are served, so an unreachable broker never stalls /metrics.
pub const REFRESH_BUDGET: Duration = Duration::from_secs(2);

/// Upper bounds of the duration histograms, in seconds: fine below the default 300 ms SLO.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide recorder, installed on first use (tests build many apps in one process).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), DURATION_BUCKETS)
            .expect("the buckets are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (a test harness, say): then this one
        // still renders what is recorded through it, which is nothing; say so.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed already; /metrics will be empty");
        }
        handle
    })
}

/// Refreshes gauges that are read at scrape time (e.g. the outbox backlog).
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The `/metrics` listener, bound before the process reports itself ready.
pub struct MetricsServer {
    listener: TcpListener,
    refresh: Vec<Refresh>,
}

impl MetricsServer {
    pub async fn bind(addr: SocketAddr, refresh: Vec<Refresh>) -> std::io::Result<Self> {
        handle();
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} for /metrics: {e}"),
            )
        })?;
        Ok(MetricsServer { listener, refresh })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves `/metrics` until `stop` turns true.
    pub async fn serve(self, mut stop: watch::Receiver<bool>) -> std::io::Result<()> {
        let refresh = self.refresh.clone();
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let refresh = refresh.clone();
                async move {
                    let gauges = futures_util::future::join_all(refresh.iter().map(|r| r()));
                    if tokio::time::timeout(REFRESH_BUDGET, gauges).await.is_err() {
                        tracing::warn!(
                            budget = ?REFRESH_BUDGET,
                            "gauges not refreshed in time; serving their last values"
                        );
                    }
                    let handle = handle();
                    handle.run_upkeep();
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        handle.render(),
                    )
                        .into_response()
                }
            }),
        );
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    }
}

/// Refreshes the outbox backlog and parked gauges from the database at each scrape.
pub fn outbox_backlog(pool: sqlx::PgPool) -> Refresh {
    Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move {
            let backlog = match pool.acquire().await {
                Ok(mut conn) => crate::outbox::backlog(&mut conn).await,
                Err(e) => Err(e),
            };
            match backlog {
                Ok((waiting, parked)) => {
                    metrics::gauge!(OUTBOX_BACKLOG).set(waiting as f64);
                    metrics::gauge!(OUTBOX_PARKED).set(parked as f64);
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the outbox backlog"),
            }
        })
    })
}

/// Refreshes the consumer lag gauge from the broker at each scrape.
pub fn consumer_lag(probe: crate::adapter::LagProbe) -> Refresh {
    Arc::new(move || {
        let probe = probe.clone();
        Box::pin(async move {
            match probe.lag().await {
                Ok(n) => metrics::gauge!(CONSUMER_LAG).set(n as f64),
                Err(e) => tracing::warn!(error = %e, "cannot read the consumer lag"),
            }
        })
    })
}

/// The name of a gRPC status code as go-grpc-prometheus writes it (`grpc_code`).
pub fn grpc_code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

/// Counts one gRPC call and observes its duration.
pub fn record_grpc(service: &str, method: &str, code: &'static str, elapsed: Duration) {
    metrics::counter!(
        GRPC_HANDLED,
        "grpc_service" => service.to_string(),
        "grpc_method" => method.to_string(),
        "grpc_code" => code
    )
    .increment(1);
    metrics::histogram!(
        GRPC_HANDLING_SECONDS,
        "grpc_service" => service.to_string(),
        "grpc_method" => method.to_string()
    )
    .record(elapsed.as_secs_f64());
}

/// Counts one attempt of a call `caller` made to `callee` and observes its duration.
pub fn record_grpc_client(
    caller: &str,
    callee: &str,
    method: &str,
    code: &'static str,
    elapsed: Duration,
) {
    metrics::counter!(
        GRPC_CLIENT_HANDLED,
        "caller" => caller.to_string(),
        "callee" => callee.to_string(),
        "grpc_method" => method.to_string(),
        "grpc_code" => code
    )
    .increment(1);
    metrics::histogram!(
        GRPC_CLIENT_HANDLING_SECONDS,
        "caller" => caller.to_string(),
        "callee" => callee.to_string(),
        "grpc_method" => method.to_string()
    )
    .record(elapsed.as_secs_f64());
}

/// The `method` label of an HTTP request: a standard method as it is, any other `OTHER`.
/// A client may send any token as its method, and each would be a series of its own.
pub fn http_method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "OTHER",
    }
}

/// Counts one HTTP request and observes its duration (the gateway's access log calls it).
pub fn record_http(method: &str, route: &str, status: u16, elapsed: Duration) {
    let method = http_method_label(method);
    metrics::counter!(
        HTTP_REQUESTS,
        "method" => method,
        "route" => route.to_string(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(
        HTTP_DURATION_SECONDS,
        "method" => method,
        "route" => route.to_string()
    )
    .record(elapsed.as_secs_f64());
}

/// Counts one call `service` refused from `caller` (a name of this system, or `unknown`).
pub fn record_denied(service: &str, caller: &str) {
    metrics::counter!(
        CALLS_DENIED,
        "service" => service.to_string(),
        "caller" => caller.to_string()
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_http_method_is_counted_as_other_not_as_a_series_of_its_own() {
        let handle = handle();
        record_http(
            "RND123",
            "/v1/cardinality-test",
            405,
            Duration::from_millis(1),
        );
        record_http("GET", "/v1/cardinality-test", 200, Duration::from_millis(1));
        let rendered = handle.render();
        assert!(!rendered.contains("RND123"), "{rendered}");
        let methods: Vec<&str> = rendered
            .lines()
            .filter(|l| l.starts_with(HTTP_REQUESTS) && l.contains("/v1/cardinality-test"))
            .collect();
        assert!(
            methods.iter().any(|l| l.contains("method=\"OTHER\"")),
            "{rendered}"
        );
        assert!(
            methods.iter().any(|l| l.contains("method=\"GET\"")),
            "{rendered}"
        );
    }

    #[test]
    fn grpc_codes_have_their_go_grpc_prometheus_names() {
        assert_eq!(grpc_code_name(0), "OK");
        assert_eq!(grpc_code_name(14), "Unavailable");
        assert_eq!(grpc_code_name(99), "Unknown");
    }

    #[tokio::test]
    async fn metrics_are_served_as_prometheus_text_and_move() {
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), Vec::new())
            .await
            .unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(server.serve(stopped));
        let scrape = || async {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut body = String::new();
            stream.read_to_string(&mut body).await.unwrap();
            body
        };
        record_grpc("t.v1.Svc", "MetricsTest", "OK", Duration::from_millis(3));
        let first = scrape().await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        let line = |text: &str| {
            text.lines()
                .find(|l| l.starts_with(GRPC_HANDLED) && l.contains("MetricsTest"))
                .map(str::to_string)
        };
        assert!(line(&first).unwrap().ends_with(" 1"), "{first}");
        assert!(
            first.contains("grpc_server_handling_seconds_bucket{"),
            "{first}"
        );
        record_grpc("t.v1.Svc", "MetricsTest", "OK", Duration::from_millis(3));
        assert!(line(&scrape().await).unwrap().ends_with(" 2"));
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
    }
}
