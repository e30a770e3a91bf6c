//! `[sagas.<name>]`: resolved in two steps. `implied` runs before the contexts are built,
//! since a saga changes them: its owner calls every participant (the calls are implied,
//! like a `ref:`'s, and take part in the cycle check), a participant it creates carries a
//! link to the subject (`<subject>_id`), and the owner consumes its own starting events.
//! `build` then checks every step against the built contexts and fills in each call.

use std::ops::Range;

use indexmap::IndexMap;
use toml::Spanned;

use super::{Collector, Partial, context_index, known};
use crate::inflect::{Names, with_article};
use crate::spec::model::{Context, FieldType, Saga, SagaCall, SagaCallSite, SagaInput, SagaStep};
use crate::spec::names::check_field_name;
use crate::spec::raw::{RawSaga, RawStep};

pub type RawSagas = IndexMap<Spanned<String>, Spanned<RawSaga>>;

/// What sagas add to the contexts before they are built (indices into the partials).
#[derive(Default)]
pub struct Implied {
    /// (owner, participant, where the step names it).
    pub calls: Vec<(usize, usize, Range<usize>)>,
    /// (participant, owner): the participant's aggregate links to the owner's.
    pub links: Vec<(usize, usize)>,
    pub owners: Vec<usize>,
}

/// The context a step names: by context name, or by its aggregate's plural
/// (`create = "payments"` for a context `billing` whose aggregate is `Payment`).
fn participant(partials: &[Partial], name: &str) -> Option<usize> {
    context_index(partials, name).or_else(|| {
        let snake = Names::new(name).snake;
        partials
            .iter()
            .position(|p| crate::inflect::plural(&p.aggregate.snake) == snake)
    })
}

fn owner(partials: &[Partial], saga: &RawSaga) -> Option<usize> {
    context_index(partials, saga.owner.get_ref())
}

/// The context of a step, and its span: `create`'s, or the part of `command` before the dot.
fn step_context(step: &RawStep) -> Option<(&str, Range<usize>)> {
    if let Some(create) = &step.create {
        return Some((create.get_ref(), create.span()));
    }
    let command = step.command.as_ref()?;
    let (context, _) = command.get_ref().split_once('.')?;
    Some((context, command.span()))
}

/// Resolves only what the contexts need; every problem is reported by [`build`].
pub fn implied(partials: &[Partial], sagas: &RawSagas) -> Implied {
    let mut implied = Implied::default();
    for saga in sagas.values() {
        let saga = saga.get_ref();
        let Some(owner) = owner(partials, saga) else {
            continue;
        };
        if !implied.owners.contains(&owner) {
            implied.owners.push(owner);
        }
        for step in saga.steps.get_ref() {
            let step = step.get_ref();
            let Some((name, span)) = step_context(step) else {
                continue;
            };
            let Some(to) = participant(partials, name).filter(|to| *to != owner) else {
                continue;
            };
            if !implied
                .calls
                .iter()
                .any(|(o, t, _)| (*o, *t) == (owner, to))
            {
                implied.calls.push((owner, to, span));
            }
            if step.create.is_some() && !implied.links.contains(&(to, owner)) {
                implied.links.push((to, owner));
            }
        }
    }
    implied
}

/// `30s`, `2m`, `1500ms`, `1h`: in milliseconds, from 1 s to 24 h.
fn parse_timeout(text: &str) -> Option<u64> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let value: u64 = digits.parse().ok()?;
    let ms = match unit {
        "ms" => value,
        "s" => value.checked_mul(1000)?,
        "m" => value.checked_mul(60_000)?,
        "h" => value.checked_mul(3_600_000)?,
        _ => return None,
    };
    (1000..=86_400_000).contains(&ms).then_some(ms)
}

/// Milliseconds in the largest unit that writes them exactly.
pub fn format_timeout(ms: u64) -> String {
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Where a request field's value comes from (one of `SagaInput`'s flags).
enum Source {
    Subject(String),
    SubjectId,
    Reason,
    Empty,
}

fn saga_input(field: String, kind: FieldType, source: Source) -> SagaInput {
    SagaInput {
        field,
        kind,
        subject_id: matches!(source, Source::SubjectId),
        reason: matches!(source, Source::Reason),
        empty: matches!(source, Source::Empty),
        subject_field: match source {
            Source::Subject(name) => Some(name),
            _ => None,
        },
    }
}

