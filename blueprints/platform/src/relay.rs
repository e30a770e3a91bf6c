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
//!
//! A row the broker refuses for good (larger than it accepts, malformed) is parked after
//! `park_after` refusals: `parked_at` is set, the row is counted in `outbox_parked` (an
//! alert fires) and kept for an operator, and the relay goes on with the rest, including
//! the later events of that aggregate, whose consumers then see a version missing. A
//! refusal never makes the relay back off: it says nothing about the broker.
//!
//! A batch commits asynchronously (`synchronous_commit = off` for its transaction alone):
//! the server may lose its last marks in a crash, and then publishes those rows again,
//! which at-least-once delivery allows and consumers' inboxes absorb. WAL is replayed in
//! order, so what is lost is always the latest marks, never an earlier one behind a later
//! one. Writes of state (creates, changes, the consumers' inbox) keep synchronous commits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, watch};

use crate::backoff;
use crate::bus::{AGGREGATE_ID, BusError, EVENT_ID, EVENT_TYPE, OutgoingMessage, Publisher};
use crate::db::{Deleted, delete_in_batches};

/// Refusals after which a row is parked (see the module doc).
pub const PARK_AFTER: u32 = 5;

/// The advisory lock namespace of relays (the first key of `pg_try_advisory_xact_lock`).
const RELAY_LOCK_CLASS: i32 = 0x0b0c;

/// The claim looks for aggregates among this many times `limit` of the oldest waiting rows.
const CLAIM_SCAN_FACTOR: i64 = 10;

/// Claims up to `$1` aggregates (advisory lock class `$2`) among the `$3` oldest waiting
/// rows. Those rows are read along `outbox_unpublished` (created_at), so a claim reads the
/// same few rows with a backlog of a hundred or a million; grouping the whole backlog by
/// aggregate took a full scan per batch. Public for the generated services' plan test.
pub const CLAIM_AGGREGATES: &str = "SELECT aggregate_id FROM ( \
         SELECT aggregate_id, min(created_at) AS since FROM ( \
             SELECT aggregate_id, created_at FROM outbox \
             WHERE published_at IS NULL AND parked_at IS NULL \
             ORDER BY created_at LIMIT $3 \
         ) AS oldest \
         GROUP BY aggregate_id ORDER BY since LIMIT $1 \
     ) AS pending \
     WHERE pg_try_advisory_xact_lock($2, hashtext(aggregate_id::text))";

/// How a batch's transaction begins: in the same round trip as BEGIN, its commit is made
/// asynchronous (see the module doc).
const BEGIN_BATCH: &str = "BEGIN; SET LOCAL synchronous_commit = off";

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Topics this service publishes to; created if missing.
    pub topics: Vec<String>,
    pub batch_size: i64,
    /// How long to sleep when the outbox is empty and nobody signals a new row.
    pub idle_poll: Duration,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    pub purge: Purge,
    pub purge_every: Duration,
    /// How long shutdown waits for the batch in flight: its messages may be on the bus
    /// already, and a batch abandoned unmarked is sent again by the next relay.
    pub shutdown_grace: Duration,
    /// Refusals of one row after which it is parked.
    pub park_after: u32,
}

impl RelayConfig {
    pub fn new(topics: Vec<String>) -> Self {
        RelayConfig {
            topics,
            batch_size: 100,
            idle_poll: Duration::from_millis(500),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            purge: Purge::default(),
            purge_every: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(5),
            park_after: PARK_AFTER,
        }
    }
}

/// How old outbox and inbox rows are purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purge {
    /// Published outbox rows and inbox rows older than this are deleted. The inbox must
    /// remember an event id longer than any redelivery can take.
    pub retention: Duration,
    /// Rows deleted per statement: each takes the oldest rows along an index
    /// (`outbox_published`, `inbox_received`), so a statement costs the same however large
    /// the tables have grown, holds few locks and stays far under the statement timeout.
    pub batch: i64,
}

impl Default for Purge {
    fn default() -> Self {
        Purge {
            retention: Duration::from_secs(7 * 24 * 3600),
            batch: 1000,
        }
    }
}

/// Statements per table and call: a purge that reaches it has more to do and is called
/// again soon (see `run`), rather than holding the relay for one long stretch.
const PURGE_STATEMENTS: u64 = 100;

/// One batch of the purge: `$1` the retention in seconds, `$2` the batch. `ctid =
/// ANY(ARRAY(...))` deletes by tuple address (a TID scan) what the subquery found along the
/// index; `ORDER BY` keeps the planner on that index when most rows are young. Public, like
/// the claim, for the generated services' plan test.
pub const PURGE_OUTBOX: &str = "DELETE FROM outbox WHERE ctid = ANY(ARRAY( \
     SELECT ctid FROM outbox WHERE published_at < now() - make_interval(secs => $1) \
     ORDER BY published_at LIMIT $2))";
