//! The one domain error type of Ebb's services and its explicit mapping to `tonic::Status`.
//!
//! What a caller reads is chosen here: field violations (`google.rpc.BadRequest`) on
//! INVALID_ARGUMENT, a stable reason (`google.rpc.ErrorInfo`) on FAILED_PRECONDITION, and never
//! a database's own text. Database failures are classified ([`db_failure`]): a lost or refused
//! connection, a pool timeout or a server shutting down answers UNAVAILABLE, a serialization
//! failure or deadlock ABORTED — both worth retrying — and anything else INTERNAL. The
//! database's message goes to the log with a correlation id, and the caller sees only the id.

use std::collections::BTreeMap;

use sea_orm::DbErr;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `domain` of every `google.rpc.ErrorInfo` Ebb sends.
pub const ERROR_DOMAIN: &str = "ebb";

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
#[derive(Debug, Clone, thiserror::Error)]
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
    FailedPrecondition(Precondition),
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
    /// The request names a position past the end of what exists (a sequence past a chain's
    /// head); asking again later may succeed.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// A dependency (database, peer service) cannot be reached right now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; never used for a client's mistake.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What failed of a FAILED_PRECONDITION: a message for people and, when the caller may act on
/// it by code, a stable reason with metadata (sent as `google.rpc.ErrorInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precondition {
    /// What does not hold, for people.
    pub message: String,
    /// A stable, UPPER_SNAKE_CASE reason such as `WORKSPACE_PROTECTED`; `None` for a plain
    /// precondition.
    pub reason: Option<&'static str>,
    /// Facts about this occurrence (`workspace_id`, …), sent with the reason.
    pub metadata: BTreeMap<String, String>,
}

impl std::fmt::Display for Precondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
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
        Self::FailedPrecondition(Precondition {
            message: what.into(),
            reason: None,
            metadata: BTreeMap::new(),
        })
    }

    /// A precondition that does not hold, with a stable `reason` (UPPER_SNAKE_CASE, such as
    /// `WORKSPACE_PROTECTED`) and `metadata` that clients read from the status's
    /// `google.rpc.ErrorInfo` (domain [`ERROR_DOMAIN`]) instead of parsing `message`.
    ///
    /// ```
    /// use ebb_common::Error;
    /// let e = Error::precondition_reason(
    ///     "WORKSPACE_PROTECTED",
    ///     "workspace ws_1 is protected and cannot get a schedule",
    ///     [("workspace_id", "ws_1")],
    /// );
    /// assert_eq!(e.reason(), Some("WORKSPACE_PROTECTED"));
    /// ```
    pub fn precondition_reason<K, V>(
        reason: &'static str,
        message: impl Into<String>,
        metadata: impl IntoIterator<Item = (K, V)>,
    ) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        debug_assert!(
            is_reason(reason),
            "reason {reason:?} must be UPPER_SNAKE_CASE"
        );
        Self::FailedPrecondition(Precondition {
            message: message.into(),
            reason: Some(reason),
            metadata: metadata
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        })
    }

    /// The stable reason of a FAILED_PRECONDITION made with [`Error::precondition_reason`].
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Self::FailedPrecondition(p) => p.reason,
            _ => None,
        }
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
            Self::OutOfRange(_) => Code::OutOfRange,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }
}

