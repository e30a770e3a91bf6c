//! The parts of a context that describe how its aggregate changes: `states`, `crud`,
//! `require_if_match` and `commands`. Checked per context in the first pass; the fields a
//! command sets are resolved in the second, once link fields are known.

use toml::Spanned;

use super::{Collector, Partial, make_field, numbered_from_4};
use crate::inflect::{Names, with_article};
use crate::spec::model::{Command, Crud, Event, Field, FieldType};
use crate::spec::names::{check_field_name, check_type_name};
use crate::spec::naming;
use crate::spec::raw::RawContext;

/// RPC verbs every aggregate already has; a command may not take one of their names.
const GENERATED_VERBS: &[&str] = &["create", "get", "list", "update", "delete"];

pub struct Lifecycle {
    pub states: Vec<Names>,
    pub crud: Crud,
    pub require_if_match: bool,
    pub commands: Vec<PartialCommand>,
    pub updated: Names,
    pub deleted: Names,
}

pub struct PartialCommand {
    pub key: Spanned<String>,
    pub name: Names,
    pub rpc: Names,
    pub from: Vec<Names>,
    pub to: Option<Names>,
    pub set: Vec<Spanned<String>>,
    pub fields: Vec<(String, FieldType)>,
    pub emits: Names,
}

pub fn check(
    c: &mut Collector,
    field: &str,
    ctx: &RawContext,
    aggregate: &Names,
    fields: &[(String, FieldType)],
    declared_events: &[Names],
) -> Lifecycle {
    let states = check_states(c, field, ctx);
    let crud = check_crud(c, field, ctx);
    let updated = Names::new(&format!("{}Updated", aggregate.pascal));
    let deleted = Names::new(&format!("{}Deleted", aggregate.pascal));

    let mut commands: Vec<PartialCommand> = Vec::new();
    for (key, raw) in &ctx.commands {
        let at = format!("{field}.commands.{}", key.get_ref());
        let raw = raw.get_ref();
        if let Err(p) = check_field_name(key.get_ref()) {
            c.push(&at, key.span(), p);
            continue;
        }
        let name = Names::new(key.get_ref());
        let rpc = Names::new(&format!("{}{}", name.pascal, aggregate.pascal));
        if GENERATED_VERBS.contains(&name.snake.as_str()) {
            c.error(
                &at,
                key.span(),
                format!(
                    "command `{}` would be the RPC `{}`, which every aggregate already has",
                    key.get_ref(),
                    rpc.pascal
                ),
                "name what the command does in the domain, e.g. `confirm` or `cancel`",
            );
            continue;
        }
        if let Some(other) = commands.iter().find(|o| o.rpc.pascal == rpc.pascal) {
            c.error(
                &at,
                key.span(),
                format!(
                    "`{}` and `{}` both become the RPC `{}`",
                    other.key.get_ref(),
                    key.get_ref(),
                    rpc.pascal
                ),
                "give every command a distinct name",
            );
            continue;
        }

        let state_ref = |c: &mut Collector, s: &Spanned<String>, key: &str| -> Option<Names> {
            if states.is_empty() {
                c.error(
                    format!("{at}.{key}"),
                    s.span(),
                    format!(
                        "`{}` names a state, but the context declares no `states`",
                        s.get_ref()
                    ),
                    format!(
                        "declare the lifecycle first, e.g. `states = [\"pending\", \"{}\"]`",
                        s.get_ref()
                    ),
                );
                return None;
            }
            match states.iter().find(|x| x.raw == *s.get_ref()) {
                Some(n) => Some(n.clone()),
                None => {
                    c.error(
                        format!("{at}.{key}"),
                        s.span(),
                        format!("`{}` is not one of the context's states", s.get_ref()),
                        format!("use one of: {}", list(&states)),
                    );
                    None
                }
            }
        };
        let mut from = Vec::new();
        if let Some(list) = &raw.from {
            if list.get_ref().is_empty() {
                c.error(
                    format!("{at}.from"),
                    list.span(),
                    "the list is empty, so the command could never run",
                    "name the states it may run in, or remove `from` to allow it in any state",
                );
            }
            for s in list.get_ref() {
                if let Some(n) = state_ref(c, s, "from")
                    && !from.contains(&n)
                {
                    from.push(n);
                }
            }
        }
        let to = raw.to.as_ref().and_then(|s| state_ref(c, s, "to"));

        let mut own = Vec::new();
        for (fname, ftype) in &raw.fields {
            let fat = format!("{at}.fields.{}", fname.get_ref());
            if let Err(p) = check_field_name(fname.get_ref()) {
                c.push(&fat, fname.span(), p);
                continue;
            }
            if fields.iter().any(|(f, _)| f == fname.get_ref())
                || super::RESERVED_FIELDS.contains(&fname.get_ref().as_str())
            {
                c.error(
                    &fat,
                    fname.span(),
                    format!("`{}` is already a field of the aggregate", fname.get_ref()),
                    "list it in `set` to change the aggregate's field, or give the command's own field another name",
                );
                continue;
            }
            match FieldType::parse(ftype.get_ref()) {
                Some(t) => own.push((fname.get_ref().clone(), t)),
                None => c.error(
                    &fat,
                    ftype.span(),
                    format!("`{}` is not a field type", ftype.get_ref()),
                    format!("use one of: {}", FieldType::ALL),
                ),
            }
        }

        let emits = match (&raw.emits, &to) {
            (Some(e), _) => {
                match check_type_name(e.get_ref(), &format!("{}Cancelled", aggregate.pascal)) {
                    Ok(n) => n,
                    Err(p) => {
                        c.push(format!("{at}.emits"), e.span(), p);
                        continue;
                    }
                }
            }
            (None, Some(to)) => Names::new(&format!("{}{}", aggregate.pascal, to.pascal)),
            (None, None) if raw.to.is_some() => continue, // its state was reported
            (None, None) => {
                c.error(
                    &at,
                    key.span(),
                    format!("command `{}` changes no state, so its event has no default name", key.get_ref()),
                    format!(
                        "name the event it emits, in the past tense, e.g. `emits = \"{}NoteChanged\"`",
                        aggregate.pascal
                    ),
                );
                continue;
            }
        };
        let span = raw.emits.as_ref().map_or(key.span(), |e| e.span());
        let taken = declared_events
            .iter()
            .map(|e| (e, "listed in `publishes`"))
            .chain([
                (&updated, "emitted by an update"),
                (&deleted, "emitted by a delete"),
            ])
            .find(|(e, _)| e.pascal == emits.pascal)
            .map(|(_, why)| why.to_string())
            .or_else(|| {
                commands
                    .iter()
                    .find(|o| o.emits.pascal == emits.pascal)
                    .map(|o| format!("emitted by command `{}`", o.key.get_ref()))
            });
        if let Some(why) = taken {
            c.error(
                format!("{at}.emits"),
                span,
                format!("event `{}` is already {why}", emits.pascal),
                "give this command an event of its own with `emits`, named in the past tense",
            );
            continue;
        }
        commands.push(PartialCommand {
            key: key.clone(),
            name,
            rpc,
            from,
            to,
            set: raw.set.clone(),
            fields: own,
            emits,
        });
    }

    // Every state but the first must be reachable, or it is dead code in the lifecycle.
    if let Some(list) = &ctx.states {
        for (state, raw) in states.iter().zip(list.get_ref()).skip(1) {
            if !commands.iter().any(|cmd| cmd.to.as_ref() == Some(state)) {
                c.error(
                    format!("{field}.states"),
                    raw.span(),
                    format!(
                        "no command moves {} to `{}`",
                        with_article(&aggregate.pascal),
                        state.raw
                    ),
                    format!(
                        "add a command with `to = \"{}\"`, or remove the state",
                        state.raw
                    ),
                );
            }
        }
    }

    Lifecycle {
        states,
        crud,
        require_if_match: ctx.require_if_match.as_ref().is_some_and(|b| *b.get_ref()),
        commands,
        updated,
        deleted,
    }
}

