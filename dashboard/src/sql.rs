//! SQL over HTTP: `POST /api/query` (JSON, CSV or Arrow IPC by `Accept`,
//! streamed batch by batch), `POST /api/token` (Basic credentials for a
//! bearer token), and the encoders the downloads share.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use parking_lot::Mutex;
use wattson_ingest::auth::Role;

use crate::error::json_error;
use crate::tls::ClientAddr;
use crate::web::{ApiCaller, AppState};
use crate::{Error, Result};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Csv,
    Arrow,
    Parquet,
}

impl Format {
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }

    fn from_accept(headers: &HeaderMap) -> Format {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if accept.contains("application/vnd.apache.arrow.stream") {
            Format::Arrow
        } else if accept.contains("text/csv") {
            Format::Csv
        } else {
            Format::Json
        }
    }
}

/// A growable buffer the writers write into and the body drains.
#[derive(Debug, Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn take(&self) -> Bytes {
        Bytes::from(std::mem::take(&mut *self.0.lock()))
    }
}

enum Writer {
    Json { rows: u64 },
    Csv { header: bool },
    Arrow(Box<arrow::ipc::writer::StreamWriter<Sink>>),
    Parquet(Box<parquet::arrow::ArrowWriter<Sink>>),
}

/// Encodes batches one by one into bytes for the response body.
struct Encoder {
    sink: Sink,
    writer: Writer,
}

fn encode_err(e: impl std::fmt::Display) -> Error {
    Error::Encode(e.to_string())
}

impl Encoder {
    fn new(format: Format, schema: &SchemaRef) -> Result<Encoder> {
        let sink = Sink::default();
        let writer = match format {
            Format::Json => Writer::Json { rows: 0 },
            Format::Csv => Writer::Csv { header: true },
            Format::Arrow => Writer::Arrow(Box::new(
                arrow::ipc::writer::StreamWriter::try_new(sink.clone(), schema)
                    .map_err(encode_err)?,
            )),
            Format::Parquet => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                    .build();
                Writer::Parquet(Box::new(
                    parquet::arrow::ArrowWriter::try_new(sink.clone(), schema.clone(), Some(props))
                        .map_err(encode_err)?,
                ))
            }
        };
        Ok(Encoder { sink, writer })
    }

    fn batch(&mut self, batch: &RecordBatch) -> Result<Bytes> {
        match &mut self.writer {
            Writer::Json { rows } => {
                let mut lines = Vec::new();
                {
                    let mut w = arrow::json::WriterBuilder::new()
                        .with_explicit_nulls(true)
                        .build::<_, arrow::json::writer::LineDelimited>(&mut lines);
                    w.write(batch).map_err(encode_err)?;
                    w.finish().map_err(encode_err)?;
                }
                let mut out = Vec::with_capacity(lines.len() + 2);
                for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    out.push(if *rows == 0 { b'[' } else { b',' });
                    out.extend_from_slice(line);
                    *rows += 1;
                }
                Ok(Bytes::from(out))
            }
            Writer::Csv { header } => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(*header)
                    .build(self.sink.clone());
                w.write(batch).map_err(encode_err)?;
                *header = false;
                Ok(self.sink.take())
            }
            Writer::Arrow(w) => {
                w.write(batch).map_err(encode_err)?;
                Ok(self.sink.take())
            }
            Writer::Parquet(w) => {
                w.write(batch).map_err(encode_err)?;
                // Closes a row group once it is large, so memory stays bounded.
                if w.in_progress_size() > 64 << 20 {
                    w.flush().map_err(encode_err)?;
                }
                Ok(self.sink.take())
            }
        }
    }

    fn finish(self) -> Result<Bytes> {
        match self.writer {
            Writer::Json { rows } => Ok(Bytes::from_static(if rows == 0 { b"[]" } else { b"]" })),
            Writer::Csv { .. } => Ok(self.sink.take()),
            Writer::Arrow(mut w) => {
                w.finish().map_err(encode_err)?;
                Ok(self.sink.take())
            }
            Writer::Parquet(w) => {
                w.close().map_err(encode_err)?;
                Ok(self.sink.take())
            }
        }
    }
}