/// Whether `reason` has the shape `google.rpc.ErrorInfo` asks for: `[A-Z][A-Z0-9_]*[A-Z0-9]`,
/// at most 63 characters.
fn is_reason(reason: &str) -> bool {
    let b = reason.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_uppercase()
        && b[b.len() - 1] != b'_'
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

/// A correlation id for one failure: logged with the details, and all the caller sees of them.
fn new_ref() -> String {
    uuid::Uuid::now_v7().to_string()
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
            Error::FailedPrecondition(p) => {
                let mut details = ErrorDetails::new();
                details.add_precondition_failure_violation(
                    p.reason.unwrap_or("STATE"),
                    "",
                    p.message.clone(),
                );
                if let Some(reason) = p.reason {
                    details.set_error_info(
                        reason,
                        ERROR_DOMAIN,
                        p.metadata
                            .into_iter()
                            .collect::<std::collections::HashMap<_, _>>(),
                    );
                }
                Status::with_error_details(code, message, details)
            }
            Error::Internal(what) => {
                // Internal messages carry whatever failed (a database's text, a row that does
                // not decode): logged here, never sent.
                let reference = new_ref();
                tracing::error!(error_ref = %reference, error = %what, "internal error");
                Status::new(code, format!("internal error (ref {reference})"))
            }
            _ => Status::new(code, message),
        }
    }
}

/// What a database failure means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// The database cannot be reached or used right now (connection lost or refused, pool
    /// timeout, server shutting down, SQLite busy): UNAVAILABLE, retry later.
    Unavailable,
    /// A concurrent transaction won (serialization failure, deadlock, lock not available):
    /// ABORTED, retry the whole call.
    Conflict,
    /// Anything else: a bug or a broken invariant, INTERNAL.
    Other,
}

/// Classifies a database error; see [`DbFailure`].
pub fn db_failure(err: &DbErr) -> DbFailure {
    use sea_orm::RuntimeErr;
    match err {
        DbErr::ConnectionAcquire(_) => DbFailure::Unavailable,
        // Whatever stops a connection from being made is the database being away for the
        // caller: refused, reset, or a proxy in front of a dead server answering garbage
        // (`unexpected response from SSLRequest`).
        DbErr::Conn(_) => DbFailure::Unavailable,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            sqlx_failure(e)
        }
        _ => DbFailure::Other,
    }
}

fn sqlx_failure(err: &sea_orm::sqlx::Error) -> DbFailure {
    use sea_orm::sqlx::Error as E;
    match err {
        // A protocol error mid-statement is a connection cut in the middle of a message.
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed => DbFailure::Unavailable,
        E::Database(db) => {
            let Some(code) = db.code() else {
                return DbFailure::Other;
            };
            if db
                .try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
                .is_some()
            {
                code.parse().map_or(DbFailure::Other, sqlite_failure)
            } else {
                sqlstate_failure(&code)
            }
        }
        _ => DbFailure::Other,
    }
}

/// PostgreSQL's SQLSTATE codes that are worth a retry.
pub fn sqlstate_failure(code: &str) -> DbFailure {
    match code {
        // serialization_failure, deadlock_detected, lock_not_available
        "40001" | "40P01" | "55P03" => DbFailure::Conflict,
        // admin_shutdown, crash_shutdown, cannot_connect_now (starting up, shutting down),
        // too_many_connections, read_only_sql_transaction (a standby after fail-over)
        "57P01" | "57P02" | "57P03" | "53300" | "25006" => DbFailure::Unavailable,
        // class 08: connection exception
        c if c.starts_with("08") => DbFailure::Unavailable,
        _ => DbFailure::Other,
    }
}

