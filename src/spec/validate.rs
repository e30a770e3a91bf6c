//! Turns a [`RawSpec`] into a validated [`Spec`], collecting every problem at once so a
//! user fixes their spec in one pass rather than one error per run.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use toml::Spanned;

mod lifecycle;
mod sagas;
mod templates;
mod wiring;

/// What the validation tests of the submodules share.
#[cfg(test)]
mod test_problems {
    use crate::error::Error;
    use crate::spec::{Overrides, parse};

    /// The `field: message (help: ...)` problems of spec `text`; none when it is valid.
    pub fn problems_in(text: &str, path: &str) -> Vec<String> {
        match parse(text, path, &Overrides::default()) {
            Ok(_) => Vec::new(),
            Err(Error::Invalid(diagnostics)) => diagnostics
                .iter()
                .map(|d| format!("{}: {} (help: {})", d.field, d.message, d.help))
                .collect(),
            Err(e) => panic!("{e}"),
        }
    }

    pub fn assert_one(problems: Vec<String>, expected: &str) {
        assert!(
            problems.len() == 1 && problems[0].contains(expected),
            "expected one problem containing {expected:?}, got {problems:#?}"
        );
    }
}

use super::model::{
    Aggregate, Bus, Context, Event, Field, FieldType, PlatformSource, Replica, Slo, Spec,
    Subscription, Wire,
};
use super::names::{
    NameProblem, check_crate_name, check_field_name, check_type_name, is_rust_keyword,
};
use super::naming;
use super::raw::{RawContext, RawPlatform, RawSlo, RawSpec};
use crate::error::{Diagnostic, Origin};
use crate::inflect::{self, Names};

/// The first gRPC port; context N listens on `BASE_GRPC_PORT + N` by default.
pub const BASE_GRPC_PORT: u16 = 50051;
/// The gateway's `/metrics` is on 9464 (the OpenTelemetry Prometheus default); services follow.
pub const BASE_METRICS_PORT: u16 = 9465;

/// Tables every service database already has; an aggregate's table must differ.
const RESERVED_TABLES: &[&str] = &["outbox", "inbox", "idempotency_keys", "_sqlx_migrations"];

/// Messages every service's contract already has (the console's outbox page, see
/// `platform::parked`): an aggregate or event may not take their names.
pub const RESERVED_MESSAGES: &[&str] = &[
    "ListOutboxRequest",
    "ListOutboxResponse",
    "ParkedOutboxRow",
    "ReplayParkedRequest",
    "ReplayParkedResponse",
];

/// Field names every aggregate already has.
const RESERVED_FIELDS: &[&str] = &[
    "id",
    "created_at",
    "idempotency_key",
    "version",
    "state",
    "etag",
];

/// Where the raw spec came from, to turn spans into locations.
pub struct Source<'a> {
    /// The file name as the user gave it.
    pub path: String,
    pub text: &'a str,
    /// Set when the spec was built from a flag: every location is then that flag.
    pub flag: Option<&'static str>,
}

impl Source<'_> {
    pub fn origin(&self, span: Range<usize>) -> Origin {
        if let Some(flag) = self.flag {
            return Origin::Flag(flag);
        }
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Origin::File {
            path: self.path.clone(),
            line,
            col,
        }
    }
}

struct Collector<'s, 'a> {
    source: &'s Source<'a>,
    diagnostics: Vec<Diagnostic>,
}

impl Collector<'_, '_> {
    fn push(&mut self, field: impl Into<String>, span: Range<usize>, p: NameProblem) {
        self.diagnostics.push(Diagnostic {
            field: field.into(),
            origin: self.source.origin(span),
            message: p.message,
            help: p.help,
        });
    }

    fn error(
        &mut self,
        field: impl Into<String>,
        span: Range<usize>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.push(
            field,
            span,
            NameProblem {
                message: message.into(),
                help: help.into(),
            },
        );
    }
}

