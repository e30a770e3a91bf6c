//! Rate limiting per client identity (token subject or API key name): a GCRA bucket per
//! identity from `governor`, refilled at `per_second` with room for `burst`. Past the limit a
//! request gets 429 with `Retry-After`. Limits are per gateway instance; idle identities
//! are forgotten every minute so memory stays bounded.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        // Another identity is not affected.
        limiter.check("token:bob").unwrap();
    }
}