/// SQLite's (extended) result codes that are worth a retry: the database is busy or locked by
/// another connection.
pub fn sqlite_failure(code: i32) -> DbFailure {
    const SQLITE_BUSY: i32 = 5;
    const SQLITE_LOCKED: i32 = 6;
    match code & 0xff {
        SQLITE_BUSY | SQLITE_LOCKED => DbFailure::Unavailable,
        _ => DbFailure::Other,
    }
}

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        match db_failure(&err) {
            DbFailure::Unavailable => {
                let reference = new_ref();
                tracing::warn!(error_ref = %reference, error = %err, "database unavailable");
                Error::Unavailable(format!("database unavailable (ref {reference})"))
            }
            DbFailure::Conflict => {
                let reference = new_ref();
                tracing::info!(error_ref = %reference, error = %err, "transaction conflict");
                Error::Aborted(format!(
                    "a concurrent change conflicted with this one; retry (ref {reference})"
                ))
            }
            // Sent as INTERNAL with a reference of its own; see `From<Error> for Status`.
            DbFailure::Other => Error::Internal(format!("database error: {err}")),
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

    /// Records the field violations of `error`; any other error is recorded against `field`
    /// `""` with its message.
    pub fn add_error(&mut self, error: Error) {
        match error {
            Error::InvalidArgument(violations) => self.0.extend(violations),
            other => self.add("", other.to_string()),
        }
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
        assert_eq!(Error::OutOfRange("x".into()).code(), Code::OutOfRange);
    }

    #[test]
    fn preconditions_carry_a_reason_as_error_info() {
        let plain = Status::from(Error::precondition("the workspace is locked"));
        assert_eq!(plain.code(), Code::FailedPrecondition);
        assert!(plain.get_error_details().error_info().is_none());
        let failure = plain.get_error_details();
        let failure = failure
            .precondition_failure()
            .expect("precondition failure");
        assert_eq!(failure.violations[0].r#type, "STATE");

        let error = Error::precondition_reason(
            "WORKSPACE_PROTECTED",
            "workspace ws_1 is protected",
            [("workspace_id", "ws_1")],
        );
        assert!(matches!(error, Error::FailedPrecondition(_)));
        assert_eq!(error.reason(), Some("WORKSPACE_PROTECTED"));
        let status = Status::from(error);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "failed precondition: workspace ws_1 is protected"
        );
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "WORKSPACE_PROTECTED");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(
            info.metadata.get("workspace_id").map(String::as_str),
            Some("ws_1")
        );
        let failure = details
            .precondition_failure()
            .expect("precondition failure");
        assert_eq!(failure.violations[0].r#type, "WORKSPACE_PROTECTED");
    }

    #[test]
    fn reasons_are_upper_snake_case() {
        for good in ["WORKSPACE_PROTECTED", "A", "NO_GRACE_PERIOD_2"] {
            assert!(is_reason(good), "{good}");
        }
        for bad in [
            "",
            "workspace_protected",
            "_X",
            "X_",
            "A-B",
            &"A".repeat(64),
        ] {
            assert!(!is_reason(bad), "{bad}");
        }
    }

    #[test]
    fn internal_errors_send_a_reference_not_their_text() {
        let status = Status::from(Error::Internal(
            "database error: relation \"secrets\" does not exist".into(),
        ));
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().starts_with("internal error (ref "));
        assert!(
            !status.message().contains("secrets"),
            "{}",
            status.message()
        );
    }

    /// A database error as a driver reports it, with an SQLSTATE.
    #[derive(Debug)]
    struct FakeDbError(&'static str);

    impl std::fmt::Display for FakeDbError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "password=hunter2 failed with {}", self.0)
        }
    }

    impl std::error::Error for FakeDbError {}

    impl sea_orm::sqlx::error::DatabaseError for FakeDbError {
        fn message(&self) -> &str {
            "password=hunter2"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sea_orm::sqlx::error::ErrorKind {
            sea_orm::sqlx::error::ErrorKind::Other
        }
    }

    fn query_err(e: sea_orm::sqlx::Error) -> DbErr {
        DbErr::Query(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(e)))
    }

    fn sqlstate(code: &'static str) -> DbErr {
        query_err(sea_orm::sqlx::Error::Database(Box::new(FakeDbError(code))))
    }

    #[test]
    fn transient_database_errors_are_retryable() {
        use sea_orm::ConnAcquireErr;
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let cases: Vec<(DbErr, Code)> = vec![
            (
                DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
                Code::Unavailable,
            ),
            (
                DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
                Code::Unavailable,
            ),
            (
                DbErr::Conn(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(
                    sea_orm::sqlx::Error::Io(io()),
                ))),
                Code::Unavailable,
            ),
            (query_err(sea_orm::sqlx::Error::Io(io())), Code::Unavailable),
            // A proxy in front of a dead server answers the connection's first message with
            // garbage; a cut mid-statement is a protocol error too.
            (
                DbErr::Conn(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(
                    sea_orm::sqlx::Error::Protocol(
                        "unexpected response from SSLRequest: 0x00".into(),
                    ),
                ))),
                Code::Unavailable,
            ),
            (
                query_err(sea_orm::sqlx::Error::Protocol("unexpected EOF".into())),
                Code::Unavailable,
            ),
            (
                DbErr::Exec(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(
                    sea_orm::sqlx::Error::PoolTimedOut,
                ))),
                Code::Unavailable,
            ),
            (
                query_err(sea_orm::sqlx::Error::PoolClosed),
                Code::Unavailable,
            ),
            (sqlstate("57P01"), Code::Unavailable),
            (sqlstate("57P02"), Code::Unavailable),
            (sqlstate("57P03"), Code::Unavailable),
            (sqlstate("08006"), Code::Unavailable),
            (sqlstate("08001"), Code::Unavailable),
            (sqlstate("53300"), Code::Unavailable),
            (sqlstate("40001"), Code::Aborted),
            (sqlstate("40P01"), Code::Aborted),
            (sqlstate("55P03"), Code::Aborted),
            (sqlstate("42P01"), Code::Internal),
            (sqlstate("23505"), Code::Internal),
            (query_err(sea_orm::sqlx::Error::RowNotFound), Code::Internal),
            (DbErr::Custom("x".into()), Code::Internal),
        ];
        for (err, want) in cases {
            let shown = err.to_string();
            let status = Status::from(Error::from(err));
            assert_eq!(status.code(), want, "{shown}");
            assert!(
                status.message().contains("(ref "),
                "{shown}: {}",
                status.message()
            );
            assert!(
                !status.message().contains("hunter2") && !status.message().contains("refused"),
                "{shown}: the database's text leaked: {}",
                status.message()
            );
        }
    }

    #[test]
    fn sqlite_busy_and_locked_are_unavailable() {
        assert_eq!(sqlite_failure(5), DbFailure::Unavailable);
        assert_eq!(sqlite_failure(517), DbFailure::Unavailable); // SQLITE_BUSY_SNAPSHOT
        assert_eq!(sqlite_failure(6), DbFailure::Unavailable);
        assert_eq!(sqlite_failure(262), DbFailure::Unavailable); // SQLITE_LOCKED_SHAREDCACHE
        assert_eq!(sqlite_failure(2067), DbFailure::Other); // SQLITE_CONSTRAINT_UNIQUE
        assert_eq!(sqlite_failure(1), DbFailure::Other);
    }

    /// A real SQLite busy error: a second connection writes while the first holds the lock.
    #[tokio::test]
    async fn a_busy_sqlite_database_is_unavailable() {
        use sea_orm::{ConnectOptions, ConnectionTrait, Database};
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("busy.db").display());
        let open = || async {
            let mut options = ConnectOptions::new(url.clone());
            options.max_connections(1).sqlx_logging(false);
            let conn = Database::connect(options).await.expect("connect");
            conn.execute_unprepared("PRAGMA busy_timeout = 0")
                .await
                .expect("pragma");
            conn
        };
        let a = open().await;
        a.execute_unprepared("CREATE TABLE t (x INTEGER)")
            .await
            .expect("create");
        let b = open().await;
        let txn = sea_orm::TransactionTrait::begin(&a).await.expect("begin");
        txn.execute_unprepared("INSERT INTO t VALUES (1)")
            .await
            .expect("insert");
        let err = b
            .execute_unprepared("INSERT INTO t VALUES (2)")
            .await
            .expect_err("busy");
        assert_eq!(db_failure(&err), DbFailure::Unavailable, "{err}");
        assert_eq!(Error::from(err).code(), Code::Unavailable);
        txn.rollback().await.expect("rollback");
    }
}
