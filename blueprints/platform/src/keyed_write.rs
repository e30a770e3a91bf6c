//! Keyed writes in one statement each: a row's write, its outbox event and the idempotency
//! key that guards it.
//!
//! The writes are data-modifying CTEs of one statement, so they commit or fail together
//! even outside a transaction, and no write needs BEGIN and COMMIT around it.
//!
//! - A create ([`statement`]) costs one round trip instead of five (BEGIN, three INSERTs,
//!   COMMIT). The row and the event are written only if the key was new: `ON CONFLICT DO
//!   NOTHING` on the key makes a concurrent duplicate wait for the first one's end, as
//!   [`crate::idempotency::claim`] does, and then write nothing.
//! - A change (an update or delete decided from the row as it was read) costs two: one
//!   statement reads the key and the row ([`read_statement`]), one writes
//!   ([`change_statement`]), instead of seven (BEGIN, key lookup, read, write, event, key,
//!   COMMIT). The write is conditional on the row's version, so nothing holds the row
//!   between the read and the write: a change that lost the row to another writes
//!   nothing. The key is inserted only with the write, and without `ON CONFLICT`: a
//!   concurrent request that took the key first makes the whole statement fail
//!   ([`key_taken`]) and roll back, write and event included.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres, Row};

use crate::idempotency::{self, Claim};
use crate::outbox::{self, OutboxMessage};

/// The idempotency key of a request: what a change looks up before it decides.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    pub operation: &'a str,
    /// Whose key it is ([`crate::idempotency::scope`]).
    pub scope: &'a str,
    pub key: &'a str,
    /// [`crate::idempotency::fingerprint`] of the request.
    pub fingerprint: &'a [u8],
}

impl<'a> Key<'a> {
    /// The claim a write makes on this key, storing `response`.
    pub fn claim(self, response: &'a [u8]) -> KeyClaim<'a> {
        KeyClaim {
            operation: self.operation,
            scope: self.scope,
            key: self.key,
            fingerprint: self.fingerprint,
            response,
        }
    }
}

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
    format!(
        "WITH claimed AS (\
             INSERT INTO idempotency_keys ({KEY_COLUMNS}) \
             VALUES ({}) ON CONFLICT (operation, scope, key) DO NOTHING RETURNING 1\
         ), created AS (\
             {insert_row} WHERE EXISTS (SELECT 1 FROM claimed)\
         ), recorded AS ({}) \
         SELECT count(*) FROM claimed",
        parameters(row_parameters + 1, KEY_PARAMETERS),
        insert_event(row_parameters + KEY_PARAMETERS + 1, "claimed"),
    )
}

/// The idempotency key's columns, in the order [`bind`] binds a claim's values.
const KEY_COLUMNS: &str = "operation, scope, key, request_sha256, response";
const KEY_PARAMETERS: usize = 5;

/// `$<first>` and the `count - 1` parameters after it, comma-separated.
fn parameters(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The outbox insert of a keyed write's event, from the parameters `$<first>` on, which
/// writes the event only if the CTE `gate` returned a row.
fn insert_event(first: usize, gate: &str) -> String {
    format!(
        "INSERT INTO outbox ({}) SELECT {} WHERE EXISTS (SELECT 1 FROM {gate})",
        outbox::COLUMNS,
        parameters(first, outbox::COLUMNS.split(',').count())
    )
}

/// Binds the key and the event to `query`, made from [`statement`] with the row's values
/// bound already.
fn bind<'q>(
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

/// Runs `query`, made from [`statement`] or [`change_statement`] with the row's values
/// bound, with the key and the event bound after them: whether it wrote (the row, the
/// event and the key), or found the key claimed or the row moved on and wrote nothing.
pub async fn write<'q>(
    conn: &mut PgConnection,
    query: Query<'q, Postgres, PgArguments>,
    claim: &KeyClaim<'q>,
    event: &'q OutboxMessage,
) -> Result<bool, sqlx::Error> {
    let written: i64 = bind(query, claim, event).fetch_one(conn).await?.get(0);
    Ok(written == 1)
}

/// The statement for a change: `write`, an `UPDATE` or `DELETE` of one row with the
/// parameters `$1` to `$<write_parameters>` that ends in `RETURNING 1` and matches nothing
/// when the row moved on, with the event and the key written only if it matched. It
/// returns the number of rows written; [`bind`] binds the key and the event after the
/// write's own parameters, as for a create.
pub fn change_statement(write: &str, write_parameters: usize) -> String {
    format!(
        "WITH changed AS ({write}), recorded AS ({}), claimed AS (\
             INSERT INTO idempotency_keys ({KEY_COLUMNS}) \
             SELECT {} WHERE EXISTS (SELECT 1 FROM changed)\
         ) \
         SELECT count(*) FROM changed",
        insert_event(write_parameters + KEY_PARAMETERS + 1, "changed"),
        parameters(write_parameters + 1, KEY_PARAMETERS),
    )
}

