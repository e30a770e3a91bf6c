//! Server push: the domain events of a context, or of one of its resources, as
//! `text/event-stream` (`GET /v1/<context>/events`, `GET /v1/<context>/{id}/events`).
//!
//! The gateway's event consumer publishes each event here after it has invalidated the
//! cache, so a client that re-reads on an event reads the change. Each SSE event has
//! `id: <aggregate_id>:<version>`, `event:` the event type and `data:` the event as JSON,
//! with the resource as it was right after the change.
//!
//! - **Resuming.** A reconnecting client sends `Last-Event-ID`. The stream replays what came
//!   after that event from a bounded log of recent events. When the event is no longer in
//!   the log, or the client fell behind the live feed, the client gets a `resync` event:
//!   re-read what it shows, then go on following.
//! - **Order and repeats.** One resource's events are published in order of version. A
//!   redelivered event (at or below the newest version published for its resource) is
//!   dropped.
//! - **Limits.** Open streams are bounded per principal (429 beyond) and in all (503).
//! - **Idle and stopping.** Keep-alive comments keep proxies from closing an idle stream,
//!   and every stream ends when the gateway begins to stop, so clients reconnect to a
//!   replica that serves.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use tokio::sync::{broadcast, watch};

use crate::config::{ConfigError, Env};
use crate::gateway::auth::Principal;
use crate::gateway::problem::Problem;

/// The SSE event that tells a client it may have missed events.
pub const RESYNC: &str = "resync";
/// Open event streams (gauge).
pub const STREAMS_OPEN: &str = "gateway_event_streams_open";
/// Events published to the streams (counter).
pub const STREAM_EVENTS: &str = "gateway_stream_events_total";
const LAST_EVENT_ID: &str = "last-event-id";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamsConfig {
    /// Open streams one principal may hold (`GATEWAY__STREAMS__PER_PRINCIPAL`, 16).
    pub per_principal: usize,
    /// Open streams in all (`GATEWAY__STREAMS__MAX`, 10,000).
    pub max: usize,
    /// Recent events kept for `Last-Event-ID` (`GATEWAY__STREAMS__LOG`, 4,096). It is
    /// also how far a stream may fall behind before it gets `resync`.
    pub log: usize,
    /// The keep-alive comment's interval (`GATEWAY__STREAMS__KEEP_ALIVE_SECS`, 15).
    pub keep_alive: Duration,
}

impl StreamsConfig {
    /// From `<PREFIX>__STREAMS__{PER_PRINCIPAL,MAX,LOG,KEEP_ALIVE_SECS}`, each a positive
    /// number, the defaults for those not set.
    pub fn from_env(env: &Env) -> Result<StreamsConfig, ConfigError> {
        let default = StreamsConfig::default();
        let count = |name: &str, default: usize| -> Result<usize, ConfigError> {
            let n: NonZeroUsize = env.parse_or(
                name,
                NonZeroUsize::new(default).unwrap_or(NonZeroUsize::MIN),
            )?;
            Ok(n.get())
        };
        let keep_alive: NonZeroU64 = env.parse_or(
            "STREAMS__KEEP_ALIVE_SECS",
            NonZeroU64::new(default.keep_alive.as_secs()).unwrap_or(NonZeroU64::MIN),
        )?;
        Ok(StreamsConfig {
            per_principal: count("STREAMS__PER_PRINCIPAL", default.per_principal)?,
            max: count("STREAMS__MAX", default.max)?,
            log: count("STREAMS__LOG", default.log)?,
            keep_alive: Duration::from_secs(keep_alive.get()),
        })
    }
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            per_principal: 16,
            max: 10_000,
            log: 4_096,
            keep_alive: Duration::from_secs(15),
        }
    }
}

/// Which events a stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub context: &'static str,
    /// One resource's, or every resource's of the context.
    pub aggregate_id: Option<String>,
}

impl Filter {
    pub fn context(context: &'static str) -> Filter {
        Filter {
            context,
            aggregate_id: None,
        }
    }

    pub fn resource(context: &'static str, aggregate_id: String) -> Filter {
        Filter {
            context,
            aggregate_id: Some(aggregate_id),
        }
    }

    fn matches(&self, event: &Pushed) -> bool {
        event.context == self.context
            && self
                .aggregate_id
                .as_ref()
                .is_none_or(|id| *id == event.aggregate_id)
    }
}

