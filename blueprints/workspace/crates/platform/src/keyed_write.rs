//! A create in one statement: its idempotency key, its row and its outbox event.
//!
//! The three inserts are data-modifying CTEs of one statement, so they commit or fail
//! together even outside a transaction, and a create costs one round trip instead of five
//! (BEGIN, three INSERTs, COMMIT). The row and the event are written only if the key was
//! new: `ON CONFLICT DO NOTHING` on the key makes a concurrent duplicate wait for the first
//! one's end, as [`crate::idempotency::claim`] does, and then write nothing.

use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;

use crate::outbox::{self, OutboxMessage};

/// The idempotency key a write claims, with the response the caller is about to give.
#[derive(Debug, Clone, Copy)]
pub struct KeyClaim<'a> {
    pub operation: &'a str,
    /// Whose key it is ([`crate::idempotency::scope`]).
    pub scope: &'a str,
    pub key: &'a str,
    /// [`crate::idempotency::fingerprint`] of the request.
    pub fingerprint: &'a [u8],
    pub response: &'a [u8],
}

/// The statement for `insert_row`, an `INSERT INTO <table> (<columns>) SELECT <values>`
/// with the parameters `$1` to `$<row_parameters>`; the key's and the event's are numbered
/// after them. It returns one column, the number of keys claimed: 1 when everything was
/// written, 0 when the key existed and nothing was.
pub fn statement(insert_row: &str, row_parameters: usize) -> String {
    let p = |n: usize| format!("${}", row_parameters + n);
    format!(
        "WITH claimed AS (\
             INSERT INTO idempotency_keys (operation, scope, key, request_sha256, response) \
             VALUES ({}, {}, {}, {}, {}) ON CONFLICT (operation, scope, key) DO NOTHING RETURNING 1\
         ), created AS (\
             {insert_row} WHERE EXISTS (SELECT 1 FROM claimed)\
         ), recorded AS (\
             INSERT INTO outbox ({}) \
             SELECT {}, {}, {}, {}, {}, {}, {}, {} WHERE EXISTS (SELECT 1 FROM claimed)\
         ) \
         SELECT count(*) FROM claimed",
        p(1), p(2), p(3), p(4), p(5), outbox::COLUMNS, p(6), p(7), p(8), p(9), p(10), p(11), p(12), p(13)
    )
}

/// Binds the key and the event to `query`, made from [`statement`] with the row's values
/// bound already.
pub fn bind<'q>(
    query: Query<'q, Postgres, PgArguments>,
    claim: &KeyClaim<'q>,
    event: &'q OutboxMessage,
) -> Query<'q, Postgres, PgArguments> {
    let query = query
        .bind(claim.operation)
        .bind(claim.scope)
        .bind(claim.key)
        .bind(claim.fingerprint)
        .bind(claim.response);
    outbox::bind(query, event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_is_written_only_with_a_new_key_and_the_shared_parameters_follow_its_own() {
        let sql = statement("INSERT INTO \"orders\" (\"id\", \"note\") SELECT $1, $2", 2);
        assert!(sql.contains("SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM claimed)"), "{sql}");
        assert!(sql.contains("VALUES ($3, $4, $5, $6, $7)"), "{sql}");
        assert!(sql.contains("SELECT $8, $9, $10, $11, $12, $13, $14, $15 WHERE"), "{sql}");
        assert!(!sql.contains("$16"), "{sql}");
    }
}
