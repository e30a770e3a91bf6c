//! The map: an SVG laid out here from the spec, in three columns (the gateway, the
//! contexts, their topics). Calls run from the gateway to every context and between
//! contexts (arcs on the right of the contexts), events from a context to its topic and
//! from a topic to each subscriber, saga steps from the owner to each participant (dashed
//! arcs on the left). Each node carries its live health in `data-health`, which the page's
//! script updates from the `health` snapshots.

use std::fmt::Write;

use super::page::escape;
use super::probe::{Health, NodeStatus, Stats};
use super::{EdgeKind, GATEWAY, Topology};

const NODE_W: i32 = 200;
/// Topics are named `<system>.<context>.<aggregate>.v1`: wider.
const TOPIC_W: i32 = 280;
const NODE_H: i32 = 64;
const ROW: i32 = 96;
const MARGIN: i32 = 24;
const GATEWAY_X: i32 = MARGIN;
const CONTEXT_X: i32 = 320;
const TOPIC_X: i32 = 680;
const WIDTH: i32 = TOPIC_X + TOPIC_W + MARGIN;

fn stats_text(stats: &Stats) -> String {
    let rate = stats.rate.map_or("–".to_string(), |r| format!("{r:.1}/s"));
    let errors = stats
        .errors
        .map_or("–".to_string(), |e| format!("{:.1}%", e * 100.0));
    let p99 = stats
        .p99_ms
        .map_or("–".to_string(), |p| format!("≤{p:.0} ms"));
    format!("{rate} · err {errors} · p99 {p99}")
}

fn health_of<'a>(statuses: &'a [NodeStatus], name: &str) -> (Health, Option<&'a Stats>) {
    statuses
        .iter()
        .find(|s| s.name == name)
        .map_or((Health::Unknown, None), |s| (s.health, Some(&s.stats)))
}

/// The vertical centre of row `i` of `n` in a map `rows` tall.
fn centre(i: usize, n: usize, rows: usize) -> i32 {
    let offset = (rows - n) as i32 * ROW / 2;
    MARGIN + offset + i as i32 * ROW + NODE_H / 2
}

fn node(
    out: &mut String,
    testid: &str,
    name: &str,
    (x, cy, width): (i32, i32, i32),
    health: Option<(Health, Option<&Stats>)>,
) {
    let name_html = escape(name);
    let (attrs, class, stats) = match health {
        Some((health, stats)) => (
            format!(" data-health=\"{}\"", health.as_str()),
            format!("node health-{}", health.as_str()),
            format!(
                "<text class=\"stats\" x=\"12\" y=\"48\" data-stats>{}</text>",
                escape(&stats_text(stats.unwrap_or(&Stats::default())))
            ),
        ),
        None => (String::new(), "node topic".to_string(), String::new()),
    };
    let _ = write!(
        out,
        "<g data-testid=\"{testid}\" data-name=\"{name_html}\"{attrs} class=\"{class}\" transform=\"translate({x},{y})\"><title>{name_html}</title><rect width=\"{width}\" height=\"{NODE_H}\" rx=\"8\"></rect><text class=\"label\" x=\"12\" y=\"26\">{name_html}</text>{stats}</g>",
        y = cy - NODE_H / 2
    );
}

/// The map's SVG, with `statuses` as the health to start from.
pub fn svg(topology: &Topology, statuses: &[NodeStatus]) -> String {
    let topics = topology.topics();
    let contexts = topology.contexts;
    let rows = contexts.len().max(topics.len()).max(1);
    let height = MARGIN * 2 + rows as i32 * ROW - (ROW - NODE_H);
    let context_y = |name: &str| {
        contexts
            .iter()
            .position(|c| c.name == name)
            .map(|i| centre(i, contexts.len(), rows))
    };
    let topic_y = |name: &str| {
        topics
            .iter()
            .position(|t| *t == name)
            .map(|i| centre(i, topics.len(), rows))
    };
    let gateway_y = centre(0, 1, rows);

    let mut edges = String::new();
    let mut edge = |from: &str, to: &str, kind: EdgeKind, d: String| {
        let _ = write!(
            edges,
            "<path data-testid=\"edge\" data-from=\"{f}\" data-to=\"{t}\" data-kind=\"{k}\" class=\"edge edge-{k}\" d=\"{d}\" marker-end=\"url(#arrow-{k})\"><title>{f} → {t} ({k})</title></path>",
            f = escape(from),
            t = escape(to),
            k = kind.as_str()
        );
    };
    for (i, c) in contexts.iter().enumerate() {
        let y = centre(i, contexts.len(), rows);
        edge(
            GATEWAY,
            c.name,
            EdgeKind::Call,
            format!("M{} {gateway_y} L{CONTEXT_X} {y}", GATEWAY_X + NODE_W),
        );
    }
    for (n, e) in topology.edges.iter().enumerate() {
        let bend = 40 + (n % 4) as i32 * 16;
        let d = match e.kind {
            EdgeKind::Call => match (context_y(e.from), context_y(e.to)) {
                (Some(a), Some(b)) => {
                    let x = CONTEXT_X + NODE_W;
                    format!("M{x} {a} C{c} {a} {c} {b} {x} {b}", c = x + bend)
                }
                _ => continue,
            },
            EdgeKind::Saga => match (context_y(e.from), context_y(e.to)) {
                (Some(a), Some(b)) => {
                    let x = CONTEXT_X;
                    format!("M{x} {a} C{c} {a} {c} {b} {x} {b}", c = x - bend)
                }
                _ => continue,
            },
            EdgeKind::Event => match (context_y(e.from), topic_y(e.to)) {
                // A context publishing to its topic.
                (Some(a), Some(b)) => format!("M{} {a} L{TOPIC_X} {b}", CONTEXT_X + NODE_W),
                // A topic delivering to a subscriber: below the straight lines.
                _ => match (topic_y(e.from), context_y(e.to)) {
                    (Some(a), Some(b)) => format!(
                        "M{TOPIC_X} {a2} C{c1} {a2} {c2} {b2} {x} {b2}",
                        a2 = a + 16,
                        b2 = b + 16,
                        c1 = TOPIC_X - 80,
                        c2 = CONTEXT_X + NODE_W + 80,
                        x = CONTEXT_X + NODE_W
                    ),
                    _ => continue,
                },
            },
        };
        edge(e.from, e.to, e.kind, d);
    }

    let mut nodes = String::new();
    node(
        &mut nodes,
        "gateway",
        GATEWAY,
        (GATEWAY_X, gateway_y, NODE_W),
        Some(health_of(statuses, GATEWAY)),
    );
    for (i, c) in contexts.iter().enumerate() {
        node(
            &mut nodes,
            "context",
            c.name,
            (CONTEXT_X, centre(i, contexts.len(), rows), NODE_W),
            Some(health_of(statuses, c.name)),
        );
    }
    for (i, t) in topics.iter().enumerate() {
        node(
            &mut nodes,
            "topic",
            t,
            (TOPIC_X, centre(i, topics.len(), rows), TOPIC_W),
            None,
        );
    }
    let markers: String = ["call", "event", "saga"]
        .iter()
        .map(|k| format!("<marker id=\"arrow-{k}\" class=\"arrow-{k}\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto-start-reverse\"><path d=\"M0 0 L10 5 L0 10 z\"></path></marker>"))
        .collect();
    format!(
        "<svg class=\"map\" role=\"img\" aria-labelledby=\"map-title\" viewBox=\"0 0 {WIDTH} {height}\" width=\"{WIDTH}\" height=\"{height}\" xmlns=\"http://www.w3.org/2000/svg\"><title id=\"map-title\">The services of {system}, their calls, events and sagas</title><defs>{markers}</defs><g class=\"edges\">{edges}</g><g class=\"nodes\">{nodes}</g></svg>",
        system = escape(topology.system)
    )
}

