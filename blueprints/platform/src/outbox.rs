//! The transactional outbox: an event is written to the `outbox` table in the same
//! transaction as the state change that caused it, so the two commit or fail together.
//! A relay publishes unsent rows to the bus afterwards (at least once).

use std::sync::LazyLock;

use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres};
use uuid::Uuid;

use crate::context::MessageContext;

#[derive(Debug, Clone)]
pub struct OutboxMessage {
    /// Also the message id consumers deduplicate on.
    pub event_id: Uuid,
    /// The topic the relay publishes it to.
    pub topic: String,
    /// Fully qualified protobuf name, e.g. `shop.orders.v1.OrderCreated`.
    pub event_type: String,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    /// The aggregate's version after the change: the relay publishes one aggregate's events
    /// in this order.
    pub aggregate_version: i64,
    /// The event, protobuf-encoded.
    pub payload: Vec<u8>,
    /// Message headers: correlation id, trace context.
    pub headers: serde_json::Value,
}

/// How an aggregate's event becomes its outbox row. The transport adapter implements it
/// (a service's `grpc.rs`: the protobuf event), so the use cases never encode one.
pub trait OutboxEvent {
    fn outbox_message(&self, context: &MessageContext) -> OutboxMessage;
}

/// The aggregate an event is about, at its version after the change.
pub struct Subject<'a> {
    pub aggregate_type: &'a str,
    pub id: Uuid,
    pub version: i64,
}

impl OutboxMessage {
    /// An event about `subject` for `topic`, of `event_type` (its fully qualified protobuf
    /// name) with its encoded `payload`, carrying the request's correlation and trace
    /// context and the aggregate's version as headers.
    pub fn event(
        context: &MessageContext,
        subject: Subject<'_>,
        topic: &str,
        event_type: &str,
        payload: Vec<u8>,
    ) -> OutboxMessage {
        let mut headers = context.headers();
        if let Some(map) = headers.as_object_mut() {
            map.insert(
                crate::bus::AGGREGATE_VERSION.to_string(),
                subject.version.to_string().into(),
            );
        }
        OutboxMessage {
            event_id: Uuid::now_v7(),
            topic: topic.to_string(),
            event_type: event_type.to_string(),
            aggregate_type: subject.aggregate_type.to_string(),
            aggregate_id: subject.id,
            aggregate_version: subject.version,
            payload,
            headers,
        }
    }
}

/// The outbox's columns, in the order [`bind`] binds a message's values.
pub const COLUMNS: &str =
    "id, topic, event_type, aggregate_type, aggregate_id, aggregate_version, payload, headers";

/// Binds `message`'s values, in the order of [`COLUMNS`], after those bound already.
pub fn bind<'q>(
    query: Query<'q, Postgres, PgArguments>,
    message: &'q OutboxMessage,
) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(message.event_id)
        .bind(&message.topic)
        .bind(&message.event_type)
        .bind(&message.aggregate_type)
        .bind(message.aggregate_id)
        .bind(message.aggregate_version)
        .bind(&message.payload)
        .bind(&message.headers)
}

pub async fn enqueue(conn: &mut PgConnection, message: &OutboxMessage) -> Result<(), sqlx::Error> {
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        format!("INSERT INTO outbox ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
    });
    bind(sqlx::query(STATEMENT.as_str()), message)
        .execute(conn)
        .await?;
    Ok(())
}

/// Rows waiting to be published (the outbox backlog) and rows parked because the broker
/// refuses them (see `relay`), in one query.
pub async fn backlog(conn: &mut PgConnection) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE parked_at IS NULL), count(*) FILTER (WHERE parked_at IS NOT NULL) \
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(conn)
    .await
}