/// A context whose own names are valid; references are resolved in a second pass.
struct Partial<'r> {
    key: &'r Spanned<String>,
    raw: &'r RawContext,
    name: Names,
    aggregate: Names,
    fields: Vec<(String, FieldType)>,
    events: Vec<Names>,
    lifecycle: lifecycle::Lifecycle,
    /// `ref:<context>` fields, resolved once every context is known.
    refs: Vec<RefField>,
}

/// A field that holds the id of another context's aggregate.
struct RefField {
    field: String,
    target: String,
    span: Range<usize>,
}

pub fn validate(raw: &RawSpec, source: &Source) -> Result<Spec, Vec<Diagnostic>> {
    let mut c = Collector {
        source,
        diagnostics: Vec::new(),
    };

    let system = match check_crate_name(raw.name.get_ref(), "system", false) {
        Ok(n) => Some(n),
        Err(p) => {
            c.push("name", raw.name.span(), p);
            None
        }
    };

    let bus = match &raw.bus {
        None => Some(Bus::Kafka),
        Some(b) => Bus::parse(b.get_ref()).or_else(|| {
            c.error(
                "bus",
                b.span(),
                format!("`{}` is not a supported bus", b.get_ref()),
                "use `kafka` or `sqs`",
            );
            None
        }),
    };

    let platform = platform_source(&mut c, raw.platform.as_ref());
    let templates = templates::build(&mut c, &raw.templates);

    let empty = IndexMapRef::default();
    let (contexts, contexts_span) = match &raw.contexts {
        Some(t) => (t.get_ref(), t.span()),
        None => (&empty.0, 0..0),
    };
    if contexts.is_empty() {
        c.error(
            "contexts",
            contexts_span,
            "no bounded contexts are defined",
            "add at least one `[contexts.<name>]` table, e.g. `[contexts.orders]`",
        );
    }

    let partials = first_pass(&mut c, contexts);
    // With an invalid system name the spec is rejected anyway; the raw name keeps the
    // second pass reporting its own problems.
    let system_names = system
        .clone()
        .unwrap_or_else(|| Names::new(raw.name.get_ref()));
    let implied = sagas::implied(&partials, &raw.sagas);
    let mut built = second_pass(&mut c, &system_names, &partials, &implied);
    let sagas = sagas::build(&mut c, &partials, &mut built, &raw.sagas);
    for context in &mut built {
        context.consumes = !context.subscribes.is_empty() || !context.sagas.is_empty();
        context.routes = super::routes::of(context);
        context.route_paths = super::routes::by_path(&context.routes);
        context.access = super::routes::access_of(&context.routes);
        context.scopes = super::routes::scopes(&context.name.kebab);
    }

    if !c.diagnostics.is_empty() {
        return Err(c.diagnostics);
    }
    Ok(Spec {
        system: system.expect("checked above"),
        bus: bus.expect("checked above"),
        platform: platform.expect("checked above"),
        contexts: built,
        sagas,
        templates,
    })
}

/// `[platform] source`: `vendored` by default; `registry` is named so that its error can
/// say why it is not there yet.
fn platform_source(
    c: &mut Collector<'_, '_>,
    raw: Option<&Spanned<RawPlatform>>,
) -> Option<PlatformSource> {
    let Some(source) = raw.and_then(|p| p.get_ref().source.as_ref()) else {
        return Some(PlatformSource::Vendored);
    };
    match source.get_ref().as_str() {
        "vendored" => Some(PlatformSource::Vendored),
        "registry" => {
            c.error(
                "platform.source",
                source.span(),
                "`registry` is not available yet: the platform crate is not published on a registry",
                "use `source = \"vendored\"` (the default), which copies it into crates/platform",
            );
            None
        }
        other => {
            c.error(
                "platform.source",
                source.span(),
                format!("`{other}` is not a platform source"),
                "use `vendored`",
            );
            None
        }
    }
}

#[derive(Default)]
struct IndexMapRef(indexmap::IndexMap<Spanned<String>, Spanned<RawContext>>);

