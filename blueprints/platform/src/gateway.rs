//! The gateway's fixed machinery (feature `gateway`): what every generated REST edge runs
//! the same way, whatever the spec. A generated gateway keeps its routes, its
//! configuration and its wiring, and re-exports these modules under its own names.
//!
//! Per request, outermost first: the request context (correlation id, deadline;
//! [`context`]) → the client's address ([`client_address`]) → authentication ([`auth`],
//! [`api_keys`], [`auth_failures`]) → rate limits ([`rate_limit`]) → the route, whose
//! answers are RFC 9457 problem bodies ([`problem`]) and whose reads go through the Redis
//! cache ([`cache`], [`rest`]), which the domain events keep honest ([`invalidation`]). The
//! same events go on to the clients that follow a context or a resource ([`stream`]), on
//! every replica ([`fanout`]).

pub mod api_keys;
pub mod auth;
pub mod auth_failures;
pub mod cache;
pub mod client_address;
pub mod context;
pub mod fanout;
pub mod invalidation;
pub mod problem;
pub mod rate_limit;
pub mod rest;
pub mod statuses;
pub mod stream;