/// Runs `sql` and answers with its result in `format`, streamed; a failure
/// after the first bytes aborts the response (the client sees it cut).
pub(crate) async fn run(app: &AppState, sql: &str, format: Format) -> Result<Response> {
    let started = Instant::now();
    let stream = match app.engine.stream(sql).await {
        Ok(s) => s,
        Err(e) => {
            app.queries.record(started.elapsed(), false);
            return Err(e.into());
        }
    };
    let schema = stream.schema();
    let encoder = Encoder::new(format, &schema)?;
    let app = app.clone();
    let body = futures::stream::unfold((stream, Some(encoder)), move |(mut stream, encoder)| {
        let app = app.clone();
        async move {
            let mut encoder = encoder?;
            match stream.next().await {
                Some(Ok(batch)) => match encoder.batch(&batch) {
                    Ok(bytes) => Some((Ok(bytes), (stream, Some(encoder)))),
                    Err(e) => {
                        app.queries.record(started.elapsed(), false);
                        Some((Err(std::io::Error::other(e.to_string())), (stream, None)))
                    }
                },
                Some(Err(e)) => {
                    app.queries.record(started.elapsed(), false);
                    let e = wattson_query::Error::from(e);
                    tracing::info!("query failed while streaming: {e}");
                    Some((Err(std::io::Error::other(e.to_string())), (stream, None)))
                }
                None => {
                    app.queries.record(started.elapsed(), true);
                    match encoder.finish() {
                        Ok(bytes) => Some((Ok(bytes), (stream, None))),
                        Err(e) => Some((Err(std::io::Error::other(e.to_string())), (stream, None))),
                    }
                }
            }
        }
    });
    let mut res = Body::from_stream(body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    Ok(res)
}

#[derive(Debug, serde::Deserialize)]
struct SqlJson {
    sql: String,
}

/// `POST /api/query`: analysts and admins, by session or bearer token.
pub(crate) async fn query(
    State(app): State<AppState>,
    caller: ApiCaller,
    headers: HeaderMap,
    body: String,
) -> Response {
    if !caller.role.allows(Role::Analyst) {
        return json_error(StatusCode::FORBIDDEN, "SQL needs the analyst or admin role");
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let sql = if is_json {
        match serde_json::from_str::<SqlJson>(&body) {
            Ok(j) => j.sql,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("expected {{\"sql\": \"...\"}}: {e}"),
                );
            }
        }
    } else {
        body
    };
    if sql.trim().is_empty() {
        return json_error(StatusCode::BAD_REQUEST, "no SQL in the request body");
    }
    tracing::debug!(user = %caller.user, "HTTP API query");
    match run(&app, &sql, Format::from_accept(&headers)).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

/// `POST /api/token`: `Authorization: Basic base64(user:password)` gives a
/// bearer token for `/api/query` (analysts and admins).
pub(crate) async fn token(
    State(app): State<AppState>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
) -> Response {
    let Some((user, password)) = basic(&headers) else {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "send `Authorization: Basic base64(user:password)`",
        );
    };
    let role = match app
        .verifier
        .verify_async(&user, &password, Some(peer.ip()))
        .await
    {
        Ok(role) => role,
        Err(e) => {
            tracing::info!(user, %peer, "HTTP API login refused: {e}");
            return json_error(StatusCode::UNAUTHORIZED, &e.to_string());
        }
    };
    if !role.is_person() || !role.allows(Role::Analyst) {
        return json_error(
            StatusCode::FORBIDDEN,
            "the HTTP API needs the analyst or admin role",
        );
    }
    match app.tokens.issue(&user) {
        Some(token) => axum::Json(serde_json::json!({
            "token": token,
            "token_type": "Bearer",
            "expires_in": app.tokens.ttl().as_secs(),
        }))
        .into_response(),
        None => json_error(StatusCode::UNAUTHORIZED, "the account changed; try again"),
    }
}

fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        // Any Authorization header gives a name and password or nothing.
        #[test]
        fn any_basic_header_is_read_or_ignored(
            value in "[ -~]{0,60}",
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let mut headers = HeaderMap::new();
            for text in [value, format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))] {
                if let Ok(v) = text.parse() {
                    headers.insert(header::AUTHORIZATION, v);
                    if let Some((user, _)) = basic(&headers) {
                        proptest::prop_assert!(!user.contains(':'));
                    }
                }
            }
        }
    }
}
