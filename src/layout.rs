//! Where each generated file goes and what each table is called: the one owner of the
//! output layout. Modules that need a path ask here instead of spelling it again.

use crate::inflect;
use crate::spec::Spec;
use crate::spec::model::Context;

/// The spec file every generated workspace keeps as its source of truth.
pub const SPEC_FILE: &str = "archscaffold.toml";
/// What archscaffold generated, with a hash per file and the columns of each table.
pub const LOCK_FILE: &str = "archscaffold.lock";
/// The files as last generated: the base of `update`'s three-way merges.
pub const BASE_DIR: &str = ".archscaffold/base";
/// Where a workspace vendors the chassis crate (`blueprints/platform`, see `platform`).
pub const VENDORED_PLATFORM: &str = "crates/platform";
/// The OpenAPI document of the gateway's routes.
pub const OPENAPI: &str = "docs/openapi.yaml";

/// A vendored platform file's path in the workspace, from its path inside the crate.
pub fn vendored_platform_file(path: &str) -> String {
    format!("{VENDORED_PLATFORM}/{path}")
}

/// The path inside the vendored platform of a workspace path, if it is one of its files.
pub fn in_vendored_platform(path: &str) -> Option<&str> {
    path.strip_prefix(VENDORED_PLATFORM)?.strip_prefix('/')
}

/// A context's service directory under `services/`; it also keys its table in the lock.
pub fn service_dir(context: &Context) -> &str {
    &context.name.kebab
}

/// A context's service folder in the workspace, `services/<dir>`.
pub fn service_folder(context: &Context) -> String {
    format!("services/{}", service_dir(context))
}

/// The folder of a service's migrations, with its trailing slash.
pub fn migrations_dir(service: &str) -> String {
    format!("services/{service}/migrations/")
}

/// The service directory of a migration path (`services/<dir>/migrations/<file>.sql`).
pub fn service_of_migration(path: &str) -> Option<&str> {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["services", dir, "migrations", file] if file.ends_with(".sql") => Some(dir),
        _ => None,
    }
}

/// Where a context's proto lives.
pub fn proto(spec: &Spec, context: &Context) -> String {
    format!(
        "proto/{0}/{1}/v1/{1}.proto",
        spec.system.snake, context.name.snake
    )
}

/// The system a proto path belongs to (`proto/<system>/...`).
pub fn system_of_proto(path: &str) -> Option<&str> {
    path.strip_prefix("proto/")?
        .split_once('/')
        .map(|(system, _)| system)
}

/// The generated file that defines an owner's sagas.
pub fn sagas(owner_dir: &str) -> String {
    format!("services/{owner_dir}/src/sagas.rs")
}

/// The table an aggregate is stored in: its plural, in snake_case (`order_items`).
pub fn table(aggregate_snake: &str) -> String {
    inflect::plural(aggregate_snake)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migration_path_names_its_service_and_nothing_else_does() {
        assert_eq!(
            service_of_migration(&format!("{}0002_bus.sql", migrations_dir("orders"))),
            Some("orders")
        );
        assert_eq!(
            service_of_migration("services/orders/migrations/README.md"),
            None
        );
        assert_eq!(
            service_of_migration("services/orders/src/migrations/0001.sql"),
            None
        );
        assert_eq!(table("order_item"), "order_items");
    }
}
