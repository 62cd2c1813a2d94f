//! `wattson sql`: one query against a data directory, printed as a table,
//! CSV or JSON lines. The store is opened read-only, so a server may be
//! writing the directory meanwhile; the query sees a snapshot taken at open.
//! With `--server`, the query goes to a running server over Flight SQL
//! instead ([`run_remote`]), printed the same way; over TLS with
//! `--tls-ca`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::csv::WriterBuilder;
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::util::pretty::pretty_format_batches;
use futures::StreamExt;
use wattson_query::{QueryEngine, QueryOptions};
use wattson_storage::{Store, StoreOptions};

/// How `wattson sql` prints results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqlFormat {
    /// An aligned text table (the whole result is held in memory).
    Table,
    /// CSV with a header row, streamed.
    Csv,
    /// One JSON object per row, streamed.
    Json,
}

/// Runs `sql` over the store in `data_dir` and writes the result to `out`.
pub fn run(data_dir: &Path, sql: &str, format: SqlFormat, out: &mut dyn Write) -> Result<()> {
    if !data_dir.join("catalog.wcat").exists() && !data_dir.join("wal").exists() {
        bail!(
            "{} holds no Wattson data (give the data directory with --data-dir)",
            data_dir.display()
        );
    }
    // Read-only: no lock, nothing written, so this works beside a running
    // `wattson serve`. The query sees the data as it was at this open.
    let store = Store::open_read_only(data_dir, StoreOptions::default())
        .map(Arc::new)
        .with_context(|| format!("opening {} read-only", data_dir.display()))?;
    let engine = QueryEngine::new(store.clone(), None, &QueryOptions::default())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let mut stream = engine.stream(sql).await?;
        let mut printer = Printer::new(format, out);
        while let Some(batch) = stream.next().await {
            printer.batch(&batch.map_err(wattson_query::Error::from)?)?;
        }
        printer.finish()
    });
    drop(engine);
    // A no-op for a read-only store; kept so a failure would not go unseen.
    store.close().context("closing the store")?;
    result
}

/// A Flight SQL server and who logs in to it.
#[derive(Debug, Clone, Copy)]
pub struct Remote<'a> {
    /// `HOST:PORT`.
    pub server: &'a str,
    pub user: &'a str,
    pub password: &'a str,
    /// Use TLS, trusting the CA certificates in this PEM file.
    pub tls_ca: Option<&'a Path>,
}

/// Runs `sql` on `remote` and writes the result to `out`, batch by batch as
/// it arrives.
pub fn run_remote(
    remote: &Remote<'_>,
    sql: &str,
    format: SqlFormat,
    out: &mut dyn Write,
) -> Result<()> {
    use arrow_flight::sql::client::FlightSqlServiceClient;
    let Remote {
        server,
        user,
        password,
        tls_ca,
    } = *remote;
    let tls = tls_ca
        .map(|path| {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the CA certificates {}", path.display()))?;
            Ok::<_, anyhow::Error>(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
        })
        .transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{server}"))
            .with_context(|| format!("`{server}` is not HOST:PORT"))?
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .context("setting up TLS for the Flight connection")?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to the Flight server at {server}"))?;
        let mut client = FlightSqlServiceClient::new(channel);
        client
            .handshake(user, password)
            .await
            .map_err(|e| anyhow::anyhow!("logging in as {user}: {}", flight_message(&e)))?;
        let info = client
            .execute(sql.to_owned(), None)
            .await
            .map_err(|e| anyhow::anyhow!("{}", flight_message(&e)))?;
        let mut printer = Printer::new(format, out);
        for endpoint in info.endpoint {
            let Some(ticket) = endpoint.ticket else {
                continue;
            };
            let mut stream = client
                .do_get(ticket)
                .await
                .map_err(|e| anyhow::anyhow!("{}", flight_message(&e)))?;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| anyhow::anyhow!("{e}"))?;
                printer.batch(&batch)?;
            }
        }
        printer.finish()
    })
}

/// The server's message out of arrow-flight's wrapping of a gRPC status.
fn flight_message(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    match text.split_once("message: \"") {
        Some((_, rest)) => rest.split("\", details").next().unwrap_or(rest).to_owned(),
        None => text,
    }
}

struct Printer<'a> {
    format: SqlFormat,
    out: &'a mut dyn Write,
    held: Vec<RecordBatch>,
    wrote_header: bool,
}

impl<'a> Printer<'a> {
    fn new(format: SqlFormat, out: &'a mut dyn Write) -> Self {
        Printer {
            format,
            out,
            held: Vec::new(),
            wrote_header: false,
        }
    }

    fn batch(&mut self, batch: &RecordBatch) -> Result<()> {
        match self.format {
            SqlFormat::Table => self.held.push(batch.clone()),
            SqlFormat::Csv => {
                let mut writer = WriterBuilder::new()
                    .with_header(!self.wrote_header)
                    .build(&mut *self.out);
                writer.write(batch)?;
                self.wrote_header = true;
            }
            SqlFormat::Json => {
                let mut writer = LineDelimitedWriter::new(&mut *self.out);
                writer.write(batch)?;
                writer.finish()?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        if self.format == SqlFormat::Table {
            let rows: usize = self.held.iter().map(RecordBatch::num_rows).sum();
            writeln!(self.out, "{}", pretty_format_batches(&self.held)?)?;
            writeln!(self.out, "{rows} row{}", if rows == 1 { "" } else { "s" })?;
        }
        self.out.flush()?;
        Ok(())
    }
}
