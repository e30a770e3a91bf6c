//! The gateway: REST over the gRPC services. Per request, outermost first: body limit →
//! request context (correlation id, deadline) → access log → authentication → rate limit →
//! the route, which checks its scope and calls its service through that service's
//! resilience stack (`platform::resilience`). Reads of one resource go through the Redis cache,
//! which a consumer of the domain events keeps honest; the same consumer feeds the event
//! streams (`GET /v1/<context>/events`, server-sent events).

pub mod api;
pub mod config;
pub mod health;
pub mod openapi;

// The fixed machinery is the platform's (`platform::gateway`), under the names the routes use.
pub use platform::gateway::{
    api_keys, auth, auth_failures, cache, client_address, context, fanout, invalidation,
    problem, rate_limit, rest, stream,
};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State as AxumState};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use platform::shutdown::Drain;
use platform::supervise::{Supervisor, TaskFailed};
use platform::adapter::Bus;
use platform::metrics::MetricsServer;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::auth::{Authenticator, Principal};
use crate::auth_failures::FailureBudget;
use crate::client_address::{ClientAddress, TrustedProxies};
use crate::cache::Cache;
use crate::config::Config;
use crate::context::RequestContext;
use crate::fanout::Fanout;
use crate::problem::Problem;
use crate::rate_limit::RateLimiter;
use crate::stream::Streams;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long in-flight requests and background tasks get after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

pub struct State {
    pub auth: Authenticator,
    pub limiter: RateLimiter,
    /// The coarser limit per client address, before authentication.
    pub address_limiter: RateLimiter,
    /// Failed authentications per client address.
    pub auth_failures: FailureBudget,
    /// Whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<TrustedProxies>,
    pub cache: Cache,
    /// The event streams' hub, fed by the cache invalidation consumer.
    pub streams: Streams,
    pub downstreams: api::Downstreams,
    /// False once shutdown began: `/readyz` answers 503.
    pub ready: AtomicBool,
}

