//! Idempotency keys for mutating RPCs: the first request with a key does the work and
//! stores its response in the same transaction; a retry with the same key and the same
//! request gets the stored response back, and a reuse of the key for a different request
//! is refused.
//!
//! The key row is inserted, with the response the work is about to return, before the
//! work and with `ON CONFLICT DO NOTHING`: a concurrent duplicate blocks on that insert
//! until the first transaction ends, so exactly one of them does the work, without retry
//! loops. One statement, not a claim and a later update: a round trip less on every
//! create.
//!
//! Keys belong to whoever sent them (`scope`): two clients that pick the same key never
//! see each other's answers. They are kept for a retention period (24 h by default), long
//! past any retry, and then purged in bounded batches.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use crate::service_auth::Verified;

/// The scope of a caller's idempotency keys: the end user the call is made for, else the
/// calling service; empty for a call with no verified credential (in-process use).
pub fn scope(verified: Option<&Verified>) -> String {
    match verified {
        Some(Verified {
            user: Some(user), ..
        }) => format!("user:{user}"),
        Some(Verified { caller, .. }) => format!("service:{caller}"),
        None => String::new(),
    }
}

/// What a claim on an idempotency key found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key is new and holds the response: do the work in the same transaction.
    Claimed,
    /// The key was used for the same request before: here is its stored response.
    Replay(Vec<u8>),
    /// The key was used for a different request.
    Mismatch,
}

/// SHA-256 of the request as it should be compared between retries (without the key).
pub fn fingerprint(request: &[u8]) -> Vec<u8> {
    Sha256::digest(request).to_vec()
}

/// Claims `key` for `operation`, storing `response`, the answer the caller is about to
/// give; or reports what an earlier request with the key stored.
pub async fn claim(
    conn: &mut PgConnection,
    operation: &str,
    scope: &str,
    key: &str,
    fingerprint: &[u8],
    response: &[u8],
) -> Result<Claim, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (operation, scope, key, request_sha256, response) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (operation, scope, key) DO NOTHING",
    )
    .bind(operation)
    .bind(scope)
    .bind(key)
    .bind(fingerprint)
    .bind(response)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::Claimed);
    }
    let (stored_fingerprint, stored): (Vec<u8>, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT request_sha256, response FROM idempotency_keys \
         WHERE operation = $1 AND scope = $2 AND key = $3",
    )
    .bind(operation)
    .bind(scope)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    Ok(judge(&stored_fingerprint, stored, fingerprint))
}

/// What an earlier request with `key` stored, without claiming it: a change looks first,
/// since deciding it depends on the current state, which a replay must not see.
pub async fn lookup(
    conn: &mut PgConnection,
    operation: &str,
    scope: &str,
    key: &str,
    fingerprint: &[u8],
) -> Result<Option<Claim>, sqlx::Error> {
    let stored: Option<(Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT request_sha256, response FROM idempotency_keys \
         WHERE operation = $1 AND scope = $2 AND key = $3",
    )
    .bind(operation)
    .bind(scope)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(stored.map(|(stored, response)| judge(&stored, response, fingerprint)))
}

/// What a stored key means for a request with `fingerprint`: its answer if it was stored
/// for the same request, else a mismatch.
pub fn judge(stored_fingerprint: &[u8], response: Option<Vec<u8>>, fingerprint: &[u8]) -> Claim {
    match response {
        Some(response) if stored_fingerprint == fingerprint => Claim::Replay(response),
        _ => Claim::Mismatch,
    }
}

/// How long keys are kept, and how the purge goes about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Keys older than this are deleted (a retry after it does the work again).
    pub keep: Duration,
    /// Rows deleted per statement, so a purge never holds many locks or a long transaction.
    pub batch: i64,
    pub every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: Duration::from_secs(24 * 3600),
            batch: 1000,
            every: Duration::from_secs(600),
        }
    }
}

/// One batch of expired keys: `$1` the retention in seconds, `$2` the batch.
const EXPIRED_KEYS: &str = "DELETE FROM idempotency_keys WHERE ctid IN (\
     SELECT ctid FROM idempotency_keys \
     WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)";

/// Deletes keys older than `retention.keep`, `retention.batch` rows per statement, at most
/// 1000 statements per call; returns how many went.
pub async fn purge(pool: &PgPool, retention: Retention) -> Result<u64, sqlx::Error> {
    let deleted =
        crate::db::delete_in_batches(pool, EXPIRED_KEYS, retention.keep, retention.batch, 1000)
            .await?;
    Ok(deleted.rows)
}

/// Purges expired keys every `retention.every` until `stop` turns true.
pub async fn run_purge(pool: PgPool, retention: Retention, mut stop: watch::Receiver<bool>) {
    loop {
        match purge(&pool, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired idempotency keys purged"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot purge expired idempotency keys; trying again later")
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(retention.every) => {}
        }
    }
}
