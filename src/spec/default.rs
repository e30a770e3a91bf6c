//! The default spec built from `--contexts a,b,c` (DESIGN.md section 2): each context owns
//! one aggregate named after it, publishes `<Aggregate>Created`, and every context after the
//! first subscribes to the previous one's event, so a create flows down the chain.

use super::model::{Bus, Spec};
use super::names::check_crate_name;
use crate::error::{Diagnostic, Error, Origin, Result};
use crate::inflect::{self, Names};

const FLAG: &str = "--contexts";

pub fn from_contexts(system: &str, contexts: &[String], bus: Bus) -> Result<Spec> {
    super::check_name_argument(system)?;
    let mut diagnostics = Vec::new();
    let mut push = |field: String, message: String, help: String| {
        diagnostics.push(Diagnostic {
            field,
            origin: Origin::Flag(FLAG),
            message,
            help,
        })
    };
    let contexts: Vec<&str> = contexts.iter().map(|c| c.trim()).collect();
    if contexts.iter().all(|c| c.is_empty()) {
        push(
            "contexts".into(),
            "no bounded contexts given".into(),
            "list at least one, e.g. `--contexts orders,billing`".into(),
        );
    }
    let mut valid: Vec<Names> = Vec::new();
    for raw in contexts.iter().filter(|c| !c.is_empty()) {
        let field = format!("contexts.{raw}");
        match check_crate_name(raw, "context", true) {
            Err(p) => push(field, p.message, p.help),
            Ok(n) => match valid.iter().find(|v| v.snake == n.snake) {
                Some(v) if v.raw == n.raw => push(
                    field,
                    format!("`{raw}` is listed twice"),
                    "give every context a distinct name".into(),
                ),
                Some(v) => push(
                    field,
                    format!(
                        "`{raw}` collides with `{}`: both become `{}`",
                        v.raw, n.snake
                    ),
                    "give every context a distinct name".into(),
                ),
                None => valid.push(n),
            },
        }
    }
    if !diagnostics.is_empty() {
        return Err(Error::Invalid(diagnostics));
    }
    super::parse_generated(&default_toml(system, &valid, bus), FLAG)
}

/// The default spec as TOML text; every name in it has been checked, so none needs quoting.
fn default_toml(system: &str, contexts: &[Names], bus: Bus) -> String {
    let mut out = format!("name = \"{system}\"\nbus = \"{}\"\n", bus.as_str());
    let mut previous: Option<(&Names, String)> = None;
    for ctx in contexts {
        let aggregate = Names::new(&inflect::singular(&ctx.snake)).pascal;
        out.push_str(&format!(
            "\n[contexts.{}]\naggregate = \"{aggregate}\"\npublishes = [\"{aggregate}Created\"]\n",
            ctx.raw
        ));
        if let Some((prev, prev_aggregate)) = &previous {
            out.push_str(&format!(
                "subscribes = [\"{}.{prev_aggregate}Created\"]\n",
                prev.raw
            ));
        }
        previous = Some((ctx, aggregate));
    }
    out
}
