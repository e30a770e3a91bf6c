//! The outbox relay: publishes unsent outbox rows and marks them sent. At least once: a
//! row is marked only after the broker accepted it, so a crash in between republishes it
//! (consumers deduplicate on the event id).
//!
//! One aggregate's events leave in version order, also with several instances of a service
//! on one database: a relay claims whole aggregates (a transaction-scoped advisory lock per
//! aggregate, skipped when another relay holds it), publishes each aggregate's unsent rows
//! one after another in version order, and stops an aggregate at its first failure, so a
//! later event never overtakes an earlier unsent one. Different aggregates go out
//! concurrently. When the broker is down, rows wait and the relay retries with exponential
//! backoff and jitter; writes go on meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, watch};

use crate::backoff;
use crate::bus::{AGGREGATE_ID, BusError, EVENT_ID, EVENT_TYPE, OutgoingMessage, Publisher};

/// The advisory lock namespace of relays (the first key of `pg_try_advisory_xact_lock`).
const RELAY_LOCK_CLASS: i32 = 0x0b0c;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Topics this service publishes to; created if missing.
    pub topics: Vec<String>,
    pub batch_size: i64,
    /// How long to sleep when the outbox is empty and nobody signals a new row.
    pub idle_poll: Duration,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Published outbox rows and inbox rows older than this are deleted. The inbox must
    /// remember an event id longer than any redelivery can take.
    pub retention: Duration,
    pub purge_every: Duration,
    /// How long shutdown waits for the batch in flight: its messages may be on the bus
    /// already, and a batch abandoned unmarked is sent again by the next relay.
    pub shutdown_grace: Duration,
}

