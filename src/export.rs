//! Export: the Arrow record batches of a scan, written as CSV or Parquet.
//!
//! Owns `wattson export`'s output formats. The CSV form is the one
//! [`crate::import`] reads back: header `time,device,channels...`, time as
//! RFC 3339 UTC with the shortest exact fraction (`2022-07-19T15:24:21Z`,
//! `2022-07-19T15:24:21.25Z`), floats in shortest round-trip form (`214.9`),
//! nulls as empty cells. CSV cannot tell an empty string from a null: both
//! come back from an import as an absent value. Parquet keeps the batch
//! schema as is, zstd-compressed.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use arrow::compute::cast;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampNanosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use wattson_storage::model::civil_from_days;

#[cfg(test)]
mod tests;

/// Output format of `wattson export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Csv,
    Parquet,
}

/// Writes `batches` (each with `schema`'s columns) to `out` and returns the
/// number of rows written.
///
/// CSV always gets its header line, even without rows, so an empty result
/// is still a file `wattson import` accepts. Timestamp columns (of any
/// unit) are written as RFC 3339 UTC; Float64, Int64, Boolean and Utf8 as
/// described in the module doc; other types in Arrow's display form.
/// Parquet is zstd-compressed with the schema as is.
pub fn export(
    batches: impl Iterator<Item = Result<RecordBatch>>,
    schema: SchemaRef,
    format: ExportFormat,
    out: impl std::io::Write + Send,
) -> Result<u64> {
    match format {
        ExportFormat::Csv => export_csv(batches, &schema, out),
        ExportFormat::Parquet => export_parquet(batches, schema, out),
    }
}

fn export_parquet(
    batches: impl Iterator<Item = Result<RecordBatch>>,
    schema: SchemaRef,
    out: impl std::io::Write + Send,
) -> Result<u64> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer =
        ArrowWriter::try_new(out, schema, Some(props)).context("cannot start the Parquet file")?;
    let mut rows = 0u64;
    for batch in batches {
        let batch = batch?;
        writer.write(&batch).context("cannot write Parquet")?;
        rows += batch.num_rows() as u64;
    }
    writer.close().context("cannot finish the Parquet file")?;
    Ok(rows)
}

fn export_csv(
    batches: impl Iterator<Item = Result<RecordBatch>>,
    schema: &SchemaRef,
    out: impl std::io::Write,
) -> Result<u64> {
    let mut writer = csv::WriterBuilder::new().from_writer(out);
    writer
        .write_record(schema.fields().iter().map(|f| f.name()))
        .context("cannot write CSV")?;
    let mut rows = 0u64;
    let mut cell = String::new();
    let options = FormatOptions::default();
    for batch in batches {
        let batch = batch?;
        check_schema(&batch, schema)?;
        let arrays: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|a| match a.data_type() {
                DataType::Timestamp(unit, _) if *unit != TimeUnit::Nanosecond => {
                    cast(a, &DataType::Timestamp(TimeUnit::Nanosecond, None))
                }
                _ => Ok(a.clone()),
            })
            .collect::<Result<_, _>>()
            .context("cannot convert timestamps to nanoseconds")?;
        let columns: Vec<Column<'_>> = arrays
            .iter()
            .map(|a| Column::new(a, &options))
            .collect::<Result<_>>()?;
        for r in 0..batch.num_rows() {
            for c in &columns {
                cell.clear();
                c.write(r, &mut cell)?;
                writer.write_field(&cell).context("cannot write CSV")?;
            }
            writer
                .write_record(None::<&[u8]>)
                .context("cannot write CSV")?;
        }
        rows += batch.num_rows() as u64;
    }
    writer.flush().context("cannot write CSV")?;
    Ok(rows)
}

fn check_schema(batch: &RecordBatch, schema: &SchemaRef) -> Result<()> {
    let fields = batch.schema_ref().fields();
    let same = fields.len() == schema.fields().len()
        && fields
            .iter()
            .zip(schema.fields())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    if !same {
        bail!(
            "a batch's columns ({}) differ from the export's ({})",
            names(fields),
            names(schema.fields())
        );
    }
    Ok(())
}

fn names(fields: &arrow_schema::Fields) -> String {
    fields
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One column of a batch, ready to format cell by cell.
enum Column<'a> {
    Time(&'a arrow_array::TimestampNanosecondArray),
    F64(&'a arrow_array::Float64Array),
    I64(&'a arrow_array::Int64Array),
    Bool(&'a arrow_array::BooleanArray),
    Str(&'a arrow_array::StringArray),
    Other(&'a dyn Array, ArrayFormatter<'a>),
}

impl<'a> Column<'a> {
    fn new(array: &'a ArrayRef, options: &'a FormatOptions<'a>) -> Result<Self> {
        Ok(match array.data_type() {
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                Column::Time(array.as_primitive::<TimestampNanosecondType>())
            }
            DataType::Float64 => Column::F64(array.as_primitive::<Float64Type>()),
            DataType::Int64 => Column::I64(array.as_primitive::<Int64Type>()),
            DataType::Boolean => Column::Bool(array.as_boolean()),
            DataType::Utf8 => Column::Str(array.as_string::<i32>()),
            _ => Column::Other(
                array.as_ref(),
                ArrayFormatter::try_new(array.as_ref(), options)
                    .context("cannot format a column as text")?,
            ),
        })
    }

    /// Appends row `r`'s cell to `cell`; nothing for a null.
    fn write(&self, r: usize, cell: &mut String) -> Result<()> {
        match self {
            Column::Time(a) if a.is_valid(r) => write_rfc3339(a.value(r), cell),
            // Debug is Rust's shortest round-trip form: 214.9, 0.0, 1e-7.
            Column::F64(a) if a.is_valid(r) => write!(cell, "{:?}", a.value(r))?,
            Column::I64(a) if a.is_valid(r) => write!(cell, "{}", a.value(r))?,
            Column::Bool(a) if a.is_valid(r) => {
                cell.push_str(if a.value(r) { "true" } else { "false" })
            }
            Column::Str(a) if a.is_valid(r) => cell.push_str(a.value(r)),
            Column::Other(a, f) if a.is_valid(r) => write!(cell, "{}", f.value(r))?,
            _ => {}
        }
        Ok(())
    }
}

/// Appends `ns` (since the epoch) as RFC 3339 UTC with the shortest exact
/// fraction: no fraction for whole seconds, else trailing zeros dropped.
pub(crate) fn write_rfc3339(ns: i64, out: &mut String) {
    const NS_PER_DAY: i64 = 86_400 * 1_000_000_000;
    let days = ns.div_euclid(NS_PER_DAY);
    let in_day = ns.rem_euclid(NS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let secs = in_day / 1_000_000_000;
    let frac = in_day % 1_000_000_000;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let mut digits = format!("{frac:09}");
        while digits.ends_with('0') {
            digits.pop();
        }
        out.push('.');
        out.push_str(&digits);
    }
    out.push('Z');
}