struct Checker<'c, 's, 'a> {
    c: &'c mut Collector<'s, 'a>,
    partials: &'c [Partial<'c>],
    contexts: &'c [Context],
    field: String,
}

impl Checker<'_, '_, '_> {
    fn names(&self, list: impl Iterator<Item = String>) -> String {
        let all: Vec<String> = list.map(|n| format!("`{n}`")).collect();
        if all.is_empty() {
            "none yet".to_string()
        } else {
            all.join(", ")
        }
    }

    /// The subject's `ref:` fields to `target`, as a list for a message.
    fn refs_to(&self, subject: &Context, target: &Context) -> String {
        self.names(
            subject
                .references
                .iter()
                .filter(|f| {
                    f.reference
                        .as_ref()
                        .is_some_and(|r| r.snake == target.name.snake)
                })
                .map(|f| f.name.clone()),
        )
    }

    /// The request fields of `command` on `target`, each filled from the subject's field of
    /// the same name or, for a string the subject lacks, with the saga's reason.
    fn command_call(
        &mut self,
        at: &str,
        span: Range<usize>,
        subject: &Context,
        target: &Context,
        command: &str,
    ) -> Option<SagaCall> {
        let Some(cmd) = target
            .commands
            .iter()
            .find(|c| c.name.raw == command || c.name.snake == Names::new(command).snake)
        else {
            let known = self.names(target.commands.iter().map(|c| c.name.raw.clone()));
            self.c.error(
                at,
                span,
                format!(
                    "`{command}` is not a command of {} (context `{}`)",
                    target.aggregate.name.pascal, target.name.raw
                ),
                format!(
                    "use one of its commands ({known}), or add `[contexts.{}.commands.{command}]`",
                    target.name.raw
                ),
            );
            return None;
        };
        let mut inputs = Vec::new();
        for input in &cmd.inputs {
            match subject.all_fields.iter().find(|f| f.name == input.name) {
                Some(f) if f.kind == input.kind => inputs.push(saga_input(
                    input.name.clone(),
                    input.kind,
                    Source::Subject(f.name.clone()),
                )),
                Some(f) => {
                    self.c.error(
                        at,
                        span.clone(),
                        format!(
                            "`{}` of `{}.{}` is {}, but the subject's `{}` is {}",
                            input.name,
                            target.name.raw,
                            cmd.name.raw,
                            input.kind.as_str(),
                            f.name,
                            f.kind.as_str()
                        ),
                        "give both the same type, or rename one of them",
                    );
                }
                None if input.kind == FieldType::String => {
                    inputs.push(saga_input(input.name.clone(), input.kind, Source::Reason))
                }
                None => {
                    self.c.error(
                        at,
                        span.clone(),
                        format!(
                            "`{}.{}` needs `{}` ({}), which {} does not have",
                            target.name.raw, cmd.name.raw, input.name, input.kind.as_str(), subject.aggregate.name.pascal
                        ),
                        format!(
                            "add `{} = \"{}\"` to the fields of `{}`: the saga fills a command's fields from the subject's fields of the same name",
                            input.name, input.kind.as_str(), subject.name.raw
                        ),
                    );
                }
            }
        }
        Some(SagaCall {
            context: target.name.clone(),
            aggregate: target.aggregate.name.clone(),
            command: Some(cmd.name.clone()),
            rpc: cmd.rpc.clone(),
            inputs,
        })
    }

    /// A create of `target`'s aggregate: every field the subject's of the same name, the link
    /// to the subject its id.
    fn create_call(
        &mut self,
        at: &str,
        span: Range<usize>,
        subject: &Context,
        target: &Context,
    ) -> Option<SagaCall> {
        let link = format!("{}_id", subject.aggregate.name.snake);
        let mut inputs = Vec::new();
        let mut ok = true;
        for field in &target.all_fields {
            if field.name == link {
                inputs.push(saga_input(
                    field.name.clone(),
                    field.kind,
                    Source::SubjectId,
                ));
                continue;
            }
            if field.link {
                // Another upstream's link: empty, as for a create through the API.
                inputs.push(saga_input(field.name.clone(), field.kind, Source::Empty));
                continue;
            }
            match subject.all_fields.iter().find(|f| f.name == field.name) {
                Some(f) if f.kind == field.kind => inputs.push(saga_input(
                    field.name.clone(),
                    field.kind,
                    Source::Subject(f.name.clone()),
                )),
                found => {
                    ok = false;
                    let why = match found {
                        Some(f) => format!("its `{}` is {}", f.name, f.kind.as_str()),
                        None => "it has no such field".to_string(),
                    };
                    self.c.error(
                        at,
                        span.clone(),
                        format!(
                            "creating {} needs `{}` ({}), which {} cannot fill: {why}",
                            with_article(&target.aggregate.name.pascal), field.name, field.kind.as_str(), subject.aggregate.name.pascal
                        ),
                        format!(
                            "add `{} = \"{}\"` to the fields of `{}` (a create copies the subject's fields of the same name), or remove the field from `{}`",
                            field.name, field.kind.as_str(), subject.name.raw, target.name.raw
                        ),
                    );
                }
            }
        }
        ok.then(|| SagaCall {
            context: target.name.clone(),
            aggregate: target.aggregate.name.clone(),
            command: None,
            rpc: Names::new(&format!("Create{}", target.aggregate.name.pascal)),
            inputs,
        })
    }

    fn step(&mut self, index: usize, raw: &Spanned<RawStep>, owner: usize) -> Option<SagaStep> {
        let at = format!("{}.steps[{index}]", self.field);
        let step = raw.get_ref();
        let subject = &self.contexts[owner];
        let (target, creates, command_name) = match (&step.create, &step.command) {
            (Some(_), Some(_)) | (None, None) => {
                self.c.error(
                    &at,
                    raw.span(),
                    "a step needs exactly one of `create` and `command`",
                    "write `{ create = \"<context>\" }` or `{ command = \"<context>.<command>\", on = \"<ref field>\" }`",
                );
                return None;
            }
            (Some(create), None) => {
                if let Some(on) = &step.on {
                    self.c.error(
                        &at,
                        on.span(),
                        "`on` belongs to a `command` step",
                        "remove it: a create makes a new aggregate",
                    );
                }
                match participant(self.partials, create.get_ref()) {
                    Some(i) => (i, true, None),
                    None => {
                        self.c.error(
                            &at,
                            create.span(),
                            format!("`{}` is not a context of this system", create.get_ref()),
                            format!("create in one of: {}", known(self.partials)),
                        );
                        return None;
                    }
                }
            }
            (None, Some(command)) => {
                let Some((context, name)) = command.get_ref().split_once('.') else {
                    self.c.error(
                        &at,
                        command.span(),
                        format!(
                            "`{}` is not of the form `<context>.<command>`",
                            command.get_ref()
                        ),
                        "name the context and its command, e.g. `inventory.reserve`",
                    );
                    return None;
                };
                match participant(self.partials, context) {
                    Some(i) => (i, false, Some((name.to_string(), command.span()))),
                    None => {
                        self.c.error(
                            &at,
                            command.span(),
                            format!("`{context}` is not a context of this system"),
                            format!("run a command of one of: {}", known(self.partials)),
                        );
                        return None;
                    }
                }
            }
        };
        let target_ctx = &self.contexts[target];
        let span = step_context(step).map_or(raw.span(), |(_, s)| s);
        if target == owner {
            self.c.error(
                &at,
                span,
                format!("the step runs in the owner `{}` itself", subject.name.raw),
                "a saga's steps are in other contexts; change the subject itself with `on_success` or `on_failure`",
            );
            return None;
        }
        let mut on = None;
        let forward = if creates {
            self.create_call(&at, span.clone(), subject, target_ctx)?
        } else {
            let (name, command_span) = command_name.expect("a command step");
            let Some(field) = &step.on else {
                let refs = self.refs_to(subject, target_ctx);
                self.c.error(
                    &at,
                    command_span,
                    format!(
                        "the command step `{}` does not say which {} it runs on",
                        step.command.as_ref().expect("a command step").get_ref(),
                        target_ctx.aggregate.name.pascal
                    ),
                    format!(
                        "add `on = \"<field>\"`, a `ref:{}` field of {} (it has: {refs})",
                        target_ctx.name.raw, subject.aggregate.name.pascal
                    ),
                );
                return None;
            };
            let is_ref = subject
                .all_fields
                .iter()
                .find(|f| &f.name == field.get_ref())
                .map(|f| f.reference.as_ref().map(|r| r.snake.clone()));
            match is_ref {
                Some(Some(r)) if r == target_ctx.name.snake => {}
                _ => {
                    let refs = self.refs_to(subject, target_ctx);
                    self.c.error(
                        format!("{at}.on"),
                        field.span(),
                        format!("`{}` is not a `ref:{}` field of {}", field.get_ref(), target_ctx.name.raw, subject.aggregate.name.pascal),
                        format!(
                            "name a field that holds the id of {} ({refs}), or add one: `{}_id = \"ref:{}\"` in the fields of `{}`",
                            with_article(&target_ctx.aggregate.name.pascal), target_ctx.aggregate.name.snake, target_ctx.name.raw, subject.name.raw
                        ),
                    );
                    return None;
                }
            }
            on = Some(field.get_ref().clone());
            self.command_call(&at, command_span, subject, target_ctx, &name)?
        };
        let compensate = match &step.compensate {
            None => None,
            Some(name) => Some(self.command_call(
                &format!("{at}.compensate"),
                name.span(),
                subject,
                target_ctx,
                name.get_ref(),
            )?),
        };
        let label = match &forward.command {
            None => format!("create {}", target_ctx.name.raw),
            Some(cmd) => format!("{}.{}", target_ctx.name.raw, cmd.raw),
        };
        Some(SagaStep {
            index,
            label,
            creates,
            on,
            forward,
            compensate,
        })
    }
}

