//! The sagas page: each owner's newest instances with their state, reason and a timeline of
//! steps. Every probe interval the console asks each saga owner for its newest instances
//! (`ListRecentSagas`, over the console's own link, which the owner admits for that RPC
//! only: see `service_auth`) and pushes the board to the page.
//!
//! The console knows no service's generated code: it speaks the RPC with messages of its own
//! whose field numbers are the contract's (`ListSagasResponse`, `Saga`, `SagaStep` in every
//! owner's proto), under the path `/<owner's gRPC service>/ListRecentSagas`.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use super::live::Live;
use super::page::escape;
use crate::context::trace_id;
use crate::saga::State;
use crate::service_auth::Minter;

/// How many instances of each owner the page shows (newest first).
pub const SHOWN_PER_OWNER: i32 = 50;
/// How long one owner's answer may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// The RPC the console calls: the only one its link is admitted for.
pub const LIST_RECENT: &str = "ListRecentSagas";

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
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    fn millis(&self) -> i64 {
        self.seconds * 1000 + i64::from(self.nanos) / 1_000_000
    }
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

/// One owner as the console reaches it: its gRPC service, address and the console's link.
#[derive(Clone)]
pub struct Owner {
    pub name: String,
    pub service: String,
    pub addr: String,
    pub minter: Arc<Minter>,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner")
            .field("name", &self.name)
            .field("service", &self.service)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// What the page shows of one owner: its newest instances, or why it could not be asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Listing {
    NotAsked,
    Sagas(Vec<Saga>),
    Failed(String),
}

/// The newest listing of every owner.
#[derive(Clone, Default)]
pub struct Board(Arc<Mutex<BTreeMap<String, Listing>>>);

impl Board {
    pub fn set(&self, owner: &str, listing: Listing) -> bool {
        let mut board = self.0.lock().expect("board lock");
        let changed = board.get(owner) != Some(&listing);
        board.insert(owner.to_string(), listing);
        changed
    }

    pub fn snapshot(&self) -> BTreeMap<String, Listing> {
        self.0.lock().expect("board lock").clone()
    }
}

/// The channel to one owner. Lazy: an owner that is down now is reached once it is up.
fn channel_to(addr: &str) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| e.connect_timeout(FETCH_TIMEOUT).connect_lazy())
        .map_err(|e| format!("{addr}: {e}"))
}

/// Asks one owner for its newest instances.
pub async fn fetch(owner: &Owner, channel: Channel, limit: i32) -> Result<Vec<Saga>, String> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| format!("cannot reach {} at {}: {e}", owner.name, owner.addr))?;
    let path = http::uri::PathAndQuery::from_str(&format!("/{}/{LIST_RECENT}", owner.service))
        .map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(ListRecentSagasRequest { limit });
    // Also this side's bound (tonic enforces it here, not only at the owner): an owner that
    // takes the connection and never answers would otherwise hold the page's loop.
    request.set_timeout(FETCH_TIMEOUT);
    owner.minter.authorize(&mut request, None);
    let codec: tonic_prost::ProstCodec<ListRecentSagasRequest, ListSagasResponse> =
        tonic_prost::ProstCodec::default();
    grpc.unary(request, path, codec)
        .await
        .map(|response| response.into_inner().sagas)
        .map_err(|status| format!("{}: {:?} {}", owner.name, status.code(), status.message()))
}

/// Asks every owner each `interval` and pushes the board (as the page's HTML) whenever it
/// changed; until `stop`. Spawned only with owners to ask (a supervised task that ended
/// would stop the console).
pub async fn run(
    owners: Vec<Owner>,
    interval: Duration,
    board: Board,
    live: Live,
    mut stop: watch::Receiver<bool>,
) {
    let mut channels = Vec::with_capacity(owners.len());
    for owner in &owners {
        board.set(&owner.name, Listing::NotAsked);
        channels.push(channel_to(&owner.addr));
    }
    loop {
        let asks = owners
            .iter()
            .zip(&channels)
            .map(|(owner, channel)| async move {
                match channel {
                    Ok(channel) => fetch(owner, channel.clone(), SHOWN_PER_OWNER).await,
                    Err(e) => Err(e.clone()),
                }
            });
        let answers = futures_util::future::join_all(asks).await;
        let mut changed = false;
        for (owner, answer) in owners.iter().zip(answers) {
            let listing = match answer {
                Ok(sagas) => Listing::Sagas(sagas),
                Err(why) => Listing::Failed(why),
            };
            changed |= board.set(&owner.name, listing);
        }
        if changed {
            let html = render(&board.snapshot());
            live.snapshot("sagas", serde_json::json!({ "html": html }).to_string());
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
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
pub fn render(board: &BTreeMap<String, Listing>) -> String {
    let mut html = String::new();
    for (owner, listing) in board {
        let body = match listing {
            Listing::NotAsked => "<p>Not asked yet.</p>".to_string(),
            Listing::Failed(why) => format!("<p class=\"error\">{}</p>", escape(why)),
            Listing::Sagas(sagas) if sagas.is_empty() => "<p>No instances yet.</p>".to_string(),
            Listing::Sagas(sagas) => sagas.iter().map(|s| render_saga(owner, s)).collect(),
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
        board.insert("billing".to_string(), Listing::Sagas(Vec::new()));
        let html = render(&board);
        assert!(
            html.contains("orders: Unavailable") && html.contains("No instances yet"),
            "{html}"
        );
    }

    /// An owner that takes the connection and never answers (stopped, or wedged) costs
    /// one bounded ask, not the page: the request's timeout ends the call.
    #[tokio::test]
    async fn an_owner_that_never_answers_is_a_failure_within_the_bound() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let owner = Owner {
            name: "orders".into(),
            service: "shop.orders.v1.OrdersService".into(),
            addr: addr.clone(),
            minter: Arc::new(Minter::new(
                &crate::service_auth::LinkKey::new(&"k".repeat(32)).unwrap(),
                "shop",
                "console",
                "orders",
            )),
        };
        let channel = channel_to(&addr).unwrap();
        let asked = tokio::time::timeout(FETCH_TIMEOUT * 3, fetch(&owner, channel, 1)).await;
        held.abort();
        let failed = asked.expect("the ask ended within its bound");
        assert!(failed.is_err(), "{failed:?}");
    }

    #[test]
    fn the_board_reports_a_change_only_when_a_listing_changed() {
        let board = Board::default();
        assert!(board.set("orders", Listing::Sagas(Vec::new())));
        assert!(!board.set("orders", Listing::Sagas(Vec::new())));
        assert!(board.set("orders", Listing::Failed("down".into())));
    }
}
