//! Cache-aside in Redis for single-resource reads (`GET /v1/<context>/{id}`), with a TTL.
//! Writes never write the cache; the domain events invalidate it (see `invalidation.rs`).
//!
//! The race between a read that fetched an old version and an invalidation that lands
//! before the read stores it is closed with a marker: invalidation writes a short-lived
//! marker instead of deleting, and reads store with `SET NX`, which the marker blocks. The
//! marker lives longer than any request may (the request timeout plus a margin).
//!
//! Redis is an optimisation, never a dependency: every Redis call is bounded by a short
//! timeout, and a failure is a cache miss.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// What an invalidated entry holds until its marker expires; never valid JSON.
const INVALIDATED: &str = "!invalidated";
/// Longest a Redis call may take before it counts as a miss.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub url: String,
    pub ttl: Duration,
    /// How long an invalidation blocks re-caching (longer than any request).
    pub marker_ttl: Duration,
    /// Key prefix, `<system>:gateway:v1`.
    pub namespace: String,
}

#[derive(Clone)]
pub struct Cache {
    inner: Option<(ConnectionManager, CacheConfig)>,
}

/// Whether a read came from the cache, reported as the `X-Cache` header and the `cache`
/// log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
    /// No cache configured, or Redis failed.
    Bypass,
}

impl Lookup {
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Bypass => "bypass",
        }
    }
}

async fn bounded<T>(what: &str, call: impl Future<Output = redis::RedisResult<T>>) -> Option<T> {
    match tokio::time::timeout(REDIS_TIMEOUT, call).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "redis {what} failed");
            None
        }
        Err(_) => {
            tracing::warn!("redis {what} timed out after {REDIS_TIMEOUT:?}");
            None
        }
    }
}

impl Cache {
    /// No cache: every read goes to the service.
    pub fn disabled() -> Cache {
        Cache { inner: None }
    }

    /// Connects lazily: Redis being down at start only means misses until it is up.
    pub fn connect(config: CacheConfig) -> Result<Cache, String> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| format!("`{}` is not a Redis URL: {e}", config.url))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let manager = client
            .get_connection_manager_lazy(manager_config)
            .map_err(|e| format!("cannot set up the Redis client: {e}"))?;
        Ok(Cache {
            inner: Some((manager, config)),
        })
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// A connection handle, the config and the entry's key; `None` without a cache.
    fn entry(&self, context: &str, id: &str) -> Option<(ConnectionManager, &CacheConfig, String)> {
        let (manager, config) = self.inner.as_ref()?;
        let key = format!("{}:{context}:{id}", config.namespace);
        Some((manager.clone(), config, key))
    }

    pub async fn get(&self, context: &str, id: &str) -> (Lookup, Option<Vec<u8>>) {
        let Some((mut conn, _, key)) = self.entry(context, id) else {
            return (Lookup::Bypass, None);
        };
        match bounded("GET", conn.get::<_, Option<Vec<u8>>>(&key)).await {
            Some(Some(value)) if value != INVALIDATED.as_bytes() => (Lookup::Hit, Some(value)),
            Some(_) => (Lookup::Miss, None),
            None => (Lookup::Bypass, None),
        }
    }

    /// Stores a read's result unless an invalidation marker (or a fresher entry) is there.
    pub async fn put(&self, context: &str, id: &str, body: &[u8]) {
        let Some((mut conn, config, key)) = self.entry(context, id) else {
            return;
        };
        let mut set = redis::cmd("SET");
        set.arg(&key)
            .arg(body)
            .arg("NX")
            .arg("PX")
            .arg(config.ttl.as_millis() as u64);
        bounded("SET", set.query_async::<Option<String>>(&mut conn)).await;
    }

    /// Replaces the entry with a marker; `Err` when Redis could not be reached.
    pub async fn invalidate(&self, context: &str, id: &str) -> Result<(), String> {
        let Some((mut conn, config, key)) = self.entry(context, id) else {
            return Ok(());
        };
        let mut set = redis::cmd("SET");
        set.arg(&key)
            .arg(INVALIDATED)
            .arg("PX")
            .arg(config.marker_ttl.as_millis() as u64);
        bounded("invalidation", set.query_async::<()>(&mut conn))
            .await
            .ok_or_else(|| format!("cannot invalidate {key}"))
    }

    /// Deletes the entry, without blocking re-caching.
    pub async fn remove(&self, context: &str, id: &str) -> Result<(), String> {
        let Some((mut conn, _, key)) = self.entry(context, id) else {
            return Ok(());
        };
        bounded("DEL", conn.del::<_, ()>(&key))
            .await
            .ok_or_else(|| format!("cannot delete {key}"))
    }

    /// For readiness: does Redis answer?
    pub async fn ping(&self) -> Option<bool> {
        let (manager, _) = self.inner.as_ref()?;
        let mut conn = manager.clone();
        let ping = redis::cmd("PING");
        Some(
            bounded("PING", ping.query_async::<String>(&mut conn))
                .await
                .is_some(),
        )
    }
}
