//! The event bus behind two traits, so the relay, the consumers and the tests do not care
//! whether Kafka or SQS carries the messages. The adapter for the bus (the crate's
//! `kafka` or `sqs` feature) is in `adapter/`; only that client is compiled.
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
        BusError {
            message: message.into(),
            rejected: false,
        }
    }

    /// The broker refused this message for good.
    pub fn rejected(message: impl Into<String>) -> Self {
        BusError {
            message: message.into(),
            rejected: true,
        }
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
    fn publish(
        &self,
        message: &OutgoingMessage,
    ) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Makes sure the topics (or queues) exist; safe to call again, e.g. after the broker
    /// came back empty.
    fn ensure_topics(&self, topics: &[String])
    -> impl Future<Output = Result<(), BusError>> + Send;
}

pub trait Subscriber: Send + 'static {
    /// Waits for the next message.
    fn next(&mut self) -> impl Future<Output = Result<Delivery, BusError>> + Send;

    /// Acknowledges a message, so it is not delivered to this consumer group again.
    fn ack(&mut self, delivery: &Delivery) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Hands back, on stop, what was received but not processed (`unprocessed`, and
    /// whatever this subscriber still buffers), so another consumer gets it now rather
    /// than after a timeout. By default nothing: a Kafka offset that was not committed is
    /// read again by the group.
    fn release(&mut self, unprocessed: Vec<Delivery>) -> impl Future<Output = ()> + Send {
        drop(unprocessed);
        std::future::ready(())
    }

    /// The gate [`next_or_stop`] closes when the stop comes, so that a `next` in flight
    /// finishes the receive it is in and starts no other. By default one nobody reads: a
    /// Kafka fetch leaves nothing behind at the broker.
    fn poll_gate(&self) -> PollGate {
        PollGate::default()
    }
}