impl Partial<'_> {
    /// Every event the context publishes: declared, then those of updates, deletes and
    /// commands (each once).
    fn published(&self) -> Vec<Names> {
        let life = &self.lifecycle;
        let mut all = self.events.clone();
        let generated = [&life.updated, &life.deleted]
            .into_iter()
            .chain(life.commands.iter().map(|c| &c.emits));
        for name in generated {
            if !all.iter().any(|e| e.pascal == name.pascal) {
                all.push(name.clone());
            }
        }
        all
    }
}

/// Checks each context on its own: its name, aggregate, fields and events.
fn first_pass<'r>(
    c: &mut Collector,
    contexts: &'r indexmap::IndexMap<Spanned<String>, Spanned<RawContext>>,
) -> Vec<Partial<'r>> {
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut partials = Vec::new();
    for (key, ctx) in contexts {
        let field = format!("contexts.{}", key.get_ref());
        let name = match check_crate_name(key.get_ref(), "context", true) {
            Ok(n) => n,
            Err(p) => {
                c.push(&field, key.span(), p);
                continue;
            }
        };
        if let Some(first) = seen.get(&name.snake) {
            let message = if first == key.get_ref() {
                format!("`{first}` is listed twice")
            } else {
                format!(
                    "`{}` collides with `{first}`: both become `{}`",
                    key.get_ref(),
                    name.snake
                )
            };
            c.error(
                &field,
                key.span(),
                message,
                "give every context a distinct name",
            );
            continue;
        }
        seen.insert(name.snake.clone(), key.get_ref().clone());

        let ctx = ctx.get_ref();
        let aggregate = match &ctx.aggregate {
            Some(a) => check_type_name(a.get_ref(), "Order")
                .map_err(|p| c.push(format!("{field}.aggregate"), a.span(), p))
                .ok(),
            None => Some(Names::new(&inflect::singular(&name.snake))),
        };
        let Some(aggregate) = aggregate else { continue };
        let table = crate::layout::table(&aggregate.snake);
        if RESERVED_TABLES.contains(&table.as_str()) {
            let span = ctx.aggregate.as_ref().map_or(key.span(), |a| a.span());
            c.error(
                format!("{field}.aggregate"),
                span,
                format!(
                    "`{}` would be stored in table `{table}`, which every service already has",
                    aggregate.pascal
                ),
                "choose another aggregate name",
            );
            continue;
        }
        if RESERVED_MESSAGES.contains(&aggregate.pascal.as_str()) {
            let span = ctx.aggregate.as_ref().map_or(key.span(), |a| a.span());
            c.error(
                format!("{field}.aggregate"),
                span,
                format!(
                    "`{}` is a message every service's contract already has",
                    aggregate.pascal
                ),
                "choose another aggregate name",
            );
            continue;
        }
        // The plural names the list field of every page (`page.orders`).
        if is_rust_keyword(&table) {
            let span = ctx.aggregate.as_ref().map_or(key.span(), |a| a.span());
            c.error(
                format!("{field}.aggregate"),
                span,
                format!(
                    "`{}` has the plural `{table}`, a Rust keyword",
                    aggregate.pascal
                ),
                format!(
                    "rename the context, or set its `aggregate` to a longer name, e.g. `{}Item`",
                    aggregate.pascal
                ),
            );
        }

        let mut fields = Vec::new();
        let mut refs = Vec::new();
        for (fname, ftype) in &ctx.fields {
            let at = format!("{field}.fields.{}", fname.get_ref());
            if let Err(p) = check_field_name(fname.get_ref()) {
                c.push(&at, fname.span(), p);
                continue;
            }
            if RESERVED_FIELDS.contains(&fname.get_ref().as_str()) {
                c.error(
                    &at,
                    fname.span(),
                    format!("`{}` is generated for every aggregate", fname.get_ref()),
                    "remove it, or rename it, e.g. `external_id`",
                );
                continue;
            }
            if let Some(target) = ftype.get_ref().strip_prefix("ref:") {
                // The id of another context's aggregate: a string, resolved in the second pass.
                fields.push((fname.get_ref().clone(), FieldType::String));
                refs.push(RefField {
                    field: fname.get_ref().clone(),
                    target: target.to_string(),
                    span: ftype.span(),
                });
                continue;
            }
            match FieldType::parse(ftype.get_ref()) {
                Some(t) => fields.push((fname.get_ref().clone(), t)),
                None => c.error(
                    &at,
                    ftype.span(),
                    format!("`{}` is not a field type", ftype.get_ref()),
                    format!("use one of: {}, or `ref:<context>` for the id of another context's aggregate", FieldType::ALL),
                ),
            }
        }

        let events = match &ctx.publishes {
            None => vec![Names::new(&format!("{}Created", aggregate.pascal))],
            Some(list) => {
                if list.get_ref().is_empty() {
                    c.error(
                        format!("{field}.publishes"),
                        list.span(),
                        "the list is empty",
                        format!(
                            "name at least one event (the first is emitted on create), e.g. `[\"{}Created\"]`, or remove the key for that default",
                            aggregate.pascal
                        ),
                    );
                }
                let mut events: Vec<Names> = Vec::new();
                for e in list.get_ref() {
                    let at = format!("{field}.publishes");
                    match check_type_name(e.get_ref(), &format!("{}Created", aggregate.pascal)) {
                        Err(p) => c.push(&at, e.span(), p),
                        Ok(_) if events.iter().any(|x| &x.raw == e.get_ref()) => c.error(
                            &at,
                            e.span(),
                            format!("`{}` is listed twice", e.get_ref()),
                            "list each event once",
                        ),
                        Ok(_) if RESERVED_MESSAGES.contains(&e.get_ref().as_str()) => c.error(
                            &at,
                            e.span(),
                            format!(
                                "`{}` is a message every service's contract already has",
                                e.get_ref()
                            ),
                            format!("name what happened, e.g. `{}Created`", aggregate.pascal),
                        ),
                        Ok(_) if e.get_ref() == &aggregate.pascal => c.error(
                            &at,
                            e.span(),
                            format!("event `{}` has the aggregate's own name", e.get_ref()),
                            format!("name what happened, e.g. `{}Created`", aggregate.pascal),
                        ),
                        Ok(n) => events.push(n),
                    }
                }
                events
            }
        };

        let lifecycle = lifecycle::check(c, &field, ctx, &aggregate, &fields, &events);
        partials.push(Partial {
            key,
            raw: ctx,
            name,
            aggregate,
            fields,
            events,
            lifecycle,
            refs,
        });
    }
    partials
}

