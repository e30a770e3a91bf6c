//! Time as the services store it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch: the precision Postgres stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub fn from_system_time(time: SystemTime) -> Self {
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self(i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX))
    }

    pub fn micros(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Timestamp;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_system_time_is_kept_to_the_microsecond() {
        let time = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        assert_eq!(
            Timestamp::from_system_time(time).micros(),
            1_700_000_000_123_456
        );
    }
}
