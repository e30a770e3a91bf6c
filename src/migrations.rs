//! Schema evolution: a migration, once generated, is never changed again.
//!
//! A database in production has applied the old migrations, and sqlx refuses to start when
//! an applied migration's checksum no longer matches its file. So when `update` renders a
//! workspace, the migrations it generated before keep their exact bytes, a migration the
//! blueprints add later gets the next free number, and fields added to the spec become a
//! new `NNNN_add_<fields>.sql` that alters the table. Removing or retyping a column is
//! refused: that takes two releases (expand, then contract) and a human's judgement.

use std::collections::BTreeMap;

use indexmap::IndexMap;

use crate::error::{Error, Result};
use crate::layout::{self, migrations_dir, service_dir, service_of_migration};
use crate::lock::Columns;
use crate::ownership::{self, Owner, PlannedFile};
use crate::spec::Spec;
use crate::spec::model::FieldType;

/// The column of an aggregate with `states`: tracked like a field, so `update` adds it
/// when states are added to an existing context.
const STATE: &str = "state";

/// What each service's migrations create when generated from `spec` alone.
pub fn tables_of(spec: &Spec) -> IndexMap<String, Columns> {
    spec.contexts
        .iter()
        .map(|c| {
            let mut columns: Columns = c
                .all_fields
                .iter()
                .map(|f| (f.name.clone(), f.kind))
                .collect();
            if !c.states.is_empty() {
                columns.insert(STATE.to_string(), FieldType::String);
            }
            (service_dir(c).to_string(), columns)
        })
        .collect()
}

/// One migration the workspace already has: its path and, where known, its bytes as
/// generated (`None` for one the user wrote, which is theirs and only counts for numbering).
pub struct Existing {
    pub path: String,
    pub contents: Option<Vec<u8>>,
}

/// A service as the workspace has it: its migrations and the columns they create.
pub struct ExistingService {
    pub columns: Columns,
    pub migrations: Vec<Existing>,
}

/// The number and the name of a migration file: `0002_bus.sql` is (2, "bus").
fn split_name(path: &str) -> Option<(u32, &str)> {
    let file = path.rsplit('/').next()?.strip_suffix(".sql")?;
    let (number, name) = file.split_once('_')?;
    Some((number.parse().ok()?, name))
}

/// The columns a format-1 workspace's `0001_init.sql` creates: that version recorded no
/// tables in its lock, and its first migration was the only one that shaped the table.
pub fn columns_from_init_sql(sql: &str) -> Option<Columns> {
    let mut lines = sql
        .lines()
        .skip_while(|l| !l.starts_with("CREATE TABLE \""));
    lines.next()?;
    let mut columns = Columns::new();
    for line in lines {
        let line = line.trim();
        if line.starts_with(')') {
            return Some(columns);
        }
        let Some(rest) = line.strip_prefix('"') else {
            continue;
        };
        let (name, rest) = rest.split_once('"')?;
        if name == "id" || name == "created_at" {
            continue;
        }
        let sql_type = rest.trim().strip_suffix(',').unwrap_or(rest.trim());
        let sql_type = sql_type.strip_suffix(" NOT NULL")?;
        columns.insert(name.to_string(), FieldType::from_sql(sql_type)?);
    }
    None
}

