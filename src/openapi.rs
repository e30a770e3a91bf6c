//! The OpenAPI 3 document of the generated gateway, built from the same model as its routes
//! (`blueprints/gateway-context`). The gateway serves the JSON (`gateway/openapi.json`);
//! `docs/openapi.yaml` is the same document as YAML. Both are generated, never edited.

use serde_json::{Map, Value, json};

use crate::inflect::with_article;
use crate::spec::Spec;
use crate::spec::model::{Command, Context, Field, FieldType};
use crate::spec::routes::{Operation, Route};

pub const JSON_PATH: &str = "gateway/openapi.json";

/// The statuses the gateway answers with a problem document, each with its meaning and
/// headers: the gateway's own table (`platform::gateway::statuses`), so the document and
/// the gateway state them once. (The gRPC codes are the gateway's concern alone.)
#[allow(dead_code)]
mod statuses {
    include!("../blueprints/platform/src/gateway/statuses.rs");
}
use statuses::PROBLEM_STATUSES;

pub fn document(spec: &Spec) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert("Problem".into(), problem_schema());
    let mut tags = Vec::new();
    for context in &spec.contexts {
        let names = SchemaNames::new(spec, context);
        schemas.insert(names.resource.clone(), resource_schema(context));
        schemas.insert(names.new.clone(), new_schema(context));
        schemas.insert(names.page.clone(), page_schema(&names));
        schemas.insert(names.patch.clone(), patch_schema(context));
        // Paths and methods in the order of the route list: the one the gateway registers.
        for route in &context.routes {
            let operation = match route.operation {
                Operation::Create => create_operation(context, &names, route),
                Operation::List => list_operation(context, &names, route),
                Operation::Get => get_operation(context, &names, route),
                Operation::Update => update_operation(context, &names, route),
                Operation::Delete => delete_operation(context, route),
                Operation::Command(index) => {
                    let command = &context.commands[index];
                    let body = (!command.inputs.is_empty()).then(|| {
                        let name = format!("{}{}", command.name.pascal, names.resource);
                        schemas.insert(name.clone(), inputs_object(&command.inputs, true));
                        name
                    });
                    command_operation(context, &names, command, body.as_deref(), route)
                }
                Operation::Sagas => sagas_operation(context, route),
                Operation::RetrySaga => retry_saga_operation(context, route),
                Operation::Events | Operation::ResourceEvents => {
                    events_operation(context, &names, route)
                }
            };
            let methods = paths
                .entry(route.path.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            methods[route.method] = operation;
        }
        if !context.sagas.is_empty() {
            for schema in ["SagaList", "Saga", "SagaStep"] {
                schemas.insert(schema.into(), saga_schemas()[schema].clone());
            }
        }
        tags.push(json!({
            "name": context.name.kebab,
            "description": format!("{} resources of the {} service", context.aggregate.name.pascal, context.name.raw),
        }));
    }
    paths.insert(
        "/livez".into(),
        json!({ "get": health_operation("live", false) }),
    );
    paths.insert(
        "/readyz".into(),
        json!({ "get": health_operation("ready", true) }),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": format!("{} API", spec.system.raw),
            "version": "1",
            "description": "REST over the gRPC services. Authenticate with a JWT access token (Bearer) or an API key (X-Api-Key); each route needs the scope named in its description. Errors are RFC 9457 problem documents.",
        },
        "servers": [{ "url": "http://127.0.0.1:8080" }],
        "security": [{ "bearerAuth": [] }, { "apiKey": [] }],
        "tags": tags,
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
                "apiKey": { "type": "apiKey", "in": "header", "name": "X-Api-Key" },
            },
            "schemas": schemas,
            "responses": error_responses(),
        },
    })
}

struct SchemaNames {
    resource: String,
    new: String,
    page: String,
    patch: String,
}

