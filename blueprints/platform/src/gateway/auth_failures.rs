//! A budget of failed authentications per client address (OWASP API2, broken
//! authentication): guessing tokens or API keys is throttled apart from the general rate
//! limits, which are far too generous for that. Each address may fail
//! `GATEWAY__AUTH__FAILURES_PER_MINUTE` times (20 by default) in a minute; past that, every
//! request from it is answered 429 with `Retry-After` until its minute is over, before its
//! credential is looked at. Other addresses are not affected. Failures are counted in
//! `auth_failures_total`, refusals in `auth_throttled_total`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const AUTH_FAILURES: &str = "auth_failures_total";
pub const AUTH_THROTTLED: &str = "auth_throttled_total";
/// The window a budget counts in.
pub const WINDOW: Duration = Duration::from_secs(60);

pub struct FailureBudget {
    per_window: u32,
    /// Per address: when its window began, and its failures in it.
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureBudget {
    pub fn new(per_minute: NonZeroU32) -> FailureBudget {
        FailureBudget {
            per_window: per_minute.get(),
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long `address` must wait, when it has used up its budget; `None` while it may
    /// try.
    pub fn blocked(&self, address: IpAddr, now: Instant) -> Option<Duration> {
        let (began, failures) = *self.windows().get(&address)?;
        let over = began + WINDOW;
        (failures >= self.per_window && now < over).then(|| over - now)
    }

    /// Counts one failed authentication from `address`.
    pub fn failed(&self, address: IpAddr, now: Instant) {
        metrics::counter!(AUTH_FAILURES).increment(1);
        let mut windows = self.windows();
        let window = windows.entry(address).or_insert((now, 0));
        if now >= window.0 + WINDOW {
            *window = (now, 0);
        }
        window.1 += 1;
    }

    /// Forgets the addresses whose window is over; call periodically.
    pub fn forget_idle(&self, now: Instant) {
        self.windows().retain(|_, (began, _)| now < *began + WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_past_its_failures_waits_out_its_minute_and_others_go_on() {
        let budget = FailureBudget::new(NonZeroU32::new(20).unwrap());
        let guesser: IpAddr = "203.0.113.7".parse().unwrap();
        let other: IpAddr = "203.0.113.8".parse().unwrap();
        let start = Instant::now();
        for i in 0..20 {
            assert_eq!(
                budget.blocked(guesser, start),
                None,
                "failure {i} is within the budget"
            );
            budget.failed(guesser, start);
        }
        let wait = budget
            .blocked(guesser, start + Duration::from_secs(10))
            .expect("past its budget");
        assert_eq!(wait, Duration::from_secs(50), "until its minute is over");
        assert_eq!(
            budget.blocked(other, start),
            None,
            "another address is not affected"
        );
        // The minute over, it may try again.
        assert_eq!(budget.blocked(guesser, start + WINDOW), None);
        budget.failed(guesser, start + WINDOW);
        assert_eq!(
            budget.blocked(guesser, start + WINDOW),
            None,
            "a new window"
        );
        budget.forget_idle(start + WINDOW * 3);
        assert!(budget.windows().is_empty());
    }
}