fn reads_subject(call: &SagaCall) -> bool {
    call.inputs
        .iter()
        .any(|i| i.subject_field.is_some() || i.subject_id)
}

/// Every call of a saga once, with the name of the function that makes it.
fn call_sites(
    name: &Names,
    steps: &[SagaStep],
    on_success: Option<&SagaCall>,
    on_failure: Option<&SagaCall>,
) -> Vec<SagaCallSite> {
    let mut sites = Vec::new();
    for step in steps {
        let directions = [
            ("forward", Some(&step.forward)),
            ("compensate", step.compensate.as_ref()),
        ];
        for (role, call) in directions {
            let Some(call) = call else { continue };
            let target_field = if step.creates { None } else { step.on.clone() };
            sites.push(SagaCallSite {
                uses_subject: target_field.is_some() || reads_subject(call),
                role: role.to_string(),
                step: Some(step.index),
                function: format!("{}_{}_{role}", name.snake, step.index),
                local: false,
                // A create's compensation runs on what it created.
                target_field,
                call: call.clone(),
            });
        }
    }
    for (role, call) in [("on_success", on_success), ("on_failure", on_failure)] {
        if let Some(call) = call {
            sites.push(SagaCallSite {
                uses_subject: reads_subject(call),
                role: role.to_string(),
                step: None,
                function: format!("{}_{role}", name.snake),
                local: true,
                target_field: None,
                call: call.clone(),
            });
        }
    }
    sites
}