/// One domain event, as the streams send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub context: &'static str,
    pub aggregate_id: String,
    pub version: i64,
    pub event_type: String,
    /// The event as JSON.
    pub data: String,
}

impl Pushed {
    /// The SSE `id`: `<aggregate_id>:<version>`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.aggregate_id, self.version)
    }

    fn event(&self) -> Event {
        Event::default()
            .id(self.id())
            .event(&self.event_type)
            .data(&self.data)
    }
}

/// What the live feed carries to every open stream.
#[derive(Clone)]
enum Live {
    Event(Arc<Pushed>),
    /// Events may have been lost before they reached this gateway (`resync_all`).
    Resync(String),
}

/// The recent events, oldest first, and the newest version of each resource in them.
struct Log {
    events: VecDeque<Arc<Pushed>>,
    newest: HashMap<(&'static str, String), Newest>,
}

struct Newest {
    version: i64,
    /// How many of the resource's events the log holds: forgotten at 0.
    held: usize,
}

/// The hub every stream subscribes to. Cheap to clone.
#[derive(Clone)]
pub struct Streams {
    inner: Arc<Inner>,
}

struct Inner {
    config: StreamsConfig,
    log: Mutex<Log>,
    live: broadcast::Sender<Live>,
    open: Mutex<HashMap<String, usize>>,
    closing: watch::Sender<bool>,
}

impl Streams {
    pub fn new(config: StreamsConfig) -> Streams {
        let (live, _) = broadcast::channel(config.log.max(1));
        Streams {
            inner: Arc::new(Inner {
                config,
                log: Mutex::new(Log {
                    events: VecDeque::with_capacity(config.log),
                    newest: HashMap::new(),
                }),
                live,
                open: Mutex::new(HashMap::new()),
                closing: watch::channel(false).0,
            }),
        }
    }

    /// Sends `event` to every open stream it concerns and keeps it for resuming. Returns
    /// false for a repeat: a version at or below the newest published for its resource.
    pub fn publish(&self, event: Pushed) -> bool {
        let inner = &self.inner;
        let mut log = lock(&inner.log);
        let key = (event.context, event.aggregate_id.clone());
        if log
            .newest
            .get(&key)
            .is_some_and(|newest| event.version <= newest.version)
        {
            return false;
        }
        let newest = log.newest.entry(key).or_insert(Newest {
            version: event.version,
            held: 0,
        });
        newest.version = event.version;
        newest.held += 1;
        let event = Arc::new(event);
        log.events.push_back(event.clone());
        while log.events.len() > inner.config.log {
            let Some(old) = log.events.pop_front() else {
                break;
            };
            let key = (old.context, old.aggregate_id.clone());
            if let Some(newest) = log.newest.get_mut(&key) {
                newest.held -= 1;
                if newest.held == 0 {
                    log.newest.remove(&key);
                }
            }
        }
        // Sent under the lock, so a stream opening now sees each event once: in the log
        // it replays or on the live feed, never both (see `open`).
        let _ = inner.live.send(Live::Event(event));
        metrics::counter!(STREAM_EVENTS).increment(1);
        true
    }

    /// Sends `resync` to every open stream: events may have been lost on their way to this
    /// gateway (its feed of them was interrupted).
    pub fn resync_all(&self, why: &str) {
        let _log = lock(&self.inner.log);
        let _ = self.inner.live.send(Live::Resync(why.to_string()));
    }

    /// Ends every stream and refuses new ones (503): the gateway is stopping.
    pub fn close(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Open streams in all.
    pub fn open_count(&self) -> usize {
        lock(&self.inner.open).values().sum()
    }

    /// The SSE response for `principal` (whose scope the route checked), resuming after the
    /// request's `Last-Event-ID` if it has one.
    pub fn respond(
        &self,
        principal: &Principal,
        filter: Filter,
        headers: &HeaderMap,
    ) -> Result<Response, Problem> {
        let last_event_id = headers
            .get(LAST_EVENT_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|id| !id.is_empty());
        let stream = self.open(&principal.identity(), filter, last_event_id)?;
        let mut response = Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(self.inner.config.keep_alive))
            .into_response();
        // Proxies such as nginx buffer a response unless told not to.
        response.headers_mut().insert(
            "x-accel-buffering",
            axum::http::HeaderValue::from_static("no"),
        );
        Ok(response)
    }