pub const PURGE_INBOX: &str = "DELETE FROM inbox WHERE ctid = ANY(ARRAY( \
     SELECT ctid FROM inbox WHERE received_at < now() - make_interval(secs => $1) \
     ORDER BY received_at LIMIT $2))";

/// Deletes published outbox rows and inbox rows older than `purge.retention`, oldest first
/// and `purge.batch` rows per statement; returns how many went.
pub async fn purge(pool: &PgPool, purge: Purge) -> Result<u64, sqlx::Error> {
    Ok(purge_tables(pool, purge).await?.rows)
}

/// [`purge`], saying whether a table stopped at `PURGE_STATEMENTS` with rows perhaps left.
async fn purge_tables(pool: &PgPool, purge: Purge) -> Result<Deleted, sqlx::Error> {
    let mut all = Deleted {
        rows: 0,
        more: false,
    };
    for statement in [PURGE_OUTBOX, PURGE_INBOX] {
        let table = delete_in_batches(
            pool,
            statement,
            purge.retention,
            purge.batch,
            PURGE_STATEMENTS,
        )
        .await?;
        all = Deleted {
            rows: all.rows + table.rows,
            more: all.more || table.more,
        };
    }
    Ok(all)
}

/// What one batch did.
#[derive(Debug, Default)]
pub struct Relayed {
    /// Rows the broker accepted, now marked published.
    pub published: usize,
    /// Rows the broker refused (each stops its aggregate for this batch).
    pub refused: usize,
    /// Of those, rows refused `park_after` times and parked now.
    pub parked: usize,
    /// The first failure that may pass later (the broker down, a timeout).
    pub unavailable: Option<BusError>,
    /// The batch was full: more rows may be waiting already.
    pub full: bool,
}