/// Whether `error` is the statement of [`change_statement`] failing because a concurrent
/// request claimed its key first: nothing was written, and the key's answer is the one to
/// give ([`crate::idempotency::lookup`]).
pub fn key_taken(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation() && e.constraint() == Some("idempotency_keys_pkey"))
}

/// The statement that reads, in one round trip, what an earlier request with the key
/// stored and the row a change is decided from: `select_row`, a `SELECT` of at most one row
/// with the parameters `$1` to `$<row_parameters>`, is followed by the key's operation,
/// scope and key ([`bind_lookup`]). It always returns one row: the row's columns are
/// NULL when it does not exist, and [`earlier`] reads the key's.
pub fn read_statement(select_row: &str, row_parameters: usize) -> String {
    let p = |n: usize| format!("${}", row_parameters + n);
    format!(
        "SELECT k.request_sha256 AS idempotency_request_sha256, k.response AS idempotency_response, r.* \
         FROM (SELECT 1) AS one \
         LEFT JOIN (\
             SELECT request_sha256, response FROM idempotency_keys \
             WHERE operation = {} AND scope = {} AND key = {}\
         ) AS k ON true \
         LEFT JOIN ({select_row}) AS r ON true",
        p(1),
        p(2),
        p(3)
    )
}

/// Binds the key [`read_statement`] looks up, after the row's parameters.
pub fn bind_lookup<'q>(
    query: Query<'q, Postgres, PgArguments>,
    key: &Key<'q>,
) -> Query<'q, Postgres, PgArguments> {
    query.bind(key.operation).bind(key.scope).bind(key.key)
}

/// What an earlier request with `key` stored, read from a row of [`read_statement`].
pub fn earlier(row: &PgRow, key: &Key<'_>) -> Result<Option<Claim>, sqlx::Error> {
    let stored: Option<Vec<u8>> = row.try_get("idempotency_request_sha256")?;
    let response: Option<Vec<u8>> = row.try_get("idempotency_response")?;
    Ok(stored.map(|stored| idempotency::judge(&stored, response, key.fingerprint)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_is_written_only_with_a_new_key_and_the_shared_parameters_follow_its_own() {
        let sql = statement("INSERT INTO \"orders\" (\"id\", \"note\") SELECT $1, $2", 2);
        assert!(
            sql.contains("SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM claimed)"),
            "{sql}"
        );
        assert!(sql.contains("VALUES ($3, $4, $5, $6, $7)"), "{sql}");
        assert!(
            sql.contains("SELECT $8, $9, $10, $11, $12, $13, $14, $15 WHERE"),
            "{sql}"
        );
        assert!(!sql.contains("$16"), "{sql}");
    }

    #[test]
    fn a_change_records_its_event_and_key_only_with_its_write_and_the_key_can_fail_it() {
        let sql = change_statement(
            "UPDATE \"orders\" SET \"note\" = $3 WHERE \"id\" = $1 AND \"version\" = $2 RETURNING 1",
            3,
        );
        assert!(
            sql.starts_with("WITH changed AS (UPDATE \"orders\""),
            "{sql}"
        );
        assert!(
            sql.contains(
                "SELECT $9, $10, $11, $12, $13, $14, $15, $16 WHERE EXISTS (SELECT 1 FROM changed)"
            ),
            "{sql}"
        );
        assert!(
            sql.contains("SELECT $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM changed)"),
            "{sql}"
        );
        // A taken key must fail the statement, so that the write rolls back with it.
        assert!(!sql.contains("ON CONFLICT"), "{sql}");
        assert!(!sql.contains("$17"), "{sql}");
    }

    #[test]
    fn the_read_looks_up_the_key_after_the_row_parameters() {
        let sql = read_statement("SELECT \"id\" FROM \"orders\" WHERE \"id\" = $1", 1);
        assert!(
            sql.contains("WHERE operation = $2 AND scope = $3 AND key = $4"),
            "{sql}"
        );
        assert!(
            sql.contains(
                "LEFT JOIN (SELECT \"id\" FROM \"orders\" WHERE \"id\" = $1) AS r ON true"
            ),
            "{sql}"
        );
    }
}