fn check_states(c: &mut Collector, field: &str, ctx: &RawContext) -> Vec<Names> {
    let Some(list) = &ctx.states else {
        return Vec::new();
    };
    if list.get_ref().is_empty() {
        c.error(
            format!("{field}.states"),
            list.span(),
            "the list is empty",
            "name the states, the initial one first, e.g. `[\"pending\", \"confirmed\"]`, or remove the key",
        );
    }
    let mut states: Vec<Names> = Vec::new();
    for s in list.get_ref() {
        let at = format!("{field}.states");
        if let Err(p) = check_field_name(s.get_ref()) {
            c.push(&at, s.span(), p);
            continue;
        }
        if states.iter().any(|x| x.raw == *s.get_ref()) {
            c.error(
                &at,
                s.span(),
                format!("`{}` is listed twice", s.get_ref()),
                "list each state once",
            );
            continue;
        }
        states.push(Names::new(s.get_ref()));
    }
    states
}

fn check_crud(c: &mut Collector, field: &str, ctx: &RawContext) -> Crud {
    let Some(list) = &ctx.crud else {
        return Crud {
            create: true,
            read: true,
            update: true,
            delete: true,
        };
    };
    let mut crud = Crud {
        create: false,
        read: false,
        update: false,
        delete: false,
    };
    for op in list.get_ref() {
        let slot = match op.get_ref().as_str() {
            "create" => &mut crud.create,
            "read" => &mut crud.read,
            "update" => &mut crud.update,
            "delete" => &mut crud.delete,
            other => {
                c.error(
                    format!("{field}.crud"),
                    op.span(),
                    format!("`{other}` is not a generated operation"),
                    format!("use any of: {}", Crud::ALL.join(", ")),
                );
                continue;
            }
        };
        if *slot {
            c.error(
                format!("{field}.crud"),
                op.span(),
                format!("`{}` is listed twice", op.get_ref()),
                "list each operation once",
            );
        }
        *slot = true;
    }
    if !crud.read {
        c.error(
            format!("{field}.crud"),
            list.span(),
            "`read` is missing: every resource can be read (its ETag, the cache and the events are built on reads)",
            "add `\"read\"` to the list",
        );
    }
    crud
}

