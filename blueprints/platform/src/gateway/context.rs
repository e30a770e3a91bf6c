//! Per-request context: the correlation id (taken from `X-Correlation-Id` when the client
//! sends a sane one, else new) and the deadline every downstream call must finish by.

use std::time::Duration;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

pub const CORRELATION_ID: &str = "x-correlation-id";

/// The per-request context, the same one services use for their own calls.
pub use crate::resilience::CallContext as RequestContext;

fn acceptable(id: &str) -> bool {
    (1..=100).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Middleware: puts a [`RequestContext`] into the request and echoes the correlation id.
pub async fn attach(timeout: Duration, mut request: Request, next: Next) -> Response {
    let correlation_id = request
        .headers()
        .get(CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| acceptable(id))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_string);
    request
        .extensions_mut()
        .insert(RequestContext::new(correlation_id.clone(), timeout));
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&correlation_id) {
        response.headers_mut().insert(CORRELATION_ID, value);
    }
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_plain_correlation_ids_are_taken_over() {
        assert!(super::acceptable("3f2a-41_b.c:d"));
        assert!(!super::acceptable(""));
        assert!(!super::acceptable("a b"));
        assert!(!super::acceptable(&"a".repeat(101)));
    }
}
