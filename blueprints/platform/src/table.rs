//! An aggregate's table: the SQL a service generates for it ([`Sql`]) and how its rows
//! bind and read ([`Table`]). The reads and writes every service runs over its table are
//! provided here: the keyed create of `keyed_change` and `keyed_write`, and the reads and
//! conditional writes for the use cases a service adds. Statements are built once per
//! table ([`Statements`]), so sqlx prepares each once per connection.

use std::fmt::Display;
use std::future::Future;

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{PgConnection, PgPool, Postgres};
use uuid::Uuid;

use crate::keyed_write::{self, KeyClaim};
use crate::outbox::OutboxMessage;

/// A statement with its parameters bound so far.
pub type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// What a service states about its table; the rest of its SQL is derived.
pub struct Sql {
    /// The table, quoted: `"orders"`.
    pub table: &'static str,
    /// The columns [`Table::from_row`] reads, as a select list.
    pub columns: &'static str,
    /// `INSERT INTO <table> (<columns>)` of a whole row.
    pub insert_into: &'static str,
    /// The row's values as the parameters `$1` to `$<row_parameters>`, which
    /// [`Table::bind_row`] binds.
    pub row_values: &'static str,
    pub row_parameters: usize,
    /// The `UPDATE` of a changed row, with `"id" = $1 AND "version" = $2` among its
    /// conditions (optimistic concurrency control); [`Table::bind_update`] binds its
    /// `update_parameters`.
    pub update_row: &'static str,
    pub update_parameters: usize,
}

/// The statements of one table, built from its [`Sql`].
pub struct Statements {
    insert: String,
    insert_keyed: String,
    update: String,
    update_keyed: String,
    delete: String,
    delete_keyed: String,
    select: String,
    select_keyed: String,
    list: String,
}

impl Statements {
    pub fn new(sql: &Sql) -> Statements {
        let Sql {
            table,
            columns,
            insert_into,
            row_values,
            row_parameters,
            update_row,
            update_parameters,
        } = *sql;
        let delete = format!("DELETE FROM {table} WHERE \"id\" = $1 AND \"version\" = $2");
        let select = format!("SELECT {columns} FROM {table} WHERE \"id\" = $1");
        Statements {
            insert: format!("{insert_into} VALUES ({row_values})"),
            insert_keyed: keyed_write::statement(
                &format!("{insert_into} SELECT {row_values}"),
                row_parameters,
            ),
            update: update_row.to_string(),
            update_keyed: keyed_write::change_statement(
                &format!("{update_row} RETURNING 1"),
                update_parameters,
            ),
            delete_keyed: keyed_write::change_statement(&format!("{delete} RETURNING 1"), 2),
            delete,
            select_keyed: keyed_write::read_statement(&select, 1),
            select,
            list: format!(
                "SELECT {columns} FROM {table} \
                 WHERE ($1::uuid IS NULL OR \"id\" > $1) ORDER BY \"id\" LIMIT $2"
            ),
        }
    }

    /// The statement that reads a row with the key of a change ([`keyed_write::read_statement`]).
    pub fn select_keyed(&self) -> &str {
        &self.select_keyed
    }

    pub fn update_keyed(&self) -> &str {
        &self.update_keyed
    }

    pub fn delete_keyed(&self) -> &str {
        &self.delete_keyed
    }
}

/// An aggregate stored as one row of its table, keyed by a UUID `"id"` with a `"version"`.
pub trait Table: Sized + Send + Sync + Unpin + 'static {
    type Id: Copy + Display + Send + Sync;

    /// The table's statements: `Statements::new(&SQL)`, built once in a static.
    fn statements() -> &'static Statements;
    fn uuid(id: Self::Id) -> Uuid;
    /// Binds the row's values as [`Sql::row_values`] numbers them.
    fn bind_row<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q>;
    /// Binds a changed row, its version before the change (`expected`) and the states it
    /// must still be in (`from`, any when empty), as [`Sql::update_row`] numbers them.
    fn bind_update<'q>(
        &'q self,
        query: PgQuery<'q>,
        expected: i64,
        from: &'q [&'q str],
    ) -> PgQuery<'q>;
    /// The aggregate of a row that has [`Sql::columns`].
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error>;

    /// Inserts the row with the idempotency key that guards it and its event, in one
    /// statement (`keyed_write`): `false`, and nothing written, when the key was claimed
    /// before.
    fn insert_keyed(
        &self,
        conn: &mut PgConnection,
        claim: &KeyClaim<'_>,
        event: &OutboxMessage,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send {
        async move {
            let query = self.bind_row(sqlx::query(Self::statements().insert_keyed.as_str()));
            keyed_write::write(conn, query, claim, event).await
        }
    }

    /// Inserts the row alone, for use cases you add (they record its event with the app's
    /// `record`).
    fn insert(
        &self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        async move {
            self.bind_row(sqlx::query(Self::statements().insert.as_str()))
                .execute(conn)
                .await?;
            Ok(())
        }
    }

    /// Stores a changed row if it is still at `expected` (its version before the change)
    /// and in one of `from` (any state when empty), for use cases you add: `false` means
    /// another change got there first and nothing was written.
    fn update_if(
        &self,
        conn: &mut PgConnection,
        expected: i64,
        from: &[&str],
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send {
        async move {
            let updated = self
                .bind_update(
                    sqlx::query(Self::statements().update.as_str()),
                    expected,
                    from,
                )
                .execute(conn)
                .await?;
            Ok(updated.rows_affected() == 1)
        }
    }

    /// Deletes the row if it is still at version `expected`, for use cases you add;
    /// `false` when it moved on.
    fn delete_if(
        conn: &mut PgConnection,
        id: Self::Id,
        expected: i64,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send {
        async move {
            let deleted = sqlx::query(Self::statements().delete.as_str())
                .bind(Self::uuid(id))
                .bind(expected)
                .execute(conn)
                .await?;
            Ok(deleted.rows_affected() == 1)
        }
    }

    /// The row as the caller's transaction sees it, before a change.
    fn find_in(
        conn: &mut PgConnection,
        id: Self::Id,
    ) -> impl Future<Output = Result<Option<Self>, sqlx::Error>> + Send {
        async move {
            sqlx::query(Self::statements().select.as_str())
                .bind(Self::uuid(id))
                .fetch_optional(conn)
                .await?
                .map(|row| Self::from_row(&row))
                .transpose()
        }
    }

    fn find(
        pool: &PgPool,
        id: Self::Id,
    ) -> impl Future<Output = Result<Option<Self>, sqlx::Error>> + Send {
        async move {
            sqlx::query(Self::statements().select.as_str())
                .bind(Self::uuid(id))
                .fetch_optional(pool)
                .await?
                .map(|row| Self::from_row(&row))
                .transpose()
        }
    }

    /// Up to `limit` rows after `after` (exclusive), oldest first. UUIDv7 ids sort by
    /// creation time, so the id alone is a stable cursor.
    fn list(
        pool: &PgPool,
        after: Option<Self::Id>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Self>, sqlx::Error>> + Send {
        async move {
            sqlx::query(Self::statements().list.as_str())
                .bind(after.map(Self::uuid))
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(Self::from_row)
                .collect()
        }
    }
}
