//! The validated spec: every name resolved into all its case forms, every reference
//! checked, defaults filled in. Serialized as-is into the blueprints' Liquid context.

use serde::Serialize;

use crate::inflect::Names;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Bus {
    Kafka,
    Sqs,
}

impl Bus {
    pub fn as_str(self) -> &'static str {
        match self {
            Bus::Kafka => "kafka",
            Bus::Sqs => "sqs",
        }
    }

    pub fn parse(s: &str) -> Option<Bus> {
        match s {
            "kafka" => Some(Bus::Kafka),
            "sqs" => Some(Bus::Sqs),
            _ => None,
        }
    }
}

/// Where a workspace gets the `platform` crate. Only vendoring exists today; the spec key
/// (`[platform] source`) is there so that a registry dependency can follow without a
/// change to specs that say `vendored`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlatformSource {
    /// Copied whole into the workspace at crates/platform, at the version this
    /// archscaffold ships.
    Vendored,
}

impl PlatformSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PlatformSource::Vendored => "vendored",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    pub system: Names,
    pub bus: Bus,
    pub platform: PlatformSource,
    pub contexts: Vec<Context>,
    pub sagas: Vec<Saga>,
    /// `[[template]]`: a team's own templates, in spec order.
    pub templates: Vec<TeamTemplate>,
}

/// A team's own template, rendered through cargo-generate into the workspace and kept up
/// to date by `update` like any generated file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TeamTemplate {
    /// Unique; names the template in messages and in the lock.
    pub name: String,
    pub source: TemplateSource,
    /// The template's folder inside the source, if not its root.
    pub subfolder: Option<String>,
    /// Rendered once per service, rooted at `services/<kebab>/`; otherwise once, at the
    /// workspace root.
    pub each_context: bool,
    /// Who owns what it renders: the generator (merged by `update`) or the user (written once).
    pub owner_is_user: bool,
    /// The template's own placeholders, as `[template.values]` gives them.
    pub values: Vec<(String, TemplateValue)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TemplateSource {
    /// A local folder; a relative path is relative to the workspace root.
    Path(String),
    /// A git repository at a tag or commit.
    Git { url: String, rev: String },
}

/// A placeholder's value: cargo-generate's placeholders are strings or booleans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TemplateValue {
    String(String),
    Bool(bool),
}

