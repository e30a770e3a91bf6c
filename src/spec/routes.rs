//! The gateway's HTTP surface: every route of a context with its method, path, scope,
//! handler and operation id. The gateway's router, each handler's scope check and
//! `docs/openapi.yaml` all read this one list, so a route cannot exist in one and not the
//! others.

use std::collections::BTreeMap;

use serde::Serialize;

use super::model::Context;

/// What a route does; OpenAPI describes each kind its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Create,
    List,
    Get,
    Update,
    Delete,
    /// `context.commands[index]`.
    Command(usize),
    Sagas,
    RetrySaga,
    /// `text/event-stream` of every resource's events.
    Events,
    /// `text/event-stream` of one resource's events.
    ResourceEvents,
}

/// The access a route needs: the scope `<context>:<access>`; the gateway's handler checks
/// the constant of that name (`READ`, `WRITE`, `ADMIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    Admin,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        }
    }

    /// The gateway's constant holding the scope.
    pub fn constant(self) -> &'static str {
        match self {
            Access::Read => "READ",
            Access::Write => "WRITE",
            Access::Admin => "ADMIN",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// `get`, `post`, `patch` or `delete`: axum's routing function and OpenAPI's key.
    pub method: &'static str,
    pub path: String,
    #[serde(skip)]
    pub operation: Operation,
    pub access: Access,
    /// `<context>:<access>`.
    pub scope: String,
    /// The gateway's handler function.
    pub handler: String,
    pub operation_id: String,
}

/// The routes of one path, as the gateway's router registers them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoutePath {
    pub path: String,
    pub methods: Vec<RouteMethod>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteMethod {
    pub method: &'static str,
    pub handler: String,
}

/// The scope of `access` on a context's routes: `<context>:<access>`.
pub fn scope(context_kebab: &str, access: Access) -> String {
    format!("{context_kebab}:{}", access.as_str())
}

/// Every scope of a context by access (`read`, `write`, `admin`), for the gateway's
/// constants.
pub fn scopes(context_kebab: &str) -> BTreeMap<&'static str, String> {
    [Access::Read, Access::Write, Access::Admin]
        .into_iter()
        .map(|access| (access.as_str(), scope(context_kebab, access)))
        .collect()
}

/// The routes of `context`: what `crud` offers (read always), the event streams of the
/// context and of one resource, each command, and for a saga owner its sagas and their retry.
pub fn of(context: &Context) -> Vec<Route> {
    let base = format!("/v1/{}", context.name.kebab);
    let item = format!("{base}/{{id}}");
    let aggregate = &context.aggregate.name.pascal;
    let route =
        |method, path: &str, operation, access: Access, handler: &str, operation_id: String| {
            Route {
                method,
                path: path.to_string(),
                operation,
                access,
                scope: scope(&context.name.kebab, access),
                handler: handler.to_string(),
                operation_id,
            }
        };
    let crud = context.crud;
    let mut routes = Vec::new();
    if crud.create {
        routes.push(route(
            "post",
            &base,
            Operation::Create,
            Access::Write,
            "create",
            format!("create{aggregate}"),
        ));
    }
    routes.push(route(
        "get",
        &base,
        Operation::List,
        Access::Read,
        "list",
        format!("list{}", context.aggregate.plural.pascal),
    ));
    routes.push(route(
        "get",
        &format!("{base}/events"),
        Operation::Events,
        Access::Read,
        "events_stream",
        format!("stream{}Events", context.aggregate.plural.pascal),
    ));
    routes.push(route(
        "get",
        &item,
        Operation::Get,
        Access::Read,
        "fetch",
        format!("get{aggregate}"),
    ));
    if crud.update {
        routes.push(route(
            "patch",
            &item,
            Operation::Update,
            Access::Write,
            "update",
            format!("update{aggregate}"),
        ));
    }
    if crud.delete {
        routes.push(route(
            "delete",
            &item,
            Operation::Delete,
            Access::Write,
            "remove",
            format!("delete{aggregate}"),
        ));
    }
    routes.push(route(
        "get",
        &format!("{item}/events"),
        Operation::ResourceEvents,
        Access::Read,
        "resource_events_stream",
        format!("stream{aggregate}Events"),
    ));
    for (index, command) in context.commands.iter().enumerate() {
        routes.push(route(
            "post",
            &format!("{item}/{}", command.name.raw),
            Operation::Command(index),
            Access::Write,
            &command.name.snake,
            format!("{}{aggregate}", command.name.snake.replace('_', "")),
        ));
    }
    if !context.sagas.is_empty() {
        routes.push(route(
            "get",
            &format!("{item}/sagas"),
            Operation::Sagas,
            Access::Read,
            "sagas",
            format!("list{aggregate}Sagas"),
        ));
        routes.push(route(
            "post",
            &format!("{item}/sagas/{{saga}}/retry"),
            Operation::RetrySaga,
            Access::Admin,
            "retry_saga",
            format!("retry{aggregate}Saga"),
        ));
    }
    routes
}

/// `routes` grouped by path, in the order their paths first appear.
pub fn by_path(routes: &[Route]) -> Vec<RoutePath> {
    let mut paths: Vec<RoutePath> = Vec::new();
    for r in routes {
        let method = RouteMethod {
            method: r.method,
            handler: r.handler.clone(),
        };
        match paths.iter_mut().find(|p| p.path == r.path) {
            Some(path) => path.methods.push(method),
            None => paths.push(RoutePath {
                path: r.path.clone(),
                methods: vec![method],
            }),
        }
    }
    paths
}

/// Each handler's scope constant, for the handlers' checks.
pub fn access_of(routes: &[Route]) -> BTreeMap<String, &'static str> {
    routes
        .iter()
        .map(|r| (r.handler.clone(), r.access.constant()))
        .collect()
}
