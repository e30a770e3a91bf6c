//! The event tests every keyed service shares, against its real migrations and use cases
//! with an in-memory bus standing in for the broker: what a create and a recorded event put
//! on the bus, and, for a service that subscribes, its idempotent consumer (duplicates,
//! poison messages, other events, an outage of its own database). A service implements
//! [`KeyedEvents`] (and [`ConsumedEvents`] if it subscribes) for its test fixture and
//! instantiates the suites with [`keyed_events_tests!`](crate::keyed_events_tests) and
//! [`consumer_tests!`](crate::consumer_tests).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::migrate::Migrator;
use sqlx::{PgConnection, PgPool};

use super::{MemoryBus, TestDatabase};
use crate::bus::{
    AGGREGATE_ID, CORRELATION_ID, DEAD_LETTER_REASON, Delivery, EVENT_ID, EVENT_TYPE, Receipt,
    TRACEPARENT,
};
use crate::consumer::{ConsumerConfig, Handler, HandlerError, Outcome, process};
use crate::context::MessageContext;
use crate::relay::{PARK_AFTER, relay_batch};

/// An event as the bus carries it: its topic and its fully qualified protobuf name.
#[derive(Debug, Clone, Copy)]
pub struct EventName {
    pub topic: &'static str,
    pub event_type: &'static str,
}

/// A service's use cases as the shared event tests drive them.
pub trait KeyedEvents: Sized + Send + Sync + 'static {
    /// The prefix of this service's test databases.
    const DATABASE: &'static str;
    /// The aggregate's table, as SQL names it (quoted).
    const TABLE: &'static str;
    /// The event a create writes.
    const CREATED: EventName;

    /// The service's migrations.
    fn migrator() -> Migrator;
    /// The service's use cases on `pool`, the services it calls pointing nowhere.
    fn new(database_url: &str, pool: PgPool) -> Self;
    /// Creates an aggregate with default fields as a consumer does (in its own transaction,
    /// without the API's reference checks) and wakes the relay; returns its id.
    fn create(
        &self,
        key: &str,
        fingerprint: &[u8],
        context: &MessageContext,
    ) -> impl Future<Output = String> + Send;
}

/// A service whose aggregate has an event besides its creation.
pub trait RecordsEvents: KeyedEvents {
    /// The second event of the aggregate.
    const RECORDED: EventName;

    /// Creates an aggregate as [`KeyedEvents::create`] does, then records its second event
    /// in a transaction of its own; returns its id.
    fn create_then_record(&self, context: &MessageContext) -> impl Future<Output = String> + Send;
}

/// A service that subscribes to another's events.
pub trait ConsumedEvents: KeyedEvents {
    type Handler: Handler;
    /// The type of the first event it subscribes to, and the topic that carries it.
    const SUBSCRIBED: EventName;
    /// Every topic it subscribes to.
    const SUBSCRIBES: &'static [&'static str];
    const DEAD_LETTER: &'static str;
    /// The column of the aggregate the subscribed event's id goes into.
    const LINK_COLUMN: &'static str;

    /// The service's consumer of those events.
    fn handler(&self) -> Self::Handler;
    /// A [`SUBSCRIBED`](ConsumedEvents::SUBSCRIBED) event of the upstream aggregate `id`, encoded.
    fn upstream_event(id: &str) -> Vec<u8>;
}

/// The service's fixture on a fresh, migrated database.
pub struct EventsTest<F> {
    pub db: TestDatabase,
    pub pool: PgPool,
    pub service: F,
}

