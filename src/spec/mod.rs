//! The spec: what the user asks for, from a TOML file or from `--contexts`.
//!
//! `raw` is the serde model of the file, `validate` turns it into the checked `model`,
//! `default` builds a spec from a list of context names, and `canonical` writes the
//! resolved spec back as the `archscaffold.toml` the generated workspace keeps.

mod canonical;
mod default;
pub mod edit;
pub mod map;
pub mod model;
pub mod names;
pub mod naming;
mod raw;
pub mod routes;
mod validate;
pub mod walkthrough;

use std::path::Path;

pub use canonical::to_toml;
pub use default::from_contexts;
pub use model::{Bus, Spec};
pub use validate::BASE_GRPC_PORT;

use crate::error::{Diagnostic, Error, Origin, Result};
use validate::Source;

/// Overrides the command line applies on top of a spec file.
#[derive(Debug, Default, Clone)]
pub struct Overrides<'a> {
    pub name: Option<&'a str>,
    pub bus: Option<Bus>,
}

/// Reads and validates a spec file.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Spec> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::SpecUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string(), overrides)
}

/// Parses and validates spec text; `path` is only used in messages.
pub fn parse(text: &str, path: &str, overrides: &Overrides) -> Result<Spec> {
    let source = Source {
        path: path.to_string(),
        text,
        flag: None,
    };
    let mut raw: raw::RawSpec = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        Error::Invalid(vec![Diagnostic {
            field: "spec".to_string(),
            origin: source.origin(span),
            message: e.message().trim_end().to_string(),
            help: "see the spec reference in the README (section `The spec`)".to_string(),
        }])
    })?;
    if let Some(name) = overrides.name {
        check_name_argument(name)?;
        let span = raw.name.span();
        raw.name = toml::Spanned::new(span, name.to_string());
    }
    if let Some(bus) = overrides.bus {
        raw.bus = Some(toml::Spanned::new(0..0, bus.as_str().to_string()));
    }
    validate::validate(&raw, &source).map_err(Error::Invalid)
}

/// Checks the `<NAME>` argument of `new`, which names the system whatever the spec says.
fn check_name_argument(name: &str) -> Result<()> {
    names::check_crate_name(name, "system", false).map_err(|p| {
        Error::Invalid(vec![Diagnostic {
            field: "name".into(),
            origin: Origin::Flag("<NAME>"),
            message: p.message,
            help: p.help,
        }])
    })?;
    Ok(())
}

/// Validates spec text built by the generator itself (the default spec), reporting every
/// location as the flag it came from.
fn parse_generated(text: &str, flag: &'static str) -> Result<Spec> {
    let source = Source {
        path: String::new(),
        text,
        flag: Some(flag),
    };
    let raw: raw::RawSpec = toml::from_str(text)
        .map_err(|e| Error::Blueprint(format!("default spec did not parse: {e}")))?;
    validate::validate(&raw, &source).map_err(Error::Invalid)
}