impl SchemaNames {
    /// The aggregate's name, qualified by its context when two contexts share it.
    fn new(spec: &Spec, context: &Context) -> SchemaNames {
        let aggregate = &context.aggregate.name.pascal;
        let shared = spec
            .contexts
            .iter()
            .filter(|c| &c.aggregate.name.pascal == aggregate)
            .count()
            > 1;
        let resource = if shared {
            format!("{}{aggregate}", context.name.pascal)
        } else {
            aggregate.clone()
        };
        SchemaNames {
            new: format!("New{resource}"),
            page: format!("{resource}Page"),
            patch: format!("{resource}Patch"),
            resource,
        }
    }
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn field_schema(field: &Field) -> Value {
    match field.kind {
        FieldType::String => json!({ "type": "string", "pattern": "^[^\\u0000]*$" }),
        FieldType::I64 => json!({
            "type": "integer", "format": "int64",
            "minimum": i64::MIN, "maximum": i64::MAX,
        }),
        FieldType::I32 => json!({
            "type": "integer", "format": "int32",
            "minimum": i32::MIN, "maximum": i32::MAX,
        }),
        FieldType::Bool => json!({ "type": "boolean" }),
        FieldType::F64 => json!({ "type": "number", "format": "double" }),
    }
}

fn fields_object(context: &Context, base: Vec<(&str, Value)>, closed: bool) -> Value {
    fields_of(&context.all_fields, base, closed)
}

/// A closed object of exactly these fields, all required (a command's body).
fn inputs_object(fields: &[Field], closed: bool) -> Value {
    fields_of(fields, Vec::new(), closed)
}

fn fields_of(fields: &[Field], base: Vec<(&str, Value)>, closed: bool) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, schema) in base {
        properties.insert(name.to_string(), schema);
        required.push(Value::from(name));
    }
    for field in fields {
        properties.insert(field.name.clone(), field_schema(field));
        required.push(Value::from(field.name.as_str()));
    }
    let mut object = json!({ "type": "object", "properties": properties });
    if !required.is_empty() {
        object["required"] = Value::Array(required);
    }
    if closed {
        object["additionalProperties"] = Value::Bool(false);
    }
    object
}

fn resource_schema(context: &Context) -> Value {
    let mut base = vec![
        ("id", json!({ "type": "string", "format": "uuid" })),
        (
            "created_at",
            json!({ "type": "string", "format": "date-time" }),
        ),
        (
            "version",
            json!({ "type": "integer", "format": "int64", "minimum": 1,
                    "description": "1 when created, one more on every change; the ETag." }),
        ),
    ];
    if !context.states.is_empty() {
        let states: Vec<&str> = context.states.iter().map(|s| s.raw.as_str()).collect();
        base.push(("state", json!({ "type": "string", "enum": states })));
    }
    fields_object(context, base, false)
}

/// A JSON merge patch: any subset of the fields that may change, none of them null.
fn patch_schema(context: &Context) -> Value {
    let mut properties = Map::new();
    for field in &context.patchable {
        properties.insert(field.name.clone(), field_schema(field));
    }
    json!({ "type": "object", "properties": properties, "additionalProperties": false })
}

fn new_schema(context: &Context) -> Value {
    fields_object(context, Vec::new(), true)
}

fn page_schema(names: &SchemaNames) -> Value {
    json!({
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": { "type": "array", "items": schema_ref(&names.resource) },
            "next_cursor": {
                "type": "string", "nullable": true,
                "description": "Pass as `cursor` for the next page; null on the last page.",
            },
        },
    })
}

fn problem_schema() -> Value {
    json!({
        "type": "object",
        "description": "An RFC 9457 problem document.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": { "type": "string" },
            "title": { "type": "string" },
            "status": { "type": "integer" },
            "detail": { "type": "string" },
            "current_state": {
                "type": "string",
                "description": "On 409 for a command the resource's state does not allow: that state.",
            },
            "allowed_commands": {
                "type": "array", "items": { "type": "string" },
                "description": "... and the commands it does allow.",
            },
            "field": {
                "type": "string",
                "description": "On 422: the request field that is invalid, e.g. a reference to nothing.",
            },
        },
    })
}

fn error_responses() -> Value {
    let mut responses = Map::new();
    for row in PROBLEM_STATUSES {
        let mut response = json!({
            "description": row.description,
            "content": { "application/problem+json": { "schema": schema_ref("Problem") } },
        });
        if !row.headers.is_empty() {
            let headers: Map<String, Value> = row
                .headers
                .iter()
                .map(|name| (name.to_string(), header(name)))
                .collect();
            response["headers"] = Value::Object(headers);
        }
        responses.insert(row.status.to_string(), response);
    }
    Value::Object(responses)
}