#[derive(Debug, Clone, Serialize)]
pub struct Context {
    pub name: Names,
    /// Position in the spec; fixes default ports so they are stable across runs.
    pub index: usize,
    pub grpc_port: u16,
    /// Where `/metrics` listens by default (the gateway's is 9464).
    pub metrics_port: u16,
    /// The processes that serve it, the first on `grpc_port` and `metrics_port`; callers
    /// spread their calls over them.
    pub replicas: Vec<Replica>,
    /// The most replicas its autoscaler may run (Kubernetes' `maxReplicas`).
    pub max_replicas: usize,
    /// Each replica's database pool on Kubernetes: the connection budget shared by
    /// `max_replicas` (see [`Replica::CONNECTION_BUDGET`]).
    pub pool_size: usize,
    pub aggregate: Aggregate,
    /// Fields declared in the spec, in spec order.
    pub fields: Vec<Field>,
    /// Declared fields followed by one `<upstream>_id` link per subscribed context.
    pub all_fields: Vec<Field>,
    /// The fields an update may change: every field but the links.
    pub patchable: Vec<Field>,
    /// The `ref:<context>` fields, checked against their context before every write.
    pub references: Vec<Field>,
    /// The protobuf field numbers of `created_at`, `version` and `state` in the aggregate
    /// message: after the fields in a new workspace, kept where they were when `update`
    /// adds fields (`tags`).
    pub created_at_tag: usize,
    pub version_tag: usize,
    pub state_tag: usize,
    /// Field numbers of fields removed since (`update --fields-migrated-by-hand`), which
    /// the aggregate message reserves so no later field reuses them.
    pub reserved_tags: Vec<usize>,
    /// Events this context publishes: the declared ones (the first is emitted when an
    /// aggregate is created), then `<Aggregate>Updated`, `<Aggregate>Deleted` and each
    /// command's event.
    pub events: Vec<Event>,
    /// The lifecycle; empty when the aggregate has no states.
    pub states: Vec<Names>,
    pub crud: Crud,
    /// Whether writes without `If-Match` are refused (428).
    pub require_if_match: bool,
    pub commands: Vec<Command>,
    /// The events of an update and a delete (always generated: consumers and the
    /// gateway's cache rely on them even where the API does not offer the change).
    pub updated_event: Event,
    pub deleted_event: Event,
    pub subscribes: Vec<Subscription>,
    /// The topic of this context's aggregate, where all its events go.
    pub topic: String,
    /// The topics its subscriptions read, each once.
    pub subscribed_topics: Vec<String>,
    /// SQS only: the queues every event of this context is sent to (its subscribers'), each
    /// once; the gateway's and the console's queues come on top.
    pub subscriber_queues: Vec<String>,
    pub calls: Vec<Names>,
    /// What this service's typed clients need to know of each context it calls.
    pub dependencies: Vec<Dependency>,
    /// The contexts whose `calls` (or refs) name this one: with the gateway, the only
    /// callers this service admits.
    pub callers: Vec<Names>,
    /// This service's names on the bus when it consumes events.
    pub wire: Wire,
    pub slo: Slo,
    /// The sagas this context runs (it is their `owner`).
    pub sagas: Vec<Saga>,
    /// Whether it runs a consumer: it subscribes to events, or its own events start sagas.
    pub consumes: bool,
    /// Its routes at the gateway ([`super::routes::of`]), the one list the router, the
    /// handlers' scope checks and the OpenAPI document read.
    pub routes: Vec<super::routes::Route>,
    /// The same, grouped by path for the router.
    pub route_paths: Vec<super::routes::RoutePath>,
    /// Each handler's scope constant (`READ`, `WRITE`, `ADMIN`).
    pub access: std::collections::BTreeMap<String, &'static str>,
    /// The value of each of those constants, by access (`read`, `write`, `admin`).
    pub scopes: std::collections::BTreeMap<&'static str, String>,
}

/// A saga: steps in other contexts that its owner runs one after another for one of its
/// aggregates (the subject), compensated in reverse order when one is refused or time
/// runs out. Its state lives in the owner's database (`saga` table).
#[derive(Debug, Clone, Serialize)]
pub struct Saga {
    pub name: Names,
    /// The owning context and its aggregate, the subject of every instance.
    pub owner: Names,
    pub subject: Names,
    /// The owner's event that starts one instance per aggregate.
    pub start: Names,
    pub start_event_type: String,
    /// How long an instance may run before compensation starts.
    pub timeout_ms: u64,
    /// The same as written back to the spec (`30s`).
    pub timeout: String,
    pub steps: Vec<SagaStep>,
    /// The owner's commands once every step succeeded, or once compensation is done.
    pub on_success: Option<SagaCall>,
    pub on_failure: Option<SagaCall>,
    /// Every call above once, as the owner's code makes it.
    pub calls: Vec<SagaCallSite>,
}

/// One call of a saga in the owner's code: a step forward or back, or a finish.
#[derive(Debug, Clone, Serialize)]
pub struct SagaCallSite {
    /// `forward`, `compensate`, `on_success` or `on_failure`.
    pub role: String,
    /// The step, for `forward` and `compensate`.
    pub step: Option<usize>,
    /// The name of the function that makes it: `place_order_1_compensate`.
    pub function: String,
    /// A command of the owner's own aggregate (`on_success`, `on_failure`).
    pub local: bool,
    /// A command's target: the subject's ref field that names it, or (compensating a
    /// create) the id the create returned when this is None.
    pub target_field: Option<String>,
    /// Whether it reads the subject (a field, its id, or its ref to the target).
    pub uses_subject: bool,
    pub call: SagaCall,
}

impl Saga {
    /// Instances run this long at most before they are compensated, unless `timeout` says.
    pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
    pub const MAX_STEPS: usize = 20;
}

