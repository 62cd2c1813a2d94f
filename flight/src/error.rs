//! The flight crate's one error type, and its one mapping to gRPC statuses.

use tonic::{Code, Status};
use wattson_ingest::auth::{AuthError, TokenError};

/// Everything a Flight call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No valid login: missing, malformed, unknown or expired token, or
    /// wrong credentials in the handshake.
    #[error("{0}")]
    Unauthenticated(String),

    /// A valid login whose role may not do this (a viewer reading, an
    /// analyst importing, a device logging in).
    #[error("{0}")]
    PermissionDenied(String),

    /// The client sent something we cannot use: a bad command, ticket,
    /// schema or SQL statement. The message says what and how to fix it.
    #[error("{0}")]
    InvalidArgument(String),

    /// A named table, prepared statement or partition does not exist.
    #[error("{0}")]
    NotFound(String),

    /// Too many login attempts, prepared statements or similar.
    #[error("{0}")]
    ResourceExhausted(String),

    /// The login service is busy or down; retrying later may work.
    #[error("{0}")]
    Unavailable(String),

    /// A query failed: planning errors are the client's, the rest ours.
    #[error(transparent)]
    Query(#[from] wattson_query::Error),

    /// The store refused or failed an append or scan.
    #[error("storage: {0}")]
    Storage(#[from] wattson_storage::Error),

    /// Encoding or decoding Arrow data failed.
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),

    /// The server could not start: bad address, TLS files, transport.
    #[error("{0}")]
    Startup(String),

    /// A broken invariant on our side (a task that panicked, say).
    #[error("internal error: {0}")]
    Internal(String),

    /// A put failed after some of its rows were stored (they stay stored:
    /// a put is durable batch by batch, not as a whole).
    #[error("{cause} ({stored} rows of this put were stored before it)")]
    PutStoppedAfter { stored: u64, cause: Box<Error> },
}

impl Error {
    fn code(&self) -> Code {
        use wattson_query::Error as Q;
        use wattson_storage::Error as S;
        match self {
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Query(q) => match q {
                Q::Plan(_) => Code::InvalidArgument,
                Q::NotAllowed(_) => Code::PermissionDenied,
                Q::Timeout(_) => Code::DeadlineExceeded,
                Q::ResourcesExhausted(_) => Code::ResourceExhausted,
                Q::Storage(_) | Q::Execution(_) => Code::Internal,
            },
            Error::Storage(s) => match s {
                S::TypeConflict { .. }
                | S::InvalidInput(_)
                | S::BeyondRetention { .. }
                | S::UnknownColumn { .. } => Code::InvalidArgument,
                S::UnknownTable(_) => Code::NotFound,
                S::DiskFull { .. } => Code::ResourceExhausted,
                S::WalPoisoned { .. } | S::SealFailing { .. } => Code::Unavailable,
                _ => Code::Internal,
            },
            Error::Arrow(_) => Code::InvalidArgument,
            Error::Startup(_) | Error::Internal(_) => Code::Internal,
            Error::PutStoppedAfter { cause, .. } => cause.code(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<arrow_flight::error::FlightError> for Error {
    fn from(e: arrow_flight::error::FlightError) -> Self {
        match e {
            arrow_flight::error::FlightError::Arrow(a) => Error::Arrow(a),
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<TokenError> for Error {
    fn from(e: TokenError) -> Self {
        Error::Unauthenticated(e.to_string())
    }
}

impl From<AuthError> for Error {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Denied | AuthError::LockedOut { .. } => {
                Error::Unauthenticated(e.to_string())
            }
            AuthError::Throttled => Error::ResourceExhausted(e.to_string()),
            AuthError::Busy | AuthError::Unavailable => Error::Unavailable(e.to_string()),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = e.code();
        if code == Code::Internal {
            tracing::error!(error = %e, "flight call failed");
        }
        Status::new(code, e.to_string())
    }
}

/// A DataFusion error inside a result stream, as the user should read it.
pub(crate) fn from_datafusion(e: datafusion::error::DataFusionError) -> Error {
    Error::Query(e.into())
}
