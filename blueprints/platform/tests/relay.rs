//! The outbox relay and the purges against a real PostgreSQL (`DATABASE_URL`, a fresh
//! database per test with the platform's tables), with an in-memory bus standing in for
//! the broker. Each generated service checks that its migrations give these tables the same
//! shape (`test_support::assert_platform_schema`); the generator's end-to-end harness runs
//! the same code against real brokers.

use std::sync::Arc;

use platform::bus::{
    AGGREGATE_ID, AGGREGATE_VERSION, CORRELATION_ID, EVENT_ID, EVENT_TYPE, TRACEPARENT,
};
use platform::context::MessageContext;
use platform::outbox::{OutboxMessage, enqueue};
use platform::relay::{
    CLAIM_AGGREGATES, PARK_AFTER, PURGE_INBOX, PURGE_OUTBOX, Purge, purge, relay_batch,
};
use platform::test_support::{MemoryBus, TestDatabase, platform_database};
use sqlx::PgPool;
use uuid::Uuid;

const TOPIC: &str = "test.items";
const EVENT: &str = "test.items.v1.ItemChanged";

async fn setup() -> (TestDatabase, PgPool) {
    platform_database("platform_relay").await
}

async fn finish(db: TestDatabase, pool: PgPool) {
    pool.close().await;
    db.drop_database().await;
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Writes the event of `aggregate` at `version` to the outbox, as a service's change does.
async fn write_event(pool: &PgPool, aggregate: Uuid, version: i64, context: &MessageContext) {
    let mut headers = context.headers();
    headers[AGGREGATE_VERSION] = version.to_string().into();
    let message = OutboxMessage {
        event_id: Uuid::now_v7(),
        topic: TOPIC.to_string(),
        event_type: EVENT.to_string(),
        aggregate_type: "Item".to_string(),
        aggregate_id: aggregate,
        aggregate_version: version,
        payload: version.to_be_bytes().to_vec(),
        headers,
    };
    let mut conn = pool.acquire().await.unwrap();
    enqueue(&mut conn, &message)
        .await
        .expect("the event is written");
}

/// A new aggregate's first event: its id.
async fn create(pool: &PgPool, context: &MessageContext) -> Uuid {
    let id = Uuid::now_v7();
    write_event(pool, id, 1, context).await;
    id
}

/// A new aggregate changed `changes` times: the events of versions 1 to `changes + 1`.
async fn changed(pool: &PgPool, changes: i64) -> String {
    let context = MessageContext::new_root();
    let id = create(pool, &context).await;
    for version in 2..=changes + 1 {
        write_event(pool, id, version, &context).await;
    }
    id.to_string()
}

/// The versions of one aggregate's messages, in the order they were published.
fn versions_of(bus: &MemoryBus, id: &str) -> Vec<i64> {
    bus.published()
        .iter()
        .filter(|m| m.headers[AGGREGATE_ID] == id)
        .map(|m| m.headers[AGGREGATE_VERSION].parse().unwrap())
        .collect()
}

#[tokio::test]
async fn a_failed_event_holds_back_the_later_events_of_its_aggregate_only() {
    let (db, pool) = setup().await;
    let id = changed(&pool, 3).await;
    let other = changed(&pool, 1).await;
    let second: String = sqlx::query_scalar(
        "SELECT id::text FROM outbox WHERE aggregate_id = $1::uuid AND aggregate_version = 2",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let bus = MemoryBus::default();
    bus.refuse_event(Some(second));
    let relayed = relay_batch(&pool, &bus, 100, PARK_AFTER).await.unwrap();
    assert_eq!(
        (relayed.published, relayed.refused, relayed.parked),
        (3, 1, 0)
    );
    assert_eq!(versions_of(&bus, &id), [1], "versions 3 and 4 wait for 2");
    assert_eq!(
        versions_of(&bus, &other),
        [1, 2],
        "another aggregate is not held back"
    );
    bus.refuse_event(None);
    assert_eq!(
        relay_batch(&pool, &bus, 100, PARK_AFTER)
            .await
            .unwrap()
            .published,
        3
    );
    assert_eq!(versions_of(&bus, &id), [1, 2, 3, 4]);
    finish(db, pool).await;
}

#[tokio::test]
async fn a_row_the_broker_refuses_for_good_is_parked_and_the_rest_flows() {
    let (db, pool) = setup().await;
    let id = changed(&pool, 1).await;
    let poison: String = sqlx::query_scalar(
        "SELECT id::text FROM outbox WHERE aggregate_id = $1::uuid AND aggregate_version = 1",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let bus = MemoryBus::default();
    bus.refuse_event(Some(poison.clone()));
    // Refusals before the last one: the row stays, its aggregate waits, nothing is parked.
    for _ in 1..PARK_AFTER {
        let relayed = relay_batch(&pool, &bus, 100, PARK_AFTER).await.unwrap();
        assert_eq!((relayed.refused, relayed.parked), (1, 0), "{relayed:?}");
        assert!(relayed.unavailable.is_none(), "a refusal is not an outage");
    }
    assert!(
        versions_of(&bus, &id).is_empty(),
        "version 2 waits while 1 may still go"
    );
    let relayed = relay_batch(&pool, &bus, 100, PARK_AFTER).await.unwrap();
    assert_eq!(
        (relayed.refused, relayed.parked),
        (1, 1),
        "parked at refusal {PARK_AFTER}"
    );
    let (attempts, parked): (i32, bool) =
        sqlx::query_as("SELECT attempts, parked_at IS NOT NULL FROM outbox WHERE id = $1::uuid")
            .bind(&poison)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((attempts, parked), (PARK_AFTER as i32, true));
    // The aggregate's later event and new events go out; the parked row never again.
    let other = changed(&pool, 0).await;
    let relayed = relay_batch(&pool, &bus, 100, PARK_AFTER).await.unwrap();
    assert_eq!((relayed.published, relayed.refused), (2, 0), "{relayed:?}");
    assert_eq!(versions_of(&bus, &id), [2]);
    assert_eq!(versions_of(&bus, &other), [1]);
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        platform::outbox::backlog(&mut conn).await.unwrap(),
        (0, 1),
        "(waiting, parked)"
    );
    drop(conn);
    finish(db, pool).await;
}

#[tokio::test]
async fn an_outage_never_parks_a_row() {
    let (db, pool) = setup().await;
    let id = changed(&pool, 0).await;
    let bus = MemoryBus::default();
    bus.set_down(true);
    for _ in 0..PARK_AFTER * 2 {
        let relayed = relay_batch(&pool, &bus, 100, PARK_AFTER).await.unwrap();
        assert!(
            relayed.unavailable.is_some() && relayed.parked == 0,
            "{relayed:?}"
        );
    }
    bus.set_down(false);
    assert_eq!(
        relay_batch(&pool, &bus, 100, PARK_AFTER)
            .await
            .unwrap()
            .published,
        1
    );
    assert_eq!(versions_of(&bus, &id), [1]);
    finish(db, pool).await;
}

#[tokio::test]
async fn the_relay_does_not_back_off_for_a_refused_row() {
    let (db, pool) = setup().await;
    let poisoned = changed(&pool, 0).await;
    let poison: String =
        sqlx::query_scalar("SELECT id::text FROM outbox WHERE aggregate_id = $1::uuid")
            .bind(&poisoned)
            .fetch_one(&pool)
            .await
            .unwrap();
    let bus = Arc::new(MemoryBus::default());
    bus.refuse_event(Some(poison));
    let written = Arc::new(tokio::sync::Notify::new());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(platform::relay::run(
        pool.clone(),
        bus.clone(),
        written.clone(),
        platform::relay::RelayConfig::new(vec![TOPIC.to_string()]),
        stopped,
    ));
    // New events keep coming while the refused row waits: each leaves on its wake-up, not
    // after a backoff (which grows to 5 s: most of 20 waits would pass 1 s).
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(changed(&pool, 0).await);
        written.notify_one();
        let sent = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            while !versions_of(&bus, ids.last().unwrap()).contains(&1) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(sent.is_ok(), "event {} waited for a backoff", ids.len());
    }
    stop.send(true).unwrap();
    relay.await.unwrap();
    finish(db, pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_an_aggregates_events_once_each_in_version_order() {
    let (db, pool) = setup().await;
    let id = changed(&pool, 40).await;
    // With a broker round trip, the two relays' batches overlap in time.
    let bus = Arc::new(MemoryBus::with_latency(std::time::Duration::from_millis(3)));
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let (pool, bus) = (pool.clone(), bus.clone());
            tokio::spawn(async move {
                // Small batches, so the two relays take turns many times.
                for _ in 0..500 {
                    relay_batch(&pool, &*bus, 3, PARK_AFTER).await.unwrap();
                    if bus.published().len() >= 41 {
                        break;
                    }
                }
            })
        })
        .collect();
    for relay in relays {
        relay.await.unwrap();
    }
    assert_eq!(versions_of(&bus, &id), (1..=41).collect::<Vec<i64>>());
    finish(db, pool).await;
}

#[tokio::test]
async fn shutdown_lets_the_batch_in_flight_finish_so_nothing_is_sent_twice() {
    let (db, pool) = setup().await;
    let id = changed(&pool, 5).await;
    let bus = Arc::new(MemoryBus::with_latency(std::time::Duration::from_millis(
        300,
    )));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(platform::relay::run(
        pool.clone(),
        bus.clone(),
        Arc::new(tokio::sync::Notify::new()),
        platform::relay::RelayConfig::new(vec![TOPIC.to_string()]),
        stopped,
    ));
    // Stop while the batch of 6 is being published, one after another.
    for _ in 0..200 {
        if !bus.published().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    relay.await.unwrap();
    // Whatever reached the bus is marked sent: the next relay will not send it again.
    let published = versions_of(&bus, &id).len() as i64;
    assert!(published > 0);
    let marked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE aggregate_id = $1::uuid AND published_at IS NOT NULL",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(marked, published, "published {published}, marked {marked}");
    finish(db, pool).await;
}

#[tokio::test]
async fn the_relay_publishes_each_outbox_row_once_with_its_headers() {
    let (db, pool) = setup().await;
    let parent = "00-aaaaaaaabbbbbbbbccccccccdddddddd-00f067aa0ba902b7-01";
    let context = MessageContext::from_parts(Some("corr-42"), Some(parent));
    let created = create(&pool, &context).await;
    let bus = MemoryBus::default();

    assert_eq!(
        relay_batch(&pool, &bus, 100, PARK_AFTER)
            .await
            .unwrap()
            .published,
        1
    );
    assert_eq!(
        relay_batch(&pool, &bus, 100, PARK_AFTER)
            .await
            .unwrap()
            .published,
        0,
        "nothing left to send"
    );
    let sent = bus.published();
    assert_eq!(sent.len(), 1);
    let message = &sent[0];
    assert_eq!(message.topic, TOPIC);
    assert_eq!(message.key, created.to_string());
    let event_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(message.headers[EVENT_ID], event_id.to_string());
    assert_eq!(message.headers[EVENT_TYPE], EVENT);
    assert_eq!(message.headers[AGGREGATE_ID], created.to_string());
    assert_eq!(message.headers[CORRELATION_ID], "corr-42");
    assert!(message.headers[TRACEPARENT].contains("aaaaaaaabbbbbbbbccccccccdddddddd"));
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
        .await,
        0
    );
    finish(db, pool).await;
}

#[tokio::test]
async fn only_a_full_batch_makes_the_relay_look_again_at_once() {
    let (db, pool) = setup().await;
    let context = MessageContext::new_root();
    for _ in 0..3 {
        create(&pool, &context).await;
    }
    let bus = MemoryBus::default();
    let first = relay_batch(&pool, &bus, 2, PARK_AFTER).await.unwrap();
    assert_eq!(
        (first.published, first.full),
        (2, true),
        "more may wait after a full batch"
    );
    let second = relay_batch(&pool, &bus, 2, PARK_AFTER).await.unwrap();
    assert_eq!(
        (second.published, second.full),
        (1, false),
        "a partial batch took what there was"
    );
    finish(db, pool).await;
}

#[tokio::test]
async fn with_the_broker_down_rows_wait_and_go_out_once_it_is_back() {
    let (db, pool) = setup().await;
    let bus = MemoryBus::default();
    bus.set_down(true);
    for _ in 0..3 {
        create(&pool, &MessageContext::new_root()).await;
    }
    let relayed = relay_batch(&pool, &bus, 100, PARK_AFTER).await.unwrap();
    assert!(
        relayed.unavailable.is_some() && relayed.published == 0,
        "{relayed:?}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox WHERE published_at IS NULL AND attempts = 1 AND last_error IS NOT NULL").await, 3);
    assert!(bus.published().is_empty());

    bus.set_down(false);
    assert_eq!(
        relay_batch(&pool, &bus, 100, PARK_AFTER)
            .await
            .unwrap()
            .published,
        3
    );
    assert_eq!(bus.published().len(), 3, "each row exactly once");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
        .await,
        0
    );
    finish(db, pool).await;
}
#[tokio::test]
async fn purge_deletes_only_old_published_outbox_rows_and_old_inbox_rows() {
    let (db, pool) = setup().await;
    for _ in ["old", "recent", "unsent"] {
        create(&pool, &MessageContext::new_root()).await;
    }
    let bus = MemoryBus::default();
    relay_batch(&pool, &bus, 2, PARK_AFTER).await.unwrap();
    sqlx::query("UPDATE outbox SET published_at = now() - interval '8 days' WHERE published_at IS NOT NULL AND id = (SELECT id FROM outbox ORDER BY id LIMIT 1)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO inbox (event_id, topic, event_type, received_at) VALUES ($1, 't', 'e', now() - interval '8 days'), ($2, 't', 'e', now())")
        .bind(uuid::Uuid::now_v7())
        .bind(uuid::Uuid::now_v7())
        .execute(&pool)
        .await
        .unwrap();

    // One row per statement: the batches add up to the same rows.
    let deleted = purge(
        &pool,
        Purge {
            batch: 1,
            ..Purge::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        deleted, 2,
        "one old published outbox row and one old inbox row"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM outbox").await,
        2,
        "recent and unsent rows stay"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
        .await,
        1
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM inbox").await, 1);
    finish(db, pool).await;
}
/// A pool whose statements the server cancels after `timeout`, as the service's own pool.
async fn pool_with_timeout(url: &str, timeout: std::time::Duration) -> PgPool {
    platform::db::connect(&platform::db::DbConfig {
        url: url.to_string(),
        max_connections: 2,
        connect_attempts: 1,
        statement_timeout: timeout,
    })
    .await
    .expect("connect")
}

/// `sql` run under `EXPLAIN ANALYZE`, which returns its plan with the rows each node read.
fn explain(sql: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}"))
}

/// The rows a plan read from `table`, summed over the nodes that scan it.
fn rows_read(plan: &serde_json::Value, table: &str) -> i64 {
    fn walk(node: &serde_json::Value, table: &str) -> i64 {
        let own = if node["Relation Name"] == table {
            node["Actual Rows"].as_i64().unwrap_or(0)
        } else {
            0
        };
        own + node["Plans"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| walk(n, table))
            .sum::<i64>()
    }
    walk(&plan[0]["Plan"], table)
}

/// Review item 5.1. 200,000 old published outbox rows and 200,000 old inbox rows are purged
/// under a 100 ms statement timeout (one unbatched DELETE of them took 165 to 200 ms on a
/// quiet machine); then a backlog of 100,000 unsent rows drains under the service's 5 s, each
/// claim reading the same thousand rows of the outbox, not the backlog.
#[tokio::test]
#[ignore = "400,000 rows, about 10 s: run with `cargo test -- --ignored` (CI runs it)"]
async fn the_purge_and_the_relay_stay_under_the_statement_timeout_at_volume() {
    let (db, pool) = setup().await;
    for sql in [
        "INSERT INTO outbox (id, event_type, aggregate_type, aggregate_id, payload, created_at, published_at) \
         SELECT gen_random_uuid(), 'e', 'a', gen_random_uuid(), '\\x00', now() - interval '30 days', now() - interval '30 days' \
         FROM generate_series(1, 200000)",
        "INSERT INTO inbox (event_id, topic, event_type, received_at) \
         SELECT gen_random_uuid(), 't', 'e', now() - interval '30 days' FROM generate_series(1, 200000)",
        // The backlog: 10,000 aggregates of 10 versions each, in the order they were written.
        "INSERT INTO outbox (id, event_type, aggregate_type, aggregate_id, aggregate_version, payload, topic, created_at) \
         SELECT gen_random_uuid(), 'e', 'a', aggregate, version, '\\x00', 't', \
                now() - interval '1 hour' + make_interval(secs => version * 10000 + n) \
         FROM generate_series(1, 10000) AS n, LATERAL (SELECT md5(n::text)::uuid AS aggregate) AS a, \
              generate_series(1, 10) AS version",
        "ANALYZE outbox",
        "ANALYZE inbox",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }

    // Each purge statement reads its batch along an index, not the table (rolled back).
    let retention = Purge::default().retention.as_secs_f64();
    let mut tx = pool.begin().await.unwrap();
    for (sql, table) in [(PURGE_OUTBOX, "outbox"), (PURGE_INBOX, "inbox")] {
        let plan = sqlx::query_scalar(explain(sql))
            .bind(retention)
            .bind(1000_i64)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let read = rows_read(&plan, table);
        assert!(
            read <= 2000,
            "a purge batch of 1,000 read {read} {table} rows of 200,000"
        );
    }
    tx.rollback().await.unwrap();

    let tight = pool_with_timeout(&db.url, std::time::Duration::from_millis(100)).await;
    let mut deleted = 0;
    for _ in 0..20 {
        let batch = purge(&tight, Purge::default())
            .await
            .expect("no statement passes the timeout");
        deleted += batch;
        if batch == 0 {
            break;
        }
    }
    assert_eq!(deleted, 400_000);
    assert_eq!(count(&pool, "SELECT count(*) FROM inbox").await, 0);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM outbox").await,
        100_000,
        "the backlog stays"
    );
    tight.close().await;

    let service = pool_with_timeout(&db.url, std::time::Duration::from_secs(5)).await;
    let plan = sqlx::query_scalar(explain(CLAIM_AGGREGATES))
        .bind(100_i64)
        .bind(0_i32)
        .bind(1000_i64)
        .fetch_one(&service)
        .await
        .unwrap();
    let read = rows_read(&plan, "outbox");
    assert!(
        read <= 1000,
        "a claim read {read} outbox rows of a 100,000-row backlog"
    );
    let bus = MemoryBus::default();
    for _ in 0..2000 {
        if relay_batch(&service, &bus, 100, PARK_AFTER)
            .await
            .expect("no statement passes the timeout")
            .published
            == 0
        {
            break;
        }
    }
    assert_eq!(bus.published().len(), 100_000);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
        .await,
        0
    );
    service.close().await;
    finish(db, pool).await;
}

#[tokio::test]
async fn expired_idempotency_keys_are_purged_in_batches_and_recent_ones_stay() {
    let (db, pool) = setup().await;
    for (i, age_hours) in [48, 30, 25, 25, 25, 1, 0].into_iter().enumerate() {
        sqlx::query(
            "INSERT INTO idempotency_keys (operation, scope, key, request_sha256, response, created_at) \
             VALUES ('Test', 'user:alice', $1, '\\x00', NULL, now() - make_interval(hours => $2))",
        )
        .bind(format!("k{i}"))
        .bind(age_hours)
        .execute(&pool)
        .await
        .unwrap();
    }
    let retention = platform::idempotency::Retention {
        keep: std::time::Duration::from_secs(24 * 3600),
        batch: 2,
        every: std::time::Duration::from_secs(600),
    };
    assert_eq!(
        platform::idempotency::purge(&pool, retention)
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM idempotency_keys").await,
        2
    );
    assert_eq!(
        platform::idempotency::purge(&pool, retention)
            .await
            .unwrap(),
        0
    );
    finish(db, pool).await;
}
