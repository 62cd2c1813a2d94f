//! The query crate's one error type.

/// Everything that can go wrong between SQL text and its result.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQL could not be parsed or planned: a syntax error, an unknown
    /// table or column, a type mismatch. The message says which.
    #[error("{0}")]
    Plan(String),

    /// The statement is valid SQL but not allowed on a read-only query
    /// path (DDL, DML, `SET`, `COPY`, ...).
    #[error("{0}")]
    NotAllowed(String),

    /// The query ran longer than the configured limit and was cancelled.
    #[error("query cancelled after {0:?} (the limit is `query.timeout` in wattson.toml)")]
    Timeout(std::time::Duration),

    /// The query needed more memory than the configured pool and could not
    /// spill.
    #[error(
        "query needs more memory than allowed ({0}); add filters on time or device, or raise `query.memory_limit`"
    )]
    ResourcesExhausted(String),

    /// The store failed while the query read it.
    #[error("storage: {0}")]
    Storage(#[from] wattson_storage::Error),

    /// Anything else DataFusion reports while executing.
    #[error("{0}")]
    Execution(String),
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as D;
        // One of ours that travelled through a result stream (a timeout, a
        // later parameter row's plan error) comes back as it was.
        let e = match e {
            D::External(inner) => match inner.downcast::<Error>() {
                Ok(ours) => return *ours,
                Err(inner) => D::External(inner),
            },
            e => e,
        };
        // Unwrap context layers so the user sees the root cause first.
        match e.find_root() {
            D::ResourcesExhausted(msg) => Error::ResourcesExhausted(msg.clone()),
            D::External(inner) => match inner.downcast_ref::<wattson_storage::Error>() {
                Some(_) => Error::Execution(format!("storage: {inner}")),
                None => Error::Execution(inner.to_string()),
            },
            D::SQL(..) | D::Plan(..) | D::SchemaError(..) | D::NotImplemented(..) => {
                Error::Plan(strip_prefix(e.find_root()))
            }
            other => Error::Execution(strip_prefix(other)),
        }
    }
}

/// DataFusion prefixes messages with its error kind ("Error during
/// planning: "); users want the message.
fn strip_prefix(e: &datafusion::error::DataFusionError) -> String {
    let text = e.to_string();
    for prefix in [
        "Error during planning: ",
        "SQL error: ",
        "Schema error: ",
        "This feature is not implemented: ",
        "Execution error: ",
        "Arrow error: ",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return rest.to_owned();
        }
    }
    text
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
