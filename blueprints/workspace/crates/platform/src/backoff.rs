//! Exponential backoff with jitter: `base * 2^attempt + random(0, base)`, capped, so
//! retrying processes do not hammer a recovering dependency in lockstep.

use std::time::Duration;

pub fn delay(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exponential = base.saturating_mul(2u32.saturating_pow(attempt.min(16)));
    let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX).max(1);
    let jitter = Duration::from_millis(random_u64() % base_ms);
    exponential.saturating_add(jitter).min(max)
}

/// Full jitter (`random(0, min(max, base * 2^attempt))`): what callers retrying one
/// dependency use, so a crowd of them spreads out instead of retrying in waves.
pub fn full_jitter(base: Duration, max: Duration, attempt: u32) -> Duration {
    let ceiling = base.saturating_mul(2u32.saturating_pow(attempt.min(16))).min(max);
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
    fn grows_exponentially_with_bounded_jitter_and_a_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 0..4 {
            let d = delay(base, max, attempt);
            let floor = base * 2u32.pow(attempt);
            assert!(d >= floor && d < floor + base, "attempt {attempt}: {d:?}");
        }
        assert_eq!(delay(base, max, 30), max);
    }

    #[test]
    fn full_jitter_stays_under_the_exponential_ceiling_and_spreads() {
        let base = Duration::from_millis(50);
        let max = Duration::from_millis(500);
        for attempt in 0..6 {
            let ceiling = (base * 2u32.pow(attempt)).min(max);
            let samples: Vec<Duration> = (0..200).map(|_| full_jitter(base, max, attempt)).collect();
            assert!(samples.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Spread over the whole range, not bunched at the top like plain exponential.
            assert!(samples.iter().any(|d| *d < ceiling / 4), "attempt {attempt}");
            assert!(samples.iter().any(|d| *d > ceiling * 3 / 4), "attempt {attempt}");
        }
    }
}
