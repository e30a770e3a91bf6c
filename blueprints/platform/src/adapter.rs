//! The event bus client, chosen by feature: `kafka` (rdkafka) or `sqs` (aws-sdk-sqs). Only
//! the chosen client is compiled; both expose the same names (`Bus`, `BusConfig`,
//! `BusSubscriber`, `LagProbe`, `STOP_GRACE`), so nothing else in the chassis or in a
//! service depends on which.

#[cfg(not(any(feature = "kafka", feature = "sqs")))]
compile_error!("platform needs an event bus: enable its `kafka` or its `sqs` feature");

#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "kafka")]
pub use kafka::*;

#[cfg(all(feature = "sqs", not(feature = "kafka")))]
mod sqs;
#[cfg(all(feature = "sqs", not(feature = "kafka")))]
pub use sqs::*;
