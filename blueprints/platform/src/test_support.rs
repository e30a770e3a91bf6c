//! A fresh PostgreSQL database per test, created on the server that `DATABASE_URL` points
//! at (default `postgres://postgres@127.0.0.1:5432/postgres`; as with psql, a password the
//! URL leaves out comes from `PGPASSWORD` or `~/.pgpass`) and dropped by
//! [`TestDatabase::drop_database`].

use sqlx::{Connection, Executor, PgConnection};

pub mod binary;
pub mod binary_tests;
pub mod door;
pub mod in_process;
pub mod keyed_api;
pub mod keyed_events;

/// A random link key for one test, so no key is written down anywhere.
pub fn link_key() -> crate::service_auth::LinkKey {
    crate::service_auth::LinkKey::new(&crate::service_auth::random_secret())
        .expect("64 characters is long enough")
}

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct TestDatabase {
    /// URL of the new database.
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create(prefix: &str) -> TestDatabase {
        let admin_url =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string());
        let name = format!("{prefix}_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "cannot connect to PostgreSQL at DATABASE_URL ({e}); start a server and set \
                 DATABASE_URL to a user that may CREATE DATABASE, e.g. {DEFAULT_ADMIN_URL}"
            )
        });
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .await
            .expect("CREATE DATABASE");
        TestDatabase {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// Drops the database, closing whatever connections are still open to it.
    pub async fn drop_database(self) {
        let mut admin = PgConnection::connect(&self.admin_url)
            .await
            .expect("connect to drop the test database");
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            )))
            .await
            .expect("DROP DATABASE");
    }
}

/// The platform's tables (outbox, inbox, idempotency keys, sagas) as a service's
/// migrations leave them: what the platform's own database tests run against.
pub const PLATFORM_SCHEMA: &str = include_str!("test_support/schema.sql");

/// The tables of [`PLATFORM_SCHEMA`].
pub const PLATFORM_TABLES: [&str; 4] = ["outbox", "inbox", "idempotency_keys", "saga"];

/// A fresh database with [`PLATFORM_SCHEMA`] applied, and a pool on it.
pub async fn platform_database(prefix: &str) -> (TestDatabase, sqlx::PgPool) {
    let db = TestDatabase::create(prefix).await;
    let pool = sqlx::PgPool::connect(&db.url)
        .await
        .expect("connect to the test database");
    sqlx::raw_sql(PLATFORM_SCHEMA)
        .execute(&pool)
        .await
        .expect("the platform schema applies");
    (db, pool)
}

/// Panics unless the platform's tables in `pool`'s database (migrated by a service) have
/// the columns and indexes of [`PLATFORM_SCHEMA`], so the platform's database tests test
/// what the service runs on.
pub async fn assert_platform_schema(pool: &sqlx::PgPool) {
    let (db, reference) = platform_database("platform_schema").await;
    let expected = schema_shape(&reference).await;
    reference.close().await;
    db.drop_database().await;
    let actual = schema_shape(pool).await;
    let missing: Vec<&String> = expected.iter().filter(|e| !actual.contains(e)).collect();
    let extra: Vec<&String> = actual.iter().filter(|a| !expected.contains(a)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the migrations' platform tables differ from platform::test_support::PLATFORM_SCHEMA:\n  \
         missing: {missing:#?}\n  not in the platform's schema: {extra:#?}"
    );
}

/// Each column (type, nullability, default) and each index of the platform's tables.
async fn schema_shape(pool: &sqlx::PgPool) -> Vec<String> {
    let tables: Vec<String> = PLATFORM_TABLES.iter().map(|t| t.to_string()).collect();
    sqlx::query_scalar(
        "SELECT table_name || '.' || column_name || ' ' || data_type || ' nullable=' || is_nullable \
                || ' default=' || coalesce(column_default, '') \
         FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ANY($1) \
         UNION ALL \
         SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = ANY($1) \
         ORDER BY 1",
    )
    .bind(&tables)
    .fetch_all(pool)
    .await
    .expect("read the schema")
}

/// The same URL with its database path replaced.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_only_the_database() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "t1"), "postgres://u@h/t1");
    }
}

/// An in-memory bus for tests of the relay and the consumers: it records what was
/// published and can be told to fail, like a broker that is down. The real brokers are
/// exercised end to end by the generator's harness.
#[derive(Default)]
pub struct MemoryBus {
    pub published: std::sync::Mutex<Vec<crate::bus::OutgoingMessage>>,
    pub down: std::sync::atomic::AtomicBool,
    /// An event id the bus refuses for good, like a message too large for the broker.
    pub refuse: std::sync::Mutex<Option<String>>,
    /// Up to how long a publish takes, like a broker's round trip: each message takes
    /// 0 to 3 thirds of it, fixed by its event id, so concurrent publishes finish out of
    /// the order they started in.
    pub latency: std::sync::Mutex<std::time::Duration>,
}

impl MemoryBus {
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn with_latency(latency: std::time::Duration) -> MemoryBus {
        let bus = MemoryBus::default();
        *bus.latency.lock().unwrap() = latency;
        bus
    }

    pub fn refuse_event(&self, event_id: Option<String>) {
        *self.refuse.lock().unwrap() = event_id;
    }

    pub fn published(&self) -> Vec<crate::bus::OutgoingMessage> {
        self.published.lock().unwrap().clone()
    }
}

impl crate::bus::Publisher for MemoryBus {
    async fn publish(
        &self,
        message: &crate::bus::OutgoingMessage,
    ) -> Result<(), crate::bus::BusError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::bus::BusError::new("broker down (test)"));
        }
        let latency = *self.latency.lock().unwrap();
        if !latency.is_zero() {
            let id = message
                .headers
                .get(crate::bus::EVENT_ID)
                .map_or("", String::as_str);
            let thirds = id
                .bytes()
                .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
                % 4;
            tokio::time::sleep(latency * thirds / 3).await;
        }
        let refused = self.refuse.lock().unwrap().clone();
        if refused.is_some() && message.headers.get(crate::bus::EVENT_ID) == refused.as_ref() {
            return Err(crate::bus::BusError::rejected("message refused (test)"));
        }
        self.published.lock().unwrap().push(message.clone());
        Ok(())
    }

    async fn ensure_topics(&self, _topics: &[String]) -> Result<(), crate::bus::BusError> {
        Ok(())
    }
}