/// Replaces the rendered migrations of every service the workspace already has with the
/// ones it has, plus what is new: blueprint migrations it lacks (renumbered after its
/// last) and one that adds the spec's new fields. `by_hand` accepts removed or retyped
/// fields whose migration the user wrote.
pub fn evolve(
    files: &mut BTreeMap<String, PlannedFile>,
    spec: &Spec,
    existing: &BTreeMap<String, ExistingService>,
    by_hand: bool,
) -> Result<()> {
    let mut problems = Vec::new();
    for context in &spec.contexts {
        let service = service_dir(context);
        let Some(before) = existing.get(service) else {
            continue;
        };
        let dir = migrations_dir(service);
        let table = &layout::table(&context.aggregate.name.snake);
        let creates_table = format!("CREATE TABLE \"{table}\"");
        let known_table = before.migrations.iter().any(|m| {
            m.contents
                .as_deref()
                .is_some_and(|c| String::from_utf8_lossy(c).contains(&creates_table))
        });
        if !known_table && before.migrations.iter().any(|m| m.contents.is_some()) {
            problems.push(format!(
                "contexts.{}: the aggregate's table would be `{table}`, which none of {dir}*.sql creates: the aggregate was renamed\n  = help: put the previous `aggregate` back; renaming a table takes a migration you write yourself (ALTER TABLE ... RENAME) and is not something `update` does",
                context.name.raw
            ));
            continue;
        }

        let mut added = Vec::new();
        for field in &context.all_fields {
            match before.columns.get(&field.name) {
                None => added.push(field),
                Some(kind) if *kind != field.kind && !by_hand => problems.push(format!(
                    "contexts.{}.fields.{}: changes type from {} to {}, but {table}.{} already exists in the database\n  = help: archscaffold never retypes a column. Expand and contract: add a new field with the new type, copy the data in a migration of your own under {dir}, move readers to it, then remove the old field; or write the ALTER ... TYPE migration yourself and run `archscaffold update --fields-migrated-by-hand`",
                    context.name.raw,
                    field.name,
                    kind.as_str(),
                    field.kind.as_str(),
                    field.name
                )),
                Some(_) => {}
            }
        }
        let adds_state = !context.states.is_empty() && !before.columns.contains_key(STATE);
        let has_state = |c: &str| c == STATE && !context.states.is_empty();
        if !by_hand {
            for (column, _) in before
                .columns
                .iter()
                .filter(|(c, _)| !context.all_fields.iter().any(|f| &&f.name == c))
                .filter(|(c, _)| !has_state(c))
            {
                problems.push(format!(
                    "contexts.{}.fields: `{column}` was removed, but {table}.{column} exists in the database and the generated code would stop writing it\n  = help: archscaffold never drops a column. Put the field back, or contract it by hand: write a migration under {dir} that drops the column (or its NOT NULL), then run `archscaffold update --fields-migrated-by-hand`",
                    context.name.raw
                ));
            }
        }

        let rendered: Vec<(String, PlannedFile)> = files
            .iter()
            .filter(|(p, _)| service_of_migration(p) == Some(service))
            .map(|(p, f)| (p.clone(), f.clone()))
            .collect();
        for (path, _) in &rendered {
            files.remove(path);
        }
        let mut last = 0;
        let mut names = Vec::new();
        for m in &before.migrations {
            if let Some((number, name)) = split_name(&m.path) {
                last = last.max(number);
                names.push(name.to_string());
            }
            if let Some(contents) = &m.contents {
                files.insert(
                    m.path.clone(),
                    PlannedFile {
                        contents: contents.clone(),
                        owner: Owner::Generator,
                    },
                );
            }
        }
        for (path, file) in rendered {
            let Some((_, name)) = split_name(&path) else {
                continue;
            };
            if names.iter().any(|n| n == name) {
                continue;
            }
            last += 1;
            files.insert(format!("{dir}{last:04}_{name}.sql"), file);
        }
        if !added.is_empty() || adds_state {
            last += 1;
            let mut list: Vec<&str> = added.iter().map(|f| f.name.as_str()).collect();
            if adds_state {
                list.push(STATE);
            }
            let mut name = format!("add_{}", list.join("_"));
            name.truncate(48);
            let path = format!("{dir}{last:04}_{name}.sql");
            let mut sql = String::from(
                "-- Fields added to archscaffold.toml after this service's earlier migrations. Existing\n-- rows get the type's zero value; the default stays, so the release before this one,\n-- still running during a rollout, can insert rows.\n",
            );
            for field in &added {
                sql.push_str(&format!(
                    "ALTER TABLE \"{table}\" ADD COLUMN \"{}\" {} NOT NULL DEFAULT {};\n",
                    field.name,
                    field.kind.sql(),
                    field.kind.sql_default()
                ));
            }
            if adds_state {
                // Existing rows are in the initial state.
                sql.push_str(&format!(
                    "ALTER TABLE \"{table}\" ADD COLUMN \"{STATE}\" TEXT NOT NULL DEFAULT '{}';\n",
                    context.states[0].raw
                ));
            }
            for field in added.iter().filter(|f| f.link) {
                sql.push_str(&format!(
                    "CREATE INDEX \"{table}_{0}\" ON \"{table}\" (\"{0}\");\n",
                    field.name
                ));
            }
            let contents = ownership::with_header(&path, sql.as_bytes(), Owner::Generator);
            files.insert(
                path,
                PlannedFile {
                    contents,
                    owner: Owner::Generator,
                },
            );
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::SchemaChange(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_number_and_identity() {
        assert_eq!(
            split_name("services/a/migrations/0002_bus.sql"),
            Some((2, "bus"))
        );
        assert_eq!(
            split_name("services/a/migrations/0012_add_note_x.sql"),
            Some((12, "add_note_x"))
        );
        assert_eq!(split_name("services/a/migrations/README.md"), None);
    }

    #[test]
    fn the_columns_of_a_version_one_init_migration() {
        let sql = "-- header\nCREATE TABLE \"order_items\" (\n    \"id\" UUID PRIMARY KEY,\n    \"quantity\" INTEGER NOT NULL,\n    \"price\" DOUBLE PRECISION NOT NULL,\n    \"product_id\" TEXT NOT NULL,\n    \"created_at\" TIMESTAMPTZ NOT NULL\n);\n\nCREATE TABLE outbox (\n  id UUID\n);\n";
        let columns = columns_from_init_sql(sql).unwrap();
        assert_eq!(
            columns.into_iter().collect::<Vec<_>>(),
            vec![
                ("quantity".to_string(), FieldType::I32),
                ("price".to_string(), FieldType::F64),
                ("product_id".to_string(), FieldType::String),
            ]
        );
        assert!(columns_from_init_sql("CREATE TABLE outbox (id UUID);").is_none());
    }
}
