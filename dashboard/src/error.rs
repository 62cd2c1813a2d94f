//! The dashboard crate's one error type, and its mapping to HTTP answers.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// What can go wrong starting the dashboard or answering a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },

    /// The TLS certificate or key could not be loaded.
    #[error("dashboard TLS: {0}")]
    Tls(String),

    /// The operating system's random number generator failed.
    #[error("no randomness from the operating system: {0}")]
    Random(String),

    /// The request is malformed or names something that does not exist.
    #[error("{0}")]
    BadRequest(String),

    /// A server limit is reached (open sessions); retrying later works.
    #[error("{0}")]
    Busy(String),

    /// SQL failed: planning, read-only refusal, timeout, execution.
    #[error("{0}")]
    Query(#[from] wattson_query::Error),

    /// Encoding a result (CSV, Arrow, Parquet, JSON) failed.
    #[error("encoding the result: {0}")]
    Encode(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    fn status(&self) -> StatusCode {
        use wattson_query::Error as Q;
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Query(Q::Plan(_) | Q::NotAllowed(_) | Q::Execution(_)) => {
                StatusCode::BAD_REQUEST
            }
            Error::Query(Q::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            Error::Query(Q::ResourcesExhausted(_)) | Error::Busy(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Query(Q::Storage(_))
            | Error::Bind { .. }
            | Error::Tls(_)
            | Error::Random(_)
            | Error::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The one place errors become HTTP answers: a status and `{"error": ...}`.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!("dashboard request failed: {self}");
        }
        let mut response = json_error(status, &self.to_string());
        if matches!(self, Error::Busy(_)) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("60"),
            );
        }
        response
    }
}

/// `{"error": message}` with `status`.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}
