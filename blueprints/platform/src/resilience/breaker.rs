//! A circuit breaker as a tower layer, one per dependency of a caller (the gateway or a
//! service).
//!
//! Closed: calls pass; `failure_threshold` consecutive failures open it. Open: calls fail at
//! once (no connection attempt, no timeout to wait out) for `open_for`. Half-open: one probe
//! call passes; its success closes the breaker, its failure opens it again. Outcomes of
//! calls admitted before it opened, arriving late, are ignored.
//!
//! A failure is a transport error, a timeout, or a response whose `grpc-status` says the
//! service is unavailable or too slow; answers such as NOT_FOUND are successes here.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::observe::trailers_only_status;
use tower::{BoxError, Layer, Service};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub open_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
        }
    }
}

/// The error of a call the breaker refused.
#[derive(Debug)]
pub struct BreakerOpen {
    pub dependency: Arc<str>,
}

impl fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit breaker for {} is open", self.dependency)
    }
}

impl std::error::Error for BreakerOpen {}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive_failures: u32,
    opened_at: Instant,
    probe_in_flight: bool,
}

/// The gauge `deploy/alerts.yml` watches: 1 while the breaker is open or probing, per
/// caller and callee.
pub const OPEN_GAUGE: &str = "dependency_breaker_open";

/// Shared state of one dependency's breaker; clones see the same state.
#[derive(Debug, Clone)]
pub struct Breaker {
    caller: Arc<str>,
    name: Arc<str>,
    config: BreakerConfig,
    inner: Arc<Mutex<Inner>>,
}