    /// A stream of the events `filter` selects, for `principal` (an identity, counted
    /// against its limit while the stream is open).
    pub fn open(
        &self,
        principal: &str,
        filter: Filter,
        last_event_id: Option<&str>,
    ) -> Result<impl Stream<Item = Result<Event, Infallible>> + Send + 'static, Problem> {
        let inner = &self.inner;
        if *inner.closing.borrow() {
            return Err(
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "the gateway is stopping")
                    .with_retry_after(1),
            );
        }
        let slot = Slot::take(inner.clone(), principal)?;
        let mut backlog = VecDeque::new();
        let live = {
            let log = lock(&inner.log);
            // Subscribed while publishing is held off: every event is either in the log
            // now or will arrive live, never both.
            let live = inner.live.subscribe();
            if let Some(last) = last_event_id {
                match log
                    .events
                    .iter()
                    .position(|e| e.context == filter.context && e.id() == last)
                {
                    Some(at) => backlog.extend(
                        log.events
                            .iter()
                            .skip(at + 1)
                            .filter(|e| filter.matches(e))
                            .map(|e| e.event()),
                    ),
                    None => backlog.push_back(resync(&format!(
                        "event {last} is no longer in the gateway's log"
                    ))),
                }
            }
            live
        };
        let subscription = Subscription {
            filter,
            backlog,
            live,
            closing: inner.closing.subscribe(),
            _slot: slot,
        };
        Ok(futures_util::stream::unfold(
            subscription,
            |mut s| async move {
                let event = s.next().await?;
                Some((Ok(event), s))
            },
        ))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; if it did, the data is still whole.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn resync(why: &str) -> Event {
    Event::default().event(RESYNC).data(
        serde_json::json!({
            "reason": format!("{why}: events may have been missed; re-read, then go on following")
        })
        .to_string(),
    )
}

struct Subscription {
    filter: Filter,
    /// Sent first: the replay after `Last-Event-ID`, or `resync`.
    backlog: VecDeque<Event>,
    live: broadcast::Receiver<Live>,
    closing: watch::Receiver<bool>,
    _slot: Slot,
}

impl Subscription {
    /// The next event to send; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        if let Some(event) = self.backlog.pop_front() {
            return Some(event);
        }
        loop {
            tokio::select! {
                biased;
                _ = self.closing.wait_for(|closing| *closing) => return None,
                received = self.live.recv() => match received {
                    Ok(live) => match &live {
                        Live::Event(event) if self.filter.matches(event) => return Some(event.event()),
                        Live::Event(_) => {}
                        Live::Resync(why) => return Some(resync(why)),
                    },
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        return Some(resync(&format!("this stream fell {missed} events behind")));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}

/// A principal's place among the open streams, given back when the stream ends.
struct Slot {
    inner: Arc<Inner>,
    principal: String,
}

impl Slot {
    fn take(inner: Arc<Inner>, principal: &str) -> Result<Slot, Problem> {
        let mut open = lock(&inner.open);
        let total: usize = open.values().sum();
        if total >= inner.config.max {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the gateway holds {total} event streams, its most"),
            )
            .with_retry_after(5));
        }
        let held = open.entry(principal.to_string()).or_insert(0);
        if *held >= inner.config.per_principal {
            return Err(Problem::too_many_requests(
                format!(
                    "{principal} holds {held} event streams, the most one caller may; close one"
                ),
                Duration::from_secs(1),
            ));
        }
        *held += 1;
        metrics::gauge!(STREAMS_OPEN).set((total + 1) as f64);
        drop(open);
        Ok(Slot {
            inner,
            principal: principal.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = lock(&self.inner.open);
        if let Some(held) = open.get_mut(&self.principal) {
            *held -= 1;
            if *held == 0 {
                open.remove(&self.principal);
            }
        }
        metrics::gauge!(STREAMS_OPEN).set(open.values().sum::<usize>() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn event(aggregate_id: &str, version: i64) -> Pushed {
        Pushed {
            context: "orders",
            aggregate_id: aggregate_id.to_string(),
            version,
            event_type: "shop.orders.v1.OrderChanged".to_string(),
            data: format!("{{\"version\":{version}}}"),
        }
    }

    /// What an SSE event puts on the wire, as text.
    async fn wire(event: Event) -> String {
        let body =
            Sse::new(futures_util::stream::iter([Ok::<_, Infallible>(event)])).into_response();
        let bytes = axum::body::to_bytes(body.into_body(), 1 << 16)
            .await
            .expect("an SSE body");
        String::from_utf8(bytes.to_vec()).expect("UTF-8")
    }

    async fn next_wire<S: Stream<Item = Result<Event, Infallible>> + Unpin>(
        stream: &mut S,
    ) -> String {
        let next = tokio::time::timeout(Duration::from_secs(1), stream.next())
            .await
            .expect("an event within a second")
            .expect("the stream goes on");
        wire(next.expect("infallible")).await
    }

    fn small(log: usize) -> Streams {
        Streams::new(StreamsConfig {
            log,
            ..StreamsConfig::default()
        })
    }

    #[tokio::test]
    async fn a_stream_gets_its_resources_events_in_order_with_id_type_and_data() {
        let streams = small(16);
        let mut one = Box::pin(
            streams
                .open("token:a", Filter::resource("orders", "o1".into()), None)
                .unwrap(),
        );
        let mut all = Box::pin(
            streams
                .open("token:a", Filter::context("orders"), None)
                .unwrap(),
        );
        assert!(streams.publish(event("o1", 1)));
        assert!(streams.publish(event("o2", 1)));
        assert!(streams.publish(Pushed {
            context: "billing",
            ..event("o1", 5)
        }));
        assert!(streams.publish(event("o1", 2)));
        assert_eq!(
            next_wire(&mut one).await,
            "id: o1:1\nevent: shop.orders.v1.OrderChanged\ndata: {\"version\":1}\n\n"
        );
        assert!(next_wire(&mut one).await.starts_with("id: o1:2\n"));
        for id in ["o1:1", "o2:1", "o1:2"] {
            assert!(
                next_wire(&mut all)
                    .await
                    .starts_with(&format!("id: {id}\n"))
            );
        }
    }

    #[tokio::test]
    async fn a_repeated_or_older_version_is_not_sent_again() {
        let streams = small(16);
        let mut one = Box::pin(
            streams
                .open("token:a", Filter::resource("orders", "o1".into()), None)
                .unwrap(),
        );
        assert!(streams.publish(event("o1", 1)));
        assert!(streams.publish(event("o1", 2)));
        assert!(!streams.publish(event("o1", 2)), "a redelivery");
        assert!(!streams.publish(event("o1", 1)), "an older one");
        assert!(streams.publish(event("o1", 3)));
        for id in ["o1:1", "o1:2", "o1:3"] {
            assert!(
                next_wire(&mut one)
                    .await
                    .starts_with(&format!("id: {id}\n"))
            );
        }
    }

    #[tokio::test]
    async fn last_event_id_resumes_after_that_event_and_an_unknown_one_asks_to_resync() {
        let streams = small(3);
        for (id, version) in [("o1", 1), ("o2", 1), ("o1", 2), ("o1", 3)] {
            streams.publish(event(id, version));
        }
        // The log holds the last three: o2:1, o1:2, o1:3.
        let mut resumed = Box::pin(
            streams
                .open(
                    "token:a",
                    Filter::resource("orders", "o1".into()),
                    Some("o1:2"),
                )
                .unwrap(),
        );
        assert!(next_wire(&mut resumed).await.starts_with("id: o1:3\n"));
        streams.publish(event("o1", 4));
        assert!(next_wire(&mut resumed).await.starts_with("id: o1:4\n"));

        let mut forgotten = Box::pin(
            streams
                .open("token:a", Filter::context("orders"), Some("o1:1"))
                .unwrap(),
        );
        let first = next_wire(&mut forgotten).await;
        assert!(
            first.starts_with("event: resync\ndata: {\"reason\":\"event o1:1 is no longer"),
            "{first}"
        );
        streams.publish(event("o2", 2));
        assert!(next_wire(&mut forgotten).await.starts_with("id: o2:2\n"));
    }

    #[tokio::test]
    async fn a_stream_that_falls_behind_gets_resync_then_the_live_events() {
        let streams = small(2);
        let mut slow = Box::pin(
            streams
                .open("token:a", Filter::context("orders"), None)
                .unwrap(),
        );
        for version in 1..=5 {
            streams.publish(event("o1", version));
        }
        let first = next_wire(&mut slow).await;
        assert!(first.starts_with("event: resync\n"), "{first}");
        assert!(first.contains("fell 3 events behind"), "{first}");
        assert!(next_wire(&mut slow).await.starts_with("id: o1:4\n"));
        assert!(next_wire(&mut slow).await.starts_with("id: o1:5\n"));
    }

    #[tokio::test]
    async fn an_interrupted_feed_sends_resync_to_every_stream() {
        let streams = small(16);
        let mut one = Box::pin(
            streams
                .open("token:a", Filter::resource("orders", "o1".into()), None)
                .unwrap(),
        );
        let mut all = Box::pin(
            streams
                .open("token:b", Filter::context("orders"), None)
                .unwrap(),
        );
        streams.resync_all("the feed was interrupted");
        streams.publish(event("o1", 1));
        for stream in [&mut one, &mut all] {
            let first = next_wire(stream).await;
            assert!(
                first.starts_with("event: resync\n") && first.contains("the feed was interrupted"),
                "{first}"
            );
            assert!(next_wire(stream).await.starts_with("id: o1:1\n"));
        }
    }

    #[tokio::test]
    async fn streams_are_bounded_per_principal_and_a_closed_one_frees_its_place() {
        let streams = Streams::new(StreamsConfig {
            per_principal: 2,
            max: 3,
            ..StreamsConfig::default()
        });
        let first = streams
            .open("token:a", Filter::context("orders"), None)
            .unwrap();
        let _second = streams
            .open("token:a", Filter::context("orders"), None)
            .unwrap();
        let Err(refused) = streams.open("token:a", Filter::context("orders"), None) else {
            panic!("a third stream for one principal");
        };
        assert_eq!(refused.status, 429);
        assert!(
            refused.detail.contains("token:a holds 2 event streams"),
            "{}",
            refused.detail
        );
        let _other = streams
            .open("token:b", Filter::context("orders"), None)
            .unwrap();
        let Err(full) = streams.open("token:c", Filter::context("orders"), None) else {
            panic!("a fourth stream in all");
        };
        assert_eq!(full.status, 503);
        assert_eq!(streams.open_count(), 3);
        drop(first);
        assert_eq!(streams.open_count(), 2);
        assert!(
            streams
                .open("token:a", Filter::context("orders"), None)
                .is_ok()
        );
    }

    #[tokio::test]
    async fn closing_ends_every_stream_and_refuses_new_ones() {
        let streams = small(16);
        let mut open = Box::pin(
            streams
                .open("token:a", Filter::context("orders"), None)
                .unwrap(),
        );
        streams.close();
        let end = tokio::time::timeout(Duration::from_secs(1), open.next())
            .await
            .expect("the stream ends at once");
        assert!(end.is_none());
        let Err(refused) = streams.open("token:a", Filter::context("orders"), None) else {
            panic!("a stream opened while stopping");
        };
        assert_eq!(refused.status, 503);
    }

    #[test]
    fn settings_come_from_the_environment_and_zero_is_refused() {
        let env = |vars: &[(&str, &str)]| Env::from_vars("GATEWAY", vars.iter().copied());
        assert_eq!(
            StreamsConfig::from_env(&env(&[])).unwrap(),
            StreamsConfig::default()
        );
        let set = StreamsConfig::from_env(&env(&[
            ("GATEWAY__STREAMS__PER_PRINCIPAL", "2"),
            ("GATEWAY__STREAMS__KEEP_ALIVE_SECS", "5"),
        ]))
        .unwrap();
        assert_eq!(
            (set.per_principal, set.keep_alive),
            (2, Duration::from_secs(5))
        );
        let zero = StreamsConfig::from_env(&env(&[("GATEWAY__STREAMS__LOG", "0")])).unwrap_err();
        assert!(zero.to_string().contains("GATEWAY__STREAMS__LOG"), "{zero}");
    }

    #[test]
    fn the_log_forgets_the_newest_version_of_a_resource_it_no_longer_holds() {
        let streams = small(2);
        streams.publish(event("o1", 1));
        streams.publish(event("o2", 1));
        streams.publish(event("o3", 1));
        let log = lock(&streams.inner.log);
        assert_eq!(log.events.len(), 2);
        assert!(!log.newest.contains_key(&("orders", "o1".to_string())));
        assert_eq!(log.newest.len(), 2);
    }
}