fn list(states: &[Names]) -> String {
    states
        .iter()
        .map(|s| format!("`{}`", s.raw))
        .collect::<Vec<_>>()
        .join(", ")
}
/// The commands of context `p`, the fields each sets checked against `all_fields`; each
/// command's event gets the command's own fields.
pub(super) fn commands(
    c: &mut Collector,
    system: &Names,
    p: &Partial,
    all_fields: &[Field],
    events: &mut [Event],
) -> Vec<Command> {
    let field = format!("contexts.{}", p.key.get_ref());
    let life = &p.lifecycle;
    let mut commands = Vec::new();
    for cmd in &life.commands {
        let at = format!("{field}.commands.{}.set", cmd.key.get_ref());
        let mut set = Vec::new();
        for name in &cmd.set {
            match all_fields.iter().find(|f| f.name == *name.get_ref()) {
                None => c.error(
                    &at,
                    name.span(),
                    format!(
                        "`{}` is not a field of {}",
                        name.get_ref(),
                        p.aggregate.pascal
                    ),
                    format!(
                        "set one of: {}",
                        all_fields
                            .iter()
                            .filter(|f| !f.link)
                            .map(|f| format!("`{}`", f.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
                Some(f) if f.link => c.error(
                    &at,
                    name.span(),
                    format!(
                        "`{}` links to another context's aggregate and never changes after create",
                        name.get_ref()
                    ),
                    "remove it from `set`",
                ),
                Some(_) if set.iter().any(|f: &Field| f.name == *name.get_ref()) => c.error(
                    &at,
                    name.span(),
                    format!("`{}` is listed twice", name.get_ref()),
                    "list each field once",
                ),
                Some(f) => set.push(f.clone()),
            }
        }
        // Numbered from 4 in the request and in the event (1 to 3 are taken in both).
        let own = numbered_from_4(
            cmd.fields
                .iter()
                .map(|(name, kind)| make_field(name, *kind, false, true))
                .collect(),
        );
        let inputs = numbered_from_4(own.iter().chain(&set).cloned().collect());
        if let Some(emitted) = events
            .iter_mut()
            .find(|e| e.name.pascal == cmd.emits.pascal)
        {
            emitted.fields = own.clone();
        }
        commands.push(Command {
            name: cmd.name.clone(),
            rpc: cmd.rpc.clone(),
            from: cmd.from.clone(),
            to: cmd.to.clone(),
            set,
            fields: own,
            inputs,
            reserved_tags: Vec::new(),
            event_type: naming::event_type(system, &p.name, &cmd.emits),
            event: cmd.emits.clone(),
        });
    }
    commands
}

#[cfg(test)]
mod command_tests {
    use crate::error::Error;
    use crate::spec::{Overrides, parse};

    const SHOP: &str = "name = \"shop\"\n[contexts.customers]\n[contexts.orders]\nsubscribes = [\"customers.CustomerCreated\"]\nfields = { note = \"string\", total = \"i64\" }\nstates = [\"open\", \"closed\"]\n[contexts.orders.commands.close]\nfrom = [\"open\"]\nto = \"closed\"\nset = [\"note\"]\nfields = { reason = \"string\" }\n";

    #[test]
    fn a_command_numbers_its_own_fields_then_those_it_sets_and_its_event_carries_its_own() {
        let spec = parse(SHOP, "spec.toml", &Overrides::default()).unwrap();
        let orders = &spec.contexts[1];
        let close = &orders.commands[0];
        let tags = |fields: &[crate::spec::model::Field]| -> Vec<(String, usize)> {
            fields.iter().map(|f| (f.name.clone(), f.tag)).collect()
        };
        assert_eq!(
            tags(&close.inputs),
            [("reason".into(), 4), ("note".into(), 5)]
        );
        let event = orders
            .events
            .iter()
            .find(|e| e.name.pascal == close.event.pascal)
            .unwrap();
        assert_eq!(tags(&event.fields), [("reason".into(), 4)]);
        assert_eq!(close.event_type, "shop.orders.v1.OrderClosed");
    }

    #[test]
    fn a_command_may_set_neither_a_link_nor_an_unknown_field_nor_one_twice() {
        let text = SHOP.replace(
            "set = [\"note\"]",
            "set = [\"customer_id\", \"colour\", \"note\", \"note\"]",
        );
        let Err(Error::Invalid(problems)) = parse(&text, "spec.toml", &Overrides::default()) else {
            panic!("accepted")
        };
        let messages: Vec<&str> = problems.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "`customer_id` links to another context's aggregate and never changes after create",
                "`colour` is not a field of Order",
                "`note` is listed twice",
            ]
        );
    }
}
