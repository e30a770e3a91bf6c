//! The sagas page: each owner's newest instances with their state, reason and a timeline of
//! steps. Every probe interval the console asks each saga owner for its newest instances
//! (`ListRecentSagas`, over the console's own link, which the owner admits for that RPC
//! only: see `service_auth`) and pushes the board to the page.
//!
//! The console speaks the RPC with messages of its own whose field numbers are the
//! contract's (`ListSagasResponse`, `Saga`, `SagaStep` in every owner's proto; see `link`).

use std::collections::BTreeMap;

use tonic::transport::Channel;

use super::link::{self, Listing, Peer, Timestamp};
use super::page::escape;
use crate::context::trace_id;
use crate::saga::State;

/// How many instances of each owner the page shows (newest first).
pub const SHOWN_PER_OWNER: i32 = 50;
/// The RPC the page asks each owner with.
pub const LIST_RECENT: &str = "ListRecentSagas";
/// The live snapshot the page's script replaces the board with.
pub const EVENT: &str = "sagas";

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListRecentSagasRequest {
    #[prost(int32, tag = "1")]
    pub limit: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListSagasResponse {
    #[prost(message, repeated, tag = "1")]
    pub sagas: Vec<Saga>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Saga {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub saga: String,
    #[prost(string, tag = "3")]
    pub state: String,
    #[prost(message, repeated, tag = "4")]
    pub steps: Vec<SagaStep>,
    #[prost(string, tag = "5")]
    pub reason: String,
    #[prost(int32, tag = "6")]
    pub attempts: i32,
    #[prost(string, tag = "7")]
    pub last_error: String,
    #[prost(message, optional, tag = "8")]
    pub created_at: Option<Timestamp>,
    #[prost(message, optional, tag = "9")]
    pub updated_at: Option<Timestamp>,
    /// The trace of the event that started it (W3C traceparent).
    #[prost(string, tag = "10")]
    pub traceparent: String,
    /// The owner's aggregate it is about (`<aggregate>_id` in the owner's proto).
    #[prost(string, tag = "11")]
    pub subject_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SagaStep {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub status: String,
    #[prost(string, tag = "3")]
    pub result: String,
    #[prost(string, tag = "4")]
    pub error: String,
    /// When the step was first tried, and when it was done or refused; when it was undone.
    #[prost(message, optional, tag = "5")]
    pub started_at: Option<Timestamp>,
    #[prost(message, optional, tag = "6")]
    pub finished_at: Option<Timestamp>,
    #[prost(message, optional, tag = "7")]
    pub compensated_at: Option<Timestamp>,
}

/// What the page shows of one owner.
pub type Sagas = Vec<Saga>;

/// Asks one owner for its newest instances.
pub async fn fetch(owner: Peer, channel: Channel) -> Result<Sagas, String> {
    let request = ListRecentSagasRequest {
        limit: SHOWN_PER_OWNER,
    };
    link::call::<_, ListSagasResponse>(&owner, channel, LIST_RECENT, request, None)
        .await
        .map(|response| response.sagas)
        .map_err(|status| link::failure(&owner, &status))
}

fn duration(from: Option<&Timestamp>, to: Option<&Timestamp>) -> String {
    match (from, to) {
        (Some(from), Some(to)) => format!("{} ms", (to.millis() - from.millis()).max(0)),
        _ => String::new(),
    }
}

/// One instance: its state, reason and the timeline of its steps, forward in the spec's
/// order, then each compensation in the order it ran (the reverse).
pub fn render_saga(owner: &str, saga: &Saga) -> String {
    let mut timeline = String::new();
    for step in &saga.steps {
        timeline.push_str(&format!(
            "<li data-testid=\"saga-step\" data-direction=\"forward\" data-status=\"{status}\"><span class=\"step-name\">{name}</span> <span class=\"status {status}\">{status}</span> <span class=\"took\">{took}</span>{error}</li>",
            status = escape(&step.status),
            name = escape(&step.name),
            took = duration(step.started_at.as_ref(), step.finished_at.as_ref()),
            error = if step.error.is_empty() {
                String::new()
            } else {
                format!(" <span class=\"error\">{}</span>", escape(&step.error))
            },
        ));
    }
    let mut undone: Vec<&SagaStep> = saga
        .steps
        .iter()
        .filter(|s| s.compensated_at.is_some() || s.status == "compensated")
        .collect();
    undone.sort_by_key(|s| {
        s.compensated_at
            .as_ref()
            .map_or(i64::MAX, Timestamp::millis)
    });
    for step in undone {
        timeline.push_str(&format!(
            "<li data-testid=\"saga-step\" data-direction=\"compensation\" data-status=\"compensated\"><span class=\"step-name\">undo {name}</span> <span class=\"status compensated\">compensated</span></li>",
            name = escape(&step.name),
        ));
    }
    let waiting = if State::parse(&saga.state).is_some_and(State::waits_for_operator) {
        format!(
            "<p class=\"waiting\" data-testid=\"saga-waiting\">Waits for an operator: once the cause is fixed, an operator with <code>{owner}:admin</code> retries it, here (signed in with the identity provider) or at the gateway: <code>POST /v1/{owner}/{subject}/sagas/{id}/retry</code>.</p>",
            owner = escape(owner),
            subject = escape(&saga.subject_id),
            id = escape(&saga.id),
        )
    } else {
        String::new()
    };
    let trace = trace_id(&saga.traceparent).map_or(String::new(), |id| {
        format!(" <a href=\"/traces/{id}\" data-testid=\"saga-trace\">trace</a>")
    });
    format!(
        "<article class=\"saga\" data-testid=\"saga\" data-owner=\"{owner}\" data-id=\"{id}\" data-state=\"{state}\" data-subject=\"{subject}\"><h3>{name} <code>{id}</code> <span class=\"status {state}\">{state}</span>{trace}</h3><p>Subject <code>{subject}</code>, {steps} steps.</p>{reason}<ol class=\"timeline\">{timeline}</ol>{waiting}</article>",
        owner = escape(owner),
        id = escape(&saga.id),
        state = escape(&saga.state),
        name = escape(&saga.saga),
        subject = escape(&saga.subject_id),
        steps = saga.steps.len(),
        reason = if saga.reason.is_empty() {
            String::new()
        } else {
            format!("<p class=\"reason\">{}</p>", escape(&saga.reason))
        },
    )
}

/// The board: a section per owner.
pub fn render(board: &BTreeMap<String, Listing<Sagas>>) -> String {
    let mut html = String::new();
    for (owner, listing) in board {
        let body = match listing {
            Listing::NotAsked => "<p>Not asked yet.</p>".to_string(),
            Listing::Failed(why) => format!("<p class=\"error\">{}</p>", escape(why)),
            Listing::Answered(sagas) if sagas.is_empty() => "<p>No instances yet.</p>".to_string(),
            Listing::Answered(sagas) => sagas.iter().map(|s| render_saga(owner, s)).collect(),
        };
        html.push_str(&format!(
            "<section data-testid=\"saga-owner\" data-name=\"{name}\"><h2>{name}</h2>{body}</section>",
            name = escape(owner)
        ));
    }
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(ms: i64) -> Option<Timestamp> {
        Some(Timestamp {
            seconds: ms / 1000,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        })
    }

    fn step(
        name: &str,
        status: &str,
        started: i64,
        finished: i64,
        undone: Option<i64>,
    ) -> SagaStep {
        SagaStep {
            name: name.into(),
            status: status.into(),
            started_at: ts(started),
            finished_at: ts(finished),
            compensated_at: undone.and_then(ts),
            ..Default::default()
        }
    }

    fn step_names(html: &str) -> Vec<&str> {
        html.match_indices("step-name\">")
            .map(|(i, m)| html[i + m.len()..].split('<').next().unwrap())
            .collect()
    }

    #[test]
    fn a_compensated_saga_shows_its_forward_steps_then_their_undoing_in_reverse() {
        let saga = Saga {
            id: "s1".into(),
            saga: "checkout".into(),
            state: "compensated".into(),
            reason: "step 3 (create shipments) refused: no address".into(),
            steps: vec![
                step("create payments", "compensated", 1_000, 1_040, Some(2_000)),
                step(
                    "inventory.reserve",
                    "compensated",
                    1_050,
                    1_070,
                    Some(1_900),
                ),
                step("create shipments", "refused", 1_080, 1_100, None),
            ],
            ..Default::default()
        };
        let html = render_saga("orders", &saga);
        assert_eq!(
            step_names(&html),
            [
                "create payments",
                "inventory.reserve",
                "create shipments",
                "undo inventory.reserve",
                "undo create payments"
            ]
        );
        assert!(html.contains("40 ms"), "the first step's duration: {html}");
        assert!(html.contains("no address"), "the reason: {html}");
        assert!(!html.contains("saga-waiting"), "{html}");
    }

    #[test]
    fn an_instance_waiting_for_an_operator_says_how_to_retry_it() {
        let waiting = Saga {
            id: "s2".into(),
            state: "compensation_failed".into(),
            subject_id: "o1".into(),
            ..Default::default()
        };
        let html = render_saga("orders", &waiting);
        assert!(
            html.contains("POST /v1/orders/o1/sagas/s2/retry") && html.contains("orders:admin"),
            "{html}"
        );
        let done = Saga {
            state: "completed".into(),
            ..waiting
        };
        assert!(!render_saga("orders", &done).contains("saga-waiting"));
    }

    #[test]
    fn a_trace_link_needs_a_well_formed_traceparent() {
        let mut saga = Saga {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            ..Default::default()
        };
        assert!(
            render_saga("orders", &saga)
                .contains("href=\"/traces/0af7651916cd43dd8448eb211c80319c\"")
        );
        saga.traceparent = "00-\"><script>-x-01".into();
        assert!(!render_saga("orders", &saga).contains("/traces/"));
    }

    #[test]
    fn names_and_errors_are_escaped() {
        let saga = Saga {
            id: "<script>".into(),
            reason: "\"><img>".into(),
            ..Default::default()
        };
        let html = render_saga("orders", &saga);
        assert!(
            !html.contains("<script>") && !html.contains("<img>"),
            "{html}"
        );
    }

    #[test]
    fn an_owner_that_cannot_be_asked_says_why() {
        let mut board = BTreeMap::new();
        board.insert(
            "orders".to_string(),
            Listing::Failed("orders: Unavailable".into()),
        );
        board.insert("billing".to_string(), Listing::Answered(Vec::new()));
        let html = render(&board);
        assert!(
            html.contains("orders: Unavailable") && html.contains("No instances yet"),
            "{html}"
        );
    }
}