/// How the document describes a header a problem response carries.
fn header(name: &str) -> Value {
    match name {
        "Retry-After" => json!({
            "description": "Seconds to wait before retrying.",
            "schema": { "type": "integer" },
        }),
        _ => json!({ "schema": { "type": "string" } }),
    }
}

fn responses(success: (&str, Value), errors: &[&str]) -> Value {
    let mut map = Map::new();
    map.insert(success.0.to_string(), success.1);
    let every_route = PROBLEM_STATUSES
        .iter()
        .filter(|row| row.every_route)
        .map(|row| row.status.to_string());
    for status in errors.iter().map(|s| s.to_string()).chain(every_route) {
        let reference = json!({ "$ref": format!("#/components/responses/{status}") });
        map.insert(status, reference);
    }
    Value::Object(map)
}

fn json_content(schema: Value) -> Value {
    json!({ "application/json": { "schema": schema } })
}

fn create_operation(context: &Context, names: &SchemaNames, route: &Route) -> Value {
    let aggregate = &context.aggregate.name.pascal;
    json!({
        "operationId": route.operation_id,
        "tags": [context.name.kebab],
        "summary": format!("Create {}", with_article(aggregate)),
        "description": format!(
            "Needs scope `{}`. With an Idempotency-Key, a retry returns the first response and creates nothing more.",
            route.scope
        ),
        "parameters": [{
            "name": "Idempotency-Key",
            "in": "header",
            "required": false,
            "description": "Unique per logical create; reuse it only to retry that create.",
            "schema": { "type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[!-~]+$" },
        }],
        "requestBody": { "required": true, "content": json_content(schema_ref(&names.new)) },
        "responses": responses(
            ("201", json!({
                "description": format!("The {aggregate} was created."),
                "headers": {
                    "Location": { "schema": { "type": "string" } },
                    "ETag": etag_header()["ETag"],
                },
                "content": json_content(schema_ref(&names.resource)),
            })),
            &with_references(context, &["400", "409", "413", "415"]),
        ),
    })
}

