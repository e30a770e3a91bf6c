//! Traces: the console receives OTLP/HTTP (protobuf, `POST /v1/traces` on a port of its own;
//! `up.sh` points every process's `OTEL_EXPORTER_OTLP_ENDPOINT` at it) and keeps the spans
//! in a bounded ring of traces: when it holds more than its span budget, the traces seen
//! longest ago go first. A trace's page draws it as a waterfall, each span nested under its
//! parent, coloured by service.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

use super::page::escape;

/// Spans kept in all.
pub const SPAN_BUDGET: usize = 20_000;
/// Spans kept of one trace (a runaway trace cannot take the whole budget).
pub const SPANS_PER_TRACE: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub span_id: String,
    /// Empty for a root.
    pub parent_id: String,
    pub name: String,
    pub service: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub error: bool,
}

#[derive(Default)]
struct Ring {
    traces: HashMap<String, Vec<Span>>,
    /// Trace ids, the one first seen longest ago first.
    order: VecDeque<String>,
    spans: usize,
}

#[derive(Clone, Default)]
pub struct Traces(Arc<Mutex<Ring>>);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

impl Traces {
    /// Keeps the spans of an OTLP export request; how many it kept.
    pub fn add(&self, request: ExportTraceServiceRequest) -> usize {
        let mut ring = self.0.lock().expect("traces lock");
        let mut kept = 0;
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "unknown".to_string());
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                let trace_id = hex(&span.trace_id);
                let spans = match ring.traces.get_mut(&trace_id) {
                    Some(spans) => spans,
                    None => {
                        ring.order.push_back(trace_id.clone());
                        ring.traces.entry(trace_id.clone()).or_default()
                    }
                };
                if spans.len() >= SPANS_PER_TRACE {
                    continue;
                }
                spans.push(Span {
                    span_id: hex(&span.span_id),
                    parent_id: hex(&span.parent_span_id),
                    name: span.name,
                    service: service.clone(),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano.max(span.start_time_unix_nano),
                    // STATUS_CODE_ERROR
                    error: span.status.is_some_and(|s| s.code == 2),
                });
                ring.spans += 1;
                kept += 1;
            }
        }
        while ring.spans > SPAN_BUDGET {
            let Some(oldest) = ring.order.pop_front() else {
                break;
            };
            if let Some(spans) = ring.traces.remove(&oldest) {
                ring.spans -= spans.len();
            }
        }
        kept
    }

    pub fn get(&self, trace_id: &str) -> Option<Vec<Span>> {
        self.0
            .lock()
            .expect("traces lock")
            .traces
            .get(trace_id)
            .cloned()
    }

    /// The newest traces first: id, root span name, services, spans, duration in ms.
    pub fn recent(&self, n: usize) -> Vec<(String, String, Vec<String>, usize, f64)> {
        let ring = self.0.lock().expect("traces lock");
        ring.order
            .iter()
            .rev()
            .take(n)
            .filter_map(|id| {
                let spans = ring.traces.get(id)?;
                let ids = span_ids(spans);
                let root = spans
                    .iter()
                    .find(|s| is_root(s, &ids))
                    .map_or(String::new(), |s| s.name.clone());
                let mut services: Vec<String> = spans.iter().map(|s| s.service.clone()).collect();
                services.sort();
                services.dedup();
                let start = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
                let end = spans.iter().map(|s| s.end_ns).max().unwrap_or(0);
                Some((
                    id.clone(),
                    root,
                    services,
                    spans.len(),
                    (end - start) as f64 / 1e6,
                ))
            })
            .collect()
    }
}

/// `POST /v1/traces` (OTLP/HTTP, protobuf).
pub async fn receive(traces: Traces, body: Bytes) -> Response {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            traces.add(request);
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-protobuf"),
                )],
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("not an OTLP trace export: {e}"),
        )
            .into_response(),
    }
}

