//! The connection pool. Connecting retries a bounded number of times, so a service started
//! next to its database (compose, `deploy/local/up.sh`) waits for it instead of crashing.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

#[derive(Clone)]
pub struct DbConfig {
    pub url: String,
    pub max_connections: u32,
    pub connect_attempts: u32,
}

impl std::fmt::Debug for DbConfig {
    // The URL carries the password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConfig")
            .field("url", &"<redacted>")
            .field("max_connections", &self.max_connections)
            .field("connect_attempts", &self.connect_attempts)
            .finish()
    }
}

pub async fn connect(config: &DbConfig) -> Result<PgPool, sqlx::Error> {
    let attempts = config.connect_attempts.max(1);
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=attempts {
        let result = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&config.url)
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
