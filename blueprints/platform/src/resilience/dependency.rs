//! One dependency (a gRPC service the caller calls) and the resilience around every call
//! to it. The gateway and every service that `calls` another use this one implementation.
//!
//! The tower stack on the channel, outermost first:
//!   error mapping → bulkhead (concurrency limit, shed when full) → circuit breaker →
//!   timeout → channel (connects lazily, reconnects by itself).
//! The bulkhead sits outside the breaker so that load shedding never counts as the
//! dependency failing.
//!
//! Retries live one level up, in [`Dependency::call`], where the typed request can be
//! cloned (an HTTP body cannot): only for calls the route marks idempotent, with exponential
//! backoff and jitter, never while the breaker is open, and never past the request's
//! deadline. Each attempt carries the remaining deadline as `grpc-timeout`.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::config::{ConfigError, Env};
use crate::service_auth::{LinkKey, Minter};
use tonic::Status;
use tower::load_shed::error::Overloaded;
use tower::timeout::error::Elapsed;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder};
use tracing::Instrument;

use super::breaker::{Breaker, BreakerConfig, BreakerLayer, BreakerOpen, State};
use super::replicas::{self, Discovery, Replicas, Target};

/// What every call on behalf of one request carries: its correlation id, the deadline every
/// call must finish by, and the end user, when there is one.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub correlation_id: String,
    pub deadline: Instant,
    /// The authenticated subject, once known.
    pub user: Option<String>,
}

impl CallContext {
    pub fn new(correlation_id: String, timeout: Duration) -> CallContext {
        CallContext {
            correlation_id,
            deadline: Instant::now() + timeout,
            user: None,
        }
    }
}

/// The channel with its resilience layers, type-erased so every client uses one type. Its
/// error is a concrete `Status` (not a boxed error): tonic's client bounds on a boxed
/// trait object cannot be proven `Send` inside axum handlers.
pub type Stack = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Status,
>;

#[derive(Debug, Clone)]
pub struct DependencyConfig {
    /// Where its replicas are: `http://host:port`, or several separated by commas (see
    /// `replicas`).
    pub addr: String,
    /// How often its names are looked up again and its replicas' health is asked.
    pub discovery: Discovery,
    /// Longest time one attempt may take.
    pub timeout: Duration,
    /// Extra attempts for idempotent calls.
    pub retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub breaker: BreakerConfig,
    /// Calls in flight at most; more are refused at once with 503.
    pub max_concurrent: usize,
    /// The budget of a call made outside any call being served (an event handler, a
    /// background task); inside one, the caller's remaining deadline applies instead.
    pub default_deadline: Duration,
    /// The key of this link, shared with the dependency only (see `service_auth`).
    pub key: LinkKey,
}

impl DependencyConfig {
    /// A dependency for tests and tools: at `addr` (one that nothing listens on,
    /// `http://127.0.0.1:1`, when the test does not need it), with short timeouts, one
    /// retry and a breaker that opens after three failures for two seconds.
    pub fn in_process(addr: String, key: LinkKey, default_deadline: Duration) -> Self {
        DependencyConfig {
            addr,
            discovery: crate::resilience::replicas::Discovery {
                resolve_every: Duration::from_secs(5),
                probe_every: Duration::from_millis(200),
            },
            timeout: Duration::from_secs(1),
            retries: 1,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            breaker: crate::resilience::BreakerConfig {
                failure_threshold: 3,
                open_for: Duration::from_secs(2),
            },
            max_concurrent: 16,
            default_deadline,
            key,
        }
    }