/// A write's errors, with 422 where it carries a `ref:` field the service checks.
fn with_references(context: &Context, errors: &[&'static str]) -> Vec<&'static str> {
    let mut errors = errors.to_vec();
    if !context.references.is_empty() {
        errors.push("422");
    }
    errors
}

fn list_operation(context: &Context, names: &SchemaNames, route: &Route) -> Value {
    let plural = &context.aggregate.plural.pascal;
    json!({
        "operationId": route.operation_id,
        "tags": [context.name.kebab],
        "summary": format!("List {plural} in creation order"),
        "description": format!("Needs scope `{}`.", route.scope),
        "parameters": [
            {
                "name": "limit", "in": "query", "required": false,
                "schema": { "type": "integer", "minimum": 1, "maximum": 500, "default": 50 },
            },
            {
                "name": "cursor", "in": "query", "required": false,
                "description": "next_cursor of the previous page.",
                "schema": { "type": "string", "maxLength": 200 },
            },
        ],
        "responses": responses(
            ("200", json!({ "description": "One page.", "content": json_content(schema_ref(&names.page)) })),
            &["400"],
        ),
    })
}

fn get_operation(context: &Context, names: &SchemaNames, route: &Route) -> Value {
    let aggregate = &context.aggregate.name.pascal;
    let mut all = responses(
        (
            "200",
            json!({
                "description": format!("The {aggregate}."),
                "headers": {
                    "X-Cache": { "schema": { "type": "string", "enum": ["hit", "miss", "bypass"] } },
                    "ETag": etag_header()["ETag"],
                },
                "content": json_content(schema_ref(&names.resource)),
            }),
        ),
        &["400", "404"],
    );
    all["304"] = json!({ "description": "Not modified: the client's ETag is current.", "headers": etag_header() });
    json!({
        "operationId": route.operation_id,
        "tags": [context.name.kebab],
        "summary": format!("Get one {aggregate}"),
        "description": format!(
            "Needs scope `{}`. Served from the cache when it can be; X-Cache says whether it was. `Cache-Control: no-cache` asks for a read from the service that skips the cache.",
            route.scope
        ),
        "parameters": [
            id_parameter(),
            {
                "name": "If-None-Match", "in": "header", "required": false,
                "description": "ETags the client has; 304 with no body when the current one is among them.",
                "schema": { "type": "string" },
            },
        ],
        "responses": all,
    })
}

/// The saga resources every owner's routes share.
fn saga_schemas() -> Value {
    let text = json!({ "type": "string" });
    let optional = json!({ "type": "string", "nullable": true });
    json!({
        "SagaList": {
            "type": "object",
            "required": ["items"],
            "properties": { "items": { "type": "array", "items": schema_ref("Saga") } },
        },
        "Saga": {
            "type": "object",
            "required": ["id", "saga", "state", "steps", "reason", "attempts", "last_error", "created_at", "updated_at"],
            "properties": {
                "id": { "type": "string", "format": "uuid" },
                "saga": { "type": "string", "description": "Its name in the spec." },
                "state": {
                    "type": "string",
                    "enum": ["running", "completing", "compensating", "failing", "completed", "compensated", "compensation_failed", "parked"],
                },
                "steps": { "type": "array", "items": schema_ref("SagaStep") },
                "reason": { "type": "string", "nullable": true, "description": "Why it compensates." },
                "attempts": { "type": "integer", "format": "int32", "description": "Failed attempts of the current step." },
                "last_error": optional.clone(),
                "created_at": { "type": "string", "format": "date-time" },
                "updated_at": { "type": "string", "format": "date-time" },
            },
        },
        "SagaStep": {
            "type": "object",
            "required": ["name", "status", "result", "error", "started_at", "finished_at", "compensated_at"],
            "properties": {
                "name": text,
                "status": { "type": "string", "enum": ["pending", "trying", "done", "refused", "compensated"] },
                "result": { "type": "string", "nullable": true, "description": "A create's result: the id of what it created." },
                "error": optional,
                "started_at": { "type": "string", "format": "date-time", "nullable": true, "description": "When it was first tried." },
                "finished_at": { "type": "string", "format": "date-time", "nullable": true, "description": "When it was done or refused." },
                "compensated_at": { "type": "string", "format": "date-time", "nullable": true, "description": "When it was undone." },
            },
        },
    })
}

fn sagas_operation(context: &Context, route: &Route) -> Value {
    let aggregate = &context.aggregate.name.pascal;
    let names: Vec<&str> = context.sagas.iter().map(|s| s.name.raw.as_str()).collect();
    json!({
        "operationId": route.operation_id,
        "tags": [context.name.kebab],
        "summary": format!("The sagas of one {aggregate}"),
        "description": format!(
            "Needs scope `{}`. Each saga whose subject is this {aggregate} ({}), oldest first, with the status of each step. Never cached.",
            route.scope,
            names.join(", ")
        ),
        "parameters": [id_parameter()],
        "responses": responses(
            ("200", json!({ "description": "Its sagas.", "content": json_content(schema_ref("SagaList")) })),
            &["400"],
        ),
    })
}

fn retry_saga_operation(context: &Context, route: &Route) -> Value {
    json!({
        "operationId": route.operation_id,
        "tags": [context.name.kebab],
        "summary": "Retry a saga whose compensation kept failing",
        "description": format!(
            "Needs scope `{}`. For an operator, once the cause is fixed: a saga in compensation_failed compensates again from where it stopped; a parked saga (its steps changed while it ran) is compensated. Answers the saga as it is then, also when the retry is sent again (nothing more is done). 404 for a saga this resource does not have; 409 for one running or completed.",
            route.scope
        ),
        "parameters": [
            id_parameter(),
            { "name": "saga", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } },
        ],
        "responses": responses(
            ("200", json!({ "description": "The saga, retried or as a retry left it.", "content": json_content(schema_ref("Saga")) })),
            &["400", "404", "409"],
        ),
    })
}

/// `GET .../events` and `GET .../{id}/events`: server-sent events (`platform::gateway::stream`).
fn events_operation(context: &Context, names: &SchemaNames, route: &Route) -> Value {
    let aggregate = &context.aggregate.name.pascal;
    let one = route.operation == Operation::ResourceEvents;
    let (summary, whose) = if one {
        (
            format!("Follow one {aggregate}'s events"),
            format!("this {aggregate}'s"),
        )
    } else {
        (
            format!("Follow the events of every {aggregate}"),
            format!("every {aggregate}'s"),
        )
    };
    let events: Vec<&str> = context
        .events
        .iter()
        .map(|e| e.type_name.as_str())
        .collect();
    let mut parameters = Vec::new();
    if one {
        parameters.push(id_parameter());
    }
    parameters.push(json!({
        "name": "Last-Event-ID", "in": "header", "required": false,
        "description": "The `id` of the last event the client received: the stream resumes after it. When the gateway no longer holds that event, the stream begins with a `resync` event.",
        "schema": { "type": "string" },
    }));
    json!({
        "operationId": route.operation_id,
        "tags": [context.name.kebab],
        "summary": summary,
        "description": format!(
            "Needs scope `{}`. A `text/event-stream` of {whose} domain events, live, in order of version per {aggregate}, each after the gateway's cache has dropped what it changed. Each event has `id: <{agg}_id>:<version>`, `event:` the event type ({}) and `data:` the event as JSON: `type`, `{agg}_id`, `version`, `{agg}` (the {aggregate} as it was right after the change, a `{}`) and the event's own fields. A `resync` event (data: `{{\"reason\": ...}}`) says events may have been missed: re-read, then go on. Keep-alive comments come every 15 s; the stream ends when the gateway stops (reconnect with `Last-Event-ID`). One caller may hold 16 streams (429 beyond).",
            route.scope,
            events.join(", "),
            names.resource,
            agg = context.aggregate.name.snake,
        ),
        "parameters": parameters,
        "responses": responses(
            ("200", json!({
                "description": "The stream, open until the client or the gateway closes it.",
                "content": { "text/event-stream": { "schema": { "type": "string" } } },
            })),
            if one { &["400"] } else { &[] },
        ),
    })
}

fn etag_header() -> Value {
    json!({ "ETag": { "description": "The resource's version, quoted.", "schema": { "type": "string" } } })
}

fn id_parameter() -> Value {
    json!({
        "name": "id", "in": "path", "required": true,
        "schema": { "type": "string", "format": "uuid" },
    })
}

/// The headers every change takes: If-Match and Idempotency-Key.
fn change_parameters(context: &Context) -> Vec<Value> {
    vec![
        id_parameter(),
        json!({
            "name": "If-Match", "in": "header", "required": context.require_if_match,
            "description": "The ETag of the version this change was decided from; a stale one answers 412.",
            "schema": { "type": "string" },
        }),
        json!({
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Unique per logical change; reuse it only to retry that change.",
            "schema": { "type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[!-~]+$" },
        }),
    ]
}

/// The errors of a change; `checks_references` for one that may set a `ref:` field.
fn change_errors(context: &Context, checks_references: bool) -> Vec<&'static str> {
    let base = ["400", "404", "409", "412"];
    let mut errors = if checks_references {
        with_references(context, &base)
    } else {
        base.to_vec()
    };
    if context.require_if_match {
        errors.push("428");
    }
    errors
}

