//! The spec as written: a serde model of `archscaffold.toml` that keeps source spans, so
//! every later error can point at a line and column. Unknown keys are rejected here.

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    pub name: Spanned<String>,
    #[serde(default)]
    pub bus: Option<Spanned<String>>,
    #[serde(default)]
    pub contexts: Option<Spanned<IndexMap<Spanned<String>, Spanned<RawContext>>>>,
    #[serde(default)]
    pub sagas: IndexMap<Spanned<String>, Spanned<RawSaga>>,
    #[serde(default)]
    pub platform: Option<Spanned<RawPlatform>>,
    /// `[[template]]`: a team's own templates, rendered with cargo-generate.
    #[serde(default, rename = "template")]
    pub templates: Vec<Spanned<RawTemplate>>,
}

/// A team's template: where it comes from, where it renders, who owns its output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    pub name: Spanned<String>,
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    #[serde(default)]
    pub git: Option<Spanned<String>>,
    #[serde(default)]
    pub rev: Option<Spanned<String>>,
    #[serde(default)]
    pub subfolder: Option<Spanned<String>>,
    /// `context`: once per service; absent: once, at the workspace root.
    #[serde(default)]
    pub each: Option<Spanned<String>>,
    /// `generator` (the default) or `user`.
    #[serde(default)]
    pub owner: Option<Spanned<String>>,
    /// The template's own placeholders.
    #[serde(default)]
    pub values: IndexMap<Spanned<String>, Spanned<toml::Value>>,
}

/// Where the workspace gets the chassis crate from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlatform {
    /// `vendored` (copied into crates/platform) or, once it is published, `registry`.
    #[serde(default)]
    pub source: Option<Spanned<String>>,
}

/// A saga: steps in other contexts, run by its owner, compensated in reverse on failure.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSaga {
    /// The context that runs it and keeps its state.
    pub owner: Spanned<String>,
    /// `<context>.<Event>`: one instance per such event.
    pub start: Spanned<String>,
    /// `30s`, `2m`, `1500ms`.
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    pub steps: Spanned<Vec<Spanned<RawStep>>>,
    #[serde(default)]
    pub on_success: Option<Spanned<String>>,
    #[serde(default)]
    pub on_failure: Option<Spanned<String>>,
}

/// One step: `create = "<context>"`, or `command = "<context>.<command>"` with `on`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    #[serde(default)]
    pub create: Option<Spanned<String>>,
    #[serde(default)]
    pub command: Option<Spanned<String>>,
    #[serde(default)]
    pub on: Option<Spanned<String>>,
    #[serde(default)]
    pub compensate: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContext {
    #[serde(default)]
    pub aggregate: Option<Spanned<String>>,
    #[serde(default)]
    pub fields: IndexMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub publishes: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub subscribes: Vec<Spanned<String>>,
    #[serde(default)]
    pub calls: Vec<Spanned<String>>,
    #[serde(default)]
    pub slo: Option<Spanned<RawSlo>>,
    /// The aggregate's lifecycle; a new aggregate starts in the first.
    #[serde(default)]
    pub states: Option<Spanned<Vec<Spanned<String>>>>,
    /// Which of create, read, update and delete the API offers.
    #[serde(default)]
    pub crud: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub require_if_match: Option<Spanned<bool>>,
    /// How many processes serve it (locally, in compose and on Kubernetes).
    #[serde(default)]
    pub replicas: Option<Spanned<i64>>,
    /// How many its autoscaler may run at most (Kubernetes); sizes each one's pool.
    #[serde(default)]
    pub max_replicas: Option<Spanned<i64>>,
    #[serde(default)]
    pub commands: IndexMap<Spanned<String>, Spanned<RawCommand>>,
}

/// A command: a named change with its own RPC, route and event.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommand {
    #[serde(default)]
    pub from: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub to: Option<Spanned<String>>,
    #[serde(default)]
    pub set: Vec<Spanned<String>>,
    #[serde(default)]
    pub fields: IndexMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub emits: Option<Spanned<String>>,
}

/// A context's service-level objectives; every key is optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlo {
    #[serde(default)]
    pub p99_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub error_rate_percent: Option<Spanned<f64>>,
    #[serde(default)]
    pub max_outbox_backlog: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_consumer_lag: Option<Spanned<i64>>,
}
