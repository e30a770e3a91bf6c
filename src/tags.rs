//! Protobuf field numbers never change once generated. Services and the gateway of one
//! system are deployed one at a time, and events written by an older release wait in
//! outboxes and on the bus, so the aggregate message must stay readable across releases:
//! a field keeps its number, a new field takes a number never used before, and
//! `created_at` stays where it was. A new workspace numbers fields in spec order (`spec`);
//! `update` then renumbers from the aggregate message of the proto it generated last.

use std::collections::BTreeMap;

use crate::layout;
use crate::spec::Spec;

/// The field numbers of `message <name> { ... }` in proto text: field name -> number, and
/// the numbers it reserves.
fn message_tags(proto: &str, message: &str) -> (BTreeMap<String, usize>, Vec<usize>) {
    let mut reserved = Vec::new();
    let mut tags = BTreeMap::new();
    let opening = format!("message {message} {{");
    let mut lines = proto.lines().skip_while(|l| l.trim() != opening);
    if lines.next().is_none() {
        return (tags, reserved);
    }
    for line in lines {
        let line = line.trim();
        if line.starts_with('}') {
            break;
        }
        if line.starts_with("//") {
            continue;
        }
        if let Some(list) = line.strip_prefix("reserved ") {
            let list = list.trim_end_matches(';');
            reserved.extend(
                list.split(',')
                    .filter_map(|n| n.trim().parse::<usize>().ok()),
            );
            continue;
        }
        // `<type> <name> = <number>;`
        let Some((left, right)) = line.split_once('=') else {
            continue;
        };
        let (Some(name), Ok(number)) = (
            left.split_whitespace().last(),
            right.trim().trim_end_matches(';').trim().parse::<usize>(),
        ) else {
            continue;
        };
        tags.insert(name.to_string(), number);
    }
    (tags, reserved)
}

/// Gives every field of every context the number it had in `previous` (path -> proto text
/// as last generated); fields new to a context get numbers above every number it used.
pub fn keep(spec: &mut Spec, previous: &BTreeMap<String, String>) {
    let paths: Vec<String> = spec
        .contexts
        .iter()
        .map(|c| layout::proto(spec, c))
        .collect();
    for (context, path) in spec.contexts.iter_mut().zip(paths) {
        let Some(text) = previous.get(&path) else {
            continue;
        };
        let (old, mut reserved) = message_tags(text, &context.aggregate.name.pascal);
        if old.is_empty() {
            continue;
        }
        let used = old.values().chain(&reserved).copied().max().unwrap_or(1);
        let mut next = used + 1;
        let mut numbers = BTreeMap::new();
        for field in &mut context.all_fields {
            field.tag = match old.get(&field.name) {
                Some(n) => *n,
                None => {
                    next += 1;
                    next - 1
                }
            };
            numbers.insert(field.name.clone(), field.tag);
        }
        for field in context
            .fields
            .iter_mut()
            .chain(&mut context.patchable)
            .chain(&mut context.references)
        {
            field.tag = numbers[&field.name];
        }
        // Numbers for the message's own fields, in the order they were introduced.
        let mut own = |name: &str| {
            old.get(name).copied().unwrap_or_else(|| {
                next += 1;
                next - 1
            })
        };
        context.created_at_tag = own("created_at");
        context.version_tag = own("version");
        context.state_tag = own("state");
        // `state` is the message's own only while the context has states; removed, its
        // number is reserved like a removed field's.
        let has_states = !context.states.is_empty();
        let own_field = |name: &str| {
            matches!(name, "id" | "created_at" | "version") || (name == "state" && has_states)
        };
        reserved.extend(
            old.iter()
                .filter(|(name, _)| !own_field(name))
                .filter(|(name, _)| !numbers.contains_key(*name))
                .map(|(_, n)| *n),
        );
        reserved.sort_unstable();
        reserved.dedup();
        context.reserved_tags = reserved;

        // A command's request and a command's event carry fields of their own (numbered
        // from 4): they keep their numbers the same way.
        for command in &mut context.commands {
            let message = format!("{}Request", command.rpc.pascal);
            command.reserved_tags = renumber(
                &mut command.inputs,
                text,
                &message,
                &["id", "etag", "idempotency_key"],
            );
        }
        let subject = format!("{}_id", context.aggregate.name.snake);
        let fixed = [
            subject.as_str(),
            context.aggregate.name.snake.as_str(),
            "version",
        ];
        for event in &mut context.events {
            event.reserved_tags = renumber(&mut event.fields, text, &event.name.pascal, &fixed);
        }
    }
}