fn span_ids(spans: &[Span]) -> HashSet<&str> {
    spans.iter().map(|s| s.span_id.as_str()).collect()
}

/// A span without a parent, or whose parent is not among `ids` (not received, or in another
/// process's batch still to come).
fn is_root(span: &Span, ids: &HashSet<&str>) -> bool {
    span.parent_id.is_empty() || !ids.contains(span.parent_id.as_str())
}

/// The spans in waterfall order: each after its parent, siblings by start; spans whose
/// parent is not here (not received, or in another process's batch still to come) are
/// roots. With each span its depth.
pub fn waterfall(spans: &[Span]) -> Vec<(usize, &Span)> {
    let ids = span_ids(spans);
    let mut children: HashMap<&str, Vec<&Span>> = HashMap::new();
    let mut roots: Vec<&Span> = Vec::new();
    for s in spans {
        if is_root(s, &ids) {
            roots.push(s);
        } else {
            children.entry(s.parent_id.as_str()).or_default().push(s);
        }
    }
    let by_start = |v: &mut Vec<&Span>| v.sort_by_key(|s| (s.start_ns, s.span_id.clone()));
    by_start(&mut roots);
    children.values_mut().for_each(by_start);
    let mut out = Vec::with_capacity(spans.len());
    let mut stack: Vec<(usize, &Span)> = roots.into_iter().rev().map(|s| (0, s)).collect();
    while let Some((depth, span)) = stack.pop() {
        out.push((depth, span));
        if let Some(kids) = children.get(span.span_id.as_str()) {
            stack.extend(kids.iter().rev().map(|k| (depth + 1, *k)));
        }
    }
    out
}

