//! Edits a spec's text in place for `add context` and `add template`, with `toml_edit`, so
//! the user's comments, key order and layout survive. The caller validates the result.

use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, value};

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

/// A team template to add, as given on the command line.
#[derive(Debug, Default)]
pub struct NewTemplate<'a> {
    pub name: &'a str,
    pub path: Option<&'a str>,
    pub git: Option<&'a str>,
    pub rev: Option<&'a str>,
    pub subfolder: Option<&'a str>,
    pub each: Option<&'a str>,
    pub owner: Option<&'a str>,
    /// `KEY=VALUE` pairs; `true` and `false` are booleans, anything else a string.
    pub values: &'a [(String, String)],
}

/// The spec text with a `[[template]]` entry appended; an error message when the text is
/// not TOML or a template of that name exists.
pub fn add_template(text: &str, template: &NewTemplate<'_>) -> Result<String, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let entries = doc
        .entry("template")
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or("`template` is not a list of `[[template]]` tables")?;
    let taken = entries
        .iter()
        .any(|t| t.get("name").and_then(Item::as_str) == Some(template.name));
    if taken {
        return Err(format!("template `{}` already exists", template.name));
    }
    let mut table = Table::new();
    table["name"] = value(template.name);
    for (key, given) in [
        ("path", template.path),
        ("git", template.git),
        ("rev", template.rev),
        ("subfolder", template.subfolder),
        ("each", template.each),
        ("owner", template.owner),
    ] {
        if let Some(given) = given {
            table[key] = value(given);
        }
    }
    if !template.values.is_empty() {
        let mut values = Table::new();
        for (key, given) in template.values {
            values[key.as_str()] = match given.as_str() {
                "true" => value(true),
                "false" => value(false),
                other => value(other),
            };
        }
        table["values"] = Item::Table(values);
    }
    entries.push(table);
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

    #[test]
    fn a_template_entry_is_appended_and_a_name_taken_is_refused() {
        let text = "name = \"shop\"  # mine\n[contexts.orders]\n";
        let values = [
            ("team".to_string(), "payments".to_string()),
            ("pager".to_string(), "true".to_string()),
        ];
        let entry = NewTemplate {
            name: "team-ci",
            git: Some("file:///srv/x.git"),
            rev: Some("v1"),
            each: Some("context"),
            values: &values,
            ..Default::default()
        };
        let out = add_template(text, &entry).unwrap();
        assert!(out.starts_with(text), "{out}");
        assert!(
            out.ends_with("\n[[template]]\nname = \"team-ci\"\ngit = \"file:///srv/x.git\"\nrev = \"v1\"\neach = \"context\"\n\n[template.values]\nteam = \"payments\"\npager = true\n"),
            "{out}"
        );
        assert_eq!(
            add_template(&out, &entry).unwrap_err(),
            "template `team-ci` already exists"
        );
    }
}