struct Row {
    id: uuid::Uuid,
    topic: String,
    event_type: String,
    aggregate_id: uuid::Uuid,
    payload: Vec<u8>,
    headers: serde_json::Value,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for Row {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Row, sqlx::Error> {
        use sqlx::Row as _;
        Ok(Row {
            id: row.try_get("id")?,
            topic: row.try_get("topic")?,
            event_type: row.try_get("event_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            payload: row.try_get("payload")?,
            headers: row.try_get("headers")?,
        })
    }
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

/// Publishes one batch of at most `limit` rows; parks a row at its `park_after`th refusal.
pub async fn relay_batch<P: Publisher>(
    pool: &PgPool,
    publisher: &P,
    limit: i64,
    park_after: u32,
) -> Result<Relayed, sqlx::Error> {
    let mut tx = pool.begin_with(BEGIN_BATCH).await?;
    // The aggregates waiting longest that no other relay is publishing right now. Claimed
    // in a statement of its own: the rows are read by the next one, whose snapshot is
    // taken after the locks, so it sees what a relay that held one before committed.
    let claimed: Vec<uuid::Uuid> = sqlx::query_scalar(CLAIM_AGGREGATES)
        .bind(limit)
        .bind(RELAY_LOCK_CLASS)
        .bind(limit.saturating_mul(CLAIM_SCAN_FACTOR))
        .fetch_all(&mut *tx)
        .await?;
    if claimed.is_empty() {
        return Ok(Relayed::default());
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, topic, event_type, aggregate_id, payload, headers FROM outbox \
         WHERE published_at IS NULL AND parked_at IS NULL AND aggregate_id = ANY($1) \
         ORDER BY aggregate_id, aggregate_version, created_at, id LIMIT $2",
    )
    .bind(&claimed)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let full = claimed.len() as i64 >= limit || rows.len() as i64 >= limit;
    // One sequence per aggregate, in version order; the sequences run concurrently.
    let mut sequences: Vec<&[Row]> = Vec::new();
    let mut rest = rows.as_slice();
    while let Some(first) = rest.first() {
        let len = rest
            .iter()
            .take_while(|r| r.aggregate_id == first.aggregate_id)
            .count();
        let (sequence, tail) = rest.split_at(len);
        sequences.push(sequence);
        rest = tail;
    }
    let outcomes =
        futures_util::future::join_all(sequences.into_iter().map(|sequence| async move {
            let mut sent = Vec::new();
            for row in sequence {
                if let Err(e) = publisher.publish(&row.message()).await {
                    // The rest of this aggregate waits for the failed one.
                    return (sent, Some((row, e)));
                }
                sent.push(row.id);
            }
            (sent, None)
        }))
        .await;
    let mut relayed = Relayed {
        full,
        ..Relayed::default()
    };
    let mut sent = Vec::new();
    let mut failures = Vec::new();
    for (ids, failure) in outcomes {
        sent.extend(ids);
        failures.extend(failure);
    }
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(&sent)
        .execute(&mut *tx)
        .await?;
    relayed.published = sent.len();
    let (refusals, outages): (Vec<_>, Vec<_>) = failures.into_iter().partition(|(_, e)| e.rejected);
    if !outages.is_empty() {
        // An outage fails every aggregate of the batch alike: one statement for all of
        // them (each row keeps its own error), and an outage never parks anything.
        let ids: Vec<uuid::Uuid> = outages.iter().map(|(row, _)| row.id).collect();
        let errors: Vec<String> = outages.iter().map(|(_, e)| e.to_string()).collect();
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = failed.error \
             FROM unnest($1::uuid[], $2::text[]) AS failed(id, error) WHERE outbox.id = failed.id",
        )
        .bind(&ids)
        .bind(&errors)
        .execute(&mut *tx)
        .await?;
        relayed.unavailable = outages.into_iter().next().map(|(_, e)| e);
    }
    for (row, e) in refusals {
        let parked: bool = sqlx::query_scalar(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2, \
                 parked_at = CASE WHEN attempts + 1 >= $3 THEN now() END \
             WHERE id = $1 RETURNING parked_at IS NOT NULL",
        )
        .bind(row.id)
        .bind(e.to_string())
        .bind(i32::try_from(park_after).unwrap_or(i32::MAX))
        .fetch_one(&mut *tx)
        .await?;
        relayed.refused += 1;
        if parked {
            relayed.parked += 1;
            tracing::error!(
                event_id = %row.id,
                topic = %row.topic,
                event_type = %row.event_type,
                aggregate_id = %row.aggregate_id,
                error = %e,
                "outbox row parked: the broker refuses it; later events go on without it"
            );
            metrics::counter!(crate::metrics::OUTBOX_PARKED_TOTAL, "topic" => row.topic.clone())
                .increment(1);
        } else {
            tracing::warn!(event_id = %row.id, topic = %row.topic, error = %e, "the broker refused an outbox row");
        }
    }
    tx.commit().await?;
    metrics::counter!(crate::metrics::OUTBOX_PUBLISHED).increment(relayed.published as u64);
    Ok(relayed)
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
            let more = match purge_tables(&pool, config.purge).await {
                Ok(Deleted { rows: 0, .. }) => false,
                Ok(deleted) => {
                    tracing::info!(deleted = deleted.rows, "purged old outbox and inbox rows");
                    deleted.more
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purge failed");
                    false
                }
            };
            // A purge with more to do goes on after the next batch; batches go first.
            let wait = if more {
                Duration::ZERO
            } else {
                config.purge_every
            };
            next_purge = tokio::time::Instant::now() + wait;
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
                relay_batch(&pool, &*publisher, config.batch_size, config.park_after).await
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
            // Progress: go on at once while batches come full, even if some aggregate
            // failed. After a partial batch there is nothing more unless a new row was
            // written since, and a writer in this process has notified `wake` then: a
            // query to find that out would be a round trip for nothing on every event.
            Ok(relayed) if relayed.published > 0 => {
                failures = 0;
                tracing::debug!(published = relayed.published, "outbox relayed");
                (!relayed.full).then_some(config.idle_poll)
            }
            // Nothing went out and the broker failed: back off.
            Ok(Relayed {
                unavailable: Some(e),
                ..
            }) => Some(backed_off(&mut failures, &mut topics_ready, &config, &e)),
            Err(e) => Some(backed_off(&mut failures, &mut topics_ready, &config, &e)),
            // Nothing to send, or only rows the broker refuses (they wait for their next
            // attempt like the idle outbox does, or for a new row).
            Ok(_) => {
                failures = 0;
                Some(config.idle_poll)
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

/// Counts one more failure in a row and returns how long to wait before the next batch.
fn backed_off(
    failures: &mut u32,
    topics_ready: &mut bool,
    config: &RelayConfig,
    e: &dyn std::fmt::Display,
) -> Duration {
    *failures = failures.saturating_add(1);
    *topics_ready = false;
    let delay = backoff::full_jitter(config.base_backoff, config.max_backoff, *failures);
    tracing::warn!(error = %e, attempt = *failures, retry_in_ms = delay.as_millis() as u64, "outbox relay failed");
    delay
}
