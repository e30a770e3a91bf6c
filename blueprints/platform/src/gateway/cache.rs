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

/// Its `Debug` shows the URL without its credentials.
#[derive(Clone)]
pub struct CacheConfig {
    pub url: String,
    pub ttl: Duration,
    /// How long an invalidation blocks re-caching (longer than any request).
    pub marker_ttl: Duration,
    /// Key prefix, `<system>:gateway:v1`.
    pub namespace: String,
}

impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheConfig")
            .field("url", &redacted(&self.url))
            .field("ttl", &self.ttl)
            .field("marker_ttl", &self.marker_ttl)
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// A URL fit for logs and errors: its user information (`user:password@`), which for
/// Redis is where the password goes, replaced by `***`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[derive(Clone)]
pub struct Cache {
    inner: Option<Connected>,
}

#[derive(Clone)]
struct Connected {
    manager: ConnectionManager,
    config: CacheConfig,
    /// For subscriptions, which need a connection of their own.
    client: redis::Client,
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
            .map_err(|e| format!("`{}` is not a Redis URL: {e}", redacted(&config.url)))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let manager = client
            .get_connection_manager_lazy(manager_config)
            .map_err(|e| format!("cannot set up the Redis client: {e}"))?;
        Ok(Cache {
            inner: Some(Connected {
                manager,
                config,
                client,
            }),
        })
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// A connection handle, the config and the entry's key; `None` without a cache.
    fn entry(&self, context: &str, id: &str) -> Option<(ConnectionManager, &CacheConfig, String)> {
        let Connected {
            manager, config, ..
        } = self.inner.as_ref()?;
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

    /// The channel `name` in this cache's namespace.
    fn channel(&self, name: &str) -> Option<String> {
        let connected = self.inner.as_ref()?;
        Some(format!("{}:{name}", connected.config.namespace))
    }

    /// Publishes `payload` on the channel `name` (in the cache's namespace) to every
    /// subscriber, this gateway's included; false without a cache or when Redis failed.
    pub async fn publish(&self, name: &str, payload: &[u8]) -> bool {
        let (Some(connected), Some(channel)) = (self.inner.as_ref(), self.channel(name)) else {
            return false;
        };
        let mut conn = connected.manager.clone();
        bounded("PUBLISH", conn.publish::<_, _, i64>(&channel, payload))
            .await
            .is_some()
    }

    /// A subscription to the channel `name`: its messages' payloads, until the connection
    /// is lost. `None` without a cache.
    pub async fn subscribe(
        &self,
        name: &str,
    ) -> Option<Result<impl futures_util::Stream<Item = Vec<u8>> + Send + use<>, String>> {
        let (connected, channel) = (self.inner.as_ref()?, self.channel(name)?);
        let subscribed = async {
            let mut pubsub = connected.client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        Some(
            match tokio::time::timeout(REDIS_TIMEOUT * 4, subscribed).await {
                Ok(Ok(pubsub)) => Ok(futures_util::StreamExt::map(
                    pubsub.into_on_message(),
                    |message| message.get_payload_bytes().to_vec(),
                )),
                Ok(Err(e)) => Err(format!("cannot subscribe to {channel}: {e}")),
                Err(_) => Err(format!(
                    "cannot subscribe to {channel}: no answer within {:?}",
                    REDIS_TIMEOUT * 4
                )),
            },
        )
    }

    /// For readiness: does Redis answer?
    pub async fn ping(&self) -> Option<bool> {
        let Connected { manager, .. } = self.inner.as_ref()?;
        let mut conn = manager.clone();
        let ping = redis::cmd("PING");
        Some(
            bounded("PING", ping.query_async::<String>(&mut conn))
                .await
                .is_some(),
        )
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[tokio::test]
    async fn a_redis_url_never_shows_its_password_in_errors_or_debug_output() {
        // Assembled here, so no credential-shaped literal sits in the source for secret
        // scanners to (rightly) complain about.
        let with = |before: &str, after: &str| [before, "s3cret-pw", after].concat();
        for url in [
            with("redis://:", "@cache.internal:6379/0"),
            with("rediss://app:", "@cache.internal:6380"),
            with("redis://", "@cache.internal:notaport"),
        ] {
            assert!(!redacted(&url).contains("s3cret"), "{}", redacted(&url));
            let config = CacheConfig {
                url: url.clone(),
                ttl: Duration::from_secs(1),
                marker_ttl: Duration::from_secs(1),
                namespace: "t".into(),
            };
            assert!(!format!("{config:?}").contains("s3cret"), "{config:?}");
            if let Err(e) = Cache::connect(config) {
                assert!(!e.contains("s3cret"), "{e}");
            }
        }
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redacted(&["redis://:", "pw", "@10.0.0.5:6379/2"].concat()),
            "redis://***@10.0.0.5:6379/2"
        );
    }
}
