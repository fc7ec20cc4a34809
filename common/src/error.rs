//! The one domain error type of Ebb's services and its explicit mapping to `tonic::Status`.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One refused request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `auto_destroy_at` or `settings.destroy_retry_limit`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// What went wrong, in domain terms. Each variant chooses its gRPC code in
/// [`From<Error> for Status`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client sent bad input; carries every violation found.
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The named thing does not exist (or is not visible to the caller).
    #[error("{kind} {id} not found")]
    NotFound {
        /// Kind of resource, e.g. `workspace`.
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The thing exists already, with other content.
    #[error("{0}")]
    AlreadyExists(String),
    /// The system is not in a state that allows the operation.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A concurrent change won; retrying may succeed.
    #[error("aborted: {0}")]
    Aborted(String),
    /// The caller has no credentials or invalid ones.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A limit was reached.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// A dependency (database, peer service) cannot be reached right now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; never used for a client's mistake.
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// A single invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    /// A missing resource.
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            id: id.into(),
        }
    }

    /// A precondition that does not hold.
    pub fn precondition(what: impl Into<String>) -> Self {
        Self::FailedPrecondition(what.into())
    }

    /// The gRPC code this error answers with.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Aborted(_) => Code::Aborted,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = error.code();
        let message = error.to_string();
        match error {
            Error::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                Status::with_error_details(code, message, details)
            }
            Error::FailedPrecondition(what) => {
                let mut details = ErrorDetails::new();
                details.add_precondition_failure_violation("STATE", "", what);
                Status::with_error_details(code, message, details)
            }
            Error::Internal(_) => {
                tracing::error!(error = %message, "internal error");
                Status::new(code, message)
            }
            _ => Status::new(code, message),
        }
    }
}

impl From<sea_orm::DbErr> for Error {
    fn from(err: sea_orm::DbErr) -> Self {
        use sea_orm::DbErr;
        match &err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => {
                Error::Unavailable(format!("database unavailable: {err}"))
            }
            _ => Error::Internal(format!("database error: {err}")),
        }
    }
}

/// Collects field violations so a request reports all of them at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Records the error of `result` against `field` and passes its value through.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        field: &str,
        result: Result<T, E>,
    ) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.add(field, e.to_string());
                None
            }
        }
    }

    /// `Ok` when nothing was recorded.
    pub fn finish(self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }
}

/// The result type of domain operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The canonical name of a gRPC status code, as in the gRPC specification (`NOT_FOUND`).
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_field_violations() {
        let status = Status::from(Error::invalid("auto_destroy_at", "must be in the future"));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        assert_eq!(bad.field_violations[0].field, "auto_destroy_at");
        assert_eq!(bad.field_violations[0].description, "must be in the future");
    }

    #[test]
    fn every_variant_has_its_own_code() {
        assert_eq!(Error::not_found("workspace", "w").code(), Code::NotFound);
        assert_eq!(
            Error::precondition("locked").code(),
            Code::FailedPrecondition
        );
        assert_eq!(Error::Aborted("x".into()).code(), Code::Aborted);
    }
}