/// Checks every saga against the built contexts; each valid one is also given to its owner.
pub fn build(
    c: &mut Collector,
    partials: &[Partial],
    contexts: &mut [Context],
    sagas: &RawSagas,
) -> Vec<Saga> {
    let mut built: Vec<Saga> = Vec::new();
    let view: &[Context] = contexts;
    for (key, raw) in sagas {
        let field = format!("sagas.{}", key.get_ref());
        let name = match check_field_name(key.get_ref()) {
            Ok(()) => Names::new(key.get_ref()),
            Err(p) => {
                c.push(&field, key.span(), p);
                continue;
            }
        };
        if built.iter().any(|s| s.name.snake == name.snake) {
            c.error(
                &field,
                key.span(),
                format!("`{}` is listed twice", key.get_ref()),
                "give every saga a distinct name",
            );
            continue;
        }
        let saga = raw.get_ref();
        let Some(owner) = owner(partials, saga) else {
            c.error(
                format!("{field}.owner"),
                saga.owner.span(),
                format!("`{}` is not a context of this system", saga.owner.get_ref()),
                format!(
                    "name the context that runs the saga, one of: {}",
                    known(partials)
                ),
            );
            continue;
        };
        let subject = &view[owner];
        // The owner's contract gains these messages (ListSagas, RetrySaga, ListRecentSagas).
        let taken = [
            "Saga",
            "SagaStep",
            "ListSagasRequest",
            "ListSagasResponse",
            "ListRecentSagasRequest",
            "RetrySagaRequest",
            "RetrySagaResponse",
        ];
        let clash = std::iter::once(&subject.aggregate.name)
            .chain(subject.events.iter().map(|e| &e.name))
            .find(|n| taken.contains(&n.pascal.as_str()));
        if let Some(clash) = clash {
            c.error(
                format!("{field}.owner"),
                saga.owner.span(),
                format!(
                    "`{}` owns a saga, so its contract gets the messages {}, and its `{}` would be one of them",
                    subject.name.raw,
                    taken.join(", "),
                    clash.pascal
                ),
                format!("rename the aggregate or event of `{}`", subject.name.raw),
            );
            continue;
        }
        let Some((start_context, start_event)) = saga.start.get_ref().split_once('.') else {
            c.error(
                format!("{field}.start"),
                saga.start.span(),
                format!(
                    "`{}` is not of the form `<context>.<Event>`",
                    saga.start.get_ref()
                ),
                format!(
                    "name the owner's event that starts it, e.g. `{}.{}Created`",
                    subject.name.raw, subject.aggregate.name.pascal
                ),
            );
            continue;
        };
        if Names::new(start_context).snake != subject.name.snake {
            c.error(
                format!("{field}.start"),
                saga.start.span(),
                format!("`{}` is not an event of the owner `{}`", saga.start.get_ref(), subject.name.raw),
                format!(
                    "a saga's subject is the aggregate of the event that starts it, so the event must be the owner's, e.g. `{}.{}Created`",
                    subject.name.raw, subject.aggregate.name.pascal
                ),
            );
            continue;
        }
        let Some(start) = subject.events.iter().find(|e| e.name.raw == start_event) else {
            let events = subject
                .events
                .iter()
                .map(|e| format!("`{}`", e.name.raw))
                .collect::<Vec<_>>()
                .join(", ");
            c.error(
                format!("{field}.start"),
                saga.start.span(),
                format!("`{}` does not publish `{start_event}`", subject.name.raw),
                format!("start on one of its events: {events}"),
            );
            continue;
        };
        if let Some(other) = built
            .iter()
            .find(|s| s.owner.snake == subject.name.snake && s.start.pascal == start.name.pascal)
        {
            c.error(
                format!("{field}.start"),
                saga.start.span(),
                format!("saga `{}` already starts on `{}`", other.name.raw, saga.start.get_ref()),
                "one event starts one saga in an owner: merge their steps, or start this one on another event",
            );
            continue;
        }
        let timeout_ms = match &saga.timeout {
            None => Saga::DEFAULT_TIMEOUT_MS,
            Some(t) => match parse_timeout(t.get_ref()) {
                Some(ms) => ms,
                None => {
                    c.error(
                        format!("{field}.timeout"),
                        t.span(),
                        format!("`{}` is not a timeout from 1s to 24h", t.get_ref()),
                        "write a number and a unit: `30s`, `2m`, `1500ms` or `1h`",
                    );
                    continue;
                }
            },
        };
        let raw_steps = saga.steps.get_ref();
        if raw_steps.is_empty() || raw_steps.len() > Saga::MAX_STEPS {
            c.error(
                format!("{field}.steps"),
                saga.steps.span(),
                format!(
                    "a saga has 1 to {} steps; this one has {}",
                    Saga::MAX_STEPS,
                    raw_steps.len()
                ),
                "list its steps, e.g. `steps = [{ create = \"payments\", compensate = \"void\" }]`",
            );
            continue;
        }
        let errors = c.diagnostics.len();
        let mut checker = Checker {
            c: &mut *c,
            partials,
            contexts: view,
            field: field.clone(),
        };
        let steps: Vec<SagaStep> = raw_steps
            .iter()
            .enumerate()
            .filter_map(|(i, step)| checker.step(i, step, owner))
            .collect();
        let mut finish = |key: &str, raw: &Option<Spanned<String>>| {
            raw.as_ref().and_then(|name| {
                checker.command_call(
                    &format!("{field}.{key}"),
                    name.span(),
                    subject,
                    subject,
                    name.get_ref(),
                )
            })
        };
        let on_success = finish("on_success", &saga.on_success);
        let on_failure = finish("on_failure", &saga.on_failure);
        if c.diagnostics.len() > errors {
            continue;
        }
        let calls = call_sites(&name, &steps, on_success.as_ref(), on_failure.as_ref());
        built.push(Saga {
            calls,
            name,
            owner: subject.name.clone(),
            subject: subject.aggregate.name.clone(),
            start: start.name.clone(),
            start_event_type: start.type_name.clone(),
            timeout_ms,
            timeout: format_timeout(timeout_ms),
            steps,
            on_success,
            on_failure,
        });
    }
    for saga in &built {
        if let Some(owner) = contexts
            .iter_mut()
            .find(|c| c.name.snake == saga.owner.snake)
        {
            owner.sagas.push(saga.clone());
        }
    }
    built
}