impl<F: KeyedEvents> EventsTest<F> {
    pub async fn start() -> EventsTest<F> {
        let db = TestDatabase::create(F::DATABASE).await;
        let pool = PgPool::connect(&db.url)
            .await
            .expect("connect to the test database");
        F::migrator().run(&pool).await.expect("migrations apply");
        let service = F::new(&db.url, pool.clone());
        EventsTest { db, pool, service }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// The aggregate's rows.
    pub async fn rows(&self) -> i64 {
        self.count(&format!("SELECT count(*) FROM {}", F::TABLE))
            .await
    }

    pub async fn finish(self) {
        self.pool.close().await;
        self.db.drop_database().await;
    }
}

pub async fn the_migrations_give_the_platforms_tables_the_shape_its_own_tests_use<
    F: KeyedEvents,
>() {
    let test = EventsTest::<F>::start().await;
    // The relay, purge and idempotency tests run in the platform crate against its schema.
    super::assert_platform_schema(&test.pool).await;
    test.finish().await;
}

pub async fn a_created_aggregate_goes_out_once_on_its_topic_with_the_requests_headers<
    F: KeyedEvents,
>() {
    let test = EventsTest::<F>::start().await;
    let parent = "00-aaaaaaaabbbbbbbbccccccccdddddddd-00f067aa0ba902b7-01";
    let context = MessageContext::from_parts(Some("corr-42"), Some(parent));
    let id = test.service.create("k1", b"fingerprint", &context).await;
    let bus = MemoryBus::default();

    let relay = |bus| relay_batch(&test.pool, bus, 100, PARK_AFTER);
    assert_eq!(relay(&bus).await.unwrap().published, 1);
    assert_eq!(
        relay(&bus).await.unwrap().published,
        0,
        "nothing left to send"
    );
    let sent = bus.published();
    assert_eq!(sent.len(), 1);
    let message = &sent[0];
    assert_eq!(message.topic, F::CREATED.topic);
    assert_eq!(message.key, id);
    let event_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM outbox")
        .fetch_one(&test.pool)
        .await
        .unwrap();
    assert_eq!(message.headers[EVENT_ID], event_id.to_string());
    assert_eq!(message.headers[EVENT_TYPE], F::CREATED.event_type);
    assert_eq!(message.headers[AGGREGATE_ID], id);
    assert_eq!(message.headers[CORRELATION_ID], "corr-42");
    assert!(message.headers[TRACEPARENT].contains("aaaaaaaabbbbbbbbccccccccdddddddd"));
    let unpublished = "SELECT count(*) FROM outbox WHERE published_at IS NULL";
    assert_eq!(test.count(unpublished).await, 0);
    test.finish().await;
}

pub async fn a_recorded_event_goes_out_on_the_aggregate_topic_after_the_creation<
    F: RecordsEvents,
>() {
    let test = EventsTest::<F>::start().await;
    let id = test
        .service
        .create_then_record(&MessageContext::new_root())
        .await;

    let bus = MemoryBus::default();
    let relayed = relay_batch(&test.pool, &bus, 100, PARK_AFTER).await;
    assert_eq!(relayed.unwrap().published, 2);
    let published = bus.published();
    let types: Vec<&str> = published
        .iter()
        .map(|m| m.headers[EVENT_TYPE].as_str())
        .collect();
    assert_eq!(types, [F::CREATED.event_type, F::RECORDED.event_type]);
    let recorded = &published[1];
    assert_eq!(recorded.topic, F::RECORDED.topic);
    assert_eq!(
        recorded.topic,
        F::CREATED.topic,
        "one topic for every event of the aggregate"
    );
    assert_eq!(recorded.key, id);
    test.finish().await;
}

/// A delivery of the first subscribed event type, as the bus hands it over.
pub fn delivery<F: ConsumedEvents>(event_id: uuid::Uuid, payload: Vec<u8>) -> Delivery {
    let headers = BTreeMap::from([
        (EVENT_ID.to_string(), event_id.to_string()),
        (EVENT_TYPE.to_string(), F::SUBSCRIBED.event_type.to_string()),
        (CORRELATION_ID.to_string(), "corr-7".to_string()),
    ]);
    Delivery {
        topic: F::SUBSCRIBED.topic.to_string(),
        key: String::new(),
        payload,
        headers,
        receipt: Receipt::default(),
    }
}

/// The consumer's settings, with retries 1 ms apart.
pub fn consumer_config<F: ConsumedEvents>() -> ConsumerConfig {
    let topics = F::SUBSCRIBES.iter().map(|t| t.to_string()).collect();
    let mut config = ConsumerConfig::new(topics, F::DEAD_LETTER.to_string());
    config.base_backoff = std::time::Duration::from_millis(1);
    config
}

pub async fn an_event_delivered_twice_creates_one_aggregate_carrying_the_upstream_id<
    F: ConsumedEvents,
>() {
    let test = EventsTest::<F>::start().await;
    let handler = test.service.handler();
    let dead = MemoryBus::default();
    let (_stop, mut stopped) = tokio::sync::watch::channel(false);
    let upstream_id = uuid::Uuid::now_v7().to_string();
    let message = delivery::<F>(uuid::Uuid::now_v7(), F::upstream_event(&upstream_id));
    let config = consumer_config::<F>();

    let mut apply =
        async || process(&test.pool, &handler, &dead, &config, &message, &mut stopped).await;
    assert_eq!(apply().await, Outcome::Applied);
    assert_eq!(apply().await, Outcome::Duplicate);

    let carried = format!("SELECT \"{}\" FROM {}", F::LINK_COLUMN, F::TABLE);
    let carried: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(carried))
        .fetch_all(&test.pool)
        .await
        .unwrap();
    assert_eq!(carried, [upstream_id]);
    assert_eq!(test.count("SELECT count(*) FROM inbox").await, 1);
    let correlation: String = sqlx::query_scalar("SELECT headers->>'correlation_id' FROM outbox")
        .fetch_one(&test.pool)
        .await
        .unwrap();
    assert_eq!(correlation, "corr-7", "the chain keeps the correlation id");
    assert!(dead.published().is_empty());
    test.finish().await;
}

