//! Edits a spec's text in place for `add context`, with `toml_edit`, so the user's
//! comments, key order and layout survive. The caller validates the result.

use toml_edit::{Array, DocumentMut, Item, Table, value};

/// A context to add, as given on the command line.
#[derive(Debug, Default)]
pub struct NewContext<'a> {
    pub name: &'a str,
    pub aggregate: Option<&'a str>,
    pub subscribes: &'a [String],
    pub calls: &'a [String],
}

/// The spec text with `[contexts.<name>]` appended; an error message when the text is
/// not TOML or the context exists.
pub fn add_context(text: &str, context: &NewContext<'_>) -> Result<String, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let contexts = doc
        .entry("contexts")
        .or_insert_with(|| {
            let mut table = Table::new();
            table.set_implicit(true);
            Item::Table(table)
        })
        .as_table_mut()
        .ok_or("`contexts` is not a table")?;
    if contexts.contains_key(context.name) {
        return Err(format!("context `{}` already exists", context.name));
    }
    let mut table = Table::new();
    if let Some(aggregate) = context.aggregate {
        table["aggregate"] = value(aggregate);
    }
    let list = |items: &[String]| value(items.iter().map(String::as_str).collect::<Array>());
    if !context.subscribes.is_empty() {
        table["subscribes"] = list(context.subscribes);
    }
    if !context.calls.is_empty() {
        table["calls"] = list(context.calls);
    }
    contexts.insert(context.name, Item::Table(table));
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_layout_survive() {
        let text = "# my system\nname = \"shop\"  # keep me\n\n[contexts.orders]\nfields = { total = \"i64\" }   # money\n";
        let out = add_context(
            text,
            &NewContext {
                name: "shipping",
                aggregate: Some("Shipment"),
                subscribes: &["orders.OrderCreated".to_string()],
                calls: &[],
            },
        )
        .unwrap();
        assert!(out.starts_with(text), "{out}");
        assert!(
            out.ends_with("\n[contexts.shipping]\naggregate = \"Shipment\"\nsubscribes = [\"orders.OrderCreated\"]\n"),
            "{out}"
        );
    }

    #[test]
    fn an_existing_context_is_refused() {
        let err = add_context(
            "name = \"shop\"\n[contexts.orders]\n",
            &NewContext {
                name: "orders",
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err, "context `orders` already exists");
    }
}
