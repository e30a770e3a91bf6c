//! The outbox page: per service, how many events wait to be published and since when, and
//! the rows parked because the broker refused them for good. Every probe interval the
//! console asks each service (`ListOutbox`, over its link) and pushes the board to the page.
//! An operator signed in with the service's admin scope replays a parked row once the cause
//! is fixed (`ReplayParked`, over the same link, naming the operator: see
//! `platform::parked`).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use tonic::transport::Channel;

use super::admin::Outcome;
use super::link::{self, Listing, Peer, Timestamp};
use super::oidc::Operator;
use super::page::escape;

/// How many parked rows of each service the page lists (newest first).
pub const SHOWN_PER_SERVICE: i32 = 50;
pub const LIST: &str = "ListOutbox";
pub const REPLAY: &str = "ReplayParked";
/// The live snapshot the page's script replaces the board with.
pub const EVENT: &str = "outbox";

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListOutboxRequest {
    #[prost(int32, tag = "1")]
    pub limit: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListOutboxResponse {
    #[prost(int64, tag = "1")]
    pub backlog: i64,
    #[prost(int64, tag = "2")]
    pub oldest_age_ms: i64,
    #[prost(int64, tag = "3")]
    pub parked_count: i64,
    #[prost(message, repeated, tag = "4")]
    pub parked: Vec<ParkedOutboxRow>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ParkedOutboxRow {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub topic: String,
    #[prost(string, tag = "3")]
    pub event_type: String,
    #[prost(string, tag = "4")]
    pub aggregate_id: String,
    #[prost(int64, tag = "5")]
    pub aggregate_version: i64,
    #[prost(int32, tag = "6")]
    pub attempts: i32,
    #[prost(string, tag = "7")]
    pub last_error: String,
    #[prost(message, optional, tag = "8")]
    pub created_at: Option<Timestamp>,
    #[prost(message, optional, tag = "9")]
    pub parked_at: Option<Timestamp>,
    #[prost(int64, tag = "10")]
    pub payload_bytes: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReplayParkedRequest {
    #[prost(string, repeated, tag = "1")]
    pub ids: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReplayParkedResponse {
    #[prost(int64, tag = "1")]
    pub replayed: i64,
}

/// Asks one service for its outbox.
pub async fn fetch(peer: Peer, channel: Channel) -> Result<ListOutboxResponse, String> {
    let request = ListOutboxRequest {
        limit: SHOWN_PER_SERVICE,
    };
    link::call(&peer, channel, LIST, request, None)
        .await
        .map_err(|status| link::failure(&peer, &status))
}

/// An operator's replay of one parked row of `peer`, if they hold its admin scope.
pub async fn replay(peer: &Peer, operator: Option<&Operator>, id: &str) -> Outcome {
    let operator = match super::admin::permitted(operator, peer.node.admin_scope) {
        Ok(operator) => operator,
        Err(refusal) => return refusal,
    };
    if uuid::Uuid::parse_str(id).is_err() {
        return Outcome::new(StatusCode::BAD_REQUEST, "an outbox row's id is a UUID");
    }
    let channel = match link::channel_to(&peer.addr) {
        Ok(channel) => channel,
        Err(e) => return Outcome::new(StatusCode::BAD_GATEWAY, e),
    };
    let request = ReplayParkedRequest {
        ids: vec![id.to_string()],
    };
    // The operator as the gateway names a token's holder (`token:<subject>`), for the
    // service's log line.
    let act = format!("token:{}", operator.subject);
    match link::call::<_, ReplayParkedResponse>(peer, channel, REPLAY, request, Some(&act)).await {
        Ok(answer) if answer.replayed == 1 => Outcome::new(StatusCode::OK, "replayed"),
        Ok(_) => Outcome::new(
            StatusCode::CONFLICT,
            "not parked (any more): replayed already, or never parked",
        ),
        Err(status) => Outcome::new(StatusCode::BAD_GATEWAY, link::failure(peer, &status)),
    }
}

fn clock(at: Option<&Timestamp>) -> String {
    at.map_or(String::new(), |at| {
        format!(
            "{} UTC",
            super::events::clock(u64::try_from(at.millis()).unwrap_or(0))
        )
    })
}

fn render_service(outbox: &ListOutboxResponse) -> String {
    // The age changes at every ask while rows wait, so the page keeps it current.
    let waiting = match outbox.backlog {
        0 => "No event waits to be published.".to_string(),
        n => format!(
            "{n} waiting to be published, the oldest for {:.1} s.",
            outbox.oldest_age_ms as f64 / 1000.0
        ),
    };
    let mut rows = String::new();
    for row in &outbox.parked {
        rows.push_str(&format!(
            "<tr data-testid=\"outbox-parked\" data-id=\"{id}\" data-event-type=\"{event_type}\" data-aggregate-id=\"{aggregate}\"><td>{parked}</td><td title=\"{event_type}\">{short}</td><td><code>{aggregate}</code> v{version}</td><td>{bytes} bytes</td><td>{attempts}</td><td class=\"error\">{error}</td><td class=\"actions\"></td></tr>",
            id = escape(&row.id),
            event_type = escape(&row.event_type),
            short = escape(row.event_type.rsplit('.').next().unwrap_or_default()),
            aggregate = escape(&row.aggregate_id),
            version = row.aggregate_version,
            bytes = row.payload_bytes,
            attempts = row.attempts,
            error = escape(&row.last_error),
            parked = clock(row.parked_at.as_ref()),
        ));
    }
    let parked = if outbox.parked_count == 0 {
        "<p>No row is parked.</p>".to_string()
    } else {
        format!(
            "<p>{count} parked (the broker refused them for good; later events went on without them): the newest {shown}.</p><table><thead><tr><th scope=\"col\">Parked at</th><th scope=\"col\">Event</th><th scope=\"col\">Aggregate</th><th scope=\"col\">Size</th><th scope=\"col\">Attempts</th><th scope=\"col\">Last error</th><th scope=\"col\">Action</th></tr></thead><tbody>{rows}</tbody></table>",
            count = outbox.parked_count,
            shown = outbox.parked.len(),
        )
    };
    format!(
        "<p class=\"waiting-count\">{waiting}</p>{parked}",
        waiting = escape(&waiting)
    )
}

/// The board: a section per service.
pub fn render(board: &BTreeMap<String, Listing<ListOutboxResponse>>) -> String {
    let mut html = String::new();
    for (name, listing) in board {
        let (backlog, parked, body) = match listing {
            Listing::NotAsked => (0, 0, "<p>Not asked yet.</p>".to_string()),
            Listing::Failed(why) => (0, 0, format!("<p class=\"error\">{}</p>", escape(why))),
            Listing::Answered(outbox) => {
                (outbox.backlog, outbox.parked_count, render_service(outbox))
            }
        };
        html.push_str(&format!(
            "<section data-testid=\"outbox-service\" data-name=\"{name}\" data-backlog=\"{backlog}\" data-parked=\"{parked}\"><h2>{name}</h2>{body}</section>",
            name = escape(name)
        ));
    }
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::fixtures::{ORDERS, operator};

    fn row(id: &str, error: &str) -> ParkedOutboxRow {
        ParkedOutboxRow {
            id: id.into(),
            topic: "shop.orders.order.v1".into(),
            event_type: "shop.orders.v1.OrderCreated".into(),
            aggregate_id: "0190c0de-0000-7000-8000-000000000001".into(),
            aggregate_version: 1,
            attempts: 5,
            last_error: error.into(),
            created_at: None,
            parked_at: Some(Timestamp {
                seconds: 1_800_000_000,
                nanos: 5_000_000,
            }),
            payload_bytes: 1_100_000,
        }
    }

    #[test]
    fn each_service_says_its_backlog_and_lists_its_parked_rows_escaped() {
        let mut board = BTreeMap::new();
        board.insert(
            "orders".to_string(),
            Listing::Answered(ListOutboxResponse {
                backlog: 3,
                oldest_age_ms: 2_400,
                parked_count: 1,
                parked: vec![row("r1", "<b>too large</b>")],
            }),
        );
        board.insert(
            "billing".to_string(),
            Listing::Failed("billing: Unavailable".into()),
        );
        let html = render(&board);
        assert!(
            html.contains("data-name=\"orders\" data-backlog=\"3\" data-parked=\"1\""),
            "{html}"
        );
        assert!(
            html.contains("3 waiting to be published, the oldest for 2.4 s"),
            "{html}"
        );
        assert!(
            html.contains("data-testid=\"outbox-parked\" data-id=\"r1\""),
            "{html}"
        );
        assert!(
            html.contains("&lt;b&gt;too large&lt;/b&gt;") && !html.contains("<b>"),
            "{html}"
        );
        assert!(
            html.contains("OrderCreated") && html.contains("1100000 bytes"),
            "{html}"
        );
        assert!(html.contains("billing: Unavailable"), "{html}");
    }

    #[test]
    fn an_empty_outbox_says_so() {
        let mut board = BTreeMap::new();
        board.insert(
            "orders".to_string(),
            Listing::Answered(ListOutboxResponse::default()),
        );
        let html = render(&board);
        assert!(
            html.contains("No event waits") && html.contains("No row is parked"),
            "{html}"
        );
    }

    #[tokio::test]
    async fn a_replay_needs_an_operator_with_the_services_admin_scope() {
        // Nothing listens at 127.0.0.1:9: refusals come before any call.
        let peer = link::test_peer(&ORDERS, "127.0.0.1:9");
        let id = "0190c0de-0000-7000-8000-000000000002";
        let viewer = replay(&peer, None, id).await;
        assert_eq!(viewer.status, StatusCode::FORBIDDEN);
        let reader = operator(&["orders:read"]);
        let refused = replay(&peer, Some(&reader), id).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        let admin = operator(&["orders:admin"]);
        let bad = replay(&peer, Some(&admin), "x").await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        // Permitted, and the service is not there: said so.
        let down = replay(&peer, Some(&admin), id).await;
        assert_eq!(down.status, StatusCode::BAD_GATEWAY, "{down:?}");
    }
}
