//! Resilience per dependency: what a caller (the gateway, or a service that `calls`
//! another) puts around every call to one gRPC service. A bulkhead, a circuit breaker and a
//! timeout per attempt on the channel; retries with backoff and jitter for idempotent calls
//! only, never past the request's deadline (`dependency`), which a service passes on to the
//! calls it makes while serving one (`deadline`); calls spread over the dependency's
//! healthy replicas (`replicas`).

mod breaker;
pub mod deadline;
mod dependency;
pub mod replicas;

pub use breaker::{Breaker, BreakerConfig, BreakerLayer, BreakerOpen, OPEN_GAUGE, Permit, State};
pub use dependency::{
    Attempt, AttemptFuture, CallContext, Dependency, DependencyConfig, Retry, Stack,
};
