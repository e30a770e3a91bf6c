//! Logs and traces. [`init`] installs, once per process, a subscriber that
//! - writes JSON lines on stdout (filtered by `RUST_LOG`, default `info`), each with the
//!   `traceId` and `spanId` of the span it was written in;
//! - gives every span W3C trace and span ids (OpenTelemetry) and exports finished spans over
//!   OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//!   set; without one, spans are only used for ids and nothing is exported.
//!
//! The service name is the spans' `service.name`. A trace crosses processes as a W3C
//! `traceparent`: in gRPC metadata, in HTTP headers, and in every outbox row and bus message.
//! Safe to call more than once (tests do): later calls are no-ops.

use std::fmt;
use std::sync::OnceLock;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::Context;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::{OpenTelemetrySpanExt, OtelData};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let endpoint = ENDPOINT_VARS
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()));
    let mut provider = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    let mut export_error = None;
    if endpoint.is_some() {
        // The builder reads the endpoint variables itself (and appends /v1/traces).
        match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
            Ok(exporter) => provider = provider.with_batch_exporter(exporter),
            Err(e) => export_error = Some(e.to_string()),
        }
    }
    let provider = provider.build();
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer(service)))
        .with(tracing_subscriber::fmt::layer().event_format(JsonLines { service }))
        .try_init()
        .is_ok();
    if installed {
        let _ = PROVIDER.set(provider);
        match export_error {
            Some(error) => tracing::error!(service, error, "cannot export traces; they stay local"),
            None => tracing::info!(service, otlp = endpoint.as_deref(), "telemetry initialised"),
        }
    }
}

/// Exports the spans still buffered; call before the process exits.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
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
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2)
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
/// event's own fields (its message as `message`).
struct JsonLines {
    service: &'static str,
}

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
        let mut line = Map::new();
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), event.metadata().level().as_str().into());
        line.insert("service".into(), self.service.into());
        line.insert("target".into(), event.metadata().target().into());
        if let Some(span) = ctx.lookup_current() {
            let extensions = span.extensions();
            if let Some(otel) = extensions.get::<OtelData>()
                && let (Some(trace), Some(id)) = (otel.trace_id(), otel.span_id())
            {
                line.insert("traceId".into(), trace.to_string().into());
                line.insert("spanId".into(), id.to_string().into());
            }
        }
        event.record(&mut Fields(&mut line));
        writeln!(writer, "{}", Value::Object(line))
    }
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_names_its_remote_parent() {
        let parent = remote_parent("00-aaaaaaaabbbbbbbbccccccccdddddddd-00f067aa0ba902b7-01").unwrap();
        let span = parent.span();
        let sc = span.span_context();
        assert_eq!(sc.trace_id().to_string(), "aaaaaaaabbbbbbbbccccccccdddddddd");
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

    #[test]
    fn without_a_subscriber_there_is_no_current_traceparent() {
        assert_eq!(current_traceparent(), None);
    }
}
