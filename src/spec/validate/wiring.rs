//! The links between contexts, resolved once every context's own names are known:
//! subscriptions, calls (declared, implied by a `ref:` field or by a saga), the call
//! graph's cycles, and which queues hear which publisher.

use std::ops::Range;

use super::{Collector, Partial, context_index, known, sagas};
use crate::inflect::Names;
use crate::spec::model::{Context, Dependency, Subscription};
use crate::spec::naming;

/// The synchronous call graph: per context, each callee with the span that made the edge.
pub(super) type CallEdges = Vec<Vec<(usize, Range<usize>)>>;

/// What context `index` subscribes to, each checked against what its publisher publishes.
pub(super) fn subscriptions(
    c: &mut Collector,
    system: &Names,
    partials: &[Partial],
    index: usize,
) -> Vec<Subscription> {
    let find = |name: &str| context_index(partials, name);
    let p = &partials[index];
    let field = format!("contexts.{}", p.key.get_ref());
    let mut subscribes: Vec<Subscription> = Vec::new();
    for s in &p.raw.subscribes {
        let at = format!("{field}.subscribes");
        let Some((ctx_name, event_name)) = s.get_ref().split_once('.') else {
            c.error(
                &at,
                s.span(),
                format!("`{}` is not of the form `<context>.<Event>`", s.get_ref()),
                "write the publishing context and the event, e.g. `orders.OrderCreated`",
            );
            continue;
        };
        let Some(up) = find(ctx_name) else {
            c.error(
                &at,
                s.span(),
                format!(
                    "`{}` refers to an unknown context `{ctx_name}`",
                    s.get_ref()
                ),
                format!("subscribe to one of: {}", known(partials)),
            );
            continue;
        };
        let upstream = &partials[up];
        if up == index {
            c.error(
                &at,
                s.span(),
                format!("`{}` subscribes a context to its own event", s.get_ref()),
                "handle the change inside the context instead of through the bus",
            );
            continue;
        }
        let published = upstream.published();
        let Some(event) = published.iter().find(|e| e.raw == event_name) else {
            let published: Vec<_> = published.iter().map(|e| e.raw.as_str()).collect();
            c.error(
                &at,
                s.span(),
                format!(
                    "`{}`: context `{ctx_name}` does not publish `{event_name}`",
                    s.get_ref()
                ),
                format!(
                    "use one of its events ({}) or add `{event_name}` to its `publishes`",
                    published.join(", ")
                ),
            );
            continue;
        };
        if subscribes
            .iter()
            .any(|x| x.context.snake == upstream.name.snake && x.event.raw == event.raw)
        {
            c.error(
                &at,
                s.span(),
                format!("`{}` is listed twice", s.get_ref()),
                "list each subscription once",
            );
            continue;
        }
        subscribes.push(Subscription {
            context: upstream.name.clone(),
            event: event.clone(),
            upstream_aggregate: upstream.aggregate.clone(),
            link_field: format!("{}_id", upstream.aggregate.snake),
            topic: naming::aggregate_topic(system, &upstream.name, &upstream.aggregate),
            event_type: naming::event_type(system, &upstream.name, event),
            queue: naming::queue(system, &p.name),
            creates: upstream
                .events
                .first()
                .is_some_and(|e| e.pascal == event.pascal),
        });
    }

    subscribes
}

/// The contexts one context calls: its `calls`, then those its `ref:` fields and its sagas
/// imply.
pub(super) struct Dependencies {
    pub calls: Vec<Names>,
    /// `ref:` fields: the field's name and the context it refers to.
    pub references: Vec<(String, usize)>,
}

