//! Logs and traces. [`init`] installs, once per process, a subscriber that
//! - writes JSON lines on stdout (filtered by `RUST_LOG`, default `info`), each with the
//!   `traceId` and `spanId` of the span it was written in;
//! - gives every span W3C trace and span ids (OpenTelemetry) and exports finished spans over
//!   OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//!   set; without one, spans are only used for ids and nothing is exported.
//!
//! A line is formatted where it is logged, but written to stdout in batches by a thread of
//! its own ([`crate::log_writer`]), so a request never waits on the write, nor on a log
//! collector that reads stdout slowly. The [`Telemetry`] that `init` returns writes out
//! what is waiting when it is dropped, so a process holds it in `main` for as long as it
//! runs.
//!
//! The service name is the spans' `service.name`. A trace crosses processes as a W3C
//! `traceparent`: in gRPC metadata, in HTTP headers, and in every outbox row and bus message.
//! Safe to call more than once (tests do): later calls are no-ops.

use std::fmt;
use std::io::Write as _;

use opentelemetry::Context;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::{OpenTelemetrySpanExt, OtelData};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::log_writer;

const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// The process's telemetry, from [`init`]. Dropping it exports the spans still buffered and
/// writes out the log lines still waiting: hold it until `main` returns.
#[must_use = "hold the telemetry guard until main returns: dropping it stops batching log lines"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Dropped after `drop` exported the spans, so their last log lines are written too.
    _log_writer: Option<log_writer::Flusher>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

pub fn init(service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let endpoint = ENDPOINT_VARS
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()));
    let mut provider = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    let mut export_error = None;
    if endpoint.is_some() {
        // The builder reads the endpoint variables itself (and appends /v1/traces).
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => provider = provider.with_batch_exporter(exporter),
            Err(e) => export_error = Some(e.to_string()),
        }
    }
    let provider = provider.build();
    let (stdout, log_writer) = log_writer::stdout();
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer(service)))
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines { service })
                .with_writer(stdout),
        )
        .try_init()
        .is_ok();
    if !installed {
        return Telemetry {
            provider: None,
            _log_writer: None,
        };
    }
    match export_error {
        Some(error) => tracing::error!(service, error, "cannot export traces; they stay local"),
        None => tracing::info!(service, otlp = endpoint.as_deref(), "telemetry initialised"),
    }
    Telemetry {
        provider: Some(provider),
        _log_writer: Some(log_writer),
    }
}

/// The W3C `traceparent` of the current span, if it has a valid trace context.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The span a valid version-00 `traceparent` names: `00-<32 hex>-<16 hex>-<2 hex>`, with
/// neither id all zeros. The one parser of the format in this crate.
pub fn parse_traceparent(traceparent: &str) -> Option<SpanContext> {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || parts.next().is_some()
        || !hex(trace, 32)
        || !hex(span, 16)
        || !hex(flags, 2)
    {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// The remote parent a valid `traceparent` names, to continue its trace.
pub fn remote_parent(traceparent: &str) -> Option<Context> {
    parse_traceparent(traceparent).map(|span| Context::new().with_remote_span_context(span))
}

/// Makes `span` a child of the caller's span named by `traceparent`, if it names one.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(remote_parent) {
        let _ = span.set_parent(parent);
    }
}

/// One JSON object per line: timestamp, level, service, target, traceId, spanId, then the
/// event's own fields (its message as `message`). Written straight into the line, with no
/// map in between: this runs for every request. An event field named like one of the
/// line's own keys comes as `field.<name>`, so no key appears twice.
struct JsonLines {
    service: &'static str,
}

/// The keys every line starts with.
const LINE_KEYS: [&str; 6] = [
    "timestamp",
    "level",
    "service",
    "target",
    "traceId",
    "spanId",
];

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut line = Vec::with_capacity(256);
        line.extend_from_slice(b"{\"timestamp\":");
        push_json_str(&mut line, &timestamp);
        line.extend_from_slice(b",\"level\":");
        push_json_str(&mut line, event.metadata().level().as_str());
        line.extend_from_slice(b",\"service\":");
        push_json_str(&mut line, self.service);
        line.extend_from_slice(b",\"target\":");
        push_json_str(&mut line, event.metadata().target());
        if let Some(span) = ctx.lookup_current() {
            let extensions = span.extensions();
            if let Some(otel) = extensions.get::<OtelData>()
                && let (Some(trace), Some(id)) = (otel.trace_id(), otel.span_id())
            {
                // Ids are lower-case hex: nothing to escape.
                let _ = write!(line, ",\"traceId\":\"{trace}\",\"spanId\":\"{id}\"");
            }
        }
        event.record(&mut Fields(&mut line));
        line.extend_from_slice(b"}\n");
        // Only whole UTF-8 strings and ASCII went in.
        writer.write_str(std::str::from_utf8(&line).map_err(|_| fmt::Error)?)
    }
}