/// Gives `fields` the numbers they have in `message` of `proto` (the others, past every
/// number used there); returns what the message must reserve: numbers it reserved, and
/// those of fields that are gone (other than the message's `fixed` fields).
fn renumber(
    fields: &mut [crate::spec::model::Field],
    proto: &str,
    message: &str,
    fixed: &[&str],
) -> Vec<usize> {
    let (old, mut reserved) = message_tags(proto, message);
    if old.is_empty() {
        return Vec::new();
    }
    let mut next = old
        .values()
        .chain(&reserved)
        .copied()
        .max()
        .unwrap_or(0)
        .max(3)
        + 1;
    for field in fields.iter_mut() {
        field.tag = match old.get(&field.name) {
            Some(n) => *n,
            None => {
                next += 1;
                next - 1
            }
        };
    }
    reserved.extend(
        old.iter()
            .filter(|(name, _)| !fixed.contains(&name.as_str()))
            .filter(|(name, _)| !fields.iter().any(|f| &f.name == *name))
            .map(|(_, n)| *n),
    );
    reserved.sort_unstable();
    reserved.dedup();
    reserved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Overrides, parse};

    const OLD: &str = "message Order {\n  // A UUIDv7.\n  string id = 1;\n  int64 total_cents = 2;\n  google.protobuf.Timestamp created_at = 3;\n}\n\nmessage CreateOrderRequest {\n  string idempotency_key = 1;\n}\n";

    #[test]
    fn fields_keep_their_numbers_and_new_ones_take_unused_numbers() {
        let text = "name = \"shop\"\n[contexts.orders]\nfields = { note = \"string\", total_cents = \"i64\", rush = \"bool\" }\n";
        let mut spec = parse(text, "spec.toml", &Overrides::default()).unwrap();
        let fresh: Vec<usize> = spec.contexts[0].all_fields.iter().map(|f| f.tag).collect();
        assert_eq!(fresh, [2, 3, 4]);
        assert_eq!(spec.contexts[0].created_at_tag, 5);

        let previous = BTreeMap::from([(
            "proto/shop/orders/v1/orders.proto".to_string(),
            OLD.to_string(),
        )]);
        keep(&mut spec, &previous);
        let ctx = &spec.contexts[0];
        let tags: Vec<(&str, usize)> = ctx
            .all_fields
            .iter()
            .map(|f| (f.name.as_str(), f.tag))
            .collect();
        assert_eq!(tags, [("note", 4), ("total_cents", 2), ("rush", 5)]);
        assert_eq!(ctx.created_at_tag, 3);
        // A message generated before versions had none: they take the next free numbers.
        assert_eq!((ctx.version_tag, ctx.state_tag), (6, 7));
        assert_eq!(
            ctx.fields.iter().map(|f| f.tag).collect::<Vec<_>>(),
            [4, 2, 5]
        );
    }

    #[test]
    fn a_removed_fields_number_is_reserved_and_never_reused() {
        let text = "name = \"shop\"\n[contexts.orders]\nfields = { note = \"string\" }\n";
        let mut spec = parse(text, "spec.toml", &Overrides::default()).unwrap();
        let previous = BTreeMap::from([(
            "proto/shop/orders/v1/orders.proto".to_string(),
            OLD.to_string(),
        )]);
        keep(&mut spec, &previous);
        assert_eq!(spec.contexts[0].all_fields[0].tag, 4);
        assert_eq!(spec.contexts[0].reserved_tags, [2]);

        let later = "message Order {\n  string id = 1;\n  string note = 4;\n  google.protobuf.Timestamp created_at = 3;\n  reserved 2, 5;\n}\n";
        let text =
            "name = \"shop\"\n[contexts.orders]\nfields = { note = \"string\", rush = \"bool\" }\n";
        let mut spec = parse(text, "spec.toml", &Overrides::default()).unwrap();
        let previous = BTreeMap::from([(
            "proto/shop/orders/v1/orders.proto".to_string(),
            later.to_string(),
        )]);
        keep(&mut spec, &previous);
        assert_eq!(
            spec.contexts[0].all_fields[1].tag, 6,
            "above the reserved 5"
        );
        assert_eq!(spec.contexts[0].reserved_tags, [2, 5]);
    }

    #[test]
    fn command_and_event_fields_keep_their_numbers_too() {
        let text = "name = \"shop\"\n[contexts.orders]\nstates = [\"open\", \"done\"]\n[contexts.orders.commands.close]\nto = \"done\"\nfields = { refund_cents = \"i64\", memo = \"string\" }\n";
        let mut spec = parse(text, "spec.toml", &Overrides::default()).unwrap();
        let numbers = |fields: &[crate::spec::model::Field]| -> Vec<(String, usize)> {
            fields.iter().map(|f| (f.name.clone(), f.tag)).collect()
        };
        // Generated before: `reason` then `refund_cents`; `reason` is gone, `memo` is new.
        let previous = BTreeMap::from([(
            "proto/shop/orders/v1/orders.proto".to_string(),
            "message Order {\n  string id = 1;\n  google.protobuf.Timestamp created_at = 2;\n  int64 version = 3;\n  string state = 4;\n}\n\nmessage CloseOrderRequest {\n  string id = 1;\n  string etag = 2;\n  string idempotency_key = 3;\n  string reason = 4;\n  int64 refund_cents = 5;\n}\n\nmessage OrderDone {\n  string order_id = 1;\n  Order order = 2;\n  int64 version = 3;\n  string reason = 4;\n  int64 refund_cents = 5;\n}\n".to_string(),
        )]);
        keep(&mut spec, &previous);
        let ctx = &spec.contexts[0];
        let expected = vec![("refund_cents".to_string(), 5), ("memo".to_string(), 6)];
        assert_eq!(numbers(&ctx.commands[0].inputs), expected);
        assert_eq!(ctx.commands[0].reserved_tags, [4]);
        let event = ctx
            .events
            .iter()
            .find(|e| e.name.pascal == "OrderDone")
            .unwrap();
        assert_eq!(numbers(&event.fields), expected);
        assert_eq!(event.reserved_tags, [4]);
        assert_eq!(ctx.state_tag, 4);
    }

    #[test]
    fn only_the_aggregate_message_counts() {
        let (tags, _) = message_tags(OLD, "Order");
        assert_eq!(
            tags.into_iter().collect::<Vec<_>>(),
            [
                ("created_at".to_string(), 3),
                ("id".to_string(), 1),
                ("total_cents".to_string(), 2)
            ]
        );
        assert!(message_tags(OLD, "Invoice").0.is_empty());
    }
}