/// The same facts as a table: what a screen reader reads, and where the figures are exact.
pub fn table(topology: &Topology, statuses: &[NodeStatus]) -> String {
    let mut rows = String::new();
    let names = std::iter::once(GATEWAY).chain(topology.contexts.iter().map(|c| c.name));
    for name in names {
        let (health, stats) = health_of(statuses, name);
        let _ = write!(
            rows,
            "<tr data-testid=\"node-row\" data-name=\"{n}\"><th scope=\"row\">{n}</th><td data-health-text>{h}</td><td data-stats>{s}</td></tr>",
            n = escape(name),
            h = health.as_str().replace('_', " "),
            s = escape(&stats_text(stats.unwrap_or(&Stats::default())))
        );
    }
    format!(
        "<table class=\"nodes\"><caption>Health and figures of the last interval (rate · server errors · p99)</caption><thead><tr><th scope=\"col\">Node</th><th scope=\"col\">Health</th><th scope=\"col\">Figures</th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::{ContextNode, Edge};

    const CONTEXTS: &[ContextNode] = &[
        ContextNode {
            name: "orders",
            health_service: "shop.orders.v1.OrdersService",
            grpc_addr: "127.0.0.1:50051",
            metrics_addr: "127.0.0.1:9101",
            topic: "shop.orders.order",
            lists_sagas: false,
            admin_scope: "orders:admin",
        },
        ContextNode {
            name: "billing",
            health_service: "shop.billing.v1.BillingService",
            grpc_addr: "127.0.0.1:50052",
            metrics_addr: "127.0.0.1:9102",
            topic: "shop.billing.invoice",
            lists_sagas: false,
            admin_scope: "billing:admin",
        },
    ];
    const EDGES: &[Edge] = &[
        Edge {
            from: "orders",
            to: "billing",
            kind: EdgeKind::Call,
        },
        Edge {
            from: "orders",
            to: "shop.orders.order",
            kind: EdgeKind::Event,
        },
        Edge {
            from: "shop.orders.order",
            to: "billing",
            kind: EdgeKind::Event,
        },
        Edge {
            from: "orders",
            to: "billing",
            kind: EdgeKind::Saga,
        },
    ];

    #[test]
    fn every_context_and_edge_of_the_topology_is_drawn_with_its_health() {
        let topology = Topology {
            system: "shop",
            group: "shop.console",
            contexts: CONTEXTS,
            edges: EDGES,
        };
        let statuses = vec![NodeStatus {
            name: "billing".into(),
            health: Health::NotServing,
            stats: Stats::default(),
        }];
        let svg = svg(&topology, &statuses);
        assert_eq!(svg.matches("data-testid=\"context\"").count(), 2);
        assert!(
            svg.contains("data-name=\"billing\" data-health=\"not_serving\""),
            "{svg}"
        );
        assert!(svg.contains("data-name=\"orders\" data-health=\"unknown\""));
        // The gateway's calls, then each edge of the spec once.
        assert_eq!(svg.matches("data-testid=\"edge\"").count(), 2 + EDGES.len());
        for e in EDGES {
            let hook = format!(
                "data-from=\"{}\" data-to=\"{}\" data-kind=\"{}\"",
                e.from,
                e.to,
                e.kind.as_str()
            );
            assert_eq!(svg.matches(&hook).count(), 1, "{hook}");
        }
        assert_eq!(svg.matches("data-testid=\"topic\"").count(), 2);
        assert!(!svg.contains("style="), "inline styles break the CSP");
    }
}
