//! The connection pool. Connecting retries a bounded number of times, so a service started
//! next to its database (compose, `deploy/local/up.sh`) waits for it instead of crashing.

use std::time::Duration;

use std::str::FromStr;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, SqlSafeStr};

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

/// The migrations a service embeds: its `migrations/` folder, included when the crate
/// compiles (`include_dir!`; its `build.rs` makes cargo notice a new file). They are read
/// as `sqlx migrate` reads a folder (`<VERSION>_<DESCRIPTION>.sql`, a first line
/// `-- no-transaction`), so each checksum is the one `sqlx::migrate!` recorded before: a
/// database an older build migrated goes on migrating. No `sqlx` macros, so no second,
/// host-side build of sqlx and its TLS stack.
pub fn embedded_migrations(dir: &include_dir::Dir<'static>) -> Migrator {
    let migrations = dir
        .files()
        .filter_map(|file| {
            let name = file.path().file_name()?.to_str()?;
            if !name.ends_with(".sql") {
                return None;
            }
            let (version, rest) = name.split_once('_').unwrap_or(("", name));
            let version: i64 = version.parse().unwrap_or_else(|_| {
                panic!(
                    "migrations/{name}: a migration is named <VERSION>_<DESCRIPTION>.sql, \
                     e.g. 0009_add_an_index.sql; rename it"
                )
            });
            let sql = file
                .contents_utf8()
                .unwrap_or_else(|| panic!("migrations/{name} is not UTF-8"));
            let migration_type = MigrationType::from_filename(rest);
            let description = rest
                .trim_end_matches(migration_type.suffix())
                .replace('_', " ");
            let no_tx = sql.starts_with("-- no-transaction");
            Some(Migration::new(
                version,
                description.into(),
                migration_type,
                sql.into_sql_str(),
                no_tx,
            ))
        })
        .collect();
    Migrator::with_migrations(migrations)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded migrations are the ones sqlx reads from a folder (what `sqlx::migrate!`
    /// embedded before): same versions, descriptions, checksums and transaction choice, so
    /// a database an older build migrated is not refused as modified.
    #[tokio::test]
    async fn embedded_migrations_are_what_sqlx_reads_from_the_folder() {
        let files: &[(&str, &str)] = &[
            ("0001_init.sql", "CREATE TABLE t (id BIGINT);\n"),
            (
                "0002_more_things.sql",
                "ALTER TABLE t ADD COLUMN n TEXT;\r\n",
            ),
            (
                "0010_concurrent_index.sql",
                "-- no-transaction\nCREATE INDEX CONCURRENTLY i ON t (n);\n",
            ),
        ];
        let dir = std::env::temp_dir().join(format!("migrations-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        for (name, sql) in files {
            std::fs::write(dir.join(name), sql).unwrap();
        }
        let from_folder = Migrator::new(dir.as_path()).await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let entries: Vec<include_dir::DirEntry<'static>> = files
            .iter()
            .map(|(name, sql)| {
                include_dir::DirEntry::File(include_dir::File::new(name, sql.as_bytes()))
            })
            .collect();
        let embedded = embedded_migrations(&include_dir::Dir::new("migrations", entries.leak()));
        let summary = |m: &Migrator| {
            m.iter()
                .map(|m| {
                    let description = m.description.to_string();
                    (m.version, description, m.checksum.to_vec(), m.no_tx)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(summary(&embedded), summary(&from_folder));
        assert_eq!(summary(&embedded).len(), 3);
        assert!(
            summary(&embedded)[2].3,
            "the first line opts out of the transaction"
        );
    }
}