/// Resolves references between contexts: subscriptions, calls, and their cycles.
fn second_pass(
    c: &mut Collector,
    system: &Names,
    partials: &[Partial],
    implied: &sagas::Implied,
) -> Vec<Context> {
    let mut contexts = Vec::new();
    let mut call_edges: wiring::CallEdges = vec![Vec::new(); partials.len()];

    for (index, p) in partials.iter().enumerate() {
        let field = format!("contexts.{}", p.key.get_ref());
        let subscribes = wiring::subscriptions(c, system, partials, index);
        let wiring::Dependencies { calls, references } =
            wiring::dependencies(c, partials, index, implied, &mut call_edges);
        // An aggregate a saga creates carries the id of the saga's subject.
        let saga_links: Vec<String> = implied
            .links
            .iter()
            .filter(|(participant, _)| *participant == index)
            .map(|(_, owner)| format!("{}_id", partials[*owner].aggregate.snake))
            .collect();
        let mut all_fields = build_fields(c, &field, p, &subscribes, &saga_links);
        for f in &mut all_fields {
            if let Some((_, dep)) = references.iter().find(|(name, _)| *name == f.name) {
                f.reference = Some(partials[*dep].name.clone());
                f.reference_aggregate = Some(partials[*dep].aggregate.clone());
            }
        }
        let created_at_tag = all_fields.len() + 2;
        let topic = naming::aggregate_topic(system, &p.name, &p.aggregate);
        let event = |name: &Names, declared: bool, fields: Vec<Field>| Event {
            name: name.clone(),
            topic: topic.clone(),
            type_name: naming::event_type(system, &p.name, name),
            declared,
            fields,
            reserved_tags: Vec::new(),
        };
        // Every event the context publishes, once: declared, update, delete, commands'.
        // A command's event carries the command's own fields (filled in below).
        let mut events: Vec<Event> = p
            .published()
            .iter()
            .enumerate()
            .map(|(i, n)| event(n, i < p.events.len(), Vec::new()))
            .collect();
        let life = &p.lifecycle;
        let find_event = |events: &[Event], name: &Names| {
            events
                .iter()
                .find(|e| e.name.pascal == name.pascal)
                .cloned()
                .expect("published() lists it")
        };
        let updated_event = find_event(&events, &life.updated);
        let deleted_event = find_event(&events, &life.deleted);
        let commands = lifecycle::commands(c, system, p, &all_fields, &mut events);
        let slo = p
            .raw
            .slo
            .as_ref()
            .map_or_else(Slo::default, |raw| build_slo(c, &field, raw.get_ref()));
        let replicas = replica_count(c, &field, p.raw.replicas.as_ref());
        let max_replicas = max_replica_count(c, &field, p.raw.max_replicas.as_ref(), replicas);
        contexts.push(Context {
            name: p.name.clone(),
            index,
            grpc_port: BASE_GRPC_PORT + index as u16,
            metrics_port: BASE_METRICS_PORT + index as u16,
            replicas: Replica::all(
                &p.name.kebab,
                BASE_GRPC_PORT + index as u16,
                BASE_METRICS_PORT + index as u16,
                replicas,
            ),
            max_replicas,
            pool_size: Replica::pool_size(max_replicas),
            aggregate: Aggregate {
                plural: Names::new(&inflect::plural(&p.aggregate.snake)),
                name: p.aggregate.clone(),
            },
            fields: all_fields.iter().filter(|f| f.declared).cloned().collect(),
            patchable: all_fields.iter().filter(|f| !f.link).cloned().collect(),
            references: all_fields
                .iter()
                .filter(|f| f.reference.is_some())
                .cloned()
                .collect(),
            all_fields,
            created_at_tag,
            version_tag: created_at_tag + 1,
            state_tag: created_at_tag + 2,
            reserved_tags: Vec::new(),
            events,
            states: life.states.clone(),
            crud: life.crud,
            require_if_match: life.require_if_match,
            commands,
            updated_event,
            deleted_event,
            topic: topic.clone(),
            subscribed_topics: wiring::subscribed_topics(
                &topic,
                implied.owners.contains(&index),
                &subscribes,
            ),
            subscriber_queues: Vec::new(),
            subscribes,
            calls,
            dependencies: Vec::new(),
            callers: Vec::new(),
            wire: Wire {
                group: naming::consumer_group(system, &p.name),
                dead_letter_topic: naming::dead_letter_topic(system, &p.name),
                queue: naming::queue(system, &p.name),
                dead_letter_queue: naming::dead_letter_queue(system, &p.name),
            },
            slo,
            sagas: Vec::new(),
            consumes: false,
            routes: Vec::new(),
            route_paths: Vec::new(),
            access: Default::default(),
            scopes: Default::default(),
        });
    }

    wiring::subscriber_queues(&mut contexts);
    wiring::link_calls(&mut contexts);

    wiring::check_cycles(c, partials, &call_edges);
    contexts
}

