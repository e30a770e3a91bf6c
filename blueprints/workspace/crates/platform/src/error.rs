//! The error every use case returns, and the one place it becomes a gRPC status.
//! Internal details are logged, never sent to the caller.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with earlier state, e.g. an idempotency key reused for a
    /// different request.
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<AppError> for Status {
    fn from(error: AppError) -> Status {
        match error {
            AppError::InvalidArgument(m) => Status::invalid_argument(m),
            AppError::NotFound(m) => Status::not_found(m),
            AppError::Conflict(m) => Status::failed_precondition(m),
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