#[derive(Debug, Clone, Serialize)]
pub struct SagaStep {
    /// Its place, from 0, as stored in the saga table and in idempotency keys.
    pub index: usize,
    /// How docs, logs and metrics name it: `create payments`, `inventory.reserve`.
    pub label: String,
    /// True for a create (its result is the new aggregate's id), false for a command.
    pub creates: bool,
    /// The subject's field that holds the id of the aggregate a command runs on.
    pub on: Option<String>,
    pub forward: SagaCall,
    pub compensate: Option<SagaCall>,
}

/// One RPC a saga makes: a create or a command of `context`'s aggregate.
#[derive(Debug, Clone, Serialize)]
pub struct SagaCall {
    pub context: Names,
    pub aggregate: Names,
    /// None for a create.
    pub command: Option<Names>,
    /// `CreatePayment`, `ReserveItem`.
    pub rpc: Names,
    pub inputs: Vec<SagaInput>,
}

/// A request field of a saga's call and where its value comes from.
#[derive(Debug, Clone, Serialize)]
pub struct SagaInput {
    pub field: String,
    pub kind: FieldType,
    /// The subject's field of the same name, when it has one.
    pub subject_field: Option<String>,
    /// The subject's id (the link a created aggregate carries to it).
    pub subject_id: bool,
    /// A string the subject cannot fill: the saga's outcome in words (why it failed).
    pub reason: bool,
    /// Another upstream's link on a created aggregate: empty, as in a create through the API.
    pub empty: bool,
}

/// One process of a context's service, as the local runner starts it.
#[derive(Debug, Clone, Serialize)]
pub struct Replica {
    /// 1 for the first.
    pub number: usize,
    /// Its name in `.run/` (pid, log): the service's for the first, `<service>-<n>` after.
    pub process: String,
    pub grpc_port: u16,
    pub metrics_port: u16,
}

impl Replica {
    /// Replicas by default: two, so one can stop (a rollout, a crash) while the other serves.
    pub const DEFAULT_COUNT: usize = 2;
    pub const MAX_COUNT: usize = 10;
    /// The connections all replicas of one service may hold on its database: PostgreSQL's
    /// default `max_connections` (100) less its reserved connections and room for
    /// migrations and an operator's psql (ADR 0016).
    pub const CONNECTION_BUDGET: usize = 90;
    /// The fewest connections a replica's pool may have: a request, the relay and a
    /// consumer or saga runner at once.
    pub const MIN_POOL: usize = 3;
    /// The autoscaler's ceiling when the spec does not say.
    pub const DEFAULT_MAX: usize = 10;
    /// The highest ceiling the budget allows.
    pub const MAX_MAX: usize = Replica::CONNECTION_BUDGET / Replica::MIN_POOL;

    /// Each replica's pool when at most `max_replicas` run: the budget shared among them.
    pub fn pool_size(max_replicas: usize) -> usize {
        Replica::CONNECTION_BUDGET / max_replicas.max(1)
    }
    /// Replica n listens `(n - 1) * PORT_STRIDE` above the first's ports.
    pub const PORT_STRIDE: u16 = 1000;

    /// The `count` replicas of the service `kebab` whose first replica has these ports.
    pub fn all(kebab: &str, grpc_port: u16, metrics_port: u16, count: usize) -> Vec<Replica> {
        (1..=count)
            .map(|number| {
                let offset = (number as u16 - 1) * Replica::PORT_STRIDE;
                Replica {
                    number,
                    process: if number == 1 {
                        kebab.to_string()
                    } else {
                        format!("{kebab}-{number}")
                    },
                    grpc_port: grpc_port + offset,
                    metrics_port: metrics_port + offset,
                }
            })
            .collect()
    }
}

/// A context another one calls, as its typed client sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Dependency {
    pub name: Names,
    pub grpc_port: u16,
    pub aggregate: Names,
    pub plural: Names,
    /// Its commands' RPC names (`CancelOrder`).
    pub command_rpcs: Vec<Names>,
}