/// `replicas`: from 1 to [`Replica::MAX_COUNT`], [`Replica::DEFAULT_COUNT`] when left out.
fn replica_count(c: &mut Collector, field: &str, raw: Option<&Spanned<i64>>) -> usize {
    let Some(value) = raw else {
        return Replica::DEFAULT_COUNT;
    };
    match usize::try_from(*value.get_ref()) {
        Ok(n) if (1..=Replica::MAX_COUNT).contains(&n) => n,
        _ => {
            c.error(
                format!("{field}.replicas"),
                value.span(),
                format!("`{}` is out of range for replicas", value.get_ref()),
                format!(
                    "use a whole number from 1 to {} (how many processes serve this context)",
                    Replica::MAX_COUNT
                ),
            );
            Replica::DEFAULT_COUNT
        }
    }
}

/// `max_replicas`: at least `replicas`, and few enough that each replica's pool keeps
/// [`Replica::MIN_POOL`] connections within [`Replica::CONNECTION_BUDGET`];
/// [`Replica::DEFAULT_MAX`] (or `replicas`, if more) when left out.
fn max_replica_count(
    c: &mut Collector,
    field: &str,
    raw: Option<&Spanned<i64>>,
    replicas: usize,
) -> usize {
    let fallback = Replica::DEFAULT_MAX.max(replicas);
    let Some(value) = raw else {
        return fallback;
    };
    let given = *value.get_ref();
    match usize::try_from(given) {
        Ok(n) if n >= replicas && n <= Replica::MAX_MAX => n,
        Ok(n) if n > Replica::MAX_MAX => {
            c.error(
                format!("{field}.max_replicas"),
                value.span(),
                format!(
                    "{n} replicas with at least {} connections each would hold more than the {} connections a service's database is given",
                    Replica::MIN_POOL,
                    Replica::CONNECTION_BUDGET
                ),
                format!(
                    "use at most {} (each replica's pool is {} / max_replicas), or raise PostgreSQL's max_connections and put a pooler such as PgBouncer in front (docs/adr/0016-*.md)",
                    Replica::MAX_MAX,
                    Replica::CONNECTION_BUDGET
                ),
            );
            fallback
        }
        _ => {
            c.error(
                format!("{field}.max_replicas"),
                value.span(),
                format!("`{given}` is fewer than the {replicas} replicas it runs"),
                format!(
                    "use a whole number from {replicas} (its `replicas`) to {}",
                    Replica::MAX_MAX
                ),
            );
            fallback
        }
    }
}

