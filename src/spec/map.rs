//! The system's map as the console draws it: which context calls which, which topics
//! carry whose events to whom, and which contexts a saga's steps reach. Derived from the
//! model once; the console binary's topology is rendered from it.

use serde::Serialize;

use super::model::Spec;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapEdge {
    pub from: String,
    pub to: String,
    /// `call`, `event` or `saga`.
    pub kind: &'static str,
    /// The same as the `platform::console::EdgeKind` variant: `Call`.
    pub variant: &'static str,
}

fn edge(from: &str, to: &str, kind: &'static str) -> MapEdge {
    let variant = match kind {
        "call" => "Call",
        "event" => "Event",
        _ => "Saga",
    };
    MapEdge {
        from: from.to_string(),
        to: to.to_string(),
        kind,
        variant,
    }
}

/// Every edge once: the `calls` between contexts, each context's events to its topic and
/// from a topic to each subscriber, and each saga's owner to the contexts its steps call.
/// The gateway's calls to every context are implied and not listed.
pub fn edges(spec: &Spec) -> Vec<MapEdge> {
    let mut edges: Vec<MapEdge> = Vec::new();
    let mut add = |e: MapEdge| {
        if !edges.contains(&e) {
            edges.push(e);
        }
    };
    for c in &spec.contexts {
        for callee in &c.calls {
            add(edge(&c.name.kebab, &callee.kebab, "call"));
        }
    }
    for c in &spec.contexts {
        add(edge(&c.name.kebab, &c.topic, "event"));
        for s in &c.subscribes {
            add(edge(&s.topic, &c.name.kebab, "event"));
        }
    }
    for saga in &spec.sagas {
        for step in &saga.steps {
            if step.forward.context.kebab != saga.owner.kebab {
                add(edge(&saga.owner.kebab, &step.forward.context.kebab, "saga"));
            }
        }
    }
    edges
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Overrides, parse};

    fn kinds(edges: &[MapEdge], kind: &str) -> Vec<(String, String)> {
        edges
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| (e.from.clone(), e.to.clone()))
            .collect()
    }

    #[test]
    fn the_checkout_example_has_its_calls_its_topics_and_its_saga_edges_once_each() {
        let text = include_str!("../../examples/checkout.toml");
        let spec = parse(text, "checkout.toml", &Overrides::default()).unwrap();
        let edges = edges(&spec);
        let calls = kinds(&edges, "call");
        assert!(
            calls.contains(&("orders".into(), "payments".into())),
            "{calls:?}"
        );
        assert_eq!(
            kinds(&edges, "event").len(),
            spec.contexts.len(),
            "one topic each, no subscriber"
        );
        let saga = kinds(&edges, "saga");
        assert!(!saga.is_empty());
        assert!(saga.iter().all(|(from, _)| from == "orders"), "{saga:?}");
        for (i, e) in edges.iter().enumerate() {
            assert!(!edges[..i].contains(e), "{e:?} twice");
        }
    }

    #[test]
    fn a_subscription_is_an_event_edge_from_the_publishers_topic() {
        let spec = parse(
            "name = \"shop\"\n[contexts.orders]\n[contexts.billing]\nsubscribes = [\"orders.OrderCreated\"]\n",
            "spec.toml",
            &Overrides::default(),
        )
        .unwrap();
        let events = kinds(&edges(&spec), "event");
        let topic = spec.contexts[0].topic.clone();
        assert_eq!(
            events,
            vec![
                ("orders".to_string(), topic.clone()),
                ("billing".to_string(), spec.contexts[1].topic.clone()),
                (topic, "billing".to_string()),
            ]
        );
    }
}