/// Which generated operations the API (gRPC and REST) offers. The use cases exist either
/// way: consumers create through them whatever the API shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Crud {
    pub create: bool,
    pub read: bool,
    pub update: bool,
    pub delete: bool,
}

impl Crud {
    pub const ALL: [&'static str; 4] = ["create", "read", "update", "delete"];

    pub fn names(self) -> Vec<&'static str> {
        let on = [self.create, self.read, self.update, self.delete];
        Crud::ALL
            .into_iter()
            .zip(on)
            .filter_map(|(name, on)| on.then_some(name))
            .collect()
    }
}

/// A named change of an aggregate: its own RPC (`CancelOrder`), route
/// (`POST /v1/orders/{id}/cancel`) and event.
#[derive(Debug, Clone, Serialize)]
pub struct Command {
    pub name: Names,
    /// The RPC and its messages' stem, e.g. `CancelOrder`.
    pub rpc: Names,
    /// States it may run in; empty means any.
    pub from: Vec<Names>,
    pub to: Option<Names>,
    /// Aggregate fields it changes.
    pub set: Vec<Field>,
    /// Fields only the command and its event carry.
    pub fields: Vec<Field>,
    /// `fields` then `set`, numbered from 4 in the request (1 to 3 are the id, etag and
    /// idempotency key).
    pub inputs: Vec<Field>,
    /// Numbers of inputs removed since, reserved in the request (`tags`).
    pub reserved_tags: Vec<usize>,
    /// The event it emits (the message itself, with its fields, is in `Context::events`)
    /// and that event's fully qualified type.
    pub event: Names,
    pub event_type: String,
}

/// What the context promises; the generated alerting rules fire when it is broken.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Slo {
    /// 99th percentile duration of its RPCs.
    pub p99_ms: u32,
    /// Share of RPCs that may fail (server-side errors), in percent.
    pub error_rate_percent: f64,
    /// Unpublished outbox rows that mean the relay is falling behind.
    pub max_outbox_backlog: u32,
    /// Messages waiting for this context's consumers.
    pub max_consumer_lag: u32,
    /// The same thresholds as PromQL literals, so templates never format floats.
    pub p99_seconds: String,
    pub error_ratio: String,
}

impl Slo {
    pub const DEFAULT_P99_MS: u32 = 300;
    pub const DEFAULT_ERROR_RATE_PERCENT: f64 = 1.0;
    pub const DEFAULT_MAX_OUTBOX_BACKLOG: u32 = 1000;
    pub const DEFAULT_MAX_CONSUMER_LAG: u32 = 1000;

    pub fn new(
        p99_ms: u32,
        error_rate_percent: f64,
        max_outbox_backlog: u32,
        max_consumer_lag: u32,
    ) -> Slo {
        Slo {
            p99_ms,
            error_rate_percent,
            max_outbox_backlog,
            max_consumer_lag,
            p99_seconds: format!("{:?}", f64::from(p99_ms) / 1000.0),
            error_ratio: format!("{:?}", error_rate_percent / 100.0),
        }
    }
}

impl Default for Slo {
    fn default() -> Slo {
        Slo::new(
            Slo::DEFAULT_P99_MS,
            Slo::DEFAULT_ERROR_RATE_PERCENT,
            Slo::DEFAULT_MAX_OUTBOX_BACKLOG,
            Slo::DEFAULT_MAX_CONSUMER_LAG,
        )
    }
}