pub async fn a_poison_message_is_dead_lettered_and_the_next_one_still_applies<F: ConsumedEvents>() {
    let test = EventsTest::<F>::start().await;
    let handler = test.service.handler();
    let dead = MemoryBus::default();
    let (_stop, mut stopped) = tokio::sync::watch::channel(false);
    let config = consumer_config::<F>();

    let poison = delivery::<F>(uuid::Uuid::now_v7(), vec![0xff, 0xff, 0xff]);
    let outcome = process(&test.pool, &handler, &dead, &config, &poison, &mut stopped).await;
    assert!(
        matches!(outcome, Outcome::DeadLettered { .. }),
        "{outcome:?}"
    );
    let letters = dead.published();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].topic, F::DEAD_LETTER);
    assert_eq!(letters[0].payload, poison.payload);
    let short_name = F::SUBSCRIBED.event_type.rsplit('.').next().unwrap();
    assert!(letters[0].headers[DEAD_LETTER_REASON].contains(short_name));

    let good = delivery::<F>(uuid::Uuid::now_v7(), F::upstream_event("after-the-poison"));
    let outcome = process(&test.pool, &handler, &dead, &config, &good, &mut stopped).await;
    assert_eq!(outcome, Outcome::Applied);
    assert_eq!(test.rows().await, 1);
    test.finish().await;
}

pub async fn an_event_of_the_topic_this_service_does_not_subscribe_to_passes_by<
    F: ConsumedEvents,
>() {
    let test = EventsTest::<F>::start().await;
    let handler = test.service.handler();
    let dead = MemoryBus::default();
    let (_stop, mut stopped) = tokio::sync::watch::channel(false);
    let mut other = delivery::<F>(uuid::Uuid::now_v7(), vec![0xff]);
    let (package, _) = F::SUBSCRIBED.event_type.rsplit_once('.').unwrap();
    let other_type = format!("{package}.SomethingElseHappened");
    other.headers.insert(EVENT_TYPE.to_string(), other_type);
    let config = consumer_config::<F>();
    let outcome = process(&test.pool, &handler, &dead, &config, &other, &mut stopped).await;
    assert_eq!(outcome, Outcome::PassedBy);
    assert_eq!(test.rows().await, 0);
    // Nothing to deduplicate, so no transaction and no inbox row.
    assert_eq!(test.count("SELECT count(*) FROM inbox").await, 0);
    assert!(dead.published().is_empty(), "not dead-lettered");
    test.finish().await;
}

/// The real handler behind an outage of our own database that outlasts `max_attempts`.
struct FlakyDatabase<H> {
    inner: H,
    outages_left: AtomicU32,
}

impl<H: Handler> Handler for FlakyDatabase<H> {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        delivery: &Delivery,
    ) -> Result<(), HandlerError> {
        let left = self.outages_left.load(Ordering::SeqCst);
        if left > 0 {
            self.outages_left.store(left - 1, Ordering::SeqCst);
            return Err(sqlx::Error::PoolTimedOut.into());
        }
        self.inner.handle(conn, delivery).await
    }

    fn handles(&self, event_type: &str) -> bool {
        self.inner.handles(event_type)
    }
}

pub async fn a_database_outage_is_waited_out_not_dead_lettered<F: ConsumedEvents>() {
    let test = EventsTest::<F>::start().await;
    let config = consumer_config::<F>();
    let handler = FlakyDatabase {
        inner: test.service.handler(),
        outages_left: AtomicU32::new(config.max_attempts * 2),
    };
    let dead = MemoryBus::default();
    let (_stop, mut stopped) = tokio::sync::watch::channel(false);
    let message = delivery::<F>(uuid::Uuid::now_v7(), F::upstream_event("during-an-outage"));

    let outcome = process(&test.pool, &handler, &dead, &config, &message, &mut stopped).await;
    assert_eq!(outcome, Outcome::Applied);
    assert!(
        dead.published().is_empty(),
        "nothing dead-lettered for our own outage"
    );
    assert_eq!(test.rows().await, 1);
    test.finish().await;
}

/// The shared event tests, over a service's [`KeyedEvents`] fixture; with `recorded`, also
/// the test of its second event ([`RecordsEvents`]).
#[macro_export]
macro_rules! keyed_events_tests {
    ($fixture:ty) => {
        $crate::keyed_events_tests!(@tests $fixture:
            the_migrations_give_the_platforms_tables_the_shape_its_own_tests_use,
            a_created_aggregate_goes_out_once_on_its_topic_with_the_requests_headers
        );
    };
    ($fixture:ty, recorded) => {
        $crate::keyed_events_tests!($fixture);
        $crate::keyed_events_tests!(@tests $fixture:
            a_recorded_event_goes_out_on_the_aggregate_topic_after_the_creation
        );
    };
    (@tests $fixture:ty: $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                $crate::test_support::keyed_events::$test::<$fixture>().await;
            }
        )+
    };
}

/// The shared consumer tests, over a service's [`ConsumedEvents`] fixture.
#[macro_export]
macro_rules! consumer_tests {
    ($fixture:ty) => {
        $crate::keyed_events_tests!(@tests $fixture:
            an_event_delivered_twice_creates_one_aggregate_carrying_the_upstream_id,
            a_poison_message_is_dead_lettered_and_the_next_one_still_applies,
            an_event_of_the_topic_this_service_does_not_subscribe_to_passes_by,
            a_database_outage_is_waited_out_not_dead_lettered
        );
    };
}