    /// The settings under `<PREFIX>__<name>__...` (`ADDR`, `RESOLVE_EVERY_MS`,
    /// `HEALTH_EVERY_MS`, `TIMEOUT_MS`, `RETRIES`,
    /// `BACKOFF_BASE_MS`, `BACKOFF_MAX_MS`, `BREAKER__FAILURES`, `BREAKER__OPEN_MS`,
    /// `BULKHEAD__MAX_CONCURRENT`), each with its default, and the link's `KEY` (required).
    pub fn from_env(
        env: &Env,
        name: &str,
        default_addr: &str,
        default_deadline: Duration,
    ) -> Result<DependencyConfig, ConfigError> {
        let key = |k: &str| format!("{name}__{k}");
        let millis = |k: &str, default: u64| -> Result<Duration, ConfigError> {
            Ok(Duration::from_millis(env.parse_or(&key(k), default)?))
        };
        // Intervals of a loop that never ends: 0 would spin.
        let at_least_10ms = |k: &str, default: u64| -> Result<Duration, ConfigError> {
            let every = millis(k, default)?;
            if every < Duration::from_millis(10) {
                return Err(ConfigError::Invalid {
                    key: env.key(&key(k)),
                    reason: format!(
                        "{} ms is too often; use 10 or more (default {default})",
                        every.as_millis()
                    ),
                });
            }
            Ok(every)
        };
        Ok(DependencyConfig {
            addr: env.parse_or(&key("ADDR"), default_addr.to_string())?,
            discovery: Discovery {
                resolve_every: at_least_10ms("RESOLVE_EVERY_MS", 5000)?,
                probe_every: at_least_10ms("HEALTH_EVERY_MS", 1000)?,
            },
            timeout: millis("TIMEOUT_MS", 1000)?,
            retries: env.parse_or(&key("RETRIES"), 2)?,
            backoff_base: millis("BACKOFF_BASE_MS", 50)?,
            backoff_max: millis("BACKOFF_MAX_MS", 500)?,
            breaker: BreakerConfig {
                failure_threshold: env.parse_or(&key("BREAKER__FAILURES"), 5)?,
                open_for: millis("BREAKER__OPEN_MS", 5000)?,
            },
            max_concurrent: env.parse_or(&key("BULKHEAD__MAX_CONCURRENT"), 64)?,
            default_deadline,
            key: LinkKey::from_env(
                env,
                &key("KEY"),
                "set it to this link's key, the same value the called service has for this caller (at least 32 characters; deploy/local/up.sh and deploy/compose-env.sh generate one per link)",
            )?,
        })
    }
}

/// One attempt's call, boxed (see [`Dependency::call`]).
pub type AttemptFuture<R> =
    Pin<Box<dyn Future<Output = Result<tonic::Response<R>, Status>> + Send>>;

/// May a failed call be sent again?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads, and creates that carry a client's `Idempotency-Key`.
    Idempotent,
    Never,
}

pub struct Dependency {
    caller: &'static str,
    name: &'static str,
    config: DependencyConfig,
    stack: Stack,
    breaker: Breaker,
    replicas: Replicas,
    credential: Minter,
}

/// What one attempt needs: the channel stack and a way to build its request.
pub struct Attempt {
    pub channel: Stack,
    timeout: Duration,
    credential: Minter,
    user: Option<String>,
    correlation_id: String,
}

impl Attempt {
    /// Wraps a message with the attempt's deadline (`grpc-timeout`), the service credential,
    /// the end user and the correlation id.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        self.credential
            .authorize(&mut request, self.user.as_deref());
        if let Ok(value) = self.correlation_id.parse() {
            request.metadata_mut().insert("x-correlation-id", value);
        }
        // The service's span becomes a child of this request's span.
        if let Some(value) = crate::telemetry::current_traceparent().and_then(|t| t.parse().ok()) {
            request.metadata_mut().insert("traceparent", value);
        }
        request
    }
}

impl Dependency {
    /// `caller`'s resilient client of `name`, both processes of `system`; `service` is the
    /// gRPC service whose health says which replicas take calls. Needs a Tokio runtime (a
    /// task keeps the replicas current).
    pub fn new(
        system: &str,
        caller: &'static str,
        name: &'static str,
        service: &'static str,
        config: DependencyConfig,
    ) -> Result<Dependency, String> {
        let credential = Minter::new(&config.key, system, caller, name);
        let targets =
            Target::parse_list(&config.addr).map_err(|e| format!("the address of {name}: {e}"))?;
        let (channel, replicas) = replicas::balance(
            caller,
            name,
            service,
            targets,
            config.discovery,
            config.timeout,
        )?;
        let breaker = Breaker::new(caller, name, config.breaker);
        let stack = ServiceBuilder::new()
            .map_err(into_status)
            .load_shed()
            .concurrency_limit(config.max_concurrent)
            .layer(BreakerLayer::new(breaker.clone()))
            .timeout(config.timeout)
            .service(channel);
        Ok(Dependency {
            caller,
            name,
            config,
            stack: BoxCloneSyncService::new(stack),
            breaker,
            replicas,
            credential,
        })
    }

