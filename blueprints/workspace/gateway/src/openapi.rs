//! The OpenAPI 3 document of this API. archscaffold generates it from the spec, the same
//! source as the routes (a copy is in docs/openapi.yaml); archscaffold's end-to-end
//! harness runs schemathesis against it and the running gateway.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

pub const DOCUMENT: &str = include_str!("../openapi.json");

pub async fn serve() -> Response {
    let mut response = DOCUMENT.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
