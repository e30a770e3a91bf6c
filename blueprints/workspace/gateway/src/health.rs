//! Liveness (`/livez`: the process answers) and readiness (`/readyz`: it accepts traffic,
//! and turns 503 as soon as shutdown begins, so load balancers drain it first). Readiness
//! does not depend on the downstream services: a service being down is what the breakers
//! handle, and taking the gateway out of rotation for it would turn one outage into many.
//! The body reports each breaker and the cache for people and dashboards.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::problem::Problem;

pub async fn live() -> Json<Value> {
    Json(json!({ "status": "live" }))
}

pub async fn ready(State(state): State<AppState>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let breakers: Map<String, Value> = state
        .downstreams
        .all()
        .iter()
        .map(|d| (d.name().to_string(), Value::from(d.breaker_state().as_str())))
        .collect();
    let cache = match state.cache.ping().await {
        None => "disabled",
        Some(true) => "up",
        Some(false) => "down",
    };
    Json(json!({ "status": "ready", "breakers": breakers, "cache": cache })).into_response()
}