    /// Its replicas as this caller sees them.
    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn breaker_state(&self) -> State {
        self.breaker.state()
    }

    /// [`Dependency::call`] as part of the call being served (its deadline, correlation id
    /// and end user; see `deadline::current`), or, outside one, with a new correlation id
    /// and the configured default deadline.
    pub async fn call_current<R, F>(
        &self,
        method: &'static str,
        retry: Retry,
        attempt: F,
    ) -> Result<R, Status>
    where
        F: FnMut(Attempt) -> AttemptFuture<R>,
    {
        let cx = super::deadline::current().unwrap_or_else(|| {
            CallContext::new(
                uuid::Uuid::new_v4().to_string(),
                self.config.default_deadline,
            )
        });
        self.call(&cx, method, retry, attempt).await
    }

    /// Runs `attempt` until it succeeds, fails for good, or the request's deadline is near.
    /// The attempt's future is boxed: naming one concrete `Send` type keeps the compiler
    /// from having to prove tonic's client bounds for every lifetime inside axum handlers.
    /// `method` names the RPC in the client metrics (`grpc_client_handled_total`, each
    /// attempt counted with its code).
    pub async fn call<R, F>(
        &self,
        cx: &CallContext,
        method: &'static str,
        retry: Retry,
        attempt: F,
    ) -> Result<R, Status>
    where
        F: FnMut(Attempt) -> AttemptFuture<R>,
    {
        // The client span: a child of the span serving the request, and the parent the
        // callee continues (each attempt's `traceparent` names it).
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %format!("{}/{method}", self.name),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.method = method,
            peer.service = self.name,
        );
        self.attempts(cx, method, retry, attempt)
            .instrument(span)
            .await
    }

    async fn attempts<R, F>(
        &self,
        cx: &CallContext,
        method: &'static str,
        retry: Retry,
        mut attempt: F,
    ) -> Result<R, Status>
    where
        F: FnMut(Attempt) -> AttemptFuture<R>,
    {
        let mut retries = 0;
        loop {
            let remaining = cx.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Status::deadline_exceeded(format!(
                    "the request's deadline passed before {} answered",
                    self.name
                )));
            }
            let timeout = remaining.min(self.config.timeout);
            if self.replicas.balanced() == 0 {
                // A name not looked up yet (or never resolved): fail now, not at the timeout.
                return Err(Status::unavailable(format!(
                    "no replica of {} is known yet (its address did not resolve)",
                    self.name
                )));
            }
            let outcome = attempt(Attempt {
                channel: self.stack.clone(),
                timeout,
                credential: self.credential.clone(),
                user: cx.user.clone(),
                correlation_id: cx.correlation_id.clone(),
            });
            let started = Instant::now();
            let result = match tokio::time::timeout(timeout, outcome).await {
                Ok(result) => result.map(tonic::Response::into_inner),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "{} did not answer within {timeout:?}",
                    self.name
                ))),
            };
            let code = result.as_ref().map_or_else(|s| s.code() as i32, |_| 0);
            crate::metrics::record_grpc_client(
                self.caller,
                self.name,
                method,
                crate::metrics::grpc_code_name(code),
                started.elapsed(),
            );
            let status = match result {
                Ok(value) => return Ok(value),
                Err(status) => status,
            };
            let delay = crate::backoff::full_jitter(
                self.config.backoff_base,
                self.config.backoff_max,
                retries,
            );
            let may_retry = retry == Retry::Idempotent
                && retries < self.config.retries
                && is_transient(&status)
                && self.breaker.state() == State::Closed
                && Instant::now() + delay < cx.deadline;
            if !may_retry {
                return Err(status);
            }
            retries += 1;
            tracing::info!(
                dependency = self.name,
                attempt = retries + 1,
                code = ?status.code(),
                delay_ms = delay.as_millis() as u64,
                "retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// Failures worth another attempt: the service did not get or did not finish the call. Not
/// a failure of a service it calls in turn: that one already had its retries.
fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    ) && !status.message().contains("circuit breaker")
        && status
            .metadata()
            .get(crate::error::FAILED_DEPENDENCY)
            .is_none()
}

