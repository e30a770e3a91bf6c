//! The generated README's "Run it": shell commands, from the spec, that a newcomer pastes
//! against the running system. Each create has a real JSON body (sample values by type; a
//! `ref:` field gets the id its context's create printed, so creates come in the order the
//! references need), a plain ASCII idempotency key (one per run of the block), and the
//! answer it prints. Then it reads what the events made happen:
//! the subscribers' resources, the sagas' subjects and their steps, and a saga subject's
//! later events as the gateway streams them.

use serde::Serialize;

use super::Spec;
use super::model::{Command, Context, FieldType, Saga};

const GATEWAY: &str = "http://127.0.0.1:8080";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// What the step does, as a shell comment (without `# `).
    pub comment: String,
    /// The commands, one or more lines, pasteable as they are.
    pub command: String,
    /// What it prints, with `…` where a value differs from run to run; empty if nothing.
    pub expect: String,
}

/// The steps, in order, for `spec`'s system running locally (deploy/local/up.sh).
pub fn of(spec: &Spec) -> Vec<Step> {
    let mut steps = vec![Step {
        comment: "a token from the local dev issuer (up.sh ran the gateway in dev mode), and a tag for this run's idempotency keys".into(),
        command: "TOKEN=$(${CARGO_TARGET_DIR:-target}/debug/gateway dev-token --sub alice)\nRUN=$(date +%s)".into(),
        expect: String::new(),
    }];
    let created = creation_order(spec);
    for context in &created {
        steps.push(create(context));
    }
    // Each saga whose subject the block creates, with that subject.
    let subjects: Vec<(&Saga, &Context)> = spec
        .sagas
        .iter()
        .filter_map(|saga| {
            let owner = created.iter().find(|c| c.name.kebab == saga.owner.kebab)?;
            Some((saga, *owner))
        })
        .collect();
    // What the events made happen: a subscriber's own resources, and what a saga creates.
    let followers: Vec<&Context> = spec
        .contexts
        .iter()
        .filter(|c| {
            !c.subscribes.is_empty()
                || spec.sagas.iter().any(|s| {
                    s.owner.kebab != c.name.kebab
                        && s.steps
                            .iter()
                            .any(|step| step.creates && step.forward.context.kebab == c.name.kebab)
                })
        })
        .collect();
    if !followers.is_empty() || !spec.sagas.is_empty() {
        steps.push(Step {
            comment: "the events go out through the outbox and the bus; give them a moment".into(),
            command: "sleep 5".into(),
            expect: String::new(),
        });
    }
    for &(saga, owner) in &subjects {
        let var = id_var(owner);
        let path = format!("/v1/{}/${var}", owner.name.kebab);
        let end_state = success_command(saga, owner)
            .and_then(|command| command.to.as_ref())
            .map(|state| state.raw.as_str());
        let end = end_state
            .map(|state| format!(", and the {} is {state}", owner.aggregate.name.pascal))
            .unwrap_or_default();
        steps.push(Step {
            comment: format!(
                "the saga `{}` the {} started, step by step{end}",
                saga.name.raw, owner.aggregate.name.pascal
            ),
            command: [get(&format!("{path}/sagas")), get(&path)].join("\n"),
            expect: format!(
                "{{\"items\":[{{\"id\":\"…\",\"saga\":\"{}\",\"state\":\"completed\",\"steps\":[…],…}}]}}\n{}",
                saga.name.raw,
                resource_json(owner, Some(end_state.unwrap_or("…")), "…")
            ),
        });
    }
    for context in followers {
        steps.push(Step {
            comment: format!(
                "the {} that {} made",
                context.aggregate.plural.pascal,
                if context.subscribes.is_empty() {
                    "the saga"
                } else {
                    "the events"
                }
            ),
            command: get(&format!("/v1/{}", context.name.kebab)),
            expect: "{\"items\":[{\"id\":\"…\",…}],\"next_cursor\":null}".to_string(),
        });
    }
    // A saga's subject changed after its creation: its later events, replayed from the
    // gateway's log after version 1.
    if let Some(&(saga, subject)) = subjects.first() {
        let var = id_var(subject);
        let ended = success_command(saga, subject);
        steps.push(Step {
            comment: format!(
                "the {}'s events after its creation, as the gateway streams them (without --max-time, `curl -N` follows them live)",
                subject.aggregate.name.pascal
            ),
            command: format!(
                "curl -sN --max-time 2 -H \"Authorization: Bearer $TOKEN\" -H \"Last-Event-ID: ${var}:1\" \\\n  {GATEWAY}/v1/{}/${var}/events || true",
                subject.name.kebab
            ),
            expect: match ended {
                Some(command) => format!(
                    "id: …:2\nevent: {}\ndata: {{\"type\":\"{}\",…}}",
                    command.event_type, command.event_type
                ),
                None => String::new(),
            },
        });
    }
    steps
}

/// The owner's command a saga ends with when it completes, if it names one.
fn success_command<'a>(saga: &Saga, owner: &'a Context) -> Option<&'a Command> {
    let name = saga.on_success.as_ref()?.command.as_ref()?;
    owner.commands.iter().find(|c| c.name.raw == name.raw)
}

