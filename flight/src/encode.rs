//! Record batches to Flight data, in messages of even size.

use arrow_flight::FlightData;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use futures::{Stream, StreamExt};

/// The body size a message aims at: arrow-flight's default, well below the
/// 4 MiB that gRPC clients accept by default.
pub(crate) const MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// Encodes `batches` as Flight data: the schema first, then each batch cut
/// into equal parts of at most about [`MESSAGE_BYTES`].
///
/// The cut is made here because arrow-flight's own rounds the rows per part
/// down and sends the rest alone: a 65,536-row block of the store became
/// five messages of 13,107 rows and one of a single row.
pub(crate) fn flight_data<S>(
    schema: SchemaRef,
    batches: S,
) -> impl Stream<Item = Result<FlightData, FlightError>> + Send + 'static
where
    S: Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
{
    let parts = batches.flat_map(|batch| {
        let parts = match batch {
            Ok(batch) => even_parts(&batch, MESSAGE_BYTES)
                .into_iter()
                .map(Ok)
                .collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(parts)
    });
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        // Already cut: arrow-flight would measure a part by the buffers it
        // shares with the whole batch and cut it again.
        .with_max_flight_data_size(usize::MAX)
        .build(parts)
}

/// `batch` cut into the fewest parts of at most about `max_bytes` each
/// (one row more at most), with row counts that differ by one at most.
fn even_parts(batch: &RecordBatch, max_bytes: usize) -> Vec<RecordBatch> {
    let rows = batch.num_rows();
    if rows == 0 {
        return vec![batch.clone()];
    }
    let bytes: usize = batch.columns().iter().map(|c| slice_bytes(c)).sum();
    let parts = bytes.div_ceil(max_bytes.max(1)).clamp(1, rows);
    let (base, extra) = (rows / parts, rows % parts);
    let mut out = Vec::with_capacity(parts);
    let mut offset = 0;
    for part in 0..parts {
        let len = base + usize::from(part < extra);
        out.push(batch.slice(offset, len));
        offset += len;
    }
    out
}

/// The bytes of the rows `column` holds, not of the buffers it may share
/// with a larger array it was sliced from. Overestimates are safe (more,
/// smaller messages), underestimates are not: view arrays keep their data in
/// buffers a slice does not narrow, so they count whole, and a dictionary is
/// sent expanded, so it counts as its rows times an average value.
fn slice_bytes(column: &dyn Array) -> usize {
    if matches!(
        column.data_type(),
        DataType::Utf8View | DataType::BinaryView
    ) {
        return column.get_buffer_memory_size();
    }
    if let Some(dict) = column.as_any_dictionary_opt() {
        let values = dict.values();
        let per_value = values.get_buffer_memory_size() / values.len().max(1);
        return column.len().saturating_mul(per_value + 8);
    }
    column
        .to_data()
        .get_slice_memory_size()
        .unwrap_or_else(|_| column.get_buffer_memory_size())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use futures::TryStreamExt;

    use super::*;

    fn floats(rows: usize, columns: usize) -> RecordBatch {
        let fields: Vec<Field> = (0..columns)
            .map(|i| Field::new(format!("c{i}"), DataType::Float64, false))
            .collect();
        let arrays = (0..columns)
            .map(|i| {
                Arc::new(Float64Array::from_iter_values(
                    (0..rows).map(|r| (r * columns + i) as f64),
                )) as _
            })
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
    }

    fn row_counts(parts: &[RecordBatch]) -> Vec<usize> {
        parts.iter().map(RecordBatch::num_rows).collect()
    }

    #[test]
    fn a_store_block_becomes_five_even_parts_not_a_one_row_rest() {
        // 65,536 rows of 18 floats: 9.4 MB, as a block of the seed's table.
        let parts = even_parts(&floats(65_536, 18), MESSAGE_BYTES);
        assert_eq!(
            row_counts(&parts),
            vec![13_108, 13_107, 13_107, 13_107, 13_107]
        );
        for part in &parts {
            let bytes: usize = part.columns().iter().map(|c| slice_bytes(c)).sum();
            assert!(bytes <= MESSAGE_BYTES, "{bytes}");
        }
    }

    #[test]
    fn parts_keep_every_row_in_order() {
        let batch = floats(1_000, 3);
        let parts = even_parts(&batch, 3_000);
        // 24,000 bytes in 3,000-byte parts: 8 parts of 125 rows.
        assert_eq!(row_counts(&parts), vec![125; 8]);
        let schema = batch.schema();
        let joined = datafusion::arrow::compute::concat_batches(&schema, &parts).unwrap();
        assert_eq!(joined, batch);
    }

    #[test]
    fn slices_are_measured_by_their_rows_and_small_batches_stay_whole() {
        let batch = floats(100_000, 4);
        // 3.2 MB of buffers, 32 KB of rows: one part.
        let slice = batch.slice(50_000, 1_000);
        assert_eq!(row_counts(&even_parts(&slice, MESSAGE_BYTES)), vec![1_000]);
        let empty = batch.slice(0, 0);
        assert_eq!(row_counts(&even_parts(&empty, MESSAGE_BYTES)), vec![0]);
        // Rows larger than a message: one row per part, never zero.
        let wide = RecordBatch::try_from_iter([(
            "s",
            Arc::new(StringArray::from(vec!["x".repeat(100); 3])) as _,
        )])
        .unwrap();
        assert_eq!(row_counts(&even_parts(&wide, 10)), vec![1, 1, 1]);
    }

    #[tokio::test]
    async fn the_stream_says_the_schema_first_then_the_parts() {
        let batch = floats(65_536, 18);
        let schema = batch.schema();
        let data: Vec<FlightData> = flight_data(schema.clone(), futures::stream::iter([Ok(batch)]))
            .try_collect()
            .await
            .unwrap();
        let decoded: Vec<RecordBatch> = arrow_flight::utils::flight_data_to_batches(&data).unwrap();
        assert_eq!(decoded[0].schema(), schema);
        assert_eq!(
            row_counts(&decoded),
            vec![13_108, 13_107, 13_107, 13_107, 13_107]
        );
    }
}