/// Turns the stack's errors into gRPC statuses, which tonic passes through unchanged;
/// transport errors become UNAVAILABLE the way tonic itself maps them.
/// `error` and its sources, outermost first.
fn source_chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}

fn into_status(error: BoxError) -> Status {
    if let Some(open) = error.downcast_ref::<BreakerOpen>() {
        return Status::unavailable(open.to_string());
    }
    if error.is::<Overloaded>() {
        return Status::resource_exhausted(
            "too many calls in flight to this service (bulkhead full)",
        );
    }
    if error.is::<Elapsed>() {
        return Status::deadline_exceeded("the call timed out");
    }
    // tonic enforces the attempt's `grpc-timeout` on the client too. When the caller's
    // remaining deadline is that timeout, this timer and the deadline's race, and the
    // loser's error must not turn an expired deadline into an outage (UNAVAILABLE).
    if source_chain(&*error).any(|cause| cause.is::<tonic::TimeoutExpired>()) {
        return Status::deadline_exceeded("the call ran out of its deadline");
    }
    // A refused connection, or one reset under the call (the service was killed): the
    // service is unavailable, which callers may retry, not an unknown failure.
    if error.is::<tonic::transport::Error>() {
        let mut reason = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            reason = format!("{reason}: {cause}");
            source = cause.source();
        }
        return Status::unavailable(reason);
    }
    Status::from_error(error)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn dependency(retries: u32) -> Dependency {
        let key = crate::service_auth::LinkKey::new(&"s".repeat(32)).unwrap();
        let config = DependencyConfig {
            // Nothing listens on port 1; the attempts below never use the channel anyway.
            addr: "http://127.0.0.1:1".into(),
            discovery: Discovery {
                resolve_every: Duration::from_secs(5),
                probe_every: Duration::from_secs(1),
            },
            timeout: Duration::from_millis(200),
            retries,
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            breaker: BreakerConfig {
                failure_threshold: 100,
                open_for: Duration::from_secs(1),
            },
            max_concurrent: 4,
            default_deadline: Duration::from_secs(3),
            key,
        };
        Dependency::new(
            "shop",
            "gateway",
            "orders",
            "shop.orders.v1.OrdersService",
            config,
        )
        .unwrap()
    }

    async fn attempts(dependency: &Dependency, retry: Retry, status: Status) -> (u32, Status) {
        let count = Arc::new(AtomicU32::new(0));
        let counter = count.clone();
        let cx = CallContext::new("test".into(), Duration::from_secs(5));
        let result = dependency
            .call(&cx, "Test", retry, move |_attempt| -> AttemptFuture<()> {
                counter.fetch_add(1, Ordering::SeqCst);
                let status = status.clone();
                Box::pin(async move { Err(status) })
            })
            .await;
        (count.load(Ordering::SeqCst), result.unwrap_err())
    }

    #[tokio::test]
    async fn only_idempotent_calls_are_retried_and_only_on_transient_failures() {
        let d = dependency(2);
        let (n, _) = attempts(&d, Retry::Idempotent, Status::unavailable("down")).await;
        assert_eq!(n, 3, "one attempt and two retries");
        let (n, _) = attempts(&d, Retry::Never, Status::unavailable("down")).await;
        assert_eq!(n, 1, "a create without an idempotency key is never retried");
        let (n, status) = attempts(&d, Retry::Idempotent, Status::not_found("gone")).await;
        assert_eq!((n, status.code()), (1, tonic::Code::NotFound));
    }

    #[tokio::test]
    async fn every_attempt_is_counted_on_the_callers_side_with_its_code() {
        let handle = crate::metrics::handle();
        let d = dependency(1);
        attempts(&d, Retry::Idempotent, Status::unavailable("down")).await;
        let rendered = handle.render();
        let line = rendered
            .lines()
            .find(|l| {
                l.starts_with("grpc_client_handled_total{")
                    && l.contains("caller=\"gateway\"")
                    && l.contains("callee=\"orders\"")
                    && l.contains("grpc_method=\"Test\"")
                    && l.contains("grpc_code=\"Unavailable\"")
            })
            .unwrap_or_else(|| panic!("no client counter in:\n{rendered}"));
        // One attempt and one retry (other tests in this process may add to it).
        let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count >= 2.0, "{line}");
    }

    #[tokio::test]
    async fn a_call_with_no_budget_left_is_never_sent() {
        let d = dependency(2);
        let mut cx = CallContext::new("test".into(), Duration::from_secs(5));
        cx.deadline = Instant::now();
        let sent = Arc::new(AtomicU32::new(0));
        let counter = sent.clone();
        let result = d
            .call(
                &cx,
                "Test",
                Retry::Idempotent,
                move |_attempt| -> AttemptFuture<()> {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Box::pin(async { Ok(tonic::Response::new(())) })
                },
            )
            .await;
        assert_eq!(result.unwrap_err().code(), tonic::Code::DeadlineExceeded);
        assert_eq!(sent.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn each_attempt_gets_the_smaller_of_its_timeout_and_what_is_left_of_the_deadline() {
        let d = dependency(0);
        let timeouts = Arc::new(std::sync::Mutex::new(Vec::new()));
        for budget in [Duration::from_millis(50), Duration::from_secs(5)] {
            let cx = CallContext::new("test".into(), budget);
            let seen = timeouts.clone();
            d.call(
                &cx,
                "Test",
                Retry::Never,
                move |attempt| -> AttemptFuture<()> {
                    seen.lock().unwrap().push(attempt.timeout);
                    Box::pin(async { Ok(tonic::Response::new(())) })
                },
            )
            .await
            .unwrap();
        }
        let timeouts = timeouts.lock().unwrap();
        assert!(timeouts[0] <= Duration::from_millis(50), "{timeouts:?}");
        assert_eq!(
            timeouts[1],
            Duration::from_millis(200),
            "the per-attempt timeout"
        );
    }

    #[tokio::test]
    async fn a_call_made_while_serving_one_inherits_what_is_left_of_its_deadline() {
        let d = dependency(0);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let call = |seen: Arc<std::sync::Mutex<Vec<(Duration, String)>>>| {
            let d = &d;
            async move {
                d.call_current("Test", Retry::Never, move |attempt| -> AttemptFuture<()> {
                    seen.lock()
                        .unwrap()
                        .push((attempt.timeout, attempt.correlation_id.clone()));
                    Box::pin(async { Ok(tonic::Response::new(())) })
                })
                .await
                .unwrap();
            }
        };
        let served = CallContext::new("served-call".into(), Duration::from_millis(80));
        super::super::deadline::scope(served, call(seen.clone())).await;
        call(seen.clone()).await;
        let seen = seen.lock().unwrap();
        assert!(seen[0].0 <= Duration::from_millis(80), "{seen:?}");
        assert_eq!(
            seen[0].1, "served-call",
            "the served call's correlation id travels on"
        );
        assert_eq!(
            seen[1].0,
            Duration::from_millis(200),
            "outside a call: the attempt timeout"
        );
        assert_ne!(seen[1].1, "served-call");
    }

    #[test]
    fn stack_errors_become_statuses_callers_understand() {
        let open = BreakerOpen {
            dependency: Arc::from("billing"),
        };
        assert_eq!(into_status(Box::new(open)).code(), tonic::Code::Unavailable);
        assert_eq!(
            into_status(Box::new(Overloaded::new())).code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            into_status(Box::new(Elapsed::new())).code(),
            tonic::Code::DeadlineExceeded
        );
    }

    /// A transport error caused by tonic's own `grpc-timeout` timer, as tonic wraps it.
    #[derive(Debug)]
    struct Wrapped(tonic::TimeoutExpired);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_deadline_that_tonics_timer_enforced_is_still_deadline_exceeded() {
        // The deadline's own timer and tonic's grpc-timeout timer race; whichever fires,
        // the caller sees DEADLINE_EXCEEDED, never UNAVAILABLE (which it would count as
        // an outage of the dependency).
        for error in [
            Box::new(tonic::TimeoutExpired(())) as BoxError,
            Box::new(Wrapped(tonic::TimeoutExpired(()))),
        ] {
            assert_eq!(into_status(error).code(), tonic::Code::DeadlineExceeded);
        }
    }
}
