//! The error every use case returns, and the one place it becomes a gRPC status.
//! Internal details are logged, never sent to the caller.

use tonic::Status;

/// Metadata of a FAILED_PRECONDITION for an illegal transition: the aggregate's state.
pub const CURRENT_STATE: &str = "x-current-state";
/// ... and the commands it allows, comma-separated.
pub const ALLOWED_COMMANDS: &str = "x-allowed-commands";
/// Metadata of an INVALID_ARGUMENT for one field (e.g. a reference to nothing): its name.
pub const INVALID_FIELD: &str = "x-invalid-field";
/// Metadata of an UNAVAILABLE or DEADLINE_EXCEEDED caused by a service this one calls: that
/// service's name. The answering service is healthy, so callers' breakers do not count it
/// and callers do not retry it (the service already did).
pub const FAILED_DEPENDENCY: &str = "x-failed-dependency";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    InvalidArgument(String),
    /// A request the domain refused (a value its rules do not allow, a malformed id): an
    /// invalid argument whose message is the refusal's own, kept whole as the source, so
    /// a caller can still tell which refusal it was (`downcast_ref`).
    #[error("refused by the domain")]
    Refused(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with earlier state, e.g. an idempotency key reused for a
    /// different request.
    #[error("{0}")]
    Conflict(String),
    /// A conditional change whose version (ETag) is no longer current.
    #[error("{0}")]
    Stale(String),
    /// A command the aggregate's current state does not allow.
    #[error("{message}")]
    IllegalTransition {
        message: String,
        state: String,
        allowed: Vec<String>,
    },
    /// A field refers to an aggregate of another context that does not exist.
    #[error("{message}")]
    InvalidReference {
        field: &'static str,
        message: String,
    },
    /// A service this one calls failed, was too slow, or refused the call.
    #[error("{dependency}: {}", .status.message())]
    Dependency {
        dependency: &'static str,
        status: Status,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<AppError> for Status {
    fn from(error: AppError) -> Status {
        match error {
            AppError::InvalidArgument(m) => Status::invalid_argument(m),
            AppError::Refused(refusal) => Status::invalid_argument(refusal.to_string()),
            AppError::NotFound(m) => Status::not_found(m),
            AppError::Conflict(m) => Status::failed_precondition(m),
            AppError::Stale(m) => Status::aborted(m),
            AppError::IllegalTransition {
                message,
                state,
                allowed,
            } => {
                // The state and the allowed commands travel as metadata too, so the gateway
                // can put them in its problem body without parsing the message.
                let mut status = Status::failed_precondition(message);
                if let Ok(value) = state.parse() {
                    status.metadata_mut().insert(CURRENT_STATE, value);
                }
                if let Ok(value) = allowed.join(",").parse() {
                    status.metadata_mut().insert(ALLOWED_COMMANDS, value);
                }
                status
            }
            AppError::InvalidReference { field, message } => {
                let mut status = Status::invalid_argument(message);
                status.metadata_mut().insert(
                    INVALID_FIELD,
                    tonic::metadata::MetadataValue::from_static(field),
                );
                status
            }
            AppError::Dependency { dependency, status } => {
                tracing::warn!(dependency, code = ?status.code(), message = status.message(), "a dependency failed");
                // Its own failures keep their meaning (too slow stays DEADLINE_EXCEEDED);
                // anything else it answered is this service being unable to go on.
                let code = match status.code() {
                    tonic::Code::DeadlineExceeded => tonic::Code::DeadlineExceeded,
                    _ => tonic::Code::Unavailable,
                };
                let mut answer = Status::new(
                    code,
                    format!("{dependency} is not available: {}", status.message()),
                );
                answer.metadata_mut().insert(
                    FAILED_DEPENDENCY,
                    tonic::metadata::MetadataValue::from_static(dependency),
                );
                answer
            }
            AppError::Database(e) => {
                tracing::error!(error = %e, "database error");
                if matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) {
                    Status::unavailable("database unavailable, retry later")
                } else {
                    Status::internal("internal error")
                }
            }
            AppError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("price_cents: must not be negative")]
    struct Negative;

    #[test]
    fn a_refusal_is_an_invalid_argument_with_its_message_and_keeps_its_type() {
        let refused = AppError::Refused(Box::new(Negative));
        let source = std::error::Error::source(&refused).expect("the refusal is the source");
        assert!(source.downcast_ref::<Negative>().is_some());
        let status = Status::from(refused);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "price_cents: must not be negative");
    }
}
