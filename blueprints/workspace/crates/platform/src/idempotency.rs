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

use sha2::{Digest, Sha256};
use sqlx::PgConnection;

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
    key: &str,
    fingerprint: &[u8],
    response: &[u8],
) -> Result<Claim, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (operation, key, request_sha256, response) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (operation, key) DO NOTHING",
    )
    .bind(operation)
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
        "SELECT request_sha256, response FROM idempotency_keys WHERE operation = $1 AND key = $2",
    )
    .bind(operation)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    match stored {
        Some(stored) if stored_fingerprint == fingerprint => Ok(Claim::Replay(stored)),
        _ => Ok(Claim::Mismatch),
    }
}

/// What an earlier request with `key` stored, without claiming it: a change looks first,
/// since deciding it depends on the current state, which a replay must not see.
pub async fn lookup(
    conn: &mut PgConnection,
    operation: &str,
    key: &str,
    fingerprint: &[u8],
) -> Result<Option<Claim>, sqlx::Error> {
    let stored: Option<(Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT request_sha256, response FROM idempotency_keys WHERE operation = $1 AND key = $2",
    )
    .bind(operation)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(stored.map(|(stored_fingerprint, response)| match response {
        Some(response) if stored_fingerprint == fingerprint => Claim::Replay(response),
        _ => Claim::Mismatch,
    }))
}
