//! Rules for names: what a system, context, aggregate, event or field may be called.
//!
//! A name must survive every case conversion the blueprints apply (it becomes a directory,
//! a cargo package, a Rust module, a Postgres database and a protobuf package), so each
//! check looks at the converted forms, not only at what the user typed.

use crate::inflect::Names;

/// A problem with one name: what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameProblem {
    pub message: String,
    pub help: String,
}

fn problem(message: impl Into<String>, help: impl Into<String>) -> NameProblem {
    NameProblem {
        message: message.into(),
        help: help.into(),
    }
}

/// Strict and reserved keywords of Rust 2024, plus `Self`.
const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut",
    "pub", "ref", "return", "self", "Self", "static", "struct", "super", "trait", "true", "type",
    "unsafe", "use", "where", "while", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try",
];

/// Crate names a context may not take: the generated crates, and the crates every service
/// depends on (a package named `tokio` could not depend on tokio).
const RESERVED_CRATES: &[&str] = &[
    "gateway",
    "platform",
    "contracts",
    "std",
    "core",
    "alloc",
    "test",
    "proc_macro",
    "tokio",
    "tokio_stream",
    "tonic",
    "tonic_health",
    "tonic_prost",
    "tonic_prost_build",
    "prost",
    "prost_types",
    "protox",
    "sqlx",
    "uuid",
    "serde",
    "serde_json",
    "sha2",
    "thiserror",
    "tracing",
    "tracing_subscriber",
    "axum",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
    "tracing_opentelemetry",
    "metrics",
    "metrics_exporter_prometheus",
    "clap",
    "futures_util",
    "governor",
    "http",
    "jsonwebtoken",
    "redis",
    "reqwest",
    "tower",
    "rdkafka",
    "aws_sdk_sqs",
    "base64",
];

/// The longest context or system name: it ends up in Postgres database names (63 bytes).
const MAX_LEN: usize = 40;

pub fn is_rust_keyword(s: &str) -> bool {
    RUST_KEYWORDS.contains(&s)
}

/// Checks a name that becomes directories, crates and packages: a system or a context.
pub fn check_crate_name(raw: &str, what: &str, reserved: bool) -> Result<Names, NameProblem> {
    let example = if what == "context" { "orders" } else { "shop" };
    if raw.is_empty() {
        return Err(problem(
            format!("the {what} name is empty"),
            format!("give a name such as `{example}`"),
        ));
    }
    if raw.contains('/') || raw.contains('\\') {
        return Err(problem(
            format!("`{raw}` contains a path separator"),
            format!("use a plain name such as `{example}`: it becomes one directory"),
        ));
    }
    if raw.contains("..") {
        return Err(problem(
            format!("`{raw}` contains `..`, which would escape the workspace"),
            format!("use a plain name such as `{example}`"),
        ));
    }
    if let Some(bad) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(problem(
            format!("`{raw}` contains `{bad}`"),
            "use ASCII letters, digits, `-` and `_` only",
        ));
    }
    if !raw.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(problem(
            format!("`{raw}` does not start with a letter"),
            format!("start the name with a letter, e.g. `{example}_{raw}`"),
        ));
    }
    if raw.len() > MAX_LEN {
        return Err(problem(
            format!("`{raw}` is longer than {MAX_LEN} characters"),
            "shorten it: it is part of database and package names",
        ));
    }
    let names = Names::new(raw);
    if is_rust_keyword(&names.snake) {
        return Err(problem(
            format!("`{raw}` becomes `{}`, a Rust keyword", names.snake),
            format!(
                "rename it, e.g. `{}s` or `{}_{what}`",
                names.snake, names.snake
            ),
        ));
    }
    if reserved && RESERVED_CRATES.contains(&names.snake.as_str()) {
        return Err(problem(
            format!(
                "`{raw}` becomes `{}`, a crate name the generated workspace already uses",
                names.snake
            ),
            format!("rename it, e.g. `{}_{what}`", names.snake),
        ));
    }
    Ok(names)
}

/// Checks a PascalCase type name: an aggregate or an event.
pub fn check_type_name(raw: &str, example: &str) -> Result<Names, NameProblem> {
    let names = Names::new(raw);
    let well_formed = raw.starts_with(|c: char| c.is_ascii_uppercase())
        && raw.chars().all(|c| c.is_ascii_alphanumeric())
        && names.pascal == raw;
    if !well_formed {
        let fix = if names.pascal.starts_with(|c: char| c.is_ascii_uppercase()) {
            format!("write it in PascalCase, e.g. `{}`", names.pascal)
        } else {
            format!("write it in PascalCase, e.g. `{example}`")
        };
        return Err(problem(
            format!("`{raw}` is not a PascalCase type name"),
            fix,
        ));
    }
    if is_rust_keyword(raw) || is_rust_keyword(&names.snake) {
        return Err(problem(
            format!("`{raw}` becomes `{}`, a Rust keyword", names.snake),
            format!("rename it, e.g. `{example}`"),
        ));
    }
    Ok(names)
}

/// Checks a snake_case field name.
pub fn check_field_name(raw: &str) -> Result<(), NameProblem> {
    let snake = Names::new(raw).snake;
    let well_formed = raw.starts_with(|c: char| c.is_ascii_lowercase())
        && raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && snake == raw;
    if !well_formed {
        let fix = if snake.starts_with(|c: char| c.is_ascii_lowercase()) {
            format!("write it in snake_case, e.g. `{snake}`")
        } else {
            "write it in snake_case starting with a letter, e.g. `total_cents`".to_string()
        };
        return Err(problem(
            format!("`{raw}` is not a snake_case field name"),
            fix,
        ));
    }
    if is_rust_keyword(raw) {
        return Err(problem(
            format!("`{raw}` is a Rust keyword"),
            format!("rename it, e.g. `{raw}_value`"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names_in_any_case() {
        for ok in [
            "orders",
            "order-items",
            "order_items",
            "OrderItems",
            "v2_orders",
        ] {
            assert!(check_crate_name(ok, "context", true).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_names_that_break_after_conversion() {
        for bad in [
            "", "a/b", "..", "or$ders", "2fa", "type", "self", "gateway", "tokio", "_x",
        ] {
            assert!(check_crate_name(bad, "context", true).is_err(), "{bad}");
        }
    }

    #[test]
    fn type_and_field_names_need_their_case() {
        assert!(check_type_name("Order", "Order").is_ok());
        assert!(check_type_name("order", "Order").is_err());
        assert!(check_type_name("Order_Item", "Order").is_err());
        assert!(check_field_name("total_cents").is_ok());
        assert!(check_field_name("totalCents").is_err());
        assert!(check_field_name("fn").is_err());
    }
}