/// The contexts a newcomer can create over REST, each after the contexts its `ref:`
/// fields name. One with link fields (filled by events) or a reference to a context that
/// cannot be created is left out.
fn creation_order(spec: &Spec) -> Vec<&Context> {
    let mut order: Vec<&Context> = Vec::new();
    let mut pending: Vec<&Context> = spec
        .contexts
        .iter()
        .filter(|c| c.crud.create && !c.all_fields.iter().any(|f| f.link))
        .collect();
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|c| {
            let ready = c.references.iter().all(|f| {
                let target = f.reference.as_ref().map(|r| r.kebab.as_str());
                order.iter().any(|o| Some(o.name.kebab.as_str()) == target)
            });
            if ready {
                order.push(c);
            }
            !ready
        });
        if pending.len() == before {
            break;
        }
    }
    order
}

/// `ITEM_ID`: the shell variable holding a created resource's id.
fn id_var(context: &Context) -> String {
    format!("{}_ID", context.aggregate.name.shouty)
}

fn sample_json(kind: FieldType, field: &str) -> String {
    match kind {
        FieldType::String => format!("\"sample-{}\"", field.replace('_', "-")),
        FieldType::I64 => "4200".into(),
        FieldType::I32 => "1".into(),
        FieldType::Bool => "true".into(),
        FieldType::F64 => "1.5".into(),
    }
}

/// The body of a create: every field, a reference as its context's variable.
fn body(context: &Context) -> String {
    let fields: Vec<String> = context
        .all_fields
        .iter()
        .map(|f| {
            let value = match &f.reference {
                Some(_) => format!(
                    "\"${}\"",
                    f.reference_aggregate
                        .as_ref()
                        .map_or_else(|| "ID".to_string(), |a| format!("{}_ID", a.shouty))
                ),
                None => sample_json(f.kind, &f.name),
            };
            format!("\"{}\": {value}", f.name)
        })
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// The resource as the gateway answers it, `…` for what varies.
fn resource_json(context: &Context, state: Option<&str>, version: &str) -> String {
    let mut parts = vec![
        "\"id\":\"…\"".to_string(),
        "\"created_at\":\"…\"".to_string(),
        format!("\"version\":{version}"),
    ];
    if !context.states.is_empty() {
        parts.push(format!("\"state\":\"{}\"", state.unwrap_or("…")));
    }
    for f in &context.all_fields {
        let value = match &f.reference {
            Some(_) => "\"…\"".to_string(),
            None => sample_json(f.kind, &f.name),
        };
        parts.push(format!("\"{}\":{value}", f.name));
    }
    format!("{{{}}}", parts.join(","))
}

fn create(context: &Context) -> Step {
    let name = context.aggregate.name.shouty.clone();
    let var = id_var(context);
    let command = format!(
        "{name}=$(curl -sf -X POST {GATEWAY}/v1/{kebab} -H \"Authorization: Bearer $TOKEN\" \\\n  \
         -H 'Content-Type: application/json' -H \"Idempotency-Key: run-it-{kebab}-$RUN\" --data-binary @- <<JSON\n\
         {body}\nJSON\n)\n\
         echo \"${name}\"\n\
         {var}=$(echo \"${name}\" | sed 's/.*\"id\":\"\\([^\"]*\\)\".*/\\1/')",
        kebab = context.name.kebab,
        body = body(context),
    );
    Step {
        comment: format!(
            "create {} (sent again with the same key, it answers the first response and creates nothing)",
            crate::inflect::with_article(&context.aggregate.name.pascal)
        ),
        command,
        expect: resource_json(context, context.states.first().map(|s| s.raw.as_str()), "1"),
    }
}

fn get(path: &str) -> String {
    format!("curl -sf -H \"Authorization: Bearer $TOKEN\" {GATEWAY}{path}; echo")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Overrides, parse};

    fn spec(text: &str) -> Spec {
        parse(text, "spec.toml", &Overrides::default()).unwrap()
    }

    fn commands(spec: &Spec) -> String {
        of(spec)
            .iter()
            .map(|s| s.command.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_reference_is_created_first_and_a_context_filled_by_events_is_read_instead() {
        let spec = spec(
            "name = \"shop\"\n[contexts.orders]\nfields = { item_id = \"ref:inventory\", quantity = \"i32\" }\n\
             [contexts.inventory]\naggregate = \"Item\"\nfields = { title = \"string\" }\n\
             [contexts.billing]\nsubscribes = [\"orders.OrderCreated\"]\n",
        );
        let text = commands(&spec);
        let item = text.find("ITEM=$(curl").expect("an item is created");
        let order = text.find("ORDER=$(curl").expect("an order is created");
        assert!(item < order, "{text}");
        assert!(
            text.contains("{\"item_id\": \"$ITEM_ID\", \"quantity\": 1}"),
            "{text}"
        );
        assert!(
            !text.contains("BILLING=$(curl"),
            "billing's link is filled by events: {text}"
        );
        assert!(
            text.contains("http://127.0.0.1:8080/v1/billing; echo"),
            "{text}"
        );
        // Every key is plain ASCII, one per run of the block.
        assert!(
            text.contains("-H \"Idempotency-Key: run-it-orders-$RUN\""),
            "{text}"
        );
    }

    #[test]
    fn a_reference_to_a_context_without_creates_leaves_its_referrer_out() {
        let spec = spec(
            "name = \"shop\"\n[contexts.orders]\nfields = { item_id = \"ref:inventory\" }\n\
             [contexts.inventory]\naggregate = \"Item\"\ncrud = [\"read\"]\n",
        );
        let text = commands(&spec);
        assert!(!text.contains("$(curl -sf -X POST"), "{text}");
    }
}
