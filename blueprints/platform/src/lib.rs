//! What every service of the workspace shares. Services depend on this crate; it depends on
//! no service, so a change here is the only change that touches them all.

pub mod adapter;
pub mod backoff;
pub mod bus;
pub mod config;
#[cfg(feature = "console")]
pub mod console;
pub mod consumer;
pub mod context;
pub mod db;
pub mod error;
pub mod expiring;
pub mod faults;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod health;
pub mod idempotency;
pub mod keyed_change;
pub mod keyed_write;
pub mod log_writer;
pub mod metrics;
pub mod observe;
pub mod outbox;
pub mod parked;
pub mod relay;
pub mod resilience;
pub mod saga;
pub mod service;
pub mod service_auth;
pub mod shutdown;
pub mod supervise;
pub mod table;
pub mod telemetry;
pub mod time;

/// The allocator every binary of the system declares as its global one (ADR 0015):
/// `#[global_allocator] static ALLOCATOR: platform::Allocator = platform::Allocator;`
pub use mimalloc::MiMalloc as Allocator;

#[cfg(feature = "test-support")]
pub mod test_support;
