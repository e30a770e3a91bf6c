//! The events page's feed: the console consumes the bus like any subscriber (its own
//! consumer group on Kafka, its own queue on SQS), and turns each message into a row from
//! its headers: type, topic, aggregate id and version, event id, the trace it belongs to,
//! and when the console received it. A version that skips ahead of the last one seen for
//! its aggregate is a `gap`, one at or below it a `repeat`: the page highlights both.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::live::Live;
use crate::bus::{
    AGGREGATE_ID, AGGREGATE_VERSION, Delivery, EVENT_ID, EVENT_TYPE, Subscriber, TRACEPARENT,
};

/// Aggregates whose last version is remembered for the gap check (the oldest is forgotten).
pub const TRACKED_AGGREGATES: usize = 10_000;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub topic: String,
    pub aggregate_id: String,
    pub version: Option<i64>,
    /// The W3C trace id, when the message carries a `traceparent`.
    pub trace_id: Option<String>,
    /// Milliseconds since the Unix epoch, when the console received it.
    pub received_ms: u64,
    /// `gap`, `repeat`, or None.
    pub anomaly: Option<String>,
}

/// The last version seen per aggregate, for [`Versions::check`].
#[derive(Default)]
pub struct Versions {
    last: HashMap<String, i64>,
    order: VecDeque<String>,
}

impl Versions {
    /// What `version` is after the versions seen before of `aggregate_id`, and remembers it.
    pub fn check(&mut self, aggregate_id: &str, version: i64) -> Option<&'static str> {
        let anomaly = match self.last.get(aggregate_id) {
            Some(&last) if version <= last => Some("repeat"),
            Some(&last) if version > last + 1 => Some("gap"),
            // The first one seen: the console may have started after the others.
            _ => None,
        };
        let last = self
            .last
            .entry(aggregate_id.to_string())
            .or_insert_with(|| {
                self.order.push_back(aggregate_id.to_string());
                version
            });
        *last = (*last).max(version);
        if self.order.len() > TRACKED_AGGREGATES
            && let Some(oldest) = self.order.pop_front()
        {
            self.last.remove(&oldest);
        }
        anomaly
    }
}

pub fn row(delivery: &Delivery, versions: &mut Versions) -> Row {
    let header = |name: &str| delivery.headers.get(name).cloned().unwrap_or_default();
    let aggregate_id = header(AGGREGATE_ID);
    let version = delivery
        .headers
        .get(AGGREGATE_VERSION)
        .and_then(|v| v.parse::<i64>().ok());
    let anomaly = version
        .and_then(|v| versions.check(&aggregate_id, v))
        .map(str::to_string);
    Row {
        event_id: header(EVENT_ID),
        event_type: header(EVENT_TYPE),
        topic: delivery.topic.clone(),
        aggregate_id,
        version,
        // Only a valid traceparent's: the id goes into a link to /traces/<id>.
        trace_id: delivery
            .headers
            .get(TRACEPARENT)
            .and_then(|tp| crate::context::trace_id(tp))
            .map(str::to_string),
        received_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        anomaly,
    }
}

/// Consumes until `stop`: each message becomes an `event` row of the live stream, then is
/// acknowledged. Receive errors back off (bounded) and are retried.
pub async fn run<S: Subscriber>(mut subscriber: S, live: Live, mut stop: watch::Receiver<bool>) {
    let mut versions = Versions::default();
    while let Some(delivery) = crate::bus::next_retrying(
        &mut subscriber,
        &mut stop,
        crate::adapter::STOP_GRACE,
        (BACKOFF_BASE, BACKOFF_MAX),
        "the console",
    )
    .await
    {
        let row = row(&delivery, &mut versions);
        live.row(
            "event",
            serde_json::to_string(&row).expect("a row serializes"),
        );
        if let Err(e) = subscriber.ack(&delivery).await {
            tracing::warn!(error = %e, "cannot acknowledge an event the console showed");
        }
    }
}

