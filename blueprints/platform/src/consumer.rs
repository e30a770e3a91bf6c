//! Idempotent consumers. Each message's event id goes into the `inbox` table in the same
//! transaction as the handler's state change, so a redelivered event has no second effect.
//! A message that fails `max_attempts` times, or can never succeed (no event id, a payload
//! that does not decode), goes to the dead-letter topic, and the consumer moves on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tracing::Instrument;

use crate::backoff;
use crate::bus::{
    DEAD_LETTER_ATTEMPTS, DEAD_LETTER_REASON, DEAD_LETTER_TOPIC, Delivery, EVENT_ID, EVENT_TYPE,
    OutgoingMessage, Publisher, Subscriber,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    /// Retrying cannot help (e.g. the payload does not decode): dead-letter at once.
    #[error("{0}")]
    Permanent(String),
    /// May succeed on a later attempt; counts toward `max_attempts`.
    #[error("{0}")]
    Transient(String),
    /// Our own infrastructure is down (the database is unreachable): nothing is wrong with
    /// the message, so it is retried until that clears, without counting attempts. A
    /// database outage must not fill the dead-letter topic with good messages.
    #[error("{0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => HandlerError::Unavailable(e.to_string()),
            other => HandlerError::Transient(other.to_string()),
        }
    }
}

pub trait Handler: Send + Sync + 'static {
    /// Applies one message inside the transaction that also records it in the inbox.
    fn handle(
        &self,
        conn: &mut PgConnection,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Whether an event of this type does anything here. An aggregate's topic carries all
    /// of its events; the ones nobody handles pass by without a transaction (there is no
    /// effect to deduplicate, so no inbox row either). By default every event is handled.
    fn handles(&self, event_type: &str) -> bool {
        let _ = event_type;
        true
    }

    /// Called after the transaction committed, e.g. to wake the outbox relay.
    fn committed(&self) {}
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Topics to consume, created if missing.
    pub topics: Vec<String>,
    pub dead_letter_topic: String,
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl ConsumerConfig {
    pub fn new(topics: Vec<String>, dead_letter_topic: String) -> Self {
        ConsumerConfig {
            topics,
            dead_letter_topic,
            max_attempts: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Its event id was in the inbox already.
    Duplicate,
    /// No handler for its type here ([`Handler::handles`]): acknowledged without a write.
    PassedBy,
    DeadLettered {
        reason: String,
        attempts: u32,
    },
    /// Shutdown came first; the message is not acknowledged and will be redelivered.
    Interrupted,
}

/// Applies one message: inbox row and handler in one transaction, retried with backoff.
pub async fn process<H: Handler, P: Publisher>(
    pool: &PgPool,
    handler: &H,
    dead_letters: &P,
    config: &ConsumerConfig,
    delivery: &Delivery,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let (reason, attempts) = match apply_with_retries(pool, handler, config, delivery, stop).await {
        Ok(outcome) => return outcome,
        Err(failure) => failure,
    };
    tracing::error!(topic = %delivery.topic, %reason, attempts, "dead-lettering message");
    let mut message = OutgoingMessage {
        topic: config.dead_letter_topic.clone(),
        key: delivery.key.clone(),
        payload: delivery.payload.clone(),
        headers: delivery.headers.clone(),
    };
    message
        .headers
        .insert(DEAD_LETTER_REASON.into(), reason.clone());
    message
        .headers
        .insert(DEAD_LETTER_TOPIC.into(), delivery.topic.clone());
    message
        .headers
        .insert(DEAD_LETTER_ATTEMPTS.into(), attempts.to_string());
    // The message is acknowledged only once its dead letter is safe.
    let mut failures = 0;
    loop {
        match dead_letters.publish(&message).await {
            Ok(()) => return Outcome::DeadLettered { reason, attempts },
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "cannot publish dead letter yet");
                let _ = dead_letters
                    .ensure_topics(std::slice::from_ref(&config.dead_letter_topic))
                    .await;
                let delay = backoff::full_jitter(config.base_backoff, config.max_backoff, failures);
                if wait_or_stop(delay, stop).await {
                    return Outcome::Interrupted;
                }
            }
        }
    }
}

async fn apply_with_retries<H: Handler>(
    pool: &PgPool,
    handler: &H,
    config: &ConsumerConfig,
    delivery: &Delivery,
    stop: &mut watch::Receiver<bool>,
) -> Result<Outcome, (String, u32)> {
    let Some(event_id) = delivery
        .headers
        .get(EVENT_ID)
        .and_then(|v| uuid::Uuid::parse_str(v).ok())
    else {
        return Err(("missing or malformed event_id header".into(), 1));
    };
    if !handler.handles(delivery.headers.get(EVENT_TYPE).map_or("", String::as_str)) {
        return Ok(Outcome::PassedBy);
    }
    let max = config.max_attempts.max(1);
    let mut attempt = 1;
    let mut outage: u32 = 0;
    loop {
        let delay = match apply_once(pool, handler, delivery, event_id).await {
            Ok(true) => {
                handler.committed();
                return Ok(Outcome::Applied);
            }
            Ok(false) => return Ok(Outcome::Duplicate),
            Err(HandlerError::Permanent(reason)) => return Err((reason, attempt)),
            Err(HandlerError::Transient(reason)) if attempt >= max => {
                return Err((reason, attempt));
            }
            Err(HandlerError::Transient(reason)) => {
                tracing::warn!(%reason, attempt, "handler failed, retrying");
                attempt += 1;
                backoff::full_jitter(config.base_backoff, config.max_backoff, attempt - 1)
            }
            Err(HandlerError::Unavailable(reason)) => {
                outage = outage.saturating_add(1);
                tracing::warn!(%reason, retries = outage, "database unavailable, waiting");
                backoff::full_jitter(config.base_backoff, config.max_backoff, outage)
            }
        };
        if wait_or_stop(delay, stop).await {
            return Ok(Outcome::Interrupted);
        }
    }
}

/// Ok(false) when the event was applied before.
async fn apply_once<H: Handler>(
    pool: &PgPool,
    handler: &H,
    delivery: &Delivery,
    event_id: uuid::Uuid,
) -> Result<bool, HandlerError> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO inbox (event_id, topic, event_type) VALUES ($1, $2, $3) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(&delivery.topic)
    .bind(delivery.headers.get(EVENT_TYPE).map_or("", String::as_str))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    handler.handle(&mut tx, delivery).await?;
    tx.commit().await?;
    Ok(true)
}

