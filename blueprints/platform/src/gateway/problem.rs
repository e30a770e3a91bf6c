//! Errors as RFC 9457 problem documents (`application/problem+json`), and the mapping from
//! gRPC status codes to HTTP statuses. Every error the gateway answers goes through here,
//! so clients see one shape whatever failed.

use crate::error::{ALLOWED_COMMANDS, CURRENT_STATE, FAILED_DEPENDENCY, INVALID_FIELD};
use crate::gateway::statuses::PROBLEM_STATUSES;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::Code;

pub const CONTENT_TYPE: &str = "application/problem+json";

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// For 409 on an illegal transition; boxed, as most problems have none.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub transition: Option<Box<Transition>>,
    /// For 422: the request field that is invalid (e.g. a reference to nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip)]
    pub retry_after_secs: Option<u64>,
    #[serde(skip)]
    pub challenge: bool,
}

/// Why a command was refused: the resource's state, and the commands it allows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Transition {
    pub current_state: String,
    pub allowed_commands: Vec<String>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            transition: None,
            field: None,
            retry_after_secs: None,
            challenge: false,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 401, with a `WWW-Authenticate` challenge.
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem {
            challenge: true,
            ..Problem::new(StatusCode::UNAUTHORIZED, detail)
        }
    }

    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, detail)
    }

    pub fn with_retry_after(mut self, secs: u64) -> Problem {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    /// 429 for `why`, to retry after `wait` (whole seconds, rounded up), said in the detail
    /// and in `Retry-After`.
    pub fn too_many_requests(why: impl std::fmt::Display, wait: std::time::Duration) -> Problem {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{why}; retry after {secs} s"),
        )
        .with_retry_after(secs)
    }

    /// The HTTP face of a failed call to `dependency`. Client mistakes keep their meaning;
    /// failures of the dependency become 502/503/504 so clients know whether to retry.
    pub fn from_grpc(status: &tonic::Status, dependency: &str) -> Problem {
        let http = http_status(status.code());
        let detail = if http.is_server_error() {
            tracing::warn!(dependency, code = ?status.code(), message = status.message(), "dependency call failed");
            server_error_detail(status, dependency)
        } else {
            status.message().to_string()
        };
        let metadata = status.metadata();
        let field = metadata.get(INVALID_FIELD).and_then(|v| v.to_str().ok());
        // A well-formed request whose field names nothing that exists: 422, with the field.
        let http = if field.is_some() && status.code() == Code::InvalidArgument {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            http
        };
        let mut problem = Problem::new(http, detail);
        problem.field = field.map(str::to_string);
        if let Some(state) = metadata.get(CURRENT_STATE).and_then(|v| v.to_str().ok()) {
            problem.transition = Some(Box::new(Transition {
                current_state: state.to_string(),
                allowed_commands: metadata
                    .get(ALLOWED_COMMANDS)
                    .and_then(|v| v.to_str().ok())
                    .map(|list| {
                        list.split(',')
                            .filter(|c| !c.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            }));
        }
        if http == StatusCode::SERVICE_UNAVAILABLE {
            problem.with_retry_after(1)
        } else {
            problem
        }
    }
}

/// The status a service's gRPC code becomes ([`PROBLEM_STATUSES`]): a code no row names
/// is the service's failure, not the client's.
fn http_status(code: Code) -> StatusCode {
    let name = format!("{code:?}");
    PROBLEM_STATUSES
        .iter()
        .find(|row| row.grpc_codes.contains(&name.as_str()))
        .and_then(|row| StatusCode::from_u16(row.status).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY)
}

/// What a client learns of a failure behind the gateway: which service, and whether
/// retrying makes sense; never the message itself, which can carry internal addresses,
/// ports and error chains (the log line above has it, under the response's correlation id).
fn server_error_detail(status: &tonic::Status, dependency: &str) -> String {
    let subject = match status
        .metadata()
        .get(FAILED_DEPENDENCY)
        .and_then(|v| v.to_str().ok())
    {
        Some(inner) => format!("{inner}, which {dependency} calls,"),
        None => dependency.to_string(),
    };
    match status.code() {
        Code::DeadlineExceeded => format!("{subject} did not answer within the request's deadline"),
        Code::Unavailable | Code::ResourceExhausted | Code::Cancelled => {
            let breaker = if status.message().contains("circuit breaker") {
                " (circuit breaker open)"
            } else {
                ""
            };
            format!("{subject} is not available{breaker}; retry later")
        }
        _ => format!(
            "{subject} failed; the gateway's log has the details under this response's x-correlation-id"
        ),
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(&self)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        response
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Problem {
        let status = match &rejection {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Problem::new(status, rejection.body_text())
    }
}

impl From<QueryRejection> for Problem {
    fn from(rejection: QueryRejection) -> Problem {
        Problem::bad_request(rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every gRPC code is named by at most one status of the table, and every name in it is
    /// a code's (a misspelt one would silently become 502).
    #[test]
    fn the_status_table_names_each_grpc_code_at_most_once_and_only_real_ones() {
        let codes: Vec<String> = (0..=16)
            .map(|n| format!("{:?}", Code::from_i32(n)))
            .collect();
        for row in PROBLEM_STATUSES {
            assert!(StatusCode::from_u16(row.status).is_ok(), "{}", row.status);
            for name in row.grpc_codes {
                assert!(codes.iter().any(|c| c == name), "{name} is no gRPC code");
            }
        }
        for code in &codes {
            let rows = PROBLEM_STATUSES
                .iter()
                .filter(|row| row.grpc_codes.contains(&code.as_str()))
                .count();
            assert!(rows <= 1, "{code} is in {rows} rows");
        }
    }

    #[test]
    fn grpc_codes_map_to_statuses_clients_can_act_on() {
        let cases = [
            (Code::InvalidArgument, 400),
            (Code::NotFound, 404),
            (Code::FailedPrecondition, 409),
            (Code::Aborted, 412),
            (Code::Unavailable, 503),
            (Code::ResourceExhausted, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 502),
            (Code::Unauthenticated, 502),
            (Code::Unimplemented, 501),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
        ];
        for (code, http) in cases {
            let problem = Problem::from_grpc(&tonic::Status::new(code, "x"), "orders");
            assert_eq!(problem.status, http, "{code:?}");
        }
        let unavailable = Problem::from_grpc(&tonic::Status::unavailable("down"), "orders");
        assert_eq!(unavailable.retry_after_secs, Some(1));
    }

    #[test]
    fn server_errors_name_the_service_but_never_carry_its_message() {
        let leaky =
            "transport error: tcp connect error: 10.0.3.7:50052: Connection refused (os error 111)";
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::Unknown,
        ] {
            let problem = Problem::from_grpc(&tonic::Status::new(code, leaky), "orders");
            assert!(problem.status >= 500, "{code:?}");
            assert!(problem.detail.starts_with("orders "), "{}", problem.detail);
            for secret in ["10.0.3.7", "50052", "tcp", "os error"] {
                assert!(
                    !problem.detail.contains(secret),
                    "{code:?}: {}",
                    problem.detail
                );
            }
        }
        let open = Problem::from_grpc(
            &tonic::Status::unavailable("circuit breaker for orders is open"),
            "orders",
        );
        assert_eq!(
            open.detail,
            "orders is not available (circuit breaker open); retry later"
        );
        let mut behind = tonic::Status::unavailable(
            "catalog is not available: tcp connect error: 10.0.3.9:50051",
        );
        behind
            .metadata_mut()
            .insert(FAILED_DEPENDENCY, "catalog".parse().unwrap());
        let problem = Problem::from_grpc(&behind, "checkout");
        assert_eq!(
            problem.detail,
            "catalog, which checkout calls, is not available; retry later"
        );
    }

    #[test]
    fn a_problem_is_served_as_problem_json() {
        let response = Problem::unauthorized("no token").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn an_illegal_transition_names_the_state_and_the_allowed_commands() {
        let mut status = tonic::Status::failed_precondition("cannot confirm a cancelled Order");
        status
            .metadata_mut()
            .insert(CURRENT_STATE, "confirmed".parse().unwrap());
        status
            .metadata_mut()
            .insert(ALLOWED_COMMANDS, "cancel,change_note".parse().unwrap());
        let body = serde_json::to_value(Problem::from_grpc(&status, "orders")).unwrap();
        assert_eq!(body["status"], 409);
        assert_eq!(body["current_state"], "confirmed");
        assert_eq!(
            body["allowed_commands"],
            serde_json::json!(["cancel", "change_note"])
        );

        let plain = serde_json::to_value(Problem::from_grpc(
            &tonic::Status::failed_precondition("x"),
            "orders",
        ))
        .unwrap();
        assert!(plain.get("current_state").is_none(), "{plain}");
    }
}
