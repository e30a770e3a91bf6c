//! Exponential backoff with jitter: `base * 2^attempt + random(0, base)`, capped, so
//! retrying processes do not hammer a recovering dependency in lockstep.

use std::time::Duration;

pub fn delay(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exponential = base.saturating_mul(2u32.saturating_pow(attempt.min(16)));
    let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX).max(1);
    let jitter = Duration::from_millis(random_u64() % base_ms);
    exponential.saturating_add(jitter).min(max)
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
}
