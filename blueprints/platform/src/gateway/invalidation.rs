//! Keeps the read cache honest: the gateway consumes every domain event (its own consumer
//! group, or its own queue on SQS) and invalidates the cached resource the event is about,
//! named by the `aggregate_id` header. Then it publishes the event to the event streams of
//! every gateway replica (`fanout`, `stream`): after the invalidation, so a client that
//! re-reads on an event reads the change. A creation event cannot make an entry stale (nothing
//! was cached before the resource existed), so it only deletes; any other event also
//! blocks re-caching for a moment (see `cache.rs`). Invalidating is idempotent, so no inbox is needed;
//! a message is acknowledged once its entry is invalidated, or after the retries are spent
//! (the TTL then bounds how stale the entry can be).

use std::time::Duration;

use crate::bus::{AGGREGATE_ID, AGGREGATE_VERSION, Delivery, EVENT_TYPE, Subscriber};
use tokio::sync::watch;

use crate::gateway::cache::Cache;
use crate::gateway::fanout::Fanout;
use crate::gateway::stream::Pushed;

const ATTEMPTS: u32 = 5;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A topic the gateway consumes.
#[derive(Debug, Clone, Copy)]
pub struct Topic {
    pub topic: &'static str,
    /// The context whose resources its events are about.
    pub context: &'static str,
    /// The type of the event that announces a new resource (the context's first event).
    pub created: &'static str,
    /// An event of the topic (its type and payload) as the event streams send it: JSON,
    /// with the resource as it was right after the change.
    pub render: fn(event_type: &str, payload: &[u8]) -> Result<String, String>,
}

pub type Routes = &'static [Topic];

async fn apply(cache: &Cache, fanout: &Fanout, routes: Routes, delivery: &Delivery) {
    let Some(route) = routes.iter().find(|r| r.topic == delivery.topic) else {
        tracing::warn!(topic = %delivery.topic, "event from a topic the gateway does not cache");
        return;
    };
    let Some(id) = delivery.headers.get(AGGREGATE_ID) else {
        tracing::warn!(topic = %delivery.topic, "event without an aggregate_id header");
        return;
    };
    invalidate(cache, route, id, delivery).await;
    push(fanout, route, id, delivery).await;
}

/// Publishes the event to the streams that follow its context or its resource.
async fn push(fanout: &Fanout, route: &Topic, id: &str, delivery: &Delivery) {
    let event_type = delivery.headers.get(EVENT_TYPE).map_or("", String::as_str);
    let Some(version) = delivery
        .headers
        .get(AGGREGATE_VERSION)
        .and_then(|v| v.parse::<i64>().ok())
    else {
        tracing::warn!(topic = %delivery.topic, id, "event without an aggregate_version header: not streamed");
        return;
    };
    match (route.render)(event_type, &delivery.payload) {
        Ok(data) => {
            fanout
                .publish(Pushed {
                    context: route.context,
                    aggregate_id: id.to_string(),
                    version,
                    event_type: event_type.to_string(),
                    data,
                })
                .await
        }
        Err(e) => {
            tracing::warn!(error = %e, topic = %delivery.topic, id, event_type, "cannot render an event for the streams")
        }
    }
}

async fn invalidate(cache: &Cache, route: &Topic, id: &str, delivery: &Delivery) {
    let context = route.context;
    let creates = delivery.headers.get(EVENT_TYPE).map(String::as_str) == Some(route.created);
    for attempt in 0..ATTEMPTS {
        let done = if creates {
            cache.remove(context, id).await
        } else {
            cache.invalidate(context, id).await
        };
        match done {
            Ok(()) => {
                tracing::info!(context, id = %id, cache = "invalidated", "cache entry invalidated");
                return;
            }
            Err(e) if attempt + 1 == ATTEMPTS => {
                tracing::error!(error = %e, context, id = %id, "giving up on an invalidation; the TTL bounds staleness");
            }
            Err(_) => {
                tokio::time::sleep(crate::backoff::full_jitter(
                    BACKOFF_BASE,
                    BACKOFF_MAX,
                    attempt,
                ))
                .await
            }
        }
    }
}

/// Runs until `stop` turns true.
pub async fn run<S: Subscriber>(
    mut subscriber: S,
    cache: Cache,
    fanout: Fanout,
    routes: Routes,
    mut stop: watch::Receiver<bool>,
) {
    while let Some(delivery) = crate::bus::next_retrying(
        &mut subscriber,
        &mut stop,
        crate::adapter::STOP_GRACE,
        (BACKOFF_BASE, BACKOFF_MAX * 5),
        "cache invalidation",
    )
    .await
    {
        apply(&cache, &fanout, routes, &delivery).await;
        if let Err(e) = subscriber.ack(&delivery).await {
            tracing::warn!(error = %e, "cannot acknowledge an invalidation event");
        }
    }
}
