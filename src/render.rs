//! Liquid rendering: one parser with the case filters registered in one place, and the
//! globals every template sees (`system`, `bus`, `contexts`, `version`, `platform`, and
//! `context` in a per-context set).

use heck::{ToKebabCase, ToPascalCase, ToShoutySnakeCase, ToSnakeCase};
use std::collections::BTreeMap;

use liquid_core::{
    Display_filter, Filter, FilterReflection, ObjectView, ParseFilter, Runtime, Value, ValueView,
};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::platform::Chassis;
use crate::spec::model::Context;
use crate::spec::{Spec, naming};

/// Defines a Liquid filter that applies one conversion of a name to its input.
macro_rules! name_filter {
    ($parse:ident, $filter:ident, $name:literal, $convert:path) => {
        #[derive(Clone, ParseFilter, FilterReflection)]
        #[filter(name = $name, description = "Converts a name.", parsed($filter))]
        struct $parse;

        #[derive(Debug, Default, Display_filter)]
        #[name = $name]
        struct $filter;

        impl Filter for $filter {
            fn evaluate(
                &self,
                input: &dyn ValueView,
                _runtime: &dyn Runtime,
            ) -> liquid_core::Result<Value> {
                Ok(Value::scalar($convert(input.to_kstr().as_str())))
            }
        }
    };
}

name_filter!(
    SnakeCase,
    SnakeCaseFilter,
    "snake_case",
    ToSnakeCase::to_snake_case
);
name_filter!(
    KebabCase,
    KebabCaseFilter,
    "kebab_case",
    ToKebabCase::to_kebab_case
);
name_filter!(
    PascalCase,
    PascalCaseFilter,
    "pascal_case",
    ToPascalCase::to_pascal_case
);
name_filter!(
    ShoutySnakeCase,
    ShoutySnakeCaseFilter,
    "shouty_snake_case",
    ToShoutySnakeCase::to_shouty_snake_case
);

// `{{ agg.pascal | a }}`: `an Order`, `a Payment` (`| a | capitalize` to start a sentence).
name_filter!(
    WithArticle,
    WithArticleFilter,
    "a",
    crate::inflect::with_article
);

pub struct Renderer {
    parser: liquid::Parser,
}

/// The names on the bus of a process that consumes every event (the gateway, the console).
#[derive(Serialize)]
struct AllEventsWire {
    group: String,
    /// SQS only: its queue, which every publisher also sends to.
    queue: String,
}

impl AllEventsWire {
    fn of(spec: &Spec, process: &str) -> AllEventsWire {
        let process = crate::inflect::Names::new(process);
        AllEventsWire {
            group: naming::consumer_group(&spec.system, &process),
            queue: naming::queue(&spec.system, &process),
        }
    }
}

#[derive(Serialize)]
struct SharedGlobals<'a> {
    version: &'static str,
    system: &'a crate::inflect::Names,
    bus: &'static str,
    contexts: &'a [Context],
    sagas: &'a [crate::spec::model::Saga],
    /// The gateway's names on the bus: it consumes every event to invalidate its cache.
    gateway: AllEventsWire,
    /// The console's: it consumes every event for its events page.
    console: AllEventsWire,
    /// The vendored chassis crate, if the blueprint ships one.
    platform: Option<PlatformDependency<'a>>,
    /// The crates that team templates add: workspace members besides the generated ones.
    template_members: &'a [String],
    /// The README's "Run it" commands.
    walkthrough: Vec<crate::spec::walkthrough::Step>,
    /// The console's map: calls, events and saga steps between contexts.
    map_edges: Vec<crate::spec::map::MapEdge>,
}

#[derive(Serialize)]
struct PlatformDependency<'a> {
    version: &'a str,
    path: &'static str,
    /// Its event bus client feature.
    feature: &'static str,
}

/// The variables templates see, converted once per generation. A per-context render
/// adds `context` by reference: copying every context into each context's variables
/// made them quadratic in the number of contexts (440 MB at 200 contexts).
pub struct Globals {
    shared: liquid::Object,
    contexts: Vec<liquid::model::Value>,
}

/// What one render sees.
pub type View<'a> = BTreeMap<String, &'a liquid::model::Value>;

impl Globals {
    pub fn new(
        spec: &Spec,
        platform: Option<&Chassis>,
        template_members: &[String],
    ) -> Result<Globals> {
        let shared = liquid::to_object(&SharedGlobals {
            version: crate::VERSION,
            system: &spec.system,
            bus: spec.bus.as_str(),
            contexts: &spec.contexts,
            sagas: &spec.sagas,
            gateway: AllEventsWire::of(spec, "gateway"),
            console: AllEventsWire::of(spec, "console"),
            platform: platform.map(|chassis| PlatformDependency {
                version: &chassis.version,
                path: crate::layout::VENDORED_PLATFORM,
                feature: spec.bus.as_str(),
            }),
            template_members,
            walkthrough: crate::spec::walkthrough::of(spec),
            map_edges: crate::spec::map::edges(spec),
        })
        .map_err(|e| Error::Blueprint(e.to_string()))?;
        let contexts = spec
            .contexts
            .iter()
            .map(liquid::model::to_value)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Blueprint(e.to_string()))?;
        Ok(Globals { shared, contexts })
    }

    /// The variables of one render; `context` (an index into the spec's contexts) is set
    /// inside a per-context set.
    pub fn view(&self, context: Option<usize>) -> View<'_> {
        let mut view: View<'_> = self
            .shared
            .iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        if let Some(i) = context {
            view.insert("context".to_string(), &self.contexts[i]);
        }
        view
    }
}

impl Renderer {
    pub fn new() -> Result<Renderer> {
        let parser = liquid::ParserBuilder::with_stdlib()
            .filter(SnakeCase)
            .filter(KebabCase)
            .filter(PascalCase)
            .filter(ShoutySnakeCase)
            .filter(WithArticle)
            .build()
            .map_err(|e| Error::Blueprint(e.to_string()))?;
        Ok(Renderer { parser })
    }

    /// Parses one template, to render it as often as needed; `name` only appears in error
    /// messages.
    pub fn parse(&self, name: &str, text: &str) -> Result<liquid::Template> {
        self.parser
            .parse(text)
            .map_err(|e| Error::Blueprint(format!("{name}: {e}")))
    }
}

/// Renders a parsed template; `name` only appears in error messages.
pub fn render_parsed(
    name: &str,
    template: &liquid::Template,
    globals: &dyn ObjectView,
) -> Result<String> {
    template
        .render(globals)
        .map_err(|e| Error::Blueprint(format!("{name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_filters_are_registered() {
        let template = Renderer::new()
            .unwrap()
            .parse(
                "t",
                "{{ n | snake_case }} {{ n | kebab_case }} {{ n | pascal_case }} {{ n | shouty_snake_case }}",
            )
            .unwrap();
        let out = render_parsed("t", &template, &liquid::object!({ "n": "order-items" })).unwrap();
        assert_eq!(out, "order_items order-items OrderItems ORDER_ITEMS");
    }

    #[test]
    fn the_article_filter_reads_the_name() {
        let template = Renderer::new()
            .unwrap()
            .parse("t", "{{ n | a | capitalize }}; {{ m | a }}")
            .unwrap();
        let out = render_parsed(
            "t",
            &template,
            &liquid::object!({ "n": "Order", "m": "Payment" }),
        )
        .unwrap();
        assert_eq!(out, "An Order; a Payment");
    }
}