/// A consuming service's names on the bus (see `naming`).
#[derive(Debug, Clone, Serialize)]
pub struct Wire {
    pub group: String,
    pub dead_letter_topic: String,
    /// SQS only: the queue its subscriptions are delivered to, and its dead-letter queue.
    pub queue: String,
    pub dead_letter_queue: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Aggregate {
    pub name: Names,
    /// Plural forms, for tables and list RPCs (`orders`, `ListOrders`).
    pub plural: Names,
}

#[derive(Debug, Clone, Serialize)]
pub struct Field {
    pub name: String,
    pub pascal: String,
    pub kind: FieldType,
    pub proto_type: &'static str,
    pub rust_type: &'static str,
    pub sql_type: &'static str,
    /// A literal of this type, used by generated tests.
    pub sample: String,
    /// The protobuf field number in the aggregate message (the id is 1).
    pub tag: usize,
    /// True for `<upstream>_id` fields that carry a subscribed context's aggregate id.
    pub link: bool,
    /// True for fields written in the spec (a link may be declared too, to fix its place).
    pub declared: bool,
    /// For a `ref:<context>` field: the context whose aggregate's id it holds.
    pub reference: Option<Names>,
    /// That context's aggregate (its Get checks the id).
    pub reference_aggregate: Option<Names>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    I64,
    I32,
    Bool,
    F64,
}

impl FieldType {
    pub const ALL: &'static str = "string, i64, i32, bool, f64";

    pub fn parse(s: &str) -> Option<FieldType> {
        Some(match s {
            "string" => FieldType::String,
            "i64" => FieldType::I64,
            "i32" => FieldType::I32,
            "bool" => FieldType::Bool,
            "f64" => FieldType::F64,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::I64 => "i64",
            FieldType::I32 => "i32",
            FieldType::Bool => "bool",
            FieldType::F64 => "f64",
        }
    }

    pub fn proto(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::I64 => "int64",
            FieldType::I32 => "int32",
            FieldType::Bool => "bool",
            FieldType::F64 => "double",
        }
    }

    pub fn rust(self) -> &'static str {
        match self {
            FieldType::String => "String",
            FieldType::I64 => "i64",
            FieldType::I32 => "i32",
            FieldType::Bool => "bool",
            FieldType::F64 => "f64",
        }
    }

    pub fn sql(self) -> &'static str {
        match self {
            FieldType::String => "TEXT",
            FieldType::I64 => "BIGINT",
            FieldType::I32 => "INTEGER",
            FieldType::Bool => "BOOLEAN",
            FieldType::F64 => "DOUBLE PRECISION",
        }
    }

    /// The value existing rows get when a later migration adds a column of this type.
    pub fn sql_default(self) -> &'static str {
        match self {
            FieldType::String => "''",
            FieldType::I64 | FieldType::I32 => "0",
            FieldType::Bool => "false",
            FieldType::F64 => "0",
        }
    }

    /// The spec type of a column type as `sql` writes it.
    pub fn from_sql(sql: &str) -> Option<FieldType> {
        [
            FieldType::String,
            FieldType::I64,
            FieldType::I32,
            FieldType::Bool,
            FieldType::F64,
        ]
        .into_iter()
        .find(|t| t.sql() == sql)
    }

    pub fn sample(self, field: &str) -> String {
        match self {
            FieldType::String => format!("\"sample-{}\".to_string()", field.replace('_', "-")),
            FieldType::I64 => "4200".to_string(),
            FieldType::I32 => "42".to_string(),
            FieldType::Bool => "true".to_string(),
            FieldType::F64 => "1.5".to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub name: Names,
    pub topic: String,
    /// Fully qualified protobuf name, e.g. `shop.orders.v1.OrderCreated`.
    pub type_name: String,
    /// Written in the spec's `publishes` (and so kept in the canonical spec), rather than
    /// derived from the API's changes.
    pub declared: bool,
    /// The command's own fields, numbered from 4 in the event (after the aggregate id,
    /// the aggregate and its version).
    pub fields: Vec<Field>,
    /// Numbers of fields removed since, reserved in the event message (`tags`).
    pub reserved_tags: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Subscription {
    /// The publishing context.
    pub context: Names,
    pub event: Names,
    /// The publishing context's aggregate, whose id the local aggregate carries.
    pub upstream_aggregate: Names,
    /// Name of the local field that carries the upstream aggregate's id.
    pub link_field: String,
    /// The upstream event's topic and fully qualified type.
    pub topic: String,
    pub event_type: String,
    /// SQS only: the queue of the subscribing service, which the publisher sends to.
    pub queue: String,
    /// Whether the event is the upstream's creation event: its default handler creates a
    /// local aggregate; any other event's default handler only logs it.
    pub creates: bool,
}