/// The [`Dependencies`] of context `index`; each callee is an edge of `call_edges`.
pub(super) fn dependencies(
    c: &mut Collector,
    partials: &[Partial],
    index: usize,
    implied: &sagas::Implied,
    call_edges: &mut CallEdges,
) -> Dependencies {
    let find = |name: &str| context_index(partials, name);
    let p = &partials[index];
    let field = format!("contexts.{}", p.key.get_ref());
    let mut calls: Vec<Names> = Vec::new();
    for call in &p.raw.calls {
        let at = format!("{field}.calls");
        match find(call.get_ref()) {
            None => c.error(
                &at,
                call.span(),
                format!("`{}` is not a context of this system", call.get_ref()),
                format!("call one of: {}", known(partials)),
            ),
            Some(dep) if dep == index => c.error(
                &at,
                call.span(),
                format!("`{}` calls itself", call.get_ref()),
                "remove it: a context calls its own code directly",
            ),
            Some(dep) if call_edges[index].iter().any(|(d, _)| *d == dep) => c.error(
                &at,
                call.span(),
                format!("`{}` is listed twice", call.get_ref()),
                "list each dependency once",
            ),
            Some(dep) => {
                call_edges[index].push((dep, call.span()));
                calls.push(partials[dep].name.clone());
            }
        }
    }

    // A ref is a synchronous dependency: it implies `calls` (and takes part in the
    // cycle check) even where `calls` does not list it.
    let mut references = Vec::new();
    for r in &p.refs {
        let at = format!("{field}.fields.{}", r.field);
        match find(&r.target) {
            None => c.error(
                &at,
                r.span.clone(),
                format!("`ref:{}` refers to an unknown context", r.target),
                format!("refer to one of: {}", known(partials)),
            ),
            Some(dep) if dep == index => c.error(
                &at,
                r.span.clone(),
                format!("`ref:{}` refers to the context itself", r.target),
                "an aggregate refers to others of its own kind by a plain `string` field",
            ),
            Some(dep) => {
                if !call_edges[index].iter().any(|(d, _)| *d == dep) {
                    call_edges[index].push((dep, r.span.clone()));
                    calls.push(partials[dep].name.clone());
                }
                references.push((r.field.clone(), dep));
            }
        }
    }

    // A saga's owner calls each of its participants.
    for (_, dep, span) in implied.calls.iter().filter(|(owner, _, _)| *owner == index) {
        if !call_edges[index].iter().any(|(d, _)| d == dep) {
            call_edges[index].push((*dep, span.clone()));
            calls.push(partials[*dep].name.clone());
        }
    }
    Dependencies { calls, references }
}

/// The topics a context consumes: its own when it owns a saga (its events start them),
/// then each subscribed topic once.
pub(super) fn subscribed_topics(
    own: &str,
    owns_a_saga: bool,
    subscribes: &[Subscription],
) -> Vec<String> {
    let mut topics: Vec<String> = Vec::new();
    if owns_a_saga {
        topics.push(own.to_string());
    }
    for s in subscribes {
        if !topics.contains(&s.topic) {
            topics.push(s.topic.clone());
        }
    }
    topics
}

/// Each publisher's `subscriber_queues`: the queue of every context that consumes its
/// topic.
pub(super) fn subscriber_queues(contexts: &mut [Context]) {
    let queues: Vec<Vec<String>> = contexts
        .iter()
        .map(|publisher| {
            let mut queues: Vec<String> = Vec::new();
            for subscriber in contexts.iter() {
                if subscriber.subscribed_topics.contains(&publisher.topic)
                    && !queues.contains(&subscriber.wire.queue)
                {
                    queues.push(subscriber.wire.queue.clone());
                }
            }
            queues
        })
        .collect();
    for (context, queues) in contexts.iter_mut().zip(queues) {
        context.subscriber_queues = queues;
    }
}

/// Fills in both ends of each synchronous call: the callee's client facts on the caller,
/// the caller's name on the callee.
pub(super) fn link_calls(contexts: &mut [Context]) {
    let dependencies: Vec<Vec<Dependency>> = contexts
        .iter()
        .map(|caller| {
            caller
                .calls
                .iter()
                .filter_map(|callee| contexts.iter().find(|c| c.name.snake == callee.snake))
                .map(|callee| Dependency {
                    name: callee.name.clone(),
                    grpc_port: callee.grpc_port,
                    aggregate: callee.aggregate.name.clone(),
                    plural: callee.aggregate.plural.clone(),
                    command_rpcs: callee.commands.iter().map(|c| c.rpc.clone()).collect(),
                })
                .collect()
        })
        .collect();
    let callers: Vec<Vec<Names>> = contexts
        .iter()
        .map(|callee| {
            contexts
                .iter()
                .filter(|c| c.calls.iter().any(|d| d.snake == callee.name.snake))
                .map(|c| c.name.clone())
                .collect()
        })
        .collect();
    for ((context, dependencies), callers) in contexts.iter_mut().zip(dependencies).zip(callers) {
        context.dependencies = dependencies;
        context.callers = callers;
    }
}

/// Refuses a cycle of synchronous calls: a chain adds up its callees' p99s, so a cycle has
/// no latency bound.
pub(super) fn check_cycles(c: &mut Collector, partials: &[Partial], call_edges: &CallEdges) {
    if let Some((path, span)) = find_cycle(call_edges) {
        let names: Vec<&str> = path
            .iter()
            .map(|&i| partials[i].key.get_ref().as_str())
            .collect();
        let sum: Vec<String> = path[1..]
            .iter()
            .map(|&i| format!("p99({})", partials[i].key.get_ref()))
            .collect();
        c.error(
            format!("contexts.{}.calls", names[names.len() - 2]),
            span,
            format!(
                "synchronous calls form a cycle {}; a call chain adds up its p99s (p99({}) includes {}), so a cycle has no latency bound",
                names.join(" -> "),
                names[0],
                sum.join(" + ")
            ),
            "break the cycle: let one side publish an event and the other `subscribes` to it",
        );
    }
}