fn changed_response(aggregate: &str, names: &SchemaNames) -> Value {
    json!({
        "description": format!("The {aggregate} after the change."),
        "headers": etag_header(),
        "content": json_content(schema_ref(&names.resource)),
    })
}

fn update_operation(context: &Context, names: &SchemaNames, route: &Route) -> Value {
    let aggregate = &context.aggregate.name.pascal;
    let mut errors = change_errors(context, true);
    errors.extend(["413", "415"]);
    json!({
        "operationId": route.operation_id,
        "tags": [context.name.kebab],
        "summary": format!("Change fields of {}", with_article(aggregate)),
        "description": format!(
            "Needs scope `{}`. A JSON merge patch (RFC 7396) of the fields to change; fields that link to other contexts never change, and no field can be removed.",
            route.scope
        ),
        "parameters": change_parameters(context),
        "requestBody": { "required": true, "content": {
            "application/merge-patch+json": { "schema": schema_ref(&names.patch) },
            "application/json": { "schema": schema_ref(&names.patch) },
        } },
        "responses": responses(("200", changed_response(aggregate, names)), &errors),
    })
}

fn delete_operation(context: &Context, route: &Route) -> Value {
    let aggregate = &context.aggregate.name.pascal;
    json!({
        "operationId": route.operation_id,
        "tags": [context.name.kebab],
        "summary": format!("Delete {}", with_article(aggregate)),
        "description": format!(
            "Needs scope `{}`. Idempotent: deleting one that is already gone answers 204 too.",
            route.scope
        ),
        "parameters": change_parameters(context),
        "responses": responses(
            ("204", json!({ "description": format!("The {aggregate} is gone.") })),
            &change_errors(context, false),
        ),
    })
}

