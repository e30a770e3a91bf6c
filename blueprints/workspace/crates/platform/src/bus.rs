//! The event bus behind two traits, so the relay, the consumers and the tests do not care
//! whether Kafka or SQS carries the messages. The adapter for the bus chosen at generation
//! is in `adapter.rs`; only that client is compiled.
//!
//! Every message carries these headers (Kafka headers or SQS message attributes):
//! `event_id` (consumers deduplicate on it), `event_type` (fully qualified protobuf name),
//! `aggregate_id`, `correlation_id` and the W3C `traceparent`.

use std::collections::BTreeMap;
use std::future::Future;

pub const EVENT_ID: &str = "event_id";
pub const EVENT_TYPE: &str = "event_type";
pub const AGGREGATE_ID: &str = "aggregate_id";
/// The aggregate's version after the change: orders one aggregate's events.
pub const AGGREGATE_VERSION: &str = "aggregate_version";
pub const CORRELATION_ID: &str = "correlation_id";
pub const TRACEPARENT: &str = "traceparent";
/// Added to a dead-lettered message: why, from where, after how many attempts.
pub const DEAD_LETTER_REASON: &str = "dead_letter_reason";
pub const DEAD_LETTER_TOPIC: &str = "dead_letter_source_topic";
pub const DEAD_LETTER_ATTEMPTS: &str = "dead_letter_attempts";

/// Why a bus operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct BusError {
    pub message: String,
    /// The broker refused this message itself (too large, malformed): sending it again
    /// cannot succeed. Any other failure (broker down, a timeout) may pass later.
    pub rejected: bool,
}

impl BusError {
    /// A failure that may pass later.
    pub fn new(message: impl Into<String>) -> Self {
        BusError { message: message.into(), rejected: false }
    }

    /// The broker refused this message for good.
    pub fn rejected(message: impl Into<String>) -> Self {
        BusError { message: message.into(), rejected: true }
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The logical topic (see the topic naming in the README).
    pub topic: String,
    /// Partitioning key: the aggregate id, so one aggregate's events stay in order.
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// A received message and what is needed to acknowledge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub receipt: Receipt,
}

/// Where a delivery came from, in the terms of the adapter that received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    pub partition: i32,
    pub offset: i64,
    /// SQS receipt handle; empty for Kafka.
    pub handle: String,
}

pub trait Publisher: Send + Sync + 'static {
    /// Publishes one message; resolves when the broker has accepted it.
    fn publish(&self, message: &OutgoingMessage)
    -> impl Future<Output = Result<(), BusError>> + Send;

    /// Makes sure the topics (or queues) exist; safe to call again, e.g. after the broker
    /// came back empty.
    fn ensure_topics(&self, topics: &[String]) -> impl Future<Output = Result<(), BusError>> + Send;
}

pub trait Subscriber: Send + 'static {
    /// Waits for the next message.
    fn next(&mut self) -> impl Future<Output = Result<Delivery, BusError>> + Send;

    /// Acknowledges a message, so it is not delivered to this consumer group again.
    fn ack(&mut self, delivery: &Delivery) -> impl Future<Output = Result<(), BusError>> + Send;
}