/// True when `stop` turned true before `delay` passed.
async fn wait_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stop.changed() => true,
        () = tokio::time::sleep(delay) => *stop.borrow(),
    }
}

/// Consumes until `stop` turns true.
pub async fn run<S: Subscriber, P: Publisher, H: Handler>(
    mut subscriber: S,
    pool: PgPool,
    handler: Arc<H>,
    dead_letters: Arc<P>,
    config: ConsumerConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut all_topics = config.topics.clone();
    all_topics.push(config.dead_letter_topic.clone());
    let mut topics_ready = false;
    let mut failures: u32 = 0;
    // Received but not processed when the stop came: handed back on the way out.
    let mut unfinished = Vec::new();
    while !*stop.borrow() {
        if !topics_ready {
            topics_ready = tokio::select! {
                _ = stop.changed() => break,
                ready = dead_letters.ensure_topics(&all_topics) => ready.is_ok(),
            };
        }
        let received =
            match crate::bus::next_or_stop(&mut subscriber, &mut stop, crate::adapter::STOP_GRACE)
                .await
            {
                crate::bus::Next::Received(received) => received,
                crate::bus::Next::Stopped(late) => {
                    unfinished = late;
                    break;
                }
            };
        let delivery = match received {
            Ok(d) => {
                failures = 0;
                d
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                topics_ready = false;
                tracing::warn!(error = %e, "receive failed");
                let delay = backoff::full_jitter(config.base_backoff, config.max_backoff, failures);
                if wait_or_stop(delay, &mut stop).await {
                    break;
                }
                continue;
            }
        };
        // One consumer span per message, child of the span that wrote the event.
        let span = tracing::info_span!(
            "consume",
            otel.name = %format!("{} process", delivery.topic),
            otel.kind = "consumer",
            messaging.destination.name = %delivery.topic,
        );
        crate::telemetry::continue_trace(
            &span,
            delivery
                .headers
                .get(crate::bus::TRACEPARENT)
                .map(String::as_str),
        );
        let started = std::time::Instant::now();
        let outcome = process(
            &pool,
            &*handler,
            &*dead_letters,
            &config,
            &delivery,
            &mut stop,
        )
        .instrument(span.clone())
        .await;
        if outcome == Outcome::Interrupted {
            unfinished.push(delivery);
            break;
        }
        let counted = match &outcome {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::PassedBy => "passed_by",
            Outcome::DeadLettered { .. } => "dead_lettered",
            Outcome::Interrupted => "interrupted",
        };
        span.in_scope(|| {
            tracing::info!(
                topic = %delivery.topic,
                status = counted,
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                "message consumed"
            )
        });
        metrics::counter!(
            crate::metrics::MESSAGES_CONSUMED,
            "topic" => delivery.topic.clone(),
            "outcome" => counted
        )
        .increment(1);
        if let Err(e) = subscriber.ack(&delivery).await {
            tracing::warn!(error = %e, "ack failed; the message may be redelivered");
        }
    }
    subscriber.release(unfinished).await;
    tracing::info!("consumer stopped");
}
