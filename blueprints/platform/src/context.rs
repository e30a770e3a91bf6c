//! What travels with a request and the messages it causes: a correlation id and the W3C
//! trace context, read from gRPC metadata or message headers, or started here.

use std::collections::BTreeMap;

use crate::bus::{CORRELATION_ID, TRACEPARENT};

/// gRPC metadata key for the correlation id.
pub const CORRELATION_METADATA: &str = "x-correlation-id";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageContext {
    pub correlation_id: String,
    /// `00-<trace id>-<parent span id>-<flags>`.
    pub traceparent: String,
    /// Whose idempotency keys this request's are (see `idempotency::scope`): the end user,
    /// else the calling service; empty where there is neither (events, tests).
    pub principal: String,
}

impl MessageContext {
    /// A new correlation id and a new trace.
    pub fn new_root() -> Self {
        MessageContext {
            correlation_id: uuid::Uuid::new_v4().to_string(),
            traceparent: format!("00-{}-{}-01", uuid::Uuid::new_v4().simple(), span_id()),
            principal: String::new(),
        }
    }

    /// Continues what the caller sent, or starts anew where it sent nothing valid. The
    /// trace context is the current span's when there is one (so events name the span
    /// that caused them as their parent), else the caller's trace with a new span id.
    pub fn from_parts(correlation_id: Option<&str>, traceparent: Option<&str>) -> Self {
        let correlation_id = self::correlation_id(correlation_id);
        let traceparent = crate::telemetry::current_traceparent().unwrap_or_else(|| {
            traceparent.and_then(trace_id).map_or_else(
                || Self::new_root().traceparent,
                |trace| format!("00-{trace}-{}-01", span_id()),
            )
        });
        MessageContext {
            correlation_id,
            traceparent,
            principal: String::new(),
        }
    }

    /// The context of a gRPC call, with the principal its admitted credential names.
    pub fn from_grpc<T>(request: &tonic::Request<T>) -> Self {
        let metadata = request.metadata();
        let get = |k: &str| metadata.get(k).and_then(|v| v.to_str().ok());
        let mut context = Self::from_parts(get(CORRELATION_METADATA), get(TRACEPARENT));
        context.principal = crate::idempotency::scope(request.extensions().get());
        context
    }

    pub fn from_headers(headers: &BTreeMap<String, String>) -> Self {
        Self::from_parts(
            headers.get(CORRELATION_ID).map(String::as_str),
            headers.get(TRACEPARENT).map(String::as_str),
        )
    }

    /// The trace id shared by everything this context caused.
    pub fn trace_id(&self) -> &str {
        trace_id(&self.traceparent).unwrap_or_default()
    }

    /// Headers stored with an outbox row and sent with its message.
    pub fn headers(&self) -> serde_json::Value {
        serde_json::json!({
            CORRELATION_ID: self.correlation_id,
            TRACEPARENT: self.traceparent,
        })
    }
}

/// The caller's correlation id where it sent a valid one (1 to 128 bytes), else a new one.
pub fn correlation_id(sent: Option<&str>) -> String {
    sent.filter(|c| !c.is_empty() && c.len() <= 128)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string)
}

fn span_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

/// The trace id of a valid version-00 traceparent (`00-<trace id>-...`).
pub(crate) fn trace_id(traceparent: &str) -> Option<&str> {
    crate::telemetry::parse_traceparent(traceparent).map(|_| &traceparent[3..35])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_trace_with_a_new_span() {
        let parent = "00-aaaaaaaabbbbbbbbccccccccdddddddd-00f067aa0ba902b7-01";
        let ctx = MessageContext::from_parts(Some("corr-1"), Some(parent));
        assert_eq!(ctx.correlation_id, "corr-1");
        assert_eq!(ctx.trace_id(), "aaaaaaaabbbbbbbbccccccccdddddddd");
        assert_ne!(ctx.traceparent, parent);
    }

    #[test]
    fn starts_a_new_trace_for_garbage() {
        let ctx = MessageContext::from_parts(None, Some("not-a-traceparent"));
        assert_eq!(ctx.trace_id().len(), 32);
        assert!(!ctx.correlation_id.is_empty());
    }
}