#[cfg(test)]
mod tests {
    use super::super::test_problems::{assert_one, problems_in};
    use super::{format_timeout, parse_timeout};
    use crate::error::Error;
    use crate::spec::{Overrides, parse, to_toml};

    const CHECKOUT: &str = include_str!("../../../examples/checkout.toml");

    /// `CHECKOUT` with `from` replaced by `to` (which must occur), as the list of
    /// `field: message` problems it has.
    fn problems(from: &str, to: &str) -> Vec<String> {
        assert!(CHECKOUT.contains(from), "{from}");
        problems_in(&CHECKOUT.replacen(from, to, 1), "checkout.toml")
    }

    #[test]
    fn the_checkout_saga_implies_its_calls_links_and_consumer() {
        let spec = parse(CHECKOUT, "checkout.toml", &Overrides::default()).unwrap();
        let context = |name: &str| spec.contexts.iter().find(|c| c.name.raw == name).unwrap();
        let orders = context("orders");
        let calls: Vec<&str> = orders.calls.iter().map(|c| c.raw.as_str()).collect();
        assert_eq!(
            calls,
            ["inventory", "payments", "shipping"],
            "the ref first, then the saga's participants"
        );
        assert!(
            orders.consumes && orders.subscribed_topics == [orders.topic.clone()],
            "{:?}",
            orders.subscribed_topics
        );
        assert!(!context("payments").consumes);
        let link = context("payments")
            .all_fields
            .iter()
            .find(|f| f.name == "order_id")
            .expect("a created payment links to its order");
        assert!(link.link && !link.declared);
        let saga = &orders.sagas[0];
        assert_eq!(saga.timeout_ms, 30_000);
        assert_eq!(saga.start_event_type, "shop.orders.v1.OrderCreated");
        let labels: Vec<&str> = saga.steps.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            ["create payments", "inventory.reserve", "create shipping"]
        );
        let create = &saga.steps[0].forward;
        assert_eq!(create.rpc.pascal, "CreatePayment");
        let filled: Vec<(&str, Option<&str>, bool)> = create
            .inputs
            .iter()
            .map(|i| (i.field.as_str(), i.subject_field.as_deref(), i.subject_id))
            .collect();
        assert_eq!(
            filled,
            [
                ("customer_id", Some("customer_id"), false),
                ("amount_cents", Some("amount_cents"), false),
                ("order_id", None, true)
            ]
        );
        let void = saga.steps[0].compensate.as_ref().unwrap();
        assert_eq!(
            (void.rpc.pascal.as_str(), void.inputs[0].reason),
            ("VoidPayment", true),
            "a string the order lacks is the reason"
        );
        assert_eq!(saga.steps[1].on.as_deref(), Some("item_id"));
        assert_eq!(
            saga.steps[1].forward.inputs[0].subject_field.as_deref(),
            Some("quantity")
        );
        assert!(saga.steps[2].compensate.is_none());
        assert_eq!(saga.on_failure.as_ref().unwrap().rpc.pascal, "CancelOrder");
        let canonical = to_toml(&spec);
        assert!(canonical.contains("  { command = \"inventory.reserve\", on = \"item_id\", compensate = \"release\" },\n"), "{canonical}");
        let again = parse(&canonical, "archscaffold.toml", &Overrides::default()).unwrap();
        assert_eq!(to_toml(&again), canonical);
    }

    #[test]
    fn every_mistake_in_a_saga_is_named_with_its_fix() {
        assert_one(
            problems("owner = \"orders\"", "owner = \"order\""),
            "sagas.place_order.owner: `order` is not a context",
        );
        assert_one(
            problems(
                "start = \"orders.OrderCreated\"",
                "start = \"orders.OrderPlaced\"",
            ),
            "`orders` does not publish `OrderPlaced` (help: start on one of its events: `OrderCreated`",
        );
        assert_one(
            problems(
                "start = \"orders.OrderCreated\"",
                "start = \"payments.PaymentCreated\"",
            ),
            "is not an event of the owner `orders`",
        );
        assert_one(
            problems(
                "{ create = \"payments\", compensate = \"void\" }",
                "{ create = \"paymnts\" }",
            ),
            "steps[0]: `paymnts` is not a context",
        );
        assert_one(
            problems(
                "command = \"inventory.reserve\"",
                "command = \"inventory.hold\"",
            ),
            "`hold` is not a command of Item (context `inventory`) (help: use one of its commands (`reserve`, `release`, `retire`)",
        );
        assert_one(
            problems("on = \"item_id\"", "on = \"customer_id\""),
            "steps[1].on: `customer_id` is not a `ref:inventory` field of Order (help: name a field that holds the id of an Item (`item_id`)",
        );
        assert_one(
            problems(", on = \"item_id\"", ""),
            "does not say which Item it runs on",
        );
        assert_one(
            problems("compensate = \"void\"", "compensate = \"refund\""),
            "steps[0].compensate: `refund` is not a command of Payment",
        );
        assert_one(
            problems(
                "fields = { customer_id = \"string\", quantity = \"i32\" }",
                "fields = { customer_id = \"string\", quantity = \"i32\", address = \"string\" }",
            ),
            "creating a Shipment needs `address` (string), which Order cannot fill: it has no such field (help: add `address = \"string\"` to the fields of `orders`",
        );
        assert_one(
            problems("on_failure = \"cancel\"", "on_failure = \"abandon\""),
            "sagas.place_order.on_failure: `abandon` is not a command of Order",
        );
        assert_one(
            problems("{ create = \"shipping\" }", "{ create = \"orders\" }"),
            "the step runs in the owner `orders` itself",
        );
        assert_one(
            problems(
                "{ create = \"shipping\" }",
                "{ create = \"shipping\", command = \"shipping.x\" }",
            ),
            "needs exactly one of `create` and `command`",
        );
        assert_one(
            problems("timeout = \"30s\"", "timeout = \"30\""),
            "`30` is not a timeout from 1s to 24h",
        );
        let clash: Vec<String> = problems("aggregate = \"Order\"", "aggregate = \"Saga\"")
            .into_iter()
            .filter(|p| p.starts_with("sagas."))
            .collect();
        assert_one(clash, "its `Saga` would be one of them");
        let twice = format!(
            "{CHECKOUT}\n[sagas.again]\nowner = \"orders\"\nstart = \"orders.OrderCreated\"\nsteps = [{{ create = \"shipping\" }}]\n"
        );
        let Err(Error::Invalid(d)) = parse(&twice, "checkout.toml", &Overrides::default()) else {
            panic!("accepted")
        };
        assert!(
            d.len() == 1
                && d[0]
                    .message
                    .contains("saga `place_order` already starts on `orders.OrderCreated`"),
            "{d:?}"
        );
        // A participant that refers back to the owner closes a cycle of calls.
        let cycle = problems(
            "fields = { customer_id = \"string\", amount_cents = \"i64\" }",
            "fields = { customer_id = \"string\", amount_cents = \"i64\", first_order = \"ref:orders\" }",
        );
        assert!(cycle.iter().any(|p| p.contains("contexts.payments.calls: synchronous calls form a cycle orders -> payments -> orders")), "{cycle:#?}");
    }

    #[test]
    fn timeouts_read_and_write_back() {
        assert_eq!(parse_timeout("30s"), Some(30_000));
        assert_eq!(parse_timeout("2m"), Some(120_000));
        assert_eq!(parse_timeout("1500ms"), Some(1500));
        assert_eq!(parse_timeout("1h"), Some(3_600_000));
        for bad in ["", "30", "s", "500ms", "25h", "3d", "-1s", "1.5s"] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
        assert_eq!(format_timeout(30_000), "30s");
        assert_eq!(format_timeout(120_000), "2m");
        assert_eq!(format_timeout(1500), "1500ms");
        assert_eq!(format_timeout(7_200_000), "2h");
    }
}
