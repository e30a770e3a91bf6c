//! Exponential backoff with full jitter, `random(0, min(max, base * 2^attempt))`: what
//! every retry loop uses (the relay, consumers, the gateway's invalidation consumer,
//! callers of a dependency), so processes retrying one recovering dependency spread out
//! instead of retrying in waves, also once their delays reach the cap. (Jitter added on
//! top of the exponential and then capped lined them all up at exactly `max`.)

use std::time::Duration;

pub fn full_jitter(base: Duration, max: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(max);
    let ceiling_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(random_u64() % ceiling_us.saturating_add(1))
}

fn random_u64() -> u64 {
    // A v4 UUID is 122 random bits from the OS; no extra dependency needed.
    let bits = uuid::Uuid::new_v4().as_u128();
    (bits >> 64) as u64 ^ bits as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_retries_do_not_line_up() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let capped: Vec<Duration> = (0..50).map(|_| full_jitter(base, max, 30)).collect();
        assert!(capped.iter().all(|d| *d <= max));
        let distinct: std::collections::BTreeSet<_> = capped.iter().collect();
        assert!(
            distinct.len() > 40,
            "fifty retries at the cap wait {} different times",
            distinct.len()
        );
    }

    #[test]
    fn full_jitter_stays_under_the_exponential_ceiling_and_spreads() {
        let base = Duration::from_millis(50);
        let max = Duration::from_millis(500);
        for attempt in 0..6 {
            let ceiling = (base * 2u32.pow(attempt)).min(max);
            let samples: Vec<Duration> =
                (0..200).map(|_| full_jitter(base, max, attempt)).collect();
            assert!(samples.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Spread over the whole range, not bunched at the top like plain exponential.
            assert!(
                samples.iter().any(|d| *d < ceiling / 4),
                "attempt {attempt}"
            );
            assert!(
                samples.iter().any(|d| *d > ceiling * 3 / 4),
                "attempt {attempt}"
            );
        }
    }
}
