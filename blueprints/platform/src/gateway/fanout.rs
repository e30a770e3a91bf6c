//! Every gateway replica's event streams see every event, though the replicas share one
//! consumer group (or one queue on SQS), so each consumes only some of the events. The
//! replica that consumed an event publishes it on a Redis channel in the cache's namespace,
//! and every replica, itself included, hands what arrives there to its own streams.
//!
//! Without Redis (one replica, `GATEWAY__REDIS__URL` unset), or when publishing fails, the
//! event goes to this replica's streams only. A subscription that was lost and is back
//! sends `resync` to every open stream, since Redis does not keep what it could not deliver.

use std::borrow::Cow;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::gateway::cache::Cache;
use crate::gateway::invalidation::Routes;
use crate::gateway::stream::{Pushed, Streams};

/// The channel, after the cache's namespace.
const CHANNEL: &str = "events";
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// An event on the channel.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    context: Cow<'a, str>,
    aggregate_id: Cow<'a, str>,
    version: i64,
    event_type: Cow<'a, str>,
    data: Cow<'a, str>,
}

/// Where the event consumer sends what the streams should see.
#[derive(Clone)]
pub struct Fanout {
    streams: Streams,
    cache: Cache,
}

impl Fanout {
    pub fn new(streams: Streams, cache: Cache) -> Fanout {
        Fanout { streams, cache }
    }

    /// To every replica through Redis; to this replica's streams alone without Redis or
    /// when Redis failed.
    pub async fn publish(&self, event: Pushed) {
        if self.cache.enabled() {
            let wire = Wire {
                context: Cow::Borrowed(event.context),
                aggregate_id: Cow::Borrowed(&event.aggregate_id),
                version: event.version,
                event_type: Cow::Borrowed(&event.event_type),
                data: Cow::Borrowed(&event.data),
            };
            let payload = serde_json::to_vec(&wire).expect("strings and numbers serialize");
            if self.cache.publish(CHANNEL, &payload).await {
                return;
            }
            tracing::warn!(id = %event.id(), "cannot publish an event to the other gateway replicas; only this one's streams get it");
        }
        self.streams.publish(event);
    }

    /// Hands what arrives on the channel to this replica's streams until `stop` turns
    /// true, subscribing again (with backoff) whenever the subscription is lost. Without
    /// Redis it only waits for `stop`.
    pub async fn listen(self, routes: Routes, mut stop: watch::Receiver<bool>) {
        if !self.cache.enabled() {
            crate::bus::stopped(&mut stop).await;
            return;
        }
        let mut failures = 0u32;
        let mut interrupted = false;
        loop {
            let subscribed = tokio::select! {
                () = crate::bus::stopped(&mut stop) => return,
                subscribed = self.cache.subscribe(CHANNEL) => subscribed,
            };
            match subscribed {
                Some(Ok(messages)) => {
                    if interrupted {
                        tracing::info!("subscribed to the gateway's event channel again");
                        self.streams
                            .resync_all("this gateway's feed of events was interrupted");
                    }
                    failures = 0;
                    let mut messages = std::pin::pin!(messages);
                    loop {
                        tokio::select! {
                            () = crate::bus::stopped(&mut stop) => return,
                            message = messages.next() => match message {
                                Some(payload) => self.deliver(routes, &payload),
                                None => break,
                            },
                        }
                    }
                    tracing::warn!("lost the subscription to the gateway's event channel");
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cannot subscribe to the gateway's event channel")
                }
                None => return,
            }
            interrupted = true;
            let delay = crate::backoff::full_jitter(BACKOFF_BASE, BACKOFF_MAX, failures);
            failures = failures.saturating_add(1);
            tokio::select! {
                () = crate::bus::stopped(&mut stop) => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn deliver(&self, routes: Routes, payload: &[u8]) {
        let wire: Wire = match serde_json::from_slice(payload) {
            Ok(wire) => wire,
            Err(e) => {
                tracing::warn!(error = %e, "a message on the gateway's event channel is not an event");
                return;
            }
        };
        // The context's name as this gateway knows it; another system's or version's is
        // not ours to stream.
        let Some(context) = routes
            .iter()
            .map(|r| r.context)
            .find(|c| *c == wire.context)
        else {
            tracing::warn!(context = %wire.context, "an event on the gateway's event channel from a context this gateway does not route");
            return;
        };
        self.streams.publish(Pushed {
            context,
            aggregate_id: wire.aggregate_id.into_owned(),
            version: wire.version,
            event_type: wire.event_type.into_owned(),
            data: wire.data.into_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::invalidation::Topic;
    use crate::gateway::stream::{Filter, StreamsConfig};

    const ROUTES: Routes = &[Topic {
        topic: "shop.orders.order.v1",
        context: "orders",
        created: "shop.orders.v1.OrderCreated",
        render: |_, _| Ok(String::new()),
    }];

    #[tokio::test]
    async fn without_redis_an_event_goes_to_this_gateways_streams() {
        let streams = Streams::new(StreamsConfig::default());
        let fanout = Fanout::new(streams.clone(), Cache::disabled());
        let mut open = Box::pin(
            streams
                .open("token:a", Filter::context("orders"), None)
                .unwrap(),
        );
        fanout
            .publish(Pushed {
                context: "orders",
                aggregate_id: "o1".into(),
                version: 1,
                event_type: "shop.orders.v1.OrderCreated".into(),
                data: "{}".into(),
            })
            .await;
        let next = tokio::time::timeout(Duration::from_secs(1), open.next()).await;
        assert!(
            matches!(next, Ok(Some(Ok(_)))),
            "the event reached the stream"
        );
    }

    #[test]
    fn a_message_on_the_channel_reaches_the_streams_of_its_context_only() {
        let streams = Streams::new(StreamsConfig::default());
        let fanout = Fanout::new(streams.clone(), Cache::disabled());
        let wire = |context: &str, version: i64| {
            serde_json::to_vec(&Wire {
                context: context.into(),
                aggregate_id: "o1".into(),
                version,
                event_type: "t".into(),
                data: "{}".into(),
            })
            .unwrap()
        };
        fanout.deliver(ROUTES, &wire("orders", 1));
        fanout.deliver(ROUTES, &wire("payments", 2));
        fanout.deliver(ROUTES, b"not json");
        // Only the first became an event: a second orders event at version 1 is a repeat.
        assert!(!streams.publish(Pushed {
            context: "orders",
            aggregate_id: "o1".into(),
            version: 1,
            event_type: "t".into(),
            data: "{}".into(),
        }));
        assert!(streams.publish(Pushed {
            context: "orders",
            aggregate_id: "o1".into(),
            version: 2,
            event_type: "t".into(),
            data: "{}".into(),
        }));
    }
}