/// `HH:MM:SS.mmm` (UTC) of a time in milliseconds since the Unix epoch.
pub fn clock(ms: u64) -> String {
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

/// One row of the events table; the page's script builds the same from a live row.
pub fn row_html(row: &Row, live_id: &str) -> String {
    use super::page::escape;
    let version = row.version.map_or(String::new(), |v| v.to_string());
    let anomaly = row.anomaly.as_deref().unwrap_or("");
    let short_type = row.event_type.rsplit('.').next().unwrap_or_default();
    format!(
        "<tr data-testid=\"event\" data-live-id=\"{live_id}\" data-event-id=\"{id}\" data-type=\"{ty}\" data-topic=\"{topic}\" data-aggregate-id=\"{agg}\" data-version=\"{version}\" data-trace-id=\"{trace}\" data-anomaly=\"{anomaly}\"><td>{time}</td><td title=\"{ty}\">{short}</td><td>{topic}</td><td><code>{agg}</code></td><td>{version}{note}</td><td>{trace_link}</td></tr>",
        live_id = escape(live_id),
        id = escape(&row.event_id),
        ty = escape(&row.event_type),
        short = escape(short_type),
        topic = escape(&row.topic),
        agg = escape(&row.aggregate_id),
        trace = escape(row.trace_id.as_deref().unwrap_or("")),
        time = clock(row.received_ms),
        trace_link = row.trace_id.as_deref().map_or(String::new(), |t| format!(
            "<a data-testid=\"event-trace\" href=\"/traces/{t}\">trace</a>",
            t = escape(t)
        )),
        note = if anomaly.is_empty() {
            String::new()
        } else {
            format!(" <strong class=\"anomaly\">{anomaly}</strong>")
        },
    )
}

/// The events page's table, newest first, from the rows the live log keeps (`(id, data)`).
/// `data-after` is the newest one's id: the page's stream starts after it.
pub fn table(rows: &[(String, String)]) -> String {
    let body: String = rows
        .iter()
        .rev()
        .filter_map(|(id, data)| Some((id, serde_json::from_str::<Row>(data).ok()?)))
        .map(|(id, r)| row_html(&r, id))
        .collect();
    let after = super::page::escape(rows.last().map_or("", |(id, _)| id.as_str()));
    format!(
        "<table class=\"events\"><caption>Every event on the bus, newest first; a gap or repeat in an aggregate's versions is marked</caption><thead><tr><th scope=\"col\">Received (UTC)</th><th scope=\"col\">Type</th><th scope=\"col\">Topic</th><th scope=\"col\">Aggregate</th><th scope=\"col\">Version</th><th scope=\"col\">Trace</th></tr></thead><tbody data-testid=\"events\" data-after=\"{after}\">{body}</tbody></table>"
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::bus::Receipt;

    fn delivery(id: &str, version: i64) -> Delivery {
        let headers: BTreeMap<String, String> = [
            (EVENT_ID, format!("e-{id}-{version}")),
            (EVENT_TYPE, "shop.orders.v1.OrderCreated".to_string()),
            (AGGREGATE_ID, id.to_string()),
            (AGGREGATE_VERSION, version.to_string()),
            (
                TRACEPARENT,
                format!("00-{}-{}-01", "ab".repeat(16), "cd".repeat(8)),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Delivery {
            topic: "shop.orders.order.v1".into(),
            key: id.into(),
            payload: Vec::new(),
            headers,
            receipt: Receipt::default(),
        }
    }

    #[test]
    fn a_row_is_read_from_the_headers_and_a_gap_or_repeat_is_named() {
        let mut versions = Versions::default();
        let first = row(&delivery("a", 1), &mut versions);
        assert_eq!(first.event_id, "e-a-1");
        assert_eq!(first.aggregate_id, "a");
        assert_eq!(first.version, Some(1));
        assert_eq!(first.trace_id, Some("ab".repeat(16)));
        assert_eq!(first.anomaly, None);
        let mut anomaly = |id, v| row(&delivery(id, v), &mut versions).anomaly;
        assert_eq!(anomaly("a", 2), None);
        assert_eq!(anomaly("a", 2).as_deref(), Some("repeat"));
        assert_eq!(anomaly("a", 4).as_deref(), Some("gap"));
        assert_eq!(anomaly("a", 5), None);
        // Another aggregate, first seen at 7: the console may have started late.
        assert_eq!(anomaly("b", 7), None);
    }

    #[test]
    fn a_malformed_traceparent_gives_no_trace_id() {
        let mut versions = Versions::default();
        for traceparent in [
            "00-../../admin-cdcdcdcdcdcdcdcd-01",
            "garbage",
            "00-00000000000000000000000000000000-cdcdcdcdcdcdcdcd-01",
        ] {
            let mut message = delivery("a", 1);
            message
                .headers
                .insert(TRACEPARENT.to_string(), traceparent.to_string());
            assert_eq!(row(&message, &mut versions).trace_id, None, "{traceparent}");
        }
    }

    #[test]
    fn the_table_lists_the_logged_rows_newest_first_with_their_hooks() {
        let mut versions = Versions::default();
        let rows: Vec<(String, String)> = [1, 2]
            .iter()
            .map(|&v| {
                let r = row(&delivery("a", v), &mut versions);
                (format!("boot-{v}"), serde_json::to_string(&r).unwrap())
            })
            .collect();
        let html = table(&rows);
        let second = html.find("data-version=\"2\"").unwrap();
        let first = html.find("data-version=\"1\"").unwrap();
        assert!(second < first, "newest first: {html}");
        assert!(html.contains("data-after=\"boot-2\""), "{html}");
        assert!(html.contains("data-testid=\"event\" data-live-id=\"boot-1\" data-event-id=\"e-a-1\" data-type=\"shop.orders.v1.OrderCreated\" data-topic=\"shop.orders.order.v1\" data-aggregate-id=\"a\""), "{html}");
        assert_eq!(clock(3_723_004), "01:02:03.004");
    }

    #[test]
    fn the_versions_remembered_are_bounded() {
        let mut versions = Versions::default();
        for i in 0..TRACKED_AGGREGATES + 5 {
            versions.check(&i.to_string(), 1);
        }
        assert_eq!(versions.last.len(), TRACKED_AGGREGATES);
        // The oldest was forgotten: its next version is a first sighting again.
        assert_eq!(versions.check("0", 3), None);
        assert_eq!(
            versions.check(&(TRACKED_AGGREGATES + 4).to_string(), 3),
            Some("gap")
        );
    }
}
