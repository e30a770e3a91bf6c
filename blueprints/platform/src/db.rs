//! The connection pool. Connecting retries a bounded number of times, so a service started
//! next to its database (compose, `deploy/local/up.sh`) waits for it instead of crashing.

use std::time::Duration;

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};

#[derive(Clone)]
pub struct DbConfig {
    pub url: String,
    pub max_connections: u32,
    pub connect_attempts: u32,
    /// The longest any statement on the pool may run before the server cancels it, so a
    /// runaway query cannot hold a connection (and its locks) for ever. Migrations run on
    /// a connection of their own without it ([`migrations_connection`]).
    pub statement_timeout: Duration,
}

impl std::fmt::Debug for DbConfig {
    // The URL carries the password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConfig")
            .field("url", &"<redacted>")
            .field("max_connections", &self.max_connections)
            .field("connect_attempts", &self.connect_attempts)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

/// The pool's connect options: the URL, with the statement timeout set for every session.
fn options(config: &DbConfig) -> Result<PgConnectOptions, sqlx::Error> {
    let timeout_ms = config.statement_timeout.as_millis().max(1).to_string();
    Ok(PgConnectOptions::from_str(&config.url)?.options([("statement_timeout", timeout_ms)]))
}

/// A connection outside the pool without the statement timeout, for migrations (adding a
/// column to a large table may take longer); it closes when dropped.
pub async fn migrations_connection(pool: &PgPool) -> Result<PgConnection, sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// What [`delete_in_batches`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub rows: u64,
    /// It stopped at its statement limit after a full batch: rows may be left.
    pub more: bool,
}

/// Runs `statement`, a DELETE of at most `$2` rows older than `$1` seconds, until one
/// deletes fewer than `batch` rows or `max_statements` have run, so that each statement
/// holds few locks and stays short however large the table has grown.
pub async fn delete_in_batches(
    pool: &PgPool,
    statement: &'static str,
    older_than: Duration,
    batch: i64,
    max_statements: u64,
) -> Result<Deleted, sqlx::Error> {
    let mut rows = 0;
    for _ in 0..max_statements {
        let deleted = sqlx::query(statement)
            .bind(older_than.as_secs_f64())
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected();
        rows += deleted;
        if deleted < batch as u64 {
            return Ok(Deleted { rows, more: false });
        }
    }
    Ok(Deleted {
        rows,
        more: max_statements > 0,
    })
}

pub async fn connect(config: &DbConfig) -> Result<PgPool, sqlx::Error> {
    let options = options(config)?;
    let attempts = config.connect_attempts.max(1);
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=attempts {
        let result = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await;
        match result {
            Ok(pool) => return Ok(pool),
            Err(e) if attempt < attempts => {
                tracing::warn!(attempt, attempts, error = %e, "database not reachable, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}