/// `value` as a JSON string, quoted and escaped by serde_json, at the end of `line`.
fn push_json_str(line: &mut Vec<u8>, value: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(line, value);
}

/// Writes each field of an event as `,"<name>":<value>`.
struct Fields<'a>(&'a mut Vec<u8>);

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        self.0.push(b',');
        let name = field.name();
        if LINE_KEYS.contains(&name) {
            push_json_str(self.0, &format!("field.{name}"));
        } else {
            push_json_str(self.0, name);
        }
        self.0.push(b':');
    }

    /// A number as JSON has it: a non-finite float is not a JSON number, so it is `null`
    /// (as serde_json writes it).
    fn number(&mut self, field: &Field, value: impl fmt::Display) {
        self.key(field);
        let _ = write!(self.0, "{value}");
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_str(self.0, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.number(field, value);
        } else {
            self.number(field, "null");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.number(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        push_json_str(self.0, &format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_names_its_remote_parent() {
        let parent =
            remote_parent("00-aaaaaaaabbbbbbbbccccccccdddddddd-00f067aa0ba902b7-01").unwrap();
        let span = parent.span();
        let sc = span.span_context();
        assert_eq!(
            sc.trace_id().to_string(),
            "aaaaaaaabbbbbbbbccccccccdddddddd"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_remote() && sc.is_sampled());
        for bad in [
            "",
            "01-aaaaaaaabbbbbbbbccccccccdddddddd-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-aaaaaaaabbbbbbbbccccccccdddddddd-0000000000000000-01",
            "00-xyz-00f067aa0ba902b7-01",
            "00-+aaaaaaabbbbbbbbccccccccdddddddd-00f067aa0ba902b7-01",
            "00-aaaaaaaabbbbbbbbccccccccdddddddd-00f067aa0ba902b7-1",
            "00-aaaaaaaabbbbbbbbccccccccdddddddd-00f067aa0ba902b7-01-extra",
        ] {
            assert!(remote_parent(bad).is_none(), "{bad}");
        }
    }

    /// The lines `log` writes through [`JsonLines`], each parsed as JSON.
    fn lines_of(log: impl FnOnce()) -> Vec<serde_json::Value> {
        use std::sync::{Arc, Mutex};

        #[derive(Clone)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        let captured = Capture(Arc::new(Mutex::new(Vec::new())));
        let writer = captured.clone();
        let tracer = SdkTracerProvider::builder().build().tracer("test");
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(tracer))
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonLines { service: "orders" })
                    .with_writer(move || writer.clone()),
            );
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    #[test]
    fn a_log_line_is_one_json_object_with_the_span_ids_and_the_event_fields() {
        let lines = lines_of(|| {
            tracing::info_span!("http").in_scope(|| {
                tracing::warn!(
                    status = 201u64,
                    delta = -3i64,
                    duration_ms = 1.5,
                    ok = true,
                    infinite = f64::INFINITY,
                    user = "a \"quoted\"\n\\ name\u{1}",
                    level = "shadowed",
                    "request {}",
                    "done"
                )
            });
            tracing::info!("outside any span");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        let line = lines[0].as_object().unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["service"], "orders");
        assert_eq!(line["target"], module_path!());
        assert!(line["timestamp"].as_str().unwrap().starts_with("20"));
        let hex = |v: &serde_json::Value, n: usize| {
            v.as_str()
                .is_some_and(|s| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        assert!(
            hex(&line["traceId"], 32) && hex(&line["spanId"], 16),
            "{line:?}"
        );
        assert_eq!(line["message"], "request done");
        assert_eq!(line["status"], 201);
        assert_eq!(line["delta"], -3);
        assert_eq!(line["duration_ms"], 1.5);
        assert_eq!(line["ok"], true);
        assert_eq!(line["infinite"], serde_json::Value::Null);
        assert_eq!(line["user"], "a \"quoted\"\n\\ name\u{1}");
        // An event's field never replaces one of the line's own keys.
        assert_eq!(line["field.level"], "shadowed");
        let outside = lines[1].as_object().unwrap();
        assert_eq!(outside["message"], "outside any span");
        assert!(!outside.contains_key("traceId"));
    }

    #[test]
    fn without_a_subscriber_there_is_no_current_traceparent() {
        assert_eq!(current_traceparent(), None);
    }
}