fn command_operation(
    context: &Context,
    names: &SchemaNames,
    command: &Command,
    body: Option<&str>,
    route: &Route,
) -> Value {
    let aggregate = &context.aggregate.name.pascal;
    let from = if command.from.is_empty() {
        "in any state".to_string()
    } else {
        let states: Vec<&str> = command.from.iter().map(|s| s.raw.as_str()).collect();
        format!("from {}", states.join(", "))
    };
    let mut operation = json!({
        "operationId": route.operation_id,
        "tags": [context.name.kebab],
        "summary": format!("{} {}", command.name.title, with_article(aggregate)),
        "description": format!(
            "Needs scope `{}`. Allowed {from} (409 otherwise){}. Emits {}.",
            route.scope,
            command.to.as_ref().map(|to| format!("; the {aggregate} is then {}", to.raw)).unwrap_or_default(),
            command.event.pascal
        ),
        "parameters": change_parameters(context),
        "responses": responses(("200", changed_response(aggregate, names)), &{
            let mut errors = change_errors(context, command.set.iter().any(|f| f.reference.is_some()));
            if body.is_some() {
                errors.extend(["413", "415"]);
            }
            errors
        }),
    });
    if let Some(body) = body {
        operation["requestBody"] =
            json!({ "required": true, "content": json_content(schema_ref(body)) });
    }
    operation
}

fn health_operation(what: &str, can_fail: bool) -> Value {
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({
            "description": format!("The gateway is {what}."),
            "content": json_content(json!({
                "type": "object", "required": ["status"],
                "properties": { "status": { "type": "string" } },
            })),
        }),
    );
    if can_fail {
        responses.insert(
            "503".into(),
            json!({ "$ref": "#/components/responses/503" }),
        );
    }
    json!({
        "operationId": what,
        "tags": ["health"],
        "summary": format!("Is the gateway {what}?"),
        "security": [],
        "responses": responses,
    })
}

/// Pretty JSON with a trailing newline.
pub fn to_json(document: &Value) -> String {
    let mut text = serde_json::to_string_pretty(document).expect("a JSON value serialises");
    text.push('\n');
    text
}

/// YAML for a JSON value. Strings are always double-quoted with JSON escapes, which YAML
/// reads the same way, so no value can be misread as a number, boolean or null.
pub fn to_yaml(document: &Value) -> String {
    let mut out = String::new();
    yaml_value(document, 0, &mut out);
    out
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => Value::String(s.clone()).to_string(),
        other => other.to_string(),
    }
}

fn is_empty_collection(value: &Value) -> Option<&'static str> {
    match value {
        Value::Object(m) if m.is_empty() => Some("{}"),
        Value::Array(a) if a.is_empty() => Some("[]"),
        _ => None,
    }
}

