// The HTTP statuses the gateway answers with a problem document: one table, shared by the
// gateway (`problem.rs` maps a service's gRPC code through it) and by the OpenAPI document
// archscaffold writes (its `src/openapi.rs` includes this file, so every status, its
// meaning and its headers are stated once). Plain data on purpose: both crates compile it.

/// One status the gateway answers with a problem document.
pub struct ProblemStatus {
    pub status: u16,
    /// What it means to a client, as the API document says it.
    pub description: &'static str,
    /// The response headers it carries besides the problem body.
    pub headers: &'static [&'static str],
    /// The gRPC codes of a service's answer that the gateway turns into it (by name, as
    /// `tonic::Code`'s `Debug` prints them).
    pub grpc_codes: &'static [&'static str],
    /// Whether every protected route can answer it, whatever the route does.
    pub every_route: bool,
}

pub const PROBLEM_STATUSES: &[ProblemStatus] = &[
    ProblemStatus {
        status: 400,
        description: "The request is malformed; `detail` says how.",
        headers: &[],
        grpc_codes: &["InvalidArgument", "OutOfRange"],
        every_route: false,
    },
    ProblemStatus {
        status: 401,
        description: "No valid access token or API key.",
        headers: &["WWW-Authenticate"],
        grpc_codes: &[],
        every_route: true,
    },
    ProblemStatus {
        status: 403,
        description: "The credential lacks the route's scope.",
        headers: &[],
        grpc_codes: &["PermissionDenied"],
        every_route: true,
    },
    ProblemStatus {
        status: 404,
        description: "No such resource.",
        headers: &[],
        grpc_codes: &["NotFound"],
        every_route: false,
    },
    ProblemStatus {
        status: 409,
        description: "The Idempotency-Key was used for a different request, or the resource's state does not allow the command (`current_state` and `allowed_commands` say why).",
        headers: &[],
        grpc_codes: &["AlreadyExists", "FailedPrecondition"],
        every_route: false,
    },
    // The services answer ABORTED only for a stale ETag (If-Match).
    ProblemStatus {
        status: 412,
        description: "If-Match names a version that is not the current one: read the resource again.",
        headers: &[],
        grpc_codes: &["Aborted"],
        every_route: false,
    },
    ProblemStatus {
        status: 428,
        description: "This resource is only changed with If-Match naming a version (not `*`).",
        headers: &[],
        grpc_codes: &[],
        every_route: false,
    },
    ProblemStatus {
        status: 413,
        description: "The body is larger than 64 KiB.",
        headers: &[],
        grpc_codes: &[],
        every_route: false,
    },
    ProblemStatus {
        status: 415,
        description: "The body must be application/json.",
        headers: &[],
        grpc_codes: &[],
        every_route: false,
    },
    // INVALID_ARGUMENT naming a field (`x-invalid-field`): well-formed, but the field
    // refers to nothing.
    ProblemStatus {
        status: 422,
        description: "A field refers to something that does not exist in another context; `field` names it.",
        headers: &[],
        grpc_codes: &[],
        every_route: false,
    },
    ProblemStatus {
        status: 429,
        description: "Rate limit exceeded.",
        headers: &["Retry-After"],
        grpc_codes: &[],
        every_route: true,
    },
    ProblemStatus {
        status: 501,
        description: "The service does not implement this call (it runs an older contract).",
        headers: &[],
        grpc_codes: &["Unimplemented"],
        every_route: false,
    },
    // The service refused our own credential, or failed inside: not the client's doing,
    // and not something it can fix by changing the request.
    ProblemStatus {
        status: 502,
        description: "The service failed or refused the gateway.",
        headers: &[],
        grpc_codes: &["Unauthenticated", "Internal", "Unknown", "DataLoss", "Ok"],
        every_route: true,
    },
    ProblemStatus {
        status: 503,
        description: "The service is unavailable or its circuit breaker is open.",
        headers: &["Retry-After"],
        grpc_codes: &["ResourceExhausted", "Unavailable", "Cancelled"],
        every_route: true,
    },
    ProblemStatus {
        status: 504,
        description: "The service did not answer within the request's deadline.",
        headers: &[],
        grpc_codes: &["DeadlineExceeded"],
        every_route: true,
    },
];
