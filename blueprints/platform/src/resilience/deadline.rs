//! Deadlines down a call chain. A service serving a call reads the caller's budget from the
//! `grpc-timeout` header, keeps a small margin for its own answer, and every call it makes
//! while serving inherits what is left ([`current`]). The call being served is a task-local
//! [`CallContext`], set by the service's admission layer (`service_auth`), so user code
//! calls `deps.catalog.get_item(id)` without passing a context along.

use std::time::{Duration, Instant};

use super::CallContext;

tokio::task_local! {
    static CURRENT: CallContext;
}

/// The most a service keeps back from the budget it was given, so its own answer still
/// reaches the caller in time after a dependency used up the rest.
pub const MAX_MARGIN: Duration = Duration::from_millis(20);

/// The budget a service passes on when it was called with `incoming` left: the incoming
/// budget minus a margin of a tenth of it, at most [`MAX_MARGIN`].
pub fn passed_on(incoming: Duration) -> Duration {
    incoming.saturating_sub((incoming / 10).min(MAX_MARGIN))
}

/// The deadline of the calls made while serving a request that arrived at `arrived` with
/// `grpc-timeout` = `incoming` (if any); `default` applies without one.
pub fn serving_deadline(
    arrived: Instant,
    incoming: Option<Duration>,
    default: Duration,
) -> Instant {
    arrived + incoming.map_or(default, passed_on)
}

/// Parses a `grpc-timeout` header value: at most 8 digits and a unit (`H`, `M`, `S`, `m`
/// for milliseconds, `u`, `n`), as the gRPC-over-HTTP/2 protocol defines it.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Runs `f` as part of serving the call `cx` describes: calls made inside it inherit its
/// deadline, correlation id and end user.
pub async fn scope<F: Future>(cx: CallContext, f: F) -> F::Output {
    CURRENT.scope(cx, f).await
}

/// The call being served, if the current task is serving one.
pub fn current() -> Option<CallContext> {
    CURRENT.try_with(CallContext::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_passed_on_keeps_a_margin_of_a_tenth_at_most_20_ms() {
        let ms = Duration::from_millis;
        assert_eq!(passed_on(ms(300)), ms(280), "20 ms margin");
        assert_eq!(passed_on(ms(100)), ms(90), "a tenth of a short budget");
        assert_eq!(passed_on(ms(10_000)), ms(9_980));
        assert_eq!(passed_on(Duration::ZERO), Duration::ZERO);
        // Down a chain the budget only shrinks.
        let mut budget = ms(300);
        for _ in 0..5 {
            let next = passed_on(budget);
            assert!(next < budget);
            budget = next;
        }
    }

    #[test]
    fn without_an_incoming_deadline_the_default_applies() {
        let now = Instant::now();
        let default = Duration::from_secs(3);
        assert_eq!(serving_deadline(now, None, default), now + default);
        assert_eq!(
            serving_deadline(now, Some(Duration::from_millis(300)), default),
            now + Duration::from_millis(280)
        );
    }

    #[test]
    fn grpc_timeout_headers_parse_in_every_unit_and_nothing_else_does() {
        assert_eq!(parse_grpc_timeout("300m"), Some(Duration::from_millis(300)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5M"), Some(Duration::from_secs(300)));
        assert_eq!(
            parse_grpc_timeout("250000u"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "300", "123456789m", "-1m", "1.5S", "10x", "1 m"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn calls_inside_a_scope_see_its_context_and_outside_none() {
        assert!(current().is_none());
        let cx = CallContext::new("corr-1".into(), Duration::from_millis(500));
        let seen = scope(cx.clone(), async { current() }).await.unwrap();
        assert_eq!(seen.correlation_id, "corr-1");
        assert_eq!(seen.deadline, cx.deadline);
        assert!(current().is_none());
    }
}