impl Breaker {
    /// The breaker `caller` keeps for its calls to `name`.
    pub fn new(caller: &str, name: &str, config: BreakerConfig) -> Breaker {
        metrics::gauge!(OPEN_GAUGE, "caller" => caller.to_string(), "callee" => name.to_string())
            .set(0.0);
        Breaker {
            caller: Arc::from(caller),
            name: Arc::from(name),
            config,
            inner: Arc::new(Mutex::new(Inner {
                state: State::Closed,
                consecutive_failures: 0,
                opened_at: Instant::now(),
                probe_in_flight: false,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state as a caller would see it now (an expired open period reads half-open).
    pub fn state(&self) -> State {
        let inner = self.lock();
        match inner.state {
            State::Open if inner.opened_at.elapsed() >= self.config.open_for => State::HalfOpen,
            state => state,
        }
    }

    /// Lets a call through, or refuses it while open.
    pub fn try_acquire(&self) -> Result<Permit, BreakerOpen> {
        let mut inner = self.lock();
        let probe = match inner.state {
            State::Closed => false,
            State::Open if inner.opened_at.elapsed() < self.config.open_for => {
                return Err(self.refused());
            }
            State::Open | State::HalfOpen if inner.probe_in_flight => return Err(self.refused()),
            State::Open | State::HalfOpen => {
                if inner.state == State::Open {
                    tracing::info!(dependency = %self.name, "circuit breaker half-open: probing");
                }
                inner.state = State::HalfOpen;
                self.report(1.0);
                inner.probe_in_flight = true;
                true
            }
        };
        Ok(Permit {
            breaker: self.clone(),
            probe,
            settled: false,
        })
    }

    fn report(&self, open: f64) {
        metrics::gauge!(OPEN_GAUGE, "caller" => self.caller.to_string(), "callee" => self.name.to_string()).set(open);
    }

    fn refused(&self) -> BreakerOpen {
        BreakerOpen {
            dependency: self.name.clone(),
        }
    }

    fn record(&self, probe: bool, success: bool) {
        let mut inner = self.lock();
        if probe {
            inner.probe_in_flight = false;
        } else if inner.state != State::Closed {
            // A call admitted while closed that answers after the breaker opened says
            // nothing about the service now: only the probe decides.
            return;
        }
        if success {
            if inner.state != State::Closed {
                tracing::info!(dependency = %self.name, "circuit breaker closed");
            }
            inner.state = State::Closed;
            inner.consecutive_failures = 0;
            self.report(0.0);
            return;
        }
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        let trips = probe
            || (inner.state == State::Closed
                && inner.consecutive_failures >= self.config.failure_threshold);
        if trips {
            tracing::warn!(
                dependency = %self.name,
                failures = inner.consecutive_failures,
                open_for = ?self.config.open_for,
                "circuit breaker opened"
            );
            inner.state = State::Open;
            inner.opened_at = Instant::now();
            self.report(1.0);
        }
    }
}

/// One admitted call. Dropped without an outcome (the caller gave up), it frees the probe
/// slot and counts as nothing.
#[must_use]
pub struct Permit {
    breaker: Breaker,
    probe: bool,
    settled: bool,
}

impl Permit {
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.record(self.probe, true);
    }

    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.record(self.probe, false);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.breaker.lock().probe_in_flight = false;
        }
    }
}

/// gRPC codes that mean the dependency is unhealthy, when sent as a trailers-only response
/// (how a server answers a failed unary call): UNAVAILABLE, DEADLINE_EXCEEDED. Not when the
/// dependency answered that a service it calls failed (`x-failed-dependency`): it answered,
/// so it is healthy, and its own breaker on that service is the one to open.
const FAILURE_CODES: [i32; 2] = [14, 4];

fn is_failure<B>(result: &Result<http::Response<B>, BoxError>) -> bool {
    match result {
        Err(_) => true,
        Ok(response) => {
            trailers_only_status(response.headers())
                .is_some_and(|code| FAILURE_CODES.contains(&code))
                && !response
                    .headers()
                    .contains_key(crate::error::FAILED_DEPENDENCY)
        }
    }
}

#[derive(Clone)]
pub struct BreakerLayer {
    breaker: Breaker,
}

impl BreakerLayer {
    pub fn new(breaker: Breaker) -> Self {
        BreakerLayer { breaker }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

#[derive(Clone)]
pub struct BreakerService<S> {
    inner: S,
    breaker: Breaker,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for BreakerService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(open) => return Box::pin(std::future::ready(Err(open.into()))),
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await.map_err(Into::into);
            if is_failure(&result) {
                permit.failure();
            } else {
                permit.success();
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_ms: u64) -> Breaker {
        Breaker::new(
            "gateway",
            "billing",
            BreakerConfig {
                failure_threshold: 3,
                open_for: Duration::from_millis(open_ms),
            },
        )
    }

    #[test]
    fn opens_after_consecutive_failures_and_refuses_while_open() {
        let b = breaker(60_000);
        for _ in 0..2 {
            b.try_acquire().unwrap().failure();
        }
        // A success in between resets the count.
        b.try_acquire().unwrap().success();
        for _ in 0..2 {
            b.try_acquire().unwrap().failure();
        }
        assert_eq!(b.state(), State::Closed);
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), State::Open);
        assert!(b.try_acquire().is_err());
    }

    #[test]
    fn half_open_lets_one_probe_through_and_its_outcome_decides() {
        let b = breaker(0);
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        assert_eq!(b.state(), State::HalfOpen);
        let probe = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err(), "only one probe at a time");
        probe.failure();
        let probe = b.try_acquire().unwrap();
        probe.success();
        assert_eq!(b.state(), State::Closed);
        b.try_acquire().unwrap().success();
    }

    #[test]
    fn a_late_outcome_of_a_call_admitted_before_it_opened_does_not_decide() {
        let b = breaker(60_000);
        let slow = b.try_acquire().unwrap();
        let slow_failure = b.try_acquire().unwrap();
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        assert_eq!(b.state(), State::Open);
        // Calls admitted while it was closed answer now: only a probe decides.
        slow.success();
        assert_eq!(b.state(), State::Open, "a late success must not close it");
        assert!(b.try_acquire().is_err());
        slow_failure.failure();
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let b = breaker(0);
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        drop(b.try_acquire().unwrap());
        assert!(b.try_acquire().is_ok());
    }

    #[test]
    fn unavailable_and_deadline_responses_count_as_failures() {
        let response = |code: &str| {
            Ok::<_, BoxError>(
                http::Response::builder()
                    .header("grpc-status", code)
                    .body(())
                    .unwrap(),
            )
        };
        assert!(is_failure(&response("14")));
        assert!(is_failure(&response("4")));
        assert!(!is_failure(&response("5")), "NOT_FOUND is an answer");
        assert!(!is_failure(&Ok::<_, BoxError>(http::Response::new(()))));
        assert!(is_failure::<()>(&Err("refused".into())));
    }
}
