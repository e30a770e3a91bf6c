//! Rate limiting per client identity (token subject or API key name): a GCRA bucket per
//! identity from `governor`, refilled at `per_second` with room for `burst`. Past the limit a
//! request gets 429 with `Retry-After`. Before that, and before authentication, a coarser
//! limit per client address ([`limit_address`]), so a flood of bad tokens, which never
//! reaches an identity, is limited too. Limits are per gateway instance; idle keys are
//! forgotten every minute so memory stays bounded.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

#[derive(Clone)]
pub struct RateLimiter {
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> RateLimiter {
        let quota = Quota::per_second(config.per_second).allow_burst(config.burst);
        RateLimiter {
            limiter: Arc::new(DefaultKeyedRateLimiter::keyed(quota)),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(wait)` when `identity` is over its limit: how long until its next request fits.
    pub fn check(&self, identity: &str) -> Result<(), Duration> {
        self.limiter
            .check_key(&identity.to_string())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drops buckets that are full again; call periodically.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The per-address limit, before authentication: keyed by the client's address
/// ([`crate::gateway::client_address`]: the peer's, or behind a trusted proxy the one it forwarded;
/// many clients can still share one, a NAT, which is why this limit is coarse). A request
/// without a known address (tests driving the router directly) is not limited here.
pub async fn limit_address(
    State(limiter): State<RateLimiter>,
    request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<crate::gateway::client_address::ClientAddress>()
        .map(|address| address.0.to_string());
    if let Some(ip) = peer
        && let Err(wait) = limiter.check(&format!("ip:{ip}"))
    {
        return crate::gateway::problem::Problem::too_many_requests(
            "too many requests from this address",
            wait,
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[tokio::test]
    async fn a_flood_from_one_address_is_limited_before_authentication() {
        use axum::routing::get;
        use tower::ServiceExt;

        let limiter = RateLimiter::new(RateLimitConfig {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
        });
        // Every request carries a bad token: authentication (the route here) refuses it.
        let app = axum::Router::new()
            .route("/v1/orders", get(|| async { StatusCode::UNAUTHORIZED }))
            .route_layer(axum::middleware::from_fn_with_state(limiter, limit_address));
        let status = |peer: Option<&str>| {
            let app = app.clone();
            let mut request = Request::builder()
                .uri("/v1/orders")
                .header("authorization", "Bearer not-a-token")
                .body(axum::body::Body::empty())
                .unwrap();
            if let Some(peer) = peer {
                let peer = peer.parse::<std::net::SocketAddr>().unwrap();
                request
                    .extensions_mut()
                    .insert(crate::gateway::client_address::ClientAddress(peer.ip()));
            }
            async move { app.oneshot(request).await.unwrap().status() }
        };
        let mut seen = Vec::new();
        for port in 1000..1005 {
            seen.push(status(Some(&format!("203.0.113.7:{port}"))).await.as_u16());
        }
        assert_eq!(seen, [401, 401, 401, 429, 429], "one address, any port");
        assert_eq!(
            status(Some("203.0.113.8:1000")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status(None).await, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn each_identity_gets_its_own_burst_then_waits() {
        let limiter = RateLimiter::new(RateLimitConfig {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
        });
        for _ in 0..3 {
            limiter.check("token:alice").unwrap();
        }
        let wait = limiter.check("token:alice").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another identity is not affected.
        limiter.check("token:bob").unwrap();
    }
}
