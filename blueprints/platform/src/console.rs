//! The console: a local web page that shows the system working. It draws the map of the
//! spec (contexts, the gateway, topics and the call, event and saga edges between them)
//! with each node's live health and its rate, errors and p99 (`probe`), pushed to the page
//! over one server-sent event stream (`live`). Pages are rendered here, with every asset
//! compiled in; a strict Content-Security-Policy keeps the page on its own origin.
//!
//! The events page (`events`) shows every event on the bus, live: the console consumes it
//! with a consumer group (Kafka) or a queue (SQS) of its own.
//!
//! The sagas page (`sagas`) asks each saga owner for its newest instances, over a link of
//! the console's own to each service (`link`) that admits the console's RPCs only.
//!
//! The outbox page (`outbox`) asks each service for its unpublished backlog and its parked
//! rows over the same links, and replays a parked row for an operator.
//!
//! Traces (`traces`): the console receives the processes' spans over OTLP/HTTP on a port
//! of its own and draws a trace as a waterfall; events link to their trace.
//!
//! Login (`session`): the console writes a one-time login URL to a file (`up.sh` prints
//! it); opening it sets a signed, HttpOnly, SameSite=Strict session cookie, and every POST
//! carries a CSRF token derived from the session. That session views. Operators sign in
//! with the gateway's identity provider (`oidc`: authorization code with PKCE), and their
//! admin actions (`admin`: retrying a saga) go through the gateway with their own token.
//!
//! What it knows of the system comes from the spec: the generated `console` binary passes a
//! [`Topology`] built from it.

mod admin;
mod events;
mod link;
mod live;
mod map;
mod oidc;
mod outbox;
mod page;
mod probe;
mod sagas;
mod server;
mod session;
mod traces;

pub use live::Live;
pub use oidc::{OidcConfig, Operator};
pub use probe::{Health, NodeStatus, Stats, Statuses};
pub use server::{
    CONTENT_SECURITY_POLICY, Config, Console, DEFAULT_ADDR, ENV_PREFIX, StartupError,
};
pub use session::Sessions;
pub use traces::Traces;

/// The system as the spec draws it. `'static`: the generated binary writes it as a const.
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    pub system: &'static str,
    /// The console's consumer group on Kafka (on SQS, its queue is in the bus routes).
    pub group: &'static str,
    pub contexts: &'static [ContextNode],
    pub edges: &'static [Edge],
}

/// A bounded context: a service with its gRPC health and `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct ContextNode {
    /// The context's name (`orders`), also the `<NAME>` of its settings.
    pub name: &'static str,
    /// The gRPC service its health check reports on (`shop.orders.v1.OrdersService`).
    pub health_service: &'static str,
    /// Where its first replica serves gRPC and `/metrics` unless configured.
    pub grpc_addr: &'static str,
    pub metrics_addr: &'static str,
    /// The topic all its events go to.
    pub topic: &'static str,
    /// Whether it owns sagas, which the sagas page asks it for over the console's link
    /// to it (`CONSOLE__<NAME>__KEY`; every service has one, for the outbox page).
    pub lists_sagas: bool,
    /// The gateway's scope for its admin actions (`orders:admin`): an operator's retry of
    /// one of its sagas needs it.
    pub admin_scope: &'static str,
}

/// What the console's tests point at: orders, which owns sagas, at addresses where nothing
/// listens; and an operator signed in for ten minutes.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{ContextNode, Operator};

    pub(crate) const ORDERS: ContextNode = ContextNode {
        name: "orders",
        health_service: "shop.orders.v1.OrdersService",
        grpc_addr: "127.0.0.1:1",
        metrics_addr: "127.0.0.1:1",
        topic: "shop.orders.order.v1",
        lists_sagas: true,
        admin_scope: "orders:admin",
    };

    /// `ann`, holding `scopes`; her access token is `a.b.c`.
    pub(crate) fn operator(scopes: &[&str]) -> Operator {
        Operator {
            subject: "ann".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            access_token: "a.b.c".into(),
            expires_at: crate::service_auth::now_secs() + 600,
        }
    }
}

/// An arrow of the map. Event edges run from a publisher to its topic and from a topic to
/// each context that subscribes; call edges from a caller (or the gateway) to its callee;
/// saga edges from a saga's owner to each context its steps call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    pub from: &'static str,
    pub to: &'static str,
    pub kind: EdgeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    Call,
    Event,
    Saga,
}

impl EdgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeKind::Call => "call",
            EdgeKind::Event => "event",
            EdgeKind::Saga => "saga",
        }
    }
}

/// The gateway's node name on the map.
pub const GATEWAY: &str = "gateway";

impl Topology {
    /// The topics, each once, in the order of their contexts.
    pub fn topics(&self) -> Vec<&'static str> {
        let mut topics: Vec<&'static str> = Vec::new();
        for c in self.contexts {
            if !topics.contains(&c.topic) {
                topics.push(c.topic);
            }
        }
        topics
    }
}