impl RelayConfig {
    pub fn new(topics: Vec<String>) -> Self {
        RelayConfig {
            topics,
            batch_size: 100,
            idle_poll: Duration::from_millis(500),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            retention: Duration::from_secs(7 * 24 * 3600),
            purge_every: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Deletes published outbox rows and inbox rows older than `retention`; returns how many.
pub async fn purge(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let seconds = retention.as_secs_f64();
    let outbox = sqlx::query(
        "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)",
    )
    .bind(seconds)
    .execute(pool)
    .await?
    .rows_affected();
    let inbox = sqlx::query("DELETE FROM inbox WHERE received_at < now() - make_interval(secs => $1)")
        .bind(seconds)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(outbox + inbox)
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("publish: {0}")]
    Publish(#[from] BusError),
}

#[derive(sqlx::FromRow)]
struct Row {
    id: uuid::Uuid,
    topic: String,
    event_type: String,
    aggregate_id: uuid::Uuid,
    payload: Vec<u8>,
    headers: serde_json::Value,
}

impl Row {
    fn message(&self) -> OutgoingMessage {
        let mut headers: BTreeMap<String, String> = self
            .headers
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect();
        headers.insert(EVENT_ID.into(), self.id.to_string());
        headers.insert(EVENT_TYPE.into(), self.event_type.clone());
        headers.insert(AGGREGATE_ID.into(), self.aggregate_id.to_string());
        OutgoingMessage {
            topic: self.topic.clone(),
            key: self.aggregate_id.to_string(),
            payload: self.payload.clone(),
            headers,
        }
    }
}

/// Publishes one batch; returns how many rows were published.
pub async fn relay_batch<P: Publisher>(
    pool: &PgPool,
    publisher: &P,
    limit: i64,
) -> Result<usize, RelayError> {
    let mut tx = pool.begin().await?;
    // The aggregates waiting longest that no other relay is publishing right now. Claimed
    // in a statement of its own: the rows are read by the next one, whose snapshot is
    // taken after the locks, so it sees what a relay that held one before committed.
    let claimed: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT aggregate_id FROM ( \
             SELECT aggregate_id, min(created_at) AS since FROM outbox \
             WHERE published_at IS NULL GROUP BY aggregate_id ORDER BY since LIMIT $1 \
         ) AS pending \
         WHERE pg_try_advisory_xact_lock($2, hashtext(aggregate_id::text))",
    )
    .bind(limit)
    .bind(RELAY_LOCK_CLASS)
    .fetch_all(&mut *tx)
    .await?;
    if claimed.is_empty() {
        return Ok(0);
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, topic, event_type, aggregate_id, payload, headers FROM outbox \
         WHERE published_at IS NULL AND aggregate_id = ANY($1) \
         ORDER BY aggregate_id, aggregate_version, created_at, id LIMIT $2",
    )
    .bind(&claimed)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    // One sequence per aggregate, in version order; the sequences run concurrently.
    let mut sequences: Vec<&[Row]> = Vec::new();
    let mut rest = rows.as_slice();
    while let Some(first) = rest.first() {
        let len = rest.iter().take_while(|r| r.aggregate_id == first.aggregate_id).count();
        let (sequence, tail) = rest.split_at(len);
        sequences.push(sequence);
        rest = tail;
    }
    let outcomes = futures_util::future::join_all(sequences.into_iter().map(|sequence| async move {
        let mut sent = Vec::new();
        for row in sequence {
            if let Err(e) = publisher.publish(&row.message()).await {
                // The rest of this aggregate waits for the failed one.
                return (sent, Some((row.id, e)));
            }
            sent.push(row.id);
        }
        (sent, None)
    }))
    .await;
    let mut sent = Vec::new();
    let mut failed = Vec::new();
    let mut first_error = None;
    for (ids, failure) in outcomes {
        sent.extend(ids);
        if let Some((id, e)) = failure {
            failed.push(id);
            first_error.get_or_insert(e);
        }
    }
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(&sent)
        .execute(&mut *tx)
        .await?;
    if let Some(e) = &first_error {
        sqlx::query("UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1)")
            .bind(&failed)
            .bind(e.to_string())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    metrics::counter!(crate::metrics::OUTBOX_PUBLISHED).increment(sent.len() as u64);
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(sent.len()),
    }
}

/// Runs until `stop` turns true. `wake` is notified after a commit that wrote an outbox
/// row, so events leave without waiting for the next poll.
pub async fn run<P: Publisher>(
    pool: PgPool,
    publisher: Arc<P>,
    wake: Arc<Notify>,
    config: RelayConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    let mut topics_ready = false;
    let mut next_purge = tokio::time::Instant::now();
    while !*stop.borrow() {
        if tokio::time::Instant::now() >= next_purge {
            match purge(&pool, config.retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "purged old outbox and inbox rows"),
                Err(e) => tracing::warn!(error = %e, "purge failed"),
            }
            next_purge = tokio::time::Instant::now() + config.purge_every;
        }
        // Shutdown lets the batch in flight finish, for at most `shutdown_grace`: only a
        // call to a slow or unreachable broker is cut short, and its batch rolls back and
        // is sent again later, which at-least-once delivery allows.
        let result = {
        let work = async {
            if !topics_ready {
                match publisher.ensure_topics(&config.topics).await {
                    Ok(()) => topics_ready = true,
                    Err(e) => tracing::warn!(error = %e, "relay cannot create its topics yet"),
                }
            }
            relay_batch(&pool, &*publisher, config.batch_size).await
        };
        tokio::pin!(work);
        tokio::select! {
            _ = stop.changed() => {
                if tokio::time::timeout(config.shutdown_grace, &mut work).await.is_err() {
                    tracing::warn!(grace = ?config.shutdown_grace, "relay batch cut short by shutdown");
                }
                break;
            }
            result = &mut work => result,
        }
        };
        let pause = match result {
            Ok(0) => {
                failures = 0;
                Some(config.idle_poll)
            }
            Ok(n) => {
                failures = 0;
                tracing::debug!(published = n, "outbox relayed");
                None
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                topics_ready = false;
                let delay = backoff::full_jitter(config.base_backoff, config.max_backoff, failures);
                tracing::warn!(error = %e, attempt = failures, retry_in_ms = delay.as_millis() as u64, "outbox relay failed");
                Some(delay)
            }
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = stop.changed() => {}
                () = wake.notified(), if failures == 0 => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
    tracing::info!("outbox relay stopped");
}
