//! The consumer loop against a real PostgreSQL (`DATABASE_URL`, a fresh database per test
//! with the platform's tables) and a scripted bus. What a service's own handler does with
//! its events is tested in the service (`test_support::keyed_events`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use platform::bus::{
    AGGREGATE_ID, AGGREGATE_VERSION, BusError, Delivery, EVENT_ID, EVENT_TYPE, Receipt, Subscriber,
};
use platform::consumer::{ConsumerConfig, Handler, HandlerError};
use platform::test_support::{MemoryBus, platform_database};
use sqlx::PgConnection;
use uuid::Uuid;

/// The bus: delivers what it was given, in order, then nothing more.
struct Scripted(VecDeque<Delivery>);

impl Subscriber for Scripted {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        match self.0.pop_front() {
            Some(delivery) => Ok(delivery),
            None => std::future::pending().await,
        }
    }
    async fn ack(&mut self, _: &Delivery) -> Result<(), BusError> {
        Ok(())
    }
}

fn version(delivery: &Delivery) -> i64 {
    delivery.headers[AGGREGATE_VERSION].parse().unwrap()
}

/// Records every attempt; version 2 fails twice before it applies.
#[derive(Default)]
struct Recorder {
    attempts: Mutex<Vec<String>>,
    failures: AtomicU32,
}

impl Handler for Recorder {
    async fn handle(&self, _: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        let version = version(delivery);
        if version == 2 && self.failures.fetch_add(1, Ordering::SeqCst) < 2 {
            self.attempts
                .lock()
                .unwrap()
                .push(format!("{version} failed"));
            return Err(HandlerError::Transient("not yet".into()));
        }
        self.attempts.lock().unwrap().push(format!("{version}"));
        Ok(())
    }
}

/// The consumer takes an aggregate's events in the order the bus delivers them (its
/// version order: one partition, or one message group, per aggregate) and one at a time: an
/// event that fails is retried before the next is taken, so no later version overtakes it.
#[tokio::test]
async fn the_consumer_applies_an_aggregates_events_in_version_order_a_retried_one_holding_back_the_next()
 {
    let (db, pool) = platform_database("platform_consumer").await;
    let aggregate = Uuid::now_v7().to_string();
    let events: VecDeque<Delivery> = (1..=5)
        .map(|version| Delivery {
            topic: "test.items".to_string(),
            key: aggregate.clone(),
            payload: vec![version],
            headers: BTreeMap::from([
                (EVENT_ID.to_string(), Uuid::now_v7().to_string()),
                (
                    EVENT_TYPE.to_string(),
                    "test.items.v1.ItemChanged".to_string(),
                ),
                (AGGREGATE_ID.to_string(), aggregate.clone()),
                (AGGREGATE_VERSION.to_string(), version.to_string()),
            ]),
            receipt: Receipt::default(),
        })
        .collect();
    let recorder = Arc::new(Recorder::default());
    let mut config = ConsumerConfig::new(vec!["test.items".into()], "test.dead".into());
    config.base_backoff = Duration::from_millis(1);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let consumer = tokio::spawn(platform::consumer::run(
        Scripted(events),
        pool.clone(),
        recorder.clone(),
        Arc::new(MemoryBus::default()),
        config,
        stopped,
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorder.attempts.lock().unwrap().len() < 7 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    consumer.await.unwrap();
    assert_eq!(
        *recorder.attempts.lock().unwrap(),
        ["1", "2 failed", "2 failed", "2", "3", "4", "5"],
        "in version order, version 3 only after version 2 applied"
    );
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(inbox, 5);
    pool.close().await;
    db.drop_database().await;
}