/// The traces page's table: the newest traces with their root span, services, span count
/// and duration, each linking to its waterfall.
pub fn table(recent: &[(String, String, Vec<String>, usize, f64)]) -> String {
    let mut rows = String::new();
    for (id, root, services, spans, ms) in recent {
        let _ = write!(
            rows,
            "<tr data-testid=\"trace\" data-trace-id=\"{id}\"><td><a href=\"/traces/{id}\"><code>{id}</code></a></td><td>{root}</td><td>{services}</td><td>{spans}</td><td>{ms:.1} ms</td></tr>",
            id = escape(id),
            root = escape(root),
            services = escape(&services.join(", ")),
        );
    }
    format!(
        "<table><caption>The newest traces the console received (OTLP/HTTP); the events page links each event to its own</caption><thead><tr><th scope=\"col\">Trace</th><th scope=\"col\">Root span</th><th scope=\"col\">Services</th><th scope=\"col\">Spans</th><th scope=\"col\">Duration</th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

const ROW: i32 = 26;
const LABEL_W: i32 = 420;
const BAR_W: i32 = 560;

/// A trace's waterfall as SVG: one row per span, its label indented by depth, its bar
/// placed on the trace's time axis.
pub fn svg(spans: &[Span]) -> String {
    let rows = waterfall(spans);
    let start = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.end_ns)
        .max()
        .unwrap_or(start)
        .max(start + 1);
    let scale = BAR_W as f64 / (end - start) as f64;
    let mut services: Vec<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    services.sort();
    services.dedup();
    let mut body = String::new();
    for (i, (depth, s)) in rows.iter().enumerate() {
        let y = i as i32 * ROW;
        let x = LABEL_W as f64 + (s.start_ns - start) as f64 * scale;
        let w = ((s.end_ns - s.start_ns) as f64 * scale).max(1.0);
        let colour = services.iter().position(|x| *x == s.service).unwrap_or(0) % 8;
        let ms = (s.end_ns - s.start_ns) as f64 / 1e6;
        let _ = write!(
            body,
            "<g data-testid=\"span\" data-service=\"{service}\" data-span-id=\"{id}\" data-parent-id=\"{parent}\" data-depth=\"{depth}\" class=\"span service-{colour}{err}\"><title>{service}: {name} ({ms:.1} ms)</title><text x=\"{tx}\" y=\"{ty}\">{service} · {name}</text><rect x=\"{x:.1}\" y=\"{ry}\" width=\"{w:.1}\" height=\"{h}\" rx=\"2\"></rect><text class=\"ms\" x=\"{mx:.1}\" y=\"{ty}\">{ms:.1} ms</text></g>",
            service = escape(&s.service),
            id = escape(&s.span_id),
            parent = escape(&s.parent_id),
            name = escape(&s.name),
            err = if s.error { " error" } else { "" },
            tx = 4 + *depth as i32 * 16,
            ty = y + 17,
            ry = y + 5,
            h = ROW - 10,
            mx = (x + w + 4.0).min((LABEL_W + BAR_W) as f64 - 60.0),
        );
    }
    let height = rows.len() as i32 * ROW + 4;
    let width = LABEL_W + BAR_W + 70;
    format!(
        "<svg class=\"waterfall\" role=\"img\" aria-label=\"The trace's spans over time, each under its parent\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" xmlns=\"http://www.w3.org/2000/svg\">{body}</svg>"
    )
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan};

    use super::*;

    fn export(service: &str, spans: &[(u8, u8, u8, u64, u64)]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(Value::StringValue(service.into())),
                        }),
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: spans
                        .iter()
                        .map(|&(trace, id, parent, start, end)| OtlpSpan {
                            trace_id: vec![trace; 16],
                            span_id: vec![id; 8],
                            parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
                            name: format!("span {id}"),
                            start_time_unix_nano: start,
                            end_time_unix_nano: end,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[tokio::test]
    async fn spans_of_several_services_make_one_nested_trace() {
        let traces = Traces::default();
        // The gateway's root 1, and orders' 2 under it with 3 under that; orders' batch
        // arrives first, as the processes export on their own schedules.
        let body = export("orders", &[(7, 2, 1, 20, 80), (7, 3, 2, 30, 60)]).encode_to_vec();
        let response = receive(traces.clone(), Bytes::from(body)).await;
        assert_eq!(response.status(), StatusCode::OK);
        traces.add(export("gateway", &[(7, 1, 0, 0, 100)]));
        let trace = traces.get(&"07".repeat(16)).unwrap();
        let order: Vec<(usize, &str)> = waterfall(&trace)
            .into_iter()
            .map(|(d, s)| (d, s.service.as_str()))
            .collect();
        assert_eq!(order, vec![(0, "gateway"), (1, "orders"), (2, "orders")]);
        let svg = svg(&trace);
        assert_eq!(svg.matches("data-testid=\"span\"").count(), 3);
        assert!(svg.contains("data-service=\"gateway\""));
        assert!(!svg.contains("style="));
        let bad = receive(traces, Bytes::from_static(b"\xff\xff")).await;
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn the_ring_keeps_its_budget_by_dropping_the_oldest_traces() {
        let traces = Traces::default();
        for t in 0..=(SPAN_BUDGET / 100) as u32 {
            let spans: Vec<OtlpSpan> = (0..100u32)
                .map(|i| OtlpSpan {
                    trace_id: [t.to_be_bytes().to_vec(), vec![0; 12]].concat(),
                    span_id: [i.to_be_bytes().to_vec(), vec![1; 4]].concat(),
                    ..Default::default()
                })
                .collect();
            let mut request = export("svc", &[]);
            request.resource_spans[0].scope_spans[0].spans = spans;
            traces.add(request);
        }
        let ring = traces.0.lock().unwrap();
        assert!(ring.spans <= SPAN_BUDGET, "{}", ring.spans);
        assert!(
            !ring
                .traces
                .contains_key(&hex(&[vec![0; 4], vec![0; 12]].concat())),
            "the oldest went"
        );
        assert_eq!(ring.order.len(), ring.traces.len());
    }
}