/// The context's objectives, each within a range that makes a meaningful alert; what the
/// spec leaves out takes the default.
fn build_slo(c: &mut Collector, field: &str, raw: &RawSlo) -> Slo {
    let mut count =
        |key: &str, value: &Option<Spanned<i64>>, default: u32, max: u32, unit: &str| {
            let Some(v) = value else { return default };
            match u32::try_from(*v.get_ref()) {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => {
                    c.error(
                        format!("{field}.slo.{key}"),
                        v.span(),
                        format!("`{}` is out of range for {key}", v.get_ref()),
                        format!("use a whole number of {unit} from 1 to {max}"),
                    );
                    default
                }
            }
        };
    let p99_ms = count(
        "p99_ms",
        &raw.p99_ms,
        Slo::DEFAULT_P99_MS,
        60_000,
        "milliseconds",
    );
    let max_outbox_backlog = count(
        "max_outbox_backlog",
        &raw.max_outbox_backlog,
        Slo::DEFAULT_MAX_OUTBOX_BACKLOG,
        10_000_000,
        "rows",
    );
    let max_consumer_lag = count(
        "max_consumer_lag",
        &raw.max_consumer_lag,
        Slo::DEFAULT_MAX_CONSUMER_LAG,
        10_000_000,
        "messages",
    );
    let error_rate_percent = match &raw.error_rate_percent {
        None => Slo::DEFAULT_ERROR_RATE_PERCENT,
        Some(v) if *v.get_ref() > 0.0 && *v.get_ref() < 100.0 => *v.get_ref(),
        Some(v) => {
            c.error(
                format!("{field}.slo.error_rate_percent"),
                v.span(),
                format!("`{}` is not a share of requests in percent", v.get_ref()),
                "use a number above 0 and below 100, e.g. `1.0` for 1 % of requests",
            );
            Slo::DEFAULT_ERROR_RATE_PERCENT
        }
    };
    Slo::new(
        p99_ms,
        error_rate_percent,
        max_outbox_backlog,
        max_consumer_lag,
    )
}