fn yaml_value(value: &Value, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                let key = scalar(&Value::String(key.clone()));
                match (item, is_empty_collection(item)) {
                    (_, Some(empty)) => out.push_str(&format!("{pad}{key}: {empty}\n")),
                    (Value::Object(_) | Value::Array(_), None) => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        yaml_value(item, indent + 1, out);
                    }
                    _ => out.push_str(&format!("{pad}{key}: {}\n", scalar(item))),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match (item, is_empty_collection(item)) {
                    (_, Some(empty)) => out.push_str(&format!("{pad}- {empty}\n")),
                    (Value::Object(_) | Value::Array(_), None) => {
                        // The first line of the nested block goes after the dash.
                        let mut nested = String::new();
                        yaml_value(item, indent + 1, &mut nested);
                        let inner_pad = "  ".repeat(indent + 1);
                        let nested = nested.strip_prefix(&inner_pad).unwrap_or(&nested);
                        out.push_str(&format!("{pad}- {nested}"));
                    }
                    _ => out.push_str(&format!("{pad}- {}\n", scalar(item))),
                }
            }
        }
        scalar_value => out.push_str(&format!("{pad}{}\n", scalar(scalar_value))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_that_check_a_reference_document_422_and_the_others_do_not() {
        let spec = crate::spec::parse(
            "name = \"shop\"\n[contexts.catalog]\naggregate = \"Item\"\n\
             [contexts.checkout]\naggregate = \"Cart\"\nfields = { item_id = \"ref:catalog\", note = \"string\" }\n\
             [contexts.checkout.commands.swap]\nset = [\"item_id\"]\nemits = \"CartItemSwapped\"\n\
             [contexts.checkout.commands.annotate]\nset = [\"note\"]\nemits = \"CartAnnotated\"\n",
            "shop.toml",
            &crate::spec::Overrides::default(),
        )
        .unwrap();
        let doc = document(&spec);
        let has_422 = |path: &str, method: &str| {
            doc["paths"][path][method]["responses"]
                .as_object()
                .unwrap()
                .contains_key("422")
        };
        assert!(has_422("/v1/checkout", "post"));
        assert!(has_422("/v1/checkout/{id}", "patch"));
        assert!(has_422("/v1/checkout/{id}/swap", "post"));
        assert!(!has_422("/v1/checkout/{id}/annotate", "post"));
        assert!(!has_422("/v1/checkout/{id}", "delete"));
        assert!(!has_422("/v1/catalog", "post"));
        assert!(doc["components"]["schemas"]["Problem"]["properties"]["field"].is_object());
    }

    /// Every status an operation answers is one of the gateway's (`PROBLEM_STATUSES`),
    /// described as the gateway's table describes it, and every protected operation
    /// answers those the table says every route can.
    #[test]
    fn error_responses_are_the_gateways_status_table() {
        let spec = crate::spec::parse(
            "name = \"shop\"\n[contexts.orders]\naggregate = \"Order\"\n",
            "shop.toml",
            &crate::spec::Overrides::default(),
        )
        .unwrap();
        let doc = document(&spec);
        let components = doc["components"]["responses"].as_object().unwrap();
        assert_eq!(components.len(), PROBLEM_STATUSES.len());
        for row in PROBLEM_STATUSES {
            let response = &components[&row.status.to_string()];
            assert_eq!(response["description"], row.description, "{}", row.status);
            for header in row.headers {
                assert!(
                    response["headers"][header].is_object(),
                    "{} {header}",
                    row.status
                );
            }
        }
        let mut operations = 0;
        for (path, methods) in doc["paths"].as_object().unwrap() {
            for (method, operation) in methods.as_object().unwrap() {
                let responses = operation["responses"].as_object().unwrap();
                for (status, response) in responses {
                    if let Some(reference) = response["$ref"].as_str() {
                        let status = reference.trim_start_matches("#/components/responses/");
                        assert!(components.contains_key(status), "{method} {path}: {status}");
                    } else {
                        assert!(
                            status.starts_with('2') || status == "304",
                            "{method} {path}: {status}"
                        );
                    }
                }
                if operation["security"]
                    .as_array()
                    .is_some_and(|s| s.is_empty())
                {
                    continue;
                }
                operations += 1;
                for row in PROBLEM_STATUSES.iter().filter(|row| row.every_route) {
                    let status = row.status.to_string();
                    assert!(
                        responses.contains_key(&status),
                        "{method} {path} lacks {status}"
                    );
                }
            }
        }
        assert!(operations >= 5, "{operations} protected operations");
    }

    #[test]
    fn yaml_quotes_every_string_and_nests_blocks() {
        let value = json!({
            "a": "yes",
            "b": [1, {"c": "x: y", "d": []}, "no"],
            "e": {},
            "f": null,
        });
        let yaml = to_yaml(&value);
        assert_eq!(
            yaml,
            "\"a\": \"yes\"\n\"b\":\n  - 1\n  - \"c\": \"x: y\"\n    \"d\": []\n  - \"no\"\n\"e\": {}\n\"f\": null\n"
        );
    }
}