/// Depth-first search for a cycle; returns its path (first node repeated at the end) and
/// the span of the call that closes it.
fn find_cycle(edges: &CallEdges) -> Option<(Vec<usize>, Range<usize>)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        node: usize,
        edges: &[Vec<(usize, Range<usize>)>],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Option<(Vec<usize>, Range<usize>)> {
        marks[node] = Mark::Active;
        stack.push(node);
        for (next, span) in &edges[node] {
            match marks[*next] {
                Mark::Active => {
                    let start = stack.iter().position(|n| n == next).expect("on stack");
                    let mut path = stack[start..].to_vec();
                    path.push(*next);
                    return Some((path, span.clone()));
                }
                Mark::New => {
                    if let Some(found) = visit(*next, edges, marks, stack) {
                        return Some(found);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[node] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; edges.len()];
    for start in 0..edges.len() {
        if marks[start] == Mark::New {
            let mut stack = Vec::new();
            if let Some(found) = visit(start, edges, &mut marks, &mut stack) {
                return Some(found);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::spec::{Overrides, Spec, parse};

    fn spec(text: &str) -> Result<Spec, Vec<String>> {
        match parse(text, "spec.toml", &Overrides::default()) {
            Ok(spec) => Ok(spec),
            Err(Error::Invalid(diagnostics)) => Err(diagnostics
                .iter()
                .map(|d| format!("{}: {}", d.field, d.message))
                .collect()),
            Err(e) => panic!("{e}"),
        }
    }

    const SHOP: &str = "name = \"shop\"\n[contexts.orders]\n[contexts.billing]\nsubscribes = [\"orders.OrderCreated\"]\n[contexts.shipping]\nsubscribes = [\"orders.OrderCreated\", \"billing.BillingCreated\"]\ncalls = [\"billing\"]\nfields = { order_id = \"ref:orders\" }\n";

    #[test]
    fn subscriptions_name_their_topic_and_whether_they_create() {
        let spec = spec(SHOP).unwrap();
        let shipping = &spec.contexts[2];
        let subs: Vec<(&str, &str, bool)> = shipping
            .subscribes
            .iter()
            .map(|s| (s.context.raw.as_str(), s.topic.as_str(), s.creates))
            .collect();
        assert_eq!(
            subs,
            [
                ("orders", "shop.orders.order.v1", true),
                ("billing", "shop.billing.billing.v1", true)
            ]
        );
        assert_eq!(
            shipping.subscribed_topics,
            ["shop.orders.order.v1", "shop.billing.billing.v1"]
        );
        // Orders' topic is heard by billing's and shipping's queues.
        assert_eq!(
            spec.contexts[0].subscriber_queues,
            ["shop-billing.fifo", "shop-shipping.fifo"]
        );
    }

    #[test]
    fn a_bad_subscription_is_named_and_the_rest_still_checked() {
        let problems = spec(&SHOP.replace(
            "subscribes = [\"orders.OrderCreated\"]\n",
            "subscribes = [\"orders\", \"nowhere.X\", \"billing.BillingCreated\", \"orders.OrderShipped\", \"orders.OrderCreated\", \"orders.OrderCreated\"]\n",
        ))
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "contexts.billing.subscribes: `orders` is not of the form `<context>.<Event>`",
                "contexts.billing.subscribes: `nowhere.X` refers to an unknown context `nowhere`",
                "contexts.billing.subscribes: `billing.BillingCreated` subscribes a context to its own event",
                "contexts.billing.subscribes: `orders.OrderShipped`: context `orders` does not publish `OrderShipped`",
                "contexts.billing.subscribes: `orders.OrderCreated` is listed twice",
            ]
        );
    }

    #[test]
    fn calls_come_first_then_the_refs_that_imply_one() {
        let spec = spec(SHOP).unwrap();
        let calls: Vec<&str> = spec.contexts[2]
            .calls
            .iter()
            .map(|c| c.raw.as_str())
            .collect();
        assert_eq!(calls, ["billing", "orders"]);
        let callers: Vec<&str> = spec.contexts[1]
            .callers
            .iter()
            .map(|c| c.raw.as_str())
            .collect();
        assert_eq!(callers, ["shipping"]);
        assert_eq!(
            spec.contexts[2].dependencies[1].grpc_port,
            spec.contexts[0].grpc_port
        );
    }

    #[test]
    fn a_cycle_of_calls_is_refused_with_its_path() {
        let problems = spec(&SHOP.replace(
            "[contexts.billing]\n",
            "[contexts.billing]\ncalls = [\"shipping\"]\n",
        ))
        .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("contexts.shipping.calls: synchronous calls form a cycle billing -> shipping -> billing"),
            "{problems:?}"
        );
    }
}