/// Declared fields then one link field per subscribed upstream context, with proto tags.
fn build_fields(
    c: &mut Collector,
    field: &str,
    p: &Partial,
    subscribes: &[Subscription],
    saga_links: &[String],
) -> Vec<Field> {
    let mut out: Vec<Field> = p
        .fields
        .iter()
        .map(|(name, kind)| make_field(name, *kind, false, true))
        .collect();
    let mut links: BTreeMap<&str, &Subscription> = BTreeMap::new();
    for s in subscribes {
        links.entry(s.link_field.as_str()).or_insert(s);
    }
    for s in subscribes {
        if let Some(other) = links.get(s.link_field.as_str())
            && other.context.snake != s.context.snake
        {
            c.error(
                format!("{field}.subscribes"),
                p.key.span(),
                format!(
                    "contexts `{}` and `{}` both have aggregate `{}`, so both links would be `{}`",
                    other.context.raw, s.context.raw, s.upstream_aggregate.pascal, s.link_field
                ),
                "give the upstream contexts distinct `aggregate` names",
            );
        }
    }
    let mut seen_links = Vec::new();
    for s in subscribes {
        if seen_links.contains(&s.link_field) {
            continue;
        }
        seen_links.push(s.link_field.clone());
        match out.iter_mut().find(|f| f.name == s.link_field) {
            Some(f) if f.kind == FieldType::String => f.link = true,
            Some(f) => c.error(
                format!("{field}.fields.{}", f.name),
                p.key.span(),
                format!(
                    "`{}` must be a string: it carries the id of `{}`'s {}",
                    f.name, s.context.raw, s.upstream_aggregate.pascal
                ),
                format!("declare `{} = \"string\"` or remove it", f.name),
            ),
            None => out.push(make_field(&s.link_field, FieldType::String, true, false)),
        }
    }
    for link in saga_links {
        if seen_links.contains(link) {
            continue;
        }
        seen_links.push(link.clone());
        match out.iter_mut().find(|f| &f.name == link) {
            Some(f) if f.kind == FieldType::String && f.reference.is_none() => f.link = true,
            Some(f) => c.error(
                format!("{field}.fields.{}", f.name),
                p.key.span(),
                format!("`{}` must be a plain string: a saga creates this aggregate and links it to its subject by that field", f.name),
                format!("declare `{} = \"string\"` or remove it", f.name),
            ),
            None => out.push(make_field(link, FieldType::String, true, false)),
        }
    }
    for (i, f) in out.iter_mut().enumerate() {
        f.tag = i + 2;
    }
    out
}

fn numbered_from_4(mut fields: Vec<Field>) -> Vec<Field> {
    for (i, f) in fields.iter_mut().enumerate() {
        f.tag = i + 4;
    }
    fields
}

fn make_field(name: &str, kind: FieldType, link: bool, declared: bool) -> Field {
    Field {
        name: name.to_string(),
        pascal: Names::new(name).pascal,
        kind,
        proto_type: kind.proto(),
        rust_type: kind.rust(),
        sql_type: kind.sql(),
        sample: kind.sample(name),
        tag: 0,
        link,
        declared,
        reference: None,
        reference_aggregate: None,
    }
}

/// The context a spec names, by its key or by any spelling of it (`order-items`,
/// `order_items`).
fn context_index(partials: &[Partial], name: &str) -> Option<usize> {
    let snake = Names::new(name).snake;
    partials
        .iter()
        .position(|p| p.key.get_ref() == name || p.name.snake == snake)
}

fn known(partials: &[Partial]) -> String {
    partials
        .iter()
        .map(|p| format!("`{}`", p.key.get_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}