pub type AppState = Arc<State>;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Config(String),
    #[error("cannot set up the event bus: {0}")]
    Bus(#[from] platform::bus::BusError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Why a running gateway stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the HTTP server failed: {0}")]
    Server(#[from] std::io::Error),
    #[error(transparent)]
    Task(#[from] TaskFailed),
}

pub struct Gateway {
    listener: TcpListener,
    metrics: MetricsServer,
    state: AppState,
    request_timeout: Duration,
    drain: Drain,
    bus: Option<Bus>,
}

impl Gateway {
    /// Builds everything and binds the port. Nothing downstream is contacted yet: the
    /// services, Redis and the broker are connected to lazily, so the gateway starts (and
    /// reports ready) while any of them is down.
    pub async fn build(config: Config) -> Result<Gateway, StartupError> {
        let downstreams = api::Downstreams::new(&config).map_err(StartupError::Config)?;
        let cache = match config.cache.clone() {
            Some(cache) => Cache::connect(cache).map_err(StartupError::Config)?,
            None => {
                tracing::warn!("GATEWAY__REDIS__URL is not set: reads are not cached");
                Cache::disabled()
            }
        };
        let auth = Authenticator::new(config.auth.clone(), config.api_keys);
        auth.warm_up().await;
        let bus = match &config.bus {
            Some(bus) => Some(Bus::connect(bus).await?),
            None => None,
        };
        let listener = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: config.http_addr,
                source,
            })?;
        let metrics = MetricsServer::bind(config.metrics_addr, Vec::new())
            .await
            .map_err(|source| StartupError::Bind {
                addr: config.metrics_addr,
                source,
            })?;
        Ok(Gateway {
            listener,
            metrics,
            state: Arc::new(State {
                auth,
                limiter: RateLimiter::new(config.rate_limit),
                address_limiter: RateLimiter::new(config.address_rate_limit),
                auth_failures: FailureBudget::new(config.auth_failures_per_minute),
                trusted_proxies: Arc::new(config.trusted_proxies.clone()),
                cache,
                streams: Streams::new(config.streams),
                downstreams,
                ready: AtomicBool::new(true),
            }),
            request_timeout: config.request_timeout,
            drain: config.drain,
            bus,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` is served (a port of its own, not the public API's).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics.local_addr()
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then reports not ready, serves on for the drain
    /// delay, finishes in-flight requests (within the drain timeout) and stops the cache
    /// invalidation consumer. A background task that ends early stops it the same way, and
    /// it returns that failure, so the process exits non-zero and is restarted.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RunError> {
        // The background tasks: one that ends early stops the process (see `supervise`).
        let mut tasks = Supervisor::new();
        let stopped = tasks.stopping();
        let (metrics, metrics_stop) = (self.metrics, stopped.clone());
        tasks.spawn("metrics", async move {
            if let Err(e) = metrics.serve(metrics_stop).await {
                tracing::error!(error = %e, "/metrics stopped serving");
            }
        });
        if let Some(bus) = &self.bus {
            let topics: Vec<String> = api::TOPICS.iter().map(|t| t.topic.to_string()).collect();
            // The replicas share the consumer group: each passes what it consumes on to
            // every replica's event streams through Redis.
            let fanout = Fanout::new(self.state.streams.clone(), self.state.cache.clone());
            tasks.spawn("event fan-out", fanout.clone().listen(api::TOPICS, stopped.clone()));
            // Without it, cached reads would go stale until their TTL: the gateway stops
            // (not ready, exit non-zero) rather than serve them.
            let invalidation = bus.subscriber(api::GROUP, &topics).map(|subscriber| {
                invalidation::run(
                    subscriber,
                    self.state.cache.clone(),
                    fanout,
                    api::TOPICS,
                    stopped.clone(),
                )
            });
            tasks.spawn_or_fail("cache invalidation", invalidation);
        }
        let limiters = [self.state.limiter.clone(), self.state.address_limiter.clone()];
        let (mut forget_stop, forget_state) = (stopped.clone(), self.state.clone());
        tasks.spawn("rate limit cleanup", async move {
            loop {
                tokio::select! {
                    _ = forget_stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(FORGET_IDLE_EVERY) => {
                        limiters.iter().for_each(RateLimiter::forget_idle);
                        forget_state.auth_failures.forget_idle(std::time::Instant::now());
                    }
                }
            }
        });

        // Stopping: /readyz answers 503 at once and the event streams end (their clients
        // reconnect to a replica that serves), requests are served on for the drain delay,
        // then no new connections and at most the drain timeout for those in flight.
        let state = self.state.clone();
        let (stop_accepting, drain_deadline) = self.drain.phases(tasks.stop_requested(shutdown), move || async move {
            state.ready.store(false, Ordering::Release);
            state.streams.close();
        });
        let app = router(self.state.clone(), self.request_timeout);
        // TCP_NODELAY: without it a response written in two segments waits for the
        // client's delayed ACK, 40 ms on Linux.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let served = tokio::select! {
            // With the peer's address, for the per-address rate limit.
            served = async {
                axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                    .with_graceful_shutdown(stop_accepting)
                    .await
            } => served,
            () = drain_deadline => Ok(()),
        };
        let tasks = tasks.stop(DRAIN_TIMEOUT).await;
        served?;
        Ok(tasks?)
    }
}

/// The whole HTTP surface. Public so tests can drive it without a socket.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    // The last layer runs first: the client's address, the per-address limit, then
    // authentication (with its budget of failures per address).
    let protected = api::routes()
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .route_layer(middleware::from_fn_with_state(
            state.address_limiter.clone(),
            rate_limit::limit_address,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.trusted_proxies.clone(),
            client_address::resolve,
        ));
    Router::new()
        .merge(protected)
        .route("/livez", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/openapi.json", get(openapi::serve))
        .fallback(not_found)
        .layer(middleware::from_fn(access_log))
        .layer(middleware::from_fn(move |request, next| {
            context::attach(request_timeout, request, next)
        }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "no such route; see /openapi.json")
}

/// Authenticates, then rate-limits per identity; the route checks the scope it needs. An
/// address that failed to authenticate too often is refused before its credential is
/// looked at (`auth_failures`).
async fn authorize(
    AxumState(state): AxumState<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = request.extensions().get::<ClientAddress>().map(|c| c.0);
    let now = std::time::Instant::now();
    if let Some(address) = client
        && let Some(wait) = state.auth_failures.blocked(address, now)
    {
        metrics::counter!(auth_failures::AUTH_THROTTLED).increment(1);
        return Problem::too_many_requests("too many failed authentications from this address", wait).into_response();
    }
    let principal = match state.auth.authenticate(request.headers()).await {
        Ok(principal) => principal,
        Err(problem) => {
            if problem.status == StatusCode::UNAUTHORIZED.as_u16()
                && let Some(address) = client
            {
                state.auth_failures.failed(address, now);
            }
            return problem.into_response();
        }
    };
    if let Err(wait) = state.limiter.check(&principal.identity()) {
        return Problem::too_many_requests(format!("rate limit exceeded for {}", principal.subject), wait)
            .into_response();
    }
    if let Some(cx) = request.extensions_mut().get_mut::<RequestContext>() {
        // With the kind of credential: an API key and a token user of one name are two
        // users to the services (their idempotency keys are scoped by it).
        cx.user = Some(principal.identity());
    }
    request.extensions_mut().insert(principal.clone());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(principal);
    response
}

/// One JSON log line per request: route, status, duration, user, cache outcome.
async fn access_log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let correlation_id = request
        .extensions()
        .get::<RequestContext>()
        .map(|cx| cx.correlation_id.clone())
        .unwrap_or_default();
    // The request's server span, child of the client's span if it sent a `traceparent`;
    // downstream calls carry it on (see `platform::resilience::Attempt::request`).
    let span = tracing::info_span!(
        "http",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
    );
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    platform::telemetry::continue_trace(&span, traceparent.as_deref());
    let response = next.run(request).instrument(span.clone()).await;
    let user = response
        .extensions()
        .get::<Principal>()
        .map(|p| p.subject.clone());
    let cache = response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let elapsed = started.elapsed();
    platform::metrics::record_http(method.as_str(), &route, response.status().as_u16(), elapsed);
    span.in_scope(|| {
        tracing::info!(
            http.method = %method,
            http.route = %route,
            status = response.status().as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            correlation_id = %correlation_id,
            userId = user.as_deref(),
            cache = cache.as_deref(),
            "request"
        )
    });
    response
}
