//! The console's links to the services. Over each the console calls the few RPCs the
//! service admits from it (`service_auth::CONSOLE_METHODS`), knowing no service's generated
//! code: it speaks them with prost messages of its own whose field numbers are the
//! contract's, through tonic's generic client, on the path `/<service>/<method>`.
//!
//! A page that shows what every service answers (sagas, outbox) keeps a [`Board`] of the
//! newest answers, which [`poll`] refreshes every interval and pushes to the pages when it
//! changed.

use std::collections::BTreeMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use super::ContextNode;
use super::live::Live;
use crate::service_auth::Minter;

/// How long one call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// `google.protobuf.Timestamp`, as the contracts carry times.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    pub fn millis(&self) -> i64 {
        self.seconds * 1000 + i64::from(self.nanos) / 1_000_000
    }
}

/// One service as the console reaches it: the service as the spec draws it (its name, the
/// gRPC service its RPCs are under, its admin scope, whether it owns sagas), where it serves
/// and the console's link to it.
#[derive(Clone)]
pub struct Peer {
    pub node: &'static ContextNode,
    pub addr: String,
    pub minter: Arc<Minter>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("node", &self.node)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A peer at `addr` whose link key is a test's own, for the console's tests.
#[cfg(test)]
pub(super) fn test_peer(node: &'static ContextNode, addr: &str) -> Peer {
    Peer {
        node,
        addr: addr.into(),
        minter: Arc::new(Minter::new(
            &crate::service_auth::LinkKey::new(&"k".repeat(32)).unwrap(),
            "shop",
            crate::service_auth::CONSOLE,
            node.name,
        )),
    }
}

/// The channel to one service. Lazy: a service that is down now is reached once it is up.
pub fn channel_to(addr: &str) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| e.connect_timeout(CALL_TIMEOUT).connect_lazy())
        .map_err(|e| format!("{addr}: {e}"))
}

/// Calls `method` of `peer` over the console's link, for the operator `act` if any.
pub async fn call<Req, Resp>(
    peer: &Peer,
    channel: Channel,
    method: &str,
    message: Req,
    act: Option<&str>,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| {
        tonic::Status::unavailable(format!(
            "cannot reach {} at {}: {e}",
            peer.node.name, peer.addr
        ))
    })?;
    let path =
        http::uri::PathAndQuery::from_str(&format!("/{}/{method}", peer.node.health_service))
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let mut request = tonic::Request::new(message);
    // Also this side's bound (tonic enforces it here, not only at the service): a service
    // that takes the connection and never answers would otherwise hold the page's loop.
    request.set_timeout(CALL_TIMEOUT);
    peer.minter.authorize(&mut request, act);
    let codec: tonic_prost::ProstCodec<Req, Resp> = tonic_prost::ProstCodec::default();
    grpc.unary(request, path, codec)
        .await
        .map(tonic::Response::into_inner)
}

/// A failed call as a page says it.
pub fn failure(peer: &Peer, status: &tonic::Status) -> String {
    format!(
        "{}: {:?} {}",
        peer.node.name,
        status.code(),
        status.message()
    )
}

/// What a page shows of one service: its newest answer, or why it could not be asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Listing<T> {
    NotAsked,
    Answered(T),
    Failed(String),
}

/// The newest listing of every service a page asks.
pub struct Board<T>(Arc<Mutex<BTreeMap<String, Listing<T>>>>);

impl<T> Clone for Board<T> {
    fn clone(&self) -> Self {
        Board(self.0.clone())
    }
}

impl<T> Default for Board<T> {
    fn default() -> Self {
        Board(Arc::default())
    }
}

impl<T: Clone + PartialEq> Board<T> {
    /// Whether the listing changed.
    pub fn set(&self, name: &str, listing: Listing<T>) -> bool {
        let mut board = self.0.lock().expect("board lock");
        let changed = board.get(name) != Some(&listing);
        board.insert(name.to_string(), listing);
        changed
    }

    pub fn snapshot(&self) -> BTreeMap<String, Listing<T>> {
        self.0.lock().expect("board lock").clone()
    }
}

/// What [`poll`] asks every peer, and how the page draws the board.
pub struct Page<T, F> {
    /// The live snapshot's name (the pages' script listens for it).
    pub event: &'static str,
    pub ask: F,
    pub render: fn(&BTreeMap<String, Listing<T>>) -> String,
}

/// Asks every peer each `interval` and pushes the board (as the page's HTML) whenever it
/// changed; until `stop`. Spawned only with peers to ask (a supervised task that ended
/// would stop the console).
pub async fn poll<T, F, Fut>(
    peers: Vec<Peer>,
    interval: Duration,
    board: Board<T>,
    page: Page<T, F>,
    live: Live,
    mut stop: watch::Receiver<bool>,
) where
    T: Clone + PartialEq,
    F: Fn(Peer, Channel) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut channels = Vec::with_capacity(peers.len());
    for peer in &peers {
        board.set(peer.node.name, Listing::NotAsked);
        channels.push(channel_to(&peer.addr));
    }
    loop {
        let asks = peers.iter().zip(&channels).map(|(peer, channel)| {
            let asked = channel.clone().map(|c| (page.ask)(peer.clone(), c));
            async move {
                match asked {
                    Ok(asked) => asked.await,
                    Err(e) => Err(e),
                }
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        let mut changed = false;
        for (peer, answer) in peers.iter().zip(answers) {
            let listing = match answer {
                Ok(answer) => Listing::Answered(answer),
                Err(why) => Listing::Failed(why),
            };
            changed |= board.set(peer.node.name, listing);
        }
        if changed {
            let html = (page.render)(&board.snapshot());
            live.snapshot(page.event, serde_json::json!({ "html": html }).to_string());
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::fixtures::ORDERS;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Empty {}

    /// A service that takes the connection and never answers (stopped, or wedged) costs
    /// one bounded call, not the page: the request's timeout ends it.
    #[tokio::test]
    async fn a_service_that_never_answers_is_a_failure_within_the_bound() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let peer = test_peer(&ORDERS, &addr);
        let channel = channel_to(&addr).unwrap();
        let asked = tokio::time::timeout(
            CALL_TIMEOUT * 3,
            call::<Empty, Empty>(&peer, channel, "ListOutbox", Empty {}, None),
        )
        .await;
        held.abort();
        let failed = asked.expect("the call ended within its bound");
        assert!(failed.is_err(), "{failed:?}");
    }

    #[test]
    fn the_board_reports_a_change_only_when_a_listing_changed() {
        let board: Board<Vec<i32>> = Board::default();
        assert!(board.set("orders", Listing::Answered(Vec::new())));
        assert!(!board.set("orders", Listing::Answered(Vec::new())));
        assert!(board.set("orders", Listing::Failed("down".into())));
    }
}