/// Whether a subscriber may start another receive (see [`Subscriber::poll_gate`]).
#[derive(Debug, Clone, Default)]
pub struct PollGate(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl PollGate {
    pub fn close(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_closed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What [`next_or_stop`] came back with.
pub enum Next {
    Received(Result<Delivery, BusError>),
    /// `stop` turned true; what a receive in flight brought meanwhile, to release.
    Stopped(Vec<Delivery>),
}

/// The next message, or the stop. A receive already in flight when the stop comes gets
/// `grace` to finish: an SQS long poll that is abandoned would still hand its messages to
/// this consumer, hidden from every other for the visibility timeout, while one that
/// finishes can give them back ([`Subscriber::release`]).
pub async fn next_or_stop<S: Subscriber>(
    subscriber: &mut S,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    grace: std::time::Duration,
) -> Next {
    let gate = subscriber.poll_gate();
    let next = subscriber.next();
    tokio::pin!(next);
    tokio::select! {
        received = &mut next => Next::Received(received),
        () = stopped(stop) => {
            // A receive abandoned by the timeout below would live on at the broker and
            // could still take messages after this process is gone: start none.
            gate.close();
            let late = tokio::time::timeout(grace, &mut next).await;
            Next::Stopped(late.ok().and_then(Result::ok).into_iter().collect())
        }
    }
}

/// The next message for a consumer that has nothing to redo when a receive fails (the
/// gateway's cache invalidation, the console): a failed receive is logged, naming the
/// consumer as `what`, and tried again after a full-jitter backoff between `backoff`'s
/// bounds. None once `stop` is true, after what came in meanwhile was released.
pub async fn next_retrying<S: Subscriber>(
    subscriber: &mut S,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    grace: std::time::Duration,
    backoff: (std::time::Duration, std::time::Duration),
    what: &str,
) -> Option<Delivery> {
    let mut failures = 0u32;
    loop {
        match next_or_stop(subscriber, stop, grace).await {
            Next::Received(Ok(delivery)) => return Some(delivery),
            Next::Received(Err(e)) => {
                let delay = crate::backoff::full_jitter(backoff.0, backoff.1, failures);
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, ?delay, "cannot receive events for {what}");
                tokio::select! {
                    () = stopped(stop) => {
                        subscriber.release(Vec::new()).await;
                        return None;
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Next::Stopped(late) => {
                subscriber.release(late).await;
                return None;
            }
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone). Holds no borrow of the value when
/// it resolves, so the future awaiting it stays `Send`.
pub async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A subscriber whose receive takes `receive` and brings one message, like a long
    /// poll that a message arrives in.
    struct SlowReceive {
        receive: Duration,
    }

    impl Subscriber for SlowReceive {
        async fn next(&mut self) -> Result<Delivery, BusError> {
            tokio::time::sleep(self.receive).await;
            Ok(Delivery {
                topic: "t".into(),
                key: "k".into(),
                payload: Vec::new(),
                headers: BTreeMap::new(),
                receipt: Receipt::default(),
            })
        }

        async fn ack(&mut self, _delivery: &Delivery) -> Result<(), BusError> {
            Ok(())
        }
    }

    async fn stopped_during_a_receive(receive: Duration, grace: Duration) -> Next {
        let (stop, mut stopping) = tokio::sync::watch::channel(false);
        let mut subscriber = SlowReceive { receive };
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop.send(true).unwrap();
            stop
        });
        let next = next_or_stop(&mut subscriber, &mut stopping, grace).await;
        drop(stopper.await);
        next
    }

    #[tokio::test(start_paused = true)]
    async fn a_receive_in_flight_at_the_stop_finishes_and_what_it_brought_is_handed_back() {
        // Dropping the receive instead would leave its message with a process about to exit.
        match stopped_during_a_receive(Duration::from_millis(300), Duration::from_secs(1)).await {
            Next::Stopped(late) => assert_eq!(late.len(), 1, "the message the receive brought"),
            Next::Received(_) => panic!("the stop came first"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_receive_longer_than_the_grace_is_given_up() {
        match stopped_during_a_receive(Duration::from_secs(5), Duration::from_millis(100)).await {
            Next::Stopped(late) => assert!(late.is_empty()),
            Next::Received(_) => panic!("the stop came first"),
        }
    }

    /// A broker that refuses the first `failures` receives, then brings a message; counts
    /// the receives and the releases.
    struct Flaky {
        failures: usize,
        receives: usize,
        releases: usize,
    }

    impl Subscriber for Flaky {
        async fn next(&mut self) -> Result<Delivery, BusError> {
            self.receives += 1;
            if self.receives <= self.failures {
                return Err(BusError::new("broker unreachable"));
            }
            SlowReceive {
                receive: Duration::ZERO,
            }
            .next()
            .await
        }

        async fn ack(&mut self, _delivery: &Delivery) -> Result<(), BusError> {
            Ok(())
        }

        async fn release(&mut self, _unprocessed: Vec<Delivery>) {
            self.releases += 1;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_receive_is_tried_again_after_a_backoff_until_the_stop() {
        let backoff = (Duration::from_millis(100), Duration::from_secs(1));
        let (stop, mut stopping) = tokio::sync::watch::channel(false);
        let mut flaky = Flaky {
            failures: 3,
            receives: 0,
            releases: 0,
        };
        let got = next_retrying(&mut flaky, &mut stopping, Duration::ZERO, backoff, "a test").await;
        assert!(got.is_some(), "the message after three failures");
        assert_eq!((flaky.receives, flaky.releases), (4, 0));

        // Failing on, it waits in its backoff; the stop ends it there, with a release. (A
        // thousand failures bound the test: a loop without a backoff gets the message.)
        let mut down = Flaky {
            failures: 1000,
            receives: 0,
            releases: 0,
        };
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stop.send(true).unwrap();
            stop
        });
        let got = next_retrying(&mut down, &mut stopping, Duration::ZERO, backoff, "a test").await;
        drop(stopper.await);
        assert!(got.is_none());
        assert_eq!(down.releases, 1);
        // Backed off between receives: at most one per 100 ms (the base), not a busy loop.
        assert!(
            (2..=50).contains(&down.receives),
            "{} receives in 5 s",
            down.receives
        );
    }

    /// A queue that stays empty: each receive is a long poll that brings nothing, and
    /// `next` polls again until the gate closes, like the SQS subscriber.
    struct EmptyPolls {
        poll: Duration,
        started: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        gate: PollGate,
    }

    impl Subscriber for EmptyPolls {
        async fn next(&mut self) -> Result<Delivery, BusError> {
            loop {
                if self.gate.is_closed() {
                    return Err(BusError::new("stopping: no further receive"));
                }
                self.started
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(self.poll).await;
            }
        }

        async fn ack(&mut self, _delivery: &Delivery) -> Result<(), BusError> {
            Ok(())
        }

        fn poll_gate(&self) -> PollGate {
            self.gate.clone()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_receive_starts_after_the_stop() {
        // One abandoned at the end of the grace would live on at the broker and could take
        // messages after the process exited, hidden for the visibility timeout.
        let (stop, mut stopping) = tokio::sync::watch::channel(false);
        let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut subscriber = EmptyPolls {
            poll: Duration::from_millis(300),
            started: started.clone(),
            gate: PollGate::default(),
        };
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop.send(true).unwrap();
            stop
        });
        let began = tokio::time::Instant::now();
        let next = next_or_stop(&mut subscriber, &mut stopping, Duration::from_secs(1)).await;
        drop(stopper.await);
        assert!(matches!(next, Next::Stopped(late) if late.is_empty()));
        assert_eq!(
            started.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "only the receive in flight"
        );
        assert_eq!(
            began.elapsed(),
            Duration::from_millis(300),
            "stopped when that receive ended"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_stop_the_message_is_received() {
        let (_stop, mut stopping) = tokio::sync::watch::channel(false);
        let mut subscriber = SlowReceive {
            receive: Duration::from_millis(10),
        };
        let next = next_or_stop(&mut subscriber, &mut stopping, Duration::ZERO).await;
        assert!(matches!(next, Next::Received(Ok(_))));
    }
}
